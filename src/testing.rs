//! Test helpers shared by the unit tests: events and wallets as the folds see them.

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
