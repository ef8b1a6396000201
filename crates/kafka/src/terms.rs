//! Terms and fences: how a promotion stops the previous primary from forking the chain.
//!
//! Every event message carries the `epoch` of the primary that published it (its term: 0 for
//! the first primary, one more at each promotion). A promotion to epoch `E` first writes a
//! *fence* (a message with the header `fence: E` and no `seq`) to every partition of the
//! events topic, then reads every partition up to its fence, and only then takes commands.
//! What a previous primary still writes after that cannot join the chain, by three rules every
//! reader applies (TOPIC.md):
//!
//! 1. In a partition, a fence of epoch `E` drops every later message of an epoch below `E`.
//! 2. Once the chain holds an event of epoch `E`, a message of an epoch below `E` is dropped.
//! 3. A message is dropped when a later message of its partition has a higher epoch and a
//!    smaller `seq` (a previous primary's event written before the fence, whose predecessor
//!    landed after a fence elsewhere: the new primary never saw a chain through it).
//!
//! The promoted node sees exactly the messages before its fences, so it continues the same
//! chain every reader rebuilds. The previous primary learns it was fenced from the topic
//! itself: it checks that each of its messages lands at the very offset after its last one in
//! that partition (a fence in between moves it), and it acknowledges an event only once every
//! message up to it landed so: nothing it acknowledges can be dropped by the rules.
//!
//! Kafka's own fencing (`transactional.id` epochs) would refuse the old primary's messages at
//! the broker; the development broker, tansu 0.6, cannot commit transactions (no `EndTxn`), so
//! the fence is kept in the topic, where any broker keeps it.

use std::collections::VecDeque;

/// The rules' state while a topic is read: per partition the highest fence read in it, the
/// epoch of the last event taken into the chain, and the highest epoch seen anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    pub fenced: Vec<u64>,
    pub chain: u64,
    pub highest: u64,
    /// Messages dropped by the rules (written by a primary after it was fenced).
    pub dropped: u64,
    /// Per partition, the first fence read of the highest epoch read there: (epoch, node).
    /// A promotion checks it wrote each partition's (not saved).
    pub first: Vec<Option<(u64, String)>>,
}

impl Terms {
    pub fn new(partitions: usize) -> Terms {
        Terms {
            fenced: vec![0; partitions],
            ..Terms::default()
        }
    }

    /// Rule 1, as a message of partition `p` is read: the message to buffer, or `None` for a
    /// fence (remembered) or a message it drops.
    pub fn admit(&mut self, p: usize, mut record: SeqRecord) -> Option<SeqRecord> {
        if p >= self.fenced.len() {
            self.fenced.resize(p + 1, 0);
        }
        if p >= self.first.len() {
            self.first.resize(p + 1, None);
        }
        self.highest = self.highest.max(record.epoch);
        if let Some(fence) = &record.fence {
            if record.epoch > self.fenced[p] || self.first[p].is_none() {
                self.first[p] = Some((record.epoch, fence.node.clone()));
            }
            self.fenced[p] = self.fenced[p].max(record.epoch);
            return None;
        }
        if record.epoch < self.fenced[p] {
            self.dropped += 1;
            return None;
        }
        record.fenced = self.fenced[p];
        Some(record)
    }

    /// Rules 2 and 3 at the head of partition `p`'s buffer: drops the messages there that
    /// cannot be in the chain. Rule 3 looks only as far as the buffer holds.
    pub fn prune(&mut self, buffer: &mut VecDeque<SeqRecord>) {
        while let Some(head) = buffer.front() {
            let later_and_lower = || {
                buffer.back().is_some_and(|b| b.epoch > head.epoch)
                    && buffer
                        .iter()
                        .find(|r| r.epoch > head.epoch)
                        .is_some_and(|r| r.seq < head.seq)
            };
            if head.epoch < self.chain || later_and_lower() {
                buffer.pop_front();
                self.dropped += 1;
            } else {
                return;
            }
        }
    }

    /// An event was taken into the chain.
    pub fn took(&mut self, record: &SeqRecord) {
        self.chain = self.chain.max(record.epoch);
    }

    /// Whether partition `p`'s head may still be dropped by a fence not read yet: its epoch is
    /// below one seen elsewhere and `p` has not shown that fence.
    pub fn undecided(&self, p: usize, head: &SeqRecord) -> bool {
        head.epoch < self.highest && self.fenced.get(p).copied().unwrap_or(0) < self.highest
    }

    /// The state as saved with a replica's offsets.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.chain, self.highest, self.dropped]
            .iter()
            .chain(self.fenced.iter())
            .flat_map(|n| n.to_be_bytes())
            .collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Terms> {
        if bytes.len() < 24 || bytes.len() % 8 != 0 {
            return None;
        }
        let n: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Some(Terms {
            chain: n[0],
            highest: n[1],
            dropped: n[2],
            first: vec![None; n.len() - 3],
            fenced: n[3..].to_vec(),
        })
    }
}

/// One message of a topic read as a log.
#[derive(Debug, Clone)]
pub struct SeqRecord {
    /// Its `seq` header (0 for a fence).
    pub seq: u64,
    pub value: bytes::Bytes,
    pub offset: i64,
    /// Its `epoch` header (0 when absent); a fence's own epoch.
    pub epoch: u64,
    /// Set for a fence (see this module).
    pub fence: Option<Fence>,
    /// The highest fence read in its partition before it (set as it is admitted).
    pub fenced: u64,
}

/// A fence's `node` header: the promotion that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, epoch: u64) -> SeqRecord {
        SeqRecord {
            seq,
            value: bytes::Bytes::new(),
            offset: 0,
            epoch,
            fence: None,
            fenced: 0,
        }
    }

    fn fence(epoch: u64) -> SeqRecord {
        SeqRecord {
            fence: Some(Fence { node: "n".into() }),
            ..event(0, epoch)
        }
    }

    /// The chain a reader takes from `partitions` (each in offset order), merging on `seq`
    /// with the three rules, as the follower does.
    fn chain(partitions: Vec<Vec<SeqRecord>>) -> Vec<(u64, u64)> {
        let mut terms = Terms::new(partitions.len());
        let mut buffers: Vec<VecDeque<SeqRecord>> = partitions
            .into_iter()
            .enumerate()
            .map(|(p, records)| records.into_iter().filter_map(|r| terms.admit(p, r)).collect())
            .collect();
        let mut next = 1;
        let mut out = Vec::new();
        loop {
            for b in buffers.iter_mut() {
                terms.prune(b);
            }
            let Some(p) = (0..buffers.len())
                .filter(|&p| buffers[p].front().is_some_and(|r| r.seq <= next))
                .min_by_key(|&p| buffers[p][0].seq)
            else {
                return out;
            };
            let r = buffers[p].pop_front().unwrap();
            if r.seq == next {
                terms.took(&r);
                out.push((r.seq, r.epoch));
                next += 1;
            }
        }
    }

    #[test]
    fn one_term_is_read_as_it_is() {
        let c = chain(vec![vec![event(1, 0), event(3, 0)], vec![event(2, 0), event(4, 0)]]);
        assert_eq!(c, vec![(1, 0), (2, 0), (3, 0), (4, 0)]);
    }

    #[test]
    fn what_a_fenced_primary_writes_after_the_fence_is_dropped() {
        // The old primary's 3 landed after the fence in partition 1; the new primary (epoch 1),
        // having read to its fences (1 and 2), writes its own 3 and 4.
        let c = chain(vec![
            vec![event(1, 0), fence(1), event(4, 1)],
            vec![event(2, 0), fence(1), event(3, 0), event(3, 1)],
        ]);
        assert_eq!(c, vec![(1, 0), (2, 0), (3, 1), (4, 1)]);
    }

    #[test]
    fn an_event_before_the_fence_whose_predecessor_landed_after_one_is_dropped() {
        // The old primary's 4 landed before the fence in partition 0, its 3 after the fence in
        // partition 1: the new primary's chain ends at 2, and its 3 is behind the orphan 4.
        let c = chain(vec![
            vec![event(1, 0), event(4, 0), fence(1), event(3, 1), event(5, 1)],
            vec![event(2, 0), fence(1), event(3, 0), event(4, 1)],
        ]);
        assert_eq!(c, vec![(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]);
        // The same with the new primary's 3 in the other partition: rule 2 drops the orphan.
        let c = chain(vec![
            vec![event(1, 0), event(4, 0), fence(1), event(5, 1)],
            vec![event(2, 0), fence(1), event(3, 0), event(3, 1), event(4, 1)],
        ]);
        assert_eq!(c, vec![(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]);
    }

    #[test]
    fn the_state_survives_being_saved() {
        let mut t = Terms::new(3);
        t.admit(1, fence(2));
        t.took(&event(9, 2));
        t.dropped = 4;
        assert_eq!(t.first[1], Some((2, "n".to_owned())));
        t.first = vec![None; 3];
        assert_eq!(Terms::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(Terms::from_bytes(&[1, 2, 3]), None);
    }
}
