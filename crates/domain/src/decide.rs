//! The business logic: plain functions from (account state, command facts, the provider's
//! answer) to exactly one event payload. No IO, no clock, no randomness: the writer supplies
//! everything, including the new binding's id.
//!
//! Pre-checks run before asking the provider (a bind that would be refused anyway does not
//! bother it); the writer runs the same checks again against the state at decision time.

use bindledger_events::{
    BindFailure, Factor, FactorCheck, LockFailure, Payload, PaymentFailure, Provider, Side, UnbindFailure, UnlockCause,
    WalletRef,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::gateway::GatewayFailure;
use crate::projection::AccountState;

/// Ledger-side policy.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_bindings_per_account: u32,
    pub platform_maintenance: bool,
    /// The inline guard against password guessing, when on.
    pub password_guard: Option<PasswordGuard>,
    /// The inline guard against password stuffing on binds (one wallet, any accounts), when on.
    pub bind_guard: Option<PasswordGuard>,
}

/// At most `threshold` wrong payment passwords on one binding reach the provider within
/// `window` (in `record_time`), counting the attempts still in flight; an unlock gives the
/// binding a fresh budget. Set from the `password_brute_force` rule when `lock` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordGuard {
    pub threshold: u32,
    pub window: chrono::Duration,
}

/// What the guard allows on a binding at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// This many more attempts may reach the provider.
    Left(u32),
    /// None before `until`, when the oldest counted wrong password leaves the window.
    Spent { until: DateTime<Utc> },
}

impl PasswordGuard {
    pub fn threshold(&self) -> usize {
        (self.threshold as usize).min(crate::projection::WRONG_PASSWORDS_KEPT_MAX)
    }

    /// Every payment asks this before the provider: counting allocates nothing, and only a
    /// spent budget (an attack) sorts the times to say when it frees.
    pub fn budget(&self, binding: &crate::projection::Binding, now: DateTime<Utc>) -> Budget {
        self.budget_of(|since| binding.wrong_passwords_after(since).copied(), now)
    }

    /// The same for binds of one wallet, from every account together (its row of the wallet
    /// indexes, [`crate::projection::WalletRow::wrong`]).
    pub fn wallet_budget(&self, wallet: &crate::projection::WalletRow, now: DateTime<Utc>) -> Budget {
        self.budget_of(|since| wallet.wrong_after(since), now)
    }

    /// The budget left at `now`, given the wrong passwords recorded after a time.
    fn budget_of<I: Iterator<Item = DateTime<Utc>>>(
        &self,
        after: impl Fn(DateTime<Utc>) -> I,
        now: DateTime<Utc>,
    ) -> Budget {
        let since = now - self.window;
        let recent = after(since).count();
        let threshold = self.threshold();
        if recent < threshold {
            return Budget::Left((threshold - recent) as u32);
        }
        let mut times: Vec<DateTime<Utc>> = after(since).collect();
        times.sort_unstable();
        Budget::Spent {
            until: times[times.len() - threshold] + self.window,
        }
    }
}

/// What the provider said about a bind, or why it was not asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindVerdict {
    Skipped(BindFailure),
    Verified { agreement_id: String },
    Failed(GatewayFailure),
}

/// What the provider said about a payment, or why it was not asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayVerdict {
    Skipped(PaymentFailure),
    Authorized { authorization_id: String },
    Failed(GatewayFailure),
}

/// The non-secret facts of a bind.
#[derive(Debug, Clone)]
pub struct BindFacts {
    pub provider: Provider,
    pub wallet: WalletRef,
    pub factor: Option<Factor>,
}

/// The non-secret facts of a payment.
#[derive(Debug, Clone)]
pub struct PayFacts {
    pub binding_id: Uuid,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: bindledger_events::Currency,
    pub factor: Option<Factor>,
}

fn factors(password_passed: Option<bool>, factor: Option<(Factor, bool)>) -> Vec<FactorCheck> {
    let mut v = Vec::with_capacity(2);
    if let Some(passed) = password_passed {
        v.push(FactorCheck {
            factor: Factor::Password,
            passed,
        });
    }
    if let Some((factor, passed)) = factor {
        v.push(FactorCheck { factor, passed });
    }
    v
}

/// Which factors were checked, from the provider's answer.
fn checked(success: bool, failure: Option<GatewayFailure>, factor: Option<Factor>) -> Vec<FactorCheck> {
    match (success, failure) {
        (true, _) => factors(Some(true), factor.map(|f| (f, true))),
        (false, Some(GatewayFailure::WrongPassword)) => factors(Some(false), None),
        (false, Some(GatewayFailure::FactorFailed(f))) => factors(Some(true), Some((f, false))),
        _ => Vec::new(),
    }
}

/// Reasons to refuse a bind without asking the provider.
pub fn precheck_bind(acct: Option<&AccountState>, facts: &BindFacts, rules: Rules) -> Option<BindFailure> {
    if rules.platform_maintenance {
        return Some(BindFailure::Maintenance { side: Side::Platform });
    }
    let acct = acct?;
    if let Some(b) = acct.active_with_fingerprint(&facts.wallet.fingerprint) {
        return Some(BindFailure::AlreadyBound {
            binding_id: b.binding_id,
        });
    }
    if acct.active_count() >= rules.max_bindings_per_account as usize {
        return Some(BindFailure::BindingLimitReached {
            limit: rules.max_bindings_per_account,
        });
    }
    None
}

pub fn decide_bind(
    acct: Option<&AccountState>,
    facts: &BindFacts,
    verdict: &BindVerdict,
    rules: Rules,
    new_binding_id: Uuid,
) -> Payload {
    let failed = |reason, factors| Payload::BindFailed {
        provider: facts.provider.clone(),
        wallet: facts.wallet.clone(),
        factors,
        reason,
    };
    let (success, failure) = match verdict {
        BindVerdict::Verified { .. } => (true, None),
        BindVerdict::Failed(f) => (false, Some(*f)),
        BindVerdict::Skipped(_) => (false, None),
    };
    let factor_checks = checked(success, failure, facts.factor);
    if let Some(reason) = precheck_bind(acct, facts, rules) {
        return failed(reason, factor_checks);
    }
    match verdict {
        BindVerdict::Skipped(reason) => failed(reason.clone(), factor_checks),
        BindVerdict::Verified { agreement_id } => Payload::WalletBound {
            binding_id: new_binding_id,
            provider: facts.provider.clone(),
            wallet: facts.wallet.clone(),
            factors: factor_checks,
            agreement_id: agreement_id.clone(),
        },
        BindVerdict::Failed(g) => {
            let reason = match g {
                GatewayFailure::WalletFrozen => BindFailure::WalletFrozen,
                GatewayFailure::WalletClosed => BindFailure::WalletClosed,
                GatewayFailure::UnknownWallet => BindFailure::InvalidInput {
                    field: "wallet_account".into(),
                },
                GatewayFailure::WrongPassword => BindFailure::InvalidInput {
                    field: "payment_password".into(),
                },
                GatewayFailure::FactorFailed(f) => BindFailure::VerificationFactorFailed { factor: *f },
                GatewayFailure::Maintenance => BindFailure::Maintenance { side: Side::Provider },
                // A provider answering a bind with a funds error misbehaves; treat it as a
                // failed exchange, which the user may retry.
                GatewayFailure::Network | GatewayFailure::InsufficientFunds => BindFailure::Network,
            };
            failed(reason, factor_checks)
        }
    }
}

/// Reasons to refuse a payment without asking the provider, at `now` (the ledger's time: a
/// lock is in force before its `until`).
pub fn precheck_pay(
    acct: Option<&AccountState>,
    binding_id: Uuid,
    now: DateTime<Utc>,
    rules: Rules,
) -> Option<PaymentFailure> {
    if rules.platform_maintenance {
        return Some(PaymentFailure::Maintenance { side: Side::Platform });
    }
    match acct.and_then(|a| a.active_binding(binding_id)) {
        Some(b) => b.lock_at(now).map(|l| PaymentFailure::BindingLocked {
            alert_id: l.alert_id.clone(),
            until: l.until,
        }),
        None => Some(PaymentFailure::BindingNotActive),
    }
}

pub fn decide_pay(
    acct: Option<&AccountState>,
    facts: &PayFacts,
    verdict: &PayVerdict,
    rules: Rules,
    now: DateTime<Utc>,
) -> Payload {
    let (success, failure) = match verdict {
        PayVerdict::Authorized { .. } => (true, None),
        PayVerdict::Failed(f) => (false, Some(*f)),
        PayVerdict::Skipped(_) => (false, None),
    };
    let factor_checks = checked(success, failure, facts.factor);
    let failed = |reason, factors| Payload::PaymentFailed {
        binding_id: facts.binding_id,
        order_id: facts.order_id.clone(),
        amount_minor: facts.amount_minor,
        currency: facts.currency,
        factors,
        reason,
    };
    if let Some(reason) = precheck_pay(acct, facts.binding_id, now, rules) {
        return failed(reason, factor_checks);
    }
    let binding = acct
        .and_then(|a| a.active_binding(facts.binding_id))
        .expect("precheck passed");
    match verdict {
        PayVerdict::Skipped(reason) => failed(reason.clone(), factor_checks),
        PayVerdict::Authorized { authorization_id } => Payload::PaymentSucceeded {
            binding_id: facts.binding_id,
            provider: binding.provider.clone(),
            wallet: binding.wallet.clone(),
            order_id: facts.order_id.clone(),
            amount_minor: facts.amount_minor,
            currency: facts.currency,
            factors: factor_checks,
            authorization_id: authorization_id.clone(),
        },
        PayVerdict::Failed(g) => {
            let reason = match g {
                GatewayFailure::WrongPassword => PaymentFailure::WrongPassword,
                GatewayFailure::WalletFrozen => PaymentFailure::WalletFrozen,
                GatewayFailure::WalletClosed | GatewayFailure::UnknownWallet => PaymentFailure::WalletClosed,
                GatewayFailure::InsufficientFunds => PaymentFailure::InsufficientFunds,
                GatewayFailure::FactorFailed(f) => PaymentFailure::VerificationFactorFailed { factor: *f },
                GatewayFailure::Network => PaymentFailure::Network,
                GatewayFailure::Maintenance => PaymentFailure::Maintenance { side: Side::Provider },
            };
            failed(reason, factor_checks)
        }
    }
}

pub fn decide_unbind(acct: Option<&AccountState>, binding_id: Uuid, rules: Rules) -> Payload {
    if rules.platform_maintenance {
        return Payload::UnbindFailed {
            binding_id,
            reason: UnbindFailure::Maintenance { side: Side::Platform },
        };
    }
    match acct.and_then(|a| a.active_binding(binding_id)) {
        Some(b) => Payload::WalletUnbound {
            binding_id,
            provider: b.provider.clone(),
            wallet: b.wallet.clone(),
        },
        None => Payload::UnbindFailed {
            binding_id,
            reason: UnbindFailure::NotBound,
        },
    }
}

/// Locks an active binding until `until` (a newer lock replaces an older one, keeping the
/// later end).
pub fn decide_lock(acct: Option<&AccountState>, binding_id: Uuid, alert_id: &str, until: DateTime<Utc>) -> Payload {
    match acct.and_then(|a| a.active_binding(binding_id)) {
        Some(b) => Payload::BindingLocked {
            binding_id,
            alert_id: alert_id.to_owned(),
            until: b.lock.as_ref().map_or(until, |l| l.until.max(until)),
        },
        None => Payload::BindingLockFailed {
            binding_id,
            alert_id: alert_id.to_owned(),
            reason: LockFailure::NotBound,
        },
    }
}

/// Lifts a binding's lock. An expiry (`cause` expired, made for the lock of `alert_id`) only
/// ends that very lock, and only once its time is over at `now` (the ledger's time).
pub fn decide_unlock(
    acct: Option<&AccountState>,
    binding_id: Uuid,
    cause: UnlockCause,
    alert_id: Option<&str>,
    now: DateTime<Utc>,
) -> Payload {
    let Some(b) = acct.and_then(|a| a.active_binding(binding_id)) else {
        return Payload::BindingUnlockFailed {
            binding_id,
            reason: LockFailure::NotBound,
        };
    };
    let lock = b
        .lock
        .as_ref()
        .filter(|l| alert_id.is_none_or(|id| id == l.alert_id) && (cause == UnlockCause::Manual || l.until <= now));
    match lock {
        Some(l) => Payload::BindingUnlocked {
            binding_id,
            alert_id: l.alert_id.clone(),
            cause,
        },
        None => Payload::BindingUnlockFailed {
            binding_id,
            reason: LockFailure::NotLocked,
        },
    }
}

/// A person's triage of an alert: always recorded (the alert was found before the command
/// was sent; the event is the audit trail of who did what).
pub fn decide_triage(
    alert_id: &str,
    action: bindledger_events::TriageAction,
    operator: &str,
    assignee: Option<&str>,
    note: &str,
) -> Payload {
    Payload::AlertTriaged {
        alert_id: alert_id.to_owned(),
        action,
        operator: operator.to_owned(),
        assignee: assignee.map(str::to_owned),
        note: note.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    //! given(events).when(command).then(event): every outcome and every failure reason.
    use super::*;
    use crate::projection::Projection;
    use bindledger_events::{Currency, Hash};
    use chrono::Utc;

    const RULES: Rules = Rules {
        max_bindings_per_account: 2,
        platform_maintenance: false,
        password_guard: None,
        bind_guard: None,
    };
    const MAINTENANCE: Rules = Rules {
        max_bindings_per_account: 2,
        platform_maintenance: true,
        password_guard: None,
        bind_guard: None,
    };

    use crate::testing::{alipay, wallet};
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn bound(n: u8) -> Payload {
        Payload::WalletBound {
            binding_id: id(n as u128),
            provider: alipay(),
            wallet: wallet(n),
            factors: vec![],
            agreement_id: format!("agr_{n}"),
        }
    }
    fn unbound(n: u8) -> Payload {
        Payload::WalletUnbound {
            binding_id: id(n as u128),
            provider: alipay(),
            wallet: wallet(n),
        }
    }

    /// The account "a" after these events.
    fn given(payloads: Vec<Payload>) -> Projection {
        let mut p = Projection::default();
        for (i, payload) in payloads.into_iter().enumerate() {
            let seq = i as u64 + 1;
            p.apply(&crate::testing::event(seq, "a", seq, Utc::now(), payload));
        }
        p
    }

    fn when_bind(p: &Projection, n: u8, verdict: BindVerdict, rules: Rules) -> Payload {
        let facts = BindFacts {
            provider: alipay(),
            wallet: wallet(n),
            factor: Some(Factor::Sms),
        };
        decide_bind(p.accounts.get("a"), &facts, &verdict, rules, id(99))
    }

    fn bind_reason(p: Payload) -> BindFailure {
        match p {
            Payload::BindFailed { reason, .. } => reason,
            other => panic!("expected bind_failed, got {other:?}"),
        }
    }

    #[test]
    fn bind_succeeds_with_both_factors_recorded() {
        let p = given(vec![]);
        match when_bind(
            &p,
            1,
            BindVerdict::Verified {
                agreement_id: "agr_1".into(),
            },
            RULES,
        ) {
            Payload::WalletBound {
                binding_id,
                factors,
                agreement_id,
                ..
            } => {
                assert_eq!(binding_id, id(99));
                assert_eq!(agreement_id, "agr_1");
                assert_eq!(
                    factors,
                    vec![
                        FactorCheck {
                            factor: Factor::Password,
                            passed: true
                        },
                        FactorCheck {
                            factor: Factor::Sms,
                            passed: true
                        }
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bind_failures_from_the_provider_are_typed() {
        let p = given(vec![]);
        let cases = [
            (GatewayFailure::WalletFrozen, BindFailure::WalletFrozen),
            (GatewayFailure::WalletClosed, BindFailure::WalletClosed),
            (
                GatewayFailure::UnknownWallet,
                BindFailure::InvalidInput {
                    field: "wallet_account".into(),
                },
            ),
            (
                GatewayFailure::WrongPassword,
                BindFailure::InvalidInput {
                    field: "payment_password".into(),
                },
            ),
            (
                GatewayFailure::FactorFailed(Factor::Face),
                BindFailure::VerificationFactorFailed { factor: Factor::Face },
            ),
            (GatewayFailure::Network, BindFailure::Network),
            (
                GatewayFailure::Maintenance,
                BindFailure::Maintenance { side: Side::Provider },
            ),
        ];
        for (g, expected) in cases {
            assert_eq!(
                bind_reason(when_bind(&p, 1, BindVerdict::Failed(g), RULES)),
                expected,
                "{g:?}"
            );
        }
        match when_bind(&p, 1, BindVerdict::Failed(GatewayFailure::WrongPassword), RULES) {
            Payload::BindFailed { factors, .. } => assert_eq!(
                factors,
                vec![FactorCheck {
                    factor: Factor::Password,
                    passed: false
                }]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bind_failures_decided_by_the_ledger() {
        let p = given(vec![bound(1)]);
        let verified = BindVerdict::Verified {
            agreement_id: "x".into(),
        };
        assert_eq!(
            bind_reason(when_bind(&p, 1, verified.clone(), RULES)),
            BindFailure::AlreadyBound { binding_id: id(1) }
        );
        let p = given(vec![bound(1), bound(2)]);
        assert_eq!(
            bind_reason(when_bind(&p, 3, verified.clone(), RULES)),
            BindFailure::BindingLimitReached { limit: 2 }
        );
        let p = given(vec![]);
        assert_eq!(
            bind_reason(when_bind(&p, 3, verified.clone(), MAINTENANCE)),
            BindFailure::Maintenance { side: Side::Platform }
        );
        // After an unbind the same wallet may be bound again.
        let p = given(vec![bound(1), unbound(1)]);
        assert!(matches!(when_bind(&p, 1, verified, RULES), Payload::WalletBound { .. }));
        // A reason found before asking the provider is recorded as it was found.
        let p = given(vec![]);
        assert_eq!(
            bind_reason(when_bind(
                &p,
                1,
                BindVerdict::Skipped(BindFailure::AlreadyBound { binding_id: id(5) }),
                RULES
            )),
            BindFailure::AlreadyBound { binding_id: id(5) }
        );
    }

    fn when_pay(p: &Projection, binding: u128, verdict: PayVerdict, rules: Rules) -> Payload {
        let facts = PayFacts {
            binding_id: id(binding),
            order_id: "o-1".into(),
            amount_minor: 1999,
            currency: Currency::CNY,
            factor: None,
        };
        decide_pay(p.accounts.get("a"), &facts, &verdict, rules, Utc::now())
    }

    fn pay_reason(p: Payload) -> PaymentFailure {
        match p {
            Payload::PaymentFailed {
                reason, amount_minor, ..
            } => {
                assert_eq!(amount_minor, 1999);
                reason
            }
            other => panic!("expected payment_failed, got {other:?}"),
        }
    }

    #[test]
    fn payment_succeeds_on_an_active_binding() {
        let p = given(vec![bound(1)]);
        match when_pay(
            &p,
            1,
            PayVerdict::Authorized {
                authorization_id: "auth_1".into(),
            },
            RULES,
        ) {
            Payload::PaymentSucceeded {
                amount_minor,
                wallet: w,
                authorization_id,
                ..
            } => {
                assert_eq!(
                    (amount_minor, w, authorization_id.as_str()),
                    (1999, wallet(1), "auth_1")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payment_failures_are_typed() {
        let p = given(vec![bound(1)]);
        let cases = [
            (GatewayFailure::WrongPassword, PaymentFailure::WrongPassword),
            (GatewayFailure::WalletFrozen, PaymentFailure::WalletFrozen),
            (GatewayFailure::WalletClosed, PaymentFailure::WalletClosed),
            (GatewayFailure::InsufficientFunds, PaymentFailure::InsufficientFunds),
            (
                GatewayFailure::FactorFailed(Factor::Fingerprint),
                PaymentFailure::VerificationFactorFailed {
                    factor: Factor::Fingerprint,
                },
            ),
            (GatewayFailure::Network, PaymentFailure::Network),
            (
                GatewayFailure::Maintenance,
                PaymentFailure::Maintenance { side: Side::Provider },
            ),
        ];
        for (g, expected) in cases {
            assert_eq!(
                pay_reason(when_pay(&p, 1, PayVerdict::Failed(g), RULES)),
                expected,
                "{g:?}"
            );
        }
        let ok = PayVerdict::Authorized {
            authorization_id: "a".into(),
        };
        // Never bound, unbound, or the binding of another account.
        assert_eq!(
            pay_reason(when_pay(&p, 7, ok.clone(), RULES)),
            PaymentFailure::BindingNotActive
        );
        let p = given(vec![bound(1), unbound(1)]);
        assert_eq!(
            pay_reason(when_pay(&p, 1, ok.clone(), RULES)),
            PaymentFailure::BindingNotActive
        );
        let p = given(vec![bound(1)]);
        assert_eq!(
            pay_reason(when_pay(&p, 1, ok, MAINTENANCE)),
            PaymentFailure::Maintenance { side: Side::Platform }
        );
    }

    #[test]
    fn unbind_outcomes() {
        let p = given(vec![bound(1)]);
        assert_eq!(decide_unbind(p.accounts.get("a"), id(1), RULES), unbound(1));
        assert_eq!(
            decide_unbind(p.accounts.get("a"), id(2), RULES),
            Payload::UnbindFailed {
                binding_id: id(2),
                reason: UnbindFailure::NotBound
            }
        );
        let p = given(vec![bound(1), unbound(1)]);
        assert_eq!(
            decide_unbind(p.accounts.get("a"), id(1), RULES),
            Payload::UnbindFailed {
                binding_id: id(1),
                reason: UnbindFailure::NotBound
            }
        );
        assert_eq!(
            decide_unbind(None, id(1), MAINTENANCE),
            Payload::UnbindFailed {
                binding_id: id(1),
                reason: UnbindFailure::Maintenance { side: Side::Platform }
            }
        );
    }

    #[test]
    fn the_reverse_index_follows_binds_and_unbinds() {
        let p = given(vec![bound(1), bound(2), unbound(1)]);
        assert!(!p.wallets.contains_key(&Hash([1; 32])));
        assert_eq!(p.wallets[&Hash([2; 32])].iter().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(p.accounts["a"].version, 3);
        assert_eq!(p.accounts["a"].active_count(), 1);
    }

    fn locked(n: u8, alert: &str, until: DateTime<Utc>) -> Payload {
        Payload::BindingLocked {
            binding_id: id(n as u128),
            alert_id: alert.into(),
            until,
        }
    }

    #[test]
    fn lock_outcomes_and_payments_on_a_locked_binding() {
        let later = Utc::now() + chrono::Duration::minutes(30);
        let p = given(vec![bound(1)]);
        assert_eq!(
            decide_lock(p.accounts.get("a"), id(1), "al-1", later),
            locked(1, "al-1", later)
        );
        assert_eq!(
            decide_lock(p.accounts.get("a"), id(2), "al-1", later),
            Payload::BindingLockFailed {
                binding_id: id(2),
                alert_id: "al-1".into(),
                reason: LockFailure::NotBound
            }
        );
        // A second lock never shortens the first.
        let p = given(vec![bound(1), locked(1, "al-1", later)]);
        let sooner = later - chrono::Duration::minutes(10);
        assert_eq!(
            decide_lock(p.accounts.get("a"), id(1), "al-2", sooner),
            locked(1, "al-2", later)
        );
        // While locked, a payment fails with the typed reason without asking the provider.
        let ok = PayVerdict::Authorized {
            authorization_id: "a".into(),
        };
        assert_eq!(
            pay_reason(when_pay(&p, 1, ok.clone(), RULES)),
            PaymentFailure::BindingLocked {
                alert_id: "al-1".into(),
                until: later
            }
        );
        // Past `until` (the ledger's time) the lock no longer applies, even before the unlock
        // event.
        let past = given(vec![
            bound(1),
            locked(1, "al-1", Utc::now() - chrono::Duration::seconds(1)),
        ]);
        assert!(matches!(
            when_pay(&past, 1, ok.clone(), RULES),
            Payload::PaymentSucceeded { .. }
        ));
        // Unlocks: manual, expiry only once due and only of the lock it was made for.
        let acct = past.accounts.get("a");
        let now = Utc::now();
        assert_eq!(
            decide_unlock(acct, id(1), UnlockCause::Expired, Some("al-1"), now),
            Payload::BindingUnlocked {
                binding_id: id(1),
                alert_id: "al-1".into(),
                cause: UnlockCause::Expired
            }
        );
        assert_eq!(
            decide_unlock(acct, id(1), UnlockCause::Expired, Some("al-0"), now),
            Payload::BindingUnlockFailed {
                binding_id: id(1),
                reason: LockFailure::NotLocked
            }
        );
        let acct = p.accounts.get("a");
        assert_eq!(
            decide_unlock(acct, id(1), UnlockCause::Expired, Some("al-1"), now),
            Payload::BindingUnlockFailed {
                binding_id: id(1),
                reason: LockFailure::NotLocked
            },
            "not due yet"
        );
        assert_eq!(
            decide_unlock(acct, id(1), UnlockCause::Manual, None, now),
            Payload::BindingUnlocked {
                binding_id: id(1),
                alert_id: "al-1".into(),
                cause: UnlockCause::Manual
            }
        );
        assert_eq!(
            decide_unlock(acct, id(3), UnlockCause::Manual, None, now),
            Payload::BindingUnlockFailed {
                binding_id: id(3),
                reason: LockFailure::NotBound
            }
        );
        // After the unlock event, payments succeed again.
        let p = given(vec![
            bound(1),
            locked(1, "al-1", later),
            Payload::BindingUnlocked {
                binding_id: id(1),
                alert_id: "al-1".into(),
                cause: UnlockCause::Manual,
            },
        ]);
        assert!(matches!(when_pay(&p, 1, ok, RULES), Payload::PaymentSucceeded { .. }));
    }

    #[test]
    fn the_password_guard_counts_recent_wrong_passwords_since_the_last_unlock() {
        let guard = PasswordGuard {
            threshold: 3,
            window: chrono::Duration::minutes(10),
        };
        let wrong = |b: u128| Payload::PaymentFailed {
            binding_id: id(b),
            order_id: "o".into(),
            amount_minor: 1,
            currency: Currency::CNY,
            factors: vec![],
            reason: PaymentFailure::WrongPassword,
        };
        let t0 = Utc::now();
        let at = |mins: i64| t0 + chrono::Duration::minutes(mins);
        // Recorded at minutes 0, 1, 2 (record_time; the event time is the caller's).
        let mut p = Projection::default();
        for (i, (payload, mins)) in [
            (bound(1), 0),
            (wrong(1), 0),
            (wrong(1), 1),
            (wrong(2), 1),
            (wrong(1), 2),
        ]
        .into_iter()
        .enumerate()
        {
            let seq = i as u64 + 1;
            let mut e = crate::testing::event(seq, "a", seq, t0 - chrono::Duration::hours(4), payload);
            e.record_time = at(mins);
            p.apply(&e);
        }
        let b = p.accounts["a"].active_binding(id(1)).unwrap().clone();
        assert_eq!(
            guard.budget(&b, at(2)),
            Budget::Spent { until: at(10) },
            "three wrong passwords within ten minutes"
        );
        assert_eq!(guard.budget(&b, at(10)), Budget::Left(1), "the first left the window");
        assert_eq!(guard.budget(&b, at(13)), Budget::Left(3));
        // An unlock gives a fresh budget.
        let mut e = crate::testing::event(
            6,
            "a",
            6,
            t0,
            Payload::BindingUnlocked {
                binding_id: id(1),
                alert_id: "x".into(),
                cause: UnlockCause::Manual,
            },
        );
        e.record_time = at(3);
        p.apply(&e);
        assert_eq!(
            guard.budget(p.accounts["a"].active_binding(id(1)).unwrap(), at(3)),
            Budget::Left(3)
        );
    }
}
