//! The names, labels and selectors of a pool and of the objects it owns.

use std::collections::BTreeMap;

use crate::crd::{POOL_LABEL, ServerPool};

/// The one server-side-apply field manager of the operator.
pub const MANAGER: &str = "handover-operator";

/// Label on every object the operator creates (its watches select on it).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "handover-operator");

/// ServerPool annotation: set to a new value to rotate the keys now.
pub const ROTATE_ANNOTATION: &str = "handover.dev/rotate-keys";

/// Secret annotation: the rotate-keys value the Secret was last rotated for.
pub const ROTATED_FOR_ANNOTATION: &str = "handover.dev/rotated-for";

/// Secret annotation: when the current sealing key was promoted (unix seconds).
pub const PROMOTED_AT_ANNOTATION: &str = "handover.dev/promoted-at";

/// The pool's name (empty if the object has none, which the API server never sends).
pub fn pool_name(pool: &ServerPool) -> String {
    pool.metadata.name.clone().unwrap_or_default()
}

/// The pool's namespace.
pub fn pool_namespace(pool: &ServerPool) -> String {
    pool.metadata.namespace.clone().unwrap_or_default()
}

/// Name of the pool's Service.
pub fn service_name(pool: &ServerPool) -> String {
    pool_name(pool)
}

/// The default name of a pool's key Secret.
pub fn default_key_secret_name(pool: &ServerPool) -> String {
    format!("{}-handover-keys", pool_name(pool))
}

/// Name of the pool's key Secret.
pub fn key_secret_name(pool: &ServerPool) -> String {
    pool.spec.key_secret_name.clone().unwrap_or_else(|| default_key_secret_name(pool))
}

/// Name of the pool's Role and RoleBinding.
pub fn rbac_name(pool: &ServerPool) -> String {
    format!("{}-handover-registry", pool_name(pool))
}

/// Name of the pool's NetworkPolicy.
pub fn network_policy_name(pool: &ServerPool) -> String {
    format!("{}-handover", pool_name(pool))
}

/// The labels selecting the pool's pods.
pub fn selector(pool: &ServerPool) -> BTreeMap<String, String> {
    match &pool.spec.selector {
        Some(s) if !s.is_empty() => s.clone(),
        _ => BTreeMap::from([(POOL_LABEL.to_owned(), pool_name(pool))]),
    }
}

/// Whether `labels` carry every label of `selector`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
