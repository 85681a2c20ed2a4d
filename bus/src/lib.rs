//! The bus: every event between services travels here, on NATS JetStream.
//!
//! # Layout
//! - [`envelope`]: the CloudEvents 1.0 envelope, subjects `<domain>.<event_name>.<order_id>`, headers.
//! - [`streams`]: one stream per owning service plus `DLQ` and `OPS`, provisioned idempotently.
//! - [`publisher`]: pipelined publishing (send a batch, then await its PubAcks).
//! - [`consumer`]: durable pull consumers: explicit ack only with a flush proof, nak with backoff,
//!   poison and exhausted messages to `DLQ` with the reason.
//! - [`relay`]: the outbox relay: publishes durable outbox rows and marks them sent after PubAck.
//! - [`status`]: streams and consumer lag, for `commerce status`.
//! - [`server`]: a real nats-server as a child process (embedded mode and tests).
//! - [`error`]: the [`BusError`] type.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod envelope;
pub mod error;
pub mod publisher;
pub mod relay;
pub mod server;
pub mod status;
pub mod streams;

pub use consumer::{ConsumerSpec, Delivery, DurableConsumer, Verdict};
pub use envelope::{Domain, Envelope};
pub use error::BusError;
pub use publisher::Publisher;
pub use relay::{OutboxRelay, RelayConfig};
pub use server::NatsServer;
pub use streams::{provision, StreamSettings};

/// Connect to NATS, retrying the first connection and reconnecting forever after a drop, so a
/// broker restart is a pause, not a failure.
pub async fn connect(url: &str) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .name("commerce")
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| BusError::Connect {
            url: url.to_string(),
            source,
        })
}
