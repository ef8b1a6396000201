//! A small HTTP/1.1 client over one kept-alive connection (hyper), used by the demo, the
//! benchmark and the tests to talk to a real server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the response is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The address of `http://HOST:PORT` (or `IP:PORT`), resolved now. This client speaks plain
/// HTTP only: an `https://` URL is refused with what to do.
pub fn parse_http_addr(url: &str) -> Result<SocketAddr, crate::config::AddressError> {
    use crate::config::AddressError;
    if url.starts_with("https://") {
        return Err(AddressError::Https);
    }
    let rest = url.trim_start_matches("http://").trim_end_matches('/');
    crate::config::resolve_address(rest).map_err(|e| match e {
        AddressError::Unresolved => AddressError::NotHttp,
        other => other,
    })
}

pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Client {
        Client {
            addr,
            token,
            sender: None,
        }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(ClientError::Connect)?;
            stream.set_nodelay(true).map_err(ClientError::Connect)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// Sends a request; returns the status and the whole body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let sender = self.sender().await?;
        sender.ready().await?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
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

/// Longest SSE event accepted (bounds the buffer).
const SSE_EVENT_MAX: usize = 1 << 20;

/// A Server-Sent Events stream on its own connection.
pub struct SseStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl SseStream {
    /// Opens `path` as an event stream, resuming after `last_event_id` if given. A non-200
    /// answer is returned as the status and body.
    pub async fn open(
        addr: SocketAddr,
        token: Option<&str>,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Result<SseStream, (StatusCode, Bytes)>, ClientError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(ClientError::Connect)?;
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = sender.send_request(req.body(Full::new(Bytes::new()))?).await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            return Ok(Err((status, body)));
        }
        Ok(Ok(SseStream {
            body: resp.into_body(),
            buf: Vec::new(),
        }))
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<SseMessage>, ClientError> {
        loop {
            if let Some(end) = find_event_end(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                let text = String::from_utf8_lossy(&block[..end.0]);
                let mut msg = SseMessage::default();
                let mut data = Vec::new();
                for line in text.lines() {
                    let (field, value) = line
                        .split_once(':')
                        .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
                        .unwrap_or((line, ""));
                    match field {
                        "id" => msg.id = Some(value.to_owned()),
                        "event" => msg.event = Some(value.to_owned()),
                        "data" => data.push(value.to_owned()),
                        _ => {}
                    }
                }
                if data.is_empty() && msg.id.is_none() {
                    continue; // a comment (keep-alive)
                }
                msg.data = data.join("\n");
                return Ok(Some(msg));
            }
            if self.buf.len() > SSE_EVENT_MAX {
                self.buf.clear();
                return Ok(None);
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// (end of the event's text, end including the blank line) of the first complete event.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}
