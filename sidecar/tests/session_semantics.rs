//! Session semantics that browsers, caches and apps rely on, with real processes and real clients:
//! a session exists once the app gives it state; a request that carries no cookie (a static file,
//! a bot, a cross-site return under `SameSite=Lax`) gets none and never overwrites the client's.

mod support;
use support::{Scratch, exe};

use std::net::SocketAddr;
use std::path::Path;

use handover_dataplane::decide::Mode;
use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{LocalPool, PoolOptions, SessionClient};
use http::{Method, StatusCode, header};

async fn pool_in(mode: Mode, pods: usize) -> LocalPool {
    let mut opts = PoolOptions::new(exe(), pods);
    opts.mode = mode;
    LocalPool::start(opts).await.expect("pool starts")
}

fn set_cookies(headers: &http::HeaderMap) -> Vec<String> {
    headers.get_all(header::SET_COOKIE).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

fn count_of(body: &[u8]) -> CountReply {
    serde_json::from_slice(body).expect("a count reply")
}

/// Runs curl with `args` (its output: the response head and body); fails the test if curl is
/// missing or exits non-zero.
fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install -y curl)");
    assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `name value` pairs of a curl (Netscape format) cookie jar.
/// The (name, value) pairs of curl's jar, sorted (curl writes them in no fixed order).
fn jar_cookies(jar: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(jar).unwrap_or_default();
    let mut cookies: Vec<(String, String)> = text
        .lines()
        // `#HttpOnly_` marks HttpOnly cookies; other `#` lines are comments.
        .map(|l| l.strip_prefix("#HttpOnly_").unwrap_or(l))
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            (fields.len() == 7).then(|| (fields[5].to_owned(), fields[6].to_owned()))
        })
        .collect();
    cookies.sort();
    cookies
}

fn head_has_set_cookie(head: &str) -> bool {
    head.lines().any(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn requests_without_state_get_no_cookie(mode: Mode) {
    let pool = pool_in(mode, 1).await;
    let addr = pool.pods[0].data();
    for (method, path) in
        [(Method::GET, "/static/site.css"), (Method::GET, "/"), (Method::GET, "/count"), (Method::POST, "/return")]
    {
        let mut client = SessionClient::default();
        let reply = client.send(|| Some(addr), method.clone(), path).await.expect("reply");
        assert_eq!(reply.status, StatusCode::OK, "{method} {path}");
        assert_eq!(set_cookies(&reply.headers), Vec::<String>::new(), "{mode:?}: {method} {path} minted a cookie");
    }
    // The app still sees a session id on every request, a fresh one each time.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut client = SessionClient::default();
        let reply = client.send(|| Some(addr), Method::GET, "/headers").await.expect("reply");
        let seen: std::collections::BTreeMap<String, Vec<String>> =
            serde_json::from_slice(&reply.body).expect("headers");
        ids.push(seen.get("handover-session").and_then(|v| v.first()).cloned().expect("a Handover-Session id"));
    }
    assert_ne!(ids[0], ids[1], "each cookieless request is a session of its own");
    assert_eq!(pool.metric("handover_snapshots_total").await, 0.0, "{mode:?}: nothing was sealed");
    assert_eq!(pool.metric("handover_sessions ").await, 0.0, "{mode:?}: no session in the table");

    // The first request that gives the session state mints it.
    let mut client = SessionClient::default();
    let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    assert_eq!(
        set_cookies(&reply.headers).len(),
        1,
        "{mode:?}: a session with state gets its route, the small state inside"
    );
    let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    assert_eq!(count_of(&reply.body).count, 2, "{mode:?}: and goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mode_requests_without_state_pass_through_with_no_cookie() {
    requests_without_state_get_no_cookie(Mode::Push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_requests_without_state_pass_through_with_no_cookie() {
    // A cookieless request is pulled once, for its new id: sealed only if the app has state.
    requests_without_state_get_no_cookie(Mode::Pull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_return_without_the_cookie_leaves_curls_cookie_alone() {
    let pool = pool_in(Mode::Push, 1).await;
    let addr = pool.pods[0].data();
    let dir = Scratch::new("curl");
    let jar = dir.join("jar");
    let jar_arg = jar.to_str().expect("utf-8 path");
    for _ in 0..3 {
        curl(&["-c", jar_arg, "-b", jar_arg, "-X", "POST", &url(addr, "/incr")]);
    }
    let before = jar_cookies(&jar);
    assert_eq!(before.len(), 1, "curl holds the session's route, its small state inside: {before:?}");

    // The payment provider's form post comes back without the cookie (SameSite=Lax), with a
    // static asset and a bot's visit for company: none of them gives state, none sets a cookie.
    let posted = curl(&["-i", "-X", "POST", "--data", "PaRes=eJzL&MD=42", &url(addr, "/return")]);
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
    assert!(!head_has_set_cookie(&posted), "a cross-site return minted a cookie:\n{posted}");
    for path in ["/static/site.css", "/", "/count"] {
        let got = curl(&["-i", "-A", "Googlebot/2.1", &url(addr, path)]);
        assert!(!head_has_set_cookie(&got), "GET {path} minted a cookie:\n{got}");
    }
    // The same requests through the jar (a browser that did send the cookie) leave it as it is.
    curl(&["-c", jar_arg, "-b", jar_arg, "-X", "POST", "--data", "x=1", &url(addr, "/return")]);
    assert_eq!(jar_cookies(&jar), before, "a request that changed nothing changed the cookie");

    let next = curl(&["-c", jar_arg, "-b", jar_arg, "-X", "POST", &url(addr, "/incr")]);
    assert_eq!(count_of(next.as_bytes()).count, 4, "the client's session went on: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pushed_state_deletes_the_cookie() {
    let pool = pool_in(Mode::Push, 1).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    assert_eq!(client.jar.len(), 1, "the route, the small state inside: {:?}", client.jar);
    let reply = client.send(|| Some(addr), Method::POST, "/clear").await.expect("reply");
    let lines = set_cookies(&reply.headers);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("Max-Age=0")), "the cookies are expired: {lines:?}");
    assert!(client.jar.is_empty(), "the client holds no state cookie: {:?}", client.jar);
    let reply = client.send(|| Some(addr), Method::GET, "/count").await.expect("reply");
    assert_eq!(count_of(&reply.body).count, 0, "a fresh session");
    assert!(set_cookies(&reply.headers).is_empty());
}
