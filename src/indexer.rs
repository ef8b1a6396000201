//! The indexer: keeps the derived rows of the `index` tree (each account's history index and
//! the projection snapshot) off the write path. It receives the events of each durable batch
//! from the flusher through a bounded queue (a full queue slows the flusher: backpressure, not
//! memory), writes history rows in large batches, and every `snapshot_every_events` writes the
//! rows of the accounts that changed, taken from the read model, with the position they cover.
//!
//! Rows may include events past the recorded snapshot position (the read model runs ahead of
//! the indexer); the catch-up fold skips events an account's row already includes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::projection::Projection;
use crate::store::{IndexBatch, Store};

/// (seq, account, account_seq) of a durable event.
pub type IndexItem = (u64, String, u64);

/// Batches waiting for the indexer.
pub const INDEX_QUEUE_BATCHES: usize = 1024;
/// Batches the indexer takes together.
const INDEX_DRAIN_BATCHES: usize = 64;
/// Accounts waiting for their row before a snapshot is forced.
const SNAPSHOT_DIRTY_MAX: usize = 50_000;

pub struct Indexer {
    pub store: Arc<Store>,
    pub read: Arc<RwLock<Projection>>,
    /// History rows are written through this seq.
    pub indexed: Arc<AtomicU64>,
    pub snapshot_every_events: u64,
}

impl Indexer {
    pub fn run(self, rx: std::sync::mpsc::Receiver<Vec<IndexItem>>) {
        let mut dirty: HashSet<String> = HashSet::new();
        let mut since_snapshot = 0u64;
        let mut last = self.indexed.load(Ordering::SeqCst);
        while let Ok(first) = rx.recv() {
            let mut batch = IndexBatch::default();
            let mut drained = vec![first];
            while drained.len() < INDEX_DRAIN_BATCHES {
                match rx.try_recv() {
                    Ok(items) => drained.push(items),
                    Err(_) => break,
                }
            }
            // One row per account per pass: its events here have consecutive account seqs.
            let mut runs: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
            for (seq, account, account_seq) in drained.into_iter().flatten() {
                since_snapshot += 1;
                last = seq;
                let run = runs.entry(account).or_insert_with(|| (account_seq, Vec::new()));
                debug_assert_eq!(run.0 + run.1.len() as u64, account_seq, "an account's events come in order");
                run.1.push(seq);
            }
            for (account, (first, seqs)) in runs {
                batch.add_history_run(&account, first, &seqs);
                dirty.insert(account);
            }
            batch.set_indexed(last);
            if since_snapshot >= self.snapshot_every_events || dirty.len() >= SNAPSHOT_DIRTY_MAX {
                self.snapshot(&mut batch, &mut dirty, last);
                since_snapshot = 0;
            }
            if let Err(e) = self.store.apply_index(batch) {
                tracing::error!(error = %e, "writing the index failed; it will be rebuilt from the log on the next start");
                return;
            }
            self.indexed.store(last, Ordering::SeqCst);
        }
        // Closing: write every remaining row so the next start resumes at the end.
        let mut batch = IndexBatch::default();
        self.snapshot(&mut batch, &mut dirty, last);
        if let Err(e) = self.store.apply_index(batch).and_then(|_| self.store.flush()) {
            tracing::error!(error = %e, "writing the final snapshot failed; the next start folds the log instead");
        }
    }

    fn snapshot(&self, batch: &mut IndexBatch, dirty: &mut HashSet<String>, position: u64) {
        let read = self.read.read().expect("read model lock");
        for account in dirty.drain() {
            if let Some(state) = read.accounts.get(&account) {
                batch.put_account(&account, state);
            }
        }
        batch.set_snapshot(position);
    }
}
