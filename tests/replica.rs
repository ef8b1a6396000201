//! Read replicas (issue 16): a node started with `replica.enabled` follows the events topic of
//! a real broker into its own log, byte for byte; serves the same reads as the primary;
//! answers commands `421 not_primary` naming the primary; lets a client wait for its own
//! write (`?min_seq=`); reports its lag; and resumes where it was after a restart.

mod common;

use bindledger::config::KafkaConfig;
use bindledger::domain::command::{CommonInput, PayRequest};
use bindledger::domain::secret::SecretString;
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

fn failover_config(
    dir: &std::path::Path,
    name: &str,
    broker: &str,
    topics: &[String; 3],
    replica: bool,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "durability = \"replicated\"\nreplication_timeout_ms = 3000\n\n[kafka]\nbrokers = \"{broker}\"\ntopic = \"{}\"\nalerts_topic = \"{}\"\npartitions = 3\n\n[checkpoints]\ntopic = \"{}\"\nevery_events = 50\n\n[replica]\nenabled = {replica}\n\n[gateway.simulated]\nseed = 11\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\nnetwork_error_per_mille = 0\n",
            topics[0], topics[1], topics[2]
        ),
    )
    .unwrap();
    path
}

const SECRET_HEX: &str = "2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";

/// Every event of a stopped ledger's directory, in order.
fn log_of_dir(dir: &std::path::Path) -> Vec<Vec<u8>> {
    bindledger::ledger::store::scan_dir(dir, 1)
        .unwrap()
        .map(|r| r.unwrap().1.to_vec())
        .collect()
}

/// Issue 16: the primary, in replicated mode under load, is SIGKILLed and its disk lost. A
/// restore from the topic and, separately, a promoted replica each hold every command the
/// load generator saw acknowledged, exactly once; the restored log is the topic byte for
/// byte; the promoted replica continues the chain, and its log and checkpoints verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_primary_is_lost_a_restore_and_a_promoted_replica_hold_every_acknowledged_command() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topics = [
        fresh_topic("failover-events"),
        fresh_topic("failover-alerts"),
        fresh_topic("failover-checkpoints"),
    ];
    let primary_toml = failover_config(dir.path(), "primary", &broker.addr, &topics, false);
    let replica_toml = failover_config(dir.path(), "replica", &broker.addr, &topics, true);
    let (primary_dir, replica_dir) = (dir.path().join("primary"), dir.path().join("replica"));
    let primary_env = [
        ("BINDLEDGER_CONFIG", primary_toml.to_str().unwrap()),
        ("BINDLEDGER_SECRET", SECRET_HEX),
    ];
    let primary = spawn_server(&primary_dir, &dir.path().join("primary.log"), &primary_env);
    // The replica signs with the primary's checkpoint key once promoted: it is given the key
    // (and the secret), as the README says.
    std::fs::create_dir_all(&replica_dir).unwrap();
    std::fs::copy(primary_dir.join("checkpoint.key"), replica_dir.join("checkpoint.key")).unwrap();
    let replica_env = [
        ("BINDLEDGER_CONFIG", replica_toml.to_str().unwrap()),
        ("BINDLEDGER_SECRET", SECRET_HEX),
    ];
    let replica = spawn_server(&replica_dir, &dir.path().join("replica.log"), &replica_env);
    let mut client = bindledger::adapters::http::client::Client::new(primary.addr, Some(ALL.into()));
    let (_, key) = client.get_json("/v1/checkpoints/key").await.unwrap();
    let public_key = key["public_key"].as_str().unwrap().to_owned();
    let gateway =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::adapters::provider::Scenario::quiet(11));
    let mut bindings = Vec::new();
    for a in 0..8u64 {
        let (status, v) = client
            .post_json(
                &format!("/v1/accounts/acct-{a}/bindings"),
                &json!({"provider": "alipay", "wallet_account": phone(a), "payment_password": gateway.password_for(&alipay(), &phone(a)), "idempotency_key": format!("bind-{a}")}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
        bindings.push(v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned());
    }
    // The load: keyed payments from 4 clients until the primary dies.
    type Sent = (String, String, Value);
    let acked: Arc<Mutex<HashMap<String, (u64, String)>>> = Default::default();
    let unknown: Arc<Mutex<Vec<Sent>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..4u64 {
        let (acked, unknown, stop, bindings) = (acked.clone(), unknown.clone(), stop.clone(), bindings.clone());
        let addr = primary.addr;
        let pws: Vec<String> = (0..8).map(|a| gateway.password_for(&alipay(), &phone(a))).collect();
        load.spawn(async move {
            let mut client = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let a = ((t + i) % 8) as usize;
                let key = format!("pay-{t}-{i}");
                let body = json!({"binding_id": bindings[a], "order_id": key, "amount_minor": 1, "payment_password": pws[a], "idempotency_key": key});
                let path = format!("/v1/accounts/acct-{a}/payments");
                match client.post_json(&path, &body).await {
                    Ok((s, v)) if s.as_u16() == 201 => {
                        acked.lock().unwrap().insert(key, (v["event"]["seq"].as_u64().unwrap(), v["hash"].as_str().unwrap().to_owned()));
                    }
                    _ => {
                        unknown.lock().unwrap().push((path, key, body));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        client = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
                    }
                }
                i += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The machine is lost: SIGKILL, and its disk with it.
    primary.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    std::fs::remove_dir_all(&primary_dir).unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the load was acknowledged: {}", acked.len());

    // Restore from the topic: byte for byte what the topic holds, every acknowledged command in it.
    let restored_dir = dir.path().join("restored");
    let out = std::process::Command::new(binary())
        .args(["restore", "--data-dir"])
        .arg(&restored_dir)
        .args([
            "--brokers",
            &broker.addr,
            "--topic",
            &topics[0],
            "--checkpoints-topic",
            &topics[2],
            "--public-key",
            &public_key,
        ])
        .env("BINDLEDGER_SECRET", SECRET_HEX)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = log_of_dir(&restored_dir);
    let mut topic: Vec<Read> = read_topic(&broker.addr, &topics[0]);
    topic.sort_by_key(|r| r.headers["seq"].parse::<u64>().unwrap());
    let topic: Vec<Vec<u8>> = topic.into_iter().map(|r| r.value).collect();
    assert_eq!(restored, topic, "the restored log is the topic");
    let keyed = |log: &[Vec<u8>]| {
        let mut by_key: HashMap<String, Vec<(u64, String)>> = HashMap::new();
        for bytes in log {
            let e = bindledger_events::decode(bytes).unwrap();
            if let Some(k) = &e.idempotency_key {
                by_key
                    .entry(k.clone())
                    .or_default()
                    .push((e.seq, bindledger_events::hash_bytes(bytes).to_hex()));
            }
        }
        by_key
    };
    let in_restored = keyed(&restored);
    for (key, seen) in &acked {
        assert_eq!(in_restored.get(key), Some(&vec![seen.clone()]), "acknowledged {key}");
    }

    // Promote the replica; time from the request to its first acknowledged command.
    let url = format!("http://{}", replica.addr);
    let started = Instant::now();
    let (code, out, err) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || run_cli(&["promote", "--url", &url, "--token", ALL]))
            .await
            .unwrap()
    };
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
    let mut client = bindledger::adapters::http::client::Client::new(replica.addr, Some(ALL.into()));
    let (status, v) = client
        .post_json(
            "/v1/accounts/acct-0/payments",
            &json!({"binding_id": bindings[0], "order_id": "after-failover", "amount_minor": 1, "payment_password": gateway.password_for(&alipay(), &phone(0)), "idempotency_key": "after-failover"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    eprintln!(
        "failover: promote to the first acknowledged command in {:.3} s ({} events)",
        started.elapsed().as_secs_f64(),
        v["event"]["seq"]
    );
    // Commands whose outcome the crash hid: retried with their keys, each takes effect once.
    let retry = unknown.lock().unwrap().clone();
    for (path, key, body) in &retry {
        let (status, v) = client.post_json(path, body).await.unwrap();
        assert!(status.as_u16() == 201 || status.as_u16() == 200, "{key}: {status} {v}");
    }
    // The promoted replica knows the keys the lost primary acknowledged: retries replay them.
    let mut some: Vec<(&String, &(u64, String))> = acked.iter().collect();
    some.sort();
    for (key, (seq, hash)) in some.into_iter().take(5) {
        let (t, i) = key.strip_prefix("pay-").unwrap().split_once('-').unwrap();
        let (t, i): (u64, u64) = (t.parse().unwrap(), i.parse().unwrap());
        let a = ((t + i) % 8) as usize;
        let body = json!({"binding_id": bindings[a], "order_id": key, "amount_minor": 1, "payment_password": gateway.password_for(&alipay(), &phone(a as u64)), "idempotency_key": key});
        let (status, v) = client
            .post_json(&format!("/v1/accounts/acct-{a}/payments"), &body)
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200, "a replay: {v}");
        assert_eq!(
            (v["event"]["seq"].as_u64(), v["hash"].as_str()),
            (Some(*seq), Some(hash.as_str()))
        );
    }
    let (_, health) = client.get_json("/healthz").await.unwrap();
    assert_eq!(health["role"], "primary");
    replica.terminate();
    let promoted = log_of_dir(&replica_dir);
    assert_eq!(
        &promoted[..restored.len()],
        &restored[..],
        "the promoted log continues the topic's"
    );
    let in_promoted = keyed(&promoted);
    for (key, seen) in &acked {
        assert_eq!(in_promoted.get(key), Some(&vec![seen.clone()]), "acknowledged {key}");
    }
    for (_, key, _) in &retry {
        assert_eq!(in_promoted.get(key).map(Vec::len), Some(1), "retried {key}");
    }
    // The chain and the signed checkpoints (old and new, one key) verify.
    let (code, out, err) = run_cli(&["verify", "--data-dir", replica_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
}
