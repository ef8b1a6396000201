//! The HTTP client of the command line, the audit tool and the tests: `reqwest` (rustls, so
//! `https://` works with the system's usual roots; hostnames are resolved per request) and the
//! `eventsource-stream` parser for the alerts' Server-Sent Events. The benchmark keeps its own
//! raw load generator.

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use hyper::{Method, StatusCode};
use std::net::SocketAddr;
use std::pin::Pin;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request failed: no connection, TLS, a broken answer.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("the response is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an http:// or https:// URL with a host")]
    BadUrl,
    #[error("the CA file holds no PEM certificate")]
    NoCertificate,
    /// An event of the stream is longer than [`SSE_EVENT_MAX`]: the stream is not read further
    /// (reading it again would meet the same event).
    #[error("an event of the stream is longer than {SSE_EVENT_MAX} bytes")]
    EventTooLong,
    #[error("the event stream is not valid: {0}")]
    EventStream(String),
}

/// Where a ledger answers: `http://HOST:PORT` or `https://HOST:PORT`, optionally with a path
/// prefix. A socket address is `http://` to it.
#[derive(Debug, Clone)]
pub struct Endpoint(String);

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| ClientError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ClientError::BadUrl);
        }
        Ok(Endpoint(parsed.as_str().trim_end_matches('/').to_owned()))
    }

    /// The URL of `path` (which starts with `/`, with its query if any).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint(format!("http://{addr}"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The CA the clients of this process trust instead of the usual public roots, once
/// [`trust_only`] set it (`--ca-file`, `BINDLEDGER_CA_FILE`).
static TRUSTED_CA: std::sync::OnceLock<Vec<reqwest::Certificate>> = std::sync::OnceLock::new();

/// From now on, every client of this process verifies `https://` servers against the CA
/// certificates in `pem` (a file's bytes) alone. An error if it holds none.
pub fn trust_only(pem: &[u8]) -> Result<(), ClientError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)?;
    if certs.is_empty() {
        return Err(ClientError::NoCertificate);
    }
    let _ = TRUSTED_CA.set(certs);
    Ok(())
}

fn http_client() -> reqwest::Client {
    let mut b = reqwest::Client::builder().tcp_nodelay(true);
    if let Some(certs) = TRUSTED_CA.get() {
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c.clone());
        }
    }
    b.build().expect("a client with these TLS settings builds")
}

pub struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
    token: Option<String>,
}

impl Client {
    pub fn new(endpoint: impl Into<Endpoint>, token: Option<String>) -> Client {
        Client {
            http: http_client(),
            endpoint: endpoint.into(),
            token,
        }
    }

    /// Sends a request; returns the status and the whole body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut req = self.http.request(method, self.endpoint.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.bytes().await?))
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (status, bytes) = self.send(Method::POST, path, Some(serde_json::to_vec(body)?)).await?;
        Ok((status, serde_json::from_slice(&bytes)?))
    }

    pub async fn get_json(&mut self, path: &str) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (status, bytes) = self.send(Method::GET, path, None).await?;
        Ok((status, serde_json::from_slice(&bytes)?))
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Longest SSE event accepted (bounds what the parser buffers). An alert change is a few KB.
pub const SSE_EVENT_MAX: usize = 16 << 20;

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, ClientError>> + Send>>;

/// A Server-Sent Events stream.
pub struct SseStream {
    events: Events,
}

/// The body's bytes, failing once more than [`SSE_EVENT_MAX`] bytes came without a blank
/// line (the end of an event), so the parser's buffer stays bounded.
fn bounded(
    body: impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, ClientError>> + Send {
    let mut since_blank = 0usize;
    let mut last = 0u8;
    body.map(move |chunk| {
        let chunk = chunk?;
        for &b in chunk.iter() {
            since_blank = if b == b'\n' && last == b'\n' {
                0
            } else {
                since_blank + 1
            };
            if b != b'\r' {
                last = b;
            }
        }
        if since_blank > SSE_EVENT_MAX {
            return Err(ClientError::EventTooLong);
        }
        Ok(chunk)
    })
}

impl SseStream {
    /// Opens `path` as an event stream, resuming after `last_event_id` if given. A non-200
    /// answer is returned as the status and body.
    pub async fn open(
        endpoint: impl Into<Endpoint>,
        token: Option<&str>,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Result<SseStream, (StatusCode, Bytes)>, ClientError> {
        let endpoint = endpoint.into();
        let mut req = http_client()
            .get(endpoint.url(path))
            .header("accept", "text/event-stream");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            return Ok(Err((status, resp.bytes().await?)));
        }
        let events = bounded(resp.bytes_stream()).eventsource().map(|r| {
            r.map_err(|e| match e {
                eventsource_stream::EventStreamError::Transport(e) => e,
                other => ClientError::EventStream(other.to_string()),
            })
        });
        Ok(Ok(SseStream {
            events: Box::pin(events),
        }))
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<SseMessage>, ClientError> {
        match self.events.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(e)) => Ok(Some(SseMessage {
                id: Some(e.id).filter(|id| !id.is_empty()),
                event: Some(e.event).filter(|name| !name.is_empty() && name != "message"),
                data: e.data,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_an_http_or_https_url_with_a_host() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/",
            "https://ledger.internal:8443",
            "https://ledger.internal/prefix/",
        ] {
            let e = Endpoint::parse(ok).unwrap();
            assert!(!e.to_string().ends_with('/'), "{e}");
            assert_eq!(e.url("/v1/status"), format!("{}/v1/status", ok.trim_end_matches('/')));
        }
        for bad in ["ftp://x:1", "localhost:8080", "http://", "not a url"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let from_addr: Endpoint = "127.0.0.1:9".parse::<SocketAddr>().unwrap().into();
        assert_eq!(from_addr.to_string(), "http://127.0.0.1:9");
    }

    #[tokio::test]
    async fn an_event_stream_is_parsed_and_an_endless_event_is_refused() {
        let chunks: Vec<Result<Bytes, ClientError>> = vec![
            Ok(Bytes::from_static(b": keep-alive\n\nid: 7\ndata: {\"a\":1}\n\n")),
            Ok(Bytes::from_static(b"id: 8\ndata: x\n")),
            Ok(Bytes::from_static(b"\n")),
        ];
        let mut events = futures_util::stream::iter(chunks).eventsource();
        let first = events.next().await.unwrap().unwrap();
        assert_eq!((first.id.as_str(), first.data.as_str()), ("7", "{\"a\":1}"));
        let second = events.next().await.unwrap().unwrap();
        assert_eq!((second.id.as_str(), second.data.as_str()), ("8", "x"));

        // More than SSE_EVENT_MAX bytes without a blank line: an error, not a buffer that grows.
        let piece = Bytes::from(vec![b'a'; 1 << 20]);
        let body = futures_util::stream::iter(std::iter::once(Ok(Bytes::from_static(b"data: "))).chain(
            std::iter::repeat_with(move || Ok::<_, reqwest::Error>(piece.clone())).take(SSE_EVENT_MAX / (1 << 20) + 2),
        ));
        let results: Vec<_> = bounded(body).collect().await;
        assert!(
            matches!(results.last(), Some(Err(ClientError::EventTooLong))),
            "{} chunks, none refused",
            results.len()
        );
    }
}
