//! Each rule: a sequence that fires it, one just under the threshold, one whose events fall
//! outside the window, and suppression of repeats. Then determinism across a checkpoint and
//! the bounds on state.

use bindledger_events::{BindFailure, Currency, Event, Factor, Hash, Payload, PaymentFailure};
use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

use super::engine::{AlertChange, Engine, EngineState};
use super::rules::RuleSet;

/// Builds a log: events in order, times in seconds from a fixed start.
struct Log {
    events: Vec<Event>,
    versions: std::collections::HashMap<String, u64>,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap()
}

use crate::testing::{alipay, wallet};

fn binding(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

impl Log {
    fn new() -> Log {
        Log {
            events: Vec::new(),
            versions: Default::default(),
        }
    }
    fn at(&mut self, secs: i64, account: &str, payload: Payload) -> &mut Log {
        let seq = self.events.len() as u64 + 1;
        let v = self.versions.entry(account.to_owned()).or_default();
        *v += 1;
        self.events.push(crate::testing::event(
            seq,
            account,
            *v,
            t0() + Duration::seconds(secs),
            payload,
        ));
        self
    }
    fn wrong_password(&mut self, secs: i64, account: &str) -> &mut Log {
        self.at(
            secs,
            account,
            Payload::PaymentFailed {
                binding_id: binding(1),
                order_id: "o".into(),
                amount_minor: 100,
                currency: Currency::CNY,
                factors: vec![],
                reason: PaymentFailure::WrongPassword,
            },
        )
    }
    fn bind_failed(&mut self, secs: i64, account: &str, reason: BindFailure) -> &mut Log {
        self.at(
            secs,
            account,
            Payload::BindFailed {
                provider: alipay(),
                wallet: wallet(9),
                factors: vec![],
                reason,
            },
        )
    }
    fn bound(&mut self, secs: i64, account: &str, b: u128, w: u8) -> &mut Log {
        self.at(
            secs,
            account,
            Payload::WalletBound {
                binding_id: binding(b),
                provider: alipay(),
                wallet: wallet(w),
                factors: vec![],
                agreement_id: "agr".into(),
            },
        )
    }
    fn unbound(&mut self, secs: i64, account: &str, b: u128, w: u8) -> &mut Log {
        self.at(
            secs,
            account,
            Payload::WalletUnbound {
                binding_id: binding(b),
                provider: alipay(),
                wallet: wallet(w),
            },
        )
    }
    fn paid(&mut self, secs: i64, account: &str, b: u128, amount_minor: i64) -> &mut Log {
        self.at(
            secs,
            account,
            Payload::PaymentSucceeded {
                binding_id: binding(b),
                provider: alipay(),
                wallet: wallet(1),
                order_id: "o".into(),
                amount_minor,
                currency: Currency::CNY,
                factors: vec![],
                authorization_id: "auth".into(),
            },
        )
    }
    /// The changes a rebuild makes; every rule's test also checks that an engine holding no
    /// key beyond the ones in flight, reading each back from its row, makes the same.
    fn run(&self, rules: RuleSet) -> Vec<AlertChange> {
        let changes = super::engine::rebuild(rules.clone(), &self.events);
        if self.events.len() <= 5_000 {
            let backed = run_backed(self, rules, 0, 1, 0, None);
            assert!(backed.changes == changes, "an engine reading its keys back differs");
        }
        changes
    }
}

fn opened(changes: &[AlertChange], rule: &str) -> usize {
    changes
        .iter()
        .filter(|c| c.alert.rule == rule && c.change == "opened")
        .count()
}

fn rules() -> RuleSet {
    RuleSet::default()
}

// ---- password brute force: 5 wrong passwords within 10 min ----

#[test]
fn brute_force_fires_at_five_wrong_passwords_within_ten_minutes() {
    let mut log = Log::new();
    for i in 0..5 {
        log.wrong_password(i * 60, "mallory");
    }
    let changes = log.run(rules());
    assert_eq!(changes.len(), 1);
    let a = &changes[0].alert;
    assert_eq!(
        (a.rule.as_str(), a.key.kind.as_str(), a.key.value.as_str()),
        ("password_brute_force", "account", "mallory")
    );
    assert_eq!((a.observed, a.threshold, a.unit.as_str()), (5, 5, "wrong_passwords"));
    assert_eq!(a.id, "password_brute_force-5");
    assert_eq!(a.event_seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(a.event_ids, log.events.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(a.window_end, t0() + Duration::minutes(4));
    assert_eq!(a.window_start, t0() + Duration::minutes(4) - Duration::minutes(10));
    assert_eq!(a.opened_at, t0() + Duration::minutes(4));
    assert_eq!(changes[0].stream_seq, 1);
    assert!(a.lock.is_some(), "locking is on by default");
}

#[test]
fn brute_force_just_under_or_spread_out_does_not_fire() {
    let mut under = Log::new();
    for i in 0..4 {
        under.wrong_password(i * 60, "mallory");
    }
    assert!(under.run(rules()).is_empty());
    // Five, but the first falls out of the window by one second; other accounts do not count.
    let mut spread = Log::new();
    spread.wrong_password(0, "mallory");
    for i in 0..4 {
        spread.wrong_password(601 + i, "mallory");
        spread.wrong_password(601 + i, "someone-else");
    }
    assert!(spread.run(rules()).is_empty());
}

#[test]
fn brute_force_repeats_update_the_open_alert_and_a_lock_is_asked_for() {
    let mut r = rules();
    r.password_brute_force.lock = true;
    let mut log = Log::new();
    for i in 0..8 {
        log.wrong_password(i * 10, "mallory");
    }
    let changes = log.run(r.clone());
    assert_eq!(opened(&changes, "password_brute_force"), 1);
    assert_eq!(changes.len(), 4, "one opening, then three updates");
    assert!(changes[1..]
        .iter()
        .all(|c| c.change == "updated" && c.alert.id == changes[0].alert.id));
    let last = &changes[3].alert;
    assert_eq!(
        (last.revision, last.matches, last.observed, last.position),
        (4, 4, 8, 8)
    );
    assert_eq!(last.event_seqs, (1..=8).collect::<Vec<_>>());
    let lock = changes[0].alert.lock.as_ref().expect("lock asked for");
    assert_eq!((lock.account.as_str(), lock.binding_id), ("mallory", binding(1)));
    assert_eq!(lock.until, t0() + Duration::seconds(40) + Duration::minutes(30));
    // After the cool-down (30 min after the last match) a new burst opens a new alert.
    for i in 0..5 {
        log.wrong_password(70 + 1800 + i, "mallory");
    }
    let changes = log.run(r);
    assert_eq!(opened(&changes, "password_brute_force"), 2);
}

/// Regression (issue 13): twelve wrong passwords sent within a second but dated eleven
/// minutes apart going back four hours raised no alert, and six dated two hours ago had
/// their lock released at once as expired. Windows and locks run on `record_time`.
#[test]
fn brute_force_windows_run_on_the_ledgers_clock_not_the_callers() {
    let mut log = Log::new();
    for i in 0..12i64 {
        log.wrong_password(0, "mallory");
        let e = log.events.last_mut().unwrap();
        e.record_time = t0() + Duration::milliseconds(i * 80);
        e.event_time = t0() - Duration::minutes(11 * (12 - i));
    }
    let changes = log.run(rules());
    assert_eq!(
        opened(&changes, "password_brute_force"),
        1,
        "backdating does not spread the guesses out"
    );
    let a = &changes[0].alert;
    assert_eq!(a.opened_at, t0() + Duration::milliseconds(4 * 80));
    let lock = a.lock.as_ref().expect("locking is on by default");
    assert_eq!(
        lock.until,
        a.opened_at + Duration::minutes(30),
        "the lock lasts from the ledger's time"
    );
}

/// Regression (issue 13): after a manual unlock, twenty more wrong passwords only updated
/// the alert. Guessing after an unlock locks the binding again, once `threshold` more were
/// recorded, under a lock key of its own.
#[test]
fn guessing_after_an_unlock_locks_again() {
    let mut log = Log::new();
    for i in 0..5 {
        log.wrong_password(i, "mallory");
    }
    let mut engine = Engine::new(rules());
    let apply_all = |engine: &mut Engine, log: &Log, from: usize| -> Vec<AlertChange> {
        log.events[from..].iter().flat_map(|e| engine.apply(e)).collect()
    };
    let changes = apply_all(&mut engine, &log, 0);
    let alert_id = changes[0].alert.id.clone();
    assert_eq!(
        engine.state.pending_locks.keys().cloned().collect::<Vec<_>>(),
        vec![alert_id.clone()]
    );
    let until = t0() + Duration::minutes(30);
    log.at(
        6,
        "mallory",
        Payload::BindingLocked {
            binding_id: binding(1),
            alert_id: alert_id.clone(),
            until,
        },
    );
    log.at(
        60,
        "mallory",
        Payload::BindingUnlocked {
            binding_id: binding(1),
            alert_id: alert_id.clone(),
            cause: bindledger_events::UnlockCause::Manual,
        },
    );
    let mut from = 5;
    apply_all(&mut engine, &log, from);
    from = log.events.len();
    assert!(engine.state.pending_locks.is_empty() && engine.state.locks.is_empty());
    for i in 0..4 {
        log.wrong_password(61 + i, "mallory");
    }
    let quiet = apply_all(&mut engine, &log, from);
    assert!(
        quiet.is_empty(),
        "four guesses after the unlock are under the threshold: {quiet:?}"
    );
    from = log.events.len();
    log.wrong_password(70, "mallory");
    let again = apply_all(&mut engine, &log, from);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].change.as_str(), again[0].alert.id.as_str()),
        ("updated", alert_id.as_str())
    );
    let key = format!("{alert_id}#{}", log.events.len());
    assert_eq!(
        engine.state.pending_locks.keys().cloned().collect::<Vec<_>>(),
        vec![key.clone()]
    );
    assert!(super::engine::is_lock_of(&key, &alert_id));
    assert_eq!(super::engine::alert_of_lock(&key), alert_id);
    // The lock event (same alert id) clears it; a rebuild from the log agrees.
    log.at(
        71,
        "mallory",
        Payload::BindingLocked {
            binding_id: binding(1),
            alert_id: alert_id.clone(),
            until,
        },
    );
    apply_all(&mut engine, &log, log.events.len() - 1);
    assert!(engine.state.pending_locks.is_empty());
    assert_eq!(engine.state.locks.len(), 1);
    let mut rebuilt = Engine::new(rules());
    for e in &log.events {
        rebuilt.apply(e);
    }
    assert_eq!(rebuilt.state, engine.state);
    // So does an engine that reads each key back from its row (the unlock's reset included).
    assert_eq!(log.run(rules()).len(), 2);
}

// ---- bind failure burst: 5 failed binds (wrong input / failed factor) within 10 min ----

#[test]
fn bind_failure_burst() {
    let wrong = || BindFailure::InvalidInput {
        field: "payment_password".into(),
    };
    let factor = || BindFailure::VerificationFactorFailed { factor: Factor::Sms };
    let mut log = Log::new();
    for i in 0..5 {
        log.bind_failed(i * 100, "eve", if i % 2 == 0 { wrong() } else { factor() });
    }
    let c = log.run(rules());
    assert_eq!((opened(&c, "bind_failure_burst"), c[0].alert.observed), (1, 5));
    // Four, or five with one of another kind (network), or spread over more than 10 minutes.
    let mut under = Log::new();
    for i in 0..4 {
        under.bind_failed(i, "eve", wrong());
    }
    under.bind_failed(5, "eve", BindFailure::Network);
    assert!(under.run(rules()).is_empty());
    let mut spread = Log::new();
    for i in 0..5 {
        spread.bind_failed(i * 151, "eve", wrong());
    }
    assert!(spread.run(rules()).is_empty());
    // Repeats update.
    log.bind_failed(501, "eve", wrong()).bind_failed(502, "eve", factor());
    let c = log.run(rules());
    assert_eq!((opened(&c, "bind_failure_burst"), c.len()), (1, 3));
}

// ---- bind then drain: >= 5,000.00 CNY within 30 min of a bind, with that binding ----

#[test]
fn bind_then_drain() {
    let mut log = Log::new();
    log.bound(0, "victim", 7, 1)
        .paid(60, "victim", 7, 200_000)
        .paid(120, "victim", 7, 300_000);
    let c = log.run(rules());
    assert_eq!(opened(&c, "bind_then_drain"), 1);
    let a = &c[0].alert;
    assert_eq!(
        (a.observed, a.threshold, a.currency),
        (500_000, 500_000, Some(Currency::CNY))
    );
    assert_eq!(a.event_seqs, vec![1, 2, 3], "the bind and the payments");
    assert_eq!(a.window_start, t0());
    // One minor unit under; or the second payment 30 min + 1 s after the bind; or another binding.
    let mut under = Log::new();
    under
        .bound(0, "victim", 7, 1)
        .paid(60, "victim", 7, 200_000)
        .paid(120, "victim", 7, 299_999);
    assert!(under.run(rules()).is_empty());
    let mut late = Log::new();
    late.bound(0, "victim", 7, 1)
        .paid(60, "victim", 7, 200_000)
        .paid(1801, "victim", 7, 300_000);
    assert!(late.run(rules()).is_empty());
    let mut other = Log::new();
    other
        .bound(0, "victim", 7, 1)
        .bound(1, "victim", 8, 2)
        .paid(60, "victim", 7, 200_000)
        .paid(120, "victim", 8, 300_000);
    assert!(other.run(rules()).is_empty());
    // More payments update the open alert.
    log.paid(180, "victim", 7, 100_000);
    let c = log.run(rules());
    assert_eq!(
        (c.len(), c[1].change.as_str(), c[1].alert.observed),
        (2, "updated", 600_000)
    );
}

// ---- shared wallet: one fingerprint bound to >= 3 accounts within 24 h ----

#[test]
fn shared_wallet() {
    let mut log = Log::new();
    log.bound(0, "a1", 1, 5).bound(3600, "a2", 2, 5).bound(7200, "a3", 3, 5);
    let c = log.run(rules());
    assert_eq!(opened(&c, "shared_wallet"), 1);
    let a = &c[0].alert;
    assert_eq!(
        (a.key.kind.as_str(), a.key.value.clone()),
        ("wallet", Hash([5; 32]).to_hex())
    );
    assert_eq!((a.observed, a.unit.as_str()), (3, "accounts"));
    assert_eq!(a.accounts, vec!["a1", "a2", "a3"]);
    // Two accounts (one of them binding twice), or the third a day and a second later.
    let mut under = Log::new();
    under
        .bound(0, "a1", 1, 5)
        .unbound(10, "a1", 1, 5)
        .bound(20, "a1", 4, 5)
        .bound(30, "a2", 2, 5);
    assert!(under.run(rules()).is_empty());
    let mut late = Log::new();
    late.bound(0, "a1", 1, 5)
        .bound(10, "a2", 2, 5)
        .bound(86_401, "a3", 3, 5);
    assert!(late.run(rules()).is_empty());
    // A fourth account updates the alert.
    log.bound(7300, "a4", 4, 5);
    let c = log.run(rules());
    assert_eq!((c.len(), c[1].alert.observed), (2, 4));
    assert_eq!(c[1].alert.accounts, vec!["a1", "a2", "a3", "a4"]);
}

// ---- binding churn: >= 3 bind/unbind cycles within 1 h ----

#[test]
fn binding_churn() {
    let mut log = Log::new();
    for i in 0..3u128 {
        let s = i as i64 * 600;
        log.bound(s, "c", i, 1).unbound(s + 60, "c", i, 1);
    }
    let c = log.run(rules());
    assert_eq!(opened(&c, "binding_churn"), 1);
    assert_eq!((c[0].alert.observed, c[0].alert.unit.as_str()), (3, "cycles"));
    // Two cycles; or three where the first ended over an hour before the last.
    let mut under = Log::new();
    under
        .bound(0, "c", 0, 1)
        .unbound(60, "c", 0, 1)
        .bound(120, "c", 1, 1)
        .unbound(180, "c", 1, 1)
        .bound(240, "c", 2, 1);
    assert!(under.run(rules()).is_empty());
    let mut slow = Log::new();
    for i in 0..3u128 {
        let s = i as i64 * 1900;
        slow.bound(s, "c", i, 1).unbound(s + 60, "c", i, 1);
    }
    assert!(slow.run(rules()).is_empty());
    // A fourth cycle updates.
    log.bound(2000, "c", 9, 1).unbound(2100, "c", 9, 1);
    let c = log.run(rules());
    assert_eq!((c.len(), c[1].change.as_str()), (2, "updated"));
}

// ---- amount spike: a payment > 10x the median of the account's last 20 ----

#[test]
fn amount_spike() {
    let mut log = Log::new();
    log.bound(0, "s", 1, 1);
    for i in 0..5 {
        log.paid(10 + i, "s", 1, 1000 + i * 10); // median 1020
    }
    log.paid(100, "s", 1, 10_201);
    let c = log.run(rules());
    assert_eq!(opened(&c, "amount_spike"), 1);
    assert_eq!((c[0].alert.observed, c[0].alert.threshold), (10_201, 10_200));
    // Exactly ten times is not above it.
    let mut at = Log::new();
    at.bound(0, "s", 1, 1);
    for i in 0..5 {
        at.paid(10 + i, "s", 1, 1000 + i * 10);
    }
    at.paid(100, "s", 1, 10_200);
    assert_eq!(opened(&at.run(rules()), "amount_spike"), 0);
    // Too little history to judge (4 payments).
    let mut short = Log::new();
    short.bound(0, "s", 1, 1);
    for i in 0..4 {
        short.paid(10 + i, "s", 1, 1000);
    }
    short.paid(100, "s", 1, 1_000_000);
    assert_eq!(opened(&short.run(rules()), "amount_spike"), 0);
    // The median is of the last 20: old small payments pushed out by 20 large ones.
    let mut window = Log::new();
    window.bound(0, "s", 1, 1);
    for i in 0..20 {
        window.paid(10 + i, "s", 1, 10);
    }
    for i in 0..20 {
        window.paid(100 + i, "s", 1, 5_000);
    }
    window.paid(200, "s", 1, 40_000);
    let c = window.run(rules());
    assert!(
        c.iter()
            .any(|c| c.alert.rule == "amount_spike" && c.alert.position == 22),
        "5,000 after twenty payments of 10"
    );
    assert!(
        !c.iter()
            .any(|c| c.alert.rule == "amount_spike" && c.alert.position == 42),
        "40,000 is not above 10 x 5,000"
    );
    // A second spike within the cool-down updates the alert.
    log.paid(200, "s", 1, 50_000);
    let c = log.run(rules());
    assert_eq!((opened(&c, "amount_spike"), c.len()), (1, 2));
}

// ---- dead wallet probing: >= 3 binds with frozen or closed wallets within 1 h ----

#[test]
fn dead_wallet_probing() {
    let mut log = Log::new();
    log.bind_failed(0, "p", BindFailure::WalletFrozen)
        .bind_failed(600, "p", BindFailure::WalletClosed)
        .bind_failed(1200, "p", BindFailure::WalletFrozen);
    let c = log.run(rules());
    assert_eq!(
        (opened(&c, "dead_wallet_probing"), c[0].alert.severity),
        (1, super::Severity::High)
    );
    let mut under = Log::new();
    under
        .bind_failed(0, "p", BindFailure::WalletFrozen)
        .bind_failed(1, "p", BindFailure::WalletClosed)
        .bind_failed(2, "p", BindFailure::Network);
    assert!(under.run(rules()).is_empty());
    let mut slow = Log::new();
    slow.bind_failed(0, "p", BindFailure::WalletFrozen)
        .bind_failed(1800, "p", BindFailure::WalletFrozen)
        .bind_failed(3601, "p", BindFailure::WalletFrozen);
    assert!(slow.run(rules()).is_empty());
    log.bind_failed(1300, "p", BindFailure::WalletClosed);
    let c = log.run(rules());
    assert_eq!((c.len(), c[1].change.as_str(), c[1].alert.observed), (2, "updated", 4));
}

/// Wrong payment passwords on binds of one wallet: from several accounts it is stuffing (a
/// wallet alert naming them); from one account alone it is not (that is `bind_failure_burst`).
#[test]
fn password_stuffing() {
    let wrong = || BindFailure::InvalidInput {
        field: "payment_password".into(),
    };
    let mut log = Log::new();
    for (i, account) in ["s1", "s2", "s3", "s4", "s5"].iter().enumerate() {
        log.bind_failed(i as i64 * 60, account, wrong());
    }
    let c = log.run(rules());
    assert_eq!(opened(&c, "password_stuffing"), 1, "{c:?}");
    let a = &c.iter().find(|c| c.alert.rule == "password_stuffing").unwrap().alert;
    assert_eq!((a.key.kind.as_str(), a.accounts.len(), a.observed), ("wallet", 5, 5));
    let mut alone = Log::new();
    for i in 0..6 {
        alone.bind_failed(i, "one", wrong());
    }
    assert_eq!(opened(&alone.run(rules()), "password_stuffing"), 0);
    // A wrong wallet number is not a password guess, and the window is ten minutes.
    let mut other = Log::new();
    for (i, account) in ["s1", "s2", "s3", "s4", "s5"].iter().enumerate() {
        other.bind_failed(
            i as i64,
            account,
            BindFailure::InvalidInput {
                field: "wallet_account".into(),
            },
        );
    }
    assert_eq!(opened(&other.run(rules()), "password_stuffing"), 0);
    let mut slow = Log::new();
    for (i, account) in ["s1", "s2", "s3", "s4", "s5"].iter().enumerate() {
        slow.bind_failed(i as i64 * 200, account, wrong());
    }
    assert_eq!(opened(&slow.run(rules()), "password_stuffing"), 0);
}

#[test]
fn a_disabled_rule_is_silent() {
    let mut r = rules();
    r.dead_wallet_probing.enabled = false;
    let mut log = Log::new();
    for i in 0..5 {
        log.bind_failed(i, "p", BindFailure::WalletFrozen);
    }
    assert!(log.run(r).is_empty());
}

/// A mixed workload with every rule firing.
fn busy_log(n: usize) -> Log {
    let mut log = Log::new();
    let mut rng = crate::testing::Rng(7);
    for i in 0..n as i64 {
        let account = format!("acct-{}", rng.next_u64() % 12);
        let w = (rng.next_u64() % 40) as u8;
        let b = (rng.next_u64() % 6) as u128;
        match rng.next_u64() % 8 {
            0 => log.wrong_password(i, &account),
            1 => log.bind_failed(
                i,
                &account,
                BindFailure::InvalidInput {
                    field: if w % 2 == 0 {
                        "wallet_account"
                    } else {
                        "payment_password"
                    }
                    .into(),
                },
            ),
            2 => log.bind_failed(i, &account, BindFailure::WalletFrozen),
            3 => log.bound(i, &account, b, w),
            4 => log.unbound(i, &account, b, w),
            _ => {
                let amount = if rng.next_u64() % 40 == 0 {
                    300_000
                } else {
                    (rng.next_u64() % 3000) as i64 + 1
                };
                log.paid(i, &account, b, amount)
            }
        };
    }
    log
}

/// Checkpoints written as deltas (only the keys touched since the one before, removals included)
/// add up to the whole state: rebuilt from the stored rows at any cut, the engine resumes and
/// raises exactly what a straight run does.
#[test]
fn incremental_checkpoints_add_up_to_the_whole_state() {
    let log = busy_log(20_000);
    let mut r = rules();
    r.password_brute_force.lock = true;
    // Short windows, so that sweeps drop keys between checkpoints.
    r.amount_spike.forget_after = super::rules::Span::secs(300);
    let straight = log.run(r.clone());
    let mut engine = Engine::new(r.clone());
    let mut stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut open: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut header = Vec::new();
    let mut store = |delta: super::engine::StateDelta, header: &mut Vec<u8>| {
        for (k, v) in delta.rows {
            match v {
                Some(v) => stored.insert(k, v),
                None => stored.remove(&k),
            };
        }
        for (slot, v) in delta.open {
            match v {
                Some(v) => open.insert(slot, v),
                None => open.remove(&slot),
            };
        }
        *header = delta.header;
        (stored.clone(), open.clone())
    };
    let mut changes = Vec::new();
    let mut first = true;
    for (i, e) in log.events.iter().enumerate() {
        changes.extend(engine.apply(e));
        if (i + 1) % 1_777 == 0 {
            let delta = if std::mem::take(&mut first) {
                engine.full()
            } else {
                engine.delta()
            };
            let (rows, open) = store(delta, &mut header);
            let mut rebuilt = EngineState::from_rows(&header, rows).unwrap();
            assert!(EngineState::open_in_rows(&header));
            for (slot, alert) in open {
                rebuilt.put_open(&slot, &alert).unwrap();
            }
            assert_eq!(rebuilt, engine.state, "the stored rows at event {}", i + 1);
            if (i + 1) % (1_777 * 3) == 0 {
                // Resume from what is stored, as a restart does.
                engine = Engine::resume(r.clone(), rebuilt);
            }
        }
    }
    assert_eq!(changes, straight);
}

#[test]
fn resuming_from_a_checkpoint_raises_exactly_what_a_straight_run_does() {
    let log = busy_log(20_000);
    let mut r = rules();
    r.password_brute_force.lock = true;
    let straight = log.run(r.clone());
    for rule in super::rules::RULE_NAMES {
        assert!(opened(&straight, rule) > 0, "{rule} fired in the workload");
    }
    for cut in [1usize, 4096, 9_999] {
        let mut first = Engine::new(r.clone());
        let mut changes: Vec<AlertChange> = log.events[..cut].iter().flat_map(|e| first.apply(e)).collect();
        let saved = serde_json::to_vec(&first.state).unwrap();
        let state: EngineState = serde_json::from_slice(&saved).unwrap();
        let mut second = Engine::resume(r.clone(), state);
        changes.extend(log.events[cut..].iter().flat_map(|e| second.apply(e)));
        assert_eq!(changes, straight, "cut at {cut}");
    }
}

#[test]
fn state_is_bounded_by_windows() {
    let mut engine = Engine::new(rules());
    let mut log = Log::new();
    // 10,000 accounts each trying one wrong password, a minute apart: about ten of them are
    // within the ten minutes the rule looks back at any time.
    for i in 0..10_000i64 {
        log.wrong_password(i * 60, &format!("a{i}"));
    }
    for e in &log.events {
        engine.apply(e);
    }
    assert!(
        engine.keys() <= 11 + super::engine::SWEEP_EVERY as usize,
        "keys: {}",
        engine.keys()
    );
    // Long after, everything has expired.
    let mut later = Log::new();
    later.events = log.events.clone();
    later.versions = log.versions.clone();
    for i in 0..super::engine::SWEEP_EVERY as i64 {
        later.bind_failed(10_000_000 + i, "quiet", BindFailure::Network);
    }
    let mut engine = Engine::new(rules());
    for e in &later.events {
        engine.apply(e);
    }
    assert!(engine.keys() <= 1, "all windows expired: {}", engine.keys());
}

/// What a run of an engine backed by stored rows did.
struct BackedRun {
    changes: Vec<AlertChange>,
    rows_read: u64,
    /// The most keys held at once beyond those changed since the last stored checkpoint.
    most_held_clean: usize,
    stale_rows_removed: usize,
}

/// Runs `log` through an engine that holds at most `max` keys in memory and reads the others
/// back from rows, as the live monitor does: a checkpoint every `every` events, stored `lag`
/// events after it is made (the store thread), keys let go once clean, stored rows that expired
/// removed for keys not held, and a restart from the stored header alone at `restart_at`
/// (where everything made so far is stored).
fn run_backed(log: &Log, rules: RuleSet, max: usize, every: usize, lag: usize, restart_at: Option<usize>) -> BackedRun {
    use super::engine::{row_expiry, StateDelta};
    let mut stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut open: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut header = Vec::new();
    let mut in_flight: std::collections::VecDeque<(usize, u64, StateDelta)> = Default::default();
    let mut written = 0u64;
    let mut cursor = Vec::new();
    let mut engine = Engine::backed(rules.clone(), EngineState::default(), max);
    let mut run = BackedRun {
        changes: Vec::new(),
        rows_read: 0,
        most_held_clean: 0,
        stale_rows_removed: 0,
    };
    let store = |delta: StateDelta,
                 stored: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
                 open: &mut std::collections::BTreeMap<String, Vec<u8>>| {
        for (k, v) in delta.rows {
            match v {
                Some(v) => stored.insert(k, v),
                None => stored.remove(&k),
            };
        }
        for (slot, v) in delta.open {
            match v {
                Some(v) => open.insert(slot, v),
                None => open.remove(&slot),
            };
        }
        delta.header
    };
    for (i, e) in log.events.iter().enumerate() {
        if restart_at == Some(i) {
            let position = engine.state.position;
            if position > 0 {
                in_flight.push_back((i, position, engine.delta()));
            }
            for (_, position, delta) in in_flight.drain(..) {
                header = store(delta, &mut stored, &mut open);
                written = position;
            }
            let state = if header.is_empty() {
                EngineState::default()
            } else {
                let mut state = EngineState::from_header(&header).unwrap();
                for (slot, alert) in &open {
                    state.put_open(slot, alert).unwrap();
                }
                state
            };
            run.rows_read += engine.held().unwrap().1;
            engine = Engine::backed(rules.clone(), state, max);
        }
        for key in engine.missing(e) {
            engine.hold(&key, stored.get(key.as_bytes()).map(|v| &v[..])).unwrap();
        }
        run.changes.extend(engine.apply(e));
        if (i + 1) % every == 0 {
            let mut delta = engine.delta();
            // The stored rows that expired, of keys not held, go with the checkpoint: a few
            // rows from where the last look ended, as the monitor does.
            let after = (std::ops::Bound::Excluded(cursor.clone()), std::ops::Bound::Unbounded);
            let looked: Vec<_> = stored.range(after).take(2 * every).collect();
            cursor = looked.last().map_or_else(Vec::new, |(k, _)| (*k).clone());
            for (k, v) in looked {
                let key = String::from_utf8(k.clone()).unwrap();
                if row_expiry(v).unwrap() < engine.high_time() && !engine.holds(&key) {
                    delta.rows.push((k.clone(), None));
                    run.stale_rows_removed += 1;
                }
            }
            in_flight.push_back((i, engine.state.position, delta));
        }
        while in_flight.front().is_some_and(|(at, _, _)| at + lag <= i) {
            let (_, position, delta) = in_flight.pop_front().unwrap();
            header = store(delta, &mut stored, &mut open);
            written = position;
        }
        engine.let_go(written);
        // Keys changed after the last stored checkpoint must stay; the others count.
        let held = engine.held().unwrap().0;
        run.most_held_clean = run.most_held_clean.max(held - engine.pinned(written));
    }
    run.rows_read += engine.held().unwrap().1;
    run
}

/// The rules fire identically with a cache too small to hold all their windows: the engine's
/// answers do not depend on what it held.
#[test]
fn rules_fire_identically_with_a_tiny_cache() {
    let mut log = busy_log(20_000);
    // Then accounts seen once each: their rows expire while the busy ones' go on.
    for j in 0..3_000 {
        log.wrong_password(20_000 + j * 20, &format!("once-{j}"));
    }
    let mut r = rules();
    r.password_brute_force.lock = true;
    // Short windows, so that sweeps drop keys and stored rows expire.
    r.amount_spike.forget_after = super::rules::Span::secs(300);
    let straight = log.run(r.clone());
    for (max, every, lag, restart) in [(0, 25, 0, None), (2, 97, 13, Some(9_001)), (5, 500, 120, Some(12_345))] {
        let run = run_backed(&log, r.clone(), max, every, lag, restart);
        assert!(
            run.changes == straight,
            "max {max}, every {every}, lag {lag}: the changes differ"
        );
        assert!(run.rows_read > 100, "keys were read back: {}", run.rows_read);
        assert!(run.stale_rows_removed > 0, "expired rows were removed");
        assert!(
            run.most_held_clean <= max + 2,
            "held {} clean keys with a bound of {max}",
            run.most_held_clean
        );
    }
}

/// Regression (issue 14): `backtest` and `bindledger verify` printed changes that showed no
/// difference ("observed 3 -> 3, threshold 3 -> 3" for a severity change). Only the fields that
/// differ are shown.
#[test]
fn differences_name_only_the_fields_that_differ() {
    let mut log = Log::new();
    for i in 0..5 {
        log.wrong_password(i, "mallory");
    }
    let was = log.run(rules()).remove(0).alert;
    let mut now = was.clone();
    now.severity = super::Severity::Critical;
    assert_eq!(
        super::differences(&was, &now),
        vec!["severity: \"high\" -> \"critical\"".to_owned()]
    );
    now.observed = 9;
    let d = super::differences(&was, &now);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d.iter().any(|f| f == "observed: 5 -> 9"), "{d:?}");
    assert!(super::differences(&was, &was).is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Events of a few accounts that fire every rule now and then: wrong passwords, failed
    /// binds of both kinds, binds and unbinds of shared wallets, payments large and small.
    fn log_of(steps: &[(u8, u8, u16)]) -> Log {
        let mut log = Log::new();
        let mut t = 0i64;
        for &(a, what, n) in steps {
            t += n as i64 % 300;
            let account = format!("acct-{a}");
            match what {
                0 => {
                    log.wrong_password(t, &account);
                }
                1 => {
                    log.bind_failed(
                        t,
                        &account,
                        BindFailure::InvalidInput {
                            field: "payment_password".into(),
                        },
                    );
                }
                2 => {
                    log.bind_failed(t, &account, BindFailure::WalletFrozen);
                }
                3 => {
                    log.bound(t, &account, (n % 3) as u128 + 1, (n % 4) as u8 + 1);
                }
                4 => {
                    log.unbound(t, &account, (n % 3) as u128 + 1, (n % 4) as u8 + 1);
                }
                _ => {
                    log.paid(t, &account, (n % 3) as u128 + 1, 100 + (n as i64 % 7) * 100_000);
                }
            }
        }
        log
    }

    fn rules_strategy() -> impl Strategy<Value = RuleSet> {
        (1u32..8, 1u32..6, any::<bool>(), 1i64..3600).prop_map(|(bf, churn, lock, window_s)| {
            let mut r = RuleSet::default();
            r.password_brute_force.count.threshold = bf;
            r.password_brute_force.lock = lock;
            r.binding_churn.threshold = churn;
            r.bind_failure_burst.window = super::super::rules::Span::secs(window_s);
            r
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// A checkpoint of the engine's state (as stored: JSON) and a resumed run raise exactly
        /// what an uninterrupted run raises, for arbitrary event streams and rules.
        #[test]
        fn a_checkpoint_and_a_resume_equal_an_uninterrupted_run(
            steps in proptest::collection::vec((0u8..4, 0u8..6, any::<u16>()), 1..150),
            rules in rules_strategy(),
            cut in any::<prop::sample::Index>(),
        ) {
            let log = log_of(&steps);
            let straight = log.run(rules.clone());
            let k = cut.index(log.events.len() + 1);
            let mut first = Engine::new(rules.clone());
            let mut changes: Vec<AlertChange> = log.events[..k].iter().flat_map(|e| first.apply(e)).collect();
            let state: EngineState = serde_json::from_slice(&serde_json::to_vec(&first.state).unwrap()).unwrap();
            let mut second = Engine::resume(rules, state);
            changes.extend(log.events[k..].iter().flat_map(|e| second.apply(e)));
            prop_assert_eq!(changes, straight);
        }

        /// The same with an engine holding at most a few keys, for arbitrary event streams,
        /// rules, checkpoint intervals, storing delays and a restart.
        #[test]
        fn a_tiny_cache_raises_what_an_uncached_run_does(
            steps in proptest::collection::vec((0u8..4, 0u8..6, any::<u16>()), 1..150),
            rules in rules_strategy(),
            max in 0usize..4,
            every in 1usize..20,
            lag in 0usize..10,
            restart in any::<prop::sample::Index>(),
        ) {
            let log = log_of(&steps);
            let straight = log.run(rules.clone());
            let at = restart.index(log.events.len() + 1);
            let run = run_backed(&log, rules, max, every, lag, Some(at));
            prop_assert_eq!(run.changes, straight);
        }
    }
}
