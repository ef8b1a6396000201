//! An on-disk hash table from 64-bit fingerprints to event seqs: the stored part of the
//! idempotency index and of the paid-orders index ([`crate::idempotency`]).
//!
//! Written by hand rather than as sled rows: sled costs 10-15 µs for each random key it
//! inserts (see [`crate::indexer`]), which at one key per command would cost the ledger more
//! than half its throughput. Here an insert is a 4 KiB bucket rewritten in the page cache, and
//! the indexer rewrites each bucket once for all the keys a batch puts in it.
//!
//! The table is derived from the log, so it needs no write-ahead log of its own: it records
//! the position (the last seq whose keys it holds) only after an `fdatasync` of the buckets
//! that cover it, and every bucket carries a CRC. On open, a table whose header or any bucket
//! does not check is discarded and rebuilt from the log.
//!
//! Layout: a 4 KiB header (magic, salt, bucket count, position, live entries, CRC), then
//! `2^bits` buckets of 4 KiB: entry count, CRC, and up to [`SLOTS`] entries of
//! (fingerprint, seq), little-endian. A fingerprint is SHA-256 over the table's random salt and
//! the key, so nobody outside can aim many keys at one bucket. The table doubles when it is
//! half full or when a bucket overflows, into a new file swapped in by rename; readers keep
//! reading the old one meanwhile.
//!
//! Memory: nothing but the header is held; lookups and inserts go through the page cache, which
//! the kernel owns and can drop.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const PAGE: usize = 4096;
const MAGIC: &[u8; 8] = b"BLKEYTB1";
/// Entries per bucket: 4096 bytes less the count and the CRC, 16 bytes each.
pub const SLOTS: usize = (PAGE - 8) / 16;
const INITIAL_BITS: u32 = 6;
const MAX_BITS: u32 = 40;
/// Locks that keep a reader off a bucket while it is rewritten.
const STRIPES: usize = 64;

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io_caused(what, e)
}

struct File_ {
    file: File,
    bits: u32,
}

impl File_ {
    fn buckets(&self) -> u64 {
        1 << self.bits
    }
    fn bucket_of(&self, fp: u64) -> u64 {
        fp & (self.buckets() - 1)
    }
    fn read_bucket(&self, b: u64, page: &mut [u8; PAGE]) -> Result<()> {
        self.file
            .read_exact_at(page, (1 + b) * PAGE as u64)
            .map_err(io("reading a key table bucket"))
    }
}

/// One bucket's entries, decoded.
fn entries(page: &[u8; PAGE]) -> Option<impl Iterator<Item = (u64, u64)> + '_> {
    let count = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    if count > SLOTS || crc32fast::hash(&page[8..8 + count * 16]) ^ count as u32 != crc {
        return None;
    }
    Some((0..count).map(move |i| {
        let at = 8 + i * 16;
        (
            u64::from_le_bytes(page[at..at + 8].try_into().expect("8 bytes")),
            u64::from_le_bytes(page[at + 8..at + 16].try_into().expect("8 bytes")),
        )
    }))
}

fn encode_bucket(list: &[(u64, u64)], page: &mut [u8; PAGE]) {
    debug_assert!(list.len() <= SLOTS);
    page.fill(0);
    for (i, (fp, seq)) in list.iter().enumerate() {
        let at = 8 + i * 16;
        page[at..at + 8].copy_from_slice(&fp.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&seq.to_le_bytes());
    }
    let count = list.len() as u32;
    page[0..4].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&page[8..8 + list.len() * 16]) ^ count;
    page[4..8].copy_from_slice(&crc.to_le_bytes());
}

#[derive(Clone, Copy)]
struct Header {
    salt: [u8; 16],
    bits: u32,
    position: u64,
    live: u64,
}

impl Header {
    fn encode(&self) -> [u8; PAGE] {
        let mut page = [0u8; PAGE];
        page[0..8].copy_from_slice(MAGIC);
        page[8..24].copy_from_slice(&self.salt);
        page[24..28].copy_from_slice(&self.bits.to_le_bytes());
        page[28..36].copy_from_slice(&self.position.to_le_bytes());
        page[36..44].copy_from_slice(&self.live.to_le_bytes());
        let crc = crc32fast::hash(&page[0..44]);
        page[44..48].copy_from_slice(&crc.to_le_bytes());
        page
    }
    fn decode(page: &[u8; PAGE]) -> Option<Header> {
        if &page[0..8] != MAGIC || crc32fast::hash(&page[0..44]) != u32::from_le_bytes(page[44..48].try_into().ok()?) {
            return None;
        }
        let bits = u32::from_le_bytes(page[24..28].try_into().ok()?);
        (INITIAL_BITS..=MAX_BITS).contains(&bits).then(|| Header {
            salt: page[8..24].try_into().expect("16 bytes"),
            bits,
            position: u64::from_le_bytes(page[28..36].try_into().expect("8 bytes")),
            live: u64::from_le_bytes(page[36..44].try_into().expect("8 bytes")),
        })
    }
}

/// The table. Lookups may run on any thread; inserts come from one thread at a time (the
/// indexer), which the `writing` lock enforces.
pub struct KeyTable {
    path: PathBuf,
    salt: [u8; 16],
    current: RwLock<Arc<File_>>,
    stripes: Vec<RwLock<()>>,
    writing: Mutex<Header>,
}

impl KeyTable {
    /// Opens the table at `path`, or creates an empty one (position 0) when it is missing or
    /// does not check: its header, or any bucket's CRC (a torn write after a power cut).
    pub fn open(path: &Path) -> Result<KeyTable> {
        let opened = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => Self::check(file)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io_caused("opening a key table", e)),
        };
        let (file, header) = match opened {
            Some(found) => found,
            None => {
                if path.exists() {
                    tracing::warn!(file = %path.display(), "a key table did not check; it is rebuilt from the log");
                }
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt).map_err(|e| Error::io(format!("random salt: {e}")))?;
                let header = Header {
                    salt,
                    bits: INITIAL_BITS,
                    position: 0,
                    live: 0,
                };
                (Self::create(path, header)?, header)
            }
        };
        Ok(KeyTable {
            path: path.to_owned(),
            salt: header.salt,
            current: RwLock::new(Arc::new(File_ {
                file,
                bits: header.bits,
            })),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            writing: Mutex::new(header),
        })
    }

    /// The file and its header if the header and every bucket check.
    fn check(file: File) -> Result<Option<(File, Header)>> {
        let mut page = [0u8; PAGE];
        if file.read_exact_at(&mut page, 0).is_err() {
            return Ok(None);
        }
        let Some(header) = Header::decode(&page) else {
            return Ok(None);
        };
        let len = file.metadata().map_err(io("reading a key table's size"))?.len();
        if len != (1 + (1u64 << header.bits)) * PAGE as u64 {
            return Ok(None);
        }
        let f = File_ {
            file,
            bits: header.bits,
        };
        for b in 0..f.buckets() {
            f.read_bucket(b, &mut page)?;
            if entries(&page).is_none() {
                return Ok(None);
            }
        }
        Ok(Some((f.file, header)))
    }

    /// A new file of `header.bits` empty buckets, synced. (A page of zeros is an empty
    /// bucket: count 0, and the CRC of nothing is 0.)
    fn create(path: &Path, header: Header) -> Result<File> {
        let file = Self::create_unrenamed(path, header)?;
        file.write_all_at(&header.encode(), 0)
            .map_err(io("writing a key table"))?;
        file.sync_all().map_err(io("syncing a key table"))?;
        std::fs::rename(path.with_extension("new"), path).map_err(io("renaming a key table"))?;
        Ok(file)
    }

    /// The last seq whose keys the table holds.
    pub fn position(&self) -> u64 {
        self.writing.lock().expect("key table lock").position
    }

    /// Entries the table holds (live ones; dead ones leave as their buckets are rewritten).
    pub fn live(&self) -> u64 {
        self.writing.lock().expect("key table lock").live
    }

    /// The key's fingerprint: SHA-256 over the salt and the parts, each followed by a NUL.
    pub fn fingerprint(&self, parts: &[&[u8]]) -> u64 {
        let mut h = Sha256::new();
        h.update(self.salt);
        for p in parts {
            h.update(p);
            h.update([0u8]);
        }
        u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    /// The seqs stored under a fingerprint (usually none or one; the caller checks the event).
    pub fn lookup(&self, fp: u64) -> Result<Vec<u64>> {
        let f = self.current.read().expect("key table lock").clone();
        let b = f.bucket_of(fp);
        let mut page = [0u8; PAGE];
        {
            let _r = self.stripes[b as usize % STRIPES].read().expect("stripe lock");
            f.read_bucket(b, &mut page)?;
        }
        let list = entries(&page).ok_or_else(|| Error::corrupt("a key table bucket does not check"))?;
        Ok(list.filter(|(f, _)| *f == fp).map(|(_, s)| s).collect())
    }

    /// Adds entries (fingerprint, seq) covering the log up to `position`. Entries with a seq
    /// below `dead_before` are dropped from every bucket rewritten; an entry already present is
    /// not added twice (catching up after a crash inserts some again).
    ///
    /// With `sync`, the buckets are synced and then `position` recorded in the header;
    /// without, the header keeps the last synced position (a restart catches up from there,
    /// and the buckets written since stay valid or fail their CRC).
    pub fn insert(&self, items: &mut [(u64, u64)], dead_before: u64, position: u64, sync: bool) -> Result<()> {
        let mut header = self.writing.lock().expect("key table lock");
        loop {
            let f = self.current.read().expect("key table lock").clone();
            let needed = header.live + items.len() as u64;
            if needed > f.buckets() * SLOTS as u64 / 2 && f.bits < MAX_BITS {
                self.grow(&mut header, &f, dead_before)?;
                continue;
            }
            items.sort_unstable_by_key(|(fp, seq)| (f.bucket_of(*fp), *seq));
            match self.write_buckets(&f, items, dead_before)? {
                Some(live_change) => {
                    header.live = (header.live as i64 + live_change).max(0) as u64;
                    break;
                }
                // A bucket would overflow: grow, then write again (what was written is kept;
                // entries are not added twice).
                None => {
                    let f = self.current.read().expect("key table lock").clone();
                    self.grow(&mut header, &f, dead_before)?;
                }
            }
        }
        if sync {
            let f = self.current.read().expect("key table lock").clone();
            f.file.sync_data().map_err(io("syncing a key table"))?;
            header.position = header.position.max(position);
            f.file
                .write_all_at(&header.encode(), 0)
                .map_err(io("writing a key table"))?;
        }
        Ok(())
    }

    /// Rewrites every bucket `items` (sorted by bucket) touches. The change in live entries,
    /// or `None` when a bucket would overflow (the buckets before it are written).
    fn write_buckets(&self, f: &File_, items: &[(u64, u64)], dead_before: u64) -> Result<Option<i64>> {
        let mut page = [0u8; PAGE];
        let mut list: Vec<(u64, u64)> = Vec::with_capacity(SLOTS);
        let mut change = 0i64;
        let mut i = 0;
        while i < items.len() {
            let b = f.bucket_of(items[i].0);
            let mut j = i;
            while j < items.len() && f.bucket_of(items[j].0) == b {
                j += 1;
            }
            f.read_bucket(b, &mut page)?;
            list.clear();
            list.extend(entries(&page).ok_or_else(|| Error::corrupt("a key table bucket does not check"))?);
            let before = list.len() as i64;
            list.retain(|(_, seq)| *seq >= dead_before);
            for item in &items[i..j] {
                if item.1 >= dead_before && !list.contains(item) {
                    list.push(*item);
                }
            }
            if list.len() > SLOTS {
                return Ok(None);
            }
            change += list.len() as i64 - before;
            encode_bucket(&list, &mut page);
            {
                let _w = self.stripes[b as usize % STRIPES].write().expect("stripe lock");
                f.file
                    .write_all_at(&page, (1 + b) * PAGE as u64)
                    .map_err(io("writing a key table"))?;
            }
            i = j;
        }
        Ok(Some(change))
    }

    /// Doubles the table into a new file (dropping dead entries), then swaps it in.
    fn grow(&self, header: &mut Header, old: &File_, dead_before: u64) -> Result<()> {
        let bits = (old.bits + 1).min(MAX_BITS);
        let mut next = *header;
        next.bits = bits;
        next.live = 0;
        let file = Self::create_unrenamed(&self.path, next)?;
        let new = File_ { file, bits };
        let mut page = [0u8; PAGE];
        let mut low: Vec<(u64, u64)> = Vec::with_capacity(SLOTS);
        let mut high: Vec<(u64, u64)> = Vec::with_capacity(SLOTS);
        let mut live = 0u64;
        // Bucket b splits into b and b + old size, by the fingerprint's next bit.
        for b in 0..old.buckets() {
            old.read_bucket(b, &mut page)?;
            low.clear();
            high.clear();
            for (fp, seq) in entries(&page).ok_or_else(|| Error::corrupt("a key table bucket does not check"))? {
                if seq < dead_before {
                    continue;
                }
                if new.bucket_of(fp) == b {
                    low.push((fp, seq))
                } else {
                    high.push((fp, seq))
                }
            }
            live += (low.len() + high.len()) as u64;
            for (target, list) in [(b, &low), (b + old.buckets(), &high)] {
                encode_bucket(list, &mut page);
                new.file
                    .write_all_at(&page, (1 + target) * PAGE as u64)
                    .map_err(io("writing a key table"))?;
            }
        }
        next.live = live;
        new.file
            .write_all_at(&next.encode(), 0)
            .map_err(io("writing a key table"))?;
        new.file.sync_data().map_err(io("syncing a key table"))?;
        std::fs::rename(self.path.with_extension("new"), &self.path).map_err(io("renaming a key table"))?;
        tracing::debug!(buckets = new.buckets(), live, "key table grown");
        *self.current.write().expect("key table lock") = Arc::new(new);
        *header = next;
        Ok(())
    }

    /// An empty file of the header's size at `<path>.new` (its buckets are written by the
    /// caller), not yet renamed.
    fn create_unrenamed(path: &Path, header: Header) -> Result<File> {
        let tmp = path.with_extension("new");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("creating a key table"))?;
        file.set_len((1 + (1u64 << header.bits)) * PAGE as u64)
            .map_err(io("sizing a key table"))?;
        Ok(file)
    }

    /// Bytes on disk.
    pub fn file_bytes(&self) -> u64 {
        let f = self.current.read().expect("key table lock").clone();
        (1 + f.buckets()) * PAGE as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_grow_and_survive_a_reopen_and_dead_ones_leave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.keys");
        let t = KeyTable::open(&path).unwrap();
        let fp = |i: u64| t.fingerprint(&[b"acct", &i.to_le_bytes()]);
        let mut items: Vec<(u64, u64)> = (1..=20_000).map(|i| (fp(i), i)).collect();
        t.insert(&mut items, 0, 20_000, true).unwrap();
        assert!(t.file_bytes() > (1 << INITIAL_BITS) * PAGE as u64, "it grew");
        assert_eq!(t.live(), 20_000);
        for i in [1, 777, 20_000] {
            assert_eq!(t.lookup(fp(i)).unwrap(), vec![i]);
        }
        assert!(t.lookup(fp(20_001)).unwrap().is_empty());
        // Inserting again adds nothing.
        let mut again = vec![(fp(5), 5)];
        t.insert(&mut again, 0, 20_000, true).unwrap();
        assert_eq!(t.live(), 20_000);
        let salt_fp = fp(9);
        drop(t);
        let t = KeyTable::open(&path).unwrap();
        assert_eq!(t.position(), 20_000);
        assert_eq!(
            t.fingerprint(&[b"acct", &9u64.to_le_bytes()]),
            salt_fp,
            "the salt is kept"
        );
        assert_eq!(t.lookup(salt_fp).unwrap(), vec![9]);
        // Entries below `dead_before` leave the buckets that are rewritten.
        let fp = |i: u64| t.fingerprint(&[b"acct", &i.to_le_bytes()]);
        let mut more: Vec<(u64, u64)> = (20_001..=40_000).map(|i| (fp(i), i)).collect();
        t.insert(&mut more, 10_001, 40_000, true).unwrap();
        assert!(t.lookup(fp(1)).unwrap().is_empty());
        assert_eq!(t.lookup(fp(10_001)).unwrap(), vec![10_001]);
        assert!(t.live() <= 30_000, "{}", t.live());
    }

    #[test]
    fn a_page_of_zeros_is_an_empty_bucket() {
        let page = [0u8; PAGE];
        assert_eq!(entries(&page).map(|e| e.count()), Some(0));
    }

    #[test]
    fn a_damaged_bucket_makes_the_table_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.keys");
        let t = KeyTable::open(&path).unwrap();
        let mut items: Vec<(u64, u64)> = (1..=100u64).map(|i| (t.fingerprint(&[&i.to_le_bytes()]), i)).collect();
        t.insert(&mut items, 0, 100, true).unwrap();
        drop(t);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 3], PAGE as u64 * 3 + 1).unwrap();
        drop(f);
        let t = KeyTable::open(&path).unwrap();
        assert_eq!((t.position(), t.live()), (0, 0));
    }
}
