use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InventoryEvent {
    InventoryReserved {
        order_id: String,
        lines: Vec<Line>,
        shipping_address: String,
    },
    /// The warehouse cannot cover the order; a store may (ship-from-store).
    InventoryShortage {
        order_id: String,
        lines: Vec<Line>,
        shipping_address: String,
        missing: Vec<String>,
    },
    /// The compensation: reserved units return to the available count.
    InventoryReleased {
        order_id: String,
        lines: Vec<Line>,
        reason: String,
    },
    /// The order was cancelled before anything was reserved: a later approval reserves nothing.
    InventoryCancellationNoted {
        order_id: String,
        /// When: the note is forgotten after `recent::FORGET_AFTER` (absent in old events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        noted_at: Option<DateTime<Utc>>,
    },
    /// Nothing more to do for the order: it shipped (its reserved units left with it), it was
    /// cancelled after a shortage, or its payment was approved after the cancellation was noted.
    /// The warehouse stops tracking it.
    InventoryOrderClosed { order_id: String },
}

impl DomainEvent for InventoryEvent {
    const DOMAIN: Domain = Domain::Inventory;
}
