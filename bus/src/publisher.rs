//! Publishing with pipelined PubAcks: a whole batch is sent before any ack is awaited, so the
//! cost is one round trip per batch, not per message.

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::join_all;
use storage::OutboxMessage;

use crate::BusError;

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
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Publisher { js }
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
        let mut pending: Vec<Result<PublishAckFuture, BusError>> =
            Vec::with_capacity(messages.len());
        for m in messages.iter().copied() {
            let mut headers = HeaderMap::new();
            for (name, value) in &m.headers {
                headers.insert(name.as_str(), value.as_str());
            }
            let publish = PublishMessage::build()
                .payload(Bytes::from(m.payload.clone()))
                .headers(headers)
                .message_id(m.event_id.to_string());
            pending.push(
                self.js
                    .send_publish(m.subject.clone(), publish)
                    .await
                    .map_err(|e| publish_error(&m.subject, e)),
            );
        }
        let acks = pending
            .into_iter()
            .zip(messages)
            .map(|(sent, m)| async move {
                let ack = sent?.await.map_err(|e| publish_error(&m.subject, e))?;
                Ok(Stored {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            });
        join_all(acks).await
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

fn publish_error(subject: &str, e: impl Into<async_nats::Error>) -> BusError {
    BusError::Publish {
        subject: subject.to_string(),
        source: e.into(),
    }
}
