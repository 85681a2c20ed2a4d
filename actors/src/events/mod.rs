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
//! OrderShipped ─► payment ─► PaymentClosed (inventory and store close theirs too)
//! ```
//! With stock split by SKU, an order whose lines span shards is reserved shard by shard first
//! (`InventoryLinesReserved`, `StoreLinesReserved`: [`crate::stock`]); the last shard sends the
//! outcome above.
//! Out of order: a cancel that overtakes what it cancels leaves a tombstone
//! (`PaymentVoided`, `InventoryCancellationNoted`, `StoreCancellationNoted`, `ShipmentCancelled`).
//! Compensation runs on the order's word: the order cancels on `PaymentDeclined`,
//! `PaymentAbandoned`, `StoreStockUnavailable`, `ShipmentFailed`, `ShipmentCancelled` (and refuses
//! each of them once the parcel has left: DLQ, nothing compensated); payment refunds or voids,
//! inventory and store release, on `OrderCancelled`. Once the order ships, its payment is
//! final (`PaymentClosed`) and would refuse a cancel.
//! A customer's cancel is `OrderCancelRequested`; the shipment service, which owns the pivot
//! (the parcel leaving), answers `ShipmentCancelled` or `ShipmentCancelRejected`.

use bus::{Domain, Envelope};

use crate::codec::{decode_data, CodecError, EventData};
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
        Inbound::decode_data(&envelope.source, &envelope.event_type, &envelope.data)
    }

    /// The event of type `event_type` from `source` whose fields are `data`.
    pub fn decode_data<D: EventData + ?Sized>(
        source: &str,
        event_type: &str,
        data: &D,
    ) -> Result<Inbound, CodecError> {
        let domain = Domain::from_source(source)
            .ok_or_else(|| CodecError::UnknownSource(source.to_string()))?;
        let (t, d) = (event_type, data);
        Ok(match domain {
            Domain::Orders => Inbound::Order(decode_data(source, t, d)?),
            Domain::Payments => Inbound::Payment(decode_data(source, t, d)?),
            Domain::Inventory => Inbound::Inventory(decode_data(source, t, d)?),
            Domain::Stores => Inbound::Store(decode_data(source, t, d)?),
            Domain::Shipments => Inbound::Shipment(decode_data(source, t, d)?),
            Domain::Recommendations => Inbound::Recommendation(decode_data(source, t, d)?),
        })
    }
}
