//! Projections: pure folds over events. [`Projection::apply`] cannot fail and reads nothing but
//! the event (its times, never the clock), so the live ledger, a restart and the audit tool
//! all reach the same state from the same log. What protects against an attacker (locks, the
//! count of wrong passwords) is kept in `record_time`, the ledger's own clock; what the
//! business reports (bound, unbound, last used) in `event_time`.
//!
//! The projection holds each account's bindings and version, and the reverse index from wallet
//! fingerprint to the accounts that hold it bound. Payments and an account's history are read
//! from the log through indexes kept by the store.

use bindledger_events::{Event, Hash, Payload, Provider, WalletRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use uuid::Uuid;

/// Ended bindings kept per account (the oldest go first); active ones are never dropped.
pub const INACTIVE_BINDINGS_KEPT_MAX: usize = 16;

/// Wrong payment passwords on binds remembered per account (the newest), with their wallet:
/// what the bind guard counts per wallet, over every account.
pub const BIND_WRONG_PASSWORDS_KEPT_MAX: usize = 16;

/// Wrong payment passwords remembered per binding (the newest). The inline guard counts at
/// most this many, so its threshold is `min(password_brute_force.threshold, this)`.
pub const WRONG_PASSWORDS_KEPT_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingStatus {
    Active,
    Unbound,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub binding_id: Uuid,
    pub provider: Provider,
    pub wallet: WalletRef,
    /// The provider's reference, used to authorise payments. Not shown by the HTTP API.
    pub agreement_id: String,
    pub status: BindingStatus,
    pub bound_at: DateTime<Utc>,
    pub unbound_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub payments_count: u64,
    /// Set while the binding is locked by the monitoring (payments fail until `until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<BindingLock>,
    /// `record_time` of the wrong payment passwords since the binding was last unlocked,
    /// oldest first, at most [`WRONG_PASSWORDS_KEPT_MAX`]: what the inline guard counts.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub wrong_passwords: VecDeque<DateTime<Utc>>,
}

/// A lock on a binding, from a `binding_locked` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingLock {
    pub alert_id: String,
    pub locked_at: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Binding {
    /// The lock in force at `now` (the ledger's time), if any.
    pub fn lock_at(&self, now: DateTime<Utc>) -> Option<&BindingLock> {
        self.lock.as_ref().filter(|l| now < l.until)
    }

    /// The wrong passwords recorded after `since`, oldest first.
    pub fn wrong_passwords_after(&self, since: DateTime<Utc>) -> impl Iterator<Item = &DateTime<Utc>> {
        self.wrong_passwords.iter().filter(move |t| **t > since)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// The account's version: `account_seq` of its newest event.
    pub version: u64,
    /// Bindings in the order they were made.
    pub bindings: Vec<Binding>,
    /// Wrong payment passwords on this account's binds: the wallet's fingerprint and the
    /// `record_time`, oldest first, at most [`BIND_WRONG_PASSWORDS_KEPT_MAX`].
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub bind_wrong_passwords: VecDeque<(Hash, DateTime<Utc>)>,
}

impl AccountState {
    pub fn active_count(&self) -> usize {
        self.bindings
            .iter()
            .filter(|b| b.status == BindingStatus::Active)
            .count()
    }

    pub fn active_with_fingerprint(&self, fp: &Hash) -> Option<&Binding> {
        self.bindings
            .iter()
            .find(|b| b.status == BindingStatus::Active && b.wallet.fingerprint == *fp)
    }

    pub fn active_binding(&self, id: Uuid) -> Option<&Binding> {
        self.bindings
            .iter()
            .find(|b| b.binding_id == id && b.status == BindingStatus::Active)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// Global sequence of the last event applied.
    pub position: u64,
    pub accounts: HashMap<String, AccountState>,
    /// Wallet fingerprint -> accounts where it is actively bound.
    pub wallets: HashMap<Hash, BTreeSet<String>>,
    /// Wallet fingerprint -> every account it was ever bound to (a ring shows here even after
    /// its members unbound).
    pub wallet_history: HashMap<Hash, BTreeSet<String>>,
    /// Wallet fingerprint -> the `record_time`s of wrong payment passwords on its binds (with
    /// how many at each), over every account: the union of the accounts'
    /// `bind_wrong_passwords`, so it is derived from them and bounded by them.
    pub wallet_wrong_passwords: HashMap<Hash, BTreeMap<DateTime<Utc>, u32>>,
}

/// Adds (`true`) or takes away one wrong password at `t` on `fp`'s binds.
fn count_wrong(map: &mut HashMap<Hash, BTreeMap<DateTime<Utc>, u32>>, fp: Hash, t: DateTime<Utc>, add: bool) {
    let times = map.entry(fp).or_default();
    let n = times.entry(t).or_insert(0);
    if add {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
        if *n == 0 {
            times.remove(&t);
        }
    }
    if times.is_empty() {
        map.remove(&fp);
    }
}

impl Projection {
    /// The wrong payment passwords on binds of `fp` after `since`, from every account.
    pub fn wallet_wrong_passwords_after(
        &self,
        fp: &Hash,
        since: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.wallet_wrong_passwords
            .get(fp)
            .into_iter()
            .flat_map(move |times| times.range((std::ops::Bound::Excluded(since), std::ops::Bound::Unbounded)))
            .flat_map(|(t, n)| std::iter::repeat_n(*t, *n as usize))
    }

    /// Folds one event in. Events must come in global order.
    pub fn apply(&mut self, e: &Event) {
        assert_eq!(e.seq, self.position + 1, "projection fed out of order");
        self.position = e.seq;
        let acct = self.accounts.entry(e.account.clone()).or_default();
        acct.version = e.account_seq;
        match &e.payload {
            Payload::WalletBound {
                binding_id,
                provider,
                wallet,
                agreement_id,
                ..
            } => {
                acct.bindings.push(Binding {
                    binding_id: *binding_id,
                    provider: provider.clone(),
                    wallet: wallet.clone(),
                    agreement_id: agreement_id.clone(),
                    status: BindingStatus::Active,
                    bound_at: e.event_time,
                    unbound_at: None,
                    last_used_at: None,
                    payments_count: 0,
                    lock: None,
                    wrong_passwords: VecDeque::new(),
                });
                self.wallets
                    .entry(wallet.fingerprint)
                    .or_default()
                    .insert(e.account.clone());
                self.wallet_history
                    .entry(wallet.fingerprint)
                    .or_default()
                    .insert(e.account.clone());
            }
            Payload::PaymentSucceeded { binding_id, .. } => {
                if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                    b.last_used_at = Some(e.event_time);
                    b.payments_count += 1;
                }
            }
            Payload::WalletUnbound { binding_id, wallet, .. } => {
                if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                    b.status = BindingStatus::Unbound;
                    b.unbound_at = Some(e.event_time);
                }
                if acct.active_with_fingerprint(&wallet.fingerprint).is_none() {
                    if let Some(set) = self.wallets.get_mut(&wallet.fingerprint) {
                        set.remove(&e.account);
                        if set.is_empty() {
                            self.wallets.remove(&wallet.fingerprint);
                        }
                    }
                }
                let inactive = acct.bindings.len() - acct.active_count();
                if inactive > INACTIVE_BINDINGS_KEPT_MAX {
                    let pos = acct
                        .bindings
                        .iter()
                        .position(|b| b.status != BindingStatus::Active)
                        .expect("some inactive");
                    acct.bindings.remove(pos);
                }
            }
            Payload::BindingLocked {
                binding_id,
                alert_id,
                until,
            } => {
                if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                    b.lock = Some(BindingLock {
                        alert_id: alert_id.clone(),
                        locked_at: e.record_time,
                        until: *until,
                    });
                }
            }
            Payload::BindingUnlocked { binding_id, .. } => {
                if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                    b.lock = None;
                    // An unlock gives the binding a fresh budget of attempts.
                    b.wrong_passwords.clear();
                }
            }
            Payload::PaymentFailed {
                binding_id,
                reason: bindledger_events::PaymentFailure::WrongPassword,
                ..
            } => {
                if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                    if b.wrong_passwords.len() == WRONG_PASSWORDS_KEPT_MAX {
                        b.wrong_passwords.pop_front();
                    }
                    b.wrong_passwords.push_back(e.record_time);
                }
            }
            Payload::BindFailed {
                wallet,
                reason: bindledger_events::BindFailure::InvalidInput { field },
                ..
            } if field == "payment_password" => {
                if acct.bind_wrong_passwords.len() == BIND_WRONG_PASSWORDS_KEPT_MAX {
                    if let Some((fp, t)) = acct.bind_wrong_passwords.pop_front() {
                        count_wrong(&mut self.wallet_wrong_passwords, fp, t, false);
                    }
                }
                acct.bind_wrong_passwords.push_back((wallet.fingerprint, e.record_time));
                count_wrong(
                    &mut self.wallet_wrong_passwords,
                    wallet.fingerprint,
                    e.record_time,
                    true,
                );
            }
            Payload::BindFailed { .. }
            | Payload::PaymentFailed { .. }
            | Payload::UnbindFailed { .. }
            | Payload::BindingLockFailed { .. }
            | Payload::BindingUnlockFailed { .. }
            | Payload::AlertTriaged { .. } => {}
        }
    }

    /// Folds an event during catch-up from a snapshot, where an account's stored row may
    /// already include events past the snapshot position: those are skipped.
    pub fn apply_catching_up(&mut self, e: &Event) {
        let seen = self
            .accounts
            .get(&e.account)
            .is_some_and(|a| a.version >= e.account_seq);
        if seen {
            assert_eq!(e.seq, self.position + 1, "projection fed out of order");
            self.position = e.seq;
        } else {
            self.apply(e);
        }
    }

    /// Rebuilds the projection from events in order.
    pub fn rebuild<'a>(events: impl IntoIterator<Item = &'a Event>) -> Projection {
        let mut p = Projection::default();
        for e in events {
            p.apply(e);
        }
        p
    }

    /// Reconstructs the projection from stored per-account states (the reverse index is
    /// derived from the active bindings).
    pub fn from_accounts(position: u64, accounts: HashMap<String, AccountState>) -> Projection {
        let mut p = Projection {
            position,
            ..Projection::default()
        };
        for (name, a) in &accounts {
            p.index_account(name, a);
        }
        p.accounts = accounts;
        p
    }

    /// Adds a stored account's part of the wallet indexes (without holding the account
    /// itself): what a cache of accounts over stored rows needs to keep whole.
    pub fn index_account(&mut self, name: &str, a: &AccountState) {
        for (fp, t) in &a.bind_wrong_passwords {
            count_wrong(&mut self.wallet_wrong_passwords, *fp, *t, true);
        }
        for b in &a.bindings {
            if b.status == BindingStatus::Active {
                self.wallets
                    .entry(b.wallet.fingerprint)
                    .or_default()
                    .insert(name.to_owned());
            }
            self.wallet_history
                .entry(b.wallet.fingerprint)
                .or_default()
                .insert(name.to_owned());
        }
    }
}

/// A binding as shown to readers (without the provider's agreement reference).
pub fn binding_view(b: &Binding) -> serde_json::Value {
    serde_json::json!({
        "binding_id": b.binding_id,
        "provider": b.provider,
        "wallet": b.wallet,
        "status": b.status,
        "bound_at": b.bound_at,
        "unbound_at": b.unbound_at,
        "last_used_at": b.last_used_at,
        "payments_count": b.payments_count,
        "lock": b.lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// One step of an account's life: (account, what, which binding or wallet). Turned into an
    /// event the ledger could have written by [`crate::testing::realise`].
    fn step() -> impl Strategy<Value = (u8, u8, u8)> {
        (0u8..3, 0u8..7, 0u8..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A snapshot (as the store keeps it: each account's row as JSON) plus the events after
        /// it, folded as a restart folds them, equals a fold of the whole log.
        #[test]
        fn a_snapshot_plus_the_events_after_it_equals_a_full_fold(steps in proptest::collection::vec(step(), 1..160), cut in any::<prop::sample::Index>()) {
            let events = crate::testing::realise(&steps);
            let full = Projection::rebuild(&events);
            let k = cut.index(events.len() + 1);
            let at_cut = Projection::rebuild(&events[..k]);
            let stored: HashMap<String, AccountState> = at_cut.accounts.iter()
                .map(|(name, a)| (name.clone(), serde_json::from_slice(&serde_json::to_vec(a).unwrap()).unwrap()))
                .collect();
            let mut resumed = Projection::from_accounts(k as u64, stored);
            for e in &events[k..] {
                resumed.apply_catching_up(e);
            }
            prop_assert_eq!(resumed, full);
        }
    }
}
