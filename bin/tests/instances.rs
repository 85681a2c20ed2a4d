//! Two instances of the payment service (`commerce run payment --instance a|b`), each its own
//! process: one owns the service, the other is refused and waits; the owner is paused (SIGSTOP)
//! with charges in flight past its lease, the standby takes over by rebuilding from the stream,
//! and the old owner, woken, is fenced: it applies and publishes nothing, stands by again, and
//! takes over once the new owner gives the service back.

mod support;

use std::collections::BTreeSet;

use nix::sys::signal::Signal;
use serde_json::json;
use support::{order, wait_until, Api, Cluster, Proc, ADDRESS, CARD};

/// Short, so the test does not wait long for a lapse; the services stop a quarter earlier.
const LEASE_TTL_MS: u64 = 2_000;

#[tokio::test]
async fn a_second_instance_is_refused_while_the_first_holds_the_lease_and_fenced_after() {
    let streams = bus::StreamSettings {
        lease_ttl_ms: LEASE_TTL_MS,
        ..Default::default()
    };
    let (cluster, _broker, js, simulators) = Cluster::start(&streams).await;
    let (others, api) = all_but_payment(&cluster);

    let mut a = cluster.spawn("payment", &["--instance", "a"]);
    a.line_starting("commerce payment is up");
    let mut b = cluster.spawn("payment", &["--instance", "b"]);
    b.line_starting("commerce payment instance b: taking the lease");
    // b is refused: the lease stays a's, and orders are charged by a alone.
    let mut orders = Vec::new();
    for i in 0..5 {
        let placed = order(&format!("first-{i}"), "SKU-MUG", 1, CARD, ADDRESS);
        orders.push(api.place_ok(&placed).await);
    }
    for id in &orders {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    assert_eq!(holder(&js).await.as_deref(), Some("a"), "b was refused");

    // Charges in flight at a (the gateway is slow), then a stops dead past its lease.
    api.set_faults(&api.payment_gateway, json!({ "latency_ms": 1500 }))
        .await;
    let before = calls(&api).await;
    let mut in_flight = Vec::new();
    for i in 0..5 {
        let placed = order(&format!("in-flight-{i}"), "SKU-SOCKS", 1, CARD, ADDRESS);
        in_flight.push(api.place_ok(&placed).await);
    }
    wait_until("a calls the gateway", || async {
        calls(&api).await > before
    })
    .await;
    a.signal(Signal::SIGSTOP);

    // b takes over once the lease lapsed, rebuilds from the stream, and charges what a had in
    // hand (the gateway answers a repeated charge of an order with the same authorization).
    b.line_starting("commerce payment is up");
    assert_eq!(holder(&js).await.as_deref(), Some("b"));
    let (ok, status) = support::cli(cluster.data.path(), &["status", "--nats", &cluster.nats]);
    assert!(ok, "{status}");
    assert!(
        status.contains("payment.0") && status.contains("held by instance b"),
        "status shows the owner: {status}"
    );
    api.set_faults(&api.payment_gateway, json!({})).await;
    for id in &in_flight {
        api.wait_status(id, &["COMPLETED"]).await;
    }

    // a wakes up: whatever it had in hand is refused at its commit, and it stops.
    a.signal(Signal::SIGCONT);
    let mut after = Vec::new();
    for i in 0..3 {
        let placed = order(&format!("after-{i}"), "SKU-MUG", 1, CARD, ADDRESS);
        after.push(api.place_ok(&placed).await);
    }
    for id in orders.iter().chain(&in_flight).chain(&after) {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    assert_eq!(holder(&js).await.as_deref(), Some("b"));
    // a does not exit: its lost lease sent it back to standby, and it takes over again when b
    // gives the service back.
    assert!(a.running(), "a stands by");
    b.stop();
    wait_until("a owns the service again", || async {
        holder(&js).await.as_deref() == Some("a")
    })
    .await;
    after.extend(support::place_completed(&api, "a-again", 3).await);

    // Nothing applied twice: each payment event once per order, each order charged once.
    published_once(&js, "PAYMENTS").await;
    let all: Vec<String> = orders
        .iter()
        .chain(&in_flight)
        .chain(&after)
        .cloned()
        .collect();
    support::charged_once(&api, &all).await;
    // And the live read model agrees with one rebuilt from the streams.
    support::projection_caught_up(&js).await;
    let live = support::rows(&api, &all).await;
    support::assert_no_double_apply(&live);
    support::assert_no_permission_violations(cluster.data.path());
    drop((a, others, simulators));
}

/// An instance whose start outlives its lease (its thread stalled, as on a loaded machine) loses
/// the lease to the standby, stands by, and says it is up once it serves after all: the
/// readiness `commerce up --instances` waits for is not spent on the attempt that lost.
#[tokio::test]
async fn an_instance_that_loses_its_lease_while_starting_says_it_is_up_once_it_serves() {
    let streams = bus::StreamSettings {
        lease_ttl_ms: LEASE_TTL_MS,
        ..Default::default()
    };
    let (cluster, _broker, js, simulators) = Cluster::start(&streams).await;
    // The stall blocks a's thread, so its lease is not renewed and lapses under it.
    let stalled = [("FAILPOINTS", "host.before_serving=1*sleep(6000)")];
    let a = cluster.spawn_with("payment", &["--instance", "a"], &stalled);
    wait_until("a holds the lease", || async {
        holder(&js).await.as_deref() == Some("a")
    })
    .await;
    let mut b = cluster.spawn("payment", &["--instance", "b"]);
    b.line_starting("commerce payment is up");
    assert_eq!(holder(&js).await.as_deref(), Some("b"), "b took it over");
    // a wakes, finds the lease gone, stands by; it takes over when b stops, and says so.
    b.stop();
    a.line_starting("commerce payment is up");
    assert_eq!(holder(&js).await.as_deref(), Some("a"));
    drop((a, simulators));
}

/// The instance holding the payment service's lease.
async fn holder(js: &async_nats::jetstream::Context) -> Option<String> {
    bus::lease::held(js)
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.key == bus::lease::key("payment", 0))
        .and_then(|l| l.holder)
        .map(|h| h.instance)
}

async fn calls(api: &Api) -> u64 {
    api.ledger(&api.payment_gateway).await["calls"]
        .as_u64()
        .unwrap_or_default()
}

/// Two partitions, two instances of the payment service, each the home of one. Each takes its
/// own; when one dies the other takes its partition over (rebuilding that partition only), and
/// gives it back when the home instance returns. A third instance, home of a partition held by
/// its home, is refused: the partition has one writer throughout, every order is charged once.
#[tokio::test]
async fn instances_own_their_home_partitions_take_over_the_others_and_give_them_back() {
    let streams = bus::StreamSettings {
        lease_ttl_ms: LEASE_TTL_MS,
        partitions: 2,
        ..Default::default()
    };
    let (cluster, _broker, js, simulators) = Cluster::start(&streams).await;
    let (others, api) = all_but_payment(&cluster);
    let home = |name: &str, partition: &str| {
        let instance = cluster.spawn("payment", &["--instance", name, "--home", partition]);
        instance.line_starting("commerce payment is up");
        instance
    };
    let a = home("a", "0");
    let mut b = home("b", "1");
    let owners = || async { payment_owners(&js).await };
    wait_until("each instance holds its home partition", || async {
        owners().await == ["a", "b"]
    })
    .await;
    let mut placed = support::place_completed(&api, "first", 6).await;

    // b dies: a takes partition 1 over once its lease lapsed, and completes its orders.
    b.signal(Signal::SIGKILL);
    let _ = b.wait_exit();
    wait_until("a takes partition 1 over", || async {
        owners().await == ["a", "a"]
    })
    .await;
    placed.extend(support::place_completed(&api, "while-b-is-gone", 6).await);

    // b comes back: a gives partition 1 back.
    let b = home("b", "1");
    wait_until("a gives partition 1 back", || async {
        owners().await == ["a", "b"]
    })
    .await;
    placed.extend(support::place_completed(&api, "after", 6).await);

    // c, home of partition 1 too, is refused while b holds it: it stays a standby.
    let c = cluster.spawn("payment", &["--instance", "c", "--home", "1"]);
    c.line_starting("commerce payment instance c: taking the lease");
    placed.extend(support::place_completed(&api, "with-c", 4).await);
    assert_eq!(owners().await, ["a", "b"], "c was refused");

    // Every order charged once, each payment event published once.
    support::charged_once(&api, &placed).await;
    let partitions = bus::Partitions::new(2).unwrap();
    let in_each: BTreeSet<u32> = placed.iter().map(|id| partitions.of(id)).collect();
    assert_eq!(in_each.len(), 2, "orders in both partitions");
    published_once(&js, "PAYMENTS").await;
    support::projection_caught_up(&js).await;
    support::assert_no_double_apply(&support::rows(&api, &placed).await);
    support::assert_no_permission_violations(cluster.data.path());
    drop((a, b, c, others, simulators));
}

/// Every component but payment, each its own process, and the API of its gateway.
fn all_but_payment(cluster: &Cluster) -> (Vec<Proc>, Api) {
    let others: Vec<Proc> = actors::Component::SERVICES
        .iter()
        .filter(|c| c.name() != "payment")
        .map(|c| cluster.run(c.name()))
        .chain(["projection", "gateway"].map(|c| cluster.run(c)))
        .collect();
    let api = cluster.api(others.last().expect("the gateway"));
    (others, api)
}

/// Who holds each partition's lease of the payment service, by partition.
async fn payment_owners(js: &async_nats::jetstream::Context) -> Vec<String> {
    let held = bus::lease::held(js).await.unwrap();
    (0..2)
        .map(|k| {
            held.iter()
                .find(|l| l.key == bus::lease::key("payment", k))
                .and_then(|l| l.holder.as_ref())
                .map_or_else(|| "-".to_string(), |h| h.instance.clone())
        })
        .collect()
}

/// Each event of `stream` is there once per (order, type).
async fn published_once(js: &async_nats::jetstream::Context, stream: &str) {
    let mut once = BTreeSet::new();
    for message in support::stream_events(js, stream).await {
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let key = (event["subject"].to_string(), event["type"].to_string());
        assert!(once.insert(key.clone()), "{key:?} published twice");
    }
}
