//! HTTP: the ledger's API (axum, feature `server`) and the small client the command line, the
//! audit tool and the tests use.

pub(crate) use bindledger_core::{self as ledger, config};
#[allow(unused_imports)] // `Result` is used by the server only
pub(crate) use bindledger_domain::{self as domain, error, Error, Result};

pub mod webhook;

pub mod client;
#[cfg(feature = "server")]
mod console;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod route;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub use state::ClusterRoute;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod state;
#[cfg(feature = "server")]
pub use server::*;
#[cfg(feature = "server")]
pub use state::SESSIONS_PER_TOKEN;
#[cfg(feature = "server")]
pub use state::{AppState, Extras, MonitorView, Principal};
