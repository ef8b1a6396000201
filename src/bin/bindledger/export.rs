//! `bindledger export`: a stopped ledger's log as NDJSON (the exact stored bytes), and its
//! signed checkpoints.

use anyhow::{Context, Result};
use bindledger::ledger::offline;
use std::path::Path;

pub fn run(data_dir: &Path, from: u64, output: Option<&Path>, checkpoints: Option<&Path>) -> Result<i32> {
    if let Some(path) = checkpoints {
        bindledger::ledger::store::require_log(data_dir)?;
        let store = bindledger::ledger::store::Store::open_for_scan(data_dir)?;
        let all = bindledger::ledger::checkpoint::CheckpointStore::new(store.checkpoints_tree()).all()?;
        let mut text = String::new();
        for cp in &all {
            text.push_str(&serde_json::to_string(cp)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("exported {} checkpoints to {}", all.len(), path.display());
    }
    write_events(data_dir, from, output)?;
    Ok(0)
}

fn write_events(data_dir: &Path, from: u64, output: Option<&Path>) -> Result<()> {
    let n = match output {
        Some(p) => {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?);
            offline::export(data_dir, from, &mut f)?
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            offline::export(data_dir, from, &mut lock)?
        }
    };
    // `None`: the reader stopped reading (`| head`); the export ends quietly, claiming nothing.
    if let Some(n) = n {
        eprintln!("exported {n} events");
    }
    Ok(())
}
