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
        skus: Vec::new(),
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
        skus: Vec::new(),
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
        skus: Vec::new(),
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
        step(
            &mut s,
            &Inbound::Order(OrderEvent::OrderShipped { ship_from: None })
        )
        .as_slice(),
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
        skus: Vec::new(),
    });
    assert!(
        step(&mut s, &cancelled).is_empty(),
        "the warehouse reserved it: no shortage will come, nothing to wait for"
    );
    assert!(s.open.is_empty());
}

/// Shard `index` of two: SKU-MUG, SKU-SOCKS and SKU-POSTER are in shard 0; SKU-TSHIRT and
/// SKU-HOODIE in shard 1.
fn shard(index: u32) -> Stores {
    Stores::initial(Some(crate::engine::Shard { index, count: 2 }))
}

#[test]
fn split_by_sku_the_later_shard_reserves_at_the_store_the_first_chose() {
    let (mut zero, mut one) = (shard(0), shard(1));
    let short = shortage(&[("SKU-TSHIRT", 1), ("SKU-POSTER", 1)]);
    assert!(
        step(&mut one, &short).is_empty(),
        "shard 1 waits for shard 0"
    );
    let first = step(&mut zero, &short);
    let [held @ StoreEvent::StoreLinesReserved { store_id, .. }] = first.as_slice() else {
        panic!("{first:?}");
    };
    // Only store-busan has posters.
    assert_eq!(store_id, "store-busan");
    let shirts = one.available["store-busan"]["SKU-TSHIRT"];
    match step(&mut one, &Inbound::Store(held.clone())).as_slice() {
        [StoreEvent::StoreStockReserved {
            store_id, lines, ..
        }] => assert_eq!((store_id.as_str(), lines.len()), ("store-busan", 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(one.available["store-busan"]["SKU-TSHIRT"], shirts - 1);
    assert!(!zero.available["store-busan"].contains_key("SKU-TSHIRT"));
}

#[test]
fn split_by_sku_a_later_shard_without_the_lines_at_that_store_releases_the_earlier() {
    let (mut zero, mut one) = (shard(0), shard(1));
    let posters = zero.available["store-busan"]["SKU-POSTER"];
    // Hoodies are only in store-seoul, posters only in store-busan.
    let short = shortage(&[("SKU-POSTER", 1), ("SKU-HOODIE", 1)]);
    let held = step(&mut zero, &short);
    let none = step(&mut one, &Inbound::Store(held[0].clone()));
    let [unavailable @ StoreEvent::StoreStockUnavailable { .. }] = none.as_slice() else {
        panic!("{none:?}");
    };
    let released = step(&mut zero, &Inbound::Store(unavailable.clone()));
    assert!(matches!(
        released.as_slice(),
        [StoreEvent::StoreStockReleased { .. }]
    ));
    assert_eq!(zero.available["store-busan"]["SKU-POSTER"], posters);
    assert!(step(&mut one, &Inbound::Store(unavailable.clone())).is_empty());
    // The order is cancelled next: both shards close it, no tombstone left.
    let cancelled = Inbound::Order(OrderEvent::OrderCancelled {
        reason: "no store has it".into(),
        confirmed: false,
        skus: vec!["SKU-POSTER".into(), "SKU-HOODIE".into()],
    });
    for s in [&mut zero, &mut one] {
        assert!(matches!(
            step(s, &cancelled).as_slice(),
            [StoreEvent::StoreOrderClosed { .. }]
        ));
        assert!(s.open.is_empty());
    }
}
