//! Sensitive data. Raw wallet account numbers, phone numbers, payment passwords, SMS codes and
//! biometric assertions live only in [`SecretString`] while a command is in flight: it cannot
//! be serialized, and its `Debug` prints nothing. What the ledger keeps of a wallet is a masked
//! display form and a keyed fingerprint ([`LedgerSecret::fingerprint`]).

use bindledger_events::{Hash, Provider, WalletRef};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

use crate::error::Error;

/// A secret string: never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: String) -> Self {
        SecretString(s)
    }
    /// The only way to read it; call sites are few and reviewed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

/// The ledger's HMAC key (32 bytes).
#[derive(Clone)]
pub struct LedgerSecret([u8; 32]);

impl fmt::Debug for LedgerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LedgerSecret([redacted])")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl LedgerSecret {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        LedgerSecret(b)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, Error> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b)
            .map_err(|_| Error::config("the ledger secret must be 64 hex characters (32 bytes)"))?;
        Ok(LedgerSecret(b))
    }

    pub fn mac(&self, parts: &[&[u8]]) -> Hash {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("any key length");
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        Hash(m.finalize().into_bytes().into())
    }

    /// A value that identifies this secret without revealing it: stored in the log's metadata
    /// so that opening a log with another secret is refused.
    pub fn check_value(&self) -> Hash {
        self.mac(&[b"bindledger/secret-check/v1"])
    }

    /// The keyed fingerprint of a wallet: same wallet, same fingerprint, across accounts.
    pub fn fingerprint(&self, provider: &Provider, normalized_account: &str) -> Hash {
        self.mac(&[
            b"bindledger/wallet/v1",
            provider.as_str().as_bytes(),
            normalized_account.as_bytes(),
        ])
    }

    /// Sets the context's keyed fingerprints (schema v9) of its device id and IP address, as
    /// given (an address trimmed and lowercased, so one IPv6 address has one fingerprint):
    /// one device or address is recognised across accounts without being readable.
    pub fn fingerprint_context(&self, context: &mut bindledger_events::Context) {
        context.device_fp = context
            .device_id
            .as_deref()
            .map(|d| self.mac(&[b"bindledger/device/v1", d.as_bytes()]));
        context.ip_fp = context
            .ip
            .as_deref()
            .map(|ip| self.mac(&[b"bindledger/ip/v1", ip.trim().to_ascii_lowercase().as_bytes()]));
    }

    pub fn wallet_ref(&self, provider: &Provider, raw_account: &str) -> WalletRef {
        let normalized = normalize_wallet_account(raw_account);
        WalletRef {
            masked: mask(&normalized),
            fingerprint: self.fingerprint(provider, &normalized),
        }
    }
}

/// Normalises a wallet account: trims, lowercases e-mail style accounts, drops spaces and
/// dashes from numbers.
pub fn normalize_wallet_account(raw: &str) -> String {
    let t = raw.trim();
    if t.contains('@') {
        t.to_lowercase()
    } else {
        t.chars().filter(|c| !matches!(c, ' ' | '-')).collect()
    }
}

/// The display form of a wallet account. The rule (README, "Nothing sensitive is kept"): at
/// least half of the digits are hidden, whatever the length.
/// - A number of n digits (a leading `+` is kept as it is) shows at most n / 2 of them
///   (rounded down): the last four at most, and before them the first three at most, when
///   that stays within n / 2. Numbers of 13 digits or more (cards, phones with a country
///   code) show the last four only. Each hidden digit is one `*`.
///   `13812345678` -> `1******5678`; `85212341` -> `****2341`; `12345` -> `***45`.
/// - An e-mail style account shows the first character of its name when the name has two or
///   more, then `***@` and at most the last 12 characters of the domain.
pub fn mask(normalized: &str) -> String {
    if let Some((user, domain)) = normalized.split_once('@') {
        let first: String = if user.chars().count() >= 2 {
            user.chars().take(1).collect()
        } else {
            String::new()
        };
        let domain_shown: String = domain
            .chars()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return format!("{first}***@{domain_shown}");
    }
    let (plus, digits) = match normalized.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", normalized),
    };
    let chars: Vec<char> = digits.chars().collect();
    let n = chars.len();
    let shown_max = n / 2;
    let tail = shown_max.min(4);
    let head = if n >= 13 { 0 } else { (shown_max - tail).min(3) };
    let mut out = String::with_capacity(n + 1);
    out.push_str(plus);
    out.extend(&chars[..head]);
    out.extend(std::iter::repeat_n('*', n - head - tail));
    out.extend(&chars[n - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_the_platform_shows_it() {
        assert_eq!(mask("13812345678"), "1******5678");
        assert_eq!(mask("+8613812345678"), "+*********5678");
        assert_eq!(mask("6222021234567890123"), "***************0123");
        assert_eq!(mask("alice@example.com"), "a***@example.com");
        assert_eq!(mask("a@example.com"), "***@example.com");
        assert_eq!(mask("12345"), "***45");
        assert_eq!(mask("85212341"), "****2341");
    }

    #[test]
    fn masking_hides_at_least_half_of_the_digits_at_every_length() {
        for n in 1..=19usize {
            let number: String = (0..n).map(|i| char::from(b'1' + (i % 9) as u8)).collect();
            for form in [number.clone(), format!("+{number}")] {
                let masked = mask(&form);
                let shown = masked.chars().filter(|c| c.is_ascii_digit()).count();
                let hidden = masked.chars().filter(|c| *c == '*').count();
                assert_eq!(shown + hidden, n, "{form} -> {masked}: one character per digit");
                assert!(hidden * 2 >= n, "{form} -> {masked}: {hidden} of {n} digits hidden");
            }
        }
    }

    #[test]
    fn fingerprints_are_keyed_and_normalised() {
        let a = LedgerSecret::from_bytes([1; 32]);
        let b = LedgerSecret::from_bytes([2; 32]);
        let p = Provider::parse("alipay").unwrap();
        assert_eq!(
            a.wallet_ref(&p, "138 1234 5678").fingerprint,
            a.wallet_ref(&p, "13812345678").fingerprint
        );
        assert_ne!(
            a.wallet_ref(&p, "13812345678").fingerprint,
            b.wallet_ref(&p, "13812345678").fingerprint
        );
        let q = Provider::parse("wechat_pay").unwrap();
        assert_ne!(
            a.wallet_ref(&p, "13812345678").fingerprint,
            a.wallet_ref(&q, "13812345678").fingerprint
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = SecretString::new("654321".into());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert!(!format!("{:?}", LedgerSecret::from_bytes([9; 32])).contains("09"));
    }
}
