//! The data path: a reverse proxy that routes each request by its state cookie, restores sessions
//! into the local app, and seals the app's newest state into the response.
//!
//! This module carries bytes and carries out decisions; [`crate::decide`] makes them. Here: the
//! configuration, the proxy's shared state and the routing loop (`route`); one job a file below:
//! `request.rs` (the request's cookie, the loop guard), `headers.rs` (header hygiene),
//! `heads_in_flight.rs` (the bytes of request heads held at once), `app.rs`
//! (the app client), `restore.rs` (restoring a session into the app), `peer.rs` (forwards to peers,
//! the upgrade bridge), `sessions.rs` (the session table), `seal.rs` (the response's Set-Cookie).

mod app;
mod backup;
mod headers;
mod heads_in_flight;
mod order;
mod peer;
mod request;
mod restore;
mod seal;
mod sessions;
mod takers;
mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

pub use app::INSTANCE_HEADER;
pub use backup::HandedOver;
pub use headers::{
    FORMAT_HEADER, FORWARDED_HEADER, PEER_HEADER, READS_HEADER, ROTATE_HEADER, SESSION_HEADER, STATE_HEADER,
    WARNING_HEADER,
};

use crate::decide::{self, Affinity, Decision, ForwardReason, Me, Mode};
use crate::keys::KeyFile;
use crate::metrics::{BadRequest, Metrics, Route};
use crate::peer_probe::Liveness;
use crate::registry::{Member, Registry};
use crate::timed_body::{BodyLimits, TimedBody};
use crate::upstream::{Body, Upstreams, full};
use app::Served;
use handover_common::sync;
use headers::{append_forwarded_for, is_upgrade, strip_hop_by_hop};
use peer::{NoConnection, peer_not_reached};
use request::{Arrival, RequestCookie};
use restore::{RESTORE_SHARDS, Restored};
pub use sessions::DEFAULT_MAX_SESSIONS;
pub use tunnel::TunnelSlot;

/// Forwards tried for one request before giving up: one per member that turns out dead, plus one.
const EXTRA_FORWARD_ATTEMPTS: usize = 1;

/// Times a request is routed again because the app may have restarted while it was held.
const MAX_APP_RECHECKS: usize = 2;

/// Times a request the app's closing connection never took is sent again.
const MAX_RESENDS: usize = 4;

/// The three unrelated limits of one request's routing loop, each with its own count: a request
/// that used up one of them may still use the others.
#[derive(Debug, Default)]
struct Retries {
    /// Forwards that failed to connect to a peer the probe then found dead.
    forwards: usize,
    /// Times the request was routed again because the app may have restarted while it waited.
    app_rechecks: usize,
    /// Times the request was sent again because the app's connection closed before taking it.
    resends: usize,
}

impl Retries {
    /// A forward failed and its peer is dead: may the request be routed again? At most once per
    /// live member, plus [`EXTRA_FORWARD_ATTEMPTS`].
    fn forward_again(&mut self, live: usize) -> bool {
        self.forwards += 1;
        self.forwards <= live + EXTRA_FORWARD_ATTEMPTS
    }

    /// The app had to be waited for: may the request be routed again? [`MAX_APP_RECHECKS`] times.
    fn recheck_app(&mut self) -> bool {
        Self::take(&mut self.app_rechecks, MAX_APP_RECHECKS)
    }

    /// The app's connection closed before it took the request: may it be sent again?
    /// [`MAX_RESENDS`] times.
    fn resend(&mut self) -> bool {
        Self::take(&mut self.resends, MAX_RESENDS)
    }

    fn take(count: &mut usize, limit: usize) -> bool {
        let more = *count < limit;
        if more {
            *count += 1;
        }
        more
    }
}

/// Cookie name, attributes and budget.
#[derive(Clone, Debug)]
pub struct CookieConfig {
    pub attrs: crate::cookie_attrs::Attrs,
    /// The idle timeout: cookies expire this long after the session's last reseal.
    pub max_age: Duration,
    pub max_bytes: usize,
    /// The absolute timeout: a session is refused this long after it was first sealed
    /// (`Route::created_at`), however active; `None`: no absolute timeout.
    pub absolute_timeout: Option<Duration>,
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
    /// How client requests reach `app`: HTTP/1.1 or h2c. The state endpoint (`state_addr`) is
    /// always called over HTTP/1.1.
    pub app_protocol: crate::upstream::AppProtocol,
    /// Where the app answers `GET`/`PUT <statePath>`: apart from `app`, on the pod's loopback, so
    /// no client request can ever reach it (the sidecar forwards clients to `app` only).
    pub state_addr: SocketAddr,
    /// This sidecar's admin port, where it probes a peer whose registry entry names no admin port
    /// of its own (`Member::admin_port`).
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
    /// Bytes of the request heads in flight at once (all connections); past it, 503.
    pub max_header_bytes_in_flight: usize,
    /// Client request bodies: idle timeout and total deadline.
    pub body: BodyLimits,
    /// Requests held at once while the app is down; more are refused with 503.
    pub max_held: usize,
    /// Entries of the session table at most; past it the least recently used are evicted (and
    /// checked with the app or restored on their next request).
    pub max_sessions: usize,
    /// Largest state (uncompressed) sealed or restored.
    pub max_state_bytes: usize,
    /// States this small once stored (deflated, with their format token) travel inside the routing
    /// cookie (`cookie::Route::inline`); 0: never.
    pub inline_state_bytes: usize,
    /// Deflate states before sealing them (`cookie::StoredState::of_session`); off, they are
    /// stored as they are (`cookie::StoredState::plain`): their length then tells nothing of
    /// what repeats in them.
    pub compress_state: bool,
    /// The header limits of the path between clients and the pool.
    pub limits: crate::header_budget::Limits,
    /// Bytes of peers' backups kept at most; `None`: no backups (the cookie only).
    pub backup_max_bytes: Option<usize>,
    /// Longest wait for a peer to keep (or hand out) a backup.
    pub backup_timeout: Duration,
}

/// The proxy's shared state.
pub struct Proxy {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    keys: Arc<KeyFile>,
    registry: Arc<dyn Registry>,
    sessions: Mutex<sessions::Table>,
    restore_locks: Vec<tokio::sync::Mutex<()>>,
    unreachable: Mutex<HashMap<String, Instant>>,
    /// Peers' addresses whose pod a probe found to be the member listed there (by uid), and until
    /// when that holds for new connections ([`Proxy::peer_connection`]).
    identified: Mutex<HashMap<SocketAddr, (String, Instant)>>,
    /// Sessions the app ended (an empty state) or rotated away from, until their cookies expire: a
    /// copy of such a cookie, replayed to this pod, starts a fresh session instead of bringing the
    /// old state back. This pod's own knowledge only (see the README's known limits).
    ended: Mutex<sessions::SessionMap<String, Instant>>,
    upstreams: Upstreams,
    /// When the drain began; set once (a pod never stops draining). A `OnceLock` and not a mutex:
    /// every request reads it several times.
    draining_since: std::sync::OnceLock<Instant>,
    /// Set once the drain handed every session over to its successor (with backups on): from then
    /// on the successors own this pod's sessions, and it passes every request on to them.
    handed_over: std::sync::atomic::AtomicBool,
    /// While draining: the member each session's newest state was handed to. Its requests are
    /// passed on there, whatever the member list says a moment later (a replacement joining would
    /// change the successor, and two members would take the session over).
    handed_to: Mutex<HashMap<String, Member>>,
    /// Sessions being taken over here, and the peers that asked for a session's backup: the claim
    /// between two pods taking one session over at once ([`takers`]).
    takers: takers::Takers,
    /// The state formats the app declared it reads (`Handover-Reads`), latest first; `None` until
    /// it declares them (and again after it went down: a new release may read others).
    app_reads: Mutex<Option<String>>,
    /// The app's instance id, and whether a closed connection put it in doubt.
    app_instance: Mutex<app::Instance>,
    /// Whether the app answers; held requests wait on changes of it.
    app_up: tokio::sync::watch::Sender<bool>,
    /// Since when the app takes no new connection, while it is alive as far as is known (its
    /// accept queue full, or hung): readiness fails only once this lasts
    /// ([`app::UNRESPONSIVE_BEFORE_UNREADY`]).
    app_unresponsive_since: Mutex<Option<std::time::Instant>>,
    /// Whether the app has answered since this sidecar started: a native sidecar starts before
    /// the app, whose first refusals are no app gone down.
    app_answered: std::sync::atomic::AtomicBool,
    held: tokio::sync::Semaphore,
    heads_in_flight: heads_in_flight::HeadsInFlight,
    /// The backups this pod keeps for the sessions it would take over; `None` when backups are off.
    backups: Option<crate::backup::Store>,
    /// State-changing requests of a session take turns at the app.
    order: order::SessionOrder,
    /// Peers this sidecar lately could not reach (`peer_health`).
    peer_health: crate::peer_health::Tracker,
    /// `cfg.state_path` as every client request's path is compared with it.
    state_path: crate::state_path::StatePath,
    /// This pod as its cookies name it (`cfg`'s name, uid and address), shared by every route it
    /// seals or reads back.
    me: crate::cookie::Owner,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(full(text.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A 503 the client may retry in a second: the sidecar cannot take the request now.
fn retry_soon(text: impl Into<String>) -> Response<Body> {
    let mut resp = text_response(StatusCode::SERVICE_UNAVAILABLE, text);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

impl Proxy {
    pub fn new(cfg: Config, keys: Arc<KeyFile>, registry: Arc<dyn Registry>, metrics: Arc<Metrics>) -> Arc<Proxy> {
        let cfg_max_held = cfg.max_held;
        let cfg_heads_in_flight = cfg.max_header_bytes_in_flight;
        let table = sessions::Table::new(cfg.max_sessions);
        let backups = cfg.backup_max_bytes.map(crate::backup::Store::new);
        let state_path = crate::state_path::StatePath::new(&cfg.state_path);
        let me = crate::cookie::Owner {
            name: cfg.pod_name.as_str().into(),
            uid: cfg.pod_uid.as_str().into(),
            addr: cfg.advertise.as_str().into(),
        };
        Arc::new(Proxy {
            cfg,
            metrics,
            keys,
            registry,
            sessions: Mutex::new(table),
            restore_locks: (0..RESTORE_SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            unreachable: Mutex::new(HashMap::new()),
            identified: Mutex::new(HashMap::new()),
            ended: Mutex::new(sessions::SessionMap::default()),
            upstreams: Upstreams::default(),
            draining_since: std::sync::OnceLock::new(),
            handed_over: std::sync::atomic::AtomicBool::new(false),
            handed_to: Mutex::new(HashMap::new()),
            takers: takers::Takers::default(),
            app_reads: Mutex::new(None),
            app_instance: Mutex::default(),
            app_up: tokio::sync::watch::Sender::new(true),
            app_unresponsive_since: Mutex::new(None),
            app_answered: std::sync::atomic::AtomicBool::new(false),
            held: tokio::sync::Semaphore::new(cfg_max_held),
            heads_in_flight: heads_in_flight::HeadsInFlight::new(cfg_heads_in_flight),
            backups,
            order: order::SessionOrder::default(),
            peer_health: crate::peer_health::Tracker::default(),
            state_path,
            me,
        })
    }

    /// Starts draining: readiness fails, every session's next response gets a fresh snapshot.
    pub fn start_draining(&self) {
        if self.draining_since.set(Instant::now()).is_ok() {
            self.metrics.draining.set(1);
        }
    }

    pub fn draining_since(&self) -> Option<Instant> {
        self.draining_since.get().copied()
    }

    /// The drain handed every session of the table over (or ran out of grace doing it): from now
    /// on this pod serves no session itself (see [`Proxy::passes_on`]).
    pub fn sessions_handed_over(&self) {
        if self.backups_on() && !self.handed_over.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::info!("drain: every session is with its successor now; requests are passed on to them");
        }
    }

    /// Whether this pod passes every request on to the session's successor instead of serving it:
    /// once its drain handed the sessions over (the successors hold their newest state and own
    /// them from then on — serving one here too would fork it), and while draining with the app
    /// gone (a native sidecar outlives its app). Peers keep forwarding the pod's sessions here
    /// while it lives: this pod alone picks each one's successor, so two peers whose member lists
    /// differ for a moment (a replacement joining) cannot take one session over twice.
    pub fn passes_on(&self) -> bool {
        self.handed_over.load(std::sync::atomic::Ordering::SeqCst)
            || (self.draining_since().is_some() && !self.app_is_up())
    }

    /// Live members as this sidecar's registry lists them now, sorted by name.
    pub fn registry_members(&self) -> Arc<Vec<crate::registry::Member>> {
        self.registry.live()
    }

    /// What this sidecar saw of its peers lately (see [`crate::peer_health`]).
    pub fn peer_health(&self) -> &crate::peer_health::Tracker {
        &self.peer_health
    }

    /// Whether the registry has seen the pool (see [`Registry::synced`]).
    pub fn registry_synced(&self) -> Result<(), String> {
        self.registry.synced()
    }

    /// Serves one client (or peer) request. Never fails: every error is a response.
    pub async fn handle(self: Arc<Self>, req: Request<Body>, client: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let (route, resp) = self.route_request(req, client).await;
        self.metrics.request_done(route, started.elapsed().as_secs_f64());
        resp
    }

    async fn route_request(&self, req: Request<Body>, client: SocketAddr) -> (Route, Response<Body>) {
        // Boxed once, so that a request the app never received can come back here and be routed
        // again. A body that has ended already (most requests have none) has nothing to time.
        let mut req: Request<Body> = req.map(|b| {
            if hyper::body::Body::is_end_stream(&b) {
                b
            } else {
                let metrics = &self.metrics;
                TimedBody::new(b, self.cfg.body, metrics.body_timeouts.clone(), metrics.bad_bodies.clone()).boxed()
            }
        });
        let survey = headers::Survey::of(req.headers());
        // The head's limit counts the request target too: a target of many kilobytes goes on to
        // the app (and the next proxy) as a header field does.
        let target_bytes = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        let head_bytes = survey.bytes + target_bytes;
        let limit = self.cfg.max_header_bytes;
        if head_bytes > limit {
            let (status, reason, what, bytes) = if target_bytes > limit {
                (StatusCode::URI_TOO_LONG, BadRequest::UriTooLong, "request target", target_bytes)
            } else {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, BadRequest::HeadersTooLarge, "request head", head_bytes)
            };
            self.metrics.bad_requests.get_or_create(&[("reason", reason)]).inc();
            tracing::warn!(%client, head_bytes, target_bytes, limit, "{what} too large");
            let message = format!("handover: the {what} is {bytes} bytes, over the limit of {limit}\n");
            return (Route::Refused, text_response(status, message));
        }
        // Held until the answer's head is ready.
        let _head = match self.heads_in_flight.take(head_bytes) {
            Ok(held) => held,
            Err(spent) => {
                self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::HeadsInFlight)]).inc();
                if spent.newly {
                    tracing::warn!(%client, limit = self.cfg.max_header_bytes_in_flight, "the request heads in flight are at their limit (--max-header-bytes-in-flight); new requests get 503 until some end");
                }
                return (Route::Refused, retry_soon("handover: too many requests in flight\n"));
            }
        };
        if let Err(why) = headers::settle_host(&mut req, &survey) {
            self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::BadHost)]).inc();
            tracing::warn!(%client, why, "request refused: its host is not clear");
            return (Route::Refused, text_response(StatusCode::BAD_REQUEST, format!("handover: {why}\n")));
        }
        if req.method() == Method::CONNECT {
            // A tunnel to the host it names: no app serves that, and once tunnelled the client's
            // bytes would pass by everything the proxy checks.
            self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::Connect)]).inc();
            tracing::warn!(%client, target = %req.uri(), "request refused: CONNECT");
            let mut resp = text_response(StatusCode::NOT_IMPLEMENTED, "handover: CONNECT is not supported\n");
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (Route::Refused, resp);
        }
        if req.uri().path() == "*" && req.method() != Method::OPTIONS {
            // The asterisk form names the server as a whole, for OPTIONS alone (RFC 9112, 3.2.4).
            self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::BadTarget)]).inc();
            tracing::warn!(%client, method = %req.method(), "request refused: the target * for another method than OPTIONS");
            return (Route::Refused, text_response(StatusCode::BAD_REQUEST, "handover: the target * is for OPTIONS\n"));
        }
        if survey.transfer_encodings > 1 || survey.other_coding {
            // hyper's server takes the body by its last coding, `chunked`, and the proxy sends it
            // on chunked alone: a body in gzip would reach the app as if it were plain (RFC 9112
            // §6.1: a server SHOULD answer 501 to a coding it does not understand, as nginx does).
            self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::TransferCoding)]).inc();
            tracing::warn!(%client, "request refused: a transfer coding besides chunked");
            let mut resp =
                text_response(StatusCode::NOT_IMPLEMENTED, "handover: no transfer coding but chunked is supported\n");
            // Its body is not read: the connection's next bytes are not known to start a request.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (Route::Refused, resp);
        }
        if self.state_path.named_by(req.uri().path()) {
            self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::StatePath)]).inc();
            tracing::warn!(%client, method = %req.method(), path = req.uri().path(), "a client asked for the state endpoint; refused");
            return (Route::Refused, text_response(StatusCode::NOT_FOUND, "not found\n"));
        }
        if self.is_backup_call(&req) {
            return (Route::Backup, self.serve_backup(req, client).await);
        }
        if survey.underscored {
            let dropped = headers::drop_underscored_spellings(req.headers_mut());
            self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::SpoofedField)]).inc();
            tracing::warn!(%client, dropped, "dropped fields that spell the sidecar's own with '_' (Handover-*, X-Forwarded-*)");
        }
        let mark =
            if survey.handover { headers::take_client_handover_headers(req.headers_mut()) } else { (None, false) };
        let rc = self.read_cookie(req.headers(), client);
        let arrival = self.arrival(mark, &req, &rc, client);
        // An upgrade to HTTP itself (`h2c`, as curl's `--http2` asks on plain HTTP) is ignored, as
        // a server may (RFC 9110, 7.8): the request is served as it is. Tunnelled, the client's
        // next requests would reach the app past everything the proxy checks (its Handover-*
        // fields, the session's cookies, the state path).
        let upgrade = survey.upgrade && is_upgrade(&req) && !crate::http1::upgrades_to_http(req.headers());
        if survey.te && headers::wants_trailers(req.headers()) {
            // `te` is hop-by-hop and goes below, but a gRPC server refuses a request without
            // `te: trailers`: noted, and sent again on an h2c request to the app.
            req.extensions_mut().insert(headers::WantsTrailers);
        }
        strip_hop_by_hop(req.headers_mut(), upgrade);
        // Always the address this connection really comes from (a client, a proxy, or a peer).
        append_forwarded_for(req.headers_mut(), client, survey.forwarded);
        let http1 = req.version() < http::Version::HTTP_2;
        let (route, mut resp) = self.route(req, &rc, &arrival, upgrade).await;
        if arrival.forwarded()
            && let Ok(v) = HeaderValue::from_str(&self.cfg.pod_name)
        {
            resp.headers_mut().insert(PEER_HEADER, v);
        }
        if http1 && !upgrade && self.draining_since().is_some() {
            // The pod is on its way out: a keep-alive client (a proxy, a browser, a connection
            // the Service's NAT keeps pinned here) opens its next connection to a pod that stays.
            // (HTTP/2 clients get a GOAWAY when the listener shuts down.)
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        (route, resp)
    }

    /// Routes a request whose headers have been checked and cleaned: forwards it, or restores
    /// and serves it here.
    async fn route(
        &self,
        mut req: Request<Body>,
        rc: &RequestCookie,
        arrival: &Arrival,
        upgrade: bool,
    ) -> (Route, Response<Body>) {
        let live = self.live_with_unlisted_owner(rc, arrival).await;
        let mut retries = Retries::default();
        // Set once the app refused the cookie's state: from then on the request is a fresh session.
        let mut fresh: Option<RequestCookie> = None;
        if let Some(ended) = rc.session().filter(|s| self.has_ended(s)) {
            // A copy of the cookie of a session that ended here (logout) or rotated (login).
            self.metrics.sessions_reset.get_or_create(&[("reason", "ended")]).inc();
            tracing::info!(session = %ended, "a cookie of an ended session was presented; a fresh session instead");
            fresh = Some(rc.dropped());
        } else if let Some(route) = rc.route.as_ref().filter(|r| {
            decide::past_absolute(r.created_at, self.cfg.cookie.absolute_timeout.map(|d| d.as_secs()), unix_now())
        }) {
            // Past the absolute timeout, however active: refused as expired; an app that holds it
            // here is told it left (on its owner, the sweep tells the app).
            self.metrics.sessions_reset.get_or_create(&[("reason", "expired")]).inc();
            tracing::info!(session = %route.session, created_at = route.created_at, "the session is past its absolute timeout; a fresh session instead");
            if self.local(&route.session).is_some() {
                self.forget_session(&route.session);
                self.session_left(&route.session, "expired").await;
            }
            fresh = Some(rc.dropped());
        }
        // Whether the request says it is passed on: only on a forward that passes it on (a round
        // that said so may end in another).
        let mut marked = false;
        loop {
            if std::mem::take(&mut marked) {
                req.headers_mut().remove(headers::PASSED_ON_HEADER);
            }
            let rc = fresh.as_ref().unwrap_or(rc);
            let unreachable = self.unreachable_now();
            let session = rc.session().map(str::to_owned);
            let mut passed_on =
                if self.passes_on() { self.draining_successor(rc, &live, &unreachable, arrival) } else { None };
            if let Some(to) = &passed_on
                && let Some(held) = session.as_deref().filter(|s| self.local(s).is_some())
            {
                // This pod still holds the session, and did not hand it to that member at the drain
                // (none was listed then, or another): its newest state goes along first, else that
                // member would take it over from an older copy (another request's cookie) while
                // this pod's newer acknowledged updates were in no backup. Not kept there, it is
                // served here ([`HandedOver::goes_along`]).
                let handed = sync::lock(&self.handed_to).get(held).is_some_and(|m| m.name == to.name);
                if !handed && !self.hand_over(held).await.goes_along() {
                    passed_on = None;
                }
            }
            let passing_on = passed_on.is_some();
            let decision = match passed_on {
                Some(to) => Decision::Forward { to, reason: ForwardReason::Successor },
                None => decide::route(decide::Inputs {
                    cookie: rc.route.as_ref(),
                    local_version: session.as_deref().and_then(|s| self.local(s)).map(|l| l.version),
                    live: &live,
                    unreachable: &unreachable,
                    me: Me { name: &self.cfg.pod_name, uid: &self.cfg.pod_uid },
                    forwarded: arrival.forwarded(),
                    affinity: self.cfg.affinity,
                }),
            };
            match decision {
                Decision::Forward { to, reason } => {
                    let reason_label = match reason {
                        ForwardReason::Owner => "owner",
                        ForwardReason::Successor => "successor",
                    };
                    if let Some(moved) = session.as_deref().filter(|s| self.local(s).is_some()) {
                        if passing_on {
                            // A state-changing request of the session still at the app here is
                            // sealed (and backed up to the successor) before the successor gets
                            // this one: its acknowledged update goes along.
                            drop(self.order.enter(moved, true).await);
                        }
                        // This pod's app held the session, but another pod owns it now (it took
                        // it over while this one seemed dead, or this one passes it on): the
                        // local copy is stale for good.
                        self.forget_session(moved);
                        self.session_left(moved, "moved").await;
                    }
                    if passing_on {
                        req.headers_mut().insert(headers::PASSED_ON_HEADER, HeaderValue::from_static("1"));
                        marked = true;
                    }
                    match self.peer_connection(&to, &mut req).await {
                        Ok(sender) => {
                            let session = rc.session().unwrap_or("");
                            let resp = self.forward_to_peer(sender, req, &to, session, reason_label, upgrade).await;
                            return (Route::Forward, resp);
                        }
                        Err(e) => {
                            self.metrics
                                .forwards
                                .get_or_create(&[("reason", reason_label), ("result", "unreachable")])
                                .inc();
                            let verdict = match e {
                                NoConnection::NotThePeer(why) => Liveness::Dead(why),
                                NoConnection::Failed(e) => self.probe_peer(&to, &e.to_string()).await,
                            };
                            match verdict {
                                Liveness::Dead(_) => {}
                                Liveness::Alive => {
                                    return (
                                        Route::Refused,
                                        peer_not_reached(&to, "it is alive but refused this forward"),
                                    );
                                }
                                Liveness::Unknown => {
                                    return (
                                        Route::Refused,
                                        peer_not_reached(&to, "it cannot be reached from this pod, and may be alive"),
                                    );
                                }
                            }
                            if !retries.forward_again(live.len()) {
                                return (
                                    Route::Refused,
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
                            if waited && rc.route.is_some() && retries.recheck_app() {
                                // The app may have restarted and lost its sessions: decide again.
                                self.upstreams.put_app(sender);
                                continue;
                            }
                            sender
                        }
                        Err(resp) => {
                            if self.passes_on() && self.draining_successor(rc, &live, &unreachable, arrival).is_some() {
                                // Draining, and the app just turned out to be gone: the
                                // session's successor serves it (decided again, above).
                                continue;
                            }
                            return (Route::Refused, resp);
                        }
                    };
                    let (route, carried) = match (&decision, rc.route.as_ref()) {
                        (Decision::Restore { takeover }, Some(cookie)) => {
                            match self.restore_once(rc, *takeover, !arrival.forwarded()).await {
                                Ok(Restored::Already) => (Route::Serve, None),
                                Ok(Restored::Done(carried)) if *takeover => {
                                    self.metrics.takeovers.inc();
                                    tracing::info!(session = %cookie.session, from = %cookie.owner.name, state_version = carried.state_version, "took over session");
                                    (Route::Takeover, Some(carried))
                                }
                                Ok(Restored::Done(carried)) => (Route::Restore, Some(carried)),
                                Ok(Restored::HeldBy(holder)) => {
                                    self.upstreams.put_app(sender);
                                    tracing::info!(session = %cookie.session, holder = %holder.name, "another member took this session over a moment ago; forwarding there");
                                    let resp =
                                        self.forward_to_holder(req, &holder, &cookie.session, "holder", upgrade).await;
                                    return (Route::Forward, resp);
                                }
                                Ok(Restored::ReadBy(reader)) => {
                                    self.upstreams.put_app(sender);
                                    let resp =
                                        self.forward_to_holder(req, &reader, &cookie.session, "reader", upgrade).await;
                                    return (Route::Forward, resp);
                                }
                                Ok(Restored::Refused | Restored::Lost | Restored::Ended) => {
                                    self.upstreams.put_app(sender);
                                    fresh = Some(rc.dropped());
                                    continue;
                                }
                                Err(resp) => return (Route::Refused, resp),
                            }
                        }
                        (Decision::New, _) => (Route::New, None),
                        _ => (Route::Serve, None),
                    };
                    // Only a draining pod passes requests on: no successor is looked for otherwise.
                    let may_pass_on = self.draining_since().is_some()
                        && self.draining_successor(rc, &live, &unreachable, arrival).is_some();
                    match self.serve_locally(sender, req, rc, carried, upgrade, may_pass_on).await {
                        Served::Response(resp) => return (route, resp),
                        Served::NotSent(unsent) if retries.resend() => req = unsent,
                        Served::NotSent(_) => {
                            return (
                                Route::Refused,
                                text_response(
                                    StatusCode::BAD_GATEWAY,
                                    "handover: the application keeps closing connections or refusing the request\n",
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

impl Proxy {
    /// Where a pod that passes its requests on ([`Proxy::passes_on`]) sends this one: the member
    /// it handed the session to, else the session's successor among the other live members (any
    /// member for a request without a session) — the peer that forwarded it here too, if it is
    /// that member and serves its requests (it will serve this one: every request of the session
    /// must reach the same member), but never back to a peer that passed it on here because it
    /// drains too (it says so: [`headers::PASSED_ON_HEADER`]), which would send it back again
    /// ([`decide::pass_on_to`]). `None`: no such member, or the request was passed on here by a
    /// pod that is leaving (not listed): it is served here, if the app still can.
    fn draining_successor(
        &self,
        rc: &RequestCookie,
        live: &[Member],
        unreachable: &[String],
        arrival: &Arrival,
    ) -> Option<Member> {
        // Passed on here by a pod that is leaving (no longer listed): served here. A plain forward
        // from a pod not listed yet (a new one, whose peers' registries lag) is passed on like a
        // client's request: served here, it would restore a session this pod handed over.
        if arrival.passed_on_by().is_some_and(|from| !live.iter().any(|m| m.name == from)) {
            return None;
        }
        let handed_to = rc.session().and_then(|s| sync::lock(&self.handed_to).get(s).cloned());
        let handed_to = handed_to.filter(|to| !unreachable.contains(&to.name));
        let others = self.other_reachable(live, unreachable);
        decide::pass_on_to(rc.session().unwrap_or(""), handed_to.as_ref(), others, arrival.passed_on_by()).cloned()
    }

    /// The registry's live members, plus the session's owner when the registry does not list it
    /// (yet) but a probe finds it alive. A new pod is Ready — and mints sessions — before every
    /// peer's registry lists it (the ServerPool's status, or a peers file, follows a little later);
    /// taking its sessions over in that moment would fork them. An owner the probe finds dead or
    /// cannot reach is left out: its sessions go to their successor.
    async fn live_with_unlisted_owner(&self, rc: &RequestCookie, arrival: &Arrival) -> Arc<Vec<Member>> {
        let live = self.registry.live();
        let Some(owner) = rc.route.as_ref().map(|r| &r.owner) else { return live };
        let listed = live.iter().any(|m| *m.name == *owner.name);
        if listed || arrival.forwarded() || *owner.name == *self.cfg.pod_name {
            return live;
        }
        let Ok(addr) = owner.addr.parse::<SocketAddr>() else { return live };
        let member = Member { name: owner.name.to_string(), uid: owner.uid.to_string(), addr, admin_port: None };
        if self.unreachable_now().contains(&member.name) {
            return live;
        }
        match self.probe_peer(&member, "the session's owner is not in the registry").await {
            Liveness::Alive => {
                let mut with_owner = live.as_ref().clone();
                with_owner.push(member);
                Arc::new(with_owner)
            }
            Liveness::Dead(_) | Liveness::Unknown => live,
        }
    }
}

/// The client's answer when a failed exchange with the app or a peer was cut by the client's own
/// request body (see [`crate::timed_body`]), not by the other side: it came too slowly, or it
/// broke off or did not parse.
fn cut_by_client(e: &hyper::Error) -> Option<Response<Body>> {
    if cause::<crate::timed_body::BodyTimeout>(e).is_some() {
        Some(body_too_slow())
    } else if cause::<crate::timed_body::BodyBroken>(e).is_some() {
        let mut resp =
            text_response(StatusCode::BAD_REQUEST, "handover: the request body broke off or did not parse\n");
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Some(resp)
    } else {
        None
    }
}

/// The first error of type `T` among the causes of `e`.
fn cause<T: std::error::Error + 'static>(e: &hyper::Error) -> Option<&T> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        source = err.source();
    }
    None
}

fn body_too_slow() -> Response<Body> {
    let mut resp = text_response(StatusCode::REQUEST_TIMEOUT, "handover: the request body came too slowly\n");
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_retry_limit_counts_on_its_own() {
        let mut retries = Retries::default();
        // Two live members: a forward is tried again after each of three dead peers, not a fourth.
        assert!((0..3).all(|_| retries.forward_again(2)));
        assert!(!retries.forward_again(2));
        // The forwards used up take nothing from the app's limits.
        assert!((0..MAX_APP_RECHECKS).all(|_| retries.recheck_app()));
        assert!(!retries.recheck_app());
        assert!((0..MAX_RESENDS).all(|_| retries.resend()));
        assert!(!retries.resend());
        assert_eq!((retries.forwards, retries.app_rechecks, retries.resends), (4, MAX_APP_RECHECKS, MAX_RESENDS));
    }
}
