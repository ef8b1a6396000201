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

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ledger::Ledger;

/// Events read from the log per pass.
const RELAY_READ_EVENTS: usize = 4096;
/// The saved position is updated at least this often (in events) while publishing.
const RELAY_SAVE_EVERY_EVENTS: u64 = 10_000;

/// Recovery reads each partition's tail until nothing new arrives for this long.
const RECOVERY_QUIET: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `127.0.0.1:9092`. Empty (the default): no relay.
    /// Env `BINDLEDGER_KAFKA_BROKERS`.
    pub brokers: String,
    /// The events topic. Default `bindledger.events`. Env `BINDLEDGER_KAFKA_TOPIC`.
    pub topic: String,
    /// The alerts topic (one partition, so alerts keep their order). Default
    /// `bindledger.alerts`. Env `BINDLEDGER_KAFKA_ALERTS_TOPIC`.
    pub alerts_topic: String,
    /// Partitions when the relay creates the topic. Default 6.
    pub partitions: i32,
    /// Replication factor when the relay creates the topic. Default 1.
    pub replication_factor: i32,
    /// Events sent before waiting for their acknowledgements. Default 20,000.
    pub inflight_events_max: usize,
    /// librdkafka `message.timeout.ms`: a message not acknowledged by then fails and the relay
    /// recovers. Default 30,000.
    pub message_timeout_ms: u64,
    /// Longest wait between two attempts while the broker is away. Default 5,000 ms.
    pub backoff_ms_max: u64,
    /// Extra librdkafka properties (security, SASL, ...), given as they are.
    pub properties: BTreeMap<String, String>,
    /// How long the producer gathers messages into a batch (librdkafka's `linger.ms`): larger
    /// batches, against latency. Default 5 ms, and 0 in replicated mode, where every command
    /// waits for it.
    pub linger_ms: Option<u64>,
    /// Refuse (rather than warn about) an events topic that may delete or compact records.
    /// Set by the node in replicated mode; not read from the configuration file.
    #[serde(skip)]
    pub require_retention: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topic: "bindledger.events".into(),
            alerts_topic: "bindledger.alerts".into(),
            partitions: 6,
            replication_factor: 1,
            inflight_events_max: 20_000,
            message_timeout_ms: 30_000,
            backoff_ms_max: 5_000,
            properties: BTreeMap::new(),
            linger_ms: None,
            require_retention: false,
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Kafka's default partitioner (murmur2 of the key, as the Java client computes it), so that
/// any client keyed by account agrees with the relay.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions
}

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

/// Finds `"name":"value"` in canonical event bytes (ids, account and type never contain a
/// quote or a backslash).
fn string_field<'a>(bytes: &'a [u8], marker: &[u8]) -> Option<&'a str> {
    let at = memchr::memmem::find(bytes, marker)? + marker.len();
    let len = memchr::memchr(b'"', &bytes[at..])?;
    std::str::from_utf8(&bytes[at..at + len]).ok()
}

/// What the relay needs of an event without decoding it.
struct Routing<'a> {
    account: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    version: &'a str,
}

fn routing(bytes: &[u8]) -> Option<Routing<'_>> {
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

/// The wait between two sessions of a relay (events, alerts, checkpoints) after a failure: from
/// 100 ms, doubling up to `kafka.backoff_ms_max`.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(config: &KafkaConfig) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_millis(config.backoff_ms_max.max(100)),
        }
    }

    /// The next failure waits the shortest time again (the last session made progress).
    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// Records a failed session in `status`, then waits (or until shutdown).
    pub(crate) async fn after_failure(
        &mut self,
        status: &RelayStatus,
        what: &str,
        topic: &str,
        error: String,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        tracing::warn!(error = %error, %topic, backoff_ms = self.next.as_millis() as u64, "{what}: will retry");
        *status.last_error.lock().expect("status lock") = Some(error);
        status.set(State::Backoff);
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = shutdown.changed() => {}
        }
        self.next = (self.next * 2).min(self.max);
    }
}

/// The relay's state, for `/metrics`, `/v1/relay` and `bindledger status`.
#[derive(Default)]
pub struct RelayStatus {
    state: AtomicU8,
    /// Every event up to this seq is on the topic.
    pub position: AtomicU64,
    pub published_total: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// A problem that does not stop publishing (a topic that may delete events).
    pub warning: Mutex<Option<String>>,
}

const STATES: &[&str] = &[
    "starting",
    "connecting",
    "recovering",
    "publishing",
    "idle",
    "backoff",
    "stopped",
    "standby",
];

#[derive(Clone, Copy)]
pub(crate) enum State {
    Connecting = 1,
    Recovering = 2,
    Publishing = 3,
    Idle = 4,
    Backoff = 5,
    Stopped = 6,
    /// On a replica: not started until it is promoted.
    Standby = 7,
}

impl RelayStatus {
    pub fn state(&self) -> &'static str {
        STATES[self.state.load(Ordering::Relaxed) as usize]
    }
    pub(crate) fn set(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    /// Marks a relay of a replica, which runs only once the replica is promoted.
    pub fn set_standby(&self) {
        self.set(State::Standby);
    }
}

/// The relay's status as a person or a script reads it.
#[derive(Debug, serde::Serialize)]
pub struct RelayReport {
    pub state: &'static str,
    pub topic: String,
    pub position: u64,
    pub log_events: u64,
    pub lag_events: u64,
    /// Age of the oldest event not yet on the topic (0 when caught up).
    pub lag_seconds: f64,
    pub published_total: u64,
    pub last_error: Option<String>,
    pub warning: Option<String>,
}

pub struct Relay {
    ledger: Ledger,
    config: KafkaConfig,
    pub status: std::sync::Arc<RelayStatus>,
}

type SessionResult = Result<(), String>;

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
        let saved = ledger.relay_position(&config.topic).unwrap_or(0);
        status.position.store(saved, Ordering::Relaxed);
        ledger.replicated_to(saved);
        Relay { ledger, config, status }
    }

    pub fn report(ledger: &Ledger, topic: &str, status: &RelayStatus) -> RelayReport {
        let position = status.position.load(Ordering::Relaxed);
        let log_events = ledger.log_len();
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

    /// The highest `seq` in each partition (0 for an empty one), read from its last message,
    /// which must be this log's event with that `seq` (same hash): a topic holding another
    /// log's events is refused rather than published over.
    fn recover(&self) -> Result<Vec<u64>, String> {
        let mut maxes: Vec<u64> = Vec::new();
        let partitions = read_tails(&self.config, &self.config.topic, |p, m| {
            let header = |name: &str| header_text(m, name);
            let seq = header("seq")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("partition {p} holds a message without a seq header"))?;
            let ours = self
                .ledger
                .event_bytes(seq)
                .map_err(|e| e.to_string())?
                .filter(|_| seq <= self.ledger.log_len());
            let same = ours.is_some_and(|b| Some(bindledger_events::hash_bytes(&b).to_hex()) == header("hash"));
            if !same {
                return Err(format!(
                    "topic {} partition {p} holds an event {seq} that is not this log's event {seq}: the topic belongs to another log; refusing to publish to it",
                    self.config.topic
                ));
            }
            if maxes.len() <= p {
                maxes.resize(p + 1, 0);
            }
            maxes[p] = maxes[p].max(seq);
            Ok(())
        })?;
        maxes.resize(partitions, 0);
        Ok(maxes)
    }

    /// Connects, recovers what the topic holds, then publishes until an error or shutdown.
    async fn session(&self) -> SessionResult {
        self.status.set(State::Connecting);
        ensure_topic(&self.config, &self.config.topic, self.config.partitions).await?;
        let warning = retention_problem(&self.config, &self.config.topic).await;
        if let Some(w) = &warning {
            if self.config.require_retention {
                // Replicated mode: the topic is the replica acknowledgements rely on.
                return Err(format!("refusing to publish: {w}"));
            }
            tracing::warn!(warning = %w, "kafka relay: the events topic does not keep every event");
        }
        *self.status.warning.lock().expect("status lock") = warning;
        self.status.set(State::Recovering);
        let maxes = {
            let relay = self;
            tokio::task::block_in_place(|| relay.recover())?
        };
        let partitions = maxes.len() as i32;
        let topic = self.config.topic.clone();
        let saved = self.ledger.relay_position(&topic).map_err(|e| e.to_string())?;
        let on_topic = maxes.iter().copied().min().unwrap_or(0);
        let mut from = saved.min(on_topic) + 1;
        tracing::info!(%topic, partitions, from, "kafka relay: recovered");
        let producer = producer(&self.config)?;
        let mut durable = self.ledger.subscribe();
        let mut position = from - 1;
        self.advance(position);
        *self.status.last_error.lock().expect("status lock") = None;
        // Deliveries in send order: (seq, its delivery, or None for an event already on the
        // topic). The front is awaited when the window is full, so the producer never idles
        // and the position only moves past events that are acknowledged.
        let mut window: VecDeque<(u64, Option<DeliveryFuture>)> =
            VecDeque::with_capacity(self.config.inflight_events_max.min(65536));
        let mut saved_at = position;
        loop {
            let end = self.ledger.log_len();
            if from > end {
                // Caught up with the log: settle what is in flight, then wait for more.
                while let Some((seq, delivery)) = window.pop_front() {
                    if let Some(d) = delivery {
                        settle(d).await?;
                        self.status.published_total.fetch_add(1, Ordering::Relaxed);
                    }
                    position = seq;
                }
                if position != saved_at {
                    self.ledger
                        .set_relay_position(&topic, position)
                        .map_err(|e| e.to_string())?;
                    saved_at = position;
                }
                self.advance(position);
                self.status.set(State::Idle);
                let _ = tokio::time::timeout(Duration::from_secs(1), durable.changed()).await;
                continue;
            }
            self.status.set(State::Publishing);
            for r in self.ledger.raw_events(from).take(RELAY_READ_EVENTS) {
                let (seq, bytes) = r.map_err(|e| e.to_string())?;
                from = seq + 1;
                let route = routing(&bytes).ok_or_else(|| format!("event {seq}: cannot read its routing fields"))?;
                let partition = partition_for(route.account.as_bytes(), partitions);
                let delivery = if seq <= maxes[partition as usize] {
                    None // already on the topic
                } else {
                    let hash = bindledger_events::hash_bytes(&bytes).to_hex();
                    let headers =
                        event_headers(route.event_type, route.version, route.event_id, &seq.to_string(), &hash);
                    let record = FutureRecord::to(&topic)
                        .partition(partition)
                        .key(route.account)
                        .payload(&bytes[..])
                        .headers(headers);
                    match producer.send_result(record) {
                        Ok(delivery) => Some(delivery),
                        Err((e, _)) => return Err(format!("queueing event {seq}: {e}")),
                    }
                };
                window.push_back((seq, delivery));
                while window.len() >= self.config.inflight_events_max {
                    let (seq, delivery) = window.pop_front().expect("the window is full");
                    if let Some(d) = delivery {
                        settle(d).await?;
                        self.status.published_total.fetch_add(1, Ordering::Relaxed);
                    }
                    position = seq;
                }
            }
            // Count what has settled at the front without waiting.
            while let Some((_, Some(d))) = window.front_mut() {
                match futures_util::FutureExt::now_or_never(d) {
                    Some(result) => {
                        result
                            .map_err(|_| "the producer was dropped".to_string())?
                            .map_err(|(e, _)| delivery_error(e))?;
                        let (seq, _) = window.pop_front().expect("front exists");
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
                self.ledger
                    .set_relay_position(&topic, position)
                    .map_err(|e| e.to_string())?;
                saved_at = position;
            }
        }
    }
}

/// The longest wait for an admin request's answer (its own timeout is 5 s).
const ADMIN_ANSWER_MAX: Duration = Duration::from_secs(15);

/// Creates `topic` with `partitions` unless it exists.
pub async fn ensure_topic(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    // The topics are the ledger's replica and an auditor's copy: Kafka must never delete or
    // compact them. Retention is a century rather than -1 (infinite): tansu 0.6's sqlite
    // storage drops every record of a topic with retention.ms=-1 when it restarts, and a
    // century is as good as forever to Kafka.
    let retention = RETENTION_MS_MIN.to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(config.replication_factor))
        .set("retention.ms", &retention)
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete");
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    // librdkafka times the request out itself; this bound holds if its answer never comes (a
    // relay stuck here would neither publish nor say why).
    let results = tokio::time::timeout(ADMIN_ANSWER_MAX, admin.create_topics([&new], &opts))
        .await
        .map_err(|_| {
            format!(
                "creating topic {topic}: no answer from the brokers within {} s",
                ADMIN_ANSWER_MAX.as_secs()
            )
        })?
        .map_err(|e| format!("creating topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("creating topic {t}: {code}")),
        }
    }
    Ok(())
}

/// The shortest retention taken as keeping every record: a century, in milliseconds.
pub const RETENTION_MS_MIN: i64 = 100 * 365 * 24 * 3600 * 1000;

/// Whether an existing topic keeps every record: `None` when it does (or when the broker does
/// not describe topic configurations), else what is wrong, for a warning.
pub(crate) async fn retention_problem(config: &KafkaConfig, topic: &str) -> Option<String> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = config.client_config().create().ok()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let described = tokio::time::timeout(
        ADMIN_ANSWER_MAX,
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
    )
    .await
    .ok()?
    .ok()?;
    let resource = described.into_iter().next()?.ok()?;
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    let mut problems = Vec::new();
    if let Some(ms) =
        value("retention.ms").filter(|v| v != "-1" && v.parse::<i64>().map_or(true, |ms| ms < RETENTION_MS_MIN))
    {
        problems.push(format!("retention.ms={ms}"));
    }
    if let Some(bytes) = value("retention.bytes").filter(|v| v != "-1") {
        problems.push(format!("retention.bytes={bytes}"));
    }
    if let Some(policy) = value("cleanup.policy").filter(|v| v.contains("compact")) {
        problems.push(format!("cleanup.policy={policy}"));
    }
    (!problems.is_empty()).then(|| {
        format!("topic {topic} may lose events ({}): it is the ledger's replica; set retention.ms=-1 (or a century or more), retention.bytes=-1, cleanup.policy=delete", problems.join(", "))
    })
}

/// The idempotent producer (`acks=all`) both relays use.
pub(crate) fn producer(config: &KafkaConfig) -> Result<FutureProducer, String> {
    config
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.unwrap_or(5).to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            (config.inflight_events_max * 2).max(1000).to_string(),
        )
        .create()
        .map_err(|e| format!("producer: {e}"))
}

/// A header's value as text.
/// The headers of an event's message (TOPIC.md): its type, schema version, id, `seq` and the
/// SHA-256 of its bytes.
pub(crate) fn event_headers(event_type: &str, version: &str, event_id: &str, seq: &str, hash: &str) -> OwnedHeaders {
    [
        ("event_type", event_type),
        ("schema_version", version),
        ("event_id", event_id),
        ("seq", seq),
        ("hash", hash),
    ]
    .into_iter()
    .fold(OwnedHeaders::new_with_capacity(5), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

pub(crate) fn header_text<M: Message>(m: &M, name: &str) -> Option<String> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    })
}

/// Reads the last message(s) of every non-empty partition of `topic`, handing each to
/// `on_message` (partition, message); returns the number of partitions. Blocking.
pub(crate) fn read_tails(
    config: &KafkaConfig,
    topic: &str,
    mut on_message: impl FnMut(usize, &rdkafka::message::BorrowedMessage<'_>) -> Result<(), String>,
) -> Result<usize, String> {
    let consumer: BaseConsumer = config
        .client_config()
        .set("group.id", "bindledger-relay-recovery")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("recovery consumer: {e}"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata: {e}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("topic {topic} has no partitions"))?;
    let mut tpl = TopicPartitionList::new();
    let mut waiting = 0;
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("watermarks of partition {p}: {e}"))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(high - 1))
                .map_err(|e| e.to_string())?;
            waiting += 1;
        }
    }
    if waiting == 0 {
        return Ok(partitions);
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    // Read from there to the end: a broker may report the high watermark as the start of the
    // last record batch (tansu 0.6 does), so the last message is not always at `high - 1`.
    // Done when every non-empty partition has answered and nothing new came for a quiet
    // period (nothing is being produced while a relay recovers).
    let mut seen = vec![false; partitions];
    let mut last_message = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting > 0 || last_message.elapsed() < RECOVERY_QUIET {
        if Instant::now() > deadline {
            return Err("timed out reading the last messages of the partitions".into());
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => return Err(format!("reading the last messages: {e}")),
            Some(Ok(m)) => {
                last_message = Instant::now();
                let p = m.partition() as usize;
                on_message(p, &m)?;
                if !seen[p] {
                    seen[p] = true;
                    waiting -= 1;
                }
            }
        }
    }
    Ok(partitions)
}

async fn settle(d: DeliveryFuture) -> SessionResult {
    match d.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(delivery_error(e)),
        Err(_) => Err("the producer was dropped".into()),
    }
}

fn delivery_error(e: KafkaError) -> String {
    format!("delivery failed: {e}")
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

/// Messages the merge buffers per partition (librdkafka's own queue per partition is bounded
/// by `queued.max.messages.kbytes`, set below).
const KAFKA_BUFFER_PER_PARTITION: usize = 4096;

/// A consumer of every partition of one topic, each partition with its own queue, so that a
/// reader takes from the partition it needs and the others wait in librdkafka's bounded
/// queues (which stop fetching when full). This is how the merges below bound their memory;
/// not with `pause`/`resume` or `seek`: against the development broker (tansu 0.6), a
/// partition fetched again from an offset inside a record batch skipped the batch's records.
pub struct PartitionedConsumer {
    consumer: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
    queues: Vec<rdkafka::consumer::base_consumer::PartitionQueue<rdkafka::consumer::DefaultConsumerContext>>,
    pub topic: String,
    /// Per partition: the next offset to take (records before it are skipped).
    pub next_offset: Vec<i64>,
    /// Records that reached the consumer's main queue before the partitions' queues were split
    /// off (librdkafka may fetch as soon as partitions are assigned): taken first.
    stray: Vec<std::collections::VecDeque<SeqRecord>>,
}

/// One record: its `seq` header, its value and its offset.
pub type SeqRecord = (u64, bytes::Bytes, i64);

impl PartitionedConsumer {
    /// Opens every partition of `topic` at `starts` (one per partition; `None`: the beginning).
    /// `Ok(None)` when the topic does not exist or has no partitions.
    pub fn open(
        mut client: ClientConfig,
        topic: &str,
        starts: Option<&[i64]>,
    ) -> Result<Option<PartitionedConsumer>, String> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::TopicPartitionList;
        let consumer: BaseConsumer = client
            .set(
                "group.id",
                format!("bindledger-reader-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("queued.max.messages.kbytes", "8192")
            .set("queued.min.messages", "10000")
            // A follower wants records as soon as they are there, not a fuller fetch later.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| format!("kafka consumer: {e}"))?;
        let md = consumer
            .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        let partitions = md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Ok(None);
        }
        let starts: Vec<i64> = match starts {
            Some(s) if s.len() == partitions => s.to_vec(),
            _ => vec![0; partitions],
        };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in starts.iter().enumerate() {
            let offset = if *o > 0 { Offset::Offset(*o) } else { Offset::Beginning };
            tpl.add_partition_offset(topic, p as i32, offset)
                .map_err(|e| e.to_string())?;
        }
        let consumer = std::sync::Arc::new(consumer);
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let queues = (0..partitions as i32)
            .map(|p| {
                consumer
                    .split_partition_queue(topic, p)
                    .ok_or_else(|| format!("{topic} partition {p}: no queue"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut reader = PartitionedConsumer {
            consumer,
            queues,
            topic: topic.to_owned(),
            next_offset: starts.iter().map(|o| (*o).max(0)).collect(),
            stray: vec![Default::default(); partitions],
        };
        // What reached the main queue before the split comes first.
        reader.serve()?;
        Ok(Some(reader))
    }

    pub fn partitions(&self) -> usize {
        self.queues.len()
    }

    /// The high watermark of partition `p` as the broker reports it now.
    pub fn high_watermark(&self, p: usize) -> Result<i64, String> {
        use rdkafka::consumer::Consumer;
        self.consumer
            .fetch_watermarks(&self.topic, p as i32, std::time::Duration::from_secs(10))
            .map(|(_, high)| high)
            .map_err(|e| format!("the end of {} partition {p}: {e}", self.topic))
    }

    /// Unparks the calling thread whenever a partition's queue receives records, so that a
    /// follower can sleep with `std::thread::park_timeout` while the topic is quiet.
    pub fn wake_this_thread_on_records(&mut self) {
        for q in &mut self.queues {
            let t = std::thread::current();
            q.set_nonempty_callback(move || t.unpark());
        }
    }

    /// Serves librdkafka's callbacks (errors, statistics); call it now and then. A record
    /// found on the main queue is kept for its partition.
    pub fn serve(&mut self) -> Result<(), String> {
        loop {
            match self.consumer.poll(std::time::Duration::ZERO) {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("reading {}: {e}", self.topic)),
                Some(Ok(m)) => {
                    let p = m.partition() as usize;
                    if p < self.stray.len() {
                        let record = Self::record(&self.topic, p, &m)?;
                        self.stray[p].push_back(record);
                    }
                }
            }
        }
    }

    fn record(topic: &str, p: usize, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<SeqRecord, String> {
        use rdkafka::message::Message;
        // The `seq` header (events), else the key (checkpoints are keyed by seq).
        let seq = header_text(m, "seq")
            .and_then(|v| v.parse().ok())
            .or_else(|| std::str::from_utf8(m.key()?).ok()?.parse().ok())
            .ok_or_else(|| format!("{topic} partition {p} offset {} has no seq header", m.offset()))?;
        Ok((
            seq,
            bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            m.offset(),
        ))
    }

    /// Moves records of partition `p` into `buffer` until it holds `max`, waiting at most
    /// `wait` for the first; returns how many it moved.
    pub fn fill(
        &mut self,
        p: usize,
        buffer: &mut std::collections::VecDeque<SeqRecord>,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<usize, String> {
        use rdkafka::message::Message;
        let mut moved = 0;
        let mut wait = wait;
        while buffer.len() < max {
            if let Some(record) = self.stray[p].pop_front() {
                if record.2 >= self.next_offset[p] {
                    self.next_offset[p] = record.2 + 1;
                    buffer.push_back(record);
                    moved += 1;
                }
                continue;
            }
            match self.queues[p].poll(wait) {
                None => break,
                Some(Err(e)) => return Err(format!("reading {} partition {p}: {e}", self.topic)),
                Some(Ok(m)) => {
                    wait = std::time::Duration::ZERO;
                    if m.offset() < self.next_offset[p] {
                        continue;
                    }
                    self.next_offset[p] = m.offset() + 1;
                    buffer.push_back(Self::record(&self.topic, p, &m)?);
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }
}

/// The events topic read as one log: every partition from its start to its end, merged on the
/// `seq` header (a k-way merge: each partition is in global order already), with bounded
/// memory ([`PartitionedConsumer`]). A partition is at its end once it has reached the high
/// watermark it had when reading began and has then delivered nothing for [`KAFKA_QUIET`]
/// (both: a broker may report a watermark short of its last record, as tansu 0.6 does). Ties
/// (a duplicate across partitions) keep both, in partition order, for the audit to name.
pub struct TopicReader {
    reader: PartitionedConsumer,
    buffers: Vec<std::collections::VecDeque<SeqRecord>>,
    /// Per partition: when it last delivered, whether it has ended, its end when reading began.
    active: Vec<std::time::Instant>,
    ended: Vec<bool>,
    ends: Vec<i64>,
    failed: bool,
}

/// How long a partition past its high watermark must deliver nothing to count as read to its end.
pub const KAFKA_QUIET: std::time::Duration = std::time::Duration::from_secs(2);
/// A partition that makes no progress for this long short of its end fails the read.
const KAFKA_STALLED: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens `topic` for reading from its start (`client`: the brokers and any security settings).
pub fn read_topic(client: ClientConfig, topic: &str) -> Result<TopicReader, String> {
    let reader =
        PartitionedConsumer::open(client, topic, None)?.ok_or_else(|| format!("topic {topic} has no partitions"))?;
    let n = reader.partitions();
    let ends = (0..n)
        .map(|p| reader.high_watermark(p))
        .collect::<Result<Vec<_>, _>>()?;
    let now = std::time::Instant::now();
    Ok(TopicReader {
        reader,
        buffers: vec![Default::default(); n],
        active: vec![now; n],
        ended: vec![false; n],
        ends,
        failed: false,
    })
}

impl TopicReader {
    /// True once partition `p` is read to its end (see [`TopicReader`]).
    fn finished(&mut self, p: usize) -> std::result::Result<bool, String> {
        if self.ended[p] || !self.buffers[p].is_empty() {
            return Ok(self.ended[p]);
        }
        let quiet = self.active[p].elapsed();
        if self.reader.next_offset[p] >= self.ends[p] && quiet >= KAFKA_QUIET {
            self.ended[p] = true;
        } else if quiet >= KAFKA_STALLED {
            return Err(format!(
                "{} partition {p} stalled at offset {} of {}",
                self.reader.topic, self.reader.next_offset[p], self.ends[p]
            ));
        }
        Ok(self.ended[p])
    }

    fn step(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        loop {
            // Take what each partition without a buffered record has ready now.
            let mut waiting = None;
            for p in 0..self.buffers.len() {
                if self.ended[p] || !self.buffers[p].is_empty() {
                    continue;
                }
                if self.reader.fill(
                    p,
                    &mut self.buffers[p],
                    KAFKA_BUFFER_PER_PARTITION,
                    std::time::Duration::ZERO,
                )? > 0
                {
                    self.active[p] = std::time::Instant::now();
                } else if !self.finished(p)? {
                    waiting.get_or_insert(p);
                }
            }
            let Some(p) = waiting else {
                // Every partition has its next record buffered, or has none left: the smallest.
                let Some(p) = (0..self.buffers.len())
                    .filter(|&p| !self.buffers[p].is_empty())
                    .min_by_key(|&p| self.buffers[p][0].0)
                else {
                    return Ok(None);
                };
                let (_, value, _) = self.buffers[p].pop_front().expect("not empty");
                return Ok(Some(value.to_vec()));
            };
            self.reader.serve()?;
            if self.reader.fill(
                p,
                &mut self.buffers[p],
                KAFKA_BUFFER_PER_PARTITION,
                std::time::Duration::from_millis(100),
            )? > 0
            {
                self.active[p] = std::time::Instant::now();
            }
        }
    }
}

impl Iterator for TopicReader {
    type Item = Result<Vec<u8>, String>;
    fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(v) => v.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
