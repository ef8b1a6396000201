//! The live alert stream as followers read it (the SSE feed, the alerts topic, the demo).
//!
//! The monitor publishes each change here the moment it is made: into a bounded in-memory ring
//! of the most recent changes, then tells followers. Storing it in sled happens after, on the
//! monitor's store thread, so a slow disk write (sled can stall for tens of milliseconds while
//! it flushes) never delays an alert. A follower further behind than the ring reads sled, up to
//! what is stored. Publishing before storing is safe because alerts are a function of the log:
//! after a crash the monitor makes the very same changes again (same stream seqs, ids, contents)
//! from its checkpoint, which is never ahead of what is stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::store::AlertStore;
use crate::domain::alerts::engine::AlertChange;
use crate::error::Result;

/// Recent changes kept in memory.
pub const RING_MAX: usize = 65_536;

pub struct AlertFeed {
    /// Consecutive stream seqs, oldest first.
    ring: RwLock<VecDeque<AlertChange>>,
    /// The last stream seq published.
    published: tokio::sync::watch::Sender<u64>,
    /// The last stream seq stored in sled.
    stored: AtomicU64,
    /// The seq of the last triage stored (the triage stream is read from sled).
    triaged: tokio::sync::watch::Sender<u64>,
    store: AlertStore,
}

impl AlertFeed {
    /// A feed over `store`, whose stream is stored through `stored`; `published` starts there
    /// too.
    /// `triaged` is the seq of the last triage stored.
    pub fn new(store: AlertStore, stored: u64, triaged: u64) -> AlertFeed {
        AlertFeed {
            ring: RwLock::new(VecDeque::new()),
            published: tokio::sync::watch::Sender::new(stored),
            stored: AtomicU64::new(stored),
            triaged: tokio::sync::watch::Sender::new(triaged),
            store,
        }
    }

    /// Follows the last stream seq published.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub fn published(&self) -> u64 {
        *self.published.borrow()
    }

    /// The last stream seq stored in sled (what the listing and `GET /v1/alerts/{id}` see;
    /// it trails `published` by a few milliseconds at most).
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &AlertStore {
        &self.store
    }

    /// (monitor) Publishes changes, in stream order.
    pub(crate) fn publish(&self, changes: &[AlertChange]) {
        let Some(last) = changes.last() else { return };
        {
            let mut ring = self.ring.write().expect("ring lock");
            if ring.back().is_some_and(|b| b.stream_seq + 1 != changes[0].stream_seq) {
                ring.clear(); // resumed from a checkpoint: start over
            }
            ring.extend(changes.iter().cloned());
            while ring.len() > RING_MAX {
                ring.pop_front();
            }
        }
        self.published.send_if_modified(|v| {
            let changed = *v < last.stream_seq;
            *v = (*v).max(last.stream_seq);
            changed
        });
    }

    /// Follows the seq of the last triage stored.
    pub fn subscribe_triage(&self) -> tokio::sync::watch::Receiver<u64> {
        self.triaged.subscribe()
    }

    /// The seq of the last triage stored.
    pub fn triaged(&self) -> u64 {
        *self.triaged.borrow()
    }

    /// (monitor's store thread) Triage through the event seq `seq` is stored.
    pub(crate) fn triaged_through(&self, seq: u64) {
        self.triaged.send_if_modified(|v| {
            let changed = *v < seq;
            *v = (*v).max(seq);
            changed
        });
    }

    /// (monitor's store thread) Changes through `stream_seq` are stored.
    pub(crate) fn stored_through(&self, stream_seq: u64) {
        self.stored.fetch_max(stream_seq, Ordering::SeqCst);
    }

    /// The next changes after `after` (at most `limit`), waiting until there are some: what a
    /// follower calls in a loop. `published` is the follower's own [`AlertFeed::subscribe`].
    /// `None` once the monitor has stopped.
    pub async fn next_after(
        &self,
        after: u64,
        limit: usize,
        published: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<Option<Vec<AlertChange>>> {
        loop {
            let through = *published.borrow_and_update();
            if through > after {
                let changes = self.changes_after(after, limit)?;
                if !changes.is_empty() {
                    return Ok(Some(changes));
                }
                // Older than the memory holds and not stored yet: shortly.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            if published.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Published changes after `after`, oldest first, at most `limit`: from memory when they
    /// are still there, else from sled (up to what is stored; an empty answer while the store
    /// catches up means "ask again shortly").
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<AlertChange>> {
        let through = self.published();
        if after >= through {
            return Ok(Vec::new());
        }
        {
            let ring = self.ring.read().expect("ring lock");
            if let Some(front) = ring.front() {
                if front.stream_seq <= after + 1 {
                    let skip = (after + 1 - front.stream_seq) as usize;
                    return Ok(ring
                        .iter()
                        .skip(skip)
                        .take(limit)
                        .filter(|c| c.stream_seq <= through)
                        .cloned()
                        .collect());
                }
            }
        }
        let stored = self.stored.load(Ordering::SeqCst).min(through);
        self.store.changes_after(after, stored, limit)
    }
}
