//! `bindledger verify`: check a stopped ledger's directory: the chain, the projections and the
//! alerts against a rebuild.

use anyhow::Result;
use bindledger::ledger::offline;
use std::path::Path;

use crate::EXIT_VERIFY_FAILED;

pub fn run(data_dir: &Path, rules: Option<&Path>, json: bool) -> Result<i32> {
    let rules = match rules {
        Some(p) => bindledger::ledger::keys::load_rules(p)?,
        None => bindledger::domain::alerts::RuleSet::default(),
    };
    let report = offline::verify(data_dir, &rules)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("events:      {}", report.events);
        outln!("chain head:  {}", report.head);
        match &report.chain_error {
            None => outln!("chain:       ok"),
            Some(e) => outln!(
                "chain:       BROKEN at event {}: {e}",
                report.chain_error_seq.unwrap_or(0)
            ),
        }
        if report.projection_matches {
            outln!(
                "projection:  ok (every stored row equals a rebuild; snapshot at {})",
                report.snapshot_position
            );
        } else {
            outln!(
                "projection:  DIFFERS from a rebuild (snapshot at {}; accounts: {})",
                report.snapshot_position,
                report.projection_differences.join(", ")
            );
        }
        match &report.alerts_difference {
            None => outln!(
                "alerts:      ok ({} changes stored, {} raised by a rebuild)",
                report.alerts_stored,
                report.alerts_rebuilt
            ),
            Some(d) => outln!("alerts:      DIFFER from a rebuild: {d}"),
        }
        if let Some(n) = &report.alerts_rules_note {
            outln!("             note: {n}");
        }
    }
    Ok(if report.ok() { 0 } else { EXIT_VERIFY_FAILED })
}
