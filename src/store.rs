//! The sled store. Everything lives in one tree so that a batch of events, their indexes, the
//! idempotency rows and the projection rows of the accounts they touched are written by **one
//! atomic `apply_batch`** and made durable by **one flush**.
//!
//! | key | value |
//! |---|---|
//! | `E` seq | the event's canonical bytes (the log) |
//! | `A` account 0x00 account_seq | seq (an account's history) |
//! | `Y` account 0x00 seq | empty (an account's payments) |
//! | `I` account 0x00 idempotency key | seq, request digest |
//! | `B` account | the account's projection state (JSON) |
//! | `M` name | metadata: store format, secret check, projection position |
//!
//! Integers are big-endian so that keys sort in numeric order. Account ids never contain 0x00.

use bindledger_events::{hash_bytes, Hash};
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::projection::AccountState;

const FORMAT: &[u8] = b"bindledger-store/1";
const META_FORMAT: &[u8] = b"Mformat";
const META_SECRET_CHECK: &[u8] = b"Msecret_check";
const META_POSITION: &[u8] = b"Mprojection_position";

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'E';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
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
    let arr: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| Error::Corrupt("short integer".into()))?;
    Ok(u64::from_be_bytes(arr))
}

/// One group commit: events and the rows that go with them.
#[derive(Default)]
pub struct WriteBatch {
    batch: sled::Batch,
    events: usize,
}

impl WriteBatch {
    pub fn add_event(
        &mut self,
        seq: u64,
        account: &str,
        account_seq: u64,
        bytes: &[u8],
        is_payment: bool,
        idempotency: Option<(&str, &Hash)>,
    ) {
        self.batch.insert(&event_key(seq)[..], bytes);
        self.batch.insert(account_key(b'A', account, &account_seq.to_be_bytes()), &seq.to_be_bytes()[..]);
        if is_payment {
            self.batch.insert(account_key(b'Y', account, &seq.to_be_bytes()), &[][..]);
        }
        if let Some((key, digest)) = idempotency {
            let mut v = Vec::with_capacity(40);
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&digest.0);
            self.batch.insert(account_key(b'I', account, key.as_bytes()), v);
        }
        self.events += 1;
    }

    pub fn put_account(&mut self, account: &str, state: &AccountState) {
        let mut k = Vec::with_capacity(1 + account.len());
        k.push(b'B');
        k.extend_from_slice(account.as_bytes());
        self.batch.insert(k, serde_json::to_vec(state).expect("account state serializes"));
    }

    pub fn set_position(&mut self, seq: u64) {
        self.batch.insert(META_POSITION, &seq.to_be_bytes()[..]);
    }

    pub fn events(&self) -> usize {
        self.events
    }
}

impl Store {
    /// Opens (or creates) the store in `dir/log`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("log"))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                    Error::Io(format!("{} is in use by another process (sled holds an exclusive lock); read a running ledger through its HTTP event feed", dir.display()))
                }
                other => Error::from(other),
            })?;
        let tree = db.open_tree("ledger")?;
        match tree.get(META_FORMAT)? {
            Some(v) if v.as_ref() == FORMAT => {}
            Some(v) => {
                return Err(Error::Corrupt(format!(
                    "store format {:?} is not {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None => {
                tree.insert(META_FORMAT, FORMAT)?;
                db.flush()?;
            }
        }
        Ok(Store { db, tree })
    }

    /// Records the secret's check value on first use; refuses a different secret later.
    pub fn check_secret(&self, check: &Hash) -> Result<()> {
        match self.tree.get(META_SECRET_CHECK)? {
            Some(v) if v.as_ref() == check.0 => Ok(()),
            Some(_) => Err(Error::SecretMismatch),
            None => {
                if self.head()?.is_some() {
                    return Err(Error::Corrupt("the log has events but no secret check value".into()));
                }
                self.tree.insert(META_SECRET_CHECK, &check.0[..])?;
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// The last event's seq and hash.
    pub fn head(&self) -> Result<Option<(u64, Hash)>> {
        match self.tree.scan_prefix(b"E").next_back() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r?;
                Ok(Some((u64_of(&k[1..])?, hash_bytes(&v))))
            }
        }
    }

    pub fn event_bytes(&self, seq: u64) -> Result<Option<sled::IVec>> {
        Ok(self.tree.get(event_key(seq))?)
    }

    /// Stored events from `from` on, in order, as (key seq, bytes).
    pub fn scan_events(&self, from: u64) -> impl Iterator<Item = Result<(u64, sled::IVec)>> + Send + 'static {
        self.tree.range(event_key(from)..event_key(u64::MAX)).map(|r| {
            let (k, v) = r?;
            Ok((u64_of(&k[1..])?, v))
        })
    }

    /// Seqs of an account's events with `account_seq > after_version`, oldest first.
    pub fn account_event_seqs(&self, account: &str, after_version: u64, limit: usize) -> Result<Vec<u64>> {
        let start = account_key(b'A', account, &(after_version.saturating_add(1)).to_be_bytes());
        let end = account_key(b'A', account, &u64::MAX.to_be_bytes());
        self.tree.range(start..=end).take(limit).map(|r| u64_of(&r?.1)).collect()
    }

    /// Seqs of an account's payment events with `seq < before`, newest first.
    pub fn payment_seqs(&self, account: &str, before: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let start = account_key(b'Y', account, &0u64.to_be_bytes());
        let end = account_key(b'Y', account, &before.unwrap_or(u64::MAX).to_be_bytes());
        self.tree.range(start..end).rev().take(limit).map(|r| {
            let (k, _) = r?;
            u64_of(&k[k.len() - 8..])
        }).collect()
    }

    /// The event an idempotency key produced, with the request digest it was recorded for.
    pub fn idempotency(&self, account: &str, key: &str) -> Result<Option<(u64, Hash)>> {
        match self.tree.get(account_key(b'I', account, key.as_bytes()))? {
            None => Ok(None),
            Some(v) if v.len() == 40 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(&v[8..]);
                Ok(Some((u64_of(&v)?, Hash(d))))
            }
            Some(_) => Err(Error::Corrupt("idempotency row of the wrong size".into())),
        }
    }

    /// The stored projection: its position and every account's state.
    pub fn load_accounts(&self) -> Result<(u64, HashMap<String, AccountState>)> {
        let position = match self.tree.get(META_POSITION)? {
            Some(v) => u64_of(&v)?,
            None => 0,
        };
        let mut accounts = HashMap::new();
        for r in self.tree.scan_prefix(b"B") {
            let (k, v) = r?;
            let name = String::from_utf8(k[1..].to_vec()).map_err(|_| Error::Corrupt("account key is not UTF-8".into()))?;
            let state: AccountState = serde_json::from_slice(&v).map_err(|e| Error::Corrupt(format!("account {name}: {e}")))?;
            accounts.insert(name, state);
        }
        Ok((position, accounts))
    }

    /// Applies a batch atomically and makes it durable.
    pub fn commit(&self, batch: WriteBatch) -> Result<()> {
        self.tree.apply_batch(batch.batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Size of the store's files on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
