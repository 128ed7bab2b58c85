//! Key Secret I/O: read it by name, create it once, rotate it when due.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::events::publish;
use super::{Context, fence};
use crate::crd::ServerPool;
use crate::desired::{self, KeyOutcome};
use crate::duration;
use crate::error::Error;
use crate::keys::{self, KeyRing, RotationInput, SECRET_KEY};

fn random_key() -> Result<[u8; 32], Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes)
}

/// Creates the key Secret if absent (never overwrites one), and rotates it when due.
pub(super) async fn ensure_keys(pool: &ServerPool, ctx: &Context, now: Timestamp) -> Result<KeyOutcome, Error> {
    let ns = desired::pool_namespace(pool);
    let secret_name = desired::key_secret_name(pool);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let now_s = now.as_second();
    let max_age = duration::parse(&pool.spec.cookie.max_age).unwrap_or(Duration::from_secs(12 * 3600));
    let period = pool.spec.key_rotation.period.as_deref().and_then(|p| duration::parse(p).ok());
    let requested = pool.annotations().get(desired::ROTATE_ANNOTATION).cloned();

    let existing = api.get_opt(&secret_name).await.map_err(Error::kube(format!("get Secret {ns}/{secret_name}")))?;
    if let Some(refusal) = existing.as_ref().and_then(|s| desired::key_secret_refusal(pool, &s.metadata)) {
        return Ok(KeyOutcome { problem: Some(refusal), refused: true, next_due: None });
    }
    let Some(mut secret) = existing else {
        let ring = KeyRing::initial(random_key()?, now_s);
        let mut fresh = desired::key_secret(pool, &ring);
        // A rotation request that predates the Secret is already satisfied by the fresh key.
        if let Some(r) = &requested {
            fresh.annotations_mut().insert(desired::ROTATED_FOR_ANNOTATION.to_owned(), r.clone());
        }
        fence(ctx)?;
        return match api.create(&PostParams::default(), &fresh).await {
            Ok(_) => {
                publish(
                    ctx,
                    &pool.object_ref(&()),
                    false,
                    "KeySecretCreated",
                    format!("created Secret {secret_name} with a fresh cookie key"),
                )
                .await;
                let input = RotationInput {
                    now: now_s,
                    period,
                    cookie_max_age: max_age,
                    requested: None,
                    last_request: None,
                    promoted_at: None,
                };
                Ok(KeyOutcome { problem: None, refused: false, next_due: keys::next_due(&ring, &input) })
            }
            // Created meanwhile (another reconcile, a person): read it next time.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(KeyOutcome { problem: None, refused: false, next_due: Some(now_s.saturating_add(1)) })
            }
            Err(e) => Err(Error::kube(format!("create Secret {ns}/{secret_name}"))(e)),
        };
    };

    let parsed = secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)).map(|bytes| KeyRing::parse_bytes(&bytes.0));
    let ring = match parsed {
        Some(Ok(ring)) => ring,
        Some(Err(e)) => {
            return Ok(KeyOutcome {
                refused: false,
                problem: Some(format!(
                    "Secret {secret_name}, data key `{SECRET_KEY}`: {e}. The operator never overwrites an existing Secret: fix it, or delete it to get fresh keys (live sessions will be lost)"
                )),
                next_due: None,
            });
        }
        None => {
            return Ok(KeyOutcome {
                refused: false,
                problem: Some(format!(
                    "Secret {secret_name} has no data key `{SECRET_KEY}`. The operator never overwrites an existing Secret: fix it, or delete it to get fresh keys"
                )),
                next_due: None,
            });
        }
    };
    let annotations: BTreeMap<String, String> = secret.annotations().clone();
    let input = RotationInput {
        now: now_s,
        period,
        cookie_max_age: max_age,
        requested: requested.as_deref(),
        last_request: annotations.get(desired::ROTATED_FOR_ANNOTATION).map(String::as_str),
        promoted_at: annotations.get(desired::PROMOTED_AT_ANNOTATION).and_then(|v| v.parse().ok()),
    };
    let Some(plan) = keys::plan(&ring, &input, random_key()?) else {
        return Ok(KeyOutcome { problem: None, refused: false, next_due: keys::next_due(&ring, &input) });
    };
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert(SECRET_KEY.to_owned(), k8s_openapi::ByteString(plan.ring.render().into_bytes()));
    let secret_annotations = secret.annotations_mut();
    if let Some(at) = plan.promoted_at {
        secret_annotations.insert(desired::PROMOTED_AT_ANNOTATION.to_owned(), at.to_string());
    }
    if let Some(r) = &plan.rotated_for {
        secret_annotations.insert(desired::ROTATED_FOR_ANNOTATION.to_owned(), r.clone());
    }
    // `replace` carries the resourceVersion we read: a concurrent change fails and is retried.
    fence(ctx)?;
    api.replace(&secret_name, &PostParams::default(), &secret)
        .await
        .map_err(Error::kube(format!("rotate keys in Secret {ns}/{secret_name}")))?;
    if !plan.changes.is_empty() {
        let note = plan
            .changes
            .iter()
            .map(|c| match c {
                keys::KeyChange::Staged { id } => format!("staged key {id}"),
                keys::KeyChange::Promoted { id } => format!("key {id} now seals"),
                keys::KeyChange::Pruned { ids } => {
                    format!("dropped expired key(s) {}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(secret = %secret_name, namespace = %ns, %note, "rotated keys");
        publish(ctx, &pool.object_ref(&()), false, "KeysRotated", note).await;
    }
    let after = RotationInput { promoted_at: plan.promoted_at, last_request: plan.rotated_for.as_deref(), ..input };
    Ok(KeyOutcome { problem: None, refused: false, next_due: keys::next_due(&plan.ring, &after) })
}
