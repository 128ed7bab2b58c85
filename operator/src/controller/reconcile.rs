//! One pool's reconcile: the finalizer, applying what [`crate::desired`] wants, the cleanup of a
//! deleted pool, a Deployment naming a missing pool, and when to retry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::events::publish;
use super::execute::{execute, forget, patch_deployment};
use super::{CACHE_WAIT, Context, FINALIZER, RETRY, STALE_RETRY, fence};
use crate::crd::ServerPool;
use crate::desired::{self, Applied, ChildKey, DeploymentPlan, MANAGER, Observed, Policy};
use crate::error::Error;
use handover_common::sync::lock;

/// A Deployment names (or carries the injection of) a pool that does not exist: warn on the
/// Deployment once per generation, and remove a stale injection (or warn about what of it is not
/// the operator's to remove).
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
        if desired::requested_pool(&d) == Some(pool) && first_warning(ctx, &d, pool, "PoolNotFound") {
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
        if desired::injected_pool(&d) != Some(pool) {
            continue;
        }
        match desired::remove_injection(&d, pool) {
            DeploymentPlan::Remove { patch, .. } => match patch_deployment(ctx, ns, &name, &patch).await {
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
            },
            DeploymentPlan::Leftover { fields, .. } => {
                warn_leftover(ctx, &d, pool, &format!("ServerPool {ns}/{pool} does not exist"), &fields).await;
            }
            _ => {}
        }
    }
}

/// Whether `reason` is said of Deployment `d` and `pool` for the first time at `d`'s generation.
fn first_warning(ctx: &Context, d: &Deployment, pool: &str, reason: &'static str) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    lock(&ctx.warned_missing).insert((
        d.namespace().unwrap_or_default(),
        d.name_any(),
        pool.to_owned(),
        generation,
        reason,
    ))
}

/// Warns on Deployment `d`, once per generation, that what is left of `pool`'s injection in it
/// (`fields`) is not the operator's to remove; `gone` says what became of the pool.
async fn warn_leftover(ctx: &Context, d: &Deployment, pool: &str, gone: &str, fields: &[String]) {
    if !first_warning(ctx, d, pool, "InjectionLeftover") {
        return;
    }
    tracing::warn!(deployment = %d.name_any(), pool, ?fields, "what is left of an injection is not the operator's to remove");
    let note = format!("{gone}, but {}", desired::leftover_note(fields));
    publish(ctx, &d.object_ref(&()), true, "InjectionLeftover", note).await;
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

/// Observe → plan → execute: reads the caches and what the operator remembers, lets
/// [`desired::plan()`] decide, and has [`execute`] carry it out.
async fn apply(pool: Arc<ServerPool>, ctx: &Context) -> Result<Action, Error> {
    wait_for_caches(ctx).await?;
    fence(ctx)?;
    let now = Timestamp::now();
    let pods = ctx.pods.state();
    let deployments = ctx.deployments.state();
    let pools = ctx.pools.state();
    let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let deployments: Vec<&Deployment> = deployments.iter().map(AsRef::as_ref).collect();
    let pools: Vec<&ServerPool> = pools.iter().map(AsRef::as_ref).collect();
    let children = observed_children(ctx, &pool);
    let applied: BTreeMap<ChildKey, Applied> = {
        let remembered = lock(&ctx.applied);
        desired::child_keys(&pool).into_iter().filter_map(|k| Some((k.clone(), remembered.get(&k)?.clone()))).collect()
    };
    let pool_key = (desired::pool_namespace(&pool), desired::pool_name(&pool));
    let last_key_check = lock(&ctx.key_checks).get(&pool_key).cloned();
    let observed = Observed {
        pods: &pods,
        deployments: &deployments,
        pools: &pools,
        children: &children,
        applied: &applied,
        last_key_check: last_key_check.as_ref(),
        now: now.as_second(),
    };
    let plan = desired::plan(&pool, &observed, &Policy { inject: &ctx.inject, allowed_images: &ctx.allowed_images });
    execute(&pool, plan, ctx, now).await
}

/// The resourceVersion of each of the pool's children in the owned-object caches.
fn observed_children(ctx: &Context, pool: &ServerPool) -> BTreeMap<ChildKey, String> {
    let mut out = BTreeMap::new();
    for key in desired::child_keys(pool) {
        let (name, ns) = (key.name.as_str(), key.namespace.as_str());
        let version = match key.kind {
            "Service" => {
                ctx.services.get(&ObjectRef::new(name).within(ns)).and_then(|o| o.metadata.resource_version.clone())
            }
            "Role" => ctx.roles.get(&ObjectRef::new(name).within(ns)).and_then(|o| o.metadata.resource_version.clone()),
            "NetworkPolicy" => ctx
                .network_policies
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.metadata.resource_version.clone()),
            _ => ctx
                .role_bindings
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.metadata.resource_version.clone()),
        };
        if let Some(version) = version {
            out.insert(key, version);
        }
    }
    out
}

async fn cleanup(pool: Arc<ServerPool>, ctx: &Context) -> Result<Action, Error> {
    wait_for_caches(ctx).await?;
    fence(ctx)?;
    let ns = desired::pool_namespace(&pool);
    let name = desired::pool_name(&pool);
    let deployments = ctx.deployments.state();
    let all_pools = ctx.pools.state();
    let pool_refs: Vec<&ServerPool> = all_pools.iter().map(AsRef::as_ref).collect();
    let mut failures = Vec::new();
    for plan in desired::plan_deployments(&pool, deployments.iter().map(AsRef::as_ref), &pool_refs, &ctx.inject) {
        match plan {
            DeploymentPlan::Remove { name: d, patch } => {
                fence(ctx)?;
                match patch_deployment(ctx, &ns, &d, &patch).await {
                    Ok(()) => tracing::info!(deployment = %d, pool = %name, "removed the sidecar of a deleted pool"),
                    Err(e) => failures.push(format!("remove sidecar from Deployment {ns}/{d}: {e}")),
                }
            }
            // The pool's status goes with it: say so on the Deployment.
            DeploymentPlan::Leftover { name: d, fields } => {
                let deploy = deployments.iter().find(|x| x.namespace().as_deref() == Some(&ns) && x.name_any() == d);
                if let Some(deploy) = deploy {
                    warn_leftover(ctx, deploy, &name, &format!("ServerPool {ns}/{name} is deleted"), &fields).await;
                }
            }
            _ => {}
        }
    }
    if !failures.is_empty() {
        return Err(Error::Children(failures));
    }
    ctx.metrics.forget_pool(&ns, &name);
    forget(ctx, &pool);
    // Service, Secret, Role, RoleBinding and NetworkPolicy carry an owner reference: the garbage collector
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
