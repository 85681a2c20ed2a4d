//! The order service's own endpoints (besides those every service answers, `engine::api`):
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `commerce.order.place` | [`PlaceRequest`] | [`Placed`] (422: invalid, or the key was used for another order) |
//! | `commerce.order.cancel` | [`CancelRequest`] | [`Cancelled`] (409 once the parcel has left; 404, also for another customer's order) |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::aggregate::{CancelOutcome, Order, OrderStatus};
use crate::catalog::{Line, OrderRequest};
use crate::rpc::Endpoint;

/// Place an order.
pub struct Place;

impl Endpoint for Place {
    const NAME: &'static str = "place";
    type Request = PlaceRequest;
    type Reply = Placed;
}

/// Ask to cancel an order.
pub struct Cancel;

impl Endpoint for Cancel {
    const NAME: &'static str = "cancel";
    type Request = CancelRequest;
    type Reply = Cancelled;
}

/// Which order to cancel, on whose behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub order_id: String,
    /// The customer asking: another customer's order is "not found". `None`: an operator.
    #[serde(default)]
    pub customer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// The same key (for the same customer) never creates two orders.
    #[serde(default)]
    pub idempotency_key: Option<IdempotencyKey>,
    pub order: OrderRequest,
}

/// A client's Idempotency-Key: at most 255 bytes of visible ASCII (spaces and tabs allowed),
/// not blank; kept trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = String;

    fn try_from(key: String) -> Result<Self, String> {
        let visible = |c: char| c.is_ascii_graphic() || c == ' ' || c == '\t';
        if key.trim().is_empty() || key.len() > 255 || !key.chars().all(visible) {
            return Err("Idempotency-Key must be 1 to 255 visible ASCII characters".into());
        }
        Ok(IdempotencyKey(key.trim().to_string()))
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

/// The order placed, and whether this request created it (`false`: a replay of the same key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub created: bool,
    pub order: OrderView,
}

/// What the cancel did, and the order after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    pub outcome: CancelOutcome,
    pub order: OrderView,
}

/// The order as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    /// `PENDING`, `CONFIRMED`, `SHIPPED`, `COMPLETED`, `CANCELLED`, or `CANCELLING` while a
    /// customer's cancel is being compensated.
    pub status: String,
    pub customer: String,
    pub lines: Vec<Line>,
    pub total_cents: u64,
    pub shipping_address: String,
    pub placed_at: Option<DateTime<Utc>>,
    pub estimated_delivery: Option<String>,
    pub cancel_reason: Option<String>,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> Self {
        let status = match order.status {
            OrderStatus::Pending | OrderStatus::Confirmed if order.cancel_requested => {
                "CANCELLING".to_string()
            }
            status => status.name().to_string(),
        };
        OrderView {
            order_id: order.order_id.clone(),
            status,
            customer: order.customer.clone(),
            lines: order.lines.clone(),
            total_cents: order.total_cents,
            shipping_address: order.shipping_address.clone(),
            placed_at: order.placed_at,
            estimated_delivery: order.estimated_delivery.clone(),
            cancel_reason: order.cancel_reason.clone(),
        }
    }
}
