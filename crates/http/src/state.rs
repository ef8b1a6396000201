//! What the API's handlers share: the application state (the ledger, the tokens, the console's
//! sessions, the bounds on requests in flight, what runs beside the ledger), who a request acts
//! as, the error answer, and the bounded body read. A leaf of this crate: the router
//! (`server`), the console and the metrics read it; it names none of them.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as Labelled;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::config::{HttpConfig, Role, TokenConfig};
use crate::error::Error;
use crate::ledger::alerts::store::AlertStore;
use crate::ledger::alerts::MonitorStatus;
use crate::ledger::Ledger;
use bindledger_kafka::client::RelayStatus;

pub struct AppState {
    pub ledger: Ledger,
    /// SHA-256 of each token, with its roles: tokens themselves are not kept in memory here.
    pub(crate) tokens: Vec<([u8; 32], Arc<Principal>)>,
    /// Client certificates' SHA-256 (mutual TLS) with the principal of the token naming each.
    pub(crate) certs: Vec<([u8; 32], Arc<Principal>)>,
    /// The console's signed-in sessions.
    pub(crate) sessions: Sessions,
    pub(crate) http: HttpConfig,
    /// Authenticated requests in flight; beyond the bound the answer is 503 `overloaded`.
    pub(crate) in_flight: Arc<Semaphore>,
    /// Requests in flight to the public routes but the probes (the console's page and its
    /// sign-in): a pool of their own, so that they cannot take a slot of `in_flight`.
    pub(crate) public_in_flight: Arc<Semaphore>,
    pub(crate) extras: Extras,
    /// Turns true when the server shuts down (ends the live feeds).
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Requests answered, by route pattern, method and status, and how long they took.
    pub(crate) requests: Requests,
    /// Triage recorded through this node, one at a time (see [`Triages`]).
    pub(crate) triages: Triages,
}

/// Triages are recorded one at a time on a node (each checked against the alert's latest one,
/// optimistic concurrency), and the latest this node recorded per alert is remembered until the
/// monitor has stored it (the alert store trails the log by milliseconds): at most
/// [`TRIAGES_REMEMBERED_MAX`] alerts, each for at most a minute.
#[derive(Default)]
pub(crate) struct Triages {
    pub(crate) one_at_a_time: tokio::sync::Mutex<()>,
    pub(crate) recorded: std::sync::Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
}

/// Alerts whose latest triage a node remembers until the alert store has it.
pub(crate) const TRIAGES_REMEMBERED_MAX: usize = 65_536;

impl Triages {
    /// The seq of the alert's latest triage: the store's, or a later one recorded here.
    pub(crate) fn latest(&self, alert_id: &str, stored: u64) -> u64 {
        let mut r = self.recorded.lock().expect("lock");
        match r.get(alert_id) {
            Some((seq, _)) if *seq > stored => *seq,
            Some(_) => {
                r.remove(alert_id);
                stored
            }
            None => stored,
        }
    }

    pub(crate) fn note(&self, alert_id: &str, seq: u64) {
        let mut r = self.recorded.lock().expect("lock");
        let now = std::time::Instant::now();
        r.retain(|_, (_, at)| now.duration_since(*at) < std::time::Duration::from_secs(60));
        if r.len() >= TRIAGES_REMEMBERED_MAX {
            if let Some(oldest) = r.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone()) {
                r.remove(&oldest);
            }
        }
        r.insert(alert_id.to_owned(), (seq, now));
    }
}

/// What runs beside the ledger, when it does.
#[derive(Default, Clone)]
pub struct Extras {
    /// The Kafka relay's topic and status.
    pub relay: Option<(String, Arc<RelayStatus>)>,
    /// The alerts topic and its publisher's status.
    pub alerts_relay: Option<(String, Arc<RelayStatus>)>,
    /// Signed webhooks: their delivery log, the sender's status, and what sends by hand.
    pub webhooks: Option<(
        crate::ledger::webhooks::WebhookLog,
        Arc<crate::webhook::WebhookStatus>,
        Arc<crate::webhook::WebhookClient>,
    )>,
    /// The notifications topic and its publisher's status.
    pub notifications_relay: Option<(String, Arc<RelayStatus>)>,
    /// The alert monitor.
    pub monitor: Option<MonitorView>,
    /// Signed checkpoints, and the public key that checks them (hex).
    pub checkpoints: Option<(crate::ledger::checkpoint::CheckpointStore, String)>,
    /// The checkpoints topic and its publisher's status.
    pub checkpoints_relay: Option<(String, Arc<RelayStatus>)>,
    /// A read replica: its follower's status and the primary's URL.
    pub replica: Option<(Arc<bindledger_kafka::replica::ReplicaStatus>, String)>,
    /// A read replica: what promotes it.
    pub promoter: Option<Arc<bindledger_kafka::replica::Promoter>>,
    /// One shard of a cluster: how requests for other shards' accounts are routed.
    pub cluster: Option<Arc<ClusterRoute>>,
}

/// What the API needs of the alert monitor.
#[derive(Clone)]
pub struct MonitorView {
    pub store: AlertStore,
    pub feed: Arc<crate::ledger::alerts::feed::AlertFeed>,
    pub status: Arc<MonitorStatus>,
    pub rules: Arc<crate::domain::alerts::RuleSet>,
}

impl MonitorView {
    pub fn of(m: &crate::ledger::alerts::Monitor) -> MonitorView {
        MonitorView {
            store: m.store().clone(),
            feed: m.feed().clone(),
            status: m.status().clone(),
            rules: m.rules().clone(),
        }
    }
}

impl AppState {
    pub fn new(ledger: Ledger, tokens: &[TokenConfig], http: HttpConfig) -> Arc<AppState> {
        Self::build(ledger, tokens, http, Extras::default())
    }

    /// The same, with what runs beside the ledger (reported in `/metrics`, `/v1/relay`, and
    /// the alerts routes).
    pub fn build(ledger: Ledger, tokens: &[TokenConfig], http: HttpConfig, extras: Extras) -> Arc<AppState> {
        let mut certs = Vec::new();
        let tokens = tokens
            .iter()
            .map(|t| {
                let principal = Arc::new(Principal {
                    name: t.display_name(),
                    roles: t.roles.clone(),
                });
                if let Some(fp) = t.client_cert_sha256.as_deref().and_then(|h| hex::decode(h).ok()) {
                    if let Ok(fp) = <[u8; 32]>::try_from(fp) {
                        certs.push((fp, principal.clone()));
                    }
                }
                (Sha256::digest(t.token.as_bytes()).into(), principal)
            })
            .collect();
        let in_flight = Arc::new(Semaphore::new(http.connections_max));
        let public_in_flight = Arc::new(Semaphore::new((http.connections_max / 4).max(4)));
        Arc::new(AppState {
            ledger,
            tokens,
            certs,
            http,
            in_flight,
            public_in_flight,
            extras,
            closing: tokio::sync::watch::Sender::new(false),
            requests: Requests::default(),
            sessions: Default::default(),
            triages: Default::default(),
        })
    }

    /// Who holds the client certificate `cert` (verified by the TLS handshake), if a token names
    /// it.
    pub(crate) fn principal_of_cert(&self, cert: &crate::tls::PeerCert) -> Option<Arc<Principal>> {
        self.certs.iter().find(|(d, _)| *d == cert.0).map(|(_, p)| p.clone())
    }

    /// Who holds `token`, if it is one of the configured tokens.
    pub(crate) fn principal_of_token(&self, token: &str) -> Option<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.iter().find(|(d, _)| *d == digest).map(|(_, p)| p.clone())
    }

    /// The primary's URL, on a node that knows it: a replica's configured one, else the one
    /// the fence of the promotion that fenced this node named.
    pub(crate) fn primary_url(&self) -> Option<String> {
        self.extras
            .replica
            .as_ref()
            .map(|(_, url)| url.clone())
            .filter(|u| !u.is_empty())
            .or_else(|| self.ledger.replication().successor())
    }

    /// Whether the console's cookie is marked `Secure` (`http.console_secure_cookie`).
    pub(crate) fn console_secure_cookie(&self) -> bool {
        self.http.console_secure_cookie || self.http.tls.enabled()
    }
}

/// How this node routes account requests when it is one shard of a cluster.
pub struct ClusterRoute {
    pub shard: String,
    pub(crate) forward: bool,
    /// This node's `cluster` token, which forwards carry; without one, nothing is forwarded.
    pub(crate) token: Option<String>,
    pub(crate) client: reqwest::Client,
}

impl ClusterRoute {
    /// `ca_pem`: the CA the other shards' `https://` URLs are verified against (else the usual
    /// public roots).
    pub fn new(
        shard: &str,
        forward: bool,
        timeout: std::time::Duration,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<ClusterRoute, crate::Error> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| crate::Error::config("cluster.ca_file holds no PEM certificate"))?;
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| crate::Error::config(format!("the client that forwards to other shards: {e}")))?;
        Ok(ClusterRoute {
            shard: shard.to_owned(),
            forward,
            token,
            client,
        })
    }
}

/// Who sent a request, as the gate authenticated it (`server::gate`). Every route but the
/// public ones has one.
#[derive(Clone)]
pub(crate) struct Caller(pub(crate) Arc<Principal>);

/// Who a request acts as: a token's name and roles (by a bearer token, or a console session).
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<Role>,
}

/// An error answer. Every part is `'static`: an answer (and the log line made from it) cannot
/// carry a value the caller submitted, by construction.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    field: Option<&'static str>,
    /// What stands now, for a conflict (the ledger's own values, never the caller's).
    pub(crate) current: Option<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        ApiError {
            status,
            code,
            message,
            field: None,
            current: None,
        }
    }

    pub(crate) fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Error::VersionConflict { .. } => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Overloaded(_)
            | Error::ShuttingDown
            | Error::StorageFailed { .. }
            | Error::OutcomeUnknown
            | Error::Halted(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotPrimary | Error::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Error::Erased => StatusCode::GONE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR || matches!(e, Error::StorageFailed { .. }) {
            // Internal errors (storage, IO) carry no caller value; they are logged in full
            // and answered with fixed text.
            tracing::error!(error = %crate::error::chain(&e), code = e.code(), "request failed");
        }
        let (field, message) = match &e {
            Error::Invalid { field, message, .. } => (*field, *message),
            Error::NotFound(message) => (None, *message),
            Error::IdempotencyKeyReused => (None, "this idempotency key was already used for a different request"),
            Error::VersionConflict { .. } => (Some("expected_version"), "the account is not at the expected version; read it and retry"),
            Error::Overloaded(why) => (None, *why),
            Error::ShuttingDown => (None, "the ledger is shutting down"),
            Error::OutcomeUnknown => (
                None,
                "the event is durable on this ledger but the Kafka cluster has not acknowledged it in time; retry with the same idempotency key",
            ),
            e @ Error::StorageFailed { .. } if e.disk_full() => {
                (None, "the disk is full: the event log could not be written; the ledger takes no more commands")
            }
            Error::StorageFailed { .. } => (None, "the event log could not be written; the ledger takes no more commands"),
            Error::NotPrimary => (None, NOT_PRIMARY),
            Error::Misdirected => (
                None,
                "this account belongs to another shard of the cluster; the shard map changed while the request was in flight: retry",
            ),
            Error::Halted(why) => (None, *why),
            Error::Erased => (None, "this account's personal data was erased; it takes no more commands"),
            _ => (None, "internal error; see the server's log"),
        };
        ApiError {
            status,
            code: e.code(),
            message,
            field,
            current: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(code = self.code, field = self.field, reason = %self.message, "request refused");
        let mut body = json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        if let Some(current) = self.current {
            body["current"] = current;
        }
        let mut r = (self.status, Json(body)).into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

pub(crate) const NOT_PRIMARY: &str = "this ledger is a read replica and takes no commands; send them to the primary";

/// Reads a command's body after its token was checked: at most `http.body_limit_bytes`
/// (`413`), within `http.body_timeout_ms` (`408`, the slot it held is freed).
pub(crate) async fn read_body(state: &AppState, body: Body) -> ApiResult<Bytes> {
    let limit = state.http.body_limit_bytes;
    match tokio::time::timeout(state.http.body_timeout(), axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the limit",
                ))
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    "the request body could not be read",
                ))
            }
        }
    }
}

/// How long a session lasts without use.
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Most sessions one token holds at once; beyond it, that token's least recently used goes.
/// The sessions held in all are at most this many times the number of configured tokens.
pub const SESSIONS_PER_TOKEN: usize = 64;

struct Session {
    principal: Arc<Principal>,
    csrf: String,
    used: Instant,
}

/// The console's sessions, by the SHA-256 of their id (the id itself is only in the cookie).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the system has randomness");
    hex::encode(b)
}

fn digest(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

/// Compares without stopping at the first difference.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// A new session for `principal`: its id (for the cookie) and CSRF token. When the token
    /// holds [`SESSIONS_PER_TOKEN`] sessions, its least recently used one ends.
    pub(crate) fn open(&self, principal: Arc<Principal>) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut all = self.by_id.lock().expect("sessions lock");
        let now = Instant::now();
        all.retain(|_, s| now.duration_since(s.used) < SESSION_IDLE);
        let same_token = || all.iter().filter(|(_, s)| s.principal.name == principal.name);
        if same_token().count() >= SESSIONS_PER_TOKEN {
            if let Some(oldest) = same_token().min_by_key(|(_, s)| s.used).map(|(k, _)| *k) {
                all.remove(&oldest);
            }
        }
        all.insert(
            digest(&id),
            Session {
                principal,
                csrf: csrf.clone(),
                used: now,
            },
        );
        (id, csrf)
    }

    /// The live session a cookie names, touched; with its CSRF token.
    pub(crate) fn find(&self, id: &str) -> Option<(Arc<Principal>, String)> {
        let mut all = self.by_id.lock().expect("sessions lock");
        let key = digest(id);
        let s = all.get_mut(&key)?;
        if s.used.elapsed() >= SESSION_IDLE {
            all.remove(&key);
            return None;
        }
        s.used = Instant::now();
        Some((s.principal.clone(), s.csrf.clone()))
    }

    pub(crate) fn close(&self, id: &str) {
        self.by_id.lock().expect("sessions lock").remove(&digest(id));
    }
}

/// The HTTP requests answered: a counter by route pattern, method and status, and a histogram
/// of their durations by route pattern. Labels are patterns and codes only, a bounded set.
#[derive(Debug, Clone)]
pub struct Requests {
    answered: Labelled<Labels, Counter>,
    seconds: Labelled<Labels, Histogram, fn() -> Histogram>,
}

type Labels = Vec<(&'static str, String)>;

impl Default for Requests {
    fn default() -> Self {
        fn buckets() -> Histogram {
            // 100 µs to 10 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 3.0, 11,
            ))
        }
        Requests {
            answered: Default::default(),
            seconds: Labelled::new_with_constructor(buckets),
        }
    }
}

impl Requests {
    pub fn record(&self, method: &str, route: &'static str, status: u16, took: std::time::Duration) {
        self.answered
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.seconds
            .get_or_create(&vec![("route", route.to_owned())])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "bindledger_http_requests",
            "HTTP requests answered, by route pattern, method and status",
            self.answered.clone(),
        );
        registry.register(
            "bindledger_http_request_duration_seconds",
            "Time from a request's arrival to its answer's headers, by route pattern",
            self.seconds.clone(),
        );
    }
}
