//! Leases against a real nats-server: one owner at a time, a standby that takes over only once
//! the owner's lease lapsed, and a store that its lapsed owner can no longer write through.

use std::time::Duration;

use bus::lease::{self, Attempt, Holder, Lease};
use bus::{OutboxRelay, Publisher, RelayConfig};
use commerce_tests::{commit_orders, init_logs, temp_store, Deadline, TestBroker};
use storage::{Fenced, StorageError};

const TTL: Duration = Duration::from_millis(1_200);
const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "payment.0";

async fn leases(broker: &TestBroker) -> async_nats::jetstream::kv::Store {
    lease::provision(&broker.js, TTL, 1).await.unwrap();
    let (kv, ttl) = lease::bucket(&broker.js).await.unwrap();
    assert_eq!(ttl, TTL, "the bucket's max_age is the lease's time to live");
    kv
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
    assert!(matches!(
        a.renew().await,
        Err(bus::BusError::LeaseLost { .. })
    ));
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
        Err(bus::BusError::LeaseLost { .. })
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
        matches!(&refused, bus::BusError::Storage(e) if fenced(e)),
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
    let subject = lease::term_subject(bus::Domain::Orders, 0);
    let a = acquired(take(&kv, "a").await);
    let a_term = lease::begin_term(&broker.js, &subject, &a, &Holder::this_process("a"))
        .await
        .unwrap();
    let (_dir, store) = temp_store();
    commit_orders(&store, 3);
    let rows = store.pending(10).unwrap();
    let from_a = Publisher::new(broker.js.clone()).within_term(subject.clone(), a_term);
    let sent = from_a
        .publish_all(rows.iter().take(1).map(|r| &r.message))
        .await;
    assert!(sent[0].is_ok(), "published within its term: {:?}", sent[0]);

    let b = take_when_free(&kv, "b").await;
    let b_term = lease::begin_term(&broker.js, &subject, &b, &Holder::this_process("b"))
        .await
        .unwrap();
    assert!(b_term > a_term);
    let late = from_a
        .publish_all(rows.iter().skip(1).map(|r| &r.message))
        .await;
    assert!(
        late.iter().all(Result::is_err),
        "a late publish of an earlier term is refused, and what follows it is not sent: {late:?}"
    );
    let from_b = Publisher::new(broker.js.clone()).within_term(subject, b_term);
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
