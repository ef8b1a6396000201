//! A read replica: follows the events topic into its own log.
//!
//! The topic holds the exact stored bytes of every event, partitioned by account, each with a
//! `seq` header. The follower reads every partition, and appends the event whose `seq` is the
//! log's next one as soon as it is at the head of some partition's buffer (no need to wait for
//! the other partitions: `seq` says exactly what comes next). The writer checks that each
//! event continues the log (`seq` and `prev_hash`), so the replica's log is the primary's, byte
//! for byte, with every link verified; from there the ledger derives everything as it does on
//! the primary (read model, indexes, idempotency keys, alerts), and serves every read.
//!
//! The next offset of each partition is saved with the events (the same flush makes both
//! durable), so a restarted replica resumes where it was; events read again are skipped.
//!
//! Promotion ([`Follower::run`] with `finish` set) reads each partition to the end it had when
//! promotion began, appends everything, and returns: only then may the node take commands.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::reader::SeqRecord;
use super::terms::Terms;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::ledger::Ledger;

/// Events buffered per partition before it is paused.
const BUFFER_PER_PARTITION: usize = 4096;
/// Events appended per hand-over to the writer.
const APPEND_BATCH: usize = 1024;
/// Hand-overs the follower makes before it waits for the oldest to be durable: reading the
/// topic overlaps the writer's work and its flushes.
const APPENDS_IN_FLIGHT: usize = 2;

/// What the follower is doing, for `/healthz`, `/metrics` and `bindledger status`.
#[derive(Debug)]
pub struct ReplicaStatus {
    /// The highest `seq` seen on the topic.
    pub seen: AtomicU64,
    /// `record_time` (µs) of the last event appended.
    pub applied_record_micros: AtomicI64,
    /// `starting`, `following`, `caught_up`, `waiting_for_topic`, `promoting`, `promoted`,
    /// `failed`.
    pub state: Mutex<&'static str>,
    pub last_error: Mutex<Option<String>>,
    /// Set to make the follower read to the topic's end and stop (promotion).
    pub finish: AtomicBool,
    /// A promotion's fences, written before `finish` is set: read through them, then stop.
    pub fences: Mutex<Option<Fences>>,
    /// The highest epoch read on the topic (a promotion takes the next).
    pub highest_epoch: AtomicU64,
}

/// The fences a promotion wrote: its epoch, its id, and per partition the offset after its
/// fence (what the follower must read to).
#[derive(Debug, Clone)]
pub struct Fences {
    pub epoch: u64,
    pub node: String,
    pub ends: Vec<i64>,
}

impl Default for ReplicaStatus {
    fn default() -> Self {
        ReplicaStatus {
            seen: Default::default(),
            applied_record_micros: Default::default(),
            state: Mutex::new("starting"),
            last_error: Default::default(),
            finish: Default::default(),
            fences: Default::default(),
            highest_epoch: Default::default(),
        }
    }
}

impl ReplicaStatus {
    pub fn state(&self) -> &'static str {
        *self.state.lock().expect("replica status lock")
    }

    fn set_state(&self, s: &'static str) {
        *self.state.lock().expect("replica status lock") = s;
    }

    /// Events seen on the topic and not yet in this log, and how old the last appended event
    /// is while there are any (0 when caught up).
    pub fn lag(&self, log_len: u64) -> (u64, f64) {
        let events = self.seen.load(Ordering::Relaxed).saturating_sub(log_len);
        if events == 0 {
            return (0, 0.0);
        }
        let at = self.applied_record_micros.load(Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_micros();
        (events, if at == 0 { 0.0 } else { (now - at).max(0) as f64 / 1e6 })
    }
}

pub struct Follower {
    pub ledger: Ledger,
    pub kafka: KafkaConfig,
    pub status: Arc<ReplicaStatus>,
}

impl Follower {
    /// Follows the topic until `stop` is set, or, with `status.finish` set, until every
    /// partition is read to its end as of that moment (`Ok` then means caught up). Blocking:
    /// run it on its own thread; `handle` runs the appends.
    pub fn run(self, stop: Arc<AtomicBool>, handle: tokio::runtime::Handle) -> Result<()> {
        let r = self.follow(&stop, &handle);
        if let Err(e) = &r {
            tracing::error!(error = %crate::error::chain(&e), "the replica stopped following the topic");
            self.status.set_state("failed");
            *self.status.last_error.lock().expect("replica status lock") = Some(e.to_string());
        }
        r
    }

    fn follow(&self, stop: &AtomicBool, handle: &tokio::runtime::Handle) -> Result<()> {
        use crate::reader::{PartitionedConsumer, KAFKA_QUIET};
        let topic = self.kafka.topic.clone();
        let saved = self.ledger.replication().replica_offsets(&topic)?;
        // The topic may not exist yet (the primary creates it): wait for it.
        let mut reader = loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            match PartitionedConsumer::open(crate::client::client_config(&self.kafka), &topic, saved.as_deref()) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %crate::error::chain(&e), "replica: the topic is not there yet"),
            }
            self.status.set_state("waiting_for_topic");
            if self.status.finish.load(Ordering::SeqCst) {
                // Nothing was ever published: the log is all there is.
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        reader.wake_this_thread_on_records();
        let partitions = reader.partitions();
        // How far the topic goes, from each partition's last message: the lag is known from
        // the start, not only once the follower has read that far.
        let seen = &self.status.seen;
        let tails = crate::client::read_tails(&self.kafka, &topic, |_, m| {
            if let Some(seq) = crate::client::header_number(m, "seq") {
                seen.fetch_max(seq, Ordering::Relaxed);
            }
            Ok(())
        });
        if let Err(e) = tails {
            tracing::debug!(error = %crate::error::chain(&e), "replica: the topic's last messages could not be read");
        }
        // The fencing rules' state as of the saved offsets.
        if let Some(t) = self
            .ledger
            .replication()
            .replica_terms(&topic)?
            .and_then(|b| Terms::from_bytes(&b))
        {
            if t.fenced.len() == partitions {
                reader.terms = t;
            }
        }
        self.status.set_state("following");
        let mut buffers: Vec<VecDeque<SeqRecord>> = vec![VecDeque::new(); partitions];
        // Per partition: the offset after the last record taken from its buffer, and the
        // highest fence before it.
        let mut applied = reader.next_offset.clone();
        let mut applied_fenced = reader.terms.fenced.clone();
        let mut next = self.ledger.log_len() + 1;
        self.status.seen.fetch_max(next - 1, Ordering::Relaxed);
        let mut ends: Option<Vec<i64>> = None;
        let mut fences: Option<Fences> = None;
        let mut last_record = Instant::now();
        // Hand-overs not yet durable, each with the offsets and rules' state to save once it is.
        type Handed = (crate::ledger::ReplicatedAppend, Vec<i64>, Vec<u8>);
        let mut in_flight: VecDeque<Handed> = VecDeque::new();
        let settle = |(append, offsets, terms): Handed| -> Result<()> {
            if let Some(last) = handle.block_on(append.durable())? {
                self.status
                    .applied_record_micros
                    .store(last.event.record_time.timestamp_micros(), Ordering::Relaxed);
            }
            self.ledger.replication().set_replica_terms(&topic, &terms)?;
            self.ledger.replication().set_replica_offsets(&topic, &offsets)
        };
        while !stop.load(Ordering::SeqCst) {
            // Promotion: read through its fences (or, without any, to each partition's end
            // as of now).
            if ends.is_none() && self.status.finish.load(Ordering::SeqCst) {
                self.status.set_state("promoting");
                fences = self.status.fences.lock().expect("replica status lock").clone();
                ends = Some(match &fences {
                    Some(f) => f.ends.clone(),
                    None => (0..partitions)
                        .map(|p| reader.high_watermark(p))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| Error::io(e.to_string()))?,
                });
            }
            reader.serve().map_err(|e| Error::io(e.to_string()))?;
            let mut got = 0;
            for (p, buffer) in buffers.iter_mut().enumerate() {
                // While promoting, a partition is read through its fence whatever its buffer
                // holds: what a fenced primary left before the fence may not join the chain
                // and is dropped at the end (at most its relay's in-flight window).
                let to_fence = match (&ends, &fences) {
                    (Some(ends), Some(_)) => reader.next_offset[p] < ends[p],
                    _ => false,
                };
                let max = if to_fence {
                    BUFFER_PER_PARTITION + self.kafka.inflight_events_max
                } else {
                    BUFFER_PER_PARTITION
                };
                if buffer.len() < BUFFER_PER_PARTITION / 2 || (to_fence && buffer.len() < max) {
                    got += reader
                        .fill(p, buffer, max, Duration::ZERO)
                        .map_err(|e| Error::io(e.to_string()))?;
                }
                reader.terms.prune(buffer);
                if let Some(r) = buffer.back() {
                    self.status.seen.fetch_max(r.seq, Ordering::Relaxed);
                }
            }
            self.status
                .highest_epoch
                .fetch_max(reader.terms.highest.max(reader.terms.chain), Ordering::Relaxed);
            if got > 0 {
                last_record = Instant::now();
            }
            // Append, in seq order, every event that comes next.
            let mut out = Vec::new();
            while let Some(p) = (0..partitions)
                .filter(|&p| buffers[p].front().is_some_and(|r| r.seq <= next))
                .min_by_key(|&p| buffers[p][0].seq)
            {
                let r = buffers[p].pop_front().expect("not empty");
                applied[p] = r.offset + 1;
                applied_fenced[p] = r.fenced;
                if r.seq == next {
                    let newer = r.epoch > reader.terms.chain;
                    reader.terms.took(&r);
                    out.push(r.value);
                    next += 1;
                    if newer {
                        // Rule 2 now drops older epochs' heads in every partition, not only
                        // this one (a torn tail left before the fences).
                        for b in buffers.iter_mut() {
                            reader.terms.prune(b);
                        }
                    }
                }
                reader.terms.prune(&mut buffers[p]);
                if out.len() >= APPEND_BATCH {
                    break;
                }
            }
            if !out.is_empty() {
                let append = handle.block_on(self.ledger.submit_replicated(out))?;
                let terms = Terms {
                    fenced: applied_fenced.clone(),
                    ..reader.terms.clone()
                };
                in_flight.push_back((append, applied.clone(), terms.to_bytes()));
                if in_flight.len() >= APPENDS_IN_FLIGHT {
                    settle(in_flight.pop_front().expect("in flight"))?;
                }
                continue;
            }
            // Nothing more to hand over now: what was handed over becomes durable first.
            while let Some(oldest) = in_flight.pop_front() {
                settle(oldest)?;
            }
            // A gap: every partition has a full buffer, none of them with the next event (while
            // promoting, they may hold a fenced primary's events, read through to the fences).
            if fences.is_none() && buffers.iter().all(|b| b.len() >= BUFFER_PER_PARTITION) {
                return Err(Error::corrupt(format!(
                    "event {next} is not on {topic}, though later ones are: the topic has a gap"
                )));
            }
            let caught_up = buffers.iter().all(|b| b.is_empty());
            if ends.is_none() {
                self.status
                    .set_state(if caught_up && self.status.seen.load(Ordering::Relaxed) < next {
                        "caught_up"
                    } else {
                        "following"
                    });
            }
            if let (Some(ends), Some(f)) = (&ends, &fences) {
                // Read through every fence: what is left buffered is a fenced primary's
                // (rule 3 would drop it once this node writes), and the chain ends here.
                if (0..partitions).all(|p| reader.next_offset[p] >= ends[p]) {
                    return self.finish_promotion(&mut reader, &mut buffers, f, next - 1);
                }
            } else if let Some(ends) = &ends {
                // Past each partition's end as of the promotion, and quiet (a broker may report
                // an end short of its last record).
                if caught_up && (0..partitions).all(|p| applied[p] >= ends[p]) && last_record.elapsed() >= KAFKA_QUIET {
                    self.ledger.replication().set_replica_offsets(&topic, &applied)?;
                    self.ledger.flush()?;
                    tracing::info!(events = next - 1, "replica: read the topic to its end");
                    return Ok(());
                }
            }
            if ends.is_some() && last_record.elapsed() > Duration::from_secs(60) {
                return Err(Error::io(format!(
                    "promotion: {topic} could not be read to its end within a minute"
                )));
            }
            if got == 0 {
                // Quiet: sleep until a partition's queue receives records.
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The follower read through a promotion's fences in every partition: checks that each
    /// partition's first fence of the newest epoch is this promotion's (else another promotion
    /// came first, and this one fails), and drops what is left buffered: events of a fenced
    /// primary that cannot continue the chain at `head`.
    fn finish_promotion(
        &self,
        reader: &mut crate::reader::PartitionedConsumer,
        buffers: &mut [VecDeque<SeqRecord>],
        fences: &Fences,
        head: u64,
    ) -> Result<()> {
        let ours = Some((fences.epoch, fences.node.clone()));
        if let Some(p) = (0..buffers.len()).find(|&p| reader.terms.first.get(p) != Some(&ours)) {
            return Err(Error::io(format!(
                "promotion: partition {p} of {} was fenced by another promotion first: this node stays a replica",
                self.kafka.topic
            )));
        }
        let mut dropped = 0;
        for b in buffers.iter_mut() {
            if let Some(r) = b.iter().find(|r| r.epoch >= fences.epoch) {
                return Err(Error::io(format!(
                    "promotion: {} holds event {} of epoch {} after this promotion's fence: another primary is writing",
                    self.kafka.topic, r.seq, r.epoch
                )));
            }
            dropped += b.len();
            b.clear();
        }
        self.ledger
            .replication()
            .set_replica_offsets(&self.kafka.topic, &reader.next_offset)?;
        self.ledger.flush()?;
        tracing::info!(
            events = head,
            epoch = fences.epoch,
            dropped,
            "replica: read the topic through this promotion's fences"
        );
        Ok(())
    }
}

/// What a promotion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PromoteReport {
    /// Events in the log when the node started taking commands.
    pub events: u64,
    /// From the request to taking commands: reading the rest of the topic, then starting the
    /// relays and the checkpoint signer.
    pub seconds: f64,
    /// False when the node was already the primary.
    pub promoted: bool,
}

/// A task the node starts only once it is the primary (a relay, the signer).
pub type Service = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A service (a relay, the signer, the webhook sender) that panics halts the node: it takes no
/// more commands (`503 halted`) and `/healthz` answers `503`, so that its supervisor restarts
/// it; a node that lost a part must not go on answering as if healthy. (A core thread's panic
/// ends the process at once: [`crate::ledger::seams::abort_on_core_panic`].)
pub async fn halt_on_panic(service: Service, ledger: Ledger) {
    use futures_util::FutureExt;
    if std::panic::AssertUnwindSafe(service).catch_unwind().await.is_err() {
        ledger.halt("a service beside the ledger (a relay, the signer or the webhook sender) died");
    }
}

/// Starts a follower of the events topic on a thread of its own (`bindledger-replica`), until
/// `stop` is set or a promotion makes it read to the end.
pub fn spawn_follower(
    ledger: Ledger,
    kafka: KafkaConfig,
    status: Arc<ReplicaStatus>,
    stop: Arc<AtomicBool>,
    handle: tokio::runtime::Handle,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let f = Follower { ledger, kafka, status };
    std::thread::Builder::new()
        .name("bindledger-replica".into())
        .spawn(move || f.run(stop, handle))
        .map_err(|e| Error::io(format!("starting the replica thread: {e}")))
}

/// Turns a replica into the primary (see [`Promoter::promote`]).
pub struct Promoter {
    ledger: Ledger,
    status: Arc<ReplicaStatus>,
    thread: Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
    kafka: KafkaConfig,
    relay_status: Option<Arc<crate::client::RelayStatus>>,
    services: Mutex<Option<Vec<Service>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    promoting: tokio::sync::Mutex<()>,
    /// The checkpoints topic, fenced with the events topic (when checkpoints are published).
    pub checkpoints_topic: Option<String>,
    /// The follower's stop flag, for a follower started again after a lost promotion.
    stop: Arc<AtomicBool>,
    /// This node's URL (`http.advertised_url`), written in its fences.
    pub url: String,
}

impl Promoter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ledger: Ledger,
        status: Arc<ReplicaStatus>,
        thread: std::thread::JoinHandle<Result<()>>,
        stop: Arc<AtomicBool>,
        kafka: KafkaConfig,
        relay_status: Option<Arc<crate::client::RelayStatus>>,
        services: Vec<Service>,
        tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    ) -> Promoter {
        Promoter {
            ledger,
            status,
            thread: Mutex::new(Some(thread)),
            kafka,
            relay_status,
            services: Mutex::new(Some(services)),
            tasks,
            promoting: tokio::sync::Mutex::new(()),
            checkpoints_topic: None,
            stop,
            url: String::new(),
        }
    }

    /// Waits for the follower thread to end (its stop flag is set by the node).
    pub async fn stop_following(&self) {
        let thread = self.thread.lock().expect("promoter lock").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Fences the previous primary, reads the events topic through the fences, appends all
    /// of it, and only then takes commands: starts the events relay (every event of this log
    /// is on the topic already), the alerts and checkpoints publishers and the signer, and
    /// lets the alert monitor act. See [`super::terms`] for what the fences do.
    pub async fn promote(&self) -> Result<PromoteReport> {
        let _one = self.promoting.lock().await;
        let started = Instant::now();
        if self.ledger.is_primary() {
            return Ok(PromoteReport {
                events: self.ledger.log_len(),
                seconds: 0.0,
                promoted: false,
            });
        }
        if self.thread.lock().expect("promoter lock").is_none() {
            return Err(Error::io("the replica is not following the topic"));
        }
        let (own, _) = self.ledger.replication().epoch()?;
        let epoch = own.max(self.status.highest_epoch.load(Ordering::SeqCst)) + 1;
        let node = uuid::Uuid::now_v7().simple().to_string();
        let ends = write_fences(
            &self.kafka,
            &self.kafka.topic,
            self.kafka.partitions,
            epoch,
            &node,
            &self.url,
        )
        .await
        .map_err(|e| Error::io(e.to_string()))?;
        // The checkpoints topic too: what the previous primary still publishes there after
        // this is dropped by its readers (see `checkpoints`).
        if let Some(topic) = &self.checkpoints_topic {
            write_fences(&self.kafka, topic, 1, epoch, &node, &self.url)
                .await
                .map_err(|e| Error::io(e.to_string()))?;
        }
        tracing::warn!(epoch, "promotion: fenced every partition of the events topic");
        *self.status.fences.lock().expect("replica status lock") = Some(Fences {
            epoch,
            node: node.clone(),
            ends: ends.clone(),
        });
        self.status.finish.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().expect("promoter lock").take();
        let Some(thread) = thread else {
            return Err(Error::io("the replica is not following the topic"));
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                // Another promotion came first (or the topic could not be read through): this
                // node stays a replica, and follows the topic again (the winner's chain).
                self.status.set_state("following");
                self.status.finish.store(false, Ordering::SeqCst);
                *self.status.fences.lock().expect("replica status lock") = None;
                *self.status.last_error.lock().expect("replica status lock") = Some(e.to_string());
                let thread = spawn_follower(
                    self.ledger.clone(),
                    self.kafka.clone(),
                    self.status.clone(),
                    self.stop.clone(),
                    tokio::runtime::Handle::current(),
                )?;
                *self.thread.lock().expect("promoter lock") = Some(thread);
                tracing::warn!(error = %crate::error::chain(&e), "promotion failed: this node follows the topic again");
                return Err(e);
            }
            _ => return Err(Error::io("the replica's follower thread failed")),
        }
        // Everything in this log came from the topic: the relay starts after it.
        let n = self.ledger.log_len();
        // The relay publishes in this term from the fences on: every event up to `n` is on
        // the topic before them, in the chain.
        self.ledger.replication().set_epoch(epoch, &node)?;
        self.ledger.replication().set_starts_as_replica(false)?;
        let verified: Vec<(i64, u64)> = ends.iter().map(|e| (*e, n)).collect();
        self.ledger
            .replication()
            .set_relay_verified(&self.kafka.topic, &verified)?;
        self.ledger.replication().set_relay_position(&self.kafka.topic, n)?;
        if let Some(s) = &self.relay_status {
            s.position.store(n, Ordering::Relaxed);
        }
        self.ledger.replicated_to(n);
        self.ledger.flush()?;
        self.ledger.set_primary();
        let services = self.services.lock().expect("promoter lock").take().unwrap_or_default();
        {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            for s in services {
                tasks.push(tokio::spawn(halt_on_panic(s, self.ledger.clone())));
            }
        }
        self.status.set_state("promoted");
        tracing::warn!(events = n, epoch, "promoted: this node is the primary now");
        Ok(PromoteReport {
            events: n,
            seconds: started.elapsed().as_secs_f64(),
            promoted: true,
        })
    }
}

/// Writes a fence of `epoch` (by the promotion `node`) to every partition of `topic` (the events
/// topic, or the checkpoints topic; created with `partitions` if nothing was ever published);
/// returns, per partition, the offset after it.
pub(super) async fn write_fences(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    epoch: u64,
    node: &str,
    url: &str,
) -> std::result::Result<Vec<i64>, super::KafkaError> {
    use super::client::{ensure_topic, headers, producer};
    use super::client_error;
    use rdkafka::producer::FutureRecord;
    ensure_topic(kafka, topic, partitions).await?;
    let producer = producer(kafka)?;
    let partitions = {
        let producer = producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(client_error(format!("metadata of {topic}")))
                .map(|md| md.topics().first().map_or(0, |t| t.partitions().len()))
        })
        .await
        .map_err(|_| super::KafkaError::Topic("reading the topic's metadata failed".into()))??
    };
    if partitions == 0 {
        return Err(super::KafkaError::Topic(format!("topic {topic} has no partitions")));
    }
    let text = epoch.to_string();
    let value = serde_json::json!({"fence": epoch, "node": node}).to_string();
    let mut deliveries = Vec::with_capacity(partitions);
    for p in 0..partitions as i32 {
        let record = FutureRecord::to(topic)
            .partition(p)
            .key("fence")
            .payload(&value)
            .headers(if url.is_empty() {
                headers(&[("fence", &text), ("node", node)])
            } else {
                headers(&[("fence", &text), ("node", node), ("url", url)])
            });
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| client_error(format!("fencing partition {p}"))(e))?,
        );
    }
    let mut ends = Vec::with_capacity(partitions);
    for (p, d) in deliveries.into_iter().enumerate() {
        let delivered = d
            .await
            .map_err(|_| super::KafkaError::Topic("the producer was dropped".into()))?
            .map_err(|(e, _)| client_error(format!("fencing partition {p}"))(e))?;
        ends.push(delivered.offset + 1);
    }
    Ok(ends)
}
