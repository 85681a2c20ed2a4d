use super::aggregate::{
    BookingRequest, CarrierAnswer, CarrierCall, CarrierUpdate, Shipment, ShipmentStatus,
};
use crate::engine::testing::{given, lines, now, When};
use crate::engine::Aggregate;
use crate::events::ShipmentEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent, StoreEvent};

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
        requested_at: Some(now()),
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

fn scheduled_as(booking_id: &str, estimated_delivery: &str) -> ShipmentEvent {
    ShipmentEvent::ShipmentScheduled {
        booking_id: booking_id.into(),
        carrier: super::aggregate::CARRIER.into(),
        estimated_delivery: estimated_delivery.into(),
        ship_from: "warehouse".into(),
    }
}

/// The carrier reports the parcel `status`.
fn update(status: &str) -> CarrierUpdate {
    CarrierUpdate {
        status: status.into(),
    }
}

#[test]
fn given_nothing_when_stock_reserved_then_the_booking_is_requested_first() {
    let events = Shipment::default().when_event("o1", &reserved()).events();
    assert_eq!(events, vec![requested()]);
    let from_store = Inbound::Store(StoreEvent::StoreStockReserved {
        order_id: "o1".into(),
        store_id: "store-busan".into(),
        lines: lines(&[("SKU-POSTER", 1)]),
        shipping_address: "1 Main St".into(),
    });
    match Shipment::default()
        .when_event("o1", &from_store)
        .events()
        .as_slice()
    {
        [ShipmentEvent::ShipmentBookingRequested { ship_from, .. }] => {
            assert_eq!(ship_from, "store-busan")
        }
        other => panic!("{other:?}"),
    }
    assert!(given::<Shipment>([requested()])
        .when_event("o1", &reserved())
        .events()
        .is_empty());
}

#[test]
fn given_requested_when_the_request_comes_back_then_book_and_record_the_answer() {
    let shipment = given::<Shipment>([requested()]);
    let call = shipment
        .when_event("o1", &Inbound::Shipment(requested()))
        .call();
    assert_eq!(call, CarrierCall::Book(request()));
    assert!(matches!(
        shipment
            .outcome(call.clone(), booked("booked"), now())
            .as_slice(),
        [ShipmentEvent::ShipmentScheduled { .. }]
    ));
    let refused = CarrierAnswer::Refused {
        reason: "undeliverable address".into(),
    };
    assert!(matches!(
        shipment.outcome(call.clone(), refused, now()).as_slice(),
        [ShipmentEvent::ShipmentFailed { .. }]
    ));
    // A booking found by its key after a lost answer may have moved on.
    assert!(matches!(
        shipment
            .outcome(call, booked("delivered"), now())
            .as_slice(),
        [
            ShipmentEvent::ShipmentScheduled { .. },
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentDelivered {}
        ]
    ));
    let done = given::<Shipment>([requested(), scheduled()]);
    assert!(
        done.when_event("o1", &Inbound::Shipment(requested()))
            .events()
            .is_empty(),
        "booked once"
    );
}

#[test]
fn given_nothing_requested_when_cancel_requested_then_cancelled_and_later_stock_is_not_shipped() {
    let events = Shipment::default()
        .when_event("o1", &cancel_requested())
        .events();
    assert!(matches!(
        events.as_slice(),
        [ShipmentEvent::ShipmentCancelled { .. }]
    ));
    let shipment = given::<Shipment>(events);
    assert!(
        shipment.when_event("o1", &reserved()).events().is_empty(),
        "the tombstone stops a late booking"
    );
}

#[test]
fn given_requested_but_unanswered_when_cancel_requested_then_book_by_key_and_cancel() {
    let shipment = given::<Shipment>([requested()]);
    let call = shipment.when_event("o1", &cancel_requested()).call();
    assert_eq!(call, CarrierCall::BookThenCancel(request()));
    let cancelled = CarrierAnswer::BookedThenCancel {
        booking: Box::new(booked("booked")),
        cancel: Some(Box::new(CarrierAnswer::Cancelled)),
    };
    assert!(matches!(
        shipment.outcome(call.clone(), cancelled, now()).as_slice(),
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
        shipment.outcome(call.clone(), left, now()).as_slice(),
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
        shipment.outcome(call, refused, now()).as_slice(),
        [ShipmentEvent::ShipmentFailed { .. }]
    ));
}

#[test]
fn given_booked_when_cancel_requested_then_the_carrier_decides_the_pivot() {
    let shipment = given::<Shipment>([requested(), scheduled()]);
    let call = shipment.when_event("o1", &cancel_requested()).call();
    assert_eq!(
        call,
        CarrierCall::Cancel {
            booking_id: "bk1".into()
        }
    );
    assert!(matches!(
        shipment
            .outcome(call.clone(), CarrierAnswer::Cancelled, now())
            .as_slice(),
        [ShipmentEvent::ShipmentCancelled { .. }]
    ));
    assert!(matches!(
        shipment
            .outcome(call, CarrierAnswer::AlreadyPickedUp, now())
            .as_slice(),
        [
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentCancelRejected { .. }
        ]
    ));
}

#[test]
fn given_started_when_cancel_requested_then_rejected() {
    let shipment = given::<Shipment>([requested(), scheduled(), ShipmentEvent::ShipmentStarted {}]);
    let events = shipment.when_event("o1", &cancel_requested()).events();
    assert!(matches!(
        events.as_slice(),
        [ShipmentEvent::ShipmentCancelRejected { .. }]
    ));
}

#[test]
fn given_booked_when_the_carrier_reports_progress_then_started_then_delivered() {
    let booked = [requested(), scheduled()];
    given::<Shipment>(booked.clone())
        .when(update("picked_up"))
        .then(vec![ShipmentEvent::ShipmentStarted {}]);
    given::<Shipment>(booked.clone())
        .when(update("delivered"))
        .then(vec![
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentDelivered {},
        ]);
    let started = [requested(), scheduled(), ShipmentEvent::ShipmentStarted {}];
    // Updates are idempotent.
    given::<Shipment>(started.clone())
        .when(update("picked_up"))
        .then(vec![]);
    given::<Shipment>(started)
        .when(update("delivered"))
        .then(vec![ShipmentEvent::ShipmentDelivered {}]);
    let cancelled = given::<Shipment>([
        scheduled(),
        ShipmentEvent::ShipmentCancelled { reason: "x".into() },
    ]);
    assert_eq!(cancelled.status, ShipmentStatus::Cancelled);
    cancelled.when(update("picked_up")).then(vec![]);
    // The booking's answer carries it.
    given::<Shipment>([requested()])
        .when(update("picked_up"))
        .then(vec![]);
}

#[test]
fn given_requested_when_the_carrier_stays_unanswered_past_the_deadline_then_overdue_and_nothing_compensated(
) {
    let shipment = given::<Shipment>([requested()]);
    let deadline = chrono::Duration::seconds(60);
    let event = Inbound::Shipment(requested());
    let call = CarrierCall::Book(request());
    let after = |seconds| now() + chrono::Duration::seconds(seconds);
    assert_eq!(
        shipment.give_up(&event, &call, "down", after(59), deadline),
        None
    );
    let overdue = shipment
        .give_up(&event, &call, "timed out", after(61), deadline)
        .unwrap();
    assert!(
        matches!(overdue, ShipmentEvent::ShipmentBookingOverdue { .. }),
        "{overdue:?}: not a failure, which would compensate"
    );
    let shipment = given::<Shipment>([requested(), overdue.clone()]);
    assert_eq!(shipment.status, ShipmentStatus::Overdue);
    // Its own overdue event comes back: ask the carrier what it did.
    let call = shipment
        .when_event("o1", &Inbound::Shipment(overdue))
        .call();
    assert_eq!(call, CarrierCall::Resolve(request()));
    // A customer's cancel meanwhile cancels whatever the carrier may have booked, by key.
    assert_eq!(
        shipment.when_event("o1", &cancel_requested()).call(),
        CarrierCall::BookThenCancel(request())
    );
}

#[test]
fn an_overdue_booking_the_carrier_made_stands_and_only_the_carriers_no_fails_the_step() {
    let overdue = ShipmentEvent::ShipmentBookingOverdue { reason: "x".into() };
    let shipment = given::<Shipment>([requested(), overdue]);
    let resolve = || CarrierCall::Resolve(request());
    // Found, booked slowly: the order goes on.
    assert_eq!(
        shipment.outcome(resolve(), booked("booked"), now()),
        vec![scheduled_as("bk1", "d")]
    );
    // Found, already picked up: it left.
    assert_eq!(
        shipment.outcome(resolve(), booked("picked_up"), now()),
        vec![scheduled_as("bk1", "d"), ShipmentEvent::ShipmentStarted {}]
    );
    // None found: booked-then-cancelled under the key, the step fails (and compensates).
    let none = CarrierAnswer::BookedThenCancel {
        booking: Box::new(booked("booked")),
        cancel: Some(Box::new(CarrierAnswer::Cancelled)),
    };
    let events = shipment.outcome(resolve(), none, now());
    assert!(
        matches!(
            events.as_slice(),
            [ShipmentEvent::ShipmentFailed {
                booking_unknown: false,
                ..
            }]
        ),
        "{events:?}"
    );
    // A booking in flight landed and was picked up before the cancel: it stands.
    let raced = CarrierAnswer::BookedThenCancel {
        booking: Box::new(booked("booked")),
        cancel: Some(Box::new(CarrierAnswer::AlreadyPickedUp)),
    };
    assert_eq!(
        shipment.outcome(resolve(), raced, now()),
        vec![scheduled_as("bk1", "d"), ShipmentEvent::ShipmentStarted {}]
    );
    // The carrier refuses the parcel: it fails.
    let refused = CarrierAnswer::BookedThenCancel {
        booking: Box::new(CarrierAnswer::Refused {
            reason: "undeliverable".into(),
        }),
        cancel: None,
    };
    assert_eq!(
        shipment.outcome(resolve(), refused, now()),
        vec![ShipmentEvent::ShipmentFailed {
            reason: "undeliverable".into(),
            booking_unknown: false
        }]
    );
}

#[test]
fn a_failure_from_an_older_stream_with_the_booking_unknown_is_cancelled_by_key() {
    let failed = ShipmentEvent::ShipmentFailed {
        reason: "carrier unavailable past the deadline".into(),
        booking_unknown: true,
    };
    let shipment = given::<Shipment>([requested(), failed.clone()]);
    let call = shipment.when_event("o1", &Inbound::Shipment(failed)).call();
    assert_eq!(call, CarrierCall::BookThenCancel(request()));
    let refused = ShipmentEvent::ShipmentFailed {
        reason: "undeliverable".into(),
        booking_unknown: false,
    };
    let shipment = given::<Shipment>([requested(), refused.clone()]);
    assert!(
        shipment
            .when_event("o1", &Inbound::Shipment(refused))
            .events()
            .is_empty(),
        "a refusal booked nothing"
    );
}

#[test]
fn it_echoes_only_its_own_events_it_listens_to() {
    use crate::engine::Service;
    let own: Vec<&str> = super::ShipmentService::LISTENS
        .iter()
        .filter(|(domain, _)| *domain == bus::Domain::Shipments)
        .flat_map(|(_, types)| types.iter().copied())
        .collect();
    assert!(!super::ShipmentService::ECHO.is_empty());
    for echoed in super::ShipmentService::ECHO {
        assert!(own.contains(echoed), "{echoed} would not come back");
    }
}
