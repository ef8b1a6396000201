//! The audit tool's library: where a log comes from ([`Source`]), and an auditor's check of it
//! ([`audit`]) that names the first problem precisely.

use bindledger_events::{decode, hash_bytes, Event, Hash, GENESIS_HASH};
use serde::Serialize;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, String>;

/// An event's stored bytes as a source yields them: from a data directory, a slice of the sled
/// page they were read with (no copy); from the other sources, a copy of what was read.
pub type Stored = sled::IVec;

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
    Kafka { brokers: String, topic: String },
}

/// Events per HTTP feed request.
const FEED_PAGE: u64 = 100_000;

impl Source {
    /// How many events the source holds, when it can tell cheaply (a data directory).
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            Source::DataDir(dir) => {
                bindledger::store::require_log(dir).ok()?;
                bindledger::store::Store::open_for_scan(dir).ok()?.head().ok()?.map(|(seq, _)| seq)
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
        Ok(Box::new(Progress { inner: self.read()?, total, n: 0, started: std::time::Instant::now(), shown: std::time::Instant::now() }))
    }

    /// Every event's stored bytes, in the source's order.
    pub fn read(&self) -> Result<Box<dyn Iterator<Item = Result<Stored>>>> {
        match self {
            Source::DataDir(dir) => {
                let scan = bindledger::store::scan_dir(dir, 1).map_err(|e| e.to_string())?;
                Ok(Box::new(scan.map(|r| r.map(|(_, b)| b).map_err(|e| e.to_string()))))
            }
            Source::Export(path) => {
                let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
                    Box::new(std::io::BufReader::new(std::io::stdin()))
                } else {
                    Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?))
                };
                Ok(Box::new(reader.split(b'\n').filter(|l| !matches!(l, Ok(l) if l.is_empty())).map(|l| l.map(Stored::from).map_err(|e| e.to_string()))))
            }
            Source::Http { url, token } => {
                let events = http_feed(url, token)?;
                Ok(Box::new(events.into_iter().map(|b| Ok(Stored::from(b)))))
            }
            Source::Kafka { brokers, topic } => {
                let events = kafka_topic(brokers, topic)?;
                Ok(Box::new(events.into_iter().map(|b| Ok(Stored::from(b)))))
            }
        }
    }

    /// Every event, decoded, in the source's order (stops at the first undecodable one). The
    /// whole log in memory: for tests and small logs; the commands use [`Source::for_each`].
    pub fn events(&self) -> Result<Vec<Event>> {
        self.decoded().map(|r| r.and_then(|d| d.event)).collect()
    }

    /// Hands every event to `f`, in the source's order, until `f` returns false, holding only
    /// the pipeline's bounded batches in memory; an undecodable event is an error. Returns the
    /// number of events handed over.
    pub fn for_each(&self, mut f: impl FnMut(Event) -> bool) -> Result<u64> {
        let mut n = 0;
        for item in self.decoded() {
            n += 1;
            if !f(item?.event.map_err(|e| format!("event {n} of the source: {e}"))?) {
                break;
            }
        }
        Ok(n)
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
                let eta = self.total.filter(|t| *t > self.n).map(|t| format!(", ETA {:.0} s", (t - self.n) as f64 / rate)).unwrap_or_default();
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
        let event = decode(&bytes).map_err(|e| e.to_string());
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
        use std::sync::mpsc::sync_channel;
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (in_tx, in_rx) = sync_channel::<Vec<Result<Stored>>>(PIPELINE_DEPTH);
            let (out_tx, out_rx) = sync_channel::<Vec<Result<Decoded>>>(PIPELINE_DEPTH);
            threads.push(std::thread::spawn(move || {
                for batch in in_rx {
                    let done: Vec<Result<Decoded>> = batch.into_iter().map(|r| r.map(Decoded::new)).collect();
                    if out_tx.send(done).is_err() {
                        return;
                    }
                }
            }));
            inputs.push(in_tx);
            outputs.push(out_rx);
        }
        threads.push(std::thread::spawn(move || {
            let mut items = source.read_with_progress().unwrap_or_else(|e| Box::new(std::iter::once(Err(e))));
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
        Pipeline { outputs, next_worker: 0, batch: Vec::new().into_iter(), threads, done: false }
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

fn http_feed(url: &str, token: &str) -> Result<Vec<Vec<u8>>> {
    let addr = bindledger::client::parse_http_addr(url)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut client = bindledger::client::Client::new(addr, Some(token.to_owned()));
        let mut out = Vec::new();
        loop {
            let from = out.len() as u64 + 1;
            let (status, body) = client
                .send(hyper::Method::GET, &format!("/v1/events?from={from}&limit={FEED_PAGE}"), None)
                .await
                .map_err(|e| format!("reading {url}/v1/events: {e}"))?;
            if !status.is_success() {
                return Err(format!("{url}/v1/events answered {status}: {}", String::from_utf8_lossy(&body)));
            }
            let before = out.len();
            out.extend(body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
            if ((out.len() - before) as u64) < FEED_PAGE {
                return Ok(out);
            }
        }
    })
}

fn kafka_topic(brokers: &str, topic: &str) -> Result<Vec<Vec<u8>>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bindledger-replay-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let timeout = std::time::Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    if partitions == 0 {
        return Err(format!("topic {topic} has no partitions"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    // Read until nothing new arrives for a while (a broker's high watermark is not trusted).
    let mut by_seq: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < std::time::Duration::from_secs(2) {
        match consumer.poll(std::time::Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                let seq = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "seq").and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok()))
                    .ok_or_else(|| format!("{topic} partition {} offset {} has no seq header", m.partition(), m.offset()))?;
                by_seq.push((seq, m.payload().unwrap_or_default().to_vec()));
            }
        }
    }
    // Merge the partitions on the global sequence (a stable sort keeps duplicates visible).
    by_seq.sort_by_key(|(seq, _)| *seq);
    Ok(by_seq.into_iter().map(|(_, b)| b).collect())
}

/// The next event's seq and recorded link, without taking it.
fn peek_seq<I: Iterator<Item = Result<Decoded>>>(events: &mut std::iter::Peekable<I>) -> Option<(u64, Hash)> {
    match events.peek() {
        Some(Ok(Decoded { event: Ok(n), .. })) => Some((n.seq, n.prev_hash)),
        _ => None,
    }
}

/// The first problem in a log, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `altered`, `missing`, `duplicate`, `reordered`, `undecodable`, `account_sequence`.
    pub kind: &'static str,
    /// The global sequence where it is.
    pub seq: u64,
    /// The event's account, when known.
    pub account: Option<String>,
    /// Position in the source (1 = its first event).
    pub position: u64,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Events verified: all of them, or those before the problem.
    pub events: u64,
    /// Hash of the last verified event.
    pub head: Hash,
    pub problem: Option<Problem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks a log as an auditor does: global sequence continuity, each event's `prev_hash`
/// against the hash of the stored bytes before it, per-account sequence continuity, and that
/// every event decodes. Stops at the first problem and tells what it is, looking one event
/// ahead to tell an altered event from the one after it, and a missing event from two
/// swapped ones.
pub fn audit<B: Into<Stored>>(events: impl Iterator<Item = Result<B>>) -> Result<AuditReport> {
    audit_against(events, &std::collections::BTreeMap::new())
}

/// Signed checkpoints an auditor trusts: each signature checked with `public_key` (hex).
/// Returns the heads they vouch for, by seq, or the first that does not verify.
pub fn trusted_heads(checkpoints: &[bindledger::checkpoint::SignedCheckpoint], public_key: &str) -> std::result::Result<std::collections::BTreeMap<u64, Hash>, Problem> {
    let mut heads = std::collections::BTreeMap::new();
    for (i, cp) in checkpoints.iter().enumerate() {
        if let Err(why) = cp.verify(public_key) {
            return Err(Problem {
                kind: "checkpoint_signature",
                seq: cp.seq,
                account: None,
                position: i as u64 + 1,
                expected: "a checkpoint signed with the trusted key".into(),
                found: why,
            });
        }
        heads.insert(cp.seq, cp.head);
    }
    Ok(heads)
}

/// Reads signed checkpoints: an NDJSON file, or a running ledger's `GET /v1/checkpoints`.
pub fn read_checkpoints(from: &str, token: Option<&str>) -> Result<Vec<bindledger::checkpoint::SignedCheckpoint>> {
    let text = if from.starts_with("http://") {
        let addr = bindledger::client::parse_http_addr(from)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let (status, body) = rt
            .block_on(bindledger::client::Client::new(addr, token.map(str::to_owned)).send(hyper::Method::GET, "/v1/checkpoints", None))
            .map_err(|e| format!("reading {from}/v1/checkpoints: {e}"))?;
        if !status.is_success() {
            return Err(format!("{from}/v1/checkpoints answered {status}"));
        }
        String::from_utf8_lossy(&body).into_owned()
    } else {
        std::fs::read_to_string(from).map_err(|e| format!("reading {from}: {e}"))?
    };
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(|e| format!("a checkpoint line: {e}"))).collect()
}

/// [`audit`], also checking the log against signed heads: the event at each checkpoint's seq
/// must hash to its head, and the log must reach the last checkpoint. A log rewritten after a
/// checkpoint (even with its chain recomputed) fails here.
pub fn audit_against<B: Into<Stored>>(events: impl Iterator<Item = Result<B>>, heads: &std::collections::BTreeMap<u64, Hash>) -> Result<AuditReport> {
    audit_decoded(events.map(|r| r.map(Decoded::new)), heads, |_| {})
}

/// [`audit_against`] over events already hashed and decoded (by a [`Pipeline`]), handing each
/// event that passed every check to `visit`, in order: one pass verifies a log and rebuilds
/// whatever `visit` folds.
pub fn audit_decoded(events: impl Iterator<Item = Result<Decoded>>, heads: &std::collections::BTreeMap<u64, Hash>, visit: impl FnMut(&Event)) -> Result<AuditReport> {
    let mut report = audit_inner(events, heads, visit)?;
    if report.problem.is_none() {
        if let Some((&seq, head)) = heads.iter().next_back().filter(|(seq, _)| **seq > report.events) {
            report.problem = Some(Problem {
                kind: "truncated",
                seq,
                account: None,
                position: report.events + 1,
                expected: format!("event {seq} with hash {head} (signed checkpoint)"),
                found: format!("the log ends at event {}", report.events),
            });
        }
    }
    Ok(report)
}

fn audit_inner(events: impl Iterator<Item = Result<Decoded>>, heads: &std::collections::BTreeMap<u64, Hash>, mut visit: impl FnMut(&Event)) -> Result<AuditReport> {
    let mut events = events.peekable();
    let mut expected = 1u64;
    let mut prev = GENESIS_HASH;
    // The hash before `prev`: the head when the event before turns out altered.
    let mut before_prev = GENESIS_HASH;
    let mut accounts: HashMap<String, u64> = HashMap::new();
    let mut position = 0u64;
    let fail = |p: Problem, n: u64, head: Hash| Ok(AuditReport { events: n, head, problem: Some(p) });
    while let Some(item) = events.next() {
        let Decoded { hash, event, .. } = item?;
        position += 1;
        let e = match event {
            Ok(e) => e,
            Err(err) => {
                let p = Problem { kind: "undecodable", seq: expected, account: None, position, expected: "a valid event".into(), found: err };
                return fail(p, expected - 1, prev);
            }
        };
        if e.seq < expected {
            let kind = if e.seq + 1 == expected && hash == prev { "duplicate" } else { "reordered" };
            let p = Problem {
                kind,
                seq: e.seq,
                account: Some(e.account.clone()),
                position,
                expected: format!("event {expected}"),
                found: format!("event {} again{}", e.seq, if kind == "duplicate" { ", the same bytes" } else { "" }),
            };
            return fail(p, expected - 1, prev);
        }
        if e.seq > expected {
            let next = peek_seq(&mut events);
            let (kind, found) = if next.map(|(s, _)| s) == Some(expected) {
                ("reordered", format!("event {} before event {expected}", e.seq))
            } else {
                ("missing", format!("event {} (events {expected}..{} are not there)", e.seq, e.seq - 1))
            };
            let p = Problem { kind, seq: expected, account: Some(e.account.clone()), position, expected: format!("event {expected}"), found };
            return fail(p, expected - 1, prev);
        }
        if e.prev_hash != prev {
            // Either the event before was altered (its bytes no longer hash to what this one
            // recorded), or this one was (its recorded link changed): the next link tells.
            let next = peek_seq(&mut events);
            let this_intact = next.is_some_and(|(s, link)| s == e.seq + 1 && link == hash);
            let previous_altered = this_intact || next.is_none() && expected > 1;
            let p = if previous_altered {
                Problem {
                    kind: "altered",
                    seq: e.seq - 1,
                    account: None,
                    position: position - 1,
                    expected: format!("bytes hashing to {} (recorded by event {})", e.prev_hash, e.seq),
                    found: format!("bytes hashing to {prev}"),
                }
            } else {
                Problem {
                    kind: "altered",
                    seq: e.seq,
                    account: Some(e.account.clone()),
                    position,
                    expected: format!("prev_hash {prev}"),
                    found: format!("prev_hash {}", e.prev_hash),
                }
            };
            if previous_altered {
                return fail(p, expected - 2, before_prev);
            }
            return fail(p, expected - 1, prev);
        }
        let last = accounts.get(&e.account).copied().unwrap_or(0);
        if e.account_seq != last + 1 {
            // An edit of this event's account or account_seq shows here first: if the next
            // event does not link to these bytes, they were altered.
            if let Some((s, link)) = peek_seq(&mut events) {
                if s == e.seq + 1 && link != hash {
                    let p = Problem {
                        kind: "altered",
                        seq: e.seq,
                        account: Some(e.account.clone()),
                        position,
                        expected: format!("bytes hashing to {link} (recorded by event {s})"),
                        found: format!("bytes hashing to {hash}"),
                    };
                    return fail(p, expected - 1, prev);
                }
            }
            let p = Problem {
                kind: "account_sequence",
                seq: e.seq,
                account: Some(e.account.clone()),
                position,
                expected: format!("account_seq {}", last + 1),
                found: format!("account_seq {}", e.account_seq),
            };
            return fail(p, expected - 1, prev);
        }
        if let Some(signed) = heads.get(&e.seq).filter(|h| **h != hash) {
            let p = Problem {
                kind: "checkpoint_mismatch",
                seq: e.seq,
                account: Some(e.account.clone()),
                position,
                expected: format!("hash {signed} (signed checkpoint)"),
                found: format!("hash {hash}: the log was rewritten at or before this event"),
            };
            return fail(p, expected - 1, prev);
        }
        match accounts.get_mut(&e.account) {
            Some(seq) => *seq = e.account_seq,
            None => {
                accounts.insert(e.account.clone(), e.account_seq);
            }
        }
        visit(&e);
        before_prev = prev;
        prev = hash;
        expected += 1;
    }
    Ok(AuditReport { events: expected - 1, head: prev, problem: None })
}

/// What a candidate rules file would have raised over a log, against what was raised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backtest {
    pub events: u64,
    /// Alerts (latest revision) the candidate raises and the actual run did not.
    pub added: Vec<bindledger::alerts::Alert>,
    /// Alerts the actual run raised and the candidate does not.
    pub removed: Vec<bindledger::alerts::Alert>,
    /// Same id, different contents: (actual, candidate).
    pub changed: Vec<(bindledger::alerts::Alert, bindledger::alerts::Alert)>,
    pub unchanged: u64,
}

/// Each alert at its latest revision, by id.
pub fn latest(changes: impl IntoIterator<Item = bindledger::alerts::AlertChange>) -> std::collections::BTreeMap<String, bindledger::alerts::Alert> {
    changes.into_iter().map(|c| (c.alert.id.clone(), c.alert)).collect()
}

/// A candidate rules file run over a log, event by event, beside the rules the ledger runs
/// when the source holds no stored alerts.
pub struct Backtester {
    candidate: bindledger::alerts::engine::Engine,
    proposed: std::collections::BTreeMap<String, bindledger::alerts::Alert>,
    current: Option<(bindledger::alerts::engine::Engine, std::collections::BTreeMap<String, bindledger::alerts::Alert>)>,
    events: u64,
}

impl Backtester {
    /// `current`: the rules to compare with, when the alerts actually raised are not stored.
    pub fn new(candidate: bindledger::alerts::RuleSet, current: Option<bindledger::alerts::RuleSet>) -> Backtester {
        use bindledger::alerts::engine::Engine;
        Backtester { candidate: Engine::new(candidate), proposed: Default::default(), current: current.map(|r| (Engine::new(r), Default::default())), events: 0 }
    }

    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        self.proposed.extend(latest(self.candidate.apply(e)));
        if let Some((engine, raised)) = &mut self.current {
            raised.extend(latest(engine.apply(e)));
        }
    }

    /// Compares the candidate's alerts with `actual` (the stored ones), or with the current
    /// rules' when none were given (by id: an alert's id is its rule and the event that opened
    /// it, so the same alert under both rule sets has the same id).
    pub fn finish(self, actual: Option<std::collections::BTreeMap<String, bindledger::alerts::Alert>>) -> Backtest {
        let actual = actual.or(self.current.map(|(_, raised)| raised)).unwrap_or_default();
        let mut out = Backtest { events: self.events, ..Backtest::default() };
        for (id, a) in &self.proposed {
            match actual.get(id) {
                None => out.added.push(a.clone()),
                Some(b) if b != a => out.changed.push((b.clone(), a.clone())),
                Some(_) => out.unchanged += 1,
            }
        }
        out.removed = actual.iter().filter(|(id, _)| !self.proposed.contains_key(*id)).map(|(_, a)| a.clone()).collect();
        out
    }
}
