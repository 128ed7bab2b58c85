//! HTTP/2 on the data port: h2c with prior knowledge (as ingresses and meshes speak it to pods)
//! next to HTTP/1.1 on the same port, with real clients — curl and hyper's HTTP/2 client — and
//! the cookie split over several `cookie` fields (RFC 9113 §8.2.3) joined before it is opened.

mod support;
use support::{curl_head, field, pool_with};

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use handover_lab::demo_app::CountReply;
use http::{Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn count_of(body: &[u8]) -> u64 {
    serde_json::from_slice::<CountReply>(body).expect("a count reply").count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_http2_prior_knowledge_keeps_its_session_on_the_http1_port() {
    let pool = pool_with(1, &[], &[]).await;
    let url = format!("http://{}/incr", pool.pods[0].data());
    let dir = std::env::temp_dir().join(format!("handover-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
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
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c");
    tokio::spawn(conn);
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
