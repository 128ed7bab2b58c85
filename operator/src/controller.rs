//! The reconciler: a kube-runtime `Controller` over `ServerPool`s, fed also by pod and Deployment
//! watches. Every decision is made by [`crate::desired`]; this module reads caches, carries the
//! results to the API server with server-side apply, writes status, and publishes Events.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Secret, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::{Backoff, PredicateConfig};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::ServerPool;
use crate::desired::{self, DeploymentPlan, Findings, InjectionConfig, MANAGER};
use crate::duration;
use crate::error::Error;
use crate::keys::{self, KeyRing, RotationInput, SECRET_KEY};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::validate::{self, ImageAllowList};

/// Finalizer that lets the operator remove its injection before a pool disappears.
pub const FINALIZER: &str = "handover.dev/cleanup";
/// Requeue of a healthy pool (a safety net; watches drive the real work).
const RESYNC: Duration = Duration::from_secs(300);
/// Requeue after a failure.
const RETRY: Duration = Duration::from_secs(15);
/// Retry delay after a write refused because the cached object was stale.
const STALE_RETRY: Duration = Duration::from_millis(500);
/// How long a reconcile waits for the pod and Deployment caches at startup.
const CACHE_WAIT: Duration = Duration::from_secs(60);

/// Pause of a failing watch before it retries: 0.5 s, doubling up to 5 s, back to 0.5 s after any
/// event. Shorter than client-go's 30 s cap: a watch that failed all through an API server outage
/// resumes within seconds of its return (with the 30 s cap the registry followed 23 s late), and
/// only the leader's eight watches retry, so the cost to the API server is nil.
#[derive(Debug, Clone, Copy)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let pause = self.next;
        self.next = (pause * 2).min(Self::MAX);
        Some(pause)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
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
fn own_backoff<K>(
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
/// but behind [`own_backoff`].
fn owned_watch<K>(
    scope: &Scope,
    client: &Client,
    resource: &'static str,
    metrics: Arc<Metrics>,
    managed: &watcher::Config,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + use<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api = scope.api::<PartialObjectMeta<K>>(client);
    own_backoff(resource, metrics, watcher(api, managed.clone()).touched_objects())
}

/// The changes of a pool that call for its reconcile: spec (generation), finalizers, the start of
/// its deletion. Not its status: the operator's own status write would come back through the
/// watch as a second reconcile of every readiness flip (four needless server-side applies).
fn spec_or_lifecycle(pool: &ServerPool) -> Option<u64> {
    let meta = &pool.metadata;
    let mut hasher = std::hash::DefaultHasher::new();
    (meta.generation, &meta.finalizers, meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
}

/// Operator settings the reconciler needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--sidecar-image`.
    pub default_image: String,
    /// `--sidecar-image-allow`: the images a pool may choose instead.
    pub allowed_images: ImageAllowList,
    /// `--watch-namespaces`: the namespaces watched; empty for the whole cluster.
    pub namespaces: Vec<String>,
    /// This replica's identity (Events' reporting instance).
    pub identity: String,
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    pools: Store<ServerPool>,
    inject: InjectionConfig,
    allowed_images: ImageAllowList,
    /// The write fence of leader election.
    leadership: Arc<Leadership>,
    /// (namespace, deployment, pool, generation) already warned about a missing pool.
    warned_missing: Mutex<HashSet<(String, String, String, i64)>>,
    /// Resolves once the pod and Deployment caches hold their first full list (or names the one
    /// whose watch ended first). One shared future for every reconcile because kube-runtime's
    /// `Store::wait_until_ready` wakes only the last task that polled it: concurrent reconciles
    /// waiting on it directly sat out the whole [`CACHE_WAIT`] (a new leader reconciled a pool
    /// 60 s late).
    caches_ready: Shared<BoxFuture<'static, Result<(), &'static str>>>,
}

/// Kubernetes minor version from `/version` (`"34"`, `"34+"`).
pub fn parse_minor(minor: &str) -> u32 {
    minor.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0)
}

/// Keeps only what the reconciler reads from a pod, to keep the cache small.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec { service_account_name: spec.service_account_name.take(), ..PodSpec::default() };
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

/// Keeps only the operator's own managed-fields entry of a Deployment.
fn slim_deployment(d: &mut Deployment) {
    if let Some(fields) = d.metadata.managed_fields.as_mut() {
        fields.retain(|m| m.manager.as_deref() == Some(MANAGER));
    }
}

/// The pools a pod event concerns: those selecting it now, and those listing it as a member.
fn pools_for_pod(pools: &Store<ServerPool>, pod: &Pod) -> Vec<ObjectRef<ServerPool>> {
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
fn pools_for_deployment(pools: &Store<ServerPool>, d: &Deployment) -> Vec<ObjectRef<ServerPool>> {
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
fn siblings(pools: &Store<ServerPool>, pool: &ServerPool) -> Vec<ObjectRef<ServerPool>> {
    let ns = pool.namespace();
    let name = pool.name_any();
    pools
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.name_any() != name)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Where the operator watches and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (the chart's ClusterRole).
    Cluster,
    /// One namespace (the chart's namespaced mode: a Role in each watched namespace).
    Namespace(String),
}

impl Scope {
    /// The scopes of `--watch-namespaces`: the whole cluster when none is named, else one per
    /// namespace (sorted, each once).
    pub fn from_namespaces(namespaces: &[String]) -> Vec<Scope> {
        let named: std::collections::BTreeSet<&str> =
            namespaces.iter().map(|n| n.trim()).filter(|n| !n.is_empty()).collect();
        if named.is_empty() {
            vec![Scope::Cluster]
        } else {
            named.into_iter().map(|n| Scope::Namespace(n.to_owned())).collect()
        }
    }

    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        match self {
            Scope::Cluster => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => f.write_str("all namespaces"),
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

/// Runs the controller until `shutdown` resolves (then finishes running reconciles): one
/// controller per [`Scope`] of `settings.namespaces`, each with its own watches and caches. A pool
/// only ever touches objects of its own namespace, so the scopes share nothing but the metrics
/// and the write fence.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    leadership: Arc<Leadership>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let version = client.apiserver_version().await.map_err(Error::kube("read the API server version"))?;
    let minor = parse_minor(&version.minor);
    let inject = InjectionConfig::for_minor(settings.default_image.clone(), minor);
    let scopes = Scope::from_namespaces(&settings.namespaces);
    tracing::info!(
        server = %version.git_version,
        native_sidecars = inject.native_sidecars,
        scopes = %scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        "starting the ServerPool controller"
    );
    let shutdown = shutdown.shared();
    let runs = scopes.into_iter().map(|scope| {
        run_scope(
            scope,
            client.clone(),
            &settings,
            inject.clone(),
            metrics.clone(),
            leadership.clone(),
            shutdown.clone(),
        )
    });
    futures::future::try_join_all(runs).await?;
    Ok(())
}

/// The controller of one [`Scope`].
async fn run_scope(
    scope: Scope,
    client: Client,
    settings: &Settings,
    inject: InjectionConfig,
    metrics: Arc<Metrics>,
    leadership: Arc<Leadership>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let pools: Api<ServerPool> = scope.api(&client);
    pools.list(&ListParams::default().limit(1)).await.map_err(Error::kube(format!(
        "list ServerPools in {scope} (is the CRD installed? kubectl apply -f crds/; does the operator's role cover it?)"
    )))?;

    let (pod_store, pod_writer) = reflector::store();
    let pod_stream = watcher(scope.api::<Pod>(&client), watcher::Config::default())
        .modify(slim_pod)
        .reflect(pod_writer)
        .touched_objects();
    let (deploy_store, deploy_writer) = reflector::store();
    let deploy_stream = watcher(scope.api::<Deployment>(&client), watcher::Config::default())
        .modify(slim_deployment)
        .reflect(deploy_writer)
        .touched_objects();
    let (pool_store, pool_writer) = reflector::store();
    let pool_stream = watcher(pools, watcher::Config::default()).reflect(pool_writer).applied_objects();
    // A pool's spec change (or creation, deletion) can create or clear a conflict reported on a
    // sibling pool of the same namespace: wake the siblings, on generation changes only.
    let sibling_stream = watcher(scope.api::<ServerPool>(&client), watcher::Config::default()).touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: MANAGER.to_owned(), instance: Some(settings.identity.clone()) },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics: metrics.clone(),
        pods: pod_store.clone(),
        deployments: deploy_store.clone(),
        pools: pool_store.clone(),
        inject,
        allowed_images: settings.allowed_images.clone(),
        leadership,
        warned_missing: Mutex::new(HashSet::new()),
        caches_ready: caches_ready(pod_store, deploy_store),
    });
    let managed = watcher::Config::default().labels(&format!("{}={}", desired::MANAGED_BY.0, desired::MANAGED_BY.1));
    let for_pods = pool_store.clone();
    let for_deployments = pool_store.clone();
    let for_siblings = pool_store.clone();
    let pool_stream = own_backoff("serverpools", metrics.clone(), pool_stream)
        .predicate_filter(spec_or_lifecycle, PredicateConfig::default());
    Controller::for_stream(pool_stream, pool_store)
        .owns_stream(owned_watch::<Service>(&scope, &client, "services", metrics.clone(), &managed))
        .owns_stream(owned_watch::<Role>(&scope, &client, "roles", metrics.clone(), &managed))
        .owns_stream(owned_watch::<RoleBinding>(&scope, &client, "rolebindings", metrics.clone(), &managed))
        .watches_stream(own_backoff("pods", metrics.clone(), pod_stream), move |pod| pools_for_pod(&for_pods, &pod))
        .watches_stream(own_backoff("deployments", metrics.clone(), deploy_stream), move |d| {
            pools_for_deployment(&for_deployments, &d)
        })
        .watches_stream(
            own_backoff("serverpools", metrics, sibling_stream)
                .predicate_filter(predicates::generation, PredicateConfig::default()),
            move |p: ServerPool| siblings(&for_siblings, &p),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                match result {
                    Ok((pool, _)) => tracing::debug!(pool = %pool, "reconciled"),
                    Err(controller::Error::ObjectNotFound(missing)) => {
                        missing_pool(&ctx, &missing.name, missing.namespace.as_deref()).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "reconcile failed"),
                }
            }
        })
        .await;
    Ok(())
}

/// A Deployment names (or carries the injection of) a pool that does not exist: warn on the
/// Deployment once per generation, and remove a stale injection.
async fn missing_pool(ctx: &Context, pool: &str, namespace: Option<&str>) {
    let Some(ns) = namespace else { return };
    if fence(ctx).is_err() {
        return;
    }
    for d in ctx.deployments.state() {
        if d.namespace().as_deref() != Some(ns) {
            continue;
        }
        let name = d.name_any();
        if desired::requested_pool(&d) == Some(pool) {
            let key = (ns.to_owned(), name.clone(), pool.to_owned(), d.metadata.generation.unwrap_or(0));
            let first = ctx.warned_missing.lock().map(|mut seen| seen.insert(key)).unwrap_or(false);
            if first {
                tracing::warn!(deployment = %name, namespace = ns, pool, "Deployment names a ServerPool that does not exist");
                publish(
                    ctx,
                    &d.object_ref(&()),
                    true,
                    "PoolNotFound",
                    format!("annotation handover.dev/pool names ServerPool {ns}/{pool}, which does not exist: no sidecar is injected"),
                )
                .await;
            }
        }
        if desired::injected_pool(&d) == Some(pool) {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let body = desired::removal_patch(&d);
            match api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await {
                Ok(_) => {
                    publish(
                        ctx,
                        &d.object_ref(&()),
                        false,
                        "SidecarRemoved",
                        format!("ServerPool {ns}/{pool} no longer exists: removed its sidecar"),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, deployment = %name, "could not remove a stale injection")
                }
            }
        }
    }
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not publish an Event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

async fn reconcile(pool: Arc<ServerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = pool.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ServerPool> = Api::namespaced(ctx.client.clone(), &ns);
    let result = async {
        let pool = with_finalizer(&api, pool, &ctx).await?;
        finalizer(&api, FINALIZER, pool, |event| async {
            match event {
                finalizer::Event::Apply(p) => apply(p, &ctx).await,
                finalizer::Event::Cleanup(p) => cleanup(p, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        })
    }
    .await;
    ctx.metrics.observe(started.elapsed());
    result
}

/// Adds the cleanup finalizer to a pool that lacks it, with a server-side apply: idempotent, and
/// free of preconditions. kube-runtime's `finalizer()` would add it with a JSON patch tested
/// against the cached pool, refused (422) whenever the cache is a moment old: hundreds of times
/// when many pools are created together, as their siblings reconcile each other (scale-bench:
/// 358–2123 refused reconciles while setting up). Returns the pool as the API server now has it.
async fn with_finalizer(api: &Api<ServerPool>, pool: Arc<ServerPool>, ctx: &Context) -> Result<Arc<ServerPool>, Error> {
    if pool.metadata.deletion_timestamp.is_some() || pool.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(pool);
    }
    let name = pool.name_any();
    let body = serde_json::json!({
        "apiVersion": "handover.dev/v1alpha1",
        "kind": "ServerPool",
        "metadata": {"name": name, "finalizers": [FINALIZER]},
    });
    fence(ctx)?;
    let fresh = api
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(Error::kube(format!("add finalizer {FINALIZER} to ServerPool {name}")))?;
    Ok(Arc::new(fresh))
}

fn error_policy(pool: Arc<ServerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error);
    tracing::warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), error = %error, "reconcile failed; retrying");
    Action::requeue(retry_after(error))
}

/// How long to wait before retrying after `error`. A finalizer patch refused as a conflict (409)
/// or a failed `test` (422) only means the cached pool was a moment old: the fresh one is
/// already on its way, so retry at once rather than after [`RETRY`]. Since [`with_finalizer`]
/// adds the finalizer by server-side apply, this is left to its removal on deletion.
fn retry_after(error: &Error) -> Duration {
    use kube::runtime::finalizer::Error as F;
    match error {
        Error::Finalizer(inner) => match inner.as_ref() {
            F::AddFinalizer(kube::Error::Api(status)) | F::RemoveFinalizer(kube::Error::Api(status))
                if status.code == 409 || status.code == 422 =>
            {
                STALE_RETRY
            }
            _ => RETRY,
        },
        _ => RETRY,
    }
}

fn caches_ready(
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

async fn wait_for_caches(ctx: &Context) -> Result<(), Error> {
    match tokio::time::timeout(CACHE_WAIT, ctx.caches_ready.clone()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(store)) => Err(Error::StoreNotReady(store)),
        Err(_) => Err(Error::StoreNotReady("pods and deployments")),
    }
}

/// Server-side apply of a namespaced object with the operator's field manager.
async fn ssa<K>(ctx: &Context, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    fence(ctx)?;
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(Error::kube(format!("apply {} {ns}/{name}", K::kind(&()))))?;
    Ok(())
}

/// Refuses when leadership is not confirmed recently (see [`Leadership`]).
fn fence(ctx: &Context) -> Result<(), Error> {
    if ctx.leadership.is_current() { Ok(()) } else { Err(Error::NotLeader) }
}

async fn apply(pool: Arc<ServerPool>, ctx: &Context) -> Result<Action, Error> {
    wait_for_caches(ctx).await?;
    fence(ctx)?;
    let ns = desired::pool_namespace(&pool);
    let name = desired::pool_name(&pool);
    let now = Timestamp::now();
    let mut findings = Findings {
        spec_problems: validate::validate(&pool, &ctx.inject.default_image, &ctx.allowed_images),
        ..Findings::default()
    };
    let pods = ctx.pods.state();
    let pool_pods = desired::pool_pods(&pool, pods.iter().map(AsRef::as_ref));
    let members = desired::members(&pool, pool_pods.iter().copied());
    let mut failures: Vec<String> = Vec::new();
    let mut requeue = RESYNC;

    // An invalid spec changes nothing that exists: running pods keep what they have.
    if findings.spec_problems.is_empty() {
        if let Err(e) = ssa(ctx, &ns, &desired::service(&pool)).await {
            failures.push(e.to_string());
        }

        let mut key_refused = false;
        match ensure_keys(&pool, ctx, now).await {
            Ok(outcome) => {
                findings.key_problem = outcome.problem;
                key_refused = outcome.refused;
                if let Some(due) = outcome.next_due {
                    let wait = u64::try_from(due.saturating_sub(now.as_second())).unwrap_or(0);
                    requeue = requeue.min(Duration::from_secs(wait.max(1)));
                }
            }
            Err(e) => failures.push(e.to_string()),
        }

        let deployments = ctx.deployments.state();
        let all_pools = ctx.pools.state();
        let pool_refs: Vec<&ServerPool> = all_pools.iter().map(AsRef::as_ref).collect();
        let plans = desired::plan_deployments(&pool, deployments.iter().map(AsRef::as_ref), &pool_refs, &ctx.inject);
        let deploy_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let params = PatchParams::apply(MANAGER).force();
        for plan in plans {
            fence(ctx)?;
            match plan {
                // The injection would mount a Secret the operator may not use: inject nothing
                // (Deployments keep what they have; the condition says why).
                DeploymentPlan::Inject { .. } if key_refused => {}
                DeploymentPlan::Inject { name: d, patch } => {
                    match deploy_api.patch(&d, &params, &Patch::Apply(&patch)).await {
                        Ok(_) => {
                            tracing::info!(deployment = %d, pool = %name, "injected the sidecar");
                            publish(
                                ctx,
                                &pool.object_ref(&()),
                                false,
                                "SidecarInjected",
                                format!("injected the handover sidecar into Deployment {d}"),
                            )
                            .await;
                        }
                        Err(e) => failures.push(format!("inject Deployment {ns}/{d}: {e}")),
                    }
                }
                DeploymentPlan::Remove { name: d, patch } => {
                    match deploy_api.patch(&d, &params, &Patch::Apply(&patch)).await {
                        Ok(_) => {
                            tracing::info!(deployment = %d, pool = %name, "removed the sidecar");
                            publish(
                                ctx,
                                &pool.object_ref(&()),
                                false,
                                "SidecarRemoved",
                                format!("removed the handover sidecar from Deployment {d}"),
                            )
                            .await;
                        }
                        Err(e) => failures.push(format!("remove sidecar from Deployment {ns}/{d}: {e}")),
                    }
                }
                DeploymentPlan::Conflict { name: d, others } => {
                    findings.deployment_problems.push(format!(
                        "Deployment {d} asks for this pool but its pods are also selected by pool(s) {}: not injected",
                        others.join(", ")
                    ));
                }
                DeploymentPlan::ForeignSidecar { name: d } => {
                    findings.deployment_problems.push(format!(
                        "Deployment {d} already has a container named {} that the operator did not inject: not injected",
                        desired::SIDECAR_NAME
                    ));
                }
                DeploymentPlan::Injected { .. } => {}
            }
        }

        let requested: Vec<&Deployment> = deployments
            .iter()
            .map(AsRef::as_ref)
            .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
            .filter(|d| desired::requested_pool(d) == Some(name.as_str()))
            .collect();
        let accounts = desired::service_accounts(pool_pods.iter().copied(), requested);
        if let Err(e) = ssa(ctx, &ns, &desired::role(&pool)).await {
            failures.push(e.to_string());
        }
        if let Err(e) = ssa(ctx, &ns, &desired::role_binding(&pool, &accounts)).await {
            failures.push(e.to_string());
        }
    }

    findings.apply_errors.clone_from(&failures);
    findings.ready = i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(i32::MAX);
    findings.total = i32::try_from(members.len()).unwrap_or(i32::MAX);
    let before = pool.status.clone().unwrap_or_default();
    let status = desired::status(&pool, members, &findings, &Time(now));
    ctx.metrics.set_members(&ns, &name, i64::from(status.total_members), i64::from(status.ready_members));
    if pool.status.as_ref() != Some(&status) {
        fence(ctx)?;
        let api: Api<ServerPool> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": "handover.dev/v1alpha1",
            "kind": "ServerPool",
            "status": status,
        });
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube(format!("write status of ServerPool {ns}/{name}")))?;
    }

    let reference = pool.object_ref(&());
    for event in desired::condition_events(&before.conditions, &status.conditions) {
        publish(ctx, &reference, event.warning, &event.reason, event.note).await;
    }
    // One Event per pod that joined or left, related to the pod: the Recorder aggregates
    // repeated Events by (reason, regarding, related), so each pod keeps its own series.
    let change = desired::membership_change(&before.members, &status.members);
    let uid_of =
        |pod: &str| status.members.iter().chain(before.members.iter()).find(|m| m.pod == pod).map(|m| m.uid.clone());
    for (joined, pods) in [(true, &change.ready), (false, &change.unready)] {
        for pod in pods {
            let related = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.clone()),
                namespace: Some(ns.clone()),
                uid: uid_of(pod),
                ..Default::default()
            };
            let (reason, verb) = if joined { ("MemberReady", "joined") } else { ("MemberLeft", "left") };
            tracing::info!(pool = %name, namespace = %ns, pod = %pod, ready = status.ready_members, "member {verb}");
            let event = Event {
                type_: EventType::Normal,
                reason: reason.to_owned(),
                note: Some(format!(
                    "pod {pod} {verb} the ready members ({} of {} ready)",
                    status.ready_members, status.total_members
                )),
                action: "Registry".to_owned(),
                secondary: Some(related),
            };
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish an Event");
            }
        }
    }

    if failures.is_empty() { Ok(Action::requeue(requeue)) } else { Err(Error::Children(failures)) }
}

async fn cleanup(pool: Arc<ServerPool>, ctx: &Context) -> Result<Action, Error> {
    wait_for_caches(ctx).await?;
    fence(ctx)?;
    let ns = desired::pool_namespace(&pool);
    let name = desired::pool_name(&pool);
    let deployments = ctx.deployments.state();
    let all_pools = ctx.pools.state();
    let pool_refs: Vec<&ServerPool> = all_pools.iter().map(AsRef::as_ref).collect();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut failures = Vec::new();
    for plan in desired::plan_deployments(&pool, deployments.iter().map(AsRef::as_ref), &pool_refs, &ctx.inject) {
        if let DeploymentPlan::Remove { name: d, patch } = plan {
            match api.patch(&d, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
                Ok(_) => {
                    tracing::info!(deployment = %d, pool = %name, "removed the sidecar of a deleted pool")
                }
                Err(e) => failures.push(format!("remove sidecar from Deployment {ns}/{d}: {e}")),
            }
        }
    }
    if !failures.is_empty() {
        return Err(Error::Children(failures));
    }
    ctx.metrics.forget_pool(&ns, &name);
    // Service, Secret, Role and RoleBinding carry an owner reference: the garbage collector
    // deletes them with the pool.
    Ok(Action::await_change())
}

/// What [`ensure_keys`] found.
struct KeyOutcome {
    problem: Option<String>,
    /// The Secret is not one the operator may mount ([`desired::key_secret_refusal`]).
    refused: bool,
    next_due: Option<i64>,
}

fn random_key() -> Result<[u8; 32], Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes)
}

/// Creates the key Secret if absent (never overwrites one), and rotates it when due.
async fn ensure_keys(pool: &ServerPool, ctx: &Context, now: Timestamp) -> Result<KeyOutcome, Error> {
    let ns = desired::pool_namespace(pool);
    let secret_name = desired::key_secret_name(pool);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let now_s = now.as_second();
    let max_age = duration::parse(&pool.spec.cookie.max_age).unwrap_or(Duration::from_secs(12 * 3600));
    let period = pool.spec.key_rotation.period.as_deref().and_then(|p| duration::parse(p).ok());
    let requested = pool.annotations().get(desired::ROTATE_ANNOTATION).cloned();

    let existing = api.get_opt(&secret_name).await.map_err(Error::kube(format!("get Secret {ns}/{secret_name}")))?;
    if let Some(refusal) = existing.as_ref().and_then(|s| desired::key_secret_refusal(pool, &s.metadata)) {
        return Ok(KeyOutcome { problem: Some(refusal), refused: true, next_due: None });
    }
    let Some(mut secret) = existing else {
        let ring = KeyRing::initial(random_key()?, now_s);
        let mut fresh = desired::key_secret(pool, &ring);
        // A rotation request that predates the Secret is already satisfied by the fresh key.
        if let Some(r) = &requested {
            fresh.annotations_mut().insert(desired::ROTATED_FOR_ANNOTATION.to_owned(), r.clone());
        }
        fence(ctx)?;
        return match api.create(&PostParams::default(), &fresh).await {
            Ok(_) => {
                publish(
                    ctx,
                    &pool.object_ref(&()),
                    false,
                    "KeySecretCreated",
                    format!("created Secret {secret_name} with a fresh cookie key"),
                )
                .await;
                let input = RotationInput {
                    now: now_s,
                    period,
                    cookie_max_age: max_age,
                    requested: None,
                    last_request: None,
                    promoted_at: None,
                };
                Ok(KeyOutcome { problem: None, refused: false, next_due: keys::next_due(&ring, &input) })
            }
            // Created meanwhile (another reconcile, a person): read it next time.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(KeyOutcome { problem: None, refused: false, next_due: Some(now_s.saturating_add(1)) })
            }
            Err(e) => Err(Error::kube(format!("create Secret {ns}/{secret_name}"))(e)),
        };
    };

    let parsed = secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)).map(|bytes| KeyRing::parse_bytes(&bytes.0));
    let ring = match parsed {
        Some(Ok(ring)) => ring,
        Some(Err(e)) => {
            return Ok(KeyOutcome {
                refused: false,
                problem: Some(format!(
                    "Secret {secret_name}, data key `{SECRET_KEY}`: {e}. The operator never overwrites an existing Secret: fix it, or delete it to get fresh keys (live sessions will be lost)"
                )),
                next_due: None,
            });
        }
        None => {
            return Ok(KeyOutcome {
                refused: false,
                problem: Some(format!(
                    "Secret {secret_name} has no data key `{SECRET_KEY}`. The operator never overwrites an existing Secret: fix it, or delete it to get fresh keys"
                )),
                next_due: None,
            });
        }
    };
    let annotations: BTreeMap<String, String> = secret.annotations().clone();
    let input = RotationInput {
        now: now_s,
        period,
        cookie_max_age: max_age,
        requested: requested.as_deref(),
        last_request: annotations.get(desired::ROTATED_FOR_ANNOTATION).map(String::as_str),
        promoted_at: annotations.get(desired::PROMOTED_AT_ANNOTATION).and_then(|v| v.parse().ok()),
    };
    let Some(plan) = keys::plan(&ring, &input, random_key()?) else {
        return Ok(KeyOutcome { problem: None, refused: false, next_due: keys::next_due(&ring, &input) });
    };
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert(SECRET_KEY.to_owned(), k8s_openapi::ByteString(plan.ring.render().into_bytes()));
    let secret_annotations = secret.annotations_mut();
    if let Some(at) = plan.promoted_at {
        secret_annotations.insert(desired::PROMOTED_AT_ANNOTATION.to_owned(), at.to_string());
    }
    if let Some(r) = &plan.rotated_for {
        secret_annotations.insert(desired::ROTATED_FOR_ANNOTATION.to_owned(), r.clone());
    }
    // `replace` carries the resourceVersion we read: a concurrent change fails and is retried.
    fence(ctx)?;
    api.replace(&secret_name, &PostParams::default(), &secret)
        .await
        .map_err(Error::kube(format!("rotate keys in Secret {ns}/{secret_name}")))?;
    if !plan.changes.is_empty() {
        let note = plan
            .changes
            .iter()
            .map(|c| match c {
                keys::KeyChange::Staged { id } => format!("staged key {id}"),
                keys::KeyChange::Promoted { id } => format!("key {id} now seals"),
                keys::KeyChange::Pruned { ids } => {
                    format!("dropped expired key(s) {}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(secret = %secret_name, namespace = %ns, %note, "rotated keys");
        publish(ctx, &pool.object_ref(&()), false, "KeysRotated", note).await;
    }
    let after = RotationInput { promoted_at: plan.promoted_at, last_request: plan.rotated_for.as_deref(), ..input };
    Ok(KeyOutcome { problem: None, refused: false, next_due: keys::next_due(&plan.ring, &after) })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_stale_finalizer_patch_is_retried_at_once_other_failures_later() {
        use kube::runtime::finalizer::Error as F;
        let api = |code| kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }));
        let finalizer = |e: F<Error>| Error::Finalizer(Box::new(e));
        assert_eq!(retry_after(&finalizer(F::AddFinalizer(api(422)))), STALE_RETRY);
        assert_eq!(retry_after(&finalizer(F::RemoveFinalizer(api(409)))), STALE_RETRY);
        assert_eq!(retry_after(&finalizer(F::AddFinalizer(api(403)))), RETRY);
        assert_eq!(retry_after(&Error::StoreNotReady("pods")), RETRY);
    }

    use super::*;
    use crate::crd::{POOL_LABEL, ServerPoolSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn watched_namespaces_make_one_scope_each_and_none_the_whole_cluster() {
        assert_eq!(Scope::from_namespaces(&[]), [Scope::Cluster]);
        assert_eq!(Scope::from_namespaces(&[" ".into()]), [Scope::Cluster]);
        let named = ["web".into(), "shop".into(), "web".into()];
        assert_eq!(Scope::from_namespaces(&named), [Scope::Namespace("shop".into()), Scope::Namespace("web".into())]);
    }

    #[test]
    fn server_minor_versions_parse_with_vendor_suffixes() {
        assert_eq!(parse_minor("34"), 34);
        assert_eq!(parse_minor("29+"), 29);
        assert_eq!(parse_minor(""), 0);
        assert_eq!(parse_minor("x"), 0);
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
        let status = pod.status.expect("status");
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        assert!(status.host_ip.is_none());
    }

    #[test]
    fn long_event_notes_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(600), 1000);
        assert!(s.len() <= 1000);
        assert_eq!(truncate("short".into(), 1000), "short");
        let _ = ServerPoolSpec::with_app_port(1);
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
