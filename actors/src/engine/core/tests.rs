//! The batch rules of [`Engine::deliver`] and the commit tail of [`Engine::execute`], against a
//! real store, with a scripted service; and snapshots.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::*;
use crate::engine::testing::lines;
use crate::engine::{DomainEvent, Placement, Plan};
use crate::events::{OrderEvent, PaymentEvent};
use crate::inventory::aggregate::WAREHOUSE;
use crate::inventory::InventoryService;
use crate::rpc::DomainError;

/// What the test service records: it counted something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum TallyEvent {
    Counted { what: String },
}

impl DomainEvent for TallyEvent {
    const DOMAIN: Domain = Domain::Recommendations;
}

/// The test aggregate: what it counted, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    counted: Vec<String>,
}

/// What the scripted reaction is told to do: the `OrderCancelled` reason.
type Script = String;

impl Aggregate for Tally {
    type Event = TallyEvent;
    /// Count this.
    type Command = String;
    type Call = Script;
    type Answer = ();

    /// Counting "close" closes it.
    fn is_closed(&self) -> bool {
        self.counted.last().is_some_and(|what| what == "close")
    }

    fn handle(&self, what: String) -> Result<Vec<TallyEvent>, DomainError> {
        Ok(vec![TallyEvent::Counted { what }])
    }

    fn react(&self, _: &str, event: &Inbound, _: DateTime<Utc>) -> Plan<TallyEvent, Script> {
        match event {
            Inbound::Order(OrderEvent::OrderCancelled { reason, .. }) => Plan::Call(reason.clone()),
            _ => Plan::Emit(Vec::new()),
        }
    }

    fn outcome(&self, script: Script, _: (), _: DateTime<Utc>) -> Vec<TallyEvent> {
        let counted = TallyEvent::Counted {
            what: script.clone(),
        };
        match script.as_str() {
            "nothing" => Vec::new(),
            "twice" => vec![counted.clone(), counted],
            _ => vec![counted],
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::Counted { what } = event;
        self.counted.push(what.clone());
    }
}

/// Counts `OrderCancelled { reason }` on the aggregate named by the saga, as the reason scripts
/// it: `retry` and `reject` fail that way (as an external call would), `nothing` records
/// nothing, `twice` counts twice, anything else once.
#[derive(Default)]
struct Tallier {
    reactions: AtomicUsize,
}

impl Service for Tallier {
    type State = Tally;
    const LISTENS: &'static [(Domain, &'static [&'static str])] =
        &[(Domain::Orders, &["OrderCancelled"])];

    fn new(_: &crate::Settings, _: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(Tallier::default())
    }

    const PLACEMENT: Placement = Placement::PerOrder;
    type View = Tally;
    type Part = Tally;

    async fn call(&self, _: &str, script: &Script) -> Result<(), Verdict> {
        self.reactions.fetch_add(1, Relaxed);
        match script.as_str() {
            "retry" => Err(Verdict::Retry("scripted: later".into())),
            "reject" => Err(Verdict::Reject("scripted: never".into())),
            _ => Ok(()),
        }
    }

    fn view(_: u64, state: &Tally) -> Option<Tally> {
        Some(state.clone())
    }

    fn part(_: &str, _: u64, state: &Tally) -> Option<Tally> {
        Some(state.clone())
    }
}

fn open() -> (tempfile::TempDir, Store, Engine<Tallier>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &Default::default()).unwrap();
    let engine = Engine::new(Tallier::default(), store.clone());
    (dir, store, engine)
}

/// An order event for aggregate `aggregate` (its saga) that scripts the reaction.
fn cancelled(aggregate: &str, reason: &str) -> Envelope {
    Envelope::new(
        Domain::Orders,
        "OrderCancelled",
        aggregate,
        json!({ "reason": reason }),
    )
    .unwrap()
}

async fn deliver(engine: &mut Engine<Tallier>, batch: &[&Envelope]) -> Vec<Verdict> {
    let applied = engine.deliver(batch).await.unwrap();
    assert_eq!(applied.verdicts.len(), batch.len(), "one verdict each");
    applied.verdicts
}

fn reactions(engine: &Engine<Tallier>) -> usize {
    engine.service().reactions.load(Relaxed)
}

/// What the aggregate's log on disk says it counted.
fn counted_on_disk(store: &Store, aggregate: &str) -> Vec<String> {
    store
        .events_after(aggregate, 0)
        .unwrap()
        .iter()
        .map(|recorded| {
            let envelope = Envelope::from_slice(recorded.payload.as_bytes()).unwrap();
            let TallyEvent::Counted { what } = decode(&envelope).unwrap();
            what
        })
        .collect()
}

/// A commit by another writer: one event appended to `aggregate` at `version`.
fn written_elsewhere(aggregate: &str, version: u64, what: &str) -> Commit {
    let event = TallyEvent::Counted { what: what.into() };
    let mut envelope = encode(&event, aggregate, None).unwrap();
    envelope.aggregateversion = Some(version + 1);
    let new_event = NewEvent {
        event_id: envelope.id,
        event_type: envelope.event_type.clone(),
        payload: envelope.to_json().unwrap(),
    };
    Commit::new().append(aggregate, version, vec![new_event])
}

fn is_retry_with(verdict: &Verdict, words: &[&str]) -> bool {
    matches!(verdict, Verdict::Retry(reason) if words.iter().all(|w| reason.contains(w)))
}

#[tokio::test]
async fn a_retry_holds_back_its_aggregates_later_events_but_not_other_aggregates() {
    let (_dir, store, mut engine) = open();
    let a0 = cancelled("a", "a0");
    let a1 = cancelled("a", "retry");
    let b1 = cancelled("b", "b1");
    let a2 = cancelled("a", "a2");

    let verdicts = deliver(&mut engine, &[&a0, &a1, &b1, &a2]).await;

    assert_eq!(verdicts[0], Verdict::Done);
    assert_eq!(verdicts[1], Verdict::Retry("scripted: later".into()));
    assert_eq!(verdicts[2], Verdict::Done);
    assert!(
        is_retry_with(
            &verdicts[3],
            &["an earlier event of a waits", "scripted: later"]
        ),
        "{:?}",
        verdicts[3]
    );
    assert_eq!(
        reactions(&engine),
        3,
        "the held-back event is not reacted to"
    );
    assert_eq!(counted_on_disk(&store, "a"), ["a0"]);
    assert_eq!(counted_on_disk(&store, "b"), ["b1"]);
    assert!(store.is_processed(a0.id).unwrap());
    assert!(!store.is_processed(a1.id).unwrap());
    assert!(!store.is_processed(a2.id).unwrap());

    // Redelivered in order, they land after what landed.
    let a1 = cancelled("a", "a1"); // the dependency is back
    let verdicts = deliver(&mut engine, &[&a1, &a2]).await;
    assert_eq!(verdicts, [Verdict::Done, Verdict::Done]);
    assert_eq!(counted_on_disk(&store, "a"), ["a0", "a1", "a2"]);
}

#[tokio::test]
async fn a_rejected_reaction_does_not_hold_back_the_next_event() {
    let (_dir, store, mut engine) = open();
    let a1 = cancelled("a", "reject");
    let a2 = cancelled("a", "a2");

    let verdicts = deliver(&mut engine, &[&a1, &a2]).await;

    assert_eq!(
        verdicts,
        [Verdict::Reject("scripted: never".into()), Verdict::Done]
    );
    assert!(
        !store.is_processed(a1.id).unwrap(),
        "a reject records nothing"
    );
    assert_eq!(counted_on_disk(&store, "a"), ["a2"]);
}

#[tokio::test]
async fn duplicates_are_applied_once_within_a_batch_and_across_batches() {
    let (_dir, store, mut engine) = open();
    let a1 = cancelled("a", "a1");
    let copy = a1.clone();

    let verdicts = deliver(&mut engine, &[&a1, &copy]).await;
    assert_eq!(verdicts, [Verdict::Done, Verdict::Done]);
    assert_eq!(reactions(&engine), 1, "the copy is not reacted to");
    assert_eq!(counted_on_disk(&store, "a"), ["a1"]);
    assert_eq!(store.outbox_depth(), 1);

    // Redelivered later: already in the inbox, so acked again without effect.
    let verdicts = deliver(&mut engine, &[&a1]).await;
    assert_eq!(verdicts, [Verdict::Done]);
    assert_eq!(reactions(&engine), 1);
    assert_eq!(store.version("a").unwrap(), 1);
    assert_eq!(store.outbox_depth(), 1);
}

#[tokio::test]
async fn an_undecodable_event_is_rejected_with_the_reason_and_the_rest_applied() {
    let (_dir, store, mut engine) = open();
    let unknown = Envelope::new(Domain::Orders, "OrderVanished", "a", json!({})).unwrap();
    let malformed = Envelope::new(
        Domain::Orders,
        "OrderCancelled",
        "a",
        json!({ "reason": 7 }),
    )
    .unwrap();
    let good = cancelled("a", "a1");

    let verdicts = deliver(&mut engine, &[&unknown, &malformed, &good]).await;

    let rejected_for = |verdict: &Verdict, word: &str| matches!(verdict, Verdict::Reject(reason) if reason.contains(word));
    assert!(rejected_for(&verdicts[0], "OrderVanished"), "{verdicts:?}");
    assert!(rejected_for(&verdicts[1], "OrderCancelled"), "{verdicts:?}");
    assert_eq!(verdicts[2], Verdict::Done);
    assert_eq!(reactions(&engine), 1);
    assert!(!store.is_processed(unknown.id).unwrap());
    assert!(!store.is_processed(malformed.id).unwrap());
    assert_eq!(counted_on_disk(&store, "a"), ["a1"]);
}

#[tokio::test]
async fn a_group_whose_commit_fails_is_evicted_and_reloaded_from_disk() {
    let (_dir, store, mut engine) = open();
    let a1 = cancelled("a", "a1");
    assert_eq!(deliver(&mut engine, &[&a1]).await, [Verdict::Done]);
    // Another writer appends at the version the engine has cached: its copy is now stale.
    store
        .commit(&written_elsewhere("a", 1, "elsewhere"))
        .unwrap();

    let a2 = cancelled("a", "a2");
    let b1 = cancelled("b", "b1");
    let verdicts = deliver(&mut engine, &[&a2, &b1]).await;

    assert!(
        is_retry_with(&verdicts[0], &["commit failed", "version conflict on a"]),
        "{:?}",
        verdicts[0]
    );
    assert_eq!(
        verdicts[1],
        Verdict::Done,
        "another aggregate is unaffected"
    );
    assert!(!store.is_processed(a2.id).unwrap());
    assert_eq!(counted_on_disk(&store, "b"), ["b1"]);

    // Redelivered: the aggregate is reloaded from disk, so it lands after the other write.
    assert_eq!(deliver(&mut engine, &[&a2]).await, [Verdict::Done]);
    assert_eq!(counted_on_disk(&store, "a"), ["a1", "elsewhere", "a2"]);
    let (version, counted) = engine.query("a", |v, s| (v, s.counted.clone())).unwrap();
    assert_eq!(version, 3);
    assert_eq!(counted, ["a1", "elsewhere", "a2"]);
}

#[tokio::test]
async fn recorded_events_carry_versions_one_to_n_in_order_with_one_outbox_row_each() {
    let (_dir, store, mut engine) = open();
    let batch = [
        cancelled("a", "first"),
        cancelled("a", "twice"),
        cancelled("a", "last"),
    ];
    let refs: Vec<&Envelope> = batch.iter().collect();

    let verdicts = deliver(&mut engine, &refs).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Done), "{verdicts:?}");

    let recorded = store.events_after("a", 0).unwrap();
    let versions: Vec<u64> = recorded.iter().map(|r| r.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(
        counted_on_disk(&store, "a"),
        ["first", "twice", "twice", "last"]
    );
    let causes = [batch[0].id, batch[1].id, batch[1].id, batch[2].id];
    let rows = store.pending(100).unwrap();
    assert_eq!(rows.len(), recorded.len(), "one outbox row per event");
    for ((event, row), cause) in recorded.iter().zip(&rows).zip(causes) {
        let envelope = Envelope::from_slice(event.payload.as_bytes()).unwrap();
        assert_eq!(envelope.aggregateversion, Some(event.version));
        assert_eq!(envelope.causationid, Some(cause));
        assert_eq!(envelope.subject, "a");
        assert_eq!(row.message.event_id, event.event_id);
        assert_eq!(row.message.payload, event.payload, "the same JSON");
        assert_eq!(row.message.subject, envelope.nats_subject().unwrap());
    }
}

#[tokio::test]
async fn an_aggregate_that_still_does_not_exist_is_marked_done_but_not_cached() {
    let (_dir, store, mut engine) = open();
    let ghost = cancelled("ghost", "nothing");

    assert_eq!(deliver(&mut engine, &[&ghost]).await, [Verdict::Done]);

    assert!(store.is_processed(ghost.id).unwrap());
    assert_eq!(store.version("ghost").unwrap(), 0);
    assert!(!engine.cache.contains_key("ghost"));
}

fn count(aggregate: &str, what: &str) -> Command<Tally> {
    Command {
        aggregate_id: aggregate.into(),
        command: what.into(),
    }
}

#[tokio::test]
async fn a_command_whose_commit_conflicts_is_answered_409_and_the_next_sees_the_disk() {
    let (_dir, store, mut engine) = open();
    let first = engine.execute(vec![count("a", "c1")]).await;
    assert_eq!(first[0].as_ref().map(|e| e.version).ok(), Some(1));
    store
        .commit(&written_elsewhere("a", 1, "elsewhere"))
        .unwrap();

    let results = engine
        .execute(vec![count("a", "c2"), count("b", "c3")])
        .await;
    // The client is told what to do, not the versions that met.
    assert_eq!(
        results[0].as_ref().err(),
        Some(&DomainError::conflict(CHANGED_MEANWHILE))
    );
    assert_eq!(results[1].as_ref().map(|e| e.version).ok(), Some(1));

    // Decided on the state reloaded from disk, not on the copy that did not land.
    let again = engine.execute(vec![count("a", "c2")]).await;
    let executed = again[0].as_ref().unwrap();
    assert_eq!(executed.version, 3);
    assert_eq!(executed.state.counted, ["c1", "elsewhere", "c2"]);
    assert_eq!(counted_on_disk(&store, "a"), ["c1", "elsewhere", "c2"]);
}

#[tokio::test]
async fn a_closed_aggregate_is_kept_as_a_snapshot_not_as_events_nor_in_memory() {
    let (_dir, store, mut engine) = open();
    engine.execute(vec![count("a", "c1")]).await;
    engine
        .execute(vec![count("a", "close"), count("b", "c1")])
        .await;

    let (snapshot, tail) = store.load("a").unwrap();
    assert_eq!(snapshot.map(|s| s.version), Some(2), "snapshotted at close");
    assert!(tail.is_empty(), "its events are dropped: {tail:?}");
    assert!(!engine.cache.contains_key("a"), "not kept in memory");
    assert_eq!(
        counted_on_disk(&store, "b"),
        ["c1"],
        "an open one keeps its log"
    );
    assert!(engine.cache.contains_key("b"));

    // A late command loads it from the snapshot and goes on from there.
    let late = engine.execute(vec![count("a", "late")]).await;
    let executed = late[0].as_ref().unwrap();
    assert_eq!(executed.version, 3);
    assert_eq!(executed.state.counted, ["c1", "close", "late"]);
    let mut fresh = Engine::new(Tallier::default(), store.clone());
    let reloaded = fresh.query("a", |v, s| (v, s.counted.clone())).unwrap();
    assert_eq!(
        reloaded,
        (3, vec!["c1".into(), "close".into(), "late".into()])
    );
}

#[tokio::test]
async fn a_large_state_is_snapshotted_again_only_once_its_size_in_events_was_logged() {
    let (_dir, store, mut engine) = open();
    let counts = |from: usize, n: usize| -> Vec<Command<Tally>> {
        (from..from + n)
            .map(|i| count("a", &format!("c{i}")))
            .collect()
    };
    // A state far larger than 256 small events (an event holds at most 64 KiB).
    let big: Vec<_> = (0..8).map(|_| count("a", &"x".repeat(40_000))).collect();
    assert!(engine.execute(big).await.iter().all(Result::is_ok));
    engine.execute(counts(0, 300)).await;
    let first = store
        .load("a")
        .unwrap()
        .0
        .expect("a snapshot after 256 events");
    assert_eq!(first.version, 308);
    let size = first.state.len();

    // Past 256 events again, no snapshot until the events since weigh as much as the last one.
    let mut next = 300;
    let mut before = (0, 0); // the tail's events and bytes before the last batch
    let second = loop {
        engine.execute(counts(next, 10)).await;
        next += 10;
        assert!(next < 20_000, "never snapshotted again");
        let (snapshot, tail) = store.load("a").unwrap();
        let snapshot = snapshot.unwrap();
        if snapshot.version != first.version {
            break snapshot;
        }
        let logged: usize = tail.iter().map(|e| e.payload.len()).sum();
        assert!(
            tail.len() < 256 || logged < size,
            "due at {} events",
            tail.len()
        );
        before = (tail.len(), logged);
    };
    // Nor late: it came with the batch of 10 that took the events past its size.
    let (events, logged) = before;
    assert!(logged < size && logged + 20 * logged / events >= size);
    assert_eq!(second.version, next as u64 + 8);
    assert!(
        second.version - first.version > 2 * SNAPSHOT_EVERY,
        "{} events between",
        second.version - first.version
    );
    assert!(store.load("a").unwrap().1.is_empty());

    // A restart reads the sizes back: it does not snapshot at once either.
    let mut fresh = Engine::new(Tallier::default(), store.clone());
    fresh.execute(counts(next, SNAPSHOT_EVERY as usize)).await;
    let (snapshot, tail) = store.load("a").unwrap();
    assert_eq!(snapshot.map(|s| s.version), Some(second.version));
    assert_eq!(tail.len(), SNAPSHOT_EVERY as usize);
}

/// Order `o{i}` paid for one mug: the warehouse reserves it.
fn paid(i: usize) -> Envelope {
    let approved = PaymentEvent::PaymentApproved {
        amount_cents: 100,
        payment_method: "card".into(),
        authorization_id: format!("auth-{i}"),
        approved_at: Utc::now(),
        lines: lines(&[("SKU-MUG", 1)]),
        shipping_address: "x".into(),
    };
    encode(&approved, &format!("o{i}"), None).unwrap()
}

#[tokio::test]
async fn a_long_history_loads_from_its_snapshot_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &Default::default()).unwrap();
    let mut engine = Engine::new(InventoryService, store.clone());
    for chunk in (0..600).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Envelope> = chunk.iter().map(|i| paid(*i)).collect();
        let applied = engine.deliver(&batch.iter().collect::<Vec<_>>()).await;
        assert!(applied
            .unwrap()
            .verdicts
            .iter()
            .all(|v| *v == Verdict::Done));
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
