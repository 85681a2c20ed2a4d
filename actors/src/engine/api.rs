//! The endpoints every service answers (`commerce.<service>.<endpoint>`), and their types.
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `status` | nothing | [`ComponentStatus`] (the projection answers it too) |
//! | `get` | the order id (`null` for services with one aggregate) | the service's `View` |
//! | `part` | the order id | the service's `Part` of that order (404: it knows nothing of it) |
//! | `slow` | [`SlowRequest`] | [`SlowRequest`]: a knob delaying `get`/`part` (benchmarks, demos) |
//! | `replay` | [`ReplayRequest`] | [`Replayed`]: the service re-handles one of its dead letters |

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::Service;
use crate::resilience::GuardStatus;
use crate::rpc::Endpoint;

/// `status`: what `commerce status` shows of a component.
pub struct Status;

impl Endpoint for Status {
    const NAME: &'static str = "status";
    type Request = ();
    type Reply = ComponentStatus;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub component: String,
    /// Its database directory.
    pub database: String,
    /// Outbox rows not yet published.
    pub outbox_depth: u64,
    pub outbox_sent: u64,
    pub relay_duplicates: u64,
    pub relay_failures: u64,
    /// Waits for its stream's answers the relay ended on hearing the stream elect a new leader
    /// (and asked again).
    #[serde(default)]
    pub relay_elections: u64,
    /// Ids of applied events kept for deduplication.
    pub inbox: u64,
    /// Events delivered again since this process started (a consumer died or was slow).
    #[serde(default)]
    pub redelivered: u64,
    /// Events acknowledged without effect since start: the inbox had them (applied or
    /// dead-lettered), or the batch held them twice.
    #[serde(default)]
    pub duplicates_dropped: u64,
    /// Each external dependency's bulkhead and breaker.
    #[serde(default)]
    pub circuits: Vec<GuardStatus>,
    /// The read model's generation and rebuild (the projection only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_model: Option<ReadModelStatus>,
}

/// The projection's read model: the generation queries read, and a rebuild's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadModelStatus {
    pub generation: u32,
    pub rebuilding: bool,
    /// Events the running (or last) rebuild has read, of `rebuild_total`.
    pub rebuild_read: u64,
    pub rebuild_total: u64,
    /// Rebuilds completed since the projection started.
    pub rebuilds: u64,
}

/// `get`: the aggregate as clients see it.
pub struct Get<S>(PhantomData<S>);

impl<S: Service> Endpoint for Get<S> {
    const NAME: &'static str = "get";
    /// The order id; ignored by services with one aggregate.
    type Request = Option<String>;
    type Reply = S::View;
}

/// `part`: an order's part of this service, for the composed view.
pub struct Part<S>(PhantomData<S>);

impl<S: Service> Endpoint for Part<S> {
    const NAME: &'static str = "part";
    /// The order id.
    type Request = String;
    type Reply = S::Part;
}

/// `slow`: delay every `get` and `part` answer by `delay_ms` from now on (0: no delay).
pub struct Slow;

impl Endpoint for Slow {
    const NAME: &'static str = "slow";
    type Request = SlowRequest;
    type Reply = SlowRequest;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowRequest {
    pub delay_ms: u64,
}

/// `replay`: re-handle one of this service's dead letters (`commerce dlq replay`), the way a live
/// delivery goes (react, commit, flush), unless it was applied already. The service reads the
/// entry from `DLQ` itself (only its own: `dlq.<service>.>`), checks the event against the
/// subject it was published on, and publishes nothing but its own reactions (through its
/// outbox). Deleting the entry is the caller's, once the outcome is `applied` or
/// `already_applied`. Errors: 404 (no such entry of this service's), 503 (broker or storage).
pub struct Replay;

impl Endpoint for Replay {
    const NAME: &'static str = "replay";
    type Request = ReplayRequest;
    type Reply = Replayed;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The entry's sequence in `DLQ`.
    pub seq: u64,
}

/// What a replay came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    pub seq: u64,
    /// The event's id, type and order.
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub order_id: String,
    pub outcome: ReplayOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// Reacted to and durable now: the entry may go.
    Applied,
    /// It had been applied before; nothing was done: the entry may go.
    AlreadyApplied,
    /// Not now (its dependency is still down); nothing was done: the entry stays.
    Retry { reason: String },
    /// It can never be applied (not an event, misplaced, impossible); nothing was done.
    Rejected { reason: String },
}

impl ReplayOutcome {
    /// Is the event applied now (so its dead letter may be deleted)?
    pub fn is_done(&self) -> bool {
        matches!(self, ReplayOutcome::Applied | ReplayOutcome::AlreadyApplied)
    }
}
