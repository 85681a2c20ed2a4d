use super::aggregate::{CarrierAnswer, CarrierCall, Plan, Shipment, ShipmentStatus};
use super::events::ShipmentEvent;
use crate::engine::{given, lines};
use crate::events::{Inbound, InventoryEvent, OrderEvent, StoreEvent};

fn reserved() -> Inbound {
    Inbound::Inventory(InventoryEvent::InventoryReserved {
        order_id: "o1".into(),
        lines: lines(&[("SKU-MUG", 1)]),
        shipping_address: "1 Main St".into(),
    })
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

#[test]
fn given_nothing_when_stock_reserved_then_book_from_where_it_is() {
    let Plan::Call(CarrierCall::Book { ship_from, .. }) = Shipment::default().plan(&reserved())
    else {
        panic!("expected a booking");
    };
    assert_eq!(ship_from, "warehouse");
    let from_store = Inbound::Store(StoreEvent::StoreStockReserved {
        order_id: "o1".into(),
        store_id: "store-busan".into(),
        lines: lines(&[("SKU-POSTER", 1)]),
        shipping_address: "1 Main St".into(),
    });
    let Plan::Call(CarrierCall::Book { ship_from, .. }) = Shipment::default().plan(&from_store)
    else {
        panic!("expected a booking");
    };
    assert_eq!(ship_from, "store-busan");
}

#[test]
fn given_a_booking_answer_then_scheduled_or_failed() {
    let Plan::Call(call) = Shipment::default().plan(&reserved()) else {
        panic!()
    };
    let booked = CarrierAnswer::Booked {
        booking_id: "bk1".into(),
        estimated_delivery: "d".into(),
    };
    assert!(matches!(
        Shipment::outcome(call.clone(), booked).as_slice(),
        [ShipmentEvent::ShipmentScheduled { .. }]
    ));
    let refused = CarrierAnswer::Refused {
        reason: "undeliverable address".into(),
    };
    assert!(matches!(
        Shipment::outcome(call, refused).as_slice(),
        [ShipmentEvent::ShipmentFailed { .. }]
    ));
    assert_eq!(
        given::<Shipment>([scheduled()]).plan(&reserved()),
        Plan::Emit(vec![]),
        "booked once"
    );
}

#[test]
fn given_nothing_booked_when_cancel_requested_then_cancelled_and_later_stock_is_not_shipped() {
    let Plan::Emit(events) = Shipment::default().plan(&cancel_requested()) else {
        panic!()
    };
    assert!(matches!(
        events.as_slice(),
        [ShipmentEvent::ShipmentCancelled { .. }]
    ));
    let shipment = given::<Shipment>(events);
    assert_eq!(
        shipment.plan(&reserved()),
        Plan::Emit(vec![]),
        "the tombstone stops a late booking"
    );
}

#[test]
fn given_booked_when_cancel_requested_then_the_carrier_decides_the_pivot() {
    let shipment = given::<Shipment>([scheduled()]);
    let Plan::Call(call) = shipment.plan(&cancel_requested()) else {
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
    let shipment = given::<Shipment>([scheduled(), ShipmentEvent::ShipmentStarted {}]);
    let Plan::Emit(events) = shipment.plan(&cancel_requested()) else {
        panic!()
    };
    assert!(matches!(
        events.as_slice(),
        [ShipmentEvent::ShipmentCancelRejected { .. }]
    ));
}

#[test]
fn given_booked_when_the_carrier_reports_progress_then_started_then_delivered() {
    let booked = given::<Shipment>([scheduled()]);
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
    let started = given::<Shipment>([scheduled(), ShipmentEvent::ShipmentStarted {}]);
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
}
