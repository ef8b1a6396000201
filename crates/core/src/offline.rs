//! Offline work on a log that no process has open (sled locks its directory): export the
//! stored events as NDJSON, and verify the chain, the stored projection and the stored alerts.

use bindledger_events::{ChainError, ChainVerifier, Hash};
use serde::Serialize;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use crate::alerts::store::AlertStore;
use crate::domain::alerts::engine::Engine;
use crate::domain::alerts::RuleSet;
use crate::domain::projection::Projection;
use crate::error::{Error, Result};
use crate::store::Store;

fn open_existing(dir: &Path) -> Result<Store> {
    crate::store::require_log(dir)?;
    Store::open(dir)
}

/// Writes every stored event from `from` on, one per line, exactly as stored. Returns the
/// number of events written, or `None` when the reader stopped reading first (a closed pipe).
pub fn export(dir: &Path, from: u64, out: &mut dyn Write) -> Result<Option<u64>> {
    let mut n = 0;
    for r in crate::store::scan_dir(dir, from)? {
        let (_, bytes) = r?;
        match out.write_all(&bytes).and_then(|_| out.write_all(b"\n")) {
            Ok(()) => {}
            // The reader stopped reading (`| head`): the export ends there, quietly.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(None),
            Err(e) => return Err(Error::io_caused("writing the export", e)),
        }
        n += 1;
    }
    match out.flush() {
        Ok(()) => Ok(Some(n)),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        Err(e) => Err(Error::io_caused("writing the export", e)),
    }
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    /// Hash of the last event: the chain head an auditor can record.
    pub head: Hash,
    /// The first break in the chain, if any.
    pub chain_error: Option<String>,
    pub chain_error_seq: Option<u64>,
    /// Position of the stored projection snapshot.
    pub snapshot_position: u64,
    /// Whether every stored projection row equals a rebuild from the log at that row's version.
    pub projection_matches: bool,
    /// Accounts whose stored row differs from the rebuild (at most 20 listed).
    pub projection_differences: Vec<String>,
    /// Alert changes stored by the monitor, and raised by a rebuild over the log.
    pub alerts_stored: u64,
    pub alerts_rebuilt: u64,
    /// Whether the stored alert stream equals the rebuild's (the stored one may stop short,
    /// when the monitor was behind at a crash).
    pub alerts_match: bool,
    /// The first stored alert change that differs from the rebuild.
    pub alerts_difference: Option<String>,
    /// Set when the monitor's checkpoint was made with other rules than the ones checked.
    pub alerts_rules_note: Option<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.chain_error.is_none() && self.projection_matches && self.alerts_match
    }
}

/// Verifies the hash chain of the whole log and checks every stored projection row against a
/// rebuild from the log. A row may include events past the snapshot position, so each row is
/// compared with the rebuilt account at the row's own version.
pub fn verify(dir: &Path, rules: &RuleSet) -> Result<VerifyReport> {
    // What the ledger stored beside the log first; then the log, read in bounded memory.
    let (snapshot, stored, stored_alerts, alerts_checkpoint) = {
        let store = open_existing(dir)?;
        let (_, snapshot) = store.index_positions()?;
        let alert_store = AlertStore::new(store.alerts_tree());
        let stored_last = alert_store.last_stream_seq()?;
        let stored_alerts = alert_store.changes_after(0, stored_last, usize::MAX)?;
        (
            snapshot,
            store.load_accounts()?,
            stored_alerts,
            alert_store.checkpoint()?,
        )
    };
    let mut engine = Engine::new(rules.clone());
    let mut alerts = Vec::new();
    let mut verifier = ChainVerifier::new();
    let mut rebuilt = Projection::default();
    let mut chain_error: Option<ChainError> = None;
    let mut checked: HashSet<&str> = HashSet::new();
    let mut differences = Vec::new();
    // Accounts with events up to the snapshot position but no stored row.
    let mut unrecorded: HashSet<String> = HashSet::new();
    for r in crate::store::scan_dir(dir, 1)? {
        let (key, bytes) = r?;
        match verifier.push(&bytes) {
            Ok((event, _)) if event.seq != key => {
                chain_error = Some(ChainError::KeyMismatch { key, seq: event.seq });
                break;
            }
            Ok((event, _)) => {
                if event.seq <= snapshot && !stored.contains_key(&event.account) && !unrecorded.contains(&event.account)
                {
                    unrecorded.insert(event.account.clone());
                }
                rebuilt.apply(&event);
                alerts.extend(engine.apply(&event));
                if let Some((name, row)) = stored.get_key_value(&event.account) {
                    if row.version == event.account_seq {
                        checked.insert(name.as_str());
                        if rebuilt.accounts.get(name) != Some(row) {
                            differences.push(name.clone());
                        }
                    }
                }
            }
            Err(e) => {
                chain_error = Some(e);
                break;
            }
        }
    }
    // A row that matches no moment of its account, or an account with events up to the
    // snapshot position but no row, is a difference too.
    for name in stored.keys() {
        if !checked.contains(name.as_str()) {
            differences.push(name.clone());
        }
    }
    if chain_error.is_none() {
        differences.extend(unrecorded);
    }
    // The stored alert stream must be the rebuild's, change for change, from 1 on.
    let mut alerts_difference = None;
    for (i, c) in stored_alerts.iter().enumerate() {
        let why = match alerts.get(i) {
            _ if c.stream_seq != i as u64 + 1 => Some(format!(
                "stream seq {} stored where {} was expected (a gap)",
                c.stream_seq,
                i + 1
            )),
            None => Some(format!(
                "alert change {} is stored but the log does not raise it",
                c.stream_seq
            )),
            Some(r) if r != c => {
                let mut fields = crate::domain::alerts::differences(&c.alert, &r.alert);
                if c.change != r.change {
                    fields.insert(0, format!("change: {} -> {}", c.change, r.change));
                }
                Some(format!(
                    "alert change {} ({}) differs, stored -> rebuilt: {}",
                    c.stream_seq,
                    c.alert.id,
                    fields.join(", ")
                ))
            }
            Some(_) => None,
        };
        if why.is_some() {
            alerts_difference = why;
            break;
        }
    }
    let alerts_rules_note = alerts_checkpoint
        .filter(|cp| cp.rules_digest != rules.digest())
        .map(|cp| format!("the monitor's checkpoint was made with other rules (digest {}, checked with {}): pass the rules file it ran with", cp.rules_digest, rules.digest()));
    differences.sort();
    differences.dedup();
    let matches = differences.is_empty();
    differences.truncate(20);
    Ok(VerifyReport {
        events: verifier.last_seq(),
        head: verifier.head(),
        chain_error_seq: chain_error.as_ref().map(|e| e.seq()),
        chain_error: chain_error.map(|e| e.to_string()),
        snapshot_position: snapshot,
        projection_matches: matches,
        projection_differences: differences,
        alerts_stored: stored_alerts.len() as u64,
        alerts_rebuilt: alerts.len() as u64,
        alerts_match: alerts_difference.is_none(),
        alerts_difference,
        alerts_rules_note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{IndexBatch, LogBatch};
    use bindledger_domain::testing::event;
    use bindledger_events::{encode, hash_bytes, Payload, UnbindFailure, GENESIS_HASH};

    /// A stored snapshot must hold a row for every account with events up to its position.
    #[test]
    fn an_account_without_its_snapshot_row_is_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut log, mut prev, mut rebuilt) = (LogBatch::default(), GENESIS_HASH, Projection::default());
        for (seq, account, account_seq) in [(1, "a", 1), (2, "b", 1), (3, "a", 2), (4, "c", 1)] {
            let mut e = event(
                seq,
                account,
                account_seq,
                at,
                Payload::UnbindFailed {
                    binding_id: uuid::Uuid::nil(),
                    reason: UnbindFailure::NotBound,
                },
            );
            e.prev_hash = prev;
            let bytes = encode(&e);
            prev = hash_bytes(&bytes);
            log.add_event(seq, &bytes);
            rebuilt.apply(&e);
        }
        store.apply_log(log).unwrap();
        // A snapshot at event 3 with a row for `a` only: `b` had events by then, `c` not yet.
        let mut index = IndexBatch::default();
        index.put_account("a", &rebuilt.accounts["a"]);
        index.set_snapshot(3);
        store.apply_index(index).unwrap();
        store.flush().unwrap();
        drop(store);
        let report = verify(dir.path(), &RuleSet::default()).unwrap();
        assert!(report.chain_error.is_none(), "{report:?}");
        assert_eq!(report.projection_differences, vec!["b".to_owned()]);
        assert!(!report.projection_matches);
    }
}
