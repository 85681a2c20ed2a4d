//! The shipment service: books the carrier once stock is reserved (warehouse or store), follows
//! the carrier's tracking feed (`ShipmentStarted`, `ShipmentDelivered`), and answers a customer's
//! cancel: cancel the booking, or refuse because the parcel left. One aggregate per order.

pub mod aggregate;
pub mod events;

use std::time::Duration;

use bus::{Domain, Verdict};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use self::aggregate::{CarrierAnswer, CarrierCall, Plan, Shipment};
use self::events::ShipmentEvent;
use crate::engine::{Command, EngineError, Handle, Reaction, Service};
use crate::events::Inbound;
use crate::external::{CallError, Client};
use crate::simulators::carrier::{BookingReply, BookingRequest, TrackingPage};
use crate::Settings;

pub struct ShipmentService {
    carrier: CarrierClient,
}

impl Service for ShipmentService {
    type State = Shipment;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Inventory, &["InventoryReserved"]),
        (Domain::Stores, &["StoreStockReserved"]),
        (Domain::Orders, &["OrderCancelRequested"]),
    ];

    fn new(settings: &Settings) -> Result<Self, EngineError> {
        Ok(ShipmentService {
            carrier: CarrierClient::new(&settings.carrier_url())?,
        })
    }

    fn route(&self, _event: &Inbound, saga: &str) -> Option<String> {
        Some(saga.to_string())
    }

    async fn react(
        &self,
        state: &Shipment,
        event: &Inbound,
        saga: &str,
    ) -> Reaction<ShipmentEvent> {
        match state.plan(event) {
            Plan::Emit(events) => Ok(events),
            Plan::Call(call) => {
                let answer = self.carrier.call(saga, &call).await?;
                Ok(Shipment::outcome(call, answer))
            }
        }
    }

    /// Follow the carrier's tracking feed and record each parcel's progress.
    fn background(
        settings: &Settings,
        handle: Handle<Self>,
        shutdown: CancellationToken,
    ) -> Option<LocalBoxFuture<'static, ()>> {
        let carrier = match CarrierClient::new(&settings.carrier_url()) {
            Ok(carrier) => carrier,
            Err(e) => {
                tracing::error!(error = %e, "no carrier tracking");
                return None;
            }
        };
        let every = Duration::from_millis(settings.tracking_poll_ms.max(10));
        Some(track(carrier, handle, every, shutdown).boxed_local())
    }
}

/// Poll the tracking feed from the start (updates are idempotent: a parcel already marked
/// started or delivered gets no new event), turning each update into a command.
async fn track(
    carrier: CarrierClient,
    handle: Handle<ShipmentService>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut after = 0;
    loop {
        match carrier.tracking(after).await {
            Ok(page) if !page.updates.is_empty() => {
                let commands = page
                    .updates
                    .iter()
                    .map(|update| {
                        let status = update.status.clone();
                        Command {
                            aggregate_id: update.order_id.clone(),
                            decide: Box::new(move |shipment: &Shipment, _| {
                                Ok(shipment.carrier_update(&status))
                            }),
                        }
                    })
                    .collect();
                let results = handle.execute_all(commands).await;
                match results.iter().find_map(|r| r.as_ref().err()) {
                    // Read the page again next time: updates are idempotent.
                    Some(e) => tracing::warn!(error = %e, "tracking update not recorded"),
                    None => after = page.next,
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = ?e, "carrier tracking unavailable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The carrier's HTTP API.
pub struct CarrierClient {
    client: Client,
}

impl CarrierClient {
    pub fn new(base: &str) -> Result<Self, EngineError> {
        Ok(CarrierClient {
            client: Client::new(base, "carrier")?,
        })
    }

    pub async fn call(&self, order_id: &str, call: &CarrierCall) -> Result<CarrierAnswer, Verdict> {
        match call {
            CarrierCall::Book {
                lines,
                shipping_address,
                ship_from,
            } => {
                let request = BookingRequest {
                    idempotency_key: format!("book:{order_id}"),
                    order_id: order_id.to_string(),
                    shipping_address: shipping_address.clone(),
                    ship_from: ship_from.clone(),
                    items: lines.iter().map(|l| l.quantity).sum(),
                };
                match self
                    .client
                    .post::<_, BookingReply>("/v1/bookings", &request)
                    .await
                {
                    Ok(reply) => Ok(CarrierAnswer::Booked {
                        booking_id: reply.id,
                        estimated_delivery: reply.estimated_delivery,
                    }),
                    // The carrier refusing this parcel is an answer, not a broken event.
                    Err(CallError::Refused {
                        status: 422,
                        message,
                    }) => Ok(CarrierAnswer::Refused { reason: message }),
                    Err(e) => Err(e.into()),
                }
            }
            CarrierCall::Cancel { booking_id } => {
                let path = format!("/v1/bookings/{booking_id}/cancel");
                match self
                    .client
                    .post::<_, serde_json::Value>(&path, &serde_json::json!({}))
                    .await
                {
                    Ok(_) => Ok(CarrierAnswer::Cancelled),
                    Err(CallError::Refused { status: 409, .. }) => {
                        Ok(CarrierAnswer::AlreadyPickedUp)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    pub async fn tracking(&self, after: u64) -> Result<TrackingPage, CallError> {
        self.client
            .get("/v1/tracking", &[("after", after.to_string())])
            .await
    }
}

#[cfg(test)]
mod tests;
