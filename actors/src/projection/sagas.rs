//! Sagas that have not ended, each with its newest event: one saga "stuck" is one still open
//! past a bound after its last event. Kept in memory from the active generation's rows (one
//! scan at start and after a rebuild's switch, then every batch), so asking costs nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::api::{OpenSagas as Report, StuckSaga};
use super::model::OrderReadModel;

/// How many of the oldest stuck sagas a report names.
const NAMED: usize = 20;

#[derive(Default)]
pub struct OpenSagas(Mutex<HashMap<String, StuckSaga>>);

impl OpenSagas {
    /// Start over from every row of a generation.
    pub fn reload<'a>(&self, rows: impl IntoIterator<Item = &'a OrderReadModel>) {
        let mut open = self.lock();
        open.clear();
        for row in rows {
            if let Some(saga) = open_saga(row) {
                open.insert(row.order_id.clone(), saga);
            }
        }
    }

    /// A row of the active generation changed.
    pub fn update(&self, row: &OrderReadModel) {
        let mut open = self.lock();
        match open_saga(row) {
            Some(saga) => open.insert(row.order_id.clone(), saga),
            None => open.remove(&row.order_id),
        };
    }

    /// The open sagas, and the ones whose last event is older than `stuck_after`, oldest first.
    pub fn report(&self, stuck_after: chrono::Duration, now: DateTime<Utc>) -> Report {
        let open = self.lock();
        let mut stuck: Vec<StuckSaga> = open
            .values()
            .filter(|s| now - s.last_event > stuck_after)
            .cloned()
            .collect();
        stuck.sort_by_key(|s| s.last_event);
        let count = stuck.len() as u64;
        stuck.truncate(NAMED);
        Report {
            open: open.len() as u64,
            stuck_after_secs: stuck_after.num_seconds().max(0) as u64,
            stuck: count,
            oldest: stuck,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StuckSaga>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn open_saga(row: &OrderReadModel) -> Option<StuckSaga> {
    if !row.saga_open() {
        return None;
    }
    Some(StuckSaga {
        order_id: row.order_id.clone(),
        order_status: row.order_status.clone().unwrap_or_else(|| "UNKNOWN".into()),
        shipment_status: row.shipment_status.clone(),
        payment_status: row.payment_status.clone(),
        last_event: row.last_event()?,
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
            data: serde_json::Value::Null,
        });
        row
    }

    #[test]
    fn open_sagas_past_the_bound_are_stuck_and_ended_ones_are_not() {
        let sagas = OpenSagas::default();
        sagas.reload(&[
            row("done", Some("COMPLETED"), Some("APPROVED"), 0),
            row("refunded", Some("CANCELLED"), Some("REFUNDED"), 0),
            row("unrefunded", Some("CANCELLED"), Some("APPROVED"), 10),
            row("old", Some("PENDING"), None, 0),
            row("young", Some("CONFIRMED"), Some("APPROVED"), 995),
        ]);
        let now = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        let report = sagas.report(chrono::Duration::seconds(60), now);
        assert_eq!(report.open, 3);
        assert_eq!(report.stuck, 2);
        let names: Vec<_> = report.oldest.iter().map(|s| s.order_id.as_str()).collect();
        assert_eq!(names, ["old", "unrefunded"]);
        // It completes: no longer open.
        sagas.update(&row("old", Some("COMPLETED"), None, 1000));
        assert_eq!(sagas.report(chrono::Duration::seconds(60), now).stuck, 1);
    }
}
