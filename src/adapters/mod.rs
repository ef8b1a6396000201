//! Adapters: how the ledger meets the world. Each depends on the ledger core and the domain,
//! never the reverse.
//!
//! - [`http`]: the HTTP API (axum) and the small HTTP client the tools use.
//! - [`kafka`]: the events relay, the alerts and checkpoints topics, the topic reader, read
//!   replicas, restore from the topic, and the analytics consumer.
//! - [`provider`]: the deterministic simulated wallet provider.
//! - [`webhook`]: signed webhooks of the alerts for the security team, with retries.

pub use bindledger_http as http;
pub use bindledger_http::webhook;
#[cfg(feature = "kafka")]
pub use bindledger_kafka as kafka;
pub mod provider;
