//! The sidecar injected into a Deployment's pod template, its removal, and what a pool does with
//! each Deployment of its namespace.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PodSpec, Probe, ResourceFieldSelector, SeccompProfile, SecurityContext,
    SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::names::{MANAGER, key_secret_name, pool_name, pool_namespace, selector, selects};
use crate::crd::{POOL_LABEL, ServerPool};
use crate::duration;
use crate::keys::SECRET_KEY;

/// Pod-template annotation: the pool whose sidecar is injected.
pub const INJECTED_ANNOTATION: &str = "handover.dev/injected";

/// Pod-template annotation: hash of what was injected.
pub const HASH_ANNOTATION: &str = "handover.dev/injection-hash";

/// Name of the injected container.
pub const SIDECAR_NAME: &str = "handover-sidecar";

/// Name of the sidecar container's data port (`spec.sidecarPort` when it was injected).
pub const DATA_PORT_NAME: &str = "handover";

/// Name of the sidecar container's admin port (`spec.adminPort` when it was injected).
pub const ADMIN_PORT_NAME: &str = "handover-admin";

/// Name of the injected key volume.
pub const KEY_VOLUME: &str = "handover-keys";

/// Where the key volume is mounted in the sidecar.
pub const KEY_MOUNT: &str = "/etc/handover/keys";

/// The sidecar's own credentials for the API server (it watches its ServerPool): a token of the
/// pod's service account, the cluster's CA and the namespace, projected where every Kubernetes
/// client looks for them — the volume the API server adds to a pod's containers unless the pod
/// or its service account says `automountServiceAccountToken: false`, which hardening policies
/// set. Without it the sidecar could not start (a pool whose pods never became ready, and their
/// app containers never started); with it the app's containers still get no token. The API
/// server adds no mount of its own to a container that has one at that path.
pub const API_VOLUME: &str = "handover-kube-api-access";

/// Where Kubernetes clients read a pod's service account credentials.
const API_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The projected volume of [`API_VOLUME`]: what the API server projects itself, the token renewed
/// by the kubelet (kube's client reads it again as it changes).
fn api_access_volume() -> Volume {
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath, ProjectedVolumeSource,
        ServiceAccountTokenProjection, VolumeProjection,
    };
    let sources = vec![
        VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                path: "token".to_owned(),
                expiration_seconds: Some(3607),
                ..ServiceAccountTokenProjection::default()
            }),
            ..VolumeProjection::default()
        },
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: "kube-root-ca.crt".to_owned(),
                items: Some(vec![KeyToPath { key: "ca.crt".to_owned(), path: "ca.crt".to_owned(), mode: None }]),
                optional: None,
            }),
            ..VolumeProjection::default()
        },
        VolumeProjection {
            downward_api: Some(DownwardAPIProjection {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "namespace".to_owned(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".to_owned()),
                        field_path: "metadata.namespace".to_owned(),
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
            }),
            ..VolumeProjection::default()
        },
    ];
    Volume {
        name: API_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource { default_mode: Some(0o644), sources: Some(sources) }),
        ..Volume::default()
    }
}

/// Seconds the sidecar's preStop hook waits for endpoints to forget the pod.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;

/// Seconds added to the drain grace in `terminationGracePeriodSeconds`.
pub const GRACE_MARGIN_SECONDS: i64 = 15;

/// User and group the injected sidecar runs as: the image's `nonroot` user.
pub const SIDECAR_UID: i64 = 65532;

/// Env of the injected sidecar holding the pod's name (downward API).
pub const POD_NAME_ENV: &str = "HANDOVER_POD_NAME";

/// Env of the injected sidecar holding the pod's uid (downward API).
pub const POD_UID_ENV: &str = "HANDOVER_POD_UID";

/// Env of the injected sidecar holding the pod's IP (downward API).
pub const POD_IP_ENV: &str = "HANDOVER_POD_IP";

/// Env of the injected sidecar holding the pod template's drain token.
pub const DRAIN_TOKEN_ENV: &str = "HANDOVER_DRAIN_TOKEN";

/// Admin path the app containers' `preStop` hook calls: the sidecar drains while the app runs.
pub const DRAIN_PATH: &str = "/drain";

/// Header of the `preStop` hook carrying the drain token.
pub const DRAIN_HEADER: &str = "Handover-Drain";

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What the cluster supports and the operator's defaults, for injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionConfig {
    /// Image when the pool does not name one (`--sidecar-image`).
    pub default_image: String,
    /// Native sidecars (init container with `restartPolicy: Always`, Kubernetes >= 1.29).
    pub native_sidecars: bool,
    /// `preStop.sleep` lifecycle action (Kubernetes >= 1.30).
    pub sleep_action: bool,
}

impl InjectionConfig {
    /// The configuration for an API server of the given minor version (Kubernetes 1.x).
    pub fn for_minor(default_image: String, minor: u32) -> Self {
        Self { default_image, native_sidecars: minor >= 29, sleep_action: minor >= 30 }
    }
}

/// `name` set to `value` as it is: a `$` is written `$$`, which Kubernetes reads as a `$`, so that
/// a pool's strings (a cookie path `/$(HANDOVER_POD_IP)`) are never expanded from the variables
/// before them ([`env_expanded`]).
fn env(name: &str, value: impl Into<String>) -> EnvVar {
    env_expanded(name, value.into().replace('$', "$$"))
}

/// `name` set to `value`, whose `$(VAR)` Kubernetes replaces with the value of `VAR` if it is
/// defined before it in the list.
fn env_expanded(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.into()), value_from: None }
}

/// `name` set to this container's `resource` (`limits.memory`: in bytes; the node's allocatable
/// memory when the container has no limit).
fn env_resource(name: &str, resource: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: resource.to_owned(),
                ..ResourceFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { api_version: Some("v1".to_owned()), field_path: path.to_owned() }),
            ..EnvVarSource::default()
        }),
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// Seconds of drain grace (rounded up).
fn drain_seconds(pool: &ServerPool) -> i64 {
    duration::parse(&pool.spec.sidecar.drain_grace)
        .map(|d| i64::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i64::MAX))
        .unwrap_or(20)
}

/// The `terminationGracePeriodSeconds` a pod of the pool needs to drain.
pub fn needed_grace_seconds(pool: &ServerPool) -> i64 {
    PRESTOP_SLEEP_SECONDS.saturating_add(drain_seconds(pool)).saturating_add(GRACE_MARGIN_SECONDS)
}

/// The injected sidecar's security context: the restricted Pod Security Standard and then some.
/// The sidecar needs no privilege at all: it listens on unprivileged ports, writes no file, and
/// reads its keys from a read-only mount. The user is set (the image's `nonroot`, 65532) so that
/// the pod does not depend on the image declaring a numeric `USER` for `runAsNonRoot` to verify.
pub fn sidecar_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
        ..SecurityContext::default()
    }
}

/// The injected sidecar container.
pub fn sidecar_container(pool: &ServerPool, cfg: &InjectionConfig) -> Container {
    let spec = &pool.spec;
    let image = spec.sidecar.image.clone().unwrap_or_else(|| cfg.default_image.clone());
    // The downward-API values come first: Kubernetes expands `$(VAR)` only from variables
    // defined earlier in the list, and HANDOVER_ADMIN refers to the pod IP.
    let downward = [
        env_field(POD_NAME_ENV, "metadata.name"),
        env_field(POD_UID_ENV, "metadata.uid"),
        env_field(POD_IP_ENV, "status.podIP"),
        // The sidecar fits its client connections in its memory limit beside its other caps.
        env_resource("HANDOVER_MEMORY_LIMIT", "limits.memory"),
    ];
    let mut settings = vec![
        env("HANDOVER_POOL", format!("{}/{}", pool_namespace(pool), pool_name(pool))),
        env("HANDOVER_REGISTRY", "kubernetes"),
        // Both address families: a pod's IP is IPv6 in an IPv6-only cluster (and may be in a
        // dual-stack one), and a mesh proxy in the pod may connect over 127.0.0.1.
        env("HANDOVER_LISTEN", format!("[::]:{}", spec.sidecar_port)),
        // The admin port (/members, /metrics, /live, /ready) answers on the pod IP only: the
        // kubelet probes the pod IP, peers probe it there, and nothing else in the pod's network
        // namespace (or beyond it, through another interface) needs to reach it.
        env_expanded("HANDOVER_ADMIN", format!("$({POD_IP_ENV}):{}", spec.admin_port)),
        env("HANDOVER_APP", format!("127.0.0.1:{}", spec.app_port)),
        env("HANDOVER_APP_PROTOCOL", spec.sidecar.app_protocol.as_str()),
        env("HANDOVER_STATE_ADDR", format!("127.0.0.1:{}", spec.snapshot.state_port)),
        env("HANDOVER_RESPONSE_TIMEOUT", spec.sidecar.response_timeout.clone()),
        env("HANDOVER_KEEPALIVE_TIMEOUT", spec.sidecar.keepalive_timeout.clone()),
        env("HANDOVER_KEY_FILE", format!("{KEY_MOUNT}/{SECRET_KEY}")),
        env("HANDOVER_MODE", spec.snapshot.mode.as_str()),
        env("HANDOVER_SNAPSHOT_INTERVAL", spec.snapshot.interval.clone()),
        env("HANDOVER_STATE_PATH", spec.snapshot.state_path.clone()),
        env("HANDOVER_COOKIE_MAX_AGE", spec.cookie.max_age.clone()),
        env("HANDOVER_SESSION_ABSOLUTE_TIMEOUT", spec.cookie.absolute_timeout.clone()),
        env("HANDOVER_COOKIE_MAX_BYTES", spec.cookie.max_bytes.to_string()),
        env("HANDOVER_MAX_RESPONSE_HEADER_BYTES", spec.cookie.max_response_header_bytes.to_string()),
        env("HANDOVER_MAX_REQUEST_HEADER_BYTES", spec.cookie.max_request_header_bytes.to_string()),
        env("HANDOVER_INLINE_STATE_BYTES", spec.cookie.inline_state_bytes.to_string()),
        env("HANDOVER_BACKUP", spec.sidecar.backup.as_str()),
        env("HANDOVER_BACKUP_MAX_BYTES", spec.sidecar.backup_max_bytes.to_string()),
        env("HANDOVER_COOKIE_SECURE", spec.cookie.secure.to_string()),
        env("HANDOVER_COOKIE_SAME_SITE", spec.cookie.same_site.as_str()),
        env("HANDOVER_COOKIE_PATH", spec.cookie.path.clone()),
        env("HANDOVER_COOKIE_DOMAIN", spec.cookie.domain.clone()),
        env("HANDOVER_AFFINITY", spec.affinity.as_str()),
        env("HANDOVER_DRAIN_GRACE", spec.sidecar.drain_grace.clone()),
        env("HANDOVER_LOG_LEVEL", spec.sidecar.log_level.as_str()),
        env("HANDOVER_LOG_FORMAT", "json"),
    ];
    if !spec.cookie.name.is_empty() {
        // Unset, the sidecar names the cookie after the pool: pools of one host never share one.
        settings.push(env("HANDOVER_COOKIE_NAME", spec.cookie.name.clone()));
    }
    if !spec.cookie.compress {
        // Only when off: a new variable in every injected template would roll every pool's pods
        // when the operator is upgraded.
        settings.push(env("HANDOVER_COMPRESS_STATE", "false"));
    }
    settings.sort_by(|a, b| a.name.cmp(&b.name));
    let env: Vec<EnvVar> = downward.into_iter().chain(settings).collect();
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        // The image carries both binaries; name the sidecar's explicitly whatever its entrypoint.
        command: Some(vec!["handover-sidecar".to_owned()]),
        args: Some(vec!["run".to_owned()]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some(DATA_PORT_NAME.to_owned()),
                container_port: spec.sidecar_port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: spec.admin_port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        resources: spec.sidecar.resources.clone(),
        startup_probe: Some(http_probe("/live", spec.admin_port, 1, 120)),
        liveness_probe: Some(http_probe("/live", spec.admin_port, 10, 3)),
        readiness_probe: Some(http_probe("/ready", spec.admin_port, 2, 1)),
        lifecycle: cfg.sleep_action.then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: PRESTOP_SLEEP_SECONDS }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: KEY_VOLUME.to_owned(),
                mount_path: KEY_MOUNT.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: API_VOLUME.to_owned(),
                mount_path: API_MOUNT.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(sidecar_security_context()),
        restart_policy: cfg.native_sidecars.then(|| "Always".to_owned()),
        ..Container::default()
    }
}

/// Whether our field manager owns the field at `path` of `deploy` (a JSON pointer into its
/// managedFields' `fieldsV1`; the API server keeps no empty set, so a path there owns something).
fn we_own(deploy: &Deployment, path: &str) -> bool {
    deploy
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| f.0.pointer(path).is_some())
}

/// Whether our field manager owns `spec.template.spec.terminationGracePeriodSeconds`.
fn we_own_grace(deploy: &Deployment) -> bool {
    we_own(deploy, "/f:spec/f:template/f:spec/f:terminationGracePeriodSeconds")
}

/// Whether the Deployment carries the operator's injection: whether its field manager owns
/// anything of the pod template, where it writes nothing else. Not the annotations alone: a field
/// stays while any manager owns it, and a manifest applied with the injection in it (exported
/// from the live object, then applied by a GitOps tool or `kubectl apply`) keeps it there after
/// the operator's removal took out all it owned.
fn carries_our_injection(deploy: &Deployment) -> bool {
    we_own(deploy, "/f:spec/f:template")
}

/// (tests) The managedFields entry the API server keeps for `manager` once it applied `body`:
/// its `spec` as a field set (`f:<key>` for a key, `k:{"name":…}` for a named item of a list).
#[cfg(test)]
pub fn applied_fields(
    manager: &str,
    body: &Value,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    fn set(value: &Value) -> Value {
        match value {
            Value::Object(map) => map.iter().map(|(k, v)| (format!("f:{k}"), set(v))).collect(),
            Value::Array(items) => {
                items.iter().filter_map(|i| Some((format!("k:{{\"name\":{}}}", i.get("name")?), set(i)))).collect()
            }
            _ => json!({}),
        }
    }
    ManagedFieldsEntry {
        manager: Some(manager.to_owned()),
        operation: Some("Apply".to_owned()),
        fields_v1: body.get("spec").map(|spec| FieldsV1(json!({"f:spec": set(spec)}))),
        ..ManagedFieldsEntry::default()
    }
}

fn current_grace(deploy: &Deployment) -> i64 {
    deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS)
}

/// 64-bit FNV-1a: a stable hash across Rust versions and architectures.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn fnv1a_hex(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// The server-side-apply body that injects the pool's sidecar into `deploy`, and its hash.
///
/// Everything here is owned by the operator's field manager; [`removal_patch`] (the same object
/// with none of it) makes the API server remove exactly these fields again, but for those another
/// manager also set ([`remove_injection`]).
pub fn injection_patch(pool: &ServerPool, deploy: &Deployment, cfg: &InjectionConfig) -> (Value, String) {
    let token = drain_token(pool, deploy);
    let mut container = sidecar_container(pool, cfg);
    container.env.get_or_insert_with(Vec::new).push(env(DRAIN_TOKEN_ENV, token.clone()));
    let hooks = drain_hooks(pool, deploy, &token);
    let volume = Volume {
        name: KEY_VOLUME.to_owned(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some(key_secret_name(pool)),
            ..Default::default()
        }),
        ..Volume::default()
    };
    let mut pod_spec = serde_json::Map::new();
    if cfg.native_sidecars {
        pod_spec.insert("initContainers".to_owned(), json!([container]));
        if !hooks.is_empty() {
            pod_spec.insert("containers".to_owned(), Value::Array(hooks));
        }
    } else {
        let all: Vec<Value> = std::iter::once(json!(container)).chain(hooks).collect();
        pod_spec.insert("containers".to_owned(), Value::Array(all));
    }
    pod_spec.insert("volumes".to_owned(), json!([volume, api_access_volume()]));
    let mut template = json!({
        "metadata": {"labels": {POOL_LABEL: pool_name(pool)}},
        "spec": Value::Object(pod_spec),
    });
    // The hash covers what is injected, not the grace period, which depends on the user's value.
    let hash = fnv1a_hex(template.to_string().as_bytes());
    let needed = needed_grace_seconds(pool);
    if (we_own_grace(deploy) || current_grace(deploy) < needed)
        && let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("terminationGracePeriodSeconds".to_owned(), json!(needed));
    }
    if let Some(m) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("annotations".to_owned(), json!({INJECTED_ANNOTATION: pool_name(pool), HASH_ANNOTATION: hash}));
    }
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deploy.metadata.name,
            "namespace": deploy.metadata.namespace,
        },
        "spec": {"template": template},
    });
    (body, hash)
}

/// The token a `/drain` request must carry for the pods of `deploy` in `pool`: derived from the
/// pool's uid (not guessable without reading the pool or the pod spec) and stable for the
/// Deployment, so that it changes no template by itself.
pub fn drain_token(pool: &ServerPool, deploy: &Deployment) -> String {
    let seed = format!(
        "handover-drain/{}/{}/{}",
        pool.metadata.uid.as_deref().unwrap_or_default(),
        deploy.metadata.namespace.as_deref().unwrap_or_default(),
        deploy.metadata.name.as_deref().unwrap_or_default(),
    );
    fnv1a_hex(seed.as_bytes())
}

/// Whether a `preStop` handler is the drain hook the operator injects.
fn is_drain_hook(handler: &LifecycleHandler) -> bool {
    handler.http_get.as_ref().is_some_and(|h| {
        h.path.as_deref() == Some(DRAIN_PATH)
            && h.http_headers.iter().flatten().any(|x| x.name.eq_ignore_ascii_case(DRAIN_HEADER))
    })
}

/// The `preStop` hooks for the app containers of `deploy` (server-side apply entries, merged into
/// the user's containers by name): an `httpGet` of the sidecar's `/drain`, so that the kubelet
/// starts the drain before it stops the app, and stops the app only once the pod has left the
/// pool. A container with a `preStop` of its own keeps it (and gets none).
pub fn drain_hooks(pool: &ServerPool, deploy: &Deployment, token: &str) -> Vec<Value> {
    let Some(spec) = deploy.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .filter(|c| c.name != SIDECAR_NAME)
        .filter(|c| c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).is_none_or(is_drain_hook))
        .map(|c| {
            let hook = LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    path: Some(DRAIN_PATH.to_owned()),
                    port: IntOrString::Int(pool.spec.admin_port),
                    scheme: Some("HTTP".to_owned()),
                    http_headers: Some(vec![HTTPHeader { name: DRAIN_HEADER.to_owned(), value: token.to_owned() }]),
                    ..HTTPGetAction::default()
                }),
                ..LifecycleHandler::default()
            };
            json!({"name": c.name, "lifecycle": {"preStop": hook}})
        })
        .collect()
}

/// The server-side-apply body that removes everything [`injection_patch`] added.
pub fn removal_patch(deploy: &Deployment) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deploy.metadata.name,
            "namespace": deploy.metadata.namespace,
        },
    })
}

fn template_annotation<'a>(deploy: &'a Deployment, key: &str) -> Option<&'a str> {
    deploy.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The pool a Deployment asks for (annotation `handover.dev/pool`).
pub fn requested_pool(deploy: &Deployment) -> Option<&str> {
    deploy.annotations().get(POOL_LABEL).map(String::as_str)
}

/// The pool whose sidecar is injected in the Deployment's template.
pub fn injected_pool(deploy: &Deployment) -> Option<&str> {
    template_annotation(deploy, INJECTED_ANNOTATION)
}

/// What of `pool`'s injection the Deployment's pod template holds, for a person: the annotations,
/// the pool label, the sidecar, its volumes, the app containers' drain hooks.
pub fn injection_fields(deploy: &Deployment, pool: &str) -> Vec<String> {
    let Some(template) = deploy.spec.as_ref().map(|s| &s.template) else {
        return Vec::new();
    };
    let meta = template.metadata.as_ref();
    let annotations = meta.and_then(|m| m.annotations.as_ref());
    let mut out: Vec<String> = [INJECTED_ANNOTATION, HASH_ANNOTATION]
        .into_iter()
        .filter(|key| annotations.is_some_and(|a| a.contains_key(*key)))
        .map(|key| format!("annotation {key}"))
        .collect();
    if meta.and_then(|m| m.labels.as_ref()).and_then(|l| l.get(POOL_LABEL)).is_some_and(|v| v == pool) {
        out.push(format!("label {POOL_LABEL}"));
    }
    if has_sidecar(deploy) {
        out.push(format!("container {SIDECAR_NAME}"));
    }
    let Some(spec) = template.spec.as_ref() else { return out };
    for volume in spec.volumes.iter().flatten().filter(|v| v.name == KEY_VOLUME || v.name == API_VOLUME) {
        out.push(format!("volume {}", volume.name));
    }
    for c in &spec.containers {
        if c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).is_some_and(is_drain_hook) {
            out.push(format!("the preStop hook of container {}", c.name));
        }
    }
    out
}

/// What the operator says of fields of an injection that it no longer owns (`fields`, from
/// [`injection_fields`]) and that another field manager keeps in place.
pub fn leftover_note(fields: &[String]) -> String {
    format!(
        "its pod template still has {}, which the operator does not own: another field manager set them (a manifest applied with them in it, such as one exported from the live object) and a field stays while any manager owns it; remove them from that manifest",
        fields.join(", ")
    )
}

/// How `pool`'s injection comes out of `deploy`: the removal patch while the operator owns any of
/// it; once it owns none, a removal would change nothing (and be sent again and again), and what
/// is left is [`DeploymentPlan::Leftover`].
pub fn remove_injection(deploy: &Deployment, pool: &str) -> DeploymentPlan {
    let name = deploy.metadata.name.clone().unwrap_or_default();
    if carries_our_injection(deploy) {
        DeploymentPlan::Remove { name, patch: removal_patch(deploy) }
    } else {
        DeploymentPlan::Leftover { name, fields: injection_fields(deploy, pool) }
    }
}

/// The ports a pod's injected sidecar listens on, as its container declares them: a pod keeps
/// the ports of the spec it was injected from, which differ from the pool's current ones while a
/// change of `sidecarPort` or `adminPort` rolls out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SidecarPorts {
    /// The data port ([`DATA_PORT_NAME`]).
    pub data: Option<i32>,
    /// The admin port ([`ADMIN_PORT_NAME`]).
    pub admin: Option<i32>,
}

/// The container named [`SIDECAR_NAME`] of a pod spec: a native sidecar (in `initContainers`) or
/// a regular container.
pub fn sidecar_of(spec: &PodSpec) -> Option<&Container> {
    spec.init_containers.iter().flatten().chain(&spec.containers).find(|c| c.name == SIDECAR_NAME)
}

/// The ports the sidecar of a pod spec declares, each by its name; a port it does not declare
/// (no sidecar, a hand-written one) is `None`.
pub fn sidecar_ports(spec: &PodSpec) -> SidecarPorts {
    let Some(sidecar) = sidecar_of(spec) else { return SidecarPorts::default() };
    let port = |name: &str| {
        sidecar
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .filter(|p| (1..=65535).contains(p))
    };
    SidecarPorts { data: port(DATA_PORT_NAME), admin: port(ADMIN_PORT_NAME) }
}

fn has_sidecar(deploy: &Deployment) -> bool {
    deploy.spec.as_ref().and_then(|s| s.template.spec.as_ref()).is_some_and(|spec| sidecar_of(spec).is_some())
}

/// What to do with one Deployment for one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentPlan {
    /// Apply the injection (new or changed).
    Inject {
        /// Deployment name.
        name: String,
        /// Server-side-apply body.
        patch: Value,
    },
    /// The injection is current, and the operator's.
    Injected {
        /// Deployment name.
        name: String,
    },
    /// Remove the pool's injection (the annotation is gone or names a pool that does not exist).
    Remove {
        /// Deployment name.
        name: String,
        /// Server-side-apply body.
        patch: Value,
    },
    /// The pool's injection should go, but the operator owns none of it any more: what is left
    /// another field manager set, and only it can remove ([`remove_injection`]).
    Leftover {
        /// Deployment name.
        name: String,
        /// What is left ([`injection_fields`]).
        fields: Vec<String>,
    },
    /// The Deployment asks for this pool, but another pool's selector also selects its pods.
    Conflict {
        /// Deployment name.
        name: String,
        /// The other pools, sorted.
        others: Vec<String>,
    },
    /// The Deployment already carries a container named like the sidecar that is not ours.
    ForeignSidecar {
        /// Deployment name.
        name: String,
    },
    /// A container of the Deployment declares a port the sidecar listens on (the pool's
    /// `sidecarPort` or `adminPort`): both would bind it in the pod's one network namespace, and
    /// one would fail to start, again and again.
    PortTaken {
        /// Deployment name.
        name: String,
        /// The container that declares it.
        container: String,
        port: i32,
    },
}

/// A container of `deploy` that runs beside the sidecar (not an init container that exits before
/// it starts) and declares one of the sidecar's own TCP ports, and that port.
fn port_taken(pool: &ServerPool, deploy: &Deployment) -> Option<(String, i32)> {
    let spec = deploy.spec.as_ref()?.template.spec.as_ref()?;
    let ours = [pool.spec.sidecar_port, pool.spec.admin_port];
    let native_sidecars =
        spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let tcp = |p: &&k8s_openapi::api::core::v1::ContainerPort| p.protocol.as_deref().is_none_or(|p| p == "TCP");
    spec.containers.iter().chain(native_sidecars).filter(|c| c.name != SIDECAR_NAME).find_map(|c| {
        let port = c.ports.iter().flatten().filter(tcp).map(|p| p.container_port).find(|p| ours.contains(p))?;
        Some((c.name.clone(), port))
    })
}

/// What the pool must do with each Deployment of its namespace.
///
/// `pools` are all ServerPools (any namespace); `deployments` all Deployments (any namespace).
/// Only the pool a Deployment's annotation names injects it; only the pool whose injection it
/// carries removes it, and only when the annotation no longer names an existing pool (otherwise
/// that pool's injection replaces ours, since all pools share one field manager).
pub fn plan_deployments<'a>(
    pool: &ServerPool,
    deployments: impl IntoIterator<Item = &'a Deployment>,
    pools: &[&ServerPool],
    cfg: &InjectionConfig,
) -> Vec<DeploymentPlan> {
    let name = pool_name(pool);
    let namespace = pool_namespace(pool);
    let in_ns = |d: &&Deployment| d.metadata.namespace.as_deref() == Some(namespace.as_str());
    let pool_exists = |n: &str| {
        pools.iter().any(|p| {
            p.metadata.name.as_deref() == Some(n)
                && p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && p.metadata.deletion_timestamp.is_none()
        })
    };
    let mut out = Vec::new();
    let mut deployments: Vec<&Deployment> = deployments.into_iter().filter(in_ns).collect();
    deployments.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for d in deployments {
        let Some(dname) = d.metadata.name.clone() else {
            continue;
        };
        let requested = requested_pool(d);
        let injected = injected_pool(d);
        if requested == Some(name.as_str()) && pool.metadata.deletion_timestamp.is_none() {
            // Pods of this Deployment, once injected, carry these labels.
            let mut labels = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(POOL_LABEL.to_owned(), name.clone());
            let mut others: Vec<String> = pools
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .filter(|p| p.metadata.name.as_deref() != Some(name.as_str()))
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| selects(&selector(p), &labels))
                .map(|p| pool_name(p))
                .collect();
            others.sort();
            if !others.is_empty() {
                out.push(DeploymentPlan::Conflict { name: dname, others });
                continue;
            }
            if has_sidecar(d) && injected.is_none() {
                out.push(DeploymentPlan::ForeignSidecar { name: dname });
                continue;
            }
            if let Some((container, port)) = port_taken(pool, d) {
                out.push(DeploymentPlan::PortTaken { name: dname, container, port });
                continue;
            }
            let (patch, hash) = injection_patch(pool, d, cfg);
            // Ours, too: a manifest may carry an injection the operator no longer owns, which it
            // could not remove when the Deployment opts out.
            let current = injected == Some(name.as_str())
                && carries_our_injection(d)
                && template_annotation(d, HASH_ANNOTATION) == Some(hash.as_str())
                && has_sidecar(d)
                && current_grace(d) >= needed_grace_seconds(pool);
            out.push(if current {
                DeploymentPlan::Injected { name: dname }
            } else {
                DeploymentPlan::Inject { name: dname, patch }
            });
        } else if injected == Some(name.as_str()) {
            let taken_over = requested.is_some_and(|r| r != name && pool_exists(r));
            if !taken_over {
                out.push(remove_injection(d, &name));
            }
        }
    }
    out
}
