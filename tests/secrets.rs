//! Raw phone numbers, passwords and verification codes never reach the sled files, the logs or
//! an HTTP response. The real binary runs with debug logging; afterwards every file it wrote
//! and every answer it gave is searched for the secrets the test used.

mod common;

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger_events::Factor;
use common::*;
use serde_json::json;

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_disk_logs_or_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let config = dir.path().join("bindledger.toml");
    std::fs::write(&config, "[gateway.simulated]\nseed = 11\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\nnetwork_error_per_mille = 0\n").unwrap();
    let server = spawn_server(
        &data,
        &log,
        &[("BINDLEDGER_CONFIG", config.to_str().unwrap()), ("RUST_LOG", "trace")],
    );
    let gateway = SimulatedGateway::new(Scenario::quiet(11));
    let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
    let mut answers: Vec<u8> = Vec::new();

    // Distinctive secrets, so that a match cannot be a coincidence.
    let phones = ["13798765432", "15611223344", "18800990011"];
    let wrong_passwords = ["Wr0ng-Pa55-Xq7", "Guess-9s8d7f-Zz"];
    let wrong_codes = ["Sms-Zz-98765-wrong", "bio-Qq-not-my-face"];
    let numeric_password = "987650123456";
    let mut bindings = Vec::new();
    for (i, p) in phones.iter().enumerate() {
        let pw = gateway.password_for(&alipay(), p);
        let sms = gateway.factor_code_for(&alipay(), p, Factor::Sms);
        for body in [
            // wrong password, then wrong SMS code, then right.
            json!({"provider": "alipay", "wallet_account": p, "payment_password": wrong_passwords[i % 2]}),
            json!({"provider": "alipay", "wallet_account": p, "payment_password": pw, "factor": {"kind": "sms", "code": wrong_codes[0]}}),
            json!({"provider": "alipay", "wallet_account": p, "payment_password": pw, "factor": {"kind": "sms", "code": sms}}),
        ] {
            let (_, bytes) = c
                .send(
                    hyper::Method::POST,
                    &format!("/v1/accounts/user-{i}/bindings"),
                    Some(serde_json::to_vec(&body).unwrap()),
                )
                .await
                .unwrap();
            answers.extend_from_slice(&bytes);
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if v["event_type"] == "wallet_bound" {
                bindings.push((
                    i,
                    v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned(),
                    pw.clone(),
                ));
            }
        }
    }
    assert_eq!(bindings.len(), phones.len());
    for (i, binding, pw) in &bindings {
        for body in [
            json!({"binding_id": binding, "order_id": "o-1", "amount_minor": 1500, "payment_password": pw}),
            json!({"binding_id": binding, "order_id": "o-2", "amount_minor": 1500, "payment_password": wrong_passwords[1]}),
            json!({"binding_id": binding, "order_id": "o-3", "amount_minor": 1500, "payment_password": pw, "factor": {"kind": "face", "code": wrong_codes[1]}}),
        ] {
            let (_, bytes) = c
                .send(
                    hyper::Method::POST,
                    &format!("/v1/accounts/user-{i}/payments"),
                    Some(serde_json::to_vec(&body).unwrap()),
                )
                .await
                .unwrap();
            answers.extend_from_slice(&bytes);
        }
    }
    // Malformed requests whose error messages could echo a secret back.
    for raw in [
        format!(
            "{{\"provider\":\"alipay\",\"wallet_account\":\"{}\",\"payment_password\":{numeric_password}}}",
            phones[0]
        ),
        format!(
            "{{\"provider\":\"alipay\",\"wallet_account\":{},\"payment_password\":\"x\"}}",
            phones[1]
        ),
        format!(
            "{{\"provider\":\"alipay\",\"wallet_account\":\"{}x\",\"payment_password\":\"{}\"}}",
            phones[2], wrong_passwords[0]
        ),
    ] {
        let (status, bytes) = c
            .send(
                hyper::Method::POST,
                "/v1/accounts/user-9/bindings",
                Some(raw.into_bytes()),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 400);
        answers.extend_from_slice(&bytes);
    }
    for path in [
        "/v1/accounts/user-0/bindings",
        "/v1/accounts/user-0/payments",
        "/v1/accounts/user-0/events",
        "/v1/events",
        "/metrics",
    ] {
        let (_, bytes) = c.send(hyper::Method::GET, path, None).await.unwrap();
        answers.extend_from_slice(&bytes);
    }
    drop(c);
    server.kill();

    let mut files = Vec::new();
    files_under(&data, &mut files);
    let mut corpus: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
        .collect();
    corpus.push(("the server's log".into(), std::fs::read(&log).unwrap()));
    corpus.push(("the HTTP answers".into(), answers));

    // The search can see what is there: account ids are on disk, masked wallets in the answers;
    // on disk the masked wallets are sealed (personal fields, schema v8).
    let disk: Vec<u8> = corpus
        .iter()
        .filter(|(n, _)| n.contains("data"))
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert!(contains(&disk, "user-1"), "the sled files hold the account ids");
    assert!(contains(&disk, "\"sealed:"), "the sled files hold sealed fields");
    assert!(!contains(&disk, "1******5432"), "a masked wallet on disk in the clear");
    assert!(contains(&corpus.last().unwrap().1, "1******3344"));
    assert!(
        std::fs::read(&log).unwrap().len() > 1000,
        "debug logging produced output"
    );

    let secrets: Vec<&str> = phones
        .iter()
        .chain(&wrong_passwords)
        .chain(&wrong_codes)
        .copied()
        .chain([numeric_password])
        .collect();
    for (name, bytes) in &corpus {
        for s in &secrets {
            assert!(!contains(bytes, s), "the secret {s:?} appears in {name}");
        }
    }
}
