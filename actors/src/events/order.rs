use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderCreated {
        order_id: String,
        customer: String,
        lines: Vec<Line>,
        total_cents: u64,
        /// The simulator's card token (a test card number); a real system would tokenize first.
        payment_token: String,
        shipping_address: String,
        placed_at: DateTime<Utc>,
        /// Identifies the request, so a replay with the same Idempotency-Key but another body
        /// is refused instead of answered with the wrong order.
        request_fingerprint: String,
    },
    OrderConfirmed {
        lines: Vec<Line>,
        estimated_delivery: String,
    },
    OrderShipped {},
    OrderCompleted {},
    OrderCancelRequested {},
    OrderCancelRejected {
        reason: String,
    },
    OrderCancelled {
        reason: String,
    },
}

impl DomainEvent for OrderEvent {
    const DOMAIN: Domain = Domain::Orders;
}
