//! Restoring a session from its cookie into the local app: once per version (a per-session lock),
//! asking the app first when this pod owns it, retried on failure, dropped on the app's refusal.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};

use super::sessions::Local;
use super::{Proxy, text_response};
use crate::cookie::Snapshot;
use crate::decide;
use crate::upstream::Body;

/// Shards of the per-session restore lock.
pub(super) const RESTORE_SHARDS: usize = 64;

/// Restores tried for one request when the app fails (5xx, timeout): a passing hiccup is hidden
/// from the client, a lasting one answers 502 within `RESTORE_ATTEMPTS` × `--state-timeout`.
pub(super) const RESTORE_ATTEMPTS: usize = 3;

/// The pause before the next restore attempt, times the attempts so far.
pub(super) const RESTORE_RETRY_AFTER: Duration = Duration::from_millis(50);

/// What became of a restore.
pub(super) enum Restored {
    /// The local app already held this version (a concurrent request restored it, or the app
    /// still had it): nothing was sent.
    Already,
    /// The app took the state.
    Done,
    /// The app answered 4xx: this state is not for it.
    Refused,
}

impl Proxy {
    pub(super) fn restore_lock(&self, session: &str) -> &tokio::sync::Mutex<()> {
        let shard = session.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
        &self.restore_locks[shard % RESTORE_SHARDS]
    }

    /// Restores `snapshot` into the local app unless a concurrent request of the same session just
    /// did.
    ///
    /// When this pod is the owner (not a takeover), the app may still hold the session — the
    /// sidecar restarted, or only a connection closed — and its copy may be newer than the cookie
    /// (pull mode), so the app is asked first (`GET <statePath>`) and only restored on a miss.
    ///
    /// A 4xx is the app's verdict on the state ([`decide::restore_verdict`]): the state is
    /// dropped (counted, logged with the session id) and the request goes on as a fresh session.
    /// A 5xx, a timeout or a lost connection is tried again, [`RESTORE_ATTEMPTS`] times in all;
    /// then the client gets 502 and keeps its cookie.
    pub(super) async fn restore_once(&self, snapshot: &Snapshot, takeover: bool) -> Result<Restored, Response<Body>> {
        let _guard = self.restore_lock(&snapshot.session).lock().await;
        if self.local(&snapshot.session).is_some_and(|l| l.version >= snapshot.version) {
            return Ok(Restored::Already);
        }
        if !takeover
            && let Ok((StatusCode::OK, _)) = self.state_request(Method::GET, &snapshot.session, Bytes::new()).await
        {
            self.set_local(&snapshot.session, Local { version: snapshot.version, sealed_at: None });
            return Ok(Restored::Already);
        }
        if !snapshot.state.is_empty() {
            let mut attempt = 1;
            loop {
                let why =
                    match self.state_request(Method::PUT, &snapshot.session, Bytes::from(snapshot.state.clone())).await
                    {
                        Ok((status, body)) => match decide::restore_verdict(status.as_u16()) {
                            decide::RestoreVerdict::Done => break,
                            decide::RestoreVerdict::Refused => {
                                self.restore_refused(snapshot, status, &body);
                                return Ok(Restored::Refused);
                            }
                            decide::RestoreVerdict::Retry => format!("the app answered {status}"),
                        },
                        Err(why) => why,
                    };
                if attempt >= RESTORE_ATTEMPTS {
                    return Err(self.restore_failed(snapshot, &why));
                }
                self.metrics.restores.get_or_create(&[("result", "retried")]).inc();
                tracing::warn!(session = %snapshot.session, attempt, error = %why, "restore failed; trying again");
                tokio::time::sleep(RESTORE_RETRY_AFTER * attempt as u32).await;
                attempt += 1;
            }
        }
        self.metrics.restores.get_or_create(&[("result", "ok")]).inc();
        self.set_local(&snapshot.session, Local { version: snapshot.version, sealed_at: None });
        Ok(Restored::Done)
    }

    /// The app refused the state: counted and logged with the session id, so a lost session can
    /// be traced (the app's own log has the same id).
    pub(super) fn restore_refused(&self, snapshot: &Snapshot, status: StatusCode, body: &[u8]) {
        self.metrics.restores.get_or_create(&[("result", "refused")]).inc();
        self.metrics.sessions_reset.get_or_create(&[("reason", "refused_by_app")]).inc();
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
        tracing::warn!(
            session = %snapshot.session,
            version = snapshot.version,
            %status,
            app_said = %said,
            "the app refused this session's state; dropped, the request goes on as a fresh session"
        );
    }

    pub(super) fn restore_failed(&self, snapshot: &Snapshot, why: &str) -> Response<Body> {
        self.metrics.restores.get_or_create(&[("result", "failed")]).inc();
        tracing::error!(session = %snapshot.session, version = snapshot.version, error = why, "restore failed; the client keeps its cookie");
        text_response(
            StatusCode::BAD_GATEWAY,
            format!(
                "handover: the application could not restore this session ({why}); its state is still in your cookie, retry\n"
            ),
        )
    }
}
