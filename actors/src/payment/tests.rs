use chrono::{DateTime, Duration, Utc};

use super::aggregate::{GatewayAnswer, GatewayCall, Payment};
use crate::engine::testing::{given, lines, now, When};
use crate::engine::{Aggregate, Plan};
use crate::events::PaymentEvent;
use crate::events::{Inbound, OrderEvent, ShipmentEvent, StoreEvent};

fn created() -> Inbound {
    created_at(Utc::now())
}

fn created_at(placed_at: DateTime<Utc>) -> Inbound {
    Inbound::Order(OrderEvent::OrderCreated {
        order_id: "o1".into(),
        customer: "alice".into(),
        lines: lines(&[("SKU-MUG", 2)]),
        total_cents: 200,
        payment_token: "4242".into(),
        card_brand: Some("visa".into()),
        card_last4: Some("4242".into()),
        shipping_address: "1 Main St".into(),
        placed_at,
        request_fingerprint: "f".into(),
    })
}

fn approved() -> PaymentEvent {
    PaymentEvent::PaymentApproved {
        amount_cents: 200,
        payment_method: "card".into(),
        authorization_id: "auth_1".into(),
        approved_at: Utc::now(),
        lines: lines(&[("SKU-MUG", 2)]),
        shipping_address: "1 Main St".into(),
    }
}

fn cancelled() -> Inbound {
    Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
        confirmed: false,
        skus: Vec::new(),
    })
}

/// Other steps' failures: the order decides whether to believe them, and payment refunds on
/// the order's `OrderCancelled` only.
fn failures_of_other_steps() -> Vec<Inbound> {
    vec![
        Inbound::Store(StoreEvent::StoreStockUnavailable {
            order_id: "o1".into(),
            lines: vec![],
        }),
        Inbound::Shipment(ShipmentEvent::ShipmentFailed {
            reason: "undeliverable".into(),
            booking_unknown: false,
        }),
    ]
}

fn planned_call(payment: &Payment, event: &Inbound) -> Option<GatewayCall> {
    match payment.when_event("o1", event) {
        Plan::Call(call) => Some(call),
        Plan::Emit(events) => {
            assert!(events.is_empty(), "{events:?}");
            None
        }
        Plan::Refuse(reason) => panic!("refused: {reason}"),
    }
}

#[test]
fn given_nothing_when_created_then_authorize_the_total() {
    let call = planned_call(&Payment::default(), &created()).unwrap();
    assert!(matches!(
        call,
        GatewayCall::Authorize {
            amount_cents: 200,
            ..
        }
    ));
}

#[test]
fn given_an_answer_then_approved_with_the_order_data_or_declined() {
    let call = planned_call(&Payment::default(), &created()).unwrap();
    let events = Payment::default().outcome(
        call.clone(),
        GatewayAnswer::Approved {
            authorization_id: "auth_1".into(),
        },
        Utc::now(),
    );
    match events.as_slice() {
        [PaymentEvent::PaymentApproved {
            lines,
            shipping_address,
            authorization_id,
            ..
        }] => {
            assert_eq!(lines.len(), 1, "lines carried on for inventory");
            assert_eq!(shipping_address, "1 Main St");
            assert_eq!(authorization_id, "auth_1");
        }
        other => panic!("{other:?}"),
    }
    let events = Payment::default().outcome(
        call,
        GatewayAnswer::Declined {
            reason: "card declined".into(),
        },
        Utc::now(),
    );
    assert!(matches!(
        events.as_slice(),
        [PaymentEvent::PaymentDeclined { .. }]
    ));
}

#[test]
fn given_attempted_when_created_again_then_no_second_charge() {
    assert_eq!(
        planned_call(&given::<Payment>([approved()]), &created()),
        None
    );
    let declined = PaymentEvent::PaymentDeclined {
        amount_cents: 200,
        reason: "x".into(),
    };
    assert_eq!(
        planned_call(&given::<Payment>([declined]), &created()),
        None
    );
}

#[test]
fn given_approved_when_cancelled_then_refund_once_and_never_on_a_failure_alone() {
    let payment = given::<Payment>([approved()]);
    for event in failures_of_other_steps() {
        assert_eq!(planned_call(&payment, &event), None, "{event:?}");
    }
    {
        let event = cancelled();
        let call = planned_call(&payment, &event).unwrap();
        assert!(
            matches!(call, GatewayCall::Refund { amount_cents: 200, ref authorization_id, .. } if authorization_id == "auth_1")
        );
        let events = payment.outcome(
            call,
            GatewayAnswer::Refunded {
                refund_id: "r1".into(),
            },
            Utc::now(),
        );
        assert!(matches!(
            events.as_slice(),
            [PaymentEvent::PaymentRefunded {
                amount_cents: 200,
                ..
            }]
        ));
        let refunded = given::<Payment>([approved(), events[0].clone()]);
        assert_eq!(planned_call(&refunded, &cancelled()), None, "refunded once");
    }
}

#[test]
fn given_declined_or_nothing_when_failure_then_nothing_to_refund() {
    let declined = given::<Payment>([PaymentEvent::PaymentDeclined {
        amount_cents: 200,
        reason: "x".into(),
    }]);
    assert_eq!(planned_call(&declined, &cancelled()), None);
    for event in failures_of_other_steps() {
        assert_eq!(planned_call(&Payment::default(), &event), None);
    }
}

#[test]
fn given_nothing_when_the_cancel_overtakes_order_created_then_voided_and_the_late_charge_refunded()
{
    // OrderCreated waits for a retry (gateway down); the cancel is processed first.
    let cancelled = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
        confirmed: false,
        skus: Vec::new(),
    });
    let events = Payment::default().when_event("o1", &cancelled).events();
    assert!(matches!(
        events.as_slice(),
        [PaymentEvent::PaymentVoided { .. }]
    ));
    let voided = given::<Payment>(events);
    let call = planned_call(&voided, &created()).unwrap();
    assert!(matches!(
        call,
        GatewayCall::AuthorizeThenRefund {
            amount_cents: 200,
            ..
        }
    ));
    let events = voided.outcome(
        call,
        GatewayAnswer::Refunded {
            refund_id: "r".into(),
        },
        Utc::now(),
    );
    assert!(matches!(
        events.as_slice(),
        [PaymentEvent::PaymentRefunded {
            amount_cents: 200,
            ..
        }]
    ));
    let done = given::<Payment>([
        PaymentEvent::PaymentVoided { reason: "x".into() },
        events[0].clone(),
    ]);
    assert_eq!(
        done.when_event("o1", &created()),
        Plan::Emit(vec![]),
        "charged and refunded once"
    );
    assert_eq!(done.when_event("o1", &cancelled), Plan::Emit(vec![]));
}

#[test]
fn given_an_unavailable_gateway_past_the_deadline_then_abandoned_and_voided_once_it_is_back() {
    let deadline = Duration::seconds(60);
    let placed = |ago| created_at(now() - Duration::seconds(ago));
    let call = planned_call(&Payment::default(), &placed(61)).unwrap();
    let give_up = |event: &Inbound, call: &GatewayCall| {
        Payment::default().give_up(event, call, "gateway unavailable", now(), deadline)
    };
    assert_eq!(
        give_up(&placed(59), &call),
        None,
        "retried until the deadline"
    );
    let abandoned = give_up(&placed(61), &call).unwrap();
    assert!(matches!(
        abandoned,
        PaymentEvent::PaymentAbandoned {
            amount_cents: 200,
            ref reason,
            ..
        } if reason.contains("past the deadline: gateway unavailable")
    ));
    let payment = given::<Payment>([abandoned.clone()]);
    assert_eq!(
        planned_call(&payment, &created()),
        None,
        "no authorization after giving up"
    );
    // Its own PaymentAbandoned comes back: void whatever an unanswered attempt charged.
    let void = planned_call(&payment, &Inbound::Payment(abandoned.clone())).unwrap();
    assert!(matches!(
        void,
        GatewayCall::AuthorizeThenRefund {
            amount_cents: 200,
            ..
        }
    ));
    assert_eq!(
        give_up(&Inbound::Payment(abandoned.clone()), &void),
        None,
        "compensations are never given up"
    );
    let refunded = payment.outcome(
        void,
        GatewayAnswer::Refunded {
            refund_id: "r".into(),
        },
        Utc::now(),
    );
    let done = given::<Payment>([abandoned.clone(), refunded[0].clone()]);
    assert_eq!(
        planned_call(&done, &Inbound::Payment(abandoned)),
        None,
        "voided once"
    );
    let refund = GatewayCall::Refund {
        authorization_id: "a".into(),
        amount_cents: 1,
        reason: "x".into(),
    };
    assert_eq!(
        give_up(&placed(61), &refund),
        None,
        "compensations are never given up"
    );
}

#[test]
fn given_approved_when_the_order_ships_then_closed_once_and_never_refunded() {
    let shipped = Inbound::Order(OrderEvent::OrderShipped { ship_from: None });
    let payment = given::<Payment>([approved()]);
    assert!(!payment.is_closed(), "a cancel may still refund it");
    assert_eq!(
        payment.when_event("o1", &shipped),
        Plan::Emit(vec![PaymentEvent::PaymentClosed {}])
    );
    let closed = given::<Payment>([approved(), PaymentEvent::PaymentClosed {}]);
    assert!(closed.is_closed());
    assert_eq!(
        closed.when_event("o1", &shipped),
        Plan::Emit(vec![]),
        "once"
    );
    let late_cancel = closed.when_event("o1", &cancelled());
    assert!(
        matches!(&late_cancel, Plan::Refuse(reason) if reason.contains("final")),
        "a cancel after the parcel left is not believed: {late_cancel:?}"
    );
    // Already ended: nothing to close.
    let refunded = PaymentEvent::PaymentRefunded {
        amount_cents: 200,
        refund_id: "r1".into(),
        reason: "x".into(),
    };
    let ended = [
        vec![PaymentEvent::PaymentDeclined {
            amount_cents: 200,
            reason: "x".into(),
        }],
        vec![approved(), refunded.clone()],
        vec![PaymentEvent::PaymentVoided { reason: "x".into() }, refunded],
    ];
    for events in ended {
        let payment = given::<Payment>(events);
        assert_eq!(payment.when_event("o1", &shipped), Plan::Emit(vec![]));
    }
    // Never approved here (the approval lost with the database and the stream's tail): not
    // believed, so it waits in DLQ rather than leave the payment open for good.
    assert!(matches!(
        Payment::default().when_event("o1", &shipped),
        Plan::Refuse(reason) if reason.contains("before its payment was approved")
    ));
}
