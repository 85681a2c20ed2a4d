use bus::Domain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::codec::DomainEvent;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ShipmentEvent {
    /// Stock is reserved; the carrier is about to be asked. Recorded BEFORE the call, so a
    /// cancel knows a booking may exist even if the call's answer is lost.
    ShipmentBookingRequested {
        lines: Vec<Line>,
        shipping_address: String,
        /// `warehouse` or the store id (ship-from-store).
        ship_from: String,
        /// When the step began: its deadline counts from here.
        #[serde(default)]
        requested_at: Option<DateTime<Utc>>,
    },
    ShipmentScheduled {
        booking_id: String,
        carrier: String,
        estimated_delivery: String,
        /// `warehouse` or the store id (ship-from-store).
        ship_from: String,
    },
    /// The carrier refused the parcel, or stayed unavailable past the saga's deadline: the saga
    /// fails and compensates.
    ShipmentFailed {
        reason: String,
        /// Given up at the deadline: a booking may exist; this service cancels it by key once
        /// the carrier is back.
        #[serde(default)]
        booking_unknown: bool,
    },
    /// The carrier picked the parcel up: the pivot, no cancel after this.
    ShipmentStarted {},
    ShipmentDelivered {},
    /// The customer's cancel won: no parcel will leave (booking cancelled, or never made).
    ShipmentCancelled {
        reason: String,
    },
    /// The customer's cancel lost: the parcel had already left.
    ShipmentCancelRejected {
        reason: String,
    },
}

impl DomainEvent for ShipmentEvent {
    const DOMAIN: Domain = Domain::Shipments;
}
