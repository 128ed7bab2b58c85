//! HTTP/2 on the data port: h2c with prior knowledge (as ingresses and meshes speak it to pods)
//! next to HTTP/1.1 on the same port, with real clients — curl and hyper's HTTP/2 client — and
//! the cookie split over several `cookie` fields (RFC 9113 §8.2.3) joined before it is opened.

mod support;
use support::{Scratch, curl_head, field, pool_with};

use std::collections::BTreeMap;
use std::future::Future as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use handover_lab::demo_app::CountReply;
use handover_lab::localpool::wait_for;
use http::{Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn count_of(body: &[u8]) -> u64 {
    serde_json::from_slice::<CountReply>(body).expect("a count reply").count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_http2_prior_knowledge_keeps_its_session_on_the_http1_port() {
    let pool = pool_with(1, &[], &[]).await;
    let url = format!("http://{}/incr", pool.pods[0].data());
    let dir = Scratch::new("h2");
    let jar = dir.join("jar").display().to_string();
    for expected in 1..=3 {
        let (head, body) = curl_head(&["--http2-prior-knowledge", "-c", &jar, "-b", &jar, "-X", "POST", url.as_str()]);
        assert_eq!(count_of(body.as_bytes()), expected, "the session goes on over HTTP/2");
        assert!(!field(&head, "set-cookie").is_empty(), "each change is sealed");
    }
    let status = std::process::Command::new("curl")
        .args(["--silent", "--output", "/dev/null", "--write-out", "%{http_version}", "--http2-prior-knowledge"])
        .arg(&url)
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "2", "curl spoke HTTP/2");
    // The same port still speaks HTTP/1.1.
    let (_, body) = curl_head(&["--http1.1", "-X", "POST", url.as_str()]);
    assert_eq!(count_of(body.as_bytes()), 1, "a new HTTP/1.1 session");
}

/// An h2c connection to `addr` (prior knowledge) with hyper's client: its sender, and the task
/// that drives it (it ends when the connection closes).
async fn h2c<B>(
    addr: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<B>, tokio::task::JoinHandle<Result<(), hyper::Error>>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c");
    (sender, tokio::spawn(conn))
}

/// One HTTP/2 request with these `cookie` fields, each its own field.
async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    cookies: &[String],
) -> (StatusCode, Vec<String>, Bytes) {
    let mut req = Request::builder().method(method).version(Version::HTTP_2).uri(format!("http://{addr}{path}"));
    for c in cookies {
        req = req.header(header::COOKIE, c.as_str());
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::new())).expect("request")).await.expect("response");
    assert_eq!(resp.version(), Version::HTTP_2);
    let status = resp.status();
    let set_cookies = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").split(';').next().unwrap_or("").to_owned())
        .collect();
    (status, set_cookies, resp.into_body().collect().await.expect("body").to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_split_over_several_http2_fields_are_joined_for_the_session_and_the_app() {
    // A state large enough for a routing cookie and state chunks: several cookies to split.
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let (mut sender, _conn) = h2c(addr).await;
    let (status, mut jar, body) = h2_request(&mut sender, addr, Method::POST, "/blob?bytes=3000", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(jar.len() >= 2, "a routing cookie and state chunks: {jar:?}");
    assert_eq!(count_of(&body), 0);
    // Each cookie its own field, as browsers send them over HTTP/2, with one of the site's own.
    jar.push("site=1".to_owned());
    let (status, _, body) = h2_request(&mut sender, addr, Method::POST, "/incr", &jar).await;
    assert_eq!(status, StatusCode::OK);
    let reply: CountReply = serde_json::from_slice(&body).expect("a count");
    assert_eq!(reply.blob_bytes, 3000, "the session was found from the split cookie fields");
    assert_eq!(reply.count, 1);
    // The app (over HTTP/1.1) sees one Cookie line with the site's cookie, never the state cookie.
    let (_, _, body) = h2_request(&mut sender, addr, Method::GET, "/headers", &jar).await;
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).expect("headers");
    assert_eq!(seen.get("cookie"), Some(&vec!["site=1".to_owned()]), "{seen:?}");
    assert_eq!(seen.get("host").map(Vec::len), Some(1), "the authority became the Host field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_with_no_request_in_flight_is_closed_at_the_header_then_keepalive_timeout() {
    // A client that opens HTTP/2 connections and sends nothing more would otherwise hold the pod's
    // connection slots for good: a preface (and its SETTINGS) and then silence...
    let pool = pool_with(1, &["--header-timeout", "300ms", "--keepalive-timeout", "600ms"], &[]).await;
    let addr = pool.pods[0].data();
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    silent.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut seen)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "closed by the sidecar, not left open: {read:?}");
    // ... or a connection kept open after its last answer, past the keep-alive timeout.
    let (mut sender, conn) = h2c(addr).await;
    let (status, _, _) = h2_request(&mut sender, addr, Method::POST, "/incr", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the idle connection was closed by the sidecar");
    drop(sender);
}

/// A request body whose one byte comes after `delay`: a request in flight that long.
struct Late {
    delay: std::pin::Pin<Box<tokio::time::Sleep>>,
    sent: bool,
}

impl hyper::body::Body for Late {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.sent {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.delay.as_mut().poll(cx));
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"x")))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_in_flight_past_the_header_timeout_is_not_cut() {
    // The idle timeout counts only while no request is in flight: a slow upload (within the body
    // timeouts) is answered on its connection.
    let pool = pool_with(1, &["--header-timeout", "300ms", "--body-idle-timeout", "30s"], &[]).await;
    let addr = pool.pods[0].data();
    let (mut sender, _conn) = h2c(addr).await;
    // Five header timeouts before the body's byte.
    let body = Late { delay: Box::pin(tokio::time::sleep(Duration::from_millis(1500))), sent: false };
    let req = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}/incr"))
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("an answer within 20 s")
        .expect("the request's connection stayed open");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(count_of(&body), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_keeps_its_stream_window_shut_is_cut_at_the_send_timeout() {
    // It reads its socket (and answers pings) but never takes the answer's bytes: hyper's client
    // opens the stream's window only as the body is read, and this body is never read.
    let pool = pool_with(1, &["--send-timeout", "500ms"], &[]).await;
    let addr = pool.pods[0].data();
    let (mut sender, conn) = h2c(addr).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}/download?mib=32"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("the answer's head");
    assert_eq!(resp.status(), StatusCode::OK);
    wait_for("the send timeout, counted", Duration::from_secs(20), || async {
        pool.metric(r#"handover_bad_requests_total{reason="send_timeout"}"#).await >= 1.0
    })
    .await
    .expect("the sidecar stops waiting for the client");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the connection was closed by the sidecar");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.expect("the body ends");
    assert!(body.is_err() || body.is_ok_and(|b| b.to_bytes().len() < 32 << 20), "the answer was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_host_field_that_differs_from_the_authority_does_not_reach_the_app() {
    // RFC 9113, 8.3.1: `:authority` names the host; a Host field that says otherwise is not passed on.
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let (mut sender, _conn) = h2c(addr).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}/headers"))
        .header(header::HOST, "evil.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).expect("headers");
    assert_eq!(seen.get("host"), Some(&vec![addr.to_string()]), "{seen:?}");
}

/// A request to `/incr` with a head of about 60 KB: one 4 KB field fifteen times (HPACK sends it
/// once, then as an index).
fn large_head<B>(addr: SocketAddr, body: B) -> Request<B> {
    let value = "v".repeat(4000);
    let mut req = Request::builder().method(Method::POST).version(Version::HTTP_2).uri(format!("http://{addr}/incr"));
    for _ in 0..15 {
        req = req.header("x-pad", value.as_str());
    }
    req.body(body).expect("request")
}

/// `sent` requests made by `request` on `holding`, each with a body that never comes (each stays
/// in flight until refused); how many were refused with a 503 and `Retry-After: 1` so far (a 503
/// without it is not counted), and their tasks.
fn hold(
    holding: &mut hyper::client::conn::http2::SendRequest<Late>,
    sent: usize,
    request: impl Fn(Late) -> Request<Late>,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut pending = Vec::new();
    for _ in 0..sent {
        let never = Late { delay: Box::pin(tokio::time::sleep(Duration::from_secs(3600))), sent: false };
        let answer = holding.send_request(request(never));
        let unavailable = Arc::clone(&unavailable);
        pending.push(tokio::spawn(async move {
            if let Ok(resp) = answer.await
                && resp.status() == StatusCode::SERVICE_UNAVAILABLE
                && resp.headers().get(header::RETRY_AFTER).is_some_and(|v| v == "1")
            {
                unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    (unavailable, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_heads_held_over_http2_are_bounded_by_the_heads_in_flight_budget() {
    // Requests whose bodies never come hold their heads until the body timeouts: over HTTP/2, up to
    // 200 of them a connection, each 60 KB head a few hundred bytes on the wire.
    const BUDGET: usize = 300_000;
    const SENT: usize = 20;
    let pool = pool_with(1, &["--max-header-bytes-in-flight", "300000", "--body-idle-timeout", "60s"], &[]).await;
    let addr = pool.pods[0].data();
    let (mut holding, holding_conn) = h2c::<Late>(addr).await;
    // 60 140 bytes a head as a proxy's limit counts them: four fit the budget.
    const FIT: usize = 4;
    let (unavailable, pending) = hold(&mut holding, SENT, |never| large_head(addr, never));
    // Those past the budget are refused at once; the others stay held, their bodies awaited.
    wait_for("the requests past the budget, refused with 503", Duration::from_secs(20), || async {
        unavailable.load(Ordering::Relaxed) >= SENT - FIT
    })
    .await
    .expect("the requests past the budget refused");
    let refused = pool.metric(r#"handover_bad_requests_total{reason="heads_in_flight"}"#).await;
    assert_eq!(refused, (SENT - FIT) as f64, "refusals counted; {FIT} heads of 60 KB held within {BUDGET} bytes");
    // A small request still goes through meanwhile.
    let (head, body) = curl_head(&["--http2-prior-knowledge", "-X", "POST", &format!("http://{addr}/incr")]);
    assert_eq!(count_of(body.as_bytes()), 1, "{head:?}");
    // The held requests' connection goes: their heads are given back, and a large head is served.
    pending.iter().for_each(tokio::task::JoinHandle::abort);
    holding_conn.abort();
    drop(holding);
    let (mut sender, _conn) = h2c(addr).await;
    wait_for("a large head served once the held ones are gone", Duration::from_secs(20), || {
        let req = large_head(addr, Full::new(Bytes::new()));
        let answer = sender.send_request(req);
        async move { answer.await.is_ok_and(|resp| resp.status() == StatusCode::OK) }
    })
    .await
    .expect("the budget is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_take_slots_of_the_connection_cap() {
    // A stream in flight holds an app connection and its buffers as a connection does, and hyper
    // lets a client open 200 on one connection: each takes a slot of --max-connections beside its
    // connection's, and one more while its body arrives, so the cap's bounds on open files and
    // memory hold for streams too.
    const CAP: usize = 8;
    const SENT: usize = 12;
    let pool = pool_with(1, &["--max-connections", &CAP.to_string(), "--body-idle-timeout", "60s"], &[]).await;
    let addr = pool.pods[0].data();
    let (mut holding, holding_conn) = h2c::<Late>(addr).await;
    // The connection holds one slot (the local pool's own checks use the admin port); each stream
    // two, its body still arriving.
    const FIT: usize = (CAP - 1) / 2;
    let (unavailable, pending) = hold(&mut holding, SENT, |never| {
        let req = Request::builder().method(Method::POST).version(Version::HTTP_2).uri(format!("http://{addr}/incr"));
        req.body(never).expect("request")
    });
    // Those past the cap are refused at once; the others stay in flight, their bodies awaited.
    wait_for("the streams past the cap, refused with 503", Duration::from_secs(20), || async {
        unavailable.load(Ordering::Relaxed) >= SENT - FIT
    })
    .await
    .expect("the streams past the cap refused");
    let refused = pool.metric(r#"handover_bad_requests_total{reason="over_cap"}"#).await;
    assert_eq!(refused, (SENT - FIT) as f64, "refusals counted; {FIT} streams held in {CAP} slots");
    // The held streams' connection goes: their slots come back, and a new connection is served.
    pending.iter().for_each(tokio::task::JoinHandle::abort);
    holding_conn.abort();
    drop(holding);
    wait_for("a stream served once the held ones are gone", Duration::from_secs(20), || async move {
        // Closed at once while the slots are still held.
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else { return false };
        let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
        let Ok((mut sender, conn)) = handshake.await else { return false };
        tokio::spawn(conn);
        let req = Request::builder().method(Method::POST).version(Version::HTTP_2).uri(format!("http://{addr}/incr"));
        let answer = sender.send_request(req.body(Full::new(Bytes::new())).expect("request"));
        answer.await.is_ok_and(|resp| resp.status() == StatusCode::OK)
    })
    .await
    .expect("the slots are given back");
}

/// A request body that sends ten bytes, then fails: hyper's client resets the stream.
struct BreaksOff {
    sent: bool,
}

impl hyper::body::Body for BreaksOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.sent {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other("the client gives up"))));
        }
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"ten bytes.")))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_its_client_resets_mid_body_is_counted_as_abandoned() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let (mut sender, _conn) = h2c(addr).await;
    let req = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}/incr"))
        .header(header::CONTENT_LENGTH, "100")
        .body(BreaksOff { sent: false })
        .expect("request");
    let _ = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.expect("settled in 10 s");
    wait_for("the reset stream to be counted", Duration::from_secs(10), || async {
        pool.metric("handover_requests_abandoned_total").await == 1.0
    })
    .await
    .expect("counted as a request its client gave up on");
    // One answered is not.
    let (mut sender, _conn) = h2c(addr).await;
    let (status, _, body) = h2_request(&mut sender, addr, Method::POST, "/incr", &[]).await;
    assert_eq!((status, count_of(&body)), (StatusCode::OK, 1));
    assert_eq!(pool.metric("handover_requests_abandoned_total").await, 1.0);
}
