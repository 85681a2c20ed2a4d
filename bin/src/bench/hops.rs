//! Where a round's time went, hop by hop, read from the streams' own record of its events. For
//! each event: how long its service took to make it once its cause was there (the cause stored
//! in its stream → this event made: delivery, fetch, queueing behind other batches, the decision
//! and its external call; for a cause of its own, which it may echo before the broker stores
//! it, from the cause made), and how long the event took to reach its stream (made → stored:
//! commit, flush, the relay's wake-up and publish). Both clocks are this machine's: the services
//! stamp an event's `time`, the broker its stored time.

use std::collections::HashMap;

use actors::engine::Service;
use async_nats::jetstream::{self, consumer};
use bus::{Domain, Envelope};
use futures::StreamExt;

use super::quantile;

/// How long a stream may keep the next message before the read gives up.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Each domain stream's last sequence: a round's events are the ones after it. (An event
/// stored after the round's last confirmation, such as its last orders' recommendations, falls
/// in the next round's window.)
struct Marks(HashMap<&'static str, u64>);

/// One event as the streams hold it.
struct Seen {
    envelope: Envelope,
    stored_ms: f64,
}

/// The hops of one event type.
pub struct Hop {
    event_type: String,
    count: usize,
    /// Since the order's first event was stored (where in the saga this hop sits).
    since_placed: Vec<f64>,
    react: Vec<f64>,
    reach: Vec<f64>,
}

/// Runs a round of load and, when `enabled`, reads back where its time went. Best effort: if
/// the streams cannot be read, that is said and the round's own numbers stand.
pub async fn around<T>(
    js: &jetstream::Context,
    enabled: bool,
    round: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Option<Vec<Hop>>)> {
    if !enabled {
        return Ok((round.await?, None));
    }
    let before = marks(js).await?;
    let result = round.await?;
    match since(js, &before).await {
        Ok(hops) => Ok((result, Some(hops))),
        Err(e) => {
            eprintln!("bench: where the time went is unknown: {e}");
            Ok((result, None))
        }
    }
}

/// Where every domain stream ends now.
async fn marks(js: &jetstream::Context) -> anyhow::Result<Marks> {
    let mut marks = HashMap::new();
    for domain in Domain::ALL {
        let mut stream = js.get_stream(domain.stream()).await?;
        marks.insert(domain.stream(), stream.info().await?.state.last_sequence);
    }
    Ok(Marks(marks))
}

/// Every event stored after `since`, gathered by type, in saga order.
async fn since(js: &jetstream::Context, since: &Marks) -> anyhow::Result<Vec<Hop>> {
    let mut seen = Vec::new();
    for domain in Domain::ALL {
        let from = since.0.get(domain.stream()).copied().unwrap_or(0);
        let mut stream = js.get_stream(domain.stream()).await?;
        let last = stream.info().await?.state.last_sequence;
        if last <= from {
            continue;
        }
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            },
            ..Default::default()
        };
        let mut messages = stream.create_consumer(config).await?.messages().await?;
        let mut at = from;
        // Up to the end seen now, or the last message there is (the one at the end may be gone).
        while at < last {
            let next = tokio::time::timeout(SILENCE, messages.next()).await;
            let Ok(Some(message)) = next else {
                anyhow::bail!("{} fell silent at {at} of {last}", domain.stream());
            };
            let message = message?;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            at = if info.pending == 0 {
                last
            } else {
                info.stream_sequence
            };
            let stored_ms = info.published.unix_timestamp_nanos() as f64 / 1e6;
            if let Ok(envelope) = Envelope::from_slice(&message.payload) {
                seen.push(Seen {
                    envelope,
                    stored_ms,
                });
            }
        }
    }
    Ok(gather(&seen))
}

fn gather(seen: &[Seen]) -> Vec<Hop> {
    let ms = |e: &Envelope| e.time.timestamp_nanos_opt().unwrap_or(0) as f64 / 1e6;
    let by_id: HashMap<_, _> = seen.iter().map(|s| (s.envelope.id, s)).collect();
    // When the cause was there for the event's service: made, if it echoed it.
    let ready = |e: &Envelope, cause: &Seen| {
        let cause_type = cause.envelope.event_type.as_str();
        match cause.envelope.source == e.source && echoed().any(|t| t == cause_type) {
            true => ms(&cause.envelope),
            false => cause.stored_ms,
        }
    };
    let mut placed: HashMap<&str, f64> = HashMap::new();
    for s in seen {
        let first = placed
            .entry(s.envelope.correlationid.as_str())
            .or_insert(s.stored_ms);
        *first = first.min(s.stored_ms);
    }
    let mut hops: HashMap<&str, Hop> = HashMap::new();
    for s in seen {
        let e = &s.envelope;
        let hop = hops.entry(e.event_type.as_str()).or_insert_with(|| Hop {
            event_type: e.event_type.clone(),
            count: 0,
            since_placed: Vec::new(),
            react: Vec::new(),
            reach: Vec::new(),
        });
        hop.count += 1;
        if let Some(first) = placed.get(e.correlationid.as_str()) {
            hop.since_placed.push(s.stored_ms - first);
        }
        if let Some(cause) = e.causationid.and_then(|c| by_id.get(&c)) {
            hop.react.push(ms(e) - ready(e, cause));
        }
        hop.reach.push(s.stored_ms - ms(e));
    }
    let mut hops: Vec<Hop> = hops.into_values().collect();
    for hop in &mut hops {
        for samples in [&mut hop.since_placed, &mut hop.react, &mut hop.reach] {
            samples.sort_by(f64::total_cmp);
        }
    }
    hops.sort_by(|a, b| quantile(&a.since_placed, 0.5).total_cmp(&quantile(&b.since_placed, 0.5)));
    hops
}

/// The event types a service reacts to as soon as it recorded them ([`Service::ECHO`]).
fn echoed() -> impl Iterator<Item = &'static str> {
    use actors::{inventory, order, payment, recommendation, shipment, store};
    [
        order::OrderService::ECHO,
        payment::PaymentService::ECHO,
        inventory::InventoryService::ECHO,
        store::StoreService::ECHO,
        shipment::ShipmentService::ECHO,
        recommendation::RecommendationService::ECHO,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// The hops as a table.
pub fn print(label: &str, hops: &[Hop]) {
    if hops.is_empty() {
        return;
    }
    println!();
    println!(
        "Where the time went at {label}, ms: react = cause stored (or made, if echoed) → event \
         made (its service: delivery, queueing, decision, external call); reach = made → stored \
         (commit, flush, relay)"
    );
    println!(
        "  {:<26} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "event", "count", "at p50", "react p50", "react p99", "reach p50", "reach p99"
    );
    let cell = |samples: &[f64], q| match samples.is_empty() {
        true => "-".to_string(),
        false => format!("{:.1}", quantile(samples, q)),
    };
    for hop in hops {
        println!(
            "  {:<26} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            hop.event_type,
            hop.count,
            cell(&hop.since_placed, 0.5),
            cell(&hop.react, 0.5),
            cell(&hop.react, 0.99),
            cell(&hop.reach, 0.5),
            cell(&hop.reach, 0.99),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(event_type: &str, cause: Option<&Envelope>, made: i64, stored: f64) -> Seen {
        let mut envelope =
            Envelope::new(Domain::Orders, event_type, "order-1", serde_json::json!({})).unwrap();
        if let Some(cause) = cause {
            envelope = envelope.caused_by(cause);
        }
        envelope.time = chrono::DateTime::from_timestamp_millis(made).unwrap();
        Seen {
            envelope,
            stored_ms: stored,
        }
    }

    #[test]
    fn a_hop_is_split_into_the_reaction_and_the_way_to_the_stream() {
        let created = seen("OrderCreated", None, 1_000, 1_004.0);
        let approved = seen("PaymentApproved", Some(&created.envelope), 1_010, 1_013.0);
        let hops = gather(&[approved, created]);
        let names: Vec<_> = hops.iter().map(|h| h.event_type.as_str()).collect();
        assert_eq!(names, ["OrderCreated", "PaymentApproved"], "saga order");
        assert_eq!(hops[0].react, Vec::<f64>::new(), "no cause on the bus");
        assert_eq!(hops[0].reach, [4.0]);
        assert_eq!(hops[1].react, [6.0], "stored at 1004, made at 1010");
        assert_eq!(hops[1].reach, [3.0]);
        assert_eq!(hops[1].since_placed, [9.0]);
    }

    #[test]
    fn a_reaction_to_its_own_event_counts_from_that_event_made() {
        let requested = seen("ShipmentBookingRequested", None, 1_000, 1_009.0);
        let mut scheduled = seen(
            "ShipmentScheduled",
            Some(&requested.envelope),
            1_006,
            1_010.0,
        );
        assert_eq!(scheduled.envelope.source, requested.envelope.source);
        let hops = gather(&[requested, scheduled]);
        assert_eq!(hops[1].event_type, "ShipmentScheduled");
        assert_eq!(hops[1].react, [6.0], "echoed before it was stored");
        // Caused by another's event, it counts from that event stored.
        scheduled = seen("ShipmentScheduled", None, 1_006, 1_010.0);
        let mut other = seen("PaymentApproved", None, 1_000, 1_002.0);
        other.envelope.source = "/commerce/payment".into();
        scheduled.envelope = scheduled.envelope.caused_by(&other.envelope);
        let hops = gather(&[other, scheduled]);
        assert_eq!(hops[1].react, [4.0]);
    }
}
