//! The sidecar's Prometheus metrics. Every name carries the `handover_` prefix and is described
//! once, here.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100µs .. ~6.5s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Label, Counter>,
    pub request_seconds: HistogramFamily<Label>,
    pub restores: Family<Label, Counter>,
    pub takeovers: Counter,
    pub forwards: Family<Labels2, Counter>,
    pub peer_probes: Family<Label, Counter>,
    pub cookie_rejects: Family<Label, Counter>,
    pub sessions_reset: Family<Label, Counter>,
    pub sessions_left: Family<Labels2, Counter>,
    pub snapshots: Family<Label, Counter>,
    pub snapshot_bytes: Histogram,
    pub over_budget: Counter,
    pub ended_not_remembered: Counter,
    pub made_private: Counter,
    pub app_waits: Family<Label, Counter>,
    pub bad_requests: Family<Label, Counter>,
    pub connections_refused: Family<Label, Counter>,
    pub key_reload_errors: Counter,
    pub sessions: Gauge,
    pub registry_members: Gauge,
    pub draining: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("handover");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            restores: Family::default(),
            takeovers: Counter::default(),
            forwards: Family::default(),
            peer_probes: Family::default(),
            cookie_rejects: Family::default(),
            sessions_reset: Family::default(),
            sessions_left: Family::default(),
            snapshots: Family::default(),
            snapshot_bytes: Histogram::new(exponential_buckets(64.0, 2.0, 10)),
            over_budget: Counter::default(),
            ended_not_remembered: Counter::default(),
            made_private: Counter::default(),
            app_waits: Family::default(),
            bad_requests: Family::default(),
            connections_refused: Family::default(),
            key_reload_errors: Counter::default(),
            sessions: Gauge::default(),
            registry_members: Gauge::default(),
            draining: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests by route: new, serve, restore, takeover, forward", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            m.request_seconds.clone(),
        );
        registry.register(
            "restores",
            "Restores into the local app, by result (ok, retried, refused, failed)",
            m.restores.clone(),
        );
        registry.register("takeovers", "Sessions taken over from a dead or unreachable owner", m.takeovers.clone());
        registry.register(
            "forwards",
            "Requests forwarded to a peer, by reason (owner, successor) and result (ok, unreachable, failed)",
            m.forwards.clone(),
        );
        registry.register(
            "peer_probes",
            "Liveness probes of peers after a failed or slow forward, by result (alive, dead, unknown)",
            m.peer_probes.clone(),
        );
        registry.register("cookie_rejects", "State cookies refused, by reason", m.cookie_rejects.clone());
        registry.register(
            "sessions_reset",
            "Requests that presented a state cookie but went on without its session, by reason (expired, refused_by_app, ended, wrong_pool, incomplete, tampered, unknown_key, garbage, unsupported_version)",
            m.sessions_reset.clone(),
        );
        registry.register(
            "sessions_left",
            "Sessions the app was told had left it (DELETE <statePath>), by reason (expired, moved, rotated) and result (ok, failed)",
            m.sessions_left.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots sealed into cookies, by source (push, pull, carry, refresh)",
            m.snapshots.clone(),
        );
        registry.register("snapshot_bytes", "Size of sealed state cookies, all chunks", m.snapshot_bytes.clone());
        registry.register(
            "state_over_budget",
            "States too large for the cookie budget (not sealed)",
            m.over_budget.clone(),
        );
        registry.register(
            "ended_not_remembered",
            "Ended sessions not remembered because the sidecar already remembers its maximum (a replay of their cookies is not refused)",
            m.ended_not_remembered.clone(),
        );
        registry.register(
            "responses_made_private",
            "Responses a shared cache could have stored with a state cookie, made private (Cache-Control: private)",
            m.made_private.clone(),
        );
        registry.register(
            "app_waits",
            "Requests held while the local app was down, by result (ok, timeout, over_cap)",
            m.app_waits.clone(),
        );
        registry.register(
            "bad_requests",
            "Requests refused or cut off, by reason (headers_too_large, state_path, forged_forward, body_timeout, app_timeout, bad_pushed_state)",
            m.bad_requests.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener (data, admin) was at its connection cap",
            m.connections_refused.clone(),
        );
        registry.register(
            "key_reload_errors",
            "Key file reloads refused (the previous ring stays)",
            m.key_reload_errors.clone(),
        );
        registry.register("sessions", "Sessions in the local session table", m.sessions.clone());
        registry.register("registry_members", "Live members in this sidecar's registry", m.registry_members.clone());
        registry.register("draining", "1 while the sidecar drains after SIGTERM", m.draining.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
