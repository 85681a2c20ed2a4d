//! The serving side: a component's NATS micro service (`nats micro ls` lists it) and one loop per
//! endpoint, decoding typed requests and encoding typed replies.

use std::future::Future;

use async_nats::service::{Request, ServiceExt};
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Address, Component, DomainError, Endpoint};

/// Requests answered together by a batch endpoint (commands share one commit and one flush).
const BATCH: usize = 256;

/// Why a micro service or endpoint could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {component} micro service: {source}")]
pub struct ServeError {
    component: Component,
    #[source]
    source: async_nats::Error,
}

/// A component's micro service with its endpoints running until `shutdown`.
pub struct Server {
    address: Address,
    service: async_nats::service::Service,
    group: async_nats::service::Group,
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Server {
    /// Start the micro service answering at `address` (a component, or one partition of it);
    /// add endpoints with [`Server::each`] and [`Server::batch`].
    pub async fn start(
        client: &async_nats::Client,
        address: Address,
        description: &str,
        shutdown: CancellationToken,
    ) -> Result<Server, ServeError> {
        let component = address.component;
        let service = client
            .service_builder()
            .description(description)
            .start(component.name(), env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|source| ServeError { component, source })?;
        let group = service.group(address.group());
        Ok(Server {
            address,
            service,
            group,
            tasks: Vec::new(),
            shutdown,
        })
    }

    /// Serve `E`, each request on its own task (a slow answer holds up no other).
    pub async fn each<E, F, Fut>(&mut self, handler: F) -> Result<(), ServeError>
    where
        E: Endpoint,
        F: Fn(E::Request) -> Fut + 'static,
        Fut: Future<Output = Result<E::Reply, DomainError>> + 'static,
    {
        let mut endpoint = self.endpoint::<E>().await?;
        let shutdown = self.shutdown.clone();
        self.tasks.push(actix_rt::spawn(async move {
            while let Some(request) = next(&mut endpoint, &shutdown).await {
                match decode::<E>(&request) {
                    Ok(body) => {
                        let answer = handler(body);
                        actix_rt::spawn(async move { respond::<E>(&request, answer.await).await });
                    }
                    Err(Unreadable(why)) => refuse_unreadable::<E>(&request, why).await,
                }
            }
        }));
        Ok(())
    }

    /// Serve `E` in batches: the requests waiting at once go to `handler` together, which
    /// answers each in order (so a batch of commands can share one commit and one flush).
    pub async fn batch<E, F, Fut>(&mut self, handler: F) -> Result<(), ServeError>
    where
        E: Endpoint,
        F: Fn(Vec<E::Request>) -> Fut + 'static,
        Fut: Future<Output = Vec<Result<E::Reply, DomainError>>> + 'static,
    {
        let endpoint = self.endpoint::<E>().await?;
        let shutdown = self.shutdown.clone();
        let batches = serve_batches::<E, _, _>(endpoint, handler, shutdown);
        self.tasks.push(actix_rt::spawn(batches));
        Ok(())
    }

    async fn endpoint<E: Endpoint>(
        &self,
    ) -> Result<async_nats::service::endpoint::Endpoint, ServeError> {
        let component = self.address.component;
        self.group
            .endpoint(E::NAME)
            .await
            .map_err(|source| ServeError { component, source })
    }

    /// Wait for every endpoint's loop to end (after shutdown), then stop the micro service.
    pub async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        if let Err(e) = self.service.stop().await {
            tracing::debug!(component = %self.address, error = %e, "micro service stop");
        }
    }
}

/// The next request, or `None` once shut down or closed.
async fn next(
    endpoint: &mut async_nats::service::endpoint::Endpoint,
    shutdown: &CancellationToken,
) -> Option<Request> {
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => None,
            request = endpoint.next() => request,
        }?;
        if is_request(&request) {
            return Some(request);
        }
    }
}

/// Whether `request` was asked by someone waiting for the answer in an inbox. Not a message
/// without a reply subject, nor one a JetStream consumer delivered (its reply is `$JS.ACK.…`):
/// whoever may create a consumer on a stream may have it deliver the stream's messages to any
/// subject, an endpoint's too, so a component could otherwise ask with what it wrote into its
/// own stream. Nor one whose reply is any other subject: the answer would go there, and no
/// permission covers a reply, so a caller could have a stream store it.
fn is_request(request: &Request) -> bool {
    let reply = request.message.reply.as_ref().map(|r| r.as_str());
    let asked = asked(reply);
    if !asked {
        tracing::warn!(subject = %request.message.subject, reply = ?reply,
            "dropped a message to an endpoint that is no request (its reply is no inbox)");
    }
    asked
}

/// A request's reply subject: someone's inbox (`_INBOX.…`, `_INBOX_<identity>.…`), not
/// JetStream's (`$JS.ACK.…`, `$JS.FC.…`) nor a subject a stream stores.
fn asked(reply: Option<&str>) -> bool {
    reply.is_some_and(|reply| reply.starts_with("_INBOX"))
}

async fn serve_batches<E, F, Fut>(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    handler: F,
    shutdown: CancellationToken,
) where
    E: Endpoint,
    F: Fn(Vec<E::Request>) -> Fut,
    Fut: Future<Output = Vec<Result<E::Reply, DomainError>>>,
{
    while let Some(first) = next(&mut endpoint, &shutdown).await {
        let mut requests = vec![first];
        while requests.len() < BATCH {
            match endpoint.next().now_or_never() {
                Some(Some(request)) if is_request(&request) => requests.push(request),
                Some(Some(_)) => {}
                _ => break,
            }
        }
        let mut decoded = Vec::with_capacity(requests.len());
        let mut waiting = Vec::with_capacity(requests.len());
        for request in requests {
            match decode::<E>(&request) {
                Ok(body) => {
                    decoded.push(body);
                    waiting.push(request);
                }
                Err(Unreadable(why)) => refuse_unreadable::<E>(&request, why).await,
            }
        }
        if decoded.is_empty() {
            continue;
        }
        let answers = handler(decoded).await;
        for (request, answer) in waiting.iter().zip(answers) {
            respond::<E>(request, answer).await;
        }
    }
}

/// The request as JSON; an empty body is `null`, and a body that is no JSON at all is read as
/// a JSON string (so `nats req commerce.projection.get <order id>` works unquoted).
fn decode<E: Endpoint>(request: &Request) -> Result<E::Request, Unreadable> {
    decode_body::<E>(&request.message.payload)
}

/// A request the endpoint cannot read, and why.
#[derive(Debug, PartialEq)]
struct Unreadable(String);

/// Answered 400, apart from a refusal of what was asked (422): from our own client it means the
/// asker's build and ours differ, which is the deployment's fault, not its customer's
/// ([`DomainError::from_code`]). A person's `nats req` sees why.
async fn refuse_unreadable<E: Endpoint>(request: &Request, why: String) {
    let error = async_nats::service::error::Error {
        code: 400,
        status: why,
    };
    if let Err(e) = request.respond(Err(error)).await {
        tracing::debug!(endpoint = E::NAME, error = %e, "reply not sent (requester gone?)");
    }
}

fn decode_body<E: Endpoint>(payload: &[u8]) -> Result<E::Request, Unreadable> {
    let payload: &[u8] = match payload {
        b"" => b"null",
        payload => payload,
    };
    let malformed =
        |e: serde_json::Error| Unreadable(format!("malformed {} request: {e}", E::NAME));
    match serde_json::from_slice(payload) {
        Ok(body) => Ok(body),
        Err(e) if e.is_syntax() => match std::str::from_utf8(payload) {
            Ok(text) => serde_json::from_value(serde_json::Value::String(text.trim().into()))
                .map_err(|_| malformed(e)),
            Err(_) => Err(malformed(e)),
        },
        Err(e) => Err(malformed(e)),
    }
}

async fn respond<E: Endpoint>(request: &Request, answer: Result<E::Reply, DomainError>) {
    let response =
        answer
            .and_then(|reply| encode(&reply))
            .map_err(|e| async_nats::service::error::Error {
                code: e.code(),
                status: e.message().to_string(),
            });
    if let Err(e) = request.respond(response).await {
        tracing::debug!(endpoint = E::NAME, error = %e, "reply not sent (requester gone?)");
    }
}

fn encode<T: Serialize>(reply: &T) -> Result<bytes::Bytes, DomainError> {
    serde_json::to_vec(reply)
        .map(bytes::Bytes::from)
        .map_err(|e| DomainError::unavailable(format!("unencodable reply: {e}")))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[test]
    fn only_a_reply_to_an_inbox_makes_a_request() {
        assert!(asked(Some("_INBOX_gateway.abc.1")));
        assert!(asked(Some("_INBOX.abc")));
        assert!(!asked(None));
        assert!(!asked(Some("$JS.ACK.PAYMENTS.x.1.1.1.1.0")));
        assert!(!asked(Some("$JS.FC.PAYMENTS.x.1")));
        assert!(!asked(Some("shipments.shipment_failed.o1")));
    }

    struct Named;
    impl Endpoint for Named {
        const NAME: &'static str = "named";
        type Request = String;
        type Reply = ();
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Knob {
        delay_ms: u64,
    }
    struct Knobbed;
    impl Endpoint for Knobbed {
        const NAME: &'static str = "knobbed";
        type Request = Knob;
        type Reply = ();
    }

    #[test]
    fn bodies_are_json_and_a_bare_word_is_a_string() {
        let id = "0193a000-0000-7000-8000-000000000001";
        assert_eq!(
            decode_body::<Named>(format!("\"{id}\"").as_bytes()),
            Ok(id.to_string())
        );
        assert_eq!(
            decode_body::<Named>(format!(" {id}\n").as_bytes()),
            Ok(id.to_string())
        );
        assert_eq!(
            decode_body::<Knobbed>(br#"{"delay_ms": 50}"#),
            Ok(Knob { delay_ms: 50 })
        );
        assert_eq!(decode_body::<Endpoint0>(b""), Ok(()));
        let Unreadable(why) = decode_body::<Knobbed>(b"50").unwrap_err();
        assert!(why.contains("malformed knobbed request"), "{why}");
    }

    struct Endpoint0;
    impl Endpoint for Endpoint0 {
        const NAME: &'static str = "nothing";
        type Request = ();
        type Reply = ();
    }
}
