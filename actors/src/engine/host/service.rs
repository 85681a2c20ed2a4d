//! Running one [`Service`]: its database (rebuilt from its stream when lost), the outbox relay,
//! one durable consumer per upstream stream, and its micro service: `status`, `get`, `part`,
//! `slow`, `replay` ([`crate::engine::api`]) plus the service's own endpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use bus::dlq::DeadLetters;
use bus::envelope::snake_case;
use bus::lease::{self, Lease, Role};
use bus::partition;
use bus::term::Term;
use bus::{Login, OutboxRelay, Publisher, RelayConfig};
use futures::FutureExt;
use storage::StorageError;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Host, RunningComponent};
use crate::engine::actor::{Handle, ServiceActor};
use crate::engine::api::{
    Get, Part, Replay, ReplayOutcome, ReplayRequest, Replayed, Slow, SlowRequest, Status,
};
use crate::engine::core::Engine;
use crate::engine::host::consume::dead_letter_owner;
use crate::engine::{recovery, EngineError, Scope, Service};
use crate::rpc::{Address, DomainError, Server};
use crate::telemetry::metrics;
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

/// Run every host of `S` this process runs: the service, or one host per partition of a split
/// service, side by side on this Arbiter. Ready once every host serves; one that stops with an
/// error stops the others (each after its last flush), and the service stops with that error.
async fn run<S: Service>(
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<(), EngineError> {
    let routes = settings.routes();
    let addresses = routes.all(S::COMPONENT);
    if let [address] = addresses[..] {
        let scope = Scope::new(address, routes);
        return run_host::<S>(scope, settings, login, shutdown, ready).await;
    }
    let stop = shutdown.child_token();
    let mut readies = Vec::new();
    let mut hosts = Vec::new();
    for address in addresses {
        let (host_ready, is_ready) = oneshot::channel();
        readies.push(is_ready);
        let scope = Scope::new(address, routes);
        let (settings, login, stop) = (settings.clone(), login.clone(), stop.clone());
        hosts.push(actix_rt::spawn(async move {
            let result = run_host::<S>(scope, settings, login, stop.clone(), host_ready).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        }));
    }
    if futures::future::join_all(readies)
        .await
        .iter()
        .all(Result::is_ok)
    {
        let _ = ready.send(());
    }
    let mut first_error = None;
    for host in hosts {
        let result = host.await.unwrap_or(Err(EngineError::Stopped(S::name())));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Run one host of `S`: the orders of `scope`, with its own database, consumers, relay and
/// micro service. As an instance (`--instance`), only while it holds the lease on its
/// partition: a standby until then, and again after giving an away partition back to its home
/// instance ([`bus::lease::Role`]) or losing the lease.
async fn run_host<S: Service>(
    scope: Scope,
    settings: Settings,
    login: Login,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<(), EngineError> {
    let Some(instance) = settings.instance.clone() else {
        let client = login.connect().await?;
        return serve::<S>(scope, settings, client, &login, None, shutdown, ready).await;
    };
    let partition = scope.address.partition.unwrap_or(0);
    let key = lease::key(S::name(), partition);
    let role = match settings.is_home(partition) {
        true => Role::Home,
        false => Role::Away,
    };
    let mut ready = Some(ready);
    if role == Role::Away {
        // Someone else's partition does not hold up this instance's start.
        let _ = ready.take().map(|r| r.send(()));
    }
    loop {
        let client = login.connect().await?;
        let js = async_nats::jetstream::new(client.clone());
        let holder = lease::Holder::this_process(&instance);
        let Some(lease) = Lease::acquire(&js, &key, &holder, role, &shutdown).await? else {
            return Ok(()); // stopped while a standby
        };
        let claim = lease.claim();
        let fence = claim.fence.clone();
        // Until shutdown, a lost lease, or (away) its home instance asks for it back.
        let owning = shutdown.child_token();
        // Renewed from now on: marking and the rebuild below may outlast the lease.
        let keeper = lease.keep(owning.clone());
        let term = match Term::begin(&js, recovery::own::<S>(), partition, &claim, &holder).await {
            Ok(term) => term,
            // A successor's marker: the lease is lost already.
            Err(e) if fence.is_lost() => {
                tracing::warn!(lease = key, error = %e, "lease lost while marking; standing by");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let asked_back = CancellationToken::new();
        if role == Role::Away {
            let (js, key, owning) = (js.clone(), key.clone(), owning.clone());
            let asked = asked_back.clone();
            actix_rt::spawn(async move {
                if lease::until_wanted(&js, &key, &owning).await {
                    tracing::info!(lease = key, "its home instance wants it: giving it back");
                    asked.cancel();
                    owning.cancel();
                }
            });
        }
        let owned = Owned {
            keeper,
            fence: claim.fence,
            term,
        };
        // Others may have owned the partition since this database was last written.
        let settings = Settings {
            rebuild: true,
            ..settings.clone()
        };
        // Ready is said once this host first serves, whichever attempt that is: a lease lost
        // while starting (a slow start outlived it) must not leave the service never ready.
        let (started, is_started) = oneshot::channel();
        let say_ready = async {
            if is_started.await.is_ok() {
                let _ = ready.take().map(|r| r.send(()));
            }
        };
        let (served, ()) = futures::join!(
            serve::<S>(
                scope,
                settings,
                client,
                &login,
                Some(owned),
                owning,
                started
            ),
            say_ready
        );
        // Stopped, or a flush failed (its watcher may not have run yet): no standing by again.
        let flush_failed = matches!(
            &served,
            Err(EngineError::Storage(
                StorageError::Sync { .. } | StorageError::Poisoned { .. }
            ))
        );
        if shutdown.is_cancelled() || super::must_restart().is_cancelled() || flush_failed {
            return served;
        }
        match served {
            // Given back, its fence closed: a lease not deleted (broker trouble) lapses by
            // itself, and its home instance takes it then.
            Err(e) if asked_back.is_cancelled() => {
                tracing::warn!(lease = key, error = %e, "giving the partition back failed");
            }
            // Lost (it lapsed, and another instance took it): this partition's host stopped,
            // its database is abandoned; the process and its other partitions go on, and it
            // stands by again, to be rebuilt from the stream if it takes the lease again.
            Err(e) if fence.is_lost() => {
                tracing::error!(lease = key, error = %e, "lease lost; standing by again");
                continue;
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        tracing::info!(lease = key, "partition given back; standing by");
    }
}

/// What an instance owns a partition by: its lease (renewed until the last flush), the fence
/// its store checks, and its term on the stream.
struct Owned {
    keeper: lease::Keeper,
    fence: storage::Fence,
    term: Term,
}

/// Serve `scope` until `shutdown`: open (and rebuild, if need be) its database, then consume,
/// relay and answer.
async fn serve<S: Service>(
    scope: Scope,
    settings: Settings,
    client: async_nats::Client,
    login: &Login,
    owned: Option<Owned>,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<(), EngineError> {
    let address = scope.address;
    let dir = settings.host_dir(address);
    let store = recovery::open(&dir, &settings)?;
    let (ops, transitions) = crate::resilience::Ops::new(settings.resilience.clone());
    let service = S::new(&settings, &ops)?;
    let mut host = Host::with_client(address, settings, store, client, login, shutdown);
    let mut publisher = Publisher::new(host.js.clone());
    let mut read_to = recovery::ReadTo::OwnMarker;
    if let Some(Owned {
        keeper,
        fence,
        term,
    }) = owned
    {
        host.store.fence_with(fence);
        bus::failpoints::stall("host.before_serving");
        host.keep_lease(keeper);
        read_to = recovery::ReadTo::TermMarker(term.marker());
        publisher = publisher.within_term(term);
    }
    recovery::recover_if_empty::<S>(&dir, &host.store, &host.js, &host.login, scope, read_to)
        .await?;

    let mut relay = OutboxRelay::new(host.store.clone(), publisher, RelayConfig::default());
    if let Some(own) = address.component.owned_domain() {
        relay = relay.following_elections(own.stream()).await;
    }
    let engine = Engine::new(service, host.store.clone()).in_shard(scope.shard());
    let counts = engine.counts();
    let handle = Handle::new(
        ServiceActor::new(engine).start(),
        host.store.clone(),
        relay.stats(),
        ops.clone(),
        counts,
    );
    host.spawn(relay.run(host.shutdown.clone()));
    // Ends when every guard (and so `ops`) is gone.
    actix_rt::spawn(crate::resilience::publish_transitions(
        host.js.clone(),
        transitions,
    ));
    let slice = recovery::slice(address);
    for (domain, events) in S::LISTENS {
        let filter = events
            .iter()
            .map(|e| partition::events(*domain, &snake_case(e), slice))
            .collect();
        host.consume(domain.stream(), filter, handle.clone())
            .await?;
    }

    let description = match address.partition {
        None => format!("commerce {} service", S::name()),
        Some(k) => format!("commerce {} service, partition {k}", S::name()),
    };
    let mut server = host.server(&description).await?;
    serve_common(
        &mut server,
        &handle,
        DeadLetters::new(host.js.clone()),
        scope,
    )
    .await?;
    S::endpoints(&mut server, handle.clone(), scope).await?;
    if metrics::on() {
        host.spawn(sample(address, handle.clone(), host.shutdown.clone()));
    }
    let background = S::background(&host.settings, &ops, handle, scope, host.shutdown.clone());
    if let Some(work) = background {
        host.spawn(work);
    }
    host.serve_until_shutdown(server, ready).await
}

/// This host's gauges (outbox, inbox, breakers, bulkheads), every few seconds, where metrics
/// are served; a partition's are labelled `payment/2`.
async fn sample<S: Service>(address: Address, handle: Handle<S>, shutdown: CancellationToken) {
    let name = address.to_string();
    let mut tick = tokio::time::interval(metrics::SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = handle.status();
        let oldest = handle.oldest_pending().unwrap_or_default();
        metrics::component(&name, status.outbox_depth, oldest, status.inbox);
        for circuit in &status.circuits {
            metrics::circuit(&circuit.dependency, circuit.state.name(), circuit.in_flight);
        }
    }
}

/// The endpoints every service answers. `slow` delays `get` and `part` answers: a knob for
/// benchmarks and demos of a slow dependency. `replay` re-handles one of its dead letters.
async fn serve_common<S: Service>(
    server: &mut Server,
    handle: &Handle<S>,
    dead_letters: DeadLetters,
    scope: Scope,
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
                    (placement, id) => {
                        placement.aggregate_id(id.as_deref().unwrap_or_default(), scope.shard())
                    }
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
                let id = S::PLACEMENT.aggregate_id(&order_id, scope.shard());
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
    let h = handle.clone();
    server
        .each::<Replay, _, _>(move |request: ReplayRequest| {
            let (h, dead_letters) = (h.clone(), dead_letters.clone());
            async move { replay(&h, &dead_letters, request.seq, scope).await }
        })
        .await?;
    Ok(())
}

/// Re-handle this service's dead letter at DLQ sequence `seq`: read it (only its own), check
/// that it is an event this service listens to, on the subject it belongs on, then run it
/// through the engine like a live delivery. Nothing is published but the service's own
/// reactions, through its outbox; the entry stays in `DLQ` (the caller deletes it).
async fn replay<S: Service>(
    handle: &Handle<S>,
    dead_letters: &DeadLetters,
    seq: u64,
    scope: Scope,
) -> Result<Replayed, DomainError> {
    let name = S::name();
    let owner = dead_letter_owner(scope.address);
    let letter = dead_letters
        .get_own(&owner, seq)
        .await
        .map_err(|e| DomainError::unavailable(e.to_string()))?
        .ok_or_else(|| {
            DomainError::not_found(format!(
                "DLQ #{seq} is not a dead letter of {owner} \
                 (no such entry, discarded, or another consumer's)"
            ))
        })?;
    let envelope = letter.envelope().map_err(|e| {
        DomainError::rejected(format!("DLQ #{seq} is not an event ({e}); discard it"))
    })?;
    let checked = check_replayable::<S>(&letter, &envelope, &owner).and_then(|()| {
        // A split service's partition applies only its own orders' events.
        match scope.owns(&envelope.subject) {
            true => Ok(()),
            false => Err(format!("its order is not in {}'s partition", scope.address)),
        }
    });
    let reply = |outcome| Replayed {
        seq,
        event_id: envelope.id,
        event_type: envelope.event_type.clone(),
        order_id: envelope.subject.clone(),
        outcome,
    };
    if let Err(reason) = checked {
        return Ok(reply(ReplayOutcome::Rejected { reason }));
    }
    let outcome = handle.replay(envelope.clone()).await?;
    tracing::info!(service = name, seq, event = %envelope.id, ?outcome, "dead letter replayed");
    Ok(reply(outcome))
}

/// A dead letter is re-handled only as what it was: an event on its own subject, one this
/// service listens to, dead-lettered by this service.
fn check_replayable<S: Service>(
    letter: &bus::dlq::DeadLetter,
    envelope: &bus::Envelope,
    owner: &str,
) -> Result<(), String> {
    let name = S::name();
    if let Some(other) = letter.consumer_header().filter(|c| *c != owner) {
        return Err(format!(
            "its {} header names {other:?}, not {owner}",
            bus::consumer::DLQ_CONSUMER
        ));
    }
    if let Some(other) = letter.subject_header().filter(|s| *s != letter.subject) {
        return Err(format!(
            "its {} header names {other:?}, but it is filed under {}",
            bus::consumer::DLQ_SUBJECT,
            letter.subject
        ));
    }
    envelope
        .check_arrived_on(&letter.subject)
        .map_err(|e| e.to_string())?;
    if !listens_to::<S>(&letter.subject) {
        return Err(format!(
            "the {name} service does not listen to {}",
            letter.subject
        ));
    }
    Ok(())
}

/// Is `subject` (`<domain>.<event_name>.<order_id>.<partition>`) one of the service's
/// consumers' filters?
fn listens_to<S: Service>(subject: &str) -> bool {
    let Some((published, _)) = partition::split_stored(subject) else {
        return false;
    };
    let mut tokens = published.split('.');
    let (Some(prefix), Some(event), Some(_order), None) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return false;
    };
    S::LISTENS.iter().any(|(domain, events)| {
        domain.subject_prefix() == prefix && events.iter().any(|e| snake_case(e) == event)
    })
}

async fn pause(delay_ms: &AtomicU64) {
    let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::encode;
    use crate::engine::testing::lines;
    use crate::events::PaymentEvent;
    use crate::inventory::aggregate::WAREHOUSE;
    use crate::inventory::InventoryService;
    use crate::payment::PaymentService;
    use bus::consumer::{DLQ_CONSUMER, DLQ_SUBJECT};
    use bus::dlq::DeadLetter;
    use bus::{Domain, Envelope, Verdict};
    use chrono::Utc;
    use storage::Store;

    fn paid(order: &str) -> Envelope {
        let approved = PaymentEvent::PaymentApproved {
            amount_cents: 100,
            payment_method: "card".into(),
            authorization_id: format!("auth-{order}"),
            approved_at: Utc::now(),
            lines: lines(&[("SKU-MUG", 1)]),
            shipping_address: "x".into(),
        };
        encode(&approved, order, None).unwrap()
    }

    fn mugs(engine: &mut Engine<InventoryService>) -> i64 {
        engine
            .query(WAREHOUSE, |_, state| state.available["SKU-MUG"])
            .unwrap()
    }

    #[tokio::test]
    async fn a_dead_lettered_event_is_skipped_live_and_applied_once_by_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let mut engine = Engine::new(InventoryService, store.clone());
        let before = mugs(&mut engine);
        let event = paid("o1");
        store.mark_dead_lettered([event.id]).unwrap();

        // Live (a recovered consumer re-reading its stream): acknowledged, nothing reserved.
        let applied = engine.deliver(&[&event]).await.unwrap();
        assert_eq!(applied.verdicts, [Verdict::Done]);
        assert_eq!(mugs(&mut engine), before);
        assert!(!store.is_processed(event.id).unwrap());

        // Replayed: reserved, once, and then it is applied (no longer only dead-lettered).
        let replayed = engine.replay(&event).await.unwrap();
        assert_eq!(replayed, ReplayOutcome::Applied);
        assert_eq!(mugs(&mut engine), before - 1);
        assert!(store.is_processed(event.id).unwrap());
        assert!(!store.is_dead_lettered(event.id).unwrap());

        // Again, by replay or live: nothing more.
        let again = engine.replay(&event).await.unwrap();
        assert_eq!(again, ReplayOutcome::AlreadyApplied);
        let applied = engine.deliver(&[&event]).await.unwrap();
        assert_eq!(applied.verdicts, [Verdict::Done]);
        assert_eq!(mugs(&mut engine), before - 1);
    }

    fn cancelled(order: &str) -> Envelope {
        let data = serde_json::json!({ "reason": "cancelled by the customer" });
        Envelope::new(Domain::Orders, "OrderCancelled", order, data).unwrap()
    }

    fn letter(dlq_subject: &str, envelope: &Envelope, headers: &[(&str, &str)]) -> DeadLetter {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        let payload = envelope.to_json().unwrap().into_bytes().into();
        DeadLetter::from_parts(9, dlq_subject, Some(&map), payload, None).unwrap()
    }

    #[test]
    fn a_service_replays_only_events_it_listens_to_on_their_own_subject() {
        assert!(listens_to::<PaymentService>("orders.order_cancelled.o1.0"));
        assert!(listens_to::<PaymentService>(
            "payments.payment_abandoned.o1.3"
        ));
        assert!(!listens_to::<PaymentService>(
            "shipments.shipment_failed.o1.0"
        ));
        assert!(!listens_to::<PaymentService>("orders.order_cancelled.o1"));
        assert!(!listens_to::<PaymentService>("orders.order_cancelled.o1.x"));
        assert!(!listens_to::<PaymentService>(
            "orders.order_cancelled.o1.0.0"
        ));

        let event = cancelled("o1");
        let own = letter(
            "dlq.payment.orders.order_cancelled.o1.0",
            &event,
            &[
                (DLQ_CONSUMER, "payment"),
                (DLQ_SUBJECT, "orders.order_cancelled.o1.0"),
            ],
        );
        assert_eq!(
            check_replayable::<PaymentService>(&own, &event, "payment"),
            Ok(())
        );

        // About another order than the subject it was filed under: misplaced, not replayed.
        let other = cancelled("o2");
        let misplaced = letter("dlq.payment.orders.order_cancelled.o1.0", &other, &[]);
        let why = check_replayable::<PaymentService>(&misplaced, &other, "payment").unwrap_err();
        assert!(why.contains("belongs on"), "{why}");

        // Headers that contradict where it is filed.
        let forged = letter(
            "dlq.payment.orders.order_cancelled.o1.0",
            &event,
            &[(DLQ_CONSUMER, "inventory")],
        );
        let why = check_replayable::<PaymentService>(&forged, &event, "payment").unwrap_err();
        assert!(why.contains("inventory"), "{why}");
        let moved = letter(
            "dlq.payment.orders.order_cancelled.o1.0",
            &event,
            &[(DLQ_SUBJECT, "orders.order_cancelled.o9.0")],
        );
        assert!(check_replayable::<PaymentService>(&moved, &event, "payment").is_err());
    }
}
