use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InventoryEvent {
    /// The order's stock is held: every line (with stock split by SKU, this shard's lines and
    /// so the last of them: the ones before were `InventoryLinesReserved`).
    InventoryReserved {
        order_id: String,
        lines: Vec<Line>,
        shipping_address: String,
    },
    /// With stock split by SKU, one shard's lines of an order that spans shards: held, and the
    /// next shard's turn (`crate::stock`). Not the order's outcome.
    InventoryLinesReserved {
        order_id: String,
        /// This shard's lines, held.
        reserved: Vec<Line>,
        /// Every line of the order.
        lines: Vec<Line>,
        shipping_address: String,
    },
    /// The warehouse cannot cover the order; a store may (ship-from-store). With stock split
    /// by SKU, shards that held lines of it release them.
    InventoryShortage {
        order_id: String,
        lines: Vec<Line>,
        shipping_address: String,
        missing: Vec<String>,
    },
    /// The compensation: reserved units return to the available count (a shard's own lines).
    InventoryReleased {
        order_id: String,
        lines: Vec<Line>,
        reason: String,
        /// Given back because another SKU shard was short: the order goes on to the stores,
        /// and this shard keeps it as short until it ships or is cancelled.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        short: bool,
    },
    /// The order was cancelled before anything was reserved: a later approval reserves nothing.
    InventoryCancellationNoted {
        order_id: String,
        /// When: the note is forgotten after `recent::FORGET_AFTER` (absent in old events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        noted_at: Option<DateTime<Utc>>,
    },
    /// Nothing more to do for the order: it shipped (its reserved units left with it), it was
    /// cancelled after a shortage, or its turn came (the payment's approval, or the shard
    /// before it) after the cancellation was noted.
    /// The warehouse stops tracking it.
    InventoryOrderClosed { order_id: String },
}

impl DomainEvent for InventoryEvent {
    const DOMAIN: Domain = Domain::Inventory;
}
