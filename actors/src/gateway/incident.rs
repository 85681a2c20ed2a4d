//! What the public sees of a failure inside the system: an id to quote, never the cause. A
//! cause names database paths, broker addresses and services, which are the operator's to read,
//! so it goes to the log under that id.
//!
//! An outage fails every request the same way, so answers failing for the same cause within a
//! minute share one incident, and the log holds its 1st, 2nd, 4th, 8th… answer: a line per
//! doubling, not per request, however many clients retry. Every id an answer quotes is in the
//! log, on the incident's first line.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one cause keeps one incident: an outage of an hour is sixty, each with its count.
const WINDOW: Duration = Duration::from_secs(60);

/// Causes remembered at once. Past it, a new cause is an incident of its own, logged every time
/// (many different causes at once are worth every line).
const CAUSES_KEPT: usize = 256;

/// An id for one failed answer; the log holds its cause under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident(String);

impl Incident {
    /// The incident of an answer: `what` failed because of `cause` (logged with no card number,
    /// should a cause quote what a client sent). The same cause within a minute is the same
    /// incident.
    pub fn of(what: &str, cause: &dyn Display) -> Incident {
        let cause = super::redact_card_numbers(&cause.to_string());
        // The log is one per process, and so is what it was told.
        static SEEN: LazyLock<Mutex<Incidents>> = LazyLock::new(Mutex::default);
        let noted = SEEN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(&cause, Instant::now());
        for ended in noted.ended {
            tracing::warn!(incident = %ended.id, answers = ended.answers, "ended: {}", ended.cause);
        }
        if noted.answers.is_power_of_two() {
            tracing::warn!(incident = %noted.id, answers = noted.answers, "{what}: {cause}");
        }
        Incident(noted.id)
    }

    pub fn id(&self) -> &str {
        &self.0
    }
}

/// The incidents of the last minute, by cause.
#[derive(Default)]
struct Incidents {
    by_cause: HashMap<String, Open>,
}

/// An incident still taking answers.
struct Open {
    id: String,
    since: Instant,
    answers: u64,
}

/// What an answer's incident is, and what the log is owed.
struct Noted {
    id: String,
    /// This incident's answers so far, this one included.
    answers: u64,
    /// Incidents whose window is over, with final counts their last lines did not give.
    ended: Vec<Ended>,
}

struct Ended {
    id: String,
    answers: u64,
    cause: String,
}

impl Ended {
    /// `open`'s final count, unless its last line already said it.
    fn of(cause: String, open: Open) -> Option<Ended> {
        (!open.answers.is_power_of_two()).then_some(Ended {
            id: open.id,
            answers: open.answers,
            cause,
        })
    }
}

impl Incidents {
    fn note(&mut self, cause: &str, now: Instant) -> Noted {
        let mut ended = Vec::new();
        if let Some(open) = self.by_cause.get_mut(cause) {
            if now.duration_since(open.since) < WINDOW {
                open.answers += 1;
                return Noted {
                    id: open.id.clone(),
                    answers: open.answers,
                    ended,
                };
            }
        }
        if let Some(open) = self.by_cause.remove(cause) {
            ended.extend(Ended::of(cause.to_string(), open));
        }
        if self.by_cause.len() >= CAUSES_KEPT {
            let over: Vec<String> = self
                .by_cause
                .iter()
                .filter(|(_, open)| now.duration_since(open.since) >= WINDOW)
                .map(|(cause, _)| cause.clone())
                .collect();
            for cause in over {
                if let Some(open) = self.by_cause.remove(&cause) {
                    ended.extend(Ended::of(cause, open));
                }
            }
        }
        let noted = Noted {
            // Time-ordered, so a log's incidents sort as they happened.
            id: uuid::Uuid::now_v7().to_string(),
            answers: 1,
            ended,
        };
        if self.by_cause.len() < CAUSES_KEPT {
            let open = Open {
                id: noted.id.clone(),
                since: now,
                answers: 1,
            };
            self.by_cause.insert(cause.to_string(), open);
        }
        noted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Note `cause` `n` times at `now`: the ids given and how many were logged.
    fn answers(seen: &mut Incidents, cause: &str, n: u64, now: Instant) -> (Vec<String>, usize) {
        let noted: Vec<Noted> = (0..n).map(|_| seen.note(cause, now)).collect();
        let logged = noted.iter().filter(|n| n.answers.is_power_of_two()).count();
        (noted.into_iter().map(|n| n.id).collect(), logged)
    }

    #[test]
    fn one_cause_within_a_minute_is_one_incident_logged_once_per_doubling() {
        let mut seen = Incidents::default();
        let now = Instant::now();
        let (ids, logged) = answers(&mut seen, "broker down", 1000, now);
        assert!(ids.iter().all(|id| *id == ids[0]), "one incident");
        assert_eq!(logged, 10, "answers 1, 2, 4 … 512");
        let (other, _) = answers(&mut seen, "disk full", 1, now);
        assert_ne!(other[0], ids[0], "another cause, another incident");
    }

    #[test]
    fn after_a_minute_a_cause_is_a_new_incident_and_the_last_one_is_counted() {
        let mut seen = Incidents::default();
        let start = Instant::now();
        let (first, _) = answers(&mut seen, "broker down", 3, start);
        let later = seen.note("broker down", start + WINDOW);
        assert_ne!(later.id, first[0]);
        assert_eq!(later.answers, 1, "its first answer is logged");
        let [ended] = &later.ended[..] else {
            panic!("the final count of the last, 3, was never logged");
        };
        assert_eq!((&ended.id, ended.answers), (&first[0], 3));

        // A final count its last line already gave is not repeated.
        seen.note("broker down", start + WINDOW);
        let again = seen.note("broker down", start + WINDOW * 2);
        assert!(again.ended.is_empty(), "2 answers: its last line said so");
    }

    #[test]
    fn past_the_causes_kept_a_new_cause_is_its_own_incident_every_time() {
        let mut seen = Incidents::default();
        let now = Instant::now();
        for i in 0..CAUSES_KEPT {
            seen.note(&format!("cause {i}"), now);
        }
        let (ids, logged) = answers(&mut seen, "one too many", 3, now);
        assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
        assert_eq!(logged, 3, "every answer logged");
        seen.note("cause 0", now); // 2 answers: its last line said so
        seen.note("cause 1", now);
        seen.note("cause 1", now); // 3: its last line did not

        // Causes whose minute is over make room, and their final counts are given.
        let later = now + WINDOW;
        let first = seen.note("one too many", later);
        let ended: Vec<_> = first
            .ended
            .iter()
            .map(|e| (&e.cause[..], e.answers))
            .collect();
        assert_eq!(ended, [("cause 1", 3)]);
        let (ids, logged) = answers(&mut seen, "one too many", 2, later);
        assert!(ids.iter().all(|id| *id == first.id), "{ids:?}");
        assert_eq!(logged, 1, "its 2nd answer");
    }
}
