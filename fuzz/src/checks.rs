//! What each fuzz target checks, on one input. Shared by the fuzz targets (`make fuzz`) and by
//! `tests/fuzz_corpus.rs`, which runs every file of the corpus through them in `make test`.
//! Each check panics on a broken promise; the fuzzer reports a panic as a crash.
#![allow(dead_code)] // each target uses one check

use bindledger::domain::alerts::RuleSet;
use bindledger::domain::command::{
    BindRequest, FromFields, LockRequest, PayRequest, TriageRequest, UnbindRequest, UnlockRequest,
};
use bindledger_events::{decode, encode, Event, SCHEMA_VERSION};

/// The event decoder: never a panic; the fast reader and the general decoder (serde) agree;
/// what is read encodes to bytes that read back as the same event.
pub fn decoder(data: &[u8]) {
    let fast = decode(data);
    let general = serde_json::from_slice::<Event>(data);
    match (&fast, &general) {
        (Ok(a), Ok(b)) => {
            let mut b = b.clone();
            if b.v == 1 {
                b.v = 2; // `decode` upcasts version 1, as documented
            }
            assert_eq!(a, &b, "the two decoders disagree");
        }
        (Ok(a), Err(_)) => assert!(a.v != SCHEMA_VERSION, "the fast reader accepted bytes serde refuses"),
        // serde skips bytes that are not UTF-8 inside a field it ignores; JSON is UTF-8.
        (Err(_), Ok(b)) => assert!(
            !(1..=SCHEMA_VERSION).contains(&b.v) || std::str::from_utf8(data).is_err(),
            "decode refused bytes serde reads"
        ),
        (Err(_), Err(_)) => {}
    }
    // Only the current version is written; an older one is read (and kept as it was stored).
    if let Some(event) = fast.ok().filter(|e| e.v == SCHEMA_VERSION) {
        let again = decode(&encode(&event)).expect("an encoded event decodes");
        assert_eq!(again, event, "an accepted event does not survive encode and decode");
    }
}

/// The rules parser: a file is read, and then prints and reads back the same; or it is refused
/// with a line inside it. Never a panic.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match RuleSet::from_toml(text, Some("rules.toml")) {
        Ok(rules) => {
            let printed = rules.to_toml();
            assert_eq!(
                RuleSet::from_toml(&printed, None).expect("printed rules read back"),
                rules
            );
        }
        Err(e) => {
            let lines = text.lines().count().max(1) + 1;
            assert!(e.line >= 1 && e.line <= lines, "line {} of a {lines}-line file", e.line);
            assert!(!e.message.is_empty());
        }
    }
}

const BINDING: &str = "01932c07-a000-7000-8000-000000000001";

/// One command's body, parsed and validated: the refusal's message, if it is refused.
fn refusal(which: u8, body: &[u8]) -> Option<(String, &'static str)> {
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
    let result = match which % 6 {
        0 => BindRequest::from_body(body).and_then(|r| r.validate("acct-1", now).map(|_| ())),
        1 => PayRequest::from_body(body).and_then(|r| r.validate("acct-1", now).map(|_| ())),
        2 => UnbindRequest::from_body(body).and_then(|r| r.validate("acct-1", BINDING, now).map(|_| ())),
        3 => LockRequest::from_body(body).and_then(|r| r.validate("acct-1", BINDING, now).map(|_| ())),
        4 => UnlockRequest::from_body(body).and_then(|r| r.validate("acct-1", BINDING, now).map(|_| ())),
        _ => TriageRequest::from_body(body)
            .and_then(|r| r.validate("acct-1", "password_brute_force-7", "alice", now).map(|_| ())),
    };
    result.err().map(|e| (e.to_string(), e.code()))
}

/// The command bodies: the first byte picks the command, the rest is its body. A body is
/// parsed and validated or refused with a code; never a panic, and a refusal never repeats
/// what was sent.
pub fn bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let Some((message, code)) = refusal(which, body) else {
        return;
    };
    assert!(!code.is_empty());
    // No value the caller submitted comes back. A run of 8 or more letters and digits of a
    // value in the body (not a field's name) found in the message is an echo unless the
    // message still holds it when that run is sent changed (then it is the message's own
    // text, as "10000000000000" is).
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let mut values = Vec::new();
    leaves(&json, &mut values);
    let pieces: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(|c: char| !c.is_alphanumeric()))
        .filter(|p| p.len() >= 8)
        .collect();
    for piece in pieces {
        if !message.contains(piece) {
            continue;
        }
        let changed: String = piece
            .chars()
            .map(|c| match c {
                '0'..='8' | 'a'..='y' | 'A'..='Y' => char::from(c as u8 + 1),
                '9' => '0',
                'z' => 'a',
                'Z' => 'A',
                other => other,
            })
            .collect();
        let other = text.replace(piece, &changed);
        let again = refusal(which, other.as_bytes()).map(|(m, _)| m).unwrap_or_default();
        assert!(again.contains(piece), "the error repeats the body: {message}");
    }
}

/// Every string and number in a JSON value, as text.
fn leaves(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| leaves(i, out)),
        serde_json::Value::Object(m) => m.values().for_each(|i| leaves(i, out)),
        _ => {}
    }
}
