//! Co-purchase counts over confirmed orders: ONE aggregate, as big as the catalog (SKU pairs)
//! plus the newest orders' recommendations, whatever the history.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{Aggregate, Plan};
use crate::events::RecommendationEvent;
use crate::events::{Inbound, OrderEvent};
use crate::recent::Recent;
use crate::rpc::DomainError;

pub const CO_PURCHASES: &str = "co-purchases";
/// Recommendations per order.
pub const TOP: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoPurchases {
    /// sku → sku bought with it → how many confirmed orders had both.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// What was recommended with the newest confirmed orders (for `part` only).
    #[serde(default)]
    pub recent: Recent<Vec<String>>,
}

impl Aggregate for CoPurchases {
    type Event = RecommendationEvent;
    type Command = Infallible;
    type Call = Infallible;
    type Answer = Infallible;

    fn apply(&mut self, event: &RecommendationEvent) {
        let RecommendationEvent::RecommendationUpdated {
            order_id,
            skus,
            recommended,
        } = event;
        self.recent.push(order_id.clone(), recommended.clone());
        for a in skus {
            for b in skus {
                if a != b {
                    *self
                        .counts
                        .entry(a.clone())
                        .or_default()
                        .entry(b.clone())
                        .or_default() += 1;
                }
            }
        }
    }

    fn handle(&self, command: Infallible) -> Result<Vec<RecommendationEvent>, DomainError> {
        match command {}
    }

    fn react(
        &self,
        order_id: &str,
        event: &Inbound,
        _now: DateTime<Utc>,
    ) -> Plan<RecommendationEvent, Infallible> {
        Plan::Emit(match event {
            Inbound::Order(OrderEvent::OrderConfirmed { lines, .. }) => {
                let skus: BTreeSet<String> = lines.iter().map(|l| l.sku.clone()).collect();
                vec![RecommendationEvent::RecommendationUpdated {
                    order_id: order_id.to_string(),
                    recommended: self.recommend(&skus),
                    skus: skus.into_iter().collect(),
                }]
            }
            _ => Vec::new(),
        })
    }

    fn outcome(
        &self,
        call: Infallible,
        _: Infallible,
        _: DateTime<Utc>,
    ) -> Vec<RecommendationEvent> {
        match call {}
    }
}

impl CoPurchases {
    /// The SKUs most often bought with `skus` (ties by name), excluding `skus` themselves.
    pub fn recommend(&self, skus: &BTreeSet<String>) -> Vec<String> {
        let mut scores: BTreeMap<&str, u64> = BTreeMap::new();
        for sku in skus {
            for (other, n) in self.counts.get(sku).into_iter().flatten() {
                if !skus.contains(other) {
                    *scores.entry(other).or_default() += n;
                }
            }
        }
        let mut ranked: Vec<(&str, u64)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(TOP)
            .map(|(s, _)| s.to_string())
            .collect()
    }
}
