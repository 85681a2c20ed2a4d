//! Durable pull consumers, one per (listening service, stream), named after the listening service.
//!
//! The loop every consumer runs:
//! ```text
//! let batch = consumer.next_batch(wait).await?;  // undecodable / exhausted ones already in DLQ
//! let commits = batch.iter().map(decide);          // one storage::Commit per delivery
//! let outcomes = store.commit_all(&commits)?;      // ONE sled transaction for the batch
//! let flushed = store.flush().await?;              // ONE fsync for the batch (group commit)
//! consumer.settle(verdicts, flushed).await;        // only now: ack / nak with backoff / DLQ
//! ```
//! `settle` cannot be called without the [`Flushed`] proof, so acking before durability does not
//! compile. A crash anywhere before `settle` means redelivery, and the inbox makes it a no-op.
//!
//! Work may outlive AckWait (a batch whose external calls are slow): [`DurableConsumer::working`]
//! tells the broker every third of AckWait that each message it has handed out, in the batch or
//! waiting behind it, is in progress (`+WPI`). So a live handler never races its own redelivery;
//! only a dead one is redelivered. The server delivers at most `max_ack_pending` unacked
//! messages, and every one that arrives meanwhile is taken in hand, so none expires unseen.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::HeaderMap;
use futures::FutureExt;
use storage::Flushed;

use crate::elections::{self, Elections};
use crate::publisher::Publisher;
use crate::pull::{Interrupted, Pulls};
use crate::{BusError, Envelope};

pub const DLQ_REASON: &str = "Commerce-Dlq-Reason";
pub const DLQ_STREAM: &str = "Commerce-Dlq-Stream";
pub const DLQ_SUBJECT: &str = "Commerce-Dlq-Subject";
pub const DLQ_SEQUENCE: &str = "Commerce-Dlq-Sequence";
pub const DLQ_CONSUMER: &str = "Commerce-Dlq-Consumer";
pub const DLQ_DELIVERED: &str = "Commerce-Dlq-Delivered";
pub const DLQ_ORIGINAL_MSG_ID: &str = "Commerce-Dlq-Original-Msg-Id";

/// How a durable consumer is set up.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    /// The durable consumer's name: the listening service's, or one of its partition's.
    pub durable: String,
    /// The listening service: its dead letters are filed under it (`dlq.<owner>.…`), whichever
    /// partition's consumer sent them.
    pub owner: String,
    /// Subjects of the stream to receive; empty means all.
    pub filter_subjects: Vec<String>,
    /// Unacknowledged messages are redelivered after this long.
    pub ack_wait: Duration,
    /// After this many failed deliveries a message goes to DLQ.
    pub max_deliver: i64,
    /// Delay before the n-th redelivery of a failed message (the last entry repeats).
    pub backoff: Vec<Duration>,
    /// Most messages handed out per batch (and so per flush).
    pub batch: usize,
}

/// Messages the server may have delivered and not seen settled, in batches: the one in hand,
/// those taken in hand behind it (`working` keeps them alive), and those waiting out a nak's
/// backoff (a dependency that is down), which count too.
const IN_FLIGHT_BATCHES: usize = 20;

/// How long after a lost pull to pull again: no flood of pulls while a leader is elected.
const REPULL_PAUSE: Duration = Duration::from_millis(500);
/// How long after this consumer's leader is elected to ask it whether it holds a pull. A new
/// leader that knew the pull ends it (409 Leadership Change) and the client pulls again at once;
/// one that did not (elected as a thawed node rejoins, before it learnt of it) leaves it waiting
/// for heartbeats that never come: two missed, 10 s.
const LEADER_SETTLE: Duration = Duration::from_secs(1);
/// How long the elected leader has to answer that question; heartbeats cover what it does not.
const LEADER_ASKED: Duration = Duration::from_secs(2);
/// How long `realign`'s questions may hold up reading at first: while a leader is elected they
/// go unanswered, and async-nats waits 10 s for an answer (a consumer stood still 10 s after a
/// thaw). Each check that fails in a row doubles it, up to that 10 s: a broker that is only
/// slow is still checked.
const REALIGN_ASK: Duration = Duration::from_secs(2);
/// The most `realign`'s questions are given after failures in a row: async-nats' own wait.
const REALIGN_ASK_MOST: Duration = Duration::from_secs(10);
/// Checks failed in a row before it is worth a warning.
const REALIGN_FAILURES_WARNED: u32 = 5;
/// How soon a failed `realign` is tried again; reading goes on meanwhile.
const REALIGN_RETRY: Duration = Duration::from_secs(1);

impl ConsumerSpec {
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        let durable = durable.into();
        ConsumerSpec {
            stream: stream.into(),
            owner: durable.clone(),
            durable,
            filter_subjects: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(10),
                Duration::from_secs(30),
            ],
            batch: 256,
        }
    }

    fn backoff_for(&self, delivered: i64) -> Duration {
        let i = usize::try_from(delivered.saturating_sub(1)).unwrap_or(0);
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// One decoded message, with what the broker says about its delivery.
pub struct Delivery {
    pub envelope: Envelope,
    /// Position in the stream.
    pub stream_sequence: u64,
    /// 1 on first delivery.
    pub delivered: i64,
    message: Message,
}

impl Delivery {
    /// Acknowledge without a proof that the effect is durable: only the deliberate bug
    /// `broken.ack_before_flush` does this ([`crate::failpoints`], test builds). Waits for the
    /// broker to confirm, so a crash right after cannot save the message by losing the ack.
    #[cfg(feature = "failpoints")]
    pub async fn ack_unproven(&self) {
        if let Err(e) = self.message.double_ack().await {
            tracing::debug!(error = %e, "unproven ack failed");
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject.as_str())
            .field("stream_sequence", &self.stream_sequence)
            .field("delivered", &self.delivered)
            .finish()
    }
}

/// A message as the stream held it when it was handed out.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    msg_id: Option<String>,
    stored: async_nats::datetime::DateTime,
}

/// The messages of a batch being handled (see [`DurableConsumer::working`]).
pub struct InHand(Vec<Message>);

impl InHand {
    pub fn of(batch: &[Delivery]) -> InHand {
        InHand(batch.iter().map(|d| d.message.clone()).collect())
    }
}

/// What the handler decided about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied (or already applied): acknowledge.
    Done,
    /// Failed for now (a dependency is down): redeliver after backoff; DLQ once exhausted.
    Retry(String),
    /// Can never be applied: DLQ with this reason, now.
    Reject(String),
}

/// A bound durable consumer.
pub struct DurableConsumer {
    spec: ConsumerSpec,
    js: jetstream::Context,
    /// When the consumer's position was last checked against its stream.
    checked_at: Option<Instant>,
    /// The client's connection count at that check: a reconnect since calls for a check at once.
    checked_connects: Option<u64>,
    /// A check that failed is tried again no sooner than this: reading goes on meanwhile.
    realign_after: Option<Instant>,
    /// Checks failed in a row.
    realign_failures: u32,
    /// Where a consumer `realign` deleted is to be created again from.
    recreate_from: Option<DeliverPolicy>,
    /// The newest message handed out (before any reconnect not checked yet): if the stream no
    /// longer holds it at its sequence, the stream lost its tail, even once new messages have
    /// filled it past this consumer again.
    newest: Option<Seen>,
    consumer: PullConsumer,
    pulls: Pulls,
    /// Since when no server answers this consumer's pull: its leader died with the pull, or
    /// none is elected yet. Left alone, the pull would be written off only once it expired.
    stalled_since: Option<Instant>,
    /// The broker's announcements of a new leader for this consumer (a cluster's).
    elections: Elections,
    /// When one was last announced, until it is asked whether it holds this consumer's pull.
    elected_at: Option<Instant>,
    /// When a message last arrived: a pull that delivers is not lost.
    received_at: Option<Instant>,
    /// New leaders asked whether they hold a pull, and pulls they did not hold, sent again.
    leaders_asked: u64,
    lost_pulls: u64,
    /// Delivered while a batch was being handled; handed out first by the next `next_batch`.
    waiting: VecDeque<Message>,
    /// The pulls ended (the consumer was deleted) while a batch was being handled.
    ended: bool,
    dlq: Publisher,
}

impl DurableConsumer {
    /// Create (or update to `spec`) the durable consumer and start pulling from it. A new one
    /// starts at the beginning of the stream; an existing one keeps where it started (the server
    /// refuses to change that, e.g. after [`DurableConsumer::realign`]).
    pub async fn bind(js: &jetstream::Context, spec: ConsumerSpec) -> Result<Self, BusError> {
        Self::bind_from(js, spec, DeliverPolicy::All).await
    }

    /// [`DurableConsumer::bind`], a consumer that does not exist yet starting at `if_new`.
    async fn bind_from(
        js: &jetstream::Context,
        spec: ConsumerSpec,
        if_new: DeliverPolicy,
    ) -> Result<Self, BusError> {
        let what = || format!("consumer {} on {}", spec.durable, spec.stream);
        let stream = js
            .get_stream(&spec.stream)
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        let deliver_policy = match stream.consumer_info(&spec.durable).await {
            Ok(existing) => existing.config.deliver_policy,
            Err(e) if consumer_not_found(&e) => if_new,
            Err(e) => return Err(BusError::jetstream(what())(e)),
        };
        let (filter_subject, filter_subjects) = match spec.filter_subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let config = pull::Config {
            durable_name: Some(spec.durable.clone()),
            description: Some(format!("{} reading {}", spec.durable, spec.stream)),
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            // Unlimited on the server; `spec.max_deliver` is enforced here. A server-side limit
            // would strand a message whose last delivery could not reach the DLQ.
            max_deliver: -1,
            // Bounds what `working` keeps alive, with room for messages in backoff.
            max_ack_pending: i64::try_from(spec.batch * IN_FLIGHT_BATCHES).unwrap_or(i64::MAX),
            filter_subject,
            filter_subjects,
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        // Followed before the pull is made, so no election after it goes unheard. Without them
        // a lost pull is still found by its heartbeats.
        let subject = elections::consumer_subject(&spec.stream, &spec.durable);
        let elections = Elections::follow(&js.client(), subject).await;
        let pulls = Pulls::start(js, &spec.stream, &spec.durable, spec.batch).await?;
        Ok(DurableConsumer {
            spec,
            js: js.clone(),
            checked_at: None,
            checked_connects: None,
            realign_after: None,
            realign_failures: 0,
            recreate_from: None,
            newest: None,
            consumer,
            pulls,
            stalled_since: None,
            elections,
            elected_at: None,
            received_at: None,
            leaders_asked: 0,
            lost_pulls: 0,
            waiting: VecDeque::new(),
            ended: false,
            dlq: Publisher::new(js.clone()),
        })
    }

    /// Bind again after the pulls ended (a consumer deleted, say), keeping the newest
    /// message handed out: if the broker lost that stream's tail meanwhile, the next
    /// [`DurableConsumer::realign`] still notices, even once the relays have published past it.
    pub async fn rebind(&mut self) -> Result<(), BusError> {
        let if_new = self.recreate_from.unwrap_or(DeliverPolicy::All);
        let mut bound = Self::bind_from(&self.js, self.spec.clone(), if_new).await?;
        bound.newest = self.newest.take();
        bound.recreate_from = self.recreate_from;
        // Checked again at once, still knowing whether the connection changed since.
        bound.checked_connects = self.checked_connects;
        *self = bound;
        Ok(())
    }

    pub fn spec(&self) -> &ConsumerSpec {
        &self.spec
    }

    /// Wait for at least one message (up to `wait`), then take whatever else is already here, up
    /// to the batch size. Messages that are not events, or were delivered more than `max_deliver`
    /// times, are moved to DLQ here and never handed out. An empty batch means `wait` passed.
    pub async fn next_batch(&mut self, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let pull_lost = self.pull_lost_to_new_leader().await;
        if pull_lost
            || self
                .stalled_since
                .is_some_and(|since| since.elapsed() >= REPULL_PAUSE)
        {
            self.repull();
        }
        // Back in time to ask a newly elected leader.
        let wait = match self.elected_at {
            Some(at) => wait.min((at + LEADER_SETTLE).saturating_duration_since(Instant::now())),
            None => wait,
        };
        let waited = self.waiting.len().min(self.spec.batch);
        let mut raw: Vec<Message> = self.waiting.drain(..waited).collect();
        if raw.is_empty() {
            if self.ended {
                return Err(self.ended());
            }
            match tokio::time::timeout(wait, self.pulls.next()).await {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(None) => return Err(self.ended()),
                Ok(Some(item)) => raw.extend(self.received(item)),
            }
        }
        while raw.len() < self.spec.batch && !self.ended {
            match self.pulls.next().now_or_never() {
                Some(Some(item)) => raw.extend(self.received(item)),
                Some(None) => self.ended = true,
                None => break,
            }
        }
        // Not past a reconnect that `realign` has not checked yet: a broker that came back
        // without the tail goes on after the consumer's old position, where the relays' new
        // messages may sit; the newest from before is what shows the tail was lost.
        let connects = self.js.client().statistics().connects.load(Relaxed);
        if self
            .checked_connects
            .is_none_or(|checked| checked == connects)
        {
            if let Some(seen) = raw.iter().filter_map(seen).max_by_key(|s| s.seq) {
                if self.newest.as_ref().is_none_or(|n| seen.seq >= n.seq) {
                    self.newest = Some(seen);
                }
            }
        }
        let mut batch = Vec::with_capacity(raw.len());
        for message in latest_deliveries(raw) {
            if let Some(delivery) = self.admit(message).await {
                batch.push(delivery);
            }
        }
        Ok(batch)
    }

    /// After a reconnect, and every `every`: does the durable consumer still exist, and does it
    /// still point inside its stream? A broker that lost its store lost the consumer too; one
    /// that lost a stream's tail leaves the consumer past the end, where it would skip what the
    /// outbox relays publish there again. Either way it is created again: from its ack floor,
    /// or from the stream's end if that is lower (what it sees twice, the inbox absorbs).
    /// Returns whether it was.
    ///
    /// After a reconnect it is also created again when the broker counts messages delivered
    /// past the newest this consumer received: those may have been lost with a tail (the
    /// broker forgets they were unacknowledged) and their sequences refilled before this check,
    /// where the broker would never deliver what now sits there.
    pub async fn realign(&mut self, every: Duration) -> Result<bool, BusError> {
        let connects = self.js.client().statistics().connects.load(Relaxed);
        let reconnected = self.checked_connects.is_some_and(|seen| seen != connects);
        let due = reconnected || self.checked_at.is_none_or(|at| at.elapsed() >= every);
        if !due
            || self
                .realign_after
                .is_some_and(|after| Instant::now() < after)
        {
            return Ok(false);
        }
        let ask = REALIGN_ASK
            .saturating_mul(1 << self.realign_failures.min(4))
            .min(REALIGN_ASK_MOST);
        let realigned = self.realign_now(reconnected, ask).await;
        match &realigned {
            Ok(_) => {
                self.checked_at = Some(Instant::now());
                self.checked_connects = Some(connects);
                self.realign_failures = 0;
            }
            Err(e) => {
                self.realign_after = Some(Instant::now() + REALIGN_RETRY);
                self.realign_failures += 1;
                if self.realign_failures == REALIGN_FAILURES_WARNED {
                    tracing::warn!(consumer = %self.spec.durable, stream = %self.spec.stream,
                        failures = self.realign_failures, error = %e,
                        "the consumer's position goes unchecked; still trying");
                }
            }
        }
        realigned
    }

    async fn realign_now(&mut self, reconnected: bool, ask: Duration) -> Result<bool, BusError> {
        let what = || format!("consumer {} on {}", self.spec.durable, self.spec.stream);
        let found = tokio::time::timeout(ask, self.look(reconnected))
            .await
            .unwrap_or_else(|_elapsed| Err(BusError::jetstream(what())("no answer in time")))?;
        let start = match found {
            Found::InPlace => None,
            Found::Gone => {
                tracing::warn!(consumer = %self.spec.durable, stream = %self.spec.stream,
                    "the durable consumer is gone (broker store lost?); creating it again");
                Some(self.recreate_from.unwrap_or(DeliverPolicy::All))
            }
            Found::Misplaced {
                stream,
                info,
                why,
                last,
            } => Some(self.start_over(&stream, &info, why, last).await?),
        };
        if let Some(policy) = start {
            *self = Self::bind_from(&self.js.clone(), self.spec.clone(), policy).await?;
        }
        Ok(start.is_some())
    }

    /// Where the consumer stands in its stream (questions only, changing nothing).
    async fn look(&self, reconnected: bool) -> Result<Found, BusError> {
        let what = || format!("consumer {} on {}", self.spec.durable, self.spec.stream);
        let mut stream = self
            .js
            .get_stream(&self.spec.stream)
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        // The consumer first, then the stream's end: messages delivered in between are then
        // inside the end read, never past it.
        let consumer = stream.consumer_info(&self.spec.durable).await;
        let info = stream
            .info()
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        let last = crate::streams::leader_state(info)?.last_sequence;
        match consumer {
            Ok(info) => Ok(
                match self.misplaced(&stream, &info, last, reconnected).await? {
                    Some(why) => Found::Misplaced {
                        stream: Box::new(stream),
                        info: Box::new(info),
                        why,
                        last,
                    },
                    None => Found::InPlace,
                },
            ),
            Err(e) if consumer_not_found(&e) => Ok(Found::Gone),
            Err(e) => Err(BusError::jetstream(what())(e)),
        }
    }

    /// The stream sequence of the newest message received (0: none since the last check).
    fn newest_seq(&self) -> u64 {
        self.newest.as_ref().map_or(0, |n| n.seq)
    }

    /// Why the consumer the broker holds must be created again, if it must.
    async fn misplaced(
        &self,
        stream: &jetstream::stream::Stream,
        info: &jetstream::consumer::Info,
        last: u64,
        reconnected: bool,
    ) -> Result<Option<Misplaced>, BusError> {
        let delivered = info.delivered.stream_sequence;
        let received = self.newest_seq();
        let unseen = reconnected && delivered > received;
        // Unseen messages are reason enough to recreate: a failed look (a leader still being
        // elected) then changes nothing.
        let newest_lost = match self.newest_lost(stream).await {
            Ok(lost) => lost,
            Err(_) if unseen => false,
            Err(e) => return Err(e),
        };
        Ok(if delivered > last || newest_lost {
            Some(Misplaced::Lost)
        } else if unseen {
            Some(Misplaced::Unseen)
        } else {
            None
        })
    }

    /// Delete the consumer, to be created again from its ack floor or from just after what
    /// survived, whichever is lower: where it starts.
    async fn start_over(
        &mut self,
        stream: &jetstream::stream::Stream,
        info: &jetstream::consumer::Info,
        why: Misplaced,
        last: u64,
    ) -> Result<DeliverPolicy, BusError> {
        let survived = match &self.newest {
            Some(newest) => survived(stream, newest, last).await?,
            None => last,
        };
        let start = (info.ack_floor.stream_sequence + 1).min(survived + 1);
        let (consumer, stream_name) = (&self.spec.durable, &self.spec.stream);
        let delivered = info.delivered.stream_sequence;
        let received = self.newest_seq();
        match why {
            Misplaced::Lost => tracing::warn!(%consumer, stream = %stream_name, delivered, last,
                survived, start, received,
                "the stream no longer holds messages this consumer was given; recreating it"),
            Misplaced::Unseen => tracing::info!(%consumer, stream = %stream_name, delivered,
                last, survived, start, received,
                "messages went out while the connection was down, where a stream that lost \
                 its tail may have refilled them; recreating the consumer"),
        }
        self.newest = None;
        let policy = DeliverPolicy::ByStartSequence {
            start_sequence: start,
        };
        // If creating it again fails, the next check creates it from here, not from the start
        // of the stream.
        self.recreate_from = Some(policy);
        stream
            .delete_consumer(&self.spec.durable)
            .await
            .map_err(|e| BusError::jetstream(format!("consumer {consumer} on {stream_name}"))(e))?;
        Ok(policy)
    }

    /// Does the stream still hold the newest message handed out, at its sequence?
    async fn newest_lost(&self, stream: &jetstream::stream::Stream) -> Result<bool, BusError> {
        let Some(newest) = &self.newest else {
            return Ok(false);
        };
        Ok(match stream.get_raw_message(newest.seq).await {
            Ok(held) => match &newest.msg_id {
                Some(id) => msg_id(&held.headers).as_ref() != Some(id),
                None => held.time != newest.stored,
            },
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                true
            }
            Err(e) => {
                return Err(BusError::jetstream(format!("stream {}", self.spec.stream))(
                    e,
                ))
            }
        })
    }

    /// Run `work` (the handling of `batch`) while telling the broker, every third of AckWait, that
    /// the batch and every message delivered behind it are in progress; messages arriving
    /// meanwhile wait for the next batch. Returns `work`'s output.
    pub async fn working<F: Future>(&mut self, batch: InHand, work: F) -> F::Output {
        let every = (self.spec.ack_wait / 3).max(Duration::from_millis(100));
        let handled = batch.0;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = tick.tick() => {
                    for message in handled.iter().chain(self.waiting.iter()) {
                        if let Err(e) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(consumer = %self.spec.durable, error = %e,
                                "in-progress ack not sent");
                        }
                    }
                }
                item = self.pulls.next(), if !self.ended => match item {
                    Some(item) => {
                        let received = self.received(item);
                        self.waiting.extend(received);
                    }
                    None => self.ended = true,
                },
            }
        }
    }

    /// Settle a batch whose effects are durable: ack the done, nak the failed with backoff, move
    /// the rejected and the exhausted to DLQ. Errors are logged, not returned: an ack that does not
    /// reach the broker only causes a redelivery, which the inbox absorbs.
    pub async fn settle(&self, verdicts: Vec<(Verdict, Delivery)>, _durable: Flushed) {
        for (verdict, delivery) in verdicts {
            let result = match verdict {
                Verdict::Done => delivery.message.ack().await.map_err(|e| e.to_string()),
                Verdict::Retry(reason) if delivery.delivered >= self.spec.max_deliver => {
                    let reason = format!(
                        "exhausted after {} deliveries: {reason}",
                        delivery.delivered
                    );
                    self.dead_letter_or_retry(&delivery.message, delivery.delivered, &reason)
                        .await
                }
                Verdict::Retry(reason) => {
                    tracing::debug!(seq = delivery.stream_sequence, %reason, "redelivering later");
                    self.retry_later(&delivery.message, delivery.delivered)
                        .await
                }
                Verdict::Reject(reason) => {
                    self.dead_letter_or_retry(&delivery.message, delivery.delivered, &reason)
                        .await
                }
            };
            self.log_unsettled(delivery.stream_sequence, result);
        }
    }

    /// Decode a message; send it to DLQ instead if it is not an event, is not on its own subject,
    /// or is exhausted.
    async fn admit(&self, message: Message) -> Option<Delivery> {
        let (stream_sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                // Not a JetStream delivery at all; nothing to ack. Skip it.
                tracing::warn!(error = %e, "message without JetStream metadata skipped");
                return None;
            }
        };
        if delivered > self.spec.max_deliver {
            let reason = format!(
                "exhausted: delivered {delivered} times without being settled (handler crash?)"
            );
            self.log_unsettled(
                stream_sequence,
                self.dead_letter_or_retry(&message, delivered, &reason)
                    .await,
            );
            return None;
        }
        let admitted = Envelope::from_slice(&message.payload).and_then(|envelope| {
            envelope.check_arrived_on(message.subject.as_str())?;
            Ok(envelope)
        });
        match admitted {
            Ok(envelope) => Some(Delivery {
                envelope,
                stream_sequence,
                delivered,
                message,
            }),
            Err(e) => {
                let outcome = self
                    .dead_letter_or_retry(&message, delivered, &e.to_string())
                    .await;
                self.log_unsettled(stream_sequence, outcome);
                None
            }
        }
    }

    /// Dead-letter the message; if the DLQ cannot take it now, have it redelivered later so the
    /// attempt is repeated. Either way nothing is lost and the rest of the batch goes on.
    async fn dead_letter_or_retry(
        &self,
        message: &Message,
        delivered: i64,
        reason: &str,
    ) -> Result<(), String> {
        match self.dead_letter(message, delivered, reason).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(consumer = %self.spec.durable, error = %e, "DLQ publish failed; retrying later");
                self.retry_later(message, delivered).await
            }
        }
    }

    /// Nak with the backoff delay for this delivery.
    async fn retry_later(&self, message: &Message, delivered: i64) -> Result<(), String> {
        let delay = self.spec.backoff_for(delivered);
        message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| e.to_string())
    }

    fn log_unsettled(&self, seq: u64, outcome: Result<(), String>) {
        if let Err(e) = outcome {
            tracing::warn!(consumer = %self.spec.durable, seq, error = %e,
                "could not settle message; it will be redelivered after AckWait");
        }
    }

    /// Copy the payload, untouched, to `dlq.<consumer>.<original subject>` with the reason in
    /// headers; once the DLQ has it (PubAck), terminate it here. The original's headers travel
    /// along, except `Nats-*` ones (they would steer the DLQ publish itself: expected-stream,
    /// rollup, TTL); its `Nats-Msg-Id` is kept as `Commerce-Dlq-Original-Msg-Id`.
    async fn dead_letter(
        &self,
        message: &Message,
        delivered: i64,
        reason: &str,
    ) -> Result<(), BusError> {
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let mut headers = HeaderMap::new();
        if let Some(original) = &message.headers {
            for (name, values) in original.iter() {
                let name: &str = name.as_ref();
                if name.to_ascii_lowercase().starts_with("nats-") {
                    continue;
                }
                for value in values {
                    headers.append(name, value.as_str());
                }
            }
            if let Some(id) = original.get(async_nats::header::NATS_MESSAGE_ID) {
                headers.insert(DLQ_ORIGINAL_MSG_ID, id.as_str());
            }
        }
        // One DLQ entry per (stream, sequence, consumer), however often this is retried.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-{}-{}-{}", self.spec.stream, seq, self.spec.owner).as_str(),
        );
        headers.insert(DLQ_REASON, one_line(reason).as_str());
        headers.insert(DLQ_STREAM, self.spec.stream.as_str());
        headers.insert(DLQ_SUBJECT, message.subject.as_str());
        headers.insert(DLQ_SEQUENCE, seq.to_string().as_str());
        headers.insert(DLQ_CONSUMER, self.spec.owner.as_str());
        headers.insert(DLQ_DELIVERED, delivered.to_string().as_str());
        let subject = format!("dlq.{}.{}", self.spec.owner, message.subject);
        self.dlq
            .publish_raw(subject, headers, message.payload.clone())
            .await?;
        tracing::warn!(consumer = %self.spec.durable, stream = %self.spec.stream, seq, reason,
            "message moved to DLQ");
        message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| BusError::jetstream("terminate after DLQ")(e))
    }

    /// Whether this consumer's leader changed and the new one holds no pull of it although
    /// nothing arrived since: the pull went with the old leader. Asked once per election, a
    /// settling time after it (a leader that knew the pull ends it, and the client pulls again).
    async fn pull_lost_to_new_leader(&mut self) -> bool {
        if self.elections.announced() {
            self.elected_at = Some(Instant::now());
        }
        let Some(at) = self.elected_at else {
            return false;
        };
        if at.elapsed() < LEADER_SETTLE {
            return false;
        }
        // What came meanwhile first: a 409 not handled yet ends the pull, which is then sent
        // again before the question, so the answer counts it.
        self.take_in_arrived();
        if let Err(e) = self.pulls.pull_if_due().await {
            tracing::debug!(consumer = %self.spec.durable, error = %e, "pull not sent");
        }
        if self.received_at.is_some_and(|received| received > at) {
            self.elected_at = None;
            return false;
        }
        self.elected_at = None;
        self.leaders_asked += 1;
        let waiting = match tokio::time::timeout(LEADER_ASKED, self.consumer.info()).await {
            Ok(Ok(info)) => info.num_waiting,
            Ok(Err(e)) => {
                tracing::debug!(consumer = %self.spec.durable, error = %e, "new leader not asked");
                return false;
            }
            Err(_elapsed) => return false,
        };
        if waiting > 0 {
            return false;
        }
        self.lost_pulls += 1;
        tracing::info!(consumer = %self.spec.durable, stream = %self.spec.stream,
            "the new consumer leader holds no pull: pulling again");
        true
    }

    /// Pull again after a stall, on the same inbox: what the old pull still delivers arrives
    /// too. Should the pull fail, the next call tries again.
    fn repull(&mut self) {
        self.take_in_arrived();
        tracing::debug!(consumer = %self.spec.durable, stream = %self.spec.stream,
            "pulling again");
        self.pulls.pull_again();
        self.stalled_since = None;
    }

    /// Keep what already arrived on the pull for the next batch, without waiting.
    fn take_in_arrived(&mut self) {
        while let Some(item) = self.pulls.arrived() {
            let received = self.received(item);
            self.waiting.extend(received);
        }
    }

    /// A pulled message, or `None` for a pull error. After a reconnect (a broker restart, say)
    /// the pulls go again by themselves. A pull that lost its server without a reconnect
    /// (a cluster's consumer leader died; this client is on another node) shows as missed
    /// heartbeats, or as no responders while a new leader is elected: the next `next_batch`
    /// pulls again, not 35 s later when the pull would have expired.
    fn received(&mut self, item: Result<Message, Interrupted>) -> Option<Message> {
        let e = match item {
            Ok(message) => {
                self.received_at = Some(Instant::now());
                return Some(message);
            }
            Err(e) => e,
        };
        let lost = matches!(e, Interrupted::Lost(_));
        if lost && self.stalled_since.is_none() {
            self.stalled_since = Some(Instant::now());
        }
        tracing::debug!(consumer = %self.spec.durable, stream = %self.spec.stream, error = %e, lost,
            "pull interrupted");
        None
    }

    fn ended(&self) -> BusError {
        BusError::jetstream(format!(
            "consumer {} on {}",
            self.spec.durable, self.spec.stream
        ))("pulls ended (consumer deleted?)")
    }
}

/// The last sequence that survived a loss: the stream's messages up to it were stored before
/// `newest` was handed out, the ones after it since (sequences are in time order). Found by
/// bisection over `1..=min(newest, last)`.
async fn survived(
    stream: &jetstream::stream::Stream,
    newest: &Seen,
    last: u64,
) -> Result<u64, BusError> {
    let (mut before, mut after) = (0, newest.seq.min(last) + 1);
    while after - before > 1 {
        let mid = before + (after - before) / 2;
        match stream.get_raw_message(mid).await {
            Ok(held) if held.time <= newest.stored => before = mid,
            Ok(_) => after = mid,
            // Gone (deleted or lost): look lower.
            Err(_) => after = mid,
        }
    }
    Ok(before)
}

/// Where [`DurableConsumer::realign`] found the consumer.
enum Found {
    InPlace,
    /// The broker no longer holds it.
    Gone,
    Misplaced {
        stream: Box<jetstream::stream::Stream>,
        info: Box<jetstream::consumer::Info>,
        why: Misplaced,
        last: u64,
    },
}

/// Why a consumer the broker still holds is created again.
enum Misplaced {
    /// The stream no longer holds messages it was given: evidence of a lost tail (or of
    /// messages aged out).
    Lost,
    /// After a reconnect, the broker counts messages it never received: what any dropped
    /// connection leaves, and also what a lost tail refilled before the check would.
    Unseen,
}

/// `raw` with each stream message once, as its latest delivery, in the order each first came.
/// The broker delivers a message again once AckWait passes unsettled, and both deliveries can
/// arrive together (held up in a node that froze): one settlement covers both, while two
/// would contradict each other. A handler that took the second for a copy of the first (acked
/// as already handled) while it retried the first (nak) had the broker forget the message,
/// retry and all (chaos seed 78: 17 orders never paid nor abandoned).
fn latest_deliveries(raw: Vec<Message>) -> Vec<Message> {
    let mut kept: Vec<Message> = Vec::with_capacity(raw.len());
    let mut at: HashMap<u64, usize> = HashMap::new();
    for message in raw {
        let Ok(info) = message.info() else {
            kept.push(message); // `admit` deals with it
            continue;
        };
        let (sequence, delivered) = (info.stream_sequence, info.delivered);
        match at.get(&sequence) {
            Some(&i) => {
                let earlier = kept[i].info().map_or(0, |info| info.delivered);
                if delivered > earlier {
                    kept[i] = message;
                }
            }
            None => {
                at.insert(sequence, kept.len());
                kept.push(message);
            }
        }
    }
    kept
}

fn seen(message: &Message) -> Option<Seen> {
    let info = message.info().ok()?;
    Some(Seen {
        seq: info.stream_sequence,
        msg_id: message.headers.as_ref().and_then(msg_id),
        stored: info.published,
    })
}

fn msg_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.to_string())
}

pub(crate) fn consumer_not_found(e: &async_nats::jetstream::context::ConsumerInfoError) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
    match e.kind() {
        Kind::NotFound => true,
        Kind::JetStream(j) => j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// Header values are one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_repeats_its_last_step() {
        let mut spec = ConsumerSpec::new("S", "d");
        spec.backoff = vec![Duration::from_millis(1), Duration::from_millis(5)];
        let delays: Vec<_> = (1..=4).map(|n| spec.backoff_for(n)).collect();
        assert_eq!(delays, [1, 5, 5, 5].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn headers_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }

    /// Call `next_batch` until `done` says so, failing after `within`.
    async fn batches_until(
        consumer: &mut DurableConsumer,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&DurableConsumer, &[Delivery]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let batch = consumer.next_batch(Duration::from_millis(200)).await;
            if done(consumer, &batch.expect("next batch")) {
                return;
            }
            assert!(Instant::now() < deadline, "{what} within {within:?}");
        }
    }

    /// Poll until `consumer`'s leader holds `pulls` pulls.
    async fn waiting_until(consumer: &PullConsumer, pulls: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while consumer.get_info().await.unwrap().num_waiting != pulls {
            assert!(
                Instant::now() < deadline,
                "{pulls} pulls held within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // a poll's pause
        }
    }

    /// A broker with the streams, and the payment service's consumer on `ORDERS` bound.
    async fn started() -> (
        tempfile::TempDir,
        crate::NatsServer,
        jetstream::Context,
        DurableConsumer,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = crate::server::ServerConfig::new(dir.path().join("nats"));
        let server = crate::server::NatsServer::start(config)
            .await
            .expect("nats-server starts (run scripts/install-nats-server)");
        let client = crate::connect(&server.url(), "test", None).await.unwrap();
        let js = jetstream::new(client);
        crate::provision(&js, &crate::StreamSettings::default())
            .await
            .unwrap();
        let consumer = DurableConsumer::bind(&js, ConsumerSpec::new("ORDERS", "payment"))
            .await
            .unwrap();
        (dir, server, js, consumer)
    }

    async fn order_created(js: &jetstream::Context) -> Envelope {
        let event = Envelope::new(
            crate::Domain::Orders,
            "OrderCreated",
            "o1",
            serde_json::json!({}),
        )
        .unwrap();
        let row = event.to_outbox_message().unwrap();
        for stored in Publisher::new(js.clone()).publish_all([&row]).await {
            stored.unwrap();
        }
        event
    }

    /// A consumer no message matches: a pull of it is held, heartbeats, and never delivers.
    async fn decoy(js: &jetstream::Context) -> PullConsumer {
        let orders = js.get_stream("ORDERS").await.unwrap();
        orders
            .create_consumer(pull::Config {
                durable_name: Some("decoy".into()),
                filter_subject: "orders.none.none".into(),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// A pull sent again goes out on the subscription of the one before, which the broker may
    /// still hold (a leader that froze): what that one delivers arrives. Here the pull sent
    /// again is the decoy's, so only the one before can bring the event. On a new inbox (as
    /// async-nats pulls again) the broker forgets the pull before: none would be held.
    #[tokio::test]
    async fn a_pull_sent_again_leaves_the_one_before_deliverable() {
        let (_dir, _server, js, mut consumer) = started().await;
        let decoy = decoy(&js).await;
        let wait = Duration::from_secs(60);
        assert!(consumer
            .next_batch(Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        waiting_until(&consumer.consumer, 1, wait).await;

        consumer.repull();
        consumer
            .pulls
            .aim_at("$JS.API.CONSUMER.MSG.NEXT.ORDERS.decoy");
        assert!(consumer
            .next_batch(Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        waiting_until(&decoy, 1, wait).await;
        waiting_until(&consumer.consumer, 1, wait).await;

        let event = order_created(&js).await;
        batches_until(&mut consumer, wait, "the event", |_, batch| {
            batch.iter().any(|d| d.envelope.id == event.id)
        })
        .await;
    }

    /// A position check whose questions go unanswered (a leader being elected) gives up after
    /// `REALIGN_ASK`, not after async-nats' 10 s per question, and the next waits
    /// `REALIGN_RETRY`: reading goes on meanwhile.
    #[tokio::test]
    async fn an_unanswered_position_check_is_put_off() {
        use futures::StreamExt;
        let (_dir, _server, js, mut consumer) = started().await;
        let client = js.client();
        let mut unanswered = client.subscribe("$UNANSWERED.API.>").await.unwrap();
        client.flush().await.unwrap();
        consumer.js = jetstream::with_prefix(client, "$UNANSWERED.API");

        let e = consumer.realign(Duration::ZERO).await.unwrap_err();
        assert!(e.to_string().contains("no answer in time"), "{e}");
        assert!(
            unanswered.next().now_or_never().flatten().is_some(),
            "asked"
        );
        assert!(!consumer.realign(Duration::ZERO).await.unwrap(), "put off");
        assert!(
            unanswered.next().now_or_never().is_none(),
            "not asked again at once"
        );
    }

    /// A consumer's new leader that never learnt of its pull (elected as a frozen node thaws)
    /// leaves the client waiting for heartbeats. Here the server forgets the pull (its inbox
    /// goes away) while the client holds a pull that heartbeats but can never deliver: only the
    /// election's announcement can bring the event. An announcement while the pull is held
    /// changes nothing.
    #[tokio::test]
    async fn a_pull_the_new_leader_does_not_hold_is_sent_again() {
        let (_dir, _server, js, mut consumer) = started().await;
        let client = js.client();
        let announce = || async {
            let subject = elections::consumer_subject("ORDERS", "payment");
            client.publish(subject, "{}".into()).await.unwrap();
            client.flush().await.unwrap();
        };
        let wait = Duration::from_secs(60);

        // Held: asked, and not pulled again.
        announce().await;
        batches_until(&mut consumer, wait, "the leader asked", |c, _| {
            c.leaders_asked == 1
        })
        .await;
        assert_eq!(consumer.lost_pulls, 0);

        // Lost: the client now holds a pull of a consumer no message matches, on a new inbox;
        // the pulls sent again go where they should.
        let decoy = decoy(&js).await;
        let mut pulls = Pulls::start(&js, "ORDERS", "decoy", consumer.spec.batch)
            .await
            .unwrap();
        assert!(pulls.next().now_or_never().is_none(), "nothing to deliver");
        pulls.aim_at("$JS.API.CONSUMER.MSG.NEXT.ORDERS.payment");
        consumer.pulls = pulls;
        waiting_until(&decoy, 1, wait).await;
        waiting_until(&consumer.consumer, 0, wait).await;
        let event = order_created(&js).await;
        announce().await;
        // Well before the decoy's pull expires (30 s), which would bring the event too.
        let soon = Duration::from_secs(15);
        batches_until(&mut consumer, soon, "the event", |_, batch| {
            batch.iter().any(|d| d.envelope.id == event.id)
        })
        .await;
        assert_eq!((consumer.leaders_asked, consumer.lost_pulls), (2, 1));
    }
}
