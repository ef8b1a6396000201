//! Metrics in the Prometheus text format, kept with atomics and updated once per batch where
//! possible. Label sets are bounded: command kinds and outcome codes are static strings.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    /// (command kind, outcome) -> count; outcome is `succeeded` or a failure code.
    commands: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Commands answered without a new event: validation errors, conflicts, overload.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub idempotent_replays: AtomicU64,
    /// Flushes made (one flush covers every batch decided while the previous one ran).
    pub flushes: AtomicU64,
    /// Flushes that waited for more events (the group-commit delay).
    pub commit_delays: AtomicU64,
    pub batch_size: Histogram,
    pub flush_seconds: Histogram,
    pub log_events: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commands: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(BTreeMap::new()),
            idempotent_replays: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            commit_delays: AtomicU64::new(0),
            batch_size: Histogram::new(&[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 65536.0,
            ]),
            flush_seconds: Histogram::new(&[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            log_events: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn count_commands(&self, outcomes: &[(&'static str, &'static str)]) {
        let mut m = self.commands.lock().expect("metrics lock");
        for o in outcomes {
            *m.entry(*o).or_default() += 1;
        }
    }

    pub fn count_rejected(&self, code: &'static str) {
        *self.rejected.lock().expect("metrics lock").entry(code).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP bindledger_commands_total Commands recorded as events, by kind and outcome.\n# TYPE bindledger_commands_total counter\n");
        for ((kind, outcome), n) in self.commands.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "bindledger_commands_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP bindledger_commands_rejected_total Commands answered with an error and no event, by code.\n# TYPE bindledger_commands_rejected_total counter\n");
        for (code, n) in self.rejected.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "bindledger_commands_rejected_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP bindledger_idempotent_replays_total Commands answered with the result of an earlier command with the same idempotency key.\n# TYPE bindledger_idempotent_replays_total counter\nbindledger_idempotent_replays_total {}",
            self.idempotent_replays.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bindledger_flushes_total Flushes of the log (group commits).\n# TYPE bindledger_flushes_total counter\nbindledger_flushes_total {}",
            self.flushes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bindledger_commit_delays_total Flushes that waited for more events because the ledger was busy.\n# TYPE bindledger_commit_delays_total counter\nbindledger_commit_delays_total {}",
            self.commit_delays.load(Ordering::Relaxed)
        );
        self.batch_size.render(
            &mut out,
            "bindledger_batch_size",
            "Events per writer batch (one sled write; one flush makes one or more durable).",
        );
        self.flush_seconds.render(
            &mut out,
            "bindledger_flush_seconds",
            "Time from deciding a batch to its being durable.",
        );
        let _ = writeln!(
            out,
            "# HELP bindledger_log_events Events in the log.\n# TYPE bindledger_log_events gauge\nbindledger_log_events {}",
            self.log_events.load(Ordering::Relaxed)
        );
        out
    }
}
