//! Security regressions (issue 13), each against the real HTTP server: no submitted value in
//! an answer or a log line, no denial of service by idle or trickling sockets, the error shape
//! on every refusal, the `Bearer` scheme in any case, dot-segment account ids, colour and JSON
//! logs, and brute-force protection that holds under concurrency, after an unlock, and against
//! a caller's backdated `event_time`.

mod common;

use bindledger::adapters::http::client::Client;
use bindledger::adapters::provider::Scenario;
use bindledger_events::{decode, Event, Payload};
use common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A value that looks like a secret, and a number that does.
const SECRET: &str = "hunter2 Q9z7\u{7}";
const SECRET_TEXT: &str = "hunter2";
const SECRET_NUMBER: u64 = 98_765_431;

/// The wrong-typed (or invalid) values each field is sent with.
fn hostile_values() -> Vec<Value> {
    vec![
        json!(SECRET),
        json!(SECRET_NUMBER),
        json!({"x": SECRET}),
        json!([SECRET, SECRET_NUMBER]),
        json!(true),
        json!(-(SECRET_NUMBER as i64)),
        json!(1.5e300),
    ]
}

/// Sets a (possibly nested, `a.b`) field of a JSON object.
fn with_field(base: &Value, field: &str, v: Value) -> Value {
    let mut out = base.clone();
    match field.split_once('.') {
        Some((outer, inner)) => {
            if !out[outer].is_object() {
                out[outer] = json!({});
            }
            out[outer][inner] = v;
        }
        None => out[field] = v,
    }
    out
}

fn contains_secret(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.contains(SECRET_TEXT) || text.contains(&SECRET_NUMBER.to_string())
}

/// Regression: submitted values came back in error messages (`invalid type: string
/// "809966"`, `unknown currency "187198"`) and in the `request refused` log line. Every
/// field of every command body, in every wrong type, and as an unknown field's name: no
/// answer and no log line at trace level carries the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_submitted_value_is_echoed_in_an_answer_or_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = spawn_server(&dir.path().join("data"), &log, &[("RUST_LOG", "trace")]);
    let mut c = Client::new(server.addr, Some(ALL.into()));
    let g =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::config::Config::default().gateway.simulated);
    let (_, bound) = c
        .post_json("/v1/accounts/alice/bindings", &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": g.password_for(&alipay(), &phone(1))}))
        .await
        .unwrap();
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    let common_fields = [
        "idempotency_key",
        "expected_version",
        "correlation_id",
        "event_time",
        "context",
        "context.channel",
        "context.device_id",
        "context.ip",
        "context.user_agent",
    ];
    let commands: Vec<(String, Value, Vec<&str>)> = vec![
        (
            "/v1/accounts/alice/bindings".into(),
            json!({"provider": "alipay", "wallet_account": phone(2), "payment_password": "123456"}),
            vec![
                "provider",
                "wallet_account",
                "payment_password",
                "factor",
                "factor.kind",
                "factor.code",
            ],
        ),
        (
            "/v1/accounts/alice/payments".into(),
            json!({"binding_id": binding, "order_id": "o-1", "amount_minor": 100, "payment_password": "123456"}),
            vec![
                "binding_id",
                "order_id",
                "amount_minor",
                "currency",
                "payment_password",
                "factor",
                "factor.kind",
                "factor.code",
            ],
        ),
        (
            format!("/v1/accounts/alice/bindings/{binding}/unbind"),
            json!({"confirm": true}),
            vec!["confirm"],
        ),
        (
            format!("/v1/accounts/alice/bindings/{binding}/unlock"),
            json!({"confirm": true}),
            vec!["confirm"],
        ),
    ];
    let mut sent = 0;
    for (path, base, fields) in &commands {
        for field in fields.iter().chain(common_fields.iter()) {
            for v in hostile_values() {
                let body = with_field(base, field, v);
                let (status, answer) = c
                    .send(hyper::Method::POST, path, Some(serde_json::to_vec(&body).unwrap()))
                    .await
                    .unwrap();
                sent += 1;
                // A recorded command's answer is its event, which holds what it recorded (an
                // amount, an idempotency key); secrets are never recorded, so never answered.
                let secret_field = matches!(*field, "payment_password" | "wallet_account" | "factor" | "factor.code");
                if !status.is_success() || secret_field {
                    assert!(
                        !contains_secret(&answer),
                        "{path} {field}: {status} {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
                if status.is_client_error() {
                    let e: Value = serde_json::from_slice(&answer).unwrap();
                    assert!(
                        e["error"]["code"].is_string() && e["error"]["message"].is_string(),
                        "{e}"
                    );
                }
            }
        }
        // An unknown field whose name is the secret, and bodies that are not JSON objects.
        let mut unknown = base.clone();
        unknown[SECRET] = json!(1);
        for body in [
            serde_json::to_vec(&unknown).unwrap(),
            format!("{{\"{SECRET_TEXT}\"").into_bytes(),
            format!("[\"{SECRET_TEXT}\"]").into_bytes(),
        ] {
            let (status, answer) = c.send(hyper::Method::POST, path, Some(body)).await.unwrap();
            assert_eq!(status.as_u16(), 400);
            assert!(!contains_secret(&answer), "{}", String::from_utf8_lossy(&answer));
            sent += 1;
        }
    }
    // Path and query values, and an alert id, are not repeated either.
    for path in [
        format!("/v1/alerts/{SECRET_TEXT}-{SECRET_NUMBER}"),
        format!("/v1/alerts?severity={SECRET_TEXT}"),
        format!("/v1/alerts?{SECRET_TEXT}=1"),
        format!("/v1/accounts/alice/payments?limit={SECRET_TEXT}"),
        format!("/v1/wallets/{SECRET_TEXT}/accounts"),
    ] {
        let (status, answer) = c.send(hyper::Method::GET, &path, None).await.unwrap();
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(
            !contains_secret(&answer),
            "{path}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // The idempotency key of a different request is not named in the 422.
    let pay = json!({"binding_id": binding, "order_id": "o-k", "amount_minor": 100, "payment_password": "123456", "idempotency_key": format!("{SECRET_TEXT}-key")});
    c.post_json("/v1/accounts/alice/payments", &pay).await.unwrap();
    let (status, answer) = c
        .post_json(
            "/v1/accounts/alice/payments",
            &with_field(&pay, "amount_minor", json!(101)),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 422);
    assert!(!answer.to_string().contains(SECRET_TEXT), "{answer}");
    assert!(sent > 300, "{sent} hostile bodies sent");
    drop(server);
    let text = std::fs::read(&log).unwrap();
    let lines = String::from_utf8_lossy(&text).lines().count();
    assert!(lines > 100, "trace logging was on ({lines} lines)");
    let leaked: Vec<&str> = std::str::from_utf8(&text)
        .unwrap()
        .lines()
        .filter(|l| contains_secret(l.as_bytes()))
        .collect();
    assert!(
        leaked.is_empty(),
        "log lines carry a submitted value: {:?}",
        &leaked[..leaked.len().min(5)]
    );
    assert!(!text.contains(&0x1b), "no colour codes in a log written to a file");
}

/// Regression: `request refused` and every other line were coloured in a file; there was
/// no JSON format for log collectors.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = spawn_server(
        &dir.path().join("data"),
        &log,
        &[("BINDLEDGER_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::new(server.addr, Some(ALL.into()));
        c.post_json("/v1/accounts/a/payments", &json!({"amount_minor": "x"}))
            .await
            .unwrap();
    });
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 3, "{text}");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
    assert!(text.contains("request refused"), "{text}");
    assert!(!text.contains('\u{1b}'));
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Regressions: `405` had an empty body; `bearer` in lower case was refused; an account id
/// of `..` or `.` was accepted (no ordinary client can address it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_the_error_shape_the_scheme_is_case_insensitive_and_dot_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (status, body) = raw(server.addr, &format!("DELETE /v1/accounts/a/bindings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALL}\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );
    assert!(body["error"]["message"].is_string());
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let (status, body) = raw(server.addr, &format!("GET /v1/accounts/a/bindings HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {READER}\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, body) = raw(
        server.addr,
        "GET /v1/accounts/a/bindings HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
    for id in ["%2E%2E", "%2e", ".", ".."] {
        for (method, path) in [
            ("GET", format!("/v1/accounts/{id}/bindings")),
            ("POST", format!("/v1/accounts/{id}/bindings")),
        ] {
            let body =
                json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": "123456"}).to_string();
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALL}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let (status, answer) = raw(server.addr, &req).await;
            // Raw dots are dot segments: the router sees another path (404); encoded ones
            // reach the account check.
            assert!(matches!(status, 400 | 404), "{method} {path}: {status} {answer}");
            assert!(answer["error"]["code"].is_string(), "{answer}");
            if status == 400 {
                assert_eq!(
                    (answer["error"]["code"].as_str(), answer["error"]["field"].as_str()),
                    (Some("invalid_account"), Some("account"))
                );
            }
        }
    }
    // A field the schema types is named when its type is wrong.
    let mut c = server.client(ALL);
    let (status, body) = c
        .post_json(
            "/v1/accounts/a/payments",
            &json!({"binding_id": "x", "order_id": "o", "amount_minor": "100", "payment_password": "1"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            status.as_u16(),
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (400, Some("invalid_request"), Some("amount_minor"))
    );
    let (_, body) = c.post_json("/v1/accounts/a/payments", &json!({"binding_id": "x", "order_id": "o", "amount_minor": 1, "payment_password": "1", "factor": {"kind": 7, "code": "1"}})).await.unwrap();
    assert_eq!(body["error"]["field"], "factor.kind");
    assert_eq!(server.ledger.log_len(), 0, "nothing was recorded");
    server.shutdown().await;
}

/// Regression: a request with `Content-Length: 100` that sent one byte kept its slot
/// forever, the body being read before the token was checked and with no timeout; about
/// 4,100 such sockets made every request, `/healthz` too, answer `503`. Here: more idle and
/// trickling sockets than the limit, and an authorised command and `/healthz` still answer
/// at once; the idle sockets are closed after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_sockets_cannot_starve_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.connections_max = 16;
    config.http.header_timeout_ms = 1500;
    config.http.body_timeout_ms = 1500;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Trickling: headers without a token, a body announced and never finished.
    let mut trickling = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/accounts/a/payments HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        trickling.push(s);
    }
    // Trickling headers: never finished.
    let mut slow_headers = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/accounts/a/payments HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow_headers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The ledger still serves: a command and the probes, promptly.
    let started = Instant::now();
    let mut c = server.client(ALL);
    let (status, body) = c.post_json("/v1/accounts/alice/bindings", &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": server.gateway.password_for(&alipay(), &phone(1))})).await.unwrap();
    assert_eq!(status.as_u16(), 201, "{body}");
    let (status, _) = Client::new(addr, None)
        .send(hyper::Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    let (status, _) = Client::new(addr, None)
        .send(hyper::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    // The unauthenticated tricklers were answered 401 from their headers alone.
    for s in trickling.iter_mut() {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // Idle sockets and unfinished headers are closed once the header timeout runs out.
    for s in idle.iter_mut().chain(slow_headers.iter_mut()) {
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the server");
        // EOF, a reset, or an error answer before the close.
        if let Ok(n) = r {
            if n > 0 {
                assert!(
                    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 4"),
                    "{}",
                    String::from_utf8_lossy(&buf[..n])
                );
            }
        }
    }
    // An authorised caller whose body stalls gets 408, and its slot is freed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("POST /v1/accounts/a/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALL}\r\nContent-Length: 100\r\n\r\n{{").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a timeout answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"),
        "{answer}"
    );
    server.shutdown().await;
}

/// The per-peer bound: beyond it, a peer's new connections are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_peer_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.connections_per_peer_max = 8;
    let server = TestServer::start(config).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = Client::new(server.addr, None)
        .send(hyper::Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "served again once the others closed");
    server.shutdown().await;
}

fn events_of(l: &bindledger::Ledger) -> Vec<Event> {
    l.raw_events(1).map(|r| decode(&r.unwrap().1).unwrap()).collect()
}

async fn wait_for_event(l: &bindledger::Ledger, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = events_of(l).into_iter().find(|e| f(e)) {
            return e;
        }
        assert!(Instant::now() < deadline, "no {what} within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` wrong-password payments at once, each on its own connection; returns the
/// answers' failure codes (or error codes).
async fn guess_concurrently(
    addr: std::net::SocketAddr,
    account: &str,
    binding: &str,
    n: usize,
    event_time: Option<String>,
) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (account, binding, event_time) = (account.to_owned(), binding.to_owned(), event_time.clone());
            tokio::spawn(async move {
                let mut c = Client::new(addr, Some(ALL.into()));
                let mut body = json!({"binding_id": binding, "order_id": format!("o-{i}"), "amount_minor": 100, "payment_password": "000000"});
                if let Some(t) = event_time {
                    body["event_time"] = json!(t);
                }
                let (_, v) = c.post_json(&format!("/v1/accounts/{account}/payments"), &body).await.unwrap();
                v["failure_code"].as_str().or(v["error"]["code"].as_str()).unwrap_or("?").to_owned()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes
}

fn count(codes: &[String], code: &str) -> usize {
    codes.iter().filter(|c| *c == code).count()
}

/// Regression: with a threshold of 5, 40 concurrent wrong-password payments all reached the
/// provider, and after a manual unlock 20 more did. Now at most `threshold` reach it within
/// the window, whatever the concurrency; the rest fail as `too_many_attempts` (or
/// `binding_locked` once the lock is in). After an unlock: a fresh budget, and the binding is
/// locked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_reaching_the_provider_are_bounded_under_concurrency_and_after_an_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Each provider call takes a while, so the guesses are truly in flight together.
    config.gateway.simulated = Scenario {
        latency_ms: 30,
        ..Scenario::quiet(11)
    };
    let server = TestServer::start(config).await;
    let (l, g) = (server.ledger.clone(), server.gateway.clone());
    let binding = bind_wallet(&l, &g, "victim", 1).await.to_string();
    let before = g.payment_calls();
    let codes = guess_concurrently(server.addr, "victim", &binding, 200, None).await;
    let reached = g.payment_calls() - before;
    assert!(reached <= 5, "{reached} guesses reached the provider");
    assert_eq!(count(&codes, "wrong_password") as u64, reached, "{codes:?}");
    assert_eq!(
        count(&codes, "wrong_password") + count(&codes, "too_many_attempts") + count(&codes, "binding_locked"),
        200,
        "{codes:?}"
    );
    // The alert and its lock follow, as before.
    let locked = wait_for_event(&l, "lock", |e| {
        e.account == "victim" && matches!(e.payload, Payload::BindingLocked { .. })
    })
    .await;
    let Payload::BindingLocked { alert_id, .. } = &locked.payload else {
        unreachable!()
    };
    // A manual unlock, then twenty more guesses: a fresh budget of five, and a second lock.
    let mut c = server.client(SECURITY);
    let (status, body) = c
        .post_json(
            &format!("/v1/accounts/victim/bindings/{binding}/unlock"),
            &json!({"confirm": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), body["event_type"].as_str()),
        (201, Some("binding_unlocked")),
        "{body}"
    );
    let before = g.payment_calls();
    let codes = guess_concurrently(server.addr, "victim", &binding, 20, None).await;
    let reached = g.payment_calls() - before;
    assert!(
        (1..=5).contains(&reached),
        "{reached} guesses after the unlock reached the provider: {codes:?}"
    );
    let relocked = wait_for_event(&l, "second lock", |e| {
        e.seq > locked.seq && matches!(e.payload, Payload::BindingLocked { .. })
    })
    .await;
    let Payload::BindingLocked { alert_id: again, .. } = &relocked.payload else {
        unreachable!()
    };
    assert_eq!(again, alert_id, "the same alert locks again");
    assert!(
        relocked
            .idempotency_key
            .as_deref()
            .unwrap()
            .starts_with(&format!("lock:{alert_id}#")),
        "{:?}",
        relocked.idempotency_key
    );
    server.shutdown().await;
}

/// The guard's refusal is a recorded event with the documented reason and the end of the
/// refusal. The monitor is off here, so no lock can land between the fifth wrong password and
/// the sixth guess (with the monitor on, a fast lock answers every later guess
/// `binding_locked`, which is also correct but proves nothing about the guard's event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_refusal_is_a_recorded_event_with_its_reason_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.alerts.enabled = false;
    let server = TestServer::start(config).await;
    let (l, g) = (server.ledger.clone(), server.gateway.clone());
    let binding = bind_wallet(&l, &g, "victim", 1).await.to_string();
    let before = g.payment_calls();
    let mut c = server.client(ALL);
    let mut codes = Vec::new();
    for i in 0..7 {
        let body = json!({"binding_id": binding, "order_id": format!("g-{i}"), "amount_minor": 100, "payment_password": "000000"});
        let (_, v) = c.post_json("/v1/accounts/victim/payments", &body).await.unwrap();
        codes.push(v["failure_code"].as_str().unwrap_or("?").to_owned());
    }
    assert_eq!(g.payment_calls() - before, 5, "{codes:?}");
    assert_eq!(codes[..5], ["wrong_password"; 5], "{codes:?}");
    assert_eq!(codes[5..], ["too_many_attempts"; 2], "{codes:?}");
    let refused: Vec<Event> = events_of(&l)
        .into_iter()
        .filter(|e| {
            matches!(
                &e.payload,
                Payload::PaymentFailed {
                    reason: bindledger_events::PaymentFailure::TooManyAttempts { .. },
                    ..
                }
            )
        })
        .collect();
    assert_eq!(refused.len(), 2);
    for e in refused {
        let Payload::PaymentFailed {
            reason: bindledger_events::PaymentFailure::TooManyAttempts { until },
            ..
        } = e.payload
        else {
            unreachable!()
        };
        assert!(until > e.record_time && until <= e.record_time + chrono::Duration::minutes(10));
    }
    server.shutdown().await;
}

/// Regression: twelve wrong passwords sent within a second but dated 11 minutes apart going
/// back four hours raised no alert; six dated two hours ago were locked and at once released
/// as expired. Windows and lock expiry run on the ledger's `record_time`; and `event_time`
/// may be at most `event_time_past_max_s` in the past (300 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backdated_event_time_neither_hides_guesses_nor_ends_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let default = TestServer::start(test_config(&dir.path().join("default"))).await;
    let b = bind_wallet(&default.ledger, &default.gateway, "bob", 2).await;
    let old = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let (status, body) = default
        .client(ALL)
        .post_json(
            "/v1/accounts/bob/payments",
            &json!({"binding_id": b, "order_id": "o", "amount_minor": 1, "payment_password": "1", "event_time": old}),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            status.as_u16(),
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (400, Some("invalid_event_time"), Some("event_time"))
    );
    default.shutdown().await;

    let mut config = test_config(&dir.path().join("lenient"));
    config.event_time_past_max_s = 86_400;
    let server = TestServer::start(config).await;
    let (l, g) = (server.ledger.clone(), server.gateway.clone());
    let binding = bind_wallet(&l, &g, "mallory", 1).await.to_string();
    let mut c = server.client(ALL);
    let now = chrono::Utc::now();
    for i in 0..12i64 {
        let t = (now - chrono::Duration::minutes(11 * (12 - i))).to_rfc3339();
        c.post_json("/v1/accounts/mallory/payments", &json!({"binding_id": binding, "order_id": format!("o-{i}"), "amount_minor": 1, "payment_password": "000000", "event_time": t}))
            .await
            .unwrap();
    }
    let locked = wait_for_event(&l, "lock", |e| matches!(e.payload, Payload::BindingLocked { .. })).await;
    let Payload::BindingLocked { until, .. } = locked.payload else {
        unreachable!()
    };
    assert!(
        until > chrono::Utc::now() + chrono::Duration::minutes(25),
        "the lock runs from the ledger's time: {until}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !events_of(&l)
            .iter()
            .any(|e| matches!(e.payload, Payload::BindingUnlocked { .. })),
        "the lock was not released as expired"
    );
    let right = g.password_for(&alipay(), &phone(1));
    let (_, v) = c
        .post_json(
            "/v1/accounts/mallory/payments",
            &json!({"binding_id": binding, "order_id": "o-x", "amount_minor": 1, "payment_password": right}),
        )
        .await
        .unwrap();
    assert_eq!(v["failure_code"], "binding_locked", "{v}");
    let alerts: Arc<Vec<Value>> = Arc::new(
        server
            .client(SECURITY)
            .get_json("/v1/alerts?rule=password_brute_force")
            .await
            .unwrap()
            .1["alerts"]
            .as_array()
            .unwrap()
            .clone(),
    );
    assert_eq!(alerts.len(), 1);
    server.shutdown().await;
}

/// A path that matches `pattern`, its parameters filled in.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{account}", "acct")
        .replace("{binding_id}", "00000000-0000-0000-0000-000000000001")
        .replace("{alert_id}", "password_brute_force-1")
        .replace("{fingerprint}", &"ab".repeat(32))
}

/// Reads what the server sends on `s` within `within`: the answer's first line, or `None`
/// when it sent nothing in time.
async fn first_line(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(n)) => Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        Ok(Err(e)) => Some(format!("error: {e}")),
    }
}

/// Regressions (issue 25, items 1 and 2): the console's sign-in read its body without the body
/// timeout, so 12 sockets sending `{` of a 100-byte body held every slot at
/// `connections_max = 8` and every authorised request answered `503` for as long as they
/// stayed open; and `?min_seq=` made an unauthenticated request wait 5 s (then `503
/// not_caught_up`, never `401`), even on a route that does not exist. Now, on every route of
/// the router ([`server::ROUTES`], so a route added later is probed too) and on a path that is
/// none: an unauthenticated request with a slow body, or with `min_seq`, is answered `401` at
/// once from its headers; the public routes hold no slot an authorised request needs, and a
/// slow sign-in is cut off by the body timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unauthenticated_request_waits_or_holds_a_slot_on_any_route() {
    use bindledger::adapters::http::{PUBLIC, ROUTES};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.connections_max = 8;
    config.http.body_timeout_ms = 1500;
    config.http.min_seq_wait_ms = 5000;
    config.http.connections_per_peer_max = 4096;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let mut routes: Vec<(&str, String)> = ROUTES.iter().map(|(m, p)| (*m, concrete(p))).collect();
    routes.push(("GET", "/no/such/route".into()));
    routes.push(("POST", "/no/such/route".into()));
    let public = |m: &str, p: &str| PUBLIC.iter().any(|(pm, pp)| *pm == m && *pp == p);
    assert!(routes.len() > 25, "the table lists the routes: {routes:?}");
    // Slow bodies: 12 sockets per route, each with the headers and `{` of a 100-byte body.
    let mut held = Vec::new();
    for (method, path) in &routes {
        for _ in 0..12 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{")
                    .as_bytes(),
            )
            .await
            .unwrap();
            held.push((method.to_string(), path.clone(), s));
        }
    }
    // Every authenticated route answers 401 at once, from the headers alone.
    for (method, path, s) in held.iter_mut() {
        if public(method, path) {
            continue;
        }
        let line = first_line(s, Duration::from_secs(2)).await;
        assert!(
            line.as_deref().is_some_and(|l| l.starts_with("HTTP/1.1 401")),
            "{method} {path}: {line:?}"
        );
    }
    // While the slow sign-ins are open, an authorised read and command are served.
    let mut c = server.client(ALL);
    let (status, v) = c.get_json("/v1/status").await.unwrap();
    assert_eq!(status.as_u16(), 200, "{v}");
    let (status, v) = c
        .post_json(
            "/v1/accounts/acct/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": "000000"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    // The slow public requests are cut off by the body timeout (408) or closed.
    for (method, path, s) in held.iter_mut() {
        if !public(method, path) || method == "GET" {
            continue;
        }
        let line = first_line(s, Duration::from_secs(4)).await;
        assert!(
            // 408 once its body timed out, or 503 at once when the public pool was full.
            line.as_deref().is_some_and(|l| l.starts_with("HTTP/1.1 408")
                || l.starts_with("HTTP/1.1 503")
                || l.is_empty()
                || l.starts_with("error")),
            "{method} {path} still open: {line:?}"
        );
    }
    drop(held);
    // `min_seq` far ahead: no unauthenticated request waits for it, on any route.
    for (method, path) in &routes {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("{method} {path}?min_seq=999999 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let line = first_line(&mut s, Duration::from_secs(2)).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{method} {path} waited");
        let line = line.unwrap_or_default();
        if public(method, path) {
            assert!(!line.contains("503"), "{method} {path}: {line}");
        } else {
            assert!(line.starts_with("HTTP/1.1 401"), "{method} {path}: {line}");
        }
    }
    server.shutdown().await;
}

/// Signs in to the console with `token`: the session cookie and the CSRF token.
async fn sign_in(addr: std::net::SocketAddr, token: &str) -> (String, String) {
    let body = json!({ "token": token }).to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /console/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let cookie = text
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let v: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    (cookie, v["csrf"].as_str().unwrap().to_owned())
}

/// Regression (issue 25, item 4): the CSRF check was skipped whenever any `Authorization`
/// header was present, but a header that was not a valid bearer token then fell back to the
/// cookie: with a session's cookie and `Authorization: Basic …` (or `Negotiate …`, or an
/// empty `Bearer `), a triage without the CSRF token was recorded as the session's operator.
/// A request is authenticated by exactly one credential, and one with a cookie always needs
/// the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_authenticated_by_one_credential_and_a_cookie_always_needs_the_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (cookie, csrf) = sign_in(server.addr, SECURITY).await;
    let body = r#"{"action":"acknowledged"}"#;
    let post = |extra: &str| {
        format!(
            "POST /v1/alerts/password_brute_force-1/triage HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for header in [
        "Authorization: Basic dXNlcjpwYXNz\r\n",
        "Authorization: Negotiate YIIB\r\n",
        "Authorization: Bearer \r\n",
        "Authorization: Bearer not-a-token\r\n",
        "Authorization: \r\n",
    ] {
        let (status, v) = raw(server.addr, &post(header)).await;
        assert_eq!(status, 401, "{header:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthenticated", "{header:?}");
    }
    let (status, v) = raw(server.addr, &post("")).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("csrf")), "{v}");
    // With its token, the cookie's request goes through (to a 404: no such alert).
    let (status, v) = raw(server.addr, &post(&format!("X-CSRF-Token: {csrf}\r\n"))).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("alert_not_found")),
        "{v}"
    );
    // A valid bearer token needs no CSRF token, cookie or not.
    let (status, v) = raw(server.addr, &post(&format!("Authorization: Bearer {SECURITY}\r\n"))).await;
    assert_eq!(status, 404, "{v}");
    // Signing out is a change: it needs the CSRF token too.
    let out = format!("DELETE /console/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\nContent-Length: 0\r\n\r\n");
    let (status, _) = raw(server.addr, &out).await;
    assert_eq!(status, 403);
    assert_eq!(server.ledger.log_len(), 0, "nothing was recorded");
    server.shutdown().await;
}

/// Regression (issue 25, item 5): 10,001 sign-ins with the reader token evicted the security
/// team's session (sessions were capped at 10,000 with least-recently-used eviction). Sessions
/// are bounded per token, and a sign-in never ends another token's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_can_sign_out_another_tokens_sessions() {
    use bindledger::adapters::http::SESSIONS_PER_TOKEN;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (security, _) = sign_in(server.addr, SECURITY).await;
    let (first_reader, _) = sign_in(server.addr, READER).await;
    for _ in 0..SESSIONS_PER_TOKEN + 20 {
        sign_in(server.addr, READER).await;
    }
    let current = |cookie: &str| {
        format!("GET /console/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n")
    };
    let (status, v) = raw(server.addr, &current(&security)).await;
    assert_eq!(status, 200, "the security team's session survives: {v}");
    assert_eq!(
        v["name"],
        bindledger::config::TokenConfig {
            token: SECURITY.into(),
            roles: vec![],
            name: None,
            client_cert_sha256: None,
        }
        .display_name()
    );
    let (status, _) = raw(server.addr, &current(&first_reader)).await;
    assert_eq!(status, 401, "the reader's oldest session made room for its newest");
    server.shutdown().await;
}

/// Regression (issue 25, item 3): binding was an unthrottled password oracle: 120 concurrent
/// binds of one wallet with wrong passwords, from 120 accounts, were all checked by the
/// provider, with one medium alert in all. Now at most the threshold of wrong passwords reach
/// the provider per wallet within the window, from all accounts together and under any
/// concurrency; the rest fail as `too_many_attempts` without reaching it; and the
/// `password_stuffing` rule raises a wallet alert naming the accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_of_one_wallet_are_not_a_password_oracle_across_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.gateway.simulated = Scenario {
        latency_ms: 30,
        ..Scenario::quiet(11)
    };
    let server = TestServer::start(config).await;
    let (l, g) = (server.ledger.clone(), server.gateway.clone());
    let bind_calls = || g.calls_made() - g.payment_calls();
    let before = bind_calls();
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                let mut c = Client::new(addr, Some(ALL.into()));
                let body = json!({"provider": "alipay", "wallet_account": phone(7), "payment_password": "000000"});
                let (_, v) = c
                    .post_json(&format!("/v1/accounts/stuffer-{i}/bindings"), &body)
                    .await
                    .unwrap();
                v["failure_code"]
                    .as_str()
                    .or(v["error"]["code"].as_str())
                    .unwrap_or("?")
                    .to_owned()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let reached = bind_calls() - before;
    assert_eq!(reached, 5, "wrong passwords that reached the provider: {codes:?}");
    assert_eq!(count(&codes, "invalid_input"), 5, "{codes:?}");
    assert_eq!(count(&codes, "too_many_attempts"), 115, "{codes:?}");
    // The refusals are recorded with the budget's end.
    let refused = events_of(&l)
        .into_iter()
        .find(|e| {
            matches!(
                &e.payload,
                Payload::BindFailed {
                    reason: bindledger_events::BindFailure::TooManyAttempts { .. },
                    ..
                }
            )
        })
        .expect("a too_many_attempts bind");
    let Payload::BindFailed {
        reason: bindledger_events::BindFailure::TooManyAttempts { until },
        ..
    } = refused.payload
    else {
        unreachable!()
    };
    assert!(until > refused.record_time && until <= refused.record_time + chrono::Duration::minutes(10));
    // The right password of another wallet still binds; the owner's own wallet waits.
    let mut c = server.client(ALL);
    let (status, v) = c
        .post_json(
            "/v1/accounts/owner/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(8), "payment_password": g.password_for(&alipay(), &phone(8))}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), v["outcome"].as_str()),
        (201, Some("succeeded")),
        "{v}"
    );
    // The stuffing alert: one wallet, many accounts.
    let deadline = Instant::now() + Duration::from_secs(15);
    let alert = loop {
        let (_, v) = server
            .client(SECURITY)
            .get_json("/v1/alerts?rule=password_stuffing")
            .await
            .unwrap();
        if let Some(a) = v["alerts"].as_array().and_then(|a| a.first()).cloned() {
            break a;
        }
        assert!(Instant::now() < deadline, "no password_stuffing alert: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alert["key"]["kind"], "wallet", "{alert}");
    assert_eq!(alert["accounts"].as_array().unwrap().len(), 5, "{alert}");
    // The guard holds across a restart: the window is in the log.
    drop((l, g));
    server.shutdown().await;
    let mut config = test_config(dir.path());
    config.gateway.simulated = Scenario::quiet(11);
    let server = TestServer::start(config).await;
    let before = server.gateway.calls_made();
    let (_, v) = server
        .client(ALL)
        .post_json(
            "/v1/accounts/late/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(7), "payment_password": "000000"}),
        )
        .await
        .unwrap();
    assert_eq!(v["failure_code"], "too_many_attempts", "{v}");
    assert_eq!(server.gateway.calls_made(), before);
    server.shutdown().await;
}

/// Regression (issue 25, item 7): duplicate keys in command bodies were accepted, the last
/// one winning (`{"amount_minor":0,"amount_minor":100}` recorded 100), while every event
/// reader refuses them. Every body refuses them, at any depth, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_twice_in_any_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let binding = bind_wallet(&server.ledger, &server.gateway, "alice", 1).await;
    let before = server.ledger.log_len();
    let mut c = server.client(ALL);
    let bodies = [
        (
            "/v1/accounts/alice/payments".to_owned(),
            format!(
                r#"{{"binding_id":"{binding}","order_id":"o-1","amount_minor":0,"amount_minor":100,"payment_password":"x"}}"#
            ),
        ),
        (
            "/v1/accounts/alice/payments".to_owned(),
            format!(
                r#"{{"binding_id":"{binding}","order_id":"o-1","amount_minor":100,"payment_password":"x","context":{{"channel":"app","channel":"web"}}}}"#
            ),
        ),
        (
            "/v1/accounts/alice/bindings".to_owned(),
            r#"{"provider":"alipay","provider":"wechat_pay","wallet_account":"13800000000","payment_password":"x"}"#
                .to_owned(),
        ),
        (
            format!("/v1/accounts/alice/bindings/{binding}/unbind"),
            r#"{"confirm":false,"confirm":true}"#.to_owned(),
        ),
        (
            "/v1/alerts/password_brute_force-1/triage".to_owned(),
            r#"{"action":"resolved","action":"false_positive"}"#.to_owned(),
        ),
    ];
    for (path, body) in bodies {
        let (status, v) = c
            .send(hyper::Method::POST, &path, Some(body.into_bytes()))
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(
            (status.as_u16(), v["error"]["code"].as_str()),
            (400, Some("malformed_json")),
            "{path}: {v}"
        );
    }
    // The console's sign-in reads its body the same way, and names the field it wanted.
    let (status, v) = raw(server.addr, "POST /console/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 25\r\n\r\n{\"token\":1,\"token\":\"abc\"}").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );
    let (status, v) = raw(
        server.addr,
        "POST /console/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 11\r\n\r\n{\"token\":1}",
    )
    .await;
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("token")), "{v}");
    assert_eq!(server.ledger.log_len(), before);
    server.shutdown().await;
}

/// Regressions (issue 25, items 6 and 8): a refused command's `expected_version` appeared in
/// the debug log (`the command expected version 809966`); JSON log lines carried `message`
/// twice. Commands racing on one version, at debug level in JSON: the conflicts are logged
/// by their code, never with the version the caller expected, and every line is one JSON
/// object without a repeated key.
#[test]
fn a_refused_version_is_not_logged_and_json_lines_have_no_repeated_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = spawn_server(
        &dir.path().join("data"),
        &log,
        &[("BINDLEDGER_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = server.addr;
    let expected: u64 = 1;
    rt.block_on(async {
        let mut c = Client::new(addr, Some(ALL.into()));
        let (status, _) = c
            .post_json("/v1/accounts/racer/bindings", &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": "000000"}))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                tokio::spawn(async move {
                    let mut c = Client::new(addr, Some(ALL.into()));
                    let body = json!({"provider": "alipay", "wallet_account": phone(100 + i), "payment_password": "000000", "expected_version": expected});
                    c.post_json("/v1/accounts/racer/bindings", &body).await.unwrap().0.as_u16()
                })
            })
            .collect();
        let mut conflicts = 0;
        for t in tasks {
            conflicts += usize::from(t.await.unwrap() == 409);
        }
        assert!(conflicts >= 39, "{conflicts} conflicts");
        // And one refused before the writer, far from the account's version.
        let body = json!({"provider": "alipay", "wallet_account": phone(3), "payment_password": "000000", "expected_version": 809_966});
        assert_eq!(c.post_json("/v1/accounts/racer/bindings", &body).await.unwrap().0.as_u16(), 409);
    });
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("version_conflict"), "{text}");
    assert!(!text.contains("809966"), "the expected version is logged");
    let numbered = text
        .match_indices("expected version ")
        .any(|(i, m)| text[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
    assert!(!numbered, "the expected version is logged");
    for line in text.lines() {
        bindledger_events::parse_strict(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

/// Regressions (issue 25, item 8): a lock could cite another account's alert, and `assigned`
/// took a name that no token has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_cites_an_alert_of_its_account_and_an_alert_is_assigned_to_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (l, g) = (server.ledger.clone(), server.gateway.clone());
    let victim = bind_wallet(&l, &g, "victim", 1).await.to_string();
    let other = bind_wallet(&l, &g, "other", 2).await.to_string();
    guess_concurrently(server.addr, "victim", &victim, 5, None).await;
    let locked = wait_for_event(&l, "lock", |e| matches!(e.payload, Payload::BindingLocked { .. })).await;
    let Payload::BindingLocked { alert_id, .. } = &locked.payload else {
        unreachable!()
    };
    let mut c = server.client(SECURITY);
    let before = l.log_len();
    let (status, v) = c
        .post_json(
            &format!("/v1/accounts/other/bindings/{other}/lock"),
            &json!({"confirm": true, "alert_id": alert_id}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), v["error"]["code"].as_str()),
        (422, Some("alert_of_another_account")),
        "{v}"
    );
    let (status, v) = c
        .post_json(
            &format!("/v1/alerts/{alert_id}/triage"),
            &json!({"action": "assigned", "assignee": "nobody-by-this-name"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), v["error"]["code"].as_str()),
        (422, Some("unknown_assignee")),
        "{v}"
    );
    assert_eq!(l.log_len(), before, "nothing recorded");
    let name = bindledger::config::TokenConfig {
        token: READER.into(),
        roles: vec![],
        name: None,
        client_cert_sha256: None,
    }
    .display_name();
    let (status, v) = c
        .post_json(
            &format!("/v1/alerts/{alert_id}/triage"),
            &json!({"action": "assigned", "assignee": name}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    server.shutdown().await;
}
