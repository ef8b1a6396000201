//! The HTTP API (axum). Commands under `/v1/accounts/{account}/...`, reads of the projections,
//! the NDJSON event feed for auditors, alerts (list, one, and a live Server-Sent Events feed),
//! `/healthz` and `/metrics`.
//!
//! Every error is JSON `{"error": {"code", "message", "field"}}` with a stable code. Bodies are
//! size-limited, requests in flight are bounded, and bearer tokens carry roles: a missing or
//! unknown token is 401, a token without the needed role is 403.

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bindledger_events::{Event, Hash, Payload, TriageAction};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use crate::config::Role;
use crate::domain::alerts::Severity;
use crate::domain::command::{self, BindRequest, PayRequest, UnbindRequest, UnlockRequest};
use crate::domain::projection::binding_view;
use crate::error::Error;
use crate::ledger::alerts::store::{AlertFilter, AlertStore, Order};
use crate::ledger::CommandResult;
use bindledger_kafka::client::RelayStatus;
use bindledger_kafka::relay::Relay;

use crate::state::{read_body, ApiError, ApiResult, AppState, Caller, MonitorView, Principal, NOT_PRIMARY};

/// How a request's `Authorization` header reads.
enum Authorization<'h> {
    /// No such header: the request may be signed in by the console's cookie.
    Absent,
    /// `Bearer <token>`, the scheme matched without regard to case (RFC 7235, section 2.1).
    Bearer(&'h str),
    /// Any other scheme, an empty token, or bytes that are not text: never a credential.
    Unusable,
}

fn authorization(headers: &HeaderMap) -> Authorization<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Authorization::Absent;
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    token.map_or(Authorization::Unusable, Authorization::Bearer)
}

fn unauthenticated(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

/// Who sent the request, from its method and headers alone (no body has been read, nothing
/// has waited). A request is authenticated by exactly one credential: an `Authorization`
/// header, when it has one, and then only a known bearer token will do (another scheme never
/// falls back to the cookie); otherwise the console's session cookie, and a cookie-signed
/// request that changes anything (any method but GET and HEAD) must carry its session's
/// `X-CSRF-Token`.
pub(super) fn authenticate(
    state: &AppState,
    method: &axum::http::Method,
    headers: &HeaderMap,
    cert: Option<&crate::tls::PeerCert>,
) -> ApiResult<Arc<Principal>> {
    match authorization(headers) {
        Authorization::Bearer(token) => {
            let principal = state
                .principal_of_token(token)
                .ok_or_else(|| unauthenticated("unknown token"))?;
            // A node of the cluster forwarding a request acts as the caller it authenticated.
            if principal.roles.contains(&Role::Cluster) {
                match super::route::on_behalf_of(headers) {
                    None => {}
                    Some(Some(caller)) => return Ok(Arc::new(caller)),
                    Some(None) => return Err(unauthenticated("a forwarded request must name its caller")),
                }
            }
            Ok(principal)
        }
        Authorization::Unusable => Err(unauthenticated("send Authorization: Bearer <token>")),
        Authorization::Absent => {
            // A verified client certificate a token names (mutual TLS): that token's holder.
            if let Some(p) = cert.and_then(|c| state.principal_of_cert(c)) {
                return Ok(p);
            }
            let (principal, csrf) = super::console::cookie_session(headers)
                .and_then(|id| state.sessions.find(id))
                .ok_or_else(|| unauthenticated("send Authorization: Bearer <token>"))?;
            if !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD) {
                super::console::check_csrf(headers, &csrf)?;
            }
            Ok(principal)
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> ApiResult<Caller> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| unauthenticated("send Authorization: Bearer <token>"))
    }
}

/// The caller of `req`, if it holds `role`.
fn authorize(req: &Request, role: Role) -> ApiResult<Arc<Principal>> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| unauthenticated("send Authorization: Bearer <token>"))?;
    caller.require(&[role])
}

impl Caller {
    /// The caller, if it holds one of `allowed`.
    pub(super) fn require(&self, allowed: &[Role]) -> ApiResult<Arc<Principal>> {
        if allowed.iter().any(|r| self.0.roles.contains(r)) {
            return Ok(self.0.clone());
        }
        let message = match allowed {
            [Role::Writer] => "this token lacks the writer role",
            [Role::Reader] => "this token lacks the reader role",
            [Role::Auditor] => "this token lacks the auditor role",
            [Role::Security] => "this token lacks the security role",
            [Role::Privacy] => "this token lacks the privacy role",
            [Role::Reader, Role::Auditor, Role::Security] => "this token lacks the reader, auditor or security role",
            _ => "this token lacks the security or auditor role",
        };
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message))
    }
}

/// Authenticates from the headers, then reads and parses the body field by field.
async fn command_body<T: command::FromFields>(state: &AppState, req: Request, role: Role) -> ApiResult<T> {
    Ok(command_body_as(state, req, role).await?.0)
}

/// [`command_body`], with who sent it (for what is recorded under their name).
async fn command_body_as<T: command::FromFields>(
    state: &AppState,
    req: Request,
    role: Role,
) -> ApiResult<(T, Arc<Principal>)> {
    let principal = authorize(&req, role)?;
    let bytes = read_body(state, req.into_body()).await?;
    let body = T::from_body(&bytes).map_err(|e| {
        state.ledger.metrics().count_rejected(e.code());
        ApiError::from(e)
    })?;
    Ok((body, principal))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(t)| t).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the path is not valid for this route",
        )
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query string has an unknown parameter or a value of the wrong type",
        )
    })
}

/// The answer to a command. The event is embedded as its stored bytes (no re-encoding): the
/// same bytes the hash covers, so a client can check `hash` itself. Written piece by piece into
/// one buffer: every command's answer goes through here.
fn command_response(r: CommandResult) -> Response {
    let status = if r.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let outcome: &[u8] = if r.event.payload.succeeded() {
        b"succeeded"
    } else {
        b"failed"
    };
    let mut body = Vec::with_capacity(r.bytes.len() + 256);
    body.extend_from_slice(b"{\"outcome\":\"");
    body.extend_from_slice(outcome);
    body.extend_from_slice(b"\",\"event_type\":\"");
    body.extend_from_slice(r.event.event_type().as_bytes());
    body.extend_from_slice(b"\",\"failure_code\":");
    match r.event.payload.failure_code() {
        Some(code) => {
            body.push(b'"');
            body.extend_from_slice(code.as_bytes());
            body.push(b'"');
        }
        None => body.extend_from_slice(b"null"),
    }
    body.extend_from_slice(if r.replayed {
        b",\"replayed\":true,\"hash\":\""
    } else {
        b",\"replayed\":false,\"hash\":\""
    });
    body.extend_from_slice(&r.hash.hex_bytes());
    body.extend_from_slice(b"\",\"event\":");
    // The event as stored, but with its personal fields open for the caller who sent them
    // (`hash` is the stored bytes'; the feed and the topic carry those).
    if memchr::memmem::find(&r.bytes, b"\"sealed:").is_some() {
        body.extend_from_slice(&bindledger_events::codec::encode(&r.event));
    } else {
        body.extend_from_slice(&r.bytes);
    }
    body.push(b'}');
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn bind(
    State(s): State<Arc<AppState>>,
    account: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let req: BindRequest = command_body(&s, req, Role::Writer).await?;
    let account = path(account)?;
    let cmd = req
        .validate(&account, s.ledger.now())
        .inspect_err(|e| s.ledger.metrics().count_rejected(e.code()))?;
    Ok(command_response(s.ledger.bind(cmd).await?))
}

/// A payment's request, up to the command: token, body, path and validation.
async fn pay_command(
    s: &AppState,
    account: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<command::PayCommand> {
    let req: PayRequest = command_body(s, req, Role::Writer).await?;
    let account = path(account)?;
    Ok(req
        .validate(&account, s.ledger.now())
        .inspect_err(|e| s.ledger.metrics().count_rejected(e.code()))?)
}

async fn pay(
    State(s): State<Arc<AppState>>,
    account: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let cmd = pay_command(&s, account, req).await?;
    Ok(command_response(s.ledger.pay(cmd).await?))
}

/// The benchmark's baseline (`bindledger bench`, through [`serve_with_the_baseline`]): [`pay`]
/// up to the command, then an answer of an event's size without one.
async fn pay_baseline(
    State(s): State<Arc<AppState>>,
    account: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    std::hint::black_box(pay_command(&s, account, req).await?);
    // About the size of a payment's answer, and built into a fresh buffer as that one is.
    static ANSWER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        format!("{{\"outcome\":\"baseline\",\"padding\":\"{}\"}}", " ".repeat(600)).into_bytes()
    });
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        ANSWER.clone(),
    )
        .into_response())
}

async fn unbind(
    State(s): State<Arc<AppState>>,
    p: Result<Path<(String, String)>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let req: UnbindRequest = command_body(&s, req, Role::Writer).await?;
    let (account, binding_id) = path(p)?;
    let cmd = req
        .validate(&account, &binding_id, s.ledger.now())
        .inspect_err(|e| s.ledger.metrics().count_rejected(e.code()))?;
    Ok(command_response(s.ledger.unbind(cmd).await?))
}

async fn unlock(
    State(s): State<Arc<AppState>>,
    p: Result<Path<(String, String)>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let (req, principal): (UnlockRequest, _) = command_body_as(&s, req, Role::Security).await?;
    let (account, binding_id) = path(p)?;
    let (cmd, reason) = req
        .validate(&account, &binding_id, s.ledger.now())
        .inspect_err(|e| s.ledger.metrics().count_rejected(e.code()))?;
    let key = cmd.meta.idempotency_key.clone();
    let done = s.ledger.unlock(cmd).await?;
    if let Payload::BindingUnlocked { alert_id, .. } = &done.event.payload {
        attribute(&s, &account, alert_id, TriageAction::Unlocked, &principal, reason, key).await?;
    }
    Ok(command_response(done))
}

/// `POST /v1/accounts/{account}/bindings/{binding_id}/lock` (security): locks a binding for an
/// alert, then records who did it and why as the alert's triage (`locked`).
async fn lock(
    State(s): State<Arc<AppState>>,
    p: Result<Path<(String, String)>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let (req, principal): (command::LockRequest, _) = command_body_as(&s, req, Role::Security).await?;
    let (account, binding_id) = path(p)?;
    let (cmd, reason) = req
        .validate(&account, &binding_id, s.ledger.now())
        .inspect_err(|e| s.ledger.metrics().count_rejected(e.code()))?;
    let Some(alert) = monitor(&s)?.store.get(&cmd.alert_id)? else {
        return Err(alert_not_found());
    };
    // A lock cites the alert that justifies it: one about this account.
    if !alert.accounts.contains(&account) && alert.key.value != account {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "alert_of_another_account",
            "the alert is not about this account; a lock must cite an alert about the account it locks",
        )
        .with_field("alert_id"));
    }
    let (alert_id, key) = (cmd.alert_id.clone(), cmd.meta.idempotency_key.clone());
    let done = s.ledger.lock(cmd).await?;
    if matches!(done.event.payload, Payload::BindingLocked { .. }) {
        attribute(&s, &account, &alert_id, TriageAction::Locked, &principal, reason, key).await?;
    }
    Ok(command_response(done))
}

/// Records a person's lock or unlock as the alert's triage, by their token's name. Its
/// idempotency key follows the command's, so a retried command does not record it twice.
async fn attribute(
    s: &AppState,
    account: &str,
    alert_id: &str,
    action: TriageAction,
    principal: &Principal,
    note: String,
    key: Option<String>,
) -> ApiResult<()> {
    let meta = command::Meta {
        account: account.to_owned(),
        idempotency_key: key.map(|k| format!("{k}/{}", action.as_str())),
        expected_version: None,
        correlation_id: None,
        event_time: None,
        context: bindledger_events::Context {
            channel: "console".into(),
            ..Default::default()
        },
        keys_checked: None,
    };
    record_triage(
        s,
        command::TriageCommand {
            meta,
            alert_id: alert_id.to_owned(),
            action,
            operator: principal.name.clone(),
            assignee: None,
            note,
        },
        None,
    )
    .await?;
    Ok(())
}

/// Records a triage, one at a time on this node: when `expected` is given (the seq of the
/// alert's latest triage the caller saw, 0 for none), another triage since is refused with
/// `409 triage_conflict`, naming it, and nothing is recorded.
async fn record_triage(s: &AppState, cmd: command::TriageCommand, expected: Option<u64>) -> ApiResult<CommandResult> {
    let _one = s.triages.one_at_a_time.lock().await;
    let alert_id = cmd.alert_id.clone();
    if let Some(expected) = expected {
        let stored = monitor(s)?.store.triage(&alert_id)?;
        let latest = s.triages.latest(&alert_id, stored.as_ref().map_or(0, |t| t.seq));
        if latest != expected {
            s.ledger.metrics().count_rejected("triage_conflict");
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "triage_conflict",
                "someone triaged this alert after the triage you saw; read it again, then decide",
            )
            .with_field("expected_triage_seq");
            e.current = Some(json!({"triage_seq": latest, "triage": stored.filter(|t| t.seq == latest)}));
            return Err(e);
        }
    }
    let done = s.ledger.triage(cmd).await?;
    s.triages.note(&alert_id, done.event.seq);
    Ok(done)
}

fn checkpoints_of(s: &AppState) -> ApiResult<&(crate::ledger::checkpoint::CheckpointStore, String)> {
    s.extras.checkpoints.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "checkpoints_disabled",
            "checkpoints are off (checkpoints.enabled = false)",
        )
    })
}

/// Every signed checkpoint, oldest first, one JSON object per line.
async fn checkpoints(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Auditor])?;
    let (store, _) = checkpoints_of(&s)?;
    let mut body = Vec::new();
    for cp in store.all()? {
        body.extend_from_slice(&serde_json::to_vec(&cp).expect("checkpoints serialize"));
        body.push(b'\n');
    }
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// The public key checkpoints are signed with, and what is signed.
async fn checkpoint_key(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Auditor])?;
    let (_, key) = checkpoints_of(&s)?;
    Ok(Json(json!({
        "algorithm": "ed25519",
        "public_key": key,
        "message": "bindledger-checkpoint:v1:{seq}:{head}:{time}",
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    limit: Option<usize>,
    /// Attempts before this one (its `n`): the next page.
    before: Option<u64>,
}

/// `GET /v1/webhooks/deliveries` (security, auditor): the webhooks' delivery log, newest
/// attempt first, and the sender's totals.
async fn webhook_deliveries(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let q = query(q)?;
    let Some((log, status, _)) = s.extras.webhooks.clone() else {
        return Err(webhooks_disabled());
    };
    let limit = q.limit.unwrap_or(100).clamp(1, s.http.page_limit_max);
    let before = q.before;
    let deliveries = blocking(move || log.recent(limit, before)).await?;
    let mut report = status.report();
    report["next_before"] = json!(deliveries.last().filter(|_| deliveries.len() == limit).map(|d| d.n));
    report["deliveries"] = json!(deliveries);
    Ok(Json(report).into_response())
}

/// The webhooks' sender for a person's resend or test (security), or why there is none.
fn webhook_client(s: &AppState) -> ApiResult<Arc<crate::webhook::WebhookClient>> {
    s.extras
        .webhooks
        .as_ref()
        .map(|(_, _, c)| c.clone())
        .ok_or_else(webhooks_disabled)
}

fn webhooks_disabled() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "webhooks_disabled",
        "webhooks are off (webhooks.url is not set)",
    )
}

/// The account an alert's triage is recorded in: its first account (a wallet alert's too).
fn account_of(alert: &crate::domain::alerts::Alert) -> String {
    alert
        .accounts
        .first()
        .cloned()
        .unwrap_or_else(|| alert.key.value.clone())
}

/// Runs blocking storage work off the async threads; a panicked task answers as an IO error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> ApiResult<T> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(Error::io(e.to_string())))??)
}

fn alert_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "alert_not_found", "no alert has this id")
}

/// `POST /v1/webhooks/deliveries/{stream_seq}/resend` (security): sends that alert change to
/// the receiver again, once, and answers the attempt as the delivery log holds it.
async fn webhook_resend(
    State(s): State<Arc<AppState>>,
    seq: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    authorize(&req, Role::Security)?;
    let seq = path(seq)?;
    let client = webhook_client(&s)?;
    let seq: u64 = seq.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_stream_seq",
            "the delivery is named by its alert change's stream seq (a number from 1)",
        )
    })?;
    match client.resend(seq).await? {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "change_not_found",
            "the alert stream holds no change with this stream seq",
        )),
    }
}

/// `POST /v1/webhooks/test` (security): sends a signed test event to the receiver, once, and
/// answers the attempt.
async fn webhook_test(State(s): State<Arc<AppState>>, req: Request) -> ApiResult<Response> {
    authorize(&req, Role::Security)?;
    let client = webhook_client(&s)?;
    Ok(Json(client.test().await?).into_response())
}

/// Who may read alerts.
const ALERT_READERS: &[Role] = &[Role::Security, Role::Auditor];

fn monitor(s: &AppState) -> ApiResult<&MonitorView> {
    s.extras.monitor.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "alerts_disabled",
            "the alert monitor is not running (alerts.enabled = false)",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    since: Option<String>,
    until: Option<String>,
    severity: Option<String>,
    rule: Option<String>,
    account: Option<String>,
    /// The alert's key: a wallet fingerprint (or an account).
    wallet: Option<String>,
    state: Option<String>,
    assignee: Option<String>,
    /// `newest` (the default) or `oldest` first.
    sort: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// SSE only: resume after this stream seq (as `Last-Event-ID` does).
    after: Option<u64>,
    /// SSE only: also send triage as it is recorded (`event: triage`); ids are then
    /// `<stream seq>.<triage seq>`.
    triage: Option<bool>,
    /// SSE only, with `triage`: resume the triage after this event seq.
    triage_after: Option<u64>,
}

/// The states `GET /v1/alerts?state=` takes.
const ALERT_STATES_TEXT: &str =
    "state is one of open, closed, untriaged, acknowledged, assigned, resolved, false_positive, locked, unlocked";

impl AlertQuery {
    fn filter(&self) -> ApiResult<AlertFilter> {
        let bad = |code, field, message| ApiError::new(StatusCode::BAD_REQUEST, code, message).with_field(field);
        let time = |t: &Option<String>, field: &'static str| -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
            match t {
                None => Ok(None),
                Some(t) => Ok(Some(
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map_err(|_| bad("invalid_time", field, "times are RFC 3339, e.g. 2026-11-26T08:00:00Z"))?
                        .with_timezone(&chrono::Utc),
                )),
            }
        };
        let since = time(&self.since, "since")?;
        let until = time(&self.until, "until")?;
        let severity = match &self.severity {
            None => None,
            Some(v) => Some(Severity::parse(v).ok_or_else(|| {
                bad(
                    "invalid_severity",
                    "severity",
                    "severity is one of low, medium, high, critical",
                )
            })?),
        };
        if let Some(r) = &self.rule {
            if !crate::domain::alerts::rules::RULE_NAMES.contains(&r.as_str()) {
                return Err(bad(
                    "invalid_rule",
                    "rule",
                    crate::domain::alerts::rules::RULE_NAMES_TEXT,
                ));
            }
        }
        if let Some(a) = &self.account {
            command::validate_account(a)?;
        }
        if let Some(w) = &self.wallet {
            let fingerprint = w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit());
            if !fingerprint {
                command::validate_account(w).map_err(|_| {
                    bad(
                        "invalid_wallet",
                        "wallet",
                        "wallet is a wallet fingerprint (64 hex digits) or an account",
                    )
                })?;
            }
        }
        if let Some(st) = &self.state {
            let known =
                st == "open" || st == "closed" || crate::ledger::alerts::store::TRIAGE_STATES.contains(&st.as_str());
            if !known {
                return Err(bad("invalid_state", "state", ALERT_STATES_TEXT));
            }
        }
        if let Some(who) = &self.assignee {
            let ok = !who.is_empty() && who.len() <= 64 && !who.chars().any(char::is_control);
            if !ok {
                return Err(bad(
                    "invalid_assignee",
                    "assignee",
                    "assignee is a token's name: 1 to 64 characters",
                ));
            }
        }
        Ok(AlertFilter {
            since,
            until,
            severity,
            rule: self.rule.clone(),
            account: self.account.clone(),
            key: self.wallet.clone(),
            state: self.state.clone(),
            assignee: self.assignee.clone(),
            now: None,
        })
    }

    fn order(&self) -> ApiResult<Order> {
        match self.sort.as_deref() {
            None | Some("newest") => Ok(Order::NewestFirst),
            Some("oldest") => Ok(Order::OldestFirst),
            Some(_) => Err(
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_sort", "sort is newest or oldest").with_field("sort"),
            ),
        }
    }
}

/// Alerts, newest (or oldest) first by the event that opened them, each at its latest revision,
/// filtered by any of since, until, severity, rule, account, wallet, state and assignee.
/// Answers `{alerts, next_cursor, stream_seq, triage_seq}`: the last two are what the listing
/// reflects at least, for a follower of the live stream to resume from
/// (`/v1/alerts/stream?after=<stream_seq>&triage=true&triage_after=<triage_seq>`).
async fn alerts_list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<AlertQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?;
    let q = query(q)?;
    let mut filter = q.filter()?;
    filter.now = Some(s.ledger.now());
    let order = q.order()?;
    let limit = q.limit.unwrap_or(100).clamp(1, s.http.page_limit_max);
    let store = m.store.clone();
    let cursor = q.cursor.clone();
    let ledger = s.ledger.clone();
    // Read before the listing: the stream from here repeats at most what the listing shows.
    let (stream_seq, triage_seq) = (m.feed.stored(), m.feed.triaged());
    let (alerts, next) = blocking(move || -> crate::Result<_> {
        let (alerts, next) = store.list(&filter, cursor.as_deref(), limit, order)?;
        let alerts = alerts
            .into_iter()
            .map(|a| with_triage(&ledger, &store, a))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok((alerts, next))
    })
    .await?;
    Ok(
        Json(json!({"alerts": alerts, "next_cursor": next, "stream_seq": stream_seq, "triage_seq": triage_seq}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertHistoryQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

/// `GET /v1/alerts/{id}/history?limit&before` (security, auditor): the alert's `alert_triaged`
/// events, newest first (at most `limit`, 100 unless said; those before the event seq
/// `before`), and `next_before` for the next page: its whole history however long its
/// account's. The notes are opened for the security role; an auditor reads them `[sealed]`, as
/// the audit tool does.
async fn alert_history(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<AlertHistoryQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?;
    let id = path(id)?;
    let q = query(q)?;
    let Some(alert) = m.store.get(&id)? else {
        return Err(alert_not_found());
    };
    let account = account_of(&alert);
    let limit = q.limit.unwrap_or(100).clamp(1, s.http.page_limit_max);
    let open = caller.0.roles.contains(&Role::Security);
    // Read your writes: a triage this node recorded is in the history once the alert store has
    // it (milliseconds); waited for, two seconds at most.
    let stored = m.store.triage(&id)?.map_or(0, |t| t.seq);
    let want = s.triages.latest(&id, stored);
    if want > m.feed.triaged() {
        let mut triaged = m.feed.subscribe_triage();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), triaged.wait_for(|t| *t >= want)).await;
    }
    let (store, ledger) = (m.store.clone(), s.ledger.clone());
    let (events, next) = blocking(move || -> crate::Result<_> {
        let seqs = store.history_seqs(&id, q.before, limit)?;
        let next = (seqs.len() == limit).then(|| seqs.last().copied()).flatten();
        Ok((ledger.account_events_at(&account, &seqs, open)?, next))
    })
    .await?;
    Ok(Json(json!({"events": events, "next_before": next})).into_response())
}

/// Events of an account `GET /v1/accounts/{account}/related` looks at, newest first.
const RELATED_EVENTS: usize = 500;
/// Devices and addresses of an account it answers, each.
const RELATED_FINGERPRINTS: usize = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelatedQuery {
    limit: Option<usize>,
}

/// `GET /v1/accounts/{account}/related?limit` (security): the other accounts that used the
/// devices and addresses this account used in its newest 500 events (by their keyed
/// fingerprints, schema v9; at most five devices and five addresses, the most recent first, and
/// `limit` accounts each, 20 unless said). `{account, devices: [{fingerprint, accounts:
/// [{account, first_seq}], more}], addresses: [...]}`. Needs the alert monitor, which keeps
/// the fingerprints' accounts.
async fn related(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    account: Result<Path<String>, PathRejection>,
    q: Result<Query<RelatedQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Security])?;
    let account = path(account)?;
    command::validate_account(&account)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(20).clamp(1, s.http.page_limit_max);
    let m = monitor(&s)?;
    let events = s.ledger.history_newest(&account, u64::MAX, RELATED_EVENTS).await?;
    let mut devices: Vec<bindledger_events::Hash> = Vec::new();
    let mut addresses: Vec<bindledger_events::Hash> = Vec::new();
    for e in &events {
        for (list, fp) in [(&mut devices, e.context.device_fp), (&mut addresses, e.context.ip_fp)] {
            if let Some(fp) = fp {
                if list.len() < RELATED_FINGERPRINTS && !list.contains(&fp) {
                    list.push(fp);
                }
            }
        }
    }
    let (store, me) = (m.store.clone(), account.clone());
    let (devices, addresses) = blocking(move || -> crate::Result<_> {
        let look = |kind: u8, fps: Vec<bindledger_events::Hash>| -> crate::Result<Vec<serde_json::Value>> {
            fps.into_iter()
                .map(|fp| {
                    // One more than asked: this account is among them.
                    let (found, more) = store.related_accounts(kind, &fp, limit + 1)?;
                    let others: Vec<_> = found.into_iter().filter(|(a, _)| *a != me).collect();
                    let more = more || others.len() > limit;
                    let others: Vec<_> = others
                        .into_iter()
                        .take(limit)
                        .map(|(a, seq)| json!({"account": a, "first_seq": seq}))
                        .collect();
                    Ok(json!({"fingerprint": fp, "accounts": others, "more": more}))
                })
                .collect()
        };
        use crate::ledger::alerts::store::{RELATED_DEVICE, RELATED_IP};
        Ok((look(RELATED_DEVICE, devices)?, look(RELATED_IP, addresses)?))
    })
    .await?;
    Ok(Json(json!({"account": account, "devices": devices, "addresses": addresses})).into_response())
}

/// Alerts `GET /v1/alerts/counts` counts at most.
const COUNTS_MAX: usize = 200_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountsQuery {
    since: String,
}

/// `GET /v1/alerts/counts?since=` (security, auditor): the alerts opened since then, by rule
/// and by severity: `{total, by_rule, by_severity, complete}` (at most 200,000 counted; then
/// `complete` is false and the counts are floors). What the console's "At a glance" draws.
async fn alerts_counts(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<CountsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?;
    let q = query(q)?;
    let since = chrono::DateTime::parse_from_rfc3339(&q.since)
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_time",
                "times are RFC 3339, e.g. 2026-11-26T08:00:00Z",
            )
            .with_field("since")
        })?
        .with_timezone(&chrono::Utc);
    let store = m.store.clone();
    let counts = blocking(move || store.counts(since, COUNTS_MAX)).await?;
    Ok(Json(counts).into_response())
}

/// Rows `GET /v1/alerts/export` writes at most.
const EXPORT_MAX: usize = 100_000;

/// A value as a CSV field: quoted when it must be, and a value a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@` first) led by `'`.
fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// `GET /v1/alerts/export` (security, auditor): the alerts a listing with the same filters and
/// sort would show, all of them up to `limit` (at most 100,000; 10,000 unless said), as CSV
/// with a header row. `X-Truncated: true` when more matched.
async fn alerts_export(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<AlertQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?;
    let q = query(q)?;
    let mut filter = q.filter()?;
    let now = s.ledger.now();
    filter.now = Some(now);
    let order = q.order()?;
    let limit = q.limit.unwrap_or(10_000).clamp(1, EXPORT_MAX);
    let (store, ledger) = (m.store.clone(), s.ledger.clone());
    let (body, truncated) = blocking(move || -> crate::Result<_> {
        let mut out = String::from("id,rule,severity,key_kind,key,accounts,opened_at,updated_at,observed,threshold,unit,currency,matches,revision,state,binding_locked_until,triage,triaged_by,assignee,triaged_at\n");
        let mut cursor: Option<String> = None;
        let mut written = 0;
        loop {
            let (page, next) = store.list(&filter, cursor.as_deref(), (limit - written).min(1000), order)?;
            for a in page {
                let t = store.triage(&a.id)?;
                let lock = match &a.lock {
                    Some(l) => ledger.binding_lock(&l.account, l.binding_id)?,
                    None => None,
                };
                let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let row = [
                    a.id.clone(),
                    a.rule.clone(),
                    a.severity.as_str().to_owned(),
                    a.key.kind.clone(),
                    a.key.value.clone(),
                    a.accounts.join(" "),
                    time(a.opened_at),
                    time(a.updated_at),
                    a.observed.to_string(),
                    a.threshold.to_string(),
                    a.unit.clone(),
                    a.currency.map(|c| c.to_string()).unwrap_or_default(),
                    a.matches.to_string(),
                    a.revision.to_string(),
                    (if a.open_until > now { "open" } else { "closed" }).to_owned(),
                    lock.filter(|l| l.until > now).map(|l| time(l.until)).unwrap_or_default(),
                    t.as_ref().map(|t| t.action.clone()).unwrap_or_default(),
                    t.as_ref().map(|t| t.operator.clone()).unwrap_or_default(),
                    t.as_ref().and_then(|t| t.assignee.clone()).unwrap_or_default(),
                    t.as_ref().map(|t| time(t.at)).unwrap_or_default(),
                ];
                out.push_str(&row.iter().map(|v| csv_field(v)).collect::<Vec<_>>().join(","));
                out.push('\n');
                written += 1;
            }
            match next {
                Some(n) if written < limit => cursor = Some(n),
                Some(_) => return Ok((out, true)),
                None => return Ok((out, false)),
            }
        }
    }).await?;
    let mut r = (
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"alerts.csv\"",
            ),
        ],
        body,
    )
        .into_response();
    if truncated {
        r.headers_mut()
            .insert("x-truncated", axum::http::HeaderValue::from_static("true"));
    }
    Ok(r)
}

/// An alert as the API shows it: its latest revision, `triage`, where it stands with the
/// people handling it (`null` before anyone acted on it), and for an alert that locks,
/// `binding_lock`: the lock on its binding now (`null` when none is in force), whoever lifted
/// or made it since.
fn with_triage(
    ledger: &crate::ledger::Ledger,
    store: &AlertStore,
    alert: crate::domain::alerts::Alert,
) -> crate::Result<serde_json::Value> {
    let triage = store.triage(&alert.id)?;
    let lock = match &alert.lock {
        Some(l) => ledger.binding_lock(&l.account, l.binding_id)?,
        None => None,
    };
    let locks = alert.lock.is_some();
    let mut v = serde_json::to_value(alert).expect("alerts serialize");
    v["triage"] = serde_json::to_value(triage).expect("triage serializes");
    if locks {
        v["binding_lock"] = serde_json::to_value(lock).expect("locks serialize");
    }
    Ok(v)
}

async fn alert_one(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?;
    let id = path(id)?;
    match m.store.get(&id)? {
        Some(a) => Ok(Json(with_triage(&s.ledger, &m.store, a)?).into_response()),
        None => Err(alert_not_found()),
    }
}

/// `POST /v1/alerts/{alert_id}/triage` (security): `{action, note?, assignee?}` and the common
/// fields. Recorded as an `alert_triaged` event in the alert's account, attributed to the
/// token's name; answered like any command.
async fn triage(
    State(s): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let (req, principal): (command::TriageRequest, _) = command_body_as(&s, req, Role::Security).await?;
    let id = path(id)?;
    command::validate_alert_id(&id)?;
    let m = monitor(&s)?;
    let Some(alert) = m.store.get(&id)? else {
        return Err(alert_not_found());
    };
    let account = account_of(&alert);
    let expected = req.expected_triage_seq;
    let cmd = req
        .validate(&account, &id, &principal.name, s.ledger.now())
        .inspect_err(|e| s.ledger.metrics().count_rejected(e.code()))?;
    // An alert is assigned to someone who can act on it: a token's name.
    if let Some(assignee) = &cmd.assignee {
        if !s.tokens.iter().any(|(_, p)| p.name == *assignee) {
            s.ledger.metrics().count_rejected("unknown_assignee");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_assignee",
                "no token has this name; assign the alert to a token's name",
            )
            .with_field("assignee"));
        }
    }
    Ok(command_response(record_triage(&s, cmd, expected).await?))
}

/// `GET /v1/rules` (security, auditor): the alert rules in force, and their digest.
async fn rules(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?;
    Ok(Json(json!({"rules": &*m.rules, "digest": m.rules.digest()})).into_response())
}

/// Alerts listed per kind in a backtest's answer (the counts cover all of them).
const BACKTEST_LISTED_MAX: usize = 100;

/// `POST /v1/rules/backtest` (security): the body is a candidate rules file (TOML). Runs it
/// over the whole log beside the alerts the ledger raised, and answers what it would have
/// added, removed and changed: `{events, added, removed, changed, unchanged, listed_max}`,
/// each list at most `listed_max` long. A file that does not parse is `400 invalid_rules`
/// with the `line` of the problem (never its text).
async fn backtest(State(s): State<Arc<AppState>>, req: Request) -> ApiResult<Response> {
    authorize(&req, Role::Security)?;
    let body = read_body(&s, req.into_body()).await?;
    let m = monitor(&s)?;
    let candidate = match std::str::from_utf8(&body)
        .ok()
        .map(|text| crate::domain::alerts::RuleSet::from_toml(text, None))
    {
        Some(Ok(rules)) => rules,
        Some(Err(e)) => {
            let body = json!({"error": {"code": "invalid_rules", "message": "the rules file is not valid; see the line", "field": "rules"}, "line": e.line});
            return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
        }
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_rules",
                "the rules file is not UTF-8 text",
            ))
        }
    };
    let (ledger, store) = (s.ledger.clone(), m.store.clone());
    let report = tokio::task::spawn_blocking(move || -> crate::error::Result<_> {
        use crate::domain::alerts::backtest::{latest, Backtester};
        let last = store.last_stream_seq()?;
        let actual = latest(store.changes_after(0, last, usize::MAX)?);
        let mut tester = Backtester::new(candidate, None);
        for r in ledger.raw_events(1) {
            let (_, bytes) = r?;
            let e = bindledger_events::decode(&bytes).map_err(|e| Error::corrupt_by("an event of the log", e))?;
            tester.apply(&e);
        }
        Ok(tester.finish(Some(actual)))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the backtest failed"))??;
    let take = |v: &[crate::domain::alerts::Alert]| v.iter().take(BACKTEST_LISTED_MAX).cloned().collect::<Vec<_>>();
    Ok(Json(json!({
        "events": report.events,
        "added_total": report.added.len(),
        "removed_total": report.removed.len(),
        "changed_total": report.changed.len(),
        "unchanged": report.unchanged,
        "added": take(&report.added),
        "removed": take(&report.removed),
        "changed": report.changed.iter().take(BACKTEST_LISTED_MAX).map(|(was, now)| json!({"id": now.id, "differences": crate::domain::alerts::differences(was, now)})).collect::<Vec<_>>(),
        "listed_max": BACKTEST_LISTED_MAX,
    }))
    .into_response())
}

/// Stream entries per read of the live feed.
const STREAM_READ: usize = 256;

/// The live feed: every alert change as a Server-Sent Event (`id` = stream seq, `event:
/// alert`, `data` = the change as JSON), in order, from after `Last-Event-ID` (or `?after=`),
/// then live. Filters apply; ids stay the stream's, so resuming works with them too.
async fn alerts_stream(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    q: Result<Query<AlertQuery>, QueryRejection>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    caller.require(ALERT_READERS)?;
    let m = monitor(&s)?.clone();
    let q = query(q)?;
    let filter = q.filter()?;
    // `Last-Event-ID`: a stream seq, or `<stream seq>.<triage seq>` (with `triage=true`).
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| {
                    let v = v.trim();
                    match v.split_once('.') {
                        None => Some((v.parse::<u64>().ok()?, None)),
                        Some((a, t)) => Some((a.parse::<u64>().ok()?, Some(t.parse::<u64>().ok()?))),
                    }
                })
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_last_event_id",
                        "Last-Event-ID must be an id from this feed",
                    )
                })?,
        ),
    };
    let after = last_event_id.map(|(a, _)| a).or(q.after).unwrap_or(0);
    let with_triage = q.triage.unwrap_or(false);
    // Triage from where the follower left it, else from now.
    let triage_after = last_event_id
        .and_then(|(_, t)| t)
        .or(q.triage_after)
        .unwrap_or_else(|| m.feed.triaged());
    enum Item {
        Change(Box<crate::domain::alerts::AlertChange>),
        Triage(crate::ledger::alerts::store::TriageEntry),
    }
    struct Feed {
        m: MonitorView,
        published: tokio::sync::watch::Receiver<u64>,
        triaged: Option<tokio::sync::watch::Receiver<u64>>,
        filter: AlertFilter,
        after: u64,
        triage_after: u64,
        /// What was sent: the id of the next event is made of them.
        sent: (u64, u64),
        pending: std::collections::VecDeque<Item>,
        closing: tokio::sync::watch::Receiver<bool>,
    }
    let published = m.feed.subscribe();
    let triaged = with_triage.then(|| m.feed.subscribe_triage());
    let feed = Feed {
        m,
        published,
        triaged,
        filter,
        after,
        triage_after,
        sent: (after, triage_after),
        pending: Default::default(),
        closing: s.closing.subscribe(),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if *f.closing.borrow() {
                return None;
            }
            if let Some(item) = f.pending.pop_front() {
                let (kind, data) = match &item {
                    Item::Change(c) => {
                        f.sent.0 = c.stream_seq;
                        ("alert", serde_json::to_string(c).expect("alerts serialize"))
                    }
                    Item::Triage(t) => {
                        f.sent.1 = t.triage.seq;
                        ("triage", serde_json::to_string(t).expect("triage serializes"))
                    }
                };
                let id = match f.triaged {
                    Some(_) => format!("{}.{}", f.sent.0, f.sent.1),
                    None => f.sent.0.to_string(),
                };
                let ev = SseEvent::default().id(id).event(kind).data(data);
                return Some((Ok::<_, std::convert::Infallible>(ev), f));
            }
            if let Some(triaged) = &mut f.triaged {
                if *triaged.borrow_and_update() > f.triage_after {
                    let Ok(entries) = f.m.store.triage_after(f.triage_after, STREAM_READ) else {
                        return None;
                    };
                    if let Some(last) = entries.last() {
                        f.triage_after = last.triage.seq;
                    }
                    f.pending.extend(entries.into_iter().map(Item::Triage));
                    continue;
                }
            }
            let triage_changed = async {
                match &mut f.triaged {
                    Some(t) => t.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                r = f.m.feed.next_after(f.after, STREAM_READ, &mut f.published) => r,
                _ = triage_changed => continue,
                _ = f.closing.changed() => continue,
            };
            match next {
                Ok(Some(changes)) => {
                    f.after = changes.last().map_or(f.after, |c| c.stream_seq);
                    let keep = changes
                        .into_iter()
                        .filter(|c| f.filter.accepts(&c.alert))
                        .map(|c| Item::Change(Box::new(c)));
                    f.pending.extend(keep);
                }
                _ => return None,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

async fn bindings(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    account: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    let account = path(account)?;
    command::validate_account(&account)?;
    let state = s.ledger.account(&account)?.unwrap_or_default();
    let list: Vec<_> = state.bindings.iter().map(binding_view).collect();
    Ok(Json(json!({"account": account, "version": state.version, "bindings": list})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    before_version: Option<u64>,
    after_version: Option<u64>,
    /// History: `oldest` (the default) or `newest` first.
    order: Option<String>,
    /// History, newest first: the page around the account's event with this (global) `seq`: it
    /// and the events before it, and up to five after.
    at_seq: Option<u64>,
}

fn payment_view(e: &Event) -> Option<serde_json::Value> {
    let common =
        |status: &str, order_id: &str, amount_minor: i64, currency: &bindledger_events::Currency, binding_id| {
            json!({
                "seq": e.seq,
                "account_seq": e.account_seq,
                "event_id": e.id,
                "event_time": e.event_time,
                "status": status,
                "order_id": order_id,
                "binding_id": binding_id,
                "amount_minor": amount_minor,
                "currency": currency,
                "amount_display": currency.format(amount_minor),
            })
        };
    match &e.payload {
        Payload::PaymentSucceeded {
            binding_id,
            provider,
            wallet,
            order_id,
            amount_minor,
            currency,
            ..
        } => {
            let mut v = common("succeeded", order_id, *amount_minor, currency, binding_id);
            v["provider"] = json!(provider);
            v["wallet"] = json!(wallet.masked);
            Some(v)
        }
        Payload::PaymentFailed {
            binding_id,
            order_id,
            amount_minor,
            currency,
            reason,
            ..
        } => {
            let mut v = common("failed", order_id, *amount_minor, currency, binding_id);
            v["reason"] = json!(reason);
            Some(v)
        }
        _ => None,
    }
}

async fn payments(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    account: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    let account = path(account)?;
    command::validate_account(&account)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50).clamp(1, s.http.page_limit_max);
    let (events, next) = s.ledger.payments(&account, q.before_version, limit).await?;
    let list: Vec<_> = events.iter().filter_map(payment_view).collect();
    Ok(Json(json!({"account": account, "payments": list, "next_before_version": next})).into_response())
}

async fn history(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    account: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    let account = path(account)?;
    command::validate_account(&account)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, s.http.page_limit_max);
    let newest = match q.order.as_deref() {
        None | Some("oldest") => q.before_version.is_some() || q.at_seq.is_some(),
        Some("newest") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_order",
                "order is `oldest` or `newest`",
            )
            .with_field("order"))
        }
    };
    if !newest {
        let events = s.ledger.history(&account, q.after_version.unwrap_or(0), limit).await?;
        let next = if events.len() == limit {
            events.last().map(|e| e.account_seq)
        } else {
            None
        };
        return Ok(Json(json!({"account": account, "events": events, "next_after_version": next})).into_response());
    }
    // Newest first: from the end, before a version, or around one event (an alert's).
    let before = match q.at_seq {
        Some(seq) => match s.ledger.account_seq_of(&account, seq)? {
            Some(v) => v.saturating_add(6),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "event_not_found",
                    "no event of this account has this seq",
                )
                .with_field("at_seq"))
            }
        },
        None => q.before_version.unwrap_or(u64::MAX),
    };
    let events = s.ledger.history_newest(&account, before, limit).await?;
    // Cursors both ways, each a `before_version` for the next request: the page of older
    // events, and (unless this page started at the newest) the page of newer ones.
    let older = if events.len() == limit {
        events.last().map(|e| e.account_seq)
    } else {
        None
    };
    let newest = match before {
        u64::MAX => None,
        _ => s.ledger.account_version(&account)?,
    };
    let newer = match (events.first(), newest) {
        (Some(e), Some(v)) if e.account_seq < v => Some(e.account_seq.saturating_add(limit as u64 + 1)),
        _ => None,
    };
    Ok(
        Json(
            json!({"account": account, "events": events, "next_before_version": older, "newer_before_version": newer}),
        )
        .into_response(),
    )
}

async fn wallet_accounts(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    fp: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    let fp = path(fp)?;
    let hash = Hash::from_hex(&fp).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_fingerprint",
            "a wallet fingerprint is 64 hex characters",
        )
    })?;
    let (accounts, history) = s.ledger.wallet_accounts(&hash)?;
    Ok(Json(json!({"fingerprint": hash, "accounts": accounts, "history": history})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

/// Events per chunk of the feed's body.
const FEED_CHUNK_EVENTS: usize = 512;

/// The global event feed: the stored bytes of each event, one per line, from `from` (default
/// 1), at most `limit`. Streamed; a consumer can verify the chain from it.
async fn feed(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(&[Role::Auditor])?;
    let q = query(q)?;
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(s.http.feed_limit_max).min(s.http.feed_limit_max);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let ledger = s.ledger.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(FEED_CHUNK_EVENTS * 512);
        let mut in_chunk = 0;
        for r in ledger.raw_events(from).take(limit as usize) {
            match r {
                Ok((_, bytes)) => {
                    chunk.extend_from_slice(&bytes);
                    chunk.push(b'\n');
                    in_chunk += 1;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
            if in_chunk == FEED_CHUNK_EVENTS {
                if tx.blocking_send(Ok(Bytes::from(std::mem::take(&mut chunk)))).is_err() {
                    return;
                }
                in_chunk = 0;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(Bytes::from(chunk)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// `POST /v1/accounts/{account}/erasure` (privacy role, body `{"confirm": true}`): destroys
/// the account's data key and appends `subject_erased`; `404` for an account without events, `410 account_erased` for one
/// already erased.
async fn erasure(
    State(s): State<Arc<AppState>>,
    account: Result<Path<String>, PathRejection>,
    req: Request,
) -> ApiResult<Response> {
    let (body, principal): (command::ErasureRequest, _) = command_body_as(&s, req, Role::Privacy).await?;
    let account = path(account)?;
    command::validate_account(&account)?;
    body.validate()?;
    Ok(command_response(s.ledger.erase(&account, &principal.name).await?))
}

/// `GET /v1/admin/keys` (privacy role): the key store, its generations, the data keys held.
async fn keys_status(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Privacy])?;
    let k = s.ledger.data_keys();
    Ok(Json(json!({
        "store": k.master().describe(),
        "current": k.master().current(),
        "generations": k.master().generations()?,
        "data_keys": k.len(),
    }))
    .into_response())
}

/// `POST /v1/admin/keys/rotate` (privacy role): a new master key generation, every data key
/// rewrapped under it, the older generations destroyed.
async fn rotate_keys(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Privacy])?;
    let r = s.ledger.rotate_keys().await?;
    tracing::info!(
        generation = r.generation,
        rewrapped = r.rewrapped,
        "the master key was rotated"
    );
    Ok(Json(r).into_response())
}

/// `POST /v1/admin/promote`: a replica becomes the primary (writer role).
async fn promote(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Writer])?;
    let Some(p) = &s.extras.promoter else {
        if s.ledger.is_primary() {
            return Ok(Json(json!({"promoted": false, "events": s.ledger.log_len(), "seconds": 0.0})).into_response());
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_replica",
            "this node cannot be promoted",
        ));
    };
    match p.promote().await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "promotion failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "promotion_failed",
                "the replica could not read the events topic to its end; see the server's log",
            ))
        }
    }
}

/// The node's health: `ok` or `failed` (failed storage, a failed replica), its role, its
/// replica's lag.
/// What a node is now: a primary takes commands; a replica follows the topic; a primary a
/// promotion fenced takes no commands and follows nothing until it restarts.
fn role(s: &AppState) -> &'static str {
    if s.ledger.is_primary() {
        "primary"
    } else if s.extras.replica.is_none() && s.ledger.replication().fenced_by().ok().flatten().is_some() {
        "fenced"
    } else {
        "replica"
    }
}

fn health(s: &AppState) -> (bool, serde_json::Value) {
    let events = s.ledger.log_len();
    let role = role(s);
    let epoch = s.ledger.replication().epoch().map_or(0, |(e, _)| e);
    let mut body = json!({"status": "ok", "events": events, "role": role, "epoch": epoch});
    let mut healthy = s.ledger.is_healthy();
    if let Some((status, primary)) = &s.extras.replica {
        let (lag_events, lag_seconds) = status.lag(events);
        body["replica"] = json!({
            "state": status.state(),
            "lag_events": lag_events,
            "lag_seconds": lag_seconds,
            "primary": primary,
            "last_error": status.last_error.lock().expect("replica status lock").clone(),
        });
        healthy &= status.state() != "failed";
    }
    if !healthy {
        body["status"] = json!("failed");
    }
    (healthy, body)
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    match health(&s) {
        (true, body) => Json(body).into_response(),
        (false, body) => (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(),
    }
}

/// `GET /readyz`: whether this node should be sent traffic now (a load balancer's readiness
/// probe; `/healthz` is liveness). A primary is ready while it is healthy and takes commands; a
/// replica once its follower is following the topic; nobody while the server shuts down, and
/// never a fenced primary.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let (healthy, _) = health(&s);
    let role = role(&s);
    let reason = if !healthy {
        Some("failed")
    } else if *s.closing.borrow() {
        Some("shutting_down")
    } else if role == "fenced" {
        Some("fenced")
    } else if let Some((status, _)) = s.extras.replica.as_ref().filter(|_| !s.ledger.is_primary()) {
        (status.state() != "following").then_some("catching_up")
    } else {
        None
    };
    let answer = json!({"ready": reason.is_none(), "role": role, "reason": reason});
    match reason {
        None => Json(answer).into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(answer)).into_response(),
    }
}

/// `GET /v1/status` (reader): everything `bindledger status` shows, as JSON: the health, every
/// relay, and the alert monitor (`null` when it is off).
async fn status(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    let (_, health) = health(&s);
    let monitor = s.extras.monitor.as_ref().map(|m| {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &m.status;
        let opened: serde_json::Map<String, serde_json::Value> = crate::domain::alerts::rules::RULE_NAMES
            .iter()
            .enumerate()
            .map(|(i, rule)| ((*rule).to_owned(), json!(st.opened[i].load(Relaxed))))
            .collect();
        json!({
            "position": st.position.load(Relaxed),
            "alert_stream_seq": st.stream_seq.load(Relaxed),
            "open_alerts": st.open_alerts.load(Relaxed),
            "opened": opened,
        })
    });
    let webhooks = s.extras.webhooks.as_ref().map(|(_, st, _)| st.report());
    let cluster =
        s.ledger.ownership().map().map(
            |(shard, map)| json!({"shard": shard, "map_version": map.version, "slots": map.slots_of(&shard).len()}),
        );
    Ok(Json(
        json!({"health": health, "relays": relays(&s), "monitor": monitor, "webhooks": webhooks, "cluster": cluster}),
    )
    .into_response())
}

/// `GET /v1/cluster/status` (reader, auditor or security): every shard's health, role, events,
/// epoch, relay lag and map version, asked by this node; `404` on a ledger alone.
async fn cluster_status(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    let principal = caller.require(&[Role::Reader, Role::Auditor, Role::Security])?;
    let v = super::route::cluster_status(&s, &principal)
        .await
        .ok_or(Error::NotFound("this ledger is not a shard of a cluster"))?;
    Ok(Json(v).into_response())
}

/// `GET /v1/cluster` (reader, auditor or security): this node's shard and the shard map it
/// follows; `404` on a ledger alone.
async fn cluster(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Reader, Role::Auditor, Role::Security])?;
    let (shard, map) = s
        .ledger
        .ownership()
        .map()
        .ok_or(Error::NotFound("this ledger is not a shard of a cluster"))?;
    Ok(Json(json!({"shard": shard, "map": *map})).into_response())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut r = super::metrics::render(&s).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::metrics::CONTENT_TYPE),
    );
    r
}

async fn relay_status(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    match &s.extras.relay {
        Some((topic, status)) => Ok(Json(Relay::report(&s.ledger, topic, status)).into_response()),
        None => Ok(Json(json!({"state": "disabled"})).into_response()),
    }
}

/// Every relay beside the ledger: the events, alerts, notifications and checkpoints topics.
fn relays(s: &AppState) -> serde_json::Value {
    let other = |r: &Option<(String, Arc<RelayStatus>)>| match r {
        None => json!({"state": "disabled"}),
        Some((topic, st)) => json!({
            "state": st.state(),
            "topic": topic,
            "position": st.position.load(std::sync::atomic::Ordering::Relaxed),
            "published_total": st.published_total.load(std::sync::atomic::Ordering::Relaxed),
            "last_error": *st.last_error.lock().expect("status lock"),
            "warning": *st.warning.lock().expect("status lock"),
        }),
    };
    let events = match &s.extras.relay {
        Some((topic, status)) => {
            serde_json::to_value(Relay::report(&s.ledger, topic, status)).expect("reports serialize")
        }
        None => json!({"state": "disabled"}),
    };
    json!({
        "events": events,
        "alerts": other(&s.extras.alerts_relay),
        "notifications": other(&s.extras.notifications_relay),
        "checkpoints": other(&s.extras.checkpoints_relay),
    })
}

async fn relays_status(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Reader])?;
    Ok(Json(relays(&s)).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see the README for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method; see the README for the API",
    )
}

/// Routes anyone may call, by method and path: the probes, the console's page and assets, who
/// is signed in, and the sign-in (whose body is the credential). Every other request, to a
/// route or to a path that is none, is authenticated from its headers by [`gate`] before
/// anything else happens to it.
pub const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/console"),
    ("GET", "/console/app.js"),
    ("GET", "/console/app.css"),
    ("GET", "/console/session"),
    ("POST", "/console/session"),
];

/// The probes answer whatever the load: a full ledger is not a failed one.
const PROBES: &[&str] = &["/healthz", "/readyz", "/metrics"];

fn is_public(method: &axum::http::Method, path: &str) -> bool {
    let method = if *method == axum::http::Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    PUBLIC.iter().any(|(m, p)| *m == method && *p == path)
}

/// The first thing every request meets. A request to a [`PUBLIC`] route takes a slot of its
/// own pool (`max(connections_max / 4, 4)`, the probes none), so that nobody without a
/// credential can hold a slot an authorised request needs. Any other request is authenticated
/// from its method and headers ([`authenticate`]: `401`, or `403 csrf`) before it waits for
/// anything or has its body read; only then does it take one of `http.connections_max` slots
/// (`503 overloaded` beyond). Logs one debug line per request with its route's pattern
/// (`/v1/accounts/{account}/payments`), never the path itself, which holds the caller's values.
async fn gate(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = route_pattern(&method, req.uri().path());
    let response = gate_inner(&s, req, next).await;
    s.requests
        .record(method.as_str(), route, response.status().as_u16(), started.elapsed());
    response
}

/// The route pattern a request is for (`/v1/accounts/{account}/payments`), never its path: a
/// path holds the caller's values, and a metric's labels must be a bounded set.
fn route_pattern(method: &axum::http::Method, path: &str) -> &'static str {
    let method = if *method == axum::http::Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    // Segment by segment, without collecting: this runs on every request.
    let matches = |pattern: &str| {
        let (mut want, mut got) = (pattern.split('/'), path.split('/'));
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if (w.starts_with('{') && !g.is_empty()) || w == g => {}
                _ => return false,
            }
        }
    };
    ROUTES
        .iter()
        .find(|(m, pattern)| *m == method && matches(pattern))
        .map_or("(no route)", |(_, pattern)| *pattern)
}

async fn gate_inner(s: &Arc<AppState>, mut req: Request, next: Next) -> Response {
    let pool = if is_public(req.method(), req.uri().path()) {
        (!PROBES.contains(&req.uri().path())).then_some(&s.public_in_flight)
    } else {
        match authenticate(
            s,
            req.method(),
            req.headers(),
            req.extensions().get::<crate::tls::PeerCert>(),
        ) {
            Ok(principal) => {
                req.extensions_mut().insert(Caller(principal));
            }
            Err(e) => return e.into_response(),
        }
        Some(&s.in_flight)
    };
    let _permit = match pool.map(|p| p.clone().try_acquire_owned()) {
        None => None,
        Some(Ok(permit)) => Some(permit),
        Some(Err(_)) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many requests in flight; retry shortly",
            )
            .into_response()
        }
    };
    let line = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        let route = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or("(no route)", |m| m.as_str())
            .to_owned();
        (req.method().clone(), route)
    });
    let response = next.run(req).await;
    if let Some((method, route)) = line {
        tracing::debug!(%method, %route, status = response.status().as_u16(), "request");
    }
    response
}

/// Commands a replica takes itself: its promotion, and a backtest (which reads the log only).
const REPLICA_POSTS: &[&str] = &["/v1/admin/promote", "/v1/rules/backtest"];

/// On a replica, a command (every authenticated `POST` but [`REPLICA_POSTS`]) is answered
/// `421 not_primary` with the primary's URL, before its body is read, whatever role it needs:
/// the primary decides the roles.
async fn replica_guard(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST
        && !s.ledger.is_primary()
        && req.extensions().get::<Caller>().is_some()
        && !REPLICA_POSTS.contains(&req.uri().path())
    {
        s.ledger.metrics().count_rejected("not_primary");
        let body = json!({"error": {"code": "not_primary", "message": NOT_PRIMARY, "field": null}, "primary": s.primary_url()});
        return (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response();
    }
    next.run(req).await
}

/// `?min_seq=N` on an authenticated read: waits until this node holds event N (a client reading
/// its own write on a replica), then serves the read without the parameter. A request the gate
/// did not authenticate never waits.
async fn wait_for_min_seq(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Some(query) = req.uri().query() else {
        return next.run(req).await;
    };
    if req.method() != axum::http::Method::GET
        || req.extensions().get::<Caller>().is_none()
        || !query.split('&').any(|p| p.starts_with("min_seq="))
    {
        return next.run(req).await;
    }
    let mut min_seq = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| match p.strip_prefix("min_seq=") {
            Some(v) => {
                min_seq = Some(v.parse::<u64>().ok());
                false
            }
            None => true,
        })
        .collect();
    let Some(Some(seq)) = min_seq else {
        return ApiError::from(Error::invalid(
            "invalid_request",
            "min_seq",
            "min_seq must be an event seq (a positive integer)",
        ))
        .into_response();
    };
    if !s
        .ledger
        .wait_for_seq(seq, std::time::Duration::from_millis(s.http.min_seq_wait_ms))
        .await
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            "this node has not reached the requested min_seq in time; retry, or read from the primary",
        )
        .into_response();
    }
    let path = req.uri().path().to_owned();
    let uri = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    if let Ok(uri) = uri.parse() {
        *req.uri_mut() = uri;
    }
    next.run(req).await
}

/// Declares the routes once: [`ROUTES`] (every method and path pattern, for what must hold of
/// each, such as the gate's tests) and the router's table are made from the same list.
macro_rules! routes {
    ($($path:literal => $first:ident($h:expr) $(.$m:ident($hm:expr))*;)*) => {
        /// Every route of the API: method and path pattern.
        pub const ROUTES: &[(&str, &str)] = &[$(
            (routes!(@method $first), $path), $((routes!(@method $m), $path),)*
        )*];

        fn table(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
            r$(.route($path, $first($h)$(.$m($hm))*))*
        }
    };
    (@method get) => { "GET" };
    (@method post) => { "POST" };
    (@method delete) => { "DELETE" };
}

routes! {
    "/v1/accounts/{account}/bindings" => post(bind).get(bindings);
    "/v1/accounts/{account}/bindings/{binding_id}/unbind" => post(unbind);
    "/v1/accounts/{account}/payments" => post(pay).get(payments);
    "/v1/accounts/{account}/events" => get(history);
    "/v1/accounts/{account}/related" => get(related);
    "/v1/wallets/{fingerprint}/accounts" => get(wallet_accounts);
    "/v1/events" => get(feed);
    "/v1/relay" => get(relay_status);
    "/v1/relays" => get(relays_status);
    "/v1/status" => get(status);
    "/v1/accounts/{account}/bindings/{binding_id}/unlock" => post(unlock);
    "/v1/accounts/{account}/bindings/{binding_id}/lock" => post(lock);
    "/v1/checkpoints" => get(checkpoints);
    "/v1/checkpoints/key" => get(checkpoint_key);
    "/v1/alerts" => get(alerts_list);
    "/v1/alerts/stream" => get(alerts_stream);
    "/v1/alerts/export" => get(alerts_export);
    "/v1/alerts/counts" => get(alerts_counts);
    "/v1/alerts/{alert_id}" => get(alert_one);
    "/v1/alerts/{alert_id}/triage" => post(triage);
    "/v1/alerts/{alert_id}/history" => get(alert_history);
    "/v1/rules" => get(rules);
    "/v1/webhooks/deliveries" => get(webhook_deliveries);
    "/v1/webhooks/deliveries/{stream_seq}/resend" => post(webhook_resend);
    "/v1/webhooks/test" => post(webhook_test);
    "/v1/rules/backtest" => post(backtest);
    "/v1/admin/promote" => post(promote);
    "/v1/accounts/{account}/erasure" => post(erasure);
    "/v1/admin/keys" => get(keys_status);
    "/v1/admin/keys/rotate" => post(rotate_keys);
    "/v1/cluster" => get(cluster);
    "/v1/cluster/status" => get(cluster_status);
    "/console" => get(super::console::page);
    "/console/app.js" => get(super::console::script);
    "/console/app.css" => get(super::console::style);
    "/console/session" => get(super::console::current).post(super::console::sign_in).delete(super::console::sign_out);
    "/healthz" => get(healthz);
    "/readyz" => get(readyz);
    "/metrics" => get(metrics);
}

/// The API's router: every route of [`ROUTES`], behind the gate.
pub fn router(state: Arc<AppState>) -> Router {
    router_with(state, Router::new())
}

/// The router with the benchmark's baseline route besides (`POST
/// /v1/bench/accounts/{account}/payments`, see [`serve_with_the_baseline`]): never served by
/// `bindledger serve`.
fn router_with_the_baseline(state: Arc<AppState>) -> Router {
    router_with(
        state,
        Router::new().route("/v1/bench/accounts/{account}/payments", post(pay_baseline)),
    )
}

fn router_with(state: Arc<AppState>, routes: Router<Arc<AppState>>) -> Router {
    table(routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), wait_for_min_seq))
        .layer(middleware::from_fn_with_state(state.clone(), replica_guard))
        .layer(middleware::from_fn_with_state(state.clone(), super::route::to_owner))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .layer(DefaultBodyLimit::max(state.http.body_limit_bytes))
        .with_state(state)
}

/// Open connections per peer address (see `http.connections_per_peer_max`).
#[derive(Default)]
struct Peers {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`Peers`], given back when the connection ends.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: std::net::IpAddr,
}

impl Peers {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.open.lock().expect("peers lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().expect("peers lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves until `shutdown` completes, then lets the connections finish what they are doing
/// (idle ones close at once) and returns once all are closed.
///
/// Each connection is HTTP/1.1 with a header read timeout (`http.header_timeout_ms`): a
/// client that opens a socket and sends nothing, or sends its headers a byte at a time, is
/// disconnected when it runs out, and so is a keep-alive connection left idle for as long.
/// Bodies are read by the handlers, after the token was checked, within
/// `http.body_timeout_ms`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    serve_app(listener, state, app, shutdown).await
}

/// [`serve`], with the benchmark's baseline route besides the API's (`bindledger bench`
/// measures the server up to a command against it).
pub async fn serve_with_the_baseline(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router_with_the_baseline(state.clone());
    serve_app(listener, state, app, shutdown).await
}

/// Serves one connection until it ends, or gracefully once the server closes.
async fn run_connection<I>(
    io: I,
    app: Router,
    header_timeout: std::time::Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use hyper_util::rt::TokioTimer;
    use hyper_util::service::TowerToHyperService;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(error = %e, "connection ended");
                }
                return;
            }
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn serve_app(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    let closing = state.closing.clone();
    let tls = crate::tls::Tls::load(&state.http.tls).map_err(|e| std::io::Error::other(crate::error::chain(&e)))?;
    if let Some(t) = &tls {
        t.clone().watch(closing.subscribe());
    }
    let peers: Arc<Peers> = Default::default();
    let per_peer = state.http.connections_per_peer_max;
    let header_timeout = state.http.header_timeout();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(slot) = peers.enter(peer.ip(), per_peer) else {
            tracing::debug!("connection refused: too many open connections from one peer address");
            drop(tcp);
            continue;
        };
        // Small writes (an SSE event, a short answer) go out at once: with Nagle's algorithm
        // and the peer's delayed ACK they could wait 40 ms.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let closing = closing.subscribe();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        connections.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => run_connection(TokioIo::new(tcp), app, header_timeout, closing).await,
                Some(acceptor) => {
                    // The handshake is bounded like a request's headers.
                    let stream = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let app = match crate::tls::peer_cert(stream.get_ref().1) {
                        Some(cert) => app.layer(axum::Extension(cert)),
                        None => app,
                    };
                    run_connection(TokioIo::new(stream), app, header_timeout, closing).await
                }
            }
        });
    }
    // Live feeds end, so that connections streaming them can close.
    closing.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
