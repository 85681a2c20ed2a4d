//! A durable consumer's pulls, every one of them answered on one subscription for the
//! consumer's life.
//!
//! async-nats's pull stream takes a new inbox each time it is made, so pulling again after a
//! lost pull meant dropping the old inbox while a leader might still hold the old pull: what it
//! delivered before the unsubscribe reached it was lost to the client until AckWait brought it
//! again (after a frozen node thawed, its backlog could hold the unsubscribe that long). Here
//! each pull has its own reply subject under one inbox (`<inbox>.<n>`), so whatever any pull
//! delivers arrives, and the broker's word about each pull (heartbeat, expiry, end) names it.
//!
//! The bookkeeping: the pulls held and what they may still deliver together, the next pull once
//! that is half a batch or less, heartbeats as proof a pull is held. A pull taken for lost is
//! written off: what it still delivers is taken in, and its end, which names it, changes nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, Message};
use async_nats::{Client, StatusCode, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::BusError;

/// How long the broker holds a pull.
const EXPIRES: Duration = Duration::from_secs(30);
/// The broker says every this long that a pull is still held; two missed mean it is lost.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long past a pull's expiry to wait for the broker to say so before writing it off.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);
/// How soon to look again for a reconnect, or to try a pull that could not be sent.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Why a pull was interrupted; the consumer goes on.
#[derive(Debug)]
pub(crate) enum Interrupted {
    /// The pulls are gone: two heartbeats missed, or no server answers the consumer's pulls (a
    /// leader being elected). Pull again.
    Lost(&'static str),
    /// Anything else: a pull not sent (tried again a second later), a status not understood.
    Other(String),
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupted::Lost(why) => write!(f, "pull lost: {why}"),
            Interrupted::Other(why) => f.write_str(why),
        }
    }
}

/// The pulls of one durable consumer and the subscription their answers come to.
pub(crate) struct Pulls {
    js: jetstream::Context,
    client: Client,
    /// Where pulls are sent: `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`.
    next_subject: String,
    inbox: String,
    subscriber: Subscriber,
    request: Bytes,
    batch: usize,
    /// The pulls the broker holds, as far as this client knows: their numbers and when each was
    /// sent, oldest first.
    held: VecDeque<(u64, Instant)>,
    /// What they may still deliver, together (the broker serves them in turn, so deliveries
    /// name no pull). What a written-off pull still delivers counts against it too: the next
    /// pull goes a little early.
    pending: usize,
    sent: u64,
    /// Not before then: a pull that could not be sent is tried again a little later.
    pull_after: Option<Instant>,
    /// When a held pull was last heard of, or a message arrived.
    heard_at: Instant,
    /// The connection count at the last pull: a reconnect writes the pulls held off.
    connects: u64,
    ended: bool,
}

impl Pulls {
    /// Subscribe to a new inbox for the pulls of `durable` on `stream`, `batch` messages each.
    /// The first pull goes out on the first [`Pulls::next`].
    pub(crate) async fn start(
        js: &jetstream::Context,
        stream: &str,
        durable: &str,
        batch: usize,
    ) -> Result<Pulls, BusError> {
        let what = || format!("consumer {durable} on {stream}");
        let client = js.client();
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| BusError::jetstream(what())(e))?;
        let request = serde_json::to_vec(&BatchConfig {
            batch,
            expires: Some(EXPIRES),
            idle_heartbeat: HEARTBEAT,
            ..Default::default()
        })
        .map_err(|e| BusError::jetstream(what())(e))?;
        Ok(Pulls {
            js: js.clone(),
            next_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
            inbox,
            subscriber,
            request: Bytes::from(request),
            batch,
            held: VecDeque::new(),
            pending: 0,
            sent: 0,
            pull_after: None,
            heard_at: Instant::now(),
            connects: connects(&client),
            client,
            ended: false,
        })
    }

    /// Take the pulls held for lost and pull again at the next [`Pulls::next`]; one still held
    /// delivers here all the same.
    pub(crate) fn pull_again(&mut self) {
        self.held.clear();
        self.pending = 0;
    }

    /// Send the pulls from now on to `subject` (a test's decoy consumer).
    #[cfg(test)]
    pub(crate) fn aim_at(&mut self, subject: &str) {
        self.next_subject = subject.to_string();
    }

    /// The next message any pull delivers, an interruption, or `None` once the pulls end for
    /// good (the consumer deleted, the request refused) or the connection closed. Cancel-safe: a message taken off the subscription is
    /// returned without another wait, and a pull counts only once it is sent.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, Interrupted>> {
        loop {
            // What already came first: it may end pulls, or make one due.
            if let Some(item) = self.arrived() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            if let Err(e) = self.pull_if_due().await {
                return Some(Err(e));
            }
            let wake = (self.heard_at + 2 * HEARTBEAT).min(Instant::now() + LOOK_AGAIN);
            tokio::select! {
                biased;
                message = self.subscriber.next() => match message {
                    Some(message) => {
                        if let Some(item) = self.heard(message) {
                            return Some(item);
                        }
                    }
                    None => self.ended = true,
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    if self.heard_at.elapsed() >= 2 * HEARTBEAT {
                        self.heard_at = Instant::now();
                        return Some(Err(Interrupted::Lost("missed heartbeats")));
                    }
                }
            }
        }
    }

    /// What already arrived, without waiting and without pulling: a delivery or an interruption,
    /// or `None` once nothing more is here (or the pulls ended).
    pub(crate) fn arrived(&mut self) -> Option<Result<Message, Interrupted>> {
        while !self.ended {
            match self.subscriber.next().now_or_never() {
                Some(Some(message)) => {
                    if let Some(item) = self.heard(message) {
                        return Some(item);
                    }
                }
                Some(None) => self.ended = true,
                None => break,
            }
        }
        None
    }

    /// Send a pull if one is due: the pulls held may deliver half a batch or less. A reconnect
    /// writes them off first (the broker may have lost them), as does an expiry the broker did
    /// not announce.
    pub(crate) async fn pull_if_due(&mut self) -> Result<(), Interrupted> {
        let now = Instant::now();
        if self.pull_after.is_some_and(|after| now < after)
            || self.client.connection_state() != State::Connected
        {
            return Ok(());
        }
        let connects = connects(&self.client);
        if connects != self.connects {
            self.pull_again();
        }
        while let Some(&(number, sent_at)) = self.held.front() {
            if now.duration_since(sent_at) < EXPIRES + EXPIRY_GRACE {
                break;
            }
            self.ended_pull(number, None);
        }
        if self.pending > self.batch / 2 {
            return Ok(());
        }
        let number = self.sent + 1;
        let sent = self
            .client
            .publish_with_reply(
                self.next_subject.clone(),
                format!("{}.{number}", self.inbox),
                self.request.clone(),
            )
            .await;
        if let Err(e) = sent {
            self.pull_after = Some(Instant::now() + LOOK_AGAIN);
            return Err(Interrupted::Other(format!("pull not sent: {e}")));
        }
        self.pull_after = None;
        self.sent = number;
        self.connects = connects;
        let sent_at = Instant::now();
        self.held.push_back((number, sent_at));
        self.pending += self.batch;
        // A pull just sent has two heartbeats' time to be heard of.
        self.heard_at = self.heard_at.max(sent_at);
        Ok(())
    }

    /// Pull `number` is over, `left` of its messages undelivered (as the broker counts them; not
    /// known: as many as it could be).
    fn ended_pull(&mut self, number: u64, left: Option<usize>) {
        self.held.retain(|(held, _)| *held != number);
        self.pending = if self.held.is_empty() {
            0
        } else {
            self.pending.saturating_sub(left.unwrap_or(self.batch))
        };
    }

    /// What a message on the subscription means: a delivery, an interruption, or (`None`) only
    /// news for the bookkeeping.
    fn heard(&mut self, message: async_nats::Message) -> Option<Result<Message, Interrupted>> {
        let status = message.status.unwrap_or(StatusCode::OK);
        if status == StatusCode::OK {
            self.heard_at = Instant::now();
            self.pending = self.pending.saturating_sub(1);
            return Some(Ok(Message {
                message,
                context: self.js.clone(),
            }));
        }
        let number = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        let held = number.filter(|n| self.held.iter().any(|(held, _)| held == n));
        if held.is_some() {
            self.heard_at = Instant::now();
        }
        let description = message.description.as_deref().unwrap_or_default();
        match status {
            StatusCode::IDLE_HEARTBEAT => None,
            // A pull expired or ended (a leadership change, say). Some end the consumer's
            // pulls for good: asking again gets the same answer.
            StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED | StatusCode::PIN_ID_MISMATCH => {
                if description == "Consumer Deleted"
                    || description == "Consumer is push based"
                    || description.starts_with("Exceeded MaxRequest")
                {
                    tracing::warn!(subject = %self.next_subject, %description, "pulls ended");
                    self.ended = true;
                } else if let Some(number) = held {
                    let left = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get("Nats-Pending-Messages"))
                        .and_then(|left| left.as_str().parse().ok());
                    self.ended_pull(number, left);
                }
                None
            }
            // No leader to take the pull (one is being elected): not again at once.
            StatusCode::NO_RESPONDERS => {
                if let Some(number) = held {
                    self.ended_pull(number, Some(self.batch));
                }
                self.pull_after = Some(Instant::now() + LOOK_AGAIN);
                Some(Err(Interrupted::Lost("no responders")))
            }
            // A request the broker will not take (400), or a consumer it will not pull (412).
            status if matches!(status.as_u16(), 400 | 412) => {
                tracing::warn!(subject = %self.next_subject, %status, %description,
                    "pulls refused");
                self.ended = true;
                None
            }
            status => Some(Err(Interrupted::Other(format!(
                "unexpected status {status} on a pull: {description}"
            )))),
        }
    }
}

fn connects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}
