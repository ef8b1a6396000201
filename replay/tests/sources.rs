//! A real ledger: the same log read from its HTTP feed (running), its data directory and an
//! export (stopped) is the same, byte for byte; `state --at` equals the state the live ledger
//! had at many moments recorded during the run; `history` shows an account's events.

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::{Config, Role, TokenConfig};
use bindledger::domain::command::{BindRequest, CommonInput, PayRequest, UnbindRequest};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger_events::{Payload, Provider};
use bindledger_replay::Source;
use chrono::Utc;
use std::process::Command;
use std::sync::Arc;

const TOKEN: &str = "auditor-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn replay(args: &[&str]) -> (i32, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap(), out.stdout)
}

#[test]
fn every_source_gives_the_same_log_and_state_at_equals_the_live_state() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = Config {
        data_dir: data.clone(),
        tokens: vec![
            TokenConfig {
                token: TOKEN.into(),
                roles: vec![Role::Auditor],
                name: None,
                client_cert_sha256: None,
            },
            TokenConfig {
                token: READER.into(),
                roles: vec![Role::Reader],
                name: None,
                client_cert_sha256: None,
            },
        ],
        ..Config::default()
    };
    config.gateway.simulated = Scenario {
        frozen_per_mille: 100,
        ..Scenario::quiet(4)
    };
    let g = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let alipay = Provider::parse("alipay").unwrap();
    let (recorded, http_events) = rt.block_on(async {
        let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([6; 32]), g.clone()).unwrap();
        let l = node.ledger.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bindledger::adapters::http::serve(
            listener,
            node.state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        // A workload, recording the live read model now and then.
        let mut recorded = Vec::new();
        for round in 0..6u64 {
            for a in 0..8u64 {
                let account = format!("acct-{a}");
                let phone = format!("139{:08}", round * 100 + a);
                let password = g.password_for(&alipay, &phone);
                let bind = BindRequest {
                    provider: "alipay".into(),
                    wallet_account: SecretString::new(phone),
                    payment_password: SecretString::new(password.clone()),
                    factor: None,
                    common: CommonInput::default(),
                };
                let r = l.bind(bind.validate(&account, Utc::now()).unwrap()).await.unwrap();
                if let Payload::WalletBound { binding_id, .. } = r.event.payload {
                    for k in 0..2 {
                        let pay = PayRequest {
                            binding_id: binding_id.to_string(),
                            order_id: format!("o-{round}-{k}"),
                            amount_minor: 100 + k,
                            currency: None,
                            payment_password: SecretString::new(if k == 1 && a % 2 == 0 {
                                "wrong".into()
                            } else {
                                password.clone()
                            }),
                            factor: None,
                            common: CommonInput::default(),
                        };
                        l.pay(pay.validate(&account, Utc::now()).unwrap()).await.unwrap();
                    }
                    if (round + a) % 3 == 0 {
                        let unbind = UnbindRequest {
                            confirm: true,
                            common: CommonInput::default(),
                        };
                        l.unbind(unbind.validate(&account, &binding_id.to_string(), Utc::now()).unwrap())
                            .await
                            .unwrap();
                    }
                }
                let live = l.projection().unwrap();
                recorded.push((live.position, serde_json::to_value(&live.accounts).unwrap()));
            }
        }
        let http = Source::Http {
            url: format!("http://{addr}"),
            token: TOKEN.into(),
        };
        let http_events =
            tokio::task::spawn_blocking(move || http.read().unwrap().collect::<Result<Vec<_>, _>>().unwrap())
                .await
                .unwrap();
        // diff: a rebuild from the feed equals the running ledger's projections...
        let url = format!("http://{addr}");
        let (code, out) = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                replay(&[
                    "diff",
                    "--json",
                    "--url",
                    &url,
                    "--token",
                    TOKEN,
                    "--against",
                    &url,
                    "--against-token",
                    READER,
                ])
            })
            .await
            .unwrap()
        };
        let d: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (code, d["same"].as_u64(), d["differences"].as_array().map(Vec::len)),
            (0, Some(8), Some(0)),
            "{d}"
        );
        // ...and a log whose bound wallet was edited differs, on that account only.
        let mut edited = http_events.clone();
        let i = edited
            .iter()
            .position(|b| {
                String::from_utf8_lossy(b).contains("\"wallet_bound\"")
                    && String::from_utf8_lossy(b).contains("\"acct-3\"")
            })
            .unwrap();
        let mut e = bindledger_events::decode(&edited[i]).unwrap();
        if let Payload::WalletBound { wallet, .. } = &mut e.payload {
            wallet.masked = "139****0000".into();
        }
        edited[i] = bindledger_events::encode(&e).into();
        // Edited as it is, the log does not verify: diff says where, and rebuilds nothing.
        let path = dir.path().join("edited-raw.ndjson");
        std::fs::write(
            &path,
            edited
                .iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let (code, out) = {
            let (url, path) = (url.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                replay(&[
                    "diff",
                    "--json",
                    "--export",
                    path.to_str().unwrap(),
                    "--against",
                    &url,
                    "--token",
                    READER,
                ])
            })
            .await
            .unwrap()
        };
        let d: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (code, d["problem"]["kind"].as_str(), d["problem"]["seq"].as_u64()),
            (3, Some("altered"), Some(e.seq)),
            "{d}"
        );
        // With its chain recomputed after the edit (a forger's rewrite, which only signed
        // checkpoints expose), it verifies, and diff shows the account that differs.
        let mut prev = bindledger_events::hash_bytes(&edited[i - 1]);
        for b in edited[i..].iter_mut() {
            let mut ev = bindledger_events::decode(b).unwrap();
            ev.prev_hash = prev;
            *b = bindledger_events::encode(&ev).into();
            prev = bindledger_events::hash_bytes(b);
        }
        let path = dir.path().join("edited.ndjson");
        std::fs::write(
            &path,
            edited
                .iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let (code, out) = {
            let (url, path) = (url.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                replay(&[
                    "diff",
                    "--json",
                    "--export",
                    path.to_str().unwrap(),
                    "--against",
                    &url,
                    "--token",
                    READER,
                ])
            })
            .await
            .unwrap()
        };
        let d: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(code, 3, "{d}");
        assert_eq!(
            d["differences"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["account"].as_str().unwrap())
                .collect::<Vec<_>>(),
            vec!["acct-3"]
        );
        let _ = stop.send(());
        let _ = server.await;
        node.stop().await;
        (recorded, http_events)
    });

    // The same log from the directory and from an export.
    let dir_events = Source::DataDir(data.clone())
        .read()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let export = dir.path().join("export.ndjson");
    bindledger::ledger::offline::export(&data, 1, &mut std::fs::File::create(&export).unwrap()).unwrap();
    let export_events = Source::Export(export.clone())
        .read()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert!(dir_events.len() > 100, "{}", dir_events.len());
    assert_eq!(http_events, dir_events, "HTTP feed and data directory");
    assert_eq!(export_events, dir_events, "export and data directory");
    // The pipeline over the directory: the same events; dropped half-way, it lets go of the
    // directory (sled allows one open at a time).
    let mut piped = Source::DataDir(data.clone()).decoded();
    assert!(piped.next().unwrap().is_ok());
    drop(piped);
    let piped: Vec<bindledger_replay::Stored> = Source::DataDir(data.clone())
        .decoded()
        .map(|r| r.unwrap().bytes)
        .collect();
    assert_eq!(piped, dir_events, "pipeline and data directory");
    let (code, out) = replay(&["verify", "--json", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    let (code, out2) = replay(&["verify", "--json", "--export", export.to_str().unwrap()]);
    assert_eq!((code, &out2), (0, &out), "the same report from both sources");

    // state --at equals what the live ledger showed at those moments.
    for (position, live) in recorded.iter().step_by(5) {
        let (code, out) = replay(&[
            "state",
            "--json",
            "--at",
            &position.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_eq!(code, 0);
        let state: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(state["position"], *position);
        assert_eq!(&state["accounts"], live, "state at {position}");
    }
    // By time: the state at an event's record time holds every event recorded by then.
    let events = Source::DataDir(data.clone()).events().unwrap();
    let middle = &events[events.len() / 2];
    let at = middle.record_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let through = events
        .iter()
        .filter(|e| e.record_time <= middle.record_time)
        .map(|e| e.seq)
        .max()
        .unwrap();
    let (_, by_time) = replay(&["state", "--json", "--at", &at, "--data-dir", data.to_str().unwrap()]);
    let (_, by_seq) = replay(&[
        "state",
        "--json",
        "--at",
        &through.to_string(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(by_time, by_seq);

    // history: one line per event of the account, in order, with the failure reasons.
    let (code, out) = replay(&["history", "--account", "acct-0", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0);
    let text = String::from_utf8(out).unwrap();
    let expected = events.iter().filter(|e| e.account == "acct-0").count();
    assert_eq!(text.lines().count(), expected);
    assert!(
        // The wallet's masked form is a personal field: sealed (schema v8), the audit tool
        // holds no key.
        text.contains("wrong_password")
            && text.contains("wallet_bound")
            && text.contains("[sealed]")
            && !text.contains("1******"),
        "{text}"
    );
    let (_, out) = replay(&[
        "history",
        "--json",
        "--account",
        "acct-0",
        "--export",
        export.to_str().unwrap(),
    ]);
    let seqs: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        events
            .iter()
            .filter(|e| e.account == "acct-0")
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    );
}
