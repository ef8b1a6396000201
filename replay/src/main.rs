//! `bindledger-replay`: the audit tool. This version verifies the hash chain of an NDJSON
//! export (from `bindledger export` or the HTTP event feed) using the schema crate alone, as a
//! third party would. Rebuilding state as of a moment, account histories and rule backtests
//! come later.
//!
//! Exit codes: 0 the chain verifies, 1 the input cannot be read, 2 bad usage, 3 the chain is
//! broken (the first bad event is named).

use bindledger_events::ChainVerifier;
use std::io::{BufRead, BufReader, Read};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let input: Box<dyn Read> = match args.as_slice() {
        [cmd] if cmd == "verify" => Box::new(std::io::stdin()),
        [cmd, path] if cmd == "verify" => match std::fs::File::open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("error: opening {path}: {e}");
                std::process::exit(1);
            }
        },
        _ => {
            eprintln!("usage: bindledger-replay verify [EXPORT.ndjson]   (reads standard input without a file)");
            std::process::exit(2);
        }
    };
    let mut verifier = ChainVerifier::new();
    for (n, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: reading line {}: {e}", n + 1);
                std::process::exit(1);
            }
        };
        if line.is_empty() {
            continue;
        }
        if let Err(e) = verifier.push(&line) {
            println!("chain BROKEN at line {}: {e}", n + 1);
            std::process::exit(3);
        }
    }
    println!("events:     {}", verifier.last_seq());
    println!("chain head: {}", verifier.head());
    println!("chain:      ok");
}
