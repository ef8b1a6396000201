//! The deterministic simulation (`bindledger simulate`, src/bin/bindledger/simulate.rs) over a
//! fixed set of seeds, that a seed replays exactly, and that a planted bug is found.

mod common;

use common::binary;

fn simulate(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(binary())
        .arg("simulate")
        .args(args)
        .output()
        .expect("run bindledger simulate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The head hash a passing seed printed.
fn head(output: &str, seed: u64) -> String {
    output
        .lines()
        .find(|l| l.starts_with(&format!("seed {seed}: ok")))
        .and_then(|l| l.rsplit_once("head "))
        .map(|(_, h)| h.to_owned())
        .unwrap_or_else(|| panic!("no head for seed {seed} in {output}"))
}

#[test]
fn twelve_seeds_keep_every_invariant() {
    let (code, out) = simulate(&["--seed", "1", "--seeds", "12", "--steps", "300"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12 seeds passed"), "{out}");
    // They covered what they are for: reopens, storage faults, alerts and locks, and wallet
    // provider calls that outlast the ledger's timeout (each checked to end as a network
    // failure).
    let summary = out.lines().last().unwrap();
    let figure = |name: &str| -> u64 {
        let at = summary.find(name).unwrap_or_else(|| panic!("{summary}"));
        summary[..at]
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    assert!(figure(" reopens") >= 50, "{summary}");
    assert!(figure(" storage faults") >= 12, "{summary}");
    assert!(figure(" crashes") >= 6, "{summary}");
    assert!(figure(" locks") >= 12, "{summary}");
    assert!(figure(" provider timeouts") >= 12, "{summary}");
    eprintln!("{out}");
}

/// Regression (issue 26, item 9): `make simulate` with its defaults stopped at seed 31, whose
/// alert locked a binding again after its first lock expired, as the README documents; the
/// simulator's check was stale. `make test` ran seeds 1-12 only, so nothing noticed: it now
/// runs seed 31 and a sample of four more past 12 that changes every day (printed, with the
/// command that replays them).
#[test]
fn seed_31_and_a_daily_sample_of_later_seeds_keep_every_invariant() {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let from = 13 + (days % 200) * 4;
    eprintln!(
        "seeds 31 and {from}..{}: replay with make simulate SEED=<seed>",
        from + 4
    );
    let (code, out) = simulate(&["--seed", "31", "--seeds", "1", "--steps", "400"]);
    assert_eq!(code, 0, "seed 31: {out}");
    let (code, out) = simulate(&["--seed", &from.to_string(), "--seeds", "4", "--steps", "400"]);
    assert_eq!(code, 0, "seeds {from}..{}: {out}", from + 4);
    assert!(out.contains("4 seeds passed"), "{out}");
}

#[test]
fn a_seed_replays_exactly() {
    let (a, out_a) = simulate(&["--seed", "40", "--seeds", "2", "--steps", "250"]);
    let (b, out_b) = simulate(&["--seed", "40", "--seeds", "2", "--steps", "250"]);
    assert_eq!((a, b), (0, 0), "{out_a}{out_b}");
    for seed in [40, 41] {
        assert_eq!(
            head(&out_a, seed),
            head(&out_b, seed),
            "seed {seed}: the same log, byte for byte"
        );
    }
    assert_ne!(head(&out_a, 40), head(&out_a, 41));
}

#[test]
#[cfg(feature = "simulation")]
fn planted_bugs_are_found_within_the_seeds_make_test_runs() {
    for (plant, found) in [
        ("refold-on-open", "the projection differs from a fold of the log"),
        ("ack-before-flush", "was acknowledged after a storage failure"),
        (
            "no-gateway-timeout",
            "a call that outlasted the ledger's timeout must be given up",
        ),
    ] {
        // A failing seed keeps its data directory: here, one removed after the test.
        let dir = tempfile::tempdir().unwrap();
        let dir_arg = dir.path().to_str().unwrap();
        let args = [
            "--seed", "1", "--seeds", "12", "--steps", "300", "--plant", plant, "--dir", dir_arg,
        ];
        let (code, out) = simulate(&args);
        assert_eq!(code, 3, "{plant}: {out}");
        assert!(out.contains("FAILED") && out.contains(found), "{plant}: {out}");
        assert!(out.contains(&format!("PLANT={plant}")), "{out}");
    }
}
