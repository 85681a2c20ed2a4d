//! The warehouse: ONE aggregate holding every SKU's available units and every order's
//! reservation. One aggregate is the consistency boundary that makes overselling impossible:
//! every reservation is decided on the latest stock, in order, and committed with a version check.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PRODUCTS};
use crate::engine::{Aggregate, Plan};
use crate::events::InventoryEvent;
use crate::events::{Inbound, OrderEvent, PaymentEvent};
use crate::rpc::DomainError;

/// The aggregate id of the warehouse.
pub const WAREHOUSE: &str = "warehouse";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reservation {
    Reserved(Vec<Line>),
    Released,
    /// The warehouse was short; the order went to the stores.
    Short,
    /// Cancelled before any reservation: nothing may be reserved for it later.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warehouse {
    /// Available units per SKU (reserved units are not available).
    pub available: BTreeMap<String, i64>,
    pub orders: HashMap<String, Reservation>,
}

impl Default for Warehouse {
    /// The seeded catalog's warehouse stock.
    fn default() -> Self {
        Warehouse {
            available: PRODUCTS
                .iter()
                .map(|p| (p.sku.to_string(), i64::from(p.warehouse)))
                .collect(),
            orders: HashMap::new(),
        }
    }
}

impl Aggregate for Warehouse {
    type Event = InventoryEvent;
    type Command = Infallible;
    type Call = Infallible;
    type Answer = Infallible;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::InventoryReserved {
                order_id, lines, ..
            } => {
                for line in lines {
                    *self.available.entry(line.sku.clone()).or_default() -=
                        i64::from(line.quantity);
                }
                self.orders
                    .insert(order_id.clone(), Reservation::Reserved(lines.clone()));
            }
            InventoryEvent::InventoryShortage { order_id, .. } => {
                self.orders.insert(order_id.clone(), Reservation::Short);
            }
            InventoryEvent::InventoryReleased {
                order_id, lines, ..
            } => {
                for line in lines {
                    *self.available.entry(line.sku.clone()).or_default() +=
                        i64::from(line.quantity);
                }
                self.orders.insert(order_id.clone(), Reservation::Released);
            }
            InventoryEvent::InventoryCancellationNoted { order_id } => {
                self.orders.insert(order_id.clone(), Reservation::Cancelled);
            }
        }
    }

    fn handle(&self, command: Infallible) -> Result<Vec<InventoryEvent>, DomainError> {
        match command {}
    }

    fn react(
        &self,
        order_id: &str,
        event: &Inbound,
        _now: DateTime<Utc>,
    ) -> Plan<InventoryEvent, Infallible> {
        let current = self.orders.get(order_id);
        Plan::Emit(match event {
            Inbound::Payment(PaymentEvent::PaymentApproved {
                lines,
                shipping_address,
                ..
            }) if current.is_none() => {
                let missing: Vec<String> = lines
                    .iter()
                    .filter(|l| {
                        self.available.get(&l.sku).copied().unwrap_or(0) < i64::from(l.quantity)
                    })
                    .map(|l| l.sku.clone())
                    .collect();
                if missing.is_empty() {
                    vec![InventoryEvent::InventoryReserved {
                        order_id: order_id.to_string(),
                        lines: lines.clone(),
                        shipping_address: shipping_address.clone(),
                    }]
                } else {
                    vec![InventoryEvent::InventoryShortage {
                        order_id: order_id.to_string(),
                        lines: lines.clone(),
                        shipping_address: shipping_address.clone(),
                        missing,
                    }]
                }
            }
            Inbound::Order(OrderEvent::OrderCancelled { .. })
                if bus::failpoints::broken("broken.skip_compensation") =>
            {
                Vec::new()
            }
            Inbound::Order(OrderEvent::OrderCancelled { reason }) => match current {
                Some(Reservation::Reserved(lines)) => vec![InventoryEvent::InventoryReleased {
                    order_id: order_id.to_string(),
                    lines: lines.clone(),
                    reason: reason.clone(),
                }],
                None => vec![InventoryEvent::InventoryCancellationNoted {
                    order_id: order_id.to_string(),
                }],
                Some(_) => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    fn outcome(&self, call: Infallible, _: Infallible, _: DateTime<Utc>) -> Vec<InventoryEvent> {
        match call {}
    }
}
