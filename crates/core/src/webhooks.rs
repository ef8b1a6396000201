//! The webhooks' storage: how far the alert stream has been sent, and the delivery log (every
//! attempt: when, its answer, what came of it), the newest [`DELIVERIES_KEPT`] kept.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Attempts kept in the delivery log (older ones are dropped as new ones come).
pub const DELIVERIES_KEPT: u64 = 10_000;

const POSITION: &[u8] = b"position";
const TOTALS: &[u8] = b"totals";

/// What the webhooks did since the ledger's first start (kept across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub delivered: u64,
    pub given_up: u64,
    pub attempts: u64,
}
const DELIVERY: u8 = b'd';

/// One attempt to deliver one alert change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The attempt's number in the log, from 1.
    pub n: u64,
    /// The alert change sent (its stream seq is the `Bindledger-Delivery` header).
    pub stream_seq: u64,
    pub alert_id: String,
    pub rule: String,
    pub severity: String,
    /// 1 for the first attempt at this change.
    pub attempt: u32,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// `delivered` (a 2xx answer), `retrying` (another attempt follows) or `given_up` (the last
    /// attempt failed).
    pub outcome: String,
    /// Why it failed, when it did (never a value from the receiver's answer).
    pub error: Option<String>,
    pub duration_ms: u64,
    /// When the next attempt at this change is due (a `retrying` attempt's).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_microseconds_option"
    )]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// `alert` (sent by the stream), `resend` (an alert sent again by a person) or `test` (a
    /// test event a person asked for).
    #[serde(default = "alert_kind")]
    pub kind: String,
}

fn alert_kind() -> String {
    "alert".to_owned()
}

#[derive(Clone)]
pub struct WebhookLog {
    tree: sled::Tree,
    /// One record at a time: the sender's and a person's (resend, test) take the next `n`.
    recording: std::sync::Arc<std::sync::Mutex<()>>,
}

fn delivery_key(n: u64) -> [u8; 9] {
    let mut k = [DELIVERY; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

impl WebhookLog {
    pub fn new(tree: sled::Tree) -> WebhookLog {
        WebhookLog {
            tree,
            recording: Default::default(),
        }
    }

    /// Every alert change through this stream seq was sent (or given up).
    pub fn position(&self) -> Result<u64> {
        Ok(self
            .tree
            .get(POSITION)
            .map_err(crate::store::from_sled)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    pub fn set_position(&self, stream_seq: u64) -> Result<()> {
        self.tree
            .insert(POSITION, &stream_seq.to_be_bytes())
            .map_err(crate::store::from_sled)?;
        Ok(())
    }

    fn last_n(&self) -> Result<u64> {
        Ok(self
            .tree
            .scan_prefix([DELIVERY])
            .next_back()
            .transpose()
            .map_err(crate::store::from_sled)?
            .map(|(k, _)| u64::from_be_bytes(k[1..].try_into().expect("9-byte key")))
            .unwrap_or(0))
    }

    /// The totals kept with the log.
    pub fn totals(&self) -> Result<Totals> {
        match self.tree.get(TOTALS).map_err(crate::store::from_sled)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| crate::Error::corrupt_by("the webhooks' totals", e)),
            None => Ok(Totals::default()),
        }
    }

    /// Adds an attempt (its `n` is given here) and counts it in the totals, in one batch,
    /// dropping the oldest attempt beyond [`DELIVERIES_KEPT`].
    pub fn record(&self, mut d: Delivery) -> Result<Delivery> {
        let _one = self.recording.lock().expect("recording lock");
        d.n = self.last_n()? + 1;
        let mut totals = self.totals()?;
        totals.attempts += 1;
        match d.outcome.as_str() {
            "delivered" => totals.delivered += 1,
            "given_up" => totals.given_up += 1,
            _ => {}
        }
        let mut batch = sled::Batch::default();
        batch.insert(
            &delivery_key(d.n)[..],
            serde_json::to_vec(&d).expect("deliveries serialize"),
        );
        batch.insert(TOTALS, serde_json::to_vec(&totals).expect("totals serialize"));
        if d.n > DELIVERIES_KEPT {
            batch.remove(&delivery_key(d.n - DELIVERIES_KEPT)[..]);
        }
        self.tree.apply_batch(batch).map_err(crate::store::from_sled)?;
        Ok(d)
    }

    /// The newest attempts first, at most `limit`, those before `before` (an `n`) when given.
    pub fn recent(&self, limit: usize, before: Option<u64>) -> Result<Vec<Delivery>> {
        let end = delivery_key(before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for r in self.tree.range(delivery_key(0)..end).rev().take(limit) {
            let (_, v) = r.map_err(crate::store::from_sled)?;
            out.push(serde_json::from_slice(&v).map_err(|e| crate::Error::corrupt_by("a webhook delivery record", e))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_count_every_attempt_and_outlive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let log = WebhookLog::new(db.open_tree("webhooks").unwrap());
            for outcome in ["retrying", "delivered", "retrying", "given_up", "delivered"] {
                log.record(Delivery {
                    n: 0,
                    stream_seq: 1,
                    alert_id: "a".into(),
                    rule: "r".into(),
                    severity: "high".into(),
                    attempt: 1,
                    at: Utc::now(),
                    status: None,
                    outcome: outcome.into(),
                    error: None,
                    duration_ms: 1,
                    next_attempt_at: None,
                    kind: "alert".into(),
                })
                .unwrap();
            }
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let log = WebhookLog::new(db.open_tree("webhooks").unwrap());
        assert_eq!(
            log.totals().unwrap(),
            Totals {
                delivered: 2,
                given_up: 1,
                attempts: 5
            }
        );
    }

    #[test]
    fn attempts_are_numbered_listed_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = WebhookLog::new(db.open_tree("webhooks").unwrap());
        assert_eq!(log.position().unwrap(), 0);
        log.set_position(7).unwrap();
        assert_eq!(log.position().unwrap(), 7);
        let d = |attempt| Delivery {
            n: 0,
            stream_seq: 3,
            alert_id: "a".into(),
            rule: "r".into(),
            severity: "high".into(),
            attempt,
            at: Utc::now(),
            status: Some(500),
            outcome: "retrying".into(),
            error: None,
            duration_ms: 1,
            next_attempt_at: None,
            kind: "alert".into(),
        };
        for a in 1..=3 {
            assert_eq!(log.record(d(a)).unwrap().n, a as u64);
        }
        let listed: Vec<u32> = log.recent(10, None).unwrap().iter().map(|d| d.attempt).collect();
        assert_eq!(listed, vec![3, 2, 1]);
        let page: Vec<u64> = log.recent(10, Some(3)).unwrap().iter().map(|d| d.n).collect();
        assert_eq!(page, vec![2, 1]);
        // The position key is not a delivery.
        assert_eq!(log.recent(100, None).unwrap().len(), 3);
    }
}
