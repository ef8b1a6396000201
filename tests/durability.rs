//! Durability at the system-call level (issue 16, first part): the real `bindledger serve`
//! runs under `strace`, which records every write to sled's log file, every `fdatasync` and
//! `fsync`, and every answer written to a socket. For each command, the write that carried its
//! event is found by the command's unique order id, and so is the answer: the answer must come
//! after a full sync of the log file that began after that write ended. The same check run
//! with `writer.sync_data = false` finds answers without one, so it can tell the two apart.

mod common;

use bindledger::adapters::http::client::Client;
use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// One system call from strace's output: thread, name, first argument, whether this line
/// starts it and whether it ends it, and the rest of the line.
struct Call {
    name: String,
    fd: Option<i64>,
    start: bool,
    end: bool,
    text: String,
}

fn leading_number(s: &str) -> Option<i64> {
    let digits: String = s.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses `strace -f -o` output. An interrupted call shows as `NAME(args <unfinished ...>`
/// and later `<... NAME resumed>...`; both halves keep their order in the file.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut open_args: HashMap<String, String> = HashMap::new();
    for line in trace.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split(' ').next().unwrap_or("").to_owned();
            let args = open_args.remove(&format!("{tid}:{name}")).unwrap_or_default();
            let fd = leading_number(&args);
            calls.push(Call {
                name,
                fd,
                start: false,
                end: true,
                text: format!("{args}{resumed}"),
            });
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.contains(' ') || name.starts_with('+') || name.starts_with('-') {
            continue;
        }
        let fd = leading_number(args);
        let unfinished = args.ends_with("<unfinished ...>");
        if unfinished {
            open_args.insert(format!("{tid}:{name}"), args.to_owned());
        }
        calls.push(Call {
            name: name.to_owned(),
            fd,
            start: true,
            end: !unfinished,
            text: args.to_owned(),
        });
    }
    calls
}

/// Runs `n` payments (half one at a time, half at once) against `serve` under strace and
/// returns, per command, whether its answer came after a full sync covering its event.
fn answers_after_sync(extra_config: &str, n: usize) -> Vec<(String, bool)> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let trace_path = dir.path().join("trace.txt");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[alerts]\nenabled = false\n[checkpoints]\nenabled = false\n{extra_config}"),
    )
    .unwrap();
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("strace is installed (make test installs it)");
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(strace)
        .args([
            "-f",
            "-s",
            "65536",
            "-e",
            "trace=openat,pwrite64,pwritev,write,writev,sendto,sendmsg,fdatasync,fsync",
            "-o",
        ])
        .arg(&trace_path)
        .arg(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("BINDLEDGER_CONFIG", &config)
        .env("BINDLEDGER_TOKENS", format!("writer+reader+auditor+security:{ALL}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so that the ledger under strace can be stopped with it.
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let g =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::config::Config::default().gateway.simulated);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orders: Vec<String> = rt.block_on(async {
        let mut c = Client::new(addr, Some(ALL.into()));
        let (_, v) = c
            .post_json("/v1/accounts/alice/bindings", &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": g.password_for(&alipay(), &phone(1))}))
            .await
            .unwrap();
        let binding = v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
        let password = g.password_for(&alipay(), &phone(1));
        let body = |order: &str| json!({"binding_id": binding, "order_id": order, "amount_minor": 1, "payment_password": password});
        let mut orders = Vec::new();
        for i in 0..n / 2 {
            let order = format!("order-{}-sequential-{i}", std::process::id());
            let (status, v) = c.post_json("/v1/accounts/alice/payments", &body(&order)).await.unwrap();
            assert_eq!(status.as_u16(), 201, "{v}");
            orders.push(order);
        }
        let mut tasks = Vec::new();
        for i in 0..n / 2 {
            let order = format!("order-{}-concurrent-{i}", std::process::id());
            let b = body(&order);
            tasks.push(tokio::spawn(async move {
                let mut c = Client::new(addr, Some(ALL.into()));
                let (status, v) = c.post_json("/v1/accounts/alice/payments", &b).await.unwrap();
                assert_eq!(status.as_u16(), 201, "{v}");
            }));
            orders.push(order);
        }
        for t in tasks {
            t.await.unwrap();
        }
        orders
    });
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .status();
    child.wait().unwrap();
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let calls = parse(&trace);
    // The file descriptor of sled's log file.
    let db_fds: Vec<i64> = calls
        .iter()
        .filter(|c| c.name == "openat" && c.text.contains("/log/db\""))
        .filter_map(|c| c.text.rsplit("= ").next().and_then(|r| r.trim().parse().ok()))
        .collect();
    assert!(
        !db_fds.is_empty(),
        "sled's log file was opened:\n{}",
        &trace[..trace.len().min(2000)]
    );
    let is_db = |c: &Call| c.fd.is_some_and(|fd| db_fds.contains(&fd));
    orders
        .into_iter()
        .map(|order| {
            let needle = format!("\\\"order_id\\\":\\\"{order}\\\"");
            // The log write that carried the event, and where it ended.
            let written = calls
                .iter()
                .position(|c| c.name.starts_with("pwrite") && c.start && is_db(c) && c.text.contains(&needle))
                .unwrap_or_else(|| panic!("no write of {order} to the log file"));
            let written_end = (written..calls.len())
                .find(|&i| calls[i].name.starts_with("pwrite") && calls[i].end && is_db(&calls[i]))
                .unwrap();
            // The answer: a socket write with the event in it.
            let answered = calls
                .iter()
                .position(|c| {
                    matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                        && c.start
                        && !is_db(c)
                        && c.text.contains("HTTP/1.1 201")
                        && c.text.contains(&needle)
                })
                .unwrap_or_else(|| panic!("no answer for {order}"));
            // A full sync of the log file that began after the write ended and ended before the
            // answer began.
            let synced = (written_end + 1..answered).any(|i| {
                let c = &calls[i];
                matches!(c.name.as_str(), "fdatasync" | "fsync")
                    && c.start
                    && is_db(c)
                    && (i..answered).any(|j| calls[j].name == c.name && calls[j].end && is_db(&calls[j]))
            });
            (order, synced)
        })
        .collect()
}

#[test]
fn no_answer_leaves_before_a_full_sync_of_its_event() {
    let results = answers_after_sync("", 40);
    let unsynced: Vec<&String> = results.iter().filter(|(_, ok)| !ok).map(|(o, _)| o).collect();
    assert!(unsynced.is_empty(), "answered before a full sync: {unsynced:?}");
}

#[test]
fn the_check_tells_a_ledger_without_the_sync_apart() {
    // sled's own periodic fsync may happen to cover an answer now and then; most are not.
    let results = answers_after_sync("[writer]\nsync_data = false\n", 40);
    let unsynced = results.iter().filter(|(_, ok)| !ok).count();
    assert!(
        unsynced >= 10,
        "without the sync, answers leave before one: {unsynced} of {}",
        results.len()
    );
}
