use chrono::Utc;

use super::aggregate::{Order, OrderCommand, OrderStatus};
use crate::catalog::{PaymentMethod, PlaceOrder};
use crate::engine::testing::{given, lines, now, When};
use crate::events::OrderEvent;
use crate::events::{Inbound, PaymentEvent, ShipmentEvent, StoreEvent};
use crate::rpc::DomainError;

fn placed() -> OrderEvent {
    OrderEvent::OrderCreated {
        order_id: "o1".into(),
        customer: "alice".into(),
        lines: lines(&[("SKU-MUG", 2)]),
        total_cents: 200,
        payment_token: "tok_1".into(),
        card_brand: Some("visa".into()),
        card_last4: Some("4242".into()),
        shipping_address: "1 Main St".into(),
        placed_at: Utc::now(),
        request_fingerprint: "f1".into(),
    }
}

fn confirmed() -> OrderEvent {
    OrderEvent::OrderConfirmed {
        lines: lines(&[("SKU-MUG", 2)]),
        estimated_delivery: "2026-11-26".into(),
        ship_from: Some("warehouse".into()),
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
        payment: PaymentMethod {
            token: "tok_1".into(),
            brand: "visa".into(),
            last4: "4242".into(),
        },
        shipping_address: "1 Main St".into(),
    }
}

/// Place order `o1` as `request()`, a request with `fingerprint`.
fn place(fingerprint: &str) -> OrderCommand {
    OrderCommand::Place {
        order_id: "o1".into(),
        order: Box::new(request()),
        fingerprint: fingerprint.into(),
        placed_at: now(),
    }
}

fn cancelled_with(events: Vec<OrderEvent>, reason: &str) {
    match events.as_slice() {
        [OrderEvent::OrderCancelled { reason: r, .. }] => assert!(r.contains(reason), "{r}"),
        other => panic!("expected OrderCancelled({reason}), got {other:?}"),
    }
}

#[test]
fn given_nothing_when_placed_then_created_and_pending() {
    let created = OrderEvent::OrderCreated {
        order_id: "o1".into(),
        customer: "alice".into(),
        lines: lines(&[("SKU-MUG", 2)]),
        total_cents: 200,
        payment_token: "tok_1".into(),
        card_brand: Some("visa".into()),
        card_last4: Some("4242".into()),
        shipping_address: "1 Main St".into(),
        placed_at: now(),
        request_fingerprint: "f1".into(),
    };
    given::<Order>([])
        .when(place("f1"))
        .then(vec![created.clone()]);
    let order = given::<Order>([created]);
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.order_id, "o1");
}

#[test]
fn given_placed_when_placed_again_then_nothing_or_refused_for_another_request() {
    given::<Order>([placed()]).when(place("f1")).then(vec![]);
    given::<Order>([placed()])
        .when(place("f2"))
        .then_err(|e| matches!(e, DomainError::Rejected(_)));
}

#[test]
fn given_pending_or_confirmed_when_cancelled_then_cancel_requested_once() {
    for history in [vec![placed()], vec![placed(), confirmed()]] {
        given::<Order>(history.clone())
            .when(OrderCommand::Cancel { customer: None })
            .then(vec![OrderEvent::OrderCancelRequested {}]);
        let requested = history
            .into_iter()
            .chain([OrderEvent::OrderCancelRequested {}]);
        given::<Order>(requested)
            .when(OrderCommand::Cancel { customer: None })
            .then(vec![]);
    }
}

#[test]
fn given_another_customers_order_when_cancelled_then_not_found() {
    let mine = Some("alice".to_string());
    given::<Order>([placed()])
        .when(OrderCommand::Cancel { customer: mine })
        .then(vec![OrderEvent::OrderCancelRequested {}]);
    given::<Order>([placed()])
        .when(OrderCommand::Cancel {
            customer: Some("mallory".into()),
        })
        .then_err(|e| matches!(e, DomainError::NotFound(_)));
}

#[test]
fn given_shipped_or_completed_when_cancelled_then_conflict() {
    let shipped = [
        placed(),
        confirmed(),
        OrderEvent::OrderShipped { ship_from: None },
    ];
    let conflict = |e: &DomainError| matches!(e, DomainError::Conflict(_));
    given::<Order>(shipped.clone())
        .when(OrderCommand::Cancel { customer: None })
        .then_err(conflict);
    let completed = shipped.into_iter().chain([OrderEvent::OrderCompleted {}]);
    given::<Order>(completed)
        .when(OrderCommand::Cancel { customer: None })
        .then_err(conflict);
    given::<Order>([])
        .when(OrderCommand::Cancel { customer: None })
        .then_err(|e| matches!(e, DomainError::NotFound(_)));
    given::<Order>([
        placed(),
        OrderEvent::OrderCancelled {
            reason: "x".into(),
            confirmed: false,
            skus: Vec::new(),
        },
    ])
    .when(OrderCommand::Cancel { customer: None })
    .then(vec![]);
}

#[test]
fn given_pending_when_a_step_fails_then_cancelled_with_the_reason() {
    let order = given::<Order>([placed()]);
    let declined = Inbound::Payment(PaymentEvent::PaymentDeclined {
        amount_cents: 200,
        reason: "card declined".into(),
    });
    cancelled_with(
        order.when_event("o1", &declined).events(),
        "payment declined",
    );
    let unavailable = Inbound::Store(StoreEvent::StoreStockUnavailable {
        order_id: "o1".into(),
        lines: vec![],
    });
    cancelled_with(
        order.when_event("o1", &unavailable).events(),
        "out of stock",
    );
    let failed = Inbound::Shipment(ShipmentEvent::ShipmentFailed {
        reason: "undeliverable".into(),
        booking_unknown: false,
    });
    cancelled_with(order.when_event("o1", &failed).events(), "shipment failed");
}

#[test]
fn given_the_parcel_left_when_a_failure_arrives_then_it_is_refused_not_compensated() {
    let failed = Inbound::Shipment(ShipmentEvent::ShipmentFailed {
        reason: "forged".into(),
        booking_unknown: false,
    });
    let shipped = given::<Order>([
        placed(),
        confirmed(),
        OrderEvent::OrderShipped { ship_from: None },
    ]);
    let reason = shipped.when_event("o1", &failed).refusal();
    assert!(
        reason.contains("ShipmentFailed") && reason.contains("SHIPPED"),
        "{reason}"
    );
    let completed = given::<Order>([
        placed(),
        confirmed(),
        OrderEvent::OrderShipped { ship_from: None },
        OrderEvent::OrderCompleted {},
    ]);
    let unavailable = Inbound::Store(StoreEvent::StoreStockUnavailable {
        order_id: "o1".into(),
        lines: vec![],
    });
    assert!(completed
        .when_event("o1", &unavailable)
        .refusal()
        .contains("COMPLETED"));
}

#[test]
fn given_pending_when_scheduled_started_delivered_then_confirmed_shipped_completed() {
    let order = given::<Order>([placed()]);
    let events = order.when_event("o1", &scheduled()).events();
    assert!(
        matches!(events.as_slice(), [OrderEvent::OrderConfirmed { lines, .. }] if lines.len() == 1)
    );
    let order = given::<Order>([placed(), confirmed()]);
    assert_eq!(
        order
            .when_event("o1", &Inbound::Shipment(ShipmentEvent::ShipmentStarted {}))
            .events(),
        vec![OrderEvent::OrderShipped {
            ship_from: Some("warehouse".into())
        }],
        "it says where the parcel left from, as the carrier was booked"
    );
    let delivered = Inbound::Shipment(ShipmentEvent::ShipmentDelivered {});
    assert_eq!(
        order.when_event("o1", &delivered).events(),
        vec![
            OrderEvent::OrderShipped {
                ship_from: Some("warehouse".into())
            },
            OrderEvent::OrderCompleted {}
        ]
    );
    let order = given::<Order>([
        placed(),
        confirmed(),
        OrderEvent::OrderShipped { ship_from: None },
    ]);
    assert_eq!(
        order.when_event("o1", &delivered).events(),
        vec![OrderEvent::OrderCompleted {}]
    );
    assert_eq!(
        given::<Order>([
            placed(),
            confirmed(),
            OrderEvent::OrderShipped { ship_from: None },
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
    cancelled_with(
        order.when_event("o1", &cancelled).events(),
        "by the customer",
    );
    assert!(
        matches!(
            order.when_event("o1", &cancelled).events().as_slice(),
            [OrderEvent::OrderCancelled {
                confirmed: true,
                skus,
                ..
            }] if skus == &["SKU-MUG"]
        ),
        "a confirmed order's cancel says its stock was settled, and which SKUs it had"
    );
    let rejected = Inbound::Shipment(ShipmentEvent::ShipmentCancelRejected {
        reason: "left".into(),
    });
    assert_eq!(
        order.when_event("o1", &rejected).events(),
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
            confirmed: false,
            skus: Vec::new(),
        },
    ]);
    for event in [
        scheduled(),
        Inbound::Shipment(ShipmentEvent::ShipmentCancelled { reason: "x".into() }),
    ] {
        assert!(order.when_event("o1", &event).events().is_empty());
    }
    assert!(
        Order::default()
            .when_event("o1", &scheduled())
            .events()
            .is_empty(),
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
    cancelled_with(
        order.when_event("o1", &abandoned).events(),
        "past the deadline",
    );
}

#[test]
fn the_cancel_reply_says_what_the_cancel_did() {
    use super::aggregate::CancelOutcome;
    use crate::engine::Executed;
    let outcome = |history: Vec<OrderEvent>, recorded: Vec<OrderEvent>| {
        let state = given::<Order>(history.into_iter().chain(recorded.clone()));
        super::cancelled(&Executed {
            version: 0,
            state,
            events: recorded,
        })
        .outcome
    };
    let requested = OrderEvent::OrderCancelRequested {};
    assert_eq!(
        outcome(vec![placed()], vec![requested.clone()]),
        CancelOutcome::Requested
    );
    assert_eq!(
        outcome(vec![placed(), requested], vec![]),
        CancelOutcome::AlreadyRequested
    );
    let cancelled = OrderEvent::OrderCancelled {
        reason: "x".into(),
        confirmed: false,
        skus: Vec::new(),
    };
    assert_eq!(
        outcome(vec![placed(), cancelled], vec![]),
        CancelOutcome::AlreadyCancelled
    );
}
