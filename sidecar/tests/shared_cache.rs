//! A real caching nginx (`proxy_cache`) in front of a local pool, configured as a CDN that stores
//! responses with cookies (`proxy_ignore_headers Set-Cookie`) and gives responses without
//! `Cache-Control` a freshness of its own (`proxy_cache_valid`, like a heuristic): one client's
//! state cookie must never reach another client through it.
//!
//! Needs nginx (`apt-get install -y nginx-light`). Without it the test says so loudly and passes,
//! unless `HANDOVER_REQUIRE_NGINX=1` (then it fails).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use handover_sidecar::localpool::{LocalPool, PoolOptions, wait_for};
use tokio::process::{Child, Command};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover-sidecar"))
}

/// The nginx binary, if one is installed.
fn nginx_binary() -> Option<PathBuf> {
    ["nginx", "/usr/sbin/nginx"].into_iter().map(PathBuf::from).find(|bin| {
        std::process::Command::new(bin)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A caching nginx started by the test, listening on a port it picked; killed on drop.
struct CachingNginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for CachingNginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("nginx files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn config(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache keys_zone=shared:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache shared;
            # A freshness for responses that name none, as caches apply heuristics to them.
            proxy_cache_valid 200 10m;
            # Store responses that set cookies, as CDNs configured to cache everything do
            # (nginx's own default refuses them; most shared caches in the wild do not).
            proxy_ignore_headers Set-Cookie;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"#
    )
}

impl CachingNginx {
    async fn start(bin: &Path, upstream: SocketAddr) -> CachingNginx {
        let dir = std::env::temp_dir().join(format!("handover-nginx-{}", handover_sidecar::random::session_id()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let mut last_error = String::new();
        // The port is picked by binding port 0 and releasing it; another process may take it in
        // between, so a start that fails is tried again on a new port.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config(&dir, port, upstream)).expect("write nginx.conf");
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("nginx starts");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let up = wait_for("nginx to accept connections", Duration::from_secs(10), || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
            if up.is_ok() && child.try_wait().ok().flatten().is_none() {
                return CachingNginx { child, dir, addr };
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            last_error = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start:\n{last_error}");
    }
}

/// One request with curl: the response head (lower-cased names) and body.
fn curl(args: &[&str]) -> (Vec<(String, String)>, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--include"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let fields = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (fields, body.to_owned())
}

fn field<'a>(head: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    head.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_nginx_never_hands_one_clients_state_cookie_to_another() {
    let Some(bin) = nginx_binary() else {
        let message = "nginx is not installed: the shared-cache test against a real nginx did NOT run \
                       (apt-get install -y nginx-light)";
        if std::env::var_os("HANDOVER_REQUIRE_NGINX").is_some() {
            panic!("{message}");
        }
        eprintln!("\n!!!!! SKIPPED: {message}\n");
        return;
    };
    let pool = LocalPool::start(PoolOptions::new(exe(), 1)).await.expect("pool starts");
    let nginx = CachingNginx::start(&bin, pool.pods[0].data()).await;
    let url = |path: &str| format!("http://{}{path}", nginx.addr);

    // The cache works: a public response with no session is stored and served again (and the
    // sidecar left it alone: no cookie, still public).
    let (first, _) = curl(&[&url("/static/site.css")]);
    let (again, _) = curl(&[&url("/static/site.css")]);
    assert_eq!(field(&again, "x-cache-status"), vec!["HIT"], "nginx caches public responses: {again:?}");
    assert!(field(&first, "set-cookie").is_empty() && field(&again, "set-cookie").is_empty());
    assert_eq!(field(&again, "cache-control"), vec!["public, max-age=3600"]);

    for variant in ["public", "s-maxage", "none"] {
        let page = url(&format!("/visit?cache={variant}"));
        let (a, _) = curl(&[&page]);
        let a_cookies = field(&a, "set-cookie");
        assert_eq!(a_cookies.len(), 1, "{variant}: the first visitor gets a session: {a:?}");

        // A second visitor, no cookie, same URL: never the first one's cookie.
        let (b, body) = curl(&[&page]);
        assert_ne!(field(&b, "x-cache-status"), vec!["HIT"], "{variant}: nginx served a stored state cookie");
        let b_cookies = field(&b, "set-cookie");
        assert!(!b_cookies.contains(&a_cookies[0]), "{variant}: the second client got the first one's cookie");
        assert_eq!(b_cookies.len(), 1, "{variant}: and a session of its own: {b:?}");
        assert!(body.contains("\"count\":1"), "{variant}: a fresh count, not the first visitor's page: {body}");

        // How: the sidecar made the page private to its client.
        let cache_control = field(&a, "cache-control").join(", ");
        assert!(cache_control.starts_with("private"), "{variant}: made private: {cache_control}");
        assert!(!cache_control.contains("public") && !cache_control.contains("s-maxage"), "{cache_control}");
        assert!(field(&a, "vary").iter().any(|v| v.eq_ignore_ascii_case("cookie")), "{variant}: {a:?}");

        // The first visitor comes back with its cookie: its resealed cookie is private too.
        let cookie = a_cookies[0].split(';').next().expect("name=value");
        let (back, body) = curl(&["-H", &format!("Cookie: {cookie}"), &page]);
        assert!(body.contains("\"count\":2"), "{variant}: the session went on: {body}");
        assert!(field(&back, "cache-control").join(", ").starts_with("private"), "{variant}: {back:?}");
    }
    assert!(pool.metric("handover_responses_made_private_total").await >= 6.0);
}
