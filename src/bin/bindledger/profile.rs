//! `bindledger profile`: saved ways to reach a ledger (its URL and where its token is), so the
//! remote commands (`status`, `alerts`, `unlock`, `promote`) need no `--url` and `--token`
//! each time, as `rpk profile` does for Redpanda.
//!
//! The file is TOML, `$BINDLEDGER_PROFILES`, else `$XDG_CONFIG_HOME/bindledger/profiles.toml`,
//! else `~/.config/bindledger/profiles.toml`, written with mode 0600:
//!
//! ```toml
//! current = "prod"
//!
//! [profiles.prod]
//! url = "https://ledger.internal:8443"
//! token_file = "/run/secrets/bindledger-reader"
//! ```
//!
//! A profile names the token's file, never the token: the profiles file can be shared or
//! backed up without a secret in it.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Save a profile (a new one, or new values for one): its URL and its token's file.
    Set {
        name: String,
        /// The ledger's URL: http:// or https://, with a host name or an address.
        #[arg(long, value_parser = crate::remote::url_arg)]
        url: String,
        /// The file holding the token (one line; keep it mode 0600).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Use this profile when no --profile is given.
    Use { name: String },
    /// List the profiles (`*` marks the one in use).
    List,
    /// Remove a profile.
    Delete { name: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub url: String,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Profiles {
    pub current: Option<String>,
    pub profiles: BTreeMap<String, Profile>,
}

/// Where the profiles live.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BINDLEDGER_PROFILES") {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("bindledger").join("profiles.toml"))
}

impl Profiles {
    pub fn load(path: &Path) -> Result<Profiles> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Profiles::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        let mut out = Profiles {
            current: table.get("current").and_then(|v| v.as_str()).map(str::to_owned),
            ..Profiles::default()
        };
        for (name, p) in table.get("profiles").and_then(|v| v.as_table()).into_iter().flatten() {
            let url = p
                .get("url")
                .and_then(|v| v.as_str())
                .with_context(|| format!("{}: profile {name} has no url", path.display()))?;
            let token_file = p.get("token_file").and_then(|v| v.as_str()).map(PathBuf::from);
            out.profiles.insert(
                name.clone(),
                Profile {
                    url: url.to_owned(),
                    token_file,
                },
            );
        }
        Ok(out)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        // Strings as JSON writes them are TOML basic strings.
        let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let mut text = String::from("# bindledger profiles: `bindledger profile --help`\n");
        if let Some(c) = &self.current {
            text.push_str(&format!("current = {}\n", quote(c)));
        }
        for (name, p) in &self.profiles {
            text.push_str(&format!("\n[profiles.{}]\nurl = {}\n", quote(name), quote(&p.url)));
            if let Some(f) = &p.token_file {
                text.push_str(&format!("token_file = {}\n", quote(&f.display().to_string())));
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let partial = path.with_extension("toml.partial");
        let _ = std::fs::remove_file(&partial);
        bindledger::ledger::keys::write_private(&partial, text.as_bytes())?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The profile to use: the one named, else the current one, else none.
    pub fn chosen(&self, name: Option<&str>) -> Result<Option<&Profile>> {
        match name.or(self.current.as_deref()) {
            None => Ok(None),
            Some(n) => match self.profiles.get(n) {
                Some(p) => Ok(Some(p)),
                None => bail!("no profile {n:?} (bindledger profile list shows them)"),
            },
        }
    }
}

pub fn run(command: ProfileCommand) -> Result<i32> {
    let path = path().context("no place for the profiles: set BINDLEDGER_PROFILES or HOME")?;
    let mut all = Profiles::load(&path)?;
    match command {
        ProfileCommand::Set { name, url, token_file } => {
            let token_file = match token_file {
                Some(f) => Some(std::fs::canonicalize(&f).with_context(|| format!("the token file {}", f.display()))?),
                None => None,
            };
            all.profiles.insert(name.clone(), Profile { url, token_file });
            if all.current.is_none() {
                all.current = Some(name.clone());
            }
            all.save(&path)?;
            eprintln!("saved profile {name} in {}", path.display());
        }
        ProfileCommand::Use { name } => {
            if !all.profiles.contains_key(&name) {
                bail!("no profile {name:?} (bindledger profile list shows them)");
            }
            all.current = Some(name);
            all.save(&path)?;
        }
        ProfileCommand::List => {
            for (name, p) in &all.profiles {
                let mark = if all.current.as_deref() == Some(name) { "*" } else { " " };
                outln!(
                    "{mark} {name:<16} {:<40} {}",
                    p.url,
                    p.token_file
                        .as_ref()
                        .map_or("(token: --token or BINDLEDGER_TOKEN)".to_owned(), |f| format!(
                            "token in {}",
                            f.display()
                        ))
                );
            }
        }
        ProfileCommand::Delete { name } => {
            if all.profiles.remove(&name).is_none() {
                bail!("no profile {name:?}");
            }
            if all.current.as_deref() == Some(name.as_str()) {
                all.current = None;
            }
            all.save(&path)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_saved_and_read_back_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("profiles.toml");
        let mut all = Profiles {
            current: Some("prod \"eu\"".into()),
            ..Profiles::default()
        };
        all.profiles.insert(
            "prod \"eu\"".into(),
            Profile {
                url: "https://ledger.example:8443".into(),
                token_file: Some("/run/secrets/a token".into()),
            },
        );
        all.profiles.insert(
            "local".into(),
            Profile {
                url: "http://127.0.0.1:8080".into(),
                token_file: None,
            },
        );
        all.save(&path).unwrap();
        assert_eq!(Profiles::load(&path).unwrap(), all);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(all.chosen(None).unwrap().unwrap().url, "https://ledger.example:8443");
        assert_eq!(all.chosen(Some("local")).unwrap().unwrap().url, "http://127.0.0.1:8080");
        assert!(all.chosen(Some("nope")).is_err());
        assert_eq!(
            Profiles::load(&dir.path().join("none.toml")).unwrap(),
            Profiles::default()
        );
    }
}
