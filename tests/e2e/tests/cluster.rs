//! The end-to-end suite: helm, kubectl, the operator, injected sidecars, the demo app and many
//! client sessions against the pool's Service, on a real Kubernetes API server — while pods die
//! in every way a cluster kills them. Needs a cluster (`tests/cluster/up.sh`); fails with how to
//! start one when there is none.
//!
//! Every step waits on a condition with a timeout that names it; figures are printed, never
//! asserted (the machine is shared and noisy).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_e2e::{Cluster, Confinement, PodView, container_pid, local_cluster_dir, ms_since, wait_for};
use handover_lab::localpool::{CounterSession, Load, member_names};

const SYSTEM_NS: &str = "handover-system";
const SESSIONS: usize = 12;
/// Sessions that go idle before a graceful delete, and the increments each makes first.
const IDLE_SESSIONS: usize = 12;
const IDLE_BURST: u64 = 5;
const SETTLE: Duration = Duration::from_secs(180);
/// The sidecar's admin port (the ServerPool default; the demo pool does not set it).
const SIDECAR_ADMIN_PORT: u16 = 9901;

/// The local cluster: its node (kubelet, containerd, runc) runs on this machine and tells the tests
/// each container's host pid (`tests/cluster/pod.sh`, from the runtime), so faults at process level
/// (SIGKILL, SIGSTOP, memory) and the kernel's view of a container are only reachable there.
fn local_cluster() -> bool {
    local_cluster_dir().join("pids").is_dir() && std::env::var("HANDOVER_E2E_KIND").is_err()
}

/// Memory limits of the pool's containers (the demo app's as in examples/demo-app.yaml).
const APP_MEMORY_LIMIT: u64 = 64 << 20; // "64Mi" in DemoPool::create
const SIDECAR_MEMORY_LIMIT: u64 = 128 << 20; // "128Mi" in DemoPool::create
/// The chart's default memory limit of the operator (charts/handover/values.yaml).
const OPERATOR_MEMORY_LIMIT: u64 = 256 << 20;

/// Installs (or upgrades) the chart and waits for the operator. `HANDOVER_E2E_OPERATOR_LOG` sets
/// the operator's log filter, e.g. `info,kube_runtime=debug` (commas are escaped for `--set`).
async fn install_operator(c: &Cluster) {
    let chart = c.repo.join("charts/handover");
    let log_level = format!(
        "logLevel={}",
        std::env::var("HANDOVER_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()).replace(',', "\\,")
    );
    c.helm(&[
        "upgrade",
        "--install",
        "handover",
        chart.to_str().unwrap_or_default(),
        "--namespace",
        SYSTEM_NS,
        "--create-namespace",
        "--set",
        "image.repository=handover",
        "--set",
        "image.tag=dev",
        "--set",
        "image.pullPolicy=IfNotPresent",
        "--set",
        &log_level,
    ])
    .await
    .expect("helm install");
    let c2 = c.clone();
    wait_for("the operator Deployment to be available with 2 replicas", SETTLE, || {
        let c = c2.clone();
        async move {
            c.get_json(&["deployment", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=handover"])
                .await
                .ok()
                .and_then(|d| d["items"].get(0).and_then(|d| d["status"]["availableReplicas"].as_i64()))
                == Some(2)
        }
    })
    .await
    .expect("operator up");
    wait_for("a leader in the operator's Lease", SETTLE, || {
        let c = c2.clone();
        async move { leader(&c).await.is_some() }
    })
    .await
    .expect("leader elected");
}

async fn leader(c: &Cluster) -> Option<String> {
    let lease = c.get_json(&["lease", "handover-operator", "-n", SYSTEM_NS]).await.ok()?;
    lease["spec"]["holderIdentity"].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A namespace with a ServerPool and the demo app annotated into it.
struct DemoPool {
    c: Cluster,
    ns: String,
    /// Whether waits require the Service's EndpointSlices to follow too (kube-controller-manager's
    /// work, not ours; see the API server crash test).
    service_follows: bool,
}

impl DemoPool {
    async fn create(c: &Cluster, replicas: usize) -> DemoPool {
        let pool = DemoPool::start(c, replicas, "push", &[]).await;
        pool.settled(replicas, "the annotated Deployment to run injected pods, listed by the registry and the Service")
            .await;
        pool
    }

    /// A new namespace with `first` applied in it (each object's namespace is filled in), then the
    /// pool (snapshot `mode`) and the annotated Deployment; does not wait for the pods.
    async fn start(c: &Cluster, replicas: usize, mode: &str, first: &[serde_json::Value]) -> DemoPool {
        let ns = format!(
            "e2e-{}",
            handover_dataplane::random::session_id().to_lowercase().replace(['-', '_'], "")[..8].to_owned()
        );
        c.kubectl(&["create", "namespace", &ns]).await.expect("namespace");
        for object in first {
            let mut object = object.clone();
            object["metadata"]["namespace"] = serde_json::json!(ns);
            c.apply(&object.to_string()).await.expect("apply an object of the namespace");
        }
        let pool = serde_json::json!({
            "apiVersion": "handover.dev/v1alpha1",
            "kind": "ServerPool",
            "metadata": {"name": "demo", "namespace": ns},
            "spec": {
                "appPort": 8080, "port": 80, "snapshot": {"mode": mode}, "cookie": {"secure": false},
                "sidecar": {"resources": {"requests": {"memory": "32Mi"}, "limits": {"memory": "128Mi"}}},
            },
        });
        c.apply(&pool.to_string()).await.expect("apply the ServerPool");
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "demo-app", "namespace": ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "demo-app"}},
                "template": {
                    "metadata": {"labels": {"app": "demo-app"}},
                    // As examples/demo-app.yaml: non-root, seccomp RuntimeDefault, read-only root,
                    // no capabilities, a memory limit, no API token for the app (the injected
                    // sidecar mounts its own, to watch its ServerPool).
                    "spec": {
                        "terminationGracePeriodSeconds": 10,
                        "automountServiceAccountToken": false,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "app",
                            "image": "handover:dev",
                            "imagePullPolicy": "Never",
                            "command": ["handover-sidecar", "demo-app", "--listen", "127.0.0.1:8080"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                    },
                },
            },
        });
        c.apply(&deployment.to_string()).await.expect("apply the demo Deployment");
        c.kubectl(&["annotate", "deployment", "demo-app", "-n", &ns, "handover.dev/pool=demo"])
            .await
            .expect("annotate");
        DemoPool { c: c.clone(), ns, service_follows: true }
    }

    /// The pool's condition `type`: (status, reason, message).
    async fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        let pool = self.c.get_json(&["serverpool", "demo", "-n", &self.ns]).await.ok()?;
        let c = pool["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        Some((s("status"), s("reason"), s("message")))
    }

    /// The sum of a metric over the sidecars of the serving pods.
    async fn sidecar_metric(&self, prefix: &str) -> f64 {
        let mut sum = 0.0;
        for pod in self.serving().await {
            let Ok(ip) = pod.ip.parse() else { continue };
            let page = handover_lab::localpool::scrape(SocketAddr::new(ip, SIDECAR_ADMIN_PORT)).await;
            sum += handover_lab::localpool::metric_sum(&page.unwrap_or_default(), prefix);
        }
        sum
    }

    async fn pods(&self) -> Vec<PodView> {
        let list = self.c.get_json(&["pods", "-n", &self.ns, "-l", "app=demo-app"]).await.unwrap_or_default();
        list["items"].as_array().into_iter().flatten().map(PodView::from_json).collect()
    }

    /// Ready, injected pods that are not being deleted.
    async fn serving(&self) -> Vec<PodView> {
        self.pods().await.into_iter().filter(|p| p.ready && p.injected && !p.deleting).collect()
    }

    /// Pod names the ServerPool's registry lists as ready.
    async fn registry(&self) -> BTreeSet<String> {
        let pool = self.c.get_json(&["serverpool", "demo", "-n", &self.ns]).await.unwrap_or_default();
        pool["status"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["ready"] == true)
            .filter_map(|m| m["pod"].as_str().map(str::to_owned))
            .collect()
    }

    /// Pod IPs the Service's EndpointSlices list as ready.
    async fn endpoints(&self) -> BTreeSet<String> {
        let slices = self
            .c
            .get_json(&["endpointslices", "-n", &self.ns, "-l", "kubernetes.io/service-name=demo"])
            .await
            .unwrap_or_default();
        slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != false)
            .filter_map(|e| e["addresses"].get(0).and_then(|a| a.as_str()).map(str::to_owned))
            .collect()
    }

    /// Waits until exactly `n` injected pods serve, every pod is injected, and the registry, each
    /// of their sidecars and the Service list exactly those.
    async fn settled(&self, n: usize, what: &str) {
        let started = Instant::now();
        let result = wait_for(what, SETTLE, || async {
            let pods = self.pods().await;
            let serving: Vec<&PodView> = pods.iter().filter(|p| p.ready && p.injected && !p.deleting).collect();
            let names: BTreeSet<String> = serving.iter().map(|p| p.name.clone()).collect();
            let ips: BTreeSet<String> = serving.iter().map(|p| p.ip.clone()).collect();
            serving.len() == n
                && pods.iter().all(|p| p.injected)
                && pods.iter().all(|p| !p.deleting)
                && self.registry().await == names
                && sidecars_list(&serving, &names).await
                && (!self.service_follows || self.endpoints().await == ips)
        })
        .await;
        if let Err(e) = result {
            let pool = self.c.kubectl(&["get", "serverpool,pods,endpointslices", "-n", &self.ns, "-o", "wide"]).await;
            let events = self.c.kubectl(&["get", "events", "-n", &self.ns, "--sort-by=.lastTimestamp"]).await;
            panic!("{e}\n{}\n{}", pool.unwrap_or_else(|e| e), events.unwrap_or_else(|e| e));
        }
        println!("    settled ({what}) in {} ms", ms_since(started));
    }

    /// Waits until `pod` has left the registry and the Service; prints how long each took.
    async fn wait_dropped(&self, pod: &PodView, since: Instant, fault: &str) {
        let mut registry_ms = None;
        let mut service_ms = None;
        let deadline = Instant::now() + SETTLE;
        while registry_ms.is_none() || (self.service_follows && service_ms.is_none()) {
            if registry_ms.is_none() && !self.registry().await.contains(&pod.name) {
                registry_ms = Some(ms_since(since));
            }
            if service_ms.is_none() && !self.endpoints().await.contains(&pod.ip) {
                service_ms = Some(ms_since(since));
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {SETTLE:?} waiting for {} to leave the registry and the Service (registry: {}, Service: {})",
                pod.name,
                if registry_ms.is_some() { "left" } else { "still listed" },
                if service_ms.is_some() { "left" } else { "still listed" },
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let service = service_ms.map_or("not yet".to_owned(), |ms| format!("after {ms} ms"));
        println!(
            "    figure: {fault}: registry dropped {} after {} ms, Service {service}",
            pod.name,
            registry_ms.unwrap_or_default(),
        );
    }

    /// The Service's address, as clients reach it (kube-proxy balances each new connection).
    async fn service_addr(&self) -> SocketAddr {
        let ip = self.c.kubectl(&["get", "service", "demo", "-n", &self.ns, "-o", "jsonpath={.spec.clusterIP}"]).await;
        let ip = ip.expect("the pool's Service");
        format!("{}:80", ip.trim()).parse().expect("a ClusterIP")
    }

    async fn delete(self) {
        let _ = self.c.kubectl(&["delete", "namespace", &self.ns, "--wait=false"]).await;
    }
}

/// Whether the sidecar of every pod of `serving` lists exactly `names` as its members (admin
/// `/members`: its own view of the pool, fed by its own watch, which its routing stands on).
async fn sidecars_list(serving: &[&PodView], names: &BTreeSet<String>) -> bool {
    for pod in serving {
        let Ok(ip) = pod.ip.parse() else { return false };
        let listed = member_names(SocketAddr::new(ip, SIDECAR_ADMIN_PORT)).await.unwrap_or_default();
        if &listed.into_iter().collect::<BTreeSet<_>>() != names {
            return false;
        }
    }
    true
}

/// Sends `signal` to the main process of every running container of `pod` (the app and the
/// sidecar; not the kubelet's sandbox), by the host pid the node reports for each; returns them.
async fn signal_pod(c: &Cluster, ns: &str, pod: &PodView, signal: &str) -> Vec<String> {
    assert!(!pod.running.is_empty(), "pod {} has running containers", pod.name);
    let mut pids = Vec::new();
    for container in &pod.running {
        let pid = container_pid(c, ns, &pod.name, container).await.unwrap_or_else(|e| panic!("{e}"));
        pids.push(pid.to_string());
    }
    let status =
        tokio::process::Command::new("kill").arg(format!("-{signal}")).args(&pids).status().await.expect("kill");
    assert!(status.success(), "kill -{signal} {pids:?} ({}: {:?})", pod.name, pod.running);
    pids
}

/// The operator installed, a pool of 3 demo pods, and client sessions running through its Service.
async fn pool_under_load() -> (Cluster, DemoPool, Load) {
    let c = Cluster::find();
    install_operator(&c).await;
    let pool = DemoPool::create(&c, 3).await;
    let service = Arc::new(Mutex::new(vec![pool.service_addr().await]));
    let load = Load::start(service, SESSIONS);
    load.progress(300, "sessions to run through the Service").await.expect("warm-up");
    (c, pool, load)
}

fn first_serving(pods: &[PodView]) -> PodView {
    pods.first().cloned().expect("a serving pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_every_kind_of_pod_death() {
    let (c, pool, load) = pool_under_load().await;

    println!("  graceful kubectl delete pod");
    let victim = first_serving(&pool.serving().await);
    let t = Instant::now();
    c.kubectl(&["delete", "pod", &victim.name, "-n", &pool.ns, "--wait=false"]).await.expect("delete");
    pool.wait_dropped(&victim, t, "graceful delete").await;
    pool.settled(3, "a replacement after the graceful delete").await;
    load.progress(300, "sessions to go on after the graceful delete").await.expect("progress");

    println!("  kubectl delete pod --grace-period=0 --force");
    let victim = first_serving(&pool.serving().await);
    let t = Instant::now();
    c.kubectl(&["delete", "pod", &victim.name, "-n", &pool.ns, "--grace-period=0", "--force"]).await.expect("delete");
    pool.wait_dropped(&victim, t, "forced delete").await;
    pool.settled(3, "a replacement after the forced delete").await;
    load.progress(300, "sessions to go on after the forced delete").await.expect("progress");

    if local_cluster() {
        println!("  SIGKILL of every process of a pod");
        let victim = first_serving(&pool.serving().await);
        let t = Instant::now();
        signal_pod(&c, &pool.ns, &victim, "KILL").await;
        load.progress(300, "sessions to go on after SIGKILL").await.expect("progress");
        println!("    figure: SIGKILL: sessions went on {} ms after the kill", ms_since(t));
        pool.settled(3, "the killed pod's containers restarted").await;

        println!("  a hung pod (SIGSTOP)");
        let victim = first_serving(&pool.serving().await);
        let t = Instant::now();
        let stopped = signal_pod(&c, &pool.ns, &victim, "STOP").await;
        pool.wait_dropped(&victim, t, "SIGSTOP").await;
        load.progress(300, "sessions to go on while a pod hangs").await.expect("progress");
        // The very processes that were stopped (a liveness probe may have had one replaced already:
        // then it is gone, and kill reports it).
        let _ = tokio::process::Command::new("kill").arg("-CONT").args(&stopped).status().await;
        pool.settled(3, "the woken pod to rejoin").await;
        load.progress(300, "sessions to go on after the pod woke").await.expect("progress");
    } else {
        println!("  (process-level faults skipped: not the local cluster)");
    }

    println!("  scale down to 2, up to 3");
    c.kubectl(&["scale", "deployment", "demo-app", "-n", &pool.ns, "--replicas=2"]).await.expect("scale");
    pool.settled(2, "scale down to 2").await;
    load.progress(300, "sessions to go on after scaling down").await.expect("progress");
    c.kubectl(&["scale", "deployment", "demo-app", "-n", &pool.ns, "--replicas=3"]).await.expect("scale");
    pool.settled(3, "scale up to 3").await;

    println!("  rolling update");
    c.kubectl(&["rollout", "restart", "deployment", "demo-app", "-n", &pool.ns]).await.expect("rollout restart");
    c.kubectl(&["rollout", "status", "deployment", "demo-app", "-n", &pool.ns, "--timeout=180s"])
        .await
        .expect("rollout");
    pool.settled(3, "the rolling update to finish").await;
    load.progress(300, "sessions to go on after the rolling update").await.expect("progress");

    let sessions = load.stop_and_verify().await.expect("every session went on and lost no acknowledged update");
    let mut recoveries: Vec<Duration> = sessions.iter().flat_map(|s| s.recoveries.clone()).collect();
    recoveries.sort();
    let pct = |p: f64| {
        let at = (recoveries.len().saturating_sub(1) as f64 * p) as usize;
        recoveries.get(at).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    };
    println!(
        "  figure: {} sessions, {} acknowledged updates, {} interruptions; first success after a failure p50 {:.0} ms p99 {:.0} ms",
        sessions.len(),
        sessions.iter().map(|s| s.acked).sum::<u64>(),
        recoveries.len(),
        pct(0.5),
        pct(0.99)
    );
    pool.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_leader_death_loses_nothing() {
    let (c, pool, load) = pool_under_load().await;

    println!("  kill the operator's leader while an app pod is deleted");
    let old_leader = leader(&c).await.expect("a leader");
    let t = Instant::now();
    c.kubectl(&["delete", "pod", &old_leader, "-n", SYSTEM_NS, "--grace-period=0", "--force"])
        .await
        .expect("kill leader");
    let victim = first_serving(&pool.serving().await);
    c.kubectl(&["delete", "pod", &victim.name, "-n", &pool.ns, "--wait=false"]).await.expect("delete app pod");
    let c2 = c.clone();
    let old = old_leader.clone();
    wait_for("another replica to take the Lease", SETTLE, || {
        let (c, old) = (c2.clone(), old.clone());
        async move { leader(&c).await.is_some_and(|l| l != old) }
    })
    .await
    .expect("the standby takes over");
    println!("    figure: new leader after {} ms", ms_since(t));
    pool.wait_dropped(&victim, t, "app pod deleted during leader failover").await;
    pool.settled(3, "the registry to follow the churn under the new leader").await;
    load.progress(300, "sessions to go on after the leader died").await.expect("progress");

    load.stop_and_verify().await.expect("every session went on and lost no acknowledged update");
    pool.delete().await;
}

/// A crash of the API server (SIGKILL, then `up.sh` starts it again with a fresh watch cache):
/// every watch of the operator and the sidecars is refused once as "too old resource version" and
/// re-lists. Each watch backs off on its own, so the registry (and each sidecar's own view, which
/// `settled` checks through its admin `/members`) follows the next pod death within seconds (this test once caught the operator stalled for 5–8 minutes when one shared backoff
/// paused all its watches). Local cluster only: it kills the API server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_sidecars_recover_from_an_api_server_crash_without_a_restart() {
    assert!(local_cluster(), "needs the local cluster: it kills the API server process");
    let (c, mut pool, load) = pool_under_load().await;
    println!("  restart the API server");
    let operator_starts = container_starts(&c, SYSTEM_NS).await;
    let app_starts = container_starts(&c, &pool.ns).await;
    let pid = std::fs::read_to_string(local_cluster_dir().join("pids/kube-apiserver.pid")).expect("API server pid");
    // SIGKILL: a crash, and no minute-long graceful shutdown to wait for.
    let status = tokio::process::Command::new("kill").args(["-KILL", pid.trim()]).status().await.expect("kill");
    assert!(status.success());
    let pid = pid.trim().to_owned();
    wait_for("the API server to exit", Duration::from_secs(60), || {
        let pid = pid.clone();
        // Gone, or a zombie that PID 1 has not reaped yet.
        async move {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
                .unwrap_or(true)
        }
    })
    .await
    .expect("API server down");
    load.progress(200, "sessions to go on while the API server is down").await.expect("progress");
    let up = tokio::process::Command::new(c.repo.join("tests/cluster/up.sh")).output().await.expect("up.sh");
    assert!(up.status.success(), "up.sh: {}", String::from_utf8_lossy(&up.stderr));
    // After the crash kube-controller-manager's EndpointSlice controller may refuse to sync
    // ("EndpointSlice informer cache is out of date") for minutes: the Service is its work, not
    // ours, so only the registry must follow here (the figure says when the Service did).
    pool.service_follows = false;
    let victim = first_serving(&pool.serving().await);
    let t = Instant::now();
    c.kubectl(&["delete", "pod", &victim.name, "-n", &pool.ns, "--wait=false"]).await.expect("delete app pod");
    pool.wait_dropped(&victim, t, "app pod deleted after the API server restart").await;
    pool.settled(3, "the registry to follow after the API server restart").await;
    assert_eq!(container_starts(&c, SYSTEM_NS).await, operator_starts, "the operator recovered without a restart");
    let still_running = container_starts(&c, &pool.ns).await;
    let restarted: Vec<&String> = app_starts
        .iter()
        .filter(|s| !s.starts_with(&format!("{}/", victim.name)))
        .filter(|s| !still_running.contains(*s))
        .collect();
    assert!(restarted.is_empty(), "the sidecars recovered without a restart; restarted since: {restarted:?}");
    load.stop_and_verify().await.expect("every session went on and lost no acknowledged update");
    pool.delete().await;
}

/// The start of every running container of a namespace's pods that are not being deleted.
async fn container_starts(c: &Cluster, ns: &str) -> BTreeSet<String> {
    let list = c.get_json(&["pods", "-n", ns]).await.unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(PodView::from_json)
        .filter(|p| !p.deleting)
        .flat_map(|p| p.starts)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_a_bad_pool_and_the_operator_builds_a_good_ones_objects() {
    let c = Cluster::find();
    install_operator(&c).await;
    let pool = DemoPool::create(&c, 2).await;

    // What the reconciler owns for pool `demo`, each with an owner reference to it.
    for (kind, name) in [
        ("service", "demo"),
        ("secret", "demo-handover-keys"),
        ("role", "demo-handover-registry"),
        ("rolebinding", "demo-handover-registry"),
    ] {
        let object = c.get_json(&[kind, name, "-n", &pool.ns]).await.unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
        assert_eq!(
            object["metadata"]["ownerReferences"][0]["kind"], "ServerPool",
            "{kind} {name} is owned by the pool"
        );
    }
    let keys = c.get_json(&["secret", "demo-handover-keys", "-n", &pool.ns]).await.expect("key secret");
    assert!(keys["data"]["keys"].as_str().is_some_and(|k| !k.is_empty()), "the key Secret holds keys");
    let status = c.get_json(&["serverpool", "demo", "-n", &pool.ns]).await.expect("pool");
    let ready = status["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "the pool reports Ready: {}", status["status"]);

    // A spec the schema refuses never reaches the operator; the message says what to fix.
    let bad = serde_json::json!({
        "apiVersion": "handover.dev/v1alpha1",
        "kind": "ServerPool",
        "metadata": {"name": "bad", "namespace": pool.ns},
        "spec": {"appPort": 8000, "sidecarPort": 8000},
    });
    let refused = c.apply(&bad.to_string()).await.expect_err("the API server refuses appPort == sidecarPort");
    assert!(refused.contains("appPort") && refused.contains("sidecarPort"), "the refusal names the fields: {refused}");
    pool.delete().await;
}

/// The pod-level fields of one container of a pod: its restart count, whether it runs, and why it
/// last ended.
async fn container_state(c: &Cluster, ns: &str, pod: &str, container: &str) -> (i64, bool, String) {
    let pod = c.get_json(&["pod", pod, "-n", ns]).await.unwrap_or_default();
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][k].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == container)
        .unwrap_or_default();
    (
        status["restartCount"].as_i64().unwrap_or(-1),
        status["state"]["running"].is_object(),
        status["lastState"]["terminated"]["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The chart's securityContexts (operator) and the pool's (examples/demo-app.yaml: app; the
/// operator's injection: sidecar) and memory limits hold in the kernel, read on the host through
/// each container's pid as the runtime reports it (the image has no shell to look from inside):
/// uid 65532, no effective capabilities, a seccomp filter, no_new_privs, a read-only root, and the
/// memory limit as the container's cgroup limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_confined_with_their_memory_limits_in_the_kernel() {
    if !local_cluster() {
        println!(
            "  NOT CHECKED: needs the local cluster (tests/cluster/up.sh): it reads the containers' processes on the host"
        );
        return;
    }
    let c = Cluster::find();
    install_operator(&c).await;
    let pool = DemoPool::create(&c, 1).await;
    let mut containers: Vec<(String, String, String, u64)> = Vec::new();
    for pod in container_starts(&c, SYSTEM_NS).await {
        let name = pod.split('/').next().unwrap_or_default().to_owned();
        containers.push((SYSTEM_NS.to_owned(), name, "operator".to_owned(), OPERATOR_MEMORY_LIMIT));
    }
    let pod = first_serving(&pool.serving().await);
    containers.push((pool.ns.clone(), pod.name.clone(), "app".to_owned(), APP_MEMORY_LIMIT));
    containers.push((pool.ns.clone(), pod.name.clone(), "handover-sidecar".to_owned(), SIDECAR_MEMORY_LIMIT));
    assert!(containers.len() == 4, "two operator pods and one pool pod: {containers:?}");
    for (ns, pod, container, limit) in containers {
        let pid = container_pid(&c, &ns, &pod, &container).await.unwrap_or_else(|e| panic!("{e}"));
        let seen = Confinement::of(pid).unwrap_or_else(|e| panic!("{ns}/{pod}/{container} (pid {pid}): {e}"));
        println!("    {ns}/{pod}/{container} (pid {pid}): {seen:?}");
        let want = Confinement {
            uids: vec![65532; 4],
            cap_eff: 0,
            seccomp: 2,
            no_new_privs: true,
            root_read_only: true,
            memory_limit: Some(limit),
        };
        assert_eq!(seen, want, "{ns}/{pod}/{container} (pid {pid}) runs as its securityContext and limits say");
    }
    pool.delete().await;
}

/// The app container of a pod goes past its memory limit under load: the kernel's OOM killer ends
/// it, the node restarts it (reason OOMKilled), the sidecar stays up, and every session goes on with
/// no acknowledged update lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_an_app_container_killed_for_memory() {
    if !local_cluster() {
        println!(
            "  NOT CHECKED: needs the local cluster (tests/cluster/up.sh): it enters the app container's network namespace"
        );
        return;
    }
    let (c, pool, load) = pool_under_load().await;
    let victim = first_serving(&pool.serving().await);
    let (restarts, _, _) = container_state(&c, &pool.ns, &victim.name, "app").await;
    let sidecar_start = victim.starts.iter().find(|s| s.contains("/handover-sidecar@")).cloned();
    let pid = container_pid(&c, &pool.ns, &victim.name, "app").await.unwrap_or_else(|e| panic!("{e}"));
    println!("  the app of {} asks for 4 times its memory limit", victim.name);
    let t = Instant::now();
    // From inside the pod's network namespace, to the app's loopback port (as its sidecar talks to
    // it). The app dies before it answers: curl's own result says nothing.
    let hog = format!("http://127.0.0.1:8080/hog?mib={}", 4 * (APP_MEMORY_LIMIT >> 20));
    let _ = tokio::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--net", "curl", "-s", "-m", "30", "-X", "POST"])
        .args(["-H", "Handover-Session: e2e-oom", &hog])
        .output()
        .await
        .expect("nsenter curl");
    let (c2, ns, name) = (c.clone(), pool.ns.clone(), victim.name.clone());
    wait_for("the app container to be OOM-killed and restarted", SETTLE, || {
        let (c, ns, name) = (c2.clone(), ns.clone(), name.clone());
        async move {
            let (now, running, reason) = container_state(&c, &ns, &name, "app").await;
            now > restarts && running && reason == "OOMKilled"
        }
    })
    .await
    .expect("OOMKilled, restarted");
    println!("    figure: OOM kill: the app runs again {} ms after the request", ms_since(t));
    load.progress(300, "sessions to go on after the OOM kill").await.expect("progress");
    pool.settled(3, "the pod whose app was OOM-killed to serve again").await;
    let after = pool.pods().await.into_iter().find(|p| p.name == victim.name).expect("the pod is still there");
    assert_eq!(
        after.starts.iter().find(|s| s.contains("/handover-sidecar@")).cloned(),
        sidecar_start,
        "the sidecar was not restarted: only the app went past its limit"
    );
    load.stop_and_verify().await.expect("every session went on and lost no acknowledged update");
    pool.delete().await;
}

/// Issue 15, "ready only when it can route": a pod whose sidecar cannot read its ServerPool (the
/// operator cannot create the pool's Role: a ResourceQuota allows no Role in the namespace, as a
/// slow or refusing API server would leave it) runs, but never becomes Ready, and the pool's
/// status says why; once the Role can be made, the pod joins without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_read_its_pool_is_never_ready_and_the_pool_says_why() {
    let c = Cluster::find();
    install_operator(&c).await;
    let quota = serde_json::json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-roles"},
        "spec": {"hard": {"count/roles.rbac.authorization.k8s.io": "0"}},
    });
    let t = Instant::now();
    let pool = DemoPool::start(&c, 1, "push", &[quota]).await;
    let why = wait_for("the pool to report that it could not make its Role", SETTLE, || async {
        pool.condition("Ready")
            .await
            .is_some_and(|(s, r, m)| s == "False" && r == "ReconcileFailed" && m.contains("Role"))
    })
    .await;
    if let Err(e) = why {
        let state = c.kubectl(&["get", "serverpool,pods,resourcequota", "-n", &pool.ns, "-o", "yaml"]).await;
        panic!("{e}\n{}", state.unwrap_or_else(|e| e));
    }
    let (_, reason, message) = pool.condition("Ready").await.unwrap_or_default();
    println!("    figure: the pool said why after {} ms: Ready=False {reason}: {message}", ms_since(t));
    // The injected pod runs, and its sidecar says why it is not ready.
    let said = Arc::new(Mutex::new(String::new()));
    wait_for("the injected pod's sidecar to answer /ready with why it is not ready", SETTLE, || async {
        for pod in pool.pods().await.into_iter().filter(|p| p.injected && !p.ip.is_empty()) {
            let Ok(ip) = pod.ip.parse() else { continue };
            let admin = SocketAddr::new(ip, SIDECAR_ADMIN_PORT);
            if let Some(body) = any_request(admin, "GET", "/ready", "").await {
                let why = body.contains("registry not synced");
                *said.lock().unwrap_or_else(|p| p.into_inner()) = body;
                return why;
            }
        }
        false
    })
    .await
    .expect("the sidecar explains itself");
    let answer = said.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("    the sidecar's /ready: {}", answer.split_once("\r\n\r\n").map_or(answer.as_str(), |(_, b)| b).trim());
    // (The Deployment's pod from before the injection still serves: the rollout waits for the new
    // pod to become Ready, as it should.)
    let pods = pool.pods().await;
    let injected: Vec<&PodView> = pods.iter().filter(|p| p.injected).collect();
    assert!(!injected.is_empty() && injected.iter().all(|p| !p.ready), "no injected pod is Ready: {pods:?}");
    assert!(pool.registry().await.is_empty(), "and none is a ready member");
    assert!(pool.endpoints().await.is_empty(), "and the Service sends it nothing");

    // The Role can be made now: the operator's retry makes it, the sidecar's watch lists the pool.
    let t = Instant::now();
    c.kubectl(&["delete", "resourcequota", "no-roles", "-n", &pool.ns]).await.expect("delete the quota");
    pool.settled(1, "the pod to become Ready once its Role exists").await;
    println!("    figure: Ready {} ms after the Role could be made", ms_since(t));
    let (status, reason, _) = pool.condition("Ready").await.unwrap_or_default();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "MembersReady"));
    pool.delete().await;
}

/// Issue 15, "drain before the app goes": graceful deletions of pods of a pull-mode pool under
/// load lose no acknowledged update. The app's preStop (`/drain`, injected by the operator) starts
/// the drain while the app still runs. Idle sessions too: each round starts sessions that make a
/// burst of increments (within the snapshot interval, so their cookies hold an older count) and
/// then send nothing while the pod drains; the drain hands their newest state over, and their
/// next request after the pod is gone finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_in_pull_mode_loses_nothing() {
    let c = Cluster::find();
    install_operator(&c).await;
    let pool = DemoPool::start(&c, 3, "pull", &[]).await;
    pool.settled(3, "a pull-mode pool of 3").await;
    let template = c.get_json(&["deployment", "demo-app", "-n", &pool.ns]).await.expect("deployment");
    let hook = &template["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"];
    assert_eq!(hook["path"], "/drain", "the app container's preStop drains the sidecar: {hook}");
    let service = Arc::new(Mutex::new(vec![pool.service_addr().await]));
    let load = Load::start(Arc::clone(&service), SESSIONS);
    load.progress(300, "sessions to run through the Service").await.expect("warm-up");
    for round in 1..=2 {
        let mut idle: Vec<CounterSession> = (0..IDLE_SESSIONS).map(|_| CounterSession::default()).collect();
        for s in &mut idle {
            for _ in 0..IDLE_BURST {
                s.incr(&service).await.expect("an idle session's increment");
            }
        }
        let victim = first_serving(&pool.serving().await);
        let t = Instant::now();
        c.kubectl(&["delete", "pod", &victim.name, "-n", &pool.ns, "--wait=false"]).await.expect("delete");
        pool.wait_dropped(&victim, t, "graceful delete (pull mode)").await;
        // The app's preStop called /drain while the app ran: the sidecar says so in its log.
        let drained = Arc::new(Mutex::new(String::new()));
        wait_for("the deleted pod's sidecar to log that /drain saw it leave the registry", SETTLE, || async {
            let log = c.kubectl(&["logs", &victim.name, "-n", &pool.ns, "-c", "handover-sidecar"]).await;
            let line =
                log.unwrap_or_default().lines().find(|l| l.contains("drained: this pod has left")).map(str::to_owned);
            let found = line.is_some();
            *drained.lock().unwrap_or_else(|p| p.into_inner()) = line.unwrap_or_default();
            found
        })
        .await
        .expect("the drain ran before the app was stopped");
        println!("    the sidecar: {}", drained.lock().unwrap_or_else(|p| p.into_inner()));
        load.progress(300, "sessions to go on during the graceful delete").await.expect("progress");
        wait_for("the deleted pod to be gone", SETTLE, || async {
            !pool.pods().await.iter().any(|p| p.name == victim.name)
        })
        .await
        .expect("gone");
        println!("    figure: round {round}: {} gone {} ms after the delete", victim.name, ms_since(t));
        pool.settled(3, "a replacement after the graceful delete").await;
        load.progress(300, "sessions to go on after the graceful delete").await.expect("progress");
        for s in &mut idle {
            let count = s.verify(&service).await.expect("an idle session's count");
            assert_eq!((count, s.lost), (IDLE_BURST, 0), "an idle session after the graceful delete: its newest state");
        }
        let handed = pool.sidecar_metric("handover_restores_total{result=\"from_backup\"}").await;
        println!(
            "    figure: round {round}: {IDLE_SESSIONS} idle sessions at their newest state; restores from a backup so far: {handed}"
        );
    }
    let waits = pool.sidecar_metric("handover_app_waits_total").await;
    let sessions = load.stop_and_verify().await.expect("every session went on and lost no acknowledged update");
    println!(
        "    figure: pull mode, 2 graceful deletes: {} sessions, {} acknowledged updates, none lost; requests held for the app on the survivors: {waits}",
        sessions.len(),
        sessions.iter().map(|s| s.acked).sum::<u64>(),
    );
    pool.delete().await;
}

/// Issue 15, "forwards that get through": under a default-deny ingress policy in the pool's
/// namespace, the operator's NetworkPolicy lets the pool's sidecars reach each other (data and
/// admin port) and the pool's clients still reach it. Whether the node enforces policies at all is
/// checked and printed: with the opt-out, forwards must then fail where policies are enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_deny_namespace_still_lets_the_pools_forwards_through() {
    let c = Cluster::find();
    install_operator(&c).await;
    let deny = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    });
    let pool = DemoPool::start(&c, 3, "push", &[deny]).await;
    pool.settled(3, "a pool of 3 in a default-deny namespace").await;
    let policy = c.get_json(&["networkpolicy", "demo-handover", "-n", &pool.ns]).await.expect("the pool's policy");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["kind"], "ServerPool", "owned by the pool: {policy}");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["handover.dev/pool"], "demo");
    let ports: Vec<&str> = policy["spec"]["ingress"][0]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_str())
        .collect();
    // By name: each pod's own ports (8000 and 9901 here), also while a change of them rolls out.
    assert_eq!(ports, ["handover", "handover-admin"], "the sidecar's data and admin port: {policy}");
    assert_eq!(policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["handover.dev/pool"], "demo");

    // One session, its requests sent to each pod in turn: the pods that do not own it forward
    // to the one that does, pod to pod, through the policies.
    let pods: Vec<SocketAddr> =
        pool.serving().await.iter().filter_map(|p| p.ip.parse().ok()).map(|ip| SocketAddr::new(ip, 8000)).collect();
    let mut cookie = String::new();
    for i in 0..12 {
        let answer = any_request(pods[i % pods.len()], "POST", "/incr", &cookie).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i} of the session answered: {answer}");
        let set: Vec<&str> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
            .filter_map(|c| c.split(';').next())
            .collect();
        if !set.is_empty() {
            cookie = set.join("; ");
        }
    }
    let pool_addrs = pods.clone();
    let load = Load::start(Arc::new(Mutex::new(pods)), SESSIONS);
    load.progress(300, "sessions to run on every pod under default-deny").await.expect("progress");
    let ok = pool.sidecar_metric("handover_forwards_total{reason=\"owner\",result=\"ok\"}").await;
    let unreachable = pool.sidecar_metric("handover_forwards_total{reason=\"owner\",result=\"unreachable\"}").await;
    println!("    figure: default-deny + the pool's policy: forwards to owners ok {ok}, unreachable {unreachable}");
    assert!(ok > 0.0, "sessions were forwarded to their owners");
    assert_eq!(unreachable, 0.0, "no forward was refused by the network");

    // The opt-out: the operator deletes its policy. Where policies are enforced, forwards now fail.
    c.kubectl(&[
        "patch",
        "serverpool",
        "demo",
        "-n",
        &pool.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"networkPolicy":{"enabled":false}}}"#,
    ])
    .await
    .expect("opt out");
    wait_for("the operator to delete the pool's NetworkPolicy", SETTLE, || async {
        c.get_json(&["networkpolicy", "demo-handover", "-n", &pool.ns]).await.is_err()
    })
    .await
    .expect("deleted");
    for i in 0..6 {
        let _ = any_request(pool_addrs[i % pool_addrs.len()], "POST", "/incr", &cookie).await;
    }
    load.progress(300, "requests after the opt-out").await.ok();
    let after = pool.sidecar_metric("handover_forwards_total{reason=\"owner\",result=\"unreachable\"}").await;
    if after > 0.0 {
        println!("    enforced: without the pool's policy, {after} forwards could not reach their owner");
    } else {
        println!(
            "    NOT CHECKED: this node does not enforce NetworkPolicy (CNI bridge plugins): forwards still pass without the pool's policy"
        );
    }
    // Where policies are enforced some sessions saw errors after the opt-out: not verified here.
    let _ = load.stop_and_verify().await;
    pool.delete().await;
}

/// The whole answer to `method path` on `addr` with a `Cookie` header (when not empty), whatever
/// its status (5 s at most).
async fn any_request(addr: SocketAddr, method: &str, path: &str, cookie: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let cookie = if cookie.is_empty() { String::new() } else { format!("Cookie: {cookie}\r\n") };
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: e2e\r\nContent-Length: 0\r\nConnection: close\r\n{cookie}\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.ok().flatten()
}

/// An nginx with ingress-nginx's defaults (`proxy-buffer-size` 4k, `large-client-header-buffers`
/// 4 8k, keep-alive to the upstream) in front of `upstream`, on a port the kernel picked; killed
/// on drop. The issue-13 scenario: the path real clusters put in front of a pool.
struct IngressNginx {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl IngressNginx {
    async fn start(upstream: SocketAddr) -> IngressNginx {
        let bin = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("-v").output().is_ok_and(|o| o.status.success()))
            .expect("nginx is installed (tests/run installs it)");
        let dir = std::env::temp_dir().join(format!("handover-e2e-nginx-{}", handover_dataplane::random::session_id()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        // A free port: taken from the kernel, released, and given to nginx (retried if another
        // process takes it in between).
        for _ in 0..5 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let d = dir.display();
            let conf = format!(
                r#"daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  client_header_buffer_size 1k; large_client_header_buffers 4 8k;
  proxy_buffer_size 4k; proxy_buffers 4 4k; proxy_buffering off;
  upstream pool {{ server {upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }}
  }}
}}"#
            );
            std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
            let mut child = tokio::process::Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .kill_on_drop(true)
                .spawn()
                .expect("nginx starts");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let up = wait_for("nginx to accept connections", Duration::from_secs(10), || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
            if up.is_ok() {
                return IngressNginx { child, addr, dir };
            }
            let _ = child.kill().await;
        }
        panic!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for IngressNginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 13 on the cluster: sessions with 3 requests in flight each (one cookie jar, 3
/// connections, as a browser's parallel requests) through an nginx with ingress-nginx's defaults
/// in front of the pool's Service, while pods are SIGKILLed and deleted: every acknowledged update
/// survives, and nginx never refuses the pool's headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_behind_an_ingress_nginx_lose_nothing_when_pods_die() {
    let c = Cluster::find();
    install_operator(&c).await;
    let pool = DemoPool::create(&c, 3).await;
    let ingress = IngressNginx::start(pool.service_addr().await).await;
    let front = Arc::new(Mutex::new(vec![ingress.addr]));
    let load = Load::start_with_lanes(Arc::clone(&front), 6, 3);
    load.progress(300, "concurrent sessions through the ingress").await.expect("warm-up");

    println!("  graceful delete, behind the ingress");
    let victim = first_serving(&pool.serving().await);
    let t = Instant::now();
    c.kubectl(&["delete", "pod", &victim.name, "-n", &pool.ns, "--wait=false"]).await.expect("delete");
    pool.wait_dropped(&victim, t, "graceful delete behind the ingress").await;
    load.progress(300, "sessions to go on after the graceful delete").await.expect("progress");
    pool.settled(3, "a replacement after the graceful delete").await;

    if local_cluster() {
        println!("  SIGKILL, behind the ingress");
        let victim = first_serving(&pool.serving().await);
        let t = Instant::now();
        signal_pod(&c, &pool.ns, &victim, "KILL").await;
        load.progress(300, "sessions to go on after SIGKILL").await.expect("progress");
        println!("    figure: SIGKILL: sessions went on {} ms after the kill", ms_since(t));
        pool.settled(3, "the killed pod's containers restarted").await;
    }
    load.progress(300, "sessions to go on at the end").await.expect("progress");
    let sessions = load.stop_and_verify().await.expect("every acknowledged update of every session survived");
    let log = ingress.error_log();
    assert!(!log.contains("too big header"), "nginx refused the pool's headers:\n{log}");
    let backups = pool.sidecar_metric("handover_backups_sent_total{result=\"ok\"}").await;
    println!(
        "    figure: {} sessions × 3 in flight through the ingress, {} acknowledged updates, none lost; backups handed to successors: {backups}",
        sessions.len() / 3,
        sessions.iter().map(|s| s.increments).sum::<u64>(),
    );
    pool.delete().await;
}
