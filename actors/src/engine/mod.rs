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
pub mod core;
pub mod host;
pub mod recovery;

use std::future::Future;

use bus::{BusError, Domain, Envelope, Verdict};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use storage::StorageError;

use crate::events::Inbound;
use crate::Settings;

pub use actor::Handle;

/// One service's events: an enum with `#[serde(tag = "type", content = "data")]` whose variant
/// names are the CloudEvents `type`s (past tense) and whose fields are `data`.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + 'static
{
    const DOMAIN: Domain;
}

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
    Box<dyn FnOnce(&A, u64) -> Result<Vec<<A as Aggregate>::Event>, ApiError> + Send + 'static>;

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

/// One commerce service: its state, what it listens to, and how it reacts.
pub trait Service: Sized + Unpin + 'static {
    type State: Aggregate;
    /// The events this service reacts to, per upstream domain (one durable consumer each).
    const LISTENS: &'static [(Domain, &'static [&'static str])];
    /// Micro endpoints that change state (`commerce.<service>.<name>`), answered after the flush.
    const COMMANDS: &'static [&'static str] = &[];

    /// The service's name: its database directory, durable consumer and micro service name.
    fn name() -> &'static str {
        <<Self::State as Aggregate>::Event as DomainEvent>::DOMAIN.service()
    }

    /// Build the service's dependencies (HTTP clients of external systems, each behind a guard
    /// from `ops`) from settings.
    fn new(settings: &Settings, ops: &crate::resilience::Ops) -> Result<Self, EngineError>;

    /// The aggregate an inbound event concerns, or `None` if the service ignores it.
    fn route(&self, event: &Inbound, saga: &str) -> Option<String>;

    /// Decide what to do about `event`, given the aggregate's state. External calls happen here;
    /// the state is changed only by applying the returned events.
    fn react(
        &self,
        state: &Self::State,
        event: &Inbound,
        saga: &str,
    ) -> impl Future<Output = Reaction<<Self::State as Aggregate>::Event>>;

    /// Parse a request to one of [`Service::COMMANDS`] into a command.
    fn command(endpoint: &str, body: &[u8]) -> Result<Command<Self::State>, ApiError> {
        let _ = body;
        Err(ApiError::not_found(format!("no command {endpoint}")))
    }

    /// The answer to a command.
    fn reply(endpoint: &str, executed: &Executed<Self::State>) -> Value {
        let _ = endpoint;
        Self::view(executed.version, &executed.state).unwrap_or(Value::Null)
    }

    /// The aggregate that holds the service's own event about saga `saga` (for recovery).
    fn own_aggregate(saga: &str) -> String {
        saga.to_string()
    }

    /// The aggregate a `get` request (body = the request payload) reads.
    fn get_id(body: &str) -> String {
        body.trim().to_string()
    }

    /// How the aggregate is shown to clients (`get`); `None`: it does not exist (404).
    fn view(version: u64, state: &Self::State) -> Option<Value> {
        (version > 0).then(|| serde_json::to_value(state).unwrap_or(Value::Null))
    }

    /// The aggregate holding an order's part for the composed view (`part` endpoint).
    fn part_id(order_id: &str) -> String {
        order_id.to_string()
    }

    /// An order's part, as the composed view shows it; `None`: this service knows nothing of it.
    fn part(order_id: &str, version: u64, state: &Self::State) -> Option<Value> {
        let _ = order_id;
        Self::view(version, state)
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

/// An error for a client, with an HTTP-like status code (carried as the micro service error code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

/// What can stop a service from doing its work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A stored or produced event does not (de)serialize: a bug or an incompatible database.
    #[error("event codec: {0}")]
    Codec(String),
    /// The service's settings cannot work (e.g. a bad URL).
    #[error("configuration: {0}")]
    Config(String),
    /// The service actor is gone (shutting down).
    #[error("the {0} service is stopped")]
    Stopped(&'static str),
}

/// The envelope that carries `event` in saga `saga`, caused by `cause` if any.
pub fn encode<E: DomainEvent>(
    event: &E,
    saga: &str,
    cause: Option<&Envelope>,
) -> Result<Envelope, EngineError> {
    let value = serde_json::to_value(event).map_err(|e| EngineError::Codec(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(EngineError::Codec(format!(
            "{event:?} is not a tagged event"
        )));
    };
    let event_type = match fields.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(EngineError::Codec(format!("{event:?} has no type"))),
    };
    let data = fields.remove("data").unwrap_or(Value::Null);
    let envelope = Envelope::new(E::DOMAIN, event_type, saga, data)?;
    Ok(match cause {
        Some(cause) => envelope.caused_by(cause),
        None => envelope,
    })
}

/// The event an envelope carries; the error says what does not fit (it becomes a DLQ reason).
pub fn decode<E: DomainEvent>(envelope: &Envelope) -> Result<E, String> {
    let value = serde_json::json!({ "type": envelope.event_type, "data": envelope.data });
    serde_json::from_value(value)
        .map_err(|e| format!("{} event {}: {e}", envelope.source, envelope.event_type))
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
