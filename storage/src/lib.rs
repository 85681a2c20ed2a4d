//! A service's own sled database: the event-sourced state, the transactional outbox and the inbox,
//! written together in ONE multi-tree transaction, flushed once per batch (group commit).
//!
//! # Layout
//! - [`store`]: [`Store`], opening (clear errors for a locked or corrupt directory), [`Commit`]
//!   (events + outbox rows + inbox mark, atomically) and [`Store::flush`] (the [`Flushed`] proof
//!   that makes "ack only after flush" the natural way to write a consumer).
//! - [`events`]: reading an aggregate's append-only log, and snapshots.
//! - [`outbox`]: a log of rows for the relay, visible to it only once flushed; sent up to a
//!   watermark, kept (with where the broker stored them) until retention trims them.
//! - [`inbox`]: ids of inbound events already applied, kept longer than the broker's duplicate window;
//!   beside them, ids of events the service dead-lettered (skipped live, re-driven by a replay).
//! - [`models`]: read-model tables (denormalized rows, one lookup each), in generations so a
//!   rebuild can be switched to atomically.
//! - [`failpoints`]: seams where a test build crashes or misbehaves on purpose (the chaos
//!   harness); nothing without the `failpoints` feature.
//! - [`error`]: the [`StorageError`] type.
#![forbid(unsafe_code)]

mod durable;
pub mod error;
pub mod events;
pub mod failpoints;
pub mod fence;
pub mod inbox;
pub mod models;
pub mod outbox;
mod row;
pub mod store;

pub use error::StorageError;
pub use events::{RecordedEvent, Snapshot};
pub use fence::{Fence, Fenced};
pub use outbox::{Heal, OutboxMessage, PendingRow, SentMessage, StreamPosition};
pub use store::{Commit, CommitOutcome, Flushed, NewEvent, Store, StoreConfig};

/// Milliseconds since the Unix epoch, the clock every stored timestamp uses.
pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
