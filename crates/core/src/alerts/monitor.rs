//! The live monitor: a thread that folds every durable event through the rule engine as soon
//! as the flusher publishes it, publishes the alert changes to followers (the SSE feed, the
//! alerts topic: see [`super::feed`]), has them stored, and carries out the protective
//! actions.
//!
//! - **Feed.** Events arrive through the ledger's tap (a bounded queue that never makes the
//!   writer wait). A gap (a batch skipped because the queue was full) is read from the log, so
//!   the monitor sees every event exactly once, in order.
//! - **Storing.** Changes and checkpoints go, in order, through a bounded queue to a store
//!   thread that writes them to sled, so neither a slow sled write nor a large checkpoint
//!   (measured: 195 ms inline for a few thousand keys) holds up the alerts. A checkpoint is
//!   therefore always stored after the changes it covers.
//! - **Memory.** The rules' per-key windows live in the store, one row per key, and the engine
//!   holds at most `keys_cached` keys in memory beyond those changed since the last stored
//!   checkpoint: an event's keys not held are read back before it is folded, and keys are let
//!   go once a checkpoint covering their last change is stored. A checkpoint is written early
//!   when half that many keys changed since the last one, so memory stays within about twice
//!   the bound. Expired rows are looked for a few at a time (one row per event folded: they keep
//!   pace with the keys events make, at a cost per event that does not grow with the rows) and
//!   removed by the next checkpoint.
//! - **Restart.** The engine's state is checkpointed with its position every
//!   `checkpoint_every_events` and on close. On start the monitor resumes from the checkpoint and folds
//!   the log after it; the changes it produces again are the same (same stream seqs, ids and
//!   contents) and overwrite themselves, so nothing is raised twice or missed.
//! - **Actions.** A lock the engine asks for is sent to the ledger as a command whose
//!   idempotency key is made from the alert id; it stays pending (in the checkpointed state)
//!   until its event is seen in the log, so a crash in between sends the same command again
//!   and the ledger answers it with the first result. Locks past their `until` (wall clock)
//!   are lifted with an `expired` unlock command, keyed the same way.

use bindledger_events::{Context, UnlockCause};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::feed::AlertFeed;
use super::store::{Related, RELATED_DEVICE, RELATED_IP};

/// How long the log stays ahead of the monitor, with no batch coming, before the monitor reads
/// it (a batch dropped by a full tap, at the end of a burst).
const QUIET_GAP: Duration = Duration::from_millis(50);

/// Device and address pairs the monitor remembers having stored.
const RELATED_SENT_MAX: usize = 100_000;
use super::store::{AlertStore, TriageState};
use crate::domain::alerts::engine::{row_expiry, AlertChange, Engine, EngineState, StateDelta};
use crate::domain::alerts::rules::{RuleSet, RULES_COUNT, RULE_NAMES};
use crate::domain::command::{LockCommand, Meta, UnlockCommand};
use crate::error::{Error, Result};
use crate::Ledger;

/// Durable batches waiting for the monitor (beyond it they are read from the log).
pub const TAP_CAPACITY: usize = 1024;
/// Events folded between two writes of changes while catching up.
const CATCH_UP_CHUNK: usize = 8192;
/// Writes waiting for the store thread (beyond it the monitor waits: backpressure).
const STORE_QUEUE: usize = 256;
/// How often locks are checked for expiry and pending actions retried.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub rules: RuleSet,
    /// Events between two checkpoints of the engine's state.
    pub checkpoint_every_events: u64,
    /// Keys (accounts, wallets) whose windows are held in memory beyond those changed since
    /// the last stored checkpoint; the others are read back from their rows when needed.
    pub keys_cached: usize,
    /// Send the lock and unlock commands the rules ask for (the live ledger does; a
    /// read-only run does not).
    pub actions: bool,
    /// How often locks are checked for expiry and pending actions retried when no event comes.
    pub tick: Duration,
    /// One action at a time, in the order of their keys (a simulation's, so that the log's
    /// order is a function of its seed); by default they are sent together.
    pub serial_actions: bool,
}

impl MonitorConfig {
    pub fn new(rules: RuleSet) -> MonitorConfig {
        MonitorConfig {
            rules,
            checkpoint_every_events: 100_000,
            keys_cached: 100_000,
            actions: true,
            tick: TICK,
            serial_actions: false,
        }
    }
}

/// What the monitor has done, for `/metrics` and `status`.
#[derive(Debug, Default)]
pub struct MonitorStatus {
    pub position: AtomicU64,
    pub stream_seq: AtomicU64,
    pub keys: AtomicU64,
    /// Keys whose windows are held in memory, and rows read back since the start.
    pub keys_held: AtomicU64,
    pub rows_read: AtomicU64,
    pub open_alerts: AtomicU64,
    /// Alerts opened by this process, per rule (in [`RULE_NAMES`] order); changes made again
    /// after a restart, already stored before it, are not counted twice.
    pub opened: [AtomicU64; RULES_COUNT],
    pub updated_total: AtomicU64,
    pub gaps_read_from_log: AtomicU64,
    pub locks_sent: AtomicU64,
    pub unlocks_sent: AtomicU64,
    /// The position at which the monitor last looked for actions to send (after folding).
    pub acted: AtomicU64,
    /// Lock and unlock commands sent and not yet answered.
    pub actions_in_flight: AtomicU64,
    /// Times the monitor has looked for actions to send (after each batch, and each tick).
    pub act_passes: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl MonitorStatus {
    /// Counts changes past `known` (those made again after a restart were counted before).
    fn count(&self, changes: &[AlertChange], known: u64) {
        for c in changes.iter().filter(|c| c.stream_seq > known) {
            if c.change == "opened" {
                if let Some(i) = RULE_NAMES.iter().position(|r| *r == c.alert.rule) {
                    self.opened[i].fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.updated_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A running monitor. Stop the ledger first ([`Ledger::close`]); then [`Monitor::join`] waits
/// for the final checkpoint.
pub struct Monitor {
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<MonitorStatus>,
    feed: Arc<AlertFeed>,
    rules: Arc<RuleSet>,
}

/// What the store thread writes, in order.
enum Write {
    Changes(Vec<AlertChange>),
    Triage(Vec<(String, TriageState)>),
    /// A checkpoint's rows, whether they are the whole state, and its position.
    Checkpoint(StateDelta, bool, u64),
    Related(Vec<Related>),
}

impl Monitor {
    /// Starts the monitor on an open ledger. `runtime` runs the commands it sends.
    pub fn start(ledger: &Ledger, config: MonitorConfig, runtime: tokio::runtime::Handle) -> Result<Monitor> {
        let store = ledger.alert_store();
        let rules = config.rules.clone();
        let digest = config.rules.digest();
        // With no checkpoint, the engine starts empty and every key it touches is a delta's;
        // one of an older format is replaced by a whole one.
        let mut whole_next = false;
        let state = match store.checkpoint()? {
            Some(cp) => {
                whole_next = cp.whole;
                if cp.rules_digest != digest {
                    tracing::warn!(
                        checkpoint = %cp.rules_digest,
                        now = %digest,
                        "the alert rules changed since the last checkpoint: they apply from position {} on",
                        cp.state.position
                    );
                }
                cp.state
            }
            None => EngineState::default(),
        };
        if state.position > ledger.log_len() {
            return Err(Error::corrupt(format!(
                "alert checkpoint at {} is past the log's end {}",
                state.position,
                ledger.log_len()
            )));
        }
        let status = Arc::new(MonitorStatus::default());
        status.position.store(state.position, Ordering::Relaxed);
        status.stream_seq.store(state.stream_seq, Ordering::Relaxed);
        // Followers may already have read what is stored past the checkpoint: the monitor
        // makes those changes again, identically.
        let stored = store.last_stream_seq()?;
        // Built once, on a store from before the indexes: the triage histories from the log.
        let log = ledger.clone();
        let indexed = store.ensure_indexes(move || {
            Ok(log.raw_events(1).filter_map(|r| match r {
                Err(e) => Some(Err(e)),
                Ok((seq, bytes)) => match bindledger_events::decode(&bytes) {
                    Err(e) => Some(Err(Error::corrupt_by(format!("event {seq}"), e))),
                    Ok(e) => match e.payload {
                        bindledger_events::Payload::AlertTriaged { alert_id, .. } => Some(Ok((alert_id, seq))),
                        _ => None,
                    },
                },
            }))
        })?;
        if indexed > 0 {
            tracing::info!(alerts = indexed, "the alert listing's indexes were built");
        }
        let feed = Arc::new(AlertFeed::new(store.clone(), stored, store.last_triage_seq()?));
        let rx = ledger.tap(TAP_CAPACITY);
        let worker = Worker {
            ledger: ledger.clone(),
            store: store.clone(),
            // Rows by key are stored through the checkpoint's position; an older format's are not.
            written: Arc::new(AtomicU64::new(if whole_next { 0 } else { state.position })),
            engine: Engine::backed(config.rules.clone(), state, config.keys_cached),
            expiry_cursor: Vec::new(),
            expiry_looked: 0,
            expired: Vec::new(),
            digest,
            config,
            status: status.clone(),
            feed: feed.clone(),
            runtime,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            since_checkpoint: 0,
            stored_at_start: stored,
            writes: None,
            triage: Vec::new(),
            related: Vec::new(),
            related_sent: HashSet::new(),
            whole_next,
        };
        let thread = std::thread::Builder::new()
            .name("bindledger-monitor".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::io(format!("starting the monitor thread: {e}")))?;
        Ok(Monitor {
            thread: Some(thread),
            status,
            feed,
            rules: Arc::new(rules),
        })
    }

    /// The rules it runs.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The live stream of alert changes.
    pub fn feed(&self) -> &Arc<AlertFeed> {
        &self.feed
    }

    pub fn status(&self) -> &Arc<MonitorStatus> {
        &self.status
    }

    pub fn store(&self) -> &AlertStore {
        self.feed.store()
    }

    /// Waits for the monitor to finish (after the ledger was closed).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    ledger: Ledger,
    store: AlertStore,
    engine: Engine,
    digest: String,
    config: MonitorConfig,
    status: Arc<MonitorStatus>,
    feed: Arc<AlertFeed>,
    runtime: tokio::runtime::Handle,
    /// Action keys (idempotency keys) sent and not yet answered.
    in_flight: Arc<Mutex<HashSet<String>>>,
    since_checkpoint: u64,
    /// The last stream seq stored when the monitor started.
    stored_at_start: u64,
    /// To the store thread.
    writes: Option<std::sync::mpsc::SyncSender<Write>>,
    /// Triage events folded and not yet sent to the store thread.
    triage: Vec<(String, TriageState)>,
    /// Device and address fingerprints seen with an account, not yet sent to the store thread.
    related: Vec<Related>,
    /// Pairs sent already (bounded: cleared when full; a pair sent again is written again,
    /// which changes nothing).
    related_sent: HashSet<(u8, bindledger_events::Hash, String)>,
    /// The next checkpoint is written whole (the stored one is of an older format).
    whole_next: bool,
    /// The position of the last checkpoint stored (set by the store thread): keys changed at
    /// or before it may be let go.
    written: Arc<AtomicU64>,
    /// Where the last look for expired rows ended.
    expiry_cursor: Vec<u8>,
    /// Events (of `since_checkpoint`) whose look for expired rows was made.
    expiry_looked: u64,
    /// Keys whose stored rows were found expired since the last checkpoint, which removes
    /// those of keys it does not hold (a key read back since is held: its row is its own).
    expired: Vec<String>,
}

impl Worker {
    fn run(mut self, rx: std::sync::mpsc::Receiver<crate::store::DurableBatch>) {
        let (tx, writes) = std::sync::mpsc::sync_channel::<Write>(STORE_QUEUE);
        let writer = {
            let (store, digest, status, feed, written) = (
                self.store.clone(),
                self.digest.clone(),
                self.status.clone(),
                self.feed.clone(),
                self.written.clone(),
            );
            std::thread::Builder::new()
                .name("bindledger-alert-store".into())
                .spawn(move || {
                    for w in writes {
                        let result = match w {
                            Write::Changes(changes) => store.write(&changes).map(|_| {
                                if let Some(last) = changes.last() {
                                    feed.stored_through(last.stream_seq);
                                }
                            }),
                            Write::Related(items) => store.write_related(&items),
                            Write::Triage(items) => store.write_triage(&items).map(|last| {
                                if let Some(seq) = last {
                                    feed.triaged_through(seq);
                                }
                            }),
                            Write::Checkpoint(delta, whole, position) => store
                                .write_checkpoint(&delta, &digest, whole)
                                .map(|_| written.store(position, Ordering::Release)),
                        };
                        if let Err(e) = result {
                            // Stop storing: a later checkpoint must not cover changes that
                            // were not stored. The next start folds the log from the last one.
                            tracing::error!(error = %crate::error::chain(&e), "storing alerts failed; they are made again from the log on the next start");
                            *status.last_error.lock().expect("status lock") = Some(e.to_string());
                            return false;
                        }
                    }
                    true
                })
                .expect("starting the alert store thread")
        };
        self.writes = Some(tx);
        let result = self.run_inner(rx).and_then(|_| {
            // The final checkpoint, after the last changes; never after a failure (the state
            // may then be ahead of the stored changes).
            let checkpoint = self.checkpoint()?;
            self.send(checkpoint);
            Ok(())
        });
        drop(self.writes.take());
        let stored_all = writer.join().unwrap_or(false);
        if let Err(e) = result.and_then(|_| self.ledger.flush()) {
            self.fail(e);
        } else if stored_all {
            tracing::info!(position = self.engine.state.position, "alert monitor checkpoint saved");
        }
    }

    fn send(&self, w: Write) {
        if let Some(tx) = &self.writes {
            // Blocks while the store thread is STORE_QUEUE writes behind (backpressure).
            let _ = tx.send(w);
        }
    }

    fn run_inner(&mut self, rx: std::sync::mpsc::Receiver<crate::store::DurableBatch>) -> Result<()> {
        let mut ahead_since: Option<std::time::Instant> = None;
        self.catch_up(self.ledger.log_len())?;
        tracing::info!(
            position = self.engine.state.position,
            stream_seq = self.engine.state.stream_seq,
            "alert monitor caught up"
        );
        loop {
            match rx.recv_timeout(self.config.tick) {
                Ok(batch) => {
                    ahead_since = None;
                    crate::seams::panic_point("bindledger-monitor");
                    let mut batches = vec![batch];
                    while let Ok(b) = rx.try_recv() {
                        batches.push(b);
                    }
                    self.fold(&batches)?;
                }
                // Quiet: a batch the tap dropped (its queue was full) is found when the next
                // one comes, and the log may stay quiet. When the log has stayed ahead of the
                // position for a while with no batch coming (not a batch on its way, which
                // comes within microseconds), the monitor reads it, so that a burst's last
                // alerts do not wait for the next event.
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let end = self.ledger.log_len();
                    if end <= self.engine.state.position {
                        ahead_since = None;
                    } else if ahead_since.get_or_insert_with(std::time::Instant::now).elapsed() >= QUIET_GAP {
                        self.status.gaps_read_from_log.fetch_add(1, Ordering::Relaxed);
                        self.catch_up(end)?;
                        ahead_since = None;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // A replica computes the same alerts but never acts: the primary does.
            if self.config.actions && self.ledger.is_primary() {
                self.act();
            }
            self.status.acted.store(self.engine.state.position, Ordering::SeqCst);
            self.status.act_passes.fetch_add(1, Ordering::SeqCst);
        }
        // The ledger closed: fold whatever reached the log after the last batch.
        self.catch_up(self.ledger.log_len())?;
        tracing::info!(position = self.engine.state.position, "alert monitor stopped");
        Ok(())
    }

    fn fail(&self, e: Error) {
        tracing::error!(error = %crate::error::chain(&e), "the alert monitor stopped; it resumes from its checkpoint on the next start");
        *self.status.last_error.lock().expect("status lock") = Some(e.to_string());
    }

    /// Folds the log from the engine's position through `through`.
    fn catch_up(&mut self, through: u64) -> Result<()> {
        while self.engine.state.position < through {
            let from = self.engine.state.position + 1;
            let mut changes = Vec::new();
            for r in self.ledger.raw_events(from).take(CATCH_UP_CHUNK) {
                let (seq, bytes) = r?;
                if seq > through {
                    break;
                }
                let event =
                    bindledger_events::decode(&bytes).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))?;
                self.note_triage(&event);
                self.note_related(&event);
                changes.extend(self.apply(&event)?);
            }
            if self.engine.state.position < from {
                return Err(Error::corrupt(format!("event {from} is missing from the log")));
            }
            self.since_checkpoint += self.engine.state.position + 1 - from;
            self.commit(changes)?;
        }
        Ok(())
    }

    fn fold(&mut self, batches: &[crate::store::DurableBatch]) -> Result<()> {
        let mut changes = Vec::new();
        for batch in batches {
            for e in batch.iter() {
                if e.seq <= self.engine.state.position {
                    continue;
                }
                if e.seq > self.engine.state.position + 1 {
                    // A batch was skipped (the queue was full): read the gap from the log.
                    self.status.gaps_read_from_log.fetch_add(1, Ordering::Relaxed);
                    self.commit(std::mem::take(&mut changes))?;
                    self.catch_up(e.seq - 1)?;
                }
                self.note_triage(e);
                self.note_related(e);
                changes.extend(self.apply(e)?);
                self.since_checkpoint += 1;
            }
        }
        self.commit(changes)
    }

    /// Folds one event in, after reading back the rows of its keys that are not held.
    fn apply(&mut self, e: &bindledger_events::Event) -> Result<Vec<AlertChange>> {
        for key in self.engine.missing(e) {
            let row = self.store.window_row(&key)?;
            self.engine
                .hold(&key, row.as_deref())
                .map_err(|e| Error::corrupt_by("alerts", e))?;
        }
        Ok(self.engine.apply(e))
    }

    /// What the next checkpoint writes: the keys changed since the last one (the whole state
    /// when the stored one is of an older format), and the removal of the stored rows found
    /// expired since the last one, of keys not held (a held key's own sweep removes its row; a
    /// key read back since was changed by the event that needed it, and is held until a
    /// checkpoint after this one is stored) whose row is still expired.
    fn checkpoint(&mut self) -> Result<Write> {
        let position = self.engine.state.position;
        if std::mem::take(&mut self.whole_next) {
            return Ok(Write::Checkpoint(self.engine.full(), true, position));
        }
        let mut delta = self.engine.delta();
        let now = self.engine.high_time();
        for key in std::mem::take(&mut self.expired) {
            // A key not held is clean: its stored row is its last. Read again, as the row
            // looked at may have been an older one, replaced since by a checkpoint in flight.
            if !self.engine.holds(&key)
                && self
                    .store
                    .window_row(&key)?
                    .is_some_and(|row| row_expiry(&row).is_some_and(|until| until < now))
            {
                delta.rows.push((key.into_bytes(), None));
            }
        }
        Ok(Write::Checkpoint(delta, false, position))
    }

    /// Publishes changes to the followers, then has them stored (with a checkpoint when one
    /// is due, after them).
    fn commit(&mut self, changes: Vec<AlertChange>) -> Result<()> {
        self.feed.publish(&changes);
        self.status.count(&changes, self.stored_at_start);
        for c in &changes {
            tracing::info!(
                alert = %c.alert.id,
                change = %c.change,
                rule = %c.alert.rule,
                key = %c.alert.key.value,
                severity = c.alert.severity.as_str(),
                observed = c.alert.observed,
                threshold = c.alert.threshold,
                "alert"
            );
        }
        if !changes.is_empty() {
            self.send(Write::Changes(changes));
        }
        if !self.triage.is_empty() {
            let triage = std::mem::take(&mut self.triage);
            self.send(Write::Triage(triage));
        }
        if !self.related.is_empty() {
            let related = std::mem::take(&mut self.related);
            self.send(Write::Related(related));
        }
        // A stored row looked at for expiry per event folded since the last look.
        let look = self.since_checkpoint.saturating_sub(self.expiry_looked);
        if look > 0 {
            let now = self.engine.high_time();
            let found = self.store.expired_rows(&mut self.expiry_cursor, look as usize, now)?;
            self.expired.extend(found);
            self.expiry_looked = self.since_checkpoint;
        }
        // Early when many keys changed: they stay in memory until a checkpoint covers them.
        let crowded = self.engine.changed() > (self.config.keys_cached / 2).max(1);
        if self.since_checkpoint >= self.config.checkpoint_every_events || crowded || self.whole_next {
            let checkpoint = self.checkpoint()?;
            self.send(checkpoint);
            self.since_checkpoint = 0;
            self.expiry_looked = 0;
        }
        self.engine.let_go(self.written.load(Ordering::Acquire));
        self.publish_status();
        Ok(())
    }

    /// Keeps the device and address fingerprints of an event (schema v9) with its account, the
    /// first time the pair is seen (since the monitor started).
    fn note_related(&mut self, e: &bindledger_events::Event) {
        for (kind, fp) in [(RELATED_DEVICE, e.context.device_fp), (RELATED_IP, e.context.ip_fp)] {
            let Some(fp) = fp else { continue };
            if self.related_sent.len() >= RELATED_SENT_MAX {
                self.related_sent.clear();
            }
            if self.related_sent.insert((kind, fp, e.account.clone())) {
                self.related.push(Related {
                    kind,
                    fingerprint: fp,
                    account: e.account.clone(),
                    seq: e.seq,
                });
            }
        }
    }

    /// Keeps an `alert_triaged` event for the alert's triage state.
    fn note_triage(&mut self, e: &bindledger_events::Event) {
        if let bindledger_events::Payload::AlertTriaged {
            alert_id,
            action,
            operator,
            assignee,
            ..
        } = &e.payload
        {
            self.triage.push((
                alert_id.clone(),
                TriageState {
                    action: action.as_str().to_owned(),
                    operator: operator.clone(),
                    assignee: assignee.clone(),
                    at: e.record_time,
                    seq: e.seq,
                },
            ));
        }
    }

    fn publish_status(&self) {
        let s = &self.engine.state;
        // Release: a reader that sees the position sees the changes published before it.
        self.status.position.store(s.position, Ordering::Release);
        self.status.stream_seq.store(s.stream_seq, Ordering::Relaxed);
        self.status.keys.store(self.engine.keys() as u64, Ordering::Relaxed);
        let (held, read) = self.engine.held().unwrap_or_default();
        self.status.keys_held.store(held as u64, Ordering::Relaxed);
        self.status.rows_read.store(read, Ordering::Relaxed);
        self.status
            .open_alerts
            .store(self.engine.open_alerts() as u64, Ordering::Relaxed);
    }

    /// Sends the pending locks and the due unlocks that are not already on their way.
    fn act(&mut self) {
        let now = self.ledger.now();
        let mut sends: Vec<(String, Action)> = Vec::new();
        {
            let in_flight = self.in_flight.lock().expect("lock");
            for (lock_key, lock) in &self.engine.state.pending_locks {
                let key = format!("lock:{lock_key}");
                if !in_flight.contains(&key) {
                    let alert_id = crate::domain::alerts::engine::alert_of_lock(lock_key).to_owned();
                    sends.push((key, Action::Lock(alert_id, lock.clone())));
                }
            }
            for lock in self.engine.state.locks.values() {
                // One key per lock: an alert that locks again (after an expiry or an unlock)
                // ends each of its locks by a command of its own, never a replay of the first.
                let key = format!("unlock:{}@{}", lock.alert_id, lock.until.timestamp_micros());
                if lock.until <= now && !in_flight.contains(&key) {
                    sends.push((key, Action::Unlock(lock.clone())));
                }
            }
        }
        sends.sort_by(|a, b| a.0.cmp(&b.0));
        if self.config.serial_actions {
            if !self.in_flight.lock().expect("lock").is_empty() {
                return;
            }
            sends.truncate(1);
        }
        for (key, action) in sends {
            self.in_flight.lock().expect("lock").insert(key.clone());
            self.status.actions_in_flight.fetch_add(1, Ordering::SeqCst);
            let ledger = self.ledger.clone();
            let in_flight = self.in_flight.clone();
            let status = self.status.clone();
            let meta = |account: &str, alert_id: &str| Meta {
                account: account.to_owned(),
                idempotency_key: Some(key.clone()),
                expected_version: None,
                correlation_id: Some(alert_id.to_owned()),
                event_time: None,
                keys_checked: None,
                context: Context {
                    channel: "monitor".into(),
                    ..Context::default()
                },
            };
            let task = match action {
                Action::Lock(alert_id, lock) => {
                    status.locks_sent.fetch_add(1, Ordering::Relaxed);
                    let cmd = LockCommand {
                        meta: meta(&lock.account, &alert_id),
                        binding_id: lock.binding_id,
                        alert_id,
                        until: lock.until,
                    };
                    futures_util::future::Either::Left(async move { ledger.lock(cmd).await })
                }
                Action::Unlock(lock) => {
                    status.unlocks_sent.fetch_add(1, Ordering::Relaxed);
                    let cmd = UnlockCommand {
                        meta: meta(&lock.account, &lock.alert_id),
                        binding_id: lock.binding_id,
                        cause: UnlockCause::Expired,
                        alert_id: Some(lock.alert_id.clone()),
                    };
                    futures_util::future::Either::Right(async move { ledger.unlock(cmd).await })
                }
            };
            self.runtime.spawn(async move {
                let result = task.await;
                if let Err(e) = &result {
                    tracing::warn!(key = %key, error = %crate::error::chain(&e), "a protective action failed; it is sent again");
                    // Retried at a later tick (same key: the ledger never does it twice).
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                in_flight.lock().expect("lock").remove(&key);
                status.actions_in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

enum Action {
    Lock(String, crate::domain::alerts::engine::LockAction),
    Unlock(crate::domain::alerts::engine::ActiveLock),
}
