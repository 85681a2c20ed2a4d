//! What the public sees of a failure inside the system: an id to quote, never the cause. A
//! cause names database paths, broker addresses and services, which are the operator's to read,
//! so it goes to the log under that id.

use std::fmt::Display;

/// An id for one failed answer; the log holds its cause under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident(String);

impl Incident {
    /// A new incident: `what` failed because of `cause`, which is logged under its id (with
    /// no card number, should a cause quote what a client sent).
    pub fn of(what: &str, cause: &dyn Display) -> Incident {
        // Time-ordered, so a log's incidents sort as they happened.
        let id = uuid::Uuid::now_v7().to_string();
        let cause = super::redact_card_numbers(&cause.to_string());
        tracing::warn!(incident = %id, "{what}: {cause}");
        Incident(id)
    }

    pub fn id(&self) -> &str {
        &self.0
    }
}
