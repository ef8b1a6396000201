//! The signed checkpoints topic: every checkpoint the ledger signs, published in order.

use crate::adapters::kafka::{client_error, KafkaError};
use crate::config::KafkaConfig;
use crate::ledger::checkpoint::{CheckpointStore, SignedCheckpoint};

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
    pub status: std::sync::Arc<crate::adapters::kafka::client::RelayStatus>,
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
        use crate::adapters::kafka::client::State;
        let mut backoff = crate::adapters::kafka::client::Backoff::new(&self.config);
        loop {
            let result = tokio::select! {
                r = self.session() => r,
                _ = shutdown.changed() => Ok(()),
            };
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

    /// The seq of the topic's last checkpoint (0 when empty), checked to be this ledger's.
    fn recover(&self) -> Result<u64, KafkaError> {
        let topic = &self.topic;
        let mut last = 0u64;
        crate::adapters::kafka::client::read_tails(&self.config, topic, |_, m| {
            use rdkafka::message::Message;
            let theirs: SignedCheckpoint = serde_json::from_slice(m.payload().unwrap_or_default()).map_err(|_| {
                KafkaError::Refused(format!(
                    "{topic} holds a message that is not a checkpoint: refusing to publish to it"
                ))
            })?;
            // Ours, or a previous primary's (this node was promoted) with the same key over the
            // same event of this log: kept in place of any of ours for that seq, and publishing
            // goes on after it.
            let event = self
                .ledger
                .event_bytes(theirs.seq)?
                .filter(|_| theirs.seq <= self.ledger.log_len());
            let same = event.is_some_and(|b| bindledger_events::hash_bytes(&b) == theirs.head)
                && theirs.verify(&self.public_key).is_ok();
            if same {
                let ours = self
                    .store
                    .tree
                    .get(theirs.seq.to_be_bytes())
                    .map_err(crate::Error::from)?;
                let ours: Option<SignedCheckpoint> = ours.and_then(|v| serde_json::from_slice(&v).ok());
                if ours.is_none_or(|o| o.signature != theirs.signature) {
                    self.store.put(&theirs)?;
                }
            }
            if !same {
                return Err(KafkaError::Refused(format!(
                    "{topic} holds checkpoint {} that is not this ledger's: refusing to publish to it",
                    theirs.seq
                )));
            }
            last = last.max(theirs.seq);
            Ok(())
        })?;
        Ok(last)
    }

    async fn session_once(&mut self) -> Result<(), KafkaError> {
        let position = self.connect().await?;
        self.publish_after(position).await.map(|_| ())
    }

    async fn connect(&mut self) -> Result<u64, KafkaError> {
        use crate::adapters::kafka::client::State;
        self.status.set(State::Connecting);
        crate::adapters::kafka::client::ensure_topic(&self.config, &self.topic, 1).await?;
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
        let producer = crate::adapters::kafka::client::producer(&self.config)?;
        let pending: Vec<SignedCheckpoint> = self
            .store
            .tree
            .range((position + 1).to_be_bytes()..)
            .map(|r| {
                r.map_err(crate::Error::from).and_then(|(_, v)| {
                    serde_json::from_slice(&v).map_err(|e| crate::Error::Corrupt(format!("a stored checkpoint: {e}")))
                })
            })
            .collect::<std::result::Result<_, _>>()?;
        for cp in pending {
            self.status.set(crate::adapters::kafka::client::State::Publishing);
            let key = cp.seq.to_string();
            let value = serde_json::to_vec(&cp).expect("checkpoints serialize");
            let headers = crate::adapters::kafka::client::headers(&[("seq", &key)]);
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
        self.status.set(crate::adapters::kafka::client::State::Idle);
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
