//! The head record: the last event known durable, its `seq` and hash, kept in a small file
//! beside the sled log (`<data_dir>/head`).
//!
//! **Why.** sled, meeting damage while it recovers its log on open (a flipped byte in a
//! segment), drops what follows the damage and opens without an error. A ledger would then
//! start on a shorter log and acknowledged events would be gone without a word. The head record
//! turns that into a refusal to start that says what was lost and where it was recorded.
//!
//! **How.** The flusher notes each flush's last event once it is durable; a thread writes the
//! newest note to the file (one 52-byte write in place) at most every [`WRITE_EVERY`], and makes
//! it durable at most every [`SYNC_EVERY`], off the answer path, so group commit pays nothing
//! for it. The record is never ahead of the log, only behind it. What it cannot see: events
//! acknowledged in the last [`WRITE_EVERY`] before damage that took them (after a power cut,
//! the last [`SYNC_EVERY`]).
//!
//! **Layout.** `BLHEAD01`, `seq` (8 bytes, big-endian), the SHA-256 of the event's stored bytes
//! (32), and a CRC-32 of the 48 bytes before it (4, big-endian).

use bindledger_events::Hash;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"BLHEAD01";
const LEN: usize = 52;

/// The head record is written at most this often (to the page cache: it survives a crash of
/// the process)...
pub const WRITE_EVERY: Duration = Duration::from_millis(50);
/// ... and made durable (`fdatasync`) at most this often, so that its syncs do not queue the
/// flusher's on the same disk (measured: syncing every write cost the library path about 5%).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The head record's file in a data directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("head")
}

fn encode(seq: u64, hash: &Hash) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_be_bytes());
    b[16..48].copy_from_slice(&hash.0);
    let crc = crc32fast::hash(&b[..48]);
    b[48..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The recorded head: `Ok(None)` when there is no record (a new data directory, or one
/// written before the record existed), `Err` when the file does not check.
pub fn read(dir: &Path) -> std::result::Result<Option<(u64, Hash)>, String> {
    let bytes = match std::fs::read(path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    if bytes.len() != LEN || &bytes[..8] != MAGIC {
        return Err("is not a head record".into());
    }
    if crc32fast::hash(&bytes[..48]).to_be_bytes() != bytes[48..] {
        return Err("fails its checksum".into());
    }
    let seq = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[16..48]);
    Ok(Some((seq, Hash(hash))))
}

/// Holds the log to its head record: refuses a log that ends before the recorded head, or
/// whose event at that seq is not the recorded one (`hash_of(seq)`: the stored event's hash).
/// A record that does not check is reported in the log and ignored (it is rewritten).
pub fn check(dir: &Path, last_seq: u64, hash_of: impl Fn(u64) -> Result<Option<Hash>>) -> Result<()> {
    let file = path(dir);
    match read(dir) {
        Ok(None) => Ok(()),
        Err(why) => {
            tracing::warn!(file = %file.display(), problem = %why, "the head record is damaged: it is ignored and rewritten");
            Ok(())
        }
        Ok(Some((seq, _))) if seq > last_seq => Err(Error::corrupt(format!(
            "the log ends at event {last_seq}, but events up to {seq} were made durable and acknowledged (recorded in {}): \
             the store lost {} events after event {last_seq} (sled drops what follows damage it meets while recovering its log). \
             Restore from the events topic (bindledger restore) or a backup",
            file.display(),
            seq - last_seq,
        ))),
        Ok(Some((seq, hash))) => match hash_of(seq)? {
            Some(h) if h == hash => Ok(()),
            _ => Err(Error::corrupt(format!(
                "event {seq} is not the event recorded as durable in {}: the log was changed after it was written",
                file.display()
            ))),
        },
    }
}

struct State {
    /// The newest durable head not yet written.
    pending: Option<(u64, Hash)>,
    /// The highest `seq` ever noted (written or pending): an older note is ignored even once
    /// the newer one has been taken by the writer.
    highest: Option<u64>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Writes the head record as the flusher notes durable heads (see the module's documentation).
pub struct HeadRecorder {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeadRecorder {
    /// Starts recording in `dir`, first writing `initial` (the log's head as opened).
    pub fn start(dir: &Path, initial: Option<(u64, Hash)>) -> Result<HeadRecorder> {
        let path = path(dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::storage_io(format!("opening {}", path.display()), e))?;
        // `sync`: also make it durable (the record is only ever behind the log, never ahead:
        // a record lost to a power cut is an older, still true, head).
        let write = move |seq: u64, hash: &Hash, sync: bool| -> std::io::Result<()> {
            file.write_all_at(&encode(seq, hash), 0)?;
            file.set_len(LEN as u64)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        };
        if let Some((seq, hash)) = initial {
            write(seq, &hash, true).map_err(|e| Error::storage_io(format!("writing {}", path.display()), e))?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: None,
                highest: initial.map(|(seq, _)| seq),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bindledger-head".into())
            .spawn(move || {
                let mut synced = std::time::Instant::now();
                loop {
                    let (next, stop) = {
                        let mut s = worker.state.lock().expect("head lock");
                        while s.pending.is_none() && !s.stop {
                            s = worker.wake.wait(s).expect("head lock");
                        }
                        (s.pending.take(), s.stop)
                    };
                    if let Some((seq, hash)) = next {
                        let sync = stop || synced.elapsed() >= SYNC_EVERY;
                        match write(seq, &hash, sync) {
                            Ok(()) if sync => synced = std::time::Instant::now(),
                            Ok(()) => {}
                            Err(e) => {
                                tracing::error!(error = %e, file = %path.display(), "writing the head record failed")
                            }
                        }
                    }
                    if stop {
                        return;
                    }
                    std::thread::sleep(WRITE_EVERY);
                }
            })
            .map_err(|e| Error::io_caused("starting the head recorder", e))?;
        Ok(HeadRecorder {
            shared,
            thread: Some(thread),
        })
    }

    /// Notes a durable head (the last event of a flush, after it is durable).
    pub fn note(&self, seq: u64, hash: Hash) {
        let mut s = self.shared.state.lock().expect("head lock");
        if s.highest.is_none_or(|old| seq > old) {
            s.highest = Some(seq);
            s.pending = Some((seq, hash));
        }
        self.shared.wake.notify_one();
    }
}

impl Drop for HeadRecorder {
    /// Writes the last noted head, then stops.
    fn drop(&mut self) {
        self.shared.state.lock().expect("head lock").stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_record_round_trips_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        {
            let r = HeadRecorder::start(dir.path(), Some((3, Hash([3; 32])))).unwrap();
            assert_eq!(read(dir.path()), Ok(Some((3, Hash([3; 32])))));
            r.note(9, Hash([9; 32]));
            std::thread::sleep(WRITE_EVERY * 2); // the writer has taken 9...
            r.note(7, Hash([7; 32])); // ... and an older note is still ignored
        }
        assert_eq!(read(dir.path()), Ok(Some((9, Hash([9; 32])))));
        let hash_of = |seq: u64| Ok(Some(Hash([seq as u8; 32])));
        check(dir.path(), 9, hash_of).unwrap();
        check(dir.path(), 12, hash_of).unwrap();
        let lost = check(dir.path(), 5, hash_of).unwrap_err().to_string();
        assert!(
            lost.contains("ends at event 5") && lost.contains("lost 4 events"),
            "{lost}"
        );
        let changed = check(dir.path(), 9, |_| Ok(Some(Hash([1; 32]))))
            .unwrap_err()
            .to_string();
        assert!(changed.contains("event 9 is not the event recorded"), "{changed}");
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[10] ^= 1;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        assert_eq!(read(dir.path()), Err("fails its checksum".into()));
        check(dir.path(), 0, hash_of).unwrap();
    }
}
