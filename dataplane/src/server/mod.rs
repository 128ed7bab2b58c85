//! Listeners: the data port (through [`Proxy`]) and the admin port (`/live`, `/ready`, `/metrics`).
//! Each connection starts on the HTTP/1.1 path of [`h1`]; hyper serves whatever that path does not
//! take (HTTP/2, upgrades, chunked or slow bodies, anything malformed).

pub(crate) mod h1;
mod hyper_conn;
mod send_timeout;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{BadRequest, Typed};
use crate::proxy::{Proxy, TunnelSlot};
use crate::upstream::{Body, full};
use send_timeout::SendTimeout;

/// What hyper's HTTP/1.1 server may read of a head beyond the proxy's own limit on it (the
/// request line, the fields' separators): the proxy refuses a head over its limit with a clear 431
/// before hyper's is reached.
const HEAD_SLACK: usize = 8 * 1024;

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A client gets this long to send a request head: the first from the connection's accept,
    /// any other from its first byte.
    pub header_timeout: Duration,
    /// A connection with no request in flight stays open this long after its last answer (an
    /// HTTP/1.1 keep-alive, an HTTP/2 connection with no stream open).
    pub keepalive_timeout: Duration,
    /// A response the client takes no byte of for this long: the connection is closed (`None`:
    /// never).
    pub send_timeout: Option<Duration>,
    /// The largest request head the proxy takes (`--max-header-bytes`). hyper's HTTP/1.1 server
    /// reads this much (and [`HEAD_SLACK`]) at most into a connection's buffer: a larger head is
    /// hyper's 431, and an upload's body is read in pieces no larger (hyper grows its buffer to
    /// its limit while a body comes fast: its default ~400 KB took ~1 MB a connection with the
    /// app's client's queue, for an app that reads uploads slowly).
    pub max_head_bytes: usize,
}

/// What one listener counts of its connections.
#[derive(Clone, Debug, Default)]
pub struct ConnCounters {
    /// New connections closed at the cap.
    pub refused: Counter,
    /// Connections closed at the send timeout.
    pub send_timeouts: Counter,
    /// `handover_bad_requests_total`: the heads that hyper answered because they do not parse.
    pub bad_requests: Family<Typed<BadRequest>, Counter>,
    /// Requests whose client gave up before their answer began: hyper drops such a request's
    /// work (an HTTP/2 stream the client reset) without a word.
    pub abandoned: Counter,
}

impl ConnCounters {
    /// A connection closed at the header timeout with part of a head read.
    fn head_timed_out(&self, client: SocketAddr, header_timeout: Duration) {
        self.bad_requests.get_or_create(&[("reason", BadRequest::HeaderTimeout)]).inc();
        tracing::warn!(%client, ?header_timeout, "request refused: its head was not whole within the header timeout; connection closed");
    }

    /// A request head that hyper could not parse, and answered itself: counted and logged as the
    /// proxy's own refusals are (they never reach it).
    fn unparsed(&self, client: SocketAddr, e: &hyper::Error) {
        let reason = if !e.is_parse_too_large() {
            BadRequest::Malformed
        } else if e.to_string().starts_with("URI too long") {
            BadRequest::UriTooLong
        } else {
            BadRequest::HeadersTooLarge
        };
        self.bad_requests.get_or_create(&[("reason", reason)]).inc();
        tracing::warn!(%client, error = %e, "request refused: its head does not parse");
    }
}

impl ConnLimits {
    /// The admin port: probes and scrapes, a few at a time.
    pub const ADMIN: ConnLimits = ConnLimits {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        keepalive_timeout: Duration::from_secs(5),
        send_timeout: Some(Duration::from_secs(5)),
        max_head_bytes: 8 * 1024,
    };
    /// Local tools (the demo app).
    pub const LOCAL: ConnLimits = ConnLimits {
        max_connections: 10_000,
        header_timeout: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(30),
        send_timeout: Some(Duration::from_secs(60)),
        max_head_bytes: 64 * 1024,
    };
}

/// Slots of the connection cap beside a connection's own that an upload through hyper takes
/// while it is in flight: a body still arriving goes through hyper's server and hyper's client,
/// whose buffers and the pieces of them still referenced came to ~300 KB a connection for an app
/// that reads its uploads slowly (200 clients uploading as fast as they could), where the cap
/// counts 64 KiB a slot.
const UPLOAD_SLOTS: u32 = 4;

/// The slots of the connection cap that requests take beside their connection's. An HTTP/2 stream
/// in flight holds an app connection and its buffers as a connection does, and hyper lets a
/// client keep 200 of them open on one connection: 20 connections with streams whose bodies
/// trickle in held 4 000 app connections and ~135 MB. So each stream takes a slot, and one more
/// while its body arrives (up to its window, 64 KiB); an HTTP/1.1 request that hyper serves with
/// a body takes [`UPLOAD_SLOTS`]. A request for an upgrade takes one for the tunnel it may become,
/// which outlives its connection's task (and its slot) and holds two sockets: the tunnel keeps it
/// ([`TunnelSlot`]). The cap's bounds on open files and memory hold for them too. (Any other
/// HTTP/1.1 request is one at a time on its connection: its connection's slot covers it.)
#[derive(Clone)]
struct RequestSlots {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// Whether the last request was refused: the cap's log line is written once a spell.
    at_cap: Arc<AtomicBool>,
    bad_requests: Family<Typed<BadRequest>, Counter>,
}

impl RequestSlots {
    /// The slots `req` holds until its answer is sent (`None`: it needs none), or too few left:
    /// the request is refused ([`refused_at_cap`]).
    fn take(&self, req: &Request<Incoming>, client: SocketAddr) -> Result<Option<OwnedSemaphorePermit>, AtCap> {
        let body = !hyper::body::Body::is_end_stream(req.body());
        let needed = match (req.version(), body) {
            (Version::HTTP_2, body) => 1 + u32::from(body),
            (_, true) => UPLOAD_SLOTS,
            (_, false) if req.headers().contains_key(header::UPGRADE) => 1,
            (_, false) => return Ok(None),
        };
        // Beside its connection's slot: a cap too small for that many is all it may take.
        let needed = needed.min(u32::try_from(self.max.saturating_sub(1)).unwrap_or(u32::MAX));
        match Arc::clone(&self.slots).try_acquire_many_owned(needed) {
            Ok(slots) => {
                self.at_cap.store(false, Ordering::Relaxed);
                Ok(Some(slots))
            }
            Err(_) => {
                self.bad_requests.get_or_create(&[("reason", BadRequest::OverCap)]).inc();
                if !self.at_cap.swap(true, Ordering::Relaxed) {
                    tracing::warn!(max = self.max, %client, "connection cap reached with HTTP/2 streams and uploads; refusing new ones (503) until some end");
                }
                Err(AtCap)
            }
        }
    }
}

/// Too few slots of the connection cap left for a request.
struct AtCap;

/// The answer to a request refused at the connection cap.
fn refused_at_cap() -> Response<Body> {
    let mut refused = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "handover: the sidecar is at its cap of connections, HTTP/2 streams and uploads in flight (--max-connections); retry\n",
    );
    refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    refused
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
    counters: ConnCounters,
) where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // Each connection task holds a clone of `open`; `all_closed` ends when the last one is dropped.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let request_slots = RequestSlots {
        slots: Arc::clone(&slots),
        max: limits.max_connections,
        at_cap: Arc::default(),
        bad_requests: counters.bad_requests.clone(),
    };
    let mut at_cap = false;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's HTTP/1.1 timer runs from an answer's end to the next head's end: the keep-alive
    // wait and the head in one (a head on a connection hyper serves may take the longer of them).
    let hyper_head_timeout = limits.keepalive_timeout.max(limits.header_timeout);
    let timeouts = h1::Timeouts { header: limits.header_timeout, keepalive: limits.keepalive_timeout };
    let max_head = limits.max_head_bytes.saturating_add(HEAD_SLACK);
    builder.http1().timer(TokioTimer::new()).header_read_timeout(hyper_head_timeout).max_buf_size(max_head);
    // A stream's window as nginx's (`http2_body_preread_size`): what a client may send of a body
    // ahead of the app's reading it, held here meanwhile (hyper's default is 1 MB). And what an
    // answer may queue for a client that opened its window wide and reads nothing: as much as the
    // HTTP/1.1 path gathers (hyper's default, ~400 KB a stream, took ~520 KB a connection).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .initial_stream_window_size(64 * 1024)
        .max_send_buf_size(h1::COALESCE);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    // An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`: the app
                    // (X-Forwarded-For), the logs and the metrics get the IPv4 address it is.
                    Ok((stream, client)) => (stream, SocketAddr::new(client.ip().to_canonical(), client.port())),
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
                    counters.refused.inc();
                    if !at_cap {
                        tracing::warn!(max = limits.max_connections, %client, "connection cap reached; closing new connections until some end");
                        at_cap = true;
                    }
                    drop(stream);
                    continue;
                };
                at_cap = false;
                let _ = stream.set_nodelay(true);
                let stream = SendTimeout::new(stream, limits.send_timeout, counters.send_timeouts.clone());
                let handle = handle.clone();
                let builder = builder.clone();
                let open = open.clone();
                let mut closing = closing.clone();
                let send_timeout = limits.send_timeout;
                let counters = counters.clone();
                let request_slots = request_slots.clone();
                tokio::spawn(async move {
                    // The HTTP/1.1 path reads first, so a connection that sends nothing, or no
                    // whole head, is closed at the header timeout counted from its accept (as
                    // nginx's `client_header_timeout`); hyper gets only connections that sent bytes.
                    let rest = match h1::serve(stream, client, &handle, timeouts, &mut closing).await {
                        h1::Outcome::Closed => return,
                        h1::Outcome::HeadTimedOut => {
                            counters.head_timed_out(client, timeouts.header);
                            return;
                        }
                        h1::Outcome::Hyper(rest) => rest,
                    };
                    let (requests, idle) = hyper_conn::Requests::new(timeouts.header, timeouts.keepalive);
                    let watched = requests.clone();
                    let stalled = watched.stalled(send_timeout);
                    let abandoned = counters.abandoned.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let mut in_flight = requests.enter();
                        let served = request_slots.take(&req, client).map(|slots| {
                            let tunnel = req.version() != Version::HTTP_2
                                && req.headers().contains_key(header::UPGRADE)
                                && hyper::body::Body::is_end_stream(req.body());
                            let mut req = req.map(|body| body.map_err(Into::into).boxed());
                            if tunnel {
                                // Given back with the request, or kept by the tunnel it becomes.
                                req.extensions_mut().insert(TunnelSlot::new(slots, timeouts.keepalive));
                            } else {
                                in_flight.hold(slots);
                            }
                            handle(req, client)
                        });
                        let abandoned = hyper_conn::Unanswered::new(abandoned.clone(), client);
                        async move {
                            let resp = match served {
                                Ok(fut) => hyper_conn::held_until_sent(fut.await, in_flight),
                                Err(AtCap) => refused_at_cap(),
                            };
                            abandoned.answered();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(rest), service);
                    tokio::pin!(conn);
                    let result = if *closing.borrow_and_update() {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    } else {
                        tokio::select! {
                            result = conn.as_mut() => result,
                            _ = closing.changed() => {
                                // Finish the request in flight, then close.
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                            () = idle => {
                                tracing::debug!(%client, keepalive_timeout = ?timeouts.keepalive, "no request in flight for the keep-alive timeout: closing the connection");
                                conn.as_mut().graceful_shutdown();
                                // HTTP/2's graceful close waits for the client to answer a PING:
                                // one that never does is cut after another header timeout.
                                tokio::time::timeout(timeouts.header, conn).await.unwrap_or(Ok(()))
                            }
                            () = stalled => {
                                // An HTTP/2 client that keeps its stream window shut: the
                                // connection, and the app's connections writing its answers, go.
                                counters.send_timeouts.inc();
                                tracing::debug!(%client, ?send_timeout, "an answer the client took nothing of within the send timeout; closing the connection");
                                Ok(())
                            }
                        }
                    };
                    if let Err(e) = result {
                        match e.downcast_ref::<hyper::Error>().filter(|e| e.is_parse()) {
                            Some(e) => counters.unparsed(client, e),
                            None => tracing::debug!(%client, error = %e, "client connection ended with an error"),
                        }
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
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

/// The admin endpoints.
pub fn admin(proxy: &Arc<Proxy>, req: &Request<Body>) -> Response<Body> {
    match req.uri().path() {
        "/live" => {
            let mut live = text(StatusCode::OK, "live\n");
            // Which pod answers: its address may be another's after it is gone (`peer_probe`).
            if let Ok(uid) = http::HeaderValue::from_str(&proxy.cfg.pod_uid) {
                live.headers_mut().insert(crate::peer_probe::POD_UID_HEADER, uid);
            }
            if let Some(reads) = proxy.app_reads().and_then(|r| http::HeaderValue::from_str(&r).ok()) {
                live.headers_mut().insert(crate::proxy::READS_HEADER, reads);
            }
            live
        }
        "/ready" => {
            if proxy.draining_since().is_some() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !proxy.app_ready() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo(req: Request<Body>, _: std::net::SocketAddr) -> Response<Body> {
        let line = format!("{} {} ", req.method(), req.uri());
        let body = crate::upstream::read_at_most(req.into_body(), 1 << 20).await.unwrap_or_default();
        Response::new(full([line.as_bytes(), &body].concat()))
    }

    /// Serves `handle` on `listener` (a few connections, short timeouts) until aborted.
    fn spawn_server<H, F>(listener: TcpListener, handle: H) -> tokio::task::JoinHandle<()>
    where
        H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let limits = ConnLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(500),
            keepalive_timeout: Duration::from_millis(500),
            send_timeout: Some(Duration::from_secs(5)),
            max_head_bytes: 64 * 1024,
        };
        tokio::spawn(serve(listener, handle, std::future::pending(), Duration::ZERO, limits, ConnCounters::default()))
    }

    /// `request` sent on a new connection to `addr`: everything answered until the connection
    /// closed.
    async fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
            .await
            .expect("the connection closed in time")
            .expect("read");
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// `request` sent on one connection to a listener serving `echo`.
    async fn exchange(request: &[u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = spawn_server(listener, echo);
        let reply = ask(addr, request).await;
        server.abort();
        reply
    }

    #[tokio::test]
    async fn requests_the_http1_path_leaves_are_served_by_hyper_on_the_same_connection() {
        let chunked = exchange(
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
              GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        let answers: Vec<&str> = chunked.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(answers.len(), 3, "{chunked}");
        for (answer, body) in answers.iter().zip(["GET /a ", "POST /b hi", "GET /c "]) {
            assert!(answer.ends_with(&format!("\r\n\r\n{body}")), "{answer}");
        }
    }

    #[tokio::test]
    async fn an_unspecified_ipv6_address_takes_clients_of_both_families_and_names_each_as_it_is() {
        // The handler answers with the client address it was given.
        async fn client_of(_: Request<Body>, client: SocketAddr) -> Response<Body> {
            Response::new(full(client.ip().to_string()))
        }
        let listener =
            handover_common::net::listen("[::]:0".parse().expect("an address")).await.expect("listen on [::]");
        let port = listener.local_addr().expect("addr").port();
        let server = spawn_server(listener, client_of);
        for (from, seen) in [(IpAddr::V4(Ipv4Addr::LOCALHOST), "127.0.0.1"), (IpAddr::V6(Ipv6Addr::LOCALHOST), "::1")] {
            let reply =
                ask(SocketAddr::new(from, port), b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
            // An IPv4 client is named by its IPv4 address, not as `::ffff:127.0.0.1`.
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with(&format!("\r\n\r\n{seen}")), "{reply}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_request_framed_two_ways_is_one_request_never_two() {
        // Content-Length says the rest is body; chunked says the body ends early and a second
        // request follows. hyper reads it one way only, whatever it answers.
        let reply = exchange(
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 33\r\ntransfer-encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(!reply.contains("/smuggled"), "{reply}");
        assert!(reply.matches("HTTP/1.1 ").count() == 1, "{reply}");
        let doubled = exchange(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 25\r\n\r\nxGET /smuggled HTTP/1.1\r\n\r\n").await;
        assert!(doubled.starts_with("HTTP/1.1 400 Bad Request\r\n") && !doubled.contains("/smuggled"), "{doubled}");
    }
}
