//! Fixtures for benchmarks and tests: a deterministic random source, a synthetic log written
//! straight to a store, and the process's resident memory. Not used by the ledger itself.

use bindledger_events::{
    codec, hash_bytes, BindFailure, Context, Currency, Event, Factor, FactorCheck, Hash, Payload, PaymentFailure,
    Provider, WalletRef, GENESIS_HASH, SCHEMA_VERSION,
};
use chrono::{Duration as ChronoDuration, Utc};
use std::collections::HashMap;
use std::path::Path;
use uuid::Uuid;

use crate::ledger::store::{LogBatch, Store};

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

/// Writes a log of `n` events shaped like a busy day: 100,000 accounts paying, some binding,
/// unbinding, failing (some with wrong passwords), one in a thousand sharing a wallet, one
/// millisecond of event time apart.
pub fn write_log(dir: &Path, n: u64) -> crate::Result<Store> {
    let store = Store::open(dir)?;
    let provider = Provider::parse("alipay").expect("known");
    let mut rng = Rng(99);
    let t0 = Utc::now() - ChronoDuration::milliseconds(n as i64);
    let mut prev = GENESIS_HASH;
    let mut versions: HashMap<u32, u64> = HashMap::new();
    let mut batch = LogBatch::default();
    let mut buf = Vec::with_capacity(1024);
    for seq in 1..=n {
        let a = rng.below(100_000) as u32;
        let v = versions.entry(a).or_default();
        *v += 1;
        let mut fp = [0u8; 32];
        fp[..4].copy_from_slice(&(if a % 1000 == 0 { 0 } else { a }).to_be_bytes());
        let wallet = WalletRef {
            masked: "138****5678".into(),
            fingerprint: Hash(fp),
        };
        let binding_id = Uuid::from_u128(a as u128 + 1);
        let roll = rng.below(1000);
        let payload = match roll {
            0..=39 => Payload::WalletBound {
                binding_id,
                provider: provider.clone(),
                wallet,
                factors: vec![],
                agreement_id: "agr".into(),
            },
            40..=59 => Payload::WalletUnbound {
                binding_id,
                provider: provider.clone(),
                wallet,
            },
            60..=79 => Payload::BindFailed {
                provider: provider.clone(),
                wallet,
                factors: vec![],
                reason: if roll % 2 == 0 {
                    BindFailure::WalletFrozen
                } else {
                    BindFailure::InvalidInput {
                        field: "payment_password".into(),
                    }
                },
            },
            80..=89 => Payload::PaymentFailed {
                binding_id,
                order_id: format!("o-{seq}"),
                amount_minor: 5000,
                currency: Currency::CNY,
                factors: vec![FactorCheck {
                    factor: Factor::Password,
                    passed: false,
                }],
                reason: PaymentFailure::WrongPassword,
            },
            _ => Payload::PaymentSucceeded {
                binding_id,
                provider: provider.clone(),
                wallet,
                order_id: format!("o-{seq}"),
                amount_minor: if roll == 999 {
                    2_000_000
                } else {
                    100 + rng.below(20_000) as i64
                },
                currency: Currency::CNY,
                factors: vec![FactorCheck {
                    factor: Factor::Password,
                    passed: true,
                }],
                authorization_id: "auth_0123456789abcdef01234567".into(),
            },
        };
        let t = bindledger_events::types::micros::truncate(t0 + ChronoDuration::milliseconds(seq as i64));
        let e = Event {
            v: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            seq,
            account: format!("acct-{a:05}"),
            account_seq: *v,
            event_time: t,
            record_time: t,
            idempotency_key: Some(format!("k-{seq}")),
            request_digest: Some(Hash([3; 32])),
            correlation_id: None,
            context: Context {
                channel: "app".into(),
                ..Context::default()
            },
            prev_hash: prev,
            payload,
        };
        codec::encode_into(&e, &mut buf);
        prev = hash_bytes(&buf);
        batch.add_event(seq, &buf);
        if seq % 16_384 == 0 {
            store.apply_log(std::mem::take(&mut batch))?;
        }
    }
    store.apply_log(batch)?;
    store.flush()?;
    Ok(store)
}

/// Resident memory of this process, in bytes (Linux).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Offsets in a file's bytes where an event's `"payload"` key is stored (every `step`-th
/// one): where a flipped byte lands in event data, for tests of damaged storage.
pub fn payload_offsets(file: &[u8], step: usize) -> Vec<usize> {
    file.windows(9)
        .enumerate()
        .filter(|(_, w)| *w == b"\"payload\"")
        .map(|(i, _)| i)
        .step_by(step.max(1))
        .collect()
}
