//! The calling side: one typed request to a component's endpoint.

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};

use super::{Address, Component, DomainError, Endpoint};

/// How long a component has to answer before it counts as unavailable.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Ask `component`'s endpoint `E`. Errors keep the component's kind; no answer is `Unavailable`.
pub async fn call<E: Endpoint>(
    client: &async_nats::Client,
    component: Component,
    request: &E::Request,
) -> Result<E::Reply, DomainError> {
    call_at::<E>(client, Address::whole(component), request).await
}

/// Ask endpoint `E` of whoever answers at `address` (a component, or one partition of it).
pub async fn call_at<E: Endpoint>(
    client: &async_nats::Client,
    address: Address,
    request: &E::Request,
) -> Result<E::Reply, DomainError> {
    let component = address;
    let body = serde_json::to_vec(request)
        .map_err(|e| DomainError::rejected(format!("request to {component}: {e}")))?;
    let reply = tokio::time::timeout(
        ANSWER_WITHIN,
        client.request(address.subject(E::NAME), body.into()),
    )
    .await
    .map_err(|_| {
        DomainError::unavailable(format!("the {component} service did not answer in time"))
    })?
    .map_err(|e| {
        DomainError::unavailable(format!("the {component} service is unavailable: {e}"))
    })?;
    if let Some(headers) = &reply.headers {
        if let Some(code) = headers.get(NATS_SERVICE_ERROR_CODE) {
            let message = headers
                .get(NATS_SERVICE_ERROR)
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            return Err(DomainError::from_code(code.as_str(), message));
        }
    }
    serde_json::from_slice(&reply.payload).map_err(|e| {
        DomainError::unavailable(format!(
            "unreadable answer from the {component} service: {e}"
        ))
    })
}
