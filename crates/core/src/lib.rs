//! The ledger core: the write path and its storage. It depends on the domain only, never on
//! an adapter.
//!
//! - [`writer`]: the single writer thread (batching, deciding) and the flusher (group commit).
//! - [`store`]: the sled layout: the log in chunks (one atomic batch and one synced flush per
//!   group commit), derived rows in a separate tree.
//! - [`idempotency`] and [`keytable`]: the idempotency and paid-order index, derived from the
//!   log, in memory and on disk.
//! - [`indexer`]: history rows and projection snapshots, off the write path.
//! - [`keys`]: the ledger secret and the rules file on disk.
//! - [`keystore`]: the master keys (a file, or a PKCS#11 token); [`datakeys`]: each account's
//!   data key, which seals its events' personal fields, and its erasure.
//! - [`head`]: the head record, which refuses to start on a log that lost acknowledged events.
//! - [`checkpoint`]: signed checkpoints of the chain head and their storage; [`signer`]: the
//!   task that signs the head.
//! - [`alerts`]: the live monitor, its feed and the alerts' storage.
//! - [`metrics`]: the counters and histograms the ledger keeps.
//! - [`webhooks`]: how far the webhooks have sent the alert stream, and their delivery log.
//! - [`offline`]: export and verify a log that no process has open.
//!
//! [`Ledger`], the handle below, is the library API. A command goes through
//! 1. validation (done when the command was built),
//! 2. an idempotency look-up and pre-checks against the read model, so that a retry or a
//!    command that would be refused anyway never reaches the provider,
//! 3. the wallet gateway, concurrently, outside the writer (bounded by a semaphore and a
//!    timeout),
//! 4. the single writer, through a bounded queue; the answer comes once the event is durable.

pub(crate) use bindledger_domain::{self as domain, error, Error, Result};

pub mod accounts;
pub mod config;
pub mod datakeys;
pub use config::Config;

pub mod alerts;
pub mod checkpoint;
pub mod clock;
pub mod head;
pub mod idempotency;
pub mod indexer;
pub mod invariants;
pub mod keys;
pub mod keystore;
pub mod keytable;
pub mod metrics;
pub mod offline;
pub mod seams;
pub mod shards;
pub mod signer;
pub mod store;
pub mod webhooks;
pub mod writer;

use bindledger_events::{codec, hash_bytes, BindFailure, ChainVerifier, Event, Hash, Payload, PaymentFailure};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::accounts::{CacheFigures, CachedProjection};
use crate::domain::command::{BindCommand, LockCommand, Meta, PayCommand, UnbindCommand, UnlockCommand};
use crate::domain::decide::{self, BindFacts, BindVerdict, PayFacts, PayVerdict, Rules};
use crate::domain::gateway::{BindVerification, GatewayFailure, PaymentAuthorization, WalletGateway};
use crate::domain::projection::{AccountState, Projection};
use crate::domain::secret::LedgerSecret;
use crate::idempotency::KeyIndex;
use crate::indexer::Indexer;
use crate::metrics::Metrics;
use crate::store::{IndexBatch, Store};
use crate::writer::{Committed, Request, Submission, Writer};

#[cfg(feature = "simulation")]
pub use crate::seams::PlantedBug;
pub use crate::seams::Seams;
pub use crate::writer::Committed as CommandResult;

/// How long a command waits for the wallet provider (`gateway.timeout_ms`; forever, near
/// enough, with the simulator's planted `NoGatewayTimeout`).
fn gateway_timeout(config: &Config, seams: &Seams) -> Duration {
    #[cfg(feature = "simulation")]
    if seams.planted_bug == Some(PlantedBug::NoGatewayTimeout) {
        return Duration::from_secs(24 * 3600);
    }
    let _ = seams;
    Duration::from_millis(config.gateway.timeout_ms)
}

/// What a guard's budget of wrong passwords belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Guarded {
    /// Payments on one binding.
    Binding(Uuid),
    /// Binds of one wallet (its fingerprint), from every account.
    Wallet(Hash),
}

/// One attempt that will ask the provider for a password, counted against its budget while it
/// lasts.
struct Attempt<'l> {
    ledger: &'l Ledger,
    key: Guarded,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut attempts = self.ledger.inner.attempts.lock().expect("attempts lock");
        if let std::collections::hash_map::Entry::Occupied(mut e) = attempts.entry(self.key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        drop(attempts);
        self.ledger.inner.attempt_ended.notify_waiters();
    }
}

/// An order's payment in flight (see [`Ledger::claim_order`]); released when dropped.
struct OrderClaim<'l> {
    ledger: &'l Ledger,
    key: String,
}

impl Drop for OrderClaim<'_> {
    fn drop(&mut self) {
        self.ledger
            .inner
            .order_claims
            .lock()
            .expect("order claims lock")
            .remove(&self.key);
        self.ledger.inner.order_ended.notify_waiters();
    }
}

/// A handle to an open ledger. Cheap to clone; the writer stops when the last handle is
/// closed or dropped.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    /// Where the ledger reads the time (the system clock but in the simulator).
    clock: Arc<dyn clock::Clock>,
    secret: LedgerSecret,
    gateway: Arc<dyn WalletGateway>,
    /// Bounded queue to the writer; `None` once closed.
    tx: RwLock<Option<mpsc::Sender<Submission>>>,
    read: Arc<RwLock<CachedProjection>>,
    /// Keys and paid orders of durable commands (see [`KeyIndex`]).
    idempotency: Arc<KeyIndex>,
    /// Each account's data key (see [`crate::datakeys`]).
    data_keys: Arc<crate::datakeys::DataKeys>,
    /// Orders with a payment in flight: a second payment of one waits for the first to end.
    order_claims: Mutex<std::collections::HashSet<String>>,
    order_ended: tokio::sync::Notify,
    /// False on a read replica: commands are refused with `not_primary`.
    primary: AtomicBool,
    /// The accounts this ledger owns (all, unless it is one shard of a cluster).
    ownership: Arc<crate::shards::Ownership>,
    /// The history index (stored rows and pending ones) covers events through this seq.
    indexed: Arc<AtomicU64>,
    /// History not yet in the stored rows.
    pending_history: Arc<RwLock<crate::indexer::PendingHistory>>,
    /// The highest durable seq, for followers.
    durable_watch: Arc<tokio::sync::watch::Sender<u64>>,
    /// Gateway calls in flight.
    gateway_permits: Semaphore,
    gateway_timeout: Duration,
    rules: Rules,
    /// Payments on each binding and binds of each wallet that are with the provider now (the
    /// inline guards count them against the budget), and a wake-up when one ends.
    attempts: Mutex<HashMap<Guarded, u32>>,
    attempt_ended: tokio::sync::Notify,
    /// How far in the past a caller's `event_time` may be.
    event_time_past_max: chrono::Duration,
    /// Every event up to this seq is on the events topic, acknowledged by the Kafka cluster
    /// (the relay advances it).
    on_topic: tokio::sync::watch::Sender<u64>,
    /// Replicated mode: how long an answer waits for its event to be on the topic.
    replication_timeout: Option<Duration>,
    metrics: Arc<Metrics>,
    failed: Arc<AtomicBool>,
    /// Why the node halted, once a part of it died ([`Ledger::halt`]).
    halted: Mutex<Option<&'static str>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    tap: crate::writer::EventTap,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.write().expect("lock").take();
        self.tap.lock().expect("lock").take();
        if let Some(h) = self.writer.lock().expect("lock").take() {
            let _ = h.join();
        }
    }
}

impl Ledger {
    /// Opens the log in `config.data_dir`, loads the projection snapshot and folds the events
    /// after it (checking their links), catches the history index up, rebuilds the
    /// idempotency index from the log's tail, and starts the writer.
    ///
    /// The inline guard against password guessing follows the configured alert rules (see
    /// [`Ledger::open_with_rules`]).
    pub fn open(config: &Config, secret: LedgerSecret, gateway: Arc<dyn WalletGateway>) -> Result<Ledger> {
        let rules = crate::keys::alert_rules(config)?;
        Self::open_with_rules(config, &rules, secret, gateway)
    }

    /// The same, with the alert rules given: the `password_brute_force` rule with `lock` on
    /// sets the inline guard ([`crate::domain::decide::PasswordGuard`]).
    pub fn open_with_rules(
        config: &Config,
        alert_rules: &crate::domain::alerts::RuleSet,
        secret: LedgerSecret,
        gateway: Arc<dyn WalletGateway>,
    ) -> Result<Ledger> {
        Self::open_with_seams(config, alert_rules, secret, gateway, Seams::default())
    }

    /// The same, with the seams a simulation drives ([`Seams`]); production uses
    /// [`Seams::default`]: the system clock, random ids, no injected faults.
    pub fn open_with_seams(
        config: &Config,
        alert_rules: &crate::domain::alerts::RuleSet,
        secret: LedgerSecret,
        gateway: Arc<dyn WalletGateway>,
        seams: Seams,
    ) -> Result<Ledger> {
        crate::seams::abort_on_core_panic();
        let opening = std::time::Instant::now();
        let store = Arc::new(store::retry_in_use(|| {
            Store::open_with_faults(&config.data_dir, seams.faults.clone())
        })?);
        let store_opened = opening.elapsed();
        store.set_sync_data(config.writer.sync_data);
        store.check_secret(&secret.check_value())?;
        let (last_seq, last_hash) = store.head()?.unwrap_or((0, bindledger_events::GENESIS_HASH));
        // A log that lost events it had acknowledged is refused here, before anything is
        // written; then the head record follows this log.
        head::check(&config.data_dir, last_seq, |seq| {
            Ok(store.event_bytes(seq)?.map(|b| hash_bytes(&b)))
        })?;
        let head_recorder =
            head::HeadRecorder::start(&config.data_dir, (last_seq > 0).then_some((last_seq, last_hash)))?;
        let (indexed, snapshot) = store.index_positions()?;
        if snapshot > last_seq || indexed > last_seq {
            return Err(Error::corrupt(format!(
                "index positions ({indexed}, {snapshot}) are past the log's end {last_seq}"
            )));
        }
        let written = Arc::new(AtomicU64::new(snapshot));
        let mut state = CachedProjection::open(&store, snapshot, config.memory.accounts_cached, written.clone(), true)?;
        #[cfg(feature = "simulation")]
        let planted_refold = seams.planted_bug == Some(PlantedBug::RefoldLastEventOnOpen) && last_seq > 0;
        if snapshot < last_seq {
            catch_up(&store, &mut state, &written, (indexed, snapshot), last_seq)?;
        }
        let folded = opening.elapsed();
        let idempotency = Arc::new(KeyIndex::open(
            store.clone(),
            &config.data_dir,
            config.idempotency.index,
            config.idempotency.window()?,
            config.idempotency.memory_keys as usize,
            seams.clock.clone(),
        )?);
        let last_record_time = match store.event_bytes(last_seq)? {
            Some(b) => {
                bindledger_events::decode(&b)
                    .map_err(|e| Error::corrupt_by(format!("event {last_seq}"), e))?
                    .record_time
            }
            None => chrono::DateTime::<Utc>::MIN_UTC,
        };
        #[cfg(feature = "simulation")]
        if planted_refold {
            // The simulator's own test: a known bug it must find (see `PlantedBug`).
            if let Some(b) = store.event_bytes(last_seq)? {
                let e = bindledger_events::decode(&b).map_err(|e| Error::corrupt_by(format!("event {last_seq}"), e))?;
                state.p.position -= 1;
                state.fold(&store, &e)?;
            }
        }
        tracing::info!(
            store_ms = store_opened.as_millis() as u64,
            folded_ms = (folded - store_opened).as_millis() as u64,
            keys_ms = (opening.elapsed() - folded).as_millis() as u64,
            events = last_seq,
            "the ledger opened: sled's own recovery, the catch-up past the snapshot, the idempotency tables"
        );
        let data_keys = Arc::new(
            crate::datakeys::DataKeys::open(
                crate::keystore::open(config)?,
                &store,
                config.keys.cached,
                seams.ids_seed,
            )?
            .sealing(config.keys.seal),
        );
        let metrics = Arc::new(Metrics::default());
        metrics.set_log_len(last_seq);
        let read = Arc::new(RwLock::new(state.clone()));
        let state = state.without_wallets();
        let failed = Arc::new(AtomicBool::new(false));
        let indexed = Arc::new(AtomicU64::new(last_seq));
        let pending_history: Arc<RwLock<crate::indexer::PendingHistory>> = Default::default();
        let rules = Rules {
            max_bindings_per_account: config.max_bindings_per_account,
            platform_maintenance: config.platform_maintenance,
            password_guard: alert_rules.password_guard(),
            bind_guard: alert_rules.bind_guard(),
        };
        let durable_watch = Arc::new(tokio::sync::watch::Sender::new(last_seq));
        let (tx, rx) = mpsc::channel(config.writer.queue_capacity);
        let tap: crate::writer::EventTap = Default::default();
        let ownership: Arc<crate::shards::Ownership> = Default::default();
        let writer = Writer {
            store: store.clone(),
            state,
            read: read.clone(),
            next_seq: last_seq + 1,
            prev_hash: last_hash,
            rules,
            batch_max: config.writer.batch_max,
            commit_delay: config.writer.commit_delay(),
            metrics: metrics.clone(),
            failed: failed.clone(),
            idempotency: idempotency.clone(),
            last_record_time,
            durable: Arc::new(AtomicU64::new(last_seq)),
            durable_watch: durable_watch.clone(),
            pending: Default::default(),
            pending_batches: Default::default(),
            indexer: Some(Indexer {
                store: store.clone(),
                read: read.clone(),
                written,
                indexed: indexed.clone(),
                snapshot_every_events: config.writer.snapshot_every_events,
                pending: pending_history.clone(),
                keys: idempotency.clone(),
            }),
            tap: tap.clone(),
            ids: match seams.ids_seed {
                Some(seed) => crate::writer::EventIds::seeded(seed),
                None => Default::default(),
            },
            head: Some(head_recorder),
            owned: ownership.clone(),
            clock: seams.clock.clone(),
            keys: data_keys.clone(),
            #[cfg(feature = "simulation")]
            planted: seams.planted_bug,
        };
        let handle = std::thread::Builder::new()
            .name("bindledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io_caused("starting the writer thread", e))?;
        tracing::info!(events = last_seq, dir = %config.data_dir.display(), "ledger open");
        // A primary a promotion fenced stays fenced across restarts: it takes no commands (a
        // node rejoins first, see `node`); one that rejoined is a replica until promoted.
        let fenced = store.fenced_by()?.is_some();
        let as_replica = config.replica.enabled || store.starts_as_replica()?;
        if fenced && !as_replica {
            tracing::error!("this node was fenced by a promotion: it takes no commands (see the README's Failover)");
        }
        let gateway_timeout = gateway_timeout(config, &seams);
        Ok(Ledger {
            inner: Arc::new(Inner {
                store,
                clock: seams.clock,
                secret,
                gateway,
                tx: RwLock::new(Some(tx)),
                read,
                idempotency,
                data_keys,
                order_claims: Default::default(),
                order_ended: tokio::sync::Notify::new(),
                primary: AtomicBool::new(!as_replica && !fenced),
                ownership,
                indexed,
                pending_history,
                durable_watch,
                gateway_permits: Semaphore::new(config.gateway.concurrency_max),
                gateway_timeout,
                rules,
                attempts: Default::default(),
                attempt_ended: tokio::sync::Notify::new(),
                event_time_past_max: chrono::Duration::seconds(config.event_time_past_max_s as i64),
                on_topic: tokio::sync::watch::Sender::new(0),
                replication_timeout: (config.durability == crate::config::Durability::Replicated)
                    .then(|| Duration::from_millis(config.replication_timeout_ms)),
                metrics,
                failed,
                halted: Mutex::new(None),
                writer: Mutex::new(Some(handle)),
                tap,
            }),
        })
    }

    /// The ledger's time (the system clock, but in a simulation).
    pub fn now(&self) -> chrono::DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Stops taking commands, lets the writer finish what is queued (writing the final
    /// projection snapshot), and waits for it. The directory's lock is released when the last
    /// clone of this handle is dropped.
    pub fn close(self) {
        self.inner.tx.write().expect("lock").take();
        let handle = self.inner.writer.lock().expect("lock").take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The follower of the tap sees the end.
        self.inner.tap.lock().expect("lock").take();
    }

    /// Follows durable events as they are published: each item is one durable batch, in
    /// order. The queue holds `capacity` batches; when it is full batches are skipped (never
    /// waited for), so a follower that finds a gap reads it with [`Ledger::raw_events`]. One
    /// follower at a time: a new tap replaces the previous one.
    pub fn tap(&self, capacity: usize) -> std::sync::mpsc::Receiver<crate::store::DurableBatch> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        *self.inner.tap.lock().expect("lock") = Some(tx);
        rx
    }

    /// The alert monitor's storage.
    pub fn alert_store(&self) -> crate::alerts::store::AlertStore {
        crate::alerts::store::AlertStore::new(self.inner.store.alerts_tree())
    }

    /// The webhooks' position and delivery log.
    pub fn webhook_log(&self) -> crate::webhooks::WebhookLog {
        crate::webhooks::WebhookLog::new(self.inner.store.webhooks_tree())
    }

    /// The signed checkpoints.
    pub fn checkpoint_store(&self) -> crate::checkpoint::CheckpointStore {
        crate::checkpoint::CheckpointStore::new(self.inner.store.checkpoints_tree())
    }

    /// Turns the `fdatasync` after each flush on or off (`writer.sync_data`; the benchmark
    /// measures what it costs).
    pub fn set_sync_data(&self, on: bool) {
        self.inner.store.set_sync_data(on);
    }

    /// Makes everything written so far durable (derived rows included).
    pub fn flush(&self) -> Result<()> {
        self.inner.store.flush()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The idempotency and paid-order indexes: entries held in memory (not yet written to
    /// disk), live entries on disk, and the tables' size in bytes.
    pub fn key_index_stats(&self) -> (usize, u64, u64) {
        let (live, bytes) = self.inner.idempotency.on_disk();
        (self.inner.idempotency.in_memory(), live, bytes)
    }

    /// What each part of the store holds: (part, keys, bytes), read row by row (see
    /// [`Store::stored_bytes`]); for benchmarks, not a serving path.
    pub fn stored_bytes(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        self.inner.store.stored_bytes()
    }

    /// Waits until the idempotency and paid-order tables hold the entries of every event
    /// through `seq` (the indexer writes them within 200 ms of a quiet moment, 2 s under load),
    /// at most `timeout`; true if they do. Never true in memory mode, which has no tables.
    pub async fn wait_keys_written(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.idempotency.written();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// False on a read replica (until it is promoted).
    pub fn is_primary(&self) -> bool {
        self.inner.primary.load(Ordering::SeqCst)
    }

    /// The accounts this ledger owns: every one, unless the node follows a cluster's shard
    /// map ([`crate::shards::Ownership::follow`]).
    pub fn ownership(&self) -> &Arc<crate::shards::Ownership> {
        &self.inner.ownership
    }

    /// Refuses a command for an account of another shard (the writer checks again when it
    /// decides, so a slot that leaves meanwhile is refused there).
    fn require_owner(&self, account: &str) -> Result<()> {
        if self.inner.ownership.owns(account) {
            Ok(())
        } else {
            self.inner.metrics.count_rejected("misdirected");
            Err(Error::Misdirected)
        }
    }

    /// Makes this ledger take commands (a replica being promoted, once it has the whole topic
    /// and has fenced the previous primary).
    pub fn set_primary(&self) {
        self.inner.primary.store(true, Ordering::SeqCst);
    }

    /// A part of the node died (see [`Error::Halted`]): no more commands, `/healthz` `503`.
    pub fn halt(&self, why: &'static str) {
        tracing::error!(why, "the node halted: it takes no more commands; restart it");
        *self.inner.halted.lock().expect("halted lock") = Some(why);
        self.inner.failed.store(true, Ordering::SeqCst);
    }

    fn require_primary(&self) -> Result<()> {
        if let Some(why) = *self.inner.halted.lock().expect("halted lock") {
            return Err(Error::Halted(why));
        }
        if self.is_primary() {
            Ok(())
        } else {
            self.inner.metrics.count_rejected("not_primary");
            Err(Error::NotPrimary)
        }
    }

    /// A replica: hands events read from the events topic to the writer, exactly as they are,
    /// in order, and returns without waiting for them to be durable (see
    /// [`ReplicatedAppend::durable`]), so that a follower can read the next events while these
    /// are written. Submissions from one caller keep their order. Each must continue the log
    /// (its `seq` and `prev_hash`), else `Corrupt` and nothing after it is appended.
    pub async fn submit_replicated(&self, events: Vec<bytes::Bytes>) -> Result<ReplicatedAppend> {
        let tx = self.inner.tx.read().expect("lock").clone().ok_or(Error::ShuttingDown)?;
        let mut replies = Vec::with_capacity(events.len());
        for bytes in events {
            let (reply, rx) = oneshot::channel();
            tx.send(Submission {
                request: Request::Append { bytes },
                reply,
            })
            .await
            .map_err(|_| Error::storage("the writer has stopped"))?;
            replies.push(rx);
        }
        Ok(ReplicatedAppend { replies })
    }

    /// Waits until the log holds event `seq` (read-your-writes on a replica), at most
    /// `timeout`; true if it does.
    pub async fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.durable_watch.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Number of events in the log.
    pub fn log_len(&self) -> u64 {
        self.inner.metrics.log_len()
    }

    pub fn is_healthy(&self) -> bool {
        !self.inner.failed.load(Ordering::SeqCst) && self.inner.tx.read().expect("lock").is_some()
    }

    /// Dates a command without an event time now; refuses one dated further back than
    /// `event_time_past_max_s` (the future is bounded when the command is validated).
    fn now_meta(&self, meta: &mut Meta) -> Result<()> {
        let now = self.inner.clock.now();
        match meta.event_time {
            None => meta.event_time = Some(bindledger_events::types::micros::truncate(now)),
            Some(t) if t < now - self.inner.event_time_past_max => {
                self.inner.metrics.count_rejected("invalid_event_time");
                return Err(Error::invalid(
                    "invalid_event_time",
                    "event_time",
                    "event_time is further in the past than this ledger accepts (event_time_past_max_s)",
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Claims an order for one payment at a time: waits while another payment of the same
    /// order on the account is in flight, then `Err(seq)` when the order is already paid (its
    /// `payment_succeeded` event), or the claim, held until this payment's event is durable.
    async fn claim_order(&self, account: &str, order_id: &str) -> Result<std::result::Result<OrderClaim<'_>, u64>> {
        let key = crate::idempotency::composite(account, order_id);
        let deadline = tokio::time::Instant::now() + self.inner.gateway_timeout * 2;
        loop {
            let ended = self.inner.order_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self
                .inner
                .order_claims
                .lock()
                .expect("order claims lock")
                .insert(key.clone())
            {
                let claim = OrderClaim { ledger: self, key };
                // Under the claim no other payment of the order is in flight: what the index
                // says is final until the claim is released.
                return Ok(match self.inner.idempotency.paid_order(account, order_id)? {
                    Some(seq) => Err(seq),
                    None => Ok(claim),
                });
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                self.inner.metrics.count_rejected("overloaded");
                return Err(Error::Overloaded("another payment of this order is in flight"));
            }
        }
    }

    /// Takes one attempt from the budget of `key` (a binding's payments, or a wallet's binds)
    /// for a command that will ask the provider for a password, waiting while the budget is
    /// held by attempts in flight. `Err(until)` when the budget is spent: the command fails as
    /// `too_many_attempts` without reaching the provider. `Ok(None)` when that guard is off.
    async fn take_attempt(
        &self,
        account: &str,
        key: Guarded,
    ) -> Result<std::result::Result<Option<Attempt<'_>>, chrono::DateTime<Utc>>> {
        use crate::domain::decide::Budget;
        let guard = match key {
            Guarded::Binding(_) => self.inner.rules.password_guard,
            Guarded::Wallet(_) => self.inner.rules.bind_guard,
        };
        let Some(guard) = guard else {
            return Ok(Ok(None));
        };
        let deadline = tokio::time::Instant::now() + self.inner.gateway_timeout;
        loop {
            let ended = self.inner.attempt_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let read = self.inner.read.read().expect("lock");
                let now = self.inner.clock.now();
                let budget = match key {
                    Guarded::Binding(id) => read
                        .account(&self.inner.store, account)?
                        .and_then(|a| a.active_binding(id).map(|b| guard.budget(b, now))),
                    Guarded::Wallet(fp) => Some(guard.wallet_budget(&*read.wallet(&self.inner.store, &fp)?, now)),
                };
                let mut attempts = self.inner.attempts.lock().expect("attempts lock");
                let in_flight = attempts.get(&key).copied().unwrap_or(0);
                match budget {
                    Some(Budget::Spent { until }) => return Ok(Err(until)),
                    Some(Budget::Left(left)) if in_flight >= left => {}
                    // A binding that is not active is refused by the writer anyway.
                    _ => {
                        *attempts.entry(key).or_insert(0) += 1;
                        return Ok(Ok(Some(Attempt { ledger: self, key })));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                self.inner.metrics.count_rejected("overloaded");
                return Err(Error::Overloaded(match key {
                    Guarded::Binding(_) => "too many payments in flight on this binding",
                    Guarded::Wallet(_) => "too many binds of this wallet in flight",
                }));
            }
        }
    }

    /// The original result, if this idempotency key was used before with the same request.
    fn replay_if_known(&self, meta: &mut Meta, digest: &Hash) -> Result<Option<Committed>> {
        let Some(key) = meta.idempotency_key.as_deref() else {
            return Ok(None);
        };
        let generation = self.inner.idempotency.generation();
        let known = self.inner.idempotency.key(&meta.account, key, self.inner.clock.now())?;
        if known.is_none() {
            meta.keys_checked = Some(generation);
        }
        match known {
            None => Ok(None),
            Some((_, d)) if &d != digest => {
                self.inner.metrics.count_rejected("idempotency_key_reused");
                Err(Error::IdempotencyKeyReused)
            }
            Some((seq, _)) => {
                let replay = Committed::replay_of(&self.inner.store, seq)?;
                self.inner.metrics.idempotent_replays.inc();
                Ok(Some(replay))
            }
        }
    }

    /// [`Ledger::check_version`] against the account as the read model has it.
    fn check_stored_version(&self, meta: &Meta) -> Result<()> {
        let read = self.inner.read.read().expect("lock");
        self.check_version(meta, read.account(&self.inner.store, &meta.account)?.as_deref())
    }

    fn check_version(&self, meta: &Meta, acct: Option<&AccountState>) -> Result<()> {
        // An erased account takes no command: refused before the provider is asked (the
        // writer refuses it again when it decides).
        if acct.is_some_and(|a| a.erased) {
            self.inner.metrics.count_rejected("account_erased");
            return Err(Error::Erased);
        }
        if let Some(expected) = meta.expected_version {
            let actual = acct.map_or(0, |a| a.version);
            if expected != actual {
                self.inner.metrics.count_rejected("version_conflict");
                return Err(Error::VersionConflict { actual });
            }
        }
        Ok(())
    }

    /// The last event a checkpoint may sign: the durable head, in replicated mode only as far
    /// as the cluster acknowledged it.
    pub fn signable_head(&self) -> u64 {
        let head = self.log_len();
        match self.inner.replication_timeout {
            Some(_) => head.min(*self.inner.on_topic.borrow()),
            None => head,
        }
    }

    /// The relay: every event up to `seq` is on the topic (acknowledged by the cluster).
    pub fn replicated_to(&self, seq: u64) {
        self.inner.on_topic.send_if_modified(|p| {
            let moved = seq > *p;
            *p = (*p).max(seq);
            moved
        });
    }

    /// Every event up to the value is on the events topic. What is derived from events for
    /// other topics (alerts, notifications) goes out only as far: never ahead of the events,
    /// and never from events a promotion may leave out of the chain.
    pub fn on_topic(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.on_topic.subscribe()
    }

    /// Replicated mode: holds an answer until the cluster has its event (a replay too: the
    /// original may not be replicated yet), or answers `outcome_unknown` after the timeout.
    /// The event stays durable here; a retry with the same key returns it once replicated.
    async fn replicated(&self, result: Result<Committed>) -> Result<Committed> {
        // The caller gets its event with the personal fields open (they were its own values);
        // `bytes` and `hash` stay the stored, sealed ones.
        let result = result.and_then(|mut c| {
            if c.event.v >= 8 && memchr::memmem::find(&c.bytes, b"\"sealed:").is_some() {
                let mut e = (*c.event).clone();
                self.open_event(&mut e)?;
                c.event = Arc::new(e);
            }
            Ok(c)
        });
        let (Some(timeout), Ok(c)) = (self.inner.replication_timeout, &result) else {
            return result;
        };
        let seq = c.event.seq;
        let mut rx = self.inner.on_topic.subscribe();
        let replicated = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        if replicated {
            result
        } else {
            self.inner.metrics.count_rejected("outcome_unknown");
            Err(Error::OutcomeUnknown)
        }
    }

    async fn submit(&self, mut request: Request) -> Result<Committed> {
        let kind = request.kind();
        // Fingerprinted while the values are in the clear (the writer seals them).
        self.inner.secret.fingerprint_context(&mut request.meta_mut().context);
        let result = self.submit_inner(request).await;
        let result = self.replicated(result).await;
        match &result {
            // The seq names the event; the account id (the caller's value) is not logged.
            Ok(c) => tracing::debug!(
                kind,
                outcome = c.event.payload.failure_code().unwrap_or("succeeded"),
                seq = c.event.seq,
                replayed = c.replayed,
                "command"
            ),
            Err(e) => tracing::debug!(kind, code = e.code(), error = %e, "command refused"),
        }
        result
    }

    async fn submit_inner(&self, request: Request) -> Result<Committed> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.inner.tx.read().expect("lock");
            let tx = guard.as_ref().ok_or(Error::ShuttingDown)?;
            tx.try_send(Submission { request, reply }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.inner.metrics.count_rejected("overloaded");
                    Error::Overloaded("the writer queue is full")
                }
                mpsc::error::TrySendError::Closed(_) => Error::storage("the writer has stopped"),
            })?;
        }
        rx.await
            .map_err(|_| Error::storage("the writer stopped before answering"))?
    }

    async fn with_gateway<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, GatewayFailure>>,
    ) -> Result<std::result::Result<T, GatewayFailure>> {
        let _permit = self.inner.gateway_permits.try_acquire().map_err(|_| {
            self.inner.metrics.count_rejected("overloaded");
            Error::Overloaded("too many wallet provider calls in flight")
        })?;
        // A provider that answers at once needs no timer.
        let mut call = std::pin::pin!(call);
        if let Some(answer) = futures_util::FutureExt::now_or_never(call.as_mut()) {
            return Ok(answer);
        }
        // The timeout runs on the ledger's clock (simulated time in the simulator); it is made
        // in the same poll as the call's first, so both are waiting when the simulator looks.
        let timeout = self.inner.clock.sleep(self.inner.gateway_timeout);
        tokio::select! {
            biased;
            answer = call => Ok(answer),
            () = timeout => {
                self.inner.metrics.gateway_timeouts.inc();
                Ok(Err(GatewayFailure::Network))
            }
        }
    }

    /// Binds a wallet. The answer is the recorded event: `wallet_bound` or `bind_failed`.
    pub async fn bind(&self, mut cmd: BindCommand) -> Result<Committed> {
        self.require_primary()?;
        self.require_owner(&cmd.meta.account)?;
        self.now_meta(&mut cmd.meta)?;
        let secret = &self.inner.secret;
        let wallet = secret.wallet_ref(&cmd.provider, cmd.wallet_account.expose());
        let factor = cmd.factor.as_ref().map(|(f, _)| *f);
        let digest = secret.mac(&[
            b"bind",
            cmd.meta.account.as_bytes(),
            cmd.provider.as_str().as_bytes(),
            &wallet.fingerprint.0,
            factor.map_or("", |f| f.as_str()).as_bytes(),
        ]);
        if let Some(done) = self.replay_if_known(&mut cmd.meta, &digest)? {
            return self.replicated(Ok(done)).await;
        }
        let facts = BindFacts {
            provider: cmd.provider.clone(),
            wallet,
            factor,
        };
        let pre = {
            let read = self.inner.read.read().expect("lock");
            let acct = read.account(&self.inner.store, &cmd.meta.account)?;
            let acct = acct.as_deref();
            self.check_version(&cmd.meta, acct)?;
            decide::precheck_bind(acct, &facts, self.inner.rules)
        };
        // The attempt is given back once its event is durable (and so counted, when it was a
        // wrong password), after the submit below.
        let mut _attempt = None;
        let pre = match pre {
            Some(reason) => Some(reason),
            None => match self
                .take_attempt(&cmd.meta.account, Guarded::Wallet(facts.wallet.fingerprint))
                .await?
            {
                Ok(attempt) => {
                    _attempt = attempt;
                    None
                }
                Err(until) => Some(BindFailure::TooManyAttempts { until }),
            },
        };
        let verdict = match pre {
            Some(reason) => BindVerdict::Skipped(reason),
            None => {
                let call = self.inner.gateway.verify_binding(BindVerification {
                    provider: &cmd.provider,
                    wallet_account: cmd.wallet_account.expose(),
                    payment_password: cmd.payment_password.expose(),
                    factor: cmd.factor.as_ref().map(|(f, c)| (*f, c.expose())),
                    event_time: cmd.meta.event_time.expect("set above"),
                });
                match self.with_gateway(call).await? {
                    Ok(agreement_id) => BindVerdict::Verified { agreement_id },
                    Err(f) => BindVerdict::Failed(f),
                }
            }
        };
        self.submit(Request::Bind {
            meta: cmd.meta,
            digest,
            facts,
            verdict,
        })
        .await
    }

    /// Records a payment that fails before the provider is asked.
    async fn skip_pay(&self, meta: Meta, digest: Hash, facts: PayFacts, reason: PaymentFailure) -> Result<Committed> {
        self.submit(Request::Pay {
            meta,
            digest,
            facts,
            verdict: PayVerdict::Skipped(reason),
        })
        .await
    }

    /// Pays with a bound wallet: `payment_succeeded` or `payment_failed`.
    pub async fn pay(&self, mut cmd: PayCommand) -> Result<Committed> {
        self.require_primary()?;
        self.require_owner(&cmd.meta.account)?;
        self.now_meta(&mut cmd.meta)?;
        let factor = cmd.factor.as_ref().map(|(f, _)| *f);
        let digest = self.inner.secret.mac(&[
            b"pay",
            cmd.meta.account.as_bytes(),
            cmd.binding_id.as_bytes(),
            cmd.order_id.as_bytes(),
            &cmd.amount_minor.to_be_bytes(),
            cmd.currency.as_str().as_bytes(),
            factor.map_or("", |f| f.as_str()).as_bytes(),
        ]);
        if let Some(done) = self.replay_if_known(&mut cmd.meta, &digest)? {
            return self.replicated(Ok(done)).await;
        }
        let facts = PayFacts {
            binding_id: cmd.binding_id,
            order_id: cmd.order_id.clone(),
            amount_minor: cmd.amount_minor,
            currency: cmd.currency,
            factor,
        };
        // One payment of an order at a time; none once it is paid. The claim is held until
        // this payment's event is durable (and so known to the paid-orders index).
        let _order = match self.claim_order(&cmd.meta.account, &cmd.order_id).await? {
            Ok(claim) => claim,
            Err(payment_seq) => {
                return self
                    .skip_pay(
                        cmd.meta,
                        digest,
                        facts,
                        PaymentFailure::OrderAlreadyPaid { payment_seq },
                    )
                    .await;
            }
        };
        let (pre, binding) = {
            let read = self.inner.read.read().expect("lock");
            let acct = read.account(&self.inner.store, &cmd.meta.account)?;
            let acct = acct.as_deref();
            self.check_version(&cmd.meta, acct)?;
            let pre = decide::precheck_pay(acct, cmd.binding_id, self.inner.clock.now(), self.inner.rules);
            let binding = acct
                .and_then(|a| a.active_binding(cmd.binding_id))
                .map(|b| (b.provider.clone(), b.agreement_id.clone()));
            (pre, binding)
        };
        let (provider, agreement) = match (pre, binding) {
            (None, Some(binding)) => binding,
            (pre, _) => {
                let reason = pre.unwrap_or(PaymentFailure::BindingNotActive);
                return self.skip_pay(cmd.meta, digest, facts, reason).await;
            }
        };
        // The attempt is given back once its event is durable (and so counted, when it was a
        // wrong password), after the submit below.
        let _attempt = match self
            .take_attempt(&cmd.meta.account, Guarded::Binding(cmd.binding_id))
            .await?
        {
            Ok(attempt) => attempt,
            Err(until) => {
                return self
                    .skip_pay(cmd.meta, digest, facts, PaymentFailure::TooManyAttempts { until })
                    .await;
            }
        };
        let call = self.inner.gateway.authorize_payment(PaymentAuthorization {
            provider: &provider,
            agreement_id: &agreement,
            order_id: &cmd.order_id,
            amount_minor: cmd.amount_minor,
            currency: cmd.currency,
            payment_password: cmd.payment_password.expose(),
            factor: cmd.factor.as_ref().map(|(f, c)| (*f, c.expose())),
            event_time: cmd.meta.event_time.expect("set above"),
        });
        let verdict = match self.with_gateway(call).await? {
            Ok(authorization_id) => PayVerdict::Authorized { authorization_id },
            Err(f) => PayVerdict::Failed(f),
        };
        let authorized = match &verdict {
            PayVerdict::Authorized { authorization_id } => Some(authorization_id.clone()),
            _ => None,
        };
        let result = self
            .submit(Request::Pay {
                meta: cmd.meta,
                digest,
                facts,
                verdict,
            })
            .await;
        if let Some(auth) = authorized {
            // Release the authorisation unless this very authorisation was recorded as a
            // success (the writer may have found the binding gone, or a racing retry won).
            let recorded = matches!(&result, Ok(c) if !c.replayed
                && matches!(&c.event.payload, Payload::PaymentSucceeded { authorization_id, .. } if *authorization_id == auth));
            if !recorded {
                self.inner.gateway.void_payment(&provider, &auth).await;
            }
        }
        result
    }

    /// Unbinds a wallet: `wallet_unbound` or `unbind_failed`.
    pub async fn unbind(&self, mut cmd: UnbindCommand) -> Result<Committed> {
        self.require_primary()?;
        self.require_owner(&cmd.meta.account)?;
        self.now_meta(&mut cmd.meta)?;
        let digest = self
            .inner
            .secret
            .mac(&[b"unbind", cmd.meta.account.as_bytes(), cmd.binding_id.as_bytes()]);
        if let Some(done) = self.replay_if_known(&mut cmd.meta, &digest)? {
            return self.replicated(Ok(done)).await;
        }
        self.check_stored_version(&cmd.meta)?;
        self.submit(Request::Unbind {
            meta: cmd.meta,
            digest,
            binding_id: cmd.binding_id,
        })
        .await
    }

    /// Locks a binding (`binding_locked` or `binding_lock_failed`). The monitoring sends it with
    /// an idempotency key made from the alert id, so a restart never locks twice.
    pub async fn lock(&self, mut cmd: LockCommand) -> Result<Committed> {
        self.require_primary()?;
        self.require_owner(&cmd.meta.account)?;
        self.now_meta(&mut cmd.meta)?;
        let digest = self.inner.secret.mac(&[
            b"lock",
            cmd.meta.account.as_bytes(),
            cmd.binding_id.as_bytes(),
            cmd.alert_id.as_bytes(),
            &cmd.until.timestamp_micros().to_be_bytes(),
        ]);
        if let Some(done) = self.replay_if_known(&mut cmd.meta, &digest)? {
            return self.replicated(Ok(done)).await;
        }
        self.submit(Request::Lock {
            meta: cmd.meta,
            digest,
            binding_id: cmd.binding_id,
            alert_id: cmd.alert_id,
            until: cmd.until,
        })
        .await
    }

    /// Lifts a lock (`binding_unlocked` or `binding_unlock_failed`).
    pub async fn unlock(&self, mut cmd: UnlockCommand) -> Result<Committed> {
        self.require_primary()?;
        self.require_owner(&cmd.meta.account)?;
        self.now_meta(&mut cmd.meta)?;
        let cause = match cmd.cause {
            bindledger_events::UnlockCause::Manual => b"manual".as_slice(),
            bindledger_events::UnlockCause::Expired => b"expired".as_slice(),
        };
        let digest = self.inner.secret.mac(&[
            b"unlock",
            cmd.meta.account.as_bytes(),
            cmd.binding_id.as_bytes(),
            cause,
            cmd.alert_id.as_deref().unwrap_or("").as_bytes(),
        ]);
        if let Some(done) = self.replay_if_known(&mut cmd.meta, &digest)? {
            return self.replicated(Ok(done)).await;
        }
        self.check_stored_version(&cmd.meta)?;
        self.submit(Request::Unlock {
            meta: cmd.meta,
            digest,
            binding_id: cmd.binding_id,
            cause: cmd.cause,
            alert_id: cmd.alert_id,
        })
        .await
    }

    /// Records a person's triage of an alert (see [`crate::domain::command::TriageCommand`]):
    /// one `alert_triaged` event in the alert's account, attributed to the token's name.
    pub async fn triage(&self, mut cmd: crate::domain::command::TriageCommand) -> Result<Committed> {
        self.require_primary()?;
        self.require_owner(&cmd.meta.account)?;
        self.now_meta(&mut cmd.meta)?;
        let digest = self.inner.secret.mac(&[
            b"triage",
            cmd.meta.account.as_bytes(),
            cmd.alert_id.as_bytes(),
            cmd.action.as_str().as_bytes(),
            cmd.operator.as_bytes(),
            cmd.assignee.as_deref().unwrap_or("").as_bytes(),
            cmd.note.as_bytes(),
        ]);
        if let Some(done) = self.replay_if_known(&mut cmd.meta, &digest)? {
            return self.replicated(Ok(done)).await;
        }
        self.check_stored_version(&cmd.meta)?;
        self.submit(Request::Triage {
            meta: cmd.meta,
            digest,
            alert_id: cmd.alert_id,
            action: cmd.action,
            operator: cmd.operator,
            assignee: cmd.assignee,
            note: cmd.note,
        })
        .await
    }

    // ---- reads ----

    /// An account's bindings and version (only durable events are visible).
    /// Sealed fields read as they were written, or as erased.
    pub fn account(&self, account: &str) -> Result<Option<AccountState>> {
        let state = {
            let read = self.inner.read.read().expect("lock");
            read.account(&self.inner.store, account)?.map(|a| a.into_owned())
        };
        let Some(mut state) = state else { return Ok(None) };
        let erased = state.erased;
        for b in &mut state.bindings {
            b.wallet.masked =
                self.inner
                    .data_keys
                    .open_value(account, "payload.wallet.masked", &b.wallet.masked, erased)?;
        }
        Ok(Some(state))
    }

    /// Opens the sealed fields of an event read from the log (or from a follower's batch) for
    /// a reader allowed to see them; an erased account's read `[erased]`, and those whose key
    /// this node does not hold (yet) `[sealed]`.
    pub fn open_event(&self, event: &mut Event) -> Result<()> {
        if event.v < 8 {
            return Ok(());
        }
        let erased = self.is_erased(&event.account)?;
        self.inner.data_keys.open_event(event, erased)
    }

    /// The lock in force on a binding now, if any (whatever alert caused it).
    pub fn binding_lock(
        &self,
        account: &str,
        binding_id: uuid::Uuid,
    ) -> Result<Option<crate::domain::projection::BindingLock>> {
        let read = self.inner.read.read().expect("lock");
        let now = self.now();
        Ok(read.account(&self.inner.store, account)?.and_then(|a| {
            a.bindings
                .iter()
                .find(|b| b.binding_id == binding_id)
                .and_then(|b| b.lock.clone())
                .filter(|l| l.until > now)
        }))
    }

    /// The account's version (its newest event's `account_seq`), if it has events.
    pub fn account_version(&self, account: &str) -> Result<Option<u64>> {
        let read = self.inner.read.read().expect("lock");
        Ok(read.account(&self.inner.store, account)?.map(|a| a.version))
    }

    /// Whether the account's personal data was erased (`subject_erased`).
    pub fn is_erased(&self, account: &str) -> Result<bool> {
        let read = self.inner.read.read().expect("lock");
        Ok(read.account(&self.inner.store, account)?.is_some_and(|a| a.erased))
    }

    /// The accounts' data keys (the relay publishes the wrapped ones; a replica stores them).
    pub fn data_keys(&self) -> &Arc<crate::datakeys::DataKeys> {
        &self.inner.data_keys
    }

    /// Erases an account's personal data (a privacy officer's request): destroys its data key
    /// and appends `subject_erased` (attributed to `operator`, the officer's token). The
    /// account takes no more commands; its sealed fields read as erased everywhere the key was.
    pub async fn erase(&self, account: &str, operator: &str) -> Result<Committed> {
        self.require_primary()?;
        crate::domain::command::validate_account(account)?;
        self.require_owner(account)?;
        let mut meta = crate::domain::command::Meta {
            account: account.to_owned(),
            idempotency_key: None,
            expected_version: None,
            correlation_id: None,
            event_time: None,
            context: bindledger_events::Context {
                channel: "api".into(),
                ..Default::default()
            },
            keys_checked: None,
        };
        self.now_meta(&mut meta)?;
        let digest = self
            .inner
            .secret
            .mac(&[b"erase", account.as_bytes(), operator.as_bytes()]);
        self.submit(Request::Erase {
            meta,
            digest,
            operator: operator.to_owned(),
        })
        .await
    }

    /// Rotates the master key (see [`crate::datakeys::DataKeys::rotate`]): a new generation,
    /// every data key rewrapped under it and made durable, then the older generations
    /// destroyed. A copy of a wrapped key from before (the keys topic before compaction, a
    /// backup, an erased account's) opens under no master key afterwards.
    pub async fn rotate_keys(&self) -> Result<crate::datakeys::Rotation> {
        let keys = self.inner.data_keys.clone();
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || {
            let r = keys.rotate()?;
            store.flush()?;
            keys.destroy_old(r.generation)?;
            Ok(r)
        })
        .await
        .map_err(|_| Error::io("the key rotation task failed"))?
    }

    /// Accounts where a wallet fingerprint is actively bound, and every account it was ever
    /// bound to (the unbound ones included).
    pub fn wallet_accounts(&self, fingerprint: &Hash) -> Result<(Vec<String>, Vec<String>)> {
        let read = self.inner.read.read().expect("lock");
        let row = read.wallet(&self.inner.store, fingerprint)?;
        Ok((
            row.active.iter().cloned().collect(),
            row.history.iter().cloned().collect(),
        ))
    }

    /// A copy of the whole read model, the accounts not in memory read from their rows (for
    /// checks and tests; costly on large ledgers).
    pub fn projection(&self) -> Result<Projection> {
        self.inner.read.read().expect("lock").whole(&self.inner.store)
    }

    /// What the read model holds in memory now and what it read back (see [`accounts`]).
    pub fn account_cache(&self) -> CacheFigures {
        self.inner.read.read().expect("lock").figures()
    }

    /// One account's events, their personal fields opened.
    fn events_at(&self, seqs: Vec<u64>) -> Result<Vec<Event>> {
        let mut erased: Option<bool> = None;
        seqs.into_iter()
            .map(|seq| {
                let b = self
                    .inner
                    .store
                    .event_bytes(seq)?
                    .ok_or_else(|| Error::corrupt(format!("event {seq} missing")))?;
                let mut e = codec::decode(&b).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))?;
                if e.v >= 8 {
                    let erased = match erased {
                        Some(x) => x,
                        None => *erased.insert(self.is_erased(&e.account)?),
                    };
                    self.inner.data_keys.open_event(&mut e, erased)?;
                }
                Ok(e)
            })
            .collect()
    }

    /// Seqs of an account's events with `account_seq` in `(after, before)`, oldest or newest
    /// first, at most `limit`: the stored history rows merged with the pending ones (read
    /// first; see [`crate::indexer::PendingHistory`]).
    fn account_event_seqs(
        &self,
        account: &str,
        after: u64,
        before: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let mut seqs = self
            .inner
            .pending_history
            .read()
            .expect("pending history lock")
            .seqs(account, after, before);
        seqs.extend(
            self.inner
                .store
                .account_event_seqs(account, after, before, newest_first, limit)?,
        );
        seqs.sort_unstable();
        seqs.dedup();
        if newest_first {
            seqs.reverse();
        }
        seqs.truncate(limit);
        Ok(seqs)
    }

    /// Waits (a little) until the history index covers every event readers can see.
    async fn wait_indexed(&self) {
        let target = self.log_len();
        for _ in 0..2000 {
            if self.inner.indexed.load(Ordering::SeqCst) >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// An account's payment events (succeeded and failed), newest first, with
    /// `account_seq < before_version`; also returns the cursor for the next page, `None` when
    /// there is no more.
    pub async fn payments(
        &self,
        account: &str,
        before_version: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Event>, Option<u64>)> {
        self.wait_indexed().await;
        let mut out = Vec::with_capacity(limit + 1);
        let mut before = before_version.unwrap_or(u64::MAX);
        // One more than asked tells whether a next page exists.
        'pages: loop {
            let seqs = self.account_event_seqs(account, 0, before, true, 256)?;
            let exhausted = seqs.len() < 256;
            for event in self.events_at(seqs)? {
                before = event.account_seq;
                if matches!(
                    event.payload,
                    Payload::PaymentSucceeded { .. } | Payload::PaymentFailed { .. }
                ) {
                    out.push(event);
                    if out.len() > limit {
                        break 'pages;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let next = if out.len() > limit {
            out.pop();
            out.last().map(|e| e.account_seq)
        } else {
            None
        };
        Ok((out, next))
    }

    /// An account's events with `account_seq > after_version`, oldest first.
    pub async fn history(&self, account: &str, after_version: u64, limit: usize) -> Result<Vec<Event>> {
        self.wait_indexed().await;
        self.events_at(self.account_event_seqs(account, after_version, u64::MAX, false, limit)?)
    }

    /// An account's events with `account_seq < before_version`, newest first, at most `limit`.
    pub async fn history_newest(&self, account: &str, before_version: u64, limit: usize) -> Result<Vec<Event>> {
        self.wait_indexed().await;
        self.events_at(self.account_event_seqs(account, 0, before_version, true, limit)?)
    }

    /// The durable events `seqs` of `account`, each opened for its reader (`open`) or left
    /// sealed; a seq past the log or of another account is left out.
    pub fn account_events_at(&self, account: &str, seqs: &[u64], open: bool) -> Result<Vec<Event>> {
        let end = self.log_len();
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs.iter().filter(|s| **s > 0 && **s <= end) {
            let Some(b) = self.inner.store.event_bytes(seq)? else {
                continue;
            };
            let mut e = codec::decode(&b).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))?;
            if e.account != account {
                continue;
            }
            if open {
                self.open_event(&mut e)?;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// The `account_seq` of the durable event `seq`, if it is one of `account`'s.
    pub fn account_seq_of(&self, account: &str, seq: u64) -> Result<Option<u64>> {
        if seq == 0 || seq > self.log_len() {
            return Ok(None);
        }
        let Some(b) = self.inner.store.event_bytes(seq)? else {
            return Ok(None);
        };
        let e = codec::decode(&b).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))?;
        Ok((e.account == account).then_some(e.account_seq))
    }

    /// Raw stored events from `from` on (the bytes the hash chain covers). Only durable events:
    /// the iterator stops at the log length seen when it was made.
    pub fn raw_events(&self, from: u64) -> impl Iterator<Item = Result<(u64, store::EventBytes)>> + Send + 'static {
        let end = self.log_len();
        self.inner
            .store
            .scan_events(from.max(1))
            .take_while(move |r| r.as_ref().map_or(true, |(seq, _)| *seq <= end))
    }

    /// Follows the highest durable seq.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.durable_watch.subscribe()
    }

    /// One stored event's bytes (durable or not; callers check against `log_len`).
    pub fn event_bytes(&self, seq: u64) -> Result<Option<store::EventBytes>> {
        self.inner.store.event_bytes(seq)
    }

    /// What the Kafka adapters keep in the ledger's storage about its topics and its term: the
    /// relays' positions, a replica's offsets and terms, the epoch, the fence.
    pub fn replication(&self) -> Replication<'_> {
        Replication { inner: &self.inner }
    }
}

/// The replication state a ledger keeps for the Kafka adapters ([`Ledger::replication`]), kept
/// apart from the commands and reads of [`Ledger`].
pub struct Replication<'a> {
    inner: &'a Inner,
}

impl Replication<'_> {
    pub fn relay_position(&self, topic: &str) -> Result<u64> {
        self.inner.store.relay_position(topic)
    }

    pub fn set_relay_position(&self, topic: &str, seq: u64) -> Result<()> {
        self.inner.store.set_relay_position(topic, seq)
    }

    /// A replica's next offset to read in each partition of `topic`, if it saved them.
    pub fn replica_offsets(&self, topic: &str) -> Result<Option<Vec<i64>>> {
        self.inner.store.replica_offsets(topic)
    }

    pub fn set_replica_offsets(&self, topic: &str, offsets: &[i64]) -> Result<()> {
        self.inner.store.set_replica_offsets(topic, offsets)
    }

    pub fn relay_verified(&self, topic: &str) -> Result<Option<Vec<(i64, u64)>>> {
        self.inner.store.relay_verified(topic)
    }

    pub fn set_relay_verified(&self, topic: &str, partitions: &[(i64, u64)]) -> Result<()> {
        self.inner.store.set_relay_verified(topic, partitions)
    }

    /// This node's term as a primary: its epoch (0 until a promotion) and the promotion's id.
    pub fn epoch(&self) -> Result<(u64, String)> {
        self.inner.store.epoch()
    }

    pub fn set_epoch(&self, epoch: u64, promotion: &str) -> Result<()> {
        self.inner.store.set_epoch(epoch, promotion)
    }

    /// Whether the node starts as a replica whatever its configuration says (see
    /// `adapters::kafka::rejoin`): set when a fenced primary rejoins, cleared by a promotion.
    pub fn starts_as_replica(&self) -> Result<bool> {
        self.inner.store.starts_as_replica()
    }

    pub fn set_starts_as_replica(&self, replica: bool) -> Result<()> {
        self.inner.store.set_starts_as_replica(replica)
    }

    /// The URL of the primary that fenced this node, when its fence named one.
    pub fn successor(&self) -> Option<String> {
        self.inner.store.successor().ok().flatten()
    }

    /// Records the URL a fence of a newer epoch named.
    pub fn set_successor(&self, url: &str) -> Result<()> {
        self.inner.store.set_successor(url)
    }

    /// The epoch of the promotion that fenced this node, if one did.
    pub fn fenced_by(&self) -> Result<Option<u64>> {
        self.inner.store.fenced_by()
    }

    /// A promotion to `epoch` took the topic over: this node takes no more commands (in
    /// replicated mode the answers still waiting end as `outcome_unknown`), now and after a
    /// restart.
    pub fn fence(&self, epoch: u64) -> Result<()> {
        self.inner.primary.store(false, Ordering::SeqCst);
        self.inner.store.set_fenced_by(epoch)?;
        self.inner.store.flush()
    }

    /// A replica's saved reading state (see `adapters::kafka::terms`).
    pub fn replica_terms(&self, topic: &str) -> Result<Option<Vec<u8>>> {
        self.inner.store.replica_terms(topic)
    }

    pub fn set_replica_terms(&self, topic: &str, terms: &[u8]) -> Result<()> {
        self.inner.store.set_replica_terms(topic, terms)
    }
}

/// Events a replica handed to the writer ([`Ledger::submit_replicated`]), not yet known durable.
pub struct ReplicatedAppend {
    replies: Vec<oneshot::Receiver<Result<Committed>>>,
}

impl ReplicatedAppend {
    /// Waits until every event is durable; the last one as recorded (none if there were none).
    /// The first refusal (a broken link) is the answer.
    pub async fn durable(self) -> Result<Option<Committed>> {
        let mut last = None;
        for rx in self.replies {
            last = Some(
                rx.await
                    .map_err(|_| Error::storage("the writer stopped before answering"))??,
            );
        }
        Ok(last)
    }
}
/// Most accounts a catch-up folds between two of its snapshots (see [`catch_up`]); fewer
/// with a smaller cache (`memory.accounts_cached`, at least 1,024).
const CATCH_UP_SNAPSHOT_ACCOUNTS: usize = 50_000;

/// Folds the events past the stored snapshot into `state`, verifying their links, and writes
/// the history rows past `indexed`, the caught-up accounts' rows and the new positions: what a
/// start does between the last snapshot and the log's end (the work is in proportion to the
/// events past the snapshot, not to the history).
fn catch_up(
    store: &Store,
    state: &mut CachedProjection,
    written: &AtomicU64,
    (indexed, snapshot): (u64, u64),
    last_seq: u64,
) -> Result<()> {
    let mut verifier = match snapshot {
        0 => ChainVerifier::new(),
        p => ChainVerifier::resume(
            p,
            hash_bytes(
                &store
                    .event_bytes(p)?
                    .ok_or_else(|| Error::corrupt(format!("event {p} missing")))?,
            ),
        ),
    };
    let mut rows = IndexBatch::default();
    let mut pending_rows = 0;
    let mut caught_up: std::collections::HashSet<String> = std::collections::HashSet::new();
    for r in store.scan_events(snapshot + 1) {
        let (_, bytes) = r?;
        let (event, _) = verifier
            .push(&bytes)
            .map_err(|e| Error::corrupt_by("the log past the snapshot does not verify", e))?;
        if event.seq > indexed {
            rows.add_history(&event.account, event.account_seq, event.seq);
            pending_rows += 1;
            if pending_rows == 10_000 {
                rows.set_indexed(event.seq);
                store.apply_index(std::mem::take(&mut rows))?;
                pending_rows = 0;
            }
        }
        state.apply_catching_up(store, &event)?;
        let seq = event.seq;
        caught_up.insert(event.account);
        // A long catch-up (a restore, a start after the indexer stopped) writes snapshots as it
        // goes, so that the accounts it folded may leave memory: it holds at most this many
        // events' accounts, not the whole log's.
        if caught_up.len() >= state.max().clamp(1024, CATCH_UP_SNAPSHOT_ACCOUNTS) {
            let mut changed = state.take_changed_wallets();
            state.put_rows(&mut rows, caught_up.iter().map(String::as_str), &mut changed);
            if seq > indexed {
                rows.set_indexed(seq);
            }
            rows.set_snapshot(seq);
            store.apply_index(std::mem::take(&mut rows))?;
            written.store(seq, Ordering::SeqCst);
            state.evict();
            caught_up.clear();
            pending_rows = 0;
        }
    }
    // The caught-up accounts' rows and the snapshot position go together: a snapshot
    // position past an account's events without its row would claim a row that is not
    // there (the indexer's next snapshot covers only accounts that change after this).
    let mut changed = state.take_changed_wallets();
    state.put_rows(&mut rows, caught_up.iter().map(String::as_str), &mut changed);
    rows.set_indexed(last_seq);
    rows.set_snapshot(last_seq);
    store.apply_index(rows)?;
    store.flush()?;
    written.store(last_seq, Ordering::SeqCst);
    state.evict();
    tracing::info!(
        from = snapshot,
        to = last_seq,
        "projection and index caught up with the log"
    );
    Ok(())
}
