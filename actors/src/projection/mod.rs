//! The projection: keeps `order_read_model` (one row per order, see [`model`]) in its own sled
//! database, from durable consumers on every domain stream. Group commit: a batch's rows are
//! written together, flushed once, then acked. `GET /orders/{id}` is one lookup here.
//!
//! Rebuild (`commerce projection rebuild`, [`rebuild`]): replay every stream into a new
//! generation of rows while queries keep reading the old one, then switch.

pub mod api;
pub mod model;
mod rebuild;
pub mod sagas;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bus::{Delivery, Domain, Envelope, Login, Verdict};
use futures::FutureExt;
use storage::models::IndexWrite;
use storage::Store;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use self::api::{ReadOrder, Rebuild, Sagas};
use self::model::OrderReadModel;
use self::sagas::{OpenSagas, SagaFacts};
use crate::engine::actor::Deliver;
use crate::engine::api::{ComponentStatus, ReadModelStatus, Status};
use crate::engine::core::Settled;
use crate::engine::host::consume::Sink;
use crate::engine::host::{self, Host, RunningComponent};
use crate::engine::EngineError;
use crate::rpc::{Address, Component, DomainError};
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
    building: Option<rebuild::Building>,
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
        // What each row's saga was before this batch, for the tracker of its generation.
        let mut before: HashMap<&str, SagaFacts> = HashMap::new();
        let mut changed = Vec::new();
        for envelope in envelopes {
            let id = envelope.subject.as_str();
            if !rows.contains_key(id) {
                let row = match self.row(generation, id)? {
                    Some(row) => {
                        before.insert(id, SagaFacts::of(&row));
                        row
                    }
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
        let facts: Vec<SagaFacts> = refolded.iter().map(SagaFacts::of).collect();
        let changes: Vec<_> = facts
            .iter()
            .map(|after| (before.get(after.order_id()), after))
            .collect();
        let index = self.index_changes(generation, &changes)?;
        self.write(generation, &refolded, &index)?;
        let building = self
            .building
            .as_ref()
            .filter(|b| b.generation == generation);
        for (row, after) in refolded.iter().zip(&facts) {
            let before = before.get(row.order_id.as_str());
            if generation == self.active.load(Ordering::Acquire) {
                self.sagas.update(before, row);
            } else if let Some(building) = building {
                building.sagas.track(before, after);
            }
        }
        Ok(())
    }

    /// What these row changes change of `generation`'s saga index. Only the active generation
    /// and the one being built are written to: any other would be left with a stale index.
    fn index_changes(
        &self,
        generation: u32,
        changes: &[(Option<&SagaFacts>, &SagaFacts)],
    ) -> Result<Vec<IndexWrite>, EngineError> {
        let tracker = if generation == self.active.load(Ordering::Acquire) {
            &*self.sagas
        } else {
            match self
                .building
                .as_ref()
                .filter(|b| b.generation == generation)
            {
                Some(building) => &building.sagas,
                None => {
                    return Err(EngineError::Storage(storage::StorageError::Malformed {
                        what: "read model write",
                        reason: format!("generation {generation} is neither active nor built"),
                    }))
                }
            }
        };
        tracker.index_changes(changes).map_err(index_unwritable)
    }

    /// The row of order `id` in `generation`, if there is one.
    fn row(&self, generation: u32, id: &str) -> Result<Option<OrderReadModel>, EngineError> {
        let Some(bytes) = self.store.model(generation, id)? else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|source| EngineError::Unreadable {
                what: format!("read model row {id}"),
                source,
            })
    }

    /// Write folded rows to `generation` with what they change of its index, in one batch
    /// (durable at the next flush).
    fn write(
        &self,
        generation: u32,
        rows: &[OrderReadModel],
        index: &[IndexWrite],
    ) -> Result<(), EngineError> {
        let writes = rows
            .iter()
            .map(|row| Ok((row.order_id.clone(), encode(row)?)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        self.store.write_models(generation, &writes, index)?;
        Ok(())
    }

    fn generations(&self) -> Vec<u32> {
        let mut generations = vec![self.active.load(Ordering::Acquire)];
        generations.extend(self.building.as_ref().map(|b| b.generation));
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
    let mut host =
        Host::connect(Address::whole(COMPONENT), settings, store, &login, shutdown).await?;
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
        // Events only (`<domain>.<event>.<order>.<partition>`), not the owners' term markers.
        let events = bus::partition::events(domain, "*", bus::partition::Slice::All);
        host.consume(domain.stream(), vec![events], sink).await?;
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
    let (js, login) = (host.js.clone(), host.login.clone());
    server
        .each::<Rebuild, _, _>(move |()| {
            let (js, login) = (js.clone(), login.clone());
            let (actor, progress) = (actor.clone(), progress.clone());
            async move { rebuild::start(&js, &login, &actor, &progress).await }
        })
        .await?;
    host.serve_until_shutdown(server, ready).await
}

/// A stored row's first byte when it is LZ4-compressed JSON. A row holds every event of its
/// order and is written again at each one, so its size is most of what the projection writes
/// and caches. Rows from before (plain JSON, whose first byte is `{`) still read.
const LZ4_ROW: u8 = 1;
/// The largest row a stored length is believed for (a row is a few KiB).
const MAX_ROW_BYTES: usize = 16 << 20;

/// A row as it is stored: tag, JSON length (u32 LE), the JSON compressed.
fn encode(row: &OrderReadModel) -> Result<Vec<u8>, EngineError> {
    let unwritable = |source| EngineError::Unreadable {
        what: format!("read model row {} (encoding)", row.order_id),
        source,
    };
    let json = serde_json::to_vec(row).map_err(unwritable)?;
    // Refused here rather than written and then refused at every read.
    if json.len() > MAX_ROW_BYTES {
        return Err(unwritable(
            <serde_json::Error as serde::ser::Error>::custom(format!(
                "{} bytes, over the {MAX_ROW_BYTES} a row may have",
                json.len()
            )),
        ));
    }
    let mut bytes = vec![LZ4_ROW];
    bytes.extend_from_slice(&lz4_flex::compress_prepend_size(&json));
    Ok(bytes)
}

/// A stored row (or the part of it `T` reads), compressed or not.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let unreadable = |why: &dyn std::fmt::Display| {
        <serde_json::Error as serde::de::Error>::custom(format!("compressed row: {why}"))
    };
    match bytes.split_first() {
        Some((&LZ4_ROW, compressed)) => {
            let (length, compressed) = compressed
                .split_first_chunk::<4>()
                .ok_or_else(|| unreadable(&"no length"))?;
            let length = u32::from_le_bytes(*length) as usize;
            if length > MAX_ROW_BYTES {
                return Err(unreadable(&format!("{length} bytes claimed")));
            }
            let json = lz4_flex::decompress(compressed, length).map_err(|e| unreadable(&e))?;
            serde_json::from_slice(&json)
        }
        _ => serde_json::from_slice(bytes),
    }
}

fn index_unwritable(source: serde_json::Error) -> EngineError {
    EngineError::Unreadable {
        what: "saga index (encoding)".into(),
        source,
    }
}

/// Track the open sagas of `generation` from its index: what is open and the counts, however
/// many orders ended. A generation without a whole index (written before there was one) or
/// with an unreadable one is read row by row once, and its index written whole.
fn load_sagas(sagas: &OpenSagas, store: &Store, generation: u32) -> Result<(), EngineError> {
    let began = std::time::Instant::now();
    let index = store
        .model_index(generation, sagas::INDEX)
        .collect::<Result<Vec<_>, _>>()?;
    match sagas.restore(&index) {
        Ok(true) => {
            tracing::info!(
                generation,
                entries = index.len(),
                ms = began.elapsed().as_millis() as u64,
                "read model: sagas read from the index"
            );
            return Ok(());
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "reading every read model row again"),
    }
    let rows = read_every_saga(sagas, store, generation)?;
    // What was there, gone; the whole index, written: one batch, the last write of a key wins.
    let mut writes: Vec<IndexWrite> = index.into_iter().map(|(key, _)| (key, None)).collect();
    writes.extend(sagas.whole_index().map_err(index_unwritable)?);
    store.write_models(generation, &[], &writes)?;
    tracing::info!(
        generation,
        rows,
        ms = began.elapsed().as_millis() as u64,
        "read model: every row's saga read once, and indexed"
    );
    Ok(())
}

/// Track the open sagas of `generation`'s rows, from their statuses and newest event's time
/// (rows whose facts do not decode are skipped: the query endpoint reports them). One row in
/// memory at a time: the tracker keeps only the open sagas and counts. Answers how many rows.
fn read_every_saga(sagas: &OpenSagas, store: &Store, generation: u32) -> Result<u64, EngineError> {
    let mut failed = None;
    let mut read = 0;
    let rows = store
        .models(generation)
        .map_while(|row| row.map_err(|e| failed = Some(e)).ok())
        .inspect(|_| read += 1);
    sagas.reload(rows.filter_map(|(_, bytes)| decode::<SagaFacts>(&bytes).ok()));
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(read),
    }
}

/// One lookup.
fn lookup(store: &Store, generation: u32, id: &str) -> Result<OrderReadModel, DomainError> {
    match store.model(generation, id) {
        Ok(Some(bytes)) => decode(&bytes)
            .map_err(|e| DomainError::unavailable(format!("unreadable read model row: {e}"))),
        Ok(None) => Err(DomainError::not_found(format!("no order {id:?}"))),
        Err(e) => Err(DomainError::unavailable(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
