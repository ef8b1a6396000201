//! `bindledger consume`: the analytics consumer of the events topic.

use anyhow::Result;
use bindledger::adapters::kafka::analytics::{consume, ConsumeNote, ConsumeOptions};

#[derive(clap::Args, Clone)]
pub struct ConsumeArgs {
    /// Kafka bootstrap servers (the demo's broker, `make demo`, listens on 127.0.0.1:19092).
    #[arg(long, env = "BINDLEDGER_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// The events topic.
    #[arg(long, env = "BINDLEDGER_KAFKA_TOPIC", default_value = "bindledger.events")]
    pub topic: String,
    /// Consumer group (a new group starts at the beginning of the topic).
    #[arg(long, default_value = "bindledger-analytics")]
    pub group: String,
    /// Stop after this long without a new message (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub idle_exit_ms: u64,
    /// Print the final aggregates as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub kafka: crate::remote::KafkaProperties,
}

pub fn run(args: ConsumeArgs) -> Result<i32> {
    let options = ConsumeOptions {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        group: args.group.clone(),
        idle_exit_ms: args.idle_exit_ms,
        properties: args.kafka.map(),
    };
    let mut shown = 0;
    let report = consume(&options, |note| {
        match note {
        ConsumeNote::Resuming { committed, partitions } => eprintln!(
            "group {} read this topic before: it resumes from its committed offsets ({committed} of {partitions} partitions), so the figures cover only what follows them; give --group with a new name to read from the beginning",
            args.group
        ),
        ConsumeNote::FromTheBeginning => eprintln!("group {}: reading {} from the beginning", args.group, args.topic),
        ConsumeNote::Progress {
            messages,
            recent,
            lag,
            report,
        } => {
            // A progress line every 5 s, with the lag; the summary only when it changed.
            eprintln!(
                "read {messages} messages (+{recent} in 5 s), lag {}",
                lag.map_or_else(|| "unknown".to_owned(), |l| format!("{l} messages"))
            );
            if !args.json && messages > shown {
                outln!("{}", report.analytics.summary());
            }
            shown = messages;
        }
    }
    })?;
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
