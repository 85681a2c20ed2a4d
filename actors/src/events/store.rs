use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum StoreEvent {
    /// Ship-from-store: one offline store covers the whole order.
    StoreStockReserved {
        order_id: String,
        store_id: String,
        lines: Vec<Line>,
        shipping_address: String,
    },
    /// With stock split by SKU, one shard's lines of an order that spans shards, held at the
    /// store the first shard chose; the next shard's turn (`crate::stock`).
    StoreLinesReserved {
        order_id: String,
        store_id: String,
        /// This shard's lines, held.
        reserved: Vec<Line>,
        /// Every line of the order.
        lines: Vec<Line>,
        shipping_address: String,
    },
    /// No warehouse stock and no store that has it all: the saga fails. With stock split by
    /// SKU, shards that held lines of it release them.
    StoreStockUnavailable { order_id: String, lines: Vec<Line> },
    /// The compensation: the store's reserved units return.
    StoreStockReleased {
        order_id: String,
        store_id: String,
        lines: Vec<Line>,
        reason: String,
        /// Given back because another SKU shard had none: the order will be cancelled, and
        /// this shard keeps it as unavailable until then.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unavailable: bool,
    },
    /// The order was cancelled before any store reserved for it.
    StoreCancellationNoted {
        order_id: String,
        /// When: the note is forgotten after `recent::FORGET_AFTER` (absent in old events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        noted_at: Option<DateTime<Utc>>,
    },
    /// Nothing more to do for the order: it shipped from the store, it was cancelled after no
    /// store had it, or its turn came (the warehouse's shortage, or the shard before it) after
    /// the cancellation was noted. The stores stop tracking it.
    StoreOrderClosed { order_id: String },
}

impl DomainEvent for StoreEvent {
    const DOMAIN: Domain = Domain::Stores;
}
