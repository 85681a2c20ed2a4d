//! `commerce bench reads`: the read side, in one run on one system.
//! - projection rebuild rate vs raw JetStream consume of the same streams;
//! - `GET /orders/{id}` (one lookup in the read model) vs `GET /orders/{id}/composed` (six
//!   requests over NATS), healthy and with the payment service's answers slowed by 50 ms.

use std::time::{Duration, Instant};

use actors::catalog::{LineRequest, OrderForm};
use actors::contract::{OrderView, ReadOrder, Rebuild, Slow, SlowRequest, Status};
use actors::rpc::{call, call_at, Routes};
use actors::Component;
use actors::Settings;
use async_nats::jetstream;
use futures::StreamExt;

pub async fn run(
    orders: usize,
    requests: usize,
    rounds: usize,
    mut settings: Settings,
) -> anyhow::Result<()> {
    settings.simulators.carrier_pickup_ms = 50;
    settings.simulators.carrier_delivery_ms = 50;
    let (system, http, _dir) = super::saga::system(settings).await?;
    let client = super::saga::operator(&system)?;
    let js = jetstream::new(client.clone());
    let web = reqwest::Client::builder()
        .default_headers(super::saga::operator_token(&system)?)
        .build()?;

    let token = super::saga::card_token(&system).await?;
    // Orders, each saga to completion.
    let bar = super::bus::progress("placing orders", orders);
    let mut ids = Vec::with_capacity(orders);
    for chunk in (0..orders).collect::<Vec<_>>().chunks(50) {
        let sends = chunk.iter().map(|i| {
            let order = OrderForm {
                customer: Some(format!("reads-{i}")),
                lines: vec![LineRequest {
                    sku: "SKU-MUG".into(),
                    quantity: 1,
                }],
                card_number: None,
                payment_token: Some(token.clone()),
                shipping_address: "1 Bench Street".into(),
            };
            web.post(format!("{http}/orders")).json(&order).send()
        });
        for response in futures::future::join_all(sends).await {
            let order: OrderView = response?.json().await?;
            ids.push(order.order_id);
            bar.inc(1);
        }
    }
    bar.finish();
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let row = call::<ReadOrder>(&client, Component::Projection, id).await;
            if row.is_ok_and(|r| r.order_status.as_deref() == Some("COMPLETED")) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "order {id} did not complete");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Raw consume of every domain stream vs the projection's rebuild of the same events, taking
    // turns: the machine's speed drifts, so each round's ratio is of two runs side by side.
    let bar = super::bus::progress("raw consume and rebuild, rounds", rounds);
    let mut measured = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (events, raw) = raw_consume(&js).await?;
        let (rebuilt, rebuild) = rebuild(&client).await?;
        measured.push((events, raw, rebuilt, rebuild));
        bar.inc(1);
    }
    bar.finish();

    let healthy_get = latencies(&web, &http, &ids, requests, "").await?;
    let healthy_composed = latencies(&web, &http, &ids, requests, "/composed").await?;
    slow(&client, 50).await?;
    let slow_get = latencies(&web, &http, &ids, requests, "").await?;
    let slow_composed = latencies(&web, &http, &ids, requests, "/composed").await?;
    // Payment hangs (5 s per answer, over the fan-out's 2 s limit): with and without guards.
    slow(&client, 5000).await?;
    let down = 60.min(requests);
    let hung_unguarded = latencies(&web, &http, &ids, down, "/composed?guards=false").await?;
    let hung_guarded = latencies(&web, &http, &ids, down, "/composed").await?;
    slow(&client, 0).await?;
    system.shutdown().await;

    println!();
    println!("Projection rebuild vs raw JetStream consume ({orders} orders), {rounds} rounds:");
    println!(
        "  {:>5} {:>8} {:>12} {:>14} {:>7}",
        "round", "events", "raw ev/s", "rebuild ev/s", "ratio"
    );
    let mut ratios = Vec::with_capacity(rounds);
    for (round, (events, raw, rebuilt, rebuild)) in measured.iter().enumerate() {
        let raw_rate = *events as f64 / raw.as_secs_f64();
        let rebuild_rate = *rebuilt as f64 / rebuild.as_secs_f64();
        ratios.push(rebuild_rate / raw_rate);
        println!(
            "  {:>5} {events:>8} {raw_rate:>12.0} {rebuild_rate:>14.0} {:>6.2}x",
            round + 1,
            rebuild_rate / raw_rate
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("  median ratio {:.2}x", ratios[ratios.len() / 2]);
    println!();
    println!("Order detail, {requests} requests each (4 in flight):");
    println!("  {:<44} {:>8} {:>8}", "", "p50 ms", "p99 ms");
    for (what, l) in [
        ("GET /orders/{id} (read model), healthy", &healthy_get),
        ("GET /orders/{id}/composed, healthy", &healthy_composed),
        ("GET /orders/{id} (read model), payment +50ms", &slow_get),
        ("GET /orders/{id}/composed, payment +50ms", &slow_composed),
    ] {
        println!("  {what:<44} {:>8.2} {:>8.2}", l.0, l.1);
    }
    println!();
    println!("Composed view with payment hanging (5 s per answer), {down} requests each:");
    for (what, l) in [
        ("without bulkhead + breaker", &hung_unguarded),
        ("with bulkhead + breaker", &hung_guarded),
    ] {
        println!("  {what:<44} {:>8.2} {:>8.2}", l.0, l.1);
    }
    Ok(())
}

/// Read every domain stream from its start (an ordered consumer each, one after the other):
/// the events and how long it took.
async fn raw_consume(js: &jetstream::Context) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut events = 0u64;
    for domain in bus::Domain::ALL {
        let mut stream = js.get_stream(domain.stream()).await?;
        let last = stream.info().await?.state.last_sequence;
        if last == 0 {
            continue;
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await?;
        let mut messages = consumer.messages().await?;
        let mut seen = 0;
        while seen < last {
            let message = messages
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            seen = message
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            events += 1;
        }
    }
    Ok((events, started.elapsed()))
}

/// Rebuild the read model, from the request to the switch: the events it read and how long.
/// A rebuild that ended without switching (it failed) is an error, not a rate.
async fn rebuild(client: &async_nats::Client) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let begun = call::<Rebuild>(client, Component::Projection, &()).await?;
    let ended = loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let status = call::<Status>(client, Component::Projection, &()).await?;
        match status.read_model {
            Some(model) if model.rebuilding => continue,
            ended => break ended,
        }
    };
    let elapsed = started.elapsed();
    let active = ended.map(|model| model.generation);
    anyhow::ensure!(
        active == Some(begun.generation),
        "the rebuild into generation {} did not switch (queries read {active:?}): see the projection's log",
        begun.generation
    );
    Ok((begun.events, elapsed))
}

/// p50 and p99 in ms of `n` GETs of `/orders/{id}{suffix}`, 4 in flight.
async fn latencies(
    web: &reqwest::Client,
    http: &str,
    ids: &[String],
    n: usize,
    suffix: &str,
) -> anyhow::Result<(f64, f64)> {
    let bar = super::bus::progress(&format!("GET /orders/{{id}}{suffix}"), n);
    // A composed view with a dependency down answers 503 with the parts it has: that is its answer.
    let partial_ok = suffix.contains("composed");
    let gets = (0..n).map(|i| {
        let (path, query) = suffix.split_once('?').unwrap_or((suffix, ""));
        let url = format!("{http}/orders/{}{path}?{query}", ids[i % ids.len()]);
        async move {
            let started = Instant::now();
            let response = web.get(url).send().await?;
            let ok = response.status() == 200 || (partial_ok && response.status() == 503);
            anyhow::ensure!(ok, "answered {}", response.status());
            response.bytes().await?;
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    });
    let mut ms = Vec::with_capacity(n);
    let mut results = futures::stream::iter(gets).buffer_unordered(4);
    while let Some(elapsed) = results.next().await {
        ms.push(elapsed?.as_secs_f64() * 1000.0);
        bar.inc(1);
    }
    bar.finish();
    ms.sort_by(f64::total_cmp);
    Ok((super::quantile(&ms, 0.5), super::quantile(&ms, 0.99)))
}

/// Delay the payment service's `get` and `part` answers by `delay_ms` (in every partition).
async fn slow(client: &async_nats::Client, delay_ms: u64) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    for at in Routes::of_broker(&js).await?.all(Component::Payment) {
        call_at::<Slow>(client, at, &SlowRequest { delay_ms }).await?;
    }
    Ok(())
}
