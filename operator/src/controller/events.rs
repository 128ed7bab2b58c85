//! Events on pools and Deployments.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::Context;
use crate::crd::{ServerPool, ServerPoolStatus};
use crate::desired;

pub(super) async fn publish(ctx: &Context, reference: &ObjectReference, warning: bool, reason: &str, note: String) {
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

/// One Event per pod that joined or left the ready members, related to the pod: the Recorder
/// aggregates repeated Events by (reason, regarding, related), so each pod keeps its own series.
pub(super) async fn publish_membership(
    ctx: &Context,
    pool: &ServerPool,
    before: &ServerPoolStatus,
    after: &ServerPoolStatus,
) {
    let ns = desired::pool_namespace(pool);
    let name = desired::pool_name(pool);
    let reference = pool.object_ref(&());
    let change = desired::membership_change(&before.members, &after.members);
    let uid_of =
        |pod: &str| after.members.iter().chain(before.members.iter()).find(|m| m.pod == pod).map(|m| m.uid.clone());
    for (joined, pods) in [(true, &change.ready), (false, &change.unready)] {
        for pod in pods {
            let related = ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.clone()),
                namespace: Some(ns.clone()),
                uid: uid_of(pod),
                ..ObjectReference::default()
            };
            let (reason, verb) = if joined { ("MemberReady", "joined") } else { ("MemberLeft", "left") };
            tracing::info!(pool = %name, namespace = %ns, pod = %pod, ready = after.ready_members, "member {verb}");
            let event = Event {
                type_: EventType::Normal,
                reason: reason.to_owned(),
                note: Some(format!(
                    "pod {pod} {verb} the ready members ({} of {} ready)",
                    after.ready_members, after.total_members
                )),
                action: "Registry".to_owned(),
                secondary: Some(related),
            };
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish an Event");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_notes_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(600), 1000);
        assert!(s.len() <= 1000);
        assert_eq!(truncate("short".into(), 1000), "short");
    }
}
