//! Test helpers (feature `testing`, and this crate's own tests): events and wallets as the
//! folds see them, and a deterministic random source.

use bindledger_events::{Context, Event, Hash, Payload, Provider, WalletRef, SCHEMA_VERSION};
use chrono::{DateTime, Utc};

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
