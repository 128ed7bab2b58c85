//! Sealing a response's state into Set-Cookie: which state (pushed, pulled, carried), with which
//! version, in how many chunks; deleting the cookie when the session ended; a state too large.

use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};

use super::headers::WARNING_HEADER;
use super::request::RequestCookie;
use super::sessions::Local;
use super::{Proxy, unix_now};
use crate::cookie::{self, Owner, Snapshot};
use crate::decide;

impl Proxy {
    /// Seals the session's newest state into Set-Cookie headers when there is a new one.
    pub(super) async fn seal_response(
        &self,
        headers: &mut HeaderMap,
        session: &str,
        rc: &RequestCookie,
        pushed: Option<Vec<u8>>,
        owner_changed: bool,
    ) {
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
        let (offered, newest) = match pushed {
            Some(state) => (decide::Offered::Pushed { empty: state.is_empty() }, Some(state)),
            None if pull => match self.pull_state(session).await {
                Ok(state) => (decide::Offered::Pulled { empty: state.is_empty() }, Some(state)),
                Err(e) => {
                    tracing::warn!(session, error = %e, "could not pull the app's state");
                    (decide::Offered::PullFailed, None)
                }
            },
            None => (decide::Offered::Nothing, None),
        };
        let seen = match (&rc.snapshot, rc.dropped) {
            (_, true) => decide::CookieSeen::Dropped,
            (Some(_), false) => decide::CookieSeen::Valid,
            (None, false) => decide::CookieSeen::Absent,
        };
        let refresh_due = rc.snapshot.as_ref().is_some_and(|c| {
            decide::refresh_due(c, local.map(|l| l.version), self.cfg.cookie.max_age.as_secs(), unix_now())
        });
        let (state, source) = match decide::seal_action(seen, offered, owner_changed, refresh_due) {
            decide::SealAction::Keep => return,
            decide::SealAction::Delete => {
                self.delete_cookie(headers, &rc.held_chunks);
                self.forget_session(session);
                if seen == decide::CookieSeen::Valid {
                    // The app ended it: older copies of its cookie must not bring it back.
                    self.mark_ended(session);
                }
                tracing::debug!(session, "no state for this session: cookie deleted");
                return;
            }
            decide::SealAction::Seal(source @ (decide::SealSource::Carry | decide::SealSource::Refresh)) => {
                match &rc.snapshot {
                    Some(s) => (s.state.clone(), source),
                    None => return,
                }
            }
            decide::SealAction::Seal(source) => (newest.unwrap_or_default(), source),
        };

        if state.len() > self.cfg.max_state_bytes {
            self.state_not_sealed(headers, session, state.len(), None);
            return;
        }
        let version = local.map(|l| l.version).max(rc.snapshot.as_ref().map(|s| s.version)).unwrap_or(0) + 1;
        let unix = unix_now();
        let snapshot = Snapshot {
            session: session.to_owned(),
            owner: Owner {
                name: self.cfg.pod_name.clone(),
                uid: self.cfg.pod_uid.clone(),
                addr: self.cfg.advertise.clone(),
            },
            version,
            issued_at: unix,
            expires_at: unix + self.cfg.cookie.max_age.as_secs(),
            state,
        };
        let value = cookie::seal(&snapshot, &self.cfg.pool, &self.keys.ring());
        match cookie::split(&self.cfg.cookie.attrs.name, &value, self.budget()) {
            Ok(chunks) => {
                for (name, value) in &chunks {
                    self.append_set_cookie(headers, name, value, self.cfg.cookie.max_age.as_secs());
                }
                for &stale in rc.held_chunks.iter().filter(|&&i| i >= chunks.len()) {
                    self.append_set_cookie(headers, &cookie::chunk_name(&self.cfg.cookie.attrs.name, stale), "", 0);
                }
                self.metrics.snapshots.get_or_create(&[("source", source.label())]).inc();
                self.metrics.snapshot_bytes.observe(value.len() as f64);
                self.set_local(session, Local { version, sealed_at: Some(now) });
            }
            Err(_) => self.state_not_sealed(headers, session, snapshot.state.len(), Some(value.len())),
        }
    }

    /// A state too large to seal: counted, logged, and said on the response; the client keeps
    /// its previous cookie.
    pub(super) fn state_not_sealed(
        &self,
        headers: &mut HeaderMap,
        session: &str,
        state_bytes: usize,
        sealed_bytes: Option<usize>,
    ) {
        self.metrics.over_budget.inc();
        tracing::warn!(
            session,
            state_bytes,
            sealed_bytes,
            budget = self.cfg.cookie.max_bytes,
            max_state_bytes = self.cfg.max_state_bytes,
            "state over the cookie budget: not sealed, the client keeps its previous cookie"
        );
        let warning = match sealed_bytes {
            Some(sealed) => format!(
                "state of {state_bytes} bytes seals to {sealed} bytes, over the cookie budget of {}; not saved for failover",
                self.cfg.cookie.max_bytes
            ),
            None => format!(
                "state of {state_bytes} bytes is over the state limit of {} bytes; not saved for failover",
                self.cfg.max_state_bytes
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&warning) {
            headers.insert(WARNING_HEADER, v);
        }
    }

    /// Expires every chunk of the state cookie the client sent (and only those: the names come
    /// from the request, so a forged count costs nothing).
    pub(super) fn delete_cookie(&self, headers: &mut HeaderMap, held_chunks: &[usize]) {
        for &chunk in held_chunks {
            self.append_set_cookie(headers, &cookie::chunk_name(&self.cfg.cookie.attrs.name, chunk), "", 0);
        }
    }

    pub(super) fn append_set_cookie(&self, headers: &mut HeaderMap, name: &str, value: &str, max_age: u64) {
        let line = crate::cookie_attrs::set_cookie_line(&self.cfg.cookie.attrs, name, value, max_age);
        if let Ok(v) = HeaderValue::from_str(&line) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}
