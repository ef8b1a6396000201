//! The `bindledger` command: thin. Parses flags, sets up tracing, calls into the library, and
//! maps errors to exit codes (printing the whole chain once).

use anyhow::{Context, Result};
use bindledger::config::{Config, Role, TokenConfig};
use bindledger::gateway::SimulatedGateway;
use bindledger::node::Node;
use bindledger::secret::{write_private, LedgerSecret};
use bindledger::{bench, demo, offline};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// mimalloc: the writer allocates events that tokio threads free; glibc's arenas contend on
/// that pattern (measured: about 10% of CPU in malloc and its locks under load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes.
use bindledger::outln;

const EXIT_ERROR: i32 = 1;
const EXIT_VERIFY_FAILED: i32 = 3;

#[derive(Parser)]
#[command(
    name = "bindledger",
    version,
    about = "An event-sourced, hash-chained ledger of payment-wallet bindings",
    after_help = "Exit codes: 0 success, 1 error, 2 bad usage, 3 verification found a problem."
)]
struct Cli {
    /// Log lines on stderr as text (coloured only on a terminal, and never with NO_COLOR set)
    /// or as one JSON object per line, for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BINDLEDGER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML configuration file (see README for every key and its default).
    #[arg(long, short = 'c', env = "BINDLEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the file and BINDLEDGER_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address, IP:PORT or HOST:PORT (overrides the file and BINDLEDGER_LISTEN).
    #[arg(long, value_parser = bindledger::config::resolve_address)]
    listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Run as a read replica: follow the events topic (kafka.brokers, kafka.topic) into this
    /// data directory, serve every read, and answer commands 421 not_primary (replica.enabled).
    #[arg(long)]
    replica: bool,
    /// With --replica: the primary's URL, named in not_primary answers (replica.primary_url).
    #[arg(long, requires = "replica")]
    primary_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ledger and its HTTP API (or, with --replica, a read replica of it).
    Serve(ServeArgs),
    /// Run the ledger with a simulated population of shoppers (and a few attackers), printing
    /// a live summary.
    Demo(DemoArgs),
    /// Write a stopped ledger's events as NDJSON (the exact stored bytes, one per line).
    Export {
        /// The stopped ledger's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// First global sequence to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Output file (default: standard output).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Also write the signed checkpoints stored in the directory to this file (NDJSON, as
        /// `GET /v1/checkpoints` serves them), for `bindledger-replay verify --checkpoints`.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Verify a stopped ledger: the hash chain, and the stored projection and alerts against a
    /// rebuild.
    Verify {
        /// The stopped ledger's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The alert rules the ledger ran with (default: the built-in rules).
        #[arg(long, env = "BINDLEDGER_ALERT_RULES")]
        rules: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure raw sled, the library path and HTTP end to end in one run.
    Bench(bench::BenchArgs),
    /// Measure the alert monitor: latency from a command's acknowledgement to its alert on the
    /// live feed at paced rates, and rule throughput over a stored log against decoding alone.
    BenchAlerts(bindledger::bench_alerts::AlertBenchArgs),
    /// Read the events topic as an analytics team would: spend per account, month and
    /// provider; bind success rates; failure reasons per day.
    Consume(bindledger::analytics::ConsumeArgs),
    /// Measure the Kafka relay against a raw producer on the same broker, and end-to-end lag.
    BenchKafka(bench::KafkaBenchArgs),
    /// Measure the library path with the on-disk idempotency index against the in-memory one,
    /// with millions of live keys, and the memory each holds.
    BenchIdempotency(bench::IdempotencyBenchArgs),
    /// Rebuild a data directory from the Kafka events topic: the log byte for byte, every link
    /// checked, the signed checkpoints checked with --public-key and kept. Resumable: run it
    /// again on the same directory to go on. `serve` then rebuilds projections and alerts.
    Restore(RestoreArgs),
    /// Show what the built-in simulated provider knows of a wallet (for trying the API by
    /// hand): its standing, payment password, SMS code, biometric assertions and balance.
    SimWallet {
        #[command(flatten)]
        common: Common,
        /// alipay, wechat_pay, apple_pay, union_pay, bank_card, credit_card or other:<name>.
        #[arg(long, default_value = "alipay")]
        provider: String,
        /// The wallet's phone or account number.
        wallet_account: String,
    },
    /// List a running ledger's alerts (newest first), or follow them live with --follow.
    Alerts(AlertsArgs),
    /// Ask a running ledger how it is: health, log length, every Kafka relay, the alert monitor.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift the lock on a binding (security role): the answer is the recorded event,
    /// `binding_unlocked`, or `binding_unlock_failed` with its reason (exit 1).
    Unlock {
        #[command(flatten)]
        remote: Remote,
        /// The account.
        #[arg(long)]
        account: String,
        /// The locked binding's id.
        #[arg(long)]
        binding: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote a read replica to primary (writer role): it reads the events topic to its end,
    /// then takes commands and starts its relays. Stop the previous primary first (README,
    /// "Failover"). Exit 0 once it takes commands, 1 if it could not.
    Promote {
        #[command(flatten)]
        remote: Remote,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How to reach a running ledger.
#[derive(Args)]
struct Remote {
    /// The ledger's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "BINDLEDGER_URL")]
    url: String,
    /// A token with the needed role (status: reader; alerts: security or auditor). Default:
    /// the admin token in --data-dir.
    #[arg(long, env = "BINDLEDGER_TOKEN")]
    token: Option<String>,
    /// Where to find the admin token when --token is not given (the ledger's data directory).
    #[arg(long, default_value = "bindledger-data")]
    data_dir: PathBuf,
}

impl Remote {
    fn connect(&self) -> Result<(SocketAddr, String)> {
        Ok((
            parse_url(&self.url)?,
            token_or_admin(self.token.clone(), &self.data_dir)?,
        ))
    }
}

#[derive(Args)]
struct AlertsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Follow the live feed (Server-Sent Events), reconnecting without loss or repeats.
    #[arg(long, short = 'f')]
    follow: bool,
    /// With --follow: start after this stream seq (default: from the first alert).
    #[arg(long)]
    after: Option<u64>,
    /// With --follow: only alerts as they open (not each update of an open alert).
    #[arg(long, requires = "follow")]
    opened: bool,
    /// At least this severe.
    #[arg(long, value_parser = ["low", "medium", "high", "critical"])]
    severity: Option<String>,
    /// Only this rule.
    #[arg(long, value_parser = ["password_brute_force", "bind_failure_burst", "bind_then_drain", "shared_wallet", "binding_churn", "amount_spike", "dead_wallet_probing"])]
    rule: Option<String>,
    /// Only alerts involving this account.
    #[arg(long)]
    account: Option<String>,
    /// Only alerts opened at or after this time (RFC 3339, e.g. 2026-11-28T08:00:00Z).
    #[arg(long, value_parser = parse_rfc3339)]
    since: Option<String>,
    /// Without --follow: at most this many (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: u64,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

fn parse_rfc3339(text: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|_| text.to_owned())
        .map_err(|_| "not an RFC 3339 time, e.g. 2026-11-28T08:00:00Z".to_owned())
}

#[derive(Args)]
struct RestoreArgs {
    /// The directory to restore into (new, or one a previous restore left unfinished).
    #[arg(long)]
    data_dir: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "BINDLEDGER_KAFKA_BROKERS")]
    brokers: String,
    /// The events topic.
    #[arg(long, env = "BINDLEDGER_KAFKA_TOPIC", default_value = "bindledger.events")]
    topic: String,
    /// The checkpoints topic.
    #[arg(long, default_value = "bindledger.checkpoints")]
    checkpoints_topic: String,
    /// The ledger's checkpoint public key (64 hex characters), from a channel you trust: the
    /// checkpoints are checked with it and kept. Without it they are not restored.
    #[arg(long)]
    public_key: Option<String>,
    /// The ledger's HMAC secret, the one the log was written with (it is not on Kafka; keep it
    /// in a secrets store). Or BINDLEDGER_SECRET.
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    demo: demo::DemoOptions,
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: `default`). Colour codes only when
/// stderr is a terminal and `NO_COLOR` is unset, so a file or a pipe gets plain text.
fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
    }
}

fn load_config(c: &Common) -> Result<Config> {
    let mut config = Config::load(c.config.as_deref())?;
    if let Some(d) = &c.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = c.listen {
        config.listen = l;
    }
    Ok(config)
}

/// The secret: `BINDLEDGER_SECRET` (hex) if set, else the secret file (created if missing).
fn load_secret(config: &Config) -> Result<LedgerSecret> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    match std::env::var("BINDLEDGER_SECRET") {
        Ok(hex) => Ok(LedgerSecret::from_hex(&hex)?),
        Err(_) => Ok(LedgerSecret::load_or_create(&config.secret_path())?),
    }
}

/// With no tokens configured, one token with every role is created in `<data_dir>/admin.token`.
fn ensure_tokens(config: &mut Config) -> Result<()> {
    if !config.tokens.is_empty() {
        return Ok(());
    }
    let path = config.data_dir.join("admin.token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(_) => {
            let mut b = [0u8; 24];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let t = hex::encode(b);
            write_private(&path, t.as_bytes())?;
            t
        }
    };
    tracing::info!(path = %path.display(), "no tokens configured: using the admin token (writer, reader, auditor, security) in this file");
    config.tokens.push(TokenConfig {
        token,
        roles: vec![Role::Writer, Role::Reader, Role::Auditor, Role::Security],
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = load_config(&args.common)?;
    if args.replica {
        config.replica.enabled = true;
    }
    if let Some(url) = args.primary_url {
        config.replica.primary_url = url;
    }
    config.validate()?;
    // Refuse an unusable rules file, and a busy address, before anything is created.
    config.alert_rules()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let secret = load_secret(&config)?;
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    ensure_tokens(&mut config)?;
    let node = Node::start(&config, secret, gateway)?;
    let addr = listener.local_addr()?;
    // One line on stdout that scripts (and tests) can read.
    outln!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, events = node.ledger.log_len(), alerts = config.alerts.enabled, "serving");
    bindledger::http::serve(listener, node.state.clone(), shutdown_signal()).await?;
    node.stop().await;
    Ok(())
}

/// `bindledger alerts`: lists alerts, or follows the live feed (reconnecting where it left).
async fn alerts(args: AlertsArgs) -> Result<i32> {
    let (addr, token) = args.remote.connect()?;
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
        let mut client = bindledger::client::Client::new(addr, Some(token));
        let (status, body) = client.get_json(&path).await.with_context(|| format!("asking {url}"))?;
        anyhow::ensure!(status.is_success(), "{url} answered {status}: {body}");
        let alerts: Vec<bindledger::alerts::Alert> = serde_json::from_value(body["alerts"].clone())?;
        for a in &alerts {
            if args.json {
                outln!("{}", serde_json::to_string(a)?);
            } else {
                outln!(
                    "{} {}",
                    a.opened_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    demo::alert_line(a)
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
        match bindledger::client::SseStream::open(addr, Some(&token), &path, last_id.as_deref()).await {
            Ok(Ok(mut stream)) => {
                backoff = std::time::Duration::from_millis(200);
                while let Ok(Some(msg)) = stream.next().await {
                    if let Some(id) = &msg.id {
                        last_id = Some(id.clone());
                    }
                    let change = serde_json::from_str::<bindledger::alerts::AlertChange>(&msg.data);
                    if args.opened && change.as_ref().is_ok_and(|c| c.change.to_string() != "opened") {
                        continue;
                    }
                    if args.json {
                        outln!("{}", msg.data);
                    } else if let Ok(c) = change {
                        outln!(
                            "{} {:<7} {}",
                            c.alert.updated_at.format("%H:%M:%S%.3f UTC"),
                            c.change,
                            demo::alert_line(&c.alert)
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

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn parse_url(url: &str) -> Result<SocketAddr> {
    bindledger::client::parse_http_addr(url).map_err(anyhow::Error::msg)
}

fn token_or_admin(token: Option<String>, data_dir: &Path) -> Result<String> {
    match token {
        Some(t) => Ok(t),
        None => std::fs::read_to_string(data_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("no --token and no admin token in {}", data_dir.display())),
    }
}

async fn status(remote: &Remote, json: bool) -> Result<i32> {
    let (addr, token) = remote.connect()?;
    let url = &remote.url;
    let mut client = bindledger::client::Client::new(addr, Some(token));
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

fn export(data_dir: &Path, from: u64, output: Option<&Path>) -> Result<()> {
    let n = match output {
        Some(p) => {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?);
            offline::export(data_dir, from, &mut f)?
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            offline::export(data_dir, from, &mut lock)?
        }
    };
    eprintln!("exported {n} events");
    Ok(())
}

fn verify(data_dir: &Path, rules: Option<&Path>, json: bool) -> Result<i32> {
    let rules = match rules {
        Some(p) => bindledger::alerts::RuleSet::load(p)?,
        None => bindledger::alerts::RuleSet::default(),
    };
    let report = offline::verify(data_dir, &rules)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("events:      {}", report.events);
        outln!("chain head:  {}", report.head);
        match &report.chain_error {
            None => outln!("chain:       ok"),
            Some(e) => outln!(
                "chain:       BROKEN at event {}: {e}",
                report.chain_error_seq.unwrap_or(0)
            ),
        }
        if report.projection_matches {
            outln!(
                "projection:  ok (every stored row equals a rebuild; snapshot at {})",
                report.snapshot_position
            );
        } else {
            outln!(
                "projection:  DIFFERS from a rebuild (snapshot at {}; accounts: {})",
                report.snapshot_position,
                report.projection_differences.join(", ")
            );
        }
        match &report.alerts_difference {
            None => outln!(
                "alerts:      ok ({} changes stored, {} raised by a rebuild)",
                report.alerts_stored,
                report.alerts_rebuilt
            ),
            Some(d) => outln!("alerts:      DIFFER from a rebuild: {d}"),
        }
        if let Some(n) = &report.alerts_rules_note {
            outln!("             note: {n}");
        }
    }
    Ok(if report.ok() { 0 } else { EXIT_VERIFY_FAILED })
}

fn run(cli: Cli) -> Result<i32> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Serve(common) => {
            init_tracing("info", log_format);
            tokio::runtime::Runtime::new()?.block_on(serve(common))?;
            Ok(0)
        }
        Command::Demo(args) => {
            init_tracing("warn", log_format);
            let mut config = load_config(&args.common)?;
            if args.common.data_dir.is_none() && std::env::var_os("BINDLEDGER_DATA_DIR").is_none() {
                config.data_dir = std::env::temp_dir().join(format!("bindledger-demo-{}", std::process::id()));
            }
            let secret = load_secret(&config)?;
            ensure_tokens(&mut config)?;
            let mut opts = args.demo;
            opts.listen_given = args.common.listen.is_some() || std::env::var_os("BINDLEDGER_LISTEN").is_some();
            tokio::runtime::Runtime::new()?.block_on(demo::run(config, secret, opts))?;
            Ok(0)
        }
        Command::Export {
            data_dir,
            from,
            output,
            checkpoints,
        } => {
            init_tracing("warn", log_format);
            if let Some(path) = &checkpoints {
                bindledger::store::require_log(&data_dir)?;
                let store = bindledger::store::Store::open_for_scan(&data_dir)?;
                let all = bindledger::checkpoint::CheckpointStore::new(store.checkpoints_tree()).all()?;
                let mut text = String::new();
                for cp in &all {
                    text.push_str(&serde_json::to_string(cp)?);
                    text.push('\n');
                }
                std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("exported {} checkpoints to {}", all.len(), path.display());
            }
            export(&data_dir, from, output.as_deref())?;
            Ok(0)
        }
        Command::Verify { data_dir, rules, json } => {
            init_tracing("warn", log_format);
            verify(&data_dir, rules.as_deref(), json)
        }
        Command::Restore(args) => {
            init_tracing("warn", log_format);
            let secret = match (&args.secret_file, std::env::var("BINDLEDGER_SECRET")) {
                (Some(path), _) => LedgerSecret::from_hex(
                    &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
                )?,
                (None, Ok(hex)) => LedgerSecret::from_hex(&hex)?,
                (None, Err(_)) => {
                    use clap::CommandFactory;
                    Cli::command()
                        .error(
                            clap::error::ErrorKind::MissingRequiredArgument,
                            "restore needs the ledger's secret: --secret-file FILE or BINDLEDGER_SECRET",
                        )
                        .exit()
                }
            };
            let kafka = bindledger::relay::KafkaConfig {
                brokers: args.brokers.clone(),
                topic: args.topic.clone(),
                ..Default::default()
            };
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let started = std::time::Instant::now();
            let report = bindledger::restore::restore(
                &kafka,
                Some(args.checkpoints_topic.as_str()).filter(|_| args.public_key.is_some()),
                args.public_key.as_deref(),
                &args.data_dir,
                &secret,
                |n| {
                    if terminal {
                        eprint!(
                            "\r\x1b[K{n} events, {:.0}/s",
                            n as f64 / started.elapsed().as_secs_f64().max(1e-9)
                        );
                    }
                },
            )?;
            if terminal {
                eprint!("\r\x1b[K");
            }
            outln!(
                "restored {} events into {} ({} were already there); head {} at event {}",
                report.restored,
                args.data_dir.display(),
                report.resumed_from,
                report.head,
                report.head_seq
            );
            match &args.public_key {
                Some(_) => outln!(
                    "checkpoints: {} checked and kept ({} beyond the restored log)",
                    report.checkpoints_kept,
                    report.checkpoints_beyond
                ),
                None => outln!("checkpoints: not restored (give --public-key to check and keep them)"),
            }
            outln!(
                "next: bindledger serve --data-dir {} (with the same secret and checkpoint key)",
                args.data_dir.display()
            );
            Ok(0)
        }
        Command::Consume(args) => {
            init_tracing("warn", log_format);
            let report = bindledger::analytics::consume(&args)?;
            if args.json {
                outln!("{}", serde_json::to_string(&report)?);
            } else {
                outln!("{}", report.analytics.summary());
                outln!(
                    "{} messages, {} duplicates dropped, {} undecodable",
                    report.messages,
                    report.duplicates,
                    report.undecodable
                );
            }
            Ok(0)
        }
        Command::SimWallet {
            common,
            provider,
            wallet_account,
        } => {
            init_tracing("warn", log_format);
            let config = load_config(&common)?;
            let provider = bindledger_events::Provider::parse(&provider)?;
            let g = SimulatedGateway::new(config.gateway.simulated.clone());
            let f = |factor| g.factor_code_for(&provider, &wallet_account, factor);
            use bindledger_events::Factor;
            outln!(
                "provider:          {provider} (simulated, seed {})",
                config.gateway.simulated.seed
            );
            outln!("standing:          {:?}", g.wallet_status(&provider, &wallet_account));
            outln!("payment_password:  {}", g.password_for(&provider, &wallet_account));
            outln!("sms code:          {}", f(Factor::Sms));
            outln!("fingerprint:       {}", f(Factor::Fingerprint));
            outln!("face:              {}", f(Factor::Face));
            outln!(
                "balance:           {}",
                bindledger_events::Currency::CNY.format(g.initial_balance_minor(&provider, &wallet_account))
            );
            Ok(0)
        }
        Command::Alerts(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(alerts(args))
        }
        Command::Status { remote, json } => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(status(&remote, json))
        }
        Command::Promote { remote, json } => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(async {
                let (addr, token) = remote.connect()?;
                let (status, v) = bindledger::client::Client::new(addr, Some(token))
                    .post_json("/v1/admin/promote", &serde_json::json!({}))
                    .await
                    .with_context(|| format!("asking {}", remote.url))?;
                if json {
                    outln!("{v}");
                } else if status.is_success() {
                    if v["promoted"] == true {
                        outln!(
                            "promoted: {} takes commands, {} events, after {:.3} s",
                            remote.url,
                            v["events"],
                            v["seconds"].as_f64().unwrap_or(0.0)
                        );
                    } else {
                        outln!("{} is already the primary ({} events)", remote.url, v["events"]);
                    }
                } else {
                    eprintln!(
                        "error: {} answered {status}: {} ({})",
                        remote.url,
                        v["error"]["message"].as_str().unwrap_or("?"),
                        v["error"]["code"].as_str().unwrap_or("?")
                    );
                }
                Ok(if status.is_success() { 0 } else { EXIT_ERROR })
            })
        }
        Command::Unlock {
            remote,
            account,
            binding,
            json,
        } => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(async {
                let (addr, token) = remote.connect()?;
                let path = format!(
                    "/v1/accounts/{}/bindings/{}/unlock",
                    url_escape(&account),
                    url_escape(&binding)
                );
                let (status, v) = bindledger::client::Client::new(addr, Some(token))
                    .post_json(&path, &serde_json::json!({"confirm": true}))
                    .await
                    .with_context(|| format!("asking {}", remote.url))?;
                if json {
                    outln!("{v}");
                }
                if !status.is_success() {
                    if !json {
                        eprintln!(
                            "error: {} answered {status}: {} ({})",
                            remote.url,
                            v["error"]["message"].as_str().unwrap_or("?"),
                            v["error"]["code"].as_str().unwrap_or("?")
                        );
                    }
                    return Ok(EXIT_ERROR);
                }
                let event = &v["event"];
                match v["event_type"].as_str() {
                    Some("binding_unlocked") => {
                        if !json {
                            outln!(
                                "unlocked binding {binding} of {account} (the lock of alert {}), event {}",
                                event["payload"]["alert_id"].as_str().unwrap_or("?"),
                                event["seq"]
                            );
                        }
                        Ok(0)
                    }
                    _ => {
                        if !json {
                            outln!(
                                "not unlocked: {} (event {})",
                                v["failure_code"].as_str().unwrap_or("?"),
                                event["seq"]
                            );
                        }
                        Ok(EXIT_ERROR)
                    }
                }
            })
        }
        Command::BenchKafka(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench::kafka(args))?;
            Ok(0)
        }
        Command::BenchIdempotency(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench::idempotency(args))?;
            Ok(0)
        }
        Command::BenchAlerts(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bindledger::bench_alerts::run(args))?;
            Ok(0)
        }
        Command::Bench(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench::run(args))?;
            Ok(0)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_ERROR);
        }
    }
}
