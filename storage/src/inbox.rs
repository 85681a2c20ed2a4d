//! The inbox: ids of inbound events already applied, so a redelivered event is acknowledged and
//! skipped. Marks are written by [`crate::Commit::caused_by`] in the same transaction as the
//! effects; they must outlive the broker's duplicate window (and any redelivery), so the
//! retention given to [`Store::cleanup_inbox`] should be far longer than that window.
//!
//! Beside it, the dead-letter marks (tree `dead_letters`): ids of inbound events this service
//! dead-lettered, restored by a recovery from `DLQ`. Live consumers skip them like applied events
//! (a recovery re-reads every stream from the start, and must not charge weeks later), but they
//! are not applied: an operator's `commerce dlq replay` still re-drives them, and its commit
//! writes the real inbox mark. Keeping them out of the inbox tree leaves the inbox's meaning
//! ("applied", what [`crate::Commit::caused_by`] deduplicates on) untouched, and inbox rows
//! written before dead-letter marks existed read as they always did.

use std::sync::atomic::Ordering;
use std::time::Duration;

use uuid::Uuid;

use crate::store::decode_u64;
use crate::{now_millis, StorageError, Store};

/// The tree of dead-letter marks: event id → when it was marked (ms since the epoch).
const DEAD_LETTERS: &str = "dead_letters";

/// `meta` key set once every inbox mark is in `inbox_by_age` (databases from before it existed
/// are indexed once, at open).
const INBOX_INDEXED: &[u8] = b"inbox_indexed_by_age";

/// Ids in one row of `inbox_batches_by_age` at most (a bigger batch writes several rows): rows
/// stay small pages, never sled blobs with a file each to sync.
pub(crate) const IDS_PER_ROW: usize = 256;

/// The key of a mark by age (`inbox_by_age`), or of a batch's row (`inbox_batches_by_age`):
/// when, then the (first) id, so keys sort by age and each is its own.
pub(crate) fn age_key(at_millis: u64, event_id: Uuid) -> [u8; 24] {
    let mut key = [0; 24];
    key[..8].copy_from_slice(&at_millis.to_be_bytes());
    key[8..].copy_from_slice(event_id.as_bytes());
    key
}

impl Store {
    /// Has the event with this id been applied?
    pub fn is_processed(&self, event_id: Uuid) -> Result<bool, StorageError> {
        Ok(self.inner.inbox.contains_key(event_id.as_bytes())?)
    }

    /// Was the event with this id dead-lettered by this service, as a recovery restored it
    /// from `DLQ`? (Not applied: a replay may still apply it.)
    pub fn is_dead_lettered(&self, event_id: Uuid) -> Result<bool, StorageError> {
        Ok(self.dead_letters()?.contains_key(event_id.as_bytes())?)
    }

    /// Should a live delivery of this event be skipped (acknowledged without effect)? Yes when
    /// it was applied, or when it was dead-lettered (only a replay re-drives those).
    pub fn is_settled(&self, event_id: Uuid) -> Result<bool, StorageError> {
        Ok(self.is_processed(event_id)? || self.is_dead_lettered(event_id)?)
    }

    /// Mark events as dead-lettered (recovery). Not durable until the next flush.
    pub fn mark_dead_lettered(
        &self,
        event_ids: impl IntoIterator<Item = Uuid>,
    ) -> Result<usize, StorageError> {
        let at = now_millis().to_be_bytes();
        let mut batch = sled::Batch::default();
        let mut marked = 0;
        for id in event_ids {
            batch.insert(id.as_bytes(), &at);
            marked += 1;
        }
        self.dead_letters()?.apply_batch(batch)?;
        Ok(marked)
    }

    /// Forget an event's dead-letter mark (once a replay applied it, its inbox mark says more).
    /// Returns whether there was one.
    pub fn forget_dead_letter(&self, event_id: Uuid) -> Result<bool, StorageError> {
        Ok(self.dead_letters()?.remove(event_id.as_bytes())?.is_some())
    }

    /// Number of dead-letter marks.
    pub fn dead_lettered_len(&self) -> Result<usize, StorageError> {
        Ok(self.dead_letters()?.len())
    }

    /// Nothing was ever written here (a new or lost database).
    pub fn is_empty(&self) -> bool {
        !self.inner.ever_committed.load(Ordering::Acquire)
            && self.inner.events.is_empty()
            && self.inner.snapshots.is_empty()
            && self.inner.inbox.is_empty()
            && self.inner.outbox_acks.is_empty()
            && self.inner.outbox_pending.is_empty()
            && self.dead_letters().map(|t| t.is_empty()).unwrap_or(true)
    }

    /// Number of inbound events remembered.
    pub fn inbox_len(&self) -> usize {
        self.inner.inbox_marks.load(Ordering::Relaxed) as usize
    }

    /// Forget inbox and dead-letter marks at least `retention` old, oldest first, stopping once
    /// `at_most` inbox marks were (after the age-index row that reached it). Returns how many
    /// were removed. Reads only the old inbox marks (by age), so its cost follows what expires,
    /// not the inbox's size; dead-letter marks are few and read whole.
    pub fn cleanup_inbox(
        &self,
        retention: Duration,
        at_most: usize,
    ) -> Result<usize, StorageError> {
        let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
        let due = ..age_key(cutoff.saturating_add(1), Uuid::nil());
        let mut removed = 0;
        // A batch's row lists its ids; a row of `inbox_by_age` has its one id in the key.
        for (tree, id_in_key) in [
            (&self.inner.inbox_batches, false),
            (&self.inner.inbox_by_age, true),
        ] {
            for item in tree.range(due) {
                if removed >= at_most {
                    break;
                }
                let (key, value) = item?;
                let ids = if id_in_key {
                    key.get(8..).unwrap_or_default()
                } else {
                    &value
                };
                removed += self.forget_marks(ids)?;
                // Only the row read: one written again under its key meanwhile (a mark applied
                // again in the same millisecond) stays for the next pass.
                let _ = tree.compare_and_swap(&key, Some(&value), None::<&[u8]>)?;
            }
        }
        let dead_letters = self.dead_letters()?;
        for item in dead_letters.iter() {
            let (key, value) = item?;
            if decode_u64(&value).is_some_and(|at| at <= cutoff) {
                dead_letters.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Forget the inbox marks of `ids` (16 bytes each). Returns how many there were.
    fn forget_marks(&self, ids: &[u8]) -> Result<usize, StorageError> {
        let mut forgotten = 0;
        for id in ids.chunks_exact(16) {
            if self.inner.inbox.remove(id)?.is_some() {
                self.inner.inbox_marks.fetch_sub(1, Ordering::Relaxed);
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Put every inbox mark in `inbox_by_age`, once (a database from before it existed).
    pub(crate) fn index_inbox_by_age(&self) -> Result<(), StorageError> {
        let (inbox, meta) = (&self.inner.inbox, &self.inner.meta);
        if meta.contains_key(INBOX_INDEXED)? {
            return Ok(());
        }
        for item in inbox.iter() {
            let (key, value) = item?;
            if let (Ok(id), Some(at)) = (Uuid::from_slice(&key), decode_u64(&value)) {
                self.inner.inbox_by_age.insert(age_key(at, id), &[])?;
            }
        }
        meta.insert(INBOX_INDEXED, &[])?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// The dead-letter marks' tree (sled keeps opened trees, so this is a lookup).
    fn dead_letters(&self) -> Result<sled::Tree, StorageError> {
        Ok(self.inner.db.open_tree(DEAD_LETTERS)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Commit, CommitOutcome, Store, StoreConfig};
    use std::time::Duration;
    use uuid::Uuid;

    /// Open `path` again: sled's background flusher may hold its file lock a moment after a drop.
    fn reopen(path: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(path, &StoreConfig::default()) {
                Ok(store) => return store,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("svc"), &StoreConfig::default()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_dead_lettered_event_is_settled_for_live_consumers_but_not_applied() {
        let (_dir, store) = open();
        let (dead, other) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(store.mark_dead_lettered([dead]).unwrap(), 1);
        assert!(store.is_dead_lettered(dead).unwrap());
        assert!(store.is_settled(dead).unwrap());
        assert!(!store.is_processed(dead).unwrap(), "not applied");
        assert!(!store.is_settled(other).unwrap());
        assert!(
            !store.is_empty(),
            "a recovered dead letter is something written"
        );
    }

    #[test]
    fn a_replay_of_a_dead_lettered_event_commits_and_then_it_is_applied_once() {
        let (_dir, store) = open();
        let dead = Uuid::now_v7();
        store.mark_dead_lettered([dead]).unwrap();
        // The mark does not make the replay's commit a duplicate.
        let commit = Commit::caused_by(dead);
        assert!(matches!(
            store.commit(&commit).unwrap(),
            CommitOutcome::Committed { .. }
        ));
        assert!(store.is_processed(dead).unwrap());
        assert!(store.forget_dead_letter(dead).unwrap());
        assert!(!store.is_dead_lettered(dead).unwrap());
        assert!(store.is_settled(dead).unwrap(), "applied now");
        // A second replay is a duplicate.
        assert_eq!(store.commit(&commit).unwrap(), CommitOutcome::Duplicate);
    }

    #[test]
    fn dead_letter_marks_survive_a_reopen_and_are_cleaned_up_with_the_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc");
        let dead = Uuid::now_v7();
        {
            let store = Store::open(&path, &StoreConfig::default()).unwrap();
            store.mark_dead_lettered([dead]).unwrap();
            let _durable = store.flush_blocking().unwrap();
        }
        let store = reopen(&path);
        assert!(store.is_dead_lettered(dead).unwrap());
        assert_eq!(
            store
                .cleanup_inbox(Duration::from_secs(3600), usize::MAX)
                .unwrap(),
            0
        );
        assert_eq!(store.cleanup_inbox(Duration::ZERO, usize::MAX).unwrap(), 1);
        assert_eq!(store.dead_lettered_len().unwrap(), 0);
    }

    #[test]
    fn a_batch_indexes_its_marks_in_one_row_and_cleanup_forgets_each_of_them() {
        let (_dir, store) = open();
        let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let mut commits: Vec<Commit> = ids.iter().map(|&id| Commit::caused_by(id)).collect();
        // Delivered twice in one batch: applied once, indexed once.
        commits.push(Commit::caused_by(ids[0]));
        let outcomes = store.commit_all(&commits).unwrap();
        assert_eq!(
            outcomes.last().unwrap().as_ref().unwrap(),
            &CommitOutcome::Duplicate
        );
        assert_eq!(store.inner.inbox_batches.len(), 1, "one row for the batch");
        assert_eq!(store.inner.inbox_by_age.len(), 0, "none per mark");
        assert_eq!(store.inbox_len(), 3);
        // A batch with nothing new to mark writes no row.
        store.commit_all(&commits[..1]).unwrap();
        assert_eq!(store.inner.inbox_batches.len(), 1);

        assert_eq!(
            store
                .cleanup_inbox(Duration::from_secs(60), usize::MAX)
                .unwrap(),
            0
        );
        assert_eq!(store.cleanup_inbox(Duration::ZERO, usize::MAX).unwrap(), 3);
        assert_eq!((store.inbox_len(), store.inner.inbox_batches.len()), (0, 0));
        for id in ids {
            assert!(!store.is_processed(id).unwrap());
        }
    }

    #[test]
    fn cleanup_reads_the_old_marks_only_and_an_old_database_is_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc");
        let (applied, legacy) = (Uuid::now_v7(), Uuid::now_v7());
        {
            let store = Store::open(&path, &StoreConfig::default()).unwrap();
            store.commit(&Commit::caused_by(applied)).unwrap();
            assert_eq!(
                store.inner.inbox_batches.len(),
                1,
                "indexed with its commit"
            );
            // A mark as a database from before the index has it: no index entry, no flag.
            let an_hour_ago = crate::now_millis() - 3_600_000;
            store
                .inner
                .inbox
                .insert(legacy.as_bytes(), &an_hour_ago.to_be_bytes())
                .unwrap();
            store.inner.meta.remove(super::INBOX_INDEXED).unwrap();
            let _durable = store.flush_blocking().unwrap();
        }
        let store = reopen(&path);
        assert_eq!(
            store.inner.inbox_by_age.len(),
            2,
            "every mark was indexed, one row per mark as before"
        );
        assert_eq!(
            store
                .cleanup_inbox(Duration::from_secs(60), usize::MAX)
                .unwrap(),
            1
        );
        assert!(
            !store.is_processed(legacy).unwrap(),
            "the hour-old mark is gone"
        );
        assert!(store.is_processed(applied).unwrap(), "the young one stays");
        assert_eq!(store.cleanup_inbox(Duration::ZERO, usize::MAX).unwrap(), 1);
        assert_eq!((store.inbox_len(), store.inner.inbox_by_age.len()), (0, 0));
        assert_eq!(store.inner.inbox_batches.len(), 0);
    }

    #[test]
    fn a_batch_bigger_than_a_row_is_indexed_in_several_and_all_are_forgotten_step_by_step() {
        let (_dir, store) = open();
        let commits: Vec<Commit> = (0..super::IDS_PER_ROW + 1)
            .map(|_| Commit::caused_by(Uuid::now_v7()))
            .collect();
        store.commit_all(&commits).unwrap();
        assert_eq!(store.inner.inbox_batches.len(), 2);
        // In steps of one: each step forgets the oldest row whole, then stops.
        assert_eq!(
            store.cleanup_inbox(Duration::ZERO, 1).unwrap(),
            super::IDS_PER_ROW
        );
        assert_eq!(store.inner.inbox_batches.len(), 1);
        assert_eq!(store.cleanup_inbox(Duration::ZERO, 1).unwrap(), 1);
        assert_eq!(store.inbox_len(), 0);
        assert_eq!(store.cleanup_inbox(Duration::ZERO, 1).unwrap(), 0);
    }
}
