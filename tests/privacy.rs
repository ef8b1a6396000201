//! Personal data sealed at rest and erasure that reaches every copy (issue 30): the fields that
//! identify a person are on disk, in the feed and on the topic only as ciphertext under their
//! account's data key; erasure destroys the key on the primary, on a replica and in a restore,
//! and the chain, the checkpoints and every verifier still pass. The master keys live in a
//! file or in a PKCS#11 token (SoftHSM2).

mod common;

use bindledger::config::{Config, KafkaConfig, Role, TokenConfig};
use bindledger_events::Factor;
use common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const PRIVACY: &str = "privacy-token-0123456789";
const IP: &str = "198.51.100.77";
const DEVICE: &str = "device-7f3a9c41";
const AGENT: &str = "Mozilla/5.0 (privacy-probe)";

fn config(dir: &Path) -> Config {
    let mut c = test_config(dir);
    c.tokens.push(TokenConfig {
        token: PRIVACY.into(),
        roles: vec![Role::Privacy],
        name: Some("dpo".into()),
        client_cert_sha256: None,
    });
    c
}

fn context() -> Value {
    json!({"channel": "app", "ip": IP, "device_id": DEVICE, "user_agent": AGENT})
}

/// Binds wallet `n` to `account` over HTTP with the personal context, then pays twice; returns
/// the bind's answer.
async fn bind_and_pay(s: &TestServer, account: &str, n: u64) -> Value {
    let mut w = s.client(WRITER);
    let pw = s.gateway.password_for(&alipay(), &phone(n));
    let sms = s.gateway.factor_code_for(&alipay(), &phone(n), Factor::Sms);
    let (status, bound) = w
        .post_json(
            &format!("/v1/accounts/{account}/bindings"),
            &json!({"provider": "alipay", "wallet_account": phone(n), "payment_password": pw,
                    "factor": {"kind": "sms", "code": sms}, "context": context()}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{bound}");
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let (status, paid) = w
            .post_json(
                &format!("/v1/accounts/{account}/payments"),
                &json!({"binding_id": binding, "order_id": format!("{account}-o{i}"), "amount_minor": 100 + i,
                        "payment_password": pw, "context": context()}),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{paid}");
    }
    bound
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let (status, v) = s.client(token).get_json(path).await.unwrap();
    (status.as_u16(), v)
}

async fn erase(s: &TestServer, token: &str, account: &str, body: Value) -> (u16, Value) {
    let (status, v) = s
        .client(token)
        .post_json(&format!("/v1/accounts/{account}/erasure"), &body)
        .await
        .unwrap();
    (status.as_u16(), v)
}

/// What a reader sees of an account: the context of each event and each wallet's masked form.
async fn personal_view(s: &TestServer, account: &str) -> (Vec<Value>, Vec<Value>) {
    let (status, h) = get(s, READER, &format!("/v1/accounts/{account}/events")).await;
    assert_eq!(status, 200, "{h}");
    let contexts = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["context"].clone())
        .collect();
    let (status, b) = get(s, READER, &format!("/v1/accounts/{account}/bindings")).await;
    assert_eq!(status, 200, "{b}");
    let masked = b["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["wallet"]["masked"].clone())
        .collect();
    (contexts, masked)
}

fn assert_open(view: &(Vec<Value>, Vec<Value>), masked: &str) {
    assert!(!view.0.is_empty());
    for c in view.0.iter().take(3) {
        assert_eq!(c["ip"], IP, "{c}");
        assert_eq!(c["device_id"], DEVICE, "{c}");
        assert_eq!(c["user_agent"], AGENT, "{c}");
    }
    assert_eq!(view.1, vec![json!(masked)]);
}

fn assert_erased(view: &(Vec<Value>, Vec<Value>)) {
    for c in view.0.iter().take(3) {
        assert_eq!(c["ip"], "[erased]", "{c}");
        assert_eq!(c["device_id"], "[erased]", "{c}");
        assert_eq!(c["user_agent"], "[erased]", "{c}");
    }
    assert_eq!(view.1, vec![json!("[erased]")]);
}

/// Every file under `dir`, read whole: none may hold any of `needles`.
fn assert_no_file_holds(dir: &Path, needles: &[&str]) {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            files += 1;
            for n in needles {
                assert!(
                    memchr::memmem::find(&bytes, n.as_bytes()).is_none(),
                    "{} holds {n:?} in the clear",
                    p.display()
                );
            }
        }
    }
    assert!(files > 3, "the data directory has its files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_are_sealed_at_rest_and_erasure_leaves_a_chain_every_verifier_passes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start(config(&data)).await;
    let bound = bind_and_pay(&s, "alice", 1).await;
    bind_and_pay(&s, "bob", 2).await;
    // The caller's answer shows what it sent; its hash is the stored, sealed bytes'.
    assert_eq!(bound["event"]["payload"]["wallet"]["masked"], "1******0001");
    assert_eq!(bound["event"]["context"]["ip"], IP);
    assert_open(&personal_view(&s, "alice").await, "1******0001");

    // The feed (the stored bytes, what the topic and exports carry) holds none of them.
    let (status, feed) = s
        .client(AUDITOR)
        .send(hyper::Method::GET, "/v1/events", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let feed = String::from_utf8(feed.to_vec()).unwrap();
    for needle in [IP, DEVICE, AGENT, "1******0001", "1******0002"] {
        assert!(!feed.contains(needle), "the feed holds {needle:?}");
    }
    assert_eq!(
        feed.matches("\"sealed:").count(),
        2 * 3 * 4,
        "3 context fields and 1 masked wallet per event"
    );
    let mut verifier = bindledger_events::ChainVerifier::new();
    for line in feed.lines() {
        let (_, hash) = verifier.push(line.as_bytes()).unwrap();
        assert_eq!(bindledger_events::hash_bytes(line.as_bytes()), hash);
    }
    let first = feed.lines().next().unwrap();
    assert_eq!(
        bound["hash"].as_str(),
        Some(bindledger_events::hash_bytes(first.as_bytes()).to_hex().as_str()),
        "the answer's hash is the stored event's"
    );

    // Wrong passwords on alice's binding raise an alert; the alerts are a function of the log.
    let mut w = s.client(WRITER);
    for i in 0..6 {
        let (status, v) = w
            .post_json(
                "/v1/accounts/alice/payments",
                &json!({"binding_id": bound["event"]["payload"]["binding_id"], "order_id": format!("bad-{i}"),
                        "amount_minor": 1, "payment_password": "not-it", "context": context()}),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    // The alerts once the monitor has folded the whole log and the store holds them (two reads
    // 200 ms apart agree).
    let alerts_of = async |s: &TestServer| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let monitor = s.node.as_ref().unwrap().monitor.as_ref().unwrap().status().clone();
        let mut last = Value::Null;
        loop {
            let folded = monitor.position.load(std::sync::atomic::Ordering::Acquire) >= s.ledger.log_len();
            let (_, a) = get(s, SECURITY, "/v1/alerts?account=alice").await;
            let alerts = a["alerts"].clone();
            if folded && alerts.as_array().is_some_and(|l| !l.is_empty()) && alerts == last {
                return alerts;
            }
            assert!(Instant::now() < deadline, "the alerts did not settle: {a}");
            last = alerts;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let alerts_before = alerts_of(&s).await;
    assert!(!alerts_before.as_array().unwrap().is_empty(), "an alert on alice");

    // Erasure: the privacy role alone, confirmed, of an account that exists.
    let (status, v) = erase(&s, ALL, "alice", json!({"confirm": true})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (status, v) = erase(&s, PRIVACY, "alice", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("confirmation_required")),
        "{v}"
    );
    let (status, v) = erase(&s, PRIVACY, "nobody", json!({"confirm": true})).await;
    assert_eq!(status, 404, "{v}");
    assert_open(&personal_view(&s, "alice").await, "1******0001");
    let (status, v) = erase(&s, PRIVACY, "alice", json!({"confirm": true})).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["event_type"], "subject_erased");
    assert_eq!(
        v["event"]["payload"],
        json!({"type": "subject_erased", "operator": "dpo"})
    );
    assert_erased(&personal_view(&s, "alice").await);
    assert_open(&personal_view(&s, "bob").await, "1******0002");
    // The account takes no more commands; a second erasure is refused alike.
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap();
    let (status, v) = s
        .client(WRITER)
        .post_json(
            "/v1/accounts/alice/payments",
            &json!({"binding_id": binding, "order_id": "late", "amount_minor": 1, "payment_password": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), v["error"]["code"].as_str()),
        (410, Some("account_erased")),
        "{v}"
    );
    let (status, v) = erase(&s, PRIVACY, "alice", json!({"confirm": true})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (410, Some("account_erased")),
        "{v}"
    );
    let (_, keys) = get(&s, PRIVACY, "/v1/admin/keys").await;
    assert_eq!(keys["data_keys"], 1, "bob's alone: {keys}");
    // The rules need no personal field: the alerts stand, and the whole log replayed through
    // the rules in force (a backtest of the defaults) raises exactly them.
    assert_eq!(alerts_of(&s).await, alerts_before);
    let (status, bt) = s
        .client(SECURITY)
        .send(hyper::Method::POST, "/v1/rules/backtest", Some(Vec::new()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bt));
    let bt: Value = serde_json::from_slice(&bt).unwrap();
    assert_eq!(
        (
            bt["added_total"].as_u64(),
            bt["removed_total"].as_u64(),
            bt["changed_total"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{bt}"
    );
    s.shutdown().await;

    // On disk: no personal value anywhere in the data directory.
    assert_no_file_holds(&data, &[IP, DEVICE, AGENT, "1******0001", "1******0002"]);
    // The chain verifies, by the tool and by the independent verifier.
    let (code, out, err) = run_cli(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
    let export = dir.path().join("events.ndjson");
    let (code, _, err) = run_cli(&[
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "-o",
        export.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let exported = std::fs::read_to_string(&export).unwrap();
    for needle in [IP, DEVICE, AGENT, "1******0001", "1******0002"] {
        assert!(!exported.contains(needle), "the export holds {needle:?}");
    }
    let py = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/events/verify.py"))
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );

    // After a restart: still erased, and bob's still open (his key read back and unwrapped).
    let s = TestServer::start(config(&data)).await;
    assert_erased(&personal_view(&s, "alice").await);
    assert_open(&personal_view(&s, "bob").await, "1******0002");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_leaves_every_key_readable_and_destroys_the_generation_a_copy_was_wrapped_under() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start(config(&data)).await;
    bind_and_pay(&s, "carol", 3).await;
    bind_and_pay(&s, "dave", 4).await;
    let master = shared_master_keys(&data);
    let before = std::fs::read_to_string(&master).unwrap();
    let (_, k) = get(&s, PRIVACY, "/v1/admin/keys").await;
    assert_eq!(
        (k["current"].as_u64(), k["data_keys"].as_u64()),
        (Some(1), Some(2)),
        "{k}"
    );
    // A copy of the wrapped keys (a backup, the keys topic before compaction).
    let (status, v) = erase(&s, PRIVACY, "dave", json!({"confirm": true})).await;
    assert_eq!(status, 201, "{v}");
    let (status, r) = s
        .client(PRIVACY)
        .post_json("/v1/admin/keys/rotate", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (r["generation"].as_u64(), r["rewrapped"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let after = std::fs::read_to_string(&master).unwrap();
    let gen1 = before.lines().next().unwrap();
    assert!(
        !after.contains(gen1.split(' ').nth(1).unwrap()),
        "generation 1 is destroyed in the file"
    );
    assert!(after.starts_with("2 "), "{after}");
    assert_open(&personal_view(&s, "carol").await, "1******0003");
    assert_erased(&personal_view(&s, "dave").await);
    s.shutdown().await;
    let s = TestServer::start(config(&data)).await;
    assert_open(&personal_view(&s, "carol").await, "1******0003");
    s.shutdown().await;
}

fn kafka(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        topic: fresh_topic("privacy-events"),
        alerts_topic: fresh_topic("privacy-alerts"),
        partitions: 3,
        message_timeout_ms: 3000,
        backoff_ms_max: 500,
        ..KafkaConfig::default()
    }
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_and_a_restore_open_what_the_primary_opens_and_an_erasure_reaches_both() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let k = kafka(&broker.addr);
    let mut pc = config(&dir.path().join("primary"));
    pc.kafka = k.clone();
    let primary = TestServer::start(pc).await;
    bind_and_pay(&primary, "erin", 5).await;
    bind_and_pay(&primary, "frank", 6).await;

    let mut rc = config(&dir.path().join("replica"));
    rc.kafka = k.clone();
    rc.replica.enabled = true;
    rc.replica.primary_url = format!("http://{}", primary.addr);
    let replica = TestServer::start(rc).await;
    // The replica's log is the primary's; it opens what the primary opens once the wrapped keys
    // arrive on the keys topic.
    wait_for("the replica to open erin's fields", async || {
        replica.ledger.log_len() == primary.ledger.log_len()
            && personal_view(&replica, "erin").await.1 == vec![json!("1******0005")]
    })
    .await;
    assert_open(&personal_view(&replica, "erin").await, "1******0005");
    assert_eq!(
        personal_view(&replica, "frank").await,
        personal_view(&primary, "frank").await
    );
    // The topic holds the keys wrapped only: no record opens without the master key, and none
    // is a 32-byte key in the clear.
    let records = read_topic(&broker.addr, &format!("{}.keys", k.topic));
    assert!(records.len() >= 2, "{} records", records.len());
    for r in &records {
        assert_eq!(
            r.value.len(),
            4 + 12 + 32 + 16,
            "a wrapped key: generation, nonce, ciphertext, tag"
        );
    }

    let (status, v) = erase(&primary, PRIVACY, "erin", json!({"confirm": true})).await;
    assert_eq!(status, 201, "{v}");
    wait_for("the replica to apply the erasure", async || {
        personal_view(&replica, "erin").await.1 == vec![json!("[erased]")]
    })
    .await;
    assert_erased(&personal_view(&replica, "erin").await);
    assert_open(&personal_view(&replica, "frank").await, "1******0006");
    // The tombstone reaches the topic.
    wait_for("the keys topic's tombstone", async || {
        read_topic(&broker.addr, &format!("{}.keys", k.topic))
            .iter()
            .any(|r| r.key == "erin" && r.value.is_empty())
    })
    .await;
    // A rotation: the keys topic gets frank's key rewrapped; what it still holds of erin's
    // (tansu does not compact) is wrapped under generation 1, now destroyed.
    let (status, r) = primary
        .client(PRIVACY)
        .post_json("/v1/admin/keys/rotate", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{r}");
    wait_for("frank's rewrapped key on the topic", async || {
        read_topic(&broker.addr, &format!("{}.keys", k.topic))
            .iter()
            .any(|r| r.key == "frank" && r.value.starts_with(&2u32.to_be_bytes()))
    })
    .await;
    let master = std::fs::read_to_string(shared_master_keys(&dir.path().join("primary"))).unwrap();
    assert!(master.starts_with("2 ") && master.lines().count() == 1, "{master}");
    for r in read_topic(&broker.addr, &format!("{}.keys", k.topic)) {
        if r.key == "erin" && !r.value.is_empty() {
            assert!(
                r.value.starts_with(&1u32.to_be_bytes()),
                "erin's copies are of generation 1"
            );
        }
    }
    replica.shutdown().await;
    primary.shutdown().await;
    // No personal value in any byte of the events topic, read raw, nor of either node's files.
    for r in read_topic(&broker.addr, &k.topic) {
        for needle in [IP, DEVICE, AGENT, "1******0005", "1******0006"] {
            assert!(
                memchr::memmem::find(&r.value, needle.as_bytes()).is_none(),
                "the topic holds {needle:?}"
            );
        }
    }
    for node in ["primary", "replica"] {
        assert_no_file_holds(
            &dir.path().join(node),
            &[IP, DEVICE, AGENT, "1******0005", "1******0006"],
        );
    }

    // A restore from the topics after the rotation: frank's key comes back wrapped; erin's
    // does not.
    let restored = dir.path().join("restored");
    let out = std::process::Command::new(binary())
        .args(["restore", "--data-dir"])
        .arg(&restored)
        .args(["--brokers", &broker.addr, "--topic", &k.topic])
        .env("BINDLEDGER_SECRET", "2a".repeat(32))
        .env_remove("BINDLEDGER_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("data keys: 1 wrapped keys restored"), "{stdout}");
    let s = TestServer::start(config(&restored)).await;
    assert_erased(&personal_view(&s, "erin").await);
    assert_open(&personal_view(&s, "frank").await, "1******0006");
    s.shutdown().await;
    assert_no_file_holds(&restored, &[IP, DEVICE, AGENT, "1******0005", "1******0006"]);
    let (code, out, err) = run_cli(&["verify", "--data-dir", restored.to_str().unwrap()]);
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
}

#[test]
fn master_keys_in_a_pkcs11_token_seal_rotate_and_erase_and_a_wrong_pin_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm(dir.path());
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "4321\n").unwrap();
    let config = dir.path().join("bindledger.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nstore = \"pkcs11\"\npkcs11_module = \"{SOFTHSM_MODULE}\"\npkcs11_token = \"bindledger\"\npkcs11_pin_file = \"{}\"\n",
            pin.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let env = [
        ("SOFTHSM2_CONF", conf.to_str().unwrap()),
        ("BINDLEDGER_CONFIG", config.to_str().unwrap()),
        (
            "BINDLEDGER_TOKENS",
            &format!("writer+reader+auditor+security+privacy:{ALL}"),
        ),
    ];
    let server = spawn_server(&data, &log, &env);
    let url = format!("http://{}", server.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let view = |account: &'static str| {
        let addr = server.addr;
        async move {
            let mut c = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
            let (_, h) = c.get_json(&format!("/v1/accounts/{account}/events")).await.unwrap();
            h["events"][0]["context"]["ip"].clone()
        }
    };
    rt.block_on(async {
        let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
        for (account, n) in [("gina", 7), ("hank", 8)] {
            let body = json!({"provider": "wechat_pay", "wallet_account": phone(n), "payment_password": "000000", "context": context()});
            let (status, v) = c.post_json(&format!("/v1/accounts/{account}/bindings"), &body).await.unwrap();
            assert_eq!(status.as_u16(), 201, "{v}");
        }
        assert_eq!(view("gina").await, IP);
    });
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", &url, "--token", ALL]);
        run_cli(&all)
    };
    let (code, out, err) = cli(&["keys", "status"]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pkcs11 token \"bindledger\"") && out.contains("current generation: 1"),
        "{out}"
    );
    let (code, out, err) = cli(&["keys", "rotate"]);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("generation 2 is current; 2 data keys rewrapped"));
    let (code, out, err) = cli(&["erase", "gina"]);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8(out).unwrap().starts_with("erased: "));
    rt.block_on(async {
        assert_eq!(view("gina").await, "[erased]");
        assert_eq!(view("hank").await, IP);
    });
    server.terminate();
    // No master key file: the keys are on the token alone.
    assert!(!shared_master_keys(&data).exists() && !data.join("master.keys").exists());

    // Started again: the token's generation 2 opens hank's key; generation 1 is gone.
    let server = spawn_server(&data, &log, &env);
    rt.block_on(async {
        let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
        let (_, h) = c.get_json("/v1/accounts/hank/events").await.unwrap();
        assert_eq!(h["events"][0]["context"]["ip"], IP, "{h}");
        let (_, k) = c.get_json("/v1/admin/keys").await.unwrap();
        assert_eq!(k["generations"], json!([2]), "{k}");
    });
    server.terminate();

    // A wrong PIN: the start stops with the token's error, naming no PIN.
    std::fs::write(&pin, "9999\n").unwrap();
    let out = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("PKCS#11: logging in"), "{stderr}");
    assert!(!stderr.contains("9999"), "{stderr}");
}
