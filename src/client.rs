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

pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Client {
        Client { addr, token, sender: None }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().map_or(true, |s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(ClientError::Connect)?;
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
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes), ClientError> {
        let mut req = Request::builder().method(method).uri(path).header("host", self.addr.to_string());
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

    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (status, bytes) = self.send(Method::POST, path, Some(serde_json::to_vec(body)?)).await?;
        Ok((status, serde_json::from_slice(&bytes)?))
    }

    pub async fn get_json(&mut self, path: &str) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (status, bytes) = self.send(Method::GET, path, None).await?;
        Ok((status, serde_json::from_slice(&bytes)?))
    }
}
