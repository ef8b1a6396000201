//! `bindledger alerts`: list alerts, or follow them live.

use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;

use crate::remote::{url_escape, Remote};

#[derive(Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Follow the live feed (Server-Sent Events), reconnecting without loss or repeats.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// With --follow: start after this stream seq (default: from the first alert).
    #[arg(long)]
    pub after: Option<u64>,
    /// With --follow: only alerts as they open (not each update of an open alert).
    #[arg(long, requires = "follow")]
    pub opened: bool,
    /// At least this severe.
    #[arg(long, value_parser = ["low", "medium", "high", "critical"])]
    pub severity: Option<String>,
    /// Only this rule.
    #[arg(long, value_parser = ["password_brute_force", "bind_failure_burst", "bind_then_drain", "shared_wallet", "binding_churn", "amount_spike", "dead_wallet_probing", "password_stuffing"])]
    pub rule: Option<String>,
    /// Only alerts involving this account.
    #[arg(long)]
    pub account: Option<String>,
    /// Only alerts opened at or after this time (RFC 3339, e.g. 2026-11-28T08:00:00Z).
    #[arg(long, value_parser = parse_rfc3339)]
    pub since: Option<String>,
    /// Without --follow: at most this many (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_rfc3339(text: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|_| text.to_owned())
        .map_err(|_| "not an RFC 3339 time, e.g. 2026-11-28T08:00:00Z".to_owned())
}

/// `bindledger alerts`: lists alerts, or follows the live feed (reconnecting where it left).
pub async fn run(args: AlertsArgs) -> Result<i32> {
    let (addr, token) = args.remote.connect()?;
    let colour = stdout_colour();
    let url = &args.remote.url;
    let mut query: Vec<String> = Vec::new();
    for (k, v) in [
        ("severity", &args.severity),
        ("rule", &args.rule),
        ("account", &args.account),
        ("since", &args.since),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", url_escape(v)));
        }
    }
    if !args.follow {
        query.push(format!("limit={}", args.limit));
        let path = format!("/v1/alerts?{}", query.join("&"));
        let mut client = bindledger::adapters::http::client::Client::new(addr.clone(), Some(token.clone()));
        let (status, body) = client.get_json(&path).await.with_context(|| format!("asking {url}"))?;
        anyhow::ensure!(status.is_success(), "{url} answered {status}: {body}");
        let alerts: Vec<bindledger::domain::alerts::Alert> = serde_json::from_value(body["alerts"].clone())?;
        for a in &alerts {
            if args.json {
                outln!("{}", serde_json::to_string(a)?);
            } else {
                outln!(
                    "{} {}",
                    a.opened_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    alert_line(a, colour)
                );
            }
        }
        if !args.json {
            eprintln!(
                "{} alerts{}",
                alerts.len(),
                if body["next_cursor"].is_null() {
                    ""
                } else {
                    " (more: narrow the filters or raise --limit)"
                }
            );
        }
        return Ok(0);
    }
    let path = format!("/v1/alerts/stream?{}", query.join("&"));
    let mut last_id = args.after.map(|a| a.to_string());
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match bindledger::adapters::http::client::SseStream::open(addr.clone(), Some(&token), &path, last_id.as_deref())
            .await
        {
            Ok(Ok(mut stream)) => {
                backoff = std::time::Duration::from_millis(200);
                loop {
                    let msg = match stream.next().await {
                        Ok(Some(msg)) => msg,
                        Ok(None) => break,
                        // Reading the stream again would meet the same event: stop, and say so.
                        Err(e @ bindledger::adapters::http::client::ClientError::EventTooLong) => {
                            anyhow::bail!("{url}: {e}")
                        }
                        Err(_) => break,
                    };
                    if let Some(id) = &msg.id {
                        last_id = Some(id.clone());
                    }
                    let change = serde_json::from_str::<bindledger::domain::alerts::AlertChange>(&msg.data);
                    if args.opened && change.as_ref().is_ok_and(|c| c.change != "opened") {
                        continue;
                    }
                    if args.json {
                        outln!("{}", msg.data);
                    } else if let Ok(c) = change {
                        outln!(
                            "{} {:<7} {}",
                            c.alert.updated_at.format("%H:%M:%S%.3f UTC"),
                            c.change,
                            alert_line(&c.alert, colour)
                        );
                    }
                    std::io::stdout().flush()?;
                }
                eprintln!(
                    "(the feed closed; reconnecting after {})",
                    last_id.as_deref().unwrap_or("the start")
                );
            }
            Ok(Err((status, body))) => anyhow::bail!("{url} answered {status}: {}", String::from_utf8_lossy(&body)),
            Err(e) => eprintln!("(cannot reach {url}: {e}; retrying)"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Whether standard output gets colour: only a terminal, and never with `NO_COLOR` set.
pub fn stdout_colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A severity, padded to its column, in its colour on a terminal (critical bold red, high red,
/// medium yellow).
fn severity(a: &bindledger::domain::alerts::Alert, colour: bool) -> String {
    let text = format!("{:<8}", a.severity.as_str());
    let code = match a.severity.as_str() {
        "critical" => "1;31",
        "high" => "31",
        "medium" => "33",
        _ => return text,
    };
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text
    }
}

/// The events of an alert, short: all of up to three, else the first two, the last and how
/// many (an alert over 32 events stays on one line).
fn event_list(seqs: &[u64]) -> String {
    match seqs {
        [] => "no events".to_owned(),
        [one] => format!("event {one}"),
        _ if seqs.len() <= 3 => format!(
            "events {}",
            seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
        _ => format!(
            "events {}, {} … {} ({} in all)",
            seqs[0],
            seqs[1],
            seqs[seqs.len() - 1],
            seqs.len()
        ),
    }
}

/// One alert in one line (severity coloured when `colour`).
pub fn alert_line(a: &bindledger::domain::alerts::Alert, colour: bool) -> String {
    let key = if a.key.kind == "wallet" {
        format!("wallet {}…", &a.key.value[..16.min(a.key.value.len())])
    } else {
        format!("account {}", a.key.value)
    };
    let amount = |v: i64| a.currency.map_or(v.to_string(), |c| c.format(v));
    let what = match a.unit.as_str() {
        "minor_units" => format!("{} against {}", amount(a.observed), amount(a.threshold)),
        unit => format!("{} {} (threshold {})", a.observed, unit.replace('_', " "), a.threshold),
    };
    let lock = a
        .lock
        .as_ref()
        .map(|l| {
            format!(
                ", binding {} locked until {} UTC",
                l.binding_id,
                l.until.format("%H:%M:%S")
            )
        })
        .unwrap_or_default();
    format!(
        "{} {:<20} {key}: {what}, {}{lock} [{}]",
        severity(a, colour),
        a.rule,
        event_list(&a.event_seqs),
        a.id
    )
}
