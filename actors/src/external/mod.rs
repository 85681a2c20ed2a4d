//! Calls to external systems (payment gateway, carrier) over HTTP, with the failure split every
//! caller needs: may succeed later (`Unavailable`: timeout, 5xx, 429) or never (`Refused`: 4xx).
//!
//! Each system's wire types and client live here, apart from the services that call them and
//! the simulators that stand in for them, so both depend on the contract and not on each other.
//! The clients speak the system's terms; each service translates its own calls into them.
//!
//! # Layout
//! - [`Client`], [`CallError`]: the generic HTTP client behind a [`Guard`], and its failures.
//! - [`payment_gateway`]: authorizations and refunds, and [`GatewayClient`](payment_gateway::GatewayClient).
//! - [`carrier`]: bookings and the tracking feed, and [`CarrierClient`](carrier::CarrierClient).

pub mod carrier;
pub mod payment_gateway;

use std::sync::Arc;
use std::time::Duration;

use bus::Verdict;

use crate::resilience::{Guard, Guarded};
use crate::telemetry::trace;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
}

impl From<CallError> for Verdict {
    /// On the bus: retry later, or dead-letter (a refusal will not change on redelivery).
    fn from(e: CallError) -> Verdict {
        match e {
            CallError::Unavailable(reason) => Verdict::Retry(reason),
            refused => Verdict::Reject(refused.to_string()),
        }
    }
}

/// The HTTP client for a dependency could not be built (its TLS or resolver setup failed): a
/// startup problem, not a call's.
#[derive(Debug, thiserror::Error)]
#[error("{dependency} client: {source}")]
pub struct ClientError {
    pub dependency: String,
    #[source]
    pub source: reqwest::Error,
}

/// An HTTP client for one external system, behind its bulkhead and circuit breaker.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    guard: Arc<Guard>,
}

impl Client {
    pub fn new(base: &str, guard: Arc<Guard>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| ClientError {
                dependency: guard.dependency().to_string(),
                source,
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            guard,
        })
    }

    pub async fn post<Q, R>(&self, path: &str, body: &Q) -> Result<R, CallError>
    where
        Q: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        let url = format!("{}{path}", self.base);
        let request = self.http.post(&url).json(body);
        self.guarded("POST", &url, request).await
    }

    pub async fn get<R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<R, CallError> {
        let url = format!("{}{path}", self.base);
        let request = self.http.get(&url).query(query);
        self.guarded("GET", &url, request).await
    }

    /// Only "may succeed later" failures count against the dependency: a refusal is an answer.
    /// Each call is a span, child of the handling it serves.
    async fn guarded<R: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<R, CallError> {
        let span = trace::calling(self.guard.dependency(), method, url);
        let answer = self.guarded_call(url, request).await;
        trace::finish_call(&span, answer.as_ref().map(|_| ()));
        answer
    }

    async fn guarded_call<R: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<R, CallError> {
        let failed = |r: &Result<R, CallError>| matches!(r, Err(CallError::Unavailable(_)));
        match self
            .guard
            .call(failed, || async { read(url, request.send().await).await })
            .await
        {
            Ok(answer) => Ok(answer),
            Err(Guarded::Call(e)) => Err(e),
            // Open breaker or full bulkhead: not called; retry later (redelivery with backoff).
            Err(refused) => Err(CallError::Unavailable(refused.to_string())),
        }
    }
}

/// 5xx, 429, and 408: the server did not take the request in time (a busy server's HTTP layer
/// answers it before the handler ever sees the request), so the same call may succeed later.
fn may_succeed_later(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode as S;
    status.is_server_error() || matches!(status, S::TOO_MANY_REQUESTS | S::REQUEST_TIMEOUT)
}

async fn read<R: serde::de::DeserializeOwned>(
    url: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<R, CallError> {
    let response = sent.map_err(|e| CallError::Unavailable(format!("{url}: {e}")))?;
    let status = response.status();
    if may_succeed_later(status) {
        return Err(CallError::Unavailable(format!("{url}: {status}")));
    }
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default();
        return Err(CallError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    response
        .json()
        .await
        .map_err(|e| CallError::Unavailable(format!("{url}: unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode as S;

    /// A busy server's 408 once dead-lettered an order's payment (found by `bench soak`).
    #[test]
    fn a_request_timeout_is_retried_and_a_refusal_is_not() {
        for status in [
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
            S::SERVICE_UNAVAILABLE,
        ] {
            assert!(may_succeed_later(status), "{status}");
        }
        for status in [
            S::BAD_REQUEST,
            S::PAYMENT_REQUIRED,
            S::NOT_FOUND,
            S::CONFLICT,
        ] {
            assert!(!may_succeed_later(status), "{status}");
        }
    }
}
