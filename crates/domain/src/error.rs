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
    /// taking commands. `cause` is the operating system's error when there is one: a full
    /// disk is told apart by [`Error::code`] (`disk_full`) and [`Error::io_kind`].
    #[error("the storage failed: {what}")]
    StorageFailed {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// Something named by the caller does not exist. The message is fixed text (the name is
    /// the caller's own value and is not repeated).
    #[error("{0}")]
    NotFound(&'static str),
    /// A data directory holds no ledger log (operator tools; never an HTTP answer).
    #[error("no ledger log in {0}")]
    NoLog(String),
    /// The configuration (a file, the environment, a key file) is wrong. `cause` is the error
    /// under it when there is one (the TOML parser's, the file system's).
    #[error("configuration: {what}")]
    Config {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// A file, a thread or a connection outside the log failed; `cause` as above.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// The data directory is open in another process (sled locks it).
    #[error("{0} is in use by another process (sled holds an exclusive lock); read a running ledger through its HTTP event feed")]
    InUse(String),
    /// The configured secret is not the one this log was created with.
    #[error("the configured ledger secret is not the one this log was created with; refusing to open it (fingerprints would no longer match)")]
    SecretMismatch,
    /// The log or a projection is corrupt. `cause` is the error under it when there is one
    /// (the decoder's, the chain verifier's, sled's).
    #[error("corrupt data: {what}")]
    Corrupt {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
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
    /// This ledger is one shard of a cluster and the account belongs to another (the shard
    /// map names it); nothing was recorded.
    #[error("this account belongs to another shard of the cluster; send the command to the shard that owns it")]
    Misdirected,
    /// The account's personal data was erased: it takes no more commands.
    #[error("this account's personal data was erased; it takes no more commands")]
    Erased,
}

impl Error {
    pub fn invalid(code: &'static str, field: &'static str, message: &'static str) -> Error {
        Error::Invalid {
            code,
            field: Some(field),
            message,
        }
    }

    /// A storage failure with no operating-system error under it.
    pub fn storage(what: impl Into<String>) -> Error {
        Error::StorageFailed {
            what: what.into(),
            cause: None,
        }
    }

    /// A storage failure caused by an I/O error, which it keeps as its source.
    pub fn storage_io(what: impl Into<String>, cause: std::io::Error) -> Error {
        Error::StorageFailed {
            what: what.into(),
            cause: Some(Cause::new(cause)),
        }
    }

    /// A failure outside the log with no operating-system error under it.
    pub fn io(what: impl Into<String>) -> Error {
        Error::Io {
            what: what.into(),
            cause: None,
        }
    }

    /// A failure outside the log caused by an I/O error, which it keeps as its source.
    pub fn io_caused(what: impl Into<String>, cause: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            cause: Some(Cause::new(cause)),
        }
    }

    /// Corrupt data found as such (a check that fails), with no error under it.
    pub fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            cause: None,
        }
    }

    /// Corrupt data that another error (a decoder's, a verifier's) found, kept as its source.
    pub fn corrupt_by(what: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Corrupt {
            what: what.into(),
            cause: Some(Cause::new(cause)),
        }
    }

    /// A configuration that is wrong as such, with no error under it.
    pub fn config(what: impl Into<String>) -> Error {
        Error::Config {
            what: what.into(),
            cause: None,
        }
    }

    /// A configuration that another error (the TOML parser's, the file system's) refused,
    /// kept as its source.
    pub fn config_by(what: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Config {
            what: what.into(),
            cause: Some(Cause::new(cause)),
        }
    }

    /// The kind of the I/O error under this one, if there is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::StorageFailed { cause, .. } | Error::Io { cause, .. } => cause.as_ref().and_then(Cause::kind),
            _ => None,
        }
    }

    /// The disk (or the file system's quota) is full.
    pub fn disk_full(&self) -> bool {
        match self {
            Error::StorageFailed { cause: Some(c), .. } | Error::Io { cause: Some(c), .. } => c.disk_full(),
            _ => false,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { code, .. } => code,
            Error::IdempotencyKeyReused => "idempotency_key_reused",
            Error::VersionConflict { .. } => "version_conflict",
            Error::Overloaded(_) => "overloaded",
            e @ (Error::StorageFailed { .. } | Error::Io { .. }) if e.disk_full() => "disk_full",
            Error::StorageFailed { .. } => "storage_failed",
            Error::NotFound(_) => "not_found",
            Error::NoLog(_) => "no_log",
            Error::Config { .. } => "config",
            Error::Io { .. } => "io",
            Error::InUse(_) => "in_use",
            Error::SecretMismatch => "secret_mismatch",
            Error::Corrupt { .. } => "corrupt",
            Error::ShuttingDown => "shutting_down",
            Error::OutcomeUnknown => "outcome_unknown",
            Error::NotPrimary => "not_primary",
            Error::Misdirected => "misdirected",
            Error::Erased => "account_erased",
            Error::Halted(_) => "halted",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error under a failure: the operating system's under a storage or I/O failure, the
/// decoder's, parser's or verifier's under corrupt data or a wrong configuration. Shared, so
/// that one failure can answer every command that waited on it and the error stays `Clone`.
/// Two causes are equal when their texts are (an OS error's text carries its number).
#[derive(Debug, Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(std::sync::Arc::new(e))
    }

    /// The I/O error it is, if it is one.
    fn io(&self) -> Option<&std::io::Error> {
        self.0.downcast_ref::<std::io::Error>()
    }

    /// The kind of the I/O error it is, if it is one.
    pub fn kind(&self) -> Option<std::io::ErrorKind> {
        self.io().map(std::io::Error::kind)
    }

    /// ENOSPC or EDQUOT, by kind (sled passes the operating system's error on re-wrapped, with
    /// its kind but without its number) or by number.
    pub fn disk_full(&self) -> bool {
        self.io().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || matches!(e.raw_os_error(), Some(28) | Some(122))
        })
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

/// An error and every cause under it, joined by ": " (as `anyhow` prints `{:#}`): what an
/// operator reads in a log line or on standard error.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_has_its_own_code_and_keeps_its_cause() {
        let full = Error::storage_io("writing the log", std::io::Error::from_raw_os_error(28));
        assert_eq!(full.code(), "disk_full");
        assert!(full.disk_full());
        assert_eq!(full.io_kind(), Some(std::io::Error::from_raw_os_error(28).kind()));
        let source = std::error::Error::source(&full).expect("a source");
        assert!(source.to_string().contains("No space left"), "{source}");
        assert_eq!(
            full.to_string(),
            "the storage failed: writing the log",
            "the cause is not repeated"
        );
        assert!(
            chain(&full).ends_with("writing the log: No space left on device (os error 28)"),
            "{}",
            chain(&full)
        );
        let other = Error::storage_io("writing the log", std::io::Error::from_raw_os_error(5));
        assert_eq!(other.code(), "storage_failed");
        assert!(other.io_kind().is_some());
        assert_ne!(full, other);
        assert_eq!(Error::storage("stopped").code(), "storage_failed");
        assert_eq!(
            Error::io_caused("x", std::io::Error::from_raw_os_error(122)).code(),
            "disk_full"
        );
    }

    #[test]
    fn corrupt_data_and_a_wrong_configuration_keep_the_error_under_them() {
        let decode = bindledger_events::decode(b"{").unwrap_err();
        let e = Error::corrupt_by("event 7", decode.clone());
        assert_eq!(e.code(), "corrupt");
        assert_eq!(e.to_string(), "corrupt data: event 7", "the cause is not repeated");
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), decode.to_string());
        assert_eq!(chain(&e), format!("corrupt data: event 7: {decode}"));
        assert!(std::error::Error::source(&Error::corrupt("a check failed")).is_none());
        let io = std::io::Error::from_raw_os_error(2);
        let c = Error::config_by("reading rules.toml", io);
        assert_eq!(c.code(), "config");
        assert!(
            chain(&c).starts_with("configuration: reading rules.toml: No such file"),
            "{}",
            chain(&c)
        );
        assert_ne!(c, Error::config("reading rules.toml"), "the cause is part of the error");
    }
}
