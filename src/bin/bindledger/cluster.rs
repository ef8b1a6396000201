//! `bindledger cluster`: create and read the shard map, find an account's shard, and ask every
//! shard how it is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bindledger::adapters::kafka::cluster::{publish_map, read_map};
use bindledger::config::KafkaConfig;
use bindledger::domain::shard::{slot_of, valid_shard_id, ShardEntry, ShardMap};
use clap::{Args, Subcommand};

use crate::EXIT_ERROR;

const EXIT_OK: i32 = 0;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Write the first shard map: the 1,024 slots split evenly, in order, between the shards
    /// given (sorted by id). Refused when the topic already holds a map.
    Init {
        #[command(flatten)]
        topic: MapTopic,
        /// A shard and its primary's URL, as ID=URL (ID: a-z, 0-9 and '-'); once per shard.
        #[arg(long = "shard", required = true, value_name = "ID=URL")]
        shards: Vec<String>,
        /// Each shard's topics are <PREFIX>.<ID>.events and <PREFIX>.<ID>.checkpoints; set
        /// kafka.topic and checkpoints.topic of each shard's nodes to them.
        #[arg(long, default_value = "bindledger")]
        topic_prefix: String,
    },
    /// Point a shard at its new primary (after `bindledger promote`): writes the map's next
    /// version with the shard's URL changed; every node follows it and forwards there.
    SetUrl {
        #[command(flatten)]
        topic: MapTopic,
        /// The shard.
        #[arg(long)]
        shard: String,
        /// Its new primary's URL.
        #[arg(long)]
        url: String,
    },
    /// Print the newest shard map: its version, every shard and its slot ranges.
    Show {
        #[command(flatten)]
        topic: MapTopic,
        /// Print the map as JSON, as the topic holds it.
        #[arg(long)]
        json: bool,
    },
    /// Print an account's slot and the shard that owns it.
    Which {
        #[command(flatten)]
        topic: MapTopic,
        /// The account id.
        account: String,
    },
    /// Sign the heads of every shard at once: each shard's newest checkpoint (from its
    /// checkpoints topic, signed with its own key), signed together with the cluster's key and
    /// appended to the cluster topic, where `bindledger-replay verify-cluster` holds every
    /// shard's chain to it.
    Checkpoint {
        #[command(flatten)]
        topic: MapTopic,
        /// The cluster's Ed25519 signing key (64 hex characters), created (mode 0600) when
        /// missing; give auditors its public key, which this prints.
        #[arg(long)]
        key_file: PathBuf,
        /// Print the signed checkpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write what an auditor needs to verify the cluster without Kafka (for `events/verify.py
    /// --cluster DIR`): `map.json` (the newest shard map), `cluster-checkpoints.ndjson` and each
    /// shard's chain as `<shard>.events.ndjson` (read from its topic, fences applied: the exact
    /// stored bytes, one event per line).
    Export {
        #[command(flatten)]
        topic: MapTopic,
        /// The directory to write (created; files in it are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask every shard of the map how it is: health, role, events, epoch, relay lag, slots.
    /// Exit 1 when a shard does not answer or is not ok.
    Status {
        #[command(flatten)]
        topic: MapTopic,
        /// A token with the reader role on every shard. Default: the admin token in --data-dir.
        #[arg(long, env = "BINDLEDGER_TOKEN")]
        token: Option<String>,
        /// Where to find the admin token when no token is given.
        #[arg(long, default_value = "bindledger-data")]
        data_dir: PathBuf,
        /// Verify https:// shards against the CA certificates in this PEM file alone.
        #[arg(long, env = "BINDLEDGER_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the shard map lives.
#[derive(Args)]
pub struct MapTopic {
    /// The Kafka bootstrap servers.
    #[arg(long, env = "BINDLEDGER_KAFKA_BROKERS")]
    brokers: String,
    /// The cluster topic (cluster.topic of the nodes).
    #[arg(long = "cluster-topic", default_value = "bindledger.cluster")]
    name: String,
    #[command(flatten)]
    kafka: crate::remote::KafkaProperties,
}

impl MapTopic {
    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            properties: self.kafka.map(),
            ..KafkaConfig::default()
        }
    }

    fn read(&self) -> Result<std::sync::Arc<ShardMap>> {
        read_map(&self.kafka(), &self.name)
            .with_context(|| format!("reading the shard map from {}", self.name))?
            .with_context(|| {
                format!(
                    "no shard map on the topic {}: create one with `bindledger cluster init`",
                    self.name
                )
            })
    }
}

pub fn run(command: ClusterCommand) -> Result<i32> {
    match command {
        ClusterCommand::Init {
            topic,
            shards,
            topic_prefix,
        } => {
            let mut entries = BTreeMap::new();
            for s in &shards {
                let (id, url) = s
                    .split_once('=')
                    .with_context(|| "each --shard is ID=URL, e.g. s1=http://10.0.0.1:8080")?;
                anyhow::ensure!(
                    valid_shard_id(id),
                    "shard ids are 1 to 32 characters of a-z, 0-9 and '-'"
                );
                let entry = ShardEntry {
                    url: url.trim_end_matches('/').to_owned(),
                    events_topic: format!("{topic_prefix}.{id}.events"),
                    checkpoints_topic: format!("{topic_prefix}.{id}.checkpoints"),
                };
                anyhow::ensure!(
                    entries.insert(id.to_owned(), entry).is_none(),
                    "shard {id} is given twice"
                );
            }
            let map = ShardMap::even(entries)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(publish_map(&topic.kafka(), &topic.name, &map))
                .with_context(|| format!("writing the shard map to {}", topic.name))?;
            outln!("shard map version 1 written to {}", topic.name);
            print_map(&map);
            Ok(EXIT_OK)
        }
        ClusterCommand::SetUrl { topic, shard, url } => {
            let map = topic.read()?;
            let next = map.with_url(&shard, &url)?;
            tokio::runtime::Runtime::new()?
                .block_on(publish_map(&topic.kafka(), &topic.name, &next))
                .with_context(|| format!("writing the shard map to {}", topic.name))?;
            outln!(
                "shard map version {} written: shard {shard} at {}",
                next.version,
                next.shards[&shard].url
            );
            Ok(EXIT_OK)
        }
        ClusterCommand::Show { topic, json } => {
            let map = topic.read()?;
            if json {
                outln!("{}", serde_json::to_string(&*map)?);
            } else {
                print_map(&map);
            }
            Ok(EXIT_OK)
        }
        ClusterCommand::Which { topic, account } => {
            let map = topic.read()?;
            let owner = map.owner(&account);
            outln!(
                "slot {} of shard {} ({})",
                slot_of(&account),
                owner,
                map.shards[owner].url
            );
            Ok(EXIT_OK)
        }
        ClusterCommand::Checkpoint { topic, key_file, json } => {
            let map = topic.read()?;
            let key = bindledger::ledger::checkpoint::CheckpointKey::load_or_create(&key_file)?;
            let kafka = topic.kafka();
            let mut heads = BTreeMap::new();
            for (id, e) in &map.shards {
                let (published, _) =
                    bindledger::adapters::kafka::checkpoints::read_published(&kafka, &e.checkpoints_topic)
                        .with_context(|| format!("reading shard {id}'s checkpoints from {}", e.checkpoints_topic))?;
                let last = published.into_iter().last().with_context(|| {
                    format!("shard {id} has published no checkpoint yet on {}", e.checkpoints_topic)
                })?;
                heads.insert(id.clone(), last.checkpoint);
            }
            let cp = key.sign_cluster(map.version, heads, chrono::Utc::now());
            tokio::runtime::Runtime::new()?.block_on(bindledger::adapters::kafka::cluster::publish_checkpoint(
                &kafka,
                &topic.name,
                &cp,
            ))?;
            if json {
                outln!("{}", serde_json::to_string(&cp)?);
            } else {
                outln!(
                    "cluster checkpoint under map version {} at {}, signed with {}",
                    cp.map_version,
                    cp.time,
                    cp.public_key
                );
                for (id, c) in &cp.shards {
                    outln!("{id:<12} event {} head {} (key {})", c.seq, c.head, c.public_key);
                }
            }
            Ok(EXIT_OK)
        }
        ClusterCommand::Export { topic, out } => {
            use std::io::Write;
            let kafka = topic.kafka();
            let (map, checkpoints) = bindledger::adapters::kafka::cluster::read_cluster(&kafka, &topic.name)
                .with_context(|| format!("reading {}", topic.name))?;
            let map = map.with_context(|| format!("no shard map on the topic {}", topic.name))?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join("map.json"), serde_json::to_vec(&*map)?)?;
            let mut cps = Vec::new();
            for cp in &checkpoints {
                cps.extend(serde_json::to_vec(cp)?);
                cps.push(b'\n');
            }
            std::fs::write(out.join("cluster-checkpoints.ndjson"), cps)?;
            for (id, e) in &map.shards {
                let path = out.join(format!("{id}.events.ndjson"));
                let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let mut w = std::io::BufWriter::new(file);
                let mut n = 0u64;
                let reader = bindledger::adapters::kafka::reader::read_topic(
                    bindledger::adapters::kafka::client::client_config(&kafka),
                    &e.events_topic,
                )
                .with_context(|| format!("reading shard {id}'s topic {}", e.events_topic))?;
                for event in reader {
                    let bytes = event.with_context(|| format!("reading shard {id}'s topic {}", e.events_topic))?;
                    w.write_all(&bytes)?;
                    w.write_all(b"\n")?;
                    n += 1;
                }
                w.flush()?;
                outln!("{id:<12} {n} events to {}", path.display());
            }
            outln!(
                "map version {} and {} cluster checkpoints to {}",
                map.version,
                checkpoints.len(),
                out.display()
            );
            Ok(EXIT_OK)
        }
        ClusterCommand::Status {
            topic,
            token,
            data_dir,
            ca_file,
            json,
        } => {
            if let Some(ca) = &ca_file {
                crate::remote::trust_ca_file(ca)?;
            }
            let map = topic.read()?;
            let token = crate::remote::token_or_admin(token, &data_dir)?;
            tokio::runtime::Runtime::new()?.block_on(status(&map, token, json))
        }
    }
}

fn print_map(map: &ShardMap) {
    outln!("version {}, {} shards", map.version, map.shards.len());
    for (id, e) in &map.shards {
        let ranges: Vec<String> = map
            .ranges()
            .into_iter()
            .filter(|r| r.shard == *id)
            .map(|r| {
                if r.from == r.to {
                    r.from.to_string()
                } else {
                    format!("{}-{}", r.from, r.to)
                }
            })
            .collect();
        outln!(
            "{id:<12} {:<28} {} slots ({})  topics {} {}",
            e.url,
            map.slots_of(id).len(),
            ranges.join(", "),
            e.events_topic,
            e.checkpoints_topic
        );
    }
}

async fn status(map: &ShardMap, token: String, json: bool) -> Result<i32> {
    let mut rows = Vec::new();
    let mut failing = 0;
    for (id, e) in &map.shards {
        let endpoint = bindledger::adapters::http::client::Endpoint::parse(&e.url)?;
        let mut client = bindledger::adapters::http::client::Client::new(endpoint, Some(token.clone()));
        let answer = tokio::time::timeout(Duration::from_secs(5), client.get_json("/v1/status")).await;
        let row = match answer {
            Ok(Ok((code, v))) if code.is_success() => {
                let health = &v["health"];
                let relay = &v["relays"]["events"];
                let follows = v["cluster"]["map_version"].as_u64();
                let ok = health["status"] == "ok" && follows == Some(map.version);
                if !ok {
                    failing += 1;
                }
                serde_json::json!({
                    "shard": id, "url": e.url, "answered": true,
                    "status": health["status"], "role": health["role"], "events": health["events"],
                    "epoch": health["epoch"], "relay_lag_events": relay["lag_events"],
                    "map_version": follows, "slots": map.slots_of(id).len(),
                })
            }
            other => {
                failing += 1;
                let why = match other {
                    Ok(Ok((code, _))) => format!("answered {code}"),
                    Ok(Err(e)) => format!("{e}"),
                    Err(_) => "no answer within 5 s".to_owned(),
                };
                serde_json::json!({"shard": id, "url": e.url, "answered": false, "error": why, "slots": map.slots_of(id).len()})
            }
        };
        rows.push(row);
    }
    if json {
        outln!("{}", serde_json::json!({"map_version": map.version, "shards": rows}));
    } else {
        outln!("shard map version {}", map.version);
        for r in &rows {
            if r["answered"] == true {
                outln!(
                    "{:<12} {:<28} {} {}, {} events, epoch {}, relay lag {}, {} slots, follows map {}",
                    r["shard"].as_str().unwrap_or("?"),
                    r["url"].as_str().unwrap_or("?"),
                    r["status"].as_str().unwrap_or("?"),
                    r["role"].as_str().unwrap_or("?"),
                    r["events"],
                    r["epoch"],
                    r["relay_lag_events"],
                    r["slots"],
                    r["map_version"]
                );
            } else {
                outln!(
                    "{:<12} {:<28} unreachable: {}",
                    r["shard"].as_str().unwrap_or("?"),
                    r["url"].as_str().unwrap_or("?"),
                    r["error"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(if failing > 0 { EXIT_ERROR } else { EXIT_OK })
}
