//! `bindledger restore`: a data directory rebuilt from the events topic (and its checkpoints).

use anyhow::{Context, Result};
use bindledger::domain::secret::LedgerSecret;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct RestoreArgs {
    /// The directory to restore into (new, or one a previous restore left unfinished).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "BINDLEDGER_KAFKA_BROKERS")]
    pub brokers: String,
    #[command(flatten)]
    pub kafka: crate::remote::KafkaProperties,
    /// The events topic.
    #[arg(long, env = "BINDLEDGER_KAFKA_TOPIC", default_value = "bindledger.events")]
    pub topic: String,
    /// The checkpoints topic.
    #[arg(long, default_value = "bindledger.checkpoints")]
    pub checkpoints_topic: String,
    /// The ledger's checkpoint public key (64 hex characters), from a channel you trust: the
    /// checkpoints are checked with it and kept. Without it they are not restored.
    #[arg(long)]
    pub public_key: Option<String>,
    /// The ledger's HMAC secret, the one the log was written with (it is not on Kafka; keep it
    /// in a secrets store). Or BINDLEDGER_SECRET.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

pub fn run(args: RestoreArgs) -> Result<i32> {
    let secret = match (&args.secret_file, std::env::var("BINDLEDGER_SECRET")) {
        (Some(path), _) => LedgerSecret::from_hex(
            &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )?,
        (None, Ok(hex)) => LedgerSecret::from_hex(&hex)?,
        (None, Err(_)) => {
            use clap::CommandFactory;
            crate::Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "restore needs the ledger's secret: --secret-file FILE or BINDLEDGER_SECRET",
                )
                .exit()
        }
    };
    let kafka = bindledger::config::KafkaConfig {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        properties: args.kafka.map(),
        ..Default::default()
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let report = bindledger::adapters::kafka::restore::restore(
        &kafka,
        Some(args.checkpoints_topic.as_str()),
        args.public_key.as_deref(),
        &args.data_dir,
        &secret,
        |n| {
            if terminal {
                eprint!(
                    "\r\x1b[K{n} events, {:.0}/s",
                    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
        },
    )?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    outln!(
        "restored {} events into {} ({} were already there); head {} at event {}",
        report.restored,
        args.data_dir.display(),
        report.resumed_from,
        report.head,
        report.head_seq
    );
    if let Some(t) = &report.torn {
        let listed: Vec<String> = t.seqs.iter().map(u64::to_string).collect();
        outln!(
            "the topic is torn: event {} is not on it, but {} later message(s) are (seqs {}{}, epoch {}). In replicated mode none of them can have been acknowledged; in local mode they are the events lost with the disk. The chain ends at event {}.",
            t.missing,
            t.messages,
            listed.join(", "),
            if t.messages as usize > listed.len() { ", ..." } else { "" },
            t.epoch,
            t.missing - 1
        );
    }
    outln!(
        "data keys: {} wrapped keys restored from {} (open them with the same key store)",
        report.data_keys,
        bindledger::adapters::kafka::keys::keys_topic(&kafka.topic)
    );
    outln!(
        "fenced the topics with epoch {}: what lies past the chain is dropped by every reader, and the restored node writes in this epoch",
        report.epoch
    );
    match &args.public_key {
        Some(_) => outln!(
            "checkpoints: {} checked and kept ({} beyond the restored log, {} of a fenced primary dropped)",
            report.checkpoints_kept,
            report.checkpoints_beyond,
            report.checkpoints_fenced
        ),
        None => outln!("checkpoints: not restored (give --public-key to check and keep them)"),
    }
    outln!(
        "next: bindledger serve --data-dir {} (with the same secret, checkpoint key and key store)",
        args.data_dir.display()
    );
    Ok(0)
}
