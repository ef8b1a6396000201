//! Alerts in sled (tree `alerts`). Everything here is derived from the log and carries the
//! position it reflects:
//!
//! | key | value |
//! |---|---|
//! | `S` stream seq (u64 BE) | one [`AlertChange`] (JSON): the alert stream, in order, without gaps |
//! | `L` opening seq (u64 BE) rule | the alert's latest revision (JSON), listed newest first |
//! | `Mcheckpoint` | the engine's state header (position, stream seq, open alerts, locks) and the rules digest (JSON) |
//! | `K` map letter, key | the engine's state of one rule and key (JSON; see `engine::StateDelta`) |
//! | `T` alert id | the alert's latest triage ([`TriageState`], JSON), from its `alert_triaged` events |
//!
//! Changes and the checkpoint that covers them are written in one atomic batch; changes after
//! the last checkpoint are written again, identically, when the monitor resumes from it. A
//! checkpoint writes the header and the rows of the keys that changed since the one before it,
//! so its cost follows the events folded since, not the number of keys tracked. (A checkpoint
//! of the older format, the whole state in `Mcheckpoint`, is read as it is; the next one is
//! written whole, in rows.)

use serde::{Deserialize, Serialize};

use crate::domain::alerts::engine::{Alert, AlertChange, EngineState, StateDelta};
use crate::domain::alerts::rules::Severity;
use crate::error::{Error, Result};

const CHECKPOINT: &[u8] = b"Mcheckpoint";
/// The prefix of the engine state's rows.
const STATE_ROWS: &[u8] = b"K";

/// A stored checkpoint, read back.
pub struct Checkpoint {
    pub rules_digest: String,
    pub state: EngineState,
    /// Whether it is of the older format (the whole state in one value): the next checkpoint
    /// must then be written whole.
    pub whole: bool,
}

/// `Mcheckpoint` as stored: the header of the rows' format, or the whole state (older).
#[derive(Deserialize)]
struct StoredCheckpoint {
    rules_digest: String,
    #[serde(default)]
    header: Option<serde_json::Value>,
    #[serde(default)]
    state: Option<EngineState>,
}

/// Where an alert stands with the people handling it: its latest `alert_triaged` event (the
/// assignee is kept from the latest `assigned` one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageState {
    /// `acknowledged`, `assigned`, `resolved`, `false_positive`, `locked` or `unlocked`.
    pub action: String,
    /// Who did it (their token's name).
    pub operator: String,
    /// To whom it is assigned, if it ever was.
    pub assignee: Option<String>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub at: chrono::DateTime<chrono::Utc>,
    /// The event's seq.
    pub seq: u64,
}

/// Filters of `GET /v1/alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Opened at or after this event time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At least this severe.
    pub severity: Option<Severity>,
    pub rule: Option<String>,
    pub account: Option<String>,
}

impl AlertFilter {
    pub fn accepts(&self, a: &Alert) -> bool {
        self.since.is_none_or(|t| a.opened_at >= t)
            && self.severity.is_none_or(|s| a.severity >= s)
            && self.rule.as_deref().is_none_or(|r| a.rule == r)
            && self
                .account
                .as_deref()
                .is_none_or(|acc| a.accounts.iter().any(|x| x == acc))
    }
}

/// Rows a filtered listing looks at before returning a shorter page (bounds one request).
pub const LIST_SCAN_MAX: usize = 100_000;

#[derive(Clone)]
pub struct AlertStore {
    tree: sled::Tree,
}

fn seq_key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn latest_key(alert_id: &str) -> Option<Vec<u8>> {
    let (rule, seq) = alert_id.rsplit_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    let mut k = seq_key(b'L', seq).to_vec();
    k.extend_from_slice(rule.as_bytes());
    Some(k)
}

fn corrupt(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::corrupt_by(format!("alerts: {what}"), e)
}

impl AlertStore {
    pub fn new(tree: sled::Tree) -> AlertStore {
        AlertStore { tree }
    }

    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(v) = self.tree.get(CHECKPOINT).map_err(crate::store::from_sled)? else {
            return Ok(None);
        };
        let stored: StoredCheckpoint = serde_json::from_slice(&v).map_err(|e| corrupt("checkpoint", e))?;
        if let Some(state) = stored.state {
            return Ok(Some(Checkpoint {
                rules_digest: stored.rules_digest,
                state,
                whole: true,
            }));
        }
        let header = stored
            .header
            .ok_or_else(|| Error::corrupt("the alert checkpoint has no header"))?;
        let rows = self
            .tree
            .scan_prefix(STATE_ROWS)
            .map(|r| r.map(|(k, v)| (k[STATE_ROWS.len()..].to_vec(), v.to_vec())))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(crate::store::from_sled)?;
        let header = serde_json::to_vec(&header).expect("a value serializes");
        let state = EngineState::from_rows(&header, rows).map_err(|e| corrupt("checkpoint", e))?;
        Ok(Some(Checkpoint {
            rules_digest: stored.rules_digest,
            state,
            whole: false,
        }))
    }

    /// Writes a checkpoint: the delta's rows and its header, in one atomic batch.
    pub fn write_checkpoint(&self, delta: &StateDelta, rules_digest: &str) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in &delta.rows {
            let key = [STATE_ROWS, k].concat();
            match v {
                Some(v) => batch.insert(key, v.as_slice()),
                None => batch.remove(key),
            }
        }
        let header = std::str::from_utf8(&delta.header).expect("JSON is UTF-8");
        let value = format!(
            "{{\"rules_digest\":{},\"header\":{header}}}",
            serde_json::to_string(rules_digest).expect("a string serializes")
        );
        batch.insert(CHECKPOINT, value.as_bytes());
        self.tree.apply_batch(batch).map_err(crate::store::from_sled)?;
        Ok(())
    }

    /// Writes changes in one atomic batch.
    pub fn write(&self, changes: &[AlertChange]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for c in changes {
            batch.insert(
                &seq_key(b'S', c.stream_seq)[..],
                serde_json::to_vec(c).expect("alerts serialize"),
            );
            let key = latest_key(&c.alert.id).expect("alert ids are rule-seq");
            batch.insert(key, serde_json::to_vec(&c.alert).expect("alerts serialize"));
        }
        self.tree.apply_batch(batch).map_err(crate::store::from_sled)?;
        Ok(())
    }

    /// Records triage events, in log order (one written again after a restart changes nothing:
    /// an event older than the stored state is ignored).
    pub fn write_triage(&self, items: &[(String, TriageState)]) -> Result<()> {
        for (alert_id, t) in items {
            let key = [b"T".as_slice(), alert_id.as_bytes()].concat();
            let old = self.triage(alert_id)?;
            if old.as_ref().is_some_and(|o| o.seq >= t.seq) {
                continue;
            }
            let mut t = t.clone();
            if t.assignee.is_none() {
                t.assignee = old.and_then(|o| o.assignee);
            }
            self.tree
                .insert(key, serde_json::to_vec(&t).expect("triage serializes"))
                .map_err(crate::store::from_sled)?;
        }
        Ok(())
    }

    /// An alert's latest triage, if it has one.
    pub fn triage(&self, alert_id: &str) -> Result<Option<TriageState>> {
        let key = [b"T".as_slice(), alert_id.as_bytes()].concat();
        match self.tree.get(key).map_err(crate::store::from_sled)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| corrupt("triage", e)),
        }
    }

    /// The last stream seq stored.
    pub fn last_stream_seq(&self) -> Result<u64> {
        match self.tree.scan_prefix(b"S").next_back() {
            None => Ok(0),
            Some(r) => {
                let (k, _) = r.map_err(crate::store::from_sled)?;
                Ok(u64::from_be_bytes(
                    k[1..9].try_into().map_err(|e| corrupt("stream key", e))?,
                ))
            }
        }
    }

    /// Stream entries after `after`, oldest first, at most `limit`, up to `through`.
    pub fn changes_after(&self, after: u64, through: u64, limit: usize) -> Result<Vec<AlertChange>> {
        let mut out = Vec::new();
        if after >= through {
            return Ok(out);
        }
        for r in self
            .tree
            .range(seq_key(b'S', after + 1)..=seq_key(b'S', through))
            .take(limit)
        {
            let (_, v) = r.map_err(crate::store::from_sled)?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt("stream entry", e))?);
        }
        Ok(out)
    }

    /// One alert's latest revision.
    pub fn get(&self, alert_id: &str) -> Result<Option<Alert>> {
        let Some(key) = latest_key(alert_id) else {
            return Ok(None);
        };
        match self.tree.get(key).map_err(crate::store::from_sled)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| corrupt("alert", e)),
        }
    }

    /// Alerts newest first (by the event that opened them), filtered. `from` is the cursor: the
    /// id of the alert the page starts at (inclusive). Returns the page and the next cursor.
    pub fn list(&self, filter: &AlertFilter, from: Option<&str>, limit: usize) -> Result<(Vec<Alert>, Option<String>)> {
        let mut out = Vec::with_capacity(limit.min(1024));
        let start = seq_key(b'L', 0).to_vec();
        let rows = match from {
            Some(id) => {
                let end = latest_key(id)
                    .ok_or_else(|| Error::invalid("invalid_cursor", "cursor", "not a cursor from a previous page"))?;
                self.tree.range(start..=end)
            }
            None => self.tree.range(start..seq_key(b'M', 0).to_vec()),
        };
        for (scanned, r) in rows.rev().enumerate() {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            if out.len() == limit || scanned == LIST_SCAN_MAX {
                // Bounded work per request: the next page starts here.
                return Ok((out, Some(id_of_key(&k)?)));
            }
            let a: Alert = serde_json::from_slice(&v).map_err(|e| corrupt("alert", e))?;
            if filter.accepts(&a) {
                out.push(a);
            }
        }
        Ok((out, None))
    }
}

fn id_of_key(k: &[u8]) -> Result<String> {
    let seq = u64::from_be_bytes(k[1..9].try_into().map_err(|e| corrupt("alert key", e))?);
    let rule = std::str::from_utf8(&k[9..]).map_err(|e| corrupt("alert key", e))?;
    Ok(format!("{rule}-{seq}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::alerts::engine::Engine;

    /// A checkpoint of the older format (the whole state in one value) is read as it is and
    /// marked whole; one written in rows reads back to the same state.
    #[test]
    fn both_checkpoint_formats_read_back() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = AlertStore::new(db.open_tree("alerts").unwrap());
        let mut engine = Engine::new(crate::domain::alerts::RuleSet::default());
        let t0 = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        for seq in 1..=300u64 {
            let account = format!("acct-{}", seq % 7);
            let payload = if seq % 3 == 0 {
                bindledger_events::Payload::WalletBound {
                    binding_id: uuid::Uuid::from_u128(seq as u128),
                    provider: bindledger_domain::testing::alipay(),
                    wallet: bindledger_domain::testing::wallet((seq % 5) as u8),
                    factors: vec![],
                    agreement_id: "agr".into(),
                }
            } else {
                bindledger_events::Payload::PaymentFailed {
                    binding_id: uuid::Uuid::from_u128(seq as u128),
                    order_id: "o".into(),
                    amount_minor: 1,
                    currency: bindledger_events::Currency::CNY,
                    factors: vec![],
                    reason: bindledger_events::PaymentFailure::WrongPassword,
                }
            };
            let at = t0 + chrono::Duration::seconds(seq as i64);
            engine.apply(&bindledger_domain::testing::event(seq, &account, seq, at, payload));
        }
        assert_eq!(engine.state.position, 300);
        #[derive(Serialize)]
        struct Old<'a> {
            rules_digest: &'a str,
            state: &'a EngineState,
        }
        let old = serde_json::to_vec(&Old {
            rules_digest: "d",
            state: &engine.state,
        })
        .unwrap();
        store.tree.insert(CHECKPOINT, old).unwrap();
        let cp = store.checkpoint().unwrap().unwrap();
        assert!(cp.whole);
        assert_eq!(cp.state, engine.state);
        store.write_checkpoint(&engine.full(), "d").unwrap();
        let cp = store.checkpoint().unwrap().unwrap();
        assert!(!cp.whole);
        assert_eq!((cp.state, cp.rules_digest.as_str()), (engine.state.clone(), "d"));
    }
}
