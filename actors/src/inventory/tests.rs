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
        skus: Vec::new(),
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
    Inbound::Order(OrderEvent::OrderShipped { ship_from: None })
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

/// Shard `index` of two: SKU-MUG, SKU-SOCKS and SKU-POSTER are in shard 0; SKU-TSHIRT,
/// SKU-HOODIE, SKU-LAMP and SKU-VINYL in shard 1.
fn shard(index: u32) -> Warehouse {
    Warehouse::initial(Some(crate::engine::Shard { index, count: 2 }))
}

fn own(event: &InventoryEvent) -> Inbound {
    Inbound::Inventory(event.clone())
}

#[test]
fn split_by_sku_each_shard_keeps_only_its_own_skus() {
    let (zero, one) = (shard(0), shard(1));
    assert!(zero.available.contains_key("SKU-MUG") && !zero.available.contains_key("SKU-TSHIRT"));
    assert!(one.available.contains_key("SKU-TSHIRT") && !one.available.contains_key("SKU-MUG"));
    assert_eq!(
        zero.available.len() + one.available.len(),
        Warehouse::default().available.len()
    );
}

#[test]
fn split_by_sku_an_order_is_reserved_shard_by_shard_and_the_last_decides() {
    let (mut zero, mut one) = (shard(0), shard(1));
    let (mugs, shirts) = (zero.available["SKU-MUG"], one.available["SKU-TSHIRT"]);
    let paid = approved(&[("SKU-TSHIRT", 1), ("SKU-MUG", 2)]);
    assert!(
        step(&mut one, "o1", &paid).is_empty(),
        "shard 1 waits for shard 0"
    );
    let first = step(&mut zero, "o1", &paid);
    let [held @ InventoryEvent::InventoryLinesReserved { reserved, .. }] = first.as_slice() else {
        panic!("{first:?}");
    };
    assert_eq!(reserved, &lines(&[("SKU-MUG", 2)]));
    assert_eq!(zero.available["SKU-MUG"], mugs - 2);
    // Its own event comes back to shard 0: nothing more there.
    assert!(step(&mut zero, "o1", &own(held)).is_empty());
    let last = step(&mut one, "o1", &own(held));
    match last.as_slice() {
        [InventoryEvent::InventoryReserved { lines: all, .. }] => assert_eq!(all.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(one.available["SKU-TSHIRT"], shirts - 1);
    assert_eq!(
        one.open["o1"],
        Reservation::Reserved(lines(&[("SKU-TSHIRT", 1)]))
    );
    // Cancelled: each shard releases its own lines.
    for (w, sku, before) in [
        (&mut zero, "SKU-MUG", mugs),
        (&mut one, "SKU-TSHIRT", shirts),
    ] {
        let released = step(w, "o1", &cancelled());
        assert!(matches!(
            released.as_slice(),
            [InventoryEvent::InventoryReleased { .. }]
        ));
        assert_eq!(w.available[sku], before);
    }
}

#[test]
fn split_by_sku_a_shortage_in_a_later_shard_releases_the_earlier_ones() {
    let (mut zero, mut one) = (shard(0), shard(1));
    let mugs = zero.available["SKU-MUG"];
    // Five lamps in stock: six are short.
    let paid = approved(&[("SKU-MUG", 1), ("SKU-LAMP", 6)]);
    let held = step(&mut zero, "o1", &paid);
    let short = step(&mut one, "o1", &own(&held[0]));
    let [shortage @ InventoryEvent::InventoryShortage { missing, .. }] = short.as_slice() else {
        panic!("{short:?}");
    };
    assert_eq!(missing, &["SKU-LAMP"]);
    assert!(
        step(&mut one, "o1", &own(shortage)).is_empty(),
        "the short shard holds nothing"
    );
    let released = step(&mut zero, "o1", &own(shortage));
    assert!(matches!(
        released.as_slice(),
        [InventoryEvent::InventoryReleased { .. }]
    ));
    assert_eq!(zero.available["SKU-MUG"], mugs);
    // Both shards keep it as short until it ships from a store or is cancelled.
    assert_eq!(zero.open["o1"], Reservation::Short);
    for w in [&mut zero, &mut one] {
        assert!(matches!(
            step(w, "o1", &cancelled()).as_slice(),
            [InventoryEvent::InventoryOrderClosed { .. }]
        ));
    }
    assert!(zero.open.is_empty() && one.open.is_empty());
}

#[test]
fn split_by_sku_a_cancel_that_overtakes_the_chain_stops_it_with_nothing_held() {
    let (mut zero, mut one) = (shard(0), shard(1));
    let (mugs, shirts) = (zero.available["SKU-MUG"], one.available["SKU-TSHIRT"]);
    let paid = approved(&[("SKU-MUG", 1), ("SKU-TSHIRT", 1)]);
    // Shard 1 hears of the cancel before its turn; shard 0 reserved before hearing of it.
    assert!(matches!(
        step(&mut one, "o1", &cancelled()).as_slice(),
        [InventoryEvent::InventoryCancellationNoted { .. }]
    ));
    let held = step(&mut zero, "o1", &paid);
    step(&mut zero, "o1", &cancelled());
    assert!(matches!(
        step(&mut one, "o1", &own(&held[0])).as_slice(),
        [InventoryEvent::InventoryOrderClosed { .. }]
    ));
    assert_eq!(zero.available["SKU-MUG"], mugs);
    assert_eq!(one.available["SKU-TSHIRT"], shirts);
    assert!(zero.open.is_empty() && one.open.is_empty());
}

#[test]
fn split_by_sku_a_shipment_from_a_store_that_overtakes_the_shortage_gives_the_lines_back() {
    let (mut zero, mut one) = (shard(0), shard(1));
    let mugs = zero.available["SKU-MUG"];
    let paid = approved(&[("SKU-MUG", 1), ("SKU-LAMP", 6)]);
    let held = step(&mut zero, "o1", &paid);
    let short = step(&mut one, "o1", &own(&held[0]));
    // The order shipped from a store before shard 0 read the shortage (its consumer of the
    // inventory stream lagged).
    let shipped = Inbound::Order(OrderEvent::OrderShipped {
        ship_from: Some("store-busan".into()),
    });
    assert!(matches!(
        step(&mut zero, "o1", &shipped).as_slice(),
        [InventoryEvent::InventoryReleased { .. }]
    ));
    assert_eq!(zero.available["SKU-MUG"], mugs);
    assert!(
        step(&mut zero, "o1", &own(&short[0])).is_empty(),
        "released once"
    );
    assert!(matches!(
        step(&mut one, "o1", &shipped).as_slice(),
        [InventoryEvent::InventoryOrderClosed { .. }]
    ));
    assert!(zero.open.is_empty() && one.open.is_empty());
}

#[test]
fn split_by_sku_a_cancel_is_noted_only_where_the_order_has_lines() {
    let cancel = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "customer".into(),
        confirmed: false,
        skus: vec!["SKU-MUG".into()],
    });
    assert!(step(&mut shard(1), "o1", &cancel).is_empty());
    assert!(matches!(
        step(&mut shard(0), "o1", &cancel).as_slice(),
        [InventoryEvent::InventoryCancellationNoted { .. }]
    ));
}
