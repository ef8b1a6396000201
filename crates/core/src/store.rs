//! The sled store. Measured on these machines, sled costs about 10-15 µs per key written
//! whatever the value's size, so the write path touches as few keys as it can:
//!
//! | tree | key | value | written by |
//! |---|---|---|---|
//! | `log` | first seq of the chunk | up to [`CHUNK_EVENTS_MAX`] events, each `u32` length + canonical bytes | the writer, one atomic batch + one flush per group commit |
//! | `index` | `A` account 0x00 first account_seq | the seqs of that account's events from there on, 8 bytes each (one run per indexer pass) | the indexer, after durability |
//! | `index` | `B` account | the account's projection state (JSON) | the indexer, every so often |
//! | `index` | `V` fingerprint (32 bytes) | the wallet's row of the wallet indexes (JSON, `WalletRow`) | the indexer, with the rows of the accounts that changed it |
//! | `index` | `M` name | the indexer's positions | the indexer |
//! | `alerts` | see [`crate::alerts::store`] | alert stream, alerts, the monitor's checkpoint | the monitor |
//! | `checkpoints` | seq | a signed checkpoint of the head (JSON, [`crate::checkpoint`]) | the checkpointer |
//! | default | name | store format, secret check | on creation |
//!
//! **The log tree is the only source of truth.** Everything in `index` is derived and carries
//! the position it reflects; opening the store catches it up from the log. Integers are
//! big-endian so that keys sort numerically. Account ids never contain 0x00.

/// A sled error as the ledger's: corruption where sled found it (without its empty
/// backtrace), an I/O error kept as the cause (so a full disk is `disk_full`), anything else
/// by its text.
pub fn from_sled(e: sled::Error) -> Error {
    match e {
        sled::Error::Corruption { at, .. } => Error::corrupt(format!(
            "sled found its file corrupted{}",
            at.map(|at| format!(" at {at:?}")).unwrap_or_default()
        )),
        sled::Error::Io(io) => Error::storage_io("sled", io),
        other => Error::storage(other.to_string()),
    }
}

use bindledger_events::{hash_bytes, Hash};
use std::collections::HashMap;
use std::path::Path;

use crate::domain::projection::{AccountState, WalletRow};
use crate::error::{Error, Result};

/// The events one flush made durable, in order, shared (never copied) by the answers, the
/// indexer and the monitor.
pub type DurableBatch = std::sync::Arc<Vec<std::sync::Arc<bindledger_events::Event>>>;

/// Most events in one stored chunk: bounds what a point read has to load.
pub const CHUNK_EVENTS_MAX: usize = 128;

const FORMAT: &[u8] = b"bindledger-store/2";
const META_FORMAT: &[u8] = b"format";
const META_SECRET_CHECK: &[u8] = b"secret_check";
const INDEX_POSITION: &[u8] = b"Mindexed";
const SNAPSHOT_POSITION: &[u8] = b"Msnapshot";

pub struct Store {
    db: sled::Db,
    /// What makes a flush survive a power cut (see [`Syncer`]).
    syncer: Syncer,
    log: sled::Tree,
    index: sled::Tree,
    alerts: sled::Tree,
    checkpoints: sled::Tree,
    webhooks: sled::Tree,
    /// Failures a simulation injects (`None` in production).
    faults: Option<std::sync::Arc<StorageFaults>>,
}

/// Storage failures a simulation injects: the `n`th write of the log (from now) and the `n`th
/// flush fail as a full disk would, and every one after them (a store that failed stays failed
/// until it is reopened). `u64::MAX`: never.
#[derive(Debug)]
pub struct StorageFaults {
    writes_left: std::sync::atomic::AtomicU64,
    flushes_left: std::sync::atomic::AtomicU64,
}

impl Default for StorageFaults {
    fn default() -> Self {
        StorageFaults {
            writes_left: std::sync::atomic::AtomicU64::new(u64::MAX),
            flushes_left: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

impl StorageFaults {
    /// The `n`th log write from now fails (1: the next one).
    pub fn fail_write_in(&self, n: u64) {
        self.writes_left.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The `n`th flush from now fails (1: the next one).
    pub fn fail_flush_in(&self, n: u64) {
        self.flushes_left.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Nothing fails (after a reopen).
    pub fn clear(&self) {
        self.fail_write_in(u64::MAX);
        self.fail_flush_in(u64::MAX);
    }

    fn due(left: &std::sync::atomic::AtomicU64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let n = left.load(SeqCst);
        if n == u64::MAX {
            return false;
        }
        if n > 1 {
            left.store(n - 1, SeqCst);
            return false;
        }
        left.store(1, SeqCst);
        true
    }

    fn check(left: &std::sync::atomic::AtomicU64, what: &str) -> Result<()> {
        if Self::due(left) {
            return Err(Error::storage(format!("{what}: no space left on device (injected)")));
        }
        Ok(())
    }
}

fn account_key(prefix: u8, account: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + account.len() + suffix.len());
    k.push(prefix);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn u64_of(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::corrupt("short integer"))?;
    Ok(u64::from_be_bytes(arr))
}

/// A failure to read (never "could not be written": nothing was being written), saying what
/// was being read; sled's own report of corruption keeps its place in the file.
pub fn read_error(e: sled::Error, what: &str) -> Error {
    match e {
        sled::Error::Corruption { at, .. } => Error::corrupt(format!(
            "{what}: sled found its file corrupted{}",
            at.map(|at| format!(" at {at:?}")).unwrap_or_default()
        )),
        sled::Error::Io(io) => Error::io_caused(what, io),
        other => Error::corrupt_by(what, other),
    }
}

/// An event's stored bytes, shared with the log's page (not copied): what the log holds,
/// exactly. It reads as `&[u8]`; no sled type leaves the core.
#[derive(Clone, PartialEq, Eq)]
pub struct EventBytes(sled::IVec);

impl std::ops::Deref for EventBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for EventBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for EventBytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for EventBytes {
    fn from(v: Vec<u8>) -> Self {
        EventBytes(v.into())
    }
}

impl From<&[u8]> for EventBytes {
    fn from(v: &[u8]) -> Self {
        EventBytes(v.into())
    }
}

impl std::fmt::Debug for EventBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventBytes({} bytes)", self.0.len())
    }
}

/// Splits a stored chunk into its events' bytes (zero-copy).
pub fn chunk_events(first_seq: u64, chunk: &sled::IVec) -> Result<Vec<(u64, EventBytes)>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut seq = first_seq;
    while at < chunk.len() {
        let len_bytes: [u8; 4] = chunk
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::corrupt(format!("chunk {first_seq}: truncated length")))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        if at + 4 + len > chunk.len() {
            return Err(Error::corrupt(format!(
                "chunk {first_seq}: event {seq} runs past the chunk"
            )));
        }
        out.push((seq, EventBytes(chunk.subslice(at + 4, len))));
        at += 4 + len;
        seq += 1;
    }
    Ok(out)
}

/// One group commit of the log: events in chunks of at most [`CHUNK_EVENTS_MAX`], one key each.
#[derive(Default)]
pub struct LogBatch {
    chunks: Vec<(u64, Vec<u8>)>,
    chunk: Vec<u8>,
    chunk_first: u64,
    chunk_events: usize,
}

impl LogBatch {
    pub fn add_event(&mut self, seq: u64, bytes: &[u8]) {
        if self.chunk_events == CHUNK_EVENTS_MAX {
            self.close_chunk();
        }
        if self.chunk_events == 0 {
            self.chunk_first = seq;
        }
        self.chunk.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.chunk.extend_from_slice(bytes);
        self.chunk_events += 1;
    }

    fn close_chunk(&mut self) {
        if self.chunk_events > 0 {
            self.chunks.push((self.chunk_first, std::mem::take(&mut self.chunk)));
            self.chunk_events = 0;
        }
    }
}

/// A batch of derived rows for the index tree.
#[derive(Default)]
pub struct IndexBatch {
    batch: sled::Batch,
}

impl IndexBatch {
    /// One account's events with consecutive account seqs from `first_account_seq`.
    pub fn add_history_run(&mut self, account: &str, first_account_seq: u64, seqs: &[u64]) {
        let mut v = Vec::with_capacity(seqs.len() * 8);
        for s in seqs {
            v.extend_from_slice(&s.to_be_bytes());
        }
        self.batch
            .insert(account_key(b'A', account, &first_account_seq.to_be_bytes()), v);
    }

    pub fn add_history(&mut self, account: &str, account_seq: u64, seq: u64) {
        self.add_history_run(account, account_seq, &[seq]);
    }

    pub fn put_account(&mut self, account: &str, state: &AccountState) {
        let mut k = Vec::with_capacity(1 + account.len());
        k.push(b'B');
        k.extend_from_slice(account.as_bytes());
        self.batch
            .insert(k, serde_json::to_vec(state).expect("account state serializes"));
    }

    /// A wallet's row of the wallet indexes (an empty one is removed).
    pub fn put_wallet(&mut self, fp: &Hash, row: &WalletRow) {
        let k = wallet_key(fp);
        if row.is_empty() {
            self.batch.remove(&k[..]);
        } else {
            self.batch
                .insert(&k[..], serde_json::to_vec(row).expect("wallet row serializes"));
        }
    }

    pub fn set_indexed(&mut self, seq: u64) {
        self.batch.insert(INDEX_POSITION, &seq.to_be_bytes()[..]);
    }

    pub fn set_snapshot(&mut self, seq: u64) {
        self.batch.insert(SNAPSHOT_POSITION, &seq.to_be_bytes()[..]);
    }
}

fn wallet_key(fp: &Hash) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'V';
    k[1..].copy_from_slice(&fp.0);
    k
}

/// The page cache of [`Store::open_for_scan`].
const SCAN_CACHE_BYTES: u64 = 64 << 20;

/// Stored bytes [`DirScan`] reads between two opens of the log.
pub const SCAN_REOPEN_BYTES: u64 = 512 << 20;

/// Events of an open log, in order.
type EventIter = Box<dyn Iterator<Item = Result<(u64, EventBytes)>> + Send>;

/// Reads a stopped ledger's log from a sequence to its end, in order, holding a bounded part of
/// it in memory. sled 0.34 keeps every page a scan has read in memory until the database is
/// closed, whatever its cache size (sled issue #1036): a plain scan of a 5,000,000-event log
/// grew to 4.3 GB and spent most of its time in the kernel zeroing fresh pages. This scan closes
/// the log after each [`SCAN_REOPEN_BYTES`] it read and opens it again where it stopped, so
/// memory stays near that bound and is reused (measured on that log: 268k events/s at 4.3 GB
/// for one open, 1.2-1.6M/s at under 1 GB).
pub struct DirScan {
    dir: std::path::PathBuf,
    next: u64,
    open: Option<EventIter>,
    read: u64,
    reopen_bytes: u64,
    /// How many times the log was opened so far.
    pub opens: u64,
    done: bool,
}

/// Refuses a directory that holds no ledger log (opening it would create one).
pub fn require_log(dir: &Path) -> Result<()> {
    let log = dir.join("log");
    if !log.exists() {
        return Err(Error::NoLog(dir.display().to_string()));
    }
    // sled recreates a missing file when it opens a directory: a read (an export, an audit)
    // must never write to the directory it reads, so a log without its files is refused here.
    for file in ["conf", "db"] {
        if !log.join(file).is_file() {
            return Err(Error::corrupt(format!(
                "{}: log/{file} is missing, so this is not a whole ledger log; it is not opened (opening it would write)",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// See [`DirScan`].
pub fn scan_dir(dir: &Path, from: u64) -> Result<DirScan> {
    scan_dir_reopening(dir, from, SCAN_REOPEN_BYTES)
}

/// [`scan_dir`], reopening the log after each `reopen_bytes` read.
pub fn scan_dir_reopening(dir: &Path, from: u64, reopen_bytes: u64) -> Result<DirScan> {
    require_log(dir)?;
    Ok(DirScan {
        dir: dir.to_path_buf(),
        next: from.max(1),
        open: None,
        read: 0,
        reopen_bytes,
        opens: 0,
        done: false,
    })
}

/// Opens the log for a scan right after this process closed it: sled's I/O threads may hold
/// the directory's lock for a moment after the last handle is dropped, so a lock held is tried
/// again for up to two seconds (another process holding it still fails then).
fn open_after_close(dir: &Path) -> Result<Store> {
    retry_in_use(|| Store::open_for_scan(dir))
}

/// `open`, tried again while the directory's lock is held, for up to two seconds (see
/// [`open_after_close`]).
pub fn retry_in_use(mut open: impl FnMut() -> Result<Store>) -> Result<Store> {
    let mut tries = 0;
    loop {
        match open() {
            Err(Error::InUse(_)) if tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl Iterator for DirScan {
    type Item = Result<(u64, EventBytes)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.read >= self.reopen_bytes {
            // Dropping the iterator drops the last handle on the database, which closes it.
            self.open = None;
            self.read = 0;
        }
        if self.open.is_none() {
            match open_after_close(&self.dir) {
                Ok(store) => {
                    self.opens += 1;
                    self.open = Some(Box::new(store.scan_events(self.next)));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let item = self.open.as_mut().expect("opened above").next();
        match &item {
            Some(Ok((seq, bytes))) => {
                self.next = seq + 1;
                self.read += bytes.len() as u64;
            }
            Some(Err(_)) | None => {
                self.done = true;
                self.open = None;
            }
        }
        item
    }
}

impl Store {
    /// Opens (or creates) the store in `dir/log`.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_with(dir, sled::Config::new(), true)
    }

    /// [`Store::open`], with injected storage failures (a simulation's).
    pub fn open_with_faults(dir: &Path, faults: Option<std::sync::Arc<StorageFaults>>) -> Result<Store> {
        let mut store = Self::open(dir)?;
        store.faults = faults;
        Ok(store)
    }

    /// Opens the store to read it once from end to end (the audit tool): with a small page
    /// cache, whose memory is reused at once, instead of sled's 1 GiB default, which a long
    /// scan fills with pages it never reads again (measured: fresh memory for each page read
    /// cost the kernel more time zeroing it than the scan itself took).
    pub fn open_for_scan(dir: &Path) -> Result<Store> {
        Self::open_with(dir, sled::Config::new().cache_capacity(SCAN_CACHE_BYTES), false)
    }

    /// `durable`: sync the files now and after every flush (see [`Syncer`]); a store opened
    /// only to be read does neither.
    fn open_with(dir: &Path, config: sled::Config, durable: bool) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io_caused(format!("creating {}", dir.display()), e))?;
        let config = config.path(dir.join("log")).mode(sled::Mode::HighThroughput);
        // sled 0.34 panics on some damage it meets while recovering its log ("tried to
        // serialize Uninitialized"): a damaged file is reported as one, not as a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Error::corrupt(format!(
                "opening the log in {}: sled could not recover it ({what}): its files are damaged",
                dir.display()
            ))
        })?;
        let db = opened.map_err(|e| {
            // sled 0.34 reports a held lock as io::ErrorKind::Other with the text "could not
            // acquire lock" (its config.rs, try_lock), dropping flock's WouldBlock: the text
            // is the only signal there is, so it is matched here, in this one place.
            let text = e.to_string();
            if text.contains("lock") || text.contains("WouldBlock") || text.contains("temporarily unavailable") {
                Error::InUse(dir.display().to_string())
            } else {
                read_error(e, &format!("opening the log in {}", dir.display()))
            }
        })?;
        match db
            .get(META_FORMAT)
            .map_err(|e| read_error(e, &format!("reading the log's format in {}", dir.display())))?
        {
            Some(v) if v.as_ref() == FORMAT => {}
            Some(v) => {
                return Err(Error::corrupt(format!(
                    "store format {:?} is not {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None => {
                db.insert(META_FORMAT, FORMAT).map_err(from_sled)?;
                db.flush().map_err(from_sled)?;
            }
        }
        let log = db.open_tree("log").map_err(from_sled)?;
        let index = db.open_tree("index").map_err(from_sled)?;
        let alerts = db.open_tree("alerts").map_err(from_sled)?;
        let checkpoints = db.open_tree("checkpoints").map_err(from_sled)?;
        let webhooks = db.open_tree("webhooks").map_err(from_sled)?;
        let syncer = Syncer::open(dir, durable)?;
        Ok(Store {
            db,
            syncer,
            log,
            index,
            alerts,
            checkpoints,
            webhooks,
            faults: None,
        })
    }

    /// A tree of this store's database (made durable by the same flushes as the log).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(from_sled)
    }

    /// Gives a new, empty store this one's secret check value (a rebuilt directory).
    pub fn copy_secret_check_to(&self, new: &Store) -> Result<()> {
        if let Some(v) = self.db.get(META_SECRET_CHECK).map_err(from_sled)? {
            new.db.insert(META_SECRET_CHECK, v).map_err(from_sled)?;
        }
        Ok(())
    }

    /// Records the secret's check value on first use; refuses a different secret later.
    pub fn check_secret(&self, check: &Hash) -> Result<()> {
        match self.db.get(META_SECRET_CHECK).map_err(from_sled)? {
            Some(v) if v.as_ref() == check.0 => Ok(()),
            Some(_) => Err(Error::SecretMismatch),
            None => {
                if self.head()?.is_some() {
                    return Err(Error::corrupt("the log has events but no secret check value"));
                }
                self.db.insert(META_SECRET_CHECK, &check.0[..]).map_err(from_sled)?;
                self.db.flush().map_err(from_sled)?;
                Ok(())
            }
        }
    }

    /// The last event's seq and hash.
    pub fn head(&self) -> Result<Option<(u64, Hash)>> {
        match self.log.iter().next_back() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r.map_err(from_sled)?;
                let events = chunk_events(u64_of(&k)?, &v)?;
                let (seq, bytes) = events.last().ok_or_else(|| Error::corrupt("empty chunk"))?;
                Ok(Some((*seq, hash_bytes(bytes))))
            }
        }
    }

    /// One event's stored bytes.
    pub fn event_bytes(&self, seq: u64) -> Result<Option<EventBytes>> {
        let Some(r) = self.log.range(..=seq.to_be_bytes()).next_back() else {
            return Ok(None);
        };
        let (k, v) = r.map_err(from_sled)?;
        Ok(chunk_events(u64_of(&k)?, &v)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, b)| b))
    }

    /// Stored events from `from` on, in order, as (seq, bytes).
    pub fn scan_events(&self, from: u64) -> impl Iterator<Item = Result<(u64, EventBytes)>> + Send + 'static {
        // Start at the chunk holding `from`.
        let start = match self.log.range(..=from.to_be_bytes()).next_back() {
            Some(Ok((k, _))) => k.to_vec(),
            _ => from.to_be_bytes().to_vec(),
        };
        // The first seq of the last chunk read, to say where a read failed.
        let mut last = from;
        self.log
            .range(start..)
            .flat_map(move |r| {
                let read = r
                    .map_err(|e| read_error(e, &format!("reading the log after the chunk of event {last}")))
                    .and_then(|(k, v)| {
                        last = u64_of(&k)?;
                        chunk_events(last, &v)
                    });
                let chunk: Vec<Result<(u64, EventBytes)>> = match read {
                    Ok(events) => events.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                chunk
            })
            .filter(move |r| r.as_ref().map_or(true, |(seq, _)| *seq >= from))
    }

    /// Stored events newest first, starting at the log's end.
    pub fn scan_events_rev(&self) -> impl Iterator<Item = Result<(u64, EventBytes)>> + Send + 'static {
        self.log.iter().rev().flat_map(|r| {
            let chunk: Vec<Result<(u64, EventBytes)>> =
                match r.map_err(from_sled).and_then(|(k, v)| chunk_events(u64_of(&k)?, &v)) {
                    Ok(events) => events.into_iter().rev().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
            chunk
        })
    }

    /// Seqs of an account's events with `account_seq` in `(after, before)`, oldest first, or
    /// newest first when `newest_first`.
    pub fn account_event_seqs(
        &self,
        account: &str,
        after: u64,
        before: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let lo = after.saturating_add(1);
        if lo >= before || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = account_key(b'A', account, &[]);
        let first_of = |k: &[u8]| u64_of(&k[prefix.len()..]);
        // Rows start anywhere: the one covering `lo` starts at or before it.
        let start = match self
            .index
            .range(prefix.clone()..=account_key(b'A', account, &lo.to_be_bytes()))
            .next_back()
        {
            Some(r) => r.map_err(from_sled)?.0.to_vec(),
            None => prefix.clone(),
        };
        let end = account_key(b'A', account, &before.to_be_bytes());
        let rows = self.index.range(start..end);
        let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if newest_first {
            Box::new(rows.rev())
        } else {
            Box::new(rows)
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for r in rows {
            let (k, v) = r.map_err(from_sled)?;
            let first = first_of(&k)?;
            let entries = (0..v.len() / 8)
                .map(|i| (first + i as u64, &v[i * 8..i * 8 + 8]))
                .filter(|(a, _)| *a >= lo && *a < before);
            let entries: Vec<(u64, &[u8])> = if newest_first {
                entries.rev().collect()
            } else {
                entries.collect()
            };
            for (_, seq) in entries {
                out.push(u64_of(seq)?);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// What each part of the store holds: (part, keys, bytes of keys and values), by tree and,
    /// in the index and alerts trees, by the kind of row. Reads every row: for benchmarks and
    /// operators' questions, not for a serving path. What the data directory holds beyond the
    /// sum is sled's own: node headers, and space it has not yet reclaimed.
    pub fn stored_bytes(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        /// A tree, its kinds of row by first byte, and the name of the rest.
        type Part<'t> = (&'t sled::Tree, &'static [(u8, &'static str)], &'static str);
        let mut out = Vec::new();
        let parts: [Part; 5] = [
            (&self.log, &[], "log (event chunks)"),
            (
                &self.index,
                &[
                    (b'A', "index: history rows"),
                    (b'B', "index: account rows"),
                    (b'V', "index: wallet rows"),
                ],
                "index: other",
            ),
            (
                &self.alerts,
                &[
                    (b'S', "alerts: stream"),
                    (b'L', "alerts: latest revisions"),
                    (b'W', "alerts: rule windows, a row per key"),
                    (b'D', "alerts: rule engine checkpoint of an older format"),
                    (b'T', "alerts: triage"),
                ],
                "alerts: other",
            ),
            (&self.checkpoints, &[], "signed checkpoints"),
            (&self.webhooks, &[], "webhook deliveries"),
        ];
        for (tree, kinds, rest) in parts {
            let mut sums: Vec<(&'static str, u64, u64)> = kinds.iter().map(|(_, n)| (*n, 0, 0)).collect();
            sums.push((rest, 0, 0));
            for r in tree.iter() {
                let (k, v) = r.map_err(from_sled)?;
                let at = kinds
                    .iter()
                    .position(|(p, _)| k.first() == Some(p))
                    .unwrap_or(kinds.len());
                sums[at].1 += 1;
                sums[at].2 += (k.len() + v.len()) as u64;
            }
            out.extend(sums.into_iter().filter(|s| s.1 > 0));
        }
        Ok(out)
    }

    /// The indexer's positions: (history indexed through, snapshot complete through).
    pub fn index_positions(&self) -> Result<(u64, u64)> {
        let get = |k: &[u8]| -> Result<u64> {
            match self.index.get(k).map_err(from_sled)? {
                Some(v) => u64_of(&v),
                None => Ok(0),
            }
        };
        Ok((get(INDEX_POSITION)?, get(SNAPSHOT_POSITION)?))
    }

    /// The relay's position for a topic: every event up to it was acknowledged by the broker.
    pub fn relay_position(&self, topic: &str) -> Result<u64> {
        match self.index.get(format!("Mrelay:{topic}")).map_err(from_sled)? {
            Some(v) => u64_of(&v),
            None => Ok(0),
        }
    }

    /// Saves the relay's position (made durable by the next flush; losing it only makes the
    /// next recovery scan longer).
    pub fn set_relay_position(&self, topic: &str, seq: u64) -> Result<()> {
        self.index
            .insert(format!("Mrelay:{topic}"), &seq.to_be_bytes()[..])
            .map_err(from_sled)?;
        Ok(())
    }

    /// A replica's next offset to read in each partition of `topic` (saved with the events
    /// they cover: the next flush makes both durable; a replica that restarts from older
    /// offsets skips the events it already has).
    pub fn replica_offsets(&self, topic: &str) -> Result<Option<Vec<i64>>> {
        match self.index.get(format!("Mreplica:{topic}")).map_err(from_sled)? {
            Some(v) => Ok(Some(
                v.chunks_exact(8)
                    .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )),
            None => Ok(None),
        }
    }

    pub fn set_replica_offsets(&self, topic: &str, offsets: &[i64]) -> Result<()> {
        let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_be_bytes()).collect();
        self.index
            .insert(format!("Mreplica:{topic}"), bytes)
            .map_err(from_sled)?;
        Ok(())
    }

    /// The relay's check of each partition of `topic`: the offset after its last message
    /// known to be this term's own or older (nothing foreign in between), and the highest
    /// `seq` it published there (see `adapters::kafka::terms`).
    pub fn relay_verified(&self, topic: &str) -> Result<Option<Vec<(i64, u64)>>> {
        match self.index.get(format!("Mrelay-verified:{topic}")).map_err(from_sled)? {
            Some(v) => Ok(Some(
                v.chunks_exact(16)
                    .map(|c| {
                        let (o, s) = c.split_at(8);
                        (
                            i64::from_be_bytes(o.try_into().expect("8 bytes")),
                            u64::from_be_bytes(s.try_into().expect("8 bytes")),
                        )
                    })
                    .collect(),
            )),
            None => Ok(None),
        }
    }

    pub fn set_relay_verified(&self, topic: &str, partitions: &[(i64, u64)]) -> Result<()> {
        let bytes: Vec<u8> = partitions
            .iter()
            .flat_map(|(o, s)| o.to_be_bytes().into_iter().chain(s.to_be_bytes()))
            .collect();
        self.index
            .insert(format!("Mrelay-verified:{topic}"), bytes)
            .map_err(from_sled)?;
        Ok(())
    }

    fn meta(&self, name: &str) -> Result<Option<sled::IVec>> {
        self.index.get(format!("M{name}")).map_err(from_sled)
    }

    fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.index.insert(format!("M{name}"), value).map_err(from_sled)?;
        Ok(())
    }

    /// This node's term as a primary: its epoch (0 until a promotion) and the promotion's id.
    pub fn epoch(&self) -> Result<(u64, String)> {
        Ok(match self.meta("epoch")? {
            Some(v) if v.len() >= 8 => (u64_of(&v)?, String::from_utf8_lossy(&v[8..]).into_owned()),
            _ => (0, String::new()),
        })
    }

    pub fn set_epoch(&self, epoch: u64, promotion: &str) -> Result<()> {
        let mut v = epoch.to_be_bytes().to_vec();
        v.extend_from_slice(promotion.as_bytes());
        self.set_meta("epoch", &v)
    }

    /// The epoch of the promotion that fenced this node, if one did.
    pub fn fenced_by(&self) -> Result<Option<u64>> {
        self.meta("fenced")?.map(|v| u64_of(&v)).transpose()
    }

    pub fn set_fenced_by(&self, epoch: u64) -> Result<()> {
        self.set_meta("fenced", &epoch.to_be_bytes())
    }

    /// The URL of the primary that fenced this node, when its fence named one.
    pub fn successor(&self) -> Result<Option<String>> {
        Ok(self
            .meta("successor")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_successor(&self, url: &str) -> Result<()> {
        self.set_meta("successor", url.as_bytes())
    }

    /// Whether the node starts as a replica whatever its configuration says: after a fenced
    /// primary rejoined, until it is promoted.
    pub fn starts_as_replica(&self) -> Result<bool> {
        Ok(self.meta("role")?.as_deref() == Some(b"replica"))
    }

    pub fn set_starts_as_replica(&self, replica: bool) -> Result<()> {
        self.set_meta("role", if replica { b"replica" } else { b"primary" })
    }

    /// A replica's saved reading state (see `adapters::kafka::terms`).
    pub fn replica_terms(&self, topic: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta(&format!("replica-terms:{topic}"))?.map(|v| v.to_vec()))
    }

    pub fn set_replica_terms(&self, topic: &str, terms: &[u8]) -> Result<()> {
        self.set_meta(&format!("replica-terms:{topic}"), terms)
    }

    /// One account's stored projection row.
    pub fn account_row(&self, account: &str) -> Result<Option<AccountState>> {
        let mut k = Vec::with_capacity(1 + account.len());
        k.push(b'B');
        k.extend_from_slice(account.as_bytes());
        match self.index.get(k).map_err(from_sled)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| Error::corrupt_by("an account's stored row", e))?,
            )),
            None => Ok(None),
        }
    }

    /// One wallet's stored row of the wallet indexes.
    pub fn wallet_row(&self, fp: &Hash) -> Result<Option<WalletRow>> {
        match self.index.get(wallet_key(fp)).map_err(from_sled)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| Error::corrupt_by("a wallet's stored row", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Every stored wallet row, one at a time.
    pub fn wallet_rows(&self) -> impl Iterator<Item = Result<(Hash, WalletRow)>> + '_ {
        self.index.scan_prefix(b"V").map(|r| {
            let (k, v) = r.map_err(from_sled)?;
            let fp: [u8; 32] = k[1..]
                .try_into()
                .map_err(|_| Error::corrupt("a wallet row's key is not 33 bytes"))?;
            let row: WalletRow =
                serde_json::from_slice(&v).map_err(|e| Error::corrupt_by("a wallet's stored row", e))?;
            Ok((Hash(fp), row))
        })
    }

    /// Whether the wallet rows are kept (stores written before they were are given them
    /// once, from the account rows, on open).
    pub fn has_wallet_rows(&self) -> Result<bool> {
        Ok(self.meta("wallet-rows")?.is_some())
    }

    pub fn set_has_wallet_rows(&self) -> Result<()> {
        self.set_meta("wallet-rows", b"1")
    }

    /// The stored projection rows, one at a time.
    pub fn accounts(&self) -> impl Iterator<Item = Result<(String, AccountState)>> + '_ {
        self.index.scan_prefix(b"B").map(|r| {
            let (k, v) = r.map_err(from_sled)?;
            let name = String::from_utf8(k[1..].to_vec()).map_err(|_| Error::corrupt("account key is not UTF-8"))?;
            let state: AccountState =
                serde_json::from_slice(&v).map_err(|e| Error::corrupt_by("an account's stored row", e))?;
            Ok((name, state))
        })
    }

    /// The stored projection rows.
    pub fn load_accounts(&self) -> Result<HashMap<String, AccountState>> {
        self.accounts().collect()
    }

    /// Applies a log batch atomically (visible, not yet durable). A batch of one chunk is one
    /// `insert`, atomic by itself; only a batch of several chunks needs sled's `apply_batch`,
    /// which writes out the current log buffer twice more to pin the batch (measured: three
    /// buffer writes, each with its `sync_file_range`, per group commit instead of one).
    pub fn apply_log(&self, mut batch: LogBatch) -> Result<()> {
        if let Some(f) = &self.faults {
            StorageFaults::check(&f.writes_left, "writing the log")?;
        }
        batch.close_chunk();
        match &mut batch.chunks[..] {
            [] => {}
            [(first, chunk)] => {
                self.log
                    .insert(first.to_be_bytes(), std::mem::take(chunk))
                    .map_err(from_sled)?;
            }
            chunks => {
                let mut b = sled::Batch::default();
                for (first, chunk) in chunks {
                    b.insert(&first.to_be_bytes()[..], std::mem::take(chunk));
                }
                self.log.apply_batch(b).map_err(from_sled)?;
            }
        }
        Ok(())
    }

    /// Applies derived rows atomically. Made durable by the next flush (or sled's own periodic
    /// flush); losing them costs only a catch-up on the next open.
    pub fn apply_index(&self, batch: IndexBatch) -> Result<()> {
        self.index.apply_batch(batch.batch).map_err(from_sled)?;
        Ok(())
    }

    /// The tree of the alert monitor (derived, like `index`).
    pub fn alerts_tree(&self) -> sled::Tree {
        self.alerts.clone()
    }

    /// Signed checkpoints of the head.
    pub fn checkpoints_tree(&self) -> sled::Tree {
        self.checkpoints.clone()
    }

    /// The webhooks' position and delivery log.
    pub fn webhooks_tree(&self) -> sled::Tree {
        self.webhooks.clone()
    }

    /// Makes everything applied so far durable.
    /// Makes everything written so far durable, against a power cut too: sled's flush, then
    /// `fdatasync` of its files (see [`Syncer`]).
    pub fn flush(&self) -> Result<()> {
        if let Some(f) = &self.faults {
            StorageFaults::check(&f.flushes_left, "flushing the log")?;
        }
        self.db.flush().map_err(from_sled)?;
        self.syncer.sync()
    }

    /// Turns the `fdatasync` after each flush off (`writer.sync_data = false`): a flush then
    /// survives a crash of the process but not of the machine. For measuring what the sync
    /// costs, and for machines whose storage is made durable some other way.
    pub fn set_sync_data(&self, on: bool) {
        self.syncer.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// sled 0.34 makes its log writes stable with `sync_file_range` (`pagecache/iobuf.rs`), which
/// writes no file metadata and leaves the disk's volatile write cache as it is, and it writes
/// values above a quarter of a segment to files of their own under `blobs/` without syncing
/// them at all (`pagecache/blob_io.rs`). So a flush survives a crash of the process, not of
/// the machine. After each flush the syncer calls `fdatasync` on sled's log file, and on every
/// blob file that appeared since the last sync followed by an `fsync` of the blobs directory
/// (so the new names are durable too). The data directory and sled's are synced once when
/// the store is opened, so the files' own entries are durable. One sync per group commit.
struct Syncer {
    enabled: std::sync::atomic::AtomicBool,
    db_file: std::fs::File,
    blobs: std::path::PathBuf,
    /// Blob files already synced (sled deletes them when they are rewritten; the set is
    /// rebuilt from each listing, so it never holds more than the directory does): used when
    /// there is no `watch`.
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// The kernel's word of each blob sled finished writing, so that a flush syncs those
    /// without listing the directory (`None` where inotify is not available).
    watch: Option<BlobWatch>,
}

/// New files in sled's blob directory, from the kernel (inotify): the names of files closed
/// after writing or moved in. sled writes each blob once (`create_new`, the whole content,
/// then the file is closed), so a name reported here is a complete blob.
///
/// Without it every flush listed the directory, and sled keeps the log tree's large nodes
/// there (about 870 KB each, eight chunks of events): the directory grows with the history,
/// and a million-event ledger spent more than half its flusher's time in `getdents`.
struct BlobWatch {
    fd: std::os::fd::OwnedFd,
}

impl BlobWatch {
    fn new(dir: &Path) -> std::io::Result<BlobWatch> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor just returned to us, owned from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_ONLYDIR,
            )
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(BlobWatch { fd })
    }

    /// The names reported since the last call; `None` when the kernel's queue overflowed or
    /// the watch ended (the directory must be listed instead).
    fn drain(&self) -> std::io::Result<Option<Vec<std::ffi::OsString>>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        const HEADER: usize = 16; // struct inotify_event: wd, mask, cookie, len
        let mut buf = vec![0u8; 64 * 1024];
        let mut names = Vec::new();
        let mut whole = false;
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`, which lives across the call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + HEADER <= n {
                let field = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().expect("4 bytes"));
                let (mask, len) = (field(4), field(12) as usize);
                let name = &buf[(at + HEADER).min(n)..(at + HEADER + len).min(n)];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                if mask & (libc::IN_Q_OVERFLOW | libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                    whole = true;
                } else if !name.is_empty() {
                    names.push(std::ffi::OsStr::from_bytes(name).to_owned());
                }
                at += HEADER + len;
            }
        }
        Ok((!whole).then_some(names))
    }
}

fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::storage_io(format!("syncing {}", path.display()), e))
}

impl Syncer {
    fn open(dir: &Path, durable: bool) -> Result<Syncer> {
        let sled_dir = dir.join("log");
        let db_path = sled_dir.join("db");
        let db_file = std::fs::File::open(&db_path)
            .map_err(|e| Error::storage_io(format!("opening {}", db_path.display()), e))?;
        if durable {
            db_file
                .sync_all()
                .map_err(|e| Error::storage_io(format!("syncing {}", db_path.display()), e))?;
            sync_path(&sled_dir)?;
            sync_path(dir)?;
        }
        let blobs = sled_dir.join("blobs");
        // The watch is set before the first listing, so every blob is seen by one or the other.
        let watch = if durable {
            std::fs::create_dir_all(&blobs)
                .map_err(|e| Error::storage_io(format!("creating {}", blobs.display()), e))?;
            match BlobWatch::new(&blobs) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no inotify watch on sled's blob directory: each flush lists it instead");
                    None
                }
            }
        } else {
            None
        };
        let syncer = Syncer {
            enabled: std::sync::atomic::AtomicBool::new(durable),
            db_file,
            blobs,
            synced_blobs: Default::default(),
            watch,
        };
        if durable {
            syncer.sync_blobs(true)?;
        }
        Ok(syncer)
    }

    fn sync(&self) -> Result<()> {
        if !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        self.db_file
            .sync_data()
            .map_err(|e| Error::storage_io("fdatasync of the log", e))?;
        self.sync_blobs(false)
    }

    /// Syncs the blob files not synced yet, then the directory that names them: those the
    /// watch reports, or else (no watch, its queue overflowed, or `all`) every one the
    /// directory lists that was not synced before.
    fn sync_blobs(&self, all: bool) -> Result<()> {
        if let (Some(watch), false) = (&self.watch, all) {
            let drained = watch
                .drain()
                .map_err(|e| Error::storage_io(format!("reading the watch on {}", self.blobs.display()), e))?;
            if let Some(names) = drained {
                let mut new = false;
                for name in names {
                    match std::fs::File::open(self.blobs.join(&name)) {
                        Ok(f) => f.sync_data().map_err(|e| Error::storage_io("fdatasync of a blob", e))?,
                        // sled removed it meanwhile: nothing to keep.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::storage_io("opening a blob", e)),
                    }
                    new = true;
                }
                if new {
                    sync_path(&self.blobs)?;
                }
                return Ok(());
            }
            tracing::warn!("the watch on sled's blob directory overflowed: listing it once");
            self.synced_blobs.lock().expect("blobs lock").clear();
        }
        let listing = match std::fs::read_dir(&self.blobs) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::storage_io(format!("listing {}", self.blobs.display()), e)),
        };
        let mut synced = self.synced_blobs.lock().expect("blobs lock");
        let mut now = std::collections::HashSet::with_capacity(synced.len());
        let mut new = all;
        for entry in listing {
            let entry = entry.map_err(|e| Error::storage_io(format!("listing {}", self.blobs.display()), e))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(entry.path()) {
                    Ok(f) => f.sync_data().map_err(|e| Error::storage_io("fdatasync of a blob", e))?,
                    // sled removed it meanwhile: nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::storage_io("opening a blob", e)),
                }
                new = true;
            }
            now.insert(name);
        }
        // With a watch, later blobs are known from it: the names need not be kept.
        *synced = if self.watch.is_some() { Default::default() } else { now };
        if new {
            sync_path(&self.blobs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch reports a file once it is closed after writing (sled's blobs are written
    /// whole, then closed), not while it is still open, and each name once.
    #[test]
    fn the_blob_watch_reports_files_closed_after_writing() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let watch = BlobWatch::new(dir.path()).unwrap();
        assert_eq!(watch.drain().unwrap(), Some(vec![]));
        let mut open = std::fs::File::create(dir.path().join("1001")).unwrap();
        open.write_all(b"partial").unwrap();
        std::fs::write(dir.path().join("1002"), b"whole").unwrap();
        assert_eq!(watch.drain().unwrap(), Some(vec!["1002".into()]));
        drop(open);
        assert_eq!(watch.drain().unwrap(), Some(vec!["1001".into()]));
        assert_eq!(watch.drain().unwrap(), Some(vec![]));
        // A directory that goes away ends the watch: the caller lists instead.
        drop(dir);
        assert_eq!(watch.drain().unwrap(), None);
    }

    #[test]
    fn a_full_disk_under_sled_is_disk_full_with_its_cause() {
        let e = from_sled(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        assert_eq!(e.code(), "disk_full");
        assert!(e.disk_full());
        let e = from_sled(sled::Error::Io(std::io::Error::from_raw_os_error(5)));
        assert_eq!((e.code(), e.disk_full()), ("storage_failed", false));
        assert!(std::error::Error::source(&e).is_some(), "the I/O error is kept");
        let e = from_sled(sled::Error::Unsupported("x".into()));
        assert_eq!(e.code(), "storage_failed");
    }

    #[test]
    fn the_default_writer_batch_is_one_chunk() {
        assert_eq!(crate::Config::default().writer.batch_max, CHUNK_EVENTS_MAX);
    }

    #[test]
    fn a_reopening_scan_reads_every_event_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<Vec<u8>> = (1..=1_000u64)
            .map(|seq| format!("event {seq} {}", "x".repeat(seq as usize % 300)).into_bytes())
            .collect();
        {
            let store = Store::open(dir.path()).unwrap();
            for (i, part) in events.chunks(300).enumerate() {
                let mut b = LogBatch::default();
                for (j, e) in part.iter().enumerate() {
                    b.add_event((i * 300 + j) as u64 + 1, e);
                }
                store.apply_log(b).unwrap();
            }
            store.flush().unwrap();
        }
        for from in [1u64, 2, 129, 777] {
            let mut scan = scan_dir_reopening(dir.path(), from, 10_000).unwrap();
            let read: Vec<(u64, Vec<u8>)> = scan
                .by_ref()
                .map(|r| r.map(|(s, b)| (s, b.to_vec())).unwrap())
                .collect();
            let want: Vec<(u64, Vec<u8>)> = (from..=1_000).map(|s| (s, events[s as usize - 1].clone())).collect();
            assert_eq!(read, want, "from {from}");
            let bytes: u64 = read.iter().map(|(_, b)| b.len() as u64).sum();
            assert!(
                scan.opens >= bytes / 10_000 && scan.opens > 1,
                "opened {} times for {bytes} bytes",
                scan.opens
            );
            assert!(scan.next().is_none());
        }
        // Closed at the end: the directory can be opened again.
        drop(Store::open(dir.path()).unwrap());
        let missing = scan_dir(&dir.path().join("nothing"), 1).err().unwrap();
        assert!(missing.to_string().contains("no ledger log"), "{missing}");
    }

    #[test]
    fn history_runs_are_read_across_and_inside_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = IndexBatch::default();
        b.add_history_run("a", 1, &[10, 11, 12]);
        b.add_history_run("a", 4, &[20]);
        b.add_history_run("a", 5, &[30, 31, 32, 33]);
        b.add_history_run("ab", 1, &[99]);
        b.add_history_run("", 1, &[98]);
        store.apply_index(b).unwrap();
        let q = |after, before, newest, limit| store.account_event_seqs("a", after, before, newest, limit).unwrap();
        assert_eq!(q(0, u64::MAX, false, 100), vec![10, 11, 12, 20, 30, 31, 32, 33]);
        assert_eq!(
            q(2, u64::MAX, false, 100),
            vec![12, 20, 30, 31, 32, 33],
            "starting inside a row"
        );
        assert_eq!(q(2, 6, false, 100), vec![12, 20, 30], "ending inside a row");
        assert_eq!(q(0, 7, true, 100), vec![31, 30, 20, 12, 11, 10], "newest first");
        assert_eq!(q(0, u64::MAX, true, 2), vec![33, 32]);
        assert_eq!(q(5, u64::MAX, false, 2), vec![31, 32]);
        assert_eq!(q(8, u64::MAX, false, 10), Vec::<u64>::new());
        assert_eq!(
            store.account_event_seqs("ab", 0, u64::MAX, false, 10).unwrap(),
            vec![99]
        );
        assert_eq!(
            store.account_event_seqs("b", 0, u64::MAX, false, 10).unwrap(),
            Vec::<u64>::new()
        );
    }
}
