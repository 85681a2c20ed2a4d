use bus::{Domain, Envelope};
use chrono::{Duration, Utc};
use serde_json::json;

use super::model::OrderReadModel;

const ORDER: &str = "01939a6e-0000-7000-8000-000000000001";

fn event(
    domain: Domain,
    event_type: &str,
    version: u64,
    seconds: i64,
    data: serde_json::Value,
) -> Envelope {
    let mut e = Envelope::new(domain, event_type, ORDER, data).unwrap();
    e.aggregateversion = Some(version);
    e.time = Utc::now() + Duration::seconds(seconds);
    e
}

fn saga() -> Vec<Envelope> {
    let lines = json!([{ "sku": "SKU-MUG", "quantity": 1, "unit_price_cents": 1250 }]);
    vec![
        event(
            Domain::Orders,
            "OrderCreated",
            1,
            0,
            json!({
            "order_id": ORDER, "customer": "a", "lines": lines, "total_cents": 1250,
            "payment_token": "4242", "shipping_address": "x", "placed_at": Utc::now(),
            "request_fingerprint": "f" }),
        ),
        event(
            Domain::Payments,
            "PaymentApproved",
            1,
            1,
            json!({
            "amount_cents": 1250, "payment_method": "card", "authorization_id": "a1",
            "approved_at": Utc::now(), "lines": lines, "shipping_address": "x" }),
        ),
        event(
            Domain::Inventory,
            "InventoryReserved",
            41,
            2,
            json!({
            "order_id": ORDER, "lines": lines, "shipping_address": "x" }),
        ),
        event(
            Domain::Shipments,
            "ShipmentBookingRequested",
            1,
            3,
            json!({
            "lines": lines, "shipping_address": "x", "ship_from": "warehouse" }),
        ),
        event(
            Domain::Shipments,
            "ShipmentScheduled",
            2,
            4,
            json!({
            "booking_id": "b", "carrier": "c", "estimated_delivery": "2026-11-26", "ship_from": "warehouse" }),
        ),
        event(
            Domain::Orders,
            "OrderConfirmed",
            2,
            5,
            json!({ "lines": lines, "estimated_delivery": "2026-11-26" }),
        ),
        event(
            Domain::Recommendations,
            "RecommendationUpdated",
            7,
            6,
            json!({
            "order_id": ORDER, "skus": ["SKU-MUG"], "recommended": ["SKU-SOCKS"] }),
        ),
        event(Domain::Shipments, "ShipmentStarted", 3, 7, json!({})),
        event(Domain::Orders, "OrderShipped", 3, 8, json!({})),
    ]
}

fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> OrderReadModel {
    let mut row = OrderReadModel::new(ORDER);
    for e in events {
        row.apply(e);
    }
    row
}

#[test]
fn given_the_saga_in_order_then_every_field_is_filled() {
    let row = fold(&saga());
    assert_eq!(row.order_status.as_deref(), Some("SHIPPED"));
    assert_eq!(row.total_amount, Some(1250));
    assert_eq!(row.payment_method.as_deref(), Some("card"));
    assert_eq!(row.payment_status.as_deref(), Some("APPROVED"));
    assert!(row.payment_approved_at.is_some());
    assert_eq!(row.inventory_available, Some(true));
    assert_eq!(row.store_stock_available, None);
    assert_eq!(row.shipment_status.as_deref(), Some("IN_TRANSIT"));
    assert_eq!(row.estimated_delivery.as_deref(), Some("2026-11-26"));
    assert_eq!(row.recommended_items, vec!["SKU-SOCKS"]);
    assert_eq!(row.timeline.len(), 9);
    assert_eq!(row.versions["order"], 3);
    assert_eq!(row.versions["inventory"], 41);
}

#[test]
fn given_any_arrival_order_and_duplicates_then_the_same_row() {
    let events = saga();
    let expected = fold(&events);
    // Reversed, and every event twice: a later status is never overwritten by an earlier one.
    let mut shuffled: Vec<&Envelope> = events.iter().rev().collect();
    shuffled.extend(events.iter());
    assert_eq!(fold(shuffled), expected);
    // Each source's events out of order across streams.
    let mut interleaved: Vec<&Envelope> = events.iter().filter(|e| e.source != "order").collect();
    interleaved.extend(events.iter().filter(|e| e.source == "order").rev());
    assert_eq!(fold(interleaved), expected);
}

#[test]
fn given_a_duplicate_then_apply_says_nothing_changed() {
    let events = saga();
    let mut row = fold(&events);
    assert!(!row.apply(&events[3]));
}

#[test]
fn given_a_cancel_request_then_cancelling_until_the_answer() {
    let mut events = saga()[..6].to_vec();
    events.push(event(
        Domain::Orders,
        "OrderCancelRequested",
        3,
        6,
        json!({}),
    ));
    assert_eq!(fold(&events).order_status.as_deref(), Some("CANCELLING"));
    events.push(event(
        Domain::Orders,
        "OrderCancelled",
        4,
        7,
        json!({ "reason": "cancelled by the customer" }),
    ));
    events.push(event(
        Domain::Payments,
        "PaymentRefunded",
        2,
        8,
        json!({ "amount_cents": 1250, "refund_id": "r", "reason": "x" }),
    ));
    let row = fold(&events);
    assert_eq!(row.order_status.as_deref(), Some("CANCELLED"));
    assert_eq!(
        row.cancel_reason.as_deref(),
        Some("cancelled by the customer")
    );
    assert_eq!(row.payment_status.as_deref(), Some("REFUNDED"));
}
