//! The rules file: thresholds, windows and severities of the seven anomaly rules, in TOML.
//! Every field has a default (the table in the README), so an empty file, or none, gives the
//! starting set. A file that cannot be used is refused with the line and the problem.

use bindledger_events::Currency;
use serde::{Deserialize, Serialize};
use std::fmt;
use toml::Spanned;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// A span of time, written `90s`, `10m`, `1h`, `30d` (a sum like `1h30m` is fine). Parsed by
/// hand: the syntax is four units and a sum, a line-numbered error must name the file's text,
/// and a duration crate (humantime) would accept forms (`1 hour`, `2y`) the README does not
/// document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Span {
    pub fn duration(&self) -> chrono::Duration {
        chrono::Duration::microseconds(self.0)
    }
    pub const fn secs(s: i64) -> Span {
        Span(s * 1_000_000)
    }
    pub const fn mins(m: i64) -> Span {
        Span::secs(m * 60)
    }
    pub const fn hours(h: i64) -> Span {
        Span::mins(h * 60)
    }
    pub fn micros(&self) -> i64 {
        self.0
    }
    /// The error is a message for the rules file's error (which adds the file and line).
    pub fn parse(text: &str) -> Result<Span, String> {
        let mut total: i64 = 0;
        let mut digits = String::new();
        let mut any = false;
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit: i64 = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => {
                    return Err(format!(
                        "{text:?} is not a duration: use a number and a unit s, m, h or d, e.g. \"10m\""
                    ))
                }
            };
            let n: i64 = digits
                .parse()
                .map_err(|_| format!("{text:?} is not a duration: a unit needs a number before it"))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .filter(|t| *t <= 366 * 86_400)
                .ok_or_else(|| format!("{text:?} is longer than a year"))?;
            any = true;
        }
        if !digits.is_empty() || !any {
            return Err(format!(
                "{text:?} is not a duration: use a number and a unit s, m, h or d, e.g. \"10m\""
            ));
        }
        Ok(Span::secs(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0 / 1_000_000;
        match s {
            s if s % 86_400 == 0 && s > 0 => write!(f, "{}d", s / 86_400),
            s if s % 3600 == 0 && s > 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 && s > 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A rule that counts events of one kind per key in a sliding event-time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Fires when this many events fall within `window`.
    pub threshold: u32,
    pub window: Span,
    /// While an alert for the same key is open (until `cooldown` after its last match), new
    /// matches update it instead of raising another.
    pub cooldown: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BruteForceRule {
    #[serde(flatten)]
    pub count: CountRule,
    /// Lock the binding the wrong passwords were tried on.
    pub lock: bool,
    /// How long a lock lasts (in the ledger's time, `record_time`).
    pub lock_for: Span,
}

/// Password stuffing: wrong payment passwords tried on binds of one wallet (by its
/// fingerprint), from several accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StuffingRule {
    #[serde(flatten)]
    pub count: CountRule,
    /// ...from at least this many distinct accounts (one account alone is `bind_failure_burst`).
    pub accounts_min: u32,
    /// Guard binds of the wallet inline: at most `threshold` wrong passwords within `window`
    /// reach the provider, from all accounts together (the ledger's bind guard).
    pub guard: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Fires when successful payments with a binding made within `window` of its bind add up to
    /// at least this (in `currency`'s minor units). Payments in other currencies do not count.
    pub amount_minor: i64,
    pub currency: Currency,
    pub window: Span,
    pub cooldown: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpikeRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Fires when a payment is more than `factor` times the median of the account's last
    /// `history` successful payments (in the same currency)...
    pub factor: u32,
    pub history: u32,
    /// ...once there are at least this many of them.
    pub min_history: u32,
    /// An account with no payment for this long starts over.
    pub forget_after: Span,
    pub cooldown: Span,
}

/// Bounds on the monitor's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Triggering event ids kept in one alert (the count goes on).
    pub event_ids_max: usize,
}

/// The eight rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    pub password_brute_force: BruteForceRule,
    pub bind_failure_burst: CountRule,
    pub bind_then_drain: DrainRule,
    pub shared_wallet: CountRule,
    pub binding_churn: CountRule,
    pub amount_spike: SpikeRule,
    pub dead_wallet_probing: CountRule,
    pub password_stuffing: StuffingRule,
    pub limits: Limits,
}

/// Rule names, in the order they are evaluated.
impl RuleSet {
    /// The ledger's inline guard against password guessing: on when the
    /// `password_brute_force` rule is enabled with `lock`.
    pub fn password_guard(&self) -> Option<crate::decide::PasswordGuard> {
        let bf = &self.password_brute_force;
        (bf.count.enabled && bf.lock).then(|| crate::decide::PasswordGuard {
            threshold: bf.count.threshold,
            window: bf.count.window.duration(),
        })
    }

    /// The ledger's inline guard against password stuffing on binds: on when the
    /// `password_stuffing` rule is enabled with `guard`.
    pub fn bind_guard(&self) -> Option<crate::decide::PasswordGuard> {
        let ps = &self.password_stuffing;
        (ps.count.enabled && ps.guard).then(|| crate::decide::PasswordGuard {
            threshold: ps.count.threshold,
            window: ps.count.window.duration(),
        })
    }
}

/// How many rules there are.
pub const RULES_COUNT: usize = 8;

pub const RULE_NAMES: [&str; RULES_COUNT] = [
    "password_brute_force",
    "bind_failure_burst",
    "bind_then_drain",
    "shared_wallet",
    "binding_churn",
    "amount_spike",
    "dead_wallet_probing",
    "password_stuffing",
];

/// The same, as text for messages.
pub const RULE_NAMES_TEXT: &str = "rule is one of password_brute_force, bind_failure_burst, bind_then_drain, shared_wallet, binding_churn, amount_spike, dead_wallet_probing, password_stuffing";

fn count(severity: Severity, threshold: u32, window: Span, cooldown: Span) -> CountRule {
    CountRule {
        enabled: true,
        severity,
        threshold,
        window,
        cooldown,
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet {
            password_brute_force: BruteForceRule {
                count: count(Severity::High, 5, Span::mins(10), Span::mins(30)),
                // On by default: a payment platform limits guesses, it does not only report them.
                lock: true,
                lock_for: Span::mins(30),
            },
            bind_failure_burst: count(Severity::Medium, 5, Span::mins(10), Span::mins(30)),
            bind_then_drain: DrainRule {
                enabled: true,
                severity: Severity::High,
                amount_minor: 500_000,
                currency: Currency::CNY,
                window: Span::mins(30),
                cooldown: Span::mins(30),
            },
            shared_wallet: count(Severity::High, 3, Span::hours(24), Span::hours(24)),
            binding_churn: count(Severity::Medium, 3, Span::hours(1), Span::hours(1)),
            amount_spike: SpikeRule {
                enabled: true,
                severity: Severity::Medium,
                factor: 10,
                history: 20,
                min_history: 5,
                forget_after: Span::hours(24 * 90),
                cooldown: Span::hours(1),
            },
            dead_wallet_probing: count(Severity::High, 3, Span::hours(1), Span::hours(1)),
            password_stuffing: StuffingRule {
                count: count(Severity::High, 5, Span::mins(10), Span::mins(30)),
                accounts_min: 2,
                // On by default, as the payment guard is: binding is a password check too.
                guard: true,
            },
            limits: Limits { event_ids_max: 32 },
        }
    }
}

/// A rules file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}: {message}", file.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct RulesError {
    pub file: Option<String>,
    pub line: usize,
    pub message: String,
}

// ---- the file's shape: every field optional, spans kept for messages ----

type S<T> = Option<Spanned<T>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCount {
    enabled: S<bool>,
    severity: S<String>,
    threshold: S<i64>,
    window: S<String>,
    cooldown: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileBruteForce {
    enabled: S<bool>,
    severity: S<String>,
    threshold: S<i64>,
    window: S<String>,
    cooldown: S<String>,
    lock: S<bool>,
    lock_for: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileStuffing {
    enabled: S<bool>,
    severity: S<String>,
    threshold: S<i64>,
    window: S<String>,
    cooldown: S<String>,
    accounts_min: S<i64>,
    guard: S<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDrain {
    enabled: S<bool>,
    severity: S<String>,
    amount_minor: S<i64>,
    currency: S<String>,
    window: S<String>,
    cooldown: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSpike {
    enabled: S<bool>,
    severity: S<String>,
    factor: S<i64>,
    history: S<i64>,
    min_history: S<i64>,
    forget_after: S<String>,
    cooldown: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    /// Read and not used: the monitor's memory is bounded by `memory.alert_keys_cached`, and
    /// no rule forgets a key that could still count.
    #[allow(dead_code)]
    keys_max: S<toml::Value>,
    event_ids_max: S<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    password_brute_force: Option<FileBruteForce>,
    bind_failure_burst: Option<FileCount>,
    bind_then_drain: Option<FileDrain>,
    shared_wallet: Option<FileCount>,
    binding_churn: Option<FileCount>,
    amount_spike: Option<FileSpike>,
    dead_wallet_probing: Option<FileCount>,
    password_stuffing: Option<FileStuffing>,
    limits: Option<FileLimits>,
}

struct Reader<'a> {
    text: &'a str,
}

impl Reader<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }
    fn err(&self, offset: usize, message: String) -> RulesError {
        RulesError {
            file: None,
            line: self.line(offset),
            message,
        }
    }
    fn int(&self, v: &S<i64>, name: &str, min: i64, max: i64, default: i64) -> Result<i64, RulesError> {
        match v {
            None => Ok(default),
            Some(s) if (min..=max).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(self.err(
                s.span().start,
                format!(
                    "{name} = {} is out of range: it must be from {min} to {max}",
                    s.get_ref()
                ),
            )),
        }
    }
    fn span(&self, v: &S<String>, name: &str, default: Span) -> Result<Span, RulesError> {
        match v {
            None => Ok(default),
            Some(s) => match Span::parse(s.get_ref()) {
                Ok(span) if span.0 > 0 => Ok(span),
                Ok(_) => Err(self.err(s.span().start, format!("{name} must be longer than zero"))),
                Err(m) => Err(self.err(s.span().start, format!("{name}: {m}"))),
            },
        }
    }
    fn severity(&self, v: &S<String>, default: Severity) -> Result<Severity, RulesError> {
        match v {
            None => Ok(default),
            Some(s) => Severity::parse(s.get_ref()).ok_or_else(|| {
                self.err(
                    s.span().start,
                    format!(
                        "severity {:?} is unknown: use low, medium, high or critical",
                        s.get_ref()
                    ),
                )
            }),
        }
    }
    fn flag(v: &S<bool>, default: bool) -> bool {
        v.as_ref().map_or(default, |s| *s.get_ref())
    }
    fn count(&self, f: Option<FileCount>, d: CountRule) -> Result<CountRule, RulesError> {
        let f = f.unwrap_or_default();
        Ok(CountRule {
            enabled: Self::flag(&f.enabled, d.enabled),
            severity: self.severity(&f.severity, d.severity)?,
            threshold: self.int(&f.threshold, "threshold", 1, 10_000, d.threshold as i64)? as u32,
            window: self.span(&f.window, "window", d.window)?,
            cooldown: self.span(&f.cooldown, "cooldown", d.cooldown)?,
        })
    }
}

impl RuleSet {
    /// Reads a rules file's text. `name` (the file's path) goes into error messages.
    pub fn from_toml(text: &str, name: Option<&str>) -> Result<RuleSet, RulesError> {
        let with_file = |mut e: RulesError| {
            e.file = name.map(str::to_owned);
            e
        };
        let r = Reader { text };
        let file: File = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // The TOML parser leaves some messages empty (a control character in a comment).
            let message = match e.message().trim() {
                "" => "this is not valid TOML here (a control character, or an unclosed bracket or quote?)".to_owned(),
                m => m.to_owned(),
            };
            with_file(r.err(offset, message))
        })?;
        let d = RuleSet::default();
        let bf = file.password_brute_force.unwrap_or_default();
        let drain = file.bind_then_drain.unwrap_or_default();
        let spike = file.amount_spike.unwrap_or_default();
        let limits = file.limits.unwrap_or_default();
        let ps = file.password_stuffing.unwrap_or_default();
        let build = || -> Result<RuleSet, RulesError> {
            let currency = match &drain.currency {
                None => d.bind_then_drain.currency,
                // A rules file is the operator's own text: naming the value helps them.
                Some(s) => Currency::parse(s.get_ref())
                    .map_err(|e| r.err(s.span().start, format!("{:?}: {e}", s.get_ref())))?,
            };
            let rules = RuleSet {
                password_brute_force: BruteForceRule {
                    count: r.count(
                        Some(FileCount {
                            enabled: bf.enabled,
                            severity: bf.severity,
                            threshold: bf.threshold,
                            window: bf.window,
                            cooldown: bf.cooldown,
                        }),
                        d.password_brute_force.count.clone(),
                    )?,
                    lock: Reader::flag(&bf.lock, d.password_brute_force.lock),
                    lock_for: r.span(&bf.lock_for, "lock_for", d.password_brute_force.lock_for)?,
                },
                bind_failure_burst: r.count(file.bind_failure_burst, d.bind_failure_burst.clone())?,
                bind_then_drain: DrainRule {
                    enabled: Reader::flag(&drain.enabled, d.bind_then_drain.enabled),
                    severity: r.severity(&drain.severity, d.bind_then_drain.severity)?,
                    amount_minor: r.int(
                        &drain.amount_minor,
                        "amount_minor",
                        1,
                        bindledger_events::AMOUNT_MINOR_MAX,
                        d.bind_then_drain.amount_minor,
                    )?,
                    currency,
                    window: r.span(&drain.window, "window", d.bind_then_drain.window)?,
                    cooldown: r.span(&drain.cooldown, "cooldown", d.bind_then_drain.cooldown)?,
                },
                shared_wallet: r.count(file.shared_wallet, d.shared_wallet.clone())?,
                binding_churn: r.count(file.binding_churn, d.binding_churn.clone())?,
                amount_spike: {
                    let history = r.int(&spike.history, "history", 1, 1000, d.amount_spike.history as i64)? as u32;
                    let min_history = r.int(
                        &spike.min_history,
                        "min_history",
                        1,
                        history as i64,
                        (d.amount_spike.min_history).min(history) as i64,
                    )? as u32;
                    SpikeRule {
                        enabled: Reader::flag(&spike.enabled, d.amount_spike.enabled),
                        severity: r.severity(&spike.severity, d.amount_spike.severity)?,
                        factor: r.int(&spike.factor, "factor", 2, 1_000_000, d.amount_spike.factor as i64)? as u32,
                        history,
                        min_history,
                        forget_after: r.span(&spike.forget_after, "forget_after", d.amount_spike.forget_after)?,
                        cooldown: r.span(&spike.cooldown, "cooldown", d.amount_spike.cooldown)?,
                    }
                },
                dead_wallet_probing: r.count(file.dead_wallet_probing, d.dead_wallet_probing.clone())?,
                password_stuffing: StuffingRule {
                    count: r.count(
                        Some(FileCount {
                            enabled: ps.enabled,
                            severity: ps.severity,
                            threshold: ps.threshold,
                            window: ps.window,
                            cooldown: ps.cooldown,
                        }),
                        d.password_stuffing.count.clone(),
                    )?,
                    accounts_min: r.int(
                        &ps.accounts_min,
                        "accounts_min",
                        1,
                        10_000,
                        d.password_stuffing.accounts_min as i64,
                    )? as u32,
                    guard: Reader::flag(&ps.guard, d.password_stuffing.guard),
                },
                limits: Limits {
                    event_ids_max: r.int(
                        &limits.event_ids_max,
                        "event_ids_max",
                        1,
                        10_000,
                        d.limits.event_ids_max as i64,
                    )? as usize,
                },
            };
            Ok(rules)
        };
        build().map_err(with_file)
    }

    /// The rules as a rules file: every setting of every rule written out, so that
    /// [`RuleSet::from_toml`] reads back exactly this set.
    pub fn to_toml(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let count = |out: &mut String, name: &str, r: &CountRule| {
            let _ = write!(
                out,
                "[{name}]\nenabled = {}\nseverity = \"{}\"\nthreshold = {}\nwindow = \"{}\"\ncooldown = \"{}\"\n",
                r.enabled,
                r.severity.as_str(),
                r.threshold,
                r.window,
                r.cooldown
            );
        };
        let bf = &self.password_brute_force;
        count(&mut out, "password_brute_force", &bf.count);
        let _ = writeln!(out, "lock = {}\nlock_for = \"{}\"\n", bf.lock, bf.lock_for);
        count(&mut out, "bind_failure_burst", &self.bind_failure_burst);
        let d = &self.bind_then_drain;
        let _ = writeln!(
            out,
            "\n[bind_then_drain]\nenabled = {}\nseverity = \"{}\"\namount_minor = {}\ncurrency = \"{}\"\nwindow = \"{}\"\ncooldown = \"{}\"\n",
            d.enabled,
            d.severity.as_str(),
            d.amount_minor,
            d.currency.as_str(),
            d.window,
            d.cooldown
        );
        count(&mut out, "shared_wallet", &self.shared_wallet);
        out.push('\n');
        count(&mut out, "binding_churn", &self.binding_churn);
        let a = &self.amount_spike;
        let _ = writeln!(
            out,
            "\n[amount_spike]\nenabled = {}\nseverity = \"{}\"\nfactor = {}\nhistory = {}\nmin_history = {}\nforget_after = \"{}\"\ncooldown = \"{}\"\n",
            a.enabled,
            a.severity.as_str(),
            a.factor,
            a.history,
            a.min_history,
            a.forget_after,
            a.cooldown
        );
        count(&mut out, "dead_wallet_probing", &self.dead_wallet_probing);
        out.push('\n');
        let ps = &self.password_stuffing;
        count(&mut out, "password_stuffing", &ps.count);
        let _ = writeln!(out, "accounts_min = {}\nguard = {}", ps.accounts_min, ps.guard);
        let _ = write!(out, "\n[limits]\nevent_ids_max = {}\n", self.limits.event_ids_max);
        out
    }

    /// A digest of the effective rules (stored with the monitor's checkpoint).
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("rules serialize");
        hex::encode(&bindledger_events::hash_bytes(&json).0[..8])
    }

    /// The longest window any rule looks back over (state older than this is dead).
    pub fn horizon(&self) -> Span {
        [
            self.password_brute_force.count.window,
            self.bind_failure_burst.window,
            self.bind_then_drain.window,
            self.shared_wallet.window,
            self.binding_churn.window,
            self.dead_wallet_probing.window,
            self.password_stuffing.count.window,
        ]
        .into_iter()
        .max()
        .expect("not empty")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_set() {
        assert_eq!(RuleSet::from_toml("", None).unwrap(), RuleSet::default());
        let d = RuleSet::default();
        assert_eq!(
            (
                d.password_brute_force.count.threshold,
                d.password_brute_force.count.window
            ),
            (5, Span::mins(10))
        );
        assert_eq!(
            (d.bind_then_drain.amount_minor, d.bind_then_drain.currency),
            (500_000, Currency::CNY)
        );
        assert_eq!(
            (d.shared_wallet.threshold, d.shared_wallet.window),
            (3, Span::hours(24))
        );
    }

    #[test]
    fn values_are_read() {
        let text = "[password_brute_force]\nthreshold = 3\nwindow = \"1h30m\"\nlock = true\nlock_for = \"2h\"\n\n[amount_spike]\nenabled = false\n";
        let r = RuleSet::from_toml(text, None).unwrap();
        assert_eq!(r.password_brute_force.count.threshold, 3);
        assert_eq!(r.password_brute_force.count.window, Span::mins(90));
        assert!(r.password_brute_force.lock);
        assert_eq!(r.password_brute_force.lock_for, Span::hours(2));
        assert!(!r.amount_spike.enabled);
        assert_eq!(r.bind_failure_burst, RuleSet::default().bind_failure_burst);
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        let cases = [
            ("[shared_wallet]\nthreshold = 0\n", 2, "threshold = 0 is out of range"),
            (
                "# comment\n[binding_churn]\nwindow = \"ten minutes\"\n",
                3,
                "is not a duration",
            ),
            (
                "[bind_failure_burst]\n\nseverity = \"urgent\"\n",
                3,
                "severity \"urgent\" is unknown",
            ),
            ("[bind_then_drain]\ncurrency = \"XYZ\"\n", 2, "XYZ"),
            (
                "[password_brute_force]\nthreshhold = 5\n",
                2,
                "unknown field `threshhold`",
            ),
            ("[nonsense_rule]\n", 1, "unknown field `nonsense_rule`"),
            ("[shared_wallet]\nthreshold = \"3\"\n", 2, "invalid type"),
            ("[shared_wallet\n", 1, ""),
            (
                "[amount_spike]\nhistory = 10\nmin_history = 11\n",
                3,
                "min_history = 11 is out of range",
            ),
            ("[dead_wallet_probing]\nwindow = \"0s\"\n", 2, "longer than zero"),
            // Found by `make fuzz`: the TOML parser gives no message for this one.
            ("# a comment\u{10}\n[shared_wallet]\n", 1, "not valid TOML here"),
        ];
        for (text, line, needle) in cases {
            let e = RuleSet::from_toml(text, Some("rules.toml")).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("rules.toml: line {line}: ")), "{e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_default_set_prints_and_reads_back() {
        let d = RuleSet::default();
        assert_eq!(RuleSet::from_toml(&d.to_toml(), None).unwrap(), d);
    }

    use proptest::prelude::*;

    fn span() -> impl Strategy<Value = Span> {
        // Up to a year, in whole seconds, often in round units.
        prop_oneof![
            (1i64..=366 * 86_400).prop_map(Span::secs),
            (1i64..=366).prop_map(|d| Span::secs(d * 86_400)),
            (1i64..=48).prop_map(Span::hours),
            (1i64..=600).prop_map(Span::mins),
        ]
    }

    fn severity() -> impl Strategy<Value = Severity> {
        prop_oneof![
            Just(Severity::Low),
            Just(Severity::Medium),
            Just(Severity::High),
            Just(Severity::Critical)
        ]
    }

    fn count_rule() -> impl Strategy<Value = CountRule> {
        (any::<bool>(), severity(), 1u32..=10_000, span(), span()).prop_map(
            |(enabled, severity, threshold, window, cooldown)| CountRule {
                enabled,
                severity,
                threshold,
                window,
                cooldown,
            },
        )
    }

    fn rule_set() -> impl Strategy<Value = RuleSet> {
        let currencies = prop::sample::select(vec!["CNY", "USD", "EUR", "JPY", "HKD"]);
        (
            (count_rule(), any::<bool>(), span()),
            prop::array::uniform5(count_rule()),
            (
                any::<bool>(),
                severity(),
                1i64..=bindledger_events::AMOUNT_MINOR_MAX,
                currencies,
                span(),
                span(),
            ),
            (
                any::<bool>(),
                severity(),
                2u32..=1_000_000,
                1u32..=1000,
                any::<prop::sample::Index>(),
                span(),
                span(),
            ),
            1usize..=10_000,
            (1u32..=10_000, any::<bool>()),
        )
            .prop_map(|(bf, counts, drain, spike, limits, stuffing)| {
                let [burst, shared, churn, probing, stuffing_count] = counts;
                RuleSet {
                    password_brute_force: BruteForceRule {
                        count: bf.0,
                        lock: bf.1,
                        lock_for: bf.2,
                    },
                    bind_failure_burst: burst,
                    bind_then_drain: DrainRule {
                        enabled: drain.0,
                        severity: drain.1,
                        amount_minor: drain.2,
                        currency: Currency::parse(drain.3).unwrap(),
                        window: drain.4,
                        cooldown: drain.5,
                    },
                    shared_wallet: shared,
                    binding_churn: churn,
                    amount_spike: SpikeRule {
                        enabled: spike.0,
                        severity: spike.1,
                        factor: spike.2,
                        history: spike.3,
                        min_history: spike.4.index(spike.3 as usize) as u32 + 1,
                        forget_after: spike.5,
                        cooldown: spike.6,
                    },
                    dead_wallet_probing: probing,
                    password_stuffing: StuffingRule {
                        count: stuffing_count,
                        accounts_min: stuffing.0,
                        guard: stuffing.1,
                    },
                    limits: Limits { event_ids_max: limits },
                }
            })
    }

    /// Checks what any refusal must be: a line inside the file (or just past its end), and a
    /// message.
    fn refused_well(text: &str, result: Result<RuleSet, RulesError>) -> Result<(), TestCaseError> {
        if let Err(e) = result {
            let lines = text.lines().count().max(1) + 1;
            prop_assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}: {e}", e.line);
            prop_assert!(!e.message.is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn a_span_prints_and_parses_back(s in span()) {
            prop_assert_eq!(Span::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn a_rule_set_prints_and_reads_back(rules in rule_set()) {
            let text = rules.to_toml();
            prop_assert_eq!(RuleSet::from_toml(&text, None).unwrap(), rules);
        }

        #[test]
        fn arbitrary_text_is_read_or_refused_with_a_line(text in "[\\[\\]a-z_=\"0-9 .\n#-]{0,200}") {
            refused_well(&text, RuleSet::from_toml(&text, None))?;
        }

        #[test]
        fn a_damaged_rules_file_is_read_or_refused_with_a_line(
            rules in rule_set(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut bytes = rules.to_toml().into_bytes();
            for (at, byte, how) in edits {
                let i = at.index(bytes.len() + 1);
                match how {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 if i < bytes.len() => { bytes.remove(i); }
                    _ => bytes.insert(i.min(bytes.len()), byte),
                }
            }
            // A rules file is text: bytes that are not UTF-8 are refused before parsing.
            if let Ok(text) = String::from_utf8(bytes) {
                refused_well(&text, RuleSet::from_toml(&text, None))?;
            }
        }
    }

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("10m").unwrap(), Span::mins(10));
        assert_eq!(Span::parse("1d").unwrap().to_string(), "1d");
        assert_eq!(Span::parse("90s").unwrap().to_string(), "90s");
        assert!(Span::parse("10").is_err());
        assert!(Span::parse("m").is_err());
        assert!(Span::parse("400d").is_err());
    }
}
