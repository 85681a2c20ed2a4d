//! The warehouse: ONE aggregate holding every SKU's available units and every open order's
//! reservation. One aggregate is the consistency boundary that makes overselling impossible:
//! every reservation is decided on the latest stock, in order, and committed with a version check.
//! It tracks an order only while it may still act on it (see [`crate::recent`]), so its state is
//! the SKUs plus the open orders, whatever the history.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PRODUCTS};
use crate::engine::{Aggregate, Plan};
use crate::events::InventoryEvent;
use crate::events::{Inbound, OrderEvent, PaymentEvent};
use crate::recent::{Notes, Recent};
use crate::rpc::DomainError;

/// The aggregate id of the warehouse.
pub const WAREHOUSE: &str = "warehouse";

/// The warehouse's part in an order. Open while the order may still need it: `Reserved` until
/// the order ships or is cancelled (released), `Short` until it ships from a store or is
/// cancelled, `Cancelled` until its payment's approval arrives (or it is forgotten).
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
    /// The orders the warehouse may still act on.
    #[serde(alias = "orders")]
    pub open: HashMap<String, Reservation>,
    /// The newest closed orders, for `part` only.
    #[serde(default)]
    pub closed: Recent<Reservation>,
    /// The open `Cancelled` orders, by when they were noted.
    #[serde(default)]
    pub notes: Notes,
}

impl Default for Warehouse {
    /// The seeded catalog's warehouse stock.
    fn default() -> Self {
        Warehouse {
            available: PRODUCTS
                .iter()
                .map(|p| (p.sku.to_string(), i64::from(p.warehouse)))
                .collect(),
            open: HashMap::new(),
            closed: Recent::default(),
            notes: Notes::default(),
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
                self.open
                    .insert(order_id.clone(), Reservation::Reserved(lines.clone()));
            }
            InventoryEvent::InventoryShortage { order_id, .. } => {
                self.open.insert(order_id.clone(), Reservation::Short);
            }
            InventoryEvent::InventoryReleased {
                order_id, lines, ..
            } => {
                for line in lines {
                    *self.available.entry(line.sku.clone()).or_default() +=
                        i64::from(line.quantity);
                }
                self.open.remove(order_id);
                self.closed.push(order_id.clone(), Reservation::Released);
            }
            InventoryEvent::InventoryCancellationNoted { order_id, noted_at } => self
                .notes
                .note_cancelled(&mut self.open, order_id, *noted_at, Reservation::Cancelled),
            InventoryEvent::InventoryOrderClosed { order_id } => {
                self.closed.close(&mut self.open, order_id)
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
        now: DateTime<Utc>,
    ) -> Plan<InventoryEvent, Infallible> {
        let current = self.open.get(order_id);
        let closed = || {
            vec![InventoryEvent::InventoryOrderClosed {
                order_id: order_id.to_string(),
            }]
        };
        Plan::Emit(match event {
            Inbound::Payment(PaymentEvent::PaymentApproved {
                lines,
                shipping_address,
                ..
            }) => match current {
                None => vec![self.reserve(order_id, lines, shipping_address)],
                // The cancellation came first: nothing to reserve, and nothing left to wait for.
                Some(Reservation::Cancelled) => closed(),
                Some(_) => Vec::new(),
            },
            Inbound::Order(OrderEvent::OrderCancelled { .. })
                if bus::failpoints::broken("broken.skip_compensation") =>
            {
                Vec::new()
            }
            Inbound::Order(OrderEvent::OrderCancelled { reason, confirmed }) => match current {
                Some(Reservation::Reserved(lines)) => vec![InventoryEvent::InventoryReleased {
                    order_id: order_id.to_string(),
                    lines: lines.clone(),
                    reason: reason.clone(),
                }],
                Some(Reservation::Short) => closed(),
                // Confirmed: the approval was seen long ago, nothing is on its way.
                None if *confirmed => Vec::new(),
                None => vec![InventoryEvent::InventoryCancellationNoted {
                    order_id: order_id.to_string(),
                    noted_at: Some(now),
                }],
                Some(_) => Vec::new(),
            },
            Inbound::Order(OrderEvent::OrderShipped {}) => match current {
                Some(Reservation::Reserved(_) | Reservation::Short) => closed(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    fn outcome(&self, call: Infallible, _: Infallible, _: DateTime<Utc>) -> Vec<InventoryEvent> {
        match call {}
    }
}

impl Warehouse {
    /// Reserve every line, or report what is short.
    fn reserve(&self, order_id: &str, lines: &[Line], shipping_address: &str) -> InventoryEvent {
        let missing: Vec<String> = lines
            .iter()
            .filter(|l| self.available.get(&l.sku).copied().unwrap_or(0) < i64::from(l.quantity))
            .map(|l| l.sku.clone())
            .collect();
        if missing.is_empty() {
            InventoryEvent::InventoryReserved {
                order_id: order_id.to_string(),
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
            }
        } else {
            InventoryEvent::InventoryShortage {
                order_id: order_id.to_string(),
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
                missing,
            }
        }
    }

    /// What the warehouse did for an order: open, or among the newest closed.
    pub fn reservation(&self, order_id: &str) -> Option<&Reservation> {
        self.open
            .get(order_id)
            .or_else(|| self.closed.get(order_id))
    }
}
