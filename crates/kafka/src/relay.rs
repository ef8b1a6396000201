//! The outbox relay: publishes every durable event to Kafka, in global order, keyed by account,
//! with the idempotent producer (`acks=all`). The message value is the event's stored bytes;
//! headers carry `event_type`, `schema_version`, `event_id`, `seq` and `hash`.
//!
//! **Exactly once on the topic, without transactions.** The relay chooses each message's
//! partition itself (Kafka's default partitioner: murmur2 of the key), so an event always goes
//! to the same partition. Within a partition the idempotent producer keeps order without gaps
//! or duplicates, so on every (re)start the relay reads the last message of each partition,
//! learns the highest `seq` it holds, and skips exactly the events already there. Its stored
//! position (saved only after the broker acknowledged) only shortens that scan.
//!
//! **The broker never blocks commands.** The relay runs beside the ledger and only reads the
//! log; when the broker is away it retries with bounded backoff and catches up when it is back.

use crate::{client_error, KafkaError};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::client::{
    ensure_topic, event_headers, header_number, header_text, producer, read_partitions, retention_problem, Backoff,
    ReadFrom, RelayReport, RelayStatus, State,
};
use super::partition::partition_for;
use crate::config::KafkaConfig;
use crate::ledger::Ledger;

/// Events read from the log per pass.
const RELAY_READ_EVENTS: usize = 4096;
/// The saved position is updated at least this often (in events) while publishing.
const RELAY_SAVE_EVERY_EVENTS: u64 = 10_000;

/// Finds `"name":"value"` in canonical event bytes (ids, account and type never contain a
/// quote or a backslash).
fn string_field<'a>(bytes: &'a [u8], marker: &[u8]) -> Option<&'a str> {
    let at = memchr::memmem::find(bytes, marker)? + marker.len();
    let len = memchr::memchr(b'"', &bytes[at..])?;
    std::str::from_utf8(&bytes[at..at + len]).ok()
}

/// What the relay needs of an event without decoding it.
pub(super) struct Routing<'a> {
    pub(super) account: &'a str,
    event_id: &'a str,
    pub(super) event_type: &'a str,
    version: &'a str,
}

pub(super) fn routing(bytes: &[u8]) -> Option<Routing<'_>> {
    let version_end = bytes.iter().position(|b| *b == b',')?;
    Some(Routing {
        version: std::str::from_utf8(bytes.get(5..version_end)?).ok()?,
        event_id: string_field(bytes, b"\"id\":\"")?,
        account: string_field(bytes, b",\"account\":\"")?,
        // The payload is the last field: search from the end.
        event_type: {
            let marker = b"\"payload\":{\"type\":\"";
            let at = memchr::memmem::rfind(bytes, marker)? + marker.len();
            let len = memchr::memchr(b'"', &bytes[at..])?;
            std::str::from_utf8(&bytes[at..at + len]).ok()?
        },
    })
}

pub struct Relay {
    ledger: Ledger,
    config: KafkaConfig,
    pub status: std::sync::Arc<RelayStatus>,
}

type SessionResult = Result<(), KafkaError>;

impl Relay {
    /// Every event up to `position` is on the topic: for `/v1/relay`, and for the ledger's
    /// replicated acknowledgement.
    fn advance(&self, position: u64) {
        self.status.position.store(position, Ordering::Relaxed);
        self.ledger.replicated_to(position);
    }

    pub fn new(ledger: Ledger, config: KafkaConfig) -> Relay {
        let status: std::sync::Arc<RelayStatus> = Default::default();
        // Until a session has read the topic, the position is the one saved when events were
        // last confirmed on it: a restart while the broker is away must not report the whole
        // log as lag.
        let saved = ledger.replication().relay_position(&config.topic).unwrap_or(0);
        status.position.store(saved, Ordering::Relaxed);
        ledger.replicated_to(saved);
        Relay { ledger, config, status }
    }

    pub fn report(ledger: &Ledger, topic: &str, status: &RelayStatus) -> RelayReport {
        let log_events = ledger.log_len();
        // A replica's relay stands by: every event of its log came from the topic, so none is
        // waiting to be published (the replica's own lag is the follower's, in `/healthz`).
        let position = if status.state() == "standby" {
            log_events
        } else {
            status.position.load(Ordering::Relaxed)
        };
        let lag_events = log_events.saturating_sub(position);
        let lag_seconds = if lag_events == 0 {
            0.0
        } else {
            ledger
                .event_bytes(position + 1)
                .ok()
                .flatten()
                .and_then(|b| bindledger_events::decode(&b).ok())
                .map(|e| (chrono::Utc::now() - e.record_time).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0)
        };
        RelayReport {
            state: status.state(),
            topic: topic.to_owned(),
            position,
            log_events,
            lag_events,
            lag_seconds,
            published_total: status.published_total.load(Ordering::Relaxed),
            last_error: status.last_error.lock().expect("status lock").clone(),
            warning: status.warning.lock().expect("status lock").clone(),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Backoff::new(&self.config);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let published_before = self.status.published_total.load(Ordering::Relaxed);
            let result = tokio::select! {
                r = self.session() => r,
                _ = shutdown.changed() => Ok(()),
            };
            if *shutdown.borrow() {
                break;
            }
            if let Err(KafkaError::Fenced { epoch }) = result {
                tracing::error!(epoch, topic = %self.config.topic, "kafka relay: a promotion fenced this node; it takes no more commands (restart it to rejoin as a replica)");
                if let Err(e) = self.ledger.replication().fence(epoch) {
                    tracing::error!(error = %crate::error::chain(&e), "recording that this node was fenced failed");
                }
                *self.status.last_error.lock().expect("status lock") = Some(KafkaError::Fenced { epoch }.to_string());
                self.status.set(State::Fenced);
                return;
            }
            if let Err(e) = result {
                if self.status.published_total.load(Ordering::Relaxed) > published_before {
                    backoff.reset();
                }
                backoff
                    .after_failure(&self.status, "kafka relay", &self.config.topic, e, &mut shutdown)
                    .await;
            }
        }
        self.status.set(State::Stopped);
    }

    /// What the topic holds of this log, per partition: the highest `seq` (0 for none) and the
    /// offset after the last message. Read from where the last session verified each
    /// partition (else from its last message) to its end. Each message must be this log's
    /// event of this node's epoch (same hash: a topic holding another log's events is refused
    /// rather than published over), or one a fenced primary of an older epoch wrote (skipped);
    /// a fence or an event of a newer epoch means a promotion fenced this node.
    fn recover(&self, epoch: u64) -> Result<(Vec<u64>, Vec<i64>), KafkaError> {
        let topic = &self.config.topic;
        let verified = self.ledger.replication().relay_verified(topic)?;
        let starts: Option<Vec<i64>> = verified.as_ref().map(|v| v.iter().map(|(o, _)| *o).collect());
        let mut maxes: Vec<u64> = verified
            .as_ref()
            .map(|v| v.iter().map(|(_, s)| *s).collect())
            .unwrap_or_default();
        let from = starts.as_deref().map_or(ReadFrom::Tails, ReadFrom::Offsets);
        let ends = read_partitions(&self.config, topic, from, |p, m| {
            let header = |name: &str| header_text(m, name);
            let number = |name: &str| header_number(m, name);
            if let Some(fence) = number("fence") {
                return if fence > epoch {
                    if let Some(url) = header("url") {
                        self.ledger.replication().set_successor(&url)?;
                    }
                    Err(KafkaError::Fenced { epoch: fence })
                } else {
                    Ok(())
                };
            }
            let seq = number("seq")
                .ok_or_else(|| KafkaError::Topic(format!("partition {p} holds a message without a seq header")))?;
            let theirs = number("epoch").unwrap_or(0);
            if theirs > epoch {
                return Err(KafkaError::Fenced { epoch: theirs });
            }
            if theirs < epoch {
                return Ok(()); // a fenced primary's, after this node's fence: not in the chain
            }
            let ours = self.ledger.event_bytes(seq)?.filter(|_| seq <= self.ledger.log_len());
            let same = ours.is_some_and(|b| Some(bindledger_events::hash_bytes(&b).to_hex()) == header("hash"));
            if !same {
                return Err(KafkaError::Refused(format!(
                    "topic {topic} partition {p} holds an event {seq} that is not this log's event {seq}: the topic belongs to another log; refusing to publish to it",
                )));
            }
            if maxes.len() <= p {
                maxes.resize(p + 1, 0);
            }
            maxes[p] = maxes[p].max(seq);
            Ok(())
        })?;
        maxes.resize(ends.len(), 0);
        Ok((maxes, ends))
    }

    /// Connects, recovers what the topic holds, then publishes until an error or shutdown.
    async fn session(&self) -> SessionResult {
        self.status.set(State::Connecting);
        ensure_topic(&self.config, &self.config.topic, self.config.partitions).await?;
        let warning = retention_problem(&self.config, &self.config.topic).await;
        if let Some(w) = &warning {
            if self.config.require_retention {
                // Replicated mode: the topic is the replica acknowledgements rely on.
                return Err(KafkaError::Refused(format!("refusing to publish: {w}")));
            }
            tracing::warn!(warning = %w, "kafka relay: the events topic does not keep every event");
        }
        *self.status.warning.lock().expect("status lock") = warning;
        self.status.set(State::Recovering);
        let (epoch, _) = self.ledger.replication().epoch()?;
        let (mut maxes, mut expected) = {
            let relay = self;
            tokio::task::block_in_place(|| relay.recover(epoch))?
        };
        let epoch_text = epoch.to_string();
        let partitions = maxes.len() as i32;
        let topic = self.config.topic.clone();
        let saved = self.ledger.replication().relay_position(&topic)?;
        let on_topic = maxes.iter().copied().min().unwrap_or(0);
        let mut from = saved.min(on_topic) + 1;
        tracing::info!(%topic, partitions, from, "kafka relay: recovered");
        crate::ledger::seams::panic_point("relay");
        let producer = producer(&self.config)?;
        let mut durable = self.ledger.subscribe();
        let mut position = from - 1;
        self.advance(position);
        *self.status.last_error.lock().expect("status lock") = None;
        // Deliveries in send order: (seq, its delivery, or None for an event already on the
        // topic). The front is awaited when the window is full, so the producer never idles
        // and the position only moves past events that are acknowledged, each at the offset
        // right after this node's previous message in its partition (`expected`): nothing
        // foreign, a fence above all, landed in between, so no fencing rule can drop it.
        let mut window: VecDeque<(u64, Option<DeliveryFuture>)> =
            VecDeque::with_capacity(self.config.inflight_events_max.min(65536));
        let mut saved_at = position;
        // One shard of a cluster: each message also names the shard (TOPIC.md).
        let shard = self.ledger.ownership().map().map(|(shard, _)| shard);
        loop {
            let end = self.ledger.log_len();
            if from > end {
                // Caught up with the log: settle what is in flight, then wait for more.
                while let Some((seq, delivery)) = window.pop_front() {
                    if let Some(d) = delivery {
                        landed(&topic, d.await, seq, &mut expected, &mut maxes)?;
                        self.status.published_total.fetch_add(1, Ordering::Relaxed);
                    }
                    position = seq;
                }
                if position != saved_at {
                    self.save(position, &expected, &maxes)?;
                    saved_at = position;
                }
                self.advance(position);
                self.status.set(State::Idle);
                let _ = tokio::time::timeout(Duration::from_secs(1), durable.changed()).await;
                continue;
            }
            self.status.set(State::Publishing);
            for r in self.ledger.raw_events(from).take(RELAY_READ_EVENTS) {
                let (seq, bytes) = r?;
                from = seq + 1;
                let route = routing(&bytes)
                    .ok_or_else(|| crate::Error::corrupt(format!("event {seq}: cannot read its routing fields")))?;
                let partition = partition_for(route.account.as_bytes(), partitions);
                let delivery = if seq <= maxes[partition as usize] {
                    None // already on the topic
                } else {
                    let hash = bindledger_events::hash_bytes(&bytes).to_hex();
                    let headers = event_headers(
                        route.event_type,
                        route.version,
                        route.event_id,
                        &seq.to_string(),
                        &hash,
                        &epoch_text,
                    );
                    let headers = match &shard {
                        Some(id) => headers.insert(rdkafka::message::Header {
                            key: "shard",
                            value: Some(id.as_str()),
                        }),
                        None => headers,
                    };
                    let record = FutureRecord::to(&topic)
                        .partition(partition)
                        .key(route.account)
                        .payload(&bytes[..])
                        .headers(headers);
                    match producer.send_result(record) {
                        Ok(delivery) => Some(delivery),
                        Err((e, _)) => return Err(client_error(format!("queueing event {seq}"))(e)),
                    }
                };
                window.push_back((seq, delivery));
                while window.len() >= self.config.inflight_events_max {
                    let (seq, delivery) = window.pop_front().expect("the window is full");
                    if let Some(d) = delivery {
                        landed(&topic, d.await, seq, &mut expected, &mut maxes)?;
                        self.status.published_total.fetch_add(1, Ordering::Relaxed);
                    }
                    position = seq;
                }
            }
            // Count what has settled at the front without waiting.
            while let Some((_, Some(d))) = window.front_mut() {
                match futures_util::FutureExt::now_or_never(d) {
                    Some(result) => {
                        let (seq, _) = window.pop_front().expect("front exists");
                        landed(&topic, result, seq, &mut expected, &mut maxes)?;
                        self.status.published_total.fetch_add(1, Ordering::Relaxed);
                        position = seq;
                    }
                    None => break,
                }
            }
            while let Some((seq, None)) = window.front() {
                position = *seq;
                window.pop_front();
            }
            self.advance(position);
            if position >= saved_at + RELAY_SAVE_EVERY_EVENTS {
                self.save(position, &expected, &maxes)?;
                saved_at = position;
            }
        }
    }
}

impl Relay {
    /// Saves the position with what each partition was verified to hold up to it.
    fn save(&self, position: u64, expected: &[i64], maxes: &[u64]) -> Result<(), KafkaError> {
        let verified: Vec<(i64, u64)> = expected.iter().copied().zip(maxes.iter().copied()).collect();
        self.ledger
            .replication()
            .set_relay_verified(&self.config.topic, &verified)?;
        self.ledger
            .replication()
            .set_relay_position(&self.config.topic, position)?;
        Ok(())
    }
}

/// Event `seq`'s delivery: acknowledged, and at the offset right after this node's previous
/// message in its partition.
fn landed<Dropped>(
    topic: &str,
    result: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, Dropped>,
    seq: u64,
    expected: &mut [i64],
    maxes: &mut [u64],
) -> SessionResult {
    let delivery = result
        .map_err(|_| KafkaError::Topic("the producer was dropped".into()))?
        .map_err(|(e, _)| delivery_error(e))?;
    let p = delivery.partition as usize;
    if delivery.offset != expected[p] {
        return Err(KafkaError::Moved {
            topic: topic.to_owned(),
            partition: delivery.partition,
            expected: expected[p],
            found: delivery.offset,
        });
    }
    expected[p] += 1;
    maxes[p] = maxes[p].max(seq);
    Ok(())
}

fn delivery_error(e: RdKafkaError) -> KafkaError {
    client_error("delivering an event")(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_fields_come_from_the_canonical_bytes() {
        let bytes = br#"{"v":2,"id":"0192-ab","seq":7,"account":"alice","account_seq":1,"payload":{"type":"wallet_bound","x":1}}"#;
        let r = routing(bytes).unwrap();
        assert_eq!(
            (r.version, r.event_id, r.account, r.event_type),
            ("2", "0192-ab", "alice", "wallet_bound")
        );
        let p = partition_for(b"alice", 6);
        assert!((0..6).contains(&p));
        assert_eq!(p, partition_for(b"alice", 6));
    }
}
