//! The audit tool on an export built with the schema crate alone, intact and tampered.

use bindledger_events::{encode, hash_bytes, Context, Event, Hash, Payload, UnbindFailure, GENESIS_HASH, SCHEMA_VERSION};
use std::process::Command;

fn export(n: u64) -> Vec<String> {
    let mut prev = GENESIS_HASH;
    (1..=n)
        .map(|seq| {
            let e = Event {
                v: SCHEMA_VERSION,
                id: uuid::Uuid::from_u128(seq as u128),
                seq,
                account: format!("a{}", seq % 3),
                account_seq: seq / 3 + 1,
                event_time: chrono::DateTime::from_timestamp(1_790_000_000 + seq as i64, 0).unwrap(),
                record_time: chrono::DateTime::from_timestamp(1_790_000_000 + seq as i64, 0).unwrap(),
                idempotency_key: None,
                request_digest: Some(Hash([9; 32])),
                correlation_id: None,
                context: Context { channel: "app".into(), ..Context::default() },
                prev_hash: prev,
                payload: Payload::UnbindFailed { binding_id: uuid::Uuid::from_u128(7), reason: UnbindFailure::NotBound },
            };
            let bytes = encode(&e);
            prev = hash_bytes(&bytes);
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

fn verify(lines: &[String]) -> (i32, String) {
    let path = std::env::temp_dir().join(format!("bindledger-replay-test-{}-{}.ndjson", std::process::id(), lines.len()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay")).args(["verify", path.to_str().unwrap()]).output().unwrap();
    let _ = std::fs::remove_file(&path);
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn an_intact_export_verifies_and_an_edit_is_located() {
    let lines = export(20);
    let (code, out) = verify(&lines);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("events:     20"), "{out}");

    let mut edited = export(21);
    edited[9] = edited[9].replace("\"a1\"", "\"a2\"");
    let (code, out) = verify(&edited);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("line 11") && out.contains("event 11"), "the break shows at the next event: {out}");

    let mut dropped = export(22);
    dropped.remove(4);
    let (code, out) = verify(&dropped);
    assert_eq!(code, 3);
    assert!(out.contains("expected global sequence 5, found 6"), "{out}");
}
