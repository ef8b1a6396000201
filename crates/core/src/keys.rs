//! The ledger's keys and rules on disk: the ledger secret (created on first start, mode 0600)
//! and the alert rules file. The types are the domain's; reading and writing them is here.

use std::path::Path;

use crate::domain::alerts::rules::{RuleSet, RulesError};
use crate::domain::secret::LedgerSecret;
use crate::error::Error;

/// Reads the ledger's secret file, or creates it with a random secret (mode 0600) if it is
/// missing.
pub fn load_or_create_secret(path: &Path) -> Result<LedgerSecret, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => LedgerSecret::from_hex(&s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| Error::config_by("no randomness", e))?;
            write_private(path, hex::encode(b).as_bytes())?;
            tracing::info!(path = %path.display(), "created a new ledger secret");
            Ok(LedgerSecret::from_bytes(b))
        }
        Err(e) => Err(Error::io_caused(
            format!("reading the secret file {}", path.display()),
            e,
        )),
    }
}

/// The webhooks' signing secret: the file's text, trimmed (the receiver uses the same text);
/// created with 64 random hex characters (mode 0600) if it is missing.
pub fn load_or_create_webhook_secret(path: &Path) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => Ok(s.trim().to_owned()),
        Ok(_) => Err(Error::config(format!(
            "{}: a webhook secret is at least 16 characters",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| Error::config_by("no randomness", e))?;
            let secret = hex::encode(b);
            write_private(path, secret.as_bytes())?;
            tracing::info!(path = %path.display(), "created a new webhook signing secret");
            Ok(secret)
        }
        Err(e) => Err(Error::io_caused(
            format!("reading the webhook secret {}", path.display()),
            e,
        )),
    }
}

/// Reads a rules file from disk.
pub fn load_rules(path: &std::path::Path) -> Result<RuleSet, RulesError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RulesError {
        file: Some(name.clone()),
        line: 0,
        message: format!("cannot read it: {e}"),
    })?;
    RuleSet::from_toml(&text, Some(&name))
}

/// The alert rules a configuration names: its rules file if one is configured (refused with
/// the line and the problem if it cannot be used), else the defaults.
pub fn alert_rules(config: &crate::config::Config) -> Result<RuleSet, Error> {
    match &config.alerts.rules_file {
        Some(path) => load_rules(path).map_err(|e| Error::config_by("alert rules", e)),
        None => Ok(RuleSet::default()),
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| Error::io_caused(format!("creating {}", path.display()), e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io_caused(format!("writing {}", path.display()), e))
}
