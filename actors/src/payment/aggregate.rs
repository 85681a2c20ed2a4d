//! One order's payment. Deciding is split in two pure steps around the gateway call:
//! [`Payment::plan`] says what an event needs (events, or a call), [`Payment::outcome`] turns the
//! gateway's answer into events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::engine::{Aggregate, Plan};
use crate::events::PaymentEvent;
use crate::events::{Inbound, OrderEvent, ShipmentEvent, StoreEvent};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub amount_cents: u64,
    pub authorization_id: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub declined: bool,
    pub refunded: bool,
    /// Cancelled before it was paid.
    pub voided: bool,
    /// Given up at the saga's deadline (gateway unavailable).
    pub abandoned: bool,
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
    /// Authorize (finding an authorization an earlier, unanswered attempt made, by its key),
    /// then refund it at once: the order was cancelled before it was paid.
    AuthorizeThenRefund {
        amount_cents: u64,
        payment_token: String,
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
            PaymentEvent::PaymentRefunded { amount_cents, .. } => {
                self.amount_cents = *amount_cents;
                self.refunded = true;
            }
            PaymentEvent::PaymentVoided { .. } => self.voided = true,
            PaymentEvent::PaymentAbandoned { amount_cents, .. } => {
                self.amount_cents = *amount_cents;
                self.abandoned = true;
            }
        }
    }
}

impl Payment {
    fn attempted(&self) -> bool {
        self.authorization_id.is_some() || self.declined || self.refunded || self.abandoned
    }

    /// What `event` requires. Authorize once per order; refund an approved payment once,
    /// whichever failure or cancel comes first. A cancel can overtake the `OrderCreated` it
    /// cancels (when that one waits for a retry): the payment is then voided, and the late
    /// `OrderCreated` authorizes and refunds at once, since an unanswered earlier attempt may
    /// have charged the card.
    pub fn plan(&self, event: &Inbound) -> Plan<PaymentEvent, GatewayCall> {
        let call = match event {
            Inbound::Order(OrderEvent::OrderCreated {
                total_cents,
                payment_token,
                ..
            }) if self.voided && !self.attempted() => Some(GatewayCall::AuthorizeThenRefund {
                amount_cents: *total_cents,
                payment_token: payment_token.clone(),
                reason: "the order was cancelled before it was paid".into(),
            }),
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
            // Our own: void whatever an unanswered attempt may have charged.
            Inbound::Payment(PaymentEvent::PaymentAbandoned {
                amount_cents,
                payment_token,
                ..
            }) if !self.refunded => Some(GatewayCall::AuthorizeThenRefund {
                amount_cents: *amount_cents,
                payment_token: payment_token.clone(),
                reason: "given up at the saga deadline".into(),
            }),
            Inbound::Order(OrderEvent::OrderCancelled { reason })
                if !self.attempted() && !self.voided =>
            {
                return Plan::Emit(vec![PaymentEvent::PaymentVoided {
                    reason: reason.clone(),
                }]);
            }
            Inbound::Order(OrderEvent::OrderCancelled { reason }) => self.refund(reason),
            Inbound::Store(StoreEvent::StoreStockUnavailable { .. }) => {
                self.refund("out of stock everywhere")
            }
            Inbound::Shipment(ShipmentEvent::ShipmentFailed { reason, .. }) => {
                self.refund(&format!("shipment failed: {reason}"))
            }
            _ => None,
        };
        match call {
            Some(call) => Plan::Call(call),
            None => Plan::Emit(Vec::new()),
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

    /// The step could not be done before the saga's deadline: give it up.
    pub fn abandon(call: &GatewayCall, reason: String) -> Option<PaymentEvent> {
        match call {
            GatewayCall::Authorize {
                amount_cents,
                payment_token,
                ..
            } => Some(PaymentEvent::PaymentAbandoned {
                amount_cents: *amount_cents,
                payment_token: payment_token.clone(),
                reason,
            }),
            // Compensations are never given up.
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
                }
                | GatewayCall::AuthorizeThenRefund {
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
