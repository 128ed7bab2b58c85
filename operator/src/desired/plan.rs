//! The plan of one reconcile: a pure function of the pool and what the operator observed (its
//! caches, and what it remembers having written), carried out by `controller::execute`.
//!
//! The plan names every child object the pool needs and whether it must be written: a child the
//! operator applied itself, with the same content, and that nobody changed since (its
//! resourceVersion in the owned-object cache is still the one the apply returned) is left alone.
//! So is the key Secret while nothing about it can have changed. A pod's readiness change then
//! costs one API call: the status write the sidecars route on.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use serde::Serialize;

use super::children::{network_policy, role, role_binding, service, service_accounts};
use super::injection::{
    DeploymentPlan, InjectionConfig, SIDECAR_NAME, fnv1a, leftover_note, plan_deployments, requested_pool,
};
use super::members::{members, peers_unreachable, pool_pods};
use super::names::{
    ROTATE_ANNOTATION, key_secret_name, network_policy_name, pool_name, pool_namespace, rbac_name, service_name,
};
use crate::crd::{Member, ServerPool};
use crate::validate::{self, ImageAllowList, SpecProblem};

/// How long the operator trusts what it last read of a key Secret: it has no watch on Secrets
/// (it reads them by name only), so a Secret deleted or edited by hand is noticed within this
/// time, or at once on any change of the pool's spec or rotation annotation.
pub const KEY_RECHECK: Duration = Duration::from_secs(300);

/// Which child object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildKey {
    /// `Service`, `Role`, `RoleBinding`, `NetworkPolicy`.
    pub kind: &'static str,
    /// Its namespace (the pool's).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the operator remembers of a child it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// [`fingerprint`] of the body it applied.
    pub fingerprint: u64,
    /// The resourceVersion the API server answered with.
    pub resource_version: String,
}

/// A child object the pool needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// The pool's Service.
    Service(Box<Service>),
    /// The Role of the pool's sidecars.
    Role(Role),
    /// Its RoleBinding.
    RoleBinding(RoleBinding),
    /// The NetworkPolicy letting the pool's pods reach each other's sidecar.
    NetworkPolicy(Box<NetworkPolicy>),
}

/// One child and whether to write it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildStep {
    /// Which object.
    pub key: ChildKey,
    /// Its desired content.
    pub child: Child,
    /// [`fingerprint`] of that content.
    pub fingerprint: u64,
    /// Applied by the operator with this content, and unchanged since: nothing to write.
    pub unchanged: bool,
}

/// What the key Secret check found (the outcome of `controller::keys::ensure_keys`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyOutcome {
    /// What is wrong with the Secret, for the conditions.
    pub problem: Option<String>,
    /// The Secret is not one the operator may mount ([`super::key_secret_refusal`]).
    pub refused: bool,
    /// When the next rotation step is due (unix seconds).
    pub next_due: Option<i64>,
}

/// Everything of a pool that the key Secret check depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInputs {
    /// The Secret's name.
    pub secret: String,
    /// `spec.cookie.maxAge`.
    pub max_age: String,
    /// `spec.keyRotation.period`.
    pub period: Option<String>,
    /// The `handover.dev/rotate-keys` annotation.
    pub requested: Option<String>,
}

impl KeyInputs {
    /// The pool's key inputs.
    pub fn of(pool: &ServerPool) -> Self {
        Self {
            secret: key_secret_name(pool),
            max_age: pool.spec.cookie.max_age.clone(),
            period: pool.spec.key_rotation.period.clone(),
            requested: pool.annotations().get(ROTATE_ANNOTATION).cloned(),
        }
    }
}

/// The last key Secret check of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    /// What it depended on.
    pub inputs: KeyInputs,
    /// When (unix seconds).
    pub at: i64,
    /// What it found.
    pub outcome: KeyOutcome,
}

/// What to do about the key Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStep {
    /// Nothing (the spec is invalid: nothing that exists is touched).
    Skip,
    /// Read it (create it if absent, rotate it if due).
    Check,
    /// The last check still holds.
    Reuse(KeyOutcome),
}

/// Whether the last key check still holds at `now`: same inputs, recent, nothing due, no problem
/// (a problem is re-checked every time, so that a repaired Secret is seen at once).
pub fn key_step(pool: &ServerPool, last: Option<&KeyCheck>, now: i64) -> KeyStep {
    let Some(last) = last else { return KeyStep::Check };
    let recheck = i64::try_from(KEY_RECHECK.as_secs()).unwrap_or(i64::MAX);
    let fresh = now >= last.at && now < last.at.saturating_add(recheck);
    let due = last.outcome.next_due.is_some_and(|due| now >= due);
    if last.inputs == KeyInputs::of(pool) && fresh && !due && last.outcome.problem.is_none() {
        KeyStep::Reuse(last.outcome.clone())
    } else {
        KeyStep::Check
    }
}

/// What the reconciler observed, besides the pool itself.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Pods of the cache (any namespace).
    pub pods: &'a [&'a Pod],
    /// Deployments of the cache (any namespace).
    pub deployments: &'a [&'a Deployment],
    /// ServerPools of the cache (any namespace).
    pub pools: &'a [&'a ServerPool],
    /// The resourceVersion of each child the owned-object caches hold.
    pub children: &'a BTreeMap<ChildKey, String>,
    /// What the operator remembers having applied.
    pub applied: &'a BTreeMap<ChildKey, Applied>,
    /// The pool's last key Secret check.
    pub last_key_check: Option<&'a KeyCheck>,
    /// Now, unix seconds.
    pub now: i64,
}

/// Operator settings the plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// How to inject.
    pub inject: &'a InjectionConfig,
    /// Which sidecar images a pool may choose.
    pub allowed_images: &'a ImageAllowList,
}

/// One reconcile of one pool, decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Problems of the spec; when there is any, nothing that exists is touched.
    pub spec_problems: Vec<SpecProblem>,
    /// Service, Role, RoleBinding and (unless disabled) NetworkPolicy, in that order.
    pub children: Vec<ChildStep>,
    /// Children to delete: the NetworkPolicy once `spec.networkPolicy.enabled` is false.
    pub remove: Vec<ChildKey>,
    /// The key Secret.
    pub keys: KeyStep,
    /// Deployments to inject or clean (the current ones and the conflicts are left out).
    pub deployments: Vec<DeploymentPlan>,
    /// Deployments that ask for the pool but are not injected, or keep an injection the operator
    /// cannot remove, with the reason.
    pub deployment_problems: Vec<String>,
    /// The pool's members, sorted.
    pub members: Vec<Member>,
    /// The pool's pods whose sidecar reports peers it cannot reach ([`peers_unreachable`]).
    pub peers_unreachable: Vec<String>,
}

/// 64-bit FNV-1a of the JSON of `value`: what the operator applied, to compare with what it
/// wants now. Stable across Rust versions; no secret goes through it.
pub fn fingerprint(value: &impl Serialize) -> u64 {
    fnv1a(&serde_json::to_vec(value).unwrap_or_default())
}

fn child_step(key: ChildKey, child: Child, observed: &Observed<'_>) -> ChildStep {
    let fingerprint = match &child {
        Child::Service(s) => fingerprint(s),
        Child::Role(r) => fingerprint(r),
        Child::RoleBinding(b) => fingerprint(b),
        Child::NetworkPolicy(n) => fingerprint(n),
    };
    let unchanged = observed
        .applied
        .get(&key)
        .is_some_and(|a| a.fingerprint == fingerprint && observed.children.get(&key) == Some(&a.resource_version));
    ChildStep { key, child, fingerprint, unchanged }
}

/// The keys of the pool's Service, Role, RoleBinding and NetworkPolicy.
pub fn child_keys(pool: &ServerPool) -> [ChildKey; 4] {
    let key = |kind: &'static str, name: String| ChildKey { kind, namespace: pool_namespace(pool), name };
    [
        key("Service", service_name(pool)),
        key("Role", rbac_name(pool)),
        key("RoleBinding", rbac_name(pool)),
        key("NetworkPolicy", network_policy_name(pool)),
    ]
}

/// The plan of a reconcile of `pool` (not being deleted).
pub fn plan(pool: &ServerPool, observed: &Observed<'_>, policy: &Policy<'_>) -> Plan {
    let ns = pool_namespace(pool);
    let name = pool_name(pool);
    let pool_pods = pool_pods(pool, observed.pods.iter().copied());
    let members = members(pool, pool_pods.iter().copied());
    let peers_unreachable = peers_unreachable(pool_pods.iter().copied());
    let spec_problems = validate::validate(pool, &policy.inject.default_image, policy.allowed_images);
    if !spec_problems.is_empty() {
        return Plan {
            spec_problems,
            children: Vec::new(),
            remove: Vec::new(),
            keys: KeyStep::Skip,
            deployments: Vec::new(),
            deployment_problems: Vec::new(),
            members,
            peers_unreachable,
        };
    }
    let requested: Vec<&Deployment> = observed
        .deployments
        .iter()
        .copied()
        .filter(|d| d.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|d| requested_pool(d) == Some(name.as_str()))
        .collect();
    let accounts = service_accounts(pool_pods.iter().copied(), requested);
    let [service_key, role_key, binding_key, policy_key] = child_keys(pool);
    let mut children = vec![
        child_step(service_key, Child::Service(Box::new(service(pool))), observed),
        child_step(role_key, Child::Role(role(pool)), observed),
        child_step(binding_key, Child::RoleBinding(role_binding(pool, &accounts)), observed),
    ];
    let mut remove = Vec::new();
    if pool.spec.network_policy.enabled {
        children.push(child_step(policy_key, Child::NetworkPolicy(Box::new(network_policy(pool))), observed));
    } else if observed.children.contains_key(&policy_key) || observed.applied.contains_key(&policy_key) {
        // Opted out: the one the operator made goes (the owned cache lists only those it labelled).
        remove.push(policy_key);
    }
    let mut deployments = Vec::new();
    let mut deployment_problems = Vec::new();
    for d in plan_deployments(pool, observed.deployments.iter().copied(), observed.pools, policy.inject) {
        match d {
            DeploymentPlan::Conflict { name: d, others } => deployment_problems.push(format!(
                "Deployment {d} asks for this pool but its pods are also selected by pool(s) {}: not injected",
                others.join(", ")
            )),
            DeploymentPlan::ForeignSidecar { name: d } => deployment_problems.push(format!(
                "Deployment {d} already has a container named {SIDECAR_NAME} that the operator did not inject: not injected"
            )),
            DeploymentPlan::PortTaken { name: d, container, port } => deployment_problems.push(format!(
                "Deployment {d}: its container {container} declares port {port}, which the sidecar listens on (spec.sidecarPort, spec.adminPort): not injected; give the pool other ports"
            )),
            DeploymentPlan::Leftover { name: d, fields } => deployment_problems
                .push(format!("Deployment {d} no longer asks for this pool, but {}", leftover_note(&fields))),
            DeploymentPlan::Injected { .. } => {}
            change @ (DeploymentPlan::Inject { .. } | DeploymentPlan::Remove { .. }) => deployments.push(change),
        }
    }
    Plan {
        spec_problems,
        children,
        remove,
        keys: key_step(pool, observed.last_key_check, observed.now),
        deployments,
        deployment_problems,
        members,
        peers_unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{POOL_LABEL, ServerPoolSpec};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const NOW: i64 = 1_800_000_000;

    fn pool() -> ServerPool {
        let mut p = ServerPool::new("cart", ServerPoolSpec::with_app_port(8080));
        p.metadata.namespace = Some("shop".to_owned());
        p.metadata.uid = Some("uid-cart".to_owned());
        p
    }

    fn pod(name: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("shop".to_owned()),
                uid: Some(format!("uid-{name}")),
                labels: Some([(POOL_LABEL.to_owned(), "cart".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.7".to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn policy_parts() -> (InjectionConfig, ImageAllowList) {
        let inject = InjectionConfig::for_minor("registry.example/handover:1".to_owned(), 34);
        let allowed = ImageAllowList::new(Vec::new(), &inject.default_image);
        (inject, allowed)
    }

    /// The plan of `pool` with `pods`, given what the operator remembers and the caches show.
    fn plan_with(
        pool: &ServerPool,
        pods: &[Pod],
        children: &BTreeMap<ChildKey, String>,
        applied: &BTreeMap<ChildKey, Applied>,
        last_key_check: Option<&KeyCheck>,
    ) -> Plan {
        let (inject, allowed_images) = policy_parts();
        let pods: Vec<&Pod> = pods.iter().collect();
        let pools = [pool];
        let observed =
            Observed { pods: &pods, deployments: &[], pools: &pools, children, applied, last_key_check, now: NOW };
        plan(pool, &observed, &Policy { inject: &inject, allowed_images: &allowed_images })
    }

    /// What the operator remembers, and the caches show, after applying every child of `plan`.
    fn after_applying(plan: &Plan) -> (BTreeMap<ChildKey, String>, BTreeMap<ChildKey, Applied>) {
        let mut children = BTreeMap::new();
        let mut applied = BTreeMap::new();
        for (i, step) in plan.children.iter().enumerate() {
            let version = format!("{}", 100 + i);
            children.insert(step.key.clone(), version.clone());
            applied.insert(step.key.clone(), Applied { fingerprint: step.fingerprint, resource_version: version });
        }
        (children, applied)
    }

    fn key_check(pool: &ServerPool, at: i64, outcome: KeyOutcome) -> KeyCheck {
        KeyCheck { inputs: KeyInputs::of(pool), at, outcome }
    }

    fn to_write(plan: &Plan) -> Vec<&'static str> {
        plan.children.iter().filter(|c| !c.unchanged).map(|c| c.key.kind).collect()
    }

    #[test]
    fn a_new_pool_writes_every_child_and_checks_its_keys() {
        let p = plan_with(&pool(), &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        assert_eq!(to_write(&p), ["Service", "Role", "RoleBinding", "NetworkPolicy"]);
        assert!(p.remove.is_empty());
        assert_eq!(p.keys, KeyStep::Check);
        assert_eq!(p.members.len(), 1);
    }

    #[test]
    fn a_readiness_change_writes_no_child_and_reads_no_secret() {
        let pool = pool();
        let first = plan_with(&pool, &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        let (children, applied) = after_applying(&first);
        let keys = key_check(&pool, NOW - 10, KeyOutcome::default());
        let flipped = plan_with(&pool, &[pod("a", false)], &children, &applied, Some(&keys));
        assert_eq!(to_write(&flipped), [""; 0]);
        assert_eq!(flipped.keys, KeyStep::Reuse(KeyOutcome::default()));
        assert!(!flipped.members[0].ready, "the status still follows the pod");
    }

    #[test]
    fn a_child_changed_by_someone_else_or_by_the_spec_is_written_again() {
        let pool = pool();
        let first = plan_with(&pool, &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        let (mut children, applied) = after_applying(&first);
        let role = first.children[1].key.clone();
        children.insert(role.clone(), "999".to_owned());
        let edited = plan_with(&pool, &[pod("a", true)], &children, &applied, None);
        assert_eq!(to_write(&edited), ["Role"], "someone edited the Role");
        children.remove(&role);
        let deleted = plan_with(&pool, &[pod("a", true)], &children, &applied, None);
        assert_eq!(to_write(&deleted), ["Role"], "someone deleted the Role");

        let (children, applied) = after_applying(&first);
        let mut moved = pool.clone();
        moved.spec.port = 8081;
        let changed = plan_with(&moved, &[pod("a", true)], &children, &applied, None);
        assert_eq!(to_write(&changed), ["Service"], "the Service follows spec.port");
    }

    #[test]
    fn a_new_service_account_rewrites_the_role_binding_only() {
        let pool = pool();
        let first = plan_with(&pool, &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        let (children, applied) = after_applying(&first);
        let mut other = pod("b", true);
        other.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("web".to_owned()),
            ..Default::default()
        });
        let next = plan_with(&pool, &[pod("a", true), other], &children, &applied, None);
        assert_eq!(to_write(&next), ["RoleBinding"]);
    }

    #[test]
    fn the_key_secret_is_read_again_when_anything_about_it_may_have_changed() {
        let pool = pool();
        let ok = KeyOutcome { problem: None, refused: false, next_due: Some(NOW + 60) };
        assert_eq!(key_step(&pool, None, NOW), KeyStep::Check, "never read");
        assert_eq!(key_step(&pool, Some(&key_check(&pool, NOW - 5, ok.clone())), NOW), KeyStep::Reuse(ok.clone()));
        let old = i64::try_from(KEY_RECHECK.as_secs()).expect("small");
        assert_eq!(key_step(&pool, Some(&key_check(&pool, NOW - old, ok.clone())), NOW), KeyStep::Check, "stale");
        let due = KeyOutcome { next_due: Some(NOW), ..ok.clone() };
        assert_eq!(key_step(&pool, Some(&key_check(&pool, NOW - 5, due)), NOW), KeyStep::Check, "rotation due");
        let broken = KeyOutcome { problem: Some("no `keys`".to_owned()), ..ok.clone() };
        assert_eq!(key_step(&pool, Some(&key_check(&pool, NOW - 5, broken)), NOW), KeyStep::Check, "a problem");
        let mut asked = pool.clone();
        asked.annotations_mut().insert(ROTATE_ANNOTATION.to_owned(), "now".to_owned());
        assert_eq!(key_step(&asked, Some(&key_check(&pool, NOW - 5, ok.clone())), NOW), KeyStep::Check, "rotate-keys");
        let mut renamed = pool.clone();
        renamed.spec.key_secret_name = Some("cart-keys".to_owned());
        assert_eq!(key_step(&renamed, Some(&key_check(&pool, NOW - 5, ok.clone())), NOW), KeyStep::Check, "renamed");
        assert_eq!(key_step(&pool, Some(&key_check(&pool, NOW + 5, ok)), NOW), KeyStep::Check, "clock went back");
    }

    #[test]
    fn opting_out_of_the_network_policy_deletes_the_one_the_operator_made_and_nothing_else() {
        let pool = pool();
        let first = plan_with(&pool, &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        let (children, applied) = after_applying(&first);
        let mut off = pool.clone();
        off.spec.network_policy.enabled = false;
        let next = plan_with(&off, &[pod("a", true)], &children, &applied, None);
        assert_eq!(to_write(&next), [""; 0]);
        assert_eq!(next.remove.iter().map(|k| k.kind).collect::<Vec<_>>(), ["NetworkPolicy"]);
        assert_eq!(next.remove[0].name, "cart-handover");
        let never = plan_with(&off, &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        assert!(never.remove.is_empty(), "none was made: nothing to delete");
        assert_eq!(to_write(&never), ["Service", "Role", "RoleBinding"]);
    }

    #[test]
    fn an_invalid_spec_plans_no_write_but_still_the_members() {
        let mut bad = pool();
        bad.spec.sidecar.image = Some("evil.example/x:1".to_owned());
        let p = plan_with(&bad, &[pod("a", true)], &BTreeMap::new(), &BTreeMap::new(), None);
        assert_eq!(p.spec_problems.len(), 1);
        assert!(p.children.is_empty() && p.deployments.is_empty());
        assert_eq!(p.keys, KeyStep::Skip);
        assert_eq!(p.members.len(), 1);
    }
}
