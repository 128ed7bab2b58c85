//! Restoring a session into the local app from its newest copy (the client's cookies — state
//! chunks, or the small state inside the routing cookie — or a backup): once per version (a
//! per-session lock), asking the app first when this pod owns it, retried on failure, dropped on
//! the app's refusal.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};

use super::backup::Found;
use super::headers::READS_HEADER;
use super::request::RequestCookie;
use super::sessions::Local;
use super::{Proxy, text_response, unix_micros, unix_now};
use crate::cookie::{self, Route, StoredState};
use crate::decide;
use crate::registry::Member;
use crate::upstream::Body;

/// Shards of the per-session restore lock.
pub(super) const RESTORE_SHARDS: usize = 64;

/// Restores tried for one request when the app fails (5xx, timeout): a passing hiccup is hidden
/// from the client, a lasting one answers 502 within `RESTORE_ATTEMPTS` × `--state-timeout`.
pub(super) const RESTORE_ATTEMPTS: usize = 3;

/// Members asked (`/live`) for the formats their app reads when this pod's app does not read a
/// state it takes over, in takeover order.
pub(super) const READER_LOOKUPS: usize = 3;

/// The pause before the next restore attempt, times the attempts so far.
pub(super) const RESTORE_RETRY_AFTER: Duration = Duration::from_millis(50);

/// What became of a restore.
pub(super) enum Restored {
    /// The local app already held this version (a concurrent request restored it, or the app
    /// still had it): nothing was sent.
    Already,
    /// The app took the state: the copy it took, to be carried into the response's cookies.
    Done(Carried),
    /// The app answered 4xx: this state is not for it.
    Refused,
    /// Neither the client nor a backup holds the session's state (the client dropped the chunks
    /// and no backup was kept, or both expired): the session starts over, counted.
    Lost,
    /// Another member holds the session already (it took it over a moment ago): forward there.
    HeldBy(Member),
    /// This pod's app does not read the state's format and another member's app does (or may:
    /// it declared nothing): the takeover goes there (a rolling update, a rollback).
    ReadBy(Member),
    /// The newest copy is a tombstone: the app ended the session (or rotated it away) on another
    /// pod, and the client presented an older cookie of it. It starts over, counted.
    Ended,
}

/// The newest copy of a session's state, as a restore finds it.
enum Newest {
    /// (version, state, the format the app declared for it, the copy as the cookies carry it).
    State(u64, Vec<u8>, String, StateCopy),
    /// A tombstone of this version.
    Ended(u64),
    Lost,
    /// Another member holds the session already.
    HeldBy(Member),
}

/// A state copy a restore used: resealed, as is, naming its new owner.
pub(super) struct Carried {
    /// The version of the state the copy holds.
    pub(super) state_version: u64,
    pub(super) copy: StateCopy,
}

/// A session's state as its cookies carry it.
#[derive(Clone, Debug)]
pub(super) enum StateCopy {
    /// A sealed state value (`cookie::seal_state`), in state chunks.
    Sealed(String),
    /// Inside the routing cookie (`cookie::Route::inline`).
    Inline(StoredState),
}

impl StateCopy {
    /// The copy `route` and its `sealed_value` carry: the route's own state, else the sealed value.
    fn of(route: &Route, sealed_value: &str) -> StateCopy {
        match &route.inline {
            Some(stored) => StateCopy::Inline(stored.clone()),
            None => StateCopy::Sealed(sealed_value.to_owned()),
        }
    }
}

impl Proxy {
    pub(super) fn restore_lock(&self, session: &str) -> &tokio::sync::Mutex<()> {
        let shard = session.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
        &self.restore_locks[shard % RESTORE_SHARDS]
    }

    /// Restores the session of `rc` into the local app unless a concurrent request of the same
    /// session just did, from the newest copy ([`decide::newest_copy`]): the client's (state chunks,
    /// or the state inside its routing cookie) or a backup a pool member keeps
    /// ([`Proxy::find_backup`]).
    ///
    /// When this pod is the owner (not a takeover), the app may still hold the session — the
    /// sidecar restarted, or only a connection closed — and its copy may be newer than the cookie
    /// (pull mode), so the app is asked first (`GET <statePath>`) and only restored on a miss.
    ///
    /// A 4xx is the app's verdict on the state ([`decide::restore_verdict`]): the state is
    /// dropped (counted, logged with the session id) and the request goes on as a fresh session.
    /// A 5xx, a timeout or a lost connection is tried again, [`RESTORE_ATTEMPTS`] times in all;
    /// then the client gets 502 and keeps its cookie.
    ///
    /// A takeover of a state in a format the app does not read (it said so with `Handover-Reads`,
    /// before or on refusing it) goes to a member whose app does, when `may_pass` (the request was
    /// not forwarded here already): [`Proxy::reader_of`].
    pub(super) async fn restore_once(
        &self,
        rc: &RequestCookie,
        takeover: bool,
        may_pass: bool,
    ) -> Result<Restored, Response<Body>> {
        let Some(route) = &rc.route else { return Ok(Restored::Lost) };
        let session = route.session.as_str();
        let _guard = self.restore_lock(session).lock().await;
        if self.local(session).is_some_and(|l| l.version >= route.version) {
            return Ok(Restored::Already);
        }
        // Until the session is in the table (or this gives up), a peer that asks for its backup
        // is told this pod is taking it over, and once claimed, that it holds it
        // ([`super::takers`]).
        let _taking = self.takers.taking(session);
        let created_at = route.created_at;
        if !takeover && let Ok((StatusCode::OK, _)) = self.state_request(Method::GET, session, Bytes::new()).await {
            let version = decide::relearned_version(route.version, unix_micros());
            let learned_from = Some(route.version);
            self.set_local(session, Local { version, sealed_at: None, created_at, learned_from });
            return Ok(Restored::Already);
        }
        let (version, state, format, copy) = match self.newest_copy(rc, route).await {
            Newest::State(version, state, format, copy) => (version, state, format, copy),
            Newest::Ended(tombstone) => {
                self.metrics.sessions_reset.get_or_create(&[("reason", "ended")]).inc();
                tracing::info!(
                    session,
                    cookie_version = route.version,
                    tombstone_version = tombstone,
                    "the session ended on another pod (a tombstone newer than the cookie); a fresh session instead"
                );
                self.mark_ended(session);
                return Ok(Restored::Ended);
            }
            Newest::HeldBy(holder) => return Ok(Restored::HeldBy(holder)),
            Newest::Lost => {
                self.metrics.sessions_reset.get_or_create(&[("reason", "incomplete")]).inc();
                tracing::warn!(
                    session,
                    version = route.version,
                    chunks = route.chunks,
                    "the session's state is in no copy (the client did not carry its chunks, no backup); it starts over"
                );
                return Ok(Restored::Lost);
            }
        };
        let pass = takeover && may_pass && !format.is_empty();
        if pass && let Some(reader) = self.reader_of(session, &format).await {
            return Ok(Restored::ReadBy(reader));
        }
        if !state.is_empty() {
            let mut attempt = 1;
            loop {
                let put = self.state_call(Method::PUT, session, Bytes::from(state.clone()), Some(&format)).await;
                let why = match put.map(|(status, _, body)| (status, body)) {
                    Ok((status, body)) => match decide::restore_verdict(status.as_u16()) {
                        decide::RestoreVerdict::Done => break,
                        decide::RestoreVerdict::Refused => {
                            // Its answer may have said which formats it reads.
                            if pass && let Some(reader) = self.reader_of(session, &format).await {
                                return Ok(Restored::ReadBy(reader));
                            }
                            self.restore_refused(session, version, status, &body);
                            return Ok(Restored::Refused);
                        }
                        decide::RestoreVerdict::Retry => format!("the app answered {status}"),
                    },
                    Err(why) => why,
                };
                if attempt >= RESTORE_ATTEMPTS {
                    return Err(self.restore_failed(session, version, &why));
                }
                self.metrics.restores.get_or_create(&[("result", "retried")]).inc();
                tracing::warn!(session, attempt, error = %why, "restore failed; trying again");
                tokio::time::sleep(RESTORE_RETRY_AFTER * attempt as u32).await;
                attempt += 1;
            }
        }
        self.metrics.restores.get_or_create(&[("result", "ok")]).inc();
        // The session goes on above every version it had, even when only an older copy was left.
        let relearned = decide::relearned_version(version.max(route.version), unix_micros());
        self.set_local(session, Local { version: relearned, sealed_at: None, created_at, learned_from: None });
        if let Some(store) = &self.backups {
            // This pod owns the session now; its backup goes to this pod's successor.
            store.remove(session);
            self.backup_gauges();
        }
        Ok(Restored::Done(Carried { state_version: version, copy }))
    }

    /// The newest copy of the session's state: the client's chunks or routing cookie, a backup, or
    /// a tombstone.
    async fn newest_copy(&self, rc: &RequestCookie, route: &Route) -> Newest {
        let ring = self.keys.ring();
        let max_state = self.cfg.max_state_bytes;
        let from_cookie = match &rc.state {
            Ok(None) if route.inline.is_none() => None,
            Ok(value) => {
                let sealed = value.as_deref().unwrap_or_default();
                match cookie::open_route_state(route, sealed, &self.cfg.pool, &ring, max_state) {
                    Ok((state, format)) => Some((route.state_version, state, format, StateCopy::of(route, sealed))),
                    Err(e) => {
                        self.metrics.cookie_rejects.get_or_create(&[("reason", e.reason())]).inc();
                        tracing::info!(session = %route.session, error = %e, "the client's copy of the state does not open");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::info!(session = %route.session, error = %e, "the client did not carry the session's state whole");
                None
            }
        };
        let backup = match self.find_backup(&route.session).await {
            Found::Backup(backup) => backup,
            Found::HeldBy(holder) => return Newest::HeldBy(holder),
        };
        let cookie_copy = |c: Option<(u64, Vec<u8>, String, StateCopy)>| match c {
            Some((version, state, format, value)) => Newest::State(version, state, format, value),
            None => Newest::Lost,
        };
        match decide::newest_copy(from_cookie.as_ref().map(|c| c.0), backup.as_ref().map(|b| b.version)) {
            decide::Copy::Cookie => cookie_copy(from_cookie),
            decide::Copy::Backup => {
                let Some(b) = backup else { return cookie_copy(from_cookie) };
                let opened = cookie::open_route(&b.route, &self.cfg.pool, &ring, unix_now()).and_then(|r| {
                    if r.ended {
                        return Ok(None);
                    }
                    cookie::open_route_state(&r, &b.state, &self.cfg.pool, &ring, max_state)
                        .map(|(state, format)| Some((state, format, StateCopy::of(&r, &b.state))))
                });
                // (The backup's own route names the state it carries: its state version.)
                match opened {
                    Ok(None) => Newest::Ended(b.version),
                    Ok(Some((state, format, copy))) => {
                        self.metrics.restores.get_or_create(&[("result", "from_backup")]).inc();
                        tracing::info!(session = %route.session, cookie_version = route.version, backup_version = b.version, "restoring the session's backup: newer than the client's cookie");
                        Newest::State(b.version, state, format, copy)
                    }
                    Err(e) => {
                        tracing::warn!(session = %route.session, error = %e, "a backup does not open; using the cookie");
                        cookie_copy(from_cookie)
                    }
                }
            }
            decide::Copy::Lost => Newest::Lost,
        }
    }

    /// When this pod's app declared it does not read `format`: the first of the next
    /// [`READER_LOOKUPS`] members in `session`'s takeover order whose app reads it, else the first
    /// whose app declared nothing (it may); `None` when the local app may read it, or no member
    /// will (the local app's refusal then starts a fresh session, as without the lookup).
    async fn reader_of(&self, session: &str, format: &str) -> Option<Member> {
        let reads = self.app_reads()?;
        if decide::reads_format(&reads, format) {
            return None;
        }
        let live = self.registry.live();
        let unreachable = self.unreachable_now();
        let mut undeclared = None;
        for member in
            decide::ranked(session, self.other_reachable(&live, &unreachable)).into_iter().take(READER_LOOKUPS)
        {
            let admin = self.peer_admin(member);
            match crate::peer_probe::live_field(admin, &member.uid, READS_HEADER.as_str(), self.cfg.probe_timeout).await
            {
                Ok(Some(theirs)) if decide::reads_format(&theirs, format) => {
                    tracing::info!(session, format, reads = %reads, to = %member.name, "this app does not read the state's format; its takeover goes to a member whose app does");
                    return Some(member.clone());
                }
                Ok(None) => {
                    undeclared.get_or_insert(member);
                }
                Ok(Some(_)) | Err(_) => {}
            }
        }
        let member = undeclared?;
        tracing::info!(session, format, reads = %reads, to = %member.name, "this app does not read the state's format; its takeover goes to a member whose app declared nothing (it may)");
        Some(member.clone())
    }

    /// The app refused the state: counted and logged with the session id, so a lost session can
    /// be traced (the app's own log has the same id).
    pub(super) fn restore_refused(&self, session: &str, version: u64, status: StatusCode, body: &[u8]) {
        self.metrics.restores.get_or_create(&[("result", "refused")]).inc();
        self.metrics.sessions_reset.get_or_create(&[("reason", "refused_by_app")]).inc();
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
        tracing::warn!(
            session,
            version,
            %status,
            app_said = %said,
            "the app refused this session's state; dropped, the request goes on as a fresh session"
        );
    }

    pub(super) fn restore_failed(&self, session: &str, version: u64, why: &str) -> Response<Body> {
        self.metrics.restores.get_or_create(&[("result", "failed")]).inc();
        tracing::error!(session, version, error = why, "restore failed; the client keeps its cookie");
        text_response(
            StatusCode::BAD_GATEWAY,
            format!(
                "handover: the application could not restore this session ({why}); its state is still in your cookie, retry\n"
            ),
        )
    }
}
