//! The offline stores' stock: ONE aggregate (like the warehouse) so no unit is promised twice.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PRODUCTS, STORES};
use crate::engine::{Aggregate, Plan};
use crate::events::StoreEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent};
use crate::rpc::DomainError;

/// The aggregate id of all stores' stock.
pub const STORES_ID: &str = "stores";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreReservation {
    Reserved { store_id: String, lines: Vec<Line> },
    Released,
    Unavailable,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stores {
    /// store id → SKU → available units.
    pub available: BTreeMap<String, BTreeMap<String, i64>>,
    pub orders: HashMap<String, StoreReservation>,
}

impl Default for Stores {
    /// The seeded catalog's store stock.
    fn default() -> Self {
        let mut available: BTreeMap<String, BTreeMap<String, i64>> = STORES
            .iter()
            .map(|s| (s.to_string(), BTreeMap::new()))
            .collect();
        for product in PRODUCTS {
            for (store, units) in product.stores {
                available
                    .entry(store.to_string())
                    .or_default()
                    .insert(product.sku.to_string(), i64::from(*units));
            }
        }
        Stores {
            available,
            orders: HashMap::new(),
        }
    }
}

impl Aggregate for Stores {
    type Event = StoreEvent;
    type Command = Infallible;
    type Call = Infallible;
    type Answer = Infallible;

    fn apply(&mut self, event: &StoreEvent) {
        match event {
            StoreEvent::StoreStockReserved {
                order_id,
                store_id,
                lines,
                ..
            } => {
                self.adjust(store_id, lines, -1);
                self.orders.insert(
                    order_id.clone(),
                    StoreReservation::Reserved {
                        store_id: store_id.clone(),
                        lines: lines.clone(),
                    },
                );
            }
            StoreEvent::StoreStockUnavailable { order_id, .. } => {
                self.orders
                    .insert(order_id.clone(), StoreReservation::Unavailable);
            }
            StoreEvent::StoreStockReleased {
                order_id,
                store_id,
                lines,
                ..
            } => {
                self.adjust(store_id, lines, 1);
                self.orders
                    .insert(order_id.clone(), StoreReservation::Released);
            }
            StoreEvent::StoreCancellationNoted { order_id } => {
                self.orders
                    .insert(order_id.clone(), StoreReservation::Cancelled);
            }
        }
    }

    fn handle(&self, command: Infallible) -> Result<Vec<StoreEvent>, DomainError> {
        match command {}
    }

    fn react(
        &self,
        order_id: &str,
        event: &Inbound,
        _now: DateTime<Utc>,
    ) -> Plan<StoreEvent, Infallible> {
        let current = self.orders.get(order_id);
        let release = |reason: String| match current {
            Some(StoreReservation::Reserved { store_id, lines }) => {
                vec![StoreEvent::StoreStockReleased {
                    order_id: order_id.to_string(),
                    store_id: store_id.clone(),
                    lines: lines.clone(),
                    reason,
                }]
            }
            _ => Vec::new(),
        };
        Plan::Emit(match event {
            Inbound::Inventory(InventoryEvent::InventoryShortage {
                lines,
                shipping_address,
                ..
            }) if current.is_none() => match self.store_for(lines) {
                Some(store_id) => vec![StoreEvent::StoreStockReserved {
                    order_id: order_id.to_string(),
                    store_id: store_id.to_string(),
                    lines: lines.clone(),
                    shipping_address: shipping_address.clone(),
                }],
                None => vec![StoreEvent::StoreStockUnavailable {
                    order_id: order_id.to_string(),
                    lines: lines.clone(),
                }],
            },
            Inbound::Order(OrderEvent::OrderCancelled { reason }) => match current {
                None => vec![StoreEvent::StoreCancellationNoted {
                    order_id: order_id.to_string(),
                }],
                Some(_) => release(reason.clone()),
            },
            _ => Vec::new(),
        })
    }

    fn outcome(&self, call: Infallible, _: Infallible, _: DateTime<Utc>) -> Vec<StoreEvent> {
        match call {}
    }
}

impl Stores {
    fn adjust(&mut self, store_id: &str, lines: &[Line], sign: i64) {
        let stock = self.available.entry(store_id.to_string()).or_default();
        for line in lines {
            *stock.entry(line.sku.clone()).or_default() += sign * i64::from(line.quantity);
        }
    }

    /// The first store (in id order) that has every line.
    fn store_for(&self, lines: &[Line]) -> Option<&str> {
        self.available.iter().find_map(|(store, stock)| {
            lines
                .iter()
                .all(|l| stock.get(&l.sku).copied().unwrap_or(0) >= i64::from(l.quantity))
                .then_some(store.as_str())
        })
    }
}
