//! Partitions against a real nats-server: each domain stream stores an event with the partition
//! the broker computes appended to its subject, the same one `Partitions::of` computes, for
//! plain publishes and a term's atomic batches alike; a consumer of one partition gets exactly
//! its orders' events, in order; and the count cannot change under stored events.

use std::time::Duration;

use bus::lease::{Holder, Lease};
use bus::partition::{self, Partitions, Slice};
use bus::term::Term;
use bus::{
    BusError, ConsumerSpec, Domain, DurableConsumer, Envelope, Publisher, StreamSettings, Verdict,
};
use commerce_tests::{commit_orders, init_logs, temp_store, Deadline, TestBroker};

const WAIT: Duration = Duration::from_secs(30);

fn partitioned(count: u32) -> StreamSettings {
    StreamSettings {
        partitions: count,
        ..StreamSettings::default()
    }
}

/// Every message of `ORDERS`, as (stored subject, the event if it is one), in stream order.
async fn stored_orders(broker: &TestBroker) -> Vec<(String, Option<Envelope>)> {
    let stream = broker.js.get_stream("ORDERS").await.unwrap();
    let mut stored = Vec::new();
    for seq in 1..=broker.stream_len("ORDERS").await {
        let message = stream.get_raw_message(seq).await.unwrap();
        let event = Envelope::from_slice(&message.payload).ok();
        stored.push((message.subject.to_string(), event));
    }
    stored
}

/// Publish every outbox row of `store` through `publisher`, each stored.
async fn publish_pending(publisher: &Publisher, store: &storage::Store) {
    let rows = store.pending(1_000).unwrap();
    for outcome in publisher.publish_all(rows.iter().map(|r| &r.message)).await {
        outcome.expect("stored");
    }
}

#[tokio::test]
async fn the_stream_appends_the_partition_this_side_computes_also_in_a_terms_batch() {
    init_logs();
    let broker = TestBroker::start().await;
    let four = Partitions::new(4).unwrap();
    // The streams are empty: the count may change.
    bus::provision(&broker.js, &partitioned(4)).await.unwrap();
    // One at a time (no term), then one atomic batch within a term.
    let (_a, plain_store) = temp_store();
    let (_b, batch_store) = temp_store();
    commit_orders(&plain_store, 100);
    commit_orders(&batch_store, 100);
    publish_pending(&Publisher::new(broker.js.clone()), &plain_store).await;
    let kv = bus::lease::bucket(&broker.js).await.unwrap().0;
    let holder = Holder::this_process("a");
    let lease = match Lease::try_acquire(&kv, Duration::from_secs(10), "order.0", &holder)
        .await
        .unwrap()
    {
        bus::lease::Attempt::Acquired(lease) => *lease,
        held => panic!("{held:?}"),
    };
    let term = Term::begin(&broker.js, Domain::Orders, 0, &lease.claim(), &holder)
        .await
        .unwrap();
    let within_term = Publisher::new(broker.js.clone()).within_term(term);
    publish_pending(&within_term, &batch_store).await;

    let stored = stored_orders(&broker).await;
    let events: Vec<_> = stored
        .iter()
        .filter_map(|(subject, event)| Some((subject, event.as_ref()?)))
        .collect();
    assert_eq!(events.len(), 200);
    let mut per_partition = [0; 4];
    for (subject, envelope) in events {
        let (published, partition) = partition::split_stored(subject)
            .unwrap_or_else(|| panic!("{subject} carries no partition"));
        assert_eq!(published, envelope.nats_subject().unwrap());
        assert_eq!(partition, four.of(&envelope.subject), "{subject}");
        envelope.check_arrived_on(subject).unwrap();
        per_partition[partition as usize] += 1;
    }
    assert!(
        per_partition.iter().all(|n| *n > 20),
        "200 orders spread over four partitions: {per_partition:?}"
    );
    let markers: Vec<_> = stored.iter().filter(|(_, event)| event.is_none()).collect();
    assert_eq!(markers.len(), 1);
    assert_eq!(
        markers[0].0,
        bus::term::term_subject(Domain::Orders, 0),
        "stored as is"
    );
}

#[tokio::test]
async fn a_consumer_of_one_partition_gets_exactly_its_orders_events_in_order() {
    init_logs();
    let broker = TestBroker::start().await;
    let three = Partitions::new(3).unwrap();
    bus::provision(&broker.js, &partitioned(3)).await.unwrap();
    let (_dir, store) = temp_store();
    commit_orders(&store, 120);
    publish_pending(&Publisher::new(broker.js.clone()), &store).await;
    let all: Vec<_> = stored_orders(&broker)
        .await
        .into_iter()
        .filter_map(|(_, event)| event)
        .collect();
    let wanted: Vec<_> = all
        .iter()
        .filter(|e| three.of(&e.subject) == 1)
        .map(|e| e.id)
        .collect();
    assert!(!wanted.is_empty() && wanted.len() < all.len());

    let mut spec = ConsumerSpec::new("ORDERS", "partition-1");
    spec.filter_subjects = vec![partition::events(Domain::Orders, "*", Slice::One(1))];
    let mut consumer = DurableConsumer::bind(&broker.js, spec).await.unwrap();
    let mut got = Vec::new();
    let deadline = Deadline::after(WAIT, "partition 1's events arrive");
    while got.len() < wanted.len() {
        let batch = consumer
            .next_batch(Duration::from_millis(200))
            .await
            .unwrap();
        got.extend(batch.iter().map(|d| d.envelope.id));
        let done = batch.into_iter().map(|d| (Verdict::Done, d)).collect();
        consumer.settle(done, store.flush().await.unwrap()).await;
        deadline.check();
    }
    assert_eq!(
        got, wanted,
        "partition 1's events, in stream order, and nothing else"
    );
}

#[tokio::test]
async fn the_count_cannot_change_under_stored_events() {
    init_logs();
    let broker = TestBroker::start().await;
    let (_dir, store) = temp_store();
    commit_orders(&store, 1);
    publish_pending(&Publisher::new(broker.js.clone()), &store).await;

    let refused = bus::provision(&broker.js, &partitioned(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BusError::Repartition { stream, wanted: 2, .. } if stream == "ORDERS")
    );
    let why = refused.to_string();
    assert!(
        why.contains("over 1 partitions") && why.contains("offline"),
        "{why}"
    );
    // The stream keeps its count; the same count provisions as before.
    let status = bus::status::streams(&broker.js).await.unwrap();
    let orders = status.iter().find(|s| s.name == "ORDERS").unwrap();
    assert_eq!(orders.partitions, Some(1));
    bus::provision(&broker.js, &partitioned(1)).await.unwrap();
    assert!(matches!(
        bus::provision(&broker.js, &partitioned(0)).await,
        Err(BusError::Invalid(_))
    ));
}

/// Markers are not events: a stream that holds only its service's recovery marker (every new
/// system's streams do) takes a new count.
#[tokio::test]
async fn the_count_changes_while_a_stream_holds_only_markers() {
    init_logs();
    let broker = TestBroker::start().await;
    bus::term::mark_recovery(&broker.js, Domain::Orders, 0)
        .await
        .unwrap();

    bus::provision(&broker.js, &partitioned(2)).await.unwrap();
    let status = bus::status::streams(&broker.js).await.unwrap();
    let orders = status.iter().find(|s| s.name == "ORDERS").unwrap();
    assert_eq!((orders.partitions, orders.messages), (Some(2), 1));
}
