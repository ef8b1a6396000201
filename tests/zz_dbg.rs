mod common;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
#[test]
fn dbg() {
    let topic = "bindledger.bench.relay.01a220ba25e476199bf53269f434518f";
    let reads = read_topic("127.0.0.1:19092", topic);
    eprintln!("read {}", reads.len());
    let mut by_p: std::collections::BTreeMap<i32, Vec<(i64, u64)>> = Default::default();
    for r in &reads {
        by_p.entry(r.partition)
            .or_default()
            .push((r.offset, r.headers["seq"].parse().unwrap()));
    }
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:19092")
        .set("group.id", "dbg")
        .create()
        .unwrap();
    for (p, v) in &by_p {
        let wm = c
            .fetch_watermarks(topic, *p, std::time::Duration::from_secs(5))
            .unwrap();
        let gaps = v.windows(2).filter(|w| w[1].0 != w[0].0 + 1).count();
        let unsorted = v.windows(2).filter(|w| w[1].1 < w[0].1).count();
        eprintln!(
            "p{p}: {} msgs, first off {} last off {}, watermarks {:?}, offset gaps {gaps}, seq decreases {unsorted}",
            v.len(),
            v[0].0,
            v.last().unwrap().0,
            wm
        );
        for (o, s) in v {
            if (21970..21980).contains(s) || (64955..64960).contains(s) {
                eprintln!("   seq {s} at p{p} off {o}");
            }
        }
    }
}
