//! The shipment service: books the carrier once stock is reserved (warehouse or store), follows
//! the carrier's tracking feed (`ShipmentStarted`, `ShipmentDelivered`), and answers a customer's
//! cancel: cancel the booking, or refuse because the parcel left. One aggregate per order.

pub mod aggregate;

use std::time::Duration;

use bus::{Domain, Verdict};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use self::aggregate::{BookingRequest, CarrierAnswer, CarrierCall, CarrierUpdate, Shipment};
use crate::engine::{Command, EngineError, Handle, Placement, Scope, Service};
use crate::external::carrier::{Booking, BookingReply, Cancellation, CarrierClient};
use crate::Settings;

pub struct ShipmentService {
    carrier: CarrierClient,
    deadline: chrono::Duration,
}

impl Service for ShipmentService {
    type State = Shipment;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Inventory, &["InventoryReserved"]),
        (Domain::Stores, &["StoreStockReserved"]),
        (Domain::Orders, &["OrderCancelRequested"]),
        // Its own: the carrier is called only once the request is recorded, and asked what it
        // booked once the deadline passed (`ShipmentFailed`: the same, from older streams).
        (
            Domain::Shipments,
            &[
                "ShipmentBookingRequested",
                "ShipmentBookingOverdue",
                "ShipmentFailed",
            ],
        ),
    ];
    // The call follows the recorded request at once, not a hop later: the hop bought nothing
    // but the record, and a crash before the call still leaves the stream's copy to make it.
    const ECHO: &'static [&'static str] = &["ShipmentBookingRequested"];
    const PLACEMENT: Placement = Placement::PerOrder;
    type View = Shipment;
    type Part = Shipment;

    fn new(settings: &Settings, ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(ShipmentService {
            carrier: CarrierClient::new(&settings.carrier_url(), ops.guard("carrier"))?,
            deadline: settings.saga_deadline(),
        })
    }

    async fn call(&self, order_id: &str, call: &CarrierCall) -> Result<CarrierAnswer, Verdict> {
        call_carrier(&self.carrier, order_id, call).await
    }

    /// The carrier may be waited for this long, from the booking's request.
    fn saga_deadline(&self) -> chrono::Duration {
        self.deadline
    }

    /// Follow the carrier's tracking feed and record each parcel's progress.
    fn background(
        settings: &Settings,
        ops: &crate::resilience::Ops,
        handle: Handle<Self>,
        scope: Scope,
        shutdown: CancellationToken,
    ) -> Option<LocalBoxFuture<'static, ()>> {
        let guard = ops.guard("carrier-tracking");
        let carrier = match CarrierClient::new(&settings.carrier_url(), guard) {
            Ok(carrier) => carrier,
            Err(e) => {
                tracing::error!(error = %e, "no carrier tracking");
                return None;
            }
        };
        let every = settings.tracking_poll();
        Some(track(carrier, handle, scope, every, shutdown).boxed_local())
    }

    fn view(version: u64, state: &Shipment) -> Option<Shipment> {
        (version > 0).then(|| state.clone())
    }

    fn part(_order_id: &str, version: u64, state: &Shipment) -> Option<Shipment> {
        Self::view(version, state)
    }
}

/// Poll the tracking feed from the start (updates are idempotent: a parcel already marked
/// started or delivered gets no new event), turning each update about an order of `scope`
/// into a command (the other partitions' hosts read the same feed).
async fn track(
    carrier: CarrierClient,
    handle: Handle<ShipmentService>,
    scope: Scope,
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
                    .filter(|update| scope.owns(&update.order_id))
                    .map(|update| Command {
                        aggregate_id: update.order_id.clone(),
                        command: CarrierUpdate {
                            status: update.status.clone(),
                        },
                    })
                    .collect();
                let results = handle.execute_all(commands).await;
                match results.iter().find_map(|r| r.as_ref().err()) {
                    // Read the page again after a pause (updates are idempotent), and stop if
                    // asked: a failing store (a lost lease) must not spin here for ever.
                    Some(e) => tracing::warn!(error = %e, "tracking update not recorded"),
                    None => {
                        after = page.next;
                        continue;
                    }
                }
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

/// Make the call in the carrier's terms. Unavailable is a `Retry`; a refusal other than the
/// carrier's answers (undeliverable, already picked up) is a `Reject`.
async fn call_carrier(
    carrier: &CarrierClient,
    order_id: &str,
    call: &CarrierCall,
) -> Result<CarrierAnswer, Verdict> {
    match call {
        CarrierCall::Book(request) => book(carrier, order_id, request).await,
        CarrierCall::Cancel { booking_id } => cancel(carrier, booking_id).await,
        CarrierCall::BookThenCancel(request) => book_then_cancel(carrier, order_id, request).await,
        CarrierCall::Resolve(request) => match carrier.find(order_id).await? {
            Some(reply) => Ok(booked(reply)),
            None => book_then_cancel(carrier, order_id, request).await,
        },
    }
}

async fn book_then_cancel(
    carrier: &CarrierClient,
    order_id: &str,
    request: &BookingRequest,
) -> Result<CarrierAnswer, Verdict> {
    let booking = book(carrier, order_id, request).await?;
    let cancel = match &booking {
        CarrierAnswer::Booked {
            booking_id, status, ..
        // Already cancelled (an earlier answer was lost): the carrier confirms it again.
        } if status == "booked" || status == "cancelled" => {
            Some(Box::new(cancel(carrier, booking_id).await?))
        }
        _ => None,
    };
    Ok(CarrierAnswer::BookedThenCancel {
        booking: Box::new(booking),
        cancel,
    })
}

/// Book, idempotent by the order's key: a second call returns the first booking.
async fn book(
    carrier: &CarrierClient,
    order_id: &str,
    request: &BookingRequest,
) -> Result<CarrierAnswer, Verdict> {
    let items = request.lines.iter().map(|l| l.quantity).sum();
    let booking = carrier
        .book(
            order_id,
            &request.shipping_address,
            &request.ship_from,
            items,
        )
        .await?;
    Ok(match booking {
        Booking::Booked(reply) => booked(reply),
        // The carrier refusing this parcel is an answer, not a broken event.
        Booking::Refused { reason } => CarrierAnswer::Refused { reason },
    })
}

fn booked(reply: BookingReply) -> CarrierAnswer {
    CarrierAnswer::Booked {
        booking_id: reply.id,
        estimated_delivery: reply.estimated_delivery,
        status: reply.status,
    }
}

async fn cancel(carrier: &CarrierClient, booking_id: &str) -> Result<CarrierAnswer, Verdict> {
    Ok(match carrier.cancel(booking_id).await? {
        Cancellation::Cancelled => CarrierAnswer::Cancelled,
        Cancellation::AlreadyPickedUp => CarrierAnswer::AlreadyPickedUp,
    })
}

#[cfg(test)]
mod tests;
