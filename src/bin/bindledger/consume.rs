//! `bindledger consume`: the analytics consumer of the events topic.

use anyhow::Result;
use bindledger::outln;

pub fn run(args: bindledger::adapters::kafka::analytics::ConsumeArgs) -> Result<i32> {
    let report = bindledger::adapters::kafka::analytics::consume(&args)?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{}", report.analytics.summary());
        outln!(
            "{} messages, {} duplicates dropped, {} undecodable",
            report.messages,
            report.duplicates,
            report.undecodable
        );
        if report.fences > 0 {
            outln!(
                "{} fences, {} messages of a fenced primary dropped",
                report.fences,
                report.fenced
            );
        }
    }
    Ok(0)
}
