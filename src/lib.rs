//! # bindledger: an event-sourced ledger of payment-wallet bindings
//!
//! Shoppers bind digital wallets to their account, pay with them and unbind them. Every
//! command ends in exactly one event, a success or a typed failure, appended to a hash-chained
//! sled log; projections fold the log into the current bindings.
//!
//! ## Layout
//! - [`command`]: requests and their validation (before anything else happens).
//! - [`secret`]: secret strings, masking, keyed wallet fingerprints, the ledger secret.
//! - [`gateway`]: the wallet-provider trait and the deterministic simulated provider.
//! - [`decide`]: the business rules: pure functions from state and facts to one event.
//! - [`projection`]: the pure fold from events to bindings and the wallet index.
//! - [`store`]: the sled layout: the log in chunks (one atomic batch and one flush per group
//!   commit), derived rows in a separate tree.
//! - [`writer`]: the single writer thread (batching, deciding) and the flusher (group commit).
//! - [`idempotency`]: the bounded idempotency index, derived from the log.
//! - [`indexer`]: history rows and projection snapshots, off the write path.
//! - [`ledger`]: the library API tying these together.
//! - [`http`]: the axum HTTP API; [`metrics`]: Prometheus text metrics.
//! - [`relay`]: the Kafka outbox relay (exactly once on the topic, without transactions).
//! - [`analytics`]: the downstream analytics consumer (`bindledger consume`).
//! - [`config`]: TOML + environment configuration; [`error`]: the error enum.
//! - [`offline`]: export and verify a log that no process has open.
//! - [`restore`]: a data directory rebuilt from the events topic and its signed checkpoints.
//! - [`client`], [`demo`], [`bench`]: a small HTTP client, the demo workload, the benchmark.

pub mod alerts;
pub mod analytics;
pub mod bench;
pub mod bench_alerts;
pub mod checkpoint;
pub mod client;
pub mod command;
pub mod config;
pub mod decide;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod http;
pub mod idempotency;
pub mod indexer;
pub mod keytable;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod offline;
pub mod projection;
pub mod relay;
pub mod replica;
pub mod restore;
pub mod secret;
pub mod store;
#[cfg(test)]
mod testing;
pub mod writer;

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
