//! # bindledger: an event-sourced ledger of payment-wallet bindings
//!
//! Shoppers bind digital wallets to their account, pay with them and unbind them. Every
//! command ends in exactly one event, a success or a typed failure, appended to a hash-chained
//! sled log; projections fold the log into the current bindings.
//!
//! ## Layers
//! The tree shows the architecture; each layer depends only on those above it in this list
//! (`tests/layers.rs` checks it):
//! - [`error`] and [`config`]: the error type, and every configuration type (TOML and the
//!   environment).
//! - [`domain`]: pure code: commands and their validation, secrets and masking, the business
//!   decisions, the projections, the anomaly rules and their engine. No IO.
//! - [`ledger`]: the core: the writer, the flusher, the indexes, the storage (sled), the signed
//!   checkpoints, the live alert monitor; [`Ledger`] is its API.
//! - [`adapters`]: HTTP (the API and a small client), Kafka (the relays, the topic reader,
//!   replicas, restore, the analytics consumer) and the simulated wallet provider.
//! - [`node`] (feature `server`): the composition root that starts and stops a whole node.
//!
//! The `bindledger` binary (`src/bin/bindledger/`: one file per command, the demo and the
//! benchmarks) and the audit tool (`replay/`) are built on this library.
//!
//! ## Features
//! - `kafka` (on by default): the Kafka adapters, with librdkafka.
//! - `server` (on by default; implies `kafka`): the HTTP server (axum) and [`node`].
//!
//! Without them the library is the domain, the core, the offline tools and the HTTP client:
//! what the audit tool needs to read a log from a directory, a file or a ledger's API.

pub mod adapters;
pub mod config;
pub mod domain;
pub mod error;
pub mod fixture;
pub mod ledger;
#[cfg(feature = "server")]
pub mod node;
#[cfg(test)]
mod testing;

pub use config::Config;
pub use error::{Error, Result};
pub use ledger::Ledger;

/// `println!` for a command's output: a closed pipe (`| head`) ends the program quietly with
/// exit code 0, as `head` expects, instead of a panic or a "Broken pipe" error. Used by the
/// `bindledger` and `bindledger-replay` binaries.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// What [`outln!`] does when standard output fails: exit 0 on a closed pipe, else 1.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}
