//! The transactional outbox: rows written in the same transaction as the state change, published
//! by the relay, then moved from `outbox_pending` to `outbox_sent` (kept for a retention period
//! as an audit trail of what left the service, then cleaned up).

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
}

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

    /// Mark rows sent. Call only after the broker acknowledged them (PubAck). If this write is
    /// lost in a crash the rows are published again, and the broker drops them by `Nats-Msg-Id`.
    pub fn mark_sent(&self, rows: &[PendingRow]) -> Result<(), StorageError> {
        let sent_at = now_millis();
        let sent: Vec<(u64, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                let row = SentRow {
                    event_id: r.message.event_id,
                    subject: r.message.subject.clone(),
                    sent_at,
                };
                Ok((
                    r.seq,
                    serde_json::to_vec(&row).map_err(StorageError::codec("sent row"))?,
                ))
            })
            .collect::<Result<_, StorageError>>()?;
        let s = &*self.inner;
        (&s.outbox_pending, &s.outbox_sent).transaction(|(pending, done)| {
            for (seq, row) in &sent {
                pending.remove(&seq.to_be_bytes())?;
                done.insert(&seq.to_be_bytes(), row.as_slice())?;
            }
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        })?;
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
