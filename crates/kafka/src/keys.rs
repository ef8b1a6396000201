//! The keys topic (`<events topic>.keys`): each account's data key, **wrapped** under the master
//! key, keyed by account; a record without a value (a tombstone) when the account was erased.
//! Replicas and a restore take the wrapped keys from it, so they open what the primary opens,
//! and never see a key in the clear. Kafka keeps the last record of each account (the topic is
//! compacted where the broker compacts); a wrapped key a copy still holds after an erasure
//! opens under no master key once the master key rotates (`bindledger keys rotate`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureRecord;

use crate::client::{ensure_topic_with, producer, read_partitions, ReadFrom};
use crate::config::KafkaConfig;
use crate::ledger::Ledger;
use crate::{client_error, KafkaError};

/// Accounts' keys published per round.
const PUBLISH_BATCH: usize = 512;

/// The keys topic of an events topic.
pub fn keys_topic(events_topic: &str) -> String {
    format!("{events_topic}.keys")
}

/// Publishes the data keys a primary creates, rewraps or destroys (its `keys_outbox`).
pub struct KeysRelay {
    ledger: Ledger,
    config: KafkaConfig,
}

impl KeysRelay {
    pub fn new(ledger: Ledger, config: KafkaConfig) -> KeysRelay {
        KeysRelay { ledger, config }
    }

    /// Runs until `shutdown` turns true; a failed session is retried after a pause.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut pause = Duration::from_millis(200);
        while !*shutdown.borrow() {
            match self.session(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %keys_topic(&self.config.topic), "keys relay: retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn session(&self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<(), KafkaError> {
        let topic = keys_topic(&self.config.topic);
        ensure_topic_with(&self.config, &topic, 1, "compact").await?;
        let keys = self.ledger.data_keys().clone();
        // A topic with nothing on it (new, or made again) gets every key held.
        let ends =
            tokio::task::block_in_place(|| read_partitions(&self.config, &topic, ReadFrom::Tails, |_, _| Ok(())))?;
        if ends.iter().all(|e| *e == 0) {
            let n = tokio::task::block_in_place(|| keys.queue_all())?;
            if n > 0 {
                tracing::info!(keys = n, %topic, "keys relay: the topic is empty; publishing every data key held");
            }
        }
        let producer = producer(&self.config)?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let batch = tokio::task::block_in_place(|| keys.outbox(PUBLISH_BATCH))?;
            if batch.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let mut deliveries = Vec::with_capacity(batch.len());
            for (account, wrapped) in &batch {
                let mut record = FutureRecord::<str, [u8]>::to(&topic).partition(0).key(account.as_str());
                if let Some(w) = wrapped {
                    record = record.payload(&w[..]);
                }
                let d = producer
                    .send_result(record)
                    .map_err(|(e, _)| client_error("queueing a wrapped key")(e))?;
                deliveries.push(d);
            }
            for d in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(client_error("publishing a wrapped key")(e)),
                    Err(_) => return Err(KafkaError::NoAnswer("publishing a wrapped key".into())),
                }
            }
            tokio::task::block_in_place(|| keys.published(&batch))?;
        }
    }
}

/// Reads the keys topic from `from` (offsets per partition; `None`: its beginning) to its end
/// into the ledger's key table, skipping accounts this ledger knows as erased; returns where
/// it ended. Blocking.
pub fn load(ledger: &Ledger, kafka: &KafkaConfig, from: Option<&[i64]>) -> Result<Vec<i64>, KafkaError> {
    let topic = keys_topic(&kafka.topic);
    let from = from.map_or(ReadFrom::Beginning, ReadFrom::Offsets);
    let mut closed = 0u64;
    let ends = read_partitions(kafka, &topic, from, |_, m| {
        use rdkafka::Message;
        let Some(account) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return Ok(()); // not a record of ours
        };
        let erased = ledger.is_erased(account)?;
        if !ledger.data_keys().put_wrapped(account, m.payload(), erased)? {
            closed += 1;
        }
        Ok(())
    })?;
    if closed > 0 {
        tracing::error!(
            keys = closed,
            store = %ledger.data_keys().master().describe(),
            "wrapped data keys from the keys topic do not open under this node's master keys: give it the primary's key store (the same keys.file, or the same PKCS#11 token); until then their personal fields read as erased here"
        );
    }
    Ok(ends)
}

/// A restore's: reads the whole keys topic into `store`'s key table, then removes the keys of
/// the accounts erased in the restored log (`erased`), whatever the topic still held of them;
/// returns the keys kept. A topic that does not exist gives none (a log written before v8).
pub fn restore_into(
    store: &crate::ledger::store::Store,
    kafka: &KafkaConfig,
    erased: &std::collections::HashSet<String>,
) -> Result<u64, KafkaError> {
    let topic = keys_topic(&kafka.topic);
    if crate::client::require_topic(kafka, &topic, Duration::from_secs(5)).is_err() {
        return Ok(0);
    }
    read_partitions(kafka, &topic, ReadFrom::Beginning, |_, m| {
        use rdkafka::Message;
        let Some(account) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return Ok(());
        };
        crate::ledger::datakeys::store_wrapped(store, account, m.payload())?;
        Ok(())
    })?;
    for account in erased {
        crate::ledger::datakeys::store_wrapped(store, account, None)?;
    }
    Ok(store.tree("keys")?.len() as u64)
}

/// A replica's follower of the keys topic: loads it, then what is new every half second,
/// until `stop`.
pub fn spawn_follower(
    ledger: Ledger,
    kafka: KafkaConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bindledger-keys-follower".into())
        .spawn(move || {
            let mut ends: Option<Vec<i64>> = None;
            while !stop.load(Ordering::Relaxed) {
                match load(&ledger, &kafka, ends.as_deref()) {
                    Ok(e) => ends = Some(e),
                    // A topic not made yet (a primary without keys), or a broker away: again.
                    Err(e) => tracing::debug!(error = %e, "keys follower: retrying"),
                }
                for _ in 0..5 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
}
