//! Reading an aggregate's append-only event log, and its snapshots.
//!
//! Keys: `events` = len(id) u8 ‖ id ‖ version u64 BE, so one aggregate's events are one
//! contiguous, version-ordered range; `snapshots` = id → [`Snapshot`]. Both rows are binary
//! ([`crate::row`]): what the key says is not repeated, and the payload or state is stored as
//! it is, not escaped inside JSON. A snapshot replaces the
//! events it covers ([`Store::compact`]), so an aggregate's version is its last event's, or its
//! snapshot's when no event follows it. Nothing else records it: a row per aggregate rewritten
//! at every append cost a quarter of a consumer's commit (`heads`, which builds before this one
//! kept, and which is no longer read).

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;

use crate::row::{self, Reader};
use crate::{now_millis, StorageError, Store};

/// An event as stored in an aggregate's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub aggregate_id: String,
    /// 1 for the aggregate's first event, then +1 per event, no gaps.
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: String,
    /// Milliseconds since the Unix epoch.
    pub recorded_at: u64,
}

/// An aggregate's folded state at `version`, so loading it does not replay its whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub aggregate_id: String,
    pub version: u64,
    /// The serialized state; its format belongs to the aggregate.
    pub state: String,
    pub taken_at: u64,
}

impl Snapshot {
    /// The aggregate's serialized `state` at `version`, taken now.
    pub fn new(aggregate_id: impl Into<String>, version: u64, state: String) -> Snapshot {
        Snapshot {
            aggregate_id: aggregate_id.into(),
            version,
            state,
            taken_at: now_millis(),
        }
    }
}

/// Longest aggregate id accepted, in bytes (ids are order ids and SKUs: far shorter).
pub const MAX_AGGREGATE_ID_BYTES: usize = 255;

fn aggregate_prefix(aggregate_id: &str) -> Vec<u8> {
    let id = aggregate_id.as_bytes();
    // Commits reject longer ids, so the clamp only makes lookups of such ids find nothing.
    let len = u8::try_from(id.len()).unwrap_or(u8::MAX);
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(len);
    key.extend_from_slice(id);
    key
}

pub(crate) fn event_key(aggregate_id: &str, version: u64) -> Vec<u8> {
    let mut key = aggregate_prefix(aggregate_id);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// An event row: marker, event id, when recorded, type, then the payload as it is (its aggregate
/// and version are the key's). JSON for a type too long for the binary row's length.
pub(crate) fn encode_event(
    event_id: Uuid,
    recorded_at: u64,
    event_type: &str,
    payload: &str,
) -> Result<Vec<u8>, StorageError> {
    if !row::fits(event_type) {
        #[derive(Serialize)]
        struct Json<'a> {
            event_id: Uuid,
            event_type: &'a str,
            payload: &'a str,
            recorded_at: u64,
        }
        let json = Json {
            event_id,
            event_type,
            payload,
            recorded_at,
        };
        return serde_json::to_vec(&json).map_err(StorageError::codec("event"));
    }
    let mut bytes = Vec::with_capacity(27 + event_type.len() + payload.len());
    bytes.push(row::BINARY);
    bytes.extend_from_slice(event_id.as_bytes());
    bytes.extend_from_slice(&recorded_at.to_be_bytes());
    row::put_text(&mut bytes, event_type);
    bytes.extend_from_slice(payload.as_bytes());
    Ok(bytes)
}

/// An event row back, with its aggregate and version from its key. JSON rows (earlier
/// versions, and types too long for a binary row) carry their own.
fn decode_event(
    aggregate_id: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<RecordedEvent, StorageError> {
    #[derive(Deserialize)]
    struct Json {
        event_id: Uuid,
        event_type: String,
        payload: String,
        recorded_at: u64,
    }
    let truncated = || StorageError::Malformed {
        what: "event",
        reason: "truncated".into(),
    };
    let version = key
        .len()
        .checked_sub(8)
        .and_then(|at| crate::store::decode_u64(&key[at..]))
        .ok_or_else(truncated)?;
    let json = match bytes.split_first() {
        Some((&row::BINARY, rest)) => {
            let mut r = Reader(rest);
            let read = (move || Some((r.uuid()?, r.u64()?, r.text()?, r.rest()?)))();
            let (event_id, recorded_at, event_type, payload) = read.ok_or_else(truncated)?;
            Json {
                event_id,
                event_type,
                payload,
                recorded_at,
            }
        }
        _ => serde_json::from_slice(bytes).map_err(StorageError::codec("event"))?,
    };
    Ok(RecordedEvent {
        aggregate_id: aggregate_id.to_owned(),
        version,
        event_id: json.event_id,
        event_type: json.event_type,
        payload: json.payload,
        recorded_at: json.recorded_at,
    })
}

/// A snapshot row: marker, version, when taken, then the state as it is (its aggregate is the key).
fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(17 + snapshot.state.len());
    bytes.push(row::BINARY);
    bytes.extend_from_slice(&snapshot.version.to_be_bytes());
    bytes.extend_from_slice(&snapshot.taken_at.to_be_bytes());
    bytes.extend_from_slice(snapshot.state.as_bytes());
    bytes
}

/// A snapshot row back (binary, or JSON from an earlier version).
fn decode_snapshot(aggregate_id: &str, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    match bytes.split_first() {
        Some((&row::BINARY, rest)) => {
            let mut r = Reader(rest);
            let read = (move || Some((r.u64()?, r.u64()?, r.rest()?)))();
            let (version, taken_at, state) = read.ok_or(StorageError::Malformed {
                what: "snapshot",
                reason: "truncated".into(),
            })?;
            Ok(Snapshot {
                aggregate_id: aggregate_id.to_owned(),
                version,
                state,
                taken_at,
            })
        }
        _ => serde_json::from_slice(bytes).map_err(StorageError::codec("snapshot")),
    }
}

/// The version a snapshot is at, without reading its state.
fn snapshot_version(bytes: &[u8]) -> Result<u64, StorageError> {
    #[derive(Deserialize)]
    struct At {
        version: u64,
    }
    match bytes.split_first() {
        Some((&row::BINARY, rest)) => Reader(rest).u64().ok_or(StorageError::Malformed {
            what: "snapshot",
            reason: "truncated".into(),
        }),
        _ => {
            let at: At = serde_json::from_slice(bytes).map_err(StorageError::codec("snapshot"))?;
            Ok(at.version)
        }
    }
}

/// Within a commit's transaction: whether `expected` is the aggregate's version. Its next event
/// is not there yet, and either its event `expected` is, or a snapshot at `expected` replaced it
/// (0: neither an event nor a snapshot). Two point reads where a head row cost a read and a write.
pub(crate) fn is_head(
    events: &TransactionalTree,
    snapshots: &TransactionalTree,
    aggregate_id: &str,
    expected: u64,
) -> Result<bool, ConflictableTransactionError<StorageError>> {
    if events
        .get(event_key(aggregate_id, expected.saturating_add(1)))?
        .is_some()
    {
        return Ok(false);
    }
    if expected > 0 && events.get(event_key(aggregate_id, expected))?.is_some() {
        return Ok(true);
    }
    snapshot_at(snapshots, aggregate_id, expected)
}

/// Within a transaction: whether the aggregate's snapshot is at `version` (0: it has none).
/// Parses the snapshot, so only where the log no longer holds that version: once after each
/// compaction, and for appends of nothing to a compacted aggregate.
fn snapshot_at(
    snapshots: &TransactionalTree,
    aggregate_id: &str,
    version: u64,
) -> Result<bool, ConflictableTransactionError<StorageError>> {
    let snapshot = match snapshots.get(aggregate_id.as_bytes())? {
        Some(bytes) => snapshot_version(&bytes).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    Ok(snapshot == version)
}

impl Store {
    /// The aggregate's current version (0 if it has no events).
    pub fn version(&self, aggregate_id: &str) -> Result<u64, StorageError> {
        let last_event = match self
            .inner
            .events
            .scan_prefix(aggregate_prefix(aggregate_id))
            .keys()
            .next_back()
        {
            Some(key) => {
                let key = key?;
                let version = key.len().checked_sub(8).map(|at| &key[at..]);
                version.and_then(crate::store::decode_u64).unwrap_or(0)
            }
            None => 0,
        };
        let snapshot = match self.inner.snapshots.get(aggregate_id.as_bytes())? {
            Some(bytes) => snapshot_version(&bytes)?,
            None => 0,
        };
        Ok(last_event.max(snapshot))
    }

    /// The aggregate's events with a version above `after`, oldest first.
    pub fn events_after(
        &self,
        aggregate_id: &str,
        after: u64,
    ) -> Result<Vec<RecordedEvent>, StorageError> {
        let start = event_key(aggregate_id, after.saturating_add(1));
        let end = event_key(aggregate_id, u64::MAX);
        self.inner
            .events
            .range(start..=end)
            .map(|item| {
                let (key, value) = item?;
                decode_event(aggregate_id, &key, &value)
            })
            .collect()
    }

    /// Save each snapshot and drop its aggregate's events up to its version, all in one
    /// transaction (sled serializes transactions process-wide, so one per batch, not one per
    /// aggregate): the log here only loads an aggregate (its history is in its stream), so it
    /// stays as big as what happened since the last snapshot. Call only with durable state.
    pub fn compact(&self, snapshots: &[Snapshot]) -> Result<(), StorageError> {
        if snapshots.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(snapshots.len());
        let mut compacted = Vec::new();
        for snapshot in snapshots {
            let (id, version) = (&snapshot.aggregate_id, snapshot.version);
            rows.push((id.as_str(), version, encode_snapshot(snapshot)));
            // One writer per aggregate (its engine): the keys cannot change before the commit.
            for key in self
                .inner
                .events
                .range(event_key(id, 1)..=event_key(id, version))
                .keys()
            {
                compacted.push(key?);
            }
        }
        let trees = (&self.inner.snapshots, &self.inner.events);
        let compaction = trees.transaction(|(snapshots, events)| {
            for (id, version, _) in &rows {
                // The version is read from the log and the snapshot (`is_head`): a snapshot
                // must be at a version the log still holds, or the one already there.
                let in_log = events.get(event_key(id, *version))?.is_some();
                if !in_log && !snapshot_at(snapshots, id, *version)? {
                    return Err(ConflictableTransactionError::Abort(
                        StorageError::Conflict {
                            aggregate_id: id.to_string(),
                            expected: *version,
                            actual: *version,
                        },
                    ));
                }
            }
            for (id, _, bytes) in &rows {
                snapshots.insert(id.as_bytes(), bytes.as_slice())?;
            }
            for key in &compacted {
                events.remove(key)?;
            }
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        });
        match compaction.map_err(StorageError::from) {
            // Its actual version, read once the transaction is over.
            Err(StorageError::Conflict {
                aggregate_id,
                expected,
                ..
            }) => Err(StorageError::Conflict {
                actual: self.version(&aggregate_id)?,
                aggregate_id,
                expected,
            }),
            other => other,
        }
    }

    /// The latest snapshot and the events recorded after it: all that is needed to load the aggregate.
    pub fn load(
        &self,
        aggregate_id: &str,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StorageError> {
        let snapshot = match self.inner.snapshots.get(aggregate_id.as_bytes())? {
            Some(bytes) => Some(decode_snapshot(aggregate_id, &bytes)?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.version);
        let events = self.events_after(aggregate_id, after)?;
        Ok((snapshot, events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Commit, NewEvent, StoreConfig};

    fn event(payload: &str) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Tested".into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn rows_are_binary_and_hold_the_payload_and_state_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("svc"), &StoreConfig::default()).unwrap();
        let payload = r#"{"quoted":"\"text\"","n":1}"#;
        let first = event(payload);
        store
            .commit(&Commit::new().append("a", 0, vec![first.clone(), event("{}")]))
            .unwrap();
        let row = store.inner.events.get(event_key("a", 1)).unwrap().unwrap();
        assert_eq!(row[0], row::BINARY);
        assert!(row.ends_with(payload.as_bytes()), "not escaped");
        let read = &store.events_after("a", 0).unwrap()[0];
        assert_eq!(
            (read.aggregate_id.as_str(), read.version, read.event_id),
            ("a", 1, first.event_id)
        );
        assert_eq!(
            (read.event_type.as_str(), read.payload.as_str()),
            ("Tested", payload)
        );

        let state = r#"{"open":["o-1"]}"#;
        store
            .compact(&[Snapshot::new("a", 2, state.into())])
            .unwrap();
        let row = store.inner.snapshots.get("a").unwrap().unwrap();
        assert_eq!(row[0], row::BINARY);
        assert!(row.ends_with(state.as_bytes()), "not escaped");
        let (snapshot, rest) = store.load("a").unwrap();
        let snapshot = snapshot.unwrap();
        assert_eq!((snapshot.aggregate_id.as_str(), snapshot.version), ("a", 2));
        assert_eq!(snapshot.state, state);
        assert!(rest.is_empty());
        assert_eq!(store.version("a").unwrap(), 2);
    }

    #[test]
    fn json_rows_of_earlier_versions_read_as_before_and_the_log_goes_on_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("svc"), &StoreConfig::default()).unwrap();
        let old = |version| RecordedEvent {
            aggregate_id: "a".into(),
            version,
            event_id: Uuid::now_v7(),
            event_type: "Old".into(),
            payload: format!(r#"{{"v":{version}}}"#),
            recorded_at: 1_700_000_000_000,
        };
        let snapshot = Snapshot::new("a", 2, r#"{"sum":3}"#.into());
        let (third, fourth) = (old(3), old(4));
        let inner = &store.inner;
        inner
            .snapshots
            .insert("a", serde_json::to_vec(&snapshot).unwrap())
            .unwrap();
        for e in [&third, &fourth] {
            inner
                .events
                .insert(event_key("a", e.version), serde_json::to_vec(e).unwrap())
                .unwrap();
        }
        assert_eq!(store.version("a").unwrap(), 4);
        let (read, events) = store.load("a").unwrap();
        assert_eq!(read.unwrap(), snapshot);
        assert_eq!(events, [third, fourth]);
        // A binary event after them, then a binary snapshot over the JSON one.
        store
            .commit(&Commit::new().append("a", 4, vec![event("{}")]))
            .unwrap();
        assert_eq!(store.events_after("a", 2).unwrap().len(), 3);
        store
            .compact(&[Snapshot::new("a", 5, "{}".into())])
            .unwrap();
        assert_eq!(store.load("a").unwrap().0.unwrap().version, 5);
    }

    #[test]
    fn a_truncated_row_is_an_error_not_a_panic() {
        let row = encode_event(Uuid::now_v7(), 7, "Tested", "{}").unwrap();
        let key = event_key("a", 1);
        assert!(decode_event("a", &key, &row).is_ok());
        for cut in 0..33 {
            assert!(
                decode_event("a", &key, &row[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(decode_event("a", &key[..3], &row).is_err(), "a short key");
        let snapshot = encode_snapshot(&Snapshot::new("a", 3, "{}".into()));
        for cut in 0..17 {
            assert!(
                decode_snapshot("a", &snapshot[..cut]).is_err(),
                "cut at {cut}"
            );
            assert!(
                snapshot_version(&snapshot[..cut.min(8)]).is_err(),
                "cut at {cut}"
            );
        }
        assert_eq!(snapshot_version(&snapshot).unwrap(), 3);
    }

    #[test]
    fn an_event_type_too_long_for_a_binary_row_is_stored_as_json() {
        let (id, long) = (Uuid::now_v7(), "T".repeat(70_000));
        let payload = r#"{"n":"\"1\""}"#;
        let row = encode_event(id, 7, &long, payload).unwrap();
        assert_eq!(row[0], b'{');
        let read = decode_event("a", &event_key("a", 9), &row).unwrap();
        let expected = RecordedEvent {
            aggregate_id: "a".into(),
            version: 9,
            event_id: id,
            event_type: long,
            payload: payload.into(),
            recorded_at: 7,
        };
        assert_eq!(read, expected);
    }
}
