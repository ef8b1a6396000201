//! The canonical encoding: compact JSON (UTF-8, no whitespace), fields in declaration order,
//! `v` first, integers for money, times as RFC 3339 UTC with six fractional digits. These are
//! the exact bytes the ledger stores and publishes; a consumer in any language can parse them
//! and check the chain with SHA-256 alone.
//!
//! ## Schema versions
//! - **v1**: `payment_succeeded` and `payment_failed` had no `currency`; every amount was CNY.
//! - **v2**: payments carry `currency`.
//! - **v3**: bindings can be locked: `binding_locked`, `binding_lock_failed`,
//!   `binding_unlocked`, `binding_unlock_failed`, and the payment failure `binding_locked`.
//!   Every v2 event is a valid v3 event.
//! - **v4**: the payment failure `too_many_attempts` (the inline guard against
//!   password guessing). Every v3 event is a valid v4 event.
//! - **v5**: the payment failure `order_already_paid` (with `payment_seq`, the
//!   order's `payment_succeeded` event). Every v4 event is a valid v5 event.
//! - **v6**: `alert_triaged`, and lock and unlock attributed. Every v5 event is a valid v6 event.
//! - **v7**: the bind failure `too_many_attempts` (`until`), the inline guard against
//!   password stuffing on binds. Every v6 event is a valid v7 event.
//! - **v8**: personal fields are sealed (see [`crate::personal`]): the context's
//!   `device_id`, `ip` and `user_agent`, a wallet's `masked` and a triage `note` hold
//!   `sealed:` and the AEAD ciphertext under the account's data key; and `subject_erased`.
//!   The shape is v7's: every v7 event is a valid v8 event.
//! - **v9** (current): the context may end with `device_fp` and `ip_fp`, the keyed
//!   fingerprints of its device id and IP address (present only with them). Every v8 event is a
//!   valid v9 event; a v8 event with them is not valid.
//!
//! Decoding an older version upcasts it to the current types; the stored bytes (and so the
//! hashes) are never rewritten.

use serde_json::Value;

use crate::types::Event;
pub use crate::types::{SCHEMA_VERSION, SCHEMA_VERSION_MIN};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid event: {0}")]
    Invalid(String),
    #[error("schema version {0} is not supported (this code reads {SCHEMA_VERSION_MIN}..={SCHEMA_VERSION})")]
    UnsupportedVersion(u64),
}

/// Encodes an event canonically. The event's `v` must be the current version.
pub fn encode(event: &Event) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    encode_into(event, &mut buf);
    buf
}

/// Encodes into a reused buffer (the writer's hot path). The bytes are serde_json's for the
/// types' `Serialize` impls, written directly by [`crate::canonical::encode_into`].
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) {
    debug_assert_eq!(event.v, SCHEMA_VERSION, "only the current version is written");
    crate::canonical::encode_into(event, buf);
}

/// Decodes stored bytes of any supported version into the current types.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    // Canonical bytes of this or the previous version are read directly; anything else (and
    // every error message) comes from the general decoder below.
    if let Some(event) = crate::canonical::decode(bytes) {
        return Ok(event);
    }
    decode_general(bytes)
}

/// The general decoder: any field order, whitespace, escapes, every supported version.
pub(crate) fn decode_general(bytes: &[u8]) -> Result<Event, DecodeError> {
    // JSON is UTF-8; serde would skip bytes that are not inside a field it ignores (found by
    // `make fuzz`), so they are refused here, whatever the path.
    // The text is read as a `str` from here, so serde does not check the UTF-8 again.
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid("the bytes are not UTF-8".to_owned()))?;
    // Canonical bytes start with the version; the current version takes the direct path.
    const CURRENT_PREFIX: &str = "{\"v\":9,";
    if text.starts_with(CURRENT_PREFIX) {
        return serde_json::from_str(text).map_err(|e| DecodeError::Invalid(e.to_string()));
    }
    let mut value: Value = serde_json::from_str::<Strict>(text)
        .map(|s| s.0)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let version = value
        .get("v")
        .and_then(Value::as_u64)
        .ok_or_else(|| DecodeError::Invalid("missing schema version field `v`".to_owned()))?;
    match version {
        1 => upcast_v1_to_v2(&mut value),
        2..=9 => {}
        other => return Err(DecodeError::UnsupportedVersion(other)),
    }
    if version < 9 {
        let context = value.get("context").and_then(Value::as_object);
        if context.is_some_and(|c| c.contains_key("device_fp") || c.contains_key("ip_fp")) {
            return Err(DecodeError::Invalid(
                "device_fp and ip_fp are fields of schema version 9 on".to_owned(),
            ));
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Parses JSON text into a value, refusing a key repeated in one object at any depth (see
/// [`Strict`]): what every reader of JSON that decides something must use, event or request
/// body alike.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// A JSON value that refuses a key repeated in one object, at any depth: such bytes have no one
/// meaning (serde's derived readers refuse them, a plain `Value` keeps the last), so every
/// reader of an event must refuse them alike (found by `make fuzz`).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element::<Strict>()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value::<Strict>()?;
            if out.insert(key, v).is_some() {
                return Err(serde::de::Error::custom("a key appears twice in one object"));
            }
        }
        Ok(Value::Object(out))
    }
}

/// v1 -> v2: payments gain `currency`, which v1 implied was CNY.
fn upcast_v1_to_v2(value: &mut Value) {
    if let Some(payload) = value.get_mut("payload").and_then(Value::as_object_mut) {
        let is_payment = matches!(
            payload.get("type").and_then(Value::as_str),
            Some("payment_succeeded") | Some("payment_failed")
        );
        if is_payment && !payload.contains_key("currency") {
            payload.insert("currency".to_owned(), Value::String("CNY".to_owned()));
        }
    }
    value["v"] = Value::from(2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{hash_bytes, ChainError, ChainVerifier, Hash, GENESIS_HASH};
    use crate::money::Currency;
    use crate::types::*;
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    #[test]
    fn a_repeated_key_or_a_time_finer_than_a_microsecond_is_refused() {
        let e = event(
            1,
            GENESIS_HASH,
            Payload::WalletUnbound {
                binding_id: Uuid::from_u128(9),
                provider: crate::types::Provider::parse("alipay").unwrap(),
                wallet: wallet(),
            },
        );
        let text = String::from_utf8(encode(&e)).unwrap();
        assert_eq!(decode(text.as_bytes()).unwrap(), e);
        // Not canonical (a space), so the general decoder reads it: the same event.
        let spaced = text.replacen(",\"seq\"", ", \"seq\"", 1);
        assert_eq!(decode(spaced.as_bytes()).unwrap(), e);
        let twice = spaced.replacen(", \"seq\":1", ", \"seq\":7, \"seq\":1", 1);
        let refused = decode(twice.as_bytes()).unwrap_err().to_string();
        assert!(refused.contains("duplicate field `seq`"), "{refused}");
        // Without the current version's prefix, through the generic path: refused the same.
        let refused = decode(format!(" {twice}").as_bytes()).unwrap_err().to_string();
        assert!(refused.contains("a key appears twice"), "{refused}");
        assert_eq!(decode(format!(" {spaced}").as_bytes()).unwrap(), e);
        let nested = spaced.replacen("\"masked\":", "\"masked\":\"x\",\"masked\":", 1);
        assert!(decode(format!(" {nested}").as_bytes()).is_err());
        let fine = spaced.replacen(".000000Z\"", ".0000001Z\"", 1);
        assert_ne!(fine, spaced);
        let refused = decode(fine.as_bytes()).unwrap_err().to_string();
        assert!(refused.contains("at most microseconds"), "{refused}");
    }

    fn wallet() -> WalletRef {
        WalletRef {
            masked: "138****5678".into(),
            fingerprint: Hash([7; 32]),
        }
    }

    fn event(seq: u64, prev: Hash, payload: Payload) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: Uuid::from_u128(seq as u128),
            seq,
            account: "acct-1".into(),
            account_seq: seq,
            event_time: Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap(),
            record_time: Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 1).unwrap(),
            idempotency_key: Some(format!("k{seq}")),
            request_digest: None,
            correlation_id: None,
            context: Context {
                channel: "app".into(),
                ..Default::default()
            },
            prev_hash: prev,
            payload,
        }
    }

    fn payment(amount_minor: i64) -> Payload {
        Payload::PaymentSucceeded {
            binding_id: Uuid::from_u128(1),
            provider: Provider::parse("alipay").unwrap(),
            wallet: wallet(),
            order_id: "o-1".into(),
            amount_minor,
            currency: Currency::parse("USD").unwrap(),
            factors: vec![FactorCheck {
                factor: Factor::Password,
                passed: true,
            }],
            authorization_id: "auth-1".into(),
        }
    }

    #[test]
    fn encoding_is_canonical_and_round_trips() {
        let e = event(1, GENESIS_HASH, payment(1234));
        let bytes = encode(&e);
        assert!(
            bytes.starts_with(b"{\"v\":9,\"id\":"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.contains("\"event_time\":\"2026-11-26T08:00:00.000000Z\""),
            "{text}"
        );
        assert!(
            !text.contains(' ') || text.contains("\"masked\""),
            "no whitespace: {text}"
        );
        let back = decode(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(encode(&back), bytes, "decode then encode gives the same bytes");
    }

    #[test]
    fn a_v1_event_is_read_by_current_code() {
        // A payment written by v1 code: no currency, amounts were CNY.
        let v1 = br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","seq":1,"account":"acct-1","account_seq":1,"event_time":"2026-01-01T00:00:00.000000Z","record_time":"2026-01-01T00:00:00.000000Z","idempotency_key":null,"request_digest":null,"correlation_id":null,"context":{"channel":"app","device_id":null,"ip":null,"user_agent":null},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","payload":{"type":"payment_failed","binding_id":"00000000-0000-0000-0000-000000000002","order_id":"o-9","amount_minor":500,"factors":[],"reason":{"code":"insufficient_funds"}}}"#;
        let e = decode(v1).unwrap();
        assert_eq!(e.v, 2);
        match e.payload {
            Payload::PaymentFailed {
                currency,
                amount_minor,
                reason,
                ..
            } => {
                assert_eq!(currency, Currency::CNY);
                assert_eq!(amount_minor, 500);
                assert_eq!(reason, PaymentFailure::InsufficientFunds);
            }
            other => panic!("wrong payload {other:?}"),
        }
        // The chain still uses the v1 bytes as stored.
        let mut v = ChainVerifier::new();
        let (_, h) = v.push(v1).unwrap();
        assert_eq!(h, hash_bytes(v1));
    }

    #[test]
    fn a_v2_event_is_read_by_v3_code() {
        // Version 3 only added event types: a version 2 event reads as it is.
        let v3 = encode(&event(1, GENESIS_HASH, payment(77)));
        let v2 = [b"{\"v\":2,".as_slice(), &v3[b"{\"v\":7,".len()..]].concat();
        let e = decode(&v2).unwrap();
        assert_eq!((e.v, e.payload), (2, payment(77)));
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        assert!(matches!(
            decode(br#"{"v":10,"x":1}"#),
            Err(DecodeError::UnsupportedVersion(10))
        ));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Invalid(_))));
        assert!(matches!(decode(br#"{"x":1}"#), Err(DecodeError::Invalid(_))));
    }

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let b = encode(&event(seq, prev, payment(seq as i64 * 100)));
                prev = hash_bytes(&b);
                b
            })
            .collect()
    }

    fn verify(log: &[Vec<u8>]) -> Result<u64, ChainError> {
        let mut v = ChainVerifier::new();
        for b in log {
            v.push(b)?;
        }
        Ok(v.last_seq())
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(20)), Ok(20));
    }

    #[test]
    fn an_edit_is_detected_at_the_next_event() {
        let mut log = chain(10);
        let text = String::from_utf8(log[4].clone())
            .unwrap()
            .replace("\"amount_minor\":500", "\"amount_minor\":1");
        log[4] = text.into_bytes();
        let err = verify(&log).unwrap_err();
        assert!(matches!(err, ChainError::BrokenLink { seq: 6, .. }), "{err}");
    }

    #[test]
    fn removal_and_reordering_are_detected() {
        let mut log = chain(10);
        log.remove(3);
        assert_eq!(
            verify(&log).unwrap_err(),
            ChainError::SequenceGap { expected: 4, found: 5 }
        );
        let mut log = chain(10);
        log.swap(2, 3);
        assert_eq!(verify(&log).unwrap_err().seq(), 3);
    }
}
