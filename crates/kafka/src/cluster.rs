//! The cluster topic: the shard map's versions, written by operators (`bindledger cluster
//! init`, `cluster move-slot`), read by every node and client.
//!
//! **Why a plain topic, kept forever, and not a compacted one.** Every reader applies the same
//! rule to the same sequence of messages: the first map read is taken, then a map only when its
//! version is the next one; a second map of a version already taken (two operators racing) is
//! ignored by everyone. Compaction keeps the *last* message of a key, which would hand a reader
//! starting later the map that lost such a race; and the map's history is the record of which
//! shard owned a slot when, which an auditor asks for. A map is a few kilobytes and changes
//! when an operator changes it, so the topic stays small. One partition keeps one order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bindledger_domain::shard::ShardMap;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{client_config, ensure_topic, headers, producer, read_partitions, ReadFrom};
use crate::config::KafkaConfig;
use crate::ledger::checkpoint::ClusterCheckpoint;
use crate::{client_error, KafkaError};

/// The key of every map message.
pub const MAP_KEY: &str = "shard-map";
/// The key of every signed cluster checkpoint (`bindledger cluster checkpoint`), which shares the
/// topic: the map's history and the heads signed under it, in one order.
pub const CHECKPOINT_KEY: &str = "cluster-checkpoint";

/// The maps a reader takes, in order, from the topic's messages (see the module's rule).
#[derive(Default)]
pub struct MapLog {
    current: Option<Arc<ShardMap>>,
}

impl MapLog {
    /// Reads one message: the new map when it is taken (a message of another key is not a map).
    pub fn offer(&mut self, key: &[u8], value: &[u8]) -> Option<Arc<ShardMap>> {
        if key != MAP_KEY.as_bytes() {
            return None;
        }
        let map: ShardMap = match serde_json::from_slice(value) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "the cluster topic holds a message that is not a valid shard map; ignored");
                return None;
            }
        };
        let next = match &self.current {
            None => true,
            Some(c) => map.version == c.version + 1,
        };
        next.then(|| {
            let map = Arc::new(map);
            self.current = Some(map.clone());
            map
        })
    }

    pub fn current(&self) -> Option<&Arc<ShardMap>> {
        self.current.as_ref()
    }
}

/// The newest map on `topic` (`None` when there is none, or no topic). Blocking.
pub fn read_map(kafka: &KafkaConfig, topic: &str) -> Result<Option<Arc<ShardMap>>, KafkaError> {
    let mut log = MapLog::default();
    match read_partitions(kafka, topic, ReadFrom::Beginning, |_, m| {
        log.offer(m.key().unwrap_or_default(), m.payload().unwrap_or_default());
        Ok(())
    }) {
        Ok(_) => Ok(log.current().cloned()),
        Err(KafkaError::Topic(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The cluster topic read whole: the newest map, and every signed cluster checkpoint with the
/// map version in force when it was written (a checkpoint that does not read is an error: an
/// auditor must not skip what it cannot read). Blocking.
#[allow(clippy::type_complexity)]
pub fn read_cluster(
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<(Option<Arc<ShardMap>>, Vec<ClusterCheckpoint>), KafkaError> {
    let mut log = MapLog::default();
    let mut checkpoints = Vec::new();
    read_partitions(kafka, topic, ReadFrom::Beginning, |_, m| {
        let key = m.key().unwrap_or_default();
        if key == CHECKPOINT_KEY.as_bytes() {
            let cp: ClusterCheckpoint = serde_json::from_slice(m.payload().unwrap_or_default()).map_err(|_| {
                KafkaError::Topic(format!(
                    "{topic} holds a cluster checkpoint that does not read (offset {})",
                    m.offset()
                ))
            })?;
            checkpoints.push(cp);
        } else {
            log.offer(key, m.payload().unwrap_or_default());
        }
        Ok(())
    })?;
    Ok((log.current().cloned(), checkpoints))
}

/// Appends a signed cluster checkpoint to the cluster topic.
pub async fn publish_checkpoint(kafka: &KafkaConfig, topic: &str, cp: &ClusterCheckpoint) -> Result<(), KafkaError> {
    let value = serde_json::to_vec(cp).expect("a checkpoint serialises");
    producer(kafka)?
        .send(
            FutureRecord::to(topic)
                .key(CHECKPOINT_KEY)
                .payload(&value)
                .partition(0)
                .headers(headers(&[("map_version", &cp.map_version.to_string())])),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| client_error(format!("writing the cluster checkpoint to {topic}"))(e))?;
    Ok(())
}

/// Writes `next` to `topic` (created with one partition when missing): it must be version 1 on
/// an empty topic, else the version after the newest. Then reads the topic back: an error if
/// another change took that version first.
pub async fn publish_map(kafka: &KafkaConfig, topic: &str, next: &ShardMap) -> Result<(), KafkaError> {
    ensure_topic(kafka, topic, 1).await?;
    let (k, t) = (kafka.clone(), topic.to_owned());
    let current = tokio::task::spawn_blocking(move || read_map(&k, &t))
        .await
        .map_err(|_| KafkaError::NoAnswer("reading the shard map".into()))??;
    let expected = current.as_ref().map_or(1, |c| c.version + 1);
    if next.version != expected {
        return Err(KafkaError::Topic(format!(
            "the shard map is at version {} on {topic}; a change must be version {expected} (read it again and retry)",
            expected - 1
        )));
    }
    let value = serde_json::to_vec(next).expect("a map serialises");
    let version = next.version.to_string();
    let producer = producer(kafka)?;
    producer
        .send(
            FutureRecord::to(topic)
                .key(MAP_KEY)
                .payload(&value)
                .partition(0)
                .headers(headers(&[("version", &version)])),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| client_error(format!("writing the shard map to {topic}"))(e))?;
    let (k, t) = (kafka.clone(), topic.to_owned());
    let taken = tokio::task::spawn_blocking(move || read_map(&k, &t))
        .await
        .map_err(|_| KafkaError::NoAnswer("reading the shard map".into()))??;
    match taken {
        Some(m) if *m == *next => Ok(()),
        _ => Err(KafkaError::Topic(format!(
            "another change took version {} of the shard map first; read it again and retry",
            next.version
        ))),
    }
}

/// Follows `topic` from its start on a thread of its own, calling `on_map` with each map taken,
/// until `stop` turns true. A broker away is retried every second.
pub fn follow(
    kafka: KafkaConfig,
    topic: String,
    stop: Arc<AtomicBool>,
    mut on_map: impl FnMut(Arc<ShardMap>) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("cluster-map".into()).spawn(move || {
        let mut log = MapLog::default();
        let mut next_offset = 0i64;
        while !stop.load(Ordering::Acquire) {
            let consumer: BaseConsumer = match client_config(&kafka)
                .set("group.id", "bindledger-cluster-map")
                .set("enable.auto.commit", "false")
                .create()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "the shard map's reader could not start; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&topic, 0, Offset::Offset(next_offset))
                .is_err()
                || consumer.assign(&tpl).is_err()
            {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            while !stop.load(Ordering::Acquire) {
                match consumer.poll(Duration::from_millis(100)) {
                    None => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "reading the shard map; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                        break;
                    }
                    Some(Ok(m)) => {
                        if m.offset() < next_offset {
                            continue;
                        }
                        next_offset = m.offset() + 1;
                        if let Some(map) = log.offer(m.key().unwrap_or_default(), m.payload().unwrap_or_default()) {
                            tracing::info!(version = map.version, "following shard map");
                            on_map(map);
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        bindledger_domain::testing::shard_map(2)
    }

    #[test]
    fn the_first_map_of_each_version_is_taken_and_the_rest_ignored() {
        let v1 = map();
        let v2a = v1.with_slot_moved(3, "s1").unwrap();
        let v2b = v1.with_slot_moved(700, "s0").unwrap();
        let v3 = v2a.with_slot_moved(4, "s1").unwrap();
        let mut log = MapLog::default();
        let bytes = |m: &ShardMap| serde_json::to_vec(m).unwrap();
        let k = MAP_KEY.as_bytes();
        assert_eq!(log.offer(k, &bytes(&v1)).as_deref(), Some(&v1));
        assert!(log.offer(k, b"not a map").is_none());
        assert!(
            log.offer(CHECKPOINT_KEY.as_bytes(), &bytes(&v2b)).is_none(),
            "not a map's key"
        );
        assert_eq!(log.offer(k, &bytes(&v2a)).as_deref(), Some(&v2a));
        assert!(log.offer(k, &bytes(&v2b)).is_none(), "a second version 2 lost the race");
        assert!(log.offer(k, &bytes(&v1)).is_none(), "an older version");
        assert_eq!(log.offer(k, &bytes(&v3)).as_deref(), Some(&v3));
        assert_eq!(log.current().unwrap().version, 3);
    }
}
