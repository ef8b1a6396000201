//! `bindledger serve`: run a ledger node with its HTTP API until SIGINT or SIGTERM.

use anyhow::{Context, Result};
use bindledger::adapters::provider::SimulatedGateway;
use bindledger::node::Node;
use std::io::Write;
use std::sync::Arc;

use crate::{ensure_tokens, load_config, load_secret, Common};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Run as a read replica: follow the events topic (kafka.brokers, kafka.topic) into this
    /// data directory, serve every read, and answer commands 421 not_primary (replica.enabled).
    #[arg(long)]
    pub replica: bool,
    /// With --replica: the primary's URL, named in not_primary answers (replica.primary_url).
    #[arg(long, requires = "replica")]
    pub primary_url: Option<String>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let mut config = load_config(&args.common)?;
    if args.replica {
        config.replica.enabled = true;
    }
    if let Some(url) = args.primary_url {
        config.replica.primary_url = url;
    }
    config.validate()?;
    // Refuse an unusable rules file, TLS files that do not load, and a busy address, before
    // anything is created.
    bindledger::ledger::keys::alert_rules(&config)?;
    let tls = bindledger::adapters::http::tls::Tls::load(&config.http.tls)?.is_some();
    if !tls && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "serving plain HTTP on an address other hosts reach: tokens and console sessions cross the network in the clear; set http.tls.cert_file and http.tls.key_file");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let secret = load_secret(&config)?;
    let gateway = Arc::new(SimulatedGateway::new(config.gateway.simulated.clone()));
    ensure_tokens(&mut config)?;
    let node = Node::start(&config, secret, gateway)?;
    let addr = listener.local_addr()?;
    // One line on stdout that scripts (and tests) can read.
    outln!("listening on {}://{addr}", if tls { "https" } else { "http" });
    std::io::stdout().flush()?;
    tracing::info!(%addr, events = node.ledger.log_len(), alerts = config.alerts.enabled, "serving");
    bindledger::adapters::http::serve(listener, node.state.clone(), shutdown_signal()).await?;
    node.stop().await;
    Ok(())
}
