//! The state cookie on the real path (issue 13): a local pool of 3 pods behind a real nginx at
//! ingress-nginx's defaults (`proxy_buffer_size 4k`, `large_client_header_buffers 4 8k`) and
//! behind a real HAProxy at its defaults, with 2 KB of the site's other cookies on every request.
//! For states from 0.5 KB to past the header budget (random characters, so compression does not
//! hide their size):
//! - every request answers the app's status (200) — never the proxy's 502 or 400;
//! - a state the sidecar does not seal says so (`Handover-Warning`) and leaves the client's state
//!   cookie as it was; small states (up to 2 KB) are always sealed, a 20 KB one never is;
//! - the session goes on;
//! - after its owner pod is SIGKILLed, a session comes back with exactly its last sealed state:
//!   the newest if it was accepted, the one before it if it was refused — never a fresh session.
//!
//! And curl as the client (its cookie jar, sequential requests), behind that nginx with its
//! `proxy-buffer-size` raised to 16k and the pool's response budget raised to match, so that the
//! request budget (8192, curl's 8190 bytes of cookies) is what binds: states near it are sealed
//! only if curl will send them whole — curl never has to leave a cookie out — and after the
//! owner's death the session has its last sealed state.
//!
//! And curl behind a plain nginx at nginx's own proxy defaults (`proxy_pass` and nothing else):
//! HTTP/1.0 to the pods, `Connection: close`, a new connection for every request, round robin —
//! the sidecar's HTTP/1.0 path, as most hand-written nginx configurations reach it.
//!
//! Needs nginx and haproxy (`apt-get install -y nginx-light haproxy`); without them the tests say
//! so loudly and pass, unless `HANDOVER_REQUIRE_NGINX` / `HANDOVER_REQUIRE_HAPROXY` is set.

use std::net::SocketAddr;
use std::time::Duration;

mod support;
use support::client::{Answer, Conn, Jar, jar_with, state_chunks};
use support::{Haproxy, Nginx, exe, site_cookies};

use handover_lab::localpool::{LocalPool, PoolOptions};
use http::Method;

/// State sizes (bytes of blob), from well inside the budget to past any default.
const SIZES: &[usize] = &[512, 1024, 2048, 3072, 3584, 4096, 6144, 9216, 20000];
/// States this small must always be sealed by default (a budget that refuses them is useless).
const ALWAYS_SEALED: usize = 2048;
/// A state this large is past every default budget.
const NEVER_SEALED: usize = 20000;
const SITE_COOKIE_BYTES: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    count: u64,
    blob: usize,
}

/// One client session and what it was told.
struct Session {
    size: usize,
    jar: Jar,
    /// What the app holds while the owner lives: the newest state.
    newest: State,
    /// The newest state the sidecar sealed (no `Handover-Warning`): what a takeover restores.
    sealed: State,
    owner: String,
    /// Whether the state with the blob was ever refused.
    refused: bool,
    /// Whether this session's owner was killed once already.
    outlived_owner: bool,
}

/// The proxy in front of the pool.
enum Front {
    Nginx(Nginx),
    Haproxy(Haproxy),
}

impl Front {
    fn addr(&self) -> SocketAddr {
        match self {
            Front::Nginx(n) => n.addr,
            Front::Haproxy(h) => h.addr,
        }
    }
    fn log(&self) -> String {
        match self {
            Front::Nginx(n) => n.error_log(),
            Front::Haproxy(h) => h.log(),
        }
    }
}

#[derive(Clone)]
enum Kind {
    Nginx(std::path::PathBuf),
    Haproxy(std::path::PathBuf),
}

impl Kind {
    async fn start(&self, pool: &LocalPool) -> Front {
        let pods: Vec<SocketAddr> = pool.running().iter().map(|i| pool.pods[*i].data()).collect();
        match self {
            Kind::Nginx(bin) => Front::Nginx(Nginx::ingress_defaults(bin, &pods).await),
            Kind::Haproxy(bin) => Front::Haproxy(Haproxy::start(bin, &pods).await),
        }
    }
}

/// One request of `s` through `front`; it must answer the app's 200 (not the proxy's 502/400),
/// and a refused seal must leave the state cookie as it was.
async fn request(front: &Front, cookie: &str, s: &mut Session, method: Method, path: &str) -> Answer {
    let before = state_chunks(&s.jar, cookie);
    let mut conn = Conn::new(front.addr(), Duration::from_secs(10));
    let answer = conn
        .send(&s.jar, method.clone(), path, &[])
        .await
        .unwrap_or_else(|e| panic!("{method} {path} of the {} B session: {e}", s.size));
    assert_eq!(
        answer.status,
        200,
        "{method} {path} of the {} B session (Set-Cookie {} B) did not get the app's answer: {} {}\nproxy log:\n{}",
        s.size,
        answer.set_cookie_bytes(),
        answer.status,
        String::from_utf8_lossy(&answer.body).trim(),
        front.log()
    );
    let reply = answer.count().expect("a count reply");
    s.owner = reply.pod.clone();
    let state = State { count: reply.count, blob: reply.blob_bytes };
    if method == Method::POST {
        s.newest = state;
        match answer.warning() {
            None => s.sealed = state,
            Some(w) => {
                s.refused = true;
                assert_eq!(
                    state_chunks(&s.jar, cookie),
                    before,
                    "a refused seal ({w}) must leave the client's state chunks as they were (the route may name the newest version)"
                );
            }
        }
    }
    answer
}

/// Sets up every session, then kills owners (a new pod replaces each) until every session's
/// owner died at least once, checking after each kill that every session has exactly the state
/// it should and goes on: with the successor backup (the default) its newest state, sealed into
/// the cookies or not; with `--backup off` the last state its cookies held.
async fn states_survive_the_real_path(kind: Kind, backup: bool) {
    let mut opts = PoolOptions::new(exe(), 3);
    if !backup {
        opts.sidecar_args = vec!["--backup".into(), "off".into()];
    }
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let cookie = pool.cookie_name();
    let mut front = kind.start(&pool).await;
    let mut sessions = Vec::new();
    for &size in SIZES {
        let fresh = State { count: 0, blob: 0 };
        let mut s = Session {
            size,
            jar: jar_with(site_cookies(SITE_COOKIE_BYTES)),
            newest: fresh,
            sealed: fresh,
            owner: String::new(),
            refused: false,
            outlived_owner: false,
        };
        request(&front, &cookie, &mut s, Method::POST, "/incr").await;
        assert_eq!(s.sealed, State { count: 1, blob: 0 }, "a small state is sealed");
        request(&front, &cookie, &mut s, Method::POST, &format!("/blob?bytes={size}")).await;
        request(&front, &cookie, &mut s, Method::POST, "/incr").await;
        assert_eq!(s.newest, State { count: 2, blob: size }, "the session went on");
        if size <= ALWAYS_SEALED {
            assert!(!s.refused, "a {size} B state must be sealed by default");
        }
        if size >= NEVER_SEALED {
            assert!(s.refused, "a {size} B state is past every default budget and must not be sealed");
        }
        sessions.push(s);
    }
    let mut owners_killed = 0;
    while let Some(victim) = sessions.iter().find(|s| !s.outlived_owner).map(|s| s.owner.clone()) {
        owners_killed += 1;
        assert!(owners_killed <= SIZES.len(), "every session's owner was killed within {} kills", SIZES.len());
        let i = pool.pods.iter().position(|p| p.name == victim).expect("the owner is a pod of the pool");
        pool.kill_pod(i).await;
        pool.add_pod().await.expect("a new pod replaces the killed one");
        // The proxy's endpoints follow the pool (as ingress-nginx follows a Service's endpoints).
        front = kind.start(&pool).await;
        for s in sessions.iter_mut() {
            let owner_died = s.owner == victim;
            let expected = if owner_died && !backup { s.sealed } else { s.newest };
            let reply = request(&front, &cookie, s, Method::GET, "/count").await.count().expect("count");
            let seen = State { count: reply.count, blob: reply.blob_bytes };
            assert_eq!(
                seen,
                expected,
                "the {} B session (refused: {}) after {} was killed: its owner {}",
                s.size,
                s.refused,
                victim,
                match (owner_died, backup) {
                    (true, false) => "died: its last sealed state",
                    (true, true) => "died: its newest state, from the successor's backup",
                    (false, _) => "lives: its newest state",
                }
            );
            request(&front, &cookie, s, Method::POST, "/incr").await;
            assert_eq!(s.newest.count, expected.count + 1, "the {} B session goes on", s.size);
            s.outlived_owner |= owner_died;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_of_every_size_survive_behind_nginx_with_ingress_defaults() {
    let Some(bin) = support::nginx_or_skip("the real-path test behind nginx with ingress-nginx's defaults") else {
        return;
    };
    states_survive_the_real_path(Kind::Nginx(bin.clone()), true).await;
    states_survive_the_real_path(Kind::Nginx(bin), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_of_every_size_survive_behind_haproxy_with_defaults() {
    let Some(bin) = support::haproxy_or_skip("the real-path test behind HAProxy at its defaults") else {
        return;
    };
    states_survive_the_real_path(Kind::Haproxy(bin), false).await;
}

/// One request with curl and its cookie jar file (`-b`/`-c`); the status, and whether a cookie
/// of ours was sealed (no `Handover-Warning`), and the count reply.
fn curl(jar: &std::path::Path, method: &str, url: &str) -> (u16, bool, handover_lab::demo_app::CountReply) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--verbose", "--max-time", "20", "--include", "-X", method])
        .arg("-b")
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .arg(url)
        .output()
        .expect("curl is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl {method} {url}: {stderr}");
    assert!(
        !stderr.contains("Restricted outgoing cookies"),
        "curl left cookies out of {method} {url} (jar {}): the pool gave it more than it sends",
        jar.display()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    assert_eq!(status, 200, "{method} {url}: {head}\n{body}");
    let warned = head.lines().any(|l| l.to_ascii_lowercase().starts_with("handover-warning:"));
    (status, !warned, serde_json::from_str(body).unwrap_or_else(|e| panic!("not a count reply ({e}): {body}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_keeps_its_session_near_its_cookie_limit_behind_nginx() {
    let Some(bin) = support::nginx_or_skip("the curl test behind nginx") else {
        return;
    };
    // The cookie alone (no backup): what curl carries is what survives.
    let mut pool = support::pool_with(3, &["--max-response-header-bytes", "16384", "--backup", "off"], &[]).await;
    let running =
        |pool: &LocalPool| -> Vec<SocketAddr> { pool.running().iter().map(|i| pool.pods[*i].data()).collect() };
    let mut ingress = Nginx::ingress(&bin, &running(&pool), "16k").await;
    let url = |ingress: &Nginx, path: &str| format!("http://{}{path}", ingress.addr);
    let dir = pool.dir.join("curl");
    std::fs::create_dir_all(&dir).expect("a directory for the jars");
    // (size, jar, last sealed state, owner)
    let mut sessions = Vec::new();
    for size in [2048usize, 5000, 6000, 7000, 7800, 9000] {
        let jar = dir.join(format!("jar-{size}"));
        // 1 KB of the site's other cookies, in curl's jar format.
        let site: String = site_cookies(1024)
            .into_iter()
            .map(|(n, v)| format!("{}\tFALSE\t/\tFALSE\t0\t{n}\t{v}\n", ingress.addr.ip()))
            .collect();
        std::fs::write(&jar, site).expect("write the jar");
        let (_, sealed, first) = curl(&jar, "POST", &url(&ingress, "/incr"));
        assert!(sealed, "a small state is sealed");
        let mut last_sealed = State { count: first.count, blob: first.blob_bytes };
        let mut owner = first.pod;
        for path in [format!("/blob?bytes={size}"), "/incr".to_owned()] {
            let (_, sealed, reply) = curl(&jar, "POST", &url(&ingress, &path));
            if sealed {
                last_sealed = State { count: reply.count, blob: reply.blob_bytes };
            }
            owner = reply.pod;
        }
        if size <= 5000 {
            assert_eq!(
                last_sealed,
                State { count: 2, blob: size },
                "a {size} B state fits curl's 8190 bytes and is sealed"
            );
        }
        if size >= 9000 {
            assert_eq!(
                last_sealed,
                State { count: 1, blob: 0 },
                "a {size} B state is past curl's 8190 bytes: not sealed"
            );
        }
        sessions.push((size, jar, last_sealed, owner));
    }
    let mut killed = Vec::new();
    for (size, jar, sealed, owner) in &sessions {
        if !killed.contains(owner) {
            let i = pool.pods.iter().position(|p| &p.name == owner).expect("the owner is a pod of the pool");
            pool.kill_pod(i).await;
            killed.push(owner.clone());
            pool.add_pod().await.expect("a new pod replaces the killed one");
            // The ingress follows the pool's endpoints; curl's cookies are the host's, any port.
            ingress = Nginx::ingress(&bin, &running(&pool), "16k").await;
        }
        let (_, _, reply) = curl(jar, "GET", &url(&ingress, "/count"));
        assert_eq!(
            State { count: reply.count, blob: reply.blob_bytes },
            *sealed,
            "the {size} B session after its owner {owner} died: its last sealed state"
        );
        let (_, _, next) = curl(jar, "POST", &url(&ingress, "/incr"));
        assert_eq!(next.count, sealed.count + 1, "the {size} B session goes on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_behind_a_plain_nginx_that_speaks_http_1_0_to_the_pods() {
    let Some(bin) = support::nginx_or_skip("the curl test behind nginx's plain proxy_pass") else {
        return;
    };
    let mut pool = support::pool_with(2, &[], &[]).await;
    let servers: String = pool.pods.iter().map(|p| format!("server {};\n", p.data())).collect();
    // No proxy_http_version, no keepalive: nginx's defaults (HTTP/1.0, Connection: close).
    let nginx =
        Nginx::start_with(&bin, &format!("upstream pool {{\n{servers}}}"), "location / { proxy_pass http://pool; }")
            .await;
    let url = format!("http://{}/incr", nginx.addr);
    let jar = pool.dir.join("plain-nginx-jar");
    let mut owner = String::new();
    // Round robin: the requests reach both pods, and the one that does not own the session
    // forwards them to the one that does.
    for expected in 1..=4 {
        let (_, sealed, reply) = curl(&jar, "POST", &url);
        assert!(sealed, "request {expected}: the state is sealed");
        assert_eq!(reply.count, expected, "the session goes on");
        owner = reply.pod;
    }
    let i = pool.pods.iter().position(|p| p.name == owner).expect("the owner is a pod of the pool");
    pool.kill_pod(i).await;
    // nginx finds the killed pod refusing connections and passes the request to the other one,
    // which restores the session from its cookie.
    let (_, sealed, reply) = curl(&jar, "POST", &url);
    assert!(sealed && reply.pod != owner, "served and sealed by the pod that lives: {}", reply.pod);
    assert_eq!(reply.count, 5, "the session went on after its owner died:\n{}", nginx.error_log());
}
