//! Helpers shared by the integration tests: a real ledger with the real HTTP server on a real
//! socket (in process), and the real `bindledger` binary as a child process.
#![allow(dead_code)]

use bindledger::client::Client;
use bindledger::config::{Config, Role, TokenConfig};
use bindledger::gateway::{Scenario, SimulatedGateway};
use bindledger::http::AppState;
use bindledger::secret::LedgerSecret;
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
pub const ALL: &str = "all-roles-token-0123456789";

pub fn tokens() -> Vec<TokenConfig> {
    vec![
        TokenConfig { token: WRITER.into(), roles: vec![Role::Writer] },
        TokenConfig { token: READER.into(), roles: vec![Role::Reader] },
        TokenConfig { token: AUDITOR.into(), roles: vec![Role::Auditor] },
        TokenConfig { token: ALL.into(), roles: vec![Role::Writer, Role::Reader, Role::Auditor] },
    ]
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.to_path_buf();
    c.gateway.simulated = Scenario::quiet(11);
    c.tokens = tokens();
    c
}

pub struct TestServer {
    pub ledger: Ledger,
    pub gateway: Arc<SimulatedGateway>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
        let ledger = Ledger::open(&config, LedgerSecret::from_bytes([42; 32]), gateway.clone()).expect("open ledger");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(ledger.clone(), &config.tokens, config.http.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bindledger::http::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        TestServer { ledger, gateway, addr, stop: Some(stop), task: Some(task) }
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(self.addr, Some(token.to_owned()))
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.take().unwrap().await;
        self.ledger.close();
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
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_file).unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("BINDLEDGER_TOKENS", format!("writer+reader+auditor:{ALL}"))
        .env_remove("BINDLEDGER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn bindledger serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?} (see {})", log_file.display()))
        .parse()
        .unwrap();
    ServerProcess { child, addr }
}

impl ServerProcess {
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
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}
