//! The signer: signs the durable head of the log (in replicated mode, the head the cluster
//! holds) every so many events or seconds, and once more when the node stops (see [`crate::checkpoint`] for the format).

use crate::checkpoint::{CheckpointKey, CheckpointStore};

/// Makes a checkpoint every `every_events` events or `every_seconds` (whichever first, when
/// there is something new), until `shutdown`; then one last one. Signing never waits for Kafka:
/// [`CheckpointPublisher`] puts the stored checkpoints on their topic on its own.
pub async fn run(
    ledger: crate::Ledger,
    key: std::sync::Arc<CheckpointKey>,
    store: CheckpointStore,
    config: crate::config::CheckpointsConfig,
    signed: tokio::sync::watch::Sender<u64>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (every_events, every_seconds) = (config.every_events, config.every_seconds);
    let mut durable = ledger.subscribe();
    let mut last = store.last().ok().flatten().map_or(0, |c| c.seq);
    let mut since = tokio::time::Instant::now();
    loop {
        let stopping = *shutdown.borrow();
        // What may be signed: the durable head, in replicated mode only what the cluster
        // holds, and nothing once a promotion fenced this node (its events past the chain
        // are quarantined when it rejoins; a signature must never cover one).
        let head = if ledger.is_primary() {
            ledger.signable_head()
        } else {
            last
        };
        let due =
            head > last && (head >= last + every_events || since.elapsed().as_secs() >= every_seconds || stopping);
        if due {
            match ledger.event_bytes(head) {
                Ok(Some(bytes)) => {
                    let cp = key.sign(head, bindledger_events::hash_bytes(&bytes), ledger.now());
                    match store.put(&cp) {
                        Ok(()) => {
                            last = head;
                            since = tokio::time::Instant::now();
                            signed.send_replace(head);
                        }
                        Err(e) => tracing::error!(error = %crate::error::chain(&e), "storing a checkpoint failed"),
                    }
                }
                other => tracing::error!(?other, seq = head, "reading the head for a checkpoint failed"),
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = durable.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = shutdown.changed() => {}
        }
    }
}
