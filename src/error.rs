//! The library's one error enum. Each variant has a stable machine-readable code; the HTTP
//! layer maps them to status codes. Messages never contain a secret.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The command is malformed; nothing was recorded. `code` is stable, `field` names the
    /// offending input. Every part is `'static`, so a submitted value cannot end up in the
    /// message (or in a log line made from it): that holds by construction.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        field: Option<&'static str>,
        message: &'static str,
    },
    /// The idempotency key was used before for a different request. The key itself is not
    /// carried: answers and logs never repeat a submitted value.
    #[error("this idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// Optimistic concurrency: the account is not at the version the caller expected. Only the
    /// ledger's own version is carried: the expected one is the caller's value, which no
    /// message or log line may repeat.
    #[error("account is at version {actual}, not at the version the command expected")]
    VersionConflict { actual: u64 },
    /// A bounded queue is full; retry later.
    #[error("the ledger is overloaded ({0}); retry shortly")]
    Overloaded(&'static str),
    /// The storage failed (a write, a flush, or a read); a ledger whose writes failed stops
    /// taking commands.
    #[error("the storage failed: {0}")]
    StorageFailed(String),
    /// Something named by the caller does not exist. The message is fixed text (the name is
    /// the caller's own value and is not repeated).
    #[error("{0}")]
    NotFound(&'static str),
    /// A data directory holds no ledger log (operator tools; never an HTTP answer).
    #[error("no ledger log in {0}")]
    NoLog(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    /// The data directory is open in another process (sled locks it).
    #[error("{0} is in use by another process (sled holds an exclusive lock); read a running ledger through its HTTP event feed")]
    InUse(String),
    /// The configured secret is not the one this log was created with.
    #[error("the configured ledger secret is not the one this log was created with; refusing to open it (fingerprints would no longer match)")]
    SecretMismatch,
    /// The log or a projection is corrupt.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// Replicated mode: the event is durable on this ledger, but the Kafka cluster did not
    /// acknowledge it in time. The caller retries with the same idempotency key; the retry
    /// returns the original event once it is replicated, and never executes it twice.
    #[error("the Kafka cluster has not acknowledged the event in time; retry with the same idempotency key")]
    OutcomeUnknown,
    /// A part of this node died (a relay, the signer, the webhook sender): it takes no more
    /// commands and `/healthz` is `503` until its supervisor restarts it.
    #[error("this node halted: {0}; restart it")]
    Halted(&'static str),
    /// This node is a read replica: it takes no commands (the primary does).
    #[error("this ledger is a read replica and takes no commands; send them to the primary")]
    NotPrimary,
}

impl Error {
    pub fn invalid(code: &'static str, field: &'static str, message: &'static str) -> Error {
        Error::Invalid {
            code,
            field: Some(field),
            message,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { code, .. } => code,
            Error::IdempotencyKeyReused => "idempotency_key_reused",
            Error::VersionConflict { .. } => "version_conflict",
            Error::Overloaded(_) => "overloaded",
            Error::StorageFailed(_) => "storage_failed",
            Error::NotFound(_) => "not_found",
            Error::NoLog(_) => "no_log",
            Error::Config(_) => "config",
            Error::Io(_) => "io",
            Error::InUse(_) => "in_use",
            Error::SecretMismatch => "secret_mismatch",
            Error::Corrupt(_) => "corrupt",
            Error::ShuttingDown => "shutting_down",
            Error::OutcomeUnknown => "outcome_unknown",
            Error::NotPrimary => "not_primary",
            Error::Halted(_) => "halted",
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            // Where sled found it, without its (empty) backtrace.
            sled::Error::Corruption { at, .. } => Error::Corrupt(format!(
                "sled found its file corrupted{}",
                at.map(|at| format!(" at {at:?}")).unwrap_or_default()
            )),
            other => Error::StorageFailed(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
