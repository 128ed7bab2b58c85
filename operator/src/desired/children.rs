//! The objects a pool owns: its Service, key Secret, Role, RoleBinding and NetworkPolicy.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use super::injection::{ADMIN_PORT_NAME, DATA_PORT_NAME};
use super::names::{
    MANAGED_BY, default_key_secret_name, key_secret_name, network_policy_name, pool_name, pool_namespace, rbac_name,
    selector, service_name,
};
use crate::crd::{POOL_LABEL, ServerPool};
use crate::keys::{KeyRing, SECRET_KEY};

fn meta(pool: &ServerPool, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(pool_namespace(pool)),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (POOL_LABEL.to_owned(), pool_name(pool)),
        ])),
        owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The pool's Service: `<pool>:<port>` to the sidecars' data port, by its name: each pod's own
/// (while a change of `sidecarPort` rolls out, the old pods still listen on the old one).
pub fn service(pool: &ServerPool) -> Service {
    Service {
        metadata: meta(pool, service_name(pool)),
        spec: Some(ServiceSpec {
            selector: Some(selector(pool)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: pool.spec.port,
                target_port: Some(IntOrString::String(DATA_PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("http".to_owned()),
                ..ServicePort::default()
            }]),
            type_: Some(format!("{:?}", pool.spec.service.type_)),
            session_affinity: Some(format!("{:?}", pool.spec.service.session_affinity)),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Why an existing Secret must not serve as the pool's key Secret, if it must not.
///
/// The key Secret is mounted into every pod the pool injects and rotated by the operator, so a
/// pool's author must not be able to point `spec.keySecretName` at any Secret of the namespace
/// (database credentials, a TLS key) and have it mounted into a sidecar. The operator uses a
/// Secret it created for this pool (it carries the `managed-by` label and this pool's name in
/// `handover.dev/pool`: another pool's keys are not this one's to mount, nor to rotate on its
/// schedule), or one under the default name `<pool>-handover-keys`, which no other Secret is
/// expected to have.
pub fn key_secret_refusal(pool: &ServerPool, secret: &ObjectMeta) -> Option<String> {
    let name = secret.name.clone().unwrap_or_default();
    let label = |key: &str| secret.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str);
    let this_pool = pool_name(pool);
    if name == default_key_secret_name(pool)
        || (label(MANAGED_BY.0) == Some(MANAGED_BY.1) && label(POOL_LABEL) == Some(this_pool.as_str()))
    {
        return None;
    }
    Some(format!(
        "Secret {name} (spec.keySecretName) was not created by the operator for this pool: it lacks the labels {}={} and {POOL_LABEL}={this_pool}, and is not the default {}. The operator mounts no other Secret, another pool's keys included: label it (if it is meant to hold this pool's keys), or name a Secret that does not exist yet (the operator creates it). No Deployment is injected until then",
        MANAGED_BY.0,
        MANAGED_BY.1,
        default_key_secret_name(pool),
    ))
}

/// A new key Secret holding `ring`.
pub fn key_secret(pool: &ServerPool, ring: &KeyRing) -> Secret {
    Secret {
        metadata: meta(pool, key_secret_name(pool)),
        data: Some(BTreeMap::from([(SECRET_KEY.to_owned(), ByteString(ring.render().into_bytes()))])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// The Role of the pool's sidecars: read their own ServerPool (the registry), and patch pod status
/// (each sidecar writes the condition `handover.dev/PeersReachable` on its own pod; RBAC cannot
/// name pods that do not exist yet, so the rule covers the namespace's pods).
pub fn role(pool: &ServerPool) -> Role {
    Role {
        metadata: meta(pool, rbac_name(pool)),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![crate::crd::GROUP.to_owned()]),
                resources: Some(vec!["serverpools".to_owned()]),
                resource_names: Some(vec![pool_name(pool)]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods/status".to_owned()]),
                verbs: vec!["patch".to_owned()],
                ..PolicyRule::default()
            },
        ]),
    }
}

/// The RoleBinding of [`role`] to the pool's ServiceAccounts (sorted, deduplicated).
pub fn role_binding(pool: &ServerPool, service_accounts: &BTreeSet<String>) -> RoleBinding {
    let namespace = pool_namespace(pool);
    RoleBinding {
        metadata: meta(pool, rbac_name(pool)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: rbac_name(pool),
        },
        subjects: Some(
            service_accounts
                .iter()
                .map(|sa| Subject {
                    kind: "ServiceAccount".to_owned(),
                    name: sa.clone(),
                    namespace: Some(namespace.clone()),
                    ..Subject::default()
                })
                .collect(),
        ),
    }
}

/// The ServiceAccounts of the pool's pods and of the Deployments it injects.
pub fn service_accounts<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    deployments: impl IntoIterator<Item = &'a Deployment>,
) -> BTreeSet<String> {
    fn name(sa: Option<&String>) -> String {
        sa.filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| "default".to_owned())
    }
    let mut out = BTreeSet::new();
    for pod in pods {
        out.insert(name(pod.spec.as_ref().and_then(|s| s.service_account_name.as_ref())));
    }
    for d in deployments {
        out.insert(name(
            d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.service_account_name.as_ref()),
        ));
    }
    out
}

/// The NetworkPolicy letting the pool's pods reach each other's sidecar: `sidecarPort` (forwards)
/// and `adminPort` (the liveness probe a forward that failed is followed by), from the pool's own
/// pods and from `spec.networkPolicy.from` (unset: anyone; the policy isolates the pods, so
/// without this rule the Service's clients would be cut off too).
///
/// Network policies are additive: under a namespace's default-deny this one is what lets the
/// forwards through; in a namespace without any, it limits the pool's pods to these two ports.
/// The ports by their names: each pod's own, while a change of the pool's ports rolls out.
pub fn network_policy(pool: &ServerPool) -> NetworkPolicy {
    let ports = || {
        Some(
            [DATA_PORT_NAME, ADMIN_PORT_NAME]
                .into_iter()
                .map(|name| NetworkPolicyPort {
                    port: Some(IntOrString::String(name.to_owned())),
                    protocol: Some("TCP".to_owned()),
                    end_port: None,
                })
                .collect(),
        )
    };
    let pods = LabelSelector { match_labels: Some(selector(pool)), match_expressions: None };
    let peers = NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer { pod_selector: Some(pods.clone()), ..NetworkPolicyPeer::default() }]),
        ports: ports(),
    };
    let others = match &pool.spec.network_policy.from {
        // Anyone: a rule without `from`.
        None => Some(NetworkPolicyIngressRule { from: None, ports: ports() }),
        Some(from) if from.is_empty() => None,
        Some(from) => Some(NetworkPolicyIngressRule { from: Some(from.clone()), ports: ports() }),
    };
    NetworkPolicy {
        metadata: meta(pool, network_policy_name(pool)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(std::iter::once(peers).chain(others).collect()),
            egress: None,
        }),
    }
}
