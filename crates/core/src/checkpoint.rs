//! Signed checkpoints: proof beyond the log itself. A hash chain can be rewritten end to end by
//! whoever can write the files, so the ledger periodically signs its head (global sequence,
//! head hash, time) with an Ed25519 key and hands the signature out: stored, served over HTTP
//! (`GET /v1/checkpoints`), published to Kafka. A log rewritten after a checkpoint no longer
//! has that head at that sequence, and nobody without the key can sign a new one.
//!
//! **The format, for a third party.** A checkpoint is JSON
//! `{"seq", "head", "time", "public_key", "signature"}`; `head` is the SHA-256 of the stored
//! bytes of event `seq` (64 hex), `time` RFC 3339 UTC with six fractional digits, `public_key`
//! and `signature` hex. The signature is Ed25519 (RFC 8032) over the ASCII bytes of
//! `bindledger-checkpoint:v1:{seq}:{head}:{time}`, where `time` is the text of the JSON field
//! exactly as it stands (the ledger writes `2026-11-28T03:00:00.123456Z`): a checkpoint whose
//! time was rewritten to another form of the same instant does not verify.

use bindledger_events::Hash;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedCheckpoint {
    pub seq: u64,
    pub head: Hash,
    #[serde(with = "bindledger_events::types::micros")]
    pub time: DateTime<Utc>,
    pub public_key: String,
    pub signature: String,
    /// The `time` field's text as read (the signed text); `None` for one made here.
    #[serde(skip)]
    pub time_text: Option<String>,
}

impl<'de> Deserialize<'de> for SignedCheckpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            seq: u64,
            head: Hash,
            time: String,
            public_key: String,
            signature: String,
        }
        let raw = Raw::deserialize(d)?;
        let time = DateTime::parse_from_rfc3339(&raw.time)
            .map_err(|_| serde::de::Error::custom("time is not an RFC 3339 time"))?
            .with_timezone(&Utc);
        Ok(SignedCheckpoint {
            seq: raw.seq,
            head: raw.head,
            time,
            public_key: raw.public_key,
            signature: raw.signature,
            time_text: Some(raw.time),
        })
    }
}

/// The signed message.
pub fn message(seq: u64, head: &Hash, time: &DateTime<Utc>) -> String {
    message_text(seq, head, &time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn message_text(seq: u64, head: &Hash, time: &str) -> String {
    format!("bindledger-checkpoint:v1:{seq}:{head}:{time}")
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint names another key than the trusted one.
    #[error("signed with key {signed_with}, not the trusted key {trusted}")]
    OtherKey { signed_with: String, trusted: String },
    #[error("a public key is 32 bytes of hex")]
    KeyNotHex,
    #[error("not an Ed25519 public key")]
    KeyNotEd25519,
    #[error("the signature is not 64 bytes of hex")]
    SignatureNotHex,
    #[error("the signature does not verify")]
    BadSignature,
}

impl SignedCheckpoint {
    /// Checks the signature with a public key the auditor trusts (hex).
    pub fn verify(&self, public_key_hex: &str) -> std::result::Result<(), CheckpointError> {
        if !self.public_key.eq_ignore_ascii_case(public_key_hex) {
            return Err(CheckpointError::OtherKey {
                signed_with: self.public_key.clone(),
                trusted: public_key_hex.to_owned(),
            });
        }
        let key = parse_public_key(public_key_hex)?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CheckpointError::SignatureNotHex)?;
        // Over the time's text as it stands, as a verifier in any language does.
        let text = match &self.time_text {
            Some(t) => message_text(self.seq, &self.head, t),
            None => message(self.seq, &self.head, &self.time),
        };
        key.verify(text.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| CheckpointError::BadSignature)
    }
}

pub fn parse_public_key(hex_key: &str) -> std::result::Result<VerifyingKey, CheckpointError> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CheckpointError::KeyNotHex)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| CheckpointError::KeyNotEd25519)
}

/// The ledger's signing key.
pub struct CheckpointKey(SigningKey);

impl CheckpointKey {
    /// Reads the key (32 bytes of hex) or creates it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<CheckpointKey> {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let b: [u8; 32] = hex::decode(s.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::config(format!("{}: a checkpoint key is 64 hex characters", path.display()))
                    })?;
                Ok(CheckpointKey(SigningKey::from_bytes(&b)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = [0u8; 32];
                getrandom::fill(&mut b).map_err(|e| Error::config_by("no randomness", e))?;
                crate::keys::write_private(path, hex::encode(b).as_bytes())?;
                tracing::info!(path = %path.display(), "created a new checkpoint signing key");
                Ok(CheckpointKey(SigningKey::from_bytes(&b)))
            }
            Err(e) => Err(Error::io_caused(
                format!("reading the checkpoint key {}", path.display()),
                e,
            )),
        }
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    /// Signs a cluster checkpoint of `shards` (each shard's own signed checkpoint) under map
    /// `map_version`, now.
    pub fn sign_cluster(
        &self,
        map_version: u64,
        shards: std::collections::BTreeMap<String, SignedCheckpoint>,
        time: DateTime<Utc>,
    ) -> ClusterCheckpoint {
        let time = time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let text = cluster_message(map_version, &time, &shards);
        ClusterCheckpoint {
            map_version,
            time,
            shards,
            public_key: self.public_hex(),
            signature: hex::encode(self.0.sign(text.as_bytes()).to_bytes()),
        }
    }

    pub fn sign(&self, seq: u64, head: Hash, time: DateTime<Utc>) -> SignedCheckpoint {
        let time = bindledger_events::types::micros::truncate(time);
        let signature = self.0.sign(message(seq, &head, &time).as_bytes());
        SignedCheckpoint {
            seq,
            head,
            time,
            public_key: self.public_hex(),
            signature: hex::encode(signature.to_bytes()),
            time_text: None,
        }
    }
}

/// A signed cluster checkpoint: the heads of every shard of a cluster, each as its shard's own
/// signed checkpoint, signed together by the cluster's key (an operator's, `bindledger cluster
/// checkpoint`). An auditor who trusts the cluster key alone learns each shard's key from it,
/// and can prove that no shard's history up to these heads was rewritten or dropped.
///
/// **The format.** JSON `{"map_version", "time", "shards": {id: checkpoint}, "public_key",
/// "signature"}`; the signature is Ed25519 over the ASCII bytes of
/// `bindledger-cluster-checkpoint:v1:{map_version}:{time}` followed, for each shard in id order,
/// by `:{id}={seq},{head},{public_key}` of its checkpoint; `time` is the JSON field's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterCheckpoint {
    pub map_version: u64,
    pub time: String,
    pub shards: std::collections::BTreeMap<String, SignedCheckpoint>,
    pub public_key: String,
    pub signature: String,
}

fn cluster_message(
    map_version: u64,
    time: &str,
    shards: &std::collections::BTreeMap<String, SignedCheckpoint>,
) -> String {
    let mut text = format!("bindledger-cluster-checkpoint:v1:{map_version}:{time}");
    for (id, cp) in shards {
        text.push_str(&format!(":{id}={},{},{}", cp.seq, cp.head, cp.public_key));
    }
    text
}

impl ClusterCheckpoint {
    /// Checks the cluster's signature with the key the auditor trusts, then each shard's
    /// checkpoint with the key it names (which the cluster's signature covers).
    pub fn verify(&self, cluster_key_hex: &str) -> std::result::Result<(), (Option<String>, CheckpointError)> {
        if !self.public_key.eq_ignore_ascii_case(cluster_key_hex) {
            return Err((
                None,
                CheckpointError::OtherKey {
                    signed_with: self.public_key.clone(),
                    trusted: cluster_key_hex.to_owned(),
                },
            ));
        }
        let key = parse_public_key(cluster_key_hex).map_err(|e| (None, e))?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or((None, CheckpointError::SignatureNotHex))?;
        let text = cluster_message(self.map_version, &self.time, &self.shards);
        key.verify(text.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| (None, CheckpointError::BadSignature))?;
        for (id, cp) in &self.shards {
            cp.verify(&cp.public_key).map_err(|e| (Some(id.clone()), e))?;
        }
        Ok(())
    }
}

/// Checkpoints in sled (tree `checkpoints`, key = seq big-endian).
#[derive(Clone)]
pub struct CheckpointStore {
    tree: sled::Tree,
}

impl CheckpointStore {
    pub fn new(tree: sled::Tree) -> CheckpointStore {
        CheckpointStore { tree }
    }

    pub fn put(&self, cp: &SignedCheckpoint) -> Result<()> {
        self.tree
            .insert(
                cp.seq.to_be_bytes(),
                serde_json::to_vec(cp).expect("checkpoints serialize"),
            )
            .map_err(crate::store::from_sled)?;
        Ok(())
    }

    pub fn last(&self) -> Result<Option<SignedCheckpoint>> {
        match self.tree.iter().next_back() {
            None => Ok(None),
            Some(r) => {
                let (_, v) = r.map_err(crate::store::from_sled)?;
                serde_json::from_slice(&v)
                    .map(Some)
                    .map_err(|e| Error::corrupt_by("checkpoint", e))
            }
        }
    }

    /// The checkpoint stored at `seq`, if any.
    pub fn get(&self, seq: u64) -> Result<Option<SignedCheckpoint>> {
        match self.tree.get(seq.to_be_bytes()).map_err(crate::store::from_sled)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::corrupt_by("checkpoint", e)),
        }
    }

    /// Every stored checkpoint, in order.
    pub fn all(&self) -> Result<Vec<SignedCheckpoint>> {
        self.after(0)
    }

    /// The stored checkpoints after `seq`, in order.
    pub fn after(&self, seq: u64) -> Result<Vec<SignedCheckpoint>> {
        self.tree
            .range((seq + 1).to_be_bytes()..)
            .map(|r| {
                let (_, v) = r.map_err(crate::store::from_sled)?;
                serde_json::from_slice(&v).map_err(|e| Error::corrupt_by("checkpoint", e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only_and_covers_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = CheckpointKey::load_or_create(&dir.path().join("k")).unwrap();
        let again = CheckpointKey::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(key.public_hex(), again.public_hex(), "the key persists");
        let cp = key.sign(42, Hash([7; 32]), Utc::now());
        cp.verify(&key.public_hex()).unwrap();
        let other = CheckpointKey::load_or_create(&dir.path().join("other")).unwrap();
        assert!(cp.verify(&other.public_hex()).is_err());
        for tampered in [
            SignedCheckpoint { seq: 43, ..cp.clone() },
            SignedCheckpoint {
                head: Hash([8; 32]),
                ..cp.clone()
            },
            SignedCheckpoint {
                time: cp.time + chrono::Duration::seconds(1),
                ..cp.clone()
            },
        ] {
            assert!(tampered.verify(&key.public_hex()).is_err(), "{tampered:?}");
        }
        // Read back, the signed text is the time's text: the same instant written another way
        // (+08:00) does not verify, as a verifier in another language would find.
        let text = serde_json::to_string(&cp).unwrap();
        let read: SignedCheckpoint = serde_json::from_str(&text).unwrap();
        read.verify(&key.public_hex()).unwrap();
        let shifted = (cp.time + chrono::Duration::hours(8))
            .format("%Y-%m-%dT%H:%M:%S%.6f+08:00")
            .to_string();
        let canonical = cp.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let rewritten: SignedCheckpoint = serde_json::from_str(&text.replace(&canonical, &shifted)).unwrap();
        assert_eq!(rewritten.time, cp.time, "the same instant");
        assert!(rewritten.verify(&key.public_hex()).is_err());
    }

    #[test]
    fn a_cluster_checkpoint_covers_every_shards_head_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = CheckpointKey::load_or_create(&dir.path().join("cluster")).unwrap();
        let s0 = CheckpointKey::load_or_create(&dir.path().join("s0")).unwrap();
        let s1 = CheckpointKey::load_or_create(&dir.path().join("s1")).unwrap();
        let shards: std::collections::BTreeMap<String, SignedCheckpoint> = [
            ("s0".to_owned(), s0.sign(10, Hash([1; 32]), Utc::now())),
            ("s1".to_owned(), s1.sign(7, Hash([2; 32]), Utc::now())),
        ]
        .into();
        let cp = cluster.sign_cluster(3, shards.clone(), Utc::now());
        cp.verify(&cluster.public_hex()).unwrap();
        let read: ClusterCheckpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
        read.verify(&cluster.public_hex()).unwrap();
        assert!(cp.verify(&s0.public_hex()).is_err(), "another key");
        let mut dropped = cp.clone();
        dropped.shards.remove("s1");
        assert!(dropped.verify(&cluster.public_hex()).is_err(), "a shard left out");
        let mut version = cp.clone();
        version.map_version = 4;
        assert!(version.verify(&cluster.public_hex()).is_err());
        // A shard's checkpoint replaced by one its own key signed over another head: the
        // cluster's signature covers the head.
        let mut swapped = cp.clone();
        swapped
            .shards
            .insert("s1".into(), s1.sign(7, Hash([3; 32]), Utc::now()));
        assert!(swapped.verify(&cluster.public_hex()).is_err());
        // A shard's key replaced (a forger's key signing a rewritten head) fails too.
        let forger = CheckpointKey::load_or_create(&dir.path().join("forger")).unwrap();
        let mut forged = cp.clone();
        forged
            .shards
            .insert("s1".into(), forger.sign(7, Hash([2; 32]), Utc::now()));
        assert!(forged.verify(&cluster.public_hex()).is_err());
        // A shard's checkpoint whose own signature is broken is named.
        let mut broken = cp.clone();
        broken.shards.get_mut("s0").unwrap().signature = "00".repeat(64);
        assert_eq!(
            broken.verify(&cluster.public_hex()).unwrap_err().0.as_deref(),
            Some("s0")
        );
    }
}
