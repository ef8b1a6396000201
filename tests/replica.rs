//! Read replicas (issue 16): a node started with `replica.enabled` follows the events topic of
//! a real broker into its own log, byte for byte; serves the same reads as the primary;
//! answers commands `421 not_primary` naming the primary; lets a client wait for its own
//! write (`?min_seq=`); reports its lag; and resumes where it was after a restart.

mod common;

use bindledger::command::{CommonInput, PayRequest};
use bindledger::relay::KafkaConfig;
use bindledger::secret::SecretString;
use bindledger::Config;
use chrono::Utc;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn kafka(brokers: &str, tag: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        topic: fresh_topic(&format!("{tag}-events")),
        alerts_topic: fresh_topic(&format!("{tag}-alerts")),
        partitions: 3,
        message_timeout_ms: 3000,
        backoff_ms_max: 500,
        ..KafkaConfig::default()
    }
}

async fn workload(server: &TestServer, accounts: u64, tag: &str) {
    let first_wallet = if tag == "before" { 0 } else { 100 };
    for a in 0..accounts {
        let account = format!("{tag}-{a}");
        let wallet = first_wallet + a;
        let binding = bind_wallet(&server.ledger, &server.gateway, &account, wallet).await;
        // The first account is attacked: wrong passwords until the guard and an alert stop it.
        let attempts = if a == 0 { 8 } else { 3 };
        for k in 0..attempts {
            let pay = PayRequest {
                binding_id: binding.to_string(),
                order_id: format!("{tag}-{a}-{k}"),
                amount_minor: 100 + k,
                currency: None,
                payment_password: SecretString::new(if k >= 2 {
                    "wrong".into()
                } else {
                    server.gateway.password_for(&alipay(), &phone(wallet))
                }),
                factor: None,
                common: CommonInput {
                    idempotency_key: Some(format!("{tag}-{a}-{k}")),
                    ..Default::default()
                },
            };
            server
                .ledger
                .pay(pay.validate(&account, Utc::now()).unwrap())
                .await
                .unwrap();
        }
    }
}

async fn caught_up(replica: &TestServer, primary: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.ledger.log_len() < primary.ledger.log_len() {
        assert!(
            Instant::now() < deadline,
            "the replica is at {} of {}",
            replica.ledger.log_len(),
            primary.ledger.log_len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same_log(replica: &TestServer, primary: &TestServer) {
    assert_eq!(replica.ledger.log_len(), primary.ledger.log_len());
    for seq in 1..=primary.ledger.log_len() {
        assert_eq!(
            replica.ledger.event_bytes(seq).unwrap().unwrap(),
            primary.ledger.event_bytes(seq).unwrap().unwrap(),
            "event {seq}"
        );
    }
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let (status, v) = server.client(ALL).get_json(path).await.unwrap();
    (status.as_u16(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_the_topic_serves_the_same_reads_and_refuses_commands() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let k = kafka(&broker.addr, "replica");
    let mut pc: Config = test_config(&dir.path().join("primary"));
    pc.kafka = k.clone();
    pc.checkpoints.topic = fresh_topic("replica-checkpoints");
    let primary = TestServer::start(pc).await;
    workload(&primary, 12, "before").await;

    let mut rc: Config = test_config(&dir.path().join("replica"));
    rc.kafka = k.clone();
    rc.replica.enabled = true;
    rc.replica.primary_url = format!("http://{}", primary.addr);
    rc.http.min_seq_wait_ms = 500;
    let replica = TestServer::start(rc.clone()).await;
    caught_up(&replica, &primary).await;
    same_log(&replica, &primary);

    // The same reads.
    for a in [0, 5, 11] {
        for path in [
            format!("/v1/accounts/before-{a}/bindings"),
            format!("/v1/accounts/before-{a}/events"),
            format!("/v1/accounts/before-{a}/payments"),
        ] {
            assert_eq!(get(&replica, &path).await, get(&primary, &path).await, "{path}");
        }
    }
    // The same alerts (the rule engine is a function of the log), once both monitors are there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, a) = get(&primary, "/v1/alerts?limit=1000").await;
        let (_, b) = get(&replica, "/v1/alerts?limit=1000").await;
        if a == b && a["alerts"].as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "alerts differ:\n{a}\n{b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Commands: 421 not_primary, naming the primary; nothing written.
    let before = replica.ledger.log_len();
    let (status, v) = replica
        .client(ALL)
        .post_json(
            "/v1/accounts/acct-1/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(900), "payment_password": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 421, "{v}");
    assert_eq!(v["error"]["code"], "not_primary");
    assert_eq!(v["primary"], format!("http://{}", primary.addr));
    let (status, _) = replica
        .client("not-a-token")
        .post_json("/v1/accounts/acct-1/bindings", &json!({}))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 401, "the token is checked first");
    assert_eq!(replica.ledger.log_len(), before);

    // Health: the role and the lag.
    let (status, h) = get(&replica, "/healthz").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["role"], "replica");
    assert_eq!(h["replica"]["lag_events"], 0, "{h}");
    let (_, h) = get(&primary, "/healthz").await;
    assert_eq!(h["role"], "primary");

    // Read your own write: the answer's seq, then a read on the replica that waits for it.
    let (status, v) = primary
        .client(ALL)
        .post_json(
            "/v1/accounts/newcomer/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(300), "payment_password": primary.gateway.password_for(&alipay(), &phone(300))}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    let seq = v["event"]["seq"].as_u64().unwrap();
    let (status, bindings) = get(&replica, &format!("/v1/accounts/newcomer/bindings?min_seq={seq}")).await;
    assert_eq!(status, 200, "{bindings}");
    assert_eq!(
        bindings["bindings"][0]["binding_id"], v["event"]["payload"]["binding_id"],
        "{bindings}"
    );
    let (status, v) = get(
        &replica,
        &format!("/v1/accounts/newcomer/bindings?min_seq={}", seq + 1000),
    )
    .await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("not_caught_up")));
    let (status, _) = get(&replica, "/v1/accounts/newcomer/bindings?min_seq=abc").await;
    assert_eq!(status, 400);

    // A restart of the replica resumes from its saved offsets and follows what came since.
    replica.shutdown().await;
    workload(&primary, 4, "after").await;
    let replica = TestServer::start(rc).await;
    caught_up(&replica, &primary).await;
    same_log(&replica, &primary);
    // `bindledger status` names the role and the lag.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&replica, "/healthz").await.1["replica"]["state"] != "caught_up" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://{}", replica.addr);
    let (code, out, err) = tokio::task::spawn_blocking(move || run_cli(&["status", "--url", &url, "--token", ALL]))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("replica)") && out.contains("replica: caught_up, lag 0 events"),
        "{out}"
    );
    replica.shutdown().await;
    primary.shutdown().await;
}
