//! The store service: offline stores' stock. When the warehouse is short, the first store that
//! has the whole order reserves it (ship-from-store); if none can, the saga fails here.

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
    ];
    const PLACEMENT: Placement = Placement::One(STORES_ID);
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
}

#[cfg(test)]
mod tests;
