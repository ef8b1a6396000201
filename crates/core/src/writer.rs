//! The single writer. It owns the log: it takes commands in batches (up to `batch_max`),
//! decides each against its in-memory state, turns each into exactly one event and applies the
//! batch to sled atomically. A second thread, the flusher, makes each batch durable with one
//! flush (group commit), publishes its events to the read model, and only then answers the
//! callers. While batch N is being flushed, batch N+1 is being decided: sled's `flush` makes
//! every write applied before it started durable, so answering after it is safe.
//!
//! **Architecture invariants:** nothing but this thread appends to the log; no caller is
//! answered before its event is durable; readers only see durable events. If a write or flush
//! fails, every caller in flight gets `storage_failed` and both threads stop: the writer's
//! state may be ahead of the disk.
//!
//! After the flush, the batch's idempotency keys enter the shared [`IdempotencyIndex`] and its
//! events go to the [`crate::indexer`] (history rows, projection snapshots), off the write path.

use bindledger_events::{codec, hash_bytes, Event, Hash, SCHEMA_VERSION};
use chrono::Utc;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::accounts::CachedProjection;
use crate::domain::command::Meta;
use crate::domain::decide::{self, BindFacts, BindVerdict, PayFacts, PayVerdict, Rules};
use crate::error::{Error, Result};
use crate::idempotency::{composite, KeyIndex};
use crate::indexer::{Indexer, INDEX_QUEUE_BATCHES};
use crate::metrics::Metrics;
use crate::store::DurableBatch;
use crate::store::{LogBatch, Store};
/// Batches decided and waiting for the flusher (the writer runs at most this far ahead of it).
/// One: while the flusher is busy, new commands gather in the writer's queue and become one
/// larger batch instead of many small ones (each a sled write and a wake-up); HTTP runs made
/// batches of 15-20 events instead of 7-12 this way.
const PIPELINE_DEPTH: usize = 1;

/// A command ready to be decided: validated, its secrets already used and dropped.
#[derive(Debug)]
pub enum Request {
    Bind {
        meta: Meta,
        digest: Hash,
        facts: BindFacts,
        verdict: BindVerdict,
    },
    Pay {
        meta: Meta,
        digest: Hash,
        facts: PayFacts,
        verdict: PayVerdict,
    },
    Unbind {
        meta: Meta,
        digest: Hash,
        binding_id: Uuid,
    },
    Lock {
        meta: Meta,
        digest: Hash,
        binding_id: Uuid,
        alert_id: String,
        until: chrono::DateTime<Utc>,
    },
    Unlock {
        meta: Meta,
        digest: Hash,
        binding_id: Uuid,
        cause: bindledger_events::UnlockCause,
        alert_id: Option<String>,
    },
    Triage {
        meta: Meta,
        digest: Hash,
        alert_id: String,
        action: bindledger_events::TriageAction,
        operator: String,
        assignee: Option<String>,
        note: String,
    },
    /// A privacy officer's erasure of the account's personal data.
    Erase {
        meta: Meta,
        digest: Hash,
        operator: String,
    },
    /// A replica: an event read from the events topic, appended as it is (its `seq` and
    /// `prev_hash` must continue this log).
    Append {
        bytes: bytes::Bytes,
    },
}

/// A field every variant of [`Request`] has, borrowed as `$req` is (shared or mutable).
macro_rules! common_field {
    ($req:expr, $field:ident) => {
        match $req {
            Request::Bind { $field, .. }
            | Request::Pay { $field, .. }
            | Request::Unbind { $field, .. }
            | Request::Lock { $field, .. }
            | Request::Unlock { $field, .. }
            | Request::Triage { $field, .. }
            | Request::Erase { $field, .. } => $field,
            Request::Append { .. } => unreachable!("an appended event is not a command"),
        }
    };
}

impl Request {
    fn meta(&self) -> &Meta {
        common_field!(self, meta)
    }
    pub(crate) fn meta_mut(&mut self) -> &mut Meta {
        common_field!(self, meta)
    }
    fn digest(&self) -> &Hash {
        common_field!(self, digest)
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Bind { .. } => "bind",
            Request::Pay { .. } => "pay",
            Request::Unbind { .. } => "unbind",
            Request::Lock { .. } => "lock",
            Request::Unlock { .. } => "unlock",
            Request::Triage { .. } => "triage",
            Request::Erase { .. } => "erase",
            Request::Append { .. } => "append",
        }
    }
}

/// The answer to a command: its event (or, for a retry, the original one).
#[derive(Debug, Clone)]
pub struct Committed {
    /// Shared with the read side's followers (the monitor, the indexer): never copied. In the
    /// answer a caller gets, its personal fields are open (`bytes` are the sealed ones).
    pub event: Arc<Event>,
    /// The event's stored bytes (what the hash covers).
    pub bytes: bytes::Bytes,
    pub hash: Hash,
    /// True when this is the result of an earlier command with the same idempotency key.
    pub replayed: bool,
}

impl Committed {
    /// The answer to a retried command: the event its key produced, read from the log.
    pub(crate) fn replay_of(store: &Store, seq: u64) -> Result<Committed> {
        let bytes = store
            .event_bytes(seq)?
            .ok_or_else(|| Error::corrupt(format!("an idempotency key points at missing event {seq}")))?;
        let event = codec::decode(&bytes).map_err(|e| Error::corrupt_by(format!("event {seq}"), e))?;
        Ok(Committed {
            event: Arc::new(event),
            hash: hash_bytes(&bytes),
            bytes: bytes::Bytes::copy_from_slice(&bytes),
            replayed: true,
        })
    }
}

pub struct Submission {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Committed>>,
}

#[allow(clippy::large_enum_variant)] // one per command in flight, moved once: boxing buys nothing
enum Answer {
    New(usize),
    Replay(Committed),
    ReplayOfBatch(usize),
    Fail(Error),
}

/// A decided, applied batch on its way to durability.
struct Job {
    events: Vec<(Arc<Event>, bytes::Bytes, Hash)>,
    replies: Vec<(&'static str, oneshot::Sender<Result<Committed>>, Answer)>,
    started: Instant,
}

pub struct Writer {
    pub store: Arc<Store>,
    /// The writer's own decision state; runs ahead of the read model by the batches in flight.
    pub state: CachedProjection,
    /// What readers see: only events that are durable.
    pub read: Arc<RwLock<CachedProjection>>,
    pub next_seq: u64,
    pub prev_hash: Hash,
    pub rules: Rules,
    pub batch_max: usize,
    /// The flusher's group-commit delay under load, if any.
    pub commit_delay: Option<CommitDelay>,
    pub metrics: Arc<Metrics>,
    pub failed: Arc<AtomicBool>,
    /// Keys and paid orders of durable events (shared with the ledger's pre-check).
    pub idempotency: Arc<KeyIndex>,
    /// The last event's `record_time`: the next is never earlier (the clock may step back).
    pub last_record_time: chrono::DateTime<Utc>,
    /// Highest seq that is durable and whose keys are in `idempotency`.
    pub durable: Arc<AtomicU64>,
    pub durable_watch: Arc<tokio::sync::watch::Sender<u64>>,
    /// Keys of batches decided but not yet durable, and which batch holds them.
    pub pending: HashMap<String, (u64, Hash)>,
    pub pending_batches: VecDeque<(u64, Vec<String>)>,
    /// The indexer, started with the writer.
    pub indexer: Option<Indexer>,
    pub tap: EventTap,
    pub ids: EventIds,
    /// Records each flush's last event once durable (see [`crate::head`]).
    pub head: Option<crate::head::HeadRecorder>,
    /// The accounts this ledger owns: a command for another shard's is refused when decided.
    pub owned: Arc<crate::shards::Ownership>,
    /// Where `record_time` is read.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// The accounts' data keys: each new event's personal fields are sealed with its
    /// account's, and an erasure destroys it.
    pub keys: Arc<crate::datakeys::DataKeys>,
    /// A bug the simulator's test plants (feature `simulation` only).
    #[cfg(feature = "simulation")]
    pub planted: Option<crate::seams::PlantedBug>,
}

/// UUID v7 ids for the writer's events and bindings: the batch's clock for the time, the OS
/// generator for the 74 random bits, read [`EventIds::RANDOM_BYTES`] at a time (one
/// `getrandom` call per 409 ids instead of one per id, which profiles showed at 2% of the CPU).
#[derive(Default)]
pub struct EventIds {
    random: Vec<u8>,
    at: usize,
    /// A simulation's: the random bits come from this seed's sequence.
    seed: Option<u64>,
}

impl EventIds {
    const RANDOM_BYTES: usize = 4096;

    /// Ids whose random bits come from `seed` (a simulation's), not the OS's generator.
    pub fn seeded(seed: u64) -> EventIds {
        EventIds {
            random: Vec::new(),
            at: 0,
            seed: Some(seed),
        }
    }

    pub fn next(&mut self, now: chrono::DateTime<Utc>) -> Uuid {
        if self.at + 10 > self.random.len() {
            self.random.resize(Self::RANDOM_BYTES, 0);
            if let Some(seed) = &mut self.seed {
                for chunk in self.random.chunks_mut(8) {
                    // splitmix64
                    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = *seed;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes()[..chunk.len()]);
                }
            } else if getrandom::fill(&mut self.random).is_err() {
                self.random.clear();
                return Uuid::now_v7();
            }
            self.at = 0;
        }
        let bytes: &[u8; 10] = self.random[self.at..self.at + 10].try_into().expect("ten bytes");
        self.at += 10;
        uuid::Builder::from_unix_timestamp_millis(now.timestamp_millis().max(0) as u64, bytes).into_uuid()
    }
}

pub use crate::config::CommitDelay;

/// Where the flusher hands each durable batch's events to a follower (the alert monitor)
/// without ever waiting: when the follower's bounded queue is full the batch is not sent, and
/// the follower, seeing a gap, reads it from the log.
pub type EventTap = Arc<Mutex<Option<std::sync::mpsc::SyncSender<DurableBatch>>>>;

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(PIPELINE_DEPTH);
        let (index_tx, index_rx) = std::sync::mpsc::sync_channel::<DurableBatch>(INDEX_QUEUE_BATCHES);
        let indexer = self.indexer.take().expect("the writer runs once");
        let indexer = std::thread::Builder::new()
            .name("bindledger-indexer".into())
            .spawn(move || indexer.run(index_rx))
            .expect("starting the indexer thread");
        let flusher = {
            let f = Flusher {
                store: self.store.clone(),
                read: self.read.clone(),
                metrics: self.metrics.clone(),
                failed: self.failed.clone(),
                idempotency: self.idempotency.clone(),
                durable: self.durable.clone(),
                durable_watch: self.durable_watch.clone(),
                index: index_tx,
                tap: self.tap.clone(),
                commit_delay: self.commit_delay,
                head: self.head.take(),
                #[cfg(feature = "simulation")]
                ack_before_flush: self.planted == Some(crate::seams::PlantedBug::AckBeforeFlush),
            };
            std::thread::Builder::new()
                .name("bindledger-flusher".into())
                .spawn(move || f.run(job_rx))
                .expect("starting the flusher thread")
        };
        let mut subs = Vec::with_capacity(self.batch_max);
        while let Some(first) = rx.blocking_recv() {
            crate::seams::panic_point("bindledger-writer");
            subs.push(first);
            while subs.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(s) => subs.push(s),
                    Err(_) => break,
                }
            }
            let job = self.process(&mut subs);
            if self.failed.load(Ordering::SeqCst) || job.and_then(|j| job_tx.send(j).map_err(|_| ())).is_err() {
                // Storage failed: refuse everything still queued, then stop.
                self.failed.store(true, Ordering::SeqCst);
                rx.close();
                while let Ok(s) = rx.try_recv() {
                    let _ = s
                        .reply
                        .send(Err(Error::storage("the writer stopped after a storage failure")));
                }
                break;
            }
        }
        drop(job_tx);
        let _ = flusher.join();
        let _ = indexer.join();
        tracing::info!("writer stopped");
    }

    /// The event an idempotency key produced, if it is known (durable or in flight) and
    /// inside the window at `now`.
    fn known_key(
        &self,
        ck: &str,
        account: &str,
        key: &str,
        now: chrono::DateTime<Utc>,
        checked_at: Option<u64>,
    ) -> Result<Option<(u64, Hash)>> {
        match self.pending.get(ck) {
            Some(found) => Ok(Some(*found)),
            None => self.idempotency.key_since(ck, account, key, now, checked_at),
        }
    }

    /// Checks that an event read from the topic continues this log, and applies it.
    fn append(&mut self, bytes: &[u8]) -> Result<(Event, Hash)> {
        let event = codec::decode(bytes).map_err(|e| Error::corrupt_by("a replicated event", e))?;
        if event.seq != self.next_seq || event.prev_hash != self.prev_hash {
            return Err(Error::corrupt(format!(
                "the topic's event {} does not continue this log at {}: another chain",
                event.seq, self.next_seq
            )));
        }
        let hash = hash_bytes(bytes);
        self.state.apply(&self.store, &event)?;
        self.next_seq += 1;
        self.prev_hash = hash;
        self.last_record_time = self.last_record_time.max(event.record_time);
        Ok((event, hash))
    }

    /// Decides one batch and applies it to sled; returns the job that makes it durable.
    fn process(&mut self, subs: &mut Vec<Submission>) -> std::result::Result<Job, ()> {
        let started = Instant::now();
        let now = bindledger_events::types::micros::truncate(self.clock.now()).max(self.last_record_time);
        self.last_record_time = now;
        // Forget in-flight keys of batches that became durable (they are in the shared index).
        let durable = self.durable.load(Ordering::SeqCst);
        while self.pending_batches.front().is_some_and(|(last, _)| *last <= durable) {
            let (_, keys) = self.pending_batches.pop_front().expect("front exists");
            for k in keys {
                if self.pending.get(&k).is_some_and(|(seq, _)| *seq <= durable) {
                    self.pending.remove(&k);
                }
            }
        }
        let (first_seq, head_before) = (self.next_seq, self.prev_hash);
        let mut batch = LogBatch::default();
        let mut events: Vec<(Arc<Event>, bytes::Bytes, Hash)> = Vec::with_capacity(subs.len());
        let mut answers: Vec<Answer> = Vec::with_capacity(subs.len());
        let mut batch_keys: HashMap<String, usize> = HashMap::new();
        let mut buf = Vec::with_capacity(1024);

        for sub in subs.iter_mut() {
            if let Request::Append { bytes } = &sub.request {
                match self.append(bytes) {
                    Ok((event, hash)) => {
                        batch.add_event(event.seq, bytes);
                        answers.push(Answer::New(events.len()));
                        events.push((Arc::new(event), bytes.clone(), hash));
                    }
                    Err(e) => answers.push(Answer::Fail(e)),
                }
                continue;
            }
            let req = &mut sub.request;
            let meta = req.meta();
            if !self.owned.owns(&meta.account) {
                answers.push(Answer::Fail(Error::Misdirected));
                continue;
            }
            let key = meta.idempotency_key.as_deref().map(|k| composite(&meta.account, k));
            if let Some(ck) = &key {
                let reused = || Answer::Fail(Error::IdempotencyKeyReused);
                if let Some(idx) = batch_keys.get(ck) {
                    answers.push(if events[*idx].0.request_digest.as_ref() == Some(req.digest()) {
                        Answer::ReplayOfBatch(*idx)
                    } else {
                        reused()
                    });
                    continue;
                }
                let known = match self.known_key(
                    ck,
                    &meta.account,
                    meta.idempotency_key.as_deref().unwrap_or(""),
                    now,
                    meta.keys_checked,
                ) {
                    Ok(known) => known,
                    Err(e) => {
                        answers.push(Answer::Fail(e));
                        continue;
                    }
                };
                if let Some((seq, digest)) = known {
                    answers.push(if &digest == req.digest() {
                        match Committed::replay_of(&self.store, seq) {
                            Ok(c) => Answer::Replay(c),
                            Err(e) => Answer::Fail(e),
                        }
                    } else {
                        reused()
                    });
                    continue;
                }
            }
            let acct = match self.state.load(&self.store, &meta.account) {
                Ok(acct) => acct,
                Err(e) => {
                    answers.push(Answer::Fail(e));
                    continue;
                }
            };
            let version = acct.map_or(0, |a| a.version);
            if acct.is_some_and(|a| a.erased) {
                answers.push(Answer::Fail(Error::Erased));
                continue;
            }
            if matches!(req, Request::Erase { .. }) && acct.is_none() {
                answers.push(Answer::Fail(Error::NotFound("no such account")));
                continue;
            }
            if let Some(expected) = meta.expected_version {
                if expected != version {
                    answers.push(Answer::Fail(Error::VersionConflict { actual: version }));
                    continue;
                }
            }
            let event_time = meta.event_time.unwrap_or(now);
            let payload = match &*req {
                Request::Bind { facts, verdict, .. } => {
                    decide::decide_bind(acct, facts, verdict, self.rules, self.ids.next(now))
                }
                Request::Pay { facts, verdict, .. } => decide::decide_pay(acct, facts, verdict, self.rules, now),
                Request::Unbind { binding_id, .. } => decide::decide_unbind(acct, *binding_id, self.rules),
                Request::Lock {
                    binding_id,
                    alert_id,
                    until,
                    ..
                } => decide::decide_lock(acct, *binding_id, alert_id, *until),
                Request::Unlock {
                    binding_id,
                    cause,
                    alert_id,
                    ..
                } => decide::decide_unlock(acct, *binding_id, *cause, alert_id.as_deref(), now),
                Request::Triage {
                    alert_id,
                    action,
                    operator,
                    assignee,
                    note,
                    ..
                } => decide::decide_triage(alert_id, *action, operator, assignee.as_deref(), note),
                Request::Erase { operator, .. } => bindledger_events::Payload::SubjectErased {
                    operator: operator.clone(),
                },
                Request::Append { .. } => unreachable!("appended events are taken above"),
            };
            // The command's strings move into its event (the answer needs only its kind).
            let request_digest = Some(*req.digest());
            let meta = req.meta_mut();
            let mut event = Event {
                v: SCHEMA_VERSION,
                id: self.ids.next(now),
                seq: self.next_seq,
                account: std::mem::take(&mut meta.account),
                account_seq: version + 1,
                event_time,
                record_time: now,
                idempotency_key: meta.idempotency_key.take(),
                request_digest,
                correlation_id: meta.correlation_id.take(),
                context: std::mem::take(&mut meta.context),
                prev_hash: self.prev_hash,
                payload,
            };
            // Personal fields are sealed before the event is hashed: the chain covers the
            // ciphertext, so it verifies after the key is gone.
            if let Err(e) = self.keys.seal_event(&mut event) {
                answers.push(Answer::Fail(e));
                continue;
            }
            codec::encode_into(&event, &mut buf);
            let hash = hash_bytes(&buf);
            batch.add_event(event.seq, &buf);
            // The writer's state keeps no wallet rows: folding reads nothing and cannot fail.
            self.state
                .fold(&self.store, &event)
                .expect("the writer's fold reads no row");
            crate::invariants::account_at_its_event(
                self.state.p.accounts.get(&event.account).map(|a| a.version),
                &event,
            );
            self.next_seq += 1;
            self.prev_hash = hash;
            if let Some(ck) = key {
                batch_keys.insert(ck, events.len());
            }
            answers.push(Answer::New(events.len()));
            events.push((Arc::new(event), bytes::Bytes::copy_from_slice(&buf), hash));
        }

        crate::invariants::batch_continues_the_log(first_seq, head_before, &events, self.batch_max);
        if !events.is_empty() {
            if let Err(e) = self.store.apply_log(batch) {
                tracing::error!(error = %crate::error::chain(&e), code = e.code(), events = events.len(), "writing the batch failed; the writer stops");
                self.failed.store(true, Ordering::SeqCst);
                for sub in subs.drain(..) {
                    let _ = sub.reply.send(Err(e.clone()));
                }
                return Err(());
            }
            // An erasure destroys the account's key here, made durable by the flush that makes
            // the event durable (a replica's appended erasure alike).
            for (e, _, _) in &events {
                if matches!(e.payload, bindledger_events::Payload::SubjectErased { .. }) {
                    if let Err(err) = self.keys.erase(&e.account) {
                        tracing::error!(error = %crate::error::chain(&err), "destroying an erased account's data key failed; the writer stops");
                        self.failed.store(true, Ordering::SeqCst);
                        for sub in subs.drain(..) {
                            let _ = sub.reply.send(Err(err.clone()));
                        }
                        return Err(());
                    }
                }
            }
        }
        if !batch_keys.is_empty() {
            let last = self.next_seq - 1;
            let mut keys = Vec::with_capacity(batch_keys.len());
            for (k, idx) in batch_keys {
                let (e, _, _) = &events[idx];
                self.pending
                    .insert(k.clone(), (e.seq, e.request_digest.unwrap_or_default()));
                keys.push(k);
            }
            self.pending_batches.push_back((last, keys));
        }
        let replies = subs
            .drain(..)
            .zip(answers)
            .map(|(s, a)| (s.request.kind(), s.reply, a))
            .collect();
        self.state.evict();
        Ok(Job {
            events,
            replies,
            started,
        })
    }
}

/// Makes each job durable, then publishes it: idempotency keys, read model, indexer, answers.
struct Flusher {
    store: Arc<Store>,
    read: Arc<RwLock<CachedProjection>>,
    metrics: Arc<Metrics>,
    failed: Arc<AtomicBool>,
    idempotency: Arc<KeyIndex>,
    durable: Arc<AtomicU64>,
    /// Tells followers (the Kafka relay) that more events are durable.
    durable_watch: Arc<tokio::sync::watch::Sender<u64>>,
    index: std::sync::mpsc::SyncSender<DurableBatch>,
    tap: EventTap,
    commit_delay: Option<CommitDelay>,
    head: Option<crate::head::HeadRecorder>,
    /// The simulator's planted bug: answer a batch whose flush failed as if it had not.
    #[cfg(feature = "simulation")]
    ack_before_flush: bool,
}

impl Flusher {
    fn run(self, jobs: std::sync::mpsc::Receiver<Job>) {
        let mut last_flush_events = 0;
        while let Ok(first) = jobs.recv() {
            crate::seams::panic_point("bindledger-flusher");
            // Everything already decided goes durable with one flush.
            let mut ready = vec![first];
            while let Ok(job) = jobs.try_recv() {
                ready.push(job);
            }
            let mut events: usize = ready.iter().map(|j| j.events.len()).sum();
            if let Some(c) = self
                .commit_delay
                .filter(|c| last_flush_events >= c.busy_events && events < c.batch)
            {
                self.metrics.commit_delays.inc();
                // A sleep, not a wait on the queue: a waiting flusher would be woken by every
                // batch the writer hands over (in an HTTP profile, waking the flusher showed in
                // more of the writer's samples than sled's insert). Meanwhile the writer, its
                // one slot taken, gathers the commands arriving into one larger batch.
                std::thread::sleep(c.delay);
                while let Ok(job) = jobs.try_recv() {
                    events += job.events.len();
                    ready.push(job);
                }
            }
            last_flush_events = events;
            if events > 0 {
                self.metrics.flushes.inc();
                if let Err(e) = self.store.flush() {
                    tracing::error!(error = %crate::error::chain(&e), code = e.code(), "flushing the log failed; the ledger stops taking commands");
                    self.failed.store(true, Ordering::SeqCst);
                    #[cfg(feature = "simulation")]
                    if self.ack_before_flush {
                        for job in std::mem::take(&mut ready) {
                            self.answer(job);
                        }
                    }
                    let later = std::iter::from_fn(|| jobs.recv().ok());
                    for job in ready.into_iter().chain(later) {
                        for (_, reply, _) in job.replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    return;
                }
                if let Some(head) = &self.head {
                    if let Some((e, _, hash)) = ready.iter().rev().find_map(|j| j.events.last()) {
                        head.note(e.seq, *hash);
                    }
                }
            }
            // One hand-over per flush to the indexer and the monitor, whatever the number of
            // batches it made durable: each wakes a thread.
            self.publish(&ready);
            for job in ready {
                if !job.events.is_empty() {
                    self.metrics.flush_seconds.observe(job.started.elapsed().as_secs_f64());
                    self.metrics.batch_size.observe(job.events.len() as f64);
                    self.metrics.batches.inc();
                }
                self.answer(job);
            }
        }
    }

    /// Publishes the events of jobs just made durable, in order.
    fn publish(&self, jobs: &[Job]) {
        let batch: Vec<Arc<Event>> = jobs
            .iter()
            .flat_map(|j| j.events.iter().map(|(e, _, _)| e.clone()))
            .collect();
        if batch.is_empty() {
            return;
        }
        self.idempotency.note_durable(&batch);
        let mut r = self.read.write().expect("read model lock");
        let durable_before = r.p.position;
        for e in &batch {
            if let Err(err) = r.apply(&self.store, e) {
                // The read model cannot follow the log: stop taking commands (a restart
                // rebuilds it from the stored rows and the log).
                tracing::error!(error = %crate::error::chain(&err), code = err.code(), "reading an account's stored row failed; the ledger stops taking commands");
                self.failed.store(true, Ordering::SeqCst);
                return;
            }
        }
        r.evict();
        let position = r.p.position;
        crate::invariants::published_in_order(
            durable_before,
            batch.first().map_or(0, |e| e.seq),
            batch.last().map_or(0, |e| e.seq),
            position,
        );
        drop(r);
        self.durable.store(position, Ordering::SeqCst);
        self.metrics.set_log_len(position);
        self.durable_watch.send_replace(position);
        let batch: DurableBatch = Arc::new(batch);
        if let Some(tap) = self.tap.lock().expect("tap lock").as_ref() {
            let _ = tap.try_send(batch.clone());
        }
        // A full queue blocks here: the indexer's pace bounds the ledger's, never its memory.
        let _ = self.index.send(batch);
    }

    fn answer(&self, job: Job) {
        let mut outcomes = Vec::with_capacity(job.events.len());
        for (kind, reply, answer) in job.replies {
            let result = match answer {
                Answer::New(i) => {
                    let (event, bytes, hash) = &job.events[i];
                    if kind != "append" {
                        outcomes.push((kind, event.payload.failure_code().unwrap_or("succeeded")));
                    }
                    Ok(Committed {
                        event: event.clone(),
                        bytes: bytes.clone(),
                        hash: *hash,
                        replayed: false,
                    })
                }
                Answer::ReplayOfBatch(i) => {
                    let (event, bytes, hash) = &job.events[i];
                    self.metrics.idempotent_replays.inc();
                    Ok(Committed {
                        event: event.clone(),
                        bytes: bytes.clone(),
                        hash: *hash,
                        replayed: true,
                    })
                }
                Answer::Replay(c) => {
                    self.metrics.idempotent_replays.inc();
                    Ok(c)
                }
                Answer::Fail(e) => {
                    self.metrics.count_rejected(e.code());
                    Err(e)
                }
            };
            let _ = reply.send(result);
        }
        self.metrics.count_commands(&outcomes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_v7_with_the_given_time_and_distinct_across_refills() {
        let mut ids = EventIds::default();
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = 3 * EventIds::RANDOM_BYTES / 10;
        let all: std::collections::HashSet<Uuid> = (0..n).map(|_| ids.next(now)).collect();
        assert_eq!(
            all.len(),
            n,
            "every id is new, also after the random buffer was read again"
        );
        for id in &all {
            assert_eq!(id.get_version_num(), 7);
            let (secs, nanos) = id.get_timestamp().expect("v7 has a time").to_unix();
            assert_eq!((secs, nanos / 1_000_000), (now.timestamp() as u64, 123));
        }
    }
}
