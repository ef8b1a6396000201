//! The spec and the tool cannot drift apart: `events/verify.py`, a verifier written from
//! events/VERIFYING.md alone (Python, standard library only), and `bindledger-replay verify`
//! must agree on an exported log and on tampered copies of it: both accept, or both reject at
//! the same place (the tool may name the event before, when it proves that one was altered).

use bindledger::ledger::checkpoint::CheckpointKey;
use bindledger_events::{decode, encode, hash_bytes};
use std::path::Path;
use std::process::Command;

fn python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// (exit code, first failing line) from verify.py.
fn independent(export: &Path, extra: &[&str]) -> (i32, Option<u64>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/verify.py");
    let out = Command::new(python().expect("python3 (make test installs it)"))
        .arg(script)
        .arg(export)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .strip_prefix("FAIL ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    (out.status.code().unwrap(), line)
}

/// (exit code, position of the problem) from the tool.
fn tool(export: &Path, extra: &[&str]) -> (i32, Option<u64>) {
    let out = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(["verify", "--json", "--export"])
        .arg(export)
        .args(extra)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.code().unwrap(), v["problem"]["position"].as_u64())
}

fn write(dir: &Path, name: &str, lines: &[Vec<u8>], sep: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain(sep.iter().copied()))
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    path
}

#[test]
fn the_independent_verifier_and_the_tool_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(bindledger_fixture::write_log(&data, 400).unwrap());
    let mut export = Vec::new();
    bindledger::ledger::offline::export(&data, 1, &mut export).unwrap();
    let lines: Vec<Vec<u8>> = export
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(lines.len(), 400);
    // Signed checkpoints at 100, 250 and 400.
    let key = CheckpointKey::load_or_create(&dir.path().join("cp.key")).unwrap();
    let cps: Vec<_> = [100usize, 250, 400]
        .iter()
        .map(|&s| key.sign(s as u64, hash_bytes(&lines[s - 1]), chrono::Utc::now()))
        .collect();
    let cp_file = dir.path().join("cps.ndjson");
    let cp_text: String = cps.iter().map(|c| serde_json::to_string(c).unwrap() + "\n").collect();
    std::fs::write(&cp_file, &cp_text).unwrap();
    let signed = [
        "--checkpoints",
        cp_file.to_str().unwrap(),
        "--public-key",
        &key.public_hex(),
    ];
    let signed: Vec<&str> = signed.to_vec();

    type Case<'a> = (&'a str, Vec<Vec<u8>>, &'a [u8]);
    let mut cases: Vec<Case> = vec![("intact", lines.clone(), b"\n")];
    let mut l = lines.clone();
    l[150] = String::from_utf8(l[150].clone())
        .unwrap()
        .replacen("\"account\":\"", "\"account\":\"x", 1)
        .into_bytes();
    cases.push(("altered", l, b"\n"));
    let mut l = lines.clone();
    l.remove(200);
    cases.push(("deleted", l, b"\n"));
    let mut l = lines.clone();
    l.insert(31, lines[30].clone());
    cases.push(("duplicated", l, b"\n"));
    let mut l = lines.clone();
    l.swap(60, 61);
    cases.push(("swapped", l, b"\n"));
    cases.push(("crlf", lines.clone(), b"\r\n"));
    let mut l = lines.clone();
    l.insert(10, Vec::new());
    cases.push(("blank", l, b"\n"));
    cases.push(("truncated", lines[..380].to_vec(), b"\n"));
    // A rewrite with the chain recomputed: only the checkpoints tell.
    let mut l = lines.clone();
    let mut prev = hash_bytes(&l[119]);
    for (i, b) in l.iter_mut().enumerate().skip(120) {
        let mut e = decode(b).unwrap();
        if i == 120 {
            e.correlation_id = Some("rewritten".into());
        }
        e.prev_hash = prev;
        *b = encode(&e);
        prev = hash_bytes(b);
    }
    cases.push(("rewritten", l, b"\n"));
    // What a reader of JSON might let through and the ledger's reader does not (or does): each
    // edit at event 151, the chain after it recomputed, so only the form decides.
    let text151 = String::from_utf8(lines[150].clone()).unwrap();
    let record_time = {
        let at = text151.find("\"record_time\":\"").unwrap() + "\"record_time\":\"".len();
        text151[at..at + 27].to_owned()
    };
    assert!(record_time.ends_with('Z') && record_time.len() == 27, "{record_time}");
    let edits: Vec<(&str, String)> = vec![
        (
            "seq_with_a_fraction",
            text151.replacen("\"seq\":151,", "\"seq\":151.0,", 1),
        ),
        (
            "seq_with_an_exponent",
            text151.replacen("\"seq\":151,", "\"seq\":1.51e2,", 1),
        ),
        (
            "seq_as_a_string",
            text151.replacen("\"seq\":151,", "\"seq\":\"151\",", 1),
        ),
        (
            "time_with_seven_digits",
            text151.replacen(&record_time, &format!("{}7Z", &record_time[..26]), 1),
        ),
        (
            "time_with_seven_digits_ending_in_zero",
            text151.replacen(&record_time, &format!("{}0Z", &record_time[..26]), 1),
        ),
        (
            "time_with_an_offset",
            text151.replacen(&record_time, &format!("{}+00:00", &record_time[..26]), 1),
        ),
        (
            "time_with_a_lowercase_t",
            text151.replacen(&record_time, &record_time.replacen('T', "t", 1), 1),
        ),
        (
            "time_with_a_space",
            text151.replacen(&record_time, &record_time.replacen('T', " ", 1), 1),
        ),
        ("a_byte_order_mark", format!("\u{feff}{text151}")),
        ("account_seq_not_a_number", {
            let at = text151.find("\"account_seq\":").unwrap() + "\"account_seq\":".len();
            let end = at + text151[at..].find(',').unwrap();
            format!("{}NaN{}", &text151[..at], &text151[end..])
        }),
        ("without_its_context", {
            let at = text151.find("\"context\":").unwrap();
            let end = at + text151[at..].find('}').unwrap() + 2;
            format!("{}{}", &text151[..at], &text151[end..])
        }),
    ];
    for (name, edited) in edits {
        assert_ne!(edited, text151, "{name}: the edit did not apply");
        let mut l = lines.clone();
        l[150] = edited.into_bytes();
        for i in 151..l.len() {
            let link = hash_bytes(&l[i - 1]).to_string();
            let text = String::from_utf8(l[i].clone()).unwrap();
            let at = text.find("\"prev_hash\":\"").unwrap() + "\"prev_hash\":\"".len();
            l[i] = format!("{}{link}{}", &text[..at], &text[at + 64..]).into_bytes();
        }
        cases.push((name, l, b"\n"));
    }
    // An account_seq edited in place (the chain not recomputed): the next event's link shows it.
    let mut l = lines.clone();
    let e = decode(&l[150]).unwrap();
    l[150] = text151
        .replacen(
            &format!("\"account_seq\":{},", e.account_seq),
            &format!("\"account_seq\":{},", e.account_seq + 1),
            1,
        )
        .into_bytes();
    assert_ne!(l[150], lines[150]);
    cases.push(("account_seq_edited", l, b"\n"));
    // An old event's bytes in place of a later one.
    let mut l = lines.clone();
    l[300] = lines[10].clone();
    cases.push(("an_old_event_in_place_of_another", l, b"\n"));

    for (name, lines, sep) in &cases {
        let path = write(dir.path(), &format!("{name}.ndjson"), lines, sep);
        for extra in [Vec::new(), signed.clone()] {
            let (py_code, py_line) = independent(&path, &extra);
            let (tool_code, tool_pos) = tool(&path, &extra);
            assert_eq!(
                py_code, tool_code,
                "{name} {extra:?}: verify.py {py_code} at {py_line:?}, the tool {tool_code} at {tool_pos:?}"
            );
            if let (Some(a), Some(b)) = (py_line, tool_pos) {
                assert!(
                    a == b || a == b + 1,
                    "{name} {extra:?}: verify.py at line {a}, the tool at position {b}"
                );
            }
        }
    }
    // A checkpoint's time rewritten to another form of the same instant: neither accepts it.
    let c = &cps[0];
    let canonical = c.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let shifted = (c.time + chrono::Duration::hours(8))
        .format("%Y-%m-%dT%H:%M:%S%.6f+08:00")
        .to_string();
    std::fs::write(&cp_file, cp_text.replacen(&canonical, &shifted, 1)).unwrap();
    let intact = dir.path().join("intact.ndjson");
    assert_eq!(independent(&intact, &signed).0, 3);
    assert_eq!(tool(&intact, &signed).0, 3);
}
