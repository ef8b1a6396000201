//! Kafka: the ledger's events, alerts and checkpoints on topics, and the ways back from them.
//!
//! - [`client`]: producer and consumer settings, topic creation and checks, backoff, status.
//! - [`partition`]: Kafka's default partitioner (murmur2), so analytics consumers agree.
//! - [`relay`]: the events relay: the log onto the topic, exactly once, without transactions.
//! - [`reader`]: a topic read back as one log, in `seq` order, with bounded memory.
//! - [`alerts`]: the alerts topic. [`checkpoints`]: the signed checkpoints topic.
//! - [`replica`]: a read replica that follows the topic, and its promotion.
//! - [`restore`]: a data directory rebuilt from the topic and its signed checkpoints.
//! - [`analytics`]: the downstream analytics consumer (`bindledger consume`).

pub mod alerts;
pub mod analytics;
pub mod checkpoints;
pub mod client;
pub mod partition;
pub mod reader;
pub mod relay;
pub mod replica;
pub mod restore;
