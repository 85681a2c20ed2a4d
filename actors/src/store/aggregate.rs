//! The offline stores' stock: ONE aggregate (like the warehouse) so no unit is promised twice;
//! with stock split by SKU, one per shard, reserving an order's lines shard by shard at the
//! store the first shard chose ([`crate::stock`]). Like the warehouse, it tracks an order only
//! while it may still act on it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Line, PRODUCTS, STORES};
use crate::engine::{Aggregate, Plan, Shard};
use crate::events::StoreEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent};
use crate::recent::{Notes, Recent};
use crate::rpc::DomainError;
use crate::stock::{self, Chain};

/// The aggregate id of all stores' stock.
pub const STORES_ID: &str = "stores";

/// The stores' part in an order. Open while the order may still need it: `Reserved` until the
/// order ships or is cancelled (released), `Unavailable` until it is cancelled, `Cancelled` until
/// its turn comes (the warehouse's shortage, or the shard before it) or it is forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreReservation {
    /// The lines held at `store_id` (with stock split by SKU, this shard's).
    Reserved {
        store_id: String,
        lines: Vec<Line>,
    },
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
    /// The SKU shard it is, when stock is split by SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

impl Default for Stores {
    /// The seeded catalog's store stock.
    fn default() -> Self {
        Stores::initial(None)
    }
}

impl Aggregate for Stores {
    type Event = StoreEvent;
    type Command = Infallible;
    type Call = Infallible;
    type Answer = Infallible;

    /// The seeded catalog's store stock of the shard's SKUs.
    fn initial(shard: Option<Shard>) -> Self {
        let mut available: BTreeMap<String, BTreeMap<String, i64>> = STORES
            .iter()
            .map(|s| (s.to_string(), BTreeMap::new()))
            .collect();
        for product in PRODUCTS
            .iter()
            .filter(|p| shard.is_none_or(|s| s.holds(p.sku)))
        {
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
            shard,
        }
    }

    fn apply(&mut self, event: &StoreEvent) {
        match event {
            StoreEvent::StoreStockReserved {
                order_id,
                store_id,
                lines,
                ..
            } => {
                let own = Chain::new(lines, self.shard).own();
                self.hold(order_id, store_id, own);
            }
            StoreEvent::StoreLinesReserved {
                order_id,
                store_id,
                reserved,
                ..
            } => self.hold(order_id, store_id, reserved.clone()),
            StoreEvent::StoreStockUnavailable { order_id, .. } => {
                self.open
                    .insert(order_id.clone(), StoreReservation::Unavailable);
            }
            StoreEvent::StoreStockReleased {
                order_id,
                store_id,
                lines,
                unavailable,
                ..
            } => {
                self.adjust(store_id, lines, 1);
                if *unavailable {
                    self.open
                        .insert(order_id.clone(), StoreReservation::Unavailable);
                } else {
                    self.open.remove(order_id);
                    self.closed
                        .push(order_id.clone(), StoreReservation::Released);
                }
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
            }) if Chain::new(lines, self.shard).is_first() => match current {
                None => {
                    let store_id = self.store_for(&Chain::new(lines, self.shard).own());
                    vec![self.reserve(order_id, store_id, lines, shipping_address)]
                }
                // The cancellation came first: nothing to reserve, and nothing left to wait for.
                Some(StoreReservation::Cancelled) => closed(),
                Some(_) => Vec::new(),
            },
            // The shard before this one held its lines at `store_id`: this shard's turn, there.
            Inbound::Store(StoreEvent::StoreLinesReserved {
                store_id,
                reserved,
                lines,
                shipping_address,
                ..
            }) if Chain::new(lines, self.shard).follows(reserved) => match current {
                None => {
                    let own = Chain::new(lines, self.shard).own();
                    let store_id = self.has(store_id, &own).then_some(store_id.as_str());
                    vec![self.reserve(order_id, store_id, lines, shipping_address)]
                }
                Some(StoreReservation::Cancelled) => closed(),
                Some(_) => Vec::new(),
            },
            // Another shard had none: the lines held here go back.
            Inbound::Store(StoreEvent::StoreStockUnavailable { .. }) => match current {
                Some(StoreReservation::Reserved { store_id, lines }) => {
                    vec![StoreEvent::StoreStockReleased {
                        order_id: order_id.to_string(),
                        store_id: store_id.clone(),
                        lines: lines.clone(),
                        reason: "another line of the order is in no store".into(),
                        unavailable: true,
                    }]
                }
                _ => Vec::new(),
            },
            // None of its lines is this shard's: nothing held, nothing will be.
            Inbound::Order(OrderEvent::OrderCancelled { skus, .. })
                if !stock::concerns(self.shard, skus) =>
            {
                Vec::new()
            }
            Inbound::Order(OrderEvent::OrderCancelled {
                reason, confirmed, ..
            }) => match current {
                Some(StoreReservation::Reserved { store_id, lines }) => {
                    vec![StoreEvent::StoreStockReleased {
                        order_id: order_id.to_string(),
                        store_id: store_id.clone(),
                        lines: lines.clone(),
                        reason: reason.clone(),
                        unavailable: false,
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
            Inbound::Order(OrderEvent::OrderShipped { .. }) => match current {
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

    /// Reserve this shard's lines at `store_id` (the last shard: and decide the order), or
    /// report that no store has them (`None`).
    fn reserve(
        &self,
        order_id: &str,
        store_id: Option<&str>,
        lines: &[Line],
        shipping_address: &str,
    ) -> StoreEvent {
        let chain = Chain::new(lines, self.shard);
        match store_id {
            None => StoreEvent::StoreStockUnavailable {
                order_id: order_id.to_string(),
                lines: lines.to_vec(),
            },
            Some(store_id) if chain.is_last() => StoreEvent::StoreStockReserved {
                order_id: order_id.to_string(),
                store_id: store_id.to_string(),
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
            },
            Some(store_id) => StoreEvent::StoreLinesReserved {
                order_id: order_id.to_string(),
                store_id: store_id.to_string(),
                reserved: chain.own(),
                lines: lines.to_vec(),
                shipping_address: shipping_address.to_string(),
            },
        }
    }

    /// Hold `lines` (this shard's) at `store_id` for the order.
    fn hold(&mut self, order_id: &str, store_id: &str, lines: Vec<Line>) {
        self.adjust(store_id, &lines, -1);
        self.open.insert(
            order_id.to_string(),
            StoreReservation::Reserved {
                store_id: store_id.to_string(),
                lines,
            },
        );
    }

    fn adjust(&mut self, store_id: &str, lines: &[Line], sign: i64) {
        let stock = self.available.entry(store_id.to_string()).or_default();
        for line in lines {
            *stock.entry(line.sku.clone()).or_default() += sign * i64::from(line.quantity);
        }
    }

    /// The first store (in id order) that has every line.
    fn store_for(&self, lines: &[Line]) -> Option<&str> {
        self.available
            .keys()
            .find(|store| self.has(store, lines))
            .map(String::as_str)
    }

    /// Does `store_id` have every line?
    fn has(&self, store_id: &str, lines: &[Line]) -> bool {
        let stock = self.available.get(store_id);
        lines.iter().all(|l| {
            stock
                .and_then(|s| s.get(&l.sku))
                .is_some_and(|units| *units >= i64::from(l.quantity))
        })
    }
}
