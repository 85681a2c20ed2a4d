use super::aggregate::{BookingRequest, CarrierAnswer, CarrierCall, Shipment, ShipmentStatus};
use crate::engine::{given, lines, Plan};
use crate::events::ShipmentEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent, StoreEvent};

trait PlanNow {
    fn plan_now(&self, event: &Inbound) -> Plan<ShipmentEvent, CarrierCall>;
}

impl PlanNow for Shipment {
    fn plan_now(&self, event: &Inbound) -> Plan<ShipmentEvent, CarrierCall> {
        self.plan(event, at())
    }
}

fn at() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
        .unwrap()
        .into()
}

fn reserved() -> Inbound {
    Inbound::Inventory(InventoryEvent::InventoryReserved {
        order_id: "o1".into(),
        lines: lines(&[("SKU-MUG", 1)]),
        shipping_address: "1 Main St".into(),
    })
}

fn requested() -> ShipmentEvent {
    ShipmentEvent::ShipmentBookingRequested {
        lines: lines(&[("SKU-MUG", 1)]),
        shipping_address: "1 Main St".into(),
        ship_from: "warehouse".into(),
        requested_at: Some(at()),
    }
}

fn request() -> BookingRequest {
    BookingRequest {
        lines: lines(&[("SKU-MUG", 1)]),
        shipping_address: "1 Main St".into(),
        ship_from: "warehouse".into(),
    }
}

fn cancel_requested() -> Inbound {
    Inbound::Order(OrderEvent::OrderCancelRequested {})
}

fn scheduled() -> ShipmentEvent {
    ShipmentEvent::ShipmentScheduled {
        booking_id: "bk1".into(),
        carrier: "c".into(),
        estimated_delivery: "2026-11-26".into(),
        ship_from: "warehouse".into(),
    }
}

fn booked(status: &str) -> CarrierAnswer {
    CarrierAnswer::Booked {
        booking_id: "bk1".into(),
        estimated_delivery: "d".into(),
        status: status.into(),
    }
}

fn emitted(plan: Plan<ShipmentEvent, CarrierCall>) -> Vec<ShipmentEvent> {
    match plan {
        Plan::Emit(events) => events,
        Plan::Call(call) => panic!("expected events, got a call {call:?}"),
    }
}

#[test]
fn given_nothing_when_stock_reserved_then_the_booking_is_requested_first() {
    let events = emitted(Shipment::default().plan_now(&reserved()));
    assert_eq!(events, vec![requested()]);
    let from_store = Inbound::Store(StoreEvent::StoreStockReserved {
        order_id: "o1".into(),
        store_id: "store-busan".into(),
        lines: lines(&[("SKU-POSTER", 1)]),
        shipping_address: "1 Main St".into(),
    });
    match emitted(Shipment::default().plan_now(&from_store)).as_slice() {
        [ShipmentEvent::ShipmentBookingRequested { ship_from, .. }] => {
            assert_eq!(ship_from, "store-busan")
        }
        other => panic!("{other:?}"),
    }
    assert!(emitted(given::<Shipment>([requested()]).plan_now(&reserved())).is_empty());
}

#[test]
fn given_requested_when_the_request_comes_back_then_book_and_record_the_answer() {
    let shipment = given::<Shipment>([requested()]);
    let Plan::Call(call) = shipment.plan_now(&Inbound::Shipment(requested())) else {
        panic!("expected a booking call");
    };
    assert_eq!(call, CarrierCall::Book(request()));
    assert!(matches!(
        Shipment::outcome(call.clone(), booked("booked")).as_slice(),
        [ShipmentEvent::ShipmentScheduled { .. }]
    ));
    let refused = CarrierAnswer::Refused {
        reason: "undeliverable address".into(),
    };
    assert!(matches!(
        Shipment::outcome(call.clone(), refused).as_slice(),
        [ShipmentEvent::ShipmentFailed { .. }]
    ));
    // A booking found by its key after a lost answer may have moved on.
    assert!(matches!(
        Shipment::outcome(call, booked("delivered")).as_slice(),
        [
            ShipmentEvent::ShipmentScheduled { .. },
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentDelivered {}
        ]
    ));
    let done = given::<Shipment>([requested(), scheduled()]);
    assert!(
        emitted(done.plan_now(&Inbound::Shipment(requested()))).is_empty(),
        "booked once"
    );
}

#[test]
fn given_nothing_requested_when_cancel_requested_then_cancelled_and_later_stock_is_not_shipped() {
    let events = emitted(Shipment::default().plan_now(&cancel_requested()));
    assert!(matches!(
        events.as_slice(),
        [ShipmentEvent::ShipmentCancelled { .. }]
    ));
    let shipment = given::<Shipment>(events);
    assert!(
        emitted(shipment.plan_now(&reserved())).is_empty(),
        "the tombstone stops a late booking"
    );
}

#[test]
fn given_requested_but_unanswered_when_cancel_requested_then_book_by_key_and_cancel() {
    let shipment = given::<Shipment>([requested()]);
    let Plan::Call(call) = shipment.plan_now(&cancel_requested()) else {
        panic!()
    };
    assert_eq!(call, CarrierCall::BookThenCancel(request()));
    let cancelled = CarrierAnswer::BookedThenCancel {
        booking: Box::new(booked("booked")),
        cancel: Some(Box::new(CarrierAnswer::Cancelled)),
    };
    assert!(matches!(
        Shipment::outcome(call.clone(), cancelled).as_slice(),
        [
            ShipmentEvent::ShipmentScheduled { .. },
            ShipmentEvent::ShipmentCancelled { .. }
        ]
    ));
    // The booking was made before the answer was lost, and the parcel has left since.
    let left = CarrierAnswer::BookedThenCancel {
        booking: Box::new(booked("picked_up")),
        cancel: None,
    };
    assert!(matches!(
        Shipment::outcome(call.clone(), left).as_slice(),
        [
            ShipmentEvent::ShipmentScheduled { .. },
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentCancelRejected { .. }
        ]
    ));
    let refused = CarrierAnswer::BookedThenCancel {
        booking: Box::new(CarrierAnswer::Refused {
            reason: "undeliverable".into(),
        }),
        cancel: None,
    };
    assert!(matches!(
        Shipment::outcome(call, refused).as_slice(),
        [ShipmentEvent::ShipmentFailed { .. }]
    ));
}

#[test]
fn given_booked_when_cancel_requested_then_the_carrier_decides_the_pivot() {
    let shipment = given::<Shipment>([requested(), scheduled()]);
    let Plan::Call(call) = shipment.plan_now(&cancel_requested()) else {
        panic!()
    };
    assert_eq!(
        call,
        CarrierCall::Cancel {
            booking_id: "bk1".into()
        }
    );
    assert!(matches!(
        Shipment::outcome(call.clone(), CarrierAnswer::Cancelled).as_slice(),
        [ShipmentEvent::ShipmentCancelled { .. }]
    ));
    assert!(matches!(
        Shipment::outcome(call, CarrierAnswer::AlreadyPickedUp).as_slice(),
        [
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentCancelRejected { .. }
        ]
    ));
}

#[test]
fn given_started_when_cancel_requested_then_rejected() {
    let shipment = given::<Shipment>([requested(), scheduled(), ShipmentEvent::ShipmentStarted {}]);
    let events = emitted(shipment.plan_now(&cancel_requested()));
    assert!(matches!(
        events.as_slice(),
        [ShipmentEvent::ShipmentCancelRejected { .. }]
    ));
}

#[test]
fn given_booked_when_the_carrier_reports_progress_then_started_then_delivered() {
    let booked = given::<Shipment>([requested(), scheduled()]);
    assert_eq!(
        booked.carrier_update("picked_up"),
        vec![ShipmentEvent::ShipmentStarted {}]
    );
    assert_eq!(
        booked.carrier_update("delivered"),
        vec![
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentDelivered {}
        ]
    );
    let started = given::<Shipment>([requested(), scheduled(), ShipmentEvent::ShipmentStarted {}]);
    assert!(
        started.carrier_update("picked_up").is_empty(),
        "updates are idempotent"
    );
    assert_eq!(
        started.carrier_update("delivered"),
        vec![ShipmentEvent::ShipmentDelivered {}]
    );
    let cancelled = given::<Shipment>([
        scheduled(),
        ShipmentEvent::ShipmentCancelled { reason: "x".into() },
    ]);
    assert_eq!(cancelled.status, ShipmentStatus::Cancelled);
    assert!(cancelled.carrier_update("picked_up").is_empty());
    let unanswered = given::<Shipment>([requested()]);
    assert!(
        unanswered.carrier_update("picked_up").is_empty(),
        "the booking's answer carries it"
    );
}

#[test]
fn given_requested_when_the_carrier_stays_down_past_the_deadline_then_failed_and_cancelled_by_key_later(
) {
    let shipment = given::<Shipment>([requested()]);
    let deadline = chrono::Duration::seconds(60);
    let event = Inbound::Shipment(requested());
    assert_eq!(
        shipment.abandon(
            &event,
            at() + chrono::Duration::seconds(59),
            deadline,
            "down"
        ),
        None
    );
    let failed = shipment
        .abandon(
            &event,
            at() + chrono::Duration::seconds(61),
            deadline,
            "down",
        )
        .unwrap();
    assert!(matches!(
        failed,
        ShipmentEvent::ShipmentFailed {
            booking_unknown: true,
            ..
        }
    ));
    let shipment = given::<Shipment>([requested(), failed.clone()]);
    // Its own ShipmentFailed comes back: cancel whatever booking the carrier may have made.
    let Plan::Call(call) = shipment.plan_now(&Inbound::Shipment(failed)) else {
        panic!()
    };
    assert_eq!(call, CarrierCall::BookThenCancel(request()));
    let refused = ShipmentEvent::ShipmentFailed {
        reason: "undeliverable".into(),
        booking_unknown: false,
    };
    let shipment = given::<Shipment>([requested(), refused.clone()]);
    assert!(
        emitted(shipment.plan_now(&Inbound::Shipment(refused))).is_empty(),
        "a refusal booked nothing"
    );
}
