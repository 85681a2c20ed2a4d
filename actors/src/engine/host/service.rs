//! Running one [`Service`]: its database (rebuilt from its stream when lost), the outbox relay,
//! one durable consumer per upstream stream, and its micro service: `status`, `get`, `part`,
//! `slow` ([`crate::engine::api`]) plus the service's own endpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use bus::envelope::snake_case;
use bus::{Login, OutboxRelay, Publisher, RelayConfig};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Host, RunningComponent};
use crate::engine::actor::{Handle, ServiceActor};
use crate::engine::api::{Get, Part, Slow, SlowRequest, Status};
use crate::engine::core::Engine;
use crate::engine::{recovery, EngineError, Service};
use crate::rpc::{DomainError, Server};
use crate::Settings;

/// Start service `S` on a new Arbiter; returns once it consumes and answers requests.
pub async fn spawn<S: Service>(
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
) -> Result<RunningComponent, EngineError> {
    super::spawn_with(S::COMPONENT, settings, login, shutdown, |s, u, t, r| {
        run::<S>(s, u, t, r).boxed_local()
    })
    .await
}

async fn run<S: Service>(
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<(), EngineError> {
    let dir = settings.service_dir(S::name());
    let store = recovery::open(&dir, &settings)?;
    let (ops, transitions) = crate::resilience::Ops::new(settings.resilience.clone());
    let service = S::new(&settings, &ops)?;
    let mut host = Host::connect(S::COMPONENT, settings, store, &login, shutdown).await?;
    recovery::recover_if_empty::<S>(&dir, &host.store, &host.js).await?;

    let relay = OutboxRelay::new(
        host.store.clone(),
        Publisher::new(host.js.clone()),
        RelayConfig::default(),
    );
    let handle = Handle::new(
        ServiceActor::new(Engine::new(service, host.store.clone())).start(),
        host.store.clone(),
        relay.stats(),
        ops.clone(),
    );
    host.spawn(relay.run(host.shutdown.clone()));
    // Ends when every guard (and so `ops`) is gone.
    actix_rt::spawn(crate::resilience::publish_transitions(
        host.js.clone(),
        transitions,
    ));
    for (domain, events) in S::LISTENS {
        let filter = events
            .iter()
            .map(|e| format!("{}.{}.*", domain.subject_prefix(), snake_case(e)))
            .collect();
        host.consume(domain.stream(), filter, handle.clone())
            .await?;
    }

    let description = format!("commerce {} service", S::name());
    let mut server = host.server(&description).await?;
    serve_common(&mut server, &handle).await?;
    S::endpoints(&mut server, handle.clone()).await?;
    if let Some(work) = S::background(&host.settings, &ops, handle, host.shutdown.clone()) {
        host.spawn(work);
    }
    host.serve_until_shutdown(server, ready).await
}

/// The endpoints every service answers. `slow` delays `get` and `part` answers: a knob for
/// benchmarks and demos of a slow dependency.
async fn serve_common<S: Service>(
    server: &mut Server,
    handle: &Handle<S>,
) -> Result<(), EngineError> {
    let slow = Arc::new(AtomicU64::new(0));
    let h = handle.clone();
    server
        .each::<Status, _, _>(move |()| std::future::ready(Ok(h.status())))
        .await?;
    let knob = slow.clone();
    server
        .each::<Slow, _, _>(move |request: SlowRequest| {
            knob.store(request.delay_ms, Ordering::Relaxed);
            std::future::ready(Ok(request))
        })
        .await?;
    let (h, delay) = (handle.clone(), slow.clone());
    server
        .each::<Get<S>, _, _>(move |order_id: Option<String>| {
            let (h, delay) = (h.clone(), delay.clone());
            async move {
                pause(&delay).await;
                let order_id = order_id.map(|id| id.trim().to_string());
                let id = match (S::PLACEMENT, order_id) {
                    (crate::engine::Placement::PerOrder, None) => {
                        return Err(DomainError::rejected("get: which order?"))
                    }
                    (placement, id) => placement.aggregate_id(id.as_deref().unwrap_or_default()),
                };
                let shown = h.query(id.clone(), S::view).await?;
                shown.ok_or_else(|| DomainError::not_found(format!("{id} not found")))
            }
        })
        .await?;
    let h = handle.clone();
    server
        .each::<Part<S>, _, _>(move |order_id: String| {
            let order_id = order_id.trim().to_string();
            let (h, delay) = (h.clone(), slow.clone());
            async move {
                pause(&delay).await;
                let id = S::PLACEMENT.aggregate_id(&order_id);
                let part = h
                    .query(id, {
                        let order_id = order_id.clone();
                        move |version, state| S::part(&order_id, version, state)
                    })
                    .await?;
                part.ok_or_else(|| {
                    DomainError::not_found(format!(
                        "{} knows nothing of order {order_id}",
                        S::name()
                    ))
                })
            }
        })
        .await?;
    Ok(())
}

async fn pause(delay_ms: &AtomicU64) {
    let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}
