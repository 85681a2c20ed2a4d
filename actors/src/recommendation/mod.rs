//! The recommendation service: counts which SKUs are bought together in confirmed orders and
//! emits, per confirmed order, the SKUs to recommend with it.

pub mod aggregate;
pub mod events;

use bus::Domain;

use self::aggregate::{CoPurchases, CO_PURCHASES};
use self::events::RecommendationEvent;
use crate::engine::{EngineError, Reaction, Service};
use crate::events::Inbound;
use crate::Settings;

pub struct RecommendationService;

impl Service for RecommendationService {
    type State = CoPurchases;
    const LISTENS: &'static [(Domain, &'static [&'static str])] =
        &[(Domain::Orders, &["OrderConfirmed"])];

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(RecommendationService)
    }

    fn route(&self, _event: &Inbound, _saga: &str) -> Option<String> {
        Some(CO_PURCHASES.to_string())
    }

    async fn react(
        &self,
        state: &CoPurchases,
        event: &Inbound,
        saga: &str,
    ) -> Reaction<RecommendationEvent> {
        Ok(state.react(saga, event))
    }

    fn own_aggregate(_saga: &str) -> String {
        CO_PURCHASES.to_string()
    }

    fn get_id(_body: &str) -> String {
        CO_PURCHASES.to_string()
    }

    fn part_id(_order_id: &str) -> String {
        CO_PURCHASES.to_string()
    }

    fn part(order_id: &str, _version: u64, state: &CoPurchases) -> Option<serde_json::Value> {
        state
            .by_order
            .get(order_id)
            .map(|items| serde_json::json!({ "recommended_items": items }))
    }

    fn view(_version: u64, state: &CoPurchases) -> Option<serde_json::Value> {
        serde_json::to_value(state).ok()
    }
}

#[cfg(test)]
mod tests;
