//! `bindledger-replay`: the audit tool. Reads a log from a stopped ledger's directory, an NDJSON
//! export, a running ledger's HTTP feed or the Kafka topic, and
//! - `verify`: checks the chain, the global and per-account sequences, and names the first
//!   problem (altered bytes, a missing event, a duplicate, a reordering) with its sequence;
//! - `history --account A`: one account's timeline;
//! - `state --at SEQ|TIME`: the bindings (and alerts) as they were at that moment, from the same
//!   projection and rule code the ledger runs;
//! - `backtest --rules FILE`: what a candidate rules file would have raised, against what was.

use anyhow::Context;
use bindledger::domain::alerts::engine::Engine;
use bindledger::domain::alerts::RuleSet;
use bindledger::domain::projection::Projection;
use bindledger_events::{Event, Payload};
use bindledger_replay::{audit_decoded, AuditReport, Pipeline, Source, Start};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The audit allocates every event's strings on worker threads and frees them on the main one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` for the tool's output: a closed pipe (`| head`) ends the program quietly with
/// exit code 0, as `head` expects, after removing the read copy of a data directory.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(e);
        }
    }};
}

fn stdout_failed(e: std::io::Error) -> ! {
    drop(READ_COPY.lock().unwrap_or_else(|p| p.into_inner()).take());
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}

/// The copy of a `--data-dir` this run reads (see [`bindledger_replay::ReadCopy`]), removed
/// however the program ends.
static READ_COPY: std::sync::Mutex<Option<bindledger_replay::ReadCopy>> = std::sync::Mutex::new(None);

const EXIT_ERROR: i32 = 1;
const EXIT_PROBLEM: i32 = 3;
/// Shown under every command's `--help`, not only the top one's.
const EXIT_CODES: &str = "Exit codes: 0 success, 1 the log cannot be read (or another error), 2 bad usage, 3 the log does not verify (every command checks the chain as it reads) or diff found a difference.";

/// The command line as clap parses it, every subcommand's help ending with the exit codes.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command()
        .mut_subcommands(|c| c.after_help(EXIT_CODES))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `state --at`: after an event, or at a moment of record time.
#[derive(Clone, Copy)]
enum At {
    Seq(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

impl At {
    /// Checked as clap parses it, so a bad value is bad usage (exit 2). The value is not
    /// repeated: it is the caller's.
    fn parse(s: &str) -> std::result::Result<At, String> {
        if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
            return s
                .parse::<u64>()
                .map(At::Seq)
                .map_err(|_| "a sequence number that large is past any log".to_owned());
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| At::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                "expected an event's seq (1, 2, ...) or an RFC 3339 time such as 2026-11-28T10:00:00Z".to_owned()
            })
    }
}

/// Ends the program as clap does for bad usage: the message, a hint, exit 2.
fn usage(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

#[derive(Parser)]
#[command(
    name = "bindledger-replay",
    version,
    about = "The bindledger audit tool",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the log comes from: exactly one.
#[derive(Args, Clone)]
struct From {
    /// A stopped ledger's data directory.
    #[arg(long, group = "source")]
    data_dir: Option<PathBuf>,
    /// An NDJSON export; `-` reads standard input.
    #[arg(long, group = "source")]
    export: Option<PathBuf>,
    /// A running ledger's address (http:// or https://, a host name or an address), read through its event feed.
    #[arg(long, group = "source", requires = "token")]
    url: Option<String>,
    /// An auditor token for --url.
    #[arg(long, env = "BINDLEDGER_TOKEN")]
    token: Option<String>,
    /// Kafka bootstrap servers: read the events topic.
    #[arg(long, group = "source")]
    brokers: Option<String>,
    /// The events topic, with --brokers.
    #[arg(long, default_value = "bindledger.events")]
    topic: String,
    /// A librdkafka property for --brokers, KEY=VALUE (repeat for more): security.protocol=ssl,
    /// ssl.ca.location=FILE, ... as the nodes' kafka.properties.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = kafka_property)]
    kafka_properties: Vec<(String, String)>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl From {
    /// The source; without exactly one, bad usage (exit 2).
    fn source(&self) -> Source {
        match (&self.data_dir, &self.export, &self.url, &self.brokers) {
            (Some(d), None, None, None) => Source::DataDir(d.clone()),
            (None, Some(p), None, None) => Source::Export(p.clone()),
            (None, None, Some(u), None) => Source::Http {
                url: u.clone(),
                token: self.token.clone().unwrap_or_default(),
            },
            (None, None, None, Some(b)) => Source::Kafka {
                brokers: b.clone(),
                topic: self.topic.clone(),
                properties: self.kafka_properties.clone(),
            },
            _ => usage("give one source: --data-dir, --export, --url (with --token) or --brokers"),
        }
    }
}

/// Prints where reading stopped and why, on stderr (the commands that rebuild state print
/// their result on stdout only for a log that verified).
fn print_problem(report: &AuditReport, json: bool) {
    if json {
        outln!(
            "{}",
            serde_json::json!({"verified": false, "events": report.events, "head": report.head, "problem": report.problem})
        );
    }
    if let Some(p) = &report.problem {
        eprintln!("the log does not verify: {}", problem_text(p));
        if report.events > 0 {
            eprintln!(
                "{} events before it verified (events {}..{}), head {}",
                report.events,
                report.first_seq,
                report.last_seq(),
                report.head
            );
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Verify the log; exit 3 naming the first problem.
    Verify {
        #[command(flatten)]
        from: From,
        /// Signed checkpoints to hold the log to: an NDJSON file, or a ledger's http:// or https:// URL (a running
        /// ledger's GET /v1/checkpoints, with --token).
        #[arg(long, requires = "public_key")]
        checkpoints: Option<String>,
        /// The ledger's checkpoint public key (64 hex characters), obtained from a channel you
        /// trust. Checks --checkpoints, or with --data-dir the checkpoints stored there.
        #[arg(long, value_parser = parse_public_key)]
        public_key: Option<String>,
        /// Start from a head you trust instead of the genesis, to verify a partial export
        /// (`bindledger export --from N`): SEQ:HASH, the seq and hash of the event just before
        /// the source's first (from a signed checkpoint, or an earlier verification).
        #[arg(long, value_parser = Start::parse)]
        trusted_head: Option<Start>,
    },
    /// One account's timeline.
    History {
        #[command(flatten)]
        from: From,
        #[arg(long)]
        account: String,
    },
    /// Bindings and alerts as they were after event SEQ, or at TIME (RFC 3339, by record time).
    State {
        #[command(flatten)]
        from: From,
        #[arg(long, value_parser = At::parse)]
        at: At,
        /// Only this account's bindings.
        #[arg(long)]
        account: Option<String>,
        /// The alert rules the ledger ran with (default: the built-in rules).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// A rebuild from the source compared with a running ledger's projections, account by
    /// account; exit 3 on any difference.
    Diff {
        #[command(flatten)]
        from: From,
        /// The running ledger (http:// or https:// URL).
        #[arg(long)]
        against: String,
        /// A token with the reader role for --against (default: --token).
        #[arg(long)]
        against_token: Option<String>,
    },
    /// Verify a whole cluster of shards from Kafka: the shard map on the cluster topic, every
    /// shard's chain from its events topic (in parallel), held to the signed cluster
    /// checkpoints and to each shard's own checkpoints, every event checked to belong to its
    /// shard; exit 3 naming each problem.
    VerifyCluster {
        /// Kafka bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// The cluster topic (the nodes' cluster.topic).
        #[arg(long, default_value = "bindledger.cluster")]
        cluster_topic: String,
        /// The cluster's checkpoint public key (64 hex characters, as `bindledger cluster
        /// checkpoint` prints it), from a channel you trust. Without it the cluster checkpoints
        /// are not checked, and each chain is checked alone.
        #[arg(long, value_parser = parse_public_key)]
        cluster_key: Option<String>,
        /// A librdkafka property, KEY=VALUE (repeat for more): security.protocol=ssl, ...
        #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = kafka_property)]
        kafka_properties: Vec<(String, String)>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure: a raw scan of a stored log (the baseline), verify, and verify plus a full
    /// rebuild, over a generated log of --events events.
    Bench {
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Where to write the log (default: a new directory under the system temp dir, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// What a candidate rules file would have raised over the log, against the alerts actually
    /// raised (stored by the ledger, with --data-dir; else those of --current-rules): added,
    /// removed, changed.
    Backtest {
        #[command(flatten)]
        from: From,
        /// The candidate rules file.
        #[arg(long)]
        rules: PathBuf,
        /// The rules the ledger runs (default: the built-in rules); used when the source holds
        /// no stored alerts.
        #[arg(long)]
        current_rules: Option<PathBuf>,
    },
}

fn kafka_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE, a librdkafka property".to_owned()),
    }
}

fn parse_public_key(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err("a public key is 64 hex characters (an Ed25519 key)".into())
    }
}

fn load_rules(path: Option<&std::path::Path>) -> anyhow::Result<RuleSet> {
    match path {
        Some(p) => Ok(bindledger::ledger::keys::load_rules(p)?),
        None => Ok(RuleSet::default()),
    }
}

/// Points the command's `--data-dir` at a fresh copy of it, kept in [`READ_COPY`].
fn read_through_a_copy(cli: &mut Cli) -> anyhow::Result<()> {
    let from = match &mut cli.command {
        Command::Verify { from, .. }
        | Command::History { from, .. }
        | Command::State { from, .. }
        | Command::Diff { from, .. }
        | Command::Backtest { from, .. } => from,
        _ => return Ok(()),
    };
    if let Some(dir) = &mut from.data_dir {
        let copy = bindledger_replay::ReadCopy::of(dir)?;
        *dir = copy.path().to_path_buf();
        *READ_COPY.lock().unwrap_or_else(|p| p.into_inner()) = Some(copy);
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Bench { events, dir } => {
            let root = dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("bindledger-replay-bench-{}", std::process::id()))
            });
            let data = root.join("log");
            let t = std::time::Instant::now();
            let store = bindledger_fixture::write_log(&data, events)?;
            drop(store);
            eprintln!("wrote {events} events in {:.1} s", t.elapsed().as_secs_f64());
            let source = Source::DataDir(data.clone());
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            let time = |f: &mut dyn FnMut() -> anyhow::Result<u64>| -> anyhow::Result<(u64, f64)> {
                let t = std::time::Instant::now();
                let n = f()?;
                Ok((n, t.elapsed().as_secs_f64()))
            };
            let verified = |r: bindledger_replay::AuditReport| match r.problem {
                None => Ok(r.events),
                Some(p) => Err(anyhow::anyhow!("the generated log does not verify: {p:?}")),
            };
            let mut rows: Vec<(String, u64, f64)> = Vec::new();
            let (n, s) = time(&mut || count(bindledger::ledger::store::Store::open(&data)?.scan_events(1)))?;
            rows.push((
                "raw sled scan, one open, one thread (no decoding): the baseline".into(),
                n,
                s,
            ));
            let (n, s) = time(&mut || count(bindledger::ledger::store::scan_dir(&data, 1)?))?;
            rows.push((
                "raw sled scan as the audit reads (reopened every 512 MiB), no decoding".into(),
                n,
                s,
            ));
            let (n, s) = time(&mut || verified(bindledger_replay::audit(source.read()?)?))?;
            rows.push(("verify, one thread (read, hash, decode, check)".into(), n, s));
            // How verify grows with cores: the same run with 1, 2 and every core, against a
            // baseline on every core that only reads and hashes (no decoding, no checks).
            let (n, s) = time(&mut || {
                let mut n = 0u64;
                for d in Pipeline::start_with(source.clone(), workers, false) {
                    d?;
                    n += 1;
                }
                Ok(n)
            })?;
            rows.push((
                format!("read + hash only, {workers} threads (the scaling baseline)"),
                n,
                s,
            ));
            let hash_only = n as f64 / s;
            let mut scaling = Vec::new();
            let mut counts = vec![1, 2, workers];
            counts.dedup();
            for w in counts {
                let (n, s) = time(&mut || {
                    verified(audit_decoded(
                        Pipeline::start(source.clone(), w),
                        &BTreeMap::new(),
                        |_| {},
                    )?)
                })?;
                rows.push((format!("verify, pipelined ({w} hash+decode threads)"), n, s));
                scaling.push((w, n as f64 / s));
            }
            let (n, s) = time(&mut || {
                let mut projection = Projection::default();
                let n = verified(audit_decoded(
                    Pipeline::start(source.clone(), workers),
                    &BTreeMap::new(),
                    |e| projection.apply(e),
                )?)?;
                if projection.position != n {
                    anyhow::bail!("rebuilt {} events of {n}", projection.position);
                }
                Ok(n)
            })?;
            rows.push((
                format!("verify + full rebuild of the bindings, one pass, pipelined ({workers} threads)"),
                n,
                s,
            ));
            if dir.is_none() {
                let _ = std::fs::remove_dir_all(&root);
            }
            let base = rows[0].1 as f64 / rows[0].2;
            outln!("| run | events | seconds | events/s | vs raw scan |");
            outln!("|---|---:|---:|---:|---:|");
            for (name, n, s) in rows {
                let rate = n as f64 / s;
                outln!("| {name} | {n} | {s:.2} | {rate:.0} | {:.2} |", rate / base);
            }
            outln!();
            outln!("| verify threads | events/s | events/s per thread | vs read + hash only on {workers} threads |");
            outln!("|---:|---:|---:|---:|");
            for (w, rate) in scaling {
                outln!("| {w} | {rate:.0} | {:.0} | {:.2} |", rate / w as f64, rate / hash_only);
            }
            Ok(0)
        }
        Command::Diff {
            from,
            against,
            against_token,
        } => {
            let mut rebuilt = Projection::default();
            let report = from.source().for_each(|e| {
                rebuilt.apply(e);
                true
            })?;
            if !report.ok() {
                print_problem(&report, from.json);
                return Ok(EXIT_PROBLEM);
            }
            let events = report.events;
            let token = against_token.or(from.token.clone()).unwrap_or_default();
            let addr = bindledger::adapters::http::client::Endpoint::parse(&against)
                .with_context(|| format!("--against {against}"))?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut names: Vec<&String> = rebuilt.accounts.keys().collect();
            names.sort();
            let (mut same, mut moved_on, mut differences) = (0u64, 0u64, Vec::new());
            rt.block_on(async {
                let mut client = bindledger::adapters::http::client::Client::new(addr, Some(token));
                for name in names {
                    let (status, live) = client.get_json(&format!("/v1/accounts/{name}/bindings")).await.with_context(|| format!("asking {against}"))?;
                    if !status.is_success() {
                        anyhow::bail!("{against} answered {status}: {live}");
                    }
                    let ours = &rebuilt.accounts[name];
                    let live_version = live["version"].as_u64().unwrap_or(0);
                    let mut rebuilt_view = serde_json::Value::Array(ours.bindings.iter().map(bindledger::domain::projection::binding_view).collect());
                    // A sealed field cannot be compared without the account's key (an auditor
                    // holds none): both sides read `[sealed]` there.
                    let mut live = live;
                    for (i, b) in ours.bindings.iter().enumerate() {
                        if bindledger_events::personal::is_sealed(&b.wallet.masked) {
                            rebuilt_view[i]["wallet"]["masked"] = "[sealed]".into();
                            if let Some(l) = live["bindings"].get_mut(i) {
                                l["wallet"]["masked"] = "[sealed]".into();
                            }
                        }
                    }
                    if live_version > ours.version {
                        moved_on += 1; // the ledger has events the source does not (yet)
                    } else if live_version == ours.version && live["bindings"] == rebuilt_view {
                        same += 1;
                    } else {
                        differences.push(serde_json::json!({"account": name, "rebuilt": {"version": ours.version, "bindings": rebuilt_view}, "live": live}));
                    }
                }
                Ok::<_, anyhow::Error>(())
            })?;
            if from.json {
                outln!(
                    "{}",
                    serde_json::json!({"events": events, "same": same, "moved_on": moved_on, "differences": differences})
                );
            } else {
                outln!(
                    "{events} events rebuilt; {} accounts equal, {} moved on since the source ends, {} differ",
                    same,
                    moved_on,
                    differences.len()
                );
                for d in &differences {
                    outln!(
                        "  {}: rebuilt {}\n  {}  live    {}",
                        d["account"],
                        d["rebuilt"],
                        " ".repeat(d["account"].to_string().len()),
                        d["live"]
                    );
                }
            }
            Ok(if differences.is_empty() { 0 } else { EXIT_PROBLEM })
        }
        Command::Backtest {
            from,
            rules,
            current_rules,
        } => {
            let candidate = load_rules(Some(&rules))?;
            let source = from.source();
            // The alerts actually raised: the ledger's own, when the source holds them (read
            // before the log: a data directory can be open only once at a time).
            let stored = match &source {
                Source::DataDir(dir) => {
                    let store = bindledger::ledger::store::Store::open(dir)?;
                    let alerts = bindledger::ledger::alerts::store::AlertStore::new(store.alerts_tree());
                    let last = alerts.last_stream_seq()?;
                    Some(bindledger_replay::latest(alerts.changes_after(0, last, usize::MAX)?))
                }
                _ => None,
            };
            let current = if stored.is_none() {
                Some(load_rules(current_rules.as_deref())?)
            } else {
                None
            };
            let mut tester = bindledger_replay::Backtester::new(candidate, current);
            let report = source.for_each(|e| {
                tester.apply(e);
                true
            })?;
            if !report.ok() {
                print_problem(&report, from.json);
                return Ok(EXIT_PROBLEM);
            }
            let b = tester.finish(stored);
            if from.json {
                outln!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                outln!(
                    "{} events; candidate vs actual: {} added, {} removed, {} changed, {} unchanged",
                    b.events,
                    b.added.len(),
                    b.removed.len(),
                    b.changed.len(),
                    b.unchanged
                );
                for a in &b.added {
                    outln!(
                        "  + {} {} {} observed {} threshold {}",
                        a.id,
                        a.severity.as_str(),
                        a.key.value,
                        a.observed,
                        a.threshold
                    );
                }
                for a in &b.removed {
                    outln!(
                        "  - {} {} {} observed {} threshold {}",
                        a.id,
                        a.severity.as_str(),
                        a.key.value,
                        a.observed,
                        a.threshold
                    );
                }
                for (was, now) in &b.changed {
                    outln!(
                        "  ~ {} {}",
                        was.id,
                        bindledger::domain::alerts::differences(was, now).join(", ")
                    );
                }
            }
            Ok(0)
        }
        #[cfg(feature = "kafka")]
        Command::VerifyCluster {
            brokers,
            cluster_topic,
            cluster_key,
            kafka_properties,
            json,
        } => {
            let report = bindledger_replay::cluster::verify(
                &brokers,
                &kafka_properties,
                &cluster_topic,
                cluster_key.as_deref(),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_cluster(&report);
            }
            Ok(if report.ok() { 0 } else { EXIT_PROBLEM })
        }
        #[cfg(not(feature = "kafka"))]
        Command::VerifyCluster { .. } => {
            anyhow::bail!("this build has no Kafka source (built without the `kafka` feature)")
        }
        Command::Verify {
            from,
            checkpoints,
            public_key,
            trusted_head,
        } => {
            let source = from.source();
            let start = trusted_head.unwrap_or_default();
            // With --data-dir, the checkpoints stored in the directory, unless others are given.
            let stored = match (&checkpoints, &source) {
                (None, Source::DataDir(dir)) => Some(bindledger_replay::stored_checkpoints(dir)?),
                _ => None,
            };
            if checkpoints.is_none() && stored.is_none() && public_key.is_some() {
                usage(
                    "--public-key checks checkpoints: give --checkpoints (or read a --data-dir, which holds its own)",
                );
            }
            let (heads, checkpoints_given) = match (checkpoints, stored, &public_key) {
                (None, Some(cps), None) => {
                    if !from.json {
                        outln!("checkpoints: {} stored in the directory, not checked: give --public-key (from a channel you trust) to hold the log to them", cps.len());
                    }
                    (BTreeMap::new(), 0)
                }
                (None, None, _) => (BTreeMap::new(), 0),
                (given, stored, _) => {
                    let cps = match (given, stored) {
                        (Some(path), _) => bindledger_replay::read_checkpoints(&path, from.token.as_deref())?,
                        (None, Some(cps)) => cps,
                        (None, None) => unreachable!("matched above"),
                    };
                    match bindledger_replay::trusted_heads(&cps, public_key.as_deref().unwrap_or_default()) {
                        Ok(heads) => (heads, cps.len()),
                        Err(p) => {
                            // Nothing of the log was read: the checkpoints themselves failed.
                            if from.json {
                                outln!(
                                    "{}",
                                    serde_json::json!({"checkpoints": cps.len(), "events": null, "problem": p})
                                );
                            } else {
                                outln!("checkpoints: {} read; checkpoint {} (for event {}) FAILED: {}; the log was not checked", cps.len(), p.checkpoint.unwrap_or_default(), p.seq, p.found);
                            }
                            return Ok(EXIT_PROBLEM);
                        }
                    }
                }
            };
            let report = bindledger_replay::audit_from(source.decoded(), start, &heads, |_| true)?;
            if from.json {
                let mut v = serde_json::to_value(&report)?;
                v["checkpoints_given"] = checkpoints_given.into();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_verify(&report, start, checkpoints_given);
            }
            Ok(if report.ok() { 0 } else { EXIT_PROBLEM })
        }
        Command::History { from, account } => {
            // Printed as found: the log is never held in memory.
            let mut shown = 0u64;
            let mut failed = None;
            let report = from.source().for_each(|e| {
                if e.account != account {
                    return true;
                }
                shown += 1;
                let line = if from.json {
                    serde_json::to_string(e)
                } else {
                    Ok(history_line(e))
                };
                match line {
                    Ok(line) => outln!("{line}"),
                    Err(why) => failed = Some(why),
                }
                failed.is_none()
            })?;
            if let Some(why) = failed {
                return Err(why.into());
            }
            if !report.ok() {
                print_problem(&report, from.json);
                return Ok(EXIT_PROBLEM);
            }
            if !from.json {
                eprintln!("{shown} events of account {account}");
            }
            Ok(0)
        }
        Command::State {
            from,
            at,
            account,
            rules,
        } => {
            let rules = load_rules(rules.as_deref())?;
            let until: Box<dyn Fn(&Event) -> bool> = match at {
                At::Seq(seq) => Box::new(move |e: &Event| e.seq <= seq),
                At::Time(t) => Box::new(move |e: &Event| e.record_time <= t),
            };
            let mut projection = Projection::default();
            let mut engine = Engine::new(rules);
            let mut alerts = std::collections::BTreeMap::new();
            // Reading stops at the first event past the moment.
            let report = from.source().for_each(|e| {
                if !until(e) {
                    return false;
                }
                projection.apply(e);
                for c in engine.apply(e) {
                    alerts.insert(c.alert.id.clone(), c.alert);
                }
                true
            })?;
            if !report.ok() {
                print_problem(&report, from.json);
                return Ok(EXIT_PROBLEM);
            }
            if let At::Seq(seq) = at {
                // The state after an event the log does not hold is no state at all.
                anyhow::ensure!(
                    projection.position >= seq,
                    "the log ends at event {}, before --at {seq}",
                    projection.position
                );
            }
            let accounts: std::collections::BTreeMap<&String, _> = projection
                .accounts
                .iter()
                .filter(|(name, _)| account.as_ref().is_none_or(|a| a == *name))
                .collect();
            let alerts: Vec<_> = alerts
                .values()
                .filter(|a| account.as_ref().is_none_or(|acc| a.accounts.contains(acc)))
                .collect();
            if from.json {
                let v = serde_json::json!({"position": projection.position, "accounts": accounts, "alerts": alerts});
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!("after event {}:", projection.position);
                for (name, a) in &accounts {
                    outln!(
                        "  {name} (version {}{})",
                        a.version,
                        if a.erased { ", erased" } else { "" }
                    );
                    for b in &a.bindings {
                        outln!(
                            "    {} {:?} {} {} bound {}{}",
                            b.binding_id,
                            b.status,
                            b.provider,
                            if a.erased { "[erased]" } else { shown(&b.wallet.masked) },
                            b.bound_at.format("%Y-%m-%d %H:%M:%S"),
                            b.lock
                                .as_ref()
                                .map(|l| format!(", locked by {} until {}", l.alert_id, l.until))
                                .unwrap_or_default()
                        );
                    }
                }
                outln!("alerts: {}", alerts.len());
                for a in alerts {
                    outln!(
                        "  {} {} {} observed {} threshold {} (revision {})",
                        a.id,
                        a.severity.as_str(),
                        a.key.value,
                        a.observed,
                        a.threshold,
                        a.revision
                    );
                }
            }
            Ok(0)
        }
    }
}

/// What verify proved, in words.
#[cfg(feature = "kafka")]
fn print_cluster(r: &bindledger_replay::cluster::ClusterReport) {
    outln!("shard map:   version {}, {} shards", r.map_version, r.shards.len());
    if r.cluster_checkpoints_checked {
        outln!("cluster checkpoints: {} signatures valid", r.cluster_checkpoints);
    } else {
        outln!("cluster checkpoints: {} on the topic, not checked: give --cluster-key (from a channel you trust) to hold every shard to them", r.cluster_checkpoints);
    }
    if let Some(p) = &r.problem {
        outln!("verify:      FAILED: {p}");
        return;
    }
    for s in &r.shards {
        let rep = &s.report;
        let state = match &rep.problem {
            None => "ok".to_owned(),
            Some(p) => format!("FAILED: {}", problem_text(p)),
        };
        outln!(
            "{:<12} {} events, head {}, {} signed heads matched (from the cluster: {}, from the shard: {}): {state}",
            s.shard,
            rep.events,
            rep.head,
            rep.checkpoints_checked,
            s.heads_from_cluster,
            s.heads_from_shard
        );
    }
    outln!("verify:      {}", if r.ok() { "ok" } else { "FAILED" });
}

fn print_verify(report: &AuditReport, start: Start, checkpoints_given: usize) {
    let from = if start.seq == 0 {
        "the genesis".to_owned()
    } else {
        format!("the trusted head at event {}", start.seq)
    };
    match report.events {
        0 => outln!("events:      none verified (from {from})"),
        n => outln!(
            "events:      {n} verified, {}..{} (from {from})",
            report.first_seq,
            report.last_seq()
        ),
    }
    outln!("chain head:  {}", report.head);
    match (checkpoints_given, report.checkpoint_seq) {
        (0, _) => outln!("checkpoints: none given: the chain alone cannot show an edit of the newest events, nor a rewrite with the chain recomputed (give --checkpoints and --public-key)"),
        (n, None) => outln!("checkpoints: {n} signatures valid, none of them at an event verified"),
        (n, Some(seq)) => {
            outln!("checkpoints: {n} signatures valid, {} matched the log, the newest at event {seq}", report.checkpoints_checked);
            if report.ok() && seq < report.last_seq() {
                outln!("             events {}..{} are after the newest checkpoint: only the chain vouches for them", seq + 1, report.last_seq());
            }
        }
    }
    match &report.problem {
        None => outln!("verify:      ok"),
        Some(p) => outln!("verify:      FAILED: {}", problem_text(p)),
    }
}

/// A located problem, as a sentence.
fn problem_text(p: &bindledger_replay::Problem) -> String {
    let place = match p.checkpoint {
        Some(n) => format!("signed checkpoint {n} of those given"),
        None => format!("position {} in the source", p.position),
    };
    format!(
        "{} at event {}{} ({place}): expected {}, found {}",
        p.kind,
        p.seq,
        p.account
            .as_deref()
            .map(|a| format!(", account {a}"))
            .unwrap_or_default(),
        p.expected,
        p.found
    )
}

/// Reads every event of a scan and keeps none: the cost of the scan alone.
fn count(
    mut scan: impl Iterator<Item = bindledger::Result<(u64, bindledger::ledger::store::EventBytes)>>,
) -> anyhow::Result<u64> {
    Ok(scan.try_fold(0u64, |n, r| r.map(|_| n + 1))?)
}

/// A personal field as the audit tool shows it: sealed ones (v8) as `[sealed]` (it holds no
/// account's key).
fn shown(v: &str) -> &str {
    if bindledger_events::personal::is_sealed(v) {
        "[sealed]"
    } else {
        v
    }
}

/// One event, as a person reads it: time, event, outcome, wallet, reason.
fn history_line(e: &Event) -> String {
    let wallet = match &e.payload {
        Payload::WalletBound { wallet, .. }
        | Payload::BindFailed { wallet, .. }
        | Payload::PaymentSucceeded { wallet, .. }
        | Payload::WalletUnbound { wallet, .. } => shown(&wallet.masked).to_owned(),
        _ => String::new(),
    };
    let detail = match &e.payload {
        Payload::PaymentSucceeded {
            amount_minor,
            currency,
            order_id,
            ..
        }
        | Payload::PaymentFailed {
            amount_minor,
            currency,
            order_id,
            ..
        } => {
            format!("{} order {order_id}", currency.format(*amount_minor))
        }
        Payload::AlertTriaged {
            alert_id,
            action,
            operator,
            assignee,
            ..
        } => match assignee {
            Some(to) => format!("{alert_id} {} by {operator} to {to}", action.as_str()),
            None => format!("{alert_id} {} by {operator}", action.as_str()),
        },
        _ => String::new(),
    };
    format!(
        "{} #{:<6} {:<22} {:<9} {:<14} {:<26} {}",
        e.event_time.format("%Y-%m-%d %H:%M:%S%.3f"),
        e.seq,
        e.event_type(),
        if e.payload.succeeded() { "succeeded" } else { "failed" },
        wallet,
        e.payload.failure_code().unwrap_or(""),
        detail
    )
}

/// Keeps memory the audit frees for reuse instead of handing it back to the kernel after a
/// second (mimalloc's default): a long scan frees and allocates sled pages all the time, and
/// each page handed back and taken again was faulted in and zeroed anew. Measured on a
/// 5,000,000-event log: minor page faults 16,259 -> 707, kernel time 6.5 s -> 2.0-2.7 s, verify
/// 12.8 s -> 9.5 s. The audit's memory is bounded by its pipeline and its scan, so nothing grows.
fn keep_freed_memory() {
    use std::os::raw::{c_int, c_long};
    extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }
    // `mi_option_purge_delay` in mimalloc 3's `mi_option_e`, whose default is 1000 ms. Any other
    // value means another mimalloc, or a value from the environment: left as it is.
    const PURGE_DELAY: c_int = 15;
    // SAFETY: plain C calls into the linked allocator, with an option index and a value.
    unsafe {
        if mi_option_get(PURGE_DELAY) == 1000 {
            mi_option_set(PURGE_DELAY, -1);
        }
    }
}

fn main() {
    keep_freed_memory();
    let mut cli = parse_cli();
    // A data directory is read through a copy: opening a sled database writes to it (a
    // snapshot, torn segments zeroed), and an audit must leave what it audits as it was.
    let code = match read_through_a_copy(&mut cli).and_then(|()| run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            let text = match &*READ_COPY.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(copy) => copy.name_the_original(&text),
                None => text,
            };
            eprintln!("error: {text}");
            EXIT_ERROR
        }
    };
    drop(READ_COPY.lock().unwrap_or_else(|p| p.into_inner()).take());
    std::process::exit(code);
}
