//! Rebuild (`commerce projection rebuild`): replay every stream from sequence 1 into a new
//! generation of rows while queries keep reading the old one; live events go to both meanwhile;
//! when the replay has reached where the streams were when it began, switch (one write).
//!
//! The replay reads the six streams at once, merged by the time the broker stored each message.
//! One order's events sit close together in that order, so its row is folded in memory from all
//! of them and written once. A row not touched for [`ROWS_IN_MEMORY`] other rows is written out
//! (memory stays bounded however long the history); should an event of it come after all, the
//! row is merged with its written self. The write merges with what live events wrote meanwhile
//! too, so nothing depends on which came first: a row is the fold of its timeline.
//!
//! Every row written to the new generation is counted by a saga tracker of its own (open sagas
//! and counts, written to the generation's index with the rows), which the switch hands over
//! rather than reading every row back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use async_nats::jetstream;
use bus::replay::Entry;
use bus::{Domain, Envelope};
use serde_json::value::RawValue;

use super::api::RebuildStarted;
use super::model::OrderReadModel;
use super::sagas::{OpenSagas, SagaFacts};
use super::{decode, encode, index_unwritable, Progress, ProjectionActor, COMPONENT};
use crate::engine::EngineError;
use crate::rpc::DomainError;

/// Rows folded in memory before the least recently touched are written out (twice this at most).
const ROWS_IN_MEMORY: usize = 10_000;
/// Rows per write to the new generation: live batches get their turn in between, and at the end
/// the folding thread encodes the next rows while the actor writes these.
const ROWS_PER_WRITE: usize = 128;
/// Rows of old generations deleted at a time: one sled batch, which holds sled's lock for all
/// the process's databases while it applies.
const ROWS_PER_SWEEP: usize = 256;

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

/// The generation a rebuild is filling, and the sagas of the rows written to it so far (open
/// ones and counts, as the active generation's are kept).
pub(super) struct Building {
    pub(super) generation: u32,
    pub(super) sagas: OpenSagas,
}

/// Start filling a new generation; answers it.
struct BeginRebuild;
impl Message for BeginRebuild {
    type Result = Result<u32, RebuildError>;
}

impl Handler<BeginRebuild> for ProjectionActor {
    type Result = Result<u32, RebuildError>;
    fn handle(&mut self, _: BeginRebuild, ctx: &mut Context<Self>) -> Self::Result {
        if self.building.is_some() {
            return Err(RebuildError::AlreadyRunning);
        }
        let next = self.store.new_models()?;
        // Leftovers: an interrupted or abandoned rebuild's rows, and the generation the last
        // switch replaced (kept until now so queries that had already picked it could finish).
        ctx.notify(Sweep {
            below: next,
            keep: self.active.load(Ordering::Acquire),
        });
        let sagas = OpenSagas::default();
        // Its index is whole from the start: every row will be written with its change.
        let index = sagas.whole_index().map_err(index_unwritable)?;
        self.store.write_models(next, &[], &index)?;
        self.building = Some(Building {
            generation: next,
            sagas,
        });
        Ok(next)
    }
}

/// Delete the rows of the generations below `below` but `keep`, a part at a time on tokio's
/// blocking pool: off the actor's thread, where the projection's connection to the broker is
/// served too, and never one batch however large the model.
struct Sweep {
    below: u32,
    keep: u32,
}
impl Message for Sweep {
    type Result = ();
}

impl Handler<Sweep> for ProjectionActor {
    type Result = ();
    fn handle(&mut self, msg: Sweep, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let (below, keep) = (msg.below, msg.keep);
        let part =
            tokio::task::spawn_blocking(move || store.sweep_models(below, keep, ROWS_PER_SWEEP));
        ctx.spawn(part.into_actor(self).map(move |swept, _, ctx| match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => ctx.notify(msg),
            Err(e) if e.is_panic() => tracing::error!("deleting old read model rows panicked"),
            Err(_) => {} // the runtime is stopping
            // They stay until the next rebuild sweeps again.
            Ok(Err(e)) => tracing::warn!(error = %e, "deleting old read model rows failed"),
        }));
    }
}

/// A row folded from replayed events, for the generation being built. Only its encoding and its
/// saga's facts come back: the row is freed where it was made, on the folding thread.
struct RebuiltRow {
    order_id: String,
    bytes: Vec<u8>,
    facts: SagaFacts,
}

struct Replayed(Vec<RebuiltRow>);
impl Message for Replayed {
    type Result = Result<(), RebuildError>;
}

impl Handler<Replayed> for ProjectionActor {
    type Result = Result<(), RebuildError>;
    fn handle(&mut self, msg: Replayed, _: &mut Context<Self>) -> Self::Result {
        let generation = match &self.building {
            Some(building) => building.generation,
            None => return Err(RebuildError::NotRunning),
        };
        let mut writes = Vec::with_capacity(msg.0.len());
        let mut changes = Vec::with_capacity(msg.0.len());
        for RebuiltRow {
            order_id: id,
            mut bytes,
            facts: mut saga,
        } in msg.0
        {
            let mut before = None;
            // What live events (or an earlier write-out of this row) put there meanwhile: fold
            // it in, and encode the row again.
            if let Some(written) = self.row(generation, &id)? {
                before = Some(SagaFacts::of(&written));
                let mut row: OrderReadModel =
                    decode(&bytes).map_err(|source| EngineError::Unreadable {
                        what: format!("rebuilt read model row {id}"),
                        source,
                    })?;
                let mut added = false;
                for entry in written.timeline {
                    added |= row.insert_entry(entry);
                }
                if added {
                    row.refold();
                    bytes = encode(&row)?;
                    saga = SagaFacts::of(&row);
                }
            }
            writes.push((id, bytes));
            changes.push((before, saga));
        }
        let changed: Vec<_> = changes.iter().map(|(b, a)| (b.as_ref(), a)).collect();
        let index = self.index_changes(generation, &changed)?;
        self.store.write_models(generation, &writes, &index)?;
        if let Some(building) = &self.building {
            for (before, after) in &changes {
                building.sagas.track(before.as_ref(), after);
            }
        }
        Ok(())
    }
}

/// Switch queries to the rebuilt generation (`true`), or abandon it (`false`).
struct EndRebuild(bool);
impl Message for EndRebuild {
    type Result = Result<(), EngineError>;
}

impl Handler<EndRebuild> for ProjectionActor {
    type Result = AtomicResponse<Self, Result<(), EngineError>>;
    fn handle(&mut self, msg: EndRebuild, ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let built = self.building.take();
        let active = self.active.clone();
        let sagas = self.sagas.clone();
        let sweeper = ctx.address();
        AtomicResponse::new(Box::pin(
            async move {
                let Some(Building {
                    generation: built,
                    sagas: built_sagas,
                }) = built
                else {
                    return Ok(());
                };
                if !msg.0 {
                    sweeper.do_send(Sweep {
                        below: built.saturating_add(1),
                        keep: active.load(Ordering::Acquire),
                    });
                    return Ok(());
                }
                // Make the new rows durable, then switch in one write.
                let _ = store.flush().await?;
                store.switch_models(built)?;
                // Queries and live events follow the switch at once, even should its flush
                // fail: sled may still write it, and live events must not miss the new rows.
                active.store(built, Ordering::Release);
                sagas.take_over(built_sagas);
                store.flush().await.map(|_| ()).map_err(EngineError::from)
            }
            .into_actor(self),
        ))
    }
}

/// Begin a rebuild in the background; answers at once with what it will read. The streams are
/// read as `login`'s replay identity, a connection each.
pub(super) async fn start(
    js: &jetstream::Context,
    login: &bus::Login,
    actor: &Addr<ProjectionActor>,
    progress: &Arc<Progress>,
) -> Result<RebuildStarted, DomainError> {
    let began = Instant::now();
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
    let total: u64 = targets.iter().map(|target| target.last).sum();
    progress.read.store(0, Ordering::Release);
    progress.total.store(total, Ordering::Release);
    progress.running.store(true, Ordering::Release);
    let (login, actor, progress) = (login.clone(), actor.clone(), progress.clone());
    actix_rt::spawn(async move {
        let result = replay(&login, &actor, &progress, targets).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "projection rebuild failed; the old model stays");
        }
        let written = Instant::now();
        let switched = match actor.send(EndRebuild(result.is_ok())).await {
            Ok(Ok(())) => result.is_ok(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "projection rebuild: switching generations failed");
                false
            }
            Err(_) => false, // the projection is stopping
        };
        progress.running.store(false, Ordering::Release);
        if let (true, Ok(Read { opened, ended })) = (switched, result) {
            progress.rebuilds.fetch_add(1, Ordering::AcqRel);
            // Where its time went: opening the streams (and their first messages), reading
            // them, the rows left to finish and write after the last message, the switch.
            let ms = |from: Instant, to: Instant| (to - from).as_millis() as u64;
            tracing::info!(
                generation,
                events = total,
                start_ms = ms(began, opened),
                read_ms = ms(opened, ended),
                rows_ms = ms(ended, written),
                switch_ms = ms(written, Instant::now()),
                "projection rebuild switched"
            );
        }
    });
    Ok(RebuildStarted {
        generation,
        events: total,
    })
}

/// A stream to replay, and where it ended when the rebuild began: what the replay must reach.
struct Target {
    domain: Domain,
    last: u64,
    stream: jetstream::stream::Stream,
}

/// Where each stream ends now. The streams are asked at once.
async fn replay_targets(js: &jetstream::Context) -> Result<Vec<Target>, DomainError> {
    futures::future::try_join_all(Domain::ALL.into_iter().map(|domain| async move {
        let stream = js
            .get_stream(domain.stream())
            .await
            .map_err(|e| DomainError::unavailable(e.to_string()))?;
        let state = bus::streams::leader_state(stream.cached_info())
            .map_err(|e| DomainError::unavailable(e.to_string()))?;
        if state.first_sequence > 1 {
            return Err(DomainError::conflict(format!(
                "{} no longer holds its first events (retention): a rebuild would lose orders",
                domain.stream()
            )));
        }
        let last = state.last_sequence;
        Ok(Target {
            domain,
            last,
            stream,
        })
    }))
    .await
}

/// One stream being read up to its target, with its next message.
struct Reader {
    target: Target,
    messages: bus::replay::Replay,
    next: Option<Entry>,
    /// A message the stream's leader holds at this sequence, not read yet.
    held: u64,
}

impl Reader {
    async fn open(login: &bus::Login, target: Target) -> Result<Reader, RebuildError> {
        let messages = bus::replay::Replay::open(login, target.domain.stream(), "")
            .await
            .map_err(EngineError::Bus)?;
        let mut reader = Reader {
            target,
            messages,
            next: None,
            held: 0,
        };
        reader.advance(0, 1).await?;
        Ok(reader)
    }

    /// Fetch the message after the one at `seen`, unless that one was the target. Where the
    /// replay's consumer counts nothing left (`pending`) short of it, the target may have been
    /// deleted since, or that consumer sits on a replica still catching up: the stream's
    /// leader, asked for what follows `seen`, tells which.
    async fn advance(&mut self, seen: u64, pending: u64) -> Result<(), RebuildError> {
        self.next = None;
        let last = self.target.last;
        if seen >= last {
            return Ok(());
        }
        if pending == 0 && seen >= self.held {
            let every = [">".to_string()];
            let next = bus::streams::leader_next(&self.target.stream, &every, seen + 1)
                .await
                .map_err(EngineError::Bus)?;
            match next {
                Some(sequence) if sequence <= last => self.held = sequence,
                _ => return Ok(()),
            }
        }
        self.next = Some(self.messages.next().await.map_err(EngineError::Bus)?);
        Ok(())
    }
}

/// When a replay's streams were open, and when their last message was read.
struct Read {
    opened: Instant,
    ended: Instant,
}

/// Messages handed to the folding thread at a time.
const MESSAGES_PER_HANDOVER: usize = 256;

/// Read every stream from sequence 1 up to its target into the new generation, the streams
/// merged by the time each message was stored. This task only reads; a thread of its own
/// decodes and folds (the CPU work), so both cores work while the broker streams, and the
/// rows it folds come back here to be written by the actor.
async fn replay(
    login: &bus::Login,
    actor: &Addr<ProjectionActor>,
    progress: &Progress,
    targets: Vec<Target>,
) -> Result<Read, RebuildError> {
    let mut readers = futures::future::try_join_all(
        targets
            .into_iter()
            .filter(|target| target.last > 0)
            .map(|target| Reader::open(login, target)),
    )
    .await?;
    let opened = Instant::now();
    let (hand_over, messages) = tokio::sync::mpsc::channel(16);
    // Unbounded, yet small: this task writes what came back after every message it reads.
    let (folded, mut rows) = tokio::sync::mpsc::unbounded_channel();
    let folder = tokio::task::spawn_blocking(move || fold(messages, folded));
    let mut chunk = Vec::with_capacity(MESSAGES_PER_HANDOVER);
    // The next message of all: the one stored first.
    while let Some(reader) = readers
        .iter_mut()
        .filter(|r| r.next.is_some())
        .min_by_key(|r| r.next.as_ref().map(|n| n.stored_ns))
    {
        let Some(Entry {
            sequence: seen,
            pending,
            message,
            ..
        }) = reader.next.take()
        else {
            break;
        };
        chunk.push(message);
        if chunk.len() == MESSAGES_PER_HANDOVER {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(MESSAGES_PER_HANDOVER));
            // Gone only if the folding thread stopped: its error is reported below.
            if hand_over.send(full).await.is_err() {
                break;
            }
        }
        while let Ok(ready) = rows.try_recv() {
            write(actor, ready).await?;
        }
        progress.read.fetch_add(1, Ordering::AcqRel);
        reader.advance(seen, pending).await?;
    }
    if !chunk.is_empty() {
        let _ = hand_over.send(chunk).await;
    }
    drop(hand_over);
    let ended = Instant::now();
    while let Some(ready) = rows.recv().await {
        write(actor, ready).await?;
    }
    folder.await.map_err(|e| {
        EngineError::Stopped(if e.is_panic() {
            "rebuild (panicked)"
        } else {
            "rebuild"
        })
    })??;
    Ok(Read { opened, ended })
}

/// Rows sent back to be written.
type Folded = tokio::sync::mpsc::UnboundedSender<Vec<RebuiltRow>>;

/// The folding thread: decode each message and fold it into its row; hand back the rows
/// written out of memory on the way, then all the others, each refolded and encoded.
fn fold(
    mut messages: tokio::sync::mpsc::Receiver<Vec<jetstream::Message>>,
    folded: Folded,
) -> Result<(), RebuildError> {
    let mut folding = Folding::default();
    while let Some(chunk) = messages.blocking_recv() {
        for message in chunk {
            // Not an event of ours, or not on its own subject (written by another stream's
            // owner): the live consumer has sent it to DLQ already, and a rebuild believes no
            // more than it does. (A copy relayed from another stream keeps its own subject and
            // id: it folds as its original did, once.)
            let Ok(envelope) = Envelope::<Box<RawValue>>::decode(&message.payload) else {
                continue;
            };
            if envelope.check_arrived_on(&message.subject).is_err() {
                continue;
            }
            if let Some(written_out) = folding.insert(envelope) {
                finish(written_out, &folded)?;
            }
        }
    }
    // Nothing is left to read, so the cores that read are free: the rows still in memory are
    // refolded and encoded on all of them.
    let mut rows = folding.finish();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = rows.len().div_ceil(cores).max(ROWS_PER_WRITE);
    std::thread::scope(|scope| {
        let mut others = Vec::new();
        while rows.len() > share {
            let part = rows.split_off(rows.len() - share);
            let folded = &folded;
            others.push(scope.spawn(move || finish(part, folded)));
        }
        let mine = finish(rows, &folded);
        // Every thread joined before any error is answered: the first one stands.
        let others: Vec<_> = others
            .into_iter()
            .map(|other| {
                other
                    .join()
                    .unwrap_or(Err(EngineError::Stopped("rebuild (panicked)").into()))
            })
            .collect();
        others.into_iter().try_for_each(|other| other)?;
        mine
    })
}

/// Refold and encode `rows`, and send them to be written, [`ROWS_PER_WRITE`] at a time.
fn finish(rows: Vec<OrderReadModel>, folded: &Folded) -> Result<(), RebuildError> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk = rows
            .by_ref()
            .take(ROWS_PER_WRITE)
            .map(|mut row| {
                row.refold();
                Ok(RebuiltRow {
                    bytes: encode(&row)?,
                    facts: SagaFacts::of(&row),
                    order_id: row.order_id,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        // The reader stopped (it failed): nothing more to do.
        if folded.send(chunk).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn write(actor: &Addr<ProjectionActor>, rows: Vec<RebuiltRow>) -> Result<(), RebuildError> {
    actor
        .send(Replayed(rows))
        .await
        .map_err(|_| EngineError::Stopped(COMPONENT.name()))?
}

/// Rows being folded in memory: `young` were touched since `old` was, by age, the young ones.
/// When `young` is full, `old` is written out and `young` becomes old: a row is written out
/// after at least [`ROWS_IN_MEMORY`] other rows were touched and it was not.
#[derive(Default)]
struct Folding {
    young: HashMap<String, OrderReadModel>,
    old: HashMap<String, OrderReadModel>,
}

impl Folding {
    /// Add an event to its order's row; answers the rows to write out, if it is time.
    fn insert(&mut self, envelope: Envelope<Box<RawValue>>) -> Option<Vec<OrderReadModel>> {
        let row = match self.young.get_mut(&envelope.subject) {
            Some(row) => row,
            None => {
                let id = envelope.subject.clone();
                let row = self
                    .old
                    .remove(&id)
                    .unwrap_or_else(|| OrderReadModel::new(&id));
                self.young.entry(id).or_insert(row)
            }
        };
        row.insert_entry(envelope.into());
        if self.young.len() < ROWS_IN_MEMORY {
            return None;
        }
        let old = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        Some(old.into_values().collect())
    }

    fn finish(self) -> Vec<OrderReadModel> {
        self.old
            .into_values()
            .chain(self.young.into_values())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(order: &str, n: u64) -> Envelope<Box<RawValue>> {
        let mut e = Envelope::new(Domain::Orders, "OrderShipped", order, json!({})).unwrap();
        e.aggregateversion = Some(n);
        Envelope::decode(e.to_json().unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn rows_wait_in_memory_until_others_push_them_out() {
        let mut folding = Folding::default();
        folding.insert(event("first", 1));
        folding.insert(event("first", 2));
        let mut written = Vec::new();
        for n in 0..ROWS_IN_MEMORY * 2 {
            written.extend(
                folding
                    .insert(event(&format!("o{n}"), 1))
                    .unwrap_or_default(),
            );
        }
        // "first" went old when the first young set filled, out when the second did.
        let first: Vec<_> = written.iter().filter(|r| r.order_id == "first").collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].timeline.len(), 2);
        let rest = folding.finish();
        assert_eq!(written.len() + rest.len(), ROWS_IN_MEMORY * 2 + 1);
        assert!(rest.iter().all(|r| r.order_id != "first"));
    }

    #[test]
    fn a_row_touched_again_stays_young() {
        let mut folding = Folding::default();
        folding.insert(event("kept", 1));
        let mut written = Vec::new();
        for n in 0..ROWS_IN_MEMORY * 3 {
            if n % 100 == 0 {
                folding.insert(event("kept", n as u64 + 2));
            }
            written.extend(
                folding
                    .insert(event(&format!("o{n}"), 1))
                    .unwrap_or_default(),
            );
        }
        assert!(written.iter().all(|r| r.order_id != "kept"));
        let kept = folding
            .finish()
            .into_iter()
            .find(|r| r.order_id == "kept")
            .unwrap();
        assert_eq!(kept.timeline.len(), 1 + ROWS_IN_MEMORY * 3 / 100);
    }
}
