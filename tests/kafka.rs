//! The Kafka relay against a real broker process (tansu), a fresh topic per test.

mod common;

use bindledger::adapters::kafka::client::RelayStatus;
use bindledger::adapters::kafka::partition::partition_for;
use bindledger::adapters::kafka::relay::Relay;
use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::KafkaConfig;
use bindledger::domain::command::{BindRequest, CommonInput, PayRequest, UnbindRequest};
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger::{Config, Ledger};
use bindledger_events::{ChainVerifier, Payload};
use chrono::Utc;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

fn kafka_config(brokers: &str, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        partitions: PARTITIONS,
        message_timeout_ms: 3000,
        backoff_ms_max: 500,
        ..KafkaConfig::default()
    }
}

struct Running {
    ledger: Ledger,
    gateway: Arc<SimulatedGateway>,
    status: Arc<RelayStatus>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(dir: &std::path::Path, kafka: KafkaConfig) -> Running {
    let mut config: Config = test_config(dir);
    config.gateway.simulated = Scenario {
        frozen_per_mille: 50,
        closed_per_mille: 30,
        ..Scenario::quiet(5)
    };
    config.kafka = kafka.clone();
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let ledger = Ledger::open(&config, LedgerSecret::from_bytes([3; 32]), gateway.clone()).unwrap();
    let relay = Relay::new(ledger.clone(), kafka);
    let status = relay.status.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(relay.run(stopped));
    Running {
        ledger,
        gateway,
        status,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) -> (Ledger, Arc<SimulatedGateway>) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        (self.ledger, self.gateway)
    }

    async fn caught_up(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.status.position.load(Ordering::Relaxed) < self.ledger.log_len() {
            assert!(
                Instant::now() < deadline,
                "the relay did not catch up: position {} of {} ({}; last error {:?})",
                self.status.position.load(Ordering::Relaxed),
                self.ledger.log_len(),
                self.status.state(),
                self.status.last_error.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A mixed workload: binds (some of frozen or closed wallets), payments (some with wrong
/// passwords), unbinds, unbinds of nothing. Every command must succeed as a command.
async fn workload(l: &Ledger, g: &SimulatedGateway, round: u64, accounts: u64) {
    for a in 0..accounts {
        let account = format!("acct-{a}");
        let n = round * 1000 + a;
        let req = BindRequest {
            provider: "alipay".into(),
            wallet_account: SecretString::new(phone(n)),
            payment_password: SecretString::new(g.password_for(&alipay(), &phone(n))),
            factor: None,
            common: CommonInput::default(),
        };
        let bound = l
            .bind(req.validate(&account, Utc::now()).unwrap())
            .await
            .expect("commands never fail because of Kafka");
        let Payload::WalletBound { binding_id, .. } = bound.event.payload else {
            continue;
        };
        for k in 0..3 {
            let pay = PayRequest {
                binding_id: binding_id.to_string(),
                order_id: format!("o-{round}-{k}"),
                amount_minor: 100 + k,
                currency: None,
                payment_password: SecretString::new(if k == 2 {
                    "wrong".into()
                } else {
                    g.password_for(&alipay(), &phone(n))
                }),
                factor: None,
                common: CommonInput::default(),
            };
            l.pay(pay.validate(&account, Utc::now()).unwrap()).await.unwrap();
        }
        if a % 3 == 0 {
            let unbind = UnbindRequest {
                confirm: true,
                common: CommonInput::default(),
            };
            l.unbind(unbind.validate(&account, &binding_id.to_string(), Utc::now()).unwrap())
                .await
                .unwrap();
        }
    }
}

/// The topic holds every event of the log exactly once: same bytes, right key, partition and
/// headers, per-account order; and the chain verifies from the topic alone.
fn assert_topic_equals_log(brokers: &str, topic: &str, log: &[(u64, Vec<u8>)]) {
    let reads = read_topic(brokers, topic);
    let mut by_seq = BTreeMap::new();
    for r in reads {
        let seq: u64 = r.headers["seq"].parse().unwrap();
        if let Some(first) = by_seq.insert(seq, r.clone()) {
            panic!(
                "event {seq} is on the topic twice (offsets {} and {})",
                first.offset, r.offset
            );
        }
    }
    assert_eq!(by_seq.len(), log.len(), "events on the topic vs in the log");
    let mut last_in_partition: BTreeMap<i32, (i64, u64)> = BTreeMap::new();
    for (seq, bytes) in log {
        let r = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("event {seq} is missing from the topic"));
        assert_eq!(&r.value, bytes, "event {seq}: the message value is the stored bytes");
        let e = bindledger_events::decode(bytes).unwrap();
        assert_eq!(r.key, e.account);
        assert_eq!(r.partition, partition_for(e.account.as_bytes(), PARTITIONS));
        assert_eq!(r.headers["event_type"], e.event_type());
        assert_eq!(r.headers["event_id"], e.id.to_string());
        assert_eq!(
            r.headers["schema_version"],
            bindledger_events::SCHEMA_VERSION.to_string()
        );
        assert_eq!(r.headers["hash"], bindledger_events::hash_bytes(bytes).to_hex());
    }
    // In each partition, offsets follow global (hence per-account) order.
    for (seq, r) in &by_seq {
        if let Some((offset, prev_seq)) = last_in_partition.insert(r.partition, (r.offset, *seq)) {
            assert!(
                r.offset > offset && *seq > prev_seq,
                "partition {} out of order",
                r.partition
            );
        }
    }
    let mut verifier = ChainVerifier::new();
    for r in by_seq.values() {
        verifier.push(&r.value).expect("the chain verifies from the topic");
    }
}

fn log_of(l: &Ledger) -> Vec<(u64, Vec<u8>)> {
    l.raw_events(1)
        .map(|r| r.map(|(s, b)| (s, b.to_vec())).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_topic_exactly_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("exactly-once");
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 40).await;
    r.caught_up(Duration::from_secs(60)).await;
    assert_topic_equals_log(&broker.addr, &topic, &log_of(&r.ledger));
    let published = r.status.published_total.load(Ordering::Relaxed);
    assert_eq!(published, r.ledger.log_len());
    let (ledger, _) = r.stop().await;
    ledger.close();

    // A restart of the relay publishes nothing twice, even without its saved position.
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    r.ledger.replication().set_relay_position(&topic, 0).unwrap();
    r.caught_up(Duration::from_secs(30)).await;
    workload(&r.ledger, &r.gateway, 1, 10).await;
    r.caught_up(Duration::from_secs(30)).await;
    assert_topic_equals_log(&broker.addr, &topic, &log_of(&r.ledger));
    let (ledger, _) = r.stop().await;
    ledger.close();
}

/// Regression (issue 16): after a restart while the broker was unreachable, `/v1/relay`
/// reported the whole log as lag (position 0) until the relay recovered. The saved position
/// is reported until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_broker_reports_the_saved_position_not_a_false_lag() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("false-lag");
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 10).await;
    r.caught_up(Duration::from_secs(60)).await;
    let published = r.ledger.log_len();
    let (ledger, _) = r.stop().await;
    ledger.close();
    drop(broker);
    // The same log, the broker gone (nothing listens on its port).
    let port = free_port();
    let r = start(dir.path(), kafka_config(&format!("127.0.0.1:{port}"), &topic));
    for _ in 0..10 {
        let report = Relay::report(&r.ledger, &topic, &r.status);
        assert_eq!((report.position, report.lag_events), (published, 0), "{report:?}");
        assert_eq!(report.lag_seconds, 0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ledger, _) = r.stop().await;
    ledger.close();
}

/// Issue 16: the events topic is the ledger's replica, so Kafka must never delete or compact
/// it. A topic the relay creates keeps every record; an existing one that may lose records is
/// reported (`/v1/relay`'s `warning`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_topic_keeps_every_record_or_the_relay_warns() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
    let broker = Broker::start();
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let describe = |topic: String| {
        let admin = &admin;
        async move {
            let r = admin
                .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                .await
                .unwrap();
            let resource = r.into_iter().next().unwrap().unwrap();
            (
                resource.get("retention.ms").and_then(|e| e.value.clone()),
                resource.get("cleanup.policy").and_then(|e| e.value.clone()),
            )
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("kept");
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 3).await;
    r.caught_up(Duration::from_secs(60)).await;
    assert_eq!(
        describe(topic.clone()).await,
        (
            Some(bindledger::adapters::kafka::client::RETENTION_MS_MIN.to_string()),
            Some("delete".into())
        )
    );
    assert!(r.status.warning.lock().unwrap().is_none());
    let (ledger, _) = r.stop().await;
    ledger.close();

    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("short-lived");
    let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "60000");
    admin.create_topics([&new], &AdminOptions::new()).await.unwrap();
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 3).await;
    r.caught_up(Duration::from_secs(60)).await;
    let warning = r.status.warning.lock().unwrap().clone();
    assert!(
        warning.as_deref().is_some_and(|w| w.contains("retention.ms=60000")),
        "{warning:?}"
    );
    let report = Relay::report(&r.ledger, &topic, &r.status);
    assert!(report.warning.is_some());
    let (ledger, _) = r.stop().await;
    ledger.close();

    // In replicated mode such a topic is refused, and nothing is acknowledged on it.
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(dir.path());
    config.kafka = KafkaConfig {
        alerts_topic: fresh_topic("short-alerts"),
        ..kafka_config(&broker.addr, &topic)
    };
    config.checkpoints.enabled = false;
    config.durability = bindledger::config::Durability::Replicated;
    config.replication_timeout_ms = 500;
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([8; 32]), gateway.clone()).unwrap();
    let req = BindRequest {
        provider: "alipay".into(),
        wallet_account: SecretString::new(phone(1)),
        payment_password: SecretString::new(gateway.password_for(&alipay(), &phone(1))),
        factor: None,
        common: CommonInput {
            idempotency_key: Some("k".into()),
            ..CommonInput::default()
        },
    };
    let answer = node.ledger.bind(req.validate("alice", Utc::now()).unwrap()).await;
    assert!(matches!(answer, Err(bindledger::Error::OutcomeUnknown)), "{answer:?}");
    let (_, status) = node.extras.relay.clone().unwrap();
    let error = status.last_error.lock().unwrap().clone();
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("refusing to publish") && e.contains("retention.ms=60000")),
        "{error:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_not_there_yet_blocks_nothing() {
    // The port stays bound (not listening: connections are refused) until the broker starts on
    // it, so no broker of a test running alongside can take it meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reserved.local_addr().unwrap().port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("late-broker");
    let r = start(dir.path(), kafka_config(&brokers, &topic));
    let t = Instant::now();
    workload(&r.ledger, &r.gateway, 0, 20).await;
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "commands were slowed by the missing broker: {:?}",
        t.elapsed()
    );
    assert_eq!(r.status.position.load(Ordering::Relaxed), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.status.last_error.lock().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the relay should report why it cannot publish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "relay while the broker is away: {} ({:?})",
        r.status.state(),
        r.status.last_error.lock().unwrap()
    );
    drop(reserved);
    let broker = Broker::start_on(port, None);
    r.caught_up(Duration::from_secs(60)).await;
    assert_topic_equals_log(&broker.addr, &topic, &log_of(&r.ledger));
    let (ledger, _) = r.stop().await;
    ledger.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_blocks_nothing_and_the_topic_ends_complete() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("frozen-broker");
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 10).await;
    r.caught_up(Duration::from_secs(30)).await;
    broker.freeze();
    // Longer than message.timeout.ms (3 s) while commands keep coming.
    let t = Instant::now();
    let mut round = 1;
    while t.elapsed() < Duration::from_secs(6) {
        workload(&r.ledger, &r.gateway, round, 5).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        r.status.position.load(Ordering::Relaxed) < r.ledger.log_len(),
        "nothing can be published while the broker is frozen"
    );
    broker.thaw();
    r.caught_up(Duration::from_secs(90)).await;
    assert_topic_equals_log(&broker.addr, &topic, &log_of(&r.ledger));
    let (ledger, _) = r.stop().await;
    ledger.close();
}

fn quiet_config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("bindledger.toml");
    std::fs::write(
        &path,
        "[writer]\nsnapshot_every_events = 100\n\n[kafka]\npartitions = 4\nmessage_timeout_ms = 5000\nbackoff_ms_max = 500\n\n[gateway.simulated]\nseed = 11\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\nnetwork_error_per_mille = 0\nbalance_minor_min = 100000000000\nbalance_minor_max = 100000000000\n",
    )
    .unwrap();
    path
}

fn export(data: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let (code, out, stderr) = run_cli(&["export", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| (bindledger_events::decode(l).unwrap().seq, l.to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_ledger_while_publishing_leaves_every_event_on_the_topic_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let topic = fresh_topic("sigkill");
    let config = quiet_config_file(dir.path());
    let env = [
        ("BINDLEDGER_CONFIG", config.to_str().unwrap()),
        ("BINDLEDGER_KAFKA_BROKERS", broker.addr.as_str()),
        ("BINDLEDGER_KAFKA_TOPIC", topic.as_str()),
    ];
    let gateway = Arc::new(SimulatedGateway::new(Scenario::quiet(11)));
    let seed = test_seed("sigkill_of_the_ledger_while_publishing") % 1_000_000_007;
    for round in 0..4u64 {
        let server = spawn_server(&data, &log, &env);
        let stop_at = Instant::now() + Duration::from_millis(300 + (seed * (round + 7)) % 700);
        let tasks: Vec<_> = (0..8u64)
            .map(|c| {
                let (addr, g) = (server.addr, gateway.clone());
                tokio::spawn(async move {
                    let mut client = bindledger::adapters::http::client::Client::new(addr, Some(ALL.into()));
                    for n in 0u64.. {
                        let wallet = phone(round * 100_000 + c * 1000 + n);
                        let body = serde_json::json!({"provider": "alipay", "wallet_account": wallet, "payment_password": g.password_for(&alipay(), &wallet)});
                        let Ok((_, v)) = client.post_json(&format!("/v1/accounts/k{c}-{}/bindings", n / 5), &body).await else { return };
                        let Some(binding) = v["event"]["payload"]["binding_id"].as_str() else { continue };
                        let pay = serde_json::json!({"binding_id": binding, "order_id": format!("o{n}"), "amount_minor": 100 + n, "payment_password": g.password_for(&alipay(), &wallet)});
                        if client.post_json(&format!("/v1/accounts/k{c}-{}/payments", n / 5), &pay).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep_until(stop_at.into()).await;
        server.kill();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // The last start: wait for the relay to catch up, then compare the topic with the log.
    let server = spawn_server(&data, &log, &env);
    let mut client = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, relay) = client.get_json("/v1/relay").await.unwrap();
        if relay["lag_events"] == 0 && relay["position"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the relay did not catch up: {relay}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = client.send(hyper::Method::GET, "/metrics", None).await.unwrap();
    assert!(String::from_utf8_lossy(&metrics).contains("bindledger_relay_lag_events 0"));
    let url = format!("http://{}", server.addr);
    let (code, out, stderr) = run_cli(&["status", "--url", &url, "--token", ALL]);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        out.contains("ledger:  ok") && out.contains("lag 0 events") && out.contains(&topic),
        "{out}"
    );
    // Regression: `alerts:` was printed twice (the alerts relay and the monitor), and the
    // notifications relay not at all. Each line names one thing.
    let labels: Vec<&str> = out.lines().filter_map(|l| l.split(':').next()).collect();
    let unique: std::collections::BTreeSet<&&str> = labels.iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        unique.len(),
        labels.iter().filter(|l| !l.trim().is_empty()).count(),
        "{out}"
    );
    assert!(
        out.contains("relay events:") && out.contains("monitor: at event"),
        "{out}"
    );
    server.kill();
    let log_events = export(&data);
    assert!(log_events.len() > 100, "the load produced {} events", log_events.len());
    assert_topic_equals_log(&broker.addr, &topic, &log_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytics_consumer_agrees_with_the_log() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("analytics");
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 30).await;
    r.caught_up(Duration::from_secs(60)).await;
    let log = log_of(&r.ledger);
    // A duplicate on the topic (as a redelivery would make): the consumer must drop it.
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let (seq, bytes) = &log[log.len() / 2];
        let e = bindledger_events::decode(bytes).unwrap();
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .create()
            .unwrap();
        let partition = partition_for(e.account.as_bytes(), PARTITIONS);
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(partition)
                    .key(&e.account)
                    .payload(bytes),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        eprintln!("duplicated event {seq}");
    }
    let (ledger, _) = r.stop().await;
    ledger.close();

    let group = fresh_topic("group");
    let consume = || {
        run_cli(&[
            "consume",
            "--brokers",
            &broker.addr,
            "--topic",
            &topic,
            "--group",
            &group,
            "--idle-exit-ms",
            "3000",
            "--json",
        ])
    };
    let (code, out, stderr) = consume();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("from the beginning"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["messages"].as_u64(), Some(log.len() as u64 + 1));
    assert_eq!(report["duplicates"], 1);
    let mut expected = bindledger::adapters::kafka::analytics::Analytics::default();
    for (_, bytes) in &log {
        expected.apply(&bindledger_events::decode(bytes).unwrap());
    }
    assert_eq!(
        report["analytics"],
        serde_json::to_value(&expected).unwrap(),
        "the consumer's aggregates equal the log's"
    );
    assert!(expected.spend_minor.len() > 10 && !expected.failures_per_day.is_empty());
    // The same group again: it says it resumes from its committed offsets (and reads nothing
    // new), rather than presenting an empty report as the topic's.
    let (code, out, stderr) = consume();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resumes from its committed offsets"), "{stderr}");
    let again: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(again["messages"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_of_another_log_is_refused() {
    let broker = Broker::start();
    let topic = fresh_topic("owned");
    let first = tempfile::tempdir().unwrap();
    let r = start(first.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 5).await;
    r.caught_up(Duration::from_secs(30)).await;
    let before = read_topic(&broker.addr, &topic).len();
    let (ledger, _) = r.stop().await;
    ledger.close();
    // Another, younger log pointed at the same topic must not publish over it.
    let second = tempfile::tempdir().unwrap();
    let r = start(second.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 1, 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        if let Some(e) = r.status.last_error.lock().unwrap().clone() {
            if e.contains("another log") {
                break e;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not notice the topic is another log's"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains(&topic), "{error}");
    assert_eq!(r.status.published_total.load(Ordering::Relaxed), 0);
    assert_eq!(
        read_topic(&broker.addr, &topic).len(),
        before,
        "nothing was published over the other log's events"
    );
    let (ledger, _) = r.stop().await;
    ledger.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_persistent_storage_loses_and_duplicates_nothing() {
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_on(free_port(), Some(broker_dir.path()));
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("broker-restart");
    let r = start(dir.path(), kafka_config(&broker.addr, &topic));
    workload(&r.ledger, &r.gateway, 0, 10).await;
    r.caught_up(Duration::from_secs(30)).await;
    for round in 1..=2 {
        // SIGKILL the broker while commands keep flowing, then bring it back on its data.
        broker.restart();
        workload(&r.ledger, &r.gateway, round, 10).await;
    }
    r.caught_up(Duration::from_secs(90)).await;
    assert_topic_equals_log(&broker.addr, &topic, &log_of(&r.ledger));
    let (ledger, _) = r.stop().await;
    ledger.close();
}

/// Starts a whole node (ledger, monitor, both relays), tries `accounts` x 6 wrong passwords,
/// waits until the alerts topic holds every change, and stops it.
async fn alert_round(dir: &std::path::Path, kafka: &KafkaConfig, round: u64, accounts: u64) {
    let mut config: Config = test_config(dir);
    config.kafka = kafka.clone();
    // Without locking (and so without the inline guard), the sixth wrong password reaches the
    // provider and updates the alert: an opening and an update per account.
    let rules = dir.join("no-lock.toml");
    std::fs::write(&rules, "[password_brute_force]\nlock = false\n").unwrap();
    config.alerts.rules_file = Some(rules);
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([3; 32]), gateway.clone()).unwrap();
    let l = node.ledger.clone();
    for a in 0..accounts {
        let account = format!("acct-{round}-{a}");
        let binding_id = bind_wallet(&l, &gateway, &account, round * 1000 + a).await;
        for k in 0..6 {
            let pay = PayRequest {
                binding_id: binding_id.to_string(),
                order_id: format!("o-{k}"),
                amount_minor: 100,
                currency: None,
                payment_password: SecretString::new("wrong".into()),
                factor: None,
                common: CommonInput::default(),
            };
            l.pay(pay.validate(&account, Utc::now()).unwrap()).await.unwrap();
        }
    }
    let feed = node.monitor.as_ref().unwrap().feed().clone();
    let (_, alerts_status) = node.extras.alerts_relay.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while feed.published() < accounts * 2 || alerts_status.position.load(Ordering::Relaxed) < feed.published() {
        assert!(
            Instant::now() < deadline,
            "the alerts topic did not catch up: {:?}",
            alerts_status.last_error.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_their_own_topic_once_and_in_order_across_a_restart() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig {
        alerts_topic: fresh_topic("alerts"),
        ..kafka_config(&broker.addr, &fresh_topic("alert-events"))
    };
    alert_round(dir.path(), &kafka, 0, 8).await;
    alert_round(dir.path(), &kafka, 1, 5).await;
    // The stored alert stream, offline.
    let store = bindledger::ledger::store::Store::open(dir.path()).unwrap();
    let alerts = bindledger::ledger::alerts::store::AlertStore::new(store.alerts_tree());
    let stored = alerts
        .changes_after(0, alerts.last_stream_seq().unwrap(), usize::MAX)
        .unwrap();
    assert_eq!(stored.len(), 26, "13 accounts: an opening and an update each");
    let reads = read_topic(&broker.addr, &kafka.alerts_topic);
    let seqs: Vec<u64> = reads.iter().map(|r| r.headers["stream_seq"].parse().unwrap()).collect();
    assert_eq!(seqs, (1..=26).collect::<Vec<_>>(), "every change once, in stream order");
    for (r, c) in reads.iter().zip(&stored) {
        let on_topic: bindledger::domain::alerts::AlertChange = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(&on_topic, c);
        assert_eq!((r.partition, r.key.as_str()), (0, c.alert.key.value.as_str()));
        assert_eq!(r.headers["alert_id"], c.alert.id);
        assert_eq!(r.headers["rule"], c.alert.rule);
        assert_eq!(r.headers["severity"], c.alert.severity.as_str());
        assert_eq!(r.headers["change"], c.change);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_reach_their_topic() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(dir.path());
    config.kafka = KafkaConfig {
        alerts_topic: fresh_topic("cp-alerts"),
        ..kafka_config(&broker.addr, &fresh_topic("cp-events"))
    };
    config.checkpoints.topic = fresh_topic("checkpoints");
    config.checkpoints.every_events = 5;
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([3; 32]), gateway.clone()).unwrap();
    for a in 0..12 {
        bind_wallet(&node.ledger, &gateway, &format!("acct-{a}"), a).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, key) = node.extras.checkpoints.clone().unwrap();
    let log_len = node.ledger.log_len();
    node.stop().await;
    let reads = read_topic(&broker.addr, &config.checkpoints.topic);
    assert!(reads.len() >= 2, "{} checkpoints on the topic", reads.len());
    let mut last = 0;
    for r in &reads {
        let cp: bindledger::ledger::checkpoint::SignedCheckpoint = serde_json::from_slice(&r.value).unwrap();
        cp.verify(&key).unwrap();
        assert_eq!(r.key, cp.seq.to_string());
        assert!(cp.seq > last, "in order");
        last = cp.seq;
    }
    assert_eq!(last, log_len, "the last one (made on stop) is at the log's end");

    // Issue 16: checkpoints made while the broker is away (here: the ledger pointed at a port
    // where none listens) are stored, and reach the topic, exactly once and in order, when the
    // ledger runs with the broker again.
    let topic_of = |config: &Config| read_topic(&broker.addr, &config.checkpoints.topic);
    let stored = |dir: &std::path::Path| {
        let store = bindledger::ledger::store::Store::open(dir).unwrap();
        bindledger::ledger::checkpoint::CheckpointStore::new(store.checkpoints_tree())
            .all()
            .unwrap()
    };
    let mut away = config.clone();
    away.kafka.brokers = format!("127.0.0.1:{}", free_port());
    let node = bindledger::node::Node::start(&away, LedgerSecret::from_bytes([3; 32]), gateway.clone()).unwrap();
    for a in 12..24 {
        bind_wallet(&node.ledger, &gateway, &format!("acct-{a}"), a).await;
    }
    node.stop().await;
    assert_eq!(topic_of(&config).len(), reads.len(), "nothing published while away");
    let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([3; 32]), gateway.clone()).unwrap();
    bind_wallet(&node.ledger, &gateway, "acct-back", 99).await;
    node.stop().await;
    let on_topic: Vec<bindledger::ledger::checkpoint::SignedCheckpoint> = topic_of(&config)
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    let all = stored(dir.path());
    assert_eq!(
        on_topic.iter().map(|c| (c.seq, c.head)).collect::<Vec<_>>(),
        all.iter().map(|c| (c.seq, c.head)).collect::<Vec<_>>(),
        "every stored checkpoint once, in order"
    );

    // Another ledger (another key) pointed at the same checkpoints topic is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = test_config(other_dir.path());
    other.kafka = KafkaConfig {
        alerts_topic: fresh_topic("other-alerts"),
        ..kafka_config(&broker.addr, &fresh_topic("other-events"))
    };
    other.checkpoints = config.checkpoints.clone();
    let node = bindledger::node::Node::start(&other, LedgerSecret::from_bytes([4; 32]), gateway.clone()).unwrap();
    bind_wallet(&node.ledger, &gateway, "intruder", 1).await;
    let (_, status) = node.extras.checkpoints_relay.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refused = status
            .last_error
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|e| e.contains("not this ledger's"));
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other ledger was not refused: {:?}",
            status.last_error.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `bindledger status` shows every relay and exits 1 while one is refusing (issue 15).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bindledger::adapters::http::serve(
        listener,
        node.state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&["status", "--json", "--url", &url, "--token", ALL]))
            .await
            .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(code, 1, "{st}");
    assert!(
        st["relays"]["checkpoints"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not this ledger's")),
        "{st}"
    );
    assert!(
        st["relays"]["events"]["state"].is_string() && st["relays"]["alerts"]["state"].is_string(),
        "{st}"
    );
    let _ = stop_http.send(());
    let _ = server.await;
    node.stop().await;
    assert_eq!(
        topic_of(&config).len(),
        all.len(),
        "nothing of the other ledger's on the topic"
    );
}

/// Issue 16, restore from the topic: a ledger publishing to Kafka (events and signed
/// checkpoints) loses its data directory; `bindledger restore` rebuilds it from the topics,
/// byte for byte, with its checkpoints checked and kept; a second run is a no-op; `serve` on
/// the restored directory has the same bindings and continues the same chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_directory_is_restored_from_the_topic_byte_for_byte() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config: Config = test_config(&data);
    config.kafka = KafkaConfig {
        alerts_topic: fresh_topic("restore-alerts"),
        ..kafka_config(&broker.addr, &fresh_topic("restore-events"))
    };
    config.checkpoints.topic = fresh_topic("restore-checkpoints");
    config.checkpoints.every_events = 25;
    let secret = LedgerSecret::from_bytes([3; 32]);
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let node = bindledger::node::Node::start(&config, secret.clone(), gateway.clone()).unwrap();
    workload(&node.ledger, &gateway, 0, 30).await;
    // A keyed bind and a keyed payment: their keys and the paid order must outlive the disk.
    let keyed_bind = || BindRequest {
        provider: "alipay".into(),
        wallet_account: SecretString::new(phone(500)),
        payment_password: SecretString::new(gateway.password_for(&alipay(), &phone(500))),
        factor: None,
        common: CommonInput {
            idempotency_key: Some("bind-before-loss".into()),
            ..Default::default()
        },
    };
    let bound = node
        .ledger
        .bind(keyed_bind().validate("keyed", Utc::now()).unwrap())
        .await
        .unwrap();
    let Payload::WalletBound { binding_id, .. } = bound.event.payload else {
        panic!("{:?}", bound.event.payload)
    };
    let keyed_pay = |key: &str| PayRequest {
        binding_id: binding_id.to_string(),
        order_id: "order-before-loss".into(),
        amount_minor: 5,
        currency: None,
        payment_password: SecretString::new(gateway.password_for(&alipay(), &phone(500))),
        factor: None,
        common: CommonInput {
            idempotency_key: Some(key.into()),
            ..Default::default()
        },
    };
    let paid = node
        .ledger
        .pay(keyed_pay("pay-before-loss").validate("keyed", Utc::now()).unwrap())
        .await
        .unwrap();
    assert!(matches!(paid.event.payload, Payload::PaymentSucceeded { .. }));
    let (_, relay) = node.extras.relay.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.position.load(Ordering::Relaxed) < node.ledger.log_len() {
        assert!(Instant::now() < deadline, "the relay did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, key) = node.extras.checkpoints.clone().unwrap();
    let original: Vec<(u64, Vec<u8>)> = log_of(&node.ledger);
    let bindings: Vec<(String, serde_json::Value)> = (0..30)
        .map(|a| format!("acct-0-{a}"))
        .filter_map(|a| {
            node.ledger
                .account(&a)
                .unwrap()
                .map(|s| (a, serde_json::to_value(&s).unwrap()))
        })
        .collect();
    node.stop().await;
    // The machine's disk is gone.
    std::fs::remove_dir_all(&data).unwrap();
    let restored_dir = dir.path().join("restored");
    let secret_hex = "03".repeat(32);
    let restore = |dir: &std::path::Path| {
        std::process::Command::new(binary())
            .args([
                "restore",
                "--brokers",
                &broker.addr,
                "--topic",
                &config.kafka.topic,
                "--checkpoints-topic",
                &config.checkpoints.topic,
                "--public-key",
                &key,
                "--data-dir",
            ])
            .arg(dir)
            .env("BINDLEDGER_SECRET", &secret_hex)
            .output()
            .unwrap()
    };
    // A topic the broker does not hold: said at once, nothing created.
    let wrong = dir.path().join("wrong-topic");
    let out = std::process::Command::new(binary())
        .args([
            "restore",
            "--brokers",
            &broker.addr,
            "--topic",
            "no-such-topic",
            "--data-dir",
        ])
        .arg(&wrong)
        .env("BINDLEDGER_SECRET", &secret_hex)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the topic no-such-topic does not exist"), "{err}");
    assert!(!wrong.exists());
    let out = restore(&restored_dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("restored {} events", original.len())), "{text}");
    assert!(text.contains("checked and kept"), "{text}");
    let again = restore(&restored_dir);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("restored 0 events"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    // Byte for byte, with the checkpoints.
    {
        let store = bindledger::ledger::store::Store::open(&restored_dir).unwrap();
        let restored: Vec<(u64, Vec<u8>)> = store
            .scan_events(1)
            .map(|r| r.map(|(s, b)| (s, b.to_vec())).unwrap())
            .collect();
        assert_eq!(restored, original);
        let cps = bindledger::ledger::checkpoint::CheckpointStore::new(store.checkpoints_tree())
            .all()
            .unwrap();
        assert!(!cps.is_empty(), "{} checkpoints", cps.len());
        for cp in &cps {
            cp.verify(&key).unwrap();
            assert_eq!(bindledger_events::hash_bytes(&original[cp.seq as usize - 1].1), cp.head);
        }
    }
    // The ledger on the restored directory: the same bindings, and the chain goes on.
    let mut restored_config = config.clone();
    restored_config.data_dir = restored_dir.clone();
    restored_config.kafka.brokers = String::new();
    let node = bindledger::node::Node::start(&restored_config, secret, gateway.clone()).unwrap();
    for (a, state) in &bindings {
        assert_eq!(
            &serde_json::to_value(node.ledger.account(a).unwrap().unwrap()).unwrap(),
            state,
            "{a}"
        );
    }
    // The keys and the paid order came back with the log.
    let again = node
        .ledger
        .bind(keyed_bind().validate("keyed", Utc::now()).unwrap())
        .await
        .unwrap();
    assert!(again.replayed && again.event.seq == bound.event.seq);
    let again = node
        .ledger
        .pay(keyed_pay("pay-before-loss").validate("keyed", Utc::now()).unwrap())
        .await
        .unwrap();
    assert!(again.replayed && again.event.seq == paid.event.seq);
    let second = node
        .ledger
        .pay(keyed_pay("another-key").validate("keyed", Utc::now()).unwrap())
        .await
        .unwrap();
    assert!(
        matches!(&second.event.payload, Payload::PaymentFailed { reason: bindledger_events::PaymentFailure::OrderAlreadyPaid { payment_seq }, .. } if *payment_seq == paid.event.seq),
        "{:?}",
        second.event.payload
    );
    let next = bind_wallet(&node.ledger, &gateway, "after-restore", 77).await;
    let _ = next;
    let log = log_of(&node.ledger);
    assert_eq!(log.len(), original.len() + 2, "the refused payment, then the bind");
    let e = bindledger_events::decode(&log[original.len()].1).unwrap();
    assert_eq!(e.seq, original.len() as u64 + 1);
    assert_eq!(e.prev_hash, bindledger_events::hash_bytes(&original.last().unwrap().1));
    node.stop().await;
}

/// Issue 16, replicated acknowledgement: with the broker away, commands are answered
/// `503 outcome_unknown` within the timeout and none as a success; when it returns, retries
/// with the same idempotency keys get the original events (`replayed`), each in the log once;
/// and with the broker there, a command is answered only once its event is on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_mode_acknowledges_nothing_the_cluster_does_not_hold() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(dir.path());
    config.kafka = KafkaConfig {
        alerts_topic: fresh_topic("repl-alerts"),
        ..kafka_config(&addr, &fresh_topic("repl-events"))
    };
    config.checkpoints.enabled = false;
    config.durability = bindledger::config::Durability::Replicated;
    config.replication_timeout_ms = 1000;
    let server = TestServer::start(config.clone()).await;
    let (l, g) = (server.ledger.clone(), server.gateway.clone());
    let binding = {
        // The bind itself waits for the cluster: with no broker, its outcome is unknown too.
        let mut c = server.client(ALL);
        let body = serde_json::json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": g.password_for(&alipay(), &phone(1)), "idempotency_key": "bind-1"});
        let started = Instant::now();
        let (status, v) = c.post_json("/v1/accounts/alice/bindings", &body).await.unwrap();
        assert_eq!(
            (status.as_u16(), v["error"]["code"].as_str()),
            (503, Some("outcome_unknown")),
            "{v}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        body
    };
    let mut c = server.client(ALL);
    let pay = |i: u64, bound: &str| serde_json::json!({"binding_id": bound, "order_id": format!("o-{i}"), "amount_minor": 100, "payment_password": g.password_for(&alipay(), &phone(1)), "idempotency_key": format!("pay-{i}")});
    // The broker arrives; the relay publishes; the retry of the bind returns the original.
    let _broker = Broker::start_on(port, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let bound = loop {
        let (status, v) = c.post_json("/v1/accounts/alice/bindings", &binding).await.unwrap();
        if status.as_u16() == 200 {
            assert_eq!(v["replayed"], true, "{v}");
            break v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned();
        }
        assert_eq!(v["error"]["code"], "outcome_unknown", "{v}");
        assert!(Instant::now() < deadline, "the retry never succeeded");
    };
    // With the broker there: answered once replicated.
    for i in 0..20 {
        let (status, v) = c
            .post_json("/v1/accounts/alice/payments", &pay(i, &bound))
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
        let seq = v["event"]["seq"].as_u64().unwrap();
        let (_, relay) = server.node.as_ref().unwrap().extras.relay.clone().unwrap();
        assert!(
            relay.position.load(Ordering::Relaxed) >= seq,
            "answered before the cluster held event {seq}"
        );
    }
    // Each command once in the log.
    let binds = log_of(&l)
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains("\"wallet_bound\""))
        .count();
    assert_eq!(binds, 1);
    let _ = g;
    server.shutdown().await;
}

/// The topic read as one log (restore, the audit tool) holds every record, also when a
/// partition holds far more than the reader buffers (4,096) and the broker writes records in
/// batches: an earlier reader paused full partitions and, against tansu, lost the records of
/// a batch on resuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_topic_is_read_whole_in_seq_order() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = Broker::start();
    let topic = fresh_topic("long");
    bindledger::adapters::kafka::client::ensure_topic(&kafka_config(&broker.addr, &topic), &topic, 2)
        .await
        .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    const N: u64 = 12_000;
    let mut pending = Vec::new();
    for seq in 1..=N {
        // Most records in partition 0, in runs, as a busy account's would be.
        let partition = if seq % 7 == 0 { 1 } else { 0 };
        let text = seq.to_string();
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key("k")
            .payload(text.as_bytes())
            .headers(OwnedHeaders::new().insert(Header {
                key: "seq",
                value: Some(text.as_str()),
            }));
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let addr = broker.addr.clone();
    let read: Vec<u64> = tokio::task::spawn_blocking(move || {
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", &addr);
        bindledger::adapters::kafka::reader::read_topic(client, &topic)
            .unwrap()
            .map(|r| String::from_utf8(r.unwrap()).unwrap().parse().unwrap())
            .collect()
    })
    .await
    .unwrap();
    assert_eq!(read.len() as u64, N);
    assert!(read.iter().copied().eq(1..=N), "every record, in seq order");
}

/// Two demo runs on one broker: each publishes to topics of its own run, so neither is refused
/// and each reads back its own log's figures.
#[test]
fn two_demo_runs_on_one_broker_each_use_their_own_topics() {
    let broker = Broker::start();
    let mut topics = Vec::new();
    for run in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(binary())
            .args([
                "demo",
                "--duration-s",
                "2",
                "--shoppers",
                "40",
                "--rate",
                "300",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("demo"))
            .env_remove("BINDLEDGER_CONFIG")
            .env("BINDLEDGER_KAFKA_BROKERS", &broker.addr)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {text}\n{err}");
        assert!(
            ![&text, &err]
                .iter()
                .any(|o| o.contains("another log") || o.contains("another ledger") || o.contains("last relay error")),
            "run {run}: {text}\n{err}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("== kafka: "))
            .unwrap_or_else(|| panic!("{text}"));
        // "== kafka: N of N events on topic T ==": every event of this run's log is on its topic.
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[2], words[4], "{line}");
        assert!(words[8].starts_with("bindledger.demo."), "{line}");
        assert!(text.contains("the topic equals the log, event for event"), "{text}");
        // Regression: the banner named the events topic only. All five (events, alerts,
        // notifications, checkpoints, wrapped data keys), and the commands that read this run
        // while it goes.
        let banner: Vec<&str> = text
            .lines()
            .take_while(|l| !l.trim_start().starts_with("alerts:"))
            .collect();
        let named = banner
            .iter()
            .filter(|l| l.trim_start().starts_with("bindledger.demo."))
            .count();
        assert_eq!(named, 5, "{}", banner.join("\n"));
        assert!(
            banner.iter().any(|l| l.contains(" status --url http://"))
                && banner
                    .iter()
                    .any(|l| l.contains(&format!(" consume --brokers {} --topic {}", broker.addr, words[8]))),
            "{}",
            banner.join("\n")
        );
        topics.push(words[8].to_owned());
    }
    assert_ne!(topics[0], topics[1]);
}

/// Waits until the server's notifications publisher has gone through its whole log.
async fn notifications_caught_up(client: &mut bindledger::adapters::http::client::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = client.get_json("/v1/status").await.unwrap();
        let relays = &v["relays"];
        let (log, at) = (
            relays["events"]["log_events"].as_u64(),
            relays["notifications"]["position"].as_u64(),
        );
        if log.is_some() && log == at && v["monitor"]["position"].as_u64() == log {
            return;
        }
        assert!(Instant::now() < deadline, "notifications did not catch up: {relays}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_holder_is_told_once_per_event_in_both_languages_across_sigkill() {
    use bindledger::adapters::http::client::Client;
    use bindledger::domain::notify::{Notification, NotificationKind};
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[password_brute_force]\nlock = true\nlock_for = \"1h\"\n").unwrap();
    let config = dir.path().join("bindledger.toml");
    std::fs::write(
        &config,
        format!("[kafka]\npartitions = {PARTITIONS}\nmessage_timeout_ms = 3000\nbackoff_ms_max = 500\n\n[gateway.simulated]\nseed = 5\nfrozen_per_mille = 0\nclosed_per_mille = 0\nunknown_per_mille = 0\nnetwork_error_per_mille = 0\n"),
    )
    .unwrap();
    let topic = fresh_topic("notifications");
    let (events, alerts) = (fresh_topic("n-events"), fresh_topic("n-alerts"));
    let env = [
        ("BINDLEDGER_CONFIG", config.to_str().unwrap()),
        ("BINDLEDGER_KAFKA_BROKERS", broker.addr.as_str()),
        ("BINDLEDGER_KAFKA_TOPIC", events.as_str()),
        ("BINDLEDGER_KAFKA_ALERTS_TOPIC", alerts.as_str()),
        ("BINDLEDGER_KAFKA_NOTIFICATIONS_TOPIC", topic.as_str()),
        ("BINDLEDGER_ALERT_RULES", rules.to_str().unwrap()),
    ];
    let gateway = SimulatedGateway::new(Scenario::quiet(5));
    let bind = |account: String, n: u64| {
        let body = serde_json::json!({"provider": "alipay", "wallet_account": phone(n), "payment_password": gateway.password_for(&alipay(), &phone(n)), "idempotency_key": format!("bind-{n}")});
        (format!("/v1/accounts/{account}/bindings"), body)
    };
    let mut bindings = Vec::new();

    // 1. Four wallets bound, two of them brute-forced (a high alert, then a lock); the
    //    publisher catches up, then the process is killed.
    let server = spawn_server(&data, &log, &env);
    let mut client = Client::new(server.addr, Some(ALL.into()));
    for n in 0..4u64 {
        let (path, body) = bind(format!("acct-{n}"), n);
        let (status, v) = client.post_json(&path, &body).await.unwrap();
        assert_eq!(status, 201, "{v}");
        bindings.push(v["event"]["payload"]["binding_id"].as_str().unwrap().to_owned());
    }
    for n in 0..2u64 {
        for k in 0..5 {
            let body = serde_json::json!({"binding_id": bindings[n as usize], "order_id": format!("o-{k}"), "amount_minor": 100, "payment_password": "wrong-password"});
            let (status, v) = client
                .post_json(&format!("/v1/accounts/acct-{n}/payments"), &body)
                .await
                .unwrap();
            assert_eq!(status, 201, "{v}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = client.get_json("/v1/accounts/acct-1/bindings").await.unwrap();
        if !v["bindings"][0]["lock"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "no lock: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    notifications_caught_up(&mut client).await;
    server.kill();
    // As a kill between the broker's acknowledgement and the saved position leaves it: the
    // positions are forgotten, and the topic's tails alone must keep it exactly once.
    {
        let store = bindledger::ledger::store::Store::open(&data).unwrap();
        store.set_relay_position(&topic, 0).unwrap();
        store.set_relay_position(&format!("{topic}#alert-stream"), 0).unwrap();
        store.flush().unwrap();
    }

    // 2. Two more wallets and a manual unlock, killed as soon as they are acknowledged.
    let server = spawn_server(&data, &log, &env);
    let mut client = Client::new(server.addr, Some(ALL.into()));
    for n in 4..6u64 {
        let (path, body) = bind(format!("acct-{n}"), n);
        let (status, v) = client.post_json(&path, &body).await.unwrap();
        assert_eq!(status, 201, "{v}");
    }
    let path = format!("/v1/accounts/acct-0/bindings/{}/unlock", bindings[0]);
    let (status, v) = client
        .post_json(
            &path,
            &serde_json::json!({"confirm": true, "reason": "the holder called"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    server.kill();

    // 3. A last run catches up and stops.
    let server = spawn_server(&data, &log, &env);
    let mut client = Client::new(server.addr, Some(ALL.into()));
    notifications_caught_up(&mut client).await;
    assert_eq!(server.terminate(), Some(0));

    let reads = read_topic(&broker.addr, &topic);
    let told: Vec<Notification> = reads
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    let mut ids: Vec<&str> = told.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "a notification was published twice: {ids:?}");
    let count = |kind: NotificationKind| told.iter().filter(|n| n.kind == kind).count();
    assert_eq!(count(NotificationKind::WalletBound), 6, "one per bound wallet");
    assert_eq!(count(NotificationKind::AlertOpened), 2, "one per high alert");
    assert_eq!(count(NotificationKind::BindingLocked), 2, "one per lock");
    assert_eq!(count(NotificationKind::BindingUnlocked), 1, "one per unlock");
    // Each is the one its event causes: the same id, seq and account as the log says.
    let store = bindledger::ledger::store::Store::open(&data).unwrap();
    let mut last: BTreeMap<i32, (u64, u32)> = BTreeMap::new();
    for (r, n) in reads.iter().zip(&told) {
        assert_eq!(
            (r.key.as_str(), r.partition),
            (n.account.as_str(), partition_for(n.account.as_bytes(), PARTITIONS))
        );
        assert_eq!(r.headers["notification_id"], n.id);
        assert_eq!(r.headers["kind"], n.kind.as_str());
        let prev = last.insert(r.partition, (n.seq, n.index));
        assert!(
            prev.is_none_or(|p| p < (n.seq, n.index)),
            "in log order within a partition"
        );
        let bytes = store.scan_events(n.seq).next().unwrap().unwrap().1;
        assert_eq!(r.headers["event_hash"], bindledger_events::hash_bytes(&bytes).to_hex());
        let event = bindledger_events::decode(&bytes).unwrap();
        let expected_kind = match &event.payload {
            Payload::WalletBound { .. } => NotificationKind::WalletBound,
            Payload::BindingLocked { .. } => NotificationKind::BindingLocked,
            Payload::BindingUnlocked { .. } => NotificationKind::BindingUnlocked,
            _ => NotificationKind::AlertOpened,
        };
        assert_eq!(
            (n.kind, n.account.as_str()),
            (expected_kind, event.account.as_str()),
            "{n:?}"
        );
        // Both languages, and never the wallet account in the clear.
        assert!(
            n.messages.zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
            "{n:?}"
        );
        assert!(n.messages.en.is_ascii() && !n.messages.en.is_empty(), "{n:?}");
        for k in 0..6 {
            assert!(
                !String::from_utf8_lossy(&r.value).contains(&phone(k)),
                "a wallet account in the clear"
            );
        }
        match n.kind {
            NotificationKind::WalletBound | NotificationKind::BindingLocked | NotificationKind::BindingUnlocked => {
                let masked = n.wallet.as_deref().expect("the wallet, masked");
                assert!(
                    n.messages.zh.contains("支付宝") && n.messages.zh.contains(masked),
                    "{n:?}"
                );
                assert!(
                    n.messages.en.contains("Alipay") && n.messages.en.contains(masked),
                    "{n:?}"
                );
            }
            NotificationKind::AlertOpened => {
                assert!(
                    n.messages.zh.contains("支付密码") && n.messages.en.contains("wrong payment passwords"),
                    "{n:?}"
                );
                assert!(n.alert_id.as_deref().unwrap().starts_with("password_brute_force-"));
            }
        }
    }
}

/// Regression (issue 26, item 8): a part of the node that died left it half alive. A relay
/// that panics (planted with the debug builds' seam) halts the node: `/healthz` answers `503`
/// and commands are refused `503 halted`, so that its supervisor restarts it; restarted, it
/// publishes everything.
#[test]
fn a_node_whose_relay_dies_halts_and_says_so() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("halt");
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let env = [
        ("BINDLEDGER_KAFKA_BROKERS", broker.addr.as_str()),
        ("BINDLEDGER_KAFKA_TOPIC", topic.as_str()),
        ("BINDLEDGER_FAULT_PANIC", "relay:1"),
    ];
    let server = spawn_server(&data, &log, &env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, h) = c.get_json("/healthz").await.unwrap();
            if status.as_u16() == 503 {
                assert_eq!(h["status"], "failed", "{h}");
                break;
            }
            assert!(Instant::now() < deadline, "still healthy: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, v) = c
            .post_json(
                "/v1/accounts/a/bindings",
                &serde_json::json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": "000000"}),
            )
            .await
            .unwrap();
        assert_eq!(
            (status.as_u16(), v["error"]["code"].as_str()),
            (503, Some("halted")),
            "{v}"
        );
    });
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the node halted"), "{text}");
    let env = [
        ("BINDLEDGER_KAFKA_BROKERS", broker.addr.as_str()),
        ("BINDLEDGER_KAFKA_TOPIC", topic.as_str()),
    ];
    let server = spawn_server(&data, &log, &env);
    rt.block_on(async {
        let mut c = bindledger::adapters::http::client::Client::new(server.addr, Some(ALL.into()));
        let (status, v) = c
            .post_json(
                "/v1/accounts/a/bindings",
                &serde_json::json!({"provider": "alipay", "wallet_account": phone(1), "payment_password": "000000"}),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 201, "{v}");
    });
}
