//! The ledger's clock, behind a seam: production reads the system clock and sleeps on tokio's
//! timers; the simulator (`bindledger simulate`) moves a [`ManualClock`] itself, so that
//! time-dependent behaviour (idempotency windows, brute-force windows, lock expiry, a wallet
//! provider's latency and the ledger's timeout on it) replays exactly from a seed.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

/// Where the ledger reads the time, and how it waits for some of it to pass.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// A future that completes once `d` has passed on this clock. Production: a tokio timer.
    fn sleep(&self, d: std::time::Duration) -> BoxFuture<'static, ()>;
}

/// The system clock (production).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, d: std::time::Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only when told to, in microseconds. A sleep on it is registered when it
/// is made (not when first polled) and completes when the clock is moved past its deadline:
/// the simulator asks [`ManualClock::next_deadline`] when everything in flight waits on time.
#[derive(Debug)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
    /// Sleeps not yet dropped. Bounded by the sleeps in flight (one gateway call and its
    /// timeout per command the simulator sends); dropped ones are pruned at every new sleep.
    sleepers: Mutex<Vec<Weak<Sleeper>>>,
}

#[derive(Debug)]
struct Sleeper {
    until: i64,
    waker: Mutex<Option<Waker>>,
}

struct ManualSleep {
    micros: Arc<AtomicI64>,
    sleeper: Arc<Sleeper>,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.micros.load(Ordering::SeqCst) >= self.sleeper.until {
            return Poll::Ready(());
        }
        *self.sleeper.waker.lock().expect("sleeper lock") = Some(cx.waker().clone());
        // The clock may have moved between the check and the waker being stored.
        if self.micros.load(Ordering::SeqCst) >= self.sleeper.until {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            micros: Arc::new(AtomicI64::new(start.timestamp_micros())),
            sleepers: Mutex::new(Vec::new()),
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        let us = by.num_microseconds().unwrap_or(i64::MAX).max(0);
        self.micros.fetch_add(us, Ordering::SeqCst);
        self.wake_due();
    }

    /// Moves the clock to `at` (never backwards).
    pub fn advance_to(&self, at: DateTime<Utc>) {
        self.micros.fetch_max(at.timestamp_micros(), Ordering::SeqCst);
        self.wake_due();
    }

    /// The earliest deadline of the sleeps still waiting, if any.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let now = self.micros.load(Ordering::SeqCst);
        let sleepers = self.sleepers.lock().expect("sleepers lock");
        sleepers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.until)
            .filter(|until| *until > now)
            .min()
            .and_then(DateTime::from_timestamp_micros)
    }

    fn wake_due(&self) {
        let now = self.micros.load(Ordering::SeqCst);
        let mut sleepers = self.sleepers.lock().expect("sleepers lock");
        sleepers.retain(|w| match w.upgrade() {
            Some(s) if s.until <= now => {
                if let Some(waker) = s.waker.lock().expect("sleeper lock").take() {
                    waker.wake();
                }
                false
            }
            Some(_) => true,
            None => false,
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst)).expect("a time in range")
    }

    fn sleep(&self, d: std::time::Duration) -> BoxFuture<'static, ()> {
        let until = self
            .micros
            .load(Ordering::SeqCst)
            .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let sleeper = Arc::new(Sleeper {
            until,
            waker: Mutex::new(None),
        });
        let mut sleepers = self.sleepers.lock().expect("sleepers lock");
        sleepers.retain(|w| w.strong_count() > 0);
        sleepers.push(Arc::downgrade(&sleeper));
        Box::pin(ManualSleep {
            micros: self.micros.clone(),
            sleeper,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_its_deadline() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        let clock = ManualClock::new(start);
        assert_eq!(clock.next_deadline(), None);
        let short = clock.sleep(Duration::from_millis(300));
        let long = clock.sleep(Duration::from_secs(4));
        assert_eq!(clock.next_deadline(), Some(start + chrono::Duration::milliseconds(300)));
        let mut short = tokio::spawn(short);
        let mut long = tokio::spawn(long);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!short.is_finished() && !long.is_finished(), "no time has passed");
        clock.advance(chrono::Duration::milliseconds(299));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!short.is_finished(), "a microsecond early");
        clock.advance_to(clock.next_deadline().expect("two sleeping"));
        (&mut short).await.expect("the short sleep ends");
        assert_eq!(clock.next_deadline(), Some(start + chrono::Duration::seconds(4)));
        assert!(!long.is_finished());
        long.abort();
        let _ = (&mut long).await;
        assert_eq!(clock.next_deadline(), None, "a dropped sleep is not waited for");
    }
}
