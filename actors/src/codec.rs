//! Events in and out of their envelopes. A service's event enum is tagged
//! (`#[serde(tag = "type", content = "data")]`), so its variant name is the CloudEvents `type`
//! and its fields are `data`.

use bus::{BusError, Domain, Envelope};
use serde::de::DeserializeOwned;
use serde::Serialize;
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

/// The event of type `event_type` from `source` whose fields are `data` (as a timeline keeps it).
pub fn decode_data<E: DomainEvent>(
    source: &str,
    event_type: &str,
    data: &Value,
) -> Result<E, CodecError> {
    let value = serde_json::json!({ "type": event_type, "data": data });
    serde_json::from_value(value).map_err(|error| CodecError::Undecodable {
        source_service: source.to_string(),
        event_type: event_type.to_string(),
        error,
    })
}
