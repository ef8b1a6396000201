//! What every Kafka user in the ledger shares: client settings, the idempotent producer,
//! topic creation and its retention check, message headers, the partition tails read on
//! recovery, the backoff between sessions and the status each relay reports.

use crate::{client_error, KafkaError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::KafkaConfig;

/// Recovery reads each partition's tail until nothing new arrives for this long.
const RECOVERY_QUIET: Duration = Duration::from_millis(300);

/// librdkafka settings for `config`: the brokers and any extra properties, as given.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
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
        error: KafkaError,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        tracing::warn!(error = %error, %topic, backoff_ms = self.next.as_millis() as u64, "{what}: will retry");
        *status.last_error.lock().expect("status lock") = Some(error.to_string());
        status.set(State::Backoff);
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = shutdown.changed() => {}
        }
        self.next = (self.next * 2).min(self.max);
    }
}

/// A publisher's life: runs `$session` (an expression that makes one session's future, e.g.
/// `self.session()`) until `$shutdown` turns true, again after each failure with bounded
/// backoff; then marks `$status` stopped. The alerts and the notifications topics run this way.
macro_rules! run_sessions {
    ($config:expr, $status:expr, $what:expr, $topic:expr, $shutdown:ident, $session:expr) => {{
        let mut backoff = $crate::client::Backoff::new($config);
        while !*$shutdown.borrow() {
            let result = tokio::select! {
                r = $session => r,
                _ = $shutdown.changed() => Ok(()),
            };
            if let Err(e) = result {
                backoff.after_failure($status, $what, $topic, e, &mut $shutdown).await;
            }
        }
        $status.set($crate::client::State::Stopped);
    }};
}
pub(crate) use run_sessions;

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
    "fenced",
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
    /// A promotion fenced this node: it publishes nothing more.
    Fenced = 8,
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

/// The longest wait for an admin request's answer (its own timeout is 5 s).
const ADMIN_ANSWER_MAX: Duration = Duration::from_secs(15);

/// Creates `topic` with `partitions` unless it exists.
/// Whether a broker answers at `kafka.brokers` within `within` and holds `topic` with at least
/// one partition (how many is the answer): asked before a tool reads or creates anything
/// (restore, consume), so that a wrong address or topic is said in one sentence, at once,
/// with nothing left behind.
pub fn require_topic(config: &KafkaConfig, topic: &str, within: Duration) -> Result<usize, KafkaError> {
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", "bindledger-probe")
        .create()
        .map_err(client_error("a Kafka client"))?;
    let metadata = consumer.fetch_metadata(Some(topic), within).map_err(|_| {
        KafkaError::Topic(format!(
            "no Kafka broker answered at {} within {} s: is it running, and is the address right?",
            config.brokers,
            within.as_secs()
        ))
    })?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
        _ => Err(KafkaError::Topic(format!(
            "the topic {topic} does not exist on {} (start the ledger with kafka.brokers set, or give --topic)",
            config.brokers
        ))),
    }
}

pub async fn ensure_topic(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    ensure_topic_with(config, topic, partitions, "delete").await
}

/// [`ensure_topic`] with a cleanup policy: `delete` (with the century's retention: kept) or
/// `compact` (the keys topic: the last record of each key is kept).
pub async fn ensure_topic_with(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    cleanup_policy: &str,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config).create().map_err(client_error("admin client"))?;
    // The topics are the ledger's replica and an auditor's copy: Kafka must never delete or
    // compact them. Retention is a century rather than -1 (infinite): tansu 0.6's sqlite
    // storage drops every record of a topic with retention.ms=-1 when it restarts, and a
    // century is as good as forever to Kafka.
    let retention = RETENTION_MS_MIN.to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(config.replication_factor))
        .set("retention.ms", &retention)
        .set("retention.bytes", "-1")
        .set("cleanup.policy", cleanup_policy);
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    // librdkafka times the request out itself; this bound holds if its answer never comes (a
    // relay stuck here would neither publish nor say why).
    let results = tokio::time::timeout(ADMIN_ANSWER_MAX, admin.create_topics([&new], &opts))
        .await
        .map_err(|_| {
            KafkaError::NoAnswer(format!(
                "creating topic {topic} (waited {} s)",
                ADMIN_ANSWER_MAX.as_secs()
            ))
        })?
        .map_err(client_error(format!("creating topic {topic}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(KafkaError::Topic(format!("creating topic {t}: {code}"))),
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
    let admin: AdminClient<DefaultClientContext> = client_config(config).create().ok()?;
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
pub(crate) fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.unwrap_or(5).to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            (config.inflight_events_max * 2).max(1000).to_string(),
        )
        .create()
        .map_err(client_error("producer"))
}

/// The headers of an event's message (TOPIC.md): its type, schema version, id, `seq`, the
/// SHA-256 of its bytes, and the epoch of the primary that published it.
pub fn event_headers(
    event_type: &str,
    version: &str,
    event_id: &str,
    seq: &str,
    hash: &str,
    epoch: &str,
) -> OwnedHeaders {
    headers(&[
        ("event_type", event_type),
        ("schema_version", version),
        ("event_id", event_id),
        ("seq", seq),
        ("hash", hash),
        ("epoch", epoch),
    ])
}

/// A message's headers, as text, in this order (every topic's messages carry theirs).
pub(crate) fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs
        .iter()
        .fold(OwnedHeaders::new_with_capacity(pairs.len()), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        })
}

/// A header's value as a decimal number (`seq`, `epoch`, `fence`).
pub fn header_number<M: Message>(m: &M, name: &str) -> Option<u64> {
    header_text(m, name).and_then(|v| v.parse().ok())
}

/// A header's value as text.
pub fn header_text<M: Message>(m: &M, name: &str) -> Option<String> {
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
    on_message: impl FnMut(usize, &rdkafka::message::BorrowedMessage<'_>) -> Result<(), KafkaError>,
) -> Result<usize, KafkaError> {
    read_partitions(config, topic, ReadFrom::Tails, on_message).map(|ends| ends.len())
}

/// Where [`read_partitions`] starts in each partition.
#[derive(Clone, Copy)]
pub(crate) enum ReadFrom<'a> {
    /// Its last message.
    Tails,
    /// Its first.
    Beginning,
    /// These offsets, one per partition (else its last message).
    Offsets(&'a [i64]),
}

/// Reads every partition of `topic` from `from` to its end, handing each message to
/// `on_message` (partition, message); returns each partition's end: the offset after its last
/// message. Blocking.
pub(crate) fn read_partitions(
    config: &KafkaConfig,
    topic: &str,
    from: ReadFrom<'_>,
    mut on_message: impl FnMut(usize, &rdkafka::message::BorrowedMessage<'_>) -> Result<(), KafkaError>,
) -> Result<Vec<i64>, KafkaError> {
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", "bindledger-relay-recovery")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(client_error("recovery consumer"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(client_error("metadata"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .ok_or_else(|| KafkaError::Topic(format!("topic {topic} has no partitions")))?;
    let mut tpl = TopicPartitionList::new();
    let mut waiting = 0;
    let mut expecting = vec![false; partitions];
    let mut ends = vec![0i64; partitions];
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p as i32, timeout)
            .map_err(client_error(format!("watermarks of partition {p}")))?;
        let start = match from {
            ReadFrom::Offsets(s) if s.len() == partitions => s[p].max(low),
            ReadFrom::Beginning => low,
            _ => (high - 1).max(low),
        };
        ends[p] = start.max(0);
        if high > start {
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(start))
                .map_err(client_error(format!("reading from partition {p}")))?;
            expecting[p] = true;
            waiting += 1;
        }
    }
    if waiting == 0 {
        return Ok(ends);
    }
    consumer.assign(&tpl).map_err(client_error("assign"))?;
    // Read from there to the end: a broker may report the high watermark as the start of the
    // last record batch (tansu 0.6 does), so the last message is not always at `high - 1`.
    // Done when every partition expected to have messages has answered and nothing new came
    // for a quiet period (nothing is being produced while a relay recovers).
    let mut last_message = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting > 0 || last_message.elapsed() < RECOVERY_QUIET {
        if Instant::now() > deadline {
            return Err(KafkaError::NoAnswer(
                "reading the last messages of the partitions".into(),
            ));
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => return Err(client_error("reading the last messages")(e)),
            Some(Ok(m)) => {
                last_message = Instant::now();
                let p = m.partition() as usize;
                if p >= partitions || m.offset() < ends[p] {
                    continue;
                }
                on_message(p, &m)?;
                ends[p] = m.offset() + 1;
                if expecting[p] {
                    expecting[p] = false;
                    waiting -= 1;
                }
            }
        }
    }
    Ok(ends)
}
