//! What a one-aggregate service keeps of orders it is done with, so its state (and snapshot) is as
//! big as its open orders, not as its history.
//!
//! The warehouse, the stores and the recommendations each hold all orders in one aggregate. They
//! decide with the open orders only. A closed order moves to [`Recent`], where only the newest
//! few stay, for display; a cancellation noted before the step it cancels is forgotten by
//! [`Notes`] once it is older than [`FORGET_AFTER`].

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long a cancellation noted ahead of its step is remembered: far longer than any saga's
/// deadline (after which no payment is approved and no shortage reported), and as long as the
/// inbox remembers event ids by default.
pub const FORGET_AFTER: Duration = Duration::days(7);

/// The newest closed orders, for `part` (the composed view) only: no decision may read it, an
/// entry can be gone any time.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Recent<V> {
    entries: VecDeque<(String, V)>,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            entries: VecDeque::new(),
        }
    }
}

impl<V> Recent<V> {
    /// Enough for the composed view of orders closed in the last minutes at full speed.
    pub const CAPACITY: usize = 1024;

    /// Remember `value` for `order_id`, forgetting the oldest entry when full.
    pub fn push(&mut self, order_id: String, value: V) {
        if self.entries.len() == Self::CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back((order_id, value));
    }

    /// Move `order_id` from the open orders to here, as it last stood (nothing if not open).
    pub fn close(&mut self, open: &mut HashMap<String, V>, order_id: &str) {
        if let Some(last) = open.remove(order_id) {
            self.push(order_id.to_string(), last);
        }
    }

    /// The newest entry for `order_id`, if still remembered.
    pub fn get(&self, order_id: &str) -> Option<&V> {
        self.entries
            .iter()
            .rev()
            .find(|(id, _)| id == order_id)
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Orders noted as cancelled before the step they cancel, oldest first, so they can be
/// forgotten once older than [`FORGET_AFTER`]. Time comes from the noting events themselves, so
/// a replay forgets exactly what the live aggregate forgot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Notes {
    noted: VecDeque<(DateTime<Utc>, String)>,
}

impl Notes {
    /// Note `order_id` at `at`; the orders noted more than [`FORGET_AFTER`] before it, to forget.
    pub fn note(&mut self, order_id: String, at: DateTime<Utc>) -> Vec<String> {
        self.noted.push_back((at, order_id));
        let mut expired = Vec::new();
        while let Some((noted_at, _)) = self.noted.front() {
            if *noted_at + FORGET_AFTER >= at {
                break;
            }
            if let Some((_, id)) = self.noted.pop_front() {
                expired.push(id);
            }
        }
        expired
    }

    /// Open `order_id` as `cancelled`, noted at `at` (`None`: an old event without the time,
    /// kept), and forget the open orders noted past the horizon that are still only noted.
    pub fn note_cancelled<R: PartialEq>(
        &mut self,
        open: &mut HashMap<String, R>,
        order_id: &str,
        at: Option<DateTime<Utc>>,
        cancelled: R,
    ) {
        let Some(at) = at else {
            open.insert(order_id.to_string(), cancelled);
            return;
        };
        for forgotten in self.note(order_id.to_string(), at) {
            if open.get(&forgotten) == Some(&cancelled) {
                open.remove(&forgotten);
            }
        }
        open.insert(order_id.to_string(), cancelled);
    }

    pub fn len(&self) -> usize {
        self.noted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.noted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_forgotten_once_older_than_the_horizon() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let mut notes = Notes::default();
        assert!(notes.note("a".into(), t0).is_empty());
        assert!(
            notes.note("b".into(), t0 + FORGET_AFTER).is_empty(),
            "not older yet"
        );
        let later = t0 + FORGET_AFTER + Duration::seconds(1);
        assert_eq!(notes.note("c".into(), later), vec!["a".to_string()]);
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn keeps_only_the_newest_entries() {
        let mut recent = Recent::default();
        for i in 0..Recent::<usize>::CAPACITY + 10 {
            recent.push(format!("o{i}"), i);
        }
        assert_eq!(recent.len(), Recent::<usize>::CAPACITY);
        assert_eq!(recent.get("o9"), None, "the oldest are forgotten");
        assert_eq!(recent.get("o10"), Some(&10));
        recent.push("o10".into(), 99);
        assert_eq!(recent.get("o10"), Some(&99), "the newest entry wins");
    }
}
