//! What the account holder is told, and when: a function of the log and of the alerts it
//! raises, so that every rebuild tells the same things with the same ids.
//!
//! A notification is made when a wallet is bound to an account, when one of its bindings is
//! locked or unlocked, and when an alert of at least [`NOTIFY_SEVERITY_MIN`] opens on it (for
//! a wallet alert: on each account involved). Each carries its message in Chinese and English,
//! for the platform's messaging service to deliver as it is.
//!
//! **Identity and order.** A notification is caused by one event of the log (an alert: by the
//! event that opened it), and is named `<seq>.<index>`: the event's `seq`, and its place among
//! the notifications that event caused (the event's own first, then the alerts it opened, in
//! the order of the alert stream). Ordered by `(seq, index)` they are in log order, which is
//! what a reader of one account sees.

use bindledger_events::{Event, Payload, UnlockCause};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::alerts::{Alert, Severity};

/// Alerts of this severity or above are told to the account holder.
pub const NOTIFY_SEVERITY_MIN: Severity = Severity::High;

/// Why the account holder is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    WalletBound,
    BindingLocked,
    BindingUnlocked,
    AlertOpened,
}

impl NotificationKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NotificationKind::WalletBound => "wallet_bound",
            NotificationKind::BindingLocked => "binding_locked",
            NotificationKind::BindingUnlocked => "binding_unlocked",
            NotificationKind::AlertOpened => "alert_opened",
        }
    }
}

/// The message, in the platform users' language and in English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    pub zh: String,
    pub en: String,
}

/// One message for an account holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `<seq>.<index>`: unique, and the same on every rebuild.
    pub id: String,
    pub account: String,
    pub kind: NotificationKind,
    /// The log event that caused it.
    pub seq: u64,
    /// Its place among the notifications of that event, from 0.
    pub index: u32,
    /// When it happened (the event's time; for an alert, the time it opened).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding_id: Option<Uuid>,
    /// The wallet provider, and the wallet as the platform shows it (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// For a lock: payments are refused until then.
    #[serde(skip_serializing_if = "Option::is_none", with = "optional_micros", default)]
    pub until: Option<DateTime<Utc>>,
    pub messages: Messages,
}

mod optional_micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.timestamp_micros()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.and_then(DateTime::from_timestamp_micros))
    }
}

/// Whether an event of this type can cause a notification of its own (read from the stored
/// bytes' `payload.type` before decoding).
pub fn may_notify(event_type: &str) -> bool {
    matches!(event_type, "wallet_bound" | "binding_locked" | "binding_unlocked")
}

/// Whether an alert change tells the account holder: an alert of at least
/// [`NOTIFY_SEVERITY_MIN`] opening.
pub fn alert_notifies(change: &str, alert: &Alert) -> bool {
    change == "opened" && alert.severity >= NOTIFY_SEVERITY_MIN
}

/// A binding's provider and masked wallet (the ledger's projection knows them; a binding's
/// wallet never changes).
pub type WalletOf<'a> = &'a dyn Fn(&str, Uuid) -> Option<(String, String)>;

/// The notifications event `event` causes: its own, then one per account of each alert it
/// opened (`opened`: the alerts whose opening event is this one, in stream order, already
/// filtered by [`alert_notifies`]).
pub fn for_event(event: Option<&Event>, seq: u64, opened: &[&Alert], wallet_of: WalletOf<'_>) -> Vec<Notification> {
    let mut out = Vec::new();
    let mut push =
        |account: &str, kind, at, binding_id, wallet: Option<(String, String)>, alert_id, until, messages| {
            let index = out.len() as u32;
            let (provider, wallet) = match wallet {
                Some((p, w)) => (Some(p), Some(w)),
                None => (None, None),
            };
            out.push(Notification {
                id: format!("{seq}.{index}"),
                account: account.to_owned(),
                kind,
                seq,
                index,
                at,
                binding_id,
                provider,
                wallet,
                alert_id,
                until,
                messages,
            });
        };
    if let Some(e) = event {
        match &e.payload {
            Payload::WalletBound {
                binding_id,
                provider,
                wallet,
                ..
            } => {
                let (p, w) = (provider.as_str().to_owned(), wallet.masked.clone());
                let messages = bound_messages(&p, &w, e.record_time);
                push(
                    &e.account,
                    NotificationKind::WalletBound,
                    e.record_time,
                    Some(*binding_id),
                    Some((p, w)),
                    None,
                    None,
                    messages,
                );
            }
            Payload::BindingLocked {
                binding_id,
                alert_id,
                until,
            } => {
                let wallet = wallet_of(&e.account, *binding_id);
                let messages = locked_messages(wallet.as_ref(), *until);
                push(
                    &e.account,
                    NotificationKind::BindingLocked,
                    e.record_time,
                    Some(*binding_id),
                    wallet,
                    Some(alert_id.clone()),
                    Some(*until),
                    messages,
                );
            }
            Payload::BindingUnlocked {
                binding_id,
                alert_id,
                cause,
            } => {
                let wallet = wallet_of(&e.account, *binding_id);
                let messages = unlocked_messages(wallet.as_ref(), *cause);
                push(
                    &e.account,
                    NotificationKind::BindingUnlocked,
                    e.record_time,
                    Some(*binding_id),
                    wallet,
                    Some(alert_id.clone()),
                    None,
                    messages,
                );
            }
            _ => {}
        }
    }
    for alert in opened {
        for account in &alert.accounts {
            push(
                account,
                NotificationKind::AlertOpened,
                alert.opened_at,
                None,
                None,
                Some(alert.id.clone()),
                None,
                alert_messages(&alert.rule),
            );
        }
    }
    out
}

/// A time as the English message gives it: UTC.
fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A time as the Chinese message gives it: Beijing time (UTC+8, all year), which is how the
/// platform's holders read a clock.
fn time_zh(t: DateTime<Utc>) -> String {
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("a valid offset");
    format!("{}（北京时间）", t.with_timezone(&beijing).format("%Y-%m-%d %H:%M"))
}

/// A provider's name as the platform's users know it.
fn provider_name(provider: &str) -> (&str, &str) {
    match provider {
        "alipay" => ("支付宝", "Alipay"),
        "wechat_pay" => ("微信支付", "WeChat Pay"),
        "apple_pay" => ("Apple Pay", "Apple Pay"),
        "union_pay" => ("银联", "UnionPay"),
        "bank_card" => ("银行卡", "bank card"),
        "credit_card" => ("信用卡", "credit card"),
        other => {
            let name = other.strip_prefix("other:").unwrap_or(other);
            (name, name)
        }
    }
}

fn wallet_words(wallet: Option<&(String, String)>) -> (String, String) {
    match wallet {
        Some((p, w)) => {
            let (zh, en) = provider_name(p);
            (format!("{zh}（{w}）"), format!("{en} wallet {w}"))
        }
        None => ("绑定的钱包".to_owned(), "a wallet bound to your account".to_owned()),
    }
}

fn bound_messages(provider: &str, masked: &str, at: DateTime<Utc>) -> Messages {
    let (zh, en) = provider_name(provider);
    Messages {
        zh: format!("您的账户于 {} 绑定了{zh}（{masked}）。如非本人操作，请立即联系客服。", time_zh(at)),
        en: format!(
            "{en} wallet {masked} was bound to your account at {}. If this was not you, contact customer service at once.",
            time(at)
        ),
    }
}

fn locked_messages(wallet: Option<&(String, String)>, until: DateTime<Utc>) -> Messages {
    let (zh, en) = wallet_words(wallet);
    Messages {
        zh: format!("为保障您的账户安全，{zh}已暂停支付，至 {}。如有疑问，请联系客服。", time_zh(until)),
        en: format!(
            "For your security, payments with your {en} are paused until {}. If you have questions, contact customer service.",
            time(until)
        ),
    }
}

fn unlocked_messages(wallet: Option<&(String, String)>, cause: UnlockCause) -> Messages {
    let (zh, en) = wallet_words(wallet);
    let (why_zh, why_en) = match cause {
        UnlockCause::Manual => ("经安全团队核实，", "After a review by our security team, "),
        UnlockCause::Expired => ("暂停期已结束，", "The pause has ended: "),
    };
    Messages {
        zh: format!("{why_zh}{zh}已恢复支付。"),
        en: format!("{why_en}payments with your {en} are possible again."),
    }
}

/// An alert's rule, in words the account holder understands.
fn rule_words(rule: &str) -> (&'static str, &'static str) {
    match rule {
        "password_brute_force" => ("多次输入错误的支付密码", "several wrong payment passwords"),
        "bind_failure_burst" => ("多次绑定失败", "many failed attempts to bind a wallet"),
        "bind_then_drain" => (
            "新绑定的钱包短时间内大额支付",
            "large payments right after a wallet was bound",
        ),
        "shared_wallet" => ("同一钱包绑定到多个账户", "one wallet bound to several accounts"),
        "binding_churn" => ("反复绑定和解绑钱包", "wallets bound and unbound again and again"),
        "amount_spike" => ("远高于平时的支付金额", "a payment far above your usual amounts"),
        "dead_wallet_probing" => ("尝试绑定已失效的钱包", "attempts to bind wallets that no longer exist"),
        "password_stuffing" => (
            "多个账户在绑定时尝试同一钱包的支付密码",
            "the payment password of one wallet was tried from several accounts",
        ),
        _ => ("异常操作", "unusual activity"),
    }
}

fn alert_messages(rule: &str) -> Messages {
    let (zh, en) = rule_words(rule);
    Messages {
        zh: format!("我们发现您的账户存在异常：{zh}。如非本人操作，请立即修改支付密码并联系客服。"),
        en: format!(
            "We noticed unusual activity on your account: {en}. If this was not you, change your payment password and contact customer service at once."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::RULE_NAMES;

    #[test]
    fn the_chinese_text_gives_beijing_time_and_the_english_utc() {
        // 2026-12-07 16:30 UTC is 2026-12-08 00:30 in Beijing: the day changes too.
        let until = DateTime::parse_from_rfc3339("2026-12-07T16:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let m = locked_messages(Some(&("alipay".into(), "138****5678".into())), until);
        assert!(m.zh.contains("2026-12-08 00:30（北京时间）"), "{}", m.zh);
        assert!(!m.zh.contains("UTC"), "{}", m.zh);
        assert!(m.en.contains("2026-12-07 16:30 UTC"), "{}", m.en);
    }

    #[test]
    fn every_rule_has_its_words_in_both_languages() {
        for rule in RULE_NAMES {
            let (zh, en) = rule_words(rule);
            assert_ne!(en, "unusual activity", "{rule}");
            assert!(zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "{rule}");
        }
    }

    #[test]
    fn a_lock_names_the_wallet_when_it_is_known_and_says_until_when() {
        let until = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let known = locked_messages(Some(&("alipay".into(), "138****5678".into())), until);
        assert!(
            known.zh.contains("支付宝（138****5678）") && known.zh.contains(&time_zh(until)),
            "{known:?}"
        );
        assert!(known.en.contains("Alipay wallet 138****5678") && known.en.contains(&time(until)));
        let unknown = locked_messages(None, until);
        assert!(unknown.en.contains("a wallet bound to your account"), "{unknown:?}");
    }
}
