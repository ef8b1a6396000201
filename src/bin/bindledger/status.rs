//! `bindledger status`: health, role, replica lag, every relay and the monitor of a running
//! ledger; exit 1 when it is not ok or a relay is failing.

use anyhow::{Context, Result};
use bindledger::outln;

use crate::remote::Remote;
use crate::EXIT_ERROR;

pub async fn run(remote: &Remote, json: bool) -> Result<i32> {
    let (addr, token) = remote.connect()?;
    let url = &remote.url;
    let mut client = bindledger::adapters::http::client::Client::new(addr, Some(token));
    let (_, health) = client
        .get_json("/healthz")
        .await
        .with_context(|| format!("asking {url}"))?;
    let (status, relays) = client.get_json("/v1/relays").await?;
    anyhow::ensure!(status.is_success(), "{url}/v1/relays answered {status}: {relays}");
    // The monitor's figures, from the Prometheus page.
    let (_, page) = client.send(hyper::Method::GET, "/metrics", None).await?;
    let page = String::from_utf8_lossy(&page);
    let gauge = |name: &str| {
        page.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    let opened: Vec<(String, u64)> = page
        .lines()
        .filter_map(|l| l.strip_prefix("bindledger_alerts_opened_total{rule=\""))
        .filter_map(|l| {
            l.split_once("\"} ")
                .and_then(|(rule, n)| Some((rule.to_owned(), n.trim().parse().ok()?)))
        })
        .collect();
    let monitor = gauge("bindledger_monitor_position").map(|position| {
        serde_json::json!({
            "position": position,
            "alert_stream_seq": gauge("bindledger_alert_stream_seq"),
            "open_alerts": gauge("bindledger_monitor_open_alerts"),
            "opened": opened.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })
    });
    // A relay in backoff with an error is failing (or refusing a topic): worth an exit code.
    let mut failing: Vec<&str> = ["events", "alerts", "checkpoints"]
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
                "events:  {} to {}, position {}, lag {} events / {:.3} s, published {}",
                relay["state"].as_str().unwrap_or("?"),
                relay["topic"].as_str().unwrap_or("?"),
                relay["position"],
                relay["lag_events"],
                relay["lag_seconds"].as_f64().unwrap_or(0.0),
                relay["published_total"]
            );
            for (name, r) in [("alerts:  ", &relays["alerts"]), ("checkpts:", &relays["checkpoints"])] {
                if r["state"] != "disabled" {
                    outln!(
                        "{name} {} to {}, position {}, published {}",
                        r["state"].as_str().unwrap_or("?"),
                        r["topic"].as_str().unwrap_or("?"),
                        r["position"],
                        r["published_total"]
                    );
                }
            }
            for r in ["events", "alerts", "checkpoints"] {
                if let Some(e) = relays[r]["last_error"].as_str() {
                    outln!("         {r} relay, last error: {e}");
                }
                if let Some(w) = relays[r]["warning"].as_str() {
                    outln!("         {r} relay, warning: {w}");
                }
            }
        }
        match &monitor {
            None => outln!("alerts:  monitor off (alerts.enabled = false)"),
            Some(m) => {
                let fired: Vec<String> = opened
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                outln!(
                    "alerts:  monitor at event {}, {} changes on the feed, {} open; opened: {}",
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
