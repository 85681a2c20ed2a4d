//! One order's history as the streams hold it: every event about it as a causation tree, the
//! handlings that were put off (breaker refusals, timeouts) and its dead letters. Read straight
//! from the streams (not the read model), so it shows the truth even when the projection lags.
//! `commerce order trace` prints it; the dashboard draws it.

use std::collections::{BTreeMap, HashSet};

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use bus::dlq::{DeadLetters, Filter};
use bus::{BusError, Domain, Envelope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::host::consume::RetryRecord;

/// At most this many messages are read per stream for one order (a saga has about a dozen).
const MAX_PER_STREAM: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderHistory {
    pub order_id: String,
    /// Depth-first: a root, then its consequences by time, recursively.
    pub events: Vec<Hop>,
    pub dead_letters: Vec<Letter>,
    pub retries: Vec<RetryRecord>,
}

/// One event, where it sits in the tree, and how long after its cause it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub service: String,
    pub stream: String,
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub caused_by: Option<Uuid>,
    pub depth: usize,
    pub hop_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Letter {
    pub seq: u64,
    pub service: String,
    pub event_type: Option<String>,
    pub order_id: String,
    pub reason: String,
    pub at: Option<DateTime<Utc>>,
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0:?} is not an order id (a UUID)")]
    NotAnOrder(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Read order `order_id`'s history. `None`: no stream holds an event about it.
pub async fn read(
    js: &jetstream::Context,
    order_id: &str,
) -> Result<Option<OrderHistory>, HistoryError> {
    let order_id = Uuid::parse_str(order_id.trim())
        .map_err(|_| HistoryError::NotAnOrder(order_id.to_string()))?
        .to_string();
    let mut events = Vec::new();
    for domain in Domain::ALL {
        let filter = bus::partition::of_order(domain, &order_id);
        for (seq, payload) in matching(js, domain.stream(), &filter).await? {
            // What is not an event here is a DLQ matter, not a history's.
            if let Ok(envelope) = Envelope::from_slice(&payload) {
                events.push((domain.stream(), seq, envelope));
            }
        }
    }
    if events.is_empty() {
        return Ok(None);
    }
    let retries = retries(js, &order_id).await?;
    let filter = Filter {
        order_id: Some(order_id.clone()),
        ..Filter::default()
    };
    let page = DeadLetters::new(js.clone())
        .list(&filter, 1, MAX_PER_STREAM)
        .await?;
    let dead_letters = page
        .letters
        .into_iter()
        .map(|l| Letter {
            seq: l.seq,
            service: l.consumer,
            event_type: l.event.map(|e| e.event_type),
            order_id: order_id.clone(),
            reason: l.reason,
            at: l.dead_lettered_at,
        })
        .collect();
    Ok(Some(OrderHistory {
        order_id,
        events: tree(events),
        dead_letters,
        retries,
    }))
}

/// What held order `order_id` up: every service's put-off handlings of it (`ops.retry.*.<id>`
/// in `OPS`), oldest first.
pub async fn retries(
    js: &jetstream::Context,
    order_id: &str,
) -> Result<Vec<RetryRecord>, HistoryError> {
    let filter = format!("ops.retry.*.{order_id}");
    let records = matching(js, bus::streams::OPS_STREAM, &filter).await?;
    Ok(records
        .into_iter()
        .filter_map(|(_, payload)| serde_json::from_slice(&payload).ok())
        .collect())
}

/// Every message of `stream` on `filter`, oldest first, as (sequence, payload).
async fn matching(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(u64, Vec<u8>)>, BusError> {
    let what = || format!("reading {stream} ({filter})");
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| BusError::jetstream(what())(e))?;
    let mut found = Vec::new();
    let mut seq = 1;
    while found.len() < MAX_PER_STREAM {
        match stream.get_first_raw_message_by_subject(filter, seq).await {
            Ok(message) => {
                seq = message.sequence + 1;
                found.push((message.sequence, message.payload.to_vec()));
            }
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(BusError::jetstream(what())(e)),
        }
    }
    Ok(found)
}

/// The causation tree, depth-first. A root is an event with no cause among the order's events
/// (a client's command); siblings go by time, then by stream position.
fn tree(mut events: Vec<(&'static str, u64, Envelope)>) -> Vec<Hop> {
    events.sort_by(|a, b| (a.2.time, a.0, a.1).cmp(&(b.2.time, b.0, b.1)));
    let ids: HashSet<Uuid> = events.iter().map(|e| e.2.id).collect();
    let mut children: BTreeMap<Option<Uuid>, Vec<usize>> = BTreeMap::new();
    for (i, (_, _, envelope)) in events.iter().enumerate() {
        let parent = envelope.causationid.filter(|c| ids.contains(c));
        children.entry(parent).or_default().push(i);
    }
    let mut hops = Vec::with_capacity(events.len());
    let mut stack: Vec<(usize, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|&i| (i, 0)).collect())
        .unwrap_or_default();
    let mut seen = HashSet::new();
    while let Some((i, depth)) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        let (stream, seq, envelope) = &events[i];
        let cause = envelope.causationid.filter(|c| ids.contains(c));
        let cause_time = cause.and_then(|c| events.iter().find(|e| e.2.id == c).map(|e| e.2.time));
        hops.push(Hop {
            event_id: envelope.id,
            event_type: envelope.event_type.clone(),
            service: envelope.source.clone(),
            stream: stream.to_string(),
            seq: *seq,
            time: envelope.time,
            caused_by: cause,
            depth,
            hop_ms: cause_time.map(|t| (envelope.time - t).num_milliseconds()),
        });
        if let Some(next) = children.get(&Some(envelope.id)) {
            stack.extend(next.iter().rev().map(|&c| (c, depth + 1)));
        }
    }
    hops
}

/// The history as a person reads it: the tree, then what held the order up.
pub fn render(history: &OrderHistory) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "order {}: {} events, {} put off, {} dead letters",
        history.order_id,
        history.events.len(),
        history.retries.len(),
        history.dead_letters.len()
    );
    for hop in &history.events {
        let indent = match hop.depth {
            0 => String::new(),
            d => format!("{}└─ ", "   ".repeat(d - 1)),
        };
        let label = format!("{indent}{}", hop.event_type);
        let after = hop.hop_ms.map(|ms| format!("+{ms} ms")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{label:<44} {:<15} {:>20}  {}  {after:>9}",
            hop.service,
            format!("{}#{}", hop.stream, hop.seq),
            hop.time.format("%H:%M:%S%.3f"),
        );
    }
    for retry in &history.retries {
        let _ = writeln!(
            out,
            "put off: {} handling {} (delivery {}) at {}: {}",
            retry.service,
            retry.event_type,
            retry.attempt,
            retry.at.format("%H:%M:%S%.3f"),
            retry.reason
        );
    }
    for letter in &history.dead_letters {
        let _ = writeln!(
            out,
            "dead letter DLQ#{} ({}, {}): {}",
            letter.seq,
            letter.service,
            letter.event_type.as_deref().unwrap_or("not an event"),
            letter.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        domain: Domain,
        kind: &str,
        order: &str,
        cause: Option<&Envelope>,
        ms: i64,
    ) -> Envelope {
        let mut e = Envelope::new(domain, kind, order, serde_json::json!({})).unwrap();
        if let Some(cause) = cause {
            e = e.caused_by(cause);
        }
        e.time = DateTime::from_timestamp_millis(1_000_000 + ms).unwrap();
        e
    }

    #[test]
    fn events_form_a_causation_tree_with_the_time_of_each_hop() {
        let order = Uuid::now_v7().to_string();
        let created = event(Domain::Orders, "OrderCreated", &order, None, 0);
        let approved = event(
            Domain::Payments,
            "PaymentApproved",
            &order,
            Some(&created),
            40,
        );
        let reserved = event(
            Domain::Inventory,
            "StockReserved",
            &order,
            Some(&created),
            10,
        );
        let cancelled = event(Domain::Orders, "OrderCancelled", &order, None, 500);
        let refunded = event(
            Domain::Payments,
            "PaymentRefunded",
            &order,
            Some(&cancelled),
            530,
        );
        let hops = tree(vec![
            ("PAYMENTS", 2, refunded),
            ("ORDERS", 1, created),
            ("PAYMENTS", 1, approved),
            ("INVENTORY", 1, reserved),
            ("ORDERS", 2, cancelled),
        ]);
        let shape: Vec<_> = hops
            .iter()
            .map(|h| (h.event_type.as_str(), h.depth, h.hop_ms))
            .collect();
        assert_eq!(
            shape,
            [
                ("OrderCreated", 0, None),
                ("StockReserved", 1, Some(10)),
                ("PaymentApproved", 1, Some(40)),
                ("OrderCancelled", 0, None),
                ("PaymentRefunded", 1, Some(30)),
            ]
        );
        let text = render(&OrderHistory {
            order_id: order,
            events: hops,
            dead_letters: Vec::new(),
            retries: Vec::new(),
        });
        assert!(text.contains("└─ PaymentRefunded"), "{text}");
    }
}
