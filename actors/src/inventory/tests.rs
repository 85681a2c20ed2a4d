use super::aggregate::{Reservation, Warehouse};
use crate::engine::testing::{lines, When};
use crate::engine::Aggregate;
use crate::events::InventoryEvent;
use crate::events::{Inbound, OrderEvent, PaymentEvent, ShipmentEvent};

fn approved(items: &[(&str, u32)]) -> Inbound {
    Inbound::Payment(PaymentEvent::PaymentApproved {
        amount_cents: 1,
        payment_method: "card".into(),
        authorization_id: "a".into(),
        approved_at: chrono::Utc::now(),
        lines: lines(items),
        shipping_address: "1 Main St".into(),
    })
}

fn cancelled() -> Inbound {
    Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
    })
}

fn failed() -> Inbound {
    Inbound::Shipment(ShipmentEvent::ShipmentFailed {
        reason: "undeliverable".into(),
        booking_unknown: false,
    })
}

/// React and apply, as the engine does.
fn step(warehouse: &mut Warehouse, order: &str, event: &Inbound) -> Vec<InventoryEvent> {
    let events = warehouse.when_event(order, event).events();
    for e in &events {
        warehouse.apply(e);
    }
    events
}

#[test]
fn given_stock_when_approved_then_reserved_and_no_longer_available() {
    let mut w = Warehouse::default();
    let mugs = w.available["SKU-MUG"];
    let events = step(&mut w, "o1", &approved(&[("SKU-MUG", 2)]));
    assert!(matches!(
        events.as_slice(),
        [InventoryEvent::InventoryReserved { .. }]
    ));
    assert_eq!(w.available["SKU-MUG"], mugs - 2);
    assert!(
        step(&mut w, "o1", &approved(&[("SKU-MUG", 2)])).is_empty(),
        "a duplicate reserves nothing"
    );
}

#[test]
fn given_too_little_stock_when_approved_then_shortage_naming_what_is_missing() {
    let mut w = Warehouse::default();
    let events = step(
        &mut w,
        "o1",
        &approved(&[("SKU-MUG", 1), ("SKU-POSTER", 1)]),
    );
    match events.as_slice() {
        [InventoryEvent::InventoryShortage { missing, .. }] => assert_eq!(missing, &["SKU-POSTER"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.orders["o1"], Reservation::Short);
    assert!(
        step(&mut w, "o1", &failed()).is_empty(),
        "nothing reserved, nothing to release"
    );
}

#[test]
fn given_reserved_when_cancelled_then_released_once_and_never_on_a_failure_alone() {
    {
        let mut w = Warehouse::default();
        let before = w.available["SKU-MUG"];
        step(&mut w, "o1", &approved(&[("SKU-MUG", 3)]));
        // The order decides whether a shipment failure is believed; its cancel releases.
        assert!(step(&mut w, "o1", &failed()).is_empty());
        let events = step(&mut w, "o1", &cancelled());
        assert!(matches!(
            events.as_slice(),
            [InventoryEvent::InventoryReleased { .. }]
        ));
        assert_eq!(
            w.available["SKU-MUG"], before,
            "released units are available again"
        );
        assert!(step(&mut w, "o1", &cancelled()).is_empty(), "released once");
    }
}

#[test]
fn given_cancelled_first_when_approval_arrives_late_then_nothing_is_reserved() {
    let mut w = Warehouse::default();
    let before = w.available["SKU-MUG"];
    let events = step(&mut w, "o1", &cancelled());
    assert!(matches!(
        events.as_slice(),
        [InventoryEvent::InventoryCancellationNoted { .. }]
    ));
    assert!(step(&mut w, "o1", &approved(&[("SKU-MUG", 1)])).is_empty());
    assert_eq!(w.available["SKU-MUG"], before);
}

#[test]
fn given_five_lamps_when_six_orders_then_five_reserved_and_stock_never_negative() {
    let mut w = Warehouse::default();
    assert_eq!(w.available["SKU-LAMP"], 5);
    let mut reserved = 0;
    for i in 0..6 {
        let events = step(&mut w, &format!("o{i}"), &approved(&[("SKU-LAMP", 1)]));
        reserved += usize::from(matches!(
            events.as_slice(),
            [InventoryEvent::InventoryReserved { .. }]
        ));
        assert!(w.available["SKU-LAMP"] >= 0);
    }
    assert_eq!(reserved, 5);
    assert_eq!(w.available["SKU-LAMP"], 0);
}
