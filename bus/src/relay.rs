//! The outbox relay: moves a service's durable outbox rows onto JetStream.
//!
//! Per pass: read up to `batch` durable pending rows, publish them pipelined, mark sent exactly
//! the rows whose PubAck came back. Rows that failed stay pending and are retried with backoff
//! while the broker is down; a re-publish of a row whose ack was lost is dropped by the broker
//! (`Nats-Msg-Id`). Woken by every flush that releases rows, with a timer as a fallback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storage::Store;
use tokio_util::sync::CancellationToken;

use crate::{BusError, Publisher};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per publish batch.
    pub batch: usize,
    /// Look for rows even without a wake-up this often (belt and braces).
    pub poll_interval: Duration,
    /// First and longest wait after a failed pass.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 512,
            poll_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Counters a person (or `commerce status`) can read.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Rows acknowledged by the broker and marked sent.
    pub sent: AtomicU64,
    /// Of those, how many the broker had already (duplicates dropped by `Nats-Msg-Id`).
    pub duplicates: AtomicU64,
    /// Publish attempts that failed (and will be retried).
    pub failures: AtomicU64,
}

pub struct OutboxRelay {
    store: Store,
    publisher: Publisher,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

impl OutboxRelay {
    pub fn new(store: Store, publisher: Publisher, config: RelayConfig) -> Self {
        OutboxRelay {
            store,
            publisher,
            config,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// One pass: publish up to one batch of durable rows. Returns how many were marked sent;
    /// an error means some rows are still pending (broker trouble) and the pass should be retried.
    pub async fn relay_once(&self) -> Result<usize, BusError> {
        let rows = self.store.pending(self.config.batch)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<_> = rows.iter().map(|r| r.message.clone()).collect();
        let outcomes = self.publisher.publish_all(&messages).await;
        let mut acked = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, outcome) in rows.into_iter().zip(outcomes) {
            match outcome {
                Ok(stored) => {
                    if stored.duplicate {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    acked.push(row);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        self.store.mark_sent(&acked)?;
        self.stats
            .sent
            .fetch_add(acked.len() as u64, Ordering::Relaxed);
        match first_error {
            Some(e) => Err(e),
            None => Ok(acked.len()),
        }
    }

    /// Relay until `shutdown`. Never gives up: while the broker is down rows wait, durable.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut released = self.store.outbox_released();
        let mut backoff = self.config.backoff_min;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.relay_once().await {
                // A full batch: there may be more right now.
                Ok(n) if n >= self.config.batch => continue,
                Ok(_) => {
                    backoff = self.config.backoff_min;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = released.changed() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(store = %self.store.path().display(), error = %e, ?backoff,
                        "outbox relay: rows stay pending, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }
}
