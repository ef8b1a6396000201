//! The hash chain. Each event's hash is SHA-256 over its stored bytes; each event stores the
//! hash of its predecessor. [`ChainVerifier`] checks a stream of stored events in global order
//! and reports the first sequence number where anything is wrong.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::codec::{decode, DecodeError};
use crate::types::Event;

/// A SHA-256 digest. Serialized as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

/// The `prev_hash` of the first event of a log.
pub const GENESIS_HASH: Hash = Hash([0; 32]);

impl Hash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The 64 lowercase hex characters, without allocating (the encoder and the HTTP answers).
    pub fn hex_bytes(&self) -> [u8; 64] {
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).expect("64 bytes hold 32 hex pairs");
        text
    }
    /// [`Hash::hex_bytes`] as text.
    fn with_hex<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(std::str::from_utf8(&self.hex_bytes()).expect("hex is ascii"))
    }
    pub fn from_hex(s: &str) -> Result<Hash, hex::FromHexError> {
        if let Some(h) = hash_from_hex(s.as_bytes()) {
            return Ok(h);
        }
        // The slow path only to name what is wrong.
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_hex(|hex| f.write_str(hex))
    }
}
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_hex(|hex| f.write_str(hex))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_hex(|hex| s.serialize_str(hex))
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not a String: decoding a hash allocates nothing.
        struct HexVisitor;
        impl serde::de::Visitor<'_> for HexVisitor {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("64 hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Hash, E> {
                Hash::from_hex(s).map_err(E::custom)
            }
        }
        d.deserialize_str(HexVisitor)
    }
}

/// Each byte's value as a hex digit (either case), or 0xff.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => 0xff,
        };
        c += 1;
    }
    t
};

/// 64 hex digits (either case) as a hash, or `None`.
pub(crate) fn hash_from_hex(hex: &[u8]) -> Option<Hash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(Hash(out))
}

/// SHA-256 over bytes: the hash of a stored event.
pub fn hash_bytes(bytes: &[u8]) -> Hash {
    Hash(Sha256::digest(bytes).into())
}

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
