//! The engine: one service's state machine over its own database.
//!
//! Every change goes the same way: load the aggregate (snapshot + later events), decide, apply the
//! new events to a copy, then ONE sled transaction for the whole batch (events, outbox rows, inbox
//! marks), ONE flush, and only then the answer (ack or reply). The engine is the only writer of
//! its database, so the in-memory copies it caches are the truth. An operation takes the
//! aggregates it touches out of the cache and puts them back once its batch is durable; one
//! whose commit failed stays out and is reloaded from disk.
//!
//! A batch of inbound events ([`Engine::deliver`]) goes through named phases:
//! `admit` (dedupe, decode, route into one [`Group`] per aggregate), `load` (take each aggregate
//! out of the cache), `react` (per aggregate, in order), `record` (one [`Commit`] per step), and
//! `commit_and_flush`, the tail it shares with client commands ([`Engine::execute`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bus::{Delivery, Envelope, Verdict};
use futures::StreamExt;
use opentelemetry::context::FutureExt as _;
use storage::{Commit, CommitOutcome, Flushed, NewEvent, Snapshot, StorageError, Store};

use super::api::ReplayOutcome;
use super::{
    decode, encode, reaction, Aggregate, Command, DomainError, EngineError, Executed, Service,
    Shard,
};
use crate::events::Inbound;
use crate::telemetry::{metrics, trace};

/// Aggregates kept in memory at most; past this the cache starts over (a reload is a snapshot
/// plus a few events).
const CACHE_LIMIT: usize = 50_000;
/// Compact an aggregate after at least this many new events (the singletons grow long
/// histories), and at least its last snapshot's size in bytes of them: [`Head::snapshot_due`].
const SNAPSHOT_EVERY: u64 = 256;
/// Aggregates reacting at once within a batch (their external calls overlap).
const CONCURRENCY: usize = 64;
/// Echoed events remembered until their copy comes back from the stream; past this the memory
/// starts over (a copy then counts as a duplicate, which it is).
const ECHOED_LIMIT: usize = 10_000;
/// No echoes for this long after one had to be retried (its dependency is down or slow): the
/// stream's copy retries with backoff, and a slow call is not made twice per event.
const ECHO_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where an aggregate stands in its log.
#[derive(Debug, Clone, Copy)]
struct Head {
    version: u64,
    /// Events recorded since the last snapshot (or since the start of the log).
    since_snapshot: u64,
    /// Those events' bytes in the log.
    logged_bytes: u64,
    /// The size of the last snapshot (0: none).
    snapshot_bytes: u64,
}

impl Head {
    /// The head after `recorded` more events of `bytes` in all.
    fn advanced(self, recorded: u64, bytes: u64) -> Head {
        Head {
            version: self.version + recorded,
            since_snapshot: self.since_snapshot + recorded,
            logged_bytes: self.logged_bytes + bytes,
            ..self
        }
    }

    /// Whether a snapshot should replace the log: once the aggregate closed, else once
    /// [`SNAPSHOT_EVERY`] events and at least the last snapshot's size in bytes were logged since
    /// it, so that snapshots of a large state (the warehouse's open orders) write no more than
    /// the events did.
    fn snapshot_due(&self, closed: bool) -> bool {
        match closed {
            true => self.since_snapshot > 0,
            false => {
                self.since_snapshot >= SNAPSHOT_EVERY && self.logged_bytes >= self.snapshot_bytes
            }
        }
    }

    /// The head once a snapshot of `bytes` covers it.
    fn snapshotted(self, bytes: u64) -> Head {
        Head {
            since_snapshot: 0,
            logged_bytes: 0,
            snapshot_bytes: bytes,
            ..self
        }
    }
}

/// An aggregate in memory: its head and its state there.
#[derive(Debug)]
struct Loaded<A> {
    head: Head,
    state: A,
}

/// A batch whose effects are durable, ready to be settled on the bus.
pub struct Settled {
    pub verdicts: Vec<(Verdict, Delivery)>,
    pub flushed: Flushed,
}

/// What [`Engine::deliver`] made of a batch: one verdict per envelope, in batch order, and the
/// proof that everything a `Done` stands for is durable.
#[derive(Debug)]
pub struct Applied {
    pub verdicts: Vec<Verdict>,
    pub flushed: Flushed,
}

/// How a batch came in: from a live consumer, echoed, or replayed from `DLQ` by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Skips what was applied and what this service dead-lettered.
    Live,
    /// As `Live`, but its verdicts are not counted: the stream's copy will be.
    Echo,
    /// Skips only what was applied.
    Replay,
}

/// An admitted inbound event: its place in the batch, and what it says.
struct Item {
    index: usize,
    inbound: Inbound,
}

/// One aggregate's share of a batch, in batch order.
struct Group {
    aggregate_id: String,
    items: Vec<Item>,
}

/// A group whose aggregate is out of the cache, ready to react.
struct Ready<A> {
    group: Group,
    loaded: Loaded<A>,
}

/// What one reaction came to: the event's place in the batch, its verdict, and the events to
/// record (none unless `Done`).
struct Step<E> {
    index: usize,
    verdict: Verdict,
    events: Vec<E>,
    /// The span of this handling: the parent of the events it emits.
    span: opentelemetry::Context,
}

/// What one aggregate's reactions in a batch came to.
struct Reacted<A: Aggregate> {
    aggregate_id: String,
    /// Where the aggregate stood before this batch.
    base: Head,
    /// Its state after every step's events.
    state: A,
    steps: Vec<Step<A::Event>>,
}

/// An aggregate an operation took out of the cache, with its state after the operation.
struct Touched<A> {
    aggregate_id: String,
    after: Loaded<A>,
    /// Its state holds changes that did not land: it is reloaded from disk next time.
    stale: bool,
}

/// Where a commit's outcome goes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The answer it settles: an index in the batch, or in the commands.
    answer: usize,
    /// The aggregate it writes: an index in [`Writes::touched`].
    aggregate: usize,
}

/// An operation's changes before they are committed: the aggregates it took out of the cache,
/// and one commit per answer that records something.
struct Writes<A> {
    touched: Vec<Touched<A>>,
    position: HashMap<String, usize>,
    commits: Vec<Commit>,
    slots: Vec<Slot>,
    /// Recorded events the service reacts to at once ([`Service::ECHO`]), by the commit that
    /// holds them.
    echoes: Vec<(Slot, Envelope)>,
}

impl<A> Default for Writes<A> {
    fn default() -> Self {
        Writes {
            touched: Vec::new(),
            position: HashMap::new(),
            commits: Vec::new(),
            slots: Vec::new(),
            echoes: Vec::new(),
        }
    }
}

impl<A> Writes<A> {
    /// Add an aggregate taken out of the cache; answers its index.
    fn touch(&mut self, aggregate_id: String, after: Loaded<A>) -> usize {
        let aggregate = self.touched.len();
        self.position.insert(aggregate_id.clone(), aggregate);
        self.touched.push(Touched {
            aggregate_id,
            after,
            stale: false,
        });
        aggregate
    }

    fn push(&mut self, commit: Commit, slot: Slot) {
        self.commits.push(commit);
        self.slots.push(slot);
    }

    /// The answers that wait for the commits.
    fn answers(&self) -> Vec<usize> {
        self.slots.iter().map(|slot| slot.answer).collect()
    }
}

/// Why a commit did not land.
#[derive(Debug, Clone)]
enum NotRecorded {
    /// Someone appended to the aggregate since it was loaded.
    Conflict(String),
    /// The database refused or failed.
    Failed(String),
}

impl From<&StorageError> for NotRecorded {
    fn from(e: &StorageError) -> Self {
        match e {
            StorageError::Conflict { .. } => NotRecorded::Conflict(e.to_string()),
            other => NotRecorded::Failed(other.to_string()),
        }
    }
}

impl NotRecorded {
    /// For the bus: try again (the aggregate is reloaded first).
    fn verdict(&self) -> Verdict {
        let (NotRecorded::Conflict(reason) | NotRecorded::Failed(reason)) = self;
        Verdict::Retry(format!("commit failed: {reason}"))
    }

    /// For a client: what to do, not our versions (those are the bus's and the log's).
    fn domain_error(&self) -> DomainError {
        match self {
            NotRecorded::Conflict(_) => DomainError::conflict(CHANGED_MEANWHILE),
            NotRecorded::Failed(reason) => {
                DomainError::unavailable(format!("commit failed: {reason}"))
            }
        }
    }
}

/// A command's 409 when its aggregate changed under it: sending it again decides afresh.
const CHANGED_MEANWHILE: &str = "it changed while this request was decided: send the request again";

/// What the commit-and-flush tail did: the commits that did not land (by answer), and the flush.
struct Durable {
    not_recorded: Vec<(usize, NotRecorded)>,
    flushed: Result<Flushed, StorageError>,
    /// The recorded events to echo whose commits landed.
    echoes: Vec<Envelope>,
}

pub struct Engine<S: Service> {
    service: S,
    store: Store,
    cache: HashMap<String, Loaded<S::State>>,
    counts: Arc<DeliveryCounts>,
    /// Its SKU shard, when the service is split by SKU.
    shard: Option<Shard>,
    /// Events applied as echoes: their copy from the stream is expected, not a duplicate.
    echoed: HashSet<uuid::Uuid>,
    /// No echoes before this (see [`ECHO_PAUSE`]).
    echo_paused_until: Option<std::time::Instant>,
}

/// How often the dedup paths ran since the process started (`commerce status`, the chaos
/// report): events delivered again, and events acknowledged without effect because the inbox
/// had them (applied, or dead-lettered) or the batch held them twice.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    pub redelivered: AtomicU64,
    pub duplicates_dropped: AtomicU64,
}

impl<S: Service> Engine<S> {
    pub fn new(service: S, store: Store) -> Self {
        Engine {
            service,
            store,
            cache: HashMap::new(),
            counts: Arc::default(),
            shard: None,
            echoed: HashSet::new(),
            echo_paused_until: None,
        }
    }

    /// The engine of SKU shard `shard` (if any) of the service.
    pub fn in_shard(self, shard: Option<Shard>) -> Self {
        Engine { shard, ..self }
    }

    /// The aggregate that holds what concerns `order_id` here.
    pub fn aggregate_id(&self, order_id: &str) -> String {
        S::PLACEMENT.aggregate_id(order_id, self.shard)
    }

    pub fn counts(&self) -> Arc<DeliveryCounts> {
        self.counts.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn service(&self) -> &S {
        &self.service
    }

    /// React to a batch of inbound events: skip duplicates, react per aggregate (aggregates
    /// concurrently, one aggregate's events in order), commit everything in one transaction,
    /// flush once. Events of an aggregate after one that must be retried are retried too, so an
    /// aggregate never sees its events out of order. An error means nothing may be acked.
    ///
    /// Then the echoes: the batch's recorded events the service itself reacts to
    /// ([`Service::ECHO`]) are applied right away, one hop sooner than their stream would
    /// deliver them.
    pub async fn deliver(&mut self, batch: &[&Envelope]) -> Result<Applied, EngineError> {
        let (applied, echoes) = self.apply(batch, Admission::Live).await?;
        let paused = self
            .echo_paused_until
            .is_some_and(|until| std::time::Instant::now() < until);
        if !echoes.is_empty() && !paused {
            self.echo(echoes).await;
        }
        Ok(applied)
    }

    /// Apply recorded events of this service as if its stream had delivered them. Whatever is
    /// not done now (a call to retry, a failed commit) is left to the stream's copy, which comes
    /// in any case; echoes of echoes too.
    async fn echo(&mut self, echoes: Vec<Envelope>) {
        let batch: Vec<&Envelope> = echoes.iter().collect();
        let verdicts = match self.apply(&batch, Admission::Echo).await {
            Ok((applied, _)) => applied.verdicts,
            Err(e) => {
                tracing::debug!(error = %e, "echoes left to the stream");
                return;
            }
        };
        if self.echoed.len() >= ECHOED_LIMIT {
            self.echoed.clear();
        }
        for (envelope, verdict) in echoes.iter().zip(verdicts) {
            match verdict {
                Verdict::Done => {
                    self.echoed.insert(envelope.id);
                }
                Verdict::Retry(reason) => {
                    tracing::debug!(event = %envelope.id, %reason, "echoes paused");
                    self.echo_paused_until = Some(std::time::Instant::now() + ECHO_PAUSE);
                }
                Verdict::Reject(reason) => {
                    tracing::debug!(event = %envelope.id, %reason, "echo left to the stream")
                }
            }
        }
    }

    /// Re-drive one event this service dead-lettered (`commerce dlq replay`) the way a live
    /// delivery goes (react, commit, flush), except that its dead-letter mark (a recovery's "do
    /// not retry") does not skip it. An event already applied is not applied again.
    pub async fn replay(&mut self, envelope: &Envelope) -> Result<ReplayOutcome, EngineError> {
        if self.store.is_processed(envelope.id)? {
            // Said only once its mark is on disk: the caller then deletes the dead letter (the
            // mark may be from a commit whose flush failed).
            let _durable = self.store.flush_if_owed().await?;
            return Ok(ReplayOutcome::AlreadyApplied);
        }
        // Its echoes, if any, come back from the stream.
        let (applied, _) = self.apply(&[envelope], Admission::Replay).await?;
        let replayed = match applied.verdicts.into_iter().next() {
            Some(Verdict::Done) => {
                // Its inbox mark is durable now; the dead-letter mark says nothing more.
                if let Err(e) = self.store.forget_dead_letter(envelope.id) {
                    tracing::debug!(event = %envelope.id, error = %e, "dead-letter mark kept");
                }
                ReplayOutcome::Applied
            }
            Some(Verdict::Retry(reason)) => ReplayOutcome::Retry { reason },
            Some(Verdict::Reject(reason)) => ReplayOutcome::Rejected { reason },
            None => ReplayOutcome::Retry {
                reason: "the event was not handled".into(),
            },
        };
        Ok(replayed)
    }

    /// Apply a batch; answers also the recorded events to echo (durable ones only).
    async fn apply(
        &mut self,
        batch: &[&Envelope],
        admission: Admission,
    ) -> Result<(Applied, Vec<Envelope>), EngineError> {
        self.make_room();
        let mut verdicts = vec![Verdict::Done; batch.len()];
        let groups = self.admit(batch, admission, &mut verdicts)?;
        let ready = self.load(groups, &mut verdicts);
        let reacted = self.react(batch, ready).await;
        bus::failpoints::crash("engine.before_commit");
        let writes = record::<S>(batch, reacted, &mut verdicts);
        let committing = std::time::Instant::now();
        let durable = self.commit_and_flush(writes).await;
        metrics::batch(S::name(), batch.len(), committing.elapsed().as_secs_f64());
        for (index, why) in durable.not_recorded {
            verdicts[index] = why.verdict();
        }
        if admission != Admission::Echo {
            for (envelope, verdict) in batch.iter().zip(&verdicts) {
                metrics::handled(S::name(), &envelope.event_type, verdict);
            }
        }
        let applied = Applied {
            verdicts,
            flushed: durable.flushed?,
        };
        Ok((applied, durable.echoes))
    }

    /// The batch's new events, grouped by aggregate. Left `Done` without effect: copies of an
    /// event earlier in the batch, events already applied (in the inbox) or, live, dead-lettered
    /// (marked by a recovery), events this service ignores. Rejected: events that do not decode.
    fn admit(
        &mut self,
        batch: &[&Envelope],
        admission: Admission,
        verdicts: &mut [Verdict],
    ) -> Result<Vec<Group>, EngineError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        let mut seen = HashSet::new();
        for (index, envelope) in batch.iter().enumerate() {
            let settled = match admission {
                Admission::Live | Admission::Echo => self.store.is_settled(envelope.id)?,
                Admission::Replay => self.store.is_processed(envelope.id)?,
            } && !bus::failpoints::broken("broken.skip_inbox");
            if !seen.insert(envelope.id) || settled {
                // The copy of an echo was expected: no duplicate.
                if !(settled && self.echoed.remove(&envelope.id)) {
                    self.counts
                        .duplicates_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::duplicates(S::name(), 1);
                }
                continue; // already applied (or given up on): acknowledge again
            }
            let inbound = match Inbound::decode(envelope) {
                Ok(inbound) => inbound,
                Err(reason) => {
                    verdicts[index] = Verdict::Reject(reason.to_string());
                    continue;
                }
            };
            let aggregate_id = self.aggregate_id(&envelope.subject);
            let g = *group_of.entry(aggregate_id.clone()).or_insert_with(|| {
                groups.push(Group {
                    aggregate_id,
                    items: Vec::new(),
                });
                groups.len() - 1
            });
            groups[g].items.push(Item { index, inbound });
        }
        Ok(groups)
    }

    /// Take each group's aggregate out of the cache (no copy: the singletons hold every order);
    /// it goes back only once its batch is durable, so a failure leaves nothing stale behind.
    /// One that cannot be loaded waits for a retry.
    fn load(&mut self, groups: Vec<Group>, verdicts: &mut [Verdict]) -> Vec<Ready<S::State>> {
        let mut ready = Vec::with_capacity(groups.len());
        for group in groups {
            match self.take(&group.aggregate_id) {
                Ok(loaded) => ready.push(Ready { group, loaded }),
                Err(e) => {
                    let reason = format!("cannot load {}: {e}", group.aggregate_id);
                    for item in &group.items {
                        verdicts[item.index] = Verdict::Retry(reason.clone());
                    }
                }
            }
        }
        ready
    }

    /// React per aggregate: aggregates concurrently (their external calls overlap), each one's
    /// events in batch order.
    async fn react(
        &self,
        batch: &[&Envelope],
        ready: Vec<Ready<S::State>>,
    ) -> Vec<Reacted<S::State>> {
        let jobs = ready
            .into_iter()
            .map(|ready| react_in_order(&self.service, batch, ready));
        futures::stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    /// Run commands (from clients): decide each on the current state, commit all in one
    /// transaction, flush once, then return each result. One command's rejection does not affect
    /// the others.
    pub async fn execute(
        &mut self,
        commands: Vec<Command<S::State>>,
    ) -> Vec<Result<Executed<S::State>, DomainError>> {
        self.make_room();
        let mut writes = Writes::default();
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            let answer = results.len();
            results.push(self.decide(command, answer, &mut writes));
        }
        if writes.commits.is_empty() {
            self.put_back(writes.touched, false); // nothing changed: nothing to flush
            return results;
        }
        let written = writes.answers();
        let durable = self.commit_and_flush(writes).await;
        for (answer, why) in durable.not_recorded {
            results[answer] = Err(why.domain_error());
        }
        if let Err(e) = durable.flushed {
            for answer in written {
                results[answer] = Err(DomainError::unavailable(format!("flush failed: {e}")));
            }
        }
        results
    }

    /// Decide one command on its aggregate as the commands before it left it (later commands in
    /// the batch see its effect), and add its commit to `writes`.
    fn decide(
        &mut self,
        command: Command<S::State>,
        answer: usize,
        writes: &mut Writes<S::State>,
    ) -> Result<Executed<S::State>, DomainError> {
        let Command {
            aggregate_id,
            command,
        } = command;
        let aggregate = self.check_out(aggregate_id, writes)?;
        let Touched {
            aggregate_id,
            after,
            ..
        } = &writes.touched[aggregate];
        let version = after.head.version;
        let events = after.state.handle(command)?;
        let mut bytes = 0;
        if !events.is_empty() {
            let appended = append_events::<S>(
                Commit::new(),
                aggregate_id,
                version,
                &events,
                aggregate_id,
                None,
            )?;
            bytes = appended.bytes;
            writes.push(appended.commit, Slot { answer, aggregate });
        }
        let after = &mut writes.touched[aggregate].after;
        for event in &events {
            after.state.apply(event);
        }
        after.head = after.head.advanced(events.len() as u64, bytes);
        Ok(Executed {
            version: after.head.version,
            state: after.state.clone(),
            events,
        })
    }

    /// The aggregate's index in `writes`, taking it out of the cache (or loading it) the first
    /// time a command of the batch names it.
    fn check_out(
        &mut self,
        aggregate_id: String,
        writes: &mut Writes<S::State>,
    ) -> Result<usize, EngineError> {
        if let Some(&aggregate) = writes.position.get(&aggregate_id) {
            return Ok(aggregate);
        }
        let loaded = self.take(&aggregate_id)?;
        Ok(writes.touch(aggregate_id, loaded))
    }

    /// The tail every change shares: commit the writes in ONE transaction, flush ONCE, then put
    /// the aggregates whose state is durable back in the cache. An aggregate with a commit that
    /// did not land stays out: on failure its commits may or may not be on disk, so it is
    /// reloaded from disk next time. After a failed flush none goes back.
    async fn commit_and_flush(&mut self, writes: Writes<S::State>) -> Durable {
        let Writes {
            mut touched,
            commits,
            slots,
            echoes,
            ..
        } = writes;
        let not_recorded = self.commit(&commits, &slots, &mut touched);
        // An aggregate with a commit that did not land (or wrote nothing) is stale.
        let echoes = echoes
            .into_iter()
            .filter(|(slot, _)| !touched[slot.aggregate].stale)
            .map(|(_, envelope)| envelope)
            .collect();
        // A batch that recorded nothing (the stream's copies of echoes) owes no disk work once
        // every commit so far is on disk.
        let flushed = match commits.is_empty() {
            true => self.store.flush_if_owed().await,
            false => self.store.flush().await,
        };
        if flushed.is_ok() {
            self.put_back(touched, true);
        }
        Durable {
            not_recorded,
            flushed,
            echoes,
        }
    }

    /// Commit everything in one transaction. Answers the commits that did not land, and marks
    /// their aggregates stale.
    fn commit(
        &self,
        commits: &[Commit],
        slots: &[Slot],
        touched: &mut [Touched<S::State>],
    ) -> Vec<(usize, NotRecorded)> {
        let outcomes = match self.store.commit_all(commits) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let why = NotRecorded::from(&e);
                for slot in slots {
                    touched[slot.aggregate].stale = true;
                }
                return slots
                    .iter()
                    .map(|slot| (slot.answer, why.clone()))
                    .collect();
            }
        };
        let mut not_recorded = Vec::new();
        for (slot, outcome) in slots.iter().zip(outcomes) {
            match outcome {
                Ok(CommitOutcome::Committed { .. }) => {}
                // Cannot happen (checked in `admit`, single writer), but if it does the state
                // in memory is wrong: reload it.
                Ok(CommitOutcome::Duplicate) => touched[slot.aggregate].stale = true,
                Err(e) => {
                    touched[slot.aggregate].stale = true;
                    not_recorded.push((slot.answer, NotRecorded::from(&e)));
                }
            }
        }
        not_recorded
    }

    /// Put aggregates whose state is durable back in the cache, compacting (when `flushed` says
    /// this operation's flush covers them) those that grew or closed. Not the stale ones, nor the
    /// closed ones, nor those that do not exist (version 0: lookups of random ids must not fill
    /// the cache).
    fn put_back(&mut self, touched: Vec<Touched<S::State>>, flushed: bool) {
        let mut kept: Vec<(String, Loaded<S::State>)> = touched
            .into_iter()
            .filter(|t| !t.stale && t.after.head.version > 0)
            .map(|t| (t.aggregate_id, t.after))
            .collect();
        if flushed {
            self.compact(&mut kept);
        }
        for (aggregate_id, loaded) in kept {
            if !loaded.state.is_closed() {
                self.cache.insert(aggregate_id, loaded);
            }
        }
    }

    /// Replace by snapshots the events of the aggregates that grew enough since their last one,
    /// or closed: all in one transaction (sled serializes transactions process-wide). One that
    /// fails changes nothing: the events stay, and the next operation tries again.
    fn compact(&self, kept: &mut [(String, Loaded<S::State>)]) {
        let mut due = Vec::new();
        let mut snapshots = Vec::new();
        for (i, (aggregate_id, loaded)) in kept.iter().enumerate() {
            if !loaded.head.snapshot_due(loaded.state.is_closed()) {
                continue;
            }
            match serde_json::to_string(&loaded.state) {
                Ok(json) => {
                    due.push((i, json.len() as u64));
                    snapshots.push(Snapshot::new(aggregate_id, loaded.head.version, json));
                }
                Err(e) => tracing::warn!(%aggregate_id, error = %e, "snapshot not encoded"),
            }
        }
        if snapshots.is_empty() {
            return;
        }
        match self.store.compact(&snapshots) {
            Ok(()) => {
                let bytes = due.iter().map(|(_, bytes)| bytes).sum();
                metrics::snapshots(S::name(), due.len(), bytes);
                for (i, bytes) in due {
                    kept[i].1.head = kept[i].1.head.snapshotted(bytes);
                }
            }
            Err(e) => tracing::warn!(error = %e, aggregates = due.len(), "not compacted"),
        }
    }

    /// Answer `query` on the aggregate's version and state, by reference (the singletons hold
    /// every order: copying them per query would cost O(orders)).
    pub fn query<T>(
        &mut self,
        aggregate_id: &str,
        query: impl FnOnce(u64, &S::State) -> T,
    ) -> Result<T, EngineError> {
        self.make_room();
        self.ensure_cached(aggregate_id)?;
        let answer = match self.cache.get(aggregate_id) {
            Some(loaded) => query(loaded.head.version, &loaded.state),
            None => query(0, &S::State::initial(self.shard)),
        };
        self.forget_if_absent(aggregate_id);
        Ok(answer)
    }

    /// Start the cache over when it is full. Only between operations: an operation's loaded
    /// aggregates must stay cached until it is done.
    fn make_room(&mut self) {
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
    }

    /// Keep only open aggregates (lookups of random ids, or of closed orders, must not fill the
    /// cache).
    fn forget_if_absent(&mut self, aggregate_id: &str) {
        if self
            .cache
            .get(aggregate_id)
            .is_some_and(|loaded| loaded.head.version == 0 || loaded.state.is_closed())
        {
            self.cache.remove(aggregate_id);
        }
    }

    /// The aggregate, out of the cache: the cached copy, or else as its log has it.
    fn take(&mut self, aggregate_id: &str) -> Result<Loaded<S::State>, EngineError> {
        match self.cache.remove(aggregate_id) {
            Some(loaded) => Ok(loaded),
            None => self.read(aggregate_id),
        }
    }

    /// Make sure the aggregate is in the cache.
    fn ensure_cached(&mut self, aggregate_id: &str) -> Result<(), EngineError> {
        if !self.cache.contains_key(aggregate_id) {
            let loaded = self.read(aggregate_id)?;
            self.cache.insert(aggregate_id.to_string(), loaded);
        }
        Ok(())
    }

    /// The aggregate as its log has it: the latest snapshot plus the events after it.
    fn read(&self, aggregate_id: &str) -> Result<Loaded<S::State>, EngineError> {
        let (snapshot, events) = self.store.load(aggregate_id)?;
        let snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.state.len() as u64);
        let (mut version, mut state) = match snapshot {
            Some(s) => (
                s.version,
                serde_json::from_str(&s.state).map_err(|source| EngineError::Unreadable {
                    what: format!("snapshot of {aggregate_id}"),
                    source,
                })?,
            ),
            None => (0, S::State::initial(self.shard)),
        };
        let replayed = events.len() as u64;
        let logged_bytes = events.iter().map(|e| e.payload.len() as u64).sum();
        for recorded in events {
            let envelope = Envelope::from_slice(recorded.payload.as_bytes())?;
            let event = decode(&envelope)?;
            state.apply(&event);
            version = recorded.version;
        }
        Ok(Loaded {
            head: Head {
                version,
                since_snapshot: replayed,
                logged_bytes,
                snapshot_bytes,
            },
            state,
        })
    }
}

/// One aggregate's reactions, in batch order. After a Retry its later events are retried too,
/// unreacted, so the aggregate never sees its events out of order.
async fn react_in_order<S: Service>(
    service: &S,
    batch: &[&Envelope],
    ready: Ready<S::State>,
) -> Reacted<S::State> {
    let Ready {
        group: Group {
            aggregate_id,
            items,
        },
        loaded: Loaded { head, mut state },
    } = ready;
    let mut steps = Vec::with_capacity(items.len());
    let mut blocked: Option<String> = None;
    for Item { index, inbound } in items {
        if let Some(reason) = &blocked {
            let reason = format!("an earlier event of {aggregate_id} waits: {reason}");
            steps.push(Step {
                index,
                verdict: Verdict::Retry(reason),
                events: Vec::new(),
                span: opentelemetry::Context::new(),
            });
            continue;
        }
        let envelope = batch[index];
        let span = trace::handling(S::name(), envelope);
        let started = std::time::Instant::now();
        let reacted = reaction(service, &state, &envelope.subject, &inbound)
            .with_context(span.clone())
            .await;
        metrics::handle_latency(S::name(), started.elapsed().as_secs_f64());
        let (verdict, events) = match reacted {
            Ok(events) => {
                for event in &events {
                    state.apply(event);
                }
                (Verdict::Done, events)
            }
            Err(verdict) => {
                if let Verdict::Retry(reason) = &verdict {
                    blocked = Some(reason.clone());
                }
                (verdict, Vec::new())
            }
        };
        trace::finish_handling(&span, &verdict);
        steps.push(Step {
            index,
            verdict,
            events,
            span,
        });
    }
    Reacted {
        aggregate_id,
        base: head,
        state,
        steps,
    }
}

/// Turn the reactions into commits, and give every step its verdict.
fn record<S: Service>(
    batch: &[&Envelope],
    reacted: Vec<Reacted<S::State>>,
    verdicts: &mut [Verdict],
) -> Writes<S::State> {
    let mut writes = Writes::default();
    for aggregate in reacted {
        record_aggregate::<S>(batch, aggregate, verdicts, &mut writes);
    }
    writes
}

/// One commit per step that is Done (with or without events), each on top of the one before.
/// Events that cannot be encoded can never be applied: that step is rejected, and the
/// aggregate's later steps, decided on state that will not land, wait for a retry.
fn record_aggregate<S: Service>(
    batch: &[&Envelope],
    reacted: Reacted<S::State>,
    verdicts: &mut [Verdict],
    writes: &mut Writes<S::State>,
) {
    let Reacted {
        aggregate_id,
        base,
        state,
        steps,
    } = reacted;
    let recorded: u64 = steps.iter().map(|step| step.events.len() as u64).sum();
    let after = Loaded {
        head: base.advanced(recorded, 0),
        state,
    };
    let aggregate = writes.touch(aggregate_id.clone(), after);
    let mut version = base.version;
    let mut bytes = 0;
    for Step {
        index,
        verdict,
        events,
        span,
    } in steps
    {
        if verdict != Verdict::Done {
            verdicts[index] = verdict;
            continue;
        }
        if writes.touched[aggregate].stale {
            let reason = format!("an earlier event of {aggregate_id} could not be recorded");
            verdicts[index] = Verdict::Retry(reason);
            continue;
        }
        let cause = batch[index];
        let (commit, saga) = (Commit::caused_by(cause.id), &cause.subject);
        let cause = Some((cause, &span));
        match append_events::<S>(commit, &aggregate_id, version, &events, saga, cause) {
            Ok(appended) => {
                version += events.len() as u64;
                let slot = Slot {
                    answer: index,
                    aggregate,
                };
                bytes += appended.bytes;
                writes.push(appended.commit, slot);
                let echoes = appended.echoes.into_iter().map(|e| (slot, e));
                writes.echoes.extend(echoes);
            }
            Err(e) => {
                verdicts[index] = Verdict::Reject(format!("cannot record the reaction: {e}"));
                writes.touched[aggregate].stale = true;
            }
        }
    }
    let after = &mut writes.touched[aggregate].after;
    after.head = after.head.advanced(0, bytes);
}

/// A commit with an aggregate's new events, the envelopes of those the service echoes, and the
/// events' bytes in the log.
struct Appended {
    commit: Commit,
    echoes: Vec<Envelope>,
    bytes: u64,
}

/// Add `events` (as envelopes of saga `saga`) and their outbox rows to `commit`. Each event is
/// serialized once: the log and the outbox hold the same JSON.
/// `cause` is the event reacted to, and the span of that handling; none for a client's command.
fn append_events<S: Service>(
    commit: Commit,
    aggregate_id: &str,
    version: u64,
    events: &[<S::State as Aggregate>::Event],
    saga: &str,
    cause: Option<(&Envelope, &opentelemetry::Context)>,
) -> Result<Appended, EngineError> {
    if events.is_empty() {
        // No events, but still the version check: a step decided on state that did not land
        // (an earlier step of this aggregate failed) must not be marked done.
        return Ok(Appended {
            commit: commit.append(aggregate_id, version, Vec::new()),
            echoes: Vec::new(),
            bytes: 0,
        });
    }
    let mut new_events = Vec::with_capacity(events.len());
    let mut outbox = Vec::with_capacity(events.len());
    let mut echoes = Vec::new();
    for (event, event_version) in events.iter().zip(version + 1..) {
        let mut envelope = encode(event, saga, cause.map(|(envelope, _)| envelope))?;
        envelope.aggregateversion = Some(event_version);
        if aggregate_id != saga {
            envelope.aggregateid = Some(aggregate_id.to_string());
        }
        trace::emitted(S::name(), &envelope, cause.map(|(_, span)| span));
        let json = envelope.to_json()?;
        outbox.push(envelope.to_outbox_message_from_json(json.clone())?);
        if S::ECHO.contains(&envelope.event_type.as_str()) {
            echoes.push(envelope.clone());
        }
        new_events.push(NewEvent {
            event_id: envelope.id,
            event_type: envelope.event_type,
            payload: json,
        });
    }
    let bytes = new_events.iter().map(|e| e.payload.len() as u64).sum();
    let commit = commit.append(aggregate_id, version, new_events);
    Ok(Appended {
        commit: outbox.into_iter().fold(commit, Commit::publish),
        echoes,
        bytes,
    })
}

#[cfg(test)]
mod echo_tests;
#[cfg(test)]
mod tests;
