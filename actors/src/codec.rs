//! Events in and out of their envelopes. A service's event enum is tagged
//! (`#[serde(tag = "type", content = "data")]`), so its variant name is the CloudEvents `type`
//! and its fields are `data`.

use bus::{BusError, Domain, Envelope};
use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// One service's events: variant names are the CloudEvents `type`s (past tense), fields `data`.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + 'static
{
    const DOMAIN: Domain;
}

/// An event that does not fit its envelope, or the other way round.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The envelope's `data` is not what its `type` says (it becomes a DLQ reason).
    #[error("{source_service} event {event_type}: {error}")]
    Undecodable {
        source_service: String,
        event_type: String,
        #[source]
        error: serde_json::Error,
    },
    /// A `source` that is no domain's.
    #[error("unknown event source {0:?}")]
    UnknownSource(String),
    /// An event enum that is not tagged as the envelope needs: a bug.
    #[error("{0} is not a tagged event")]
    Untagged(String),
    #[error("cannot encode {event}: {error}")]
    Unencodable {
        event: String,
        #[source]
        error: serde_json::Error,
    },
    /// The envelope cannot be built (e.g. a subject token the bus refuses).
    #[error(transparent)]
    Envelope(#[from] BusError),
}

/// The envelope that carries `event` in saga `saga`, caused by `cause` if any.
pub fn encode<E: DomainEvent>(
    event: &E,
    saga: &str,
    cause: Option<&Envelope>,
) -> Result<Envelope, CodecError> {
    let value = serde_json::to_value(event).map_err(|error| CodecError::Unencodable {
        event: format!("{event:?}"),
        error,
    })?;
    let Value::Object(mut fields) = value else {
        return Err(CodecError::Untagged(format!("{event:?}")));
    };
    let Some(Value::String(event_type)) = fields.remove("type") else {
        return Err(CodecError::Untagged(format!("{event:?}")));
    };
    let data = fields.remove("data").unwrap_or(Value::Null);
    let envelope = Envelope::new(E::DOMAIN, event_type, saga, data)?;
    Ok(match cause {
        Some(cause) => envelope.caused_by(cause),
        None => envelope,
    })
}

/// The event an envelope carries.
pub fn decode<E: DomainEvent>(envelope: &Envelope) -> Result<E, CodecError> {
    decode_data(&envelope.source, &envelope.event_type, &envelope.data)
}

/// What an event's `data` is read from: a JSON tree (an envelope's), or JSON text (a timeline's).
pub trait EventData {
    /// Read `seed` from this data.
    fn read<'de, S: DeserializeSeed<'de>>(
        &'de self,
        seed: S,
    ) -> Result<S::Value, serde_json::Error>;
}

impl EventData for Value {
    fn read<'de, S: DeserializeSeed<'de>>(
        &'de self,
        seed: S,
    ) -> Result<S::Value, serde_json::Error> {
        seed.deserialize(self)
    }
}

impl EventData for RawValue {
    fn read<'de, S: DeserializeSeed<'de>>(
        &'de self,
        seed: S,
    ) -> Result<S::Value, serde_json::Error> {
        let mut text = serde_json::Deserializer::from_str(self.get());
        let value = seed.deserialize(&mut text)?;
        text.end()?;
        Ok(value)
    }
}

/// The event of type `event_type` from `source` whose fields are `data` (as a timeline keeps it).
pub fn decode_data<E: DomainEvent, D: EventData + ?Sized>(
    source: &str,
    event_type: &str,
    data: &D,
) -> Result<E, CodecError> {
    let tagged = MapAccessDeserializer::new(Tagged {
        event_type,
        data,
        read: 0,
    });
    E::deserialize(tagged).map_err(|error| CodecError::Undecodable {
        source_service: source.to_string(),
        event_type: event_type.to_string(),
        error,
    })
}

/// `{"type": event_type, "data": data}` for serde, without building (and copying `data` into)
/// that object: the tag comes first, so serde decodes `data` straight into the variant. The
/// projection decodes every event of an order's timeline each time it refolds the row.
struct Tagged<'a, D: ?Sized> {
    event_type: &'a str,
    data: &'a D,
    /// Entries read so far.
    read: u8,
}

impl<'de, D: EventData + ?Sized> MapAccess<'de> for Tagged<'de, D> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match self.read {
            0 => "type",
            1 => "data",
            _ => return Ok(None),
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.read += 1;
        match self.read {
            1 => seed.deserialize(BorrowedStrDeserializer::new(self.event_type)),
            _ => self.data.read(seed),
        }
    }
}
