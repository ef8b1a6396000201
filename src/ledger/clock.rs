//! The ledger's clock, behind a seam: production reads the system clock; the simulator
//! (`bindledger simulate`) moves a [`ManualClock`] itself, so that time-dependent behaviour
//! (idempotency windows, brute-force windows, lock expiry) replays exactly from a seed.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

/// Where the ledger reads the time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock (production).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to, in microseconds.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            micros: AtomicI64::new(start.timestamp_micros()),
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        let us = by.num_microseconds().unwrap_or(i64::MAX).max(0);
        self.micros.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst)).expect("a time in range")
    }
}
