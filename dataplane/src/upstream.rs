//! Keep-alive HTTP/1.1 connections to the local app and to peer sidecars.
//!
//! A request is only handed to a connection that is already established, so a peer or an app that
//! refuses the connection costs no request body: the caller can still send it elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use handover_common::sync;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The body type the proxy sends and returns.
pub type Body = BoxBody<Bytes, crate::timed_body::BoxError>;

/// Idle connections kept per destination.
const MAX_IDLE: usize = 64;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

/// Connection pools by destination.
#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Body>>>>,
}

impl Upstreams {
    /// A connection ready for one request: an idle one, or a new one within `timeout`.
    pub async fn get(&self, addr: SocketAddr, timeout: Duration) -> Result<SendRequest<Body>, ConnectError> {
        self.get_noting_closed(addr, timeout).await.map(|(sender, _)| sender)
    }

    /// Like [`get`](Self::get), and says whether idle connections to `addr` had been closed by
    /// the other side since they were last used (a sign that the process behind may have restarted).
    pub async fn get_noting_closed(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(SendRequest<Body>, bool), ConnectError> {
        let (idle, saw_closed) = self.take_idle(addr);
        if let Some(sender) = idle {
            return Ok((sender, saw_closed));
        }
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr))?
            .map_err(|e| ConnectError::Io(addr, e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok((sender, saw_closed))
    }

    /// Returns a connection after its response headers arrived; it is reused once its response
    /// body is done.
    pub fn put(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = sync::lock(&self.idle);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }

    /// Forgets every connection to `addr` (its process died).
    pub fn forget(&self, addr: SocketAddr) {
        sync::lock(&self.idle).remove(&addr);
    }

    fn take_idle(&self, addr: SocketAddr) -> (Option<SendRequest<Body>>, bool) {
        let mut idle = sync::lock(&self.idle);
        let Some(list) = idle.get_mut(&addr) else { return (None, false) };
        let before = list.len();
        list.retain(|s| !s.is_closed());
        let saw_closed = list.len() < before;
        let ready = list.iter().position(|s| s.is_ready());
        (ready.map(|i| list.swap_remove(i)), saw_closed)
    }
}
