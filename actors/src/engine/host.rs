//! Running one service: its own Arbiter (thread), database, NATS connection, one durable consumer
//! per upstream stream, the outbox relay, and the NATS micro service `commerce.<service>.*`
//! (`nats micro ls` lists it). The same code runs in `commerce up` (all services, one process)
//! and `commerce run <service>` (one per process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_rt::Arbiter;
use async_nats::service::ServiceExt;
use bus::envelope::snake_case;
use bus::{BusError, ConsumerSpec, DurableConsumer, OutboxRelay, Publisher, RelayConfig};
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use storage::Store;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::actor::{Handle, ServiceActor};
use super::core::Engine;
use super::{ApiError, EngineError, Service};
use crate::Settings;

/// Requests answered together (commands share one commit and one flush).
const REQUEST_BATCH: usize = 256;

/// A service running on its own Arbiter.
pub struct RunningService {
    pub name: &'static str,
    arbiter: Arbiter,
    done: oneshot::Receiver<Result<(), EngineError>>,
}

impl RunningService {
    /// Wait until the service has stopped (after its shutdown token was cancelled), then stop
    /// its Arbiter. Returns the error it stopped with, if any.
    pub async fn join(self) -> Result<(), EngineError> {
        let result = self
            .done
            .await
            .unwrap_or(Err(EngineError::Stopped(self.name)));
        self.arbiter.stop();
        let arbiter = self.arbiter;
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        result
    }
}

/// Start service `S` on a new Arbiter; returns once it consumes and answers requests.
pub async fn spawn<S: Service>(
    settings: Settings,
    nats_url: String,
    shutdown: CancellationToken,
) -> Result<RunningService, EngineError> {
    spawn_with(S::name(), settings, nats_url, shutdown, |s, u, t, r| {
        run::<S>(s, u, t, r).boxed_local()
    })
    .await
}

/// How a component runs on its Arbiter: until `shutdown`, signalling `ready` once it serves.
pub type Runner = fn(
    Settings,
    String,
    CancellationToken,
    oneshot::Sender<()>,
) -> futures::future::LocalBoxFuture<'static, Result<(), EngineError>>;

/// Start a component on a new Arbiter; returns once it is ready (or why it could not start).
pub async fn spawn_with(
    name: &'static str,
    settings: Settings,
    nats_url: String,
    shutdown: CancellationToken,
    runner: Runner,
) -> Result<RunningService, EngineError> {
    let arbiter = Arbiter::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, mut done_rx) = oneshot::channel();
    arbiter.spawn_fn(move || {
        actix_rt::spawn(async move {
            let result = runner(settings, nats_url, shutdown, ready_tx).await;
            if let Err(e) = &result {
                tracing::error!(service = name, error = %e, "service stopped");
            }
            let _ = done_tx.send(result);
        });
    });
    if ready_rx.await.is_err() {
        // It stopped before it was ready: the reason is in `done`.
        let result = (&mut done_rx)
            .await
            .unwrap_or(Err(EngineError::Stopped(name)));
        arbiter.stop();
        return Err(result.err().unwrap_or(EngineError::Stopped(name)));
    }
    Ok(RunningService {
        name,
        arbiter,
        done: done_rx,
    })
}

/// Where a consumer hands its batches: commits and flushes them, then says how to settle each.
pub trait Sink: Clone + 'static {
    fn name(&self) -> &'static str;
    fn deliver(
        &self,
        batch: Vec<bus::Delivery>,
    ) -> impl std::future::Future<Output = Result<super::core::Settled, EngineError>>;
}

impl<S: Service> Sink for Handle<S> {
    fn name(&self) -> &'static str {
        S::name()
    }
    async fn deliver(
        &self,
        batch: Vec<bus::Delivery>,
    ) -> Result<super::core::Settled, EngineError> {
        Handle::deliver(self, batch).await
    }
}

async fn run<S: Service>(
    settings: Settings,
    nats_url: String,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<(), EngineError> {
    let dir = settings.service_dir(S::name());
    // Present while a recovery runs: if it is still there at start, that recovery was cut short.
    let marker = dir.join("RECOVERING");
    let mut store = Store::open(&dir, &settings.store)?;
    if (settings.rebuild || marker.exists()) && !store.is_empty() {
        // Start from an empty database (we hold its lock, so it is ours to clear).
        drop(store);
        std::fs::remove_dir_all(&dir).map_err(|e| {
            EngineError::Config(format!("cannot clear {} to rebuild: {e}", dir.display()))
        })?;
        store = Store::open(&dir, &settings.store)?;
    }
    let (ops, transitions) = crate::resilience::Ops::new(settings.resilience.clone());
    let service = S::new(&settings, &ops)?;
    let client = bus::connect(&nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    if store.is_empty() {
        // New or lost: restore what the stream knows, and read every upstream event again (even
        // with nothing restored, a reaction may have been lost before it was published).
        let io = |e: std::io::Error| EngineError::Config(format!("{}: {e}", marker.display()));
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        let restored = super::recovery::recover::<S>(&store, &js).await?;
        super::recovery::reset_consumers::<S>(&js).await?;
        std::fs::remove_file(&marker).map_err(io)?;
        if restored > 0 {
            tracing::info!(
                service = S::name(),
                events = restored,
                "database rebuilt from the stream; consumers restart from the beginning"
            );
        }
    }

    let relay = OutboxRelay::new(
        store.clone(),
        Publisher::new(js.clone()),
        RelayConfig::default(),
    );
    let handle = Handle::new(
        ServiceActor::new(Engine::new(service, store.clone())).start(),
        store.clone(),
        relay.stats(),
        ops.clone(),
    );

    let mut tasks = Vec::new();
    tasks.push(actix_rt::spawn(relay.run(shutdown.clone())));
    // Ends when every guard (and so `ops`) is gone.
    actix_rt::spawn(crate::resilience::publish_transitions(
        js.clone(),
        transitions,
    ));
    for (domain, events) in S::LISTENS {
        let mut spec = consumer_spec(domain.stream(), S::name(), &settings);
        spec.filter_subjects = events
            .iter()
            .map(|e| format!("{}.{}.*", domain.subject_prefix(), snake_case(e)))
            .collect();
        let consumer = DurableConsumer::bind(&js, spec).await?;
        tasks.push(actix_rt::spawn(consume(
            js.clone(),
            consumer,
            handle.clone(),
            shutdown.clone(),
        )));
    }

    let micro = client
        .service_builder()
        .description(format!("commerce {} service", S::name()))
        .start(S::name(), env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| micro_error(e.to_string()))?;
    let group = micro.group(format!("commerce.{}", S::name()));
    let slow = Arc::new(AtomicU64::new(0));
    for name in ["status", "get", "part", "slow"].iter().chain(S::COMMANDS) {
        let endpoint = group
            .endpoint(*name)
            .await
            .map_err(|e| micro_error(e.to_string()))?;
        tasks.push(actix_rt::spawn(serve(
            endpoint,
            name,
            handle.clone(),
            slow.clone(),
            shutdown.clone(),
        )));
    }
    tasks.push(actix_rt::spawn(clean_up(
        store.clone(),
        Duration::from_secs(settings.outbox_retention_secs),
        Duration::from_secs(settings.inbox_retention_secs),
        shutdown.clone(),
    )));
    if let Some(work) = S::background(&settings, &ops, handle.clone(), shutdown.clone()) {
        tasks.push(actix_rt::spawn(work));
    }

    tracing::info!(service = S::name(), db = %store.path().display(), "service started");
    let _ = ready.send(());
    shutdown.cancelled().await;

    for task in tasks {
        let _ = task.await;
    }
    let _ = micro.stop().await;
    let _durable = store.flush().await?;
    if let Err(e) = client.drain().await {
        tracing::debug!(error = %e, "drain");
    }
    tracing::info!(service = S::name(), "service stopped");
    Ok(())
}

/// A durable consumer of `stream` for `durable`, with the settings' redelivery policy.
pub fn consumer_spec(stream: &str, durable: &str, settings: &Settings) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(stream, durable);
    spec.ack_wait = Duration::from_millis(settings.ack_wait_ms.max(1_000));
    spec.max_deliver = settings.max_deliver.max(1);
    if !settings.retry_backoff_ms.is_empty() {
        spec.backoff = settings
            .retry_backoff_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
    }
    spec
}

fn micro_error(reason: String) -> EngineError {
    EngineError::Bus(BusError::JetStream {
        what: "micro service".into(),
        reason,
    })
}

/// Delete sent outbox rows and inbox marks past their retention, once a minute, off the
/// actor's thread.
pub async fn clean_up(
    store: Store,
    outbox: Duration,
    inbox: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let store = store.clone();
        let cleaned = tokio::task::spawn_blocking(move || {
            Ok::<_, storage::StorageError>((
                store.cleanup_sent(outbox)?,
                store.cleanup_inbox(inbox)?,
            ))
        })
        .await;
        match cleaned {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((sent, marks))) => tracing::debug!(sent, marks, "retention: old rows deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention clean-up failed"),
            Err(e) => tracing::warn!(error = %e, "retention clean-up panicked"),
        }
    }
}

/// One durable consumer's loop: fetch a batch, let the sink apply it (commit + flush), then
/// settle it. A batch already fetched is always finished before shutdown is honoured.
pub async fn consume<K: Sink>(
    js: async_nats::jetstream::Context,
    mut consumer: DurableConsumer,
    sink: K,
    shutdown: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = consumer.next_batch(Duration::from_secs(1)) => batch,
        };
        match batch {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => match sink.deliver(batch).await {
                Ok(settled) => consumer.settle(settled.verdicts, settled.flushed).await,
                Err(e) => tracing::warn!(service = sink.name(), error = %e,
                    "batch not applied; the broker redelivers it after AckWait"),
            },
            Err(e) => {
                tracing::warn!(service = sink.name(), error = %e, "consumer lost; binding again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match DurableConsumer::bind(&js, consumer.spec().clone()).await {
                    Ok(bound) => consumer = bound,
                    Err(e) => tracing::warn!(service = sink.name(), error = %e, "bind failed"),
                }
            }
        }
    }
}

/// One micro endpoint: answer requests, commands in batches (one commit, one flush per batch).
/// `slow` (ms, set through the `slow` endpoint) delays answers to queries: a knob for
/// benchmarks and demos of a slow dependency.
async fn serve<S: Service>(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    name: &'static str,
    handle: Handle<S>,
    slow: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            request = endpoint.next() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let mut requests = vec![first];
        while requests.len() < REQUEST_BATCH {
            match endpoint.next().now_or_never() {
                Some(Some(request)) => requests.push(request),
                _ => break,
            }
        }
        match name {
            "status" => {
                for request in requests {
                    respond(&request, Ok(handle.status())).await;
                }
            }
            "slow" => {
                for request in requests {
                    let text = String::from_utf8_lossy(&request.message.payload).to_string();
                    let answer = match text.trim().parse::<u64>() {
                        Ok(ms) => {
                            slow.store(ms, Ordering::Relaxed);
                            Ok(json!({ "service": S::name(), "query_delay_ms": ms }))
                        }
                        Err(_) => Err(ApiError::bad_request("body: the delay in ms")),
                    };
                    respond(&request, answer).await;
                }
            }
            query @ ("get" | "part") => {
                // Each answered on its own, so a slow one does not hold up the rest.
                for request in requests {
                    let handle = handle.clone();
                    let delay = Duration::from_millis(slow.load(Ordering::Relaxed));
                    actix_rt::spawn(async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let body = String::from_utf8_lossy(&request.message.payload).to_string();
                        let answer = lookup(&handle, query, body.trim()).await;
                        respond(&request, answer).await;
                    });
                }
            }
            command => {
                let mut commands = Vec::new();
                let mut waiting = Vec::new();
                for request in requests {
                    match S::command(command, &request.message.payload) {
                        Ok(c) => {
                            commands.push(c);
                            waiting.push(request);
                        }
                        Err(e) => respond(&request, Err(e)).await,
                    }
                }
                let results = handle.execute_all(commands).await;
                for (request, result) in waiting.iter().zip(results) {
                    let answer = result.map(|executed| S::reply(command, &executed));
                    respond(request, answer).await;
                }
            }
        }
    }
}

/// `get` (an aggregate's view) or `part` (an order's part of this service), answered inside
/// the actor so only the answer is copied.
async fn lookup<S: Service>(
    handle: &Handle<S>,
    query: &str,
    body: &str,
) -> Result<Value, ApiError> {
    let order_id = body.to_string();
    let answer = match query {
        "part" => {
            let id = S::part_id(body);
            handle
                .query(id, move |version, state| S::part(&order_id, version, state))
                .await?
        }
        _ => handle.query(S::get_id(body), S::view).await?,
    };
    answer.ok_or_else(|| match query {
        "part" => ApiError::not_found(format!("{} knows nothing of order {body}", S::name())),
        _ => ApiError::not_found(format!("{body} not found")),
    })
}

pub async fn respond(request: &async_nats::service::Request, answer: Result<Value, ApiError>) {
    let response = match answer {
        Ok(value) => Ok(bytes::Bytes::from(value.to_string())),
        Err(e) => Err(async_nats::service::error::Error {
            status: e.message,
            code: usize::from(e.code),
        }),
    };
    if let Err(e) = request.respond(response).await {
        tracing::debug!(error = %e, "reply not sent (requester gone?)");
    }
}

/// Ask a running service's micro endpoint `commerce.<service>.<endpoint>`; errors keep the
/// service's code (404, 409, 422, …), and no answer is a 503.
pub async fn request(
    client: &async_nats::Client,
    service: &str,
    endpoint: &str,
    body: Vec<u8>,
) -> Result<Value, ApiError> {
    let subject = format!("commerce.{service}.{endpoint}");
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, body.into()),
    )
    .await
    .map_err(|_| ApiError::unavailable(format!("the {service} service did not answer in time")))?
    .map_err(|e| ApiError::unavailable(format!("the {service} service is unavailable: {e}")))?;
    if let Some(headers) = &reply.headers {
        if let Some(code) = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE) {
            let code = code.as_str().parse().unwrap_or(500);
            let message = headers
                .get(async_nats::service::NATS_SERVICE_ERROR)
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            return Err(ApiError::new(code, message));
        }
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|e| ApiError::new(502, format!("bad answer from the {service} service: {e}")))
}
