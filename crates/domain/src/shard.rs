//! Shards: which node owns an account.
//!
//! Every command touches one account, so a cluster splits the accounts between shards, each
//! a ledger of its own (its own chain, checkpoints, idempotency and alerts). An account's
//! **slot** is a fixed function of its id: Kafka's murmur2 of the id's UTF-8 bytes, its sign
//! bit cleared, modulo [`SLOTS`] (the same hash the relay partitions by, so any Kafka client
//! computes it too). The [`ShardMap`] assigns every slot to one shard; only an operator
//! changes it, and every change takes the next `version`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Slots in every cluster. Fixed forever: an account's slot must never change, so the number
/// cannot either. 1,024 is enough to spread a cluster over hundreds of shards evenly and small
/// enough that a map is a few kilobytes.
pub const SLOTS: u16 = 1024;

/// MurmurHash2, 32-bit, seed 0x9747b28c, as in Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The slot of an account: `(murmur2(id) & 0x7fffffff) % 1024`.
pub fn slot_of(account: &str) -> u16 {
    ((murmur2(account.as_bytes()) & 0x7fff_ffff) % SLOTS as u32) as u16
}

/// One shard as the map names it: where its primary answers and where it publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The primary's base URL (`http://host:port`): where commands for its accounts go.
    pub url: String,
    /// The shard's events topic (its chain, exactly once, one topic per shard).
    pub events_topic: String,
    /// The shard's signed checkpoints topic.
    pub checkpoints_topic: String,
}

/// A run of slots owned by one shard, inclusive at both ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRange {
    pub from: u16,
    pub to: u16,
    pub shard: String,
}

/// Which shard owns each slot. Written by an operator (`bindledger cluster init`, `cluster
/// move-slot`) to the cluster topic; every node and client follows the newest. The JSON form
/// lists the slots as ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MapJson", into = "MapJson")]
pub struct ShardMap {
    /// 1 for the first map; every change takes the next.
    pub version: u64,
    pub shards: BTreeMap<String, ShardEntry>,
    /// Owner of each slot, an index into the shards' ids in order.
    owners: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapJson {
    version: u64,
    slots: u16,
    shards: BTreeMap<String, ShardEntry>,
    ranges: Vec<SlotRange>,
}

/// Why a map is refused. Every text is fixed or names a shard of the map (an operator's
/// value, never a caller's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("a shard map holds {0} slots; this version knows maps of 1024")]
    Slots(u16),
    #[error("a shard map needs at least one shard")]
    NoShard,
    #[error("shard ids are 1 to 32 characters of a-z, 0-9 and '-'")]
    BadId,
    #[error("shard {0}: its URL must start with http:// or https://")]
    BadUrl(String),
    #[error("shard {0}: its topics must be named, and differ from every other shard's")]
    BadTopic(String),
    #[error("slot ranges must cover 0 to 1023 in order, each once")]
    Ranges,
    #[error("a slot range names shard {0}, which the map does not list")]
    UnknownShard(String),
    #[error("shard {0} owns no slot; remove it from the map")]
    Idle(String),
    #[error("a map's version starts at 1")]
    Version,
    #[error("slot {0} does not exist (slots are 0 to 1023)")]
    NoSlot(u32),
}

/// A valid shard id: 1-32 of `[a-z0-9-]` (it names topics and appears in headers and paths).
pub fn valid_shard_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ShardMap {
    /// Version 1: the slots split evenly, in order, between the shards (sorted by id).
    pub fn even(shards: BTreeMap<String, ShardEntry>) -> Result<ShardMap, MapError> {
        let n = shards.len();
        if n == 0 {
            return Err(MapError::NoShard);
        }
        let owners = (0..SLOTS as usize).map(|s| (s * n / SLOTS as usize) as u16).collect();
        let map = ShardMap {
            version: 1,
            shards,
            owners,
        };
        map.check()?;
        Ok(map)
    }

    fn check(&self) -> Result<(), MapError> {
        if self.version == 0 {
            return Err(MapError::Version);
        }
        if self.shards.is_empty() {
            return Err(MapError::NoShard);
        }
        let mut topics = std::collections::HashSet::new();
        for (id, e) in &self.shards {
            if !valid_shard_id(id) {
                return Err(MapError::BadId);
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) || e.url.len() > 512 {
                return Err(MapError::BadUrl(id.clone()));
            }
            for t in [&e.events_topic, &e.checkpoints_topic] {
                if t.is_empty() || t.len() > 249 || !topics.insert(t.clone()) {
                    return Err(MapError::BadTopic(id.clone()));
                }
            }
        }
        let mut owns = vec![false; self.shards.len()];
        for &o in &self.owners {
            owns[o as usize] = true;
        }
        if let Some(i) = owns.iter().position(|o| !o) {
            let id = self.shards.keys().nth(i).expect("index of a shard");
            return Err(MapError::Idle(id.clone()));
        }
        Ok(())
    }

    /// The shard that owns `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> &str {
        let i = self.owners[slot as usize] as usize;
        self.shards.keys().nth(i).expect("owner index within the shards")
    }

    /// The shard that owns `account`.
    pub fn owner(&self, account: &str) -> &str {
        self.owner_of_slot(slot_of(account))
    }

    /// The slots `shard` owns.
    pub fn slots_of(&self, shard: &str) -> Vec<u16> {
        match self.shards.keys().position(|k| k == shard) {
            Some(i) => (0..SLOTS).filter(|s| self.owners[*s as usize] as usize == i).collect(),
            None => Vec::new(),
        }
    }

    /// The slots as ranges of one owner each, in order.
    pub fn ranges(&self) -> Vec<SlotRange> {
        let ids: Vec<&String> = self.shards.keys().collect();
        let mut out: Vec<SlotRange> = Vec::new();
        for (slot, &o) in self.owners.iter().enumerate() {
            match out.last_mut() {
                Some(r) if *ids[o as usize] == r.shard && r.to as usize + 1 == slot => r.to = slot as u16,
                _ => out.push(SlotRange {
                    from: slot as u16,
                    to: slot as u16,
                    shard: ids[o as usize].clone(),
                }),
            }
        }
        out
    }

    /// The next version with `shard`'s primary at `url` (after a promotion).
    pub fn with_url(&self, shard: &str, url: &str) -> Result<ShardMap, MapError> {
        let mut next = self.clone();
        next.version += 1;
        next.shards
            .get_mut(shard)
            .ok_or_else(|| MapError::UnknownShard(shard.to_owned()))?
            .url = url.trim_end_matches('/').to_owned();
        next.check()?;
        Ok(next)
    }

    /// The next version with `slot` owned by `to` (which must be in the map).
    pub fn with_slot_moved(&self, slot: u32, to: &str) -> Result<ShardMap, MapError> {
        if slot >= SLOTS as u32 {
            return Err(MapError::NoSlot(slot));
        }
        let i = self
            .shards
            .keys()
            .position(|k| k == to)
            .ok_or_else(|| MapError::UnknownShard(to.to_owned()))?;
        let mut next = self.clone();
        next.version += 1;
        next.owners[slot as usize] = i as u16;
        next.check()?;
        Ok(next)
    }
}

impl TryFrom<MapJson> for ShardMap {
    type Error = MapError;

    fn try_from(j: MapJson) -> Result<ShardMap, MapError> {
        if j.slots != SLOTS {
            return Err(MapError::Slots(j.slots));
        }
        let index: BTreeMap<&String, u16> = j.shards.keys().enumerate().map(|(i, k)| (k, i as u16)).collect();
        let mut owners = Vec::with_capacity(SLOTS as usize);
        for r in &j.ranges {
            if r.from as usize != owners.len() || r.to < r.from || r.to >= SLOTS {
                return Err(MapError::Ranges);
            }
            let o = *index
                .get(&r.shard)
                .ok_or_else(|| MapError::UnknownShard(r.shard.clone()))?;
            owners.extend(std::iter::repeat_n(o, (r.to - r.from) as usize + 1));
        }
        if owners.len() != SLOTS as usize {
            return Err(MapError::Ranges);
        }
        let map = ShardMap {
            version: j.version,
            shards: j.shards,
            owners,
        };
        map.check()?;
        Ok(map)
    }
}

impl From<ShardMap> for MapJson {
    fn from(m: ShardMap) -> MapJson {
        MapJson {
            version: m.version,
            slots: SLOTS,
            ranges: m.ranges(),
            shards: m.shards,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn slots_follow_the_documented_formula() {
        // (murmur2 & 0x7fffffff) % 1024, from the reference values above.
        assert_eq!(slot_of("21"), ((-973932308i32 as u32 & 0x7fff_ffff) % 1024) as u16);
        assert_eq!(slot_of("foobar"), ((-790332482i32 as u32 & 0x7fff_ffff) % 1024) as u16);
        assert_eq!(slot_of("abc"), (479470107u32 % 1024) as u16);
        // Spread: 10,000 accounts over 1,024 slots leave none far from the mean.
        let mut counts = vec![0u32; SLOTS as usize];
        for i in 0..10_000 {
            counts[slot_of(&format!("acct-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0 && c < 30), "{counts:?}");
    }

    fn entry(i: usize) -> ShardEntry {
        ShardEntry {
            url: format!("http://127.0.0.1:{}", 8000 + i),
            events_topic: format!("bindledger.s{i}.events"),
            checkpoints_topic: format!("bindledger.s{i}.checkpoints"),
        }
    }

    fn three() -> ShardMap {
        ShardMap::even((0..3).map(|i| (format!("s{i}"), entry(i))).collect()).unwrap()
    }

    #[test]
    fn an_even_map_splits_the_slots_in_order_and_reads_back() {
        let m = three();
        let r = m.ranges();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].from, r[0].to, r[0].shard.as_str()), (0, 341, "s0"));
        assert_eq!((r[1].from, r[1].to, r[1].shard.as_str()), (342, 682, "s1"));
        assert_eq!((r[2].from, r[2].to, r[2].shard.as_str()), (683, 1023, "s2"));
        let text = serde_json::to_string(&m).unwrap();
        let back: ShardMap = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.owner_of_slot(500), "s1");
        let a = (0..).map(|i| format!("a{i}")).find(|a| slot_of(a) >= 683).unwrap();
        assert_eq!(m.owner(&a), "s2");
        assert_eq!(m.slots_of("s0").len(), 342);
    }

    #[test]
    fn moving_a_slot_takes_the_next_version_and_splits_a_range() {
        let m = three();
        let n = m.with_slot_moved(100, "s2").unwrap();
        assert_eq!(n.version, 2);
        assert_eq!(n.owner_of_slot(100), "s2");
        assert_eq!(n.owner_of_slot(99), "s0");
        assert_eq!(n.ranges().len(), 5);
        let back: ShardMap = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        assert_eq!(m.with_slot_moved(1024, "s2"), Err(MapError::NoSlot(1024)));
        let u = n.with_url("s1", "http://10.0.0.9:8080/").unwrap();
        assert_eq!((u.version, u.shards["s1"].url.as_str()), (3, "http://10.0.0.9:8080"));
        assert_eq!(u.owner_of_slot(100), "s2", "the slots stay");
        assert!(matches!(n.with_url("s1", "ftp://x"), Err(MapError::BadUrl(_))));
        assert!(matches!(n.with_url("s9", "http://x"), Err(MapError::UnknownShard(_))));
        assert!(matches!(m.with_slot_moved(1, "s9"), Err(MapError::UnknownShard(_))));
    }

    #[test]
    fn damaged_maps_are_refused_with_a_reason() {
        let m = three();
        let good: serde_json::Value = serde_json::to_value(&m).unwrap();
        let refuse = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            edit(&mut v);
            serde_json::from_value::<ShardMap>(v).unwrap_err().to_string()
        };
        assert!(refuse(&|v| v["slots"] = 512.into()).contains("1024"));
        assert!(refuse(&|v| v["ranges"][1]["from"] = 343.into()).contains("cover"));
        assert!(refuse(&|v| v["ranges"][2]["to"] = 1022.into()).contains("cover"));
        assert!(refuse(&|v| v["ranges"][1]["shard"] = "s9".into()).contains("s9"));
        assert!(refuse(&|v| v["ranges"][1]["shard"] = "s0".into()).contains("owns no slot"));
        assert!(refuse(&|v| v["shards"]["s1"]["url"] = "ftp://x".into()).contains("URL"));
        assert!(refuse(&|v| v["shards"]["s1"]["events_topic"] = "bindledger.s0.events".into()).contains("topics"));
        assert!(refuse(&|v| v["version"] = 0.into()).contains("version"));
        assert!(refuse(&|v| v["extra"] = 1.into()).contains("unknown field"));
        let mut bad = BTreeMap::new();
        bad.insert("S 1".to_owned(), entry(0));
        assert_eq!(ShardMap::even(bad), Err(MapError::BadId));
        assert_eq!(ShardMap::even(BTreeMap::new()), Err(MapError::NoShard));
    }
}
