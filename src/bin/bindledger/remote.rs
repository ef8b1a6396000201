//! How the commands that talk to a running ledger reach it: its URL and a token.

use anyhow::{Context, Result};
use bindledger::adapters::http::client::Endpoint;
use clap::Args;
use std::path::{Path, PathBuf};

/// How to reach a running ledger: flags, else the environment, else a saved profile
/// (`bindledger profile`), else the defaults.
#[derive(Args)]
pub struct Remote {
    /// The ledger's URL: http:// or https://, with a host name or an address. Default: the
    /// profile's, else http://127.0.0.1:8080.
    #[arg(long = "url", env = "BINDLEDGER_URL", value_parser = url_arg)]
    url_given: Option<String>,
    /// A token with the needed role (status: reader; alerts: security or auditor). Default:
    /// the profile's token file, else the admin token in --data-dir.
    #[arg(long, env = "BINDLEDGER_TOKEN")]
    pub token: Option<String>,
    /// Where to find the admin token when no token is given (the ledger's data directory).
    #[arg(long, default_value = "bindledger-data")]
    pub data_dir: PathBuf,
    /// A saved profile (`bindledger profile list`); default: the one `profile use` chose.
    #[arg(long, env = "BINDLEDGER_PROFILE")]
    pub profile: Option<String>,
    /// Verify an https:// ledger against the CA certificates in this PEM file alone (instead of
    /// the usual public roots): a ledger with its own CA (http.tls).
    #[arg(long, env = "BINDLEDGER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The URL in use, once [`Remote::resolve`] has run.
    #[arg(skip)]
    pub url: String,
    #[arg(skip)]
    token_file: Option<PathBuf>,
}

impl Remote {
    /// Fills in what the flags and the environment left to the profile or the defaults.
    pub fn resolve(&mut self) -> Result<()> {
        let saved = match crate::profile::path() {
            Some(path) if self.url_given.is_none() || self.token.is_none() || self.profile.is_some() => {
                crate::profile::Profiles::load(&path)?
            }
            _ => crate::profile::Profiles::default(),
        };
        let profile = saved.chosen(self.profile.as_deref())?;
        self.url = match (&self.url_given, profile) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => p.url.clone(),
            (None, None) => "http://127.0.0.1:8080".to_owned(),
        };
        if self.token.is_none() {
            self.token_file = profile.and_then(|p| p.token_file.clone());
        }
        Ok(())
    }

    pub fn connect(&self) -> Result<(Endpoint, String)> {
        if let Some(ca) = &self.ca_file {
            trust_ca_file(ca)?;
        }
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|t| t.trim().to_owned())
                .with_context(|| format!("reading the profile's token file {}", file.display()))?,
            (None, None) => token_or_admin(None, &self.data_dir)?,
        };
        Ok((parse_url(&self.url)?, token))
    }

    /// `POST path` with a JSON body: the answer's status and JSON.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(hyper::StatusCode, serde_json::Value)> {
        let (addr, token) = self.connect()?;
        bindledger::adapters::http::client::Client::new(addr, Some(token))
            .post_json(path, body)
            .await
            .with_context(|| format!("asking {}", self.url))
    }

    /// `GET path`: the answer's status and JSON.
    pub async fn get(&self, path: &str) -> Result<(hyper::StatusCode, serde_json::Value)> {
        let (addr, token) = self.connect()?;
        bindledger::adapters::http::client::Client::new(addr, Some(token))
            .get_json(path)
            .await
            .with_context(|| format!("asking {}", self.url))
    }
}

/// From now on this process's clients verify `https://` servers against the CA in `ca` alone
/// (`--ca-file`).
pub fn trust_ca_file(ca: &Path) -> Result<()> {
    let pem = std::fs::read(ca).with_context(|| format!("reading the CA file {}", ca.display()))?;
    bindledger::adapters::http::client::trust_only(&pem).with_context(|| format!("--ca-file {}", ca.display()))?;
    Ok(())
}

pub fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `--url` checked as clap parses it, so a bad one is a usage error (exit 2), like any other
/// bad value.
pub fn url_arg(url: &str) -> std::result::Result<String, String> {
    Endpoint::parse(url)
        .map(|_| url.to_owned())
        .map_err(|e| format!("{e} (expected http:// or https:// with a host name or an address)"))
}

pub fn parse_url(url: &str) -> Result<Endpoint> {
    Endpoint::parse(url).with_context(|| format!("--url {url}"))
}

pub fn token_or_admin(token: Option<String>, data_dir: &Path) -> Result<String> {
    match token {
        Some(t) => Ok(t),
        None => std::fs::read_to_string(data_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("no --token and no admin token in {}", data_dir.display())),
    }
}

/// Prints a ledger's refusal (`{"error": {"code", "message"}}`) on stderr.
pub fn print_refusal(url: &str, status: hyper::StatusCode, v: &serde_json::Value) {
    eprintln!(
        "error: {url} answered {status}: {} ({})",
        v["error"]["message"].as_str().unwrap_or("?"),
        v["error"]["code"].as_str().unwrap_or("?")
    );
}

/// Extra librdkafka properties for a command that reads Kafka (TLS, SASL), as the nodes'
/// `kafka.properties`: `--kafka-property security.protocol=ssl --kafka-property
/// ssl.ca.location=ca.pem`.
#[derive(Args, Clone, Default)]
pub struct KafkaProperties {
    /// A librdkafka property, KEY=VALUE (repeat for more): security.protocol=ssl,
    /// ssl.ca.location=FILE, sasl.mechanism=..., as the nodes' kafka.properties.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = property)]
    pub properties: Vec<(String, String)>,
}

impl KafkaProperties {
    pub fn map(&self) -> std::collections::BTreeMap<String, String> {
        self.properties.iter().cloned().collect()
    }
}

fn property(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE, a librdkafka property".to_owned()),
    }
}
