//! Sagas that have not ended, each with its newest event: one saga "stuck" is one still open
//! past a bound after its last event. Kept in memory, so asking costs nothing, and in the
//! generation's index (storage's `models`), written in the batch of the rows it follows from:
//! a start reads the open sagas and the counts, not every row. Ended sagas are only counted,
//! by outcome; the newest changes are kept for the dashboard.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use storage::models::IndexWrite;

use super::api::{OpenSagas as Report, RecentOrder, StuckSaga};
use super::model::OrderReadModel;
use crate::telemetry::metrics;

/// How many of the oldest stuck sagas a report names, and of the newest changed orders.
const NAMED: usize = 20;

/// The generation's index entries of the tracker: all under [`INDEX`]. An open saga is its
/// [`StuckSaga`] as JSON under `OPEN` and its order id, a count of ended ones a u64 under
/// `ENDED` and the status; `INDEXED` says the index is whole, as [`INDEX_VERSION`] counts (a
/// generation written before the index had none).
pub const INDEX: &str = "saga/";
const OPEN: &str = "saga/open/";
const ENDED: &str = "saga/ended/";
const INDEXED: &str = "saga/indexed";
/// What `INDEXED` holds. A build that sorts sagas otherwise (what is open, a status, what an
/// entry holds) counts it up, so an index counted the old way is read from the rows again.
const INDEX_VERSION: &[u8] = b"1";

#[derive(Default)]
pub struct OpenSagas(Mutex<Sagas>);

#[derive(Default)]
struct Sagas {
    open: HashMap<String, StuckSaga>,
    /// Ended sagas by final order status.
    ended: BTreeMap<String, u64>,
    /// The orders changed last, newest first (one entry per order).
    recent: VecDeque<RecentOrder>,
}

/// What the tracker needs of a row. Decoded from a stored row, it skips the timeline's data
/// (the bulk of a row), so reading every row at start or after a rebuild stays cheap.
#[derive(Debug, Clone, Deserialize)]
pub struct SagaFacts {
    order_id: String,
    order_status: Option<String>,
    payment_status: Option<String>,
    shipment_status: Option<String>,
    /// When its newest event happened.
    #[serde(rename = "timeline", deserialize_with = "newest")]
    last_event: Option<DateTime<Utc>>,
}

impl SagaFacts {
    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    pub fn of(row: &OrderReadModel) -> SagaFacts {
        SagaFacts {
            order_id: row.order_id.clone(),
            order_status: row.order_status.clone(),
            payment_status: row.payment_status.clone(),
            shipment_status: row.shipment_status.clone(),
            last_event: row.last_event(),
        }
    }
}

/// The newest `time` of a stored timeline, reading nothing else of its entries.
fn newest<'de, D: Deserializer<'de>>(timeline: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    struct At {
        time: DateTime<Utc>,
    }
    let entries = Vec::<At>::deserialize(timeline)?;
    Ok(entries.into_iter().map(|e| e.time).max())
}

impl Sagas {
    /// A row changed from `before` (none for a new row) to `after`: see [`count_ended`].
    /// Answers whether its saga ended with this change.
    fn track(&mut self, before: Option<&SagaFacts>, after: &SagaFacts) -> bool {
        let ended_now = count_ended(&mut self.ended, before, after);
        match open_saga(after) {
            Some(saga) => self.open.insert(after.order_id.clone(), saga),
            None => self.open.remove(&after.order_id),
        };
        ended_now
    }
}

/// Count a row's change from `before` (none for a new row) to `after` among the `ended` sagas
/// by status. An ended saga counts once, under its status now. It may reopen: the streams are
/// read side by side, so an order's cancellation can arrive before its payment's approval
/// (ended, then open until the refund). Answers whether it ended with this change.
fn count_ended(
    counts: &mut BTreeMap<String, u64>,
    before: Option<&SagaFacts>,
    after: &SagaFacts,
) -> bool {
    let ended_before = before.filter(|b| ended(b));
    if let Some(before) = ended_before {
        if let Some(count) = counts.get_mut(&status(before)) {
            *count = count.saturating_sub(1);
        }
    }
    if open_saga(after).is_some() {
        return false;
    }
    *counts.entry(status(after)).or_default() += 1;
    ended_before.is_none()
}

/// Why a generation's saga index could not be read.
#[derive(Debug, thiserror::Error)]
#[error("saga index entry {key}: {why}")]
pub struct UnreadableIndex {
    key: String,
    why: String,
}

impl OpenSagas {
    /// Start over from every row of a generation.
    pub fn reload(&self, rows: impl IntoIterator<Item = SagaFacts>) {
        let mut sagas = self.lock();
        *sagas = Sagas::default();
        for row in rows {
            sagas.track(None, &row);
        }
    }

    /// Start over from a generation's index entries (under [`INDEX`]). `Ok(false)`, with
    /// nothing changed, if the index is not whole: read every row then, and write it whole.
    pub fn restore(&self, index: &[(String, Vec<u8>)]) -> Result<bool, UnreadableIndex> {
        if !index
            .iter()
            .any(|(key, value)| key == INDEXED && value == INDEX_VERSION)
        {
            return Ok(false);
        }
        let mut restored = Sagas::default();
        for (key, value) in index {
            let unreadable = |why: String| UnreadableIndex {
                key: key.clone(),
                why,
            };
            if let Some(order_id) = key.strip_prefix(OPEN) {
                let saga: StuckSaga =
                    serde_json::from_slice(value).map_err(|e| unreadable(e.to_string()))?;
                restored.open.insert(order_id.to_string(), saga);
            } else if let Some(status) = key.strip_prefix(ENDED) {
                let count = value
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| unreadable(format!("{} bytes, not a count", value.len())))?;
                restored.ended.insert(status.to_string(), count);
            } else if key != INDEXED {
                return Err(unreadable("not a saga index key".into()));
            }
        }
        *self.lock() = restored;
        Ok(true)
    }

    /// What changes of the index when rows change from `before` (none for a new row) to
    /// `after`, as [`OpenSagas::track`] will count them once they are written.
    pub fn index_changes(
        &self,
        changes: &[(Option<&SagaFacts>, &SagaFacts)],
    ) -> Result<Vec<IndexWrite>, serde_json::Error> {
        let mut counts = self.lock().ended.clone();
        let mut writes = Vec::with_capacity(changes.len() + counts.len());
        for (before, after) in changes {
            count_ended(&mut counts, *before, after);
            let open = open_saga(after)
                .map(|s| serde_json::to_vec(&s))
                .transpose()?;
            writes.push((format!("{OPEN}{}", after.order_id), open));
        }
        writes.extend(counts.into_iter().map(ended_entry));
        Ok(writes)
    }

    /// The whole index of what is tracked, said whole.
    pub fn whole_index(&self) -> Result<Vec<IndexWrite>, serde_json::Error> {
        let sagas = self.lock();
        let mut writes = Vec::with_capacity(sagas.open.len() + sagas.ended.len() + 1);
        for (order_id, saga) in &sagas.open {
            writes.push((format!("{OPEN}{order_id}"), Some(serde_json::to_vec(saga)?)));
        }
        writes.extend(sagas.ended.clone().into_iter().map(ended_entry));
        writes.push((INDEXED.to_string(), Some(INDEX_VERSION.to_vec())));
        Ok(writes)
    }

    /// Start over from what `other` tracked (a rebuilt generation's sagas).
    pub fn take_over(&self, other: OpenSagas) {
        let other = other.0.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut sagas = self.lock();
        sagas.open = other.open;
        sagas.ended = other.ended;
        sagas.recent.clear();
    }

    /// A row changed from `before` (none for a new row) to `after`: its saga is counted as
    /// [`Sagas::track`] says, neither measured nor listed as recent (a generation being built).
    pub fn track(&self, before: Option<&SagaFacts>, after: &SagaFacts) {
        self.lock().track(before, after);
    }

    /// A row of the active generation changed; `before` is what its stored row said (none for
    /// a new row). A saga that ends with this change is measured, from its order's date to its
    /// last event (one that reopens and ends again, twice).
    pub fn update(&self, before: Option<&SagaFacts>, row: &OrderReadModel) {
        let facts = SagaFacts::of(row);
        let mut sagas = self.lock();
        if sagas.track(before, &facts) {
            if let (Some(from), Some(to)) = (row.order_date, row.last_event()) {
                let seconds = (to - from).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::saga_ended(&status(&facts), seconds);
            }
        }
        sagas.recent.retain(|r| r.order_id != row.order_id);
        if let Some(last_event) = row.last_event() {
            sagas.recent.push_front(RecentOrder {
                order_id: row.order_id.clone(),
                status: status(&facts),
                last_event,
            });
            sagas.recent.truncate(NAMED);
        }
    }

    /// The open sagas, and the ones whose last event is older than `stuck_after`, oldest first.
    pub fn report(&self, stuck_after: chrono::Duration, now: DateTime<Utc>) -> Report {
        let sagas = self.lock();
        let mut stuck: Vec<StuckSaga> = sagas
            .open
            .values()
            .filter(|s| now - s.last_event > stuck_after)
            .cloned()
            .collect();
        stuck.sort_by_key(|s| s.last_event);
        let count = stuck.len() as u64;
        stuck.truncate(NAMED);
        let mut by_status = sagas.ended.clone();
        for saga in sagas.open.values() {
            *by_status.entry(saga.order_status.clone()).or_default() += 1;
        }
        Report {
            open: sagas.open.len() as u64,
            stuck_after_secs: stuck_after.num_seconds().max(0) as u64,
            stuck: count,
            oldest: stuck,
            total: by_status.values().sum(),
            by_status,
            recent: sagas.recent.iter().cloned().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sagas> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ended_entry((status, count): (String, u64)) -> IndexWrite {
    (
        format!("{ENDED}{status}"),
        Some(count.to_be_bytes().to_vec()),
    )
}

fn status(row: &SagaFacts) -> String {
    row.order_status.clone().unwrap_or_else(|| "UNKNOWN".into())
}

fn ended(row: &SagaFacts) -> bool {
    !super::model::saga_open(row.order_status.as_deref(), row.payment_status.as_deref())
}

fn open_saga(row: &SagaFacts) -> Option<StuckSaga> {
    if ended(row) {
        return None;
    }
    Some(StuckSaga {
        order_id: row.order_id.clone(),
        order_status: status(row),
        shipment_status: row.shipment_status.clone(),
        payment_status: row.payment_status.clone(),
        last_event: row.last_event?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: Option<&str>, payment: Option<&str>, at: i64) -> OrderReadModel {
        let mut row = OrderReadModel::new(id);
        row.order_status = status.map(str::to_string);
        row.payment_status = payment.map(str::to_string);
        row.timeline.push(super::super::model::TimelineEntry {
            event_id: uuid::Uuid::now_v7(),
            source: "order".into(),
            event_type: "OrderCreated".into(),
            time: DateTime::from_timestamp(at, 0).unwrap_or_default(),
            version: 1,
            data: serde_json::value::RawValue::NULL.to_owned(),
        });
        row
    }

    #[test]
    fn open_sagas_past_the_bound_are_stuck_and_ended_ones_are_not() {
        let sagas = OpenSagas::default();
        sagas.reload(
            [
                row("done", Some("COMPLETED"), Some("APPROVED"), 0),
                row("refunded", Some("CANCELLED"), Some("REFUNDED"), 0),
                row("unrefunded", Some("CANCELLED"), Some("APPROVED"), 10),
                row("old", Some("PENDING"), None, 0),
                row("young", Some("CONFIRMED"), Some("APPROVED"), 995),
            ]
            .iter()
            .map(SagaFacts::of),
        );
        let now = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        let report = sagas.report(chrono::Duration::seconds(60), now);
        assert_eq!(report.open, 3);
        assert_eq!(report.stuck, 2);
        let names: Vec<_> = report.oldest.iter().map(|s| s.order_id.as_str()).collect();
        assert_eq!(names, ["old", "unrefunded"]);
        assert_eq!(report.total, 5);
        assert_eq!(report.by_status["CANCELLED"], 2, "{:?}", report.by_status);
        // It completes: no longer open, counted once however often its row changes again.
        let old = SagaFacts::of(&row("old", Some("PENDING"), None, 0));
        let completed = row("old", Some("COMPLETED"), None, 1000);
        sagas.update(Some(&old), &completed);
        sagas.update(
            Some(&SagaFacts::of(&completed)),
            &row("old", Some("COMPLETED"), None, 1001),
        );
        let report = sagas.report(chrono::Duration::seconds(60), now);
        assert_eq!(report.stuck, 1);
        assert_eq!(report.by_status["COMPLETED"], 2);
        assert_eq!(report.by_status.get("PENDING"), None);
        assert_eq!(report.recent.len(), 1, "one entry per order");
        assert_eq!(report.recent[0].order_id, "old");
    }

    /// The cancellation read before the payment's approval: ended, open, ended again; counted
    /// once, as the rows say.
    #[test]
    fn a_saga_that_reopens_is_counted_once() {
        let sagas = OpenSagas::default();
        let cancelled = row("o", Some("CANCELLED"), None, 10);
        let unrefunded = row("o", Some("CANCELLED"), Some("APPROVED"), 11);
        let refunded = row("o", Some("CANCELLED"), Some("REFUNDED"), 12);
        sagas.update(None, &cancelled);
        let now = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        let count = |sagas: &OpenSagas| {
            let report = sagas.report(chrono::Duration::seconds(60), now);
            (report.open, report.total)
        };
        assert_eq!(count(&sagas), (0, 1), "ended in its first batch, it counts");
        sagas.update(Some(&SagaFacts::of(&cancelled)), &unrefunded);
        assert_eq!(count(&sagas), (1, 1), "open again until the refund");
        sagas.update(Some(&SagaFacts::of(&unrefunded)), &refunded);
        assert_eq!(count(&sagas), (0, 1));
        let report = sagas.report(chrono::Duration::seconds(60), now);
        assert_eq!(report.by_status["CANCELLED"], 1, "{:?}", report.by_status);
    }

    /// A rebuild counts its generation's rows as it writes them; the switch hands that over.
    #[test]
    fn a_rebuilt_generations_count_takes_over() {
        let live = OpenSagas::default();
        live.update(None, &row("a", Some("PENDING"), None, 0));
        let built = OpenSagas::default();
        let pending = SagaFacts::of(&row("a", Some("PENDING"), None, 0));
        built.track(None, &pending);
        built.track(
            Some(&pending),
            &SagaFacts::of(&row("a", Some("COMPLETED"), None, 5)),
        );
        built.track(
            None,
            &SagaFacts::of(&row("b", Some("CANCELLED"), Some("REFUNDED"), 3)),
        );
        live.take_over(built);
        let now = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        let report = live.report(chrono::Duration::seconds(60), now);
        assert_eq!((report.open, report.total), (0, 2), "{report:?}");
        assert_eq!(report.by_status["COMPLETED"], 1);
        assert!(report.recent.is_empty());
    }

    /// The index written batch by batch restores what the tracker counted, without a row.
    #[test]
    fn an_index_written_with_each_change_restores_the_same_sagas() {
        let live = OpenSagas::default();
        let mut stored: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut write = |writes: Vec<IndexWrite>| {
            for (key, value) in writes {
                match value {
                    Some(value) => stored.insert(key, value),
                    None => stored.remove(&key),
                };
            }
        };
        write(live.whole_index().unwrap());
        let (pending, done) = (
            row("a", Some("PENDING"), None, 0),
            row("a", Some("COMPLETED"), Some("APPROVED"), 5),
        );
        let (cancelled, unrefunded) = (
            row("b", Some("CANCELLED"), None, 1),
            row("b", Some("CANCELLED"), Some("APPROVED"), 2),
        );
        let stuck = row("c", Some("CONFIRMED"), Some("APPROVED"), 3);
        // Batches of changes: (stored row before, row after).
        let batches = [
            vec![(None, &pending), (None, &cancelled), (None, &stuck)],
            vec![(Some(&pending), &done), (Some(&cancelled), &unrefunded)],
        ];
        for batch in batches {
            let facts: Vec<_> = batch
                .iter()
                .map(|(b, a)| (b.map(SagaFacts::of), SagaFacts::of(a)))
                .collect();
            let changes: Vec<_> = facts.iter().map(|(b, a)| (b.as_ref(), a)).collect();
            write(live.index_changes(&changes).unwrap());
            for (before, after) in &batch {
                live.update(before.map(SagaFacts::of).as_ref(), after);
            }
        }
        let restored = OpenSagas::default();
        let index: Vec<_> = stored.into_iter().collect();
        assert!(restored.restore(&index).unwrap());
        let now = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        let report = |sagas: &OpenSagas| {
            let r = sagas.report(chrono::Duration::seconds(60), now);
            (r.open, r.stuck, r.total, r.by_status, r.oldest)
        };
        assert_eq!(report(&restored), report(&live));
        let (open, _, total, by_status, _) = report(&restored);
        assert_eq!((open, total), (2, 3), "{by_status:?}");
        assert_eq!(by_status["COMPLETED"], 1);
    }

    #[test]
    fn an_index_unsaid_or_of_another_version_is_not_read_and_a_damaged_one_is_refused() {
        let sagas = OpenSagas::default();
        sagas.update(None, &row("a", Some("PENDING"), None, 0));
        assert!(!sagas.restore(&[]).unwrap(), "written before the index");
        let now = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        assert_eq!(sagas.report(chrono::Duration::seconds(60), now).open, 1);
        let counted_otherwise = [(INDEXED.to_string(), b"0".to_vec())];
        assert!(
            !sagas.restore(&counted_otherwise).unwrap(),
            "another version"
        );
        let damaged = [
            (INDEXED.to_string(), INDEX_VERSION.to_vec()),
            (format!("{ENDED}COMPLETED"), b"12".to_vec()),
        ];
        let e = sagas.restore(&damaged).unwrap_err();
        assert!(e.to_string().contains("not a count"), "{e}");
    }

    #[test]
    fn facts_read_from_a_stored_row_are_the_rows_own() {
        let mut stored = row("o", Some("CANCELLED"), Some("APPROVED"), 10);
        stored.timeline[0].data =
            serde_json::value::to_raw_value(&serde_json::json!({"customer": "c", "lines": [1, 2]}))
                .unwrap();
        stored.timeline.push(stored.timeline[0].clone());
        stored.timeline[1].time = DateTime::from_timestamp(20, 0).unwrap_or_default();
        stored.shipment_status = Some("CANCELLED".into());
        let bytes = serde_json::to_vec(&stored).unwrap();
        let read: SagaFacts = serde_json::from_slice(&bytes).unwrap();
        let own = SagaFacts::of(&stored);
        assert_eq!(format!("{read:?}"), format!("{own:?}"));
        assert_eq!(read.last_event, DateTime::from_timestamp(20, 0));
    }
}
