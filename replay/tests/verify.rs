//! The audit tool on exports built with the schema crate alone: intact, and tampered in each
//! way an auditor must catch (altered bytes, a missing event, a duplicate, a reordering), each
//! located.

use bindledger_events::hash_bytes;
use std::process::Command;

mod common;

fn export(n: u64) -> Vec<String> {
    common::log(n)
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect()
}

/// Runs `verify --json` on the lines; returns the exit code and the report.
fn verify(lines: &[String]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.ndjson");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(["verify", "--json", "--export", path.to_str().unwrap()])
        .output()
        .unwrap();
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), report)
}

fn problem(lines: &[String]) -> (String, u64, u64) {
    let (code, r) = verify(lines);
    assert_eq!(code, 3, "{r}");
    let p = &r["problem"];
    (
        p["kind"].as_str().unwrap().to_owned(),
        p["seq"].as_u64().unwrap(),
        r["events"].as_u64().unwrap(),
    )
}

#[test]
fn an_intact_export_verifies() {
    let lines = export(20);
    let (code, r) = verify(&lines);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["events"], 20);
    assert_eq!(r["head"], hash_bytes(lines[19].as_bytes()).to_hex());
    assert!(r["problem"].is_null());
}

#[test]
fn altered_bytes_are_located_at_the_altered_event() {
    // A payload field changed: the next event's link no longer matches.
    let mut lines = export(21);
    lines[9] = lines[9].replace("\"channel\":\"app\"", "\"channel\":\"web\"");
    assert_eq!(problem(&lines), ("altered".into(), 10, 9));
    // The account changed (its per-account sequence breaks first): still the altered event.
    let mut lines = export(21);
    lines[9] = lines[9].replace("\"a1\"", "\"a2\"");
    assert_eq!(problem(&lines), ("altered".into(), 10, 9));
    // The link itself changed in event 12: event 12 is the altered one, not event 11.
    let mut lines = export(21);
    let link = hash_bytes(lines[10].as_bytes()).to_hex();
    lines[11] = lines[11].replace(&link, &"0".repeat(64));
    assert_eq!(problem(&lines), ("altered".into(), 12, 11));
    // The last event altered.
    let mut lines = export(21);
    lines[20] = lines[20].replace("\"channel\":\"app\"", "\"channel\":\"api\"");
    let (code, r) = verify(&lines);
    assert_eq!(
        code, 0,
        "nothing links to the last event: only a signed checkpoint can catch this ({r})"
    );
}

#[test]
fn a_missing_event_is_named() {
    let mut lines = export(22);
    lines.remove(4);
    assert_eq!(problem(&lines), ("missing".into(), 5, 4));
    let (_, r) = verify(&lines);
    assert!(
        r["problem"]["found"]
            .as_str()
            .unwrap()
            .contains("no event 5 here or in the next"),
        "{r}"
    );
}

#[test]
fn a_duplicate_is_named() {
    let mut lines = export(22);
    lines.insert(7, lines[6].clone());
    assert_eq!(problem(&lines), ("duplicate".into(), 7, 7));
}

#[test]
fn a_reordering_is_named() {
    let mut lines = export(22);
    lines.swap(11, 12);
    assert_eq!(problem(&lines), ("reordered".into(), 12, 11));
}

#[test]
fn garbage_is_named_and_usage_errors_exit_2() {
    let mut lines = export(5);
    lines[2] = "{not json".into();
    assert_eq!(problem(&lines), ("undecodable".into(), 3, 2));
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(["verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no source: bad usage");
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(["verify", "--export", "a", "--data-dir", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "two sources: bad usage");
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.ndjson");
    std::fs::write(&path, export(30_000).join("\n") + "\n").unwrap();
    let bin = env!("CARGO_BIN_EXE_bindledger-replay");
    // Piped: the report on stdout, nothing on stderr.
    let out = Command::new(bin)
        .args(["verify", "--export", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // On a terminal (script(1) gives the command one): a progress line with a rate.
    let cmd = format!("{bin} verify --export {} >/dev/null", path.display());
    match Command::new("script").args(["-qec", &cmd, "/dev/null"]).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(" events, ") && text.contains("/s"), "{text}");
        }
        Err(e) => eprintln!("script(1) is not available ({e}): the terminal case is not checked here"),
    }
}

/// The CLI hashes and decodes on worker threads in batches: over many batches, each problem is
/// still found at its place, and the pipeline yields exactly what a plain read does, in order.
#[test]
fn the_pipeline_keeps_the_order_across_batches_and_threads() {
    let lines = export(5_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.ndjson");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let source = bindledger_replay::Source::Export(path);
    let plain: Vec<bindledger_replay::Decoded> = source
        .read()
        .unwrap()
        .map(|r| bindledger_replay::Decoded::new(r.unwrap()))
        .collect();
    for workers in [1, 2, 3] {
        let piped: Vec<bindledger_replay::Decoded> = bindledger_replay::Pipeline::start(source.clone(), workers)
            .map(Result::unwrap)
            .collect();
        assert_eq!(piped.len(), 5_000);
        for (a, b) in plain.iter().zip(&piped) {
            assert_eq!((&a.bytes, a.hash, &a.event), (&b.bytes, b.hash, &b.event));
        }
    }
    let (code, r) = verify(&lines);
    assert_eq!((code, r["events"].as_u64()), (0, Some(5_000)), "{r}");
    let mut swapped = lines.clone();
    swapped.swap(3_999, 4_000);
    assert_eq!(problem(&swapped), ("reordered".into(), 4_000, 3_999));
    let mut cut = lines.clone();
    cut.remove(2_600);
    assert_eq!(problem(&cut), ("missing".into(), 2_601, 2_600));
    let mut bad = lines.clone();
    bad[4_998] = bad[4_998].replace("not_bound", "not_bound\",\"x\":\"");
    assert_eq!(problem(&bad).1, 4_999);
}

/// A source that cannot be read reports it through the pipeline, which then ends.
#[test]
fn a_source_error_comes_through_the_pipeline() {
    let mut p = bindledger_replay::Pipeline::start(
        bindledger_replay::Source::Export("/nonexistent/export.ndjson".into()),
        2,
    );
    assert!(p
        .next()
        .unwrap()
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/export.ndjson"));
    assert!(p.next().is_none());
}

/// Asking a directory without a log how long it is creates nothing there.
#[test]
fn a_directory_without_a_log_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-ledger-here");
    assert_eq!(bindledger_replay::Source::DataDir(missing.clone()).len_hint(), None);
    assert!(!missing.exists());
}
