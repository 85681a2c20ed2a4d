//! The store service: offline stores' stock. When the warehouse is short, the first store that
//! has the whole order reserves it (ship-from-store); if none can, the saga fails here. With
//! stock split by SKU, the store the first shard chose must have the other shards' lines too.

pub mod aggregate;

use std::collections::BTreeMap;
use std::convert::Infallible;

use bus::{Domain, Verdict};
use serde::{Deserialize, Serialize};

use self::aggregate::{StoreReservation, Stores, STORES_ID};
use crate::engine::{EngineError, Placement, Service};
use crate::Settings;

pub struct StoreService;

/// `get`: available units per store and SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStock {
    pub available: BTreeMap<String, BTreeMap<String, i64>>,
}

/// `part`: what the stores did for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePart {
    pub reservation: StoreReservation,
}

impl Service for StoreService {
    type State = Stores;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Inventory, &["InventoryShortage"]),
        (Domain::Orders, &["OrderCancelled", "OrderShipped"]),
        // Its own shards' (stock split by SKU): the one before has reserved, one had none.
        (
            Domain::Stores,
            &["StoreLinesReserved", "StoreStockUnavailable"],
        ),
    ];
    const PLACEMENT: Placement = Placement::BySku(STORES_ID);
    type View = StoreStock;
    type Part = StorePart;

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(StoreService)
    }

    /// It never calls anyone.
    async fn call(&self, _order_id: &str, call: &Infallible) -> Result<Infallible, Verdict> {
        match *call {}
    }

    fn view(_version: u64, state: &Stores) -> Option<StoreStock> {
        Some(StoreStock {
            available: state.available.clone(),
        })
    }

    fn part(order_id: &str, _version: u64, state: &Stores) -> Option<StorePart> {
        state.reservation(order_id).map(|r| StorePart {
            reservation: r.clone(),
        })
    }

    /// The lines held in every shard (all at one store), or else the most telling state.
    fn merge(parts: Vec<StorePart>) -> Option<StorePart> {
        let mut held: Option<(String, Vec<crate::catalog::Line>)> = None;
        for part in &parts {
            if let StoreReservation::Reserved { store_id, lines } = &part.reservation {
                let (_, all) = held.get_or_insert_with(|| (store_id.clone(), Vec::new()));
                all.extend(lines.iter().cloned());
            }
        }
        if let Some((store_id, lines)) = held {
            let reservation = StoreReservation::Reserved { store_id, lines };
            return Some(StorePart { reservation });
        }
        parts.into_iter().min_by_key(|p| match p.reservation {
            StoreReservation::Unavailable => 0,
            StoreReservation::Released => 1,
            StoreReservation::Reserved { .. } | StoreReservation::Cancelled => 2,
        })
    }
}

#[cfg(test)]
mod tests;
