//! The dead-letter queue, typed: what `commerce dlq` lists, shows, replays and discards.
//!
//! A consumer dead-letters a message by copying it to `dlq.<consumer>.<original subject>` in
//! stream `DLQ`, payload untouched, with the reason and where it came from in `Commerce-Dlq-*`
//! headers (see [`crate::consumer`]). Here each such message is a [`DeadLetter`], addressed by
//! its sequence in `DLQ`:
//! - [`DeadLetters::list`]: a page of them, filtered by consumer and order, oldest first;
//! - [`DeadLetters::get`]: one by sequence; [`DeadLetters::get_own`]: one of a given consumer's
//!   only (what a service reads before it replays: it never sees another's);
//! - [`DeadLetters::delete`]: drop one (after a replay applied it);
//! - [`DeadLetters::discard`]: give one up for good. It is not deleted but replaced by a copy
//!   marked `Commerce-Dlq-Discarded`, under the same subject: lists and bulk replays leave it
//!   out, yet a service that recovers its database still finds it among its dead letters, so its
//!   recreated consumers do not handle the event after all (a discarded charge stays uncharged).
//!
//! Everything reads with single `STREAM.MSG.GET` requests: no consumer is created on `DLQ`,
//! nothing is left behind, and a page costs about `limit + 1` round trips.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::consumer::{
    DLQ_CONSUMER, DLQ_DELIVERED, DLQ_ORIGINAL_MSG_ID, DLQ_REASON, DLQ_SEQUENCE, DLQ_STREAM,
    DLQ_SUBJECT,
};
use crate::envelope::MAX_TOKEN_BYTES;
use crate::{BusError, Envelope, Publisher};

/// The stream dead letters live in.
pub const STREAM: &str = crate::streams::DLQ_STREAM;
/// Subject prefix of every dead letter.
pub const PREFIX: &str = "dlq";
/// Entries per page when the caller does not say.
pub const DEFAULT_LIMIT: usize = 50;
/// On the copy a discard leaves behind: when it was discarded (RFC 3339).
pub const DLQ_DISCARDED: &str = "Commerce-Dlq-Discarded";

/// The event a dead letter carries, when its payload is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub id: Uuid,
    pub event_type: String,
    /// The order (saga) it is about: the envelope's `subject`.
    pub order_id: String,
}

/// One message in `DLQ`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in `DLQ`: how `commerce dlq` names it.
    pub seq: u64,
    /// The consumer (listening service, or the projection) that gave up on it.
    pub consumer: String,
    /// The subject it was published on (`<domain>.<event_name>.<order_id>`).
    pub subject: String,
    /// The stream it was read from, and its sequence there (when the headers say).
    pub original_stream: Option<String>,
    pub original_seq: Option<u64>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// How often it had been delivered.
    pub delivered: Option<i64>,
    /// Its `Nats-Msg-Id` in the original stream (the event id, for events).
    pub original_msg_id: Option<String>,
    /// When `DLQ` stored it.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// When an operator discarded it, if they did.
    pub discarded: Option<String>,
    /// The event, if the payload decodes as one (`None`: poison, not an event).
    pub event: Option<EventRef>,
    /// Every header, in order (for `show`).
    pub headers: Vec<(String, String)>,
    /// The payload, untouched.
    pub payload: Bytes,
}

impl DeadLetter {
    /// A dead letter from what `DLQ` stored at `seq`. The consumer and the original subject come
    /// from the DLQ subject (`dlq.<consumer>.<original subject>`, which only that consumer and
    /// the operator may publish), the rest from the headers. `None`: not a dead letter's subject.
    pub fn from_parts(
        seq: u64,
        dlq_subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        dead_lettered_at: Option<DateTime<Utc>>,
    ) -> Option<DeadLetter> {
        let (consumer, subject) = split_subject(dlq_subject)?;
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let all = headers
            .map(|h| {
                let mut all = Vec::new();
                for (name, values) in h.iter() {
                    let name: &str = name.as_ref();
                    for value in values {
                        all.push((name.to_string(), value.as_str().to_string()));
                    }
                }
                all
            })
            .unwrap_or_default();
        let event = Envelope::from_slice(&payload).ok().map(|e| EventRef {
            id: e.id,
            event_type: e.event_type,
            order_id: e.subject,
        });
        Some(DeadLetter {
            seq,
            consumer: consumer.to_string(),
            subject: subject.to_string(),
            original_stream: header(DLQ_STREAM),
            original_seq: header(DLQ_SEQUENCE).and_then(|s| s.parse().ok()),
            reason: header(DLQ_REASON).unwrap_or_else(|| "(no reason given)".into()),
            delivered: header(DLQ_DELIVERED).and_then(|s| s.parse().ok()),
            original_msg_id: header(DLQ_ORIGINAL_MSG_ID),
            dead_lettered_at,
            discarded: header(DLQ_DISCARDED),
            event,
            headers: all,
            payload,
        })
    }

    /// The `Commerce-Dlq-Consumer` header, if any (it should name [`DeadLetter::consumer`]).
    pub fn consumer_header(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(DLQ_CONSUMER))
            .map(|(_, value)| value.as_str())
    }

    /// The `Commerce-Dlq-Subject` header, if any (it should name [`DeadLetter::subject`]).
    pub fn subject_header(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(DLQ_SUBJECT))
            .map(|(_, value)| value.as_str())
    }

    /// The payload as an event, or why it is not one.
    pub fn envelope(&self) -> Result<Envelope, BusError> {
        Envelope::from_slice(&self.payload)
    }

    fn from_stored(message: StreamMessage) -> Option<DeadLetter> {
        let at = DateTime::from_timestamp_nanos(
            i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        );
        DeadLetter::from_parts(
            message.sequence,
            message.subject.as_str(),
            Some(&message.headers),
            message.payload,
            Some(at),
        )
    }
}

/// `dlq.<consumer>.<original subject>` → (consumer, original subject).
pub fn split_subject(dlq_subject: &str) -> Option<(&str, &str)> {
    let rest = dlq_subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (consumer, subject) = rest.split_once('.')?;
    (!consumer.is_empty() && !subject.is_empty()).then_some((consumer, subject))
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this consumer's (a service's name, or `projection`).
    pub consumer: Option<String>,
    /// Only those about this order (the last token of the original subject).
    pub order_id: Option<String>,
    /// Discarded ones too.
    pub discarded: bool,
}

impl Filter {
    /// The subject filter on `DLQ`. Consumer and order must each be one subject token.
    pub fn subject(&self) -> Result<String, BusError> {
        let consumer = match &self.consumer {
            Some(c) => token("consumer", c)?,
            None => "*",
        };
        Ok(match &self.order_id {
            // Original subjects are `<domain>.<event_name>.<order_id>.<partition>`.
            Some(order) => format!("{PREFIX}.{consumer}.*.*.{}.*", token("order", order)?),
            None => format!("{PREFIX}.{consumer}.>"),
        })
    }
}

fn token<'a>(what: &str, value: &'a str) -> Result<&'a str, BusError> {
    let bad = value.is_empty()
        || value.len() > MAX_TOKEN_BYTES
        || value
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control());
    if bad {
        return Err(BusError::Invalid(format!(
            "{what} {value:?} is not a single NATS subject token"
        )));
    }
    Ok(value)
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts, if there is one.
    pub next: Option<u64>,
    /// Discarded ones passed over on the way (unless the filter asked for them).
    pub discarded: usize,
}

/// Typed access to the `DLQ` stream.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context) -> Self {
        DeadLetters { js }
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, BusError> {
        self.js
            .get_stream_no_info(STREAM)
            .await
            .map_err(BusError::jetstream("DLQ"))
    }

    /// Up to `limit` dead letters matching `filter`, from DLQ sequence `from` on, oldest first.
    pub async fn list(&self, filter: &Filter, from: u64, limit: usize) -> Result<Page, BusError> {
        let subject = filter.subject()?;
        let stream = self.stream().await?;
        let mut page = Page {
            letters: Vec::new(),
            next: None,
            discarded: 0,
        };
        let mut seq = from.max(1);
        while let Some(message) = next_matching(&stream, &subject, seq).await? {
            seq = message.sequence.saturating_add(1);
            // A message on `dlq.<token>` alone is no dead letter's: skip it.
            let Some(letter) = DeadLetter::from_stored(message) else {
                continue;
            };
            if letter.discarded.is_some() && !filter.discarded {
                page.discarded += 1;
                continue;
            }
            if page.letters.len() >= limit {
                page.next = Some(letter.seq);
                break;
            }
            page.letters.push(letter);
        }
        Ok(page)
    }

    /// The dead letter at DLQ sequence `seq`; `None` if there is none (never was, or deleted).
    pub async fn get(&self, seq: u64) -> Result<Option<DeadLetter>, BusError> {
        if seq == 0 {
            return Ok(None); // sequences start at 1
        }
        let stream = self.stream().await?;
        match stream.get_raw_message(seq).await {
            Ok(message) => Ok(DeadLetter::from_stored(message)),
            Err(e) if no_message(&e) => Ok(None),
            Err(e) => Err(BusError::jetstream(format!("reading DLQ #{seq}"))(e)),
        }
    }

    /// The dead letter at DLQ sequence `seq` if it is `consumer`'s; `None` otherwise (unknown,
    /// deleted, or another consumer's: the broker never hands over another's).
    pub async fn get_own(&self, consumer: &str, seq: u64) -> Result<Option<DeadLetter>, BusError> {
        let filter = Filter {
            consumer: Some(consumer.to_string()),
            ..Filter::default()
        };
        let stream = self.stream().await?;
        let found = next_matching(&stream, &filter.subject()?, seq.max(1)).await?;
        Ok(found
            .filter(|message| message.sequence == seq)
            .and_then(DeadLetter::from_stored)
            .filter(|letter| letter.consumer == consumer))
    }

    /// Delete the dead letter at `seq`. Returns whether there was one.
    pub async fn delete(&self, seq: u64) -> Result<bool, BusError> {
        if seq == 0 {
            return Ok(false);
        }
        let stream = self.stream().await?;
        // The server's answer for an empty sequence is a generic "delete failed": ask first.
        match stream.get_raw_message(seq).await {
            Ok(_) => {}
            Err(e) if no_message(&e) => return Ok(false),
            Err(e) => return Err(BusError::jetstream(format!("reading DLQ #{seq}"))(e)),
        }
        stream
            .delete_message(seq)
            .await
            .map_err(BusError::jetstream(format!("deleting DLQ #{seq}")))
    }

    /// Give up the dead letter at `seq` for good: replace it with a copy marked discarded (same
    /// subject, payload and headers), which lists and bulk replays leave out but a recovery
    /// still reads. Returns the copy (the entry itself if it was discarded already); `None` if
    /// there is no entry. Repeating it after a failure halfway leaves one copy (the broker drops
    /// a second by its message id).
    pub async fn discard(&self, seq: u64) -> Result<Option<DeadLetter>, BusError> {
        let Some(letter) = self.get(seq).await? else {
            return Ok(None);
        };
        if letter.discarded.is_some() {
            return Ok(Some(letter));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &letter.headers {
            if !name.to_ascii_lowercase().starts_with("nats-") {
                headers.append(name.as_str(), value.as_str());
            }
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-discarded-{seq}").as_str(),
        );
        headers.insert(DLQ_DISCARDED, Utc::now().to_rfc3339().as_str());
        let subject = format!("{PREFIX}.{}.{}", letter.consumer, letter.subject);
        let stored = Publisher::new(self.js.clone())
            .publish_raw(subject, headers, letter.payload.clone())
            .await?;
        if stored.sequence != seq {
            self.delete(seq).await?;
        }
        self.get(stored.sequence).await
    }
}

/// The first message on `subject` at or after `seq`.
async fn next_matching(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
    seq: u64,
) -> Result<Option<StreamMessage>, BusError> {
    match stream.get_first_raw_message_by_subject(subject, seq).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if no_message(&e) => Ok(None),
        Err(e) => Err(BusError::jetstream(format!("reading DLQ from #{seq}"))(e)),
    }
}

fn no_message(e: &stream::RawMessageError) -> bool {
    matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Domain;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, *value);
        }
        headers
    }

    #[test]
    fn a_dlq_subject_names_the_consumer_and_the_original_subject() {
        assert_eq!(
            split_subject("dlq.payment.orders.order_cancelled.o1"),
            Some(("payment", "orders.order_cancelled.o1"))
        );
        for bad in [
            "dlq",
            "dlq.payment",
            "dlq.payment.",
            "dlqx.payment.a",
            "ops.payment.a",
        ] {
            assert_eq!(split_subject(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_are_subjects_and_refuse_wildcards_in_their_tokens() {
        let all = Filter::default();
        assert_eq!(all.subject().unwrap(), "dlq.*.>");
        let payment = Filter {
            consumer: Some("payment".into()),
            ..Filter::default()
        };
        assert_eq!(payment.subject().unwrap(), "dlq.payment.>");
        let order = Filter {
            order_id: Some("o-1".into()),
            ..Filter::default()
        };
        assert_eq!(order.subject().unwrap(), "dlq.*.*.*.o-1.*");
        for bad in ["", "a.b", "*", ">", "a b"] {
            let filter = Filter {
                order_id: Some(bad.into()),
                ..Filter::default()
            };
            assert!(
                matches!(filter.subject(), Err(BusError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_event_dead_letter_reads_back_with_its_reason_origin_and_event() {
        let event = Envelope::new(
            Domain::Orders,
            "OrderCancelled",
            "o1",
            serde_json::json!({"reason": "x"}),
        )
        .unwrap();
        let payload = Bytes::from(event.to_json().unwrap());
        let h = headers(&[
            (DLQ_REASON, "exhausted after 3 deliveries: gateway down"),
            (DLQ_STREAM, "ORDERS"),
            (DLQ_SUBJECT, "orders.order_cancelled.o1"),
            (DLQ_SEQUENCE, "42"),
            (DLQ_CONSUMER, "payment"),
            (DLQ_DELIVERED, "3"),
            (DLQ_ORIGINAL_MSG_ID, &event.id.to_string()),
        ]);
        let letter = DeadLetter::from_parts(
            7,
            "dlq.payment.orders.order_cancelled.o1",
            Some(&h),
            payload,
            None,
        )
        .unwrap();
        assert_eq!(letter.seq, 7);
        assert_eq!(letter.consumer, "payment");
        assert_eq!(letter.consumer_header(), Some("payment"));
        assert_eq!(letter.subject, "orders.order_cancelled.o1");
        assert_eq!(letter.subject_header(), Some("orders.order_cancelled.o1"));
        assert_eq!(letter.original_stream.as_deref(), Some("ORDERS"));
        assert_eq!(letter.original_seq, Some(42));
        assert_eq!(letter.delivered, Some(3));
        assert!(letter.reason.contains("gateway down"));
        let expected = EventRef {
            id: event.id,
            event_type: "OrderCancelled".into(),
            order_id: "o1".into(),
        };
        assert_eq!(letter.event, Some(expected));
        assert_eq!(letter.envelope().unwrap(), event);
        assert_eq!(letter.headers.len(), 7);
        assert_eq!(letter.discarded, None);
        let mut discarded = h.clone();
        discarded.insert(DLQ_DISCARDED, "2026-11-24T10:00:00Z");
        let payload = letter.payload.clone();
        let copy = DeadLetter::from_parts(8, "dlq.payment.a.b.o1", Some(&discarded), payload, None)
            .unwrap();
        assert_eq!(copy.discarded.as_deref(), Some("2026-11-24T10:00:00Z"));
    }

    #[test]
    fn poison_and_headerless_dead_letters_read_back_without_an_event() {
        let letter = DeadLetter::from_parts(
            1,
            "dlq.projection.orders.order_created.poison",
            None,
            Bytes::from_static(b"{not json"),
            None,
        )
        .unwrap();
        assert_eq!(letter.event, None);
        assert!(letter.envelope().is_err());
        assert_eq!(letter.reason, "(no reason given)");
        assert_eq!((letter.original_seq, letter.delivered), (None, None));
        assert_eq!(letter.consumer_header(), None);
        // Garbage numbers are absent, not a panic.
        let h = headers(&[(DLQ_SEQUENCE, "x"), (DLQ_DELIVERED, "-")]);
        let letter = DeadLetter::from_parts(2, "dlq.a.b", Some(&h), Bytes::new(), None).unwrap();
        assert_eq!((letter.original_seq, letter.delivered), (None, None));
        assert!(DeadLetter::from_parts(3, "dlq.a", Some(&h), Bytes::new(), None).is_none());
    }
}
