//! `bindledger erase` and `bindledger keys`: a person's right to be forgotten, and the master
//! key whose rotation bounds how long a copy of an erased person's wrapped key stays readable.

use anyhow::Result;
use clap::Subcommand;

use crate::remote::{print_refusal, url_escape, Remote};
use crate::EXIT_ERROR;

/// `bindledger erase`: destroys the account's data key and appends `subject_erased`.
pub async fn erase(remote: &Remote, account: &str, json: bool) -> Result<i32> {
    let path = format!("/v1/accounts/{}/erasure", url_escape(account));
    let (status, v) = remote.post(&path, &serde_json::json!({"confirm": true})).await?;
    if json {
        outln!("{v}");
    } else if status.is_success() {
        outln!(
            "erased: the data key of {account} is destroyed (event {}); its personal fields read as erased on every node that applied it, and in every other copy after the next `bindledger keys rotate`",
            v["event"]["seq"]
        );
    } else {
        print_refusal(&remote.url, status, &v);
    }
    Ok(if status.is_success() { 0 } else { EXIT_ERROR })
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// The key store, its master key generations and the data keys held (privacy role).
    Status {
        #[command(flatten)]
        remote: Remote,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the master key (privacy role): a new generation, every data key rewrapped under
    /// it, the older generations destroyed. A wrapped key that a copy kept from before (the
    /// keys topic, a backup, an erased account's) opens under no master key afterwards. Run it
    /// on the primary; replicas take the rewrapped keys from the keys topic.
    Rotate {
        #[command(flatten)]
        remote: Remote,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn keys(command: KeysCommand) -> Result<i32> {
    let (mut remote, json, rotate) = match command {
        KeysCommand::Status { remote, json } => (remote, json, false),
        KeysCommand::Rotate { remote, json } => (remote, json, true),
    };
    remote.resolve()?;
    let (status, v) = if rotate {
        remote.post("/v1/admin/keys/rotate", &serde_json::json!({})).await?
    } else {
        remote.get("/v1/admin/keys").await?
    };
    if json {
        outln!("{v}");
    } else if !status.is_success() {
        print_refusal(&remote.url, status, &v);
    } else if rotate {
        outln!(
            "rotated: master key generation {} is current; {} data keys rewrapped; older generations destroyed",
            v["generation"],
            v["rewrapped"]
        );
    } else {
        outln!(
            "key store: {}\ncurrent generation: {} (held: {})\ndata keys: {}",
            v["store"].as_str().unwrap_or("?"),
            v["current"],
            v["generations"],
            v["data_keys"]
        );
    }
    Ok(if status.is_success() { 0 } else { EXIT_ERROR })
}
