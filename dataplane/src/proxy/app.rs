//! The app client: connections to the local app (held while it is down, woken together when it is
//! back), sending it a request, the one call of its state endpoint (`state_request`: `GET`, `PUT`,
//! `DELETE <statePath>`), and the watcher that notices the app's death.

use std::sync::Arc;
use std::time::Duration;

use base64_simd::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::headers::{
    AppFields, FORMAT_HEADER, SESSION_HEADER, WantsTrailers, h2_form, origin_form, say_chunked_if_unframed,
    strip_hop_by_hop,
};
use super::request::RequestCookie;
use super::restore::Carried;
use super::tunnel::{TunnelSlot, bridge_upgrade};
use super::{Proxy, cause, cut_by_client, full, text_response};
use crate::cache;
use crate::metrics::BadRequest;
use crate::upstream::{AppSender, Body, ConnectError, h1};
use handover_common::sync;

/// How often the app watcher re-tries a down app; held requests wake on its news.
pub(super) const APP_RETRY_EVERY: Duration = Duration::from_millis(25);

/// A held request re-checks the app itself at least this often (in case the watcher's own
/// connection hides a problem only new connections have).
pub(super) const HELD_RECHECK_EVERY: Duration = Duration::from_millis(250);

/// How long the app may take no new connection, while it is alive as far as is known, before
/// readiness fails: a burst of new connections fills an app's accept queue for a moment, and a
/// readiness probe that fails at once (the operator's fails the pod on one failure) would take the
/// pod out of its Service for it, and send its clients to the others in another burst. An app
/// that hangs fails readiness after this; one that is down (refused connections), at once.
pub const UNRESPONSIVE_BEFORE_UNREADY: Duration = Duration::from_secs(5);

/// The header with which an app names its instance (the contract): an opaque value, the same on
/// every answer of its state endpoint for the life of the process, new at each start. A closed
/// connection then only costs one `GET <statePath>` that compares it; without it, every session is
/// checked with the app after any closed connection.
pub const INSTANCE_HEADER: http::HeaderName = http::HeaderName::from_static("handover-instance");

/// What the sidecar knows of the app's instance.
#[derive(Debug, Default)]
pub(super) struct Instance {
    /// The id the app reported last; `None` while it reports none (or before it was asked).
    id: Option<HeaderValue>,
    /// A connection to the app closed since the id was last confirmed: the app may have
    /// restarted, so the table is not trusted before the id is compared again.
    unverified: bool,
}

/// An answer of the app's state endpoint.
struct StateAnswer {
    status: StatusCode,
    /// The app's instance id (`Handover-Instance`), when it reports one.
    instance: Option<HeaderValue>,
    /// The state's format the app declared (`Handover-State-Format`); empty: none.
    format: String,
    body: Bytes,
}

/// Marks a request sent again after the app closed its connection without answering it.
#[derive(Clone, Copy)]
struct SentUnanswered;

/// Why a request handed to the app got no response.
enum SendError {
    /// The app's connection closed before the request was sent, or it is closing and the app did
    /// not process the request (an h2c GOAWAY): route it again.
    NotSent(Box<Request<Body>>),
    /// The app refused the request's stream on a live h2c connection (not processed): send it
    /// again. Unlike a closed connection, no sign that the app restarted.
    Refused(Box<Request<Body>>),
    /// The client's body came too slowly, or broke off or did not parse (`timed_body`): the
    /// client's answer.
    CutByClient(Response<Body>),
    /// No response head within the response timeout.
    TimedOut,
    Failed(String),
}

/// What became of a request handed to the local app.
pub(super) enum Served {
    Response(Response<Body>),
    /// The app's connection closed before the request was sent: route it again.
    NotSent(Request<Body>),
}

impl Proxy {
    /// Whether the last contact with the local app succeeded.
    pub fn app_is_up(&self) -> bool {
        *self.app_up.borrow()
    }

    /// The app process went away: it lost every session it held in memory.
    pub fn app_lost(&self) {
        *sync::lock(&self.app_unresponsive_since) = None;
        if self.app_up.send_replace(false) {
            if self.app_answered.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(app = %self.cfg.app, "the app is down; its sessions will be restored from cookies");
            } else {
                tracing::info!(app = %self.cfg.app, "the app does not listen yet; requests wait for it");
            }
        }
        self.forget_sessions();
        self.upstreams.forget(self.cfg.app);
        *sync::lock(&self.app_reads) = None;
    }

    /// Whether the app may get requests, as readiness says: it answers, or has taken no new
    /// connection for less than [`UNRESPONSIVE_BEFORE_UNREADY`] while alive as far as is known.
    pub fn app_ready(&self) -> bool {
        self.app_is_up()
            || sync::lock(&self.app_unresponsive_since)
                .is_some_and(|since| since.elapsed() < UNRESPONSIVE_BEFORE_UNREADY)
    }

    /// A new connection to the app failed. Refused, nothing listens: the process is gone with its
    /// sessions ([`Proxy::app_lost`]). Anything else says nothing of them: the app took none within
    /// the connect timeout, its queue of connections not yet accepted full (a burst of new
    /// connections at a busy app: the kernel drops their SYNs, and a connect waits a second for
    /// the retransmission) or hanging; or this sidecar could not make one (out of descriptors or
    /// local ports). Requests wait for it as for an app that is down, but no restart is assumed: an
    /// app that reports its instance is asked for it again once it answers; for any other, its
    /// closed connections tell a restart, as always ([`Proxy::app_maybe_restarted`]).
    pub(super) fn app_connect_failed(&self, e: &ConnectError) {
        let reason = match e {
            ConnectError::Io(_, io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            ConnectError::Io(..) => "local",
            ConnectError::Timeout(_) => "timeout",
            ConnectError::Handshake(..) => "handshake",
        };
        self.metrics.app_connect_failures.inc(reason);
        if matches!(reason, "refused" | "handshake") {
            self.app_lost();
            return;
        }
        // From an app that answered (one found down, refusing, stays so until it answers again).
        if self.app_up.send_replace(false) {
            *sync::lock(&self.app_unresponsive_since) = Some(std::time::Instant::now());
            tracing::warn!(app = %self.cfg.app, error = %e, "no new connection to the app; requests wait for it");
        }
        self.app_maybe_restarted();
    }

    /// The state formats the app last declared it reads (`Handover-Reads`), if it did.
    pub fn app_reads(&self) -> Option<String> {
        sync::lock(&self.app_reads).clone()
    }

    /// Records the app's `Handover-Reads` from one of its answers.
    fn note_app_reads(&self, fields: &AppFields) {
        let Some(reads) = fields.reads() else { return };
        let mut known = sync::lock(&self.app_reads);
        if known.as_deref() != Some(reads.as_str()) {
            tracing::info!(reads = %reads, "the app declared the state formats it reads");
            *known = Some(reads);
        }
    }

    /// A connection to the app closed (it may only have been idle for too long). An app that
    /// reports its instance is asked again before a session is served from the table; for any
    /// other, every session is forgotten (checked with the app on its next request). Returns
    /// whether the sessions were forgotten.
    pub(super) fn app_maybe_restarted(&self) -> bool {
        let mut instance = sync::lock(&self.app_instance);
        if instance.id.is_some() {
            instance.unverified = true;
            return false;
        }
        drop(instance);
        self.forget_sessions();
        true
    }

    /// Takes note of the instance id on an answer of the app's state endpoint: a new one means the
    /// app restarted and lost its sessions, so they are forgotten. Returns whether they were.
    fn note_instance(&self, seen: Option<&HeaderValue>) -> bool {
        let mut instance = sync::lock(&self.app_instance);
        let restarted = match (&instance.id, seen) {
            (Some(known), Some(seen)) => known != seen,
            // An app that stopped reporting one: no telling, assume the worst.
            (Some(_), None) => true,
            // The first id (or none at all): the table came from a live app, keep it.
            (None, _) => false,
        };
        instance.id = seen.cloned();
        instance.unverified = false;
        drop(instance);
        if restarted {
            self.metrics.app_restarts.inc();
            tracing::warn!(app = %self.cfg.app, "the app restarted (a new instance id); its sessions will be checked or restored");
            self.forget_sessions();
        }
        restarted
    }

    /// Asks the app for its instance id (`GET <statePath>` for no session) and compares it with
    /// the one known. Returns whether the sessions were forgotten: the id changed, the app
    /// reports none, or it could not be asked.
    pub(super) async fn check_instance(&self) -> bool {
        let mut asked = self.state_exchange(Method::GET, None, Bytes::new(), None).await;
        if asked.is_err() {
            // The pooled connection it took may be one the app is closing at this very moment
            // (idle for as long as the one that closed): once more, on a new connection.
            asked = self.state_exchange(Method::GET, None, Bytes::new(), None).await;
        }
        match asked {
            Ok(StateAnswer { instance: seen, .. }) => {
                let forgotten = self.note_instance(seen.as_ref());
                if seen.is_none() && !forgotten {
                    // An app without an id: today's rule, any closed connection forgets.
                    return self.app_maybe_restarted();
                }
                forgotten
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not ask the app for its instance; its sessions will be checked");
                self.forget_sessions();
                true
            }
        }
    }

    fn instance_unverified(&self) -> bool {
        sync::lock(&self.app_instance).unverified
    }

    pub(super) fn app_back(&self) {
        // Called on every request: only a change is written (and wakes the held requests).
        let first = !self.app_answered.load(std::sync::atomic::Ordering::Relaxed);
        if first {
            self.app_answered.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let changed = self.app_up.send_if_modified(|up| !std::mem::replace(up, true));
        if changed {
            *sync::lock(&self.app_unresponsive_since) = None;
            if first {
                tracing::info!(app = %self.cfg.app, "the app answers");
            } else {
                tracing::info!(app = %self.cfg.app, "the app is back");
            }
        }
    }

    /// A connection to the local app; while it is down, waits up to `app_wait` for it. The flag
    /// says whether the app may have restarted meanwhile (it had to wait, or a closed connection
    /// was not followed by the same instance id): then the sessions were forgotten and the request
    /// must be routed again.
    ///
    /// At most `max_held` requests wait at once (more get 503 at once); they wake when the app
    /// watcher sees the app back, not by each polling it.
    pub(super) async fn app_connection(&self) -> Result<(AppSender, bool), Response<Body>> {
        // Draining, the app is on its way out (a native sidecar outlives it): no waiting for it.
        let wait = if self.draining_since().is_some() { Duration::ZERO } else { self.cfg.app_wait };
        let deadline = tokio::time::Instant::now() + wait;
        let mut held = None;
        // Subscribed only once the app is found down: a request that finds it up needs no news.
        let mut app_up = None;
        loop {
            match self.upstreams.get_app(self.cfg.app, self.cfg.app_protocol, self.cfg.connect_timeout).await {
                Ok((sender, saw_closed)) => {
                    self.app_back();
                    if held.is_some() {
                        self.metrics.app_waits.get_or_create(&[("result", "ok")]).inc();
                    }
                    let mut recheck = held.is_some();
                    if saw_closed {
                        // The app closed connections: it may have restarted.
                        recheck |= self.app_maybe_restarted();
                    }
                    if self.instance_unverified() {
                        recheck |= self.check_instance().await;
                    }
                    return Ok((sender, recheck));
                }
                Err(e) => {
                    self.app_connect_failed(&e);
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
                    let app_up = app_up.get_or_insert_with(|| self.app_up.subscribe());
                    let _ = tokio::time::timeout_at(recheck, app_up.wait_for(|up| *up)).await;
                }
            }
        }
    }

    pub(super) async fn serve_locally(
        &self,
        sender: AppSender,
        mut req: Request<Body>,
        rc: &RequestCookie,
        carried: Option<Carried>,
        upgrade: bool,
        may_pass_on: bool,
    ) -> Served {
        let session = match rc.session() {
            Some(s) => s.to_owned(),
            None => crate::random::session_id(),
        };
        // Held until the response is sealed: see `order.rs`.
        let turn = self.order.enter(&session, !req.method().is_safe()).await;
        if may_pass_on && rc.session().is_some() && self.passes_on() {
            // The drain handed the sessions over while this request waited for its turn: a later
            // request of the session may be at the successor already. Routed again, it goes there.
            drop(turn);
            return Served::NotSent(req);
        }
        if rc.session().is_some_and(|s| self.local(s).is_none()) {
            // The session left this pod's table while this request waited for its turn (another
            // pod owns it now, it ended, or the app went away): the app no longer holds it, and
            // would start it anew, empty, under the client's session. Routed again, the request
            // goes where the session is, or restores it.
            drop(turn);
            self.upstreams.put_app(sender);
            return Served::NotSent(req);
        }
        rc.app_cookie.apply(req.headers_mut());
        if let Ok(v) = HeaderValue::from_str(&session) {
            req.headers_mut().insert(SESSION_HEADER, v);
        }
        origin_form(&mut req);
        if upgrade && matches!(sender, AppSender::H2(_)) {
            // An upgrade (WebSocket) over HTTP/2 needs extended CONNECT (RFC 8441), which the
            // sidecar does not speak to the app.
            return Served::Response(text_response(
                StatusCode::NOT_IMPLEMENTED,
                "handover: protocol upgrades are not forwarded to an h2c app\n",
            ));
        }
        if matches!(sender, AppSender::H2(_)) {
            h2_form(&mut req, self.cfg.app);
        }
        let method = req.method().clone();
        let authorized = req.headers().contains_key(header::AUTHORIZATION);
        let client_upgrade =
            upgrade.then(|| (hyper::upgrade::on(&mut req), req.extensions_mut().remove::<TunnelSlot>()));
        let deadline = self.cfg.response_timeout.map(|limit| tokio::time::Instant::now() + limit);
        let (mut resp, fields) = match self.send_to_app(sender, req, upgrade, deadline).await {
            Ok(answer) => answer,
            Err(SendError::TimedOut) => {
                let limit = self.cfg.response_timeout.unwrap_or_default();
                self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::AppTimeout)]).inc();
                tracing::warn!(session = %session, ?limit, "the app did not answer in time");
                return Served::Response(text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("handover: the application did not answer within {limit:?}\n"),
                ));
            }
            // The app closed this connection before taking the request: it may have restarted
            // and lost its sessions, so route the request again once that is known.
            Err(SendError::NotSent(unsent)) => {
                let mut unsent = *unsent;
                self.app_maybe_restarted();
                if let Some((on_upgrade, tunnel)) = client_upgrade {
                    unsent.extensions_mut().insert(on_upgrade);
                    if let Some(tunnel) = tunnel {
                        unsent.extensions_mut().insert(tunnel);
                    }
                }
                return Served::NotSent(unsent);
            }
            Err(SendError::Refused(unsent)) => return Served::NotSent(*unsent),
            Err(SendError::CutByClient(answer)) => return Served::Response(answer),
            Err(SendError::Failed(e)) => {
                tracing::warn!(error = %e, "the app failed while answering");
                return Served::Response(text_response(
                    StatusCode::BAD_GATEWAY,
                    "handover: the application failed while answering\n",
                ));
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some((client, tunnel)) = client_upgrade {
                bridge_upgrade(client, hyper::upgrade::on(&mut resp), tunnel);
            }
            strip_hop_by_hop(resp.headers_mut(), true);
            return Served::Response(resp);
        }

        let (mut parts, body) = resp.into_parts();
        let pushed = fields.state.as_ref().and_then(|v| match URL_SAFE_NO_PAD.decode_to_vec(v.trim_ascii()) {
            Ok(state) => Some(state),
            Err(_) => {
                self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::BadPushedState)]).inc();
                tracing::warn!(session = %session, "the app pushed a Handover-State that is not base64url; ignored");
                None
            }
        });
        let format = fields.format();
        self.note_app_reads(&fields);
        strip_hop_by_hop(&mut parts.headers, false);
        let pushed = match pushed {
            Some(_) if !turn.may_seal_push() => {
                tracing::debug!(session = %session, "a state pushed on a safe request while the session changed: not sealed");
                None
            }
            pushed => pushed,
        };
        let (session, pushed) = if fields.rotate {
            match self.rotate_session(&session, pushed, &format).await {
                Ok((new_id, state, moved_format)) => (new_id, Some((state, moved_format))),
                Err(pushed) => (session, pushed.map(|p| (p, format))),
            }
        } else {
            (session, pushed.map(|p| (p, format)))
        };
        let (pushed, format) = pushed.map_or((None, String::new()), |(p, f)| (Some(p), f));
        let ours = self.seal_response(parts.status, &mut parts.headers, &session, rc, pushed, format, carried).await;
        let exchange = cache::Exchange { method: &method, authorized, status: parts.status, headers: &parts.headers };
        if ours && cache::shared_cache_may_store(exchange) {
            // A shared cache would hand this client's state cookie to everyone after it.
            cache::make_private(&mut parts.headers);
            self.metrics.made_private.inc();
        }
        if self.draining_since().is_some() {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Served::Response(Response::from_parts(parts, body))
    }

    /// Sends `req` to the app on `sender`, and has its response head by `deadline` if there is one
    /// ([`SendError::TimedOut`]), with what it says to the sidecar taken out of it. An HTTP/1.1
    /// request whose body has all arrived is written and read here (`upstream::h1`); the others
    /// (a body still arriving, an upgrade) and h2c go through hyper's client.
    async fn send_to_app(
        &self,
        sender: AppSender,
        mut req: Request<Body>,
        upgrade: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Response<Body>, AppFields), SendError> {
        let sender = match sender {
            AppSender::Http1(conn) if !upgrade => match h1::whole_body(&mut req) {
                Some(body) => return self.exchange(conn, req, body, deadline).await,
                None => AppSender::Http1(conn),
            },
            sender => sender,
        };
        let mut resp = match deadline {
            Some(at) => tokio::time::timeout_at(at, self.send_with_hyper(sender, req, upgrade))
                .await
                .unwrap_or(Err(SendError::TimedOut)),
            None => self.send_with_hyper(sender, req, upgrade).await,
        }?;
        let fields = AppFields::take(resp.headers_mut());
        Ok((resp, fields))
    }

    /// Sends `req` with its whole `body` on `conn`, written and read here (`upstream::h1`).
    async fn exchange(
        &self,
        conn: h1::AppConn,
        req: Request<Body>,
        body: Bytes,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Response<Body>, AppFields), SendError> {
        let (mut parts, _) = req.into_parts();
        match conn.exchange(&mut parts, &body, &self.upstreams.app_idle, deadline, AppFields::NAMES).await {
            Ok((resp, fields)) => Ok((resp, AppFields::from_values(fields))),
            Err(h1::ExchangeError::TimedOut) => Err(SendError::TimedOut),
            Err(h1::ExchangeError::NotSent(_)) => {
                Err(SendError::NotSent(Box::new(Request::from_parts(parts, full(body)))))
            }
            // Routed again as a request the app did not take, without taking the app for restarted.
            Err(h1::ExchangeError::Stray) => Err(SendError::Refused(Box::new(Request::from_parts(parts, full(body))))),
            // Sent again once: an app that closes on this very request must not
            // see it over and over.
            Err(h1::ExchangeError::Unanswered(e)) if parts.extensions.get::<SentUnanswered>().is_none() => {
                tracing::debug!(error = %e, method = %parts.method, "the app closed a kept-alive connection without answering; sending the request again");
                parts.extensions.insert(SentUnanswered);
                Err(SendError::NotSent(Box::new(Request::from_parts(parts, full(body)))))
            }
            Err(e) => Err(SendError::Failed(e.to_string())),
        }
    }

    /// Sends `req` through hyper's client: on `sender`'s HTTP/1.1 connection, or its h2c one.
    async fn send_with_hyper(
        &self,
        sender: AppSender,
        mut req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Body>, SendError> {
        let sent = match sender {
            AppSender::Http1(conn) => {
                let head_request = req.method() == Method::HEAD;
                say_chunked_if_unframed(&mut req);
                let mut sender =
                    conn.into_hyper(self.cfg.app, upgrade).await.map_err(|e| SendError::Failed(e.to_string()))?;
                let sent = sender.try_send_request(req).await;
                // Refused as on the path that reads the head itself.
                if let Ok(resp) = &sent
                    && let Some(why) = h1::refusal(resp.status(), resp.headers(), head_request, upgrade)
                {
                    return Err(SendError::Failed(why.to_owned()));
                }
                sent
            }
            AppSender::H2(mut sender) => {
                // A stream the app did not process is sent again from a copy, when the request's
                // body is whole in hand (none, or all of it read already, as the client's HTTP/1.1
                // connection reads a small one): a body still arriving cannot be sent twice.
                let copy = h1::whole_body(&mut req).map(|body| {
                    let copy = resendable_copy(&req, body.clone());
                    if !body.is_empty() {
                        *req.body_mut() = full(body);
                    }
                    copy
                });
                let sent = sender.try_send_request(req).await;
                if let (Err(e), Some(copy)) = (&sent, copy)
                    && e.message().is_none()
                {
                    match not_processed(e.error()) {
                        Some(NotProcessed::Refused) => {
                            tracing::debug!(method = %copy.method(), "the app refused the request's stream; sending it again");
                            return Err(SendError::Refused(Box::new(copy)));
                        }
                        Some(NotProcessed::GoingAway) => {
                            // The connection is closing: the next request opens another. Its
                            // app may be shutting down to restart, as when an HTTP/1.1
                            // connection closes before taking a request.
                            tracing::debug!(method = %copy.method(), "the app's GOAWAY left the request's stream unprocessed; sending it again");
                            self.upstreams.forget_h2(self.cfg.app);
                            return Err(SendError::NotSent(Box::new(copy)));
                        }
                        None => {}
                    }
                }
                sent
            }
        };
        match sent {
            Ok(resp) => Ok(resp.map(|b| b.map_err(Into::into).boxed())),
            // hyper's senders hand back a request they never sent, so it can be routed again.
            Err(mut e) => match e.take_message() {
                Some(unsent) => Err(SendError::NotSent(Box::new(unsent))),
                None => match cut_by_client(e.error()) {
                    Some(answer) => Err(SendError::CutByClient(answer)),
                    None => Err(SendError::Failed(e.error().to_string())),
                },
            },
        }
    }

    /// `GET <statePath>` from the local app: its state for the session (empty when it has none)
    /// and the format it declared for it (empty: none).
    pub(super) async fn pull_state(&self, session: &str) -> Result<(Vec<u8>, String), String> {
        match self.state_call(Method::GET, session, Bytes::new(), None).await? {
            (StatusCode::OK, format, bytes) => Ok((bytes.to_vec(), format)),
            (StatusCode::NOT_FOUND, _, _) => Ok((Vec::new(), String::new())),
            (status, _, _) => Err(format!("the app answered {status} to the state pull")),
        }
    }

    /// One call of the app's state endpoint (`GET` to pull or check, `PUT` to restore, `DELETE`),
    /// on the app's state address, within `state_timeout`. Answers over the state limit are refused.
    pub(super) async fn state_request(
        &self,
        method: Method,
        session: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        self.state_call(method, session, body, None).await.map(|(status, _, bytes)| (status, bytes))
    }

    /// [`Proxy::state_request`] with the state's format declared on the call (a restore's `PUT`),
    /// and the format the app declared on its answer (a pull's `GET`). The app's instance id on
    /// the answer is compared with the one known (a new one: the app restarted).
    pub(super) async fn state_call(
        &self,
        method: Method,
        session: &str,
        body: Bytes,
        format: Option<&str>,
    ) -> Result<(StatusCode, String, Bytes), String> {
        let answer = self.state_exchange(method, Some(session), body, format).await?;
        if answer.instance.is_some() || sync::lock(&self.app_instance).id.is_some() {
            self.note_instance(answer.instance.as_ref());
        }
        Ok((answer.status, answer.format, answer.body))
    }

    /// One exchange with the app's state endpoint (`session` `None`: a check of the instance id).
    async fn state_exchange(
        &self,
        method: Method,
        session: Option<&str>,
        body: Bytes,
        format: Option<&str>,
    ) -> Result<StateAnswer, String> {
        let mut sender =
            self.upstreams.get(self.cfg.state_addr, self.cfg.connect_timeout).await.map_err(|e| e.to_string())?;
        let mut call =
            Request::builder().method(method).uri(self.cfg.state_path.as_str()).header(header::HOST, "localhost");
        if let Some(session) = session {
            call = call.header(SESSION_HEADER, session);
        }
        if let Some(format) = format.filter(|f| !f.is_empty()) {
            call = call.header(FORMAT_HEADER, format);
        }
        if !body.is_empty() {
            call = call.header(header::CONTENT_TYPE, "application/octet-stream");
        }
        let call = call.body(full(body)).map_err(|e| e.to_string())?;
        let outcome = tokio::time::timeout(self.cfg.state_timeout, async {
            sender.ready().await.map_err(|e| e.to_string())?;
            let mut resp = sender.send_request(call).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let fields = AppFields::take(resp.headers_mut());
            let format = fields.format();
            self.note_app_reads(&fields);
            let instance = resp.headers().get(INSTANCE_HEADER).cloned();
            let body = Limited::new(resp.into_body(), self.cfg.max_state_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the state: {e}"))?
                .to_bytes();
            Ok::<_, String>(StateAnswer { status, instance, format, body })
        })
        .await
        .map_err(|_| format!("the app did not answer within {:?}", self.cfg.state_timeout))??;
        self.upstreams.put(self.cfg.state_addr, sender);
        Ok(outcome)
    }

    /// Keeps one idle connection open to the app: the kernel closes it the moment the app process
    /// dies, so the session table is not trusted again before the app's instance id is compared
    /// (or, for an app without one, is cleared) even when no request is in flight.
    pub async fn watch_app(self: Arc<Self>) {
        use tokio::io::AsyncReadExt;
        loop {
            match tokio::net::TcpStream::connect(self.cfg.app).await {
                Ok(mut stream) => {
                    self.app_back();
                    // Learns the instance id at start, compares it after each closed connection.
                    self.check_instance().await;
                    let mut discard = [0u8; 64];
                    // Ends on EOF or error: the app died, or closed an idle connection. A dead
                    // app may be back before anyone notices, so assume the worst until its
                    // instance id says otherwise: no session is served from the table meanwhile.
                    // Bytes are read past, not taken for a close: an HTTP/2 server sends its
                    // SETTINGS at once, without waiting for the client's preface.
                    while let Ok(1..) = stream.read(&mut discard).await {}
                    self.app_maybe_restarted();
                }
                Err(e) => {
                    self.app_connect_failed(&ConnectError::Io(self.cfg.app, e));
                    tokio::time::sleep(APP_RETRY_EVERY).await;
                }
            }
        }
    }
}

/// How an h2c app said that it did not process a request's stream, so that sending it again is
/// safe whatever its method.
enum NotProcessed {
    /// The stream was reset with `REFUSED_STREAM` (RFC 9113 §8.7), on a connection that lives on.
    Refused,
    /// A GOAWAY from the app named a last stream below this one (RFC 9113 §6.8), or had come
    /// before it was sent: the connection is closing. (h2 reports a GOAWAY to those streams only;
    /// one the app took is cut, if at all, as a broken connection.)
    GoingAway,
}

fn not_processed(e: &hyper::Error) -> Option<NotProcessed> {
    let e = cause::<h2::Error>(e)?;
    if !e.is_remote() {
        return None;
    }
    if e.is_go_away() {
        Some(NotProcessed::GoingAway)
    } else if e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(NotProcessed::Refused)
    } else {
        None
    }
}

/// `req` as it was sent, with `body` (its whole body): its head, and whether it wants trailers
/// (the one extension the h2c path reads).
fn resendable_copy(req: &Request<Body>, body: Bytes) -> Request<Body> {
    let mut copy = Request::new(full(body));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    if req.extensions().get::<WantsTrailers>().is_some() {
        copy.extensions_mut().insert(WantsTrailers);
    }
    copy
}
