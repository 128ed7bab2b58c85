//! The session table: which sessions the local app holds and at which version, when each was last
//! sealed, their expiry and its cap, the sessions that ended here, and moving a session to a new id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use super::{Proxy, unix_now};
use crate::decide;
use handover_common::sync;

/// Ended sessions a sidecar remembers at most (about 100 bytes each).
pub(super) const MAX_ENDED: usize = 100_000;

/// The default of `--max-sessions`: entries of the session table (about 100 bytes each).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// A map keyed by session id. The ids are ones this sidecar made (random) or read from a sealed
/// cookie or a signed forward: a client cannot pick ids that collide, so they are hashed with
/// foldhash (seeded per process) rather than SipHash, whose ~200 instructions a key cost every
/// request several times over (the table, the session order, the ended sessions).
pub(super) type SessionMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the sidecar knows about a session the local app holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Local {
    pub(super) version: u64,
    pub(super) sealed_at: Option<Instant>,
    /// Unix seconds: when the session was first sealed (its route's `created_at`).
    pub(super) created_at: u64,
    /// Learned anew from a cookie of this version, the app's copy found there
    /// ([`decide::relearned_version`] put `version` above it): until this pod seals the session
    /// again, that cookie is what it vouches for, and may be refreshed ([`Local::vouched`]).
    pub(super) learned_from: Option<u64>,
}

impl Local {
    /// The version of the cookie this pod's copy of the session stands behind: the one it sealed
    /// last, or the one it learned the session from since.
    pub(super) fn vouched(&self) -> u64 {
        self.learned_from.filter(|_| self.sealed_at.is_none()).unwrap_or(self.version)
    }
}

struct Entry {
    local: Local,
    /// When the entry was last written (sealed, restored, checked): it expires a cookie's
    /// lifetime after that, whether or not this pod ever sealed it.
    written: Instant,
    /// The table's clock at the entry's last use: the least recently used go first past the cap.
    used: u64,
}

/// The session table, capped: past `cap` entries, the least recently used sixteenth is evicted at
/// once (a use costs a counter; an eviction a scan, once per `cap / 16` new sessions). Evicting
/// is always safe: a session missing from the table is checked with the app (`GET <statePath>`)
/// or restored from its cookie on its next request, like after a restart of the sidecar.
pub(super) struct Table {
    entries: SessionMap<String, Entry>,
    cap: usize,
    clock: u64,
}

impl Table {
    pub(super) fn new(cap: usize) -> Table {
        Table { entries: SessionMap::default(), cap: cap.max(1), clock: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The session's entry, marked as used.
    pub(super) fn get(&mut self, session: &str) -> Option<Local> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(session).map(|e| {
            e.used = clock;
            e.local
        })
    }

    /// Writes the session's entry; returns how many others were evicted to make room for it.
    pub(super) fn insert(&mut self, session: &str, local: Local, now: Instant) -> usize {
        self.clock += 1;
        let used = self.clock;
        if let Some(e) = self.entries.get_mut(session) {
            *e = Entry { local, written: now, used };
            return 0;
        }
        let evicted = if self.entries.len() >= self.cap { self.evict_least_used() } else { 0 };
        self.entries.insert(session.to_owned(), Entry { local, written: now, used });
        evicted
    }

    /// Drops the least recently used sixteenth of the cap (at least one entry).
    fn evict_least_used(&mut self) -> usize {
        let n = (self.cap / 16).clamp(1, self.entries.len());
        let mut used: Vec<u64> = self.entries.values().map(|e| e.used).collect();
        let (_, &mut newest_evicted, _) = used.select_nth_unstable(n - 1);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.used > newest_evicted);
        before - self.entries.len()
    }

    /// The session's entry, to be changed in place (a seal that keeps its version): marked used,
    /// and written at `now` (its expiry counts from there).
    pub(super) fn write(&mut self, session: &str, now: Instant) -> Option<&mut Local> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(session).map(|e| {
            e.used = clock;
            e.written = now;
            &mut e.local
        })
    }

    /// The ids of the sessions in the table.
    pub(super) fn ids(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub(super) fn remove(&mut self, session: &str) {
        self.entries.remove(session);
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Removes and returns the sessions written longer than `max_age` ago, and those `past_end`
    /// says are over (their absolute timeout).
    fn take_expired(&mut self, now: Instant, max_age: Duration, past_end: impl Fn(&Local) -> bool) -> Vec<String> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.written) >= max_age || past_end(&e.local))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.entries.remove(id);
        }
        expired
    }
}

impl Proxy {
    /// Forgets which sessions the app holds: each one is checked (or restored) on its next request.
    pub(super) fn forget_sessions(&self) {
        let mut sessions = sync::lock(&self.sessions);
        sessions.clear();
        self.metrics.sessions.set(0);
    }

    pub(super) fn local(&self, session: &str) -> Option<Local> {
        sync::lock(&self.sessions).get(session)
    }

    pub(super) fn set_local(&self, session: &str, local: Local) {
        let mut sessions = sync::lock(&self.sessions);
        self.insert_local(&mut sessions, session, local, Instant::now());
    }

    /// Writes a session's entry into the locked table, counting what the cap evicted.
    pub(super) fn insert_local(&self, sessions: &mut Table, session: &str, local: Local, now: Instant) {
        let evicted = sessions.insert(session, local, now);
        if evicted > 0 {
            self.metrics.sessions_evicted.inc_by(evicted as u64);
            tracing::debug!(evicted, cap = sessions.cap, "session table full; the least recently used entries evicted");
        }
        self.metrics.sessions.set(sessions.len() as i64);
    }

    /// Drops sessions not written (sealed of any kind, restored, checked) for longer than a cookie
    /// lives (their clients' cookies have expired: they cannot come back) or past their absolute
    /// timeout, and tells the app each one left (`DELETE <statePath>`), so its memory does not
    /// only grow.
    pub async fn forget_expired_sessions(&self) {
        let absolute = self.cfg.cookie.absolute_timeout.map(|d| d.as_secs());
        let unix = unix_now();
        let expired = {
            let mut sessions = sync::lock(&self.sessions);
            let expired = sessions.take_expired(Instant::now(), self.cfg.cookie.max_age, |l| {
                decide::past_absolute(l.created_at, absolute, unix)
            });
            self.metrics.sessions.set(sessions.len() as i64);
            expired
        };
        {
            let now = Instant::now();
            sync::lock(&self.ended).retain(|_, until| *until > now);
        }
        if let Some(store) = &self.backups {
            // A backup lives as long as its route may: past that, no cookie of it is left.
            store.expire(unix);
            self.backup_gauges();
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
        self.set_local(&new_id, Local { version, sealed_at: None, created_at, learned_from: None });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn local(version: u64) -> Local {
        Local { version, sealed_at: None, created_at: 0, learned_from: None }
    }

    #[test]
    fn the_table_stays_within_its_cap_and_evicts_the_least_recently_used() {
        let now = Instant::now();
        let mut table = Table::new(64);
        let mut evicted = 0;
        for i in 0..64 {
            evicted += table.insert(&format!("s{i}"), local(1), now);
        }
        assert_eq!((table.len(), evicted), (64, 0));
        // s0..s3 used again: the least recently used are s4.. now.
        for i in 0..4 {
            assert!(table.get(&format!("s{i}")).is_some());
        }
        evicted += table.insert("new", local(1), now);
        assert_eq!(evicted, 64 / 16, "a sixteenth of the cap goes at once");
        assert!((0..4).all(|i| table.get(&format!("s{i}")).is_some()), "recently used kept");
        assert!((4..8).all(|i| table.get(&format!("s{i}")).is_none()), "least recently used evicted");
        for i in 0..10_000 {
            evicted += table.insert(&format!("flood{i}"), local(1), now);
            assert!(table.len() <= 64);
        }
        assert_eq!(evicted + table.len(), 64 + 1 + 10_000, "every entry is in the table or counted evicted");
        // Writing an entry that is there evicts nothing.
        let kept = table.entries.keys().next().cloned().expect("an entry");
        assert_eq!(table.insert(&kept, local(2), now), 0);
    }

    #[test]
    fn entries_expire_a_cookie_lifetime_after_their_last_write_sealed_or_not() {
        let max_age = Duration::from_secs(60);
        let start = Instant::now();
        let never = |_: &Local| false;
        let mut table = Table::new(10);
        // Created by a restore (never sealed here), one sealed later, one whose seal kept its
        // version (a carry or refresh writes it in place).
        table.insert("restored", local(3), start);
        table.insert("sealed", Local { version: 1, sealed_at: Some(start), created_at: 0, learned_from: None }, start);
        table.insert(
            "sealed",
            Local { version: 2, sealed_at: Some(start + max_age), created_at: 0, learned_from: None },
            start + max_age,
        );
        table.insert("carried", local(1), start);
        let carried = table.write("carried", start + max_age / 2).expect("in the table");
        carried.sealed_at = Some(start + max_age / 2);
        assert!(table.take_expired(start + max_age / 2, max_age, never).is_empty());
        assert_eq!(table.take_expired(start + max_age, max_age, never), vec!["restored".to_owned()]);
        assert_eq!(table.take_expired(start + max_age * 3 / 2, max_age, never), vec!["carried".to_owned()]);
        assert_eq!(table.take_expired(start + max_age * 2, max_age, never), vec!["sealed".to_owned()]);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn entries_past_their_absolute_timeout_expire_however_recently_written() {
        let max_age = Duration::from_secs(60);
        let now = Instant::now();
        let mut table = Table::new(10);
        table.insert("old", Local { version: 1, sealed_at: Some(now), created_at: 100, learned_from: None }, now);
        table.insert("young", Local { version: 1, sealed_at: Some(now), created_at: 200, learned_from: None }, now);
        let past_end = |l: &Local| decide::past_absolute(l.created_at, Some(50), 160);
        assert_eq!(table.take_expired(now, max_age, past_end), vec!["old".to_owned()]);
        assert_eq!(table.ids().cloned().collect::<Vec<_>>(), vec!["young".to_owned()]);
    }
}
