//! What a request arrives with: its state cookie, opened (or refused, counted), and whether a peer
//! sidecar forwarded it (the loop guard).

use std::net::SocketAddr;

use http::Request;
use http::header::{HeaderMap, HeaderValue};

use super::headers::cookie_pairs;
use super::{Proxy, unix_now};
use crate::cookie::{self, Snapshot};
use crate::metrics::BadRequest;
use crate::peer_auth;
use crate::upstream::Body;

/// The cookie of a request, opened, and which of its chunks the client holds.
pub(super) struct RequestCookie {
    pub(super) snapshot: Option<Snapshot>,
    /// Chunk indices present in the request (bounded by the request's size).
    pub(super) held_chunks: Vec<usize>,
    /// The cookie opened, but the app refused its state: the request runs as a fresh session and
    /// the response replaces or deletes the cookie.
    pub(super) dropped: bool,
}

/// What the loop guard concluded about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// From a client (or with a forward mark that did not verify, which was dropped).
    Client,
    /// Forwarded by a peer sidecar of the pool: serve it here.
    Forwarded,
}

/// The `reason` label of `handover_sessions_reset_total` for a cookie that was presented but did
/// not open.
pub(super) fn reset_reason(e: &cookie::CookieError) -> &'static str {
    use cookie::CookieError as E;
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
    pub(super) fn read_cookie(&self, headers: &HeaderMap) -> RequestCookie {
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
    pub(super) fn arrival(
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
                self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::ForgedForward)]).inc();
                tracing::warn!(%client, reason = e.reason(), error = %e, "forward mark refused; routing the request as a client's");
                Arrival::Client
            }
        }
    }
}
