//! Real-time security monitoring: the seven anomaly rules of the domain, evaluated as a
//! projection over the log.
//!
//! - [`rules`]: the rules file (TOML) with documented defaults.
//! - [`engine`]: the pure fold `(state, event) -> alert changes` over the ledger's `record_time`.
//!
//! The live monitor, its feed and the alerts' storage are the core's
//! ([`crate::ledger::alerts`]); the alerts topic is an adapter's.
//!
//! **Invariant: alerts depend only on the log (and the rules).** Rebuilding them from the log
//! gives the same alerts, ids and contents as the live run, across restarts.

pub mod backtest;
pub mod engine;
pub mod rules;

#[cfg(test)]
mod tests;

pub use engine::{Alert, AlertChange, AlertKey, Engine};

/// The fields in which two revisions of an alert differ, as `field: old -> new` (long values
/// shortened): what an auditor needs to see of a change, and nothing that stayed the same.
pub fn differences(was: &Alert, now: &Alert) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(was).unwrap_or_default(),
        serde_json::to_value(now).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let short = |v: Option<&serde_json::Value>| {
        let text = v.map_or("(none)".to_owned(), |v| v.to_string());
        if text.chars().count() > 60 {
            format!("{}...", text.chars().take(57).collect::<String>())
        } else {
            text
        }
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} -> {}", short(a.get(k)), short(b.get(k))))
        .collect()
}
pub use rules::{RuleSet, RulesError, Severity};
