//! Assertions on the write path, kept on in release builds (TigerBeetle's habit): each states
//! something the code around it makes true by construction, checked where a mistake elsewhere
//! (in the decision fold, the read model, the batching) would otherwise reach the disk or an
//! answer unseen. A failed one panics the writer or the flusher thread, which aborts the
//! process (`seams::abort_on_core_panic`): stopping is recoverable, a log written past a broken
//! invariant is not. Their cost is measured by `bindledger bench` ("write-path assertions").

use bindledger_events::{Event, Hash};
use std::sync::Arc;

/// A batch about to be written continues the log: at most `batch_max` events, their `seq`
/// from `first_seq` without a gap, each linking to the one before (the first to `prev_hash`,
/// the log's head before the batch).
pub fn batch_continues_the_log(
    first_seq: u64,
    prev_hash: Hash,
    events: &[(Arc<Event>, bytes::Bytes, Hash)],
    batch_max: usize,
) {
    assert!(
        events.len() <= batch_max,
        "a batch of {} events, over batch_max {batch_max}",
        events.len()
    );
    let mut prev = prev_hash;
    for (seq, (event, _, hash)) in (first_seq..).zip(events) {
        assert_eq!(event.seq, seq, "a batch's events are not contiguous");
        assert_eq!(
            event.prev_hash, prev,
            "event {seq} does not link to the event before it"
        );
        prev = *hash;
    }
}

/// After an event is folded into the writer's state, its account is at the event's
/// `account_seq`: the version the next command of the account is decided against.
pub fn account_at_its_event(version_after: Option<u64>, event: &Event) {
    assert_eq!(
        version_after,
        Some(event.account_seq),
        "event {}: the account's version after it is not its account_seq",
        event.seq
    );
}

/// Batches become durable in order: the first event of what is published follows the last
/// durable one, and the read model ends at the last.
pub fn published_in_order(durable_before: u64, first_seq: u64, last_seq: u64, read_position: u64) {
    assert_eq!(
        first_seq,
        durable_before + 1,
        "event {first_seq} published after event {durable_before}"
    );
    assert_eq!(
        read_position, last_seq,
        "the read model is not at the last event published"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindledger_domain::testing::event;
    use bindledger_events::{hash_bytes, Payload, UnbindFailure};

    fn chain(n: u64) -> Vec<(Arc<Event>, bytes::Bytes, Hash)> {
        let mut prev = Hash::default();
        (1..=n)
            .map(|seq| {
                let payload = Payload::UnbindFailed {
                    binding_id: uuid::Uuid::from_u128(7),
                    reason: UnbindFailure::NotBound,
                };
                let mut e = event(seq, "a", seq, chrono::Utc::now(), payload);
                e.prev_hash = prev;
                let bytes = bindledger_events::encode(&e);
                prev = hash_bytes(&bytes);
                (Arc::new(e), bytes::Bytes::from(bytes), prev)
            })
            .collect()
    }

    #[test]
    fn each_assertion_holds_on_a_good_batch_and_fails_on_a_broken_one() {
        let good = chain(4);
        batch_continues_the_log(1, Hash::default(), &good, 4);
        let caught = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(
            caught(&|| batch_continues_the_log(1, Hash::default(), &good, 3)),
            "over batch_max"
        );
        assert!(
            caught(&|| batch_continues_the_log(2, Hash::default(), &good, 4)),
            "a gap before"
        );
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert!(
            caught(&|| batch_continues_the_log(1, Hash::default(), &swapped, 4)),
            "out of order"
        );
        assert!(
            caught(&|| batch_continues_the_log(1, Hash([1; 32]), &good, 4)),
            "a broken first link"
        );
        account_at_its_event(Some(3), &good[2].0);
        assert!(caught(&|| account_at_its_event(Some(2), &good[2].0)));
        assert!(caught(&|| account_at_its_event(None, &good[0].0)));
        published_in_order(10, 11, 14, 14);
        assert!(caught(&|| published_in_order(10, 12, 14, 14)));
        assert!(caught(&|| published_in_order(10, 11, 14, 13)));
    }
}
