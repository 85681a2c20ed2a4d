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

use crate::codec::{decode, CodecError};
pub mod inventory;
pub mod order;
pub mod payment;
pub mod recommendation;
pub mod shipment;
pub mod store;

pub use self::inventory::InventoryEvent;
pub use self::order::OrderEvent;
pub use self::payment::PaymentEvent;
pub use self::recommendation::RecommendationEvent;
pub use self::shipment::ShipmentEvent;
pub use self::store::StoreEvent;

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
    pub fn decode(envelope: &Envelope) -> Result<Inbound, CodecError> {
        let domain = envelope.domain()?;
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
