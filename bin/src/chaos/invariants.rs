//! The nine invariants, checked on what was gathered after the drain ([`Facts`]). Pure: each
//! check reads the facts and lists counterexamples; none talks to the system.

use std::collections::{BTreeMap, BTreeSet};

use actors::contract::OrderReadModel;
use actors::engine::host::consume::RetryRecord;
use actors::simulators::carrier::CarrierLedger;
use actors::simulators::payment_gateway::PaymentLedger;
use bus::{Domain, Envelope};
use serde::Serialize;

use super::load::Placed;

/// Events an order has at most once in its service's stream.
const ONCE: [&str; 12] = [
    "PaymentApproved",
    "PaymentRefunded",
    "PaymentClosed",
    "InventoryReserved",
    "InventoryReleased",
    "StoreStockReserved",
    "StoreStockReleased",
    "ShipmentScheduled",
    "ShipmentCancelled",
    "OrderConfirmed",
    "OrderCancelled",
    "RecommendationUpdated",
];

/// Of [`ONCE`], those once per SKU shard of an order: each releases its own lines.
const PER_SHARD: [&str; 2] = ["InventoryReleased", "StoreStockReleased"];

/// Statuses in which the customer keeps (and pays for) the goods.
const KEPT: [&str; 3] = ["CONFIRMED", "SHIPPED", "COMPLETED"];
pub(super) const TERMINAL: [&str; 2] = ["COMPLETED", "CANCELLED"];

/// What the projection counts of the sagas: open, every order, and ended or open by status.
pub type SagaCounts = (u64, u64, BTreeMap<String, u64>);

/// What the harness gathered once the run was healed and drained.
pub struct Facts {
    pub placed: Vec<Placed>,
    /// The live read model's row of each accepted order (`None`: not there).
    pub rows: BTreeMap<String, Option<OrderReadModel>>,
    /// The same rows after `commerce projection rebuild`, or why there are none.
    pub rebuilt: Result<BTreeMap<String, Option<OrderReadModel>>, String>,
    /// The projection's saga counts before that rebuild (kept live, and read from its index at
    /// each restart) and after it (counted by the rebuild), or why they were not read (none
    /// when the rebuild failed: that is already said).
    pub saga_counts: Result<Option<[SagaCounts; 2]>, String>,
    pub payments: PaymentLedger,
    pub bookings: CarrierLedger,
    /// Every event of every domain stream, in stream order.
    pub events: BTreeMap<Domain, Vec<Envelope>>,
    /// Units per SKU, warehouse and stores together, before the run and after the drain, and
    /// any location found negative.
    pub stock_before: BTreeMap<String, i64>,
    pub stock_after: Result<BTreeMap<String, i64>, String>,
    pub negative_stock: Vec<String>,
    /// Each service's outbox depth (or why it did not answer).
    pub outboxes: BTreeMap<String, Result<u64, String>>,
    /// Consumers not at their stream's end: `stream/durable: pending n, unacked m`.
    pub lagging_consumers: Vec<String>,
    pub dead_letters: Vec<String>,
    /// What held up each saga not ended when the rows were read: its `ops.retry` records
    /// (every service's put-off handlings of the order), oldest first.
    pub retries: BTreeMap<String, Vec<RetryRecord>>,
    /// The fresh order placed after healing: its id once completed, or what happened.
    pub fresh: Result<String, String>,
    /// Facts that could not be read (`events`, `payments`, `bookings`), and why: a check that
    /// needs one fails rather than pass on nothing.
    pub unreadable: BTreeMap<&'static str, String>,
    pub drain_bound_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub number: u8,
    pub name: &'static str,
    pub passed: bool,
    /// What was checked, in numbers.
    pub checked: String,
    pub counterexamples: Vec<String>,
}

fn check(number: u8, name: &'static str, checked: String, counterexamples: Vec<String>) -> Check {
    Check {
        number,
        name,
        passed: counterexamples.is_empty(),
        checked,
        counterexamples,
    }
}

pub fn all(f: &Facts) -> Vec<Check> {
    vec![
        accepted_exist(f),
        sagas_end(f),
        money(f),
        stock(f),
        carrier(f),
        versions(f),
        drained(f),
        rebuild_equals_live(f),
        fresh_order(f),
    ]
}

/// Why the facts a check needs are missing, as counterexamples.
fn missing(f: &Facts, needs: &[&str]) -> Vec<String> {
    needs
        .iter()
        .filter_map(|n| f.unreadable.get(n).cloned())
        .collect()
}

fn accepted(f: &Facts) -> BTreeSet<&str> {
    f.placed
        .iter()
        .filter_map(|p| p.order_id.as_deref())
        .collect()
}

fn status<'a>(f: &'a Facts, id: &str) -> Option<&'a str> {
    f.rows.get(id)?.as_ref()?.order_status.as_deref()
}

/// Events about each order, per domain, in stream order.
fn by_order(f: &Facts) -> BTreeMap<&str, Vec<(Domain, &Envelope)>> {
    let mut orders: BTreeMap<&str, Vec<(Domain, &Envelope)>> = BTreeMap::new();
    for (domain, events) in &f.events {
        for e in events {
            orders.entry(&e.subject).or_default().push((*domain, e));
        }
    }
    orders
}

/// Invariant 1: Every order the client got a 2xx for is in the read model; no effect for an order the
/// client never saw accepted.
fn accepted_exist(f: &Facts) -> Check {
    let accepted = accepted(f);
    let mut bad: Vec<String> = accepted
        .iter()
        .filter(|id| status(f, id).is_none())
        .map(|id| format!("{id}: accepted (2xx) but not in the read model"))
        .collect();
    bad.extend(missing(f, &["payments", "bookings", "events"]));
    let unseen = |id: &str| !accepted.contains(id);
    for a in &f.payments.authorizations {
        if unseen(&a.order_id) && a.status == "approved" {
            bad.push(format!(
                "{}: charged, never accepted to the client",
                a.order_id
            ));
        }
    }
    for b in &f.bookings.bookings {
        if unseen(&b.order_id) {
            bad.push(format!(
                "{}: booked at the carrier, never accepted to the client",
                b.order_id
            ));
        }
    }
    for (domain, events) in &f.events {
        for e in events {
            let reserves = matches!(
                e.event_type.as_str(),
                "InventoryReserved" | "StoreStockReserved"
            );
            if reserves && unseen(&e.subject) {
                bad.push(format!(
                    "{}: {} in {domain:?}, never accepted to the client",
                    e.subject, e.event_type
                ));
            }
        }
    }
    let unanswered = f.placed.iter().filter(|p| p.answer.is_none()).count();
    let checked = format!(
        "{} accepted orders, {unanswered} never answered",
        accepted.len()
    );
    check(
        1,
        "every accepted order exists, nothing for an order never accepted",
        checked,
        bad,
    )
}

/// Invariant 2: Every saga ended (within the drain bound); the stuck ones with each service's last event.
fn sagas_end(f: &Facts) -> Check {
    let events = by_order(f);
    let mut bad = Vec::new();
    for id in accepted(f) {
        let status = status(f, id).unwrap_or("missing");
        if TERMINAL.contains(&status) {
            continue;
        }
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for (domain, e) in events.get(id).into_iter().flatten() {
            last.insert(
                format!("{domain:?}"),
                format!("{} v{}", e.event_type, e.aggregateversion.unwrap_or(0)),
            );
        }
        let last: Vec<String> = last.into_iter().map(|(d, e)| format!("{d}: {e}")).collect();
        let held = f.retries.get(id).map_or(String::new(), |r| last_retries(r));
        bad.push(format!(
            "{id}: {status}; last events: {}{held}",
            last.join(", ")
        ));
    }
    let checked = format!(
        "{} sagas, bound {} s after healing",
        accepted(f).len(),
        f.drain_bound_s
    );
    check(2, "every saga reaches a terminal state", checked, bad)
}

/// Each service's last put-off handling of an order, for a stuck saga's line: what held it
/// (a dependency down, a frozen node's thaw) is usually in the last retry's reason and time.
fn last_retries(records: &[RetryRecord]) -> String {
    let mut last: BTreeMap<&str, &RetryRecord> = BTreeMap::new();
    for record in records {
        last.insert(&record.service, record);
    }
    let said: Vec<String> = last
        .values()
        .map(|r| {
            let at = r.at.format("%H:%M:%S%.3f");
            let (service, event, attempt) = (&r.service, &r.event_type, r.attempt);
            format!("{service} {event} attempt {attempt} at {at}: {}", r.reason)
        })
        .collect();
    match said.is_empty() {
        true => String::new(),
        false => format!("; last retries: {}", said.join(", ")),
    }
}

/// Invariant 3: Money per order against the gateway's ledger; a shipped order's payment final.
fn money(f: &Facts) -> Check {
    let events = by_order(f);
    let mut charged: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for a in f
        .payments
        .authorizations
        .iter()
        .filter(|a| a.status == "approved")
    {
        charged.entry(&a.order_id).or_default().push(a.amount_cents);
    }
    let mut refunded: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &f.payments.refunds {
        refunded
            .entry(&r.order_id)
            .or_default()
            .push(r.amount_cents);
    }
    let mut bad = missing(f, &["payments", "events"]);
    let mut checked = 0;
    for id in accepted(f) {
        let (c, r) = (
            charged.get(id).cloned().unwrap_or_default(),
            refunded.get(id).cloned().unwrap_or_default(),
        );
        if c.len() > 1 {
            bad.push(format!("{id}: charged {} times", c.len()));
        }
        if r.len() > 1 {
            bad.push(format!("{id}: refunded {} times", r.len()));
        }
        let Some(row) = f.rows.get(id).and_then(Option::as_ref) else {
            continue;
        };
        let status = row.order_status.as_deref().unwrap_or_default();
        let net = c.iter().sum::<u64>() as i64 - r.iter().sum::<u64>() as i64;
        let expected = if KEPT.contains(&status) {
            row.total_amount.unwrap_or(0) as i64
        } else if status == "CANCELLED" {
            0
        } else {
            continue; // not ended: invariant 2 names it
        };
        checked += 1;
        if net != expected {
            bad.push(format!(
                "{id}: {status}, charged − refunded = {net} cents, expected {expected}"
            ));
        }
        let closed = events
            .get(id)
            .is_some_and(|events| events.iter().any(|(_, e)| e.event_type == "PaymentClosed"));
        let shipped = matches!(status, "SHIPPED" | "COMPLETED");
        if closed != shipped {
            bad.push(format!(
                "{id}: {status}, payment {}",
                if closed { "closed" } else { "not closed" }
            ));
        }
    }
    check(
        3,
        "money: one charge, one refund, the right balance, final once shipped",
        format!("{checked} ended orders against the gateway's ledger"),
        bad,
    )
}

/// Invariant 4: Stock per SKU: what left equals what was kept; never negative; nothing held for an
/// ended order.
fn stock(f: &Facts) -> Check {
    let mut bad = missing(f, &["events"]);
    bad.extend(
        f.negative_stock
            .iter()
            .map(|s| format!("negative stock: {s}")),
    );
    let mut kept: BTreeMap<&str, i64> = BTreeMap::new();
    for p in &f.placed {
        let Some(id) = p.order_id.as_deref() else {
            continue;
        };
        if KEPT.contains(&status(f, id).unwrap_or_default()) {
            for (sku, quantity) in &p.lines {
                *kept.entry(sku).or_default() += i64::from(*quantity);
            }
        }
    }
    match &f.stock_after {
        Err(e) => bad.push(format!("stock after the run unknown: {e}")),
        Ok(after) => {
            for (sku, before) in &f.stock_before {
                let left = before - after.get(sku).copied().unwrap_or(0);
                let sold = kept.get(sku.as_str()).copied().unwrap_or(0);
                if left != sold {
                    bad.push(format!(
                        "{sku}: {left} units left the shelves, {sold} were kept by customers"
                    ));
                }
            }
        }
    }
    // Held: units reserved and not released, per ended order: its lines if kept, else none.
    let ordered: BTreeMap<&str, &Placed> = f
        .placed
        .iter()
        .filter_map(|p| Some((p.order_id.as_deref()?, p)))
        .collect();
    for (id, events) in by_order(f) {
        let Some(status) = status(f, id).filter(|s| TERMINAL.contains(s)) else {
            continue;
        };
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        if KEPT.contains(&status) {
            for (sku, quantity) in ordered.get(id).map_or(&[][..], |p| &p.lines[..]) {
                *expected.entry(sku.clone()).or_default() += i64::from(*quantity);
            }
        }
        let held = held(&events);
        if held != expected {
            bad.push(format!(
                "{id}: {status} with {held:?} held, expected {expected:?}"
            ));
        }
    }
    check(
        4,
        "stock: sold = kept, never negative, nothing held",
        format!("{} SKUs", f.stock_before.len()),
        bad,
    )
}

/// The units an order's events hold, per SKU. With stock split by SKU, each shard reserves its
/// own lines (`…LinesReserved`) and the outcome (`InventoryReserved`, `StoreStockReserved`) the
/// last shard's: so an outcome holds all the lines, and without one only the shards' lines are
/// held (until they are released).
fn held(events: &[(Domain, &Envelope)]) -> BTreeMap<String, i64> {
    let lines = |event: &str, field: &str| -> Vec<(String, i64)> {
        let of = events.iter().filter(|(_, e)| e.event_type == event);
        of.flat_map(|(_, e)| e.data[field].as_array().cloned().unwrap_or_default())
            .map(|l| {
                let sku = l["sku"].as_str().unwrap_or_default().to_string();
                (sku, l["quantity"].as_i64().unwrap_or(0))
            })
            .collect()
    };
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for (outcome, one_shard, released) in [
        (
            "InventoryReserved",
            "InventoryLinesReserved",
            "InventoryReleased",
        ),
        (
            "StoreStockReserved",
            "StoreLinesReserved",
            "StoreStockReleased",
        ),
    ] {
        let mut reserved = lines(outcome, "lines");
        if reserved.is_empty() {
            reserved = lines(one_shard, "reserved");
        }
        for (sku, units) in reserved {
            *held.entry(sku).or_default() += units;
        }
        for (sku, units) in lines(released, "lines") {
            *held.entry(sku).or_default() -= units;
        }
    }
    held.retain(|_, units| *units != 0);
    held
}

/// Invariant 5: The carrier: one booking per order, cancelled with its order, no parcel for a refund.
fn carrier(f: &Facts) -> Check {
    let mut per_order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for b in &f.bookings.bookings {
        per_order.entry(&b.order_id).or_default().push(&b.status);
    }
    let mut bad = missing(f, &["bookings"]);
    for (id, statuses) in &per_order {
        if statuses.len() > 1 {
            bad.push(format!("{id}: booked {} times", statuses.len()));
        }
        if status(f, id) == Some("CANCELLED") {
            for s in statuses {
                match *s {
                    "cancelled" => {}
                    "booked" => bad.push(format!("{id}: cancelled order, booking still open")),
                    moved => bad.push(format!("{id}: refunded order, parcel {moved}")),
                }
            }
        }
    }
    check(
        5,
        "carrier: one booking, cancelled with its order, no parcel for a refund",
        format!("{} bookings", f.bookings.bookings.len()),
        bad,
    )
}

/// Invariant 6: Each service's events per aggregate have versions 1..n (no gap, no repeat); once-only
/// events appear once per order; no event twice.
fn versions(f: &Facts) -> Check {
    let mut bad = missing(f, &["events"]);
    let mut total = 0;
    for (domain, events) in &f.events {
        total += events.len();
        let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut once: BTreeMap<(&str, &str, String), usize> = BTreeMap::new();
        let mut ids = BTreeSet::new();
        for e in events {
            if !ids.insert(e.id) {
                bad.push(format!(
                    "{domain:?}: event {} ({} of {}) stored twice",
                    e.id, e.event_type, e.subject
                ));
            }
            // Named by the event (a shard of split stock), or by its order.
            let aggregate = match &e.aggregateid {
                Some(id) => id.clone(),
                None => actors::system::placement(*domain).aggregate_id(&e.subject, None),
            };
            if ONCE.contains(&e.event_type.as_str()) {
                // Each SKU shard releases its own lines: once per shard. The rest once.
                let per_shard = PER_SHARD.contains(&e.event_type.as_str());
                let shard = if per_shard {
                    aggregate.clone()
                } else {
                    String::new()
                };
                *once.entry((&e.subject, &e.event_type, shard)).or_default() += 1;
            }
            versions
                .entry(aggregate)
                .or_default()
                .push(e.aggregateversion.unwrap_or(0));
        }
        for (aggregate, mut v) in versions {
            v.sort_unstable();
            let expected: Vec<u64> = (1..=v.len() as u64).collect();
            if v != expected {
                let shown: Vec<String> = v.iter().take(12).map(u64::to_string).collect();
                bad.push(format!(
                    "{domain:?} {aggregate}: versions {} (expected 1..{})",
                    shown.join(","),
                    v.len()
                ));
            }
        }
        for ((order, event, _), n) in once {
            if n > 1 {
                bad.push(format!("{order}: {event} {n} times"));
            }
        }
    }
    check(
        6,
        "event versions 1..n, once-only events once",
        format!("{total} events in {} streams", f.events.len()),
        bad,
    )
}

/// Invariant 7: Outboxes drained, consumers at their stream's end, DLQ empty.
fn drained(f: &Facts) -> Check {
    let mut bad = Vec::new();
    for (service, depth) in &f.outboxes {
        match depth {
            Ok(0) => {}
            Ok(n) => bad.push(format!("{service}: {n} outbox rows not sent")),
            Err(e) => bad.push(format!("{service}: no status ({e})")),
        }
    }
    bad.extend(f.lagging_consumers.iter().cloned());
    bad.extend(f.dead_letters.iter().map(|d| format!("dead letter: {d}")));
    check(
        7,
        "outboxes drained, consumers at the end, DLQ empty",
        format!("{} outboxes", f.outboxes.len()),
        bad,
    )
}

/// Invariant 8: The live read model equals a fresh rebuild, for every ended order (one still
/// moving is invariant 2's, and would differ by the time the rebuild is read); and so do its
/// saga counts, when every order has ended and no saga is open (one still moving would differ
/// by the time the rebuild is counted).
fn rebuild_equals_live(f: &Facts) -> Check {
    let mut bad = match &f.rebuilt {
        Err(e) => vec![format!("no rebuild: {e}")],
        Ok(rebuilt) => f
            .rows
            .iter()
            .filter(|(id, live)| {
                let ended = live
                    .as_ref()
                    .and_then(|r| r.order_status.as_deref())
                    .is_some_and(|s| TERMINAL.contains(&s));
                ended && rebuilt.get(*id) != Some(live)
            })
            .map(|(id, live)| {
                let was = |r: Option<&OrderReadModel>| {
                    r.map_or("missing".to_string(), |r| {
                        format!(
                            "{} ({} events)",
                            r.order_status.as_deref().unwrap_or("-"),
                            r.timeline.len()
                        )
                    })
                };
                format!(
                    "{id}: live {}, rebuilt {}",
                    was(live.as_ref()),
                    was(rebuilt.get(id).and_then(Option::as_ref))
                )
            })
            .collect(),
    };
    let all_ended = f.rows.values().all(|live| {
        live.as_ref()
            .and_then(|r| r.order_status.as_deref())
            .is_some_and(|s| TERMINAL.contains(&s))
    });
    match &f.saga_counts {
        Err(e) => bad.push(format!("saga counts not read: {e}")),
        Ok(Some([live, rebuilt]))
            if all_ended && live.0 == 0 && rebuilt.0 == 0 && live != rebuilt =>
        {
            bad.push(format!(
                "saga counts (open, orders, by status): live {live:?}, rebuilt {rebuilt:?}"
            ))
        }
        Ok(_) => {}
    }
    check(
        8,
        "the live read model equals a rebuild",
        format!("{} rows", f.rows.len()),
        bad,
    )
}

/// Invariant 9: After healing, a fresh order completes.
fn fresh_order(f: &Facts) -> Check {
    let bad = match &f.fresh {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.clone()],
    };
    let checked = match &f.fresh {
        Ok(id) => format!("{id} completed"),
        Err(_) => "one order".to_string(),
    };
    check(9, "after healing, a fresh order completes", checked, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::load::Path;

    fn envelope(domain: Domain, event_type: &str, order: &str, version: u64) -> Envelope {
        let mut e =
            Envelope::new(domain, event_type, order, serde_json::json!({})).expect("envelope");
        e.aggregateversion = Some(version);
        e
    }

    /// Two mugs of order o1, reserved by `event`'s `field`.
    fn reserved(event: &str, field: &str) -> Envelope {
        let mut e = envelope(Domain::Inventory, event, "o1", 1);
        e.data = serde_json::json!({ field: [{"sku": "SKU-MUG", "quantity": 2}] });
        e
    }

    fn facts() -> Facts {
        let placed = Placed {
            n: 0,
            path: Path::Plain,
            idempotency_key: "k".into(),
            order_id: Some("o1".into()),
            answer: Some(201),
            attempts: 1,
            cancel: None,
            lines: vec![("SKU-MUG".into(), 2)],
        };
        let row = OrderReadModel {
            order_id: "o1".into(),
            order_status: Some("COMPLETED".into()),
            total_amount: Some(2_500),
            ..OrderReadModel::default()
        };
        let rows: BTreeMap<_, _> = [("o1".to_string(), Some(row))].into();
        let mut payments = PaymentLedger::default();
        payments
            .authorizations
            .push(actors::external::payment_gateway::AuthorizationReply {
                id: "a1".into(),
                idempotency_key: "k".into(),
                order_id: "o1".into(),
                amount_cents: 2_500,
                status: "approved".into(),
                decline_reason: None,
            });
        let events = [
            (
                Domain::Orders,
                vec![
                    envelope(Domain::Orders, "OrderCreated", "o1", 1),
                    envelope(Domain::Orders, "OrderConfirmed", "o1", 2),
                ],
            ),
            (
                Domain::Payments,
                vec![
                    envelope(Domain::Payments, "PaymentApproved", "o1", 1),
                    envelope(Domain::Payments, "PaymentClosed", "o1", 2),
                ],
            ),
            (
                Domain::Inventory,
                vec![reserved("InventoryReserved", "lines")],
            ),
        ]
        .into();
        let counts: SagaCounts = (0, 1, [("COMPLETED".to_string(), 1)].into());
        Facts {
            placed: vec![placed],
            rebuilt: Ok(rows.clone()),
            saga_counts: Ok(Some([counts.clone(), counts])),
            rows,
            payments,
            bookings: CarrierLedger::default(),
            events,
            stock_before: [("SKU-MUG".to_string(), 10)].into(),
            stock_after: Ok([("SKU-MUG".to_string(), 8)].into()),
            negative_stock: Vec::new(),
            outboxes: [("order".to_string(), Ok(0))].into(),
            lagging_consumers: Vec::new(),
            dead_letters: Vec::new(),
            retries: BTreeMap::new(),
            fresh: Ok("o2".into()),
            unreadable: BTreeMap::new(),
            drain_bound_s: 60,
        }
    }

    fn failed(f: &Facts) -> Vec<u8> {
        all(f)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.number)
            .collect()
    }

    #[test]
    fn a_consistent_run_passes_every_check() {
        assert_eq!(failed(&facts()), Vec::<u8>::new());
    }

    #[test]
    fn each_kind_of_damage_fails_its_check() {
        let mut f = facts();
        f.rows.insert("o1".into(), None);
        f.rebuilt = Ok(f.rows.clone());
        assert!(failed(&f).contains(&1));

        let mut f = facts();
        f.rows
            .get_mut("o1")
            .and_then(Option::as_mut)
            .expect("row")
            .order_status = Some("PENDING".into());
        f.rebuilt = Ok(f.rows.clone());
        assert!(failed(&f).contains(&2));
        let retry = |attempt, reason: &str| RetryRecord {
            service: "payment".into(),
            event_id: uuid::Uuid::nil(),
            event_type: "OrderCreated".into(),
            order_id: "o1".into(),
            attempt,
            reason: reason.into(),
            at: chrono::DateTime::UNIX_EPOCH,
        };
        f.retries.insert(
            "o1".into(),
            vec![retry(1, "first"), retry(2, "gateway down")],
        );
        let stuck = &all(&f)[1];
        assert_eq!(
            stuck.counterexamples,
            [
                "o1: PENDING; last events: Inventory: InventoryReserved v1, Orders: \
                 OrderConfirmed v2, Payments: PaymentClosed v2; last retries: payment \
                 OrderCreated attempt 2 at 00:00:00.000: gateway down"
            ],
            "a stuck saga says what held it last"
        );

        let mut f = facts();
        let again = f.payments.authorizations[0].clone();
        f.payments.authorizations.push(again);
        assert!(failed(&f).contains(&3));

        // Completed, and its payment never closed.
        let mut f = facts();
        f.events.insert(
            Domain::Payments,
            vec![envelope(Domain::Payments, "PaymentApproved", "o1", 1)],
        );
        assert_eq!(failed(&f), vec![3]);

        let mut f = facts();
        f.stock_after = Ok([("SKU-MUG".to_string(), 9)].into());
        assert_eq!(failed(&f), vec![4]);

        // Held by a shard of split stock, and never released.
        let mut f = facts();
        let mut held = reserved("InventoryLinesReserved", "reserved");
        held.aggregateid = Some("warehouse.1".into());
        f.events.insert(Domain::Inventory, vec![held]);
        f.rows
            .get_mut("o1")
            .and_then(Option::as_mut)
            .expect("row")
            .order_status = Some("CANCELLED".into());
        f.rebuilt = Ok(f.rows.clone());
        assert!(failed(&f).contains(&4));

        let mut f = facts();
        f.events
            .get_mut(&Domain::Orders)
            .expect("orders")
            .push(envelope(Domain::Orders, "OrderConfirmed", "o1", 3));
        assert_eq!(failed(&f), vec![6]);

        let mut f = facts();
        f.events.get_mut(&Domain::Orders).expect("orders").remove(0);
        assert_eq!(failed(&f), vec![6], "a gap in the versions");

        let mut f = facts();
        f.dead_letters.push("inventory: poison".into());
        assert_eq!(failed(&f), vec![7]);

        let mut f = facts();
        f.rebuilt = Ok(BTreeMap::new());
        assert_eq!(failed(&f), vec![8]);

        let mut f = facts();
        if let Ok(Some([live, _])) = &mut f.saga_counts {
            live.1 = 2;
        }
        assert_eq!(failed(&f), vec![8], "saga counts that differ");

        let mut f = facts();
        f.fresh = Err("stuck".into());
        assert_eq!(failed(&f), vec![9]);

        let mut f = facts();
        f.unreadable.insert("events", "streams not read".into());
        assert_eq!(
            failed(&f),
            vec![1, 3, 4, 6],
            "no check passes on facts it could not read"
        );
    }
}
