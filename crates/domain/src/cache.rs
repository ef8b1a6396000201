//! The eviction rule every bounded cache of the ledger follows: entries go oldest touch first,
//! and only when clean (their last change stored), so what is read back later is exactly what
//! was let go, and an answer never depends on what happened to be held.

use std::collections::{HashMap, VecDeque};

/// Lets the entries of `map` go, oldest touch first, while it holds more than `max` and the
/// oldest touch is clean (its change at or before `written`); a touch whose stamp is no longer
/// its entry's (a later touch superseded it, or the entry left) is skipped. Keeps `touched`
/// within a small multiple of the map. A touch is (key, the entry's stamp then, the seq of its
/// change, 0 for a row read from disk). Each entry let go is handed to `gone`.
pub fn let_go<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    touched: &mut VecDeque<(K, u64, u64)>,
    max: usize,
    written: u64,
    stamp: impl Fn(&V) -> u64,
    mut gone: impl FnMut(K, V),
) {
    while map.len() > max {
        let Some((key, then, seq)) = touched.front() else {
            break;
        };
        if map.get(key).map(&stamp) != Some(*then) {
            touched.pop_front();
            continue;
        }
        if *seq > written {
            break;
        }
        let (key, _, _) = touched.pop_front().expect("front exists");
        if let Some(v) = map.remove(&key) {
            gone(key, v);
        }
    }
    if touched.len() > 2 * map.len() + 1024 {
        touched.retain(|(key, then, _)| map.get(key).map(&stamp) == Some(*then));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_entries_go_oldest_first() {
        let mut map: HashMap<&str, u64> = HashMap::new();
        let mut touched = VecDeque::new();
        for (k, seq) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
            map.insert(k, seq);
            touched.push_back((k, seq, seq));
        }
        let mut gone = Vec::new();
        // "b" is the oldest live touch ("a"'s first touch was superseded); written through 2.
        let_go(&mut map, &mut touched, 1, 2, |s| *s, |k, _| gone.push(k));
        assert_eq!(gone, ["b"]);
        assert_eq!(map.len(), 2, "\"a\" changed at 3 is dirty: it stays");
        let_go(&mut map, &mut touched, 1, 3, |s| *s, |k, _| gone.push(k));
        assert_eq!(gone, ["b", "a"]);
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), ["c"]);
    }
}
