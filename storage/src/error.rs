use std::path::PathBuf;

/// What went wrong, phrased as what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (or another `Store` in this one) holds the database. Stop the other one.
    #[error("database {path} is locked by another process; stop it or choose another --data-dir")]
    Locked { path: PathBuf },

    /// The files on disk cannot be read back. Restore them, or delete the directory and rebuild.
    #[error(
        "database {path} is corrupt ({reason}); restore it or delete it to rebuild from the stream"
    )]
    Corrupt { path: PathBuf, reason: String },

    /// The directory could not be opened at all (permissions, not a directory, disk full).
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Optimistic concurrency: someone appended to the aggregate since it was loaded. Reload, retry.
    #[error("version conflict on {aggregate_id}: expected version {expected}, found {actual}")]
    Conflict {
        aggregate_id: String,
        expected: u64,
        actual: u64,
    },

    /// The aggregate id is empty or longer than [`crate::events::MAX_AGGREGATE_ID_BYTES`].
    #[error("invalid aggregate id {aggregate_id:?}: must be 1 to 255 bytes")]
    InvalidAggregateId { aggregate_id: String },

    /// A value on disk did not decode; the database was written by an incompatible version.
    #[error("undecodable {what} in the database: {source}")]
    Codec {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A binary value on disk did not decode (truncated, or not what it should be).
    #[error("undecodable {what} in the database: {reason}")]
    Malformed { what: &'static str, reason: String },

    /// The disk did not confirm a flush (fsync failed): nothing that depends on it is
    /// acknowledged. Check the disk; the process should be restarted.
    #[error("cannot make database {path} durable (fsync failed): {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A flush failed before (see `cause`): what it should have made durable may be lost
    /// although a later `fdatasync` succeeds, so the store proves and commits nothing more.
    /// Restart the process: it opens the database from what is on disk, and what was not
    /// acknowledged is delivered again.
    #[error(
        "database {path} takes no writes since a flush failed ({cause}); restart to open it \
         again from what is on disk"
    )]
    Poisoned { path: PathBuf, cause: String },

    /// The store belongs to a partition whose lease this instance does not hold now: nothing
    /// is written, flushed or published (see [`crate::fence`]).
    #[error("refused by the fence: {0}")]
    Fenced(#[from] crate::fence::Fenced),

    /// sled failed to read or write.
    #[error("database i/o failed: {0}")]
    Sled(#[from] sled::Error),
}

impl StorageError {
    pub(crate) fn codec(what: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| StorageError::Codec { what, source }
    }
}

impl From<sled::transaction::TransactionError<StorageError>> for StorageError {
    fn from(e: sled::transaction::TransactionError<StorageError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StorageError::Sled(e),
        }
    }
}
