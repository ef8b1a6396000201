//! Signed webhooks for the security team: each alert that opens at the configured severity or
//! above is POSTed to `webhooks.url`, as payment providers send theirs.
//!
//! **Request.** `POST`, `Content-Type: application/json`, the body the alert change as on the
//! live feed and the alerts topic (`{"stream_seq", "change", "alert"}`). Headers:
//! - `Bindledger-Delivery`: the change's stream seq, the same on every attempt (a receiver
//!   keeps the ones it has seen: delivery is at least once);
//! - `Bindledger-Event`: `alert.opened`;
//! - `Bindledger-Signature`: `t=<unix seconds>,v1=<hex>`, where `v1` is the HMAC-SHA256, keyed
//!   with the secret file's text, of `<t>.<body>`. A receiver recomputes it, compares in
//!   constant time, and refuses a `t` far from its clock (a replayed request).
//!
//! **Retries.** Any answer but a 2xx, or none within `timeout_ms`, is retried after
//! `backoff_ms`, doubled each time up to `backoff_ms_max`, for `attempts_max` attempts; then it
//! is given up and logged. Alerts are sent one at a time, in stream order; the position is
//! saved after each, so a restart goes on where it stopped. Every attempt is kept in the
//! delivery log (`GET /v1/webhooks/deliveries`), a `retrying` one with when the next is due.
//!
//! **By hand.** A person with the security role can send an alert again
//! (`POST /v1/webhooks/deliveries/{stream_seq}/resend`: the same body and `Bindledger-Delivery`,
//! so a receiver that keeps the ids it has seen takes it once) or send a test event
//! (`POST /v1/webhooks/test`: `Bindledger-Event: test`, `Bindledger-Delivery: test-<n>`, the body
//! `{"type": "test", "sent_at"}`, signed like the rest). Each is one attempt, logged as such
//! (`kind` `resend` or `test`; outcome `delivered` or `failed`), beside the stream's deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::WebhooksConfig;
use crate::domain::alerts::{AlertChange, Severity};
use crate::error::Result;
use crate::ledger::alerts::AlertFeed;
use crate::ledger::webhooks::{Delivery, WebhookLog};

/// Alert changes read from the stream at a time.
const READ_CHANGES: usize = 256;

/// `Bindledger-Signature` for `body` at `t` (unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// The HMAC-SHA256 of `<t>.<body>`, keyed with the secret's text.
fn mac(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// What a receiver does: checks a `Bindledger-Signature` header against the body, and that its
/// time is within `tolerance_s` of `now` (unix seconds).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (now - t).abs() > tolerance_s {
        return false;
    }
    mac(secret, t, body).verify_slice(&v1).is_ok()
}

/// The sender's state, for `/v1/status`.
#[derive(Debug, Default)]
pub struct WebhookStatus {
    /// Every alert change through this stream seq is sent or given up.
    pub position: AtomicU64,
    pub delivered_total: AtomicU64,
    pub given_up_total: AtomicU64,
    pub attempts_total: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl WebhookStatus {
    /// As `/v1/status` and `GET /v1/webhooks/deliveries` show it.
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "position": self.position.load(Ordering::Relaxed),
            "delivered_total": self.delivered_total.load(Ordering::Relaxed),
            "given_up_total": self.given_up_total.load(Ordering::Relaxed),
            "attempts_total": self.attempts_total.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().expect("status lock"),
        })
    }
}

/// What sends: the HTTP client, the receiver, the secret, and the log every attempt goes to.
pub struct WebhookClient {
    http: reqwest::Client,
    config: WebhooksConfig,
    secret: String,
    log: WebhookLog,
    feed: Arc<AlertFeed>,
    pub status: Arc<WebhookStatus>,
}

/// What one attempt came to.
struct Attempt {
    at: chrono::DateTime<chrono::Utc>,
    status: Option<u16>,
    error: Option<String>,
    duration_ms: u64,
}

impl WebhookClient {
    /// One POST of `body`, signed now.
    async fn attempt(&self, body: &[u8], delivery: &str, event: &str) -> Attempt {
        let at = chrono::Utc::now();
        let started = Instant::now();
        let answer = self
            .http
            .post(self.config.url.trim())
            .header("content-type", "application/json")
            .header("bindledger-delivery", delivery)
            .header("bindledger-event", event)
            .header("bindledger-signature", signature(&self.secret, at.timestamp(), body))
            .body(body.to_vec())
            .send()
            .await;
        let (status, error) = match answer {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
            Ok(r) => (
                Some(r.status().as_u16()),
                Some(format!("answered {}", r.status().as_u16())),
            ),
            Err(e) if e.is_timeout() => (None, Some(format!("no answer in {} ms", self.config.timeout_ms))),
            Err(e) if e.is_connect() => (None, Some("could not connect".to_owned())),
            Err(_) => (None, Some("the request failed".to_owned())),
        };
        self.status.attempts_total.fetch_add(1, Ordering::Relaxed);
        Attempt {
            at,
            status,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Sends the alert change `stream_seq` again, once (a person's resend). `None` when the
    /// stream holds no such change.
    pub async fn resend(&self, stream_seq: u64) -> Result<Option<Delivery>> {
        let Some(c) = self
            .feed
            .store()
            .changes_after(stream_seq.saturating_sub(1), stream_seq, 1)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let body = serde_json::to_vec(&c).expect("alerts serialize");
        let a = self.attempt(&body, &c.stream_seq.to_string(), "alert.opened").await;
        let d = self.by_hand(
            a,
            c.stream_seq,
            &c.alert.id,
            &c.alert.rule,
            c.alert.severity.as_str(),
            "resend",
        )?;
        Ok(Some(d))
    }

    /// Sends a test event, once.
    pub async fn test(&self) -> Result<Delivery> {
        let at = chrono::Utc::now();
        let body = serde_json::to_vec(&serde_json::json!({"type": "test", "sent_at": at})).expect("JSON");
        let id = format!("test-{}", at.timestamp_micros());
        let a = self.attempt(&body, &id, "test").await;
        self.by_hand(a, 0, "", "", "", "test")
    }

    fn by_hand(
        &self,
        a: Attempt,
        stream_seq: u64,
        alert_id: &str,
        rule: &str,
        severity: &str,
        kind: &str,
    ) -> Result<Delivery> {
        let delivered = a.error.is_none();
        let d = self.log.record(Delivery {
            n: 0,
            stream_seq,
            alert_id: alert_id.to_owned(),
            rule: rule.to_owned(),
            severity: severity.to_owned(),
            attempt: 1,
            at: a.at,
            status: a.status,
            outcome: (if delivered { "delivered" } else { "failed" }).to_owned(),
            error: a.error,
            duration_ms: a.duration_ms,
            next_attempt_at: None,
            kind: kind.to_owned(),
        })?;
        if delivered {
            self.status.delivered_total.fetch_add(1, Ordering::Relaxed);
        }
        Ok(d)
    }
}

pub struct WebhookSender {
    client: Arc<WebhookClient>,
    severity_min: Severity,
    pub status: Arc<WebhookStatus>,
}

impl WebhookSender {
    pub fn new(feed: Arc<AlertFeed>, log: WebhookLog, config: WebhooksConfig, secret: String) -> Result<WebhookSender> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::Error::config_by("webhooks", e))?;
        let status = Arc::new(WebhookStatus::default());
        status.position.store(log.position()?, Ordering::Relaxed);
        // The totals are the log's, across restarts (not this process's alone).
        let totals = log.totals()?;
        status.delivered_total.store(totals.delivered, Ordering::Relaxed);
        status.given_up_total.store(totals.given_up, Ordering::Relaxed);
        status.attempts_total.store(totals.attempts, Ordering::Relaxed);
        Ok(WebhookSender {
            severity_min: config.severity(),
            client: Arc::new(WebhookClient {
                http,
                config,
                secret,
                log,
                feed,
                status: status.clone(),
            }),
            status,
        })
    }

    /// What sends, for a person's resend and test (`POST /v1/webhooks/...`).
    pub fn client(&self) -> Arc<WebhookClient> {
        self.client.clone()
    }

    /// Whether a change is sent: an alert opening at the least severity or above.
    fn sends(&self, c: &AlertChange) -> bool {
        c.change == "opened" && c.alert.severity >= self.severity_min
    }

    /// Runs until `shutdown` turns true (an attempt under way is abandoned, and made again on
    /// the next start) or the monitor stops.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        tokio::select! {
            r = self.send_all() => if let Err(e) = r {
                tracing::error!(error = %crate::error::chain(&e), "webhooks stopped");
                *self.status.last_error.lock().expect("status lock") = Some(e.to_string());
            },
            _ = shutdown.changed() => {}
        }
    }

    async fn send_all(&self) -> Result<()> {
        let log = &self.client.log;
        let mut published = self.client.feed.subscribe();
        let mut position = log.position()?;
        loop {
            let Some(changes) = self
                .client
                .feed
                .next_after(position, READ_CHANGES, &mut published)
                .await?
            else {
                return Ok(()); // the monitor stopped
            };
            for c in changes {
                position = c.stream_seq;
                if self.sends(&c) {
                    self.deliver(&c).await?;
                    // Saved at once: a restart must not send a delivered alert again.
                    log.set_position(position)?;
                }
                self.status.position.store(position, Ordering::Relaxed);
            }
            log.set_position(position)?;
        }
    }

    /// Sends one change until it is delivered or its attempts run out.
    async fn deliver(&self, c: &AlertChange) -> Result<()> {
        let config = &self.client.config;
        let body = serde_json::to_vec(c).expect("alerts serialize");
        let mut wait = Duration::from_millis(config.backoff_ms);
        for attempt in 1..=config.attempts_max {
            let a = self
                .client
                .attempt(&body, &c.stream_seq.to_string(), "alert.opened")
                .await;
            let last = attempt == config.attempts_max;
            let outcome = match (&a.error, last) {
                (None, _) => "delivered",
                (Some(_), false) => "retrying",
                (Some(_), true) => "given_up",
            };
            let next_attempt_at = (a.error.is_some() && !last)
                .then(|| chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default());
            self.client.log.record(Delivery {
                n: 0,
                stream_seq: c.stream_seq,
                alert_id: c.alert.id.clone(),
                rule: c.alert.rule.clone(),
                severity: c.alert.severity.as_str().to_owned(),
                attempt,
                at: a.at,
                status: a.status,
                outcome: outcome.to_owned(),
                error: a.error.clone(),
                duration_ms: a.duration_ms,
                next_attempt_at,
                kind: "alert".to_owned(),
            })?;
            match a.error {
                None => {
                    self.status.delivered_total.fetch_add(1, Ordering::Relaxed);
                    // The receiver is back: an error from before is no longer the state.
                    *self.status.last_error.lock().expect("status lock") = None;
                    return Ok(());
                }
                Some(e) => {
                    tracing::warn!(alert = %c.alert.id, attempt, error = %e, "webhook not delivered");
                    *self.status.last_error.lock().expect("status lock") = Some(e);
                }
            }
            if !last {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(config.backoff_ms_max));
            }
        }
        self.status.given_up_total.fetch_add(1, Ordering::Relaxed);
        tracing::error!(alert = %c.alert.id, attempts = config.attempts_max, "webhook given up");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_body_and_time_only() {
        let body = br#"{"stream_seq":1}"#;
        let header = signature("a-secret-of-some-length", 1_800_000_000, body);
        assert!(header.starts_with("t=1800000000,v1="));
        assert!(verify("a-secret-of-some-length", &header, body, 1_800_000_010, 300));
        assert!(!verify("another-secret-entirely", &header, body, 1_800_000_010, 300));
        assert!(!verify(
            "a-secret-of-some-length",
            &header,
            br#"{"stream_seq":2}"#,
            1_800_000_010,
            300
        ));
        assert!(
            !verify("a-secret-of-some-length", &header, body, 1_800_000_400, 300),
            "too old"
        );
        assert!(!verify("a-secret-of-some-length", "t=1,v1=zz", body, 1, 300));
    }
}
