//! The seams a deterministic simulation drives (`bindledger simulate`), gathered in one value
//! the ledger is opened with.

use std::sync::Arc;

use crate::ledger::clock;
use crate::ledger::store;

/// The seams a deterministic simulation drives (`bindledger simulate`). Production opens the
/// ledger with [`Seams::default`]: the system clock, random event ids, no injected faults.
#[derive(Clone)]
pub struct Seams {
    /// Where every time the ledger decides with is read.
    pub clock: Arc<dyn clock::Clock>,
    /// Event and binding ids from this seed instead of the OS's generator.
    pub ids_seed: Option<u64>,
    /// Storage failures to inject (see [`store::StorageFaults`]).
    pub faults: Option<Arc<store::StorageFaults>>,
    /// A known bug, for the simulator's test that it finds one.
    pub planted_bug: Option<PlantedBug>,
}

impl Default for Seams {
    fn default() -> Self {
        Seams {
            clock: Arc::new(clock::SystemClock),
            ids_seed: None,
            faults: None,
            planted_bug: None,
        }
    }
}

/// Bugs the simulator's own test plants, to show that the simulator finds such a bug within the
/// seeds `make test` runs. Never set but by that test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// On open, after catching the projection up with the log, fold the last event again.
    RefoldLastEventOnOpen,
    /// Answer a batch whose flush failed as if it had been made durable.
    AckBeforeFlush,
    /// Wait for a wallet provider however long it takes (no `gateway.timeout_ms`).
    NoGatewayTimeout,
}
