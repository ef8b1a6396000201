//! The audit tool's memory does not grow with the log: `verify` and `state` over an export
//! several times larger than the bound, and a single line far longer than any event, while the
//! process's peak resident memory (VmHWM, polled from /proc) stays under the bound.

mod common;
use std::io::Write;
use std::process::{Command, Stdio};

/// Peak resident memory of a command run to its end, in bytes, with its exit code.
fn peak_rss(args: &[&str]) -> (i32, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bindledger-replay"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            {
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
    let n = 300_000u64;
    common::chain(
        n,
        &common::Shape {
            accounts: 5,
            user_agent_bytes: 240,
            keys: true,
        },
        |_, bytes| {
            out.write_all(bytes).unwrap();
            out.write_all(b"\n").unwrap();
            false
        },
    );
    out.flush().unwrap();
    drop(out);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size > 3 * BOUND_BYTES,
        "the log ({size} bytes) is several times the bound"
    );
    let p = path.to_str().unwrap();
    for args in [
        vec!["verify", "--export", p],
        vec!["state", "--at", &n.to_string(), "--export", p],
    ] {
        let (code, peak) = peak_rss(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(
            peak < BOUND_BYTES,
            "{args:?}: peak resident memory {peak} bytes over a {size}-byte log"
        );
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

/// Regression: the `--url` source held the whole log in memory (a 204 MB log: 347 MB
/// resident), and `state --url --at 10` read everything. Now it reads the feed a page at a
/// time and stops at the moment asked for.
#[test]
fn the_http_feed_is_read_in_bounded_memory() {
    use bindledger::config::{Config, Role, TokenConfig};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = bindledger::domain::secret::LedgerSecret::from_bytes([6; 32]);
    let n = 250_000u64;
    let written = {
        // Written as the ledger writes, with the secret the ledger will open it with.
        let store = bindledger::ledger::store::Store::open(&data).unwrap();
        store.check_secret(&secret.check_value()).unwrap();
        let mut batch = bindledger::ledger::store::LogBatch::default();
        let mut total = 0u64;
        common::chain(
            n,
            &common::Shape {
                accounts: 5,
                user_agent_bytes: 600,
                keys: false,
            },
            |seq, bytes| {
                total += bytes.len() as u64;
                batch.add_event(seq, bytes);
                if seq % 1024 == 0 {
                    store.apply_log(std::mem::take(&mut batch)).unwrap();
                }
                false
            },
        );
        store.apply_log(batch).unwrap();
        store.flush().unwrap();
        total
    };
    let log_bytes = written;
    assert!(
        log_bytes > 3 * BOUND_BYTES,
        "the log ({log_bytes} bytes) is several times the bound"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = "auditor-token-0123456789";
    let config = Config {
        data_dir: data.clone(),
        tokens: vec![TokenConfig {
            token: token.into(),
            roles: vec![Role::Auditor],
            name: None,
            client_cert_sha256: None,
        }],
        ..Config::default()
    };
    let g = std::sync::Arc::new(bindledger::adapters::provider::SimulatedGateway::new(
        config.gateway.simulated.clone(),
    ));
    let (addr, stop, server, node) = rt.block_on(async {
        let mut config = config.clone();
        config.alerts.enabled = false;
        config.checkpoints.enabled = false;
        let node = bindledger::node::Node::start(&config, secret, g).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bindledger::adapters::http::serve(
            listener,
            node.state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, stop, server, node)
    });
    let url = format!("http://{addr}");
    for args in [
        vec!["verify", "--url", &url, "--token", token],
        vec!["state", "--at", "10", "--url", &url, "--token", token],
    ] {
        let started = std::time::Instant::now();
        let (code, peak) = peak_rss(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(
            peak < BOUND_BYTES,
            "{args:?}: peak resident memory {peak} bytes over a {log_bytes}-byte log"
        );
        if args[0] == "state" {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "state --at 10 stops reading early"
            );
        }
    }
    rt.block_on(async {
        let _ = stop.send(());
        let _ = server.await;
        node.stop().await;
    });
}
