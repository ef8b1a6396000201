//! The indexer: keeps the derived rows of the `index` tree (each account's history index and
//! the projection snapshot) off the write path. It receives the events of each durable batch
//! from the flusher through a bounded queue (a full queue slows the flusher: backpressure, not
//! memory) and gathers them in memory ([`PendingHistory`], which readers merge with the stored
//! rows) until [`PENDING_EVENTS_MAX`] events or `snapshot_every_events` have arrived; then it
//! writes one history row per account for all of them, with the rows of the accounts that
//! changed (taken from the read model) and the position they cover, in one batch.
//!
//! Gathering matters: sled costs about 10-15 µs per key written, and with many accounts a
//! batch of a few hundred events touches as many accounts, so writing each batch's rows cost
//! about one key per event, as much as the log itself (measured: the library path at 31-33k
//! commands/s with the rows written per batch, 42-59k/s without any).
//!
//! Rows may include events past the recorded snapshot position (the read model runs ahead of
//! the indexer); the catch-up fold skips events an account's row already includes. After a
//! crash, the ledger writes the rows of the events past the recorded history position again
//! from the log before it starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::accounts::CachedProjection;
use crate::store::DurableBatch;
use crate::store::{IndexBatch, Store};

/// Batches waiting for the indexer.
pub const INDEX_QUEUE_BATCHES: usize = 1024;
/// Batches the indexer takes together.
const INDEX_DRAIN_BATCHES: usize = 64;
/// Accounts with pending history (so a changed row) before their rows are written anyway.
const PENDING_ACCOUNTS_MAX: usize = 50_000;
/// Accounts whose rows one sled batch of an indexer write carries (see [`Indexer::write`]).
const WRITE_CHUNK_ACCOUNTS: usize = 1024;
/// Events gathered in memory before their history rows are written.
pub const PENDING_EVENTS_MAX: usize = 65_536;

/// One account's consecutive events: the first one's account_seq, and each one's seq.
type Run = (u64, Vec<u64>);

/// History received but not yet in the stored rows. Readers take it first, then the stored
/// rows: an event leaves here only after its row is stored, so a reader finds every event in
/// one or the other (or both, for a moment: readers drop duplicates).
#[derive(Default)]
pub struct PendingHistory {
    gathering: HashMap<String, Run>,
    events: usize,
    /// Taken from `gathering`, being written.
    writing: HashMap<String, Run>,
}

impl PendingHistory {
    fn add(&mut self, account: &str, account_seq: u64, seq: u64) {
        let run = match self.gathering.get_mut(account) {
            Some(run) => run,
            None => self
                .gathering
                .entry(account.to_owned())
                .or_insert((account_seq, Vec::new())),
        };
        debug_assert_eq!(
            run.0 + run.1.len() as u64,
            account_seq,
            "an account's events come in order"
        );
        run.1.push(seq);
        self.events += 1;
    }

    /// Seqs of the account's pending events with `account_seq` in `(after, before)`.
    pub fn seqs(&self, account: &str, after: u64, before: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (first, seqs) in [self.writing.get(account), self.gathering.get(account)]
            .into_iter()
            .flatten()
        {
            out.extend(
                seqs.iter()
                    .enumerate()
                    .filter(|(i, _)| (first + *i as u64) > after && (first + *i as u64) < before)
                    .map(|(_, s)| *s),
            );
        }
        out
    }
}

pub struct Indexer {
    pub store: Arc<Store>,
    pub read: Arc<RwLock<CachedProjection>>,
    /// The snapshot position the stored rows are written through: what lets the read model
    /// and the writer's state let an account go (see [`crate::accounts`]).
    pub written: Arc<AtomicU64>,
    /// History rows are written through this seq.
    pub indexed: Arc<AtomicU64>,
    pub snapshot_every_events: u64,
    pub pending: Arc<RwLock<PendingHistory>>,
    /// The idempotency and paid-order tables, written here too.
    pub keys: Arc<crate::idempotency::KeyIndex>,
}

/// Gathered idempotency keys and paid orders are written when the ledger has been quiet this
/// long, or after [`KEYS_WRITE_BUSY`] under load (or [`crate::idempotency::GATHER_MAX`] of
/// them): the more a write carries, the fewer times each bucket of the tables is rewritten.
const KEYS_WRITE_AFTER: std::time::Duration = std::time::Duration::from_millis(200);
const KEYS_WRITE_BUSY: std::time::Duration = std::time::Duration::from_secs(2);

impl Indexer {
    pub fn run(self, rx: std::sync::mpsc::Receiver<DurableBatch>) {
        let mut last = self.indexed.load(Ordering::SeqCst);
        let mut keys = crate::idempotency::Gathered::default();
        let mut keys_written = std::time::Instant::now();
        loop {
            let first = match rx.recv_timeout(KEYS_WRITE_AFTER) {
                Ok(first) => first,
                // Quiet: write the keys gathered so far, so memory holds none for long.
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if !keys.is_empty() {
                        if let Err(e) = self.keys.write_gathered(&mut keys, false) {
                            tracing::error!(error = %crate::error::chain(&e), code = e.code(), "writing the idempotency index failed; it will be caught up from the log on the next start");
                            return;
                        }
                        keys_written = std::time::Instant::now();
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            crate::seams::panic_point("bindledger-indexer");
            let mut drained = vec![first];
            while drained.len() < INDEX_DRAIN_BATCHES {
                match rx.try_recv() {
                    Ok(items) => drained.push(items),
                    Err(_) => break,
                }
            }
            let (events, accounts) = {
                let mut pending = self.pending.write().expect("pending history lock");
                for e in drained.iter().flat_map(|b| b.iter()) {
                    last = e.seq;
                    pending.add(&e.account, e.account_seq, e.seq);
                }
                (pending.events, pending.gathering.len())
            };
            // Readers find these events among the pending ones from now on.
            self.indexed.store(last, Ordering::SeqCst);
            for b in &drained {
                self.keys.gather(&mut keys, b);
            }
            if keys.len() >= crate::idempotency::GATHER_MAX
                || (!keys.is_empty() && keys_written.elapsed() >= KEYS_WRITE_BUSY)
            {
                if let Err(e) = self.keys.write_gathered(&mut keys, false) {
                    tracing::error!(error = %crate::error::chain(&e), code = e.code(), "writing the idempotency index failed; it will be caught up from the log on the next start");
                    return;
                }
                keys_written = std::time::Instant::now();
            }
            if events >= PENDING_EVENTS_MAX
                || events as u64 >= self.snapshot_every_events
                || accounts >= PENDING_ACCOUNTS_MAX
            {
                if let Err(e) = self.write(last) {
                    tracing::error!(error = %crate::error::chain(&e), code = e.code(), "writing the index failed; it will be rebuilt from the log on the next start");
                    return;
                }
            }
        }
        // Closing: write every remaining row so the next start resumes at the end.
        if let Err(e) = self.keys.write_gathered(&mut keys, true) {
            tracing::error!(error = %crate::error::chain(&e), code = e.code(), "writing the idempotency index failed; it will be caught up from the log on the next start");
        }
        if let Err(e) = self.write(last).and_then(|_| self.store.flush()) {
            tracing::error!(error = %crate::error::chain(&e), code = e.code(), "writing the final snapshot failed; the next start folds the log instead");
        }
    }

    /// Writes the history rows of every pending event and the rows of their accounts (the
    /// accounts changed since the last write, as the read model has them now), then the
    /// positions they cover.
    ///
    /// In chunks of [`WRITE_CHUNK_ACCOUNTS`] accounts: the read model's lock is held only to
    /// copy one chunk's states (serialising and writing them happen without it, so the
    /// flusher, which publishes each durable batch under that lock, never waits for a whole
    /// write), and each chunk is its own sled batch, so the log's writes go on between them.
    /// Rows written before a crash cut a write short are harmless: rows may run ahead of the
    /// recorded positions (the catch-up skips what an account's row includes, readers drop
    /// duplicate history), and the positions are written last.
    fn write(&self, last: u64) -> crate::error::Result<()> {
        {
            let mut pending = self.pending.write().expect("pending history lock");
            pending.writing = std::mem::take(&mut pending.gathering);
            pending.events = 0;
        }
        let mut changed = self.read.write().expect("read model lock").take_changed_wallets();
        {
            let pending = self.pending.read().expect("pending history lock");
            let accounts: Vec<(&String, &Run)> = pending.writing.iter().collect();
            for chunk in accounts.chunks(WRITE_CHUNK_ACCOUNTS) {
                let mut batch = IndexBatch::default();
                for (account, (first, seqs)) in chunk {
                    batch.add_history_run(account, *first, seqs);
                }
                // The accounts' rows and the rows of the wallets their events changed, as the
                // read model has them at one moment, in one batch.
                self.read.read().expect("read model lock").put_rows(
                    &mut batch,
                    chunk.iter().map(|(a, _)| a.as_str()),
                    &mut changed,
                );
                self.store.apply_index(batch)?;
            }
        }
        // Wallets changed by events the indexer has not received yet: their rows with their
        // accounts' as they stand (rows may run ahead of the positions, as above).
        if !changed.is_empty() {
            let mut batch = IndexBatch::default();
            let accounts: Vec<String> = changed.keys().cloned().collect();
            self.read.read().expect("read model lock").put_rows(
                &mut batch,
                accounts.iter().map(String::as_str),
                &mut changed,
            );
            self.store.apply_index(batch)?;
        }
        let mut batch = IndexBatch::default();
        batch.set_indexed(last);
        batch.set_snapshot(last);
        self.store.apply_index(batch)?;
        self.written.store(last, Ordering::SeqCst);
        self.pending.write().expect("pending history lock").writing.clear();
        Ok(())
    }
}
