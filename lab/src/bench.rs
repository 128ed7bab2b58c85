//! `handover-sidecar bench`: request throughput and latency for the demo app direct, behind the
//! sidecar (push mode, cookies sealed on every response), and behind nginx as a plain reverse
//! proxy, measured in one run and printed as ratios. Rounds are interleaved so that a noisy
//! neighbour hurts every target alike. Not a test: it asserts nothing about speed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

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
    /// Rounds per target (interleaved); the median round is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The nginx binary (Debian: `apt-get install nginx-light`).
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub target: String,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Sidecar,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "app direct",
            Target::Sidecar => "handover sidecar (push)",
            Target::Nginx => "nginx reverse proxy",
        }
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
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
               proxy_set_header X-Forwarded-For $remote_addr;\n    }}\n  }}\n}}\n"
    )
}

/// Drives `target` with `connections` sessions for `duration`.
async fn drive(addr: SocketAddr, target: Target, connections: usize, duration: Duration) -> Figures {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let session = format!("bench-{c}");
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
            while Instant::now() < deadline {
                let mut req = Request::builder().method(Method::POST).uri("/incr").header(header::HOST, "bench");
                if target == Target::Sidecar {
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
                    let set_cookie = resp
                        .headers()
                        .get(header::SET_COOKIE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').next())
                        .map(str::to_owned);
                    resp.into_body().collect().await?;
                    Ok::<_, hyper::Error>((status, set_cookie))
                }
                .await;
                match outcome {
                    Ok((StatusCode::OK, set_cookie)) => {
                        latencies.push(started.elapsed());
                        if set_cookie.is_some() {
                            cookie = set_cookie;
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
    let pct = |p: f64| {
        all.get(((all.len().saturating_sub(1)) as f64 * p) as usize).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    };
    Figures {
        target: target.name().to_owned(),
        requests_per_second: all.len() as f64 / duration.as_secs_f64(),
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
    procs.0.push(spawn(
        &exe,
        &[
            s("run"),
            s("--listen"),
            sidecar.to_string(),
            s("--admin"),
            admin.to_string(),
            s("--app"),
            app.to_string(),
            s("--state-addr"),
            state.to_string(),
            s("--pool"),
            s("bench/pool"),
            s("--pod-name"),
            s("bench-0"),
            s("--key-file"),
            key_file.display().to_string(),
            s("--mode"),
            s("push"),
            s("--cookie-secure"),
            s("false"),
            s("--workers"),
            s("1"),
            s("--log-level"),
            s("warn"),
        ],
        &dir.join("sidecar.log"),
    )?);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&dir, nginx, app)).map_err(|e| e.to_string())?;
    let mut targets = vec![(Target::Direct, app), (Target::Sidecar, sidecar)];
    match spawn(
        &args.nginx,
        &[s("-c"), conf.display().to_string(), s("-p"), dir.display().to_string()],
        &dir.join("nginx.log"),
    ) {
        Ok(child) => {
            procs.0.push(child);
            targets.push((Target::Nginx, nginx));
        }
        Err(e) => println!("nginx baseline skipped: {e} (Debian: apt-get install nginx-light)"),
    }
    wait_for("the app, the sidecar and nginx to answer", Duration::from_secs(15), || async move {
        probe(admin, "/ready").await == Some(200)
    })
    .await?;
    if targets.len() == 3 {
        wait_for("nginx to listen", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(nginx).await.is_ok()
        })
        .await?;
    }

    println!(
        "bench: {} connections, {} rounds of {:?} per target, interleaved; app, sidecar and nginx with one worker each",
        args.connections, args.rounds, args.duration
    );
    let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, (target, addr)) in targets.iter().enumerate() {
            let f = drive(*addr, *target, args.connections, args.duration).await;
            println!(
                "  round {}  {:<26} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}",
                round + 1,
                f.target,
                f.requests_per_second,
                f.p50_ms,
                f.p99_ms,
                f.errors
            );
            rounds[i].push(f);
        }
    }
    let median: Vec<Figures> = rounds
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
            r[r.len() / 2].clone()
        })
        .collect();
    println!("\nmedian round:");
    for f in &median {
        println!(
            "  {:<26} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms",
            f.target, f.requests_per_second, f.p50_ms, f.p99_ms
        );
    }
    let direct = &median[0];
    let side = &median[1];
    let mut ratios = serde_json::Map::new();
    let mut ratio = |name: &str, a: &Figures, b: &Figures| {
        let t = a.requests_per_second / b.requests_per_second.max(1e-9);
        let p = a.p50_ms / b.p50_ms.max(1e-9);
        println!("  {name:<26} throughput x{t:.2}  p50 latency x{p:.2}");
        ratios.insert(format!("{name} throughput"), serde_json::json!(t));
        ratios.insert(format!("{name} p50"), serde_json::json!(p));
    };
    println!("\nratios:");
    ratio("sidecar / direct", side, direct);
    if let Some(ng) = median.get(2) {
        ratio("nginx / direct", ng, direct);
        ratio("sidecar / nginx", side, ng);
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::json!({"figures": median, "ratios": ratios}));
    Ok(())
}
