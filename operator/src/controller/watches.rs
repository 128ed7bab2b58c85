//! The watches that feed the controller, each behind a back-off of its own, the slimming of what
//! the caches keep, and which pools an event concerns.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, Stream, StreamExt};
use handover_common::backoff::Doubling;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::Scope;
use crate::crd::ServerPool;
use crate::desired::{self, MANAGER};
use crate::metrics::Metrics;

/// Pause of a failing watch before it retries: 0.5 s, doubling up to 5 s, back to 0.5 s after any
/// event. Shorter than client-go's 30 s cap: a watch that failed all through an API server outage
/// resumes within seconds of its return (with the 30 s cap the registry followed 23 s late), and
/// only the leader's eight watches retry, so the cost to the API server is nil.
#[derive(Debug, Clone, Copy)]
struct WatchBackoff(Doubling);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff(Doubling::new(Duration::from_millis(500), Duration::from_secs(5)))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_pause())
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Feeds one watch to the controller with a backoff of its own, and never passes it an error.
///
/// Why: kube-runtime's `Controller` puts all its trigger streams behind one shared backoff, so an
/// error from any watch pauses every watch — up to 30 s per error, and the pause only shrinks after
/// two quiet minutes. After an API server restart each watch reports its expired resourceVersion
/// once, one after the other, and the operator followed nothing for 5 to 8 minutes. Here a failing
/// watch waits alone ([`WatchBackoff`]) while the others go on; its errors end here, logged and
/// counted in `handover_operator_watch_errors_total`.
pub(super) fn own_backoff<K>(
    resource: &'static str,
    metrics: Arc<Metrics>,
    events: impl Stream<Item = Result<K, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>> {
    events.backoff(WatchBackoff::default()).filter_map(move |event| {
        let kept = match event {
            Ok(object) => Some(Ok(object)),
            Err(error) => {
                tracing::warn!(resource, %error, "watch failed; retrying it after its backoff");
                metrics.watch_error(resource);
                None
            }
        };
        std::future::ready(kept)
    })
}

/// A metadata watch of objects the operator creates for pools, as [`Controller::owns`] would make it
/// but behind [`own_backoff`], and the cache it fills: the executor compares the resourceVersion
/// there with the one its last apply returned, to skip a child nobody changed.
///
/// [`Controller::owns`]: kube::runtime::Controller::owns
pub(super) fn owned_watch<K>(
    scope: &Scope,
    client: &Client,
    resource: &'static str,
    metrics: Arc<Metrics>,
    managed: &watcher::Config,
) -> (Store<PartialObjectMeta<K>>, impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + use<K>)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let api = scope.api::<PartialObjectMeta<K>>(client);
    let events = watcher(api, managed.clone())
        .modify(|object| object.metadata.managed_fields = None)
        .reflect(writer)
        .touched_objects();
    (store, own_backoff(resource, metrics, events))
}

/// The changes of a pool that call for its reconcile: spec (generation), finalizers, the start of
/// its deletion. Not its status: the operator's own status write would come back through the
/// watch as a second reconcile of every readiness flip (four needless server-side applies).
pub(super) fn spec_or_lifecycle(pool: &ServerPool) -> Option<u64> {
    let meta = &pool.metadata;
    let mut hasher = std::hash::DefaultHasher::new();
    (meta.generation, &meta.finalizers, meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
}

/// Keeps only what the reconciler reads from a pod, to keep the cache small: of its spec, the
/// service account and the sidecar's two ports (a member's own ports, `desired::sidecar_ports`),
/// in the list the sidecar is in.
pub(super) fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        let ours = [desired::DATA_PORT_NAME, desired::ADMIN_PORT_NAME];
        let slim = |c: &mut Container| Container {
            name: std::mem::take(&mut c.name),
            ports: c
                .ports
                .take()
                .map(|ps| ps.into_iter().filter(|p| ours.contains(&p.name.as_deref().unwrap_or_default())).collect()),
            ..Container::default()
        };
        let sidecar = |cs: &mut Vec<Container>| cs.iter_mut().find(|c| c.name == desired::SIDECAR_NAME).map(slim);
        let native = spec.init_containers.as_mut().and_then(sidecar);
        let plain = sidecar(&mut spec.containers);
        *spec = PodSpec {
            service_account_name: spec.service_account_name.take(),
            init_containers: native.map(|c| vec![c]),
            containers: plain.into_iter().collect(),
            ..PodSpec::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status = PodStatus {
            pod_ip: status.pod_ip.take(),
            phase: status.phase.take(),
            conditions: status.conditions.take(),
            ..PodStatus::default()
        };
    }
}

/// Keeps only the operator's own managed-fields entry of a Deployment: what tells its injection
/// from one a manifest carries (`desired::remove_injection`).
pub(super) fn slim_deployment(d: &mut Deployment) {
    if let Some(fields) = d.metadata.managed_fields.as_mut() {
        fields.retain(|m| m.manager.as_deref() == Some(MANAGER));
    }
}

/// The pools a pod event concerns: those selecting it now, and those listing it as a member.
pub(super) fn pools_for_pod(pools: &Store<ServerPool>, pod: &Pod) -> Vec<ObjectRef<ServerPool>> {
    let ns = pod.namespace();
    let name = pod.name_any();
    pools
        .state()
        .iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| {
            desired::selects(&desired::selector(p), pod.labels())
                || p.status.as_ref().is_some_and(|s| s.members.iter().any(|m| m.pod == name))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The pools a Deployment event concerns: the one it asks for, the one it carries, and those
/// whose selector matches its pods (for conflicts).
pub(super) fn pools_for_deployment(pools: &Store<ServerPool>, d: &Deployment) -> Vec<ObjectRef<ServerPool>> {
    let Some(ns) = d.namespace() else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        desired::requested_pool(d).into_iter().chain(desired::injected_pool(d)).map(str::to_owned).collect();
    let labels =
        d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    for p in pools.state() {
        if p.namespace().as_deref() == Some(ns.as_str()) && desired::selects(&desired::selector(&p), &labels) {
            names.push(p.name_any());
        }
    }
    names.sort();
    names.dedup();
    names.into_iter().map(|n| ObjectRef::new(&n).within(&ns)).collect()
}

/// The other pools of a pool's namespace.
pub(super) fn siblings(pools: &Store<ServerPool>, pool: &ServerPool) -> Vec<ObjectRef<ServerPool>> {
    let ns = pool.namespace();
    let name = pool.name_any();
    pools
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.name_any() != name)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

pub(super) fn caches_ready(
    pods: Store<Pod>,
    deployments: Store<Deployment>,
) -> Shared<BoxFuture<'static, Result<(), &'static str>>> {
    async move {
        pods.wait_until_ready().await.map_err(|_| "pods")?;
        deployments.wait_until_ready().await.map_err(|_| "deployments")
    }
    .boxed()
    .shared()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{CACHE_WAIT, FINALIZER};
    use crate::crd::{POOL_LABEL, ServerPoolSpec};
    use crate::error::Error;
    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use kube::runtime::controller::Action;
    use kube::runtime::{Controller, reflector};
    use std::collections::BTreeMap;

    fn port(name: Option<&str>, number: i32) -> ContainerPort {
        ContainerPort { name: name.map(str::to_owned), container_port: number, ..ContainerPort::default() }
    }

    #[test]
    fn slim_pods_keep_what_membership_needs() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("a".into()),
                annotations: Some(BTreeMap::from([("big".into(), "x".repeat(1000))])),
                labels: Some(BTreeMap::from([(POOL_LABEL.into(), "cart".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("sa".into()),
                hostname: Some("h".into()),
                init_containers: Some(vec![
                    Container { name: "migrate".into(), image: Some("m".into()), ..Container::default() },
                    Container {
                        name: desired::SIDECAR_NAME.into(),
                        image: Some("s".into()),
                        env: Some(vec![EnvVar { name: "HANDOVER_LISTEN".into(), ..EnvVar::default() }]),
                        ports: Some(vec![
                            port(Some("handover"), 8100),
                            port(Some("handover-admin"), 9911),
                            port(Some("debug"), 6060),
                        ]),
                        restart_policy: Some("Always".into()),
                        ..Container::default()
                    },
                ]),
                containers: vec![Container {
                    name: "app".into(),
                    ports: Some(vec![port(Some("http"), 8080)]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.1".into()),
                host_ip: Some("192.0.2.1".into()),
                ..PodStatus::default()
            }),
        };
        slim_pod(&mut pod);
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.metadata.labels.is_some());
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.service_account_name.as_deref(), Some("sa"));
        assert!(spec.hostname.is_none());
        // Of the containers, the sidecar's name and its two ports, where it was.
        let sidecar = Container {
            name: desired::SIDECAR_NAME.into(),
            ports: Some(vec![port(Some("handover"), 8100), port(Some("handover-admin"), 9911)]),
            ..Container::default()
        };
        assert_eq!(spec.init_containers, Some(vec![sidecar]));
        assert!(spec.containers.is_empty());
        assert_eq!(desired::sidecar_ports(&spec), desired::SidecarPorts { data: Some(8100), admin: Some(9911) });
        // A regular container (Kubernetes before 1.29) stays among the containers.
        let mut plain = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    Container { name: "app".into(), ..Container::default() },
                    Container {
                        name: desired::SIDECAR_NAME.into(),
                        ports: Some(vec![port(Some("handover"), 8000)]),
                        ..Container::default()
                    },
                ],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        slim_pod(&mut plain);
        let spec = plain.spec.expect("spec");
        assert!(spec.init_containers.is_none());
        assert_eq!(desired::sidecar_ports(&spec), desired::SidecarPorts { data: Some(8000), admin: None });
        let status = pod.status.expect("status");
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        assert!(status.host_ip.is_none());
    }

    /// Virtual time from a healthy watch's event to the reconcile it triggers, while another watch
    /// of the same controller fails three times (as every watch does once the API server is back
    /// with a new watch cache: "too old resourceVersion").
    async fn healthy_watch_delay(guard: bool) -> Duration {
        let (store, mut writer) = reflector::store::<ServerPool>();
        let mut demo = ServerPool::new("demo", ServerPoolSpec::with_app_port(8080));
        demo.metadata.namespace = Some("shop".into());
        writer.apply_watcher_event(&watcher::Event::InitApply(demo));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let expired = || {
            let status = kube::core::Status { code: 410, reason: "Expired".into(), ..Default::default() };
            Err(watcher::Error::WatchError(Box::new(status)))
        };
        let failing = futures::stream::iter([expired(), expired(), expired()]).chain(futures::stream::pending());
        // The healthy watch's event comes 100 ms after the failing watch's first error.
        let arrives = tokio::time::Instant::now() + Duration::from_millis(100);
        let healthy = futures::stream::once(async move {
            tokio::time::sleep_until(arrives).await;
            let pod = Pod {
                metadata: ObjectMeta { name: Some("demo-0".into()), ..Default::default() },
                ..Default::default()
            };
            Ok::<Pod, watcher::Error>(pod)
        })
        .chain(futures::stream::pending());
        let to_demo = |_: Pod| Some(ObjectRef::<ServerPool>::new("demo").within("shop"));
        let metrics = Arc::new(Metrics::new());
        let controller = Controller::for_stream(futures::stream::pending(), store);
        let controller = if guard {
            controller
                .watches_stream(own_backoff("failing", metrics.clone(), failing), to_demo)
                .watches_stream(own_backoff("healthy", metrics.clone(), healthy), to_demo)
        } else {
            controller.watches_stream(failing, to_demo).watches_stream(healthy, to_demo)
        };
        let reconcile = |_: Arc<ServerPool>, _: Arc<()>| async { Ok::<_, Error>(Action::await_change()) };
        let mut run = std::pin::pin!(controller.run(reconcile, |_, _, _| Action::await_change(), Arc::new(())));
        let reconciled = async {
            loop {
                match run.next().await {
                    Some(Ok(_)) => return tokio::time::Instant::now(),
                    Some(Err(_)) => continue,
                    None => panic!("the controller stopped"),
                }
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(600), reconciled)
            .await
            .expect("the healthy watch's event reached the reconciler within 10 virtual minutes");
        if guard {
            // Its first error is counted; the next two wait for its own backoff (500 ms, then 1 s).
            let errors = metrics.encode();
            assert!(
                errors.contains(r#"handover_operator_watch_errors_total{resource="failing"} 1"#),
                "the failing watch's first error is counted, the others are still held back: {errors}"
            );
        }
        done - arrives
    }

    #[test]
    fn a_failing_watch_retries_after_half_a_second_doubling_to_five() {
        let mut backoff = WatchBackoff::default();
        let pauses: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(500)), "an event resets it");
    }

    #[tokio::test(start_paused = true)]
    async fn one_failing_watch_does_not_hold_up_the_others() {
        let delay = healthy_watch_delay(true).await;
        assert!(delay < Duration::from_millis(50), "reconciled {delay:?} after the event");
    }

    /// Why [`own_backoff`] exists: left to kube-runtime, one watch's error pauses every watch of
    /// the controller for its shared backoff (800 ms at least, then doubling up to 30 s). If this
    /// fails after a kube-runtime upgrade, the upstream behaviour changed: re-check the guard.
    #[tokio::test(start_paused = true)]
    async fn kube_runtime_alone_pauses_every_watch_on_one_watchs_error() {
        let delay = healthy_watch_delay(false).await;
        assert!(delay >= Duration::from_millis(700), "reconciled {delay:?} after the event");
    }

    #[test]
    fn a_pools_own_status_change_does_not_trigger_its_reconcile() {
        let mut pool = ServerPool::new("demo", ServerPoolSpec::with_app_port(8080));
        pool.metadata.generation = Some(1);
        let first = spec_or_lifecycle(&pool);
        let mut with_status = pool.clone();
        with_status.status = Some(crate::crd::ServerPoolStatus { ready_members: 3, ..Default::default() });
        with_status.metadata.resource_version = Some("42".into());
        assert_eq!(spec_or_lifecycle(&with_status), first, "status and resourceVersion are ignored");

        let mut spec_changed = pool.clone();
        spec_changed.metadata.generation = Some(2);
        let mut finalized = pool.clone();
        finalized.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let mut deleting = pool.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        for (what, changed) in [("generation", spec_changed), ("finalizers", finalized), ("deletion", deleting)] {
            assert_ne!(spec_or_lifecycle(&changed), first, "{what} triggers a reconcile");
        }
    }

    /// Virtual time until each of two reconcile tasks, waiting for the caches together, sees them
    /// ready (through [`caches_ready`], or on the pod store directly); they are ready after 1 s.
    async fn concurrent_cache_waits(shared: bool) -> Vec<Duration> {
        let (store, mut writer) = reflector::store::<Pod>();
        let (deployments, mut deployment_writer) = reflector::store::<Deployment>();
        let ready = caches_ready(store.clone(), deployments);
        let started = tokio::time::Instant::now();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (store, ready) = (store.clone(), ready.clone());
                tokio::spawn(async move {
                    if shared {
                        let _ = tokio::time::timeout(CACHE_WAIT, ready).await;
                    } else {
                        let _ = tokio::time::timeout(CACHE_WAIT, store.wait_until_ready()).await;
                    }
                    started.elapsed()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        writer.apply_watcher_event(&watcher::Event::InitDone);
        deployment_writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut took = Vec::new();
        for waiter in waiters {
            took.push(waiter.await.expect("waiter"));
        }
        took
    }

    #[tokio::test(start_paused = true)]
    async fn every_reconcile_waiting_for_the_caches_wakes_when_they_are_ready() {
        for took in concurrent_cache_waits(true).await {
            assert!(took < Duration::from_secs(2), "woke {took:?} after the start (ready at 1 s)");
        }
    }

    /// Why the caches are awaited through one shared future: kube-runtime's
    /// `Store::wait_until_ready` wakes only the last task that polled it, and the other waiter
    /// sits out its whole timeout. If this fails after an upgrade, upstream fixed it.
    #[tokio::test(start_paused = true)]
    async fn kube_runtime_wakes_only_one_of_two_tasks_waiting_for_a_store() {
        let took = concurrent_cache_waits(false).await;
        assert!(took.iter().any(|t| *t >= CACHE_WAIT), "one waiter sat out its timeout: {took:?}");
    }
}
