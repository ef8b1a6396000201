//! Issue 14's regressions: an outside auditor's tampering cases, each named with the right kind
//! at the right place; no command panics or folds an unverified event; bounded lines, blank
//! lines, empty sources, CRLF; partial exports verified from a trusted head; usage errors exit
//! 2; a failed checkpoint signature says what was (not) checked.

use bindledger::ledger::checkpoint::CheckpointKey;
use bindledger_events::{decode, encode, hash_bytes, Event, Hash};
use std::process::Command;

mod common;
use common::log;

fn write(dir: &std::path::Path, name: &str, lines: &[Vec<u8>], sep: &[u8]) -> String {
    let path = dir.join(name);
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(l);
        body.extend_from_slice(sep);
    }
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `verify --json` on the lines: (exit code, report).
fn verify(lines: &[Vec<u8>], extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "export.ndjson", lines, b"\n");
    let mut args = vec!["verify", "--json", "--export", &path];
    args.extend_from_slice(extra);
    let (code, out, err) = run(&args);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}")),
    )
}

fn problem(lines: &[Vec<u8>]) -> (String, u64, u64) {
    let (code, r) = verify(lines, &[]);
    assert_eq!(code, 3, "{r}");
    (
        r["problem"]["kind"].as_str().unwrap().to_owned(),
        r["problem"]["seq"].as_u64().unwrap(),
        r["problem"]["position"].as_u64().unwrap(),
    )
}

fn edit(bytes: &[u8], f: impl FnOnce(&mut Event)) -> Vec<u8> {
    let mut e = decode(bytes).unwrap();
    f(&mut e);
    encode(&e)
}

#[test]
fn each_tampering_is_named_by_what_the_evidence_proves() {
    let base = log(100);
    // Two events of one account swapped 33 apart: a reordering (the event is further on),
    // not a missing one.
    let mut l = base.clone();
    l.swap(30, 63);
    assert_eq!(problem(&l), ("reordered".into(), 31, 31));
    let (_, r) = verify(&l, &[]);
    assert!(r["problem"]["found"].as_str().unwrap().contains("position 64"), "{r}");
    // An event whose seq field was edited: it still links to the one before, so it is that
    // event, altered; nothing is missing.
    let mut l = base.clone();
    l[40] = edit(&l[40], |e| e.seq = 50);
    assert_eq!(problem(&l), ("altered".into(), 41, 41));
    // A duplicate a few events after its original, and an old event's bytes in place of
    // another: both are duplicates of the event they repeat, at the place they stand.
    let mut l = base.clone();
    l.insert(15, l[11].clone());
    assert_eq!(problem(&l), ("duplicate".into(), 12, 16));
    let mut l = base.clone();
    l[9] = l[2].clone();
    let (code, r) = verify(&l, &[]);
    assert_eq!(
        (
            code,
            r["problem"]["kind"].as_str(),
            r["problem"]["seq"].as_u64(),
            r["problem"]["position"].as_u64()
        ),
        (3, Some("duplicate"), Some(3), Some(10)),
        "{r}"
    );
    assert!(
        r["problem"]["found"].as_str().unwrap().contains("in place of event 10"),
        "{r}"
    );
    // Regression: an account's first event with its account_seq edited was named
    // `account_sequence`; the next event does not link to its bytes, so it was altered.
    let mut l = base.clone();
    l[0] = edit(&l[0], |e| e.account_seq = 2);
    assert_eq!(problem(&l), ("altered".into(), 1, 1));
    let mut l = base.clone();
    l[50] = edit(&l[50], |e| e.account_seq += 1);
    assert_eq!(problem(&l), ("altered".into(), 51, 51));
    // The last event's: nothing after it links to it, so the sequence is what is named...
    let mut l = base.clone();
    l[99] = edit(&l[99], |e| e.account_seq += 1);
    assert_eq!(problem(&l), ("account_sequence".into(), 100, 100));
    // Regression: an old event's bytes in place of another, too old to compare, were named
    // `reordered` at the copied event's seq (which was verified at its own place); the problem
    // is where event E belongs.
    let big = log(4200);
    let mut l = big.clone();
    l[4150] = big[10].clone();
    assert_eq!(problem(&l), ("reordered".into(), 4151, 4151));
    // A second, different event claiming an old seq: a conflict.
    let mut l = base.clone();
    l.insert(20, edit(&base[4], |e| e.correlation_id = Some("forged".into())));
    assert_eq!(problem(&l), ("conflict".into(), 5, 21));
    // The last event's prev_hash edited: with nothing after it, the chain alone cannot tell
    // which of the two changed, and says so...
    let mut l = base.clone();
    l[99] = edit(&l[99], |e| e.prev_hash = Hash([1; 32]));
    assert_eq!(problem(&l), ("broken_link".into(), 100, 100));
    // ...but a signed checkpoint at the last event proves it was that one.
    let dir = tempfile::tempdir().unwrap();
    let key = CheckpointKey::load_or_create(&dir.path().join("cp.key")).unwrap();
    let cp = key.sign(100, hash_bytes(&base[99]), chrono::Utc::now());
    let cps = dir.path().join("checkpoints.ndjson");
    std::fs::write(&cps, serde_json::to_string(&cp).unwrap() + "\n").unwrap();
    let (code, r) = verify(
        &l,
        &[
            "--checkpoints",
            cps.to_str().unwrap(),
            "--public-key",
            &key.public_hex(),
        ],
    );
    assert_eq!(
        (code, r["problem"]["kind"].as_str(), r["problem"]["seq"].as_u64()),
        (3, Some("altered"), Some(100)),
        "{r}"
    );
    // Bytes that are not the ledger's canonical encoding, before a broken link at the end:
    // that event was altered.
    let mut l = base.clone();
    l[98] = String::from_utf8(l[98].clone())
        .unwrap()
        .replace("not_bound\"", "not_bound\",\"x\":1")
        .into_bytes();
    assert_eq!(problem(&l), ("altered".into(), 99, 99));
    // CRLF line endings: the first event's line, not the second event's link.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "crlf.ndjson", &base[..5], b"\r\n");
    let (code, out, _) = run(&["verify", "--json", "--export", &path]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            code,
            r["problem"]["kind"].as_str(),
            r["problem"]["seq"].as_u64(),
            r["problem"]["position"].as_u64()
        ),
        (3, Some("line_ending"), Some(1), Some(1)),
        "{r}"
    );
}

#[test]
fn blank_lines_empty_sources_and_overlong_lines_are_problems_not_ok() {
    let base = log(10);
    let mut l = base.clone();
    l.insert(4, Vec::new());
    assert_eq!(problem(&l), ("blank_line".into(), 5, 5));
    assert_eq!(problem(&[]), ("empty".into(), 1, 1));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "blank.ndjson", &[Vec::new(), Vec::new()], b"\n");
    let (code, out, _) = run(&["verify", "--json", "--export", &path]);
    assert_eq!(code, 3, "{out}");
    // A line far longer than any event: read up to the bound, named, and the rest skipped.
    let mut l = base.clone();
    l[6] = vec![b'x'; 3 << 20];
    let (code, r) = verify(&l, &[]);
    assert_eq!(
        (code, r["problem"]["kind"].as_str(), r["problem"]["seq"].as_u64()),
        (3, Some("undecodable"), Some(7)),
        "{r}"
    );
    assert!(r["problem"]["found"].as_str().unwrap().contains("more than"), "{r}");
}

/// Regression: `state`, `diff` and `backtest` panicked (exit 101) on a log with a deleted,
/// duplicated or swapped event and on a legitimate `export --from N` file; `history` printed a
/// duplicated event twice and exited 0; an edited amount flowed into `state`.
#[test]
fn no_command_panics_or_folds_an_unverified_event() {
    let base = log(60);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[amount_spike]\nenabled = false\n").unwrap();
    let mut deleted = base.clone();
    deleted.remove(20);
    let mut duplicated = base.clone();
    duplicated.insert(21, base[20].clone());
    let mut swapped = base.clone();
    swapped.swap(20, 21);
    let mut amount = base.clone();
    amount[30] = edit(&amount[30], |e| e.correlation_id = Some("edited".into()));
    let partial = base[30..].to_vec();
    for (name, lines) in [
        ("deleted", &deleted),
        ("duplicated", &duplicated),
        ("swapped", &swapped),
        ("edited", &amount),
        ("partial", &partial),
    ] {
        let path = write(dir.path(), &format!("{name}.ndjson"), lines, b"\n");
        for args in [
            vec!["state", "--at", "59", "--export", &path],
            vec!["state", "--json", "--at", "59", "--export", &path],
            vec!["backtest", "--rules", rules.to_str().unwrap(), "--export", &path],
            vec!["history", "--account", "a0", "--export", &path],
        ] {
            let (code, out, err) = run(&args);
            assert_eq!(code, 3, "{name} {args:?}: {out} {err}");
            assert!(err.contains("the log does not verify"), "{name} {args:?}: {err}");
            if args[0] == "history" {
                // Only what verified was printed, each event once.
                let seqs: Vec<&str> = out.lines().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
                let mut unique = seqs.clone();
                unique.dedup();
                assert_eq!(seqs, unique, "{name}");
            }
        }
    }
    // state --at before the damage still answers: reading stops at the moment.
    let path = write(dir.path(), "late.ndjson", &deleted, b"\n");
    let (code, out, err) = run(&["state", "--json", "--at", "10", "--export", &path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["position"], 10);
}

/// A partial export verifies from a trusted head; without it, it is named as missing events.
#[test]
fn a_partial_export_verifies_from_a_trusted_head() {
    let base = log(50);
    let partial = base[20..].to_vec();
    let (code, r) = verify(&partial, &[]);
    assert_eq!(
        (code, r["problem"]["kind"].as_str(), r["problem"]["seq"].as_u64()),
        (3, Some("missing"), Some(1)),
        "{r}"
    );
    let head = format!("20:{}", hash_bytes(&base[19]).to_hex());
    let (code, r) = verify(&partial, &["--trusted-head", &head]);
    assert_eq!(
        (code, r["events"].as_u64(), r["first_seq"].as_u64()),
        (0, Some(30), Some(21)),
        "{r}"
    );
    // Regression: a wrong trusted head blamed event 21, which nothing says changed. The
    // trusted head is what does not match.
    let wrong = format!("20:{}", hash_bytes(&base[18]).to_hex());
    let (code, r) = verify(&partial, &["--trusted-head", &wrong]);
    assert_eq!(
        (code, r["problem"]["kind"].as_str(), r["problem"]["seq"].as_u64()),
        (3, Some("trusted_head"), Some(20)),
        "{r}"
    );
    // But event 21 whose link was edited, with event 22 not linking to its bytes: event 21.
    let mut edited = partial.clone();
    edited[0] = edit(&edited[0], |e| e.prev_hash = Hash([7; 32]));
    let (code, r) = verify(&edited, &["--trusted-head", &head]);
    assert_eq!(
        (code, r["problem"]["kind"].as_str(), r["problem"]["seq"].as_u64()),
        (3, Some("altered"), Some(21)),
        "{r}"
    );
}

/// Regressions: `--public-key xyz` exited 3 as a signature problem; `--public-key` without
/// `--checkpoints` was ignored; a failed signature printed "events: 0, chain head 000...".
#[test]
fn usage_errors_exit_2_and_a_bad_signature_says_nothing_was_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "e.ndjson", &log(5), b"\n");
    let good_key = CheckpointKey::load_or_create(&dir.path().join("k1")).unwrap();
    let other_key = CheckpointKey::load_or_create(&dir.path().join("k2")).unwrap();
    let cps = dir.path().join("cps.ndjson");
    std::fs::write(
        &cps,
        serde_json::to_string(&other_key.sign(5, hash_bytes(&log(5)[4]), chrono::Utc::now())).unwrap() + "\n",
    )
    .unwrap();
    for args in [
        vec![
            "verify",
            "--export",
            &path,
            "--checkpoints",
            cps.to_str().unwrap(),
            "--public-key",
            "xyz",
        ],
        vec!["verify", "--export", &path, "--public-key", "ab"],
        vec!["verify"],
        vec!["verify", "--trusted-head", "nonsense", "--export", &path],
        vec![
            "verify",
            "--export",
            &path,
            "--public-key",
            good_key.public_hex().as_str(),
        ],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, out, _) = run(&[
        "verify",
        "--export",
        &path,
        "--checkpoints",
        cps.to_str().unwrap(),
        "--public-key",
        &good_key.public_hex(),
    ]);
    assert_eq!(code, 3);
    assert!(
        out.contains("checkpoint 1 (for event 5) FAILED") && out.contains("the log was not checked"),
        "{out}"
    );
    // Regression: `position` meant the checkpoint's line here and the log's position
    // elsewhere. It is the log's only; the checkpoint has a field of its own.
    let (code, out, _) = run(&[
        "verify",
        "--json",
        "--export",
        &path,
        "--checkpoints",
        cps.to_str().unwrap(),
        "--public-key",
        &good_key.public_hex(),
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            code,
            r["problem"]["kind"].as_str(),
            r["problem"]["position"].as_u64(),
            r["problem"]["checkpoint"].as_u64()
        ),
        (3, Some("checkpoint_signature"), Some(0), Some(1)),
        "{r}"
    );
    assert!(!out.contains("chain head: 000"), "{out}");
    // What verify proved, in words.
    let (code, out, _) = run(&["verify", "--export", &path]);
    assert_eq!(code, 0);
    assert!(out.contains("5 verified, 1..5") && out.contains("none given"), "{out}");
}

/// Regression: a corrupt sled file was reported as "could not be written" during a read-only
/// operation, with no position. Flipping a byte in event data read by sled is reported as
/// corruption with the place it was reading; no flip is ever "could not be written". (Where the
/// flip lands decides what sled does: space it no longer uses changes nothing, and damage it
/// meets during recovery makes it drop what follows; see the closing note of issue 14.)
#[test]
fn a_corrupt_store_is_named_as_corrupt_with_where_it_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        // As the ledger writes: small batches, one flush each.
        let store = bindledger::ledger::store::Store::open(&data).unwrap();
        for chunk in log(3000).chunks(64).enumerate() {
            let mut batch = bindledger::ledger::store::LogBatch::default();
            for (i, bytes) in chunk.1.iter().enumerate() {
                batch.add_event((chunk.0 * 64 + i + 1) as u64, bytes);
            }
            store.apply_log(batch).unwrap();
            store.flush().unwrap();
        }
    }
    let db = data.join("log").join("db");
    let pristine = std::fs::read(&db).unwrap();
    let places = bindledger_fixture::payload_offsets(&pristine, 97);
    let mut named = 0;
    for at in places {
        let mut bytes = pristine.clone();
        bytes[at + 3] ^= 1;
        std::fs::write(&db, &bytes).unwrap();
        let (code, _, err) = run(&["verify", "--data-dir", data.to_str().unwrap()]);
        assert!(!err.contains("could not be written"), "{err}");
        if code == 1 {
            // Found while opening (sled's recovery), or while reading a chunk: either way, what
            // was being read is named.
            assert!(
                err.contains("corrupt")
                    && (err.contains("after the chunk of event") || err.contains("opening the log in")),
                "{err}"
            );
            named += 1;
        }
        std::fs::write(&db, &pristine).unwrap();
        if named >= 2 {
            break;
        }
    }
    assert!(named > 0, "no flip reached sled's corruption check");
}

/// Regressions: bad `--at` values exited 1, and `--at` past the log's end answered the end;
/// `--help` of a command listed no exit codes.
#[test]
fn state_at_is_checked_and_every_help_lists_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "e.ndjson", &log(20), b"\n");
    for bad in ["tomorrow", "-3", "12:00", "2026-13-01T00:00:00Z", ""] {
        let at = format!("--at={bad}");
        let (code, _, err) = run(&["state", "--export", &path, &at]);
        assert_eq!(code, 2, "--at {bad:?}: {err}");
        assert!(err.contains("RFC 3339"), "--at {bad:?}: {err}");
    }
    let (code, out, err) = run(&["state", "--export", &path, "--at", "20"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("after event 20"), "{out}");
    let (code, _, err) = run(&["state", "--export", &path, "--at", "21"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the log ends at event 20, before --at 21"), "{err}");
    let (code, _, err) = run(&["state", "--export", &path, "--at", "2100-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "a moment after the last event is the end state: {err}");
    for command in ["verify", "history", "state", "backtest", "diff", "bench"] {
        let (code, out, _) = run(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Exit codes: 0 success"), "{command} --help:\n{out}");
    }
}

/// Regression: reading a data directory whose `log/conf` was removed recreated it: a read must
/// never write to the directory it audits. A directory without its files is refused, and an
/// intact one is left byte for byte as it was.
#[test]
fn reading_a_directory_never_writes_to_it() {
    fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    out.insert(p.clone(), Vec::new());
                    stack.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(bindledger_fixture::write_log(&data, 300).unwrap());
    let data_arg = data.to_str().unwrap();
    let before = snapshot(&data);
    for args in [
        vec!["verify", "--data-dir", data_arg],
        vec!["history", "--data-dir", data_arg, "--account", "acct-00001"],
        vec!["state", "--data-dir", data_arg, "--at", "100"],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let after = snapshot(&data);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{args:?} changed the directory's files"
        );
        for (path, bytes) in &before {
            assert!(after[path] == *bytes, "{args:?} wrote to {}", path.display());
        }
    }
    std::fs::remove_file(data.join("log/conf")).unwrap();
    let (code, _, err) = run(&["verify", "--data-dir", data_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("log/conf is missing"), "{err}");
    assert!(!data.join("log/conf").exists(), "the read recreated log/conf");
}
