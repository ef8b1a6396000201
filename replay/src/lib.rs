//! The audit tool's library: where a log comes from ([`Source`]), and an auditor's check of it
//! ([`audit`]) that names the first problem precisely.

use bindledger_events::{decode, hash_bytes, Event, Hash, GENESIS_HASH};
use serde::Serialize;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;

/// Why a log (or its checkpoints) could not be read. A problem found in what was read is not
/// an error: it is the [`Problem`] of an [`AuditReport`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or the standard input could not be read. The I/O error is the source, not
    /// repeated in this text (the tool prints the whole chain once).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The ledger's storage (a data directory) could not be read.
    #[error(transparent)]
    Ledger(#[from] bindledger::Error),
    /// The events topic could not be read.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] bindledger::adapters::kafka::KafkaError),
    /// A running ledger could not be reached, or refused the request.
    #[error("{0}")]
    Http(String),
    /// What was read is not what it should be (a checkpoints file; an event that does not
    /// decode, where a caller wants events).
    #[error("{0}")]
    Format(String),
    /// This build cannot read the source.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl SourceError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
        let what = what.into();
        move |source| SourceError::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, SourceError>;

/// An event's stored bytes as a source yields them: from a data directory, a slice of the sled
/// page they were read with (no copy); from the other sources, a copy of what was read.
pub type Stored = bindledger::ledger::store::EventBytes;

/// Where to read a log from. Each yields the stored bytes of the events, in the order the
/// source holds them.
#[derive(Debug, Clone)]
pub enum Source {
    /// A stopped ledger's data directory (sled; only read).
    DataDir(PathBuf),
    /// An NDJSON export (`bindledger export`, or the HTTP feed saved to a file); `-` is stdin.
    Export(PathBuf),
    /// A running ledger's HTTP event feed, with an auditor token.
    Http { url: String, token: String },
    /// The events topic, partitions merged on the global sequence.
    Kafka {
        brokers: String,
        topic: String,
        /// Extra librdkafka properties (TLS, SASL).
        properties: Vec<(String, String)>,
    },
}

/// A stopped ledger's data directory, copied to read: sled writes when it opens a database
/// (a snapshot file, torn segments zeroed, old blobs removed), and an audit must leave the
/// directory it audits byte for byte as it was. The copy holds the log (`log/`) only, goes in
/// the system's temporary directory (`TMPDIR`; `std::fs::copy` shares the blocks where the
/// file system can, as btrfs and XFS do within one file system), and is removed on drop.
#[derive(Debug)]
pub struct ReadCopy {
    root: PathBuf,
    original: PathBuf,
}

impl ReadCopy {
    pub fn of(dir: &std::path::Path) -> Result<ReadCopy> {
        bindledger::ledger::store::require_log(dir)?;
        let root = std::env::temp_dir().join(format!(
            "bindledger-replay-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let copy = ReadCopy {
            root,
            original: dir.to_path_buf(),
        };
        copy_tree(&dir.join("log"), &copy.root.join("log"))?;
        Ok(copy)
    }

    /// The copy's data directory.
    pub fn path(&self) -> &std::path::Path {
        &self.root
    }

    /// A message about the copy, naming the directory it is a copy of.
    pub fn name_the_original(&self, text: &str) -> String {
        text.replace(&self.root.display().to_string(), &self.original.display().to_string())
    }
}

impl Drop for ReadCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(SourceError::io(format!("creating {}", to.display())))?;
    for entry in std::fs::read_dir(from).map_err(SourceError::io(format!("reading {}", from.display())))? {
        let entry = entry.map_err(SourceError::io(format!("reading {}", from.display())))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry
            .file_type()
            .map_err(SourceError::io(format!("reading {}", source.display())))?
            .is_dir()
        {
            copy_tree(&source, &target)?;
        } else {
            std::fs::copy(&source, &target).map_err(SourceError::io(format!("copying {}", source.display())))?;
        }
    }
    Ok(())
}

/// Events per HTTP feed request: one page in memory at a time.
const FEED_PAGE: u64 = 2_000;

/// The longest line (or feed record) read whole. An event is a few KB at most; a longer line
/// is read up to this and reported `undecodable` at its position, the rest of it skipped.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Reads `\n`-terminated lines, each at most [`LINE_BYTES_MAX`] bytes kept (the rest of a
/// longer one is read and dropped), so memory stays bounded whatever the input.
struct Lines<R: BufRead> {
    reader: R,
    done: bool,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Stored>;
    fn next(&mut self) -> Option<Result<Stored>> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let mut any = false;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(SourceError::Io {
                        what: "reading the log".into(),
                        source: e,
                    }));
                }
            };
            if buf.is_empty() {
                self.done = true;
                return any.then(|| Ok(Stored::from(line)));
            }
            any = true;
            let (chunk, end) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = (LINE_BYTES_MAX + 1).saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = end.unwrap_or(buf.len());
            self.reader.consume(used);
            if end.is_some() {
                return Some(Ok(Stored::from(line)));
            }
        }
    }
}

/// A running ledger's event feed, one page ([`FEED_PAGE`] events) at a time.
struct HttpFeed {
    url: String,
    client: bindledger::adapters::http::client::Client,
    rt: tokio::runtime::Runtime,
    next_from: u64,
    page: std::collections::VecDeque<Stored>,
    done: bool,
}

impl Iterator for HttpFeed {
    type Item = Result<Stored>;
    fn next(&mut self) -> Option<Result<Stored>> {
        if let Some(b) = self.page.pop_front() {
            return Some(Ok(b));
        }
        if self.done {
            return None;
        }
        let path = format!("/v1/events?from={}&limit={FEED_PAGE}", self.next_from);
        let (status, body) = match self.rt.block_on(self.client.send(hyper::Method::GET, &path, None)) {
            Ok(r) => r,
            Err(e) => {
                self.done = true;
                return Some(Err(SourceError::Http(format!("reading {}/v1/events: {e}", self.url))));
            }
        };
        if !status.is_success() {
            self.done = true;
            return Some(Err(SourceError::Http(format!(
                "{}/v1/events answered {status}",
                self.url
            ))));
        }
        let lines: Vec<Stored> = Lines {
            reader: std::io::Cursor::new(&body[..]),
            done: false,
        }
        .filter_map(|l| l.ok())
        .collect();
        self.done = (lines.len() as u64) < FEED_PAGE;
        self.next_from += lines.len() as u64;
        self.page = lines.into();
        self.page.pop_front().map(Ok)
    }
}

impl Source {
    /// How many events the source holds, when it can tell cheaply (a data directory).
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            Source::DataDir(dir) => {
                bindledger::ledger::store::require_log(dir).ok()?;
                bindledger::ledger::store::Store::open_for_scan(dir)
                    .ok()?
                    .head()
                    .ok()?
                    .map(|(seq, _)| seq)
            }
            _ => None,
        }
    }

    /// [`Source::read`], with a progress line (count, rate, ETA when the total is known) on
    /// stderr while it runs, when stderr is a terminal; nothing when it is not.
    pub fn read_with_progress(&self) -> Result<Box<dyn Iterator<Item = Result<Stored>>>> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return self.read();
        }
        // The total first: a data directory can be open only once at a time.
        let total = self.len_hint();
        Ok(Box::new(Progress {
            inner: self.read()?,
            total,
            n: 0,
            started: std::time::Instant::now(),
            shown: std::time::Instant::now(),
        }))
    }

    /// Every event's stored bytes, in the source's order.
    pub fn read(&self) -> Result<Box<dyn Iterator<Item = Result<Stored>>>> {
        match self {
            Source::DataDir(dir) => {
                let scan = bindledger::ledger::store::scan_dir(dir, 1)?;
                Ok(Box::new(scan.map(|r| r.map(|(_, b)| b).map_err(SourceError::from))))
            }
            Source::Export(path) => {
                let reader: Box<dyn BufRead + Send> = if path.as_os_str() == "-" {
                    Box::new(std::io::BufReader::new(std::io::stdin()))
                } else {
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(path).map_err(SourceError::io(format!("opening {}", path.display())))?,
                    ))
                };
                // Blank lines are kept: the audit reports them (an export has none).
                Ok(Box::new(Lines { reader, done: false }))
            }
            Source::Http { url, token } => {
                let addr = bindledger::adapters::http::client::Endpoint::parse(url)
                    .map_err(|e| SourceError::Http(format!("{url}: {e}")))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(SourceError::io("starting a runtime"))?;
                let client = bindledger::adapters::http::client::Client::new(addr, Some(token.to_owned()));
                Ok(Box::new(HttpFeed {
                    url: url.clone(),
                    client,
                    rt,
                    next_from: 1,
                    page: Default::default(),
                    done: false,
                }))
            }
            #[cfg(feature = "kafka")]
            Source::Kafka {
                brokers,
                topic,
                properties,
            } => Ok(Box::new(
                kafka_topic(brokers, topic, properties)?.map(|r| r.map(Stored::from).map_err(SourceError::from)),
            )),
            #[cfg(not(feature = "kafka"))]
            Source::Kafka { .. } => Err(SourceError::Unsupported(
                "this build has no Kafka source (built without the `kafka` feature)",
            )),
        }
    }

    /// Every event, decoded, in the source's order (stops at the first undecodable one). The
    /// whole log in memory: for tests and small logs; the commands use [`Source::for_each`].
    pub fn events(&self) -> Result<Vec<Event>> {
        self.decoded()
            .map(|r| r.and_then(|d| d.event.map_err(SourceError::Format)))
            .collect()
    }

    /// Hands every event to `f`, in the source's order, until `f` returns false, holding only
    /// the pipeline's bounded batches in memory. The chain is checked as it is read: only
    /// verified events reach `f`, and the report names the first problem, where reading stopped.
    pub fn for_each(&self, f: impl FnMut(&Event) -> bool) -> Result<AuditReport> {
        audit_from(self.decoded(), Start::default(), &std::collections::BTreeMap::new(), f)
    }
}

struct Progress {
    inner: Box<dyn Iterator<Item = Result<Stored>>>,
    total: Option<u64>,
    n: u64,
    started: std::time::Instant,
    shown: std::time::Instant,
}

impl Iterator for Progress {
    type Item = Result<Stored>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next();
        if item.is_some() {
            self.n += 1;
            // The first line at once, then at most one every 100 ms.
            if self.n % 1024 == 0 && (self.n == 1024 || self.shown.elapsed().as_millis() >= 100) {
                self.shown = std::time::Instant::now();
                let rate = self.n as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                let eta = self
                    .total
                    .filter(|t| *t > self.n)
                    .map(|t| format!(", ETA {:.0} s", (t - self.n) as f64 / rate))
                    .unwrap_or_default();
                let of = self.total.map(|t| format!(" of {t}")).unwrap_or_default();
                eprint!("\r\x1b[K{} events{of}, {rate:.0}/s{eta}", self.n);
            }
        } else if self.n >= 1024 {
            eprint!("\r\x1b[K");
        }
        item
    }
}

/// One event as the audit reads it: its stored bytes, their SHA-256 and the event decoded.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub bytes: Stored,
    pub hash: Hash,
    pub event: std::result::Result<Event, String>,
}

impl Decoded {
    pub fn new(bytes: impl Into<Stored>) -> Decoded {
        let bytes = bytes.into();
        let hash = hash_bytes(&bytes);
        let event = if bytes.len() > LINE_BYTES_MAX {
            Err(format!(
                "a line of more than {LINE_BYTES_MAX} bytes (no event is that long)"
            ))
        } else {
            decode(&bytes).map_err(|e| e.to_string())
        };
        Decoded { bytes, hash, event }
    }
}

/// Events per batch handed between the pipeline's threads.
const PIPELINE_BATCH: usize = 256;
/// Batches in flight per worker, each way.
const PIPELINE_DEPTH: usize = 4;

/// Reads a source on one thread, hashes and decodes its events on `workers` threads, and
/// yields them in the source's order. Every channel between the threads is bounded
/// ([`PIPELINE_DEPTH`] batches of [`PIPELINE_BATCH`] events per worker each way), so memory
/// stays flat however long the log. Dropping it stops the threads and waits for them (a data
/// directory is free again when it returns).
pub struct Pipeline {
    outputs: Vec<std::sync::mpsc::Receiver<Vec<Result<Decoded>>>>,
    next_worker: usize,
    batch: std::vec::IntoIter<Result<Decoded>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: bool,
}

impl Source {
    /// Every event, hashed and decoded in parallel, in the source's order; with the progress
    /// line of [`Source::read_with_progress`].
    pub fn decoded(&self) -> Pipeline {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        Pipeline::start(self.clone(), workers)
    }
}

impl Pipeline {
    pub fn start(source: Source, workers: usize) -> Pipeline {
        Self::start_with(source, workers, true)
    }

    /// With `decode` false the workers only hash (the event is left undecoded): the baseline
    /// of the benchmark, what reading and hashing alone cost.
    pub fn start_with(source: Source, workers: usize, decode: bool) -> Pipeline {
        use std::sync::mpsc::sync_channel;
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (in_tx, in_rx) = sync_channel::<Vec<Result<Stored>>>(PIPELINE_DEPTH);
            let (out_tx, out_rx) = sync_channel::<Vec<Result<Decoded>>>(PIPELINE_DEPTH);
            threads.push(std::thread::spawn(move || {
                for batch in in_rx {
                    let done: Vec<Result<Decoded>> = batch
                        .into_iter()
                        .map(|r| {
                            r.map(|bytes| {
                                if decode {
                                    Decoded::new(bytes)
                                } else {
                                    Decoded {
                                        hash: hash_bytes(&bytes),
                                        bytes,
                                        event: Err(String::new()),
                                    }
                                }
                            })
                        })
                        .collect();
                    if out_tx.send(done).is_err() {
                        return;
                    }
                }
            }));
            inputs.push(in_tx);
            outputs.push(out_rx);
        }
        threads.push(std::thread::spawn(move || {
            let mut items = source
                .read_with_progress()
                .unwrap_or_else(|e| Box::new(std::iter::once(Err(e))));
            let mut k = 0;
            loop {
                let batch: Vec<Result<Stored>> = items.by_ref().take(PIPELINE_BATCH).collect();
                // The source ran out, or failed (readers stop at its error).
                let end = batch.len() < PIPELINE_BATCH || batch.iter().any(Result::is_err);
                if !batch.is_empty() {
                    if inputs[k % inputs.len()].send(batch).is_err() {
                        return;
                    }
                    k += 1;
                }
                if end {
                    // An empty batch, where the consumer looks next, marks the end.
                    let _ = inputs[k % inputs.len()].send(Vec::new());
                    return;
                }
            }
        }));
        Pipeline {
            outputs,
            next_worker: 0,
            batch: Vec::new().into_iter(),
            threads,
            done: false,
        }
    }
}

impl Iterator for Pipeline {
    type Item = Result<Decoded>;
    fn next(&mut self) -> Option<Result<Decoded>> {
        loop {
            if let Some(item) = self.batch.next() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let from = self.next_worker % self.outputs.len();
            self.next_worker += 1;
            match self.outputs[from].recv() {
                Ok(batch) if !batch.is_empty() => self.batch = batch.into_iter(),
                // The end (an empty batch), or the threads are gone.
                _ => self.done = true,
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Closing the outputs makes the workers stop, which makes the reader stop.
        self.outputs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(feature = "kafka")]
fn kafka_topic(
    brokers: &str,
    topic: &str,
    properties: &[(String, String)],
) -> Result<bindledger::adapters::kafka::reader::TopicReader> {
    let mut client = rdkafka::ClientConfig::new();
    for (k, v) in properties {
        client.set(k, v);
    }
    client.set("bootstrap.servers", brokers);
    Ok(bindledger::adapters::kafka::reader::read_topic(client, topic)?)
}

/// How far ahead the audit looks for an event that is not where it belongs (to tell a
/// reordering from a missing event), and how many verified events' hashes it remembers (to
/// tell a duplicate from a conflicting event).
pub const LOOKAHEAD_EVENTS: usize = 1024;
pub const RECENT_EVENTS: usize = 4096;

/// The first problem in a log, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `altered`, `broken_link`, `missing`, `duplicate`, `conflict`, `reordered`,
    /// `undecodable`, `line_ending`, `blank_line`, `empty`, `account_sequence`, `trusted_head`,
    /// `checkpoint_signature`, `checkpoint_mismatch`, `truncated`.
    pub kind: &'static str,
    /// The global sequence where it is (for a checkpoint's signature: the seq it covers).
    pub seq: u64,
    /// The event's account, when known.
    pub account: Option<String>,
    /// Position in the source (1 = its first event); 0 when the problem is in the signed
    /// checkpoints, not in the log.
    pub position: u64,
    /// For a checkpoint's signature: which checkpoint (1 = the first one given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Events verified: all of them, or those before the problem.
    pub events: u64,
    /// The first event verified (1, or the one after a trusted head).
    pub first_seq: u64,
    /// Hash of the last verified event.
    pub head: Hash,
    /// Signed checkpoints whose head was matched against the log.
    pub checkpoints_checked: u64,
    /// The newest seq a checked checkpoint covers.
    pub checkpoint_seq: Option<u64>,
    /// The reading stopped before the source's end because the caller asked (`state --at`).
    pub stopped_early: bool,
    pub problem: Option<Problem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }

    /// The last verified seq.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.events - 1
    }
}

/// What an altered event's account sequence says, beside its hash.
fn wanted_found(wanted: &str, found: u64) -> String {
    format!("{wanted} expected, account_seq {found} found")
}

/// Where an audit starts: the genesis, or a head the auditor trusts (`--trusted-head
/// SEQ:HASH`, or a checkpoint), so that a partial export (`export --from N`) can be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The seq of the trusted event (0: the genesis).
    pub seq: u64,
    pub hash: Hash,
}

impl Default for Start {
    fn default() -> Self {
        Start {
            seq: 0,
            hash: GENESIS_HASH,
        }
    }
}

impl Start {
    /// Parses `SEQ:HASH`.
    pub fn parse(text: &str) -> std::result::Result<Start, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or("a trusted head is SEQ:HASH (64 hex characters)")?;
        let seq: u64 = seq.parse().map_err(|_| "a trusted head's SEQ is a whole number")?;
        let hash = Hash::from_hex(hash).map_err(|_| "a trusted head's HASH is 64 hex characters")?;
        Ok(Start { seq, hash })
    }
}

/// Checks a log as an auditor does: global sequence continuity, each event's `prev_hash`
/// against the hash of the stored bytes before it, per-account sequence continuity, and that
/// every event decodes. Stops at the first problem and tells what it is (the decision rules
/// are in the README, "Verifying a log").
pub fn audit<B: Into<Stored>>(events: impl Iterator<Item = Result<B>>) -> Result<AuditReport> {
    audit_against(events, &std::collections::BTreeMap::new())
}

/// Signed checkpoints an auditor trusts: each signature checked with `public_key` (hex).
/// Returns the heads they vouch for, by seq, or the first that does not verify.
pub fn trusted_heads(
    checkpoints: &[bindledger::ledger::checkpoint::SignedCheckpoint],
    public_key: &str,
) -> std::result::Result<std::collections::BTreeMap<u64, Hash>, Problem> {
    let mut heads = std::collections::BTreeMap::new();
    for (i, cp) in checkpoints.iter().enumerate() {
        if let Err(why) = cp.verify(public_key) {
            return Err(Problem {
                kind: "checkpoint_signature",
                seq: cp.seq,
                account: None,
                position: 0,
                checkpoint: Some(i as u64 + 1),
                expected: "a checkpoint signed with the trusted key".into(),
                found: why.to_string(),
            });
        }
        heads.insert(cp.seq, cp.head);
    }
    Ok(heads)
}

/// The signed checkpoints a stopped ledger's directory holds (it is opened and closed again
/// before the log is read: sled allows one open at a time).
pub fn stored_checkpoints(dir: &std::path::Path) -> Result<Vec<bindledger::ledger::checkpoint::SignedCheckpoint>> {
    bindledger::ledger::store::require_log(dir)?;
    let store = bindledger::ledger::store::Store::open_for_scan(dir)?;
    Ok(bindledger::ledger::checkpoint::CheckpointStore::new(store.checkpoints_tree()).all()?)
}

/// Reads signed checkpoints: an NDJSON file, or a running ledger's `GET /v1/checkpoints`.
pub fn read_checkpoints(
    from: &str,
    token: Option<&str>,
) -> Result<Vec<bindledger::ledger::checkpoint::SignedCheckpoint>> {
    let text = if from.starts_with("http://") || from.starts_with("https://") {
        let addr = bindledger::adapters::http::client::Endpoint::parse(from)
            .map_err(|e| SourceError::Http(format!("{from}: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SourceError::io("starting a runtime"))?;
        let (status, body) = rt
            .block_on(
                bindledger::adapters::http::client::Client::new(addr, token.map(str::to_owned)).send(
                    hyper::Method::GET,
                    "/v1/checkpoints",
                    None,
                ),
            )
            .map_err(|e| SourceError::Http(format!("reading {from}/v1/checkpoints: {e}")))?;
        if !status.is_success() {
            return Err(SourceError::Http(format!("{from}/v1/checkpoints answered {status}")));
        }
        String::from_utf8_lossy(&body).into_owned()
    } else {
        std::fs::read_to_string(from).map_err(SourceError::io(format!("reading {from}")))?
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| SourceError::Format(format!("{from}: line {}: not a checkpoint: {e}", i + 1)))
        })
        .collect()
}

/// [`audit`], also checking the log against signed heads: the event at each checkpoint's seq
/// must hash to its head, and the log must reach the last checkpoint. A log rewritten after a
/// checkpoint (even with its chain recomputed) fails here.
pub fn audit_against<B: Into<Stored>>(
    events: impl Iterator<Item = Result<B>>,
    heads: &std::collections::BTreeMap<u64, Hash>,
) -> Result<AuditReport> {
    audit_decoded(events.map(|r| r.map(Decoded::new)), heads, |_| {})
}

/// [`audit_against`] over events already hashed and decoded (by a [`Pipeline`]), handing each
/// event that passed every check to `visit`, in order: one pass verifies a log and rebuilds
/// whatever `visit` folds.
pub fn audit_decoded(
    events: impl Iterator<Item = Result<Decoded>>,
    heads: &std::collections::BTreeMap<u64, Hash>,
    mut visit: impl FnMut(&Event),
) -> Result<AuditReport> {
    audit_from(events, Start::default(), heads, |e| {
        visit(e);
        true
    })
}

/// The audit from `start`, handing each verified event to `visit` until it returns false
/// (the report then says `stopped_early`). Every command of the audit tool reads through here,
/// so none of them folds an event the chain does not vouch for.
pub fn audit_from(
    events: impl Iterator<Item = Result<Decoded>>,
    start: Start,
    heads: &std::collections::BTreeMap<u64, Hash>,
    visit: impl FnMut(&Event) -> bool,
) -> Result<AuditReport> {
    let mut report = Auditor::new(events, start, heads).run(visit)?;
    if report.problem.is_none() && !report.stopped_early {
        if report.events == 0 {
            report.problem = Some(Problem {
                kind: "empty",
                seq: start.seq + 1,
                account: None,
                position: 1,
                checkpoint: None,
                expected: format!("event {}", start.seq + 1),
                found: "a source without any event".into(),
            });
        } else if let Some((&seq, head)) = heads.iter().next_back().filter(|(seq, _)| **seq > report.last_seq()) {
            report.problem = Some(Problem {
                kind: "truncated",
                seq,
                account: None,
                position: report.events + 1,
                checkpoint: None,
                expected: format!("event {seq} with hash {head} (signed checkpoint)"),
                found: format!("the log ends at event {}", report.last_seq()),
            });
        }
    }
    Ok(report)
}

/// The audit's state: a bounded look-ahead over the source, and the hashes of the last
/// [`RECENT_EVENTS`] verified events.
struct Auditor<'h, I: Iterator<Item = Result<Decoded>>> {
    events: I,
    ahead: std::collections::VecDeque<Result<Decoded>>,
    heads: &'h std::collections::BTreeMap<u64, Hash>,
    start: Start,
    /// The seq the next event must have, and the hash of the one before it.
    expected: u64,
    prev: Hash,
    /// seq -> hash of recently verified events.
    recent: std::collections::VecDeque<(u64, Hash)>,
    /// The stored bytes of the last verified event (to tell, when a link breaks, whether they
    /// are what the ledger writes).
    prev_bytes: Option<Stored>,
    accounts: HashMap<String, u64>,
    position: u64,
    checkpoints_checked: u64,
    checkpoint_seq: Option<u64>,
}

impl<'h, I: Iterator<Item = Result<Decoded>>> Auditor<'h, I> {
    fn new(events: I, start: Start, heads: &'h std::collections::BTreeMap<u64, Hash>) -> Self {
        Auditor {
            events,
            ahead: Default::default(),
            heads,
            start,
            expected: start.seq + 1,
            prev: start.hash,
            recent: Default::default(),
            prev_bytes: None,
            accounts: HashMap::new(),
            position: 0,
            checkpoints_checked: 0,
            checkpoint_seq: None,
        }
    }

    fn next_item(&mut self) -> Option<Result<Decoded>> {
        self.ahead.pop_front().or_else(|| self.events.next())
    }

    /// The item `k` places ahead of the current one (0 = the next), read into the look-ahead.
    fn peek(&mut self, k: usize) -> Option<&Result<Decoded>> {
        while self.ahead.len() <= k {
            let item = self.events.next()?;
            self.ahead.push_back(item);
        }
        self.ahead.get(k)
    }

    /// The next event's seq and recorded link.
    fn peek_link(&mut self) -> Option<(u64, Hash)> {
        match self.peek(0) {
            Some(Ok(Decoded { event: Ok(n), .. })) => Some((n.seq, n.prev_hash)),
            _ => None,
        }
    }

    fn report(&self, problem: Option<Problem>, stopped_early: bool) -> AuditReport {
        AuditReport {
            events: self.expected - 1 - self.start.seq,
            first_seq: self.start.seq + 1,
            head: self.prev,
            checkpoints_checked: self.checkpoints_checked,
            checkpoint_seq: self.checkpoint_seq,
            stopped_early,
            problem,
        }
    }

    fn recent_hash(&self, seq: u64) -> Option<Hash> {
        self.recent.iter().rev().find(|(s, _)| *s == seq).map(|(_, h)| *h)
    }

    fn run(mut self, mut visit: impl FnMut(&Event) -> bool) -> Result<AuditReport> {
        while let Some(item) = self.next_item() {
            let Decoded { hash, event, bytes } = item?;
            self.position += 1;
            let position = self.position;
            let expected = self.expected;
            let prev = self.prev;
            let problem = |kind, seq, account: Option<&str>, expected: String, found: String| Problem {
                kind,
                seq,
                account: account.map(str::to_owned),
                position,
                checkpoint: None,
                expected,
                found,
            };
            if bytes.is_empty() {
                let p = problem(
                    "blank_line",
                    expected,
                    None,
                    format!("event {expected}"),
                    "a blank line".into(),
                );
                return Ok(self.report(Some(p), false));
            }
            if bytes.last() == Some(&b'\r') {
                let p = problem(
                    "line_ending",
                    expected,
                    None,
                    "a line of the event's stored bytes, ended by \\n alone".into(),
                    "a line ending in \\r\\n: the \\r is not part of the stored bytes (the export was rewritten with CRLF line endings)".into(),
                );
                return Ok(self.report(Some(p), false));
            }
            let e = match event {
                Ok(e) => e,
                Err(err) => {
                    let p = problem("undecodable", expected, None, "a valid event".into(), err);
                    return Ok(self.report(Some(p), false));
                }
            };
            let account = Some(e.account.as_str());
            if e.seq != expected && e.prev_hash == prev && expected > self.start.seq + 1 {
                // It links to the event before: it is event `expected`, its seq field edited.
                let p = problem(
                    "altered",
                    expected,
                    account,
                    format!("seq {expected}"),
                    format!(
                        "seq {} in an event that links to event {}: its seq field was changed",
                        e.seq,
                        expected - 1
                    ),
                );
                return Ok(self.report(Some(p), false));
            }
            if e.seq < expected {
                let p = match self.recent_hash(e.seq) {
                    Some(h) if h == hash => problem(
                        "duplicate",
                        e.seq,
                        account,
                        format!("event {expected}"),
                        if e.seq + 1 == expected {
                            format!("event {} again, the same bytes", e.seq)
                        } else {
                            format!("event {} again, the same bytes, in place of event {expected}", e.seq)
                        },
                    ),
                    Some(_) => problem(
                        "conflict",
                        e.seq,
                        account,
                        format!("event {expected}"),
                        format!("a second event {} whose bytes differ from the one verified", e.seq),
                    ),
                    // Event S was verified at its own place, too long ago to compare its bytes:
                    // what is wrong is here, where event E belongs.
                    None => problem(
                        "reordered",
                        expected,
                        account,
                        format!("event {expected}"),
                        format!(
                            "event {}, which was verified earlier at its own place (too long ago to compare its bytes)",
                            e.seq
                        ),
                    ),
                };
                return Ok(self.report(Some(p), false));
            }
            if e.seq > expected {
                // Is event `expected` further on (a reordering) or nowhere near (missing)?
                let mut found_at = None;
                for k in 0..LOOKAHEAD_EVENTS {
                    match self.peek(k) {
                        None => break,
                        Some(Ok(Decoded { event: Ok(n), .. })) if n.seq == expected => {
                            found_at = Some(position + 1 + k as u64);
                            break;
                        }
                        Some(_) => {}
                    }
                }
                let p = match found_at {
                    Some(at) => problem("reordered", expected, account, format!("event {expected}"), format!("event {} at this place; event {expected} comes later, at position {at}", e.seq)),
                    None => problem(
                        "missing",
                        expected,
                        account,
                        format!("event {expected}"),
                        format!(
                            "event {} at this place, and no event {expected} here or in the next {LOOKAHEAD_EVENTS} events of the source{}",
                            e.seq,
                            if e.seq == expected + 1 { String::new() } else { format!(" (events {expected}..{} are absent)", e.seq - 1) }
                        ),
                    ),
                };
                return Ok(self.report(Some(p), false));
            }
            if e.prev_hash != prev {
                // The link between event `expected - 1` and this one is broken: one of the two
                // changed. What vouches for this event's bytes: the next event's link, or a
                // signed checkpoint at this seq; for the one before: a checkpoint at its seq.
                let next = self.peek_link();
                let vouched_by_next = next.is_some_and(|(s, link)| s == e.seq + 1 && link == hash);
                let contradicted_by_next = next.is_some_and(|(s, link)| s == e.seq + 1 && link != hash);
                let signed_here = self.heads.get(&e.seq).copied();
                let signed_before = self.heads.get(&(e.seq - 1)).copied();
                // Last, the bytes themselves: the ledger writes only canonical encodings, so bytes
                // that do not re-encode to themselves were not written by it.
                let canonical = |b: &[u8]| {
                    decode(b).is_ok_and(|ev| {
                        ev.v != bindledger_events::SCHEMA_VERSION || bindledger_events::encode(&ev) == b
                    })
                };
                let before_forged = self.prev_bytes.as_ref().is_some_and(|b| !canonical(b));
                let this_forged = !canonical(&bytes);
                let this_intact = vouched_by_next || signed_here == Some(hash) || (before_forged && !this_forged);
                let this_changed = contradicted_by_next
                    || signed_here.is_some_and(|h| h != hash)
                    || signed_before == Some(prev)
                    || (this_forged && !before_forged);
                let p = if this_intact && !this_changed && expected > self.start.seq + 1 {
                    let p = Problem {
                        kind: "altered",
                        seq: e.seq - 1,
                        account: None,
                        position: position - 1,
                        checkpoint: None,
                        expected: format!("bytes hashing to {} (recorded by event {})", e.prev_hash, e.seq),
                        found: format!("bytes hashing to {prev}"),
                    };
                    // The head is the one before the altered event.
                    let mut r = self.report(Some(p), false);
                    r.events = r.events.saturating_sub(1);
                    r.head = self.recent.iter().rev().nth(1).map_or(self.start.hash, |(_, h)| *h);
                    return Ok(r);
                } else if expected == self.start.seq + 1 && self.start.seq > 0 && !this_changed {
                    // The first event after a trusted head links to another head: nothing
                    // says this event changed, so the trusted head is what does not match
                    // (a wrong --trusted-head, or a log rewritten before it).
                    Problem {
                        kind: "trusted_head",
                        seq: self.start.seq,
                        account: None,
                        position,
                        checkpoint: None,
                        expected: format!(
                            "event {} hashing to {} (the trusted head)",
                            self.start.seq, self.start.hash
                        ),
                        found: format!(
                            "event {} links to {}: the trusted head is not this log's event {}",
                            e.seq, e.prev_hash, self.start.seq
                        ),
                    }
                } else if this_changed || expected == self.start.seq + 1 {
                    problem(
                        "altered",
                        e.seq,
                        account,
                        format!("prev_hash {prev}"),
                        format!("prev_hash {}", e.prev_hash),
                    )
                } else {
                    problem(
                        "broken_link",
                        e.seq,
                        account,
                        format!("prev_hash {prev} (the hash of event {}'s bytes)", e.seq - 1),
                        format!("prev_hash {}; no later event or signed checkpoint tells whether event {} or event {} changed", e.prev_hash, e.seq - 1, e.seq),
                    )
                };
                return Ok(self.report(Some(p), false));
            }
            let wanted = match self.accounts.get(&e.account).copied() {
                Some(last) if e.account_seq != last + 1 => Some(format!("account_seq {}", last + 1)),
                // From the genesis, an account's first event has account_seq 1; after a trusted
                // head, the first one seen sets where the account is.
                None if self.start.seq == 0 && e.account_seq != 1 => {
                    Some("account_seq 1 (the account's first event)".to_owned())
                }
                _ => None,
            };
            if let Some(wanted) = wanted {
                // An edit of this event's account or account_seq shows here first: if the next
                // event does not link to these bytes, or a signed checkpoint at this seq does
                // not match them, they were altered.
                let next = self.peek_link().filter(|(s, _)| *s == e.seq + 1);
                let p = match (next, self.heads.get(&e.seq).copied()) {
                    (Some((s, link)), _) if link != hash => problem(
                        "altered",
                        e.seq,
                        account,
                        format!("bytes hashing to {link} (recorded by event {s})"),
                        format!("bytes hashing to {hash} ({})", wanted_found(&wanted, e.account_seq)),
                    ),
                    (_, Some(signed)) if signed != hash => problem(
                        "altered",
                        e.seq,
                        account,
                        format!("bytes hashing to {signed} (signed checkpoint)"),
                        format!("bytes hashing to {hash} ({})", wanted_found(&wanted, e.account_seq)),
                    ),
                    _ => problem(
                        "account_sequence",
                        e.seq,
                        account,
                        wanted,
                        format!("account_seq {}", e.account_seq),
                    ),
                };
                return Ok(self.report(Some(p), false));
            }
            if let Some(signed) = self.heads.get(&e.seq).copied() {
                if signed != hash {
                    let p = problem(
                        "checkpoint_mismatch",
                        e.seq,
                        account,
                        format!("hash {signed} (signed checkpoint)"),
                        format!("hash {hash}: the log was rewritten at or before this event"),
                    );
                    return Ok(self.report(Some(p), false));
                }
                self.checkpoints_checked += 1;
                self.checkpoint_seq = Some(e.seq);
            }
            self.accounts.insert(e.account.clone(), e.account_seq);
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back((e.seq, hash));
            self.prev_bytes = Some(bytes);
            self.prev = hash;
            self.expected += 1;
            if !visit(&e) {
                return Ok(self.report(None, true));
            }
        }
        Ok(self.report(None, false))
    }
}

pub use bindledger::domain::alerts::backtest::{latest, Backtest, Backtester};

/// The audit of a whole cluster of shards (`bindledger-replay verify-cluster`): every shard's
/// chain from its events topic, in parallel, each held to the signed cluster checkpoints and to
/// its own signed checkpoints, and every event checked to belong to its shard.
#[cfg(feature = "kafka")]
pub mod cluster {
    use super::{audit_from, AuditReport, Problem, Source, Start};
    use bindledger::adapters::kafka::checkpoints::read_published;
    use bindledger::adapters::kafka::cluster::read_cluster;
    use bindledger::config::KafkaConfig;
    use bindledger::domain::shard::ShardMap;
    use bindledger_events::Hash;
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// One shard's audit.
    #[derive(Debug, Serialize)]
    pub struct ShardReport {
        pub shard: String,
        pub topic: String,
        /// The shard's checkpoint key, as the newest cluster checkpoint naming it vouches for
        /// it (`None`: no cluster checkpoint names the shard, or none was checked).
        pub public_key: Option<String>,
        /// Heads this audit held the chain to: from the cluster checkpoints, and from the
        /// shard's own checkpoints of its current epoch.
        pub heads_from_cluster: usize,
        pub heads_from_shard: usize,
        pub report: AuditReport,
    }

    /// The whole audit. `problem` is a cluster-level one (a cluster checkpoint that does not
    /// verify, a shard it names that the map lost); each shard's own is in its report.
    #[derive(Debug, Serialize)]
    pub struct ClusterReport {
        pub map_version: u64,
        pub cluster_checkpoints: usize,
        pub cluster_checkpoints_checked: bool,
        pub problem: Option<String>,
        pub shards: Vec<ShardReport>,
    }

    impl ClusterReport {
        pub fn ok(&self) -> bool {
            self.problem.is_none() && self.shards.iter().all(|s| s.report.ok())
        }
    }

    /// Audits the cluster whose shard map is on `cluster_topic`. With `cluster_key` (hex, from a
    /// channel the auditor trusts) the signed cluster checkpoints are checked and each shard's
    /// chain is held to them; without it they are only counted.
    pub fn verify(
        brokers: &str,
        properties: &[(String, String)],
        cluster_topic: &str,
        cluster_key: Option<&str>,
    ) -> super::Result<ClusterReport> {
        let kafka = KafkaConfig {
            brokers: brokers.to_owned(),
            properties: properties.iter().cloned().collect(),
            ..KafkaConfig::default()
        };
        let (map, checkpoints) = read_cluster(&kafka, cluster_topic)?;
        let map: std::sync::Arc<ShardMap> =
            map.ok_or_else(|| super::SourceError::Format(format!("no shard map on the topic {cluster_topic}")))?;
        let mut report = ClusterReport {
            map_version: map.version,
            cluster_checkpoints: checkpoints.len(),
            cluster_checkpoints_checked: cluster_key.is_some(),
            problem: None,
            shards: Vec::new(),
        };
        // shard -> (its key, heads the cluster signed, seqs two signed heads disagree on)
        #[allow(clippy::type_complexity)]
        let mut vouched: BTreeMap<String, (String, BTreeMap<u64, Hash>, Vec<u64>)> = BTreeMap::new();
        if let Some(key) = cluster_key {
            for (i, cp) in checkpoints.iter().enumerate() {
                if let Err((shard, why)) = cp.verify(key) {
                    report.problem = Some(match shard {
                        None => format!("cluster checkpoint {} (map version {}): {why}", i + 1, cp.map_version),
                        Some(s) => format!(
                            "cluster checkpoint {} (map version {}): shard {s}'s checkpoint: {why}",
                            i + 1,
                            cp.map_version
                        ),
                    });
                    return Ok(report);
                }
                for (id, head) in &cp.shards {
                    if !map.shards.contains_key(id) {
                        report.problem = Some(format!(
                            "cluster checkpoint {} names shard {id}, which the shard map no longer holds: its history was dropped",
                            i + 1
                        ));
                        return Ok(report);
                    }
                    let entry = vouched.entry(id.clone()).or_default();
                    entry.0 = head.public_key.clone();
                    add_head(&mut entry.1, &mut entry.2, head.seq, head.head);
                }
            }
        }
        let shards: Vec<(String, String, String)> = map
            .shards
            .iter()
            .map(|(id, e)| (id.clone(), e.events_topic.clone(), e.checkpoints_topic.clone()))
            .collect();
        let results: Vec<super::Result<ShardReport>> = std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .iter()
                .map(|(id, events_topic, checkpoints_topic)| {
                    let (kafka, map, vouched) = (&kafka, &map, &vouched);
                    scope.spawn(move || {
                        let (public_key, cluster_heads, mut conflicts) = vouched.get(id).cloned().unwrap_or_default();
                        let public_key = (!public_key.is_empty()).then_some(public_key);
                        let mut heads = cluster_heads.clone();
                        let mut from_shard = 0;
                        if let Some(key) = &public_key {
                            // The shard's own checkpoints of its newest epoch: always over its
                            // chain (a fenced primary's older-epoch ones may not be).
                            let (published, fenced) = read_published(kafka, checkpoints_topic)?;
                            let newest = published.iter().map(|p| p.epoch).max().unwrap_or(0).max(fenced);
                            for p in published.iter().filter(|p| p.epoch == newest) {
                                if p.checkpoint.verify(key).is_ok() {
                                    add_head(&mut heads, &mut conflicts, p.checkpoint.seq, p.checkpoint.head);
                                    from_shard += 1;
                                } else {
                                    return Ok(ShardReport {
                                        shard: id.clone(),
                                        topic: events_topic.clone(),
                                        public_key: public_key.clone(),
                                        heads_from_cluster: cluster_heads.len(),
                                        heads_from_shard: from_shard,
                                        report: signature_problem(p.checkpoint.seq),
                                    });
                                }
                            }
                        }
                        let source = Source::Kafka {
                            brokers: kafka.brokers.clone(),
                            topic: events_topic.clone(),
                            properties: properties.to_vec(),
                        };
                        let mut foreign: Option<(u64, String)> = None;
                        let mut audit = audit_from(source.decoded(), Start::default(), &heads, |e| {
                            if map.owner(&e.account) != id {
                                foreign = Some((e.seq, e.account.clone()));
                                return false;
                            }
                            true
                        })?;
                        if let (true, Some(&seq)) = (audit.ok(), conflicts.first()) {
                            // The chain matched one of them: the other is a signed lie.
                            audit.problem = Some(Problem {
                                kind: "checkpoint_mismatch",
                                seq,
                                account: None,
                                position: 0,
                                checkpoint: None,
                                expected: "one hash for this event in every signed checkpoint".into(),
                                found: "signed checkpoints that name different hashes for it".into(),
                            });
                        }
                        if let Some((seq, account)) = foreign {
                            audit.stopped_early = false;
                            audit.problem = Some(Problem {
                                kind: "wrong_shard",
                                seq,
                                account: Some(account),
                                position: seq,
                                checkpoint: None,
                                expected: format!("an account of shard {id}"),
                                found: "an account the shard map gives another shard".into(),
                            });
                        }
                        Ok(ShardReport {
                            shard: id.clone(),
                            topic: events_topic.clone(),
                            public_key,
                            heads_from_cluster: cluster_heads.len(),
                            heads_from_shard: from_shard,
                            report: audit,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a shard's audit thread"))
                .collect()
        });
        for r in results {
            report.shards.push(r?);
        }
        Ok(report)
    }

    /// Adds a signed head; a second, different hash for one event is a conflict (only one can
    /// be the chain's), kept for the report.
    fn add_head(heads: &mut BTreeMap<u64, Hash>, conflicts: &mut Vec<u64>, seq: u64, hash: Hash) {
        match heads.get(&seq) {
            Some(h) if *h != hash => conflicts.push(seq),
            Some(_) => {}
            None => {
                heads.insert(seq, hash);
            }
        }
    }

    fn signature_problem(seq: u64) -> AuditReport {
        AuditReport {
            events: 0,
            first_seq: 1,
            head: bindledger_events::GENESIS_HASH,
            checkpoints_checked: 0,
            checkpoint_seq: None,
            stopped_early: false,
            problem: Some(Problem {
                kind: "checkpoint_signature",
                seq,
                account: None,
                position: 0,
                checkpoint: None,
                expected: "a checkpoint signed with the key the cluster checkpoint names".into(),
                found: "a checkpoint on the shard's topic that does not verify".into(),
            }),
        }
    }
}
