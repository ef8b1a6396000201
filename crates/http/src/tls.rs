//! TLS on the API and the console (rustls, with the ring provider the client already uses).
//!
//! The certificate chain and key are PEM files; they are read again on `SIGHUP` and when either
//! file's modification time changes (checked every 2 s), and a set that does not load is
//! refused with a log line while the one in use stays. A connection keeps the configuration it
//! was accepted with, so a reload drops none. With a client CA, client certificates are asked
//! for (optional or required); a verified one is known by the SHA-256 of its DER, which a token
//! may list (`client_cert_sha256`) to lend it its name and roles.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuth, TlsConfig};
use crate::error::Error;

/// The server's TLS configuration, reloadable.
pub struct Tls {
    files: Files,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

impl Files {
    fn all(&self) -> Vec<&Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

/// The SHA-256 of a verified client certificate: what a token's `client_cert_sha256` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCert(pub [u8; 32]);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &Files) -> Result<rustls::ServerConfig, Error> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| Error::config_by(format!("reading the TLS {what} {}", path.display()), e))
    };
    let cert_pem = read("certificate", &files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::config(format!("{}: not a PEM certificate chain ({e:?})", files.cert.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!("{}: no certificate in it", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(&read("key", &files.key)?)
        .map_err(|e| Error::config(format!("{}: not a PEM private key ({e:?})", files.key.display())))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = read("client CA", ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| Error::config(format!("{}: not a PEM certificate ({e:?})", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| Error::config(format!("{}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match files.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            }
            .build()
            .map_err(|e| Error::config(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| Error::config(format!("{} and {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn stamps(files: &Files) -> Vec<Option<SystemTime>> {
    files
        .all()
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl Tls {
    /// The configured TLS, loaded (`None` when `http.tls` is off); a file that does not load is
    /// an error, before anything listens.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Tls>>, Error> {
        let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
            return Ok(None);
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.client_ca_file.clone(),
            client_auth: config.client_auth,
        };
        let stamps = stamps(&files);
        let current = build(&files)?;
        Ok(Some(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(current)),
            stamps: Mutex::new(stamps),
        })))
    }

    /// What new connections are accepted with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("tls lock").clone())
    }

    /// Reads the files again; on success new connections use them. Returns whether it did.
    pub fn reload(&self) -> bool {
        let stamps = stamps(&self.files);
        match build(&self.files) {
            Ok(c) => {
                *self.current.write().expect("tls lock") = Arc::new(c);
                *self.stamps.lock().expect("tls lock") = stamps;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Not retried until a file changes again.
                *self.stamps.lock().expect("tls lock") = stamps;
                tracing::error!(error = %crate::error::chain(&e), "TLS files not reloaded: the ones in use stay");
                false
            }
        }
    }

    /// Reloads on `SIGHUP` and when a file changed, until `closing` turns true.
    pub fn watch(self: Arc<Self>, mut closing: tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = closing.changed() => return,
                    true = signalled => { self.reload(); }
                    _ = tick.tick() => {
                        let changed = stamps(&self.files) != *self.stamps.lock().expect("tls lock");
                        if changed {
                            self.reload();
                        }
                    }
                }
            }
        });
    }
}

/// The SHA-256 of a connection's verified client certificate, if it presented one.
pub(crate) fn peer_cert(conn: &rustls::ServerConnection) -> Option<PeerCert> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerCert(Sha256::digest(c.as_ref()).into()))
}

/// A client's TLS connection (the benchmark's load generator speaks TLS with it).
pub type ClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A client connector that trusts the CA certificates in `ca_pem` alone.
pub fn connector(ca_pem: &[u8]) -> Result<tokio_rustls::TlsConnector, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| Error::config(format!("not a PEM certificate ({e:?})")))?;
        roots
            .add(c)
            .map_err(|e| Error::config(format!("a CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Connects `tcp` as a TLS client of the server at `addr` (its certificate names the address).
pub async fn connect(
    connector: &tokio_rustls::TlsConnector,
    tcp: tokio::net::TcpStream,
    addr: std::net::IpAddr,
) -> std::io::Result<ClientStream> {
    connector
        .connect(rustls::pki_types::ServerName::IpAddress(addr.into()), tcp)
        .await
}

pub use tokio_rustls::TlsConnector as Connector;
