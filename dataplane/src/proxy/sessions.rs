//! The session table: which sessions the local app holds and at which version, when each was last
//! sealed, their expiry, the sessions that ended here, and moving a session to a new id.

use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::{Proxy, unix_now};
use crate::decide;
use handover_common::sync;

/// Ended sessions a sidecar remembers at most (about 100 bytes each).
pub(super) const MAX_ENDED: usize = 100_000;

/// What the sidecar knows about a session the local app holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Local {
    pub(super) version: u64,
    pub(super) sealed_at: Option<Instant>,
    /// Unix seconds: when the session was first sealed (its route's `created_at`).
    pub(super) created_at: u64,
}

impl Proxy {
    /// Forgets which sessions the app holds: each one is checked (or restored) on its next request.
    pub(super) fn forget_sessions(&self) {
        let mut sessions = sync::lock(&self.sessions);
        sessions.clear();
        self.metrics.sessions.set(0);
    }

    pub(super) fn local(&self, session: &str) -> Option<Local> {
        sync::lock(&self.sessions).get(session).copied()
    }

    pub(super) fn set_local(&self, session: &str, local: Local) {
        let mut sessions = sync::lock(&self.sessions);
        sessions.insert(session.to_owned(), local);
        self.metrics.sessions.set(sessions.len() as i64);
    }

    /// Drops sessions not sealed for longer than a cookie lives (their clients' cookies have
    /// expired: they cannot come back) or past their absolute timeout, and tells the app each one
    /// left (`DELETE <statePath>`), so its memory does not only grow.
    pub async fn forget_expired_sessions(&self) {
        let max_age = self.cfg.cookie.max_age;
        let absolute = self.cfg.cookie.absolute_timeout.map(|d| d.as_secs());
        let unix = unix_now();
        let gone = |l: &Local| {
            l.sealed_at.is_some_and(|t| t.elapsed() >= max_age) || decide::past_absolute(l.created_at, absolute, unix)
        };
        let expired: Vec<String> = {
            let mut sessions = sync::lock(&self.sessions);
            let expired = sessions.iter().filter(|(_, l)| gone(l)).map(|(id, _)| id.clone()).collect();
            sessions.retain(|_, l| !gone(l));
            self.metrics.sessions.set(sessions.len() as i64);
            expired
        };
        {
            let now = Instant::now();
            sync::lock(&self.ended).retain(|_, until| *until > now);
        }
        for session in expired {
            self.session_left(&session, "expired").await;
        }
    }

    /// Tells the app that a session it holds left it (`DELETE <statePath>`): its cookie expired,
    /// or another pod owns it now. Best effort: an app that misses it keeps a stale entry, so apps
    /// keep an idle expiry of their own too.
    pub(super) async fn session_left(&self, session: &str, reason: &'static str) {
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

    /// Gives session `old` a new id: its state (pushed on this response, else pulled) is put into
    /// the app under the new id, the app is told `old` left (`DELETE <statePath>`), and the
    /// response then seals the new id. The old id counts as ended here: a copy of its cookie (a
    /// fixated one, a replay) starts a fresh session, never the one that rotated. Without a state
    /// to move, or when the app will not take it, nothing changes (the pushed state is handed back).
    /// The state keeps the format the app declared for it (`format` with a pushed state).
    pub(super) async fn rotate_session(
        &self,
        old: &str,
        pushed: Option<Vec<u8>>,
        format: &str,
    ) -> Result<(String, Vec<u8>, String), Option<Vec<u8>>> {
        let (state, format) = match pushed {
            Some(state) if !state.is_empty() => (state, format.to_owned()),
            Some(empty) => return Err(Some(empty)),
            None => match self.pull_state(old).await {
                Ok((state, format)) if !state.is_empty() => (state, format),
                _ => {
                    tracing::warn!(session = old, "the app asked to rotate a session that has no state; not rotated");
                    return Err(None);
                }
            },
        };
        let new_id = crate::random::session_id();
        match self.state_call(Method::PUT, &new_id, Bytes::from(state.clone()), Some(&format)).await {
            Ok((status, _, _)) if status.is_success() => {}
            outcome => {
                let why = match outcome {
                    Ok((status, _, _)) => format!("the app answered {status}"),
                    Err(e) => e,
                };
                tracing::warn!(session = old, error = %why, "could not move the state to a new session id; not rotated");
                return Err(Some(state));
            }
        }
        let (version, created_at) = self.local(old).map_or((0, unix_now()), |l| (l.version, l.created_at));
        self.set_local(&new_id, Local { version, sealed_at: None, created_at });
        self.forget_session(old);
        self.mark_ended(old);
        // Pool-wide: the successor keeps a tombstone above every version of the old id.
        self.back_up_tombstone(old, version).await;
        self.session_left(old, "rotated").await;
        tracing::info!(old_session = old, session = %new_id, "session id rotated at the app's request");
        Ok((new_id, state, format))
    }

    /// Remembers that `session` ended here, until any cookie of it has expired.
    pub(super) fn mark_ended(&self, session: &str) {
        let mut ended = sync::lock(&self.ended);
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

    pub(super) fn has_ended(&self, session: &str) -> bool {
        let ended = sync::lock(&self.ended);
        ended.get(session).is_some_and(|until| *until > Instant::now())
    }

    pub(super) fn forget_session(&self, session: &str) {
        let mut sessions = sync::lock(&self.sessions);
        sessions.remove(session);
        self.metrics.sessions.set(sessions.len() as i64);
    }
}
