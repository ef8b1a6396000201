//! The simulated wallet provider used by the demo and the tests: deterministic from a seed and
//! a [`Scenario`] (frozen and closed wallets, unknown accounts, maintenance windows, network
//! errors, balances, passwords, SMS codes and biometric assertions).

use bindledger_events::{Factor, Provider};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use crate::config::{MaintenanceWindow, Scenario};
use crate::domain::gateway::{BindVerification, GatewayFailure, PaymentAuthorization, WalletGateway};
use crate::ledger::clock::{Clock, SystemClock};
use std::sync::Arc;

/// How a simulated wallet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletStatus {
    Active,
    Frozen,
    Closed,
    Unknown,
}

/// Most wallets whose spending the simulator remembers; beyond it, balances start afresh.
const SIMULATED_WALLETS_MAX: usize = 1_000_000;

pub struct SimulatedGateway {
    scenario: Scenario,
    calls: AtomicU64,
    /// Payment authorisations asked for (every one that reached the provider), for tests
    /// that check what the ledger lets through.
    payment_calls: AtomicU64,
    /// Spent minor units per agreement. A std Mutex: held for a map lookup, never across await.
    spent: Mutex<HashMap<String, i64>>,
    /// Recent authorisations not voided yet, for `void_payment`.
    authorizations: Mutex<RecentAuthorizations>,
    /// Where the calls' latency passes: tokio's timers, or the simulator's clock.
    clock: Arc<dyn Clock>,
    /// Calls made, for each call's latency (a counter of its own, so that latency leaves the
    /// other draws as they were).
    latency_calls: AtomicU64,
    /// Calls whose caller stopped waiting before the answer (the ledger's timeout).
    abandoned: AtomicU64,
}

/// Counts a call as abandoned when it is dropped before it answered.
struct Pending<'a>(Option<&'a AtomicU64>);

impl Pending<'_> {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Authorisations the simulator can still void: id -> (agreement, amount). A void follows its
/// authorisation at once (the writer refused the payment), so only the latest are kept, in two
/// generations of at most [`RecentAuthorizations::GENERATION`] each: when the current one is
/// full it becomes the previous one and the oldest generation is dropped. A small table also
/// keeps lookups in cache: a table of every authorisation of a long run turned them into cache
/// misses.
#[derive(Default)]
struct RecentAuthorizations {
    current: HashMap<String, (String, i64)>,
    previous: HashMap<String, (String, i64)>,
}

impl RecentAuthorizations {
    const GENERATION: usize = 32_768;

    fn insert(&mut self, id: String, agreement_and_amount: (String, i64)) {
        if self.current.len() >= Self::GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(id, agreement_and_amount);
    }

    fn remove(&mut self, id: &str) -> Option<(String, i64)> {
        self.current.remove(id).or_else(|| self.previous.remove(id))
    }
}

fn derive(seed: u64, parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

fn number(bytes: &[u8; 32], offset: usize) -> u64 {
    u64::from_be_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// The wallet's six-digit payment password, from its facts digest.
fn password_from(facts: &[u8; 32]) -> [u8; 6] {
    let mut n = number(facts, 8) % 1_000_000;
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits
}

impl SimulatedGateway {
    pub fn new(scenario: Scenario) -> Self {
        SimulatedGateway {
            scenario,
            calls: AtomicU64::new(0),
            payment_calls: AtomicU64::new(0),
            spent: Mutex::new(HashMap::new()),
            authorizations: Mutex::new(RecentAuthorizations::default()),
            clock: Arc::new(SystemClock),
            latency_calls: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    /// The same provider with its calls' latency passing on `clock` (the simulator's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Calls whose caller gave up before the answer came.
    pub fn abandoned_calls(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Binding verifications and payment authorisations made so far.
    pub fn calls_made(&self) -> u64 {
        self.latency_calls.load(Ordering::Relaxed)
    }

    /// How long the last call made takes (see [`SimulatedGateway::latency_of_call`]).
    pub fn last_latency(&self) -> std::time::Duration {
        self.latency_of_call(self.calls_made().saturating_sub(1))
    }

    /// The agreement id the provider issues for a wallet (stable for the wallet).
    pub fn agreement_id(&self, provider: &Provider, wallet_account: &str) -> String {
        let normalized = crate::domain::secret::normalize_wallet_account(wallet_account);
        let d = derive(self.scenario.seed, &["agreement", provider.as_str(), &normalized]);
        format!("agr_{}", hex::encode(&d[..12]))
    }

    fn agreement_facts(&self, agreement: &str) -> [u8; 32] {
        derive(self.scenario.seed, &["facts", agreement])
    }

    /// A wallet's standing, password and starting balance all come from its one facts digest.
    fn wallet_facts(&self, provider: &Provider, wallet_account: &str) -> [u8; 32] {
        self.agreement_facts(&self.agreement_id(provider, wallet_account))
    }

    /// The wallet's standing at its provider.
    pub fn wallet_status(&self, provider: &Provider, wallet_account: &str) -> WalletStatus {
        self.status_from(&self.wallet_facts(provider, wallet_account))
    }

    fn status_from(&self, facts: &[u8; 32]) -> WalletStatus {
        let roll = (number(facts, 0) % 1000) as u32;
        let s = &self.scenario;
        if roll < s.frozen_per_mille {
            WalletStatus::Frozen
        } else if roll < s.frozen_per_mille + s.closed_per_mille {
            WalletStatus::Closed
        } else if roll < s.frozen_per_mille + s.closed_per_mille + s.unknown_per_mille {
            WalletStatus::Unknown
        } else {
            WalletStatus::Active
        }
    }

    /// The wallet's payment password (what its owner knows; six digits).
    pub fn password_for(&self, provider: &Provider, wallet_account: &str) -> String {
        String::from_utf8(password_from(&self.wallet_facts(provider, wallet_account)).to_vec()).expect("digits")
    }

    /// The SMS code the provider sends, or the biometric assertion the owner's device makes.
    pub fn factor_code_for(&self, provider: &Provider, wallet_account: &str, factor: Factor) -> String {
        self.factor_code_of(&self.agreement_id(provider, wallet_account), factor)
    }

    fn factor_code_of(&self, agreement: &str, factor: Factor) -> String {
        let d = derive(self.scenario.seed, &["factor", agreement, factor.as_str()]);
        match factor {
            Factor::Sms | Factor::Password => format!("{:06}", number(&d, 0) % 1_000_000),
            Factor::Fingerprint | Factor::Face => format!("bio_{}", hex::encode(&d[..8])),
        }
    }

    /// The wallet's starting balance.
    pub fn initial_balance_minor(&self, provider: &Provider, wallet_account: &str) -> i64 {
        self.balance_from(&self.wallet_facts(provider, wallet_account))
    }

    fn balance_from(&self, facts: &[u8; 32]) -> i64 {
        let s = &self.scenario;
        let span = (s.balance_minor_max - s.balance_minor_min) as u64 + 1;
        s.balance_minor_min + (number(facts, 16) % span) as i64
    }

    /// Minor units currently authorised (spent and not voided) on a wallet.
    pub fn spent_minor(&self, provider: &Provider, wallet_account: &str) -> i64 {
        let agreement = self.agreement_id(provider, wallet_account);
        self.spent
            .lock()
            .expect("simulator lock")
            .get(&agreement)
            .copied()
            .unwrap_or(0)
    }

    fn in_maintenance(&self, provider: &Provider, t: DateTime<Utc>) -> bool {
        self.scenario
            .maintenance
            .iter()
            .any(|w| w.provider == provider.as_str() && w.from <= t && t < w.until)
    }

    fn network_fails(&self) -> bool {
        if self.scenario.network_error_per_mille == 0 {
            return false;
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let d = derive(self.scenario.seed, &["network", &n.to_string()]);
        ((number(&d, 0) % 1000) as u32) < self.scenario.network_error_per_mille
    }

    /// How long this call takes: `latency_ms`, plus up to `latency_jitter_ms`, or `slow_ms`
    /// for a slow call; from the seed and the call's number.
    pub fn latency_of_call(&self, n: u64) -> std::time::Duration {
        let s = &self.scenario;
        if s.latency_jitter_ms == 0 && s.slow_per_mille == 0 {
            return std::time::Duration::from_millis(s.latency_ms);
        }
        let d = derive(s.seed, &["latency", &n.to_string()]);
        if ((number(&d, 0) % 1000) as u32) < s.slow_per_mille {
            return std::time::Duration::from_millis(s.slow_ms);
        }
        std::time::Duration::from_millis(s.latency_ms + number(&d, 8) % (s.latency_jitter_ms + 1))
    }

    /// The call's latency: started now (before the call is first polled, so that a simulated
    /// clock knows of it as soon as the call exists); a call dropped before it has passed
    /// counts as abandoned.
    fn latency(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        let n = self.latency_calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.latency_of_call(n);
        let wait = (!latency.is_zero()).then(|| self.clock.sleep(latency));
        let pending = Pending(Some(&self.abandoned));
        async move {
            if let Some(w) = wait {
                w.await;
            }
            pending.answered();
        }
    }

    fn check_factor(&self, agreement: &str, factor: Option<(Factor, &str)>) -> Result<(), GatewayFailure> {
        match factor {
            Some((kind, code)) if self.factor_code_of(agreement, kind) != code => {
                Err(GatewayFailure::FactorFailed(kind))
            }
            _ => Ok(()),
        }
    }

    /// The checks a binding and a payment share, in the provider's order: maintenance, the
    /// network, the wallet's standing (an unknown wallet fails as `unknown`), the password and
    /// the extra factor. Returns the wallet's facts digest.
    fn check_wallet(
        &self,
        provider: &Provider,
        event_time: DateTime<Utc>,
        agreement: &str,
        payment_password: &str,
        factor: Option<(Factor, &str)>,
        unknown: GatewayFailure,
    ) -> Result<[u8; 32], GatewayFailure> {
        if self.in_maintenance(provider, event_time) {
            return Err(GatewayFailure::Maintenance);
        }
        if self.network_fails() {
            return Err(GatewayFailure::Network);
        }
        let facts = self.agreement_facts(agreement);
        match self.status_from(&facts) {
            WalletStatus::Frozen => return Err(GatewayFailure::WalletFrozen),
            WalletStatus::Closed => return Err(GatewayFailure::WalletClosed),
            WalletStatus::Unknown => return Err(unknown),
            WalletStatus::Active => {}
        }
        if password_from(&facts) != payment_password.as_bytes() {
            return Err(GatewayFailure::WrongPassword);
        }
        self.check_factor(agreement, factor)?;
        Ok(facts)
    }

    fn verify_now(&self, req: &BindVerification<'_>) -> Result<String, GatewayFailure> {
        let agreement = self.agreement_id(req.provider, req.wallet_account);
        self.check_wallet(
            req.provider,
            req.event_time,
            &agreement,
            req.payment_password,
            req.factor,
            GatewayFailure::UnknownWallet,
        )?;
        Ok(agreement)
    }

    /// How many payment authorisations reached this provider so far.
    pub fn payment_calls(&self) -> u64 {
        self.payment_calls.load(Ordering::Relaxed)
    }

    fn authorize_now(&self, req: &PaymentAuthorization<'_>) -> Result<String, GatewayFailure> {
        self.payment_calls.fetch_add(1, Ordering::Relaxed);
        // A wallet the provider does not know cannot have an agreement: it reads as closed.
        let facts = self.check_wallet(
            req.provider,
            req.event_time,
            req.agreement_id,
            req.payment_password,
            req.factor,
            GatewayFailure::WalletClosed,
        )?;
        let initial = self.balance_from(&facts);
        {
            let mut spent = self.spent.lock().expect("simulator lock");
            if spent.len() >= SIMULATED_WALLETS_MAX && !spent.contains_key(req.agreement_id) {
                spent.clear();
            }
            // The agreement is copied only the first time the wallet pays.
            let s = match spent.get_mut(req.agreement_id) {
                Some(s) => s,
                None => spent.entry(req.agreement_id.to_owned()).or_insert(0),
            };
            if initial - *s < req.amount_minor {
                return Err(GatewayFailure::InsufficientFunds);
            }
            *s += req.amount_minor;
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let d = derive(
            self.scenario.seed,
            &["auth", req.agreement_id, req.order_id, &n.to_string()],
        );
        let mut text = [0u8; 24];
        hex::encode_to_slice(&d[..12], &mut text).expect("24 bytes hold 12 hex pairs");
        let id = ["auth_", std::str::from_utf8(&text).expect("hex is ascii")].concat();
        self.authorizations
            .lock()
            .expect("simulator lock")
            .insert(id.clone(), (req.agreement_id.to_owned(), req.amount_minor));
        Ok(id)
    }
}

impl WalletGateway for SimulatedGateway {
    fn verify_binding<'a>(&'a self, req: BindVerification<'a>) -> BoxFuture<'a, Result<String, GatewayFailure>> {
        let latency = self.latency();
        Box::pin(async move {
            latency.await;
            self.verify_now(&req)
        })
    }

    fn authorize_payment<'a>(&'a self, req: PaymentAuthorization<'a>) -> BoxFuture<'a, Result<String, GatewayFailure>> {
        let latency = self.latency();
        Box::pin(async move {
            latency.await;
            self.authorize_now(&req)
        })
    }

    fn void_payment<'a>(&'a self, _provider: &'a Provider, authorization_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let found = self
                .authorizations
                .lock()
                .expect("simulator lock")
                .remove(authorization_id);
            if let Some((agreement, amount)) = found {
                if let Some(s) = self.spent.lock().expect("simulator lock").get_mut(&agreement) {
                    *s -= amount;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindledger_events::Currency;

    #[test]
    fn the_latest_authorisations_stay_voidable_across_generations() {
        let mut recent = RecentAuthorizations::default();
        let n = 2 * RecentAuthorizations::GENERATION + 10;
        for i in 0..n {
            recent.insert(format!("auth_{i}"), (format!("agr_{}", i % 7), i as i64));
        }
        // The newest generation and the one before it are kept; older ones are gone.
        assert_eq!(
            recent.remove(&format!("auth_{}", n - 1)),
            Some((format!("agr_{}", (n - 1) % 7), (n - 1) as i64))
        );
        let kept_from = n - 10 - RecentAuthorizations::GENERATION;
        assert!(
            recent.remove(&format!("auth_{kept_from}")).is_some(),
            "the previous generation is voidable"
        );
        assert_eq!(
            recent.remove(&format!("auth_{}", kept_from - 1)),
            None,
            "the oldest generation was dropped"
        );
        assert_eq!(recent.remove(&format!("auth_{}", n - 1)), None, "a void removes it");
    }

    #[test]
    fn a_password_is_six_zero_padded_digits_of_its_facts() {
        for i in 0..2000u32 {
            let facts = derive(7, &["facts", &i.to_string()]);
            let expected = format!("{:06}", number(&facts, 8) % 1_000_000);
            assert_eq!(password_from(&facts).as_slice(), expected.as_bytes());
        }
        let mut small = [0u8; 32];
        small[15] = 42;
        assert_eq!(&password_from(&small), b"000042");
    }

    fn gw() -> SimulatedGateway {
        SimulatedGateway::new(Scenario {
            network_error_per_mille: 0,
            ..Scenario::default()
        })
    }

    #[test]
    fn the_world_is_deterministic_from_the_seed() {
        let p = Provider::parse("alipay").unwrap();
        let (a, b) = (gw(), gw());
        for i in 0..200 {
            let phone = format!("1380000{i:04}");
            assert_eq!(a.password_for(&p, &phone), b.password_for(&p, &phone));
            assert_eq!(a.wallet_status(&p, &phone), b.wallet_status(&p, &phone));
        }
        let other = SimulatedGateway::new(Scenario {
            seed: 2,
            ..Scenario::default()
        });
        assert_ne!(a.password_for(&p, "13800000001"), other.password_for(&p, "13800000001"));
        // The default rates give some frozen and closed wallets among many.
        let statuses: Vec<_> = (0..2000).map(|i| a.wallet_status(&p, &format!("139{i:08}"))).collect();
        assert!(statuses.contains(&WalletStatus::Frozen) && statuses.contains(&WalletStatus::Closed));
    }

    #[tokio::test]
    async fn balances_run_out_and_voids_give_them_back() {
        let g = gw();
        let p = Provider::parse("wechat_pay").unwrap();
        let phone = (0..1000)
            .map(|i| format!("137{i:08}"))
            .find(|ph| g.wallet_status(&p, ph) == WalletStatus::Active)
            .unwrap();
        let agreement = g.agreement_id(&p, &phone);
        let pw = g.password_for(&p, &phone);
        let balance = g.initial_balance_minor(&p, &phone);
        let pay = |amount_minor| PaymentAuthorization {
            provider: &p,
            agreement_id: &agreement,
            order_id: "o",
            amount_minor,
            currency: Currency::CNY,
            payment_password: &pw,
            factor: None,
            event_time: Utc::now(),
        };
        let auth = g.authorize_payment(pay(balance)).await.unwrap();
        assert_eq!(
            g.authorize_payment(pay(1)).await,
            Err(GatewayFailure::InsufficientFunds)
        );
        g.void_payment(&p, &auth).await;
        assert!(g.authorize_payment(pay(1)).await.is_ok());
        let mut wrong = pay(1);
        let bad = "x".to_string();
        wrong.payment_password = &bad;
        assert_eq!(g.authorize_payment(wrong).await, Err(GatewayFailure::WrongPassword));
    }
}
