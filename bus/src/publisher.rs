//! Publishing with pipelined PubAcks: a whole batch is sent before any ack is awaited, so the
//! cost is one round trip per batch, not per message.

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::join_all;
use storage::OutboxMessage;

use crate::BusError;

const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

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
    /// A term's marker: every publish expects it to be the last message on its subject, so the
    /// broker refuses what an owner sends after a successor's term began (`bus::lease`).
    term: Option<(String, u64)>,
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Publisher { js, term: None }
    }

    /// Publish only while `marker` is the last message on `subject`.
    pub fn within_term(mut self, subject: String, marker: u64) -> Self {
        self.term = Some((subject, marker));
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
        if self.term.is_some() {
            return self.publish_in_turn(&messages).await;
        }
        let mut pending: Vec<Result<PublishAckFuture, BusError>> =
            Vec::with_capacity(messages.len());
        for m in messages.iter().copied() {
            pending.push(self.send(m).await);
        }
        let acks = pending
            .into_iter()
            .zip(messages)
            .map(|(sent, m)| async move { stored(m, sent?.await) });
        join_all(acks).await
    }

    /// Within a term, one message at a time, stopping at the first refusal. A clustered stream
    /// checks a message's expected last sequence of the term's subject only while no other
    /// such check is in flight, and refuses the rest ("wrong last sequence", 10164): pipelined,
    /// they would land out of order, and a database lost meanwhile would lose the gap for good.
    async fn publish_in_turn(&self, messages: &[&OutboxMessage]) -> Vec<Result<Stored, BusError>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for m in messages {
            let outcome = match self.send(m).await {
                Ok(ack) => stored(m, ack.await),
                Err(e) => Err(e),
            };
            let failed = outcome.is_err();
            outcomes.push(outcome);
            if failed {
                break;
            }
        }
        for m in &messages[outcomes.len()..] {
            outcomes.push(Err(BusError::Publish {
                subject: m.subject.clone(),
                source: "not sent: an earlier message of its batch was not stored".into(),
            }));
        }
        outcomes
    }

    /// Send `m` with `Nats-Msg-Id` = its event id (and the term's check), not awaiting its ack.
    async fn send(&self, m: &OutboxMessage) -> Result<PublishAckFuture, BusError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &m.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        if let Some((subject, marker)) = &self.term {
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, marker.to_string().as_str());
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, subject.as_str());
        }
        let publish = PublishMessage::build()
            .payload(Bytes::from(m.payload.clone()))
            .headers(headers)
            .message_id(m.event_id.to_string());
        self.js
            .send_publish(m.subject.clone(), publish)
            .await
            .map_err(|e| publish_error(&m.subject, e))
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
