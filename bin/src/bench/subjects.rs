//! `commerce bench subjects`: what the broker pays, as its streams fill, for a subject per
//! order. The saga's subjects are `<domain>.<event>.<order_id>`, so every event is a subject of
//! its own, and JetStream keeps an index entry per subject in memory: nats-server's heap, and
//! the work of each of its garbage collections, grow with history. This bench isolates that
//! from everything else: the same events published to the same stream of a fresh broker (on
//! the cores `commerce up` gives it), once with a subject per event, once on a fixed few.

use std::time::Instant;

use actors::Settings;
use bus::server::{NatsServer, ServerConfig};
use bus::{Domain, Envelope, Publisher};
use serde_json::json;
use storage::OutboxMessage;

use super::quantile;
use super::soak::{cpu_ms, rss_mib};

/// Messages published and acknowledged at a time, as the relay pipelines them.
const CHUNK: usize = 512;

/// Subjects of the bounded run: one per partition-sized bucket, not per order.
const BOUNDED_SUBJECTS: usize = 64;

#[derive(Clone, Copy)]
enum Scheme {
    /// `payments.payment_approved.<order id>`: the saga's scheme.
    PerOrder,
    /// `payments.payment_approved.bucket-NN`, 64 of them.
    Bounded,
}

impl Scheme {
    fn label(self) -> &'static str {
        match self {
            Scheme::PerOrder => "a subject per order (the saga's)",
            Scheme::Bounded => "64 subjects",
        }
    }

    fn subject_token(self, i: usize) -> String {
        match self {
            Scheme::PerOrder => uuid::Uuid::now_v7().to_string(),
            Scheme::Bounded => format!("bucket-{:02}", i % BOUNDED_SUBJECTS),
        }
    }
}

/// One window of one run.
struct Window {
    published: usize,
    rate: f64,
    chunk_p50_ms: f64,
    chunk_p99_ms: f64,
    chunk_max_ms: f64,
    broker_rss_mib: f64,
    broker_cpu_us_per_msg: f64,
    subjects: u64,
}

pub async fn run(messages: usize, window: usize, settings: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        window >= CHUNK && window <= messages,
        "--window must be at least {CHUNK} and at most --messages"
    );
    let mut runs = Vec::new();
    for scheme in [Scheme::PerOrder, Scheme::Bounded] {
        println!("{}:", scheme.label());
        print_header();
        let windows = measure(scheme, messages, window, &settings).await?;
        runs.push((scheme, windows));
    }
    println!();
    println!("last window / first:");
    for (scheme, windows) in &runs {
        let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
            continue;
        };
        println!(
            "  {:<34} msgs/s {:.2}, chunk p99 {:.2}, broker CPU per message {:.2}, broker RSS {:.0} → {:.0} MiB",
            scheme.label(),
            last.rate / first.rate,
            last.chunk_p99_ms / first.chunk_p99_ms,
            last.broker_cpu_us_per_msg / first.broker_cpu_us_per_msg,
            first.broker_rss_mib,
            last.broker_rss_mib,
        );
    }
    Ok(())
}

/// One fresh broker, `messages` events on the payments stream, reported per `window`.
async fn measure(
    scheme: Scheme,
    messages: usize,
    window: usize,
    settings: &Settings,
) -> anyhow::Result<Vec<Window>> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::new(dir.path().join("nats"));
    config.max_procs = Some(settings.nats_cores());
    let mut server = NatsServer::start(config).await?;
    let broker = server
        .pid()
        .map(|pid| pid.to_string())
        .ok_or_else(|| anyhow::anyhow!("nats-server has no process id"))?;
    let client = bus::connect(&server.url(), "bench", None).await?;
    let js = async_nats::jetstream::new(client);
    // The broker keeps every message id of its duplicate window. At this bench's rate (about
    // 50,000 a second) the saga's 2 minutes would hold millions and grow in both runs alike; a
    // second holds about what 2 minutes of the saga's own rate do (about 1,300 a second).
    let streams = bus::StreamSettings {
        duplicate_window_secs: 1,
        ..settings.streams.clone()
    };
    bus::provision(&js, &streams).await?;
    let publisher = Publisher::new(js.clone());

    let mut windows = Vec::new();
    let mut published = 0;
    while published < messages {
        let n = window.min(messages - published);
        let cpu_before = cpu_ms(&broker);
        let started = Instant::now();
        let mut chunks_ms = Vec::with_capacity(n / CHUNK + 1);
        let mut sent = 0;
        while sent < n {
            let size = CHUNK.min(n - sent);
            let chunk = (published + sent..published + sent + size)
                .map(|i| message(scheme, i))
                .collect::<Result<Vec<_>, _>>()?;
            let chunk_started = Instant::now();
            for outcome in publisher.publish_all(&chunk).await {
                outcome?;
            }
            chunks_ms.push(chunk_started.elapsed().as_secs_f64() * 1e3);
            sent += size;
        }
        let elapsed = started.elapsed().as_secs_f64();
        published += n;
        chunks_ms.sort_by(f64::total_cmp);
        let mut stream = js.get_stream(Domain::Payments.stream()).await?;
        let info = stream.info().await?;
        let row = Window {
            published,
            rate: n as f64 / elapsed,
            chunk_p50_ms: quantile(&chunks_ms, 0.5),
            chunk_p99_ms: quantile(&chunks_ms, 0.99),
            chunk_max_ms: quantile(&chunks_ms, 1.0),
            broker_rss_mib: rss_mib(&broker),
            broker_cpu_us_per_msg: (cpu_ms(&broker) - cpu_before) * 1e3 / n as f64,
            subjects: info.state.subjects_count,
        };
        print_row(&row);
        windows.push(row);
    }
    server.stop().await;
    Ok(windows)
}

/// An event the size of the saga's, on the subject the scheme gives it.
fn message(scheme: Scheme, i: usize) -> Result<OutboxMessage, bus::BusError> {
    Envelope::new(
        Domain::Payments,
        "PaymentApproved",
        scheme.subject_token(i),
        json!({
            "amount_cents": 12_900,
            "authorization_id": format!("auth_{i:032x}"),
            "items": [{"sku": "SKU-1", "qty": 2}],
        }),
    )?
    .to_outbox_message()
}

fn print_header() {
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "messages",
        "msgs/s",
        "chunk p50",
        "chunk p99",
        "chunk max",
        "nats MiB",
        "nats µs/msg",
        "subjects"
    );
}

fn print_row(w: &Window) {
    println!(
        "{:>10} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12.2} {:>10}",
        w.published,
        w.rate,
        w.chunk_p50_ms,
        w.chunk_p99_ms,
        w.chunk_max_ms,
        w.broker_rss_mib,
        w.broker_cpu_us_per_msg,
        w.subjects
    );
}
