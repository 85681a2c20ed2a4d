//! The endpoints every service answers (`commerce.<service>.<endpoint>`), and their types.
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `status` | nothing | [`ComponentStatus`] (the projection answers it too) |
//! | `get` | the order id (`null` for services with one aggregate) | the service's `View` |
//! | `part` | the order id | the service's `Part` of that order (404: it knows nothing of it) |
//! | `slow` | [`SlowRequest`] | [`SlowRequest`]: a knob delaying `get`/`part` (benchmarks, demos) |

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
    /// Ids of applied events kept for deduplication.
    pub inbox: u64,
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
