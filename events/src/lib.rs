//! # bindledger-events: the event schema of bindledger, and nothing else
//!
//! This crate is what a downstream consumer depends on. It holds pure types and functions: no
//! IO, no async runtime, no storage engine, no Kafka client.
//!
//! ## Layout
//! - [`types`]: the event envelope, the payloads (one per outcome) and the typed failure reasons.
//! - [`codec`]: the one canonical encoding (the exact bytes that are stored and published),
//!   decoding with upcasting from older schema versions.
//! - [`hash`]: the hash of a stored event (SHA-256 over its bytes).
//! - [`chain`]: the hash chain: SHA-256 over the stored bytes, and a streaming verifier that
//!   names the first event where the chain breaks.
//! - [`personal`]: which fields are personal (sealed at rest from v8) and how they are sealed.
//! - [`money`]: ISO 4217 currency codes and amount rules (integer minor units, never floats).
//!
//! ## Invariants
//! - **The hash of an event is SHA-256 over its stored bytes**, and every event carries the
//!   hash of the one before it (`prev_hash`; the first event carries 32 zero bytes). Editing,
//!   removing or reordering any event breaks the chain at a place the verifier names.
//! - **Stored bytes are never re-encoded.** Decoding (and upcasting) produces a value for
//!   reading; hashing always uses the bytes as stored.

pub mod canonical;
pub mod chain;
pub mod codec;
pub mod hash;
pub mod money;
pub mod personal;
pub mod types;

pub use chain::{hash_bytes, ChainError, ChainVerifier, Hash, GENESIS_HASH};
pub use codec::{decode, encode, parse_strict, DecodeError, SCHEMA_VERSION};
pub use money::{Currency, CurrencyError, AMOUNT_MINOR_MAX};
pub use types::*;
