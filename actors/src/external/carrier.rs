//! The carrier's HTTP API: its wire types, and the client that calls it. Bookings are
//! idempotent by a key derived from the order; the tracking feed is read from a position.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CallError, Client, ClientError};
use crate::resilience::Guard;

/// `POST /v1/bookings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRequest {
    pub idempotency_key: String,
    pub order_id: String,
    pub shipping_address: String,
    pub ship_from: String,
    pub items: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingReply {
    pub id: String,
    pub idempotency_key: String,
    pub order_id: String,
    pub ship_from: String,
    pub estimated_delivery: String,
    /// `booked`, `picked_up`, `delivered` or `cancelled`.
    pub status: String,
}

/// One entry of the tracking feed (`GET /v1/tracking?after=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingUpdate {
    pub seq: u64,
    pub booking_id: String,
    pub order_id: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingPage {
    pub updates: Vec<TrackingUpdate>,
    /// Pass as `after` for the next page.
    pub next: u64,
}

/// The carrier's answer to a booking. Its refusal of a parcel (422) is an answer, not a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Booking {
    Booked(BookingReply),
    Refused { reason: String },
}

/// The carrier's answer to a cancel: a parcel that was picked up cannot be (409).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    Cancelled,
    AlreadyPickedUp,
}

/// The idempotency key of an order's booking: one booking per order, however often asked.
fn booking_key(order_id: &str) -> String {
    format!("book:{order_id}")
}

/// The carrier's client. A failure it may recover from (timeout, 5xx, outage) is
/// [`CallError::Unavailable`]; any other refusal is [`CallError::Refused`].
pub struct CarrierClient {
    client: Client,
}

impl CarrierClient {
    pub fn new(base: &str, guard: Arc<Guard>) -> Result<Self, ClientError> {
        Ok(CarrierClient {
            client: Client::new(base, guard)?,
        })
    }

    /// Book, idempotent by the order's key: a second call returns the first booking.
    pub async fn book(
        &self,
        order_id: &str,
        shipping_address: &str,
        ship_from: &str,
        items: u32,
    ) -> Result<Booking, CallError> {
        let body = BookingRequest {
            idempotency_key: booking_key(order_id),
            order_id: order_id.to_string(),
            shipping_address: shipping_address.to_string(),
            ship_from: ship_from.to_string(),
            items,
        };
        match self.client.post("/v1/bookings", &body).await {
            Ok(reply) => Ok(Booking::Booked(reply)),
            Err(CallError::Refused {
                status: 422,
                message,
            }) => Ok(Booking::Refused { reason: message }),
            Err(e) => Err(e),
        }
    }

    /// The booking made under the order's key, if the carrier made one.
    pub async fn find(&self, order_id: &str) -> Result<Option<BookingReply>, CallError> {
        let key = booking_key(order_id);
        match self
            .client
            .get("/v1/bookings", &[("idempotency_key", key)])
            .await
        {
            Ok(reply) => Ok(Some(reply)),
            Err(CallError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Cancel a booking; cancelling one already cancelled confirms it again.
    pub async fn cancel(&self, booking_id: &str) -> Result<Cancellation, CallError> {
        let path = format!("/v1/bookings/{booking_id}/cancel");
        match self
            .client
            .post::<_, serde_json::Value>(&path, &serde_json::json!({}))
            .await
        {
            Ok(_) => Ok(Cancellation::Cancelled),
            Err(CallError::Refused { status: 409, .. }) => Ok(Cancellation::AlreadyPickedUp),
            Err(e) => Err(e),
        }
    }

    /// The tracking feed's updates after position `after`.
    pub async fn tracking(&self, after: u64) -> Result<TrackingPage, CallError> {
        self.client
            .get("/v1/tracking", &[("after", after.to_string())])
            .await
    }
}
