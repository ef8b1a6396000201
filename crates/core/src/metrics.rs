//! The ledger's own metrics, kept in `prometheus-client` metrics (atomics, updated once per
//! batch where possible) and encoded by it in the OpenMetrics text format at each scrape
//! ([`Metrics::register`]). Label sets are bounded: command kinds and outcome codes are static
//! strings.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set of static strings (command kinds, outcome and error codes).
type Labels<const N: usize> = [(&'static str, &'static str); N];

pub struct Metrics {
    /// (command kind, outcome) -> count; outcome is `succeeded` or a failure code.
    commands: Family<Labels<2>, Counter>,
    /// Commands answered without a new event: validation errors, conflicts, overload.
    rejected: Family<Labels<1>, Counter>,
    pub idempotent_replays: Counter,
    /// Wallet provider calls the ledger gave up on after `gateway.timeout_ms` (recorded as
    /// `network` failures).
    pub gateway_timeouts: Counter,
    /// Flushes made (one flush covers every batch decided while the previous one ran).
    pub flushes: Counter,
    /// Flushes that waited for more events (the group-commit delay).
    pub commit_delays: Counter,
    pub batch_size: Histogram,
    /// Writer batches made durable (the histogram's count, readable in process).
    pub batches: Counter,
    pub flush_seconds: Histogram,
    pub log_events: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commands: Family::default(),
            rejected: Family::default(),
            idempotent_replays: Counter::default(),
            gateway_timeouts: Counter::default(),
            flushes: Counter::default(),
            commit_delays: Counter::default(),
            batch_size: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 65536.0,
            ]),
            batches: Counter::default(),
            flush_seconds: Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            log_events: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn count_commands(&self, outcomes: &[(&'static str, &'static str)]) {
        for (kind, outcome) in outcomes {
            self.commands
                .get_or_create(&[("kind", kind), ("outcome", outcome)])
                .inc();
        }
    }

    pub fn count_rejected(&self, code: &'static str) {
        self.rejected.get_or_create(&[("code", code)]).inc();
    }

    /// Events in the log.
    pub fn log_len(&self) -> u64 {
        self.log_events.get().max(0) as u64
    }

    pub(crate) fn set_log_len(&self, n: u64) {
        self.log_events.set(n as i64);
    }

    /// Puts every metric of the ledger in `registry` (the metrics are shared handles: a scrape
    /// reads their current values). Counters get their `_total` suffix from the encoder.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bindledger_commands",
            "Commands recorded as events, by kind and outcome",
            self.commands.clone(),
        );
        registry.register(
            "bindledger_commands_rejected",
            "Commands answered with an error and no event, by code",
            self.rejected.clone(),
        );
        registry.register(
            "bindledger_idempotent_replays",
            "Commands answered with the result of an earlier command with the same idempotency key",
            self.idempotent_replays.clone(),
        );
        registry.register(
            "bindledger_gateway_timeouts",
            "Wallet provider calls given up after gateway.timeout_ms, recorded as network failures",
            self.gateway_timeouts.clone(),
        );
        registry.register(
            "bindledger_flushes",
            "Flushes of the log (group commits)",
            self.flushes.clone(),
        );
        registry.register(
            "bindledger_commit_delays",
            "Flushes that waited for more events because the ledger was busy",
            self.commit_delays.clone(),
        );
        registry.register(
            "bindledger_batch_size",
            "Events per writer batch (one sled write; one flush makes one or more durable)",
            self.batch_size.clone(),
        );
        registry.register(
            "bindledger_writer_batches",
            "Writer batches made durable",
            self.batches.clone(),
        );
        registry.register(
            "bindledger_flush_seconds",
            "Time from deciding a batch to its being durable",
            self.flush_seconds.clone(),
        );
        registry.register("bindledger_log_events", "Events in the log", self.log_events.clone());
    }
}
