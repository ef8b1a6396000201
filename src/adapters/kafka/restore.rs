//! Restore from the topic: rebuilds a data directory from the events topic, the ledger's
//! replica. The topic carries the exact stored bytes, so the restored log is byte-identical to
//! the original up to the topic's end; every link is checked as it is written, and the signed
//! checkpoints of the checkpoints topic are checked with the public key and kept when they
//! match the restored log. Projections, indexes, idempotency keys and alerts are derived from
//! the log, and `serve` rebuilds them when it opens the directory.
//!
//! Resumable: it writes in chunks with a flush every [`FLUSH_EVERY_EVENTS`]; run again on the
//! same directory, it skips the events already there (checking that the topic's event at the
//! directory's head is the same one) and goes on from there.

use bindledger_events::{hash_bytes, ChainVerifier};
use std::path::Path;

use crate::config::KafkaConfig;
use crate::domain::secret::LedgerSecret;
use crate::error::{Error, Result};
use crate::ledger::checkpoint::{CheckpointStore, SignedCheckpoint};
use crate::ledger::store::{LogBatch, Store, CHUNK_EVENTS_MAX};

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
    /// The epoch of the chain it continues (see `terms`).
    pub epoch: u64,
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
    let store = Store::open(dir)?;
    store.check_secret(&secret.check_value())?;
    let (resumed_from, head) = store.head()?.unwrap_or((0, bindledger_events::GENESIS_HASH));
    let mut verifier = ChainVerifier::new();
    let mut writer = LogWriter::new(&store);
    let mut restored = 0u64;
    // Fetching and merging the partitions on a thread of their own; checking and writing here.
    let mut events =
        crate::adapters::kafka::reader::read_topic(crate::adapters::kafka::client::client_config(kafka), &kafka.topic)
            .map_err(|e| Error::Io(e.to_string()))?
            .read_ahead()
            .map_err(|e| Error::Io(format!("starting the topic's reader: {e}")))?;
    for item in events.by_ref() {
        let bytes = item.map_err(|e| Error::Io(e.to_string()))?;
        let (event, hash) = verifier
            .push(&bytes)
            .map_err(|e| Error::Corrupt(format!("the topic {} does not verify: {e}", kafka.topic)))?;
        if event.seq <= resumed_from {
            if event.seq == resumed_from && hash != head {
                return Err(Error::Corrupt(format!(
                    "event {} in {} is not the one of the topic (another log?): refusing to go on",
                    event.seq,
                    dir.display()
                )));
            }
            continue;
        }
        restored += 1;
        if writer.push(event.seq, &bytes)? {
            progress(event.seq);
        }
    }
    writer.finish()?;
    let (head_seq, head) = store.head()?.unwrap_or((0, bindledger_events::GENESIS_HASH));
    if head_seq < resumed_from {
        return Err(Error::Corrupt(format!(
            "the topic {} ends at event {head_seq}, before the directory's {resumed_from}",
            kafka.topic
        )));
    }
    let (mut kept, mut beyond) = (0u64, 0u64);
    if let (Some(topic), Some(key)) = (checkpoints_topic, public_key) {
        let cps = CheckpointStore::new(store.checkpoints_tree());
        for item in
            crate::adapters::kafka::reader::read_topic(crate::adapters::kafka::client::client_config(kafka), topic)
                .map_err(|e| Error::Io(e.to_string()))?
        {
            let value = item.map_err(|e| Error::Io(e.to_string()))?;
            let cp: SignedCheckpoint = serde_json::from_slice(&value)
                .map_err(|e| Error::Corrupt(format!("{topic}: not a checkpoint: {e}")))?;
            cp.verify(key)
                .map_err(|why| Error::Corrupt(format!("{topic}: checkpoint {}: {why}", cp.seq)))?;
            if cp.seq > head_seq {
                beyond += 1;
                continue;
            }
            let bytes = store
                .event_bytes(cp.seq)?
                .ok_or_else(|| Error::Corrupt(format!("event {} missing", cp.seq)))?;
            if hash_bytes(&bytes) != cp.head {
                return Err(Error::Corrupt(format!(
                    "the restored event {} does not match its signed checkpoint: the topic was rewritten",
                    cp.seq
                )));
            }
            cps.put(&cp)?;
            kept += 1;
        }
        store.flush()?;
    }
    store.set_relay_position(&kafka.topic, head_seq)?;
    // The restored ledger publishes in the epoch of the chain it continues (a newer primary's
    // messages would tell its relay that it was fenced).
    let epoch = events.chain_epoch();
    store.set_epoch(epoch, "")?;
    store.flush()?;
    Ok(RestoreReport {
        resumed_from,
        restored,
        head_seq,
        head,
        checkpoints_kept: kept,
        checkpoints_beyond: beyond,
        epoch,
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
