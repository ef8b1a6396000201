//! `bindledger unlock`: lift a binding's lock (security role).

use anyhow::Result;

use crate::remote::{print_refusal, url_escape, Remote};
use crate::EXIT_ERROR;

pub async fn run(remote: &Remote, account: &str, binding: &str, json: bool) -> Result<i32> {
    let path = format!(
        "/v1/accounts/{}/bindings/{}/unlock",
        url_escape(account),
        url_escape(binding)
    );
    let (status, v) = remote.post(&path, &serde_json::json!({"confirm": true})).await?;
    if json {
        outln!("{v}");
    }
    if !status.is_success() {
        if !json {
            print_refusal(&remote.url, status, &v);
        }
        return Ok(EXIT_ERROR);
    }
    let event = &v["event"];
    match v["event_type"].as_str() {
        Some("binding_unlocked") => {
            if !json {
                outln!(
                    "unlocked binding {binding} of {account} (the lock of alert {}), event {}",
                    event["payload"]["alert_id"].as_str().unwrap_or("?"),
                    event["seq"]
                );
            }
            Ok(0)
        }
        _ => {
            if !json {
                outln!(
                    "not unlocked: {} (event {})",
                    v["failure_code"].as_str().unwrap_or("?"),
                    event["seq"]
                );
            }
            Ok(EXIT_ERROR)
        }
    }
}
