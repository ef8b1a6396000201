//! Real-time security monitoring: the seven anomaly rules of the domain, evaluated as a
//! projection over the log.
//!
//! - [`rules`]: the rules file (TOML) with documented defaults.
//! - [`engine`]: the pure fold `(state, event) -> alert changes`; event time only.
//! - [`store`]: alerts, the alert stream and the engine's checkpoint in sled.
//! - [`feed`]: the live stream followers read (recent changes in memory, older ones in sled).
//! - [`monitor`]: the live thread fed by the flusher, with checkpoints and protective actions.
//! - [`publish`]: the alerts topic on Kafka.
//!
//! **Invariant: alerts depend only on the log (and the rules).** Rebuilding them from the log
//! gives the same alerts, ids and contents as the live run, across restarts.

pub mod engine;
pub mod feed;
pub mod monitor;
pub mod publish;
pub mod rules;
pub mod store;

#[cfg(test)]
mod tests;

pub use engine::{Alert, AlertChange, AlertKey, Engine};
pub use monitor::{Monitor, MonitorConfig, MonitorStatus};
pub use rules::{RuleSet, RulesError, Severity};
