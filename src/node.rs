//! A running node: the ledger and what runs beside it — the alert monitor, the Kafka relays
//! of events and alerts — and the HTTP state that reports them. `bindledger serve`, the demo
//! and the tests start and stop it the same way.

use std::sync::Arc;

use crate::adapters::http::{AppState, Extras, MonitorView};
use crate::adapters::kafka::alerts::AlertPublisher;
use crate::adapters::kafka::notifications::NotificationPublisher;
use crate::adapters::kafka::relay::Relay;
use crate::config::Config;
use crate::domain::gateway::WalletGateway;
use crate::domain::secret::LedgerSecret;
use crate::error::Result;
use crate::ledger::alerts::{Monitor, MonitorConfig};
use crate::ledger::Ledger;

pub struct Node {
    pub ledger: Ledger,
    pub monitor: Option<Monitor>,
    pub state: Arc<AppState>,
    pub extras: Extras,
    stop: tokio::sync::watch::Sender<bool>,
    /// The tasks beside the ledger (a replica's start when it is promoted).
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// A replica's flag that stops its follower.
    follower: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// One shard of a cluster: the flag that stops its reader of the shard map.
    map_reader: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A task a primary runs beside the ledger, not yet spawned.
pub use crate::adapters::kafka::replica::{halt_on_panic, Service};

impl Node {
    /// Opens the ledger and starts the monitor and the relays the configuration asks for.
    /// Runs inside a tokio runtime. An unusable rules file is refused before the ledger opens.
    pub fn start(config: &Config, secret: LedgerSecret, gateway: Arc<dyn WalletGateway>) -> Result<Node> {
        let rules = crate::ledger::keys::alert_rules(config)?;
        Self::start_with_rules(config, rules, secret, gateway)
    }

    /// The same with the rules given (the demo turns locking on).
    pub fn start_with_rules(
        config: &Config,
        rules: crate::domain::alerts::RuleSet,
        secret: LedgerSecret,
        gateway: Arc<dyn WalletGateway>,
    ) -> Result<Node> {
        let ledger = open_or_rejoin(config, &rules, secret, gateway)?;
        let mut config = config.clone();
        config.replica.enabled = config.replica.enabled || ledger.replication().starts_as_replica()?;
        let config = &config;
        let mut extras = Extras::default();
        let mut map_reader = None;
        if config.cluster.enabled() {
            let (route, flag) = join_cluster(&ledger, config)?;
            extras.cluster = Some(route);
            map_reader = Some(flag);
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let replica = config.replica.enabled;
        let monitor = if config.alerts.enabled {
            let mut mc = MonitorConfig::new(rules);
            mc.checkpoint_every_events = config.alerts.checkpoint_every_events;
            mc.keys_cached = config.memory.alert_keys_cached;
            let m = Monitor::start(&ledger, mc, tokio::runtime::Handle::current())?;
            extras.monitor = Some(MonitorView::of(&m));
            Some(m)
        } else {
            None
        };
        // What a primary runs beside the ledger: the relays and the checkpoint signer. A
        // replica builds them too (their statuses are reported as `standby`) and starts them
        // when it is promoted.
        let mut services: Vec<Service> = Vec::new();
        if config.kafka.enabled() {
            let mut kafka = config.kafka.clone();
            if config.durability == crate::config::Durability::Replicated {
                // Every command waits for its event's acknowledgement: send at once.
                kafka.linger_ms.get_or_insert(0);
                kafka.require_retention = true;
            }
            let relay = Relay::new(ledger.clone(), kafka);
            extras.relay = Some((config.kafka.topic.clone(), relay.status.clone()));
            services.push(Box::pin(relay.run(stopped.clone())));
            let keys = crate::adapters::kafka::keys::KeysRelay::new(ledger.clone(), config.kafka.clone());
            services.push(Box::pin(keys.run(stopped.clone())));
            if let Some(m) = &monitor {
                let p = AlertPublisher::new(m.feed().clone(), ledger.on_topic(), config.kafka.clone());
                extras.alerts_relay = Some((config.kafka.alerts_topic.clone(), p.status.clone()));
                services.push(Box::pin(p.run(stopped.clone())));
            }
            if !config.kafka.notifications_topic.is_empty() {
                let alerts = monitor
                    .as_ref()
                    .map(|m| crate::adapters::kafka::notifications::AlertSource {
                        feed: m.feed().clone(),
                        monitor: m.status().clone(),
                    });
                let p = NotificationPublisher::new(ledger.clone(), alerts, config.kafka.clone());
                extras.notifications_relay = Some((config.kafka.notifications_topic.clone(), p.status.clone()));
                services.push(Box::pin(p.run(stopped.clone())));
            }
        }
        if let (true, Some(m)) = (config.webhooks.enabled(), &monitor) {
            let secret = crate::ledger::keys::load_or_create_webhook_secret(&config.webhook_secret_path())?;
            let sender = crate::adapters::webhook::WebhookSender::new(
                m.feed().clone(),
                ledger.webhook_log(),
                config.webhooks.clone(),
                secret,
            )?;
            extras.webhooks = Some((ledger.webhook_log(), sender.status.clone(), sender.client()));
            services.push(Box::pin(sender.run(stopped.clone())));
        }
        if config.checkpoints.enabled {
            checkpoint_services(&ledger, config, &mut extras, &mut services, &stopped)?;
        }
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let mut follower = None;
        if replica {
            follower = Some(start_replica(&ledger, config, &mut extras, services, &tasks)?);
        } else {
            let mut t = tasks.lock().expect("tasks lock");
            for s in services {
                t.push(tokio::spawn(halt_on_panic(s, ledger.clone())));
            }
            if config.kafka.enabled() {
                tracing::info!(brokers = %config.kafka.brokers, topic = %config.kafka.topic, alerts_topic = %config.kafka.alerts_topic, "kafka relays on");
            }
        }
        let state = AppState::build(ledger.clone(), &config.tokens, config.http.clone(), extras.clone());
        Ok(Node {
            ledger,
            monitor,
            state,
            extras,
            stop,
            tasks,
            follower,
            map_reader,
        })
    }

    /// Stops the relays, closes the ledger (its queue drains), then lets the monitor fold the
    /// last events and save its checkpoint.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for flag in [&self.follower, &self.map_reader].into_iter().flatten() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(p) = &self.extras.promoter {
            p.stop_following().await;
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
        let ledger = self.ledger.clone();
        let monitor = self.monitor;
        drop(self.state);
        let _ = tokio::task::spawn_blocking(move || {
            ledger.close();
            if let Some(m) = monitor {
                m.join();
            }
        })
        .await;
    }
}
/// One shard of a cluster: reads the shard map (waiting up to 30 s for one), checks that it
/// names this shard with this node's topics, owns the slots it gives, and follows its changes
/// on a thread of its own. Returns the HTTP routing and the reader's stop flag.
fn join_cluster(
    ledger: &Ledger,
    config: &Config,
) -> Result<(
    Arc<crate::adapters::http::ClusterRoute>,
    Arc<std::sync::atomic::AtomicBool>,
)> {
    use crate::adapters::kafka::cluster;
    use crate::error::Error;
    let (shard, topic) = (config.cluster.shard.clone(), config.cluster.topic.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let map = loop {
        let problem = match cluster::read_map(&config.kafka, &topic) {
            Ok(Some(map)) => break map,
            Ok(None) => format!("no shard map on the topic {topic}: create one with `bindledger cluster init`"),
            Err(e) => format!("reading the shard map from {topic}: {e}"),
        };
        if std::time::Instant::now() > deadline {
            return Err(Error::config(problem));
        }
        tracing::info!(%topic, "waiting for the shard map");
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    let entry = map.shards.get(&shard).ok_or_else(|| {
        Error::config(format!(
            "the shard map (version {}) names no shard {shard}: check cluster.shard",
            map.version
        ))
    })?;
    if entry.events_topic != config.kafka.topic || entry.checkpoints_topic != config.checkpoints.topic {
        return Err(Error::config(format!(
            "the shard map gives shard {shard} the topics {} and {}: set kafka.topic and checkpoints.topic to them",
            entry.events_topic, entry.checkpoints_topic
        )));
    }
    tracing::info!(%shard, version = map.version, slots = map.slots_of(&shard).len(), "one shard of a cluster");
    ledger.ownership().follow(&shard, map);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ownership = ledger.ownership().clone();
    let me = shard.clone();
    cluster::follow(config.kafka.clone(), topic, stop.clone(), move |map| {
        if !map.shards.contains_key(&me) {
            tracing::warn!(shard = %me, version = map.version, "the shard map no longer names this shard: it owns no account");
        }
        ownership.follow(&me, map);
    })
    .map_err(|e| Error::io_caused("starting the shard map's reader", e))?;
    let token = config
        .tokens
        .iter()
        .find(|t| t.roles.contains(&crate::config::Role::Cluster))
        .map(|t| t.token.clone());
    if token.is_none() && config.cluster.forward {
        tracing::warn!("no token has the cluster role: requests for other shards' accounts are answered 421 misdirected, not forwarded");
    }
    let ca = match &config.cluster.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| Error::config_by(format!("reading cluster.ca_file {}", path.display()), e))?,
        ),
        None => None,
    };
    let route = crate::adapters::http::ClusterRoute::new(
        &shard,
        config.cluster.forward,
        std::time::Duration::from_millis(config.cluster.forward_timeout_ms),
        token,
        ca.as_deref(),
    )?;
    Ok((Arc::new(route), stop))
}

/// The checkpoint signer and, with Kafka, its publisher (started after the signer, so that the
/// last checkpoint, made on stop, is there to publish).
fn checkpoint_services(
    ledger: &Ledger,
    config: &Config,
    extras: &mut Extras,
    services: &mut Vec<Service>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let key = Arc::new(crate::ledger::checkpoint::CheckpointKey::load_or_create(
        &config.checkpoint_key_path(),
    )?);
    let store = ledger.checkpoint_store();
    extras.checkpoints = Some((store.clone(), key.public_hex()));
    tracing::info!(public_key = %key.public_hex(), "checkpoints are signed with this key");
    let (signed_tx, signed_rx) = tokio::sync::watch::channel(0u64);
    let mut publisher = None;
    if config.kafka.enabled() {
        let p = crate::adapters::kafka::checkpoints::CheckpointPublisher::new(
            ledger.clone(),
            store.clone(),
            key.public_hex(),
            config.kafka.clone(),
            config.checkpoints.topic.clone(),
            signed_rx,
        );
        extras.checkpoints_relay = Some((config.checkpoints.topic.clone(), p.status.clone()));
        publisher = Some(p);
    }
    services.push(Box::pin(crate::ledger::signer::run(
        ledger.clone(),
        key,
        store,
        config.checkpoints.clone(),
        signed_tx,
        stopped.clone(),
    )));
    // Started after the signer so that the last checkpoint, made on stop, is there.
    if let Some(p) = publisher {
        services.push(Box::pin(p.run(stopped.clone())));
    }
    Ok(())
}

/// A replica: its relays stand by, its follower thread reads the topic into the log (and the
/// primary's checkpoints into its store), and a promoter holds what it starts when promoted.
/// Returns the follower's stop flag.
fn start_replica(
    ledger: &Ledger,
    config: &Config,
    extras: &mut Extras,
    services: Vec<Service>,
    tasks: &Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) -> Result<Arc<std::sync::atomic::AtomicBool>> {
    for (_, status) in [
        &extras.relay,
        &extras.alerts_relay,
        &extras.notifications_relay,
        &extras.checkpoints_relay,
    ]
    .into_iter()
    .flatten()
    {
        status.set_standby();
    }
    let status = Arc::new(crate::adapters::kafka::replica::ReplicaStatus::default());
    let stop_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = crate::adapters::kafka::replica::spawn_follower(
        ledger.clone(),
        config.kafka.clone(),
        status.clone(),
        stop_flag.clone(),
        tokio::runtime::Handle::current(),
    )?;
    // The primary's wrapped data keys, so this node opens what the primary opens.
    crate::adapters::kafka::keys::spawn_follower(ledger.clone(), config.kafka.clone(), stop_flag.clone())
        .map_err(|e| crate::Error::io_caused("starting the keys follower", e))?;
    let mut promoter = crate::adapters::kafka::replica::Promoter::new(
        ledger.clone(),
        status.clone(),
        thread,
        stop_flag.clone(),
        config.kafka.clone(),
        extras.relay.as_ref().map(|(_, s)| s.clone()),
        services,
        tasks.clone(),
    );
    promoter.checkpoints_topic = extras.checkpoints_relay.as_ref().map(|(topic, _)| topic.clone());
    promoter.url = config.http.advertised_url.clone();
    let promoter = Arc::new(promoter);
    // The primary's checkpoints, as they reach their topic.
    if let (Some((store, key)), Some((topic, _))) = (&extras.checkpoints, &extras.checkpoints_relay) {
        crate::adapters::kafka::checkpoints::follow(
            ledger.clone(),
            store.clone(),
            key.clone(),
            config.kafka.clone(),
            topic.clone(),
            stop_flag.clone(),
        )
        .map_err(|e| crate::error::Error::io(format!("starting the checkpoints follower: {e}")))?;
    }
    extras.replica = Some((status, config.replica.primary_url.clone()));
    extras.promoter = Some(promoter);
    tracing::info!(brokers = %config.kafka.brokers, topic = %config.kafka.topic, "read replica: following the events topic");
    Ok(stop_flag)
}

/// Opens the ledger; a primary a promotion fenced (found out now, from the topic's last
/// messages, if it was down when it happened) closes it, rejoins as a replica and opens it
/// again: a fenced node never takes a command.
fn open_or_rejoin(
    config: &Config,
    rules: &crate::domain::alerts::RuleSet,
    secret: LedgerSecret,
    gateway: Arc<dyn WalletGateway>,
) -> Result<Ledger> {
    crate::adapters::kafka::rejoin::finish_interrupted(&config.data_dir)?;
    let mut ledger = Ledger::open_with_rules(config, rules, secret.clone(), gateway.clone())?;
    // A primary that a promotion fenced while it was down (killed while paused, say) finds
    // out before it takes a command: the topic's last messages carry a newer epoch.
    if !config.replica.enabled
        && config.kafka.enabled()
        && ledger.replication().fenced_by()?.is_none()
        && ledger.log_len() > 0
    {
        if let Some((epoch, url)) =
            crate::adapters::kafka::rejoin::newer_epoch(&config.kafka, ledger.replication().epoch()?.0)
        {
            tracing::warn!(epoch, "a promotion fenced this node while it was down");
            ledger.replication().fence(epoch)?;
            if let Some(url) = url {
                ledger.replication().set_successor(&url)?;
            }
        }
    }
    // A primary a promotion fenced rejoins as a replica (and stays one until promoted).
    if !config.replica.enabled && config.kafka.enabled() && ledger.replication().fenced_by()?.is_some() {
        let successor = ledger.replication().successor();
        ledger.close();
        let r = crate::adapters::kafka::rejoin::rejoin(config)?;
        tracing::warn!(
            head = r.head,
            quarantined = r.quarantined,
            "this node was fenced: it rejoined as a replica"
        );
        ledger = Ledger::open_with_rules(config, rules, secret, gateway)?;
        if let Some(url) = successor {
            ledger.replication().set_successor(&url)?;
        }
    }
    Ok(ledger)
}
