//! Backtesting candidate rules over a real ledger's log against the alerts it raised.

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::Config;
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger_events::Provider;
use std::process::Command;
use std::sync::Arc;

fn backtest(data: &std::path::Path, rules: &str) -> serde_json::Value {
    backtest_from(
        &["--data-dir", data.to_str().unwrap()],
        data.parent().unwrap(),
        rules,
        &[],
    )
}

/// `bindledger-replay backtest --json` on a source, with the candidate rules written to a file.
fn backtest_from(source: &[&str], dir: &std::path::Path, rules: &str, more: &[&str]) -> serde_json::Value {
    let file = dir.join(format!("rules-{}.toml", rules.len()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(["backtest", "--json", "--rules", file.to_str().unwrap()])
        .args(source)
        .args(more)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_candidate_threshold_is_compared_with_what_was_raised() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = Config {
        data_dir: data.clone(),
        ..Config::default()
    };
    config.gateway.simulated = Scenario::quiet(12);
    let g = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let alipay = Provider::parse("alipay").unwrap();
    rt.block_on(async {
        let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([1; 32]), g.clone()).unwrap();
        // Wrong payment passwords: 5 for acct-a, 4 for acct-b, 7 for acct-c.
        for (n, (account, tries)) in [("acct-a", 5), ("acct-b", 4), ("acct-c", 7)].into_iter().enumerate() {
            let phone = format!("139{n:08}");
            let bind = bindledger::domain::command::BindRequest {
                provider: "alipay".into(),
                wallet_account: SecretString::new(phone.clone()),
                payment_password: SecretString::new(g.password_for(&alipay, &phone)),
                factor: None,
                common: Default::default(),
            };
            let r = node
                .ledger
                .bind(bind.validate(account, chrono::Utc::now()).unwrap())
                .await
                .unwrap();
            let bindledger_events::Payload::WalletBound { binding_id, .. } = r.event.payload else {
                panic!()
            };
            for i in 0..tries {
                let pay = bindledger::domain::command::PayRequest {
                    binding_id: binding_id.to_string(),
                    order_id: format!("o-{i}"),
                    amount_minor: 100,
                    currency: None,
                    payment_password: SecretString::new("wrong".into()),
                    factor: None,
                    common: Default::default(),
                };
                node.ledger
                    .pay(pay.validate(account, chrono::Utc::now()).unwrap())
                    .await
                    .unwrap();
            }
        }
        node.stop().await;
    });
    // The same rules: nothing differs.
    let same = backtest(&data, "");
    assert_eq!(
        (
            same["added"].as_array().unwrap().len(),
            same["removed"].as_array().unwrap().len(),
            same["changed"].as_array().unwrap().len()
        ),
        (0, 0, 0)
    );
    assert_eq!(same["unchanged"], 2, "acct-a and acct-c were alerted");
    // Only the severity: the same alerts, changed.
    let severity = backtest(&data, "[password_brute_force]\nseverity = \"critical\"\n");
    assert_eq!(severity["changed"].as_array().unwrap().len(), 2);
    assert_eq!(severity["changed"][0][1]["severity"], "critical");
    // A threshold of 4: acct-b too, and the others open one attempt earlier (new ids).
    let four = backtest(&data, "[password_brute_force]\nthreshold = 4\n");
    let accounts = |v: &serde_json::Value| {
        let mut a: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"]["value"].as_str().unwrap().to_owned())
            .collect();
        a.sort();
        a
    };
    assert_eq!(accounts(&four["added"]), vec!["acct-a", "acct-b", "acct-c"]);
    assert_eq!(accounts(&four["removed"]), vec!["acct-a", "acct-c"]);
    // A threshold of 10: nothing would have been raised.
    let ten = backtest(&data, "[password_brute_force]\nthreshold = 10\n");
    assert_eq!(
        (ten["added"].as_array().unwrap().len(), accounts(&ten["removed"])),
        (0, vec!["acct-a".to_owned(), "acct-c".to_owned()])
    );

    // From an export, which holds no alerts: compared with what the current rules raise over
    // it (the built-in ones, which the ledger ran), the same answer.
    let export = dir.path().join("export.ndjson");
    bindledger::ledger::offline::export(&data, 1, &mut std::fs::File::create(&export).unwrap()).unwrap();
    let source = ["--export", export.to_str().unwrap()];
    let four_again = backtest_from(&source, dir.path(), "[password_brute_force]\nthreshold = 4\n", &[]);
    assert_eq!(
        (accounts(&four_again["added"]), accounts(&four_again["removed"])),
        (accounts(&four["added"]), accounts(&four["removed"]))
    );
    assert_eq!(four_again["events"], four["events"]);
    // Against current rules equal to the candidate: nothing differs.
    let current = dir.path().join("current.toml");
    std::fs::write(&current, "[password_brute_force]\nthreshold = 4\n").unwrap();
    let none = backtest_from(
        &source,
        dir.path(),
        "[password_brute_force]\nthreshold = 4\n",
        &["--current-rules", current.to_str().unwrap()],
    );
    assert_eq!(
        (
            none["added"].as_array().unwrap().len(),
            none["removed"].as_array().unwrap().len(),
            none["unchanged"].as_u64()
        ),
        (0, 0, Some(3))
    );
}
