//! The data path: a reverse proxy that routes each request by its state cookie, restores sessions
//! into the local app, and seals the app's newest state into the response.
//!
//! This module carries bytes and carries out decisions; [`crate::decide`] makes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::cache;
use crate::cookie::{self, Budget, Owner, Snapshot};
use crate::decide::{self, Affinity, Decision, ForwardReason, Me, Mode};
use crate::keys::KeyFile;
use crate::metrics::Metrics;
use crate::peer_auth;
use crate::peer_probe::{self, Liveness};
use crate::registry::{Member, Registry};
use crate::timed_body::{BodyLimits, TimedBody};
use crate::upstream::{Body, Upstreams};

/// The session id the app sees on every forwarded request.
pub const SESSION_HEADER: &str = "handover-session";
/// Where the app pushes its state on a response.
pub const STATE_HEADER: &str = "handover-state";
/// On an app's response: give this session a new id (at login, against session fixation). The
/// sidecar moves the state to the new id, tells the app the old one left, and seals the new one.
pub const ROTATE_HEADER: &str = "handover-rotate";
/// Set on a response whose state could not be sealed.
pub const WARNING_HEADER: &str = "handover-warning";
/// Marks a request forwarded by a peer sidecar (loop guard), signed: [`peer_auth`].
pub const FORWARDED_HEADER: &str = "handover-forwarded";
/// On a response to an authenticated forward: the answering pod. A forwarded response without it
/// came from something in between (a mesh proxy answering for a peer it could not reach).
pub const PEER_HEADER: &str = "handover-peer";

/// Shards of the per-session restore lock.
const RESTORE_SHARDS: usize = 64;
/// How long a peer that failed to answer counts as dead to this sidecar.
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);
/// How often the app watcher re-tries a down app; held requests wake on its news.
const APP_RETRY_EVERY: Duration = Duration::from_millis(25);
/// A held request re-checks the app itself at least this often (in case the watcher's own
/// connection hides a problem only new connections have).
const HELD_RECHECK_EVERY: Duration = Duration::from_millis(250);
/// Forwards tried for one request before giving up: one per member that turns out dead, plus one.
const EXTRA_FORWARD_ATTEMPTS: usize = 1;
/// Times a request is routed again because the app may have restarted while it was held.
const MAX_APP_RECHECKS: usize = 2;
/// Times a request the app's closing connection never took is sent again.
const MAX_RESENDS: usize = 4;
/// Restores tried for one request when the app fails (5xx, timeout): a passing hiccup is hidden
/// from the client, a lasting one answers 502 within `RESTORE_ATTEMPTS` × `--state-timeout`.
const RESTORE_ATTEMPTS: usize = 3;
/// Ended sessions a sidecar remembers at most (about 100 bytes each).
const MAX_ENDED: usize = 100_000;
/// The pause before the next restore attempt, times the attempts so far.
const RESTORE_RETRY_AFTER: Duration = Duration::from_millis(50);

/// Cookie name, attributes and budget.
#[derive(Clone, Debug)]
pub struct CookieConfig {
    pub attrs: crate::cookie_attrs::Attrs,
    pub max_age: Duration,
    pub max_bytes: usize,
}

/// Everything the proxy is told at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    /// `namespace/name`: cookies are bound to it.
    pub pool: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// This sidecar's data address as peers reach it (written into cookies for operators).
    pub advertise: String,
    pub app: SocketAddr,
    /// Where the app answers `GET`/`PUT <statePath>`: apart from `app`, on the pod's loopback, so
    /// no client request can ever reach it (the sidecar forwards clients to `app` only).
    pub state_addr: SocketAddr,
    /// The admin port of every sidecar of the pool (liveness probes of peers).
    pub peer_admin_port: u16,
    pub mode: Mode,
    pub snapshot_interval: Duration,
    pub state_path: String,
    pub cookie: CookieConfig,
    pub affinity: Affinity,
    /// How long a request is held while the local app is down.
    pub app_wait: Duration,
    pub connect_timeout: Duration,
    /// A forward waiting this long for its response gets its peer probed (and again every such
    /// period): only the probe can make the peer count as dead.
    pub peer_probe_after: Duration,
    /// How long a liveness probe of a peer may take.
    pub probe_timeout: Duration,
    /// Longest wait for response headers from the app or a peer (`None`: no limit, for
    /// long-polls and event streams).
    pub response_timeout: Option<Duration>,
    /// Longest wait for the app's answer to a state call (`GET`/`PUT <statePath>`).
    pub state_timeout: Duration,
    pub max_header_bytes: usize,
    /// Client request bodies: idle timeout and total deadline.
    pub body: BodyLimits,
    /// Requests held at once while the app is down; more are refused with 503.
    pub max_held: usize,
    /// Largest state (uncompressed) sealed or restored.
    pub max_state_bytes: usize,
}

/// What the sidecar knows about a session the local app holds.
#[derive(Clone, Copy, Debug)]
struct Local {
    version: u64,
    sealed_at: Option<Instant>,
}

/// The proxy's shared state.
pub struct Proxy {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    keys: Arc<KeyFile>,
    registry: Arc<dyn Registry>,
    sessions: Mutex<HashMap<String, Local>>,
    restore_locks: Vec<tokio::sync::Mutex<()>>,
    unreachable: Mutex<HashMap<String, Instant>>,
    /// Sessions the app ended (an empty state) or rotated away from, until their cookies expire: a
    /// copy of such a cookie, replayed to this pod, starts a fresh session instead of bringing the
    /// old state back. This pod's own knowledge only (see the README's known limits).
    ended: Mutex<HashMap<String, Instant>>,
    upstreams: Upstreams,
    draining_since: Mutex<Option<Instant>>,
    /// Whether the app answers; held requests wait on changes of it.
    app_up: tokio::sync::watch::Sender<bool>,
    held: tokio::sync::Semaphore,
}

/// What became of a request handed to the local app.
enum Served {
    Response(Response<Body>),
    /// The app's connection closed before the request was sent: route it again.
    NotSent(Request<Body>),
}

/// The cookie of a request, opened, and which of its chunks the client holds.
struct RequestCookie {
    snapshot: Option<Snapshot>,
    /// Chunk indices present in the request (bounded by the request's size).
    held_chunks: Vec<usize>,
    /// The cookie opened, but the app refused its state: the request runs as a fresh session and
    /// the response replaces or deletes the cookie.
    dropped: bool,
}

/// What became of a restore.
enum Restored {
    /// The local app already held this version (a concurrent request restored it, or the app
    /// still had it): nothing was sent.
    Already,
    /// The app took the state.
    Done,
    /// The app answered 4xx: this state is not for it.
    Refused,
}

/// What the loop guard concluded about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// From a client (or with a forward mark that did not verify, which was dropped).
    Client,
    /// Forwarded by a peer sidecar of the pool: serve it here.
    Forwarded,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let body = Full::new(Bytes::from(text.into())).map_err(|never| match never {}).boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::PROXY_AUTHORIZATION] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// All `name=value` pairs of the request's Cookie headers.
fn cookie_pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
    cookie::request_pairs(headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()))
}

impl Proxy {
    pub fn new(cfg: Config, keys: Arc<KeyFile>, registry: Arc<dyn Registry>, metrics: Arc<Metrics>) -> Arc<Proxy> {
        let cfg_max_held = cfg.max_held;
        Arc::new(Proxy {
            cfg,
            metrics,
            keys,
            registry,
            sessions: Mutex::new(HashMap::new()),
            restore_locks: (0..RESTORE_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            unreachable: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            upstreams: Upstreams::default(),
            draining_since: Mutex::new(None),
            app_up: tokio::sync::watch::Sender::new(true),
            held: tokio::sync::Semaphore::new(cfg_max_held),
        })
    }

    /// Starts draining: readiness fails, every session's next response gets a fresh snapshot.
    pub fn start_draining(&self) {
        let mut since = self.draining_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            self.metrics.draining.set(1);
        }
    }

    pub fn draining_since(&self) -> Option<Instant> {
        *self.draining_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live members as this sidecar's registry lists them now, sorted by name.
    pub fn registry_members(&self) -> Arc<Vec<crate::registry::Member>> {
        self.registry.live()
    }

    /// Whether the registry has seen the pool (see [`Registry::synced`]).
    pub fn registry_synced(&self) -> Result<(), String> {
        self.registry.synced()
    }

    /// Whether the last contact with the local app succeeded.
    pub fn app_is_up(&self) -> bool {
        *self.app_up.borrow()
    }

    /// The app process went away: it lost every session it held in memory.
    pub fn app_lost(&self) {
        if self.app_up.send_replace(false) {
            tracing::warn!(app = %self.cfg.app, "the app is down; its sessions will be restored from cookies");
        }
        self.forget_sessions();
        self.upstreams.forget(self.cfg.app);
    }

    /// Forgets which sessions the app holds: each one is checked (or restored) on its next request.
    fn forget_sessions(&self) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.clear();
        self.metrics.sessions.set(0);
    }

    fn app_back(&self) {
        if !self.app_up.send_replace(true) {
            tracing::info!(app = %self.cfg.app, "the app is back");
        }
    }

    fn local(&self, session: &str) -> Option<Local> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(session).copied()
    }

    fn set_local(&self, session: &str, local: Local) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.insert(session.to_owned(), local);
        self.metrics.sessions.set(sessions.len() as i64);
    }

    /// Drops sessions not sealed for longer than a cookie lives (their clients' cookies have
    /// expired: they cannot come back) and tells the app each one left (`DELETE <statePath>`), so
    /// its memory does not only grow.
    pub async fn forget_expired_sessions(&self) {
        let max_age = self.cfg.cookie.max_age;
        let expired: Vec<String> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let expired = sessions
                .iter()
                .filter(|(_, l)| l.sealed_at.is_some_and(|t| t.elapsed() >= max_age))
                .map(|(id, _)| id.clone())
                .collect();
            sessions.retain(|_, l| l.sealed_at.is_none_or(|t| t.elapsed() < max_age));
            self.metrics.sessions.set(sessions.len() as i64);
            expired
        };
        {
            let now = Instant::now();
            self.ended.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, until| *until > now);
        }
        for session in expired {
            self.session_left(&session, "expired").await;
        }
    }

    /// Tells the app that a session it holds left it (`DELETE <statePath>`): its cookie expired,
    /// or another pod owns it now. Best effort: an app that misses it keeps a stale entry, so apps
    /// keep an idle expiry of their own too.
    async fn session_left(&self, session: &str, reason: &'static str) {
        let result = match self.state_request(Method::DELETE, session, Bytes::new()).await {
            Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => "ok",
            Ok((status, _)) => {
                tracing::debug!(session, %status, "the app did not take the DELETE of a session that left");
                "failed"
            }
            Err(e) => {
                tracing::debug!(session, error = %e, "could not tell the app a session left");
                "failed"
            }
        };
        self.metrics.sessions_left.get_or_create(&[("reason", reason), ("result", result)]).inc();
    }

    fn unreachable_now(&self) -> Vec<String> {
        let mut map = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        map.keys().cloned().collect()
    }

    fn mark_unreachable(&self, name: &str) {
        let mut map = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(name.to_owned(), Instant::now() + UNREACHABLE_FOR);
    }

    fn budget(&self) -> Budget {
        Budget::for_cookie(&self.cfg.cookie.attrs.name, self.cfg.cookie.max_bytes)
    }

    fn read_cookie(&self, headers: &HeaderMap) -> RequestCookie {
        let pairs = cookie_pairs(headers);
        let name = &self.cfg.cookie.attrs.name;
        let lookup = |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let held_chunks = cookie::held_chunks(name, pairs.iter().map(|(n, _)| *n));
        let opened = cookie::join(name, self.budget(), lookup).and_then(|value| match value {
            None => Ok(None),
            Some(v) => cookie::open_within(&v, &self.cfg.pool, &self.keys.ring(), unix_now(), self.cfg.max_state_bytes)
                .map(Some),
        });
        let snapshot = match opened {
            Ok(s) => s,
            Err(e) => {
                self.metrics.cookie_rejects.get_or_create(&[("reason", e.reason())]).inc();
                // A cookie was presented and its session cannot go on: the request runs without it.
                self.metrics.sessions_reset.get_or_create(&[("reason", reset_reason(&e))]).inc();
                tracing::debug!(reason = e.reason(), error = %e, "state cookie refused; treating it as absent");
                None
            }
        };
        RequestCookie { snapshot, held_chunks, dropped: false }
    }

    /// The loop guard: a request counts as forwarded by a peer only if its mark verifies. Any
    /// other mark is dropped (counted, logged) and the request is routed like any client's.
    fn arrival(
        &self,
        mark: Option<HeaderValue>,
        req: &Request<Body>,
        rc: &RequestCookie,
        client: SocketAddr,
    ) -> Arrival {
        let Some(mark) = mark else { return Arrival::Client };
        let claim = peer_auth::Forward {
            from: "",
            to: &self.cfg.pod_name,
            method: req.method().as_str(),
            path: req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            session: rc.snapshot.as_ref().map(|s| s.session.as_str()).unwrap_or(""),
        };
        match peer_auth::verify(&self.keys.ring(), mark.as_bytes(), &claim, unix_now()) {
            Ok(from) => {
                tracing::debug!(from, "request forwarded by a peer");
                Arrival::Forwarded
            }
            Err(e) => {
                self.metrics.bad_requests.get_or_create(&[("reason", "forged_forward")]).inc();
                tracing::warn!(%client, reason = e.reason(), error = %e, "forward mark refused; routing the request as a client's");
                Arrival::Client
            }
        }
    }

    /// Serves one client (or peer) request. Never fails: every error is a response.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let (route, resp) = self.route_request(req, client).await;
        self.metrics.requests.get_or_create(&[("route", route)]).inc();
        self.metrics.request_seconds.get_or_create(&[("route", route)]).observe(started.elapsed().as_secs_f64());
        resp
    }

    async fn route_request(&self, req: Request<Incoming>, client: SocketAddr) -> (&'static str, Response<Body>) {
        // Boxed once, so that a request the app never received can come back here and be routed again.
        let timeouts = self.metrics.bad_requests.get_or_create(&[("reason", "body_timeout")]).clone();
        let mut req: Request<Body> = req.map(|b| TimedBody::new(b, self.cfg.body, timeouts).boxed());
        let header_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        if header_bytes > self.cfg.max_header_bytes {
            self.metrics.bad_requests.get_or_create(&[("reason", "headers_too_large")]).inc();
            tracing::warn!(%client, header_bytes, limit = self.cfg.max_header_bytes, "request headers too large");
            return (
                "refused",
                text_response(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!(
                        "handover: request headers are {header_bytes} bytes, over the limit of {}\n",
                        self.cfg.max_header_bytes
                    ),
                ),
            );
        }
        if crate::state_path::names_state_path(req.uri().path(), &self.cfg.state_path) {
            self.metrics.bad_requests.get_or_create(&[("reason", "state_path")]).inc();
            tracing::warn!(%client, method = %req.method(), path = req.uri().path(), "a client asked for the state endpoint; refused");
            return ("refused", text_response(StatusCode::NOT_FOUND, "not found\n"));
        }
        let mark = req.headers_mut().remove(FORWARDED_HEADER);
        let rc = self.read_cookie(req.headers());
        let arrival = self.arrival(mark, &req, &rc, client);
        let upgrade = is_upgrade(&req);
        strip_hop_by_hop(req.headers_mut(), upgrade);
        req.headers_mut().remove(SESSION_HEADER);
        req.headers_mut().remove(STATE_HEADER);
        req.headers_mut().remove(PEER_HEADER);
        // Always the address this connection really comes from (a client, a proxy, or a peer).
        append_forwarded_for(req.headers_mut(), client);
        let (route, mut resp) = self.route(req, &rc, arrival, upgrade).await;
        if arrival == Arrival::Forwarded
            && let Ok(v) = HeaderValue::from_str(&self.cfg.pod_name)
        {
            resp.headers_mut().insert(PEER_HEADER, v);
        }
        (route, resp)
    }

    /// Routes a request whose headers have been checked and cleaned: forwards it, or restores
    /// and serves it here.
    async fn route(
        &self,
        mut req: Request<Body>,
        rc: &RequestCookie,
        arrival: Arrival,
        upgrade: bool,
    ) -> (&'static str, Response<Body>) {
        let live = self.registry.live();
        let (mut forward_attempts, mut app_rechecks, mut resends) = (0, 0, 0);
        // Set once the app refused the cookie's state: from then on the request is a fresh session.
        let mut fresh: Option<RequestCookie> = None;
        if let Some(snapshot) = rc.snapshot.as_ref().filter(|s| self.has_ended(&s.session)) {
            // A copy of the cookie of a session that ended here (logout) or rotated (login).
            self.metrics.sessions_reset.get_or_create(&[("reason", "ended")]).inc();
            tracing::info!(session = %snapshot.session, "a cookie of an ended session was presented; a fresh session instead");
            fresh = Some(RequestCookie { snapshot: None, held_chunks: rc.held_chunks.clone(), dropped: true });
        }
        loop {
            let rc = fresh.as_ref().unwrap_or(rc);
            let unreachable = self.unreachable_now();
            let session = rc.snapshot.as_ref().map(|s| s.session.clone());
            let decision = decide::route(decide::Inputs {
                cookie: rc.snapshot.as_ref(),
                local_version: session.as_deref().and_then(|s| self.local(s)).map(|l| l.version),
                live: &live,
                unreachable: &unreachable,
                me: Me { name: &self.cfg.pod_name, uid: &self.cfg.pod_uid },
                forwarded: arrival == Arrival::Forwarded,
                affinity: self.cfg.affinity,
            });
            match decision {
                Decision::Forward { to, reason } => {
                    let reason_label = match reason {
                        ForwardReason::Owner => "owner",
                        ForwardReason::Successor => "successor",
                    };
                    if let Some(moved) = session.as_deref().filter(|s| self.local(s).is_some()) {
                        // This pod's app held the session, but another pod owns it now (it took
                        // it over while this one seemed dead): the local copy is stale for good.
                        self.forget_session(moved);
                        self.session_left(moved, "moved").await;
                    }
                    forward_attempts += 1;
                    match self.upstreams.get(to.addr, self.cfg.connect_timeout).await {
                        Ok(sender) => {
                            let session = rc.snapshot.as_ref().map(|s| s.session.as_str()).unwrap_or("");
                            let resp = self.forward_to_peer(sender, req, &to, session, reason_label, upgrade).await;
                            return ("forward", resp);
                        }
                        Err(e) => {
                            self.metrics
                                .forwards
                                .get_or_create(&[("reason", reason_label), ("result", "unreachable")])
                                .inc();
                            match self.probe_peer(&to, &e.to_string()).await {
                                Liveness::Dead(_) => {}
                                Liveness::Alive => {
                                    return ("refused", peer_not_reached(&to, "it is alive but refused this forward"));
                                }
                                Liveness::Unknown => {
                                    return (
                                        "refused",
                                        peer_not_reached(&to, "it cannot be reached from this pod, and may be alive"),
                                    );
                                }
                            }
                            if forward_attempts > live.len() + EXTRA_FORWARD_ATTEMPTS {
                                return (
                                    "refused",
                                    text_response(StatusCode::BAD_GATEWAY, "handover: no pool member reachable\n"),
                                );
                            }
                            continue;
                        }
                    }
                }
                Decision::New | Decision::Serve | Decision::Restore { .. } => {
                    // The app may be down (restarting): hold the request until it is back.
                    let sender = match self.app_connection().await {
                        Ok((sender, waited)) => {
                            if waited && rc.snapshot.is_some() && app_rechecks < MAX_APP_RECHECKS {
                                // The app may have restarted and lost its sessions: decide again.
                                app_rechecks += 1;
                                self.upstreams.put(self.cfg.app, sender);
                                continue;
                            }
                            sender
                        }
                        Err(resp) => return ("refused", resp),
                    };
                    let (route, owner_changed) = match (&decision, rc.snapshot.as_ref()) {
                        (Decision::Restore { takeover }, Some(snapshot)) => {
                            match self.restore_once(snapshot, *takeover).await {
                                Ok(Restored::Already) => ("serve", false),
                                Ok(Restored::Done) if *takeover => {
                                    self.metrics.takeovers.inc();
                                    tracing::info!(session = %snapshot.session, from = %snapshot.owner.name, version = snapshot.version, "took over session");
                                    ("takeover", true)
                                }
                                Ok(Restored::Done) => ("restore", true),
                                Ok(Restored::Refused) => {
                                    self.upstreams.put(self.cfg.app, sender);
                                    fresh = Some(RequestCookie {
                                        snapshot: None,
                                        held_chunks: rc.held_chunks.clone(),
                                        dropped: true,
                                    });
                                    continue;
                                }
                                Err(resp) => return ("refused", resp),
                            }
                        }
                        (Decision::New, _) => ("new", false),
                        _ => ("serve", false),
                    };
                    match self.serve_locally(sender, req, rc, owner_changed, upgrade).await {
                        Served::Response(resp) => return (route, resp),
                        Served::NotSent(unsent) if resends < MAX_RESENDS => {
                            resends += 1;
                            req = unsent;
                        }
                        Served::NotSent(_) => {
                            return (
                                "refused",
                                text_response(
                                    StatusCode::BAD_GATEWAY,
                                    "handover: the application keeps closing connections\n",
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The `reason` label of `handover_sessions_reset_total` for a cookie that was presented but did
/// not open.
fn reset_reason(e: &cookie::CookieError) -> &'static str {
    use cookie::CookieError as E;
    match e {
        E::Expired => "expired",
        E::WrongPool => "wrong_pool",
        E::UnknownKey(_) => "unknown_key",
        E::MissingChunk(_) | E::OverBudget => "incomplete",
        E::Tampered | E::Malformed => "tampered",
        E::Garbage => "garbage",
        E::UnsupportedVersion(_) => "unsupported_version",
    }
}

/// Whether a failed exchange with the app or a peer was cut by the client's own request body
/// (see [`crate::timed_body`]), not by the other side.
fn cut_by_client(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<crate::timed_body::BodyTimeout>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn body_too_slow() -> Response<Body> {
    let mut resp = text_response(StatusCode::REQUEST_TIMEOUT, "handover: the request body came too slowly\n");
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A forward that could not get through to a peer the probe did not find dead: no takeover (that
/// could fork the session while its owner lives); the client retries.
fn peer_not_reached(to: &Member, why: &str) -> Response<Body> {
    let mut resp = text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("handover: pool member {} owns this session but {why}; retry\n", to.name),
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
}

/// Joins the client's and the upstream's upgraded connections (WebSocket and friends), byte for byte.
fn bridge_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

/// Turns an absolute-form URI into origin form for the next hop.
fn origin_form<B>(req: &mut Request<B>) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        if let Ok(uri) = path.parse() {
            *req.uri_mut() = uri;
        }
    }
}

impl Proxy {
    fn restore_lock(&self, session: &str) -> &tokio::sync::Mutex<()> {
        let shard = session.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
        &self.restore_locks[shard % RESTORE_SHARDS]
    }

    /// Restores `snapshot` into the local app unless a concurrent request of the same session just
    /// did.
    ///
    /// When this pod is the owner (not a takeover), the app may still hold the session — the
    /// sidecar restarted, or only a connection closed — and its copy may be newer than the cookie
    /// (pull mode), so the app is asked first (`GET <statePath>`) and only restored on a miss.
    ///
    /// A 4xx is the app's verdict on the state ([`decide::restore_verdict`]): the state is
    /// dropped (counted, logged with the session id) and the request goes on as a fresh session.
    /// A 5xx, a timeout or a lost connection is tried again, [`RESTORE_ATTEMPTS`] times in all;
    /// then the client gets 502 and keeps its cookie.
    async fn restore_once(&self, snapshot: &Snapshot, takeover: bool) -> Result<Restored, Response<Body>> {
        let _guard = self.restore_lock(&snapshot.session).lock().await;
        if self.local(&snapshot.session).is_some_and(|l| l.version >= snapshot.version) {
            return Ok(Restored::Already);
        }
        if !takeover
            && let Ok((StatusCode::OK, _)) = self.state_request(Method::GET, &snapshot.session, Bytes::new()).await
        {
            self.set_local(&snapshot.session, Local { version: snapshot.version, sealed_at: None });
            return Ok(Restored::Already);
        }
        if !snapshot.state.is_empty() {
            let mut attempt = 1;
            loop {
                let why =
                    match self.state_request(Method::PUT, &snapshot.session, Bytes::from(snapshot.state.clone())).await
                    {
                        Ok((status, body)) => match decide::restore_verdict(status.as_u16()) {
                            decide::RestoreVerdict::Done => break,
                            decide::RestoreVerdict::Refused => {
                                self.restore_refused(snapshot, status, &body);
                                return Ok(Restored::Refused);
                            }
                            decide::RestoreVerdict::Retry => format!("the app answered {status}"),
                        },
                        Err(why) => why,
                    };
                if attempt >= RESTORE_ATTEMPTS {
                    return Err(self.restore_failed(snapshot, &why));
                }
                self.metrics.restores.get_or_create(&[("result", "retried")]).inc();
                tracing::warn!(session = %snapshot.session, attempt, error = %why, "restore failed; trying again");
                tokio::time::sleep(RESTORE_RETRY_AFTER * attempt as u32).await;
                attempt += 1;
            }
        }
        self.metrics.restores.get_or_create(&[("result", "ok")]).inc();
        self.set_local(&snapshot.session, Local { version: snapshot.version, sealed_at: None });
        Ok(Restored::Done)
    }

    /// The app refused the state: counted and logged with the session id, so a lost session can
    /// be traced (the app's own log has the same id).
    fn restore_refused(&self, snapshot: &Snapshot, status: StatusCode, body: &[u8]) {
        self.metrics.restores.get_or_create(&[("result", "refused")]).inc();
        self.metrics.sessions_reset.get_or_create(&[("reason", "refused_by_app")]).inc();
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
        tracing::warn!(
            session = %snapshot.session,
            version = snapshot.version,
            %status,
            app_said = %said,
            "the app refused this session's state; dropped, the request goes on as a fresh session"
        );
    }

    fn restore_failed(&self, snapshot: &Snapshot, why: &str) -> Response<Body> {
        self.metrics.restores.get_or_create(&[("result", "failed")]).inc();
        tracing::error!(session = %snapshot.session, version = snapshot.version, error = why, "restore failed; the client keeps its cookie");
        text_response(
            StatusCode::BAD_GATEWAY,
            format!(
                "handover: the application could not restore this session ({why}); its state is still in your cookie, retry\n"
            ),
        )
    }

    /// A connection to the local app; while it is down, waits up to `app_wait` for it. The flag
    /// says whether the app may have restarted meanwhile (it had to wait, or found closed
    /// connections): then the sessions were forgotten and the request must be routed again.
    ///
    /// At most `max_held` requests wait at once (more get 503 at once); they wake when the app
    /// watcher sees the app back, not by each polling it.
    async fn app_connection(&self) -> Result<(hyper::client::conn::http1::SendRequest<Body>, bool), Response<Body>> {
        // Draining, the app is on its way out (a native sidecar outlives it): no waiting for it.
        let wait = if self.draining_since().is_some() { Duration::ZERO } else { self.cfg.app_wait };
        let deadline = tokio::time::Instant::now() + wait;
        let mut held = None;
        let mut app_up = self.app_up.subscribe();
        loop {
            match self.upstreams.get_noting_closed(self.cfg.app, self.cfg.connect_timeout).await {
                Ok((sender, saw_closed)) => {
                    self.app_back();
                    if held.is_some() {
                        self.metrics.app_waits.get_or_create(&[("result", "ok")]).inc();
                    }
                    if saw_closed {
                        // The app closed connections: it may have restarted; check its sessions.
                        self.forget_sessions();
                    }
                    return Ok((sender, held.is_some() || saw_closed));
                }
                Err(e) => {
                    self.app_lost();
                    if held.is_none() {
                        match self.held.try_acquire() {
                            Ok(permit) => held = Some(permit),
                            Err(_) => {
                                self.metrics.app_waits.get_or_create(&[("result", "over_cap")]).inc();
                                tracing::warn!(
                                    max_held = self.cfg.max_held,
                                    "the app is down and too many requests wait for it; refused"
                                );
                                return Err(text_response(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "handover: the application is restarting; retry\n",
                                ));
                            }
                        }
                        tracing::debug!(error = %e, wait = ?self.cfg.app_wait, "app unreachable; holding the request");
                    }
                    if tokio::time::Instant::now() >= deadline {
                        self.metrics.app_waits.get_or_create(&[("result", "timeout")]).inc();
                        return Err(text_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("handover: the application did not come back within {wait:?}\n"),
                        ));
                    }
                    let recheck = deadline.min(tokio::time::Instant::now() + HELD_RECHECK_EVERY);
                    let _ = tokio::time::timeout_at(recheck, app_up.wait_for(|up| *up)).await;
                }
            }
        }
    }

    async fn serve_locally(
        &self,
        mut sender: hyper::client::conn::http1::SendRequest<Body>,
        mut req: Request<Body>,
        rc: &RequestCookie,
        owner_changed: bool,
        upgrade: bool,
    ) -> Served {
        let session = match &rc.snapshot {
            Some(s) => s.session.clone(),
            None => crate::random::session_id(),
        };
        self.strip_our_cookies(req.headers_mut());
        if let Ok(v) = HeaderValue::from_str(&session) {
            req.headers_mut().insert(SESSION_HEADER, v);
        }
        origin_form(&mut req);
        let method = req.method().clone();
        let authorized = req.headers().contains_key(header::AUTHORIZATION);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let sent = match self.cfg.response_timeout {
            Some(limit) => match tokio::time::timeout(limit, sender.try_send_request(req)).await {
                Ok(sent) => sent,
                Err(_) => {
                    self.metrics.bad_requests.get_or_create(&[("reason", "app_timeout")]).inc();
                    tracing::warn!(session = %session, ?limit, "the app did not answer in time");
                    return Served::Response(text_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("handover: the application did not answer within {limit:?}\n"),
                    ));
                }
            },
            None => sender.try_send_request(req).await,
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // The app closed this connection before taking the request: it may have restarted
                // and lost its sessions, so forget them and route the request again.
                Some(mut unsent) => {
                    self.forget_sessions();
                    if let Some(on_upgrade) = client_upgrade {
                        unsent.extensions_mut().insert(on_upgrade);
                    }
                    return Served::NotSent(unsent);
                }
                None if cut_by_client(e.error()) => return Served::Response(body_too_slow()),
                None => {
                    tracing::warn!(error = %e.error(), "the app failed while answering");
                    return Served::Response(text_response(
                        StatusCode::BAD_GATEWAY,
                        "handover: the application failed while answering\n",
                    ));
                }
            },
        };
        self.upstreams.put(self.cfg.app, sender);

        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                bridge_upgrade(client, hyper::upgrade::on(&mut resp));
            }
            strip_hop_by_hop(resp.headers_mut(), true);
            return Served::Response(resp.map(|b| b.map_err(Into::into).boxed()));
        }

        let (mut parts, body) = resp.into_parts();
        let pushed = parts.headers.remove(STATE_HEADER).and_then(|v| {
            match URL_SAFE_NO_PAD.decode(v.as_bytes().trim_ascii()) {
                Ok(state) => Some(state),
                Err(_) => {
                    self.metrics.bad_requests.get_or_create(&[("reason", "bad_pushed_state")]).inc();
                    tracing::warn!(session = %session, "the app pushed a Handover-State that is not base64url; ignored");
                    None
                }
            }
        });
        strip_hop_by_hop(&mut parts.headers, false);
        let (session, pushed) = match parts.headers.remove(ROTATE_HEADER) {
            Some(_) => match self.rotate_session(&session, pushed).await {
                Ok((new_id, state)) => (new_id, Some(state)),
                Err(pushed) => (session, pushed),
            },
            None => (session, pushed),
        };
        let cookies_before = parts.headers.get_all(header::SET_COOKIE).iter().count();
        self.seal_response(&mut parts.headers, &session, rc, pushed, owner_changed).await;
        let ours = parts.headers.get_all(header::SET_COOKIE).iter().count() > cookies_before;
        let exchange = cache::Exchange { method: &method, authorized, status: parts.status, headers: &parts.headers };
        if ours && cache::shared_cache_may_store(exchange) {
            // A shared cache would hand this client's state cookie to everyone after it.
            cache::make_private(&mut parts.headers);
            self.metrics.made_private.inc();
        }
        if self.draining_since().is_some() {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Served::Response(Response::from_parts(parts, body.map_err(Into::into).boxed()))
    }

    /// Gives session `old` a new id: its state (pushed on this response, else pulled) is put into
    /// the app under the new id, the app is told `old` left (`DELETE <statePath>`), and the
    /// response then seals the new id. The old id counts as ended here: a copy of its cookie (a
    /// fixated one, a replay) starts a fresh session, never the one that rotated. Without a state
    /// to move, or when the app will not take it, nothing changes (the pushed state is handed back).
    async fn rotate_session(&self, old: &str, pushed: Option<Vec<u8>>) -> Result<(String, Vec<u8>), Option<Vec<u8>>> {
        let state = match pushed {
            Some(state) if !state.is_empty() => state,
            Some(empty) => return Err(Some(empty)),
            None => match self.pull_state(old).await {
                Ok(state) if !state.is_empty() => state,
                _ => {
                    tracing::warn!(session = old, "the app asked to rotate a session that has no state; not rotated");
                    return Err(None);
                }
            },
        };
        let new_id = crate::random::session_id();
        match self.state_request(Method::PUT, &new_id, Bytes::from(state.clone())).await {
            Ok((status, _)) if status.is_success() => {}
            outcome => {
                let why = match outcome {
                    Ok((status, _)) => format!("the app answered {status}"),
                    Err(e) => e,
                };
                tracing::warn!(session = old, error = %why, "could not move the state to a new session id; not rotated");
                return Err(Some(state));
            }
        }
        let version = self.local(old).map(|l| l.version).unwrap_or(0);
        self.set_local(&new_id, Local { version, sealed_at: None });
        self.forget_session(old);
        self.mark_ended(old);
        self.session_left(old, "rotated").await;
        tracing::info!(old_session = old, session = %new_id, "session id rotated at the app's request");
        Ok((new_id, state))
    }

    /// Seals the session's newest state into Set-Cookie headers when there is a new one.
    async fn seal_response(
        &self,
        headers: &mut HeaderMap,
        session: &str,
        rc: &RequestCookie,
        pushed: Option<Vec<u8>>,
        owner_changed: bool,
    ) {
        let local = self.local(session);
        let now = Instant::now();
        let pull = decide::should_pull(decide::PullInputs {
            mode: self.cfg.mode,
            pushed: pushed.is_some(),
            last_sealed: local.and_then(|l| l.sealed_at),
            now,
            interval: self.cfg.snapshot_interval,
            draining_since: self.draining_since(),
        });
        let (offered, newest) = match pushed {
            Some(state) => (decide::Offered::Pushed { empty: state.is_empty() }, Some(state)),
            None if pull => match self.pull_state(session).await {
                Ok(state) => (decide::Offered::Pulled { empty: state.is_empty() }, Some(state)),
                Err(e) => {
                    tracing::warn!(session, error = %e, "could not pull the app's state");
                    (decide::Offered::PullFailed, None)
                }
            },
            None => (decide::Offered::Nothing, None),
        };
        let seen = match (&rc.snapshot, rc.dropped) {
            (_, true) => decide::CookieSeen::Dropped,
            (Some(_), false) => decide::CookieSeen::Valid,
            (None, false) => decide::CookieSeen::Absent,
        };
        let refresh_due = rc.snapshot.as_ref().is_some_and(|c| {
            decide::refresh_due(c, local.map(|l| l.version), self.cfg.cookie.max_age.as_secs(), unix_now())
        });
        let (state, source) = match decide::seal_action(seen, offered, owner_changed, refresh_due) {
            decide::SealAction::Keep => return,
            decide::SealAction::Delete => {
                self.delete_cookie(headers, &rc.held_chunks);
                self.forget_session(session);
                if seen == decide::CookieSeen::Valid {
                    // The app ended it: older copies of its cookie must not bring it back.
                    self.mark_ended(session);
                }
                tracing::debug!(session, "no state for this session: cookie deleted");
                return;
            }
            decide::SealAction::Seal(source @ (decide::SealSource::Carry | decide::SealSource::Refresh)) => {
                match &rc.snapshot {
                    Some(s) => (s.state.clone(), source),
                    None => return,
                }
            }
            decide::SealAction::Seal(source) => (newest.unwrap_or_default(), source),
        };

        if state.len() > self.cfg.max_state_bytes {
            self.state_not_sealed(headers, session, state.len(), None);
            return;
        }
        let version = local.map(|l| l.version).max(rc.snapshot.as_ref().map(|s| s.version)).unwrap_or(0) + 1;
        let unix = unix_now();
        let snapshot = Snapshot {
            session: session.to_owned(),
            owner: Owner {
                name: self.cfg.pod_name.clone(),
                uid: self.cfg.pod_uid.clone(),
                addr: self.cfg.advertise.clone(),
            },
            version,
            issued_at: unix,
            expires_at: unix + self.cfg.cookie.max_age.as_secs(),
            state,
        };
        let value = cookie::seal(&snapshot, &self.cfg.pool, &self.keys.ring());
        match cookie::split(&self.cfg.cookie.attrs.name, &value, self.budget()) {
            Ok(chunks) => {
                for (name, value) in &chunks {
                    self.append_set_cookie(headers, name, value, self.cfg.cookie.max_age.as_secs());
                }
                for &stale in rc.held_chunks.iter().filter(|&&i| i >= chunks.len()) {
                    self.append_set_cookie(headers, &cookie::chunk_name(&self.cfg.cookie.attrs.name, stale), "", 0);
                }
                self.metrics.snapshots.get_or_create(&[("source", source.label())]).inc();
                self.metrics.snapshot_bytes.observe(value.len() as f64);
                self.set_local(session, Local { version, sealed_at: Some(now) });
            }
            Err(_) => self.state_not_sealed(headers, session, snapshot.state.len(), Some(value.len())),
        }
    }

    /// A state too large to seal: counted, logged, and said on the response; the client keeps
    /// its previous cookie.
    fn state_not_sealed(
        &self,
        headers: &mut HeaderMap,
        session: &str,
        state_bytes: usize,
        sealed_bytes: Option<usize>,
    ) {
        self.metrics.over_budget.inc();
        tracing::warn!(
            session,
            state_bytes,
            sealed_bytes,
            budget = self.cfg.cookie.max_bytes,
            max_state_bytes = self.cfg.max_state_bytes,
            "state over the cookie budget: not sealed, the client keeps its previous cookie"
        );
        let warning = match sealed_bytes {
            Some(sealed) => format!(
                "state of {state_bytes} bytes seals to {sealed} bytes, over the cookie budget of {}; not saved for failover",
                self.cfg.cookie.max_bytes
            ),
            None => format!(
                "state of {state_bytes} bytes is over the state limit of {} bytes; not saved for failover",
                self.cfg.max_state_bytes
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&warning) {
            headers.insert(WARNING_HEADER, v);
        }
    }

    /// Expires every chunk of the state cookie the client sent (and only those: the names come
    /// from the request, so a forged count costs nothing).
    fn delete_cookie(&self, headers: &mut HeaderMap, held_chunks: &[usize]) {
        for &chunk in held_chunks {
            self.append_set_cookie(headers, &cookie::chunk_name(&self.cfg.cookie.attrs.name, chunk), "", 0);
        }
    }

    /// Remembers that `session` ended here, until any cookie of it has expired.
    fn mark_ended(&self, session: &str) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if ended.len() >= MAX_ENDED {
            ended.retain(|_, until| *until > now);
        }
        if ended.len() >= MAX_ENDED {
            // Bounded memory first: an ended session beyond the cap is not remembered.
            self.metrics.ended_not_remembered.inc();
            tracing::warn!(
                session,
                cap = MAX_ENDED,
                "too many ended sessions to remember; a replay of this one is not refused"
            );
            return;
        }
        ended.insert(session.to_owned(), now + self.cfg.cookie.max_age);
    }

    fn has_ended(&self, session: &str) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.get(session).is_some_and(|until| *until > Instant::now())
    }

    fn forget_session(&self, session: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(session);
        self.metrics.sessions.set(sessions.len() as i64);
    }

    fn append_set_cookie(&self, headers: &mut HeaderMap, name: &str, value: &str, max_age: u64) {
        let line = crate::cookie_attrs::set_cookie_line(&self.cfg.cookie.attrs, name, value, max_age);
        if let Ok(v) = HeaderValue::from_str(&line) {
            headers.append(header::SET_COOKIE, v);
        }
    }

    /// Removes the state cookie's chunks from the request: the app never sees sealed cookies.
    fn strip_our_cookies(&self, headers: &mut HeaderMap) {
        let name = &self.cfg.cookie.attrs.name;
        let pairs = cookie_pairs(headers);
        if !pairs.iter().any(|(n, _)| cookie::chunk_index(name, n).is_some()) {
            return;
        }
        let rest: Vec<String> = pairs
            .into_iter()
            .filter(|(n, _)| cookie::chunk_index(name, n).is_none())
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        headers.remove(header::COOKIE);
        if !rest.is_empty()
            && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
        {
            headers.insert(header::COOKIE, v);
        }
    }

    /// `GET <statePath>` from the local app: its state for the session, empty when it has none.
    async fn pull_state(&self, session: &str) -> Result<Vec<u8>, String> {
        match self.state_request(Method::GET, session, Bytes::new()).await? {
            (StatusCode::OK, bytes) => Ok(bytes.to_vec()),
            (StatusCode::NOT_FOUND, _) => Ok(Vec::new()),
            (status, _) => Err(format!("the app answered {status} to the state pull")),
        }
    }

    /// One call of the app's state endpoint (`GET` to pull or check, `PUT` to restore), on the
    /// app's state address, within `state_timeout`. Answers over the state limit are refused.
    async fn state_request(&self, method: Method, session: &str, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let mut sender =
            self.upstreams.get(self.cfg.state_addr, self.cfg.connect_timeout).await.map_err(|e| e.to_string())?;
        let mut call = Request::builder()
            .method(method)
            .uri(self.cfg.state_path.as_str())
            .header(header::HOST, "localhost")
            .header(SESSION_HEADER, session);
        if !body.is_empty() {
            call = call.header(header::CONTENT_TYPE, "application/octet-stream");
        }
        let call = call.body(full(body)).map_err(|e| e.to_string())?;
        let outcome = tokio::time::timeout(self.cfg.state_timeout, async {
            sender.ready().await.map_err(|e| e.to_string())?;
            let resp = sender.send_request(call).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), self.cfg.max_state_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the state: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        })
        .await
        .map_err(|_| format!("the app did not answer within {:?}", self.cfg.state_timeout))??;
        self.upstreams.put(self.cfg.state_addr, sender);
        Ok(outcome)
    }

    async fn forward_to_peer(
        &self,
        mut sender: hyper::client::conn::http1::SendRequest<Body>,
        mut req: Request<Body>,
        to: &Member,
        session: &str,
        reason: &'static str,
        upgrade: bool,
    ) -> Response<Body> {
        origin_form(&mut req);
        let forward = peer_auth::Forward {
            from: &self.cfg.pod_name,
            to: &to.name,
            method: req.method().as_str(),
            path: req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            session,
        };
        let mark = peer_auth::sign(&self.keys.ring(), &forward, unix_now());
        if let Ok(v) = HeaderValue::from_str(&mark) {
            req.headers_mut().insert(FORWARDED_HEADER, v);
        }
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let failed = |why: &str, status: StatusCode| {
            self.metrics.forwards.get_or_create(&[("reason", reason), ("result", "failed")]).inc();
            tracing::warn!(peer = %to.name, error = why, "forwarded request failed");
            text_response(status, format!("handover: pool member {} failed ({why}); retry\n", to.name))
        };

        // Wait for the answer as long as the peer lives (a long-poll is not a dead peer): probe
        // it whenever the wait passes another `peer_probe_after`.
        let response_deadline = self.cfg.response_timeout.map(|t| tokio::time::Instant::now() + t);
        let outcome = {
            let send = sender.send_request(req);
            tokio::pin!(send);
            loop {
                let next_probe = tokio::time::Instant::now() + self.cfg.peer_probe_after;
                let wake = response_deadline.map_or(next_probe, |d| d.min(next_probe));
                tokio::select! {
                    outcome = &mut send => break outcome,
                    () = tokio::time::sleep_until(wake) => {
                        if response_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            return failed("no answer in time", StatusCode::GATEWAY_TIMEOUT);
                        }
                        if let Liveness::Dead(why) = self.probe_peer(to, "slow to answer a forward").await {
                            return failed(why, StatusCode::BAD_GATEWAY);
                        }
                    }
                }
            }
        };
        let mut resp = match outcome {
            Ok(resp) => resp,
            // The client's own body was too slow: nothing to say about the peer.
            Err(e) if cut_by_client(&e) => return body_too_slow(),
            Err(e) => {
                // The request may have been cut by the client's own body, or by the peer: only
                // a probe says which.
                let why = e.to_string();
                self.probe_peer(to, &why).await;
                return failed(&why, StatusCode::BAD_GATEWAY);
            }
        };
        if resp.headers_mut().remove(PEER_HEADER).is_none() && resp.status().is_server_error() {
            // Not from a sidecar: something in between (a mesh proxy) answered for the peer.
            let why = format!("{} from something other than the peer's sidecar", resp.status());
            if let Liveness::Dead(_) = self.probe_peer(to, &why).await {
                return failed(&why, StatusCode::BAD_GATEWAY);
            }
        }
        self.upstreams.put(to.addr, sender);
        self.metrics.forwards.get_or_create(&[("reason", reason), ("result", "ok")]).inc();
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client)) = (switching, client_upgrade) {
            bridge_upgrade(client, hyper::upgrade::on(&mut resp));
        }
        strip_hop_by_hop(resp.headers_mut(), switching);
        if self.draining_since().is_some() && !switching {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.map(|b| b.map_err(Into::into).boxed())
    }

    /// Probes a peer after a forward to it failed or was slow; a dead one counts as unreachable to
    /// this sidecar for a while (its sessions are then taken over by their successors).
    async fn probe_peer(&self, peer: &Member, after: &str) -> Liveness {
        let admin = SocketAddr::new(peer.addr.ip(), self.cfg.peer_admin_port);
        let verdict = peer_probe::probe(admin, self.cfg.probe_timeout).await;
        let label = match verdict {
            Liveness::Alive => "alive",
            Liveness::Dead(_) => "dead",
            Liveness::Unknown => "unknown",
        };
        self.metrics.peer_probes.get_or_create(&[("result", label)]).inc();
        match verdict {
            Liveness::Dead(why) => {
                self.mark_unreachable(&peer.name);
                tracing::warn!(peer = %peer.name, after, probe = why, "peer probe failed; the peer counts as dead for a while");
            }
            Liveness::Alive => tracing::info!(peer = %peer.name, after, "peer probe: alive"),
            Liveness::Unknown => {
                tracing::warn!(peer = %peer.name, after, "peer cannot be reached (no connection); not taking its sessions over")
            }
        }
        verdict
    }

    /// Keeps one idle connection open to the app: the kernel closes it the moment the app process
    /// dies, so the session table is cleared even when no request is in flight.
    pub async fn watch_app(self: Arc<Self>) {
        use tokio::io::AsyncReadExt;
        loop {
            match tokio::net::TcpStream::connect(self.cfg.app).await {
                Ok(mut stream) => {
                    self.app_back();
                    let mut byte = [0u8; 1];
                    // Returns on EOF or error: the app died, or closed an idle connection. A dead
                    // app may be back before anyone notices, so assume the worst: every session
                    // is checked with the app (GET state) before it is served again.
                    let _ = stream.read(&mut byte).await;
                    self.forget_sessions();
                }
                Err(_) => {
                    self.app_lost();
                    tokio::time::sleep(APP_RETRY_EVERY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn upgrade_headers_survive_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(h.get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
    }

    #[test]
    fn only_our_cookie_and_its_chunks_are_ours() {
        assert_eq!(cookie::chunk_index("handover", "handover"), Some(0));
        assert_eq!(cookie::chunk_index("handover", "handover.3"), Some(3));
        assert_eq!(cookie::chunk_index("handover", "handover.x"), None);
        assert_eq!(cookie::chunk_index("handover", "handoverx"), None);
        assert_eq!(cookie::chunk_index("handover", "session"), None);
    }
}
