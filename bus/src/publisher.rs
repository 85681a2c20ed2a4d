//! Publishing with pipelined PubAcks: a whole batch is sent before any ack is awaited, so the
//! cost is one round trip per batch, not per message.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use storage::OutboxMessage;

use crate::term::Term;
use crate::BusError;

const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
const MSG_ID: &str = "Nats-Msg-Id";
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";
/// The most messages nats-server takes in one atomic batch (its default `max_batch_size`).
const MAX_BATCH: usize = 1000;

/// The broker's answer for one message: where it is stored, and whether it was a duplicate
/// (already stored under the same `Nats-Msg-Id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream: String,
    pub sequence: u64,
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    /// A term: every publish expects its marker to be the last message on its subject, so the
    /// broker refuses what an owner sends after a successor's term began (`crate::term`).
    term: Option<Term>,
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Publisher { js, term: None }
    }

    /// Publish only while `term`'s marker is the last message on its subject.
    pub fn within_term(mut self, term: Term) -> Self {
        self.term = Some(term);
        self
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publish every message, `Nats-Msg-Id` = event id; return each one's outcome, in order.
    /// A message counts as stored only when its own PubAck says so.
    pub async fn publish_all<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a OutboxMessage>,
    ) -> Vec<Result<Stored, BusError>> {
        let messages: Vec<&OutboxMessage> = messages.into_iter().collect();
        let mut outcomes = unanswered(messages.len());
        self.publish_into(&messages, &mut outcomes).await;
        outcomes
            .into_iter()
            .zip(&messages)
            .map(|(outcome, m)| outcome.unwrap_or_else(|| Err(unanswered_error(m))))
            .collect()
    }

    /// [`Self::publish_all`], writing each message's outcome into its slot of `outcomes` (one
    /// per message) as it is taken in: a caller that stops waiting keeps every answer taken in
    /// before (`None`: not answered yet). Run to its end, it answers every slot.
    pub async fn publish_into(
        &self,
        messages: &[&OutboxMessage],
        outcomes: &mut [Option<Result<Stored, BusError>>],
    ) {
        debug_assert_eq!(messages.len(), outcomes.len(), "one slot per message");
        if self.term.is_some() {
            return self.publish_in_turn(messages, outcomes).await;
        }
        let mut acks = FuturesUnordered::new();
        for (i, m) in messages.iter().copied().enumerate() {
            match self.send(m).await {
                Ok(ack) => acks.push(async move { (i, stored(m, ack.await)) }),
                Err(e) => answer(outcomes, i, Err(e)),
            }
        }
        while let Some((i, outcome)) = acks.next().await {
            answer(outcomes, i, outcome);
        }
    }

    /// Within a term: the messages as one atomic batch, or one at a time where a batch cannot
    /// take them (a message the broker already has, say), stopping at the first refusal. A
    /// clustered stream checks a message's expected last sequence of the term's subject only
    /// while no other such check is in flight, and refuses the rest ("wrong last sequence",
    /// 10164): pipelined, they would land out of order, and a database lost meanwhile would
    /// lose the gap for good.
    async fn publish_in_turn(
        &self,
        messages: &[&OutboxMessage],
        outcomes: &mut [Option<Result<Stored, BusError>>],
    ) {
        let mut next = 0;
        for run in messages.chunks(MAX_BATCH) {
            if let Some(stored) = self.publish_batch(run).await {
                for stored in stored {
                    answer(outcomes, next, Ok(stored));
                    next += 1;
                }
                continue;
            }
            for m in run {
                let outcome = match self.send(m).await {
                    Ok(ack) => ack.await,
                    Err(e) => {
                        answer(outcomes, next, Err(e));
                        return not_sent_after(messages, outcomes, next + 1);
                    }
                };
                let refused_by_term = matches!(&outcome,
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence);
                let outcome = stored(m, outcome);
                let failed = outcome.is_err();
                answer(outcomes, next, outcome);
                next += 1;
                if refused_by_term {
                    self.reassert_term().await;
                }
                if failed {
                    return not_sent_after(messages, outcomes, next);
                }
            }
        }
    }

    /// The broker refused a publish for naming a marker that is no longer its subject's last:
    /// mark the term again if it is still ours (the next pass publishes under it), or lose the
    /// fence if a successor's is there.
    async fn reassert_term(&self) {
        let Some(term) = &self.term else { return };
        if let Err(e) = term.reassert().await {
            tracing::warn!(subject = term.subject(), error = %e,
                "a publish of this term was refused, and the term could not be marked again");
        }
    }

    /// `run` as one atomic batch (ADR-50): the broker checks the term once and stores every
    /// message, contiguous and in order, or none; one round trip for all. `None` when it did
    /// not store them as a batch (a duplicate among them, broker trouble, a refusal, or
    /// messages for more than the term's stream): [`Self::publish_in_turn`] then tells which
    /// are stored, under the same `Nats-Msg-Id`s.
    async fn publish_batch(&self, run: &[&OutboxMessage]) -> Option<Vec<Stored>> {
        let term = self.term.as_ref()?.subject();
        let own = |m: &&OutboxMessage| m.subject.split('.').next() == term.split('.').next();
        if run.len() < 2 || !run.iter().all(own) {
            return None;
        }
        let batch = uuid::Uuid::now_v7().to_string();
        let client = self.js.client();
        let (last, rest) = run.split_last()?;
        for (i, m) in rest.iter().enumerate() {
            let mut headers = self.headers(m);
            headers.insert(BATCH_ID, batch.as_str());
            headers.insert(BATCH_SEQUENCE, (i + 1).to_string().as_str());
            // No reply: the broker answers the batch once, at its commit.
            let payload = Bytes::from(m.payload.clone());
            if let Err(e) = client
                .publish_with_headers(m.subject.clone(), headers, payload)
                .await
            {
                tracing::debug!(error = %e, "batch not sent; publishing one at a time");
                return None;
            }
        }
        let mut headers = self.headers(last);
        headers.insert(BATCH_ID, batch.as_str());
        headers.insert(BATCH_SEQUENCE, run.len().to_string().as_str());
        headers.insert(BATCH_COMMIT, "1");
        let publish = PublishMessage::build()
            .payload(Bytes::from(last.payload.clone()))
            .headers(headers);
        let ack = match self.js.send_publish(last.subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let ack = match ack {
            Ok(ack) if ack.batch_size == Some(run.len() as u64) && !ack.duplicate => ack,
            Ok(ack) => {
                tracing::warn!(batch_size = ?ack.batch_size, sent = run.len(),
                    "the broker's answer does not account for the batch; publishing one at a time");
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "batch not stored; publishing one at a time");
                return None;
            }
        };
        let first = (ack.sequence + 1).checked_sub(run.len() as u64)?;
        Some(
            (first..)
                .take(run.len())
                .map(|sequence| Stored {
                    stream: ack.stream.clone(),
                    sequence,
                    duplicate: false,
                })
                .collect(),
        )
    }

    /// Send `m` with `Nats-Msg-Id` = its event id (and the term's check), not awaiting its ack.
    async fn send(&self, m: &OutboxMessage) -> Result<PublishAckFuture, BusError> {
        let publish = PublishMessage::build()
            .payload(Bytes::from(m.payload.clone()))
            .headers(self.headers(m));
        self.js
            .send_publish(m.subject.clone(), publish)
            .await
            .map_err(|e| publish_error(&m.subject, e))
    }

    /// `m`'s headers, its `Nats-Msg-Id` (its event id) and the term's check.
    fn headers(&self, m: &OutboxMessage) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &m.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers.insert(MSG_ID, m.event_id.to_string().as_str());
        if let Some(term) = &self.term {
            headers.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                term.marker().to_string().as_str(),
            );
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, term.subject());
        }
        headers
    }

    /// Publish raw bytes with headers and wait for the PubAck (DLQ and operational events).
    pub async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Stored, BusError> {
        let ack = self
            .js
            .send_publish(
                subject.clone(),
                PublishMessage::build().payload(payload).headers(headers),
            )
            .await
            .map_err(|e| publish_error(&subject, e))?
            .await
            .map_err(|e| publish_error(&subject, e))?;
        Ok(Stored {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Slots for `n` messages' outcomes, none answered yet.
pub(crate) fn unanswered(n: usize) -> Vec<Option<Result<Stored, BusError>>> {
    std::iter::repeat_with(|| None).take(n).collect()
}

/// Message `i`'s outcome, into its slot.
fn answer(
    outcomes: &mut [Option<Result<Stored, BusError>>],
    i: usize,
    outcome: Result<Stored, BusError>,
) {
    if let Some(slot) = outcomes.get_mut(i) {
        *slot = Some(outcome);
    }
}

/// Every message from `from` on, after a refusal: "not sent".
fn not_sent_after(
    messages: &[&OutboxMessage],
    outcomes: &mut [Option<Result<Stored, BusError>>],
    from: usize,
) {
    for (outcome, m) in outcomes.iter_mut().zip(messages).skip(from) {
        *outcome = Some(Err(not_sent(m)));
    }
}

/// Never expected: `publish_into` answers every slot it is given.
fn unanswered_error(m: &OutboxMessage) -> BusError {
    BusError::Publish {
        subject: m.subject.clone(),
        source: "not answered".into(),
    }
}

fn not_sent(m: &OutboxMessage) -> BusError {
    BusError::Publish {
        subject: m.subject.clone(),
        source: "not sent: an earlier message of its batch was not stored".into(),
    }
}

/// What the broker's answer to `m` says.
fn stored(
    m: &OutboxMessage,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Stored, BusError> {
    let ack = ack.map_err(|e| publish_error(&m.subject, e))?;
    Ok(Stored {
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

fn publish_error(subject: &str, e: impl Into<async_nats::Error>) -> BusError {
    BusError::Publish {
        subject: subject.to_string(),
        source: e.into(),
    }
}
