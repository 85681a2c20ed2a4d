//! The projection's endpoints (besides `status`, `engine::api::Status`, whose `read_model` it
//! fills):
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `commerce.projection.get` | the order id | [`OrderReadModel`] (404: not seen yet) |
//! | `commerce.projection.rebuild` | nothing | [`RebuildStarted`] (409: one is running) |

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
