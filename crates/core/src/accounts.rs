//! Accounts and wallets held in memory up to a bound, the rest read from their stored rows.
//!
//! The writer's decision state and the read model are each a [`CachedProjection`]: a
//! [`Projection`] whose account map is a cache over the account rows the indexer stores (`B`
//! rows of the `index` tree). An account not in the map is read from its row on its next
//! command (or read), and its answer is the one it would have had in memory, because only a
//! **clean** account leaves the map: one whose newest event is at or before the snapshot
//! position the indexer has written through (`written`), so its stored row is exactly its
//! state. An account changed since (a dirty one) stays until the indexer's next snapshot
//! covers it; the number of those is bounded by the indexer's own bounds
//! (`writer.snapshot_every_events`, and at most 65,536 events or 50,000 accounts between
//! writes), so memory is bounded by configuration: `memory.accounts_cached` plus the accounts
//! of one snapshot interval.
//!
//! The read model keeps the wallet indexes the same way, one [`WalletRow`] per wallet (`V` rows):
//! the accounts holding it bound, those that ever did, and each account's wrong passwords on
//! binds of it. A wallet leaves memory only once the rows written cover its last change. The
//! writer decides from an account's own state alone, so it keeps no wallet rows.
//!
//! A wallet row is written in the same sled batch as the rows of the accounts whose events
//! changed it (rows may run ahead of the snapshot position, never apart from each other), and
//! each account's part of it is a function of that account's state ([`WalletRow::set_part`]):
//! the catch-up after a crash skips what an account's row includes, and sets the parts of the
//! events it folds again.
//!
//! Which entry leaves first: the one written or read from disk longest ago (a queue of
//! touches; a touch that a later one superseded is skipped when it reaches the front).
//! Opening reads no row: the cache fills as accounts and wallets are used.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bindledger_events::{Event, Hash};

use crate::domain::cache::let_go;
use crate::domain::projection::{fold_account, AccountState, Projection, WalletRow};
use crate::error::Result;
use crate::store::{IndexBatch, Store};

/// What a [`CachedProjection`] holds in memory, and the stored rows it (the writer's state
/// and the read model together) read back since open because an account or a wallet was not
/// in memory (or was new).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFigures {
    pub accounts: usize,
    pub wallets: usize,
    pub account_rows_read: u64,
    pub wallet_rows_read: u64,
}

/// A projection whose accounts (and, in the read model, wallet rows) are a bounded cache over
/// the stored rows.
#[derive(Clone)]
pub struct CachedProjection {
    /// The position and the cached accounts (its wallet maps stay empty: the wallet indexes
    /// are `wallets`).
    pub p: Projection,
    /// Touches, oldest first: (account, its version then, the seq of the event that made it,
    /// 0 for a row read from disk).
    touched: VecDeque<(String, u64, u64)>,
    /// Accounts (and wallets) kept beyond the dirty ones.
    max: usize,
    /// Stored rows are current for every account and wallet whose last change is at or
    /// before this seq.
    written: Arc<AtomicU64>,
    /// Rows read because their account (0) or wallet (1) was not in memory (shared by the
    /// clones).
    rows_read: Arc<[AtomicU64; 2]>,
    /// The wallet indexes (the read model's; `None` in the writer's state).
    wallets: Option<Wallets>,
}

#[derive(Clone, Default)]
struct Wallets {
    /// The rows in memory, with the seq of the last event that changed each (0: as read).
    rows: HashMap<Hash, (WalletRow, u64)>,
    /// Touches, oldest first: (wallet, the seq then, twice: its stamp and its change).
    touched: VecDeque<(Hash, u64, u64)>,
    /// The wallets each account's events changed since the indexer last took them: their
    /// rows go with the account's.
    changed: HashMap<String, Vec<Hash>>,
}

impl CachedProjection {
    /// A projection at snapshot `position` over `store`'s rows, holding nothing yet. With
    /// `wallets`, it keeps the wallet indexes too (the read model). A store written before
    /// wallet rows were kept is given them here, once, from its account rows.
    pub fn open(
        store: &Store,
        position: u64,
        max: usize,
        written: Arc<AtomicU64>,
        wallets: bool,
    ) -> Result<CachedProjection> {
        if !store.has_wallet_rows()? {
            write_wallet_rows(store)?;
        }
        Ok(CachedProjection {
            p: Projection {
                position,
                ..Projection::default()
            },
            touched: VecDeque::new(),
            max,
            written,
            rows_read: Default::default(),
            wallets: wallets.then(Wallets::default),
        })
    }

    /// The same projection without the wallet indexes: the writer's state.
    pub fn without_wallets(&self) -> CachedProjection {
        CachedProjection {
            wallets: None,
            ..self.clone()
        }
    }

    /// The account as it stands: from memory, or else from its stored row (read, not kept).
    pub fn account(&self, store: &Store, account: &str) -> Result<Option<Cow<'_, AccountState>>> {
        match self.p.accounts.get(account) {
            Some(a) => Ok(Some(Cow::Borrowed(a))),
            None => {
                self.rows_read[0].fetch_add(1, Ordering::Relaxed);
                Ok(store.account_row(account)?.map(Cow::Owned))
            }
        }
    }

    /// The wallet's row as it stands: from memory, or else from the store (read, not kept).
    /// Only the read model keeps wallet rows.
    pub fn wallet(&self, store: &Store, fp: &Hash) -> Result<Cow<'_, WalletRow>> {
        let wallets = self.wallets.as_ref().expect("the read model keeps the wallet rows");
        match wallets.rows.get(fp) {
            Some((row, _)) => Ok(Cow::Borrowed(row)),
            None => {
                self.rows_read[1].fetch_add(1, Ordering::Relaxed);
                Ok(Cow::Owned(store.wallet_row(fp)?.unwrap_or_default()))
            }
        }
    }

    /// The account as it stands, brought into memory if it has a stored row.
    pub fn load(&mut self, store: &Store, account: &str) -> Result<Option<&AccountState>> {
        if !self.p.accounts.contains_key(account) {
            self.rows_read[0].fetch_add(1, Ordering::Relaxed);
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
        self.fold(store, e)
    }

    /// Folds one event in whose account [`CachedProjection::load`] brought in (or that has
    /// none stored: a new account). Only the read model reads the store here (the wallet
    /// rows the event changes).
    pub fn fold(&mut self, store: &Store, e: &Event) -> Result<()> {
        assert_eq!(e.seq, self.p.position + 1, "projection fed out of order");
        self.p.position = e.seq;
        let acct = self.p.accounts.entry(e.account.clone()).or_default();
        let effect = fold_account(acct, e);
        self.touched.push_back((e.account.clone(), acct.version, e.seq));
        if self.wallets.is_some() {
            for fp in effect.fingerprints() {
                self.set_wallet_part(store, &e.account, fp, e.seq)?;
            }
        }
        Ok(())
    }

    /// The same during the catch-up from a snapshot, where an account's stored row may
    /// already include the event (see [`Projection::apply_catching_up`]): then it is skipped,
    /// and so are its wallets' parts, which were written with that row.
    pub fn apply_catching_up(&mut self, store: &Store, e: &Event) -> Result<()> {
        let seen = self
            .load(store, &e.account)?
            .is_some_and(|a| a.version >= e.account_seq);
        if !seen {
            return self.fold(store, e);
        }
        assert_eq!(e.seq, self.p.position + 1, "projection fed out of order");
        self.p.position = e.seq;
        Ok(())
    }

    /// Sets `account`'s part of wallet `fp`'s row from the account's state in memory, the
    /// row read from disk first if it is not in memory.
    fn set_wallet_part(&mut self, store: &Store, account: &str, fp: Hash, seq: u64) -> Result<()> {
        let wallets = self.wallets.as_mut().expect("wallet rows kept");
        let (row, last) = match wallets.rows.entry(fp) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.rows_read[1].fetch_add(1, Ordering::Relaxed);
                v.insert((store.wallet_row(&fp)?.unwrap_or_default(), 0))
            }
        };
        let state = self.p.accounts.get(account).expect("the account was folded first");
        row.set_part(account, state, &fp);
        *last = seq;
        wallets.touched.push_back((fp, seq, seq));
        let changed = wallets.changed.entry(account.to_owned()).or_default();
        if !changed.contains(&fp) {
            changed.push(fp);
        }
        Ok(())
    }

    /// Lets clean accounts and wallets go, oldest touch first, until at most `max` of each
    /// are held (or the oldest is dirty); and keeps the queues of touches within a small
    /// multiple of the maps.
    pub fn evict(&mut self) {
        let written = self.written.load(Ordering::SeqCst);
        let_go(
            &mut self.p.accounts,
            &mut self.touched,
            self.max,
            written,
            |a| a.version,
            |_, _| (),
        );
        if let Some(w) = &mut self.wallets {
            let_go(
                &mut w.rows,
                &mut w.touched,
                self.max,
                written,
                |(_, last)| *last,
                |_, _| (),
            );
        }
    }

    /// The wallets changed since the last call, by account: the indexer writes their rows
    /// with the accounts' (see [`CachedProjection::put_rows`]).
    pub fn take_changed_wallets(&mut self) -> HashMap<String, Vec<Hash>> {
        self.wallets
            .as_mut()
            .map(|w| std::mem::take(&mut w.changed))
            .unwrap_or_default()
    }

    /// Puts into `batch` the rows of `accounts` as they stand, with the rows of every wallet
    /// their events changed since the last snapshot (taken from `changed`) or since it was
    /// taken (those stay to be written again): so a stored account row never includes an
    /// event whose wallet changes are not stored with it or before it. What one sled batch of
    /// a snapshot carries.
    pub fn put_rows<'a>(
        &self,
        batch: &mut IndexBatch,
        accounts: impl IntoIterator<Item = &'a str>,
        changed: &mut HashMap<String, Vec<Hash>>,
    ) {
        for account in accounts {
            if let Some(state) = self.p.accounts.get(account) {
                batch.put_account(account, state);
            }
            let taken = changed.remove(account).unwrap_or_default();
            let Some(w) = &self.wallets else { continue };
            let since = w.changed.get(account).into_iter().flatten();
            let mut fps: Vec<&Hash> = taken.iter().chain(since).collect();
            fps.sort_unstable_by_key(|fp| fp.0);
            fps.dedup();
            for fp in fps {
                if let Some((row, _)) = w.rows.get(fp) {
                    batch.put_wallet(fp, row);
                }
            }
        }
    }

    /// Every account and wallet (those in memory as they are, the rest from their rows): a
    /// copy of the whole projection, for checks and tests; costly on a large ledger.
    pub fn whole(&self, store: &Store) -> Result<Projection> {
        let mut whole = self.p.clone();
        for r in store.accounts() {
            let (name, state) = r?;
            whole.accounts.entry(name).or_insert(state);
        }
        let held = self.wallets.as_ref().map(|w| &w.rows);
        for (fp, (row, _)) in held.into_iter().flatten() {
            row.put_into(&mut whole, *fp);
        }
        for r in store.wallet_rows() {
            let (fp, row) = r?;
            if !held.is_some_and(|h| h.contains_key(&fp)) {
                row.put_into(&mut whole, fp);
            }
        }
        Ok(whole)
    }

    /// Accounts (and wallets) kept beyond the dirty ones.
    pub fn max(&self) -> usize {
        self.max
    }

    /// What is held in memory now, and the rows read back since open.
    pub fn figures(&self) -> CacheFigures {
        CacheFigures {
            accounts: self.p.accounts.len(),
            wallets: self.wallets.as_ref().map_or(0, |w| w.rows.len()),
            account_rows_read: self.rows_read[0].load(Ordering::Relaxed),
            wallet_rows_read: self.rows_read[1].load(Ordering::Relaxed),
        }
    }
}

/// Gives a store written before wallet rows were kept its wallet rows, from its account rows
/// (once; the wallets' rows are gathered in memory for it).
fn write_wallet_rows(store: &Store) -> Result<()> {
    let mut rows: std::collections::BTreeMap<Hash, WalletRow> = Default::default();
    for r in store.accounts() {
        let (name, state) = r?;
        let fps = state.bindings.iter().map(|b| b.wallet.fingerprint);
        for fp in fps.chain(state.bind_wrong_passwords.iter().map(|(fp, _)| *fp)) {
            rows.entry(fp).or_default().set_part(&name, &state, &fp);
        }
    }
    let count = rows.len();
    let mut batch = IndexBatch::default();
    for (i, (fp, row)) in rows.iter().enumerate() {
        batch.put_wallet(fp, row);
        if (i + 1) % 10_000 == 0 {
            store.apply_index(std::mem::take(&mut batch))?;
        }
    }
    store.apply_index(batch)?;
    store.set_has_wallet_rows()?;
    store.flush()?;
    if count > 0 {
        tracing::info!(wallets = count, "the wallet indexes are stored as rows from now on");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IndexBatch;
    use bindledger_domain::testing::Rng;

    /// `n` events of the life of `accounts` accounts binding `wallets` wallets (each at most
    /// 256), chosen by `seed`.
    fn events(n: usize, accounts: u64, wallets: u8, seed: u64) -> Vec<Event> {
        let mut rng = Rng(seed);
        let steps: Vec<(u8, u8, u8)> = (0..n)
            .map(|_| {
                (
                    rng.below(accounts) as u8,
                    rng.below(7) as u8,
                    rng.below(u64::from(wallets)) as u8,
                )
            })
            .collect();
        bindledger_domain::testing::realise_over(&steps, wallets)
    }

    /// The indexer's snapshot as `Indexer::write` makes it, in two chunks of the accounts
    /// changed since the last one, then the positions; `between` runs after the wallets
    /// changed are taken (events the indexer has not received yet), `crash` stops it after
    /// the first chunk. Returns whether it wrote the positions.
    fn snapshot(
        store: &Store,
        cache: &mut CachedProjection,
        since: &mut std::collections::BTreeSet<String>,
        last: u64,
        between: impl FnOnce(&mut CachedProjection),
        crash: bool,
    ) -> bool {
        let mut changed = cache.take_changed_wallets();
        between(cache);
        let accounts: Vec<String> = std::mem::take(since).into_iter().collect();
        for (i, chunk) in accounts.chunks(accounts.len().div_ceil(2).max(1)).enumerate() {
            if crash && i == 1 {
                return false;
            }
            let mut batch = IndexBatch::default();
            cache.put_rows(&mut batch, chunk.iter().map(String::as_str), &mut changed);
            store.apply_index(batch).unwrap();
        }
        let mut batch = IndexBatch::default();
        let rest: Vec<String> = changed.keys().cloned().collect();
        cache.put_rows(&mut batch, rest.iter().map(String::as_str), &mut changed);
        batch.set_snapshot(last);
        store.apply_index(batch).unwrap();
        cache.written.store(last, Ordering::SeqCst);
        true
    }

    /// The account and wallet rows a cache reads back, and a restart's catch-up from the
    /// stored snapshot (after snapshots cut short between their sled batches, and with events
    /// applied while a snapshot was being written), always reach the state of a whole fold.
    #[test]
    fn a_small_cache_over_stored_rows_reaches_the_state_of_a_whole_fold() {
        for seed in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let evs = events(3_000, 16, 24, seed);
            let open = |store: &Store, at: u64| {
                CachedProjection::open(store, at, 4, Arc::new(AtomicU64::new(at)), true).unwrap()
            };
            let mut cache = open(&store, 0);
            let mut whole = Projection::default();
            let mut rng = Rng(seed + 100);
            let mut since: std::collections::BTreeSet<String> = Default::default();
            let mut snapshot_at = 0u64;
            let mut i = 0;
            while i < evs.len() {
                let e = &evs[i];
                cache.apply(&store, e).unwrap();
                whole.apply(e);
                since.insert(e.account.clone());
                i += 1;
                if rng.below(40) == 0 {
                    // Up to three events reach the read model while the snapshot is written.
                    let extra = (rng.below(4) as usize).min(evs.len() - i);
                    let crash = rng.below(4) == 0;
                    let late = &evs[i..i + extra];
                    let last = e.seq;
                    let wrote = snapshot(
                        &store,
                        &mut cache,
                        &mut since,
                        last,
                        |c| {
                            for x in late {
                                c.apply(&store, x).unwrap();
                            }
                        },
                        crash,
                    );
                    for x in late {
                        whole.apply(x);
                        since.insert(x.account.clone());
                    }
                    i += extra;
                    if wrote {
                        snapshot_at = last;
                    }
                    if crash {
                        // A restart: the rows as stored, the events past the snapshot folded
                        // again, then the caught-up rows and the position written together.
                        cache = open(&store, snapshot_at);
                        let mut caught = std::collections::BTreeSet::new();
                        for x in &evs[snapshot_at as usize..i] {
                            cache.apply_catching_up(&store, x).unwrap();
                            caught.insert(x.account.clone());
                        }
                        let mut changed = cache.take_changed_wallets();
                        let mut batch = IndexBatch::default();
                        cache.put_rows(&mut batch, caught.iter().map(String::as_str), &mut changed);
                        batch.set_snapshot(i as u64);
                        store.apply_index(batch).unwrap();
                        cache.written.store(i as u64, Ordering::SeqCst);
                        snapshot_at = i as u64;
                        since.clear();
                        assert_eq!(cache.whole(&store).unwrap(), whole, "seed {seed}: restarted at {i}");
                    }
                }
                cache.evict();
                // Never more than the bound plus the accounts changed since the last snapshot.
                assert!(cache.figures().accounts <= 4 + since.len() + 4, "{:?}", cache.figures());
                let a = &evs[i - 1].account;
                assert_eq!(cache.account(&store, a).unwrap().as_deref(), whole.accounts.get(a));
            }
            assert_eq!(cache.whole(&store).unwrap(), whole, "seed {seed}");
            assert!(cache.wallets.as_ref().unwrap().rows.len() <= 4 + since.len() * 2);
            assert!(cache.touched.len() <= 2 * cache.figures().accounts + 1024);
        }
    }
}
