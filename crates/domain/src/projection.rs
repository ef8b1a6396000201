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
    /// (v8) The account's personal data was erased (`subject_erased`): it takes no more
    /// commands, and its sealed fields read as erased.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
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
    /// Folds one event in. Events must come in global order.
    pub fn apply(&mut self, e: &Event) {
        assert_eq!(e.seq, self.position + 1, "projection fed out of order");
        self.position = e.seq;
        let acct = self.accounts.entry(e.account.clone()).or_default();
        let effect = fold_account(acct, e);
        self.index_effect(&e.account, &effect);
    }

    /// Applies what an event of `account` did to the wallet indexes.
    pub fn index_effect(&mut self, account: &str, effect: &WalletEffect) {
        match *effect {
            WalletEffect::None => {}
            WalletEffect::Bound(fp) => {
                self.wallets.entry(fp).or_default().insert(account.to_owned());
                self.wallet_history.entry(fp).or_default().insert(account.to_owned());
            }
            WalletEffect::Unbound { fp, still_active } => {
                if !still_active {
                    if let Some(set) = self.wallets.get_mut(&fp) {
                        set.remove(account);
                        if set.is_empty() {
                            self.wallets.remove(&fp);
                        }
                    }
                }
            }
            WalletEffect::WrongBindPassword { fp, at, forgotten } => {
                if let Some((old, t)) = forgotten {
                    count_wrong(&mut self.wallet_wrong_passwords, old, t, false);
                }
                count_wrong(&mut self.wallet_wrong_passwords, fp, at, true);
            }
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

    /// Adds a stored account's part of the wallet indexes.
    fn index_account(&mut self, name: &str, a: &AccountState) {
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

/// One wallet's entry in the wallet indexes, as a store keeps it: the accounts holding it
/// bound, every account that ever bound it, and each account's wrong payment passwords on
/// binds of it. Each account's part is a function of that account's state (and, for
/// `history`, of its binds), so setting it again from the same state changes nothing:
/// [`WalletRow::set_part`] is idempotent, which lets a store's catch-up set it again for
/// events whose account row already includes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRow {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub active: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub history: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wrong: BTreeMap<String, Vec<DateTime<Utc>>>,
}

impl WalletRow {
    /// Sets `account`'s part of wallet `fp`'s entry from the account's state.
    pub fn set_part(&mut self, account: &str, state: &AccountState, fp: &Hash) {
        if state.active_with_fingerprint(fp).is_some() {
            self.active.insert(account.to_owned());
        } else {
            self.active.remove(account);
        }
        if state.bindings.iter().any(|b| b.wallet.fingerprint == *fp) {
            self.history.insert(account.to_owned());
        }
        let times: Vec<DateTime<Utc>> = state
            .bind_wrong_passwords
            .iter()
            .filter(|(f, _)| f == fp)
            .map(|(_, t)| *t)
            .collect();
        if times.is_empty() {
            self.wrong.remove(account);
        } else {
            self.wrong.insert(account.to_owned(), times);
        }
    }

    /// The wrong payment passwords on binds of the wallet after `since`, from every account.
    pub fn wrong_after(&self, since: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.wrong.values().flatten().copied().filter(move |t| *t > since)
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.history.is_empty() && self.wrong.is_empty()
    }

    /// Puts the row into a projection's indexes (where it has no entry yet for `fp`).
    pub fn put_into(&self, p: &mut Projection, fp: Hash) {
        if !self.active.is_empty() {
            p.wallets.insert(fp, self.active.clone());
        }
        if !self.history.is_empty() {
            p.wallet_history.insert(fp, self.history.clone());
        }
        for t in self.wrong.values().flatten() {
            count_wrong(&mut p.wallet_wrong_passwords, fp, *t, true);
        }
    }
}

/// What an event did to the wallet indexes (from [`fold_account`]): the indexes change only
/// for the wallets it names ([`WalletEffect::fingerprints`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletEffect {
    None,
    /// The account bound the wallet.
    Bound(Hash),
    /// The account unbound it, and whether it still holds it bound by another binding.
    Unbound {
        fp: Hash,
        still_active: bool,
    },
    /// A wrong payment password on a bind of the wallet, at `at`; the account's oldest one,
    /// forgotten to make room, if any.
    WrongBindPassword {
        fp: Hash,
        at: DateTime<Utc>,
        forgotten: Option<(Hash, DateTime<Utc>)>,
    },
}

impl WalletEffect {
    /// The wallets whose index entries the effect changes.
    pub fn fingerprints(&self) -> impl Iterator<Item = Hash> {
        let (a, b) = match *self {
            WalletEffect::None => (None, None),
            WalletEffect::Bound(fp) | WalletEffect::Unbound { fp, .. } => (Some(fp), None),
            WalletEffect::WrongBindPassword { fp, forgotten, .. } => (Some(fp), forgotten.map(|(f, _)| f)),
        };
        a.into_iter().chain(b)
    }
}

/// Folds one of its events into an account (its version included), and says what the event
/// does to the wallet indexes: the account's part of [`Projection::apply`].
pub fn fold_account(acct: &mut AccountState, e: &Event) -> WalletEffect {
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
            WalletEffect::Bound(wallet.fingerprint)
        }
        Payload::PaymentSucceeded { binding_id, .. } => {
            if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                b.last_used_at = Some(e.event_time);
                b.payments_count += 1;
            }
            WalletEffect::None
        }
        Payload::WalletUnbound { binding_id, wallet, .. } => {
            if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                b.status = BindingStatus::Unbound;
                b.unbound_at = Some(e.event_time);
            }
            let still_active = acct.active_with_fingerprint(&wallet.fingerprint).is_some();
            let inactive = acct.bindings.len() - acct.active_count();
            if inactive > INACTIVE_BINDINGS_KEPT_MAX {
                let pos = acct
                    .bindings
                    .iter()
                    .position(|b| b.status != BindingStatus::Active)
                    .expect("some inactive");
                acct.bindings.remove(pos);
            }
            WalletEffect::Unbound {
                fp: wallet.fingerprint,
                still_active,
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
            WalletEffect::None
        }
        Payload::BindingUnlocked { binding_id, .. } => {
            if let Some(b) = acct.bindings.iter_mut().find(|b| b.binding_id == *binding_id) {
                b.lock = None;
                // An unlock gives the binding a fresh budget of attempts.
                b.wrong_passwords.clear();
            }
            WalletEffect::None
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
            WalletEffect::None
        }
        Payload::BindFailed {
            wallet,
            reason: bindledger_events::BindFailure::InvalidInput { field },
            ..
        } if field == "payment_password" => {
            let forgotten = if acct.bind_wrong_passwords.len() == BIND_WRONG_PASSWORDS_KEPT_MAX {
                acct.bind_wrong_passwords.pop_front()
            } else {
                None
            };
            acct.bind_wrong_passwords.push_back((wallet.fingerprint, e.record_time));
            WalletEffect::WrongBindPassword {
                fp: wallet.fingerprint,
                at: e.record_time,
                forgotten,
            }
        }
        Payload::BindFailed { .. }
        | Payload::PaymentFailed { .. }
        | Payload::UnbindFailed { .. }
        | Payload::BindingLockFailed { .. }
        | Payload::BindingUnlockFailed { .. }
        | Payload::AlertTriaged { .. } => WalletEffect::None,
        Payload::SubjectErased { .. } => {
            acct.erased = true;
            WalletEffect::None
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
