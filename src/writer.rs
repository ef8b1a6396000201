//! The single writer. It owns the log: it takes commands in batches (up to `batch_max`),
//! decides each against its in-memory state, turns each into exactly one event, writes the
//! batch atomically with one flush (group commit), publishes the events to the read model, and
//! only then answers the callers.
//!
//! **Architecture invariant:** nothing but this thread appends to the log, and no caller is
//! answered before its event is durable. If a write or flush fails the writer answers every
//! caller of the batch with `storage_failed` and stops: its state may be ahead of the disk.

use bindledger_events::{codec, hash_bytes, Event, Hash, Payload, SCHEMA_VERSION};
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::command::Meta;
use crate::decide::{self, BindFacts, BindVerdict, PayFacts, PayVerdict, Rules};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::projection::Projection;
use crate::store::{Store, WriteBatch};

/// A command ready to be decided: validated, its secrets already used and dropped.
#[derive(Debug)]
pub enum Request {
    Bind { meta: Meta, digest: Hash, facts: BindFacts, verdict: BindVerdict },
    Pay { meta: Meta, digest: Hash, facts: PayFacts, verdict: PayVerdict },
    Unbind { meta: Meta, digest: Hash, binding_id: Uuid },
}

impl Request {
    fn meta(&self) -> &Meta {
        match self {
            Request::Bind { meta, .. } | Request::Pay { meta, .. } | Request::Unbind { meta, .. } => meta,
        }
    }
    fn digest(&self) -> &Hash {
        match self {
            Request::Bind { digest, .. } | Request::Pay { digest, .. } | Request::Unbind { digest, .. } => digest,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Bind { .. } => "bind",
            Request::Pay { .. } => "pay",
            Request::Unbind { .. } => "unbind",
        }
    }
}

/// The answer to a command: its event (or, for a retry, the original one).
#[derive(Debug, Clone)]
pub struct Committed {
    pub event: Event,
    pub hash: Hash,
    /// True when this is the result of an earlier command with the same idempotency key.
    pub replayed: bool,
}

pub struct Submission {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Committed>>,
}

enum Answer {
    New(usize),
    Replay(Committed),
    ReplayOfBatch(usize),
    Fail(Error),
}

pub struct Writer {
    pub store: Arc<Store>,
    /// The writer's own decision state; may run ahead of the read model within a batch.
    pub state: Projection,
    /// What readers see: only events that are durable.
    pub read: Arc<RwLock<Projection>>,
    pub next_seq: u64,
    pub prev_hash: Hash,
    pub rules: Rules,
    pub batch_max: usize,
    pub metrics: Arc<Metrics>,
    pub failed: Arc<AtomicBool>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let mut subs = Vec::with_capacity(self.batch_max);
        while let Some(first) = rx.blocking_recv() {
            subs.push(first);
            while subs.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(s) => subs.push(s),
                    Err(_) => break,
                }
            }
            if !self.process(&mut subs) {
                // Storage failed: refuse everything still queued, then stop.
                rx.close();
                while let Ok(s) = rx.try_recv() {
                    let _ = s.reply.send(Err(Error::StorageFailed("the writer stopped after a storage failure".into())));
                }
                return;
            }
        }
        tracing::info!("writer stopped: every handle closed");
    }

    fn stored_event(&self, seq: u64) -> Result<Committed> {
        let bytes = self.store.event_bytes(seq)?.ok_or_else(|| Error::Corrupt(format!("idempotency row points at missing event {seq}")))?;
        let event = codec::decode(&bytes).map_err(|e| Error::Corrupt(format!("event {seq}: {e}")))?;
        Ok(Committed { event, hash: hash_bytes(&bytes), replayed: true })
    }

    /// Decides, writes and answers one batch. Returns false if storage failed.
    fn process(&mut self, subs: &mut Vec<Submission>) -> bool {
        let started = Instant::now();
        let now = bindledger_events::types::micros::truncate(Utc::now());
        let mut batch = WriteBatch::default();
        let mut events: Vec<(Event, Hash)> = Vec::with_capacity(subs.len());
        let mut answers: Vec<Answer> = Vec::with_capacity(subs.len());
        let mut batch_keys: HashMap<(&str, &str), (usize, Hash)> = HashMap::new();
        let mut touched: HashSet<String> = HashSet::new();
        let mut buf = Vec::with_capacity(1024);

        for sub in subs.iter() {
            let req = &sub.request;
            let meta = req.meta();
            if let Some(key) = meta.idempotency_key.as_deref() {
                if let Some((idx, digest)) = batch_keys.get(&(meta.account.as_str(), key)) {
                    answers.push(if digest == req.digest() {
                        Answer::ReplayOfBatch(*idx)
                    } else {
                        Answer::Fail(Error::IdempotencyKeyReused { key: key.to_owned() })
                    });
                    continue;
                }
                match self.store.idempotency(&meta.account, key) {
                    Ok(Some((seq, digest))) => {
                        answers.push(if &digest == req.digest() {
                            match self.stored_event(seq) {
                                Ok(c) => Answer::Replay(c),
                                Err(e) => Answer::Fail(e),
                            }
                        } else {
                            Answer::Fail(Error::IdempotencyKeyReused { key: key.to_owned() })
                        });
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        answers.push(Answer::Fail(e));
                        continue;
                    }
                }
            }
            let acct = self.state.accounts.get(&meta.account);
            let version = acct.map_or(0, |a| a.version);
            if let Some(expected) = meta.expected_version {
                if expected != version {
                    answers.push(Answer::Fail(Error::VersionConflict { expected, actual: version }));
                    continue;
                }
            }
            let payload = match req {
                Request::Bind { facts, verdict, .. } => decide::decide_bind(acct, facts, verdict, self.rules, Uuid::now_v7()),
                Request::Pay { facts, verdict, .. } => decide::decide_pay(acct, facts, verdict, self.rules),
                Request::Unbind { binding_id, .. } => decide::decide_unbind(acct, *binding_id, self.rules),
            };
            let event = Event {
                v: SCHEMA_VERSION,
                id: Uuid::now_v7(),
                seq: self.next_seq,
                account: meta.account.clone(),
                account_seq: version + 1,
                event_time: meta.event_time.unwrap_or(now),
                record_time: now,
                idempotency_key: meta.idempotency_key.clone(),
                request_digest: Some(*req.digest()),
                correlation_id: meta.correlation_id.clone(),
                context: meta.context.clone(),
                prev_hash: self.prev_hash,
                payload,
            };
            codec::encode_into(&event, &mut buf);
            let hash = hash_bytes(&buf);
            let is_payment = matches!(event.payload, Payload::PaymentSucceeded { .. } | Payload::PaymentFailed { .. });
            batch.add_event(
                event.seq,
                &event.account,
                event.account_seq,
                &buf,
                is_payment,
                meta.idempotency_key.as_deref().map(|k| (k, req.digest())),
            );
            self.state.apply(&event);
            self.next_seq += 1;
            self.prev_hash = hash;
            if let Some(key) = meta.idempotency_key.as_deref() {
                batch_keys.insert((meta.account.as_str(), key), (events.len(), *req.digest()));
            }
            touched.insert(meta.account.clone());
            answers.push(Answer::New(events.len()));
            events.push((event, hash));
        }

        if !events.is_empty() {
            for account in &touched {
                batch.put_account(account, &self.state.accounts[account]);
            }
            batch.set_position(self.next_seq - 1);
            if let Err(e) = self.store.commit(batch) {
                tracing::error!(error = %e, events = events.len(), "writing the batch failed; the writer stops");
                self.failed.store(true, Ordering::SeqCst);
                for sub in subs.drain(..) {
                    let _ = sub.reply.send(Err(Error::StorageFailed(e.to_string())));
                }
                return false;
            }
            let mut read = self.read.write().expect("read model lock");
            for (e, _) in &events {
                read.apply(e);
            }
            drop(read);
            self.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(events.len() as f64);
            self.metrics.log_events.store(self.next_seq - 1, Ordering::Relaxed);
        }

        let mut outcomes = Vec::with_capacity(events.len());
        for (sub, answer) in subs.drain(..).zip(answers) {
            let kind = sub.request.kind();
            let result = match answer {
                Answer::New(i) => {
                    let (event, hash) = &events[i];
                    outcomes.push((kind, event.payload.failure_code().unwrap_or("succeeded")));
                    Ok(Committed { event: event.clone(), hash: *hash, replayed: false })
                }
                Answer::ReplayOfBatch(i) => {
                    let (event, hash) = &events[i];
                    self.metrics.idempotent_replays.fetch_add(1, Ordering::Relaxed);
                    Ok(Committed { event: event.clone(), hash: *hash, replayed: true })
                }
                Answer::Replay(c) => {
                    self.metrics.idempotent_replays.fetch_add(1, Ordering::Relaxed);
                    Ok(c)
                }
                Answer::Fail(e) => {
                    self.metrics.count_rejected(e.code());
                    Err(e)
                }
            };
            let _ = sub.reply.send(result);
        }
        self.metrics.count_commands(&outcomes);
        true
    }
}
