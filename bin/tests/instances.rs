//! Two instances of the payment service (`commerce run payment --instance a|b`), each its own
//! process: one owns the service, the other is refused and waits; the owner is paused (SIGSTOP)
//! with charges in flight past its lease, the standby takes over by rebuilding from the stream,
//! and the old owner, woken, is fenced: it applies and publishes nothing and stops.

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
    let others: Vec<Proc> = actors::Component::SERVICES
        .iter()
        .filter(|c| c.name() != "payment")
        .map(|c| cluster.run(c.name()))
        .chain(["projection", "gateway"].map(|c| cluster.run(c)))
        .collect();
    let http = others.last().expect("the gateway").line_starting("http: ");
    let api = Api::new(
        &http,
        &cluster.payment_gateway,
        &cluster.carrier,
        cluster.data.path(),
    );

    let mut a = cluster.spawn("payment", &["--instance", "a"]);
    a.line_starting("commerce payment is up");
    let b = cluster.spawn("payment", &["--instance", "b"]);
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
    assert!(!a.wait_exit().success(), "a stops: its lease was taken");
    let mut after = Vec::new();
    for i in 0..3 {
        let placed = order(&format!("after-{i}"), "SKU-MUG", 1, CARD, ADDRESS);
        after.push(api.place_ok(&placed).await);
    }
    for id in orders.iter().chain(&in_flight).chain(&after) {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    assert_eq!(holder(&js).await.as_deref(), Some("b"));

    // Nothing applied twice: each payment event once per order, each order charged once.
    let stream = js.get_stream("PAYMENTS").await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut once = BTreeSet::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        if bus::term::is_term_subject(&message.subject) {
            continue; // an owner's term marker, not an event
        }
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let key = (event["subject"].to_string(), event["type"].to_string());
        assert!(once.insert(key.clone()), "{key:?} published twice");
    }
    let ledger = api.ledger(&api.payment_gateway).await;
    let charged: Vec<&str> = ledger["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["order_id"].as_str())
        .collect();
    let distinct: BTreeSet<&str> = charged.iter().copied().collect();
    assert_eq!(distinct.len(), charged.len(), "an order charged twice");
    for id in orders.iter().chain(&in_flight).chain(&after) {
        assert!(distinct.contains(id.as_str()), "{id} charged");
    }
    // And the live read model agrees with one rebuilt from the streams.
    support::projection_caught_up(&js).await;
    let ids: Vec<String> = orders
        .iter()
        .chain(&in_flight)
        .chain(&after)
        .cloned()
        .collect();
    let live = support::rows(&api, &ids).await;
    support::assert_no_double_apply(&live);
    support::assert_no_permission_violations(cluster.data.path());
    drop(b);
    drop(others);
    drop(simulators);
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
