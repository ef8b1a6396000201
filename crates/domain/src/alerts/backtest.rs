//! A candidate rules file run over a log beside the alerts actually raised (or those of the
//! rules in force): what it would add, remove and change. The audit tool's `backtest` and the
//! console's rules page both run it.

use serde::Serialize;

use super::engine::{Alert, AlertChange, Engine};
use super::rules::RuleSet;
use bindledger_events::Event;

/// What a candidate rules file would have raised over a log, against what was raised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backtest {
    pub events: u64,
    /// Alerts (latest revision) the candidate raises and the actual run did not.
    pub added: Vec<Alert>,
    /// Alerts the actual run raised and the candidate does not.
    pub removed: Vec<Alert>,
    /// Same id, different contents: (actual, candidate).
    pub changed: Vec<(Alert, Alert)>,
    pub unchanged: u64,
}

/// Each alert at its latest revision, by id.
pub fn latest(changes: impl IntoIterator<Item = AlertChange>) -> std::collections::BTreeMap<String, Alert> {
    changes.into_iter().map(|c| (c.alert.id.clone(), c.alert)).collect()
}

/// A candidate rules file run over a log, event by event, beside the rules the ledger runs
/// when the source holds no stored alerts.
pub struct Backtester {
    candidate: Engine,
    proposed: std::collections::BTreeMap<String, Alert>,
    current: Option<(Engine, std::collections::BTreeMap<String, Alert>)>,
    events: u64,
}

impl Backtester {
    /// `current`: the rules to compare with, when the alerts actually raised are not stored.
    pub fn new(candidate: RuleSet, current: Option<RuleSet>) -> Backtester {
        Backtester {
            candidate: Engine::new(candidate),
            proposed: Default::default(),
            current: current.map(|r| (Engine::new(r), Default::default())),
            events: 0,
        }
    }

    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        self.proposed.extend(latest(self.candidate.apply(e)));
        if let Some((engine, raised)) = &mut self.current {
            raised.extend(latest(engine.apply(e)));
        }
    }

    /// Compares the candidate's alerts with `actual` (the stored ones), or with the current
    /// rules' when none were given (by id: an alert's id is its rule and the event that opened
    /// it, so the same alert under both rule sets has the same id).
    pub fn finish(self, actual: Option<std::collections::BTreeMap<String, Alert>>) -> Backtest {
        let actual = actual.or(self.current.map(|(_, raised)| raised)).unwrap_or_default();
        let mut out = Backtest {
            events: self.events,
            ..Backtest::default()
        };
        for (id, a) in &self.proposed {
            match actual.get(id) {
                None => out.added.push(a.clone()),
                Some(b) if b != a => out.changed.push((b.clone(), a.clone())),
                Some(_) => out.unchanged += 1,
            }
        }
        out.removed = actual
            .iter()
            .filter(|(id, _)| !self.proposed.contains_key(*id))
            .map(|(_, a)| a.clone())
            .collect();
        out
    }
}
