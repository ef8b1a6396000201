//! A topic read back as one log: every partition merged in `seq` order with bounded memory.

use crate::{client_error, KafkaError};
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::Offset;

use super::client::header_text;

/// Messages the merge buffers per partition (librdkafka's own queue per partition is bounded
/// by `queued.max.messages.kbytes`, set below).
const KAFKA_BUFFER_PER_PARTITION: usize = 4096;

/// A consumer of every partition of one topic, each partition with its own queue, so that a
/// reader takes from the partition it needs and the others wait in librdkafka's bounded
/// queues (which stop fetching when full). This is how the merges below bound their memory;
/// not with `pause`/`resume` or `seek`: against the development broker (tansu 0.6), a
/// partition fetched again from an offset inside a record batch skipped the batch's records.
pub struct PartitionedConsumer {
    consumer: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
    queues: Vec<rdkafka::consumer::base_consumer::PartitionQueue<rdkafka::consumer::DefaultConsumerContext>>,
    pub topic: String,
    /// Per partition: the next offset to take (records before it are skipped).
    pub next_offset: Vec<i64>,
    /// Records that reached the consumer's main queue before the partitions' queues were split
    /// off (librdkafka may fetch as soon as partitions are assigned): taken first.
    stray: Vec<std::collections::VecDeque<SeqRecord>>,
    /// The fencing rules applied as records are read (rule 1 in [`Self::fill`]).
    pub terms: super::terms::Terms,
}

pub use crate::terms::{Fence, SeqRecord};

impl PartitionedConsumer {
    /// Opens every partition of `topic` at `starts` (one per partition; `None`: the beginning).
    /// `Ok(None)` when the topic does not exist or has no partitions.
    pub fn open(
        mut client: ClientConfig,
        topic: &str,
        starts: Option<&[i64]>,
    ) -> Result<Option<PartitionedConsumer>, KafkaError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::TopicPartitionList;
        let consumer: BaseConsumer = client
            .set(
                "group.id",
                format!("bindledger-reader-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("queued.max.messages.kbytes", "65536")
            .set("queued.min.messages", "100000")
            // A follower wants records as soon as they are there, not a fuller fetch later.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(client_error("kafka consumer"))?;
        let md = consumer
            .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
            .map_err(client_error(format!("metadata of {topic}")))?;
        let partitions = md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Ok(None);
        }
        let starts: Vec<i64> = match starts {
            Some(s) if s.len() == partitions => s.to_vec(),
            _ => vec![0; partitions],
        };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in starts.iter().enumerate() {
            let offset = if *o > 0 { Offset::Offset(*o) } else { Offset::Beginning };
            tpl.add_partition_offset(topic, p as i32, offset)
                .map_err(client_error(format!("reading from partition {p}")))?;
        }
        let consumer = std::sync::Arc::new(consumer);
        consumer
            .assign(&tpl)
            .map_err(client_error("assigning the partitions"))?;
        let queues = (0..partitions as i32)
            .map(|p| {
                consumer
                    .split_partition_queue(topic, p)
                    .ok_or_else(|| KafkaError::Topic(format!("{topic} partition {p}: no queue")))
            })
            .collect::<Result<Vec<_>, KafkaError>>()?;
        let mut reader = PartitionedConsumer {
            consumer,
            queues,
            topic: topic.to_owned(),
            next_offset: starts.iter().map(|o| (*o).max(0)).collect(),
            stray: vec![Default::default(); partitions],
            terms: super::terms::Terms::new(partitions),
        };
        // What reached the main queue before the split comes first.
        reader.serve()?;
        Ok(Some(reader))
    }

    pub fn partitions(&self) -> usize {
        self.queues.len()
    }

    /// The high watermark of partition `p` as the broker reports it now.
    pub fn high_watermark(&self, p: usize) -> Result<i64, KafkaError> {
        use rdkafka::consumer::Consumer;
        self.consumer
            .fetch_watermarks(&self.topic, p as i32, std::time::Duration::from_secs(10))
            .map(|(_, high)| high)
            .map_err(client_error(format!("the end of {} partition {p}", self.topic)))
    }

    /// Unparks the calling thread whenever a partition's queue receives records, so that a
    /// follower can sleep with `std::thread::park_timeout` while the topic is quiet.
    pub fn wake_this_thread_on_records(&mut self) {
        for q in &mut self.queues {
            let t = std::thread::current();
            q.set_nonempty_callback(move || t.unpark());
        }
    }

    /// Serves librdkafka's callbacks (errors, statistics); call it now and then. A record
    /// found on the main queue is kept for its partition.
    pub fn serve(&mut self) -> Result<(), KafkaError> {
        loop {
            match self.consumer.poll(std::time::Duration::ZERO) {
                None => return Ok(()),
                Some(Err(e)) => return Err(client_error(format!("reading {}", self.topic))(e)),
                Some(Ok(m)) => {
                    let p = m.partition() as usize;
                    if p < self.stray.len() {
                        let record = Self::record(&self.topic, p, &m)?;
                        self.stray[p].push_back(record);
                    }
                }
            }
        }
    }

    fn record(topic: &str, p: usize, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<SeqRecord, KafkaError> {
        use rdkafka::message::Message;
        let number = |name: &str| super::client::header_number(m, name);
        let value = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
        if let Some(epoch) = number("fence") {
            return Ok(SeqRecord {
                seq: 0,
                value,
                offset: m.offset(),
                epoch,
                fence: Some(Fence {
                    node: header_text(m, "node").unwrap_or_default(),
                }),
                fenced: 0,
            });
        }
        // The `seq` header (events), else the key (checkpoints are keyed by seq).
        let seq = number("seq")
            .or_else(|| std::str::from_utf8(m.key()?).ok()?.parse().ok())
            .ok_or_else(|| {
                KafkaError::Topic(format!("{topic} partition {p} offset {} has no seq header", m.offset()))
            })?;
        Ok(SeqRecord {
            seq,
            value,
            offset: m.offset(),
            epoch: number("epoch").unwrap_or(0),
            fence: None,
            fenced: 0,
        })
    }

    /// Moves records of partition `p` into `buffer` until it holds `max`, waiting at most
    /// `wait` for the first; returns how many it read (fences and records the fencing rules
    /// drop included: they are progress too, though not buffered).
    pub fn fill(
        &mut self,
        p: usize,
        buffer: &mut std::collections::VecDeque<SeqRecord>,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<usize, KafkaError> {
        use rdkafka::message::Message;
        let mut moved = 0;
        let mut wait = wait;
        while buffer.len() < max {
            let record = if let Some(record) = self.stray[p].pop_front() {
                if record.offset < self.next_offset[p] {
                    continue;
                }
                record
            } else {
                match self.queues[p].poll(wait) {
                    None => break,
                    Some(Err(e)) => return Err(client_error(format!("reading {} partition {p}", self.topic))(e)),
                    Some(Ok(m)) => {
                        wait = std::time::Duration::ZERO;
                        if m.offset() < self.next_offset[p] {
                            continue;
                        }
                        Self::record(&self.topic, p, &m)?
                    }
                }
            };
            self.next_offset[p] = record.offset + 1;
            moved += 1;
            if let Some(record) = self.terms.admit(p, record) {
                buffer.push_back(record);
            }
        }
        Ok(moved)
    }
}

/// The events topic read as one log: every partition from its start to its end, merged on the
/// `seq` header (a k-way merge: each partition is in global order already), with bounded
/// memory ([`PartitionedConsumer`]). A partition is at its end once it has reached the high
/// watermark it had when reading began and has then delivered nothing for [`KAFKA_QUIET`]
/// (both: a broker may report a watermark short of its last record, as tansu 0.6 does). Ties
/// (a duplicate across partitions) keep both, in partition order, for the audit to name. The
/// fencing rules ([`super::terms`]) drop what a fenced primary wrote.
pub struct TopicReader {
    reader: PartitionedConsumer,
    /// Whether the chain ends at a hole ([`TopicReader::ending_at_a_hole`]).
    end_at_hole: bool,
    /// What lay past the chain's end when it ended at a hole.
    torn: Option<TornTail>,
    /// Where each epoch's events begin in the chain: (epoch, first seq), oldest first.
    epoch_starts: Vec<(u64, u64)>,
    buffers: Vec<std::collections::VecDeque<SeqRecord>>,
    /// Per partition: when it last delivered, whether it has ended, its end when reading began.
    active: Vec<std::time::Instant>,
    ended: Vec<bool>,
    ends: Vec<i64>,
    failed: bool,
    /// The `seq` of the last record taken.
    last: u64,
}

/// How long a partition past its high watermark must deliver nothing to count as read to its end.
pub const KAFKA_QUIET: std::time::Duration = std::time::Duration::from_secs(2);
/// A partition that makes no progress for this long short of its end fails the read.
const KAFKA_STALLED: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens `topic` for reading from its start (`client`: the brokers and any security settings).
pub fn read_topic(client: ClientConfig, topic: &str) -> Result<TopicReader, KafkaError> {
    let reader = PartitionedConsumer::open(client, topic, None)?
        .ok_or_else(|| KafkaError::Topic(format!("topic {topic} has no partitions")))?;
    let n = reader.partitions();
    let ends = (0..n)
        .map(|p| reader.high_watermark(p))
        .collect::<Result<Vec<_>, _>>()?;
    let now = std::time::Instant::now();
    Ok(TopicReader {
        reader,
        end_at_hole: false,
        torn: None,
        epoch_starts: Vec::new(),
        buffers: vec![Default::default(); n],
        active: vec![now; n],
        ended: vec![false; n],
        ends,
        failed: false,
        last: 0,
    })
}

/// Messages on the events topic past a hole in the chain, when every partition is read to its
/// end: the unacknowledged tail of a primary that died while its relay had events in flight to
/// several partitions (some landed, some did not). In replicated mode none of them can have
/// been acknowledged (an event is acknowledged only once every message up to it landed); in
/// local mode they are events the lost disk held.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TornTail {
    /// The first seq missing: the chain ends just before it.
    pub missing: u64,
    /// How many messages lie past the hole.
    pub messages: u64,
    /// Their seqs, in order (the first [`TORN_SEQS_LISTED`]).
    pub seqs: Vec<u64>,
    /// Their epoch (the highest among them).
    pub epoch: u64,
}

/// Seqs of a torn tail listed in its report.
pub const TORN_SEQS_LISTED: usize = 64;

impl TopicReader {
    /// Ends the chain at a hole instead of handing over what lies past it (a restore: the
    /// chain up to its last contiguous event is what can be rebuilt, and what lies past the
    /// hole is reported by [`TopicReader::torn`]). Without it, the records past a hole are
    /// handed over, for the audit to name the hole.
    pub fn ending_at_a_hole(mut self) -> TopicReader {
        self.end_at_hole = true;
        self
    }

    /// What lay past the hole the chain ended at, if it ended at one.
    pub fn torn(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Rule 4 (TOPIC.md): once every partition has shown its fence of the newest epoch, a
    /// buffered message of an older epoch that does not continue the chain never will (what
    /// came before the fences is all buffered, what came after them is dropped by rule 1, and
    /// the newest primary's chain goes on from the last event every reader has): it is a
    /// fenced primary's torn tail, dropped. Returns whether it dropped any.
    fn drop_fenced_tail(&mut self) -> bool {
        let terms = &self.reader.terms;
        let highest = terms.highest;
        if highest == 0 || terms.fenced.iter().any(|f| *f < highest) {
            return false;
        }
        let mut dropped = 0;
        for b in &mut self.buffers {
            let before = b.len();
            b.retain(|r| r.epoch >= highest);
            dropped += (before - b.len()) as u64;
        }
        self.reader.terms.dropped += dropped;
        dropped > 0
    }

    /// Ends the chain at a hole: what is buffered past it is the torn tail.
    fn end_at_the_hole(&mut self) {
        let mut seqs: Vec<u64> = self.buffers.iter().flatten().map(|r| r.seq).collect();
        seqs.sort_unstable();
        let epoch = self.buffers.iter().flatten().map(|r| r.epoch).max().unwrap_or(0);
        let messages = seqs.len() as u64;
        seqs.truncate(TORN_SEQS_LISTED);
        self.torn = Some(TornTail {
            missing: self.last + 1,
            messages,
            seqs,
            epoch,
        });
        for b in &mut self.buffers {
            b.clear();
        }
    }

    /// True once partition `p` is read to its end (see [`TopicReader`]).
    fn finished(&mut self, p: usize) -> Result<bool, KafkaError> {
        if self.ended[p] || !self.buffers[p].is_empty() {
            return Ok(self.ended[p]);
        }
        let quiet = self.active[p].elapsed();
        if self.reader.next_offset[p] >= self.ends[p] && quiet >= KAFKA_QUIET {
            self.ended[p] = true;
        } else if quiet >= KAFKA_STALLED {
            return Err(KafkaError::NoAnswer(format!(
                "{} partition {p} stalled at offset {} of {}",
                self.reader.topic, self.reader.next_offset[p], self.ends[p]
            )));
        }
        Ok(self.ended[p])
    }

    fn step(&mut self) -> std::result::Result<Option<Vec<u8>>, KafkaError> {
        loop {
            // Take what each partition without a buffered record has ready now.
            let mut waiting = None;
            for p in 0..self.buffers.len() {
                if self.ended[p] || !self.buffers[p].is_empty() {
                    continue;
                }
                if self.reader.fill(
                    p,
                    &mut self.buffers[p],
                    KAFKA_BUFFER_PER_PARTITION,
                    std::time::Duration::ZERO,
                )? > 0
                {
                    self.active[p] = std::time::Instant::now();
                } else if !self.finished(p)? {
                    waiting.get_or_insert(p);
                }
            }
            // The fencing rules drop what a fenced primary wrote; a partition they emptied is
            // read again first.
            let mut pruned = false;
            for b in &mut self.buffers {
                let before = b.len();
                self.reader.terms.prune(b);
                pruned |= b.len() != before;
            }
            if pruned {
                continue;
            }
            let p = match waiting {
                Some(p) => p,
                None => {
                    // Every partition has its next record buffered, or has none left: the
                    // smallest, unless it is not the next event and a partition's head may
                    // still be dropped by a fence further on (read more of that one first).
                    let Some(p) = (0..self.buffers.len())
                        .filter(|&p| !self.buffers[p].is_empty())
                        .min_by_key(|&p| self.buffers[p][0].seq)
                    else {
                        return Ok(None);
                    };
                    let undecided = (self.buffers[p][0].seq != self.last + 1)
                        .then(|| {
                            (0..self.buffers.len()).find(|&q| {
                                self.buffers[q].len() < KAFKA_BUFFER_PER_PARTITION
                                    && self.buffers[q]
                                        .front()
                                        .is_some_and(|h| self.reader.terms.undecided(q, h))
                                    && !(self.reader.next_offset[q] >= self.ends[q]
                                        && self.active[q].elapsed() >= KAFKA_QUIET)
                            })
                        })
                        .flatten();
                    match undecided {
                        Some(q) => q,
                        None if self.buffers[p][0].seq != self.last + 1 && self.drop_fenced_tail() => continue,
                        None if self.buffers[p][0].seq > self.last + 1 && self.end_at_hole => {
                            // Every partition is read to its end (none is waited on) and the
                            // next event is not there: the chain ends here.
                            self.end_at_the_hole();
                            return Ok(None);
                        }
                        None => {
                            let record = self.buffers[p].pop_front().expect("not empty");
                            if self.epoch_starts.last().is_none_or(|(e, _)| record.epoch > *e) {
                                self.epoch_starts.push((record.epoch, record.seq));
                            }
                            self.reader.terms.took(&record);
                            self.last = record.seq;
                            // The record's own allocation (copied once out of librdkafka).
                            return Ok(Some(Vec::from(record.value)));
                        }
                    }
                }
            };
            self.reader.serve()?;
            if self.reader.fill(
                p,
                &mut self.buffers[p],
                KAFKA_BUFFER_PER_PARTITION,
                std::time::Duration::from_millis(100),
            )? > 0
            {
                self.active[p] = std::time::Instant::now();
            }
        }
    }

    /// Messages the fencing rules dropped so far (a fenced primary's; see [`super::terms`]).
    pub fn dropped(&self) -> u64 {
        self.reader.terms.dropped
    }
}

impl Iterator for TopicReader {
    type Item = Result<Vec<u8>, KafkaError>;
    fn next(&mut self) -> Option<Result<Vec<u8>, KafkaError>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(v) => v.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Records a [`ReadAhead`] hands over at once, and how many such chunks may wait.
const READ_AHEAD_CHUNK: usize = 1024;
const READ_AHEAD_CHUNKS: usize = 8;

type Chunk = Vec<Result<Vec<u8>, KafkaError>>;

/// A [`TopicReader`] on a thread of its own, at most [`READ_AHEAD_CHUNKS`] chunks of
/// [`READ_AHEAD_CHUNK`] records ahead of its user: fetching and merging the partitions overlap
/// the user's work (checking each link and writing the log, in a restore). Dropped early, its
/// thread stops at its next hand-over.
pub struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    chunk: std::vec::IntoIter<Result<Vec<u8>, KafkaError>>,
    /// The epoch of the last record handed over ([`super::terms::Terms::chain`]).
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The highest epoch read anywhere (fences included).
    highest: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set at the end: what lay past the hole the chain ended at, and where each epoch begins.
    torn: std::sync::Arc<std::sync::Mutex<Option<End>>>,
}

/// What a read-ahead knows once the topic is read: the torn tail, and the epochs' starts.
type End = (Option<TornTail>, Vec<(u64, u64)>);

impl TopicReader {
    pub fn read_ahead(mut self) -> std::io::Result<ReadAhead> {
        let (tx, chunks) = std::sync::mpsc::sync_channel::<Chunk>(READ_AHEAD_CHUNKS);
        let epoch: std::sync::Arc<std::sync::atomic::AtomicU64> = Default::default();
        let highest: std::sync::Arc<std::sync::atomic::AtomicU64> = Default::default();
        let torn: std::sync::Arc<std::sync::Mutex<Option<End>>> = Default::default();
        let (chain, high, tail) = (epoch.clone(), highest.clone(), torn.clone());
        std::thread::Builder::new()
            .name(format!("read {}", self.reader.topic))
            .spawn(move || loop {
                let chunk: Chunk = self.by_ref().take(READ_AHEAD_CHUNK).collect();
                chain.store(self.reader.terms.chain, std::sync::atomic::Ordering::SeqCst);
                high.store(self.reader.terms.highest, std::sync::atomic::Ordering::SeqCst);
                if chunk.is_empty() {
                    // Before the channel closes: the user reads it after the last chunk.
                    *tail.lock().expect("torn tail lock") = Some((self.torn.clone(), self.epoch_starts.clone()));
                }
                if chunk.is_empty() || tx.send(chunk).is_err() {
                    return;
                }
            })?;
        Ok(ReadAhead {
            chunks,
            chunk: Vec::new().into_iter(),
            epoch,
            highest,
            torn,
        })
    }
}

impl ReadAhead {
    /// The epoch of the last record read so far: at the end, the epoch the topic's chain is in.
    pub fn chain_epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The highest epoch read anywhere on the topic, fences included.
    pub fn highest_epoch(&self) -> u64 {
        self.highest.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Once read to the end: what lay past the hole the chain ended at, if it ended at one
    /// ([`TopicReader::ending_at_a_hole`]).
    pub fn torn(&self) -> Option<TornTail> {
        self.torn
            .lock()
            .expect("torn tail lock")
            .as_ref()
            .and_then(|(t, _)| t.clone())
    }

    /// Once read to the end: where each epoch's events begin in the chain, (epoch, first seq),
    /// oldest first.
    pub fn epoch_starts(&self) -> Vec<(u64, u64)> {
        self.torn
            .lock()
            .expect("torn tail lock")
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

impl Iterator for ReadAhead {
    type Item = Result<Vec<u8>, KafkaError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.chunk.next() {
                return Some(item);
            }
            // The reader's thread ends (and the channel closes) after the topic's end or an error.
            self.chunk = self.chunks.recv().ok()?.into_iter();
        }
    }
}
