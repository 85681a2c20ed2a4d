//! The machinery every service shares: event-sourced aggregates, reacting to a batch of inbound
//! events with one commit and one flush, commands from clients, the actor that serializes them,
//! and the host that wires a service to the bus.
//!
//! A service supplies only its domain: its [`Aggregate`] (state = fold of its events), where
//! each inbound event goes ([`Service::route`]) and what it does about it ([`Service::react`]).
//!
//! - [`core`]: the [`Engine`](core::Engine): load, react, commit, flush; commands and queries.
//! - [`actor`]: the actix actor around the engine, and the [`Handle`](actor::Handle) to it.
//! - [`host`]: one service on its own Arbiter: consumers, outbox relay, NATS micro endpoint.
//! - [`recovery`]: rebuilding a lost database from the service's own stream.

pub mod actor;
pub mod api;
pub mod core;
pub mod host;
pub mod recovery;

use std::future::Future;

use bus::{BusError, Domain, Verdict};
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::StorageError;

pub use crate::codec::{decode, encode, CodecError, DomainEvent};

use crate::events::Inbound;
use crate::rpc::server::ServeError;
use crate::rpc::{Component, DomainError, Server};
use crate::Settings;

pub use actor::Handle;

/// Event-sourced state: the fold of its events. `apply` is pure and cannot fail.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Unpin + 'static
{
    type Event: DomainEvent;
    fn apply(&mut self, event: &Self::Event);
}

/// What a service does about an inbound event: new events (maybe none), or a verdict for the
/// bus (`Retry` when a dependency failed for now, `Reject` when the event can never be applied).
pub type Reaction<E> = Result<Vec<E>, Verdict>;

/// What an inbound event needs from a service that calls an external system: events right
/// away, or a call first (whose answer the aggregate turns into events).
#[derive(Debug, Clone, PartialEq)]
pub enum Plan<E, C> {
    Emit(Vec<E>),
    Call(C),
}

/// A command's decision on the aggregate's current state and version (0: it does not exist yet).
pub type Decide<A> =
    Box<dyn FnOnce(&A, u64) -> Result<Vec<<A as Aggregate>::Event>, DomainError> + Send + 'static>;

/// A command for one aggregate.
pub struct Command<A: Aggregate> {
    pub aggregate_id: String,
    pub decide: Decide<A>,
}

/// A command's result: the aggregate after it, and the events it recorded.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    pub version: u64,
    pub state: A,
    pub events: Vec<A::Event>,
}

/// Where a service keeps its state: which aggregate an order's events (and queries) concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// One aggregate per order, named by the order id.
    PerOrder,
    /// One aggregate for everything (e.g. the warehouse's stock), named so.
    One(&'static str),
}

impl Placement {
    /// The aggregate that holds what concerns `order_id`.
    pub fn aggregate_id(self, order_id: &str) -> String {
        match self {
            Placement::PerOrder => order_id.to_string(),
            Placement::One(id) => id.to_string(),
        }
    }
}

/// One commerce service: its state, what it listens to, and how it reacts.
pub trait Service: Sized + Unpin + 'static {
    type State: Aggregate;
    /// The events this service reacts to, per upstream domain (one durable consumer each).
    const LISTENS: &'static [(Domain, &'static [&'static str])];
    /// Where its state lives.
    const PLACEMENT: Placement;
    /// What `get` answers: the aggregate as clients see it.
    type View: Serialize + DeserializeOwned + Send + 'static;
    /// What `part` answers: an order's part, as the composed view shows it.
    type Part: Serialize + DeserializeOwned + Send + 'static;

    /// The component it is (the owner of its events' domain).
    const COMPONENT: Component =
        Component::owner(<<Self::State as Aggregate>::Event as DomainEvent>::DOMAIN);

    /// The service's name: its database directory, durable consumer and micro service name.
    fn name() -> &'static str {
        Self::COMPONENT.name()
    }

    /// Build the service's dependencies (HTTP clients of external systems, each behind a guard
    /// from `ops`) from settings.
    fn new(settings: &Settings, ops: &crate::resilience::Ops) -> Result<Self, EngineError>;

    /// Decide what to do about `event`, given the aggregate's state. External calls happen here;
    /// the state is changed only by applying the returned events.
    fn react(
        &self,
        state: &Self::State,
        event: &Inbound,
        saga: &str,
    ) -> impl Future<Output = Reaction<<Self::State as Aggregate>::Event>>;

    /// How the aggregate is shown to clients (`get`); `None`: it does not exist.
    fn view(version: u64, state: &Self::State) -> Option<Self::View>;

    /// An order's part, as the composed view shows it; `None`: this service knows nothing of it.
    fn part(order_id: &str, version: u64, state: &Self::State) -> Option<Self::Part>;

    /// Endpoints besides the ones every service answers (`status`, `get`, `part`, `slow`).
    fn endpoints(
        server: &mut Server,
        handle: Handle<Self>,
    ) -> impl Future<Output = Result<(), ServeError>> {
        let _ = (server, handle);
        async { Ok(()) }
    }

    /// Work the service does besides reacting to events (e.g. tracking parcels).
    fn background(
        settings: &Settings,
        ops: &crate::resilience::Ops,
        handle: Handle<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<futures::future::LocalBoxFuture<'static, ()>> {
        let _ = (settings, ops, handle, shutdown);
        None
    }
}

impl From<EngineError> for DomainError {
    fn from(e: EngineError) -> Self {
        DomainError::unavailable(e.to_string())
    }
}

/// What can stop a service from doing its work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A stored or produced event does not (de)serialize: a bug or an incompatible database.
    #[error("event codec: {0}")]
    Codec(#[from] CodecError),
    /// Stored state (a snapshot, a read-model row) does not read back: a bug or an
    /// incompatible database.
    #[error("unreadable {what}: {source}")]
    Unreadable {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The service's settings cannot work (e.g. a bad URL).
    #[error("configuration: {0}")]
    Config(String),
    /// A file the service keeps beside its database.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The service actor is gone (shutting down).
    #[error("the {0} service is stopped")]
    Stopped(&'static str),
}

/// Given/when/then for aggregate tests: the state after `events`.
#[cfg(test)]
pub(crate) fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> A {
    let mut state = A::default();
    for event in events {
        state.apply(&event);
    }
    state
}

/// Lines for tests.
#[cfg(test)]
pub(crate) fn lines(items: &[(&str, u32)]) -> Vec<crate::catalog::Line> {
    items
        .iter()
        .map(|(sku, quantity)| crate::catalog::Line {
            sku: sku.to_string(),
            quantity: *quantity,
            unit_price_cents: 100,
        })
        .collect()
}
