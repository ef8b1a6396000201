//! The domain: what a binding, a payment and an alert are, and the rules that decide them.
//! Pure code: nothing here reads a file, a clock, a socket or a database (a test in
//! `tests/layers.rs` holds this), so every function is a function of its arguments.
//!
//! - [`command`]: requests and their validation (before anything else happens).
//! - [`secret`]: secret strings, masking, keyed wallet fingerprints, the ledger secret.
//! - [`gateway`]: what the ledger asks of a wallet provider, and the failures it can answer.
//! - [`decide`]: the business rules: pure functions from state and facts to one event.
//! - [`projection`]: the fold from events to bindings and the wallet index.
//! - [`alerts`]: the anomaly rules and the engine that folds events into alerts.
//! - [`cache`]: the eviction rule of the ledger's bounded caches.
//! - [`notify`]: what the account holder is told, in Chinese and English.
//! - [`shard`]: an account's slot, and the map of slots to shards.

pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};

pub mod alerts;
pub mod cache;
pub mod command;
pub mod decide;
pub mod gateway;
pub mod notify;
pub mod projection;
pub mod secret;
pub mod shard;
