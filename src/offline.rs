//! Offline work on a log that no process has open (sled locks its directory): export the
//! stored events as NDJSON, and verify the chain and the stored projection.

use bindledger_events::{ChainError, ChainVerifier, Hash};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::store::Store;

fn open_existing(dir: &Path) -> Result<Store> {
    if !dir.join("log").exists() {
        return Err(Error::NotFound(format!("no ledger log in {}", dir.display())));
    }
    Store::open(dir)
}

/// Writes every stored event from `from` on, one per line, exactly as stored. Returns the
/// number of events written.
pub fn export(dir: &Path, from: u64, out: &mut dyn Write) -> Result<u64> {
    let store = open_existing(dir)?;
    let mut n = 0;
    for r in store.scan_events(from.max(1)) {
        let (_, bytes) = r?;
        out.write_all(&bytes).and_then(|_| out.write_all(b"\n")).map_err(|e| Error::Io(format!("writing the export: {e}")))?;
        n += 1;
    }
    out.flush().map_err(|e| Error::Io(e.to_string()))?;
    Ok(n)
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    /// Hash of the last event: the chain head an auditor can record.
    pub head: Hash,
    /// The first break in the chain, if any.
    pub chain_error: Option<String>,
    pub chain_error_seq: Option<u64>,
    /// Position of the stored projection.
    pub projection_position: u64,
    /// Whether the stored projection equals a rebuild from the log.
    pub projection_matches: bool,
    /// Accounts whose stored state differs from the rebuild (at most 20 listed).
    pub projection_differences: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.chain_error.is_none() && self.projection_matches
    }
}

/// Verifies the hash chain of the whole log and compares the stored projection with a rebuild.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let store = open_existing(dir)?;
    let (position, stored) = store.load_accounts()?;
    let stored = Projection::from_accounts(position, stored);
    let mut verifier = ChainVerifier::new();
    let mut rebuilt = Projection::default();
    let mut chain_error: Option<ChainError> = None;
    let mut at_position = if position == 0 { Some(rebuilt.clone()) } else { None };
    for r in store.scan_events(1) {
        let (key, bytes) = r?;
        match verifier.push(&bytes) {
            Ok((event, _)) if event.seq != key => {
                chain_error = Some(ChainError::KeyMismatch { key, seq: event.seq });
                break;
            }
            Ok((event, _)) => {
                rebuilt.apply(&event);
                if event.seq == position {
                    at_position = Some(rebuilt.clone());
                }
            }
            Err(e) => {
                chain_error = Some(e);
                break;
            }
        }
    }
    let mut differences = Vec::new();
    let matches = match &at_position {
        Some(p) => {
            let mut names: Vec<&String> = p.accounts.keys().chain(stored.accounts.keys()).collect();
            names.sort();
            names.dedup();
            for n in names {
                if p.accounts.get(n) != stored.accounts.get(n) {
                    differences.push(n.clone());
                }
            }
            differences.truncate(20);
            p == &stored
        }
        None => false,
    };
    Ok(VerifyReport {
        events: verifier.last_seq(),
        head: verifier.head(),
        chain_error_seq: chain_error.as_ref().map(|e| e.seq()),
        chain_error: chain_error.map(|e| e.to_string()),
        projection_position: position,
        projection_matches: matches,
        projection_differences: differences,
    })
}
