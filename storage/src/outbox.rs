//! The transactional outbox: rows written in the same transaction as the state change, published
//! by the relay in sequence order, and kept after they are sent, with where the broker stored
//! them, for the retention period (longer than the broker's sync interval), so a message the
//! broker acked and then lost can be published again.
//!
//! The rows are a log that the relay never rewrites: `outbox_pending` holds every row by its
//! sequence; the rows up to a watermark are sent. Marking a pass's rows sent writes one
//! `outbox_acks` entry for each run of consecutive rows (when it was sent, and each row's stream
//! sequence) and moves the watermark, a few small writes per pass however many rows it sent
//! (moving each row from one tree to another cost two sled writes of the whole message per row,
//! half of the relay's time). Retention deletes a sent run's rows and its entry together.
//!
//! A row is stored as a small binary record (its payload as it is, not escaped inside JSON);
//! rows written as JSON by earlier versions still read.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::watch;
use uuid::Uuid;

use crate::row::{self, Reader};
use crate::store::decode_u64;
use crate::{now_millis, StorageError, Store};

/// A message to publish: the relay sends it with `Nats-Msg-Id` = `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMessage {
    pub event_id: Uuid,
    pub subject: String,
    pub payload: String,
    /// Extra headers (e.g. `traceparent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// A pending row, with its position in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub seq: u64,
    pub message: OutboxMessage,
}

/// A row the broker acknowledged, with where it stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Position in the outbox.
    pub seq: u64,
    pub stream_seq: u64,
    pub message: OutboxMessage,
}

/// Where this outbox's messages go, and the highest sequence a PubAck gave there. A stream whose
/// last sequence is lower has lost messages (this outbox is its only writer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub stream: String,
    pub last_seq: u64,
    /// A loss found and not yet healed: it survives a crash or a failed heal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal: Option<Heal>,
}

/// What a heal publishes again: kept rows stored past `survived`, among those sent before
/// outbox position `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heal {
    pub survived: u64,
    pub before: u64,
}

/// `meta` key of the [`StreamPosition`].
const STREAM_POSITION: &[u8] = b"outbox_stream_position";
/// `meta` key of the watermark: every row at or below it is sent.
pub(crate) const SENT_UPTO: &[u8] = b"outbox_sent_upto";
/// Where earlier versions moved sent rows (one JSON row each); read once, at open.
pub(crate) const LEGACY_SENT: &[u8] = b"outbox_sent";

/// A run of consecutive rows marked sent together: `outbox_acks` key = its first row's
/// sequence, value = when, then one stream sequence per row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    first: u64,
    sent_at: u64,
    stream_seqs: Vec<u64>,
}

impl Run {
    fn last(&self) -> u64 {
        self.first + self.stream_seqs.len() as u64 - 1
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 * (1 + self.stream_seqs.len()));
        bytes.extend_from_slice(&self.sent_at.to_be_bytes());
        for seq in &self.stream_seqs {
            bytes.extend_from_slice(&seq.to_be_bytes());
        }
        bytes
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<Run, StorageError> {
        let malformed = || StorageError::Malformed {
            what: "outbox ack run",
            reason: format!("{} bytes", value.len()),
        };
        let first = decode_u64(key).ok_or_else(malformed)?;
        let mut words = value
            .chunks_exact(8)
            .map(|w| u64::from_be_bytes(w.try_into().unwrap_or_default()));
        if !value.len().is_multiple_of(8) || value.len() < 16 {
            return Err(malformed());
        }
        let sent_at = words.next().ok_or_else(malformed)?;
        Ok(Run {
            first,
            sent_at,
            stream_seqs: words.collect(),
        })
    }
}

/// A message as an outbox row: marker, event id, subject, headers, then the payload as it is.
pub(crate) fn encode_message(m: &OutboxMessage) -> Result<Vec<u8>, StorageError> {
    let binary = row::fits(&m.subject)
        && u8::try_from(m.headers.len()).is_ok()
        && m.headers.iter().all(|(n, v)| row::fits(n) && row::fits(v));
    if !binary {
        // Too long for the binary record's lengths: JSON reads as well.
        return serde_json::to_vec(m).map_err(StorageError::codec("outbox row"));
    }
    let mut bytes = Vec::with_capacity(
        20 + m.subject.len()
            + m.payload.len()
            + m.headers
                .iter()
                .map(|(n, v)| 4 + n.len() + v.len())
                .sum::<usize>(),
    );
    bytes.push(row::BINARY);
    bytes.extend_from_slice(m.event_id.as_bytes());
    row::put_text(&mut bytes, &m.subject);
    bytes.push(m.headers.len() as u8);
    for (name, value) in &m.headers {
        row::put_text(&mut bytes, name);
        row::put_text(&mut bytes, value);
    }
    bytes.extend_from_slice(m.payload.as_bytes());
    Ok(bytes)
}

/// An outbox row back as its message (binary, or JSON from an earlier version).
pub(crate) fn decode_message(bytes: &[u8]) -> Result<OutboxMessage, StorageError> {
    match bytes.split_first() {
        Some((&row::BINARY, rest)) => read_message(Reader(rest)).ok_or(StorageError::Malformed {
            what: "outbox row",
            reason: "truncated".into(),
        }),
        _ => serde_json::from_slice(bytes).map_err(StorageError::codec("outbox row")),
    }
}

fn read_message(mut r: Reader<'_>) -> Option<OutboxMessage> {
    let event_id = r.uuid()?;
    let subject = r.text()?;
    let count = *r.take(1)?.first()?;
    let headers = (0..count)
        .map(|_| Some((r.text()?, r.text()?)))
        .collect::<Option<_>>()?;
    Some(OutboxMessage {
        event_id,
        subject,
        payload: r.rest()?,
        headers,
    })
}

/// The sent row of an earlier version (`outbox_sent`), read once to carry it over.
#[derive(Debug, Deserialize)]
struct LegacySentRow {
    sent_at: u64,
    #[serde(default)]
    stream_seq: u64,
    #[serde(default)]
    message: Option<OutboxMessage>,
}

impl Store {
    /// Up to `limit` pending rows that are durable, in commit order. Rows committed but not yet
    /// flushed are never returned: publishing them could announce state a crash then loses.
    pub fn pending(&self, limit: usize) -> Result<Vec<PendingRow>, StorageError> {
        let durable = *self.inner.durable_seq.borrow();
        let upto = self.sent_upto()?;
        if upto >= durable {
            return Ok(Vec::new());
        }
        let above = self.runs_from(upto + 1)?;
        let mut rows = Vec::with_capacity(limit.min(1024));
        for item in self
            .inner
            .outbox_pending
            .range((upto + 1).to_be_bytes()..=durable.to_be_bytes())
        {
            if rows.len() >= limit {
                break;
            }
            let (key, value) = item?;
            let seq = decode_u64(&key).unwrap_or(0);
            // Sent out of order (a row before it failed): not again.
            if above
                .iter()
                .any(|run| (run.first..=run.last()).contains(&seq))
            {
                continue;
            }
            rows.push(PendingRow {
                seq,
                message: decode_message(&value)?,
            });
        }
        Ok(rows)
    }

    /// Mark rows sent, each with the stream sequence its PubAck gave. Call only after the broker
    /// acknowledged them. If this write is lost in a crash the rows are published again, and the
    /// broker drops them by `Nats-Msg-Id`.
    /// `position`, when the acks moved it (or showed a loss to heal), is recorded with them.
    pub fn mark_sent(
        &self,
        rows: &[(PendingRow, u64)],
        position: Option<&StreamPosition>,
    ) -> Result<(), StorageError> {
        let sent_at = now_millis();
        let mut rows: Vec<(u64, u64)> = rows.iter().map(|(r, s)| (r.seq, *s)).collect();
        rows.sort_unstable();
        let mut runs: Vec<Run> = Vec::new();
        for (seq, stream_seq) in rows {
            match runs.last_mut() {
                Some(run) if run.last() + 1 == seq => run.stream_seqs.push(stream_seq),
                Some(run) if run.last() >= seq => {} // the same row twice
                _ => runs.push(Run {
                    first: seq,
                    sent_at,
                    stream_seqs: vec![stream_seq],
                }),
            }
        }
        let position = position.map(encode_position).transpose()?;
        let s = &*self.inner;
        (&s.outbox_acks, &s.meta).transaction(|(acks, meta)| {
            let upto = watermark_in(meta)?;
            for run in &runs {
                // Marked by someone else meanwhile (two relays on one store): keep theirs.
                let known = match acks.get(run.first.to_be_bytes())? {
                    Some(v) => Run::decode(&run.first.to_be_bytes(), &v)
                        .map_err(ConflictableTransactionError::Abort)?
                        .last(),
                    None => 0,
                };
                if run.last() > upto.max(known) {
                    acks.insert(&run.first.to_be_bytes(), run.encode())?;
                }
            }
            advance_watermark(acks, meta)?;
            if let Some(position) = &position {
                meta.insert(STREAM_POSITION, position.as_slice())?;
            }
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        })?;
        Ok(())
    }

    /// Where this outbox publishes, and the highest sequence the broker acknowledged there.
    pub fn stream_position(&self) -> Result<Option<StreamPosition>, StorageError> {
        match self.inner.meta.get(STREAM_POSITION)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(StorageError::codec("stream position"))?,
            )),
            None => Ok(None),
        }
    }

    /// Set the position: a loss found (with its `heal`), or healed (the stream's end now).
    pub fn set_stream_position(&self, position: &StreamPosition) -> Result<(), StorageError> {
        self.inner
            .meta
            .insert(STREAM_POSITION, encode_position(position)?)?;
        Ok(())
    }

    /// Sent rows still kept whose stream sequence is above `survived` (the stream's last sequence
    /// after it lost its tail), among those sent before outbox position `before`: the messages
    /// the broker lost, in outbox order.
    pub fn sent_after(&self, survived: u64, before: u64) -> Result<Vec<SentMessage>, StorageError> {
        let mut lost = Vec::new();
        for run in self.runs_from(0)? {
            for (seq, stream_seq) in (run.first..).zip(run.stream_seqs) {
                if seq >= before || stream_seq <= survived {
                    continue;
                }
                if let Some(row) = self.inner.outbox_pending.get(seq.to_be_bytes())? {
                    lost.push(SentMessage {
                        seq,
                        stream_seq,
                        message: decode_message(&row)?,
                    });
                }
            }
        }
        Ok(lost)
    }

    /// Record where re-published rows are stored now. They are kept for the retention period
    /// from now: the broker may lose them again.
    pub fn mark_resent(&self, rows: &[(u64, u64)]) -> Result<(), StorageError> {
        let acks = &self.inner.outbox_acks;
        for (seq, stream_seq) in rows {
            let Some(item) = acks.range(..=seq.to_be_bytes()).next_back() else {
                continue; // cleaned up meanwhile
            };
            let (key, value) = item?;
            let mut run = Run::decode(&key, &value)?;
            if let Some(slot) = run.stream_seqs.get_mut((seq - run.first) as usize) {
                *slot = *stream_seq;
                run.sent_at = now_millis();
                acks.insert(key, run.encode())?;
            }
        }
        Ok(())
    }

    /// Rows waiting to be published (durable or not). Sequences have no gaps, so this is a
    /// subtraction (and the rare rows sent out of order).
    pub fn outbox_depth(&self) -> usize {
        let committed = self.committed_seq();
        // Unreadable: count every row as waiting, rather than none.
        let upto = self.sent_upto().unwrap_or(0);
        let sent_above: u64 = self
            .runs_from(upto + 1)
            .unwrap_or_default()
            .iter()
            .map(|run| run.stream_seqs.len() as u64)
            .sum();
        committed.saturating_sub(upto).saturating_sub(sent_above) as usize
    }

    /// Rows published and kept for audit.
    pub fn outbox_sent_count(&self) -> usize {
        self.runs_from(0)
            .unwrap_or_default()
            .iter()
            .map(|run| run.stream_seqs.len())
            .sum()
    }

    /// Ids of the events marked sent and still kept, in outbox order (the audit trail).
    pub fn sent_event_ids(&self) -> Result<Vec<Uuid>, StorageError> {
        Ok(self
            .sent_after(0, u64::MAX)?
            .into_iter()
            .map(|sent| sent.message.event_id)
            .collect())
    }

    /// Changes whenever more outbox rows become durable: the relay's wake-up call.
    pub fn outbox_released(&self) -> watch::Receiver<u64> {
        self.inner.durable_seq.subscribe()
    }

    /// Delete sent rows older than `retention`, oldest first, stopping once `at_most` were
    /// (after the run that reached it). Returns how many were deleted.
    pub fn cleanup_sent(&self, retention: Duration, at_most: usize) -> Result<usize, StorageError> {
        let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
        let upto = self.sent_upto()?;
        let (acks, rows) = (&self.inner.outbox_acks, &self.inner.outbox_pending);
        let mut removed = 0;
        // Runs are in sequence order, which is time order: stop at the first young one.
        for item in acks.iter() {
            let (key, value) = item?;
            let run = Run::decode(&key, &value)?;
            if removed >= at_most || run.sent_at > cutoff || run.last() > upto {
                break;
            }
            let mut batch = sled::Batch::default();
            (run.first..=run.last()).for_each(|seq| batch.remove(&seq.to_be_bytes()));
            rows.apply_batch(batch)?;
            acks.remove(key)?;
            removed += run.stream_seqs.len();
        }
        Ok(removed)
    }

    /// Every row at or below this is sent.
    /// Whether every outbox row at or below `seq` has been published.
    pub fn published_through(&self, seq: u64) -> Result<bool, StorageError> {
        Ok(self.sent_upto()? >= seq)
    }

    fn sent_upto(&self) -> Result<u64, StorageError> {
        match self.inner.meta.get(SENT_UPTO)? {
            Some(v) => watermark(&v),
            None => Ok(0),
        }
    }

    /// The runs starting at or after `first`, in order.
    fn runs_from(&self, first: u64) -> Result<Vec<Run>, StorageError> {
        self.inner
            .outbox_acks
            .range(first.to_be_bytes()..)
            .map(|item| {
                let (key, value) = item?;
                Run::decode(&key, &value)
            })
            .collect()
    }

    /// Carry an earlier version's outbox over, once: its sent rows (moved to `outbox_sent`,
    /// message included) go back into the log as runs of one, and the watermark starts below
    /// the oldest row still pending. Rows it had not kept the message of, or had trimmed, are
    /// runs with nothing to heal, so the watermark moves past them.
    pub(crate) fn carry_outbox_over(&self) -> Result<(), StorageError> {
        let s = &*self.inner;
        if s.meta.contains_key(SENT_UPTO)? {
            return Ok(());
        }
        let upto = match s.outbox_pending.first()? {
            Some((key, _)) => decode_u64(&key).unwrap_or(1).saturating_sub(1),
            None => self.committed_seq(),
        };
        if s.db.tree_names().iter().any(|name| name == LEGACY_SENT) {
            let legacy = s.db.open_tree(LEGACY_SENT)?;
            for item in legacy.iter() {
                let (key, value) = item?;
                let (Some(seq), Ok(row)) = (
                    decode_u64(&key),
                    serde_json::from_slice::<LegacySentRow>(&value),
                ) else {
                    continue;
                };
                let Some(message) = row.message else { continue };
                s.outbox_pending.insert(key, encode_message(&message)?)?;
                let run = Run {
                    first: seq,
                    sent_at: row.sent_at,
                    stream_seqs: vec![row.stream_seq],
                };
                s.outbox_acks.insert(seq.to_be_bytes(), run.encode())?;
            }
        }
        // A row missing above the watermark was sent and trimmed (or kept without its message):
        // a run of its own, nothing to heal (stream sequence 0), already past retention.
        let mut present = s.outbox_pending.range((upto + 1).to_be_bytes()..).keys();
        let mut next_present = || -> Result<Option<u64>, StorageError> {
            Ok(present.next().transpose()?.and_then(|k| decode_u64(&k)))
        };
        let mut present_seq = next_present()?;
        for seq in upto + 1..=self.committed_seq() {
            while present_seq.is_some_and(|p| p < seq) {
                present_seq = next_present()?;
            }
            if present_seq != Some(seq) {
                let gone = Run {
                    first: seq,
                    sent_at: 0,
                    stream_seqs: vec![0],
                };
                s.outbox_acks.insert(seq.to_be_bytes(), gone.encode())?;
            }
        }
        (&s.outbox_acks, &s.meta).transaction(|(acks, meta)| {
            meta.insert(SENT_UPTO, &upto.to_be_bytes())?;
            advance_watermark(acks, meta)?;
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        })?;
        s.db.drop_tree(LEGACY_SENT)?;
        s.db.flush()?;
        Ok(())
    }
}

/// Move the watermark over the runs that start right after it.
fn advance_watermark(
    acks: &TransactionalTree,
    meta: &TransactionalTree,
) -> Result<(), ConflictableTransactionError<StorageError>> {
    let mut upto = watermark_in(meta)?;
    let start = upto;
    while let Some(value) = acks.get((upto + 1).to_be_bytes())? {
        let run = Run::decode(&(upto + 1).to_be_bytes(), &value)
            .map_err(ConflictableTransactionError::Abort)?;
        upto = run.last();
    }
    if upto != start {
        meta.insert(SENT_UPTO, &upto.to_be_bytes())?;
    }
    Ok(())
}

/// The watermark, read inside a transaction.
fn watermark_in(
    meta: &TransactionalTree,
) -> Result<u64, ConflictableTransactionError<StorageError>> {
    match meta.get(SENT_UPTO)? {
        Some(v) => watermark(&v).map_err(ConflictableTransactionError::Abort),
        None => Ok(0),
    }
}

/// The watermark's value: a wrong one would publish every kept row again, so it is an error.
fn watermark(value: &[u8]) -> Result<u64, StorageError> {
    decode_u64(value).ok_or_else(|| StorageError::Malformed {
        what: "outbox watermark",
        reason: format!("{} bytes", value.len()),
    })
}

fn encode_position(position: &StreamPosition) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(position).map_err(StorageError::codec("stream position"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: Vec<(String, String)>) -> OutboxMessage {
        OutboxMessage {
            event_id: Uuid::now_v7(),
            subject: "orders.order_created.o-1".into(),
            payload: r#"{"data":{"note":"quotes \" and ünïcode"}}"#.into(),
            headers,
        }
    }

    #[test]
    fn a_row_reads_back_as_its_message_binary_or_json() {
        let with = message(vec![("traceparent".into(), "00-ab-cd-01".into())]);
        for m in [message(vec![]), with] {
            let row = encode_message(&m).unwrap();
            assert_eq!(row[0], row::BINARY);
            assert_eq!(decode_message(&row).unwrap(), m);
            let json = serde_json::to_vec(&m).unwrap();
            assert_eq!(
                decode_message(&json).unwrap(),
                m,
                "rows of earlier versions"
            );
        }
    }

    #[test]
    fn a_truncated_or_foreign_row_is_an_error_not_a_panic() {
        let row = encode_message(&message(vec![("a".into(), "b".into())])).unwrap();
        for cut in 1..30 {
            assert!(decode_message(&row[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_message(b"").is_err());
        assert!(decode_message(b"garbage").is_err());
    }

    #[test]
    fn a_run_reads_back_and_a_bad_one_is_an_error() {
        let run = Run {
            first: 7,
            sent_at: 1_700_000_000_000,
            stream_seqs: vec![10, 11, 3],
        };
        assert_eq!(
            Run::decode(&7u64.to_be_bytes(), &run.encode()).unwrap(),
            run
        );
        assert_eq!(run.last(), 9);
        assert!(Run::decode(&7u64.to_be_bytes(), &[0; 8]).is_err());
        assert!(Run::decode(&7u64.to_be_bytes(), &[0; 17]).is_err());
        assert!(Run::decode(b"short", &run.encode()).is_err());
    }

    fn store_with_rows(n: usize) -> (tempfile::TempDir, Store, Vec<PendingRow>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("svc"), &crate::StoreConfig::default()).unwrap();
        for _ in 0..n {
            let commit = crate::Commit::new().publish(message(vec![]));
            store.commit(&commit).unwrap();
        }
        let _ = store.flush_blocking().unwrap();
        let rows = store.pending(100).unwrap();
        assert_eq!(rows.len(), n);
        (dir, store, rows)
    }

    #[test]
    fn a_row_sent_out_of_order_is_not_sent_again_and_the_watermark_waits_for_the_gap() {
        let (_dir, store, rows) = store_with_rows(4);
        store
            .mark_sent(&[(rows[1].clone(), 11), (rows[2].clone(), 12)], None)
            .unwrap();
        assert_eq!(
            store.pending(10).unwrap(),
            vec![rows[0].clone(), rows[3].clone()]
        );
        assert_eq!(store.outbox_depth(), 2);
        store.mark_sent(&[(rows[0].clone(), 10)], None).unwrap();
        assert_eq!(store.sent_upto().unwrap(), 3, "the gap closed: 1..=3 sent");
        assert_eq!(store.pending(10).unwrap(), vec![rows[3].clone()]);
        store.mark_sent(&[(rows[3].clone(), 13)], None).unwrap();
        assert_eq!(store.outbox_depth(), 0);
        let kept: Vec<_> = store
            .sent_after(0, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|s| (s.seq, s.stream_seq))
            .collect();
        assert_eq!(kept, [(1, 10), (2, 11), (3, 12), (4, 13)]);
        assert_eq!(store.sent_after(11, 4).unwrap().len(), 1, "only row 3");
    }

    #[test]
    fn cleanup_in_steps_takes_the_oldest_runs_first_and_stops_after_the_step() {
        let (_dir, store, rows) = store_with_rows(3);
        // Three passes of the relay: three runs of one row.
        for (row, place) in rows.iter().zip([5, 6, 7]) {
            store.mark_sent(&[(row.clone(), place)], None).unwrap();
        }
        assert_eq!(store.cleanup_sent(Duration::ZERO, 2).unwrap(), 2);
        let left: Vec<_> = store
            .sent_after(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|s| s.stream_seq)
            .collect();
        assert_eq!(left, [7], "the two oldest went");
        assert_eq!(store.cleanup_sent(Duration::ZERO, 2).unwrap(), 1);
        assert_eq!(store.outbox_sent_count(), 0);
    }

    #[test]
    fn resent_rows_record_their_new_place_and_cleanup_removes_rows_with_their_run() {
        let (_dir, store, rows) = store_with_rows(3);
        let sent: Vec<_> = rows.iter().cloned().zip([5, 6, 7]).collect();
        store.mark_sent(&sent, None).unwrap();
        store.mark_resent(&[(2, 40)]).unwrap();
        let places: Vec<_> = store
            .sent_after(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|s| s.stream_seq)
            .collect();
        assert_eq!(places, [5, 40, 7]);
        assert_eq!(
            store
                .cleanup_sent(Duration::from_secs(3600), usize::MAX)
                .unwrap(),
            0
        );
        assert_eq!(store.cleanup_sent(Duration::ZERO, usize::MAX).unwrap(), 3);
        assert_eq!(store.outbox_sent_count(), 0);
        assert!(
            store.inner.outbox_pending.is_empty(),
            "the rows went with their run"
        );
        assert_eq!(store.outbox_depth(), 0);
    }

    /// A database as the version that moved each sent row to `outbox_sent` left it: `sent`
    /// rows there (JSON; `None`: without its message), `pending` rows (JSON) in the log, and the
    /// outbox sequence at `last`. Opened again by the caller.
    fn earlier_layout(
        path: &std::path::Path,
        sent: &[(u64, Option<&OutboxMessage>, u64)],
        pending: &[(u64, &OutboxMessage)],
        last: u64,
    ) {
        let store = Store::open(path, &crate::StoreConfig::default()).unwrap();
        let s = &*store.inner;
        let legacy = s.db.open_tree(LEGACY_SENT).unwrap();
        for (seq, message, stream_seq) in sent {
            let row = serde_json::json!({"event_id": Uuid::now_v7(), "subject": "x",
                "sent_at": 1, "stream_seq": stream_seq, "message": message});
            let row = serde_json::to_vec(&row).unwrap();
            legacy.insert(seq.to_be_bytes(), row).unwrap();
        }
        for (seq, message) in pending {
            let row = serde_json::to_vec(message).unwrap();
            s.outbox_pending.insert(seq.to_be_bytes(), row).unwrap();
        }
        s.meta.insert(b"outbox_seq", &last.to_be_bytes()).unwrap();
        s.meta.remove(SENT_UPTO).unwrap();
        s.db.flush().unwrap();
    }

    /// Sent rows are kept for healing, pending rows stay pending.
    #[test]
    fn an_outbox_of_the_earlier_layout_is_carried_over_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc");
        let (sent, pending) = (message(vec![]), message(vec![]));
        earlier_layout(
            &path,
            &[(0, None, 3), (1, Some(&sent), 9)],
            &[(2, &pending)],
            2,
        );
        let store = Store::open(&path, &crate::StoreConfig::default()).unwrap();
        assert_eq!(store.sent_upto().unwrap(), 1);
        let pending_now: Vec<_> = store
            .pending(10)
            .unwrap()
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(pending_now, [pending]);
        let kept = store.sent_after(0, u64::MAX).unwrap();
        assert_eq!(
            (kept[0].seq, kept[0].stream_seq, &kept[0].message),
            (1, 9, &sent)
        );
        assert_eq!(kept.len(), 1, "a row without its message is forgotten");
        assert!(!store.inner.db.tree_names().iter().any(|n| n == LEGACY_SENT));
    }

    /// Row 1 failed while 2 and 3 were sent, and 2 was trimmed since: once 1 is sent the
    /// watermark passes all three, and retention goes on.
    #[test]
    fn a_trimmed_row_of_the_earlier_layout_does_not_hold_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc");
        let (first, third) = (message(vec![]), message(vec![]));
        earlier_layout(&path, &[(3, Some(&third), 7)], &[(1, &first)], 3);
        let store = Store::open(&path, &crate::StoreConfig::default()).unwrap();
        let rows = store.pending(10).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(store.outbox_depth(), 1);
        store.mark_sent(&[(rows[0].clone(), 8)], None).unwrap();
        assert_eq!(store.sent_upto().unwrap(), 3);
        assert_eq!(store.outbox_depth(), 0);
        assert_eq!(store.cleanup_sent(Duration::ZERO, usize::MAX).unwrap(), 3);
    }

    #[test]
    fn a_stale_mark_does_not_shorten_a_run_or_move_below_the_watermark() {
        let (_dir, store, rows) = store_with_rows(3);
        let all: Vec<_> = rows.iter().cloned().zip([1, 2, 3]).collect();
        store.mark_sent(&all, None).unwrap();
        store.mark_sent(&all[..1], None).unwrap();
        assert_eq!(store.outbox_sent_count(), 3);
        assert_eq!(store.sent_upto().unwrap(), 3);
        assert!(store.pending(10).unwrap().is_empty());
    }

    #[test]
    fn a_stale_mark_above_the_watermark_does_not_shorten_a_run() {
        let (_dir, store, rows) = store_with_rows(4);
        let later: Vec<_> = rows[1..].iter().cloned().zip([2, 3, 4]).collect();
        store.mark_sent(&later, None).unwrap();
        store.mark_sent(&later[..1], None).unwrap();
        assert_eq!(store.sent_upto().unwrap(), 0, "row 1 is not sent yet");
        assert_eq!(store.pending(10).unwrap(), vec![rows[0].clone()]);
        store.mark_sent(&[(rows[0].clone(), 1)], None).unwrap();
        assert_eq!(store.sent_upto().unwrap(), 4, "over the whole run 2..=4");
        assert_eq!(store.outbox_sent_count(), 4);
    }

    #[test]
    fn a_malformed_watermark_is_an_error_not_a_resend_of_everything() {
        let (_dir, store, _rows) = store_with_rows(1);
        store.inner.meta.insert(SENT_UPTO, &[1, 2, 3]).unwrap();
        assert!(matches!(
            store.pending(10),
            Err(StorageError::Malformed { .. })
        ));
    }
}
