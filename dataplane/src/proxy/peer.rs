//! Forwarding to a peer sidecar (signed, its liveness probed when it fails or is slow).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::headers::{FORWARDED_HEADER, PEER_HEADER, origin_form, say_chunked_if_unframed, strip_hop_by_hop};
use super::tunnel::{TunnelSlot, bridge_upgrade};
use super::{Proxy, cut_by_client, retry_soon, text_response, unix_now};
use crate::peer_auth;
use crate::peer_probe::{self, Identity, Liveness};
use crate::registry::Member;
use crate::upstream::{self, Body};
use handover_common::sync;

/// How long a peer that failed to answer counts as dead to this sidecar.
pub(super) const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// How long a probe that found the listed pod at a peer's address vouches for new connections
/// to it. The address can be another pod's only once the listed pod's sandbox is torn down and a
/// new pod's is set up and its containers started: seconds, not one.
const IDENTIFIED_FOR: Duration = Duration::from_secs(1);
/// How long new connections go unchecked to a peer whose admin port could not be reached at all
/// (a NetworkPolicy that drops it, a partition) or that accepted the probe and stayed silent: the
/// forward goes on as before the check (probed if it fails or is slow), rather than every new
/// connection waiting out a probe's timeout.
const UNCHECKED_FOR: Duration = Duration::from_secs(30);

/// Why a request got no connection to a peer.
#[derive(Debug, thiserror::Error)]
pub(super) enum NoConnection {
    /// A probe found no sidecar of the listed pod at its address (the reason): the pod is gone,
    /// and its address may be another's, which must not get the client's request.
    #[error("its address does not answer as its pod ({0})")]
    NotThePeer(&'static str),
    #[error("{0}")]
    Failed(upstream::ConnectError),
}

/// A forward that could not get through to a peer the probe did not find dead: no takeover (that
/// could fork the session while its owner lives); the client retries.
pub(super) fn peer_not_reached(to: &Member, why: &str) -> Response<Body> {
    retry_soon(format!("handover: pool member {} owns this session but {why}; retry\n", to.name))
}

impl Proxy {
    pub(super) fn unreachable_now(&self) -> Vec<String> {
        let mut map = sync::lock(&self.unreachable);
        if map.is_empty() {
            // The common case, on every request: no clock read, no allocation.
            return Vec::new();
        }
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        map.keys().cloned().collect()
    }

    /// The members of `live` a session could be handed to from here: not this pod, and not a peer
    /// it lately could not reach (`unreachable`, from [`Proxy::unreachable_now`]).
    pub(super) fn other_reachable<'a>(
        &'a self,
        live: &'a [Member],
        unreachable: &'a [String],
    ) -> impl Iterator<Item = &'a Member> {
        live.iter().filter(|m| m.name != self.cfg.pod_name && !unreachable.contains(&m.name))
    }

    pub(super) fn mark_unreachable(&self, name: &str) {
        let mut map = sync::lock(&self.unreachable);
        map.insert(name.to_owned(), Instant::now() + UNREACHABLE_FOR);
    }

    /// Forwards to `to`, which holds `session` already (`reason` "holder": see `Restored::HeldBy`)
    /// or takes it over because its app reads the state (`"reader"`: `Restored::ReadBy`).
    pub(super) async fn forward_to_holder(
        &self,
        mut req: Request<Body>,
        to: &Member,
        session: &str,
        reason: &'static str,
        upgrade: bool,
    ) -> Response<Body> {
        match self.peer_connection(to, &mut req).await {
            Ok(sender) => self.forward_to_peer(sender, req, to, session, reason, upgrade).await,
            Err(e) => peer_not_reached(to, &format!("it holds this session but could not be reached ({e})")),
        }
    }

    /// A connection to `to` for `req`: an idle one of the pool, or a new one to the pod the
    /// registry lists there. A registry lags behind a pod's death, and a new pod (of any
    /// Deployment) may get the dead pod's address meanwhile: a new connection is made only after
    /// a probe of the address's `/live` found the listed pod (by uid), within [`IDENTIFIED_FOR`].
    /// An idle connection is the one made to it, and closes when its pod goes.
    pub(super) async fn peer_connection(
        &self,
        to: &Member,
        req: &mut Request<Body>,
    ) -> Result<upstream::PeerSender, NoConnection> {
        let in_hand = upstream::h1::body_in_hand(req);
        if let Some(sender) = in_hand.then(|| self.upstreams.idle_peer(to.addr)).flatten() {
            return Ok(sender);
        }
        if let Identity::NotThePeer(why) = self.identify(to).await {
            return Err(NoConnection::NotThePeer(why));
        }
        self.upstreams.connect_peer(to.addr, self.cfg.connect_timeout, in_hand).await.map_err(NoConnection::Failed)
    }

    /// Whether the pod at `to`'s address is `to`: a probe of its `/live`, unless one found it
    /// there within [`IDENTIFIED_FOR`] (or could not reach it within [`UNCHECKED_FOR`]).
    async fn identify(&self, to: &Member) -> Identity {
        let now = Instant::now();
        if let Some((uid, until)) = sync::lock(&self.identified).get(&to.addr)
            && *uid == to.uid
            && *until > now
        {
            return Identity::ThePeer;
        }
        let identity = peer_probe::identify(self.peer_admin(to), &to.uid, self.cfg.probe_timeout).await;
        let hold = match identity {
            Identity::ThePeer => {
                self.metrics.peer_checks.get_or_create(&[("result", "the_peer")]).inc();
                IDENTIFIED_FOR
            }
            Identity::Unsure => {
                // The forward's own failure, if it fails, is what gets probed and reported.
                self.metrics.peer_checks.get_or_create(&[("result", "unsure")]).inc();
                UNCHECKED_FOR
            }
            Identity::NotThePeer(why) => {
                self.metrics.peer_checks.get_or_create(&[("result", "not_the_peer")]).inc();
                self.mark_unreachable(&to.name);
                tracing::warn!(peer = %to.name, addr = %to.addr, probe = why, "not connecting to a peer whose address does not answer as its pod; it counts as dead for a while");
                return identity;
            }
        };
        let mut identified = sync::lock(&self.identified);
        identified.retain(|_, (_, until)| *until > now);
        identified.insert(to.addr, (to.uid.clone(), now + hold));
        identity
    }

    pub(super) async fn forward_to_peer(
        &self,
        mut sender: upstream::PeerSender,
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
        let client_upgrade =
            upgrade.then(|| (hyper::upgrade::on(&mut req), req.extensions_mut().remove::<TunnelSlot>()));
        let failed = |why: &str, status: StatusCode| {
            self.metrics.forwards.get_or_create(&[("reason", reason), ("result", "failed")]).inc();
            tracing::warn!(peer = %to.name, error = why, "forwarded request failed");
            text_response(status, format!("handover: pool member {} failed ({why}); retry\n", to.name))
        };

        // Wait for the answer as long as the peer lives (a long-poll is not a dead peer): probe
        // it whenever the wait passes another `peer_probe_after`.
        let response_deadline = self.cfg.response_timeout.map(|t| tokio::time::Instant::now() + t);
        say_chunked_if_unframed(&mut req);
        let outcome = {
            let send = sender.send.send_request(req);
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
            Err(e) => {
                if let Some(answer) = cut_by_client(&e) {
                    // The client's own body failed: nothing to say about the peer.
                    return answer;
                }
                // Not the client's body: the peer, or the way to it. A probe says whether the
                // peer lives.
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
        if sender.pooled {
            self.upstreams.put(to.addr, sender.send);
        }
        self.metrics.forwards.get_or_create(&[("reason", reason), ("result", "ok")]).inc();
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some((client, tunnel))) = (switching, client_upgrade) {
            bridge_upgrade(client, hyper::upgrade::on(&mut resp), tunnel);
        }
        // (A draining pod's `Connection: close` is added for every response in `route_request`.)
        strip_hop_by_hop(resp.headers_mut(), switching);
        resp.map(|b| b.map_err(Into::into).boxed())
    }

    /// A peer's admin address (`/live`): its data address's host, its own admin port when the
    /// registry names it, else this sidecar's.
    pub(super) fn peer_admin(&self, peer: &Member) -> SocketAddr {
        peer.admin_addr(self.cfg.peer_admin_port)
    }

    /// Probes a peer after a forward to it failed or was slow; a dead one counts as unreachable to
    /// this sidecar for a while (its sessions are then taken over by their successors).
    pub(super) async fn probe_peer(&self, peer: &Member, after: &str) -> Liveness {
        let admin = self.peer_admin(peer);
        let verdict = peer_probe::probe(admin, &peer.uid, self.cfg.probe_timeout).await;
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
                self.peer_health.note(crate::peer_health::Problem::ProbeUnknown, &peer.name, Instant::now());
                tracing::warn!(peer = %peer.name, after, "peer cannot be reached (no connection); not taking its sessions over")
            }
        }
        verdict
    }
}
