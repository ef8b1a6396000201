//! The personal fields of an event (schema v8): the values that identify or locate a person,
//! sealed at rest and on the topic with the account's data key.
//!
//! | field | why it is personal |
//! |---|---|
//! | `context.device_id` | names a person's phone or browser |
//! | `context.ip` | locates a person |
//! | `context.user_agent` | with the rest, fingerprints a person's device |
//! | `payload.wallet.masked` | part of a person's phone or card number |
//! | `payload.note` (`alert_triaged`) | free text an analyst wrote about a person |
//!
//! Not personal, so kept in the clear: the account id (the platform's pseudonymous key, which
//! every reader needs to route and verify), the wallet `fingerprint` (a keyed hash: it
//! identifies no one without the ledger's secret, and the rules key on it), order ids, amounts,
//! provider references, reasons, and the names of the staff tokens that acted.
//!
//! A sealed value is the text `sealed:` and the unpadded URL-safe base64 of the 12-byte nonce,
//! the AES-256-GCM ciphertext and its 16-byte tag. The nonce is the first 12 bytes of
//! SHA-256(`bindledger-nonce` 0x00 event id (16 bytes) field name): unique per event and field
//! (event ids are unique), so no nonce repeats under one key, and the same event seals to the
//! same bytes. The associated data is `bindledger-v8` 0x00 account 0x00 field name: a sealed
//! value moved to another account or field does not open. The chain hashes the sealed bytes,
//! so it verifies with or without the key.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::types::{Event, Payload};

/// The start of a sealed value.
pub const SEALED_PREFIX: &str = "sealed:";

/// What a reader shows for a sealed field whose data key is gone (the account was erased).
pub const ERASED: &str = "[erased]";

/// What a reader shows for a sealed field whose key this reader does not hold, of an account
/// that is not erased (a replica the wrapped key has not reached yet; a node given another key
/// store than the primary's).
pub const UNOPENED: &str = "[sealed]";

/// True if `s` is a sealed value.
pub fn is_sealed(s: &str) -> bool {
    s.starts_with(SEALED_PREFIX)
}

/// Calls `f` with the name and value of each personal field the event holds (a field that is
/// absent, `null`, is not visited), in a fixed order.
pub fn for_each(event: &mut Event, mut f: impl FnMut(&'static str, &mut String)) {
    let c = &mut event.context;
    for (name, v) in [
        ("context.device_id", &mut c.device_id),
        ("context.ip", &mut c.ip),
        ("context.user_agent", &mut c.user_agent),
    ] {
        if let Some(v) = v {
            f(name, v);
        }
    }
    match &mut event.payload {
        Payload::WalletBound { wallet, .. }
        | Payload::BindFailed { wallet, .. }
        | Payload::PaymentSucceeded { wallet, .. }
        | Payload::WalletUnbound { wallet, .. } => f("payload.wallet.masked", &mut wallet.masked),
        Payload::AlertTriaged { note, .. } => f("payload.note", note),
        _ => {}
    }
}

/// The 12-byte nonce of one field of one event.
pub fn nonce(event_id: &Uuid, field: &str) -> [u8; 12] {
    let mut h = Sha256::new();
    h.update(b"bindledger-nonce\0");
    h.update(event_id.as_bytes());
    h.update(field.as_bytes());
    let d = h.finalize();
    let mut n = [0u8; 12];
    n.copy_from_slice(&d[..12]);
    n
}

/// The associated data of one field of an account's events.
pub fn associated_data(account: &str, field: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + account.len() + field.len() + 1);
    a.extend_from_slice(b"bindledger-v8\0");
    a.extend_from_slice(account.as_bytes());
    a.push(0);
    a.extend_from_slice(field.as_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    #[test]
    fn nonces_and_associated_data_differ_by_event_and_field() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_ne!(nonce(&a, "context.ip"), nonce(&b, "context.ip"));
        assert_ne!(nonce(&a, "context.ip"), nonce(&a, "context.device_id"));
        assert_ne!(associated_data("x", "f"), associated_data("y", "f"));
        assert_ne!(associated_data("x", "f"), associated_data("x", "g"));
        assert_ne!(associated_data("xf", ""), associated_data("x", "f"));
    }

    #[test]
    fn every_personal_field_is_visited_and_no_other() {
        let t = chrono::DateTime::UNIX_EPOCH;
        let mut e = Event {
            v: crate::SCHEMA_VERSION,
            id: Uuid::from_u128(1),
            seq: 1,
            account: "a".into(),
            account_seq: 1,
            event_time: t,
            record_time: t,
            idempotency_key: None,
            request_digest: None,
            correlation_id: None,
            context: Context {
                channel: "app".into(),
                device_id: Some("d".into()),
                ip: None,
                user_agent: Some("u".into()),
                ..Default::default()
            },
            prev_hash: crate::GENESIS_HASH,
            payload: Payload::AlertTriaged {
                alert_id: "a".into(),
                action: TriageAction::Acknowledged,
                operator: "alice".into(),
                assignee: None,
                note: "n".into(),
            },
        };
        let mut seen = vec![];
        for_each(&mut e, |name, v| seen.push((name, v.clone())));
        assert_eq!(
            seen,
            vec![
                ("context.device_id", "d".to_owned()),
                ("context.user_agent", "u".to_owned()),
                ("payload.note", "n".to_owned())
            ]
        );
    }
}
