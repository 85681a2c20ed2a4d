//! One order's shipment. The shipment service owns the saga's pivot: whether the parcel left
//! before a cancel is decided here, in this aggregate's order of events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::engine::{Aggregate, Plan};
use crate::events::ShipmentEvent;
use crate::events::{Inbound, InventoryEvent, OrderEvent, StoreEvent};
use crate::rpc::DomainError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    #[default]
    None,
    /// `ShipmentBookingRequested` recorded; the carrier's answer is not (yet).
    Requested,
    /// Past the deadline with the booking's outcome unknown: the carrier is asked what it did.
    Overdue,
    Scheduled,
    Started,
    Delivered,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// A snapshot is the only local copy of a closed one: fields added later read as their default.
#[serde(default)]
pub struct Shipment {
    pub status: ShipmentStatus,
    /// What to book (kept from `ShipmentBookingRequested`).
    pub request: Option<BookingRequest>,
    pub booking_id: Option<String>,
    pub estimated_delivery: Option<String>,
    pub ship_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRequest {
    pub lines: Vec<Line>,
    pub shipping_address: String,
    pub ship_from: String,
}

/// A call to the carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierCall {
    Book(BookingRequest),
    Cancel {
        booking_id: String,
    },
    /// A booking may exist but its answer was never recorded: book again (the carrier finds the
    /// booking by its key, or makes it), then cancel it unless it has left.
    BookThenCancel(BookingRequest),
    /// Past the deadline: keep the booking the carrier made, if it made one (found by key);
    /// if it made none, `BookThenCancel`, which leaves a cancelled booking under the key so a
    /// booking request still in flight books nothing.
    Resolve(BookingRequest),
}

/// The carrier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierAnswer {
    Booked {
        booking_id: String,
        estimated_delivery: String,
        /// The booking's state at the carrier (`booked`, `picked_up`, `delivered`): a booking
        /// found by its key may have moved on while its answer was lost.
        status: String,
    },
    Refused {
        reason: String,
    },
    Cancelled,
    AlreadyPickedUp,
    /// For `BookThenCancel`: the booking's answer, then the cancel's (if one was made).
    BookedThenCancel {
        booking: Box<CarrierAnswer>,
        cancel: Option<Box<CarrierAnswer>>,
    },
}

/// A tracking update from the carrier: the parcel's `status` there (`picked_up`, `delivered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierUpdate {
    pub status: String,
}

pub const CARRIER: &str = "simulated-carrier";

impl Aggregate for Shipment {
    type Event = ShipmentEvent;
    type Command = CarrierUpdate;
    type Call = CarrierCall;
    type Answer = CarrierAnswer;

    fn is_closed(&self) -> bool {
        matches!(
            self.status,
            ShipmentStatus::Delivered | ShipmentStatus::Failed | ShipmentStatus::Cancelled
        )
    }

    fn apply(&mut self, event: &ShipmentEvent) {
        match event {
            ShipmentEvent::ShipmentBookingRequested {
                lines,
                shipping_address,
                ship_from,
                ..
            } => {
                self.status = ShipmentStatus::Requested;
                self.request = Some(BookingRequest {
                    lines: lines.clone(),
                    shipping_address: shipping_address.clone(),
                    ship_from: ship_from.clone(),
                });
            }
            ShipmentEvent::ShipmentScheduled {
                booking_id,
                estimated_delivery,
                ship_from,
                ..
            } => {
                self.status = ShipmentStatus::Scheduled;
                self.booking_id = Some(booking_id.clone());
                self.estimated_delivery = Some(estimated_delivery.clone());
                self.ship_from = Some(ship_from.clone());
            }
            ShipmentEvent::ShipmentBookingOverdue { .. } => self.status = ShipmentStatus::Overdue,
            ShipmentEvent::ShipmentFailed { .. } => self.status = ShipmentStatus::Failed,
            ShipmentEvent::ShipmentStarted {} => self.status = ShipmentStatus::Started,
            ShipmentEvent::ShipmentDelivered {} => self.status = ShipmentStatus::Delivered,
            ShipmentEvent::ShipmentCancelled { .. } => self.status = ShipmentStatus::Cancelled,
            ShipmentEvent::ShipmentCancelRejected { .. } => {}
        }
    }

    /// A tracking update from the carrier.
    /// Updates for a booking whose answer is not recorded yet are dropped here; that answer,
    /// when it comes, carries the booking's state.
    fn handle(&self, update: CarrierUpdate) -> Result<Vec<ShipmentEvent>, DomainError> {
        Ok(progress(self.status, &update.status))
    }

    /// What `event` requires. Booking is two steps: record `ShipmentBookingRequested`, then
    /// (on that event: echoed once it is durable, or from our own stream) call the carrier. So
    /// at a cancel, `None` means certainly no booking, `Requested` means maybe one, `Scheduled`
    /// means one.
    fn react(
        &self,
        _order_id: &str,
        event: &Inbound,
        now: DateTime<Utc>,
    ) -> Plan<ShipmentEvent, CarrierCall> {
        let request = |lines: &Vec<Line>, shipping_address: &String, ship_from: &str| {
            if self.status == ShipmentStatus::None {
                vec![ShipmentEvent::ShipmentBookingRequested {
                    lines: lines.clone(),
                    shipping_address: shipping_address.clone(),
                    ship_from: ship_from.to_string(),
                    requested_at: Some(now),
                }]
            } else {
                // Requested already, or cancelled first (the reserver releases on OrderCancelled).
                Vec::new()
            }
        };
        match event {
            Inbound::Inventory(InventoryEvent::InventoryReserved {
                lines,
                shipping_address,
                ..
            }) => Plan::Emit(request(lines, shipping_address, "warehouse")),
            Inbound::Store(StoreEvent::StoreStockReserved {
                store_id,
                lines,
                shipping_address,
                ..
            }) => Plan::Emit(request(lines, shipping_address, store_id)),
            Inbound::Shipment(ShipmentEvent::ShipmentBookingRequested { .. }) => {
                match (&self.status, &self.request) {
                    (ShipmentStatus::Requested, Some(request)) => {
                        Plan::Call(CarrierCall::Book(request.clone()))
                    }
                    _ => Plan::Emit(Vec::new()),
                }
            }
            // Our own: the deadline passed with the booking unknown; ask the carrier.
            Inbound::Shipment(ShipmentEvent::ShipmentBookingOverdue { .. }) => {
                match (&self.status, &self.request) {
                    (ShipmentStatus::Overdue, Some(request)) => {
                        Plan::Call(CarrierCall::Resolve(request.clone()))
                    }
                    _ => Plan::Emit(Vec::new()),
                }
            }
            // Our own, from streams written before `ShipmentBookingOverdue`: failed at the
            // deadline, a booking may exist; cancel it by key.
            Inbound::Shipment(ShipmentEvent::ShipmentFailed {
                booking_unknown: true,
                ..
            }) => match (&self.status, &self.request) {
                (ShipmentStatus::Failed, Some(request)) => {
                    Plan::Call(CarrierCall::BookThenCancel(request.clone()))
                }
                _ => Plan::Emit(Vec::new()),
            },
            Inbound::Order(OrderEvent::OrderCancelRequested {}) => match self.status {
                ShipmentStatus::None => Plan::Emit(vec![ShipmentEvent::ShipmentCancelled {
                    reason: "cancelled before the carrier was booked".into(),
                }]),
                ShipmentStatus::Requested | ShipmentStatus::Overdue => match &self.request {
                    Some(request) => Plan::Call(CarrierCall::BookThenCancel(request.clone())),
                    None => Plan::Emit(Vec::new()),
                },
                ShipmentStatus::Scheduled => match &self.booking_id {
                    Some(booking_id) => Plan::Call(CarrierCall::Cancel {
                        booking_id: booking_id.clone(),
                    }),
                    None => Plan::Emit(Vec::new()),
                },
                ShipmentStatus::Started | ShipmentStatus::Delivered => {
                    Plan::Emit(vec![ShipmentEvent::ShipmentCancelRejected {
                        reason: "the parcel has already left".into(),
                    }])
                }
                ShipmentStatus::Failed | ShipmentStatus::Cancelled => Plan::Emit(Vec::new()),
            },
            _ => Plan::Emit(Vec::new()),
        }
    }

    fn outcome(
        &self,
        call: CarrierCall,
        answer: CarrierAnswer,
        _now: DateTime<Utc>,
    ) -> Vec<ShipmentEvent> {
        answered(call, answer)
    }

    /// The booking's outcome is still unknown at the saga's deadline, counted from its own
    /// request: stop booking and ask the carrier what it did. Nothing is compensated here; the
    /// carrier's answer decides (see [`CarrierCall::Resolve`]).
    fn give_up(
        &self,
        event: &Inbound,
        _call: &CarrierCall,
        reason: &str,
        now: DateTime<Utc>,
        deadline: chrono::Duration,
    ) -> Option<ShipmentEvent> {
        match event {
            Inbound::Shipment(ShipmentEvent::ShipmentBookingRequested {
                requested_at: Some(at),
                ..
            }) if self.status == ShipmentStatus::Requested
                && at.checked_add_signed(deadline).is_some_and(|end| now > end) =>
            {
                Some(ShipmentEvent::ShipmentBookingOverdue {
                    reason: format!("no answer from the carrier by the deadline: {reason}"),
                })
            }
            _ => None,
        }
    }
}

/// The events for the carrier's answer to a call.
fn answered(call: CarrierCall, answer: CarrierAnswer) -> Vec<ShipmentEvent> {
    match (call, answer) {
        (
            CarrierCall::Book(request),
            CarrierAnswer::Booked {
                booking_id,
                estimated_delivery,
                status,
            },
        ) => {
            let mut events = vec![ShipmentEvent::ShipmentScheduled {
                booking_id,
                carrier: CARRIER.into(),
                estimated_delivery,
                ship_from: request.ship_from,
            }];
            // A booking found by its key may have moved on while its answer was lost.
            events.extend(progress(ShipmentStatus::Scheduled, &status));
            events
        }
        (CarrierCall::Book(_), CarrierAnswer::Refused { reason }) => {
            vec![ShipmentEvent::ShipmentFailed {
                reason,
                booking_unknown: false,
            }]
        }
        (CarrierCall::Cancel { .. }, CarrierAnswer::Cancelled) => {
            vec![ShipmentEvent::ShipmentCancelled {
                reason: "carrier booking cancelled".into(),
            }]
        }
        (CarrierCall::Cancel { .. }, CarrierAnswer::AlreadyPickedUp) => vec![
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentCancelRejected {
                reason: "the carrier had already picked the parcel up".into(),
            },
        ],
        (
            CarrierCall::BookThenCancel(request),
            CarrierAnswer::BookedThenCancel { booking, cancel },
        ) => {
            let mut events = answered(CarrierCall::Book(request), *booking);
            let booking_id = events.iter().find_map(|e| match e {
                ShipmentEvent::ShipmentScheduled { booking_id, .. } => Some(booking_id.clone()),
                _ => None,
            });
            let left = events
                .iter()
                .any(|e| matches!(e, ShipmentEvent::ShipmentStarted {}));
            match (booking_id, cancel) {
                (Some(booking_id), Some(cancel)) => {
                    events.extend(answered(CarrierCall::Cancel { booking_id }, *cancel));
                }
                (Some(_), None) if left => {
                    events.push(ShipmentEvent::ShipmentCancelRejected {
                        reason: "the parcel has already left".into(),
                    });
                }
                // Refused (ShipmentFailed cancels the order) or nothing to cancel.
                _ => {}
            }
            events
        }
        (CarrierCall::Resolve(request), answer) => resolved(request, answer),
        _ => Vec::new(),
    }
}

/// The events for what the carrier did with an overdue booking: a booking it made stands (the
/// order goes on); only its word that there is none fails the step.
fn resolved(request: BookingRequest, answer: CarrierAnswer) -> Vec<ShipmentEvent> {
    let failed = |reason: &str| {
        vec![ShipmentEvent::ShipmentFailed {
            reason: reason.to_string(),
            booking_unknown: false,
        }]
    };
    match answer {
        CarrierAnswer::Booked { ref status, .. } if status == "cancelled" => {
            failed("the carrier's booking was cancelled")
        }
        found @ CarrierAnswer::Booked { .. } => answered(CarrierCall::Book(request), found),
        CarrierAnswer::BookedThenCancel { booking, cancel } => {
            match (*booking, cancel.map(|c| *c)) {
                (CarrierAnswer::Refused { reason }, _) => failed(&reason),
                (_, Some(CarrierAnswer::Cancelled)) => failed(
                    "the carrier had booked nothing by the deadline (the booking key is now \
                     cancelled there)",
                ),
                // Booked by a request still in flight, and picked up before the cancel.
                (booking, Some(CarrierAnswer::AlreadyPickedUp)) => {
                    let mut events = answered(CarrierCall::Book(request), booking);
                    if !events.contains(&ShipmentEvent::ShipmentStarted {}) {
                        events.push(ShipmentEvent::ShipmentStarted {});
                    }
                    events
                }
                // Booked by a request still in flight, and already moved on: it stands.
                (booking, _) => answered(CarrierCall::Book(request), booking),
            }
        }
        _ => Vec::new(),
    }
}

/// Events that take a shipment in `from` to the carrier's `status`.
fn progress(from: ShipmentStatus, status: &str) -> Vec<ShipmentEvent> {
    match (from, status) {
        (ShipmentStatus::Scheduled, "picked_up") => vec![ShipmentEvent::ShipmentStarted {}],
        (ShipmentStatus::Scheduled, "delivered") => vec![
            ShipmentEvent::ShipmentStarted {},
            ShipmentEvent::ShipmentDelivered {},
        ],
        (ShipmentStatus::Started, "delivered") => vec![ShipmentEvent::ShipmentDelivered {}],
        _ => Vec::new(),
    }
}
