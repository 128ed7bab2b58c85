//! `scale-bench`: reconcile latency (pod readiness change → `ServerPool` status) and memory of the
//! operator with thousands of pods across hundreds of pools, against a live cluster.
//!
//! It starts `handover-operator run` as a child process, registers a fake Node (no agent behind
//! it: its Lease and Ready condition are renewed from here), creates labelled pods bound to that
//! Node and plays their kubelet by patching the pod `status` subresource. A "baseline" phase (one
//! small pool) and a "scale" phase (`--pools` × `--pods-per-pool`) each flip the readiness of
//! random pods one at a time and time, with a watch on the pools, how long each flip takes to show
//! in `status.members[].ready` and `status.readyMembers`. Figures are printed per phase, as ratios
//! scale/baseline (the machine is shared: only same-run ratios mean anything), and as one JSON line.
//!
//! Usage and measured figures: tests/bench/README.md. This is a benchmark, not a test: it asserts
//! nothing about speed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use handover_common::sync::lock;
use handover_operator::crd::{POOL_LABEL, ServerPool, ServerPoolSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};

/// Label on every object the bench creates (namespaces, Node, pools); the value is the run id.
const BENCH_LABEL: &str = "handover.dev/bench";
/// Namespace of node Leases.
const NODE_LEASE_NS: &str = "kube-node-lease";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Operator scale benchmark: readiness flip → ServerPool status latency, and operator memory.
#[derive(Parser, Debug, Clone)]
#[command(about)]
struct Args {
    /// Pools of the scale phase.
    #[arg(long, default_value_t = 200)]
    pools: usize,
    /// Pods per pool in the scale phase.
    #[arg(long, default_value_t = 10)]
    pods_per_pool: usize,
    /// Namespaces the scale phase spreads its pools over (round robin). The operator wakes every
    /// pool of a namespace when one of them is created or changes its spec, so this matters.
    #[arg(long, default_value_t = 1)]
    namespaces: usize,
    /// Pods of the baseline phase (one pool).
    #[arg(long, default_value_t = 10)]
    baseline_pods: usize,
    /// Readiness flips timed per phase.
    #[arg(long, default_value_t = 100)]
    flips: usize,
    /// API requests in flight while creating pods and marking them ready.
    #[arg(long, default_value_t = 32)]
    parallelism: usize,
    /// The operator binary.
    #[arg(long, default_value = "target/release/handover-operator")]
    operator: PathBuf,
    /// Name of the fake Node the pods are bound to.
    #[arg(long, default_value = "handover-bench-node")]
    node: String,
    /// Seed of the flip order (default: random; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the operator's log goes (default: /tmp/handover-scale-bench-<run>.log).
    #[arg(long)]
    operator_log: Option<PathBuf>,
    /// Seconds to wait for all pools of a phase to list their members.
    #[arg(long, default_value_t = 600)]
    converge_timeout: u64,
    /// Seconds to wait for one flip to show in a pool's status.
    #[arg(long, default_value_t = 60)]
    flip_timeout: u64,
    /// Run even if ServerPools the bench did not create exist, or another handover operator is
    /// running (each operator would reconcile the other's pools too).
    #[arg(long)]
    allow_foreign_pools: bool,
    /// Only remove what earlier (interrupted) runs left behind, then exit.
    #[arg(long)]
    cleanup: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let client = Client::try_default().await.map_err(|e| format!("build a Kubernetes client (KUBECONFIG?): {e}"))?;
    if args.cleanup {
        return cleanup(&client, BENCH_LABEL, &args.node).await;
    }
    ensure_crd(&client).await?;
    check_foreign_pools(&client, args.allow_foreign_pools).await?;

    let seed = match args.seed {
        Some(s) => s,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| format!("getrandom: {e}"))?;
            u64::from_le_bytes(b)
        }
    };
    let run_id = format!("{:06x}", seed & 0xff_ffff);
    let selector = format!("{BENCH_LABEL}={run_id}");
    println!(
        "scale-bench run {run_id}: baseline 1x{} pods, scale {}x{} pods, {} flips per phase, seed {seed}",
        args.baseline_pods, args.pools, args.pods_per_pool, args.flips
    );

    let result = tokio::select! {
        r = bench(&client, &args, &run_id, seed) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };

    println!("cleaning up (namespaces {selector}, node {})", args.node);
    let cleaned = cleanup(&client, &selector, &args.node).await;
    let report = result?;
    cleaned?;
    println!("{report}");
    Ok(())
}

/// Everything between node registration and cleanup; returns the JSON line.
async fn bench(client: &Client, args: &Args, run_id: &str, seed: u64) -> Result<Value> {
    create_node(client, &args.node, run_id).await?;
    let _heartbeat = AbortOnDrop(tokio::spawn(node_heartbeat(client.clone(), args.node.clone())));
    let ctl_ns = format!("hbench-{run_id}");
    create_namespace(client, &ctl_ns, run_id).await?;
    let mut operator = Operator::start(client, args, run_id, &ctl_ns).await?;

    let shared = Arc::new(Shared::default());
    let watch = tokio::spawn(watch_pools(client.clone(), format!("{BENCH_LABEL}={run_id}"), shared.clone()));
    let mut rng = SplitMix64(seed);

    let baseline = Phase {
        name: "baseline",
        namespaces: vec![format!("hbench-{run_id}-base")],
        pools: 1,
        pods: args.baseline_pods,
    };
    let scale = Phase {
        name: "scale",
        namespaces: match args.namespaces {
            0 | 1 => vec![format!("hbench-{run_id}-scale")],
            n => (0..n).map(|k| format!("hbench-{run_id}-scale-{k}")).collect(),
        },
        pools: args.pools,
        pods: args.pods_per_pool,
    };
    let mut results = Vec::new();
    for phase in [baseline, scale] {
        let r = run_phase(client, args, run_id, &phase, &shared, &mut operator, &mut rng).await;
        match r {
            Ok(r) => {
                r.print();
                results.push(r);
            }
            Err(e) => {
                watch.abort();
                operator.stop().await;
                return Err(format!("phase {}: {e} (operator log: {})", phase.name, operator.log.display()).into());
            }
        }
    }
    watch.abort();
    operator.stop().await;

    let (b, s) = (&results[0], &results[1]);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    let ratios = json!({
        "latency_p50": ratio(s.latency.p50_ms, b.latency.p50_ms),
        "latency_p99": ratio(s.latency.p99_ms, b.latency.p99_ms),
        "latency_max": ratio(s.latency.max_ms, b.latency.max_ms),
        "rss": ratio(s.rss_kib as f64, b.rss_kib as f64),
        "hwm": ratio(s.hwm_kib as f64, b.hwm_kib as f64),
    });
    println!(
        "ratios scale/baseline ({}x pods): latency p50 {:.2}, p99 {:.2}, max {:.2}; operator RSS {:.2}, HWM {:.2}",
        s.total_pods() / b.total_pods().max(1),
        ratios["latency_p50"].as_f64().unwrap_or(f64::NAN),
        ratios["latency_p99"].as_f64().unwrap_or(f64::NAN),
        ratios["latency_max"].as_f64().unwrap_or(f64::NAN),
        ratios["rss"].as_f64().unwrap_or(f64::NAN),
        ratios["hwm"].as_f64().unwrap_or(f64::NAN),
    );
    println!("operator log: {}", operator.log.display());
    Ok(json!({
        "bench": "handover-operator-scale",
        "run": run_id,
        "seed": seed,
        "flips": args.flips,
        "baseline": b.to_json(),
        "scale": s.to_json(),
        "ratio_scale_over_baseline": ratios,
    }))
}

// ---------------------------------------------------------------------------------------------
// The operator child process.

struct Operator {
    child: Child,
    pid: u32,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Operator {
    async fn start(client: &Client, args: &Args, run_id: &str, lease_ns: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
        let lease = format!("handover-bench-{run_id}");
        let log = args.operator_log.clone().unwrap_or_else(|| format!("/tmp/handover-scale-bench-{run_id}.log").into());
        let file = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut child = Command::new(&args.operator)
            .arg("run")
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--lease-namespace", lease_ns, "--lease-name", &lease, "--identity", "bench"])
            .args(["--sidecar-image", "handover:dev", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("start {} (cargo build --release -p handover-operator): {e}", args.operator.display())
            })?;
        let pid = child.id().ok_or("the operator exited at once")?;
        println!("operator pid {pid}, metrics http://{metrics}/metrics, log {}", log.display());
        let leases: Api<Lease> = Api::namespaced(client.clone(), lease_ns);
        let leader = await_condition(leases, &lease, |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref()).and_then(|s| s.holder_identity.as_deref()) == Some("bench")
        });
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(60), leader) => {
                r.map_err(|_| format!("the operator did not take its Lease within 60 s (log: {})", log.display()))??;
            }
            status = child.wait() => {
                return Err(format!("the operator exited ({}) before leading; log: {}", status?, log.display()).into());
            }
        }
        Ok(Self { child, pid, metrics, log })
    }

    /// `VmRSS` and `VmHWM` in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> Option<u64> {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        Ok((field("VmRSS:").ok_or("no VmRSS")?, field("VmHWM:").ok_or("no VmHWM")?))
    }

    async fn scrape(&self) -> Result<Metrics> {
        let mut conn = tokio::net::TcpStream::connect(self.metrics).await?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
        let mut body = String::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut body)).await??;
        Ok(Metrics::parse(&body))
    }

    /// SIGTERM, then SIGKILL after 20 s.
    async fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Counters read from the operator's `/metrics`.
#[derive(Debug, Clone, Default)]
struct Metrics {
    reconciles: f64,
    errors: f64,
    /// `reconcile_errors_total` by its `error` label.
    error_kinds: BTreeMap<String, f64>,
    duration_sum: f64,
    duration_count: f64,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(v) = value.trim().parse::<f64>() else { continue };
            let base = name.split('{').next().unwrap_or(name);
            match base {
                "handover_operator_reconciles_total" => m.reconciles += v,
                "handover_operator_reconcile_errors_total" => {
                    m.errors += v;
                    let kind = name.split("error=\"").nth(1).and_then(|k| k.split('"').next()).unwrap_or("?");
                    *m.error_kinds.entry(kind.to_owned()).or_default() += v;
                }
                "handover_operator_reconcile_duration_seconds_sum" => m.duration_sum += v,
                "handover_operator_reconcile_duration_seconds_count" => m.duration_count += v,
                _ => {}
            }
        }
        m
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            reconciles: self.reconciles - before.reconciles,
            errors: self.errors - before.errors,
            error_kinds: self
                .error_kinds
                .iter()
                .map(|(k, v)| (k.clone(), v - before.error_kinds.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
            duration_sum: self.duration_sum - before.duration_sum,
            duration_count: self.duration_count - before.duration_count,
        }
    }

    fn mean_ms(&self) -> f64 {
        if self.duration_count > 0.0 { self.duration_sum / self.duration_count * 1e3 } else { f64::NAN }
    }
}

/// Requests the API server served (`apiserver_request_total` of its `/metrics`), by
/// `resource[/subresource] VERB`, for the resources only the operator writes while the bench flips
/// pods: its children, the key Secrets, Deployments, ServerPools (not their watches, which stay
/// open). The bench's own requests during the flips (pod status, its node's heartbeat and Lease)
/// and the kube-controller-manager's (EndpointSlices) are on other resources. Events are counted
/// apart: the controller-manager writes some too.
#[derive(Debug, Clone, Default, PartialEq)]
struct ApiCalls(BTreeMap<String, f64>);

impl ApiCalls {
    const OPERATOR_RESOURCES: [&str; 6] =
        ["services", "secrets", "roles", "rolebindings", "deployments", "serverpools"];

    async fn scrape(client: &Client) -> Result<Self> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = client.request_text(request).await.map_err(|e| format!("read the API server's /metrics: {e}"))?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
            let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
            };
            let (Some(resource), Some(verb)) = (label("resource"), label("verb")) else { continue };
            if verb == "WATCH" || !(Self::OPERATOR_RESOURCES.contains(&resource) || resource == "events") {
                continue;
            }
            let key = match label("subresource") {
                Some(sub) if !sub.is_empty() => format!("{resource}/{sub} {verb}"),
                _ => format!("{resource} {verb}"),
            };
            *out.entry(key).or_default() += value;
        }
        Self(out)
    }

    fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    /// Requests on the operator's resources, Events left out.
    fn operator(&self) -> f64 {
        self.0.iter().filter(|(k, _)| !k.starts_with("events ")).map(|(_, v)| v).sum()
    }

    fn events(&self) -> f64 {
        self.0.iter().filter(|(k, _)| k.starts_with("events ")).map(|(_, v)| v).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Watching the pools.

/// What the pools' watch last showed, and the flip being waited for.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// (namespace, pool) → what its status says.
    pools: HashMap<(String, String), PoolView>,
    pending: Option<PendingFlip>,
}

#[derive(Debug, Default)]
struct PoolView {
    ready_members: i32,
    total_members: i32,
    /// pod → ready, from `status.members`.
    members: HashMap<String, bool>,
}

struct PendingFlip {
    pool: (String, String),
    pod: String,
    ready: bool,
    ready_members: i32,
    /// Gets the time the watch delivered the first status showing the flip.
    seen: oneshot::Sender<Instant>,
}

impl PendingFlip {
    fn shown_by(&self, view: &PoolView) -> bool {
        view.members.get(&self.pod) == Some(&self.ready) && view.ready_members == self.ready_members
    }
}

async fn watch_pools(client: Client, selector: String, shared: Arc<Shared>) {
    let api: Api<ServerPool> = Api::all(client);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default().labels(&selector)).default_backoff());
    while let Some(event) = events.next().await {
        let at = Instant::now();
        let pool = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                eprintln!("pool watch: {e} (retrying)");
                continue;
            }
        };
        let key = (pool.namespace().unwrap_or_default(), pool.name_any());
        let view = pool
            .status
            .map(|s| PoolView {
                ready_members: s.ready_members,
                total_members: s.total_members,
                members: s.members.into_iter().map(|m| (m.pod, m.ready)).collect(),
            })
            .unwrap_or_default();
        {
            let mut state = lock(&shared.state);
            if state.pending.as_ref().is_some_and(|p| p.pool == key && p.shown_by(&view))
                && let Some(p) = state.pending.take()
            {
                let _ = p.seen.send(at);
            }
            state.pools.insert(key, view);
        }
        shared.changed.notify_waiters();
    }
}

/// Waits, without polling, until `done` holds for the watched state.
async fn wait_until(shared: &Shared, mut done: impl FnMut(&State) -> bool) {
    loop {
        let notified = shared.changed.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if done(&lock(&shared.state)) {
            return;
        }
        notified.await;
    }
}

// ---------------------------------------------------------------------------------------------
// Phases.

struct Phase {
    name: &'static str,
    /// Pool `i` lives in `namespaces[i % len]`.
    namespaces: Vec<String>,
    pools: usize,
    pods: usize,
}

impl Phase {
    fn namespace(&self, pool: usize) -> &str {
        &self.namespaces[pool % self.namespaces.len()]
    }
    fn pool_name(&self, i: usize) -> String {
        format!("pool-{i:04}")
    }
    fn pod_name(&self, pool: usize, j: usize) -> String {
        format!("pool-{pool:04}-pod-{j:03}")
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len();
        let at = |q: f64| -> f64 {
            if n == 0 {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            samples[rank - 1].as_secs_f64() * 1e3
        };
        Self { n, p50_ms: at(0.50), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

struct PhaseResult {
    name: &'static str,
    namespaces: usize,
    pools: usize,
    pods_per_pool: usize,
    create_s: f64,
    mark_ready_s: f64,
    converge_s: f64,
    latency: Latency,
    patch: Latency,
    timeouts: usize,
    metrics_setup: Metrics,
    metrics_flips: Metrics,
    /// API server requests on the operator's resources during the flips.
    api_flips: ApiCalls,
    rss_kib: u64,
    hwm_kib: u64,
}

impl PhaseResult {
    fn total_pods(&self) -> usize {
        self.pools * self.pods_per_pool
    }

    fn print(&self) {
        let mib = |k: u64| k as f64 / 1024.0;
        println!(
            "phase {}: {} pools x {} pods = {} pods, in {} namespace(s)",
            self.name,
            self.pools,
            self.pods_per_pool,
            self.total_pods(),
            self.namespaces
        );
        println!(
            "  created pods in {:.2} s, marked them ready in {:.2} s; every pool listed its ready members {:.2} s after that",
            self.create_s, self.mark_ready_s, self.converge_s
        );
        println!(
            "  readiness flip -> pool status: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; timeouts {} (status patch p50 {:.1} ms)",
            self.latency.n,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.timeouts,
            self.patch.p50_ms
        );
        println!(
            "  reconciles: {} while setting up (mean {:.1} ms), {} during the flips (mean {:.1} ms); errors {:?} / {:?}",
            self.metrics_setup.reconciles,
            self.metrics_setup.mean_ms(),
            self.metrics_flips.reconciles,
            self.metrics_flips.mean_ms(),
            self.metrics_setup.error_kinds,
            self.metrics_flips.error_kinds,
        );
        let flips = self.latency.n.max(1) as f64;
        println!(
            "  API calls during the flips: {} ({:.2} per flip), and {} Events; {:?}",
            self.api_flips.operator(),
            self.api_flips.operator() / flips,
            self.api_flips.events(),
            self.api_flips.0,
        );
        println!("  operator memory: VmRSS {:.1} MiB, VmHWM {:.1} MiB", mib(self.rss_kib), mib(self.hwm_kib));
    }

    fn to_json(&self) -> Value {
        let lat = |l: &Latency| json!({"n": l.n, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "max_ms": l.max_ms});
        json!({
            "namespaces": self.namespaces,
            "pools": self.pools,
            "pods_per_pool": self.pods_per_pool,
            "pods": self.total_pods(),
            "create_s": self.create_s,
            "mark_ready_s": self.mark_ready_s,
            "converge_s": self.converge_s,
            "flip_latency": lat(&self.latency),
            "status_patch": lat(&self.patch),
            "timeouts": self.timeouts,
            "reconciles_setup": self.metrics_setup.reconciles,
            "reconciles_flips": self.metrics_flips.reconciles,
            "reconcile_mean_ms_setup": self.metrics_setup.mean_ms(),
            "reconcile_mean_ms_flips": self.metrics_flips.mean_ms(),
            "reconcile_errors_setup": self.metrics_setup.error_kinds,
            "reconcile_errors_flips": self.metrics_flips.error_kinds,
            "api_calls_flips": self.api_flips.operator(),
            "api_calls_per_flip": self.api_flips.operator() / self.latency.n.max(1) as f64,
            "events_flips": self.api_flips.events(),
            "api_calls_flips_by_request": self.api_flips.0,
            "rss_kib": self.rss_kib,
            "hwm_kib": self.hwm_kib,
        })
    }
}

async fn run_phase(
    client: &Client,
    args: &Args,
    run_id: &str,
    phase: &Phase,
    shared: &Shared,
    operator: &mut Operator,
    rng: &mut SplitMix64,
) -> Result<PhaseResult> {
    println!(
        "phase {}: setting up {} pools x {} pods in {} namespace(s) ({}...)",
        phase.name,
        phase.pools,
        phase.pods,
        phase.namespaces.len(),
        phase.namespaces[0]
    );
    for ns in &phase.namespaces {
        create_namespace(client, ns, run_id).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let account = await_condition(accounts, "default", |a: Option<&ServiceAccount>| a.is_some());
        tokio::time::timeout(Duration::from_secs(60), account)
            .await
            .map_err(|_| format!("no ServiceAccount default in {ns} after 60 s"))??;
    }
    let before_setup = operator.scrape().await?;

    // Pools, then pods, with bounded parallelism.
    let pools_in = |i: usize| -> Api<ServerPool> { Api::namespaced(client.clone(), phase.namespace(i)) };
    let pods_in = |i: usize| -> Api<Pod> { Api::namespaced(client.clone(), phase.namespace(i)) };
    futures::stream::iter(0..phase.pools)
        .map(|i| {
            let pools = pools_in(i);
            let mut pool = ServerPool::new(&phase.pool_name(i), ServerPoolSpec::with_app_port(8080));
            pool.metadata.labels = Some([(BENCH_LABEL.to_owned(), run_id.to_owned())].into());
            async move { pools.create(&PostParams::default(), &pool).await.map(|_| ()) }
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<()>()
        .await
        .map_err(|e| format!("create pools: {e}"))?;

    let all: Vec<(usize, usize)> = (0..phase.pools).flat_map(|i| (0..phase.pods).map(move |j| (i, j))).collect();
    let started = Instant::now();
    futures::stream::iter(all.iter().copied())
        .map(|(i, j)| {
            let pods = pods_in(i);
            let pod = bench_pod(&phase.pod_name(i, j), &phase.pool_name(i), &args.node);
            async move { pods.create(&PostParams::default(), &pod).await.map(|_| ()) }
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<()>()
        .await
        .map_err(|e| format!("create pods: {e}"))?;
    let create_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    futures::stream::iter(all.iter().copied().enumerate())
        .map(|(k, (i, j))| {
            let pods = pods_in(i);
            let name = phase.pod_name(i, j);
            let ip = pod_ip(k);
            async move { set_ready(&pods, &name, &ip, true).await }
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<()>()
        .await
        .map_err(|e| format!("mark pods ready: {e}"))?;
    let mark_ready_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let expected = phase.pods as i32;
    let keys: Vec<(String, String)> =
        (0..phase.pools).map(|i| (phase.namespace(i).to_owned(), phase.pool_name(i))).collect();
    let converged = wait_until(shared, |s| {
        keys.iter().all(|k| {
            s.pools.get(k).is_some_and(|v| {
                v.total_members == expected
                    && v.ready_members == expected
                    && v.members.len() == phase.pods
                    && v.members.values().all(|r| *r)
            })
        })
    });
    tokio::time::timeout(Duration::from_secs(args.converge_timeout), converged).await.map_err(|_| {
        let state = lock(&shared.state);
        let done = keys.iter().filter(|k| state.pools.get(*k).is_some_and(|v| v.ready_members == expected)).count();
        format!("after {} s only {done} of {} pools list all members ready", args.converge_timeout, keys.len())
    })?;
    let converge_s = started.elapsed().as_secs_f64();
    let before_flips = operator.scrape().await?;
    let api_before_flips = ApiCalls::scrape(client).await?;

    // Flips, one at a time.
    let mut ready = vec![true; all.len()];
    let mut samples = Vec::with_capacity(args.flips);
    let mut patches = Vec::with_capacity(args.flips);
    let mut timeouts = 0;
    for _ in 0..args.flips {
        let k = (rng.next() % all.len() as u64) as usize;
        let (i, j) = all[k];
        ready[k] = !ready[k];
        let pool_ready = (0..phase.pods).filter(|jj| ready[i * phase.pods + jj]).count() as i32;
        let name = phase.pod_name(i, j);
        let (tx, rx) = oneshot::channel();
        lock(&shared.state).pending = Some(PendingFlip {
            pool: (phase.namespace(i).to_owned(), phase.pool_name(i)),
            pod: name.clone(),
            ready: ready[k],
            ready_members: pool_ready,
            seen: tx,
        });
        let sent = Instant::now();
        set_ready(&pods_in(i), &name, &pod_ip(k), ready[k]).await.map_err(|e| format!("flip {name}: {e}"))?;
        let returned = Instant::now();
        patches.push(returned - sent);
        match tokio::time::timeout(Duration::from_secs(args.flip_timeout), rx).await {
            Ok(Ok(seen)) => samples.push(seen.saturating_duration_since(returned)),
            Ok(Err(_)) => return Err("the pool watch ended".into()),
            Err(_) => {
                timeouts += 1;
                eprintln!("flip of {name} to ready={} not shown within {} s", ready[k], args.flip_timeout);
                lock(&shared.state).pending = None;
            }
        }
    }
    let after = operator.scrape().await?;
    let api_after_flips = ApiCalls::scrape(client).await?;
    let (rss_kib, hwm_kib) = operator.memory()?;
    Ok(PhaseResult {
        name: phase.name,
        namespaces: phase.namespaces.len(),
        pools: phase.pools,
        pods_per_pool: phase.pods,
        create_s,
        mark_ready_s,
        converge_s,
        latency: Latency::of(samples),
        patch: Latency::of(patches),
        timeouts,
        metrics_setup: before_flips.since(&before_setup),
        metrics_flips: after.since(&before_flips),
        api_flips: api_after_flips.since(&api_before_flips),
        rss_kib,
        hwm_kib,
    })
}

/// A pod bound to the fake node, labelled into `pool`; it never runs.
fn bench_pod(name: &str, pool: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "handover-bench:none"}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}
            ]
        }
    }))
    .expect("a valid Pod")
}

/// A distinct pod IP per pod of a phase, in 10.200.0.0/13.
fn pod_ip(k: usize) -> String {
    format!("10.{}.{}.{}", 200 + (k >> 16) % 8, (k >> 8) & 0xff, k & 0xff)
}

/// What a kubelet reports for a running pod that is (or stopped being) ready.
async fn set_ready(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now().to_string();
    let status = if ready { "True" } else { "False" };
    let cond = |type_: &str, status: &str| json!({"type": type_, "status": status, "lastTransitionTime": now});
    let patch = json!({"status": {
        "phase": "Running",
        "hostIP": "10.255.0.1",
        "hostIPs": [{"ip": "10.255.0.1"}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            cond("PodScheduled", "True"),
            cond("Initialized", "True"),
            cond("ContainersReady", status),
            cond("Ready", status),
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Cluster setup and cleanup.

async fn ensure_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ServerPool::crd();
    let name = crd.name_any();
    if crds.get_opt(&name).await?.is_none() {
        println!("installing the ServerPool CRD (it stays installed)");
        crds.create(&PostParams::default(), &crd).await?;
    }
    tokio::time::timeout(Duration::from_secs(60), await_condition(crds, &name, conditions::is_crd_established()))
        .await
        .map_err(|_| "the ServerPool CRD is not established after 60 s")??;
    Ok(())
}

async fn check_foreign_pools(client: &Client, allow: bool) -> Result<()> {
    let pools: Api<ServerPool> = Api::all(client.clone());
    let foreign: Vec<String> = pools
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| !p.labels().contains_key(BENCH_LABEL))
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    // A running operator (the Helm chart's, the end-to-end suite's) would reconcile the bench's
    // pools too and blur the figures: look for a recently renewed handover leader Lease.
    let leases: Api<Lease> = Api::all(client.clone());
    let now = jiff::Timestamp::now();
    let live: Vec<String> = leases
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|l| l.namespace().as_deref() != Some(NODE_LEASE_NS) && l.name_any().starts_with("handover"))
        .filter(|l| {
            l.spec.as_ref().and_then(|s| s.renew_time.as_ref()).is_some_and(|t| now.duration_since(t.0).as_secs() < 30)
        })
        .map(|l| format!("{}/{}", l.namespace().unwrap_or_default(), l.name_any()))
        .collect();
    if !live.is_empty() && !allow {
        return Err(format!(
            "another handover operator holds a live Lease ({}): it would reconcile the bench's pools too. \
             Stop it (or wait for the test using it), or pass --allow-foreign-pools",
            live.join(", ")
        )
        .into());
    }
    if !foreign.is_empty() && !allow {
        return Err(format!(
            "{} ServerPools exist that the bench did not create ({}...): another test is probably using the cluster, \
             and the bench's operator would reconcile them too. Wait for it, or pass --allow-foreign-pools",
            foreign.len(),
            foreign.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )
        .into());
    }
    Ok(())
}

async fn create_namespace(client: &Client, name: &str, run_id: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": {BENCH_LABEL: run_id}}}))?;
    namespaces.create(&PostParams::default(), &ns).await.map_err(|e| format!("create namespace {name}: {e}"))?;
    Ok(())
}

async fn create_node(client: &Client, name: &str, run_id: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await?.is_some() {
        return Err(format!("Node {name} exists already: a run was interrupted? scale-bench --cleanup").into());
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            BENCH_LABEL: run_id,
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
        }},
        // Nothing may be scheduled here: only the bench binds pods to it, by spec.nodeName.
        "spec": {"taints": [{"key": BENCH_LABEL, "value": run_id, "effect": "NoSchedule"}]},
    }))?;
    nodes.create(&PostParams::default(), &node).await.map_err(|e| format!("create Node {name}: {e}"))?;
    heartbeat_once(client, name).await?;
    println!("registered fake Node {name} (no agent: the bench renews its Lease and sets its pods' status)");
    Ok(())
}

/// Keeps the fake node Ready for the node lifecycle controller (which would otherwise mark every
/// pod on it NotReady): node Lease renewed and Ready heartbeat every 10 s.
async fn node_heartbeat(client: Client, name: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Err(e) = heartbeat_once(&client, &name).await {
            eprintln!("fake node heartbeat: {e}");
        }
    }
}

async fn heartbeat_once(client: &Client, name: &str) -> Result<()> {
    let now = jiff::Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node of scale-bench",
            "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string(),
        }],
        "addresses": [{"type": "InternalIP", "address": "10.255.0.1"}],
        "capacity": {"pods": "10000", "cpu": "64", "memory": "256Gi"},
        "allocatable": {"pods": "10000", "cpu": "64", "memory": "256Gi"},
    }});
    // The Ready condition's transition time moves with every heartbeat: nothing here reads it.
    nodes.patch_status(name, &PatchParams::default(), &Patch::Strategic(status)).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NS);
    // MicroTime: exactly six fractional digits, as the API server insists.
    let micro = serde_json::to_value(MicroTime(now))?;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro},
    });
    leases.patch(name, &PatchParams::apply("handover-scale-bench").force(), &Patch::Apply(lease)).await?;
    Ok(())
}

/// Removes the namespaces labelled `selector` (their pods force-deleted, their pools' finalizers
/// dropped: no kubelet and no operator are left to do it) and the fake node with its Lease.
async fn cleanup(client: &Client, selector: &str, node: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let list = namespaces.list(&ListParams::default().labels(selector)).await?;
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    for ns in &list.items {
        let name = ns.name_any();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
        pods.delete_collection(&now, &ListParams::default()).await?;
        let pools: Api<ServerPool> = Api::namespaced(client.clone(), &name);
        for p in pools.list(&ListParams::default()).await? {
            if !p.finalizers().is_empty() {
                let strip = json!({"metadata": {"finalizers": null}});
                pools.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(strip)).await?;
            }
        }
        let _ = namespaces.delete(&name, &DeleteParams::default()).await?;
    }
    // One deadline for all of them: they terminate in parallel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for ns in &list.items {
        let uid = ns.uid().unwrap_or_default();
        let name = ns.name_any();
        let gone = await_condition(namespaces.clone(), &name, conditions::is_deleted(&uid));
        if tokio::time::timeout_at(deadline, gone).await.is_err() {
            eprintln!("namespace {name} still terminating after 180 s: see `kubectl get ns {name} -o yaml`");
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    if let Some(n) = nodes.get_opt(node).await?
        && n.labels().contains_key(BENCH_LABEL)
    {
        nodes.delete(node, &DeleteParams::default()).await?;
        let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NS);
        if leases.get_opt(node).await?.is_some() {
            leases.delete(node, &DeleteParams::default()).await?;
        }
    }
    println!("removed {} namespaces and the fake node {node}", list.items.len());
    Ok(())
}

/// Aborts a background task when dropped, however `bench` ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A small deterministic generator for the flip order (reproducible with `--seed`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_and_errors_kept_by_kind() {
        let text = "# HELP x\n\
            handover_operator_reconciles_total 12\n\
            handover_operator_reconcile_errors_total{error=\"finalizer\"} 3\n\
            handover_operator_reconcile_errors_total{error=\"kube\"} 1\n\
            handover_operator_reconcile_duration_seconds_sum 0.5\n\
            handover_operator_reconcile_duration_seconds_count 10\n\
            handover_operator_reconcile_duration_seconds_bucket{le=\"0.1\"} 9\n";
        let m = Metrics::parse(text);
        assert_eq!(m.reconciles, 12.0);
        assert_eq!(m.errors, 4.0);
        assert_eq!(m.error_kinds.get("finalizer"), Some(&3.0));
        assert!((m.mean_ms() - 50.0).abs() < 1e-9);
        let later = Metrics::parse(&text.replace("total 12", "total 20").replace("} 3", "} 5"));
        let d = later.since(&m);
        assert_eq!(d.reconciles, 8.0);
        assert_eq!(d.error_kinds.get("finalizer"), Some(&2.0));
        assert_eq!(d.error_kinds.get("kube"), None);
    }

    #[test]
    fn api_calls_are_summed_by_resource_and_verb_without_watches() {
        let text = "# HELP apiserver_request_total x\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"services\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 7\n\
            apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"services\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 1\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"handover.dev\",resource=\"serverpools\",scope=\"resource\",subresource=\"status\",verb=\"APPLY\",version=\"v1alpha1\"} 4\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"handover.dev\",resource=\"serverpools\",scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1alpha1\"} 3\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"resource\",subresource=\"status\",verb=\"PATCH\",version=\"v1\"} 90\n\
            apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"events.k8s.io\",resource=\"events\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1\"} 2\n";
        let calls = ApiCalls::parse(text);
        assert_eq!(calls.0.get("services APPLY"), Some(&8.0));
        assert_eq!(calls.0.get("serverpools/status APPLY"), Some(&4.0));
        assert_eq!((calls.operator(), calls.events()), (12.0, 2.0), "{calls:?}");
        let before = ApiCalls(BTreeMap::from([("services APPLY".to_owned(), 8.0)]));
        assert_eq!(calls.since(&before).operator(), 4.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!((l.n, l.p50_ms, l.p99_ms, l.max_ms), (100, 50.0, 99.0, 100.0));
        let one = Latency::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert!(Latency::of(Vec::new()).p50_ms.is_nan());
    }

    #[test]
    fn pod_ips_are_distinct_and_valid() {
        let ips: std::collections::HashSet<String> = (0..300_000).map(pod_ip).collect();
        assert_eq!(ips.len(), 300_000);
        assert!(ips.iter().all(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()));
    }

    #[test]
    fn bench_pods_are_bound_labelled_and_tolerant() {
        let pod = bench_pod("p", "pool-0001", "fake");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("fake"));
        assert_eq!(pod.metadata.labels.expect("labels").get(POOL_LABEL).map(String::as_str), Some("pool-0001"));
        let tolerated: Vec<_> = spec.tolerations.unwrap_or_default().into_iter().filter_map(|t| t.key).collect();
        assert!(tolerated.iter().any(|k| k == "node.kubernetes.io/unreachable"));
        assert!(tolerated.iter().any(|k| k == "node.kubernetes.io/not-ready"));
    }
}
