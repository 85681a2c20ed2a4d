//! The payment service: authorizes each order's amount at the payment gateway, and refunds it
//! when the saga fails or the customer cancels. One aggregate per order (id = order id).
//! Every gateway call carries an idempotency key derived from the order, so a redelivered event
//! (after a crash between the call and the commit) never charges or refunds twice.

pub mod aggregate;

use bus::{Domain, Verdict};

use self::aggregate::{GatewayAnswer, GatewayCall, Payment};
use crate::engine::{EngineError, Placement, Service};
use crate::external::payment_gateway::{Authorization, GatewayClient};
use crate::Settings;

pub struct PaymentService {
    gateway: GatewayClient,
    deadline: chrono::Duration,
}

impl Service for PaymentService {
    type State = Payment;
    const LISTENS: &'static [(Domain, &'static [&'static str])] = &[
        // It refunds on `OrderCancelled` only: the order decides whether a failure is believed.
        // `OrderShipped`: nothing can cancel the order now, so the payment is final.
        (
            Domain::Orders,
            &["OrderCreated", "OrderCancelled", "OrderShipped"],
        ),
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
            deadline: settings.saga_deadline(),
        })
    }

    async fn call(&self, order_id: &str, call: &GatewayCall) -> Result<GatewayAnswer, Verdict> {
        call_gateway(&self.gateway, order_id, call).await
    }

    /// The gateway may be waited for this long, from when the order was placed.
    fn saga_deadline(&self) -> chrono::Duration {
        self.deadline
    }

    fn view(version: u64, state: &Payment) -> Option<Payment> {
        (version > 0).then(|| state.clone())
    }

    fn part(_order_id: &str, version: u64, state: &Payment) -> Option<Payment> {
        Self::view(version, state)
    }
}

/// Make the call in the gateway's terms. A failure the gateway may recover from (timeout, 5xx,
/// outage) is a `Retry`; a refusal (4xx) can never succeed and is a `Reject`.
async fn call_gateway(
    gateway: &GatewayClient,
    order_id: &str,
    call: &GatewayCall,
) -> Result<GatewayAnswer, Verdict> {
    match call {
        GatewayCall::Authorize {
            amount_cents,
            payment_token,
            ..
        } => authorize(gateway, order_id, *amount_cents, payment_token).await,
        GatewayCall::Refund {
            authorization_id,
            amount_cents,
            ..
        } => refund(gateway, order_id, authorization_id, *amount_cents).await,
        GatewayCall::AuthorizeThenRefund {
            amount_cents,
            payment_token,
            ..
        } => match authorize(gateway, order_id, *amount_cents, payment_token).await? {
            GatewayAnswer::Approved { authorization_id } => {
                refund(gateway, order_id, &authorization_id, *amount_cents).await
            }
            other => Ok(other),
        },
    }
}

async fn authorize(
    gateway: &GatewayClient,
    order_id: &str,
    amount_cents: u64,
    payment_token: &str,
) -> Result<GatewayAnswer, Verdict> {
    Ok(
        match gateway
            .authorize(order_id, amount_cents, payment_token)
            .await?
        {
            Authorization::Approved { authorization_id } => {
                GatewayAnswer::Approved { authorization_id }
            }
            Authorization::Declined { reason } => GatewayAnswer::Declined { reason },
        },
    )
}

async fn refund(
    gateway: &GatewayClient,
    order_id: &str,
    authorization_id: &str,
    amount_cents: u64,
) -> Result<GatewayAnswer, Verdict> {
    let reply = gateway
        .refund(order_id, authorization_id, amount_cents)
        .await?;
    Ok(GatewayAnswer::Refunded {
        refund_id: reply.id,
    })
}

#[cfg(test)]
mod tests;
