//! The inbox: ids of inbound events already applied, so a redelivered event is acknowledged and
//! skipped. Marks are written by [`crate::Commit::caused_by`] in the same transaction as the
//! effects; they must outlive the broker's duplicate window (and any redelivery), so the
//! retention given to [`Store::cleanup_inbox`] should be far longer than that window.

use std::time::Duration;

use uuid::Uuid;

use crate::store::decode_u64;
use crate::{now_millis, StorageError, Store};

impl Store {
    /// Has the event with this id been applied?
    pub fn is_processed(&self, event_id: Uuid) -> Result<bool, StorageError> {
        Ok(self.inner.inbox.contains_key(event_id.as_bytes())?)
    }

    /// Nothing was ever written here (a new or lost database).
    pub fn is_empty(&self) -> bool {
        self.inner.heads.is_empty()
            && self.inner.inbox.is_empty()
            && self.inner.outbox_sent.is_empty()
    }

    /// Number of inbound events remembered.
    pub fn inbox_len(&self) -> usize {
        self.inner.inbox.len()
    }

    /// Forget marks at least `retention` old. Returns how many were removed.
    pub fn cleanup_inbox(&self, retention: Duration) -> Result<usize, StorageError> {
        let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
        let mut removed = 0;
        for item in self.inner.inbox.iter() {
            let (key, value) = item?;
            if decode_u64(&value).is_some_and(|at| at <= cutoff) {
                self.inner.inbox.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
