//! The pool's members, from its pods.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::injection::sidecar_ports;
use super::names::{pool_name, pool_namespace, selector, selects};
use crate::crd::{Member, POOL_LABEL, ServerPool};

/// Whether the pod is ready to serve: Ready condition true, an IP, not terminating.
fn pod_ready(pod: &Pod) -> bool {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let has_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some_and(|ip| !ip.is_empty());
    ready && has_ip && pod.metadata.deletion_timestamp.is_none()
}

fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pods of `pool` among `pods` (any namespace): same namespace, selected, carrying this
/// pool's sidecar (the label its injection gives the pod template: a custom selector may also
/// match pods that run none, whose sidecar-less port peers would forward sessions to), not
/// finished.
pub fn pool_pods<'a>(pool: &ServerPool, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a Pod> {
    let namespace = pool_namespace(pool);
    let selector = selector(pool);
    let name = pool_name(pool);
    pods.into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| selects(&selector, p.labels()))
        .filter(|p| p.labels().get(POOL_LABEL) == Some(&name))
        .filter(|p| !pod_finished(p))
        .collect()
}

/// The pods of `pool` among `pods` (any namespace), as members sorted by pod name, each with the
/// ports its own sidecar listens on (see [`sidecar_ports`]).
pub fn members<'a>(pool: &ServerPool, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<Member> {
    let mut out: Vec<Member> = pool_pods(pool, pods)
        .into_iter()
        .filter_map(|p| {
            let ready_since = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.clone());
            let ports = p.spec.as_ref().map(sidecar_ports).unwrap_or_default();
            Some(Member {
                pod: p.metadata.name.clone()?,
                uid: p.metadata.uid.clone()?,
                ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
                ready: pod_ready(p),
                since: ready_since.or_else(|| p.metadata.creation_timestamp.clone()),
                sidecar_port: ports.data,
                admin_port: ports.admin,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod).then_with(|| a.uid.cmp(&b.uid)));
    out
}

/// The pod condition each sidecar writes on its own pod (the sidecar's `peer_health`): `False`
/// while it lately could not reach some of its peers.
pub const PEER_CONDITION: &str = "handover.dev/PeersReachable";

/// The pool's pods (among `pods`, as [`pool_pods`] gives them) whose sidecar reports that it
/// cannot reach some peers: `pod: message`, sorted by pod name. Terminating pods are left out
/// (their peers are leaving them, not the other way round).
pub fn peers_unreachable<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<String> {
    let mut out: Vec<(String, String)> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let c = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == PEER_CONDITION))
                .filter(|c| c.status == "False")?;
            Some((p.metadata.name.clone()?, c.message.clone().unwrap_or_default()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(pod, message)| format!("{pod}: {message}")).collect()
}

/// How membership changed between two member lists, for Events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipChange {
    /// Pods that became ready members (joined, or became ready).
    pub ready: Vec<String>,
    /// Pods that stopped being ready members (left, or became unready).
    pub unready: Vec<String>,
}

impl MembershipChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.unready.is_empty()
    }
}

/// Which pods entered or left the set of ready members.
pub fn membership_change(before: &[Member], after: &[Member]) -> MembershipChange {
    let ready = |ms: &[Member]| -> BTreeSet<(String, String)> {
        ms.iter().filter(|m| m.ready).map(|m| (m.pod.clone(), m.uid.clone())).collect()
    };
    let (b, a) = (ready(before), ready(after));
    MembershipChange {
        ready: a.difference(&b).map(|(p, _)| p.clone()).collect(),
        unready: b.difference(&a).map(|(p, _)| p.clone()).collect(),
    }
}
