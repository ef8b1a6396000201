//! Real storage faults (issue 18): the real server on a file system that runs out of space.
//! It must refuse to acknowledge what it could not make durable, say so on `/healthz` and in
//! its log, and every command it did acknowledge must be in the log when it is opened again.

mod common;

use bindledger::adapters::http::client::Client;
use common::*;
use serde_json::json;
use std::process::Command;

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the test suite runs as root in CI)"
        );
        SmallDisk { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_stops_acknowledgements_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("small"), "12m");
    let data = disk.path.join("data");
    let log = dir.path().join("server.log");
    let server = spawn_server(&data, &log, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g =
        bindledger::adapters::provider::SimulatedGateway::new(bindledger::config::Config::default().gateway.simulated);
    let (acknowledged, refused, health) = rt.block_on(async {
        let mut c = Client::new(server.addr, Some(ALL.into()));
        let password = g.password_for(&alipay(), &phone(1));
        let (_, v) = c.post_json("/v1/accounts/alice/bindings", &json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": password})).await.unwrap();
        let binding = v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
        let mut acknowledged = vec![v["event"]["seq"].as_u64().unwrap()];
        let mut refused = 0;
        let filler = "x".repeat(250);
        for i in 0..200_000u64 {
            let body = json!({"binding_id": binding, "order_id": format!("o-{i}"), "amount_minor": 1, "payment_password": password,
                "context": {"user_agent": filler, "device_id": format!("device-{i}")}});
            match c.post_json("/v1/accounts/alice/payments", &body).await {
                Ok((s, v)) if s.as_u16() == 201 => acknowledged.push(v["event"]["seq"].as_u64().unwrap()),
                Ok((s, v)) => {
                    // The command that met the full disk is told so; those after it meet it
                    // too, or find the ledger stopped.
                    let code = v["error"]["code"].as_str().unwrap_or("");
                    let expected = if refused == 0 || code == "disk_full" { "disk_full" } else { "storage_failed" };
                    assert_eq!(
                        (s.as_u16(), code),
                        (503, expected),
                        "{v}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    refused += 1;
                    if refused >= 3 {
                        break;
                    }
                }
                Err(e) => panic!("the server went away: {e}"),
            }
        }
        let (status, _) = Client::new(server.addr, None).send(hyper::Method::GET, "/healthz", None).await.unwrap();
        (acknowledged, refused, status.as_u16())
    });
    assert!(
        refused >= 3,
        "the disk never filled ({} acknowledged)",
        acknowledged.len()
    );
    assert_eq!(health, 503, "/healthz reports the failed storage");
    server.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ERROR")
            && (text.contains("flushing the log failed") || text.contains("writing the batch failed"))
            && text.contains("No space left on device"),
        "{text}"
    );
    // Every acknowledged command is in the log, opened again on a disk with room.
    let moved = dir.path().join("moved");
    let status = Command::new("cp").args(["-a"]).arg(&data).arg(&moved).status().unwrap();
    assert!(status.success());
    drop(disk);
    let store = bindledger::ledger::store::Store::open(&moved).unwrap();
    let mut verifier = bindledger_events::ChainVerifier::new();
    let mut seqs = std::collections::HashSet::new();
    for r in store.scan_events(1) {
        let (seq, bytes) = r.unwrap();
        verifier.push(&bytes).unwrap();
        seqs.insert(seq);
    }
    eprintln!(
        "{} acknowledged before the disk filled, {} events in the log",
        acknowledged.len(),
        seqs.len()
    );
    let lost: Vec<&u64> = acknowledged.iter().filter(|s| !seqs.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged and lost: {lost:?} ({} acknowledged)",
        acknowledged.len()
    );
}

/// A flipped byte in sled's log file: sled, meeting the damage while it recovers on open,
/// drops what follows it and opens without an error. The ledger must not then start on a log
/// that lost events it had acknowledged: its head record (`<data_dir>/head`) names the last
/// durable event, and a log that ends before it is refused, saying what was lost and where it
/// was recorded. Whatever the flip hits, the ledger either starts with every event, or refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_never_starts_a_ledger_that_lost_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let g = std::sync::Arc::new(bindledger::adapters::provider::SimulatedGateway::new(
        config.gateway.simulated.clone(),
    ));
    let written = {
        let l = bindledger::Ledger::open(
            &config,
            bindledger::domain::secret::LedgerSecret::from_bytes([42; 32]),
            g.clone(),
        )
        .unwrap();
        for a in 0..400 {
            bind_wallet(&l, &g, &format!("acct-{a}"), a).await;
        }
        let n = l.log_len();
        l.close();
        n
    };
    assert_eq!(
        bindledger::ledger::head::read(dir.path()).unwrap().map(|(seq, _)| seq),
        Some(written)
    );
    let db = dir.path().join("log").join("db");
    let pristine = std::fs::read(&db).unwrap();
    let places = bindledger_fixture::payload_offsets(&pristine, 7);
    let (mut whole, mut refused) = (0, 0);
    for at in places {
        let mut bytes = pristine.clone();
        bytes[at + 3] ^= 1;
        std::fs::write(&db, &bytes).unwrap();
        // sled may still hold the directory after the previous damaged open (a thread of its own
        // that panicked on the damage lets go of its lock a little later): open again then.
        let open = || {
            bindledger::Ledger::open(
                &config,
                bindledger::domain::secret::LedgerSecret::from_bytes([42; 32]),
                g.clone(),
            )
        };
        let mut opened = open();
        for _ in 0..300 {
            if !matches!(opened, Err(bindledger::Error::InUse(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            opened = open();
        }
        match opened {
            Ok(l) => {
                // It started: then every acknowledged event is there.
                assert_eq!(l.log_len(), written, "started on a log that lost events (flip at {at})");
                whole += 1;
                l.close();
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("corrupt"), "{text}");
                refused += 1;
            }
        }
        std::fs::write(&db, &pristine).unwrap();
        // The head record follows each start; put back the one of the whole log.
        let _ = bindledger::Ledger::open(
            &config,
            bindledger::domain::secret::LedgerSecret::from_bytes([42; 32]),
            g.clone(),
        )
        .map(|l| l.close());
        if refused >= 3 {
            break;
        }
    }
    assert!(refused > 0, "no flip was refused ({whole} started whole)");
}

/// The case the head record exists for, made directly: the log loses its last stored chunk (as
/// when sled drops what follows damage in its recovery). The ledger refuses to start, saying
/// how many events were lost after which one, and where the head was recorded, and a refused
/// start changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_lost_acknowledged_events_is_refused_with_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let secret = || bindledger::domain::secret::LedgerSecret::from_bytes([42; 32]);
    let g = std::sync::Arc::new(bindledger::adapters::provider::SimulatedGateway::new(
        config.gateway.simulated.clone(),
    ));
    let written = {
        let l = bindledger::Ledger::open(&config, secret(), g.clone()).unwrap();
        for a in 0..300 {
            bind_wallet(&l, &g, &format!("acct-{a}"), a).await;
        }
        let n = l.log_len();
        l.close();
        n
    };
    let kept = {
        let db = sled::open(dir.path().join("log")).unwrap();
        let log = db.open_tree("log").unwrap();
        let (last_chunk, _) = log.last().unwrap().unwrap();
        log.remove(&last_chunk).unwrap();
        db.flush().unwrap();
        u64::from_be_bytes(last_chunk.as_ref().try_into().unwrap()) - 1
    };
    assert!(kept < written);
    let err = match bindledger::Ledger::open(&config, secret(), g.clone()) {
        Ok(_) => panic!("started on a log that lost events {}..={written}", kept + 1),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("ends at event {kept}"))
            && err.contains(&format!("lost {} events", written - kept))
            && err.contains("head"),
        "{err}"
    );
    // A refused start changes nothing: it is refused again, for the same reason.
    let again = bindledger::Ledger::open(&config, secret(), g)
        .err()
        .map(|e| e.to_string());
    assert_eq!(again.as_deref(), Some(err.as_str()));
}
