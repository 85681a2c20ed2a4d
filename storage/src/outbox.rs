//! The transactional outbox: rows written in the same transaction as the state change, published
//! by the relay, then moved from `outbox_pending` to `outbox_sent`. A sent row keeps its whole
//! message and where the broker stored it for the retention period (longer than the broker's
//! sync interval), so a message the broker acked and then lost can be published again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use tokio::sync::watch;
use uuid::Uuid;

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

#[derive(Debug, Serialize, Deserialize)]
struct SentRow {
    event_id: Uuid,
    subject: String,
    sent_at: u64,
    /// The stream sequence from the broker's PubAck (0 in rows written before it was kept).
    #[serde(default)]
    stream_seq: u64,
    /// The message as published (absent in rows written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<OutboxMessage>,
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

impl Store {
    /// Up to `limit` pending rows that are durable, in commit order. Rows committed but not yet
    /// flushed are never returned: publishing them could announce state a crash then loses.
    pub fn pending(&self, limit: usize) -> Result<Vec<PendingRow>, StorageError> {
        let durable = *self.inner.durable_seq.borrow();
        self.inner
            .outbox_pending
            .range(..=durable.to_be_bytes())
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let message =
                    serde_json::from_slice(&value).map_err(StorageError::codec("outbox row"))?;
                Ok(PendingRow {
                    seq: decode_u64(&key).unwrap_or(0),
                    message,
                })
            })
            .collect()
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
        let sent: Vec<(u64, Vec<u8>)> = rows
            .iter()
            .map(|(r, stream_seq)| {
                let row = SentRow {
                    event_id: r.message.event_id,
                    subject: r.message.subject.clone(),
                    sent_at,
                    stream_seq: *stream_seq,
                    message: Some(r.message.clone()),
                };
                Ok((
                    r.seq,
                    serde_json::to_vec(&row).map_err(StorageError::codec("sent row"))?,
                ))
            })
            .collect::<Result<_, StorageError>>()?;
        let position = position.map(encode_position).transpose()?;
        let s = &*self.inner;
        (&s.outbox_pending, &s.outbox_sent, &s.meta).transaction(|(pending, done, meta)| {
            for (seq, row) in &sent {
                pending.remove(&seq.to_be_bytes())?;
                done.insert(&seq.to_be_bytes(), row.as_slice())?;
            }
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
        for item in self.inner.outbox_sent.range(..before.to_be_bytes()) {
            let (key, value) = item?;
            let row: SentRow =
                serde_json::from_slice(&value).map_err(StorageError::codec("sent row"))?;
            if let (true, Some(message)) = (row.stream_seq > survived, row.message) {
                lost.push(SentMessage {
                    seq: decode_u64(&key).unwrap_or(0),
                    stream_seq: row.stream_seq,
                    message,
                });
            }
        }
        Ok(lost)
    }

    /// Record where re-published rows are stored now.
    pub fn mark_resent(&self, rows: &[(u64, u64)]) -> Result<(), StorageError> {
        let s = &*self.inner;
        for (seq, stream_seq) in rows {
            let Some(value) = s.outbox_sent.get(seq.to_be_bytes())? else {
                continue; // cleaned up meanwhile
            };
            let mut row: SentRow =
                serde_json::from_slice(&value).map_err(StorageError::codec("sent row"))?;
            row.stream_seq = *stream_seq;
            // Kept for the retention period from now: the broker may lose it again.
            row.sent_at = now_millis();
            let value = serde_json::to_vec(&row).map_err(StorageError::codec("sent row"))?;
            s.outbox_sent.insert(seq.to_be_bytes(), value)?;
        }
        Ok(())
    }

    /// Rows waiting to be published (durable or not).
    pub fn outbox_depth(&self) -> usize {
        self.inner.outbox_pending.len()
    }

    /// Rows published and kept for audit.
    pub fn outbox_sent_count(&self) -> usize {
        self.inner.outbox_sent.len()
    }

    /// Ids of the events marked sent and still kept, in outbox order (the audit trail).
    pub fn sent_event_ids(&self) -> Result<Vec<Uuid>, StorageError> {
        self.inner
            .outbox_sent
            .iter()
            .values()
            .map(|value| {
                let row: SentRow =
                    serde_json::from_slice(&value?).map_err(StorageError::codec("sent row"))?;
                Ok(row.event_id)
            })
            .collect()
    }

    /// Changes whenever more outbox rows become durable: the relay's wake-up call.
    pub fn outbox_released(&self) -> watch::Receiver<u64> {
        self.inner.durable_seq.subscribe()
    }

    /// Delete sent rows older than `retention`. Returns how many were deleted.
    pub fn cleanup_sent(&self, retention: Duration) -> Result<usize, StorageError> {
        let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
        let mut removed = 0;
        // Sent rows are in sequence order, which is time order: stop at the first young one.
        for item in self.inner.outbox_sent.iter() {
            let (key, value) = item?;
            let row: SentRow =
                serde_json::from_slice(&value).map_err(StorageError::codec("sent row"))?;
            if row.sent_at > cutoff {
                break;
            }
            self.inner.outbox_sent.remove(key)?;
            removed += 1;
        }
        Ok(removed)
    }
}

fn encode_position(position: &StreamPosition) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(position).map_err(StorageError::codec("stream position"))
}
