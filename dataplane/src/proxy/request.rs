//! What a request arrives with: its session cookies — the routing cookie opened (or refused,
//! counted), the state chunks joined but not opened (only a restore needs them) — and whether a
//! peer sidecar forwarded it (the loop guard).

use std::net::SocketAddr;

use http::Request;
use http::header::{HeaderMap, HeaderValue};

use super::headers::{AppCookie, cookie_pairs};
use super::{Proxy, unix_now};
use crate::cookie::{self, CookieError, Route};
use crate::header_budget;
use crate::metrics::BadRequest;
use crate::peer_auth;
use crate::upstream::Body;

/// The session cookies of a request.
pub(super) struct RequestCookie {
    /// The routing cookie, opened.
    pub(super) route: Option<Route>,
    /// The route's state chunks, joined, not opened: `Ok(None)` when the route has none in the
    /// client; an error when the client did not carry them whole.
    pub(super) state: Result<Option<String>, CookieError>,
    /// State chunk indices present in the request (bounded by the request's size).
    pub(super) held_chunks: Vec<usize>,
    /// Whether the request carried a routing cookie at all (to delete it with the chunks).
    pub(super) held_route: bool,
    /// Bytes of the site's other cookies, as the client sends them back.
    pub(super) other_cookies: usize,
    /// The most bytes of session cookies this client is known to carry (0: no limit seen): the
    /// route's, or what arrived now when the client dropped state chunks.
    pub(super) carry: u32,
    /// The `Cookie` field the app gets.
    pub(super) app_cookie: AppCookie,
    /// The cookie opened, but its state is gone (the app refused it, or the session ended): the
    /// request runs as a fresh session and the response replaces or deletes the cookies.
    pub(super) dropped: bool,
}

impl RequestCookie {
    /// The same request as a fresh session: no route, the cookies it holds to be replaced.
    pub(super) fn dropped(&self) -> RequestCookie {
        RequestCookie {
            route: None,
            state: Ok(None),
            held_chunks: self.held_chunks.clone(),
            held_route: self.held_route,
            other_cookies: self.other_cookies,
            carry: self.carry,
            app_cookie: self.app_cookie.clone(),
            dropped: true,
        }
    }

    pub(super) fn session(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.session.as_str())
    }
}

/// What the loop guard concluded about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// From a client (or with a forward mark that did not verify, which was dropped).
    Client,
    /// Forwarded by the peer sidecar `from` (a pod of the pool): serve it here. `passed_on`:
    /// `from` passes its requests on (it is draining), and says so.
    Forwarded { from: String, passed_on: bool },
}

impl Arrival {
    pub(super) fn forwarded(&self) -> bool {
        matches!(self, Arrival::Forwarded { .. })
    }

    /// The peer that passed the request on here (draining itself), if one did.
    pub(super) fn passed_on_by(&self) -> Option<&str> {
        match self {
            Arrival::Forwarded { from, passed_on: true } => Some(from),
            _ => None,
        }
    }
}

/// The `reason` label of `handover_sessions_reset_total` for a cookie that was presented but did
/// not open.
pub(super) fn reset_reason(e: &CookieError) -> &'static str {
    use CookieError as E;
    match e {
        E::Expired => "expired",
        E::WrongPool => "wrong_pool",
        E::UnknownKey(_) => "unknown_key",
        E::MissingChunk(_) | E::OverBudget | E::Stale => "incomplete",
        E::Tampered | E::Malformed => "tampered",
        E::Garbage => "garbage",
        E::UnsupportedVersion(_) => "unsupported_version",
    }
}

impl Proxy {
    pub(super) fn read_cookie(&self, headers: &HeaderMap, client: SocketAddr) -> RequestCookie {
        let pairs = cookie_pairs(headers);
        let name = &self.cfg.cookie.attrs.name;
        let lookup = |n: &str| cookie::lookup(&pairs, n);
        let held_chunks = cookie::held_state_chunks(name, pairs.iter().map(|(n, _)| *n));
        let other_cookies =
            header_budget::other_cookie_bytes(pairs.iter().copied(), |n| cookie::is_session_cookie(name, n));
        let held_route = lookup(name);
        let route =
            held_route.map(|v| cookie::open_route_by(v, &self.cfg.pool, &self.keys.ring(), unix_now(), Some(&self.me)));
        let route = match route {
            None => None,
            Some(Ok(route)) => Some(route),
            Some(Err(e)) => {
                self.metrics.cookie_rejects.get_or_create(&[("reason", e.reason())]).inc();
                // A cookie was presented and its session cannot go on: the request runs without it.
                self.metrics.sessions_reset.get_or_create(&[("reason", reset_reason(&e))]).inc();
                if matches!(e, CookieError::Expired | CookieError::UnknownKey(_)) {
                    // A session's ordinary end (its cookie aged out, or its key after it).
                    tracing::debug!(reason = e.reason(), error = %e, "routing cookie refused; treating it as absent");
                } else {
                    // Made for another pool, or altered: a client's bytes, logged as other refusals are.
                    tracing::warn!(%client, reason = e.reason(), error = %e, "routing cookie refused; treating it as absent");
                }
                None
            }
        };
        let state = match &route {
            Some(r) if r.chunks > 0 => cookie::join_state(name, r, lookup).map(Some),
            _ => Ok(None),
        };
        let mut carry = route.as_ref().map_or(0, |r| r.carry);
        if let (Some(r), Err(CookieError::MissingChunk(_))) = (&route, &state) {
            // The client dropped cookies: what did arrive is what it carries (at least the route).
            let arrived: usize = pairs
                .iter()
                .filter(|(n, _)| cookie::is_session_cookie(name, n))
                .map(|(n, v)| n.len() + 1 + v.len() + 2)
                .sum();
            carry = u32::try_from(arrived).unwrap_or(u32::MAX);
            self.metrics.cookie_rejects.get_or_create(&[("reason", "missing_chunk")]).inc();
            tracing::info!(session = %r.session, arrived, chunks = r.chunks, "the client dropped state chunks");
        }
        RequestCookie {
            held_route: held_route.is_some(),
            route,
            state,
            held_chunks,
            other_cookies,
            carry,
            app_cookie: AppCookie::new(headers, &pairs, name),
            dropped: false,
        }
    }

    /// The loop guard: a request counts as forwarded by a peer only if its mark verifies. Any
    /// other mark is dropped (counted, logged) and the request is routed like any client's.
    pub(super) fn arrival(
        &self,
        (mark, passed_on): (Option<HeaderValue>, bool),
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
            session: rc.session().unwrap_or(""),
        };
        match peer_auth::verify(&self.keys.ring(), mark.as_bytes(), &claim, unix_now()) {
            Ok(from) => {
                tracing::debug!(from, "request forwarded by a peer");
                Arrival::Forwarded { from, passed_on }
            }
            Err(e) => {
                self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::ForgedForward)]).inc();
                tracing::warn!(%client, reason = e.reason(), error = %e, "forward mark refused; routing the request as a client's");
                Arrival::Client
            }
        }
    }
}
