//! Parsing differentials between the sidecar, the proxies in front of it (a real HAProxy) and the
//! app behind it: what one of them reads out of a request must be what the next one reads. Each
//! test says what must still hold and checks it.
//!
//! Needs HAProxy (`apt-get install -y haproxy`) where a differential with it is the point; without
//! it those tests say so loudly and pass, unless `HANDOVER_REQUIRE_HAPROXY` is set.

mod support;
use support::raw::{ask_tunnel, exchange};
use support::{Haproxy, haproxy_or_skip, pool_with};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HAProxy passes on every option of a client's `Connection` field but `close` and `keep-alive`
/// (2.6, as Debian ships it), and removes none of the fields they name: a client behind it could
/// name the fields HAProxy sets (`X-Real-IP`, `X-Forwarded-Host`, …) and have the sidecar remove
/// them as hop-by-hop, so that the app finds no address vouched for (and falls back to its
/// socket's peer, the sidecar on its loopback) — Traefik's CVE-2024-45410. The fields a proxy
/// vouches for reach the app; a field of the client's own that it names is still removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_connection_field_cannot_name_away_what_a_proxy_in_front_vouches_for() {
    let Some(bin) = haproxy_or_skip("the Connection-field test behind HAProxy") else {
        return;
    };
    let pool = pool_with(1, &[], &[]).await;
    let vouched = "    http-request set-header X-Real-IP %[src]\n    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n    http-request set-header X-Forwarded-Port %[dst_port]\n";
    let front = Haproxy::start_forwarding_with(&bin, &[pool.pods[0].data()], vouched).await;
    let request = "GET /headers HTTP/1.1\r\nHost: shop.example\r\n\
        Connection: close, X-Real-IP, X-Forwarded-Host, X-Forwarded-Port, X-Forwarded-For, X-Private\r\n\
        X-Private: the client's own\r\n\r\n";
    let (status, head, body) = exchange(front.addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{head}\nHAProxy's log:\n{}", front.log());
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).expect("the app's headers");
    let port = front.addr.port().to_string();
    for (name, value) in
        [("x-real-ip", "127.0.0.1"), ("x-forwarded-host", "shop.example"), ("x-forwarded-port", port.as_str())]
    {
        assert_eq!(seen.get(name), Some(&vec![value.to_owned()]), "{name}: {seen:?}");
    }
    let xff = seen.get("x-forwarded-for").map(|v| v.concat()).unwrap_or_default();
    assert!(xff.starts_with("127.0.0.1, "), "HAProxy's entry, then the sidecar's: {xff}");
    assert!(!seen.contains_key("x-private"), "a field of the client's own is still hop-by-hop: {seen:?}");
    assert!(!seen.contains_key("connection"), "{seen:?}");
}

/// An `Upgrade` in an HTTP/1.0 request is ignored (RFC 9110, 7.8: a server MUST): no 101 to it,
/// and none reaches the app. Before, the sidecar asked the app to switch, answered its client
/// `HTTP/1.0 101` with a connection it then closed (hyper's server never switches an HTTP/1.0
/// connection), and the app's switched connection was dropped with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_asked_over_http_1_0_is_ignored_and_the_request_served_as_it_is() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let (status, head, _) =
        exchange(addr, b"GET /echo HTTP/1.0\r\nHost: demo\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await;
    assert_ne!(status, 101, "{head}");
    let (status, head, body) =
        exchange(addr, b"GET /headers HTTP/1.0\r\nHost: demo\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await;
    assert_eq!(status, 200, "{head}");
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).expect("the app's headers");
    assert!(!seen.contains_key("upgrade") && !seen.contains_key("connection"), "{seen:?}");
    // Over HTTP/1.1 the same request still switches.
    let (mut stream, head) = ask_tunnel(addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo)).await.expect("echo").expect("echo");
    assert_eq!(&echo, b"ping");
}

/// An app of the test's own that answers each request head on a connection (bodiless requests
/// only) with the bytes its path names in `answers`, keeping the connection open.
async fn scripted_app(answers: &'static [(&'static str, &'static [u8])]) -> SocketAddr {
    support::app_of_own(move |mut stream| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or_default();
                let answer = answers
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map_or(&b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"[..], |(_, a)| a);
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// The sidecar's own HTTP/1.1 path writes an app's answer head as hyper's server, which serves
/// the rest (an `Expect`, a chunked body, HTTP/1.0), writes it: one `Content-Length` when the app
/// sent the same one twice (two are a framing a client or proxy may refuse, RFC 9112 6.3), and
/// none on a 204 (RFC 9110 8.6: a server MUST NOT send one there). Before, the fast path passed the
/// app's fields on as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http1_paths_frame_an_apps_answer_alike() {
    const ANSWERS: &[(&str, &[u8])] = &[
        ("/twice", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello"),
        ("/no-content", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
    ];
    let dir = support::Scratch::new("smuggling-framing");
    let app = scripted_app(ANSWERS).await;
    let (data, _, _sidecar) = support::sidecar_for(app, &dir, &[], &[]).await;
    for (path, lengths, body) in [("/twice", 1, &b"hello"[..]), ("/no-content", 0, b"")] {
        // Without and with an `Expect` (hyper's path), on a connection the answer may keep open.
        for expect in ["", "Expect: 100-continue\r\n"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n{expect}Connection: close\r\n\r\n");
            let (_, head, got) = exchange(data, request.as_bytes()).await;
            let count = head.lines().filter(|l| l.to_ascii_lowercase().starts_with("content-length:")).count();
            assert_eq!(count, lengths, "{path}, {expect:?}: {head}");
            assert_eq!(got, body, "{path}, {expect:?}: {head}");
        }
    }
}
