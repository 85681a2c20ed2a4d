//! The outbox relay: moves a service's durable outbox rows onto JetStream.
//!
//! Per pass: read up to `batch` durable pending rows, publish them pipelined, mark sent exactly
//! the rows whose PubAck came back. Rows that failed stay pending and are retried with backoff
//! while the broker is down; a re-publish of a row whose ack was lost is dropped by the broker
//! (`Nats-Msg-Id`). Woken by every flush that releases rows, with a timer as a fallback.
//!
//! Healing the broker: a PubAck is not forever (the broker syncs to disk every few minutes by
//! default, and a lost store loses everything). Sent rows keep their message and the stream
//! sequence of their PubAck, and the outbox remembers the highest sequence acked. The relay is
//! the only writer of its stream's events (its service's markers only move the end forward), so
//! a stream whose last sequence is lower than that, or a PubAck that goes back, means the broker
//! lost its tail: every kept row past what survived is published again, in outbox order, under
//! its own `Nats-Msg-Id`. The relay checks at start, after every reconnect (before publishing
//! anything new) and every `verify_interval`.
//!
//! Following the stream's leader: a cluster's new stream leader does not answer what was sent to
//! the old one, and a pass would wait out the PubAck timeout (5 s) for rows the new leader may
//! never have heard of. The relay hears the broker announce each election (`$JS.EVENT.ADVISORY.
//! STREAM.LEADER_ELECTED.<stream>`) and ends a wait for answers that has lasted `LEADER_SETTLE`:
//! the rows answered by then are marked sent, and the rest go again (what the old leader stored
//! comes back a duplicate, by `Nats-Msg-Id`). A wait shorter than that is let be: a forged
//! announcement never cuts a healthy one short.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use storage::{Heal, OutboxMessage, PendingRow, SentMessage, Store, StreamPosition};
use tokio_util::sync::CancellationToken;

use crate::elections::{self, Elections};
use crate::publisher::{unanswered, Stored};
use crate::{BusError, Publisher};

/// How long a wait for the stream's answers lasts before a new leader's announcement ends it.
const LEADER_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per publish batch.
    pub batch: usize,
    /// Look for rows even without a wake-up this often (belt and braces).
    pub poll_interval: Duration,
    /// First and longest wait after a failed pass.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Check that the stream still holds what the broker acknowledged this often (and after
    /// every reconnect).
    pub verify_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 512,
            poll_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            verify_interval: Duration::from_secs(10),
        }
    }
}

/// Where a pass's acks leave the outbox's stream position (`None`: where it was). A new message
/// stored at or below a sequence acked before means the stream went back: what survived ends
/// below the first such, and the heal is recorded with the acks. Duplicates are stored at their
/// first sequence, which says nothing of the stream's end.
///
/// The heal takes every kept row stored past what survived, this pass's own too (the broker
/// drops those as duplicates): rows sent in an earlier pass while one before them failed sit
/// after this pass's first row in the outbox, and were lost as well.
fn moved_to(
    known: Option<StreamPosition>,
    stream: String,
    acked: &[(PendingRow, u64)],
    stored_new: &[u64],
) -> Option<StreamPosition> {
    let highest = acked.iter().map(|(_, seq)| *seq).max().unwrap_or(0);
    match known {
        Some(known) if known.stream == stream => {
            let heal = stored_new
                .iter()
                .filter(|seq| **seq <= known.last_seq)
                .min()
                .map(|reused| Heal {
                    survived: reused - 1,
                    before: u64::MAX,
                });
            (highest > known.last_seq || heal.is_some()).then(|| StreamPosition {
                last_seq: known.last_seq.max(highest),
                heal: heal.or(known.heal),
                stream,
            })
        }
        _ => Some(StreamPosition {
            stream,
            last_seq: highest,
            heal: None,
        }),
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
    /// Rows published again because the broker lost them after acknowledging them (a heal cut
    /// short and done again counts its rows again).
    pub healed: AtomicU64,
    /// Waits for the stream's answers ended by its new leader's election (and asked again).
    pub elections: AtomicU64,
}

pub struct OutboxRelay {
    store: Store,
    publisher: Publisher,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    /// When the stream was last found whole, and the connection count then.
    verified: Mutex<Option<(Instant, u64)>>,
    /// The stream this outbox publishes to, and its leaders' elections.
    elections: tokio::sync::Mutex<Option<(String, Elections)>>,
}

impl OutboxRelay {
    pub fn new(store: Store, publisher: Publisher, config: RelayConfig) -> Self {
        OutboxRelay {
            store,
            publisher,
            config,
            stats: Arc::default(),
            verified: Mutex::new(None),
            elections: tokio::sync::Mutex::new(None),
        }
    }

    /// Follow the elections of `stream`'s leader (the stream this outbox publishes to): a wait
    /// for its answers ends when one is announced.
    pub async fn following_elections(mut self, stream: &str) -> Self {
        let client = self.publisher.context().client();
        let elections = Elections::follow(&client, elections::stream_subject(stream)).await;
        *self.elections.get_mut() = Some((stream.to_string(), elections));
        self
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// One pass: publish up to one batch of durable rows. Returns how many were marked sent;
    /// an error means some rows are still pending (broker trouble; those answered are marked
    /// sent all the same) and the pass should be retried.
    pub async fn relay_once(&self) -> Result<usize, BusError> {
        let passed = self.pass().await;
        if passed.is_err() {
            // Broker trouble: look at the stream again before the next publish.
            self.set_verified(None);
        }
        passed
    }

    async fn pass(&self) -> Result<usize, BusError> {
        self.verify_if_due().await?;
        let rows = self.store.pending(self.config.batch)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let known = self.store.stream_position()?;
        // An instance whose lease lapsed publishes nothing: its successor reacts instead.
        self.store.check_fence()?;
        // Cut short by an election, the answers that came back still count.
        let (outcomes, cut) = self
            .publish_unless_elected(rows.iter().map(|r| &r.message))
            .await;
        let mut acked: Vec<(PendingRow, u64)> = Vec::with_capacity(rows.len());
        let mut stored_new = Vec::new();
        let mut stream = None;
        let mut first_error = None;
        for (row, outcome) in rows.into_iter().zip(outcomes) {
            match outcome {
                // Unanswered when the wait was cut: pending, for the next pass.
                None => {}
                Some(Ok(stored)) => {
                    if stored.duplicate {
                        // Stored before, at its first sequence: says nothing of the stream's end.
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stored_new.push(stored.sequence);
                    }
                    stream.get_or_insert(stored.stream);
                    acked.push((row, stored.sequence));
                }
                Some(Err(e)) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(stream) = stream {
            crate::failpoints::crash("relay.after_puback");
            let moved = moved_to(known, stream, &acked, &stored_new);
            self.store.mark_sent(&acked, moved.as_ref())?;
            self.count_sent(&acked);
            if let Some(StreamPosition {
                stream,
                heal: Some(heal),
                ..
            }) = moved
            {
                tracing::warn!(%stream, reused = heal.survived + 1,
                    "the broker acknowledged a sequence it had given before: it lost messages");
                self.heal(&stream, heal).await?;
            }
        }
        match cut.or(first_error) {
            Some(e) => Err(e),
            None => Ok(acked.len()),
        }
    }

    /// Rows marked sent, in the stats and the metrics (before a heal that may fail).
    fn count_sent(&self, acked: &[(PendingRow, u64)]) {
        self.stats
            .sent
            .fetch_add(acked.len() as u64, Ordering::Relaxed);
        for (row, _) in acked {
            count_published(&row.message.subject);
        }
    }

    /// Before publishing after a start or a reconnect, and every `verify_interval`: is every
    /// message the broker acknowledged still in the stream? Heal it if not (and finish a heal
    /// that a crash or an error cut short).
    async fn verify_if_due(&self) -> Result<(), BusError> {
        let connects = self
            .publisher
            .context()
            .client()
            .statistics()
            .connects
            .load(Ordering::Relaxed);
        let verified = *self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let due = match verified {
            Some((at, seen)) => seen != connects || at.elapsed() >= self.config.verify_interval,
            None => true,
        };
        if !due {
            return Ok(());
        }
        if let Some(known) = self.store.stream_position()? {
            let heal = match known.heal {
                Some(heal) => Some(heal),
                None => {
                    let last = self.stream_end(&known.stream).await?;
                    (last < known.last_seq).then(|| {
                        tracing::warn!(stream = %known.stream, last, acknowledged = known.last_seq,
                            "the stream lost messages it had acknowledged; publishing them again");
                        Heal {
                            survived: last,
                            before: u64::MAX,
                        }
                    })
                }
            };
            if let Some(heal) = heal {
                self.store.set_stream_position(&StreamPosition {
                    heal: Some(heal),
                    ..known.clone()
                })?;
                self.heal(&known.stream, heal).await?;
            }
        }
        self.set_verified(Some((Instant::now(), connects)));
        Ok(())
    }

    fn set_verified(&self, verified: Option<(Instant, u64)>) {
        *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = verified;
    }

    /// Publish again, in outbox order, every kept row `heal` names; then the position is the
    /// stream's end and the heal is done. Cut short, it is redone from the same survivor (what
    /// it had published again the broker drops as duplicates).
    async fn heal(&self, stream: &str, heal: Heal) -> Result<(), BusError> {
        let lost: Vec<SentMessage> = self.store.sent_after(heal.survived, heal.before)?;
        for chunk in lost.chunks(self.config.batch.max(1)) {
            let mut resent = Vec::with_capacity(chunk.len());
            let mut failed = None;
            self.store.check_fence()?;
            let (outcomes, cut) = self
                .publish_unless_elected(chunk.iter().map(|r| &r.message))
                .await;
            for (row, outcome) in chunk.iter().zip(outcomes) {
                match outcome {
                    None => {}
                    Some(Ok(stored)) => resent.push((row.seq, stored.sequence)),
                    Some(Err(e)) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            let failed = cut.or(failed);
            self.store.mark_resent(&resent)?;
            self.stats
                .healed
                .fetch_add(resent.len() as u64, Ordering::Relaxed);
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let last_seq = self.stream_end(stream).await?;
        self.store.set_stream_position(&StreamPosition {
            stream: stream.to_string(),
            last_seq,
            heal: None,
        })?;
        if !lost.is_empty() {
            tracing::warn!(%stream, healed = lost.len(), "published again what the broker lost");
        }
        Ok(())
    }

    /// The stream's last sequence now.
    async fn stream_end(&self, stream: &str) -> Result<u64, BusError> {
        let what = || format!("outbox stream {stream}");
        let info = self.publisher.context().get_stream(stream);
        let stream = self
            .unless_elected(info.map(|got| got.map_err(|e| BusError::jetstream(what())(e))))
            .await?;
        Ok(crate::streams::leader_state(stream.cached_info())?.last_sequence)
    }

    /// Publish `messages` unless a new leader's election ends the wait for their answers: each
    /// one's outcome (`None`: unanswered when the wait ended), and the election's error if it did.
    async fn publish_unless_elected<'a>(
        &self,
        messages: impl Iterator<Item = &'a OutboxMessage>,
    ) -> (Vec<Option<Result<Stored, BusError>>>, Option<BusError>) {
        let messages: Vec<&OutboxMessage> = messages.collect();
        let mut outcomes = unanswered(messages.len());
        let publish = self.publisher.publish_into(&messages, &mut outcomes);
        let cut = self.unless_elected(publish.map(Ok)).await.err();
        (outcomes, cut)
    }

    /// `work` (waiting for the stream's answers), unless a new leader of the stream is announced
    /// and the wait has lasted `LEADER_SETTLE`: then what the old leader was asked may never be
    /// answered, and the caller asks again. Announcements from before it began are old news.
    async fn unless_elected<T>(
        &self,
        work: impl Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        // Held across the wait; a wait inside another (none today) goes unfollowed.
        let Ok(mut followed) = self.elections.try_lock() else {
            return work.await;
        };
        let Some((stream, elections)) = followed.as_mut() else {
            return work.await;
        };
        let settled = tokio::time::Instant::now() + LEADER_SETTLE;
        elections.announced();
        let elected = async {
            elections.next().await;
            tokio::time::sleep_until(settled).await;
        };
        tokio::select! {
            biased;
            done = work => done,
            () = elected => {
                self.stats.elections.fetch_add(1, Ordering::Relaxed);
                Err(BusError::LeaderElected { stream: stream.clone() })
            }
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

/// `commerce_events_published_total{stream, event}`, from the subject
/// (`<stream prefix>.<event name>.<order id>`).
fn count_published(subject: &str) {
    let mut tokens = subject.split('.');
    if let (Some(prefix), Some(event)) = (tokens.next(), tokens.next()) {
        metrics::counter!("commerce_events_published_total",
            "stream" => prefix.to_string(), "event" => event.to_string())
        .increment(1);
    }
}
