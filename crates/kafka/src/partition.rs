//! Kafka's default partitioner: murmur2 (written out in the domain, [`bindledger_domain::shard`],
//! which also takes an account's slot from it) of the key, as the Java client computes it; a
//! test against Kafka's own reference values holds it bit for bit.

pub use bindledger_domain::shard::murmur2;

/// Kafka's default partitioner (murmur2 of the key, as the Java client computes it), so that
/// any client keyed by account agrees with the relay.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions
}
