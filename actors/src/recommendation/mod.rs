//! The recommendation service: counts which SKUs are bought together in confirmed orders and
//! emits, per confirmed order, the SKUs to recommend with it.

pub mod aggregate;

use std::convert::Infallible;

use bus::{Domain, Verdict};
use serde::{Deserialize, Serialize};

use self::aggregate::{CoPurchases, CO_PURCHASES};
use crate::engine::{EngineError, Placement, Service};
use crate::Settings;

pub struct RecommendationService;

/// `part`: what was recommended with an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendationPart {
    pub recommended_items: Vec<String>,
}

impl Service for RecommendationService {
    type State = CoPurchases;
    const LISTENS: &'static [(Domain, &'static [&'static str])] =
        &[(Domain::Orders, &["OrderConfirmed"])];
    const PLACEMENT: Placement = Placement::One(CO_PURCHASES);
    type View = CoPurchases;
    type Part = RecommendationPart;

    fn new(_settings: &Settings, _ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(RecommendationService)
    }

    /// It never calls anyone.
    async fn call(&self, _order_id: &str, call: &Infallible) -> Result<Infallible, Verdict> {
        match *call {}
    }

    fn view(_version: u64, state: &CoPurchases) -> Option<CoPurchases> {
        Some(state.clone())
    }

    fn part(order_id: &str, _version: u64, state: &CoPurchases) -> Option<RecommendationPart> {
        state.recent.get(order_id).map(|items| RecommendationPart {
            recommended_items: items.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
