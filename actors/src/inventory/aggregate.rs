//! The warehouse: ONE aggregate holding every SKU's available units and every open order's
//! reservation. One aggregate is the consistency boundary that makes overselling impossible:
//! every reservation is decided on the latest stock, in order, and committed with a version check.
//! With stock split by SKU there is one per shard, each the only writer of its SKUs, and an
//! order's lines are reserved shard by shard ([`crate::stock`]).
//! It tracks an order only while it may still act on it (see [`crate::recent`]), so its state is
//! the SKUs plus the open orders, whatever the history.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PRODUCTS};
use crate::engine::{Aggregate, Plan, Shard};
use crate::events::InventoryEvent;
use crate::events::{Inbound, OrderEvent, PaymentEvent};
use crate::recent::{Notes, Recent};
use crate::rpc::DomainError;
use crate::stock::{self, Chain};

/// The aggregate id of the warehouse.
pub const WAREHOUSE: &str = "warehouse";

/// The warehouse's part in an order. Open while the order may still need it: `Reserved` until
/// the order ships or is cancelled (released), `Short` until it ships from a store or is
/// cancelled (also a shard that gave its lines back because another was short), `Cancelled`
/// until its turn comes (the payment's approval, or the shard before it) or it is forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reservation {
    /// The lines held here (with stock split by SKU, this shard's).
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
    /// The SKU shard it is, when stock is split by SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

impl Default for Warehouse {
    /// The seeded catalog's warehouse stock.
    fn default() -> Self {
        Warehouse::initial(None)
    }
}

impl Aggregate for Warehouse {
    type Event = InventoryEvent;
    type Command = Infallible;
    type Call = Infallible;
    type Answer = Infallible;

    /// The seeded catalog's warehouse stock of the shard's SKUs.
    fn initial(shard: Option<Shard>) -> Self {
        Warehouse {
            available: PRODUCTS
                .iter()
                .filter(|p| shard.is_none_or(|s| s.holds(p.sku)))
                .map(|p| (p.sku.to_string(), i64::from(p.warehouse)))
                .collect(),
            open: HashMap::new(),
            closed: Recent::default(),
            notes: Notes::default(),
            shard,
        }
    }

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::InventoryReserved {
                order_id, lines, ..
            } => {
                let own = Chain::new(lines, self.shard).own();
                self.hold(order_id, own);
            }
            InventoryEvent::InventoryLinesReserved {
                order_id, reserved, ..
            } => self.hold(order_id, reserved.clone()),
            InventoryEvent::InventoryShortage { order_id, .. } => {
                self.open.insert(order_id.clone(), Reservation::Short);
            }
            InventoryEvent::InventoryReleased {
                order_id,
                lines,
                short,
                ..
            } => {
                for line in lines {
                    *self.available.entry(line.sku.clone()).or_default() +=
                        i64::from(line.quantity);
                }
                if *short {
                    self.open.insert(order_id.clone(), Reservation::Short);
                } else {
                    self.open.remove(order_id);
                    self.closed.push(order_id.clone(), Reservation::Released);
                }
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
            }) if Chain::new(lines, self.shard).is_first() => match current {
                None => vec![self.reserve(order_id, lines, shipping_address)],
                // The cancellation came first: nothing to reserve, and nothing left to wait for.
                Some(Reservation::Cancelled) => closed(),
                Some(_) => Vec::new(),
            },
            // The shard before this one held its lines: this shard's turn.
            Inbound::Inventory(InventoryEvent::InventoryLinesReserved {
                reserved,
                lines,
                shipping_address,
                ..
            }) if Chain::new(lines, self.shard).follows(reserved) => match current {
                None => vec![self.reserve(order_id, lines, shipping_address)],
                Some(Reservation::Cancelled) => closed(),
                Some(_) => Vec::new(),
            },
            // Another shard was short: the lines held here go back (the order goes to the
            // stores). Within one shard, the one that was short holds nothing.
            Inbound::Inventory(InventoryEvent::InventoryShortage { missing, .. }) => {
                match current {
                    Some(Reservation::Reserved(own)) => vec![released(
                        order_id,
                        own,
                        format!("short of {}", missing.join(", ")),
                        true,
                    )],
                    _ => Vec::new(),
                }
            }
            Inbound::Order(OrderEvent::OrderCancelled { .. })
                if bus::failpoints::broken("broken.skip_compensation") =>
            {
                Vec::new()
            }
            // None of its lines is this shard's: nothing held, nothing will be.
            Inbound::Order(OrderEvent::OrderCancelled { skus, .. })
                if !stock::concerns(self.shard, skus) =>
            {
                Vec::new()
            }
            Inbound::Order(OrderEvent::OrderCancelled {
                reason, confirmed, ..
            }) => match current {
                Some(Reservation::Reserved(lines)) => {
                    vec![released(order_id, lines, reason.clone(), false)]
                }
                Some(Reservation::Short) => closed(),
                // Confirmed: the approval was seen long ago, nothing is on its way.
                None if *confirmed => Vec::new(),
                None => vec![InventoryEvent::InventoryCancellationNoted {
                    order_id: order_id.to_string(),
                    noted_at: Some(now),
                }],
                Some(_) => Vec::new(),
            },
            // Shipped from a store: the warehouse was short. Lines this shard held before the
            // shortage go back (the shortage that says so may not have arrived here yet).
            Inbound::Order(OrderEvent::OrderShipped {
                ship_from: Some(store),
            }) if store != WAREHOUSE => match current {
                Some(Reservation::Reserved(own)) => vec![released(
                    order_id,
                    own,
                    format!("shipped from {store}"),
                    false,
                )],
                Some(Reservation::Short) => closed(),
                _ => Vec::new(),
            },
            Inbound::Order(OrderEvent::OrderShipped { .. }) => match current {
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

/// `lines` (this shard's) go back for the order; `short`: because another shard was short.
fn released(order_id: &str, lines: &[Line], reason: String, short: bool) -> InventoryEvent {
    InventoryEvent::InventoryReleased {
        order_id: order_id.to_string(),
        lines: lines.to_vec(),
        reason,
        short,
    }
}

impl Warehouse {
    /// Reserve every line this shard keeps (the last shard: and decide the order), or report
    /// what is short.
    fn reserve(&self, order_id: &str, lines: &[Line], shipping_address: &str) -> InventoryEvent {
        let chain = Chain::new(lines, self.shard);
        let own = chain.own();
        let missing: Vec<String> = own
            .iter()
            .filter(|l| self.available.get(&l.sku).copied().unwrap_or(0) < i64::from(l.quantity))
            .map(|l| l.sku.clone())
            .collect();
        if !missing.is_empty() {
            InventoryEvent::InventoryShortage {
                order_id: order_id.to_string(),
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
                missing,
            }
        } else if chain.is_last() {
            InventoryEvent::InventoryReserved {
                order_id: order_id.to_string(),
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
            }
        } else {
            InventoryEvent::InventoryLinesReserved {
                order_id: order_id.to_string(),
                reserved: own,
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
            }
        }
    }

    /// Hold `lines` (this shard's) for the order.
    fn hold(&mut self, order_id: &str, lines: Vec<Line>) {
        for line in &lines {
            *self.available.entry(line.sku.clone()).or_default() -= i64::from(line.quantity);
        }
        self.open
            .insert(order_id.to_string(), Reservation::Reserved(lines));
    }

    /// What the warehouse did for an order: open, or among the newest closed.
    pub fn reservation(&self, order_id: &str) -> Option<&Reservation> {
        self.open
            .get(order_id)
            .or_else(|| self.closed.get(order_id))
    }
}
