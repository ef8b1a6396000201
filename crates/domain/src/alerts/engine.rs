//! The rule engine: a pure fold over events in log order. It reads nothing but the events (their
//! `record_time`, never the clock), so the live monitor, a restart from a checkpoint and a
//! rebuild from the log raise the same alerts with the same ids and contents.
//!
//! Windows run on `record_time`, the ledger's own clock, never on `event_time`, which the
//! caller may set: an attacker cannot spread guesses over the past to stay under a threshold,
//! nor date them so that a lock ends as soon as it is taken.
//!
//! State is per rule and key (account, or wallet fingerprint for `shared_wallet`): windows keep
//! only what can still count, and keys quiet for longer than their rule looks back are swept out
//! every [`SWEEP_EVERY`] events. A key swept out and a key never seen answer alike, so no rule
//! ever forgets a key that could still count.
//!
//! **Held in memory, or read back.** The live monitor keeps the per-key state on disk, one row
//! per key ([`Engine::delta`]), and holds at most a bounded number of keys in memory
//! ([`Engine::backed`]): before an event is folded, the rows of its keys that are not held are
//! read back ([`Engine::missing`], [`Engine::hold`]); a key is let go only when clean, its row
//! stored by a checkpoint after its last change ([`Engine::let_go`]). A key read back is the key
//! that was let go, so what the rules raise never depends on what was held.

use bindledger_events::{BindFailure, Currency, Event, Payload, PaymentFailure};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use uuid::Uuid;

use super::rules::{CountRule, RuleSet, Severity, Span};
use crate::cache;

/// Events between two sweeps of quiet keys.
pub const SWEEP_EVERY: u64 = 4096;
/// Recent binds remembered per account (bind-then-drain, churn).
const RECENT_BINDS_MAX: usize = 8;

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    /// `account` or `wallet`.
    pub kind: String,
    /// The account id, or the wallet fingerprint (hex).
    pub value: String,
}

/// A protective action an alert asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockAction {
    pub account: String,
    pub binding_id: Uuid,
    pub until: DateTime<Utc>,
}

/// An alert, as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `<rule>-<seq of the event that opened it>`: unique, and the same on every rebuild.
    pub id: String,
    pub rule: String,
    pub key: AlertKey,
    /// The accounts involved (for a wallet alert, the accounts it was bound to).
    pub accounts: Vec<String>,
    pub severity: Severity,
    /// The event-time window the observation covers.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// What was seen, against what the rule allows; `unit` says what they count.
    pub observed: i64,
    pub threshold: i64,
    pub unit: String,
    /// For amounts.
    pub currency: Option<Currency>,
    /// The triggering events, oldest first (at most `limits.event_ids_max`, the newest kept).
    pub event_ids: Vec<Uuid>,
    pub event_seqs: Vec<u64>,
    /// Times the rule matched while this alert was open (1 when opened).
    pub matches: u64,
    /// Event time of the opening match, and of the latest.
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Further matches before this (event time) update this alert instead of raising another.
    pub open_until: DateTime<Utc>,
    /// 1 when opened, +1 for each update.
    pub revision: u32,
    /// Global seq of the event that produced this revision.
    pub position: u64,
    /// A lock the alert caused (password brute force, when configured).
    pub lock: Option<LockAction>,
}

/// One entry of the alert stream: an alert opened or updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertChange {
    /// Position in the alert stream, from 1, without gaps (the SSE event id).
    pub stream_seq: u64,
    /// `opened` or `updated`.
    pub change: String,
    pub alert: Alert,
}

/// A lock currently in force (from `binding_locked` events), for expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveLock {
    pub account: String,
    pub binding_id: Uuid,
    pub alert_id: String,
    pub until: DateTime<Utc>,
}

/// A matching event, as remembered in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Hit {
    t: i64,
    seq: u64,
    id: Uuid,
}

impl Hit {
    fn of(e: &Event) -> Hit {
        Hit {
            t: e.record_time.timestamp_micros(),
            seq: e.seq,
            id: e.id,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    hits: VecDeque<Hit>,
    /// For `shared_wallet` and `password_stuffing`: the account of each hit.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    accounts: VecDeque<String>,
    last: i64,
}

impl Window {
    /// The accounts of the hits within `[from, to]`, in hit order (windows that keep them).
    fn accounts_within(&self, from: i64, to: i64) -> Vec<String> {
        self.hits
            .iter()
            .zip(&self.accounts)
            .filter(|(h, _)| h.t >= from && h.t <= to)
            .map(|(_, a)| a.clone())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecentBind {
    binding_id: Uuid,
    bind: Hit,
    spent: i64,
    payments: Vec<Hit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AccountBinds {
    binds: VecDeque<RecentBind>,
    last: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Payments {
    amounts: VecDeque<(Currency, i64)>,
    last: i64,
}

/// Bookkeeping kept beside the state, not state: two states are equal whatever it holds (what
/// changed since a checkpoint, an index rebuilt from the state).
#[derive(Debug, Clone, Default)]
struct Bookkeeping<T>(T);

impl<T> PartialEq for Bookkeeping<T> {
    fn eq(&self, _: &Bookkeeping<T>) -> bool {
        true
    }
}

impl<T> Eq for Bookkeeping<T> {}

impl<T> std::ops::Deref for Bookkeeping<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Bookkeeping<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Keys changed since a checkpoint.
type Changed = Bookkeeping<std::collections::HashSet<String>>;

/// Everything the engine remembers; serialised whole into checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineState {
    /// Seq of the last event folded in.
    pub position: u64,
    /// Last alert stream seq handed out.
    pub stream_seq: u64,
    /// Highest record time seen (micros): the clock of eviction.
    high_time: i64,
    brute_force: HashMap<String, Window>,
    bind_failures: HashMap<String, Window>,
    dead_wallets: HashMap<String, Window>,
    shared_wallet: HashMap<String, Window>,
    /// `password_stuffing`: wrong bind passwords per wallet fingerprint, with their accounts.
    #[serde(default)]
    stuffing: HashMap<String, Window>,
    churn: HashMap<String, Window>,
    binds: HashMap<String, AccountBinds>,
    payments: HashMap<String, Payments>,
    /// Open alerts by "rule|key".
    open: HashMap<String, Alert>,
    /// Open alerts changed (opened, updated, closed) since the last [`Engine::delta`]: a
    /// checkpoint writes their rows only, whatever the number open.
    #[serde(skip)]
    open_dirty: Changed,
    /// The open alerts by when they close (`open_until` in micros, then "rule|key"), so that a
    /// sweep looks at the alerts closing, not at every alert open. Rebuilt from `open` when it
    /// does not hold as many (a state read back whole).
    #[serde(skip)]
    by_expiry: Bookkeeping<std::collections::BTreeSet<(i64, String)>>,
    /// Locks asked for by alerts and not yet seen in the log, by lock key: the alert id for
    /// the lock an alert opens with, `<alert id>#<seq>` for a lock taken again by the event
    /// `seq` after the binding was unlocked while the alert stayed open.
    pub pending_locks: BTreeMap<String, LockAction>,
    /// Locks in force, by binding.
    pub locks: BTreeMap<Uuid, ActiveLock>,
    /// Locks that were lifted while their alert stayed open: alert id -> binding. Guessing
    /// that goes on there locks it again (see [`Engine::raise`]). Dropped with the alert.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    unlocked: BTreeMap<String, Uuid>,
}

/// The rules and their state.
pub struct Engine {
    pub rules: RuleSet,
    pub state: EngineState,
    /// Keys (accounts, wallet fingerprints) whose per-key state may have changed since the last
    /// [`Engine::delta`], a sweep's removals included: what an incremental checkpoint writes.
    dirty: std::collections::HashSet<String>,
    /// When the per-key state is backed by stored rows: the keys held in memory.
    held: Option<Held>,
}

/// The keys held in memory by an engine backed by stored rows ([`Engine::backed`]).
struct Held {
    /// Keys held beyond those changed since the last stored checkpoint.
    max: usize,
    /// Each held key's stamp (the seq of its last change, 0 when read back and unchanged
    /// since), and whether it has a stored row (once the checkpoints made are stored): a key
    /// without state and without a row needs no removal.
    stamps: HashMap<String, (u64, bool)>,
    /// Touches, oldest first (see [`cache::let_go`]).
    touched: VecDeque<(String, u64, u64)>,
    /// Rows read back since the engine began.
    rows_read: u64,
}

/// A stored row that does not read (the message names no key: keys are callers' account ids).
#[derive(Debug)]
pub struct BadRow(pub String);

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a stored alert window row does not read: {}", self.0)
    }
}

impl std::error::Error for BadRow {}

/// The row of one key as stored: its state in each per-key map that holds it.
#[derive(Deserialize)]
struct KeyRow {
    #[serde(default, rename = "b")]
    brute_force: Option<Window>,
    #[serde(default, rename = "f")]
    bind_failures: Option<Window>,
    #[serde(default, rename = "d")]
    dead_wallets: Option<Window>,
    #[serde(default, rename = "s")]
    shared_wallet: Option<Window>,
    #[serde(default, rename = "p")]
    stuffing: Option<Window>,
    #[serde(default, rename = "c")]
    churn: Option<Window>,
    #[serde(default, rename = "n")]
    binds: Option<AccountBinds>,
    #[serde(default, rename = "y")]
    payments: Option<Payments>,
}

/// [`KeyRow`], borrowed, for writing.
#[derive(Serialize, Default)]
struct KeyRowRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none", rename = "b")]
    brute_force: Option<&'a Window>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "f")]
    bind_failures: Option<&'a Window>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "d")]
    dead_wallets: Option<&'a Window>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "s")]
    shared_wallet: Option<&'a Window>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "p")]
    stuffing: Option<&'a Window>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "c")]
    churn: Option<&'a Window>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "n")]
    binds: Option<&'a AccountBinds>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "y")]
    payments: Option<&'a Payments>,
}

/// The record time (micros) of a key's latest activity in one map: what sweeps go by.
trait Last {
    fn last(&self) -> i64;
}

impl Last for Window {
    fn last(&self) -> i64 {
        self.last
    }
}

impl Last for AccountBinds {
    fn last(&self) -> i64 {
        self.last
    }
}

impl Last for Payments {
    fn last(&self) -> i64 {
        self.last
    }
}

/// How far back (micros) the rules of a per-key map look: a key quiet for longer counts as
/// never seen.
fn reach(r: &RuleSet, letter: u8) -> i64 {
    match letter {
        b'b' => r.password_brute_force.count.window,
        b'f' => r.bind_failure_burst.window,
        b'd' => r.dead_wallet_probing.window,
        b's' => r.shared_wallet.window,
        b'p' => r.password_stuffing.count.window,
        b'c' => r.binding_churn.window,
        b'n' => r.bind_then_drain.window.max(r.binding_churn.window),
        _ => r.amount_spike.forget_after,
    }
    .micros()
}

/// The time after which a stored row counts as never seen (see [`Engine::row_of`]).
pub fn row_expiry(row: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(row.get(..8)?.try_into().ok()?))
}

/// The keys an event can change: its account, and its wallet's fingerprint.
/// The keys whose per-key state an event can read or change (see [`Engine::observe`]): its
/// account, for the events the account rules count, and its wallet's fingerprint, for those
/// the wallet rules count. An event of no rule (a lock taken, a triage) needs none.
fn event_keys(e: &Event) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    let account = matches!(
        e.payload,
        Payload::PaymentFailed { .. }
            | Payload::PaymentSucceeded { .. }
            | Payload::BindFailed { .. }
            | Payload::WalletBound { .. }
            | Payload::WalletUnbound { .. }
            | Payload::BindingUnlocked { .. }
    );
    let fp = match &e.payload {
        Payload::WalletBound { wallet, .. } | Payload::BindFailed { wallet, .. } => {
            Some(std::borrow::Cow::Owned(wallet.fingerprint.to_hex()))
        }
        _ => None,
    };
    account
        .then_some(std::borrow::Cow::Borrowed(e.account.as_str()))
        .into_iter()
        .chain(fp)
}

/// The engine's state as a checkpoint stores it, in pieces: a small header (positions, open
/// alerts, locks) and one row per key (account or wallet fingerprint), so that a checkpoint
/// writes only the keys that changed since the one before it (its cost follows the events
/// folded, not the number of accounts the engine tracks), and a key's state is read back by its
/// key alone.
///
/// A row is the time after which it counts as never seen (micros, i64 big-endian: its latest
/// activity plus how far its rules look back, the latest over its maps), then its state in each
/// per-key map (JSON, a letter per map).
#[derive(Debug, Clone, Default)]
pub struct StateDelta {
    /// The header, JSON.
    pub header: Vec<u8>,
    /// Rows to write (`Some`) or remove (`None`), by key.
    pub rows: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Open alerts to write (`Some`, JSON) or remove (`None`), by "rule|key". From a whole
    /// state ([`Engine::full`]), every open alert: the stored ones are replaced.
    pub open: Vec<(String, Option<Vec<u8>>)>,
}

/// The header of a stored state: everything but the per-key maps.
#[derive(Serialize, Deserialize)]
struct Header {
    position: u64,
    stream_seq: u64,
    high_time: i64,
    /// The open alerts (the format before `open_rows`).
    #[serde(default)]
    open: HashMap<String, Alert>,
    /// Whether the open alerts are stored as rows of their own ([`StateDelta::open`]), not here.
    #[serde(default)]
    open_rows: bool,
    pending_locks: BTreeMap<String, LockAction>,
    locks: BTreeMap<Uuid, ActiveLock>,
    #[serde(default)]
    unlocked: BTreeMap<String, Uuid>,
}

/// Calls `$m!(letter, field)` for each per-key map of [`EngineState`], with its row letter.
macro_rules! per_key_maps {
    ($m:ident) => {
        $m!(b'b', brute_force);
        $m!(b'f', bind_failures);
        $m!(b'd', dead_wallets);
        $m!(b's', shared_wallet);
        $m!(b'p', stuffing);
        $m!(b'c', churn);
        $m!(b'n', binds);
        $m!(b'y', payments);
    };
}

impl EngineState {
    /// A state from its stored header alone (the per-key state stays in its rows, read back
    /// key by key: [`Engine::hold`]).
    ///
    /// A header of the format before open alerts had rows of their own holds them: they are
    /// marked changed, so the next checkpoint writes them as rows. Else the open alerts are put
    /// back from their rows ([`EngineState::put_open`]); [`EngineState::open_in_rows`] says so.
    pub fn from_header(header: &[u8]) -> Result<EngineState, serde_json::Error> {
        let h: Header = serde_json::from_slice(header)?;
        let open_dirty = Bookkeeping(if h.open_rows {
            Default::default()
        } else {
            h.open.keys().cloned().collect()
        });
        Ok(EngineState {
            position: h.position,
            stream_seq: h.stream_seq,
            high_time: h.high_time,
            open: h.open,
            open_dirty,
            pending_locks: h.pending_locks,
            locks: h.locks,
            unlocked: h.unlocked,
            ..EngineState::default()
        })
    }

    /// Whether a stored header leaves the open alerts to their rows.
    pub fn open_in_rows(header: &[u8]) -> bool {
        serde_json::from_slice::<Header>(header).is_ok_and(|h| h.open_rows)
    }

    /// Puts back an open alert read from its row ("rule|key", the alert's JSON).
    pub fn put_open(&mut self, slot: &str, alert: &[u8]) -> Result<(), BadRow> {
        let a: Alert = serde_json::from_slice(alert).map_err(bad_row)?;
        if let Some(old) = self.open.insert(slot.to_owned(), a.clone()) {
            self.by_expiry
                .remove(&(old.open_until.timestamp_micros(), slot.to_owned()));
        }
        self.by_expiry
            .insert((a.open_until.timestamp_micros(), slot.to_owned()));
        Ok(())
    }

    /// A whole state from its stored header and every row, by key ([`StateDelta`]).
    pub fn from_rows(header: &[u8], rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<EngineState, BadRow> {
        let mut s = EngineState::from_header(header).map_err(bad_row)?;
        for (k, v) in rows {
            s.put_row(&String::from_utf8_lossy(&k), &v)?;
        }
        Ok(s)
    }

    /// A whole state from its header and rows of the format before rows by key: one row per
    /// map and key, keyed by the map's letter then the key.
    pub fn from_lettered_rows(
        header: &[u8],
        rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<EngineState, serde_json::Error> {
        let mut s = EngineState::from_header(header)?;
        for (k, v) in rows {
            let Some((&letter, key)) = k.split_first() else {
                continue;
            };
            let key = String::from_utf8_lossy(key).into_owned();
            macro_rules! load {
                ($letter:expr, $field:ident) => {
                    if letter == $letter {
                        s.$field.insert(key.clone(), serde_json::from_slice(&v)?);
                    }
                };
            }
            per_key_maps!(load);
        }
        Ok(s)
    }

    /// Puts a stored row's state into the per-key maps.
    fn put_row(&mut self, key: &str, row: &[u8]) -> Result<(), BadRow> {
        let json = row.get(8..).ok_or_else(|| BadRow("shorter than its expiry".into()))?;
        let r: KeyRow = serde_json::from_slice(json).map_err(bad_row)?;
        macro_rules! put {
            ($letter:expr, $field:ident) => {
                if let Some(v) = r.$field {
                    self.$field.insert(key.to_owned(), v);
                }
            };
        }
        per_key_maps!(put);
        Ok(())
    }

    /// The stored row of `key` ([`StateDelta`]); `None` when no map holds it.
    fn row_of(&self, rules: &RuleSet, key: &str) -> Option<Vec<u8>> {
        let mut row = KeyRowRef::default();
        let mut expiry = None;
        macro_rules! part {
            ($letter:expr, $field:ident) => {
                if let Some(v) = self.$field.get(key) {
                    let until = v.last().saturating_add(reach(rules, $letter));
                    expiry = Some(expiry.map_or(until, |e: i64| e.max(until)));
                    row.$field = Some(v);
                }
            };
        }
        per_key_maps!(part);
        let mut out = expiry?.to_be_bytes().to_vec();
        serde_json::to_writer(&mut out, &row).expect("the state serializes");
        Some(out)
    }

    /// Drops `key` from every per-key map.
    fn forget(&mut self, key: &str) {
        macro_rules! forget {
            ($letter:expr, $field:ident) => {
                self.$field.remove(key);
            };
        }
        per_key_maps!(forget);
    }

    fn header(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct HeaderRef<'a> {
            position: u64,
            stream_seq: u64,
            high_time: i64,
            open_rows: bool,
            pending_locks: &'a BTreeMap<String, LockAction>,
            locks: &'a BTreeMap<Uuid, ActiveLock>,
            unlocked: &'a BTreeMap<String, Uuid>,
        }
        serde_json::to_vec(&HeaderRef {
            position: self.position,
            stream_seq: self.stream_seq,
            high_time: self.high_time,
            open_rows: true,
            pending_locks: &self.pending_locks,
            locks: &self.locks,
            unlocked: &self.unlocked,
        })
        .expect("the state serializes")
    }
}

/// A row's JSON error, by position only (a message may quote the value it met).
fn bad_row(e: serde_json::Error) -> BadRow {
    BadRow(format!("{:?} at line {} column {}", e.classify(), e.line(), e.column()))
}

/// Whether a pending lock key (see [`EngineState::pending_locks`]) is one of `alert_id`'s.
pub fn is_lock_of(key: &str, alert_id: &str) -> bool {
    key.strip_prefix(alert_id)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
}

/// The alert a pending lock key belongs to.
pub fn alert_of_lock(key: &str) -> &str {
    key.split_once('#').map_or(key, |(alert, _)| alert)
}

fn forget_pending_locks(pending: &mut BTreeMap<String, LockAction>, alert_id: &str) {
    pending.retain(|k, _| !is_lock_of(k, alert_id));
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// What one rule saw when it matched.
struct Observation {
    rule: &'static str,
    key: AlertKey,
    accounts: Vec<String>,
    severity: Severity,
    window_start: i64,
    observed: i64,
    threshold: i64,
    unit: &'static str,
    currency: Option<Currency>,
    hits: Vec<Hit>,
    cooldown: Span,
    lock: Option<LockAction>,
}

/// The state of `key`, made on first use (without allocating the key when it exists).
fn slot<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("just made")
}

/// Counts hits in `[t - window, t]` after adding `hit`; keeps at most `keep` of them.
fn count_in(w: &mut Window, hit: Hit, window: Span, keep: usize) -> Vec<Hit> {
    w.hits.push_back(hit);
    w.last = w.last.max(hit.t);
    let from = hit.t - window.micros();
    while w.hits.front().is_some_and(|h| h.t < from) || w.hits.len() > keep {
        w.hits.pop_front();
        w.accounts.pop_front();
    }
    w.hits.iter().filter(|h| h.t >= from && h.t <= hit.t).copied().collect()
}

impl Engine {
    pub fn new(rules: RuleSet) -> Engine {
        Engine::resume(rules, EngineState::default())
    }

    pub fn resume(rules: RuleSet, state: EngineState) -> Engine {
        Engine {
            rules,
            state,
            dirty: Default::default(),
            held: None,
        }
    }

    /// An engine whose per-key state is backed by stored rows, holding at most `max` keys in
    /// memory beyond those changed since the last stored checkpoint. The keys `state` already
    /// holds (a checkpoint of a format before rows by key) count as changed at its position:
    /// they stay until a checkpoint past it is stored.
    pub fn backed(rules: RuleSet, state: EngineState, max: usize) -> Engine {
        let mut engine = Engine::resume(rules, state);
        let mut held = Held {
            max,
            stamps: HashMap::new(),
            touched: VecDeque::new(),
            rows_read: 0,
        };
        let position = engine.state.position;
        for key in engine.state_keys() {
            held.stamps.insert(key.clone(), (position, false));
            held.touched.push_back((key.clone(), position, position));
            engine.dirty.insert(key);
        }
        engine.held = Some(held);
        engine
    }

    /// Every key some per-key map holds.
    fn state_keys(&self) -> std::collections::HashSet<String> {
        let s = &self.state;
        let mut keys = std::collections::HashSet::new();
        macro_rules! all_keys {
            ($letter:expr, $field:ident) => {
                keys.extend(s.$field.keys().cloned());
            };
        }
        per_key_maps!(all_keys);
        keys
    }

    /// The keys `e` can change that are not held: their rows must be read back
    /// ([`Engine::hold`]) before it is folded. Empty for an engine not backed by rows.
    pub fn missing(&self, e: &Event) -> Vec<String> {
        let Some(h) = &self.held else {
            return Vec::new();
        };
        event_keys(e)
            .filter(|k| !h.stamps.contains_key(k.as_ref()))
            .map(|k| k.into_owned())
            .collect()
    }

    /// Holds `key` with its stored row (`None`: it has none, it was never seen or swept out).
    pub fn hold(&mut self, key: &str, row: Option<&[u8]>) -> Result<(), BadRow> {
        if let Some(row) = row {
            self.state.put_row(key, row)?;
        }
        if let Some(h) = &mut self.held {
            h.rows_read += u64::from(row.is_some());
            h.stamps.insert(key.to_owned(), (0, row.is_some()));
            h.touched.push_back((key.to_owned(), 0, 0));
        }
        Ok(())
    }

    /// Whether `key` is held (always, for an engine not backed by rows).
    pub fn holds(&self, key: &str) -> bool {
        self.held.as_ref().is_none_or(|h| h.stamps.contains_key(key))
    }

    /// Lets clean keys go (their last change at or before `written`, the position of the last
    /// stored checkpoint), oldest touch first, down to the engine's bound.
    pub fn let_go(&mut self, written: u64) {
        let Some(h) = &mut self.held else {
            return;
        };
        let state = &mut self.state;
        cache::let_go(
            &mut h.stamps,
            &mut h.touched,
            h.max,
            written,
            |(stamp, _)| *stamp,
            |key, _| state.forget(&key),
        );
    }

    /// Keys held in memory and rows read back since the engine began (`None` when not backed).
    pub fn held(&self) -> Option<(usize, u64)> {
        self.held.as_ref().map(|h| (h.stamps.len(), h.rows_read))
    }

    /// Held keys changed after `written` (they stay until a checkpoint covering them is
    /// stored). Visits every held key.
    pub fn pinned(&self, written: u64) -> usize {
        self.held
            .as_ref()
            .map_or(0, |h| h.stamps.values().filter(|(stamp, _)| *stamp > written).count())
    }

    /// Keys changed since the last checkpoint (they stay held until one is stored).
    pub fn changed(&self) -> usize {
        self.dirty.len()
    }

    /// The highest record time seen (micros): rows expiring before it count as never seen.
    pub fn high_time(&self) -> i64 {
        self.state.high_time
    }

    /// Notes that `key`'s state changed at `seq`.
    fn changed_at(&mut self, key: &str, seq: u64) {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        if let Some(h) = &mut self.held {
            h.stamps
                .entry(key.to_owned())
                .and_modify(|(stamp, _)| *stamp = seq)
                .or_insert((seq, false));
            h.touched.push_back((key.to_owned(), seq, seq));
        }
    }

    /// What changed since the last call (or since the engine began): the header and the rows
    /// of the keys changed since, for an incremental checkpoint.
    pub fn delta(&mut self) -> StateDelta {
        let dirty = std::mem::take(&mut self.dirty);
        let open_dirty = std::mem::take(&mut self.state.open_dirty.0);
        let (state, rules, held) = (&self.state, &self.rules, &mut self.held);
        StateDelta {
            header: state.header(),
            open: open_dirty
                .into_iter()
                .map(|slot| {
                    let row = state
                        .open
                        .get(&slot)
                        .map(|a| serde_json::to_vec(a).expect("alerts serialize"));
                    (slot, row)
                })
                .collect(),
            rows: dirty
                .into_iter()
                .filter_map(|k| {
                    let mut row = state.row_of(rules, &k);
                    if held.is_some() {
                        // A row expired already answers as no row: it is not written.
                        row = row.filter(|r| row_expiry(r).is_some_and(|until| until >= state.high_time));
                    }
                    // A held key without state needs no removal unless it has a row.
                    if let Some((_, has_row)) = held.as_mut().and_then(|h| h.stamps.get_mut(&k)) {
                        if !std::mem::replace(has_row, row.is_some()) && row.is_none() {
                            return None;
                        }
                    }
                    Some((k.into_bytes(), row))
                })
                .collect(),
        }
    }

    /// The whole state as rows (a checkpoint that stands alone: the first one, or one replacing
    /// a checkpoint of an older format).
    pub fn full(&mut self) -> StateDelta {
        self.dirty.clear();
        self.state.open_dirty.clear();
        let keys = self.state_keys();
        if let Some(h) = &mut self.held {
            for key in &keys {
                if let Some((_, has_row)) = h.stamps.get_mut(key) {
                    *has_row = true;
                }
            }
        }
        StateDelta {
            header: self.state.header(),
            open: self
                .state
                .open
                .iter()
                .map(|(slot, a)| (slot.clone(), Some(serde_json::to_vec(a).expect("alerts serialize"))))
                .collect(),
            rows: keys
                .into_iter()
                .map(|k| {
                    let row = self.state.row_of(&self.rules, &k);
                    (k.into_bytes(), row)
                })
                .collect(),
        }
    }

    /// Folds one event in; returns the alert changes it caused, in order. Events must come in
    /// global order.
    pub fn apply(&mut self, e: &Event) -> Vec<AlertChange> {
        assert_eq!(e.seq, self.state.position + 1, "alert engine fed out of order");
        self.state.position = e.seq;
        let t = e.record_time.timestamp_micros();
        self.state.high_time = self.state.high_time.max(t);
        debug_assert!(self.missing(e).is_empty(), "the event's keys are held");
        for key in event_keys(e) {
            self.changed_at(&key, e.seq);
        }
        let mut seen = Vec::new();
        self.observe(e, t, &mut seen);
        let changes = seen.into_iter().map(|o| self.raise(o, e, t)).collect();
        if e.seq % SWEEP_EVERY == 0 {
            self.sweep(e.seq);
        }
        changes
    }

    fn count_rule(
        rule: &CountRule,
        name: &'static str,
        map: &mut HashMap<String, Window>,
        key: &str,
        hit: Hit,
        unit: &'static str,
    ) -> Option<Observation> {
        let w = slot(map, key);
        let keep = rule.threshold as usize + 32;
        let hits = count_in(w, hit, rule.window, keep);
        (hits.len() >= rule.threshold as usize).then(|| Observation {
            rule: name,
            key: AlertKey {
                kind: "account".into(),
                value: key.to_owned(),
            },
            accounts: vec![key.to_owned()],
            severity: rule.severity,
            window_start: hit.t - rule.window.micros(),
            observed: hits.len() as i64,
            threshold: rule.threshold as i64,
            unit,
            currency: None,
            hits,
            cooldown: rule.cooldown,
            lock: None,
        })
    }

    fn observe(&mut self, e: &Event, t: i64, out: &mut Vec<Observation>) {
        let r = &self.rules;
        let s = &mut self.state;
        let hit = Hit::of(e);
        let account = e.account.as_str();
        match &e.payload {
            Payload::PaymentFailed {
                binding_id,
                reason: PaymentFailure::WrongPassword,
                ..
            } => {
                let bf = &r.password_brute_force;
                if bf.count.enabled {
                    if let Some(mut o) = Self::count_rule(
                        &bf.count,
                        "password_brute_force",
                        &mut s.brute_force,
                        account,
                        hit,
                        "wrong_passwords",
                    ) {
                        if bf.lock {
                            o.lock = Some(LockAction {
                                account: account.to_owned(),
                                binding_id: *binding_id,
                                until: time(t + bf.lock_for.micros()),
                            });
                        }
                        out.push(o);
                    }
                }
            }
            Payload::BindFailed { reason, wallet, .. } => {
                // A wrong payment password on a bind counts for its wallet, from any account
                // (password stuffing), as well as for its account (below).
                if matches!(reason, BindFailure::InvalidInput { field } if field == "payment_password")
                    && r.password_stuffing.count.enabled
                {
                    let ps = &r.password_stuffing;
                    let fp = wallet.fingerprint.to_hex();
                    let w = s.stuffing.entry(fp.clone()).or_default();
                    w.accounts.push_back(account.to_owned());
                    let keep = ps.count.threshold as usize + 32;
                    let hits = count_in(w, hit, ps.count.window, keep);
                    let from = t - ps.count.window.micros();
                    let mut accounts = w.accounts_within(from, t);
                    accounts.sort_unstable();
                    accounts.dedup();
                    if hits.len() >= ps.count.threshold as usize && accounts.len() >= ps.accounts_min as usize {
                        out.push(Observation {
                            rule: "password_stuffing",
                            key: AlertKey {
                                kind: "wallet".into(),
                                value: fp,
                            },
                            accounts,
                            severity: ps.count.severity,
                            window_start: from,
                            observed: hits.len() as i64,
                            threshold: ps.count.threshold as i64,
                            unit: "wrong_passwords",
                            currency: None,
                            hits,
                            cooldown: ps.count.cooldown,
                            lock: None,
                        });
                    }
                }
                match reason {
                    BindFailure::InvalidInput { .. } | BindFailure::VerificationFactorFailed { .. }
                        if r.bind_failure_burst.enabled =>
                    {
                        out.extend(Self::count_rule(
                            &r.bind_failure_burst,
                            "bind_failure_burst",
                            &mut s.bind_failures,
                            account,
                            hit,
                            "failed_binds",
                        ));
                    }
                    BindFailure::WalletFrozen | BindFailure::WalletClosed if r.dead_wallet_probing.enabled => {
                        out.extend(Self::count_rule(
                            &r.dead_wallet_probing,
                            "dead_wallet_probing",
                            &mut s.dead_wallets,
                            account,
                            hit,
                            "dead_wallet_binds",
                        ));
                    }
                    _ => {}
                }
            }
            Payload::WalletBound { binding_id, wallet, .. } => {
                let sw = &r.shared_wallet;
                if sw.enabled {
                    let fp = wallet.fingerprint.to_hex();
                    let w = s.shared_wallet.entry(fp.clone()).or_default();
                    // One entry per account: its latest bind.
                    if let Some(i) = w.accounts.iter().position(|a| a == account) {
                        w.accounts.remove(i);
                        w.hits.remove(i);
                    }
                    w.accounts.push_back(account.to_owned());
                    let keep = sw.threshold as usize + 32;
                    let hits = count_in(w, hit, sw.window, keep);
                    if hits.len() >= sw.threshold as usize {
                        let from = t - sw.window.micros();
                        let accounts = w.accounts_within(from, t);
                        out.push(Observation {
                            rule: "shared_wallet",
                            key: AlertKey {
                                kind: "wallet".into(),
                                value: fp,
                            },
                            accounts,
                            severity: sw.severity,
                            window_start: from,
                            observed: hits.len() as i64,
                            threshold: sw.threshold as i64,
                            unit: "accounts",
                            currency: None,
                            hits,
                            cooldown: sw.cooldown,
                            lock: None,
                        });
                    }
                }
                if r.bind_then_drain.enabled || r.binding_churn.enabled {
                    let horizon = r.bind_then_drain.window.max(r.binding_churn.window).micros();
                    let b = slot(&mut s.binds, account);
                    b.last = b.last.max(t);
                    b.binds.retain(|x| x.bind.t >= t - horizon);
                    if b.binds.len() == RECENT_BINDS_MAX {
                        b.binds.pop_front();
                    }
                    b.binds.push_back(RecentBind {
                        binding_id: *binding_id,
                        bind: hit,
                        spent: 0,
                        payments: Vec::new(),
                    });
                }
            }
            Payload::WalletUnbound { binding_id, .. } => {
                s.locks.remove(binding_id);
                let ch = &r.binding_churn;
                let bound_at = s
                    .binds
                    .get(account)
                    .and_then(|b| b.binds.iter().find(|x| x.binding_id == *binding_id))
                    .map(|x| x.bind);
                if let Some(bind) = bound_at.filter(|b| ch.enabled && t - b.t <= ch.window.micros()) {
                    if let Some(mut o) = Self::count_rule(ch, "binding_churn", &mut s.churn, account, hit, "cycles") {
                        // The binds of the counted cycles are triggering events too.
                        o.hits.push(bind);
                        o.hits.sort_by_key(|h| h.seq);
                        out.push(o);
                    }
                }
            }
            Payload::PaymentSucceeded {
                binding_id,
                amount_minor,
                currency,
                ..
            } => {
                let dr = &r.bind_then_drain;
                if dr.enabled && *currency == dr.currency {
                    if let Some(b) = s.binds.get_mut(account) {
                        b.last = b.last.max(t);
                        if let Some(x) = b
                            .binds
                            .iter_mut()
                            .find(|x| x.binding_id == *binding_id && t - x.bind.t <= dr.window.micros())
                        {
                            x.spent = x.spent.saturating_add(*amount_minor);
                            if x.payments.len() >= r.limits.event_ids_max {
                                x.payments.remove(0);
                            }
                            x.payments.push(hit);
                            if x.spent >= dr.amount_minor {
                                let mut hits = vec![x.bind];
                                hits.extend(&x.payments);
                                out.push(Observation {
                                    rule: "bind_then_drain",
                                    key: AlertKey {
                                        kind: "account".into(),
                                        value: account.to_owned(),
                                    },
                                    accounts: vec![account.to_owned()],
                                    severity: dr.severity,
                                    window_start: x.bind.t,
                                    observed: x.spent,
                                    threshold: dr.amount_minor,
                                    unit: "minor_units",
                                    currency: Some(dr.currency),
                                    hits,
                                    cooldown: dr.cooldown,
                                    lock: None,
                                });
                            }
                        }
                    }
                }
                let sp = &r.amount_spike;
                if sp.enabled {
                    let p = slot(&mut s.payments, account);
                    if t - p.last > sp.forget_after.micros() && p.last != 0 {
                        p.amounts.clear();
                    }
                    p.last = p.last.max(t);
                    let mut same: Vec<i64> = p
                        .amounts
                        .iter()
                        .filter(|(c, _)| c == currency)
                        .map(|(_, a)| *a)
                        .collect();
                    if same.len() >= sp.min_history as usize {
                        same.sort_unstable();
                        let n = same.len();
                        // Twice the median, exactly (the mean of the middle two when n is even).
                        let median_x2 = same[(n - 1) / 2] as i128 + same[n / 2] as i128;
                        if (*amount_minor as i128) * 2 > sp.factor as i128 * median_x2 {
                            out.push(Observation {
                                rule: "amount_spike",
                                key: AlertKey {
                                    kind: "account".into(),
                                    value: account.to_owned(),
                                },
                                accounts: vec![account.to_owned()],
                                severity: sp.severity,
                                window_start: t,
                                observed: *amount_minor,
                                threshold: (sp.factor as i128 * median_x2 / 2).min(i64::MAX as i128) as i64,
                                unit: "minor_units",
                                currency: Some(*currency),
                                hits: vec![hit],
                                cooldown: sp.cooldown,
                                lock: None,
                            });
                        }
                    }
                    if p.amounts.len() >= sp.history as usize {
                        p.amounts.pop_front();
                    }
                    p.amounts.push_back((*currency, *amount_minor));
                }
            }
            Payload::BindingLocked {
                binding_id,
                alert_id,
                until,
            } => {
                forget_pending_locks(&mut s.pending_locks, alert_id);
                s.locks.insert(
                    *binding_id,
                    ActiveLock {
                        account: account.to_owned(),
                        binding_id: *binding_id,
                        alert_id: alert_id.clone(),
                        until: *until,
                    },
                );
            }
            Payload::BindingLockFailed { alert_id, .. } => {
                forget_pending_locks(&mut s.pending_locks, alert_id);
            }
            Payload::BindingUnlocked {
                binding_id, alert_id, ..
            } => {
                s.locks.remove(binding_id);
                s.unlocked.insert(alert_id.clone(), *binding_id);
                // Guesses after an unlock are counted afresh: `threshold` more lock it again
                // (as the ledger's inline guard allows that many more).
                if let Some(w) = s.brute_force.get_mut(account) {
                    w.hits.clear();
                }
            }
            Payload::BindingUnlockFailed { binding_id, .. } => {
                s.locks.remove(binding_id);
            }
            Payload::SubjectErased { .. } => {
                // An erased account takes no command: nothing more is locked or unlocked for
                // it (a lock in force stays in its event; the account pays no more).
                s.pending_locks.retain(|_, l| l.account != account);
                s.locks.retain(|_, l| l.account != account);
            }
            _ => {}
        }
    }

    /// Opens an alert, or updates the open one for the same rule and key.
    fn raise(&mut self, o: Observation, e: &Event, t: i64) -> AlertChange {
        let max_ids = self.rules.limits.event_ids_max;
        let slot = format!("{}|{}|{}", o.rule, o.key.kind, o.key.value);
        let s = &mut self.state;
        s.stream_seq += 1;
        let open_until = time(t.saturating_add(o.cooldown.micros()));
        let now = e.record_time;
        s.open_dirty.insert(slot.clone());
        // Either way the alert in this slot closes at `open_until` now.
        if let Some(old) = s.open.get(&slot) {
            s.by_expiry.remove(&(old.open_until.timestamp_micros(), slot.clone()));
        }
        s.by_expiry.insert((open_until.timestamp_micros(), slot.clone()));
        let (change, alert) = match s.open.get_mut(&slot).filter(|a| now < a.open_until) {
            Some(a) => {
                // The binding was unlocked while the alert stayed open, and guessing went on:
                // lock it again (under a key of its own, so the ledger does not take it for
                // the first lock's retry).
                if let Some(lock) = &o.lock {
                    if s.unlocked.get(&a.id) == Some(&lock.binding_id) && !s.locks.contains_key(&lock.binding_id) {
                        s.unlocked.remove(&a.id);
                        s.pending_locks.insert(format!("{}#{}", a.id, e.seq), lock.clone());
                        a.lock = Some(lock.clone());
                    }
                }
                a.revision += 1;
                a.matches += 1;
                a.observed = o.observed;
                a.threshold = o.threshold;
                a.window_start = a.window_start.min(time(o.window_start));
                a.window_end = now.max(a.window_end);
                a.updated_at = now;
                a.open_until = open_until;
                a.position = e.seq;
                for acc in o.accounts {
                    if !a.accounts.contains(&acc) && a.accounts.len() < max_ids {
                        a.accounts.push(acc);
                    }
                }
                let mut all: Vec<(u64, Uuid)> = a.event_seqs.iter().copied().zip(a.event_ids.iter().copied()).collect();
                all.extend(o.hits.iter().map(|h| (h.seq, h.id)));
                all.sort_unstable_by_key(|(seq, _)| *seq);
                all.dedup_by_key(|(seq, _)| *seq);
                let extra = all.len().saturating_sub(max_ids);
                all.drain(..extra);
                (a.event_seqs, a.event_ids) = all.into_iter().unzip();
                ("updated", a.clone())
            }
            None => {
                let mut hits = o.hits;
                let extra = hits.len().saturating_sub(max_ids);
                hits.drain(..extra);
                let id = format!("{}-{}", o.rule, e.seq);
                if let Some(lock) = &o.lock {
                    s.pending_locks.insert(id.clone(), lock.clone());
                }
                let alert = Alert {
                    id,
                    rule: o.rule.to_owned(),
                    key: o.key,
                    accounts: o.accounts,
                    severity: o.severity,
                    window_start: time(o.window_start),
                    window_end: now,
                    observed: o.observed,
                    threshold: o.threshold,
                    unit: o.unit.to_owned(),
                    currency: o.currency,
                    event_ids: hits.iter().map(|h| h.id).collect(),
                    event_seqs: hits.iter().map(|h| h.seq).collect(),
                    matches: 1,
                    opened_at: now,
                    updated_at: now,
                    open_until,
                    revision: 1,
                    position: e.seq,
                    lock: o.lock,
                };
                s.open.insert(slot, alert.clone());
                ("opened", alert)
            }
        };
        AlertChange {
            stream_seq: s.stream_seq,
            change: change.to_owned(),
            alert,
        }
    }

    /// Drops state that can no longer matter: keys quiet for longer than their rules look back
    /// (they answer as keys never seen do), and alerts past their cool-down.
    fn sweep(&mut self, seq: u64) {
        let now = self.state.high_time;
        let (rules, s) = (&self.rules, &mut self.state);
        let mut gone = Vec::new();
        macro_rules! trim {
            ($letter:expr, $field:ident) => {
                let before = now - reach(rules, $letter);
                s.$field.retain(|k, v| {
                    let keep = v.last() >= before;
                    if !keep {
                        gone.push(k.clone());
                    }
                    keep
                });
            };
        }
        per_key_maps!(trim);
        // Open alerts past their cool-down close, the soonest first (their rows go with the next
        // checkpoint): the work follows the alerts closing, not the alerts open.
        if s.by_expiry.len() != s.open.len() {
            s.by_expiry.0 = s
                .open
                .iter()
                .map(|(slot, a)| (a.open_until.timestamp_micros(), slot.clone()))
                .collect();
        }
        while s.by_expiry.first().is_some_and(|(until, _)| *until < now) {
            let (_, slot) = s.by_expiry.pop_first().expect("a first entry");
            s.open.remove(&slot);
            s.open_dirty.insert(slot);
        }
        // (Looked up only when a lock was lifted under an open alert: the set of every open
        // alert's id costs as much as the alerts open.)
        if !s.unlocked.is_empty() {
            let open_ids: std::collections::HashSet<&str> = s.open.values().map(|a| a.id.as_str()).collect();
            s.unlocked.retain(|id, _| open_ids.contains(id.as_str()));
        }
        for key in gone {
            self.changed_at(&key, seq);
        }
    }

    /// Keys tracked, over all rules (for metrics).
    pub fn keys(&self) -> usize {
        let s = &self.state;
        s.brute_force.len()
            + s.bind_failures.len()
            + s.dead_wallets.len()
            + s.shared_wallet.len()
            + s.stuffing.len()
            + s.churn.len()
            + s.binds.len()
            + s.payments.len()
    }

    /// Alerts currently open (within their cool-down).
    pub fn open_alerts(&self) -> usize {
        self.state.open.len()
    }
}

/// Runs the rules over events from the start of a log: every change, in order.
pub fn rebuild<'a>(rules: RuleSet, events: impl IntoIterator<Item = &'a Event>) -> Vec<AlertChange> {
    let mut engine = Engine::new(rules);
    events.into_iter().flat_map(|e| engine.apply(e)).collect()
}
