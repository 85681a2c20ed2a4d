//! The system at one moment, as the dashboard shows it: orders by status and their rates, each
//! component's lag, outbox and breakers, the streams, the newest dead letters. Gathered over the
//! bus (status endpoints, stream and consumer info), so it is the same whether the components
//! run in this process or in others.

use std::collections::BTreeMap;

use async_nats::jetstream;
use bus::dlq::{DeadLetters, Filter};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::history::Letter;
use crate::contract::Status;
use crate::engine::host::consume::durable_name;
use crate::projection::api::{RecentOrder, Sagas};
use crate::resilience::GuardStatus;
use crate::rpc::{call, call_at, Component, Routes};
use crate::telemetry::metrics;

/// Dead letters shown, newest first.
const NEWEST_LETTERS: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    pub orders: Orders,
    pub components: Vec<ComponentRow>,
    pub streams: Vec<StreamRow>,
    pub dlq: Dlq,
    pub recent_orders: Vec<RecentOrder>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Orders {
    pub total: u64,
    pub open: u64,
    pub stuck: u64,
    pub by_status: BTreeMap<String, u64>,
    /// Since the snapshot before.
    pub placed_per_sec: f64,
    pub ended_per_sec: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentRow {
    pub component: String,
    /// It answered `status`.
    pub reachable: bool,
    /// Events waiting for it: not yet delivered, or delivered and not yet acknowledged.
    pub lag: u64,
    pub outbox_depth: u64,
    pub inbox: u64,
    pub redelivered: u64,
    pub duplicates_dropped: u64,
    pub circuits: Vec<GuardStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamRow {
    pub stream: String,
    pub messages: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dlq {
    pub count: u64,
    pub recent: Vec<Letter>,
}

/// The outcomes whose rates are shown.
const ENDED: [&str; 2] = ["COMPLETED", "CANCELLED"];

/// Gather a snapshot; rates are against `before`. Whatever does not answer is shown as such
/// (unreachable, zero), never an error: the dashboard is for the bad moments too. Also sets the
/// system's gauges.
pub async fn gather(
    client: &async_nats::Client,
    js: &jetstream::Context,
    before: &Snapshot,
) -> Snapshot {
    let at = Utc::now();
    let streams = bus::status::streams(js).await.unwrap_or_default();
    let sagas = call::<Sagas>(client, Component::Projection, &()).await.ok();
    metrics::system(&streams, sagas.as_ref().map(|s| (s.open, s.stuck)));

    let routes = Routes::of_streams(&streams);
    let mut components = Vec::new();
    for at in Component::with_status().flat_map(|c| routes.all(c)) {
        let durable = durable_name(at);
        let lag = streams
            .iter()
            .flat_map(|s| &s.consumers)
            .filter(|c| c.name == durable)
            .map(|c| c.pending + c.ack_pending as u64)
            .sum();
        let row = match call_at::<Status>(client, at, &()).await {
            Ok(status) => ComponentRow {
                component: at.to_string(),
                reachable: true,
                lag,
                outbox_depth: status.outbox_depth,
                inbox: status.inbox,
                redelivered: status.redelivered,
                duplicates_dropped: status.duplicates_dropped,
                circuits: status.circuits,
            },
            Err(_) => ComponentRow {
                component: at.to_string(),
                lag,
                ..ComponentRow::default()
            },
        };
        components.push(row);
    }

    let dlq_count = streams
        .iter()
        .find(|s| s.name == bus::streams::DLQ_STREAM)
        .map_or(0, |s| s.messages);
    let dlq_last = streams
        .iter()
        .find(|s| s.name == bus::streams::DLQ_STREAM)
        .map_or(0, |s| s.last_sequence);
    let mut orders = Orders::default();
    let mut recent_orders = Vec::new();
    if let Some(sagas) = sagas {
        let seconds = (at - before.at).num_milliseconds() as f64 / 1000.0;
        let rate = |now: u64, then: u64| {
            if before.at == DateTime::<Utc>::default() || seconds <= 0.0 {
                0.0
            } else {
                now.saturating_sub(then) as f64 / seconds
            }
        };
        let count = |by: &BTreeMap<String, u64>, status: &str| by.get(status).copied().unwrap_or(0);
        orders = Orders {
            total: sagas.total,
            open: sagas.open,
            stuck: sagas.stuck,
            placed_per_sec: rate(sagas.total, before.orders.total),
            ended_per_sec: ENDED
                .iter()
                .map(|s| {
                    let now = count(&sagas.by_status, s);
                    (s.to_string(), rate(now, count(&before.orders.by_status, s)))
                })
                .collect(),
            by_status: sagas.by_status,
        };
        recent_orders = sagas.recent;
    }
    Snapshot {
        at,
        orders,
        components,
        streams: streams
            .iter()
            .map(|s| StreamRow {
                stream: s.name.clone(),
                messages: s.messages,
            })
            .collect(),
        dlq: Dlq {
            count: dlq_count,
            recent: newest_letters(js, dlq_last).await,
        },
        recent_orders,
    }
}

/// The newest dead letters, newest first (read from a little before the end of `DLQ`).
async fn newest_letters(js: &jetstream::Context, last: u64) -> Vec<Letter> {
    let from = last.saturating_sub(4 * NEWEST_LETTERS as u64).max(1);
    let Ok(page) = DeadLetters::new(js.clone())
        .list(&Filter::default(), from, 4 * NEWEST_LETTERS)
        .await
    else {
        return Vec::new();
    };
    page.letters
        .into_iter()
        .rev()
        .take(NEWEST_LETTERS)
        .map(|l| Letter {
            seq: l.seq,
            service: l.consumer,
            order_id: l
                .event
                .as_ref()
                .map(|e| e.order_id.clone())
                .unwrap_or_default(),
            event_type: l.event.map(|e| e.event_type),
            reason: l.reason,
            at: l.dead_lettered_at,
        })
        .collect()
}
