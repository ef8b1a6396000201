//! The `bindledger` command: thin. Parses flags, sets up tracing, calls into the library, and
//! maps errors to exit codes (printing the whole chain once).

use anyhow::{Context, Result};
use bindledger::config::{Config, Role, TokenConfig};
use bindledger::domain::secret::LedgerSecret;
use bindledger::ledger::keys::write_private;

/// `println!` for a command's output: a closed pipe (`| head`) ends the program quietly with
/// exit code 0, as `head` expects, instead of a panic or a "Broken pipe" error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// What [`outln!`] does when standard output fails: exit 0 on a closed pipe, else 1.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}

mod alerts;
mod bench;
mod bench_alerts;
mod bench_cluster;
mod cluster;
mod consume;
mod demo;
mod export;
mod privacy;
mod profile;
mod promote;
mod remote;
mod restore;
mod serve;
mod sim_wallet;
mod simulate;
mod status;
mod unlock;
mod verify;

use alerts::AlertsArgs;
use clap::{Args, Parser, Subcommand};
use remote::Remote;
use restore::RestoreArgs;
use serve::ServeArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc: the writer allocates events that tokio threads free; glibc's arenas contend on
/// that pattern (measured: about 10% of CPU in malloc and its locks under load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_ERROR: i32 = 1;
const EXIT_CODES: &str = "Exit codes: 0 success, 1 error, 2 bad usage, 3 verification found a problem.";
const EXIT_VERIFY_FAILED: i32 = 3;

#[derive(Parser)]
#[command(
    name = "bindledger",
    version,
    about = "An event-sourced, hash-chained ledger of payment-wallet bindings",
    after_help = EXIT_CODES
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
    /// The HTTP benchmark's load generator (run by `bench` as a process of its own).
    #[command(hide = true)]
    BenchLoad(bench::LoadArgs),
    /// Measure the alert monitor: latency from a command's acknowledgement to its alert on the
    /// live feed at paced rates, and rule throughput over a stored log against decoding alone.
    BenchAlerts(crate::bench_alerts::AlertBenchArgs),
    /// Run the deterministic simulation of the ledger core: random workloads from a seed with
    /// injected storage faults, reopens and a simulated clock, checked at every step and over
    /// the whole log every 50 steps and at each reopen.
    /// Exits 3 when a seed fails (and prints how to replay it).
    Simulate(crate::simulate::SimulateArgs),
    /// Read the events topic as an analytics team would: spend per account, month and
    /// provider; bind success rates; failure reasons per day.
    Consume(consume::ConsumeArgs),
    /// Measure the Kafka relay against a raw producer on the same broker, and end-to-end lag.
    BenchKafka(bench::KafkaBenchArgs),
    /// Measure a cluster: two shards in this process, payments sent to each account's owner
    /// against all sent to one shard (forwarded), and the CPU each costs.
    BenchCluster(bench_cluster::ClusterBenchArgs),
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
        /// TOML configuration file: its `[gateway.simulated]` section (the seed) decides the
        /// wallets' passwords and codes.
        #[arg(long, short = 'c', env = "BINDLEDGER_CONFIG")]
        config: Option<PathBuf>,
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
    /// Erase an account's personal data (privacy role): its data key is destroyed and
    /// `subject_erased` appended. It cannot be undone; the account takes no more commands. The
    /// chain, the checkpoints and every verifier still pass. Exit 0 once erased, 1 if refused.
    Erase {
        #[command(flatten)]
        remote: Remote,
        /// The account whose personal data is erased.
        account: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The master key that wraps every account's data key: its status, and its rotation (the
    /// bound on how long a copy of an erased person's wrapped key stays readable).
    Keys {
        #[command(subcommand)]
        command: privacy::KeysCommand,
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
    /// Save and choose the ledgers the remote commands reach (`status`, `alerts`, `unlock`,
    /// `promote`): a profile is a URL and the file of its token, so those commands need no
    /// --url and --token each time.
    Profile {
        #[command(subcommand)]
        command: profile::ProfileCommand,
    },
    /// A cluster of shards: write the first shard map, show it, find an account's shard, and
    /// ask every shard how it is (README, "Shards").
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
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
        Err(_) => Ok(bindledger::ledger::keys::load_or_create_secret(&config.secret_path())?),
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
        roles: vec![Role::Writer, Role::Reader, Role::Auditor, Role::Security, Role::Privacy],
        name: None,
        client_cert_sha256: None,
    });
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Serve(common) => {
            init_tracing("info", log_format);
            tokio::runtime::Runtime::new()?.block_on(serve::run(common))?;
            Ok(0)
        }
        Command::Demo(args) => {
            init_tracing("warn", log_format);
            let mut config = load_config(&args.common)?;
            if args.common.data_dir.is_none() && std::env::var_os("BINDLEDGER_DATA_DIR").is_none() {
                config.data_dir = std::env::temp_dir().join(format!("bindledger-demo-{}", std::process::id()));
            }
            let mut opts = args.demo;
            opts.listen_given = args.common.listen.is_some() || std::env::var_os("BINDLEDGER_LISTEN").is_some();
            // The address before any file: a busy one that was asked for writes nothing.
            let listener = demo::listen(&config, opts.listen_given)?;
            let secret = load_secret(&config)?;
            ensure_tokens(&mut config)?;
            tokio::runtime::Runtime::new()?.block_on(demo::run(config, secret, opts, listener))?;
            Ok(0)
        }
        Command::Export {
            data_dir,
            from,
            output,
            checkpoints,
        } => {
            init_tracing("warn", log_format);
            export::run(&data_dir, from, output.as_deref(), checkpoints.as_deref())
        }
        Command::Verify { data_dir, rules, json } => {
            init_tracing("warn", log_format);
            verify::run(&data_dir, rules.as_deref(), json)
        }
        Command::Restore(args) => {
            init_tracing("warn", log_format);
            restore::run(args)
        }
        Command::Consume(args) => {
            init_tracing("warn", log_format);
            consume::run(args)
        }
        Command::SimWallet {
            config,
            provider,
            wallet_account,
        } => {
            init_tracing("warn", log_format);
            let common = Common {
                config,
                data_dir: None,
                listen: None,
            };
            sim_wallet::run(&common, &provider, &wallet_account)
        }
        Command::Alerts(mut args) => {
            init_tracing("warn", log_format);
            args.remote.resolve()?;
            tokio::runtime::Runtime::new()?.block_on(alerts::run(args))
        }
        Command::Status { mut remote, json } => {
            init_tracing("warn", log_format);
            remote.resolve()?;
            tokio::runtime::Runtime::new()?.block_on(status::run(&remote, json))
        }
        Command::Erase {
            mut remote,
            account,
            json,
        } => {
            init_tracing("warn", log_format);
            remote.resolve()?;
            tokio::runtime::Runtime::new()?.block_on(privacy::erase(&remote, &account, json))
        }
        Command::Keys { command } => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(privacy::keys(command))
        }
        Command::Promote { mut remote, json } => {
            init_tracing("warn", log_format);
            remote.resolve()?;
            tokio::runtime::Runtime::new()?.block_on(promote::run(&remote, json))
        }
        Command::Cluster { command } => {
            init_tracing("warn", log_format);
            cluster::run(command)
        }
        Command::Profile { command } => {
            init_tracing("warn", log_format);
            profile::run(command)
        }
        Command::Unlock {
            mut remote,
            account,
            binding,
            json,
        } => {
            init_tracing("warn", log_format);
            remote.resolve()?;
            tokio::runtime::Runtime::new()?.block_on(unlock::run(&remote, &account, &binding, json))
        }
        Command::BenchKafka(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench::kafka(args))?;
            Ok(0)
        }
        Command::BenchCluster(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench_cluster::run(args))?;
            Ok(0)
        }
        Command::BenchIdempotency(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench::idempotency(args))?;
            Ok(0)
        }
        Command::Simulate(args) => {
            // The injected failures are logged as errors by design: the simulator reports.
            init_tracing("off", log_format);
            let passed = tokio::runtime::Runtime::new()?.block_on(crate::simulate::run(args))?;
            Ok(if passed { 0 } else { 3 })
        }
        Command::BenchAlerts(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(crate::bench_alerts::run(args))?;
            Ok(0)
        }
        Command::BenchLoad(args) => {
            init_tracing("warn", log_format);
            tokio::runtime::Runtime::new()?.block_on(bench::load(args))?;
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
    let cli = {
        // Every command's --help ends with the exit codes, not only the top one's.
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command()
            .mut_subcommands(|c| c.after_help(EXIT_CODES))
            .get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    };
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_ERROR);
        }
    }
}
