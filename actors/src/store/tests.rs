use super::aggregate::{StoreReservation, Stores};
use crate::engine::testing::{lines, When};
use crate::engine::Aggregate;
use crate::events::StoreEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent, ShipmentEvent};

fn shortage(items: &[(&str, u32)]) -> Inbound {
    Inbound::Inventory(InventoryEvent::InventoryShortage {
        order_id: "o1".into(),
        lines: lines(items),
        shipping_address: "1 Main St".into(),
        missing: vec![],
    })
}

fn step(stores: &mut Stores, event: &Inbound) -> Vec<StoreEvent> {
    let events = stores.when_event("o1", event).events();
    for e in &events {
        stores.apply(e);
    }
    events
}

#[test]
fn given_a_store_with_everything_when_shortage_then_ship_from_that_store() {
    let mut s = Stores::default();
    let before = s.available["store-busan"]["SKU-POSTER"];
    let events = step(&mut s, &shortage(&[("SKU-POSTER", 2)]));
    match events.as_slice() {
        [StoreEvent::StoreStockReserved { store_id, .. }] => assert_eq!(store_id, "store-busan"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.available["store-busan"]["SKU-POSTER"], before - 2);
    assert!(
        step(&mut s, &shortage(&[("SKU-POSTER", 2)])).is_empty(),
        "a duplicate reserves nothing"
    );
}

#[test]
fn given_no_store_with_everything_when_shortage_then_unavailable() {
    let mut s = Stores::default();
    // Posters are only in Busan, mugs only in Seoul: no single store has both.
    let events = step(&mut s, &shortage(&[("SKU-POSTER", 1), ("SKU-MUG", 1)]));
    assert!(matches!(
        events.as_slice(),
        [StoreEvent::StoreStockUnavailable { .. }]
    ));
    assert_eq!(s.open["o1"], StoreReservation::Unavailable);
    let cancelled = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "no stock".into(),
        confirmed: false,
    });
    assert!(matches!(
        step(&mut s, &cancelled).as_slice(),
        [StoreEvent::StoreOrderClosed { .. }]
    ));
    assert!(s.open.is_empty(), "nothing left to do for it");
    assert_eq!(s.reservation("o1"), Some(&StoreReservation::Unavailable));
    let events = Stores::default()
        .when_event("o1", &shortage(&[("SKU-VINYL", 1)]))
        .events();
    assert!(matches!(
        events.as_slice(),
        [StoreEvent::StoreStockUnavailable { .. }]
    ));
}

#[test]
fn given_reserved_when_cancelled_then_released_and_never_on_a_failure_alone() {
    let failed = Inbound::Shipment(ShipmentEvent::ShipmentFailed {
        reason: "undeliverable".into(),
        booking_unknown: false,
    });
    let cancelled = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
        confirmed: false,
    });
    {
        let mut s = Stores::default();
        let before = s.available.clone();
        step(&mut s, &shortage(&[("SKU-POSTER", 1)]));
        // The order decides whether a shipment failure is believed; its cancel releases.
        assert!(step(&mut s, &failed).is_empty());
        let events = step(&mut s, &cancelled);
        assert!(matches!(
            events.as_slice(),
            [StoreEvent::StoreStockReleased { .. }]
        ));
        assert_eq!(s.available, before);
    }
}

#[test]
fn given_cancelled_first_when_shortage_arrives_late_then_nothing_is_reserved() {
    let mut s = Stores::default();
    let cancelled = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
        confirmed: false,
    });
    assert!(matches!(
        step(&mut s, &cancelled).as_slice(),
        [StoreEvent::StoreCancellationNoted { .. }]
    ));
    let before = s.available.clone();
    assert!(matches!(
        step(&mut s, &shortage(&[("SKU-POSTER", 1)])).as_slice(),
        [StoreEvent::StoreOrderClosed { .. }]
    ));
    assert_eq!(s.available, before, "nothing reserved");
    assert!(s.open.is_empty(), "nothing left to wait for");
}

#[test]
fn given_reserved_when_shipped_then_no_longer_held_and_units_stay_gone() {
    let mut s = Stores::default();
    let before = s.available["store-busan"]["SKU-POSTER"];
    step(&mut s, &shortage(&[("SKU-POSTER", 1)]));
    assert!(matches!(
        step(&mut s, &Inbound::Order(OrderEvent::OrderShipped {})).as_slice(),
        [StoreEvent::StoreOrderClosed { .. }]
    ));
    assert!(s.open.is_empty());
    assert_eq!(s.available["store-busan"]["SKU-POSTER"], before - 1);
    assert!(matches!(
        s.reservation("o1"),
        Some(StoreReservation::Reserved { .. })
    ));
}

#[test]
fn given_nothing_here_when_a_confirmed_order_is_cancelled_then_nothing_is_noted() {
    let mut s = Stores::default();
    let cancelled = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
        confirmed: true,
    });
    assert!(
        step(&mut s, &cancelled).is_empty(),
        "the warehouse reserved it: no shortage will come, nothing to wait for"
    );
    assert!(s.open.is_empty());
}
