//! Alerts in sled (tree `alerts`). Everything here is derived from the log and carries the
//! position it reflects:
//!
//! | key | value |
//! |---|---|
//! | `S` stream seq (u64 BE) | one [`AlertChange`] (JSON): the alert stream, in order, without gaps |
//! | `L` opening seq (u64 BE) rule | the alert's latest revision (JSON), listed newest first |
//! | `Mcheckpoint` | the engine's state header (position, stream seq, open alerts, locks) and the rules digest (JSON) |
//! | `D` blob number (u64 BE) | rows of the engine's state, up to 64 KiB a blob: each checkpoint's changed rows, or the whole state (see below) |
//! | `K` map letter, key | the engine's state of one rule and key (JSON), the format before `D`: read, and replaced by the next checkpoint |
//! | `T` alert id | the alert's latest triage ([`TriageState`], JSON), from its `alert_triaged` events |
//!
//! Changes and the checkpoint that covers them are written in one atomic batch; changes after
//! the last checkpoint are written again, identically, when the monitor resumes from it.
//!
//! **A checkpoint's cost follows the events folded since the one before it, not the number of
//! keys tracked.** It writes the header and the rows of the keys that changed since, appended in
//! blobs of up to 64 KiB (`D`): a sled key per 64 KiB of rows, not per row (a sled key per row
//! made each row's cost grow with the tree: a fifth of the CPU at 200,000 accounts). The blobs
//! are read in order, a later row replacing an earlier one. When the blobs since the last
//! whole checkpoint outgrow twice its size, the next checkpoint is written whole and the older
//! blobs removed, in the same batch: each row is written at most about three times, the bytes
//! stored stay within about three times the state's. (A checkpoint of an older format, the
//! whole state in `Mcheckpoint` or one row per key under `K`, is read as it is; the next one is
//! written whole.)

use serde::{Deserialize, Serialize};

use crate::domain::alerts::engine::{Alert, AlertChange, EngineState, StateDelta};
use crate::domain::alerts::rules::Severity;
use crate::error::{Error, Result};

const CHECKPOINT: &[u8] = b"Mcheckpoint";
/// The prefix of the engine state's rows, one sled key each (the format before blobs).
const STATE_ROWS: &[u8] = b"K";
/// The prefix of the blobs of the engine state's rows.
const STATE_BLOBS: u8 = b'D';
/// A checkpoint's rows go in blobs of about this many bytes at most: sled keeps a value inside
/// its tree node and writes the whole node again whenever one of its keys changes, so values
/// of megabytes made every checkpoint rewrite megabytes (measured: nodes of 46-122 MB).
const BLOB_BYTES_MAX: usize = 64 << 10;

/// A stored checkpoint, read back.
pub struct Checkpoint {
    pub rules_digest: String,
    pub state: EngineState,
    /// Whether it is of an older format (the whole state in one value, or a row per sled
    /// key): the next checkpoint must then be written whole.
    pub whole: bool,
    /// Bytes of the last whole checkpoint's rows, and of the blobs written since it.
    pub sizes: CheckpointSizes,
}

/// What the monitor needs to decide when a checkpoint is written whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSizes {
    /// The rows' bytes of the last whole checkpoint.
    pub whole: u64,
    /// The rows' bytes of the blobs written since.
    pub since: u64,
}

impl CheckpointSizes {
    /// Whether the next checkpoint should be written whole: the blobs since the last whole one
    /// outgrew twice its size (and 1 MiB, so that a small state is not rewritten each time).
    pub fn whole_due(&self) -> bool {
        self.since > (2 * self.whole).max(1 << 20)
    }
}

/// The bytes a checkpoint's rows take in a blob.
pub fn rows_bytes(delta: &StateDelta) -> u64 {
    delta
        .rows
        .iter()
        .map(|(k, v)| 9 + k.len() as u64 + v.as_ref().map_or(0, |v| v.len() as u64))
        .sum()
}

/// Appends a row to a blob: the key's length (u32 BE) and bytes, then `0` for a removed row,
/// or `1`, the value's length (u32 BE) and bytes.
fn encode_row((k, v): &(Vec<u8>, Option<Vec<u8>>), out: &mut Vec<u8>) {
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
}

/// Applies a blob's rows to `rows`, in order; `None` if the blob does not read.
fn apply_blob(blob: &[u8], rows: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Option<()> {
    fn take<'b>(b: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut b = blob;
    while !b.is_empty() {
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        match take(&mut b, 1)?[0] {
            0 => {
                rows.remove(&key);
            }
            1 => {
                let n = len(&mut b)?;
                rows.insert(key, take(&mut b, n)?.to_vec());
            }
            _ => return None,
        }
    }
    Some(())
}

fn blob_key(n: u64) -> [u8; 9] {
    seq_key(STATE_BLOBS, n)
}

/// The number of the blob stored under `key` (see [`blob_key`]).
fn blob_number(key: &[u8]) -> u64 {
    key.get(1..9)
        .and_then(|n| n.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// `Mcheckpoint` as stored: the header of the rows' format, or the whole state (older).
#[derive(Deserialize)]
struct StoredCheckpoint {
    rules_digest: String,
    #[serde(default)]
    sizes: Option<CheckpointSizes>,
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
                sizes: CheckpointSizes::default(),
            }));
        }
        let header = stored
            .header
            .ok_or_else(|| Error::corrupt("the alert checkpoint has no header"))?;
        // The older rows, one sled key each, then the blobs in order over them.
        let mut rows = std::collections::BTreeMap::new();
        for r in self.tree.scan_prefix(STATE_ROWS) {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            rows.insert(k[STATE_ROWS.len()..].to_vec(), v.to_vec());
        }
        let older_rows = !rows.is_empty();
        for r in self.tree.scan_prefix([STATE_BLOBS]) {
            let (k, blob) = r.map_err(crate::store::from_sled)?;
            apply_blob(&blob, &mut rows)
                .ok_or_else(|| Error::corrupt(format!("alerts: checkpoint blob {} does not read", blob_number(&k))))?;
        }
        let header = serde_json::to_vec(&header).expect("a value serializes");
        let state = EngineState::from_rows(&header, rows).map_err(|e| corrupt("checkpoint", e))?;
        Ok(Some(Checkpoint {
            rules_digest: stored.rules_digest,
            state,
            whole: older_rows,
            sizes: stored.sizes.unwrap_or_default(),
        }))
    }

    /// Stores a checkpoint: its rows appended in blobs of up to [`BLOB_BYTES_MAX`], or
    /// (`whole`) the whole state's rows in blobs that replace every older one (and the rows of
    /// the format before blobs); with the header, in one atomic batch.
    pub fn write_checkpoint(
        &self,
        delta: &StateDelta,
        rules_digest: &str,
        whole: bool,
        sizes: CheckpointSizes,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        let last = self
            .tree
            .scan_prefix([STATE_BLOBS])
            .next_back()
            .transpose()
            .map_err(crate::store::from_sled)?
            .map_or(0, |(k, _)| blob_number(&k));
        if whole {
            for r in self.tree.scan_prefix([STATE_BLOBS]).keys() {
                batch.remove(r.map_err(crate::store::from_sled)?);
            }
            for r in self.tree.scan_prefix(STATE_ROWS).keys() {
                batch.remove(r.map_err(crate::store::from_sled)?);
            }
        }
        let mut next = last + 1;
        let mut blob = Vec::new();
        for row in &delta.rows {
            encode_row(row, &mut blob);
            if blob.len() >= BLOB_BYTES_MAX {
                batch.insert(&blob_key(next)[..], std::mem::take(&mut blob));
                next += 1;
            }
        }
        if !blob.is_empty() {
            batch.insert(&blob_key(next)[..], blob);
        }
        let header = std::str::from_utf8(&delta.header).expect("JSON is UTF-8");
        let value = format!(
            "{{\"rules_digest\":{},\"sizes\":{},\"header\":{header}}}",
            serde_json::to_string(rules_digest).expect("a string serializes"),
            serde_json::to_string(&sizes).expect("sizes serialize"),
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

    /// Folds events `range` into `engine`: binds and wrong passwords over `accounts` accounts.
    fn fold(engine: &mut Engine, range: std::ops::RangeInclusive<u64>, accounts: u64) {
        let t0 = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        for seq in range {
            let account = format!("acct-{}", seq % accounts);
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
            // Minutes apart late in the run, so that sweeps drop keys between checkpoints.
            let at = t0 + chrono::Duration::seconds(if seq > 2_000 { seq as i64 * 60 } else { seq as i64 });
            engine.apply(&bindledger_domain::testing::event(seq, &account, seq, at, payload));
        }
    }

    fn blobs(store: &AlertStore) -> usize {
        store.tree.scan_prefix([STATE_BLOBS]).count()
    }

    /// A checkpoint of the older format (the whole state in one value) is read as it is and
    /// marked whole; one written in blobs reads back to the same state.
    #[test]
    fn both_checkpoint_formats_read_back() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = AlertStore::new(db.open_tree("alerts").unwrap());
        let mut engine = Engine::new(crate::domain::alerts::RuleSet::default());
        fold(&mut engine, 1..=300, 7);
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
        let full = engine.full();
        let sizes = CheckpointSizes {
            whole: rows_bytes(&full),
            since: 0,
        };
        store.write_checkpoint(&full, "d", true, sizes).unwrap();
        let cp = store.checkpoint().unwrap().unwrap();
        assert!(!cp.whole);
        assert_eq!(cp.sizes, sizes);
        assert_eq!((cp.state, cp.rules_digest.as_str()), (engine.state.clone(), "d"));
    }

    /// Checkpoints appended as blobs, removals included, read back to the engine's state at
    /// every step; a whole one replaces every blob before it; rows of the format before blobs
    /// (a sled key each) are read, marked whole, and removed by the next whole checkpoint.
    #[test]
    fn blobs_add_up_to_the_state_and_a_whole_checkpoint_replaces_them() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = AlertStore::new(db.open_tree("alerts").unwrap());
        let mut engine = Engine::new(crate::domain::alerts::RuleSet::default());
        fold(&mut engine, 1..=500, 40);
        // The format before blobs: a header and a row per key.
        let full = engine.full();
        for (k, v) in &full.rows {
            store.tree.insert([STATE_ROWS, k].concat(), v.clone().unwrap()).unwrap();
        }
        let header = std::str::from_utf8(&full.header).unwrap();
        store
            .tree
            .insert(
                CHECKPOINT,
                format!("{{\"rules_digest\":\"d\",\"header\":{header}}}").as_bytes(),
            )
            .unwrap();
        let cp = store.checkpoint().unwrap().unwrap();
        assert!(cp.whole, "rows of the older format make the next checkpoint whole");
        assert_eq!(cp.state, engine.state);
        let mut sizes = CheckpointSizes::default();
        let mut dropped = 0;
        for round in 0..12u64 {
            let from = 501 + round * 400;
            fold(&mut engine, from..=from + 399, 40 + round * 30);
            let whole = round == 0 || round == 7;
            let rows = if whole { engine.full() } else { engine.delta() };
            dropped += rows.rows.iter().filter(|(_, v)| v.is_none()).count();
            if whole {
                sizes = CheckpointSizes {
                    whole: rows_bytes(&rows),
                    since: 0,
                };
            } else {
                sizes.since += rows_bytes(&rows);
            }
            let before = blobs(&store);
            store.write_checkpoint(&rows, "d", whole, sizes).unwrap();
            let cp = store.checkpoint().unwrap().unwrap();
            assert_eq!(cp.state, engine.state, "round {round}");
            assert!(!cp.whole);
            assert_eq!(cp.sizes, sizes);
            // A blob per 64 KiB of rows (the last row may run past it).
            let most = rows_bytes(&rows) as usize / BLOB_BYTES_MAX + 1;
            if whole {
                assert_eq!(store.tree.scan_prefix(STATE_ROWS).count(), 0, "the older rows are gone");
                assert!(
                    (1..=most).contains(&blobs(&store)),
                    "round {round}: only the whole state's blobs"
                );
            } else {
                assert!(
                    (before + 1..=before + most).contains(&blobs(&store)),
                    "round {round}: {before} -> {} blobs for {} bytes",
                    blobs(&store),
                    rows_bytes(&rows)
                );
            }
        }
        assert!(dropped > 0, "the run dropped keys, so removals were stored");
        // A blob cut short does not read.
        let (k, v) = store.tree.scan_prefix([STATE_BLOBS]).next_back().unwrap().unwrap();
        store.tree.insert(k, &v[..v.len() - 1]).unwrap();
        assert_eq!(store.checkpoint().err().map(|e| e.code()), Some("corrupt"));
    }

    #[test]
    fn a_whole_checkpoint_is_due_when_the_blobs_since_outgrow_twice_the_last() {
        let s = |whole, since| CheckpointSizes { whole, since };
        assert!(!s(10 << 20, 20 << 20).whole_due());
        assert!(s(10 << 20, (20 << 20) + 1).whole_due());
        assert!(!s(0, 1 << 20).whole_due(), "a small state is not rewritten each time");
        assert!(s(0, (1 << 20) + 1).whole_due());
    }
}
