//! Sealing a response's state into the session's cookies: which state (pushed, pulled, carried,
//! refreshed) with which version (`decide::seal`, under the session table's lock), the routing
//! cookie and the state chunks, whether they pass the real path's header limits
//! (`header_budget`), the backup handed to the successor, deleting the cookies of an ended
//! session, and a state not sealed.

use std::time::Instant;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use super::headers::WARNING_HEADER;
use super::request::RequestCookie;
use super::restore::{Carried, StateCopy};
use super::sessions::Local;
use super::{Proxy, unix_now};
use crate::backup::Backup;
use crate::cookie::{self, Route, StoredState};
use crate::decide::{self, SealAction, SealSource};
use crate::header_budget::{self, Added, Over, Room};
use handover_common::sync;

/// Appends the `Set-Cookie` lines; whether there was any.
fn append(headers: &mut HeaderMap, set_cookies: impl IntoIterator<Item = String>) -> bool {
    let mut any = false;
    for line in set_cookies {
        // Taken over, not copied (a state chunk's line is up to 4 KB).
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(line)) {
            headers.append(header::SET_COOKIE, v);
            any = true;
        }
    }
    any
}

/// Why a state was not sealed into the client's cookies.
#[derive(Clone, Copy, Debug)]
enum NotSealed {
    /// Over the sidecar's own state limit (`--max-state-bytes`): not sealed at all.
    StateBytes { bytes: usize, limit: usize },
    /// The cookies would pass a header limit of the path (`header_budget`).
    Headers(Over),
    /// Over the pool's ceiling for one session's cookies (`cookie.maxBytes`).
    MaxBytes { bytes: usize, limit: usize },
}

impl NotSealed {
    fn label(self) -> &'static str {
        match self {
            NotSealed::StateBytes { .. } => "state_bytes",
            NotSealed::Headers(over) => over.label(),
            NotSealed::MaxBytes { .. } => "max_bytes",
        }
    }

    fn explain(self) -> String {
        match self {
            NotSealed::StateBytes { bytes, limit } => {
                format!("the state is {bytes} bytes, over the limit of {limit} (--max-state-bytes)")
            }
            NotSealed::Headers(over) => over.explain(),
            NotSealed::MaxBytes { bytes, limit } => {
                format!("the session's cookies would be {bytes} bytes, over cookie.maxBytes {limit}")
            }
        }
    }
}

impl Proxy {
    /// The largest value of one state chunk: a cookie's name and value within the 4096 bytes
    /// browsers keep, with room for the `.NNNN` suffix.
    pub(super) fn chunk_bytes(&self) -> usize {
        header_budget::MAX_COOKIE_BYTES - 96 - self.cfg.cookie.attrs.name.len()
    }

    /// Takes the seal decision with the session table locked, and records a new state's version
    /// before unlocking: two concurrent responses of a session never get the same version.
    fn reserve(&self, session: &str, inputs: decide::SealInputs, now: Instant, created_at: u64) -> decide::Seal {
        let mut sessions = sync::lock(&self.sessions);
        // Not in the table, with a cookie: the table lost the session while this request was at
        // the app (the app went down, or the entry was evicted). The client's cookie may be older
        // than the newest version this pod handed out (other requests of the session were in
        // flight); counting on from it would hand those versions out again: the successor would
        // refuse this state's backup as older, and the client keep a state no backup holds. The
        // count goes on from the clock, as a restore's does.
        let local_version = sessions
            .get(session)
            .map(|l| l.version)
            .or_else(|| inputs.cookie_version.map(|v| decide::relearned_version(v, super::unix_micros())));
        let seal = decide::seal(decide::SealInputs { local_version, ..inputs });
        match seal.action {
            SealAction::Seal(SealSource::Push | SealSource::Pull) => {
                let local = Local { version: seal.version, sealed_at: Some(now), created_at, learned_from: None };
                self.insert_local(&mut sessions, session, local, now);
            }
            // The same state with a new expiry: the idle sweep must not tell the app an active
            // session expired (it counts from the last seal of any kind).
            SealAction::Seal(SealSource::Carry | SealSource::Refresh) => {
                if let Some(local) = sessions.write(session, now) {
                    local.sealed_at = Some(now);
                }
            }
            SealAction::Keep | SealAction::Delete => {}
        }
        seal
    }

    /// Seals the session's newest state into Set-Cookie headers when there is a new one, or
    /// deletes the session's cookies; whether it set any cookie (a shared cache must then not
    /// store the response). `format`: the state format the app declared with a pushed state
    /// (`Handover-State-Format`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn seal_response(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        session: &str,
        rc: &RequestCookie,
        pushed: Option<Vec<u8>>,
        format: String,
        carried: Option<Carried>,
    ) -> bool {
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
        // Pulls of one session are taken one at a time and given their versions in that order,
        // so a newer version never holds an older state.
        let _pulling = if pull { Some(self.restore_lock(session).lock().await) } else { None };
        let (offered, newest, format) = match pushed {
            Some(state) => (decide::Offered::Pushed { empty: state.is_empty() }, Some(state), format),
            None if pull => match self.pull_state(session).await {
                Ok((state, format)) => (decide::Offered::Pulled { empty: state.is_empty() }, Some(state), format),
                Err(e) => {
                    tracing::warn!(session, error = %e, "could not pull the app's state");
                    (decide::Offered::PullFailed, None, String::new())
                }
            },
            None => (decide::Offered::Nothing, None, String::new()),
        };
        let seen = match (&rc.route, rc.dropped) {
            (_, true) => decide::CookieSeen::Dropped,
            (Some(_), false) => decide::CookieSeen::Valid,
            (None, false) => decide::CookieSeen::Absent,
        };
        let refresh_due = rc.route.as_ref().is_some_and(|c| {
            decide::refresh_due(c, local.map(|l| l.vouched()), self.cfg.cookie.max_age.as_secs(), unix_now())
        });
        // The session's creation time goes with it through every reseal (and an id rotation): a
        // session without a cookie (new, or fresh after a refusal) is created now.
        let created_at = rc.route.as_ref().map_or_else(unix_now, |r| r.created_at);
        let seal = self.reserve(
            session,
            decide::SealInputs {
                cookie: seen,
                offered,
                owner_changed: carried.is_some(),
                refresh_due,
                local_version: None,
                cookie_version: rc.route.as_ref().map(|r| r.version),
            },
            now,
            created_at,
        );
        let (source, state_version, copy) = match seal.action {
            SealAction::Keep => return false,
            SealAction::Delete => {
                let deleted = self.delete_cookies(headers, rc);
                self.forget_session(session);
                if seen == decide::CookieSeen::Valid {
                    // The app ended it: older copies of its cookie must not bring it back, here
                    // nor (through the successor's tombstone) at a takeover on another pod.
                    self.mark_ended(session);
                    self.back_up_tombstone(session, seal.version).await;
                }
                tracing::debug!(session, "no state for this session: cookie deleted");
                return deleted;
            }
            SealAction::Seal(source @ (SealSource::Push | SealSource::Pull)) => {
                let state = newest.unwrap_or_default();
                if state.len() > self.cfg.max_state_bytes {
                    let why = NotSealed::StateBytes { bytes: state.len(), limit: self.cfg.max_state_bytes };
                    self.not_sealed(headers, session, why, "none");
                    return false;
                }
                let stored = if self.cfg.compress_state {
                    StoredState::of_session(session, &state, &format)
                } else {
                    StoredState::plain(&state, &format)
                };
                let copy = if stored.sealed_len() <= self.cfg.inline_state_bytes {
                    StateCopy::Inline(stored)
                } else {
                    let ring = self.keys.ring();
                    StateCopy::Sealed(cookie::seal_stored_state(session, seal.version, &stored, &self.cfg.pool, &ring))
                };
                (source, seal.version, copy)
            }
            SealAction::Seal(SealSource::Carry) => match carried {
                Some(c) => (SealSource::Carry, c.state_version, c.copy),
                None => return false,
            },
            SealAction::Seal(SealSource::Refresh) => match (&rc.route, &rc.state) {
                (Some(r), Ok(Some(value))) => (SealSource::Refresh, r.state_version, StateCopy::Sealed(value.clone())),
                (Some(r @ Route { inline: Some(stored), .. }), Ok(None)) => {
                    (SealSource::Refresh, r.state_version, StateCopy::Inline(stored.clone()))
                }
                (Some(r), Ok(None)) if r.chunks == 0 => {
                    // The state is in no cookie (over the header budget: the app and the backup
                    // hold it). The route alone is resealed, so an active session is not cut at
                    // its idle deadline; the backup keeps its own expiry until the next change.
                    let route = self.route_for(session, seal.version, r.state_version, 0, 0, rc.carry, created_at);
                    let age = route.expires_at.saturating_sub(route.issued_at);
                    let value = cookie::seal_route(&route, &self.cfg.pool, &self.keys.ring());
                    let line = [(self.cfg.cookie.attrs.name.as_str(), value.as_str(), age)];
                    let room = Room {
                        response_block: header_budget::response_block_bytes(status, headers),
                        other_cookies: rc.other_cookies,
                        carry: rc.carry,
                    };
                    let Ok((set_cookies, _)) = self.fit(&line, room) else { return false };
                    self.metrics.snapshots.inc(SealSource::Refresh.label());
                    return append(headers, set_cookies);
                }
                _ => return false,
            },
        };

        let name = &self.cfg.cookie.attrs.name;
        // A state inside the route leaves no sealed value: no chunks, and none in the backup.
        let (state_value, inline) = match copy {
            StateCopy::Sealed(value) => (value, None),
            StateCopy::Inline(stored) => (String::new(), Some(stored)),
        };
        let chunks = cookie::split_state(name, &state_value, self.chunk_bytes());
        let route = Route {
            inline,
            ..self.route_for(
                session,
                seal.version,
                state_version,
                u16::try_from(chunks.len()).unwrap_or(u16::MAX),
                u32::try_from(state_value.len()).unwrap_or(u32::MAX),
                rc.carry,
                created_at,
            )
        };
        let route_value = cookie::seal_route(&route, &self.cfg.pool, &self.keys.ring());
        // The idle timeout, or less: never past the absolute deadline.
        let max_age = route.expires_at.saturating_sub(route.issued_at);
        let count = usize::from(route.chunks);
        // Chunks of an older, longer state the client still holds: deleted.
        let stale: Vec<String> =
            rc.held_chunks.iter().filter(|&&i| i >= count).map(|&i| cookie::state_chunk_name(name, i)).collect();
        let mut lines: Vec<(&str, &str, u64)> = Vec::with_capacity(1 + chunks.len() + stale.len());
        lines.push((name, &route_value, max_age));
        lines.extend(chunks.iter().map(|(n, v)| (n.as_str(), *v, max_age)));
        lines.extend(stale.iter().map(|n| (n.as_str(), "", 0)));
        let room = Room {
            response_block: header_budget::response_block_bytes(status, headers),
            other_cookies: rc.other_cookies,
            carry: rc.carry,
        };
        let sealed = self.fit(&lines, room);
        // Before the response leaves: what the client acknowledges, the successor keeps (with
        // the full route, whatever the client's cookies end up holding).
        let backed_up = self
            .back_up(Backup {
                session: session.to_owned(),
                version: state_version,
                expires_at: route.expires_at,
                route: route_value,
                state: state_value,
            })
            .await;
        match sealed {
            Ok((set_cookies, added)) => {
                self.metrics.snapshots.inc(source.label());
                self.metrics.snapshot_bytes.observe(added.request_bytes as f64);
                self.metrics.response_header_bytes.observe((room.response_block + added.set_cookie_bytes) as f64);
                append(headers, set_cookies)
            }
            Err(why) => {
                self.not_sealed(headers, session, why, backed_up);
                // The route alone, naming this owner and the newest version, over the chunks the
                // client holds (an older state, its copy of last resort), so the session is still
                // routed here and nothing older passes for the newest.
                let (state_version, chunks, state_bytes, inline) = match (&rc.route, &rc.state) {
                    (Some(old), Ok(Some(_))) => (old.state_version, old.chunks, old.state_bytes, None),
                    (Some(old @ Route { inline: Some(stored), .. }), Ok(None)) => {
                        (old.state_version, 0, 0, Some(stored.clone()))
                    }
                    _ => (0, 0, 0, None),
                };
                let route = Route {
                    inline,
                    ..self.route_for(session, seal.version, state_version, chunks, state_bytes, rc.carry, created_at)
                };
                let value = cookie::seal_route(&route, &self.cfg.pool, &self.keys.ring());
                let line = [(name.as_str(), value.as_str(), max_age)];
                self.fit(&line, room).is_ok_and(|(set_cookies, _)| append(headers, set_cookies))
            }
        }
    }

    /// A routing cookie naming this pod as the session's owner.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_for(
        &self,
        session: &str,
        version: u64,
        state_version: u64,
        chunks: u16,
        state_bytes: u32,
        carry: u32,
        created_at: u64,
    ) -> Route {
        let unix = unix_now();
        let absolute = self.cfg.cookie.absolute_timeout.map(|d| d.as_secs());
        Route {
            session: session.to_owned(),
            owner: self.me.clone(),
            version,
            state_version,
            issued_at: unix,
            expires_at: decide::cookie_expiry(unix, self.cfg.cookie.max_age.as_secs(), created_at, absolute),
            chunks,
            state_bytes,
            carry,
            created_at,
            ended: false,
            inline: None,
        }
    }

    /// The `Set-Cookie` lines of `(name, value, max_age)` cookies, if they pass every limit.
    fn fit(&self, cookies: &[(&str, &str, u64)], room: Room) -> Result<(Vec<String>, Added), NotSealed> {
        let mut added = Added::default();
        let mut set_cookies = Vec::with_capacity(cookies.len());
        for (cookie_name, value, age) in cookies {
            let line = crate::cookie_attrs::set_cookie_line(&self.cfg.cookie.attrs, cookie_name, value, *age);
            added.push(&line, cookie_name, value, *age > 0);
            set_cookies.push(line);
        }
        header_budget::check(self.cfg.limits, room, &added).map_err(NotSealed::Headers)?;
        if added.request_bytes > self.cfg.cookie.max_bytes {
            return Err(NotSealed::MaxBytes { bytes: added.request_bytes, limit: self.cfg.cookie.max_bytes });
        }
        Ok((set_cookies, added))
    }

    /// A state not sealed into the client's cookies: counted, logged, and said on the response;
    /// the client keeps its previous cookies. `backed_up`: what became of the state's backup
    /// ([`Proxy::back_up`]'s result, already known: the response waited for it; `none` when
    /// the state was not backed up at all): the response says whether the successor has it.
    fn not_sealed(&self, headers: &mut HeaderMap, session: &str, why: NotSealed, backed_up: &str) {
        self.metrics.seals_refused.get_or_create(&[("reason", why.label())]).inc();
        let explanation = why.explain();
        let saved = match backed_up {
            // Kept, or a newer state of the session is (another response's, sent meanwhile).
            "ok" | "older" => "kept by the successor's backup only".to_owned(),
            "off" | "none" => "not saved for failover".to_owned(),
            not_kept => format!("not saved for failover (the successor's backup: {not_kept})"),
        };
        tracing::warn!(
            session,
            reason = why.label(),
            "state not sealed into the client's cookies: {explanation}; {saved}"
        );
        if let Ok(v) = HeaderValue::from_str(&format!("state not sealed into cookies: {explanation}; {saved}")) {
            headers.insert(WARNING_HEADER, v);
        }
    }

    /// Expires the routing cookie and every state chunk the client sent (only those: the names
    /// come from the request, so a forged count costs nothing); whether there was any.
    pub(super) fn delete_cookies(&self, headers: &mut HeaderMap, rc: &RequestCookie) -> bool {
        let name = &self.cfg.cookie.attrs.name;
        let route = rc.held_route.then(|| name.clone());
        let chunks = rc.held_chunks.iter().map(|&i| cookie::state_chunk_name(name, i));
        let lines = route
            .into_iter()
            .chain(chunks)
            .map(|cookie_name| crate::cookie_attrs::set_cookie_line(&self.cfg.cookie.attrs, &cookie_name, "", 0));
        append(headers, lines)
    }
}
