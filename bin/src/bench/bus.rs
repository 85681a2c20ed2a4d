//! `commerce bench bus`: outbox relay and consumer throughput as ratios to raw JetStream,
//! all measured in one run against one fresh nats-server (or, with `COMMERCE_NATS_CLUSTER=3`, a
//! fresh cluster of three with every stream on all three: what replication costs).

use std::time::{Duration, Instant};

use actors::runtime::Broker;
use actors::Settings;
use anyhow::Context;
use bus::lease::{self, Lease};
use bus::partition::{self, Slice};
use bus::server::{NatsCluster, NatsServer, ServerConfig};
use bus::term::Term;
use bus::{
    ConsumerSpec, Domain, DurableConsumer, Envelope, InHand, OutboxRelay, Publisher, RelayConfig,
    Verdict,
};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use storage::{Commit, NewEvent, OutboxMessage, Store};
use tokio_util::sync::CancellationToken;

struct Row {
    phase: &'static str,
    events: usize,
    elapsed: Duration,
    baseline: Option<&'static str>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(
    events: usize,
    single_flush_events: usize,
    mut settings: Settings,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = ServerConfig::new(dir.path().join("nats"));
    let server = if settings.nats_cluster > 1 {
        settings.streams.replicas = settings.nats_cluster.min(3);
        Broker::Cluster(NatsCluster::start(settings.nats_cluster, config).await?)
    } else {
        Broker::Embedded(NatsServer::start(config).await?)
    };
    let client = bus::connect(&server.url(), "bench", None).await?;
    let js = async_nats::jetstream::new(client);
    bus::provision(&js, &settings.streams).await?;
    let publisher = Publisher::new(js.clone());
    eprintln!(
        "bench: nats-server at {}, {events} events per phase, streams with {} replica(s)",
        server.url(),
        settings.streams.replicas
    );

    let mut rows = Vec::new();

    // 1. Raw publish: the same messages the relay sends, straight to JetStream, pipelined.
    let raw: Vec<OutboxMessage> = (0..events)
        .map(|i| event(Domain::Payments, "BenchRaw", i).to_outbox_message())
        .collect::<Result<_, _>>()?;
    let bar = progress("raw JetStream publish", events);
    let started = Instant::now();
    for chunk in raw.chunks(512) {
        for outcome in publisher.publish_all(chunk).await {
            outcome?;
        }
        bar.inc(chunk.len() as u64);
    }
    rows.push(Row {
        phase: "raw JetStream publish",
        events,
        elapsed: started.elapsed(),
        baseline: None,
    });
    bar.finish();

    // 2. Outbox relay: rows committed and flushed like a service would, then relayed.
    let db = dir.path().join("relay-db");
    rows.push(relay(&db, &settings, publisher.clone(), "outbox relay", events).await?);

    // 2b. The same relay as an instance's (`commerce run … --instance`): within a term, whose
    // check the broker makes on every publish.
    let holder = lease::Holder::this_process("bench");
    let lease = Lease::acquire(
        &js,
        "bench.0",
        &holder,
        lease::Role::Home,
        &CancellationToken::new(),
    )
    .await?
    .context("the bench's lease")?;
    let term = Term::begin(&js, Domain::Orders, 0, &lease.claim(), &holder).await?;
    let lease = lease.keep(CancellationToken::new());
    let db = dir.path().join("term-relay-db");
    let in_term = publisher.clone().within_term(term);
    let phase = "outbox relay within a term";
    rows.push(relay(&db, &settings, in_term, phase, events).await?);
    lease.release().await?;

    // 3. Raw consume: a plain pull consumer acking each message, no storage.
    let stream = js.get_stream(Domain::Orders.stream()).await?;
    let raw_consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("bench_raw".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = raw_consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await?;
    let bar = progress("raw JetStream consume+ack", events);
    let started = Instant::now();
    for _ in 0..events {
        let message = messages
            .next()
            .await
            .context("stream ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        bar.inc(1);
    }
    rows.push(Row {
        phase: "raw JetStream consume+ack",
        events,
        elapsed: started.elapsed(),
        baseline: None,
    });
    bar.finish();

    // 4 and 5. A service's consumer: commit events + outbox row + inbox mark per message, then
    // one flush per batch (group commit), or one flush per message for comparison.
    for (phase, durable, count, per_message) in [
        (
            "consumer apply+ack, group commit",
            "bench_apply",
            events,
            false,
        ),
        (
            "consumer apply+ack, flush per message",
            "bench_single",
            single_flush_events.min(events),
            true,
        ),
    ] {
        let store = Store::open(dir.path().join(durable), &settings.store)?;
        let mut spec = ConsumerSpec::new(Domain::Orders.stream(), durable);
        spec.batch = if per_message { 1 } else { 256 };
        // Events only: not the term's marker.
        spec.filter_subjects = vec![partition::events(Domain::Orders, "*", Slice::All)];
        let mut consumer = DurableConsumer::bind(&js, spec).await?;
        let bar = progress(phase, count);
        let started = Instant::now();
        let mut done = 0;
        let mut batches = 0usize;
        let mut split = Split::default();
        while done < count {
            batches += 1;
            let mut lap = Instant::now();
            let batch = consumer.next_batch(Duration::from_secs(5)).await?;
            split.fetch += lap_time(&mut lap);
            anyhow::ensure!(!batch.is_empty(), "{phase}: no messages within 5s");
            let batch: Vec<_> = batch.into_iter().take(count - done).collect();
            let mut commits = Vec::with_capacity(batch.len());
            for delivery in &batch {
                let reaction = Envelope::new(
                    Domain::Payments,
                    "PaymentApproved",
                    &delivery.envelope.subject,
                    json!({}),
                )?
                .caused_by(&delivery.envelope);
                commits.push(commit_for(
                    &reaction,
                    &reaction.subject,
                    Some(delivery.envelope.id),
                )?);
            }
            split.build += lap_time(&mut lap);
            let in_hand = InHand::of(&batch);
            let mut verdicts = Vec::with_capacity(batch.len());
            for (outcome, delivery) in store.commit_all(&commits)?.into_iter().zip(batch) {
                outcome?;
                verdicts.push((Verdict::Done, delivery));
            }
            split.commit += lap_time(&mut lap);
            done += verdicts.len();
            bar.inc(verdicts.len() as u64);
            // As a service does: what arrives while the flush runs is taken in hand for the
            // next batch.
            let flushed = consumer.working(in_hand, store.flush()).await?;
            split.flush += lap_time(&mut lap);
            consumer.settle(verdicts, flushed).await;
            split.ack += lap_time(&mut lap);
        }
        eprintln!(
            "{phase}: {batches} batches, {:.1} events per flush; {split}",
            count as f64 / batches as f64
        );
        rows.push(Row {
            phase,
            events: count,
            elapsed: started.elapsed(),
            baseline: Some("raw JetStream consume+ack"),
        });
        bar.finish();
    }

    print_report(&rows);
    Ok(())
}

/// `events` rows committed and flushed in a store at `db` as a service would, then relayed
/// through `publisher`.
async fn relay(
    db: &std::path::Path,
    settings: &Settings,
    publisher: Publisher,
    phase: &'static str,
    events: usize,
) -> anyhow::Result<Row> {
    let store = Store::open(db, &settings.store)?;
    for i in 0..events {
        let e = event(Domain::Orders, "OrderCreated", i);
        store.commit(&commit_for(&e, &e.subject, None)?)?;
    }
    let _ = store.flush().await?;
    let relay = OutboxRelay::new(store.clone(), publisher, RelayConfig::default());
    let bar = progress(phase, events);
    let started = Instant::now();
    loop {
        let sent = relay.relay_once().await?;
        if sent == 0 {
            break;
        }
        bar.inc(sent as u64);
    }
    anyhow::ensure!(store.outbox_depth() == 0, "{phase}: rows left pending");
    bar.finish();
    Ok(Row {
        phase,
        events,
        elapsed: started.elapsed(),
        baseline: Some("raw JetStream publish"),
    })
}

/// Where a consumer's time went, per step of its loop.
#[derive(Default)]
struct Split {
    fetch: Duration,
    build: Duration,
    commit: Duration,
    flush: Duration,
    ack: Duration,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps = [
            ("fetch+decode", self.fetch),
            ("build commits", self.build),
            ("sled commit", self.commit),
            ("flush", self.flush),
            ("ack", self.ack),
        ];
        let total: f64 = steps.iter().map(|(_, d)| d.as_secs_f64()).sum();
        let parts: Vec<String> = steps
            .iter()
            .map(|(name, d)| format!("{name} {:.0}%", 100.0 * d.as_secs_f64() / total))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// The time since `lap`, which then starts again.
fn lap_time(lap: &mut Instant) -> Duration {
    let now = Instant::now();
    now - std::mem::replace(lap, now)
}

fn event(domain: Domain, event_type: &str, i: usize) -> Envelope {
    let order = uuid::Uuid::now_v7().to_string();
    // Envelope::new only fails on bad tokens; these are fixed and valid.
    Envelope::new(
        domain,
        event_type,
        order,
        json!({ "n": i, "amount": 12_900, "items": [{"sku": "SKU-1", "qty": 2}] }),
    )
    .unwrap_or_else(|e| unreachable!("bench event is valid: {e}"))
}

/// What a service commits for one event: the event in its aggregate's log, its outbox row, and
/// the inbox mark of the event that caused it.
pub(super) fn commit_for(
    e: &Envelope,
    aggregate_id: &str,
    cause: Option<uuid::Uuid>,
) -> anyhow::Result<Commit> {
    let commit = match cause {
        Some(id) => Commit::caused_by(id),
        None => Commit::new(),
    };
    // Serialized once, as the engine does.
    let json = e.to_json()?;
    Ok(commit
        .append(
            aggregate_id,
            0,
            vec![NewEvent {
                event_id: e.id,
                event_type: e.event_type.clone(),
                payload: json.clone(),
            }],
        )
        .publish(e.to_outbox_message_from_json(json)?))
}

pub(super) fn progress(phase: &str, len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(phase.to_string());
    bar
}

fn print_report(rows: &[Row]) {
    println!();
    println!(
        "{:<40} {:>8} {:>9} {:>11}  ratio",
        "phase", "events", "seconds", "events/s"
    );
    for row in rows {
        let ratio = match row.baseline {
            Some(base) => rows
                .iter()
                .find(|r| r.phase == base)
                .map(|b| format!("{:.2} of {base}", row.rate() / b.rate()))
                .unwrap_or_default(),
            None => "baseline".into(),
        };
        println!(
            "{:<40} {:>8} {:>9.2} {:>11.0}  {ratio}",
            row.phase,
            row.events,
            row.elapsed.as_secs_f64(),
            row.rate()
        );
    }
}
