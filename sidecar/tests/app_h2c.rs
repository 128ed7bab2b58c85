//! The app side in h2c (`--app-protocol h2c`): a gRPC-shaped exchange from a real h2 client
//! (hyper's, and curl's `--http2-prior-knowledge`) through a real sidecar process to an app that
//! speaks HTTP/2 only (hyper's h2 server, so an HTTP/1.1 request could not reach it). The request
//! body and its trailers reach the app, the response streams back frame by frame (not buffered)
//! with its trailers (`grpc-status`) intact. And sessions of an h2c app work as for HTTP/1.1: the
//! demo app behind `--app-protocol h2c` keeps its count, and restores it after it crashed.

mod support;
use support::{Scratch, curl_head, field, pool_with, sidecar_for};

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use handover_lab::demo_app::CountReply;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(10);

/// A body whose frames (data, then trailers) are sent one by one through a channel.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).expect("a header value"));
    }
    map
}

/// The h2-only app. `/echo.Echo/Say` answers the request's body with `got:` before it, as soon as
/// the request is read, then waits for the test's word before its second frame and the trailers
/// (`grpc-status: 0`, a custom one, and the client's trailer as it arrived).
async fn start_h2_app(release: oneshot::Receiver<()>) -> SocketAddr {
    start_h2_app_with_connections(release).await.0
}

/// [`start_h2_app`], and the connections it accepted: their tasks (abort one: its connection
/// closes) and how many requests each served (the sidecar's app watcher holds one that serves
/// none).
async fn start_h2_app_with_connections(release: oneshot::Receiver<()>) -> (SocketAddr, Connections) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let release = std::sync::Arc::new(tokio::sync::Mutex::new(Some(release)));
    let connections = Connections::default();
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let release = release.clone();
            let served = std::sync::Arc::new(AtomicUsize::new(0));
            let counted = served.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let release = release.clone();
                counted.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, std::convert::Infallible>(answer(req, release).await) }
            });
            let task = tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
            accepted.lock().expect("lock").push((task, served));
        }
    });
    (addr, connections)
}

type Connections =
    std::sync::Arc<std::sync::Mutex<Vec<(tokio::task::JoinHandle<hyper::Result<()>>, std::sync::Arc<AtomicUsize>)>>>;

/// How many requests each connection that served any served, in the order they were accepted.
fn served(connections: &Connections) -> Vec<usize> {
    let list = connections.lock().expect("lock");
    list.iter().map(|(_, n)| n.load(Ordering::Relaxed)).filter(|n| *n > 0).collect()
}

async fn answer(
    req: Request<Incoming>,
    release: std::sync::Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
) -> Response<ChannelBody> {
    let te = req.headers().get(header::TE).cloned();
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let version = format!("{:?}", req.version());
    let collected = req.into_body().collect().await.expect("the request body");
    let client_trailer = collected.trailers().and_then(|t| t.get("x-client-trailer")).cloned();
    let message = collected.to_bytes();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut first = b"got:".to_vec();
        first.extend_from_slice(&message);
        let _ = tx.send(Frame::data(Bytes::from(first))).await;
        if let Some(release) = release.lock().await.take() {
            let _ = release.await;
        }
        let _ = tx.send(Frame::data(Bytes::from_static(b"second"))).await;
        let mut end = trailers(&[("grpc-status", "0"), ("x-custom-trailer", "kept")]);
        if let Some(v) = client_trailer {
            end.insert("x-seen-client-trailer", v);
        }
        let _ = tx.send(Frame::trailers(end)).await;
    });
    let mut resp = Response::new(ChannelBody(rx));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("x-seen-version", HeaderValue::from_str(&version).expect("a version"));
    if let Some(te) = te {
        headers.insert("x-seen-te", te);
    }
    if let Some(ct) = content_type {
        headers.insert("x-seen-content-type", ct);
    }
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_shaped_exchange_streams_through_with_its_trailers() {
    let dir = Scratch::new("app-h2c-hyper");
    let (release, released) = oneshot::channel();
    let app = start_h2_app(released).await;
    let (data, _, _sidecar) = sidecar_for(app, &dir, &[], &["--app-protocol", "h2c"]).await;

    let stream = tokio::net::TcpStream::connect(data).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let (body_tx, body_rx) = mpsc::channel(4);
    body_tx.send(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))).await.expect("send");
    body_tx.send(Frame::trailers(trailers(&[("x-client-trailer", "yes")]))).await.expect("send");
    drop(body_tx);
    let req = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri(format!("http://{data}/echo.Echo/Say"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(ChannelBody(body_rx))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.expect("headers in time").expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let h = resp.headers();
    assert_eq!(h.get("x-seen-version").map(|v| v.as_bytes()), Some(&b"HTTP/2.0"[..]), "the app was spoken to in h2");
    assert_eq!(h.get("x-seen-te").map(|v| v.as_bytes()), Some(&b"trailers"[..]), "te: trailers reached the app");
    assert_eq!(h.get("x-seen-content-type").map(|v| v.as_bytes()), Some(&b"application/grpc"[..]));
    assert_eq!(h.get(header::CONTENT_TYPE).map(|v| v.as_bytes()), Some(&b"application/grpc"[..]));

    let mut body = resp.into_body();
    // The app holds its second frame until told: a sidecar that buffered the stream would never
    // hand over the first.
    let first = tokio::time::timeout(WAIT, body.frame()).await.expect("the first frame unbuffered");
    let first = first.expect("a frame").expect("no error").into_data().expect("data");
    assert_eq!(&first[..], b"got:\0\0\0\0\x05hello", "the request body reached the app whole");
    release.send(()).expect("the app waits");
    let (mut rest, mut end) = (Vec::new(), None);
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame()).await.expect("the rest in time") {
        let frame = frame.expect("no error");
        match frame.into_data() {
            Ok(d) => rest.extend_from_slice(&d),
            Err(frame) => end = frame.into_trailers().ok(),
        }
    }
    assert_eq!(rest, b"second");
    let end = end.expect("the response trailers arrived");
    assert_eq!(end.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(end.get("x-custom-trailer").map(|v| v.as_bytes()), Some(&b"kept"[..]));
    assert_eq!(
        end.get("x-seen-client-trailer").map(|v| v.as_bytes()),
        Some(&b"yes"[..]),
        "the request trailers reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_http2_prior_knowledge_gets_the_grpc_trailers() {
    let dir = Scratch::new("app-h2c-curl");
    let (release, released) = oneshot::channel();
    // curl waits for the whole answer: the app need not wait for the test.
    let _ = release.send(());
    let app = start_h2_app(released).await;
    let (data, _, _sidecar) = sidecar_for(app, &dir, &[], &["--app-protocol", "h2c"]).await;
    let dump = dir.join("head").display().to_string();
    let url = format!("http://{data}/echo.Echo/Say");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20", "--http2-prior-knowledge", "-D", &dump])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "hello", &url])
            .output()
            .expect("curl is installed")
    })
    .await
    .expect("curl ran");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"got:hellosecond");
    // curl writes trailers where it writes the head.
    let head = std::fs::read_to_string(dir.join("head")).expect("the dumped head");
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/2 200"), "{head}");
    assert!(lower.contains("\r\ngrpc-status: 0\r\n"), "trailers intact: {head}");
    assert!(lower.contains("\r\nx-custom-trailer: kept\r\n"), "trailers intact: {head}");
    assert!(lower.contains("\r\nx-seen-te: trailers\r\n"), "{head}");
}

/// One gRPC-shaped call through the sidecar at `data` (a new client connection each time, as
/// separate clients): the response body, and its `grpc-status` trailer.
async fn call(data: SocketAddr, message: &'static [u8]) -> (Bytes, Option<HeaderValue>) {
    let stream = tokio::net::TcpStream::connect(data).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{data}/echo.Echo/Say"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(message)))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.expect("in time").expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = tokio::time::timeout(WAIT, resp.into_body().collect()).await.expect("in time").expect("body");
    let status = collected.trailers().and_then(|t| t.get("grpc-status")).cloned();
    (collected.to_bytes(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_share_one_app_connection_which_is_made_again_when_it_closes() {
    let dir = Scratch::new("app-h2c-multiplex");
    let (release, released) = oneshot::channel();
    let _ = release.send(());
    let (app, connections) = start_h2_app_with_connections(released).await;
    let (data, _, _sidecar) = sidecar_for(app, &dir, &[], &["--app-protocol", "h2c"]).await;
    let ok = Some(HeaderValue::from_static("0"));
    assert_eq!(call(data, b"a").await, (Bytes::from_static(b"got:asecond"), ok.clone()));
    let (b, c) = tokio::join!(call(data, b"b"), call(data, b"c"));
    assert_eq!(b, (Bytes::from_static(b"got:bsecond"), ok.clone()));
    assert_eq!(c, (Bytes::from_static(b"got:csecond"), ok.clone()));
    assert_eq!(served(&connections), [3], "one multiplexed connection to the app");
    // The app closes it (as at a restart, or an idle timeout): the next call gets a new one.
    for (task, n) in connections.lock().expect("lock").iter() {
        if n.load(Ordering::Relaxed) > 0 {
            task.abort();
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(call(data, b"d").await, (Bytes::from_static(b"got:dsecond"), ok));
    assert_eq!(served(&connections), [3, 1], "a new connection after the first closed");
    // The app watcher's idle connection reads past the SETTINGS an HTTP/2 server sends at once: it
    // stays, instead of being taken for a close and made again in a loop.
    let accepted = connections.lock().expect("lock").len();
    assert!(accepted <= 4, "{accepted} connections: the watcher reconnects in a loop");
}

fn count_of(body: &str) -> u64 {
    serde_json::from_str::<CountReply>(body).expect("a count reply").count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_app_keeps_and_restores_its_sessions() {
    let mut pool = pool_with(1, &["--app-protocol", "h2c"], &[]).await;
    let base = format!("http://{}", pool.pods[0].data());
    let dir = Scratch::new("app-h2c-session");
    let jar = dir.join("jar").display().to_string();
    let incr = format!("{base}/incr");
    let headers = format!("{base}/headers");
    for expected in 1..=3 {
        let (head, body) = curl_head(&["-c", &jar, "-b", &jar, "-X", "POST", incr.as_str()]);
        assert_eq!(count_of(&body), expected, "the session goes on");
        assert!(!field(&head, "set-cookie").is_empty(), "each change is sealed");
    }
    let (head, _) = curl_head(&["-b", &jar, headers.as_str()]);
    assert_eq!(field(&head, "demo-app-version"), ["HTTP/2.0"], "the sidecar spoke h2c to the app");
    // The app loses every session in memory; the cookie brings it back (`PUT <statePath>`).
    pool.crash_app(0).await;
    pool.restart_app(0).expect("the app starts again");
    let (_, body) = curl_head(&["-c", &jar, "-b", &jar, "-X", "POST", incr.as_str()]);
    assert_eq!(count_of(&body), 4, "the session was restored into the restarted app");
}

/// An h2-only app on the h2 crate's server (for control over its frames): it resets the first
/// `refuse` streams it sees with `REFUSED_STREAM` — "no processing has occurred" (RFC 9113 §8.7),
/// what a server over its stream limit answers — and answers every other one `200` with the body
/// it received after `served `. Returns its address and the streams it saw.
async fn start_refusing_app(refuse: usize) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let streams = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let streams = streams.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((request, respond))) = conn.accept().await {
                    if streams.fetch_add(1, Ordering::SeqCst) < refuse {
                        let mut respond = respond;
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    tokio::spawn(answer_with_body(request, respond));
                }
            });
        }
    });
    (addr, seen)
}

/// Answers `request` `200` with `served ` and the body it carried.
async fn answer_with_body(request: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut received = b"served ".to_vec();
    let mut body = request.into_body();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    let head = Response::builder().status(StatusCode::OK).body(()).expect("a response head");
    if let Ok(mut out) = respond.send_response(head, false) {
        let _ = out.send_data(Bytes::from(received), true);
    }
}

async fn curl_in_thread(args: Vec<String>) -> (Vec<(String, String)>, String) {
    tokio::task::spawn_blocking(move || curl_head(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("curl ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_app_refuses_is_sent_again_when_its_body_is_whole() {
    let dir = Scratch::new("app-h2c-refused");
    let (app, seen) = start_refusing_app(2).await;
    let (data, _, _sidecar) = sidecar_for(app, &dir, &[], &["--app-protocol", "h2c"]).await;
    let log = || std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default();
    let (head, body) = curl_in_thread(vec![format!("http://{data}/page")]).await;
    assert_eq!(body, "served ", "{head:?}\n{}", log());
    assert_eq!(seen.load(Ordering::SeqCst), 3, "two refused streams, then the one answered");
    // A POST's body, all of it read from the client's HTTP/1.1 connection, goes again with it.
    seen.store(1, Ordering::SeqCst);
    let form = vec!["--data-binary".into(), "x=1".into(), format!("http://{data}/form")];
    let (head, body) = curl_in_thread(form).await;
    assert_eq!(body, "served x=1", "{head:?}\n{}", log());
    assert_eq!(seen.load(Ordering::SeqCst), 3, "one refused stream, then the one answered");
    // A body still arriving (chunked: its end unknown) cannot be sent twice: the app's refusal is
    // the client's 502 (nothing was processed: its client may send it again).
    seen.store(1, Ordering::SeqCst);
    let chunked = vec![
        "-H".into(),
        "Transfer-Encoding: chunked".into(),
        "--data-binary".into(),
        "x=1".into(),
        format!("http://{data}/form"),
    ];
    let (head, body) = curl_in_thread(chunked).await;
    assert!(body.contains("the application failed while answering"), "{head:?} {body}");
}

/// An h2-only app whose first connection, once a request's HEADERS arrive, sends a GOAWAY that
/// names no stream as processed (last stream 0, `NO_ERROR`: "might be retried", RFC 9113 §6.8) —
/// a server shutting down as that request came in — and closes when the client does. Written
/// frame by frame: the h2 crate's server counts every stream it received as processed. Every later
/// connection is [`answer_with_body`]'s. Returns its address and the connections that spoke (the
/// sidecar's watch on the app, which never does, apart).
async fn start_going_away_app() -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    /// The client's connection preface, before its first frame (RFC 9113 §3.4).
    const PREFACE: usize = 24;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let spoke = std::sync::Arc::new(AtomicUsize::new(0));
    let connections = spoke.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let connections = connections.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if !matches!(socket.peek(&mut first).await, Ok(1..)) {
                    return;
                }
                if connections.fetch_add(1, Ordering::SeqCst) > 0 {
                    let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        tokio::spawn(answer_with_body(request, respond));
                    }
                    return;
                }
                // SETTINGS (none changed).
                let _ = socket.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await;
                let (mut read, mut at, mut chunk) = (Vec::new(), PREFACE, [0u8; 4096]);
                loop {
                    let n = match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    read.extend_from_slice(&chunk[..n]);
                    // Each whole frame: a 9-byte head (length, type, flags, stream), its payload.
                    while read.len() >= at + 9 {
                        let len =
                            usize::from(read[at]) << 16 | usize::from(read[at + 1]) << 8 | usize::from(read[at + 2]);
                        if read.len() < at + 9 + len {
                            break;
                        }
                        let (kind, flags) = (read[at + 3], read[at + 4]);
                        at += 9 + len;
                        if kind == SETTINGS && flags & ACK == 0 {
                            let _ = socket.write_all(&[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]).await;
                        } else if kind == HEADERS {
                            // Last stream 0, error code 0 (NO_ERROR).
                            let goaway = [0, 0, 8, GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                            let _ = socket.write_all(&goaway).await;
                        }
                    }
                }
            });
        }
    });
    (addr, spoke)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_apps_goaway_left_unprocessed_is_sent_again() {
    let dir = Scratch::new("app-h2c-goaway");
    let (app, spoke) = start_going_away_app().await;
    let (data, _, _sidecar) = sidecar_for(app, &dir, &[], &["--app-protocol", "h2c"]).await;
    let log = || std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default();
    let form = vec!["--data-binary".into(), "x=1".into(), format!("http://{data}/form")];
    let (head, body) = curl_in_thread(form).await;
    assert_eq!(body, "served x=1", "{head:?}\n{}", log());
    assert_eq!(spoke.load(Ordering::SeqCst), 2, "the connection that went away, then a new one");
    // The next request takes the new connection.
    let (head, body) = curl_in_thread(vec![format!("http://{data}/page")]).await;
    assert_eq!(body, "served ", "{head:?}\n{}", log());
    assert_eq!(spoke.load(Ordering::SeqCst), 2, "no other connection");
}

/// Answers of `/big` (3 MiB) and `/small` from an h2-only app.
async fn start_big_answers_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = if req.uri().path() == "/big" {
                    Bytes::from(vec![b'x'; 3 << 20])
                } else {
                    Bytes::from_static(b"ok")
                };
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(body)))
            });
            let serve = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::spawn(serve);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_large_answers_unread_do_not_stall_another_clients_answer() {
    // Every client's streams share the sidecar's one h2c connection to the app: an answer left
    // unread holds its stream's share of that connection's window, which must not run out.
    let dir = Scratch::new("app-h2c-unread");
    let app = start_big_answers_app().await;
    let (data, _, _sidecar) = sidecar_for(app, &dir, &[], &["--app-protocol", "h2c"]).await;
    let stream = tokio::net::TcpStream::connect(data).await.expect("connect");
    // The HTTP/2 default window, never opened further: the answers are not read.
    let (mut unread, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535 * 4)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..3 {
        let req = Request::builder().uri(format!("http://{data}/big")).body(http_body_util::Empty::<Bytes>::new());
        let resp = tokio::time::timeout(WAIT, unread.send_request(req.expect("request"))).await.expect("in time");
        held.push(resp.expect("the answer's head"));
    }
    let stream = tokio::net::TcpStream::connect(data).await.expect("connect");
    let (mut other, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder().uri(format!("http://{data}/small")).body(http_body_util::Empty::<Bytes>::new());
    let resp = tokio::time::timeout(WAIT, other.send_request(req.expect("request"))).await.expect("in time");
    let body = tokio::time::timeout(WAIT, resp.expect("an answer").into_body().collect())
        .await
        .expect("another client's answer is not held behind the unread ones")
        .expect("body");
    assert_eq!(body.to_bytes(), Bytes::from_static(b"ok"));
    drop(held);
}
