//! The data path: a reverse proxy that routes each request by its state cookie, restores sessions
//! into the local app, and seals the app's newest state into the response.
//!
//! This module carries bytes and carries out decisions; [`crate::decide`] makes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::cookie::{self, Budget, Owner, Snapshot};
use crate::decide::{self, Affinity, Decision, ForwardReason, Me, Mode};
use crate::keys::KeyFile;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::upstream::{Body, Upstreams};

/// The session id the app sees on every forwarded request.
pub const SESSION_HEADER: &str = "handover-session";
/// Where the app pushes its state on a response.
pub const STATE_HEADER: &str = "handover-state";
/// Set on a response whose state could not be sealed.
pub const WARNING_HEADER: &str = "handover-warning";
/// Marks a request forwarded by a peer sidecar (loop guard).
pub const FORWARDED_HEADER: &str = "handover-forwarded";

/// Shards of the per-session restore lock.
const RESTORE_SHARDS: usize = 64;
/// How long a peer that failed to answer counts as dead to this sidecar.
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);
/// How often a held request re-tries the app.
const APP_RETRY_EVERY: Duration = Duration::from_millis(25);

/// Cookie attributes and budget.
#[derive(Clone, Debug)]
pub struct CookieConfig {
    pub name: String,
    pub max_age: Duration,
    pub max_bytes: usize,
    pub secure: bool,
    pub same_site: String,
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
    pub mode: Mode,
    pub snapshot_interval: Duration,
    pub state_path: String,
    pub cookie: CookieConfig,
    pub affinity: Affinity,
    /// How long a request is held while the local app is down.
    pub app_wait: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for a peer's response headers; past it the peer counts as hung.
    pub peer_timeout: Duration,
    pub max_header_bytes: usize,
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
    upstreams: Upstreams,
    draining_since: Mutex<Option<Instant>>,
    app_up: AtomicBool,
}

/// What became of a request handed to the local app.
enum Served {
    Response(Response<Body>),
    /// The app's connection closed before the request was sent: route it again.
    NotSent(Request<Body>),
}

/// The cookie of a request, opened, and how many chunks the client holds.
struct RequestCookie {
    snapshot: Option<Snapshot>,
    chunks_held: usize,
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
fn cookie_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn is_ours(cookie_name: &str, name: &str) -> bool {
    name == cookie_name
        || name
            .strip_prefix(cookie_name)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

impl Proxy {
    pub fn new(cfg: Config, keys: Arc<KeyFile>, registry: Arc<dyn Registry>, metrics: Arc<Metrics>) -> Arc<Proxy> {
        Arc::new(Proxy {
            cfg,
            metrics,
            keys,
            registry,
            sessions: Mutex::new(HashMap::new()),
            restore_locks: (0..RESTORE_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            unreachable: Mutex::new(HashMap::new()),
            upstreams: Upstreams::default(),
            draining_since: Mutex::new(None),
            app_up: AtomicBool::new(true),
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

    /// Whether the last contact with the local app succeeded.
    pub fn app_is_up(&self) -> bool {
        self.app_up.load(Ordering::Relaxed)
    }

    /// The app process went away: it lost every session it held in memory.
    pub fn app_lost(&self) {
        if self.app_up.swap(false, Ordering::Relaxed) {
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
        if !self.app_up.swap(true, Ordering::Relaxed) {
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

    /// Drops sessions not sealed for longer than a cookie lives.
    pub fn forget_expired_sessions(&self) {
        let max_age = self.cfg.cookie.max_age;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, l| l.sealed_at.is_none_or(|t| t.elapsed() < max_age));
        self.metrics.sessions.set(sessions.len() as i64);
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
        Budget::for_cookie(&self.cfg.cookie.name, self.cfg.cookie.max_bytes)
    }

    fn read_cookie(&self, headers: &HeaderMap) -> RequestCookie {
        let pairs = cookie_pairs(headers);
        let name = &self.cfg.cookie.name;
        let lookup = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let chunks_held = lookup(name).map(cookie::chunk_count).unwrap_or(0);
        let opened = cookie::join(name, self.budget(), lookup).and_then(|value| match value {
            None => Ok(None),
            Some(v) => cookie::open(&v, &self.cfg.pool, &self.keys.ring(), unix_now()).map(Some),
        });
        let snapshot = match opened {
            Ok(s) => s,
            Err(e) => {
                self.metrics.cookie_rejects.get_or_create(&[("reason", e.reason())]).inc();
                tracing::debug!(reason = e.reason(), error = %e, "state cookie refused; treating it as absent");
                None
            }
        };
        RequestCookie { snapshot, chunks_held }
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
        let mut req: Request<Body> = req.map(|b| b.boxed());
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
        let forwarded = req.headers_mut().remove(FORWARDED_HEADER).is_some();
        let rc = self.read_cookie(req.headers());
        let upgrade = is_upgrade(&req);
        strip_hop_by_hop(req.headers_mut(), upgrade);
        req.headers_mut().remove(SESSION_HEADER);
        req.headers_mut().remove(STATE_HEADER);
        if !forwarded {
            append_forwarded_for(req.headers_mut(), client);
        }

        let live = self.registry.live();
        let mut decision_rounds = 0;
        loop {
            decision_rounds += 1;
            let unreachable = self.unreachable_now();
            let session = rc.snapshot.as_ref().map(|s| s.session.clone());
            let decision = decide::route(decide::Inputs {
                cookie: rc.snapshot.as_ref(),
                local_version: session.as_deref().and_then(|s| self.local(s)).map(|l| l.version),
                live: &live,
                unreachable: &unreachable,
                me: Me { name: &self.cfg.pod_name, uid: &self.cfg.pod_uid },
                forwarded,
                affinity: self.cfg.affinity,
            });
            match decision {
                Decision::Forward { to, reason } => {
                    let reason_label = match reason {
                        ForwardReason::Owner => "owner",
                        ForwardReason::Successor => "successor",
                    };
                    match self.upstreams.get(to.addr, self.cfg.connect_timeout).await {
                        Ok(sender) => {
                            let resp = self.forward_to_peer(sender, req, &to, reason_label, upgrade).await;
                            return ("forward", resp);
                        }
                        Err(e) => {
                            self.metrics
                                .forwards
                                .get_or_create(&[("reason", reason_label), ("result", "unreachable")])
                                .inc();
                            tracing::warn!(peer = %to.name, error = %e, "peer unreachable; treating it as dead");
                            self.mark_unreachable(&to.name);
                            if decision_rounds > live.len() + 1 {
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
                            if waited && rc.snapshot.is_some() && decision_rounds < 3 {
                                // The app may have restarted and lost its sessions: decide again.
                                self.upstreams.put(self.cfg.app, sender);
                                continue;
                            }
                            sender
                        }
                        Err(resp) => return ("refused", resp),
                    };
                    let mut sender = sender;
                    let (route, owner_changed) = match (&decision, rc.snapshot.as_ref()) {
                        (Decision::Restore { takeover }, Some(snapshot)) => {
                            match self.restore_once(snapshot, &mut sender, *takeover).await {
                                Ok(false) => ("serve", false),
                                Ok(true) if *takeover => {
                                    self.metrics.takeovers.inc();
                                    tracing::info!(session = %snapshot.session, from = %snapshot.owner.name, version = snapshot.version, "took over session");
                                    ("takeover", true)
                                }
                                Ok(true) => ("restore", true),
                                Err(resp) => return ("refused", resp),
                            }
                        }
                        (Decision::New, _) => ("new", false),
                        _ => ("serve", false),
                    };
                    match self.serve_locally(sender, req, &rc, owner_changed, upgrade).await {
                        Served::Response(resp) => return (route, resp),
                        Served::NotSent(unsent) if decision_rounds < 5 => req = unsent,
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
    /// did. Returns whether this call restored.
    ///
    /// When this pod is the owner (not a takeover), the app may still hold the session — the
    /// sidecar restarted, or only a connection closed — and its copy may be newer than the cookie
    /// (pull mode), so the app is asked first (`GET <statePath>`) and only restored on a miss.
    async fn restore_once(
        &self,
        snapshot: &Snapshot,
        app: &mut hyper::client::conn::http1::SendRequest<Body>,
        takeover: bool,
    ) -> Result<bool, Response<Body>> {
        let _guard = self.restore_lock(&snapshot.session).lock().await;
        if self.local(&snapshot.session).is_some_and(|l| l.version >= snapshot.version) {
            return Ok(false);
        }
        if !takeover && self.app_holds(&snapshot.session, app).await {
            self.set_local(&snapshot.session, Local { version: snapshot.version, sealed_at: None });
            return Ok(false);
        }
        if !snapshot.state.is_empty() {
            let put = Request::builder()
                .method(Method::PUT)
                .uri(self.cfg.state_path.as_str())
                .header(header::HOST, "localhost")
                .header(SESSION_HEADER, snapshot.session.as_str())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(full(snapshot.state.clone()));
            let put = match put {
                Ok(put) => put,
                Err(e) => {
                    return Err(self.restore_failed(snapshot, &format!("bad restore request: {e}")));
                }
            };
            let outcome = tokio::time::timeout(self.cfg.peer_timeout, async {
                app.ready().await?;
                let resp = app.send_request(put).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            })
            .await;
            match outcome {
                Ok(Ok(status)) if status.is_success() => {}
                Ok(Ok(status)) => {
                    return Err(self.restore_failed(snapshot, &format!("the app answered {status}")));
                }
                Ok(Err(e)) => return Err(self.restore_failed(snapshot, &e.to_string())),
                Err(_) => {
                    return Err(self.restore_failed(snapshot, "the app did not answer in time"));
                }
            }
        }
        self.metrics.restores.get_or_create(&[("result", "ok")]).inc();
        self.set_local(&snapshot.session, Local { version: snapshot.version, sealed_at: None });
        Ok(true)
    }

    /// Whether the app answers `GET <statePath>` for the session with 200.
    async fn app_holds(&self, session: &str, app: &mut hyper::client::conn::http1::SendRequest<Body>) -> bool {
        let Ok(get) = Request::builder()
            .method(Method::GET)
            .uri(self.cfg.state_path.as_str())
            .header(header::HOST, "localhost")
            .header(SESSION_HEADER, session)
            .body(full(Bytes::new()))
        else {
            return false;
        };
        let outcome = tokio::time::timeout(self.cfg.peer_timeout, async {
            app.ready().await?;
            let resp = app.send_request(get).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        matches!(outcome, Ok(Ok(StatusCode::OK)))
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
    async fn app_connection(&self) -> Result<(hyper::client::conn::http1::SendRequest<Body>, bool), Response<Body>> {
        let deadline = Instant::now() + self.cfg.app_wait;
        let mut waited = false;
        loop {
            match self.upstreams.get_noting_closed(self.cfg.app, self.cfg.connect_timeout).await {
                Ok((sender, saw_closed)) => {
                    self.app_back();
                    if waited {
                        self.metrics.app_waits.get_or_create(&[("result", "ok")]).inc();
                    }
                    if saw_closed {
                        // The app closed connections: it may have restarted; check its sessions.
                        self.forget_sessions();
                    }
                    return Ok((sender, waited || saw_closed));
                }
                Err(e) => {
                    self.app_lost();
                    if !waited {
                        tracing::warn!(error = %e, wait = ?self.cfg.app_wait, "app unreachable; holding the request");
                    }
                    waited = true;
                    if Instant::now() >= deadline {
                        self.metrics.app_waits.get_or_create(&[("result", "timeout")]).inc();
                        return Err(text_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("handover: the application did not come back within {:?}\n", self.cfg.app_wait),
                        ));
                    }
                    tokio::time::sleep(APP_RETRY_EVERY).await;
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
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let resp = match sender.try_send_request(req).await {
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
            return Served::Response(resp.map(|b| b.boxed()));
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
        self.seal_response(&mut parts.headers, &session, rc, pushed, owner_changed).await;
        if self.draining_since().is_some() {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Served::Response(Response::from_parts(parts, body.boxed()))
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
        let is_new = rc.snapshot.is_none();
        let (state, source) = if let Some(state) = pushed {
            (state, "push")
        } else if pull {
            match self.pull_state(session).await {
                Ok(state) => (state, "pull"),
                Err(e) => {
                    tracing::warn!(session, error = %e, "could not pull the app's state");
                    match &rc.snapshot {
                        None => (Vec::new(), "new"),
                        Some(s) if owner_changed => (s.state.clone(), "carry"),
                        Some(_) => return,
                    }
                }
            }
        } else if is_new {
            (Vec::new(), "new")
        } else if let (true, Some(s)) = (owner_changed, &rc.snapshot) {
            (s.state.clone(), "carry")
        } else {
            return;
        };

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
        match cookie::split(&self.cfg.cookie.name, &value, self.budget()) {
            Ok(chunks) => {
                for (name, value) in &chunks {
                    self.append_set_cookie(headers, name, value, self.cfg.cookie.max_age.as_secs());
                }
                for stale in chunks.len()..rc.chunks_held {
                    self.append_set_cookie(headers, &cookie::chunk_name(&self.cfg.cookie.name, stale), "", 0);
                }
                self.metrics.snapshots.get_or_create(&[("source", source)]).inc();
                self.metrics.snapshot_bytes.observe(value.len() as f64);
                self.set_local(session, Local { version, sealed_at: Some(now) });
            }
            Err(_) => {
                self.metrics.over_budget.inc();
                tracing::warn!(
                    session,
                    state_bytes = snapshot.state.len(),
                    sealed_bytes = value.len(),
                    budget = self.cfg.cookie.max_bytes,
                    "state over the cookie budget: not sealed, the client keeps its previous cookie"
                );
                let warning = format!(
                    "state of {} bytes seals to {} bytes, over the cookie budget of {}; not saved for failover",
                    snapshot.state.len(),
                    value.len(),
                    self.cfg.cookie.max_bytes
                );
                if let Ok(v) = HeaderValue::from_str(&warning) {
                    headers.insert(WARNING_HEADER, v);
                }
            }
        }
    }

    fn append_set_cookie(&self, headers: &mut HeaderMap, name: &str, value: &str, max_age: u64) {
        let c = &self.cfg.cookie;
        let secure = if c.secure { "; Secure" } else { "" };
        let line = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite={}{secure}", c.same_site);
        if let Ok(v) = HeaderValue::from_str(&line) {
            headers.append(header::SET_COOKIE, v);
        }
    }

    /// Removes the state cookie's chunks from the request: the app never sees sealed cookies.
    fn strip_our_cookies(&self, headers: &mut HeaderMap) {
        let pairs = cookie_pairs(headers);
        if !pairs.iter().any(|(n, _)| is_ours(&self.cfg.cookie.name, n)) {
            return;
        }
        headers.remove(header::COOKIE);
        let rest: Vec<String> = pairs
            .into_iter()
            .filter(|(n, _)| !is_ours(&self.cfg.cookie.name, n))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if !rest.is_empty()
            && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
        {
            headers.insert(header::COOKIE, v);
        }
    }

    /// `GET <statePath>` from the local app: its state for the session, empty when it has none.
    async fn pull_state(&self, session: &str) -> Result<Vec<u8>, String> {
        let mut sender = self.upstreams.get(self.cfg.app, self.cfg.connect_timeout).await.map_err(|e| e.to_string())?;
        let get = Request::builder()
            .method(Method::GET)
            .uri(self.cfg.state_path.as_str())
            .header(header::HOST, "localhost")
            .header(SESSION_HEADER, session)
            .body(full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let outcome = tokio::time::timeout(self.cfg.peer_timeout, async {
            let resp = sender.send_request(get).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), cookie::MAX_STATE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the state: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        })
        .await
        .map_err(|_| "the app did not answer the state pull in time".to_owned())??;
        self.upstreams.put(self.cfg.app, sender);
        match outcome {
            (StatusCode::OK, bytes) => Ok(bytes.to_vec()),
            (StatusCode::NOT_FOUND, _) => Ok(Vec::new()),
            (status, _) => Err(format!("the app answered {status} to the state pull")),
        }
    }

    async fn forward_to_peer(
        &self,
        mut sender: hyper::client::conn::http1::SendRequest<Body>,
        mut req: Request<Body>,
        to: &crate::registry::Member,
        reason: &'static str,
        upgrade: bool,
    ) -> Response<Body> {
        if let Ok(v) = HeaderValue::from_str(&self.cfg.pod_name) {
            req.headers_mut().insert(FORWARDED_HEADER, v);
        }
        origin_form(&mut req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let outcome = tokio::time::timeout(self.cfg.peer_timeout, sender.send_request(req)).await;
        let failed = |why: &str, status: StatusCode| {
            self.metrics.forwards.get_or_create(&[("reason", reason), ("result", "failed")]).inc();
            self.mark_unreachable(&to.name);
            tracing::warn!(peer = %to.name, error = why, "forwarded request failed; the peer counts as dead for a while");
            text_response(status, format!("handover: pool member {} failed ({why}); retry\n", to.name))
        };
        match outcome {
            Ok(Ok(mut resp)) => {
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
                resp.map(|b| b.boxed())
            }
            Ok(Err(e)) => failed(&e.to_string(), StatusCode::BAD_GATEWAY),
            Err(_) => failed("no answer in time", StatusCode::GATEWAY_TIMEOUT),
        }
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
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
        assert!(is_ours("handover", "handover"));
        assert!(is_ours("handover", "handover.3"));
        assert!(!is_ours("handover", "handover.x"));
        assert!(!is_ours("handover", "handoverx"));
        assert!(!is_ours("handover", "session"));
    }
}
