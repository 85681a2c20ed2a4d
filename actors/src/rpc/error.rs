//! What a component answers when it cannot do what it was asked: the kind tells the caller what
//! to do. The HTTP gateway maps kinds to status codes; nothing below it knows HTTP.

/// How an unavailable answer starts when the service did answer, but could not read the
/// request: the asker runs another build.
pub const UNREADABLE: &str =
    "the service cannot read this build's request (do both run one build?)";

/// Why a request was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The request can never succeed as it is (invalid order, key reused for another order).
    #[error("{0}")]
    Rejected(String),
    /// It conflicts with the current state (the parcel has left; a concurrent change: retry).
    #[error("{0}")]
    Conflict(String),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The component cannot answer now (stopped, storage or broker trouble, no answer): retry.
    #[error("{0}")]
    Unavailable(String),
}

impl DomainError {
    pub fn rejected(message: impl Into<String>) -> Self {
        DomainError::Rejected(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        DomainError::Conflict(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        DomainError::NotFound(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        DomainError::Unavailable(message.into())
    }

    pub fn message(&self) -> &str {
        match self {
            DomainError::Rejected(m)
            | DomainError::Conflict(m)
            | DomainError::NotFound(m)
            | DomainError::Unavailable(m) => m,
        }
    }

    /// The NATS micro error code that carries the kind (HTTP-like numbers, as micro's
    /// convention is; `nats req` shows them).
    pub(crate) fn code(&self) -> usize {
        match self {
            DomainError::Rejected(_) => 422,
            DomainError::Conflict(_) => 409,
            DomainError::NotFound(_) => 404,
            DomainError::Unavailable(_) => 503,
        }
    }

    /// The kind a micro error code carries back; unknown codes are the server's trouble. A 400
    /// is a request the server could not read, and ours are encoded by this build's types: the
    /// two builds differ, a deployment's fault, so not the caller's to be told as a refusal.
    pub(crate) fn from_code(code: &str, message: String) -> Self {
        match code {
            "400" => DomainError::Unavailable(format!("{UNREADABLE}: {message}")),
            "422" => DomainError::Rejected(message),
            "409" => DomainError::Conflict(message),
            "404" => DomainError::NotFound(message),
            _ => DomainError::Unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DomainError;

    #[test]
    fn a_request_the_server_could_not_read_is_not_the_callers_refusal() {
        let unread = DomainError::from_code("400", "malformed place request: …".into());
        assert!(matches!(unread, DomainError::Unavailable(_)), "{unread:?}");
        assert!(unread.message().contains("malformed place request"));
        for kind in [
            DomainError::rejected("r"),
            DomainError::conflict("c"),
            DomainError::not_found("n"),
            DomainError::unavailable("u"),
        ] {
            let back = DomainError::from_code(&kind.code().to_string(), kind.message().into());
            assert_eq!(back, kind, "a kind survives its code");
        }
    }
}
