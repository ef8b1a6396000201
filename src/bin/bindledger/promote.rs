//! `bindledger promote`: make a read replica the primary.

use anyhow::{Context, Result};

use crate::remote::{print_refusal, Remote};
use crate::EXIT_ERROR;

pub async fn run(remote: &Remote, json: bool) -> Result<i32> {
    let (addr, token) = remote.connect()?;
    let (status, v) = bindledger::adapters::http::client::Client::new(addr, Some(token))
        .post_json("/v1/admin/promote", &serde_json::json!({}))
        .await
        .with_context(|| format!("asking {}", remote.url))?;
    if json {
        outln!("{v}");
    } else if status.is_success() {
        if v["promoted"] == true {
            outln!(
                "promoted: {} takes commands, {} events, after {:.3} s",
                remote.url,
                v["events"],
                v["seconds"].as_f64().unwrap_or(0.0)
            );
        } else {
            outln!("{} is already the primary ({} events)", remote.url, v["events"]);
        }
    } else {
        print_refusal(&remote.url, status, &v);
    }
    Ok(if status.is_success() { 0 } else { EXIT_ERROR })
}
