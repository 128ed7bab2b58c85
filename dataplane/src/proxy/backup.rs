//! Backups between the pool's sidecars (see [`crate::backup`]): handing each newly sealed state to
//! the session's successor before the response leaves, keeping the ones handed to this pod, and
//! finding a session's newest backup when a takeover needs it.
//!
//! At the drain ([`crate::drain`]), [`Proxy::hand_over`] does the same for a session that sends
//! no request meanwhile: its state pulled from the app, sealed as a new version, handed over.
//!
//! On the wire: `PUT` or `GET` [`BACKUP_PATH`] on the peer's data port, with the signed forward
//! mark (`peer_auth`: pool key, pod names, method, path, session, time) and the session named in
//! [`BACKUP_HEADER`]; the `PUT` body is the sealed route and state values, which the receiver
//! checks by opening the route. Without a verified mark the path is the app's like any other.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::headers::FORWARDED_HEADER;
use super::sessions::Local;
use super::takers::Lookup;
use super::{Proxy, full, text_response, unix_now};
use crate::backup::{ASKER_HEADER, BACKUP_HEADER, BACKUP_PATH, Backup, Put};
use crate::cookie;
use crate::decide;
use crate::metrics::BadRequest;
use crate::peer_auth;
use crate::registry::Member;
use crate::upstream::Body;
use handover_common::sync;

/// Successors tried for one backup: the first, and the next ones when a probe finds one dead.
const BACKUP_ATTEMPTS: usize = 3;

/// The answer to a backup lookup (`409`) from a pod that holds the session. Sidecars before the
/// claim answered every `409` so: an older asker forwards to a pod taking the session over too.
const HELD_BODY: &str = "this pod holds the session\n";

/// The answer to a backup lookup (`409`) from a pod taking the session over, not yet claimed.
const TAKING_BODY: &str = "this pod is taking the session over\n";

/// Rounds of asking the peers that asked this pod meanwhile before a takeover claims its
/// session all the same (each round's askers asked while this pod asked the last round's).
const CLAIM_ROUNDS: usize = 3;

/// What a takeover learnt from the first members in takeover order.
pub(super) enum Found {
    /// The newest backup kept (or none).
    Backup(Option<Backup>),
    /// A member holds the session already: it took it over a moment ago, seeing the pool a little
    /// differently (a member joined or left and not every registry shows it yet), or it is taking
    /// it over and comes first in its takeover order. The request goes there; a second takeover
    /// would fork the session.
    HeldBy(Member),
}

impl Proxy {
    /// Whether a request is a backup call of a peer (its mark is checked by [`Proxy::serve_backup`]).
    pub(super) fn is_backup_call<B>(&self, req: &Request<B>) -> bool {
        self.backups.is_some() && req.uri().path() == BACKUP_PATH && req.headers().contains_key(BACKUP_HEADER)
    }

    /// Answers a peer's backup call: `PUT` keeps a backup, `GET` hands one out. A call whose mark
    /// does not verify is refused (403, counted): the path is not the app's for that request
    /// either, so a client learns nothing by trying.
    pub(super) async fn serve_backup(&self, req: Request<Body>, client: SocketAddr) -> Response<Body> {
        let Some(store) = &self.backups else {
            return text_response(StatusCode::NOT_FOUND, "not found\n");
        };
        let session = req.headers().get(BACKUP_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let claim = peer_auth::Forward {
            from: "",
            to: &self.cfg.pod_name,
            method: req.method().as_str(),
            path: BACKUP_PATH,
            session: &session,
        };
        let mark = req.headers().get(FORWARDED_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        let from = match peer_auth::verify(&self.keys.ring(), mark, &claim, unix_now()) {
            Ok(from) => from,
            Err(e) => {
                self.metrics.bad_requests.get_or_create(&[("reason", BadRequest::ForgedForward)]).inc();
                tracing::warn!(reason = e.reason(), error = %e, "backup call with a mark that does not verify; refused");
                return text_response(StatusCode::FORBIDDEN, "forbidden\n");
            }
        };
        if req.method() == Method::GET {
            let asker = self.asker(&req, from, client);
            match self.takers.lookup(&session, || self.local(&session).is_some(), asker, Instant::now()) {
                // This pod holds the session (or claimed it): the asking pod forwards to it
                // instead of taking it over a second time.
                Lookup::Held => return text_response(StatusCode::CONFLICT, HELD_BODY),
                // Of the two pods taking it over, one goes to the other (`super::takers`).
                Lookup::Taking => return text_response(StatusCode::CONFLICT, TAKING_BODY),
                Lookup::Answer => {}
            }
            return match store.get(&session, unix_now()) {
                Some(b) => Response::new(full(b.body())),
                None => text_response(StatusCode::NOT_FOUND, "no backup\n"),
            };
        }
        if req.method() != Method::PUT {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "PUT or GET\n");
        }
        if self.draining_since().is_some() {
            // This pod is leaving: a backup kept here now would leave with it (the drain passes
            // on only what it kept before). The sender's member list still names it; it goes on
            // to the next member (`back_up_skipping`).
            self.metrics.backups_received.get_or_create(&[("result", "leaving")]).inc();
            tracing::debug!(session, "a peer's backup refused: this pod is draining");
            return text_response(StatusCode::MISDIRECTED_REQUEST, "this pod is leaving the pool\n");
        }
        let opened = match crate::upstream::read_at_most(req.into_body(), self.backup_body_limit()).await {
            Ok(body) => self.open_backup(&session, &body),
            Err(e) => Err(format!("backup body: {e}")),
        };
        let backup = match opened {
            Ok(backup) => backup,
            Err(why) => {
                self.metrics.backups_received.get_or_create(&[("result", "bad_body")]).inc();
                tracing::warn!(session, error = %why, "a peer's backup refused");
                return text_response(StatusCode::BAD_REQUEST, format!("{why}\n"));
            }
        };
        // The sender learns whether it was kept: a backup it believes kept is what a takeover
        // restores from, and what a client whose state is in no cookie is told holds it.
        let (label, status) = match store.put(backup) {
            Put::Stored { evicted } => {
                if evicted > 0 {
                    self.metrics.backups_evicted.inc_by(evicted as u64);
                }
                ("stored", StatusCode::NO_CONTENT)
            }
            // A newer backup of the session is kept (two responses' backups crossed).
            Put::Older => ("older", StatusCode::CONFLICT),
            Put::TooLarge => {
                tracing::warn!(
                    session,
                    limit = store.max_bytes(),
                    "a peer's backup is over --backup-max-bytes; not kept"
                );
                ("too_large", StatusCode::PAYLOAD_TOO_LARGE)
            }
        };
        self.metrics.backups_received.get_or_create(&[("result", label)]).inc();
        self.backup_gauges();
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = status;
        resp
    }

    /// The peer that asks for a backup, as its call names it: the signed mark's pod name, the uid
    /// and data address it gives ([`ASKER_HEADER`]), at the address the call comes from (else it
    /// is not remembered: a call through a proxy that hides the peer's address, an older sidecar).
    fn asker<B>(&self, req: &Request<B>, name: String, client: SocketAddr) -> Option<Member> {
        let value = req.headers().get(ASKER_HEADER)?.to_str().ok()?;
        let (uid, addr) = value.split_once(' ')?;
        let addr: SocketAddr = addr.parse().ok()?;
        if addr.ip().to_canonical() != client.ip().to_canonical() || name == self.cfg.pod_name || uid.is_empty() {
            tracing::debug!(asker = %name, %client, value, "a backup lookup's asker is not remembered: its address is not the call's, or it names this pod or no uid");
            return None;
        }
        Some(Member { name, uid: uid.to_owned(), addr, admin_port: None })
    }

    /// The backup store's gauges, as it is now.
    pub(super) fn backup_gauges(&self) {
        if let Some(store) = &self.backups {
            let (count, bytes) = store.size();
            self.metrics.backups_kept.set(count as i64);
            self.metrics.backup_bytes.set(bytes as i64);
        }
    }

    /// Hands a newly sealed state to the session's successor (the member that would take it over
    /// if this pod died) and waits for it to be kept: after this, the response may leave. A
    /// successor that does not answer in time is counted and logged; the response goes out, and
    /// the session's guarantee is the cookie's until its next state. Returns the result counted
    /// (`ok`, `refused`, `failed`, `no_successor`; `off` without backups).
    pub(super) async fn back_up(&self, b: Backup) -> &'static str {
        self.back_up_skipping(b, None).await
    }

    /// [`Proxy::back_up`] to the successor among the members but `skip`.
    async fn back_up_skipping(&self, b: Backup, skip: Option<&str>) -> &'static str {
        if self.backups.is_none() {
            return "off";
        }
        // Written once a successor is found (a pod alone in its pool never writes it).
        let mut body: Option<Bytes> = None;
        // Members passed over: `skip`, and successors that answered that they are leaving
        // (draining).
        let mut passed_over: Vec<String> = skip.into_iter().map(str::to_owned).collect();
        // A successor that cannot be reached is probed; a dead one (killed, not yet out of the
        // registry) or a leaving one is passed over for the next member in takeover order, so a
        // state is never left without a backup, or with a pod about to go, because the registry
        // lags.
        for attempt in 0..BACKUP_ATTEMPTS {
            let live = self.registry.live();
            let unreachable = self.unreachable_now();
            let others = self.other_reachable(&live, &unreachable).filter(|m| !passed_over.contains(&m.name));
            let Some(to) = decide::successor(&b.session, others).cloned() else {
                self.metrics.backups_sent.inc("no_successor");
                return "no_successor";
            };
            let body = body.get_or_insert_with(|| Bytes::from(b.body())).clone();
            let lagging = if attempt == 0 {
                self.lagging_successors(&b.session, &live, &unreachable, &to, &passed_over)
            } else {
                Vec::new()
            };
            let call = self.peer_call(&to, Method::PUT, &b.session, body.clone());
            let answer = if lagging.is_empty() {
                call.await
            } else {
                tokio::join!(call, self.back_up_lagging(&b.session, &lagging, body)).0
            };
            let result = match answer {
                // Kept, or a newer backup of the session is (another response's, sent meanwhile).
                Ok((status @ (StatusCode::NO_CONTENT | StatusCode::CONFLICT), _)) => {
                    if self.draining_since().is_some() {
                        sync::lock(&self.handed_to).insert(b.session.clone(), to.clone());
                    }
                    if status == StatusCode::NO_CONTENT { "ok" } else { "older" }
                }
                Ok((StatusCode::MISDIRECTED_REQUEST, _)) => {
                    tracing::debug!(peer = %to.name, session = %b.session, "the successor is draining; backing up with the next member");
                    self.metrics.backups_sent.inc("successor_leaving");
                    passed_over.push(to.name.clone());
                    continue;
                }
                Ok((StatusCode::PAYLOAD_TOO_LARGE, _)) => {
                    tracing::warn!(peer = %to.name, session = %b.session, "the successor keeps no backup this large (its --backup-max-bytes)");
                    "too_large"
                }
                Ok((status, _)) => {
                    tracing::warn!(peer = %to.name, session = %b.session, %status, "the successor did not keep a backup");
                    "refused"
                }
                Err(why) => {
                    tracing::warn!(peer = %to.name, session = %b.session, error = %why, "could not hand a backup to the successor");
                    if let crate::peer_probe::Liveness::Dead(_) =
                        self.probe_peer(&to, "a backup could not be handed over").await
                    {
                        self.metrics.backups_sent.inc("successor_dead");
                        continue;
                    }
                    "failed"
                }
            };
            self.metrics.backups_sent.inc(result);
            return result;
        }
        self.metrics.backups_sent.inc("failed");
        "failed"
    }

    /// The members a peer whose registry still shows an earlier member list ([`Registry::earlier`]:
    /// a member joined or left a moment ago, and not every registry shows it yet) would take
    /// `session` over with if this pod died, besides `successor`: live, reachable, not this pod
    /// nor one `passed_over`. A takeover that does not list the successor finds the session's
    /// newest backup there.
    ///
    /// [`Registry::earlier`]: crate::registry::Registry::earlier
    fn lagging_successors(
        &self,
        session: &str,
        live: &[Member],
        unreachable: &[String],
        successor: &Member,
        passed_over: &[String],
    ) -> Vec<Member> {
        let mut found: Vec<Member> = Vec::new();
        for earlier in self.registry.earlier() {
            let candidates = self
                .other_reachable(&earlier, unreachable)
                .filter(|m| !passed_over.contains(&m.name) && live.iter().any(|l| l.name == m.name && l.uid == m.uid));
            if let Some(m) = decide::successor(session, candidates)
                && m.name != successor.name
                && !found.iter().any(|f| f.name == m.name)
            {
                found.push(m.clone());
            }
        }
        found
    }

    /// Hands the backup to the [`Proxy::lagging_successors`] as well, beside the successor's: each
    /// kept or not, counted (`lagging_ok`, `lagging_failed`); the response waits for them as for
    /// the successor's.
    async fn back_up_lagging(&self, session: &str, members: &[Member], body: Bytes) {
        let calls = members.iter().map(|m| self.peer_call(m, Method::PUT, session, body.clone()));
        for (m, answer) in members.iter().zip(futures::future::join_all(calls).await) {
            match answer {
                Ok((StatusCode::NO_CONTENT | StatusCode::CONFLICT, _)) => self.metrics.backups_sent.inc("lagging_ok"),
                Ok((status, _)) => {
                    self.metrics.backups_sent.inc("lagging_failed");
                    tracing::debug!(peer = %m.name, session, %status, "a lagging view's successor did not keep a backup");
                }
                Err(why) => {
                    self.metrics.backups_sent.inc("lagging_failed");
                    tracing::debug!(peer = %m.name, session, error = %why, "could not hand a backup to a lagging view's successor");
                }
            }
        }
    }

    /// Hands the successor a **tombstone** of `session`, which ended (or rotated away) when its
    /// newest version was `newest`: a route with the ended flag and no state, one version above
    /// every state of the session, kept as long as any cookie of it may live. A takeover that
    /// finds it starts a fresh session instead of restoring an older cookie (`restore.rs`).
    pub(super) async fn back_up_tombstone(&self, session: &str, newest: u64) {
        if self.backups.is_none() {
            return;
        }
        let version = decide::tombstone_version(newest);
        let unix = unix_now();
        let route = cookie::Route {
            session: session.to_owned(),
            owner: self.me.clone(),
            version,
            state_version: version,
            issued_at: unix,
            // Every cookie of the session was issued before now: none outlives this.
            expires_at: unix + self.cfg.cookie.max_age.as_secs(),
            chunks: 0,
            state_bytes: 0,
            carry: 0,
            created_at: unix,
            ended: true,
            inline: None,
        };
        let route_value = cookie::seal_route(&route, &self.cfg.pool, &self.keys.ring());
        self.back_up(Backup {
            session: session.to_owned(),
            version,
            expires_at: route.expires_at,
            route: route_value,
            state: String::new(),
        })
        .await;
    }

    /// The newest backup of `session` this pod or the first members in takeover order keep, or the
    /// member that holds the session already, or is taking it over
    /// ([`decide::BACKUP_LOOKUP_RANKS`]: the successor of the moment may have joined after the
    /// backup was handed to the one before it). The peers that asked this pod the same a moment
    /// ago are asked too ([`super::takers`]).
    pub(super) async fn find_backup(&self, session: &str) -> Found {
        let Some(store) = self.backups.as_ref() else { return Found::Backup(None) };
        let live = self.registry.live();
        let unreachable = self.unreachable_now();
        let candidates = live.iter().filter(|m| !unreachable.contains(&m.name));
        let mut newest = store.get(session, unix_now());
        let ranked = decide::ranked(session, candidates).into_iter().take(decide::BACKUP_LOOKUP_RANKS);
        let mut ask: Vec<Member> = ranked.filter(|m| m.name != self.cfg.pod_name).cloned().collect();
        // Peers that asked this pod for the session's backup a moment ago, which the registry may
        // not list yet: one of them may hold the session now ([`super::takers`]).
        for asker in self.takers.askers(session, Instant::now()) {
            if !ask.iter().any(|m| m.name == asker.name) {
                ask.push(asker);
            }
        }
        // Each peer asked, and when: a peer that asks this pod after that is asked again.
        let mut asked: Vec<(String, Instant)> = Vec::new();
        for round in 1..=CLAIM_ROUNDS {
            for peer in &ask {
                asked.push((peer.name.clone(), Instant::now()));
                let found = match self.peer_call(peer, Method::GET, session, Bytes::new()).await {
                    Ok((StatusCode::CONFLICT, body)) => {
                        let taking = body.as_ref() == TAKING_BODY.as_bytes();
                        if !taking || decide::outranks(session, peer, &self.cfg.pod_name, &self.cfg.pod_uid) {
                            self.metrics.backup_lookups.get_or_create(&[("result", "held")]).inc();
                            return Found::HeldBy(peer.clone());
                        }
                        // It is taking the session over too, and this pod comes first: it asks
                        // this pod before it claims the session, and goes here.
                        self.metrics.backup_lookups.get_or_create(&[("result", "taking")]).inc();
                        continue;
                    }
                    Ok((StatusCode::OK, body)) => self.open_backup(session, &body).ok(),
                    _ => None,
                };
                self.metrics
                    .backup_lookups
                    .get_or_create(&[("result", if found.is_some() { "found" } else { "none" })])
                    .inc();
                if found.as_ref().map(|b| b.version) > newest.as_ref().map(|b| b.version) {
                    newest = found;
                }
            }
            ask = self.takers.claim(session, Instant::now(), round == CLAIM_ROUNDS, &asked);
            if ask.is_empty() {
                break;
            }
        }
        Found::Backup(newest)
    }

    /// The largest backup body: the route and a state value (base64 of at most the largest
    /// state), and a little more.
    fn backup_body_limit(&self) -> usize {
        self.cfg.max_state_bytes * 4 / 3 + 4096
    }

    /// A backup of `session` from the body of a backup call (`route \n state`), checked by opening
    /// its route: sealed for this pool, not expired, of this session. The one reader of a backup
    /// body, whether a peer put it here or handed it out.
    fn open_backup(&self, session: &str, body: &[u8]) -> Result<Backup, String> {
        let text = String::from_utf8_lossy(body);
        let (route_value, state_value) = Backup::parse_body(&text).ok_or("backup body: route and state")?;
        let route = cookie::open_route(route_value, &self.cfg.pool, &self.keys.ring(), unix_now())
            .map_err(|e| format!("backup route: {e}"))?;
        if route.session != session {
            return Err("backup of another session".to_owned());
        }
        Ok(Backup {
            session: session.to_owned(),
            version: route.state_version,
            expires_at: route.expires_at,
            route: route_value.to_owned(),
            state: state_value.to_owned(),
        })
    }

    /// One signed backup call to a peer's data port, within `--backup-timeout`.
    async fn peer_call(
        &self,
        to: &Member,
        method: Method,
        session: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let timeout = self.cfg.backup_timeout;
        let call = async {
            let mut sender = self.upstreams.get(to.addr, self.cfg.connect_timeout).await.map_err(|e| {
                if crate::peer_health::path_broken(&e) {
                    self.peer_health.note(crate::peer_health::Problem::BackupConnect, &to.name, Instant::now());
                }
                e.to_string()
            })?;
            let forward = peer_auth::Forward {
                from: &self.cfg.pod_name,
                to: &to.name,
                method: method.as_str(),
                path: BACKUP_PATH,
                session,
            };
            let mark = peer_auth::sign(&self.keys.ring(), &forward, unix_now());
            let lookup = method == Method::GET;
            let mut req = Request::builder()
                .method(method)
                .uri(BACKUP_PATH)
                .header(header::HOST, to.addr.to_string())
                .header(FORWARDED_HEADER, HeaderValue::from_str(&mark).map_err(|e| e.to_string())?)
                .header(BACKUP_HEADER, HeaderValue::from_str(session).map_err(|e| e.to_string())?);
            if lookup {
                let asker = format!("{} {}", self.cfg.pod_uid, self.cfg.advertise);
                req = req.header(ASKER_HEADER, HeaderValue::from_str(&asker).map_err(|e| e.to_string())?);
            }
            let req = req.body(full(body)).map_err(|e| e.to_string())?;
            sender.ready().await.map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), self.backup_body_limit())
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            self.upstreams.put(to.addr, sender);
            Ok::<_, String>((status, bytes))
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// What became of one session at the drain's handover: the `result` label of
/// `handover_drain_handovers_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HandedOver {
    /// The successor keeps the app's state, as a version above every one the client holds.
    Ok,
    /// The app has no state for the session (404 or empty): nothing to hand over.
    NoState,
    /// The session left the table meanwhile (the app restarted, or another pod owns it now).
    Gone,
    /// The app did not answer `GET <statePath>`; the client's cookie (and the last backup) stay.
    PullFailed,
    /// The state is over `--max-state-bytes`.
    TooLarge,
    /// The successor did not keep it (refused, unreachable, no answer in time).
    NotKept,
    /// No other live member to hand it to.
    NoSuccessor,
    /// The drain grace ended first.
    OverGrace,
}

impl HandedOver {
    /// Whether the session may go to another member now: its newest state is kept there, there
    /// is none to lose, or no member could keep it whatever this pod did (the app gives no state,
    /// or one over the limit: the client's cookie stays its newest copy, as at the drain). Not
    /// when the member did not keep it, or none was found: this pod still can serve it.
    pub fn goes_along(self) -> bool {
        !matches!(self, HandedOver::NotKept | HandedOver::NoSuccessor)
    }

    pub fn label(self) -> &'static str {
        match self {
            HandedOver::Ok => "ok",
            HandedOver::NoState => "no_state",
            HandedOver::Gone => "gone",
            HandedOver::PullFailed => "pull_failed",
            HandedOver::TooLarge => "too_large",
            HandedOver::NotKept => "not_kept",
            HandedOver::NoSuccessor => "no_successor",
            HandedOver::OverGrace => "over_grace",
        }
    }
}

impl Proxy {
    /// Whether sealed states are handed to successors (`--backup successor`).
    pub fn backups_on(&self) -> bool {
        self.backups.is_some()
    }

    /// The sessions the local app holds, as the session table knows them.
    pub fn table_sessions(&self) -> Vec<String> {
        sync::lock(&self.sessions).ids().cloned().collect()
    }

    /// A final snapshot of one session, handed over: the app's state (`GET <statePath>`), sealed
    /// as a version above the session table's (so above every cookie this pod handed out), given
    /// to the session's successor among the other live members, exactly as a response's backup.
    /// A takeover after this pod is gone then restores it even when the client's cookie is older.
    ///
    /// The snapshot is taken in the session's turn, as a state-changing request's (`order.rs`),
    /// and under its pull lock: a response sealed meanwhile gets a version either below this one
    /// (its state taken before) or above it (after).
    pub async fn hand_over(&self, session: &str) -> HandedOver {
        let backup = match self.final_snapshot(session).await {
            Ok(backup) => backup,
            Err(outcome) => return outcome,
        };
        // Outside the session's turn and pull lock: a newer state sealed meanwhile is handed over
        // too, and the successor keeps whichever is newer (`backup::Store::put`).
        match self.back_up(backup).await {
            "ok" | "older" => HandedOver::Ok,
            "no_successor" => HandedOver::NoSuccessor,
            _ => HandedOver::NotKept,
        }
    }

    /// The sessions this pod keeps a backup of for its peers.
    pub fn backup_sessions(&self) -> Vec<String> {
        self.backups.as_ref().map(|store| store.sessions()).unwrap_or_default()
    }

    /// Passes the backup this pod keeps of a peer's `session` on to the session's successor among
    /// the other members but its owner, as it is (the drain's last step): otherwise it would
    /// leave with this pod — in pull mode the newest state of a session handed to it by a pod
    /// that drained before (a rolling update drains one pod after another), a state over the
    /// header budget that no cookie holds, a tombstone. (The owner, if it lives, holds the session
    /// itself; its backup belongs with the member that takes it over if the owner dies.) Whether
    /// it is kept there.
    pub async fn pass_on_backup(&self, session: &str) -> bool {
        let Some(backup) = self.backups.as_ref().and_then(|store| store.get(session, unix_now())) else {
            return true;
        };
        let owner = cookie::open_route(&backup.route, &self.cfg.pool, &self.keys.ring(), unix_now())
            .map(|route| route.owner.name.to_string())
            .ok();
        matches!(self.back_up_skipping(backup, owner.as_deref()).await, "ok" | "older")
    }

    /// The app's state of `session`, sealed as its next version (see [`Proxy::hand_over`]).
    async fn final_snapshot(&self, session: &str) -> Result<Backup, HandedOver> {
        let _turn = self.order.enter(session, true).await;
        let _pulling = self.restore_lock(session).lock().await;
        if self.local(session).is_none() {
            return Err(HandedOver::Gone);
        }
        let (state, format) = match self.pull_state(session).await {
            Ok((state, _)) if state.is_empty() => return Err(HandedOver::NoState),
            Ok(pulled) => pulled,
            Err(e) => {
                tracing::warn!(session, error = %e, "drain: could not take the session's state from the app; its cookie stays the newest copy");
                return Err(HandedOver::PullFailed);
            }
        };
        if state.len() > self.cfg.max_state_bytes {
            tracing::warn!(
                session,
                bytes = state.len(),
                limit = self.cfg.max_state_bytes,
                "drain: the session's state is over --max-state-bytes; not handed over"
            );
            return Err(HandedOver::TooLarge);
        }
        let (version, created_at) = self.reserve_handover(session).ok_or(HandedOver::Gone)?;
        let ring = self.keys.ring();
        let state_value = cookie::seal_state_format(session, version, &state, &format, &self.cfg.pool, &ring);
        let chunks = cookie::split_state(&self.cfg.cookie.attrs.name, &state_value, self.chunk_bytes()).len();
        let route = self.route_for(
            session,
            version,
            version,
            u16::try_from(chunks).unwrap_or(u16::MAX),
            u32::try_from(state_value.len()).unwrap_or(u32::MAX),
            0,
            created_at,
        );
        Ok(Backup {
            session: session.to_owned(),
            version,
            expires_at: route.expires_at,
            route: cookie::seal_route(&route, &self.cfg.pool, &ring),
            state: state_value,
        })
    }

    /// The version of a final snapshot of `session`, recorded in the session table as a pulled
    /// state's would be (`decide::seal`), with the session's creation time; `None` when the
    /// session left the table.
    fn reserve_handover(&self, session: &str) -> Option<(u64, u64)> {
        let mut sessions = sync::lock(&self.sessions);
        let now = Instant::now();
        let local = sessions.write(session, now)?;
        let seal = decide::seal(decide::SealInputs {
            cookie: decide::CookieSeen::Valid,
            offered: decide::Offered::Pulled { empty: false },
            owner_changed: false,
            refresh_due: false,
            local_version: Some(local.version),
            cookie_version: None,
        });
        *local =
            Local { version: seal.version, sealed_at: Some(now), created_at: local.created_at, learned_from: None };
        Some((seal.version, local.created_at))
    }
}
