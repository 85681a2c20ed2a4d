/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },

    /// The broker did not take the message (down, timed out, no stream). Retry later.
    #[error("publish to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },

    /// Stream or consumer management failed.
    #[error("JetStream {what} failed: {reason}")]
    JetStream { what: String, reason: String },

    /// A message that is not a valid event (the consumer sends these to DLQ).
    #[error("undecodable event: {0}")]
    Decode(String),

    /// An event that cannot be built (bad subject token, unserializable data).
    #[error("invalid event: {0}")]
    Invalid(String),

    #[error(transparent)]
    Storage(#[from] storage::StorageError),

    /// The nats-server process could not be found, started or stopped.
    #[error("nats-server: {0}")]
    Server(String),
}

impl BusError {
    pub(crate) fn jetstream(what: impl Into<String>) -> impl FnOnce(String) -> Self {
        let what = what.into();
        move |reason| BusError::JetStream { what, reason }
    }
}
