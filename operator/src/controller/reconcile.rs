//! One pool's reconcile: the finalizer, applying what [`crate::desired`] wants, the cleanup of a
//! deleted pool, a Deployment naming a missing pool, and when to retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::events::publish;
use super::keys::ensure_keys;
use super::{CACHE_WAIT, Context, FINALIZER, RESYNC, RETRY, STALE_RETRY, fence};
use crate::crd::ServerPool;
use crate::desired::{self, DeploymentPlan, Findings, MANAGER};
use crate::error::Error;
use crate::validate;
use handover_common::sync::lock;

/// A Deployment names (or carries the injection of) a pool that does not exist: warn on the
/// Deployment once per generation, and remove a stale injection.
pub(super) async fn missing_pool(ctx: &Context, pool: &str, namespace: Option<&str>) {
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
            let first = lock(&ctx.warned_missing).insert(key);
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

pub(super) async fn reconcile(pool: Arc<ServerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
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

pub(super) fn error_policy(pool: Arc<ServerPool>, error: &Error, ctx: Arc<Context>) -> Action {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
