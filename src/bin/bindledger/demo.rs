//! The demo workload: a simulated population of shoppers binding wallets, paying, unbinding
//! and failing in every way the domain knows, plus a few accounts that behave like attackers
//! (password brute force, one wallet shared by a ring of accounts, bind-then-drain, probing
//! with dead wallets, binding churn). Runs against the real ledger and serves the real HTTP
//! API meanwhile; prints a live summary each second and a report at the end.

use anyhow::Context;
use bindledger_events::{ChainVerifier, Factor, Payload, Provider};
pub use bindledger_fixture::Rng;
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use bindledger::adapters::provider::{MaintenanceWindow, SimulatedGateway, WalletStatus};
use bindledger::config::Config;
use bindledger::domain::command::{BindRequest, CommonInput, ContextInput, FactorInput, PayRequest, UnbindRequest};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::ledger::Ledger;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoOptions {
    /// Ordinary shoppers in the population. Each acts about once every `shoppers / rate`
    /// seconds; the rules' windows are real time (10 minutes to an hour), so a small population
    /// at a high rate makes every shopper look like an attacker.
    #[arg(long, default_value_t = 20_000)]
    pub shoppers: usize,
    /// How long to run, in seconds (0: until Ctrl-C).
    #[arg(long, default_value_t = 20)]
    pub duration_s: u64,
    /// Commands per second across the population.
    #[arg(long, default_value_t = 1500)]
    pub rate: u64,
    /// Seed of the population's choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Set when the listen address was given (flag or `BINDLEDGER_LISTEN`): then a busy
    /// address is an error; the default one, when busy, gives way to a free port.
    #[arg(skip)]
    pub listen_given: bool,
    /// Repeat the table's header every this many rows, as vmstat does (0: only at the start).
    #[arg(long, default_value_t = 20)]
    pub header_every: u64,
    /// Run a cluster of this many shards in this process (each a whole node with its own port,
    /// log, topics and alerts; the shard map on the broker, the population's commands sent to
    /// each account's shard). Needs a broker: `make demo-cluster` starts one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub shards: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Shopper,
    BruteForcer,
    Ring,
    Drainer,
    Prober,
    Churner,
}

struct Actor {
    account: String,
    role: Role,
    /// Wallets this person owns: provider and phone/account number.
    wallets: Vec<(Provider, String)>,
    active: Vec<(Uuid, usize)>,
    orders: u64,
    /// A shopper's usual basket, in minor units: payments vary around it (at most 3 times its
    /// half), so an ordinary shopper does not look like an amount spike.
    typical_minor: i64,
}

#[derive(Default)]
struct Tally {
    by_outcome: BTreeMap<String, u64>,
    spent_minor: i64,
    errors: BTreeMap<String, u64>,
}

fn common(key: Option<String>, rng: &mut Rng) -> CommonInput {
    let channel = ["app", "web", "mini_program"][rng.below(3) as usize];
    CommonInput {
        idempotency_key: key,
        context: Some(ContextInput {
            channel: Some(channel.to_owned()),
            device_id: Some(format!("dev-{:04x}", rng.below(4096))),
            ip: Some(format!(
                "10.{}.{}.{}",
                rng.below(256),
                rng.below(256),
                1 + rng.below(254)
            )),
            user_agent: None,
        }),
        ..CommonInput::default()
    }
}

struct World {
    /// One ledger, or each shard's, in the map's order.
    ledgers: Vec<Ledger>,
    map: Option<Arc<bindledger::domain::shard::ShardMap>>,
    gateway: Arc<SimulatedGateway>,
    tally: Mutex<Tally>,
}

impl World {
    /// The ledger that owns `account`: a client following the shard map.
    fn ledger_for(&self, account: &str) -> &Ledger {
        match &self.map {
            None => &self.ledgers[0],
            Some(map) => {
                let owner = map.owner(account);
                let i = map.shards.keys().position(|k| k == owner).expect("a shard of the map");
                &self.ledgers[i]
            }
        }
    }

    fn record(&self, r: bindledger::Result<bindledger::ledger::CommandResult>) {
        let mut t = self.tally.lock().expect("tally");
        match r {
            Ok(c) => {
                let key = match c.event.payload.failure_code() {
                    Some(code) => format!("{}:{}", c.event.event_type(), code),
                    None => c.event.event_type().to_owned(),
                };
                if let Payload::PaymentSucceeded { amount_minor, .. } = c.event.payload {
                    t.spent_minor += amount_minor;
                }
                *t.by_outcome.entry(key).or_default() += 1;
            }
            Err(e) => *t.errors.entry(e.code().to_owned()).or_default() += 1,
        }
    }

    async fn bind(&self, actor: &mut Actor, wallet: usize, rng: &mut Rng, wrong_password: bool, wrong_factor: bool) {
        let (provider, phone) = actor.wallets[wallet].clone();
        let mut password = self.gateway.password_for(&provider, &phone);
        if wrong_password {
            password = format!(
                "{:06}",
                (password.parse::<u64>().unwrap_or(0) + 1 + rng.below(999)) % 1_000_000
            );
        }
        let factor = if rng.chance(500) || wrong_factor {
            let kind = [Factor::Sms, Factor::Fingerprint, Factor::Face][rng.below(3) as usize];
            let mut code = self.gateway.factor_code_for(&provider, &phone, kind);
            if wrong_factor {
                code.push('x');
            }
            Some(FactorInput {
                kind: kind.as_str().to_owned(),
                code: SecretString::new(code),
            })
        } else {
            None
        };
        let req = BindRequest {
            provider: provider.as_str().to_owned(),
            wallet_account: SecretString::new(phone),
            payment_password: SecretString::new(password),
            factor,
            common: common(Some(format!("bind-{}", Uuid::now_v7())), rng),
        };
        let cmd = match req.validate(&actor.account, Utc::now()) {
            Ok(c) => c,
            Err(e) => return self.record(Err(e)),
        };
        let r = self.ledger_for(&actor.account).bind(cmd).await;
        if let Ok(c) = &r {
            if let Payload::WalletBound { binding_id, .. } = c.event.payload {
                actor.active.push((binding_id, wallet));
            }
        }
        self.record(r);
    }

    async fn pay(
        &self,
        actor: &mut Actor,
        binding: Uuid,
        wallet: usize,
        amount_minor: i64,
        rng: &mut Rng,
        wrong_password: bool,
    ) {
        let (provider, phone) = &actor.wallets[wallet];
        let mut password = self.gateway.password_for(provider, phone);
        if wrong_password {
            password.push('9');
        }
        actor.orders += 1;
        let req = PayRequest {
            binding_id: binding.to_string(),
            order_id: format!("{}-o{}", actor.account, actor.orders),
            amount_minor,
            currency: None,
            payment_password: SecretString::new(password),
            factor: None,
            common: common(Some(format!("pay-{}-{}", actor.account, actor.orders)), rng),
        };
        match req.validate(&actor.account, Utc::now()) {
            Ok(cmd) => {
                let r = self.ledger_for(&actor.account).pay(cmd).await;
                self.record(r);
            }
            Err(e) => self.record(Err(e)),
        }
    }

    async fn unbind(&self, actor: &mut Actor, binding: Uuid, rng: &mut Rng) {
        let req = UnbindRequest {
            confirm: true,
            common: common(None, rng),
        };
        match req.validate(&actor.account, &binding.to_string(), Utc::now()) {
            Ok(cmd) => {
                let r = self.ledger_for(&actor.account).unbind(cmd).await;
                if let Ok(c) = &r {
                    if matches!(c.event.payload, Payload::WalletUnbound { .. }) {
                        actor.active.retain(|(b, _)| *b != binding);
                    }
                }
                self.record(r);
            }
            Err(e) => self.record(Err(e)),
        }
    }

    /// One step of one actor.
    async fn step(&self, actor: &mut Actor, rng: &mut Rng) {
        match actor.role {
            Role::Shopper => {
                // Mostly payments, as at a checkout: binds, unbinds and stale tabs are rare, and
                // a shopper rarely mistypes a password, so ordinary shoppers seldom match a rule
                // (the alerts are the attackers' story).
                let roll = rng.below(1000);
                if actor.active.is_empty() || (roll < 20 && actor.active.len() < 3) {
                    // Mostly a wallet not bound yet; now and then one that is (a double click).
                    // A shopper told a wallet is frozen or closed hardly ever tries it again.
                    let usable = |w: &usize| {
                        let (p, acct) = &actor.wallets[*w];
                        self.gateway.wallet_status(p, acct) == WalletStatus::Active || rng.chance(10)
                    };
                    let usable: Vec<usize> = (0..actor.wallets.len()).filter(usable).collect();
                    let unbound: Vec<usize> = usable
                        .iter()
                        .copied()
                        .filter(|w| !actor.active.iter().any(|(_, a)| a == w))
                        .collect();
                    if usable.is_empty() || (actor.active.is_empty() && unbound.is_empty() && !rng.chance(20)) {
                        return; // nothing left to bind: the shopper mostly gives up
                    }
                    let w = if unbound.is_empty() || rng.chance(50) {
                        usable[rng.below(usable.len() as u64) as usize]
                    } else {
                        unbound[rng.below(unbound.len() as u64) as usize]
                    };
                    let wrong_pw = rng.chance(30);
                    let wrong_factor = !wrong_pw && rng.chance(20);
                    self.bind(actor, w, rng, wrong_pw, wrong_factor).await;
                } else if roll < 30 {
                    let (b, _) = actor.active[rng.below(actor.active.len() as u64) as usize];
                    self.unbind(actor, b, rng).await;
                } else if roll < 50 {
                    // A stale tab: paying or unbinding with a binding that is not active.
                    let stale = Uuid::now_v7();
                    if rng.chance(500) {
                        self.pay(actor, stale, 0, 1999, rng, false).await;
                    } else {
                        self.unbind(actor, stale, rng).await;
                    }
                } else {
                    let (b, w) = actor.active[rng.below(actor.active.len() as u64) as usize];
                    let amount = actor.typical_minor / 2 + rng.below(actor.typical_minor as u64) as i64;
                    let wrong = rng.chance(10);
                    self.pay(actor, b, w, amount, rng, wrong).await;
                }
            }
            Role::BruteForcer => {
                if actor.active.is_empty() {
                    // Guesses the wallet's password at binding first (a failed-bind burst).
                    actor.orders += 1;
                    let guessing = actor.orders <= 6;
                    self.bind(actor, 0, rng, guessing, false).await;
                } else {
                    let (b, w) = actor.active[0];
                    self.pay(actor, b, w, 99_900, rng, true).await;
                }
            }
            Role::Ring | Role::Churner => {
                if actor.active.is_empty() {
                    self.bind(actor, 0, rng, false, false).await;
                } else if actor.role == Role::Churner {
                    let (b, _) = actor.active[0];
                    self.unbind(actor, b, rng).await;
                } else {
                    let (b, w) = actor.active[0];
                    self.pay(actor, b, w, 1000 + rng.below(5000) as i64, rng, false).await;
                }
            }
            Role::Drainer => {
                // A fresh wallet each time, then large payments right away.
                if actor.active.is_empty() {
                    let w = rng.below(actor.wallets.len() as u64) as usize;
                    self.bind(actor, w, rng, false, false).await;
                } else {
                    let (b, w) = actor.active[0];
                    self.pay(actor, b, w, 250_000, rng, false).await;
                    if rng.chance(150) {
                        self.unbind(actor, b, rng).await;
                    }
                }
            }
            Role::Prober => {
                let w = rng.below(actor.wallets.len() as u64) as usize;
                self.bind(actor, w, rng, false, false).await;
            }
        }
    }
}

/// Most alerts printed live (the rest are counted in the report).
const ALERTS_PRINTED_MAX: usize = 25;

/// Prints each alert as it opens, the way the security team's feed shows it.
async fn print_alerts(m: bindledger::adapters::http::MonitorView) {
    let mut stream = m.feed.subscribe();
    let mut after = *stream.borrow_and_update();
    let mut printed = 0;
    let colour = crate::alerts::stdout_colour();
    while let Ok(Some(changes)) = m.feed.next_after(after, 1000, &mut stream).await {
        after = changes.last().map_or(after, |c| c.stream_seq);
        for c in changes.iter().filter(|c| c.change == "opened") {
            printed += 1;
            if printed <= ALERTS_PRINTED_MAX {
                outln!("     ALERT {}", crate::alerts::alert_line(&c.alert, colour));
            } else if printed == ALERTS_PRINTED_MAX + 1 {
                outln!("     (more alerts: counted in the report below)");
            }
        }
    }
}

/// Alerts per rule, and what the locks did.
async fn alerts_report(ledger: &Ledger, m: &bindledger::adapters::http::MonitorView) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.status.position.load(std::sync::atomic::Ordering::Relaxed) < ledger.log_len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outln!("\n== alerts (rules over every event, event time) ==");
    // Whom each rule caught: the planted attackers, or ordinary shoppers (a false positive,
    // as far as the demo's story goes).
    let store = m.store.clone();
    let caught = tokio::task::spawn_blocking(move || {
        let mut by_rule: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let (page, next) = store.list(&Default::default(), cursor.as_deref(), 1000, Default::default())?;
            for a in &page {
                let e = by_rule.entry(a.rule.clone()).or_default();
                if a.accounts.iter().all(|x| x.starts_with("shopper-")) {
                    e.1 += 1
                } else {
                    e.0 += 1
                }
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok::<_, bindledger::error::Error>(by_rule)
    })
    .await
    .ok()
    .and_then(|r| r.ok())
    .unwrap_or_default();
    let (mut from_attackers, mut from_shoppers) = (0, 0);
    for (i, rule) in bindledger::domain::alerts::rules::RULE_NAMES.iter().enumerate() {
        let (a, sh) = caught.get(*rule).copied().unwrap_or_default();
        from_attackers += a;
        from_shoppers += sh;
        outln!(
            "  {:<24} {:>6} opened: {a} on the attackers, {sh} on ordinary shoppers",
            rule,
            grouped(m.status.opened[i].load(std::sync::atomic::Ordering::Relaxed) as i64)
        );
    }
    outln!("  alerts on the attackers: {from_attackers}; on ordinary shoppers: {from_shoppers}");
    outln!(
        "  {:<24} {:>6}",
        "updates (suppressed)",
        grouped(m.status.updated_total.load(std::sync::atomic::Ordering::Relaxed) as i64)
    );
    let store = m.store.clone();
    if let Ok(Ok((alerts, _))) = tokio::task::spawn_blocking(move || {
        store.list(
            &bindledger::ledger::alerts::store::AlertFilter {
                severity: Some(bindledger::domain::alerts::Severity::High),
                ..Default::default()
            },
            None,
            5,
            Default::default(),
        )
    })
    .await
    {
        outln!("  latest high-severity alerts:");
        for a in &alerts {
            outln!("    {}", crate::alerts::alert_line(a, crate::alerts::stdout_colour()));
        }
    }
    let (mut locked, mut refused_locked, mut unlocked) = (0u64, 0u64, 0u64);
    for r in ledger.raw_events(1) {
        let Ok((_, bytes)) = r else { continue };
        match bindledger_events::decode(&bytes).map(|e| e.payload) {
            Ok(Payload::BindingLocked { .. }) => locked += 1,
            Ok(Payload::BindingUnlocked { .. }) => unlocked += 1,
            Ok(Payload::PaymentFailed {
                reason: bindledger_events::PaymentFailure::BindingLocked { .. },
                ..
            }) => refused_locked += 1,
            _ => {}
        }
    }
    outln!("  protective locks: {locked} bindings locked, {refused_locked} payments refused while locked, {unlocked} unlocked");
}

/// Waits for the relay to catch up, then reads the topic back as an analytics team would.
async fn kafka_report(
    ledger: &Ledger,
    config: &Config,
    status: &bindledger::adapters::kafka::client::RelayStatus,
    alerts: Option<&(String, Arc<bindledger::adapters::kafka::client::RelayStatus>)>,
    notifications: Option<&(String, Arc<bindledger::adapters::kafka::client::RelayStatus>)>,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while status.position.load(std::sync::atomic::Ordering::Relaxed) < ledger.log_len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let position = status.position.load(std::sync::atomic::Ordering::Relaxed);
    outln!(
        "\n== kafka: {} of {} events on topic {} ==",
        grouped(position as i64),
        grouped(ledger.log_len() as i64),
        config.kafka.topic
    );
    if let Some(e) = status.last_error.lock().expect("status lock").as_ref() {
        outln!("  last relay error: {e}");
    }
    if let Some((topic, st)) = alerts {
        // The alerts relay settles within a moment of the monitor.
        let mut last = u64::MAX;
        for _ in 0..30 {
            let now = st.position.load(std::sync::atomic::Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        outln!(
            "  alert changes on topic {topic}: {}",
            grouped(st.published_total.load(std::sync::atomic::Ordering::Relaxed) as i64)
        );
    }
    if let Some((topic, st)) = notifications {
        // It follows the monitor through the log.
        for _ in 0..50 {
            if st.position.load(std::sync::atomic::Ordering::Relaxed) >= ledger.log_len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outln!(
            "  account holders told on topic {topic} (zh and en): {}",
            grouped(st.published_total.load(std::sync::atomic::Ordering::Relaxed) as i64)
        );
    }
    let args = bindledger::adapters::kafka::analytics::ConsumeOptions {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.topic.clone(),
        group: format!("bindledger-demo-{}", Uuid::now_v7().simple()),
        idle_exit_ms: 2000,
        properties: config.kafka.properties.clone(),
    };
    match tokio::task::spawn_blocking(move || bindledger::adapters::kafka::analytics::consume(&args, |_| {})).await {
        Ok(Ok(r)) => {
            outln!(
                "read back by an analytics consumer: {} messages, {} duplicates",
                grouped(r.messages as i64),
                r.duplicates
            );
            for (t, n) in &r.per_type {
                outln!("  {:<22} {:>9}", t, grouped(*n as i64));
            }
            let same = r.messages == ledger.log_len() && r.duplicates == 0;
            outln!(
                "  the topic {} the log, event for event",
                if same { "equals" } else { "does NOT equal" }
            );
            outln!(
                "\n{}",
                r.analytics
                    .summary()
                    .lines()
                    .filter(|l| !l.starts_with("  20"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(Err(e)) => outln!("  reading the topic back failed: {e:#}"),
        Err(e) => outln!("  reading the topic back failed: {e}"),
    }
}

fn phone(rng: &mut Rng) -> String {
    format!(
        "1{}{:09}",
        [3, 5, 7, 8, 9][rng.below(5) as usize],
        rng.below(1_000_000_000)
    )
}

fn population(opts: &DemoOptions, gateway: &SimulatedGateway, rng: &mut Rng) -> Vec<Actor> {
    let mut actors = Vec::new();
    for i in 0..opts.shoppers {
        let wallets = (0..1 + rng.below(3))
            .map(|_| {
                (
                    {
                        use bindledger_events::types::KNOWN_PROVIDERS;
                        Provider::parse(KNOWN_PROVIDERS[rng.below(KNOWN_PROVIDERS.len() as u64) as usize])
                            .expect("known")
                    },
                    phone(rng),
                )
            })
            .collect();
        actors.push(Actor {
            account: format!("shopper-{i:05}"),
            role: Role::Shopper,
            wallets,
            active: vec![],
            orders: 0,
            typical_minor: 1_000 + rng.below(9_000) as i64,
        });
    }
    let alipay = Provider::parse("alipay").expect("known");
    let active_phone = |rng: &mut Rng| loop {
        let p = phone(rng);
        if gateway.wallet_status(&alipay, &p) == WalletStatus::Active {
            return p;
        }
    };
    let shared = active_phone(rng);
    for i in 0..4 {
        actors.push(Actor {
            account: format!("ring-{i}"),
            role: Role::Ring,
            wallets: vec![(alipay.clone(), shared.clone())],
            active: vec![],
            orders: 0,
            typical_minor: 0,
        });
    }
    actors.push(Actor {
        account: "bruteforce-1".into(),
        role: Role::BruteForcer,
        wallets: vec![(alipay.clone(), active_phone(rng))],
        active: vec![],
        orders: 0,
        typical_minor: 0,
    });
    let drainer_wallets = (0..6).map(|_| (alipay.clone(), active_phone(rng))).collect();
    actors.push(Actor {
        account: "drainer-1".into(),
        role: Role::Drainer,
        wallets: drainer_wallets,
        active: vec![],
        orders: 0,
        typical_minor: 0,
    });
    let mut dead = Vec::new();
    while dead.len() < 4 {
        let p = phone(rng);
        if matches!(
            gateway.wallet_status(&alipay, &p),
            WalletStatus::Frozen | WalletStatus::Closed
        ) {
            dead.push((alipay.clone(), p));
        }
    }
    actors.push(Actor {
        account: "prober-1".into(),
        role: Role::Prober,
        wallets: dead,
        active: vec![],
        orders: 0,
        typical_minor: 0,
    });
    actors.push(Actor {
        account: "churner-1".into(),
        role: Role::Churner,
        wallets: vec![(alipay.clone(), active_phone(rng))],
        active: vec![],
        orders: 0,
        typical_minor: 0,
    });
    actors
}

/// The live table's header: 80 columns, so a terminal never wraps a row. `spent` is in
/// CNY (k: thousands, M: millions).
fn print_table_header() {
    outln!(
        "{:>4}{:>9}{:>7}{:>9}{:>7}{:>7}{:>8}{:>7}{:>6}{:>7}{:>8}",
        "t(s)",
        "events",
        "ev/s",
        "on_kafka",
        "bound",
        "b.fail",
        "paid",
        "p.fail",
        "unbnd",
        "u.fail",
        "spent"
    );
}

/// An amount in a few characters: `12,345`, `678k`, `12.3M`, `4.5B`.
fn compact(n: i64) -> String {
    let a = n.abs() as f64;
    let sign = if n < 0 { "-" } else { "" };
    if a < 100_000.0 {
        grouped(n)
    } else if a < 1e6 {
        format!("{sign}{:.0}k", a / 1e3)
    } else if a < 1e9 {
        format!("{sign}{:.1}M", a / 1e6)
    } else {
        format!("{sign}{:.1}B", a / 1e9)
    }
}

fn grouped(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn count(t: &Tally, prefix: &str) -> u64 {
    t.by_outcome
        .iter()
        .filter(|(k, _)| k.as_str() == prefix || k.starts_with(&format!("{prefix}:")))
        .map(|(_, v)| v)
        .sum()
}

/// A cluster's shards, one per listener: the map (even, `s0`..), written to the broker, and each
/// shard's configuration, `config`'s but for its own directory under `config.data_dir`, its own
/// topics (`<prefix>.<shard>.events`, ...; no notifications topic when `config` has none) and a
/// token with the `cluster` role for the requests it forwards. The demo's and `bench-cluster`'s.
pub(crate) async fn cluster_configs(
    config: &Config,
    prefix: &str,
    listeners: &[tokio::net::TcpListener],
) -> anyhow::Result<(Vec<Config>, Arc<bindledger::domain::shard::ShardMap>)> {
    use bindledger::domain::shard::{ShardEntry, ShardMap};
    let mut entries = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        entries.insert(
            format!("s{i}"),
            ShardEntry {
                url: format!("http://{}", l.local_addr()?),
                events_topic: format!("{prefix}.s{i}.events"),
                checkpoints_topic: format!("{prefix}.s{i}.checkpoints"),
            },
        );
    }
    let map = ShardMap::even(entries)?;
    let cluster_topic = format!("{prefix}.cluster");
    bindledger::adapters::kafka::cluster::publish_map(&config.kafka, &cluster_topic, &map)
        .await
        .with_context(|| format!("writing the shard map (is a broker at {}?)", config.kafka.brokers))?;
    let forwarder = format!("{}{}", Uuid::now_v7().simple(), Uuid::now_v7().simple());
    let configs = map
        .shards
        .iter()
        .map(|(id, e)| {
            let mut c = config.clone();
            c.data_dir = config.data_dir.join(id);
            c.kafka.topic = e.events_topic.clone();
            c.kafka.alerts_topic = format!("{prefix}.{id}.alerts");
            if !config.kafka.notifications_topic.is_empty() {
                c.kafka.notifications_topic = format!("{prefix}.{id}.notifications");
            }
            c.checkpoints.topic = e.checkpoints_topic.clone();
            c.cluster.shard = id.clone();
            c.cluster.topic = cluster_topic.clone();
            c.tokens.push(bindledger::config::TokenConfig {
                token: forwarder.clone(),
                roles: vec![bindledger::config::Role::Cluster],
                name: Some("cluster".into()),
                client_cert_sha256: None,
            });
            c
        })
        .collect();
    Ok((configs, Arc::new(map)))
}

/// Runs the demo until the duration passes (or Ctrl-C), then prints the report.
/// The demo's address, bound before anything is written: an address that was asked for and is
/// busy stops the demo before it creates a key or a token file; otherwise a busy default moves
/// to a free port.
pub fn listen(config: &Config, listen_given: bool) -> anyhow::Result<std::net::TcpListener> {
    let listener = match std::net::TcpListener::bind(config.listen) {
        Ok(l) => l,
        Err(e) if listen_given => anyhow::bail!("cannot listen on {}: {e}", config.listen),
        Err(_) => {
            eprintln!(
                "note: {} is busy; the demo listens on a free port instead",
                config.listen
            );
            std::net::TcpListener::bind("127.0.0.1:0")?
        }
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub async fn run(
    config: Config,
    secret: LedgerSecret,
    opts: DemoOptions,
    listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    let mut scenario = config.gateway.simulated.clone();
    // Wallets hold 1,000.00 to 200,000.00: shoppers run dry now and then, the drainer soon.
    scenario.balance_minor_min = scenario.balance_minor_min.max(100_000);
    scenario.balance_minor_max = scenario.balance_minor_max.max(20_000_000);
    // Apple Pay goes into maintenance for a few seconds, so that failure shows up too.
    let start = Utc::now();
    scenario.maintenance.push(MaintenanceWindow {
        provider: "apple_pay".into(),
        from: start + chrono::Duration::seconds(4),
        until: start + chrono::Duration::seconds(7),
    });
    let gateway = Arc::new(SimulatedGateway::new(scenario));
    // Unless a rules file is configured, the demo's rules are the defaults with the brute-force
    // lock on, so the lock shows up too; written next to the log so `verify` can use them.
    let mut config = config;
    // Topics of this run, unless topics were configured: another run's log on the same broker
    // is refused by the relays, and its figures are not this run's.
    let defaults = bindledger::config::Config::default();
    let run = format!("{}-{}", Utc::now().format("%Y%m%d%H%M%S"), std::process::id());
    if config.kafka.topic == defaults.kafka.topic {
        config.kafka.topic = format!("bindledger.demo.{run}.events");
    }
    if config.kafka.alerts_topic == defaults.kafka.alerts_topic {
        config.kafka.alerts_topic = format!("bindledger.demo.{run}.alerts");
    }
    if config.kafka.notifications_topic == defaults.kafka.notifications_topic {
        config.kafka.notifications_topic = format!("bindledger.demo.{run}.notifications");
    }
    if config.checkpoints.topic == defaults.checkpoints.topic {
        config.checkpoints.topic = format!("bindledger.demo.{run}.checkpoints");
    }
    let listener = tokio::net::TcpListener::from_std(listener)?;
    const DEMO_RULES: &str =
        "# the demo's alert rules: the defaults, with the brute-force lock on\n[password_brute_force]\nlock = true\n";
    let (rules, write_rules) = match &config.alerts.rules_file {
        Some(_) => (bindledger::ledger::keys::alert_rules(&config)?, false),
        None => (
            bindledger::domain::alerts::RuleSet::from_toml(DEMO_RULES, Some("demo-rules.toml"))
                .map_err(|e| anyhow::anyhow!("the demo's rules: {e}"))?,
            true,
        ),
    };
    // A cluster: a shard map on the broker, a node per shard (each its own port, directory and
    // topics), the population's commands sent to each account's shard.
    let shard_count = opts.shards.max(1) as usize;
    if shard_count > 1 && !config.kafka.enabled() {
        anyhow::bail!("a cluster's shard map lives on Kafka: set BINDLEDGER_KAFKA_BROKERS, or run `make demo-cluster`, which starts a broker");
    }
    let mut listeners = vec![listener];
    for _ in 1..shard_count {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let (configs, map) = if shard_count == 1 {
        (vec![config.clone()], None)
    } else {
        let (configs, map) = cluster_configs(&config, &format!("bindledger.demo.{run}"), &listeners).await?;
        (configs, Some(map))
    };
    // The ledgers open (and lock their directories) before the rules file is written next to them.
    let mut nodes = Vec::new();
    for c in &configs {
        nodes.push(bindledger::node::Node::start_with_rules(
            c,
            rules.clone(),
            secret.clone(),
            gateway.clone(),
        )?);
    }
    if write_rules {
        let path = config.data_dir.join("demo-rules.toml");
        std::fs::write(&path, DEMO_RULES)?;
        config.alerts.rules_file = Some(path);
    }
    let rules_file = config.alerts.rules_file.clone().expect("set above");
    let ledgers: Vec<Ledger> = nodes.iter().map(|n| n.ledger.clone()).collect();
    let relays: Vec<Arc<bindledger::adapters::kafka::client::RelayStatus>> = nodes
        .iter()
        .filter_map(|n| n.extras.relay.as_ref().map(|(_, s)| s.clone()))
        .collect();
    let relay_status = relays.first().cloned();
    let addr = listeners[0].local_addr()?;
    let mut servers = Vec::new();
    for (listener, node) in listeners.into_iter().zip(&nodes) {
        let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bindledger::adapters::http::serve(
            listener,
            node.state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        servers.push((stop_http, server));
    }

    // The admin token file exists only when no tokens are configured; otherwise the token is
    // one of the configuration's, which the banner does not repeat.
    let admin_file = config.data_dir.join("admin.token");
    let (token_where, token_ref) = if admin_file.exists() {
        (
            admin_file.display().to_string(),
            format!("$(cat {})", admin_file.display()),
        )
    } else {
        (
            "a token of your configuration (tokens, or BINDLEDGER_TOKENS), as $TOKEN below".to_owned(),
            "$TOKEN".to_owned(),
        )
    };
    outln!("bindledger demo");
    outln!("  log:       {}", config.data_dir.display());
    outln!("  HTTP API:  http://{addr}   (token: {token_where})");
    outln!("  try:       curl -s -H \"Authorization: Bearer {token_ref}\" http://{addr}/v1/accounts/shopper-00001/bindings");
    outln!("  population: {} shoppers + a password guesser (binds, then payments), a ring of 4 accounts sharing one wallet,", opts.shoppers);
    outln!("              a bind-then-drain account, a dead-wallet prober and a binding churner");
    outln!("  apple_pay is under maintenance from second 4 to 7");
    let (exe, _) = tool_paths();
    let token_arg = if admin_file.exists() {
        format!("--data-dir {}", config.data_dir.display())
    } else {
        "--token $TOKEN".to_owned()
    };
    if let Some(map) = &map {
        outln!(
            "  cluster:   {} shards in this process, the shard map on topic {}; a request for another shard's account is forwarded to it",
            map.shards.len(),
            configs[0].cluster.topic
        );
        for (id, e) in &map.shards {
            outln!(
                "               {id}  {:<24} {} slots, topics {} ...",
                e.url,
                map.slots_of(id).len(),
                e.events_topic
            );
        }
        outln!(
            "  shards:    {exe} cluster status --brokers {} --cluster-topic {} {token_arg}",
            config.kafka.brokers,
            configs[0].cluster.topic
        );
    }
    match &relay_status {
        Some(_) if map.is_some() => {
            outln!(
                "  kafka:     at {}, each shard its own five topics (events, alerts, notifications, checkpoints, wrapped data keys)",
                config.kafka.brokers
            );
            outln!("  while it runs:");
            outln!("    {exe} status --url http://{addr} {token_arg}");
        }
        Some(_) => {
            outln!("  kafka:     at {}, five topics:", config.kafka.brokers);
            outln!(
                "               {:<40} every event, keyed by account (personal fields sealed)",
                config.kafka.topic
            );
            outln!(
                "               {:<40} the alerts as they open and change",
                config.kafka.alerts_topic
            );
            outln!(
                "               {:<40} what each account holder is told (zh, en)",
                config.kafka.notifications_topic
            );
            outln!("               {:<40} the signed checkpoints", config.checkpoints.topic);
            outln!(
                "               {:<40} each account's data key, wrapped by the master key",
                bindledger::adapters::kafka::keys::keys_topic(&config.kafka.topic)
            );
            outln!("  while it runs:");
            outln!("    {exe} status --url http://{addr} {token_arg}");
            outln!(
                "    {exe} consume --brokers {} --topic {} --group readback-$RANDOM --idle-exit-ms 3000",
                config.kafka.brokers,
                config.kafka.topic
            );
        }
        None => {
            outln!("  kafka:     off (set BINDLEDGER_KAFKA_BROKERS, or run `make demo`, which starts a broker)");
            outln!("  while it runs:");
            outln!("    {exe} status --url http://{addr} {token_arg}");
        }
    }
    outln!();
    outln!(
        "  alerts:    the monitor runs the {} rules over every event; new alerts print as they open",
        bindledger::domain::alerts::rules::RULES_COUNT
    );
    outln!("             (live: curl -N -H \"Authorization: Bearer {token_ref}\" http://{addr}/v1/alerts/stream)\n");
    let alert_printers: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.extras.monitor.clone().map(|m| tokio::spawn(print_alerts(m))))
        .collect();
    print_table_header();

    let world = Arc::new(World {
        ledgers: ledgers.clone(),
        map: map.clone(),
        gateway: gateway.clone(),
        tally: Mutex::new(Tally::default()),
    });
    let mut rng = Rng(opts.seed);
    let actors = population(&opts, &gateway, &mut rng);
    let workers = 32usize;
    let mut buckets: Vec<Vec<Actor>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, a) in actors.into_iter().enumerate() {
        buckets[i % workers].push(a);
    }
    // A small population (fewer actors than workers) leaves some buckets empty: no worker
    // for them, and the rate is spread over the others.
    buckets.retain(|b| !b.is_empty());
    let workers = buckets.len().max(1);
    let deadline = (opts.duration_s > 0).then(|| Instant::now() + Duration::from_secs(opts.duration_s));
    let per_worker_interval = Duration::from_secs_f64(workers as f64 / opts.rate.max(1) as f64);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for (w, mut actors) in buckets.into_iter().enumerate() {
        let world = world.clone();
        let stop = stop.clone();
        let mut rng = Rng(opts.seed.wrapping_mul(1000).wrapping_add(w as u64));
        // Attackers come last in the population, so last in their bucket.
        let attackers = actors.iter().filter(|a| !matches!(a.role, Role::Shopper)).count() as u64;
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_worker_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                // The attackers (placed last) act more often than any one shopper.
                let i = if rng.chance(250) && attackers > 0 {
                    actors.len() - 1 - rng.below(attackers) as usize
                } else {
                    rng.below(actors.len() as u64) as usize
                };
                let mut actor = std::mem::replace(
                    &mut actors[i],
                    Actor {
                        account: String::new(),
                        role: Role::Shopper,
                        wallets: vec![],
                        active: vec![],
                        orders: 0,
                        typical_minor: 0,
                    },
                );
                world.step(&mut actor, &mut rng).await;
                actors[i] = actor;
            }
        }));
    }

    let started = Instant::now();
    let log_len = || ledgers.iter().map(Ledger::log_len).sum::<u64>();
    let mut last_events = log_len();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut second = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => { break; }
        }
        second += 1;
        let events = log_len();
        {
            let t = world.tally.lock().expect("tally");
            let on_kafka = relay_status.as_ref().map_or("-".to_owned(), |_| {
                grouped(
                    relays
                        .iter()
                        .map(|s| s.position.load(std::sync::atomic::Ordering::Relaxed))
                        .sum::<u64>() as i64,
                )
            });
            if opts.header_every > 0 && second > 1 && (second - 1) % opts.header_every == 0 {
                print_table_header();
            }
            outln!(
                "{:>4}{:>9}{:>7}{:>9}{:>7}{:>7}{:>8}{:>7}{:>6}{:>7}{:>8}",
                second,
                grouped(events as i64),
                grouped((events - last_events) as i64),
                on_kafka,
                grouped(count(&t, "wallet_bound") as i64),
                grouped(count(&t, "bind_failed") as i64),
                grouped(count(&t, "payment_succeeded") as i64),
                grouped(count(&t, "payment_failed") as i64),
                grouped(count(&t, "wallet_unbound") as i64),
                grouped(count(&t, "unbind_failed") as i64),
                compact(t.spent_minor / 100),
            );
        }
        last_events = events;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        let _ = h.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for p in alert_printers {
        p.abort();
    }
    report(&world, elapsed).await;
    for (node, c) in nodes.iter().zip(&configs) {
        if map.is_some() {
            outln!("\n==== shard {} ====", c.cluster.shard);
        }
        if let Some(m) = &node.extras.monitor {
            alerts_report(&node.ledger, m).await;
        }
        if let Some((_, status)) = &node.extras.relay {
            kafka_report(
                &node.ledger,
                c,
                status,
                node.extras.alerts_relay.as_ref(),
                node.extras.notifications_relay.as_ref(),
            )
            .await;
        }
    }
    for (stop_http, server) in servers {
        let _ = stop_http.send(());
        let _ = server.await;
    }
    for node in nodes {
        node.stop().await;
    }
    for c in &configs {
        outln!("\nThe log stays in {}; check it offline with:", c.data_dir.display());
        print_offline_checks(c, &rules_file);
    }
    Ok(())
}

/// How to check a stopped ledger's directory offline.
fn print_offline_checks(config: &Config, rules_file: &std::path::Path) {
    // The commands as they run from here: the binaries by the path this one was started from.
    let (exe, replay) = tool_paths();
    outln!(
        "  {exe} verify --data-dir {} --rules {}",
        config.data_dir.display(),
        rules_file.display()
    );
    outln!("  {exe} export --data-dir {} | head", config.data_dir.display());
    if let Some(replay) = replay {
        outln!(
            "  {replay} verify --data-dir {}    # the audit tool",
            config.data_dir.display()
        );
    }
}

/// How to call this binary, and the audit tool beside it (if built), from the current
/// directory: `bindledger` when it is the one on the `PATH`, else its path (`./target/release/...`).
fn tool_paths() -> (String, Option<String>) {
    let Ok(exe) = std::env::current_exe() else {
        return ("bindledger".into(), None);
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("bindledger").canonicalize().ok() == exe.canonicalize().ok())
    });
    let shown = |p: &std::path::Path| -> String {
        match std::env::current_dir()
            .ok()
            .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.to_owned()))
        {
            Some(rel) => format!("./{}", rel.display()),
            None => p.display().to_string(),
        }
    };
    let replay = exe.with_file_name("bindledger-replay");
    let replay = replay.exists().then(|| {
        if on_path {
            "bindledger-replay".into()
        } else {
            shown(&replay)
        }
    });
    (if on_path { "bindledger".into() } else { shown(&exe) }, replay)
}

async fn report(world: &World, elapsed_s: f64) {
    let events: u64 = world.ledgers.iter().map(Ledger::log_len).sum();
    let sample = world.ledger_for("drainer-1").history("drainer-1", 0, 2).await;
    let t = world.tally.lock().expect("tally");
    outln!(
        "\n== outcomes after {:.1} s ({} events, {:.0} events/s) ==",
        elapsed_s,
        grouped(events as i64),
        events as f64 / elapsed_s
    );
    for (k, v) in &t.by_outcome {
        outln!("  {:<46} {:>9}", k, grouped(*v as i64));
    }
    if !t.errors.is_empty() {
        outln!("  answered with an error, nothing recorded:");
        for (k, v) in &t.errors {
            outln!("    {:<44} {:>9}", k, grouped(*v as i64));
        }
    }

    drop(t);
    for (i, ledger) in world.ledgers.iter().enumerate() {
        let which = match &world.map {
            Some(map) => format!("shard {}'s ", map.shards.keys().nth(i).expect("a shard")),
            None => String::new(),
        };
        let mut verifier = ChainVerifier::new();
        let mut broken = None;
        for r in ledger.raw_events(1) {
            let Ok((_, bytes)) = r else { continue };
            if let Err(e) = verifier.push(&bytes) {
                broken = Some(e);
                break;
            }
        }
        match broken {
            None => outln!(
                "\n== {which}hash chain: {} events verified, head {} ==",
                grouped(verifier.last_seq() as i64),
                verifier.head()
            ),
            Some(e) => outln!("\n== {which}hash chain BROKEN: {e} =="),
        }
    }
    if let Ok(events) = sample {
        if let Some(e) = events.first() {
            outln!(
                "\none stored event, as auditors and consumers see it:\n  {}",
                serde_json::to_string(e).unwrap_or_default()
            );
        }
    }
}
