//! Triage of an alert is part of the log: recorded by name, kept across a SIGKILL of the real
//! binary, and what an audit rebuilds from the log. (The offline `verify` after the crash,
//! restart and clean stop also holds a fix: a start that folded the log after a crash now
//! writes the folded accounts' rows with the snapshot position, so no snapshot claims a row
//! that is not there.)

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_is_recorded_by_name_survives_a_sigkill_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let tokens = format!(
        "writer+reader+auditor+security:{ALL},carol@security+reader:carol-token-0123456789,dave@security:dave-token-0123456789"
    );
    let env = [("BINDLEDGER_TOKENS", tokens.as_str())];
    let server = spawn_server(&data, &log, &env);
    let mut all = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
    let g =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::config::Config::default().gateway.simulated);
    let (_, bound) = all
        .post_json(
            "/v1/accounts/victim/bindings",
            &json!({"provider": "alipay", "wallet_account": phone(3), "payment_password": g.password_for(&alipay(), &phone(3))}),
        )
        .await
        .unwrap();
    let binding = bound["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
    for i in 0..6 {
        all.post_json(
            "/v1/accounts/victim/payments",
            &json!({"binding_id": binding, "order_id": format!("o-{i}"), "amount_minor": 100, "payment_password": "000000"}),
        )
        .await
        .unwrap();
    }
    let alert_id = loop {
        let (_, alerts) = all.get_json("/v1/alerts?rule=password_brute_force").await.unwrap();
        if let Some(id) = alerts["alerts"][0]["id"].as_str() {
            break id.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // Carol acknowledges, assigns and resolves; a bad action and a reader are refused.
    let mut carol = bindledger::adapters::http::client::Client::new(server.addr, Some("carol-token-0123456789".into()));
    let path = format!("/v1/alerts/{alert_id}/triage");
    for body in [
        json!({"action": "acknowledged", "note": "looking", "idempotency_key": "t-1"}),
        json!({"action": "assigned", "assignee": "dave", "note": "fraud desk"}),
        json!({"action": "resolved", "note": "holder confirmed; password changed"}),
    ] {
        let (status, v) = carol.post_json(&path, &body).await.unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
        assert_eq!(v["event_type"], "alert_triaged", "{v}");
    }
    let (status, v) = carol.post_json(&path, &json!({"action": "shrugged"})).await.unwrap();
    assert_eq!(
        (status.as_u16(), v["error"]["code"].as_str()),
        (400, Some("invalid_action")),
        "{v}"
    );
    let (status, v) = carol.post_json(&path, &json!({"action": "assigned"})).await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_assignee", "{status} {v}");
    let (status, _) = carol
        .post_json("/v1/alerts/no_such-1/triage", &json!({"action": "resolved"}))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 404);
    // A retry with the same idempotency key records nothing new.
    let (status, _) = carol
        .post_json(
            &path,
            &json!({"action": "acknowledged", "note": "looking", "idempotency_key": "t-1"}),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);

    let triage_of = |events: &serde_json::Value| -> Vec<serde_json::Value> {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["payload"]["type"] == "alert_triaged")
            .cloned()
            .collect()
    };
    let (_, before) = all.get_json("/v1/accounts/victim/events?limit=1000").await.unwrap();
    let before = triage_of(&before);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before
        .iter()
        .all(|e| e["payload"]["operator"] == "carol" && e["payload"]["alert_id"] == alert_id.as_str()));
    assert_eq!(before[1]["payload"]["assignee"], "dave");

    // The alert says where it stands: resolved by carol, still assigned to dave.
    let standing = |v: &serde_json::Value| {
        (
            v["triage"]["action"].clone(),
            v["triage"]["operator"].clone(),
            v["triage"]["assignee"].clone(),
            v["triage"]["seq"].clone(),
        )
    };
    let triaged_at = before[2]["seq"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let resolved = loop {
        let (_, v) = all.get_json(&format!("/v1/alerts/{alert_id}")).await.unwrap();
        if v["triage"]["action"] == "resolved" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no triage on the alert: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        standing(&resolved),
        (json!("resolved"), json!("carol"), json!("dave"), triaged_at.clone())
    );
    let (_, listed) = all.get_json("/v1/alerts?rule=password_brute_force").await.unwrap();
    assert_eq!(standing(&listed["alerts"][0]), standing(&resolved));

    // SIGKILL, restart: the same events, byte for byte, and the log verifies offline.
    server.kill();
    let server = spawn_server(&data, &log, &env);
    let mut all = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
    let (_, after) = all.get_json("/v1/accounts/victim/events?limit=1000").await.unwrap();
    assert_eq!(triage_of(&after), before);
    let (_, again) = all.get_json(&format!("/v1/alerts/{alert_id}")).await.unwrap();
    assert_eq!(
        standing(&again),
        standing(&resolved),
        "the triage state after a SIGKILL"
    );
    server.terminate();
    let out = std::process::Command::new(binary())
        .args(["verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let export = std::process::Command::new(binary())
        .args(["export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let triaged = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter(|l| l.contains("\"type\":\"alert_triaged\""))
        .count();
    assert_eq!(triaged, 3);
    // The audit tool's account history names who did what.
    let history = std::process::Command::new(binary().with_file_name("bindledger-replay"))
        .args(["history", "--data-dir"])
        .arg(&data)
        .args(["--account", "victim"])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(
        history.contains(&format!("{alert_id} assigned by carol to dave"))
            && history.contains(&format!("{alert_id} resolved by carol")),
        "{history}"
    );
}
