//! A fenced primary's way back ([`super::terms`]). When a node that a promotion fenced starts
//! again, its ledger opens, says it was fenced and is closed again; then:
//!
//! 1. It reads the events topic from where its relay last verified each partition, up to the
//!    newer epoch's fence there, and finds how far the chain holds its own events: its saved
//!    position, then each next event it finds there with the same hash.
//! 2. Its events past that (none acknowledged in replicated mode: an acknowledgement waits for
//!    the event to land before any fence) go to a quarantine file, one stored event per line
//!    (their idempotency keys inside), never dropped silently.
//! 3. Its data directory is rebuilt with the log cut back to the chain (its signed checkpoints
//!    up to there and its key files kept; everything derived is rebuilt on open), and the old
//!    directory is kept beside it, renamed.
//! 4. It starts as a replica, following the topic from where its log ends, and stays one across
//!    restarts until it is promoted.

use std::path::{Path, PathBuf};

use super::client::{header_number, header_text, read_partitions, ReadFrom};
use super::terms::Terms;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ledger::checkpoint::CheckpointStore;
use crate::ledger::store::{retry_in_use, Store};

/// What a rejoin did.
#[derive(Debug, Clone)]
pub struct Rejoined {
    /// The chain's last event of this node's log, where the log now ends.
    pub head: u64,
    /// Events moved to the quarantine file (and the file, when there were any).
    pub quarantined: u64,
    pub file: Option<PathBuf>,
    /// The data directory as it was, kept.
    pub kept: PathBuf,
}

/// Before a node opens its ledger: a rejoin that stopped after the old directory was moved
/// aside is finished (the new one is complete).
pub fn finish_interrupted(dir: &Path) -> Result<()> {
    let building = building_dir(dir);
    if !dir.exists() && building.join(COMPLETE).exists() {
        std::fs::rename(&building, dir).map_err(|e| Error::io_caused("finishing a rejoin", e))?;
    }
    Ok(())
}

const COMPLETE: &str = "rejoin-complete";

fn building_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".rejoining");
    dir.with_file_name(name)
}

/// Rejoins a primary a promotion fenced (its ledger closed): see the module's notes.
pub fn rejoin(config: &Config) -> Result<Rejoined> {
    let topic = &config.kafka.topic;
    let dir = &config.data_dir;
    let old = retry_in_use(|| Store::open(dir))?;
    let fenced = old
        .fenced_by()?
        .ok_or_else(|| Error::io("rejoining: this node was not fenced"))?;
    let (own, _) = old.epoch()?;
    let (len, _) = old.head()?.unwrap_or((0, bindledger_events::GENESIS_HASH));
    let position = old.relay_position(topic)?.min(len);
    let verified = old.relay_verified(topic)?;
    let starts: Option<Vec<i64>> = verified.as_ref().map(|v| v.iter().map(|(o, _)| *o).collect());
    // This node's events on the topic before a newer epoch's fence in their partition.
    let mut on_topic = std::collections::BTreeSet::new();
    let mut past_fence: Vec<bool> = Vec::new();
    let from = starts.as_deref().map_or(ReadFrom::Beginning, ReadFrom::Offsets);
    read_partitions(&config.kafka, topic, from, |p, m| {
        if past_fence.len() <= p {
            past_fence.resize(p + 1, false);
        }
        let number = |name: &str| header_number(m, name);
        if number("fence").is_some_and(|f| f > own) {
            past_fence[p] = true;
        }
        if past_fence[p] || number("epoch").unwrap_or(0) != own {
            return Ok(());
        }
        if let Some(seq) = number("seq").filter(|s| *s > position && *s <= len) {
            let ours = old.event_bytes(seq)?;
            if ours.is_some_and(|b| Some(bindledger_events::hash_bytes(&b).to_hex()) == header_text(m, "hash")) {
                on_topic.insert(seq);
            }
        }
        Ok(())
    })
    .map_err(|e| Error::io(format!("rejoining needs the events topic: {e}")))?;
    let mut head = position;
    while on_topic.contains(&(head + 1)) {
        head += 1;
    }
    // The new directory: the log up to `head`, the checkpoints up to it, the key files.
    let building = building_dir(dir);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| Error::io_caused(format!("{}", building.display()), e))?;
    }
    std::fs::create_dir_all(&building).map_err(|e| Error::io_caused(format!("{}", building.display()), e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(e.to_string()))? {
        let entry = entry.map_err(|e| Error::io(e.to_string()))?;
        let name = entry.file_name();
        // The key tables are derived from the log, rebuilt on open; the head record names
        // the old log's acknowledged end.
        let derived = name.to_string_lossy().ends_with(".keys") || entry.path() == crate::ledger::head::path(dir);
        if entry.file_type().map_err(|e| Error::io(e.to_string()))?.is_file() && !derived {
            std::fs::copy(entry.path(), building.join(&name)).map_err(|e| Error::io(e.to_string()))?;
        }
    }
    let quarantined = len - head;
    let file =
        (quarantined > 0).then(|| building.join(format!("quarantine-epoch-{own}-events-{}-{len}.jsonl", head + 1)));
    {
        let new = Store::open(&building)?;
        old.copy_secret_check_to(&new)?;
        let mut writer = super::restore::LogWriter::new(&new);
        let mut quarantine = Vec::new();
        for r in old.scan_events(1) {
            let (seq, bytes) = r?;
            if seq <= head {
                writer.push(seq, &bytes)?;
            } else {
                quarantine.extend_from_slice(&bytes);
                quarantine.push(b'\n');
            }
        }
        writer.finish()?;
        if let Some(file) = &file {
            write_synced(file, &quarantine)?;
        }
        let cps = CheckpointStore::new(new.checkpoints_tree());
        for cp in CheckpointStore::new(old.checkpoints_tree()).all()? {
            if cp.seq <= head {
                cps.put(&cp)?;
            }
        }
        // It follows the topic from the offsets its relay verified, with the rules as they
        // stood there: its own epoch's fence (if any) behind it.
        if let Some(starts) = &starts {
            new.set_replica_offsets(topic, starts)?;
            let terms = Terms {
                fenced: vec![own; starts.len()],
                chain: own,
                highest: fenced,
                ..Terms::default()
            };
            new.set_replica_terms(topic, &terms.to_bytes())?;
        }
        new.set_epoch(own, "")?;
        new.set_starts_as_replica(true)?;
        new.flush()?;
    }
    drop(old);
    write_synced(&building.join(COMPLETE), b"")?;
    let kept = {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".fenced-epoch-{own}"));
        dir.with_file_name(name)
    };
    std::fs::rename(dir, &kept).map_err(|e| Error::io_caused(format!("moving {} aside", dir.display()), e))?;
    std::fs::rename(&building, dir).map_err(|e| Error::io_caused(format!("{}", dir.display()), e))?;
    let file = file.map(|f| dir.join(f.file_name().expect("a file name")));
    tracing::warn!(
        head,
        quarantined,
        file = ?file,
        kept = %kept.display(),
        "rejoined as a replica: this node's events past the chain are quarantined"
    );
    Ok(Rejoined {
        head,
        quarantined,
        file,
        kept,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io_caused(format!("{}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io_caused(format!("{}", path.display()), e))
}

/// How long a start waits to learn from the topic whether a promotion fenced this node while
/// it was down (a broker that is away must not hold the start: the relay finds out later).
const NEWER_EPOCH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Folds one message's epoch (and the URL it names, if it is a fence that names one) into the
/// newest epoch past `own` seen so far and its URL: the URL of any message of that epoch, in
/// whatever order the partitions' messages arrive.
fn note_epoch(newest: &mut Option<(u64, Option<String>)>, own: u64, epoch: u64, url: Option<String>) {
    let seen = newest.as_ref().map(|(e, _)| *e);
    if epoch > own && seen.is_none_or(|e| epoch > e) {
        *newest = Some((epoch, url));
    } else if let Some((e, found @ None)) = newest {
        if epoch == *e {
            *found = url;
        }
    }
}

/// The newest epoch on the events topic's last messages, with the URL its fences named (any
/// partition's: another's last message may be an event of that epoch, which names none), when
/// it is newer than `own`: a promotion fenced this node. `None` when it is not, or when the topic
/// cannot be read within [`NEWER_EPOCH_WAIT`].
pub fn newer_epoch(kafka: &crate::config::KafkaConfig, own: u64) -> Option<(u64, Option<String>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let kafka = kafka.clone();
    std::thread::Builder::new()
        .name("fence check".into())
        .spawn(move || {
            use crate::client::{header_number, header_text, read_tails};
            let mut newest: Option<(u64, Option<String>)> = None;
            let read = read_tails(&kafka, &kafka.topic, |_, m| {
                let epoch = header_number(m, "fence")
                    .or_else(|| header_number(m, "epoch"))
                    .unwrap_or(0);
                // The URL is in the promotion's fences; a partition whose last message is an
                // event of the new primary (same epoch, no URL) must not hide it.
                note_epoch(&mut newest, own, epoch, header_text(m, "url"));
                Ok(())
            });
            let _ = tx.send(read.ok().and(newest));
        })
        .ok()?;
    rx.recv_timeout(NEWER_EPOCH_WAIT).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::note_epoch;

    /// Regression: a fenced primary's `421` named no successor when the first of the topic's
    /// last messages it read was an event of the new primary (its epoch, no URL) rather than
    /// one of the promotion's fences.
    #[test]
    fn the_successor_is_found_in_any_order_of_the_partitions() {
        let url = || Some("http://next:8080".to_owned());
        let fold = |messages: &[(u64, Option<String>)]| {
            let mut newest = None;
            for (epoch, u) in messages {
                note_epoch(&mut newest, 1, *epoch, u.clone());
            }
            newest
        };
        let want = Some((2, url()));
        assert_eq!(fold(&[(2, None), (2, url())]), want, "an event first, then a fence");
        assert_eq!(fold(&[(2, url()), (2, None)]), want, "a fence first, then an event");
        assert_eq!(fold(&[(1, None), (2, None), (0, url()), (2, url())]), want);
        assert_eq!(fold(&[(1, url()), (0, None)]), None, "nothing newer than our own epoch");
        assert_eq!(
            fold(&[(2, url()), (3, None)]),
            Some((3, None)),
            "a newer epoch replaces"
        );
        assert_eq!(fold(&[(2, None)]), Some((2, None)));
    }
}
