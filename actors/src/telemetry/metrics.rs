//! Prometheus metrics: the names operators alert on, the recorder that renders them for
//! `GET /metrics`, and the samplers that turn status (which components keep anyway) into gauges.
//!
//! Counters and histograms are recorded where things happen (the engine, the relay, the guards,
//! the projection); gauges are sampled every [`SAMPLE_EVERY`]. It depends on no other module of
//! this crate, so every module may record. Every name starts `commerce_`.
//! Labels are bounded sets: services, streams, event names, dependencies, outcomes (never an
//! order id).

use std::sync::OnceLock;
use std::time::Duration;

use bus::status::StreamStatus;
use bus::Verdict;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// How often gauges are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Latency buckets, in seconds: from a commit's flush to a saga's end.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Batch sizes.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histogram samples are folded into their buckets. The recorder keeps every sample
/// until then (or until a scrape): without this, a process nobody scrapes grows with each one.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// The name of the thread that does it.
const UPKEEP_THREAD: &str = "metrics-upkeep";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process's recorder (once; later calls get the same one), and its upkeep.
pub fn install() -> Result<&'static PrometheusHandle, BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES)?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| {
        keep_up(handle.clone());
        handle
    }))
}

/// Fold `handle`'s histogram samples into their buckets every [`UPKEEP_EVERY`], for the life of
/// the process (the recorder's own upkeep task comes only with its HTTP listener, not used here).
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name(UPKEEP_THREAD.into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep: histograms grow until /metrics is read");
    }
}

/// Metrics are recorded in this process (a recorder is installed).
pub fn on() -> bool {
    HANDLE.get().is_some()
}

/// The Prometheus text exposition of every metric, if a recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| {
        h.run_upkeep();
        h.render()
    })
}

/// One inbound event handled by `service`, and what came of it.
pub fn handled(service: &'static str, event_type: &str, verdict: &Verdict) {
    let outcome = match verdict {
        Verdict::Done => "done",
        Verdict::Retry(_) => "retry",
        Verdict::Reject(_) => "dead_lettered",
    };
    counter!("commerce_events_handled_total", "service" => service,
        "event" => bus::envelope::snake_case(event_type), "outcome" => outcome)
    .increment(1);
}

/// Events `service` acknowledged without effect (its inbox had them).
pub fn duplicates(service: &'static str, count: u64) {
    counter!("commerce_events_duplicate_total", "service" => service).increment(count);
}

/// Deliveries that were not the first.
pub fn redelivered(service: &'static str, count: u64) {
    counter!("commerce_redeliveries_total", "service" => service).increment(count);
}

/// One event's reaction (decide and any external call), in seconds.
pub fn handle_latency(service: &'static str, seconds: f64) {
    histogram!("commerce_handle_seconds", "service" => service).record(seconds);
}

/// One batch: its size, and its commit and flush time.
pub fn batch(service: &'static str, size: usize, commit_seconds: f64) {
    histogram!("commerce_batch_size", "service" => service).record(size as f64);
    histogram!("commerce_commit_seconds", "service" => service).record(commit_seconds);
}

/// Snapshots that replaced aggregates' events: how many, and their bytes.
pub fn snapshots(service: &'static str, count: usize, bytes: u64) {
    counter!("commerce_snapshots_total", "service" => service).increment(count as u64);
    counter!("commerce_snapshot_bytes_total", "service" => service).increment(bytes);
}

/// One call to an external system: `ok`, `failed` (counts against it), `refused` (an answer).
pub fn external_call(dependency: &str, outcome: &'static str, seconds: f64) {
    let dependency = dependency.to_string();
    counter!("commerce_external_calls_total", "dependency" => dependency.clone(),
        "outcome" => outcome)
    .increment(1);
    histogram!("commerce_external_call_seconds", "dependency" => dependency).record(seconds);
}

/// A guard refused a call: `open` breaker or `full` bulkhead.
pub fn guard_refused(dependency: &str, why: &'static str) {
    counter!("commerce_guard_refusals_total", "dependency" => dependency.to_string(),
        "why" => why)
    .increment(1);
}

/// A breaker changed state (`closed`, `half_open`, `open`).
pub fn breaker_transition(dependency: &str, from: &'static str, to: &'static str) {
    counter!("commerce_breaker_transitions_total", "dependency" => dependency.to_string(),
        "from" => from, "to" => to)
    .increment(1);
    gauge!("commerce_breaker_state", "dependency" => dependency.to_string()).set(state_value(to));
}

/// A saga ended (`completed` or `cancelled`), `seconds` after its order was placed.
pub fn saga_ended(outcome: &str, seconds: f64) {
    let outcome = outcome.to_ascii_lowercase();
    counter!("commerce_sagas_ended_total", "outcome" => outcome.clone()).increment(1);
    histogram!("commerce_saga_seconds", "outcome" => outcome).record(seconds);
}

/// 0 closed, 1 half open, 2 open: alert on `commerce_breaker_state > 0`.
fn state_value(state: &str) -> f64 {
    match state {
        "closed" => 0.0,
        "half_open" => 1.0,
        _ => 2.0,
    }
}

/// A component's own gauges: its outbox (rows, and how long the oldest has waited) and inbox.
pub fn component(service: &str, outbox_depth: u64, oldest_pending: Duration, inbox: u64) {
    let service = service.to_string();
    gauge!("commerce_outbox_depth", "service" => service.clone()).set(outbox_depth as f64);
    gauge!("commerce_outbox_oldest_pending_seconds", "service" => service.clone())
        .set(oldest_pending.as_secs_f64());
    gauge!("commerce_inbox_size", "service" => service).set(inbox as f64);
}

/// A guarded dependency's gauges: breaker state and bulkhead permits in use.
pub fn circuit(dependency: &str, state: &'static str, in_flight: u64) {
    let dependency = dependency.to_string();
    gauge!("commerce_breaker_state", "dependency" => dependency.clone()).set(state_value(state));
    gauge!("commerce_bulkhead_in_use", "dependency" => dependency).set(in_flight as f64);
}

/// The system's gauges: every durable consumer's lag, every stream's size (DLQ included), and
/// the sagas still open and stuck, if known.
pub fn system(streams: &[StreamStatus], sagas: Option<(u64, u64)>) {
    for stream in streams {
        gauge!("commerce_stream_messages", "stream" => stream.name.clone())
            .set(stream.messages as f64);
        for consumer in &stream.consumers {
            let labels = [
                ("stream", stream.name.clone()),
                ("consumer", consumer.name.clone()),
            ];
            gauge!("commerce_consumer_pending", &labels).set(consumer.pending as f64);
            gauge!("commerce_consumer_ack_pending", &labels).set(consumer.ack_pending as f64);
            gauge!("commerce_consumer_redelivered", &labels).set(consumer.redelivered as f64);
        }
        if stream.name == bus::streams::DLQ_STREAM {
            gauge!("commerce_dlq_messages").set(stream.messages as f64);
        }
    }
    if let Some((open, stuck)) = sagas {
        gauge!("commerce_sagas_open").set(open as f64);
        gauge!("commerce_sagas_stuck").set(stuck as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_the_recorder_starts_its_upkeep() {
        install().expect("recorder");
        // A new thread takes its name once it runs (until then it has its parent's): poll.
        let names = || -> Vec<String> {
            let threads = std::fs::read_dir("/proc/self/task").expect("this process's threads");
            threads
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !names().iter().any(|name| name == UPKEEP_THREAD) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {UPKEEP_THREAD} thread among {:?}",
                names()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
