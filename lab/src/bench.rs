//! `handover-sidecar bench`: request throughput, latency and CPU time per request of the proxy
//! process for the demo app direct, behind the sidecar (push mode, cookies sealed on every
//! response), and behind nginx, HAProxy and a minimal Rust proxy (`lean_proxy.rs`, the floor of
//! the transport) as plain reverse proxies, at each state size, measured in one run and printed as
//! ratios, with the cookie work timed alone; then the sidecar's memory (RSS) idle, with many sessions and
//! after a flood of cookieless requests. Rounds are interleaved so that a noisy neighbour hurts
//! every target alike, every other one in the reverse order. Not a test: it asserts nothing about
//! speed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::localpool::{probe, wait_for};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// How long each round drives one target.
    #[arg(long, default_value = "3s", value_parser = handover_common::duration::parse)]
    pub duration: Duration,
    /// Concurrent keep-alive connections (one session each).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Rounds per target (interleaved, at least one); the median round is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub rounds: usize,
    /// The nginx binary (Debian: `apt-get install nginx-light`).
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// The HAProxy binary (Debian: `apt-get install haproxy`).
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    pub haproxy: PathBuf,
    /// Bytes of noise in each session's state (the demo app's blob; a cart's bytes with
    /// `--state-kind cart`), one set of rounds per size.
    /// The largest default is near the default header budget (4 KB of response headers with the
    /// session's Set-Cookie lines: 3 000 bytes of this noise are sealed, 3 300 are not); a size
    /// over it is measured too, and said to be refused.
    #[arg(long, value_delimiter = ',', default_value = "100,2000,3000")]
    pub state_bytes: Vec<usize>,
    /// Sessions made through the sidecar before its RSS is read "with sessions".
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Cookieless requests sent through the sidecar before its RSS is read "after a flood".
    #[arg(long, default_value_t = 500_000)]
    pub flood: usize,
    /// Keep-alive connections held open and idle, each after one answer, while the sidecar's RSS
    /// is read: at once, and once they have been idle past its header timeout.
    #[arg(long, default_value_t = 2_000)]
    pub idle_connections: usize,
    /// The sidecar binary to measure (default: this one). The app and the clients stay this
    /// binary's, so two builds of the sidecar compare under the same app and the same load.
    #[arg(long)]
    pub sidecar_exe: Option<PathBuf>,
    /// A second sidecar build driven in the same rounds, next to the first (its own ports, the
    /// same app): the line `sidecar / compare build` compares two builds under the same noise.
    #[arg(long)]
    pub compare_exe: Option<PathBuf>,
    /// One more argument of the measured sidecar's `run` (repeat it): e.g.
    /// `--sidecar-arg=--inline-state-bytes=512`.
    #[arg(long, allow_hyphen_values = true)]
    pub sidecar_arg: Vec<String>,
    /// One more argument of the `--compare-exe` build's `run` (repeat it): the same build with
    /// another setting compares the setting under the same noise.
    #[arg(long, allow_hyphen_values = true)]
    pub compare_arg: Vec<String>,
    /// What each session's state holds besides its counter: `noise` (the demo app's blob of
    /// base64 noise, which LZ77 cannot shrink: the figures) or `cart` (a shopping cart
    /// in JSON, whose keys and words repeat, as apps' states do).
    #[arg(long, value_enum, default_value = "noise")]
    pub state_kind: StateKind,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub target: String,
    pub state_bytes: usize,
    pub requests_per_second: f64,
    /// CPU time (user + system) of the proxy process(es) per request; none for the app direct.
    pub cpu_us_per_request: Option<f64>,
    /// The part of it spent in the kernel (system time): sockets, mostly, which every proxy pays
    /// alike; the rest is the proxy's own code.
    pub kernel_us_per_request: Option<f64>,
    /// CPU time per request of the bench's client (this process) and of the demo app: they share
    /// the machine's cores with the proxy, so what they spend shows in the throughput too.
    pub client_us_per_request: Option<f64>,
    pub app_us_per_request: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Sidecar,
    /// The `--compare-exe` build of the sidecar.
    Compare,
    Nginx,
    Haproxy,
    /// `lean_proxy`: the transport alone, as lean as it gets in Rust.
    Lean,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "app direct",
            Target::Sidecar => "handover sidecar (push)",
            Target::Compare => "compare build (push)",
            Target::Nginx => "nginx reverse proxy",
            Target::Haproxy => "haproxy reverse proxy",
            Target::Lean => "minimal Rust proxy",
        }
    }

    /// The ratio line of the sidecar against this target (none against itself).
    fn versus(self) -> Option<&'static str> {
        match self {
            Target::Direct => Some("sidecar / direct"),
            Target::Sidecar => None,
            Target::Compare => Some("sidecar / compare build"),
            Target::Nginx => Some("sidecar / nginx"),
            Target::Haproxy => Some("sidecar / haproxy"),
            Target::Lean => Some("sidecar / minimal proxy"),
        }
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    /// SIGTERM first, so that nginx's master takes its worker along (a SIGKILLed master leaves
    /// the worker running, listening, for good); SIGKILL for whatever is left after 2 s.
    fn drop(&mut self) {
        for c in &self.0 {
            crate::localpool::signal(c, crate::localpool::Sig::Term);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.0.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// nginx as a plain reverse proxy, one worker, keep-alive to the app. Its 4 KB `proxy_buffer_size`
/// is raised to 16 KB: the demo app sends its state in a response header (`Handover-State`, which
/// the sidecar removes), and at 3 KB of state nginx would answer 502 (upstream sent too big header).
fn nginx_config(dir: &Path, listen: SocketAddr, app: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream app {{ server {app}; keepalive 128; keepalive_requests 10000000; }}\n  keepalive_requests 10000000;\n\
           server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://app;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_buffer_size 16k;\n      proxy_buffers 8 16k;\n\
               proxy_set_header X-Forwarded-For $remote_addr;\n    }}\n  }}\n}}\n"
    )
}

/// HAProxy as a plain reverse proxy, one thread, keep-alive to the app.
fn haproxy_config(listen: SocketAddr, app: SocketAddr) -> String {
    format!(
        "global\n    nbthread 1\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
         http-reuse always\n\
         frontend web\n    bind {listen}\n    default_backend app\n\
         backend app\n    server app {app}\n"
    )
}

/// Clock ticks of process `pid` and of its children (nginx's worker): from `/proc/<pid>/stat`,
/// fields 14 (user) and 15 (system), at 100 ticks a second (Linux's `USER_HZ`).
#[derive(Clone, Copy, Debug, Default)]
struct CpuTicks {
    user: u64,
    system: u64,
}

fn cpu_ticks(pid: u32) -> CpuTicks {
    let mut total = process_ticks(pid).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some((ppid, t)) = std::fs::read_to_string(e.path().join("stat")).ok().and_then(|s| stat_ticks(&s))
                && ppid == pid
            {
                total.user += t.user;
                total.system += t.system;
            }
        }
    }
    total
}

/// Clock ticks of process `pid` alone (not its children).
fn process_ticks(pid: u32) -> Option<CpuTicks> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| stat_ticks(&s)).map(|t| t.1)
}

/// The parent pid and the ticks of one `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<(u32, CpuTicks)> {
    // The command may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    Some((ppid, CpuTicks { user: fields.get(11)?.parse().ok()?, system: fields.get(12)?.parse().ok()? }))
}

/// A figure of `a` over the same figure of `b`, round by round: each pair ran back to back, so
/// the ratio leaves out the machine's drift between rounds, which the ratio of two medians taken
/// apart keeps (rounds where either has no figure, or `b`'s is zero, are left out).
fn paired_ratios(a: &[Figures], b: &[Figures], figure: impl Fn(&Figures) -> Option<f64>) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(a, b)| figure(a).zip(figure(b)))
        .filter(|&(_, b)| b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

/// The median of a non-empty list (the lower middle of an even one).
fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

/// What a session's state holds besides its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateKind {
    /// The demo app's blob of base64 noise: what the bench's rounds push.
    Noise,
    /// A shopping cart in JSON, whose keys and words repeat: what apps push more often.
    Cart,
}

impl StateKind {
    /// The demo app's request that gives a session its state of `bytes`.
    fn path(self, bytes: usize) -> String {
        match self {
            StateKind::Noise => format!("/blob?bytes={bytes}"),
            StateKind::Cart => format!("/cart?bytes={bytes}"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            StateKind::Noise => "noise",
            StateKind::Cart => "a JSON cart",
        }
    }

    /// How the ratios' keys name a state of `bytes`: a cart's size apart from the noise's.
    fn size_key(self, bytes: usize) -> String {
        match self {
            StateKind::Noise => format!("{bytes}B"),
            StateKind::Cart => format!("{bytes}B cart"),
        }
    }
}

/// `count` and about `state_bytes` of `kind`, as JSON.
fn timed_state(kind: StateKind, state_bytes: usize, count: u64, noise: &str) -> Vec<u8> {
    use crate::demo_app::SessionState;
    let state = match kind {
        StateKind::Noise => SessionState { count, blob: noise.to_owned(), cart: Vec::new() },
        StateKind::Cart => SessionState { count, blob: String::new(), cart: crate::demo_app::cart_of(state_bytes) },
    };
    serde_json::to_vec(&state).unwrap_or_default()
}

/// The cookie work the sidecar does for each request of a round, timed here, in this process, on
/// one thread: open the client's routing cookie, decode the state the app pushes
/// (`Handover-State`, base64 of the demo app's JSON with `state_bytes` of `kind`), seal that state
/// (deflate when it shrinks, AEAD, base64) and a new routing cookie. The fastest of a few runs
/// (this machine is shared): what any implementation of handover's cookies pays on top of a
/// plain proxy's work, so that the figures show which part of the gap to nginx is transport.
fn cookie_work_us(state_bytes: usize, kind: StateKind) -> f64 {
    use handover_dataplane::cookie;
    let pool = "bench";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let Ok(ring) = handover_dataplane::keys::KeyRing::parse(&handover_dataplane::keys::generate_line(1, now)) else {
        return f64::NAN;
    };
    let mut noise = vec![0u8; state_bytes.div_ceil(4) * 3];
    handover_dataplane::random::fill(&mut noise);
    let mut blob = URL_SAFE_NO_PAD.encode(noise);
    blob.truncate(state_bytes);
    let mut route = cookie::Route {
        session: handover_dataplane::random::session_id(),
        owner: cookie::Owner { name: "bench-0".into(), uid: "bench-uid".into(), addr: "127.0.0.1:8080".into() },
        version: 1,
        state_version: 1,
        issued_at: now,
        expires_at: now + 3600,
        chunks: 1,
        state_bytes: 0,
        carry: 0,
        created_at: now,
        ended: false,
        inline: None,
    };
    let mut route_cookie = cookie::seal_route(&route, pool, &ring);
    // What the app pushes (its own work, not timed): a few successive states.
    let pushed: Vec<String> =
        (0..16).map(|count| URL_SAFE_NO_PAD.encode(timed_state(kind, state_bytes, count, &blob))).collect();
    let rounds = 2_000u32;
    let mut fastest = f64::INFINITY;
    for _ in 0..5 {
        let started = Instant::now();
        for pushed in pushed.iter().cycle().take(rounds as usize) {
            let Ok(opened) = cookie::open_route(&route_cookie, pool, &ring, now) else { return f64::NAN };
            // Decoded as the sidecar decodes it (proxy/app.rs).
            let Ok(state) = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(pushed) else { return f64::NAN };
            route.version = opened.version + 1;
            route.state_version = route.version;
            let sealed = cookie::seal_state(&route.session, route.version, &state, pool, &ring);
            route.state_bytes = u32::try_from(sealed.len()).unwrap_or(u32::MAX);
            route_cookie = cookie::seal_route(&route, pool, &ring);
        }
        fastest = fastest.min(started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds));
    }
    fastest
}

/// The resident set of process `pid` in MiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The bench's sidecar's header timeout: a keep-alive connection idle past it lets its buffers go
/// (`handover_dataplane::server::h1`), which the idle connections' figure waits for.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to `addr` whose one request (`GET /count`, no cookie: no session) was answered.
async fn answered_once(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /count HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
    let mut got = Vec::with_capacity(1024);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        if stream.read_buf(&mut got).await? == 0 || got.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(stream)
}

/// The sidecar's RSS (MiB) with up to `count` idle keep-alive connections open: once they are
/// answered, and once they have been idle past [`HEADER_TIMEOUT`], new connections coming and going
/// meanwhile as on a live pod (the allocator gives freed pages back as it goes on working, not
/// while nothing happens); how many were held open, and the connections that failed.
async fn idle_connections(pid: u32, addr: SocketAddr, count: usize) -> (f64, f64, usize, u64) {
    let mut open = Vec::with_capacity(count);
    let mut errors = 0;
    for _ in 0..count {
        match answered_once(addr).await {
            Ok(stream) => open.push(stream),
            Err(_) => errors += 1,
        }
    }
    let answered = rss_mib(pid);
    let until = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(3);
    while Instant::now() < until {
        errors += u64::from(answered_once(addr).await.is_err());
    }
    (answered, rss_mib(pid), open.len(), errors)
}

/// Sends `count` cookieless `POST /incr` over `connections` connections: each one a new session.
async fn flood(addr: SocketAddr, connections: usize, count: usize) -> u64 {
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(count));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let left = std::sync::Arc::clone(&left);
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else { return 1 };
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
            else {
                return 1;
            };
            tokio::spawn(conn);
            while left
                .fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
                    n.checked_sub(1)
                })
                .is_ok()
            {
                let Ok(req) = Request::builder()
                    .method(Method::POST)
                    .uri("/incr")
                    .header(header::HOST, "bench")
                    .body(Full::new(Bytes::new()))
                else {
                    break;
                };
                let ok = async {
                    sender.ready().await?;
                    sender.send_request(req).await?.into_body().collect().await?;
                    Ok::<_, hyper::Error>(())
                }
                .await;
                if ok.is_err() {
                    errors += 1;
                    break;
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    errors
}

/// Drives `target` with `connections` sessions for `duration`, each session's state holding
/// `state_bytes` of `kind`; `proxy`: the proxy's process, whose CPU time is measured.
async fn drive(
    addr: SocketAddr,
    target: Target,
    connections: usize,
    duration: Duration,
    (kind, state_bytes): (StateKind, usize),
    proxy: Option<u32>,
    app: Option<u32>,
) -> Figures {
    let deadline = Instant::now() + duration;
    let cpu_before = proxy.map(cpu_ticks);
    let client_before = process_ticks(std::process::id());
    let app_before = app.and_then(process_ticks);
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let session = format!("bench-{c}");
            // The session's cookies, as a browser keeps them: the route and its state chunks.
            let mut jar = std::collections::HashMap::new();
            let mut cookie: Option<String> = None;
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return (latencies, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
            else {
                return (latencies, 1);
            };
            tokio::spawn(conn);
            let mut first = true;
            while Instant::now() < deadline {
                // The session's state first gets its noise or cart (not counted), then is counted up.
                let path = if first { kind.path(state_bytes) } else { "/incr".to_owned() };
                let mut req = Request::builder().method(Method::POST).uri(path).header(header::HOST, "bench");
                if matches!(target, Target::Sidecar | Target::Compare) {
                    if let Some(c) = &cookie {
                        req = req.header(header::COOKIE, c.as_str());
                    }
                } else {
                    // Without the sidecar, the client names its session itself.
                    req = req.header(handover_dataplane::proxy::SESSION_HEADER, session.as_str());
                }
                let Ok(req) = req.body(Full::new(Bytes::new())) else {
                    break;
                };
                let started = Instant::now();
                let outcome = async {
                    sender.ready().await?;
                    let resp = sender.send_request(req).await?;
                    let status = resp.status();
                    let set_cookie = resp.headers().contains_key(header::SET_COOKIE);
                    if set_cookie {
                        crate::localpool::apply_set_cookies(&mut jar, resp.headers());
                    }
                    resp.into_body().collect().await?;
                    Ok::<_, hyper::Error>((status, set_cookie))
                }
                .await;
                match outcome {
                    Ok((StatusCode::OK, set_cookie)) => {
                        if !std::mem::take(&mut first) {
                            latencies.push(started.elapsed());
                        }
                        if set_cookie {
                            // The Cookie line built once per change, not per request: the client's
                            // own cost stays out of the figures as far as it can.
                            let mut pairs: Vec<String> = jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
                            pairs.sort();
                            cookie = (!pairs.is_empty()).then(|| pairs.join("; "));
                        }
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort();
    let cpu_after = proxy.map(cpu_ticks);
    let client_after = process_ticks(std::process::id());
    let app_after = app.and_then(process_ticks);
    // 10 000 µs per tick.
    let per_request = |ticks: u64| ticks as f64 * 10_000.0 / (all.len().max(1) as f64);
    let spent_between = |before: Option<CpuTicks>, after: Option<CpuTicks>| {
        before.zip(after).map(|(b, a)| per_request((a.user + a.system).saturating_sub(b.user + b.system)))
    };
    let spent = cpu_before.zip(cpu_after).map(|(before, after)| CpuTicks {
        user: after.user.saturating_sub(before.user),
        system: after.system.saturating_sub(before.system),
    });
    let cpu_us_per_request = spent.map(|t| per_request(t.user + t.system));
    let kernel_us_per_request = spent.map(|t| per_request(t.system));
    let pct = |p: f64| {
        all.get(((all.len().saturating_sub(1)) as f64 * p) as usize).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    };
    Figures {
        target: target.name().to_owned(),
        state_bytes,
        requests_per_second: all.len() as f64 / duration.as_secs_f64(),
        cpu_us_per_request,
        kernel_us_per_request,
        client_us_per_request: spent_between(client_before, client_after),
        app_us_per_request: spent_between(app_before, app_after),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

/// Runs the benchmark and prints figures and ratios; the last line is JSON.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("handover-bench-{}", handover_dataplane::random::session_id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut b = [0u8; 2];
    handover_dataplane::random::fill(&mut b);
    let ip = IpAddr::V4(Ipv4Addr::new(127, 100 + b[0] % 100, b[1], 1));
    let app = SocketAddr::new(ip, 8080);
    let state = SocketAddr::new(ip, 8081);
    let sidecar = SocketAddr::new(ip, 8000);
    let admin = SocketAddr::new(ip, 9901);
    let nginx = SocketAddr::new(ip, 8001);
    let haproxy = SocketAddr::new(ip, 8002);
    let compare = SocketAddr::new(ip, 8003);
    let compare_admin = SocketAddr::new(ip, 9903);
    let lean = SocketAddr::new(ip, 8004);
    let key_file = dir.join("keys");
    std::fs::write(&key_file, handover_dataplane::keys::generate_line(1, 0)).map_err(|e| e.to_string())?;

    let s = |v: &str| v.to_owned();
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn(
        &exe,
        &[
            s("demo-app"),
            s("--listen"),
            app.to_string(),
            s("--state-listen"),
            state.to_string(),
            s("--workers"),
            s("1"),
        ],
        &dir.join("app.log"),
    )?);
    let app_pid = procs.0[0].id();
    let sidecar_args = |listen: SocketAddr, admin: SocketAddr, extra: &[String]| {
        let mut args = [
            "run",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
            "--app",
            &app.to_string(),
            "--state-addr",
            &state.to_string(),
            "--pool",
            "bench/pool",
            "--pod-name",
            "bench-0",
            "--key-file",
            &key_file.display().to_string(),
            "--mode",
            "push",
            "--cookie-secure",
            "false",
            "--workers",
            "1",
            "--header-timeout",
            &format!("{}s", HEADER_TIMEOUT.as_secs()),
            "--log-level",
            "warn",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend_from_slice(extra);
        args
    };
    let sidecar_exe = args.sidecar_exe.clone().unwrap_or_else(|| exe.clone());
    procs.0.push(spawn(&sidecar_exe, &sidecar_args(sidecar, admin, &args.sidecar_arg), &dir.join("sidecar.log"))?);
    let sidecar_pid = procs.0[1].id();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&dir, nginx, app)).map_err(|e| e.to_string())?;
    let mut targets = vec![(Target::Direct, app, None), (Target::Sidecar, sidecar, sidecar_pid)];
    if let Some(compare_exe) = &args.compare_exe {
        let child =
            spawn(compare_exe, &sidecar_args(compare, compare_admin, &args.compare_arg), &dir.join("compare.log"))?;
        targets.push((Target::Compare, compare, child.id()));
        procs.0.push(child);
        wait_for("the compare build to be ready", Duration::from_secs(15), || async move {
            probe(compare_admin, "/ready").await == Some(200)
        })
        .await?;
    }
    match spawn(
        &args.nginx,
        &[s("-c"), conf.display().to_string(), s("-p"), dir.display().to_string()],
        &dir.join("nginx.log"),
    ) {
        Ok(child) => {
            targets.push((Target::Nginx, nginx, child.id()));
            procs.0.push(child);
        }
        Err(e) => println!("nginx baseline skipped: {e} (Debian: apt-get install nginx-light)"),
    }
    let hconf = dir.join("haproxy.cfg");
    std::fs::write(&hconf, haproxy_config(haproxy, app)).map_err(|e| e.to_string())?;
    match spawn(&args.haproxy, &[s("-db"), s("-f"), hconf.display().to_string()], &dir.join("haproxy.log")) {
        Ok(child) => {
            targets.push((Target::Haproxy, haproxy, child.id()));
            procs.0.push(child);
        }
        Err(e) => println!("haproxy baseline skipped: {e} (Debian: apt-get install haproxy)"),
    }
    let lean_args = [s("lean-proxy"), s("--listen"), lean.to_string(), s("--app"), app.to_string()];
    let child = spawn(&exe, &lean_args, &dir.join("lean-proxy.log"))?;
    targets.push((Target::Lean, lean, child.id()));
    procs.0.push(child);
    wait_for("the app, the sidecar and nginx to answer", Duration::from_secs(15), || async move {
        probe(admin, "/ready").await == Some(200)
    })
    .await?;
    for &(target, addr, _) in &targets[2..] {
        wait_for(target.name(), Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await?;
    }
    let rss_idle = sidecar_pid.map_or(0.0, rss_mib);

    println!(
        "bench: {} connections, {} rounds of {:?} per target, interleaved (every other round in the reverse order); app, sidecar, nginx, haproxy and the minimal proxy with one worker each",
        args.connections, args.rounds, args.duration
    );
    let mut medians: Vec<Figures> = Vec::new();
    let mut ratios = serde_json::Map::new();
    let not_sealed = || async {
        crate::localpool::scrape(admin)
            .await
            .map_or(0.0, |page| crate::localpool::metric_sum(&page, "handover_seals_refused_total"))
    };
    for &state_bytes in &args.state_bytes {
        let kind = args.state_kind;
        println!("\nstate of {state_bytes} bytes of {}:", kind.label());
        let size = kind.size_key(state_bytes);
        let cookie_us =
            tokio::task::spawn_blocking(move || cookie_work_us(state_bytes, kind)).await.unwrap_or(f64::NAN);
        // Rounds of noise are read next to a cart's cookie work: what a state with repeats costs.
        let cart_us = match kind {
            StateKind::Noise => {
                tokio::task::spawn_blocking(move || cookie_work_us(state_bytes, StateKind::Cart)).await.ok()
            }
            StateKind::Cart => None,
        };
        let refused_before = not_sealed().await;
        let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
        for round in 0..args.rounds {
            // Every other round in the reverse order: a machine whose speed drifts within a round
            // would otherwise favour whichever target always runs first of a pair.
            let order: Vec<usize> =
                if round % 2 == 0 { (0..targets.len()).collect() } else { (0..targets.len()).rev().collect() };
            for i in order {
                let (target, addr, pid) = targets[i];
                let f = drive(addr, target, args.connections, args.duration, (kind, state_bytes), pid, app_pid).await;
                println!("  round {}  {}", round + 1, line(&f));
                rounds[i].push(f);
            }
        }
        let median: Vec<Figures> = rounds
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
                // The lower middle of an even count, as `median_of` takes for the paired ratios.
                r[(r.len() - 1) / 2].clone()
            })
            .collect();
        // A state over the header budget is not sealed (the response says so): such rounds would
        // measure the refusal, not the seal.
        let refused = not_sealed().await - refused_before;
        if refused > 0.0 {
            println!(
                "  NOTE: {refused} states of this size were not sealed (over the header budget): these rounds measure the refusal path"
            );
        } else {
            println!("  every state of this size was sealed into the cookies");
        }
        println!("  median round:");
        for f in &median {
            println!("           {}", line(f));
        }
        let mut ratio = |name: &str, a: &Figures, b: &Figures| {
            if b.errors > 0 || b.requests_per_second <= 0.0 {
                println!("  {name:<26} no ratio: {} failed ({} errors)", b.target, b.errors);
                return;
            }
            let t = a.requests_per_second / b.requests_per_second.max(1e-9);
            let p = a.p50_ms / b.p50_ms.max(1e-9);
            let cpu = a.cpu_us_per_request.zip(b.cpu_us_per_request).map(|(a, b)| a / b.max(1e-9));
            let user = |f: &Figures| f.cpu_us_per_request.zip(f.kernel_us_per_request).map(|(c, k)| c - k);
            let user_cpu = user(a).zip(user(b)).map(|(a, b)| a / b.max(1e-9));
            let cpu_text = cpu
                .zip(user_cpu)
                .map(|(c, u)| format!("  CPU per request x{c:.2} (outside the kernel x{u:.2})"))
                .unwrap_or_default();
            println!("  {name:<26} throughput x{t:.2}  p50 latency x{p:.2}{cpu_text}");
            let key = format!("{name} @{size}");
            ratios.insert(format!("{key} throughput"), serde_json::json!(t));
            ratios.insert(format!("{key} p50"), serde_json::json!(p));
            if let Some(c) = cpu {
                ratios.insert(format!("{key} cpu"), serde_json::json!(c));
            }
            if let Some(u) = user_cpu {
                ratios.insert(format!("{key} user cpu"), serde_json::json!(u));
            }
        };
        println!("  ratios:");
        for (baseline, name) in median.iter().zip(&targets).filter_map(|(f, t)| Some((f, t.0.versus()?))) {
            ratio(name, &median[1], baseline);
        }
        // Round by round: the medians above are each target's own, possibly from rounds far apart
        // on a machine whose speed drifts; each round's pair ran back to back.
        println!("  round by round (each pair back to back), CPU per request:");
        for (i, &(target, ..)) in targets.iter().enumerate() {
            // (The app direct has no proxy, so no CPU figure: it is left out.)
            let Some(name) = target.versus() else { continue };
            let cpu = paired_ratios(&rounds[1], &rounds[i], |f| f.cpu_us_per_request);
            let throughput = paired_ratios(&rounds[1], &rounds[i], |f| Some(f.requests_per_second));
            if cpu.is_empty() {
                continue;
            }
            let each: Vec<String> = cpu.iter().map(|r| format!("{r:.2}")).collect();
            let (cpu, throughput) = (median_of(&cpu), median_of(&throughput));
            println!("  {name:<26} {}; median x{cpu:.2} (throughput x{throughput:.2})", each.join(" "));
            ratios.insert(format!("{name} @{size} cpu paired median"), serde_json::json!(cpu));
            ratios.insert(format!("{name} @{size} throughput paired median"), serde_json::json!(throughput));
        }
        let figures_of = |target: Target| median.iter().zip(&targets).find(|(_, t)| t.0 == target).map(|(f, _)| f);
        // The bench's client and the app share the cores with the proxy: what they spend per
        // request costs throughput too. Behind the sidecar the client also keeps the session's
        // cookies and sends them back (a browser's work, done on its own machine in production).
        let others = |f: &Figures| f.client_us_per_request.zip(f.app_us_per_request);
        if let (Some((client, app)), Some((nginx_client, nginx_app))) =
            (figures_of(Target::Sidecar).and_then(others), figures_of(Target::Nginx).and_then(others))
        {
            println!(
                "  the client's and the app's CPU per request (on the same cores): behind the sidecar {client:.1} and {app:.1} µs, \
                 behind nginx {nginx_client:.1} and {nginx_app:.1} µs"
            );
            ratios.insert(
                format!("client @{size} cpu sidecar/nginx"),
                serde_json::json!(client / nginx_client.max(1e-9)),
            );
            ratios.insert(format!("app @{size} cpu sidecar/nginx"), serde_json::json!(app / nginx_app.max(1e-9)));
        }
        // The floor under the sidecar's CPU per request: the sockets' kernel work, as cheap as
        // nginx gets it, plus the cookie work, with nothing at all for HTTP.
        if let Some((nginx, kernel)) =
            figures_of(Target::Nginx).and_then(|f| f.cpu_us_per_request.zip(f.kernel_us_per_request))
        {
            let floor = kernel + cookie_us;
            let room = if floor < nginx {
                format!("to match nginx, all the HTTP work must fit in the {:.1} µs left", nginx - floor)
            } else {
                "over nginx's whole CPU per request before any HTTP work".to_owned()
            };
            println!(
                "  cookie work per request (open the route, decode the pushed state, seal state and route): {cookie_us:.1} µs, \
                 timed in the bench's process\n  floor: nginx's kernel time + the cookie work = {floor:.1} µs = x{:.2} of nginx's CPU per request; \
                 {room} (nginx spends {:.1} µs outside the kernel)",
                floor / nginx.max(1e-9),
                nginx - kernel
            );
            ratios.insert(format!("sidecar floor / nginx @{size} cpu"), serde_json::json!(floor / nginx.max(1e-9)));
            // The same on the minimal proxy's transport: what the sidecar would cost with HTTP
            // work as lean as that, before its own routing and header work.
            if let Some(lean) = figures_of(Target::Lean).and_then(|f| f.cpu_us_per_request) {
                let on_lean = lean + cookie_us;
                println!(
                    "  on a transport as lean as the minimal Rust proxy's: its CPU per request + the cookie work = {on_lean:.1} µs = x{:.2} of nginx's",
                    on_lean / nginx.max(1e-9)
                );
                ratios.insert(
                    format!("minimal proxy + cookie work / nginx @{size} cpu"),
                    serde_json::json!(on_lean / nginx.max(1e-9)),
                );
            }
        }
        // Noise is written as a block of literals; a state with repeats goes through LZ77 instead:
        // its cookie work, for the reader to compare (`--state-kind cart` drives rounds of it).
        ratios.insert(format!("cookie work @{size} us"), serde_json::json!(cookie_us));
        if let Some(cart_us) = cart_us {
            println!(
                "  cookie work for a JSON cart of this size instead of the noise (repeats: deflated with LZ77): {cart_us:.1} µs"
            );
            ratios.insert(format!("cookie work json cart @{size} us"), serde_json::json!(cart_us));
        }
        medians.extend(median);
    }

    // Memory: idle (read before any load), with sessions, after a flood of cookieless requests.
    let memory = match sidecar_pid {
        Some(pid) => {
            let warm = rss_mib(pid);
            let errors = flood(sidecar, args.connections, args.sessions).await;
            let with_sessions = rss_mib(pid);
            let started = Instant::now();
            let flood_errors = flood(sidecar, args.connections, args.flood).await;
            let after_flood = rss_mib(pid);
            let table = crate::localpool::scrape(admin)
                .await
                .map_or(0.0, |page| crate::localpool::metric_sum(&page, "handover_sessions "));
            let (with_idle, after_idle, held, idle_errors) =
                idle_connections(pid, sidecar, args.idle_connections).await;
            let each = |mib: f64| (mib - after_flood) * 1024.0 * 1024.0 / held.max(1) as f64;
            println!(
                "\nsidecar RSS: idle {rss_idle:.1} MiB, after the rounds {warm:.1} MiB, with {} more sessions {with_sessions:.1} MiB, \
                 after {} cookieless requests ({:.0}/s) {after_flood:.1} MiB; session table {table} entries; \
                 with {} idle keep-alive connections {with_idle:.1} MiB ({:.0} bytes each), idle past the header timeout \
                 {after_idle:.1} MiB ({:.0} bytes each); errors {}",
                args.sessions,
                args.flood,
                args.flood as f64 / started.elapsed().as_secs_f64(),
                held,
                each(with_idle),
                each(after_idle),
                errors + flood_errors + idle_errors
            );
            serde_json::json!({"idle_mib": rss_idle, "after_rounds_mib": warm, "sessions": args.sessions,
                "with_sessions_mib": with_sessions, "flood": args.flood, "after_flood_mib": after_flood, "table": table,
                "idle_connections": held, "with_idle_connections_mib": with_idle,
                "idle_past_header_timeout_mib": after_idle})
        }
        None => serde_json::Value::Null,
    };
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::json!({"figures": medians, "ratios": ratios, "sidecar_memory": memory}));
    Ok(())
}

fn line(f: &Figures) -> String {
    let cpu = f
        .cpu_us_per_request
        .zip(f.kernel_us_per_request)
        .map(|(c, k)| format!("  CPU {c:>5.1} µs/req ({k:>4.1} kernel)"))
        .unwrap_or_default();
    format!(
        "{:<26} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms{cpu}  errors {}",
        f.target, f.requests_per_second, f.p50_ms, f.p99_ms, f.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_work_is_timed_on_the_real_codec() {
        // NaN is what a failed open or decode returns: every step of the timed loop must succeed,
        // at a size that is deflated and one that is not.
        for bytes in [100, 2_000] {
            for kind in [StateKind::Noise, StateKind::Cart] {
                let us = cookie_work_us(bytes, kind);
                assert!(us.is_finite() && us > 0.0, "{bytes} bytes of {kind:?}: {us}");
            }
        }
    }

    #[test]
    fn builds_are_compared_round_by_round() {
        let round = |cpu: Option<f64>| Figures {
            target: String::new(),
            state_bytes: 100,
            requests_per_second: 1.0,
            cpu_us_per_request: cpu,
            kernel_us_per_request: None,
            client_us_per_request: None,
            app_us_per_request: None,
            p50_ms: 1.0,
            p99_ms: 1.0,
            errors: 0,
        };
        let a = [round(Some(30.0)), round(Some(40.0)), round(None), round(Some(33.0))];
        let b = [round(Some(20.0)), round(Some(50.0)), round(Some(10.0)), round(Some(30.0))];
        let paired = paired_ratios(&a, &b, |f| f.cpu_us_per_request);
        assert_eq!(paired, [1.5, 0.8, 1.1], "the round without a figure is left out");
        assert_eq!(paired_ratios(&a, &b, |f| Some(f.requests_per_second)), [1.0; 4]);
        assert_eq!(median_of(&paired), 1.1);
        assert_eq!(median_of(&[1.0, 3.0]), 1.0, "the lower middle of an even list");
    }
}
