//! The saga's contract: every service's events, and [`Inbound`], an event from any of them.
//!
//! Events carry what the next step needs (event-carried state transfer): `PaymentApproved`
//! carries the lines and the address so inventory and shipment never ask the order service.
//!
//! ```text
//! OrderCreated ─► payment ─► PaymentApproved ─► inventory ─► InventoryReserved ─┐
//!                       └► PaymentDeclined           └► InventoryShortage ─► store ─► StoreStockReserved
//!                                                                              └► StoreStockUnavailable
//! InventoryReserved | StoreStockReserved ─► shipment ─► ShipmentBookingRequested ─► shipment
//!     ─► (carrier) ─► ShipmentScheduled ─► order ─► OrderConfirmed
//! OrderConfirmed ─► recommendation ─► RecommendationUpdated
//! carrier ─► ShipmentStarted ─► ShipmentDelivered ─► order ─► OrderShipped, OrderCompleted
//! ```
//! Out of order: a cancel that overtakes what it cancels leaves a tombstone
//! (`PaymentVoided`, `InventoryCancellationNoted`, `StoreCancellationNoted`, `ShipmentCancelled`).
//! Compensation: payment refunds on `StoreStockUnavailable`, `ShipmentFailed`, `OrderCancelled`;
//! inventory and store release on `ShipmentFailed`, `OrderCancelled`; order cancels on
//! `PaymentDeclined`, `StoreStockUnavailable`, `ShipmentFailed`, `ShipmentCancelled`.
//! A customer's cancel is `OrderCancelRequested`; the shipment service, which owns the pivot
//! (the parcel leaving), answers `ShipmentCancelled` or `ShipmentCancelRejected`.

use bus::{Domain, Envelope};

use crate::engine::decode;
pub use crate::inventory::events::InventoryEvent;
pub use crate::order::events::OrderEvent;
pub use crate::payment::events::PaymentEvent;
pub use crate::recommendation::events::RecommendationEvent;
pub use crate::shipment::events::ShipmentEvent;
pub use crate::store::events::StoreEvent;

/// An event from any service, as a service receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Order(OrderEvent),
    Payment(PaymentEvent),
    Inventory(InventoryEvent),
    Store(StoreEvent),
    Shipment(ShipmentEvent),
    Recommendation(RecommendationEvent),
}

impl Inbound {
    pub fn decode(envelope: &Envelope) -> Result<Inbound, String> {
        let domain = envelope.domain().map_err(|e| e.to_string())?;
        Ok(match domain {
            Domain::Orders => Inbound::Order(decode(envelope)?),
            Domain::Payments => Inbound::Payment(decode(envelope)?),
            Domain::Inventory => Inbound::Inventory(decode(envelope)?),
            Domain::Stores => Inbound::Store(decode(envelope)?),
            Domain::Shipments => Inbound::Shipment(decode(envelope)?),
            Domain::Recommendations => Inbound::Recommendation(decode(envelope)?),
        })
    }
}
