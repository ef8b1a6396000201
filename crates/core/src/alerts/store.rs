//! Alerts in sled (tree `alerts`). Everything here is derived from the log and carries the
//! position it reflects:
//!
//! | key | value |
//! |---|---|
//! | `S` stream seq (u64 BE) | one [`AlertChange`] (JSON): the alert stream, in order, without gaps |
//! | `L` opening seq (u64 BE) rule | the alert's latest revision (JSON), listed newest first |
//! | `Mcheckpoint` | the engine's state header (position, stream seq, open alerts, locks) and the rules digest (JSON) |
//! | `W` key | the engine's state of one key (account or wallet fingerprint): when it expires (i64 BE micros), then its windows in each rule (JSON) |
//! | `D` blob number (u64 BE) | the format before `W`: rows of the engine's state in blobs of up to 64 KiB; read, and replaced by the next checkpoint |
//! | `K` map letter, key | the format before `D`: the engine's state of one rule and key (JSON); read, and replaced by the next checkpoint |
//! | `T` alert id | the alert's latest triage ([`TriageState`], JSON), from its `alert_triaged` events |
//!
//! Changes and the checkpoint that covers them are written in one atomic batch; changes after
//! the last checkpoint are written again, identically, when the monitor resumes from it.
//!
//! **A checkpoint's cost follows the events folded since the one before it, not the number of
//! keys tracked.** It writes the header and the rows of the keys that changed since (`W`), in
//! place. The monitor holds a bounded number of keys in memory and reads the others' rows back
//! by key when an event needs them ([`AlertStore::window_row`]); a row expired (its key quiet for
//! longer than its rules look back) answers as no row, and the monitor removes expired rows a
//! few at a time with its checkpoints ([`AlertStore::expired_rows`]). A checkpoint of an older
//! format (the whole state in `Mcheckpoint`, rows under `K`, blobs under `D`) is read whole; the
//! next one is written whole and removes it.

use serde::{Deserialize, Serialize};

use crate::domain::alerts::engine::{row_expiry, Alert, AlertChange, EngineState, StateDelta};
use crate::domain::alerts::rules::Severity;
use crate::error::{Error, Result};

const CHECKPOINT: &[u8] = b"Mcheckpoint";
/// The prefix of the engine state's rows by key.
const WINDOWS: u8 = b'W';
/// The prefix of the engine state's rows by map letter and key (the format before blobs).
const STATE_ROWS: &[u8] = b"K";
/// The prefix of the blobs of the engine state's rows (the format before rows by key).
const STATE_BLOBS: u8 = b'D';

/// A stored checkpoint, read back.
pub struct Checkpoint {
    pub rules_digest: String,
    /// The state: its header alone (the per-key state stays in the `W` rows), or the whole
    /// state for a checkpoint of an older format.
    pub state: EngineState,
    /// Whether it is of an older format: the next checkpoint must then be written whole.
    pub whole: bool,
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

#[cfg(test)]
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
        let header = serde_json::to_vec(&header).expect("a value serializes");
        // Rows of the formats before rows by key: one sled key each, then blobs over them.
        let mut rows = std::collections::BTreeMap::new();
        for r in self.tree.scan_prefix(STATE_ROWS) {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            rows.insert(k[STATE_ROWS.len()..].to_vec(), v.to_vec());
        }
        let mut older = !rows.is_empty();
        for r in self.tree.scan_prefix([STATE_BLOBS]) {
            let (k, blob) = r.map_err(crate::store::from_sled)?;
            older = true;
            apply_blob(&blob, &mut rows)
                .ok_or_else(|| Error::corrupt(format!("alerts: checkpoint blob {} does not read", blob_number(&k))))?;
        }
        let state = if older {
            EngineState::from_lettered_rows(&header, rows)
        } else {
            EngineState::from_header(&header)
        }
        .map_err(|e| corrupt("checkpoint", e))?;
        Ok(Some(Checkpoint {
            rules_digest: stored.rules_digest,
            state,
            whole: older,
        }))
    }

    /// The stored row of one key's windows ([`StateDelta`]), if any.
    pub fn window_row(&self, key: &str) -> Result<Option<sled::IVec>> {
        self.tree
            .get([&[WINDOWS][..], key.as_bytes()].concat())
            .map_err(crate::store::from_sled)
    }

    /// Every stored row of windows, by key.
    pub fn window_rows(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> {
        self.tree.scan_prefix([WINDOWS]).map(|r| {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            Ok((k[1..].to_vec(), v.to_vec()))
        })
    }

    /// Looks at up to `n` rows of windows after the key `cursor` (wrapping to the first when
    /// it reaches the last) and returns the keys of those that expired before `now`; moves the
    /// cursor past them.
    pub fn expired_rows(&self, cursor: &mut Vec<u8>, n: usize, now: i64) -> Result<Vec<String>> {
        let from = [&[WINDOWS][..], cursor].concat();
        let range = (
            std::ops::Bound::Excluded(from),
            std::ops::Bound::Excluded(vec![WINDOWS + 1]),
        );
        let mut expired = Vec::new();
        let mut looked = 0;
        for r in self.tree.range(range).take(n) {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            looked += 1;
            if row_expiry(&v).is_some_and(|until| until < now) {
                expired.push(String::from_utf8_lossy(&k[1..]).into_owned());
            }
            *cursor = k[1..].to_vec();
        }
        if looked < n {
            cursor.clear();
        }
        Ok(expired)
    }

    /// Stores a checkpoint: the header, and its rows written (or removed) in place; a `whole`
    /// one also removes the rows of the formats before rows by key. In one atomic batch.
    pub fn write_checkpoint(&self, delta: &StateDelta, rules_digest: &str, whole: bool) -> Result<()> {
        let mut batch = sled::Batch::default();
        if whole {
            for r in self.tree.scan_prefix([STATE_BLOBS]).keys() {
                batch.remove(r.map_err(crate::store::from_sled)?);
            }
            for r in self.tree.scan_prefix(STATE_ROWS).keys() {
                batch.remove(r.map_err(crate::store::from_sled)?);
            }
        }
        for (k, v) in &delta.rows {
            let key = [&[WINDOWS][..], k].concat();
            match v {
                Some(v) => batch.insert(key, &v[..]),
                None => batch.remove(key),
            }
        }
        let header = std::str::from_utf8(&delta.header).expect("JSON is UTF-8");
        let value = format!(
            "{{\"rules_digest\":{},\"header\":{header}}}",
            serde_json::to_string(rules_digest).expect("a string serializes"),
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

    /// The state's per-key maps as rows of the format before rows by key (a map's letter,
    /// then the key), from its serialized form.
    fn lettered_rows(state: &EngineState) -> Vec<(Vec<u8>, Vec<u8>)> {
        let value = serde_json::to_value(state).unwrap();
        let maps = [
            (b'b', "brute_force"),
            (b'f', "bind_failures"),
            (b'd', "dead_wallets"),
            (b's', "shared_wallet"),
            (b'p', "stuffing"),
            (b'c', "churn"),
            (b'n', "binds"),
            (b'y', "payments"),
        ];
        let mut rows = Vec::new();
        for (letter, name) in maps {
            for (key, v) in value[name].as_object().unwrap() {
                rows.push(([&[letter][..], key.as_bytes()].concat(), serde_json::to_vec(v).unwrap()));
            }
        }
        rows
    }

    fn header_of(state: &EngineState) -> String {
        let mut value = serde_json::to_value(state).unwrap();
        let header = value.as_object_mut().unwrap();
        header.retain(|k, _| {
            [
                "position",
                "stream_seq",
                "high_time",
                "open",
                "pending_locks",
                "locks",
                "unlocked",
            ]
            .contains(&k.as_str())
        });
        serde_json::to_string(header).unwrap()
    }

    /// What is stored, read back whole: the header and every row by key.
    fn stored_state(store: &AlertStore) -> EngineState {
        let cp = store.checkpoint().unwrap().unwrap();
        assert!(!cp.whole);
        let header = serde_json::to_vec(&cp.state).unwrap();
        EngineState::from_rows(&header, store.window_rows().map(|r| r.unwrap())).unwrap()
    }

    /// Checkpoints of each older format (the whole state in one value, a row per map and key,
    /// blobs) are read whole and marked so; the next, written whole, removes them; checkpoints
    /// by key, removals included, then add up to the engine's state at every step, and the
    /// header alone is what a start reads.
    #[test]
    fn older_formats_read_back_and_rows_by_key_add_up_to_the_state() {
        for format in ["whole", "rows", "blobs"] {
            let db = sled::Config::new().temporary(true).open().unwrap();
            let store = AlertStore::new(db.open_tree("alerts").unwrap());
            let mut engine = Engine::new(crate::domain::alerts::RuleSet::default());
            fold(&mut engine, 1..=500, 40);
            let rows = lettered_rows(&engine.state);
            assert!(rows.len() > 40, "{format}: the state has rows");
            let header = header_of(&engine.state);
            match format {
                "whole" => {
                    let value = serde_json::json!({"rules_digest": "d", "state": &engine.state});
                    store
                        .tree
                        .insert(CHECKPOINT, serde_json::to_vec(&value).unwrap())
                        .unwrap();
                }
                "rows" => {
                    for (k, v) in &rows {
                        store.tree.insert([STATE_ROWS, k].concat(), v.clone()).unwrap();
                    }
                }
                _ => {
                    for (i, chunk) in rows.chunks(7).enumerate() {
                        let mut blob = Vec::new();
                        for (k, v) in chunk {
                            blob.extend_from_slice(&(k.len() as u32).to_be_bytes());
                            blob.extend_from_slice(k);
                            blob.push(1);
                            blob.extend_from_slice(&(v.len() as u32).to_be_bytes());
                            blob.extend_from_slice(v);
                        }
                        store.tree.insert(blob_key(i as u64 + 1), blob).unwrap();
                    }
                }
            }
            if format != "whole" {
                let value = format!("{{\"rules_digest\":\"d\",\"header\":{header}}}");
                store.tree.insert(CHECKPOINT, value.as_bytes()).unwrap();
            }
            let cp = store.checkpoint().unwrap().unwrap();
            assert!(cp.whole, "{format}: the next checkpoint is written whole");
            assert_eq!(cp.state, engine.state, "{format}");
            store.write_checkpoint(&engine.full(), "d", true).unwrap();
            assert_eq!(
                store.tree.scan_prefix(STATE_ROWS).count(),
                0,
                "{format}: the older rows are gone"
            );
            assert_eq!(
                store.tree.scan_prefix([STATE_BLOBS]).count(),
                0,
                "{format}: the blobs are gone"
            );
            assert_eq!(stored_state(&store), engine.state, "{format}");
            let mut dropped = 0;
            for round in 0..12u64 {
                let from = 501 + round * 400;
                fold(&mut engine, from..=from + 399, 40 + round * 30);
                let rows = engine.delta();
                dropped += rows.rows.iter().filter(|(_, v)| v.is_none()).count();
                store.write_checkpoint(&rows, "d", false).unwrap();
                assert_eq!(stored_state(&store), engine.state, "{format}, round {round}");
                let start = store.checkpoint().unwrap().unwrap();
                assert_eq!(start.state.position, engine.state.position);
                assert_eq!(start.state.stream_seq, engine.state.stream_seq);
            }
            assert!(dropped > 0, "the run swept keys, so removals were stored");
        }
    }

    /// Expired rows are found a few at a time, the cursor wrapping around; rows alive are not.
    #[test]
    fn expired_rows_are_found_a_few_at_a_time() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = AlertStore::new(db.open_tree("alerts").unwrap());
        let row = |until: i64| [&until.to_be_bytes()[..], b"{}"].concat();
        let mut delta = StateDelta {
            header: header_of(&EngineState::default()).into_bytes(),
            ..StateDelta::default()
        };
        for i in 0..10 {
            delta.rows.push((
                format!("k{i}").into_bytes(),
                Some(row(if i % 2 == 0 { 100 } else { 1_000 })),
            ));
        }
        store.write_checkpoint(&delta, "d", false).unwrap();
        let mut cursor = Vec::new();
        let mut found = Vec::new();
        for _ in 0..3 {
            found.extend(store.expired_rows(&mut cursor, 4, 500).unwrap());
        }
        assert!(cursor.is_empty(), "three looks of four rows wrapped past the ten");
        assert_eq!(found, ["k0", "k2", "k4", "k6", "k8"]);
        assert_eq!(store.expired_rows(&mut cursor, 4, 50).unwrap(), Vec::<String>::new());
        // A blob cut short does not read.
        store.tree.insert(blob_key(1), &b"\0\0\0\x09abc"[..]).unwrap();
        assert_eq!(store.checkpoint().err().map(|e| e.code()), Some("corrupt"));
    }
}
