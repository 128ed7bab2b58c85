//! Shared by the sidecar's integration tests, one job per file:
//! - here: the binary under test, a local pool started with extra flags, an app of the test's
//!   own and one sidecar in front of it, one request with curl, and a test that cannot run here
//!   skipped loudly (or failed under `HANDOVER_REQUIRE_*`);
//! - `cgroup.rs`: a memory cgroup with a limit, as a container's;
//! - `daemon.rs`: a proxy process started by the test on a free port, killed on drop, and the
//!   check that a tool is installed (skip loudly, or fail under `HANDOVER_REQUIRE_*`);
//! - `nginx.rs`: a real nginx (any locations, or an ingress at ingress-nginx's defaults);
//! - `haproxy.rs`: a real HAProxy at its defaults;
//! - `client.rs`: a session's client as a browser is: one cookie jar, several connections;
//! - `raw.rs`: one raw HTTP/1.1 exchange, the test's bytes exactly;
//! - `reorder.rs`: a test proxy that holds responses to deliver them out of order;
//! - `scratch.rs`: a test's scratch directory, removed unless the test fails.

// Each test crate that includes this module uses a part of it (and of its re-exports).
#![allow(dead_code, unused_imports)]

pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod haproxy;
pub mod nginx;
pub mod raw;
pub mod reorder;
pub mod scratch;

pub use haproxy::{Haproxy, haproxy_or_skip};
pub use nginx::{Nginx, nginx_or_skip};
pub use scratch::Scratch;

use std::path::PathBuf;

use handover_lab::localpool::{LocalPool, PoolOptions};

/// Says loudly that a test did not run (`message`: what, and why) — or fails, when the environment
/// variable `require` is set (as `tests/run` sets it: in CI these tests must run).
pub fn skip_or_fail(require: &str, message: &str) {
    if std::env::var_os(require).is_some() {
        panic!("{message} and {require} is set");
    }
    eprintln!("\n!!!!! SKIPPED: {message}\n");
}

/// The variables `tests/run` sets: in CI every test must run.
const CI_REQUIRES: [&str; 4] =
    ["HANDOVER_REQUIRE_NGINX", "HANDOVER_REQUIRE_HAPROXY", "HANDOVER_REQUIRE_BROWSER", "HANDOVER_REQUIRE_CGROUP"];

/// [`skip_or_fail`] for what no variable of its own names (python3, network namespaces): fails
/// when any of `tests/run`'s `HANDOVER_REQUIRE_*` variables is set, as in CI.
pub fn skip_or_fail_in_ci(message: &str) {
    let set = CI_REQUIRES.into_iter().find(|v| std::env::var_os(v).is_some());
    skip_or_fail(set.unwrap_or(CI_REQUIRES[0]), message);
}

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

/// An app of the test's own on a free loopback port: each connection it accepts is `serve`d in a
/// task of its own.
pub async fn app_of_own<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// A free port on loopback (bound, read back, released).
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// A sidecar process in front of `app`, an app of the test's own that keeps no sessions, with
/// these extra flags (`--app-protocol h2c`), started behind `prefix` (a cgroup's, or none): its
/// data and admin addresses, and the process (killed on drop). Its log is `dir/sidecar.log`.
pub async fn sidecar_for(
    app: std::net::SocketAddr,
    dir: &std::path::Path,
    prefix: &[String],
    args: &[&str],
) -> (std::net::SocketAddr, std::net::SocketAddr, tokio::process::Child) {
    use handover_lab::localpool::{probe, wait_for};
    std::fs::write(dir.join("keys"), handover_dataplane::keys::generate_line(1, 0) + "\n").expect("key file");
    let (data, admin) = (free_addr(), free_addr());
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = tokio::process::Command::new(program);
            command.args(rest).arg(exe());
            command
        }
        None => tokio::process::Command::new(exe()),
    };
    let child = command
        .arg("run")
        .args(["--listen", &data.to_string(), "--admin", &admin.to_string(), "--app", &app.to_string()])
        // Nothing listens there: the app keeps no sessions (as a gRPC server).
        .args(["--state-addr", &free_addr().to_string()])
        .args(["--pool=test/app", "--pod-name=pod-0", "--key-file"])
        .arg(dir.join("keys"))
        .arg(format!("--peers=pod-0@{data}"))
        .args(["--cookie-secure", "false", "--workers", "1"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("sidecar.log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("the sidecar starts");
    let ready = wait_for("the sidecar to be ready", std::time::Duration::from_secs(10), || async move {
        probe(admin, "/ready").await == Some(200)
    });
    if let Err(e) = ready.await {
        panic!("{e}\n{}", std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default());
    }
    (data, admin, child)
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

/// `bytes` of the site's other cookies (analytics, consent, preferences), as many sites send on
/// every request beside ours: ten cookies of random base64url characters.
pub fn site_cookies(bytes: usize) -> std::collections::BTreeMap<String, String> {
    let each = bytes / 10;
    (0..10)
        .map(|i| {
            let name = format!("site_{i}");
            // `name=value; ` takes `each` bytes of the Cookie line.
            let len = each.saturating_sub(name.len() + 3);
            (name, random_text(len))
        })
        .collect()
}

/// `len` random base64url characters (incompressible past their 6 bits a character).
pub fn random_text(len: usize) -> String {
    use base64::Engine;
    let mut noise = vec![0u8; len.div_ceil(4) * 3];
    handover_dataplane::random::fill(&mut noise);
    let mut text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(noise);
    text.truncate(len);
    text
}

/// Reads a response head from `stream`, byte by byte (no byte after it is taken), within 10 s.
pub async fn response_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(stream, &mut byte).await.expect("a response head");
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("a response head within 10 s");
    String::from_utf8_lossy(&head).into_owned()
}
