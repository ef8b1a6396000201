//! The idempotency index: (account, idempotency key) -> (seq of the event it produced, request
//! digest), for the keys of the last `window_events` events. It is derived from the log (every
//! event carries its key and digest), rebuilt from the log's tail on open, and only holds keys
//! whose events are durable. Memory is bounded: one entry per event at most, and entries older
//! than the window are dropped. A key reused after its window is treated as new.

use bindledger_events::Hash;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};

use crate::error::{Error, Result};
use crate::store::Store;

pub fn composite(account: &str, key: &str) -> String {
    let mut s = String::with_capacity(account.len() + 1 + key.len());
    s.push_str(account);
    s.push('\0');
    s.push_str(key);
    s
}

pub struct IdempotencyIndex {
    map: HashMap<String, (u64, Hash)>,
    /// Keys in the order their events were written (oldest first).
    order: VecDeque<(u64, String)>,
    window_events: u64,
}

impl IdempotencyIndex {
    pub fn new(window_events: u64) -> Self {
        IdempotencyIndex {
            map: HashMap::new(),
            order: VecDeque::new(),
            window_events,
        }
    }

    /// The key's event, if fewer than `window_events` events follow it up to `last_seq`.
    pub fn get(&self, composite_key: &str, last_seq: u64) -> Option<(u64, Hash)> {
        self.map
            .get(composite_key)
            .copied()
            .filter(|(seq, _)| last_seq.saturating_sub(*seq) < self.window_events)
    }

    /// Records a key of a durable event. Keys must come in seq order.
    pub fn insert(&mut self, composite_key: String, seq: u64, digest: Hash) {
        while let Some((oldest, _)) = self.order.front() {
            if oldest + self.window_events > seq {
                break;
            }
            let (_, k) = self.order.pop_front().expect("front exists");
            if self.map.get(&k).is_some_and(|(s, _)| s + self.window_events <= seq) {
                self.map.remove(&k);
            }
        }
        self.map.insert(composite_key.clone(), (seq, digest));
        self.order.push_back((seq, composite_key));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Rebuilds from the last `window_events` events of the log.
    pub fn rebuild(store: &Store, window_events: u64) -> Result<IdempotencyIndex> {
        #[derive(Deserialize)]
        struct Probe {
            seq: u64,
            account: String,
            idempotency_key: Option<String>,
            request_digest: Option<Hash>,
        }
        let mut found = Vec::new();
        for r in store.scan_events_rev().take(window_events as usize) {
            let (_, bytes) = r?;
            let p: Probe = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("event bytes: {e}")))?;
            if let (Some(key), Some(digest)) = (p.idempotency_key, p.request_digest) {
                found.push((p.seq, composite(&p.account, &key), digest));
            }
        }
        let mut index = IdempotencyIndex::new(window_events);
        for (seq, key, digest) in found.into_iter().rev() {
            index.insert(key, seq, digest);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_leave_after_their_window() {
        let mut ix = IdempotencyIndex::new(10);
        ix.insert(composite("a", "k1"), 1, Hash([1; 32]));
        ix.insert(composite("a", "k2"), 5, Hash([2; 32]));
        assert_eq!(ix.get(&composite("a", "k1"), 5), Some((1, Hash([1; 32]))));
        assert_eq!(
            ix.get(&composite("a", "k1"), 11),
            None,
            "seq 1 is outside the window at seq 11"
        );
        ix.insert(composite("b", "k1"), 11, Hash([3; 32]));
        assert_eq!(ix.get(&composite("a", "k1"), 11), None);
        assert!(ix.get(&composite("a", "k2"), 11).is_some());
        assert_eq!(ix.len(), 2);
        assert_ne!(composite("a", "b\0c"), composite("a\0b", "c").replace('\0', "\u{1}"));
    }
}
