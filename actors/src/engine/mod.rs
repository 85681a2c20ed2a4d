//! The machinery every service shares: event-sourced aggregates, reacting to a batch of inbound
//! events with one commit and one flush, commands from clients, the actor that serializes them,
//! and the host that wires a service to the bus.
//!
//! A service supplies its domain as an [`Aggregate`], the one place that decides (cqrs-es's
//! handle/apply split): `handle` decides on a client's command, `react` on an inbound event
//! (events now, or an external call first, whose answer `outcome` turns into events), `apply`
//! folds. All pure. The [`Service`] around it holds what is not deciding: where its state lives
//! ([`Placement`]), what it listens to, how it is shown, and the external system it calls.
//!
//! - [`reaction`]: the one loop from an inbound event to its events (plan, call, outcome).
//! - [`core`]: the [`Engine`](core::Engine): a batch in named phases (admit, load, react,
//!   record, commit and flush); commands and queries.
//! - [`actor`]: the actix actor around the engine, and the [`Handle`](actor::Handle) to it.
//! - [`api`]: the endpoints every service answers (`status`, `get`, `part`, `slow`).
//! - [`host`]: a component on its own Arbiter (services and the projection): start-up,
//!   consumers, retention; `host::service` adds the relay, recovery and endpoints of a service.
//! - [`recovery`]: rebuilding a lost database from the service's own stream.
//! - `testing` (tests only): given/when/then for aggregates.

pub mod actor;
pub mod api;
pub mod core;
pub mod host;
pub mod recovery;
#[cfg(test)]
pub(crate) mod testing;

use std::future::Future;

use bus::{BusError, Domain, Verdict};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::StorageError;

pub use crate::codec::{decode, encode, CodecError, DomainEvent};

use crate::events::Inbound;
use crate::rpc::server::ServeError;
use crate::rpc::{Address, Component, DomainError, Routes, Server};
use crate::Settings;

pub use actor::Handle;

/// Event-sourced state, and the one place that decides. Deciding (`handle`, `react`,
/// `outcome`, `give_up`) and folding (`apply`) are pure: no IO, no clock (the time comes in).
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Unpin + 'static
{
    type Event: DomainEvent;
    /// A client's command (`Infallible`: the service takes none).
    type Command: Send + 'static;
    /// An external call an inbound event may need first (`Infallible`: it never calls anyone).
    type Call;
    /// The external system's answer to a call.
    type Answer;

    /// Decide on a client's command.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// What an inbound event of order `order_id` needs, at `now`: events right away, or a call.
    fn react(
        &self,
        order_id: &str,
        event: &Inbound,
        now: DateTime<Utc>,
    ) -> Plan<Self::Event, Self::Call>;

    /// The events for a call's answer, at `now`.
    fn outcome(
        &self,
        call: Self::Call,
        answer: Self::Answer,
        now: DateTime<Utc>,
    ) -> Vec<Self::Event>;

    /// The call for `event` stayed unavailable (`reason`) until `now`: the event that gives the
    /// step up once the saga's `deadline` has passed, or `None` to keep retrying.
    fn give_up(
        &self,
        event: &Inbound,
        call: &Self::Call,
        reason: &str,
        now: DateTime<Utc>,
        deadline: chrono::Duration,
    ) -> Option<Self::Event> {
        let _ = (event, call, reason, now, deadline);
        None
    }

    /// The state before any event: of the whole service, or of one SKU shard of a service
    /// split by SKU ([`Placement::BySku`]).
    fn initial(shard: Option<Shard>) -> Self {
        let _ = shard;
        Self::default()
    }

    /// Fold an event into the state. Cannot fail.
    fn apply(&mut self, event: &Self::Event);

    /// Its saga is over here: no event is expected in the normal course. A closed aggregate is
    /// snapshotted in place of its events and not kept in memory, so both stay as big as what is
    /// open. Only a hint: a late event still loads it from the snapshot and is applied.
    fn is_closed(&self) -> bool {
        false
    }
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
    /// The event is impossible in the aggregate's state (it contradicts what the aggregate
    /// already knows): not believed, nothing changes, and it goes to DLQ with this reason.
    Refuse(String),
}

/// What the aggregate makes of an inbound event of order `order_id`: its events, or, when it
/// needs an external call first, the events for the call's answer. A call that stays
/// unavailable (down, open breaker, full bulkhead) is retried with backoff until the aggregate
/// gives the step up at the saga's deadline (which cancels and compensates).
pub async fn reaction<S: Service>(
    service: &S,
    state: &S::State,
    order_id: &str,
    event: &Inbound,
) -> Reaction<<S::State as Aggregate>::Event> {
    let call = match state.react(order_id, event, Utc::now()) {
        Plan::Emit(events) => return Ok(events),
        Plan::Refuse(reason) => return Err(Verdict::Reject(reason)),
        Plan::Call(call) => call,
    };
    let answer = service.call(order_id, &call).await;
    let now = Utc::now();
    match answer {
        Ok(answer) => Ok(state.outcome(call, answer, now)),
        Err(Verdict::Retry(reason)) => state
            .give_up(event, &call, &reason, now, service.saga_deadline())
            .map(|given_up| vec![given_up])
            .ok_or(Verdict::Retry(reason)),
        Err(other) => Err(other),
    }
}

/// A command for one aggregate.
pub struct Command<A: Aggregate> {
    pub aggregate_id: String,
    pub command: A::Command,
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
    /// One aggregate for everything (e.g. the co-purchase counters), named so.
    One(&'static str),
    /// One aggregate of stock per SKU shard, named so (`warehouse`), or `warehouse.<k>` for
    /// shard `k` once stock is split by SKU.
    BySku(&'static str),
}

impl Placement {
    /// The aggregate that holds what concerns `order_id`, in SKU shard `shard` (if split).
    pub fn aggregate_id(self, order_id: &str, shard: Option<Shard>) -> String {
        match (self, shard) {
            (Placement::PerOrder, _) => order_id.to_string(),
            (Placement::BySku(id), Some(shard)) => format!("{id}.{}", shard.index),
            (Placement::One(id) | Placement::BySku(id), _) => id.to_string(),
        }
    }
}

/// One part of a stock service split by SKU: the SKUs whose partition
/// ([`bus::Partitions::of`], the function that partitions orders) is `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The shard of `sku` among `count`.
    pub fn of(sku: &str, count: u32) -> u32 {
        bus::Partitions::new(count).map_or(0, |p| p.of(sku))
    }

    /// Does this shard keep `sku`'s stock?
    pub fn holds(self, sku: &str) -> bool {
        Shard::of(sku, self.count) == self.index
    }
}

/// The orders one host of a service answers for: every order, or those of its partition when
/// the service is split by order; a service split by SKU takes part in every order, for its
/// SKUs ([`crate::rpc::Routes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub address: Address,
    routes: Routes,
}

impl Scope {
    pub fn new(address: Address, routes: Routes) -> Scope {
        Scope { address, routes }
    }

    /// Does this host answer for `order_id`?
    pub fn owns(&self, order_id: &str) -> bool {
        !self.address.component.keeps_orders()
            || self.routes.of_order(self.address.component, order_id) == self.address
    }

    /// Its SKU shard, when it is one part of a service split by SKU.
    pub fn shard(&self) -> Option<Shard> {
        let index = self.address.partition?;
        self.address.component.keeps_stock().then(|| Shard {
            index,
            count: self.routes.partitions().count(),
        })
    }
}

/// One commerce service around its aggregate: what it listens to, where its state lives, how
/// it is shown, and the external system it calls.
pub trait Service: Sized + Unpin + 'static {
    type State: Aggregate;
    /// The events this service reacts to, per upstream domain (one durable consumer each).
    const LISTENS: &'static [(Domain, &'static [&'static str])];
    /// Its own events (among those it listens to) it reacts to as soon as they are durable, in
    /// this process, instead of one hop later when its stream delivers them: that copy finds them
    /// applied. It is also the fallback: an echo that cannot be applied now waits for it (and
    /// echoes pause a while after one had to be retried). An echo jumps its stream's queue, so
    /// only an event no earlier event of its own aggregate can still be waiting for (shipment's
    /// request is its aggregate's first).
    const ECHO: &'static [&'static str] = &[];
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

    /// Make an external call the aggregate asked for (for order `order_id`). A failure the
    /// system may recover from (timeout, 5xx, outage, open breaker) is a `Retry`; a refusal that
    /// can never succeed is a `Reject`.
    fn call(
        &self,
        order_id: &str,
        call: &<Self::State as Aggregate>::Call,
    ) -> impl Future<Output = Result<<Self::State as Aggregate>::Answer, Verdict>>;

    /// How long a saga step may wait for its external system before the aggregate may give it
    /// up ([`Aggregate::give_up`]); forever unless the service says otherwise.
    fn saga_deadline(&self) -> chrono::Duration {
        chrono::Duration::MAX
    }

    /// How the aggregate is shown to clients (`get`); `None`: it does not exist.
    fn view(version: u64, state: &Self::State) -> Option<Self::View>;

    /// An order's part, as the composed view shows it; `None`: this service knows nothing of it.
    fn part(order_id: &str, version: u64, state: &Self::State) -> Option<Self::Part>;

    /// An order's part from the parts of every SKU shard that knows of it (a service split by
    /// SKU); `None`: none does.
    fn merge(parts: Vec<Self::Part>) -> Option<Self::Part> {
        parts.into_iter().next()
    }

    /// Endpoints besides the ones every service answers (`status`, `get`, `part`, `slow`), for
    /// the orders in `scope`.
    fn endpoints(
        server: &mut Server,
        handle: Handle<Self>,
        scope: Scope,
    ) -> impl Future<Output = Result<(), ServeError>> {
        let _ = (server, handle, scope);
        async { Ok(()) }
    }

    /// Work the service does besides reacting to events (e.g. tracking parcels), for the
    /// orders in `scope`.
    fn background(
        settings: &Settings,
        ops: &crate::resilience::Ops,
        handle: Handle<Self>,
        scope: Scope,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<futures::future::LocalBoxFuture<'static, ()>> {
        let _ = (settings, ops, handle, scope, shutdown);
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
    /// An external system's client cannot be built from the settings.
    #[error(transparent)]
    External(#[from] crate::external::ClientError),
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
