//! The registry inside a pod: the ready members published by the operator in the pool's
//! `ServerPool.status.members`.
//!
//! One watch on one object (field selector `metadata.name=<pool>`), which the pod's
//! ServiceAccount may read thanks to the Role the operator creates. The watcher re-lists and
//! re-watches with backoff when the API server goes away; meanwhile the last known members stay in
//! force (a sidecar that cannot reach the API server keeps routing as before).
//!
//! The ServerPool is read as a dynamic object into the few fields needed here, so the sidecar
//! does not depend on the operator crate.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use serde::Deserialize;

use crate::registry::{Member, MemberLists, Registry, first_named};
use handover_common::backoff::Doubling;
use handover_common::sync;
use prometheus_client::metrics::counter::Counter;

/// The sidecar port when the ServerPool does not say (the CRD's default).
const DEFAULT_SIDECAR_PORT: u16 = 8000;
/// How long [`KubeRegistry::start`] waits for the first list before returning (the sidecar is not
/// ready until it has one, however long that takes).
const FIRST_SYNC: Duration = Duration::from_secs(5);

/// The part of `ServerPool.spec` the registry reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    #[serde(default)]
    sidecar_port: Option<i64>,
}

/// The part of `ServerPool.status` the registry reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolStatus {
    #[serde(default)]
    members: Vec<MemberStatus>,
}

/// One entry of `status.members`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberStatus {
    pod: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    ready: bool,
    /// The ports the member's own sidecar listens on (the operator publishes them from the pod:
    /// they differ from the pool's while a change of its ports rolls out); an older operator
    /// publishes none.
    #[serde(default)]
    sidecar_port: Option<i64>,
    #[serde(default)]
    admin_port: Option<i64>,
}

/// A port of the ServerPool, if usable.
fn port(p: Option<i64>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

/// The ready members of a ServerPool object (its JSON: `spec` and `status`), sorted by name, each
/// at its own sidecar's ports when the status names them, else at the pool's `sidecarPort` (and
/// probed on this sidecar's admin port). Anything malformed counts as absent: a member without a
/// parsable IP is skipped, an unusable port falls back (the pool's `sidecarPort` to the default).
pub fn members_of(pool: &serde_json::Value) -> Vec<Member> {
    let spec: PoolSpec = pool.get("spec").and_then(|s| PoolSpec::deserialize(s).ok()).unwrap_or_default();
    let pool_port = port(spec.sidecar_port).unwrap_or(DEFAULT_SIDECAR_PORT);
    let status: PoolStatus = pool.get("status").and_then(|s| PoolStatus::deserialize(s).ok()).unwrap_or_default();
    let mut members: Vec<Member> = status
        .members
        .into_iter()
        .filter(|m| m.ready)
        .filter_map(|m| {
            let ip: IpAddr = m.ip.as_deref()?.parse().ok()?;
            let addr = SocketAddr::new(ip, port(m.sidecar_port).unwrap_or(pool_port));
            Some(Member { name: m.pod, uid: m.uid, addr, admin_port: port(m.admin_port) })
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uid.cmp(&b.uid)));
    members
}

/// The members of `these` that `those` lacks (name, uid and address compared), for a log line
/// ([`first_named`]).
fn named(these: &[Member], those: &[Member]) -> String {
    let other: std::collections::HashSet<(&str, &str, SocketAddr)> =
        those.iter().map(|m| (m.name.as_str(), m.uid.as_str(), m.addr)).collect();
    let only: Vec<&str> = these
        .iter()
        .filter(|m| !other.contains(&(m.name.as_str(), m.uid.as_str(), m.addr)))
        .map(|m| m.name.as_str())
        .collect();
    first_named(only.into_iter())
}

/// A [`Registry`] fed by a watch on the pool's ServerPool.
pub struct KubeRegistry {
    members: MemberLists,
    /// `None` once a full list was seen; before that, the last reason it was not.
    not_synced: RwLock<Option<String>>,
}

impl Registry for KubeRegistry {
    fn live(&self) -> Arc<Vec<Member>> {
        self.members.live()
    }

    fn earlier(&self) -> Vec<Arc<Vec<Member>>> {
        self.members.earlier(Instant::now())
    }

    fn synced(&self) -> Result<(), String> {
        match &*sync::read(&self.not_synced) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }
}

impl KubeRegistry {
    /// An empty registry (no live member known yet).
    fn empty() -> Self {
        Self {
            members: MemberLists::new(Vec::new()),
            not_synced: RwLock::new(Some("no list of the ServerPool yet".to_owned())),
        }
    }

    /// Records why the registry is still not synced (a sync, once seen, stays: a sidecar that
    /// loses the API server keeps routing on what it knew).
    fn not_synced_because(&self, why: String) {
        let mut slot = sync::write(&self.not_synced);
        if slot.is_some() {
            *slot = Some(why);
        }
    }

    fn mark_synced(&self) {
        *sync::write(&self.not_synced) = None;
    }

    fn set(&self, members: Vec<Member>) {
        if let Some(before) = self.members.replace(members, Instant::now()) {
            // (The watch's one task sets the list: `live` is the list just set.)
            let after = self.members.live();
            let (joined, left) = (named(&after, &before), named(&before, &after));
            tracing::info!(members = after.len(), %joined, %left, "pool membership changed");
        }
    }

    /// Applies one watch event. Returns true (and counts as synced from then on) once a full list
    /// has been seen.
    fn on_event(&self, event: watcher::Event<DynamicObject>, seen_in_init: &mut bool) -> bool {
        let complete = self.apply(event, seen_in_init);
        if complete {
            self.mark_synced();
        }
        complete
    }

    fn apply(&self, event: watcher::Event<DynamicObject>, seen_in_init: &mut bool) -> bool {
        match event {
            watcher::Event::Init => {
                *seen_in_init = false;
                false
            }
            watcher::Event::InitApply(obj) => {
                *seen_in_init = true;
                self.set(members_of(&obj.data));
                false
            }
            watcher::Event::InitDone => {
                if !*seen_in_init {
                    // The pool does not exist (any more): nobody is alive.
                    self.set(Vec::new());
                }
                true
            }
            watcher::Event::Apply(obj) => {
                self.set(members_of(&obj.data));
                true
            }
            watcher::Event::Delete(_) => {
                self.set(Vec::new());
                true
            }
        }
    }

    /// Connects with the in-cluster configuration and watches ServerPool `namespace/pool`.
    /// Waits up to a few seconds for the first list, then returns; the watch goes on in the
    /// background for the life of the process. Each failed attempt counts in `errors`.
    pub async fn start(namespace: &str, pool: &str, errors: Counter) -> Result<Arc<KubeRegistry>, kube::Error> {
        let client = kube::Client::try_default().await?;
        Ok(KubeRegistry::start_with(client, namespace, pool, errors).await)
    }

    /// [`KubeRegistry::start`] with a client of the caller's.
    pub async fn start_with(client: kube::Client, namespace: &str, pool: &str, errors: Counter) -> Arc<KubeRegistry> {
        let gvk = GroupVersionKind::gvk("handover.dev", "v1alpha1", "ServerPool");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "serverpools");
        let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &resource);
        let config = watcher::Config::default().fields(&format!("metadata.name={pool}"));
        let registry = Arc::new(KubeRegistry::empty());
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
        let feed = registry.clone();
        let pool_name = format!("{namespace}/{pool}");
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut seen_in_init = false;
            // Not kube-runtime's `default_backoff`: it starts again from its shortest pause on any
            // event, and the watcher yields `Init` before every attempt to list, so a watch that
            // kept failing retried every 0.8 to 1.6 s for good (74 lists in 90 s against an API
            // server answering 403), from every pod of the pool at once.
            let mut pause = RetryPause::default();
            let mut failing: Option<(String, u64)> = None;
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        if !feed.on_event(event, &mut seen_in_init) {
                            continue;
                        }
                        pause = RetryPause::default();
                        if let Some((_, attempts)) = failing.take() {
                            tracing::info!(pool = %pool_name, failed_attempts = attempts, "ServerPool watch back");
                        }
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    // The last known members stay. Logged when the error changes, not at each try.
                    Err(e) => {
                        errors.inc();
                        let error = e.to_string();
                        let wait = pause.next(spread());
                        feed.not_synced_because(format!("cannot read ServerPool {pool_name}: {error}"));
                        match &mut failing {
                            Some((last, attempts)) if *last == error => *attempts += 1,
                            _ => {
                                tracing::warn!(pool = %pool_name, %error, ?wait, "ServerPool watch failed; retrying (logged again only if the error changes)");
                                failing = Some((error, 1));
                            }
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        });
        if tokio::time::timeout(FIRST_SYNC, synced_rx).await.is_err() {
            tracing::warn!(%namespace, %pool, "no ServerPool list yet; not ready until there is one");
        }
        registry
    }
}

/// The pause before a failed watch tries again: 1 s, doubling up to 16 s, each spread by ±25 % so
/// that the pool's sidecars, which all failed at once, do not all come back at once; back to 1 s
/// after a list or an event. Every pod of every pool watches: the API server (down, or refusing
/// with 429 because it is overloaded) sees one request per pod per pause.
#[derive(Debug, Clone, Copy)]
struct RetryPause(Doubling);

impl RetryPause {
    /// The next pause; `spread` in [0, 1) picks where in ±25 % it falls.
    fn next(&mut self, spread: f64) -> Duration {
        self.0.next_pause().mul_f64(0.75 + 0.5 * spread.clamp(0.0, 1.0))
    }
}

/// A random number in [0, 1), for [`RetryPause::next`].
fn spread() -> f64 {
    let mut bytes = [0u8; 2];
    crate::random::fill_small(&mut bytes);
    f64::from(u16::from_le_bytes(bytes)) / 65536.0
}

impl Default for RetryPause {
    fn default() -> Self {
        RetryPause(Doubling::new(Duration::from_secs(1), Duration::from_secs(16)))
    }
}

/// How often the sidecar looks at its [`crate::peer_health`] verdict to write it on its pod.
const PEER_HEALTH_EVERY: Duration = Duration::from_secs(10);

/// The strategic-merge patch of `pods/status` that sets this pod's [`crate::peer_health`]
/// condition (conditions merge by `type`: the kubelet's own are left alone).
pub fn peer_condition_patch(verdict: &crate::peer_health::Verdict, since: &str) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": crate::peer_health::CONDITION_TYPE,
                "status": if verdict.reachable { "True" } else { "False" },
                "reason": verdict.reason,
                "message": verdict.message,
                "lastTransitionTime": since,
            }]
        }
    })
}

/// Writes the verdict of `health` on this pod as the condition [`crate::peer_health::CONDITION_TYPE`]
/// (`pods/status` patch, granted by the pool's Role) at start and whenever it changes; the operator
/// sums the pool's pods up into the pool's `PeersReachable` condition. Runs for the life of the
/// process; a refused write is logged (once per kind of failure) and tried again on the next turn.
pub async fn report_peer_health(
    health: impl Fn() -> crate::peer_health::Verdict + Send + 'static,
    namespace: String,
    pod: String,
) {
    let api: Api<k8s_openapi::api::core::v1::Pod> = match kube::Client::try_default().await {
        Ok(client) => Api::namespaced(client, &namespace),
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes client: this pod's peer condition is not written");
            return;
        }
    };
    let mut written: Option<crate::peer_health::Verdict> = None;
    let mut since = String::new();
    let mut last_error: Option<String> = None;
    let mut every = tokio::time::interval(PEER_HEALTH_EVERY);
    loop {
        every.tick().await;
        let verdict = health();
        if !crate::peer_health::should_report(written.as_ref(), &verdict) {
            continue;
        }
        if written.as_ref().is_none_or(|w| w.reachable != verdict.reachable) {
            since = k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
                .to_string();
        }
        let patch = peer_condition_patch(&verdict, &since);
        match api.patch_status(&pod, &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&patch)).await {
            Ok(_) => {
                if verdict.reachable {
                    tracing::info!(message = %verdict.message, "pod condition {}: True", crate::peer_health::CONDITION_TYPE);
                } else {
                    tracing::warn!(message = %verdict.message, "pod condition {}: False", crate::peer_health::CONDITION_TYPE);
                }
                written = Some(verdict);
                last_error = None;
            }
            Err(e) => {
                let kind = e.to_string();
                if last_error.as_deref() != Some(kind.as_str()) {
                    tracing::warn!(error = %kind, pod = %pod, "cannot write this pod's peer condition (pods/status patch); trying again");
                }
                last_error = Some(kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(members: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "handover.dev/v1alpha1",
            "kind": "ServerPool",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"appPort": 8080, "sidecarPort": 8100},
            "status": {"members": members, "readyMembers": 2},
        })
    }

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("a DynamicObject")
    }

    #[test]
    fn only_ready_members_with_an_ip_are_live_sorted_by_name() {
        let p = pool(json!([
            {"pod": "cart-c", "uid": "u3", "ip": "10.0.0.3", "ready": true},
            {"pod": "cart-a", "uid": "u1", "ip": "10.0.0.1", "ready": true},
            {"pod": "cart-b", "uid": "u2", "ip": "10.0.0.2", "ready": false},
            {"pod": "cart-d", "uid": "u4", "ready": true},
            {"pod": "cart-e", "uid": "u5", "ip": "not-an-ip", "ready": true},
            {"pod": "cart-f", "uid": "u6", "ip": "fd00::6", "ready": true},
        ]));
        let live = members_of(&p);
        let view: Vec<(&str, &str, String)> =
            live.iter().map(|m| (m.name.as_str(), m.uid.as_str(), m.addr.to_string())).collect();
        assert_eq!(
            view,
            [
                ("cart-a", "u1", "10.0.0.1:8100".to_owned()),
                ("cart-c", "u3", "10.0.0.3:8100".to_owned()),
                ("cart-f", "u6", "[fd00::6]:8100".to_owned()),
            ]
        );
    }

    #[test]
    fn missing_or_malformed_fields_never_panic() {
        assert!(members_of(&json!({})).is_empty());
        assert!(members_of(&json!({"status": "garbage"})).is_empty());
        assert!(members_of(&json!({"status": {"members": [{"ip": "10.0.0.1"}]}})).is_empty());
        // Bad port: the default is used.
        let p = json!({
            "spec": {"sidecarPort": 70000},
            "status": {"members": [{"pod": "a", "uid": "u", "ip": "10.0.0.1", "ready": true}]},
        });
        assert_eq!(members_of(&p)[0].addr.port(), DEFAULT_SIDECAR_PORT);
        let p = json!({"status": {"members": [{"pod": "a", "ip": "10.0.0.1", "ready": true}]}});
        assert_eq!(members_of(&p)[0].addr.port(), DEFAULT_SIDECAR_PORT);
    }

    #[test]
    fn a_member_is_reached_at_its_own_ports_when_the_status_names_them_else_at_the_pools() {
        // A change of sidecarPort (8000 → 8100) and adminPort (9901 → 9911) rolling out: the pool
        // says the new ports; the old pod `cart-a` still listens on the old ones.
        let p = pool(json!([
            {"pod": "cart-a", "uid": "u1", "ip": "10.0.0.1", "ready": true, "sidecarPort": 8000, "adminPort": 9901},
            {"pod": "cart-b", "uid": "u2", "ip": "10.0.0.2", "ready": true, "sidecarPort": 8100, "adminPort": 9911},
            // From an operator that publishes no ports, or a pod whose sidecar declares none.
            {"pod": "cart-c", "uid": "u3", "ip": "10.0.0.3", "ready": true},
            // Unusable ports count as absent.
            {"pod": "cart-d", "uid": "u4", "ip": "fd00::4", "ready": true, "sidecarPort": 70000, "adminPort": 0},
        ]));
        let live = members_of(&p);
        let view: Vec<(&str, String, Option<u16>)> =
            live.iter().map(|m| (m.name.as_str(), m.addr.to_string(), m.admin_port)).collect();
        assert_eq!(
            view,
            [
                ("cart-a", "10.0.0.1:8000".to_owned(), Some(9901)),
                ("cart-b", "10.0.0.2:8100".to_owned(), Some(9911)),
                ("cart-c", "10.0.0.3:8100".to_owned(), None),
                ("cart-d", "[fd00::4]:8100".to_owned(), None),
            ]
        );
        // Probed on its own admin port, or on the prober's (here 9911) when the status names none.
        let admin: Vec<String> = live.iter().map(|m| m.admin_addr(9911).to_string()).collect();
        assert_eq!(admin, ["10.0.0.1:9901", "10.0.0.2:9911", "10.0.0.3:9911", "[fd00::4]:9911"]);
    }

    #[test]
    fn fields_of_a_member_it_does_not_know_are_ignored() {
        // What lets a sidecar read the status of a newer operator (as this one reads the ports,
        // which an older sidecar does not know).
        let p = pool(json!([
            {"pod": "cart-a", "uid": "u1", "ip": "10.0.0.1", "ready": true, "since": "2025-01-01T00:00:00Z",
             "zone": {"name": "a"}, "weight": 3},
        ]));
        assert_eq!(members_of(&p).len(), 1);
    }

    #[test]
    fn a_member_that_stops_being_ready_leaves_on_the_next_event() {
        let r = KubeRegistry::empty();
        let mut seen = false;
        let both = pool(json!([
            {"pod": "a", "uid": "u1", "ip": "10.0.0.1", "ready": true},
            {"pod": "b", "uid": "u2", "ip": "10.0.0.2", "ready": true},
        ]));
        assert!(r.on_event(watcher::Event::Apply(dynamic(both)), &mut seen));
        assert_eq!(r.live().len(), 2);
        let one = pool(json!([
            {"pod": "a", "uid": "u1", "ip": "10.0.0.1", "ready": true},
            {"pod": "b", "uid": "u2", "ip": "10.0.0.2", "ready": false},
        ]));
        r.on_event(watcher::Event::Apply(dynamic(one)), &mut seen);
        let names: Vec<String> = r.live().iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn not_synced_until_a_full_list_then_synced_for_good() {
        let r = KubeRegistry::empty();
        let mut seen = false;
        assert!(r.synced().is_err(), "nothing listed yet");
        r.not_synced_because("cannot read ServerPool shop/cart: 403 forbidden".into());
        assert!(r.synced().expect_err("still not synced").contains("403"), "the reason is kept for /ready");
        r.on_event(watcher::Event::Init, &mut seen);
        r.on_event(watcher::Event::InitApply(dynamic(pool(json!([])))), &mut seen);
        assert!(r.synced().is_err(), "a list in progress is not a sync");
        r.on_event(watcher::Event::InitDone, &mut seen);
        assert_eq!(r.synced(), Ok(()));
        r.not_synced_because("API server gone".into());
        assert_eq!(r.synced(), Ok(()), "a sidecar that loses the API server keeps what it knew");
    }

    #[test]
    fn a_relist_without_the_pool_empties_the_registry() {
        let r = KubeRegistry::empty();
        let mut seen = false;
        let p = pool(json!([{"pod": "a", "uid": "u1", "ip": "10.0.0.1", "ready": true}]));
        r.on_event(watcher::Event::Init, &mut seen);
        r.on_event(watcher::Event::InitApply(dynamic(p.clone())), &mut seen);
        assert!(r.on_event(watcher::Event::InitDone, &mut seen));
        assert_eq!(r.live().len(), 1);
        // The API server came back and the pool is gone.
        r.on_event(watcher::Event::Init, &mut seen);
        assert_eq!(r.live().len(), 1, "the old view stays during the re-list");
        r.on_event(watcher::Event::InitDone, &mut seen);
        assert!(r.live().is_empty());
        // And a deletion event empties it too.
        r.on_event(watcher::Event::Apply(dynamic(p)), &mut seen);
        assert_eq!(r.live().len(), 1);
        r.on_event(watcher::Event::Delete(dynamic(pool(json!([])))), &mut seen);
        assert!(r.live().is_empty());
    }

    #[test]
    fn a_change_in_a_large_pool_logs_what_changed_in_a_short_line() {
        let (log, _guard) = crate::registry::test_log::Captured::start();
        let r = KubeRegistry::empty();
        let mut seen = false;
        let members = |skip: usize| {
            let list: Vec<serde_json::Value> = (0..5000)
                .filter(|i| *i != skip)
                .map(|i| json!({"pod": format!("cart-7d9f8c6b5-{i:05}"), "uid": format!("u{i}"), "ip": format!("10.1.{}.{}", i / 250, i % 250), "ready": true}))
                .collect();
            pool(serde_json::Value::Array(list))
        };
        r.on_event(watcher::Event::Apply(dynamic(members(usize::MAX))), &mut seen);
        r.on_event(watcher::Event::Apply(dynamic(members(1234))), &mut seen);
        assert_eq!(r.live().len(), 4999);
        let lines = log.lines();
        let changed: Vec<&String> = lines.iter().filter(|l| l.contains("pool membership changed")).collect();
        assert_eq!(changed.len(), 2, "{lines:?}");
        let longest = changed.iter().map(|l| l.len()).max().unwrap_or(0);
        assert!(longest < 1024, "a line of {longest} bytes for one member leaving a pool of 5000");
        assert!(changed[1].contains("cart-7d9f8c6b5-01234"), "the member that left is named: {}", changed[1]);
    }

    /// An API server stand-in that answers every request with `403 Forbidden` (a Role that is
    /// missing, or gone); how many requests it had.
    async fn forbidding_api_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                        "message": "serverpools.handover.dev \"cart\" is forbidden: User \"system:serviceaccount:shop:default\" cannot list resource \"serverpools\"",
                    })
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, requests)
    }

    #[tokio::test]
    async fn a_watch_the_api_server_refuses_backs_off_counts_each_try_and_logs_once() {
        let (log, _guard) = crate::registry::test_log::Captured::start();
        let (addr, requests) = forbidding_api_server().await;
        let config = kube::Config::new(format!("http://{addr}").parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let errors = Counter::default();
        let started = tokio::time::Instant::now();
        let r = KubeRegistry::start_with(client, "shop", "cart", errors.clone()).await;
        tokio::time::sleep_until(started + Duration::from_secs(15)).await;
        let tries = requests.load(std::sync::atomic::Ordering::SeqCst);
        // Pauses of 1, 2, 4 and 8 s (±25 %): at most 5 tries in 15 s.
        assert!((3..=5).contains(&tries), "{tries} lists in 15 s against an API server that answers 403");
        assert_eq!(errors.get(), tries as u64, "every failed try is counted");
        assert_eq!(log.count("ServerPool watch failed"), 1, "the same error is logged once: {:?}", log.lines());
        assert!(r.synced().expect_err("never listed").contains("forbidden"), "/ready says why");
    }

    #[test]
    fn retry_pauses_double_up_to_their_cap_spread_by_a_quarter() {
        let mut p = RetryPause::default();
        let pauses: Vec<u128> = (0..7).map(|_| p.next(0.5).as_millis()).collect();
        assert_eq!(pauses, [1000, 2000, 4000, 8000, 16000, 16000, 16000]);
        let mut p = RetryPause::default();
        assert_eq!((p.next(0.0).as_millis(), p.next(0.999_999).as_millis()), (750, 2499));
    }

    #[test]
    fn an_unchanged_view_keeps_the_same_snapshot() {
        let r = KubeRegistry::empty();
        let mut seen = false;
        let p = pool(json!([{"pod": "a", "uid": "u1", "ip": "10.0.0.1", "ready": true}]));
        r.on_event(watcher::Event::Apply(dynamic(p.clone())), &mut seen);
        let first = r.live();
        r.on_event(watcher::Event::Apply(dynamic(p)), &mut seen);
        assert!(Arc::ptr_eq(&first, &r.live()));
    }

    #[test]
    fn the_peer_condition_patch_sets_one_condition_by_type() {
        let bad = crate::peer_health::Verdict {
            reachable: false,
            reason: "PeersUnreachable",
            message: "could not reach cart-b (…) in the last 60s".into(),
        };
        let patch = peer_condition_patch(&bad, "2026-11-30T13:00:00Z");
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["type"], "handover.dev/PeersReachable");
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("PeersUnreachable")));
        assert_eq!(c["lastTransitionTime"], "2026-11-30T13:00:00Z");
        assert_eq!(patch["status"]["conditions"].as_array().map(Vec::len), Some(1));
    }
}
