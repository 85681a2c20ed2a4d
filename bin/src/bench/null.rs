//! `commerce bench null`: the saga's pipeline with no domain logic, the ceiling the saga is
//! measured against, then the saga itself at the same load, in one run.
//!
//! The null pipeline has the saga's exact topology: the same streams and subjects, one database,
//! outbox relay and durable consumer per stream per component, with the filters the real
//! services' `LISTENS` give them (the projection reads every stream), batches committed with one
//! transaction and one flush, then acknowledged. Each component answers the happy path's event
//! with the next one (`OrderCreated` → `PaymentApproved` → `InventoryReserved` →
//! `ShipmentBookingRequested` → `ShipmentScheduled` → `OrderConfirmed` →
//! `RecommendationUpdated`), carrying the order's own fields forward so payloads are the size of
//! a real order's; every other event it receives gets only its inbox mark. The shipment answers
//! its own request once it is durable, not when its stream delivers it, as the service does
//! (`Service::ECHO`). What is missing is
//! exactly the domain: no HTTP in front, no decoding into typed events, no aggregate loads or
//! snapshots, no external calls, no read-model rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::catalog::Line;
use actors::engine::host::consume::consumer_spec;
use actors::engine::Service;
use actors::events::OrderEvent;
use actors::Settings;
use anyhow::Context;
use bus::envelope::snake_case;
use bus::partition::Slice;
use bus::server::{NatsServer, ServerConfig};
use bus::{Domain, DurableConsumer, Envelope, OutboxRelay, Publisher, RelayConfig, Verdict};
use futures::StreamExt;
use storage::{Commit, Store};
use tokio_util::sync::CancellationToken;

use super::bus::{commit_for, progress};

/// A component of the null pipeline: its name, the streams (and event types) it reads, the
/// domain it writes, and what it answers with.
struct Component {
    name: &'static str,
    listens: Vec<(Domain, Vec<&'static str>)>,
    writes: Domain,
    /// inbound type → the event it answers with (`None`: only the inbox mark).
    answers: &'static [(&'static str, &'static str)],
    /// Its own events it answers at once, as the service does ([`Service::ECHO`]).
    echo: &'static [&'static str],
}

fn topology() -> Vec<Component> {
    fn listens(
        of: &'static [(Domain, &'static [&'static str])],
    ) -> Vec<(Domain, Vec<&'static str>)> {
        of.iter().map(|(d, types)| (*d, types.to_vec())).collect()
    }
    vec![
        Component {
            name: "order",
            listens: listens(actors::order::OrderService::LISTENS),
            writes: Domain::Orders,
            answers: &[("ShipmentScheduled", "OrderConfirmed")],
            echo: &[],
        },
        Component {
            name: "payment",
            listens: listens(actors::payment::PaymentService::LISTENS),
            writes: Domain::Payments,
            answers: &[("OrderCreated", "PaymentApproved")],
            echo: &[],
        },
        Component {
            name: "inventory",
            listens: listens(actors::inventory::InventoryService::LISTENS),
            writes: Domain::Inventory,
            answers: &[("PaymentApproved", "InventoryReserved")],
            echo: &[],
        },
        Component {
            name: "store",
            listens: listens(actors::store::StoreService::LISTENS),
            writes: Domain::Stores,
            answers: &[],
            echo: &[],
        },
        Component {
            name: "shipment",
            listens: listens(actors::shipment::ShipmentService::LISTENS),
            writes: Domain::Shipments,
            answers: &[
                ("InventoryReserved", "ShipmentBookingRequested"),
                ("ShipmentBookingRequested", "ShipmentScheduled"),
            ],
            echo: actors::shipment::ShipmentService::ECHO,
        },
        Component {
            name: "recommendation",
            listens: listens(actors::recommendation::RecommendationService::LISTENS),
            writes: Domain::Recommendations,
            answers: &[("OrderConfirmed", "RecommendationUpdated")],
            echo: &[],
        },
        Component {
            name: "projection",
            listens: Domain::ALL.iter().map(|d| (*d, Vec::new())).collect(),
            writes: Domain::Orders,
            answers: &[],
            echo: &[],
        },
    ]
}

/// The null pipeline's orders/s and latency for `orders` orders placed at once, then the saga's
/// at `saga_rate` offered orders/s (above its saturation: it queues), and the ratio.
pub async fn run(orders: usize, saga_rate: u32, settings: Settings) -> anyhow::Result<()> {
    let null = null_pipeline(orders, &settings).await?;
    let saga = super::saga::measure(orders, &[saga_rate], settings, false)
        .await?
        .pop()
        .context("the saga bench measured nothing")?;
    println!();
    println!("{orders} orders, POST /orders (saga) or OrderCreated (null) → OrderConfirmed:");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "", "orders/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>10.1}",
        "null pipeline (topology, no domain), at once", null.achieved, null.p50, null.p99
    );
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>10.1}",
        format!("saga, offered {saga_rate}/s"),
        saga.achieved,
        saga.p50,
        saga.p99
    );
    println!(
        "saga / null: {:.2} of the orders/s",
        saga.achieved / null.achieved
    );
    Ok(())
}

async fn null_pipeline(
    orders: usize,
    settings: &Settings,
) -> anyhow::Result<super::saga::RoundResult> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(ServerConfig::new(dir.path().join("nats"))).await?;
    let client = bus::connect(&server.url(), "bench-null", None).await?;
    let js = async_nats::jetstream::new(client.clone());
    bus::provision(&js, &settings.streams).await?;
    let publisher = Publisher::new(js.clone());
    eprintln!("bench: null pipeline on nats-server at {}", server.url());

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut order_store = None;
    for component in topology() {
        let store = Store::open(dir.path().join(component.name), &settings.store)?;
        let relay = OutboxRelay::new(store.clone(), publisher.clone(), RelayConfig::default());
        tasks.push(actix_rt::spawn(relay.run(shutdown.clone())));
        for (domain, types) in &component.listens {
            let mut spec = consumer_spec(domain.stream(), component.name, settings);
            spec.filter_subjects = types
                .iter()
                .map(|t| bus::partition::events(*domain, &snake_case(t), Slice::All))
                .collect();
            let consumer = DurableConsumer::bind(&js, spec).await?;
            tasks.push(actix_rt::spawn(answer(
                consumer,
                store.clone(),
                component.writes,
                component.answers,
                component.echo,
                shutdown.clone(),
            )));
        }
        if component.name == "order" {
            order_store = Some(store);
        }
    }
    let order_store = order_store.context("no order component")?;

    let confirmed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // Seen as the saga's bench sees them, so that the two compare.
    let stored = super::stored_from_now(&js, Domain::Orders, &["order_confirmed"]).await?;
    let seen = confirmed.clone();
    tasks.push(actix_rt::spawn(async move {
        let mut stored = std::pin::pin!(stored);
        while let Some((_, order_id)) = stored.next().await {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.entry(order_id).or_insert_with(Instant::now);
        }
    }));

    // Orders placed as the order service records them: event, outbox row, one flush per batch.
    let bar = progress("null pipeline, all at once", orders);
    let started = Instant::now();
    let mut placed = Vec::with_capacity(orders);
    let ids: Vec<String> = (0..orders)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    for chunk in ids.chunks(256) {
        let commits = chunk
            .iter()
            .map(|id| record(&order_created(id)?, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for outcome in order_store.commit_all(&commits)? {
            outcome?;
        }
        let _durable = order_store.flush().await?;
        let at = Instant::now();
        placed.extend(chunk.iter().map(|id| (id.clone(), at)));
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let latencies = loop {
        let done: Vec<Duration> = {
            let seen = confirmed.lock().unwrap_or_else(|e| e.into_inner());
            placed
                .iter()
                .filter_map(|(id, at)| seen.get(id).map(|c| c.duration_since(*at)))
                .collect()
        };
        bar.set_position(done.len() as u64);
        if done.len() == orders {
            break done;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "null pipeline: only {}/{orders} orders confirmed after 120 s",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    bar.finish();
    let last = confirmed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .max()
        .copied();
    let elapsed = last.map_or(started.elapsed(), |l| l.duration_since(started));
    shutdown.cancel();
    for task in tasks {
        task.abort();
    }
    drop(server);
    Ok(super::saga::RoundResult::of(0, orders, elapsed, &latencies))
}

/// Answer each batch: the next event (or only the inbox mark), one commit, one flush; then the
/// answers to the echoed ones, one commit, one flush (their stream's copies will find them
/// done); then ack.
async fn answer(
    mut consumer: DurableConsumer,
    store: Store,
    writes: Domain,
    answers: &'static [(&'static str, &'static str)],
    echo: &'static [&'static str],
    shutdown: CancellationToken,
) {
    let reply = |inbound: &Envelope| -> anyhow::Result<(Commit, Option<Envelope>)> {
        match answers.iter().find(|(on, _)| *on == inbound.event_type) {
            Some((_, next)) => {
                let reaction =
                    Envelope::new(writes, *next, &inbound.subject, inbound.data.clone())?
                        .caused_by(inbound);
                let commit = record(&reaction, Some(inbound.id))?;
                Ok((commit, Some(reaction).filter(|_| echo.contains(next))))
            }
            None => Ok((Commit::caused_by(inbound.id), None)),
        }
    };
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = consumer.next_batch(Duration::from_secs(1)) => batch,
        };
        let Ok(batch) = batch else { return };
        if batch.is_empty() {
            continue;
        }
        let replies: anyhow::Result<Vec<_>> = batch.iter().map(|d| reply(&d.envelope)).collect();
        let Ok(replies) = replies else { return };
        let (commits, echoes): (Vec<Commit>, Vec<Option<Envelope>>) = replies.into_iter().unzip();
        let Ok(outcomes) = store.commit_all(&commits) else {
            return;
        };
        let verdicts = outcomes
            .into_iter()
            .zip(batch)
            .map(|(_, delivery)| (Verdict::Done, delivery))
            .collect();
        let Ok(flushed) = store.flush().await else {
            return;
        };
        // As the engine: the echoes before the batch is acknowledged.
        let echoes: anyhow::Result<Vec<_>> = echoes.iter().flatten().map(&reply).collect();
        let Ok(echoes) = echoes else { return };
        if !echoes.is_empty() {
            let commits: Vec<Commit> = echoes.into_iter().map(|(commit, _)| commit).collect();
            if store.commit_all(&commits).is_err() || store.flush().await.is_err() {
                return;
            }
        }
        consumer.settle(verdicts, flushed).await;
    }
}

/// What a service commits for one event, in a log of its own (a service's second event for an
/// order, like shipment's, must not collide with its first).
fn record(e: &Envelope, cause: Option<uuid::Uuid>) -> anyhow::Result<Commit> {
    commit_for(e, &format!("{}.{}", e.subject, e.event_type), cause)
}

/// A real `OrderCreated` for one line, so every hop carries a real order's fields.
fn order_created(order_id: &str) -> anyhow::Result<Envelope> {
    let event = OrderEvent::OrderCreated {
        order_id: order_id.to_string(),
        customer: format!("bench-{order_id}"),
        lines: vec![Line {
            sku: "SKU-MUG".into(),
            quantity: 1,
            unit_price_cents: 1_200,
        }],
        total_cents: 1_200,
        payment_token: format!("tok_{}", uuid::Uuid::now_v7().simple()),
        card_brand: Some("visa".into()),
        card_last4: Some("4242".into()),
        shipping_address: "1 Bench Street [hold]".into(),
        placed_at: chrono::Utc::now(),
        request_fingerprint: "0".repeat(64),
    };
    Ok(actors::codec::encode(&event, order_id, None)?)
}
