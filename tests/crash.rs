//! The real server as a child process under concurrent load, killed with SIGKILL at random
//! moments, restarted each time. Every acknowledged command must be in the log exactly once,
//! the chain must verify, and the projections must equal a rebuild. The server holds two of
//! its twelve accounts in memory, so every kill finds accounts changed since the last snapshot
//! (held until it is written) beside accounts read back from their stored rows.

mod common;

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::domain::projection::Projection;
use bindledger_events::{decode, hash_bytes, Event};
use bindledger_fixture::Rng;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCOUNTS: u64 = 12;
const CLIENTS: usize = 16;
const ROUNDS: usize = 5;

/// A command sent: (account, idempotency key, body).
type Sent = (String, String, Value);

#[derive(Default)]
struct Book {
    /// key -> (seq, hash) as acknowledged.
    acked: HashMap<String, (u64, String)>,
    /// Commands retried after a restart because the crash hid their outcome.
    retried: usize,
    /// Sent but not acknowledged (the server died): retried after the restart.
    unknown: Vec<Sent>,
}

fn config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bindledger.toml");
    std::fs::write(
        &path,
        "[writer]\nsnapshot_every_events = 40\n\n[memory]\naccounts_cached = 2\n\n[gateway.simulated]\nseed = 11\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\nnetwork_error_per_mille = 0\nbalance_minor_min = 100000000000\nbalance_minor_max = 100000000000\n",
    )
    .unwrap();
    path
}

async fn send(client: &mut bindledger::adapters::http::client::Client, book: &Mutex<Book>, sent: Sent) -> bool {
    let (account, key, body) = &sent;
    let path = if key.starts_with("bind") {
        format!("/v1/accounts/{account}/bindings")
    } else {
        format!("/v1/accounts/{account}/payments")
    };
    match client.post_json(&path, body).await {
        Ok((status, v)) if status.as_u16() == 201 || status.as_u16() == 200 => {
            let seq = v["event"]["seq"].as_u64().unwrap();
            let hash = v["hash"].as_str().unwrap().to_owned();
            let mut b = book.lock().unwrap();
            if let Some(prev) = b.acked.insert(key.clone(), (seq, hash.clone())) {
                assert_eq!(prev, (seq, hash), "a retried key must return the original event");
            }
            true
        }
        Ok((status, v)) if status.as_u16() == 503 => {
            book.lock().unwrap().unknown.push(sent);
            let _ = v;
            false
        }
        Ok((status, v)) => panic!("unexpected answer {status}: {v}"),
        Err(_) => {
            book.lock().unwrap().unknown.push(sent);
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commands_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let config = config_file(dir.path());
    let config_env = config.to_str().unwrap().to_owned();
    let env = [("BINDLEDGER_CONFIG", config_env.as_str())];
    let gateway = SimulatedGateway::new(Scenario::quiet(11));
    let seed = test_seed("acknowledged_commands_survive_repeated_sigkill");
    let mut rng = Rng(seed);
    let book = Arc::new(Mutex::new(Book::default()));
    let bindings: Arc<Mutex<HashMap<String, String>>> = Arc::default();

    for round in 0..=ROUNDS {
        let server = spawn_server(&data, &log, &env);
        let mut client = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
        // First, the commands whose outcome the last crash hid: same keys, so exactly once.
        let retry = std::mem::take(&mut book.lock().unwrap().unknown);
        book.lock().unwrap().retried += retry.len();
        for sent in retry {
            assert!(
                send(&mut client, &book, sent).await,
                "a retry after restart must be answered"
            );
        }
        if round == 0 {
            for a in 0..ACCOUNTS {
                let account = format!("acct-{a}");
                let body = json!({"provider": "alipay", "wallet_account": phone(a), "payment_password": gateway.password_for(&alipay(), &phone(a)), "idempotency_key": format!("bind-{a}")});
                let (_, v) = client
                    .post_json(&format!("/v1/accounts/{account}/bindings"), &body)
                    .await
                    .unwrap();
                book.lock().unwrap().acked.insert(
                    format!("bind-{a}"),
                    (
                        v["event"]["seq"].as_u64().unwrap(),
                        v["hash"].as_str().unwrap().to_owned(),
                    ),
                );
                bindings.lock().unwrap().insert(
                    account,
                    v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned(),
                );
            }
        }
        if round == ROUNDS {
            // The last round: no crash, check the live projection against a rebuild below.
            let mut live = HashMap::new();
            for a in 0..ACCOUNTS {
                let (_, v) = client
                    .get_json(&format!("/v1/accounts/acct-{a}/bindings"))
                    .await
                    .unwrap();
                live.insert(format!("acct-{a}"), v);
            }
            server.kill();
            check(&data, &book.lock().unwrap(), &live);
            return;
        }
        // Load from many clients, then SIGKILL at a random moment.
        let stop_at = Instant::now() + Duration::from_millis(150 + rng.next_u64() % 650);
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let book = book.clone();
                let bindings = bindings.clone();
                let addr = server.addr;
                let pw: HashMap<String, String> = (0..ACCOUNTS).map(|a| (format!("acct-{a}"), gateway.password_for(&alipay(), &phone(a)))).collect();
                tokio::spawn(async move {
                    let mut client = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
                    for n in 0.. {
                        let account = format!("acct-{}", (c + n) as u64 % ACCOUNTS);
                        let binding = bindings.lock().unwrap()[&account].clone();
                        let key = format!("pay-{round}-{c}-{n}");
                        let body = json!({"binding_id": binding, "order_id": key, "amount_minor": 100 + n, "payment_password": pw[&account], "idempotency_key": key});
                        if !send(&mut client, &book, (account, key, body)).await {
                            return;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep_until(stop_at.into()).await;
        server.kill();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

fn check(data: &std::path::Path, book: &Book, live: &HashMap<String, Value>) {
    let (code, stdout, stderr) = run_cli(&["verify", "--json", "--data-dir", data.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&stdout).unwrap_or_else(|_| panic!("verify printed no JSON: {stderr}"));
    assert_eq!(code, 0, "verify failed: {report}");
    assert!(
        report["chain_error"].is_null() && report["projection_matches"] == true,
        "{report}"
    );

    let (code, export, stderr) = run_cli(&["export", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let mut by_key: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut events: Vec<Event> = Vec::new();
    for line in export.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let e = decode(line).unwrap();
        by_key
            .entry(e.idempotency_key.clone().unwrap_or_default())
            .or_default()
            .push((e.seq, hash_bytes(line).to_hex()));
        events.push(e);
    }
    assert!(
        book.acked.len() > 50,
        "the load should have produced acknowledged commands, got {}",
        book.acked.len()
    );
    for (key, (seq, hash)) in &book.acked {
        let found = by_key
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged command {key} (event {seq}) is missing from the log"));
        assert_eq!(
            found,
            &vec![(*seq, hash.clone())],
            "acknowledged command {key} must be in the log exactly once, as acknowledged"
        );
    }
    for (key, found) in &by_key {
        assert_eq!(found.len(), 1, "key {key} is in the log {} times", found.len());
    }
    let rebuilt = Projection::rebuild(events.iter());
    for (account, view) in live {
        let state = &rebuilt.accounts[account];
        assert_eq!(view["version"].as_u64(), Some(state.version), "{account}");
        assert_eq!(
            view["bindings"][0]["payments_count"].as_u64(),
            Some(state.bindings[0].payments_count),
            "{account}"
        );
        assert_eq!(
            view["bindings"].as_array().unwrap().len(),
            state.bindings.len(),
            "{account}"
        );
    }
    assert!(
        book.retried >= ROUNDS,
        "each kill should catch commands in flight (retried {})",
        book.retried
    );
    eprintln!(
        "crash test: {} events, {} acknowledged commands ({} retried after a kill), all present exactly once",
        events.len(),
        book.acked.len(),
        book.retried
    );
}

/// Regression (issue 26, item 8): a core thread that panicked left the node half alive: the
/// flusher ignored a dead indexer, there was no panic hook, and `/healthz` still said 200.
/// Now a panic on any core thread ends the process (SIGABRT; its supervisor restarts it) and
/// nothing acknowledged is lost: the restart recovers every acknowledged event from the log.
/// The panic is planted with the debug builds' seam `BINDLEDGER_FAULT_PANIC`.
#[test]
fn a_node_whose_core_thread_dies_stops_and_loses_nothing_acknowledged() {
    use std::os::unix::process::ExitStatusExt;
    for thread in [
        "bindledger-writer",
        "bindledger-flusher",
        "bindledger-indexer",
        "bindledger-monitor",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
        let plan = format!("{thread}:3");
        let mut server = spawn_server(&data, &log, &[("BINDLEDGER_FAULT_PANIC", plan.as_str())]);
        let addr = server.addr;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let acknowledged = rt.block_on(async {
            let mut acknowledged = 0u64;
            for i in 0..400u64 {
                let mut c = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
                let body =
                    serde_json::json!({"provider": "alipay", "wallet_account": phone(i), "payment_password": "000000"});
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    c.post_json(&format!("/v1/accounts/a-{i}/bindings"), &body),
                )
                .await
                {
                    Ok(Ok((status, _))) if status.as_u16() == 201 => acknowledged = i + 1,
                    _ => break,
                }
            }
            acknowledged
        });
        let status = server
            .wait_exit(std::time::Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{thread}: the node went on after its thread died"));
        assert_eq!(status.signal(), Some(6), "{thread}: ended by SIGABRT: {status:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("the core thread {thread} died")),
            "{thread}: {text}"
        );
        assert!(acknowledged < 400, "{thread}: commands went on being acknowledged");
        // The restart recovers every acknowledged command.
        drop(server);
        let server = spawn_server(&data, &log, &[]);
        let got = rt.block_on(async {
            let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
            let mut found = 0;
            for i in 0..acknowledged {
                let (_, v) = c.get_json(&format!("/v1/accounts/a-{i}/events")).await.unwrap();
                found += usize::from(v["events"].as_array().is_some_and(|e| e.len() == 1));
            }
            found
        });
        assert_eq!(got as u64, acknowledged, "{thread}: acknowledged commands lost");
        server.terminate();
    }
}
