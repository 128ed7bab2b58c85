//! `/drain` on the admin port: the pod is on its way out, and its app still runs.
//!
//! The operator injects a `preStop` hook into every app container of the pool's pods: an
//! `httpGet` of `/drain` on the sidecar's admin port, carrying the pod template's drain token
//! (`Handover-Drain` header). The kubelet calls it when the pod is deleted, before it sends the
//! app its SIGTERM, and waits for the answer. So the drain starts while the app can still serve:
//!
//! 1. readiness fails and every session's next response gets a fresh snapshot (pull mode too),
//!    exactly as on the sidecar's own SIGTERM ([`Proxy::start_draining`]);
//! 2. every session of the table gets a final snapshot, handed over: its state taken from the
//!    app, sealed as a newer version than any cookie this pod handed out, and given to the
//!    session's successor among the other members ([`Proxy::hand_over`], [`HANDOVER_AT_ONCE`] at
//!    a time, within the drain grace) — so a session that sends no request while the pod drains
//!    is taken over at its newest state too, in pull mode as in push;
//! 3. the answer waits until this pod has left the pool's registry (the operator drops a
//!    terminating pod at once; the sidecar's watch sees it) and the handover is done, at most
//!    `within` (the drain grace): from then on peers send this pod's sessions to their
//!    successors, and the app is stopped only after that.
//!
//! The sidecar's own SIGTERM ([`Drain::on_signal`]) does the same steps but answers nobody; the
//! handover runs once per process, whichever comes first.
//!
//! A native sidecar is stopped after the app: its own SIGTERM then finds the drain done, and a
//! request that still arrives does not wait for an app that is gone (the proxy's app wait ends at
//! once while draining).
//!
//! The token keeps other clients of the admin port (peers, scrapers) from draining a pod; an
//! empty token turns `/drain` off (the sidecar outside Kubernetes is drained by SIGTERM).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};

use crate::proxy::{HandedOver, Proxy};
use crate::upstream::Body;

/// Request header carrying the drain token.
pub const TOKEN_HEADER: &str = "handover-drain";

/// How often the registry is looked at while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Sessions handed over at once at the drain (each: a state call to the app, a PUT to a peer).
pub const HANDOVER_AT_ONCE: usize = 16;

fn text(status: StatusCode, body: String) -> http::Response<Body> {
    let mut resp = http::Response::new(crate::upstream::full(body));
    *resp.status_mut() = status;
    resp
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `req` may drain this sidecar.
pub fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    !token.is_empty() && req.headers().get(TOKEN_HEADER).is_some_and(|v| same(v.as_bytes(), token.as_bytes()))
}

/// Whether `me` is among the live members `proxy`'s registry lists.
fn listed(proxy: &Proxy, me: &str) -> bool {
    proxy.registry_members().iter().any(|m| m.name == me)
}

/// What the drain's handover did: sessions by result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    pub results: BTreeMap<HandedOver, usize>,
    pub took: Duration,
}

impl Handover {
    fn summary(&self) -> String {
        let parts: Vec<String> = self.results.iter().map(|(r, n)| format!("{} {n}", r.label())).collect();
        if parts.is_empty() { "no session".to_owned() } else { parts.join(", ") }
    }
}

/// Counts the sessions `done` did not reach as over the grace.
pub fn tally(sessions: usize, mut done: BTreeMap<HandedOver, usize>) -> BTreeMap<HandedOver, usize> {
    let finished: usize = done.values().sum();
    if sessions > finished {
        *done.entry(HandedOver::OverGrace).or_default() += sessions - finished;
    }
    done
}

/// Runs `task` for each of `sessions`, [`HANDOVER_AT_ONCE`] at a time, handing each outcome to
/// `done` as it comes (`failed` for a task that panicked), for at most `within`: whether every one
/// finished in time. Whatever still runs past it is cancelled.
async fn each_at_once<R, Fut>(
    sessions: impl Iterator<Item = String>,
    within: Duration,
    task: impl Fn(String) -> Fut,
    failed: R,
    mut done: impl FnMut(R),
) -> bool
where
    R: Clone + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let mut queue = sessions;
    // Dropped at the end: whatever is still running past `within` is cancelled.
    let mut running = tokio::task::JoinSet::new();
    let work = async {
        for session in queue.by_ref().take(HANDOVER_AT_ONCE) {
            running.spawn(task(session));
        }
        while let Some(finished) = running.join_next().await {
            done(finished.unwrap_or_else(|_| failed.clone()));
            if let Some(session) = queue.next() {
                running.spawn(task(session));
            }
        }
    };
    tokio::time::timeout(within, work).await.is_ok()
}

/// Hands every session of the table over ([`Proxy::hand_over`]), [`HANDOVER_AT_ONCE`] at a time,
/// for at most `within`; counted and logged.
pub async fn hand_over_all(proxy: &Arc<Proxy>, within: Duration) -> Handover {
    let started = tokio::time::Instant::now();
    if !proxy.backups_on() {
        tracing::info!(
            "drain: backups are off (--backup off): no session handed over; idle sessions keep their cookies' state"
        );
        return Handover::default();
    }
    let sessions = proxy.table_sessions();
    let mut done: BTreeMap<HandedOver, usize> = BTreeMap::new();
    let hand_over = |session: String| {
        let proxy = Arc::clone(proxy);
        async move { proxy.hand_over(&session).await }
    };
    let in_time = each_at_once(sessions.iter().cloned(), within, hand_over, HandedOver::NotKept, |r| {
        proxy.metrics.drain_handovers.get_or_create(&[("result", r.label())]).inc();
        *done.entry(r).or_default() += 1;
    })
    .await;
    pass_on_backups(proxy, within.saturating_sub(started.elapsed())).await;
    let results = tally(sessions.len(), done);
    if let Some(&late) = results.get(&HandedOver::OverGrace) {
        proxy.metrics.drain_handovers.get_or_create(&[("result", HandedOver::OverGrace.label())]).inc_by(late as u64);
    }
    let handover = Handover { results, took: started.elapsed() };
    if in_time {
        tracing::info!(sessions = sessions.len(), took = ?handover.took, "drain: sessions handed to their successors: {}", handover.summary());
    } else {
        tracing::warn!(sessions = sessions.len(), took = ?handover.took, "drain: the grace ended before every session was handed over: {}", handover.summary());
    }
    handover
}

/// Passes the backups this pod keeps for its peers' sessions on ([`Proxy::pass_on_backup`]),
/// [`HANDOVER_AT_ONCE`] at a time, for at most `within`; logged.
async fn pass_on_backups(proxy: &Arc<Proxy>, within: Duration) {
    let sessions = proxy.backup_sessions();
    if sessions.is_empty() {
        return;
    }
    let (mut kept, mut not_kept) = (0usize, 0usize);
    let pass_on = |session: String| {
        let proxy = Arc::clone(proxy);
        async move { proxy.pass_on_backup(&session).await }
    };
    let in_time = each_at_once(sessions.into_iter(), within, pass_on, false, |kept_there| {
        if kept_there {
            kept += 1;
        } else {
            not_kept += 1;
        }
    })
    .await;
    if in_time {
        tracing::info!(
            kept,
            not_kept,
            "drain: the backups this pod kept for its peers' sessions passed on to their successors"
        );
    } else {
        tracing::warn!(
            kept,
            not_kept,
            "drain: the grace ended before every backup kept for peers' sessions was passed on"
        );
    }
}

/// The drain of one sidecar: `/drain` and SIGTERM.
pub struct Drain {
    proxy: Arc<Proxy>,
    token: String,
    me: String,
    grace: Duration,
    handover: tokio::sync::OnceCell<Handover>,
    /// `/drain` saw this pod leave the registry with every session handed over.
    left: std::sync::atomic::AtomicBool,
}

impl Drain {
    /// `token`: what `/drain` must carry (empty: `/drain` is off); `me`: this pod's member name;
    /// `grace`: the longest drain.
    pub fn new(proxy: Arc<Proxy>, token: String, me: String, grace: Duration) -> Arc<Drain> {
        Arc::new(Drain {
            proxy,
            token,
            me,
            grace,
            handover: tokio::sync::OnceCell::new(),
            left: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The handover, once per process (a second caller waits for the first one's).
    async fn hand_over(&self, within: Duration) -> Handover {
        let handover = self.handover.get_or_init(|| hand_over_all(&self.proxy, within)).await.clone();
        self.proxy.sessions_handed_over();
        handover
    }

    /// SIGTERM: drains for the whole grace (serving on), handing the sessions over meanwhile —
    /// unless `/drain` did all that already (the app's `preStop`; a native sidecar's SIGTERM comes
    /// after its app exited): then the pool has learnt, every request is passed on, and there is
    /// nothing to wait for but the connections still open.
    pub async fn on_signal(&self) {
        self.proxy.start_draining();
        if self.left.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!("SIGTERM after /drain: the drain is done; closing");
            return;
        }
        tokio::join!(self.hand_over(self.grace), tokio::time::sleep(self.grace));
    }

    /// Handles `/drain`: starts draining, hands the sessions over, answers once that is done and
    /// this pod has left the registry (or after the drain grace).
    pub async fn handle<B>(&self, req: Request<B>) -> http::Response<Body> {
        if !authorized(&req, &self.token) {
            let reason = crate::metrics::BadRequest::DrainToken;
            self.proxy.metrics.bad_requests.get_or_create(&[("reason", reason)]).inc();
            tracing::warn!("/drain without the drain token: refused");
            return text(StatusCode::FORBIDDEN, "handover: /drain needs the pod's drain token\n".to_owned());
        }
        let (proxy, within) = (&self.proxy, self.grace);
        let started = tokio::time::Instant::now();
        if proxy.draining_since().is_none() {
            tracing::info!(
                ?within,
                "/drain (the app's preStop): readiness fails now; serving on while the pool learns"
            );
        }
        proxy.start_draining();
        let leaving = tokio::time::timeout(within, async {
            while listed(proxy, &self.me) {
                tokio::time::sleep(POLL).await;
            }
        });
        let (handover, left) = tokio::join!(self.hand_over(within), leaving);
        let left = left.is_ok();
        let took = started.elapsed();
        let handed = handover.summary();
        if left {
            self.left.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(?took, "drained: this pod has left the pool's registry; the app may stop");
            text(
                StatusCode::OK,
                format!("drained: left the registry after {} ms; handed over: {handed}\n", took.as_millis()),
            )
        } else {
            tracing::warn!(
                ?took,
                "drain: still listed in the registry at the end of the drain grace; the app stops anyway"
            );
            text(
                StatusCode::OK,
                format!("drain grace over after {} ms; still listed; handed over: {handed}\n", took.as_millis()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(token: Option<&str>) -> Request<()> {
        let mut b = Request::get("/drain");
        if let Some(t) = token {
            b = b.header(TOKEN_HEADER, t);
        }
        b.body(()).expect("a request")
    }

    #[test]
    fn only_the_pods_drain_token_drains() {
        assert!(authorized(&req(Some("abc123")), "abc123"));
        assert!(!authorized(&req(Some("abc124")), "abc123"), "another token");
        assert!(!authorized(&req(Some("abc")), "abc123"), "a prefix");
        assert!(!authorized(&req(None), "abc123"), "no token");
        assert!(!authorized(&req(Some("")), ""), "no token configured: /drain is off");
    }

    #[test]
    fn sessions_the_grace_did_not_reach_count_as_over_grace() {
        let done = BTreeMap::from([(HandedOver::Ok, 3), (HandedOver::NoState, 1)]);
        let all = tally(6, done.clone());
        assert_eq!(all.get(&HandedOver::OverGrace), Some(&2));
        assert_eq!(all.values().sum::<usize>(), 6, "every session of the table is counted once");
        assert_eq!(tally(4, done.clone()), done, "all done: nothing over the grace");
    }
}
