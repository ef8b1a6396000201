//! Restore from the topic: rebuilds a data directory from the events topic, the ledger's
//! replica. The topic carries the exact stored bytes, so the restored log is byte-identical to
//! the original up to the topic's end; every link is checked as it is written, and the signed
//! checkpoints of the checkpoints topic are checked with the public key and kept when they
//! match the restored log. Projections, indexes, idempotency keys and alerts are derived from
//! the log, and `serve` rebuilds them when it opens the directory.
//!
//! **A torn topic.** A primary that dies while its relay has events in flight to several
//! partitions leaves the topic ending in a tail with holes (some partitions received later
//! events than others). The restore takes the chain up to its last contiguous event and
//! reports what lies past the hole ([`TornTail`]); in replicated mode none of it can have been
//! acknowledged, in local mode it is what was lost with the disk. The restored node then
//! starts a new epoch: like a promotion, the restore writes a fence of it to every partition
//! of the events topic (and to the checkpoints topic), so that every reader drops the tail
//! (TOPIC.md, rule 4) and no reader ever sees two events with one seq once the restored node
//! writes the next ones. Checkpoints a fenced primary signed over events the chain does not
//! hold are dropped, never taken for a rewritten topic.
//!
//! Resumable: it writes in chunks with a flush every [`FLUSH_EVERY_EVENTS`]; run again on the
//! same directory, it skips the events already there (checking that the topic's event at the
//! directory's head is the same one) and goes on from there.

use bindledger_events::{hash_bytes, ChainVerifier};
use std::path::Path;

use crate::config::KafkaConfig;
use crate::domain::secret::LedgerSecret;
use crate::error::{Error, Result};
use crate::ledger::checkpoint::CheckpointStore;
use crate::ledger::store::{LogBatch, Store, CHUNK_EVENTS_MAX};
use crate::reader::TornTail;

/// Events written between two flushes (what an interrupted restore may have to read again).
pub const FLUSH_EVERY_EVENTS: u64 = 8192;

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// Events already in the directory when it began.
    pub resumed_from: u64,
    /// Events written by this run.
    pub restored: u64,
    /// The log's head after it.
    pub head_seq: u64,
    pub head: bindledger_events::Hash,
    /// Signed checkpoints checked and kept, and those on the topic beyond the restored log.
    pub checkpoints_kept: u64,
    pub checkpoints_beyond: u64,
    /// Checkpoints a fenced primary signed over events the chain does not hold (dropped).
    pub checkpoints_fenced: u64,
    /// What lay past a hole the chain ended at, if it did.
    pub torn: Option<TornTail>,
    /// The epoch the restored node starts (fenced on the topics): one more than any read.
    pub epoch: u64,
    /// Wrapped data keys restored from the keys topic (erased accounts' left out).
    pub data_keys: u64,
}

/// Restores `dir` from `kafka.topic` (and `checkpoints_topic`, checked with `public_key`),
/// calling `progress(events so far)` now and then.
pub fn restore(
    kafka: &KafkaConfig,
    checkpoints_topic: Option<&str>,
    public_key: Option<&str>,
    dir: &Path,
    secret: &LedgerSecret,
    mut progress: impl FnMut(u64),
) -> Result<RestoreReport> {
    // The broker and the topic first: an unreachable broker or a wrong topic creates nothing.
    crate::client::require_topic(kafka, &kafka.topic, std::time::Duration::from_secs(5))
        .map_err(|e| Error::io(e.to_string()))?;
    let store = Store::open(dir)?;
    store.check_secret(&secret.check_value())?;
    let (resumed_from, head) = store.head()?.unwrap_or((0, bindledger_events::GENESIS_HASH));
    let mut verifier = ChainVerifier::new();
    let mut writer = LogWriter::new(&store);
    let mut restored = 0u64;
    // Accounts erased in the restored log: no key of theirs is restored, whatever the keys
    // topic still holds.
    let mut erased = std::collections::HashSet::new();
    // Fetching and merging the partitions on a thread of their own; checking and writing here.
    let mut events = crate::reader::read_topic(crate::client::client_config(kafka), &kafka.topic)
        .map_err(|e| Error::io(e.to_string()))?
        .ending_at_a_hole()
        .read_ahead()
        .map_err(|e| Error::io(format!("starting the topic's reader: {e}")))?;
    for item in events.by_ref() {
        let bytes = item.map_err(|e| Error::io(e.to_string()))?;
        let (event, hash) = verifier
            .push(&bytes)
            .map_err(|e| Error::corrupt_by(format!("the topic {} does not verify", kafka.topic), e))?;
        if event.seq <= resumed_from {
            if event.seq == resumed_from && hash != head {
                return Err(Error::corrupt(format!(
                    "event {} in {} is not the one of the topic (another log?): refusing to go on",
                    event.seq,
                    dir.display()
                )));
            }
            if matches!(event.payload, bindledger_events::Payload::SubjectErased { .. }) {
                erased.insert(event.account.clone());
            }
            continue;
        }
        if matches!(event.payload, bindledger_events::Payload::SubjectErased { .. }) {
            erased.insert(event.account.clone());
        }
        restored += 1;
        if writer.push(event.seq, &bytes)? {
            progress(event.seq);
        }
    }
    writer.finish()?;
    let (head_seq, head) = store.head()?.unwrap_or((0, bindledger_events::GENESIS_HASH));
    if head_seq < resumed_from {
        return Err(Error::corrupt(format!(
            "the topic {} ends at event {head_seq}, before the directory's {resumed_from}",
            kafka.topic
        )));
    }
    let keys = crate::keys::restore_into(&store, kafka, &erased).map_err(|e| Error::io(e.to_string()))?;
    store.flush()?;
    let torn = events.torn();
    let epoch_starts = events.epoch_starts();
    let (mut kept, mut beyond, mut fenced) = (0u64, 0u64, 0u64);
    let mut highest = events.highest_epoch();
    if let (Some(topic), Some(key)) = (checkpoints_topic, public_key) {
        let cps = CheckpointStore::new(store.checkpoints_tree());
        let (published, fences) =
            crate::checkpoints::read_published(kafka, topic).map_err(|e| Error::io(e.to_string()))?;
        highest = highest.max(fences);
        for crate::checkpoints::Published { epoch, checkpoint: cp } in published {
            cp.verify(key)
                .map_err(|why| Error::corrupt_by(format!("{topic}: checkpoint {}", cp.seq), why))?;
            if crate::checkpoints::fenced_checkpoint(epoch, cp.seq, &epoch_starts) {
                fenced += 1;
                continue;
            }
            if cp.seq > head_seq {
                beyond += 1;
                continue;
            }
            let bytes = store
                .event_bytes(cp.seq)?
                .ok_or_else(|| Error::corrupt(format!("event {} missing", cp.seq)))?;
            if hash_bytes(&bytes) != cp.head {
                return Err(Error::corrupt(format!(
                    "the restored event {} does not match its signed checkpoint: the topic was rewritten",
                    cp.seq
                )));
            }
            cps.put(&cp)?;
            kept += 1;
        }
        store.flush()?;
    }
    // The restored node starts a new epoch and fences the topics with it, as a promotion does:
    // whatever a previous primary left past the chain (a torn tail) or still writes is dropped
    // by every reader, and its relay publishes in the new epoch from the fences on.
    let epoch = highest.max(events.chain_epoch()) + 1;
    let node = format!("restore-{}", uuid::Uuid::now_v7().simple());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(format!("starting a runtime to fence the topics: {e}")))?;
    let ends = runtime
        .block_on(super::replica::write_fences(
            kafka,
            &kafka.topic,
            kafka.partitions,
            epoch,
            &node,
            "",
        ))
        .map_err(|e| Error::io(e.to_string()))?;
    if let Some(topic) = checkpoints_topic {
        runtime
            .block_on(super::replica::write_fences(kafka, topic, 1, epoch, &node, ""))
            .map_err(|e| Error::io(e.to_string()))?;
    }
    let verified: Vec<(i64, u64)> = ends.iter().map(|e| (*e, head_seq)).collect();
    store.set_relay_verified(&kafka.topic, &verified)?;
    store.set_relay_position(&kafka.topic, head_seq)?;
    store.set_epoch(epoch, &node)?;
    store.flush()?;
    Ok(RestoreReport {
        resumed_from,
        restored,
        head_seq,
        head,
        checkpoints_kept: kept,
        checkpoints_beyond: beyond,
        checkpoints_fenced: fenced,
        torn,
        epoch,
        data_keys: keys,
    })
}

/// Writes events into a store's log in chunks, with a flush every [`FLUSH_EVERY_EVENTS`].
pub(super) struct LogWriter<'a> {
    store: &'a Store,
    batch: LogBatch,
    in_batch: usize,
    since_flush: u64,
}

impl<'a> LogWriter<'a> {
    pub(super) fn new(store: &'a Store) -> LogWriter<'a> {
        LogWriter {
            store,
            batch: LogBatch::default(),
            in_batch: 0,
            since_flush: 0,
        }
    }

    /// Adds the next event; true when that made a flush.
    pub(super) fn push(&mut self, seq: u64, bytes: &[u8]) -> Result<bool> {
        self.batch.add_event(seq, bytes);
        self.in_batch += 1;
        self.since_flush += 1;
        if self.in_batch < CHUNK_EVENTS_MAX {
            return Ok(false);
        }
        self.store.apply_log(std::mem::take(&mut self.batch))?;
        self.in_batch = 0;
        if self.since_flush < FLUSH_EVERY_EVENTS {
            return Ok(false);
        }
        self.store.flush()?;
        self.since_flush = 0;
        Ok(true)
    }

    /// Writes what is left and flushes.
    pub(super) fn finish(self) -> Result<()> {
        if self.in_batch > 0 {
            self.store.apply_log(self.batch)?;
        }
        self.store.flush()
    }
}
