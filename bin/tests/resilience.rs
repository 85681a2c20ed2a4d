//! Bulkheads and circuit breakers around the external systems, against the real system.

mod support;

use std::time::Duration;

use actors::contract::Status;
use actors::rpc::call;
use actors::Component;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde_json::json;
use support::{order, Api, Proc, ADDRESS, CARD};

/// `commerce up` with a breaker that trips on 3 failures, waits 1 s open, and tries 2 calls.
fn up(data: &tempfile::TempDir) -> (Proc, String, Api) {
    let mut cmd = support::commerce();
    cmd.env("COMMERCE_RESILIENCE__BREAKER__FAILURES_PER_WINDOW", "3")
        .env("COMMERCE_RESILIENCE__BREAKER__MINIMUM_CALLS", "100")
        .env("COMMERCE_RESILIENCE__BREAKER__WAIT_IN_OPEN_MS", "1000")
        .env("COMMERCE_RESILIENCE__BREAKER__PERMITTED_IN_HALF_OPEN", "2")
        .env("COMMERCE_RESILIENCE__BREAKER__HALF_OPEN_TIMEOUT_MS", "5000")
        .env("COMMERCE_RETRY_BACKOFF_MS", "[200, 300, 500]")
        .env("COMMERCE_MAX_DELIVER", "100")
        .args(["up", "--data-dir"])
        .arg(data.path());
    support::started(Proc::spawn(cmd), data.path())
}

/// The payment gateway's circuit transitions stored from now on (read from the `OPS` stream:
/// no identity may listen where a stream stores).
async fn transitions(client: async_nats::Client) -> pull::Ordered {
    async_nats::jetstream::new(client)
        .get_stream(bus::streams::OPS_STREAM)
        .await
        .unwrap()
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            filter_subject: "ops.circuit.payment-gateway".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap()
}

/// The next transition read, as (from, to).
async fn next_transition(transitions: &mut pull::Ordered) -> (String, String) {
    let message = tokio::time::timeout(Duration::from_secs(30), transitions.next())
        .await
        .expect("a circuit transition")
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    (
        event["from"].as_str().unwrap().to_string(),
        event["to"].as_str().unwrap().to_string(),
    )
}

async fn gateway_calls(api: &Api) -> u64 {
    api.ledger(&api.payment_gateway).await["calls"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn an_outage_opens_the_breaker_no_call_passes_while_open_and_orders_complete_after() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, api) = up(&data);
    let client = support::operator(&nats, data.path()).await;
    let mut transitions = transitions(client).await;
    api.set_faults(&api.payment_gateway, json!({ "outage": true }))
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.place_ok(&order(&format!("out-{i}"), "SKU-MUG", 1, CARD, ADDRESS))
                .await,
        );
    }
    assert_eq!(
        next_transition(&mut transitions).await,
        ("closed".into(), "open".into())
    );
    let at_open = gateway_calls(&api).await;
    assert!(
        at_open >= 3,
        "it opened on the third failure ({at_open} calls)"
    );

    // While the outage lasts: open → half-open (2 trial calls, which fail) → open, again and
    // again. The only calls that reach the gateway are the trials.
    let mut trials = 0;
    for _ in 0..2 {
        assert_eq!(
            next_transition(&mut transitions).await,
            ("open".into(), "half_open".into())
        );
        assert_eq!(
            next_transition(&mut transitions).await,
            ("half_open".into(), "open".into())
        );
        trials += 2;
    }
    let during = gateway_calls(&api).await - at_open;
    assert!(
        during <= trials,
        "{during} calls reached the gateway, only {trials} trials were allowed"
    );

    // Recovery: the next trials succeed, the breaker closes, every order completes, once.
    api.set_faults(&api.payment_gateway, json!({})).await;
    loop {
        match next_transition(&mut transitions).await {
            (from, to) if to == "closed" => {
                assert_eq!(from, "half_open");
                break;
            }
            (from, to) => assert!(
                (from == "open" && to == "half_open") || (from == "half_open" && to == "open"),
                "{from} → {to}"
            ),
        }
    }
    for id in &ids {
        api.wait_status(id, &["COMPLETED"]).await;
    }
    let ledger = api.ledger(&api.payment_gateway).await;
    let authorized = ledger["authorizations"].as_array().unwrap();
    assert_eq!(
        authorized.len(),
        ids.len(),
        "each order charged once: {ledger}"
    );
    let status = support::commerce()
        .args(["status", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(report.contains("circuit payment-gateway"), "{report}");
    up.stop();
}

#[tokio::test]
async fn a_slow_payment_gateway_uses_only_its_own_permits() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, nats, api) = up(&data);
    let client = support::operator(&nats, data.path()).await;
    api.set_faults(&api.payment_gateway, json!({ "latency_ms": 3000 }))
        .await;
    let slow = api
        .place_ok(&order("slow", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    let circuits = |service: actors::Component| {
        let client = client.clone();
        async move {
            let status = call::<Status>(&client, service, &()).await.unwrap();
            status.circuits
        }
    };
    support::wait_until("a payment call is in flight", || async {
        circuits(Component::Payment).await[0].in_flight == 1
    })
    .await;
    // Meanwhile everything else answers, and the carrier's permits are untouched.
    for path in ["/health", "/products"] {
        let (status, body) = api.raw(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The booking guard is idle; the tracking feed's may be mid-poll (it polls on its own).
    let shipment = circuits(Component::Shipment).await;
    for circuit in &shipment {
        assert_eq!(circuit.refused, 0, "{circuit:?}");
    }
    let booking = shipment.iter().find(|c| c.dependency == "carrier");
    assert_eq!(booking.map(|c| c.in_flight), Some(0), "{shipment:?}");
    assert_eq!(circuits(Component::Payment).await[0].in_flight, 1);
    api.set_faults(&api.payment_gateway, json!({})).await;
    api.wait_status(&slow, &["COMPLETED"]).await;
    up.stop();
}

/// `commerce up` with a one-second saga deadline and quick retries.
fn up_with_deadline(data: &tempfile::TempDir) -> (Proc, Api) {
    let mut cmd = support::commerce();
    cmd.env("COMMERCE_SAGA_DEADLINE_SECS", "1")
        .env("COMMERCE_RETRY_BACKOFF_MS", "[200, 300, 500]")
        .env("COMMERCE_MAX_DELIVER", "100")
        .args(["up", "--data-dir"])
        .arg(data.path());
    let up = Proc::spawn(cmd);
    let api = Api::of(&up, data.path());
    (up, api)
}

#[tokio::test]
async fn past_the_saga_deadline_an_order_is_cancelled_and_any_charge_voided() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, api) = up_with_deadline(&data);
    api.set_faults(&api.payment_gateway, json!({ "outage": true }))
        .await;
    let late = api
        .place_ok(&order("wanda", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    let cancelled = api.wait_status(&late, &["CANCELLED"]).await;
    let reason = cancelled["cancel_reason"].as_str().unwrap();
    assert!(reason.contains("past the deadline"), "{reason}");
    assert_eq!(cancelled["payment_status"], "ABANDONED");

    // The gateway comes back: the payment service voids by key whatever it may have charged.
    api.set_faults(&api.payment_gateway, json!({})).await;
    api.wait_refunded(&late).await;
    let ledger = api.ledger(&api.payment_gateway).await;
    let charges = ledger["authorizations"].as_array().unwrap();
    assert_eq!(charges.len(), 1, "{ledger}");
    assert_eq!(ledger["refunds"].as_array().unwrap().len(), 1, "{ledger}");
    assert_eq!(
        support::warehouse(&api.products().await, "SKU-MUG"),
        10_000,
        "nothing reserved"
    );
    up.stop();
}

/// Slow is not down: past the deadline with the carrier unreachable nothing is compensated (the
/// carrier may have booked); once it answers that it booked nothing (the key now cancelled
/// there), the order is refunded and its stock released, and no parcel exists.
#[tokio::test]
async fn past_the_deadline_without_a_carrier_nothing_is_compensated_until_it_says_it_booked_nothing(
) {
    let data = tempfile::tempdir().unwrap();
    let (mut up, api) = up_with_deadline(&data);
    api.set_faults(&api.carrier, json!({ "outage": true }))
        .await;
    let id = api
        .place_ok(&order("xena", "SKU-SOCKS", 2, CARD, ADDRESS))
        .await;
    support::wait_until("the booking is overdue", || async {
        api.get(&id).await.1["shipment_status"] == "OVERDUE"
    })
    .await;
    // Overdue, still unanswered: nothing compensated, the stock still held.
    let (_, row) = api.get(&id).await;
    assert_eq!(row["order_status"], "PENDING", "{row}");
    assert_eq!(row["payment_status"], "APPROVED", "{row}");
    assert_eq!(
        support::warehouse(&api.products().await, "SKU-SOCKS"),
        9_998
    );

    api.set_faults(&api.carrier, json!({})).await;
    let cancelled = api.wait_status(&id, &["CANCELLED"]).await;
    let reason = cancelled["cancel_reason"].as_str().unwrap();
    assert!(
        reason.contains("booked nothing by the deadline"),
        "{reason}"
    );
    api.wait_refunded(&id).await;
    support::wait_until("the stock is back", || async {
        support::warehouse(&api.products().await, "SKU-SOCKS") == 10_000
    })
    .await;
    let ledger = api.ledger(&api.carrier).await;
    let bookings: Vec<_> = ledger["bookings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["order_id"] == id.as_str())
        .collect();
    assert_eq!(bookings.len(), 1, "{ledger}");
    assert_eq!(bookings[0]["status"], "cancelled", "{ledger}");
    up.stop();
}

/// A carrier that books but answers after the client gave up (slower than its timeout) past
/// the deadline: the booking it made stands, the order completes, nothing is refunded.
#[tokio::test]
async fn past_the_deadline_a_carrier_that_booked_slowly_is_believed_and_the_order_completes() {
    let data = tempfile::tempdir().unwrap();
    let (mut up, api) = up_with_deadline(&data);
    // Over the carrier client's 5 s timeout: every answer is lost.
    api.set_faults(&api.carrier, json!({ "latency_ms": 6000 }))
        .await;
    let id = api
        .place_ok(&order("yuri", "SKU-MUG", 1, CARD, ADDRESS))
        .await;
    support::wait_until("the carrier booked it, unheard", || async {
        let ledger = api.ledger(&api.carrier).await;
        ledger["bookings"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["order_id"] == id.as_str()))
    })
    .await;
    support::wait_until("the booking is overdue", || async {
        api.get(&id).await.1["shipment_status"] == "OVERDUE"
    })
    .await;
    api.set_faults(&api.carrier, json!({})).await;
    let done = api.wait_status(&id, &["COMPLETED", "CANCELLED"]).await;
    assert_eq!(done["order_status"], "COMPLETED", "{done}");
    let ledger = api.ledger(&api.payment_gateway).await;
    let refunds = ledger["refunds"].as_array().cloned().unwrap_or_default();
    assert!(
        !refunds.iter().any(|r| r["order_id"] == id.as_str()),
        "{ledger}"
    );
    up.stop();
}
