//! # bindledger: an event-sourced ledger of payment-wallet bindings
//!
//! Shoppers bind digital wallets to their account, pay with them and unbind them. Every
//! command ends in exactly one event, a success or a typed failure, appended to a hash-chained
//! sled log; projections fold the log into the current bindings.
//!
//! ## Layers
//! Each layer is a crate of the workspace, so a use across layers upwards does not compile;
//! this crate re-exports them under their module names (`tests/layers.rs` holds the graph):
//! - [`domain`] and [`error`] (`bindledger-domain`): pure code: commands and their
//!   validation, secrets and masking, the business decisions, the projections, the anomaly
//!   rules and their engine; the error type. No IO.
//! - [`ledger`] and [`config`] (`bindledger-core`): the writer, the flusher, the indexes, the
//!   storage (sled), the signed checkpoints, the live alert monitor; [`Ledger`] is its API.
//! - [`adapters`]: HTTP (`bindledger-http`: the API and a small client), Kafka
//!   (`bindledger-kafka`: the relays, the topic reader, replicas, restore, the analytics
//!   consumer) and the simulated wallet provider.
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
#[cfg(feature = "server")]
pub mod node;

pub use bindledger_core::{self as ledger, config, Config, Ledger};
pub use bindledger_domain::{self as domain, error, Error, Result};
