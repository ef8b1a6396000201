//! The notifications topic (default `bindledger.notifications`): what the account holder is
//! told (a wallet bound, a binding locked or unlocked, a high-severity alert), for the
//! platform's messaging service to deliver. What is told, and its id, is
//! [`crate::domain::notify`]'s; this publishes it.
//!
//! **Message.** Key: the account; partition: Kafka's default partitioner of the key, so one
//! account's notifications are in one partition, in order. Value: the notification as JSON,
//! its message in Chinese and English. Headers: `notification_id`, `kind`, `seq` and `index`
//! (the log event that caused it, and its place among that event's notifications),
//! `event_hash` (the SHA-256 of that event's stored bytes).
//!
//! **Exactly once, without transactions**, as the events relay: notifications are made in
//! `(seq, index)` order and the idempotent producer keeps each partition's order without gaps
//! or duplicates, so on every (re)start the publisher reads the last message of each partition
//! and skips exactly the notifications at or before it (refusing a topic whose last message
//! names an event this log does not have). Its saved position (the log `seq` and the alert
//! stream position, saved only after the broker acknowledged) only shortens the scan.
//!
//! **Alerts.** An alert's notification is caused by the event that opened it, so the
//! publisher goes through the log only as far as the monitor has folded it, and takes the
//! alerts each event opened from the alert stream.

use rdkafka::producer::FutureRecord;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::client::{ensure_topic, header_text, headers, producer, read_tails, run_sessions, RelayStatus, State};
use super::partition::partition_for;
use super::relay::routing;
use super::{client_error, KafkaError};
use crate::config::KafkaConfig;
use crate::domain::alerts::{Alert, AlertChange};
use crate::domain::notify;
use crate::ledger::alerts::{AlertFeed, MonitorStatus};
use crate::ledger::Ledger;

/// Events read from the log per pass (their notifications are awaited together).
const READ_EVENTS: usize = 4096;
/// The saved position is updated at least this often (in events), and whenever caught up.
const SAVE_EVERY_EVENTS: u64 = 10_000;
/// Alert changes read from the stream at a time.
const READ_CHANGES: usize = 4096;

/// The live alerts the publisher follows: the stream, and how far the monitor has folded.
#[derive(Clone)]
pub struct AlertSource {
    pub feed: Arc<AlertFeed>,
    pub monitor: Arc<MonitorStatus>,
}

pub struct NotificationPublisher {
    ledger: Ledger,
    alerts: Option<AlertSource>,
    config: KafkaConfig,
    pub status: Arc<RelayStatus>,
}

/// Where the alert stream position is saved, beside the log position (the topic's name).
fn stream_position_name(topic: &str) -> String {
    format!("{topic}#alert-stream")
}

/// The alert changes read ahead, and the position of the last one handled.
struct StreamCursor {
    ahead: VecDeque<AlertChange>,
    /// Every change through this stream seq is handled.
    consumed: u64,
}

impl NotificationPublisher {
    pub fn new(ledger: Ledger, alerts: Option<AlertSource>, config: KafkaConfig) -> NotificationPublisher {
        let status: Arc<RelayStatus> = Default::default();
        let saved = ledger
            .replication()
            .relay_position(&config.notifications_topic)
            .unwrap_or(0);
        status.position.store(saved, Ordering::Relaxed);
        NotificationPublisher {
            ledger,
            alerts,
            config,
            status,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let topic = self.config.notifications_topic.clone();
        run_sessions!(
            &self.config,
            &self.status,
            "notifications topic",
            &topic,
            shutdown,
            self.session()
        );
    }

    /// The last `(seq, index)` of each partition (`(0, 0)` for an empty one), each checked to
    /// name an event of this log.
    fn recover(&self) -> Result<Vec<(u64, u32)>, KafkaError> {
        let topic = &self.config.notifications_topic;
        let mut tails: Vec<(u64, u32)> = Vec::new();
        let partitions = read_tails(&self.config, topic, |p, m| {
            let number = |name: &str| super::client::header_number(m, name);
            let (Some(seq), Some(index)) = (number("seq"), number("index")) else {
                return Err(KafkaError::Topic(format!(
                    "{topic} partition {p} holds a message without seq and index headers"
                )));
            };
            let ours = self.ledger.event_bytes(seq)?.filter(|_| seq <= self.ledger.log_len());
            let same =
                ours.is_some_and(|b| Some(bindledger_events::hash_bytes(&b).to_hex()) == header_text(m, "event_hash"));
            if !same {
                return Err(KafkaError::Refused(format!(
                    "{topic} partition {p} holds a notification of an event {seq} that is not this log's: refusing to publish to it"
                )));
            }
            if tails.len() <= p {
                tails.resize(p + 1, (0, 0));
            }
            tails[p] = tails[p].max((seq, index as u32));
            Ok(())
        })?;
        tails.resize(partitions, (0, 0));
        Ok(tails)
    }

    /// The alerts event `seq` opened that tell the account holder, in stream order. The
    /// monitor has folded `seq`, so every change it made for it is published.
    async fn opened_at(&self, seq: u64, cursor: &mut StreamCursor) -> Result<Vec<Alert>, KafkaError> {
        let mut opened = Vec::new();
        let Some(source) = &self.alerts else {
            return Ok(opened);
        };
        loop {
            while let Some(front) = cursor.ahead.front() {
                if front.alert.position > seq {
                    return Ok(opened);
                }
                let c = cursor.ahead.pop_front().expect("front exists");
                cursor.consumed = c.stream_seq;
                // Changes of earlier events were handled before the position was saved.
                if c.alert.position == seq && notify::alert_notifies(&c.change, &c.alert) {
                    opened.push(c.alert);
                }
            }
            if source.feed.published() <= cursor.consumed {
                return Ok(opened);
            }
            let more = source.feed.changes_after(cursor.consumed, READ_CHANGES)?;
            if more.is_empty() {
                // Published, not yet stored, and gone from memory: shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cursor.ahead.extend(more);
        }
    }

    async fn session(&self) -> Result<(), KafkaError> {
        let topic = self.config.notifications_topic.clone();
        self.status.set(State::Connecting);
        ensure_topic(&self.config, &topic, self.config.partitions).await?;
        self.status.set(State::Recovering);
        let tails = tokio::task::block_in_place(|| self.recover())?;
        let partitions = tails.len() as i32;
        let fresh = tails.iter().all(|t| *t == (0, 0));
        // A topic with nothing on it (new, or made again) gets every notification of the log.
        let (saved, stream) = if fresh {
            (0, 0)
        } else {
            (
                self.ledger.replication().relay_position(&topic)?,
                self.ledger
                    .replication()
                    .relay_position(&stream_position_name(&topic))?,
            )
        };
        let mut cursor = StreamCursor {
            ahead: VecDeque::new(),
            consumed: stream,
        };
        let mut from = saved + 1;
        let mut saved_at = saved;
        let producer = producer(&self.config)?;
        let mut durable = self.ledger.subscribe();
        let on_topic = self.ledger.on_topic();
        self.status.position.store(saved, Ordering::Relaxed);
        *self.status.last_error.lock().expect("status lock") = None;
        tracing::info!(%topic, partitions, from, "notifications topic: recovered");
        let wallet_of = |account: &str, binding_id: uuid::Uuid| {
            let state = self.ledger.account(account).ok().flatten()?;
            let b = state.bindings.iter().find(|b| b.binding_id == binding_id)?;
            Some((b.provider.as_str().to_owned(), b.wallet.masked.clone()))
        };
        loop {
            let end = self.ledger.log_len();
            // An event's alerts are known once the monitor has folded it; it is told once the
            // event is on the events topic (never from an event a promotion leaves out).
            let through = match &self.alerts {
                Some(a) => end.min(a.monitor.position.load(Ordering::Acquire)),
                None => end,
            }
            .min(*on_topic.borrow());
            if from > through {
                if saved_at < from - 1 {
                    self.save(from - 1, cursor.consumed)?;
                    saved_at = from - 1;
                }
                self.status.set(State::Idle);
                if end >= from {
                    tokio::time::sleep(Duration::from_millis(5)).await; // the monitor is folding
                } else {
                    let _ = tokio::time::timeout(Duration::from_secs(1), durable.changed()).await;
                }
                continue;
            }
            self.status.set(State::Publishing);
            let mut deliveries = Vec::new();
            let mut last = from - 1;
            for r in self.ledger.raw_events(from).take(READ_EVENTS) {
                let (seq, bytes) = r?;
                if seq > through {
                    break;
                }
                let opened = self.opened_at(seq, &mut cursor).await?;
                let own = routing(&bytes).is_some_and(|r| notify::may_notify(r.event_type));
                last = seq;
                if !own && opened.is_empty() {
                    continue;
                }
                let event = if own {
                    let mut e = bindledger_events::decode(&bytes)
                        .map_err(|e| crate::Error::corrupt_by(format!("event {seq}"), e))?;
                    // The holder's message names the wallet as the platform shows it.
                    self.ledger.open_event(&mut e)?;
                    Some(e)
                } else {
                    None
                };
                let hash = bindledger_events::hash_bytes(&bytes).to_hex();
                let opened: Vec<&Alert> = opened.iter().collect();
                for n in notify::for_event(event.as_ref(), seq, &opened, &wallet_of) {
                    let partition = partition_for(n.account.as_bytes(), partitions);
                    if (n.seq, n.index) <= tails[partition as usize] {
                        continue; // already on the topic
                    }
                    let value = serde_json::to_vec(&n).expect("notifications serialize");
                    let (seq_text, index_text) = (n.seq.to_string(), n.index.to_string());
                    let headers = headers(&[
                        ("notification_id", &n.id),
                        ("kind", n.kind.as_str()),
                        ("seq", &seq_text),
                        ("index", &index_text),
                        ("event_hash", &hash),
                    ]);
                    let record = FutureRecord::to(&topic)
                        .partition(partition)
                        .key(n.account.as_str())
                        .payload(&value)
                        .headers(headers);
                    match producer.send_result(record) {
                        Ok(d) => deliveries.push(d),
                        Err((e, _)) => return Err(client_error(format!("queueing notification {}", n.id))(e)),
                    }
                }
            }
            for d in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(client_error("delivering a notification")(e)),
                    Err(_) => return Err(KafkaError::Topic("the producer was dropped".into())),
                }
                self.status.published_total.fetch_add(1, Ordering::Relaxed);
            }
            self.status.position.store(last, Ordering::Relaxed);
            if last >= saved_at + SAVE_EVERY_EVENTS {
                self.save(last, cursor.consumed)?;
                saved_at = last;
            }
            from = last + 1;
        }
    }

    /// Saves how far the topic is known to hold everything: the log position first, so that a
    /// stream position behind it only makes the next start read changes it skips.
    fn save(&self, seq: u64, stream_seq: u64) -> Result<(), KafkaError> {
        let topic = &self.config.notifications_topic;
        self.ledger.replication().set_relay_position(topic, seq)?;
        self.ledger
            .replication()
            .set_relay_position(&stream_position_name(topic), stream_seq)?;
        Ok(())
    }
}
