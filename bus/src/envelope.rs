//! The event envelope: CloudEvents 1.0, structured JSON mode.
//!
//! ```json
//! {"specversion":"1.0","id":"0193…","source":"payment","type":"PaymentApproved",
//!  "subject":"<order id>","time":"2026-11-24T10:00:00Z","datacontenttype":"application/json",
//!  "schemaversion":1,"correlationid":"<order id>","causationid":"<event id>",
//!  "aggregateversion":3,"data":{…}}
//! ```
//! Published on `<domain>.<event_name>.<order_id>` (`payments.payment_approved.<order id>`) with
//! headers `Nats-Msg-Id` = `id` (broker-side dedup) and `traceparent` (W3C; the trace id is the
//! correlation id, so one saga is one trace).

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use storage::OutboxMessage;
use uuid::Uuid;

use crate::BusError;

pub const SPEC_VERSION: &str = "1.0";
pub const JSON: &str = "application/json";
pub const TRACEPARENT: &str = "traceparent";
/// The largest event body admitted to an outbox: far above any event of the saga, far below the
/// broker's 1 MiB message limit, so a row that reaches the outbox can always be published.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The longest subject token (an order id) admitted.
pub const MAX_TOKEN_BYTES: usize = 128;

/// The services that own a stream; each publishes only under its own subject prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Orders,
    Payments,
    Inventory,
    Stores,
    Shipments,
    Recommendations,
}

impl Domain {
    pub const ALL: [Domain; 6] = [
        Domain::Orders,
        Domain::Payments,
        Domain::Inventory,
        Domain::Stores,
        Domain::Shipments,
        Domain::Recommendations,
    ];

    /// First subject token, e.g. `payments`.
    pub fn subject_prefix(self) -> &'static str {
        match self {
            Domain::Orders => "orders",
            Domain::Payments => "payments",
            Domain::Inventory => "inventory",
            Domain::Stores => "stores",
            Domain::Shipments => "shipments",
            Domain::Recommendations => "recommendations",
        }
    }

    /// The JetStream stream holding this domain's events, e.g. `PAYMENTS`.
    pub fn stream(self) -> &'static str {
        match self {
            Domain::Orders => "ORDERS",
            Domain::Payments => "PAYMENTS",
            Domain::Inventory => "INVENTORY",
            Domain::Stores => "STORES",
            Domain::Shipments => "SHIPMENTS",
            Domain::Recommendations => "RECOMMENDATIONS",
        }
    }

    /// The CloudEvents `source` of this domain's events: the owning service, e.g. `payment`.
    pub fn source(self) -> &'static str {
        match self {
            Domain::Orders => "order",
            Domain::Payments => "payment",
            Domain::Inventory => "inventory",
            Domain::Stores => "store",
            Domain::Shipments => "shipment",
            Domain::Recommendations => "recommendation",
        }
    }

    pub fn from_source(source: &str) -> Option<Domain> {
        Domain::ALL.into_iter().find(|d| d.source() == source)
    }
}

/// A CloudEvents 1.0 event. Field names are the CloudEvents attribute names. `data` is a JSON
/// tree by default; a reader that only keeps it (the projection's rebuild) takes it as raw JSON
/// text (`Envelope<Box<RawValue>>`), so it is neither parsed into a tree nor written out again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<D = serde_json::Value> {
    pub specversion: String,
    pub id: Uuid,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The order id: the saga this event belongs to.
    pub subject: String,
    #[serde(with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    /// Version of `data`'s schema for this `type` (extension attribute).
    pub schemaversion: u32,
    /// The saga id (extension attribute).
    pub correlationid: String,
    /// The event that caused this one, if any (extension attribute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<Uuid>,
    /// The event's version in its aggregate's log (extension attribute): readers order one
    /// source's events by it, never by arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregateversion: Option<u64>,
    /// The aggregate whose log `aggregateversion` counts in, when it is not the order's own
    /// (extension attribute): `warehouse`, or `warehouse.2` for one SKU shard of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregateid: Option<String>,
    pub data: D,
}

impl Envelope {
    /// A new event about order `subject`, published by `domain`'s service.
    /// The subject must be a single NATS token (no `.`, `*`, `>` or whitespace).
    pub fn new(
        domain: Domain,
        event_type: impl Into<String>,
        subject: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<Envelope, BusError> {
        let subject = subject.into();
        let event_type = event_type.into();
        validate_token("subject", &subject)?;
        validate_token("type", &event_type)?;
        Ok(Envelope {
            specversion: SPEC_VERSION.into(),
            id: Uuid::now_v7(),
            source: domain.source().into(),
            event_type,
            correlationid: subject.clone(),
            subject,
            // The wire carries milliseconds; keep no more, so a round trip is exact.
            time: Utc::now().trunc_subsecs(3),
            datacontenttype: JSON.into(),
            schemaversion: 1,
            causationid: None,
            aggregateversion: None,
            aggregateid: None,
            data,
        })
    }

    /// This event was caused by `cause`: same saga, and `causationid` points at it.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlationid = cause.correlationid.clone();
        self.causationid = Some(cause.id);
        self
    }

    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schemaversion = version;
        self
    }

    /// W3C trace context: trace id = correlation id (when it is a UUID), span id from the event id.
    pub fn traceparent(&self) -> String {
        let trace = Uuid::parse_str(&self.correlationid)
            .map(|u| u.simple().to_string())
            .unwrap_or_else(|_| self.id.simple().to_string());
        let span = &self.id.simple().to_string()[16..];
        format!("00-{trace}-{span}-01")
    }

    pub fn to_json(&self) -> Result<String, BusError> {
        serde_json::to_string(self).map_err(|e| BusError::Invalid(e.to_string()))
    }

    /// Parse and check an event from the wire. Anything that is not a CloudEvents 1.0 event of
    /// ours is an error whose text says why (it becomes the DLQ reason).
    pub fn from_slice(bytes: &[u8]) -> Result<Envelope, BusError> {
        Envelope::decode(bytes)
    }

    /// The outbox row that publishes this event: subject, `Nats-Msg-Id` = id, `traceparent`.
    pub fn to_outbox_message(&self) -> Result<OutboxMessage, BusError> {
        self.to_outbox_message_from_json(self.to_json()?)
    }

    /// [`Envelope::to_outbox_message`] for a caller that already has this envelope's
    /// [`Envelope::to_json`] (e.g. to store it too), so the event is serialized once.
    pub fn to_outbox_message_from_json(&self, json: String) -> Result<OutboxMessage, BusError> {
        if json.len() > MAX_EVENT_BYTES {
            return Err(BusError::Invalid(format!(
                "a {} event of {} bytes is over the {MAX_EVENT_BYTES}-byte limit",
                self.event_type,
                json.len()
            )));
        }
        Ok(OutboxMessage {
            event_id: self.id,
            subject: self.nats_subject()?,
            payload: json,
            headers: vec![(TRACEPARENT.into(), self.traceparent())],
        })
    }
}

impl<D> Envelope<D> {
    /// The owning domain, from `source`.
    pub fn domain(&self) -> Result<Domain, BusError> {
        Domain::from_source(&self.source)
            .ok_or_else(|| BusError::Invalid(format!("unknown source {:?}", self.source)))
    }

    /// `<domain>.<event_name>.<order_id>`, e.g. `payments.payment_approved.0193…`.
    pub fn nats_subject(&self) -> Result<String, BusError> {
        Ok(format!(
            "{}.{}.{}",
            self.domain()?.subject_prefix(),
            snake_case(&self.event_type),
            self.subject
        ))
    }

    /// An event is believed only where it belongs: the stream subject it arrived on must be the
    /// one its `source`, `type` and `subject` name, plus a partition (so a payment event on
    /// `shipments.>`, or an event about one order on another order's subject, is refused with
    /// the reason). The broker appends the partition; no one may publish a subject with one.
    pub fn check_arrived_on(&self, subject: &str) -> Result<(), BusError> {
        let expected = self.nats_subject()?;
        if crate::partition::split_stored(subject)
            .is_some_and(|(published, _)| published == expected)
        {
            return Ok(());
        }
        Err(BusError::Misplaced(format!(
            "a {} event from {} about {} belongs on {expected}.<partition>, but arrived on {subject}",
            self.event_type, self.source, self.subject
        )))
    }
}

impl<'de, D: Deserialize<'de>> Envelope<D> {
    /// [`Envelope::from_slice`], with `data` read as `D`: the same checks of the envelope. Read
    /// as raw text, `data` is only checked to be JSON: a tree would also refuse a lone UTF-16
    /// surrogate, a number beyond `f64` or nesting past 128, which no service of ours writes
    /// (they encode typed events) and no one else may publish on their subjects.
    pub fn decode(bytes: &'de [u8]) -> Result<Envelope<D>, BusError> {
        let envelope: Envelope<D> =
            serde_json::from_slice(bytes).map_err(|e| BusError::Decode(e.to_string()))?;
        if envelope.specversion != SPEC_VERSION {
            return Err(BusError::Decode(format!(
                "unsupported specversion {:?}",
                envelope.specversion
            )));
        }
        envelope
            .domain()
            .map_err(|e| BusError::Decode(e.to_string()))?;
        // The subject is the saga id and becomes part of every reaction's NATS subject.
        validate_token("subject", &envelope.subject)
            .map_err(|e| BusError::Decode(e.to_string()))?;
        Ok(envelope)
    }
}

fn validate_token(what: &str, token: &str) -> Result<(), BusError> {
    let bad = token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(BusError::Invalid(format!(
            "{what} {token:?} is not a single NATS subject token of at most {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(())
}

/// `PaymentApproved` → `payment_approved`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 3339 with millisecond precision and `Z`, as CloudEvents' `time` expects.
mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn oversized_subjects_and_events_are_refused_before_the_outbox() {
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(Envelope::new(Domain::Orders, "OrderCreated", &long, json!({})).is_err());
        let order = "0193a000-0000-7000-8000-000000000001";
        let big = json!({ "blob": "y".repeat(MAX_EVENT_BYTES) });
        let e = Envelope::new(Domain::Orders, "OrderCreated", order, big).unwrap();
        let err = e.to_outbox_message().unwrap_err();
        assert!(err.to_string().contains("byte limit"), "{err}");
        let small = Envelope::new(Domain::Orders, "OrderCreated", order, json!({})).unwrap();
        assert!(small.to_outbox_message().is_ok());
    }

    #[test]
    fn an_event_is_believed_only_on_its_own_subject() {
        let order = "0193a000-0000-7000-8000-000000000001";
        let e = Envelope::new(Domain::Payments, "PaymentRefunded", order, json!({})).unwrap();
        assert!(e
            .check_arrived_on(&format!("payments.payment_refunded.{order}.3"))
            .is_ok());
        for wrong in [
            format!("shipments.payment_refunded.{order}.0"),
            format!("payments.payment_approved.{order}.0"),
            "payments.payment_refunded.another-order.0".to_string(),
            // Stored subjects carry the partition the broker appended.
            format!("payments.payment_refunded.{order}"),
            format!("payments.payment_refunded.{order}.x"),
        ] {
            let err = e.check_arrived_on(&wrong).unwrap_err();
            assert!(err.to_string().contains("belongs on payments."), "{err}");
        }
    }

    fn golden() -> Envelope {
        Envelope {
            specversion: "1.0".into(),
            id: Uuid::parse_str("0193a5b0-7c1e-7000-8000-000000000002").unwrap(),
            source: "payment".into(),
            event_type: "PaymentApproved".into(),
            subject: "0193a5b0-7c1e-7000-8000-000000000001".into(),
            time: DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            datacontenttype: "application/json".into(),
            schemaversion: 1,
            correlationid: "0193a5b0-7c1e-7000-8000-000000000001".into(),
            causationid: Some(Uuid::parse_str("0193a5b0-7c1e-7000-8000-000000000003").unwrap()),
            aggregateversion: Some(7),
            aggregateid: None,
            data: json!({"amount": 1200, "method": "card"}),
        }
    }

    #[test]
    fn golden_json() {
        let expected = r#"{"specversion":"1.0","id":"0193a5b0-7c1e-7000-8000-000000000002","source":"payment","type":"PaymentApproved","subject":"0193a5b0-7c1e-7000-8000-000000000001","time":"2026-11-24T10:00:00.123Z","datacontenttype":"application/json","schemaversion":1,"correlationid":"0193a5b0-7c1e-7000-8000-000000000001","causationid":"0193a5b0-7c1e-7000-8000-000000000003","aggregateversion":7,"data":{"amount":1200,"method":"card"}}"#;
        assert_eq!(golden().to_json().unwrap(), expected);
        assert_eq!(Envelope::from_slice(expected.as_bytes()).unwrap(), golden());
    }

    #[test]
    fn round_trip_of_a_new_event() {
        let cause = Envelope::new(Domain::Orders, "OrderCreated", "o-1", json!({})).unwrap();
        let event = Envelope::new(
            Domain::Payments,
            "PaymentApproved",
            "o-1",
            json!({"x": [1]}),
        )
        .unwrap()
        .caused_by(&cause);
        assert_eq!(event.causationid, Some(cause.id));
        assert_eq!(event.correlationid, "o-1");
        let wire = event.to_json().unwrap();
        assert_eq!(Envelope::from_slice(wire.as_bytes()).unwrap(), event);
    }

    #[test]
    fn subject_is_domain_event_name_order() {
        let e = golden();
        assert_eq!(
            e.nats_subject().unwrap(),
            "payments.payment_approved.0193a5b0-7c1e-7000-8000-000000000001"
        );
        let row = e.to_outbox_message().unwrap();
        assert_eq!(row.event_id, e.id);
        assert_eq!(
            row.headers,
            vec![(
                "traceparent".to_string(),
                "00-0193a5b07c1e70008000000000000001-8000000000000002-01".to_string()
            )]
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        for subject in ["", "a.b", "a*", ">", "a b"] {
            assert!(Envelope::new(Domain::Orders, "OrderCreated", subject, json!({})).is_err());
        }
    }

    /// Read with its data as raw text, an event passes the same checks, and its data is the
    /// text on the wire.
    #[test]
    fn an_event_read_with_raw_data_is_checked_alike_and_keeps_its_text() {
        let wire = serde_json::to_vec(&golden()).unwrap();
        let raw = Envelope::<Box<serde_json::value::RawValue>>::decode(&wire).unwrap();
        assert_eq!(
            raw.data.get(),
            serde_json::to_string(&golden().data).unwrap()
        );
        assert_eq!(raw.id, golden().id);
        let mut alien = golden();
        alien.source = "mars".into();
        let wire = serde_json::to_vec(&alien).unwrap();
        assert!(Envelope::<Box<serde_json::value::RawValue>>::decode(&wire).is_err());
        let mut bad = golden();
        bad.subject = "a.b".into();
        let wire = serde_json::to_vec(&bad).unwrap();
        let err = Envelope::<Box<serde_json::value::RawValue>>::decode(&wire).unwrap_err();
        assert!(err.to_string().contains("subject"), "{err}");
    }

    #[test]
    fn foreign_payloads_are_decode_errors_with_a_reason() {
        for bad in [
            &b"not json"[..],
            br#"{"specversion":"0.3"}"#,
            br#"{"hello":"world"}"#,
        ] {
            let err = Envelope::from_slice(bad).unwrap_err();
            assert!(matches!(err, BusError::Decode(_)), "{err}");
        }
        let mut alien = golden();
        alien.source = "mars".into();
        let wire = serde_json::to_vec(&alien).unwrap();
        assert!(Envelope::from_slice(&wire).is_err());
        let mut old = golden();
        old.specversion = "0.3".into();
        let wire = serde_json::to_vec(&old).unwrap();
        assert!(Envelope::from_slice(&wire)
            .unwrap_err()
            .to_string()
            .contains("specversion"));
        for subject in ["", "a.b", "x y", "o*"] {
            let mut bad = golden();
            bad.subject = subject.into();
            let wire = serde_json::to_vec(&bad).unwrap();
            let err = Envelope::from_slice(&wire).unwrap_err();
            assert!(err.to_string().contains("subject"), "{subject:?}: {err}");
        }
    }

    #[test]
    fn snake_case_of_event_names() {
        assert_eq!(snake_case("PaymentApproved"), "payment_approved");
        assert_eq!(snake_case("OrderCancelRequested"), "order_cancel_requested");
    }
}
