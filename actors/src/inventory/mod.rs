//! The inventory service: reserves warehouse stock for paid orders, reports a shortage so a store
//! can step in, and releases reservations when the saga fails or the order is cancelled.

pub mod aggregate;

use std::collections::BTreeMap;
use std::convert::Infallible;

use bus::{Domain, Verdict};
use serde::{Deserialize, Serialize};

use self::aggregate::{Reservation, Warehouse, WAREHOUSE};
use crate::catalog::Line;
use crate::engine::{EngineError, Placement, Service};
use crate::Settings;

pub struct InventoryService;

/// `get`: available units per SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarehouseStock {
    pub available: BTreeMap<String, i64>,
}

/// `part`: what the warehouse did for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryPart {
    pub reservation: Reservation,
}

impl Service for InventoryService {
    type State = Warehouse;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Payments, &["PaymentApproved"]),
        (Domain::Orders, &["OrderCancelled", "OrderShipped"]),
        // Its own shards' (stock split by SKU): the one before has reserved, one was short.
        (
            Domain::Inventory,
            &["InventoryLinesReserved", "InventoryShortage"],
        ),
    ];
    const PLACEMENT: Placement = Placement::BySku(WAREHOUSE);
    type View = WarehouseStock;
    type Part = InventoryPart;

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(InventoryService)
    }

    /// It never calls anyone.
    async fn call(&self, _order_id: &str, call: &Infallible) -> Result<Infallible, Verdict> {
        match *call {}
    }

    fn view(_version: u64, state: &Warehouse) -> Option<WarehouseStock> {
        Some(WarehouseStock {
            available: state.available.clone(),
        })
    }

    fn part(order_id: &str, _version: u64, state: &Warehouse) -> Option<InventoryPart> {
        state.reservation(order_id).map(|r| InventoryPart {
            reservation: r.clone(),
        })
    }

    /// The lines held in every shard, or else the most telling state (short, released, a
    /// cancellation noted).
    fn merge(parts: Vec<InventoryPart>) -> Option<InventoryPart> {
        let held: Vec<Line> = parts
            .iter()
            .flat_map(|p| match &p.reservation {
                Reservation::Reserved(lines) => lines.clone(),
                _ => Vec::new(),
            })
            .collect();
        if !held.is_empty() {
            let reservation = Reservation::Reserved(held);
            return Some(InventoryPart { reservation });
        }
        parts.into_iter().min_by_key(|p| match p.reservation {
            Reservation::Short => 0,
            Reservation::Released => 1,
            Reservation::Reserved(_) | Reservation::Cancelled => 2,
        })
    }
}

#[cfg(test)]
mod tests;
