//! Listeners: the data port (through [`Proxy`]) and the admin port (`/live`, `/ready`, `/metrics`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use prometheus_client::metrics::counter::Counter;

use crate::proxy::Proxy;
use crate::upstream::Body;

/// Largest request head hyper reads; the proxy refuses heads over its own, smaller limit with a
/// clear 431 (and a metric) before hyper's hard limit is reached.
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A client gets this long to send a request head (and an idle keep-alive connection stays
    /// open this long).
    pub header_timeout: Duration,
}

impl ConnLimits {
    /// The admin port: probes and scrapes, a few at a time.
    pub const ADMIN: ConnLimits = ConnLimits { max_connections: 64, header_timeout: Duration::from_secs(5) };
    /// Local tools (the demo app).
    pub const LOCAL: ConnLimits = ConnLimits { max_connections: 10_000, header_timeout: Duration::from_secs(30) };
}

/// Serves HTTP/1.1 and HTTP/2 without TLS (h2c with prior knowledge, as ingresses and meshes
/// speak it to pods), told apart by the connection's first bytes, on `listener` with `handle`
/// until `stop` resolves, then lets open connections finish for up to `finish_within`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handle: H,
    stop: impl Future<Output = ()>,
    finish_within: Duration,
    limits: ConnLimits,
    refused: Counter,
) where
    H: Fn(Request<Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // Each connection task holds a clone of `open`; `all_closed` ends when the last one is dropped.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut at_cap = false;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(MAX_HEAD_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEAD_BYTES as u32);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    // Closing at once costs nothing; holding it would let one client's flood of
                    // connections pile up without bound.
                    refused.inc();
                    if !at_cap {
                        tracing::warn!(max = limits.max_connections, %client, "connection cap reached; closing new connections until some end");
                        at_cap = true;
                    }
                    drop(stream);
                    continue;
                };
                at_cap = false;
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let service = service_fn(move |req| {
                    let fut = handle(req, client);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let builder = builder.clone();
                let open = open.clone();
                let mut closing = closing.clone();
                let header_timeout = limits.header_timeout;
                tokio::spawn(async move {
                    // Which protocol is told by the first bytes, and hyper waits for them without
                    // a limit: a connection that sends nothing is closed after the header timeout.
                    let mut first = [0u8; 1];
                    let first_bytes = tokio::select! {
                        peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => matches!(peeked, Ok(Ok(1..))),
                        _ = closing.changed() => false,
                    };
                    if !first_bytes {
                        drop(slot);
                        drop(open);
                        return;
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        _ = closing.changed() => {
                            // Finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%client, error = %e, "client connection ended with an error");
                    }
                    drop(slot);
                    drop(open);
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(open);
    if tokio::time::timeout(finish_within, all_closed.recv()).await.is_err() {
        tracing::warn!(?finish_within, "connections still open at the end of the grace period; closing them");
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

/// The admin endpoints.
pub fn admin(proxy: &Arc<Proxy>, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/live" => {
            let mut live = text(StatusCode::OK, "live\n");
            if let Some(reads) = proxy.app_reads().and_then(|r| http::HeaderValue::from_str(&r).ok()) {
                live.headers_mut().insert(crate::proxy::READS_HEADER, reads);
            }
            live
        }
        "/ready" => {
            if proxy.draining_since().is_some() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !proxy.app_is_up() {
                text(StatusCode::SERVICE_UNAVAILABLE, "app unreachable\n")
            } else if let Err(why) = proxy.registry_synced() {
                // Serving now would take over sessions of live peers this pod cannot see yet.
                text(StatusCode::SERVICE_UNAVAILABLE, format!("registry not synced: {why}\n"))
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            proxy.metrics.registry_members.set(proxy.registry_members().len() as i64);
            let reachable = proxy.peer_health().verdict(std::time::Instant::now()).reachable;
            proxy.metrics.peers_reachable.set(i64::from(reachable));
            let mut resp = text(StatusCode::OK, proxy.metrics.encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        // This sidecar's own view of the pool: what its routing decisions stand on.
        "/members" => text(StatusCode::OK, crate::registry::render_members(&proxy.registry_members())),
        _ => text(StatusCode::NOT_FOUND, "admin endpoints: /live /ready /metrics /members /drain\n"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
