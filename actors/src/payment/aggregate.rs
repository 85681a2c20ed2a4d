//! One order's payment. Deciding is split in two pure steps around the gateway call:
//! [`Payment::next_call`] says which call an event needs (if any), [`Payment::outcome`] turns the
//! gateway's answer into events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::events::PaymentEvent;
use crate::catalog::Line;
use crate::engine::Aggregate;
use crate::events::{Inbound, OrderEvent, ShipmentEvent, StoreEvent};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub amount_cents: u64,
    pub authorization_id: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub declined: bool,
    pub refunded: bool,
}

/// A call to the payment gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCall {
    Authorize {
        amount_cents: u64,
        payment_token: String,
        lines: Vec<Line>,
        shipping_address: String,
    },
    Refund {
        authorization_id: String,
        amount_cents: u64,
        reason: String,
    },
}

/// The gateway's answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAnswer {
    Approved { authorization_id: String },
    Declined { reason: String },
    Refunded { refund_id: String },
}

impl Aggregate for Payment {
    type Event = PaymentEvent;

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentApproved {
                amount_cents,
                authorization_id,
                approved_at,
                ..
            } => {
                self.amount_cents = *amount_cents;
                self.authorization_id = Some(authorization_id.clone());
                self.approved_at = Some(*approved_at);
            }
            PaymentEvent::PaymentDeclined { amount_cents, .. } => {
                self.amount_cents = *amount_cents;
                self.declined = true;
            }
            PaymentEvent::PaymentRefunded { .. } => self.refunded = true,
        }
    }
}

impl Payment {
    fn attempted(&self) -> bool {
        self.authorization_id.is_some() || self.declined
    }

    /// The gateway call `event` requires, if any. Authorize once per order; refund an approved
    /// payment once, whichever failure or cancel comes first (a late approval is refunded when
    /// the cancel is processed after it: both arrive in order on the ORDERS stream).
    pub fn next_call(&self, event: &Inbound) -> Option<GatewayCall> {
        match event {
            Inbound::Order(OrderEvent::OrderCreated {
                total_cents,
                payment_token,
                lines,
                shipping_address,
                ..
            }) if !self.attempted() => Some(GatewayCall::Authorize {
                amount_cents: *total_cents,
                payment_token: payment_token.clone(),
                lines: lines.clone(),
                shipping_address: shipping_address.clone(),
            }),
            Inbound::Order(OrderEvent::OrderCancelled { reason }) => self.refund(reason),
            Inbound::Store(StoreEvent::StoreStockUnavailable { .. }) => {
                self.refund("out of stock everywhere")
            }
            Inbound::Shipment(ShipmentEvent::ShipmentFailed { reason }) => {
                self.refund(&format!("shipment failed: {reason}"))
            }
            _ => None,
        }
    }

    fn refund(&self, reason: &str) -> Option<GatewayCall> {
        match &self.authorization_id {
            Some(authorization_id) if !self.refunded => Some(GatewayCall::Refund {
                authorization_id: authorization_id.clone(),
                amount_cents: self.amount_cents,
                reason: reason.to_string(),
            }),
            _ => None,
        }
    }

    /// The events for a call's answer.
    pub fn outcome(
        call: GatewayCall,
        answer: GatewayAnswer,
        now: DateTime<Utc>,
    ) -> Vec<PaymentEvent> {
        match (call, answer) {
            (
                GatewayCall::Authorize {
                    amount_cents,
                    lines,
                    shipping_address,
                    ..
                },
                GatewayAnswer::Approved { authorization_id },
            ) => vec![PaymentEvent::PaymentApproved {
                amount_cents,
                payment_method: "card".into(),
                authorization_id,
                approved_at: now,
                lines,
                shipping_address,
            }],
            (GatewayCall::Authorize { amount_cents, .. }, GatewayAnswer::Declined { reason }) => {
                vec![PaymentEvent::PaymentDeclined {
                    amount_cents,
                    reason,
                }]
            }
            (
                GatewayCall::Refund {
                    amount_cents,
                    reason,
                    ..
                },
                GatewayAnswer::Refunded { refund_id },
            ) => vec![PaymentEvent::PaymentRefunded {
                amount_cents,
                refund_id,
                reason,
            }],
            // An answer that does not fit the call: record nothing; the client reports it.
            _ => Vec::new(),
        }
    }
}
