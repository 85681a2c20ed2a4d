use chrono::Utc;

use super::aggregate::{CancelOutcome, Order, OrderStatus};
use crate::catalog::PlaceOrder;
use crate::engine::{given, lines};
use crate::events::OrderEvent;
use crate::events::{Inbound, PaymentEvent, ShipmentEvent, StoreEvent};
use crate::rpc::DomainError;

fn placed() -> OrderEvent {
    OrderEvent::OrderCreated {
        order_id: "o1".into(),
        customer: "alice".into(),
        lines: lines(&[("SKU-MUG", 2)]),
        total_cents: 200,
        payment_token: "4242424242424242".into(),
        shipping_address: "1 Main St".into(),
        placed_at: Utc::now(),
        request_fingerprint: "f1".into(),
    }
}

fn confirmed() -> OrderEvent {
    OrderEvent::OrderConfirmed {
        lines: lines(&[("SKU-MUG", 2)]),
        estimated_delivery: "2026-11-26".into(),
    }
}

fn scheduled() -> Inbound {
    Inbound::Shipment(ShipmentEvent::ShipmentScheduled {
        booking_id: "bk".into(),
        carrier: "c".into(),
        estimated_delivery: "2026-11-26".into(),
        ship_from: "warehouse".into(),
    })
}

fn request() -> PlaceOrder {
    PlaceOrder {
        customer: "alice".into(),
        lines: lines(&[("SKU-MUG", 2)]),
        total_cents: 200,
        card_number: "4242424242424242".into(),
        shipping_address: "1 Main St".into(),
    }
}

fn cancelled_with(events: Vec<OrderEvent>, reason: &str) {
    match events.as_slice() {
        [OrderEvent::OrderCancelled { reason: r }] => assert!(r.contains(reason), "{r}"),
        other => panic!("expected OrderCancelled({reason}), got {other:?}"),
    }
}

#[test]
fn given_nothing_when_placed_then_created_and_pending() {
    let events = Order::default()
        .place("o1", &request(), "f1", Utc::now())
        .unwrap();
    assert!(matches!(
        events.as_slice(),
        [OrderEvent::OrderCreated {
            total_cents: 200,
            ..
        }]
    ));
    let order = given::<Order>(events);
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.order_id, "o1");
}

#[test]
fn given_placed_when_placed_again_then_nothing_or_refused_for_another_request() {
    let order = given::<Order>([placed()]);
    assert!(order
        .place("o1", &request(), "f1", Utc::now())
        .unwrap()
        .is_empty());
    let err = order.place("o1", &request(), "f2", Utc::now()).unwrap_err();
    assert!(matches!(err, DomainError::Rejected(_)), "{err:?}");
}

#[test]
fn given_pending_or_confirmed_when_cancelled_then_cancel_requested_once() {
    for history in [vec![placed()], vec![placed(), confirmed()]] {
        let order = given::<Order>(history);
        let (outcome, events) = order.cancel().unwrap();
        assert_eq!(outcome, CancelOutcome::Requested);
        assert_eq!(events, vec![OrderEvent::OrderCancelRequested {}]);
        let order = given::<Order>([placed(), OrderEvent::OrderCancelRequested {}]);
        assert_eq!(
            order.cancel().unwrap(),
            (CancelOutcome::AlreadyRequested, vec![])
        );
    }
}

#[test]
fn given_shipped_or_completed_when_cancelled_then_conflict() {
    let shipped = [placed(), confirmed(), OrderEvent::OrderShipped {}];
    let conflict = |e: DomainError| matches!(e, DomainError::Conflict(_));
    assert!(conflict(
        given::<Order>(shipped.clone()).cancel().unwrap_err()
    ));
    let completed = shipped.into_iter().chain([OrderEvent::OrderCompleted {}]);
    assert!(conflict(given::<Order>(completed).cancel().unwrap_err()));
    assert!(matches!(
        Order::default().cancel().unwrap_err(),
        DomainError::NotFound(_)
    ));
    let cancelled = given::<Order>([placed(), OrderEvent::OrderCancelled { reason: "x".into() }]);
    assert_eq!(
        cancelled.cancel().unwrap(),
        (CancelOutcome::AlreadyCancelled, vec![])
    );
}

#[test]
fn given_pending_when_a_step_fails_then_cancelled_with_the_reason() {
    let order = given::<Order>([placed()]);
    let declined = Inbound::Payment(PaymentEvent::PaymentDeclined {
        amount_cents: 200,
        reason: "card declined".into(),
    });
    cancelled_with(order.react(&declined), "payment declined");
    let unavailable = Inbound::Store(StoreEvent::StoreStockUnavailable {
        order_id: "o1".into(),
        lines: vec![],
    });
    cancelled_with(order.react(&unavailable), "out of stock");
    let failed = Inbound::Shipment(ShipmentEvent::ShipmentFailed {
        reason: "undeliverable".into(),
        booking_unknown: false,
    });
    cancelled_with(order.react(&failed), "shipment failed");
}

#[test]
fn given_pending_when_scheduled_started_delivered_then_confirmed_shipped_completed() {
    let order = given::<Order>([placed()]);
    let events = order.react(&scheduled());
    assert!(
        matches!(events.as_slice(), [OrderEvent::OrderConfirmed { lines, .. }] if lines.len() == 1)
    );
    let order = given::<Order>([placed(), confirmed()]);
    assert_eq!(
        order.react(&Inbound::Shipment(ShipmentEvent::ShipmentStarted {})),
        vec![OrderEvent::OrderShipped {}]
    );
    let delivered = Inbound::Shipment(ShipmentEvent::ShipmentDelivered {});
    assert_eq!(
        order.react(&delivered),
        vec![OrderEvent::OrderShipped {}, OrderEvent::OrderCompleted {}]
    );
    let order = given::<Order>([placed(), confirmed(), OrderEvent::OrderShipped {}]);
    assert_eq!(order.react(&delivered), vec![OrderEvent::OrderCompleted {}]);
    assert_eq!(
        given::<Order>([
            placed(),
            confirmed(),
            OrderEvent::OrderShipped {},
            OrderEvent::OrderCompleted {}
        ])
        .status,
        OrderStatus::Completed
    );
}

#[test]
fn given_cancel_requested_when_shipment_answers_then_cancelled_or_rejected() {
    let order = given::<Order>([placed(), confirmed(), OrderEvent::OrderCancelRequested {}]);
    let cancelled = Inbound::Shipment(ShipmentEvent::ShipmentCancelled { reason: "x".into() });
    cancelled_with(order.react(&cancelled), "by the customer");
    let rejected = Inbound::Shipment(ShipmentEvent::ShipmentCancelRejected {
        reason: "left".into(),
    });
    assert_eq!(
        order.react(&rejected),
        vec![OrderEvent::OrderCancelRejected {
            reason: "left".into()
        }]
    );
    let order = given::<Order>([
        placed(),
        OrderEvent::OrderCancelRequested {},
        OrderEvent::OrderCancelRejected {
            reason: "left".into(),
        },
    ]);
    assert!(!order.cancel_requested);
}

#[test]
fn given_cancelled_when_anything_arrives_then_nothing() {
    let order = given::<Order>([
        placed(),
        OrderEvent::OrderCancelled {
            reason: "declined".into(),
        },
    ]);
    for event in [
        scheduled(),
        Inbound::Shipment(ShipmentEvent::ShipmentCancelled { reason: "x".into() }),
    ] {
        assert!(order.react(&event).is_empty());
    }
    assert!(
        Order::default().react(&scheduled()).is_empty(),
        "unknown orders ignore events"
    );
}

#[test]
fn given_pending_when_payment_is_abandoned_then_cancelled_with_its_reason() {
    let order = given::<Order>([placed()]);
    let abandoned = Inbound::Payment(PaymentEvent::PaymentAbandoned {
        amount_cents: 200,
        payment_token: "4242".into(),
        reason: "payment gateway unavailable past the deadline".into(),
    });
    cancelled_with(order.react(&abandoned), "past the deadline");
}
