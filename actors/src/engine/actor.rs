//! The actor around a service's [`Engine`]: its mailbox serializes every change to the service's
//! database (event batches from each consumer, commands from clients, replays of dead letters),
//! so the engine is the single writer. Handlers are atomic: a batch's external calls and flush
//! finish before the next message is looked at.

use std::sync::Arc;

use actix::prelude::*;
use bus::relay::RelayStats;
use bus::{Delivery, Envelope};
use storage::{Fenced, StorageError, Store};

use super::api::ComponentStatus;
use super::api::ReplayOutcome;
use super::core::{DeliveryCounts, Engine, Settled};
use super::{Command, DomainError, EngineError, Executed, Service};

pub struct ServiceActor<S: Service> {
    /// Taken out while a handler's future runs (handlers are atomic, so none overlap).
    engine: Option<Engine<S>>,
}

impl<S: Service> ServiceActor<S> {
    pub fn new(engine: Engine<S>) -> Self {
        ServiceActor {
            engine: Some(engine),
        }
    }
}

impl<S: Service> Actor for ServiceActor<S> {
    type Context = Context<Self>;
}

/// A batch from one durable consumer.
pub struct Deliver(pub Vec<Delivery>);

impl Message for Deliver {
    type Result = Result<Settled, EngineError>;
}

/// Commands from clients, committed and flushed together.
pub struct Execute<S: Service>(pub Vec<Command<S::State>>);

impl<S: Service> Message for Execute<S> {
    type Result = Vec<Result<Executed<S::State>, DomainError>>;
}

/// A question about an aggregate, given its version and state.
pub type Question<A, T> = Box<dyn FnOnce(u64, &A) -> T + Send>;

/// Answer a question about one aggregate inside the actor, without copying its state.
pub struct Query<S: Service, T>(pub String, pub Question<S::State, T>);

impl<S: Service, T: 'static> Message for Query<S, T> {
    type Result = Result<T, EngineError>;
}

impl<S: Service, T: 'static> Handler<Query<S, T>> for ServiceActor<S> {
    type Result = Result<T, EngineError>;

    fn handle(&mut self, msg: Query<S, T>, _ctx: &mut Context<Self>) -> Self::Result {
        match self.engine.as_mut() {
            Some(engine) => engine.query(&msg.0, msg.1),
            None => Err(EngineError::Stopped(S::name())),
        }
    }
}

/// Run `work` on the engine, then put it back; atomic, so no other message interleaves.
/// `busy` answers if the engine is out, which atomic handlers make impossible.
fn with_engine<S, T, F, Fut>(
    actor: &mut ServiceActor<S>,
    busy: T,
    work: F,
) -> AtomicResponse<ServiceActor<S>, T>
where
    S: Service,
    T: 'static,
    F: FnOnce(Engine<S>) -> Fut,
    Fut: std::future::Future<Output = (Engine<S>, T)> + 'static,
{
    match actor.engine.take() {
        Some(engine) => AtomicResponse::new(Box::pin(work(engine).into_actor(actor).map(
            |(engine, result), actor, _| {
                actor.engine = Some(engine);
                result
            },
        ))),
        None => AtomicResponse::new(Box::pin(fut::ready(busy))),
    }
}

impl<S: Service> Handler<Deliver> for ServiceActor<S> {
    type Result = AtomicResponse<Self, Result<Settled, EngineError>>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let busy = Err(EngineError::Stopped(S::name()));
        with_engine(self, busy, |mut engine| async move {
            let result = deliver(&mut engine, msg.0).await;
            (engine, result)
        })
    }
}

/// Apply a batch: the engine sees its envelopes, and each verdict goes back with its delivery.
async fn deliver<S: Service>(
    engine: &mut Engine<S>,
    deliveries: Vec<Delivery>,
) -> Result<Settled, EngineError> {
    let applied = {
        let envelopes: Vec<&Envelope> = deliveries.iter().map(|d| &d.envelope).collect();
        engine.deliver(&envelopes).await?
    };
    Ok(Settled {
        verdicts: applied.verdicts.into_iter().zip(deliveries).collect(),
        flushed: applied.flushed,
    })
}

/// One dead-lettered event, re-driven by an operator (`commerce dlq replay`).
pub struct Replay(pub Envelope);

impl Message for Replay {
    type Result = Result<ReplayOutcome, EngineError>;
}

impl<S: Service> Handler<Replay> for ServiceActor<S> {
    type Result = AtomicResponse<Self, Result<ReplayOutcome, EngineError>>;

    fn handle(&mut self, msg: Replay, _ctx: &mut Context<Self>) -> Self::Result {
        let busy = Err(EngineError::Stopped(S::name()));
        with_engine(self, busy, |mut engine| async move {
            let result = engine.replay(&msg.0).await;
            (engine, result)
        })
    }
}

impl<S: Service> Handler<Execute<S>> for ServiceActor<S> {
    type Result = AtomicResponse<Self, Vec<Result<Executed<S::State>, DomainError>>>;

    fn handle(&mut self, msg: Execute<S>, _ctx: &mut Context<Self>) -> Self::Result {
        let busy = (0..msg.0.len())
            .map(|_| Err(EngineError::Stopped(S::name()).into()))
            .collect();
        with_engine(self, busy, |mut engine| async move {
            let result = engine.execute(msg.0).await;
            (engine, result)
        })
    }
}

/// What the rest of the system holds to talk to a running service.
pub struct Handle<S: Service> {
    addr: Addr<ServiceActor<S>>,
    store: Store,
    relay: Arc<RelayStats>,
    ops: crate::resilience::Ops,
    counts: Arc<DeliveryCounts>,
}

/// How long a command's answer waits for its events to be published (instances only).
const PUBLISHED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How often it looks: the relay publishes as soon as a flush releases the rows.
const PUBLISHED_POLL: std::time::Duration = std::time::Duration::from_millis(2);

impl<S: Service> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            addr: self.addr.clone(),
            store: self.store.clone(),
            relay: self.relay.clone(),
            ops: self.ops.clone(),
            counts: self.counts.clone(),
        }
    }
}

impl<S: Service> Handle<S> {
    /// Whether this service may commit now (see [`storage::Fence`]).
    pub fn may_write(&self) -> bool {
        self.store.check_fence().is_ok()
    }

    pub fn new(
        addr: Addr<ServiceActor<S>>,
        store: Store,
        relay: Arc<RelayStats>,
        ops: crate::resilience::Ops,
        counts: Arc<DeliveryCounts>,
    ) -> Self {
        Handle {
            addr,
            store,
            relay,
            ops,
            counts,
        }
    }

    pub fn addr(&self) -> &Addr<ServiceActor<S>> {
        &self.addr
    }

    pub async fn deliver(&self, batch: Vec<Delivery>) -> Result<Settled, EngineError> {
        let again = batch.iter().filter(|d| d.delivered > 1).count() as u64;
        self.counts
            .redelivered
            .fetch_add(again, std::sync::atomic::Ordering::Relaxed);
        crate::telemetry::metrics::redelivered(S::name(), again);
        self.addr
            .send(Deliver(batch))
            .await
            .map_err(|_| EngineError::Stopped(S::name()))?
    }

    /// Re-drive a dead-lettered event through the engine (between batches, like any message).
    pub async fn replay(&self, envelope: Envelope) -> Result<ReplayOutcome, EngineError> {
        self.addr
            .send(Replay(envelope))
            .await
            .map_err(|_| EngineError::Stopped(S::name()))?
    }

    pub async fn execute_all(
        &self,
        commands: Vec<Command<S::State>>,
    ) -> Vec<Result<Executed<S::State>, DomainError>> {
        let n = commands.len();
        let mut results = match self.addr.send(Execute::<S>(commands)).await {
            Ok(results) => results,
            Err(_) => {
                return (0..n)
                    .map(|_| Err(EngineError::Stopped(S::name()).into()))
                    .collect()
            }
        };
        if self.store.is_fenced() && results.iter().any(Result::is_ok) {
            if let Err(why) = self.published(self.store.committed_through()).await {
                for result in results.iter_mut().filter(|r| r.is_ok()) {
                    *result = Err(why.clone());
                }
            }
        }
        results
    }

    /// One of several instances answers a command only once its events are published: its
    /// database is abandoned if it loses its lease, and a successor knows only the stream. An
    /// answer that cannot wait says so (503): the client sends the command again under its
    /// Idempotency-Key, and whichever instance owns the service then answers it once.
    async fn published(&self, seq: u64) -> Result<(), DomainError> {
        let deadline = tokio::time::Instant::now() + PUBLISHED_WITHIN;
        loop {
            // A lease lost for good: nothing more is published here; say so now.
            if let Err(StorageError::Fenced(lost @ Fenced::Lost { .. })) = self.store.check_fence()
            {
                return Err(DomainError::unavailable(format!(
                    "accepted here but not published ({lost}); send it again with the same \
                     Idempotency-Key"
                )));
            }
            match self.store.published_through(seq) {
                Ok(true) => return Ok(()),
                Ok(false) if tokio::time::Instant::now() < deadline => {}
                Ok(false) => {
                    return Err(DomainError::unavailable(
                        "accepted here but not yet published; send it again with the same \
                         Idempotency-Key",
                    ))
                }
                Err(e) => return Err(DomainError::unavailable(e.to_string())),
            }
            tokio::time::sleep(PUBLISHED_POLL).await;
        }
    }

    pub async fn execute(
        &self,
        command: Command<S::State>,
    ) -> Result<Executed<S::State>, DomainError> {
        self.execute_all(vec![command])
            .await
            .pop()
            .unwrap_or_else(|| Err(EngineError::Stopped(S::name()).into()))
    }

    pub async fn query<T: Send + 'static>(
        &self,
        aggregate_id: String,
        query: impl FnOnce(u64, &S::State) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.addr
            .send(Query::<S, T>(aggregate_id, Box::new(query)))
            .await
            .map_err(|_| EngineError::Stopped(S::name()))?
    }

    /// What `commerce status` shows about this service.
    /// How long the oldest unpublished outbox row has waited (from its event's time).
    pub fn oldest_pending(&self) -> Option<std::time::Duration> {
        let row = self.store.pending(1).ok()?.into_iter().next()?;
        let envelope = Envelope::from_slice(row.message.payload.as_bytes()).ok()?;
        (chrono::Utc::now() - envelope.time).to_std().ok()
    }

    pub fn status(&self) -> ComponentStatus {
        use std::sync::atomic::Ordering::Relaxed;
        ComponentStatus {
            component: S::name().to_string(),
            database: self.store.path().display().to_string(),
            outbox_depth: self.store.outbox_depth() as u64,
            outbox_sent: self.relay.sent.load(Relaxed),
            relay_duplicates: self.relay.duplicates.load(Relaxed),
            relay_failures: self.relay.failures.load(Relaxed),
            relay_elections: self.relay.elections.load(Relaxed),
            inbox: self.store.inbox_len() as u64,
            redelivered: self.counts.redelivered.load(Relaxed),
            duplicates_dropped: self.counts.duplicates_dropped.load(Relaxed),
            circuits: self.ops.status(),
            read_model: None,
        }
    }
}
