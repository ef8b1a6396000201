//! Shards by account (issue 29): three `bindledger serve` processes, each one shard of a
//! cluster, with a real broker holding the shard map. Commands and reads sent to any node reach
//! the shard that owns the account (forwarded, one hop, with the owner's answer); every
//! acknowledged event is in its owner's chain and on its owner's topic exactly once, with the
//! shard in its headers; a request that asks not to be forwarded is answered `421 misdirected`
//! naming the owner, and changes nothing; the caller's roles cross the hop.

mod common;

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::domain::shard::{slot_of, ShardMap};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const CLUSTER: &str = "cluster-token-0123456789";
const SHARDS: usize = 3;

struct Shard {
    id: String,
    url: String,
    _process: ServerProcess,
}

fn config_file(dir: &Path, shard: &str, brokers: &str, cluster_topic: &str, prefix: &str) -> std::path::PathBuf {
    config_with(dir, shard, shard, brokers, cluster_topic, prefix, "", "")
}

#[allow(clippy::too_many_arguments)]
fn config_with(
    dir: &Path,
    name: &str,
    shard: &str,
    brokers: &str,
    cluster_topic: &str,
    prefix: &str,
    top: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{top}[cluster]\nshard = \"{shard}\"\ntopic = \"{cluster_topic}\"\n\n\
             [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{prefix}.{shard}.events\"\nalerts_topic = \"{prefix}.{shard}.alerts\"\n\
             notifications_topic = \"\"\npartitions = 3\nbackoff_ms_max = 500\n\n\
             [checkpoints]\ntopic = \"{prefix}.{shard}.checkpoints\"\nevery_seconds = 1\n\n\
             [gateway.simulated]\nseed = 11\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\n\
             network_error_per_mille = 0\nbalance_minor_min = 100000000000\nbalance_minor_max = 100000000000\n{extra}"
        ),
    )
    .unwrap();
    path
}

async fn send(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, Value) {
    let client = reqwest::Client::new();
    let mut rb = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b.to_string());
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = r.text().await.unwrap();
    (status, h, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn events_on(url: &str) -> u64 {
    let (s, _, v) = send(reqwest::Method::GET, &format!("{url}/v1/status"), ALL, None, &[]).await;
    assert_eq!(s, 200, "{v}");
    v["health"]["events"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_to_any_shard_land_once_in_the_owners_chain() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cluster_topic = fresh_topic("cluster");
    let prefix = fresh_topic("shards");
    let ports: Vec<u16> = (0..SHARDS).map(|_| free_port()).collect();
    let ids: Vec<String> = (0..SHARDS).map(|i| format!("s{i}")).collect();

    // The operator writes the first map; a second init is refused.
    let init = init_args(&broker.addr, &cluster_topic, &prefix, &ids, &ports);
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&init);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("version 1"));
    let (code, _, err) = run_cli(&init);
    assert_eq!(code, 1, "a second init must be refused");
    assert!(err.contains("version 1"), "{err}");

    let tokens = format!("writer+reader+auditor+security:{ALL},reader:{READER},cluster:{CLUSTER}");
    let shards: Vec<Shard> = (0..SHARDS)
        .map(|i| {
            let config = config_file(dir.path(), &ids[i], &broker.addr, &cluster_topic, &prefix);
            let env = [
                ("BINDLEDGER_CONFIG", config.to_str().unwrap()),
                ("BINDLEDGER_TOKENS", tokens.as_str()),
            ];
            let p = spawn_server_at(
                &dir.path().join(&ids[i]),
                &dir.path().join(format!("{}.log", ids[i])),
                &format!("127.0.0.1:{}", ports[i]),
                &env,
            );
            Shard {
                id: ids[i].clone(),
                url: format!("http://127.0.0.1:{}", ports[i]),
                _process: p,
            }
        })
        .collect();
    let (_, _, m) = send(
        reqwest::Method::GET,
        &format!("{}/v1/cluster", shards[0].url),
        ALL,
        None,
        &[],
    )
    .await;
    let map: ShardMap = serde_json::from_value(m["map"].clone()).unwrap();
    assert_eq!((m["shard"].as_str(), map.version), (Some("s0"), 1));

    // The workload: each account bound and paid through every node in turn.
    let gateway = SimulatedGateway::new(Scenario::quiet(11));
    let accounts: Vec<String> = (0..45).map(|a| format!("cl-acct-{a}")).collect();
    // (event id -> the shard that answered for it)
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut forwarded = 0;
    for (a, account) in accounts.iter().enumerate() {
        let owner = map.owner(account).to_owned();
        let body = json!({"provider": "alipay", "wallet_account": phone(a as u64), "payment_password": gateway.password_for(&alipay(), &phone(a as u64)), "idempotency_key": format!("bind-{a}")});
        let via = &shards[a % SHARDS];
        let (s, h, v) = send(
            reqwest::Method::POST,
            &format!("{}/v1/accounts/{account}/bindings", via.url),
            ALL,
            Some(&body),
            &[],
        )
        .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(h.get("bindledger-shard"), Some(&owner), "the owner answered");
        if via.id != owner {
            assert_eq!(h.get("bindledger-forwarded"), Some(&via.id));
            forwarded += 1;
        }
        let binding = v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
        acked.insert(v["event"]["id"].as_str().unwrap().to_owned(), owner.clone());
        for k in 0..2 {
            let via = &shards[(a + k + 1) % SHARDS];
            let pay = json!({"binding_id": binding, "order_id": format!("o-{a}-{k}"), "amount_minor": 100 + k, "payment_password": gateway.password_for(&alipay(), &phone(a as u64)), "idempotency_key": format!("pay-{a}-{k}")});
            let (s, h, v) = send(
                reqwest::Method::POST,
                &format!("{}/v1/accounts/{account}/payments", via.url),
                ALL,
                Some(&pay),
                &[],
            )
            .await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(h.get("bindledger-shard"), Some(&owner));
            let id = v["event"]["id"].as_str().unwrap().to_owned();
            // The same command sent straight to the owner is the same event: one decision.
            let (s2, _, again) = send(
                reqwest::Method::POST,
                &format!("{}/v1/accounts/{account}/payments", map.shards[&owner].url),
                ALL,
                Some(&pay),
                &[],
            )
            .await;
            assert!(s2 == 200 && again["replayed"] == true, "{again}");
            assert_eq!(again["event"]["id"].as_str(), Some(id.as_str()));
            acked.insert(id, owner.clone());
        }
    }
    assert!(
        forwarded >= 20,
        "most binds went through a node that is not the owner ({forwarded})"
    );

    // Reads through any node are the owner's.
    for account in accounts.iter().take(6) {
        let owner = &map.shards[map.owner(account)].url;
        let path = format!("/v1/accounts/{account}/events");
        let (_, _, direct) = send(reqwest::Method::GET, &format!("{owner}{path}"), READER, None, &[]).await;
        for s in &shards {
            let (code, _, v) = send(reqwest::Method::GET, &format!("{}{path}", s.url), READER, None, &[]).await;
            assert_eq!((code, &v), (200, &direct), "{path} through {}", s.id);
        }
        // The caller's roles cross the hop: a reader cannot pay through any node.
        let (code, _, v) = send(
            reqwest::Method::POST,
            &format!(
                "{}/v1/accounts/{account}/payments",
                shards[(slot_of(account) as usize + 1) % SHARDS].url
            ),
            READER,
            Some(&json!({"binding_id": "x", "order_id": "y", "amount_minor": 1, "payment_password": "z"})),
            &[],
        )
        .await;
        assert_eq!(code, 403, "{v}");
    }

    // A client that asks not to be forwarded learns the owner; nothing is written anywhere.
    let account = &accounts[0];
    let owner = map.owner(account);
    let other = shards.iter().find(|s| s.id != owner).unwrap();
    let before: Vec<u64> = futures_util::future::join_all(shards.iter().map(|s| events_on(&s.url))).await;
    let body = json!({"provider": "alipay", "wallet_account": phone(999), "payment_password": "x"});
    let (s, _, v) = send(
        reqwest::Method::POST,
        &format!("{}/v1/accounts/{account}/bindings", other.url),
        ALL,
        Some(&body),
        &[("bindledger-forwarded", "client")],
    )
    .await;
    assert_eq!(s, 421, "{v}");
    assert_eq!(v["error"]["code"], "misdirected");
    assert_eq!(v["shard"].as_str(), Some(owner));
    assert_eq!(v["owner"].as_str(), Some(map.shards[owner].url.as_str()));
    // A cluster token alone (no caller named) cannot act.
    let (s, _, _) = send(
        reqwest::Method::GET,
        &format!("{}/v1/accounts/{account}/events", other.url),
        CLUSTER,
        None,
        &[],
    )
    .await;
    assert_eq!(s, 403);
    let after: Vec<u64> = futures_util::future::join_all(shards.iter().map(|s| events_on(&s.url))).await;
    assert_eq!(before, after);

    // Every acknowledged event is in its owner's topic exactly once, named by its shard, and
    // no topic holds another shard's account.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for s in &shards {
        let topic = format!("{prefix}.{}.events", s.id);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let expected = acked.values().filter(|o| **o == s.id).count();
        let messages = loop {
            let m = read_topic(&broker.addr, &topic);
            if m.len() >= expected || std::time::Instant::now() > deadline {
                break m;
            }
        };
        for m in &messages {
            assert_eq!(m.headers.get("shard"), Some(&s.id), "{topic}");
            assert_eq!(map.owner(&m.key), s.id, "an account of another shard on {topic}");
            *seen.entry(m.headers["event_id"].clone()).or_default() += 1;
        }
        assert_eq!(
            messages.len() as u64,
            events_on(&s.url).await,
            "the topic holds the shard's chain"
        );
    }
    for (id, owner) in &acked {
        assert_eq!(seen.get(id), Some(&1), "event {id} of shard {owner}");
    }

    // Every shard's status, asked by any node (what the console's glance shows).
    let (code, _, v) = send(
        reqwest::Method::GET,
        &format!("{}/v1/cluster/status", shards[1].url),
        READER,
        None,
        &[],
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["shard"], "s1");
    let rows = v["shards"].as_array().unwrap();
    assert_eq!(rows.len(), SHARDS);
    for (r, s) in rows.iter().zip(&shards) {
        assert_eq!(
            (r["shard"].as_str(), r["answered"].as_bool()),
            (Some(s.id.as_str()), Some(true)),
            "{r}"
        );
        assert_eq!(r["events"].as_u64(), Some(events_on(&s.url).await), "{r}");
        assert_eq!(r["map_version"].as_u64(), Some(1));
    }
    // The operator's view.
    let (code, out, err) = run_cli(&[
        "cluster",
        "status",
        "--brokers",
        &broker.addr,
        "--cluster-topic",
        &cluster_topic,
        "--token",
        ALL,
    ]);
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8_lossy(&out);
    for s in &shards {
        assert!(out.contains(&s.id) && out.contains(&s.url), "{out}");
    }
    let (code, out, _) = run_cli(&[
        "cluster",
        "which",
        "--brokers",
        &broker.addr,
        "--cluster-topic",
        &cluster_topic,
        account,
    ]);
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).contains(&format!("slot {} of shard {owner}", slot_of(account))));

    // One audit of the whole cluster: a signed cluster checkpoint over every shard's head, then
    // every chain from its topic, held to it.
    let key_file = dir.path().join("cluster.key");
    let key_arg = key_file.to_str().unwrap().to_owned();
    let checkpoint = [
        "cluster",
        "checkpoint",
        "--brokers",
        &broker.addr,
        "--cluster-topic",
        &cluster_topic,
        "--key-file",
        &key_arg,
        "--json",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let signed: Value = loop {
        // Each shard signs its head within a second of its last event; wait until all have.
        let (code, out, err) = run_cli(&checkpoint);
        let cp: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        let complete = code == 0
            && shards.iter().all(|s| {
                let head = cp["shards"][&s.id]["seq"].as_u64();
                head.is_some() && head == Some(acked.values().filter(|o| **o == s.id).count() as u64)
            });
        if complete {
            break cp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no complete cluster checkpoint: {code} {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let cluster_key = signed["public_key"].as_str().unwrap().to_owned();
    let replay = binary().with_file_name("bindledger-replay");
    let verify = |key: &str| {
        let out = std::process::Command::new(&replay)
            .args([
                "verify-cluster",
                "--brokers",
                &broker.addr,
                "--cluster-topic",
                &cluster_topic,
                "--cluster-key",
                key,
                "--json",
            ])
            .output()
            .expect("run bindledger-replay (built with the workspace)");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, report, err) = verify(&cluster_key);
    assert_eq!(code, Some(0), "{report} {err}");
    assert_eq!(report["shards"].as_array().unwrap().len(), SHARDS);
    for s in report["shards"].as_array().unwrap() {
        let id = s["shard"].as_str().unwrap();
        assert_eq!(
            s["report"]["events"].as_u64(),
            Some(acked.values().filter(|o| *o == id).count() as u64)
        );
        assert!(
            s["heads_from_cluster"].as_u64() >= Some(1) && s["report"]["checkpoints_checked"].as_u64() >= Some(1),
            "{s}"
        );
    }
    // The verifier written from the docs agrees, from an export of the cluster.
    let export = dir.path().join("export");
    let verify_py = |key: Option<&str>| verify_export(&broker.addr, &cluster_topic, &export, key);
    let (code, out) = verify_py(Some(&cluster_key));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("ok cluster {SHARDS}")), "{out}");
    for s in report["shards"].as_array().unwrap() {
        assert!(
            out.contains(&format!(
                "ok {} {} {}",
                s["shard"].as_str().unwrap(),
                s["report"]["events"],
                s["report"]["head"].as_str().unwrap()
            )),
            "{out}"
        );
    }
    // Another key: the cluster checkpoints do not verify.
    let other = bindledger::ledger::checkpoint::CheckpointKey::load_or_create(&dir.path().join("other.key")).unwrap();
    let (code, report, _) = verify(&other.public_hex());
    assert_eq!(code, Some(3), "{report}");

    // A shard's history rewritten at its signed head: a cluster checkpoint over another hash
    // (signed with the shard's own key and the cluster's) no longer matches its chain.
    let cluster_signer = bindledger::ledger::checkpoint::CheckpointKey::load_or_create(&key_file).unwrap();
    let s0_key =
        bindledger::ledger::checkpoint::CheckpointKey::load_or_create(&dir.path().join("s0").join("checkpoint.key"))
            .unwrap();
    let s0_head = signed["shards"]["s0"]["seq"].as_u64().unwrap();
    let mut heads: std::collections::BTreeMap<String, bindledger::ledger::checkpoint::SignedCheckpoint> =
        serde_json::from_value(signed["shards"].clone()).unwrap();
    heads.insert(
        "s0".into(),
        s0_key.sign(s0_head, bindledger_events::Hash([9; 32]), chrono::Utc::now()),
    );
    let forged = cluster_signer.sign_cluster(map.version, heads, chrono::Utc::now());
    let kafka = bindledger::config::KafkaConfig {
        brokers: broker.addr.clone(),
        ..Default::default()
    };
    bindledger::adapters::kafka::cluster::publish_checkpoint(&kafka, &cluster_topic, &forged)
        .await
        .unwrap();
    let (code, report, _) = verify(&cluster_key);
    assert_eq!(code, Some(3), "{report}");
    let s0 = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == "s0")
        .unwrap()
        .clone();
    assert_eq!(s0["report"]["problem"]["kind"], "checkpoint_mismatch", "{s0}");
    assert_eq!(s0["report"]["problem"]["seq"].as_u64(), Some(s0_head));
    let (code, out) = verify_py(Some(&cluster_key));
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with(&format!("FAIL s0 0 {s0_head} two signed checkpoints")),
        "{out}"
    );

    // An event on a shard the map does not give its account: a map that gives one of s1's
    // slots to s2 makes s1's chain hold another shard's account.
    let moved_account = accounts.iter().find(|a| map.owner(a) == "s1").unwrap();
    let v2 = map.with_slot_moved(slot_of(moved_account) as u32, "s2").unwrap();
    bindledger::adapters::kafka::cluster::publish_map(&kafka, &cluster_topic, &v2)
        .await
        .unwrap();
    let (_, report, _) = verify(&cluster_key);
    let s1 = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == "s1")
        .unwrap()
        .clone();
    assert_eq!(s1["report"]["problem"]["kind"], "wrong_shard", "{s1}");
    assert_eq!(report["map_version"].as_u64(), Some(2));
    // The verifier finds the foreign account too (s0 fails first on its forged head; without
    // the cluster key, s1's file is read with no heads and fails on the account).
    let (code, out) = verify_py(None);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("FAIL s1 ") && out.contains("another shard"), "{out}");
}

/// What the failover test's load sent and learned.
#[derive(Default)]
struct Book {
    /// key -> (the account's shard, event id)
    acked: BTreeMap<String, (String, String)>,
    /// Commands whose outcome is unknown (an error, no answer): retried with the same key.
    unknown: Vec<(String, String, Value)>,
}

/// Sends one command through `via`; books the answer.
async fn command(book: &mut Book, map: &ShardMap, via: &str, account: &str, key: &str, body: &Value) {
    let path = if key.starts_with("bind") {
        "bindings"
    } else {
        "payments"
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let answer = client
        .post(format!("{via}/v1/accounts/{account}/{path}"))
        .bearer_auth(ALL)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    let ok = match answer {
        Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            let id = v["event"]["id"].as_str().unwrap().to_owned();
            if let Some((_, prev)) = book
                .acked
                .insert(key.to_owned(), (map.owner(account).to_owned(), id.clone()))
            {
                assert_eq!(prev, id, "a retried key returns the original event");
            }
            true
        }
        Ok(r) => {
            let code = r.status().as_u16();
            assert!(
                code == 503 || code == 421,
                "unexpected answer {code}: {:?}",
                r.text().await
            );
            false
        }
        Err(_) => false,
    };
    if !ok {
        book.unknown.push((account.to_owned(), key.to_owned(), body.clone()));
    }
}

/// A shard's primary killed under load (SIGKILL), its replica promoted and named in the map:
/// commands through the other shards reach it again, every acknowledged command is in its
/// owner's chain exactly once, and the cluster verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shards_primary_killed_under_load_fails_over_to_its_replica() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cluster_topic = fresh_topic("cluster-failover");
    let prefix = fresh_topic("failover");
    let ports: Vec<u16> = (0..SHARDS + 1).map(|_| free_port()).collect();
    let ids: Vec<String> = (0..SHARDS).map(|i| format!("s{i}")).collect();
    let init = init_args(&broker.addr, &cluster_topic, &prefix, &ids, &ports[..SHARDS]);
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    assert_eq!(run_cli(&init).0, 0);
    let tokens = format!("writer+reader+auditor+security:{ALL},cluster:{CLUSTER}");
    let replicated = "durability = \"replicated\"\n";
    let start = |name: &str, shard: &str, port: u16, extra: &str| {
        let config = config_with(
            dir.path(),
            name,
            shard,
            &broker.addr,
            &cluster_topic,
            &prefix,
            replicated,
            extra,
        );
        let env = [
            ("BINDLEDGER_CONFIG", config.to_str().unwrap()),
            ("BINDLEDGER_TOKENS", tokens.as_str()),
        ];
        spawn_server_at(
            &dir.path().join(name),
            &dir.path().join(format!("{name}.log")),
            &format!("127.0.0.1:{port}"),
            &env,
        )
    };
    let mut primaries: Vec<Option<ServerProcess>> = (0..SHARDS)
        .map(|i| Some(start(&ids[i], &ids[i], ports[i], "")))
        .collect();
    // s1's replica: the primary's secret and checkpoint key, from "the secrets store".
    let replica_dir = dir.path().join("s1-replica");
    std::fs::create_dir_all(&replica_dir).unwrap();
    for f in ["secret.key", "checkpoint.key"] {
        std::fs::copy(dir.path().join("s1").join(f), replica_dir.join(f)).unwrap();
    }
    let replica_url = format!("http://127.0.0.1:{}", ports[SHARDS]);
    let _replica = start(
        "s1-replica",
        "s1",
        ports[SHARDS],
        &format!(
            "\n[replica]\nenabled = true\nprimary_url = \"http://127.0.0.1:{}\"\n",
            ports[1]
        ),
    );
    let (_, _, m) = send(
        reqwest::Method::GET,
        &format!("http://127.0.0.1:{}/v1/cluster", ports[0]),
        ALL,
        None,
        &[],
    )
    .await;
    let map: ShardMap = serde_json::from_value(m["map"].clone()).unwrap();
    let s1_accounts = (0..)
        .map(|a| format!("fo-{a}"))
        .filter(|a| map.owner(a) == "s1")
        .take(6);
    let accounts: Vec<String> = (0..18).map(|a| format!("fo-{a}")).chain(s1_accounts).collect();
    let gateway = SimulatedGateway::new(Scenario::quiet(11));
    let entry = [
        format!("http://127.0.0.1:{}", ports[0]),
        format!("http://127.0.0.1:{}", ports[2]),
    ];
    let mut book = Book::default();
    let mut bindings: HashMap<String, String> = HashMap::new();
    let rounds = 6;
    let mut failover = None;
    let mut unknown_total = 0;
    for round in 0..rounds {
        if round == 2 {
            // While this round's commands flow: s1's primary dies (SIGKILL); its replica is
            // promoted and named in the map.
            let primary = primaries[1].take().unwrap();
            let (replica_url, brokers, topic) = (replica_url.clone(), broker.addr.clone(), cluster_topic.clone());
            failover = Some(tokio::task::spawn_blocking(move || {
                std::thread::sleep(std::time::Duration::from_millis(150));
                primary.kill();
                let (code, _, err) = run_cli(&["promote", "--url", &replica_url, "--token", ALL]);
                assert_eq!(code, 0, "{err}");
                let (code, _, err) = run_cli(&[
                    "cluster",
                    "set-url",
                    "--brokers",
                    &brokers,
                    "--cluster-topic",
                    &topic,
                    "--shard",
                    "s1",
                    "--url",
                    &replica_url,
                ]);
                assert_eq!(code, 0, "{err}");
            }));
        }
        if round == 4 {
            failover.take().unwrap().await.unwrap();
        }
        unknown_total += book.unknown.len();
        // What the last round left unknown, again with the same keys, then new commands.
        for (account, key, body) in std::mem::take(&mut book.unknown) {
            command(&mut book, &map, &entry[round % 2], &account, &key, &body).await;
        }
        for (a, account) in accounts.iter().enumerate() {
            let via = &entry[(a + round) % 2];
            let pw = gateway.password_for(&alipay(), &phone(a as u64));
            if round == 0 {
                let key = format!("bind-{a}");
                let body = json!({"provider": "alipay", "wallet_account": phone(a as u64), "payment_password": pw, "idempotency_key": key});
                command(&mut book, &map, via, account, &key, &body).await;
                continue;
            }
            let Some(binding) = bindings.get(account).cloned().or_else(|| {
                let key = format!("bind-{a}");
                book.acked.get(&key).map(|_| String::new())
            }) else {
                continue;
            };
            let binding = if binding.is_empty() {
                let (_, _, v) = send(
                    reqwest::Method::GET,
                    &format!("{via}/v1/accounts/{account}/bindings"),
                    ALL,
                    None,
                    &[],
                )
                .await;
                let id = v["bindings"][0]["binding_id"].as_str().unwrap_or_default().to_owned();
                if id.is_empty() {
                    continue;
                }
                bindings.insert(account.clone(), id.clone());
                id
            } else {
                binding
            };
            let key = format!("pay-{a}-{round}");
            let body = json!({"binding_id": binding, "order_id": key, "amount_minor": 100 + round, "payment_password": pw, "idempotency_key": key});
            command(&mut book, &map, via, account, &key, &body).await;
        }
    }
    // Whatever is still unknown gets its answer now that the cluster is whole.
    for _ in 0..3 {
        for (account, key, body) in std::mem::take(&mut book.unknown) {
            command(&mut book, &map, &entry[0], &account, &key, &body).await;
        }
    }
    assert!(
        book.unknown.is_empty(),
        "unanswered: {:?}",
        book.unknown.iter().map(|u| &u.1).collect::<Vec<_>>()
    );
    eprintln!(
        "{} commands acknowledged, {unknown_total} retried after the failover",
        book.acked.len()
    );
    let s1_acked_after = book
        .acked
        .iter()
        .filter(|(k, (s, _))| s == "s1" && k.ends_with("-5"))
        .count();
    assert!(
        s1_acked_after >= 6,
        "the promoted replica took s1's commands ({s1_acked_after})"
    );

    // Every acknowledged command exactly once in its owner's topic (fences and what they drop
    // aside: a promotion's fence messages carry no event id).
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for id in &ids {
        for m in read_topic(&broker.addr, &format!("{prefix}.{id}.events")) {
            if let Some(event) = m.headers.get("event_id") {
                seen.entry(event.clone()).or_default().push(id.clone());
            }
        }
    }
    for (key, (shard, event)) in &book.acked {
        assert_eq!(seen.get(event), Some(&vec![shard.clone()]), "{key}");
    }
    let replay = binary().with_file_name("bindledger-replay");
    let out = std::process::Command::new(&replay)
        .args([
            "verify-cluster",
            "--brokers",
            &broker.addr,
            "--cluster-topic",
            &cluster_topic,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// `bindledger cluster export` to `out`, then `events/verify.py --cluster` over it (with the
/// cluster's key when given): its exit code and output.
fn verify_export(brokers: &str, cluster_topic: &str, out: &Path, key: Option<&str>) -> (Option<i32>, String) {
    let (code, _, err) = run_cli(&[
        "cluster",
        "export",
        "--brokers",
        brokers,
        "--cluster-topic",
        cluster_topic,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mut py = std::process::Command::new("python3");
    py.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/events/verify.py"))
        .args(["--cluster", out.to_str().unwrap()]);
    if let Some(k) = key {
        py.args(["--cluster-key", k]);
    }
    let done = py.output().expect("python3");
    (done.status.code(), String::from_utf8_lossy(&done.stdout).into_owned())
}

/// `bindledger cluster init` of `ids` at `ports` (in order) on `cluster_topic`.
fn init_args(brokers: &str, cluster_topic: &str, prefix: &str, ids: &[String], ports: &[u16]) -> Vec<String> {
    let mut args: Vec<String> = [
        "cluster",
        "init",
        "--brokers",
        brokers,
        "--cluster-topic",
        cluster_topic,
        "--topic-prefix",
        prefix,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for (id, port) in ids.iter().zip(ports) {
        args.push("--shard".into());
        args.push(format!("{id}=http://127.0.0.1:{port}"));
    }
    args
}
