//! The sidecar's Prometheus metrics. Every name carries the `handover_` prefix and is described
//! once, here.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];
/// The labels of a family with one label of typed values (`BadRequest`, `Route`).
pub type Typed<V> = [(&'static str, V); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A label value from a fixed set: an enum whose variants are written as the given strings.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order (`value as usize` indexes it).
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The label value, as the metric shows it.
            pub fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.label())
            }
        }
    };
}

label_values! {
    /// What became of a request: the `route` label of `handover_requests_total` and
    /// `handover_request_duration_seconds`.
    Route {
        /// No session cookie: a fresh session id, served here.
        New => "new",
        /// The local app holds the session.
        Serve => "serve",
        /// This pod owns the session; its app had lost it and got it back from the cookie.
        Restore => "restore",
        /// The owner is dead or unlisted: this pod restored the session and owns it now.
        Takeover => "takeover",
        /// Forwarded to the owner's (or the successor's) sidecar.
        Forward => "forward",
        /// Answered by the sidecar itself with an error.
        Refused => "refused",
        /// A peer's backup call (keep or hand out a session's newest sealed state).
        Backup => "backup",
    }
}

label_values! {
    /// Why a request was refused or cut off: the `reason` label of `handover_bad_requests_total`.
    BadRequest {
        /// A request head (target and header fields) over `--max-header-bytes` (431).
        HeadersTooLarge => "headers_too_large",
        /// A request target alone over `--max-header-bytes` (414).
        UriTooLong => "uri_too_long",
        /// A request whose head would take the request heads in flight past
        /// `--max-header-bytes-in-flight` (503).
        HeadsInFlight => "heads_in_flight",
        /// An HTTP/2 stream, or an upload that hyper serves, refused at the connection cap, whose
        /// slots they take as connections do (503).
        OverCap => "over_cap",
        /// A client asked for the app's state endpoint (404).
        StatePath => "state_path",
        /// No host, two Host fields, or one that names no host (400).
        BadHost => "bad_host",
        /// A forward mark that did not verify (dropped; the request is routed as a client's).
        ForgedForward => "forged_forward",
        /// A field that spells one the sidecar sets (`Handover-*`, `X-Forwarded-For`/`-Proto`)
        /// with `_` for `-`, as a CGI-style gateway would read it for the sidecar's (dropped).
        SpoofedField => "spoofed_field",
        /// A request head begun but not whole within `--header-timeout` (connection closed).
        HeaderTimeout => "header_timeout",
        /// A request body too slow (idle or past its deadline).
        BodyTimeout => "body_timeout",
        /// A request body that broke off or whose framing did not parse (400).
        BadBody => "bad_body",
        /// A request head that does not parse: hyper answers it (400; past its own limits, a 431
        /// or a 414, counted as `headers_too_large` and `uri_too_long`).
        Malformed => "malformed",
        /// A `CONNECT` request: a tunnel no app serves (501).
        Connect => "connect",
        /// The asterisk target (`*`) for another method than `OPTIONS` (400).
        BadTarget => "bad_target",
        /// `/drain` on the admin port without the pod's drain token (403).
        DrainToken => "drain_token",
        /// A request body in a transfer coding besides chunked (501).
        TransferCoding => "transfer_coding",
        /// A response the client took no byte of within `--send-timeout` (connection closed).
        SendTimeout => "send_timeout",
        /// The app did not answer within `--response-timeout` (504).
        AppTimeout => "app_timeout",
        /// The app pushed a Handover-State that is not base64url (ignored).
        BadPushedState => "bad_pushed_state",
    }
}

/// A counter family whose label values on the request path are resolved once, up front: `inc`
/// finds the value's counter by comparing a few short strings, where `Family::get_or_create`
/// hashes the labels under a lock (~500 instructions, twice a request before). A value outside
/// the set still counts, through the family.
pub struct LabeledCounters {
    family: Family<Label, Counter>,
    name: &'static str,
    resolved: Vec<(&'static str, Counter)>,
}

impl LabeledCounters {
    fn new(name: &'static str, values: &[&'static str]) -> LabeledCounters {
        let family = Family::<Label, Counter>::default();
        let resolved = values.iter().map(|&v| (v, family.get_or_create(&[(name, v)]).clone())).collect();
        LabeledCounters { family, name, resolved }
    }

    pub fn inc(&self, value: &'static str) {
        match self.resolved.iter().find(|(v, _)| *v == value) {
            Some((_, counter)) => counter.inc(),
            None => self.family.get_or_create(&[(self.name, value)]).inc(),
        };
    }
}

fn latency_histogram() -> Histogram {
    // 100µs .. ~6.5s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Typed<Route>, Counter>,
    pub request_seconds: HistogramFamily<Typed<Route>>,
    pub restores: Family<Label, Counter>,
    pub takeovers: Counter,
    pub forwards: Family<Labels2, Counter>,
    pub peer_probes: Family<Label, Counter>,
    pub peer_checks: Family<Label, Counter>,
    pub cookie_rejects: Family<Label, Counter>,
    pub sessions_reset: Family<Label, Counter>,
    pub sessions_left: Family<Labels2, Counter>,
    pub snapshots: LabeledCounters,
    pub snapshot_bytes: Histogram,
    pub response_header_bytes: Histogram,
    pub seals_refused: Family<Label, Counter>,
    pub backups_sent: LabeledCounters,
    pub backups_received: Family<Label, Counter>,
    pub backup_lookups: Family<Label, Counter>,
    pub backups_evicted: Counter,
    pub backups_kept: Gauge,
    pub backup_bytes: Gauge,
    pub drain_handovers: Family<Label, Counter>,
    pub peers_reachable: Gauge,
    pub ended_not_remembered: Counter,
    pub sessions_evicted: Counter,
    pub app_restarts: Counter,
    pub made_private: Counter,
    pub app_waits: Family<Label, Counter>,
    pub app_connect_failures: LabeledCounters,
    pub bad_requests: Family<Typed<BadRequest>, Counter>,
    pub connections_refused: Family<Label, Counter>,
    /// Requests whose client gave up before their answer began (an HTTP/2 stream reset).
    pub requests_abandoned: Counter,
    pub key_reload_errors: Counter,
    /// Failed attempts of the registry's ServerPool watch (`--registry kubernetes`).
    pub registry_watch_errors: Counter,
    pub sessions: Gauge,
    pub registry_members: Gauge,
    pub draining: Gauge,
    /// `requests` and `request_seconds` of each route (indexed by `Route as usize`), and the
    /// body-timeout counter every request body carries, looked up once: a request adds to them
    /// without the families' lock and label hashing.
    per_route: Vec<(Counter, Histogram)>,
    pub body_timeouts: Counter,
    /// `handover_bad_requests_total{reason="bad_body"}`, resolved once: every request body carries it too.
    pub bad_bodies: Counter,
    /// `handover_bad_requests_total{reason="send_timeout"}`, resolved once.
    pub send_timeouts: Counter,
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
            peer_checks: Family::default(),
            cookie_rejects: Family::default(),
            sessions_reset: Family::default(),
            sessions_left: Family::default(),
            snapshots: LabeledCounters::new("source", &["push", "pull", "carry", "refresh"]),
            snapshot_bytes: Histogram::new(exponential_buckets(128.0, 2.0, 10)),
            response_header_bytes: Histogram::new(exponential_buckets(256.0, 2.0, 10)),
            seals_refused: Family::default(),
            backups_sent: LabeledCounters::new(
                "result",
                &["ok", "older", "too_large", "no_successor", "refused", "failed"],
            ),
            backups_received: Family::default(),
            backup_lookups: Family::default(),
            backups_evicted: Counter::default(),
            backups_kept: Gauge::default(),
            backup_bytes: Gauge::default(),
            drain_handovers: Family::default(),
            peers_reachable: Gauge::default(),
            ended_not_remembered: Counter::default(),
            sessions_evicted: Counter::default(),
            app_restarts: Counter::default(),
            made_private: Counter::default(),
            app_waits: Family::default(),
            app_connect_failures: LabeledCounters::new("reason", &["refused", "timeout", "local", "handshake"]),
            bad_requests: Family::default(),
            connections_refused: Family::default(),
            requests_abandoned: Counter::default(),
            key_reload_errors: Counter::default(),
            registry_watch_errors: Counter::default(),
            sessions: Gauge::default(),
            registry_members: Gauge::default(),
            draining: Gauge::default(),
            registry: Registry::default(),
            per_route: Vec::new(),
            body_timeouts: Counter::default(),
            bad_bodies: Counter::default(),
            send_timeouts: Counter::default(),
        };
        let per_route = Route::ALL
            .iter()
            .map(|&route| {
                let labels = [("route", route)];
                (m.requests.get_or_create(&labels).clone(), m.request_seconds.get_or_create(&labels).clone())
            })
            .collect();
        let body_timeouts = m.bad_requests.get_or_create(&[("reason", BadRequest::BodyTimeout)]).clone();
        let bad_bodies = m.bad_requests.get_or_create(&[("reason", BadRequest::BadBody)]).clone();
        let send_timeouts = m.bad_requests.get_or_create(&[("reason", BadRequest::SendTimeout)]).clone();
        registry.register(
            "requests",
            "Requests by route: new, serve, restore, takeover, forward, refused, backup",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            m.request_seconds.clone(),
        );
        registry.register(
            "restores",
            "Restores into the local app, by result (ok, retried, refused, failed; from_backup: the backup was newer than the cookie)",
            m.restores.clone(),
        );
        registry.register("takeovers", "Sessions taken over from a dead or unreachable owner", m.takeovers.clone());
        registry.register(
            "forwards",
            "Requests forwarded to a peer, by reason (owner, successor, holder, reader) and result (ok, unreachable, failed)",
            m.forwards.clone(),
        );
        registry.register(
            "peer_probes",
            "Liveness probes of peers after a failed or slow forward, by result (alive, dead, unknown)",
            m.peer_probes.clone(),
        );
        registry.register(
            "peer_checks",
            "Probes of a peer's /live before a new connection to it, that its listed pod is at its address, by result (the_peer, not_the_peer, unsure)",
            m.peer_checks.clone(),
        );
        registry.register("cookie_rejects", "State cookies refused, by reason", m.cookie_rejects.clone());
        registry.register(
            "sessions_reset",
            "Requests that presented a state cookie but went on without its session, by reason (expired, refused_by_app, ended, wrong_pool, incomplete — the state in no copy —, tampered, unknown_key, garbage, unsupported_version)",
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
            m.snapshots.family.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Bytes of a session's cookies (route and state chunks) as the client sends them back, per seal: how close sessions are to --max-request-header-bytes",
            m.snapshot_bytes.clone(),
        );
        registry.register(
            "response_header_bytes",
            "Bytes of a sealing response's header block with the session's cookies: how close sessions are to --max-response-header-bytes",
            m.response_header_bytes.clone(),
        );
        registry.register(
            "seals_refused",
            "States not sealed into the client's cookies, by reason (response_headers, request_header, client_carry, one_cookie, max_bytes, state_bytes); the client keeps its previous cookies",
            m.seals_refused.clone(),
        );
        registry.register(
            "backups_sent",
            "Sealed states handed to the session's successor before the response left, by result (ok, refused, failed, no_successor; successor_dead: found dead by a probe, successor_leaving: it answered that it drains; the next successor tried; lagging_ok, lagging_failed: also handed to the successor a registry that lags behind a membership change would pick)",
            m.backups_sent.family.clone(),
        );
        registry.register(
            "backups_received",
            "Backups peers handed to this sidecar, by result (stored, older, too_large, bad_body; leaving: refused while this pod drains)",
            m.backups_received.clone(),
        );
        registry.register(
            "backup_lookups",
            "Backups asked of peers at a restore, by result (found, none; held: the peer holds the session, or takes it over too and comes first; taking: it takes it over too and comes later)",
            m.backup_lookups.clone(),
        );
        registry.register(
            "backups_evicted",
            "Backups dropped, oldest first, to stay within --backup-max-bytes",
            m.backups_evicted.clone(),
        );
        registry.register("backups_kept", "Backups this sidecar keeps for its peers' sessions", m.backups_kept.clone());
        registry.register("backup_bytes", "Bytes of the backups this sidecar keeps", m.backup_bytes.clone());
        registry.register(
            "drain_handovers",
            "Sessions of the table handed to their successors at the drain (a final snapshot), by result (ok, no_state, gone, pull_failed, too_large, not_kept, no_successor, over_grace)",
            m.drain_handovers.clone(),
        );
        registry.register(
            "peers_reachable",
            "0 while this sidecar saw a peer it could not reach (a probe answered unknown, a backup could not connect) in the last minute, else 1 (see the pod condition handover.dev/PeersReachable)",
            m.peers_reachable.clone(),
        );
        registry.register(
            "ended_not_remembered",
            "Ended sessions not remembered because the sidecar already remembers its maximum (a replay of their cookies is not refused)",
            m.ended_not_remembered.clone(),
        );
        registry.register(
            "app_restarts",
            "Restarts of the local app seen by a new Handover-Instance id (its sessions are checked or restored)",
            m.app_restarts.clone(),
        );
        registry.register(
            "sessions_evicted",
            "Sessions dropped from the session table, least recently used first, to stay within --max-sessions (each is checked with the app or restored on its next request)",
            m.sessions_evicted.clone(),
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
            "app_connect_failures",
            "New connections to the local app that failed, by reason: refused (nothing listens: the app is down, its sessions forgotten), timeout (its accept queue full, or hung), local (this sidecar out of descriptors or ports), handshake (h2c)",
            m.app_connect_failures.family.clone(),
        );
        registry.register(
            "bad_requests",
            "Requests refused or cut off, by reason (headers_too_large, uri_too_long, malformed, heads_in_flight, over_cap, state_path, bad_host, forged_forward, spoofed_field, header_timeout, body_timeout, bad_body, connect, bad_target, drain_token, transfer_coding, send_timeout, app_timeout, bad_pushed_state)",
            m.bad_requests.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener (data, admin) was at its connection cap",
            m.connections_refused.clone(),
        );
        registry.register(
            "requests_abandoned",
            "Requests whose client gave up before their answer began (an HTTP/2 stream reset mid-body or while it waited): what the sidecar was doing for them (the app's exchange, a forward) is dropped",
            m.requests_abandoned.clone(),
        );
        registry.register(
            "key_reload_errors",
            "Key file reloads refused (the previous ring stays)",
            m.key_reload_errors.clone(),
        );
        registry.register(
            "registry_watch_errors",
            "Failed attempts to list or watch the pool's ServerPool (API server unreachable, 403, 429, 5xx); the last members stay in force meanwhile",
            m.registry_watch_errors.clone(),
        );
        registry.register("sessions", "Sessions in the local session table", m.sessions.clone());
        registry.register("registry_members", "Live members in this sidecar's registry", m.registry_members.clone());
        registry.register("draining", "1 while the sidecar drains after SIGTERM", m.draining.clone());
        Metrics { registry, per_route, body_timeouts, bad_bodies, send_timeouts, ..m }
    }
}

impl Metrics {
    /// Counts a request answered after `seconds`, by the route it took.
    pub fn request_done(&self, route: Route, seconds: f64) {
        let (count, latency) = &self.per_route[route as usize];
        count.inc();
        latency.observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_labels_are_written_as_their_names() {
        let m = Metrics::default();
        m.requests.get_or_create(&[("route", Route::Takeover)]).inc();
        m.bad_requests.get_or_create(&[("reason", BadRequest::HeadersTooLarge)]).inc();
        m.request_done(Route::Forward, 0.001);
        m.body_timeouts.inc();
        let page = m.encode();
        assert!(page.contains(r#"handover_requests_total{route="takeover"} 1"#), "{page}");
        assert!(page.contains(r#"handover_requests_total{route="forward"} 1"#), "{page}");
        assert!(page.contains(r#"handover_request_duration_seconds_count{route="forward"} 1"#), "{page}");
        assert!(page.contains(r#"handover_bad_requests_total{reason="body_timeout"} 1"#), "{page}");
        assert!(page.contains(r#"handover_bad_requests_total{reason="headers_too_large"} 1"#), "{page}");
    }

    #[test]
    fn resolved_label_values_and_others_count_alike() {
        let m = Metrics::default();
        m.snapshots.inc("push");
        m.snapshots.inc("push");
        m.backups_sent.inc("successor_dead");
        let page = m.encode();
        assert!(page.contains(r#"handover_snapshots_total{source="push"} 2"#), "{page}");
        assert!(page.contains(r#"handover_snapshots_total{source="pull"} 0"#), "{page}");
        assert!(page.contains(r#"handover_backups_sent_total{result="successor_dead"} 1"#), "{page}");
    }
}
