//! Leases against a real nats-server: one owner at a time, a standby that takes over only once
//! the owner's lease lapsed, and a store that its lapsed owner can no longer write through; the
//! broker's fence between terms, and a recovery's marker behind a dead process's last publish.

use std::time::Duration;

use bus::lease::{self, Attempt, Holder, Lease};
use bus::term::Term;
use bus::BusError;
use bus::Domain::Orders;
use bus::{OutboxRelay, Publisher, RelayConfig};
use commerce_tests::{
    commit_orders, init_logs, temp_store, wait_until, Deadline, TestBroker, TestCluster,
};
use storage::{Fenced, StorageError};

const TTL: Duration = Duration::from_millis(1_200);
const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "payment.0";

async fn leases(broker: &TestBroker) -> async_nats::jetstream::kv::Store {
    // Provisioning never lowers a time to live: the broker's start made the default one.
    broker
        .js
        .delete_key_value(lease::LEASES_BUCKET)
        .await
        .unwrap();
    lease::provision(&broker.js, TTL, 1).await.unwrap();
    let (kv, ttl) = lease::bucket(&broker.js).await.unwrap();
    assert_eq!(ttl, TTL, "the bucket's max_age is the lease's time to live");
    // Born without direct gets (their answers go to any reply subject), and otherwise a bucket
    // as async-nats makes one, so that its kv API reads it as one.
    let name = lease::LEASES_BUCKET;
    let ours = stream_config(broker, &format!("KV_{name}")).await;
    assert!(!ours.allow_direct, "{ours:?}");
    assert_eq!(ours.subjects, [format!("$KV.{name}.>")]);
    broker
        .js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "LIKE_LEASES".into(),
            history: 1,
            max_age: TTL,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let theirs = stream_config(broker, "KV_LIKE_LEASES").await;
    let same = |c: async_nats::jetstream::stream::Config| async_nats::jetstream::stream::Config {
        name: String::new(),
        description: None,
        subjects: Vec::new(),
        allow_direct: false,
        ..c
    };
    assert_eq!(
        serde_json::to_value(same(ours)).unwrap(),
        serde_json::to_value(same(theirs)).unwrap()
    );
    kv
}

/// A stream's configuration as the broker holds it.
async fn stream_config(broker: &TestBroker, name: &str) -> async_nats::jetstream::stream::Config {
    let mut stream = broker.js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

async fn take(kv: &async_nats::jetstream::kv::Store, instance: &str) -> Attempt {
    Lease::try_acquire(kv, TTL, KEY, &Holder::this_process(instance))
        .await
        .unwrap()
}

fn acquired(attempt: Attempt) -> Lease {
    match attempt {
        Attempt::Acquired(lease) => *lease,
        Attempt::Held { holder, .. } => panic!("held by {holder:?}"),
    }
}

/// Begin `lease`'s term on the orders stream's partition 0, as `instance`.
async fn begin(broker: &TestBroker, lease: &Lease, instance: &str) -> Result<Term, BusError> {
    let holder = Holder::this_process(instance);
    Term::begin(&broker.js, Orders, 0, &lease.claim(), &holder).await
}

/// The headers of the message at the sequence `outcome` reports, checked to be `message`.
async fn stored_as_reported(
    stream: &async_nats::jetstream::stream::Stream,
    message: &storage::OutboxMessage,
    outcome: &Result<bus::publisher::Stored, BusError>,
) -> async_nats::HeaderMap {
    let stored = outcome.as_ref().expect("stored");
    let found = stream.get_raw_message(stored.sequence).await.unwrap();
    let id = found.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(id, Some(message.event_id.to_string()), "{stored:?}");
    found.headers
}

/// Try as `instance` until the lease is taken.
async fn take_when_free(kv: &async_nats::jetstream::kv::Store, instance: &str) -> Lease {
    let deadline = Deadline::after(WAIT, "the lease lapses");
    loop {
        if let Attempt::Acquired(lease) = take(kv, instance).await {
            return *lease;
        }
        deadline.check();
        tokio::time::sleep(TTL / 8).await;
    }
}

#[tokio::test]
async fn a_second_owner_is_refused_while_the_lease_is_held_and_the_first_is_fenced_before_it_takes_over(
) {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let mut a = acquired(take(&kv, "a").await);
    assert_eq!(a.fence().check(), Ok(a.token()));

    // Refused, and told who holds it.
    match take(&kv, "b").await {
        Attempt::Held { holder, .. } => {
            assert_eq!(holder.map(|h| h.instance).as_deref(), Some("a"))
        }
        Attempt::Acquired(_) => panic!("a second owner of a held lease"),
    }
    // Renewed, it stays refused past its time to live.
    let until = tokio::time::Instant::now() + TTL * 2;
    while tokio::time::Instant::now() < until {
        a.renew().await.unwrap();
        assert!(matches!(take(&kv, "b").await, Attempt::Held { .. }));
        tokio::time::sleep(TTL / 4).await;
    }

    // a stops renewing (a paused process): b takes over once the broker let the lease lapse,
    // and by then a's fence has closed.
    let b = take_when_free(&kv, "b").await;
    assert!(
        matches!(a.fence().check(), Err(Fenced::Lapsed { .. })),
        "the old owner stops believing before anyone else can take over"
    );
    assert!(b.token() > a.token(), "a later owner has a larger token");
    assert_eq!(b.fence().check(), Ok(b.token()));

    // a wakes up: its renewal is refused, and its fence stays closed.
    assert!(matches!(a.renew().await, Err(BusError::LeaseLost { .. })));
    assert!(matches!(a.fence().check(), Err(Fenced::Lost { .. })));
}

#[tokio::test]
async fn a_lease_given_back_is_taken_at_once() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let a = acquired(take(&kv, "a").await);
    let fence = a.fence();
    a.release().await.unwrap();
    assert!(
        fence.check().is_err(),
        "nothing is written after giving it back"
    );
    acquired(take(&kv, "b").await);
}

#[tokio::test]
async fn a_kept_lease_outlives_its_time_to_live_and_a_lost_one_stops_its_instance() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let a = acquired(take(&kv, "a").await);
    let fence = a.fence();
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = a.keep(stop.clone());
    let until = tokio::time::Instant::now() + TTL * 3;
    while tokio::time::Instant::now() < until {
        assert!(matches!(take(&kv, "b").await, Attempt::Held { .. }));
        assert!(fence.check().is_ok(), "renewed in the background");
        tokio::time::sleep(TTL / 4).await;
    }
    // Someone removes it by hand and b takes it: the keeper finds it lost and stops a.
    kv.purge(KEY).await.unwrap();
    acquired(take(&kv, "b").await);
    tokio::time::timeout(WAIT, stop.cancelled())
        .await
        .expect("the instance is told to stop");
    assert!(matches!(fence.check(), Err(Fenced::Lost { .. })));
    assert!(matches!(
        keeper.release().await,
        Err(BusError::LeaseLost { .. })
    ));
}

/// The fence at work: the store of an owner whose lease lapsed commits, flushes and publishes
/// nothing, while its successor's does.
#[tokio::test]
async fn a_store_whose_lease_lapsed_commits_flushes_and_publishes_nothing() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let a = acquired(take(&kv, "a").await);
    let (_dir, store) = temp_store();
    store.fence_with(a.fence());
    // Held: committed, flushed, published.
    commit_orders(&store, 3);
    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(broker.js.clone()),
        RelayConfig::default(),
    );
    assert_eq!(relay.relay_once().await.unwrap(), 3);

    // Committed and flushed while held, then b takes over before the relay runs.
    commit_orders(&store, 2);
    take_when_free(&kv, "b").await;
    let fenced = |e: &StorageError| matches!(e, StorageError::Fenced(Fenced::Lapsed { .. }));
    let refused = relay.relay_once().await.unwrap_err();
    assert!(
        matches!(&refused, BusError::Storage(e) if fenced(e)),
        "{refused}"
    );
    assert_eq!(
        broker.stream_len("ORDERS").await,
        3,
        "nothing more published"
    );
    let commit = storage::Commit::new();
    assert!(store.commit(&commit).is_err_and(|e| fenced(&e)));
    assert!(store.flush().await.is_err_and(|e| fenced(&e)));
    assert_eq!(
        store.outbox_depth(),
        2,
        "kept, never lost: a rebuild decides"
    );
}

/// The broker's own fence: once a successor began its term, a publish of the earlier owner's
/// term (sent late, after a pause between its check and its send) is refused by the broker.
#[tokio::test]
async fn the_broker_refuses_a_publish_from_an_earlier_term() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let a = acquired(take(&kv, "a").await);
    let a_term = begin(&broker, &a, "a").await.unwrap();
    let (_dir, store) = temp_store();
    commit_orders(&store, 3);
    let rows = store.pending(10).unwrap();
    let from_a = Publisher::new(broker.js.clone()).within_term(a_term.clone());
    let sent = from_a
        .publish_all(rows.iter().take(1).map(|r| &r.message))
        .await;
    assert!(sent[0].is_ok(), "published within its term: {:?}", sent[0]);

    let b = take_when_free(&kv, "b").await;
    let b_term = begin(&broker, &b, "b").await.unwrap();
    assert!(b_term.marker() > a_term.marker());
    let late = from_a
        .publish_all(rows.iter().skip(1).map(|r| &r.message))
        .await;
    assert!(
        late.iter().all(Result::is_err),
        "a late publish of an earlier term is refused, and what follows it is not sent: {late:?}"
    );
    let from_b = Publisher::new(broker.js.clone()).within_term(b_term);
    let sent = from_b
        .publish_all(rows.iter().skip(1).map(|r| &r.message))
        .await;
    assert!(
        sent.iter().all(Result::is_ok),
        "the successor publishes: {sent:?}"
    );
    // a's first event, both term markers, b's two events.
    assert_eq!(broker.stream_len("ORDERS").await, 5);
}

/// Within a term the relay's messages go as one atomic batch: stored in order at the sequences
/// the publisher reports (the relay records them to notice a broker that lost its tail). A
/// batch holding a message the broker already has is refused as a whole, and the publisher
/// then tells, one at a time, which are duplicates.
#[tokio::test]
async fn a_terms_messages_land_as_one_batch_in_order_and_a_duplicate_among_them_is_told_apart() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let a = acquired(take(&kv, "a").await);
    let term = begin(&broker, &a, "a").await.unwrap();
    let (_dir, store) = temp_store();
    commit_orders(&store, 8);
    let rows = store.pending(10).unwrap();
    let publisher = Publisher::new(broker.js.clone()).within_term(term);
    let stream = broker.js.get_stream("ORDERS").await.unwrap();

    let sent = publisher
        .publish_all(rows.iter().take(5).map(|r| &r.message))
        .await;
    let mut batches = std::collections::HashSet::new();
    for (row, outcome) in rows.iter().zip(&sent) {
        assert!(!outcome.as_ref().expect("stored").duplicate);
        let headers = stored_as_reported(&stream, &row.message, outcome).await;
        batches.insert(headers.get("Nats-Batch-Id").map(|v| v.to_string()));
    }
    assert_eq!(batches.len(), 1, "one batch: {batches:?}");
    assert!(batches.iter().all(Option::is_some), "sent as a batch");

    // Messages 4 and 5 are stored already; 6 to 8 are not.
    let again = publisher
        .publish_all(rows.iter().skip(3).map(|r| &r.message))
        .await;
    let duplicates: Vec<bool> = again
        .iter()
        .map(|outcome| outcome.as_ref().expect("stored").duplicate)
        .collect();
    assert_eq!(duplicates, [true, true, false, false, false]);
    for (row, outcome) in rows.iter().skip(3).zip(&again) {
        stored_as_reported(&stream, &row.message, outcome).await;
    }
    // The marker and eight events, each once.
    assert_eq!(broker.stream_len("ORDERS").await, 9);
}

/// An earlier owner's marker that lands late (it paused after its fence check) makes the broker
/// refuse the rightful owner's next publish; the owner then marks its term again and publishes.
/// A successor's marker is never marked over: the lease is lost. An owner whose fence lapsed
/// cannot mark at all.
#[tokio::test]
async fn an_owner_marks_its_term_again_after_an_earlier_marker_but_not_over_a_successors() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let a = acquired(take(&kv, "a").await);
    let b = take_when_free(&kv, "b").await;
    // a's lease lapsed: marking needs an open fence.
    assert!(matches!(
        begin(&broker, &a, "a").await,
        Err(BusError::Storage(StorageError::Fenced(_)))
    ));
    let term = begin(&broker, &b, "b").await.unwrap();
    let first = term.marker();
    // A marker of someone else's lands after b's (what a paused earlier owner would send).
    let subject = bus::term::term_subject(Orders, 0);
    broker
        .js
        .publish(subject.clone(), r#"{"term":"an earlier owner's"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (_dir, store) = temp_store();
    commit_orders(&store, 3);
    let rows = store.pending(10).unwrap();
    let publisher = Publisher::new(broker.js.clone()).within_term(term.clone());
    let refused = publisher.publish_all(rows.iter().map(|r| &r.message)).await;
    assert!(refused.iter().all(Result::is_err), "{refused:?}");
    assert!(term.marker() > first, "marked again: {}", term.marker());
    let sent = publisher.publish_all(rows.iter().map(|r| &r.message)).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    // b's two markers, the late one, three events.
    assert_eq!(broker.stream_len("ORDERS").await, 6);

    // A successor's marker (a larger token) is never marked over, whatever b's clock says:
    // b's lease is lost.
    let successor = serde_json::json!({"term": "a successor's", "token": b.token() + 1});
    broker
        .js
        .publish(subject, successor.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    commit_orders(&store, 1);
    let rows = store.pending(10).unwrap();
    let refused = publisher.publish_all(rows.iter().map(|r| &r.message)).await;
    assert!(refused.iter().all(Result::is_err), "{refused:?}");
    assert!(matches!(b.fence().check(), Err(Fenced::Lost { .. })));
    assert_eq!(broker.stream_len("ORDERS").await, 7);
}

/// A renewal that timed out on our side but was written: the next renewal finds our own value
/// at a revision it did not hear of, and renews from it instead of giving the lease up; giving
/// the lease back deletes it from that revision too.
#[tokio::test]
async fn a_renewal_written_after_its_owner_gave_up_on_it_is_adopted() {
    init_logs();
    let broker = TestBroker::start().await;
    let kv = leases(&broker).await;
    let holder = Holder::this_process("a");
    let Attempt::Acquired(lease) = Lease::try_acquire(&kv, TTL, KEY, &holder).await.unwrap() else {
        panic!("free lease not taken");
    };
    let mut lease = *lease;
    // The late renewal: our value, written at the revision we hold.
    let value = serde_json::to_vec(&holder).unwrap();
    kv.update(KEY, value.into(), lease.token()).await.unwrap();
    lease.renew().await.expect("renewed from the late renewal");
    assert!(lease.fence().check().is_ok());

    // A late renewal before giving it back: released from its revision all the same.
    let revision = kv.entry(KEY).await.unwrap().unwrap().revision;
    kv.update(KEY, serde_json::to_vec(&holder).unwrap().into(), revision)
        .await
        .unwrap();
    lease
        .release()
        .await
        .expect("released from the late renewal");
    let Attempt::Acquired(lease) = Lease::try_acquire(&kv, TTL, KEY, &holder).await.unwrap() else {
        panic!("a released lease is free");
    };
    let mut lease = *lease;

    // Someone else's write is not ours: lost.
    let other = serde_json::to_vec(&Holder::this_process("b")).unwrap();
    let revision = kv.entry(KEY).await.unwrap().unwrap().revision;
    kv.update(KEY, other.into(), revision).await.unwrap();
    assert!(matches!(
        lease.renew().await,
        Err(BusError::LeaseLost { .. })
    ));
}

/// Provisioning raises the leases' time to live but never lowers it under running owners.
#[tokio::test]
async fn the_lease_time_to_live_is_raised_but_never_lowered() {
    init_logs();
    let broker = TestBroker::start().await;
    leases(&broker).await;
    lease::provision(&broker.js, TTL / 2, 1).await.unwrap();
    assert_eq!(lease::bucket(&broker.js).await.unwrap().1, TTL);
    lease::provision(&broker.js, TTL * 2, 1).await.unwrap();
    assert_eq!(lease::bucket(&broker.js).await.unwrap().1, TTL * 2);
}

/// A recovery's marker is stored behind a publish its dead predecessor sent first, even when the
/// stream could not store that publish yet (a cluster without its quorum): the broker stores in
/// the order its leader took them. So a recovery that reads up to its marker reads that publish
/// too, where reading the stream's state instead would have stopped before it.
#[tokio::test]
async fn a_recovery_marker_lands_behind_a_publish_the_stream_had_taken_but_not_stored() {
    init_logs();
    let mut broker = TestCluster::start().await;
    let nodes = broker.cluster.nodes();
    let at = orders_leader(&broker).await;
    // Everyone talks to the leader: a frozen follower would answer nobody.
    let at_leader = |name: &'static str| {
        let url = nodes[at].url();
        async move { async_nats::jetstream::new(bus::connect(&url, name, None).await.unwrap()) }
    };
    let (predecessor, successor) = (at_leader("predecessor").await, at_leader("successor").await);
    let mut orders = at_leader("reader")
        .await
        .get_stream("ORDERS")
        .await
        .unwrap();
    let group = raft_group(&nodes[at].monitor_url(), "ORDERS").await;
    let first = predecessor
        .publish("orders.order_placed.o1", "1".into())
        .await;
    first.unwrap().await.unwrap();

    // The followers freeze: the leader takes the predecessor's publish into its log, and cannot
    // store it without a quorum.
    freeze_followers(nodes, at).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "the-predecessors-last");
    let late = predecessor
        .publish_with_headers("orders.order_placed.o2", headers, "2".into())
        .await
        .unwrap();
    drop(late); // the predecessor dies waiting
    let logged = |entries: u64| {
        let (url, group) = (nodes[at].monitor_url(), group.clone());
        move || {
            let (url, group) = (url.clone(), group.clone());
            async move { uncommitted(&url, &group).await >= entries }
        }
    };
    wait_until("the leader logs the late publish", WAIT, logged(1)).await;
    // What a recovery that trusted the stream's state would read: the late publish is not there.
    let stale = bus::streams::leader_info(&mut orders).await.unwrap();
    assert_eq!(stale.state.last_sequence, 1, "not stored without a quorum");

    let marking =
        tokio::spawn(async move { bus::term::mark_recovery(&successor, Orders, 0).await });
    wait_until("the leader logs the marker", WAIT, logged(2)).await;
    for (i, node) in nodes.iter().enumerate() {
        if i != at {
            node.pause(false).unwrap();
        }
    }
    let marker = marking.await.unwrap().unwrap();
    let before = orders.get_raw_message(marker - 1).await.unwrap();
    let id = before.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(
        id.as_deref(),
        Some("the-predecessors-last"),
        "stored ahead of the marker"
    );
    broker.cluster.stop().await;
}

/// An owner marking its term while its stream has no quorum (the followers frozen), and then
/// no leader (the leader steps down), waits for them rather than giving up at the first
/// failure, which stopped its process; the term has one marker however many times it was
/// published.
#[tokio::test]
async fn an_owner_marks_its_term_through_a_stream_that_lost_its_quorum_and_its_leader() {
    init_logs();
    let mut broker = TestCluster::start().await;
    let nodes = broker.cluster.nodes();
    let at = orders_leader(&broker).await;
    // At the leader (a frozen follower answers nobody), acks awaited for a second.
    let client = bus::connect(&nodes[at].url(), "owner", None).await.unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client);
    let monitor = nodes[at].monitor_url();
    let group = raft_group(&monitor, "ORDERS").await;
    freeze_followers(nodes, at).await;
    let fence = storage::Fence::new();
    fence.open_until(1, std::time::Instant::now() + Duration::from_secs(120));
    let claim = lease::Claim {
        key: KEY.into(),
        token: 1,
        fence,
    };
    let marking = tokio::spawn(async move {
        let holder = Holder::this_process("owner");
        let term = Term::begin(&js, Orders, 0, &claim, &holder).await?;
        Ok::<_, BusError>(term.marker())
    });
    let logged = || {
        let (url, group) = (monitor.clone(), group.clone());
        async move { uncommitted(&url, &group).await >= 1 }
    };
    wait_until("the leader logs the marker", WAIT, logged).await;
    // Its ack times out, and the leader without a quorum steps down: marking goes on, looking
    // at the last marker again (each look an API request at the node it is connected to).
    let stepped_down = || {
        let (url, group) = (monitor.clone(), group.clone());
        async move { raft_state(&url, &group).await != "LEADER" }
    };
    while_marking("the leader steps down", &marking, stepped_down).await;
    let asked = api_requests(&monitor).await;
    let more = || {
        let url = monitor.clone();
        async move { api_requests(&url).await >= asked + 3 }
    };
    while_marking("marking goes on without a leader", &marking, more).await;
    for (i, node) in nodes.iter().enumerate() {
        if i != at {
            node.pause(false).unwrap();
        }
    }
    let marker = marking.await.unwrap().unwrap();
    let at_leader = broker.js.get_stream("ORDERS").await.unwrap();
    let subject = bus::term::term_subject(Orders, 0);
    let markers = bus::streams::leader_count(&at_leader, &subject)
        .await
        .unwrap();
    assert_eq!(markers, 1, "one marker of the term");
    let stored = at_leader.get_raw_message(marker).await.unwrap();
    assert_eq!(stored.subject.as_str(), "orders.term_0");
    broker.cluster.stop().await;
}

/// Which of `broker`'s nodes leads the orders stream.
async fn orders_leader(broker: &TestCluster) -> usize {
    let mut orders = broker.js.get_stream("ORDERS").await.unwrap();
    let info = bus::streams::leader_info(&mut orders).await.unwrap();
    let leader = info.cluster.and_then(|c| c.leader).unwrap();
    let nodes = broker.cluster.nodes();
    nodes.iter().position(|n| n.name() == leader).unwrap()
}

/// Freeze every node but the one at `at`, and wait until each has stopped.
async fn freeze_followers(nodes: &[bus::server::NatsServer], at: usize) {
    for (i, node) in nodes.iter().enumerate() {
        if i != at {
            node.pause(true).unwrap();
            let pid = node.pid().unwrap();
            wait_until("the follower stopped", WAIT, || async move { stopped(pid) }).await;
        }
    }
}

/// Poll `condition` until it holds, failing at once should `marking` end before.
async fn while_marking<F, Fut>(
    what: &'static str,
    marking: &tokio::task::JoinHandle<Result<u64, BusError>>,
    mut condition: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Deadline::after(WAIT, what);
    loop {
        assert!(!marking.is_finished(), "marking ended before: {what}");
        if condition().await {
            return;
        }
        deadline.check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// JetStream API requests the node at `monitor` has answered.
async fn api_requests(monitor: &str) -> u64 {
    let jsz: serde_json::Value = reqwest::get(format!("{monitor}/jsz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jsz["api"]["total"].as_u64().unwrap_or(0)
}

/// The Raft group of `stream` (its account's name and its own), as the node at `monitor` names it.
async fn raft_group(monitor: &str, stream: &str) -> (String, String) {
    let jsz: serde_json::Value = reqwest::get(format!(
        "{monitor}/jsz?accounts=true&streams=true&raft=true"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let accounts = jsz["account_details"].as_array().into_iter().flatten();
    accounts
        .flat_map(|account| {
            let streams = account["stream_detail"].as_array().into_iter().flatten();
            streams.map(move |s| (account["name"].as_str(), s))
        })
        .find(|(_, s)| s["name"] == stream)
        .and_then(|(account, s)| Some((account?.to_string(), s["stream_raft_group"].as_str()?)))
        .map(|(account, group)| (account, group.to_string()))
        .unwrap_or_else(|| panic!("{stream}'s raft group in {jsz}"))
}

/// Entries the node at `monitor` logged in `group` of `account` and has not committed.
async fn uncommitted(monitor: &str, group: &(String, String)) -> u64 {
    let node = raftz(monitor, group).await;
    let number = |field: &str| node[field].as_u64().unwrap_or(0);
    number("pindex").saturating_sub(number("committed"))
}

/// The role (`LEADER`, `FOLLOWER`, `CANDIDATE`) the node at `monitor` has in `group`.
async fn raft_state(monitor: &str, group: &(String, String)) -> String {
    let node = raftz(monitor, group).await;
    node["state"].as_str().unwrap_or_default().to_string()
}

/// What the node at `monitor` says of itself in Raft group `group` of `account`.
async fn raftz(monitor: &str, (account, group): &(String, String)) -> serde_json::Value {
    let raftz: serde_json::Value =
        reqwest::get(format!("{monitor}/raftz?acc={account}&group={group}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let node = raftz[account][group].clone();
    assert!(node.is_object(), "{group} in {raftz}");
    node
}

/// Whether every thread of process `pid` is stopped (SIGSTOP takes each at its next return
/// from the kernel).
fn stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command's closing parenthesis.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        matches!(state, Some('T' | 't'))
    })
}
