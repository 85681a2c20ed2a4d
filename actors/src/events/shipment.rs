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
    /// The booking's outcome is still unknown at the saga's deadline (the carrier is down or too
    /// slow to answer): from now on the shipment asks the carrier what it booked instead of
    /// booking. Nothing is compensated for this: the carrier may have booked the parcel.
    ShipmentBookingOverdue {
        reason: String,
    },
    /// The carrier refused the parcel, or had booked nothing by the deadline (and the key is now
    /// cancelled at the carrier, so a booking still in flight books nothing): the saga fails and
    /// compensates.
    ShipmentFailed {
        reason: String,
        /// Only in streams written before `ShipmentBookingOverdue` existed: failed at the
        /// deadline with a booking possibly made; this service cancels it by key.
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
