//! The payment service: authorizes each order's amount at the payment gateway, and refunds it
//! when the saga fails or the customer cancels. One aggregate per order (id = order id).
//! Every gateway call carries an idempotency key derived from the order, so a redelivered event
//! (after a crash between the call and the commit) never charges or refunds twice.

pub mod aggregate;
pub mod events;

use std::sync::Arc;

use bus::{Domain, Verdict};
use chrono::Utc;

use self::aggregate::{GatewayAnswer, GatewayCall, Payment};
use self::events::PaymentEvent;
use crate::engine::{EngineError, Placement, Plan, Reaction, Service};
use crate::events::{Inbound, OrderEvent};
use crate::external::Client;
use crate::resilience::Guard;
use crate::simulators::payment_gateway::{
    AuthorizationReply, AuthorizeRequest, RefundReply, RefundRequest,
};
use crate::Settings;

pub struct PaymentService {
    gateway: GatewayClient,
    deadline: chrono::Duration,
}

impl Service for PaymentService {
    type State = Payment;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        (Domain::Orders, &["OrderCreated", "OrderCancelled"]),
        (Domain::Stores, &["StoreStockUnavailable"]),
        (Domain::Shipments, &["ShipmentFailed"]),
        // Its own: a payment given up at the deadline is voided once the gateway is back.
        (Domain::Payments, &["PaymentAbandoned"]),
    ];
    const PLACEMENT: Placement = Placement::PerOrder;
    type View = Payment;
    type Part = Payment;

    fn new(settings: &Settings, ops: &crate::resilience::Ops) -> Result<Self, EngineError> {
        Ok(PaymentService {
            gateway: GatewayClient::new(
                &settings.payment_gateway_url(),
                ops.guard("payment-gateway"),
            )?,
            deadline: deadline(settings),
        })
    }

    async fn react(&self, state: &Payment, event: &Inbound, saga: &str) -> Reaction<PaymentEvent> {
        match state.plan(event) {
            Plan::Emit(events) => Ok(events),
            Plan::Call(call) => match self.gateway.call(saga, &call).await {
                Ok(answer) => Ok(Payment::outcome(call, answer, Utc::now())),
                // Unavailable (down, open breaker, full bulkhead): retried with backoff until
                // the saga's deadline, then given up, which cancels and compensates.
                Err(Verdict::Retry(reason)) => match event {
                    Inbound::Order(OrderEvent::OrderCreated { placed_at, .. })
                        if placed_at
                            .checked_add_signed(self.deadline)
                            .is_some_and(|end| Utc::now() > end) =>
                    {
                        let reason =
                            format!("payment gateway unavailable past the deadline: {reason}");
                        Payment::abandon(&call, reason)
                            .map(|e| vec![e])
                            .ok_or(Verdict::Retry("unavailable".into()))
                    }
                    _ => Err(Verdict::Retry(reason)),
                },
                Err(other) => Err(other),
            },
        }
    }

    fn view(version: u64, state: &Payment) -> Option<Payment> {
        (version > 0).then(|| state.clone())
    }

    fn part(_order_id: &str, version: u64, state: &Payment) -> Option<Payment> {
        Self::view(version, state)
    }
}

/// The saga deadline as a duration (absurdly large settings mean "never").
pub(crate) fn deadline(settings: &Settings) -> chrono::Duration {
    i64::try_from(settings.saga_deadline_secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .unwrap_or(chrono::Duration::MAX)
}

/// The payment gateway's HTTP API.
pub struct GatewayClient {
    client: Client,
}

impl GatewayClient {
    pub fn new(base: &str, guard: Arc<Guard>) -> Result<Self, EngineError> {
        Ok(GatewayClient {
            client: Client::new(base, guard)?,
        })
    }

    /// Make the call. A failure the gateway may recover from (timeout, 5xx, outage) is a
    /// `Retry`; a refusal (4xx) can never succeed and is a `Reject`.
    pub async fn call(&self, order_id: &str, call: &GatewayCall) -> Result<GatewayAnswer, Verdict> {
        match call {
            GatewayCall::Authorize {
                amount_cents,
                payment_token,
                ..
            } => self.authorize(order_id, *amount_cents, payment_token).await,
            GatewayCall::Refund {
                authorization_id,
                amount_cents,
                ..
            } => self.refund(order_id, authorization_id, *amount_cents).await,
            GatewayCall::AuthorizeThenRefund {
                amount_cents,
                payment_token,
                ..
            } => match self
                .authorize(order_id, *amount_cents, payment_token)
                .await?
            {
                GatewayAnswer::Approved { authorization_id } => {
                    self.refund(order_id, &authorization_id, *amount_cents)
                        .await
                }
                other => Ok(other),
            },
        }
    }

    async fn authorize(
        &self,
        order_id: &str,
        amount_cents: u64,
        payment_token: &str,
    ) -> Result<GatewayAnswer, Verdict> {
        let request = AuthorizeRequest {
            idempotency_key: format!("authorize:{order_id}"),
            order_id: order_id.to_string(),
            amount_cents,
            card_number: payment_token.to_string(),
        };
        let reply: AuthorizationReply = self.client.post("/v1/authorizations", &request).await?;
        Ok(match reply.decline_reason {
            Some(reason) => GatewayAnswer::Declined { reason },
            None => GatewayAnswer::Approved {
                authorization_id: reply.id,
            },
        })
    }

    async fn refund(
        &self,
        order_id: &str,
        authorization_id: &str,
        amount_cents: u64,
    ) -> Result<GatewayAnswer, Verdict> {
        let request = RefundRequest {
            idempotency_key: format!("refund:{order_id}"),
            order_id: order_id.to_string(),
            authorization_id: authorization_id.to_string(),
            amount_cents,
        };
        let reply: RefundReply = self.client.post("/v1/refunds", &request).await?;
        Ok(GatewayAnswer::Refunded {
            refund_id: reply.id,
        })
    }
}

#[cfg(test)]
mod tests;
