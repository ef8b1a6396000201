//! `bindledger status`: health, role, replica lag, every relay and the monitor of a running
//! ledger; exit 1 when it is not ok or a relay is failing.

use anyhow::{Context, Result};

use crate::remote::Remote;
use crate::EXIT_ERROR;

/// Every relay `/v1/status` reports, in the order they are printed.
const RELAYS: [&str; 4] = ["events", "alerts", "notifications", "checkpoints"];

pub async fn run(remote: &Remote, json: bool) -> Result<i32> {
    let (addr, token) = remote.connect()?;
    let url = &remote.url;
    let mut client = bindledger::adapters::http::client::Client::new(addr, Some(token));
    let (status, all) = client
        .get_json("/v1/status")
        .await
        .with_context(|| format!("asking {url}"))?;
    anyhow::ensure!(status.is_success(), "{url}/v1/status answered {status}: {all}");
    let (health, relays, monitor) = (&all["health"], &all["relays"], &all["monitor"]);
    let opened: Vec<(String, u64)> = monitor["opened"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(rule, n)| (rule.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    // A relay in backoff with an error is failing (or refusing a topic): worth an exit code.
    let mut failing: Vec<&str> = RELAYS
        .into_iter()
        .filter(|k| relays[*k]["state"] == "backoff" && relays[*k]["last_error"].is_string())
        .collect();
    if health["replica"]["state"] == "failed" {
        failing.push("replica");
    }
    if json {
        outln!(
            "{}",
            serde_json::json!({"health": health, "relay": relays["events"], "relays": relays, "monitor": monitor})
        );
    } else {
        outln!(
            "ledger:  {} ({} events, {})",
            health["status"].as_str().unwrap_or("?"),
            health["events"],
            health["role"].as_str().unwrap_or("primary")
        );
        let r = &health["replica"];
        if r.is_object() {
            outln!(
                "replica: {}, lag {} events / {:.3} s, primary {}",
                r["state"].as_str().unwrap_or("?"),
                r["lag_events"],
                r["lag_seconds"].as_f64().unwrap_or(0.0),
                r["primary"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("(not configured)")
            );
        }
        let relay = &relays["events"];
        if relay["state"] == "disabled" && r.is_object() {
            outln!("relays:  none (a replica publishes nothing; the primary does)");
        } else if relay["state"] == "disabled" {
            outln!("relays:  disabled (no kafka.brokers configured)");
        } else {
            outln!(
                "relay events:        {} to {}, position {}, lag {} events / {:.3} s, published {}",
                relay["state"].as_str().unwrap_or("?"),
                relay["topic"].as_str().unwrap_or("?"),
                relay["position"],
                relay["lag_events"],
                relay["lag_seconds"].as_f64().unwrap_or(0.0),
                relay["published_total"]
            );
            for name in &RELAYS[1..] {
                let r = &relays[*name];
                if r["state"] != "disabled" {
                    outln!(
                        "relay {:<14} {} to {}, position {}, published {}",
                        format!("{name}:"),
                        r["state"].as_str().unwrap_or("?"),
                        r["topic"].as_str().unwrap_or("?"),
                        r["position"],
                        r["published_total"]
                    );
                }
            }
            for r in RELAYS {
                if let Some(e) = relays[r]["last_error"].as_str() {
                    outln!("         {r} relay, last error: {e}");
                }
                if let Some(w) = relays[r]["warning"].as_str() {
                    outln!("         {r} relay, warning: {w}");
                }
            }
        }
        match monitor.is_object().then_some(monitor) {
            None => outln!("monitor: off (alerts.enabled = false)"),
            Some(m) => {
                let fired: Vec<String> = opened
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                outln!(
                    "monitor: at event {}, {} alert changes on the feed, {} open; opened: {}",
                    m["position"],
                    m["alert_stream_seq"],
                    m["open_alerts"],
                    if fired.is_empty() {
                        "none".to_owned()
                    } else {
                        fired.join(", ")
                    }
                );
            }
        }
    }
    Ok(if health["status"] == "ok" && failing.is_empty() {
        0
    } else {
        EXIT_ERROR
    })
}
