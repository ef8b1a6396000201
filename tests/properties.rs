//! Property tests over the real server and the folds (issue 18): arbitrary JSON bodies are
//! answered 4xx with nothing recorded, or recorded; never 5xx. A projection snapshot plus the
//! events after it equals a fold of the whole log, for arbitrary command sequences.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{json, Value};

/// JSON values built from the commands' own field names and from anything else.
fn body() -> BoxedStrategy<Value> {
    let names = prop_oneof![
        Just("provider"),
        Just("wallet_account"),
        Just("payment_password"),
        Just("factor"),
        Just("kind"),
        Just("code"),
        Just("binding_id"),
        Just("order_id"),
        Just("amount_minor"),
        Just("currency"),
        Just("confirm"),
        Just("idempotency_key"),
        Just("expected_version"),
        Just("correlation_id"),
        Just("event_time"),
        Just("context"),
        Just("channel"),
        Just("device_id"),
        Just("ip"),
        Just("user_agent"),
        Just("x"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::String),
        Just(json!("alipay")),
        Just(json!("13812345678")),
        Just(json!("00000000-0000-0000-0000-000000000001")),
        Just(json!("2026-11-28T08:00:00Z")),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(names.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

#[test]
fn arbitrary_bodies_are_answered_4xx_or_recorded_never_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = rt.block_on(TestServer::start(test_config(dir.path())));
    let binding = rt
        .block_on(bind_wallet(&server.ledger, &server.gateway, "alice", 1))
        .to_string();
    let paths = [
        "/v1/accounts/alice/bindings".to_owned(),
        "/v1/accounts/alice/payments".to_owned(),
        format!("/v1/accounts/alice/bindings/{binding}/unbind"),
        format!("/v1/accounts/alice/bindings/{binding}/unlock"),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    runner
        .run(&(body(), 0..paths.len()), |(body, p)| {
            let before = server.ledger.log_len();
            let (status, answer) = rt.block_on(async {
                server
                    .client(ALL)
                    .send(hyper::Method::POST, &paths[p], Some(serde_json::to_vec(&body).unwrap()))
                    .await
                    .unwrap()
            });
            let after = server.ledger.log_len();
            prop_assert!(
                status.as_u16() < 500,
                "{} {body}: {status} {}",
                paths[p],
                String::from_utf8_lossy(&answer)
            );
            if status.is_client_error() {
                prop_assert_eq!(before, after, "a refused request changed nothing");
                let e: Value = serde_json::from_slice(&answer).unwrap();
                prop_assert!(e["error"]["code"].is_string());
            } else {
                prop_assert!(
                    after > before || answer.windows(15).any(|w| w == b"\"replayed\":true"),
                    "recorded: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(server.shutdown());
}
