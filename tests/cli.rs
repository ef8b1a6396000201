//! The `bindledger` binary as a user runs it.

mod common;

use common::*;
use std::process::Command;

#[test]
fn a_live_log_is_refused_to_offline_tools_and_a_stopped_one_exports_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = spawn_server(&data, &log, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
        for i in 0..5 {
            let body =
                serde_json::json!({"provider": "wechat_pay", "wallet_account": phone(i), "payment_password": "000000"});
            let (status, _) = c
                .post_json(&format!("/v1/accounts/u{i}/bindings"), &body)
                .await
                .unwrap();
            assert_eq!(status.as_u16(), 201);
        }
    });
    let (code, _, stderr) = run_cli(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    server.kill();

    let out = dir.path().join("events.ndjson");
    let (code, _, stderr) = run_cli(&[
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("exported 5 events"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 5);
    let (code, stdout, _) = run_cli(&["verify", "--data-dir", data.to_str().unwrap()]);
    let stdout = String::from_utf8(stdout).unwrap();
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("chain:       ok"), "{stdout}");
    let (code, _, stderr) = run_cli(&["verify", "--data-dir", dir.path().join("nothing").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no ledger log"), "{stderr}");
}

#[test]
fn without_configured_tokens_an_admin_token_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = spawn_server(&data, &log, &[("BINDLEDGER_TOKENS", "")]);
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(data.join("admin.token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(data.join("secret.key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (status, _) = bindledger::adapters::http::client::Client::new(server.addr, Some(token.trim().into()))
            .get_json("/v1/accounts/x/bindings")
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 200);
        let (status, _) = bindledger::adapters::http::client::Client::new(server.addr, None)
            .get_json("/v1/accounts/x/bindings")
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 401);
    });
}

#[test]
fn a_bad_configuration_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "data_dir = \"x\"\n[writer]\nbatch_maxx = 3\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("batch_maxx") && stderr.contains("bad.toml"), "{stderr}");
    let (code, stdout, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&stdout).contains("Exit codes"));
    let (code, _, _) = run_cli(&["no-such-command"]);
    assert_eq!(code, 2);
}

#[test]
fn sim_wallet_tells_what_the_simulated_provider_expects() {
    use bindledger::adapters::provider::{Scenario, SimulatedGateway};
    let (code, out, stderr) = run_cli(&["sim-wallet", "--provider", "wechat_pay", "13900001111"]);
    assert_eq!(code, 0, "{stderr}");
    let out = String::from_utf8(out).unwrap();
    let g = SimulatedGateway::new(Scenario::default());
    let p = bindledger_events::Provider::parse("wechat_pay").unwrap();
    assert!(
        out.contains(&format!("payment_password:  {}", g.password_for(&p, "13900001111"))),
        "{out}"
    );
    assert!(
        out.contains(&format!("{:?}", g.wallet_status(&p, "13900001111"))),
        "{out}"
    );
}

#[test]
fn the_demo_runs_raises_alerts_and_leaves_a_log_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(binary())
        .args([
            "demo",
            "--duration-s",
            "4",
            "--header-every",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .current_dir(root)
        .env_remove("BINDLEDGER_CONFIG")
        .env_remove("BINDLEDGER_KAFKA_BROKERS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "ALERT high",
        "== outcomes after",
        "payment_succeeded",
        "== hash chain:",
        "== alerts",
        "protective locks:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the demo's output:\n{text}");
    }
    // The live table fits 80 columns and repeats its header (here every 2 rows); stdout is a
    // pipe, so nothing is coloured.
    let headers = text.lines().filter(|l| l.trim_start().starts_with("t(s)")).count();
    assert!(headers >= 2, "the table's header was not repeated:\n{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("t(s)")
                || l.split_whitespace().count() == 11 && l.trim_start().starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    assert!(rows.len() >= headers + 3, "no table rows:\n{text}");
    for row in &rows {
        assert!(
            row.chars().count() <= 80,
            "a table line is wider than 80 columns: {row:?}"
        );
    }
    assert!(!text.contains('\x1b'), "colour codes in piped output:\n{text}");
    // An alert over many events stays on one line: its events are shortened.
    for l in text.lines().filter(|l| l.contains("ALERT ")) {
        assert!(l.matches(", ").count() < 8, "an alert line lists every event: {l}");
    }
    // The alerts tell the population's story: on the planted attackers, not ordinary shoppers.
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("alerts on the attackers:"))
        .unwrap_or_else(|| panic!("{text}"));
    let counts: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(counts[0] > 0 && counts[1] == 0, "{line}");
    // The command it prints to check the log works, alerts included.
    let rules = data.join("demo-rules.toml");
    assert!(text.contains(&format!("--rules {}", rules.display())), "{text}");
    let (code, out, err) = run_cli(&[
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["alerts_match"], true, "{report}");
    assert!(report["alerts_stored"].as_u64().unwrap() > 0, "{report}");
    // Each follow-up command works exactly as printed, from where the demo ran.
    let printed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("check it offline with:"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(printed.len() >= 2, "{text}");
    for line in printed {
        let run = Command::new("sh")
            .args(["-c", &format!("{line} > /dev/null")])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(run.status.success(), "{line}: {}", String::from_utf8_lossy(&run.stderr));
    }
}

#[test]
fn the_benchmark_measures_every_row_and_each_round_of_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "bench",
        "--lib-commands",
        "900",
        "--rounds",
        "3",
        "--http-commands",
        "300",
        "--http-connections",
        "16",
        "--raw-events",
        "600",
        "--raw-batch",
        "64",
        "--accounts",
        "40",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let out = String::from_utf8(stdout).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no row {name:?} in\n{out}"));
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    // Every command of every round became one durable event (the run checks the log too).
    let lib = row("library: Ledger::pay");
    assert_eq!(lib[1], "900", "{out}");
    assert!(lib[7].contains("3 rounds"), "{out}");
    assert_eq!(row("HTTP: POST")[1], "300", "{out}");
    // The baseline wrote all its events across the rounds; the rows for context wrote them all.
    assert_eq!(
        row("raw sled, chunks of 128 (the ledger's layout), after each library round")[1],
        "600",
        "{out}"
    );
    assert_eq!(row("raw sled, one key per event")[1], "600", "{out}");
    assert_eq!(row("HTTP baseline")[1], "300", "{out}");
    for r in [row("library: Ledger::pay"), row("HTTP: POST"), row("HTTP baseline")] {
        let rate: f64 = r[3].parse().unwrap();
        let ratio: f64 = r[6].parse().unwrap();
        assert!(rate > 0.0 && ratio > 0.0, "{out}");
        // CPU time per command, which does not depend on the disk.
        let cpu = r[7]
            .split("CPU ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse::<f64>().ok());
        assert!(cpu.is_some(), "no CPU per command in {r:?}");
    }
    // The HTTP figure against its baseline route, measured in the same run by the same load
    // generator in a process of its own.
    let http_ratio = out
        .lines()
        .find(|l| l.starts_with("HTTP / its baseline route"))
        .unwrap_or_else(|| panic!("no HTTP ratio in\n{out}"));
    assert!(row("HTTP: POST")[7].contains("its own process"), "{out}");
    let ratio: f64 = http_ratio
        .split(" = ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ratio > 0.0, "{http_ratio}");
    // One ratio per round, and their median.
    let rounds = out
        .lines()
        .find(|l| l.starts_with("Library / raw sled by round:"))
        .unwrap_or_else(|| panic!("no rounds line in\n{out}"));
    let ratios: Vec<f64> = rounds
        .split(';')
        .filter_map(|part| part.split(" = ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ratios.len(), 3, "{rounds}");
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(
        rounds
            .trim_end_matches('.')
            .ends_with(&format!("median {:.2}", sorted[1])),
        "{rounds}"
    );
    // The logs stay where they were asked to go.
    for sub in ["lib", "http", "same-0", "same-1", "same-2"] {
        assert!(
            dir.path().join(sub).exists(),
            "{sub} missing under {}",
            dir.path().display()
        );
    }
}

/// Regression (issue 14): the demo's banner pointed at `admin.token` when tokens were
/// configured, and no such file is created then.
#[test]
fn the_demo_banner_names_the_token_that_exists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(binary())
        .args([
            "demo",
            "--duration-s",
            "1",
            "--shoppers",
            "40",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env(
            "BINDLEDGER_TOKENS",
            "writer+reader+auditor+security:configured-token-0123456789",
        )
        .env_remove("BINDLEDGER_KAFKA_BROKERS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(!data.join("admin.token").exists());
    let banner: String = text.lines().take(6).collect::<Vec<_>>().join("\n");
    assert!(!banner.contains("admin.token") && banner.contains("$TOKEN"), "{banner}");
    assert!(
        !text.contains("configured-token-0123456789"),
        "the token itself is not printed"
    );
}

/// `bindledger export --checkpoints FILE`: a stopped ledger's signed checkpoints, offline, as
/// `GET /v1/checkpoints` serves them.
#[test]
fn export_writes_the_stored_checkpoints_beside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut config = test_config(&data);
        config.checkpoints.every_events = 3;
        let g = std::sync::Arc::new(bindledger::adapters::provider::SimulatedGateway::new(
            config.gateway.simulated.clone(),
        ));
        let node = bindledger::node::Node::start(
            &config,
            bindledger::domain::secret::LedgerSecret::from_bytes([5; 32]),
            g.clone(),
        )
        .unwrap();
        for a in 0..10 {
            bind_wallet(&node.ledger, &g, &format!("acct-{a}"), a).await;
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        node.stop().await;
    });
    let cps = dir.path().join("cps.ndjson");
    let (code, out, err) = run_cli(&[
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "--checkpoints",
        cps.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 10);
    let store = bindledger::ledger::store::Store::open(&data).unwrap();
    let stored = bindledger::ledger::checkpoint::CheckpointStore::new(store.checkpoints_tree())
        .all()
        .unwrap();
    assert!(stored.len() >= 2);
    let written: Vec<bindledger::ledger::checkpoint::SignedCheckpoint> = std::fs::read_to_string(&cps)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        written.iter().map(|c| (c.seq, c.head)).collect::<Vec<_>>(),
        stored.iter().map(|c| (c.seq, c.head)).collect::<Vec<_>>()
    );
}

/// Regression (issue 15): `bindledger export … | head` ended with `Broken pipe`, exit 1, and
/// `alerts … | head -1` panicked. A closed pipe ends the command quietly with exit code 0.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = test_config(&data);
        let g = std::sync::Arc::new(bindledger::adapters::provider::SimulatedGateway::new(
            config.gateway.simulated.clone(),
        ));
        let node = bindledger::node::Node::start(
            &config,
            bindledger::domain::secret::LedgerSecret::from_bytes([5; 32]),
            g.clone(),
        )
        .unwrap();
        for a in 0..300 {
            bind_wallet(&node.ledger, &g, &format!("acct-{a}"), a).await;
        }
        node.stop().await;
    });
    let replay = binary().with_file_name("bindledger-replay");
    let mut cases: Vec<(std::path::PathBuf, Vec<String>)> = vec![(
        binary(),
        vec!["export".into(), "--data-dir".into(), data.display().to_string()],
    )];
    if replay.exists() {
        cases.push((
            replay,
            vec![
                "history".into(),
                "--account".into(),
                "acct-1".into(),
                "--json".into(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        ));
    }
    for (bin, args) in cases {
        let mut child = std::process::Command::new(&bin)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The reader is gone (as `head -1` is after its line).
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        // Regression: `export … | head -2` reported "exported 81 events": what went into a
        // buffer, not what was read. A cut-off export claims no count.
        assert!(!err.contains("exported"), "{args:?}: {err}");
    }
}

/// Regression: `simulate … | head -1` panicked (exit 101) and left its folder behind. Now it
/// stops quietly after the reader goes, with exit code 0, and removes its folder.
#[test]
fn simulate_into_a_closed_pipe_stops_quietly_and_cleans_up() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let mut child = std::process::Command::new(binary())
        .args(["simulate", "--seeds", "500", "--steps", "20", "--dir"])
        .arg(&runs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("seed 1: ok"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(!runs.exists(), "the runs' folder was left behind");
}

/// Regression: `sim-wallet --help` listed --data-dir and --listen, which it ignores; and a
/// command's `--help` did not list the exit codes.
#[test]
fn help_lists_what_a_command_uses_and_the_exit_codes() {
    let out = std::process::Command::new(binary())
        .args(["sim-wallet", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--config") && text.contains("--provider"), "{text}");
    assert!(!text.contains("--data-dir") && !text.contains("--listen"), "{text}");
    for command in [
        "serve", "demo", "export", "verify", "restore", "status", "alerts", "simulate",
    ] {
        let out = std::process::Command::new(binary())
            .args([command, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Exit codes: 0 success"), "{command} --help:\n{text}");
    }
}

/// Regression: `demo --listen <busy port>` wrote `admin.token` and `secret.key` before it
/// failed. The address comes first: nothing is written.
#[test]
fn a_demo_on_a_busy_address_writes_nothing() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(binary())
        .args([
            "demo",
            "--duration-s",
            "1",
            "--listen",
            &busy.local_addr().unwrap().to_string(),
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("BINDLEDGER_KAFKA_BROKERS")
        .env_remove("BINDLEDGER_TOKENS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(
        !data.exists() || std::fs::read_dir(&data).unwrap().next().is_none(),
        "files were written: {:?}",
        std::fs::read_dir(&data).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
    );
}

/// Regression: `simulate --plant bogus` and `status --url ftp://x` exited 1 after starting
/// work. A bad value is bad usage: exit 2 before anything runs, naming what is allowed.
#[test]
fn bad_values_are_usage_errors_before_anything_runs() {
    for (args, expected) in [
        #[cfg(feature = "simulation")]
        (vec!["simulate", "--plant", "bogus", "--seeds", "1"], "ack-before-flush"),
        (vec!["status", "--url", "ftp://x"], "http://"),
        (vec!["alerts", "--url", "127.0.0.1:8080"], "http://"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(binary())
            .args(&args)
            .current_dir(dir.path())
            .env_remove("BINDLEDGER_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{args:?} wrote files"
        );
    }
}

/// Regression (issue 15): `bindledger demo --shoppers 10` (any population under 24) panicked
/// 14 worker tasks with an index out of bounds and still exited 0; `--shoppers 0` gave 24.
#[test]
fn the_demo_runs_with_a_small_population() {
    for shoppers in ["0", "10"] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(binary())
            .args([
                "demo",
                "--duration-s",
                "2",
                "--shoppers",
                shoppers,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env_remove("BINDLEDGER_KAFKA_BROKERS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("panicked"), "--shoppers {shoppers}: {err}");
    }
}

/// Regression (issue 15): `alerts --limit 0` returned one alert and `alerts --severity urgent`
/// exited 1 with the server's raw JSON. Bad values are bad usage: exit 2, with what is allowed.
#[test]
fn alerts_refuses_bad_values_as_usage_errors() {
    for (args, expected) in [
        (vec!["alerts", "--limit", "0"], "1..=1000"),
        (vec!["alerts", "--severity", "urgent"], "critical"),
        (vec!["alerts", "--rule", "nonsense"], "password_brute_force"),
        (vec!["alerts", "--since", "yesterday"], "RFC 3339"),
    ] {
        let (code, _, err) = run_cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// Regression (issue 15): `serve` on a busy port created the data directory and its keys
/// before failing.
#[test]
fn serve_on_a_busy_port_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let (code, _, err) = run_cli(&["serve", "--listen", &addr, "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("binding"), "{err}");
    assert!(!data.exists(), "nothing was created");
}

/// Regression (issue 15): hostnames were refused in `--listen` and `--url`.
#[test]
fn hostnames_work_in_listen_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("BINDLEDGER_TOKENS", format!("writer+reader+auditor+security:{ALL}"))
        .env_remove("BINDLEDGER_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
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
    assert!(addr.ip().is_loopback(), "{addr}");
    let url = format!("http://localhost:{}", addr.port());
    let (code, out, err) = run_cli(&["status", "--json", "--url", &url, "--token", ALL]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(st["health"]["status"], "ok");
    // https:// is spoken (rustls): against a plain-HTTP server the handshake fails, and says
    // so; nothing listening is a connection error. Neither is refused as a URL.
    let (code, _, err) = run_cli(&["status", "--url", "https://localhost:1", "--token", ALL]);
    assert_eq!(code, 1);
    assert!(
        err.contains("https://localhost:1") && !err.contains("not an http"),
        "{err}"
    );
    // Another scheme is bad usage (exit 2), found as the arguments are read.
    let (code, _, err) = run_cli(&["status", "--url", "ftp://localhost:1", "--token", ALL]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an http:// or https:// URL"), "{err}");
}

/// Issue 15: `bindledger unlock` (an unlock needed curl): lifts a lock, and says why when there
/// is none (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_lifts_a_lock_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let binding = bind_wallet(&server.ledger, &server.gateway, "victim", 1).await;
    let meta = bindledger::domain::command::Meta {
        account: "victim".into(),
        idempotency_key: Some("lock:manual-test".into()),
        expected_version: None,
        correlation_id: None,
        event_time: None,
        keys_checked: None,
        context: bindledger_events::Context {
            channel: "monitor".into(),
            ..Default::default()
        },
    };
    let until = chrono::Utc::now() + chrono::Duration::minutes(30);
    let cmd = bindledger::domain::command::LockCommand {
        meta,
        binding_id: binding,
        alert_id: "password_brute_force-1".into(),
        until,
    };
    let locked = server.ledger.lock(cmd).await.unwrap();
    assert_eq!(locked.event.event_type(), "binding_locked");
    let url = format!("http://{}", server.addr);
    let b = binding.to_string();
    let args = |u: &str, b: &str| {
        vec![
            "unlock".to_owned(),
            "--url".into(),
            u.to_owned(),
            "--token".into(),
            SECURITY.into(),
            "--account".into(),
            "victim".into(),
            "--binding".into(),
            b.to_owned(),
        ]
    };
    let a = args(&url, &b);
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&a.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        String::from_utf8_lossy(&out).contains("unlocked binding"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(server.ledger.account("victim").unwrap().unwrap().bindings[0]
        .lock
        .is_none());
    let a = args(&url, &b);
    let (code, out, _) =
        tokio::task::spawn_blocking(move || run_cli(&a.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(
        String::from_utf8_lossy(&out).contains("not_locked"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    server.shutdown().await;
}

/// Regression (issue 15): `bindledger consume` with no broker logged warnings and exited 0
/// with "0 messages". It says so and exits 1.
#[test]
fn consume_without_a_broker_says_so_and_fails() {
    let port = free_port();
    let started = std::time::Instant::now();
    let (code, out, err) = run_cli(&[
        "consume",
        "--brokers",
        &format!("127.0.0.1:{port}"),
        "--idle-exit-ms",
        "500",
    ]);
    assert_eq!(code, 1, "{} {err}", String::from_utf8_lossy(&out));
    assert!(err.contains("no Kafka broker answered"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A busy address given with `--listen` is an error (not silently another port), found before
/// the demo opens anything.
#[test]
fn the_demo_refuses_a_busy_address_it_was_given() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = Command::new(binary())
        .args(["demo", "--duration-s", "1", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .env_remove("BINDLEDGER_CONFIG")
        .env_remove("BINDLEDGER_KAFKA_BROKERS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!data.join("log").exists(), "no log was created");
}

/// The demo on the directory of a running ledger: refused, and nothing written into it.
#[test]
fn the_demo_on_a_locked_directory_writes_nothing_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = spawn_server(&data, &dir.path().join("server.log"), &[]);
    let out = Command::new(binary())
        .args(["demo", "--duration-s", "1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("BINDLEDGER_CONFIG")
        .env_remove("BINDLEDGER_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!data.join("demo-rules.toml").exists());
    server.terminate();
}

/// Regression: SIGTERM closed the requests in flight instead of draining them. A payment
/// waiting on a slow wallet provider when the signal comes is answered, durably, and the
/// server then exits 0.
#[test]
fn sigterm_drains_the_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slow.toml");
    std::fs::write(&config, "[gateway.simulated]\nlatency_ms = 1500\n").unwrap();
    let data = dir.path().join("data");
    let server = spawn_server(
        &data,
        &dir.path().join("server.log"),
        &[("BINDLEDGER_CONFIG", config.to_str().unwrap())],
    );
    let addr = server.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::config::Config::default().gateway.simulated);
    let password = g.password_for(&bindledger_events::Provider::parse("alipay").unwrap(), &phone(1));
    let binding = rt.block_on(async {
        let mut c = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
        let (status, v) = c
            .post_json(
                "/v1/accounts/alice/bindings",
                &serde_json::json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": password}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
        v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned()
    });
    let in_flight = rt.spawn(async move {
        let mut c = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
        c.post_json(
            "/v1/accounts/alice/payments",
            &serde_json::json!({"binding_id": binding, "order_id": "o-1", "amount_minor": 100, "payment_password": password}),
        )
        .await
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    let exit = std::thread::spawn(move || server.terminate());
    let answer = rt.block_on(in_flight).unwrap();
    let (status, v) = answer.expect("the request in flight was answered, not cut off");
    assert_eq!(status.as_u16(), 201, "{v}");
    assert_eq!(v["event_type"], "payment_succeeded", "{v}");
    assert_eq!(exit.join().unwrap(), Some(0));
    // And it is in the log.
    let store = bindledger::ledger::store::Store::open(&data).unwrap();
    assert_eq!(store.scan_events(1).count(), 2);
}

/// Regression: `restore` with no broker waited 10 s, printed a raw librdkafka error and left
/// `DIR/log` behind. The broker is asked first: one sentence, nothing created.
#[test]
fn restore_without_a_broker_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("restored");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = std::process::Command::new(binary())
        .args(["restore", "--brokers", &closed.to_string(), "--data-dir"])
        .arg(&data)
        .env("BINDLEDGER_SECRET", "ab".repeat(32))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no Kafka broker answered at"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(!data.exists(), "the restore created {}", data.display());
}

/// `bindledger profile`: a saved URL and token file, so `status` needs neither flag; flags and
/// the environment still win over the profile.
#[test]
fn a_profile_saves_the_url_and_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(&dir.path().join("data"), &dir.path().join("server.log"), &[]);
    let profiles = dir.path().join("conf").join("profiles.toml");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ALL}\n")).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(args)
            .current_dir(dir.path())
            .env("BINDLEDGER_PROFILES", &profiles)
            .env_remove("BINDLEDGER_URL")
            .env_remove("BINDLEDGER_TOKEN")
            .env_remove("BINDLEDGER_PROFILE")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = format!("http://{}", server.addr);
    let (code, _, err) = cli(&[
        "profile",
        "set",
        "local",
        "--url",
        &url,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["profile", "set", "elsewhere", "--url", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&profiles).unwrap();
    assert!(!text.contains(ALL), "the token itself is never saved: {text}");
    let (code, out, _) = cli(&["profile", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines().any(|l| l.starts_with("* local")),
        "the first one is in use: {out}"
    );
    let (code, out, err) = cli(&["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["health"]["status"], "ok", "{v}");
    // Another profile by name; an unknown one is an error; a flag wins over the profile.
    let (code, _, err) = cli(&["status", "--profile", "elsewhere"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = cli(&["status", "--profile", "nope"]);
    assert!(code == Some(1) && err.contains("no profile"), "{err}");
    let (code, _, err) = cli(&["status", "--profile", "elsewhere", "--url", &url, "--token", ALL]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = cli(&["profile", "use", "elsewhere"]);
    assert_eq!(code, Some(0));
    let (code, _, _) = cli(&["status"]);
    assert_eq!(code, Some(1), "the profile in use is the unreachable one now");
}
