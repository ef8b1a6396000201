//! A direct writer and reader for the canonical encoding.
//!
//! [`encode_into`] writes the bytes that serde_json gives for the types' `Serialize` impls (the
//! definition of the encoding), field by field, without serde's machinery: the ledger's writer
//! encodes every event on its one thread. The tests check it byte for byte against serde_json
//! on every payload variant, on strings that need escapes and on times outside the fast path.
//!
//! [`decode`] walks the bytes in the one order the encoder writes them and builds the [`Event`]
//! with no intermediate values, about ten times faster than the general JSON decoder (the audit
//! tool reads every event of a log).
//!
//! It accepts only a subset of what the general decoder accepts, and for that subset gives the
//! same value: anything it does not expect (another field order, whitespace, a string with an
//! escape, an older schema version, an unknown field) makes it return `None`, and
//! [`crate::decode`] falls back to the general decoder, which also gives the error messages.
//! The tests check both properties against the general decoder on every payload variant and on
//! many corrupted inputs.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::hash::Hash;
use crate::money::Currency;
use crate::types::*;

/// Decodes canonical bytes of schema version 2 or 3, or returns `None`.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    // One UTF-8 check for the whole event; every string below is a slice of it. Canonical
    // bytes hold no control character anywhere (no whitespace, none raw in a string), so one
    // check here lets strings look only for their closing quote.
    if bytes.iter().fold(false, |seen, &b| seen | (b < 0x20)) {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader { s: text, i: 0 };
    r.lit("{\"v\":")?;
    const CURRENT: u64 = crate::types::SCHEMA_VERSION as u64;
    let v = match r.u64()? {
        v @ (2..=CURRENT) => v as u16,
        _ => return None,
    };
    r.lit(",\"id\":")?;
    let id = r.uuid()?;
    r.lit(",\"seq\":")?;
    let seq = r.u64()?;
    r.lit(",\"account\":")?;
    let account = r.string()?;
    r.lit(",\"account_seq\":")?;
    let account_seq = r.u64()?;
    r.lit(",\"event_time\":")?;
    let event_time = r.time()?;
    r.lit(",\"record_time\":")?;
    let record_time = r.time()?;
    r.lit(",\"idempotency_key\":")?;
    let idempotency_key = r.opt(Reader::string)?;
    r.lit(",\"request_digest\":")?;
    let request_digest = r.opt(Reader::hash)?;
    r.lit(",\"correlation_id\":")?;
    let correlation_id = r.opt(Reader::string)?;
    r.lit(",\"context\":{\"channel\":")?;
    let channel = r.string()?;
    r.lit(",\"device_id\":")?;
    let device_id = r.opt(Reader::string)?;
    r.lit(",\"ip\":")?;
    let ip = r.opt(Reader::string)?;
    r.lit(",\"user_agent\":")?;
    let user_agent = r.opt(Reader::string)?;
    let device_fp = match r.lit(",\"device_fp\":") {
        Some(()) => Some(r.hash()?),
        None => None,
    };
    let ip_fp = match r.lit(",\"ip_fp\":") {
        Some(()) => Some(r.hash()?),
        None => None,
    };
    if v < 9 && (device_fp.is_some() || ip_fp.is_some()) {
        return None; // the general decoder refuses it, and says why
    }
    r.lit("},\"prev_hash\":")?;
    let prev_hash = r.hash()?;
    r.lit(",\"payload\":")?;
    let payload = r.payload()?;
    r.lit("}")?;
    if r.i != r.s.len() {
        return None;
    }
    Some(Event {
        v,
        id,
        seq,
        account,
        account_seq,
        event_time,
        record_time,
        idempotency_key,
        request_digest,
        correlation_id,
        context: Context {
            channel,
            device_id,
            ip,
            user_agent,
            device_fp,
            ip_fp,
        },
        prev_hash,
        payload,
    })
}

/// Writes the canonical bytes of `e` into `out` (cleared first).
pub fn encode_into(e: &Event, out: &mut Vec<u8>) {
    out.clear();
    let mut w = Writer(out);
    w.raw("{\"v\":");
    w.u64(u64::from(e.v));
    w.raw(",\"id\":");
    w.uuid(&e.id);
    w.raw(",\"seq\":");
    w.u64(e.seq);
    w.raw(",\"account\":");
    w.str(&e.account);
    w.raw(",\"account_seq\":");
    w.u64(e.account_seq);
    w.raw(",\"event_time\":");
    w.time(&e.event_time);
    w.raw(",\"record_time\":");
    w.time(&e.record_time);
    w.raw(",\"idempotency_key\":");
    w.opt_str(e.idempotency_key.as_deref());
    w.raw(",\"request_digest\":");
    match &e.request_digest {
        Some(h) => w.hash(h),
        None => w.raw("null"),
    }
    w.raw(",\"correlation_id\":");
    w.opt_str(e.correlation_id.as_deref());
    w.raw(",\"context\":{\"channel\":");
    w.str(&e.context.channel);
    w.raw(",\"device_id\":");
    w.opt_str(e.context.device_id.as_deref());
    w.raw(",\"ip\":");
    w.opt_str(e.context.ip.as_deref());
    w.raw(",\"user_agent\":");
    w.opt_str(e.context.user_agent.as_deref());
    if let Some(h) = &e.context.device_fp {
        w.raw(",\"device_fp\":");
        w.hash(h);
    }
    if let Some(h) = &e.context.ip_fp {
        w.raw(",\"ip_fp\":");
        w.hash(h);
    }
    w.raw("},\"prev_hash\":");
    w.hash(&e.prev_hash);
    w.raw(",\"payload\":{\"type\":");
    w.str(e.payload.event_type());
    match &e.payload {
        Payload::WalletBound {
            binding_id,
            provider,
            wallet,
            factors,
            agreement_id,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("provider", provider.as_str());
            w.wallet(wallet);
            w.factors(factors);
            w.key_str("agreement_id", agreement_id);
        }
        Payload::BindFailed {
            provider,
            wallet,
            factors,
            reason,
        } => {
            w.key_str("provider", provider.as_str());
            w.wallet(wallet);
            w.factors(factors);
            w.reason(reason.code());
            match reason {
                BindFailure::InvalidInput { field } => w.key_str("field", field),
                BindFailure::Maintenance { side } => w.side(*side),
                BindFailure::AlreadyBound { binding_id } => w.key_uuid("binding_id", binding_id),
                BindFailure::VerificationFactorFailed { factor } => w.key_str("factor", factor.as_str()),
                BindFailure::BindingLimitReached { limit } => {
                    w.raw(",\"limit\":");
                    w.u64(u64::from(*limit));
                }
                BindFailure::TooManyAttempts { until } => {
                    w.raw(",\"until\":");
                    w.time(until);
                }
                BindFailure::WalletFrozen | BindFailure::WalletClosed | BindFailure::Network => {}
            }
            w.raw("}");
        }
        Payload::PaymentSucceeded {
            binding_id,
            provider,
            wallet,
            order_id,
            amount_minor,
            currency,
            factors,
            authorization_id,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("provider", provider.as_str());
            w.wallet(wallet);
            w.key_str("order_id", order_id);
            w.amount(*amount_minor, currency);
            w.factors(factors);
            w.key_str("authorization_id", authorization_id);
        }
        Payload::PaymentFailed {
            binding_id,
            order_id,
            amount_minor,
            currency,
            factors,
            reason,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("order_id", order_id);
            w.amount(*amount_minor, currency);
            w.factors(factors);
            w.reason(reason.code());
            match reason {
                PaymentFailure::VerificationFactorFailed { factor } => w.key_str("factor", factor.as_str()),
                PaymentFailure::Maintenance { side } => w.side(*side),
                PaymentFailure::BindingLocked { alert_id, until } => {
                    w.key_str("alert_id", alert_id);
                    w.raw(",\"until\":");
                    w.time(until);
                }
                PaymentFailure::TooManyAttempts { until } => {
                    w.raw(",\"until\":");
                    w.time(until);
                }
                PaymentFailure::OrderAlreadyPaid { payment_seq } => {
                    w.raw(",\"payment_seq\":");
                    w.u64(*payment_seq);
                }
                PaymentFailure::WrongPassword
                | PaymentFailure::BindingNotActive
                | PaymentFailure::WalletFrozen
                | PaymentFailure::WalletClosed
                | PaymentFailure::InsufficientFunds
                | PaymentFailure::Network => {}
            }
            w.raw("}");
        }
        Payload::WalletUnbound {
            binding_id,
            provider,
            wallet,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("provider", provider.as_str());
            w.wallet(wallet);
        }
        Payload::UnbindFailed { binding_id, reason } => {
            w.key_uuid("binding_id", binding_id);
            w.reason(reason.code());
            if let UnbindFailure::Maintenance { side } = reason {
                w.side(*side);
            }
            w.raw("}");
        }
        Payload::BindingLocked {
            binding_id,
            alert_id,
            until,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("alert_id", alert_id);
            w.raw(",\"until\":");
            w.time(until);
        }
        Payload::BindingLockFailed {
            binding_id,
            alert_id,
            reason,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("alert_id", alert_id);
            w.reason(reason.code());
            w.raw("}");
        }
        Payload::BindingUnlocked {
            binding_id,
            alert_id,
            cause,
        } => {
            w.key_uuid("binding_id", binding_id);
            w.key_str("alert_id", alert_id);
            w.key_str(
                "cause",
                match cause {
                    UnlockCause::Manual => "manual",
                    UnlockCause::Expired => "expired",
                },
            );
        }
        Payload::BindingUnlockFailed { binding_id, reason } => {
            w.key_uuid("binding_id", binding_id);
            w.reason(reason.code());
            w.raw("}");
        }
        Payload::AlertTriaged {
            alert_id,
            action,
            operator,
            assignee,
            note,
        } => {
            w.key_str("alert_id", alert_id);
            w.key_str("action", action.as_str());
            w.key_str("operator", operator);
            w.raw(",\"assignee\":");
            w.opt_str(assignee.as_deref());
            w.key_str("note", note);
        }
        Payload::SubjectErased { operator } => {
            w.key_str("operator", operator);
        }
    }
    w.raw("}}");
}

/// Appends JSON to the output exactly as serde_json's compact formatter does.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[at..]);
    }

    /// A string with serde_json's escapes: `"` and `\`, the short forms `\b \t \n \f \r`, and
    /// `\u00xx` (lowercase hex) for the other control characters; everything else as is.
    fn str(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = s.as_bytes();
        self.0.push(b'"');
        let mut from = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let short = match b {
                b'"' => b'"',
                b'\\' => b'\\',
                0x08 => b'b',
                b'\t' => b't',
                b'\n' => b'n',
                0x0c => b'f',
                b'\r' => b'r',
                0x00..=0x1f => 0,
                _ => continue,
            };
            self.0.extend_from_slice(&bytes[from..i]);
            if short == 0 {
                self.0.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            } else {
                self.0.extend_from_slice(&[b'\\', short]);
            }
            from = i + 1;
        }
        self.0.extend_from_slice(&bytes[from..]);
        self.0.push(b'"');
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    fn uuid(&mut self, id: &Uuid) {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.0.push(b'"');
        self.0
            .extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
        self.0.push(b'"');
    }

    fn hash(&mut self, h: &Hash) {
        self.0.push(b'"');
        self.0.extend_from_slice(&h.hex_bytes());
        self.0.push(b'"');
    }

    fn time(&mut self, t: &DateTime<Utc>) {
        match micros::format(t) {
            Some(text) => {
                self.0.push(b'"');
                self.0.extend_from_slice(&text);
                self.0.push(b'"');
            }
            None => self.str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        }
    }

    /// `,"name":"value"`
    fn key_str(&mut self, name: &str, value: &str) {
        self.raw(",\"");
        self.raw(name);
        self.raw("\":");
        self.str(value);
    }

    fn key_uuid(&mut self, name: &str, id: &Uuid) {
        self.raw(",\"");
        self.raw(name);
        self.raw("\":");
        self.uuid(id);
    }

    fn wallet(&mut self, w: &WalletRef) {
        self.raw(",\"wallet\":{\"masked\":");
        self.str(&w.masked);
        self.raw(",\"fingerprint\":");
        self.hash(&w.fingerprint);
        self.raw("}");
    }

    fn factors(&mut self, factors: &[FactorCheck]) {
        self.raw(",\"factors\":[");
        for (i, f) in factors.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.raw("{\"factor\":");
            self.str(f.factor.as_str());
            self.raw(if f.passed {
                ",\"passed\":true}"
            } else {
                ",\"passed\":false}"
            });
        }
        self.raw("]");
    }

    fn amount(&mut self, amount_minor: i64, currency: &Currency) {
        self.raw(",\"amount_minor\":");
        if amount_minor < 0 {
            self.raw("-");
        }
        self.u64(amount_minor.unsigned_abs());
        self.key_str("currency", currency.as_str());
    }

    /// Opens a failure reason, `,"reason":{"code":"..."`; the caller adds its fields and `}`.
    fn reason(&mut self, code: &str) {
        self.raw(",\"reason\":{\"code\":");
        self.str(code);
    }

    fn side(&mut self, side: Side) {
        self.key_str(
            "side",
            match side {
                Side::Provider => "provider",
                Side::Platform => "platform",
            },
        );
    }
}

/// The next field, `,"name":value`, read with the reader's method `read` (fields come in
/// declaration order); `None` from the enclosing function when it is not there.
macro_rules! field {
    ($r:ident, $name:literal, $read:ident) => {{
        $r.lit(concat!(",\"", $name, "\":"))?;
        $r.$read()?
    }};
}

struct Reader<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.i..]
    }

    /// Exactly these bytes next.
    #[inline(always)]
    fn lit(&mut self, l: &str) -> Option<()> {
        self.rest().starts_with(l.as_bytes()).then(|| self.i += l.len())
    }

    /// A string without escapes, borrowed (control characters were refused up front).
    fn str(&mut self) -> Option<&'a str> {
        self.lit("\"")?;
        let start = self.i;
        let len = memchr::memchr2(b'"', b'\\', self.rest())?;
        if self.rest()[len] != b'"' {
            return None;
        }
        self.i += len + 1;
        // Both ends are at ASCII bytes, so on character boundaries.
        Some(&self.s[start..start + len])
    }

    /// A string of exactly `n` bytes (ids, hashes, times), borrowed; what the caller parses it
    /// with refuses a quote or a backslash inside.
    fn fixed(&mut self, n: usize) -> Option<&'a [u8]> {
        let r = self.rest();
        if r.len() < n + 2 || r[0] != b'"' || r[n + 1] != b'"' {
            return None;
        }
        self.i += n + 2;
        Some(&r[1..=n])
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    #[inline(always)]
    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.lit("null").is_some() {
            return Some(None);
        }
        read(self).map(Some)
    }

    /// A non-negative integer as JSON writes it: no sign, no leading zero, no fraction.
    fn u64(&mut self) -> Option<u64> {
        let digits = self.rest().iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 || (digits > 1 && self.rest()[0] == b'0') {
            return None;
        }
        if matches!(self.rest().get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n: u64 = 0;
        for &b in &self.rest()[..digits] {
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    fn i64(&mut self) -> Option<i64> {
        if self.lit("-").is_some() {
            let n = self.u64()?;
            if n == 0 {
                return None; // `-0` is not canonical
            }
            return 0i64.checked_sub_unsigned(n);
        }
        i64::try_from(self.u64()?).ok()
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        if self.lit("true").is_some() {
            Some(true)
        } else {
            self.lit("false").map(|_| false)
        }
    }

    /// The hyphenated form only (36 bytes), as the encoder writes it.
    fn uuid(&mut self) -> Option<Uuid> {
        Uuid::try_parse_ascii(self.fixed(36)?).ok()
    }

    fn hash(&mut self) -> Option<Hash> {
        crate::hash::hash_from_hex(self.fixed(64)?)
    }

    fn time(&mut self) -> Option<DateTime<Utc>> {
        crate::types::micros::parse_canonical(self.fixed(27)?)
    }

    fn provider(&mut self) -> Option<Provider> {
        Provider::parse(self.str()?).ok()
    }

    fn currency(&mut self) -> Option<Currency> {
        Currency::parse(self.str()?).ok()
    }

    fn wallet(&mut self) -> Option<WalletRef> {
        self.lit("{\"masked\":")?;
        let wallet = WalletRef {
            masked: self.string()?,
            fingerprint: field!(self, "fingerprint", hash),
        };
        self.lit("}")?;
        Some(wallet)
    }

    fn factor(&mut self) -> Option<Factor> {
        Some(match self.str()? {
            "password" => Factor::Password,
            "sms" => Factor::Sms,
            "fingerprint" => Factor::Fingerprint,
            "face" => Factor::Face,
            _ => return None,
        })
    }

    fn side(&mut self) -> Option<Side> {
        Some(match self.str()? {
            "provider" => Side::Provider,
            "platform" => Side::Platform,
            _ => return None,
        })
    }

    fn unlock_cause(&mut self) -> Option<UnlockCause> {
        Some(match self.str()? {
            "manual" => UnlockCause::Manual,
            "expired" => UnlockCause::Expired,
            _ => return None,
        })
    }

    fn factors(&mut self) -> Option<Vec<FactorCheck>> {
        self.lit("[")?;
        let mut out = Vec::new();
        if self.lit("]").is_some() {
            return Some(out);
        }
        loop {
            self.lit("{\"factor\":")?;
            out.push(FactorCheck {
                factor: self.factor()?,
                passed: field!(self, "passed", bool),
            });
            self.lit("}")?;
            if self.lit("]").is_some() {
                return Some(out);
            }
            self.lit(",")?;
        }
    }

    /// `{"code":"<code>"` of a failure reason; the caller reads the fields and the `}`.
    fn code(&mut self) -> Option<&'a str> {
        self.lit("{\"code\":")?;
        self.str()
    }

    fn end(&mut self) -> Option<()> {
        self.lit("}")
    }

    fn bind_failure(&mut self) -> Option<BindFailure> {
        let reason = match self.code()? {
            "wallet_frozen" => BindFailure::WalletFrozen,
            "wallet_closed" => BindFailure::WalletClosed,
            "invalid_input" => BindFailure::InvalidInput {
                field: field!(self, "field", string),
            },
            "network" => BindFailure::Network,
            "maintenance" => BindFailure::Maintenance {
                side: field!(self, "side", side),
            },
            "already_bound" => BindFailure::AlreadyBound {
                binding_id: field!(self, "binding_id", uuid),
            },
            "verification_factor_failed" => BindFailure::VerificationFactorFailed {
                factor: field!(self, "factor", factor),
            },
            "binding_limit_reached" => BindFailure::BindingLimitReached {
                limit: field!(self, "limit", u32),
            },
            "too_many_attempts" => BindFailure::TooManyAttempts {
                until: field!(self, "until", time),
            },
            _ => return None,
        };
        self.end().map(|_| reason)
    }

    fn payment_failure(&mut self) -> Option<PaymentFailure> {
        let reason = match self.code()? {
            "wrong_password" => PaymentFailure::WrongPassword,
            "binding_not_active" => PaymentFailure::BindingNotActive,
            "wallet_frozen" => PaymentFailure::WalletFrozen,
            "wallet_closed" => PaymentFailure::WalletClosed,
            "insufficient_funds" => PaymentFailure::InsufficientFunds,
            "verification_factor_failed" => PaymentFailure::VerificationFactorFailed {
                factor: field!(self, "factor", factor),
            },
            "network" => PaymentFailure::Network,
            "maintenance" => PaymentFailure::Maintenance {
                side: field!(self, "side", side),
            },
            "binding_locked" => PaymentFailure::BindingLocked {
                alert_id: field!(self, "alert_id", string),
                until: field!(self, "until", time),
            },
            "too_many_attempts" => PaymentFailure::TooManyAttempts {
                until: field!(self, "until", time),
            },
            "order_already_paid" => PaymentFailure::OrderAlreadyPaid {
                payment_seq: field!(self, "payment_seq", u64),
            },
            _ => return None,
        };
        self.end().map(|_| reason)
    }

    fn lock_failure(&mut self) -> Option<LockFailure> {
        let reason = match self.code()? {
            "not_bound" => LockFailure::NotBound,
            "not_locked" => LockFailure::NotLocked,
            _ => return None,
        };
        self.end().map(|_| reason)
    }

    fn unbind_failure(&mut self) -> Option<UnbindFailure> {
        let reason = match self.code()? {
            "not_bound" => UnbindFailure::NotBound,
            "maintenance" => UnbindFailure::Maintenance {
                side: field!(self, "side", side),
            },
            _ => return None,
        };
        self.end().map(|_| reason)
    }

    fn payload(&mut self) -> Option<Payload> {
        self.lit("{\"type\":")?;
        let kind = self.str()?;
        let payload = match kind {
            "wallet_bound" => Payload::WalletBound {
                binding_id: field!(self, "binding_id", uuid),
                provider: field!(self, "provider", provider),
                wallet: field!(self, "wallet", wallet),
                factors: field!(self, "factors", factors),
                agreement_id: field!(self, "agreement_id", string),
            },
            "bind_failed" => Payload::BindFailed {
                provider: field!(self, "provider", provider),
                wallet: field!(self, "wallet", wallet),
                factors: field!(self, "factors", factors),
                reason: field!(self, "reason", bind_failure),
            },
            "payment_succeeded" => Payload::PaymentSucceeded {
                binding_id: field!(self, "binding_id", uuid),
                provider: field!(self, "provider", provider),
                wallet: field!(self, "wallet", wallet),
                order_id: field!(self, "order_id", string),
                amount_minor: field!(self, "amount_minor", i64),
                currency: field!(self, "currency", currency),
                factors: field!(self, "factors", factors),
                authorization_id: field!(self, "authorization_id", string),
            },
            "payment_failed" => Payload::PaymentFailed {
                binding_id: field!(self, "binding_id", uuid),
                order_id: field!(self, "order_id", string),
                amount_minor: field!(self, "amount_minor", i64),
                currency: field!(self, "currency", currency),
                factors: field!(self, "factors", factors),
                reason: field!(self, "reason", payment_failure),
            },
            "wallet_unbound" => Payload::WalletUnbound {
                binding_id: field!(self, "binding_id", uuid),
                provider: field!(self, "provider", provider),
                wallet: field!(self, "wallet", wallet),
            },
            "unbind_failed" => Payload::UnbindFailed {
                binding_id: field!(self, "binding_id", uuid),
                reason: field!(self, "reason", unbind_failure),
            },
            "binding_locked" => Payload::BindingLocked {
                binding_id: field!(self, "binding_id", uuid),
                alert_id: field!(self, "alert_id", string),
                until: field!(self, "until", time),
            },
            "binding_lock_failed" => Payload::BindingLockFailed {
                binding_id: field!(self, "binding_id", uuid),
                alert_id: field!(self, "alert_id", string),
                reason: field!(self, "reason", lock_failure),
            },
            "binding_unlocked" => Payload::BindingUnlocked {
                binding_id: field!(self, "binding_id", uuid),
                alert_id: field!(self, "alert_id", string),
                cause: field!(self, "cause", unlock_cause),
            },
            "binding_unlock_failed" => Payload::BindingUnlockFailed {
                binding_id: field!(self, "binding_id", uuid),
                reason: field!(self, "reason", lock_failure),
            },
            "alert_triaged" => Payload::AlertTriaged {
                alert_id: field!(self, "alert_id", string),
                action: TriageAction::parse(&field!(self, "action", string))?,
                operator: field!(self, "operator", string),
                assignee: {
                    self.lit(",\"assignee\":")?;
                    self.opt(Reader::string)?
                },
                note: field!(self, "note", string),
            },
            "subject_erased" => Payload::SubjectErased {
                operator: field!(self, "operator", string),
            },
            _ => return None,
        };
        self.end().map(|_| payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::GENESIS_HASH;
    use crate::codec::{decode_general, encode};
    use chrono::TimeZone;

    fn wallet(n: u8) -> WalletRef {
        WalletRef {
            masked: "138****5678".into(),
            fingerprint: Hash([n; 32]),
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Every payload variant and every failure reason, with and without the optional parts.
    fn payloads() -> Vec<Payload> {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap() + chrono::Duration::microseconds(123_456);
        let p = || Provider::parse("alipay").unwrap();
        let f = vec![
            FactorCheck {
                factor: Factor::Password,
                passed: true,
            },
            FactorCheck {
                factor: Factor::Sms,
                passed: false,
            },
        ];
        let cny = Currency::parse("CNY").unwrap();
        let mut out = vec![
            Payload::WalletBound {
                binding_id: id(1),
                provider: p(),
                wallet: wallet(1),
                factors: f.clone(),
                agreement_id: "agr-1".into(),
            },
            Payload::WalletBound {
                binding_id: id(1),
                provider: Provider::parse("other:my-pay_2").unwrap(),
                wallet: wallet(2),
                factors: vec![],
                agreement_id: String::new(),
            },
            Payload::PaymentSucceeded {
                binding_id: id(2),
                provider: p(),
                wallet: wallet(3),
                order_id: "o-1".into(),
                amount_minor: 1,
                currency: cny,
                factors: f.clone(),
                authorization_id: "a-1".into(),
            },
            Payload::PaymentSucceeded {
                binding_id: id(2),
                provider: p(),
                wallet: wallet(3),
                order_id: "订单-1".into(),
                amount_minor: i64::MAX,
                currency: Currency::parse("JPY").unwrap(),
                factors: vec![FactorCheck {
                    factor: Factor::Face,
                    passed: true,
                }],
                authorization_id: "a".into(),
            },
            Payload::WalletUnbound {
                binding_id: id(3),
                provider: p(),
                wallet: wallet(4),
            },
            Payload::BindingLocked {
                binding_id: id(4),
                alert_id: "brute_force-17".into(),
                until: t,
            },
            Payload::BindingUnlocked {
                binding_id: id(4),
                alert_id: "x".into(),
                cause: UnlockCause::Manual,
            },
            Payload::BindingUnlocked {
                binding_id: id(4),
                alert_id: "x".into(),
                cause: UnlockCause::Expired,
            },
            Payload::AlertTriaged {
                alert_id: "password_brute_force-17".into(),
                action: TriageAction::Assigned,
                operator: "alice".into(),
                assignee: Some("bob".into()),
                note: "call the holder now \u{4f60}".into(),
            },
            Payload::AlertTriaged {
                alert_id: "x".into(),
                action: TriageAction::FalsePositive,
                operator: "alice".into(),
                assignee: None,
                note: String::new(),
            },
            Payload::SubjectErased {
                operator: "privacy-officer".into(),
            },
        ];
        let bind = [
            BindFailure::WalletFrozen,
            BindFailure::WalletClosed,
            BindFailure::InvalidInput {
                field: "wallet_account".into(),
            },
            BindFailure::Network,
            BindFailure::Maintenance { side: Side::Provider },
            BindFailure::Maintenance { side: Side::Platform },
            BindFailure::AlreadyBound { binding_id: id(9) },
            BindFailure::VerificationFactorFailed {
                factor: Factor::Fingerprint,
            },
            BindFailure::BindingLimitReached { limit: u32::MAX },
            BindFailure::TooManyAttempts { until: t },
        ];
        out.extend(bind.into_iter().map(|reason| Payload::BindFailed {
            provider: p(),
            wallet: wallet(5),
            factors: f.clone(),
            reason,
        }));
        let pay = [
            PaymentFailure::WrongPassword,
            PaymentFailure::BindingNotActive,
            PaymentFailure::WalletFrozen,
            PaymentFailure::WalletClosed,
            PaymentFailure::InsufficientFunds,
            PaymentFailure::VerificationFactorFailed { factor: Factor::Sms },
            PaymentFailure::Network,
            PaymentFailure::Maintenance { side: Side::Platform },
            PaymentFailure::BindingLocked {
                alert_id: "ring-5".into(),
                until: t,
            },
            PaymentFailure::TooManyAttempts { until: t },
            PaymentFailure::OrderAlreadyPaid { payment_seq: 41 },
        ];
        out.extend(pay.into_iter().map(|reason| Payload::PaymentFailed {
            binding_id: id(6),
            order_id: "o-2".into(),
            amount_minor: -42,
            currency: cny,
            factors: vec![],
            reason,
        }));
        out.extend(
            [
                UnbindFailure::NotBound,
                UnbindFailure::Maintenance { side: Side::Provider },
            ]
            .map(|reason| Payload::UnbindFailed {
                binding_id: id(7),
                reason,
            }),
        );
        for reason in [LockFailure::NotBound, LockFailure::NotLocked] {
            out.push(Payload::BindingLockFailed {
                binding_id: id(8),
                alert_id: "a-1".into(),
                reason: reason.clone(),
            });
            out.push(Payload::BindingUnlockFailed {
                binding_id: id(8),
                reason,
            });
        }
        out
    }

    fn events() -> Vec<Event> {
        payloads()
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                let full = i % 2 == 0;
                let some = |s: &str| full.then(|| s.to_owned());
                Event {
                    v: crate::SCHEMA_VERSION,
                    id: Uuid::now_v7(),
                    seq: if i == 3 { u64::MAX } else { i as u64 + 1 },
                    account: format!("acct-{i}"),
                    account_seq: i as u64 * 1_000_003,
                    event_time: Utc.with_ymd_and_hms(2026, 1 + (i % 12) as u32, 28, 23, 59, 59).unwrap()
                        + chrono::Duration::microseconds(i as i64 * 7),
                    record_time: Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
                    idempotency_key: some("k-1"),
                    request_digest: full.then_some(Hash([0xab; 32])),
                    correlation_id: some("checkout/42"),
                    context: Context {
                        channel: "app".into(),
                        device_id: some("dev-1"),
                        ip: some("10.0.0.1"),
                        user_agent: some("Mozilla/5.0 (ü)"),
                        // v9: with either fingerprint, both, or none.
                        device_fp: (i % 3 != 0).then_some(Hash([0x11; 32])),
                        ip_fp: (i % 2 == 0).then_some(Hash([0xe2; 32])),
                    },
                    prev_hash: if i == 0 { GENESIS_HASH } else { Hash([i as u8; 32]) },
                    payload,
                }
            })
            .collect()
    }

    /// A version 8 event with a v9 fingerprint is not valid, on either path; as version 9 it is.
    #[test]
    fn fingerprints_are_of_version_9_on() {
        let e = events().into_iter().find(|e| e.context.device_fp.is_some()).unwrap();
        let text = String::from_utf8(encode(&e)).unwrap();
        assert!(text.contains(",\"device_fp\":\"1111"), "{text}");
        let v8 = text.replacen("{\"v\":9,", "{\"v\":8,", 1);
        assert_eq!(decode(v8.as_bytes()), None, "not read directly");
        let refused = crate::decode(v8.as_bytes()).unwrap_err().to_string();
        assert!(refused.contains("schema version 9"), "{refused}");
        let mut plain = e.clone();
        plain.context.device_fp = None;
        plain.context.ip_fp = None;
        let text = String::from_utf8(encode(&plain)).unwrap();
        let v8 = text.replacen("{\"v\":9,", "{\"v\":8,", 1);
        assert_eq!(
            crate::decode(v8.as_bytes()).map(|e| e.context),
            Ok(plain.context),
            "a v8 event reads as it did"
        );
    }

    #[test]
    fn every_variant_is_read_directly_and_equals_the_general_decoder() {
        let all = events();
        assert_eq!(all.len(), 38);
        for e in all {
            let bytes = encode(&e);
            assert_eq!(decode(&bytes).as_ref(), Some(&e), "{}", String::from_utf8_lossy(&bytes));
            assert_eq!(decode_general(&bytes).as_ref(), Ok(&e));
        }
    }

    /// The direct writer against the definition of the encoding (serde_json over the types).
    fn assert_writes_what_serde_writes(e: &Event) {
        let mut direct = b"left over from the last event".to_vec();
        encode_into(e, &mut direct);
        let serde = serde_json::to_vec(e).unwrap();
        assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&serde));
    }

    #[test]
    fn the_writer_writes_what_serde_writes_for_every_variant() {
        for e in events() {
            assert_writes_what_serde_writes(&e);
        }
    }

    #[test]
    fn the_writer_escapes_strings_and_formats_edge_values_as_serde_does() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let odd = [
            "",
            "\"",
            "\\",
            "a\"b\\c",
            "/",
            "\u{7f}",
            "ü 订单 😀",
            "\u{2028}\u{2029}",
            "tab\tnew\nline\r\u{8}\u{c}end",
            every_control.as_str(),
        ];
        let far = Utc.with_ymd_and_hms(12345, 6, 7, 8, 9, 10).unwrap();
        let before_zero = Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 1_500_000)
            .unwrap()
            .and_utc();
        let mut cases = 0;
        for (i, mut e) in events().into_iter().enumerate() {
            let s = odd[i % odd.len()].to_owned();
            e.account = s.clone();
            e.context.channel = s.clone();
            e.context.user_agent = Some(s.clone());
            e.correlation_id = Some(format!("{s}{s}"));
            e.event_time = [far, before_zero, leap, e.event_time][i % 4];
            e.record_time = [leap, far, e.record_time, before_zero][i % 4];
            match &mut e.payload {
                Payload::PaymentFailed {
                    amount_minor, order_id, ..
                } => {
                    *amount_minor = [i64::MIN, 0, -1, i64::MAX][i % 4];
                    *order_id = s.clone();
                }
                Payload::BindFailed { wallet, reason, .. } => {
                    wallet.masked = s.clone();
                    if let BindFailure::InvalidInput { field } = reason {
                        *field = s.clone();
                    }
                }
                Payload::BindingLocked { alert_id, until, .. } => {
                    *alert_id = s.clone();
                    *until = far;
                }
                _ => {}
            }
            assert_writes_what_serde_writes(&e);
            cases += 1;
        }
        assert_eq!(cases, 38);
    }

    #[test]
    fn version_2_is_read_directly_and_version_1_is_not() {
        // An event without fingerprints (a version 2 event cannot have them).
        let bytes = encode(&events()[3]);
        let v2 = [b"{\"v\":2,".as_slice(), &bytes[7..]].concat();
        assert_eq!(decode(&v2).map(|e| e.v), Some(2));
        let v1 = [b"{\"v\":1,".as_slice(), &bytes[7..]].concat();
        assert_eq!(decode(&v1), None, "v1 needs upcasting: the general decoder's job");
    }

    #[test]
    fn what_it_does_not_expect_goes_to_the_general_decoder() {
        let e = events().remove(3);
        let bytes = encode(&e);
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Valid JSON for the general decoder, not canonical: each is left to it, which
        // decodes it to the same event.
        let variants = [
            format!("{text} "),
            text.replacen("{\"v\":9,", "{ \"v\":9,", 1),
            text.replacen("\"account\":\"acct-3\"", "\"account\":\"acct\\u002d3\"", 1),
            text.replacen("\"idempotency_key\":null,", "", 1).replacen(
                "\"request_digest\":null,",
                "\"idempotency_key\":null,\"request_digest\":null,\"extra\":1,",
                1,
            ),
        ];
        for v in &variants {
            assert_ne!(v, &text);
            assert_eq!(decode(v.as_bytes()), None, "{v}");
            assert_eq!(decode_general(v.as_bytes()).as_ref(), Ok(&e), "{v}");
            assert_eq!(crate::decode(v.as_bytes()).as_ref(), Ok(&e));
        }
        // An escaped quote in a string: not read directly, decoded by the general decoder.
        let mut quoted = e.clone();
        quoted.context.user_agent = Some("say \"hi\"\n".into());
        let b = encode(&quoted);
        assert_eq!(decode(&b), None);
        assert_eq!(crate::decode(&b), Ok(quoted));
    }

    /// Corrupts canonical bytes in every way a byte can go wrong, one at a time: whenever the
    /// direct reader accepts the result, the general decoder must accept it too and give the
    /// same event.
    #[test]
    fn on_corrupted_bytes_it_never_disagrees_with_the_general_decoder() {
        let replacements = b"0123456789abcdefABCDEF\"\\{}[],:-.eE+ nulltrufs\x00\x1f\x7f\xc3\xa9";
        let (mut accepted, mut tried) = (0u64, 0u64);
        for e in events().into_iter().step_by(3).take(5) {
            let bytes = encode(&e);
            for at in 0..bytes.len() {
                let mut cases: Vec<Vec<u8>> = replacements
                    .iter()
                    .filter(|&&r| r != bytes[at])
                    .map(|&r| {
                        let mut b = bytes.clone();
                        b[at] = r;
                        b
                    })
                    .collect();
                let mut removed = bytes.clone();
                removed.remove(at);
                cases.push(removed);
                let mut doubled = bytes.clone();
                doubled.insert(at, bytes[at]);
                cases.push(doubled);
                for case in cases {
                    tried += 1;
                    if let Some(direct) = decode(&case) {
                        accepted += 1;
                        assert_eq!(
                            decode_general(&case).as_ref(),
                            Ok(&direct),
                            "{}",
                            String::from_utf8_lossy(&case)
                        );
                    }
                }
            }
        }
        // Some corruptions are still valid events (another digit, another hex letter): the
        // comparison above ran on those.
        assert!(
            accepted > 1_000 && accepted < tried / 2,
            "accepted {accepted} of {tried}"
        );
    }
}
