use super::*;
use std::collections::BTreeMap;

use crate::crd::ServerPoolSpec;
use crate::crd::{POOL_LABEL, ServerPool, ServerPoolStatus};
use crate::keys::KeyRing;
use crate::validate::SpecProblem;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod};
use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ManagedFieldsEntry};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

fn ts(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn pool_in(ns: &str, name: &str, spec: ServerPoolSpec) -> ServerPool {
    let mut p = ServerPool::new(name, spec);
    p.metadata.namespace = Some(ns.to_owned());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.generation = Some(3);
    p
}

fn pool() -> ServerPool {
    pool_in("shop", "cart", ServerPoolSpec::with_app_port(8080))
}

fn cfg() -> InjectionConfig {
    InjectionConfig::for_minor("ghcr.io/handover/sidecar:1".to_owned(), 34)
}

fn pod(name: &str, labels: &[(&str, &str)], ready: bool, ip: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("shop".to_owned()),
            uid: Some(format!("uid-{name}")),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            creation_timestamp: Some(ts(100)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec { service_account_name: Some("cart-sa".to_owned()), ..PodSpec::default() }),
        status: Some(PodStatus {
            pod_ip: ip.map(str::to_owned),
            phase: Some("Running".to_owned()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(ts(200)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn pool_pod(name: &str, ready: bool) -> Pod {
    pod(name, &[(POOL_LABEL, "cart")], ready, Some("10.0.0.1"))
}

fn deployment(name: &str, annotation: Option<&str>, template_labels: &[(&str, &str)]) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("shop".to_owned()),
            annotations: annotation.map(|a| BTreeMap::from([(POOL_LABEL.to_owned(), a.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            selector: LabelSelector::default(),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".to_owned(),
                        image: Some("app:1".to_owned()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The Deployment as the API server would return it after the operator applied `patch` (a
/// shallow model: copies the template annotations/labels and the injected lists, and records
/// what the operator's field manager owns).
fn applied(mut d: Deployment, patch: &Value) -> Deployment {
    d.metadata.managed_fields = Some(vec![applied_fields(MANAGER, patch)]);
    let template = &patch["spec"]["template"];
    let Some(spec) = d.spec.as_mut() else {
        return d;
    };
    let meta = spec.template.metadata.get_or_insert_with(ObjectMeta::default);
    for (key, target) in [("labels", &mut meta.labels), ("annotations", &mut meta.annotations)] {
        if let Some(obj) = template["metadata"][key].as_object() {
            let map = target.get_or_insert_with(BTreeMap::new);
            for (k, v) in obj {
                map.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let pod = spec.template.spec.get_or_insert_with(PodSpec::default);
    if let Ok(cs) = serde_json::from_value::<Vec<Container>>(template["spec"]["initContainers"].clone()) {
        pod.init_containers = Some(cs);
    }
    if let Some(g) = template["spec"]["terminationGracePeriodSeconds"].as_i64() {
        pod.termination_grace_period_seconds = Some(g);
    }
    d
}

#[test]
fn service_targets_the_sidecar_port_of_the_pool_label() {
    let s = service(&pool());
    assert_eq!(s.metadata.name.as_deref(), Some("cart"));
    assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
    let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(owner.kind, "ServerPool");
    assert_eq!(owner.controller, Some(true));
    let spec = s.spec.expect("spec");
    assert_eq!(spec.selector, Some(BTreeMap::from([(POOL_LABEL.to_owned(), "cart".to_owned())])));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(port.port, 80);
    // By name: each pod's own port (a change of sidecarPort rolls out pod by pod), which is the
    // pool's sidecarPort in the pods it injects.
    assert_eq!(port.target_port, Some(IntOrString::String("handover".to_owned())));
    let named = |name: &str| {
        let container = injection::sidecar_container(&pool(), &cfg());
        container.ports.into_iter().flatten().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
    };
    assert_eq!((named("handover"), named("handover-admin")), (Some(8000), Some(9901)));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
}

#[test]
fn a_custom_selector_replaces_the_pool_label_everywhere() {
    let mut spec = ServerPoolSpec::with_app_port(8080);
    spec.selector = Some(BTreeMap::from([("app".to_owned(), "cart-web".to_owned())]));
    let p = pool_in("shop", "cart", spec);
    assert_eq!(
        service(&p).spec.and_then(|s| s.selector),
        Some(BTreeMap::from([("app".to_owned(), "cart-web".to_owned())]))
    );
    let pods = [
        pod("a", &[("app", "cart-web"), (POOL_LABEL, "cart")], true, Some("10.0.0.1")),
        pod("b", &[(POOL_LABEL, "cart")], true, Some("10.0.0.2")),
        // Selected, but running no sidecar of this pool (not injected, or before its rollout):
        // peers must not forward sessions to it.
        pod("c", &[("app", "cart-web")], true, Some("10.0.0.3")),
    ];
    let names: Vec<String> = members(&p, &pods).into_iter().map(|m| m.pod).collect();
    assert_eq!(names, ["a"]);
}

#[test]
fn role_grants_read_of_the_own_pool_and_pod_status_patch_only() {
    let r = role(&pool());
    let rules = r.rules.expect("rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["handover.dev".to_owned()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["serverpools".to_owned()][..]));
    assert_eq!(rules[0].resource_names.as_deref(), Some(&["cart".to_owned()][..]));
    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    // The sidecars' peer condition: status only (not the pod, its labels or spec), patch only.
    assert_eq!(rules[1].api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rules[1].resources.as_deref(), Some(&["pods/status".to_owned()][..]));
    assert_eq!(rules[1].verbs, ["patch"]);
}

fn with_peer_condition(mut p: Pod, status: &str, message: &str) -> Pod {
    if let Some(cs) = p.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        cs.push(PodCondition {
            type_: PEER_CONDITION.to_owned(),
            status: status.to_owned(),
            message: Some(message.to_owned()),
            ..PodCondition::default()
        });
    }
    p
}

#[test]
fn peers_unreachable_lists_the_pods_whose_sidecar_reports_false_sorted() {
    let mut leaving = with_peer_condition(pool_pod("a", true), "False", "could not reach c");
    leaving.metadata.deletion_timestamp = Some(ts(300));
    let pods = [
        with_peer_condition(pool_pod("d", true), "False", "could not reach a (probe …)"),
        with_peer_condition(pool_pod("b", true), "True", "no failed contact"),
        pool_pod("c", true),
        leaving,
        with_peer_condition(pool_pod("e", false), "False", "could not reach b"),
    ];
    assert_eq!(
        peers_unreachable(&pods),
        ["d: could not reach a (probe …)", "e: could not reach b"],
        "reports of False only, terminating pods left out; a pod with no report is fine"
    );
    let p = pool();
    let plan = plan(
        &p,
        &Observed {
            pods: &pods.iter().collect::<Vec<_>>(),
            deployments: &[],
            pools: &[&p],
            children: &BTreeMap::new(),
            applied: &BTreeMap::new(),
            last_key_check: None,
            now: 0,
        },
        &Policy {
            inject: &cfg(),
            allowed_images: &crate::validate::ImageAllowList::new(Vec::new(), &cfg().default_image),
        },
    );
    assert_eq!(plan.peers_unreachable.len(), 2, "the plan carries them to the status");
}

#[test]
fn unreachable_peers_degrade_the_pool_but_keep_it_ready() {
    let f = Findings {
        peers_unreachable: vec!["cart-a: could not reach cart-b".to_owned()],
        ready: 3,
        total: 3,
        ..Findings::default()
    };
    let v = condition_values(&f);
    assert_eq!((v[0].type_, v[0].status, v[0].reason), ("Ready", true, "MembersReady"), "advisory: still Ready");
    assert_eq!((v[1].type_, v[1].status, v[1].reason), ("Degraded", true, "PeersUnreachable"));
    assert_eq!((v[2].type_, v[2].status, v[2].reason), ("PeersReachable", false, "PeersUnreachable"));
    assert!(
        v[2].message.starts_with("1 sidecar(s) could not reach")
            && v[2].message.ends_with("cart-a: could not reach cart-b")
    );
    let fine = condition_values(&Findings { ready: 3, total: 3, ..Findings::default() });
    assert_eq!((fine[2].type_, fine[2].status, fine[2].reason), ("PeersReachable", true, "NoneReported"));
    // Below every other problem: a spec problem is still what Degraded says first.
    let both =
        Findings { spec_problems: vec![SpecProblem { field: "spec.sidecarPort", message: "clash".to_owned() }], ..f };
    let table: Vec<&str> = problems(&both).iter().map(|p| p.reason).collect();
    assert_eq!(table, ["InvalidSpec", "PeersUnreachable"]);
}

#[test]
fn role_binding_names_every_service_account_once_sorted() {
    let pods = [pool_pod("a", true)];
    let mut other = deployment("web", Some("cart"), &[]);
    if let Some(s) = other.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        s.service_account_name = Some("web-sa".to_owned());
    }
    let plain = deployment("plain", Some("cart"), &[]);
    let sas = service_accounts(&pods, [&other, &plain]);
    let rb = role_binding(&pool(), &sas);
    let subjects: Vec<(String, Option<String>)> =
        rb.subjects.expect("subjects").into_iter().map(|s| (s.name, s.namespace)).collect();
    assert_eq!(
        subjects,
        [
            ("cart-sa".to_owned(), Some("shop".to_owned())),
            ("default".to_owned(), Some("shop".to_owned())),
            ("web-sa".to_owned(), Some("shop".to_owned())),
        ]
    );
    assert_eq!(rb.role_ref.name, "cart-handover-registry");
    assert_eq!(rb.role_ref.kind, "Role");
}

#[test]
fn key_secret_holds_a_parsable_key_file_under_keys() {
    let ring = KeyRing::initial([5; 32], 1_700_000_000);
    let s = key_secret(&pool(), &ring);
    assert_eq!(s.metadata.name.as_deref(), Some("cart-handover-keys"));
    let data = s.data.expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["keys"]);
    assert_eq!(KeyRing::parse_bytes(&data["keys"].0), Ok(ring));
}

fn secret_meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("shop".to_owned()),
        labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        ..ObjectMeta::default()
    }
}

#[test]
fn a_pool_cannot_take_an_unlabelled_secret_of_its_namespace_as_its_keys() {
    let mut p = pool();
    p.spec.key_secret_name = Some("db-credentials".to_owned());
    let refusal = key_secret_refusal(&p, &secret_meta("db-credentials", &[("app", "db")]));
    let message = refusal.expect("an arbitrary Secret is refused");
    assert!(message.contains("db-credentials") && message.contains(MANAGED_BY.0), "{message}");
    let wrong_value = secret_meta("db-credentials", &[(MANAGED_BY.0, "helm")]);
    assert!(key_secret_refusal(&p, &wrong_value).is_some(), "another manager's label is not ours");
}

#[test]
fn a_secret_the_operator_created_or_the_default_name_is_used() {
    let mut p = pool();
    p.spec.key_secret_name = Some("cart-keys".to_owned());
    let created = key_secret(&p, &KeyRing::initial([7; 32], 1_700_000_000));
    assert_eq!(key_secret_refusal(&p, &created.metadata), None, "what the operator creates carries its label");
    let default = pool();
    assert_eq!(key_secret_refusal(&default, &secret_meta("cart-handover-keys", &[])), None);
}

#[test]
fn a_pool_cannot_take_another_pools_key_secret() {
    // Pool `account` names the Secret the operator made for pool `cart`: mounting it would give
    // account's pods cart's keys, and rotating it on account's schedule would retire cart's keys
    // under cart's live cookies.
    let cart = pool();
    let carts = key_secret(&cart, &KeyRing::initial([7; 32], 1_700_000_000));
    let mut account = pool();
    account.metadata.name = Some("account".to_owned());
    account.spec.key_secret_name = carts.metadata.name.clone();
    let refusal = key_secret_refusal(&account, &carts.metadata).expect("another pool's Secret is refused");
    assert!(refusal.contains("handover.dev/pool=account"), "{refusal}");
    assert_eq!(key_secret_refusal(&cart, &carts.metadata), None, "its own pool's Secret is used");
}

#[test]
fn members_are_sorted_and_only_ready_pods_with_an_ip_count_as_ready() {
    let mut terminating = pool_pod("d", true);
    terminating.metadata.deletion_timestamp = Some(ts(300));
    let mut finished = pool_pod("e", false);
    if let Some(s) = finished.status.as_mut() {
        s.phase = Some("Succeeded".to_owned());
    }
    let mut elsewhere = pool_pod("f", true);
    elsewhere.metadata.namespace = Some("other".to_owned());
    let pods = [
        pool_pod("c", true),
        pool_pod("a", false),
        pod("b", &[(POOL_LABEL, "cart")], true, None),
        terminating,
        finished,
        elsewhere,
        pod("g", &[(POOL_LABEL, "orders")], true, Some("10.0.0.9")),
    ];
    let ms = members(&pool(), &pods);
    let view: Vec<(&str, bool)> = ms.iter().map(|m| (m.pod.as_str(), m.ready)).collect();
    assert_eq!(view, [("a", false), ("b", false), ("c", true), ("d", false)]);
    assert_eq!(ms[2].ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(ms[2].since, Some(ts(200)));
    assert_eq!(ms[1].ip, None);
}

/// A pod of the pool running the sidecar `pool` injects with `cfg`: the app container first, the
/// sidecar where the injection puts it (a native sidecar in `initContainers`, or a container).
fn injected_pod(name: &str, pool: &ServerPool, cfg: &InjectionConfig) -> Pod {
    let mut p = pool_pod(name, true);
    let sidecar = sidecar_container(pool, cfg);
    let app = Container {
        name: "app".to_owned(),
        ports: Some(vec![ContainerPort { name: Some("http".to_owned()), container_port: 8080, ..Default::default() }]),
        ..Container::default()
    };
    let native = sidecar.restart_policy.is_some();
    p.spec = Some(PodSpec {
        init_containers: native.then(|| vec![sidecar.clone()]),
        containers: if native { vec![app] } else { vec![app, sidecar] },
        ..PodSpec::default()
    });
    p
}

#[test]
fn each_member_carries_the_ports_its_own_sidecar_listens_on() {
    // A change of sidecarPort and adminPort rolling out: pod `a` keeps the ports it was injected
    // with, `b` (native sidecar) and `c` (a regular container, Kubernetes before 1.29) have the
    // new ones, `d` has no sidecar that declares its ports.
    let before = pool();
    let mut after = pool();
    after.spec.sidecar_port = 8100;
    after.spec.admin_port = 9911;
    let old_cluster = InjectionConfig::for_minor("img".to_owned(), 28);
    let pods = [
        injected_pod("a", &before, &cfg()),
        injected_pod("b", &after, &cfg()),
        injected_pod("c", &after, &old_cluster),
        pool_pod("d", true),
    ];
    assert!(pods[1].spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some(), "b has a native sidecar");
    assert!(pods[2].spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_none(), "c has a regular one");
    let ms = members(&after, &pods);
    let view: Vec<(&str, Option<i32>, Option<i32>)> =
        ms.iter().map(|m| (m.pod.as_str(), m.sidecar_port, m.admin_port)).collect();
    assert_eq!(
        view,
        [
            ("a", Some(8000), Some(9901)),
            ("b", Some(8100), Some(9911)),
            ("c", Some(8100), Some(9911)),
            ("d", None, None),
        ]
    );
    // The status says no port where it knows none (an older sidecar reads the same fields).
    let status = serde_json::to_value(&ms).expect("json");
    assert_eq!(status[0]["sidecarPort"], 8000);
    assert_eq!(status[0]["adminPort"], 9901);
    assert!(status[3].get("sidecarPort").is_none() && status[3].get("adminPort").is_none());
}

#[test]
fn a_container_named_like_the_sidecar_without_its_named_ports_gives_no_port() {
    let mut p = pool_pod("a", true);
    let unnamed = ContainerPort { container_port: 8000, ..ContainerPort::default() };
    let admin = ContainerPort { name: Some("handover-admin".to_owned()), container_port: 0, ..Default::default() };
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: SIDECAR_NAME.to_owned(),
            ports: Some(vec![unnamed, admin]),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    let ms = members(&pool(), &[p]);
    assert_eq!((ms[0].sidecar_port, ms[0].admin_port), (None, None));
}

#[test]
fn member_order_does_not_depend_on_input_order() {
    let a = [pool_pod("x", true), pool_pod("y", true), pool_pod("z", false)];
    let b = [pool_pod("z", false), pool_pod("x", true), pool_pod("y", true)];
    assert_eq!(members(&pool(), &a), members(&pool(), &b));
}

#[test]
fn membership_change_names_pods_that_joined_and_left() {
    let before = members(&pool(), &[pool_pod("a", true), pool_pod("b", true)]);
    let after = members(&pool(), &[pool_pod("b", false), pool_pod("c", true)]);
    let change = membership_change(&before, &after);
    assert_eq!(change.ready, ["c"]);
    assert_eq!(change.unready, ["a", "b"]);
    assert!(membership_change(&after, &after).is_empty());
}

#[test]
fn sidecar_is_a_native_sidecar_with_probes_env_and_keys() {
    let c = sidecar_container(&pool(), &cfg());
    assert_eq!(c.name, SIDECAR_NAME);
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    assert_eq!(c.command, Some(vec!["handover-sidecar".to_owned()]));
    assert_eq!(c.args, Some(vec!["run".to_owned()]));
    let startup = c.startup_probe.expect("startup").http_get.expect("http");
    assert_eq!(startup.path.as_deref(), Some("/live"));
    assert_eq!(startup.port, IntOrString::Int(9901));
    let ready = c.readiness_probe.expect("readiness").http_get.expect("http");
    assert_eq!(ready.path.as_deref(), Some("/ready"));
    let env: BTreeMap<String, (Option<String>, Option<String>)> = c
        .env
        .expect("env")
        .into_iter()
        .map(|e| {
            let field = e
                .value_from
                .and_then(|v| v.field_ref.map(|f| f.field_path).or(v.resource_field_ref.map(|r| r.resource)));
            (e.name, (e.value, field))
        })
        .collect();
    assert_eq!(env["HANDOVER_POOL"].0.as_deref(), Some("shop/cart"));
    assert_eq!(env["HANDOVER_POD_NAME"].1.as_deref(), Some("metadata.name"));
    assert_eq!(env["HANDOVER_POD_UID"].1.as_deref(), Some("metadata.uid"));
    assert_eq!(env["HANDOVER_POD_IP"].1.as_deref(), Some("status.podIP"));
    assert_eq!(env["HANDOVER_MEMORY_LIMIT"].1.as_deref(), Some("limits.memory"));
    assert_eq!(env["HANDOVER_REGISTRY"].0.as_deref(), Some("kubernetes"));
    assert_eq!(env["HANDOVER_APP"].0.as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(env["HANDOVER_LISTEN"].0.as_deref(), Some("[::]:8000"));
    assert_eq!(env["HANDOVER_ADMIN"].0.as_deref(), Some("$(HANDOVER_POD_IP):9901"));
    assert_eq!(env["HANDOVER_KEY_FILE"].0.as_deref(), Some("/etc/handover/keys/keys"));
    assert_eq!(env["HANDOVER_MODE"].0.as_deref(), Some("both"));
    assert_eq!(env["HANDOVER_COOKIE_SAME_SITE"].0.as_deref(), Some("Lax"));
    assert_eq!(env["HANDOVER_COOKIE_SECURE"].0.as_deref(), Some("true"));
    let mounts = c.volume_mounts.expect("mounts");
    assert_eq!(mounts[0].mount_path, "/etc/handover/keys");
    assert_eq!(mounts[0].read_only, Some(true));
    let pre_stop = c.lifecycle.and_then(|l| l.pre_stop).and_then(|p| p.sleep);
    assert_eq!(pre_stop.map(|s| s.seconds), Some(PRESTOP_SLEEP_SECONDS));
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env.as_ref()?.iter().find(|e| e.name == name)?.value.clone()
}

#[test]
fn the_app_protocol_reaches_the_sidecar_as_its_flag() {
    let c = sidecar_container(&pool(), &cfg());
    assert_eq!(env_value(&c, "HANDOVER_APP_PROTOCOL").as_deref(), Some("http1"), "HTTP/1.1 by default");
    let mut spec = ServerPoolSpec::with_app_port(8080);
    spec.sidecar.app_protocol = crate::crd::AppProtocol::H2c;
    let c = sidecar_container(&pool_in("shop", "cart", spec), &cfg());
    assert_eq!(env_value(&c, "HANDOVER_APP_PROTOCOL").as_deref(), Some("h2c"));
}

#[test]
fn an_app_protocol_other_than_http1_or_h2c_is_refused() {
    let parse = |p: &str| {
        serde_json::from_value::<ServerPoolSpec>(serde_json::json!({"appPort": 8080, "sidecar": {"appProtocol": p}}))
    };
    assert_eq!(parse("h2c").expect("h2c parses").sidecar.app_protocol, crate::crd::AppProtocol::H2c);
    assert!(parse("h2").is_err());
    assert!(parse("HTTP2").is_err());
}

#[test]
fn a_pools_strings_reach_the_sidecar_unexpanded_and_its_cookie_is_named_after_it_by_default() {
    let c = sidecar_container(&pool(), &cfg());
    assert_eq!(env_value(&c, "HANDOVER_COOKIE_NAME"), None, "unset: the sidecar derives the pool's own name");
    let mut spec = ServerPoolSpec::with_app_port(8080);
    spec.cookie.name = "cart".to_owned();
    // Kubernetes would replace $(HANDOVER_POD_IP) with the pod's IP: each pod another Path.
    spec.cookie.path = "/$(HANDOVER_POD_IP)/a$b".to_owned();
    let c = sidecar_container(&pool_in("shop", "cart", spec), &cfg());
    assert_eq!(env_value(&c, "HANDOVER_COOKIE_NAME").as_deref(), Some("cart"));
    assert_eq!(env_value(&c, "HANDOVER_COOKIE_PATH").as_deref(), Some("/$$(HANDOVER_POD_IP)/a$$b"), "$ written $$");
}

#[test]
fn states_go_uncompressed_only_when_the_pool_says_so_and_the_default_template_is_unchanged() {
    let c = sidecar_container(&pool(), &cfg());
    assert_eq!(env_value(&c, "HANDOVER_COMPRESS_STATE"), None, "the default adds nothing: no rollout on upgrade");
    let spec: ServerPoolSpec =
        serde_json::from_value(serde_json::json!({"appPort": 8080, "cookie": {"compress": false}})).expect("parses");
    let c = sidecar_container(&pool_in("shop", "cart", spec), &cfg());
    assert_eq!(env_value(&c, "HANDOVER_COMPRESS_STATE").as_deref(), Some("false"));
}

#[test]
fn the_admin_port_is_bound_to_the_pod_ip_defined_before_it() {
    let env = sidecar_container(&pool(), &cfg()).env.expect("env");
    let position = |name: &str| env.iter().position(|e| e.name == name).expect(name);
    let admin = &env[position("HANDOVER_ADMIN")];
    assert_eq!(admin.value.as_deref(), Some("$(HANDOVER_POD_IP):9901"));
    // Kubernetes expands $(VAR) only from variables listed earlier: after it, it stays literal.
    assert!(position(POD_IP_ENV) < position("HANDOVER_ADMIN"), "{env:?}");
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "each variable once: {names:?}");
}

#[test]
fn the_sidecar_runs_unprivileged_under_the_runtime_default_seccomp_profile() {
    let sc = sidecar_container(&pool(), &cfg()).security_context.expect("securityContext");
    assert_eq!(sc.seccomp_profile.map(|p| p.type_).as_deref(), Some("RuntimeDefault"));
    assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_owned()]));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.run_as_group, Some(65532));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
}

#[test]
fn old_clusters_get_a_regular_container_without_sleep_hook() {
    let old = InjectionConfig::for_minor("img".to_owned(), 28);
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&pool(), &d, &old);
    let spec = &patch["spec"]["template"]["spec"];
    assert!(spec.get("initContainers").is_none());
    assert_eq!(spec["containers"][0]["name"], SIDECAR_NAME);
    assert!(spec["containers"][0].get("restartPolicy").is_none());
    assert!(spec["containers"][0].get("lifecycle").is_none());
}

#[test]
fn injection_patch_adds_label_volume_grace_and_marker_only() {
    let d = deployment("web", Some("cart"), &[("app", "web")]);
    let (patch, hash) = injection_patch(&pool(), &d, &cfg());
    assert_eq!(patch["apiVersion"], "apps/v1");
    assert_eq!(patch["kind"], "Deployment");
    assert_eq!(patch["metadata"]["name"], "web");
    // Nothing outside the template: the Deployment's selector and replicas stay the user's.
    assert_eq!(
        patch["spec"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["template".to_owned()])
    );
    let t = &patch["spec"]["template"];
    assert_eq!(t["metadata"]["labels"][POOL_LABEL], "cart");
    assert_eq!(t["metadata"]["annotations"][INJECTED_ANNOTATION], "cart");
    assert_eq!(t["metadata"]["annotations"][HASH_ANNOTATION], hash.as_str());
    assert_eq!(t["spec"]["initContainers"][0]["name"], SIDECAR_NAME);
    // The app containers get the drain hook and nothing else (merged into them by name).
    let token = drain_token(&pool(), &d);
    assert_eq!(
        t["spec"]["containers"],
        json!([{"name": "app", "lifecycle": {"preStop": {"httpGet": {
            "path": "/drain", "port": 9901, "scheme": "HTTP",
            "httpHeaders": [{"name": "Handover-Drain", "value": token}],
        }}}}])
    );
    let env = &t["spec"]["initContainers"][0]["env"];
    assert!(
        env.as_array().into_iter().flatten().any(|e| e["name"] == DRAIN_TOKEN_ENV && e["value"] == token.as_str()),
        "the sidecar knows the token: {env}"
    );
    assert_eq!(t["spec"]["volumes"][0]["name"], KEY_VOLUME);
    assert_eq!(t["spec"]["volumes"][0]["secret"]["secretName"], "cart-handover-keys");
    // Its own credentials for the API server, whether or not the pod automounts a token.
    assert_eq!(t["spec"]["volumes"][1]["name"], API_VOLUME);
    let sources = &t["spec"]["volumes"][1]["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.namespace");
    let mounts = &t["spec"]["initContainers"][0]["volumeMounts"];
    assert!(
        mounts.as_array().into_iter().flatten().any(|m| m["name"] == API_VOLUME
            && m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
            && m["readOnly"] == true),
        "{mounts}"
    );
    assert_eq!(t["spec"]["terminationGracePeriodSeconds"], 5 + 20 + 15);
}

#[test]
fn a_long_enough_user_grace_period_is_left_alone() {
    let mut d = deployment("web", Some("cart"), &[]);
    if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        s.termination_grace_period_seconds = Some(120);
    }
    let (patch, _) = injection_patch(&pool(), &d, &cfg());
    assert!(patch["spec"]["template"]["spec"].get("terminationGracePeriodSeconds").is_none());
}

#[test]
fn a_grace_period_we_own_stays_in_the_patch_so_it_never_flaps() {
    let mut d = deployment("web", Some("cart"), &[]);
    if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        s.termination_grace_period_seconds = Some(40);
    }
    d.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(MANAGER.to_owned()),
        operation: Some("Apply".to_owned()),
        fields_v1: Some(FieldsV1(json!({
            "f:spec": {"f:template": {"f:spec": {"f:terminationGracePeriodSeconds": {}}}}
        }))),
        ..ManagedFieldsEntry::default()
    }]);
    let (patch, _) = injection_patch(&pool(), &d, &cfg());
    assert_eq!(patch["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 40);
}

#[test]
fn injection_is_idempotent_once_applied() {
    let p = pool();
    let d = deployment("web", Some("cart"), &[]);
    let first = plan_deployments(&p, [&d], &[&p], &cfg());
    let DeploymentPlan::Inject { patch, .. } = &first[0] else {
        panic!("expected an injection, got {first:?}");
    };
    let after = applied(d, patch);
    let second = plan_deployments(&p, [&after], &[&p], &cfg());
    assert_eq!(second, [DeploymentPlan::Injected { name: "web".to_owned() }]);
}

#[test]
fn a_spec_change_changes_the_hash_and_reinjects() {
    let p = pool();
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&p, &d, &cfg());
    let after = applied(d, &patch);
    let mut changed = p.clone();
    changed.spec.snapshot.interval = "5s".to_owned();
    let plan = plan_deployments(&changed, [&after], &[&changed], &cfg());
    assert!(matches!(plan[..], [DeploymentPlan::Inject { .. }]), "{plan:?}");
}

#[test]
fn removing_the_annotation_removes_the_injection() {
    let p = pool();
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&p, &d, &cfg());
    let mut after = applied(d, &patch);
    after.metadata.annotations = None;
    let plan = plan_deployments(&p, [&after], &[&p], &cfg());
    let [DeploymentPlan::Remove { name, patch }] = &plan[..] else {
        panic!("expected a removal, got {plan:?}");
    };
    assert_eq!(name, "web");
    // The removal body carries no template: SSA drops every field the operator owned.
    assert!(patch.get("spec").is_none());
    assert_eq!(patch["metadata"]["name"], "web");
}

/// `d` once the operator's removal took out what it alone owned, where a manifest (applied by
/// Argo CD, exported from the live object) also holds the template's annotations and labels: they
/// stay, and the operator owns nothing more.
fn removed_but_for_the_manifest(mut d: Deployment) -> Deployment {
    d.metadata.managed_fields = None;
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.init_containers = None;
        spec.termination_grace_period_seconds = None;
    }
    d
}

#[test]
fn an_injection_another_field_manager_keeps_is_reported_not_removed_again() {
    let mut p = pool();
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&p, &d, &cfg());
    let mut opted_out = applied(d, &patch);
    opted_out.metadata.annotations = None;
    assert!(matches!(plan_deployments(&p, [&opted_out], &[&p], &cfg())[..], [DeploymentPlan::Remove { .. }]));

    let left = removed_but_for_the_manifest(opted_out);
    let plan = plan_deployments(&p, [&left], &[&p], &cfg());
    let leftover = DeploymentPlan::Leftover {
        name: "web".to_owned(),
        fields: vec![
            "annotation handover.dev/injected".to_owned(),
            "annotation handover.dev/injection-hash".to_owned(),
            "label handover.dev/pool".to_owned(),
        ],
    };
    assert_eq!(plan, [leftover], "a removal would change nothing");
    p.metadata.deletion_timestamp = Some(ts(500));
    assert_eq!(plan_deployments(&p, [&left], &[&p], &cfg()), plan, "nor when the pool is deleted");
}

#[test]
fn a_leftover_names_each_part_of_the_injection_it_still_has() {
    let p = pool();
    let mut d = deployment("web", None, &[]);
    let (patch, _) = injection_patch(&p, &d, &cfg());
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers = serde_json::from_value(patch["spec"]["template"]["spec"]["containers"].clone())
            .expect("the app container with its drain hook");
        spec.volumes = serde_json::from_value(patch["spec"]["template"]["spec"]["volumes"].clone()).ok();
    }
    let d = applied(d, &patch);
    assert_eq!(
        injection_fields(&d, "cart"),
        [
            "annotation handover.dev/injected",
            "annotation handover.dev/injection-hash",
            "label handover.dev/pool",
            "container handover-sidecar",
            "volume handover-keys",
            "volume handover-kube-api-access",
            "the preStop hook of container app",
        ]
    );
    assert!(injection_fields(&d, "orders").iter().all(|f| f != "label handover.dev/pool"), "another pool's label");
}

#[test]
fn an_injection_a_manifest_holds_but_the_operator_does_not_own_is_applied_once_to_own_it() {
    let p = pool();
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&p, &d, &cfg());
    let mut theirs = applied(d, &patch);
    theirs.metadata.managed_fields = None;
    let plan = plan_deployments(&p, [&theirs], &[&p], &cfg());
    let [DeploymentPlan::Inject { patch: again, .. }] = &plan[..] else {
        panic!("expected an injection, got {plan:?}");
    };
    let template = |p: &Value| {
        (p["spec"]["template"]["metadata"].clone(), p["spec"]["template"]["spec"]["initContainers"].clone())
    };
    assert_eq!(template(again), template(&patch), "the same values: the apply changes only who owns them");
    let ours = applied(theirs, again);
    assert_eq!(plan_deployments(&p, [&ours], &[&p], &cfg()), [DeploymentPlan::Injected { name: "web".to_owned() }]);
}

#[test]
fn an_injection_settles_after_one_apply_whoever_else_set_the_grace_period() {
    let p = pool();
    let needed = needed_grace_seconds(&p);
    // Another manager's value (its managedFields entry is not in the operator's cache).
    for theirs in [needed - 10, needed, needed + 20] {
        let mut d = deployment("web", Some("cart"), &[]);
        if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            s.termination_grace_period_seconds = Some(theirs);
        }
        let first = plan_deployments(&p, [&d], &[&p], &cfg());
        let [DeploymentPlan::Inject { patch, .. }] = &first[..] else {
            panic!("expected an injection, got {first:?}");
        };
        let after = applied(d, patch);
        let grace = after.spec.as_ref().and_then(|s| s.template.spec.as_ref()?.termination_grace_period_seconds);
        assert_eq!(grace, Some(theirs.max(needed)), "raised only when lower");
        let second = plan_deployments(&p, [&after], &[&p], &cfg());
        assert_eq!(second, [DeploymentPlan::Injected { name: "web".to_owned() }], "grace {theirs}");
    }
}

#[test]
fn a_deleted_pool_removes_its_injection() {
    let mut p = pool();
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&p, &d, &cfg());
    let after = applied(d, &patch);
    p.metadata.deletion_timestamp = Some(ts(500));
    let plan = plan_deployments(&p, [&after], &[&p], &cfg());
    assert!(matches!(plan[..], [DeploymentPlan::Remove { .. }]), "{plan:?}");
}

#[test]
fn moving_the_annotation_to_another_existing_pool_leaves_the_switch_to_it() {
    let cart = pool();
    let orders = pool_in("shop", "orders", ServerPoolSpec::with_app_port(8080));
    let d = deployment("web", Some("cart"), &[]);
    let (patch, _) = injection_patch(&cart, &d, &cfg());
    let mut after = applied(d, &patch);
    after.metadata.annotations = Some(BTreeMap::from([(POOL_LABEL.to_owned(), "orders".to_owned())]));
    assert_eq!(plan_deployments(&cart, [&after], &[&cart, &orders], &cfg()), []);
    let plan = plan_deployments(&orders, [&after], &[&cart, &orders], &cfg());
    assert!(matches!(plan[..], [DeploymentPlan::Inject { .. }]), "{plan:?}");
    // If the named pool does not exist, the old pool cleans up.
    let plan = plan_deployments(&cart, [&after], &[&cart], &cfg());
    assert!(matches!(plan[..], [DeploymentPlan::Remove { .. }]), "{plan:?}");
}

#[test]
fn two_pools_claiming_one_deployment_is_a_conflict_not_an_injection() {
    let cart = pool();
    let mut spec = ServerPoolSpec::with_app_port(8080);
    spec.selector = Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]));
    let web_pool = pool_in("shop", "web", spec);
    let d = deployment("web", Some("cart"), &[("app", "web")]);
    let plan = plan_deployments(&cart, [&d], &[&cart, &web_pool], &cfg());
    assert_eq!(plan, [DeploymentPlan::Conflict { name: "web".to_owned(), others: vec!["web".to_owned()] }]);
    // A pool being deleted no longer conflicts.
    let mut leaving = web_pool.clone();
    leaving.metadata.deletion_timestamp = Some(ts(9));
    let plan = plan_deployments(&cart, [&d], &[&cart, &leaving], &cfg());
    assert!(matches!(plan[..], [DeploymentPlan::Inject { .. }]), "{plan:?}");
    // A pool of the same name in another namespace is no conflict.
    let mut elsewhere = web_pool.clone();
    elsewhere.metadata.namespace = Some("other".to_owned());
    let plan = plan_deployments(&cart, [&d], &[&cart, &elsewhere], &cfg());
    assert!(matches!(plan[..], [DeploymentPlan::Inject { .. }]), "{plan:?}");
}

#[test]
fn a_deployment_whose_container_declares_a_port_of_the_sidecar_is_not_injected() {
    // A Django app on 8000, or an exporter on 9901: the sidecar could not bind its port.
    let p = pool();
    for port in [p.spec.sidecar_port, p.spec.admin_port] {
        let mut d = deployment("web", Some("cart"), &[]);
        if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            s.containers[0].ports = Some(vec![ContainerPort { container_port: port, ..ContainerPort::default() }]);
        }
        let plan = plan_deployments(&p, [&d], &[&p], &cfg());
        let container = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|s| s.containers[0].name.clone());
        assert_eq!(
            plan,
            [DeploymentPlan::PortTaken { name: "web".to_owned(), container: container.expect("a container"), port }]
        );
    }
    let mut d = deployment("web", Some("cart"), &[]);
    if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        s.containers[0].ports =
            Some(vec![ContainerPort { container_port: p.spec.app_port, ..ContainerPort::default() }]);
    }
    assert!(
        matches!(plan_deployments(&p, [&d], &[&p], &cfg())[..], [DeploymentPlan::Inject { .. }]),
        "the app's port is the app's"
    );
}

#[test]
fn a_hand_written_container_named_like_the_sidecar_is_not_overwritten() {
    let mut d = deployment("web", Some("cart"), &[]);
    if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        s.containers.push(Container { name: SIDECAR_NAME.to_owned(), ..Container::default() });
    }
    let p = pool();
    assert_eq!(plan_deployments(&p, [&d], &[&p], &cfg()), [DeploymentPlan::ForeignSidecar { name: "web".to_owned() }]);
}

#[test]
fn deployments_of_other_namespaces_and_pools_are_ignored() {
    let p = pool();
    let mut elsewhere = deployment("web", Some("cart"), &[]);
    elsewhere.metadata.namespace = Some("other".to_owned());
    let other_pool = deployment("api", Some("orders"), &[]);
    let plain = deployment("plain", None, &[]);
    assert_eq!(plan_deployments(&p, [&elsewhere, &other_pool, &plain], &[&p], &cfg()), []);
}

#[test]
fn conditions_report_invalid_spec_first() {
    let f = Findings {
        spec_problems: vec![SpecProblem { field: "spec.sidecarPort", message: "clash".to_owned() }],
        key_problem: Some("bad keys".to_owned()),
        ready: 2,
        total: 2,
        ..Findings::default()
    };
    let v = condition_values(&f);
    assert_eq!((v[0].type_, v[0].status, v[0].reason), ("Ready", false, "InvalidSpec"));
    assert_eq!(v[0].message, "spec.sidecarPort: clash");
    assert_eq!((v[1].type_, v[1].status, v[1].reason), ("Degraded", true, "InvalidSpec"));
}

#[test]
fn conditions_for_keys_members_and_conflicts() {
    let keys = Findings { key_problem: Some("line 1: bad".to_owned()), ready: 1, total: 1, ..Findings::default() };
    assert_eq!(condition_values(&keys)[0].reason, "KeySecretInvalid");
    let empty = Findings::default();
    let v = condition_values(&empty);
    assert_eq!((v[0].status, v[0].reason), (false, "NoReadyMembers"));
    assert_eq!((v[1].status, v[1].reason), (false, "AsExpected"));
    let conflict = Findings {
        deployment_problems: vec!["web: also selected by pool x".to_owned()],
        ready: 2,
        total: 3,
        ..Findings::default()
    };
    let v = condition_values(&conflict);
    assert_eq!((v[0].status, v[0].reason, v[0].message.as_str()), (true, "MembersReady", "2 of 3 members ready"));
    assert_eq!((v[1].status, v[1].reason), (true, "DeploymentConflict"));
}

#[test]
fn one_table_of_problems_orders_both_conditions() {
    let all = Findings {
        spec_problems: vec![],
        key_problem: Some("bad keys".to_owned()),
        deployment_problems: vec!["web: conflict".to_owned()],
        apply_errors: vec!["apply Service: 500".to_owned(), "apply Role: 403".to_owned()],
        peers_unreachable: vec![],
        ready: 3,
        total: 3,
    };
    let table: Vec<(&str, bool)> = problems(&all).iter().map(|p| (p.reason, p.unready)).collect();
    assert_eq!(table, [("KeySecretInvalid", true), ("ReconcileFailed", true), ("DeploymentConflict", false)]);
    assert_eq!(problems(&all)[1].message, "apply Service: 500; apply Role: 403");
    let failed_only = Findings { apply_errors: vec!["apply Role: 403".to_owned()], ready: 3, total: 3, ..all };
    let failed_only = Findings { key_problem: None, deployment_problems: vec![], ..failed_only };
    let v = condition_values(&failed_only);
    assert_eq!((v[0].status, v[0].reason), (false, "ReconcileFailed"), "ready members do not hide a failure");
    assert_eq!((v[1].status, v[1].reason), (true, "ReconcileFailed"));
}

#[test]
fn transition_time_changes_only_on_a_real_transition() {
    let ready = |n: i32| Findings { ready: n, total: 3, ..Findings::default() };
    let first = settle_conditions(&[], &condition_values(&ready(1)), Some(1), &ts(10));
    assert_eq!(first[0].last_transition_time, ts(10));
    // Message changes (1 -> 2 ready), status does not: time stays.
    let second = settle_conditions(&first, &condition_values(&ready(2)), Some(1), &ts(20));
    assert_eq!(second[0].last_transition_time, ts(10));
    assert_eq!(second[0].message, "2 of 3 members ready");
    // Ready -> not ready: time moves.
    let third = settle_conditions(&second, &condition_values(&ready(0)), Some(1), &ts(30));
    assert_eq!(third[0].last_transition_time, ts(30));
    assert_eq!(third[1].last_transition_time, ts(10), "Degraded did not transition");
}

#[test]
fn recomputing_an_unchanged_status_yields_an_identical_status() {
    let p = pool();
    let pods = [pool_pod("b", true), pool_pod("a", true)];
    let f = Findings { ready: 2, total: 2, ..Findings::default() };
    let s1 = status(&p, None, members(&p, &pods), &f, &ts(10));
    let s2 = status(&p, Some(&s1), members(&p, &pods), &f, &ts(99));
    assert_eq!(s1, s2);
    assert_eq!(s2.ready_members, 2);
    assert_eq!(s2.total_members, 2);
    assert_eq!(s2.observed_generation, Some(3));
    assert_eq!(s2.service_name.as_deref(), Some("cart"));
}

#[test]
fn a_status_is_computed_as_the_api_server_keeps_it() {
    let p = pool();
    let now = Time(jiff::Timestamp::from_millisecond(10_700).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    let s = status(
        &p,
        None,
        members(&p, &[pool_pod("a", true)]),
        &Findings { ready: 1, total: 1, ..Findings::default() },
        &now,
    );
    let read_back: ServerPoolStatus = serde_json::from_value(json!(s)).expect("a status");
    assert_eq!(read_back, s, "transition times to the second");
}

#[test]
fn the_status_last_written_stands_until_the_cache_shows_it_for_that_pool_only() {
    let mut p = pool();
    let cached = status(&p, None, Vec::new(), &Findings::default(), &ts(1));
    p.status = Some(cached.clone());
    let pods = [pool_pod("a", true)];
    let newer =
        status(&p, Some(&cached), members(&p, &pods), &Findings { ready: 1, total: 1, ..Findings::default() }, &ts(2));
    let written = WrittenStatus { uid: p.metadata.uid.clone(), status: newer.clone() };
    assert_eq!(current_status(&p, Some(&written)), Some(&newer), "the cache is behind");
    assert_eq!(current_status(&p, None), Some(&cached));
    let mut made_again = p.clone();
    made_again.metadata.uid = Some("uid-cart-2".to_owned());
    assert_eq!(current_status(&made_again, Some(&written)), Some(&cached), "another pool of that name");
}

#[test]
fn injection_config_follows_the_server_version() {
    assert!(!InjectionConfig::for_minor(String::new(), 28).native_sidecars);
    assert!(InjectionConfig::for_minor(String::new(), 29).native_sidecars);
    assert!(!InjectionConfig::for_minor(String::new(), 29).sleep_action);
    assert!(InjectionConfig::for_minor(String::new(), 30).sleep_action);
}

#[test]
fn apply_errors_make_the_pool_unready_and_degraded() {
    let f = Findings {
        apply_errors: vec!["apply Service shop/cart: forbidden".to_owned()],
        ready: 2,
        total: 2,
        ..Findings::default()
    };
    let v = condition_values(&f);
    assert_eq!((v[0].status, v[0].reason), (false, "ReconcileFailed"));
    assert_eq!((v[1].status, v[1].reason), (true, "ReconcileFailed"));
}

#[test]
fn events_fire_once_per_transition_not_per_reconcile() {
    let ok = Findings { ready: 1, total: 1, ..Findings::default() };
    let bad = Findings {
        spec_problems: vec![SpecProblem { field: "spec.appPort", message: "clash".to_owned() }],
        ..Findings::default()
    };
    let c_ok = settle_conditions(&[], &condition_values(&ok), Some(1), &ts(1));
    assert_eq!(condition_events(&[], &c_ok), []);
    let c_bad = settle_conditions(&c_ok, &condition_values(&bad), Some(2), &ts(2));
    let events = condition_events(&c_ok, &c_bad);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].warning);
    assert_eq!(events[0].reason, "InvalidSpec");
    assert_eq!(events[0].note, "spec.appPort: clash");
    // The same problem again: no new Event.
    assert_eq!(condition_events(&c_bad, &c_bad), []);
    // Fixed: one Normal Recovered.
    let c_fixed = settle_conditions(&c_bad, &condition_values(&ok), Some(3), &ts(3));
    let events = condition_events(&c_bad, &c_fixed);
    assert_eq!(
        events,
        [PoolEvent { warning: false, reason: "Recovered".to_owned(), note: "no problem found".to_owned() }]
    );
}

#[test]
fn the_network_policy_lets_the_pools_pods_reach_each_others_sidecar_and_admin_port() {
    let p = pool();
    let np = network_policy(&p);
    assert_eq!(np.metadata.name.as_deref(), Some("cart-handover"));
    assert_eq!(np.metadata.namespace.as_deref(), Some("shop"));
    assert!(np.metadata.owner_references.as_ref().is_some_and(|o| o[0].controller == Some(true)), "owned: GC'd");
    let spec = np.spec.expect("spec");
    let pods = LabelSelector { match_labels: Some(selector(&p)), match_expressions: None };
    assert_eq!(spec.pod_selector.as_ref(), Some(&pods));
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
    let rules = spec.ingress.expect("ingress rules");
    let ports = |r: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| -> Vec<IntOrString> {
        r.ports.iter().flatten().filter_map(|p| p.port.clone()).collect()
    };
    assert_eq!(rules.len(), 2, "peers, then everyone else (unset `from`)");
    let named = [IntOrString::String("handover".to_owned()), IntOrString::String("handover-admin".to_owned())];
    assert_eq!(ports(&rules[0]), named, "each pod's own ports, by the names the injected sidecar gives them");
    assert_eq!(rules[0].from.as_ref().and_then(|f| f[0].pod_selector.clone()), Some(pods));
    assert!(rules[1].from.is_none(), "unset `from`: the Service's clients still get through");
    assert_eq!(ports(&rules[1]), named);
}

#[test]
fn the_network_policy_admits_only_the_named_clients_besides_the_peers() {
    use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
    let mut p = pool();
    p.spec.sidecar_port = 7000;
    let ingress = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), "ingress".to_owned())])),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    p.spec.network_policy.from = Some(vec![ingress.clone()]);
    let rules = network_policy(&p).spec.and_then(|s| s.ingress).expect("rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1].from.as_deref(), Some(&[ingress][..]));
    assert_eq!(
        rules[0].ports.as_ref().and_then(|p| p[0].port.clone()),
        Some(IntOrString::String("handover".to_owned()))
    );
    p.spec.network_policy.from = Some(Vec::new());
    let rules = network_policy(&p).spec.and_then(|s| s.ingress).expect("rules");
    assert_eq!(rules.len(), 1, "an empty list: the pool's pods only");
}

#[test]
fn an_app_container_with_a_prestop_of_its_own_keeps_it_and_tokens_differ_per_deployment() {
    use k8s_openapi::api::core::v1::{ExecAction, Lifecycle, LifecycleHandler};
    let mut d = deployment("web", Some("cart"), &[]);
    if let Some(s) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        let mut own = s.containers[0].clone();
        own.name = "worker".to_owned();
        own.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction { command: Some(vec!["/bin/flush".to_owned()]) }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        s.containers.push(own);
    }
    let hooks = drain_hooks(&pool(), &d, "t");
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["name"], "app", "worker keeps its own preStop: {hooks:?}");
    let other = deployment("api", Some("cart"), &[]);
    assert_ne!(drain_token(&pool(), &d), drain_token(&pool(), &other));
    assert_eq!(drain_token(&pool(), &d), drain_token(&pool(), &d.clone()), "stable: no rollout by itself");
}
