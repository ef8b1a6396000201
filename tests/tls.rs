//! TLS on the API and the console (issue 30): a real `bindledger serve` process with a
//! certificate from a CA made here with openssl; clients that trust that CA (reqwest, the
//! `bindledger` command with `--ca-file`) get in, others do not; plain HTTP on the TLS port gets
//! nothing; a client certificate a token names acts with that token's roles, another does not;
//! the console's cookie is `Secure`; the certificate is replaced on SIGHUP and when its file
//! changes, for new connections, while an open connection goes on.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

fn der_sha256(pem_file: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_file(pem_file).unwrap();
    hex::encode(sha2::Sha256::digest(der.as_ref()))
}

fn spawn(data: &Path, log: &Path, config: &Path, listen: &str) -> ServerProcess {
    use std::io::BufRead;
    let mut child = Command::new(binary())
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data)
        .env("BINDLEDGER_CONFIG", config)
        .env_remove("BINDLEDGER_TOKENS")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit_once("://")
        .unwrap_or_else(|| panic!("{line:?}: {}", std::fs::read_to_string(log).unwrap_or_default()))
        .1
        .parse()
        .unwrap();
    assert!(
        line.starts_with("listening on https://") || listen.starts_with("0.0.0.0"),
        "{line}"
    );
    ServerProcess { child, addr }
}

fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// A TLS connection of our own (so that it can be kept across a reload), trusting `ca`.
async fn connect(addr: std::net::SocketAddr, ca: &Path) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

fn server_cert_sha256(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        s.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
    ))
}

async fn get_healthz(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_tls_verifies_clients_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "server", "server");
    pki(d, "server2", "server");
    pki(d, "payments-svc", "client");
    pki(d, "stranger", "client");
    let (cert, key) = (d.join("live.pem"), d.join("live.key"));
    std::fs::copy(d.join("server.pem"), &cert).unwrap();
    std::fs::copy(d.join("server.key"), &key).unwrap();
    let config = d.join("bindledger.toml");
    std::fs::write(
        &config,
        format!(
            "[http.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\n\
             [[tokens]]\ntoken = \"{ALL}\"\nroles = [\"writer\", \"reader\", \"auditor\", \"security\"]\n\n\
             [[tokens]]\ntoken = \"svc-token-0123456789\"\nroles = [\"reader\"]\nname = \"payments-svc\"\nclient_cert_sha256 = \"{}\"\n",
            cert, key, d.join("client-ca.pem"), der_sha256(&d.join("payments-svc.pem"))
        ),
    )
    .unwrap();
    let server = spawn(&d.join("data"), &d.join("server.log"), &config, "127.0.0.1:0");
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let ca = d.join("server-ca.pem");

    // A client that trusts the CA gets in; one that does not, and plain HTTP, do not.
    let r = client(&ca, None).get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "an unknown CA must not verify"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP on the TLS port"
    );

    // The command line verifies the server against --ca-file.
    let (code, out, err) = run_cli(&[
        "status",
        "--url",
        &base,
        "--token",
        ALL,
        "--ca-file",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("ok"));
    let (code, _, _) = run_cli(&["status", "--url", &base, "--token", ALL]);
    assert_eq!(code, 1, "a server whose CA is not trusted");

    // Mutual TLS: the certificate a token names acts with its roles; another does not.
    let svc = client(&ca, Some((&d.join("payments-svc.pem"), &d.join("payments-svc.key"))));
    let r = svc.get(format!("{base}/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the service's certificate is a reader");
    let r = svc
        .post(format!("{base}/v1/accounts/a/payments"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "and only a reader");
    let stranger = client(&ca, Some((&d.join("stranger.pem"), &d.join("stranger.key"))));
    assert_eq!(
        stranger.get(format!("{base}/v1/status")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        client(&ca, None)
            .get(format!("{base}/v1/status"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // The console's session cookie is Secure.
    let r = client(&ca, None)
        .post(format!("{base}/console/session"))
        .header("content-type", "application/json")
        .body(format!("{{\"token\":\"{ALL}\"}}"))
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // SIGHUP with new files: new connections get the new certificate; an open one goes on.
    let mut open = connect(server.addr, &ca).await;
    assert!(get_healthz(&mut open).await.starts_with("HTTP/1.1 200"));
    assert_eq!(server_cert_sha256(&open), der_sha256(&d.join("server.pem")));
    // The files keep their modification times: only the signal can make the server look.
    let touch = |from: &Path, to: &Path| {
        assert!(Command::new("touch")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success())
    };
    let (cert_stamp, key_stamp) = (d.join("cert.stamp"), d.join("key.stamp"));
    touch(&cert, &cert_stamp);
    touch(&key, &key_stamp);
    std::fs::copy(d.join("server2.pem"), &cert).unwrap();
    std::fs::copy(d.join("server2.key"), &key).unwrap();
    touch(&cert_stamp, &cert);
    touch(&key_stamp, &key);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let before = connect(server.addr, &ca).await;
    assert_eq!(
        server_cert_sha256(&before),
        der_sha256(&d.join("server.pem")),
        "reloaded without a signal or a change"
    );
    assert!(Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = connect(server.addr, &ca).await;
        if server_cert_sha256(&fresh) == der_sha256(&d.join("server2.pem")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        get_healthz(&mut open).await.starts_with("HTTP/1.1 200"),
        "the open connection was dropped"
    );
    // A changed file is taken without a signal (checked every 2 s).
    std::fs::copy(d.join("server.pem"), &cert).unwrap();
    std::fs::copy(d.join("server.key"), &key).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = connect(server.addr, &ca).await;
        if server_cert_sha256(&fresh) == der_sha256(&d.join("server.pem")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the changed file was not taken");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A broken file is refused and the certificate in use stays.
    std::fs::write(&key, "not a key").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let fresh = connect(server.addr, &ca).await;
    assert_eq!(server_cert_sha256(&fresh), der_sha256(&d.join("server.pem")));
    drop(server);
    let log = std::fs::read_to_string(d.join("server.log")).unwrap();
    assert!(log.contains("TLS files not reloaded"), "{log}");
}

#[test]
fn plain_http_on_an_address_others_reach_is_warned_about_and_bad_tls_files_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("plain.toml");
    std::fs::write(
        &config,
        format!("[[tokens]]\ntoken = \"{ALL}\"\nroles = [\"reader\"]\n"),
    )
    .unwrap();
    let server = spawn(&d.join("data"), &d.join("plain.log"), &config, "0.0.0.0:0");
    drop(server);
    let log = std::fs::read_to_string(d.join("plain.log")).unwrap();
    assert!(log.contains("plain HTTP"), "{log}");
    // TLS files that do not load stop the start, before anything listens.
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[http.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            d.join("none.pem"),
            d.join("none.key")
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.join("data2"))
        .env("BINDLEDGER_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing listened");
}

/// Shards that speak TLS forward to each other over it, verifying the peer against
/// `cluster.ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_forward_to_each_other_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "server", "server");
    let broker = Broker::start();
    let ports = [free_port(), free_port()];
    let (map, configs) = two_shards(&broker, d, ports, "https", "tls").await;
    let mut servers = Vec::new();
    for (mut config, port) in configs.into_iter().zip(ports) {
        config.http.tls.cert_file = Some(d.join("server.pem"));
        config.http.tls.key_file = Some(d.join("server.key"));
        config.cluster.ca_file = Some(d.join("server-ca.pem"));
        servers.push(TestServer::start_on(config, &format!("127.0.0.1:{port}")).await);
    }
    let account = (0..).map(|i| format!("t-{i}")).find(|a| map.owner(a) == "s1").unwrap();
    bind_wallet(&servers[1].ledger, &servers[1].gateway, &account, 1).await;
    let r = client(&d.join("server-ca.pem"), None)
        .get(format!("https://127.0.0.1:{}/v1/accounts/{account}/bindings", ports[0]))
        .bearer_auth(ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("bindledger-forwarded").and_then(|v| v.to_str().ok()),
        Some("s0")
    );
    assert_eq!(
        r.headers().get("bindledger-shard").and_then(|v| v.to_str().ok()),
        Some("s1")
    );
    assert!(r.text().await.unwrap().contains("alipay"));
    for s in servers {
        s.shutdown().await;
    }
}
