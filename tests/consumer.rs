//! Durable consumers against a real nats-server: idempotent apply, DLQ, redelivery, restarts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus::{ConsumerSpec, Delivery, Domain, DurableConsumer, Envelope, Publisher, Verdict};
use commerce_tests::{init_logs, temp_store, wait_until, Deadline, TestBroker, TestCluster};
use serde_json::json;
use storage::{Commit, CommitOutcome, NewEvent, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// What a service does with an event here: append one "Seen" event to the order, exactly once.
fn apply(store: &Store, delivery: &Delivery) -> (Verdict, Option<CommitOutcome>) {
    let order = &delivery.envelope.subject;
    let version = match store.version(order) {
        Ok(v) => v,
        Err(e) => return (Verdict::Retry(e.to_string()), None),
    };
    let seen = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Seen".into(),
        payload: delivery.envelope.id.to_string(),
    };
    match store.commit(&Commit::caused_by(delivery.envelope.id).append(
        order.as_str(),
        version,
        vec![seen],
    )) {
        Ok(outcome) => (Verdict::Done, Some(outcome)),
        Err(e) => (Verdict::Retry(e.to_string()), None),
    }
}

/// One batch through the whole cycle: apply each, flush once, then settle. Returns the outcomes.
async fn consume_batch(
    consumer: &mut DurableConsumer,
    store: &Store,
) -> Vec<Option<CommitOutcome>> {
    let batch = consumer
        .next_batch(Duration::from_millis(200))
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    let mut verdicts = Vec::new();
    for delivery in batch {
        let (verdict, outcome) = apply(store, &delivery);
        outcomes.push(outcome);
        verdicts.push((verdict, delivery));
    }
    let flushed = store.flush().await.unwrap();
    consumer.settle(verdicts, flushed).await;
    outcomes
}

async fn publish_orders(broker: &TestBroker, n: usize) -> Vec<Envelope> {
    publish_orders_to(&broker.js, n).await
}

async fn publish_orders_to(js: &async_nats::jetstream::Context, n: usize) -> Vec<Envelope> {
    let events: Vec<_> = (0..n)
        .map(|i| {
            Envelope::new(
                Domain::Orders,
                "OrderCreated",
                Uuid::now_v7().to_string(),
                json!({ "n": i }),
            )
            .unwrap()
        })
        .collect();
    let rows: Vec<_> = events
        .iter()
        .map(|e| e.to_outbox_message().unwrap())
        .collect();
    for outcome in Publisher::new(js.clone()).publish_all(&rows).await {
        outcome.unwrap();
    }
    events
}

fn spec() -> ConsumerSpec {
    let mut spec = ConsumerSpec::new("ORDERS", "payment");
    spec.ack_wait = Duration::from_secs(1);
    spec.max_deliver = 3;
    spec.backoff = vec![Duration::from_millis(20)];
    spec
}

fn applied_once(store: &Store, events: &[Envelope]) {
    for e in events {
        assert_eq!(
            store.version(&e.subject).unwrap(),
            1,
            "order {} applied once",
            e.subject
        );
        assert!(store.is_processed(e.id).unwrap());
    }
}

#[tokio::test]
async fn an_event_on_a_subject_not_its_own_goes_to_dlq_and_changes_nothing() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let order = Uuid::now_v7().to_string();
    let other = Uuid::now_v7().to_string();
    // Well-formed events, each published where it does not belong: a payment event on the
    // orders stream, and an order event about one order on another order's subject.
    let payment = Envelope::new(Domain::Payments, "PaymentRefunded", &order, json!({})).unwrap();
    let about_other = Envelope::new(Domain::Orders, "OrderCancelled", &other, json!({})).unwrap();
    for (subject, event) in [
        (format!("orders.payment_refunded.{order}"), &payment),
        (format!("orders.order_cancelled.{order}"), &about_other),
    ] {
        let body = event.to_json().unwrap();
        broker
            .js
            .publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let valid = publish_orders(&broker, 2).await;

    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    let deadline = Deadline::after(WAIT, "the two valid events are applied");
    let mut applied = 0;
    while applied < 2 {
        applied += consume_batch(&mut consumer, &store).await.len();
        deadline.check();
    }
    applied_once(&store, &valid);
    assert_eq!(
        store.version(&order).unwrap(),
        0,
        "the misplaced events changed nothing"
    );
    assert_eq!(store.version(&other).unwrap(), 0);

    wait_until("both misplaced events are in DLQ", WAIT, || async {
        broker.stream_len("DLQ").await == 2
    })
    .await;
    let dlq = broker.js.get_stream("DLQ").await.unwrap();
    for sequence in [1, 2] {
        let dead = dlq.get_raw_message(sequence).await.unwrap();
        let reason = dead
            .headers
            .get(bus::consumer::DLQ_REASON)
            .unwrap()
            .to_string();
        assert!(reason.contains("misplaced event"), "{reason}");
        assert!(reason.contains("belongs on"), "{reason}");
    }
}

#[tokio::test]
async fn a_poison_message_goes_to_dlq_with_its_reason_and_the_rest_are_processed() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let before = publish_orders(&broker, 3).await;
    // Its Nats-* headers are valid here but would break a DLQ publish that copied them.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Stream", "ORDERS");
    headers.insert("Nats-Msg-Id", "poison-1");
    headers.insert("X-Custom", "kept");
    broker
        .js
        .publish_with_headers(
            "orders.order_created.poison",
            headers,
            "{not an event".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let after = publish_orders(&broker, 3).await;

    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    let deadline = Deadline::after(WAIT, "the six valid events are applied");
    let mut applied = 0;
    while applied < 6 {
        applied += consume_batch(&mut consumer, &store).await.len();
        deadline.check();
    }
    applied_once(&store, &before);
    applied_once(&store, &after);

    assert_eq!(broker.stream_len("DLQ").await, 1);
    let dlq = broker.js.get_stream("DLQ").await.unwrap();
    let dead = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(
        dead.subject.as_str(),
        "dlq.payment.orders.order_created.poison.0",
        "filed under the stored subject, partition appended by the stream"
    );
    assert_eq!(
        &dead.payload[..],
        b"{not an event",
        "the payload is kept untouched"
    );
    let reason = dead
        .headers
        .get(bus::consumer::DLQ_REASON)
        .unwrap()
        .to_string();
    assert!(reason.contains("undecodable"), "{reason}");
    assert_eq!(
        dead.headers
            .get(bus::consumer::DLQ_SEQUENCE)
            .unwrap()
            .as_str(),
        "4"
    );
    assert_eq!(dead.headers.get("X-Custom").unwrap().as_str(), "kept");
    assert_eq!(
        dead.headers
            .get(bus::consumer::DLQ_ORIGINAL_MSG_ID)
            .unwrap()
            .as_str(),
        "poison-1"
    );
    assert!(dead.headers.get("Nats-Expected-Stream").is_none());
}

#[tokio::test]
async fn rejected_and_exhausted_messages_go_to_dlq() {
    init_logs();
    let broker = TestBroker::start().await;
    let events = publish_orders(&broker, 2).await;
    let (rejected, failing) = (events[0].id, events[1].id);
    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    let (_dir, store) = temp_store();
    let mut deliveries_of_failing = 0;
    let deadline = Deadline::after(WAIT, "both land in DLQ");
    while broker.stream_len("DLQ").await < 2 {
        let batch = consumer
            .next_batch(Duration::from_millis(100))
            .await
            .unwrap();
        let verdicts = batch
            .into_iter()
            .map(|d| {
                if d.envelope.id == rejected {
                    (Verdict::Reject("unknown sku".into()), d)
                } else {
                    assert_eq!(d.envelope.id, failing);
                    deliveries_of_failing += 1;
                    (Verdict::Retry("gateway down".into()), d)
                }
            })
            .collect();
        consumer
            .settle(verdicts, store.flush().await.unwrap())
            .await;
        deadline.check();
    }
    assert_eq!(
        deliveries_of_failing, 3,
        "retried up to max_deliver, then dead-lettered"
    );
    let dlq = broker.js.get_stream("DLQ").await.unwrap();
    let mut reasons = Vec::new();
    for seq in 1..=2 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        reasons.push(
            m.headers
                .get(bus::consumer::DLQ_REASON)
                .unwrap()
                .to_string(),
        );
    }
    reasons.sort();
    assert_eq!(
        reasons,
        ["exhausted after 3 deliveries: gateway down", "unknown sku"]
    );
}

#[tokio::test]
async fn redelivery_after_a_crash_before_ack_is_applied_once() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let events = publish_orders(&broker, 20).await;

    // First life: apply and flush everything, then "crash" before settling: no ack is sent.
    {
        let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
        let mut seen = 0;
        while seen < events.len() {
            let batch = consumer.next_batch(Duration::from_secs(5)).await.unwrap();
            for d in &batch {
                assert_eq!(
                    apply(&store, d).1,
                    Some(CommitOutcome::Committed { version: 1 })
                );
            }
            seen += batch.len();
            let _ = store.flush().await.unwrap();
            drop(batch); // the process died here: nothing is acknowledged
        }
    }

    // Second life: the broker redelivers after AckWait; the inbox turns each into a no-op.
    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    let mut duplicates = 0;
    let deadline = Deadline::after(WAIT, "all 20 are redelivered");
    while duplicates < 20 {
        for outcome in consume_batch(&mut consumer, &store).await {
            assert_eq!(outcome, Some(CommitOutcome::Duplicate));
            duplicates += 1;
        }
        deadline.check();
    }
    applied_once(&store, &events);
    wait_until("nothing is left unacknowledged", WAIT, || async {
        let info = broker
            .js
            .get_stream("ORDERS")
            .await
            .unwrap()
            .consumer_info("payment")
            .await
            .unwrap();
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
}

#[tokio::test]
async fn a_broker_restart_mid_consume_loses_nothing_and_applies_nothing_twice() {
    init_logs();
    let mut broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let events = publish_orders(&broker, 400).await;

    let applied = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut consumer = DurableConsumer::bind(&broker.js, {
        let mut s = spec();
        s.batch = 20;
        s
    })
    .await
    .unwrap();
    let worker = {
        let (store, applied, stop) = (store.clone(), applied.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                // While the broker is down, a pull can fail; the loop just goes on.
                let Ok(batch) = consumer.next_batch(Duration::from_millis(200)).await else {
                    continue;
                };
                let mut verdicts = Vec::new();
                for d in batch {
                    if let (verdict, Some(CommitOutcome::Committed { .. })) = apply(&store, &d) {
                        applied.fetch_add(1, Ordering::Relaxed);
                        verdicts.push((verdict, d));
                    } else {
                        verdicts.push((Verdict::Done, d));
                    }
                }
                let flushed = store.flush().await.unwrap();
                consumer.settle(verdicts, flushed).await;
            }
        })
    };
    wait_until("some events are applied", WAIT, || async {
        applied.load(Ordering::Relaxed) > 0
    })
    .await;
    broker.server.kill();
    broker.server.restart().await.unwrap();
    wait_until("every event is applied", WAIT, || async {
        events.iter().all(|e| store.is_processed(e.id).unwrap())
    })
    .await;
    stop.cancel();
    worker.await.unwrap();
    applied_once(&store, &events);
    assert_eq!(
        applied.load(Ordering::Relaxed),
        events.len(),
        "no event applied twice"
    );
}

/// Work that outlives AckWait threefold, with more messages delivered behind the batch: the
/// in-progress acks keep every one of them from being redelivered, so each is delivered once.
#[tokio::test]
async fn work_longer_than_ack_wait_is_never_redelivered() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut spec = spec();
    spec.batch = 5;
    let mut consumer = DurableConsumer::bind(&broker.js, spec).await.unwrap();
    let events = publish_orders(&broker, 20).await;
    let mut handled = 0;
    let deadline = Deadline::after(WAIT, "every event handled");
    while handled < events.len() {
        deadline.check();
        let batch = consumer
            .next_batch(Duration::from_millis(200))
            .await
            .unwrap();
        for delivery in &batch {
            assert_eq!(delivery.delivered, 1, "{delivery:?} was redelivered");
        }
        // The slow dependency: three AckWaits for the batch.
        let slow = tokio::time::sleep(Duration::from_secs(3));
        consumer.working(bus::InHand::of(&batch), slow).await;
        let mut verdicts = Vec::new();
        for delivery in batch {
            let (verdict, _) = apply(&store, &delivery);
            verdicts.push((verdict, delivery));
        }
        handled += verdicts.len();
        let flushed = store.flush().await.unwrap();
        consumer.settle(verdicts, flushed).await;
    }
    assert_eq!(handled, events.len(), "nothing handled twice");
    applied_once(&store, &events);
}

/// The broker loses the tail of a stream (its last block cut short, as an OS crash before fsync
/// leaves it) while the consumer's state survives past the new end: the consumer is recreated
/// from there, so what is published again at the reused sequences is not skipped.
#[tokio::test]
async fn a_consumer_past_the_end_of_a_stream_that_lost_its_tail_is_recreated() {
    consumer_survives_a_lost_tail(false).await;
}

/// The same when the consumer was bound again (as a service's loop does when its pulls end)
/// and the stream was filled past it before it looked.
#[tokio::test]
async fn a_consumer_bound_again_after_a_lost_tail_still_notices_it() {
    consumer_survives_a_lost_tail(true).await;
}

async fn consumer_survives_a_lost_tail(bound_again: bool) {
    init_logs();
    let mut broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    let events = publish_orders(&broker, 40).await;
    handle_all(&mut consumer, &store, &events).await;

    let survived = lose_the_tail(&mut broker).await;
    assert!(survived < 40, "the tail is lost: {survived} messages left");

    // Published again (as the owning relay would), at the sequences the consumer had passed
    // and beyond them, before the consumer looks: its position is inside the stream again.
    let again = publish_orders(&broker, 45).await;
    if bound_again {
        consumer.rebind().await.unwrap();
    }
    assert!(consumer.realign(Duration::ZERO).await.unwrap(), "recreated");
    handle_all(&mut consumer, &store, &again).await;
    applied_once(&store, &events[..survived as usize]);
    applied_once(&store, &again);
    assert!(
        !consumer.realign(Duration::ZERO).await.unwrap(),
        "aligned now"
    );
}

/// The broker had delivered messages this consumer never received (still in flight when it
/// died) and lost them with the tail; the stream is refilled past them before the consumer
/// looks, its newest message survived. After the reconnect it is recreated all the same, so
/// nothing at the reused sequences is skipped.
#[tokio::test]
async fn messages_delivered_but_never_received_before_a_lost_tail_are_not_skipped() {
    delivered_but_never_received(false).await;
}

/// The same when the consumer was bound again after the reconnect (as a service's loop does
/// when its pulls end) before it looked.
#[tokio::test]
async fn a_consumer_bound_again_across_a_reconnect_still_recovers_what_it_never_received() {
    delivered_but_never_received(true).await;
}

async fn delivered_but_never_received(bound_again: bool) {
    init_logs();
    let mut broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    assert!(!consumer.realign(Duration::ZERO).await.unwrap(), "new");
    let first = publish_orders(&broker, 10).await;
    handle_all(&mut consumer, &store, &first).await;
    // Thirty more reach the consumer's buffer, none handed out.
    publish_orders(&broker, 30).await;
    let deadline = Deadline::after(WAIT, "the broker delivers them");
    loop {
        let stream = broker.js.get_stream("ORDERS").await.unwrap();
        let info = stream.consumer_info("payment").await.unwrap();
        if info.delivered.stream_sequence == 40 {
            break;
        }
        deadline.check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopped cleanly, so the broker's consumer state keeps all it delivered (a kill may
    // leave it from before the thirty); without its index the stream recovers from its cut
    // blocks and reuses the lost sequences, as after a crash.
    broker.server.stop().await;
    let index = broker
        .server
        .store_dir()
        .join("jetstream/jetstream/$G/streams/ORDERS/msgs/index.db");
    std::fs::remove_file(index).expect("the stream's index");
    let survived = lose_the_tail(&mut broker).await;
    assert!(
        (10..40).contains(&survived),
        "the tail past the handled is lost: {survived} left"
    );
    let again = publish_orders(&broker, 45).await;
    if bound_again {
        consumer.rebind().await.unwrap();
    }
    assert!(consumer.realign(Duration::ZERO).await.unwrap(), "recreated");
    handle_all(&mut consumer, &store, &again).await;
    applied_once(&store, &first);
    applied_once(&store, &again);
}

/// The broker comes back without the tail and the consumer is handed what the relays publish
/// past its old position before it looks: those do not hide the loss, so it is recreated and
/// what sits at the reused sequences below them is handled too.
#[tokio::test]
async fn messages_handed_out_after_a_reconnect_do_not_hide_a_lost_tail() {
    init_logs();
    let mut broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    let mut consumer = DurableConsumer::bind(&broker.js, spec()).await.unwrap();
    assert!(!consumer.realign(Duration::ZERO).await.unwrap(), "new");
    let events = publish_orders(&broker, 40).await;
    handle_all(&mut consumer, &store, &events).await;

    let survived = lose_the_tail(&mut broker).await;
    assert!(survived < 40, "the tail is lost: {survived} messages left");
    let again = publish_orders(&broker, 45).await;
    // The broker goes on past the old position: what it hands out is past sequence 40.
    let deadline = Deadline::after(WAIT, "messages past the old position");
    while consume_batch(&mut consumer, &store).await.is_empty() {
        deadline.check();
    }
    assert!(consumer.realign(Duration::ZERO).await.unwrap(), "recreated");
    handle_all(&mut consumer, &store, &again).await;
    applied_once(&store, &again);
}

/// Handle batches until every one of `events` is applied.
async fn handle_all(consumer: &mut DurableConsumer, store: &Store, events: &[Envelope]) {
    let deadline = Deadline::after(WAIT, "every event handled");
    while !events.iter().all(|e| store.is_processed(e.id).unwrap()) {
        deadline.check();
        consume_batch(consumer, store).await;
    }
}

/// Kill the broker, cut the last block of ORDERS short (as an OS crash before fsync leaves
/// it), start it again; answers how many messages survived.
async fn lose_the_tail(broker: &mut TestBroker) -> u64 {
    broker.server.kill();
    commerce_tests::cut_last_block(broker.server.store_dir(), "ORDERS");
    broker.server.restart().await.unwrap();
    wait_for_stream(broker).await
}

/// The stream's message count once the restarted broker answers.
async fn wait_for_stream(broker: &TestBroker) -> u64 {
    let deadline = Deadline::after(WAIT, "the restarted broker answers");
    loop {
        if let Ok(mut stream) = broker.js.get_stream("ORDERS").await {
            if let Ok(info) = stream.info().await {
                return info.state.messages;
            }
        }
        deadline.check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster's consumer leader stalls (SIGSTOP, as `commerce chaos` does) holding this
/// consumer's pull, and the client, connected to another node, never reconnects. The consumer
/// reads on from the new leader: that one ends the old pull (409 Leadership Change), and were
/// it to be lost, `next_batch` pulls again once heartbeats stop.
#[tokio::test]
async fn a_consumer_reads_on_when_its_leader_stalls_in_a_cluster() {
    init_logs();
    let mut broker = TestCluster::start().await;
    let admin = broker.js.clone();
    // Created here (never polled, so it sends no pull), to learn which node leads it.
    drop(DurableConsumer::bind(&admin, spec()).await.unwrap());
    let orders = admin.get_stream("ORDERS").await.unwrap();
    let info = orders.consumer_info("payment").await.unwrap();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a consumer leader");
    let nodes = broker.cluster.nodes();
    let leading = nodes.iter().position(|n| n.name() == leader).unwrap();
    let other = (leading + 1) % nodes.len();

    let reader = bus::connect(&nodes[other].url(), "reader", None)
        .await
        .unwrap();
    // Publishing through it too: a client on the paused node would wait for its pings (30 s).
    let reader = async_nats::jetstream::new(reader);
    let mut consumer = DurableConsumer::bind(&reader, spec()).await.unwrap();
    let (_db, store) = temp_store();
    let before = publish_orders_to(&reader, 1).await;
    let deadline = Deadline::after(WAIT, "the first event is applied");
    while consume_batch(&mut consumer, &store).await.is_empty() {
        deadline.check();
    }

    nodes[leading].pause(true).unwrap();
    let published = Deadline::after(WAIT, "the cluster takes a publish again");
    let after = loop {
        let envelope = Envelope::new(
            Domain::Orders,
            "OrderCreated",
            Uuid::now_v7().to_string(),
            json!({}),
        )
        .unwrap();
        let row = envelope.to_outbox_message().unwrap();
        let stored = Publisher::new(reader.clone()).publish_all([&row]).await;
        if stored.iter().all(Result::is_ok) {
            break envelope;
        }
        published.check();
    };
    // Before a lost pull would be written off as expired (35 s after it was sent).
    let deadline = Deadline::after(Duration::from_secs(25), "the event after the stall");
    while consume_batch(&mut consumer, &store).await.is_empty() {
        deadline.check();
    }
    applied_once(&store, &before);
    applied_once(&store, std::slice::from_ref(&after));
    nodes[leading].pause(false).unwrap();
    broker.cluster.stop().await;
}

/// A recovery reads its dead letters up to the count `DLQ`'s leader gives for its subjects (its
/// replay's consumer may sit on a replica still catching up): one owner's, one partition's.
#[tokio::test]
async fn the_dead_letters_of_one_owner_are_counted_at_the_leader() {
    let broker = TestBroker::start().await;
    for (subject, copies) in [
        ("dlq.payment.orders.order_created.o1.0", 2),
        ("dlq.payment.orders.order_created.o2.1", 1),
        ("dlq.inventory.orders.order_created.o1.0", 1),
    ] {
        for _ in 0..copies {
            let ack = broker.js.publish(subject, "{}".into()).await.unwrap();
            ack.await.unwrap();
        }
    }
    let dlq = broker.js.get_stream("DLQ").await.unwrap();
    for (filter, count) in [
        ("dlq.payment.>", 3),
        ("dlq.payment.*.*.*.1", 1),
        ("dlq.shipment.>", 0),
    ] {
        let counted = bus::streams::leader_count(&dlq, filter).await.unwrap();
        assert_eq!(counted, count, "{filter}");
    }
}

/// A replay that counts nothing left short of its target asks the leader what follows: the
/// next message on the filter past a deleted one, and none after the last.
#[tokio::test]
async fn the_leader_names_the_next_message_a_replay_has_not_read() {
    let broker = TestBroker::start().await;
    let mut sequences = Vec::new();
    for subject in [
        "dlq.payment.a",
        "dlq.inventory.b",
        "dlq.payment.c",
        "dlq.payment.d",
    ] {
        let ack = broker.js.publish(subject, "{}".into()).await.unwrap();
        sequences.push(ack.await.unwrap().sequence);
    }
    let dlq = broker.js.get_stream("DLQ").await.unwrap();
    dlq.delete_message(sequences[2]).await.unwrap();
    let next = |filter: &'static str, from: u64| {
        let dlq = dlq.clone();
        async move {
            let filters = [filter.to_string()];
            bus::streams::leader_next(&dlq, &filters, from)
                .await
                .unwrap()
        }
    };
    assert_eq!(next(">", sequences[0]).await, Some(sequences[0]));
    assert_eq!(
        next("dlq.payment.>", sequences[0] + 1).await,
        Some(sequences[3])
    );
    assert_eq!(next(">", sequences[2]).await, Some(sequences[3]));
    assert_eq!(next(">", sequences[3] + 1).await, None);
    assert_eq!(next("dlq.shipment.>", 1).await, None);
    // The first on any of several filters.
    let filters = ["dlq.payment.d".to_string(), "dlq.inventory.>".to_string()];
    let first = bus::streams::leader_next(&dlq, &filters, 1).await.unwrap();
    assert_eq!(first, Some(sequences[1]));
}

/// A message delivered again before its first delivery was settled (AckWait passed while both
/// were held up, as in a frozen node) comes once in a batch, as its latest delivery: a handler
/// that retried one copy and took the other for a duplicate (acked) had the broker forget the
/// message and its retry (chaos seed 78: 17 orders never paid nor given up).
#[tokio::test]
async fn a_message_delivered_twice_before_it_is_settled_comes_once_and_its_retry_holds() {
    let broker = TestBroker::start().await;
    let mut spec = spec();
    spec.max_deliver = 10;
    let mut consumer = DurableConsumer::bind(&broker.js, spec).await.unwrap();
    let events = publish_orders(&broker, 1).await;
    let first = consumer.next_batch(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.len(), 1);
    // Left unsettled (a handler stuck): the broker delivers it twice more, and both wait in
    // the client until it reads again.
    let orders = broker.js.get_stream("ORDERS").await.unwrap();
    let delivered_thrice = || {
        let orders = orders.clone();
        async move {
            let info = orders.consumer_info("payment").await.unwrap();
            info.delivered.consumer_sequence >= 3
        }
    };
    wait_until("delivered three times", WAIT, delivered_thrice).await;
    broker.client.flush().await.unwrap();
    let mut batch = Vec::new();
    let deadline = Deadline::after(WAIT, "its third delivery");
    while batch.iter().all(|d: &Delivery| d.delivered < 3) {
        batch = consumer.next_batch(Duration::from_secs(5)).await.unwrap();
        let sequences: Vec<_> = batch.iter().map(|d| d.stream_sequence).collect();
        assert_eq!(sequences, [first[0].stream_sequence], "once in a batch");
        deadline.check();
    }
    assert_eq!(batch[0].envelope.id, events[0].id);
    drop(first);
    // As the engine settles a batch: the first copy of an event retried, a later copy taken
    // for a duplicate of it.
    let mut copies = std::collections::HashSet::new();
    let verdicts = batch
        .into_iter()
        .map(|d| match copies.insert(d.envelope.id) {
            true => (Verdict::Retry("down".into()), d),
            false => (Verdict::Done, d),
        })
        .collect();
    let (_dir, store) = temp_store();
    consumer
        .settle(verdicts, store.flush().await.unwrap())
        .await;
    let again = consumer.next_batch(Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1, "retried, not forgotten");
    assert_eq!(again[0].envelope.id, events[0].id);
}
