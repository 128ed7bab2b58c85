//! A mocked API server that checks each request a reconcile makes, in order (as controller-rs's
//! `fixtures.rs` does), and the scenarios that drive the executor's branches with it: a new pool,
//! a readiness change, a key rotation, a refused key Secret, a failed apply, a deleted pool.
//!
//! The mock is a real HTTP server on a loopback port and the client a real `kube::Client`, so the
//! requests are the ones the operator sends to a real API server. Events (`events.k8s.io`) are
//! answered and recorded apart: the Recorder's batching is not the executor's business. What this
//! cannot show — that the API server accepts these requests and that the watches follow — is the
//! end-to-end suite's job.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::reconcile::reconcile;
use super::watches::caches_ready;
use super::{Context, FINALIZER};
use crate::crd::{POOL_LABEL, ServerPool, ServerPoolSpec};
use crate::desired::{self, InjectionConfig, MANAGED_BY};
use crate::error::Error;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::validate::ImageAllowList;
use handover_common::sync::lock;

/// One request the scenario expects, and the answer.
struct Expect {
    method: &'static str,
    path: String,
    status: u16,
    /// The answer; `None`: the request's own body (what a create returns).
    body: Option<Value>,
}

fn expect(method: &'static str, path: impl Into<String>, status: u16, body: Option<Value>) -> Expect {
    Expect { method, path: path.into(), status, body }
}

#[derive(Default)]
struct Log {
    script: VecDeque<Expect>,
    /// `METHOD path` of every request but Events, in order.
    seen: Vec<String>,
    /// The body of every request but Events, in order.
    bodies: Vec<Value>,
    /// The reason of every Event sent.
    events: Vec<String>,
    /// Requests that were not the next expected one.
    unexpected: Vec<String>,
}

/// The mocked API server.
struct MockApi {
    log: Arc<Mutex<Log>>,
    client: Client,
    server: tokio::task::JoinHandle<()>,
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

async fn answer(log: Arc<Mutex<Log>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut log = lock(&log);
    if path.starts_with("/apis/events.k8s.io/") {
        log.events.push(sent["reason"].as_str().unwrap_or_default().to_owned());
        let mut event = sent;
        event["metadata"]["name"] = json!("event");
        return Response::builder().status(201).body(Full::new(Bytes::from(event.to_string()))).unwrap_or_default();
    }
    log.seen.push(format!("{method} {path}"));
    log.bodies.push(sent.clone());
    let (status, reply) = match log.script.pop_front() {
        Some(e) if e.method == method && e.path == path => (e.status, e.body.unwrap_or(sent)),
        Some(e) => {
            log.unexpected.push(format!("{method} {path} (expected {} {})", e.method, e.path));
            (500, json!({"kind": "Status", "code": 500, "message": "unexpected request"}))
        }
        None => {
            log.unexpected.push(format!("{method} {path} (expected nothing more)"));
            (500, json!({"kind": "Status", "code": 500, "message": "unexpected request"}))
        }
    };
    Response::builder().status(status).body(Full::new(Bytes::from(reply.to_string()))).unwrap_or_default()
}

impl MockApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let log = Arc::new(Mutex::new(Log::default()));
        let served = log.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let log = log.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(log, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let url = format!("http://{addr}").parse().expect("a URL");
        let client = Client::try_from(kube::Config::new(url)).expect("a client");
        Self { log, client, server }
    }

    /// Sets the requests the next reconcile must make, in order.
    fn expect(&self, script: Vec<Expect>) {
        let mut log = lock(&self.log);
        log.script = script.into();
        log.seen.clear();
        log.bodies.clear();
        log.events.clear();
        log.unexpected.clear();
    }

    /// The requests made (`METHOD path`), after checking that they were exactly the expected ones.
    fn verify(&self) -> Vec<String> {
        let log = lock(&self.log);
        assert!(log.unexpected.is_empty(), "unexpected requests: {:?}; all requests: {:?}", log.unexpected, log.seen);
        let left: Vec<String> = log.script.iter().map(|e| format!("{} {}", e.method, e.path)).collect();
        assert!(left.is_empty(), "expected requests not made: {left:?}; made: {:?}", log.seen);
        log.seen.clone()
    }

    fn events(&self) -> Vec<String> {
        lock(&self.log).events.clone()
    }

    fn body(&self, i: usize) -> Value {
        lock(&self.log).bodies.get(i).cloned().unwrap_or(Value::Null)
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const NS: &str = "shop";

fn pool(ready_members: Option<&[(&str, bool)]>) -> ServerPool {
    let mut p = ServerPool::new("cart", ServerPoolSpec::with_app_port(8080));
    p.metadata.namespace = Some(NS.to_owned());
    p.metadata.uid = Some("uid-cart".to_owned());
    p.metadata.generation = Some(1);
    p.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    if let Some(members) = ready_members {
        let pods: Vec<Pod> = members.iter().map(|(name, ready)| pod(name, *ready)).collect();
        let members = desired::members(&p, pods.iter());
        let findings = desired::Findings {
            ready: i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(0),
            total: i32::try_from(members.len()).unwrap_or(0),
            ..desired::Findings::default()
        };
        p.status = Some(desired::status(&p, None, members, &findings, &Time(jiff::Timestamp::UNIX_EPOCH)));
    }
    p
}

/// The pool as the pool cache shows it once it has caught up with the status write `written` (a
/// request body the mock recorded).
fn as_written(written: &Value) -> ServerPool {
    let mut p = pool(None);
    p.status = Some(serde_json::from_value(written["status"].clone()).expect("a status was written"));
    p
}

fn pod(name: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([(POOL_LABEL.to_owned(), "cart".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec { service_account_name: Some("web".to_owned()), ..PodSpec::default() }),
        status: Some(PodStatus {
            pod_ip: Some("10.0.0.5".to_owned()),
            phase: Some("Running".to_owned()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// The Deployment `web`, annotated for the pool; `injected`: as it is once injected.
fn deployment(pool: &ServerPool, injected: bool) -> Deployment {
    let mut d = Deployment {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            namespace: Some(NS.to_owned()),
            annotations: Some(BTreeMap::from([(POOL_LABEL.to_owned(), "cart".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta::default()),
                spec: Some(PodSpec {
                    service_account_name: Some("web".to_owned()),
                    containers: vec![Container { name: "app".to_owned(), ..Container::default() }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    if injected {
        let (patch, _) = desired::injection_patch(pool, &d, &cfg());
        let template = &patch["spec"]["template"];
        let meta = d.spec.as_mut().and_then(|s| s.template.metadata.as_mut()).expect("template metadata");
        meta.annotations = serde_json::from_value(template["metadata"]["annotations"].clone()).ok();
        meta.labels = serde_json::from_value(template["metadata"]["labels"].clone()).ok();
        let spec = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()).expect("template spec");
        spec.init_containers = serde_json::from_value(template["spec"]["initContainers"].clone()).ok();
        spec.termination_grace_period_seconds = template["spec"]["terminationGracePeriodSeconds"].as_i64();
        d.metadata.managed_fields = Some(vec![desired::applied_fields(desired::MANAGER, &patch)]);
    }
    d
}

fn cfg() -> InjectionConfig {
    InjectionConfig::for_minor("registry.example/handover:1".to_owned(), 34)
}

fn store_of<K>(objects: Vec<K>) -> (Store<K>, reflector::store::Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (store, writer)
}

/// What the scenario's caches hold.
struct World {
    pods: Vec<Pod>,
    deployments: Vec<Deployment>,
    pools: Vec<ServerPool>,
    /// (kind, resourceVersion) of the pool's Service, Role and RoleBinding in the owned caches.
    children: Vec<(&'static str, &'static str)>,
}

fn meta_of<K: Resource<DynamicType = ()>>(name: &str, version: &str) -> PartialObjectMeta<K> {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NS.to_owned()),
        resource_version: Some(version.to_owned()),
        ..ObjectMeta::default()
    }
    .into_response_partial::<K>()
}

/// A leader's context over `world`'s caches, talking to `api`.
fn context(api: &MockApi, world: World) -> Arc<Context> {
    let child = |kind: &str| world.children.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
    let (pods, _) = store_of(world.pods);
    let (deployments, _) = store_of(world.deployments);
    let (pools, _) = store_of(world.pools);
    let (services, _) = store_of(child("Service").map(|v| meta_of::<Service>("cart", v)).into_iter().collect());
    let rbac = "cart-handover-registry";
    let (roles, _) = store_of(child("Role").map(|v| meta_of::<Role>(rbac, v)).into_iter().collect());
    let (role_bindings, _) =
        store_of(child("RoleBinding").map(|v| meta_of::<RoleBinding>(rbac, v)).into_iter().collect());
    let (network_policies, _) =
        store_of(child("NetworkPolicy").map(|v| meta_of::<NetworkPolicy>("cart-handover", v)).into_iter().collect());
    let leadership = Leadership::new(Duration::from_secs(10));
    leadership.renewed(tokio::time::Instant::now());
    let inject = cfg();
    Arc::new(Context {
        client: api.client.clone(),
        recorder: Recorder::new(
            api.client.clone(),
            Reporter { controller: "handover-operator".to_owned(), instance: Some("test".to_owned()) },
        ),
        metrics: Arc::new(Metrics::new()),
        caches_ready: caches_ready(pods.clone(), deployments.clone()),
        pods,
        deployments,
        pools,
        services,
        roles,
        role_bindings,
        network_policies,
        applied: Mutex::new(BTreeMap::new()),
        key_checks: Mutex::new(HashMap::new()),
        statuses: Mutex::new(HashMap::new()),
        allowed_images: ImageAllowList::new(Vec::new(), &inject.default_image),
        inject,
        leadership,
        warned_missing: Mutex::new(HashSet::new()),
    })
}

/// Moves what one context remembers (its applies, key checks and status writes) into another,
/// as one long-lived controller would keep it between reconciles while its caches move on.
fn carry_memory(from: &Context, to: &Context) {
    *lock(&to.applied) = lock(&from.applied).clone();
    *lock(&to.key_checks) = lock(&from.key_checks).clone();
    *lock(&to.statuses) = lock(&from.statuses).clone();
}

const POOLS: &str = "/apis/handover.dev/v1alpha1/namespaces/shop/serverpools";
const SERVICE: &str = "/api/v1/namespaces/shop/services/cart";
const ROLE: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/cart-handover-registry";
const BINDING: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/cart-handover-registry";
const POLICY: &str = "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/cart-handover";
const SECRETS: &str = "/api/v1/namespaces/shop/secrets";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

fn with_version(mut object: Value, version: &str) -> Value {
    object["metadata"]["resourceVersion"] = json!(version);
    object
}

fn json_of(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("serializable")
}

/// The first apply of a child by this replica: read first (none there yet), then applied.
fn first_apply(path: &str, applied: Value) -> [Expect; 2] {
    [expect("GET", path, 404, Some(not_found())), expect("PATCH", path, 200, Some(applied))]
}

/// The first applies of a new pool's four children (8 requests).
fn children_first_applied(p: &ServerPool) -> Vec<Expect> {
    let accounts = std::collections::BTreeSet::from(["web".to_owned()]);
    [
        first_apply(SERVICE, with_version(json_of(&desired::service(p)), "11")),
        first_apply(ROLE, with_version(json_of(&desired::role(p)), "12")),
        first_apply(BINDING, with_version(json_of(&desired::role_binding(p, &accounts)), "13")),
        first_apply(POLICY, with_version(json_of(&desired::network_policy(p)), "14")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The requests of a new pool's first reconcile, answered as the API server would.
fn new_pool_script(p: &ServerPool, d: &Deployment) -> Vec<Expect> {
    let mut script = children_first_applied(p);
    script.extend([
        expect("GET", format!("{SECRETS}/cart-handover-keys"), 404, Some(not_found())),
        expect("POST", SECRETS, 201, None),
        expect("PATCH", DEPLOYMENT, 200, Some(json_of(d))),
        expect("PATCH", format!("{POOLS}/cart/status"), 200, Some(json_of(p))),
    ]);
    script
}

/// The first reconcile of a new pool with one ready pod, as [`new_pool_script`] answers it.
async fn a_new_pool_reconciled(api: &MockApi) -> Arc<Context> {
    let p = pool(None);
    let d = deployment(&p, false);
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![p.clone()], children: vec![] };
    let ctx = context(api, world);
    api.expect(new_pool_script(&p, &d));
    run(&ctx, p).await.expect("the first reconcile succeeds");
    api.verify();
    ctx
}

async fn run(ctx: &Arc<Context>, p: ServerPool) -> Result<Action, Error> {
    tokio::time::timeout(Duration::from_secs(30), reconcile(Arc::new(p), ctx.clone()))
        .await
        .expect("the reconcile finished within 30 s")
}

/// A reconcile of `p` (injected, its children as [`new_pool_script`] left them) whose only pod is
/// now `now`, by the controller of `first` (which keeps what it remembers): it must cost one
/// status write and nothing else. Returns the status written.
async fn one_status_write(api: &MockApi, first: &Arc<Context>, p: &ServerPool, now: Pod) -> Value {
    let world = World {
        pods: vec![now],
        deployments: vec![deployment(p, true)],
        pools: vec![p.clone()],
        children: vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")],
    };
    let next = context(api, world);
    carry_memory(first, &next);
    api.expect(vec![expect("PATCH", format!("{POOLS}/cart/status"), 200, Some(json_of(p)))]);
    run(&next, p.clone()).await.expect("the change is reconciled");
    assert_eq!(api.verify(), [format!("PATCH {POOLS}/cart/status")], "one status write, nothing else");
    carry_memory(&next, first);
    api.body(0)
}

#[tokio::test]
async fn a_new_pool_gets_its_children_keys_injection_and_status_then_a_readiness_change_costs_one_write() {
    let api = MockApi::start().await;
    let p = pool(None);
    let d = deployment(&p, false);
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![p.clone()], children: vec![] };
    let ctx = context(&api, world);
    api.expect(new_pool_script(&p, &d));
    run(&ctx, p.clone()).await.expect("the first reconcile succeeds");
    api.verify();
    let secret: Secret = serde_json::from_value(api.body(9)).expect("a Secret was created");
    assert_eq!(
        secret.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str),
        Some(MANAGED_BY.1)
    );
    let role = api.body(3);
    assert_eq!(
        role["rules"][1],
        json!({"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}),
        "the sidecars may write their peer condition"
    );
    let status = api.body(11);
    assert_eq!(status["status"]["readyMembers"], 1);
    assert_eq!(status["status"]["conditions"][0]["reason"], "MembersReady");
    assert_eq!(status["status"]["conditions"][2]["type"], "PeersReachable");
    assert_eq!(status["status"]["conditions"][2]["status"], "True");
    let events = api.events();
    for reason in ["KeySecretCreated", "SidecarInjected", "MemberReady"] {
        assert!(events.iter().any(|e| e == reason), "{reason} in {events:?}");
    }

    // The pod becomes unready. The caches now hold what the first reconcile wrote: the children
    // at the resourceVersions the applies returned, the injected Deployment, the pool's status.
    let p = as_written(&status);
    let status = one_status_write(&api, &ctx, &p, pod("a", false)).await;
    assert_eq!(status["status"]["readyMembers"], 0);
    assert_eq!(api.events(), ["MemberLeft"]);

    // Nothing changed at all: no request.
    let unchanged = as_written(&status);
    let world = World {
        pods: vec![pod("a", false)],
        deployments: vec![deployment(&unchanged, true)],
        pools: vec![unchanged.clone()],
        children: vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")],
    };
    let idle = context(&api, world);
    carry_memory(&ctx, &idle);
    api.expect(vec![]);
    run(&idle, unchanged).await.expect("an idle reconcile");
    assert_eq!(api.verify(), [""; 0]);
}

#[tokio::test]
async fn a_sidecar_reporting_unreachable_peers_degrades_the_pool_in_one_status_write() {
    let api = MockApi::start().await;
    let ctx = a_new_pool_reconciled(&api).await;
    let p = pool(Some(&[("a", true)]));
    let mut reporting = pod("a", true);
    if let Some(cs) = reporting.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        cs.push(PodCondition {
            type_: desired::PEER_CONDITION.to_owned(),
            status: "False".to_owned(),
            reason: Some("PeersUnreachable".to_owned()),
            message: Some("could not reach b (probe of its admin port got no connection) in the last 60s".to_owned()),
            ..PodCondition::default()
        });
    }
    let status = one_status_write(&api, &ctx, &p, reporting).await;
    let conditions = &status["status"]["conditions"];
    assert_eq!((conditions[0]["type"].as_str(), conditions[0]["status"].as_str()), (Some("Ready"), Some("True")));
    assert_eq!(conditions[1]["reason"], "PeersUnreachable", "Degraded says why");
    assert_eq!(
        (conditions[2]["status"].as_str(), conditions[2]["reason"].as_str()),
        (Some("False"), Some("PeersUnreachable"))
    );
    assert!(conditions[2]["message"].as_str().is_some_and(|m| m.contains("a: could not reach b")), "{conditions}");
    assert_eq!(api.events(), ["PeersUnreachable"], "a Warning Event");
}

#[tokio::test]
async fn a_child_edited_by_someone_else_is_applied_again() {
    let api = MockApi::start().await;
    let ctx = a_new_pool_reconciled(&api).await;

    let p = pool(Some(&[("a", true)]));
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![deployment(&p, true)],
        pools: vec![p.clone()],
        children: vec![("Service", "11"), ("Role", "40"), ("RoleBinding", "13"), ("NetworkPolicy", "14")],
    };
    let next = context(&api, world);
    carry_memory(&ctx, &next);
    api.expect(vec![expect("PATCH", ROLE, 200, Some(with_version(json_of(&desired::role(&p)), "41")))]);
    run(&next, p).await.expect("the drift is repaired");
    assert_eq!(api.verify(), [format!("PATCH {ROLE}")]);
}

#[tokio::test]
async fn a_rotation_request_reads_and_rotates_the_key_secret() {
    let api = MockApi::start().await;
    let ctx = a_new_pool_reconciled(&api).await;
    let created = api.body(9);

    let mut p = pool(Some(&[("a", true)]));
    p.metadata.annotations = Some(BTreeMap::from([(desired::ROTATE_ANNOTATION.to_owned(), "now".to_owned())]));
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![deployment(&p, true)],
        pools: vec![p.clone()],
        children: vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")],
    };
    let next = context(&api, world);
    carry_memory(&ctx, &next);
    let secret = format!("{SECRETS}/cart-handover-keys");
    api.expect(vec![
        expect("GET", secret.clone(), 200, Some(with_version(created, "20"))),
        expect("PUT", secret.clone(), 200, None),
    ]);
    run(&next, p).await.expect("the rotation is reconciled");
    api.verify();
    let rotated: Secret = serde_json::from_value(api.body(1)).expect("the Secret was replaced");
    assert_eq!(rotated.metadata.resource_version.as_deref(), Some("20"), "replaced against what was read");
    assert_eq!(rotated.annotations().get(desired::ROTATED_FOR_ANNOTATION).map(String::as_str), Some("now"));
    let keys = rotated.data.as_ref().and_then(|d| d.get(crate::keys::SECRET_KEY)).expect("keys");
    let ring = crate::keys::KeyRing::parse_bytes(&keys.0).expect("a key file");
    assert_eq!(ring.0.len(), 2, "a second key is staged");
    assert!(ring.staged().is_some(), "staged, not yet sealing");
    assert_eq!(api.events(), ["KeysRotated"]);
}

#[tokio::test]
async fn a_key_secret_the_operator_did_not_create_is_not_mounted() {
    let api = MockApi::start().await;
    let mut p = pool(None);
    p.spec.key_secret_name = Some("db-credentials".to_owned());
    let d = deployment(&p, false);
    let world = World { pods: vec![pod("a", true)], deployments: vec![d], pools: vec![p.clone()], children: vec![] };
    let ctx = context(&api, world);
    let foreign = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-credentials", "namespace": NS}, "data": {"password": "aHVudGVyMg=="}});
    let mut script = children_first_applied(&p);
    script.extend([
        expect("GET", format!("{SECRETS}/db-credentials"), 200, Some(foreign)),
        expect("PATCH", format!("{POOLS}/cart/status"), 200, Some(json_of(&p))),
    ]);
    api.expect(script);
    run(&ctx, p).await.expect("a refused Secret is a condition, not an error");
    let requests = api.verify();
    assert!(!requests.iter().any(|r| r.contains("/deployments/")), "nothing injected: {requests:?}");
    let status = api.body(9);
    assert_eq!(status["status"]["conditions"][0]["reason"], "KeySecretInvalid");
    assert_eq!(status["status"]["conditions"][1]["reason"], "KeySecretInvalid");
    assert!(api.events().iter().any(|e| e == "KeySecretInvalid"), "{:?}", api.events());
}

#[tokio::test]
async fn a_refused_apply_is_reported_and_retried_on_the_next_reconcile() {
    let api = MockApi::start().await;
    let p = pool(None);
    let d = deployment(&p, false);
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![p.clone()], children: vec![] };
    let ctx = context(&api, world);
    let mut script = new_pool_script(&p, &d);
    script[1] = expect("PATCH", SERVICE, 403, Some(json!({"kind": "Status", "code": 403, "message": "forbidden"})));
    api.expect(script);
    let failed = run(&ctx, p).await;
    assert!(matches!(failed, Err(Error::Children(ref f)) if f.len() == 1 && f[0].contains("forbidden")), "{failed:?}");
    api.verify();
    assert_eq!(api.body(11)["status"]["conditions"][0]["reason"], "ReconcileFailed");

    // Next time only the Service is applied again (its child cache has nothing at "11"), and the
    // pool has recovered.
    let p = as_written(&api.body(11));
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![deployment(&p, true)],
        pools: vec![p.clone()],
        children: vec![("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")],
    };
    let next = context(&api, world);
    carry_memory(&ctx, &next);
    let mut script: Vec<Expect> = first_apply(SERVICE, with_version(json_of(&desired::service(&p)), "11")).into();
    script.push(expect("PATCH", format!("{POOLS}/cart/status"), 200, Some(json_of(&p))));
    api.expect(script);
    run(&next, p).await.expect("the Service is applied");
    assert_eq!(
        api.verify(),
        [format!("GET {SERVICE}"), format!("PATCH {SERVICE}"), format!("PATCH {POOLS}/cart/status")]
    );
    assert_eq!(api.body(2)["status"]["conditions"][0]["reason"], "MembersReady");
    assert_eq!(api.events(), ["Recovered"]);
}

#[tokio::test]
async fn an_object_under_a_childs_name_that_is_not_the_pools_is_left_as_it_is() {
    // The app's own Service, named like the pool: a forced apply would rewrite its selector,
    // ports and type, and the garbage collector would delete it with the pool.
    let api = MockApi::start().await;
    let p = pool(None);
    let d = deployment(&p, false);
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![p.clone()], children: vec![] };
    let ctx = context(&api, world);
    let theirs = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cart", "namespace": NS, "resourceVersion": "5"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "cart"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let mut script = new_pool_script(&p, &d);
    script.splice(0..2, [expect("GET", SERVICE, 200, Some(theirs))]);
    api.expect(script);
    let failed = run(&ctx, p).await;
    let message = match &failed {
        Err(Error::Children(f)) if f.len() == 1 => f[0].clone(),
        other => panic!("{other:?}"),
    };
    assert!(message.contains("Service shop/cart exists and was not made for this pool"), "{message}");
    let requests = api.verify();
    assert!(!requests.contains(&format!("PATCH {SERVICE}")), "the app's Service is not applied: {requests:?}");
    let status = api.body(10);
    assert_eq!(status["status"]["conditions"][0]["reason"], "ReconcileFailed");
    assert!(
        status["status"]["conditions"][0]["message"].as_str().is_some_and(|m| m.contains("not made for this pool"))
    );
}

#[tokio::test]
async fn a_child_the_pool_left_without_an_owner_is_taken_back() {
    // The pool was deleted with --cascade=orphan (or by a GitOps tool that orphans) and made
    // again: its Service is still there, labelled for it, owned by nothing.
    let api = MockApi::start().await;
    let p = pool(None);
    let d = deployment(&p, false);
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![p.clone()], children: vec![] };
    let ctx = context(&api, world);
    let mut orphan = json_of(&desired::service(&p));
    orphan["metadata"]["ownerReferences"] = json!([]);
    let mut script = new_pool_script(&p, &d);
    script[0] = expect("GET", SERVICE, 200, Some(orphan));
    api.expect(script);
    run(&ctx, p).await.expect("the orphan is applied again, owned by the pool");
    assert!(api.verify().contains(&format!("PATCH {SERVICE}")));
}

#[tokio::test]
async fn opting_out_of_the_network_policy_deletes_it_once_and_a_gone_one_is_no_error() {
    let api = MockApi::start().await;
    let ctx = a_new_pool_reconciled(&api).await;
    let policy: NetworkPolicy = serde_json::from_value(api.body(7)).expect("a NetworkPolicy was applied");
    assert_eq!(
        policy.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str),
        Some(MANAGED_BY.1)
    );

    let mut p = pool(Some(&[("a", true)]));
    p.spec.network_policy.enabled = false;
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![deployment(&p, true)],
        pools: vec![p.clone()],
        children: vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")],
    };
    let next = context(&api, world);
    carry_memory(&ctx, &next);
    api.expect(vec![expect("DELETE", POLICY, 404, Some(not_found()))]);
    run(&next, p.clone()).await.expect("a policy already gone counts as deleted");
    assert_eq!(api.verify(), [format!("DELETE {POLICY}")]);

    // Deleted and forgotten: the next reconcile asks for nothing.
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![deployment(&p, true)],
        pools: vec![p.clone()],
        children: vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13")],
    };
    let idle = context(&api, world);
    carry_memory(&next, &idle);
    api.expect(vec![]);
    run(&idle, p).await.expect("an idle reconcile");
    assert_eq!(api.verify(), [""; 0]);
}

#[tokio::test]
async fn a_deleted_pool_removes_its_injection_then_its_finalizer() {
    let api = MockApi::start().await;
    let mut p = pool(Some(&[("a", true)]));
    p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let d = deployment(&p, true);
    let mut deleting = p.clone();
    deleting.spec.port = 80;
    let world = World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![], children: vec![] };
    let ctx = context(&api, world);
    api.expect(vec![
        expect("PATCH", DEPLOYMENT, 200, Some(json_of(&d))),
        expect("PATCH", format!("{POOLS}/cart"), 200, Some(json_of(&deleting))),
    ]);
    let done = run(&ctx, p).await.expect("the cleanup succeeds");
    assert_eq!(done, Action::await_change());
    api.verify();
    let removal = api.body(0);
    assert_eq!(removal["metadata"]["name"], "web");
    assert!(removal.get("spec").is_none(), "the removal patch owns nothing: {removal}");
    let finalizers = api.body(1);
    assert!(finalizers.to_string().contains(FINALIZER), "the finalizer is removed: {finalizers}");
}

/// The Deployment `web` as the API server leaves it once the operator's removal patch took out
/// what it alone owned: the pod template's injection annotations and pool label stay, because
/// another field manager (Argo CD, applying a manifest exported from the live object) set them
/// too; the operator's managedFields entry is gone (it owns nothing more).
fn left_over(pool: &ServerPool) -> Deployment {
    let mut d = deployment(pool, true);
    d.metadata.annotations = None;
    d.metadata.managed_fields = None;
    let spec = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()).expect("template spec");
    spec.init_containers = None;
    spec.termination_grace_period_seconds = None;
    d
}

#[tokio::test]
async fn an_injection_another_field_manager_also_set_is_removed_once_then_reported_once() {
    let api = MockApi::start().await;
    let ctx = a_new_pool_reconciled(&api).await;
    let p = as_written(&api.body(11));
    let children = vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")];

    // The user drops the opt-in annotation: the operator removes what it owns, once.
    let mut opted_out = deployment(&p, true);
    opted_out.metadata.annotations = None;
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![opted_out],
        pools: vec![p.clone()],
        children: children.clone(),
    };
    let removing = context(&api, world);
    carry_memory(&ctx, &removing);
    api.expect(vec![expect("PATCH", DEPLOYMENT, 200, Some(json_of(&left_over(&p))))]);
    run(&removing, p.clone()).await.expect("the removal is reconciled");
    assert_eq!(api.verify(), [format!("PATCH {DEPLOYMENT}")]);
    assert_eq!(api.events(), ["SidecarRemoved"]);

    // What another manager also set stays: nothing is left for the operator's removal to take
    // out, so it sends none again; it reports the leftover, once.
    let world = World {
        pods: vec![pod("a", true)],
        deployments: vec![left_over(&p)],
        pools: vec![p.clone()],
        children: children.clone(),
    };
    let left = context(&api, world);
    carry_memory(&removing, &left);
    api.expect(vec![expect("PATCH", format!("{POOLS}/cart/status"), 200, Some(json_of(&p)))]);
    let reported = run(&left, p.clone()).await;
    assert_eq!(api.verify(), [format!("PATCH {POOLS}/cart/status")], "no second removal");
    reported.expect("the leftover is reported");
    assert_eq!(api.events(), ["DeploymentConflict"]);
    let status = &api.body(0)["status"];
    let degraded = &status["conditions"][1];
    assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("DeploymentConflict")));
    let message = degraded["message"].as_str().unwrap_or_default();
    for named in ["Deployment web", "annotation handover.dev/injected", "annotation handover.dev/injection-hash"] {
        assert!(message.contains(named), "{named} in {message}");
    }
    assert_eq!(status["conditions"][0]["status"], "True", "the pool still serves");

    // Reconciled again (a pod event, the resync): nothing to write, nothing to say.
    let reported = as_written(&api.body(0));
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![left_over(&p)], pools: vec![reported.clone()], children };
    let again = context(&api, world);
    carry_memory(&left, &again);
    api.expect(vec![]);
    run(&again, reported).await.expect("an idle reconcile");
    assert_eq!(api.verify(), [""; 0]);
    assert_eq!(api.events(), [""; 0]);
}

#[tokio::test]
async fn a_leftover_injection_of_a_pool_that_is_gone_is_warned_about_once_not_removed_again() {
    let api = MockApi::start().await;
    let p = pool(None);
    let world = World { pods: vec![], deployments: vec![left_over(&p)], pools: vec![], children: vec![] };
    let ctx = context(&api, world);
    api.expect(vec![]);
    super::reconcile::missing_pool(&ctx, "cart", Some(NS)).await;
    assert_eq!(api.verify(), [""; 0], "nothing left that a removal could take out");
    assert_eq!(api.events(), ["InjectionLeftover"]);
    api.expect(vec![]);
    super::reconcile::missing_pool(&ctx, "cart", Some(NS)).await;
    assert_eq!(api.verify(), [""; 0]);
    assert_eq!(api.events(), [""; 0], "warned once");
}

#[tokio::test]
async fn a_deleted_pool_leaves_what_another_field_manager_set_and_says_so_on_the_deployment() {
    let api = MockApi::start().await;
    let mut p = pool(Some(&[("a", true)]));
    p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let world = World { pods: vec![pod("a", true)], deployments: vec![left_over(&p)], pools: vec![], children: vec![] };
    let ctx = context(&api, world);
    api.expect(vec![expect("PATCH", format!("{POOLS}/cart"), 200, Some(json_of(&p)))]);
    run(&ctx, p).await.expect("the cleanup succeeds");
    assert_eq!(api.verify(), [format!("PATCH {POOLS}/cart")], "no removal that would change nothing");
    assert_eq!(api.events(), ["InjectionLeftover"]);
}

#[tokio::test]
async fn a_status_the_pool_cache_does_not_show_yet_is_neither_written_nor_reported_again() {
    let api = MockApi::start().await;
    let p = pool(None);
    let d = deployment(&p, false);
    let world =
        World { pods: vec![pod("a", true)], deployments: vec![d.clone()], pools: vec![p.clone()], children: vec![] };
    let ctx = context(&api, world);
    api.expect(new_pool_script(&p, &d));
    run(&ctx, p.clone()).await.expect("the first reconcile succeeds");
    api.verify();
    assert!(api.events().iter().any(|e| e == "MemberReady"), "{:?}", api.events());
    let written = api.body(11)["status"].clone();

    // A pod event that came during the first reconcile runs the next one at once: the pool cache
    // does not show the status just written yet.
    let children = vec![("Service", "11"), ("Role", "12"), ("RoleBinding", "13"), ("NetworkPolicy", "14")];
    let stale = |pods: Vec<Pod>| World {
        pods,
        deployments: vec![deployment(&p, true)],
        pools: vec![p.clone()],
        children: children.clone(),
    };
    let next = context(&api, stale(vec![pod("a", true)]));
    carry_memory(&ctx, &next);
    api.expect(vec![]);
    let nothing_new = run(&next, p.clone()).await;
    assert_eq!(api.events(), [""; 0], "MemberReady was reported already");
    assert_eq!(api.verify(), [""; 0], "the status is as written");
    nothing_new.expect("a reconcile with nothing new");

    // The pod leaves the ready members, the cache still behind: that transition, once.
    let unready = context(&api, stale(vec![pod("a", false)]));
    carry_memory(&next, &unready);
    api.expect(vec![expect("PATCH", format!("{POOLS}/cart/status"), 200, Some(json_of(&p)))]);
    run(&unready, p.clone()).await.expect("the readiness change is reconciled");
    assert_eq!(api.verify(), [format!("PATCH {POOLS}/cart/status")]);
    assert_eq!(api.events(), ["MemberLeft"]);
    assert_eq!((api.body(0)["status"]["readyMembers"].as_i64(), written["readyMembers"].as_i64()), (Some(0), Some(1)));

    // The cache catches up: nothing to write, nothing to say.
    let caught_up = as_written(&api.body(0));
    let world = World {
        pods: vec![pod("a", false)],
        deployments: vec![deployment(&p, true)],
        pools: vec![caught_up.clone()],
        children,
    };
    let idle = context(&api, world);
    carry_memory(&unready, &idle);
    api.expect(vec![]);
    run(&idle, caught_up).await.expect("an idle reconcile");
    assert_eq!(api.verify(), [""; 0]);
    assert_eq!(api.events(), [""; 0]);
}
