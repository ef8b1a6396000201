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

    // The same reads, once the wrapped data keys have reached the replica too (the keys topic,
    // followed every half second): until then its sealed fields read `[sealed]`.
    for a in [0, 5, 11] {
        for path in [
            format!("/v1/accounts/before-{a}/bindings"),
            format!("/v1/accounts/before-{a}/events"),
            format!("/v1/accounts/before-{a}/payments"),
        ] {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (ours, theirs) = (get(&replica, &path).await, get(&primary, &path).await);
                if ours == theirs {
                    break;
                }
                assert!(Instant::now() < deadline, "{path}: {ours:?} against {theirs:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
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
    // Regression: commands of the security role (lock, unlock, triage) answered 403 on a
    // replica: every command is 421, whatever role it needs, and names the primary.
    for path in [
        "/v1/accounts/acct-1/bindings/00000000-0000-0000-0000-000000000001/lock",
        "/v1/accounts/acct-1/bindings/00000000-0000-0000-0000-000000000001/unlock",
        "/v1/alerts/password_brute_force-1/triage",
    ] {
        let (status, v) = replica
            .client(SECURITY)
            .post_json(path, &json!({"confirm": true, "action": "acknowledged"}))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 421, "{path}: {v}");
        assert_eq!(v["primary"], format!("http://{}", primary.addr), "{path}");
    }
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

/// A primary and a replica in replicated mode on `broker`, in a directory of their own.
struct Pair {
    dir: tempfile::TempDir,
    topics: [String; 3],
    primary_toml: std::path::PathBuf,
    replica_toml: std::path::PathBuf,
    primary_dir: std::path::PathBuf,
    replica_dir: std::path::PathBuf,
}

fn pair(broker: &Broker, tag: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let topics = [
        fresh_topic(&format!("{tag}-events")),
        fresh_topic(&format!("{tag}-alerts")),
        fresh_topic(&format!("{tag}-checkpoints")),
    ];
    Pair {
        primary_toml: failover_config(dir.path(), "primary", &broker.addr, &topics, false),
        replica_toml: failover_config(dir.path(), "replica", &broker.addr, &topics, true),
        primary_dir: dir.path().join("primary"),
        replica_dir: dir.path().join("replica"),
        topics,
        dir,
    }
}

/// Binds a wallet to each of `acct-0` .. `acct-7`; their binding ids.
async fn bind_eight(
    client: &mut bindledger::adapters::http::client::Client,
    gateway: &bindledger::adapters::provider::SimulatedGateway,
) -> Vec<String> {
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
    bindings
}

/// `bindledger restore --data-dir DIR ARGS...`, which must succeed; what it printed.
fn restore(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(binary())
        .args(["restore", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("BINDLEDGER_SECRET", SECRET_HEX)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Each idempotency key of a log, with the events (seq, hash) that carry it.
fn by_key(log: &[Vec<u8>]) -> std::collections::HashMap<String, Vec<(u64, String)>> {
    let mut by_key: std::collections::HashMap<String, Vec<(u64, String)>> = Default::default();
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
}

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
    let Pair {
        dir,
        topics,
        primary_toml,
        replica_toml,
        primary_dir,
        replica_dir,
    } = pair(&broker, "failover");
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
    let bindings = bind_eight(&mut client, &gateway).await;
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
    restore(
        &restored_dir,
        &[
            "--brokers",
            &broker.addr,
            "--topic",
            &topics[0],
            "--checkpoints-topic",
            &topics[2],
            "--public-key",
            &public_key,
        ],
    );
    let restored = log_of_dir(&restored_dir);
    // The topic's events (not the restore's fences), in seq order: the restored log is the
    // topic up to its end, or up to a hole when the primary died with events in flight to
    // several partitions (a torn tail, which no acknowledged command is in).
    let mut topic: Vec<Read> = read_topic(&broker.addr, &topics[0]);
    topic.retain(|r| r.headers.contains_key("seq"));
    topic.sort_by_key(|r| r.headers["seq"].parse::<u64>().unwrap());
    let (chain, tail): (Vec<Read>, Vec<Read>) = topic
        .into_iter()
        .partition(|r| r.headers["seq"].parse::<u64>().unwrap() <= restored.len() as u64);
    let topic: Vec<Vec<u8>> = chain.into_iter().map(|r| r.value).collect();
    assert_eq!(
        restored, topic,
        "the restored log is the topic up to its end or its hole"
    );
    for r in &tail {
        let e = bindledger_events::decode(&r.value).unwrap();
        let key = e.idempotency_key.unwrap_or_default();
        assert!(!acked.contains_key(&key), "{key} was acknowledged, yet past the hole");
    }
    let in_restored = by_key(&restored);
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
    let in_promoted = by_key(&promoted);
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

/// Sends `signal` (`STOP`, `CONT`) to a server process.
fn signal(server: &ServerProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Issue 16: a zombie primary. The primary, in replicated mode under load, is paused with
/// SIGSTOP; the replica is promoted (it fences the topic) and takes commands; then the old
/// primary is resumed while its clients go on sending. It acknowledges no command sent after
/// the promotion, and every command it ever acknowledged is in the new primary's chain; it
/// finds out it was fenced and takes no more commands. Restarted, it quarantines what the
/// chain does not hold and follows the new primary as a replica, identical to it. The topic,
/// read by the fencing rules (TOPIC.md), is one chain: a restore from it is the new primary's
/// log byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_resumed_after_a_promotion_acknowledges_nothing_more_and_cannot_fork_the_chain() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    fn refs<'a>(e: &'a [(&'static str, String); 2]) -> [(&'static str, &'a str); 2] {
        e.each_ref().map(|(k, v)| (*k, v.as_str()))
    }
    let broker = Broker::start();
    let Pair {
        dir,
        topics,
        primary_toml,
        replica_toml,
        primary_dir,
        replica_dir,
    } = pair(&broker, "zombie");
    let env = |toml: &std::path::Path| {
        [
            ("BINDLEDGER_CONFIG", toml.to_str().unwrap().to_owned()),
            ("BINDLEDGER_SECRET", SECRET_HEX.to_owned()),
        ]
    };
    let (primary_env, replica_env) = (env(&primary_toml), env(&replica_toml));
    let primary = spawn_server(&primary_dir, &dir.path().join("primary.log"), &refs(&primary_env));
    std::fs::create_dir_all(&replica_dir).unwrap();
    std::fs::copy(primary_dir.join("checkpoint.key"), replica_dir.join("checkpoint.key")).unwrap();
    let replica = spawn_server(&replica_dir, &dir.path().join("replica.log"), &refs(&replica_env));
    let gateway =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::adapters::provider::Scenario::quiet(11));
    let mut client = bindledger::adapters::http::client::Client::new(primary.addr, Some(ALL.into()));
    let bindings = bind_eight(&mut client, &gateway).await;
    let pws: Vec<String> = (0..8).map(|a| gateway.password_for(&alipay(), &phone(a))).collect();
    let pay = |a: usize, key: &str| json!({"binding_id": bindings[a], "order_id": key, "amount_minor": 1, "payment_password": pws[a], "idempotency_key": key});
    // The load on the old primary: each acknowledged key with its event, and when it was sent.
    type Acked = HashMap<String, (u64, String, Instant)>;
    let acked: Arc<Mutex<Acked>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..4u64 {
        let (acked, stop) = (acked.clone(), stop.clone());
        let addr = primary.addr;
        let bodies: Vec<Value> = (0..2000u64)
            .map(|i| pay(((t + i) % 8) as usize, &format!("old-{t}-{i}")))
            .collect();
        load.spawn(async move {
            let mut client = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
            for (i, body) in bodies.into_iter().enumerate() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let a = (t + i as u64) % 8;
                let sent = Instant::now();
                match client
                    .post_json(&format!("/v1/accounts/acct-{a}/payments"), &body)
                    .await
                {
                    Ok((s, v)) if s.as_u16() == 201 => {
                        let key = body["idempotency_key"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().insert(
                            key,
                            (
                                v["event"]["seq"].as_u64().unwrap(),
                                v["hash"].as_str().unwrap().to_owned(),
                                sent,
                            ),
                        );
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        client = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The old primary stops answering (a long pause, a partition): its clients wait.
    signal(&primary, "STOP");
    let url = format!("http://{}", replica.addr);
    let (code, out, err) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || run_cli(&["promote", "--url", &url, "--token", ALL]))
            .await
            .unwrap()
    };
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
    let promoted_at = Instant::now();
    let mut new = bindledger::adapters::http::client::Client::new(replica.addr, Some(ALL.into()));
    for i in 0..20 {
        let a = i % 8;
        let (status, v) = new
            .post_json(&format!("/v1/accounts/acct-{a}/payments"), &pay(a, &format!("new-{i}")))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
    }
    // The old primary comes back, its clients still sending.
    signal(&primary, "CONT");
    let mut old = bindledger::adapters::http::client::Client::new(primary.addr, Some(ALL.into()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, relay) = old.get_json("/v1/relay").await.unwrap();
        if relay["state"] == "fenced" {
            break;
        }
        assert!(Instant::now() < deadline, "the old primary never found out: {relay}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It takes no more commands.
    let (status, v) = old
        .post_json("/v1/accounts/acct-1/payments", &pay(1, "to-the-fenced-one"))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 421, "{v}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    // More on the new primary, after what the old one wrote past the fences.
    for i in 20..40 {
        let a = i % 8;
        let (status, v) = new
            .post_json(&format!("/v1/accounts/acct-{a}/payments"), &pay(a, &format!("new-{i}")))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "the old primary was under load: {}", acked.len());
    let late: Vec<&String> = acked
        .iter()
        .filter(|(_, (_, _, sent))| *sent > promoted_at)
        .map(|(k, _)| k)
        .collect();
    assert!(late.is_empty(), "acknowledged after the promotion: {late:?}");
    // The new primary publishes everything, past the old one's messages.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, relay) = new.get_json("/v1/relay").await.unwrap();
        if relay["lag_events"] == 0 && relay["state"] != "backoff" {
            break;
        }
        assert!(Instant::now() < deadline, "the new primary's relay: {relay}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing the old primary derived (alerts, notifications, checkpoints) made the new
    // primary's other topics refuse it: those go out only once their events are in the chain.
    let (_, relays) = new.get_json("/v1/relays").await.unwrap();
    for name in ["alerts", "notifications", "checkpoints"] {
        assert!(
            relays[name]["last_error"].is_null() && relays[name]["state"] != "backoff",
            "{name}: {relays}"
        );
    }
    // Restarted, the old primary quarantines what the chain does not hold and follows it.
    primary.kill();
    let old_log = log_of_dir(&primary_dir);
    let rejoined = spawn_server(&primary_dir, &dir.path().join("primary.log"), &refs(&primary_env));
    let mut old = bindledger::adapters::http::client::Client::new(rejoined.addr, Some(ALL.into()));
    let (_, health) = new.get_json("/healthz").await.unwrap();
    let target = health["events"].as_u64().unwrap_or_else(|| panic!("{health}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, h) = old.get_json("/healthz").await.unwrap();
        assert_eq!(h["role"], "replica", "{h}");
        if h["events"].as_u64() == Some(target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined node: {h}, the primary: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = old
        .post_json("/v1/accounts/acct-1/payments", &pay(1, "to-the-rejoined-one"))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 421);
    assert_eq!(rejoined.terminate(), Some(0));
    assert_eq!(replica.terminate(), Some(0));
    let promoted = log_of_dir(&replica_dir);
    assert!(
        log_of_dir(&primary_dir) == promoted,
        "the rejoined node's log is the new primary's"
    );
    assert!(
        dir.path().join("primary.fenced-epoch-0").join("log").exists(),
        "the old directory is kept"
    );
    let quarantined: Vec<Vec<u8>> = std::fs::read_dir(&primary_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("quarantine-"))
        .flat_map(|f| {
            std::fs::read(f)
                .unwrap()
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    // Every event of its old log is in the chain or in the quarantine, and nothing quarantined
    // was acknowledged.
    let head = old_log.iter().zip(&promoted).take_while(|(a, b)| a == b).count();
    assert_eq!(
        &old_log[head..],
        &quarantined[..],
        "the quarantine holds the old log past the chain"
    );
    assert!(!quarantined.is_empty(), "the old primary wrote past the chain");
    for bytes in &quarantined {
        let e = bindledger_events::decode(bytes).unwrap();
        let key = e.idempotency_key.expect("each with its idempotency key");
        assert!(!acked.contains_key(&key), "{key} was acknowledged, yet quarantined");
    }
    // One chain: what a reader of the topic rebuilds is the new primary's log.
    let restored_dir = dir.path().join("restored");
    restore(&restored_dir, &["--brokers", &broker.addr, "--topic", &topics[0]]);
    let restored = log_of_dir(&restored_dir);
    assert_eq!(restored.len(), promoted.len());
    assert!(restored == promoted, "the topic's chain is the new primary's log");
    // Served, the restored directory continues the chain in an epoch of its own (the restore
    // fenced the topic with the next one): its relay finds its own log on the topic and is not
    // fenced by it.
    std::fs::copy(replica_dir.join("checkpoint.key"), restored_dir.join("checkpoint.key")).unwrap();
    let served = spawn_server(&restored_dir, &dir.path().join("restored.log"), &refs(&primary_env));
    let mut client = bindledger::adapters::http::client::Client::new(served.addr, Some(ALL.into()));
    let (_, h) = client.get_json("/healthz").await.unwrap();
    assert_eq!(
        (h["role"].as_str(), h["epoch"].as_u64()),
        (Some("primary"), Some(2)),
        "{h}"
    );
    let (status, v) = client
        .post_json("/v1/accounts/acct-2/payments", &pay(2, "after-the-restore"))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, relay) = client.get_json("/v1/relay").await.unwrap();
        if relay["state"] == "idle" && relay["lag_events"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the restored ledger's relay: {relay}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served.terminate(), Some(0));
    // The topic holds the fences, and what the old primary wrote past them: the rules dropped it.
    let messages = read_topic(&broker.addr, &topics[0]);
    let fences = messages.iter().filter(|m| m.headers.contains_key("fence")).count();
    let events = messages.len() - fences;
    assert_eq!(
        fences, 6,
        "one fence per partition by the promotion, one by the restore"
    );
    assert!(
        events > promoted.len() + 1,
        "the old primary wrote past the fences: {events} messages, {} in the chain",
        promoted.len()
    );
    eprintln!(
        "zombie: {} acknowledged by the old primary, {} events in the chain, {} more on the topic, {} quarantined",
        acked.len(),
        promoted.len(),
        events - promoted.len() - 1,
        quarantined.len()
    );
    // The analytics consumer skips the fences and drops what came after them in a partition.
    let (code, out, err) = run_cli(&[
        "consume",
        "--brokers",
        &broker.addr,
        "--topic",
        &topics[0],
        "--group",
        "zombie-analytics",
        "--idle-exit-ms",
        "3000",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["fences"], 6, "{report}");
    assert_eq!(report["undecodable"], 0, "{report}");
    assert!(report["fenced"].as_u64().unwrap() >= 1, "{report}");
    let by_key = by_key(&promoted);
    for (key, (seq, hash, _)) in &acked {
        assert_eq!(by_key.get(key), Some(&vec![(*seq, hash.clone())]), "acknowledged {key}");
    }
    for i in 0..40 {
        assert_eq!(by_key.get(&format!("new-{i}")).map(Vec::len), Some(1), "new-{i}");
    }
    let (code, out, err) = run_cli(&["verify", "--data-dir", replica_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
}

/// The chain an independent reader takes from `topic` (the fence rules applied): each event's
/// seq and bytes.
fn chain_on(brokers: &str, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    bindledger::adapters::kafka::reader::read_topic(client, topic)
        .unwrap()
        .map(|r| {
            let bytes = r.unwrap();
            (bindledger_events::decode(&bytes).unwrap().seq, bytes)
        })
        .collect()
}

/// Waits until the node's events relay has published its whole log.
async fn published(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = get(server, "/v1/relay").await;
        if v["position"].as_u64() == Some(server.ledger.log_len()) && server.ledger.log_len() > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "not published: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression (issue 26, item 1): a primary killed while its relay had events in flight to
/// several partitions left the topic ending in a tail with a hole (event 239 missing, 245
/// there), and `bindledger restore` refused the whole topic. The hole is made here with a raw
/// producer: two messages past a missing event. The restore takes the chain up to the hole,
/// reports the tail, and fences it with a new epoch; an independent reader then sees the chain
/// without the tail; a replica catches up; the restored node writes on in its epoch and every
/// reader sees one chain (no seq twice); and the replica, promoted, continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_topic_is_restored_up_to_its_hole_and_the_tail_is_fenced() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let k = kafka(&broker.addr, "torn");
    let checkpoints_topic = fresh_topic("torn-checkpoints");
    let mut pc: Config = test_config(&dir.path().join("primary"));
    pc.kafka = k.clone();
    pc.checkpoints.topic = checkpoints_topic.clone();
    let primary = TestServer::start(pc).await;
    let mut c = primary.client(ALL);
    bind_eight(&mut c, &primary.gateway).await;
    published(&primary).await;
    let head = primary.ledger.log_len();
    let original: Vec<Vec<u8>> = (1..=head)
        .map(|s| primary.ledger.event_bytes(s).unwrap().unwrap().to_vec())
        .collect();
    primary.shutdown().await;
    // The torn tail: events head+2 and head+3 landed, head+1 never did.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for (p, seq) in [(0, head + 2), (2, head + 3)] {
        let seq_text = seq.to_string();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "seq",
                value: Some(seq_text.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "epoch",
                value: Some("0"),
            });
        producer
            .send(
                FutureRecord::to(&k.topic)
                    .partition(p)
                    .key("torn")
                    .payload(&original[0])
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    // The restore: the chain to the hole, the tail reported, the topics fenced.
    let restored = dir.path().join("restored");
    let stdout = restore(
        &restored,
        &[
            "--brokers",
            &broker.addr,
            "--topic",
            &k.topic,
            "--checkpoints-topic",
            &checkpoints_topic,
        ],
    );
    assert!(
        stdout.contains(&format!(
            "event {} is not on it, but 2 later message(s) are (seqs {}, {}",
            head + 1,
            head + 2,
            head + 3
        )),
        "{stdout}"
    );
    assert!(stdout.contains("fenced the topics with epoch 1"), "{stdout}");
    assert_eq!(
        log_of_dir(&restored),
        original,
        "the chain up to the hole, byte for byte"
    );
    // An independent reader drops the fenced tail: the chain, nothing past it.
    let chain: Vec<u64> = chain_on(&broker.addr, &k.topic).iter().map(|(s, _)| *s).collect();
    assert_eq!(chain, (1..=head).collect::<Vec<_>>());

    // A replica catches up with the torn, fenced topic.
    let mut rc: Config = test_config(&dir.path().join("replica"));
    rc.kafka = k.clone();
    rc.replica.enabled = true;
    let replica = TestServer::start(rc).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.ledger.log_len() < head {
        assert!(
            Instant::now() < deadline,
            "the replica is at {}",
            replica.ledger.log_len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The restored node writes on, in its epoch; every reader sees one chain.
    let mut sc: Config = test_config(&restored);
    sc.kafka = k.clone();
    sc.checkpoints.topic = checkpoints_topic.clone();
    let server = TestServer::start(sc).await;
    let mut c = server.client(ALL);
    for a in 20..22u64 {
        let (status, v) = c
            .post_json(
                &format!("/v1/accounts/after-{a}/bindings"),
                &json!({"provider": "alipay", "wallet_account": phone(a), "payment_password": server.gateway.password_for(&alipay(), &phone(a))}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
    }
    published(&server).await;
    let chain = chain_on(&broker.addr, &k.topic);
    let seqs: Vec<u64> = chain.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=head + 2).collect::<Vec<_>>(), "one chain, no seq twice");
    for (seq, bytes) in &chain {
        assert_eq!(
            bytes,
            &server.ledger.event_bytes(*seq).unwrap().unwrap().to_vec(),
            "event {seq}"
        );
    }
    caught_up(&replica, &server).await;
    same_log(&replica, &server);

    // The replica, promoted, continues the same chain.
    let head = server.ledger.log_len();
    server.shutdown().await;
    let (status, v) = replica
        .client(ALL)
        .post_json("/v1/admin/promote", &json!({}))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), v["events"].as_u64()), (200, Some(head)), "{v}");
    let (status, v) = replica
        .client(ALL)
        .post_json(
            "/v1/accounts/after-promotion/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(30), "payment_password": replica.gateway.password_for(&alipay(), &phone(30))}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    published(&replica).await;
    let seqs: Vec<u64> = chain_on(&broker.addr, &k.topic).iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=head + 1).collect::<Vec<_>>());
    replica.shutdown().await;
}

/// Nodes of one ledger in a directory of their own, on fresh topics of `broker`, sharing one
/// checkpoint key: what a primary and its replicas share.
struct Nodes {
    dir: tempfile::TempDir,
    kafka: KafkaConfig,
    checkpoints_topic: String,
    key_file: std::path::PathBuf,
    checkpoint_every_events: u64,
}

impl Nodes {
    fn new(broker: &Broker, tag: &str, checkpoint_every_events: u64) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        Nodes {
            kafka: kafka(&broker.addr, tag),
            checkpoints_topic: fresh_topic(&format!("{tag}-checkpoints")),
            key_file: dir.path().join("checkpoint.key"),
            dir,
            checkpoint_every_events,
        }
    }

    /// The configuration of the node `name`, a replica or not.
    fn config(&self, name: &str, replica: bool) -> Config {
        let mut c: Config = test_config(&self.dir.path().join(name));
        c.kafka = self.kafka.clone();
        c.checkpoints.topic = self.checkpoints_topic.clone();
        c.checkpoints.key_file = Some(self.key_file.clone());
        c.checkpoints.every_events = self.checkpoint_every_events;
        c.replica.enabled = replica;
        c
    }
}

/// A node's `/healthz` replica report: (events, state, lag_events).
async fn replica_health(server: &TestServer) -> (u64, String, u64) {
    let (_, h) = get(server, "/healthz").await;
    (
        h["events"].as_u64().unwrap_or(0),
        h["replica"]["state"].as_str().unwrap_or("").to_owned(),
        h["replica"]["lag_events"].as_u64().unwrap_or(0),
    )
}

/// Regressions (issue 26, items 4 to 6): a replica's events relay reported the whole log as its
/// lag; a restarted replica reported the state `""` and lag 0 while thousands of events behind;
/// a replica served no checkpoints while its primary served 7; and the replica that lost a
/// promotion race stopped following for good. Now: the standby relay has no lag, the follower's
/// lag is known from the start (events + lag = the topic's head in every report), a replica
/// keeps the primary's checkpoints, and the loser of a promotion race follows the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_tell_the_truth_and_the_loser_of_a_promotion_race_follows_the_winner() {
    let broker = Broker::start();
    let nodes = Nodes::new(&broker, "truth", 20);
    let config = |name: &str, replica: bool| nodes.config(name, replica);
    let primary = TestServer::start(config("primary", false)).await;
    workload(&primary, 10, "before").await;
    published(&primary).await;
    let replica = TestServer::start(config("replica", true)).await;
    caught_up(&replica, &primary).await;
    // The standby relay: nothing waiting. The checkpoints: the primary's.
    let (_, relay) = get(&replica, "/v1/relay").await;
    assert_eq!(
        (relay["state"].as_str(), relay["lag_events"].as_u64()),
        (Some("standby"), Some(0)),
        "{relay}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, p) = primary
            .client(ALL)
            .send(hyper::Method::GET, "/v1/checkpoints", None)
            .await
            .unwrap();
        let (_, r) = replica
            .client(ALL)
            .send(hyper::Method::GET, "/v1/checkpoints", None)
            .await
            .unwrap();
        let count = p.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        if p == r && count >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica's checkpoints:\n{}\nthe primary's:\n{}",
            String::from_utf8_lossy(&r),
            String::from_utf8_lossy(&p)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restart far behind: every report counts the events still to come.
    replica.shutdown().await;
    for a in 0..300u64 {
        bind_wallet(&primary.ledger, &primary.gateway, &format!("later-{a}"), 1000 + a).await;
    }
    published(&primary).await;
    let head = primary.ledger.log_len();
    let replica = TestServer::start(config("replica", true)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (events, state, lag) = replica_health(&replica).await;
        assert_ne!(state, "", "a documented state");
        assert!(
            state != "following" || events + lag == head,
            "{events} events and a lag of {lag}, of {head}"
        );
        if events == head {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {events} of {head} ({state})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A promotion race between two replicas: the loser follows the winner.
    let other = TestServer::start(config("other", true)).await;
    caught_up(&other, &primary).await;
    primary.shutdown().await;
    let (a, b) = tokio::join!(
        async {
            replica
                .client(ALL)
                .post_json("/v1/admin/promote", &json!({}))
                .await
                .unwrap()
                .0
                .as_u16()
        },
        async {
            other
                .client(ALL)
                .post_json("/v1/admin/promote", &json!({}))
                .await
                .unwrap()
                .0
                .as_u16()
        },
    );
    let (winner, loser) = match (a, b) {
        (200, 200) => panic!("both replicas were promoted"),
        (200, _) => (&replica, &other),
        (_, 200) => (&other, &replica),
        // Each came first in some partition: both stay replicas, and a second try wins.
        _ => {
            let (status, v) = replica
                .client(ALL)
                .post_json("/v1/admin/promote", &json!({}))
                .await
                .unwrap();
            assert_eq!(status.as_u16(), 200, "{v}");
            (&replica, &other)
        }
    };
    let (_, st, _) = replica_health(loser).await;
    assert!(st == "following" || st == "caught_up", "the loser: {st}");
    let mut c = winner.client(ALL);
    for a in 0..5u64 {
        let (status, v) = c
            .post_json(
                &format!("/v1/accounts/won-{a}/bindings"),
                &json!({"provider": "alipay", "wallet_account": phone(5000 + a), "payment_password": "000000"}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
    }
    caught_up(loser, winner).await;
    same_log(loser, winner);
    other.shutdown().await;
    replica.shutdown().await;
}

/// Puts a checkpoint on the checkpoints topic as a primary of `epoch` would.
async fn publish_checkpoint(
    brokers: &str,
    topic: &str,
    cp: &bindledger::ledger::checkpoint::SignedCheckpoint,
    epoch: u64,
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let (seq, epoch) = (cp.seq.to_string(), epoch.to_string());
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "seq",
            value: Some(seq.as_str()),
        })
        .insert(rdkafka::message::Header {
            key: "epoch",
            value: Some(epoch.as_str()),
        });
    producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(&seq)
                .payload(&serde_json::to_vec(cp).unwrap())
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// Regressions (issue 26, items 2 and 3): after a local-mode failover the fenced primary's
/// checkpoint over its own head (not the chain's event of that seq) made `restore
/// --public-key` fail as "the topic was rewritten", and the fenced primary's checkpoints,
/// published after its fence, left the topic out of order and with a seq twice. Here the
/// fenced primary's two checkpoints are put on the topic as it would have (signed with the
/// ledger's key over events the chain does not hold, one before the promotion's fence and one
/// after it). The new primary publishes past them; a restore with the public key succeeds and
/// drops them; the topic read by the rules is in order, each checkpoint once, each over the
/// chain's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primarys_checkpoints_are_dropped_and_never_block_a_restore() {
    use bindledger::adapters::kafka::checkpoints::{fenced_checkpoint, read_published};
    let broker = Broker::start();
    let nodes = Nodes::new(&broker, "cpfence", 8);
    let config = |name: &str, replica: bool| nodes.config(name, replica);
    let (dir, k) = (&nodes.dir, nodes.kafka.clone());
    let (checkpoints_topic, key_file) = (nodes.checkpoints_topic.clone(), nodes.key_file.clone());
    let primary = TestServer::start(config("primary", false)).await;
    let mut c = primary.client(ALL);
    bind_eight(&mut c, &primary.gateway).await;
    published(&primary).await;
    let replica = TestServer::start(config("replica", true)).await;
    caught_up(&replica, &primary).await;
    let head = primary.ledger.log_len();
    primary.shutdown().await;
    // The old primary signed its own head past the chain (local mode: its relay was behind).
    let key = bindledger::ledger::checkpoint::CheckpointKey::load_or_create(&key_file).unwrap();
    let orphan = |seq: u64| {
        key.sign(
            seq,
            bindledger_events::hash_bytes(format!("not the chain's {seq}").as_bytes()),
            chrono::Utc::now(),
        )
    };
    publish_checkpoint(&broker.addr, &checkpoints_topic, &orphan(head + 2), 0).await;
    // The promotion fences both topics; the new primary writes on; the old one publishes again.
    let (status, v) = replica
        .client(ALL)
        .post_json("/v1/admin/promote", &json!({}))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{v}");
    publish_checkpoint(&broker.addr, &checkpoints_topic, &orphan(head + 9), 0).await;
    let mut c = replica.client(ALL);
    for a in 0..16u64 {
        let (status, v) = c
            .post_json(
                &format!("/v1/accounts/next-{a}/bindings"),
                &json!({"provider": "alipay", "wallet_account": phone(100 + a), "payment_password": "000000"}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
    }
    published(&replica).await;
    // The new primary's checkpoints go out past the fenced primary's, without a refusal.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, relays) = get(&replica, "/v1/relays").await;
        let cp = &relays["checkpoints"];
        assert!(cp["last_error"].is_null(), "{relays}");
        if cp["position"].as_u64().unwrap_or(0) > head + 9 {
            break;
        }
        assert!(Instant::now() < deadline, "{relays}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let chain: Vec<Vec<u8>> = (1..=replica.ledger.log_len())
        .map(|s| replica.ledger.event_bytes(s).unwrap().unwrap().to_vec())
        .collect();
    replica.shutdown().await;
    // Read by the rules: in order, once each, each over the chain's event.
    let (published, _) = read_published(&k, &checkpoints_topic).unwrap();
    let starts = [(0, 1), (1, head + 1)];
    let kept: Vec<_> = published
        .iter()
        .filter(|p| !fenced_checkpoint(p.epoch, p.checkpoint.seq, &starts))
        .collect();
    let seqs: Vec<u64> = kept.iter().map(|p| p.checkpoint.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once each: {seqs:?}");
    assert!(seqs.iter().any(|s| *s > head), "the new primary's: {seqs:?}");
    for p in &kept {
        let bytes = &chain[p.checkpoint.seq as usize - 1];
        assert_eq!(
            bindledger_events::hash_bytes(bytes),
            p.checkpoint.head,
            "checkpoint {}",
            p.checkpoint.seq
        );
    }
    assert!(
        !seqs.contains(&(head + 9)),
        "the one after the fence is dropped (rule 1)"
    );
    // A restore that checks the checkpoints succeeds and drops the fenced primary's.
    let restored = dir.path().join("restored");
    let stdout = restore(
        &restored,
        &[
            "--brokers",
            &broker.addr,
            "--topic",
            &k.topic,
            "--checkpoints-topic",
            &checkpoints_topic,
            "--public-key",
            &key.public_hex(),
        ],
    );
    assert!(stdout.contains("1 of a fenced primary dropped"), "{stdout}");
    assert_eq!(log_of_dir(&restored), chain);
}

/// Regressions (issue 26, item 7): a fenced primary's `421` carried `"primary": null`, and an
/// old primary killed while frozen needed two restarts to rejoin. The promoted node writes its
/// `http.advertised_url` in its fences; a primary that was down during the promotion reads the
/// topic's last messages as it starts, finds the newer epoch, and rejoins as a replica in that
/// one start, naming its successor in its `421`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_fenced_while_down_rejoins_in_one_start_and_names_its_successor() {
    let broker = Broker::start();
    let nodes = Nodes::new(&broker, "successor", 1000);
    let primary = TestServer::start(nodes.config("primary", false)).await;
    let mut c = primary.client(ALL);
    bind_eight(&mut c, &primary.gateway).await;
    published(&primary).await;
    let mut rc = nodes.config("replica", true);
    rc.http.advertised_url = "http://successor.test:8080".into();
    let replica = TestServer::start(rc).await;
    caught_up(&replica, &primary).await;
    // The primary is down (killed while paused) when the replica is promoted.
    primary.shutdown().await;
    let (status, v) = replica
        .client(ALL)
        .post_json("/v1/admin/promote", &json!({}))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{v}");
    let (status, v) = replica
        .client(ALL)
        .post_json(
            "/v1/accounts/after/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(50), "payment_password": "000000"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    published(&replica).await;
    // One start: it finds the fence, rejoins as a replica and names its successor.
    let old = TestServer::start(nodes.config("primary", false)).await;
    let (_, h) = get(&old, "/healthz").await;
    assert_eq!(h["role"], "replica", "{h}");
    let (status, v) = old
        .client(ALL)
        .post_json(
            "/v1/accounts/again/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(51), "payment_password": "000000"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 421, "{v}");
    assert_eq!(v["primary"], "http://successor.test:8080", "{v}");
    caught_up(&old, &replica).await;
    same_log(&old, &replica);
    old.shutdown().await;
    replica.shutdown().await;
}
