//! Carries out a [`Plan`]: applies the children that changed, checks the key Secret when the plan
//! says so, injects or cleans Deployments, then writes the status if it changed and publishes the
//! Events. Every write goes through the leadership fence.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::events::{publish, publish_membership};
use super::keys::ensure_keys;
use super::{Context, RESYNC, fence};
use crate::crd::ServerPool;
use crate::desired::{self, Applied, Child, ChildStep, DeploymentPlan, Findings, KeyCheck, KeyInputs, KeyOutcome};
use crate::desired::{ChildKey, KeyStep, MANAGER, Plan, WrittenStatus};
use crate::error::Error;
use handover_common::sync::lock;

/// Server-side apply of a namespaced object with the operator's field manager; returns the
/// resourceVersion the API server answered with. Unless this replica applied it before (`known`),
/// an object of that name that exists without `obj`'s controller (the pool) among its owners is
/// not the pool's: it is left as it is ([`Error::NotOurs`]). A forced apply would take its fields,
/// and the garbage collector would delete it with the pool.
async fn ssa<K>(ctx: &Context, ns: &str, obj: &K, known: bool) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let existing = match known {
        true => None,
        false => api.get_opt(&name).await.map_err(Error::kube(format!("get {} {ns}/{name}", K::kind(&()))))?,
    };
    let controller = obj.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true));
    if let Some(existing) = existing {
        let mut owners = existing.meta().owner_references.iter().flatten();
        let owned = owners.clone().any(|o| controller.is_some_and(|c| c.uid == o.uid));
        // Made for a pool of this name and left without an owner (the pool deleted with
        // `--cascade=orphan`, or by a GitOps tool that orphans): the pool takes it back.
        let label = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str| {
            m.labels.as_ref().and_then(|l| l.get(key)).cloned()
        };
        let orphan_of_this_pool = !owners.any(|o| o.controller == Some(true))
            && label(existing.meta(), desired::MANAGED_BY.0).as_deref() == Some(desired::MANAGED_BY.1)
            && label(existing.meta(), crate::crd::POOL_LABEL)
                .is_some_and(|p| Some(p) == label(obj.meta(), crate::crd::POOL_LABEL));
        if !owned && !orphan_of_this_pool {
            return Err(Error::NotOurs { kind: K::kind(&()).into_owned(), namespace: ns.to_owned(), name });
        }
    }
    fence(ctx)?;
    let applied = api
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(Error::kube(format!("apply {} {ns}/{name}", K::kind(&()))))?;
    Ok(applied.meta().resource_version.clone())
}

/// Applies one child and remembers what it applied (or forgets it, on a failure, so that the
/// next reconcile applies it again).
async fn apply_child(ctx: &Context, step: &ChildStep) -> Result<(), Error> {
    let ns = &step.key.namespace;
    let known = lock(&ctx.applied).contains_key(&step.key);
    let result = match &step.child {
        Child::Service(s) => ssa(ctx, ns, s.as_ref(), known).await,
        Child::Role(r) => ssa(ctx, ns, r, known).await,
        Child::RoleBinding(b) => ssa(ctx, ns, b, known).await,
        Child::NetworkPolicy(n) => ssa(ctx, ns, n.as_ref(), known).await,
    };
    let mut applied = lock(&ctx.applied);
    match result {
        Ok(Some(resource_version)) => {
            applied.insert(step.key.clone(), Applied { fingerprint: step.fingerprint, resource_version });
            Ok(())
        }
        Ok(None) => {
            applied.remove(&step.key);
            Ok(())
        }
        Err(e) => {
            applied.remove(&step.key);
            Err(e)
        }
    }
}

/// Deletes a child the plan no longer wants (the NetworkPolicy of a pool that opted out); one
/// already gone counts as deleted.
async fn delete_child(ctx: &Context, key: &ChildKey) -> Result<(), Error> {
    fence(ctx)?;
    let api: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    match api.delete(&key.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(Error::kube(format!("delete {} {}/{}", key.kind, key.namespace, key.name))(e)),
    }
    lock(&ctx.applied).remove(key);
    Ok(())
}

/// Server-side apply of an injection or removal patch to a Deployment.
pub(super) async fn patch_deployment(ctx: &Context, ns: &str, name: &str, patch: &Value) -> Result<(), kube::Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(patch)).await.map(drop)
}

/// The key Secret's state for this reconcile: checked now, or as last checked.
async fn key_outcome(pool: &ServerPool, step: &KeyStep, ctx: &Context, now: Timestamp) -> Result<KeyOutcome, Error> {
    let pool_key = (desired::pool_namespace(pool), desired::pool_name(pool));
    match step {
        KeyStep::Skip => Ok(KeyOutcome::default()),
        KeyStep::Reuse(outcome) => Ok(outcome.clone()),
        KeyStep::Check => match ensure_keys(pool, ctx, now).await {
            Ok(outcome) => {
                let check = KeyCheck { inputs: KeyInputs::of(pool), at: now.as_second(), outcome: outcome.clone() };
                lock(&ctx.key_checks).insert(pool_key, check);
                Ok(outcome)
            }
            Err(e) => {
                lock(&ctx.key_checks).remove(&pool_key);
                Err(e)
            }
        },
    }
}

/// Carries out `plan` for `pool`, writes its status if it changed, publishes the Events.
pub(super) async fn execute(pool: &ServerPool, plan: Plan, ctx: &Context, now: Timestamp) -> Result<Action, Error> {
    let ns = desired::pool_namespace(pool);
    let name = desired::pool_name(pool);
    let reference = pool.object_ref(&());
    let mut failures: Vec<String> = Vec::new();
    let mut requeue = RESYNC;

    for step in plan.children.iter().filter(|s| !s.unchanged) {
        if let Err(e) = apply_child(ctx, step).await {
            failures.push(e.to_string());
        }
    }
    for key in &plan.remove {
        if let Err(e) = delete_child(ctx, key).await {
            failures.push(e.to_string());
        }
    }

    let keys = match key_outcome(pool, &plan.keys, ctx, now).await {
        Ok(keys) => keys,
        Err(e) => {
            failures.push(e.to_string());
            KeyOutcome::default()
        }
    };
    if let Some(due) = keys.next_due {
        let wait = u64::try_from(due.saturating_sub(now.as_second())).unwrap_or(0);
        requeue = requeue.min(Duration::from_secs(wait.max(1)));
    }

    for change in &plan.deployments {
        fence(ctx)?;
        let (d, patch, injecting) = match change {
            // The injection would mount a Secret the operator may not use: inject nothing
            // (Deployments keep what they have; the condition says why).
            DeploymentPlan::Inject { .. } if keys.refused => continue,
            DeploymentPlan::Inject { name, patch } => (name, patch, true),
            DeploymentPlan::Remove { name, patch } => (name, patch, false),
            DeploymentPlan::Injected { .. }
            | DeploymentPlan::Leftover { .. }
            | DeploymentPlan::Conflict { .. }
            | DeploymentPlan::ForeignSidecar { .. }
            | DeploymentPlan::PortTaken { .. } => {
                continue;
            }
        };
        match patch_deployment(ctx, &ns, d, patch).await {
            Ok(()) if injecting => {
                tracing::info!(deployment = %d, pool = %name, "injected the sidecar");
                let note = format!("injected the handover sidecar into Deployment {d}");
                publish(ctx, &reference, false, "SidecarInjected", note).await;
            }
            Ok(()) => {
                tracing::info!(deployment = %d, pool = %name, "removed the sidecar");
                let note = format!("removed the handover sidecar from Deployment {d}");
                publish(ctx, &reference, false, "SidecarRemoved", note).await;
            }
            Err(e) if injecting => failures.push(format!("inject Deployment {ns}/{d}: {e}")),
            Err(e) => failures.push(format!("remove sidecar from Deployment {ns}/{d}: {e}")),
        }
    }

    let members = plan.members;
    let findings = Findings {
        spec_problems: plan.spec_problems,
        key_problem: keys.problem,
        deployment_problems: plan.deployment_problems,
        apply_errors: failures.clone(),
        peers_unreachable: plan.peers_unreachable,
        ready: i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(i32::MAX),
        total: i32::try_from(members.len()).unwrap_or(i32::MAX),
    };
    let pool_key = (ns.clone(), name.clone());
    let written = lock(&ctx.statuses).get(&pool_key).cloned();
    let before = desired::current_status(pool, written.as_ref()).cloned();
    let status = desired::status(pool, before.as_ref(), members, &findings, &Time(now));
    ctx.metrics.set_members(&ns, &name, i64::from(status.total_members), i64::from(status.ready_members));
    if before.as_ref() != Some(&status) {
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
    // The status written (now or before) stands until the pool cache shows it.
    if pool.status.as_ref() == Some(&status) {
        lock(&ctx.statuses).remove(&pool_key);
    } else {
        lock(&ctx.statuses).insert(pool_key, WrittenStatus { uid: pool.metadata.uid.clone(), status: status.clone() });
    }
    let before = before.unwrap_or_default();

    for event in desired::condition_events(&before.conditions, &status.conditions) {
        publish(ctx, &reference, event.warning, &event.reason, event.note).await;
    }
    publish_membership(ctx, pool, &before, &status).await;

    if failures.is_empty() { Ok(Action::requeue(requeue)) } else { Err(Error::Children(failures)) }
}

/// Forgets what the operator remembers of a pool's children, keys and status (the pool is gone).
pub(super) fn forget(ctx: &Context, pool: &ServerPool) {
    let ns = desired::pool_namespace(pool);
    let name = desired::pool_name(pool);
    let mut applied = lock(&ctx.applied);
    for key in desired::child_keys(pool) {
        applied.remove(&key);
    }
    drop(applied);
    lock(&ctx.statuses).remove(&(ns.clone(), name.clone()));
    lock(&ctx.key_checks).remove(&(ns, name));
}
