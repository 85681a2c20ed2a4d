//! The bus: every event between services travels here, on NATS JetStream.
//!
//! # Layout
//! - [`envelope`]: the CloudEvents 1.0 envelope, subjects `<domain>.<event_name>.<order_id>`
//!   (stored with the order's partition appended), headers.
//! - [`partition`]: every stored event subject ends in its order's partition (the broker's own
//!   `partition()` transform), so one consumer can take one partition's events.
//! - [`streams`]: one stream per owning service plus `DLQ` and `OPS`, provisioned idempotently.
//! - [`publisher`]: pipelined publishing (send a batch, then await its PubAcks).
//! - [`consumer`]: durable pull consumers: explicit ack only with a flush proof, nak with backoff,
//!   poison and exhausted messages to `DLQ` with the reason.
//! - `pull`: a durable consumer's pulls, all answered on one subscription for its life.
//! - [`elections`]: a cluster's announcements of new leaders, followed as cues to look again.
//! - [`relay`]: the outbox relay: publishes durable outbox rows and marks them sent after PubAck;
//!   publishes again what a broker acknowledged and then lost.
//! - [`lease`]: one owner at a time per partition of a service (a JetStream KV lease whose
//!   revision fences its store).
//! - [`dlq`]: typed access to the DLQ stream: list, get, delete, discard.
//! - [`status`]: streams and consumer lag, for `commerce status`.
//! - [`server`]: a real nats-server as a child process (embedded mode and tests).
//! - [`auth`]: nkey identities, their permissions as server config, credentials files.
//! - [`error`]: the [`BusError`] type.
#![forbid(unsafe_code)]

pub mod auth;
pub mod consumer;
pub mod dlq;
pub mod elections;
pub mod envelope;
pub mod error;
pub mod lease;
pub mod partition;
pub mod publisher;
mod pull;
pub mod relay;
pub mod replay;
pub mod server;
pub mod status;
pub mod streams;
pub mod term;

pub use auth::{Credentials, Permissions};
pub use consumer::{ConsumerSpec, Delivery, DurableConsumer, InHand, Verdict};
pub use envelope::{Domain, Envelope};
pub use error::BusError;
pub use partition::Partitions;
pub use publisher::Publisher;
pub use relay::{OutboxRelay, RelayConfig};
pub use server::{NatsCluster, NatsServer};
/// Re-exported from the storage layer, the lowest that has seams.
pub use storage::failpoints;
pub use streams::{provision, StreamSettings};

/// How one identity reaches the broker.
#[derive(Debug, Clone)]
pub struct Login {
    pub url: String,
    /// Names the connection and its inbox (`_INBOX_<name>`).
    pub name: String,
    /// `None`: the broker lets anyone in.
    pub credentials: Option<Credentials>,
    /// Those of the identity this one's replays connect as ([`Login::replayer`]).
    pub replay: Option<Credentials>,
}

impl Login {
    /// Anyone, at `url`.
    pub fn open(url: &str, name: &str) -> Login {
        Login {
            url: url.to_string(),
            name: name.to_string(),
            credentials: None,
            replay: None,
        }
    }

    pub async fn connect(&self) -> Result<async_nats::Client, BusError> {
        connect(&self.url, &self.name, self.credentials.as_ref()).await
    }

    /// [`Login::connect`], but answering at once when the first connection fails (refused
    /// credentials among the reasons) rather than retrying it in the background.
    pub async fn connect_once(&self) -> Result<async_nats::Client, BusError> {
        let options = options(&self.name, self.credentials.as_ref()).await?;
        finish_connect(&self.url, options).await
    }

    /// How this identity's replays reach the broker: as `<name>-replayer`, which may read
    /// streams from their start and answers no requests ([`replay`] says why that matters).
    pub fn replayer(&self) -> Login {
        Login {
            url: self.url.clone(),
            name: replayer_name(&self.name),
            credentials: self.replay.clone(),
            replay: None,
        }
    }
}

/// The name of `name`'s replay identity.
pub fn replayer_name(name: &str) -> String {
    format!("{name}-replayer")
}

/// How often a client pings a server that has sent it nothing. Three unanswered in a row and it
/// moves to another server: a frozen node (SIGSTOP, a partition that drops packets rather than
/// refusing them) holds its clients for 30 s, not the 3 minutes of async-nats' 60 s default.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Connect to NATS as `name` (with `credentials`, if the server wants them), retrying the first
/// connection and reconnecting forever after a drop, so a broker restart is a pause, not a
/// failure. Replies come to `_INBOX_<name>.>`, so permissions can give each identity its own
/// inbox; a refusal by the server (a permission violation) is logged.
pub async fn connect(
    url: &str,
    name: &str,
    credentials: Option<&Credentials>,
) -> Result<async_nats::Client, BusError> {
    let options = options(name, credentials).await?;
    finish_connect(url, options.retry_on_initial_connect()).await
}

/// How every connection of ours is made (see [`connect`]).
async fn options(
    name: &str,
    credentials: Option<&Credentials>,
) -> Result<async_nats::ConnectOptions, BusError> {
    let who = name.to_string();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("commerce-{name}"))
        .custom_inbox_prefix(inbox_prefix(name))
        .connection_timeout(std::time::Duration::from_secs(5))
        .ping_interval(PING_INTERVAL)
        .event_callback(move |event| {
            let who = who.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    tracing::warn!(connection = %who, error = %e, "the broker refused something");
                }
            }
        });
    if let Some(credentials) = credentials {
        options = credentials.apply(options).await?;
    }
    Ok(options)
}

async fn finish_connect(
    url: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, BusError> {
    options
        .connect(server_urls(url).as_slice())
        .await
        .map_err(|source| BusError::Connect {
            url: url.to_string(),
            source,
        })
}

/// The servers in `url`: one, or a cluster's nodes comma-separated (`nats://a:4222,nats://b:4222`);
/// a client connects to any and fails over to the others.
pub fn server_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Where identity `name` gets its replies.
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX_{name}")
}
