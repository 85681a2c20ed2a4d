//! After the heal: wait for the sagas to end (the drain), then gather what the invariants
//! check, from the read model, the simulators' ledgers, the streams, the services and the
//! broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use actors::contract::{OrderReadModel, ReadOrder, Status};
use actors::engine::host::consume::RetryRecord;
use actors::projection::api::Sagas;
use actors::rpc::{call, call_at, DomainError, Routes};
use actors::simulators::carrier::CarrierLedger;
use actors::simulators::payment_gateway::PaymentLedger;
use actors::Component;
use anyhow::Context;
use bus::{Domain, Envelope};
use futures::TryStreamExt;

use super::invariants::{Facts, SagaCounts};
use super::load::{Client, Placed};
use super::world::World;

/// Wait until every accepted order has ended and the projection knows no open saga (a
/// cancelled order's refund and releases included), or `until`; processes that exit meanwhile
/// are started again. Returns how long it took.
pub async fn drain(
    world: &mut World,
    placed: &[Placed],
    until: Instant,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut open: Vec<&str> = placed
        .iter()
        .filter_map(|p| p.order_id.as_deref())
        .collect();
    while Instant::now() < until {
        world.tend()?;
        let mut still = Vec::new();
        for id in open {
            let ended = Instant::now() < until
                && matches!(row(&world.operator, id).await,
                    Ok(Some(r)) if matches!(r.order_status.as_deref(), Some("COMPLETED" | "CANCELLED")));
            if !ended {
                still.push(id);
            }
        }
        open = still;
        if open.is_empty() && no_open_saga(&world.operator).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(started.elapsed())
}

/// What the projection counts of the sagas now (asked again while it does not answer, as a
/// row is).
async fn saga_counts(operator: &async_nats::Client) -> Result<SagaCounts, String> {
    let counts = || async {
        call::<Sagas>(operator, Component::Projection, &())
            .await
            .map(|s| (s.open, s.total, s.by_status))
            .map_err(|e| e.to_string())
    };
    asked_again(counts)
        .await
        .map_err(|e| format!("saga counts: {e}"))
}

/// `ask` asked again, every 500 ms, while it fails: its answer, or its 21st error.
async fn asked_again<T, F, Fut>(ask: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut tries = 0;
    loop {
        match ask().await {
            Ok(answer) => return Ok(answer),
            Err(e) if tries >= 20 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn no_open_saga(operator: &async_nats::Client) -> bool {
    matches!(call::<Sagas>(operator, Component::Projection, &()).await, Ok(s) if s.open == 0)
}

/// One order's row in the read model (`None`: not there).
async fn row(operator: &async_nats::Client, id: &str) -> Result<Option<OrderReadModel>, String> {
    match call::<ReadOrder>(operator, Component::Projection, &id.to_string()).await {
        Ok(row) => Ok(Some(row)),
        Err(DomainError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Every accepted order's row, asked until the projection answers.
async fn rows(
    operator: &async_nats::Client,
    placed: &[Placed],
) -> Result<BTreeMap<String, Option<OrderReadModel>>, String> {
    let mut rows = BTreeMap::new();
    for id in placed.iter().filter_map(|p| p.order_id.clone()) {
        let found = asked_again(|| row(operator, &id))
            .await
            .map_err(|e| format!("read model of {id}: {e}"))?;
        rows.insert(id, found);
    }
    Ok(rows)
}

/// Units per SKU (warehouse and stores together), and each location found below zero.
pub async fn stock(client: &Client) -> anyhow::Result<(BTreeMap<String, i64>, Vec<String>)> {
    for _ in 0..20 {
        if let Some((200, body)) = client.get("/products").await {
            if body["warnings"].as_array().is_some_and(|w| w.is_empty()) {
                return Ok(units(&body));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("GET /products did not answer with every stock")
}

fn units(body: &serde_json::Value) -> (BTreeMap<String, i64>, Vec<String>) {
    let mut units = BTreeMap::new();
    let mut negative = Vec::new();
    for p in body["products"].as_array().into_iter().flatten() {
        let sku = p["sku"].as_str().unwrap_or_default().to_string();
        let warehouse = p["warehouse_stock"].as_i64().unwrap_or(0);
        let mut total = warehouse;
        if warehouse < 0 {
            negative.push(format!("{sku} in the warehouse: {warehouse}"));
        }
        for (store, n) in p["store_stock"].as_object().into_iter().flatten() {
            let n = n.as_i64().unwrap_or(0);
            if n < 0 {
                negative.push(format!("{sku} in {store}: {n}"));
            }
            total += n;
        }
        units.insert(sku, total);
    }
    (units, negative)
}

/// Every event of every domain stream, in stream order. A message that cannot be read or
/// decoded is an error: skipping it could hide a duplicate or make up a gap.
async fn events(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<BTreeMap<Domain, Vec<Envelope>>> {
    let mut all = BTreeMap::new();
    for domain in Domain::ALL {
        let mut stream = js.get_stream(domain.stream()).await?;
        // The leader's word: a replica's answer may lag, and these are the run's facts.
        let state = bus::streams::leader_info(&mut stream).await?.state;
        let (first, last) = (state.first_sequence.max(1), state.last_sequence);
        let mut events = Vec::new();
        for seq in first..=last {
            let message = stream
                .get_raw_message(seq)
                .await
                .with_context(|| format!("{} message {seq}", domain.stream()))?;
            if bus::term::is_term_subject(&message.subject) {
                continue; // a term's or a recovery's marker, not an event
            }
            let envelope = serde_json::from_slice::<Envelope>(&message.payload)
                .with_context(|| format!("{} message {seq} is no event", domain.stream()))?;
            events.push(envelope);
        }
        all.insert(domain, events);
    }
    Ok(all)
}

/// Durable consumers not yet at their stream's end, asked for up to `within`.
async fn lagging_consumers(js: &async_nats::jetstream::Context, within: Duration) -> Vec<String> {
    let until = Instant::now() + within;
    loop {
        let mut lagging = Vec::new();
        for domain in Domain::ALL {
            let Ok(stream) = js.get_stream(domain.stream()).await else {
                lagging.push(format!("{}: stream not found", domain.stream()));
                continue;
            };
            let infos: Vec<_> = match stream.consumers().try_collect().await {
                Ok(infos) => infos,
                Err(e) => {
                    lagging.push(format!("{}: consumers not listed ({e})", domain.stream()));
                    continue;
                }
            };
            for info in infos.iter().filter(|i| i.config.durable_name.is_some()) {
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    // Enough to tell a lost pull (nothing waiting) from a stale count.
                    let leader = info.cluster.as_ref().and_then(|c| c.leader.as_deref());
                    lagging.push(format!(
                        "{}/{}: {} pending, {} unacknowledged ({} pulls waiting, delivered to \
                         {}, acked to {}, leader {})",
                        domain.stream(),
                        info.name,
                        info.num_pending,
                        info.num_ack_pending,
                        info.num_waiting,
                        info.delivered.stream_sequence,
                        info.ack_floor.stream_sequence,
                        leader.unwrap_or("-"),
                    ));
                }
            }
        }
        if lagging.is_empty() || Instant::now() >= until {
            return lagging;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn dead_letters(js: &async_nats::jetstream::Context) -> Vec<String> {
    let letters = bus::dlq::DeadLetters::new(js.clone());
    match letters.list(&bus::dlq::Filter::default(), 0, 100).await {
        Ok(page) => page
            .letters
            .iter()
            .map(|l| format!("{} {}: {}", l.consumer, l.subject, l.reason))
            .collect(),
        Err(e) => vec![format!("DLQ not listed: {e}")],
    }
}

async fn outboxes(
    operator: &async_nats::Client,
    routes: Routes,
) -> BTreeMap<String, Result<u64, String>> {
    let mut depths = BTreeMap::new();
    for service in Component::SERVICES.into_iter().flat_map(|s| routes.all(s)) {
        let until = Instant::now() + Duration::from_secs(30);
        let depth = loop {
            match call_at::<Status>(operator, service, &()).await {
                Ok(s) if s.outbox_depth == 0 || Instant::now() >= until => break Ok(s.outbox_depth),
                Err(e) if Instant::now() >= until => break Err(e.to_string()),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        depths.insert(service.to_string(), depth);
    }
    depths
}

async fn ledger<T: serde::de::DeserializeOwned>(base: &str) -> anyhow::Result<T> {
    Ok(reqwest::get(format!("{base}/v1/ledger"))
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// How many rebuilds the projection has completed since it started.
async fn rebuilds(operator: &async_nats::Client) -> Result<u64, String> {
    let status = call::<Status>(operator, Component::Projection, &()).await;
    status
        .map_err(|e| e.to_string())?
        .read_model
        .map(|m| m.rebuilds)
        .ok_or_else(|| "the projection shows no read model".to_string())
}

/// `commerce projection rebuild` as an operator would run it, to its end; an error unless the
/// projection then counts one more completed rebuild (a failed one keeps the old generation).
async fn rebuild(world: &World, config: &Path) -> Result<(), String> {
    let before = rebuilds(&world.operator).await?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let command = tokio::process::Command::new(exe)
        .args(["projection", "rebuild", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(&world.dir)
        .args(["--nats", &world.broker_url()])
        .env_remove("FAILPOINTS")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), command)
        .await
        .map_err(|_| "the rebuild did not end within 300 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    match rebuilds(&world.operator).await? {
        after if after == before + 1 => Ok(()),
        after => Err(format!(
            "the projection counts {after} rebuilds, {before} before this one"
        )),
    }
}

/// Sagas whose put-off handlings are read for the report: enough to see a pattern.
const MOST_TRACED: usize = 50;

/// The `ops.retry` records of each order whose row has not ended (or is missing), for the
/// first [`MOST_TRACED`] of them: what a stuck saga's line in the report says held it.
async fn held_up(
    js: &async_nats::jetstream::Context,
    rows: &BTreeMap<String, Option<OrderReadModel>>,
) -> BTreeMap<String, Vec<RetryRecord>> {
    let ended = |row: &Option<OrderReadModel>| {
        let status = row.as_ref().and_then(|r| r.order_status.as_deref());
        status.is_some_and(|s| super::invariants::TERMINAL.contains(&s))
    };
    let mut held = BTreeMap::new();
    for (id, _) in rows.iter().filter(|(_, row)| !ended(row)).take(MOST_TRACED) {
        match actors::admin::history::retries(js, id).await {
            Ok(records) if records.is_empty() => {}
            Ok(records) => {
                held.insert(id.clone(), records);
            }
            Err(e) => tracing::warn!(order = %id, error = %e, "its retries were not read"),
        }
    }
    held
}

/// Everything the invariants read. Errors in gathering become counterexamples, never a
/// missing report.
pub async fn gather(
    world: &World,
    client: &Client,
    placed: Vec<Placed>,
    stock_before: BTreeMap<String, i64>,
    config: &Path,
) -> Facts {
    let js = async_nats::jetstream::new(world.operator.clone());
    // Everything in flight lands first: outboxes sent, consumers at their streams' ends.
    let outboxes = outboxes(&world.operator, world.routes).await;
    let lagging_consumers = lagging_consumers(&js, Duration::from_secs(30)).await;
    let (stock_after, negative_stock) = match stock(client).await {
        Ok((units, negative)) => (Ok(units), negative),
        Err(e) => (Err(e.to_string()), Vec::new()),
    };
    let dead_letters = dead_letters(&js).await;
    let mut unreadable = BTreeMap::new();
    let events = events(&js).await.unwrap_or_else(|e| {
        unreadable.insert("events", format!("streams not read: {e:#}"));
        BTreeMap::new()
    });
    let payments: PaymentLedger = ledger(&world.payment_gateway).await.unwrap_or_else(|e| {
        unreadable.insert(
            "payments",
            format!("payment gateway ledger not read: {e:#}"),
        );
        PaymentLedger::default()
    });
    let bookings: CarrierLedger = ledger(&world.carrier).await.unwrap_or_else(|e| {
        unreadable.insert("bookings", format!("carrier ledger not read: {e:#}"));
        CarrierLedger::default()
    });
    let live = rows(&world.operator, &placed).await;
    let retries = match &live {
        Ok(rows) => held_up(&js, rows).await,
        Err(_) => BTreeMap::new(),
    };
    let live_sagas = saga_counts(&world.operator).await;
    let rebuilt = match (&live, rebuild(world, config).await) {
        (Ok(_), Ok(())) => rows(&world.operator, &placed).await,
        (_, Err(e)) => Err(e),
        (Err(e), _) => Err(e.clone()),
    };
    let saga_counts = match (live_sagas, &rebuilt) {
        (Ok(live), Ok(_)) => saga_counts(&world.operator)
            .await
            .map(|rebuilt| Some([live, rebuilt])),
        (_, Err(_)) => Ok(None),
        (Err(e), _) => Err(e),
    };
    let fresh = super::load::fresh_order(client, Duration::from_secs(60)).await;
    Facts {
        placed,
        rows: live.unwrap_or_default(),
        rebuilt,
        saga_counts,
        payments,
        bookings,
        events,
        stock_before,
        stock_after,
        negative_stock,
        outboxes,
        lagging_consumers,
        dead_letters,
        retries,
        fresh,
        unreadable,
        drain_bound_s: 0,
    }
}
