//! The offline stores' stock: ONE aggregate (like the warehouse) so no unit is promised twice.
//! Like the warehouse, it tracks an order only while it may still act on it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PRODUCTS, STORES};
use crate::engine::{Aggregate, Plan};
use crate::events::StoreEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent};
use crate::recent::{Notes, Recent};
use crate::rpc::DomainError;

/// The aggregate id of all stores' stock.
pub const STORES_ID: &str = "stores";

/// The stores' part in an order. Open while the order may still need it: `Reserved` until the
/// order ships or is cancelled (released), `Unavailable` until it is cancelled, `Cancelled` until
/// the warehouse's shortage arrives (or it is forgotten).
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
    /// The orders the stores may still act on.
    #[serde(alias = "orders")]
    pub open: HashMap<String, StoreReservation>,
    /// The newest closed orders, for `part` only.
    #[serde(default)]
    pub closed: Recent<StoreReservation>,
    /// The open `Cancelled` orders, by when they were noted.
    #[serde(default)]
    pub notes: Notes,
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
            open: HashMap::new(),
            closed: Recent::default(),
            notes: Notes::default(),
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
                self.open.insert(
                    order_id.clone(),
                    StoreReservation::Reserved {
                        store_id: store_id.clone(),
                        lines: lines.clone(),
                    },
                );
            }
            StoreEvent::StoreStockUnavailable { order_id, .. } => {
                self.open
                    .insert(order_id.clone(), StoreReservation::Unavailable);
            }
            StoreEvent::StoreStockReleased {
                order_id,
                store_id,
                lines,
                ..
            } => {
                self.adjust(store_id, lines, 1);
                self.open.remove(order_id);
                self.closed
                    .push(order_id.clone(), StoreReservation::Released);
            }
            StoreEvent::StoreCancellationNoted { order_id, noted_at } => self.notes.note_cancelled(
                &mut self.open,
                order_id,
                *noted_at,
                StoreReservation::Cancelled,
            ),
            StoreEvent::StoreOrderClosed { order_id } => {
                self.closed.close(&mut self.open, order_id)
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
        now: DateTime<Utc>,
    ) -> Plan<StoreEvent, Infallible> {
        let current = self.open.get(order_id);
        let closed = || {
            vec![StoreEvent::StoreOrderClosed {
                order_id: order_id.to_string(),
            }]
        };
        Plan::Emit(match event {
            Inbound::Inventory(InventoryEvent::InventoryShortage {
                lines,
                shipping_address,
                ..
            }) => match current {
                None => match self.store_for(lines) {
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
                // The cancellation came first: nothing to reserve, and nothing left to wait for.
                Some(StoreReservation::Cancelled) => closed(),
                Some(_) => Vec::new(),
            },
            Inbound::Order(OrderEvent::OrderCancelled { reason, confirmed }) => match current {
                Some(StoreReservation::Reserved { store_id, lines }) => {
                    vec![StoreEvent::StoreStockReleased {
                        order_id: order_id.to_string(),
                        store_id: store_id.clone(),
                        lines: lines.clone(),
                        reason: reason.clone(),
                    }]
                }
                Some(StoreReservation::Unavailable) => closed(),
                // Confirmed with nothing here: the warehouse reserved it, no shortage will come.
                None if *confirmed => Vec::new(),
                None => vec![StoreEvent::StoreCancellationNoted {
                    order_id: order_id.to_string(),
                    noted_at: Some(now),
                }],
                Some(_) => Vec::new(),
            },
            Inbound::Order(OrderEvent::OrderShipped {}) => match current {
                Some(StoreReservation::Reserved { .. }) => closed(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    fn outcome(&self, call: Infallible, _: Infallible, _: DateTime<Utc>) -> Vec<StoreEvent> {
        match call {}
    }
}

impl Stores {
    /// What the stores did for an order: open, or among the newest closed.
    pub fn reservation(&self, order_id: &str) -> Option<&StoreReservation> {
        self.open
            .get(order_id)
            .or_else(|| self.closed.get(order_id))
    }

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
