//! `bindledger bench-alerts`: the alert monitor, measured in one run.
//! 1. **Alert latency**: a paced load (1,000 and 10,000 commands/s by default, 1% from
//!    attackers trying wrong payment passwords) through the ledger with its monitor and the
//!    real HTTP server; for every attacker command whose alert change shows up on the live SSE
//!    feed, the time from the command's acknowledgement to the change arriving on the feed.
//! 2. **Rule throughput** over a stored log (default 1,000,000 events): scanning the sled log
//!    and decoding every event (the baseline), against the same plus the seven rules.

use bindledger_events::codec;
use chrono::Utc;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bench::{bench_config, bind_accounts, pay_request};
use bindledger::adapters::http::client::SseStream;
use bindledger::adapters::provider::SimulatedGateway;
use bindledger::config::{Role, TokenConfig};
use bindledger::domain::alerts::engine::{AlertChange, Engine};
use bindledger::domain::alerts::RuleSet;
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::ledger::store::Store;
use bindledger::node::Node;

#[derive(clap::Args, Debug, Clone)]
pub struct AlertBenchArgs {
    /// Paced rates to measure alert latency at (commands/s).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub rates: Vec<u64>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Commands from attackers, per mille.
    #[arg(long, default_value_t = 10)]
    pub attackers_per_mille: u64,
    /// Events in the stored log for the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    pub log_events: u64,
    /// Where to put the logs (default: a new directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const TOKEN: &str = "bench-alerts-token-0123456789";
const SHOPPERS: usize = 2000;
const ATTACKERS: usize = 5;
/// Concurrent submitters of the paced load.
const SUBMITTERS: u64 = 100;

struct Latency {
    rate: u64,
    achieved: f64,
    samples: Vec<u64>,
    before_ack: usize,
    changes: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(dir: &Path, rate: u64, args: &AlertBenchArgs) -> anyhow::Result<Latency> {
    let mut config = bench_config(dir);
    config.tokens = vec![TokenConfig {
        token: TOKEN.into(),
        roles: vec![Role::Security],
        name: None,
        client_cert_sha256: None,
    }];
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let node = Node::start(&config, LedgerSecret::from_bytes([8; 32]), gateway.clone())?;
    let ledger = node.ledger.clone();
    let names = (0..SHOPPERS + ATTACKERS).map(|i| {
        if i < SHOPPERS {
            format!("shopper-{i:05}")
        } else {
            format!("attacker-{i:05}")
        }
    });
    let bindings = bind_accounts(&ledger, &gateway, names).await?;
    let bindings = Arc::new(bindings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bindledger::adapters::http::serve(
        listener,
        node.state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    // The live feed, from the current end: when each change (by the seq that produced it) arrived.
    let start_after = node.monitor.as_ref().map_or(0, |m| m.feed().published());
    let visible: Arc<Mutex<HashMap<u64, Instant>>> = Default::default();
    let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The feed's reader runs on its own thread, as a separate client would.
    let (opened, feed_open) = std::sync::mpsc::channel::<()>();
    let follower = {
        let (visible, changes) = (visible.clone(), changes.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut feed =
                    match SseStream::open(addr, Some(TOKEN), "/v1/alerts/stream", Some(&start_after.to_string())).await
                    {
                        Ok(Ok(f)) => f,
                        other => panic!("the alert feed did not open: {:?}", other.err()),
                    };
                opened.send(()).expect("the bench waits");
                while let Ok(Some(msg)) = feed.next().await {
                    let at = Instant::now();
                    if let Ok(c) = serde_json::from_str::<AlertChange>(&msg.data) {
                        changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        visible.lock().expect("lock").entry(c.alert.position).or_insert(at);
                    }
                }
            })
        })
    };
    feed_open.recv_timeout(Duration::from_secs(10))?;
    // Paced load: SUBMITTERS tasks, each on its own tick, together `rate` commands/s.
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Default::default();
    let total = rate * args.seconds;
    let started = Instant::now();
    // The load runs on its own runtime, as clients elsewhere would: the node's runtime serves
    // the feed.
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut tasks = Vec::new();
    for w in 0..SUBMITTERS {
        let (ledger, bindings, acks) = (ledger.clone(), bindings.clone(), acks.clone());
        let per_task = total / SUBMITTERS;
        let interval = Duration::from_secs_f64(SUBMITTERS as f64 / rate as f64);
        let attackers_per_mille = args.attackers_per_mille;
        tasks.push(load.spawn(async move {
            let mut rng = bindledger_fixture::Rng(w + 1);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..per_task {
                tick.tick().await;
                let attack = rng.chance(attackers_per_mille);
                let i = if attack {
                    SHOPPERS + rng.below(ATTACKERS as u64) as usize
                } else {
                    rng.below(SHOPPERS as u64) as usize
                };
                let b = &bindings[i];
                let mut req = pay_request(b, w * 1_000_000_000 + n);
                if attack {
                    req.payment_password = SecretString::new("wrong-guess".into());
                }
                let r = ledger.pay(req.validate(&b.0, Utc::now())?).await?;
                if attack {
                    acks.lock().expect("lock").push((r.event.seq, Instant::now()));
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    load.shutdown_background();
    // Let the feed deliver the last changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let visible = visible.lock().expect("lock").clone();
    let mut samples = Vec::new();
    let mut before_ack = 0;
    for (seq, ack) in acks.lock().expect("lock").iter() {
        if let Some(seen) = visible.get(seq) {
            match seen.checked_duration_since(*ack) {
                Some(d) => samples.push(d.as_micros() as u64),
                None => {
                    before_ack += 1;
                    samples.push(0);
                }
            }
        }
    }
    samples.sort_unstable();
    let _ = stop_http.send(());
    let _ = server.await;
    node.stop().await;
    let _ = follower.join();
    Ok(Latency {
        rate,
        achieved,
        samples,
        before_ack,
        changes: changes.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Scans and decodes the whole log; with `rules`, also folds every event through them.
/// Returns (events, alert changes, seconds).
fn scan(store: &Store, rules: Option<&RuleSet>) -> anyhow::Result<(u64, u64, f64)> {
    let started = Instant::now();
    let mut engine = rules.map(|r| Engine::new(r.clone()));
    let (mut events, mut changes) = (0u64, 0u64);
    for r in store.scan_events(1) {
        let (_, bytes) = r?;
        let e = codec::decode(&bytes)?;
        if let Some(engine) = engine.as_mut() {
            changes += engine.apply(&e).len() as u64;
        }
        events += 1;
    }
    Ok((events, changes, started.elapsed().as_secs_f64()))
}

pub async fn run(args: AlertBenchArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bindledger-bench-alerts-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    println!(
        "bindledger bench-alerts: {} cores, logs in {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        dir.display()
    );
    println!("\n## Alert latency: command acknowledged -> its alert change on the live SSE feed\n");
    println!("| target cmd/s | achieved cmd/s | attacker commands with an alert change | p50 | p99 | max | seen before the ack | alert changes |");
    println!("|---|---|---|---|---|---|---|---|");
    for &rate in &args.rates {
        let r = latency(&dir.join(format!("latency-{rate}")), rate, &args).await?;
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.rate,
            r.achieved,
            r.samples.len(),
            ms(pct(&r.samples, 0.5)),
            ms(pct(&r.samples, 0.99)),
            ms(r.samples.last().copied().unwrap_or(0)),
            r.before_ack,
            r.changes
        );
    }
    println!("\n## Rule throughput over a stored log\n");
    let started = Instant::now();
    let path = dir.join("log");
    let store = tokio::task::block_in_place(|| bindledger_fixture::write_log(&path, args.log_events))?;
    println!(
        "(wrote {} events in {:.1} s)\n",
        args.log_events,
        started.elapsed().as_secs_f64()
    );
    let rules = RuleSet::default();
    let (base_n, _, base_s) = tokio::task::block_in_place(|| scan(&store, None))?;
    let (n, changes, s) = tokio::task::block_in_place(|| scan(&store, Some(&rules)))?;
    println!("| run | events | seconds | events/s | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| baseline: scan + decode | {base_n} | {base_s:.2} | {:.0} | 1.00 |",
        base_n as f64 / base_s
    );
    println!(
        "| scan + decode + 7 rules | {n} | {s:.2} | {:.0} | {:.2} |",
        n as f64 / s,
        (n as f64 / s) / (base_n as f64 / base_s)
    );
    println!("\n({changes} alert changes raised over the log)");
    drop(store);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
