//! The idempotency index and the paid-orders index, both derived from the log.
//!
//! - **Idempotency keys**: (account, key) -> the event the key produced, with the request's
//!   digest, for as long as `idempotency.window` (24 h by default) of the ledger's
//!   `record_time` has not passed since that event, whatever the throughput. After the window
//!   the key is treated as new.
//! - **Paid orders**: (account, order_id) -> the `payment_succeeded` event of that order, with
//!   no window: a second payment of a paid order is recorded as `order_already_paid`.
//!
//! Both live on disk in [`KeyTable`]s next to the log (`idempotency.keys`, `orders.keys`),
//! written by the indexer off the write path. Keys of durable events that the indexer has not
//! written yet are held in memory (`recent`), so memory is bounded by the indexer's lag, not by
//! the window. A table records the last seq it covers; on open the events after it are read
//! from the log and added, and a table that is missing or does not check is rebuilt from the
//! log. Keys whose events left the window are dropped as the buckets holding them are
//! rewritten ([`KeyTable::insert`]'s `dead_before`), so the table's size follows the window.
//!
//! `idempotency.index = "memory"` keeps the former behaviour instead (the keys of the last
//! `memory_keys` events, in memory only), for comparison in the benchmark.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bindledger_events::{Event, Hash, Payload};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::keytable::KeyTable;
use crate::store::Store;

/// Entries gathered by the indexer before it writes them to the tables.
pub const GATHER_MAX: usize = 131_072;

pub fn composite(account: &str, key: &str) -> String {
    let mut s = String::with_capacity(account.len() + 1 + key.len());
    s.push_str(account);
    s.push('\0');
    s.push_str(key);
    s
}

pub use crate::config::IndexKind;

#[derive(Default)]
struct Recent {
    keys: HashMap<String, (u64, Hash, DateTime<Utc>)>,
    key_order: VecDeque<(u64, String)>,
    orders: HashMap<String, u64>,
    order_order: VecDeque<(u64, String)>,
}

impl Recent {
    fn add_key(&mut self, ck: String, seq: u64, digest: Hash, at: DateTime<Utc>) {
        self.keys.insert(ck.clone(), (seq, digest, at));
        self.key_order.push_back((seq, ck));
    }
    fn add_order(&mut self, co: String, seq: u64) {
        self.orders.insert(co.clone(), seq);
        self.order_order.push_back((seq, co));
    }
    /// Forgets keys of events up to `seq` (or beyond `max` entries), keeping newer ones.
    fn forget(&mut self, seq: u64, max: usize) {
        while let Some((s, _)) = self.key_order.front() {
            if *s > seq && self.key_order.len() <= max {
                break;
            }
            let (s, k) = self.key_order.pop_front().expect("front exists");
            if self.keys.get(&k).is_some_and(|(at_seq, _, _)| *at_seq == s) {
                self.keys.remove(&k);
            }
        }
        while let Some((s, _)) = self.order_order.front() {
            if *s > seq && self.order_order.len() <= max {
                break;
            }
            let (s, k) = self.order_order.pop_front().expect("front exists");
            if self.orders.get(&k) == Some(&s) {
                self.orders.remove(&k);
            }
        }
    }
}

/// The fields of an event the indexes read (the rest is skipped).
#[derive(Deserialize)]
struct Probe {
    seq: u64,
    account: String,
    idempotency_key: Option<String>,
    request_digest: Option<Hash>,
    payload: ProbePayload,
}

#[derive(Deserialize)]
struct ProbePayload {
    #[serde(rename = "type")]
    kind: String,
    order_id: Option<String>,
}

/// Entries for the tables, gathered by the indexer.
#[derive(Default)]
pub struct Gathered {
    keys: Vec<(u64, u64)>,
    orders: Vec<(u64, u64)>,
    last: u64,
}

impl Gathered {
    pub fn len(&self) -> usize {
        self.keys.len() + self.orders.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct KeyIndex {
    store: Arc<Store>,
    window: chrono::Duration,
    /// `None` in memory mode.
    tables: Option<(KeyTable, KeyTable)>,
    memory_keys: usize,
    recent: Mutex<Recent>,
    /// Counts the moves of keys from `recent` to the tables.
    generation: std::sync::atomic::AtomicU64,
    /// When the tables were last synced (they record their position then).
    synced: Mutex<std::time::Instant>,
    /// Where the window's end is read.
    clock: Arc<dyn crate::clock::Clock>,
    /// The tables hold the keys and orders of every event through this seq (disk mode).
    written: tokio::sync::watch::Sender<u64>,
}

/// How often the tables are synced and record their position: a restart catches up from the
/// last synced position, so this bounds the work of a catch-up, not what is remembered.
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl KeyIndex {
    /// Opens the tables in `dir` and catches them up with the log (or, in memory mode, reads
    /// the keys of the log's last `memory_keys` events).
    pub fn open(
        store: Arc<Store>,
        dir: &Path,
        kind: IndexKind,
        window: chrono::Duration,
        memory_keys: usize,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<KeyIndex> {
        let tables = match kind {
            IndexKind::Disk => Some((
                KeyTable::open(&dir.join("idempotency.keys"))?,
                KeyTable::open(&dir.join("orders.keys"))?,
            )),
            IndexKind::Memory => None,
        };
        let index = KeyIndex {
            store,
            window,
            tables,
            memory_keys,
            recent: Default::default(),
            generation: Default::default(),
            synced: Mutex::new(std::time::Instant::now()),
            clock,
            written: tokio::sync::watch::Sender::new(0),
        };
        match &index.tables {
            Some(_) => {
                index.catch_up()?;
                index.written.send_replace(index.store.head()?.map_or(0, |(s, _)| s));
            }
            None => index.fill_memory()?,
        }
        Ok(index)
    }

    /// Adds the keys and paid orders of the events after the tables' positions.
    fn catch_up(&self) -> Result<()> {
        let (keys, orders) = self.tables.as_ref().expect("disk mode");
        let end = self.store.head()?.map_or(0, |(s, _)| s);
        let from = keys.position().min(orders.position());
        if from >= end {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Keys older than the window are not worth adding.
        let horizon = self.horizon(self.clock.now())?;
        let mut g = Gathered::default();
        for r in self.store.scan_events(from + 1) {
            let (seq, bytes) = r?;
            let p: Probe = serde_json::from_slice(&bytes).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))?;
            if let (Some(key), Some(_)) = (&p.idempotency_key, p.request_digest) {
                if seq > keys.position() && seq >= horizon {
                    g.keys
                        .push((keys.fingerprint(&[p.account.as_bytes(), key.as_bytes()]), seq));
                }
            }
            if let ("payment_succeeded", Some(order)) = (p.payload.kind.as_str(), &p.payload.order_id) {
                if seq > orders.position() {
                    g.orders
                        .push((orders.fingerprint(&[p.account.as_bytes(), order.as_bytes()]), seq));
                }
            }
            g.last = p.seq;
            if g.len() >= GATHER_MAX {
                self.write(&mut g, horizon, false)?;
            }
        }
        g.last = end;
        self.write(&mut g, horizon, true)?;
        tracing::info!(
            from,
            to = end,
            seconds = started.elapsed().as_secs_f64(),
            "idempotency and paid-order indexes caught up with the log"
        );
        Ok(())
    }

    fn fill_memory(&self) -> Result<()> {
        let mut found = Vec::new();
        for r in self.store.scan_events_rev().take(self.memory_keys) {
            let (_, bytes) = r?;
            found.push(bindledger_events::decode(&bytes).map_err(|e| Error::corrupt_by("a recent event", e))?);
        }
        let mut recent = self.recent.lock().expect("recent keys lock");
        for e in found.iter().rev() {
            Self::note(&mut recent, e);
        }
        Ok(())
    }

    /// The first seq whose `record_time` is inside the window at `now` (record times never
    /// go back along the log, so a binary search finds it).
    fn horizon(&self, now: DateTime<Utc>) -> Result<u64> {
        let Some((end, _)) = self.store.head()? else {
            return Ok(1);
        };
        let cutoff = now - self.window;
        let (mut lo, mut hi) = (1u64, end + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = match self.store.event_bytes(mid)? {
                Some(b) => {
                    bindledger_events::decode(&b)
                        .map_err(|e| Error::corrupt_by(format!("event {mid}"), e))?
                        .record_time
                }
                None => return Err(Error::corrupt(format!("event {mid} missing"))),
            };
            if at <= cutoff {
                lo = mid + 1
            } else {
                hi = mid
            }
        }
        Ok(lo)
    }

    fn inside(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now - at < self.window
    }

    fn event(&self, seq: u64) -> Result<Event> {
        let bytes = self
            .store
            .event_bytes(seq)?
            .ok_or_else(|| Error::corrupt(format!("an index points at missing event {seq}")))?;
        bindledger_events::decode(&bytes).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))
    }

    /// The generation of the index: it changes each time keys leave memory for the tables.
    /// A look-up made at generation `g` that missed need not be repeated in the tables while
    /// the generation is still `g`: any key that became known since is still in memory.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The event (seq, request digest) an idempotency key produced, if it is inside the window
    /// at `now`; `ck` is [`composite`] of the account and the key, which the caller has made
    /// already. With `checked_at`, the generation at which an earlier look-up missed, the
    /// tables are read only if keys moved there since.
    pub fn key_since(
        &self,
        ck: &str,
        account: &str,
        key: &str,
        now: DateTime<Utc>,
        checked_at: Option<u64>,
    ) -> Result<Option<(u64, Hash)>> {
        let generation = self.generation();
        if let Some((seq, digest, at)) = self.recent.lock().expect("recent keys lock").keys.get(ck) {
            if self.inside(*at, now) {
                return Ok(Some((*seq, *digest)));
            }
        }
        if checked_at == Some(generation) {
            return Ok(None);
        }
        self.key_stored(account, key, now)
    }

    /// [`KeyIndex::key_since`] without an earlier look-up.
    pub fn key(&self, account: &str, key: &str, now: DateTime<Utc>) -> Result<Option<(u64, Hash)>> {
        self.key_since(&composite(account, key), account, key, now, None)
    }

    fn key_stored(&self, account: &str, key: &str, now: DateTime<Utc>) -> Result<Option<(u64, Hash)>> {
        let Some((table, _)) = &self.tables else {
            return Ok(None);
        };
        let mut seqs = table.lookup(table.fingerprint(&[account.as_bytes(), key.as_bytes()]))?;
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        for seq in seqs {
            let e = self.event(seq)?;
            if e.account == account && e.idempotency_key.as_deref() == Some(key) {
                if let (Some(d), true) = (e.request_digest, self.inside(e.record_time, now)) {
                    return Ok(Some((seq, d)));
                }
            }
        }
        Ok(None)
    }

    /// The `payment_succeeded` event of an order on an account, if there is one.
    pub fn paid_order(&self, account: &str, order_id: &str) -> Result<Option<u64>> {
        if let Some(seq) = self
            .recent
            .lock()
            .expect("recent keys lock")
            .orders
            .get(&composite(account, order_id))
        {
            return Ok(Some(*seq));
        }
        let Some((_, table)) = &self.tables else {
            return Ok(None);
        };
        for seq in table.lookup(table.fingerprint(&[account.as_bytes(), order_id.as_bytes()]))? {
            let e = self.event(seq)?;
            if e.account == account
                && matches!(&e.payload, Payload::PaymentSucceeded { order_id: o, .. } if o == order_id)
            {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    fn note(recent: &mut Recent, e: &Event) {
        if let (Some(k), Some(d)) = (&e.idempotency_key, e.request_digest) {
            recent.add_key(composite(&e.account, k), e.seq, d, e.record_time);
        }
        if let Payload::PaymentSucceeded { order_id, .. } = &e.payload {
            recent.add_order(composite(&e.account, order_id), e.seq);
        }
    }

    /// Records the keys and paid orders of durable events (the flusher, before it answers).
    pub fn note_durable(&self, events: &[Arc<Event>]) {
        let mut recent = self.recent.lock().expect("recent keys lock");
        for e in events {
            Self::note(&mut recent, e);
        }
        if self.tables.is_none() {
            recent.forget(0, self.memory_keys);
        }
    }

    /// Gathers the entries of durable events for the tables (the indexer).
    pub fn gather(&self, g: &mut Gathered, events: &[Arc<Event>]) {
        let Some((keys, orders)) = &self.tables else {
            return;
        };
        for e in events {
            if let (Some(k), Some(_)) = (&e.idempotency_key, e.request_digest) {
                g.keys
                    .push((keys.fingerprint(&[e.account.as_bytes(), k.as_bytes()]), e.seq));
            }
            if let Payload::PaymentSucceeded { order_id, .. } = &e.payload {
                g.orders
                    .push((orders.fingerprint(&[e.account.as_bytes(), order_id.as_bytes()]), e.seq));
            }
            g.last = g.last.max(e.seq);
        }
    }

    /// Writes gathered entries to the tables, dropping keys that left the window from the
    /// buckets it rewrites, then forgets them in memory. `closing` syncs the tables.
    pub fn write_gathered(&self, g: &mut Gathered, closing: bool) -> Result<()> {
        if self.tables.is_none() || g.last == 0 {
            return Ok(());
        }
        let horizon = self.horizon(self.clock.now())?;
        self.write(g, horizon, closing)
    }

    fn write(&self, g: &mut Gathered, horizon: u64, force_sync: bool) -> Result<()> {
        let (keys, orders) = self.tables.as_ref().expect("disk mode");
        let sync = {
            let mut synced = self.synced.lock().expect("sync time lock");
            let due = force_sync || synced.elapsed() >= SYNC_EVERY;
            if due {
                *synced = std::time::Instant::now();
            }
            due
        };
        keys.insert(&mut g.keys, horizon, g.last, sync)?;
        orders.insert(&mut g.orders, 0, g.last, sync)?;
        // Before forgetting: a look-up that sees the old generation finds the keys in memory.
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.recent.lock().expect("recent keys lock").forget(g.last, usize::MAX);
        self.written.send_if_modified(|at| {
            let moved = g.last > *at;
            *at = (*at).max(g.last);
            moved
        });
        g.keys.clear();
        g.orders.clear();
        Ok(())
    }

    /// Follows the seq through which the tables hold every key and order (it never moves in
    /// memory mode): what waits for the indexer to have written them.
    pub fn written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Keys and orders held in memory (waiting for the indexer, or all of them in memory mode).
    pub fn in_memory(&self) -> usize {
        let r = self.recent.lock().expect("recent keys lock");
        r.keys.len() + r.orders.len()
    }

    /// Live entries in the tables, and their size on disk.
    pub fn on_disk(&self) -> (u64, u64) {
        self.tables
            .as_ref()
            .map_or((0, 0), |(k, o)| (k.live() + o.live(), k.file_bytes() + o.file_bytes()))
    }
}
