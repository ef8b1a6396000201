//! Kafka: the ledger's events, alerts and checkpoints on topics, and the ways back from them.
//!
//! - [`client`]: producer and consumer settings, topic creation and checks, backoff, status.
//! - [`partition`]: Kafka's default partitioner (murmur2), so analytics consumers agree.
//! - [`relay`]: the events relay: the log onto the topic, exactly once, without transactions.
//! - [`reader`]: a topic read back as one log, in `seq` order, with bounded memory.
//! - [`alerts`]: the alerts topic. [`checkpoints`]: the signed checkpoints topic.
//! - [`notifications`]: what the account holder is told, on its own topic, exactly once.
//! - [`replica`]: a read replica that follows the topic, and its promotion.
//! - [`restore`]: a data directory rebuilt from the topic and its signed checkpoints.
//! - [`terms`]: epochs and fences: a promotion stops the previous primary forking the chain.
//! - [`rejoin`]: a fenced primary quarantines what the chain does not hold, and follows it.
//! - [`cluster`]: the shard map's versions on the cluster topic, written by operators, followed by every node.
//! - [`keys`]: the accounts' wrapped data keys on the keys topic, for replicas and restores.
//! - [`analytics`]: the downstream analytics consumer (`bindledger consume`).

pub(crate) use bindledger_core::{self as ledger, config};
pub(crate) use bindledger_domain::{self as domain, error, Error, Result};

pub mod alerts;
pub mod analytics;
pub mod checkpoints;
pub mod client;
pub mod cluster;
pub mod keys;
pub mod notifications;
pub mod partition;
pub mod reader;
pub mod rejoin;
pub mod relay;
pub mod replica;
pub mod restore;
pub mod terms;

/// What can go wrong between the ledger and Kafka. The relays show it in their status and
/// start a new session after a backoff; the tools (restore, the audit tool) stop with it.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka failed an operation (`what` names it). The cause is in the text, which the
    /// relays' status and log lines show as it is; it is not also a `source`, so a printer of
    /// the whole chain does not say it twice.
    #[error("{what}: {cause}")]
    Client {
        what: String,
        cause: rdkafka::error::KafkaError,
    },
    /// The brokers did not answer within the time the operation allows.
    #[error("{0}: no answer from the brokers in time")]
    NoAnswer(String),
    /// The topic is not this ledger's to publish to (it holds another log's records, or may
    /// delete records in replicated mode): the relay refuses it rather than write over it.
    #[error("{0}")]
    Refused(String),
    /// A promotion to `epoch` fenced this node: it is no longer the primary (`terms`).
    #[error("a promotion to epoch {epoch} fenced this node: it is no longer the primary, and publishes and acknowledges nothing more")]
    Fenced { epoch: u64 },
    /// A message of this node's landed elsewhere than right after its previous one in that
    /// partition: something else wrote in between (the next session finds out what).
    #[error("{topic} partition {partition}: an event landed at offset {found}, not {expected}: another writer wrote in between")]
    Moved {
        topic: String,
        partition: i32,
        expected: i64,
        found: i64,
    },
    /// The topic or a record on it is not as the topic's contract (TOPIC.md) says.
    #[error("{0}")]
    Topic(String),
    /// The ledger under the relay failed (reading the log, saving a position).
    #[error(transparent)]
    Ledger(#[from] crate::Error),
}

/// For `map_err`: a librdkafka error, with what was being done.
pub(crate) fn client_error(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaError {
    let what = what.into();
    move |cause| KafkaError::Client { what, cause }
}
