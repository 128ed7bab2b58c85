//! Driving a Kubernetes cluster the way a user does: `kubectl`, `helm`, and real HTTP clients
//! against the pool's Service. Works against the local cluster (`tests/cluster/up.sh`) and any
//! other cluster `KUBECONFIG` points at (kind: `tests/kind/run.sh`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use handover_lab::localpool::wait_for;

/// The local cluster's state directory (tests/cluster: `HANDOVER_CLUSTER_DIR`).
pub fn local_cluster_dir() -> PathBuf {
    std::env::var("HANDOVER_CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/tmp/handover-cluster"))
}

/// How to reach the cluster and its tools.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    pub kubeconfig: PathBuf,
    pub repo: PathBuf,
}

/// The first executable named `name` in the tools cache, then on `PATH`.
fn find_tool(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let cache = std::env::var("HANDOVER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/handover"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

impl Cluster {
    /// The cluster `KUBECONFIG` names (default: the local cluster's admin kubeconfig). Panics with
    /// how to start one when there is none: these tests need a real API server.
    pub fn find() -> Cluster {
        let kubeconfig = std::env::var("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|_| local_cluster_dir().join("admin.kubeconfig"));
        // HANDOVER_E2E_REPO: where charts/ is when the suite runs away from the checkout (kind).
        let repo = std::env::var("HANDOVER_E2E_REPO")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_default());
        let cluster = Cluster {
            kubectl: find_tool("kubectl", "HANDOVER_KUBECTL"),
            helm: find_tool("helm", "HANDOVER_HELM"),
            kubeconfig,
            repo,
        };
        let reachable = std::process::Command::new(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["get", "--raw", "/readyz"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            reachable,
            "no Kubernetes API server reachable with {} (kubectl {}).\n\
             Start the local cluster with `tests/cluster/up.sh` (needs root; it prints the KUBECONFIG),\n\
             or point KUBECONFIG at another cluster (kind: tests/kind/run.sh).",
            cluster.kubeconfig.display(),
            cluster.kubectl.display()
        );
        cluster
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.run(&self.kubectl, args, None).await
    }

    /// `kubectl apply -f -` of `yaml`.
    pub async fn apply(&self, yaml: &str) -> Result<String, String> {
        self.run(&self.kubectl, &["apply", "-f", "-"], Some(yaml)).await
    }

    /// Runs helm.
    pub async fn helm(&self, args: &[&str]) -> Result<String, String> {
        self.run(&self.helm, args, None).await
    }

    /// `kubectl get <args> -o json`.
    pub async fn get_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let text = self.kubectl(&all).await?;
        serde_json::from_str(&text).map_err(|e| format!("kubectl {}: not JSON: {e}", args.join(" ")))
    }

    async fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .current_dir(&self.repo)
            .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.map_err(|e| e.to_string())?;
        }
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .map_err(|_| format!("{} {} did not finish in 5 minutes", program.display(), args.join(" ")))?
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} {} failed: {}{}",
                program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    }
}

/// A pod as the tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub ready: bool,
    pub deleting: bool,
    /// The pod carries the injected sidecar (as a native sidecar or a plain container).
    pub injected: bool,
    /// Each container that runs, as `<pod>/<container>@<startedAt>`: a restarted container (or a
    /// pod started afresh) shows a new start time even where the restart count carries over.
    pub starts: Vec<String>,
    /// Names of the containers that run (native sidecars included).
    pub running: Vec<String>,
}

impl PodView {
    pub fn from_json(pod: &Value) -> PodView {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let has_sidecar = |list: &Value| {
            list.as_array().into_iter().flatten().any(|c| c["name"].as_str().is_some_and(|n| n.contains("handover")))
        };
        let name = s(&pod["metadata"]["name"]);
        let statuses: Vec<Value> = ["containerStatuses", "initContainerStatuses"]
            .iter()
            .flat_map(|k| pod["status"][k].as_array().cloned().unwrap_or_default())
            .collect();
        let starts = statuses
            .iter()
            .filter_map(|c| {
                Some(format!("{name}/{}@{}", c["name"].as_str()?, c["state"]["running"]["startedAt"].as_str()?))
            })
            .collect();
        let running = statuses
            .iter()
            .filter(|c| c["state"]["running"].is_object())
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        PodView {
            name,
            uid: s(&pod["metadata"]["uid"]),
            ip: s(&pod["status"]["podIP"]),
            ready,
            deleting: !pod["metadata"]["deletionTimestamp"].is_null(),
            injected: has_sidecar(&pod["spec"]["initContainers"]) || has_sidecar(&pod["spec"]["containers"]),
            starts,
            running,
        }
    }
}

/// The host pid of a running container's main process, as the runtime reports it
/// (`tests/cluster/pod.sh pid`: `crictl inspect`).
pub async fn container_pid(c: &Cluster, ns: &str, pod: &str, container: &str) -> Result<u32, String> {
    let out = tokio::process::Command::new(c.repo.join("tests/cluster/pod.sh"))
        .args(["pid", ns, pod, container])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .await
        .map_err(|e| format!("cannot run tests/cluster/pod.sh: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pod.sh pid {ns} {pod} {container}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    text.trim().parse().map_err(|_| format!("pod.sh pid {ns} {pod} {container} printed {text:?}"))
}

/// What the kernel says about a process's confinement: `/proc/<pid>/status` and the options of
/// its root mount, and its memory cgroup's limit (cgroup v1 `memory.limit_in_bytes`, v2
/// `memory.max`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    pub cap_eff: u64,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    pub no_new_privs: bool,
    pub root_read_only: bool,
    /// None: no limit.
    pub memory_limit: Option<u64>,
}

impl Confinement {
    pub fn of(pid: u32) -> Result<Confinement, String> {
        let read = |p: String| std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"));
        let status = read(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
                .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
        };
        let uids = field("Uid")?.split_whitespace().map(|u| u.parse().unwrap_or(u32::MAX)).collect();
        let cap_eff = u64::from_str_radix(field("CapEff")?, 16).map_err(|e| format!("CapEff: {e}"))?;
        let seccomp = field("Seccomp")?.parse().map_err(|e| format!("Seccomp: {e}"))?;
        let no_new_privs = field("NoNewPrivs")? == "1";
        // mountinfo: id parent major:minor root mount-point options ...
        let mountinfo = read(format!("/proc/{pid}/mountinfo"))?;
        let root = mountinfo
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            // The last mount on "/" is the one on top.
            .rfind(|f| f.len() > 5 && f[4] == "/")
            .ok_or_else(|| format!("/proc/{pid}/mountinfo has no root mount"))?;
        let root_read_only = root[5].split(',').any(|o| o == "ro");
        let cgroups = read(format!("/proc/{pid}/cgroup"))?;
        let memory_limit = if let Some(path) =
            cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        {
            let v = read(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))?;
            let v: u64 = v.trim().parse().map_err(|e| format!("memory.limit_in_bytes {v:?}: {e}"))?;
            // cgroup v1 writes "no limit" as the largest page-aligned i64.
            (v < (1 << 62)).then_some(v)
        } else {
            let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).ok_or("no cgroup v1 memory or v2 line")?;
            let v = read(format!("/sys/fs/cgroup{path}/memory.max"))?;
            if v.trim() == "max" { None } else { Some(v.trim().parse().map_err(|e| format!("memory.max {v:?}: {e}"))?) }
        };
        Ok(Confinement { uids, cap_eff, seccomp, no_new_privs, root_read_only, memory_limit })
    }
}

/// Milliseconds since `t`, for figures.
pub fn ms_since(t: Instant) -> u128 {
    t.elapsed().as_millis()
}
