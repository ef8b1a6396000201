//! The signed checkpoints topic: every checkpoint the ledger signs, published in order.
//!
//! **Fencing.** Each checkpoint message carries the `epoch` of the primary that published it,
//! and a promotion (or a restore) writes a fence of its epoch here too. A reader of the topic
//! ([`read_published`]) applies the events topic's rule 1 (a fence of epoch `E` drops every
//! later checkpoint of an epoch below `E`), and a checkpoint of epoch `e` over event `S` is a
//! fenced primary's when the chain's event `S` is of a later epoch (that primary signed its
//! own head, which the chain does not hold): such a checkpoint is dropped, never taken for a
//! rewritten topic. A fenced node publishes nothing more: its publisher stops once the node
//! takes no commands.

use crate::config::KafkaConfig;
use crate::ledger::checkpoint::{CheckpointStore, SignedCheckpoint};
use crate::{client_error, KafkaError};

/// A checkpoint as the topic holds it, with the epoch of the primary that published it.
#[derive(Debug, Clone)]
pub struct Published {
    pub epoch: u64,
    pub checkpoint: SignedCheckpoint,
}

/// The checkpoints topic read from its start, fences applied (rule 1); the fences themselves
/// and what they drop are left out. Also: the highest fence read.
pub fn read_published(kafka: &KafkaConfig, topic: &str) -> Result<(Vec<Published>, u64), KafkaError> {
    use crate::client::{header_number, read_partitions, ReadFrom};
    let mut out = Vec::new();
    let mut fenced = 0u64;
    read_partitions(kafka, topic, ReadFrom::Beginning, |_, m| {
        use rdkafka::message::Message;
        if let Some(fence) = header_number(m, "fence") {
            fenced = fenced.max(fence);
            return Ok(());
        }
        let epoch = header_number(m, "epoch").unwrap_or(0);
        if epoch < fenced {
            return Ok(()); // published by a primary after a newer epoch's fence
        }
        let checkpoint: SignedCheckpoint = serde_json::from_slice(m.payload().unwrap_or_default())
            .map_err(|_| KafkaError::Topic(format!("{topic} holds a message that is not a checkpoint")))?;
        out.push(Published { epoch, checkpoint });
        Ok(())
    })?;
    Ok((out, fenced))
}

/// Whether a checkpoint of `epoch` over event `seq` was signed by a primary that a later epoch
/// fenced before `seq`: `epoch_starts` lists where each epoch's events begin in the chain.
pub fn fenced_checkpoint(epoch: u64, seq: u64, epoch_starts: &[(u64, u64)]) -> bool {
    epoch_starts.iter().any(|(e, first)| *e > epoch && *first <= seq)
}

/// Puts every stored checkpoint on the checkpoints topic, exactly once and in order, like the
/// events relay: on each (re)connection it reads the topic's last checkpoint, which must be
/// this ledger's (signed with our key over the same event of this log: ours, or on a promoted
/// node the previous primary's, which is then kept; otherwise it refuses to publish, as the
/// events and alerts topics do), then sends every stored checkpoint after it.
/// Checkpoints made while the broker is away, or just before a crash, go out when it is back.
pub struct CheckpointPublisher {
    ledger: crate::ledger::Ledger,
    store: CheckpointStore,
    public_key: String,
    config: KafkaConfig,
    topic: String,
    signed: tokio::sync::watch::Receiver<u64>,
    pub status: std::sync::Arc<crate::client::RelayStatus>,
}

impl CheckpointPublisher {
    pub fn new(
        ledger: crate::ledger::Ledger,
        store: CheckpointStore,
        public_key: String,
        config: KafkaConfig,
        topic: String,
        signed: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        CheckpointPublisher {
            ledger,
            store,
            public_key,
            config,
            topic,
            signed,
            status: Default::default(),
        }
    }

    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        use crate::client::State;
        let mut backoff = crate::client::Backoff::new(&self.config);
        loop {
            let result = tokio::select! {
                r = self.session() => r,
                _ = shutdown.changed() => Ok(()),
            };
            if let Err(KafkaError::Fenced { epoch }) = result {
                tracing::warn!(epoch, topic = %self.topic, "checkpoints: this node was fenced; it publishes no more checkpoints");
                self.status.set(State::Fenced);
                return;
            }
            if *shutdown.borrow() {
                // The last checkpoint, made on stop, goes out if the broker is there: once the
                // signer has ended (its sender dropped), what is stored is published.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while self.signed.changed().await.is_ok() {}
                    let _ = self.session_once().await;
                })
                .await;
                break;
            }
            if let Err(e) = result {
                backoff
                    .after_failure(&self.status, "checkpoints topic", &self.topic, e, &mut shutdown)
                    .await;
            }
        }
        self.status.set(State::Stopped);
    }

    /// The seq of the topic's last checkpoint that stands (0 when none), each checked to be
    /// this ledger's: over the same event of this log, with our key (ours, or on a promoted node
    /// the previous primary's, which is then kept in place of any of ours for that seq). A
    /// checkpoint that does not match this log is a fenced primary's when its epoch is below
    /// this node's (skipped), and refuses the topic otherwise.
    fn recover(&self) -> Result<u64, KafkaError> {
        let topic = &self.topic;
        let (own_epoch, _) = self.ledger.replication().epoch()?;
        let (published, _) = read_published(&self.config, topic)?;
        let mut last = 0u64;
        for Published {
            epoch,
            checkpoint: theirs,
        } in published
        {
            let event = self
                .ledger
                .event_bytes(theirs.seq)?
                .filter(|_| theirs.seq <= self.ledger.log_len());
            let same = event.is_some_and(|b| bindledger_events::hash_bytes(&b) == theirs.head)
                && theirs.verify(&self.public_key).is_ok();
            if !same {
                if epoch < own_epoch {
                    continue; // a fenced primary's, over an event the chain does not hold
                }
                return Err(KafkaError::Refused(format!(
                    "{topic} holds checkpoint {} that is not this ledger's: refusing to publish to it",
                    theirs.seq
                )));
            }
            let ours = self.store.get(theirs.seq).ok().flatten();
            if ours.is_none_or(|o| o.signature != theirs.signature) {
                self.store.put(&theirs)?;
            }
            last = last.max(theirs.seq);
        }
        Ok(last)
    }

    async fn session_once(&mut self) -> Result<(), KafkaError> {
        let position = self.connect().await?;
        self.publish_after(position).await.map(|_| ())
    }

    async fn connect(&mut self) -> Result<u64, KafkaError> {
        use crate::client::State;
        self.status.set(State::Connecting);
        crate::client::ensure_topic(&self.config, &self.topic, 1).await?;
        self.status.set(State::Recovering);
        let position = tokio::task::block_in_place(|| self.recover())?;
        self.status
            .position
            .store(position, std::sync::atomic::Ordering::Relaxed);
        *self.status.last_error.lock().expect("status lock") = None;
        Ok(position)
    }

    /// Sends every stored checkpoint after `position`, in order; returns the new position.
    async fn publish_after(&mut self, mut position: u64) -> Result<u64, KafkaError> {
        let producer = crate::client::producer(&self.config)?;
        let pending = self.store.after(position)?;
        let (epoch, _) = self.ledger.replication().epoch()?;
        let epoch = epoch.to_string();
        for cp in pending {
            // A node a promotion fenced publishes nothing more (what it signed before may be
            // over events the chain will not hold).
            if !self.ledger.is_primary() {
                return Err(KafkaError::Fenced {
                    epoch: self.ledger.replication().fenced_by()?.unwrap_or(0),
                });
            }
            self.status.set(crate::client::State::Publishing);
            let key = cp.seq.to_string();
            let value = serde_json::to_vec(&cp).expect("checkpoints serialize");
            let headers = crate::client::headers(&[("seq", &key), ("epoch", &epoch)]);
            let record = rdkafka::producer::FutureRecord::to(&self.topic)
                .partition(0)
                .key(&key)
                .payload(&value)
                .headers(headers);
            producer
                .send(record, std::time::Duration::from_secs(30))
                .await
                .map_err(|(e, _)| client_error(format!("publishing checkpoint {}", cp.seq))(e))?;
            position = cp.seq;
            self.status
                .position
                .store(position, std::sync::atomic::Ordering::Relaxed);
            self.status
                .published_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.status.set(crate::client::State::Idle);
        Ok(position)
    }

    async fn session(&mut self) -> Result<(), KafkaError> {
        let mut position = self.connect().await?;
        loop {
            position = self.publish_after(position).await?;
            if self.signed.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Checkpoints a replica holds back until its log reaches their event.
const AHEAD_MAX: usize = 1024;

/// A replica's copy of the checkpoints topic: follows it (on a thread of its own, until `stop`
/// is set or the node is promoted, when its own signer and publisher take over) and keeps each
/// checkpoint that verifies with `public_key` and is over the same event of the replica's log,
/// so that a replica serves the primary's checkpoints. One ahead of the log waits for it (at
/// most [`AHEAD_MAX`]); a fenced primary's, over an event the chain does not hold, is skipped.
pub fn follow(
    ledger: crate::ledger::Ledger,
    store: CheckpointStore,
    public_key: String,
    config: KafkaConfig,
    topic: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    std::thread::Builder::new()
        .name("bindledger-replica-checkpoints".into())
        .spawn(move || {
            let mut next_offset = 0i64;
            let mut ahead: std::collections::VecDeque<SignedCheckpoint> = Default::default();
            let keep = |cp: &SignedCheckpoint| -> crate::Result<bool> {
                let Some(bytes) = ledger.event_bytes(cp.seq)? else {
                    return Ok(false);
                };
                if bindledger_events::hash_bytes(&bytes) == cp.head && cp.verify(&public_key).is_ok() {
                    store.put(cp)?;
                }
                Ok(true)
            };
            while !stop.load(Ordering::SeqCst) && !ledger.is_primary() {
                let reader = crate::reader::PartitionedConsumer::open(
                    crate::client::client_config(&config),
                    &topic,
                    Some(&[next_offset]),
                );
                let mut reader = match reader {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        std::thread::sleep(std::time::Duration::from_millis(500));
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %crate::error::chain(&e), "replica: the checkpoints topic cannot be read yet");
                        std::thread::sleep(std::time::Duration::from_millis(500));
                        continue;
                    }
                };
                let mut buffer = std::collections::VecDeque::new();
                while !stop.load(Ordering::SeqCst) && !ledger.is_primary() {
                    if let Err(e) = reader.fill(0, &mut buffer, 256, std::time::Duration::from_millis(200)) {
                        tracing::debug!(error = %crate::error::chain(&e), "replica: reading the checkpoints topic failed");
                        break;
                    }
                    next_offset = reader.next_offset[0];
                    for r in buffer.drain(..) {
                        if let Ok(cp) = serde_json::from_slice::<SignedCheckpoint>(&r.value) {
                            if ahead.len() == AHEAD_MAX {
                                ahead.pop_front();
                            }
                            ahead.push_back(cp);
                        }
                    }
                    // Those the log has reached.
                    while let Some(cp) = ahead.front() {
                        match keep(cp) {
                            Ok(true) => {
                                ahead.pop_front();
                            }
                            Ok(false) => break,
                            Err(e) => {
                                tracing::warn!(error = %crate::error::chain(&e), "replica: keeping a checkpoint failed");
                                ahead.pop_front();
                            }
                        }
                    }
                }
            }
        })
}
