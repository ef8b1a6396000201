//! How the commands that talk to a running ledger reach it: its URL and a token.

use anyhow::{Context, Result};
use bindledger::adapters::http::client::Endpoint;
use clap::Args;
use std::path::{Path, PathBuf};

/// How to reach a running ledger.
#[derive(Args)]
pub struct Remote {
    /// The ledger's URL: http:// or https://, with a host name or an address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "BINDLEDGER_URL", value_parser = url_arg)]
    pub url: String,
    /// A token with the needed role (status: reader; alerts: security or auditor). Default:
    /// the admin token in --data-dir.
    #[arg(long, env = "BINDLEDGER_TOKEN")]
    pub token: Option<String>,
    /// Where to find the admin token when --token is not given (the ledger's data directory).
    #[arg(long, default_value = "bindledger-data")]
    pub data_dir: PathBuf,
}

impl Remote {
    pub fn connect(&self) -> Result<(Endpoint, String)> {
        Ok((
            parse_url(&self.url)?,
            token_or_admin(self.token.clone(), &self.data_dir)?,
        ))
    }
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
