//! Command line: `run` (the sidecar), `demo`, `demo-app`, `bench`, `cookie inspect`, `keygen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use handover_common::logging::LogFormat;

use handover_dataplane::decide::{Affinity, Mode};
use handover_dataplane::keys::KeyFile;
use handover_dataplane::metrics::Metrics;
use handover_dataplane::proxy::{Config, CookieConfig, Proxy};
use handover_dataplane::registry::{Registry, StaticRegistry};
use handover_dataplane::server::{ConnCounters, ConnLimits};
use handover_dataplane::timed_body::BodyLimits;

/// `--version`: the crate's version, and whether this build was optimized with a profile of its
/// own run (the image's is: the Dockerfile builds it with `tests/bench/pgo.sh`, which sets
/// `HANDOVER_PGO` for that build only), so that what an image ships can be read back from it.
const VERSION: &str = match option_env!("HANDOVER_PGO") {
    Some(_) => concat!(env!("CARGO_PKG_VERSION"), " (profile-guided)"),
    None => env!("CARGO_PKG_VERSION"),
};

/// handover sidecar: sessions that survive the death of the pod that served them.
#[derive(Parser, Debug)]
#[command(name = "handover-sidecar", version = VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sidecar: a reverse proxy in front of the app.
    Run(Box<RunArgs>),
    /// Run a local pool of pods under client load and kill pods while it runs (no cluster needed).
    Demo(handover_lab::demo::DemoArgs),
    /// Run the demo application (a per-session counter implementing the handover contract).
    DemoApp(handover_lab::demo_app::DemoAppArgs),
    /// Measure throughput, latency and CPU per request: app direct, behind the sidecar, nginx,
    /// HAProxy and a minimal Rust proxy; then the sidecar's memory.
    Bench(handover_lab::bench::BenchArgs),
    /// A minimal HTTP/1.1 reverse proxy the bench measures next to nginx (not for clients).
    #[command(hide = true)]
    LeanProxy(handover_lab::lean_proxy::LeanProxyArgs),
    /// Work with state cookies.
    #[command(subcommand)]
    Cookie(CookieCommand),
    /// Print a key file line holding a fresh random key.
    Keygen {
        /// Key id.
        #[arg(long, default_value_t = 1)]
        id: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum CookieCommand {
    /// Open a state cookie with the pool's key file and print what it holds, or why it is refused.
    Inspect {
        /// The cookie value (chunks joined, or `name=value; name.0=value` as copied from a Cookie
        /// header).
        value: String,
        /// The key file (as mounted from the pool's key Secret).
        #[arg(long, env = "HANDOVER_KEY_FILE", default_value = "/etc/handover/keys/keys")]
        key_file: PathBuf,
        /// The pool, `namespace/name`.
        #[arg(long, env = "HANDOVER_POOL")]
        pool: String,
        /// The cookie name (when the input is `name=value` pairs). Default: the pool's derived
        /// name (`handover-<hash>` or `__Host-handover-<hash>`), else `handover`.
        #[arg(long)]
        cookie_name: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RegistryKind {
    /// Members from `--peers` (a file, re-read when it changes, or a list).
    Static,
    /// Members from the pod's ServerPool status (in a Kubernetes pod).
    Kubernetes,
}

/// Parses `host:port`, where an IPv6 host may also come without brackets.
pub fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let ip: std::net::IpAddr = host.parse().map_err(|_| format!("{text:?} is not HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{text:?} has no valid port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses `--max-state-bytes`: at most the largest state any cookie opens to
/// ([`handover_dataplane::cookie::MAX_STATE_BYTES`]), else a larger state would be sealed and
/// backed up, then never opened again at a failover.
fn state_limit(text: &str) -> Result<usize, String> {
    let max = handover_dataplane::cookie::MAX_STATE_BYTES;
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("at most {max} (a larger state could be sealed but never restored)")),
        Err(e) => Err(e.to_string()),
    }
}

/// Flags of `run`; each can also be set through the environment variable shown.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Data address clients (and peer sidecars) connect to. `[::]` takes IPv6 and IPv4 clients
    /// alike (IPv4 only where the kernel has no IPv6).
    #[arg(long, env = "HANDOVER_LISTEN", default_value = "[::]:8000")]
    pub listen: SocketAddr,
    /// Admin address: /live, /ready, /metrics. An IPv6 address may come unbracketed
    /// (`fd00::1:9901`, as `$(POD_IP):9901` expands in a pod): the last `:` separates the port.
    #[arg(long, env = "HANDOVER_ADMIN", default_value = "0.0.0.0:9901", value_parser = socket_addr)]
    pub admin: SocketAddr,
    /// The app's address (inside the pod): client requests go here.
    #[arg(long, env = "HANDOVER_APP", default_value = "127.0.0.1:8080")]
    pub app: SocketAddr,
    /// How client requests reach `--app`: `http1` (HTTP/1.1, keep-alive connections) or `h2c`
    /// (HTTP/2 with prior knowledge, one multiplexed connection; for gRPC servers). The state
    /// endpoint (`--state-addr`) is called over HTTP/1.1 either way.
    #[arg(long, env = "HANDOVER_APP_PROTOCOL", default_value = "http1", value_parser = ["http1", "h2c"])]
    pub app_protocol: String,
    /// Where the app answers its state endpoint (`GET`/`PUT <statePath>`): a listener of its own on
    /// the pod's loopback, apart from `--app`, so no client request can ever reach it.
    #[arg(long, env = "HANDOVER_STATE_ADDR", default_value = "127.0.0.1:8081")]
    pub state_addr: SocketAddr,
    /// The pool, `namespace/name`: cookies of other pools are refused.
    #[arg(long, env = "HANDOVER_POOL")]
    pub pool: String,
    /// This pod's name.
    #[arg(long, env = "HANDOVER_POD_NAME")]
    pub pod_name: String,
    /// This pod's uid.
    #[arg(long, env = "HANDOVER_POD_UID", default_value = "")]
    pub pod_uid: String,
    /// This pod's IP: with the listen port, the address peers forward to.
    #[arg(long, env = "HANDOVER_POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// The key file (one key per line, the first seals).
    #[arg(long, env = "HANDOVER_KEY_FILE", default_value = "/etc/handover/keys/keys")]
    pub key_file: PathBuf,
    /// How the app hands over its state.
    #[arg(long, env = "HANDOVER_MODE", value_enum, default_value = "both")]
    pub mode: Mode,
    /// Pull mode: fetch the state when the last snapshot is older than this.
    #[arg(long, env = "HANDOVER_SNAPSHOT_INTERVAL", default_value = "1s", value_parser = handover_common::duration::parse)]
    pub snapshot_interval: Duration,
    /// The app's state endpoint (GET to pull, PUT to restore).
    #[arg(long, env = "HANDOVER_STATE_PATH", default_value = "/handover/state")]
    pub state_path: String,
    /// The state cookie's name (state chunks add `.0`, `.1`, …). Empty: `handover-<hash of --pool>`,
    /// different for every pool so pools under one host never collide, with the `__Host-` prefix
    /// when the cookie is Secure with Path=/ and no Domain.
    #[arg(long, env = "HANDOVER_COOKIE_NAME", default_value = "")]
    pub cookie_name: String,
    /// The cookie's Path: the prefix the pool serves under its host (e.g. `/shop` when an ingress
    /// routes `/shop` to this pool); the browser sends the cookie only below it.
    #[arg(long, env = "HANDOVER_COOKIE_PATH", default_value = "/")]
    pub cookie_path: String,
    /// The cookie's Domain (to share it with subdomains). Empty: host-only, the safer default.
    #[arg(long, env = "HANDOVER_COOKIE_DOMAIN", default_value = "")]
    pub cookie_domain: String,
    /// The idle timeout: a session's cookies expire this long after its last reseal (an active
    /// session is resealed past half of it, so only an idle one expires).
    #[arg(long, env = "HANDOVER_COOKIE_MAX_AGE", default_value = "12h", value_parser = handover_common::duration::parse)]
    pub cookie_max_age: Duration,
    /// The absolute timeout: a session is refused (as expired; the app is told it left) this long
    /// after it was first sealed, however active. `0s`: none (only the idle timeout).
    #[arg(long, env = "HANDOVER_SESSION_ABSOLUTE_TIMEOUT", default_value = "0s", value_parser = handover_common::duration::parse)]
    pub session_absolute_timeout: Duration,
    /// Ceiling for one session's cookies (route and state chunks, as the client sends them back);
    /// the header limits below bind first at their defaults.
    #[arg(long, env = "HANDOVER_COOKIE_MAX_BYTES", default_value_t = 16384)]
    pub cookie_max_bytes: usize,
    /// The largest response header block the proxies in front of the pool accept (status line,
    /// headers, the session's Set-Cookie lines): ingress-nginx `proxy-buffer-size`, 4k by default.
    /// A state whose cookies would pass it is not sealed into them (Handover-Warning).
    #[arg(long, env = "HANDOVER_MAX_RESPONSE_HEADER_BYTES", default_value_t = 4096)]
    pub max_response_header_bytes: usize,
    /// The longest request header line the path carries (the client's whole Cookie line):
    /// ingress-nginx `large-client-header-buffers` (8k), curl's 8190-byte cookie limit.
    #[arg(long, env = "HANDOVER_MAX_REQUEST_HEADER_BYTES", default_value_t = 8192)]
    pub max_request_header_bytes: usize,
    /// Hand each newly sealed state to the session's successor before the response leaves
    /// (`successor`), so a takeover finds every acknowledged update even when the client's cookie
    /// is older; `off`: the client's cookie only.
    #[arg(long, env = "HANDOVER_BACKUP", default_value = "successor", value_parser = ["successor", "off"])]
    pub backup: String,
    /// Bytes of peers' backups this sidecar keeps at most (the oldest go first).
    #[arg(long, env = "HANDOVER_BACKUP_MAX_BYTES", default_value_t = 32 << 20)]
    pub backup_max_bytes: usize,
    /// Longest wait for the successor to keep a backup (the response waits for it).
    #[arg(long, env = "HANDOVER_BACKUP_TIMEOUT", default_value = "1s", value_parser = handover_common::duration::parse)]
    pub backup_timeout: Duration,
    /// Mark cookies `Secure` (turn off only for plain-HTTP tests).
    #[arg(long, env = "HANDOVER_COOKIE_SECURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,
    #[arg(long, env = "HANDOVER_COOKIE_SAME_SITE", default_value = "Lax", value_parser = ["Lax", "Strict", "None"])]
    pub cookie_same_site: String,
    /// Forward requests to a live owner, or take sessions over wherever they land.
    #[arg(long, env = "HANDOVER_AFFINITY", value_enum, default_value = "forward")]
    pub affinity: Affinity,
    /// Where the member list comes from.
    #[arg(long, env = "HANDOVER_REGISTRY", value_enum, default_value = "static")]
    pub registry: RegistryKind,
    /// Static registry: a file (`name uid addr` per line, re-read on change) or `name@addr,...`.
    #[arg(long, env = "HANDOVER_PEERS", default_value = "")]
    pub peers: String,
    /// After SIGTERM: keep serving (readiness failing) this long, then close.
    #[arg(long, env = "HANDOVER_DRAIN_GRACE", default_value = "5s", value_parser = handover_common::duration::parse)]
    pub drain_grace: Duration,
    /// Token a `/drain` request must carry (header `Handover-Drain`); the operator puts the same
    /// value in the app containers' `preStop` hook. Empty: `/drain` is off.
    #[arg(long, env = "HANDOVER_DRAIN_TOKEN", default_value = "", hide_env_values = true)]
    pub drain_token: String,
    /// Hold requests this long while the local app is down (restarting).
    #[arg(long, env = "HANDOVER_APP_WAIT", default_value = "10s", value_parser = handover_common::duration::parse)]
    pub app_wait: Duration,
    /// Connect timeout to the app and to peers; a peer that misses it is probed.
    #[arg(long, env = "HANDOVER_CONNECT_TIMEOUT", default_value = "300ms", value_parser = handover_common::duration::parse)]
    pub connect_timeout: Duration,
    /// A forward still waiting for its answer after this long gets its peer probed (its admin
    /// `/live`), and again every such period; only a failed probe makes a peer count as dead.
    #[arg(long, env = "HANDOVER_PEER_PROBE_AFTER", default_value = "1s", value_parser = handover_common::duration::parse)]
    pub peer_probe_after: Duration,
    /// How long a liveness probe of a peer may take.
    #[arg(long, env = "HANDOVER_PROBE_TIMEOUT", default_value = "300ms", value_parser = handover_common::duration::parse)]
    pub probe_timeout: Duration,
    /// Longest wait for response headers from the app (or a peer); `0s`: no limit. Raise it for
    /// long-polls and server-sent events.
    #[arg(long, env = "HANDOVER_RESPONSE_TIMEOUT", default_value = "60s", value_parser = handover_common::duration::parse)]
    pub response_timeout: Duration,
    /// Longest wait for the app's answer to a state call.
    #[arg(long, env = "HANDOVER_STATE_TIMEOUT", default_value = "5s", value_parser = handover_common::duration::parse)]
    pub state_timeout: Duration,
    /// Requests whose head (target and header fields) is larger get 431; 414 when the target
    /// alone is.
    #[arg(long, env = "HANDOVER_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Bytes of request heads in flight at once, over all connections; a request whose head would
    /// pass it gets 503 at once. (Each request holds its head until its answer's head is ready;
    /// an HTTP/2 connection carries up to 200 at once, and HPACK lets a client send large heads
    /// for a few bytes each.)
    #[arg(long, env = "HANDOVER_MAX_HEADER_BYTES_IN_FLIGHT", default_value_t = 4 * 1024 * 1024)]
    pub max_header_bytes_in_flight: usize,
    /// A client gets this long to send a request's headers: the first from its connection's
    /// accept, any other from its first byte.
    #[arg(long, env = "HANDOVER_HEADER_TIMEOUT", default_value = "10s", value_parser = handover_common::duration::parse)]
    pub header_timeout: Duration,
    /// How long a client connection with no request in flight stays open after its last answer
    /// (HTTP/1.1 keep-alive; HTTP/2 with no stream open). Keep it above the idle timeout of the
    /// proxy in front (ingress-nginx's `upstream-keepalive-timeout` and AWS ALB's: 60 s; Google
    /// Cloud's load balancer: 600 s), so that the proxy closes first: a connection closed here as
    /// the proxy sends a request on it is a 502 for that request.
    #[arg(long, env = "HANDOVER_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = handover_common::duration::parse)]
    pub keepalive_timeout: Duration,
    /// A response the client takes no byte of for this long: the connection is closed (a client
    /// that stops reading would hold its connection and the app's for good; nginx's
    /// `send_timeout`). `0s`: none.
    #[arg(long, env = "HANDOVER_SEND_TIMEOUT", default_value = "60s", value_parser = handover_common::duration::parse)]
    pub send_timeout: Duration,
    /// A request body with no bytes for this long is cut off.
    #[arg(long, env = "HANDOVER_BODY_IDLE_TIMEOUT", default_value = "10s", value_parser = handover_common::duration::parse)]
    pub body_idle_timeout: Duration,
    /// A request body not complete after this long is cut off.
    #[arg(long, env = "HANDOVER_BODY_TIMEOUT", default_value = "60s", value_parser = handover_common::duration::parse)]
    pub body_timeout: Duration,
    /// Client connections open at once; more are closed as they arrive. Lowered at start to what
    /// the limits on open files and memory hold (said in the log).
    #[arg(long, env = "HANDOVER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// The container's memory limit in bytes (the operator sets it from the downward API's
    /// `limits.memory`); 0: read from the process's cgroup. The client connections are capped to
    /// fit in it beside the other caps.
    #[arg(long, env = "HANDOVER_MEMORY_LIMIT", default_value_t = 0)]
    pub memory_limit: u64,
    /// Requests held at once while the app is down; more get 503 at once.
    #[arg(long, env = "HANDOVER_MAX_HELD", default_value_t = 1024)]
    pub max_held: usize,
    /// Sessions the sidecar remembers at most (about 100 bytes each); past it the least recently
    /// used are forgotten, and checked with the app (or restored) on their next request.
    #[arg(long, env = "HANDOVER_MAX_SESSIONS", default_value_t = handover_dataplane::proxy::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Largest state (uncompressed) sealed into or restored from a cookie; at most 1 MiB.
    #[arg(long, env = "HANDOVER_MAX_STATE_BYTES", default_value_t = 64 * 1024, value_parser = state_limit)]
    pub max_state_bytes: usize,
    /// States at most this many bytes once stored (deflated when smaller, with their format
    /// token) travel inside the routing cookie: one cookie, one seal and one `Set-Cookie` line
    /// fewer a response. 0: never (every state in chunks).
    #[arg(long, env = "HANDOVER_INLINE_STATE_BYTES", default_value_t = handover_dataplane::cookie::DEFAULT_INLINE_STATE_BYTES,
        value_parser = clap::value_parser!(u16).range(..=handover_dataplane::cookie::MAX_INLINE_STATE_BYTES as i64))]
    pub inline_state_bytes: u16,
    /// Deflate states of 128 bytes or more before sealing. Off when a state holds both a secret
    /// and bytes a third party chose: a compressed state's length tells whether they repeat it.
    #[arg(long, env = "HANDOVER_COMPRESS_STATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub compress_state: bool,
    #[arg(long, env = "HANDOVER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "HANDOVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Worker threads (0: one per CPU the process may use, cgroup quota included). With one, the
    /// runtime's single-threaded scheduler runs everything on that thread.
    #[arg(long, env = "HANDOVER_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

/// Runs the sidecar until SIGTERM (or SIGINT) and the drain are over.
pub async fn run(args: RunArgs) -> Result<(), String> {
    let max_connections = crate::resources::connection_cap(
        args.max_connections,
        crate::resources::raise_open_files(),
        if args.memory_limit > 0 { Some(args.memory_limit) } else { crate::resources::memory_limit() },
        crate::resources::OtherCaps {
            sessions: args.max_sessions,
            backup_bytes: if args.backup == "successor" { args.backup_max_bytes as u64 } else { 0 },
            heads_in_flight_bytes: args.max_header_bytes_in_flight as u64,
        },
    );
    let keys = KeyFile::open(args.key_file.clone()).map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::default());
    let registry: Arc<dyn Registry> = match args.registry {
        RegistryKind::Static => {
            let path = PathBuf::from(&args.peers);
            if !args.peers.is_empty() && path.is_file() {
                StaticRegistry::follow_file(path, Duration::from_millis(200))?
            } else {
                StaticRegistry::fixed(handover_dataplane::registry::parse_members(&args.peers)?)
            }
        }
        RegistryKind::Kubernetes => kubernetes_registry(&args.pool, &metrics).await?,
    };
    let advertise = match args.pod_ip {
        Some(ip) => SocketAddr::new(ip, args.listen.port()).to_string(),
        None => args.listen.to_string(),
    };
    let cfg = Config {
        pool: args.pool.clone(),
        pod_name: args.pod_name.clone(),
        pod_uid: args.pod_uid.clone(),
        advertise,
        app: args.app,
        app_protocol: args.app_protocol.parse()?,
        state_addr: args.state_addr,
        peer_admin_port: args.admin.port(),
        mode: args.mode,
        snapshot_interval: args.snapshot_interval,
        state_path: args.state_path.clone(),
        cookie: CookieConfig {
            attrs: cookie_attrs(&args)?,
            max_age: args.cookie_max_age,
            max_bytes: args.cookie_max_bytes,
            absolute_timeout: (!args.session_absolute_timeout.is_zero()).then_some(args.session_absolute_timeout),
        },
        affinity: args.affinity,
        app_wait: args.app_wait,
        connect_timeout: args.connect_timeout,
        peer_probe_after: args.peer_probe_after,
        probe_timeout: args.probe_timeout,
        response_timeout: (!args.response_timeout.is_zero()).then_some(args.response_timeout),
        state_timeout: args.state_timeout,
        max_header_bytes: args.max_header_bytes,
        max_header_bytes_in_flight: args.max_header_bytes_in_flight,
        body: BodyLimits { idle: args.body_idle_timeout, total: args.body_timeout },
        max_held: args.max_held,
        max_sessions: args.max_sessions,
        max_state_bytes: args.max_state_bytes,
        inline_state_bytes: usize::from(args.inline_state_bytes),
        compress_state: args.compress_state,
        limits: handover_dataplane::header_budget::Limits {
            response_headers: args.max_response_header_bytes,
            request_header: args.max_request_header_bytes,
        },
        backup_max_bytes: (args.backup == "successor").then_some(args.backup_max_bytes),
        backup_timeout: args.backup_timeout,
    };
    let proxy = Proxy::new(cfg, Arc::clone(&keys), registry, Arc::clone(&metrics));

    let data = handover_common::net::listen(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let admin =
        handover_common::net::listen(args.admin).await.map_err(|e| format!("cannot listen on {}: {e}", args.admin))?;
    tracing::info!(data = %args.listen, admin = %args.admin, app = %args.app, pool = %args.pool, pod = %args.pod_name, "handover sidecar started");

    tokio::spawn(Arc::clone(&proxy).watch_app());
    if matches!(args.registry, RegistryKind::Kubernetes) {
        report_peer_health(&proxy, &args.pool, &args.pod_name);
    }
    let key_errors = metrics.key_reload_errors.clone();
    tokio::spawn(Arc::clone(&keys).follow(Duration::from_secs(1), move |e| {
        key_errors.inc();
        tracing::error!(error = %e, "key file refused; keeping the previous key ring");
    }));
    let sweeper = Arc::clone(&proxy);
    // A quarter of a cookie's life, at most a minute: the app hears of an expired session soon
    // after its cookie died.
    let shortest = match args.session_absolute_timeout {
        zero if zero.is_zero() => args.cookie_max_age,
        absolute => absolute.min(args.cookie_max_age),
    };
    let sweep_every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(sweep_every);
        loop {
            every.tick().await;
            sweeper.forget_expired_sessions().await;
        }
    });

    let admin_proxy = Arc::clone(&proxy);
    let drain = handover_dataplane::drain::Drain::new(
        Arc::clone(&proxy),
        args.drain_token.clone(),
        args.pod_name.clone(),
        args.drain_grace,
    );
    let admin_drain = Arc::clone(&drain);
    let admin_task = tokio::spawn(handover_dataplane::server::serve(
        admin,
        move |req, _| {
            let proxy = Arc::clone(&admin_proxy);
            let drain = Arc::clone(&admin_drain);
            async move {
                if req.uri().path() == "/drain" {
                    drain.handle(req).await
                } else {
                    handover_dataplane::server::admin(&proxy, &req)
                }
            }
        },
        std::future::pending(),
        Duration::ZERO,
        ConnLimits::ADMIN,
        ConnCounters {
            refused: metrics.connections_refused.get_or_create(&[("listener", "admin")]).clone(),
            send_timeouts: metrics.send_timeouts.clone(),
            bad_requests: metrics.bad_requests.clone(),
            abandoned: Default::default(),
        },
    ));

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_grace = args.drain_grace;
    tokio::spawn(async move {
        handover_dataplane::server::shutdown_signal().await;
        tracing::info!(?drain_grace, "SIGTERM: readiness fails now; serving on while the pool learns");
        exit_by(drain_grace + FINISH_WITHIN + EXIT_MARGIN);
        drain.on_signal().await;
        let _ = drained_tx.send(());
    });
    let data_proxy = Arc::clone(&proxy);
    handover_dataplane::server::serve(
        data,
        move |req, client| Arc::clone(&data_proxy).handle(req, client),
        async {
            let _ = drained_rx.await;
        },
        FINISH_WITHIN,
        ConnLimits {
            max_connections,
            header_timeout: args.header_timeout,
            keepalive_timeout: args.keepalive_timeout,
            send_timeout: (!args.send_timeout.is_zero()).then_some(args.send_timeout),
            max_head_bytes: args.max_header_bytes,
        },
        ConnCounters {
            refused: metrics.connections_refused.get_or_create(&[("listener", "data")]).clone(),
            send_timeouts: metrics.send_timeouts.clone(),
            bad_requests: metrics.bad_requests.clone(),
            abandoned: metrics.requests_abandoned.clone(),
        },
    )
    .await;
    admin_task.abort();
    tracing::info!("drained; bye");
    Ok(())
}

/// The pool's cookie name and attributes from the flags, the name derived from the pool when not
/// given; refused when a browser would refuse the cookie.
pub fn cookie_attrs(args: &RunArgs) -> Result<handover_dataplane::cookie_attrs::Attrs, String> {
    let name = if args.cookie_name.is_empty() {
        handover_dataplane::cookie_attrs::default_name(
            &args.pool,
            args.cookie_secure,
            &args.cookie_path,
            &args.cookie_domain,
        )
    } else {
        args.cookie_name.clone()
    };
    let attrs = handover_dataplane::cookie_attrs::Attrs {
        name,
        path: args.cookie_path.clone(),
        domain: args.cookie_domain.clone(),
        secure: args.cookie_secure,
        same_site: args.cookie_same_site.clone(),
    };
    handover_dataplane::cookie_attrs::validate(&attrs)?;
    Ok(attrs)
}

/// After the drain, connections still open get this long to finish their request.
const FINISH_WITHIN: Duration = Duration::from_secs(5);
/// Past the drain and the finish, the process ends whatever its tasks are doing.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// A hard deadline after SIGTERM, on a thread of its own: the process ends in time even if the
/// runtime were stuck (no request should be able to do that, but the kubelet's SIGKILL after the
/// grace period would otherwise be the only thing that ends it).
fn exit_by(deadline: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("handover-sidecar: still running {deadline:?} after SIGTERM; exiting now");
        std::process::exit(0);
    });
}

#[cfg(feature = "kubernetes")]
async fn kubernetes_registry(pool: &str, metrics: &Metrics) -> Result<Arc<dyn Registry>, String> {
    let (namespace, name) = pool.split_once('/').ok_or_else(|| format!("--pool {pool:?} is not `namespace/name`"))?;
    let registry =
        handover_dataplane::registry_kube::KubeRegistry::start(namespace, name, metrics.registry_watch_errors.clone())
            .await
            .map_err(|e| format!("cannot watch ServerPool {pool}: {e}"))?;
    Ok(registry)
}

/// Writes what this sidecar saw of its peers as a condition on its own pod (see
/// `handover_dataplane::peer_health`).
#[cfg(feature = "kubernetes")]
fn report_peer_health(proxy: &Arc<Proxy>, pool: &str, pod: &str) {
    let Some((namespace, _)) = pool.split_once('/') else { return };
    let proxy = Arc::clone(proxy);
    let health = move || proxy.peer_health().verdict(std::time::Instant::now());
    tokio::spawn(handover_dataplane::registry_kube::report_peer_health(health, namespace.to_owned(), pod.to_owned()));
}

#[cfg(not(feature = "kubernetes"))]
fn report_peer_health(_proxy: &Arc<Proxy>, _pool: &str, _pod: &str) {}

#[cfg(not(feature = "kubernetes"))]
async fn kubernetes_registry(_pool: &str, _metrics: &Metrics) -> Result<Arc<dyn Registry>, String> {
    Err("this build of handover-sidecar has no Kubernetes registry (feature `kubernetes`)".to_owned())
}

/// `cookie inspect`: prints the opened cookie as JSON, or why it is refused.
pub fn inspect(
    value: &str,
    key_file: &std::path::Path,
    pool: &str,
    cookie_name: Option<&str>,
) -> Result<String, String> {
    let ring = handover_dataplane::keys::KeyRing::load(key_file).map_err(|e| e.to_string())?;
    let derived = handover_dataplane::cookie_attrs::default_name(pool, false, "/", "");
    let candidates: Vec<String> = match cookie_name {
        Some(name) => vec![name.to_owned()],
        None => {
            vec![format!("{}{derived}", handover_dataplane::cookie_attrs::HOST_PREFIX), derived, "handover".to_owned()]
        }
    };
    let pairs: Vec<handover_dataplane::cookie::CookiePair> = if value.contains('=') {
        handover_dataplane::cookie::request_pairs(std::iter::once(value.as_bytes()))
    } else {
        vec![(candidates[0].as_bytes(), value.trim().as_bytes())]
    };
    let lookup = |n: &str| handover_dataplane::cookie::lookup(&pairs, n);
    // The first candidate the input holds, and its value.
    let (cookie_name, route_value) = candidates
        .iter()
        .find_map(|c| lookup(c).map(|v| (c.as_str(), v)))
        .ok_or_else(|| format!("no cookie named {:?} in the input", candidates[0]))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let refused = |e: handover_dataplane::cookie::CookieError| format!("refused: {e} ({})", e.reason());
    let r = handover_dataplane::cookie::open_route(route_value, pool, &ring, now).map_err(refused)?;
    // The state: inside the route, or joined from the chunks the input holds; opened with the
    // largest state any pool may set.
    let max_state = handover_dataplane::cookie::MAX_STATE_BYTES;
    let state = handover_dataplane::cookie::join_state(cookie_name, &r, lookup)
        .and_then(|joined| handover_dataplane::cookie::open_route_state(&r, &joined, pool, &ring, max_state));
    let state_report = match &state {
        Ok((state, format)) => serde_json::json!({
            "format": (!format.is_empty()).then_some(format),
            "bytes": state.len(),
            "utf8": String::from_utf8(state.clone()).ok(),
            "base64url": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, state),
        }),
        Err(e) => serde_json::json!({ "refused": e.to_string(), "reason": e.reason() }),
    };
    let report = serde_json::json!({
        "session": r.session,
        "pool": pool,
        "owner": {"pod": &*r.owner.name, "uid": &*r.owner.uid, "addr": &*r.owner.addr},
        "version": r.version,
        "created_at": r.created_at,
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
        "expires_in_seconds": r.expires_at.saturating_sub(now),
        "state_in_route": r.inline.is_some(),
        "chunks": r.chunks,
        "sealed_state_bytes": r.state_bytes,
        "client_carries_at_most": (r.carry > 0).then_some(r.carry),
        "state": state_report,
    });
    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_or_without_ipv6_brackets() {
        assert_eq!(socket_addr("10.0.0.1:9901"), Ok("10.0.0.1:9901".parse().expect("addr")));
        assert_eq!(socket_addr("[fd00::1]:9901"), Ok("[fd00::1]:9901".parse().expect("addr")));
        assert_eq!(socket_addr("fd00::1:9901"), Ok("[fd00::1]:9901".parse().expect("addr")));
        assert!(socket_addr("pod:9901").is_err());
        assert!(socket_addr("10.0.0.1:99999").is_err());
    }

    #[test]
    fn a_state_limit_above_what_a_cookie_opens_to_is_refused() {
        let max = handover_dataplane::cookie::MAX_STATE_BYTES;
        assert_eq!(state_limit(&max.to_string()), Ok(max));
        assert!(state_limit(&(max + 1).to_string()).is_err_and(|e| e.contains("never restored")));
        assert!(state_limit("lots").is_err());
    }
}
