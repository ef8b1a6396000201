//! Commands: what callers send (`*Request`, deserialized from JSON by the HTTP layer or built
//! by library users) and their validated forms. Validation happens before anything else; a
//! request that fails it changes nothing.

use bindledger_events::{types::micros, Context, Currency, Factor, Provider, AMOUNT_MINOR_MAX};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::Error;
use crate::secret::{normalize_wallet_account, SecretString};

/// Limits on identifiers and free text.
pub const ACCOUNT_LEN_MAX: usize = 64;
pub const KEY_LEN_MAX: usize = 128;
pub const ORDER_ID_LEN_MAX: usize = 64;
pub const PASSWORD_LEN_MAX: usize = 64;
pub const FACTOR_SECRET_LEN_MAX: usize = 512;
pub const USER_AGENT_LEN_MAX: usize = 256;
/// How far in the future a caller-supplied event time may be (clock skew).
pub const EVENT_TIME_SKEW_MAX_S: i64 = 300;

#[derive(Debug)]
pub struct FactorInput {
    /// `sms`, `fingerprint` or `face`.
    pub kind: String,
    /// The SMS code or the biometric assertion. Never stored.
    pub code: SecretString,
}

#[derive(Debug, Default)]
pub struct ContextInput {
    pub channel: Option<String>,
    pub device_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Fields every command may carry.
#[derive(Debug, Default)]
pub struct CommonInput {
    pub idempotency_key: Option<String>,
    pub expected_version: Option<u64>,
    pub correlation_id: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    pub context: Option<ContextInput>,
}

#[derive(Debug)]
pub struct BindRequest {
    pub provider: String,
    /// The phone number or wallet account number. Never stored.
    pub wallet_account: SecretString,
    /// Never stored.
    pub payment_password: SecretString,
    pub factor: Option<FactorInput>,
    pub common: CommonInput,
}

#[derive(Debug)]
pub struct PayRequest {
    pub binding_id: String,
    pub order_id: String,
    pub amount_minor: i64,
    /// ISO 4217; default CNY.
    pub currency: Option<String>,
    /// Never stored.
    pub payment_password: SecretString,
    pub factor: Option<FactorInput>,
    pub common: CommonInput,
}

#[derive(Debug)]
pub struct UnbindRequest {
    /// Must be true: the user confirmed the unbind.
    pub confirm: bool,
    pub common: CommonInput,
}

/// A command's JSON body, read field by field, so that every refusal names its field (a
/// `'static` name from this file) and none carries what was sent: a wrong type is "has the
/// wrong type", never "invalid type: string \"809966\"" as a JSON decoder would say.
pub struct Fields {
    map: Map<String, Value>,
    /// `""` at the top level, `"factor."` or `"context."` inside those objects.
    nested: Option<&'static str>,
}

impl Fields {
    /// Parses a body: it must be one JSON object, with no key given twice at any depth (such a
    /// body has no one meaning: a reader keeping the last value would decide on one, another
    /// on the other).
    pub fn parse(bytes: &[u8]) -> Result<Fields, Error> {
        let value: Value = bindledger_events::parse_strict(bytes).map_err(|e| Error::Invalid {
            code: "malformed_json",
            field: None,
            message: if e.is_data() {
                "the body gives a key twice in one object"
            } else {
                "the body is not valid JSON"
            },
        })?;
        match value {
            Value::Object(map) => Ok(Fields { map, nested: None }),
            _ => Err(Error::Invalid {
                code: "invalid_request",
                field: None,
                message: "the body must be a JSON object",
            }),
        }
    }

    fn wrong_type(field: &'static str) -> Error {
        Error::invalid(
            "invalid_request",
            field,
            "this field has the wrong type (see the README for the API)",
        )
    }

    /// An optional field; `null` counts as absent.
    pub fn opt<T: DeserializeOwned>(&mut self, field: &'static str) -> Result<Option<T>, Error> {
        let key = field.rsplit('.').next().unwrap_or(field);
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v).map(Some).map_err(|_| Self::wrong_type(field)),
        }
    }

    /// A required field.
    pub fn req<T: DeserializeOwned>(&mut self, field: &'static str) -> Result<T, Error> {
        self.opt(field)?
            .ok_or_else(|| Error::invalid("invalid_request", field, "this field is required"))
    }

    /// An optional object (`factor`, `context`), read field by field in turn.
    fn object(&mut self, field: &'static str) -> Result<Option<Fields>, Error> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields {
                map,
                nested: Some(field),
            })),
            Some(_) => Err(Self::wrong_type(field)),
        }
    }

    /// Refuses a field the command does not take (without naming it: the name is the
    /// caller's text).
    pub fn finish(self) -> Result<(), Error> {
        if self.map.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid {
                code: "invalid_request",
                field: self.nested,
                message: "the body has a field this command does not take (see the README for the API)",
            })
        }
    }
}

/// What a request type reads from its body.
pub trait FromFields: Sized {
    fn from_fields(f: &mut Fields) -> Result<Self, Error>;

    /// Parses a whole body.
    fn from_body(bytes: &[u8]) -> Result<Self, Error> {
        let mut f = Fields::parse(bytes)?;
        let r = Self::from_fields(&mut f)?;
        f.finish()?;
        Ok(r)
    }
}

impl FromFields for FactorInput {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(FactorInput {
            kind: f.req("factor.kind")?,
            code: f.req("factor.code")?,
        })
    }
}

impl FromFields for ContextInput {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(ContextInput {
            channel: f.opt("context.channel")?,
            device_id: f.opt("context.device_id")?,
            ip: f.opt("context.ip")?,
            user_agent: f.opt("context.user_agent")?,
        })
    }
}

fn nested<T: FromFields>(f: &mut Fields, field: &'static str) -> Result<Option<T>, Error> {
    match f.object(field)? {
        None => Ok(None),
        Some(mut inner) => {
            let v = T::from_fields(&mut inner)?;
            inner.finish()?;
            Ok(Some(v))
        }
    }
}

impl FromFields for CommonInput {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        let event_time: Option<String> = f.opt("event_time")?;
        let event_time = match event_time {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(&t)
                    .map_err(|_| {
                        Error::invalid(
                            "invalid_event_time",
                            "event_time",
                            "event_time must be an RFC 3339 time, e.g. 2026-11-26T08:00:00Z",
                        )
                    })?
                    .with_timezone(&Utc),
            ),
        };
        Ok(CommonInput {
            idempotency_key: f.opt("idempotency_key")?,
            expected_version: f.opt("expected_version")?,
            correlation_id: f.opt("correlation_id")?,
            event_time,
            context: nested(f, "context")?,
        })
    }
}

impl FromFields for BindRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(BindRequest {
            provider: f.req("provider")?,
            wallet_account: f.req("wallet_account")?,
            payment_password: f.req("payment_password")?,
            factor: nested(f, "factor")?,
            common: CommonInput::from_fields(f)?,
        })
    }
}

impl FromFields for PayRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(PayRequest {
            binding_id: f.req("binding_id")?,
            order_id: f.req("order_id")?,
            amount_minor: f.req("amount_minor")?,
            currency: f.opt("currency")?,
            payment_password: f.req("payment_password")?,
            factor: nested(f, "factor")?,
            common: CommonInput::from_fields(f)?,
        })
    }
}

impl FromFields for UnbindRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(UnbindRequest {
            confirm: f.req("confirm")?,
            common: CommonInput::from_fields(f)?,
        })
    }
}

impl FromFields for UnlockRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(UnlockRequest {
            confirm: f.opt("confirm")?.unwrap_or(false),
            reason: f.opt("reason")?,
            common: CommonInput::from_fields(f)?,
        })
    }
}

/// `POST /v1/accounts/{account}/erasure`: an erasure cannot be undone, so it is confirmed.
#[derive(Debug, Clone)]
pub struct ErasureRequest {
    pub confirm: bool,
}

impl ErasureRequest {
    pub fn validate(&self) -> Result<(), Error> {
        if !self.confirm {
            return Err(Error::invalid(
                "confirmation_required",
                "confirm",
                "an erasure cannot be undone: it needs \"confirm\": true",
            ));
        }
        Ok(())
    }
}

impl FromFields for ErasureRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(ErasureRequest {
            confirm: f.opt("confirm")?.unwrap_or(false),
        })
    }
}

impl FromFields for TriageRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(TriageRequest {
            action: f.req("action")?,
            assignee: f.opt("assignee")?,
            note: f.opt("note")?,
            expected_triage_seq: f.opt("expected_triage_seq")?,
            common: CommonInput::from_fields(f)?,
        })
    }
}

/// Library users and tests may still read a request with serde; it goes through the same
/// field-by-field reader, so both refuse the same bodies.
macro_rules! deserialize_via_fields {
    ($($t:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let map = <Map<String, Value> as serde::Deserialize>::deserialize(d)?;
                let mut f = Fields { map, nested: None };
                let r = <$t>::from_fields(&mut f).and_then(|r| f.finish().map(|_| r));
                r.map_err(|e| serde::de::Error::custom(e))
            }
        }
    )*};
}
deserialize_via_fields!(
    BindRequest,
    PayRequest,
    UnbindRequest,
    UnlockRequest,
    TriageRequest,
    LockRequest
);

/// Validated fields common to all commands.
#[derive(Debug, Clone)]
pub struct Meta {
    pub account: String,
    pub idempotency_key: Option<String>,
    pub expected_version: Option<u64>,
    pub correlation_id: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    pub context: Context,
    /// Set by the ledger: the idempotency index's generation when the key was looked up
    /// before the command was submitted (so the writer need not read the stored table again
    /// unless the index moved keys there since). `None` for callers.
    pub keys_checked: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct BindCommand {
    pub meta: Meta,
    pub provider: Provider,
    /// Normalised.
    pub wallet_account: SecretString,
    pub payment_password: SecretString,
    pub factor: Option<(Factor, SecretString)>,
}

#[derive(Debug, Clone)]
pub struct PayCommand {
    pub meta: Meta,
    pub binding_id: Uuid,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub payment_password: SecretString,
    pub factor: Option<(Factor, SecretString)>,
}

#[derive(Debug, Clone)]
pub struct UnbindCommand {
    pub meta: Meta,
    pub binding_id: Uuid,
}

/// Locks a binding: issued by the monitoring when an alert asks for it (not over HTTP).
#[derive(Debug, Clone)]
pub struct LockCommand {
    pub meta: Meta,
    pub binding_id: Uuid,
    /// The alert that caused the lock.
    pub alert_id: String,
    /// Event time at which the lock ends.
    pub until: DateTime<Utc>,
}

/// Lifts a lock: by a person (`manual`) or because it ran out (`expired`, for the lock of
/// `alert_id`).
#[derive(Debug, Clone)]
pub struct UnlockCommand {
    pub meta: Meta,
    pub binding_id: Uuid,
    pub cause: bindledger_events::UnlockCause,
    pub alert_id: Option<String>,
}

/// `POST /v1/accounts/{account}/bindings/{binding_id}/unlock`.
#[derive(Debug)]
pub struct UnlockRequest {
    pub confirm: bool,
    /// Why (the console asks for it): recorded, by the token's name, as the alert's triage.
    pub reason: Option<String>,
    pub common: CommonInput,
}

impl UnlockRequest {
    /// The unlock, and its reason (checked as a note).
    pub fn validate(
        self,
        account: &str,
        binding_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(UnlockCommand, String), Error> {
        let meta = validate_common(account, self.common, now)?;
        let binding_id = parse_uuid(binding_id, "binding_id")?;
        if !self.confirm {
            return Err(Error::invalid(
                "confirmation_required",
                "confirm",
                "unlocking needs \"confirm\": true",
            ));
        }
        let reason = validate_note(self.reason, "reason")?;
        Ok((
            UnlockCommand {
                meta,
                binding_id,
                cause: bindledger_events::UnlockCause::Manual,
                alert_id: None,
            },
            reason,
        ))
    }
}

/// `POST /v1/alerts/{alert_id}/triage`: what a person did with an alert, and a note.
#[derive(Debug)]
pub struct TriageRequest {
    pub action: String,
    pub assignee: Option<String>,
    pub note: Option<String>,
    /// Optimistic concurrency: the `seq` of the alert's latest triage the caller saw (its
    /// `triage.seq`; 0 when it saw none). Another triage since is a `409 triage_conflict`.
    pub expected_triage_seq: Option<u64>,
    pub common: CommonInput,
}

/// Longest triage note, in bytes.
pub const NOTE_LEN_MAX: usize = 1000;

/// A triage of an alert, validated; `operator` is the name of the token that sent it.
#[derive(Debug, Clone)]
pub struct TriageCommand {
    pub meta: Meta,
    pub alert_id: String,
    pub action: bindledger_events::TriageAction,
    pub operator: String,
    pub assignee: Option<String>,
    pub note: String,
}

impl TriageRequest {
    /// `account` is the alert's (its event goes in that account's history).
    pub fn validate(
        self,
        account: &str,
        alert_id: &str,
        operator: &str,
        now: DateTime<Utc>,
    ) -> Result<TriageCommand, Error> {
        let meta = validate_common(account, self.common, now)?;
        validate_alert_id(alert_id)?;
        use bindledger_events::TriageAction;
        let action = TriageAction::parse(&self.action).ok_or(Error::invalid(
            "invalid_action",
            "action",
            "action is acknowledged, assigned, resolved or false_positive",
        ))?;
        if matches!(action, TriageAction::Locked | TriageAction::Unlocked) {
            return Err(Error::invalid(
                "invalid_action",
                "action",
                "locked and unlocked are recorded by the lock and unlock routes, with the lock itself",
            ));
        }
        let note = validate_note(self.note, "note")?;
        let assignee = match (action, self.assignee) {
            (bindledger_events::TriageAction::Assigned, Some(a)) if valid_name(&a) => Some(a),
            (bindledger_events::TriageAction::Assigned, _) => {
                return Err(Error::invalid(
                    "invalid_assignee",
                    "assignee",
                    "assigning needs an assignee: a token's name (letters, digits, . _ -, at most 64)",
                ))
            }
            (_, None) => None,
            (_, Some(_)) => {
                return Err(Error::invalid(
                    "invalid_assignee",
                    "assignee",
                    "only the action assigned takes an assignee",
                ))
            }
        };
        Ok(TriageCommand {
            meta,
            alert_id: alert_id.to_owned(),
            action,
            operator: operator.to_owned(),
            assignee,
            note,
        })
    }
}

/// A person's name, as tokens are named (and alerts assigned): letters, digits, `.`, `_` and
/// `-`, at most 64.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A note or reason: at most [`NOTE_LEN_MAX`] bytes of text, line breaks allowed.
pub fn validate_note(note: Option<String>, field: &'static str) -> Result<String, Error> {
    let note = note.unwrap_or_default();
    if note.len() > NOTE_LEN_MAX || note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid(
            "invalid_note",
            field,
            "a note is at most 1000 bytes of text (line breaks allowed, no other control characters)",
        ));
    }
    Ok(note)
}

/// `POST /v1/accounts/{account}/bindings/{binding_id}/lock` (security): a person locks a
/// binding for an alert, for `minutes` (1 to 1440, default 30), with a reason.
#[derive(Debug)]
pub struct LockRequest {
    pub confirm: bool,
    pub alert_id: String,
    pub minutes: Option<i64>,
    pub reason: Option<String>,
    pub common: CommonInput,
}

impl FromFields for LockRequest {
    fn from_fields(f: &mut Fields) -> Result<Self, Error> {
        Ok(LockRequest {
            confirm: f.opt("confirm")?.unwrap_or(false),
            alert_id: f.req("alert_id")?,
            minutes: f.opt("minutes")?,
            reason: f.opt("reason")?,
            common: CommonInput::from_fields(f)?,
        })
    }
}

impl LockRequest {
    /// The lock, and the reason (checked as a note).
    pub fn validate(self, account: &str, binding_id: &str, now: DateTime<Utc>) -> Result<(LockCommand, String), Error> {
        let meta = validate_common(account, self.common, now)?;
        let binding_id = parse_uuid(binding_id, "binding_id")?;
        validate_alert_id(&self.alert_id)?;
        if !self.confirm {
            return Err(Error::invalid(
                "confirmation_required",
                "confirm",
                "locking needs \"confirm\": true",
            ));
        }
        let minutes = self.minutes.unwrap_or(30);
        if !(1..=1440).contains(&minutes) {
            return Err(Error::invalid(
                "invalid_minutes",
                "minutes",
                "minutes is 1 to 1440 (a day)",
            ));
        }
        let reason = validate_note(self.reason, "reason")?;
        Ok((
            LockCommand {
                meta,
                binding_id,
                alert_id: self.alert_id,
                until: now + Duration::minutes(minutes),
            },
            reason,
        ))
    }
}

/// An alert id: `<rule>-<seq>`, at most 128 of `A-Z a-z 0-9 _ - . :`.
pub fn validate_alert_id(s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 128 || !id_chars_ok(s) {
        return Err(Error::invalid("invalid_alert_id", "alert_id", "not an alert id"));
    }
    Ok(())
}

fn id_chars_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// An account id: 1-64 of `A-Z a-z 0-9 _ - . :`, except `.` and `..`: those are dot segments,
/// which URL normalisers (RFC 3986, section 5.2.4) remove, so an ordinary client could not
/// address the account. No other id in this alphabet is rewritten by a normaliser (none needs
/// percent-encoding).
pub fn validate_account(s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > ACCOUNT_LEN_MAX || !id_chars_ok(s) || s == "." || s == ".." {
        return Err(Error::invalid(
            "invalid_account",
            "account",
            "account ids are 1-64 characters of A-Z a-z 0-9 _ - . : (not . or .. alone)",
        ));
    }
    Ok(())
}

pub fn parse_uuid(s: &str, field: &'static str) -> Result<Uuid, Error> {
    if s.len() > 36 {
        return Err(Error::invalid("invalid_binding_id", field, "must be a UUID"));
    }
    Uuid::parse_str(s).map_err(|_| Error::invalid("invalid_binding_id", field, "must be a UUID"))
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn validate_common(account: &str, c: CommonInput, now: DateTime<Utc>) -> Result<Meta, Error> {
    validate_account(account)?;
    if let Some(k) = &c.idempotency_key {
        if !printable(k, KEY_LEN_MAX) {
            return Err(Error::invalid(
                "invalid_idempotency_key",
                "idempotency_key",
                "idempotency keys are 1-128 printable ASCII characters without spaces",
            ));
        }
    }
    if let Some(k) = &c.correlation_id {
        if !printable(k, KEY_LEN_MAX) {
            return Err(Error::invalid(
                "invalid_correlation_id",
                "correlation_id",
                "correlation ids are 1-128 printable ASCII characters without spaces",
            ));
        }
    }
    if let Some(t) = c.event_time {
        let earliest = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
        if t > now + Duration::seconds(EVENT_TIME_SKEW_MAX_S) || t < earliest {
            return Err(Error::invalid(
                "invalid_event_time",
                "event_time",
                "event_time must be after 2000-01-01 and at most 300 s in the future",
            ));
        }
    }
    let ctx = c.context.unwrap_or_default();
    let channel = ctx.channel.unwrap_or_else(|| "api".to_owned());
    if channel.is_empty() || channel.len() > 32 || !channel.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(Error::invalid(
            "invalid_context",
            "context.channel",
            "channel is 1-32 of a-z and _ (app, web, mini_program, api)",
        ));
    }
    if let Some(d) = &ctx.device_id {
        if !printable(d, KEY_LEN_MAX) {
            return Err(Error::invalid(
                "invalid_context",
                "context.device_id",
                "device_id is 1-128 printable ASCII characters",
            ));
        }
    }
    if let Some(ip) = &ctx.ip {
        if ip.len() > 45 || ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::invalid(
                "invalid_context",
                "context.ip",
                "ip must be an IPv4 or IPv6 address",
            ));
        }
    }
    if let Some(ua) = &ctx.user_agent {
        if ua.len() > USER_AGENT_LEN_MAX || ua.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                "invalid_context",
                "context.user_agent",
                "user_agent is at most 256 bytes without control characters",
            ));
        }
    }
    Ok(Meta {
        account: account.to_owned(),
        idempotency_key: c.idempotency_key,
        expected_version: c.expected_version,
        correlation_id: c.correlation_id,
        event_time: c.event_time.map(micros::truncate),
        context: Context {
            channel,
            device_id: ctx.device_id,
            ip: ctx.ip,
            user_agent: ctx.user_agent,
            // Computed by the ledger from the values (never taken from the caller).
            device_fp: None,
            ip_fp: None,
        },
        keys_checked: None,
    })
}

fn validate_password(p: &SecretString) -> Result<(), Error> {
    let n = p.expose().chars().count();
    if n == 0 || p.expose().len() > PASSWORD_LEN_MAX {
        return Err(Error::invalid(
            "invalid_payment_password",
            "payment_password",
            "payment_password must be 1-64 bytes",
        ));
    }
    Ok(())
}

fn validate_factor(f: Option<FactorInput>) -> Result<Option<(Factor, SecretString)>, Error> {
    let Some(f) = f else { return Ok(None) };
    let kind = match f.kind.as_str() {
        "sms" => Factor::Sms,
        "fingerprint" => Factor::Fingerprint,
        "face" => Factor::Face,
        _ => {
            return Err(Error::invalid(
                "invalid_factor",
                "factor.kind",
                "factor.kind is one of sms, fingerprint, face",
            ))
        }
    };
    if f.code.expose().is_empty() || f.code.expose().len() > FACTOR_SECRET_LEN_MAX {
        return Err(Error::invalid(
            "invalid_factor",
            "factor.code",
            "factor.code must be 1-512 bytes",
        ));
    }
    Ok(Some((kind, f.code)))
}

/// A wallet account must look like a phone number, a card number or an e-mail style account.
/// (Whether it exists is the provider's to say, and a wrong one is a recorded bind failure.)
fn validate_wallet_account(raw: &SecretString) -> Result<SecretString, Error> {
    let n = normalize_wallet_account(raw.expose());
    let phone_or_card = {
        let digits = n.strip_prefix('+').unwrap_or(&n);
        (5..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let email = n.len() <= 64
        && n.split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !d.starts_with('.'))
        && n.bytes().all(|b| b.is_ascii_graphic());
    if !(phone_or_card || email) {
        return Err(Error::invalid(
            "invalid_wallet_account",
            "wallet_account",
            "wallet_account must be a phone number (5-19 digits, optional +), a card number or an e-mail style wallet account",
        ));
    }
    Ok(SecretString::new(n))
}

impl BindRequest {
    pub fn validate(self, account: &str, now: DateTime<Utc>) -> Result<BindCommand, Error> {
        let meta = validate_common(account, self.common, now)?;
        let provider = Provider::parse(&self.provider)
            .map_err(|_| Error::invalid("invalid_provider", "provider", "provider is one of alipay, wechat_pay, apple_pay, union_pay, bank_card, credit_card, or other:<name> (1-32 of a-z 0-9 _ -)"))?;
        let wallet_account = validate_wallet_account(&self.wallet_account)?;
        validate_password(&self.payment_password)?;
        let factor = validate_factor(self.factor)?;
        Ok(BindCommand {
            meta,
            provider,
            wallet_account,
            payment_password: self.payment_password,
            factor,
        })
    }
}

impl PayRequest {
    pub fn validate(self, account: &str, now: DateTime<Utc>) -> Result<PayCommand, Error> {
        let meta = validate_common(account, self.common, now)?;
        let binding_id = parse_uuid(&self.binding_id, "binding_id")?;
        if self.order_id.is_empty() || self.order_id.len() > ORDER_ID_LEN_MAX || !id_chars_ok(&self.order_id) {
            return Err(Error::invalid(
                "invalid_order_id",
                "order_id",
                "order ids are 1-64 characters of A-Z a-z 0-9 _ - . :",
            ));
        }
        if self.amount_minor <= 0 || self.amount_minor > AMOUNT_MINOR_MAX {
            return Err(Error::invalid(
                "invalid_amount",
                "amount_minor",
                "amount_minor is an integer number of minor units (fen, cents) from 1 to 10000000000000",
            ));
        }
        let currency = match &self.currency {
            None => Currency::CNY,
            Some(c) => Currency::parse(c).map_err(|_| {
                Error::invalid(
                    "invalid_currency",
                    "currency",
                    "currency is an active ISO 4217 code such as CNY, USD, EUR",
                )
            })?,
        };
        validate_password(&self.payment_password)?;
        let factor = validate_factor(self.factor)?;
        Ok(PayCommand {
            meta,
            binding_id,
            order_id: self.order_id,
            amount_minor: self.amount_minor,
            currency,
            payment_password: self.payment_password,
            factor,
        })
    }
}

impl UnbindRequest {
    pub fn validate(self, account: &str, binding_id: &str, now: DateTime<Utc>) -> Result<UnbindCommand, Error> {
        let meta = validate_common(account, self.common, now)?;
        let binding_id = parse_uuid(binding_id, "binding_id")?;
        if !self.confirm {
            return Err(Error::invalid(
                "confirmation_required",
                "confirm",
                "unbinding needs \"confirm\": true",
            ));
        }
        Ok(UnbindCommand { meta, binding_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(json: &str) -> Result<BindCommand, Error> {
        let r: BindRequest =
            serde_json::from_str(json).map_err(|_| Error::invalid("bad_json", "body", "not a bind request"))?;
        r.validate("acct-1", Utc::now())
    }

    #[test]
    fn a_good_bind_validates_and_normalises() {
        let c = bind(r#"{"provider":"alipay","wallet_account":"138 1234 5678","payment_password":"123456","factor":{"kind":"sms","code":"000111"},"context":{"channel":"app"}}"#).unwrap();
        assert_eq!(c.wallet_account.expose(), "13812345678");
        assert_eq!(c.factor.as_ref().unwrap().0, Factor::Sms);
        assert_eq!(c.meta.context.channel, "app");
    }

    #[test]
    fn bad_binds_name_the_field() {
        let cases = [
            (
                r#"{"provider":"paypal","wallet_account":"13812345678","payment_password":"1"}"#,
                "provider",
            ),
            (
                r#"{"provider":"alipay","wallet_account":"hello","payment_password":"1"}"#,
                "wallet_account",
            ),
            (
                r#"{"provider":"alipay","wallet_account":"13812345678","payment_password":""}"#,
                "payment_password",
            ),
            (
                r#"{"provider":"alipay","wallet_account":"13812345678","payment_password":"1","factor":{"kind":"iris","code":"x"}}"#,
                "factor.kind",
            ),
            (
                r#"{"provider":"alipay","wallet_account":"13812345678","payment_password":"1","idempotency_key":"a b"}"#,
                "idempotency_key",
            ),
            (
                r#"{"provider":"alipay","wallet_account":"13812345678","payment_password":"1","event_time":"2999-01-01T00:00:00Z"}"#,
                "event_time",
            ),
            (
                r#"{"provider":"alipay","wallet_account":"13812345678","payment_password":"1","context":{"ip":"999.1.1.1"}}"#,
                "context.ip",
            ),
        ];
        for (json, field) in cases {
            match bind(json) {
                Err(Error::Invalid { field: Some(f), .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn amounts_are_positive_bounded_integers() {
        let pay = |amount: &str, currency: &str| {
            let json = format!(
                r#"{{"binding_id":"00000000-0000-0000-0000-000000000001","order_id":"o1","amount_minor":{amount},"currency":{currency},"payment_password":"1"}}"#
            );
            serde_json::from_str::<PayRequest>(&json)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate("a", Utc::now()).map_err(|e| e.code().to_owned()))
        };
        assert!(pay("100", "\"CNY\"").is_ok());
        assert_eq!(pay("0", "null").unwrap_err(), "invalid_amount");
        assert_eq!(pay("-5", "null").unwrap_err(), "invalid_amount");
        assert_eq!(pay("10000000000001", "null").unwrap_err(), "invalid_amount");
        assert!(pay("9223372036854775808", "null").is_err(), "beyond i64");
        assert!(pay("1.5", "null").is_err(), "floats are refused");
        assert_eq!(pay("100", "\"XYZ\"").unwrap_err(), "invalid_currency");
    }

    #[test]
    fn long_or_odd_account_ids_are_refused() {
        assert!(validate_account(&"a".repeat(64)).is_ok());
        assert!(validate_account(&"a".repeat(65)).is_err());
        assert!(validate_account("a/b").is_err());
        assert!(validate_account("").is_err());
        // Dot segments: a URL normaliser removes them, so nobody could address the account.
        assert!(validate_account(".").is_err());
        assert!(validate_account("..").is_err());
        assert!(validate_account("...").is_ok());
        assert!(validate_account("a.b").is_ok());
    }

    #[test]
    fn messages_state_the_limits_in_force() {
        // Messages are fixed text (they may not carry any submitted value); the limits they
        // name are checked here against the constants.
        let msg = |r: Result<(), Error>| r.unwrap_err().to_string();
        assert!(msg(validate_account("")).contains(&format!("1-{ACCOUNT_LEN_MAX} ")));
        assert!(msg(validate_password(&SecretString::new(String::new()))).contains(&format!("1-{PASSWORD_LEN_MAX} ")));
        let pay = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::json!({"binding_id":"00000000-0000-0000-0000-000000000001","order_id":"o1","amount_minor":1,"payment_password":"1"});
            f(&mut v);
            serde_json::from_value::<PayRequest>(v)
                .unwrap()
                .validate("a", Utc::now())
                .unwrap_err()
                .to_string()
        };
        assert!(pay(&|v| v["amount_minor"] = 0.into()).contains(&format!("to {AMOUNT_MINOR_MAX}")));
        assert!(pay(&|v| v["order_id"] = "".into()).contains(&format!("1-{ORDER_ID_LEN_MAX} ")));
        assert!(pay(&|v| v["idempotency_key"] = "".into()).contains(&format!("1-{KEY_LEN_MAX} ")));
        assert!(pay(&|v| v["correlation_id"] = "".into()).contains(&format!("1-{KEY_LEN_MAX} ")));
        assert!(pay(&|v| v["context"] = serde_json::json!({"device_id": ""})).contains(&format!("1-{KEY_LEN_MAX} ")));
        assert!(
            pay(&|v| v["context"] = serde_json::json!({"user_agent": "x".repeat(USER_AGENT_LEN_MAX + 1)}))
                .contains(&format!("{USER_AGENT_LEN_MAX} bytes"))
        );
        assert!(pay(&|v| v["factor"] = serde_json::json!({"kind": "sms", "code": ""}))
            .contains(&format!("1-{FACTOR_SECRET_LEN_MAX} ")));
        assert!(
            pay(&|v| v["event_time"] = "2999-01-01T00:00:00Z".into()).contains(&format!("{EVENT_TIME_SKEW_MAX_S} s"))
        );
    }
}
