//! `bindledger bench-cluster`: what a shard costs per command, and what routing adds. Two shards
//! of a cluster run in this process (each a whole node: ledger, monitor, relays, HTTP server),
//! with the shard map on a real broker; the load generator (`bench-load`, a process of its own)
//! sends the same payments either to each account's owner (a client that follows the map) or
//! all to shard s0 (a client that knows one address: half the requests are forwarded), in
//! alternating rounds. The server process's CPU time per request is read from the kernel.

use std::sync::Arc;
use std::time::Duration;

use bindledger::adapters::provider::SimulatedGateway;
use bindledger::config::{Role, TokenConfig};
use bindledger::domain::secret::LedgerSecret;
use clap::Args;

use crate::bench::{bench_config, bulk_bind, cpu_seconds};

#[derive(Args)]
pub struct ClusterBenchArgs {
    /// The broker holding the shard map and the shards' topics.
    #[arg(long, env = "BINDLEDGER_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Accounts (bound on both shards; each shard is asked only for its own).
    #[arg(long, default_value_t = 20_000)]
    pub accounts: usize,
    /// Payments per round.
    #[arg(long, default_value_t = 20_000)]
    pub commands: u64,
    /// Rounds of each way (direct, then through s0, alternating).
    #[arg(long, default_value_t = 2)]
    pub rounds: u64,
    /// Connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

const TOKEN: &str = "bench-token-0123456789";

struct Totals {
    commands: u64,
    seconds: f64,
    cpu: f64,
    p50: Vec<u64>,
    p99: Vec<u64>,
}

pub async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("bindledger-bench-cluster-{}", std::process::id()));
    let result = bench(&args, &root).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn bench(args: &ClusterBenchArgs, root: &std::path::Path) -> anyhow::Result<()> {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    ];
    let addrs: Vec<std::net::SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let mut base = bench_config(root);
    base.kafka.brokers = args.brokers.clone();
    base.kafka.notifications_topic = String::new();
    base.tokens = vec![TokenConfig {
        token: TOKEN.into(),
        roles: vec![Role::Writer],
        name: None,
        client_cert_sha256: None,
    }];
    let (configs, map) = crate::demo::cluster_configs(&base, &format!("bindledger.bench.{tag}"), &listeners).await?;
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for (listener, config) in listeners.into_iter().zip(configs) {
        let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
        let secret = LedgerSecret::from_bytes(crate::bench::BENCH_SECRET);
        let node = bindledger::node::Node::start(&config, secret.clone(), gateway)?;
        bulk_bind(&node.ledger, &secret, args.accounts).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        servers.push((
            stop,
            tokio::spawn(bindledger::adapters::http::serve(
                listener,
                node.state.clone(),
                async move {
                    let _ = stopped.await;
                },
            )),
        ));
        nodes.push(node);
    }
    // The setup's events folded and relayed before anything is measured.
    for node in &nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while node
            .monitor
            .as_ref()
            .is_some_and(|m| m.status().position.load(std::sync::atomic::Ordering::Relaxed) < node.ledger.log_len())
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the monitor did not fold the setup"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("bench-cluster: 2 shards, {} accounts bound on each", args.accounts);

    let bound = crate::bench::Bound::new(args.accounts);
    let forwarded_share = (0..args.commands.min(args.accounts as u64))
        .filter(|n| map.owner(&bound.get(*n as usize % args.accounts).0) != "s0")
        .count() as f64
        / args.commands.min(args.accounts as u64) as f64;
    let mut direct = Totals::new();
    let mut through = Totals::new();
    let mut first = 0u64;
    for _ in 0..args.rounds {
        for (route, totals) in [(true, &mut direct), (false, &mut through)] {
            let mut cmd = std::process::Command::new(std::env::current_exe()?);
            cmd.arg("bench-load")
                .args([
                    "--addr",
                    &addrs[0].to_string(),
                    "--token",
                    TOKEN,
                    "--prefix",
                    "/v1/accounts",
                ])
                .args(["--accounts", &args.accounts.to_string()])
                .args(["--connections", &args.connections.to_string()])
                .args(["--commands", &args.commands.to_string(), "--first", &first.to_string()])
                .stderr(std::process::Stdio::inherit());
            if route {
                cmd.args(["--shard-addrs", &addrs[1].to_string()]);
            }
            first += args.commands;
            let before = (nodes[0].ledger.log_len(), nodes[1].ledger.log_len());
            let cpu = cpu_seconds();
            let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
            let cpu = cpu_seconds() - cpu;
            anyhow::ensure!(out.status.success(), "the load generator failed ({})", out.status);
            let written = nodes[0].ledger.log_len() - before.0 + nodes[1].ledger.log_len() - before.1;
            anyhow::ensure!(
                written == args.commands,
                "expected {} events, the shards wrote {written}",
                args.commands
            );
            let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            totals.commands += args.commands;
            totals.seconds += r["seconds"].as_f64().unwrap_or(f64::NAN);
            totals.cpu += cpu;
            totals.p50.extend(r["p50_us"].as_u64());
            totals.p99.extend(r["p99_us"].as_u64());
        }
    }
    for (stop, server) in servers {
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    for node in nodes {
        node.stop().await;
    }
    let cpu_direct = direct.cpu * 1e6 / direct.commands as f64;
    let cpu_through = through.cpu * 1e6 / through.commands as f64;
    println!(
        "two shards in one process on {} cores, {} connections, {} payments per round, {} rounds each way",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.connections,
        args.commands,
        args.rounds
    );
    println!(
        "{:<58} {:>10} {:>10} {:>10} {:>14}",
        "", "cmd/s", "p50 µs", "p99 µs", "CPU µs/cmd"
    );
    for (name, t) in [
        ("each payment to its owner (a client following the map)", &direct),
        ("every payment to s0 (forwarded when s1 owns it)", &through),
    ] {
        println!(
            "{:<58} {:>10.0} {:>10} {:>10} {:>14.0}",
            name,
            t.commands as f64 / t.seconds,
            t.median(&t.p50),
            t.median(&t.p99),
            t.cpu * 1e6 / t.commands as f64
        );
    }
    println!(
        "forwarded: {:.0}% of the payments sent to s0; a forward costs {:.0} µs of CPU more per forwarded payment",
        forwarded_share * 100.0,
        (cpu_through - cpu_direct) / forwarded_share
    );
    Ok(())
}

impl Totals {
    fn new() -> Totals {
        Totals {
            commands: 0,
            seconds: 0.0,
            cpu: 0.0,
            p50: Vec::new(),
            p99: Vec::new(),
        }
    }

    fn median(&self, v: &[u64]) -> String {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).map_or("-".into(), |x| x.to_string())
    }
}
