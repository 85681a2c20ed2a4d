use bus::Domain;
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::engine::DomainEvent;

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
    },
    ShipmentScheduled {
        booking_id: String,
        carrier: String,
        estimated_delivery: String,
        /// `warehouse` or the store id (ship-from-store).
        ship_from: String,
    },
    /// The carrier refused the parcel: the saga fails and compensates.
    ShipmentFailed {
        reason: String,
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
