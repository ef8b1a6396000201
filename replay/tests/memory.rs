//! The audit tool's memory does not grow with the log: `verify` and `state` over an export
//! several times larger than the bound, and a single line far longer than any event, while the
//! process's peak resident memory (VmHWM, polled from /proc) stays under the bound.

use bindledger_events::{encode, hash_bytes, Context, Event, Hash, Payload, UnbindFailure, GENESIS_HASH, SCHEMA_VERSION};
use std::io::Write;
use std::process::{Command, Stdio};

/// Peak resident memory of a command run to its end, in bytes, with its exit code.
fn peak_rss(args: &[&str]) -> (i32, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bindledger-replay")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok()) {
                peak = peak.max(kb * 1024);
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            return (s.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

const BOUND_BYTES: u64 = 64 << 20;

#[test]
fn memory_stays_bounded_whatever_the_log_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut prev = GENESIS_HASH;
    let n = 300_000u64;
    for seq in 1..=n {
        let e = Event {
            v: SCHEMA_VERSION,
            id: uuid::Uuid::from_u128(seq as u128),
            seq,
            account: format!("acct-{}", seq % 5),
            account_seq: (seq - 1) / 5 + 1,
            event_time: chrono::DateTime::from_timestamp(1_790_000_000 + seq as i64, 0).unwrap(),
            record_time: chrono::DateTime::from_timestamp(1_790_000_000 + seq as i64, 0).unwrap(),
            idempotency_key: Some(format!("key-{seq}")),
            request_digest: Some(Hash([9; 32])),
            correlation_id: None,
            context: Context { channel: "app".into(), user_agent: Some("Mozilla/5.0 ".repeat(20)), ..Context::default() },
            prev_hash: prev,
            payload: Payload::UnbindFailed { binding_id: uuid::Uuid::from_u128(7), reason: UnbindFailure::NotBound },
        };
        let bytes = encode(&e);
        prev = hash_bytes(&bytes);
        out.write_all(&bytes).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 3 * BOUND_BYTES, "the log ({size} bytes) is several times the bound");
    let p = path.to_str().unwrap();
    for args in [vec!["verify", "--export", p], vec!["state", "--at", &n.to_string(), "--export", p]] {
        let (code, peak) = peak_rss(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(peak < BOUND_BYTES, "{args:?}: peak resident memory {peak} bytes over a {size}-byte log");
    }
    // One line far longer than any event: read up to 1 MiB, named, not held whole.
    let long = dir.path().join("long.ndjson");
    let mut f = std::fs::File::create(&long).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..200 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\n").unwrap();
    drop(f);
    let (code, peak) = peak_rss(&["verify", "--export", long.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(peak < BOUND_BYTES, "a 200 MiB line: peak resident memory {peak} bytes");
}
