//! The projection: keeps `order_read_model` (one row per order, see [`model`]) in its own sled
//! database, from durable consumers on every domain stream. Group commit: a batch's rows are
//! written together, flushed once, then acked. `GET /orders/{id}` is one lookup here.
//!
//! Rebuild (`commerce projection rebuild`): replay every stream from sequence 1 into a new
//! generation of rows while queries keep reading the old one; live events go to both meanwhile;
//! when the replay has reached where the streams were when it began, switch (one write).

pub mod api;
pub mod model;
pub mod sagas;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_nats::jetstream;
use bus::{BusError, Delivery, Domain, Envelope, Login, Verdict};
use futures::{FutureExt, StreamExt};
use storage::Store;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use self::api::{ReadOrder, Rebuild, RebuildStarted, Sagas};
use self::model::OrderReadModel;
use self::sagas::OpenSagas;
use crate::engine::actor::Deliver;
use crate::engine::api::{ComponentStatus, ReadModelStatus, Status};
use crate::engine::core::Settled;
use crate::engine::host::consume::Sink;
use crate::engine::host::{self, Host, RunningComponent};
use crate::engine::EngineError;
use crate::rpc::{Component, DomainError};
use crate::telemetry::{metrics, trace};
use crate::Settings;

const COMPONENT: Component = Component::Projection;

/// Rebuild progress, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub running: std::sync::atomic::AtomicBool,
    pub read: AtomicU64,
    pub total: AtomicU64,
    pub rebuilds: AtomicU64,
}

/// Serializes every write to the rows (live batches and the rebuild's), so no update is lost.
pub struct ProjectionActor {
    store: Store,
    /// The generation queries read (shared with the query endpoint).
    active: Arc<AtomicU32>,
    /// The generation a rebuild is filling, if one runs.
    building: Option<u32>,
    /// The active generation's open sagas.
    sagas: Arc<OpenSagas>,
}

impl Actor for ProjectionActor {
    type Context = Context<Self>;
}

impl Progress {
    fn status(&self, generation: u32) -> ReadModelStatus {
        ReadModelStatus {
            generation,
            rebuilding: self.running.load(Ordering::Acquire),
            rebuild_read: self.read.load(Ordering::Acquire),
            rebuild_total: self.total.load(Ordering::Acquire),
            rebuilds: self.rebuilds.load(Ordering::Acquire),
        }
    }
}

impl ProjectionActor {
    /// Apply envelopes to the rows of `generation`: each order's row once per batch.
    fn apply(&self, generation: u32, envelopes: &[&Envelope]) -> Result<(), EngineError> {
        let mut rows: HashMap<&str, OrderReadModel> = HashMap::new();
        let mut changed = Vec::new();
        for envelope in envelopes {
            let id = envelope.subject.as_str();
            if !rows.contains_key(id) {
                let row = match self.store.model(generation, id)? {
                    Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| {
                        EngineError::Unreadable {
                            what: format!("read model row {id}"),
                            source,
                        }
                    })?,
                    None => OrderReadModel::new(id),
                };
                rows.insert(id, row);
            }
            if let Some(row) = rows.get_mut(id) {
                if row.insert(envelope) && !changed.contains(&id) {
                    changed.push(id);
                }
            }
        }
        // Each changed row is refolded once per batch, however many of its events came.
        let refolded: Vec<OrderReadModel> = changed
            .into_iter()
            .filter_map(|id| rows.remove(id))
            .map(|mut row| {
                row.refold();
                row
            })
            .collect();
        let writes = refolded
            .iter()
            .map(|row| match serde_json::to_vec(row) {
                Ok(bytes) => Ok((row.order_id.clone(), bytes)),
                Err(source) => Err(EngineError::Unreadable {
                    what: format!("read model row {} (encoding)", row.order_id),
                    source,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.store.write_models(generation, &writes)?;
        if generation == self.active.load(Ordering::Acquire) {
            refolded.iter().for_each(|row| self.sagas.update(row));
        }
        Ok(())
    }

    fn generations(&self) -> Vec<u32> {
        let mut generations = vec![self.active.load(Ordering::Acquire)];
        generations.extend(self.building);
        generations
    }
}

impl Handler<Deliver> for ProjectionActor {
    type Result = AtomicResponse<Self, Result<Settled, EngineError>>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let envelopes: Vec<&Envelope> = msg.0.iter().map(|d| &d.envelope).collect();
        let applied = self
            .generations()
            .into_iter()
            .try_for_each(|generation| self.apply(generation, &envelopes));
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move {
                applied?;
                let flushed = store.flush().await?;
                let verdicts = msg.0.into_iter().map(|d| (Verdict::Done, d)).collect();
                Ok(Settled { verdicts, flushed })
            }
            .into_actor(self),
        ))
    }
}

/// Why a rebuild step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild is already running")]
    AlreadyRunning,
    #[error("no rebuild is running")]
    NotRunning,
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Start filling a new generation; answers it, and where each stream's replay must reach.
struct BeginRebuild;
impl Message for BeginRebuild {
    type Result = Result<u32, RebuildError>;
}

impl Handler<BeginRebuild> for ProjectionActor {
    type Result = Result<u32, RebuildError>;
    fn handle(&mut self, _: BeginRebuild, _: &mut Context<Self>) -> Self::Result {
        if self.building.is_some() {
            return Err(RebuildError::AlreadyRunning);
        }
        let active = self.active.load(Ordering::Acquire);
        let next = active + 1;
        // Leftovers: an interrupted rebuild's rows, and the generation the last switch replaced
        // (kept until now so queries that had already picked it could still finish).
        self.store.drop_models(next)?;
        if let Some(previous) = active.checked_sub(1) {
            self.store.drop_models(previous)?;
        }
        self.building = Some(next);
        Ok(next)
    }
}

/// Replayed events for the generation being built.
struct Replay(Vec<Envelope>);
impl Message for Replay {
    type Result = Result<(), RebuildError>;
}

impl Handler<Replay> for ProjectionActor {
    type Result = Result<(), RebuildError>;
    fn handle(&mut self, msg: Replay, _: &mut Context<Self>) -> Self::Result {
        let generation = self.building.ok_or(RebuildError::NotRunning)?;
        Ok(self.apply(generation, &msg.0.iter().collect::<Vec<_>>())?)
    }
}

/// Switch queries to the rebuilt generation (`Some`), or abandon it (`None`).
struct EndRebuild(bool);
impl Message for EndRebuild {
    type Result = Result<(), EngineError>;
}

impl Handler<EndRebuild> for ProjectionActor {
    type Result = AtomicResponse<Self, Result<(), EngineError>>;
    fn handle(&mut self, msg: EndRebuild, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let built = self.building.take();
        let active = self.active.clone();
        let sagas = self.sagas.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let Some(built) = built else { return Ok(()) };
                if !msg.0 {
                    store.drop_models(built)?;
                    return Ok(());
                }
                // Make the new rows durable, then switch in one write.
                let _ = store.flush().await?;
                store.switch_models(built)?;
                let _ = store.flush().await?;
                active.store(built, Ordering::Release);
                load_sagas(&sagas, &store, built)
            }
            .into_actor(self),
        ))
    }
}

#[derive(Clone)]
struct ProjectionSink(Addr<ProjectionActor>);

impl Sink for ProjectionSink {
    fn name(&self) -> &'static str {
        COMPONENT.name()
    }
    /// Each event is a span of the projection's (the batch's time: it is applied as one).
    async fn deliver(&self, batch: Vec<Delivery>) -> Result<Settled, EngineError> {
        let spans: Vec<_> = batch
            .iter()
            .map(|d| trace::handling(COMPONENT.name(), &d.envelope))
            .collect();
        let settled = self
            .0
            .send(Deliver(batch))
            .await
            .map_err(|_| EngineError::Stopped(COMPONENT.name()))??;
        for (span, (verdict, delivery)) in spans.iter().zip(&settled.verdicts) {
            trace::finish_handling(span, verdict);
            metrics::handled(COMPONENT.name(), &delivery.envelope.event_type, verdict);
        }
        Ok(settled)
    }
}

/// Start the projection on its own Arbiter.
pub async fn spawn(
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
) -> Result<RunningComponent, EngineError> {
    host::spawn_with(COMPONENT, settings, login, shutdown, |s, u, t, r| {
        run(s, u, t, r).boxed_local()
    })
    .await
}

async fn run(
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<(), EngineError> {
    let store = Store::open(settings.service_dir(COMPONENT.name()), &settings.store)?;
    let active = Arc::new(AtomicU32::new(store.active_models()?));
    let mut host = Host::connect(COMPONENT, settings, store, &login, shutdown).await?;
    let sagas = Arc::new(OpenSagas::default());
    load_sagas(&sagas, &host.store, active.load(Ordering::Acquire))?;
    let actor = ProjectionActor {
        store: host.store.clone(),
        active: active.clone(),
        building: None,
        sagas: sagas.clone(),
    }
    .start();
    let progress = Arc::new(Progress::default());
    for domain in Domain::ALL {
        let sink = ProjectionSink(actor.clone());
        host.consume(domain.stream(), Vec::new(), sink).await?;
    }

    let mut server = host.server("commerce order read model").await?;
    let (store, generation) = (host.store.clone(), active.clone());
    server
        .each::<ReadOrder, _, _>(move |id: String| {
            let id = id.trim().to_string();
            std::future::ready(lookup(&store, generation.load(Ordering::Acquire), &id))
        })
        .await?;
    let (store, generation, p) = (host.store.clone(), active.clone(), progress.clone());
    server
        .each::<Status, _, _>(move |()| {
            std::future::ready(Ok(ComponentStatus {
                component: COMPONENT.name().to_string(),
                database: store.path().display().to_string(),
                read_model: Some(p.status(generation.load(Ordering::Acquire))),
                ..ComponentStatus::default()
            }))
        })
        .await?;
    let stuck_after = host.settings.stuck_after();
    server
        .each::<Sagas, _, _>(move |()| {
            std::future::ready(Ok(sagas.report(stuck_after, chrono::Utc::now())))
        })
        .await?;
    let js = host.js.clone();
    server
        .each::<Rebuild, _, _>(move |()| {
            let (js, actor, progress) = (js.clone(), actor.clone(), progress.clone());
            async move { start_rebuild(&js, &actor, &progress).await }
        })
        .await?;
    host.serve_until_shutdown(server, ready).await
}

/// Track the open sagas of `generation`'s rows (rows that do not decode are skipped: the
/// query endpoint reports them).
fn load_sagas(sagas: &OpenSagas, store: &Store, generation: u32) -> Result<(), EngineError> {
    let rows: Vec<OrderReadModel> = store
        .models(generation)?
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
        .collect();
    sagas.reload(&rows);
    Ok(())
}

/// One lookup.
fn lookup(store: &Store, generation: u32, id: &str) -> Result<OrderReadModel, DomainError> {
    match store.model(generation, id) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map_err(|e| DomainError::unavailable(format!("unreadable read model row: {e}"))),
        Ok(None) => Err(DomainError::not_found(format!("no order {id:?}"))),
        Err(e) => Err(DomainError::unavailable(e.to_string())),
    }
}

/// Begin a rebuild in the background; answers at once with what it will read.
async fn start_rebuild(
    js: &jetstream::Context,
    actor: &Addr<ProjectionActor>,
    progress: &Arc<Progress>,
) -> Result<RebuildStarted, DomainError> {
    let generation = actor
        .send(BeginRebuild)
        .await
        .map_err(|_| DomainError::unavailable("the projection is stopping"))?
        .map_err(|e| match e {
            RebuildError::AlreadyRunning => DomainError::conflict(e.to_string()),
            other => DomainError::unavailable(other.to_string()),
        })?;
    // Live events from here on go to the new generation too; the replay covers everything before.
    let targets = match replay_targets(js).await {
        Ok(targets) => targets,
        Err(e) => {
            let _ = actor.send(EndRebuild(false)).await;
            return Err(e);
        }
    };
    let total: u64 = targets.iter().map(|(_, last)| *last).sum();
    progress.read.store(0, Ordering::Release);
    progress.total.store(total, Ordering::Release);
    progress.running.store(true, Ordering::Release);
    let (js, actor, progress) = (js.clone(), actor.clone(), progress.clone());
    actix_rt::spawn(async move {
        let result = replay(&js, &actor, &progress, &targets).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "projection rebuild failed; the old model stays");
        }
        let _ = actor.send(EndRebuild(result.is_ok())).await;
        progress.running.store(false, Ordering::Release);
        if result.is_ok() {
            progress.rebuilds.fetch_add(1, Ordering::AcqRel);
        }
    });
    Ok(RebuildStarted {
        generation,
        events: total,
    })
}

/// Where each stream ends now: what the replay must reach.
async fn replay_targets(js: &jetstream::Context) -> Result<Vec<(Domain, u64)>, DomainError> {
    let mut targets = Vec::new();
    for domain in Domain::ALL {
        let mut stream = js
            .get_stream(domain.stream())
            .await
            .map_err(|e| DomainError::unavailable(e.to_string()))?;
        let state = &stream
            .info()
            .await
            .map_err(|e| DomainError::unavailable(e.to_string()))?
            .state;
        if state.first_sequence > 1 {
            return Err(DomainError::conflict(format!(
                "{} no longer holds its first events (retention): a rebuild would lose orders",
                domain.stream()
            )));
        }
        targets.push((domain, state.last_sequence));
    }
    Ok(targets)
}

/// Read every stream from sequence 1 up to its target into the new generation.
async fn replay(
    js: &jetstream::Context,
    actor: &Addr<ProjectionActor>,
    progress: &Progress,
    targets: &[(Domain, u64)],
) -> Result<(), RebuildError> {
    let failed = |cause: async_nats::Error| {
        RebuildError::Engine(EngineError::Bus(BusError::jetstream("rebuild")(cause)))
    };
    for (domain, last) in targets {
        if *last == 0 {
            continue;
        }
        let stream = js
            .get_stream(domain.stream())
            .await
            .map_err(|e| failed(e.into()))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.into()))?;
        let mut messages = consumer.messages().await.map_err(|e| failed(e.into()))?;
        let mut batch = Vec::with_capacity(512);
        let mut seen = 0;
        while seen < *last {
            let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .map_err(|_| failed(format!("{} stopped answering", domain.stream()).into()))?
                .ok_or_else(|| failed("stream ended".into()))?
                .map_err(|e| failed(e.into()))?;
            seen = message.info().map_err(failed)?.stream_sequence;
            // Not an event of ours: the live consumer has sent it to DLQ already.
            if let Ok(envelope) = Envelope::from_slice(&message.payload) {
                batch.push(envelope);
            }
            progress.read.fetch_add(1, Ordering::AcqRel);
            if batch.len() >= 512 || seen >= *last {
                actor
                    .send(Replay(std::mem::take(&mut batch)))
                    .await
                    .map_err(|_| EngineError::Stopped(COMPONENT.name()))??;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
