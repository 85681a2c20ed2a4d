//! The payment gateway's HTTP API: its wire types, and the client that calls it. Every call
//! carries an idempotency key derived from the order, so a repeated call (a redelivered event
//! after a crash between the call and the commit) never charges or refunds twice.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CallError, Client, ClientError};
use crate::resilience::Guard;

/// `POST /v1/tokens`: exchange a card number for a token (the only call that carries one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub card_number: String,
}

/// A card in the gateway's vault: `POST /v1/tokens` and `GET /v1/tokens/{token}` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardToken {
    pub token: String,
    pub brand: String,
    pub last4: String,
}

/// `POST /v1/authorizations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    pub idempotency_key: String,
    pub order_id: String,
    pub amount_cents: u64,
    /// A token from `POST /v1/tokens`.
    pub payment_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationReply {
    pub id: String,
    pub idempotency_key: String,
    pub order_id: String,
    pub amount_cents: u64,
    /// `approved` or `declined`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

/// `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub idempotency_key: String,
    pub order_id: String,
    pub authorization_id: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundReply {
    pub id: String,
    pub idempotency_key: String,
    pub order_id: String,
    pub authorization_id: String,
    pub amount_cents: u64,
}

/// The gateway's decision on an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Approved { authorization_id: String },
    Declined { reason: String },
}

/// The payment gateway's client. A failure it may recover from (timeout, 5xx, outage) is
/// [`CallError::Unavailable`]; a refusal (4xx) is [`CallError::Refused`].
pub struct GatewayClient {
    client: Client,
}

impl GatewayClient {
    pub fn new(base: &str, guard: Arc<Guard>) -> Result<Self, ClientError> {
        Ok(GatewayClient {
            client: Client::new(base, guard)?,
        })
    }

    /// Exchange a card number for a token. The same card gets the same token (so a client's
    /// retry with the same Idempotency-Key is the same order).
    pub async fn tokenize(&self, card_number: &str) -> Result<CardToken, CallError> {
        let request = TokenRequest {
            card_number: card_number.to_string(),
        };
        self.client.post("/v1/tokens", &request).await
    }

    /// The card behind a token a client brought (a 404 if the gateway does not know it).
    pub async fn card(&self, token: &str) -> Result<CardToken, CallError> {
        let path = format!("/v1/tokens/{}", percent_path(token));
        self.client.get(&path, &[]).await
    }

    /// Authorize `amount_cents` on the card, idempotent by the order: a second call answers
    /// with the first authorization.
    pub async fn authorize(
        &self,
        order_id: &str,
        amount_cents: u64,
        payment_token: &str,
    ) -> Result<Authorization, CallError> {
        let request = AuthorizeRequest {
            idempotency_key: format!("authorize:{order_id}"),
            order_id: order_id.to_string(),
            amount_cents,
            payment_token: payment_token.to_string(),
        };
        let reply: AuthorizationReply = self.client.post("/v1/authorizations", &request).await?;
        Ok(match reply.decline_reason {
            Some(reason) => Authorization::Declined { reason },
            None => Authorization::Approved {
                authorization_id: reply.id,
            },
        })
    }

    /// Refund an authorization, idempotent by the order: a second call answers with the first
    /// refund.
    pub async fn refund(
        &self,
        order_id: &str,
        authorization_id: &str,
        amount_cents: u64,
    ) -> Result<RefundReply, CallError> {
        let request = RefundRequest {
            idempotency_key: format!("refund:{order_id}"),
            order_id: order_id.to_string(),
            authorization_id: authorization_id.to_string(),
            amount_cents,
        };
        self.client.post("/v1/refunds", &request).await
    }
}

/// `token` as one path segment: anything but unreserved characters is percent-encoded.
fn percent_path(token: &str) -> String {
    token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
