//! The projection's endpoints (besides `status`, `engine::api::Status`, whose `read_model` it
//! fills):
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `commerce.projection.get` | the order id | [`OrderReadModel`] (404: not seen yet) |
//! | `commerce.projection.rebuild` | nothing | [`RebuildStarted`] (409: one is running) |
//! | `commerce.projection.sagas` | nothing | [`OpenSagas`]: open ones, and the stuck |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::OrderReadModel;
use crate::rpc::Endpoint;

/// The order detail screen: one lookup.
pub struct ReadOrder;

impl Endpoint for ReadOrder {
    const NAME: &'static str = "get";
    type Request = String;
    type Reply = OrderReadModel;
}

/// Start rebuilding the read model from every stream; follow it with `status`.
pub struct Rebuild;

impl Endpoint for Rebuild {
    const NAME: &'static str = "rebuild";
    type Request = ();
    type Reply = RebuildStarted;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildStarted {
    /// The generation being built.
    pub generation: u32,
    /// Events it will read.
    pub events: u64,
}

/// Sagas that have not ended, and the ones stuck (open past `stuck_after_secs` after their last
/// event).
pub struct Sagas;

impl Endpoint for Sagas {
    const NAME: &'static str = "sagas";
    type Request = ();
    type Reply = OpenSagas;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSagas {
    pub open: u64,
    pub stuck_after_secs: u64,
    pub stuck: u64,
    /// The oldest stuck ones (at most 20), oldest first.
    pub oldest: Vec<StuckSaga>,
    /// Every order the read model knows, and how many are in each order status.
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// The orders changed last (at most 20), newest first.
    #[serde(default)]
    pub recent: Vec<RecentOrder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentOrder {
    pub order_id: String,
    pub status: String,
    pub last_event: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckSaga {
    pub order_id: String,
    pub order_status: String,
    pub shipment_status: Option<String>,
    pub payment_status: Option<String>,
    pub last_event: DateTime<Utc>,
}
