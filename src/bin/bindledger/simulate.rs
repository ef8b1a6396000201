//! `bindledger simulate`: a deterministic simulation of the ledger core from a seed.
//!
//! The real ledger (writer, flusher, indexer, idempotency index, alert monitor with its locks,
//! sled files on disk, its caches of accounts and of rule windows kept at two entries so that
//! both are let go and read back all along) runs behind its seams
//! ([`bindledger::ledger::Seams`]): a manual clock
//! the simulator moves, event ids from the seed, and storage failures it injects. The
//! simulated wallet provider comes from the same seed (frozen, closed and unknown wallets,
//! network errors, maintenance windows). Commands go one at a time, and the simulator waits
//! for the monitor (and the locks it sends) to settle after each, so that the whole run, log
//! bytes included, is a function of the seed: a failing seed replays exactly.
//!
//! The workload: binds (wallets shared between accounts), payments with right and wrong
//! passwords (brute-force attackers, so alerts and locks happen), unbinds, retries with the
//! same idempotency key, stale `expected_version` races, the clock moving (windows and locks
//! expire), reopens, and write or flush failures followed by a reopen. After every step and
//! every reopen the simulator checks, against its own model:
//! - every acknowledged command is in the log once, at its `seq`, with the hash it was told;
//! - a retry gets the original event; a refused command changed nothing;
//! - the hash chain verifies, and each idempotency key is in the log at most once;
//! - the projection equals a fold of the whole log;
//! - the alerts rebuilt from the log equal those the monitor stored (the offline verify, at
//!   each reopen), and no binding is locked twice for one alert;
//! - after a storage failure nothing more is acknowledged, the ledger reports itself
//!   unhealthy, and a reopen brings back everything acknowledged.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bindledger::adapters::provider::{MaintenanceWindow, Scenario, SimulatedGateway};
use bindledger::config::Config;
use bindledger::domain::alerts::RuleSet;
use bindledger::domain::command::{BindRequest, CommonInput, PayRequest, UnbindRequest};
use bindledger::domain::projection::Projection;
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::ledger::alerts::{Monitor, MonitorConfig};
use bindledger::ledger::clock::Clock;
use bindledger::ledger::clock::ManualClock;
use bindledger::ledger::store::StorageFaults;
#[cfg(feature = "simulation")]
use bindledger::ledger::PlantedBug;
use bindledger::ledger::{CommandResult as Committed, Ledger, Seams};

/// Without the feature `simulation` no bug can be planted: the type has no value.
#[cfg(not(feature = "simulation"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlantedBug {}
use bindledger_events::{ChainVerifier, Hash, Payload, Provider};
use bindledger_fixture::Rng;
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many seeds to run, from --seed on.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Simulated steps per seed.
    #[arg(long, default_value_t = 400)]
    pub steps: u64,
    /// Plant a known bug, to see the simulator find it: refold-on-open (the last event folded
    /// again on open), ack-before-flush (a batch answered though its flush failed) or
    /// no-gateway-timeout (the ledger waits for a wallet provider however long it takes).
    /// Only in a build with the feature `simulation` (`make simulate` and `make test` build so).
    #[cfg(feature = "simulation")]
    #[arg(long, value_parser = ["refold-on-open", "ack-before-flush", "no-gateway-timeout"])]
    pub plant: Option<String>,
    /// Where the runs' data directories go (each is removed once its seed passes). Default: a
    /// folder in /dev/shm (memory) where it can be written, else in the temporary directory.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the data directories of seeds that pass (to compare two runs of one seed).
    #[arg(long)]
    pub keep: bool,
}

/// What one seed covered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Covered {
    pub commands: u64,
    pub events: u64,
    pub retries: u64,
    pub races: u64,
    pub reopens: u64,
    pub storage_faults: u64,
    /// Reopens after a crash that lost what was not flushed, and the events it lost (written,
    /// never flushed, never acknowledged).
    pub crashes: u64,
    pub lost: u64,
    pub alerts: u64,
    pub locks: u64,
    /// Commands whose wallet provider call the ledger gave up on (its timeout, simulated time).
    pub timeouts: u64,
    pub head: String,
}

pub async fn run(args: SimulateArgs) -> Result<bool> {
    #[cfg(feature = "simulation")]
    let plant = match args.plant.as_deref() {
        None => None,
        Some("refold-on-open") => Some(PlantedBug::RefoldLastEventOnOpen),
        Some("ack-before-flush") => Some(PlantedBug::AckBeforeFlush),
        Some("no-gateway-timeout") => Some(PlantedBug::NoGatewayTimeout),
        Some(_) => unreachable!("clap allows only the values above"),
    };
    #[cfg(not(feature = "simulation"))]
    let plant: Option<PlantedBug> = None;
    let root = args.dir.clone().unwrap_or_else(|| {
        // In memory where the machine has a tmpfs for it: the store is the real one (sled),
        // and nothing the simulation writes touches a disk.
        let name = format!("bindledger-simulate-{}", std::process::id());
        let shm = std::path::Path::new("/dev/shm").join(&name);
        match std::fs::create_dir_all(&shm) {
            Ok(()) => shm,
            Err(_) => std::env::temp_dir().join(name),
        }
    });
    // The runs' folder goes when this function ends, however it ends (a panic too), unless
    // asked to keep it or a seed failed (its data is then what replays it).
    let mut cleanup = RemoveOnDrop {
        root: root.clone(),
        keep: args.keep,
        ours: args.dir.is_none(),
    };
    let started = Instant::now();
    let mut total = Covered::default();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let dir = root.join(format!("seed-{seed}"));
        let _ = std::fs::remove_dir_all(&dir);
        match simulate(seed, args.steps, plant, &dir).await {
            Ok(c) => {
                if !args.keep {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                let shown = say(format_args!(
                    "seed {seed}: ok: {} commands, {} events, {} retries, {} races, {} provider timeouts, {} reopens, {} storage faults, {} crashes, {} alert changes, {} locks; head {}",
                    c.commands,
                    c.events,
                    c.retries,
                    c.races,
                    c.timeouts,
                    c.reopens,
                    c.storage_faults,
                    c.crashes,
                    c.alerts,
                    c.locks,
                    &c.head[..16]
                ));
                if !shown {
                    // The reader went away (`| head -1`): stop quietly, as `head` expects.
                    return Ok(true);
                }
                total.commands += c.commands;
                total.events += c.events;
                total.retries += c.retries;
                total.races += c.races;
                total.timeouts += c.timeouts;
                total.reopens += c.reopens;
                total.storage_faults += c.storage_faults;
                total.crashes += c.crashes;
                total.lost += c.lost;
                total.alerts += c.alerts;
                total.locks += c.locks;
            }
            Err(e) => {
                cleanup.keep = true;
                #[cfg(feature = "simulation")]
                let plant = args.plant.as_deref().map(|p| format!(" PLANT={p}")).unwrap_or_default();
                #[cfg(not(feature = "simulation"))]
                let plant = "";
                let text = format!(
                    "seed {seed}: FAILED: {e:#}\nreplay it: make simulate SEED={seed} STEPS={}{plant} (its data stays in {})",
                    args.steps,
                    dir.display()
                );
                if !say(format_args!("{text}")) {
                    eprintln!("{text}"); // a failure is never lost with a closed pipe
                }
                return Ok(false);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    say(format_args!(
        "{} seeds passed: {} commands ({:.0}/s), {} provider timeouts, {} reopens, {} storage faults, {} crashes ({} unacknowledged events lost), {} alert changes, {} locks, in {:.1} s",
        args.seeds,
        total.commands,
        total.commands as f64 / secs.max(1e-9),
        total.timeouts,
        total.reopens,
        total.storage_faults,
        total.crashes,
        total.lost,
        total.alerts,
        total.locks,
        secs
    ));
    Ok(true)
}

/// One line on standard output; false when it cannot be written (a closed pipe).
fn say(line: std::fmt::Arguments) -> bool {
    use std::io::Write;
    writeln!(std::io::stdout(), "{line}").is_ok()
}

/// The runs' folder, removed when the run ends: all of it when this run made it, else only if
/// it is empty (a `--dir` given may hold other things).
struct RemoveOnDrop {
    root: std::path::PathBuf,
    keep: bool,
    ours: bool,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = if self.ours {
            std::fs::remove_dir_all(&self.root)
        } else {
            std::fs::remove_dir(&self.root)
        };
    }
}

/// What the simulator sent, to send it again.
#[derive(Clone)]
enum Sent {
    Bind {
        account: String,
        wallet: u64,
    },
    /// `wallet`: the binding's wallet, when the right password is sent.
    Pay {
        account: String,
        binding: String,
        order: String,
        amount: i64,
        wallet: Option<u64>,
    },
    Unbind {
        account: String,
        binding: String,
    },
}

/// The model: what was acknowledged, and what it knows of accounts.
#[derive(Default)]
struct Model {
    /// seq -> hash of every event acknowledged to the simulator.
    acked: BTreeMap<u64, Hash>,
    /// idempotency key -> (the command, its seq, when it was acknowledged).
    keys: HashMap<String, (Sent, u64, DateTime<Utc>)>,
    /// Keys whose outcome a storage failure hid: retried after the reopen.
    unknown: Vec<(String, Sent)>,
    /// Active bindings the simulator knows of: (account, binding id, wallet).
    bindings: Vec<(String, String, u64)>,
}

const ACCOUNTS: u64 = 24;
const WALLETS: u64 = 30;

struct Sim {
    seed: u64,
    dir: std::path::PathBuf,
    config: Config,
    rules: RuleSet,
    clock: Arc<ManualClock>,
    faults: Arc<StorageFaults>,
    gateway: Arc<SimulatedGateway>,
    plant: Option<PlantedBug>,
    ledger: Option<Ledger>,
    monitor: Option<Monitor>,
    rng: Rng,
    /// A copy of the directory as last flushed, and its log's length, to restore at the next
    /// reopen (a crash).
    lose_unflushed: Option<(std::path::PathBuf, u64)>,
    model: Model,
    covered: Covered,
    next_key: u64,
}

async fn simulate(seed: u64, steps: u64, plant: Option<PlantedBug>, dir: &std::path::Path) -> Result<Covered> {
    let start: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
    let mut rng = Rng(seed);
    // Outages from the seed: a maintenance window of each of two providers, in simulated time.
    let maintenance = ["alipay", "wechat_pay"]
        .iter()
        .map(|p| {
            let from = start + Duration::seconds((rng.next_u64() % 3600) as i64);
            MaintenanceWindow {
                provider: (*p).to_owned(),
                from,
                until: from + Duration::seconds(60 + (rng.next_u64() % 600) as i64),
            }
        })
        .collect();
    let scenario = Scenario {
        seed,
        frozen_per_mille: 20,
        closed_per_mille: 20,
        unknown_per_mille: 20,
        network_error_per_mille: 25,
        maintenance,
        // Every call takes some simulated time; a few hang past the ledger's timeout.
        latency_ms: 20,
        latency_jitter_ms: 800,
        slow_per_mille: 30,
        slow_ms: 8_000,
        ..Scenario::quiet(seed)
    };
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.writer.snapshot_every_events = 40;
    config.writer.sync_data = false; // a crash of the process, not of the machine, is simulated
    config.alerts.checkpoint_every_events = 30;
    // Caches far smaller than the accounts and wallets in play, so that accounts and rule
    // windows are let go and read back all along (answers and alerts must not change).
    config.memory.accounts_cached = 2;
    config.memory.alert_keys_cached = 2;
    config.idempotency.window = "2h".into();
    config.gateway.simulated = scenario.clone();
    let rules = RuleSet::from_toml("[password_brute_force]\nlock = true\nlock_for = \"20m\"\n", None)
        .map_err(|e| anyhow!("{e}"))?;
    let clock = Arc::new(ManualClock::new(start));
    let mut sim = Sim {
        seed,
        dir: dir.to_path_buf(),
        config,
        rules,
        clock: clock.clone(),
        faults: Arc::new(StorageFaults::default()),
        gateway: Arc::new(SimulatedGateway::new(scenario).with_clock(clock)),
        plant,
        ledger: None,
        monitor: None,
        rng,
        lose_unflushed: None,
        model: Model::default(),
        covered: Covered::default(),
        next_key: 0,
    };
    sim.open()?;
    for step in 0..steps {
        sim.step().await.with_context(|| format!("step {step}"))?;
        if step % 50 == 49 {
            sim.check_all()
                .with_context(|| format!("the checks after step {step}"))?;
        }
    }
    sim.reopen().await.context("the last reopen")?;
    let ledger = sim.ledger.take().expect("open");
    sim.covered.events = ledger.log_len();
    let head = ledger
        .event_bytes(ledger.log_len())?
        .map(|b| bindledger_events::hash_bytes(&b));
    sim.covered.head = head.map(|h| h.to_hex()).unwrap_or_default();
    close(ledger, sim.monitor.take());
    Ok(sim.covered)
}

fn close(ledger: Ledger, monitor: Option<Monitor>) {
    ledger.close();
    if let Some(m) = monitor {
        m.join();
    }
}

impl Sim {
    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("the ledger is open")
    }

    fn open(&mut self) -> Result<()> {
        let seams = Seams {
            clock: self.clock.clone(),
            ids_seed: Some(self.seed ^ self.covered.reopens.wrapping_mul(0x5851_F42D_4C95_7F2D)),
            faults: Some(self.faults.clone()),
            #[cfg(feature = "simulation")]
            planted_bug: self.plant,
        };
        #[cfg(not(feature = "simulation"))]
        let _ = self.plant;
        let ledger = Ledger::open_with_seams(
            &self.config,
            &self.rules,
            LedgerSecret::from_bytes([7; 32]),
            self.gateway.clone(),
            seams,
        )
        .context("opening the ledger")?;
        let mut mc = MonitorConfig::new(self.rules.clone());
        mc.checkpoint_every_events = self.config.alerts.checkpoint_every_events;
        mc.keys_cached = self.config.memory.alert_keys_cached;
        // The monitor looks at the (simulated) clock often, and the simulator waits for it to
        // have looked after every move of the clock: an expired lock is lifted at once.
        mc.tick = std::time::Duration::from_micros(100);
        mc.serial_actions = true;
        let monitor = Monitor::start(&ledger, mc, tokio::runtime::Handle::current())?;
        self.ledger = Some(ledger);
        self.monitor = Some(monitor);
        Ok(())
    }

    /// Closes (the monitor saves its checkpoint), verifies the directory offline (chain,
    /// stored projection rows, stored alerts against a rebuild), and opens again.
    async fn reopen(&mut self) -> Result<()> {
        let ledger = self.ledger.take().expect("open");
        let monitor = self.monitor.take();
        tokio::task::spawn_blocking(move || close(ledger, monitor)).await?;
        released(&self.dir).await?;
        self.faults.clear();
        let mut flushed = None;
        if let Some((copy, len)) = self.lose_unflushed.take() {
            // What the process wrote, flushed or not (sled flushes what it holds on close).
            let written = bindledger::ledger::store::Store::open(&self.dir)?
                .head()?
                .map_or(0, |(seq, _)| seq);
            // The crash: what was not flushed is gone.
            std::fs::remove_dir_all(&self.dir)?;
            std::fs::rename(&copy, &self.dir)?;
            self.covered.crashes += 1;
            self.covered.lost += written.saturating_sub(len);
            flushed = Some(len);
        }
        let report = bindledger::ledger::offline::verify(&self.dir, &self.rules)?;
        ensure!(
            report.ok(),
            "the offline verify after closing: chain {:?}, projection rows {:?}, alerts {:?}",
            report.chain_error,
            report.projection_differences,
            report.alerts_difference
        );
        self.covered.reopens += 1;
        self.open()?;
        if let Some(len) = flushed {
            ensure!(
                self.ledger().log_len() == len,
                "after the crash the log ends at {}, not at the last flush {len}",
                self.ledger().log_len()
            );
        }
        self.check_all().context("the checks after a reopen")?;
        // What a storage failure left unknown is retried: the same key, so exactly once.
        for (key, sent) in std::mem::take(&mut self.model.unknown) {
            let c = self
                .send(&key, &sent)
                .await?
                .context("a retry after a storage failure")?;
            self.record(&key, &sent, &c)?;
        }
        Ok(())
    }

    fn key(&mut self) -> String {
        self.next_key += 1;
        format!("sim-{}", self.next_key)
    }

    fn pick(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    /// Sends a command and runs it to its answer (see [`Sim::drive`]).
    async fn send(&self, key: &str, sent: &Sent) -> Result<bindledger::Result<Committed>> {
        self.drive(self.send_now(key, sent)).await
    }

    async fn send_now(&self, key: &str, sent: &Sent) -> bindledger::Result<Committed> {
        let l = self.ledger();
        let now = self.clock.now();
        let common = || CommonInput {
            idempotency_key: Some(key.to_owned()),
            ..CommonInput::default()
        };
        match sent {
            Sent::Bind { account, wallet } => {
                let phone = format!("139{wallet:08}");
                let provider = wallet_provider(*wallet);
                let req = BindRequest {
                    provider: provider.as_str().to_owned(),
                    payment_password: SecretString::new(self.gateway.password_for(&provider, &phone)),
                    wallet_account: SecretString::new(phone),
                    factor: None,
                    common: common(),
                };
                l.bind(req.validate(account, now)?).await
            }
            Sent::Pay {
                account,
                binding,
                order,
                amount,
                wallet,
            } => {
                let password = match wallet {
                    Some(w) => self.gateway.password_for(&wallet_provider(*w), &format!("139{w:08}")),
                    None => "000000".to_owned(),
                };
                let req = PayRequest {
                    binding_id: binding.clone(),
                    order_id: order.clone(),
                    amount_minor: *amount,
                    currency: None,
                    payment_password: SecretString::new(password),
                    factor: None,
                    common: common(),
                };
                l.pay(req.validate(account, now)?).await
            }
            Sent::Unbind { account, binding } => {
                let req = UnbindRequest {
                    confirm: true,
                    common: common(),
                };
                l.unbind(req.validate(account, binding, now)?).await
            }
        }
    }

    /// Notes an acknowledged answer in the model, checking it against the log.
    fn record(&mut self, key: &str, sent: &Sent, c: &Committed) -> Result<()> {
        let seq = c.event.seq;
        let stored = self
            .ledger()
            .event_bytes(seq)?
            .ok_or_else(|| anyhow!("acknowledged event {seq} is not in the log"))?;
        ensure!(
            bindledger_events::hash_bytes(&stored) == c.hash,
            "event {seq} is not the one acknowledged"
        );
        ensure!(
            c.event.idempotency_key.as_deref() == Some(key),
            "event {seq} answers another key"
        );
        if let Some(old) = self.model.acked.insert(seq, c.hash) {
            ensure!(old == c.hash, "seq {seq} acknowledged as two different events");
        }
        match self.model.keys.get(key) {
            Some((_, old_seq, _)) if c.replayed => ensure!(*old_seq == seq, "a retry of {key} got another event"),
            Some(_) => bail!("{key} was acknowledged twice as new"),
            None => {}
        }
        self.model
            .keys
            .entry(key.to_owned())
            .or_insert((sent.clone(), seq, self.clock.now()));
        match (&c.event.payload, sent) {
            (Payload::WalletBound { binding_id, .. }, Sent::Bind { account, wallet }) => {
                let id = binding_id.to_string();
                if !self.model.bindings.iter().any(|(_, b, _)| *b == id) {
                    self.model.bindings.push((account.clone(), id, *wallet));
                }
            }
            (Payload::WalletUnbound { binding_id, .. }, _) => {
                let id = binding_id.to_string();
                self.model.bindings.retain(|(_, b, _)| *b != id);
            }
            _ => {}
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<()> {
        let ms = self.pick(3000) as i64;
        self.advance(Duration::milliseconds(ms)).await?;
        let roll = self.pick(100);
        match roll {
            0..=1 => return self.storage_fault().await,
            2..=4 => return self.reopen().await,
            5..=9 => {
                let secs = 1 + self.pick(2 * 3600) as i64;
                self.advance(Duration::seconds(secs)).await?;
                return Ok(());
            }
            10..=19 => return self.retry().await,
            20..=24 => return self.race().await,
            25..=28 => return self.brute_force().await,
            _ => {}
        }
        let sent = self.next_command();
        self.command(sent).await
    }

    /// Sends a new command (a new key) and checks its answer: a new event, recorded in the
    /// model, or a refusal that changed nothing; then lets the monitor settle.
    async fn command(&mut self, sent: Sent) -> Result<()> {
        let key = self.key();
        let before = self.ledger().log_len();
        self.covered.commands += 1;
        let (calls, abandoned) = (self.gateway.calls_made(), self.gateway.abandoned_calls());
        match self.send(&key, &sent).await? {
            Ok(c) => {
                ensure!(!c.replayed, "a new key was answered as a retry");
                ensure!(c.event.seq > before, "a new command's event {} is not new", c.event.seq);
                // A provider call slower than the ledger's timeout is given up, and only such a one.
                let timeout = std::time::Duration::from_millis(self.config.gateway.timeout_ms);
                let slow = self.gateway.calls_made() > calls && self.gateway.last_latency() > timeout;
                let given_up = self.gateway.abandoned_calls() > abandoned;
                ensure!(
                    slow == given_up,
                    "a provider call of {:?} against the ledger's timeout of {timeout:?} was {} (event {}, {}): a call that outlasted the ledger's timeout must be given up, and only such a call",
                    self.gateway.last_latency(),
                    if given_up { "given up" } else { "waited for" },
                    c.event.seq,
                    c.event.payload.event_type()
                );
                if given_up {
                    // The provider did not answer within the ledger's timeout: a network failure.
                    self.covered.timeouts += 1;
                    ensure!(
                        c.event.payload.failure_code() == Some("network"),
                        "a command whose provider call timed out ended as event {} ({}), not a network failure",
                        c.event.seq,
                        c.event.payload.event_type()
                    );
                }
                self.record(&key, &sent, &c)?;
            }
            Err(e) if e.code() == "storage_failed" || e.code() == "outcome_unknown" => {
                bail!("a storage failure without one injected: {e}")
            }
            Err(_) => {
                // Refused before the log (validation, a binding limit, a paid order...):
                // nothing changed.
                self.settle().await?;
                ensure!(self.ledger().log_len() == before, "a refused command changed the log");
            }
        }
        self.settle().await
    }

    fn next_command(&mut self) -> Sent {
        let account = format!("acct-{}", self.pick(ACCOUNTS));
        let roll = self.pick(100);
        let bound: Vec<(String, String, u64)> = self.model.bindings.clone();
        if roll < 30 || bound.is_empty() {
            // Wallets are shared between accounts now and then: rings for shared_wallet.
            return Sent::Bind {
                account,
                wallet: self.pick(WALLETS),
            };
        }
        let (account, binding, wallet) = bound[self.pick(bound.len() as u64) as usize].clone();
        if roll < 38 {
            return Sent::Unbind { account, binding };
        }
        // Attackers: the first three accounts guess passwords.
        let attacker = account.ends_with("-0") || account.ends_with("-1") || account.ends_with("-2");
        let right = !attacker && self.pick(10) != 0;
        let order = format!("o-{}", self.pick(1_000_000));
        let large = self.pick(20) == 0;
        let amount = 1 + self.pick(if large { 2_000_000 } else { 20_000 }) as i64;
        Sent::Pay {
            account,
            binding,
            order,
            amount,
            wallet: right.then_some(wallet),
        }
    }

    /// The same command with the same key: the original event, never a second one.
    async fn retry(&mut self) -> Result<()> {
        let window = Duration::hours(2);
        let now = self.clock.now();
        let mut live: Vec<(String, Sent, u64)> = self
            .model
            .keys
            .iter()
            .filter(|(_, (_, _, at))| now - *at < window - Duration::seconds(5))
            .map(|(k, (sent, seq, _))| (k.clone(), sent.clone(), *seq))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        live.sort_by(|a, b| a.0.cmp(&b.0));
        let (key, sent, seq) = live[self.pick(live.len() as u64) as usize].clone();
        let before = self.ledger().log_len();
        self.covered.retries += 1;
        let c = self
            .send(&key, &sent)
            .await?
            .with_context(|| format!("retrying {key}"))?;
        ensure!(
            c.replayed && c.event.seq == seq,
            "a retry of {key} got event {} (replayed {}), not {seq}",
            c.event.seq,
            c.replayed
        );
        self.settle().await?;
        ensure!(self.ledger().log_len() == before, "a retry changed the log");
        Ok(())
    }

    /// An attacker tries wrong payment passwords on one binding, six times in a row: an alert,
    /// a lock (and the seventh finds it locked).
    async fn brute_force(&mut self) -> Result<()> {
        if self.model.bindings.is_empty() {
            return Ok(());
        }
        let at = self.pick(self.model.bindings.len() as u64) as usize;
        let (account, binding, _) = self.model.bindings[at].clone();
        for _ in 0..6 {
            let sent = Sent::Pay {
                account: account.clone(),
                binding: binding.clone(),
                order: format!("o-{}", self.pick(1_000_000)),
                amount: 100,
                wallet: None,
            };
            self.command(sent).await?;
            let ms = self.pick(2000) as i64;
            self.advance(Duration::milliseconds(ms)).await?;
        }
        Ok(())
    }

    /// A command with a stale `expected_version`: refused, nothing changes.
    async fn race(&mut self) -> Result<()> {
        let account = format!("acct-{}", self.pick(ACCOUNTS));
        let Some(version) = self.ledger().account(&account)?.map(|a| a.version).filter(|v| *v > 0) else {
            return Ok(());
        };
        self.covered.races += 1;
        let before = self.ledger().log_len();
        let key = self.key();
        let req = UnbindRequest {
            confirm: true,
            common: CommonInput {
                idempotency_key: Some(key),
                expected_version: Some(version - 1),
                ..CommonInput::default()
            },
        };
        let binding = "01932c07-a000-7000-8000-000000000001";
        let cmd = req.validate(&account, binding, self.clock.now())?;
        match self.ledger().unbind(cmd).await {
            Err(e) if e.code() == "version_conflict" => {}
            other => bail!("a stale expected_version was answered {other:?}"),
        }
        self.settle().await?;
        ensure!(self.ledger().log_len() == before, "a refused race changed the log");
        Ok(())
    }

    /// A write or a flush fails: that command and every later one are refused, the ledger
    /// says it is unhealthy; a reopen brings back everything acknowledged.
    ///
    /// A failed flush is followed by a crash that loses what was not flushed: the directory
    /// as it stood at the last flush (copied then, everything acknowledged being flushed and
    /// the monitor settled) replaces the one the process left.
    async fn storage_fault(&mut self) -> Result<()> {
        self.covered.storage_faults += 1;
        let mut crash_copy = None;
        if self.pick(2) == 0 {
            self.faults.fail_write_in(1);
        } else {
            self.ledger().flush()?;
            let copy = self.dir.with_extension("flushed");
            let _ = std::fs::remove_dir_all(&copy);
            copy_dir(&self.dir, &copy).context("copying the flushed directory")?;
            crash_copy = Some((copy, self.ledger().log_len()));
            self.faults.fail_flush_in(1);
        }
        for _ in 0..2 {
            let sent = self.next_command();
            let key = self.key();
            match self.send(&key, &sent).await? {
                Ok(c) => bail!("event {} was acknowledged after a storage failure", c.event.seq),
                Err(e) if matches!(e.code(), "storage_failed" | "outcome_unknown" | "shutting_down") => {
                    self.model.unknown.push((key, sent));
                }
                // Refused before it reached the writer (a validation or a pre-check).
                Err(_) => {}
            }
        }
        if self.ledger().is_healthy() && !self.model.unknown.is_empty() {
            bail!("the ledger says it is healthy after a storage failure");
        }
        self.lose_unflushed = crash_copy;
        self.reopen().await
    }

    /// Runs a command to its answer. While it waits on simulated time (a wallet provider's
    /// latency, the ledger's timeout on it), the clock is moved to the earliest deadline and
    /// the monitor allowed to look before the command goes on: the order of everything the
    /// ledger writes stays a function of the seed.
    async fn drive<T>(&self, command: impl std::future::Future<Output = T>) -> Result<T> {
        tokio::pin!(command);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            tokio::select! {
                biased;
                answer = &mut command => return Ok(answer),
                () = std::future::ready(()) => {}
            }
            if let Some(at) = self.clock.next_deadline() {
                self.clock.advance_to(at);
                self.looked().await?;
                continue;
            }
            // Waiting on the writer (real threads): let real time pass.
            tokio::select! {
                biased;
                answer = &mut command => return Ok(answer),
                () = tokio::time::sleep(std::time::Duration::from_micros(50)) => {}
            }
            ensure!(Instant::now() < deadline, "a command did not end in 30 s");
        }
    }

    /// Moves the clock, then waits for the monitor to have looked at it (lifting the locks that
    /// ran out) and settled.
    async fn advance(&self, by: Duration) -> Result<()> {
        self.clock.advance(by);
        self.looked().await
    }

    /// Waits for the monitor to have looked at the clock since it last moved, and settled.
    async fn looked(&self) -> Result<()> {
        self.looks_twice(Instant::now() + std::time::Duration::from_secs(30))
            .await
            .context("the monitor did not look at the clock")?;
        self.settle().await
    }

    /// Waits until the monitor has looked for actions twice more (so once wholly after now).
    async fn looks_twice(&self, deadline: Instant) -> Result<()> {
        let status = self.monitor.as_ref().expect("running").status();
        let passes = status.act_passes.load(Ordering::SeqCst);
        while status.act_passes.load(Ordering::SeqCst) < passes + 2 {
            ensure!(Instant::now() < deadline, "the monitor stopped looking");
            tokio::time::sleep(std::time::Duration::from_micros(50)).await;
        }
        Ok(())
    }

    /// Waits until the monitor has folded the whole log and the locks it sent are answered:
    /// the next command then lands at the same place on every run of this seed.
    async fn settle(&self) -> Result<()> {
        let status = self.monitor.as_ref().expect("running").status().clone();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let quiet = |len: u64| {
            status.acted.load(Ordering::SeqCst) == len
                && status.position.load(Ordering::SeqCst) == len
                && status.actions_in_flight.load(Ordering::SeqCst) == 0
        };
        loop {
            let len = self.ledger().log_len();
            if quiet(len) {
                // Quiet, and still quiet after the monitor has looked twice more (an action
                // answered just now is followed by the next one at its next look).
                self.looks_twice(deadline).await?;
                if quiet(len) && self.ledger().log_len() == len {
                    return Ok(());
                }
            }
            ensure!(Instant::now() < deadline, "the monitor did not settle: {:?}", status);
            tokio::time::sleep(std::time::Duration::from_micros(50)).await;
        }
    }

    /// The checks over the whole log: the chain, the acknowledged events, the keys, the
    /// projection against a fold, one lock per alert.
    fn check_all(&mut self) -> Result<()> {
        let l = self.ledger();
        let mut verifier = ChainVerifier::new();
        let mut fold = Projection::default();
        let mut keys: HashMap<String, u64> = HashMap::new();
        let mut locks: HashMap<String, (uuid::Uuid, chrono::DateTime<chrono::Utc>)> = HashMap::new();
        let mut alerts = 0;
        for r in l.raw_events(1) {
            let (seq, bytes) = r?;
            let (event, hash) = verifier.push(&bytes).map_err(|e| anyhow!("the chain breaks: {e}"))?;
            if let Some(h) = self.model.acked.get(&seq) {
                ensure!(*h == hash, "acknowledged event {seq} changed");
            }
            if let Some(k) = &event.idempotency_key {
                if let Some(first) = keys.insert(format!("{}/{k}", event.account), seq) {
                    bail!("the key {k} is in the log twice: events {first} and {seq}");
                }
            }
            // An alert locks a binding once at a time: again only once its previous lock ended
            // (it expired, or a person lifted it while the alert stayed open), as the README
            // documents.
            match &event.payload {
                Payload::BindingLocked {
                    alert_id,
                    binding_id,
                    until,
                } => {
                    if let Some((binding, prev_until)) = locks.get(alert_id) {
                        ensure!(
                            binding != binding_id || *prev_until <= event.record_time,
                            "alert {alert_id} locked a binding again while its lock was in force (event {seq})"
                        );
                    }
                    locks.insert(alert_id.clone(), (*binding_id, *until));
                }
                Payload::BindingUnlocked {
                    alert_id, binding_id, ..
                } if locks.get(alert_id).is_some_and(|(b, _)| b == binding_id) => {
                    locks.remove(alert_id);
                }
                _ => {}
            }
            fold.apply(&event);
        }
        if let Some((last, _)) = self.model.acked.last_key_value() {
            ensure!(
                *last <= fold.position,
                "acknowledged event {last} is past the log's end {}",
                fold.position
            );
        }
        for seq in self.model.acked.keys() {
            ensure!(*seq <= fold.position, "acknowledged event {seq} is lost");
        }
        let live = l.projection()?;
        ensure!(
            live.position == fold.position,
            "the projection is at {}, the log at {}",
            live.position,
            fold.position
        );
        if live.accounts != fold.accounts {
            let differs = fold
                .accounts
                .iter()
                .find(|(a, s)| live.accounts.get(*a) != Some(*s))
                .map(|(a, _)| a.clone())
                .or_else(|| live.accounts.keys().find(|a| !fold.accounts.contains_key(*a)).cloned());
            bail!("the projection differs from a fold of the log (account {differs:?})");
        }
        if let Some(m) = &self.monitor {
            alerts = m.status().stream_seq.load(Ordering::SeqCst);
        }
        self.covered.alerts = self.covered.alerts.max(alerts);
        self.covered.locks = locks.len() as u64;
        Ok(())
    }
}

/// The provider a simulated wallet belongs to.
fn wallet_provider(wallet: u64) -> Provider {
    Provider::parse(["alipay", "wechat_pay", "union_pay"][(wallet % 3) as usize]).expect("known")
}

/// Copies a directory tree (a data directory: files and folders only).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Waits until no handle of the closed ledger is left: a lock or unlock the monitor sent just
/// before a storage failure waits a second before it gives up its handle (and sled its lock).
async fn released(dir: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match bindledger::ledger::store::Store::open(dir) {
            Ok(_) => return Ok(()),
            Err(bindledger::Error::InUse(_)) if Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e).context("the closed ledger's directory"),
        }
    }
}
