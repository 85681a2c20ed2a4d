//! The inventory service: reserves warehouse stock for paid orders, reports a shortage so a store
//! can step in, and releases reservations when the saga fails or the order is cancelled.

pub mod aggregate;
pub mod events;

use bus::Domain;
use serde_json::{json, Value};

use self::aggregate::{Warehouse, WAREHOUSE};
use self::events::InventoryEvent;
use crate::engine::{EngineError, Reaction, Service};
use crate::events::Inbound;
use crate::Settings;

pub struct InventoryService;

impl Service for InventoryService {
    type State = Warehouse;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Payments, &["PaymentApproved"]),
        (Domain::Orders, &["OrderCancelled"]),
        (Domain::Shipments, &["ShipmentFailed"]),
    ];

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(InventoryService)
    }

    fn route(&self, _event: &Inbound, _saga: &str) -> Option<String> {
        Some(WAREHOUSE.to_string())
    }

    async fn react(
        &self,
        state: &Warehouse,
        event: &Inbound,
        saga: &str,
    ) -> Reaction<InventoryEvent> {
        Ok(state.react(saga, event))
    }

    fn own_aggregate(_saga: &str) -> String {
        WAREHOUSE.to_string()
    }

    fn get_id(_body: &str) -> String {
        WAREHOUSE.to_string()
    }

    fn part_id(_order_id: &str) -> String {
        WAREHOUSE.to_string()
    }

    fn part(order_id: &str, _version: u64, state: &Warehouse) -> Option<Value> {
        state
            .orders
            .get(order_id)
            .map(|r| json!({ "reservation": r }))
    }

    /// `get`: available units per SKU.
    fn view(_version: u64, state: &Warehouse) -> Option<Value> {
        Some(json!({ "available": state.available }))
    }
}

#[cfg(test)]
mod tests;
