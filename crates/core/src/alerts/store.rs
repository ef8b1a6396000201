//! Alerts in sled (tree `alerts`). Everything here is derived from the log and carries the
//! position it reflects:
//!
//! | key | value |
//! |---|---|
//! | `S` stream seq (u64 BE) | one [`AlertChange`] (JSON): the alert stream, in order, without gaps |
//! | `L` opening seq (u64 BE) rule | the alert's latest revision (JSON), listed newest first |
//! | `Mcheckpoint` | the engine's state header (position, stream seq, locks) and the rules digest (JSON) |
//! | `O` rule\|kind\|key | one open alert (JSON): the open alerts, written as they change (a header of an older format held them all) |
//! | `W` key | the engine's state of one key (account or wallet fingerprint): when it expires (i64 BE micros), then its windows in each rule (JSON) |
//! | `D` blob number (u64 BE) | the format before `W`: rows of the engine's state in blobs of up to 64 KiB; read, and replaced by the next checkpoint |
//! | `K` map letter, key | the format before `D`: the engine's state of one rule and key (JSON); read, and replaced by the next checkpoint |
//! | `T` alert id | the alert's latest triage ([`TriageState`], JSON), from its `alert_triaged` events |
//! | `U` event seq (u64 BE) | one triage as it was recorded (`{alert_id, triage}`, JSON): the triage stream, in log order |
//! | `H` alert id, 0, event seq (u64 BE) | nothing: every `alert_triaged` event of the alert, by seq (its history) |
//! | `I` field, value, 0, opening seq (u64 BE), rule | nothing: the listing's indexes (see below) |
//! | `R` kind (`d` device, `i` address), fingerprint (32 bytes), account | the seq of the first event the monitor saw with both (u64 BE): the accounts one device or address was used by |
//! | `Mindexes` | the version of the indexes built (absent: build them from the rows above) |
//!
//! **Indexes.** A listing filtered by account, wallet, assignee, triage state or rule reads the
//! rows of that one value (`I` + field letter + value), newest or oldest first, whatever the
//! number of alerts: `c` account (each of an alert's accounts), `k` the alert's key (an account
//! or a wallet fingerprint), `a` assignee, `s` triage state (`untriaged` or the latest action),
//! `r` rule. The other filters are applied to the rows read.
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
/// The prefix of the open alerts' rows.
const OPEN: u8 = b'O';
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
    /// Opened before this event time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// The alert's key is this wallet fingerprint (or account).
    pub key: Option<String>,
    /// Where it stands: `open` or `closed` (by its rule's window, against `now`), `untriaged`,
    /// or a triage action (the latest).
    pub state: Option<String>,
    /// Assigned to this token name (by its latest assignment).
    pub assignee: Option<String>,
    /// The time `open` and `closed` are judged at.
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

/// The triage states a listing filters on, besides `open` and `closed`.
pub const TRIAGE_STATES: &[&str] = &[
    "untriaged",
    "acknowledged",
    "assigned",
    "resolved",
    "false_positive",
    "locked",
    "unlocked",
];

/// How a listing is sorted: by the event that opened each alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    NewestFirst,
    OldestFirst,
}

impl AlertFilter {
    /// Whether the filter looks at the triage (then [`AlertFilter::accepts_triage`] decides too).
    pub fn needs_triage(&self) -> bool {
        self.assignee.is_some() || self.state.as_deref().is_some_and(|s| TRIAGE_STATES.contains(&s))
    }

    /// The part of the filter on the alert's triage.
    pub fn accepts_triage(&self, t: Option<&TriageState>) -> bool {
        let state_ok = match self.state.as_deref() {
            Some("untriaged") => t.is_none(),
            Some(s) if TRIAGE_STATES.contains(&s) => t.is_some_and(|t| t.action == s),
            _ => true,
        };
        state_ok
            && self
                .assignee
                .as_deref()
                .is_none_or(|who| t.is_some_and(|t| t.assignee.as_deref() == Some(who)))
    }

    pub fn accepts(&self, a: &Alert) -> bool {
        let open_ok = match self.state.as_deref() {
            Some("open") => a.open_until > self.now.unwrap_or_else(chrono::Utc::now),
            Some("closed") => a.open_until <= self.now.unwrap_or_else(chrono::Utc::now),
            _ => true,
        };
        open_ok
            && self.since.is_none_or(|t| a.opened_at >= t)
            && self.until.is_none_or(|t| a.opened_at < t)
            && self.key.as_deref().is_none_or(|k| a.key.value == k)
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

/// The version of the indexes [`AlertStore::ensure_indexes`] builds.
const INDEXES: &[u8] = b"Mindexes";
const INDEXES_VERSION: &[u8] = b"1";

/// The prefix of one value's index rows: `I`, the field's letter, the value, 0.
fn index_prefix(field: u8, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 3);
    k.push(b'I');
    k.push(field);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

/// One index row: the value's prefix, then what follows `L` in the alert's row.
fn index_key(field: u8, value: &str, alert_key: &[u8]) -> Vec<u8> {
    let mut k = index_prefix(field, value);
    k.extend_from_slice(&alert_key[1..]);
    k
}

/// An alert's history row: `H`, its id, 0, the seq of one of its `alert_triaged` events.
fn history_key(alert_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(alert_id.len() + 10);
    k.push(b'H');
    k.extend_from_slice(alert_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The index rows an alert's revision has (its triage state's and assignee's aside).
fn alert_index_keys(a: &Alert, alert_key: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = vec![
        index_key(b'r', &a.rule, alert_key),
        index_key(b'k', &a.key.value, alert_key),
    ];
    for acc in &a.accounts {
        keys.push(index_key(b'c', acc, alert_key));
    }
    keys
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
        let mut state = if older {
            EngineState::from_lettered_rows(&header, rows)
        } else {
            EngineState::from_header(&header)
        }
        .map_err(|e| corrupt("checkpoint", e))?;
        if EngineState::open_in_rows(&header) {
            for r in self.tree.scan_prefix([OPEN]) {
                let (k, v) = r.map_err(crate::store::from_sled)?;
                state
                    .put_open(&String::from_utf8_lossy(&k[1..]), &v)
                    .map_err(|e| corrupt("an open alert", e))?;
            }
        }
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
        if whole {
            // A whole state lists every open alert: the stored ones it does not are closed.
            let listed: std::collections::HashSet<&str> = delta.open.iter().map(|(k, _)| k.as_str()).collect();
            for r in self.tree.scan_prefix([OPEN]).keys() {
                let k = r.map_err(crate::store::from_sled)?;
                if !listed.contains(String::from_utf8_lossy(&k[1..]).as_ref()) {
                    batch.remove(k);
                }
            }
        }
        for (slot, v) in &delta.open {
            let key = [&[OPEN][..], slot.as_bytes()].concat();
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

    /// Builds the listing's indexes from the alerts and triage stored, once (a store written
    /// before they existed); then [`AlertStore::write`] and [`AlertStore::write_triage`] keep
    /// them. Returns the alerts indexed (0 when they were built already).
    /// `triaged` gives every `alert_triaged` event of the log, `(alert id, seq)`, for the alerts'
    /// histories; it is called only when the indexes are built.
    pub fn ensure_indexes<I>(&self, triaged: impl FnOnce() -> Result<I>) -> Result<u64>
    where
        I: Iterator<Item = Result<(String, u64)>>,
    {
        if self.tree.get(INDEXES).map_err(crate::store::from_sled)?.as_deref() == Some(INDEXES_VERSION) {
            return Ok(0);
        }
        for r in triaged()? {
            let (alert_id, seq) = r?;
            self.tree
                .insert(history_key(&alert_id, seq), &[][..])
                .map_err(crate::store::from_sled)?;
        }
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        let mut alerts = 0u64;
        let flush = |batch: &mut sled::Batch, pending: &mut usize| -> Result<()> {
            self.tree
                .apply_batch(std::mem::take(batch))
                .map_err(crate::store::from_sled)?;
            *pending = 0;
            Ok(())
        };
        for r in self.tree.range(seq_key(b'L', 0).to_vec()..seq_key(b'M', 0).to_vec()) {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            let a: Alert = serde_json::from_slice(&v).map_err(|e| corrupt("alert", e))?;
            for key in alert_index_keys(&a, &k) {
                batch.insert(key, &[][..]);
                pending += 1;
            }
            let t = self.triage(&a.id)?;
            let state = t.as_ref().map_or("untriaged", |t| t.action.as_str());
            batch.insert(index_key(b's', state, &k), &[][..]);
            if let Some(who) = t.as_ref().and_then(|t| t.assignee.as_deref()) {
                batch.insert(index_key(b'a', who, &k), &[][..]);
            }
            alerts += 1;
            if pending >= 10_000 {
                flush(&mut batch, &mut pending)?;
            }
        }
        flush(&mut batch, &mut pending)?;
        self.tree
            .insert(INDEXES, INDEXES_VERSION)
            .map_err(crate::store::from_sled)?;
        Ok(alerts)
    }

    /// Writes changes in one atomic batch, with their index rows. A change written again (after
    /// a restart) writes the same rows.
    pub fn write(&self, changes: &[AlertChange]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for c in changes {
            batch.insert(
                &seq_key(b'S', c.stream_seq)[..],
                serde_json::to_vec(c).expect("alerts serialize"),
            );
            let key = latest_key(&c.alert.id).expect("alert ids are rule-seq");
            for index in alert_index_keys(&c.alert, &key) {
                batch.insert(index, &[][..]);
            }
            if c.alert.revision == 1 && self.triage(&c.alert.id)?.is_none() {
                batch.insert(index_key(b's', "untriaged", &key), &[][..]);
            }
            batch.insert(key, serde_json::to_vec(&c.alert).expect("alerts serialize"));
        }
        self.tree.apply_batch(batch).map_err(crate::store::from_sled)?;
        Ok(())
    }

    /// Records triage events, in log order (one written again after a restart changes nothing:
    /// an event older than the stored state is ignored), each with its index rows and its
    /// entry of the triage stream. Returns the seq of the last one recorded.
    pub fn write_triage(&self, items: &[(String, TriageState)]) -> Result<Option<u64>> {
        let mut last = None;
        for (alert_id, t) in items {
            let key = [b"T".as_slice(), alert_id.as_bytes()].concat();
            self.tree
                .insert(history_key(alert_id, t.seq), &[][..])
                .map_err(crate::store::from_sled)?;
            let old = self.triage(alert_id)?;
            if old.as_ref().is_some_and(|o| o.seq >= t.seq) {
                continue;
            }
            let mut t = t.clone();
            if t.assignee.is_none() {
                t.assignee = old.as_ref().and_then(|o| o.assignee.clone());
            }
            let mut batch = sled::Batch::default();
            if let Some(alert_key) = latest_key(alert_id) {
                let was = old.as_ref().map_or("untriaged", |o| o.action.as_str());
                batch.remove(index_key(b's', was, &alert_key));
                batch.insert(index_key(b's', &t.action, &alert_key), &[][..]);
                let had = old.as_ref().and_then(|o| o.assignee.as_deref());
                if had != t.assignee.as_deref() {
                    if let Some(who) = had {
                        batch.remove(index_key(b'a', who, &alert_key));
                    }
                    if let Some(who) = &t.assignee {
                        batch.insert(index_key(b'a', who, &alert_key), &[][..]);
                    }
                }
            }
            let entry = TriageEntry {
                alert_id: alert_id.clone(),
                triage: t.clone(),
            };
            batch.insert(
                &seq_key(b'U', t.seq)[..],
                serde_json::to_vec(&entry).expect("triage serializes"),
            );
            batch.insert(key, serde_json::to_vec(&t).expect("triage serializes"));
            self.tree.apply_batch(batch).map_err(crate::store::from_sled)?;
            last = Some(t.seq);
        }
        Ok(last)
    }

    /// The seq of the last triage recorded (0 when none was).
    pub fn last_triage_seq(&self) -> Result<u64> {
        self.last_seq_under(b'U')
    }

    /// The seq of the last row under `prefix` (rows keyed by the prefix and a u64 BE), 0 when
    /// there is none.
    fn last_seq_under(&self, prefix: u8) -> Result<u64> {
        match self.tree.scan_prefix([prefix]).next_back() {
            None => Ok(0),
            Some(r) => {
                let (k, _) = r.map_err(crate::store::from_sled)?;
                Ok(u64::from_be_bytes(
                    k[1..9].try_into().map_err(|e| corrupt("seq key", e))?,
                ))
            }
        }
    }

    /// Triage recorded after the event seq `after`, in log order, at most `limit`.
    pub fn triage_after(&self, after: u64, limit: usize) -> Result<Vec<TriageEntry>> {
        let mut out = Vec::new();
        for r in self
            .tree
            .range(seq_key(b'U', after.saturating_add(1))..seq_key(b'V', 0))
            .take(limit)
        {
            let (_, v) = r.map_err(crate::store::from_sled)?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt("triage entry", e))?);
        }
        Ok(out)
    }

    /// The seqs of an alert's `alert_triaged` events, newest first, those before `before` when
    /// given, at most `limit`.
    pub fn history_seqs(&self, alert_id: &str, before: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let lower = history_key(alert_id, 0);
        let upper = history_key(alert_id, before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for r in self.tree.range(lower..upper).rev().take(limit) {
            let (k, _) = r.map_err(crate::store::from_sled)?;
            let seq = k[k.len() - 8..].try_into().map_err(|e| corrupt("history key", e))?;
            out.push(u64::from_be_bytes(seq));
        }
        Ok(out)
    }

    /// Stores device and address fingerprints seen with accounts; a pair stored before keeps
    /// its first seq.
    pub fn write_related(&self, items: &[Related]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for r in items {
            let mut key = related_prefix(r.kind, &r.fingerprint);
            key.extend_from_slice(r.account.as_bytes());
            if self.tree.contains_key(&key).map_err(crate::store::from_sled)? {
                continue;
            }
            batch.insert(key, &r.seq.to_be_bytes());
        }
        self.tree.apply_batch(batch).map_err(crate::store::from_sled)?;
        Ok(())
    }

    /// The accounts a device's or address's fingerprint was seen with, with the seq of the
    /// first event of each, in account order, at most `limit`; and whether there are more.
    pub fn related_accounts(
        &self,
        kind: u8,
        fingerprint: &bindledger_events::Hash,
        limit: usize,
    ) -> Result<(Vec<(String, u64)>, bool)> {
        let prefix = related_prefix(kind, fingerprint);
        let mut out = Vec::new();
        for r in self.tree.scan_prefix(&prefix) {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let account = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let seq = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            out.push((account, seq));
        }
        Ok((out, false))
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
        self.last_seq_under(b'S')
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

    /// Alerts in `order` (by the event that opened them), filtered. `from` is the cursor: the
    /// id of the alert the page starts at (inclusive). Returns the page and the next cursor.
    /// With a filter on an account, a wallet, an assignee, a triage state or a rule, only that
    /// value's index rows are read; at most [`LIST_SCAN_MAX`] rows are looked at per call.
    pub fn list(
        &self,
        filter: &AlertFilter,
        from: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<(Vec<Alert>, Option<String>)> {
        let from = match from {
            None => None,
            Some(id) => Some(
                latest_key(id)
                    .ok_or_else(|| Error::invalid("invalid_cursor", "cursor", "not a cursor from a previous page"))?,
            ),
        };
        let state_index = filter.state.as_deref().filter(|s| TRIAGE_STATES.contains(s));
        let index = [
            (b'c', filter.account.as_deref()),
            (b'k', filter.key.as_deref()),
            (b'a', filter.assignee.as_deref()),
            (b's', state_index),
            (b'r', filter.rule.as_deref()),
        ]
        .into_iter()
        .find_map(|(f, v)| v.map(|v| (f, v)));
        // The rows read: (the key of the alert's `L` row, its value when read with it).
        let (prefix, strip) = match index {
            Some((field, value)) => (index_prefix(field, value), true),
            None => (vec![b'L'], false),
        };
        let mut upper = prefix.clone();
        *upper.last_mut().expect("a prefix") += 1;
        let lower = prefix.clone();
        let at = from.map(|k| [&prefix[..], &k[1..]].concat());
        let range = match (order, at) {
            (Order::NewestFirst, Some(at)) => (std::ops::Bound::Included(lower), std::ops::Bound::Included(at)),
            (Order::OldestFirst, Some(at)) => (std::ops::Bound::Included(at), std::ops::Bound::Excluded(upper)),
            (_, None) => (std::ops::Bound::Included(lower), std::ops::Bound::Excluded(upper)),
        };
        let rows = self.tree.range::<Vec<u8>, _>(range);
        let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match order {
            Order::NewestFirst => Box::new(rows.rev()),
            Order::OldestFirst => Box::new(rows),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for (scanned, r) in rows.enumerate() {
            let (k, v) = r.map_err(crate::store::from_sled)?;
            let alert_key = if strip {
                [&b"L"[..], &k[prefix.len()..]].concat()
            } else {
                k.to_vec()
            };
            if out.len() == limit || scanned == LIST_SCAN_MAX {
                // Bounded work per request: the next page starts here.
                return Ok((out, Some(id_of_key(&alert_key)?)));
            }
            let value = if strip {
                match self.tree.get(&alert_key).map_err(crate::store::from_sled)? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                v
            };
            let a: Alert = serde_json::from_slice(&value).map_err(|e| corrupt("alert", e))?;
            if !filter.accepts(&a) {
                continue;
            }
            if filter.needs_triage() && !filter.accepts_triage(self.triage(&a.id)?.as_ref()) {
                continue;
            }
            out.push(a);
        }
        Ok((out, None))
    }

    /// Alerts opened at or after `since`, counted by rule and by severity, newest first until
    /// one opened before `since` or `scan_max` counted; `complete` says whether every alert
    /// since was counted.
    pub fn counts(&self, since: chrono::DateTime<chrono::Utc>, scan_max: usize) -> Result<AlertCounts> {
        let mut counts = AlertCounts {
            complete: true,
            ..AlertCounts::default()
        };
        for r in self
            .tree
            .range(seq_key(b'L', 0).to_vec()..seq_key(b'M', 0).to_vec())
            .rev()
        {
            let (_, v) = r.map_err(crate::store::from_sled)?;
            if counts.total as usize == scan_max {
                counts.complete = false;
                break;
            }
            let a: Alert = serde_json::from_slice(&v).map_err(|e| corrupt("alert", e))?;
            if a.opened_at < since {
                break;
            }
            counts.total += 1;
            *counts.by_rule.entry(a.rule).or_default() += 1;
            *counts.by_severity.entry(a.severity.as_str().to_owned()).or_default() += 1;
        }
        Ok(counts)
    }
}

/// Alerts counted by rule and severity ([`AlertStore::counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertCounts {
    pub total: u64,
    pub by_rule: std::collections::BTreeMap<String, u64>,
    pub by_severity: std::collections::BTreeMap<String, u64>,
    /// Whether every alert opened since was counted (else `total` is a floor).
    pub complete: bool,
}

/// `R` rows: a device fingerprint's.
pub const RELATED_DEVICE: u8 = b'd';
/// `R` rows: an address fingerprint's.
pub const RELATED_IP: u8 = b'i';

/// A device's or address's fingerprint seen with an account (schema v9 events' context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Related {
    /// [`RELATED_DEVICE`] or [`RELATED_IP`].
    pub kind: u8,
    pub fingerprint: bindledger_events::Hash,
    pub account: String,
    /// The event it was seen in.
    pub seq: u64,
}

fn related_prefix(kind: u8, fingerprint: &bindledger_events::Hash) -> Vec<u8> {
    let mut k = Vec::with_capacity(34 + 32);
    k.push(b'R');
    k.push(kind);
    k.extend_from_slice(&fingerprint.0);
    k
}

/// One entry of the triage stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageEntry {
    pub alert_id: String,
    pub triage: TriageState,
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
    /// The format before open alerts had rows: the header holds them. Read back equal; the next
    /// checkpoint, a delta, writes every one of them as a row and a header without them.
    fn a_header_holding_the_open_alerts_reads_back_and_moves_them_to_rows() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = AlertStore::new(db.open_tree("alerts").unwrap());
        let mut engine = Engine::new(crate::domain::alerts::RuleSet::default());
        fold(&mut engine, 1..=500, 40);
        let open = engine.open_alerts();
        assert!(open > 5, "alerts are open: {open}");
        let mut full = engine.full();
        full.open.clear();
        store.write_checkpoint(&full, "d", false).unwrap();
        let legacy = format!("{{\"rules_digest\":\"d\",\"header\":{}}}", header_of(&engine.state));
        store.tree.insert(CHECKPOINT, legacy.as_bytes()).unwrap();
        assert_eq!(store.tree.scan_prefix([OPEN]).count(), 0);
        let cp = store.checkpoint().unwrap().unwrap();
        assert!(!cp.whole);
        assert_eq!(stored_state(&store), engine.state);
        let mut resumed = Engine::resume(crate::domain::alerts::RuleSet::default(), cp.state);
        let delta = resumed.delta();
        assert_eq!(delta.open.len(), open, "every open alert is written as a row");
        store.write_checkpoint(&delta, "d", false).unwrap();
        assert_eq!(store.tree.scan_prefix([OPEN]).count(), open);
        let header = store.tree.get(CHECKPOINT).unwrap().unwrap();
        assert!(
            !String::from_utf8_lossy(&header).contains("\"open\":{\""),
            "the header holds no open alert"
        );
        assert_eq!(stored_state(&store), engine.state);
        // Later deltas write only the alerts that changed.
        fold(&mut resumed, 501..=520, 40);
        assert!(resumed.delta().open.len() < open);
    }

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

    fn alert(seq: u64, rule: &str, accounts: &[&str], revision: u32) -> Alert {
        let t = chrono::DateTime::from_timestamp(1_800_000_000 + seq as i64, 0).unwrap();
        serde_json::from_value(serde_json::json!({
            "id": format!("{rule}-{seq}"), "rule": rule,
            "key": {"kind": "account", "value": accounts[0]},
            "accounts": accounts, "severity": if seq % 2 == 0 { "high" } else { "medium" },
            "window_start": t, "window_end": t, "observed": 5, "threshold": 5, "unit": "wrong_passwords",
            "currency": null, "event_ids": [], "event_seqs": [seq], "matches": 1,
            "opened_at": t, "updated_at": t, "open_until": t, "revision": revision, "position": seq, "lock": null,
        }))
        .unwrap()
    }

    /// Every listing through an index (and in either order, page by page) equals the alerts a
    /// scan of them all with the same filter finds; indexes built afterwards from an older store
    /// equal those kept on the way; triage moves an alert between states and assignees.
    #[test]
    fn listings_through_the_indexes_equal_a_whole_scan() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = AlertStore::new(db.open_tree("alerts").unwrap());
        let rules = ["password_brute_force", "shared_wallet", "amount_spike"];
        let mut changes = Vec::new();
        let mut all = Vec::new();
        for seq in 1..=300u64 {
            let rule = rules[(seq % 3) as usize];
            let accounts = [format!("acc-{}", seq % 7), format!("acc-{}", seq % 5)];
            let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
            let a = alert(seq * 10, rule, &accounts[..1], 1);
            changes.push(AlertChange {
                stream_seq: changes.len() as u64 + 1,
                change: "opened".into(),
                alert: a.clone(),
            });
            // A later revision adds an account.
            let mut b = alert(seq * 10, rule, &accounts, 2);
            b.accounts.dedup();
            changes.push(AlertChange {
                stream_seq: changes.len() as u64 + 1,
                change: "updated".into(),
                alert: b.clone(),
            });
            all.push(b);
        }
        store.write(&changes).unwrap();
        let mut triage = Vec::new();
        for (i, a) in all.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
            let action = ["acknowledged", "assigned", "resolved"][i % 3];
            let at = chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap();
            let assignee = (action == "assigned").then(|| format!("analyst-{}", i % 2));
            triage.push((
                a.id.clone(),
                TriageState {
                    action: action.into(),
                    operator: "ana".into(),
                    assignee,
                    at,
                    seq: 10_000 + i as u64,
                },
            ));
        }
        // A later triage of the first: resolved, its assignee kept.
        let first = triage[1].clone();
        let mut later = first.1.clone();
        later.action = "resolved".into();
        later.assignee = None;
        later.seq = 20_000;
        triage.push((first.0.clone(), later));
        assert_eq!(store.write_triage(&triage).unwrap(), Some(20_000));
        assert_eq!(
            store.write_triage(&triage).unwrap(),
            None,
            "written again: nothing changes"
        );
        assert_eq!(store.last_triage_seq().unwrap(), 20_000);
        let stream = store.triage_after(10_000, 1000).unwrap();
        assert_eq!(stream.len(), triage.len() - 1);
        assert_eq!(stream.last().unwrap().triage.action, "resolved");
        assert_eq!(stream.last().unwrap().triage.assignee, first.1.assignee);

        let filters = || {
            let mut f = vec![AlertFilter::default()];
            for acc in ["acc-0", "acc-3", "acc-9"] {
                f.push(AlertFilter {
                    account: Some(acc.into()),
                    ..Default::default()
                });
                f.push(AlertFilter {
                    key: Some(acc.into()),
                    severity: Some(Severity::High),
                    ..Default::default()
                });
            }
            for st in TRIAGE_STATES {
                f.push(AlertFilter {
                    state: Some(st.to_string()),
                    ..Default::default()
                });
                f.push(AlertFilter {
                    state: Some(st.to_string()),
                    rule: Some("shared_wallet".into()),
                    ..Default::default()
                });
            }
            for who in ["analyst-0", "analyst-1", "nobody"] {
                f.push(AlertFilter {
                    assignee: Some(who.into()),
                    ..Default::default()
                });
            }
            for r in rules {
                f.push(AlertFilter {
                    rule: Some(r.into()),
                    account: Some("acc-2".into()),
                    ..Default::default()
                });
            }
            f
        };
        let expected = |f: &AlertFilter, order: Order| {
            let mut v: Vec<String> = all
                .iter()
                .filter(|a| f.accepts(a) && f.accepts_triage(store.triage(&a.id).unwrap().as_ref()))
                .map(|a| a.id.clone())
                .collect();
            if order == Order::NewestFirst {
                v.reverse();
            }
            v
        };
        let paged = |store: &AlertStore, f: &AlertFilter, order: Order| {
            let (mut got, mut cursor) = (Vec::new(), None::<String>);
            loop {
                let (page, next) = store.list(f, cursor.as_deref(), 7, order).unwrap();
                assert!(page.len() <= 7);
                got.extend(page.into_iter().map(|a| a.id));
                match next {
                    Some(n) => cursor = Some(n),
                    None => return got,
                }
            }
        };
        let mut nonempty = 0;
        for f in filters() {
            for order in [Order::NewestFirst, Order::OldestFirst] {
                let want = expected(&f, order);
                nonempty += usize::from(!want.is_empty());
                assert_eq!(paged(&store, &f, order), want, "{f:?} {order:?}");
            }
        }
        assert!(nonempty >= 25, "the filters find alerts: {nonempty}");
        // An older store: no index rows. They are built once, to the same listings.
        let before: Vec<_> = filters().iter().map(|f| paged(&store, f, Order::NewestFirst)).collect();
        for k in store.tree.scan_prefix(b"I").keys() {
            store.tree.remove(k.unwrap()).unwrap();
        }
        store.tree.remove(INDEXES).unwrap();
        let from_log = || {
            Ok(triage
                .iter()
                .map(|(id, t)| Ok((id.clone(), t.seq)))
                .collect::<Vec<_>>()
                .into_iter())
        };
        let histories_before: Vec<_> = all
            .iter()
            .map(|a| store.history_seqs(&a.id, None, 10).unwrap())
            .collect();
        for k in store.tree.scan_prefix(b"H").keys() {
            store.tree.remove(k.unwrap()).unwrap();
        }
        assert_eq!(store.ensure_indexes(from_log).unwrap(), 300);
        assert_eq!(
            store
                .ensure_indexes(|| -> Result<std::vec::IntoIter<Result<(String, u64)>>> { panic!("built once") })
                .unwrap(),
            0,
            "once"
        );
        let histories_after: Vec<_> = all
            .iter()
            .map(|a| store.history_seqs(&a.id, None, 10).unwrap())
            .collect();
        assert_eq!(histories_before, histories_after);
        // The first alert triaged twice: its history, newest first, paged.
        assert_eq!(store.history_seqs(&first.0, None, 10).unwrap(), [20_000, first.1.seq]);
        assert_eq!(store.history_seqs(&first.0, Some(20_000), 10).unwrap(), [first.1.seq]);
        assert_eq!(store.history_seqs(&first.0, None, 1).unwrap(), [20_000]);
        let after: Vec<_> = filters().iter().map(|f| paged(&store, f, Order::NewestFirst)).collect();
        assert_eq!(before, after);
        assert!(store
            .list(&AlertFilter::default(), Some("no cursor"), 5, Order::NewestFirst)
            .is_err());
        // Counts since a time: the alerts opened since, by rule and severity; a bound says so.
        let since = all[200].opened_at;
        let c = store.counts(since, 1000).unwrap();
        assert!(c.complete);
        assert_eq!(c.total, 100);
        for r in rules {
            let n = all[200..].iter().filter(|a| a.rule == r).count() as u64;
            assert_eq!(c.by_rule.get(r).copied().unwrap_or(0), n);
        }
        assert_eq!(c.by_severity.values().sum::<u64>(), 100);
        let c = store.counts(since, 40).unwrap();
        assert_eq!((c.total, c.complete), (40, false));
    }
}
