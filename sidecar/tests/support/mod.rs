//! Shared by the sidecar's integration tests: the binary under test, a local pool started with
//! extra flags, and a real nginx in front of local pools (a caching proxy, an ingress that routes
//! paths to pools), started and stopped by the test on a port it picks.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use handover_lab::localpool::{LocalPool, PoolOptions, wait_for};
use tokio::process::{Child, Command};

/// The sidecar binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover-sidecar"))
}

/// A local pool of `pods` whose sidecars and apps get these extra flags.
pub async fn pool_with(pods: usize, sidecar_args: &[&str], app_args: &[&str]) -> LocalPool {
    let mut opts = PoolOptions::new(exe(), pods);
    opts.sidecar_args = sidecar_args.iter().map(|s| s.to_string()).collect();
    opts.app_args = app_args.iter().map(|s| s.to_string()).collect();
    LocalPool::start(opts).await.expect("pool starts")
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

/// The nginx binary; without one, says loudly that `what` did not run (or fails, when
/// `HANDOVER_REQUIRE_NGINX` is set, as CI sets it).
pub fn nginx_or_skip(what: &str) -> Option<PathBuf> {
    let bin = nginx_binary();
    if bin.is_none() {
        let message = format!("nginx is not installed: {what} did NOT run (apt-get install -y nginx-light)");
        if std::env::var_os("HANDOVER_REQUIRE_NGINX").is_some() {
            panic!("{message}");
        }
        eprintln!("\n!!!!! SKIPPED: {message}\n");
    }
    bin
}

/// An nginx started by the test; killed on drop (one process: `master_process off`).
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("nginx files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn config(dir: &Path, port: u16, locations: &str) -> String {
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
        {locations}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts nginx with `locations` inside its one `server` block (a cache zone `shared` is
    /// defined) and waits until it accepts connections.
    pub async fn start(bin: &Path, locations: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("handover-nginx-{}", handover_dataplane::random::session_id()));
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
            std::fs::write(&conf, config(&dir, port, locations)).expect("write nginx.conf");
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
                return Nginx { child, dir, addr };
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            last_error = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start:\n{last_error}");
    }
}

/// One request with curl: the response head's fields (lower-cased names) and the body.
pub fn curl_head(args: &[&str]) -> (Vec<(String, String)>, String) {
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

/// Every value of field `name` in a head from [`curl_head`].
pub fn field<'a>(head: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    head.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}
