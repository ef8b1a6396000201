//! The downstream analytics consumer: what another team builds from the topic with the schema
//! crate alone. It reads `bindledger.events` in a consumer group, decodes each message with
//! `bindledger-events` (upcasting older versions), drops duplicates, and keeps the views a
//! person budgeting or watching quality wants: spend per account per month per wallet provider,
//! bind success rates per provider, and failure reasons per day.
//!
//! **Duplicates.** The topic contract puts an account's events in one partition in increasing
//! `seq`; a message with a `seq` not above the highest already seen in its partition is a
//! duplicate (a redelivery after a rebalance or a retried read), whatever its event id. This
//! keeps memory to one number per partition instead of a set of every event id.
//!
//! **Fences.** A promotion writes a fence to every partition (TOPIC.md); a message of an epoch
//! below the highest one read in its partition (fences included) was written by a primary
//! after it was fenced, and is dropped. That is the topic's first fencing rule; the two others
//! need the whole chain, which this consumer does not rebuild (see TOPIC.md).

use bindledger_events::{decode, Currency, Event, Payload};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most distinct keys one view keeps; beyond it, new keys are counted in `overflowed`.
pub const VIEW_KEYS_MAX: usize = 1_000_000;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BindRate {
    pub attempts: u64,
    pub succeeded: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Analytics {
    pub events: u64,
    /// "account|YYYY-MM|provider|currency" -> minor units spent (successful payments).
    pub spend_minor: BTreeMap<String, i64>,
    /// provider -> bind attempts and successes.
    pub bind_rates: BTreeMap<String, BindRate>,
    /// "YYYY-MM-DD|event_type|code" -> count.
    pub failures_per_day: BTreeMap<String, u64>,
    /// New keys dropped because a view was full.
    pub overflowed: u64,
    /// Sums that reached `i64::MAX` and stayed there: the topic held amounts whose sum does
    /// not fit in 64 bits (no ledger of ours writes them; the topic is read unverified).
    pub saturated: u64,
}

fn bump<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: String, overflowed: &mut u64) -> Option<&'a mut V> {
    if !map.contains_key(&key) && map.len() >= VIEW_KEYS_MAX {
        *overflowed += 1;
        return None;
    }
    Some(map.entry(key).or_default())
}

impl Analytics {
    /// Folds one event in (event time, never the clock).
    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        let month = e.event_time.format("%Y-%m");
        match &e.payload {
            Payload::PaymentSucceeded {
                provider,
                amount_minor,
                currency,
                ..
            } => {
                let key = format!("{}|{month}|{provider}|{currency}", e.account);
                if let Some(v) = bump(&mut self.spend_minor, key, &mut self.overflowed) {
                    *v = v.checked_add(*amount_minor).unwrap_or_else(|| {
                        self.saturated += 1;
                        if *amount_minor < 0 {
                            i64::MIN
                        } else {
                            i64::MAX
                        }
                    });
                }
            }
            Payload::WalletBound { provider, .. } | Payload::BindFailed { provider, .. } => {
                if let Some(rate) = bump(&mut self.bind_rates, provider.to_string(), &mut self.overflowed) {
                    rate.attempts += 1;
                    rate.succeeded += u64::from(matches!(e.payload, Payload::WalletBound { .. }));
                }
            }
            _ => {}
        }
        if let Some(code) = e.payload.failure_code() {
            let key = format!("{}|{}|{code}", e.event_time.format("%Y-%m-%d"), e.event_type());
            if let Some(v) = bump(&mut self.failures_per_day, key, &mut self.overflowed) {
                *v += 1;
            }
        }
    }

    /// A short report for a person.
    pub fn summary(&self) -> String {
        let mut out = format!("{} events\n", self.events);
        out.push_str("bind success rate per provider:\n");
        for (p, r) in &self.bind_rates {
            out.push_str(&format!(
                "  {:<14} {:>6} / {:<6} {:>5.1}%\n",
                p,
                r.succeeded,
                r.attempts,
                100.0 * r.succeeded as f64 / r.attempts.max(1) as f64
            ));
        }
        let mut per_provider: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (k, v) in &self.spend_minor {
            let parts: Vec<&str> = k.split('|').collect();
            let sum = per_provider
                .entry((parts[2].to_owned(), parts[3].to_owned()))
                .or_default();
            *sum = sum.saturating_add(*v);
        }
        out.push_str("spend per provider:\n");
        for ((p, c), v) in &per_provider {
            let c = Currency::parse(c).unwrap_or_default();
            out.push_str(&format!("  {:<14} {:>20}\n", p, c.format(*v)));
        }
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for (k, v) in &self.failures_per_day {
            let reason = k.split_once('|').map_or("", |(_, r)| r).to_owned();
            *reasons.entry(reason).or_default() += v;
        }
        out.push_str("failures by reason:\n");
        for (r, v) in &reasons {
            out.push_str(&format!("  {:<46} {:>8}\n", r, v));
        }
        if self.saturated > 0 || per_provider.values().any(|v| *v == i64::MAX || *v == i64::MIN) {
            out.push_str(&format!(
                "warning: {} sums did not fit in 64 bits and stop at the limit (the topic holds impossible amounts)\n",
                self.saturated.max(1)
            ));
        }
        out
    }
}

/// What `consume` reads, and for how long. (The command line that fills it is the binary's.)
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Consumer group (a new group starts at the beginning of the topic).
    pub group: String,
    /// Stop after this long without a new message (0: run until stopped).
    pub idle_exit_ms: u64,
    /// Extra librdkafka properties (TLS, SASL), given as they are.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// What a consumer run tells as it goes, for its caller to show.
#[derive(Debug)]
pub enum ConsumeNote<'a> {
    /// The group read this topic before: it resumes from its committed offsets on this many
    /// of the partitions, so the figures cover only what follows them.
    Resuming { committed: usize, partitions: i32 },
    /// A new group: from the beginning.
    FromTheBeginning,
    /// Every 5 s: messages read so far, read in these 5 s, the lag (when known), and the
    /// aggregates.
    Progress {
        messages: u64,
        recent: u64,
        lag: Option<i64>,
        report: &'a ConsumeReport,
    },
}

/// What a consumer run saw.
#[derive(Debug, Default, Serialize)]
pub struct ConsumeReport {
    pub analytics: Analytics,
    /// Messages per `event_type` header (duplicates excluded).
    pub per_type: BTreeMap<String, u64>,
    pub messages: u64,
    pub duplicates: u64,
    pub undecodable: u64,
    /// Fences read, and messages dropped as a fenced primary's.
    pub fences: u64,
    pub fenced: u64,
}

/// Consumes until idle (or forever), telling `note` where it starts and how it goes every 5 s.
pub fn consume(args: &ConsumeOptions, mut note: impl FnMut(ConsumeNote<'_>)) -> anyhow::Result<ConsumeReport> {
    let mut client = ClientConfig::new();
    for (k, v) in &args.properties {
        client.set(k, v);
    }
    let consumer: BaseConsumer = client
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    // Refuse at once, and say why, when there is nothing to read: no broker answers, or the
    // topic does not exist (reading on would log AllBrokersDown forever and end with "0").
    let kafka = crate::config::KafkaConfig {
        brokers: args.brokers.clone(),
        properties: args.properties.clone(),
        ..Default::default()
    };
    let partitions = super::client::require_topic(&kafka, &args.topic, Duration::from_secs(10))? as i32;
    // Say where reading starts: a group that read this topic before goes on from its
    // committed offsets, and its aggregates then cover only what follows them.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&args.topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .filter(|e| matches!(e.offset(), rdkafka::Offset::Offset(o) if o > 0))
                .count()
        })
        .unwrap_or(0);
    if committed > 0 {
        note(ConsumeNote::Resuming { committed, partitions });
    } else {
        note(ConsumeNote::FromTheBeginning);
    }
    consumer.subscribe(&[&args.topic])?;
    let mut report = ConsumeReport::default();
    let mut highest: HashMap<i32, u64> = HashMap::new();
    let mut epochs: HashMap<i32, u64> = HashMap::new();
    let mut last_message = Instant::now();
    let mut last_print = Instant::now();
    let mut printed_at = 0u64;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "kafka"),
            Some(Ok(m)) => {
                last_message = Instant::now();
                report.messages += 1;
                let number = |name: &str| super::client::header_number(&m, name);
                let term = epochs.entry(m.partition()).or_insert(0);
                if let Some(fence) = number("fence") {
                    report.fences += 1;
                    *term = (*term).max(fence);
                    continue;
                }
                let epoch = number("epoch").unwrap_or(0);
                if epoch < *term {
                    report.fenced += 1;
                    continue;
                }
                *term = epoch;
                let Some(value) = m.payload() else {
                    report.undecodable += 1;
                    continue;
                };
                match decode(value) {
                    Ok(e) => {
                        let seen = highest.entry(m.partition()).or_insert(0);
                        if e.seq <= *seen {
                            report.duplicates += 1;
                            continue;
                        }
                        *seen = e.seq;
                        *report.per_type.entry(e.event_type().to_owned()).or_default() += 1;
                        report.analytics.apply(&e);
                    }
                    Err(err) => {
                        report.undecodable += 1;
                        tracing::warn!(partition = m.partition(), offset = m.offset(), error = %err, "undecodable message");
                    }
                }
            }
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            let lag = lag_of(&consumer, &args.topic, partitions);
            note(ConsumeNote::Progress {
                messages: report.messages,
                recent: report.messages - printed_at,
                lag,
                report: &report,
            });
            printed_at = report.messages;
            last_print = Instant::now();
        }
        if args.idle_exit_ms > 0 && last_message.elapsed() > Duration::from_millis(args.idle_exit_ms) {
            return Ok(report);
        }
    }
}

/// Messages on the topic past the consumer's position, over every partition it is assigned.
fn lag_of(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    let mut lag = 0;
    for p in 0..partitions {
        let Some(e) = positions.find_partition(topic, p) else {
            continue;
        };
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(2)).ok()?;
        let at = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - at).max(0);
    }
    Some(lag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindledger_events::{FactorCheck, Hash, PaymentFailure, Provider, WalletRef};
    use chrono::TimeZone;

    fn event(seq: u64, account: &str, day: u32, payload: Payload) -> Event {
        bindledger_domain::testing::event(
            seq,
            account,
            seq,
            chrono::Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap(),
            payload,
        )
    }

    fn paid(amount_minor: i64) -> Payload {
        Payload::PaymentSucceeded {
            binding_id: uuid::Uuid::nil(),
            provider: Provider::parse("alipay").unwrap(),
            wallet: WalletRef {
                masked: "x".into(),
                fingerprint: Hash::default(),
            },
            order_id: "o".into(),
            amount_minor,
            currency: Currency::CNY,
            factors: vec![FactorCheck {
                factor: bindledger_events::Factor::Password,
                passed: true,
            }],
            authorization_id: "a".into(),
        }
    }

    /// Regression: two amounts whose sum overflows (unverified input from a topic) panicked
    /// the consumer.
    #[test]
    fn sums_that_do_not_fit_saturate_and_are_reported() {
        let mut a = Analytics::default();
        a.apply(&event(1, "alice", 1, paid(i64::MAX)));
        a.apply(&event(2, "alice", 1, paid(i64::MAX)));
        a.apply(&event(3, "bob", 1, paid(i64::MAX)));
        assert_eq!(a.saturated, 1);
        assert_eq!(
            a.spend_minor.values().copied().collect::<Vec<_>>(),
            [i64::MAX, i64::MAX]
        );
        let summary = a.summary();
        assert!(summary.contains("did not fit in 64 bits"), "{summary}");
    }

    #[test]
    fn aggregates_by_account_month_provider_and_day() {
        let mut a = Analytics::default();
        a.apply(&event(1, "alice", 1, paid(1000)));
        a.apply(&event(2, "alice", 2, paid(250)));
        a.apply(&event(3, "bob", 2, paid(5)));
        a.apply(&event(
            4,
            "bob",
            3,
            Payload::PaymentFailed {
                binding_id: uuid::Uuid::nil(),
                order_id: "o".into(),
                amount_minor: 1,
                currency: Currency::CNY,
                factors: vec![],
                reason: PaymentFailure::WrongPassword,
            },
        ));
        assert_eq!(a.spend_minor["alice|2026-11|alipay|CNY"], 1250);
        assert_eq!(a.spend_minor["bob|2026-11|alipay|CNY"], 5);
        assert_eq!(a.failures_per_day["2026-11-03|payment_failed|wrong_password"], 1);
        assert_eq!(a.events, 4);
        assert!(a.summary().contains("12.55 CNY"), "{}", a.summary());
    }
}
