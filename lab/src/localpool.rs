//! A pool of "pods" on one machine: each pod is a sidecar process and a demo-app process in a
//! network namespace of its own (its own IP and localhost) or, without root, on a loopback
//! address of its own, with a registry keeper playing the operator's part (a member that fails
//! its readiness probe leaves the peers file). Used by the demo, the integration tests and the
//! benchmark; faults are real signals sent to real processes.
//!
//! A pool's directory (keys, peers file, every process's log) is removed when it is dropped, and
//! kept when a test panics (its path is printed) or `HANDOVER_KEEP_POOL` is set;
//! `HANDOVER_POOL_LOG` is the sidecars' `RUST_LOG` (`info` unless set).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::netns::Network;
use handover_common::sync;
use handover_dataplane::decide::Mode;
use handover_dataplane::registry::parse_members;

/// Ports every pod uses on its own address, as containers of a real pod would.
pub const DATA_PORT: u16 = 8000;
pub const ADMIN_PORT: u16 = 9901;
pub const APP_PORT: u16 = 8080;
/// The app's state endpoint: a listener of its own on the pod's loopback (or its own address).
pub const STATE_PORT: u16 = 8081;
/// The pool's name in cookies.
pub const POOL: &str = "local/demo";
/// How often the registry keeper probes readiness.
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed probes before a member leaves the registry (Kubernetes' failureThreshold):
/// one slow answer on a loaded machine does not evict a pod.
const FAILURE_THRESHOLD: u32 = 3;

/// How to start a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// The `handover-sidecar` executable.
    pub exe: PathBuf,
    pub pods: usize,
    pub mode: Mode,
    pub snapshot_interval: Duration,
    pub drain_grace: Duration,
    /// More flags for every sidecar (e.g. `--cookie-max-bytes 8000`).
    pub sidecar_args: Vec<String>,
    /// More flags for every app (e.g. `--refuse-restore`).
    pub app_args: Vec<String>,
    /// The pool's `namespace/name` (cookies are bound to it, and named after it by default).
    pub pool: String,
    /// A command the sidecars start under, as a container runtime sets their limits: e.g.
    /// util-linux's `prlimit --nofile=1024:524288 --` (containerd 2's limit on open files), or a
    /// shell that enters a memory cgroup and execs the rest. Empty: none.
    pub sidecar_prefix: Vec<String>,
}

impl PoolOptions {
    pub fn new(exe: PathBuf, pods: usize) -> PoolOptions {
        PoolOptions {
            exe,
            pods,
            mode: Mode::Push,
            snapshot_interval: Duration::from_millis(500),
            drain_grace: Duration::from_millis(500),
            sidecar_args: Vec::new(),
            app_args: Vec::new(),
            pool: POOL.to_owned(),
            sidecar_prefix: Vec::new(),
        }
    }
}

/// One pod: its identity, addresses and processes.
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub ip: IpAddr,
    /// Its network namespace, when pods have their own.
    netns: Option<String>,
    app: Option<Child>,
    sidecar: Option<Child>,
}

impl Pod {
    pub fn data(&self) -> SocketAddr {
        SocketAddr::new(self.ip, DATA_PORT)
    }
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, ADMIN_PORT)
    }
    /// Where the app listens, as its sidecar reaches it: the pod's own localhost when the pod has
    /// a namespace, else its address on the host's loopback.
    fn app_listen(&self) -> SocketAddr {
        self.local(APP_PORT)
    }

    /// Where the app's state endpoint listens: beside the app, never reachable through the sidecar.
    fn state_listen(&self) -> SocketAddr {
        self.local(STATE_PORT)
    }

    fn local(&self, port: u16) -> SocketAddr {
        match self.netns {
            Some(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            None => SocketAddr::new(self.ip, port),
        }
    }

    /// Where the sidecar listens: every address of its namespace, or its own loopback address.
    fn bind(&self, port: u16) -> SocketAddr {
        match self.netns {
            // Every address of the pod, of both families, as a real pod's data port listens (its
            // admin port listens on the pod IP alone; here both take the namespace's addresses).
            Some(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            None => SocketAddr::new(self.ip, port),
        }
    }
}

/// What the registry keeper knows of a pod.
#[derive(Clone, Debug)]
struct Probe {
    name: String,
    uid: String,
    data: SocketAddr,
    admin: SocketAddr,
}

/// Signals used as faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Kill,
    Term,
    Stop,
    Cont,
}

pub(crate) fn signal(child: &Child, sig: Sig) {
    let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) else {
        return;
    };
    let sig = match sig {
        Sig::Kill => rustix::process::Signal::KILL,
        Sig::Term => rustix::process::Signal::TERM,
        Sig::Stop => rustix::process::Signal::STOP,
        Sig::Cont => rustix::process::Signal::CONT,
    };
    let _ = rustix::process::kill_process(pid, sig);
}

/// A running local pool. Dropping it kills every process and removes its directory.
pub struct LocalPool {
    opts: PoolOptions,
    pub dir: PathBuf,
    pub key_file: PathBuf,
    peers_file: PathBuf,
    net: Network,
    next_index: u8,
    pub pods: Vec<Pod>,
    probes: Arc<Mutex<Vec<Probe>>>,
    ready: Arc<Mutex<Vec<SocketAddr>>>,
    /// Each pod's last failed readiness probe: what a pod that never became ready answered.
    probe_failures: Arc<Mutex<HashMap<String, String>>>,
    /// While set, the registry keeper publishes no change: a registry that lags (an operator
    /// slow to update the pool's members), so a pod that drains stays listed.
    registry_held: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        self.keeper.abort();
        for pod in &mut self.pods {
            for child in [&mut pod.app, &mut pod.sidecar].into_iter().flatten() {
                signal(child, Sig::Cont);
                let _ = child.start_kill();
            }
        }
        if std::thread::panicking() {
            eprintln!("local pool logs kept in {}", self.dir.display());
        } else {
            if std::env::var_os("HANDOVER_KEEP_POOL").is_none() {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// Polls `check` every 20ms until it holds or `timeout` passes; the error names what was awaited.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `path` from `addr` with a short timeout; the status code, if any answer came.
pub async fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: probe\r\n\r\n").as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.ok().flatten()
}

/// A readiness probe of a sidecar's admin `addr`: its status, or why it failed (the failing
/// answer's body, which says why the sidecar is not ready, or the connection's error).
async fn probe_ready(addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(b"GET /ready HTTP/1.0\r\nHost: probe\r\n\r\n").await.map_err(|e| format!("send: {e}"))?;
        // An HTTP/1.0 answer ends with the connection; the bound keeps a chatty one cheap.
        let mut answer = Vec::new();
        (&mut stream).take(512).read_to_end(&mut answer).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        match text.split_once("\r\n\r\n") {
            Some((head, _)) if head.split_whitespace().nth(1) == Some("200") => Ok(()),
            Some((head, body)) => Err(format!("{} {}", head.lines().next().unwrap_or_default(), body.trim())),
            None => Err(format!("no complete answer: {text:?}")),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
}

/// Reads a pod's whole metrics page.
pub async fn scrape(admin: SocketAddr) -> Option<String> {
    admin_get(admin, "/metrics").await
}

/// The body of a `200 OK` answer of a sidecar's admin endpoint `path` (2 s at most).
pub async fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: probe\r\n\r\n").as_bytes()).await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

/// The pod names a sidecar's own registry lists (its admin `/members`), sorted.
pub async fn member_names(admin: SocketAddr) -> Option<Vec<String>> {
    let members = parse_members(&admin_get(admin, "/members").await?).ok()?;
    Some(members.into_iter().map(|m| m.name).collect())
}

/// The sum of a metric's samples whose line starts with `prefix` (name and any labels).
pub fn metric_sum(page: &str, prefix: &str) -> f64 {
    page.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

impl LocalPool {
    /// Starts `opts.pods` pods and waits until every one is ready and listed, by the pool's
    /// registry and by every sidecar's own (a sidecar that does not know its peers yet has no
    /// successor to back its sessions up to: a test would start from a pool still settling).
    pub async fn start(opts: PoolOptions) -> Result<LocalPool, String> {
        let dir = std::env::temp_dir().join(format!("handover-pool-{}", handover_dataplane::random::session_id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key_file = dir.join("keys");
        std::fs::write(&key_file, handover_dataplane::keys::generate_line(1, 0) + "\n").map_err(|e| e.to_string())?;
        let peers_file = dir.join("peers");
        std::fs::write(&peers_file, "").map_err(|e| e.to_string())?;
        let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
        let ready: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let probe_failures: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let registry_held = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_registry(
            Arc::clone(&probes),
            Arc::clone(&ready),
            Arc::clone(&probe_failures),
            Arc::clone(&registry_held),
            peers_file.clone(),
        ));
        let mut pool = LocalPool {
            opts: opts.clone(),
            dir,
            key_file,
            peers_file,
            net: Network::detect(),
            next_index: 0,
            pods: Vec::new(),
            probes,
            ready,
            probe_failures,
            registry_held,
            keeper,
        };
        for _ in 0..opts.pods {
            pool.add_pod().await?;
        }
        let all: Vec<usize> = (0..opts.pods).collect();
        pool.wait_sidecars_see(&all, Duration::from_secs(10)).await?;
        Ok(pool)
    }

    /// Starts a new pod (new name, uid and address) and waits until the registry lists it.
    pub async fn add_pod(&mut self) -> Result<usize, String> {
        self.next_index = self.next_index.checked_add(1).filter(|i| *i < 255).ok_or("out of pod addresses")?;
        let i = self.next_index;
        let (ip, netns) = match &self.net {
            Network::Loopback(block) => (IpAddr::V4(Ipv4Addr::new(127, block.net[0], block.net[1], i)), None),
            Network::Namespaces(bridge) => {
                bridge.add_pod(i)?;
                (bridge.pod_ip(i), Some(bridge.namespace(i)))
            }
        };
        let mut pod = Pod {
            name: format!("pod-{i}"),
            uid: handover_dataplane::random::session_id(),
            ip,
            netns,
            app: None,
            sidecar: None,
        };
        pod.app = Some(self.spawn_app(&pod)?);
        pod.sidecar = Some(self.spawn_sidecar(&pod)?);
        sync::lock(&self.probes).push(Probe {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            data: pod.data(),
            admin: pod.admin(),
        });
        let data = pod.data();
        self.pods.push(pod);
        let index = self.pods.len() - 1;
        let ready = Arc::clone(&self.ready);
        // A held registry lists no new pod: then the pod's own readiness is waited for.
        let held = self.registry_held.load(Ordering::SeqCst);
        let admin = self.pods[index].admin();
        let what = format!("pod {} to be ready{}", self.pods[index].name, if held { "" } else { " and listed" });
        let waited = wait_for(&what, Duration::from_secs(30), || {
            let listed = sync::lock(&ready).contains(&data);
            async move { if held { probe(admin, "/ready").await == Some(200) } else { listed } }
        })
        .await;
        if let Err(e) = waited {
            let name = &self.pods[index].name;
            let tail = |file: String| {
                let text = std::fs::read_to_string(self.dir.join(&file)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- {file}\n{}", lines[lines.len().saturating_sub(10)..].join("\n"))
            };
            let probed =
                sync::lock(&self.probe_failures).get(name).cloned().unwrap_or_else(|| "none failed".to_owned());
            return Err(format!(
                "{e}\nlast failed probe of {}/ready: {probed}\n{}\n{}",
                self.pods[index].admin(),
                tail(format!("{name}.sidecar.log")),
                tail(format!("{name}.app.log"))
            ));
        }
        Ok(index)
    }

    fn log(&self, name: &str) -> Result<Stdio, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .map_err(|e| format!("cannot open log {name}: {e}"))?;
        Ok(Stdio::from(file))
    }

    /// A command for `exe` run inside the pod (in its namespace, when it has one), under `prefix`.
    fn in_pod(&self, pod: &Pod, prefix: &[String]) -> Command {
        let mut argv: Vec<std::ffi::OsString> = prefix.iter().map(Into::into).collect();
        if let Some(ns) = &pod.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        argv.push(self.opts.exe.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    /// How pods are networked: `namespaces` or `loopback`.
    pub fn network(&self) -> &'static str {
        self.net.kind()
    }

    fn spawn_app(&self, pod: &Pod) -> Result<Child, String> {
        let push = ["--push".to_owned(), (self.opts.mode != Mode::Pull).to_string()];
        let args: Vec<String> = push.into_iter().chain(self.opts.app_args.iter().cloned()).collect();
        self.spawn_demo_app(pod, pod.app_listen(), &pod.name, "app", &args)
    }

    /// A demo app in pod `pod`, named `name`, listening on `listen` (its state endpoint where the
    /// pod's app has it), with `args` more, logging to `<pod>.<log>.log`.
    fn spawn_demo_app(
        &self,
        pod: &Pod,
        listen: SocketAddr,
        name: &str,
        log: &str,
        args: &[String],
    ) -> Result<Child, String> {
        let mut cmd = self.in_pod(pod, &[]);
        cmd.arg("demo-app")
            .args(["--listen", &listen.to_string(), "--name", name])
            .args(["--state-listen", &pod.state_listen().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("{}.{log}.log", pod.name))?)
            .kill_on_drop(true);
        cmd.spawn().map_err(|e| format!("cannot start the demo app {name}: {e}"))
    }

    fn spawn_sidecar(&self, pod: &Pod) -> Result<Child, String> {
        let mode = match self.opts.mode {
            Mode::Push => "push",
            Mode::Pull => "pull",
            Mode::Both => "both",
        };
        let mut cmd = self.in_pod(pod, &self.opts.sidecar_prefix);
        cmd.arg("run")
            .args(["--listen", &pod.bind(DATA_PORT).to_string()])
            .args(["--admin", &pod.bind(ADMIN_PORT).to_string()])
            .args(["--app", &pod.app_listen().to_string()])
            .args(["--state-addr", &pod.state_listen().to_string()])
            .args(["--pod-ip", &pod.ip.to_string()])
            .arg(format!("--pool={}", self.opts.pool))
            .arg(format!("--pod-name={}", pod.name))
            .arg(format!("--pod-uid={}", pod.uid))
            .arg("--key-file")
            .arg(&self.key_file)
            .arg("--peers")
            .arg(self.view_of(pod)?)
            .args(["--mode", mode])
            .args(["--snapshot-interval", &format!("{}ms", self.opts.snapshot_interval.as_millis())])
            .args(["--drain-grace", &format!("{}ms", self.opts.drain_grace.as_millis())])
            .args(["--cookie-secure", "false", "--workers", "1"])
            .args(&self.opts.sidecar_args)
            // `HANDOVER_POOL_LOG=debug` to trace a failing test's sessions through every sidecar.
            .env("RUST_LOG", std::env::var("HANDOVER_POOL_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("{}.sidecar.log", pod.name))?)
            .kill_on_drop(true);
        cmd.spawn().map_err(|e| format!("cannot start the sidecar: {e}"))
    }

    /// The name of the pool's state cookie, as its sidecars were told or derive it.
    pub fn cookie_name(&self) -> String {
        let args = &self.opts.sidecar_args;
        // The last occurrence wins, as with the sidecar's own flag parser.
        let flag = |name: &str| {
            let mut value = None;
            for (i, arg) in args.iter().enumerate() {
                if arg == name {
                    value = args.get(i + 1).cloned();
                } else if let Some(v) = arg.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
                    value = Some(v.to_owned());
                }
            }
            value
        };
        match flag("--cookie-name").filter(|n| !n.is_empty()) {
            Some(name) => name,
            None => handover_dataplane::cookie_attrs::default_name(
                &self.opts.pool,
                flag("--cookie-secure").is_some_and(|v| v == "true"),
                &flag("--cookie-path").unwrap_or_else(|| "/".to_owned()),
                &flag("--cookie-domain").unwrap_or_default(),
            ),
        }
    }

    /// Addresses of the pods the registry lists as ready: what a Service would balance over.
    pub fn ready_addrs(&self) -> Vec<SocketAddr> {
        sync::lock(&self.ready).clone()
    }

    /// A shared handle on the ready list, for client tasks.
    pub fn ready_handle(&self) -> Arc<Mutex<Vec<SocketAddr>>> {
        Arc::clone(&self.ready)
    }

    /// Sends `sig` to both processes of pod `i`.
    pub fn signal_pod(&self, i: usize, sig: Sig) {
        let pod = &self.pods[i];
        for child in [pod.sidecar.as_ref(), pod.app.as_ref()].into_iter().flatten() {
            signal(child, sig);
        }
    }

    /// Sends `sig` to pod `i`'s app only.
    pub fn signal_app(&self, i: usize, sig: Sig) {
        if let Some(app) = self.pods[i].app.as_ref() {
            signal(app, sig);
        }
    }

    /// Sends `sig` to pod `i`'s sidecar only.
    pub fn signal_sidecar(&self, i: usize, sig: Sig) {
        if let Some(sidecar) = self.pods[i].sidecar.as_ref() {
            signal(sidecar, sig);
        }
    }

    /// SIGKILLs pod `i` (both processes at once, once) and forgets it, as a node would lose a pod.
    pub async fn kill_pod(&mut self, i: usize) {
        self.signal_pod(i, Sig::Kill);
        self.forget(i, false).await;
    }

    /// SIGTERMs pod `i`'s sidecar, waits for it to drain and exit, then stops the app.
    pub async fn terminate_pod(&mut self, i: usize) -> Result<(), String> {
        let limit = self.opts.drain_grace + Duration::from_secs(10);
        let name = self.pods[i].name.clone();
        if let Some(sidecar) = self.pods[i].sidecar.as_mut() {
            signal(sidecar, Sig::Term);
            tokio::time::timeout(limit, sidecar.wait())
                .await
                .map_err(|_| format!("sidecar of {name} did not exit within {limit:?} of SIGTERM"))?
                .map_err(|e| e.to_string())?;
        }
        if let Some(app) = self.pods[i].app.as_ref() {
            signal(app, Sig::Term);
        }
        self.forget(i, true).await;
        Ok(())
    }

    /// Forgets pod `i` and reaps its processes, SIGKILLing each first when `kill` (not when the
    /// caller already signalled them).
    async fn forget(&mut self, i: usize, kill: bool) {
        let name = self.pods[i].name.clone();
        sync::lock(&self.probes).retain(|p| p.name != name);
        let pod = &mut self.pods[i];
        for mut child in [pod.sidecar.take(), pod.app.take()].into_iter().flatten() {
            if kill {
                let _ = child.start_kill();
            }
            let _ = child.wait().await;
        }
    }

    /// SIGKILLs only the app of pod `i` (the sidecar lives on).
    pub async fn crash_app(&mut self, i: usize) {
        if let Some(app) = self.pods[i].app.as_mut() {
            let _ = app.start_kill();
            let _ = app.wait().await;
        }
    }

    /// Apps started from now on (`restart_app`, `add_pod`) run with `args`: another release.
    pub fn set_app_args(&mut self, args: Vec<String>) {
        self.opts.app_args = args;
    }

    /// Starts pod `i`'s app again (as the kubelet restarts a crashed container).
    pub fn restart_app(&mut self, i: usize) -> Result<(), String> {
        let app = self.spawn_app(&self.pods[i])?;
        self.pods[i].app = Some(app);
        Ok(())
    }

    /// Starts a stranger at the address of pod `i`, which is gone ([`LocalPool::kill_pod`]): a
    /// demo app named `stranger` on the pod's data port and nothing on its admin port, as a new
    /// pod of another Deployment would be once it got the dead pod's IP. Waits until it listens.
    pub async fn start_stranger(&mut self, i: usize) -> Result<(), String> {
        let pod = &self.pods[i];
        let stranger = self.spawn_demo_app(pod, pod.bind(DATA_PORT), "stranger", "stranger", &[])?;
        let data = pod.data();
        self.pods[i].app = Some(stranger);
        wait_for("the stranger to listen", Duration::from_secs(10), || async move { probe(data, "/").await.is_some() })
            .await
    }

    /// SIGKILLs only the sidecar of pod `i` (the app lives on).
    pub async fn crash_sidecar(&mut self, i: usize) {
        if let Some(sidecar) = self.pods[i].sidecar.as_mut() {
            let _ = sidecar.start_kill();
            let _ = sidecar.wait().await;
        }
    }

    /// Starts pod `i`'s sidecar again.
    pub fn restart_sidecar(&mut self, i: usize) -> Result<(), String> {
        let sidecar = self.spawn_sidecar(&self.pods[i])?;
        self.pods[i].sidecar = Some(sidecar);
        Ok(())
    }

    /// Whether pod `i` still has processes.
    pub fn is_running(&self, i: usize) -> bool {
        self.pods[i].sidecar.is_some() || self.pods[i].app.is_some()
    }

    /// Indexes of pods with processes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.pods.len()).filter(|i| self.is_running(*i)).collect()
    }

    /// Rotates the key ring as the operator does: a new current key in front, the old ones kept.
    pub fn rotate_keys(&self) -> Result<u32, String> {
        let text = std::fs::read_to_string(&self.key_file).map_err(|e| e.to_string())?;
        let ring = handover_dataplane::keys::KeyRing::parse(&text).map_err(|e| e.to_string())?;
        let id = ring.ids().into_iter().max().unwrap_or(0) + 1;
        write_atomically(&self.key_file, &format!("{}\n{text}", handover_dataplane::keys::generate_line(id, 0)))?;
        Ok(id)
    }

    /// While `hold`, the registry lists the pods it lists now, whatever their readiness: a
    /// registry that lags behind a pod that drains, or one that joins ([`LocalPool::add_pod`]
    /// then waits for the new pod's readiness alone).
    pub fn hold_registry(&self, hold: bool) {
        self.registry_held.store(hold, Ordering::SeqCst);
    }

    /// Where `pod`'s sidecar reads its members: the registry's peers file (through a link of its
    /// own, made at its first start), unless [`LocalPool::pin_view`] gave it a view of its own.
    fn view_of(&self, pod: &Pod) -> Result<PathBuf, String> {
        let view = self.dir.join(format!("{}.peers", pod.name));
        if std::fs::symlink_metadata(&view).is_err() {
            std::os::unix::fs::symlink(&self.peers_file, &view).map_err(|e| format!("{}: {e}", view.display()))?;
        }
        Ok(view)
    }

    /// From now on pod `i`'s sidecar lists the pods `members` alone, whatever the registry lists:
    /// a registry that lags behind on one pod and not on others, as the ServerPool's status reaches
    /// each sidecar at its own time.
    pub fn pin_view(&self, i: usize, members: &[usize]) -> Result<(), String> {
        let view = self.view_of(&self.pods[i])?;
        let text: String =
            members.iter().map(|m| &self.pods[*m]).map(|p| format!("{} {} {}\n", p.name, p.uid, p.data())).collect();
        write_atomically(&view, &text)
    }

    /// Waits until the registry lists exactly the running, unstopped pods `expected`.
    pub async fn wait_listed(&self, expected: &[usize], timeout: Duration) -> Result<(), String> {
        let want: Vec<SocketAddr> = expected.iter().map(|i| self.pods[*i].data()).collect();
        let ready = Arc::clone(&self.ready);
        wait_for("the registry to list exactly the expected pods", timeout, || {
            let mut have = sync::lock(&ready).clone();
            let mut want = want.clone();
            have.sort();
            want.sort();
            async move { have == want }
        })
        .await
    }

    /// Waits until every running sidecar's own registry (its admin `/members`) lists exactly the
    /// pods `expected` (sidecars re-read the peers file on their own schedule).
    pub async fn wait_sidecars_see(&self, expected: &[usize], timeout: Duration) -> Result<(), String> {
        self.wait_pods_see(&self.running(), expected, timeout).await
    }

    /// [`LocalPool::wait_sidecars_see`] for the sidecars of the pods `asked` only (a stopped pod's
    /// answers nobody).
    pub async fn wait_pods_see(&self, asked: &[usize], expected: &[usize], timeout: Duration) -> Result<(), String> {
        let mut want: Vec<String> = expected.iter().map(|i| self.pods[*i].name.clone()).collect();
        want.sort();
        let admins: Vec<SocketAddr> = asked.iter().map(|i| self.pods[*i].admin()).collect();
        wait_for(&format!("every sidecar to list {want:?}"), timeout, || {
            let (admins, want) = (admins.clone(), want.clone());
            async move {
                for admin in admins {
                    if member_names(admin).await.as_ref() != Some(&want) {
                        return false;
                    }
                }
                true
            }
        })
        .await
    }

    /// Cuts pod `i` off the pool's network (its `eth0` down), as a partition or a default-deny
    /// policy does: what is sent to it is dropped, nothing is refused. Needs network namespaces
    /// (root); the pod's processes go on.
    pub fn cut_off(&self, i: usize) -> Result<(), String> {
        let ns = self.pods[i].netns.as_deref().ok_or("the pods have no network namespaces here (not root)")?;
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "link", "set", "eth0", "down"])
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(format!("ip -n {ns} link set eth0 down: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }

    /// Sum of a metric over every running pod.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let mut total = 0.0;
        for i in self.running() {
            if let Some(page) = scrape(self.pods[i].admin()).await {
                total += metric_sum(&page, prefix);
            }
        }
        total
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The operator's part: probe each pod's readiness and publish the ready ones as the peers file.
async fn keep_registry(
    probes: Arc<Mutex<Vec<Probe>>>,
    ready: Arc<Mutex<Vec<SocketAddr>>>,
    failed: Arc<Mutex<HashMap<String, String>>>,
    held: Arc<AtomicBool>,
    peers_file: PathBuf,
) {
    let mut last = String::new();
    // Consecutive failed probes by pod; a new pod counts as failing until its first good probe.
    let mut failures: HashMap<String, u32> = HashMap::new();
    loop {
        let candidates = sync::lock(&probes).clone();
        let checks = candidates.iter().map(|p| probe_ready(p.admin));
        let results = futures::future::join_all(checks).await;
        {
            let mut why = sync::lock(&failed);
            for (p, result) in candidates.iter().zip(results) {
                let f = failures.entry(p.name.clone()).or_insert(FAILURE_THRESHOLD);
                match result {
                    Ok(()) => *f = 0,
                    Err(e) => {
                        *f = f.saturating_add(1);
                        why.insert(p.name.clone(), e);
                    }
                }
            }
            why.retain(|name, _| candidates.iter().any(|p| &p.name == name));
        }
        failures.retain(|name, _| candidates.iter().any(|p| &p.name == name));
        let live: Vec<&Probe> =
            candidates.iter().filter(|p| failures.get(&p.name).is_some_and(|f| *f < FAILURE_THRESHOLD)).collect();
        let text: String = live.iter().map(|p| format!("{} {} {}\n", p.name, p.uid, p.data)).collect();
        if text != last && !held.load(Ordering::SeqCst) {
            if write_atomically(&peers_file, &text).is_ok() {
                last = text;
            }
            *sync::lock(&ready) = live.iter().map(|p| p.data).collect();
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// One client session: a cookie jar and a keep-alive connection, like a browser tab behind a
/// Service that balances per connection.
pub struct SessionClient {
    pub jar: HashMap<String, String>,
    conn: Option<(SocketAddr, SendRequest<Full<Bytes>>)>,
    timeout: Duration,
    /// The pod the last request failed on (no answer, or one the caller gave up on); cleared by
    /// an answer. A retry's pick avoids it ([`pick_ready`]).
    failed: Option<SocketAddr>,
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub served_via: SocketAddr,
}

impl Reply {
    /// The `Handover-Warning` the sidecar attached (a state it did not seal), if any.
    pub fn warning(&self) -> Option<String> {
        self.headers.get("handover-warning").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

impl Default for SessionClient {
    fn default() -> Self {
        SessionClient { jar: HashMap::new(), conn: None, timeout: Duration::from_secs(2), failed: None }
    }
}

impl SessionClient {
    /// A new client holding the cookies of `jar` (a second tab of the same browser).
    pub fn with_jar(jar: HashMap<String, String>) -> SessionClient {
        SessionClient { jar, ..SessionClient::default() }
    }

    /// Waits this long for each answer (2 s by default) before giving up on it.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The address this client is connected to, if any.
    pub fn connected_to(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|(a, _)| *a)
    }

    /// Drops the connection: the next request picks a pod again.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Drops the connection to `pod`, whose answer the caller does not take (a 503 from a pod
    /// that is draining, say): the retry picks another pod ([`last_failed`](Self::last_failed)).
    pub fn give_up_on(&mut self, pod: SocketAddr) {
        self.disconnect();
        self.failed = Some(pod);
    }

    /// The pod the last request failed on, unless an answer came since.
    pub fn last_failed(&self) -> Option<SocketAddr> {
        self.failed
    }

    /// The Cookie line this client sends (its jar's pairs, sorted); none while the jar is empty.
    pub fn cookie_header(&self) -> Option<String> {
        if self.jar.is_empty() {
            return None;
        }
        let mut pairs: Vec<String> = self.jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
        pairs.sort();
        Some(pairs.join("; "))
    }

    fn store_cookies(&mut self, headers: &HeaderMap) {
        apply_set_cookies(&mut self.jar, headers);
    }

    /// Sends one request; connects to `pick()` when not connected. Connection errors drop the
    /// connection and return an error: the caller decides whether to retry.
    pub async fn send(
        &mut self,
        pick: impl FnOnce() -> Option<SocketAddr>,
        method: Method,
        path: &str,
    ) -> Result<Reply, String> {
        self.send_with(pick, method, path, &[]).await
    }

    /// Like [`send`](Self::send) with extra request headers.
    pub async fn send_with(
        &mut self,
        pick: impl FnOnce() -> Option<SocketAddr>,
        method: Method,
        path: &str,
        extra: &[(&str, String)],
    ) -> Result<Reply, String> {
        if self.conn.as_ref().is_none_or(|(_, s)| s.is_closed()) {
            let addr = pick().ok_or("no ready pod to connect to")?;
            let connected = async {
                let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| format!("connect to {addr} timed out"))?
                    .map_err(|e| format!("connect to {addr}: {e}"))?;
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())
            };
            let (sender, conn) = connected.await.inspect_err(|_| self.failed = Some(addr))?;
            tokio::spawn(conn);
            self.conn = Some((addr, sender));
        }
        let cookie = self.cookie_header();
        let Some((addr, sender)) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        let addr = *addr;
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, "demo.local");
        if let Some(c) = cookie {
            builder = builder.header(header::COOKIE, c);
        }
        for (name, value) in extra {
            builder = builder.header(*name, value.as_str());
        }
        let req = builder.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let outcome = tokio::time::timeout(self.timeout, async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts, body))
        })
        .await;
        match outcome {
            Ok(Ok((parts, body))) => {
                self.failed = None;
                self.store_cookies(&parts.headers);
                if parts.headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close")) {
                    self.conn = None;
                }
                Ok(Reply { status: parts.status, headers: parts.headers, body, served_via: addr })
            }
            Ok(Err(e)) => {
                self.give_up_on(addr);
                Err(format!("request to {addr} failed: {e}"))
            }
            Err(_) => {
                self.give_up_on(addr);
                Err(format!("request to {addr} timed out after {:?}", self.timeout))
            }
        }
    }
}

/// Applies a response's `Set-Cookie` lines to `jar`, as a browser does when the response arrives
/// (`Max-Age=0` deletes).
pub fn apply_set_cookies(jar: &mut HashMap<String, String>, headers: &HeaderMap) {
    for line in headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
        let mut parts = line.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            continue;
        };
        let expired = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        if expired {
            jar.remove(name.trim());
        } else {
            jar.insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }
}

/// Picks a random address from the ready list, as a Service balances new connections. A retry
/// names the pod that just failed as `avoid` and gets another while another is listed, as an
/// ingress retries on the next upstream (nginx's `proxy_next_upstream`, Envoy's `previous_hosts`
/// retry predicate). Without it, a retry within the ~300 ms a killed pod stays listed picks it
/// again one time in three: the failover latency measured the client's dice, not the successor.
pub fn pick_ready(ready: &Mutex<Vec<SocketAddr>>, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
    let ready = sync::lock(ready);
    let not_avoided = |a: &&SocketAddr| Some(**a) != avoid;
    let others = ready.iter().filter(not_avoided).count();
    let mut b = [0u8; 4];
    handover_dataplane::random::fill(&mut b);
    let r = u32::from_le_bytes(b) as usize;
    if others == 0 {
        return ready.get(r % ready.len().max(1)).copied();
    }
    ready.iter().filter(not_avoided).nth(r % others).copied()
}

/// A demo-app session driven by a client that keeps a model of what it was acknowledged.
#[derive(Default)]
pub struct CounterSession {
    pub client: SessionClient,
    /// The counter value the client saw last: every acknowledged increment.
    pub acked: u64,
    /// Increments sent whose answer the client never saw (they may or may not have happened).
    pub uncertain: u64,
    /// Acknowledged increments the pool forgot.
    pub lost: u64,
    /// Error streaks that ended in a success, with how long each took.
    pub recoveries: Vec<Duration>,
    pub requests: u64,
    pub errors: u64,
    /// Increments this client had acknowledged.
    pub increments: u64,
    /// The session id the app answered last.
    pub session: String,
    /// The cookie jar of a browser whose other connections (other `CounterSession`s) carry
    /// requests of the same session at the same time; `None`: this client alone.
    pub shared_jar: Option<Arc<Mutex<HashMap<String, String>>>>,
}

/// How often and how long a client retries before giving up on one request.
const RETRY_EVERY: Duration = Duration::from_millis(20);
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

impl CounterSession {
    /// One increment, retried on other pods until acknowledged (or 30 s pass). Checks the answer
    /// against the model: a count below `acked + 1` means acknowledged updates were lost.
    pub async fn incr(&mut self, ready: &Mutex<Vec<SocketAddr>>) -> Result<u64, String> {
        let started = Instant::now();
        let mut failing_since: Option<Instant> = None;
        let mut last_error;
        loop {
            self.requests += 1;
            if let Some(shared) = &self.shared_jar {
                self.client.jar = sync::lock(shared).clone();
            }
            let avoid = self.client.last_failed();
            let sent = self.client.send(|| pick_ready(ready, avoid), Method::POST, "/incr").await;
            if let (Some(shared), Ok(reply)) = (&self.shared_jar, &sent) {
                apply_set_cookies(&mut sync::lock(shared), &reply.headers);
            }
            match sent {
                Ok(reply) if reply.status == StatusCode::OK => {
                    let answer = serde_json::from_slice::<crate::demo_app::CountReply>(&reply.body)
                        .map_err(|e| format!("bad reply from the demo app: {e}"))?;
                    let count = answer.count;
                    self.session = answer.session;
                    // The state this client was last acknowledged holds `acked` increments: a
                    // newer answer holds them too, and this one.
                    if count < self.acked + 1 {
                        self.lost += self.acked + 1 - count;
                    } else if self.shared_jar.is_none() && count > self.acked + 1 + self.uncertain {
                        return Err(format!(
                            "count jumped to {count}: acknowledged {}, unanswered {}",
                            self.acked, self.uncertain
                        ));
                    }
                    self.acked = count;
                    self.increments += 1;
                    if self.shared_jar.is_none() {
                        self.uncertain = 0;
                    }
                    if let Some(since) = failing_since {
                        self.recoveries.push(since.elapsed());
                    }
                    return Ok(count);
                }
                Ok(reply) => {
                    last_error = format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body).trim());
                    self.client.give_up_on(reply.served_via);
                }
                Err(e) => last_error = e,
            }
            self.errors += 1;
            self.uncertain += 1;
            failing_since.get_or_insert_with(Instant::now);
            if started.elapsed() > GIVE_UP_AFTER {
                return Err(format!("increment not acknowledged within {GIVE_UP_AFTER:?}: {last_error}"));
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// The counter as the pool serves it now; checks it against the model.
    pub async fn verify(&mut self, ready: &Mutex<Vec<SocketAddr>>) -> Result<u64, String> {
        let started = Instant::now();
        loop {
            let avoid = self.client.last_failed();
            match self.client.send(|| pick_ready(ready, avoid), Method::GET, "/count").await {
                Ok(reply) if reply.status == StatusCode::OK => {
                    let count = serde_json::from_slice::<crate::demo_app::CountReply>(&reply.body)
                        .map_err(|e| format!("bad reply from the demo app: {e}"))?
                        .count;
                    if count < self.acked {
                        self.lost += self.acked - count;
                    }
                    return Ok(count);
                }
                Ok(reply) => self.client.give_up_on(reply.served_via),
                Err(_) => {}
            }
            if started.elapsed() > GIVE_UP_AFTER {
                return Err("the session's count was not served".into());
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

/// Waits until a browser's shared jar holds the session's first cookie: its parallel requests
/// join the session the first one started (requests sent before it holds the cookie would each
/// start a session of their own, and the jar would flip between them).
pub async fn session_started(jar: &Arc<Mutex<HashMap<String, String>>>, within: Duration) -> Result<(), String> {
    wait_for("the session's first cookie", within, || {
        let has = !sync::lock(jar).is_empty();
        async move { has }
    })
    .await
}

/// One session as its clients (one per request in flight) and the pool see it now.
pub struct SessionCheck {
    /// The count the pool serves.
    pub count: u64,
    /// Increments the clients had acknowledged, over all of them.
    pub increments: u64,
    /// Increments the clients saw the pool forget (while they ran, or at this check).
    pub rollbacks: u64,
}

/// The session of `group`'s clients (sharing one jar, or one client alone), checked with the pool.
pub async fn check_session(
    group: &mut [CounterSession],
    ready: &Mutex<Vec<SocketAddr>>,
) -> Result<SessionCheck, String> {
    let first = group.first_mut().ok_or("a session without clients")?;
    if let Some(shared) = &first.shared_jar {
        first.client.jar = sync::lock(shared).clone();
    }
    let count = first.verify(ready).await?;
    Ok(SessionCheck {
        count,
        increments: group.iter().map(|s| s.increments).sum(),
        rollbacks: group.iter().map(|s| s.lost).sum(),
    })
}

/// Client sessions running until stopped, each checked against its model.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<std::sync::atomic::AtomicU64>,
    /// Each task with the session it belongs to.
    tasks: Vec<(usize, tokio::task::JoinHandle<Result<CounterSession, String>>)>,
    ready: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Load {
    /// Starts `sessions` clients, each incrementing its own counter through an address of `ready`
    /// (the pods of a local pool, or a Service's address).
    pub fn start(ready: Arc<Mutex<Vec<SocketAddr>>>, sessions: usize) -> Load {
        Load::start_with_lanes(ready, sessions, 1)
    }

    /// Starts `sessions` sessions of `lanes` clients each: a browser's parallel requests, one
    /// cookie jar per session, one connection per lane. The other lanes join once the first holds
    /// the session's cookie (requests sent before it would each start a session of their own).
    pub fn start_with_lanes(ready: Arc<Mutex<Vec<SocketAddr>>>, sessions: usize, lanes: usize) -> Load {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for session in 0..sessions {
            let jar = (lanes > 1).then(|| Arc::new(Mutex::new(HashMap::new())));
            for lane in 0..lanes.max(1) {
                let (stop, acked, ready, shared_jar) =
                    (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&ready), jar.clone());
                tasks.push((
                    session,
                    tokio::spawn(async move {
                        if let Some(jar) = shared_jar.as_ref().filter(|_| lane > 0) {
                            session_started(jar, Duration::from_secs(90)).await?;
                        }
                        let mut s = CounterSession { shared_jar, ..CounterSession::default() };
                        while !stop.load(Ordering::Relaxed) {
                            s.incr(&ready).await?;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(s)
                    }),
                ));
            }
        }
        Load { stop, acked, tasks, ready }
    }

    /// Acknowledged increments so far, over all sessions.
    pub fn acknowledged(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the clients got `n` more acknowledgements: the sessions go on.
    pub async fn progress(&self, n: u64, what: &str) -> Result<(), String> {
        let target = self.acknowledged() + n;
        let acked = Arc::clone(&self.acked);
        wait_for(what, Duration::from_secs(90), || {
            let done = acked.load(std::sync::atomic::Ordering::Relaxed) >= target;
            async move { done }
        })
        .await
    }

    /// Stops the clients and checks every session: its count holds every increment its clients
    /// were acknowledged (plus at most the requests they never got an answer to), and no
    /// acknowledged update was lost. One `CounterSession` per client is returned.
    pub async fn stop_and_verify(self) -> Result<Vec<CounterSession>, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut groups: Vec<Vec<CounterSession>> = Vec::new();
        for (session, t) in self.tasks {
            let s = t.await.map_err(|e| format!("client task: {e}"))??;
            if groups.len() <= session {
                groups.resize_with(session + 1, Vec::new);
            }
            groups[session].push(s);
        }
        let mut all = Vec::new();
        for mut group in groups {
            let uncertain: u64 = group.iter().map(|s| s.uncertain).sum();
            let check = check_session(&mut group, &self.ready).await?;
            let (count, increments) = (check.count, check.increments);
            let first = &group[0];
            // One client alone: its model is the last count it saw (an unanswered increment may
            // have counted); several share the session: every acknowledged increment counts once.
            let (floor, ceiling) = match first.shared_jar {
                None => (first.acked, first.acked + first.uncertain),
                Some(_) => (increments, increments + uncertain),
            };
            if check.rollbacks > 0 {
                return Err(format!(
                    "session {}: acknowledged updates lost (count {count}, acknowledged {increments})",
                    first.session
                ));
            }
            if count < floor || count > ceiling {
                return Err(format!(
                    "session {}: count {count} outside what its clients were acknowledged ({floor}..={ceiling})",
                    first.session
                ));
            }
            all.extend(group);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_picks_another_ready_pod_than_the_one_that_failed_while_there_is_one() {
        let [a, b, c]: [SocketAddr; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|s| s.parse().unwrap());
        let ready = Mutex::new(vec![a, b, c]);
        let picks: Vec<_> = (0..300).map(|_| pick_ready(&ready, Some(b)).expect("a pod")).collect();
        assert!(!picks.contains(&b), "the failed pod is not picked while others are listed");
        assert!(picks.contains(&a) && picks.contains(&c), "the others are both picked: {picks:?}");
        assert!((0..300).any(|_| pick_ready(&ready, None) == Some(b)), "without a failure every pod is picked");
        *sync::lock(&ready) = vec![b];
        assert_eq!(pick_ready(&ready, Some(b)), Some(b), "the only listed pod is picked even if it failed");
        sync::lock(&ready).clear();
        assert_eq!(pick_ready(&ready, Some(b)), None);
    }
}
