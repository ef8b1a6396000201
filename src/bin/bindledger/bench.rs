//! `bindledger bench`: one run, one machine, three measurements.
//! 1. **Raw sled baseline**: the same stored event bytes written in batches with
//!    `apply_batch` + `flush`, nothing else, in the ledger's layout (chunks of events), and, for
//!    context, one key per event.
//! 2. **Library path**: durable payment commands through [`Ledger::pay`] from many concurrent
//!    submitters (validation, idempotency, gateway simulator, writer, group commit), with the
//!    alert monitor running as `serve` runs it.
//! 3. **HTTP end to end**: the same commands over the real HTTP server from many connections.
//!
//! Prints a Markdown table with throughput, latency percentiles and ratios to the baseline.

use bindledger_events::{
    codec, hash_bytes, Context, Currency, Event, Factor, FactorCheck, Hash, Payload, Provider, WalletRef, GENESIS_HASH,
    SCHEMA_VERSION,
};
use chrono::Utc;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

use bindledger::adapters::http::AppState;
use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::{Config, Role, TokenConfig, WriterConfig};
use bindledger::domain::command::{BindRequest, CommonInput, ContextInput, PayRequest};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::ledger::store::CHUNK_EVENTS_MAX;
use bindledger::ledger::Ledger;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Events written by each raw sled run (the baseline writes them spread over its rounds).
    #[arg(long, default_value_t = 400_000)]
    pub raw_events: u64,
    /// Batch size of the second raw sled run (the first uses the library run's events per
    /// flush).
    #[arg(long, default_value_t = 512)]
    pub raw_batch: usize,
    /// Commands in the library-level run.
    #[arg(long, default_value_t = 300_000)]
    pub lib_commands: u64,
    /// Concurrent submitters in the library-level run.
    #[arg(long, default_value_t = 512)]
    pub lib_concurrency: usize,
    /// Commands in the HTTP run.
    #[arg(long, default_value_t = 200_000)]
    pub http_commands: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 256)]
    pub http_connections: usize,
    /// Accounts the commands are spread over.
    #[arg(long, default_value_t = 2000)]
    pub accounts: usize,
    /// Choose each command's account from a Zipf distribution of this exponent (1.0: the
    /// n-th account is chosen about 1/n as often as the first; a few hot accounts) instead
    /// of in turn (every account equally often), in the library and the HTTP runs.
    #[arg(long, value_parser = zipf_exponent)]
    pub zipf: Option<f64>,
    /// The library run and its raw baseline are measured in this many alternating rounds (a
    /// library round, then the raw baseline of as many events per flush as it made), so both
    /// sides of the ratio see the machine in the same state.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// The flusher's group-commit delay under load (`writer.commit_delay_us`; 0 turns it off),
    /// to compare with and without it.
    #[arg(long, default_value_t = WriterConfig::default().commit_delay_us)]
    pub commit_delay_us: u64,
    /// Where to put the logs (default: a new directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also run the HTTP payments over TLS (a certificate made with openssl), against the
    /// plain run of the same benchmark.
    #[arg(long)]
    pub tls: bool,
}

struct Row {
    name: String,
    ops: u64,
    seconds: f64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

/// A payment event shaped like the ledger's, for the raw baseline.
fn sample_event(seq: u64, prev: Hash) -> Event {
    Event {
        v: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        seq,
        account: format!("bench-{:05}", seq % 2000),
        account_seq: seq / 2000 + 1,
        event_time: Utc::now(),
        record_time: Utc::now(),
        idempotency_key: Some(format!("bench-pay-{seq}")),
        request_digest: Some(Hash([3; 32])),
        correlation_id: None,
        context: Context {
            channel: "api".into(),
            ..Context::default()
        },
        prev_hash: prev,
        payload: Payload::PaymentSucceeded {
            binding_id: Uuid::now_v7(),
            provider: Provider::parse("alipay").expect("known"),
            wallet: WalletRef {
                masked: "138****5678".into(),
                fingerprint: Hash([5; 32]),
            },
            order_id: format!("order-{seq}"),
            amount_minor: 100,
            currency: Currency::CNY,
            factors: vec![FactorCheck {
                factor: Factor::Password,
                passed: true,
            }],
            authorization_id: "auth_0123456789abcdef01234567".into(),
        },
    }
}

/// Writes the same bytes with `apply_batch` + `flush` and nothing else: either laid out as
/// the ledger stores them (chunks of [`CHUNK_EVENTS_MAX`] events, one key each) or one key per
/// event.
fn raw_sled(dir: &Path, payloads: &[Vec<u8>], batch_size: usize, chunked: bool) -> anyhow::Result<Row> {
    let name = if chunked { "raw-chunked" } else { "raw-keyed" };
    let db = sled::Config::new()
        .path(dir.join(name))
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let tree = db.open_tree("raw")?;
    let bytes_per_event = payloads.iter().map(|p| p.len()).sum::<usize>() / payloads.len().max(1);
    let started = Instant::now();
    let mut seq = 1u64;
    for batch_payloads in payloads.chunks(batch_size) {
        let mut batch = sled::Batch::default();
        if chunked {
            for chunk in batch_payloads.chunks(CHUNK_EVENTS_MAX) {
                let mut value = Vec::with_capacity(chunk.iter().map(|p| p.len() + 4).sum());
                for p in chunk {
                    value.extend_from_slice(&(p.len() as u32).to_be_bytes());
                    value.extend_from_slice(p);
                }
                batch.insert(&seq.to_be_bytes()[..], value);
                seq += chunk.len() as u64;
            }
        } else {
            for p in batch_payloads {
                batch.insert(&seq.to_be_bytes()[..], p.as_slice());
                seq += 1;
            }
        }
        tree.apply_batch(batch)?;
        db.flush()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let layout = if chunked {
        format!("chunks of {CHUNK_EVENTS_MAX} (the ledger's layout)")
    } else {
        "one key per event".into()
    };
    Ok(Row {
        name: format!("raw sled, {layout}"),
        ops: payloads.len() as u64,
        seconds,
        p50_us: None,
        p99_us: None,
        note: format!("batches of {batch_size}, {bytes_per_event} B/event"),
    })
}

fn sample_payloads(events: u64) -> Vec<Vec<u8>> {
    let mut prev = GENESIS_HASH;
    (1..=events)
        .map(|seq| {
            let b = codec::encode(&sample_event(seq, prev));
            prev = hash_bytes(&b);
            b
        })
        .collect()
}

/// The benchmarks' configuration: the defaults, with what the environment sets (the keys of
/// `bindledger::config::ENV_KEYS`, such as `BINDLEDGER_MEMORY_ACCOUNTS_CACHED`), then the
/// benchmark's own directory, provider and limits.
pub(crate) fn bench_config(dir: &Path) -> Config {
    let from_env = Config::from_toml_and_env("", |k| std::env::var(k).ok()).unwrap_or_else(|e| {
        eprintln!("bench: the environment's settings do not read ({e}); using the defaults");
        Config::default()
    });
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        max_bindings_per_account: 4,
        ..from_env
    };
    c.gateway.simulated = Scenario {
        balance_minor_min: 1_000_000_000_000,
        balance_minor_max: 1_000_000_000_000,
        ..Scenario::quiet(42)
    };
    c
}

struct Fixture {
    /// The ledger as `serve` runs it: with the alert monitor.
    node: bindledger::node::Node,
    ledger: Ledger,
    gateway: Arc<SimulatedGateway>,
    bindings: Bound,
}

async fn fixture(dir: &Path, accounts: usize, commit_delay_us: u64) -> anyhow::Result<Fixture> {
    fixture_with(dir, accounts, |c| c.writer.commit_delay_us = commit_delay_us).await
}

async fn fixture_with(dir: &Path, accounts: usize, adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Fixture> {
    let mut config = bench_config(dir);
    adjust(&mut config);
    let setup = Instant::now();
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes(BENCH_SECRET), gateway.clone())?;
    let ledger = node.ledger.clone();
    let bindings = bulk_bind(&ledger, &LedgerSecret::from_bytes(BENCH_SECRET), accounts).await?;
    // The setup's alerts are folded before the run begins: what is measured is the run's own
    // work, not the setup's left to the monitor.
    if let Some(m) = &node.monitor {
        let deadline = Instant::now() + std::time::Duration::from_secs(600);
        while m.status().position.load(std::sync::atomic::Ordering::Relaxed) < ledger.log_len() {
            anyhow::ensure!(Instant::now() < deadline, "the monitor did not fold the setup's events");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "bench: {accounts} accounts bound and their events folded in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    Ok(Fixture {
        node,
        ledger,
        gateway,
        bindings,
    })
}

/// The benchmarks' ledger secret.
pub(crate) const BENCH_SECRET: [u8; 32] = [7; 32];

/// The benchmark's accounts: account `i` is `bench-{i:05}`, bound to the wallet of phone
/// `139{i:08}` by one binding whose id (and its event's) is derived from `i` ([`bulk_bind`]
/// writes them). Each is computed when used, so ten million accounts take no memory in the
/// benchmark itself.
#[derive(Clone)]
pub(crate) struct Bound {
    gateway: Arc<SimulatedGateway>,
    len: usize,
}

impl Bound {
    /// `len` accounts, with the benchmark's wallet provider ([`bench_config`]'s).
    pub(crate) fn new(len: usize) -> Bound {
        Bound {
            gateway: Arc::new(SimulatedGateway::new(bench_config(Path::new("")).gateway.simulated)),
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// (account, binding id, payment password) of account `i`.
    pub(crate) fn get(&self, i: usize) -> (String, Uuid, String) {
        let provider = Provider::parse("alipay").expect("known");
        (
            format!("bench-{i:05}"),
            derived_id(i as u64, 1),
            self.gateway.password_for(&provider, &format!("139{i:08}")),
        )
    }
}

/// A UUID v7 for account `i`'s setup (`kind` 0: its event, 1: its binding), the same on every
/// run.
fn derived_id(i: u64, kind: u8) -> Uuid {
    let mut random = [0u8; 10];
    random[0] = kind;
    random[2..].copy_from_slice(&i.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(1_790_000_000_000, &random).into_uuid()
}

/// Events handed to the writer at once by [`bulk_bind`].
const BULK_EVENTS: usize = 4096;

/// The benchmark's setup at scale: one `wallet_bound` event per account, as a bind through the
/// provider would record it, made here and written through the ledger's own writer in batches
/// of [`BULK_EVENTS`] (the path a replica appends by: each event must continue the chain), two
/// batches in flight, dated over the last 30 days. The ledger must be empty. Binding one account per command took
/// 0.5-0.9 ms each; this takes the writer's, the indexer's and the monitor's time alone.
pub(crate) async fn bulk_bind(ledger: &Ledger, secret: &LedgerSecret, accounts: usize) -> anyhow::Result<Bound> {
    anyhow::ensure!(ledger.log_len() == 0, "the bulk setup starts from an empty ledger");
    let bound = Bound::new(accounts);
    let provider = Provider::parse("alipay").expect("known");
    // The binds are spread over the 30 days before now, as a ledger's accounts were bound over
    // time: the rules' windows then hold what they would on such a ledger (the last hour's
    // and day's binds), not every account at once.
    let span_us: i64 = 30 * 24 * 3600 * 1_000_000;
    let start = bindledger_events::types::micros::truncate(Utc::now()) - chrono::Duration::microseconds(span_us);
    let mut prev = bindledger_events::GENESIS_HASH;
    let mut in_flight: Option<bindledger::ledger::ReplicatedAppend> = None;
    let mut buf = Vec::with_capacity(1024);
    for first in (0..accounts).step_by(BULK_EVENTS) {
        let mut batch = Vec::with_capacity(BULK_EVENTS);
        for i in first..(first + BULK_EVENTS).min(accounts) {
            let account = format!("bench-{i:05}");
            let phone = format!("139{i:08}");
            let wallet = secret.wallet_ref(&provider, &phone);
            let digest = secret.mac(&[
                b"bind",
                account.as_bytes(),
                provider.as_str().as_bytes(),
                &wallet.fingerprint.0,
                b"",
            ]);
            let at = start + chrono::Duration::microseconds((span_us as i128 * i as i128 / accounts as i128) as i64);
            let event = bindledger_events::Event {
                v: bindledger_events::SCHEMA_VERSION,
                id: derived_id(i as u64, 0),
                seq: i as u64 + 1,
                account,
                account_seq: 1,
                event_time: at,
                record_time: at,
                idempotency_key: None,
                request_digest: Some(digest),
                correlation_id: None,
                context: Default::default(),
                prev_hash: prev,
                payload: Payload::WalletBound {
                    binding_id: derived_id(i as u64, 1),
                    provider: provider.clone(),
                    agreement_id: bound.gateway.agreement_id(&provider, &phone),
                    wallet,
                    factors: vec![],
                },
            };
            bindledger_events::codec::encode_into(&event, &mut buf);
            prev = bindledger_events::hash_bytes(&buf);
            batch.push(bytes::Bytes::copy_from_slice(&buf));
        }
        let submitted = ledger.submit_replicated(batch).await?;
        if let Some(earlier) = in_flight.replace(submitted) {
            earlier.durable().await?;
        }
    }
    if let Some(last) = in_flight {
        last.durable().await?;
    }
    anyhow::ensure!(
        ledger.log_len() == accounts as u64,
        "the bulk setup wrote {} of {accounts} events",
        ledger.log_len()
    );
    Ok(bound)
}

/// Binds in flight at once while a benchmark sets up its accounts: the writer's group commit
/// makes one flush for many of them (one at a time, a million accounts took half an hour).
const SETUP_BINDS_IN_FLIGHT: usize = 512;

/// Binds one wallet (phone `139` + the index) to each account, [`SETUP_BINDS_IN_FLIGHT`] at
/// once; returns (account, binding id, password), in the accounts' order.
pub(crate) async fn bind_accounts(
    ledger: &Ledger,
    gateway: &SimulatedGateway,
    accounts: impl Iterator<Item = String>,
) -> anyhow::Result<Vec<(String, Uuid, String)>> {
    let provider = Provider::parse("alipay").expect("known");
    let mut bindings = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut accounts = accounts.enumerate();
    loop {
        while in_flight.len() < SETUP_BINDS_IN_FLIGHT {
            let Some((i, account)) = accounts.next() else { break };
            let phone = format!("139{i:08}");
            let password = gateway.password_for(&provider, &phone);
            let req = BindRequest {
                provider: "alipay".into(),
                wallet_account: SecretString::new(phone),
                payment_password: SecretString::new(password.clone()),
                factor: None,
                common: CommonInput::default(),
            };
            let cmd = req.validate(&account, Utc::now())?;
            let ledger = ledger.clone();
            in_flight.spawn(async move {
                let done = ledger.bind(cmd).await?;
                match &done.event.payload {
                    Payload::WalletBound { binding_id, .. } => Ok((i, (account, *binding_id, password))),
                    other => anyhow::bail!("bench fixture bind failed: {other:?}"),
                }
            });
        }
        match in_flight.join_next().await {
            None => break,
            Some(r) => bindings.push(r??),
        }
    }
    bindings.sort_unstable_by_key(|(i, _)| *i);
    Ok(bindings.into_iter().map(|(_, b)| b).collect())
}

pub(crate) fn pay_request(binding: &(String, Uuid, String), n: u64) -> PayRequest {
    PayRequest {
        binding_id: binding.1.to_string(),
        order_id: format!("o-{n}"),
        amount_minor: 100,
        currency: None,
        payment_password: SecretString::new(binding.2.clone()),
        factor: None,
        common: CommonInput {
            idempotency_key: Some(format!("pay-{n}")),
            // What an app sends with a payment: the personal fields the ledger seals.
            context: Some(ContextInput {
                channel: Some("app".into()),
                ip: Some(format!("198.51.{}.{}", (n >> 8) & 255, n & 255)),
                device_id: Some(format!("device-{:08x}", n.wrapping_mul(2_654_435_761) as u32)),
                user_agent: Some("bindledger-bench/1.0 (Android 14)".into()),
            }),
            ..CommonInput::default()
        },
    }
}

/// Events made durable per flush during a measured run.
fn events_per_flush(ledger: &Ledger, events: u64, flushes_before: u64) -> f64 {
    let flushes = ledger.metrics().flushes.get() - flushes_before;
    events as f64 / flushes.max(1) as f64
}

/// Runs `op` for every n in `0..total` from `workers` concurrent tasks, each with its own
/// state (made by `make`, threaded through `op`); returns the per-operation latencies in µs,
/// sorted, and the elapsed seconds.
async fn drive<S, F, Fut>(
    workers: usize,
    total: u64,
    mut make: impl FnMut() -> S,
    op: F,
) -> anyhow::Result<(Vec<u64>, f64)>
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (S, anyhow::Result<()>)> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (op, next, mut state) = (op.clone(), next.clone(), make());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                let (back, result) = op(state, n).await;
                state = back;
                result?;
                lat.push(t.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok((lat, seconds))
}

/// The library path and its baseline, in alternating rounds on one ledger: each round sends
/// its share of the commands, then writes its share of `payloads` with raw sled in batches of
/// the events per flush that round made. Returns the library row, the baseline row (both over
/// all rounds) and each round's (library rate, raw rate, events per flush).
async fn library(
    root: &Path,
    args: &BenchArgs,
    payloads: &[Vec<u8>],
) -> anyhow::Result<(Row, Row, Row, Row, Vec<(f64, f64, usize)>)> {
    let f = fixture(&root.join("lib"), args.accounts, args.commit_delay_us).await?;
    let bindings = Arc::new(f.bindings);
    let rounds = args.rounds.max(1);
    let flushes_before = f.ledger.metrics().flushes.get();
    let (mut lat, mut lib_seconds, mut raw_seconds, mut raw_ops) = (Vec::new(), 0.0, 0.0, 0u64);
    let (mut unsynced_lat, mut unsynced_seconds, mut unsynced_ops) = (Vec::new(), 0.0, 0u64);
    let (mut clear_lat, mut clear_seconds, mut clear_cpu) = (Vec::new(), 0.0, 0.0);
    let mut per_round = Vec::new();
    let mut lib_cpu = 0.0;
    // Commands of the rounds without the sync, then of those without sealing, are numbered
    // after the others (fresh keys).
    let mut unsynced_next = args.lib_commands;
    let mut clear_next = args.lib_commands * 2;
    let pay_round =
        |first: u64, count: u64| pay_range(&f.ledger, &bindings, first, count, args.lib_concurrency, args.zipf);
    for r in 0..rounds {
        let first = args.lib_commands * r / rounds;
        let count = args.lib_commands * (r + 1) / rounds - first;
        let base = f.ledger.log_len();
        let round_flushes_before = f.ledger.metrics().flushes.get();
        let cpu_before = cpu_seconds();
        let (round_lat, seconds) = pay_round(first, count).await?;
        lib_cpu += cpu_seconds() - cpu_before;
        let written = f.ledger.log_len() - base;
        anyhow::ensure!(written == count, "expected {count} events, the log grew by {written}");
        let per_flush = events_per_flush(&f.ledger, written, round_flushes_before)
            .round()
            .max(1.0) as usize;
        // The same commands without the fdatasync after each flush: what durability against
        // a power cut costs (half a round, right after the synced one).
        f.ledger.set_sync_data(false);
        let half = (count / 2).max(1);
        let (u_lat, u_seconds) = pay_round(unsynced_next, half).await?;
        f.ledger.set_sync_data(true);
        // The same commands, durable, with the personal fields in the clear (keys.seal =
        // false): what sealing costs, right after the sealed round.
        f.ledger.data_keys().set_sealing(false);
        let cpu_before = cpu_seconds();
        let (c_lat, c_seconds) = pay_round(clear_next, count).await?;
        clear_cpu += cpu_seconds() - cpu_before;
        f.ledger.data_keys().set_sealing(true);
        clear_next += count;
        clear_lat.extend(c_lat);
        clear_seconds += c_seconds;
        unsynced_next += half;
        unsynced_lat.extend(u_lat);
        unsynced_seconds += u_seconds;
        unsynced_ops += half;
        let share = &payloads
            [(payloads.len() as u64 * r / rounds) as usize..(payloads.len() as u64 * (r + 1) / rounds) as usize];
        let raw = tokio::task::block_in_place(|| raw_sled(&root.join(format!("same-{r}")), share, per_flush, true))?;
        per_round.push((count as f64 / seconds, raw.rate(), per_flush));
        lat.extend(round_lat);
        lib_seconds += seconds;
        raw_seconds += raw.seconds;
        raw_ops += raw.ops;
    }
    lat.sort_unstable();
    unsynced_lat.sort_unstable();
    clear_lat.sort_unstable();
    let per_flush = events_per_flush(&f.ledger, args.lib_commands * 2 + unsynced_ops, flushes_before);
    // What the process holds at the end of the run (the ledger, its monitor, the submitters):
    // the benchmark's own disk scan afterwards makes sled keep every page it reads, so the
    // process's peak is not the ledger's.
    let resident = bindledger_fixture::resident_bytes();
    drop(f.gateway);
    f.node.stop().await;
    let bytes_per_event = payloads.iter().map(|p| p.len()).sum::<usize>() / payloads.len().max(1);
    let lib = Row {
        name: "library: Ledger::pay, durable".into(),
        ops: args.lib_commands,
        seconds: lib_seconds,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        note: format!(
            "{} submitters, {per_flush:.0} events per flush, {rounds} rounds; CPU {:.0} µs per command (submitters included); resident {:.0} MB at its end",
            args.lib_concurrency,
            lib_cpu * 1e6 / args.lib_commands as f64,
            resident as f64 / 1e6
        ),
    };
    let unsynced = Row {
        name: "library without the fdatasync after each flush (writer.sync_data = false)".into(),
        ops: unsynced_ops,
        seconds: unsynced_seconds,
        p50_us: percentile(&unsynced_lat, 0.5),
        p99_us: percentile(&unsynced_lat, 0.99),
        note: "half a round after each synced round, same ledger".into(),
    };
    let clear = Row {
        name: "library, personal fields not sealed (keys.seal = false)".into(),
        ops: args.lib_commands,
        seconds: clear_seconds,
        p50_us: percentile(&clear_lat, 0.5),
        p99_us: percentile(&clear_lat, 0.99),
        note: format!(
            "a round after each sealed round, same ledger; CPU {:.0} µs per command",
            clear_cpu * 1e6 / args.lib_commands as f64
        ),
    };
    let raw = Row {
        name: format!("raw sled, chunks of {CHUNK_EVENTS_MAX} (the ledger's layout), after each library round"),
        ops: raw_ops,
        seconds: raw_seconds,
        p50_us: None,
        p99_us: None,
        note: format!("batches of each round's events per flush, {bytes_per_event} B/event"),
    };
    Ok((lib, unsynced, clear, raw, per_round))
}

/// CPU time this process has used (user and system), from `/proc/self/stat` (Linux).
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields, in USER_HZ (100 on Linux).
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The HTTP runs: the same load generator, in a process of its own, against the ledger's
/// `POST /payments` and against the baseline route, which is the same server stack (router,
/// limits, authentication, body reading, validation) without the command. Returns the
/// baseline row and the ledger's row.
async fn http(dir: &Path, args: &BenchArgs) -> anyhow::Result<(Row, Row, Row, Row, Option<Row>)> {
    let f = fixture(dir, args.accounts, args.commit_delay_us).await?;
    let token = "bench-token-0123456789".to_string();
    let tokens = vec![TokenConfig {
        token: token.clone(),
        roles: vec![Role::Writer],
        name: None,
        client_cert_sha256: None,
    }];
    let config = bench_config(dir);
    let state = AppState::build(f.ledger.clone(), &tokens, config.http.clone(), f.node.extras.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bindledger::adapters::http::serve_with_the_baseline(
        listener,
        state,
        async move {
            let _ = stopped.await;
        },
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Pinned to a core of its own where there are cores to spare; on two cores the server
    // needs both, and the generator shares them.
    let pin = (cores >= 4 && std::process::Command::new("taskset").arg("-V").output().is_ok())
        .then(|| (cores - 1).to_string());
    let run = |prefix: &'static str, first: u64, addr: std::net::SocketAddr, tls_ca: Option<PathBuf>| {
        let mut cmd = match &pin {
            Some(core) => {
                let mut c = std::process::Command::new("taskset");
                c.args(["-c", core])
                    .arg(std::env::current_exe().expect("the running binary"));
                c
            }
            None => std::process::Command::new(std::env::current_exe().expect("the running binary")),
        };
        cmd.arg("bench-load")
            .args(["--addr", &addr.to_string(), "--token", &token, "--prefix", prefix])
            .args(["--accounts", &f.bindings.len().to_string()])
            .args(["--connections", &args.http_connections.to_string()])
            .args([
                "--commands",
                &args.http_commands.to_string(),
                "--first",
                &first.to_string(),
            ])
            .args(args.zipf.iter().flat_map(|s| ["--zipf".to_owned(), s.to_string()]))
            .args(
                tls_ca
                    .into_iter()
                    .flat_map(|ca| ["--tls-ca".into(), ca.into_os_string()]),
            )
            .stderr(std::process::Stdio::inherit());
        async move {
            let cpu_before = cpu_seconds();
            let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
            let cpu = cpu_seconds() - cpu_before;
            anyhow::ensure!(out.status.success(), "the load generator failed ({})", out.status);
            let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            Ok::<_, anyhow::Error>((r, cpu))
        }
    };
    let (base_r, base_cpu) = run("/v1/bench/accounts", 0, addr, None).await?;
    let base = f.ledger.log_len();
    let flushes_before = f.ledger.metrics().flushes.get();
    let batches_before = f.ledger.metrics().batches.get();
    let (r, cpu) = run("/v1/accounts", 0, addr, None).await?;
    let written = f.ledger.log_len() - base;
    anyhow::ensure!(
        written == args.http_commands,
        "expected {} events, the log grew by {written}",
        args.http_commands
    );
    let per_flush = events_per_flush(&f.ledger, written, flushes_before);
    let per_batch = written as f64 / (f.ledger.metrics().batches.get() - batches_before).max(1) as f64;
    // The same payments with the personal fields in the clear (keys.seal = false), numbered
    // after the TLS run's: what sealing costs end to end.
    f.ledger.data_keys().set_sealing(false);
    let before = f.ledger.log_len();
    let (clear_r, clear_cpu) = run("/v1/accounts", args.http_commands * 2, addr, None).await?;
    f.ledger.data_keys().set_sealing(true);
    anyhow::ensure!(
        f.ledger.log_len() - before == args.http_commands,
        "the run without sealing did not write every payment"
    );
    // And sealed again, after it: the order of the two runs weighs nothing in the ratio.
    let before = f.ledger.log_len();
    let (again_r, again_cpu) = run("/v1/accounts", args.http_commands * 3, addr, None).await?;
    anyhow::ensure!(
        f.ledger.log_len() - before == args.http_commands,
        "the second sealed run did not write every payment"
    );
    // The same payments over TLS (a server of its own on the same ledger, the same stack with
    // http.tls), numbered after the plain run's.
    let tls = if args.tls {
        let certs = dir.join("tls");
        std::fs::create_dir_all(&certs)?;
        self_signed(&certs)?;
        let mut http_tls = config.http.clone();
        http_tls.tls.cert_file = Some(certs.join("server.pem"));
        http_tls.tls.key_file = Some(certs.join("server.key"));
        let state = AppState::build(f.ledger.clone(), &tokens, http_tls, f.node.extras.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tls_addr = listener.local_addr()?;
        let (stop_tls, stopped_tls) = tokio::sync::oneshot::channel::<()>();
        let server_tls = tokio::spawn(bindledger::adapters::http::serve(listener, state, async move {
            let _ = stopped_tls.await;
        }));
        let before = f.ledger.log_len();
        let (r, cpu) = run("/v1/accounts", args.http_commands, tls_addr, Some(certs.join("ca.pem"))).await?;
        anyhow::ensure!(
            f.ledger.log_len() - before == args.http_commands,
            "the TLS run did not write every payment"
        );
        let _ = stop_tls.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), server_tls).await;
        Some((r, cpu))
    } else {
        None
    };
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    f.node.stop().await;
    let generator = match &pin {
        Some(core) => format!("load generator in its own process, pinned to core {core}"),
        None => format!("load generator in its own process, sharing the {cores} cores"),
    };
    let row = |name: &str, r: &serde_json::Value, cpu: f64, more: String| Row {
        name: name.into(),
        ops: args.http_commands,
        seconds: r["seconds"].as_f64().unwrap_or(f64::NAN),
        p50_us: r["p50_us"].as_u64(),
        p99_us: r["p99_us"].as_u64(),
        note: format!(
            "{} connections, {generator}; server CPU {:.0} µs per request{more}",
            args.http_connections,
            cpu * 1e6 / args.http_commands as f64
        ),
    };
    let tls = tls.map(|(r, cpu)| {
        row(
            "HTTPS: POST /payments, durable (TLS 1.3, rustls; after the plain run)",
            &r,
            cpu,
            String::new(),
        )
    });
    Ok((
        row(
            "HTTP baseline: the same POST through router, auth, body and validation, no command",
            &base_r,
            base_cpu,
            String::new(),
        ),
        row(
            "HTTP: POST /payments, durable",
            &r,
            cpu,
            format!(", {per_flush:.0} events per flush, {per_batch:.1} per writer batch"),
        ),
        row(
            "HTTP: POST /payments, durable, personal fields not sealed (keys.seal = false)",
            &clear_r,
            clear_cpu,
            String::new(),
        ),
        row(
            "HTTP: POST /payments, durable, sealed again after the run without",
            &again_r,
            again_cpu,
            String::new(),
        ),
        tls,
    ))
}

/// A CA and a certificate it signed for 127.0.0.1 (`ca.pem`, `server.pem`, `server.key`), made
/// with the openssl command, for `bench --tls`.
fn self_signed(dir: &Path) -> anyhow::Result<()> {
    let sh = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj '/CN=bench CA' -keyout ca.key -out ca.pem \
        && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench -keyout server.key -out server.csr \
        && printf 'subjectAltName = IP:127.0.0.1\\n' > server.ext \
        && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem";
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(sh)
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "making the benchmark's certificate with openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn zipf_exponent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 4.0 => Ok(v),
        _ => Err("a Zipf exponent is a number above 0 and at most 4, such as 1.0".into()),
    }
}

/// Starts a stopped benchmark ledger again, as `serve` does (the monitor included): how long
/// the start took, the events of its log, and the bytes its directory holds.
async fn reopen(dir: &Path, commit_delay_us: u64) -> anyhow::Result<(f64, u64, u64, String)> {
    fn bytes_under(dir: &Path) -> std::io::Result<u64> {
        let mut total = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += if meta.is_dir() {
                bytes_under(&entry.path())?
            } else {
                meta.len()
            };
        }
        Ok(total)
    }
    let mut config = bench_config(dir);
    config.writer.commit_delay_us = commit_delay_us;
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let started = Instant::now();
    let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([7; 32]), gateway)?;
    let seconds = started.elapsed().as_secs_f64();
    let events = node.ledger.log_len();
    let (_, keys, key_bytes) = node.ledger.key_index_stats();
    let mut parts = node.ledger.stored_bytes()?;
    parts.push(("idempotency and paid-order tables", keys, key_bytes));
    let per_event = |b: u64| b as f64 / events.max(1) as f64;
    let stored: u64 = parts.iter().map(|p| p.2).sum();
    let mut text = parts
        .iter()
        .map(|(part, rows, bytes)| format!("{part} {:.0} ({rows} rows)", per_event(*bytes)))
        .collect::<Vec<_>>();
    node.stop().await;
    let total = bytes_under(dir)?;
    text.push(format!(
        "sled's own (nodes, space not yet reclaimed) {:.0}",
        per_event(total.saturating_sub(stored))
    ));
    Ok((seconds, events, total, text.join("; ")))
}

/// Which account command `n` goes to, of `len`: in turn, or (`zipf`) drawn from a Zipf
/// distribution of that exponent (its continuous form, inverted) by a hash of `n`, the first
/// accounts the hottest. The same
/// `n`, the same account: a run is reproducible.
pub(crate) fn account_for(n: u64, len: usize, zipf: Option<f64>) -> usize {
    let Some(s) = zipf else {
        return (n % len as u64) as usize;
    };
    // splitmix64 of n, as a uniform draw in [0, 1).
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let u = (z ^ (z >> 31)) as f64 / 2f64.powi(64);
    // The inverse of the continuous Zipf distribution's CDF over [1, len + 1).
    let top = len as f64 + 1.0;
    let x = if (s - 1.0).abs() < 1e-9 {
        top.powf(u)
    } else {
        ((top.powf(1.0 - s) - 1.0) * u + 1.0).powf(1.0 / (1.0 - s))
    };
    (x.floor() as usize).saturating_sub(1).min(len - 1)
}

/// What `bindledger bench-load` takes: the HTTP benchmark's load generator, run by the
/// benchmark as a process of its own.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[arg(long)]
    pub addr: std::net::SocketAddr,
    #[arg(long)]
    pub token: String,
    /// `/v1/accounts` (the ledger) or `/v1/bench/accounts` (the baseline route).
    #[arg(long)]
    pub prefix: String,
    /// The accounts the benchmark bound (`bench --accounts`): each one's binding and password
    /// are derived from its number.
    #[arg(long)]
    pub accounts: usize,
    #[arg(long)]
    pub connections: usize,
    #[arg(long)]
    pub commands: u64,
    /// The first command's number (idempotency keys and orders are numbered from it).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// The accounts' Zipf exponent (`bench --zipf`); in turn without it.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// More shards' addresses (`bench-cluster`): with them, each request goes to the shard that
    /// owns its account under an even map of `--addr` and these (in order), as a client that
    /// follows the map does.
    #[arg(long, value_delimiter = ',')]
    pub shard_addrs: Vec<std::net::SocketAddr>,
    /// Speak TLS, trusting the CA certificates in this PEM file (`bench --tls`).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// Sends `commands` payments over `connections` kept-alive connections; prints
/// `{"seconds", "p50_us", "p99_us"}`.
pub async fn load(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.accounts > 0, "no accounts: --accounts must be at least 1");
    let bindings = Bound::new(args.accounts);
    let bindings = Arc::new(bindings);
    let (addr, token, prefix, first, zipf) = (
        args.addr,
        Arc::new(args.token),
        Arc::new(args.prefix),
        args.first,
        args.zipf,
    );
    let addrs: Arc<Vec<std::net::SocketAddr>> = Arc::new(std::iter::once(addr).chain(args.shard_addrs).collect());
    let tls = match &args.tls_ca {
        Some(ca) => Some(Arc::new(bindledger::adapters::http::tls::connector(&std::fs::read(
            ca,
        )?)?)),
        None => None,
    };
    let make_client = || LoadClient {
        tls: tls.clone(),
        addrs: addrs.clone(),
        streams: addrs.iter().map(|_| None).collect(),
        buf: Vec::with_capacity(4096),
        body: Vec::with_capacity(256),
        request: Vec::with_capacity(512),
    };
    let (lat, seconds) = drive(args.connections, args.commands, make_client, move |mut client, n| {
        use std::io::Write;
        let n = first + n;
        let b = &bindings.get(account_for(n, bindings.len(), zipf));
        let shards = client.addrs.len();
        let to = bindledger::domain::shard::slot_of(&b.0) as usize * shards / bindledger::domain::shard::SLOTS as usize;
        let addr = client.addrs[to];
        let (body, request) = (&mut client.body, &mut client.request);
        body.clear();
        request.clear();
        let formatted = write!(
            body,
            r#"{{"binding_id":"{}","order_id":"o-{n}","amount_minor":100,"payment_password":"{}","idempotency_key":"pay-{n}","context":{{"channel":"app","ip":"198.51.{}.{}","device_id":"device-{:08x}","user_agent":"bindledger-bench/1.0 (Android 14)"}}}}"#,
            b.1,
            b.2,
            (n >> 8) & 255,
            n & 255,
            n.wrapping_mul(2_654_435_761) as u32
        )
        .and_then(|()| {
            write!(
                request,
                "POST {prefix}/{}/payments HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                b.0,
                body.len()
            )
        });
        request.extend_from_slice(body);
        async move {
            let result = match formatted {
                Ok(()) => match client.post(to).await {
                    Ok(201) => Ok(()),
                    Ok(status) => Err(anyhow::anyhow!("unexpected status {status}")),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            };
            (client, result)
        }
    })
    .await?;
    println!(
        "{}",
        serde_json::json!({"seconds": seconds, "p50_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99)})
    );
    Ok(())
}

/// The HTTP run's load generator: one kept-alive connection, a request written as prepared,
/// the response read up to its status and `content-length` body. It shares the two cores with
/// the server, so it does as little as HTTP/1.1 allows (no pooled client, no header map, no
/// connection task per request); correctness of the server's HTTP is the tests' business.
struct LoadClient {
    /// The server's address, or each shard's (the even map's order).
    addrs: Arc<Vec<std::net::SocketAddr>>,
    streams: Vec<Option<Box<dyn Io>>>,
    /// TLS, when the server speaks it.
    tls: Option<Arc<bindledger::adapters::http::tls::Connector>>,
    buf: Vec<u8>,
    /// The next request's body and the whole request, rewritten in place for each request.
    body: Vec<u8>,
    request: Vec<u8>,
}

impl LoadClient {
    /// Sends the prepared request; returns the response's status. A connection that failed is
    /// dropped (the next request opens another).
    async fn post(&mut self, to: usize) -> std::io::Result<u16> {
        use tokio::io::AsyncWriteExt;
        if self.streams[to].is_none() {
            let s = tokio::net::TcpStream::connect(self.addrs[to]).await?;
            s.set_nodelay(true)?;
            self.streams[to] = Some(match &self.tls {
                None => Box::new(s),
                Some(c) => Box::new(bindledger::adapters::http::tls::connect(c, s, self.addrs[to].ip()).await?),
            });
        }
        let stream = self.streams[to].as_mut().expect("connected above");
        self.buf.clear();
        let answer = match stream.write_all(&self.request).await {
            Ok(()) => read_response(stream, &mut self.buf).await,
            Err(e) => Err(e),
        };
        if answer.is_err() {
            self.streams[to] = None;
        }
        answer
    }
}

/// Reads one response into `buf`: its head, then as many body bytes as its `content-length`
/// says; returns its status.
/// A connection of the load generator: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn read_response(stream: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = loop {
        read_more(stream, buf).await?;
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("response headers over 64 KiB"));
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head is not UTF-8"))?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .ok_or_else(|| bad("no content-length"))?;
    while buf.len() < end + 4 + length {
        read_more(stream, buf).await?;
    }
    Ok(status)
}

/// Appends what the server sent next to `buf`; the server closing the connection is an error.
async fn read_more(stream: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 2048];
    match stream.read(&mut chunk).await? {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        )),
        n => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn fmt_us(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(us) if us >= 1000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) => format!("{us} µs"),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bindledger-bench-{}", std::process::id())));
    std::fs::create_dir_all(&root)?;
    eprintln!(
        "bench: logs under {} ({} cores)",
        root.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let payloads = sample_payloads(args.raw_events);
    // The baseline: the same bytes, the same layout, the same number of events per flush as
    // the library run made, measured right after each of its rounds.
    eprintln!(
        "bench: library path and its raw sled baseline, {} rounds ...",
        args.rounds
    );
    let (lib, unsynced, clear, raw, rounds) = library(&root, &args, &payloads).await?;
    let (start_s, events, dir_bytes, parts) = reopen(&root.join("lib"), args.commit_delay_us).await?;
    // Measured: unless its place was asked for (`--dir`), its disk goes to the HTTP run's (at
    // 10,000,000 accounts each holds about 36 GB).
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(root.join("lib"));
    }
    eprintln!("bench: HTTP, its baseline route and the ledger, the load generator in its own process ...");
    let (http_base, http, http_clear, http_again, https) = http(&root.join("http"), &args).await?;
    // For context: larger batches and one key per event.
    eprintln!("bench: raw sled, batches of {} ...", args.raw_batch);
    let raw_large = raw_sled(&root, &payloads, args.raw_batch, true)?;
    let raw_keyed = raw_sled(&root, &payloads, args.raw_batch, false)?;
    let payloads_bytes = payloads.iter().map(|p| p.len()).sum::<usize>() / payloads.len().max(1);
    drop(payloads);
    let baseline = raw.rate();
    println!("| measurement | ops | seconds | ops/s | p50 | p99 | vs raw sled (same batches) | notes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in [
        &raw,
        &raw_large,
        &raw_keyed,
        &lib,
        &unsynced,
        &clear,
        &http_base,
        &http,
        &http_clear,
        &http_again,
    ]
    .into_iter()
    .chain(https.as_ref())
    {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {:.2} | {} |",
            r.name,
            r.ops,
            r.seconds,
            r.rate(),
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            r.rate() / baseline,
            r.note
        );
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|(lib, raw, _)| lib / raw).collect();
    let each = rounds
        .iter()
        .map(|(lib, raw, batch)| format!("{lib:.0} / {raw:.0} = {:.2} (batches of {batch})", lib / raw))
        .collect::<Vec<_>>()
        .join("; ");
    ratios.sort_by(f64::total_cmp);
    println!();
    println!(
        "Start and disk: the library run's ledger ({} accounts, {events} events) starts again in {:.0} ms (the monitor's checkpoint included); its directory holds {:.0} bytes per event (log, indexes, alerts; {} bytes per event encoded).",
        args.accounts,
        start_s * 1e3,
        dir_bytes as f64 / events.max(1) as f64,
        payloads_bytes,
    );
    println!("Bytes per event, by part: {parts}.");
    println!(
        "Library / raw sled by round: {each}; median {:.2}.",
        ratios[ratios.len() / 2]
    );
    println!(
        "The fdatasync after each flush: {:.0} commands/s with it, {:.0} without ({:.2}); p99 {} against {}.",
        lib.rate(),
        unsynced.rate(),
        lib.rate() / unsynced.rate(),
        fmt_us(lib.p99_us),
        fmt_us(unsynced.p99_us)
    );
    println!(
        "HTTP / its baseline route (same run, same load generator): {:.0} / {:.0} = {:.2}; p99 {} against {}.",
        http.rate(),
        http_base.rate(),
        http.rate() / http_base.rate(),
        fmt_us(http.p99_us),
        fmt_us(http_base.p99_us)
    );
    println!(
        "Sealing the personal fields (AES-256-GCM per field, the account's data key): library {:.0} / {:.0} without = {:.2}, p99 {} against {}; HTTP {:.0} and {:.0} (before and after) / {:.0} = {:.2} and {:.2}, p99 {} and {} against {}.",
        lib.rate(),
        clear.rate(),
        lib.rate() / clear.rate(),
        fmt_us(lib.p99_us),
        fmt_us(clear.p99_us),
        http.rate(),
        http_again.rate(),
        http_clear.rate(),
        http.rate() / http_clear.rate(),
        http_again.rate() / http_clear.rate(),
        fmt_us(http.p99_us),
        fmt_us(http_again.p99_us),
        fmt_us(http_clear.p99_us)
    );
    let (checks_ns, fold_ns) = assertions_cost();
    println!(
        "Write-path assertions (on in release): {checks_ns:.1} ns per event for the batch checks and the account-version check, against {fold_ns:.1} ns per event to encode and hash it; compare with the library path's CPU per command above."
    );
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// What the write path's assertions (`bindledger::ledger::invariants`) cost per event, beside
/// what encoding and hashing the same event costs: each measured over the same 262,144 events
/// in batches of 128, over 2,000 accounts.
fn assertions_cost() -> (f64, f64) {
    use bindledger::ledger::invariants;
    use bindledger_events::{encode, hash_bytes, Event, Hash, Payload, UnbindFailure};
    use std::sync::Arc;
    const N: u64 = 262_144;
    const BATCH: usize = 128;
    let now = chrono::Utc::now();
    let mut prev = Hash::default();
    let mut versions: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut events = Vec::with_capacity(N as usize);
    let fold = std::time::Instant::now();
    for seq in 1..=N {
        let account = format!("shopper-{:05}", seq % 2000);
        let version = versions.entry(account.clone()).or_insert(0);
        *version += 1;
        let event = Event {
            v: bindledger_events::SCHEMA_VERSION,
            id: uuid::Uuid::from_u128(seq as u128),
            seq,
            account,
            account_seq: *version,
            event_time: now,
            record_time: now,
            idempotency_key: None,
            request_digest: None,
            correlation_id: None,
            context: Default::default(),
            prev_hash: prev,
            payload: Payload::UnbindFailed {
                binding_id: uuid::Uuid::from_u128(7),
                reason: UnbindFailure::NotBound,
            },
        };
        let bytes = encode(&event);
        prev = hash_bytes(&bytes);
        events.push((Arc::new(event), bytes::Bytes::from(bytes), prev));
    }
    let fold_ns = fold.elapsed().as_nanos() as f64 / N as f64;
    let checks = std::time::Instant::now();
    let mut head = Hash::default();
    for (i, chunk) in events.chunks(BATCH).enumerate() {
        invariants::batch_continues_the_log((i * BATCH) as u64 + 1, head, chunk, BATCH);
        for (e, _, _) in chunk {
            // The writer looks the account up after folding the event; the map of final
            // versions stands in for its state (the same lookup, the same comparison).
            invariants::account_at_its_event(versions.get(&e.account).map(|v| e.account_seq.min(*v)), e);
        }
        head = chunk.last().map_or(head, |(_, _, h)| *h);
    }
    let checks_ns = checks.elapsed().as_nanos() as f64 / N as f64;
    (checks_ns, fold_ns)
}

#[derive(clap::Args, Debug, Clone)]
pub struct KafkaBenchArgs {
    /// The broker to measure against.
    #[arg(long, env = "BINDLEDGER_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Events in the pre-filled log.
    #[arg(long, default_value_t = 500_000)]
    pub events: u64,
    /// Commands per second for the lag measurement.
    #[arg(long, default_value_t = 5000)]
    pub lag_rate: u64,
    /// Seconds of the lag measurement.
    #[arg(long, default_value_t = 10)]
    pub lag_seconds: u64,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Payments in each run of local against replicated durability.
    #[arg(long, default_value_t = 50_000)]
    pub mode_commands: u64,
}

fn fresh_topic(what: &str) -> String {
    format!("bindledger.bench.{what}.{}", Uuid::now_v7().simple())
}

/// Raw producer throughput vs the relay draining a pre-filled log, and end-to-end lag.
pub async fn kafka(args: KafkaBenchArgs) -> anyhow::Result<()> {
    use bindledger::adapters::kafka::relay::Relay;
    use bindledger::config::KafkaConfig;
    use rdkafka::producer::FutureProducer;
    use std::sync::atomic::Ordering;

    let root = std::env::temp_dir().join(format!("bindledger-bench-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    eprintln!("bench-kafka: pre-filling a log with {} events ...", args.events);
    let f = fixture(&root.join("log"), 2000, WriterConfig::default().commit_delay_us).await?;
    let bindings = Arc::new(f.bindings);
    let fill = f.ledger.log_len();
    let ledger = f.ledger.clone();
    let fill_bindings = bindings.clone();
    drive(
        512,
        args.events.saturating_sub(fill),
        || (),
        move |(), n| {
            let (ledger, bindings) = (ledger.clone(), fill_bindings.clone());
            async move {
                let b = &bindings.get((n % bindings.len() as u64) as usize);
                let result = ledger
                    .pay(pay_request(b, n).validate(&b.0, Utc::now()).expect("valid"))
                    .await;
                ((), result.map(|_| ()).map_err(anyhow::Error::from))
            }
        },
    )
    .await?;
    let events = f.ledger.log_len();
    let payloads: Vec<(u64, Vec<u8>)> = f
        .ledger
        .raw_events(1)
        .map(|r| r.map(|(s, b)| (s, b.to_vec())))
        .collect::<bindledger::Result<_>>()?;
    let bytes_per_event = payloads.iter().map(|(_, b)| b.len()).sum::<usize>() / payloads.len().max(1);

    // 1. Raw producer: the same values, keys and partitions, idempotent, acks=all, linger 5 ms.
    let kafka = |topic: &str| KafkaConfig {
        brokers: args.brokers.clone(),
        topic: topic.into(),
        notifications_topic: format!("{topic}.notifications"),
        partitions: args.partitions,
        ..KafkaConfig::default()
    };
    let raw_topic = fresh_topic("raw");
    {
        // The topic is created the same way the relay does it.
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .create()?;
        let t = rdkafka::admin::NewTopic::new(&raw_topic, args.partitions, rdkafka::admin::TopicReplication::Fixed(1));
        admin.create_topics([&t], &rdkafka::admin::AdminOptions::new()).await?;
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    eprintln!("bench-kafka: raw producer ...");
    let raw = raw_produce(&producer, &raw_topic, &payloads, args.partitions, false).await?;
    let raw = Row {
        name: "raw rdkafka producer, same values and keys".into(),
        ops: events,
        seconds: raw,
        p50_us: None,
        p99_us: None,
        note: format!("{bytes_per_event} B/event, {} partitions", args.partitions),
    };
    let headed = raw_produce(&producer, &raw_topic, &payloads, args.partitions, true).await?;
    let raw_headers = Row {
        name: "raw rdkafka producer, with the relay's five headers (precomputed)".into(),
        ops: events,
        seconds: headed,
        p50_us: None,
        p99_us: None,
        note: String::new(),
    };

    // 2. The relay draining the pre-filled log to a fresh topic.
    eprintln!("bench-kafka: relay draining the log ...");
    let relay_topic = fresh_topic("relay");
    let relay = Relay::new(f.ledger.clone(), kafka(&relay_topic));
    let status = relay.status.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(relay.run(stopped));
    let mut publishing_since = None;
    while status.position.load(Ordering::Relaxed) < events {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the relay did not drain the log: {:?}",
            status.last_error.lock().unwrap()
        );
        if publishing_since.is_none() && status.state() == "publishing" {
            publishing_since = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total_s = started.elapsed().as_secs_f64();
    let publishing_s = publishing_since.map_or(total_s, |t| t.elapsed().as_secs_f64());
    let drain = Row {
        name: "relay draining the log, publishing only".into(),
        ops: events,
        seconds: publishing_s,
        p50_us: None,
        p99_us: None,
        note: format!("{} partitions", args.partitions),
    };
    let drain_all = Row {
        name: "relay draining the log, with connecting, topic creation and recovery".into(),
        ops: events,
        seconds: total_s,
        p50_us: None,
        p99_us: None,
        note: String::new(),
    };

    // 3. Lag at a steady rate: command acknowledged -> message read from the topic.
    eprintln!(
        "bench-kafka: lag at {} commands/s for {} s ...",
        args.lag_rate, args.lag_seconds
    );
    let acked: Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let seen: Arc<std::sync::Mutex<HashMap<u64, u64>>> = Arc::default();
    let duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let consumer_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (brokers, topic, acked, seen, done, duplicates) = (
            args.brokers.clone(),
            relay_topic.clone(),
            acked.clone(),
            seen.clone(),
            consumer_done.clone(),
            duplicates.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<()> {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            use rdkafka::message::{Headers, Message};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("bench-lag-{}", Uuid::now_v7().simple()))
                .set("auto.offset.reset", "latest")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            consumer.subscribe(&[&topic])?;
            while !done.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let now = Instant::now();
                    let seq = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "seq")
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).parse::<u64>().unwrap_or(0)))
                    });
                    if let Some(seq) = seq {
                        if let Some(t) = acked.lock().unwrap().get(&seq) {
                            let lag = now.duration_since(*t).as_micros() as u64;
                            if seen.lock().unwrap().insert(seq, lag).is_some() {
                                duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await; // let the consumer join and reach the end
    let interval = Duration::from_secs_f64(1.0 / args.lag_rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + Duration::from_secs(args.lag_seconds);
    let mut n = 10_000_000_000u64;
    let mut inflight = tokio::task::JoinSet::new();
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let (ledger, bindings, acked) = (f.ledger.clone(), bindings.clone(), acked.clone());
        inflight.spawn(async move {
            let b = &bindings.get((n % bindings.len() as u64) as usize);
            if let Ok(r) = ledger
                .pay(pay_request(b, n).validate(&b.0, Utc::now()).expect("valid"))
                .await
            {
                acked.lock().unwrap().insert(r.event.seq, Instant::now());
            }
        });
        while inflight.len() > 10_000 {
            inflight.join_next().await;
        }
    }
    while inflight.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(3)).await;
    consumer_done.store(true, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the lag reader panicked"))??;
    let mut lags: Vec<u64> = seen.lock().unwrap().values().copied().collect();
    lags.sort_unstable();
    let sent = acked.lock().unwrap().len() as u64;
    let lag = Row {
        name: format!(
            "lag: command acknowledged -> read from the topic, at {}/s",
            args.lag_rate
        ),
        ops: sent,
        seconds: args.lag_seconds as f64,
        p50_us: percentile(&lags, 0.5),
        p99_us: percentile(&lags, 0.99),
        note: format!(
            "{} of {} read back; {} redelivered to the consumer group (the topic holds each once)",
            lags.len(),
            sent,
            duplicates.load(Ordering::Relaxed)
        ),
    };
    let _ = stop.send(true);
    let _ = task.await;
    // Exactly once: read the whole topic back, without a consumer group.
    let log_len = f.ledger.log_len();
    let (messages, distinct) =
        tokio::task::block_in_place(|| read_to_end(&args.brokers, &relay_topic)).map(|r| (r.messages, r.distinct))?;
    f.node.stop().await;
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("bench-kafka: the relay's topic holds {messages} messages, {distinct} distinct seqs; the log holds {log_len} events");
    anyhow::ensure!(
        messages == distinct && distinct == log_len,
        "the topic does not hold every event exactly once"
    );

    println!("| measurement | events | seconds | events/s | p50 | p99 | vs raw producer | notes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in [&raw, &raw_headers, &drain, &drain_all] {
        println!(
            "| {} | {} | {:.2} | {:.0} | - | - | {:.2} | {} |",
            r.name,
            r.ops,
            r.seconds,
            r.rate(),
            r.rate() / raw.rate(),
            r.note
        );
    }
    println!(
        "| {} | {} | {:.0} | {:.0} | {} | {} | - | {} |",
        lag.name,
        lag.ops,
        lag.seconds,
        lag.rate(),
        fmt_us(lag.p50_us),
        fmt_us(lag.p99_us),
        lag.note
    );

    // 4. Local against replicated durability: the same payments through the library, with the
    // relay publishing in both; replicated answers only once the cluster holds the event.
    let mut modes = Vec::new();
    use bindledger::config::Durability;
    for (mode, linger_ms) in [
        (Durability::Local, 5),
        (Durability::Replicated, 5),
        (Durability::Replicated, 0),
    ] {
        eprintln!(
            "bench-kafka: {mode:?} durability, linger.ms {linger_ms}, {} payments ...",
            args.mode_commands
        );
        let topic = fresh_topic("mode");
        let dir = root.join(format!("mode-{mode:?}-{linger_ms}"));
        let f = fixture_with(&dir, 200, |c| {
            c.kafka = kafka(&topic);
            c.kafka.alerts_topic = fresh_topic("mode-alerts");
            c.checkpoints.enabled = false;
            c.durability = mode;
            c.kafka.linger_ms = Some(linger_ms);
        })
        .await?;
        let bindings = Arc::new(f.bindings);
        let ledger = f.ledger.clone();
        let (mut lat, seconds) = drive(
            512,
            args.mode_commands,
            || (),
            move |(), n| {
                let (ledger, bindings) = (ledger.clone(), bindings.clone());
                async move {
                    let b = &bindings.get((n % bindings.len() as u64) as usize);
                    let result = ledger
                        .pay(pay_request(b, n).validate(&b.0, Utc::now()).expect("valid"))
                        .await;
                    ((), result.map(|_| ()).map_err(anyhow::Error::from))
                }
            },
        )
        .await?;
        lat.sort_unstable();
        f.node.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        modes.push(Row {
            name: format!("library: Ledger::pay, {mode:?} durability, linger.ms {linger_ms}"),
            ops: args.mode_commands,
            seconds,
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            note: "512 submitters, the relay publishing".into(),
        });
    }
    println!();
    println!("| measurement | commands | seconds | commands/s | p50 | p99 | vs local |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &modes {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {:.2} |",
            r.name,
            r.ops,
            r.seconds,
            r.rate(),
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            r.rate() / modes[0].rate()
        );
    }

    // 5. Replicas: reading the relay's topic (all `log_len` events) with a raw consumer, with a
    // restore and with a replica catching up; then a replica's lag behind a primary under load,
    // and a promotion.
    eprintln!("bench-kafka: reading the topic: raw consumer, restore, replica catch-up ...");
    let TopicRead {
        messages: raw_read_n,
        seconds: raw_read_s,
        ..
    } = tokio::task::block_in_place(|| read_to_end(&args.brokers, &relay_topic))?;
    anyhow::ensure!(raw_read_n == log_len, "the raw consumer read {raw_read_n} of {log_len}");
    let restore_dir = root.join("restored");
    let restored_at = Instant::now();
    let report = tokio::task::block_in_place(|| {
        bindledger::adapters::kafka::restore::restore(
            &kafka(&relay_topic),
            None,
            None,
            &restore_dir,
            &LedgerSecret::from_bytes([7; 32]),
            |_| {},
        )
    })?;
    // A restore knows the topic has ended once every partition has been quiet for
    // `KAFKA_QUIET` past its high watermark: that wait is reported apart.
    let restore_total_s = restored_at.elapsed().as_secs_f64();
    let restore_s = restore_total_s - bindledger::adapters::kafka::reader::KAFKA_QUIET.as_secs_f64();
    anyhow::ensure!(report.head_seq == log_len, "restored {} of {log_len}", report.head_seq);
    let _ = std::fs::remove_dir_all(&restore_dir);
    let catch_up_topic = relay_topic.clone();
    let replica_dir = root.join("replica");
    let r = fixture_replica(&replica_dir, kafka(&catch_up_topic)).await?;
    let caught_at = Instant::now();
    while r.ledger.log_len() < log_len {
        anyhow::ensure!(
            caught_at.elapsed() < Duration::from_secs(900),
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let catch_up_s = caught_at.elapsed().as_secs_f64();
    r.stop().await;
    let _ = std::fs::remove_dir_all(&replica_dir);

    // A primary under paced load with a replica following its topic: the time from each
    // command's acknowledgement to the replica holding its event.
    eprintln!("bench-kafka: replica lag at {}/s, then a promotion ...", args.lag_rate);
    let topic = fresh_topic("replica-lag");
    let p = fixture_with(&root.join("primary"), 200, |c| {
        c.kafka = kafka(&topic);
        c.kafka.alerts_topic = fresh_topic("replica-lag-alerts");
        c.checkpoints.enabled = false;
    })
    .await?;
    let mut rk = kafka(&topic);
    rk.alerts_topic = fresh_topic("replica-lag-alerts-r");
    let r = fixture_replica(&root.join("replica-lag"), rk).await?;
    // The lag under load, not the replica's start (finding the topic, joining, the first
    // fetch): the load begins once the replica holds the primary's log so far.
    let caught_up_by = Instant::now() + Duration::from_secs(60);
    while r.ledger.log_len() < p.ledger.log_len() {
        anyhow::ensure!(Instant::now() < caught_up_by, "the replica did not catch up in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Default::default();
    let bindings = Arc::new(p.bindings.clone());
    let interval = Duration::from_secs_f64(1.0 / args.lag_rate.max(1) as f64);
    let total = args.lag_rate * args.lag_seconds;
    let mut inflight = tokio::task::JoinSet::new();
    let start = Instant::now();
    // On a thread of its own: a task could be delayed by the load's tasks, and count that as lag.
    let watcher = {
        let (replica, acked) = (r.ledger.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut lags = Vec::new();
            let mut waiting = std::collections::BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(args.lag_seconds + 30);
            while Instant::now() < deadline && lags.len() < total as usize {
                waiting.extend(std::mem::take(&mut *acked.lock().unwrap()));
                let have = replica.log_len();
                let now = Instant::now();
                while let Some(entry) = waiting.first_entry() {
                    if *entry.key() > have {
                        break;
                    }
                    lags.push(now.duration_since(entry.remove()).as_micros() as u64);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            lags
        })
    };
    for n in 0..total {
        let due = start + interval * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let (ledger, bindings, acked) = (p.ledger.clone(), bindings.clone(), acked.clone());
        inflight.spawn(async move {
            let b = &bindings.get((n % bindings.len() as u64) as usize);
            if let Ok(c) = ledger
                .pay(
                    pay_request(b, 10_000_000 + n)
                        .validate(&b.0, Utc::now())
                        .expect("valid"),
                )
                .await
            {
                acked.lock().unwrap().push((c.event.seq, Instant::now()));
            }
        });
    }
    while inflight.join_next().await.is_some() {}
    let mut lags =
        tokio::task::block_in_place(|| watcher.join()).map_err(|_| anyhow::anyhow!("the lag watcher panicked"))?;
    lags.sort_unstable();
    // Promotion of the caught-up replica, once the primary is stopped: to its first
    // acknowledged command.
    p.node.stop().await;
    let promoted_at = Instant::now();
    let promoter = r.extras.promoter.clone().expect("a replica");
    promoter.promote().await?;
    // The primary's binding: the replica holds the same accounts and bindings.
    let b = &bindings.get(0);
    r.ledger
        .pay(pay_request(b, 20_000_000).validate(&b.0, Utc::now()).expect("valid"))
        .await?;
    let failover_s = promoted_at.elapsed().as_secs_f64();
    r.stop().await;

    println!();
    println!("| measurement | events | seconds | events/s | vs raw consumer | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let raw_rate = log_len as f64 / raw_read_s;
    for (name, secs) in [
        ("raw rdkafka consumer, every partition from the start", raw_read_s),
        (
            "restore (bindledger restore): merge, check each link, write the log (without the 2 s end-of-topic wait)",
            restore_s,
        ),
        (
            "restore, with the 2 s wait that shows the topic has ended",
            restore_total_s,
        ),
        (
            "replica catch-up: follow, check each link, append, derive (read model, indexes, alerts)",
            catch_up_s,
        ),
    ] {
        println!(
            "| {name} | {log_len} | {secs:.2} | {:.0} | {:.2} | - | - |",
            log_len as f64 / secs,
            log_len as f64 / secs / raw_rate
        );
    }
    println!(
        "| replica lag: command acknowledged on the primary -> held by the replica, at {}/s | {} | {} | - | - | {} | {} |",
        args.lag_rate,
        lags.len(),
        args.lag_seconds,
        fmt_us(percentile(&lags, 0.5)),
        fmt_us(percentile(&lags, 0.99))
    );
    println!("| failover: promote a caught-up replica -> its first acknowledged command | 1 | {failover_s:.3} | - | - | - | - |");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// A replica of `kafka.topic` as `serve --replica` runs it (with the alert monitor).
async fn fixture_replica(dir: &Path, kafka: bindledger::config::KafkaConfig) -> anyhow::Result<bindledger::node::Node> {
    let mut config = bench_config(dir);
    config.kafka = kafka;
    config.checkpoints.enabled = false;
    config.replica.enabled = true;
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    Ok(bindledger::node::Node::start(
        &config,
        LedgerSecret::from_bytes([7; 32]),
        gateway,
    )?)
}

/// What a raw consumer read of a topic: messages, distinct `seq` headers, and the seconds to
/// the last message.
struct TopicRead {
    messages: u64,
    distinct: u64,
    seconds: f64,
}

/// Reads every partition of `topic` from the start until it is quiet for 3 s, as a raw
/// consumer would (no merge, nothing written).
fn read_to_end(brokers: &str, topic: &str) -> anyhow::Result<TopicRead> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-read-{}", Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        // As the replica and restore fetch (see `relay::PartitionedConsumer`).
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut messages, mut last_at) = (0u64, started);
    let mut seqs = std::collections::HashSet::new();
    while last_at.elapsed() < Duration::from_secs(3) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            messages += 1;
            last_at = Instant::now();
            if let Some(seq) =
                bindledger::adapters::kafka::client::header_text(&m, "seq").and_then(|v| v.parse::<u64>().ok())
            {
                seqs.insert(seq);
            }
        }
    }
    Ok(TopicRead {
        messages,
        distinct: seqs.len() as u64,
        seconds: last_at.duration_since(started).as_secs_f64(),
    })
}

/// The account of canonical event bytes.
fn account_of(bytes: &[u8]) -> &str {
    let marker = b",\"account\":\"";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .map_or(0, |p| p + marker.len());
    let len = bytes[at..].iter().position(|b| *b == b'"').unwrap_or(0);
    std::str::from_utf8(&bytes[at..at + len]).unwrap_or("")
}

/// Sends every payload with its key and partition (and, if asked, the relay's headers, made
/// before the clock starts); returns the seconds until all are acknowledged.
async fn raw_produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    payloads: &[(u64, Vec<u8>)],
    partitions: i32,
    with_headers: bool,
) -> anyhow::Result<f64> {
    use rdkafka::producer::FutureRecord;
    // The relay's headers, made before the clock starts.
    let mut headers: Vec<Option<rdkafka::message::OwnedHeaders>> = payloads
        .iter()
        .map(|(seq, b)| {
            with_headers.then(|| {
                let e = bindledger_events::decode(b).expect("own events decode");
                bindledger::adapters::kafka::client::event_headers(
                    e.event_type(),
                    &bindledger_events::SCHEMA_VERSION.to_string(),
                    &e.id.to_string(),
                    &seq.to_string(),
                    &hash_bytes(b).to_hex(),
                    "0",
                )
            })
        })
        .collect();
    let started = Instant::now();
    for (chunk, chunk_headers) in payloads.chunks(20_000).zip(headers.chunks_mut(20_000)) {
        let mut pending = Vec::with_capacity(chunk.len());
        for ((_, bytes), h) in chunk.iter().zip(chunk_headers.iter_mut()) {
            let key = account_of(bytes);
            let mut record = FutureRecord::to(topic)
                .partition(bindledger::adapters::kafka::partition::partition_for(
                    key.as_bytes(),
                    partitions,
                ))
                .key(key)
                .payload(&bytes[..]);
            if let Some(h) = h.take() {
                record = record.headers(h);
            }
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for p in pending {
            p.await?.map_err(|(e, _)| e)?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

#[derive(clap::Args, Debug, Clone)]
pub struct IdempotencyBenchArgs {
    /// Keyed payments written before the measurement: each leaves an idempotency key and a
    /// paid order in the indexes (so twice as many live entries).
    #[arg(long, default_value_t = 2_000_000)]
    pub live_keys: u64,
    /// Keyed payments in each measured round.
    #[arg(long, default_value_t = 100_000)]
    pub commands: u64,
    /// Measured rounds, alternating between the two indexes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Accounts the payments are spread over.
    #[arg(long, default_value_t = 2000)]
    pub accounts: usize,
    /// Where to put the logs (default: a new directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The library path with the on-disk idempotency and paid-order indexes against the in-memory
/// index (`idempotency.index = "memory"`, holding every key), both with millions of live keys:
/// commands/s and latency in alternating rounds, and the resident memory each fill added.
pub async fn idempotency(args: IdempotencyBenchArgs) -> anyhow::Result<()> {
    use bindledger::ledger::idempotency::IndexKind;
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bindledger-bench-idem-{}", std::process::id())));
    std::fs::create_dir_all(&root)?;
    let capacity = args.live_keys + args.commands * args.rounds + 10_000;
    let mut fixtures = Vec::new();
    let mut fills = Vec::new();
    // The disk index first: what it adds to resident memory is measured before the memory
    // index's map exists.
    for kind in [IndexKind::Disk, IndexKind::Memory] {
        let name = match kind {
            IndexKind::Disk => "disk",
            IndexKind::Memory => "memory",
        };
        let f = fixture_with(&root.join(name), args.accounts, |c| {
            c.idempotency.index = kind;
            c.idempotency.memory_keys = capacity;
        })
        .await?;
        let bindings = Arc::new(f.bindings.clone());
        let before = bindledger_fixture::resident_bytes();
        eprintln!("bench: {name} index, writing {} keyed payments ...", args.live_keys);
        let (_, seconds) = pay_range(&f.ledger, &bindings, 0, args.live_keys, args.concurrency, None).await?;
        // Let the indexer write what it gathered.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (in_memory, on_disk, table_bytes) = f.ledger.key_index_stats();
        fills.push((
            name,
            args.live_keys as f64 / seconds,
            bindledger_fixture::resident_bytes().saturating_sub(before),
            in_memory,
            on_disk,
            table_bytes,
        ));
        fixtures.push((name, f, bindings));
    }
    let mut rows: Vec<(Vec<u64>, f64, u64)> = vec![(Vec::new(), 0.0, 0); 2];
    for r in 0..args.rounds {
        for (i, (name, f, bindings)) in fixtures.iter().enumerate() {
            eprintln!("bench: round {} of {}, {name} index ...", r + 1, args.rounds);
            let first = args.live_keys + r * args.commands;
            let (lat, seconds) = pay_range(&f.ledger, bindings, first, args.commands, args.concurrency, None).await?;
            rows[i].0.extend(lat);
            rows[i].1 += seconds;
            rows[i].2 += args.commands;
        }
    }
    println!(
        "| index | live keys and orders | fill commands/s | resident memory added by the fill | entries in memory | entries on disk | tables on disk | measured commands/s | p50 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rates = Vec::new();
    for (i, (name, fill_rate, rss, in_memory, on_disk, bytes)) in fills.iter().enumerate() {
        let (lat, seconds, ops) = &mut rows[i];
        lat.sort_unstable();
        let rate = *ops as f64 / *seconds;
        rates.push(rate);
        println!(
            "| {name} | {} | {fill_rate:.0} | {:.0} MiB | {in_memory} | {on_disk} | {:.0} MiB | {rate:.0} | {} | {} |",
            2 * args.live_keys,
            *rss as f64 / (1 << 20) as f64,
            *bytes as f64 / (1 << 20) as f64,
            fmt_us(percentile(lat, 0.5)),
            fmt_us(percentile(lat, 0.99)),
        );
    }
    println!();
    println!(
        "On-disk index / in-memory index: {:.2} of the commands/s ({} rounds of {} keyed payments each, {} submitters).",
        rates[0] / rates[1],
        args.rounds,
        args.commands,
        args.concurrency
    );
    for (_, f, _) in fixtures {
        f.node.stop().await;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// Keyed payments `first..first + count`, each of its own order.
async fn pay_range(
    ledger: &Ledger,
    bindings: &Arc<Bound>,
    first: u64,
    count: u64,
    concurrency: usize,
    zipf: Option<f64>,
) -> anyhow::Result<(Vec<u64>, f64)> {
    let (ledger, bindings) = (ledger.clone(), bindings.clone());
    drive(
        concurrency,
        count,
        || (),
        move |(), n| {
            let (ledger, bindings) = (ledger.clone(), bindings.clone());
            async move {
                let n = first + n;
                let b = &bindings.get(account_for(n, bindings.len(), zipf));
                let cmd = pay_request(b, n).validate(&b.0, Utc::now()).expect("valid");
                let result = ledger.pay(cmd).await.and_then(|r| match &r.event.payload {
                    Payload::PaymentSucceeded { .. } => Ok(()),
                    _ => Err(bindledger::error::Error::corrupt("a bench payment did not succeed")),
                });
                ((), result.map_err(anyhow::Error::from))
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::account_for;

    #[test]
    fn accounts_in_turn_or_from_a_zipf_distribution() {
        assert_eq!(
            (0..7).map(|n| account_for(n, 3, None)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0]
        );
        let len = 10_000;
        let mut hits = vec![0u32; len];
        for n in 0..200_000 {
            let a = account_for(n, len, Some(1.0));
            assert_eq!(a, account_for(n, len, Some(1.0)), "the same n, the same account");
            hits[a] += 1;
        }
        // With exponent 1 over 10,000 accounts (the continuous distribution: account k takes
        // ln((k + 2)/(k + 1)) / ln(10,001)), the first takes about 7.5% of the commands, the
        // first 1% of accounts about half, the last half about 7.5%.
        let share = |r: std::ops::Range<usize>| hits[r].iter().sum::<u32>() as f64 / 200_000.0;
        assert!((0.065..0.085).contains(&share(0..1)), "{}", share(0..1));
        assert!((0.4..0.6).contains(&share(0..100)), "{}", share(0..100));
        assert!((0.04..0.11).contains(&share(5_000..len)), "{}", share(5_000..len));
        // A steeper exponent, hotter first accounts; every draw in range.
        let steep = (0..10_000).filter(|n| account_for(*n, len, Some(2.0)) == 0).count();
        assert!(steep > 4_000, "{steep}");
        assert!((0..10_000).all(|n| account_for(n, 5, Some(0.5)) < 5));
    }
}
