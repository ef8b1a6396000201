//! `GET /metrics`: the ledger's metrics and those of what runs beside it (relays, replica,
//! monitor, idempotency index), encoded by `prometheus-client` in the OpenMetrics text format,
//! which Prometheus scrapes.
//!
//! The ledger's own metrics are `prometheus-client` metrics ([`crate::ledger::metrics`]); the
//! others are read from the components' status at each scrape and handed to the encoder by a
//! [`Collector`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;

use crate::state::AppState;
use bindledger_kafka::relay::Relay;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Float(f64),
}

/// One metric and its series, read at the scrape.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str, v: Value) -> Family {
        Family {
            name,
            help,
            counter: false,
            series: vec![(Vec::new(), v)],
        }
    }
    fn counter(name: &'static str, help: &'static str, v: u64) -> Family {
        Family {
            name,
            help,
            counter: true,
            series: vec![(Vec::new(), Value::Int(v as i64))],
        }
    }
    /// A gauge with one series labelled `label = value` at 1: a state, as Prometheus shows one.
    fn state(name: &'static str, help: &'static str, label: &'static str, value: String) -> Family {
        Family {
            name,
            help,
            counter: false,
            series: vec![(vec![(label, value)], Value::Int(1))],
        }
    }
}

/// What the components beside the ledger report, as of one scrape.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

fn encode_value(counter: bool, v: Value, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
    match (counter, v) {
        (true, Value::Int(n)) => ConstCounter::new(n.max(0) as u64).encode(encoder),
        (true, Value::Float(f)) => ConstCounter::new(f.max(0.0) as u64).encode(encoder),
        (false, Value::Int(n)) => ConstGauge::new(n).encode(encoder),
        (false, Value::Float(f)) => ConstGauge::new(f).encode(encoder),
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        for f in &self.0 {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            match f.series.as_slice() {
                [(labels, v)] if labels.is_empty() => encode_value(f.counter, *v, metric)?,
                series => {
                    for (labels, v) in series {
                        encode_value(f.counter, *v, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn snapshot(s: &AppState) -> Snapshot {
    let mut out = Vec::new();
    let (in_memory, on_disk, bytes) = s.ledger.key_index_stats();
    out.push(Family {
        name: "bindledger_idempotency_entries",
        help: "Idempotency keys and paid orders known, by where they are held (memory: not yet written to disk by the indexer)",
        counter: false,
        series: vec![
            (vec![("held", "memory".to_owned())], Value::Int(in_memory as i64)),
            (vec![("held", "disk".to_owned())], Value::Int(on_disk as i64)),
        ],
    });
    out.push(Family::gauge(
        "bindledger_idempotency_table_bytes",
        "Size of the idempotency and paid-order tables on disk",
        Value::Int(bytes as i64),
    ));
    let cache = s.ledger.account_cache();
    out.push(Family {
        name: "bindledger_cached",
        help: "Accounts and wallets the read model holds in memory (memory.accounts_cached of each, beyond those changed since the last snapshot)",
        counter: false,
        series: vec![
            (vec![("kind", "account".to_owned())], Value::Int(cache.accounts as i64)),
            (vec![("kind", "wallet".to_owned())], Value::Int(cache.wallets as i64)),
        ],
    });
    out.push(Family {
        name: "bindledger_rows_read",
        help: "Stored account and wallet rows read because they were not in memory (or were new), by the writer and the read model",
        counter: true,
        series: vec![
            (vec![("kind", "account".to_owned())], Value::Int(cache.account_rows_read as i64)),
            (vec![("kind", "wallet".to_owned())], Value::Int(cache.wallet_rows_read as i64)),
        ],
    });
    if let Some((status, _)) = &s.extras.replica {
        let (lag_events, lag_seconds) = status.lag(s.ledger.log_len());
        out.push(Family::gauge(
            "bindledger_replica_lag_events",
            "Events seen on the topic and not yet in this replica's log",
            Value::Int(lag_events as i64),
        ));
        out.push(Family::gauge(
            "bindledger_replica_lag_seconds",
            "Age of the last event the replica appended, while it is behind (0 when caught up)",
            Value::Float(lag_seconds),
        ));
        out.push(Family::state(
            "bindledger_replica_state",
            "The replica's state",
            "state",
            status.state().to_string(),
        ));
    }
    if let Some((topic, status)) = &s.extras.relay {
        let r = Relay::report(&s.ledger, topic, status);
        out.push(Family::gauge(
            "bindledger_relay_position",
            "Every event up to this seq is on the Kafka topic",
            Value::Int(r.position as i64),
        ));
        out.push(Family::gauge(
            "bindledger_relay_lag_events",
            "Events in the log not yet on the topic",
            Value::Int(r.lag_events as i64),
        ));
        out.push(Family::gauge(
            "bindledger_relay_lag_seconds",
            "Age of the oldest event not yet on the topic",
            Value::Float(r.lag_seconds),
        ));
        out.push(Family::counter(
            "bindledger_relay_published",
            "Events the relay published",
            r.published_total,
        ));
        out.push(Family::state(
            "bindledger_relay_state",
            "The relay's state",
            "state",
            r.state.to_string(),
        ));
    }
    if let Some(m) = &s.extras.monitor {
        let st = &m.status;
        let gauge = |name, help, v: u64| Family::gauge(name, help, Value::Int(v as i64));
        out.push(gauge(
            "bindledger_monitor_position",
            "Every event up to this seq went through the alert rules",
            st.position.load(Relaxed),
        ));
        out.push(gauge(
            "bindledger_alert_stream_seq",
            "Alert changes stored (the SSE feed's last id)",
            st.stream_seq.load(Relaxed),
        ));
        out.push(gauge(
            "bindledger_alert_stored_seq",
            "Alert changes stored in sled (the listing's view)",
            m.feed.stored(),
        ));
        out.push(Family::counter(
            "bindledger_alert_updates",
            "Matches that updated an open alert instead of raising another",
            st.updated_total.load(Relaxed),
        ));
        out.push(gauge(
            "bindledger_monitor_keys",
            "Keys (accounts, wallets) the rules track in memory, over all rules",
            st.keys.load(Relaxed),
        ));
        out.push(gauge(
            "bindledger_monitor_keys_held",
            "Keys whose rule windows the monitor holds in memory (memory.alert_keys_cached, beyond those changed since its last checkpoint)",
            st.keys_held.load(Relaxed),
        ));
        out.push(Family::counter(
            "bindledger_monitor_rows_read",
            "Stored rows of rule windows read back because their key was not held",
            st.rows_read.load(Relaxed),
        ));
        out.push(gauge(
            "bindledger_monitor_open_alerts",
            "Alerts within their cool-down",
            st.open_alerts.load(Relaxed),
        ));
        out.push(Family::counter(
            "bindledger_monitor_gaps",
            "Batches the monitor read from the log because its queue was full",
            st.gaps_read_from_log.load(Relaxed),
        ));
        out.push(Family {
            name: "bindledger_monitor_actions",
            help: "Lock and unlock commands the monitor sent",
            counter: true,
            series: vec![
                (
                    vec![("action", "lock".to_owned())],
                    Value::Int(st.locks_sent.load(Relaxed) as i64),
                ),
                (
                    vec![("action", "unlock".to_owned())],
                    Value::Int(st.unlocks_sent.load(Relaxed) as i64),
                ),
            ],
        });
        out.push(Family {
            name: "bindledger_alerts_opened",
            help: "Alerts opened, per rule",
            counter: true,
            series: crate::domain::alerts::rules::RULE_NAMES
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    (
                        vec![("rule", (*rule).to_owned())],
                        Value::Int(st.opened[i].load(Relaxed) as i64),
                    )
                })
                .collect(),
        });
    }
    for (name, help, relay) in [
        (
            "bindledger_alerts_relay_position",
            "Every alert change up to this stream seq is on the alerts topic",
            &s.extras.alerts_relay,
        ),
        (
            "bindledger_notifications_relay_position",
            "Every notification caused by events up to this seq is on the notifications topic",
            &s.extras.notifications_relay,
        ),
        (
            "bindledger_checkpoints_relay_position",
            "Every checkpoint up to this seq is on the checkpoints topic",
            &s.extras.checkpoints_relay,
        ),
    ] {
        if let Some((topic, st)) = relay {
            out.push(Family {
                name,
                help,
                counter: false,
                series: vec![(
                    vec![("topic", topic.clone())],
                    Value::Int(st.position.load(Relaxed) as i64),
                )],
            });
        }
    }
    Snapshot(out)
}

/// The whole exposition: the ledger's metrics and a snapshot of the components beside it.
pub fn render(s: &AppState) -> String {
    let mut registry = Registry::default();
    s.ledger.metrics().register(&mut registry);
    s.requests.register(&mut registry);
    registry.register_collector(Box::new(snapshot(s)));
    let mut text = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String does not fail");
    text
}
