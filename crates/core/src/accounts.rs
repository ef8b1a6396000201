//! Accounts held in memory up to a bound, the rest read from their stored rows.
//!
//! The writer's decision state and the read model are each a [`Projection`] whose account map
//! is a cache over the account rows the indexer stores (`B` rows of the `index` tree): an
//! account not in the map is read from its row on its next command (or read), and its answer
//! is the one it would have had in memory, because only a **clean** account leaves the map:
//! one whose newest event is at or before the snapshot position the indexer has written
//! through (`written`), so its stored row is exactly its state. An account changed since (a
//! dirty one) stays until the indexer's next snapshot covers it; the number of those is
//! bounded by the indexer's own bounds (`writer.snapshot_every_events`, and at most
//! 65,536 events or 50,000 accounts between writes), so memory is bounded by configuration:
//! `memory.accounts_cached` plus the accounts of one snapshot interval.
//!
//! Which account leaves first: the one written or read from disk longest ago (a queue of
//! touches; a touch that a later one superseded is skipped when it reaches the front).
//!
//! The wallet indexes (wallet to accounts, wrong bind passwords per wallet) stay whole in
//! memory: they are built from every stored row at open, without keeping the rows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bindledger_events::Event;

use crate::domain::projection::{AccountState, Projection};
use crate::error::Result;
use crate::store::Store;

/// A projection whose accounts are a bounded cache over the stored rows.
#[derive(Clone)]
pub struct CachedProjection {
    /// The position, the cached accounts and the whole wallet indexes.
    pub p: Projection,
    /// Touches, oldest first: (account, its version then, the seq of the event that made it,
    /// 0 for a row read from disk).
    touched: VecDeque<(String, u64, u64)>,
    /// Accounts kept beyond the dirty ones.
    max: usize,
    /// Stored rows are current for every account whose newest event is at or before this seq.
    written: Arc<AtomicU64>,
    /// Rows read because their account was not in memory (shared by the clones).
    rows_read: Arc<AtomicU64>,
}

impl CachedProjection {
    /// Opens over `store`'s rows at snapshot `position`: the wallet indexes from every row,
    /// and the first `max` rows read kept as cached accounts.
    pub fn open(store: &Store, position: u64, max: usize, written: Arc<AtomicU64>) -> Result<CachedProjection> {
        let mut c = CachedProjection {
            p: Projection {
                position,
                ..Projection::default()
            },
            touched: VecDeque::new(),
            max,
            written,
            rows_read: Default::default(),
        };
        for r in store.accounts() {
            let (name, state) = r?;
            c.p.index_account(&name, &state);
            if c.p.accounts.len() < max {
                c.touched.push_back((name.clone(), state.version, 0));
                c.p.accounts.insert(name, state);
            }
        }
        Ok(c)
    }

    /// The account as it stands: from memory, or else from its stored row (read, not kept).
    pub fn account(&self, store: &Store, account: &str) -> Result<Option<std::borrow::Cow<'_, AccountState>>> {
        match self.p.accounts.get(account) {
            Some(a) => Ok(Some(std::borrow::Cow::Borrowed(a))),
            None => {
                self.rows_read.fetch_add(1, Ordering::Relaxed);
                Ok(store.account_row(account)?.map(std::borrow::Cow::Owned))
            }
        }
    }

    /// The account as it stands, brought into memory if it has a stored row.
    pub fn load(&mut self, store: &Store, account: &str) -> Result<Option<&AccountState>> {
        if !self.p.accounts.contains_key(account) {
            self.rows_read.fetch_add(1, Ordering::Relaxed);
            if let Some(state) = store.account_row(account)? {
                self.touched.push_back((account.to_owned(), state.version, 0));
                self.p.accounts.insert(account.to_owned(), state);
            }
        }
        Ok(self.p.accounts.get(account))
    }

    /// Folds one event in (its account read from disk first if it is not in memory).
    pub fn apply(&mut self, store: &Store, e: &Event) -> Result<()> {
        self.load(store, &e.account)?;
        self.fold(e);
        Ok(())
    }

    /// Folds one event in whose account [`CachedProjection::load`] brought in (or that has
    /// none stored: a new account).
    pub fn fold(&mut self, e: &Event) {
        self.p.apply(e);
        self.touched(e);
    }

    /// The same during the catch-up from a snapshot (see [`Projection::apply_catching_up`]).
    pub fn apply_catching_up(&mut self, store: &Store, e: &Event) -> Result<()> {
        self.load(store, &e.account)?;
        self.p.apply_catching_up(e);
        self.touched(e);
        Ok(())
    }

    fn touched(&mut self, e: &Event) {
        let version = self.p.accounts.get(&e.account).map_or(0, |a| a.version);
        self.touched.push_back((e.account.clone(), version, e.seq));
    }

    /// Lets clean accounts go, oldest touch first, until at most `max` are held (or the
    /// oldest is dirty); and keeps the queue of touches within a small multiple of the map.
    pub fn evict(&mut self) {
        let written = self.written.load(Ordering::SeqCst);
        while self.p.accounts.len() > self.max {
            let Some((account, version, seq)) = self.touched.front() else {
                break;
            };
            let current = self.p.accounts.get(account).map(|a| a.version);
            if current != Some(*version) {
                self.touched.pop_front();
                continue;
            }
            if *seq > written {
                break;
            }
            let (account, _, _) = self.touched.pop_front().expect("front exists");
            self.p.accounts.remove(&account);
        }
        if self.touched.len() > 2 * self.p.accounts.len() + 1024 {
            let accounts = &self.p.accounts;
            self.touched
                .retain(|(account, version, _)| accounts.get(account).map(|a| a.version) == Some(*version));
        }
    }

    /// Every account (cached ones from memory, the rest from their rows): a copy of the whole
    /// projection, for checks and tests; costly on a large ledger.
    pub fn whole(&self, store: &Store) -> Result<Projection> {
        let mut whole = self.p.clone();
        for r in store.accounts() {
            let (name, state) = r?;
            whole.accounts.entry(name).or_insert(state);
        }
        Ok(whole)
    }

    /// Accounts held in memory now.
    pub fn cached(&self) -> usize {
        self.p.accounts.len()
    }

    /// Reads of a stored row (or of its absence, for a new account) because an account was
    /// not in memory, by this projection and its clones, since open.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IndexBatch;
    use bindledger_domain::testing::Rng;

    /// `n` events of the life of `accounts` accounts (at most 256), chosen by `seed`.
    fn events(n: usize, accounts: u64, seed: u64) -> Vec<Event> {
        let mut rng = Rng(seed);
        let steps: Vec<(u8, u8, u8)> = (0..n)
            .map(|_| (rng.below(accounts) as u8, rng.below(7) as u8, rng.below(4) as u8))
            .collect();
        bindledger_domain::testing::realise(&steps)
    }

    #[test]
    fn a_small_cache_over_stored_rows_reaches_the_state_of_a_whole_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let evs = events(4_000, 200, 7);
        let written = Arc::new(AtomicU64::new(0));
        let mut cache = CachedProjection::open(&store, 0, 16, written.clone()).unwrap();
        let mut whole = Projection::default();
        let mut rng = Rng(3);
        let mut since_write: std::collections::BTreeSet<String> = Default::default();
        for e in &evs {
            cache.apply(&store, e).unwrap();
            whole.apply(e);
            since_write.insert(e.account.clone());
            // The indexer's snapshot, now and then: the dirty accounts' rows, then the position.
            if rng.below(50) == 0 {
                let mut batch = IndexBatch::default();
                for a in std::mem::take(&mut since_write) {
                    batch.put_account(&a, &cache.p.accounts[&a]);
                }
                batch.set_snapshot(e.seq);
                store.apply_index(batch).unwrap();
                written.store(e.seq, Ordering::SeqCst);
            }
            cache.evict();
            // Never more than the bound plus the accounts changed since the last snapshot.
            assert!(cache.cached() <= 16 + since_write.len(), "{} cached", cache.cached());
            let a = &e.account;
            assert_eq!(cache.account(&store, a).unwrap().as_deref(), whole.accounts.get(a));
        }
        for (name, state) in &whole.accounts {
            assert_eq!(cache.account(&store, name).unwrap().as_deref(), Some(state), "{name}");
        }
        assert_eq!(cache.p.wallets, whole.wallets);
        assert_eq!(cache.p.wallet_history, whole.wallet_history);
        assert_eq!(cache.p.wallet_wrong_passwords, whole.wallet_wrong_passwords);
        assert!(cache.touched.len() <= 2 * cache.cached() + 1024);
    }
}
