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
        /// The payment gateway's token for the card (never the card number). Events written
        /// before tokenization hold the test card number here; the gateway still accepts it.
        payment_token: String,
        /// What may be shown of the card (absent in events written before tokenization).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        card_brand: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        card_last4: Option<String>,
        shipping_address: String,
        placed_at: DateTime<Utc>,
        /// Identifies the request, so a replay with the same Idempotency-Key but another body
        /// is refused instead of answered with the wrong order.
        request_fingerprint: String,
    },
    OrderConfirmed {
        lines: Vec<Line>,
        estimated_delivery: String,
        /// `warehouse` or the store id the parcel leaves from (absent in old events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ship_from: Option<String>,
    },
    /// The parcel left, from `ship_from`: the stock held for it there went with it. Stock held
    /// elsewhere for it (a SKU shard before a shortage) goes back.
    OrderShipped {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ship_from: Option<String>,
    },
    OrderCompleted {},
    OrderCancelRequested {},
    OrderCancelRejected {
        reason: String,
    },
    OrderCancelled {
        reason: String,
        /// The order was confirmed when cancelled: its stock was settled (the warehouse, and
        /// the stores if it was short, had answered), so no stock decision is still on its way
        /// (with stock split by SKU, a shard's give-back after a shortage may be: it still
        /// holds the lines, and releases them on this).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        confirmed: bool,
        /// The SKUs of its lines, so that a stock shard without any of them has nothing to
        /// compensate or note (absent in old events: every shard may be concerned).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skus: Vec<String>,
    },
}

impl DomainEvent for OrderEvent {
    const DOMAIN: Domain = Domain::Orders;
}
