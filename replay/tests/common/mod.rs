//! What the audit tool's tests share: a chain of canonical events built with the schema crate
//! alone, in a few shapes.
#![allow(dead_code)]

use bindledger_events::{
    encode, hash_bytes, Context, Event, Hash, Payload, UnbindFailure, GENESIS_HASH, SCHEMA_VERSION,
};

/// The shape of a generated log.
pub struct Shape {
    /// Events are spread over this many accounts (`a0`, `a1`, ...; `acct-N` with `long`).
    pub accounts: u64,
    /// A user agent this many bytes long in each event's context (makes events larger).
    pub user_agent_bytes: usize,
    /// An idempotency key per event.
    pub keys: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            accounts: 3,
            user_agent_bytes: 0,
            keys: false,
        }
    }
}

/// Event `seq` of such a log, linked to `prev`.
pub fn event(seq: u64, prev: Hash, shape: &Shape) -> Event {
    let account = if shape.user_agent_bytes > 0 {
        format!("acct-{}", seq % shape.accounts)
    } else {
        format!("a{}", seq % shape.accounts)
    };
    Event {
        v: SCHEMA_VERSION,
        id: uuid::Uuid::from_u128(seq as u128),
        seq,
        account,
        account_seq: (seq - 1) / shape.accounts + 1,
        event_time: chrono::DateTime::from_timestamp(1_790_000_000 + seq as i64, 0).unwrap(),
        record_time: chrono::DateTime::from_timestamp(1_790_000_000 + seq as i64, 0).unwrap(),
        idempotency_key: shape.keys.then(|| format!("key-{seq}")),
        request_digest: Some(Hash([9; 32])),
        correlation_id: None,
        context: Context {
            channel: "app".into(),
            user_agent: (shape.user_agent_bytes > 0).then(|| "x".repeat(shape.user_agent_bytes)),
            ..Context::default()
        },
        prev_hash: prev,
        payload: Payload::UnbindFailed {
            binding_id: uuid::Uuid::from_u128(7),
            reason: UnbindFailure::NotBound,
        },
    }
}

/// The stored bytes of events `1..=n`, chained, one `Vec` each; `each` sees every one as it is
/// made (to write it out instead of keeping it: return false to drop it from the result).
pub fn chain(n: u64, shape: &Shape, mut keep: impl FnMut(u64, &[u8]) -> bool) -> Vec<Vec<u8>> {
    let mut prev = GENESIS_HASH;
    let mut out = Vec::new();
    for seq in 1..=n {
        let bytes = encode(&event(seq, prev, shape));
        prev = hash_bytes(&bytes);
        if keep(seq, &bytes) {
            out.push(bytes);
        }
    }
    out
}

/// `n` events of the default shape.
pub fn log(n: u64) -> Vec<Vec<u8>> {
    chain(n, &Shape::default(), |_, _| true)
}
