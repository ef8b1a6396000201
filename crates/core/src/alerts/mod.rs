//! Alerts in the running ledger: the live monitor, the feed followers read, and the alerts'
//! storage. The rules and the engine they run are pure and live in [`crate::domain::alerts`].
//!
//! - [`store`]: alerts, the alert stream and the engine's checkpoint in sled.
//! - [`feed`]: the live stream followers read (recent changes in memory, older ones in sled).
//! - [`monitor`]: the live thread fed by the flusher, with checkpoints and protective actions.

pub mod feed;
pub mod monitor;
pub mod store;

pub use feed::AlertFeed;
pub use monitor::{Monitor, MonitorConfig, MonitorStatus};
