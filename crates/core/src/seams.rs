//! The seams a deterministic simulation drives (`bindledger simulate`), gathered in one value
//! the ledger is opened with.

use std::sync::Arc;

use crate::clock;
use crate::store;

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
    /// A known bug, for the simulator's test that it finds one (feature `simulation` only).
    #[cfg(feature = "simulation")]
    pub planted_bug: Option<PlantedBug>,
}

impl Default for Seams {
    fn default() -> Self {
        Seams {
            clock: Arc::new(clock::SystemClock),
            ids_seed: None,
            faults: None,
            #[cfg(feature = "simulation")]
            planted_bug: None,
        }
    }
}

/// Bugs the simulator's own test plants, to show that the simulator finds such a bug within the
/// seeds `make test` runs. They exist only with the feature `simulation` (which `make test` and
/// `make simulate` turn on): a build without it cannot plant one.
#[cfg(feature = "simulation")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// On open, after catching the projection up with the log, fold the last event again.
    RefoldLastEventOnOpen,
    /// Answer a batch whose flush failed as if it had been made durable.
    AckBeforeFlush,
    /// Wait for a wallet provider however long it takes (no `gateway.timeout_ms`).
    NoGatewayTimeout,
}

/// Whether a thread is one of the core's (`bindledger-writer`, `-flusher`, `-indexer`,
/// `-monitor`, `-alert-store`, `-head`, `-replica`): a node without one of them is not a node.
pub fn is_core_thread(name: Option<&str>) -> bool {
    name.is_some_and(|n| n.starts_with("bindledger-"))
}

/// Makes a panic on a core thread end the process (abort: exit by `SIGABRT`), after the
/// panic's message is printed. A node whose writer, flusher, indexer, monitor or replica died
/// must not go on answering as if healthy; its supervisor restarts it, and the restart recovers
/// from the log like any crash (what SIGKILL tests prove). Installed once per process, around
/// whatever hook was there.
pub fn abort_on_core_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let thread = std::thread::current();
            if is_core_thread(thread.name()) {
                eprintln!(
                    "bindledger: the core thread {} died; stopping the process (its supervisor restarts it, and the restart recovers from the log)",
                    thread.name().unwrap_or("?")
                );
                std::process::abort();
            }
        }));
    });
}

/// A test seam for a part of the node that dies, in debug builds only (release builds ignore
/// it): `BINDLEDGER_FAULT_PANIC=<part>:<n>` makes the part named `<part>` (a core thread's
/// name, or `relay`) panic at its `n`th pass through here (once per batch a thread handles,
/// once per session of the relay). `tests/crash.rs` and `tests/kafka.rs` use it.
pub fn panic_point(thread: &'static str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static PLAN: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
        static PASSES: AtomicU64 = AtomicU64::new(0);
        let plan = PLAN.get_or_init(|| {
            let v = std::env::var("BINDLEDGER_FAULT_PANIC").ok()?;
            let (name, n) = v.split_once(':')?;
            Some((name.to_owned(), n.parse().ok()?))
        });
        if let Some((name, n)) = plan {
            if name == thread && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
                panic!("a panic planted in {thread} (BINDLEDGER_FAULT_PANIC)");
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = thread;
}
