//! The hash of a stored event: SHA-256 over its bytes, written as 64 lowercase hex characters.
//! A leaf of this crate: the envelope ([`crate::types`]), the encoder and the chain name it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

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
