//! `bindledger promote`: make a read replica the primary.

use anyhow::Result;

use crate::remote::{print_refusal, Remote};
use crate::EXIT_ERROR;

pub async fn run(remote: &Remote, json: bool) -> Result<i32> {
    let (status, v) = remote.post("/v1/admin/promote", &serde_json::json!({})).await?;
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
