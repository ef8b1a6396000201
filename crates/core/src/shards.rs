//! Which accounts this ledger owns, when it is one shard of a cluster.
//!
//! A ledger alone owns every account. A shard owns the slots the cluster's shard map gives it
//! ([`bindledger_domain::shard`]); the node follows the map and sets it here. The writer
//! checks every command's account against the slots owned at the moment it decides it, so a
//! command for an account whose slot has left is refused (`misdirected`) and changes nothing,
//! whatever the HTTP layer saw before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bindledger_domain::shard::{slot_of, ShardMap, SLOTS};

const WORDS: usize = SLOTS as usize / 64;

/// The slots this ledger owns (a bit each, read without a lock on every command) and the map
/// they came from.
pub struct Ownership {
    clustered: AtomicBool,
    owned: [AtomicU64; WORDS],
    map: RwLock<Option<(String, Arc<ShardMap>)>>,
}

impl Default for Ownership {
    /// A ledger alone: it owns every account.
    fn default() -> Self {
        Ownership {
            clustered: AtomicBool::new(false),
            owned: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            map: RwLock::new(None),
        }
    }
}

impl Ownership {
    /// Whether this ledger takes commands for `account` now.
    pub fn owns(&self, account: &str) -> bool {
        if !self.clustered.load(Ordering::Acquire) {
            return true;
        }
        self.owns_slot(slot_of(account))
    }

    pub fn owns_slot(&self, slot: u16) -> bool {
        self.owned[slot as usize / 64].load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }

    /// Follows `map` as shard `shard` (unless it holds this version or a newer one): slots that left are given up before slots that came are
    /// taken, so at no moment does this ledger hold a slot neither map gave it.
    pub fn follow(&self, shard: &str, map: Arc<ShardMap>) {
        let mine: std::collections::HashSet<u16> = map.slots_of(shard).into_iter().collect();
        let mut guard = self.map.write().expect("ownership lock");
        if guard.as_ref().is_some_and(|(_, held)| held.version >= map.version) {
            return; // a map read again from the topic's start, or an older one
        }
        let was_clustered = self.clustered.load(Ordering::Acquire);
        let mut next = [0u64; WORDS];
        for s in &mine {
            next[*s as usize / 64] |= 1 << (s % 64);
        }
        if !was_clustered {
            for w in &self.owned {
                w.store(0, Ordering::Release);
            }
        } else {
            for (w, n) in self.owned.iter().zip(next) {
                w.fetch_and(n, Ordering::AcqRel);
            }
        }
        self.clustered.store(true, Ordering::Release);
        for (w, n) in self.owned.iter().zip(next) {
            w.fetch_or(n, Ordering::AcqRel);
        }
        *guard = Some((shard.to_owned(), map));
    }

    /// This shard's id and the map it follows (`None` for a ledger alone).
    pub fn map(&self) -> Option<(String, Arc<ShardMap>)> {
        self.map.read().expect("ownership lock").clone()
    }

    /// The shard that owns `account` and its URL, when it is not this ledger.
    pub fn owner_elsewhere(&self, account: &str) -> Option<(String, String)> {
        if self.owns(account) {
            return None;
        }
        let (_, map) = self.map()?;
        let owner = map.owner(account).to_owned();
        let url = map.shards.get(&owner).map(|e| e.url.clone()).unwrap_or_default();
        Some((owner, url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: usize) -> Arc<ShardMap> {
        Arc::new(bindledger_domain::testing::shard_map(n))
    }

    #[test]
    fn a_shard_owns_its_slots_only_and_follows_a_move() {
        let o = Ownership::default();
        assert!(o.owns("anyone") && o.map().is_none());
        let m = map(2);
        o.follow("s1", m.clone());
        let accounts: Vec<String> = (0..2000).map(|i| format!("a{i}")).collect();
        for a in &accounts {
            assert_eq!(o.owns(a), m.owner(a) == "s1");
            assert_eq!(o.owner_elsewhere(a).is_some(), m.owner(a) == "s0");
        }
        let a = accounts.iter().find(|a| m.owner(a) == "s1").unwrap();
        let moved = Arc::new(m.with_slot_moved(slot_of(a) as u32, "s0").unwrap());
        o.follow("s1", moved.clone());
        assert!(!o.owns(a));
        assert_eq!(
            o.owner_elsewhere(a),
            Some(("s0".into(), "http://127.0.0.1:9000".into()))
        );
        o.follow("s1", m.clone());
        assert!(!o.owns(a), "an older map is not followed");
        let b = accounts
            .iter()
            .find(|b| m.owner(b) == "s0" && slot_of(b) != slot_of(a))
            .unwrap();
        let back = Arc::new(moved.with_slot_moved(slot_of(b) as u32, "s1").unwrap());
        o.follow("s1", back);
        assert!(o.owns(b) && !o.owns(a));
    }
}
