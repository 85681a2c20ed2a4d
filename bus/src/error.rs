/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },

    /// The broker did not take the message (down, timed out, no stream). Retry later.
    #[error("publish to {subject} failed: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::Error,
    },

    /// Stream or consumer management failed.
    #[error("JetStream {what} failed: {source}")]
    JetStream {
        what: String,
        #[source]
        source: async_nats::Error,
    },

    /// A message that is not a valid event (the consumer sends these to DLQ).
    #[error("undecodable event: {0}")]
    Decode(String),

    /// A valid event on a subject that is not its own (another domain's stream, another order,
    /// another type): not believed (the consumer sends these to DLQ).
    #[error("misplaced event: {0}")]
    Misplaced(String),

    /// An event that cannot be built (bad subject token, unserializable data).
    #[error("invalid event: {0}")]
    Invalid(String),

    #[error(transparent)]
    Storage(#[from] storage::StorageError),

    /// A credentials file that cannot be read or written.
    #[error("credentials {}: {why}", path.display())]
    Credentials {
        path: std::path::PathBuf,
        why: String,
    },

    /// The lease on this partition is someone else's now: this instance stops.
    #[error(
        "lease {key} (token {token}) is lost: it lapsed or was given up, and another instance \
         holds it or held it since"
    )]
    LeaseLost { key: String, token: u64 },

    /// A stream holds events partitioned otherwise than the settings say: changing the count
    /// under stored events would split one order's events over two partitions.
    #[error(
        "stream {stream} holds events partitioned {stored}, but the settings want {wanted} \
         partitions: set `partitions` to what the stream has, or re-partition offline (README, \
         'Capacity')"
    )]
    Repartition {
        stream: String,
        stored: String,
        wanted: u32,
    },

    /// A new leader of the stream was announced while the old one's answers were awaited: they
    /// may never come. Asked again (a publish under the same `Nats-Msg-Id`), the new one answers.
    #[error("stream {stream} elected a new leader while its answers were awaited; asking again")]
    LeaderElected { stream: String },

    /// The nats-server process could not be found, started or stopped.
    #[error("nats-server: {0}")]
    Server(String),
}

impl BusError {
    /// The error for JetStream operation `what`, keeping its cause (an async-nats error, or a
    /// sentence when there is none).
    pub fn jetstream<E: Into<async_nats::Error>>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |source| BusError::JetStream {
            what,
            source: source.into(),
        }
    }
}
