//! Reading an aggregate's append-only event log, and its snapshots.
//!
//! Keys: `events` = len(id) u8 ‖ id ‖ version u64 BE, so one aggregate's events are one
//! contiguous, version-ordered range; `snapshots` = id → [`Snapshot`]. A snapshot replaces the
//! events it covers ([`Store::compact`]), so an aggregate's version is its last event's, or its
//! snapshot's when no event follows it. Nothing else records it: a row per aggregate rewritten
//! at every append cost a quarter of a consumer's commit (`heads`, which builds before this one
//! kept, and which is no longer read).

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;

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

/// The version a snapshot is at, without reading its state.
fn snapshot_version(bytes: &[u8]) -> Result<u64, StorageError> {
    #[derive(Deserialize)]
    struct At {
        version: u64,
    }
    let at: At = serde_json::from_slice(bytes).map_err(StorageError::codec("snapshot"))?;
    Ok(at.version)
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
                let (_, value) = item?;
                serde_json::from_slice(&value).map_err(StorageError::codec("event"))
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
            let bytes = serde_json::to_vec(snapshot).map_err(StorageError::codec("snapshot"))?;
            rows.push((id.as_str(), version, bytes));
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
        let snapshot: Option<Snapshot> = match self.inner.snapshots.get(aggregate_id.as_bytes())? {
            Some(bytes) => {
                Some(serde_json::from_slice(&bytes).map_err(StorageError::codec("snapshot"))?)
            }
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.version);
        let events = self.events_after(aggregate_id, after)?;
        Ok((snapshot, events))
    }
}
