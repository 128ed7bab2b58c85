//! The `ServerPool` custom resource (`handover.dev/v1alpha1`).
//!
//! Every doc comment on these types becomes a `description` in the CRD's OpenAPI schema, so write
//! them for the person running `kubectl explain serverpool.spec`.
//!
//! Validation lives in the schema (ranges, enums, patterns, CEL rules) so that the API server
//! refuses a bad spec with a clear message; [`crate::validate`] repeats the same checks in Rust for
//! objects that reached the cluster some other way (an older CRD, a disabled validation).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every handover resource.
pub const GROUP: &str = "handover.dev";
/// Pod label (and Deployment annotation) naming the pool a workload belongs to.
pub const POOL_LABEL: &str = "handover.dev/pool";
/// Pattern of every duration field: an integer and one unit, as the sidecar's flags accept.
pub const DURATION_PATTERN: &str = "^[0-9]{1,9}(ms|s|m|h)$";

/// Desired state of a pool of interchangeable servers whose sessions survive pod death.
///
/// The operator creates a Service named after the pool, a Secret with the cookie-sealing keys,
/// RBAC for the pool's sidecars, injects the handover sidecar into Deployments annotated
/// `handover.dev/pool: <name>`, and publishes the live members in `status.members`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "handover.dev",
    version = "v1alpha1",
    kind = "ServerPool",
    plural = "serverpools",
    singular = "serverpool",
    shortname = "spool",
    namespaced,
    status = "ServerPoolStatus",
    derive = "PartialEq",
    doc = "A pool of interchangeable servers whose HTTP sessions survive the death of any member: each session's state travels sealed in the client's cookie, and another member restores it.",
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyMembers", description = "Members ready to serve"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.totalMembers", description = "Pods selected by the pool"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (at most 63 characters, lowercase letters, digits and '-', starting with a letter): it names the pool's Service"),
)]
#[x_kube(
    validation = Rule::new("self.appPort != self.sidecarPort").message("appPort and sidecarPort must differ: the sidecar listens on sidecarPort and forwards to the app on appPort"),
    validation = Rule::new("self.appPort != self.adminPort").message("appPort and adminPort must differ"),
    validation = Rule::new("self.sidecarPort != self.adminPort").message("sidecarPort and adminPort must differ"),
    validation = Rule::new("!has(self.snapshot) || !has(self.snapshot.statePort) || (self.snapshot.statePort != self.appPort && self.snapshot.statePort != self.sidecarPort && self.snapshot.statePort != self.adminPort)").message("snapshot.statePort must differ from appPort, sidecarPort and adminPort: the app serves its state endpoint on a listener of its own"),
)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolSpec {
    /// Port the application container listens on inside the pod. The sidecar forwards to
    /// `127.0.0.1:<appPort>`.
    #[schemars(range(min = 1, max = 65535))]
    pub app_port: i32,

    /// Port of the pool's Service (`<name>.<namespace>.svc:<port>`), the address clients use.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Port the sidecar's data listener binds in every pod; the Service targets it.
    #[serde(default = "default_sidecar_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub sidecar_port: i32,

    /// Port of the sidecar's admin listener (`/live`, `/ready`, `/metrics`); the probes use it.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,

    /// Labels that select the pool's pods (all must match), also used as the Service selector.
    /// Default: `handover.dev/pool: <name>`, the label the operator puts on the pod template of
    /// every Deployment annotated `handover.dev/pool: <name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1))]
    pub selector: Option<BTreeMap<String, String>>,

    /// The state cookie sent to clients.
    #[serde(default)]
    pub cookie: CookieSpec,

    /// How the sidecar obtains each session's state from the application.
    #[serde(default)]
    pub snapshot: SnapshotSpec,

    /// What a sidecar does with a request for a session owned by another live member: `forward`
    /// it to the owner (default), or `takeover` the session locally from the cookie.
    #[serde(default)]
    pub affinity: Affinity,

    /// Name of the Secret holding the cookie keys (data key `keys`). Created with fresh keys if
    /// absent, never overwritten. An existing Secret is used only if it has the default name or
    /// carries the labels `app.kubernetes.io/managed-by: handover-operator` and
    /// `handover.dev/pool: <name>`. Default: `<name>-handover-keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub key_secret_name: Option<String>,

    /// Automatic key rotation. Rotation can also be requested at any time by setting the
    /// annotation `handover.dev/rotate-keys` on the ServerPool to a new value.
    #[serde(default)]
    pub key_rotation: KeyRotationSpec,

    /// The injected sidecar container.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// The pool's Service.
    #[serde(default)]
    pub service: ServiceSpec,

    /// The NetworkPolicy `<name>-handover` that lets the pool's pods reach each other's sidecar
    /// (forwards on `sidecarPort`, liveness probes on `adminPort`) under a default-deny policy.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// The pool's NetworkPolicy.
///
/// It selects the pool's pods, so once it exists their ingress is limited to what some policy
/// allows: this one allows `sidecarPort` and `adminPort` from the pool's own pods, and from `from`
/// (by default from anywhere, as a Service's port is without any policy). Other ports of the
/// pods (an app listening on the pod IP) need a policy of their own, or `enabled: false`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy (default). `false`: the operator deletes the one it created.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Who besides the pool's own pods may reach `sidecarPort` and `adminPort` (clients through
    /// the Service, an ingress controller, a metrics scraper). Unset: anyone. An empty list: only
    /// the pool's pods (and the node: kubelet probes are always allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true, from: None }
    }
}

/// The state cookie.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.sameSite != 'None' || self.secure").message("cookie.sameSite None requires cookie.secure true (browsers reject it otherwise)"),
    validation = Rule::new("duration(self.maxAge) >= duration('1s')").message("cookie.maxAge must be at least 1s"),
    validation = Rule::new("duration(self.absoluteTimeout) == duration('0s') || duration(self.absoluteTimeout) >= duration('1s')").message("cookie.absoluteTimeout must be 0s (none) or at least 1s"),
    validation = Rule::new("!self.name.startsWith('__Host-') || (self.secure && self.path == '/' && self.domain == '')").message("a __Host- cookie needs secure: true, path: / and no domain"),
    validation = Rule::new("!self.name.startsWith('__Secure-') || self.secure").message("a __Secure- cookie needs secure: true"),
)]
#[serde(rename_all = "camelCase")]
pub struct CookieSpec {
    /// Cookie name (chunks of a large state get numbered suffixes). Empty (the default): the
    /// pool's own, `handover-<8 hex digits of a hash of namespace/name>`, with the `__Host-`
    /// prefix when the cookie can carry it (secure, path `/`, no domain), so that two pools
    /// behind one host never share a cookie (each would refuse the other's and overwrite it).
    #[serde(default)]
    #[schemars(length(max = 64), regex(pattern = r"^[A-Za-z0-9_-]*$"))]
    pub name: String,

    /// The idle timeout (Gateway API's `idleTimeout`), e.g. `12h`: a session's cookies expire
    /// this long after its last reseal; an active session is resealed past half of it, so only an
    /// idle one expires. Retired keys are kept at least this long.
    #[serde(default = "default_cookie_max_age")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub max_age: String,

    /// The absolute timeout (Gateway API's `absoluteTimeout`), e.g. `24h`: a session is refused
    /// as expired this long after it was first sealed, however active (the app is told it left,
    /// `DELETE <statePath>`, and the client gets a fresh session); its cookies never outlive it.
    /// `0s` (default): none, only the idle timeout.
    #[serde(default = "default_cookie_absolute_timeout")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub absolute_timeout: String,

    /// Set the `Secure` attribute. Turn off only for plain-HTTP tests.
    #[serde(default = "default_true")]
    pub secure: bool,

    /// `SameSite` attribute of the cookie.
    #[serde(default)]
    pub same_site: SameSite,

    /// Ceiling in bytes for one session's cookies (routing cookie and state chunks, after
    /// compression). The header limits below bind first at their defaults. A larger state is
    /// reported (`Handover-Warning`, `handover_seals_refused_total`), never silently truncated.
    #[serde(default = "default_cookie_max_bytes")]
    #[schemars(range(min = 1024, max = 65536))]
    pub max_bytes: i32,

    /// The largest response header block the proxies in front of the pool accept from it: a
    /// response whose headers would pass it with the session's cookies keeps its status but does
    /// not carry the new state in cookies. Default 4096: ingress-nginx `proxy-buffer-size` (4k).
    /// Raise both together (README, "Limits on the real path").
    #[serde(default = "default_max_response_header_bytes")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_response_header_bytes: i32,

    /// The longest request header line the path carries (the client's whole `Cookie` line, the
    /// site's other cookies included). Default 8192: ingress-nginx `large-client-header-buffers`
    /// (4 8k) and curl's 8190-byte cookie limit.
    #[serde(default = "default_max_request_header_bytes")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_request_header_bytes: i32,

    /// States at most this many bytes once stored (deflated when smaller) travel inside the
    /// routing cookie: one cookie, one seal and one `Set-Cookie` line fewer a response (default
    /// 256). 0: never, every state in chunks.
    #[serde(default = "default_inline_state_bytes")]
    #[schemars(range(min = 0, max = 2048))]
    pub inline_state_bytes: i32,

    /// Deflate states of 128 bytes or more before they are sealed (default true). Turn it off
    /// when one state holds both a secret (a CSRF token, a credential) and bytes a third party
    /// can choose (a search term, a referrer the app records): a compressed state's cookie length
    /// tells whether those bytes repeat the secret (SECURITY.md). Off, a state's cookies take its
    /// full size.
    #[serde(default = "default_true")]
    pub compress: bool,

    /// `Path` attribute: two pools under one host (e.g. `/shop` and `/account` on one ingress)
    /// keep their cookies apart by path.
    #[serde(default = "default_cookie_path")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[!-:<-~]*$"))]
    pub path: String,

    /// `Domain` attribute; empty (default): host-only, the safest.
    #[serde(default)]
    #[schemars(length(max = 253), regex(pattern = r"^[A-Za-z0-9.-]*$"))]
    pub domain: String,
}

/// `SameSite` cookie attribute.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent on top-level navigations and same-site requests (default).
    #[default]
    Lax,
    /// Sent on same-site requests only.
    Strict,
    /// Sent on every request; requires `secure: true`.
    None,
}

/// How the sidecar obtains each session's state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.interval) > duration('0s')").message("snapshot.interval must be greater than 0"))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// `push`: the app sends its state in a `Handover-State` response header; `pull`: the sidecar
    /// fetches `GET <statePath>` every `interval`; `both` (default).
    #[serde(default)]
    pub mode: SnapshotMode,

    /// Pull interval, e.g. `1s` or `500ms`: a pull-mode takeover loses at most this much.
    #[serde(default = "default_snapshot_interval")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub interval: String,

    /// Path on the app for pulling (`GET`) and restoring (`PUT`) a session's state.
    #[serde(default = "default_state_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s?#]*$"))]
    pub state_path: String,

    /// Port of the app's state endpoint, on the pod's loopback (`127.0.0.1:<statePort>`): a
    /// listener of its own, apart from `appPort`, so that no client request can reach it (the
    /// sidecar forwards clients to `appPort` only).
    #[serde(default = "default_state_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub state_port: i32,
}

/// Snapshot mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// The app pushes its state in a response header.
    Push,
    /// The sidecar pulls the state from the app.
    Pull,
    /// Both (default).
    #[default]
    Both,
}

/// What a sidecar does with a request whose session belongs to another live member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Forward the request to the owning member's sidecar (default).
    #[default]
    Forward,
    /// Take the session over locally from the cookie.
    Takeover,
}

/// Key rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.period) || duration(self.period) >= duration('10m')").message("keyRotation.period must be at least 10m: a rotation stages a key for 2 minutes before it seals"))]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationSpec {
    /// Add a new sealing key this long after the newest one, e.g. `720h`. Unset: rotate only on
    /// request (annotation `handover.dev/rotate-keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub period: Option<String>,
}

/// The injected sidecar container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.drainGrace) <= duration('1h')").message("sidecar.drainGrace must be at most 1h: it delays every pod's termination"))]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image, among those the operator allows (`--sidecar-image-allow`; by default other
    /// tags and digests of its own image's repository). Default: the operator's `--sidecar-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Compute resources of the sidecar container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Sidecar log level.
    #[serde(default)]
    pub log_level: LogLevel,

    /// How long a terminating sidecar keeps serving to hand its sessions over, e.g. `20s`. The
    /// pod's `terminationGracePeriodSeconds` is raised to at least this plus 20 seconds (the
    /// preStop hook's 5 s pause and a 15 s margin).
    #[serde(default = "default_drain_grace")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub drain_grace: String,

    /// Longest wait for response headers from the app (or a peer's sidecar), e.g. `60s`; `0s`: no
    /// limit. Raise it for long-polls and server-sent events.
    #[serde(default = "default_response_timeout")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub response_timeout: String,

    /// How long a client connection with no request in flight stays open after its last answer,
    /// e.g. `75s`. Keep it above the idle timeout of the proxy in front (ingress-nginx and AWS's
    /// load balancers: 60 s; Google Cloud's: 600 s, so `620s` behind it), so that the proxy closes
    /// an idle connection first: one closed by the sidecar as the proxy sends a request on it is a
    /// 502 for that request. At least `5s`.
    #[serde(default = "default_keepalive_timeout")]
    #[schemars(regex(pattern = "^[0-9]{1,9}(ms|s|m|h)$"))]
    pub keepalive_timeout: String,

    /// Where each session's newest sealed state is also kept: `successor` (default) hands it to
    /// the session's rendezvous successor before the response leaves, so a takeover finds every
    /// acknowledged update even when the client's cookie is older (concurrent requests whose
    /// responses arrived out of order); `off`: the client's cookie only.
    #[serde(default)]
    pub backup: BackupMode,

    /// Bytes of backups one sidecar keeps at most (the oldest go first), e.g. 33554432.
    #[serde(default = "default_backup_max_bytes")]
    #[schemars(range(min = 0, max = 1073741824))]
    pub backup_max_bytes: i64,

    /// How the sidecar speaks to the app's port: `http1` (default) or `h2c` (HTTP/2 without TLS,
    /// prior knowledge, as gRPC servers speak). The state endpoint is called over HTTP/1.1 either
    /// way. gRPC passes through untouched, trailers included, but gRPC clients keep no cookies:
    /// their calls get no session.
    #[serde(default)]
    pub app_protocol: AppProtocol,
}

/// How the sidecar speaks to the app.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 (default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http1 => "http1",
            AppProtocol::H2c => "h2c",
        }
    }
}

/// Where each session's newest sealed state is also kept.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// On the session's rendezvous successor (default).
    #[default]
    Successor,
    /// Nowhere: the client's cookie only.
    Off,
}

impl BackupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Successor => "successor",
            BackupMode::Off => "off",
        }
    }
}

/// Log level.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational (default).
    #[default]
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

/// The pool's Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Service session affinity. `None` (default) is right for handover: any member can serve
    /// any session.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

/// Service type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Cluster-internal virtual IP (default).
    #[default]
    ClusterIP,
    /// Also exposed on every node's port.
    NodePort,
    /// Also exposed through a cloud load balancer.
    LoadBalancer,
}

/// Service session affinity.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SessionAffinity {
    /// No affinity (default).
    #[default]
    None,
    /// Route a client IP to the same pod while it lives.
    ClientIP,
}

/// Observed state of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the pool serves (valid spec, keys present, at least one ready member).
    /// `Degraded`: something needs attention (see its message).
    #[serde(default)]
    pub conditions: Vec<Condition>,

    /// The pool's pods, sorted by name: the registry the sidecars read. Only members with
    /// `ready: true` receive sessions.
    #[serde(default)]
    pub members: Vec<Member>,

    /// Number of members with `ready: true`.
    #[serde(default)]
    pub ready_members: i32,

    /// Number of members.
    #[serde(default)]
    pub total_members: i32,

    /// Name of the pool's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// One pod of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// Pod IP, once assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The pod is Ready, has an IP and is not terminating.
    pub ready: bool,
    /// Port of the pod's own sidecar (its data listener), as injected: during a rollout of a
    /// change of `spec.sidecarPort` old and new pods listen on different ports. Absent when the
    /// pod's sidecar declares none; peers then use `spec.sidecarPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_port: Option<i32>,
    /// Port of the pod's own sidecar admin listener (`/live`, which peers probe), as injected.
    /// Absent when the pod's sidecar declares none; peers then use their own admin port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_port: Option<i32>,
    /// When `ready` last changed (the pod's Ready condition transition), or when the pod was
    /// created if it never reported readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

fn default_port() -> i32 {
    80
}
fn default_sidecar_port() -> i32 {
    8000
}
fn default_admin_port() -> i32 {
    9901
}
fn default_true() -> bool {
    true
}
fn default_cookie_max_age() -> String {
    "12h".to_owned()
}
fn default_cookie_absolute_timeout() -> String {
    "0s".to_owned()
}
fn default_cookie_max_bytes() -> i32 {
    16384
}
fn default_max_response_header_bytes() -> i32 {
    4096
}
fn default_inline_state_bytes() -> i32 {
    256
}

fn default_max_request_header_bytes() -> i32 {
    8192
}
fn default_backup_max_bytes() -> i64 {
    32 << 20
}
fn default_snapshot_interval() -> String {
    "1s".to_owned()
}
fn default_state_path() -> String {
    "/handover/state".to_owned()
}
fn default_drain_grace() -> String {
    "20s".to_owned()
}
fn default_cookie_path() -> String {
    "/".to_owned()
}
fn default_state_port() -> i32 {
    8081
}
fn default_response_timeout() -> String {
    "60s".to_owned()
}
fn default_keepalive_timeout() -> String {
    "75s".to_owned()
}

impl Default for CookieSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            max_age: default_cookie_max_age(),
            absolute_timeout: default_cookie_absolute_timeout(),
            secure: true,
            same_site: SameSite::default(),
            max_bytes: default_cookie_max_bytes(),
            max_response_header_bytes: default_max_response_header_bytes(),
            max_request_header_bytes: default_max_request_header_bytes(),
            inline_state_bytes: default_inline_state_bytes(),
            compress: true,
            path: default_cookie_path(),
            domain: String::new(),
        }
    }
}

impl Default for SnapshotSpec {
    fn default() -> Self {
        Self {
            mode: SnapshotMode::default(),
            interval: default_snapshot_interval(),
            state_path: default_state_path(),
            state_port: default_state_port(),
        }
    }
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self {
            image: None,
            resources: None,
            log_level: LogLevel::default(),
            drain_grace: default_drain_grace(),
            response_timeout: default_response_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            backup: BackupMode::default(),
            backup_max_bytes: default_backup_max_bytes(),
            app_protocol: AppProtocol::default(),
        }
    }
}

impl ServerPoolSpec {
    /// A spec with every default and the given app port.
    pub fn with_app_port(app_port: i32) -> Self {
        Self {
            app_port,
            port: default_port(),
            sidecar_port: default_sidecar_port(),
            admin_port: default_admin_port(),
            selector: None,
            cookie: CookieSpec::default(),
            snapshot: SnapshotSpec::default(),
            affinity: Affinity::default(),
            key_secret_name: None,
            key_rotation: KeyRotationSpec::default(),
            sidecar: SidecarSpec::default(),
            service: ServiceSpec::default(),
            network_policy: NetworkPolicySpec::default(),
        }
    }
}

impl SameSite {
    /// The attribute value as the sidecar flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

impl SnapshotMode {
    /// The mode as the sidecar flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Push => "push",
            SnapshotMode::Pull => "pull",
            SnapshotMode::Both => "both",
        }
    }
}

impl Affinity {
    /// The affinity as the sidecar flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Forward => "forward",
            Affinity::Takeover => "takeover",
        }
    }
}

impl LogLevel {
    /// The level as the sidecar flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The CRD as YAML: what `handover-operator crd` prints and `crds/serverpool.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(&ServerPool::crd())?;
    Ok(format!("# Generated by `handover-operator crd` from operator/src/crd.rs. Do not edit.\n---\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = include_str!("../../crds/serverpool.yaml");

    #[test]
    fn checked_in_crd_matches_the_rust_types() {
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            generated == CHECKED_IN,
            "crds/serverpool.yaml is out of date; regenerate it with:\n  cargo run -q -p handover-operator -- crd > crds/serverpool.yaml"
        );
    }

    #[test]
    fn crd_has_status_subresource_printer_columns_and_cel_rules() {
        let crd = serde_json::to_value(ServerPool::crd()).expect("json");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Members", "Age"]);
        let text = crd.to_string();
        assert!(text.contains("self.appPort != self.sidecarPort"));
        assert!(text.contains("x-kubernetes-validations"));
        assert_eq!(crd["spec"]["scope"], "Namespaced");
    }

    #[test]
    fn every_schema_property_is_documented() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, sub) in props {
                    let here = format!("{path}.{name}");
                    // Types from k8s-openapi (resources, conditions) carry their own docs.
                    if sub.get("description").is_none() && !path.contains(".conditions") {
                        missing.push(here.clone());
                    }
                    walk(&here, sub, missing);
                }
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let crd = serde_json::to_value(ServerPool::crd()).expect("json");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", &schema["properties"]["spec"], &mut missing);
        walk("", &schema["properties"]["status"], &mut missing);
        assert!(missing.is_empty(), "undocumented fields: {missing:?}");
    }

    #[test]
    fn the_example_pool_parses_and_is_valid() {
        let text = include_str!("../examples/serverpool.yaml");
        let pool: ServerPool = serde_saphyr::from_str(text).expect("example parses");
        assert_eq!(pool.metadata.name.as_deref(), Some("cart"));
        assert_eq!(pool.spec.key_rotation.period.as_deref(), Some("720h"));
        assert!(pool.spec.sidecar.resources.is_some());
        assert_eq!(
            crate::validate::validate(&pool, "img", &crate::validate::ImageAllowList::new(Vec::new(), "img")),
            []
        );
    }

    #[test]
    fn minimal_spec_gets_documented_defaults() {
        let pool: ServerPoolSpec = serde_json::from_value(serde_json::json!({"appPort": 8080})).expect("parses");
        assert_eq!(pool, ServerPoolSpec::with_app_port(8080));
        assert_eq!(pool.port, 80);
        assert_eq!(pool.sidecar_port, 8000);
        assert_eq!(pool.admin_port, 9901);
        assert_eq!(pool.cookie.max_age, "12h");
        assert_eq!(pool.cookie.absolute_timeout, "0s", "no absolute timeout unless asked");
        assert_eq!(pool.snapshot.mode, SnapshotMode::Both);
        assert_eq!(pool.sidecar.drain_grace, "20s");
    }
}
