//! The hash chain. Each event's hash is SHA-256 over its stored bytes; each event stores the
//! hash of its predecessor. [`ChainVerifier`] checks a stream of stored events in global order
//! and reports the first sequence number where anything is wrong.

use crate::codec::{decode, DecodeError};
pub use crate::hash::{hash_bytes, Hash, GENESIS_HASH};
use crate::types::Event;

/// Why a chain does not verify, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event at position {position} cannot be decoded: {error}")]
    Undecodable { position: u64, error: String },
    #[error("expected global sequence {expected}, found {found} (an event is missing, duplicated or out of order)")]
    SequenceGap { expected: u64, found: u64 },
    #[error("event {seq}: prev_hash is {found}, but the hash of event {} is {expected} (an event before it was altered, removed or reordered)", seq - 1)]
    BrokenLink { seq: u64, expected: Hash, found: Hash },
    #[error("event {seq}: stored under key {key}, but says it is event {seq}")]
    KeyMismatch { key: u64, seq: u64 },
}

impl ChainError {
    /// The global sequence at which the chain first fails.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Undecodable { position, .. } => *position,
            ChainError::SequenceGap { expected, .. } => *expected,
            ChainError::BrokenLink { seq, .. } => *seq,
            ChainError::KeyMismatch { key, .. } => *key,
        }
    }
}

impl From<(u64, DecodeError)> for ChainError {
    fn from((position, e): (u64, DecodeError)) -> Self {
        ChainError::Undecodable {
            position,
            error: e.to_string(),
        }
    }
}

/// Verifies stored events pushed in global order, starting at sequence 1 (or at a trusted
/// point given to [`ChainVerifier::resume`]).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev: Hash,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        ChainVerifier {
            next_seq: 1,
            prev: GENESIS_HASH,
        }
    }

    /// Continue a chain after event `last_seq`, whose hash is `last_hash`.
    pub fn resume(last_seq: u64, last_hash: Hash) -> Self {
        ChainVerifier {
            next_seq: last_seq + 1,
            prev: last_hash,
        }
    }

    /// Checks the next stored event; returns it decoded with its hash.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(Event, Hash), ChainError> {
        let event = decode(bytes).map_err(|e| ChainError::from((self.next_seq, e)))?;
        let hash = self.push_decoded(&event, bytes)?;
        Ok((event, hash))
    }

    /// Checks an event already decoded from `bytes`.
    pub fn push_decoded(&mut self, event: &Event, bytes: &[u8]) -> Result<Hash, ChainError> {
        if event.seq != self.next_seq {
            return Err(ChainError::SequenceGap {
                expected: self.next_seq,
                found: event.seq,
            });
        }
        if event.prev_hash != self.prev {
            return Err(ChainError::BrokenLink {
                seq: event.seq,
                expected: self.prev,
                found: event.prev_hash,
            });
        }
        let hash = hash_bytes(bytes);
        self.prev = hash;
        self.next_seq += 1;
        Ok(hash)
    }

    /// The number of events verified so far plus the starting offset: the last verified seq.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the last verified event (the chain head).
    pub fn head(&self) -> Hash {
        self.prev
    }
}
