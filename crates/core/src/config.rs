//! Configuration: a TOML file, overridden by `BINDLEDGER_*` environment variables, overridden
//! by command-line flags. Every field has a documented default, so `bindledger serve` starts on
//! an empty directory with no file at all.

use bindledger_events::Provider;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// What a bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Send commands (bind, pay, unbind).
    Writer,
    /// Read projections (bindings, payments, an account's history, wallet index).
    Reader,
    /// Read the global event feed (and alerts).
    Auditor,
    /// Read alerts and follow them live; lift binding locks.
    Security,
    /// A node of the same cluster: a request it forwards to the shard that owns the account
    /// acts as the caller it authenticated (header `Bindledger-On-Behalf-Of`); alone, the role
    /// allows nothing else.
    Cluster,
    /// Erase an account's personal data, and rotate the master key (the privacy officer).
    Privacy,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            "auditor" => Some(Role::Auditor),
            "security" => Some(Role::Security),
            "cluster" => Some(Role::Cluster),
            "privacy" => Some(Role::Privacy),
            _ => None,
        }
    }
}

/// Why an address cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("not IP:PORT or HOST:PORT with a host that resolves")]
    Unresolved,
    #[error("the host has no address")]
    NoAddress,
}

/// An address to listen on or connect to: `IP:PORT`, or `HOST:PORT` resolved now (the first
/// address the host has).
pub fn resolve_address(text: &str) -> Result<SocketAddr, AddressError> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or(AddressError::NoAddress),
        Err(_) => Err(AddressError::Unresolved),
    }
}

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_address(&text).map_err(|e| serde::de::Error::custom(format!("listen: {e}")))
}

/// When a command is answered (see [`Config::durability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    Local,
    Replicated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    pub roles: Vec<Role>,
    /// Who holds the token (`alice`, `fraud-desk`): shown in the console, and the name its
    /// actions are attributed to. Letters, digits, `.`, `_` and `-`, at most 64.
    #[serde(default)]
    pub name: Option<String>,
    /// The SHA-256 (64 hex) of a client certificate (mutual TLS, `http.tls.client_ca_file`)
    /// whose holder acts with this token's name and roles without sending the token.
    #[serde(default)]
    pub client_cert_sha256: Option<String>,
}

impl TokenConfig {
    /// The token's name, or `token-` and the first 8 hex digits of its SHA-256 (never the
    /// token itself).
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(self.token.as_bytes());
                format!("token-{}", hex::encode(&d[..4]))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the sled log, the secret file and the generated admin token.
    /// Default `bindledger-data`.
    pub data_dir: PathBuf,
    /// HTTP listen address: IP:PORT or HOST:PORT (resolved at start). Default `127.0.0.1:8080`.
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: SocketAddr,
    /// File holding the ledger secret (64 hex chars). Default `<data_dir>/secret.key`, created
    /// on first start. `BINDLEDGER_SECRET` gives the secret directly instead.
    pub secret_file: Option<PathBuf>,
    /// Active bindings an account may hold. Default 10.
    pub max_bindings_per_account: u32,
    /// When true the platform side is in maintenance: commands are recorded as
    /// `maintenance` failures with side `platform`. Default false.
    pub platform_maintenance: bool,
    /// How long idempotency keys are remembered, and where (see [`IdempotencyConfig`]).
    pub idempotency: IdempotencyConfig,
    /// A read replica following the events topic (see [`ReplicaConfig`]).
    pub replica: ReplicaConfig,
    /// One shard of a cluster (see [`ClusterConfig`]); off unless `cluster.shard` is set.
    pub cluster: ClusterConfig,
    /// How far in the past a caller's `event_time` may be, in seconds (the future is bounded
    /// at 300 s). Security rules never read `event_time`; this keeps business reports honest.
    /// Default 300.
    pub event_time_past_max_s: u64,
    /// `local` (default): a command is answered once its event is durable on this machine's
    /// disk. `replicated`: also once the Kafka cluster acknowledged it (`acks=all`); needs
    /// `kafka.brokers`.
    pub durability: Durability,
    /// Replicated mode: how long a command waits for the cluster's acknowledgement before it is
    /// answered `503 outcome_unknown`. Default 5000.
    pub replication_timeout_ms: u64,
    pub writer: WriterConfig,
    /// What the ledger keeps in memory (see [`MemoryConfig`]).
    pub memory: MemoryConfig,
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
    /// The Kafka relay (off unless `kafka.brokers` is set).
    pub kafka: KafkaConfig,
    /// The alert monitor.
    pub alerts: AlertsConfig,
    /// Signed checkpoints of the log's head.
    pub checkpoints: CheckpointsConfig,
    /// Signed webhooks for the security team (off unless `webhooks.url` is set).
    pub webhooks: WebhooksConfig,
    /// Bearer tokens. When none are configured, `serve` creates one with every role and writes
    /// it to `<data_dir>/admin.token`.
    pub tokens: Vec<TokenConfig>,
    /// The master keys that wrap each account's data key (see [`KeysConfig`]).
    pub keys: KeysConfig,
}

/// Where the master keys live: `file` (development: one file, mode 0600) or `pkcs11` (a
/// hardware security module, or SoftHSM2, through its PKCS#11 library).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// `file` (the default) or `pkcs11`. Env `BINDLEDGER_KEYS_STORE`.
    pub store: String,
    /// The file store's file. Default `<data_dir>/master.keys`, created on first start; every
    /// node of a ledger (replicas, a promoted or restored node) needs the same file. Env
    /// `BINDLEDGER_KEYS_FILE`.
    pub file: Option<PathBuf>,
    /// The PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label.
    pub pkcs11_token: String,
    /// A file holding the token's user PIN (env `BINDLEDGER_PKCS11_PIN` gives the PIN itself).
    pub pkcs11_pin_file: Option<PathBuf>,
    /// The master keys' label prefix on the token. Default `bindledger-master`.
    pub pkcs11_label: String,
    /// Data keys held in the clear in memory, at most. Default 100,000.
    pub cached: usize,
    /// Seal the personal fields of new events (default true). False writes them in the clear,
    /// as before version 8, and makes erasure unable to reach them: only for a benchmark's
    /// baseline (`bindledger bench`) or a development ledger.
    pub seal: bool,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            store: "file".into(),
            file: None,
            pkcs11_module: None,
            pkcs11_token: String::new(),
            pkcs11_pin_file: None,
            pkcs11_label: "bindledger-master".into(),
            cached: 100_000,
            seal: true,
        }
    }
}

/// One shard of a cluster: the node owns the accounts whose slots the shard map (on the cluster
/// topic, `kafka.brokers`) gives `shard`, and takes no command for another's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's shard id, as the map names it. Empty (the default): a ledger alone, owning
    /// every account. Env `BINDLEDGER_CLUSTER_SHARD`.
    pub shard: String,
    /// The topic holding the shard map's versions. Default `bindledger.cluster`.
    pub topic: String,
    /// A request for another shard's account is forwarded to the owner, one hop, and answered
    /// with its answer (default true); false: it is answered `421 misdirected`, naming the
    /// owner. Either way a request forwarded once is never forwarded again.
    pub forward: bool,
    /// How long a forwarded request may take, in milliseconds. Default 30,000.
    pub forward_timeout_ms: u64,
    /// The CA (PEM) the other shards' `https://` URLs are verified against, when the cluster
    /// has its own; unset: the usual public roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            shard: String::new(),
            topic: "bindledger.cluster".into(),
            forward: true,
            forward_timeout_ms: 30_000,
            ca_file: None,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.shard.is_empty()
    }
}

/// A read replica (see [`crate::adapters::kafka::replica`]): it follows the events topic (`kafka.brokers`,
/// `kafka.topic`) into its own log, serves every read, and answers commands `421 not_primary`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaConfig {
    /// Run as a replica. Default false (`serve --replica` sets it).
    pub enabled: bool,
    /// The primary's URL, named in `not_primary` answers so that clients know where to go.
    pub primary_url: String,
}

/// Idempotency keys (see [`crate::ledger::idempotency`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long a key is remembered, in the ledger's `record_time`, whatever the throughput:
    /// a number and a unit (`s`, `m`, `h`, `d`). Default `24h`. A retry after the window is a
    /// new command (a payment of an order already paid is still refused: `order_already_paid`).
    pub window: String,
    /// `disk` (default): the keys live in `<data_dir>/idempotency.keys`, memory holds only the
    /// keys not yet written there. `memory`: the keys of the last `memory_keys` events, in
    /// memory only (the former behaviour; the window holds only while they fit).
    pub index: IndexKind,
    /// `index = "memory"` only. Default 1,000,000.
    pub memory_keys: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            window: "24h".into(),
            index: IndexKind::Disk,
            memory_keys: 1_000_000,
        }
    }
}

impl IdempotencyConfig {
    pub fn window(&self) -> Result<chrono::Duration, Error> {
        match crate::domain::alerts::rules::Span::parse(&self.window) {
            Ok(s) if s.micros() > 0 => Ok(s.duration()),
            _ => Err(Error::config(
                "idempotency.window must be a positive duration such as 24h, 90m or 7d",
            )),
        }
    }
}

/// Signed checkpoints (see [`crate::ledger::checkpoint`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointsConfig {
    /// Sign checkpoints. Default true.
    pub enabled: bool,
    /// A checkpoint at least every this many events. Default 10,000.
    pub every_events: u64,
    /// ...or every this many seconds when there are new events. Default 60.
    pub every_seconds: u64,
    /// The Ed25519 signing key (64 hex characters). Default `<data_dir>/checkpoint.key`,
    /// created (mode 0600) on first start. Env `BINDLEDGER_CHECKPOINT_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// The Kafka topic checkpoints go to (when `kafka.brokers` is set). Default
    /// `bindledger.checkpoints`.
    pub topic: String,
}

impl Default for CheckpointsConfig {
    fn default() -> Self {
        CheckpointsConfig {
            enabled: true,
            every_events: 10_000,
            every_seconds: 60,
            key_file: None,
            topic: "bindledger.checkpoints".into(),
        }
    }
}

/// Signed webhooks: each alert that opens at `severity_min` or above is POSTed to `url` as
/// JSON, signed with HMAC-SHA256 (`Bindledger-Signature: t=<unix seconds>,v1=<hex>` over
/// `<t>.<body>`), retried with exponential backoff, every attempt kept in a delivery log
/// (`GET /v1/webhooks/deliveries`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where to POST (`http://` or `https://`). Empty (the default): no webhooks. Env
    /// `BINDLEDGER_WEBHOOK_URL`.
    pub url: String,
    /// The signing secret: the file's text (trimmed) is the HMAC key. Default
    /// `<data_dir>/webhook.secret`, created (64 hex characters, mode 0600) on first start. Env
    /// `BINDLEDGER_WEBHOOK_SECRET_FILE`.
    pub secret_file: Option<PathBuf>,
    /// The least severity sent: `low`, `medium`, `high` (the default) or `critical`.
    pub severity_min: String,
    /// Attempts per alert before it is given up (logged, and kept in the delivery log).
    /// Default 8.
    pub attempts_max: u32,
    /// The wait after the first failed attempt, doubled after each. Default 1,000 ms.
    pub backoff_ms: u64,
    /// The longest wait between attempts. Default 60,000 ms.
    pub backoff_ms_max: u64,
    /// An attempt without an answer by then fails. Default 5,000 ms.
    pub timeout_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            secret_file: None,
            severity_min: "high".into(),
            attempts_max: 8,
            backoff_ms: 1_000,
            backoff_ms_max: 60_000,
            timeout_ms: 5_000,
        }
    }
}

impl WebhooksConfig {
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The least severity sent (checked by [`Config::validate`]).
    pub fn severity(&self) -> crate::domain::alerts::Severity {
        crate::domain::alerts::Severity::parse(&self.severity_min).unwrap_or(crate::domain::alerts::Severity::High)
    }
}

/// The alert monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Run the monitor (rules over every event, alerts stored, `/v1/alerts`). Default true.
    pub enabled: bool,
    /// The rules file (TOML; the README lists every key and its default). Default: none, the
    /// built-in defaults. Env `BINDLEDGER_ALERT_RULES`.
    pub rules_file: Option<PathBuf>,
    /// Events between two checkpoints of the monitor's state. Default 100,000.
    pub checkpoint_every_events: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            rules_file: None,
            checkpoint_every_events: 100_000,
        }
    }
}

/// What the ledger keeps in memory. Accounts not held are read from their stored rows on
/// their next command or read, with the same answer (see `bindledger_core::accounts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Accounts held in memory by the writer's state and, as many again, by the read model,
    /// beyond those changed since the last snapshot (at most about
    /// `writer.snapshot_every_events`), which stay until it is written. Default 100,000 (each
    /// account with one or two bindings takes about 1 KB in each).
    pub accounts_cached: usize,
    /// Keys (accounts, wallet fingerprints) whose alert rule windows the monitor holds in
    /// memory, beyond those changed since its last checkpoint (it checkpoints early when half
    /// this many changed); the others are read from their stored rows when an event needs
    /// them, with the same alerts. Default 100,000 (a key takes about 0.5 KB).
    pub alert_keys_cached: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            accounts_cached: 100_000,
            alert_keys_cached: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Commands waiting for the writer; beyond this callers get `overloaded`. Default 16384.
    pub queue_capacity: usize,
    /// Commands the writer decides and applies to sled together. Default 128: one stored chunk,
    /// written with one atomic `insert` (a larger batch needs sled's costlier `apply_batch`). The
    /// flusher makes every batch applied while it was flushing durable with its next flush.
    pub batch_max: usize,
    /// Events between two projection snapshots (a restart folds at most about this many).
    /// Default 50,000.
    pub snapshot_every_events: u64,
    /// How long a flush waits for more events while the ledger is busy (group-commit delay).
    /// Each flush costs sled a log write and wakes its I/O threads, so under load fewer, larger
    /// flushes leave more CPU for commands. 0 turns it off. Default 2000 µs.
    pub commit_delay_us: u64,
    /// A flush that already has this many events ready does not wait. Default 64.
    pub commit_batch: usize,
    /// The flusher waits only right after a flush that carried at least this many events: a
    /// lone command on a quiet ledger is never held back. Default 16.
    pub commit_busy_events: usize,
    /// After each flush, `fdatasync` the log's files, so that an acknowledged command survives
    /// a power cut or a kernel crash, not only a crash of the process. Default true; false
    /// only where the storage is made durable some other way (or to measure the sync's cost).
    pub sync_data: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Gateway calls in flight at once; beyond this callers get `overloaded`. Default 8192.
    pub concurrency_max: usize,
    /// A call that takes longer is recorded as a `network` failure. Default 3000 ms.
    pub timeout_ms: u64,
    /// The simulated gateway's scenario (the built-in gateway).
    pub simulated: Scenario,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body. Default 16384 bytes.
    pub body_limit_bytes: usize,
    /// Most events one feed request may return. Default 1,000,000.
    pub feed_limit_max: u64,
    /// Most items one page of a list may hold. Default 1000.
    pub page_limit_max: usize,
    /// Requests in flight at once; beyond it, `503 overloaded`. `/healthz` and `/metrics`
    /// are not counted, so they answer whatever the load. Default 4096.
    pub connections_max: usize,
    /// Open connections from one peer address; more are closed at once. Generous by default,
    /// since a ledger behind a load balancer or a service mesh sees few peers. Default 4096.
    pub connections_per_peer_max: usize,
    /// A request's headers must arrive within this time, counted from the moment the server
    /// waits for them (a new connection, or the end of the previous answer); otherwise the
    /// connection is closed. So an idle connection is closed after it too. Default 5000 ms.
    pub header_timeout_ms: u64,
    /// A command's body must arrive within this time after its headers; otherwise `408`.
    /// Default 5000 ms.
    pub body_timeout_ms: u64,
    /// A read with `?min_seq=N` waits until this node holds event N (read-your-writes on a
    /// replica), at most this long, then answers `503 not_caught_up`. Default 5000.
    pub min_seq_wait_ms: u64,
    /// Mark the console's session cookie `Secure` (sent over HTTPS only). Default false, since
    /// the ledger itself serves plain HTTP; set it when a TLS proxy is in front.
    pub console_secure_cookie: bool,
    /// The URL clients reach this node at (`http://host:port`). A promotion writes it in its
    /// fences, so that a primary it fenced names its successor in its `421 not_primary`
    /// answers. Default empty (the fences then name no URL).
    pub advertised_url: String,
    /// TLS on the API and the console (off unless `http.tls.cert_file` is set).
    pub tls: TlsConfig,
}

/// TLS on the HTTP API and the console (rustls). The certificate and key are read again on
/// `SIGHUP` and when either file changes; connections already open keep theirs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, its own certificate first. Env
    /// `BINDLEDGER_HTTP_TLS_CERT_FILE`.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1). Env `BINDLEDGER_HTTP_TLS_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// Client certificates (mutual TLS, for service callers): the CA, PEM, they must chain to.
    /// A verified client certificate whose SHA-256 a token lists (`client_cert_sha256`) acts
    /// with that token's name and roles. Unset: no client certificate is asked for.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `optional` (default; a client may present one) or `required` (a
    /// client without one is refused in the handshake).
    pub client_auth: ClientAuth,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// Whether a client certificate is required (see [`TlsConfig::client_auth`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

impl HttpConfig {
    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_timeout_ms)
    }
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("bindledger-data"),
            listen: "127.0.0.1:8080".parse().expect("valid"),
            secret_file: None,
            max_bindings_per_account: 10,
            platform_maintenance: false,
            idempotency: IdempotencyConfig::default(),
            replica: ReplicaConfig::default(),
            cluster: ClusterConfig::default(),
            event_time_past_max_s: 300,
            durability: Durability::Local,
            replication_timeout_ms: 5000,
            writer: WriterConfig::default(),
            memory: MemoryConfig::default(),
            gateway: GatewayConfig::default(),
            http: HttpConfig::default(),
            kafka: KafkaConfig::default(),
            alerts: AlertsConfig::default(),
            checkpoints: CheckpointsConfig::default(),
            webhooks: WebhooksConfig::default(),
            tokens: Vec::new(),
            keys: KeysConfig::default(),
        }
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_capacity: 16384,
            batch_max: 128, // the store's chunk (`CHUNK_EVENTS_MAX`, a test holds them equal)
            snapshot_every_events: 50_000,
            commit_delay_us: 2000,
            commit_batch: 64,
            commit_busy_events: 16,
            sync_data: true,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            concurrency_max: 8192,
            timeout_ms: 3000,
            simulated: Scenario::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit_bytes: 16384,
            feed_limit_max: 1_000_000,
            page_limit_max: 1000,
            connections_max: 4096,
            connections_per_peer_max: 4096,
            header_timeout_ms: 5000,
            body_timeout_ms: 5000,
            min_seq_wait_ms: 5000,
            console_secure_cookie: false,
            advertised_url: String::new(),
            tls: TlsConfig::default(),
        }
    }
}

/// The keys the environment can set besides those [`Config::apply_env`] reads, each as
/// `BINDLEDGER_` + its path in capitals with `_` for `.` (see [`Config::from_toml_and_env`]).
pub const ENV_KEYS: &[&str] = &[
    "durability",
    "replication_timeout_ms",
    "max_bindings_per_account",
    "platform_maintenance",
    "event_time_past_max_s",
    "idempotency.window",
    "writer.queue_capacity",
    "writer.batch_max",
    "writer.snapshot_every_events",
    "writer.commit_delay_us",
    "writer.commit_batch",
    "writer.commit_busy_events",
    "writer.sync_data",
    "memory.accounts_cached",
    "memory.alert_keys_cached",
    "gateway.concurrency_max",
    "gateway.timeout_ms",
    "http.body_limit_bytes",
    "http.feed_limit_max",
    "http.page_limit_max",
    "http.connections_max",
    "http.connections_per_peer_max",
    "http.header_timeout_ms",
    "http.body_timeout_ms",
    "http.min_seq_wait_ms",
    "http.advertised_url",
    "http.console_secure_cookie",
    "http.tls.cert_file",
    "http.tls.key_file",
    "http.tls.client_ca_file",
    "http.tls.client_auth",
    "cluster.shard",
    "cluster.topic",
    "cluster.forward",
    "cluster.forward_timeout_ms",
    "cluster.ca_file",
    "alerts.enabled",
    "alerts.checkpoint_every_events",
    "checkpoints.every_events",
    "checkpoints.every_seconds",
];

/// `BINDLEDGER_HTTP_CONNECTIONS_MAX` for `http.connections_max`.
pub fn env_name(key: &str) -> String {
    format!("BINDLEDGER_{}", key.replace('.', "_").to_ascii_uppercase())
}

impl Config {
    /// Reads a TOML file (if given) and applies the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, Error> {
        let get = |k: &str| std::env::var(k).ok();
        let text = match file {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| Error::config_by(format!("reading {}", path.display()), e))?
            }
            None => String::new(),
        };
        let mut config = Self::from_toml_and_env(&text, get).map_err(|e| match (e, file) {
            (Error::Config { what, cause }, Some(path)) => Error::Config {
                what: format!("{}: {what}", path.display()),
                cause,
            },
            (other, _) => other,
        })?;
        config.apply_env(get)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Config, Error> {
        toml::from_str(text).map_err(|e| Error::config_by("the TOML does not read", e))
    }

    /// The TOML text with every key of [`ENV_KEYS`] that the environment sets put over it:
    /// `BINDLEDGER_` and the key's path in capitals, `.` as `_` (`http.connections_max` is
    /// `BINDLEDGER_HTTP_CONNECTIONS_MAX`). A value is read as TOML (a number, `true`) when it
    /// is one, else as a string (`replicated`).
    pub fn from_toml_and_env(text: &str, get: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::config_by("the TOML does not read", e))?;
        let mut set = Vec::new();
        for key in ENV_KEYS {
            let name = env_name(key);
            let Some(raw) = get(&name) else { continue };
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            let mut at = &mut table;
            let mut parts: Vec<&str> = key.split('.').collect();
            let last = parts.pop().expect("a key has a name");
            for part in parts {
                at = at
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .ok_or_else(|| Error::config(format!("{part} is not a section")))?;
            }
            at.insert(last.to_owned(), value);
            set.push(name);
        }
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            let from = if set.is_empty() {
                String::new()
            } else {
                format!(" (the environment sets {})", set.join(", "))
            };
            Error::config(format!("{}{from}", e.message()))
        })
    }

    /// `BINDLEDGER_DATA_DIR`, `BINDLEDGER_LISTEN`, `BINDLEDGER_SECRET_FILE`,
    /// `BINDLEDGER_KAFKA_BROKERS`, `BINDLEDGER_KAFKA_TOPIC`, `BINDLEDGER_TOKENS`
    /// (`role+role:token,...`).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        if let Some(v) = get("BINDLEDGER_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("BINDLEDGER_LISTEN") {
            self.listen = resolve_address(&v).map_err(|e| Error::config_by("BINDLEDGER_LISTEN", e))?;
        }
        if let Some(v) = get("BINDLEDGER_KEYS_STORE") {
            self.keys.store = v;
        }
        if let Some(v) = get("BINDLEDGER_KEYS_FILE") {
            self.keys.file = Some(v.into());
        }
        if let Some(v) = get("BINDLEDGER_SECRET_FILE") {
            self.secret_file = Some(v.into());
        }
        if let Some(v) = get("BINDLEDGER_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = get("BINDLEDGER_KAFKA_TOPIC") {
            self.kafka.topic = v;
        }
        if let Some(v) = get("BINDLEDGER_KAFKA_ALERTS_TOPIC") {
            self.kafka.alerts_topic = v;
        }
        if let Some(v) = get("BINDLEDGER_KAFKA_NOTIFICATIONS_TOPIC") {
            self.kafka.notifications_topic = v;
        }
        if let Some(v) = get("BINDLEDGER_WEBHOOK_URL") {
            self.webhooks.url = v;
        }
        if let Some(v) = get("BINDLEDGER_WEBHOOK_SECRET_FILE") {
            self.webhooks.secret_file = Some(v.into());
        }
        if let Some(v) = get("BINDLEDGER_ALERT_RULES") {
            self.alerts.rules_file = Some(v.into());
        }
        if let Some(v) = get("BINDLEDGER_CHECKPOINT_KEY_FILE") {
            self.checkpoints.key_file = Some(v.into());
        }
        if let Some(v) = get("BINDLEDGER_TOKENS") {
            self.tokens = parse_tokens(&v)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::config(m.to_owned()));
        if self.writer.queue_capacity == 0 || self.writer.batch_max == 0 {
            return bad("writer.queue_capacity and writer.batch_max must be at least 1");
        }
        if self.writer.batch_max > 65536 {
            return bad("writer.batch_max must be at most 65536");
        }
        if self.writer.commit_delay_us > 100_000 {
            return bad("writer.commit_delay_us must be at most 100000 (0.1 s)");
        }
        if self.writer.commit_batch == 0 || self.writer.commit_busy_events == 0 {
            return bad("writer.commit_batch and writer.commit_busy_events must be at least 1");
        }
        if self.gateway.concurrency_max == 0
            || self.http.connections_max == 0
            || self.http.connections_per_peer_max == 0
        {
            return bad(
                "gateway.concurrency_max, http.connections_max and http.connections_per_peer_max must be at least 1",
            );
        }
        if !(1..=600_000).contains(&self.http.header_timeout_ms) || !(1..=600_000).contains(&self.http.body_timeout_ms)
        {
            return bad("http.header_timeout_ms and http.body_timeout_ms must be from 1 to 600000 (10 minutes)");
        }
        if self.writer.snapshot_every_events == 0 {
            return bad("writer.snapshot_every_events must be at least 1");
        }
        if self.memory.accounts_cached == 0 {
            return bad("memory.accounts_cached must be at least 1");
        }
        if self.memory.alert_keys_cached == 0 {
            return bad("memory.alert_keys_cached must be at least 1");
        }
        self.idempotency.window()?;
        if self.idempotency.memory_keys == 0 {
            return bad("idempotency.memory_keys must be at least 1");
        }
        if self.checkpoints.every_events == 0
            || self.checkpoints.every_seconds == 0
            || self.checkpoints.topic.is_empty()
        {
            return bad("checkpoints.every_events and checkpoints.every_seconds must be at least 1, and checkpoints.topic not empty");
        }
        if self.alerts.checkpoint_every_events == 0 {
            return bad("alerts.checkpoint_every_events must be at least 1");
        }
        if self.max_bindings_per_account == 0 {
            return bad("max_bindings_per_account must be at least 1");
        }
        let tls = &self.http.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return bad("http.tls.cert_file and http.tls.key_file go together");
        }
        if tls.client_ca_file.is_some() && !tls.enabled() {
            return bad(
                "http.tls.client_ca_file needs http.tls.cert_file and key_file: client certificates come with TLS",
            );
        }
        for t in &self.tokens {
            if let Some(fp) = &t.client_cert_sha256 {
                if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return bad(
                        "a token's client_cert_sha256 is 64 hex characters (the SHA-256 of the certificate's DER)",
                    );
                }
            }
        }
        if self.cluster.enabled() {
            if !bindledger_domain::shard::valid_shard_id(&self.cluster.shard) {
                return bad("cluster.shard must be 1 to 32 characters of a-z, 0-9 and '-'");
            }
            if !self.kafka.enabled() || self.cluster.topic.is_empty() {
                return bad(
                    "a shard follows the shard map on the cluster topic: it needs kafka.brokers and cluster.topic",
                );
            }
            if self.cluster.forward_timeout_ms == 0 {
                return bad("cluster.forward_timeout_ms must be at least 1");
            }
        }
        if self.replica.enabled && !self.kafka.enabled() {
            return bad("a replica follows the events topic: it needs kafka.brokers");
        }
        if self.durability == Durability::Replicated && !self.kafka.enabled() {
            return bad("durability = \"replicated\" needs kafka.brokers: the Kafka cluster is the replication");
        }
        if self.replication_timeout_ms == 0 {
            return bad("replication_timeout_ms must be at least 1");
        }
        let k = &self.kafka;
        if k.partitions < 1
            || k.replication_factor < 1
            || k.inflight_events_max == 0
            || k.topic.is_empty()
            || k.alerts_topic.is_empty()
        {
            return bad(
                "kafka: partitions, replication_factor and inflight_events_max must be at least 1, and topic not empty",
            );
        }
        let w = &self.webhooks;
        if w.enabled() {
            let url = w.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<url::Url>().is_err() {
                return bad("webhooks.url must be an http:// or https:// URL");
            }
            if !self.alerts.enabled {
                return bad("webhooks send alerts: they need alerts.enabled = true");
            }
        }
        if crate::domain::alerts::Severity::parse(&w.severity_min).is_none() {
            return bad("webhooks.severity_min must be one of low, medium, high, critical");
        }
        if w.attempts_max == 0
            || w.backoff_ms == 0
            || w.backoff_ms_max < w.backoff_ms
            || !(1..=600_000).contains(&w.timeout_ms)
        {
            return bad("webhooks: attempts_max and backoff_ms must be at least 1, backoff_ms_max at least backoff_ms, timeout_ms from 1 to 600000");
        }
        for t in &self.tokens {
            if t.token.len() < 16 {
                return bad("every token must be at least 16 characters long");
            }
            if t.roles.is_empty() {
                return bad("every token needs at least one role");
            }
            if t.name
                .as_deref()
                .is_some_and(|n| !crate::domain::command::valid_name(n))
            {
                return bad("a token's name is letters, digits, '.', '_' and '-', at most 64");
            }
        }
        let mut names: Vec<&str> = self.tokens.iter().filter_map(|t| t.name.as_deref()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("two tokens have one name: names say who acted, so each is one holder's");
        }
        self.gateway.simulated.validate()
    }

    pub fn master_keys_path(&self) -> PathBuf {
        self.keys
            .file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.keys"))
    }

    pub fn webhook_secret_path(&self) -> PathBuf {
        self.webhooks
            .secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("webhook.secret"))
    }

    pub fn checkpoint_key_path(&self) -> PathBuf {
        self.checkpoints
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("checkpoint.key"))
    }

    pub fn secret_path(&self) -> PathBuf {
        self.secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }
}

/// Parses `writer:tok1,reader+auditor:tok2`.
pub fn parse_tokens(s: &str) -> Result<Vec<TokenConfig>, Error> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (head, token) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| Error::config("BINDLEDGER_TOKENS entries look like [name@]role+role:token"))?;
            let (name, roles) = match head.split_once('@') {
                Some((name, roles)) => (Some(name.to_owned()), roles),
                None => (None, head),
            };
            let roles = roles
                .split('+')
                .map(|r| {
                    Role::parse(r).ok_or_else(|| {
                        Error::config(format!(
                            "unknown role {r:?} (writer, reader, auditor, security, cluster)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TokenConfig {
                token: token.to_owned(),
                roles,
                name,
                client_cert_sha256: None,
            })
        })
        .collect()
}

/// How the flusher gathers more events into one flush while the ledger is busy: after a flush
/// that carried at least `busy_events` events, a flush with fewer than `batch` events ready
/// first waits `delay` and takes what the writer decided meanwhile. A quiet ledger (a lone
/// command) never waits; a busy one trades `delay` of latency for fewer flushes and fewer,
/// larger writer batches, each flush costing sled a log write and a round of wake-ups of its
/// I/O threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitDelay {
    pub delay: std::time::Duration,
    pub batch: usize,
    pub busy_events: usize,
}

impl WriterConfig {
    /// The flusher's group-commit delay, or `None` when it is off.
    pub fn commit_delay(&self) -> Option<CommitDelay> {
        (self.commit_delay_us > 0).then(|| CommitDelay {
            delay: std::time::Duration::from_micros(self.commit_delay_us),
            batch: self.commit_batch,
            busy_events: self.commit_busy_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_env_keys_is_set_by_its_environment_variable_over_the_file() {
        let env = |k: &str| match k {
            "BINDLEDGER_DURABILITY" => Some("replicated".to_owned()),
            "BINDLEDGER_HTTP_CONNECTIONS_MAX" => Some("64".to_owned()),
            "BINDLEDGER_WRITER_SYNC_DATA" => Some("false".to_owned()),
            "BINDLEDGER_IDEMPOTENCY_WINDOW" => Some("2h".to_owned()),
            _ => None,
        };
        let c = Config::from_toml_and_env("[http]\nconnections_max = 8\nbody_timeout_ms = 700\n", env).unwrap();
        assert_eq!(c.durability, Durability::Replicated);
        assert_eq!(c.http.connections_max, 64, "the environment over the file");
        assert_eq!(c.http.body_timeout_ms, 700, "the file's other keys stay");
        assert!(!c.writer.sync_data);
        assert_eq!(c.idempotency.window, "2h");
        // Each name is the path in capitals; a bad value names the variables that were set.
        assert_eq!(env_name("writer.queue_capacity"), "BINDLEDGER_WRITER_QUEUE_CAPACITY");
        let bad = |k: &str| (k == "BINDLEDGER_GATEWAY_TIMEOUT_MS").then(|| "soon".to_owned());
        let e = Config::from_toml_and_env("", bad).unwrap_err().to_string();
        assert!(e.contains("BINDLEDGER_GATEWAY_TIMEOUT_MS"), "{e}");
        // Every key of the list is a key of the configuration.
        for key in ENV_KEYS {
            let one = |k: &str| (k == env_name(key)).then(|| "1".to_owned());
            let e = Config::from_toml_and_env("", one)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains("unknown field"), "{key}: {e}");
        }
    }

    #[test]
    fn defaults_apply_and_env_overrides_file() {
        let c = Config::from_toml("data_dir = \"/tmp/x\"\n[writer]\nbatch_max = 64\n").unwrap();
        assert_eq!(c.writer.batch_max, 64);
        assert_eq!(c.writer.queue_capacity, 16384);
        let mut c = c;
        c.apply_env(|k| match k {
            "BINDLEDGER_DATA_DIR" => Some("/tmp/y".into()),
            "BINDLEDGER_TOKENS" => Some("writer+reader:0123456789abcdef0,auditor:fedcba98765432100".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(c.tokens[0].roles, vec![Role::Writer, Role::Reader]);
        c.validate().unwrap();
    }

    #[test]
    fn bad_config_is_refused_with_the_reason() {
        let e = crate::error::chain(&Config::from_toml("data_dri = 1").unwrap_err());
        assert!(e.contains("data_dri"), "{e}");
        let c = Config::from_toml("[writer]\nbatch_max = 0").unwrap();
        assert!(c.validate().is_err());
        assert!(parse_tokens("root:abc").is_err());
        let named = parse_tokens("alice@security+reader:0123456789abcdef").unwrap();
        assert_eq!(named[0].name.as_deref(), Some("alice"));
        assert_eq!(named[0].roles, vec![Role::Security, Role::Reader]);
        assert!(parse_tokens("reader:0123456789abcdef").unwrap()[0]
            .display_name()
            .starts_with("token-"));
        let mut c = Config {
            tokens: parse_tokens("a b@reader:0123456789abcdef").unwrap(),
            ..Config::default()
        };
        assert!(c.validate().is_err(), "a name with a space");
        c.tokens = parse_tokens("bob@reader:0123456789abcdef,bob@writer:fedcba9876543210").unwrap();
        assert!(c.validate().is_err(), "one name for two tokens");
    }

    #[test]
    fn the_commit_delay_is_configured_checked_and_turned_off_by_zero() {
        let on =
            Config::from_toml("[writer]\ncommit_delay_us = 500\ncommit_batch = 32\ncommit_busy_events = 4").unwrap();
        on.validate().unwrap();
        let expected = CommitDelay {
            delay: std::time::Duration::from_micros(500),
            batch: 32,
            busy_events: 4,
        };
        assert_eq!(on.writer.commit_delay(), Some(expected));
        let off = Config::from_toml("[writer]\ncommit_delay_us = 0").unwrap();
        off.validate().unwrap();
        assert_eq!(off.writer.commit_delay(), None);
        for bad in ["commit_delay_us = 100001", "commit_batch = 0", "commit_busy_events = 0"] {
            let e = Config::from_toml(&format!("[writer]\n{bad}"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }
}

/// A maintenance window of one provider, in event time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub provider: String,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// The simulated providers' world.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Everything about a wallet derives from this seed and the wallet. Default 1.
    pub seed: u64,
    /// Wallets frozen by their provider, per thousand. Default 20.
    pub frozen_per_mille: u32,
    /// Wallets closed (deregistered), per thousand. Default 10.
    pub closed_per_mille: u32,
    /// Wallet accounts the provider does not know (typos), per thousand. Default 10.
    pub unknown_per_mille: u32,
    /// Calls that fail with a network error, per thousand. Default 5.
    pub network_error_per_mille: u32,
    /// Starting balance range of a wallet, minor units. Default 100.00 to 50,000.00.
    pub balance_minor_min: i64,
    pub balance_minor_max: i64,
    /// Providers under maintenance, by event time.
    pub maintenance: Vec<MaintenanceWindow>,
    /// Simulated round-trip time of each call. Default 0.
    pub latency_ms: u64,
    /// Up to this much more for each call, from the seed and the call. Default 0.
    pub latency_jitter_ms: u64,
    /// Calls that hang for `slow_ms` instead, per thousand (past `gateway.timeout_ms`, the
    /// ledger gives up and records a `network` failure). Default 0.
    pub slow_per_mille: u32,
    /// How long a slow call takes. Default 10,000.
    pub slow_ms: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 1,
            frozen_per_mille: 20,
            closed_per_mille: 10,
            unknown_per_mille: 10,
            network_error_per_mille: 5,
            balance_minor_min: 10_000,    // 100.00
            balance_minor_max: 5_000_000, // 50,000.00
            maintenance: Vec::new(),
            latency_ms: 0,
            latency_jitter_ms: 0,
            slow_per_mille: 0,
            slow_ms: 10_000,
        }
    }
}

impl Scenario {
    /// A world where nothing goes wrong unless a test asks for it.
    pub fn quiet(seed: u64) -> Scenario {
        Scenario {
            seed,
            frozen_per_mille: 0,
            closed_per_mille: 0,
            unknown_per_mille: 0,
            network_error_per_mille: 0,
            ..Scenario::default()
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let total = self.frozen_per_mille + self.closed_per_mille + self.unknown_per_mille;
        if total > 1000 || self.network_error_per_mille > 1000 || self.slow_per_mille > 1000 {
            return Err(Error::config(
                "gateway.simulated: per-mille rates must add up to at most 1000",
            ));
        }
        if self.balance_minor_min < 0 || self.balance_minor_max < self.balance_minor_min {
            return Err(Error::config(
                "gateway.simulated: need 0 <= balance_minor_min <= balance_minor_max",
            ));
        }
        for w in &self.maintenance {
            Provider::parse(&w.provider).map_err(|e| Error::config_by("gateway.simulated.maintenance", e))?;
            if w.until <= w.from {
                return Err(Error::config(
                    "gateway.simulated.maintenance: `until` must be after `from`",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `127.0.0.1:9092`. Empty (the default): no relay.
    /// Env `BINDLEDGER_KAFKA_BROKERS`.
    pub brokers: String,
    /// The events topic. Default `bindledger.events`. Env `BINDLEDGER_KAFKA_TOPIC`.
    pub topic: String,
    /// The alerts topic (one partition, so alerts keep their order). Default
    /// `bindledger.alerts`. Env `BINDLEDGER_KAFKA_ALERTS_TOPIC`.
    pub alerts_topic: String,
    /// The notifications topic: what the account holder is told (a wallet bound, a binding
    /// locked or unlocked, a high-severity alert), keyed by account, in Chinese and English.
    /// Default `bindledger.notifications`; empty: none are published. Env
    /// `BINDLEDGER_KAFKA_NOTIFICATIONS_TOPIC`.
    pub notifications_topic: String,
    /// Partitions when the relay creates the topic. Default 6.
    pub partitions: i32,
    /// Replication factor when the relay creates the topic. Default 1.
    pub replication_factor: i32,
    /// Events sent before waiting for their acknowledgements. Default 20,000.
    pub inflight_events_max: usize,
    /// librdkafka `message.timeout.ms`: a message not acknowledged by then fails and the relay
    /// recovers. Default 30,000.
    pub message_timeout_ms: u64,
    /// Longest wait between two attempts while the broker is away. Default 5,000 ms.
    pub backoff_ms_max: u64,
    /// Extra librdkafka properties (security, SASL, ...), given as they are.
    pub properties: BTreeMap<String, String>,
    /// How long the producer gathers messages into a batch (librdkafka's `linger.ms`): larger
    /// batches, against latency. Default 5 ms, and 0 in replicated mode, where every command
    /// waits for it.
    pub linger_ms: Option<u64>,
    /// Refuse (rather than warn about) an events topic that may delete or compact records.
    /// Set by the node in replicated mode; not read from the configuration file.
    #[serde(skip)]
    pub require_retention: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topic: "bindledger.events".into(),
            alerts_topic: "bindledger.alerts".into(),
            notifications_topic: "bindledger.notifications".into(),
            partitions: 6,
            replication_factor: 1,
            inflight_events_max: 20_000,
            message_timeout_ms: 30_000,
            backoff_ms_max: 5_000,
            properties: BTreeMap::new(),
            linger_ms: None,
            require_retention: false,
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

/// Where the keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// On disk, with the keys the indexer has not written yet in memory (the default).
    Disk,
    /// In memory only: the keys of the last `memory_keys` events (the window in time holds
    /// only while they fit). For comparison.
    Memory,
}
