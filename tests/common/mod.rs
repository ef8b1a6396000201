//! Helpers shared by the integration tests: a real ledger with the real HTTP server on a real
//! socket (in process), and the real `bindledger` binary as a child process.
#![allow(dead_code)]

use bindledger::adapters::http::client::Client;
use bindledger::adapters::provider::{Scenario, SimulatedGateway};
use bindledger::config::{Config, Role, TokenConfig};
use bindledger::domain::secret::LedgerSecret;
use bindledger::node::Node;
use bindledger::Ledger;
use bindledger_events::Provider;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub const WRITER: &str = "writer-token-0123456789";
pub const READER: &str = "reader-token-0123456789";
pub const AUDITOR: &str = "auditor-token-0123456789";
pub const SECURITY: &str = "security-token-0123456789";
pub const ALL: &str = "all-roles-token-0123456789";

pub fn tokens() -> Vec<TokenConfig> {
    vec![
        TokenConfig {
            token: WRITER.into(),
            roles: vec![Role::Writer],
            name: None,
            client_cert_sha256: None,
        },
        TokenConfig {
            token: READER.into(),
            roles: vec![Role::Reader],
            name: None,
            client_cert_sha256: None,
        },
        TokenConfig {
            token: AUDITOR.into(),
            roles: vec![Role::Auditor],
            name: None,
            client_cert_sha256: None,
        },
        TokenConfig {
            token: SECURITY.into(),
            roles: vec![Role::Security],
            name: None,
            client_cert_sha256: None,
        },
        TokenConfig {
            token: ALL.into(),
            roles: vec![Role::Writer, Role::Reader, Role::Auditor, Role::Security],
            name: None,
            client_cert_sha256: None,
        },
    ]
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        tokens: tokens(),
        ..Config::default()
    };
    c.gateway.simulated = Scenario::quiet(11);
    c.keys.file = Some(shared_master_keys(dir));
    c
}

/// The master key file the nodes of one test share (beside their data directories, in the
/// test's own temporary directory), as every node of one ledger must (a replica, a promoted or
/// restored node). A data directory that is itself the test's temporary directory keeps its
/// own.
pub fn shared_master_keys(data_dir: &Path) -> PathBuf {
    let tmp = std::env::temp_dir();
    match data_dir.parent() {
        Some(p) if p != tmp && p.starts_with(&tmp) => p.join("master.keys"),
        _ => data_dir.join("master.keys"),
    }
}

/// The ledger, its alert monitor (unless the configuration turns it off) and the HTTP server.
pub struct TestServer {
    pub ledger: Ledger,
    pub node: Option<Node>,
    pub gateway: Arc<SimulatedGateway>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        Self::start_on(config, "127.0.0.1:0").await
    }

    /// The same, listening on `addr` (a shard's, which the shard map names before it starts).
    pub async fn start_on(config: Config, addr: &str) -> TestServer {
        let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
        let node = Node::start(&config, LedgerSecret::from_bytes([42; 32]), gateway.clone()).expect("open ledger");
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bindledger::adapters::http::serve(
            listener,
            node.state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            ledger: node.ledger.clone(),
            node: Some(node),
            gateway,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(self.addr, Some(token.to_owned()))
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.take().unwrap().await;
        self.node.take().unwrap().stop().await;
    }
}

/// Binds the wallet `phone(n)` to `account` through the library with its right password;
/// returns the binding id.
/// A ledger opened on a manual clock (its `record_time`, its windows) with `secret`, and its
/// simulated wallet provider: a window is crossed by moving the clock, not by sleeping.
#[allow(dead_code)] // not every test binary opens one
pub fn open_with_clock(
    config: &Config,
    secret: [u8; 32],
    clock: Arc<bindledger::ledger::clock::ManualClock>,
) -> (Ledger, Arc<SimulatedGateway>) {
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    let seams = bindledger::ledger::Seams {
        clock,
        ..Default::default()
    };
    let rules = bindledger::ledger::keys::alert_rules(config).unwrap();
    let ledger =
        Ledger::open_with_seams(config, &rules, LedgerSecret::from_bytes(secret), gateway.clone(), seams).unwrap();
    (ledger, gateway)
}

pub async fn bind_wallet(l: &Ledger, g: &SimulatedGateway, account: &str, n: u64) -> uuid::Uuid {
    let req = bindledger::domain::command::BindRequest {
        provider: "alipay".into(),
        wallet_account: bindledger::domain::secret::SecretString::new(phone(n)),
        payment_password: bindledger::domain::secret::SecretString::new(g.password_for(&alipay(), &phone(n))),
        factor: None,
        common: bindledger::domain::command::CommonInput::default(),
    };
    match &l
        .bind(req.validate(account, chrono::Utc::now()).unwrap())
        .await
        .unwrap()
        .event
        .payload
    {
        bindledger_events::Payload::WalletBound { binding_id, .. } => *binding_id,
        other => panic!("bind of {account} failed: {other:?}"),
    }
}

/// A phone number whose simulated wallet is active (quiet scenario: all are).
pub fn phone(n: u64) -> String {
    format!("139{:08}", n)
}

pub fn alipay() -> Provider {
    Provider::parse("alipay").unwrap()
}

/// The real binary, serving on a free port, with its stderr (logs) in a file.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bindledger"))
}

/// Starts `bindledger serve` on `data_dir` and waits for its "listening on" line.
pub fn spawn_server(data_dir: &Path, log_file: &Path, extra_env: &[(&str, &str)]) -> ServerProcess {
    spawn_server_at(data_dir, log_file, "127.0.0.1:0", extra_env)
}

/// The same, listening on `listen`.
pub fn spawn_server_at(data_dir: &Path, log_file: &Path, listen: &str, extra_env: &[(&str, &str)]) -> ServerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env("BINDLEDGER_TOKENS", format!("writer+reader+auditor+security:{ALL}"))
        .env("BINDLEDGER_KEYS_FILE", shared_master_keys(data_dir))
        .env_remove("BINDLEDGER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn bindledger serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .or_else(|| line.trim().strip_prefix("listening on https://"))
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!(
                "unexpected first line from the server: {line:?} (the end of {}: {tail:?})",
                log_file.display()
            )
        })
        .parse()
        .unwrap();
    ServerProcess { child, addr }
}

impl ServerProcess {
    /// SIGTERM: a graceful stop; waits for the process to exit and returns its status code.
    pub fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap().code()
    }

    /// Waits up to `within` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `bindledger` subcommand to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(binary()).args(args).output().expect("run bindledger");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- a real Kafka-compatible broker (tansu) for the tests that need one ----

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Where the tansu binary is: `TANSU`, then `~/.cargo/bin/tansu`, then `PATH`.
pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    match Command::new("tansu").arg("--version").output() {
        Ok(_) => PathBuf::from("tansu"),
        Err(_) => panic!(
            "this test needs the tansu Kafka broker and it is not installed: run `make test` (which installs it), \
             or `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql`, or set TANSU=/path/to/tansu"
        ),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub addr: String,
    /// For the sqlite engine: the directory holding tansu.db.
    dir: Option<PathBuf>,
}

impl Broker {
    /// A broker with in-memory storage on `port` that tells clients to reach it at
    /// `advertised` (a TLS proxy in front of it).
    pub fn start_behind(port: u16, advertised: u16) -> Broker {
        Self::start_with(port, advertised, None)
    }

    /// A broker with in-memory storage on a free port.
    pub fn start() -> Broker {
        Self::start_on(free_port(), None)
    }

    /// A broker on `port`; with `sqlite_dir`, its data survives restarts.
    pub fn start_on(port: u16, sqlite_dir: Option<&Path>) -> Broker {
        Self::start_with(port, port, sqlite_dir)
    }

    fn start_with(port: u16, advertised: u16, sqlite_dir: Option<&Path>) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let mut cmd = Command::new(tansu_binary());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
        ]);
        match sqlite_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).unwrap();
                cmd.arg("sqlite://tansu.db").current_dir(dir);
            }
            None => {
                cmd.arg("memory://tansu/");
            }
        }
        let log = std::env::temp_dir().join(format!("tansu-{port}.log"));
        let log = std::fs::File::create(log).unwrap();
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting tansu: {e}"));
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not start listening on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Broker {
            child: Some(child),
            port,
            addr,
            dir: sqlite_dir.map(Path::to_path_buf),
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap().success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, then start again on the same port (and storage directory).
    pub fn restart(&mut self) {
        self.thaw_quietly();
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        let again = Broker::start_on(self.port, self.dir.as_deref());
        *self = again;
    }

    fn thaw_quietly(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.thaw_quietly();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh topic name per test.
pub fn fresh_topic(name: &str) -> String {
    format!("bindledger.test.{name}.{}", uuid::Uuid::now_v7().simple())
}

/// One message as read back from the topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: std::collections::HashMap<String, String>,
}

/// Reads every message of every partition of `topic`: from the beginning until nothing new
/// arrives for two seconds (high watermarks are not trusted: tansu 0.6 reports the start of the
/// last record batch).
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let timeout = std::time::Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while last.elapsed() < std::time::Duration::from_secs(2) {
        assert!(std::time::Instant::now() < deadline, "reading {topic} did not finish");
        match consumer.poll(std::time::Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }
    out
}

/// A value from a Prometheus text page (first line starting with `name`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A seed for a test's random choices: `BINDLEDGER_TEST_SEED` when set (to replay a run),
/// else a new one from the clock; printed either way, with how to replay it.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("BINDLEDGER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (replay: BINDLEDGER_TEST_SEED={seed} cargo test {test})");
    seed
}

// ---- certificates for the TLS tests, made with the openssl command ----

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<ca>-ca.pem`, made on first use) and a certificate it signed (`<name>.pem`,
/// `<name>.key`) for 127.0.0.1 and localhost.
pub fn pki(dir: &Path, name: &str, ca: &str) {
    if !dir.join(format!("{ca}-ca.pem")).exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca} test CA"),
                "-keyout",
                &format!("{ca}-ca.key"),
                "-out",
                &format!("{ca}-ca.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

// ---- a cluster of shards in this process, for the tests that need one ----

/// Two shards on `ports` (`scheme`: http or https) with the shard map written to a fresh cluster
/// topic on `broker`, and each shard's configuration (`tag` names its topics); the caller adds
/// what it needs (TLS files, tokens) and starts them with [`TestServer::start_on`].
pub async fn two_shards(
    broker: &Broker,
    dir: &Path,
    ports: [u16; 2],
    scheme: &str,
    tag: &str,
) -> (bindledger::domain::shard::ShardMap, Vec<Config>) {
    use bindledger::domain::shard::{ShardEntry, ShardMap};
    let cluster_topic = fresh_topic(&format!("{tag}-cluster"));
    let map = ShardMap::even(
        (0..2)
            .map(|i| {
                (
                    format!("s{i}"),
                    ShardEntry {
                        url: format!("{scheme}://127.0.0.1:{}", ports[i]),
                        events_topic: fresh_topic(&format!("{tag}-s{i}-events")),
                        checkpoints_topic: fresh_topic(&format!("{tag}-s{i}-checkpoints")),
                    },
                )
            })
            .collect(),
    )
    .unwrap();
    let kafka = bindledger::config::KafkaConfig {
        brokers: broker.addr.clone(),
        ..Default::default()
    };
    bindledger::adapters::kafka::cluster::publish_map(&kafka, &cluster_topic, &map)
        .await
        .unwrap();
    let configs = (0..2)
        .map(|i| {
            let id = format!("s{i}");
            let mut config = test_config(&dir.join(&id));
            config.kafka.brokers = broker.addr.clone();
            config.kafka.topic = map.shards[&id].events_topic.clone();
            config.kafka.alerts_topic = fresh_topic(&format!("{tag}-alerts"));
            config.checkpoints.topic = map.shards[&id].checkpoints_topic.clone();
            config.cluster.shard = id;
            config.cluster.topic = cluster_topic.clone();
            config
                .tokens
                .extend(bindledger::config::parse_tokens("cluster:cluster-token-0123456789").unwrap());
            config
        })
        .collect();
    (map, configs)
}

/// A SoftHSM2 token in `dir`: its configuration file, with one initialised token.
pub fn softhsm(dir: &Path) -> std::path::PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bindledger",
            "--pin",
            "4321",
            "--so-pin",
            "87654321",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (Debian's softhsm2; `make test-tools` installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    conf
}

/// Debian's SoftHSM2 PKCS#11 library.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A bind of `account` that fails (a wrong payment password): with a rules file giving
/// `bind_failure_burst` a threshold of 1, each opens an alert.
pub async fn failed_bind(l: &Ledger, account: &str, n: u64) {
    let req = bindledger::domain::command::BindRequest {
        provider: "alipay".into(),
        wallet_account: bindledger::domain::secret::SecretString::new(phone(n)),
        payment_password: bindledger::domain::secret::SecretString::new("000000-wrong".into()),
        factor: None,
        common: bindledger::domain::command::CommonInput::default(),
    };
    let r = l
        .bind(req.validate(account, chrono::Utc::now()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.event.payload.event_type(), "bind_failed", "{account}");
}

/// `n` accounts `<prefix>-<i>` with one failed bind each, 64 at a time (group commit).
pub async fn failed_binds(l: &Ledger, prefix: &str, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let (l, account) = (l.clone(), format!("{prefix}-{i}"));
                let i = *i;
                tokio::spawn(async move { failed_bind(&l, &account, i).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// A rules file (in `dir`) on which one failed bind of an account opens an alert.
pub fn one_failed_bind_alerts(dir: &Path) -> PathBuf {
    let rules = dir.join("one-failed-bind.toml");
    std::fs::write(&rules, "[bind_failure_burst]\nthreshold = 1\n").unwrap();
    rules
}

/// What a webhook receiver got: when, the headers it checks, the body.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: std::time::Instant,
    pub delivery: String,
    /// `Bindledger-Event`.
    pub event: String,
    pub signature: String,
    pub body: Vec<u8>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<std::sync::Mutex<Vec<Received>>>,
    /// Requests still to answer 500.
    pub fail: Arc<std::sync::atomic::AtomicU32>,
}

/// A webhook receiver on a free port, and its URL.
pub async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                state.got.lock().unwrap().push(Received {
                    at: std::time::Instant::now(),
                    delivery: header("bindledger-delivery"),
                    event: header("bindledger-event"),
                    signature: header("bindledger-signature"),
                    body: body.to_vec(),
                });
                let failing = state
                    .fail
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok();
                if failing {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}
