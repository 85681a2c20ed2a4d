//! One order's payment. Deciding is split in pure steps around the gateway call: `react` says
//! what an event needs (events, or a call), `outcome` turns the gateway's answer into events,
//! and `give_up` abandons an authorization the gateway could not answer before the deadline.

use std::convert::Infallible;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Line;
use crate::engine::{Aggregate, Plan};
use crate::events::PaymentEvent;
use crate::events::{Inbound, OrderEvent};
use crate::rpc::DomainError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// A snapshot is the only local copy of a closed one: fields added later read as their default.
#[serde(default)]
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
    /// Final: its order shipped, so nothing will refund it.
    pub closed: bool,
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
    type Command = Infallible;
    type Call = GatewayCall;
    type Answer = GatewayAnswer;

    /// Approved stays open until its order ships: until then a cancel may still refund it.
    fn is_closed(&self) -> bool {
        self.declined || self.refunded || self.voided || self.abandoned || self.closed
    }

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
            PaymentEvent::PaymentClosed {} => self.closed = true,
            PaymentEvent::PaymentAbandoned { amount_cents, .. } => {
                self.amount_cents = *amount_cents;
                self.abandoned = true;
            }
        }
    }

    fn handle(&self, command: Infallible) -> Result<Vec<PaymentEvent>, DomainError> {
        match command {}
    }

    /// What `event` requires. Authorize once per order; refund an approved payment once,
    /// whichever failure or cancel comes first; close it once its order ships (nothing can
    /// cancel the order then), refusing a cancel after that. A cancel can overtake the
    /// `OrderCreated` it cancels (when that one waits for a retry): the payment is then voided,
    /// and the late `OrderCreated` authorizes and refunds at once, since an unanswered earlier
    /// attempt may have charged the card.
    fn react(
        &self,
        _order_id: &str,
        event: &Inbound,
        _now: DateTime<Utc>,
    ) -> Plan<PaymentEvent, GatewayCall> {
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
            Inbound::Order(OrderEvent::OrderCancelled { reason, .. })
                if !self.attempted() && !self.voided =>
            {
                return Plan::Emit(vec![PaymentEvent::PaymentVoided {
                    reason: reason.clone(),
                }]);
            }
            // The order never cancels once shipped; if it did, the refund would not be believed.
            Inbound::Order(OrderEvent::OrderCancelled { .. }) if self.closed => {
                return Plan::Refuse("the order shipped: its payment is final".into());
            }
            Inbound::Order(OrderEvent::OrderCancelled { reason, .. }) => self.refund(reason),
            // Nothing can refund it now: the payment is final.
            Inbound::Order(OrderEvent::OrderShipped { .. })
                if self.authorization_id.is_some() && !self.is_closed() =>
            {
                return Plan::Emit(vec![PaymentEvent::PaymentClosed {}]);
            }
            // Shipping follows the approval, so this one is not known here yet (lost with the
            // database and the stream's tail): kept in DLQ, to replay once it is.
            Inbound::Order(OrderEvent::OrderShipped { .. }) if !self.attempted() => {
                return Plan::Refuse("the order shipped before its payment was approved".into());
            }
            _ => None,
        };
        match call {
            Some(call) => Plan::Call(call),
            None => Plan::Emit(Vec::new()),
        }
    }

    /// The events for a call's answer.
    fn outcome(
        &self,
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
            ) => {
                // Mid-compensation: the gateway refunded, nothing here records it yet.
                bus::failpoints::crash("payment.refunded_before_commit");
                vec![PaymentEvent::PaymentRefunded {
                    amount_cents,
                    refund_id,
                    reason,
                }]
            }
            // An answer that does not fit the call: record nothing; the client reports it.
            _ => Vec::new(),
        }
    }

    /// The gateway stayed unavailable past the saga's deadline, counted from when the order was
    /// placed: give the authorization up (which cancels the order).
    fn give_up(
        &self,
        event: &Inbound,
        call: &GatewayCall,
        reason: &str,
        now: DateTime<Utc>,
        deadline: chrono::Duration,
    ) -> Option<PaymentEvent> {
        let Inbound::Order(OrderEvent::OrderCreated { placed_at, .. }) = event else {
            return None;
        };
        let past = placed_at
            .checked_add_signed(deadline)
            .is_some_and(|end| now > end);
        match call {
            GatewayCall::Authorize {
                amount_cents,
                payment_token,
                ..
            } if past => Some(PaymentEvent::PaymentAbandoned {
                amount_cents: *amount_cents,
                payment_token: payment_token.clone(),
                reason: format!("payment gateway unavailable past the deadline: {reason}"),
            }),
            // Compensations are never given up.
            _ => None,
        }
    }
}

impl Payment {
    fn attempted(&self) -> bool {
        self.authorization_id.is_some() || self.declined || self.refunded || self.abandoned
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
}
