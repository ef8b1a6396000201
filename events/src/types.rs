//! The event envelope and payloads. Events are past-tense facts; every command ends in exactly
//! one of them, a success or a typed failure.
//!
//! Field order in these structs is the order of the canonical encoding: **do not reorder
//! fields**; add new optional ones at the end of a struct and bump [`crate::SCHEMA_VERSION`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use uuid::Uuid;

use crate::hash::Hash;
use crate::money::Currency;

/// The schema version this code writes (the version of the types below).
pub const SCHEMA_VERSION: u16 = 9;

/// The oldest schema version this code can read.
pub const SCHEMA_VERSION_MIN: u16 = 1;

/// One stored event: the envelope and its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version of this event's encoding. Always first in the stored bytes.
    pub v: u16,
    /// Event id, UUID v7 (time-ordered).
    pub id: Uuid,
    /// Global sequence in the log, from 1, without gaps.
    pub seq: u64,
    /// The shopper's platform account.
    pub account: String,
    /// Sequence of this event within its account, from 1: the account's version after it.
    pub account_seq: u64,
    /// When the command happened (rules and projections use this time).
    #[serde(with = "micros")]
    pub event_time: DateTime<Utc>,
    /// When the ledger recorded it.
    #[serde(with = "micros")]
    pub record_time: DateTime<Utc>,
    /// The caller's idempotency key, if it sent one.
    pub idempotency_key: Option<String>,
    /// Keyed digest (HMAC) of the command, without secrets: tells a retry from a different
    /// request reusing the same idempotency key.
    pub request_digest: Option<Hash>,
    /// The caller's correlation id (e.g. a checkout session), if any.
    pub correlation_id: Option<String>,
    /// Channel and device the command came from.
    pub context: Context,
    /// Hash of the previous event's stored bytes (zeros for the first event).
    pub prev_hash: Hash,
    /// What happened.
    pub payload: Payload,
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        self.payload.event_type()
    }
}

/// Channel/device context of a command, so that habits (unsafe networks, new devices) can be
/// seen later.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Context {
    /// `app`, `web`, `mini_program`, `api`, ... (free text, validated by the ledger).
    pub channel: String,
    pub device_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// (v9) The keyed fingerprint of `device_id` (HMAC-SHA256 with the ledger's secret, as a
    /// wallet's): one device is recognised across accounts without being readable. Absent
    /// without a device id, and in older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_fp: Option<Hash>,
    /// (v9) The keyed fingerprint of `ip`, the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_fp: Option<Hash>,
}

/// A wallet as the ledger keeps it: never the account number itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WalletRef {
    /// Display form, e.g. `138****5678`.
    pub masked: String,
    /// HMAC-SHA256 of provider and normalised wallet account with the ledger's secret.
    pub fingerprint: Hash,
}

/// A verification factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    Password,
    Sms,
    Fingerprint,
    Face,
}

impl Factor {
    pub fn as_str(&self) -> &'static str {
        match self {
            Factor::Password => "password",
            Factor::Sms => "sms",
            Factor::Fingerprint => "fingerprint",
            Factor::Face => "face",
        }
    }
}

/// A factor that was checked, and whether it passed. The secret itself never enters an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactorCheck {
    pub factor: Factor,
    pub passed: bool,
}

/// Which side is under maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Provider,
    Platform,
}

/// A wallet provider: a known one or `other:<name>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Provider(String);

/// The providers the ledger knows by name.
pub const KNOWN_PROVIDERS: &[&str] = &[
    "alipay",
    "wechat_pay",
    "apple_pay",
    "union_pay",
    "bank_card",
    "credit_card",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Carries no part of the refused text: an error never repeats a submitted value.
#[error("unknown wallet provider: expected one of alipay, wechat_pay, apple_pay, union_pay, bank_card, credit_card, or other:<name> (name: 1-32 of a-z 0-9 _ -)")]
pub struct ProviderError;

impl Provider {
    pub fn parse(s: &str) -> Result<Provider, ProviderError> {
        if KNOWN_PROVIDERS.contains(&s) {
            return Ok(Provider(s.to_owned()));
        }
        if let Some(name) = s.strip_prefix("other:") {
            let ok = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if ok {
                return Ok(Provider(s.to_owned()));
            }
        }
        Err(ProviderError)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl Serialize for Provider {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Provider::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a bind failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum BindFailure {
    /// The wallet account is frozen by its provider.
    WalletFrozen,
    /// The wallet account is closed (deregistered).
    WalletClosed,
    /// Something the user typed is wrong; `field` names it (`wallet_account`, `payment_password`).
    InvalidInput { field: String },
    /// The network failed while talking to the provider.
    Network,
    /// The provider or the platform is under maintenance; try again later.
    Maintenance { side: Side },
    /// This wallet is already bound to this account.
    AlreadyBound { binding_id: Uuid },
    /// A verification factor (SMS code, fingerprint, face) did not pass.
    VerificationFactorFailed { factor: Factor },
    /// The account holds as many active bindings as it may.
    BindingLimitReached { limit: u32 },
    /// The wallet's budget of wrong payment passwords on binds (from all accounts together) is
    /// spent until `until` (the ledger's time): the provider was not asked (schema v7).
    TooManyAttempts {
        #[serde(with = "micros")]
        until: DateTime<Utc>,
    },
}

/// Why a payment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum PaymentFailure {
    WrongPassword,
    /// The binding was never bound to this account, or is unbound.
    BindingNotActive,
    WalletFrozen,
    WalletClosed,
    InsufficientFunds,
    VerificationFactorFailed {
        factor: Factor,
    },
    Network,
    Maintenance {
        side: Side,
    },
    /// The binding is locked by the security team's monitoring until `until` (the ledger's
    /// time, `record_time`).
    BindingLocked {
        alert_id: String,
        #[serde(with = "micros")]
        until: DateTime<Utc>,
    },
    /// (v4) The binding's budget of wrong payment passwords is spent: as many as the
    /// `password_brute_force` threshold were recorded within its window (since the last
    /// unlock), so the provider is not asked again before `until`, when the oldest of them
    /// leaves the window.
    TooManyAttempts {
        #[serde(with = "micros")]
        until: DateTime<Utc>,
    },
    /// (v5) The order already has a `payment_succeeded` event on this account, at seq
    /// `payment_seq`: the provider is not asked, so a retry without an idempotency key (or
    /// with a new one) cannot charge the shopper twice for one order.
    OrderAlreadyPaid {
        payment_seq: u64,
    },
}

/// Why a lock or an unlock failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum LockFailure {
    /// No active binding with that id on this account.
    NotBound,
    /// (unlock) The binding is not locked.
    NotLocked,
}

/// Why a lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnlockCause {
    /// Someone with the `security` role lifted it.
    Manual,
    /// Its time ran out.
    Expired,
}

/// Why an unbind failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum UnbindFailure {
    /// No active binding with that id on this account.
    NotBound,
    Maintenance {
        side: Side,
    },
}

/// What happened: one variant per outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    WalletBound {
        binding_id: Uuid,
        provider: Provider,
        wallet: WalletRef,
        factors: Vec<FactorCheck>,
        /// The provider's reference for this binding, used to authorise payments (the wallet
        /// account itself is never kept).
        agreement_id: String,
    },
    BindFailed {
        provider: Provider,
        wallet: WalletRef,
        factors: Vec<FactorCheck>,
        reason: BindFailure,
    },
    PaymentSucceeded {
        binding_id: Uuid,
        provider: Provider,
        wallet: WalletRef,
        order_id: String,
        amount_minor: i64,
        currency: Currency,
        factors: Vec<FactorCheck>,
        /// The provider's reference for the authorised payment.
        authorization_id: String,
    },
    PaymentFailed {
        binding_id: Uuid,
        order_id: String,
        amount_minor: i64,
        currency: Currency,
        factors: Vec<FactorCheck>,
        reason: PaymentFailure,
    },
    WalletUnbound {
        binding_id: Uuid,
        provider: Provider,
        wallet: WalletRef,
    },
    UnbindFailed {
        binding_id: Uuid,
        reason: UnbindFailure,
    },
    /// (v3) Payments with the binding fail with `binding_locked` until `until` (event time) or
    /// an unlock. `alert_id` names the alert that caused it.
    BindingLocked {
        binding_id: Uuid,
        alert_id: String,
        #[serde(with = "micros")]
        until: DateTime<Utc>,
    },
    /// (v3) A lock was refused.
    BindingLockFailed {
        binding_id: Uuid,
        alert_id: String,
        reason: LockFailure,
    },
    /// (v3) The lock caused by `alert_id` ended.
    BindingUnlocked {
        binding_id: Uuid,
        alert_id: String,
        cause: UnlockCause,
    },
    /// (v3) An unlock was refused.
    BindingUnlockFailed {
        binding_id: Uuid,
        reason: LockFailure,
    },
    /// (v6) A person triaged an alert (the security console, or the API): who (`operator`,
    /// the name of their token), what, and a note. The event belongs to the alert's account.
    AlertTriaged {
        alert_id: String,
        action: TriageAction,
        operator: String,
        /// For `assigned`: to whom (a token's name); else null.
        assignee: Option<String>,
        note: String,
    },
    /// (v8) The account's personal data was erased (a privacy officer's request, PIPL art. 47,
    /// GDPR art. 17): its data key is destroyed, so the sealed fields of every event of the
    /// account can no longer be opened anywhere. `operator` is the name of the officer's token;
    /// the event carries no personal data.
    SubjectErased {
        operator: String,
    },
}

/// (v6) What a person did with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriageAction {
    Acknowledged,
    Assigned,
    Resolved,
    FalsePositive,
    /// A person locked a binding for this alert (the `binding_locked` event comes first); the
    /// note is their reason.
    Locked,
    /// A person lifted a binding's lock (after the `binding_unlocked` event); the note is why.
    Unlocked,
}

impl TriageAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            TriageAction::Acknowledged => "acknowledged",
            TriageAction::Assigned => "assigned",
            TriageAction::Resolved => "resolved",
            TriageAction::FalsePositive => "false_positive",
            TriageAction::Locked => "locked",
            TriageAction::Unlocked => "unlocked",
        }
    }

    pub fn parse(s: &str) -> Option<TriageAction> {
        [
            TriageAction::Acknowledged,
            TriageAction::Assigned,
            TriageAction::Resolved,
            TriageAction::FalsePositive,
            TriageAction::Locked,
            TriageAction::Unlocked,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// Every event type name, as it appears in `payload.type` and in Kafka headers.
pub const EVENT_TYPES: &[&str] = &[
    "wallet_bound",
    "bind_failed",
    "payment_succeeded",
    "payment_failed",
    "wallet_unbound",
    "unbind_failed",
    "binding_locked",
    "binding_lock_failed",
    "binding_unlocked",
    "binding_unlock_failed",
    "alert_triaged",
    "subject_erased",
];

impl Payload {
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::WalletBound { .. } => "wallet_bound",
            Payload::BindFailed { .. } => "bind_failed",
            Payload::PaymentSucceeded { .. } => "payment_succeeded",
            Payload::PaymentFailed { .. } => "payment_failed",
            Payload::WalletUnbound { .. } => "wallet_unbound",
            Payload::UnbindFailed { .. } => "unbind_failed",
            Payload::BindingLocked { .. } => "binding_locked",
            Payload::BindingLockFailed { .. } => "binding_lock_failed",
            Payload::BindingUnlocked { .. } => "binding_unlocked",
            Payload::BindingUnlockFailed { .. } => "binding_unlock_failed",
            Payload::AlertTriaged { .. } => "alert_triaged",
            Payload::SubjectErased { .. } => "subject_erased",
        }
    }

    /// True for the successful outcomes.
    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            Payload::WalletBound { .. }
                | Payload::PaymentSucceeded { .. }
                | Payload::WalletUnbound { .. }
                | Payload::BindingLocked { .. }
                | Payload::BindingUnlocked { .. }
                | Payload::AlertTriaged { .. }
                | Payload::SubjectErased { .. }
        )
    }

    /// The machine-readable failure code, if this is a failure.
    pub fn failure_code(&self) -> Option<&'static str> {
        match self {
            Payload::BindFailed { reason, .. } => Some(reason.code()),
            Payload::PaymentFailed { reason, .. } => Some(reason.code()),
            Payload::UnbindFailed { reason, .. } => Some(reason.code()),
            Payload::BindingLockFailed { reason, .. } | Payload::BindingUnlockFailed { reason, .. } => {
                Some(reason.code())
            }
            _ => None,
        }
    }
}

impl BindFailure {
    pub fn code(&self) -> &'static str {
        match self {
            BindFailure::WalletFrozen => "wallet_frozen",
            BindFailure::WalletClosed => "wallet_closed",
            BindFailure::InvalidInput { .. } => "invalid_input",
            BindFailure::Network => "network",
            BindFailure::Maintenance { .. } => "maintenance",
            BindFailure::AlreadyBound { .. } => "already_bound",
            BindFailure::VerificationFactorFailed { .. } => "verification_factor_failed",
            BindFailure::BindingLimitReached { .. } => "binding_limit_reached",
            BindFailure::TooManyAttempts { .. } => "too_many_attempts",
        }
    }
}

impl PaymentFailure {
    pub fn code(&self) -> &'static str {
        match self {
            PaymentFailure::WrongPassword => "wrong_password",
            PaymentFailure::BindingNotActive => "binding_not_active",
            PaymentFailure::WalletFrozen => "wallet_frozen",
            PaymentFailure::WalletClosed => "wallet_closed",
            PaymentFailure::InsufficientFunds => "insufficient_funds",
            PaymentFailure::VerificationFactorFailed { .. } => "verification_factor_failed",
            PaymentFailure::Network => "network",
            PaymentFailure::Maintenance { .. } => "maintenance",
            PaymentFailure::BindingLocked { .. } => "binding_locked",
            PaymentFailure::TooManyAttempts { .. } => "too_many_attempts",
            PaymentFailure::OrderAlreadyPaid { .. } => "order_already_paid",
        }
    }
}

impl LockFailure {
    pub fn code(&self) -> &'static str {
        match self {
            LockFailure::NotBound => "not_bound",
            LockFailure::NotLocked => "not_locked",
        }
    }
}

impl UnbindFailure {
    pub fn code(&self) -> &'static str {
        match self {
            UnbindFailure::NotBound => "not_bound",
            UnbindFailure::Maintenance { .. } => "maintenance",
        }
    }
}

/// Every failure code across the three failure enums.
pub const FAILURE_CODES: &[&str] = &[
    "wallet_frozen",
    "wallet_closed",
    "invalid_input",
    "network",
    "maintenance",
    "already_bound",
    "verification_factor_failed",
    "binding_limit_reached",
    "wrong_password",
    "binding_not_active",
    "insufficient_funds",
    "not_bound",
    "binding_locked",
    "not_locked",
    "too_many_attempts",
    "order_already_paid",
];

/// Times are stored as RFC 3339 UTC with exactly six fractional digits.
pub mod micros {
    use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// The canonical form, `2026-11-26T08:00:00.123456Z`, is 27 bytes.
    const LEN: usize = 27;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        match format(t) {
            Some(buf) => s.serialize_str(std::str::from_utf8(&buf).expect("ascii digits")),
            None => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        }
    }

    /// The canonical form without allocating, for years 0-9999 (what chrono would print).
    pub(crate) fn format(t: &DateTime<Utc>) -> Option<[u8; LEN]> {
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let micros = t.nanosecond() / 1_000;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        put(20, 6, micros); // a leap second (micros >= 1,000,000) takes the slow path below
        (micros < 1_000_000).then_some(b)
    }

    /// Reads the canonical form directly; anything else goes through chrono's RFC 3339 parser.
    fn parse(s: &str) -> Result<DateTime<Utc>, String> {
        if let Some(t) = parse_canonical(s.as_bytes()) {
            return Ok(t);
        }
        let t = DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{s:?}: {e}"))?;
        // An event's times are microseconds: a finer one could not be written back as it was
        // read (found by `make fuzz`).
        if t.nanosecond() % 1_000 != 0 {
            return Err(format!("{s:?}: a time carries at most microseconds"));
        }
        Ok(t)
    }

    pub(crate) fn parse_canonical(b: &[u8]) -> Option<DateTime<Utc>> {
        if b.len() != LEN
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[26] != b'Z'
        {
            return None;
        }
        let num = |at: usize, width: usize| -> Option<u32> {
            b[at..at + width]
                .iter()
                .try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
        };
        let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 2)?, num(8, 2)?)?;
        let (h, m, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        if sec > 59 {
            return None;
        }
        Some(date.and_hms_micro_opt(h, m, sec, num(20, 6)?)?.and_utc())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        struct TimeVisitor;
        impl serde::de::Visitor<'_> for TimeVisitor {
            type Value = DateTime<Utc>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 time")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DateTime<Utc>, E> {
                parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(TimeVisitor)
    }

    /// Truncates a time to what the encoding keeps, so an encoded-then-decoded time is equal.
    pub fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
        let micros = t.timestamp_micros();
        DateTime::from_timestamp_micros(micros).expect("in range")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_fast_paths_agree_with_chrono() {
            let mut t = DateTime::from_timestamp_micros(-62_135_596_800_000_000).unwrap(); // year 1
            let step = 7_919_993_137_777i64; // ~92 days and some micros, so every field moves
            while t.year() < 9999 {
                let ours = format(&t).expect("years 1-9999");
                let chrono = t.to_rfc3339_opts(SecondsFormat::Micros, true);
                assert_eq!(std::str::from_utf8(&ours).unwrap(), chrono);
                assert_eq!(parse_canonical(chrono.as_bytes()), Some(t), "{chrono}");
                t += chrono::Duration::microseconds(step);
            }
        }

        #[test]
        fn other_forms_take_chronos_path_and_nonsense_is_refused() {
            let same = parse("2026-11-26T08:00:00.000001Z").unwrap();
            assert_eq!(parse("2026-11-26T08:00:00.000001+00:00").unwrap(), same);
            assert_eq!(parse("2026-11-26T16:00:00.000001+08:00").unwrap(), same);
            assert_eq!(parse("2026-11-26T08:00:00.000001z").unwrap(), same);
            for bad in [
                "2026-13-26T08:00:00.000000Z",
                "2026-02-30T08:00:00.000000Z",
                "2026-11-26T24:00:00.000000Z",
                "2026-11-26T08:60:00.000000Z",
                "2026-11-26T08:00:61.000000Z",
                "2026-11-26T08:00:00.00000aZ",
                "2026-11-26 08:00:00",
                "",
            ] {
                assert!(parse_canonical(bad.as_bytes()).is_none(), "{bad}");
                assert!(parse(bad).is_err(), "{bad}");
            }
        }
    }
}
