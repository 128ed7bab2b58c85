//! The pool's status: the problems found, the conditions and Events they make, the members.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use super::names::service_name;
use crate::crd::{Member, ServerPool, ServerPoolStatus};
use crate::validate::SpecProblem;

/// Everything that decides the pool's conditions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    /// Problems of the spec.
    pub spec_problems: Vec<SpecProblem>,
    /// What is wrong with the key Secret, if anything.
    pub key_problem: Option<String>,
    /// Deployments that could not be injected, or keep an injection the operator cannot remove,
    /// with the reason.
    pub deployment_problems: Vec<String>,
    /// Child objects the API server refused, with its answer.
    pub apply_errors: Vec<String>,
    /// Pods whose sidecar reports peers it cannot reach (`pod: message`).
    pub peers_unreachable: Vec<String>,
    /// Ready members.
    pub ready: i32,
    /// All members.
    pub total: i32,
}

/// One condition before its transition time is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionValue {
    /// `Ready`, `Degraded`, `PeersReachable`.
    pub type_: &'static str,
    /// `True` / `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// For a person.
    pub message: String,
}

/// One problem of the pool, as both conditions report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason of the conditions it sets.
    pub reason: &'static str,
    /// For a person.
    pub message: String,
    /// Whether it makes the pool not `Ready` (every problem makes it `Degraded`).
    pub unready: bool,
}

/// The one table of the pool's problems, most important first: the first one is the reason of
/// `Degraded`, the first one that makes the pool unready the reason of `Ready=False`.
pub fn problems(f: &Findings) -> Vec<Problem> {
    let joined = |v: &[String]| (!v.is_empty()).then(|| v.join("; "));
    let spec: Vec<String> = f.spec_problems.iter().map(ToString::to_string).collect();
    [
        ("InvalidSpec", joined(&spec), true),
        ("KeySecretInvalid", f.key_problem.clone(), true),
        ("ReconcileFailed", joined(&f.apply_errors), true),
        ("DeploymentConflict", joined(&f.deployment_problems), false),
        // Advisory (a partition looks the same): the pool serves on, and says so.
        ("PeersUnreachable", peers_unreachable_message(&f.peers_unreachable), false),
    ]
    .into_iter()
    .filter_map(|(reason, message, unready)| message.map(|message| Problem { reason, message, unready }))
    .collect()
}

fn peers_unreachable_message(pods: &[String]) -> Option<String> {
    (!pods.is_empty()).then(|| {
        format!(
            "{} sidecar(s) could not reach some of their peers lately (forwards then wait or fail instead of reaching the owner; check NetworkPolicies and the mesh): {}",
            pods.len(),
            pods.join("; ")
        )
    })
}

/// The pool's conditions from the findings: `Ready`, `Degraded`, and `PeersReachable` (what the
/// pool's sidecars report of each other: advisory).
pub fn condition_values(f: &Findings) -> Vec<ConditionValue> {
    let problems = problems(f);
    let ready = match problems.iter().find(|p| p.unready) {
        Some(p) => ConditionValue { type_: "Ready", status: false, reason: p.reason, message: p.message.clone() },
        None if f.ready == 0 => ConditionValue {
            type_: "Ready",
            status: false,
            reason: "NoReadyMembers",
            message: format!("0 of {} members ready", f.total),
        },
        None => ConditionValue {
            type_: "Ready",
            status: true,
            reason: "MembersReady",
            message: format!("{} of {} members ready", f.ready, f.total),
        },
    };
    let degraded = match problems.first() {
        Some(p) => ConditionValue { type_: "Degraded", status: true, reason: p.reason, message: p.message.clone() },
        None => ConditionValue {
            type_: "Degraded",
            status: false,
            reason: "AsExpected",
            message: "no problem found".to_owned(),
        },
    };
    let peers = match peers_unreachable_message(&f.peers_unreachable) {
        Some(message) => ConditionValue { type_: "PeersReachable", status: false, reason: "PeersUnreachable", message },
        None => ConditionValue {
            type_: "PeersReachable",
            status: true,
            reason: "NoneReported",
            message: "no sidecar reports a peer it cannot reach".to_owned(),
        },
    };
    vec![ready, degraded, peers]
}

/// Kubernetes conditions from `values`, keeping each previous `lastTransitionTime` unless the
/// status really changed, so that re-computing an unchanged status yields identical objects. A
/// new transition time is `now` to the second, as the API server keeps it: the status computed
/// is the one read back.
pub fn settle_conditions(
    previous: &[Condition],
    values: &[ConditionValue],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let now = &Time(jiff::Timestamp::from_second(now.0.as_second()).unwrap_or(now.0));
    values
        .iter()
        .map(|v| {
            let status = if v.status { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: v.type_.to_owned(),
                status: status.to_owned(),
                reason: v.reason.to_owned(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// An Event to publish about the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For a person.
    pub note: String,
}

/// Events for conditions whose reason changed: a new problem is a Warning; a `Degraded` that
/// cleared is a Normal `Recovered`.
pub fn condition_events(previous: &[Condition], current: &[Condition]) -> Vec<PoolEvent> {
    let mut out = Vec::new();
    for c in current {
        let before = previous.iter().find(|p| p.type_ == c.type_);
        if before.is_some_and(|b| b.reason == c.reason && b.status == c.status) {
            continue;
        }
        let problem = (c.type_ == "Degraded" && c.status == "True")
            || (c.type_ == "Ready" && c.status == "False" && c.reason != "NoReadyMembers");
        if problem {
            // Degraded and Ready often share the reason: one Warning is enough.
            if !out.iter().any(|e: &PoolEvent| e.reason == c.reason) {
                out.push(PoolEvent { warning: true, reason: c.reason.clone(), note: c.message.clone() });
            }
        } else if c.type_ == "Degraded" && before.is_some_and(|b| b.status == "True") {
            out.push(PoolEvent { warning: false, reason: "Recovered".to_owned(), note: c.message.clone() });
        }
    }
    out
}

/// A status the operator wrote, kept until the pool cache shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenStatus {
    /// The pool's uid (a pool deleted and made again under its name starts afresh).
    pub uid: Option<String>,
    /// What was written.
    pub status: ServerPoolStatus,
}

/// The pool's status as it stands: the one the operator wrote last (`written`), until the cache
/// shows it; then the cached pool's. The pool cache follows a status write a moment later, and a
/// reconcile that runs at once (a pod changed during the last one) would otherwise take the status
/// before that write for the current one: write the same status again, and report its
/// transitions (Events, member changes) a second time.
pub fn current_status<'a>(pool: &'a ServerPool, written: Option<&'a WrittenStatus>) -> Option<&'a ServerPoolStatus> {
    match written {
        Some(w) if w.uid == pool.metadata.uid => Some(&w.status),
        _ => pool.status.as_ref(),
    }
}

/// The whole status, following on from `previous` (the status as it stands: [`current_status`]).
pub fn status(
    pool: &ServerPool,
    previous: Option<&ServerPoolStatus>,
    members: Vec<Member>,
    findings: &Findings,
    now: &Time,
) -> ServerPoolStatus {
    let previous = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = pool.meta().generation;
    ServerPoolStatus {
        observed_generation: generation,
        conditions: settle_conditions(previous, &condition_values(findings), generation, now),
        ready_members: i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(i32::MAX),
        total_members: i32::try_from(members.len()).unwrap_or(i32::MAX),
        members,
        service_name: Some(service_name(pool)),
    }
}
