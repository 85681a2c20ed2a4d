use super::aggregate::CoPurchases;
use crate::engine::testing::{lines, When};
use crate::engine::Aggregate;
use crate::events::RecommendationEvent;
use crate::events::{Inbound, OrderEvent};

fn confirmed(items: &[(&str, u32)]) -> Inbound {
    Inbound::Order(OrderEvent::OrderConfirmed {
        lines: lines(items),
        estimated_delivery: "d".into(),
        ship_from: None,
    })
}

#[test]
fn given_co_purchases_when_an_order_is_confirmed_then_recommend_what_was_bought_with_it() {
    let mut counts = CoPurchases::default();
    for (order, items) in [
        ("o1", &[("SKU-MUG", 1), ("SKU-SOCKS", 1)][..]),
        (
            "o2",
            &[("SKU-MUG", 1), ("SKU-SOCKS", 1), ("SKU-TSHIRT", 1)][..],
        ),
    ] {
        for event in counts.when_event(order, &confirmed(items)).events() {
            counts.apply(&event);
        }
    }
    assert_eq!(counts.counts["SKU-MUG"]["SKU-SOCKS"], 2);
    let events = counts
        .when_event("o3", &confirmed(&[("SKU-MUG", 1)]))
        .events();
    let [RecommendationEvent::RecommendationUpdated {
        recommended, skus, ..
    }] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    assert_eq!(skus, &["SKU-MUG"]);
    assert_eq!(
        recommended,
        &["SKU-SOCKS", "SKU-TSHIRT"],
        "most often bought with mugs first"
    );
}
