//! Every account's data key: the key its events' personal fields are sealed with (see
//! [`bindledger_events::personal`]), created with the account's first v8 event, kept wrapped
//! under the master key ([`crate::keystore`]) in the store's `keys` tree, held in the clear only
//! in a bounded cache, and destroyed when the account is erased.
//!
//! The `keys_outbox` tree lists the accounts whose wrapped key (or its removal) is not yet on
//! the keys topic; the relay publishes them before the events that need them, so replicas and a
//! restore get the wrapped keys through Kafka, never a key in the clear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use bindledger_events::personal;
use bindledger_events::Event;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keystore::{DataKeyBytes, KeyStore, Wrapped};
use crate::store::{from_sled, Store};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Data keys held in the clear by default (32 bytes and an AES key schedule each).
pub const CACHED_KEYS_DEFAULT: usize = 100_000;

/// One account's data key.
pub struct DataKey(LessSafeKey);

impl DataKey {
    fn new(bytes: &DataKeyBytes) -> DataKey {
        DataKey(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"),
        ))
    }

    /// Seals one field's value (see [`personal`] for the format).
    pub fn seal(&self, event_id: &uuid::Uuid, account: &str, field: &str, plain: &str) -> String {
        let nonce = personal::nonce(event_id, field);
        let mut buf = Vec::with_capacity(12 + plain.len() + 16);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plain.as_bytes());
        let (n, body) = buf.split_at_mut(12);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n.try_into().expect("12 bytes")),
                Aad::from(personal::associated_data(account, field)),
                body,
            )
            .expect("AES-GCM seals any input shorter than 64 GiB");
        buf.extend_from_slice(tag.as_ref());
        let mut out = String::with_capacity(personal::SEALED_PREFIX.len() + buf.len() * 4 / 3 + 4);
        out.push_str(personal::SEALED_PREFIX);
        B64.encode_string(&buf, &mut out);
        out
    }

    /// Opens one sealed value; `None` if it does not open under this key.
    pub fn open(&self, account: &str, field: &str, sealed: &str) -> Option<String> {
        let raw = B64.decode(sealed.strip_prefix(personal::SEALED_PREFIX)?).ok()?;
        let (nonce, rest) = raw.split_first_chunk::<12>()?;
        let mut body = rest.to_vec();
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(personal::associated_data(account, field)),
                &mut body,
            )
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

enum Lookup {
    Missing,
    Unopened,
    Key(Arc<DataKey>),
}

/// The data keys of one ledger's accounts.
pub struct DataKeys {
    master: Arc<dyn KeyStore>,
    tree: sled::Tree,
    outbox: sled::Tree,
    cache: Mutex<HashMap<String, Arc<DataKey>>>,
    cache_max: usize,
    /// Held while a key is wrapped and stored; taken whole while the master key rotates, so no
    /// key is wrapped under a generation that rotation has already passed over.
    wrapping: RwLock<()>,
    /// A simulation's seed: data keys derived from it, so a run replays byte for byte.
    seed: Option<u64>,
    /// False: new events are not sealed (`keys.seal`; a benchmark's baseline turns it).
    seal: std::sync::atomic::AtomicBool,
}

impl DataKeys {
    pub fn open(master: Arc<dyn KeyStore>, store: &Store, cache_max: usize, seed: Option<u64>) -> Result<DataKeys> {
        Ok(DataKeys {
            master,
            tree: store.tree("keys")?,
            outbox: store.tree("keys_outbox")?,
            cache: Mutex::new(HashMap::new()),
            cache_max: cache_max.max(1),
            wrapping: RwLock::new(()),
            seed,
            seal: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// With `seal` false, new events keep their personal fields in the clear (`keys.seal`).
    pub fn sealing(self, seal: bool) -> DataKeys {
        self.set_sealing(seal);
        self
    }

    /// Turns sealing of new events on or off (the benchmark's baseline run).
    pub fn set_sealing(&self, seal: bool) {
        self.seal.store(seal, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn master(&self) -> &Arc<dyn KeyStore> {
        &self.master
    }

    fn remember(&self, account: &str, key: Arc<DataKey>) {
        let mut cache = self.cache.lock().expect("lock");
        if cache.len() >= self.cache_max {
            if let Some(victim) = cache.keys().next().cloned() {
                cache.remove(&victim);
            }
        }
        cache.insert(account.to_owned(), key);
    }

    /// The account's key, if it has one that opens (an erased account has none).
    pub fn get(&self, account: &str) -> Result<Option<Arc<DataKey>>> {
        Ok(match self.lookup(account)? {
            Lookup::Key(k) => Some(k),
            Lookup::Missing | Lookup::Unopened => None,
        })
    }

    fn lookup(&self, account: &str) -> Result<Lookup> {
        if let Some(k) = self.cache.lock().expect("lock").get(account) {
            return Ok(Lookup::Key(k.clone()));
        }
        let Some(row) = self.tree.get(account.as_bytes()).map_err(from_sled)? else {
            return Ok(Lookup::Missing);
        };
        let Some(wrapped) = Wrapped::from_bytes(&row) else {
            return Err(Error::corrupt("a wrapped data key is damaged"));
        };
        let Some(bytes) = self.master.unwrap(&wrapped, account.as_bytes())? else {
            return Ok(Lookup::Unopened);
        };
        let key = Arc::new(DataKey::new(&bytes));
        self.remember(account, key.clone());
        Ok(Lookup::Key(key))
    }

    /// The key to seal the account's new event with: its own, or a new one, stored wrapped (made
    /// durable by the flush that makes the event durable) and queued for the keys topic.
    pub fn for_sealing(&self, account: &str) -> Result<Arc<DataKey>> {
        match self.lookup(account)? {
            Lookup::Key(k) => return Ok(k),
            Lookup::Missing => {}
            // Never a second key beside one that does not open now (a token that failed, a
            // store that is not this ledger's): the account's events would no longer open.
            Lookup::Unopened => {
                return Err(Error::io(
                    "the account's data key does not open under this node's master keys (see `bindledger keys status`); refusing to seal with another",
                ))
            }
        }
        let mut bytes = [0u8; 32];
        match self.seed {
            Some(seed) => {
                let d = Sha256::new()
                    .chain_update(b"bindledger-simulated-data-key\0")
                    .chain_update(seed.to_be_bytes())
                    .chain_update(account.as_bytes())
                    .finalize();
                bytes.copy_from_slice(&d);
            }
            None => {
                getrandom::fill(&mut bytes).map_err(|_| Error::io("the operating system's random generator failed"))?
            }
        }
        {
            let _held = self.wrapping.read().expect("lock");
            let wrapped = self.master.wrap(&bytes, account.as_bytes())?;
            self.tree
                .insert(account.as_bytes(), wrapped.to_bytes())
                .map_err(from_sled)?;
            self.outbox.insert(account.as_bytes(), &[]).map_err(from_sled)?;
        }
        let key = Arc::new(DataKey::new(&bytes));
        self.remember(account, key.clone());
        Ok(key)
    }

    /// Seals the personal fields of a new event (schema v8) in place.
    pub fn seal_event(&self, event: &mut Event) -> Result<()> {
        if !self.seal.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut any = false;
        personal::for_each(event, |_, _| any = true);
        if !any {
            return Ok(());
        }
        let key = self.for_sealing(&event.account)?;
        let (id, account) = (event.id, event.account.clone());
        personal::for_each(event, |field, v| {
            if !personal::is_sealed(v) {
                *v = key.seal(&id, &account, field, v);
            }
        });
        Ok(())
    }

    /// Opens the sealed fields of an event in place; a field that does not open reads
    /// [`personal::ERASED`] when the account is `erased`, else [`personal::UNOPENED`] (this
    /// node does not hold the key yet).
    pub fn open_event(&self, event: &mut Event, erased: bool) -> Result<()> {
        if event.v < 8 {
            return Ok(());
        }
        let mut sealed = false;
        personal::for_each(event, |_, v| sealed |= personal::is_sealed(v));
        if !sealed {
            return Ok(());
        }
        let key = if erased { None } else { self.get(&event.account)? };
        let account = event.account.clone();
        personal::for_each(event, |field, v| {
            if personal::is_sealed(v) {
                *v = key
                    .as_ref()
                    .and_then(|k| k.open(&account, field, v))
                    .unwrap_or_else(|| unopened(erased).to_owned());
            }
        });
        Ok(())
    }

    /// Opens one sealed value of an account (a projection's copy of a field); a value that is
    /// not sealed is returned as it is; one that does not open as in [`Self::open_event`].
    pub fn open_value(&self, account: &str, field: &str, value: &str, erased: bool) -> Result<String> {
        if !personal::is_sealed(value) {
            return Ok(value.to_owned());
        }
        let key = if erased { None } else { self.get(account)? };
        Ok(key
            .and_then(|k| k.open(account, field, value))
            .unwrap_or_else(|| unopened(erased).to_owned()))
    }

    /// Destroys the account's data key here (the stored wrapped copy and the cached one) and
    /// queues its removal for the keys topic. Idempotent.
    pub fn erase(&self, account: &str) -> Result<()> {
        self.cache.lock().expect("lock").remove(account);
        if self.tree.remove(account.as_bytes()).map_err(from_sled)?.is_some() {
            self.outbox.insert(account.as_bytes(), &[]).map_err(from_sled)?;
        }
        Ok(())
    }

    /// A wrapped key from the keys topic (a replica): stored unless the account is `erased`
    /// here; `None` removes the key (the topic's tombstone). False when the key does not open
    /// under this node's master keys (it was given another key store than the primary's).
    pub fn put_wrapped(&self, account: &str, wrapped: Option<&[u8]>, erased: bool) -> Result<bool> {
        self.cache.lock().expect("lock").remove(account);
        let wrapped = wrapped.filter(|_| !erased);
        put_in(&self.tree, account, wrapped)?;
        match wrapped.and_then(Wrapped::from_bytes) {
            Some(w) => Ok(self.master.unwrap(&w, account.as_bytes())?.is_some()),
            None => Ok(true),
        }
    }

    /// Accounts whose key (or its removal) the keys topic does not have yet, at most `max`,
    /// with the wrapped key (`None`: removed).
    pub fn outbox(&self, max: usize) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let mut out = Vec::new();
        for r in self.outbox.iter().take(max) {
            let (k, _) = r.map_err(from_sled)?;
            let account = String::from_utf8_lossy(&k).into_owned();
            let wrapped = self.tree.get(&k).map_err(from_sled)?.map(|v| v.to_vec());
            out.push((account, wrapped));
        }
        Ok(out)
    }

    /// Marks outbox entries published (an entry changed since it was read stays).
    pub fn published(&self, done: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        for (account, wrapped) in done {
            let now = self
                .tree
                .get(account.as_bytes())
                .map_err(from_sled)?
                .map(|v| v.to_vec());
            if &now == wrapped {
                self.outbox.remove(account.as_bytes()).map_err(from_sled)?;
            }
        }
        Ok(())
    }

    /// Queues every key held for the keys topic (a topic made again); returns how many.
    pub fn queue_all(&self) -> Result<u64> {
        let mut n = 0;
        for r in self.tree.iter() {
            let (k, _) = r.map_err(from_sled)?;
            self.outbox.insert(k, &[]).map_err(from_sled)?;
            n += 1;
        }
        Ok(n)
    }

    /// Every account holding a key, with its wrapped key: what the keys topic must hold.
    pub fn all(&self) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + '_ {
        self.tree.iter().map(|r| {
            let (k, v) = r.map_err(from_sled)?;
            Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
        })
    }

    /// Number of data keys held.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Rotates the master key: a new generation becomes current, every data key held is
    /// rewrapped under it (and queued for the keys topic), and the older generations are
    /// destroyed. Returns the new generation and the keys rewrapped. The caller flushes the
    /// store before [`Self::destroy_old`] (a crash between the two leaves both generations,
    /// and the next rotation finishes the job).
    pub fn rotate(&self) -> Result<Rotation> {
        let generation = {
            let _all = self.wrapping.write().expect("lock");
            self.master.rotate()?
        };
        let mut rewrapped = 0u64;
        let mut unreadable = 0u64;
        for r in self.tree.iter() {
            let (k, v) = r.map_err(from_sled)?;
            let Some(w) = Wrapped::from_bytes(&v) else {
                unreadable += 1;
                continue;
            };
            if w.generation == generation {
                continue;
            }
            let Some(bytes) = self.master.unwrap(&w, &k)? else {
                unreadable += 1;
                continue;
            };
            let new = self.master.wrap(&bytes, &k)?;
            // Unless it changed meanwhile (an erasure removed it).
            if self
                .tree
                .compare_and_swap(&k, Some(&v), Some(new.to_bytes()))
                .map_err(from_sled)?
                .is_ok()
            {
                self.outbox.insert(&k, &[]).map_err(from_sled)?;
                rewrapped += 1;
            }
        }
        Ok(Rotation {
            generation,
            rewrapped,
            unreadable,
        })
    }

    /// Destroys every master key generation older than `current`; returns them.
    pub fn destroy_old(&self, current: u32) -> Result<Vec<u32>> {
        let old: Vec<u32> = self
            .master
            .generations()?
            .into_iter()
            .filter(|g| *g < current)
            .collect();
        for g in &old {
            self.master.destroy(*g)?;
        }
        Ok(old)
    }
}

fn unopened(erased: bool) -> &'static str {
    if erased {
        personal::ERASED
    } else {
        personal::UNOPENED
    }
}

/// Stores a wrapped key straight into a store's key table (a restore, with no ledger open);
/// `None` removes it.
pub fn store_wrapped(store: &Store, account: &str, wrapped: Option<&[u8]>) -> Result<()> {
    put_in(&store.tree("keys")?, account, wrapped)
}

/// A wrapped key from the keys topic into a key table (checked to be one); `None` removes it.
fn put_in(tree: &sled::Tree, account: &str, wrapped: Option<&[u8]>) -> Result<()> {
    match wrapped {
        Some(w) => {
            if Wrapped::from_bytes(w).is_none() {
                return Err(Error::corrupt("a wrapped data key on the keys topic is damaged"));
            }
            tree.insert(account.as_bytes(), w).map_err(from_sled)?;
        }
        None => {
            tree.remove(account.as_bytes()).map_err(from_sled)?;
        }
    }
    Ok(())
}

/// What a rotation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotation {
    pub generation: u32,
    pub rewrapped: u64,
    /// Keys that no longer opened (their generation was already gone): left as they are.
    pub unreadable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::FileKeyStore;

    fn keys(dir: &std::path::Path) -> (Store, DataKeys) {
        let store = Store::open(&dir.join("data")).unwrap();
        let master = Arc::new(FileKeyStore::open(&dir.join("master.keys")).unwrap());
        let k = DataKeys::open(master, &store, 2, None).unwrap();
        (store, k)
    }

    #[test]
    fn a_sealed_field_opens_only_under_its_account_and_field_and_not_after_erasure() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, k) = keys(dir.path());
        let id = uuid::Uuid::from_u128(5);
        let key = k.for_sealing("acct-1").unwrap();
        let sealed = key.seal(&id, "acct-1", "context.ip", "10.1.2.3");
        assert!(sealed.starts_with("sealed:") && !sealed.contains("10.1.2.3"));
        assert_eq!(
            key.seal(&id, "acct-1", "context.ip", "10.1.2.3"),
            sealed,
            "deterministic"
        );
        assert_eq!(
            k.open_value("acct-1", "context.ip", &sealed, false).unwrap(),
            "10.1.2.3"
        );
        assert_eq!(
            k.open_value("acct-1", "context.device_id", &sealed, false).unwrap(),
            personal::UNOPENED
        );
        let other = k.for_sealing("acct-2").unwrap();
        assert!(
            other.open("acct-1", "context.ip", &sealed).is_none(),
            "another account's key"
        );
        // Evicted from the cache (two entries) and read back from the store.
        k.for_sealing("acct-3").unwrap();
        assert_eq!(
            k.open_value("acct-1", "context.ip", &sealed, false).unwrap(),
            "10.1.2.3"
        );
        assert_eq!(k.outbox(10).unwrap().len(), 3);
        k.erase("acct-1").unwrap();
        assert_eq!(
            k.open_value("acct-1", "context.ip", &sealed, false).unwrap(),
            personal::UNOPENED
        );
        assert_eq!(
            k.open_value("acct-1", "context.ip", &sealed, true).unwrap(),
            personal::ERASED
        );
        let outbox = k.outbox(10).unwrap();
        assert!(
            outbox.contains(&("acct-1".to_owned(), None)),
            "the removal is published"
        );
        k.published(&outbox).unwrap();
        assert!(k.outbox(10).unwrap().is_empty());
    }

    #[test]
    fn a_key_that_does_not_open_is_never_replaced_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let ours = Arc::new(FileKeyStore::open(&dir.path().join("ours.keys")).unwrap());
        let k = DataKeys::open(ours, &store, 4, None).unwrap();
        let sealed =
            k.for_sealing("acct-1")
                .unwrap()
                .seal(&uuid::Uuid::from_u128(1), "acct-1", "context.ip", "10.9.9.9");
        drop(k);
        // Another key store (a node given the wrong file): the key is there but does not open.
        let other = Arc::new(FileKeyStore::open(&dir.path().join("other.keys")).unwrap());
        let k = DataKeys::open(other, &store, 4, None).unwrap();
        assert!(k.get("acct-1").unwrap().is_none());
        assert!(k.for_sealing("acct-1").is_err(), "no second key for the account");
        assert_eq!(
            k.open_value("acct-1", "context.ip", &sealed, false).unwrap(),
            personal::UNOPENED
        );
        drop(k);
        let ours = Arc::new(FileKeyStore::open(&dir.path().join("ours.keys")).unwrap());
        let k = DataKeys::open(ours, &store, 4, None).unwrap();
        assert_eq!(
            k.open_value("acct-1", "context.ip", &sealed, false).unwrap(),
            "10.9.9.9"
        );
    }

    #[test]
    fn rotation_rewraps_every_key_and_the_old_generation_then_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, k) = keys(dir.path());
        let id = uuid::Uuid::from_u128(9);
        let sealed: Vec<String> = (0..5)
            .map(|i| {
                let a = format!("acct-{i}");
                k.for_sealing(&a).unwrap().seal(&id, &a, "context.ip", "10.0.0.1")
            })
            .collect();
        let before: Vec<(String, Vec<u8>)> = k.all().map(|r| r.unwrap()).collect();
        k.erase("acct-4").unwrap();
        let r = k.rotate().unwrap();
        assert_eq!((r.generation, r.rewrapped, r.unreadable), (2, 4, 0));
        assert_eq!(k.destroy_old(r.generation).unwrap(), vec![1]);
        for (i, s) in sealed.iter().enumerate().take(4) {
            assert_eq!(
                k.open_value(&format!("acct-{i}"), "context.ip", s, false).unwrap(),
                "10.0.0.1"
            );
        }
        // The wrapped keys a copy kept from before open under no master key now: the erased
        // account's among them.
        for (account, w) in before {
            let w = Wrapped::from_bytes(&w).unwrap();
            assert_eq!(w.generation, 1);
            assert_eq!(k.master().unwrap(&w, account.as_bytes()).unwrap(), None);
        }
        assert_eq!(
            k.open_value("acct-4", "context.ip", &sealed[4], true).unwrap(),
            personal::ERASED
        );
    }
}
