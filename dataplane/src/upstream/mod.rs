//! Keep-alive HTTP/1.1 connections to the local app (`h1`: written and read by the request's own
//! task) and to peer sidecars (hyper's client), and the one multiplexed h2c connection to an app
//! that speaks HTTP/2 (`--app-protocol h2c`).
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
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

mod early_answer;
pub mod h1;

/// The body type the proxy sends and returns.
pub type Body = BoxBody<Bytes, crate::timed_body::BoxError>;

/// A body of these bytes, whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A body of at most `limit` bytes. (Not `Limited`: its generic error conversion trips the
/// compiler's `Send` check of the futures that call it on a `Body`.)
pub async fn read_at_most(mut body: Body, limit: usize) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(format!("over {limit} bytes"));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// Idle connections kept per destination.
const MAX_IDLE: usize = 64;

/// The receive window of a stream of the app's h2c connection: what an answer its client does not
/// read holds here, within the slot of the connection cap the stream takes (64 KiB) beside the
/// 16 KiB queued for the client.
const H2_STREAM_WINDOW: u32 = 32 * 1024;
/// The receive window of the app's h2c connection, shared by its streams: HTTP/2's largest.
const H2_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// An idle connection to the app or a peer is used again within this long of its last answer,
/// and closed after. A server closes its idle keep-alive connections at a timeout of its own
/// (gunicorn: 2 s, Node and uvicorn: 5 s, a peer sidecar: its `--keepalive-timeout`, 5 s at the
/// least); a request sent as it closes one is lost, and one that is not idempotent cannot be sent
/// again: a 502 (measured: 1 in 400 `POST`s spaced around the demo app's idle timeout). Reusing a
/// connection only well within those, the sidecar closes it first.
pub const REUSE_WITHIN: Duration = Duration::from_secs(1);

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

/// A TCP connection to `addr` within `timeout`, without Nagle's delay (requests and responses
/// are written whole).
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|e| ConnectError::Io(addr, e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The longest response head from a peer sidecar (or the state endpoint): the app's own head
/// (`h1::MAX_HEAD`) and the session's cookies the peer adds to it (at most 64 KiB, the operator's
/// ceiling on `cookie.maxBytes`, with their attributes).
const PEER_MAX_HEAD: usize = h1::MAX_HEAD + 72 * 1024;

/// hyper's HTTP/1.1 client on `stream` (to `addr`), its connection driven by a task of its own,
/// reading a response head of `max_head` bytes at most. The same bound holds what it queues of a
/// request body for the other side (hyper's default, ~400 KB, with the pieces of the client's
/// buffer it pins, took ~1 MB a connection for an app that reads slowly).
async fn hyper_http1<S>(stream: S, addr: SocketAddr, max_head: usize) -> Result<SendRequest<Body>, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(max_head)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// How the sidecar speaks to the app's client port (`--app-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1, a pool of keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC servers speak nothing else): one
    /// multiplexed connection, made again when it closes.
    H2c,
}

impl std::str::FromStr for AppProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http1" => Ok(Self::Http1),
            "h2c" => Ok(Self::H2c),
            other => Err(format!("unknown app protocol {other:?} (http1 or h2c)")),
        }
    }
}

/// A connection to the app ready for one request, in the app's protocol.
pub enum AppSender {
    Http1(h1::AppConn),
    /// A handle on the shared h2c connection (cloning it opens no connection).
    H2(http2::SendRequest<Body>),
}

/// A connection to a peer for one request, and whether it goes back to the pool once answered.
pub struct PeerSender {
    pub send: SendRequest<Body>,
    pub pooled: bool,
}

/// An idle connection to a peer, and when its last answer ended.
type IdlePeerConn = (SendRequest<Body>, std::time::Instant);

/// Connection pools by destination.
#[derive(Default)]
pub struct Upstreams {
    /// Idle connections to peers.
    idle: Mutex<HashMap<SocketAddr, Vec<IdlePeerConn>>>,
    /// Idle HTTP/1.1 connections to the app (`get_app` and `put_app` are called with the one
    /// app's address).
    pub app_idle: h1::IdleConns,
    /// One h2c connection per destination: HTTP/2 multiplexes every request on it, so a pool
    /// would only add connections the app must accept.
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl Upstreams {
    /// A connection ready for one request: an idle one, or a new one within `timeout`.
    pub async fn get(&self, addr: SocketAddr, timeout: Duration) -> Result<SendRequest<Body>, ConnectError> {
        if let Some(sender) = self.take_idle(addr) {
            return Ok(sender);
        }
        hyper_http1(connect(addr, timeout).await?, addr, PEER_MAX_HEAD).await
    }

    /// An idle connection to the peer at `addr`, for a request whose body is all in hand
    /// ([`h1::body_in_hand`]): only such a request goes on a pooled connection.
    pub fn idle_peer(&self, addr: SocketAddr) -> Option<PeerSender> {
        self.take_idle(addr).map(|send| PeerSender { send, pooled: true })
    }

    /// A new connection to the peer at `addr`: pooled after its answer when the request's body is
    /// all `in_hand`; else used once, on which an answer the peer sends before it has read the
    /// whole body, then closing, still reaches the caller ([`early_answer`]: its dropped writes
    /// are why it is never pooled).
    pub async fn connect_peer(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        in_hand: bool,
    ) -> Result<PeerSender, ConnectError> {
        let stream = connect(addr, timeout).await?;
        if in_hand {
            return Ok(PeerSender { send: hyper_http1(stream, addr, PEER_MAX_HEAD).await?, pooled: true });
        }
        let stream = early_answer::EarlyAnswer::new(stream);
        Ok(PeerSender { send: hyper_http1(stream, addr, PEER_MAX_HEAD).await?, pooled: false })
    }

    /// A connection to the app at `addr` in `protocol`, and whether a connection to it had been
    /// closed by the other side since it was last used (a sign that the app may have restarted).
    pub async fn get_app(
        &self,
        addr: SocketAddr,
        protocol: AppProtocol,
        timeout: Duration,
    ) -> Result<(AppSender, bool), ConnectError> {
        match protocol {
            AppProtocol::Http1 => {
                let (idle, saw_closed) = self.app_idle.take();
                let conn = match idle {
                    Some(conn) => conn,
                    None => h1::AppConn::connect(addr, timeout).await?,
                };
                Ok((AppSender::Http1(conn), saw_closed))
            }
            AppProtocol::H2c => self.get_h2(addr, timeout).await.map(|(s, closed)| (AppSender::H2(s), closed)),
        }
    }

    async fn get_h2(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(http2::SendRequest<Body>, bool), ConnectError> {
        let saw_closed = {
            let mut h2 = sync::lock(&self.h2);
            match h2.get(&addr) {
                Some(sender) if !sender.is_closed() => return Ok((sender.clone(), false)),
                Some(_) => {
                    h2.remove(&addr);
                    true
                }
                None => false,
            }
        };
        let stream = connect(addr, timeout).await?;
        // Every client's streams share this one connection: an answer a client does not read keeps
        // its stream's window of the connection's. hyper's defaults (2 MiB a stream, 5 MiB the
        // connection) let three such clients stall every other client's answers; a stream takes
        // at most 32 KiB of window here, and the connection's is the most HTTP/2 allows, which the
        // streams the connection cap admits cannot fill.
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2c connection ended");
            }
        });
        // Two requests may have connected at once: the later one is kept, the other closes once
        // its request is done (its handle is dropped).
        sync::lock(&self.h2).insert(addr, sender.clone());
        Ok((sender, saw_closed))
    }

    /// Gives back a connection of [`get_app`](Self::get_app) that was not used.
    pub fn put_app(&self, sender: AppSender) {
        match sender {
            AppSender::Http1(conn) => self.app_idle.put(conn),
            // The shared connection stays in the map; this was only a handle on it.
            AppSender::H2(_) => {}
        }
    }

    /// Returns a connection after its response headers arrived; it is reused once its response
    /// body is done.
    pub fn put(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let answered = std::time::Instant::now();
        let mut idle = sync::lock(&self.idle);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push((sender, answered));
        }
    }

    /// Forgets every connection to the app at `addr` (its process died). (hyper's idle list
    /// holds none: the app's HTTP/1.1 connections are in `app_idle`.)
    pub fn forget(&self, addr: SocketAddr) {
        self.app_idle.clear();
        self.forget_h2(addr);
    }

    /// Forgets the h2c connection to `addr` (it is going away): the next request opens another.
    pub fn forget_h2(&self, addr: SocketAddr) {
        sync::lock(&self.h2).remove(&addr);
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = sync::lock(&self.idle);
        let list = idle.get_mut(&addr)?;
        list.retain(|(s, answered)| !s.is_closed() && answered.elapsed() < REUSE_WITHIN);
        let ready = list.iter().position(|(s, _)| s.is_ready())?;
        Some(list.swap_remove(ready).0)
    }
}
