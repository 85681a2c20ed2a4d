use super::aggregate::{Reservation, Warehouse};
use crate::engine::testing::{lines, When};
use crate::engine::Aggregate;
use crate::events::InventoryEvent;
use crate::events::{Inbound, OrderEvent, PaymentEvent, ShipmentEvent};
use crate::recent::{Recent, FORGET_AFTER};

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
        confirmed: false,
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
    assert_eq!(w.open["o1"], Reservation::Short);
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
        // A second cancellation (the inbox drops a redelivered one) releases nothing again.
        assert!(!step(&mut w, "o1", &cancelled())
            .iter()
            .any(|e| matches!(e, InventoryEvent::InventoryReleased { .. })));
        assert_eq!(w.available["SKU-MUG"], before, "released once");
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
    assert!(matches!(
        step(&mut w, "o1", &approved(&[("SKU-MUG", 1)])).as_slice(),
        [InventoryEvent::InventoryOrderClosed { .. }]
    ));
    assert_eq!(w.available["SKU-MUG"], before);
    assert!(w.open.is_empty(), "nothing left to wait for");
    assert_eq!(w.reservation("o1"), Some(&Reservation::Cancelled));
}

fn shipped() -> Inbound {
    Inbound::Order(OrderEvent::OrderShipped {})
}

#[test]
fn given_many_orders_when_each_ships_or_is_cancelled_then_only_open_orders_are_held() {
    let mut w = Warehouse::default();
    w.available.insert("SKU-MUG".into(), 1_000_000);
    let orders = 3 * Recent::<Reservation>::CAPACITY;
    for i in 0..orders {
        let order = format!("o{i}");
        step(&mut w, &order, &approved(&[("SKU-MUG", 1)]));
        let closing = if i % 3 == 0 { cancelled() } else { shipped() };
        assert_eq!(step(&mut w, &order, &closing).len(), 1, "{order}");
    }
    step(&mut w, "short", &approved(&[("SKU-POSTER", 1_000)]));
    step(&mut w, "open", &approved(&[("SKU-MUG", 1)]));
    assert_eq!(w.open.len(), 2, "only the open orders: {:?}", w.open.keys());
    assert_eq!(w.closed.len(), Recent::<Reservation>::CAPACITY);
    assert_eq!(
        w.available["SKU-MUG"],
        1_000_000 - (orders - orders / 3) as i64 - 1,
        "shipped units stay gone, cancelled ones came back"
    );
    assert!(matches!(
        w.reservation(&format!("o{}", orders - 1)),
        Some(Reservation::Reserved(_))
    ));
    // A short order closes when it ships from a store (or is cancelled).
    assert!(matches!(
        step(&mut w, "short", &shipped()).as_slice(),
        [InventoryEvent::InventoryOrderClosed { .. }]
    ));
    assert!(!w.open.contains_key("short"));
}

#[test]
fn given_cancellations_noted_ahead_when_older_than_the_horizon_then_forgotten() {
    let mut w = Warehouse::default();
    let t0 = chrono::Utc::now();
    let note = |order: &str, at| InventoryEvent::InventoryCancellationNoted {
        order_id: order.into(),
        noted_at: Some(at),
    };
    w.apply(&note("old", t0));
    w.apply(&note("young", t0 + FORGET_AFTER));
    assert_eq!(w.open.len(), 2);
    w.apply(&note(
        "new",
        t0 + FORGET_AFTER + chrono::Duration::seconds(1),
    ));
    assert!(!w.open.contains_key("old"), "forgotten past the horizon");
    assert!(w.open.contains_key("young") && w.open.contains_key("new"));
    // A note from before `noted_at` existed is kept (and replays the same way).
    w.apply(&InventoryEvent::InventoryCancellationNoted {
        order_id: "legacy".into(),
        noted_at: None,
    });
    assert!(w.open.contains_key("legacy"));
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
