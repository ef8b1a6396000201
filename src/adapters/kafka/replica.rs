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
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    /// The highest `seq` seen on the topic.
    pub seen: AtomicU64,
    /// `record_time` (µs) of the last event appended.
    pub applied_record_micros: AtomicI64,
    /// `following`, `caught_up`, `waiting_for_topic`, `promoting`, `promoted`, `failed`.
    pub state: Mutex<&'static str>,
    pub last_error: Mutex<Option<String>>,
    /// Set to make the follower read to the topic's end and stop (promotion).
    pub finish: AtomicBool,
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
            tracing::error!(error = %e, "the replica stopped following the topic");
            self.status.set_state("failed");
            *self.status.last_error.lock().expect("replica status lock") = Some(e.to_string());
        }
        r
    }

    fn follow(&self, stop: &AtomicBool, handle: &tokio::runtime::Handle) -> Result<()> {
        use crate::adapters::kafka::reader::{PartitionedConsumer, SeqRecord, KAFKA_QUIET};
        let topic = self.kafka.topic.clone();
        let saved = self.ledger.replica_offsets(&topic)?;
        // The topic may not exist yet (the primary creates it): wait for it.
        let mut reader = loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            match PartitionedConsumer::open(
                crate::adapters::kafka::client::client_config(&self.kafka),
                &topic,
                saved.as_deref(),
            ) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "replica: the topic is not there yet"),
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
        self.status.set_state("following");
        let mut buffers: Vec<VecDeque<SeqRecord>> = vec![VecDeque::new(); partitions];
        // Per partition: the offset after the last record taken from its buffer.
        let mut applied = reader.next_offset.clone();
        let mut next = self.ledger.log_len() + 1;
        self.status.seen.fetch_max(next - 1, Ordering::Relaxed);
        let mut ends: Option<Vec<i64>> = None;
        let mut last_record = Instant::now();
        // Hand-overs not yet durable, each with the offsets to save once it is.
        let mut in_flight: VecDeque<(crate::ledger::ReplicatedAppend, Vec<i64>)> = VecDeque::new();
        let settle = |(append, offsets): (crate::ledger::ReplicatedAppend, Vec<i64>)| -> Result<()> {
            if let Some(last) = handle.block_on(append.durable())? {
                self.status
                    .applied_record_micros
                    .store(last.event.record_time.timestamp_micros(), Ordering::Relaxed);
            }
            self.ledger.set_replica_offsets(&topic, &offsets)
        };
        while !stop.load(Ordering::SeqCst) {
            // Promotion: the end of each partition, as of now, is what must be read.
            if ends.is_none() && self.status.finish.load(Ordering::SeqCst) {
                self.status.set_state("promoting");
                ends = Some(
                    (0..partitions)
                        .map(|p| reader.high_watermark(p))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| Error::Io(e.to_string()))?,
                );
            }
            reader.serve().map_err(|e| Error::Io(e.to_string()))?;
            let mut got = 0;
            for (p, buffer) in buffers.iter_mut().enumerate() {
                if buffer.len() < BUFFER_PER_PARTITION / 2 {
                    got += reader
                        .fill(p, buffer, BUFFER_PER_PARTITION, Duration::ZERO)
                        .map_err(|e| Error::Io(e.to_string()))?;
                }
                if let Some((seq, _, _)) = buffer.back() {
                    self.status.seen.fetch_max(*seq, Ordering::Relaxed);
                }
            }
            if got > 0 {
                last_record = Instant::now();
            }
            // Append, in seq order, every event that comes next.
            let mut out = Vec::new();
            while let Some(p) = (0..partitions)
                .filter(|&p| buffers[p].front().is_some_and(|(s, _, _)| *s <= next))
                .min_by_key(|&p| buffers[p][0].0)
            {
                let (seq, bytes, offset) = buffers[p].pop_front().expect("not empty");
                applied[p] = offset + 1;
                if seq == next {
                    out.push(bytes);
                    next += 1;
                }
                if out.len() >= APPEND_BATCH {
                    break;
                }
            }
            if !out.is_empty() {
                let append = handle.block_on(self.ledger.submit_replicated(out))?;
                in_flight.push_back((append, applied.clone()));
                if in_flight.len() >= APPENDS_IN_FLIGHT {
                    settle(in_flight.pop_front().expect("in flight"))?;
                }
                continue;
            }
            // Nothing more to hand over now: what was handed over becomes durable first.
            while let Some(oldest) = in_flight.pop_front() {
                settle(oldest)?;
            }
            // A gap: every partition has a full buffer, none of them with the next event.
            if buffers.iter().all(|b| b.len() >= BUFFER_PER_PARTITION) {
                return Err(Error::Corrupt(format!(
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
            if let Some(ends) = &ends {
                // Past each partition's end as of the promotion, and quiet (a broker may report
                // an end short of its last record).
                if caught_up && (0..partitions).all(|p| applied[p] >= ends[p]) && last_record.elapsed() >= KAFKA_QUIET {
                    self.ledger.set_replica_offsets(&topic, &applied)?;
                    self.ledger.flush()?;
                    tracing::info!(events = next - 1, "replica: read the topic to its end");
                    return Ok(());
                }
                if last_record.elapsed() > Duration::from_secs(60) {
                    return Err(Error::Io(format!(
                        "promotion: {topic} could not be read to its end within a minute"
                    )));
                }
            }
            if got == 0 {
                // Quiet: sleep until a partition's queue receives records.
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
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

/// Turns a replica into the primary (see [`Promoter::promote`]).
pub struct Promoter {
    ledger: Ledger,
    status: Arc<ReplicaStatus>,
    thread: Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
    topic: String,
    relay_status: Option<Arc<crate::adapters::kafka::client::RelayStatus>>,
    services: Mutex<Option<Vec<Service>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    promoting: tokio::sync::Mutex<()>,
}

impl Promoter {
    pub fn new(
        ledger: Ledger,
        status: Arc<ReplicaStatus>,
        thread: std::thread::JoinHandle<Result<()>>,
        topic: String,
        relay_status: Option<Arc<crate::adapters::kafka::client::RelayStatus>>,
        services: Vec<Service>,
        tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    ) -> Promoter {
        Promoter {
            ledger,
            status,
            thread: Mutex::new(Some(thread)),
            topic,
            relay_status,
            services: Mutex::new(Some(services)),
            tasks,
            promoting: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for the follower thread to end (its stop flag is set by the node).
    pub async fn stop_following(&self) {
        let thread = self.thread.lock().expect("promoter lock").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Reads the events topic to the end it has now, appends all of it, and only then takes
    /// commands: starts the events relay (every event of this log is on the topic already),
    /// the alerts and checkpoints publishers and the signer, and lets the alert monitor act.
    ///
    /// The previous primary must be stopped first: see the README (the development broker has
    /// no Kafka transactions, so producer fencing is not used).
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
        self.status.finish.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().expect("promoter lock").take();
        let Some(thread) = thread else {
            return Err(Error::Io("the replica is not following the topic".into()));
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            _ => return Err(Error::Io("the replica's follower thread failed".into())),
        }
        // Everything in this log came from the topic: the relay starts after it.
        let n = self.ledger.log_len();
        self.ledger.set_relay_position(&self.topic, n)?;
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
                tasks.push(tokio::spawn(s));
            }
        }
        self.status.set_state("promoted");
        tracing::warn!(events = n, "promoted: this node is the primary now");
        Ok(PromoteReport {
            events: n,
            seconds: started.elapsed().as_secs_f64(),
            promoted: true,
        })
    }
}
