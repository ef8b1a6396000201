//! Signed checkpoints: a log rewritten consistently after a checkpoint (its chain recomputed)
//! passes a plain `verify` but fails `verify --checkpoints`; so does a truncated log, and
//! checkpoints signed with another key are refused.

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::{Config, Role, TokenConfig};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::ledger::checkpoint::{CheckpointKey, CheckpointStore};
use bindledger_events::{decode, encode, hash_bytes, Provider, GENESIS_HASH};
use std::process::Command;
use std::sync::Arc;

const TOKEN: &str = "auditor-token-0123456789";

fn replay(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

#[test]
fn a_rewritten_or_truncated_log_fails_against_the_signed_checkpoints() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = Config {
        data_dir: data.clone(),
        tokens: vec![TokenConfig {
            token: TOKEN.into(),
            roles: vec![Role::Auditor],
            name: None,
            client_cert_sha256: None,
        }],
        ..Config::default()
    };
    config.gateway.simulated = Scenario::quiet(9);
    config.checkpoints.every_events = 10;
    let g = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let alipay = Provider::parse("alipay").unwrap();
    let served = rt.block_on(async {
        let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([4; 32]), g.clone()).unwrap();
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
        for a in 0..64u64 {
            let phone = format!("139{a:08}");
            let req = bindledger::domain::command::BindRequest {
                provider: "alipay".into(),
                wallet_account: SecretString::new(phone.clone()),
                payment_password: SecretString::new(g.password_for(&alipay, &phone)),
                factor: None,
                common: Default::default(),
            };
            node.ledger
                .bind(req.validate(&format!("acct-{a}"), chrono::Utc::now()).unwrap())
                .await
                .unwrap();
            if a % 16 == 15 {
                tokio::time::sleep(std::time::Duration::from_millis(700)).await;
                // let the checkpointer look
            }
        }
        let url = format!("http://{addr}");
        let served =
            tokio::task::spawn_blocking(move || bindledger_replay::read_checkpoints(&url, Some(TOKEN)).unwrap())
                .await
                .unwrap();
        let _ = stop.send(());
        let _ = server.await;
        node.stop().await;
        served
    });
    let key = CheckpointKey::load_or_create(&data.join("checkpoint.key"))
        .unwrap()
        .public_hex();
    assert!(served.len() >= 3, "checkpoints while running: {served:?}");
    assert!(served.iter().all(|c| c.verify(&key).is_ok()));
    // Offline: every checkpoint, the last one at the log's end (made on stop).
    let store = bindledger::ledger::store::Store::open(&data).unwrap();
    let cps = CheckpointStore::new(store.checkpoints_tree()).all().unwrap();
    let lines: Vec<Vec<u8>> = store.scan_events(1).map(|r| r.unwrap().1.to_vec()).collect();
    drop(store);
    assert_eq!(cps.last().unwrap().seq, lines.len() as u64);
    let cp_file = dir.path().join("checkpoints.ndjson");
    std::fs::write(
        &cp_file,
        cps.iter()
            .map(|c| serde_json::to_string(c).unwrap() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let write = |name: &str, lines: &[Vec<u8>]| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            lines
                .iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        p
    };
    let check = |export: &std::path::Path, key: &str| {
        let plain = replay(&["verify", "--json", "--export", export.to_str().unwrap()]);
        let signed = replay(&[
            "verify",
            "--json",
            "--export",
            export.to_str().unwrap(),
            "--checkpoints",
            cp_file.to_str().unwrap(),
            "--public-key",
            key,
        ]);
        (plain, signed)
    };

    let intact = write("intact.ndjson", &lines);
    let ((code, _), (signed_code, r)) = check(&intact, &key);
    assert_eq!((code, signed_code), (0, 0), "{r}");

    // Rewrite event 5 and recompute the chain after it: consistent, and caught.
    let mut rewritten = lines.clone();
    let mut prev = GENESIS_HASH;
    for (i, bytes) in rewritten.iter_mut().enumerate() {
        let mut e = decode(bytes).unwrap();
        if i == 4 {
            e.context.channel = "web".into();
        }
        e.prev_hash = prev;
        *bytes = encode(&e);
        prev = hash_bytes(bytes);
    }
    assert_ne!(rewritten[4], lines[4]);
    let rewritten = write("rewritten.ndjson", &rewritten);
    let ((code, _), (signed_code, r)) = check(&rewritten, &key);
    assert_eq!(code, 0, "the chain alone cannot tell");
    assert_eq!(signed_code, 3, "{r}");
    let first_cp_after = cps.iter().map(|c| c.seq).find(|s| *s >= 5).unwrap();
    assert_eq!(
        (r["problem"]["kind"].as_str(), r["problem"]["seq"].as_u64()),
        (Some("checkpoint_mismatch"), Some(first_cp_after)),
        "{r}"
    );

    // Truncated: the last events removed.
    let truncated = write("truncated.ndjson", &lines[..lines.len() - 3]);
    let ((code, _), (signed_code, r)) = check(&truncated, &key);
    assert_eq!((code, signed_code), (0, 3), "{r}");
    assert_eq!(r["problem"]["kind"], "truncated");

    // Checkpoints checked with another key are refused.
    let other = CheckpointKey::load_or_create(&dir.path().join("other.key"))
        .unwrap()
        .public_hex();
    let (_, (signed_code, r)) = check(&intact, &other);
    assert_eq!(
        (signed_code, r["problem"]["kind"].as_str()),
        (3, Some("checkpoint_signature")),
        "{r}"
    );

    // Offline, a stopped ledger's own checkpoints: checked with --data-dir and the key.
    let (code, r) = replay(&[
        "verify",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["checkpoints_checked"].as_u64(), r["checkpoint_seq"].as_u64()),
        (Some(cps.len() as u64), Some(lines.len() as u64)),
        "{r}"
    );
    let (code, r) = replay(&[
        "verify",
        "--json",
        "--export",
        intact.to_str().unwrap(),
        "--checkpoints",
        cp_file.to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    assert_eq!(
        (code, r["checkpoints_checked"].as_u64()),
        (0, Some(cps.len() as u64)),
        "{r}"
    );
}
