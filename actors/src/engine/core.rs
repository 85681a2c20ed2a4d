//! The engine: one service's state machine over its own database.
//!
//! Every change goes the same way: load the aggregate (snapshot + later events), decide, apply the
//! new events to a copy, then ONE sled transaction for the whole batch (events, outbox rows, inbox
//! marks), ONE flush, and only then the answer (ack or reply). The engine is the only writer of
//! its database, so the in-memory copies it caches are the truth; after any failed commit the
//! touched aggregates are dropped from the cache and reloaded from disk.

use std::collections::{HashMap, HashSet};

use bus::{Delivery, Envelope, Verdict};
use futures::StreamExt;
use storage::{Commit, CommitOutcome, Flushed, NewEvent, StorageError, Store};

use super::{
    decode, encode, Aggregate, ApiError, Command, EngineError, Executed, Reaction, Service,
};
use crate::events::Inbound;

/// Aggregates kept in memory at most; past this the cache starts over (a reload is a snapshot
/// plus a few events).
const CACHE_LIMIT: usize = 50_000;
/// Snapshot an aggregate after this many new events (the singletons grow long histories).
const SNAPSHOT_EVERY: u64 = 256;
/// Aggregates reacting at once within a batch (their external calls overlap).
const CONCURRENCY: usize = 64;

#[derive(Debug, Clone)]
struct Loaded<A> {
    version: u64,
    state: A,
    since_snapshot: u64,
}

/// A batch whose effects are durable, ready to be settled on the bus.
pub struct Settled {
    pub verdicts: Vec<(Verdict, Delivery)>,
    pub flushed: Flushed,
}

pub struct Engine<S: Service> {
    service: S,
    store: Store,
    cache: HashMap<String, Loaded<S::State>>,
}

/// One aggregate's share of a batch: its id, its state, and its events (index in the batch).
type Group<A> = (String, Loaded<A>, Vec<(usize, Inbound)>);

/// What one aggregate's reactions in a batch came to.
struct Reacted<A: Aggregate> {
    aggregate_id: String,
    /// Version and events since the last snapshot before this batch.
    version: u64,
    since_snapshot: u64,
    state: A,
    /// (index in the batch, verdict, events to record)
    steps: Vec<(usize, Verdict, Vec<A::Event>)>,
}

impl<S: Service> Engine<S> {
    pub fn new(service: S, store: Store) -> Self {
        Engine {
            service,
            store,
            cache: HashMap::new(),
        }
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
    /// aggregate never sees its events out of order.
    pub async fn deliver(&mut self, batch: Vec<Delivery>) -> Result<Settled, EngineError> {
        self.make_room();
        let mut verdicts = vec![Verdict::Done; batch.len()];
        let mut groups: Vec<(String, Vec<(usize, Inbound)>)> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        let mut seen = HashSet::new();
        for (i, delivery) in batch.iter().enumerate() {
            let envelope = &delivery.envelope;
            if !seen.insert(envelope.id) || self.store.is_processed(envelope.id)? {
                continue; // already applied: acknowledge again
            }
            let inbound = match Inbound::decode(envelope) {
                Ok(inbound) => inbound,
                Err(reason) => {
                    verdicts[i] = Verdict::Reject(reason.to_string());
                    continue;
                }
            };
            let Some(aggregate_id) = self.service.route(&inbound, &envelope.subject) else {
                continue; // not this service's business
            };
            let g = *group_of.entry(aggregate_id.clone()).or_insert_with(|| {
                groups.push((aggregate_id, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((i, inbound));
        }

        // Load every touched aggregate first; one that cannot be loaded waits for a retry.
        groups.retain(|(aggregate_id, items)| match self.load(aggregate_id) {
            Ok(()) => true,
            Err(e) => {
                for (i, _) in items {
                    verdicts[*i] = Verdict::Retry(format!("cannot load {aggregate_id}: {e}"));
                }
                false
            }
        });

        // Take each aggregate out of the cache (no copy: the singletons hold every order); it
        // goes back only once its batch is durable, so a failure leaves nothing stale behind.
        let groups = groups
            .into_iter()
            .map(|(aggregate_id, items)| {
                let loaded = self.cache.remove(&aggregate_id).unwrap_or(Loaded {
                    version: 0,
                    state: S::State::default(),
                    since_snapshot: 0,
                });
                (aggregate_id, loaded, items)
            })
            .collect();
        let reacted = self.react_all(&batch, groups).await;

        let mut commits = Vec::new();
        let mut slots = Vec::new(); // (group, index in batch)
        let mut failed_groups = HashSet::new();
        for (g, group) in reacted.iter().enumerate() {
            let mut version = group.version;
            for (i, verdict, events) in &group.steps {
                verdicts[*i] = verdict.clone();
                if *verdict != Verdict::Done {
                    continue;
                }
                if failed_groups.contains(&g) {
                    verdicts[*i] = Verdict::Retry(format!(
                        "an earlier event of {} could not be recorded",
                        group.aggregate_id
                    ));
                    continue;
                }
                let cause = &batch[*i].envelope;
                let commit = record(
                    Commit::caused_by(cause.id),
                    &group.aggregate_id,
                    version,
                    events,
                    &cause.subject,
                    Some(cause),
                );
                match commit {
                    Ok(commit) => {
                        version += events.len() as u64;
                        commits.push(commit);
                        slots.push((g, *i));
                    }
                    // Events that cannot be encoded: this event can never be applied.
                    Err(e) => {
                        verdicts[*i] = Verdict::Reject(format!("cannot record the reaction: {e}"));
                        failed_groups.insert(g);
                    }
                }
            }
        }

        match self.store.commit_all(&commits) {
            Ok(outcomes) => {
                for ((g, i), outcome) in slots.iter().zip(outcomes) {
                    match outcome {
                        Ok(CommitOutcome::Committed { .. }) => {}
                        // Cannot happen (checked above, single writer), but if it does the
                        // cached state is wrong: reload it.
                        Ok(CommitOutcome::Duplicate) => {
                            failed_groups.insert(*g);
                        }
                        Err(e) => {
                            verdicts[*i] = Verdict::Retry(format!("commit failed: {e}"));
                            failed_groups.insert(*g);
                        }
                    }
                }
            }
            Err(e) => {
                for (g, i) in &slots {
                    verdicts[*i] = Verdict::Retry(format!("commit failed: {e}"));
                    failed_groups.insert(*g);
                }
            }
        }
        // On failure the commits may or may not be on disk: the touched aggregates are out of
        // the cache, so they are reloaded from disk next time.
        let flushed = self.store.flush().await?;

        for (g, group) in reacted.into_iter().enumerate() {
            if failed_groups.contains(&g) {
                continue; // reloaded from disk next time
            }
            let recorded: u64 = group.steps.iter().map(|(_, _, e)| e.len() as u64).sum();
            let loaded = Loaded {
                version: group.version + recorded,
                since_snapshot: group.since_snapshot + recorded,
                state: group.state,
            };
            if loaded.version > 0 {
                self.cache.insert(group.aggregate_id.clone(), loaded);
                self.maybe_snapshot(&group.aggregate_id);
            }
        }
        let verdicts = verdicts.into_iter().zip(batch).collect();
        Ok(Settled { verdicts, flushed })
    }

    async fn react_all(
        &self,
        batch: &[Delivery],
        groups: Vec<Group<S::State>>,
    ) -> Vec<Reacted<S::State>> {
        let service = &self.service;
        let jobs = groups.into_iter().map(|(aggregate_id, loaded, items)| {
            let Loaded {
                version,
                since_snapshot,
                mut state,
            } = loaded;
            async move {
                let mut steps = Vec::with_capacity(items.len());
                let mut blocked: Option<String> = None;
                for (i, inbound) in items {
                    if let Some(reason) = &blocked {
                        let reason = format!("an earlier event of {aggregate_id} waits: {reason}");
                        steps.push((i, Verdict::Retry(reason), Vec::new()));
                        continue;
                    }
                    let saga = &batch[i].envelope.subject;
                    let reaction: Reaction<_> = service.react(&state, &inbound, saga).await;
                    match reaction {
                        Ok(events) => {
                            for event in &events {
                                state.apply(event);
                            }
                            steps.push((i, Verdict::Done, events));
                        }
                        Err(verdict) => {
                            if let Verdict::Retry(reason) = &verdict {
                                blocked = Some(reason.clone());
                            }
                            steps.push((i, verdict, Vec::new()));
                        }
                    }
                }
                Reacted {
                    aggregate_id,
                    version,
                    since_snapshot,
                    state,
                    steps,
                }
            }
        });
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
    ) -> Vec<Result<Executed<S::State>, ApiError>> {
        self.make_room();
        let mut results: Vec<Result<Executed<S::State>, ApiError>> =
            Vec::with_capacity(commands.len());
        let mut commits = Vec::new();
        let mut slots = Vec::new(); // index in results
        let mut touched = HashSet::new();
        for command in commands {
            let id = command.aggregate_id;
            if let Err(e) = self.load(&id) {
                results.push(Err(e.into()));
                continue;
            }
            let loaded = self.cached(&id);
            let events = match (command.decide)(&loaded.state, loaded.version) {
                Ok(events) => events,
                Err(e) => {
                    self.forget_if_absent(&id);
                    results.push(Err(e));
                    continue;
                }
            };
            let mut state = loaded.state;
            for event in &events {
                state.apply(event);
            }
            if !events.is_empty() {
                match record(Commit::new(), &id, loaded.version, &events, &id, None) {
                    Ok(commit) => {
                        commits.push(commit);
                        slots.push(results.len());
                        touched.insert(id.clone());
                    }
                    Err(e) => {
                        results.push(Err(e.into()));
                        continue;
                    }
                }
                // Later commands in this batch see this one's effect.
                self.store_state(id.clone(), state.clone(), events.len() as u64);
            }
            results.push(Ok(Executed {
                version: loaded.version + events.len() as u64,
                state,
                events,
            }));
        }
        if commits.is_empty() {
            return results;
        }
        let failure = match self.store.commit_all(&commits) {
            Ok(outcomes) => {
                let mut failure = None;
                for (slot, outcome) in slots.iter().zip(outcomes) {
                    if let Err(e) = outcome {
                        results[*slot] = Err(commit_error(e));
                        failure = Some(());
                    }
                }
                failure
            }
            Err(e) => {
                for slot in &slots {
                    results[*slot] = Err(ApiError::unavailable(format!("commit failed: {e}")));
                }
                Some(())
            }
        };
        if failure.is_some() {
            for id in &touched {
                self.cache.remove(id);
            }
            // The flush below still covers the commits that landed.
        }
        if let Err(e) = self.store.flush().await {
            for slot in &slots {
                results[*slot] = Err(ApiError::unavailable(format!("flush failed: {e}")));
            }
            for id in &touched {
                self.cache.remove(id);
            }
            return results;
        }
        for id in &touched {
            self.maybe_snapshot(id);
        }
        results
    }

    /// Answer `query` on the aggregate's version and state, by reference (the singletons hold
    /// every order: copying them per query would cost O(orders)).
    pub fn query<T>(
        &mut self,
        aggregate_id: &str,
        query: impl FnOnce(u64, &S::State) -> T,
    ) -> Result<T, EngineError> {
        self.make_room();
        self.load(aggregate_id)?;
        let answer = match self.cache.get(aggregate_id) {
            Some(loaded) => query(loaded.version, &loaded.state),
            None => query(0, &S::State::default()),
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

    /// Do not keep aggregates that do not exist (lookups of random ids must not fill the cache).
    fn forget_if_absent(&mut self, aggregate_id: &str) {
        if self.version_of(aggregate_id) == 0 {
            self.cache.remove(aggregate_id);
        }
    }

    fn version_of(&self, aggregate_id: &str) -> u64 {
        self.cache.get(aggregate_id).map_or(0, |l| l.version)
    }

    /// A copy of the cached aggregate. Called after `load`; were it missing, a new aggregate at
    /// version 0 is returned and its commit fails the version check, so nothing goes wrong.
    fn cached(&self, aggregate_id: &str) -> Loaded<S::State> {
        self.cache.get(aggregate_id).cloned().unwrap_or(Loaded {
            version: 0,
            state: S::State::default(),
            since_snapshot: 0,
        })
    }

    fn store_state(&mut self, aggregate_id: String, state: S::State, recorded: u64) {
        let (version, since_snapshot) = self
            .cache
            .get(&aggregate_id)
            .map_or((0, 0), |l| (l.version, l.since_snapshot));
        self.cache.insert(
            aggregate_id,
            Loaded {
                version: version + recorded,
                since_snapshot: since_snapshot + recorded,
                state,
            },
        );
    }

    /// Save a snapshot of a cached aggregate if it has grown enough since the last one. Only
    /// for durable state: call after the flush that covers it.
    fn maybe_snapshot(&mut self, aggregate_id: &str) {
        let Some(loaded) = self.cache.get_mut(aggregate_id) else {
            return;
        };
        if loaded.since_snapshot < SNAPSHOT_EVERY {
            return;
        }
        match serde_json::to_string(&loaded.state) {
            Ok(json) => {
                // A snapshot is a cache of committed state; losing it costs a replay.
                match self.store.save_snapshot(aggregate_id, loaded.version, json) {
                    Ok(()) => loaded.since_snapshot = 0,
                    Err(e) => tracing::warn!(%aggregate_id, error = %e, "snapshot not saved"),
                }
            }
            Err(e) => tracing::warn!(%aggregate_id, error = %e, "snapshot not encoded"),
        }
    }

    /// Make sure the aggregate is in the cache: latest snapshot plus the events after it.
    fn load(&mut self, aggregate_id: &str) -> Result<(), EngineError> {
        if self.cache.contains_key(aggregate_id) {
            return Ok(());
        }
        let (snapshot, events) = self.store.load(aggregate_id)?;
        let (mut version, mut state) = match snapshot {
            Some(s) => (
                s.version,
                serde_json::from_str(&s.state).map_err(|source| EngineError::Unreadable {
                    what: format!("snapshot of {aggregate_id}"),
                    source,
                })?,
            ),
            None => (0, S::State::default()),
        };
        let replayed = events.len() as u64;
        for recorded in events {
            let envelope = Envelope::from_slice(recorded.payload.as_bytes())?;
            let event = decode(&envelope)?;
            state.apply(&event);
            version = recorded.version;
        }
        self.cache.insert(
            aggregate_id.to_string(),
            Loaded {
                version,
                state,
                since_snapshot: replayed,
            },
        );
        Ok(())
    }
}

/// Add `events` (as envelopes of saga `saga`) and their outbox rows to `commit`.
fn record<E: super::DomainEvent>(
    commit: Commit,
    aggregate_id: &str,
    version: u64,
    events: &[E],
    saga: &str,
    cause: Option<&Envelope>,
) -> Result<Commit, EngineError> {
    if events.is_empty() {
        // No events, but still the version check: a step decided on state that did not land
        // (an earlier step of this aggregate failed) must not be marked done.
        return Ok(commit.append(aggregate_id, version, Vec::new()));
    }
    let envelopes = events
        .iter()
        .zip(version + 1..)
        .map(|(e, v)| {
            let mut envelope = encode(e, saga, cause)?;
            envelope.aggregateversion = Some(v);
            Ok(envelope)
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let new_events = envelopes
        .iter()
        .map(|env| {
            Ok(NewEvent {
                event_id: env.id,
                event_type: env.event_type.clone(),
                payload: env.to_json()?,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let mut commit = commit.append(aggregate_id, version, new_events);
    for envelope in &envelopes {
        commit = commit.publish(envelope.to_outbox_message()?);
    }
    Ok(commit)
}

fn commit_error(e: StorageError) -> ApiError {
    match e {
        StorageError::Conflict { .. } => ApiError::conflict(format!("{e}; retry")),
        other => ApiError::unavailable(format!("commit failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Line;
    use crate::events::InventoryEvent;
    use crate::inventory::aggregate::WAREHOUSE;
    use crate::inventory::InventoryService;

    fn reserve(i: usize) -> Command<crate::inventory::aggregate::Warehouse> {
        Command {
            aggregate_id: WAREHOUSE.into(),
            decide: Box::new(move |_, _| {
                Ok(vec![InventoryEvent::InventoryReserved {
                    order_id: format!("o{i}"),
                    lines: vec![Line {
                        sku: "SKU-MUG".into(),
                        quantity: 1,
                        unit_price_cents: 1,
                    }],
                    shipping_address: "x".into(),
                }])
            }),
        }
    }

    #[tokio::test]
    async fn a_long_history_loads_from_its_snapshot_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let mut engine = Engine::new(InventoryService, store.clone());
        for chunk in (0..600).collect::<Vec<_>>().chunks(100) {
            let results = engine
                .execute(chunk.iter().map(|i| reserve(*i)).collect())
                .await;
            assert!(results.iter().all(Result::is_ok));
        }
        let (version, live) = engine.query(WAREHOUSE, |v, s| (v, s.clone())).unwrap();
        assert_eq!(version, 600);

        let (snapshot, tail) = store.load(WAREHOUSE).unwrap();
        let snapshot = snapshot.expect("a snapshot was taken");
        assert!(snapshot.version >= SNAPSHOT_EVERY, "{}", snapshot.version);
        assert!(
            tail.len() < SNAPSHOT_EVERY as usize,
            "replays only {} events",
            tail.len()
        );

        // A fresh engine (a restart) loads snapshot + tail to the same state and version.
        let mut fresh = Engine::new(InventoryService, store);
        let (reloaded_version, reloaded) = fresh.query(WAREHOUSE, |v, s| (v, s.clone())).unwrap();
        assert_eq!(reloaded_version, 600);
        assert_eq!(reloaded, live);
        assert_eq!(reloaded.available["SKU-MUG"], 10_000 - 600);
    }
}
