//! The reconciler: one kube-runtime `Controller` over `ServerPool`s per watched scope, fed also by
//! pod and Deployment watches. Every decision is made by [`crate::desired`]; this module tree
//! reads caches, carries the results to the API server, writes status, and publishes Events.
//!
//! - `watches`: the watches, each behind its own back-off, and which pools an event concerns;
//! - `reconcile`: one pool's reconcile (finalizer; observe → [`desired::plan()`] → execute;
//!   cleanup) and the retry policy;
//! - `execute`: carries out a plan, writing only what changed;
//! - `keys`: reading, creating and rotating the key Secret;
//! - `events`: publishing Events.

mod events;
mod execute;
#[cfg(test)]
mod fixture;
mod keys;
mod reconcile;
mod watches;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::Store;
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource};

use crate::crd::ServerPool;
use crate::desired::{self, Applied, ChildKey, InjectionConfig, KeyCheck, MANAGER, WrittenStatus};
use crate::error::Error;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::validate::ImageAllowList;
use reconcile::{error_policy, missing_pool, reconcile};
use watches::{
    caches_ready, own_backoff, owned_watch, pools_for_deployment, pools_for_pod, siblings, slim_deployment, slim_pod,
    spec_or_lifecycle,
};

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

/// A warning given on a Deployment: namespace, Deployment, pool, the Deployment's generation, the
/// Event's reason (each once per generation).
type Warned = (String, String, String, i64, &'static str);

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    pools: Store<ServerPool>,
    /// The owned-object caches (metadata only): what the executor compares its last applies with.
    services: Store<PartialObjectMeta<Service>>,
    roles: Store<PartialObjectMeta<Role>>,
    role_bindings: Store<PartialObjectMeta<RoleBinding>>,
    network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    /// What the executor applied last, per child: content fingerprint and resourceVersion.
    applied: Mutex<BTreeMap<ChildKey, Applied>>,
    /// The last key Secret check of each pool (namespace, name).
    key_checks: Mutex<HashMap<(String, String), KeyCheck>>,
    /// The status last written of each pool (namespace, name) that the pool cache does not show
    /// yet ([`desired::current_status`]). This replica is the only writer while it leads, and
    /// forgets them all when it stops leading (the context goes with its controller).
    statuses: Mutex<HashMap<(String, String), WrittenStatus>>,
    inject: InjectionConfig,
    allowed_images: ImageAllowList,
    /// The write fence of leader election.
    leadership: Arc<Leadership>,
    /// Warnings already given on a Deployment about a missing pool, or its injection left in
    /// place by another field manager.
    warned_missing: Mutex<HashSet<Warned>>,
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
    let managed = watcher::Config::default().labels(&format!("{}={}", desired::MANAGED_BY.0, desired::MANAGED_BY.1));
    let (services, service_stream) = owned_watch::<Service>(&scope, &client, "services", metrics.clone(), &managed);
    let (roles, role_stream) = owned_watch::<Role>(&scope, &client, "roles", metrics.clone(), &managed);
    let (role_bindings, role_binding_stream) =
        owned_watch::<RoleBinding>(&scope, &client, "rolebindings", metrics.clone(), &managed);
    let (network_policies, network_policy_stream) =
        owned_watch::<NetworkPolicy>(&scope, &client, "networkpolicies", metrics.clone(), &managed);
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics: metrics.clone(),
        pods: pod_store.clone(),
        deployments: deploy_store.clone(),
        pools: pool_store.clone(),
        services,
        roles,
        role_bindings,
        network_policies,
        applied: Mutex::new(BTreeMap::new()),
        key_checks: Mutex::new(HashMap::new()),
        statuses: Mutex::new(HashMap::new()),
        inject,
        allowed_images: settings.allowed_images.clone(),
        leadership,
        warned_missing: Mutex::new(HashSet::new()),
        caches_ready: caches_ready(pod_store, deploy_store),
    });
    let for_pods = pool_store.clone();
    let for_deployments = pool_store.clone();
    let for_siblings = pool_store.clone();
    let pool_stream = own_backoff("serverpools", metrics.clone(), pool_stream)
        .predicate_filter(spec_or_lifecycle, PredicateConfig::default());
    Controller::for_stream(pool_stream, pool_store)
        .owns_stream(service_stream)
        .owns_stream(role_stream)
        .owns_stream(role_binding_stream)
        .owns_stream(network_policy_stream)
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

/// Refuses when leadership is not confirmed recently (see [`Leadership`]).
fn fence(ctx: &Context) -> Result<(), Error> {
    if ctx.leadership.is_current() { Ok(()) } else { Err(Error::NotLeader) }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
