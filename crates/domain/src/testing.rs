//! Test helpers (feature `testing`, and this crate's own tests): events and wallets as the
//! folds see them, and a deterministic random source.

use bindledger_events::{
    Context, Currency, Event, Hash, Payload, PaymentFailure, Provider, UnlockCause, WalletRef, SCHEMA_VERSION,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// An event with the envelope's bookkeeping filled in (id from `seq`, no key, no context).
pub fn event(seq: u64, account: &str, account_seq: u64, at: DateTime<Utc>, payload: Payload) -> Event {
    Event {
        v: SCHEMA_VERSION,
        id: uuid::Uuid::from_u128(seq as u128),
        seq,
        account: account.into(),
        account_seq,
        event_time: at,
        record_time: at,
        idempotency_key: None,
        request_digest: None,
        correlation_id: None,
        context: Context::default(),
        prev_hash: Hash::default(),
        payload,
    }
}

/// Wallet `n`: masked `138****000n`, fingerprint `n` repeated.
pub fn wallet(n: u8) -> WalletRef {
    WalletRef {
        masked: format!("138****000{n}"),
        fingerprint: Hash([n; 32]),
    }
}

pub fn alipay() -> Provider {
    Provider::parse("alipay").expect("known")
}

/// A small deterministic PRNG (splitmix64): the same seed, the same population and choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The events a ledger would record for the steps: binds of wallets an account does not
/// hold yet (fresh binding ids), and unbinds, payments, locks and unlocks of its active
/// bindings.
pub fn realise(steps: &[(u8, u8, u8)]) -> Vec<Event> {
    realise_over(steps, 3)
}

/// The same with binds of `wallets` wallets (`which` picks one).
pub fn realise_over(steps: &[(u8, u8, u8)], wallets: u8) -> Vec<Event> {
    let t0 = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut active: HashMap<String, Vec<(uuid::Uuid, u8)>> = HashMap::new();
    let mut next_binding = 0u128;
    let mut events = Vec::new();
    for &(a, what, which) in steps {
        let account = format!("acct-{a}");
        let held = active.entry(account.clone()).or_default();
        let pick = (!held.is_empty()).then(|| held[which as usize % held.len()]);
        let payload = match (what, pick) {
            (0, _) => {
                let w = which % wallets;
                if held.iter().any(|(_, x)| *x == w) {
                    continue;
                }
                next_binding += 1;
                held.push((uuid::Uuid::from_u128(next_binding), w));
                Payload::WalletBound {
                    binding_id: uuid::Uuid::from_u128(next_binding),
                    provider: alipay(),
                    wallet: wallet(w),
                    factors: vec![],
                    agreement_id: "agr".into(),
                }
            }
            (1, Some((b, w))) => {
                held.retain(|(x, _)| *x != b);
                Payload::WalletUnbound {
                    binding_id: b,
                    provider: alipay(),
                    wallet: wallet(w),
                }
            }
            (2, Some((b, w))) => Payload::PaymentSucceeded {
                binding_id: b,
                provider: alipay(),
                wallet: wallet(w),
                order_id: "o".into(),
                amount_minor: 1 + which as i64,
                currency: Currency::CNY,
                factors: vec![],
                authorization_id: "a".into(),
            },
            (3, Some((b, _))) => Payload::PaymentFailed {
                binding_id: b,
                order_id: "o".into(),
                amount_minor: 1,
                currency: Currency::CNY,
                factors: vec![],
                reason: PaymentFailure::WrongPassword,
            },
            (4, Some((b, _))) => Payload::BindingLocked {
                binding_id: b,
                alert_id: "al".into(),
                until: chrono::DateTime::from_timestamp(2_000_000_000, 0).unwrap(),
            },
            (6, _) => Payload::BindFailed {
                provider: alipay(),
                wallet: wallet(which % wallets),
                factors: vec![],
                reason: bindledger_events::BindFailure::InvalidInput {
                    field: "payment_password".into(),
                },
            },
            (5, Some((b, _))) => Payload::BindingUnlocked {
                binding_id: b,
                alert_id: "al".into(),
                cause: UnlockCause::Manual,
            },
            _ => continue,
        };
        let v = versions.entry(account.clone()).or_default();
        *v += 1;
        let seq = events.len() as u64 + 1;
        events.push(event(
            seq,
            &account,
            *v,
            t0 + chrono::Duration::seconds(seq as i64),
            payload,
        ));
    }
    events
}

/// An even shard map of `n` shards, `s0`.., at `http://127.0.0.1:900i`, topics `e<i>` and `c<i>`.
pub fn shard_map(n: usize) -> crate::shard::ShardMap {
    let shards = (0..n)
        .map(|i| {
            (
                format!("s{i}"),
                crate::shard::ShardEntry {
                    url: format!("http://127.0.0.1:{}", 9000 + i),
                    events_topic: format!("e{i}"),
                    checkpoints_topic: format!("c{i}"),
                },
            )
        })
        .collect();
    crate::shard::ShardMap::even(shards).expect("a valid map")
}
