//! The saga scenario both end-to-end tests run: one order down every path, plus a bulk of plain
//! ones, then a check of every outcome against the ledgers and the stock.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{order, store, warehouse, Api, ADDRESS, CARD};

pub const DECLINED: &str = "4000000000000002";

/// The orders placed, by the path they take.
pub struct Placed {
    pub before: Value,
    pub completed: Vec<String>,
    pub from_store: String,
    pub no_stock: String,
    pub declined: String,
    pub undeliverable: String,
    pub cancelled_in_flight: String,
    pub held: String,
    pub replayed: String,
    pub bulk: usize,
}

impl Placed {
    /// Every order placed.
    pub fn all(&self) -> Vec<String> {
        let mut ids = self.completed.clone();
        ids.extend([
            self.from_store.clone(),
            self.no_stock.clone(),
            self.declined.clone(),
            self.undeliverable.clone(),
            self.cancelled_in_flight.clone(),
            self.held.clone(),
        ]);
        ids
    }
}

/// Place every path's order (and `bulk` plain ones). The cancel-while-paying race is forced
/// with gateway latency.
pub async fn place(api: &Api, bulk: usize) -> Placed {
    let before = api.products().await;

    // Cancel while payment is in flight: the approval arrives after the cancel and is refunded.
    api.set_faults(&api.payment_gateway, json!({ "latency_ms": 1500 }))
        .await;
    let cancelled_in_flight = api
        .place_ok(&order("frank", "SKU-HOODIE", 2, CARD, ADDRESS))
        .await;
    let (status, body) = api.cancel(&cancelled_in_flight).await;
    assert_eq!(status, 202, "cancel accepted while paying: {body}");
    assert_eq!(body["status"], "CANCELLING");
    api.set_faults(&api.payment_gateway, json!({})).await;

    let mut completed = vec![
        api.place_ok(&order("alice", "SKU-MUG", 2, CARD, ADDRESS))
            .await,
    ];
    for i in 0..bulk {
        let customer = format!("bulk-{i}");
        completed.push(
            api.place_ok(&order(&customer, "SKU-MUG", 1, CARD, ADDRESS))
                .await,
        );
    }
    let from_store = api
        .place_ok(&order("bob", "SKU-POSTER", 1, CARD, ADDRESS))
        .await;
    let no_stock = api
        .place_ok(&order("carol", "SKU-VINYL", 1, CARD, ADDRESS))
        .await;
    let declined = api
        .place_ok(&order("dave", "SKU-HOODIE", 1, DECLINED, ADDRESS))
        .await;
    let undeliverable = api
        .place_ok(&order("erin", "SKU-SOCKS", 1, CARD, "9 Undeliverable Road"))
        .await;
    let held = api
        .place_ok(&order(
            "gina",
            "SKU-TSHIRT",
            3,
            CARD,
            "5 Harbor Road [hold]",
        ))
        .await;

    // The same Idempotency-Key twice: one order.
    let replay = order("ivan", "SKU-MUG", 1, CARD, ADDRESS);
    let (first, a) = api.place(&replay, Some("ivan-key-1")).await;
    let (second, b) = api.place(&replay, Some("ivan-key-1")).await;
    assert_eq!((first, second), (201, 200), "{a} {b}");
    assert_eq!(a["order_id"], b["order_id"]);
    let mut other = replay.clone();
    other["lines"][0]["quantity"] = json!(5);
    let (reused, body) = api.place(&other, Some("ivan-key-1")).await;
    assert_eq!(
        reused, 422,
        "a key reused for another order is refused: {body}"
    );
    let replayed = a["order_id"].as_str().unwrap_or_default().to_string();
    completed.push(replayed.clone());

    Placed {
        before,
        completed,
        from_store,
        no_stock,
        declined,
        undeliverable,
        cancelled_in_flight,
        held,
        replayed,
        bulk,
    }
}

/// After `check`: every order is still in the state `check` left it in.
pub async fn check_final(api: &Api, placed: &Placed) {
    for id in &placed.completed {
        assert_eq!(api.get(id).await.1["order_status"], "COMPLETED", "{id}");
    }
    for id in [
        &placed.no_stock,
        &placed.declined,
        &placed.undeliverable,
        &placed.cancelled_in_flight,
        &placed.held,
    ] {
        assert_eq!(api.get(id).await.1["order_status"], "CANCELLED", "{id}");
    }
}

/// Wait for every order's terminal state, cancel the held one and a completed one, then check
/// the ledgers and the stock.
pub async fn check(api: &Api, placed: &Placed) {
    const DONE: &[&str] = &["COMPLETED"];
    const CANCELLED: &[&str] = &["CANCELLED"];
    for id in &placed.completed {
        api.wait_status(id, DONE).await;
    }
    api.wait_status(&placed.from_store, DONE).await;
    let reasons = [
        (&placed.no_stock, "out of stock"),
        (&placed.declined, "payment declined"),
        (&placed.undeliverable, "shipment failed"),
        (&placed.cancelled_in_flight, "cancelled by the customer"),
    ];
    for (id, reason) in reasons {
        let order = api.wait_status(id, CANCELLED).await;
        let why = order["cancel_reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{id}: {why:?} should say {reason:?}");
    }

    // Cancel after confirmation (the parcel is held at the depot): the booking is cancelled.
    api.wait_status(&placed.held, &["CONFIRMED"]).await;
    let (status, body) = api.cancel(&placed.held).await;
    assert_eq!(status, 202, "{body}");
    api.wait_status(&placed.held, CANCELLED).await;
    let (status, body) = api.cancel(&placed.held).await;
    assert_eq!(
        status, 200,
        "cancelling a cancelled order is a no-op: {body}"
    );

    // Cancel after the pivot: refused.
    let (status, body) = api.cancel(&placed.completed[0]).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("no longer be cancelled"));

    // Payment ledger: at most one authorization per order; refunds exactly for the cancelled
    // orders that were approved, once each, for the authorized amount.
    let ledger = api.ledger(&api.payment_gateway).await;
    let mut authorized: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for auth in ledger["authorizations"].as_array().expect("authorizations") {
        let order_id = auth["order_id"].as_str().unwrap_or_default().to_string();
        let entry = (
            auth["status"].as_str().unwrap_or_default().to_string(),
            auth["amount_cents"].as_u64().unwrap_or(0),
        );
        assert!(
            authorized.insert(order_id.clone(), entry).is_none(),
            "order {order_id} charged twice"
        );
    }
    let cancelled_paid: BTreeSet<String> = [
        &placed.no_stock,
        &placed.undeliverable,
        &placed.cancelled_in_flight,
        &placed.held,
    ]
    .into_iter()
    .cloned()
    .collect();
    let mut refunded = BTreeSet::new();
    for refund in ledger["refunds"].as_array().expect("refunds") {
        let order_id = refund["order_id"].as_str().unwrap_or_default().to_string();
        assert!(
            refunded.insert(order_id.clone()),
            "order {order_id} refunded twice"
        );
        let (status, amount) = &authorized[&order_id];
        assert_eq!(status, "approved");
        assert_eq!(
            refund["amount_cents"].as_u64(),
            Some(*amount),
            "refund of {order_id} is the charge"
        );
    }
    assert_eq!(
        refunded, cancelled_paid,
        "refunds match cancelled paid orders one to one"
    );
    assert_eq!(authorized[&placed.declined].0, "declined");
    let total_orders = placed.completed.len() + 6;
    assert_eq!(
        authorized.len(),
        total_orders,
        "every order was authorized once"
    );

    // Carrier ledger: one booking per shipped order, the held one cancelled, none refused.
    let bookings = api.ledger(&api.carrier).await;
    let mut booked = BTreeMap::new();
    for booking in bookings["bookings"].as_array().expect("bookings") {
        let order_id = booking["order_id"].as_str().unwrap_or_default().to_string();
        let status = booking["status"].as_str().unwrap_or_default().to_string();
        assert!(
            booked.insert(order_id.clone(), status).is_none(),
            "{order_id} booked twice"
        );
    }
    assert_eq!(booked[&placed.held], "cancelled");
    assert_eq!(
        booked.len(),
        placed.completed.len() + 2,
        "shipped orders and the held one"
    );

    // Stock: what shipped is gone, everything released is back.
    let after = api.products().await;
    let mugs = 2 + placed.bulk as i64 + 1;
    assert_eq!(
        warehouse(&after, "SKU-MUG"),
        warehouse(&placed.before, "SKU-MUG") - mugs
    );
    for sku in ["SKU-SOCKS", "SKU-HOODIE", "SKU-TSHIRT", "SKU-VINYL"] {
        assert_eq!(
            warehouse(&after, sku),
            warehouse(&placed.before, sku),
            "{sku} released"
        );
    }
    assert_eq!(
        store(&after, "SKU-POSTER", "store-busan"),
        store(&placed.before, "SKU-POSTER", "store-busan") - 1,
        "ship-from-store took one poster"
    );
}
