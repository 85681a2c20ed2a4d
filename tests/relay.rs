//! The outbox relay against a real nats-server, including the broker being killed mid-relay.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use bus::{Domain, Envelope, OutboxRelay, Publisher, RelayConfig};
use commerce_tests::{
    commit_orders, init_logs, temp_store, wait_until, Deadline, TestBroker, TestCluster,
};
use futures::StreamExt;
use serde_json::json;
use storage::Commit;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// Every `Nats-Msg-Id` in the stream, in stream order.
async fn message_ids(js: &jetstream::Context, stream: &str) -> Vec<Uuid> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.messages;
    let mut ids = Vec::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .expect("every message carries Nats-Msg-Id")
            .to_string();
        ids.push(Uuid::parse_str(&id).unwrap());
    }
    ids
}

/// A plain stream `name` over `subjects`.
async fn create_stream(js: &jetstream::Context, name: &str, subjects: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn relay_publishes_only_flushed_rows_and_marks_them_sent() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let ids = commit_orders(&store, 300);
    // A committed but unflushed row must not leave the service.
    let unflushed = Envelope::new(Domain::Orders, "OrderCreated", "late", json!({})).unwrap();
    store
        .commit(&Commit::new().publish(unflushed.to_outbox_message().unwrap()))
        .unwrap();

    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(broker.js.clone()),
        RelayConfig::default(),
    );
    while relay.relay_once().await.unwrap() > 0 {}

    assert_eq!(broker.stream_len("ORDERS").await, 300);
    assert_eq!(
        store.outbox_depth(),
        1,
        "only the unflushed row is still pending"
    );
    let published: HashSet<_> = message_ids(&broker.js, "ORDERS")
        .await
        .into_iter()
        .collect();
    assert_eq!(published, ids);
    assert!(!published.contains(&unflushed.id));

    let _ = store.flush().await.unwrap();
    while relay.relay_once().await.unwrap() > 0 {}
    assert_eq!(broker.stream_len("ORDERS").await, 301);
    assert_eq!(store.outbox_depth(), 0);
}

#[tokio::test]
async fn broker_killed_mid_relay_every_row_lands_exactly_once() {
    init_logs();
    let mut broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let ids = commit_orders(&store, 3000);

    let config = RelayConfig {
        batch: 50,
        backoff_max: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(broker.js.clone()),
        config.clone(),
    );
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));

    wait_until("the relay has sent some rows", WAIT, || async {
        stats.sent.load(Ordering::Relaxed) > 0
    })
    .await;
    broker.server.kill();
    wait_until("the relay notices the broker is gone", WAIT, || async {
        stats.failures.load(Ordering::Relaxed) > 0
    })
    .await;
    stop.cancel();
    running.await.unwrap();

    // Nothing may be marked sent that the broker did not store.
    let marked_sent = store.sent_event_ids().unwrap();
    assert!(store.outbox_depth() > 0, "the kill happened mid-relay");
    broker.server.restart().await.unwrap();
    let stored: HashSet<_> = message_ids(&broker.js, "ORDERS")
        .await
        .into_iter()
        .collect();
    let lost: Vec<_> = marked_sent
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} rows marked sent are not in the stream",
        lost.len()
    );

    // A new relay finishes the job after the restart (the client reconnects by itself).
    let relay = OutboxRelay::new(store.clone(), Publisher::new(broker.js.clone()), config);
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    wait_until("every row is marked sent", WAIT, || async {
        store.outbox_depth() == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap();

    let in_stream = message_ids(&broker.js, "ORDERS").await;
    let unique: HashSet<_> = in_stream.iter().copied().collect();
    assert_eq!(
        in_stream.len(),
        ids.len(),
        "exactly once: no duplicates in the stream"
    );
    assert_eq!(unique, ids, "every row is in the stream");
    assert_eq!(store.sent_event_ids().unwrap().len(), ids.len());

    // Publishing every row again is absorbed by the broker's dedup window.
    let rows: Vec<_> = in_stream
        .iter()
        .take(100)
        .map(|id| storage::OutboxMessage {
            event_id: *id,
            subject: "orders.order_created.again".into(),
            payload: "{}".into(),
            headers: vec![],
        })
        .collect();
    let outcomes = Publisher::new(broker.js.clone()).publish_all(&rows).await;
    assert!(outcomes
        .iter()
        .all(|o| o.as_ref().is_ok_and(|s| s.duplicate)));
    assert_eq!(broker.stream_len("ORDERS").await, ids.len() as u64);
}

/// Relay every row of `store` to the broker, then stop.
async fn relay_all(relay: &OutboxRelay) {
    while relay.relay_once().await.unwrap() > 0 {}
}

/// Every row appears exactly once in ORDERS, by `Nats-Msg-Id`.
async fn exactly_once(js: &jetstream::Context, ids: &HashSet<Uuid>) {
    let in_stream = message_ids(js, "ORDERS").await;
    let unique: HashSet<_> = in_stream.iter().copied().collect();
    assert_eq!(in_stream.len(), unique.len(), "no duplicates in the stream");
    assert_eq!(&unique, ids, "every row acknowledged is in the stream");
}

/// The broker's whole store is lost after it acknowledged everything: the relay finds the stream
/// shorter than what it was told and publishes every kept row again.
#[tokio::test]
async fn a_lost_broker_store_is_healed_from_the_kept_rows() {
    init_logs();
    let mut broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let ids = commit_orders(&store, 400);
    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(broker.js.clone()),
        RelayConfig::default(),
    );
    relay_all(&relay).await;
    exactly_once(&broker.js, &ids).await;

    broker.server.kill();
    std::fs::remove_dir_all(broker.server.store_dir().join("jetstream")).unwrap();
    broker.server.restart().await.unwrap();
    wait_until("the client is back", WAIT, || async {
        bus::provision(&broker.js, &bus::StreamSettings::default())
            .await
            .is_ok()
    })
    .await;
    assert_eq!(broker.stream_len("ORDERS").await, 0, "the store is gone");

    // The reconnect makes the next pass check the stream first.
    relay_all(&relay).await;
    exactly_once(&broker.js, &ids).await;
    assert_eq!(relay.stats().healed.load(Ordering::Relaxed), 400);
    // And a new relay over the same outbox finds nothing to heal.
    let again = OutboxRelay::new(
        store.clone(),
        Publisher::new(broker.js.clone()),
        RelayConfig::default(),
    );
    relay_all(&again).await;
    assert_eq!(again.stats().healed.load(Ordering::Relaxed), 0);
    exactly_once(&broker.js, &ids).await;
}

/// The stream keeps only its first messages (the tail of its last block lost), and new rows are
/// published before anyone looked: their PubAcks go back, which gives the loss away; the lost
/// tail is published again and nothing is doubled.
#[tokio::test]
async fn a_lost_stream_tail_is_healed_even_when_new_rows_get_there_first() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut ids = commit_orders(&store, 100);
    let config = RelayConfig {
        verify_interval: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    let relay = OutboxRelay::new(store.clone(), Publisher::new(broker.js.clone()), config);
    relay_all(&relay).await;

    // What survives of the stream: its first 60 messages, at their sequences.
    keep_only_the_first(&broker, 60).await;

    ids.extend(commit_orders(&store, 10));
    relay_all(&relay).await;
    exactly_once(&broker.js, &ids).await;
    // The 40 lost, and the 10 of the pass that found the loss (dropped as duplicates).
    assert_eq!(relay.stats().healed.load(Ordering::Relaxed), 50);
}

/// Of two rows published together, the first one's ack was lost and the second was marked sent:
/// the first is acked again as a duplicate, below the known end. That is no sign of loss, and
/// nothing is published again.
#[tokio::test]
async fn a_duplicate_ack_below_the_known_end_is_not_a_loss() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut ids = commit_orders(&store, 5);
    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(broker.js.clone()),
        RelayConfig::default(),
    );
    relay_all(&relay).await;
    ids.extend(commit_orders(&store, 2));
    let rows = store.pending(10).unwrap();
    let messages: Vec<_> = rows.iter().map(|r| r.message.clone()).collect();
    let acks = Publisher::new(broker.js.clone())
        .publish_all(&messages)
        .await;
    let second = acks[1].as_ref().unwrap().sequence;
    store
        .mark_sent(
            &[(rows[1].clone(), second)],
            Some(&storage::StreamPosition {
                stream: "ORDERS".into(),
                last_seq: second,
                heal: None,
            }),
        )
        .unwrap();
    ids.extend(commit_orders(&store, 3));
    relay_all(&relay).await;
    assert_eq!(relay.stats().duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(relay.stats().healed.load(Ordering::Relaxed), 0);
    exactly_once(&broker.js, &ids).await;
    let position = store.stream_position().unwrap().unwrap();
    assert_eq!((position.last_seq, position.heal), (10, None));
}

/// Rows 7..9 were sent while row 6 failed, then the broker lost them: the pass that sends row 6
/// finds the loss (a reused sequence), and the heal publishes them again too, though they come
/// after row 6 in the outbox.
#[tokio::test]
async fn rows_sent_out_of_order_and_then_lost_are_healed() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut ids = commit_orders(&store, 5);
    let config = RelayConfig {
        verify_interval: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    let relay = OutboxRelay::new(store.clone(), Publisher::new(broker.js.clone()), config);
    relay_all(&relay).await;
    ids.extend(commit_orders(&store, 4));
    let rows = store.pending(10).unwrap();
    let acks = Publisher::new(broker.js.clone())
        .publish_all(rows[1..].iter().map(|r| &r.message))
        .await;
    let sent: Vec<_> = rows[1..]
        .iter()
        .cloned()
        .zip(acks.iter().map(|a| a.as_ref().unwrap().sequence))
        .collect();
    let position = storage::StreamPosition {
        stream: "ORDERS".into(),
        last_seq: 8,
        heal: None,
    };
    store.mark_sent(&sent, Some(&position)).unwrap();

    // The broker keeps only its first 5 messages, at their sequences.
    keep_only_the_first(&broker, 5).await;

    relay_all(&relay).await;
    exactly_once(&broker.js, &ids).await;
}

/// The broker lost the tail of `ORDERS`: only its first `n` messages are left, at their
/// sequences.
async fn keep_only_the_first(broker: &TestBroker, n: u64) {
    let stream = broker.js.get_stream("ORDERS").await.unwrap();
    let mut survivors = Vec::new();
    for seq in 1..=n {
        survivors.push(stream.get_raw_message(seq).await.unwrap());
    }
    broker.js.delete_stream("ORDERS").await.unwrap();
    bus::provision(&broker.js, &bus::StreamSettings::default())
        .await
        .unwrap();
    for message in survivors {
        broker
            .js
            .publish_with_headers(message.subject, message.headers, message.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(broker.stream_len("ORDERS").await, n);
}

/// The node a relay is connected to freezes (SIGSTOP: its socket stays open, nothing answers):
/// the client gives up on it after three unanswered pings (`bus::PING_INTERVAL`) and the rows
/// reach the stream through another node, each once.
#[tokio::test]
async fn a_relay_whose_node_froze_publishes_through_another() {
    init_logs();
    let mut broker = TestCluster::start().await;
    let client = bus::connect(&broker.cluster.url(), "relay", None)
        .await
        .unwrap();
    // Connected (the first connection is made in the background), so it names its server.
    client.flush().await.unwrap();
    let nodes = broker.cluster.nodes();
    let at = nodes
        .iter()
        .position(|n| n.name() == client.server_info().server_name)
        .unwrap();
    let other = bus::connect(&nodes[(at + 1) % nodes.len()].url(), "reader", None)
        .await
        .unwrap();
    let other = jetstream::new(other);
    let (_db, store) = temp_store();
    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(jetstream::new(client.clone())),
        RelayConfig::default(),
    );
    let mut ids = commit_orders(&store, 10);
    relay_all(&relay).await;

    nodes[at].pause(true).unwrap();
    ids.extend(commit_orders(&store, 10));
    // Three pings of 10 s; async-nats' default (60 s) would take three minutes.
    let deadline = Deadline::after(Duration::from_secs(50), "the relay publishes again");
    while store.outbox_depth() > 0 {
        // Errors while the client still waits on the frozen node: the rows stay pending.
        let _ = relay.relay_once().await;
        deadline.check();
    }
    assert_ne!(
        client.server_info().server_name,
        nodes[at].name(),
        "moved off the frozen node"
    );
    exactly_once(&other, &ids).await;
    nodes[at].pause(false).unwrap();
    broker.cluster.stop().await;
}

/// A stream leader elected while the relay waits for PubAcks may never answer what was sent to
/// the old one (a frozen node thawing, say): the relay hears the election and publishes again at
/// once, rather than waiting out its PubAck timeout. Here the first row is stored and answered,
/// and the second lands where a subscriber swallows it (the old leader); the announcement ends
/// the wait, the answered row stays sent, and the other goes again, to a stream that stores it.
/// Without following elections the first pass waits out its 60 s timeout and fails on that
/// instead; without keeping the answers that came back, both rows go again.
#[tokio::test]
async fn a_stream_leader_elected_while_acks_are_awaited_gets_the_unanswered_rows_again() {
    init_logs();
    let broker = TestBroker::start().await;
    let client = broker.client.clone();
    create_stream(&broker.js, "ANSWERED", "answered.>").await;
    let mut swallower = client.subscribe("held.>").await.unwrap();
    let (_dir, store) = temp_store();
    let row = |subject: &str| storage::OutboxMessage {
        event_id: Uuid::now_v7(),
        subject: subject.into(),
        payload: "{}".into(),
        headers: Vec::new(),
    };
    let (answered, held) = (
        row("answered.order_created.o1"),
        row("held.order_created.o2"),
    );
    store
        .commit(
            &Commit::new()
                .publish(answered.clone())
                .publish(held.clone()),
        )
        .unwrap();
    let _ = store.flush().await.unwrap();
    let mut js = broker.js.clone();
    js.set_timeout(WAIT);
    let relay = OutboxRelay::new(store.clone(), Publisher::new(js), RelayConfig::default())
        .following_elections("HELD")
        .await;
    client.flush().await.unwrap();

    let pass = tokio::spawn(async move {
        let passed = relay.relay_once().await;
        (relay, passed)
    });
    let swallowed = tokio::time::timeout(WAIT, swallower.next())
        .await
        .expect("the row is published");
    assert_eq!(swallowed.unwrap().subject.as_str(), held.subject);
    swallower.unsubscribe().await.unwrap();
    create_stream(&broker.js, "HELD", "held.>").await;
    let announcement = bus::elections::stream_subject("HELD");
    client.publish(announcement, "{}".into()).await.unwrap();
    client.flush().await.unwrap();

    let (relay, first) = tokio::time::timeout(WAIT + WAIT, pass)
        .await
        .expect("the pass ends")
        .unwrap();
    assert!(
        matches!(&first, Err(bus::BusError::LeaderElected { stream }) if stream == "HELD"),
        "the wait ends with the election: {first:?}"
    );
    assert_eq!(relay.stats().elections.load(Ordering::Relaxed), 1);
    assert_eq!(
        (
            store.outbox_depth(),
            relay.stats().sent.load(Ordering::Relaxed)
        ),
        (1, 1),
        "the answered row is marked sent; only the swallowed one is pending"
    );
    let position = store
        .stream_position()
        .unwrap()
        .expect("a position after an ack");
    assert_eq!(
        (position.stream.as_str(), position.last_seq),
        ("ANSWERED", 1)
    );
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(message_ids(&broker.js, "HELD").await, vec![held.event_id]);
    assert_eq!(
        message_ids(&broker.js, "ANSWERED").await,
        vec![answered.event_id]
    );
    assert_eq!(
        relay.stats().duplicates.load(Ordering::Relaxed),
        0,
        "the answered row was not published again"
    );
    assert_eq!(store.outbox_depth(), 0);
}
