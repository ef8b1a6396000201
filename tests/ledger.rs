//! The library API over real sled files: races, restarts, idempotency, overload, the gateway's
//! failure modes.

mod common;

use bindledger::adapters::provider::{MaintenanceWindow, Scenario, SimulatedGateway};
use bindledger::domain::command::{BindRequest, CommonInput, PayRequest, UnbindRequest};
use bindledger::domain::projection::Projection;
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::{Config, Error, Ledger};
use bindledger_events::{decode, BindFailure, Event, Payload, PaymentFailure, Side};
use chrono::Utc;
use common::*;
use std::sync::Arc;
use uuid::Uuid;

const SECRET: [u8; 32] = [42; 32];

fn open(config: &Config) -> (Ledger, Arc<SimulatedGateway>) {
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    (
        Ledger::open(config, LedgerSecret::from_bytes(SECRET), gateway.clone()).unwrap(),
        gateway,
    )
}

fn bind_request(g: &SimulatedGateway, n: u64, key: Option<&str>) -> BindRequest {
    BindRequest {
        provider: "alipay".into(),
        wallet_account: SecretString::new(phone(n)),
        payment_password: SecretString::new(g.password_for(&alipay(), &phone(n))),
        factor: None,
        common: CommonInput {
            idempotency_key: key.map(str::to_owned),
            ..Default::default()
        },
    }
}

async fn bind(l: &Ledger, g: &SimulatedGateway, account: &str, n: u64) -> Uuid {
    let r = l
        .bind(bind_request(g, n, None).validate(account, Utc::now()).unwrap())
        .await
        .unwrap();
    match &r.event.payload {
        Payload::WalletBound { binding_id, .. } => *binding_id,
        other => panic!("{other:?}"),
    }
}

fn pay_request(
    g: &SimulatedGateway,
    n: u64,
    binding: Uuid,
    amount_minor: i64,
    key: Option<&str>,
    expected_version: Option<u64>,
) -> PayRequest {
    PayRequest {
        binding_id: binding.to_string(),
        order_id: format!("o-{amount_minor}"),
        amount_minor,
        currency: None,
        payment_password: SecretString::new(g.password_for(&alipay(), &phone(n))),
        factor: None,
        common: CommonInput {
            idempotency_key: key.map(str::to_owned),
            expected_version,
            ..Default::default()
        },
    }
}

fn all_events(l: &Ledger) -> Vec<bindledger_events::Event> {
    l.raw_events(1).map(|r| decode(&r.unwrap().1).unwrap()).collect()
}

/// One payment per key, all at once, each from its own task; the i-th pays 1 + i minor units.
fn pay_concurrently(
    l: &Ledger,
    g: &Arc<SimulatedGateway>,
    binding: Uuid,
    keys: Vec<String>,
) -> Vec<tokio::task::JoinHandle<bindledger::Result<bindledger::ledger::CommandResult>>> {
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let (l, g) = (l.clone(), g.clone());
            tokio::spawn(async move {
                l.pay(
                    pay_request(&g, 1, binding, 1 + i as i64, Some(&key), None)
                        .validate("acct", Utc::now())
                        .unwrap(),
                )
                .await
            })
        })
        .collect()
}

/// The idempotency keys of the events in the log, sorted.
fn logged_keys(l: &Ledger) -> Vec<String> {
    let mut keys: Vec<String> = all_events(l).into_iter().filter_map(|e| e.idempotency_key).collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_racing_on_one_idempotency_key_get_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let (l, g) = open(&test_config(dir.path()));
    let binding = bind(&l, &g, "acct", 1).await;
    let base = l.log_len();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (l, g) = (l.clone(), g.clone());
            tokio::spawn(async move {
                l.pay(
                    pay_request(&g, 1, binding, 500, Some("k-1"), None)
                        .validate("acct", Utc::now())
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.unwrap().expect("every racer gets the result");
        seqs.push(r.event.seq);
        fresh += usize::from(!r.replayed);
    }
    assert!(
        seqs.iter().all(|s| *s == seqs[0]),
        "all racers see the same event: {seqs:?}"
    );
    assert_eq!(fresh, 1, "exactly one racer made the event");
    assert_eq!(l.log_len(), base + 1);
    assert_eq!(
        g.spent_minor(&alipay(), &phone(1)),
        500,
        "the losers' authorisations were voided"
    );

    // Different requests racing on one key: one wins, the rest are told the key is taken.
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (l, g) = (l.clone(), g.clone());
            tokio::spawn(async move {
                l.pay(
                    pay_request(&g, 1, binding, 100 + i, Some("k-2"), None)
                        .validate("acct", Utc::now())
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert!(!r.replayed);
                ok += 1;
            }
            Err(Error::IdempotencyKeyReused) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(l.log_len(), base + 2);
    l.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_versions_serialise_racing_writers() {
    let dir = tempfile::tempdir().unwrap();
    let (l, g) = open(&test_config(dir.path()));
    let binding = bind(&l, &g, "shared", 7).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (l, g) = (l.clone(), g.clone());
            tokio::spawn(async move {
                let mut conflicts = 0;
                let mut won = Vec::new();
                while won.len() < 5 {
                    let version = l.account("shared").unwrap().unwrap().version;
                    let req = pay_request(&g, 7, binding, 1 + i, None, Some(version));
                    match l.pay(req.validate("shared", Utc::now()).unwrap()).await {
                        Ok(r) => {
                            assert_eq!(r.event.account_seq, version + 1);
                            won.push(r.event.account_seq);
                        }
                        Err(Error::VersionConflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (won, conflicts)
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap().0);
    }
    versions.sort();
    assert_eq!(
        versions,
        (2..=81).collect::<Vec<u64>>(),
        "each version was won exactly once"
    );
    assert_eq!(l.account("shared").unwrap().unwrap().version, 81);
    l.close();
}

#[tokio::test]
async fn a_restart_resumes_the_projection_and_a_rebuild_equals_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.writer.snapshot_every_events = 7; // several snapshots, and a tail to fold
    let (l, g) = open(&config);
    for a in 0..6u64 {
        let account = format!("acct-{a}");
        let b1 = bind(&l, &g, &account, a * 10 + 1).await;
        let b2 = bind(&l, &g, &account, a * 10 + 2).await;
        for k in 0..3 {
            l.pay(
                pay_request(&g, a * 10 + 1, b1, 100 + k, None, None)
                    .validate(&account, Utc::now())
                    .unwrap(),
            )
            .await
            .unwrap();
        }
        if a % 2 == 0 {
            l.unbind(
                UnbindRequest {
                    confirm: true,
                    common: CommonInput::default(),
                }
                .validate(&account, &b2.to_string(), Utc::now())
                .unwrap(),
            )
            .await
            .unwrap();
        }
    }
    // Two accounts share a wallet.
    bind(&l, &g, "acct-0", 51).await;
    bind(&l, &g, "acct-1", 51).await;
    let live = l.projection().unwrap();
    let rebuilt = Projection::rebuild(all_events(&l).iter());
    assert_eq!(live, rebuilt, "the live projection equals a rebuild from the log");
    l.close();

    let (l, _) = open(&config);
    assert_eq!(
        l.projection().unwrap(),
        rebuilt,
        "reopened: the stored snapshot plus the tail equals a rebuild"
    );
    let report = bindledger::ledger::offline::verify(dir.path(), &bindledger::domain::alerts::RuleSet::default());
    assert!(
        report.is_err(),
        "the log is open in this process, verify must not open it twice"
    );
    l.close();
    let report =
        bindledger::ledger::offline::verify(dir.path(), &bindledger::domain::alerts::RuleSet::default()).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.events, rebuilt.position);
}

#[tokio::test]
async fn idempotency_keys_survive_a_restart_within_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.idempotency.window = "3s".into();
    // The window is in the ledger's time: a manual clock moves past it, no sleep.
    let clock = Arc::new(bindledger::ledger::clock::ManualClock::new(Utc::now()));
    let now = || bindledger::ledger::clock::Clock::now(&*clock);
    let (l, g) = open_with_clock(&config, SECRET, clock.clone());
    let binding = bind(&l, &g, "acct", 3).await;
    let first = l
        .pay(
            pay_request(&g, 3, binding, 700, Some("pay-1"), None)
                .validate("acct", now())
                .unwrap(),
        )
        .await
        .unwrap();
    l.close();
    let (l, g) = open_with_clock(&config, SECRET, clock.clone());
    let again = l
        .pay(
            pay_request(&g, 3, binding, 700, Some("pay-1"), None)
                .validate("acct", now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.event, first.event);
    assert_eq!(again.hash, first.hash);
    // Many more events than the former window (counted in events) do not matter: the
    // window is in time.
    for k in 0..50 {
        l.pay(
            pay_request(&g, 3, binding, 1 + k, None, None)
                .validate("acct", now())
                .unwrap(),
        )
        .await
        .unwrap();
    }
    let still = l
        .pay(
            pay_request(&g, 3, binding, 700, Some("pay-1"), None)
                .validate("acct", now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(still.replayed && still.event.seq == first.event.seq);
    // After the window the key is new: the command runs again, and as its order is paid it
    // is recorded as `order_already_paid`, naming the first payment.
    clock.advance(chrono::Duration::milliseconds(3_100));
    let later = l
        .pay(
            pay_request(&g, 3, binding, 700, Some("pay-1"), None)
                .validate("acct", now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(!later.replayed);
    assert_ne!(later.event.seq, first.event.seq);
    assert!(
        matches!(
            later.event.payload,
            Payload::PaymentFailed {
                reason: PaymentFailure::OrderAlreadyPaid { payment_seq },
                ..
            } if payment_seq == first.event.seq
        ),
        "{:?}",
        later.event.payload
    );
    l.close();
}

#[tokio::test]
async fn another_secret_is_refused_for_an_existing_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (l, g) = open(&config);
    bind(&l, &g, "acct", 1).await;
    l.close();
    let other = Ledger::open(&config, LedgerSecret::from_bytes([1; 32]), g.clone());
    assert!(matches!(other, Err(Error::SecretMismatch)), "{:?}", other.err());
    let (l, _) = open(&config);
    assert_eq!(l.log_len(), 1);
    l.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.writer.queue_capacity = 1;
    config.writer.batch_max = 1;
    let (l, g) = open(&config);
    let binding = bind(&l, &g, "acct", 1).await;
    let tasks = pay_concurrently(&l, &g, binding, (0..300).map(|i| format!("k{i}")).collect());
    let (mut ok, mut overloaded) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => ok.push(r.event.idempotency_key.clone().unwrap()),
            Err(Error::Overloaded(_)) => overloaded += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        overloaded > 0,
        "a queue of one must overflow under 300 concurrent commands"
    );
    ok.sort();
    assert_eq!(logged_keys(&l), ok, "exactly the acknowledged commands are in the log");
    let spent: i64 = all_events(&l)
        .iter()
        .map(|e| match e.payload {
            Payload::PaymentSucceeded { amount_minor, .. } => amount_minor,
            _ => 0,
        })
        .sum();
    assert_eq!(
        g.spent_minor(&alipay(), &phone(1)),
        spent,
        "refused commands were voided at the provider"
    );
    l.close();
}

/// The group-commit delay: one command at a time never waits for company; a burst makes flushes
/// wait and gather more events, and every acknowledged command is in the log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_delay_holds_flushes_only_while_the_ledger_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.writer.commit_delay_us = 20_000;
    config.writer.commit_batch = 1_000_000;
    config.writer.commit_busy_events = 2;
    let (l, g) = open(&config);
    let binding = bind(&l, &g, "acct", 1).await;
    for i in 0..20 {
        l.pay(
            pay_request(&g, 1, binding, 1 + i, None, None)
                .validate("acct", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        l.metrics().commit_delays.get(),
        0,
        "flushes of one command each never wait"
    );

    let (base, flushes_before) = (l.log_len(), l.metrics().flushes.get());
    let mut acknowledged = Vec::new();
    for wave in 0..3 {
        for t in pay_concurrently(&l, &g, binding, (0..100).map(|i| format!("w{wave}-{i}")).collect()) {
            acknowledged.push(t.await.unwrap().unwrap().event.idempotency_key.clone().unwrap());
        }
    }
    let flushes = l.metrics().flushes.get() - flushes_before;
    assert!(
        l.metrics().commit_delays.get() > 0,
        "{flushes} flushes for 300 concurrent commands, none waited"
    );
    assert_eq!(l.log_len(), base + 300);
    acknowledged.sort();
    assert_eq!(
        logged_keys(&l),
        acknowledged,
        "every acknowledged command is in the log exactly once"
    );
    l.close();
}

#[tokio::test]
async fn provider_failures_are_recorded_as_typed_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let now = Utc::now();
    config.gateway.simulated = Scenario {
        maintenance: vec![MaintenanceWindow {
            provider: "wechat_pay".into(),
            from: now - chrono::Duration::hours(1),
            until: now + chrono::Duration::hours(1),
        }],
        ..Scenario::quiet(11)
    };
    let (l, g) = open(&config);
    let req = BindRequest {
        provider: "wechat_pay".into(),
        ..bind_request(&g, 1, None)
    };
    let r = l.bind(req.validate("acct", Utc::now()).unwrap()).await.unwrap();
    assert!(
        matches!(
            r.event.payload,
            Payload::BindFailed {
                reason: BindFailure::Maintenance { side: Side::Provider },
                ..
            }
        ),
        "{:?}",
        r.event.payload
    );
    l.close();

    // A provider that never answers in time is a network failure.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.gateway.simulated.latency_ms = 500;
    config.gateway.timeout_ms = 50;
    let (l, g) = open(&config);
    let r = l
        .bind(bind_request(&g, 1, None).validate("acct", Utc::now()).unwrap())
        .await
        .unwrap();
    assert!(
        matches!(
            r.event.payload,
            Payload::BindFailed {
                reason: BindFailure::Network,
                ..
            }
        ),
        "{:?}",
        r.event.payload
    );
    l.close();

    // The platform's own maintenance.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.platform_maintenance = true;
    let (l, g) = open(&config);
    let r = l
        .pay(
            pay_request(&g, 1, Uuid::now_v7(), 5, None, None)
                .validate("acct", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(
        r.event.payload,
        Payload::PaymentFailed {
            reason: PaymentFailure::Maintenance { side: Side::Platform },
            ..
        }
    ));
    l.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorisation_the_writer_refuses_is_voided() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.gateway.simulated.latency_ms = 300;
    let (l, g) = open(&config);
    let binding = bind(&l, &g, "acct", 9).await;
    // The payment passes the pre-check and waits on the provider; meanwhile the wallet is unbound.
    let pay = {
        let (l, g) = (l.clone(), g.clone());
        tokio::spawn(async move {
            l.pay(
                pay_request(&g, 9, binding, 4200, None, None)
                    .validate("acct", Utc::now())
                    .unwrap(),
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    l.unbind(
        UnbindRequest {
            confirm: true,
            common: CommonInput::default(),
        }
        .validate("acct", &binding.to_string(), Utc::now())
        .unwrap(),
    )
    .await
    .unwrap();
    let r = pay.await.unwrap().unwrap();
    assert!(
        matches!(
            r.event.payload,
            Payload::PaymentFailed {
                reason: PaymentFailure::BindingNotActive,
                ..
            }
        ),
        "{:?}",
        r.event.payload
    );
    assert_eq!(
        g.spent_minor(&alipay(), &phone(9)),
        0,
        "the provider's authorisation was released"
    );
    l.close();
}

/// History and payments read the stored history rows and the ones the indexer still holds in
/// memory alike: checked while rows are written every few events and after a restart.
#[tokio::test]
async fn history_and_payments_read_stored_and_pending_rows_alike() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.writer.snapshot_every_events = 7;
    async fn check(l: &Ledger) {
        // As stored (sealed), then opened as readers get them.
        let log: Vec<Event> = all_events(l)
            .into_iter()
            .filter(|e| e.account == "acct-h")
            .map(|mut e| {
                l.open_event(&mut e).unwrap();
                e
            })
            .collect();
        let history = l.history("acct-h", 0, 1_000).await.unwrap();
        assert_eq!(history, log, "history");
        let later = l.history("acct-h", 3, 4).await.unwrap();
        assert_eq!(
            later,
            log.iter().skip(3).take(4).cloned().collect::<Vec<_>>(),
            "history after version 3"
        );
        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = l.payments("acct-h", cursor, 3).await.unwrap();
            assert!(page.len() <= 3);
            paged.extend(page);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let payments: Vec<Event> = log
            .iter()
            .rev()
            .filter(|e| e.event_type().starts_with("payment_"))
            .cloned()
            .collect();
        assert_eq!(paged, payments, "payments, newest first, page by page");
    }
    let (l, g) = open(&config);
    let b = bind(&l, &g, "acct-h", 1).await;
    let other = bind(&l, &g, "other", 2).await;
    for k in 0..40 {
        l.pay(
            pay_request(&g, 1, b, 100 + k, None, None)
                .validate("acct-h", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
        l.pay(
            pay_request(&g, 2, other, 1 + k, None, None)
                .validate("other", Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
        if k % 9 == 0 {
            check(&l).await;
        }
    }
    check(&l).await;
    l.close();
    let (l, _) = open(&config);
    check(&l).await;
    l.close();
}

/// One step of the cold-and-hot comparison: (account, what, which binding or wallet, a wrong
/// password).
type Step = (u8, u8, u8, bool);

/// Runs `steps` on a ledger and returns each answer: the event's stored bytes, or the error's
/// code. Ids come from a seed and time from a manual clock advanced one second a step, so two
/// ledgers given the same steps write the same bytes whatever they hold in memory.
async fn answers_of(config: &Config, steps: &[Step]) -> (Vec<Result<Vec<u8>, &'static str>>, u64) {
    let clock = Arc::new(bindledger::ledger::clock::ManualClock::new(
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    ));
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let seams = bindledger::ledger::Seams {
        clock: clock.clone(),
        ids_seed: Some(5),
        ..Default::default()
    };
    let rules = bindledger::ledger::keys::alert_rules(config).unwrap();
    let l = Ledger::open_with_seams(config, &rules, LedgerSecret::from_bytes(SECRET), gateway.clone(), seams).unwrap();
    let g = &gateway;
    let wrong = |n: u64| {
        let right = g.password_for(&alipay(), &phone(n)).into_bytes();
        let mut w = right.clone();
        w[0] = b'0' + (right[0] - b'0' + 1) % 10;
        SecretString::new(String::from_utf8(w).unwrap())
    };
    // Each account's bindings as the answers made them, with the wallet's number.
    let mut bound: std::collections::HashMap<String, Vec<(Uuid, u64)>> = Default::default();
    let mut out = Vec::new();
    for (i, &(a, what, which, bad)) in steps.iter().enumerate() {
        clock.advance(chrono::Duration::seconds(1));
        let account = format!("acct-{a}");
        let held = bound.get(&account).cloned().unwrap_or_default();
        let pick = (!held.is_empty()).then(|| held[which as usize % held.len()]);
        let answer = match (what, pick) {
            (0, _) | (_, None) => {
                let n = u64::from(which % 4);
                let mut req = bind_request(g, n, None);
                if bad {
                    req.payment_password = wrong(n);
                }
                l.bind(req.validate(&account, Utc::now()).unwrap()).await
            }
            (1, Some((b, _))) => {
                l.unbind(
                    UnbindRequest {
                        confirm: true,
                        common: CommonInput::default(),
                    }
                    .validate(&account, &b.to_string(), Utc::now())
                    .unwrap(),
                )
                .await
            }
            (_, Some((b, n))) => {
                let mut req = pay_request(g, n, b, 100 + i as i64, None, None);
                if bad {
                    req.payment_password = wrong(n);
                }
                l.pay(req.validate(&account, Utc::now()).unwrap()).await
            }
        };
        out.push(match answer {
            Ok(c) => {
                if let Payload::WalletBound { binding_id, .. } = &c.event.payload {
                    bound
                        .entry(account.clone())
                        .or_default()
                        .push((*binding_id, u64::from(which % 4)));
                }
                if let Payload::WalletUnbound { binding_id, .. } = &c.event.payload {
                    bound
                        .entry(account.clone())
                        .or_default()
                        .retain(|(x, _)| x != binding_id);
                }
                Ok(c.bytes.to_vec())
            }
            Err(e) => Err(e.code()),
        });
    }
    // The read model agrees with the answers, whatever it holds.
    for a in 0..6 {
        let account = format!("acct-{a}");
        let version = l.account(&account).unwrap().map_or(0, |s| s.version);
        let last = out
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|b| decode(b).unwrap())
            .filter(|e| e.account == account)
            .map(|e| e.account_seq)
            .max()
            .unwrap_or(0);
        assert_eq!(version, last, "{account}'s version");
    }
    let rows_read = l.account_cache().account_rows_read;
    l.close();
    (out, rows_read)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    /// An account read back from its stored row (the writer and the read model holding one
    /// account, with a snapshot after every event so accounts leave memory at once) answers
    /// every command exactly as one that stayed in memory: the same events, byte for byte.
    #[test]
    fn a_cold_account_answers_as_a_hot_one(
        steps in proptest::collection::vec((0u8..6, 0u8..5, 0u8..8, proptest::bool::weighted(0.3)), 1..70)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (hot_dir, cold_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hot = test_config(hot_dir.path());
        let mut cold = test_config(cold_dir.path());
        cold.memory.accounts_cached = 1;
        cold.writer.snapshot_every_events = 1;
        let (h, c) = rt.block_on(async { (answers_of(&hot, &steps).await, answers_of(&cold, &steps).await) });
        proptest::prop_assert_eq!(h.0, c.0);
    }
}

/// The same over a long fixed run, which must have read accounts back from disk (so the
/// comparison above is not between two ledgers that both kept everything in memory), while
/// the one with room for every account read none back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cache_reads_accounts_back_and_answers_the_same() {
    let steps: Vec<Step> = (0..120u32)
        .map(|i| ((i % 6) as u8, (i / 6 % 5) as u8, (i % 8) as u8, i % 7 == 3))
        .collect();
    let (hot_dir, cold_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hot = test_config(hot_dir.path());
    let mut cold = test_config(cold_dir.path());
    cold.memory.accounts_cached = 1;
    cold.writer.snapshot_every_events = 1;
    let (h, c) = (answers_of(&hot, &steps).await, answers_of(&cold, &steps).await);
    assert_eq!(h.0, c.0, "the same events, byte for byte");
    assert!(c.0.iter().filter(|r| r.is_ok()).count() > 100, "{:?}", c.0);
    // New accounts are looked for once each; the rest are cold ones read back.
    assert!(c.1 > 60, "the tiny cache read {} rows back", c.1);
    assert_eq!(
        h.1, 18,
        "room for every account: each looked for only when new, by the pre-check, the writer and the read model"
    );
}

/// A start that folds a whole log into a small cache (as after a restore, or with no snapshot):
/// the catch-up writes snapshots as it goes, so that it ends holding about the cache's worth of
/// accounts, and what it built equals a fold of the log.
#[test]
fn a_long_catch_up_into_a_small_cache_ends_with_the_whole_fold() {
    let dir = tempfile::tempdir().unwrap();
    // The ledger's secret first (a log without its check value is refused), then the events.
    bindledger::ledger::store::Store::open(dir.path())
        .unwrap()
        .check_secret(&LedgerSecret::from_bytes(SECRET).check_value())
        .unwrap();
    let store = bindledger_fixture::write_log(dir.path(), 30_000).unwrap();
    let events: Vec<Event> = store.scan_events(1).map(|r| decode(&r.unwrap().1).unwrap()).collect();
    let accounts: std::collections::HashSet<&str> = events.iter().map(|e| e.account.as_str()).collect();
    assert!(accounts.len() > 10_000, "{} accounts", accounts.len());
    drop(store);
    let mut config = test_config(dir.path());
    config.memory.accounts_cached = 100;
    let (l, _) = open(&config);
    let cache = l.account_cache();
    assert!(cache.accounts <= 100, "{cache:?}");
    assert!(cache.wallets <= 100, "{cache:?}");
    assert_eq!(l.projection().unwrap(), Projection::rebuild(events.iter()));
    l.close();
}

/// A shard of a cluster (issue 29) takes commands for the accounts whose slots the map gives it
/// and refuses the others (`misdirected`), writing nothing; a command already past the entry
/// check when its slot moves away (here: waiting on a slow provider) is refused by the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_decides_only_the_accounts_it_owns_when_it_decides() {
    use bindledger::domain::shard::{slot_of, ShardEntry, ShardMap};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.gateway.simulated.latency_ms = 400;
    let (l, g) = open(&config);
    let entry = |i: u16| ShardEntry {
        url: format!("http://127.0.0.1:{}", 9000 + i),
        events_topic: format!("e{i}"),
        checkpoints_topic: format!("c{i}"),
    };
    let map = ShardMap::even([("s0".to_owned(), entry(0)), ("s1".to_owned(), entry(1))].into()).unwrap();
    let mine: Vec<String> = (0..)
        .map(|i| format!("m-{i}"))
        .filter(|a| map.owner(a) == "s0")
        .take(2)
        .collect();
    let theirs = (0..).map(|i| format!("t-{i}")).find(|a| map.owner(a) == "s1").unwrap();
    // Alone, the ledger owns everyone.
    let b0 = bind(&l, &g, &mine[0], 1).await;
    bind(&l, &g, &theirs, 2).await;
    l.ownership().follow("s0", Arc::new(map.clone()));
    let before = l.log_len();
    let refused = l
        .bind(bind_request(&g, 3, None).validate(&theirs, Utc::now()).unwrap())
        .await;
    assert!(matches!(refused, Err(Error::Misdirected)), "{refused:?}");
    assert_eq!(l.log_len(), before, "a refusal writes nothing");
    bind(&l, &g, &mine[1], 4).await;
    assert_eq!(l.log_len(), before + 1);

    // A payment waits on the provider while its slot moves to s1: the writer refuses it.
    let paying = {
        let (l, req) = (l.clone(), pay_request(&g, 1, b0, 500, Some("k"), None));
        let account = mine[0].clone();
        tokio::spawn(async move { l.pay(req.validate(&account, Utc::now()).unwrap()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let moved = map.with_slot_moved(slot_of(&mine[0]) as u32, "s1").unwrap();
    l.ownership().follow("s0", Arc::new(moved));
    let r = paying.await.unwrap();
    assert!(matches!(r, Err(Error::Misdirected)), "{r:?}");
    assert_eq!(l.log_len(), before + 1, "nothing decided for a slot that left");
    l.close();
}
