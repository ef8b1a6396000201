//! The real HTTP server on a real socket over a real sled log.

mod common;

use bindledger_events::{ChainVerifier, Factor};
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

async fn bind(c: &mut bindledger::adapters::http::client::Client, s: &TestServer, account: &str, n: u64) -> Value {
    let pw = s.gateway.password_for(&alipay(), &phone(n));
    let sms = s.gateway.factor_code_for(&alipay(), &phone(n), Factor::Sms);
    let (status, body) = c
        .post_json(
            &format!("/v1/accounts/{account}/bindings"),
            &json!({"provider": "alipay", "wallet_account": phone(n), "payment_password": pw,
                    "factor": {"kind": "sms", "code": sms}, "context": {"channel": "app", "ip": "203.0.113.9"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

#[tokio::test]
async fn bind_pay_read_unbind_and_audit_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(test_config(dir.path())).await;
    let mut w = s.client(WRITER);
    let mut r = s.client(READER);

    let bound = bind(&mut w, &s, "alice", 1).await;
    assert_eq!(bound["outcome"], "succeeded");
    assert_eq!(bound["event"]["payload"]["type"], "wallet_bound");
    assert_eq!(bound["event"]["payload"]["wallet"]["masked"], "1******0001");
    assert_eq!(
        bound["event"]["payload"]["factors"],
        json!([{"factor": "password", "passed": true}, {"factor": "sms", "passed": true}])
    );
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    let fingerprint = bound["event"]["payload"]["wallet"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    let pw = s.gateway.password_for(&alipay(), &phone(1));
    for (i, amount) in [1999, 250, 100_000].into_iter().enumerate() {
        let (status, body) = w
            .post_json("/v1/accounts/alice/payments", &json!({"binding_id": binding, "order_id": format!("o-{i}"), "amount_minor": amount, "payment_password": pw}))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["event_type"], "payment_succeeded");
        assert_eq!(body["event"]["payload"]["currency"], "CNY");
    }
    let (_, wrong) = w
        .post_json(
            "/v1/accounts/alice/payments",
            &json!({"binding_id": binding, "order_id": "o-x", "amount_minor": 5, "payment_password": "not-it"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (wrong["outcome"].as_str(), wrong["failure_code"].as_str()),
        (Some("failed"), Some("wrong_password"))
    );

    let (status, list) = r.get_json("/v1/accounts/alice/bindings").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["version"], 5);
    let b = &list["bindings"][0];
    assert_eq!(
        (b["status"].as_str(), b["payments_count"].as_u64()),
        (Some("active"), Some(3))
    );
    assert!(
        b.get("agreement_id").is_none(),
        "the provider reference is not shown to readers"
    );

    let (_, page1) = r.get_json("/v1/accounts/alice/payments?limit=2").await.unwrap();
    let amounts: Vec<_> = page1["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["status"].clone(), p["amount_minor"].clone()))
        .collect();
    assert_eq!(
        amounts,
        vec![(json!("failed"), json!(5)), (json!("succeeded"), json!(100_000))],
        "newest first"
    );
    assert_eq!(page1["payments"][1]["amount_display"], "1,000.00 CNY");
    let cursor = page1["next_before_version"].as_u64().unwrap();
    let (_, page2) = r
        .get_json(&format!("/v1/accounts/alice/payments?limit=2&before_version={cursor}"))
        .await
        .unwrap();
    let amounts: Vec<_> = page2["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["amount_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![250, 1999]);
    assert!(page2["next_before_version"].is_null());

    let (_, wallets) = r
        .get_json(&format!("/v1/wallets/{fingerprint}/accounts"))
        .await
        .unwrap();
    assert_eq!(wallets["accounts"], json!(["alice"]));

    let (status, unbound) = w
        .post_json(
            &format!("/v1/accounts/alice/bindings/{binding}/unbind"),
            &json!({"confirm": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, unbound["event_type"].as_str()),
        (StatusCode::CREATED, Some("wallet_unbound"))
    );
    let (_, again) = w
        .post_json(
            &format!("/v1/accounts/alice/bindings/{binding}/unbind"),
            &json!({"confirm": true}),
        )
        .await
        .unwrap();
    assert_eq!(again["failure_code"], "not_bound");
    let (_, after) = w
        .post_json(
            "/v1/accounts/alice/payments",
            &json!({"binding_id": binding, "order_id": "o-late", "amount_minor": 5, "payment_password": pw}),
        )
        .await
        .unwrap();
    assert_eq!(after["failure_code"], "binding_not_active");

    let (_, history) = r.get_json("/v1/accounts/alice/events?after_version=5").await.unwrap();
    let types: Vec<_> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, vec!["wallet_unbound", "unbind_failed", "payment_failed"]);

    // The auditor's feed: the stored bytes, in order, verifiable with the chain alone.
    let mut a = s.client(AUDITOR);
    let (status, feed) = a.send(Method::GET, "/v1/events?from=1", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let mut verifier = ChainVerifier::new();
    let mut n = 0;
    for line in feed.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let (_, hash) = verifier.push(line).expect("the chain verifies");
        n += 1;
        if n == 1 {
            assert_eq!(
                hash.to_hex(),
                bound["hash"].as_str().unwrap(),
                "the answer's hash is the stored bytes' hash"
            );
        }
    }
    assert_eq!(n, 8);
    let (_, tail) = a.send(Method::GET, "/v1/events?from=7&limit=1", None).await.unwrap();
    assert_eq!(tail.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 1);

    let (status, metrics) = r.send(Method::GET, "/metrics", None).await.unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("bindledger_commands_total{kind=\"pay\",outcome=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bindledger_commands_total{kind=\"pay\",outcome=\"wrong_password\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("bindledger_log_events 8"), "{metrics}");
    assert!(metrics.contains("bindledger_flush_seconds_count"), "{metrics}");
    // The exposition is OpenMetrics, as prometheus-client writes it: every family typed, the
    // page closed by `# EOF`, counters suffixed `_total`.
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(metrics.contains("# TYPE bindledger_commands counter"), "{metrics}");
    assert!(metrics.contains("# TYPE bindledger_log_events gauge"), "{metrics}");
    assert!(
        metrics.contains("bindledger_idempotency_entries{held=\"memory\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("bindledger_writer_batches_total"), "{metrics}");
    // The test's account is in memory; new accounts and wallets were looked for on disk.
    assert!(
        metric(&metrics, "bindledger_cached{kind=\"account\"}").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "bindledger_rows_read_total{kind=\"account\"}").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Requests by route pattern, method and status: the pattern, never the path (which holds
    // an account), so the labels stay a bounded set.
    assert!(
        metrics.contains(
            "bindledger_http_requests_total{route=\"/v1/accounts/{account}/payments\",method=\"POST\",status=\"201\"} "
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("bindledger_http_request_duration_seconds_count{route=\"/v1/events\"}"),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("bindledger_http") && l.contains("alice")),
        "an account in a label: {metrics}"
    );
    // The benchmark's baseline route is not the API's: the server of `bindledger serve` (and
    // of this test) has no such route.
    let (status, _) = r
        .post_json("/v1/bench/accounts/alice/payments", &json!({"binding_id": "x"}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!bindledger::adapters::http::ROUTES
        .iter()
        .any(|(_, p)| p.contains("bench")));
    // Readiness, beside liveness: a primary that takes commands is ready.
    let (status, ready) = bindledger::adapters::http::client::Client::new(s.addr, None)
        .get_json("/readyz")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(
        (ready["ready"].as_bool(), ready["role"].as_str()),
        (Some(true), Some("primary")),
        "{ready}"
    );
    let (status, health) = r.get_json("/healthz").await.unwrap();
    assert_eq!((status, health["events"].as_u64()), (StatusCode::OK, Some(8)));
    // What `bindledger status` reads, as JSON.
    let (status, all) = r.get_json("/v1/status").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["health"], health, "{all}");
    assert_eq!(all["relays"]["events"]["state"], "disabled", "{all}");
    assert!(
        all["monitor"].is_null() || all["monitor"]["opened"].is_object(),
        "{all}"
    );
    let (status, _) = bindledger::adapters::http::client::Client::new(s.addr, None)
        .get_json("/v1/status")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(test_config(dir.path())).await;
    let body = json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": "x"});
    let mut anonymous = bindledger::adapters::http::client::Client::new(s.addr, None);
    let (status, e) = anonymous.post_json("/v1/accounts/a/bindings", &body).await.unwrap();
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let (status, _) = s
        .client("no-such-token-000000000")
        .post_json("/v1/accounts/a/bindings", &body)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, e) = s
        .client(READER)
        .post_json("/v1/accounts/a/bindings", &body)
        .await
        .unwrap();
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = s.client(WRITER).get_json("/v1/accounts/a/bindings").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.client(READER).send(Method::GET, "/v1/events", None).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.client(AUDITOR).send(Method::GET, "/v1/events", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.ledger.log_len(), 0, "nothing was recorded");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.body_limit_bytes = 4096;
    let s = TestServer::start(config).await;
    let mut w = s.client(ALL);
    let bound = bind(&mut w, &s, "bob", 2).await;
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    let before = s.ledger.log_len();
    let good_pay = |amount: Value| json!({"binding_id": binding, "order_id": "o-1", "amount_minor": amount, "payment_password": "123456"});
    let long = "a".repeat(65);
    let cases: Vec<(&str, String, Vec<u8>, StatusCode, &str)> = vec![
        ("malformed JSON", "/v1/accounts/bob/payments".into(), b"{\"binding_id\": ".to_vec(), StatusCode::BAD_REQUEST, "malformed_json"),
        ("not an object", "/v1/accounts/bob/payments".into(), b"[1,2]".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("missing field", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&json!({"binding_id": binding, "order_id": "o"})).unwrap(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("wrong type", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&good_pay(json!("100"))).unwrap(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("zero amount", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&good_pay(json!(0))).unwrap(), StatusCode::BAD_REQUEST, "invalid_amount"),
        ("negative amount", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&good_pay(json!(-100))).unwrap(), StatusCode::BAD_REQUEST, "invalid_amount"),
        ("amount over the maximum", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&good_pay(json!(10_000_000_000_001i64))).unwrap(), StatusCode::BAD_REQUEST, "invalid_amount"),
        ("amount beyond i64", "/v1/accounts/bob/payments".into(), format!("{{\"binding_id\":\"{binding}\",\"order_id\":\"o\",\"amount_minor\":92233720368547758070,\"payment_password\":\"1\"}}").into_bytes(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("float amount", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&good_pay(json!(19.99))).unwrap(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("unknown currency", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&json!({"binding_id": binding, "order_id": "o", "amount_minor": 5, "currency": "XYZ", "payment_password": "1"})).unwrap(), StatusCode::BAD_REQUEST, "invalid_currency"),
        ("unknown field", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&json!({"binding_id": binding, "order_id": "o", "amount_minor": 5, "payment_password": "1", "tip": 1})).unwrap(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("bad binding id", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&json!({"binding_id": "nope", "order_id": "o", "amount_minor": 5, "payment_password": "1"})).unwrap(), StatusCode::BAD_REQUEST, "invalid_binding_id"),
        ("absurdly long account id", format!("/v1/accounts/{long}/payments"), serde_json::to_vec(&good_pay(json!(5))).unwrap(), StatusCode::BAD_REQUEST, "invalid_account"),
        ("account id with odd characters", "/v1/accounts/b%20ob/payments".into(), serde_json::to_vec(&good_pay(json!(5))).unwrap(), StatusCode::BAD_REQUEST, "invalid_account"),
        ("absurdly long idempotency key", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&json!({"binding_id": binding, "order_id": "o", "amount_minor": 5, "payment_password": "1", "idempotency_key": "k".repeat(129)})).unwrap(), StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
        ("oversized body", "/v1/accounts/bob/payments".into(), serde_json::to_vec(&json!({"binding_id": binding, "order_id": "o", "amount_minor": 5, "payment_password": "x".repeat(5000)})).unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("unknown provider", "/v1/accounts/bob/bindings".into(), serde_json::to_vec(&json!({"provider": "paypal", "wallet_account": phone(3), "payment_password": "1"})).unwrap(), StatusCode::BAD_REQUEST, "invalid_provider"),
        ("malformed wallet account", "/v1/accounts/bob/bindings".into(), serde_json::to_vec(&json!({"provider": "alipay", "wallet_account": "hello there", "payment_password": "1"})).unwrap(), StatusCode::BAD_REQUEST, "invalid_wallet_account"),
        ("unknown factor", "/v1/accounts/bob/bindings".into(), serde_json::to_vec(&json!({"provider": "alipay", "wallet_account": phone(3), "payment_password": "1", "factor": {"kind": "iris", "code": "1"}})).unwrap(), StatusCode::BAD_REQUEST, "invalid_factor"),
        ("event time in the future", "/v1/accounts/bob/bindings".into(), serde_json::to_vec(&json!({"provider": "alipay", "wallet_account": phone(3), "payment_password": "1", "event_time": "2999-01-01T00:00:00Z"})).unwrap(), StatusCode::BAD_REQUEST, "invalid_event_time"),
        ("unbind without confirmation", format!("/v1/accounts/bob/bindings/{binding}/unbind"), serde_json::to_vec(&json!({"confirm": false})).unwrap(), StatusCode::BAD_REQUEST, "confirmation_required"),
        ("unknown route", "/v1/accounts/bob/wallets".into(), b"{}".to_vec(), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (what, path, body, status, code) in cases {
        let (got, bytes) = w.send(Method::POST, &path, Some(body)).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{what}: the error is not JSON: {}", String::from_utf8_lossy(&bytes)));
        assert_eq!((got, v["error"]["code"].as_str()), (status, Some(code)), "{what}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}: a human message"
        );
        assert_eq!(s.ledger.log_len(), before, "{what}: the log changed");
    }
    let (_, list) = s.client(READER).get_json("/v1/accounts/bob/bindings").await.unwrap();
    assert_eq!(list["version"], 1, "the projection did not change either");
    s.shutdown().await;
}

#[tokio::test]
async fn idempotency_and_expected_version_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(test_config(dir.path())).await;
    let mut w = s.client(ALL);
    let bound = bind(&mut w, &s, "carol", 4).await;
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    let pw = s.gateway.password_for(&alipay(), &phone(4));
    let pay = json!({"binding_id": binding, "order_id": "o-1", "amount_minor": 1234, "payment_password": pw, "idempotency_key": "checkout-77"});
    let (s1, first) = w.post_json("/v1/accounts/carol/payments", &pay).await.unwrap();
    let (s2, retry) = w.post_json("/v1/accounts/carol/payments", &pay).await.unwrap();
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first["event"], retry["event"], "a retry returns the original event");
    assert_eq!(retry["replayed"], true);
    let mut other = pay.clone();
    other["amount_minor"] = json!(9999);
    let (s3, e) = w.post_json("/v1/accounts/carol/payments", &other).await.unwrap();
    assert_eq!(
        (s3, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused"))
    );
    // The same key on another account is another key.
    let (s4, _) = w.post_json("/v1/accounts/dave/payments", &json!({"binding_id": binding, "order_id": "o-1", "amount_minor": 1, "payment_password": pw, "idempotency_key": "checkout-77"})).await.unwrap();
    assert_eq!(s4, StatusCode::CREATED);
    assert_eq!(s.ledger.log_len(), 3);
    // Optimistic concurrency.
    let (s5, e) = w.post_json("/v1/accounts/carol/payments", &json!({"binding_id": binding, "order_id": "o-2", "amount_minor": 1, "payment_password": pw, "expected_version": 1})).await.unwrap();
    assert_eq!(
        (s5, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict"))
    );
    let (s6, _) = w.post_json("/v1/accounts/carol/payments", &json!({"binding_id": binding, "order_id": "o-2", "amount_minor": 1, "payment_password": pw, "expected_version": 2})).await.unwrap();
    assert_eq!(s6, StatusCode::CREATED);
    s.shutdown().await;
}
