//! The fourth source: the events topic on a real broker (tansu), partitions merged on `seq`,
//! gives the same log as the ledger's directory, and `verify` reads it.

use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::Config;
use bindledger::domain::secret::{LedgerSecret, SecretString};
use bindledger_events::Provider;
use bindledger_replay::Source;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// tansu from `TANSU` (set by `make test`) or `~/.cargo/bin/tansu`, in memory, on a free port.
struct Broker(std::process::Child, String);

impl Broker {
    fn start() -> Broker {
        let bin = std::env::var("TANSU")
            .unwrap_or_else(|_| format!("{}/.cargo/bin/tansu", std::env::var("HOME").unwrap_or_default()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs the tansu broker ({bin}): run `make test`, which installs it ({e})")
            });
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker(child, addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_topic_gives_the_same_log_as_the_directory() {
    let broker = Broker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("replay-{}", uuid::Uuid::now_v7().simple());
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.gateway.simulated = Scenario::quiet(8);
    config.kafka.brokers = broker.1.clone();
    config.kafka.topic = topic.clone();
    config.kafka.alerts_topic = format!("{topic}-alerts");
    config.kafka.partitions = 3;
    let g = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let alipay = Provider::parse("alipay").unwrap();
    rt.block_on(async {
        let node = bindledger::node::Node::start(&config, LedgerSecret::from_bytes([2; 32]), g.clone()).unwrap();
        for a in 0..30u64 {
            let phone = format!("139{a:08}");
            let req = bindledger::domain::command::BindRequest {
                provider: "alipay".into(),
                wallet_account: SecretString::new(phone.clone()),
                payment_password: SecretString::new(if a % 4 == 0 {
                    "wrong".into()
                } else {
                    g.password_for(&alipay, &phone)
                }),
                factor: None,
                common: Default::default(),
            };
            node.ledger
                .bind(req.validate(&format!("acct-{a}"), chrono::Utc::now()).unwrap())
                .await
                .unwrap();
        }
        let (_, status) = node.extras.relay.clone().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while status.position.load(Ordering::Relaxed) < node.ledger.log_len() {
            assert!(Instant::now() < deadline, "the relay did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.stop().await;
    });
    let from_topic = Source::Kafka {
        brokers: broker.1.clone(),
        topic,
        properties: Vec::new(),
    }
    .read()
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let from_dir = Source::DataDir(dir.path().to_path_buf())
        .read()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(from_topic.len(), 30);
    assert_eq!(from_topic, from_dir);
    let report = bindledger_replay::audit(from_topic.into_iter().map(Ok)).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.events, 30);
}
