//! The store service: offline stores' stock. When the warehouse is short, the first store that
//! has the whole order reserves it (ship-from-store); if none can, the saga fails here.

pub mod aggregate;
pub mod events;

use bus::Domain;
use serde_json::{json, Value};

use self::aggregate::{Stores, STORES_ID};
use self::events::StoreEvent;
use crate::engine::{EngineError, Reaction, Service};
use crate::events::Inbound;
use crate::Settings;

pub struct StoreService;

impl Service for StoreService {
    type State = Stores;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Inventory, &["InventoryShortage"]),
        (Domain::Orders, &["OrderCancelled"]),
        (Domain::Shipments, &["ShipmentFailed"]),
    ];

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(StoreService)
    }

    fn route(&self, _event: &Inbound, _saga: &str) -> Option<String> {
        Some(STORES_ID.to_string())
    }

    async fn react(&self, state: &Stores, event: &Inbound, saga: &str) -> Reaction<StoreEvent> {
        Ok(state.react(saga, event))
    }

    fn own_aggregate(_saga: &str) -> String {
        STORES_ID.to_string()
    }

    fn get_id(_body: &str) -> String {
        STORES_ID.to_string()
    }

    fn part_id(_order_id: &str) -> String {
        STORES_ID.to_string()
    }

    fn part(order_id: &str, _version: u64, state: &Stores) -> Option<Value> {
        state
            .orders
            .get(order_id)
            .map(|r| json!({ "reservation": r }))
    }

    /// `get`: available units per store and SKU.
    fn view(_version: u64, state: &Stores) -> Option<Value> {
        Some(json!({ "available": state.available }))
    }
}

#[cfg(test)]
mod tests;
