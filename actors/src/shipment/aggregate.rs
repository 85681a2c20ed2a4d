//! One order's shipment. The shipment service owns the saga's pivot: whether the parcel left
//! before a cancel is decided here, in this aggregate's order of events.

use serde::{Deserialize, Serialize};

use super::events::ShipmentEvent;
use crate::catalog::Line;
use crate::engine::Aggregate;
use crate::events::{Inbound, InventoryEvent, OrderEvent, StoreEvent};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    #[default]
    None,
    Scheduled,
    Started,
    Delivered,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    pub status: ShipmentStatus,
    pub booking_id: Option<String>,
    pub estimated_delivery: Option<String>,
    pub ship_from: Option<String>,
}

/// A call to the carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierCall {
    Book {
        lines: Vec<Line>,
        shipping_address: String,
        ship_from: String,
    },
    Cancel {
        booking_id: String,
    },
}

/// The carrier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierAnswer {
    Booked {
        booking_id: String,
        estimated_delivery: String,
    },
    Refused {
        reason: String,
    },
    Cancelled,
    AlreadyPickedUp,
}

/// What an event needs: nothing, events right away, or a carrier call first.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Emit(Vec<ShipmentEvent>),
    Call(CarrierCall),
}

pub const CARRIER: &str = "simulated-carrier";

impl Aggregate for Shipment {
    type Event = ShipmentEvent;

    fn apply(&mut self, event: &ShipmentEvent) {
        match event {
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
            ShipmentEvent::ShipmentFailed { .. } => self.status = ShipmentStatus::Failed,
            ShipmentEvent::ShipmentStarted {} => self.status = ShipmentStatus::Started,
            ShipmentEvent::ShipmentDelivered {} => self.status = ShipmentStatus::Delivered,
            ShipmentEvent::ShipmentCancelled { .. } => self.status = ShipmentStatus::Cancelled,
            ShipmentEvent::ShipmentCancelRejected { .. } => {}
        }
    }
}

impl Shipment {
    pub fn plan(&self, event: &Inbound) -> Plan {
        let book = |lines: &Vec<Line>, shipping_address: &String, ship_from: &str| {
            if self.status == ShipmentStatus::None {
                Plan::Call(CarrierCall::Book {
                    lines: lines.clone(),
                    shipping_address: shipping_address.clone(),
                    ship_from: ship_from.to_string(),
                })
            } else {
                // Booked already, or cancelled first (the reserver releases on OrderCancelled).
                Plan::Emit(Vec::new())
            }
        };
        match event {
            Inbound::Inventory(InventoryEvent::InventoryReserved {
                lines,
                shipping_address,
                ..
            }) => book(lines, shipping_address, "warehouse"),
            Inbound::Store(StoreEvent::StoreStockReserved {
                store_id,
                lines,
                shipping_address,
                ..
            }) => book(lines, shipping_address, store_id),
            Inbound::Order(OrderEvent::OrderCancelRequested {}) => match self.status {
                ShipmentStatus::None => Plan::Emit(vec![ShipmentEvent::ShipmentCancelled {
                    reason: "cancelled before the carrier was booked".into(),
                }]),
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

    pub fn outcome(call: CarrierCall, answer: CarrierAnswer) -> Vec<ShipmentEvent> {
        match (call, answer) {
            (
                CarrierCall::Book { ship_from, .. },
                CarrierAnswer::Booked {
                    booking_id,
                    estimated_delivery,
                },
            ) => vec![ShipmentEvent::ShipmentScheduled {
                booking_id,
                carrier: CARRIER.into(),
                estimated_delivery,
                ship_from,
            }],
            (CarrierCall::Book { .. }, CarrierAnswer::Refused { reason }) => {
                vec![ShipmentEvent::ShipmentFailed { reason }]
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
            _ => Vec::new(),
        }
    }

    /// A tracking update from the carrier (`picked_up`, `delivered`).
    pub fn carrier_update(&self, status: &str) -> Vec<ShipmentEvent> {
        match (self.status, status) {
            (ShipmentStatus::Scheduled, "picked_up") => vec![ShipmentEvent::ShipmentStarted {}],
            (ShipmentStatus::Scheduled, "delivered") => vec![
                ShipmentEvent::ShipmentStarted {},
                ShipmentEvent::ShipmentDelivered {},
            ],
            (ShipmentStatus::Started, "delivered") => vec![ShipmentEvent::ShipmentDelivered {}],
            _ => Vec::new(),
        }
    }
}
