use bus::Domain;
use serde::{Deserialize, Serialize};

use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RecommendationEvent {
    /// A confirmed order was counted; `recommended` are the SKUs most often bought with its SKUs.
    RecommendationUpdated {
        order_id: String,
        skus: Vec<String>,
        recommended: Vec<String>,
    },
}

impl DomainEvent for RecommendationEvent {
    const DOMAIN: Domain = Domain::Recommendations;
}
