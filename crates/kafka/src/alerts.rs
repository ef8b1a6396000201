//! Publishes the alert stream to its own topic (default `bindledger.alerts`): one message per
//! alert change, in stream order, on partition 0, key = the alert's key (account or wallet
//! fingerprint), value = the change as JSON, headers `stream_seq`, `alert_id`, `rule`,
//! `severity`, `change`. Like the events relay it is exactly once without transactions: on
//! every (re)start it reads the partition's last message and goes on after its `stream_seq`
//! (refusing a topic whose last alert is not this ledger's), and the broker being away never
//! holds up the monitor.

use crate::{client_error, KafkaError};
use rdkafka::producer::FutureRecord;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::client::{ensure_topic, header_text, headers, producer, read_tails, run_sessions, RelayStatus, State};
use crate::config::KafkaConfig;
use crate::ledger::alerts::feed::AlertFeed;

/// Changes read from the store per pass.
const READ_CHANGES: usize = 1024;

pub struct AlertPublisher {
    feed: Arc<AlertFeed>,
    stream: tokio::sync::watch::Receiver<u64>,
    /// How far the events are on their topic ([`crate::ledger::Ledger::on_topic`]).
    on_topic: tokio::sync::watch::Receiver<u64>,
    config: KafkaConfig,
    pub status: Arc<RelayStatus>,
}

impl AlertPublisher {
    pub fn new(
        feed: Arc<AlertFeed>,
        on_topic: tokio::sync::watch::Receiver<u64>,
        config: KafkaConfig,
    ) -> AlertPublisher {
        AlertPublisher {
            stream: feed.subscribe(),
            on_topic,
            feed,
            config,
            status: Default::default(),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let (config, status) = (self.config.clone(), self.status.clone());
        run_sessions!(
            &config,
            &status,
            "alerts topic",
            &config.alerts_topic,
            shutdown,
            self.session()
        );
    }

    /// The highest stream seq on the topic, checked against this ledger's alert stream.
    fn recover(&self) -> Result<u64, KafkaError> {
        let topic = &self.config.alerts_topic;
        let mut max = 0u64;
        read_tails(&self.config, topic, |p, m| {
            let seq = header_text(m, "stream_seq")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    KafkaError::Topic(format!(
                        "{topic} partition {p} holds a message without a stream_seq header"
                    ))
                })?;
            let ours = self.feed.store().changes_after(seq.saturating_sub(1), seq, 1)?;
            if ours.first().map(|c| c.alert.id.as_str()) != header_text(m, "alert_id").as_deref() {
                return Err(KafkaError::Refused(format!(
                    "{topic} holds alert {seq} that is not this ledger\'s: refusing to publish to it"
                )));
            }
            max = max.max(seq);
            Ok(())
        })?;
        Ok(max)
    }

    async fn session(&mut self) -> Result<(), KafkaError> {
        let topic = self.config.alerts_topic.clone();
        self.status.set(State::Connecting);
        ensure_topic(&self.config, &topic, 1).await?;
        self.status.set(State::Recovering);
        let mut position = tokio::task::block_in_place(|| self.recover())?;
        let producer = producer(&self.config)?;
        self.status.position.store(position, Ordering::Relaxed);
        *self.status.last_error.lock().expect("status lock") = None;
        tracing::info!(%topic, from = position + 1, "alerts topic: recovered");
        loop {
            if self.feed.published() <= position {
                self.status.set(State::Idle);
            }
            let changes = match self.feed.next_after(position, READ_CHANGES, &mut self.stream).await? {
                Some(changes) => changes,
                None => return Ok(()), // the monitor stopped
            };
            // A change goes out once the event that made it is on the events topic.
            let caused_by = changes.iter().map(|c| c.alert.position).max().unwrap_or(0);
            if *self.on_topic.borrow() < caused_by {
                self.status.set(State::Idle);
                self.on_topic
                    .wait_for(|p| *p >= caused_by)
                    .await
                    .map_err(|_| KafkaError::Topic("the ledger stopped".into()))?;
            }
            self.status.set(State::Publishing);
            let mut deliveries = Vec::with_capacity(changes.len());
            for c in &changes {
                let value = serde_json::to_vec(c).expect("alerts serialize");
                let seq = c.stream_seq.to_string();
                let headers = headers(&[
                    ("stream_seq", &seq),
                    ("alert_id", &c.alert.id),
                    ("rule", &c.alert.rule),
                    ("severity", c.alert.severity.as_str()),
                    ("change", &c.change),
                ]);
                let record = FutureRecord::to(&topic)
                    .partition(0)
                    .key(c.alert.key.value.as_str())
                    .payload(&value)
                    .headers(headers);
                match producer.send_result(record) {
                    Ok(d) => deliveries.push((c.stream_seq, d)),
                    Err((e, _)) => return Err(client_error(format!("queueing alert {}", c.stream_seq))(e)),
                }
            }
            for (seq, d) in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(client_error("delivering an alert")(e)),
                    Err(_) => return Err(KafkaError::Topic("the producer was dropped".into())),
                }
                position = seq;
                self.status.published_total.fetch_add(1, Ordering::Relaxed);
                self.status.position.store(position, Ordering::Relaxed);
            }
        }
    }
}
