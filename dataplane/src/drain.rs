//! `/drain` on the admin port: the pod is on its way out, and its app still runs.
//!
//! The operator injects a `preStop` hook into every app container of the pool's pods: an
//! `httpGet` of `/drain` on the sidecar's admin port, carrying the pod template's drain token
//! (`Handover-Drain` header). The kubelet calls it when the pod is deleted, before it sends the
//! app its SIGTERM, and waits for the answer. So the drain starts while the app can still serve:
//!
//! 1. readiness fails and every session's next response gets a fresh snapshot (pull mode too),
//!    exactly as on the sidecar's own SIGTERM ([`Proxy::start_draining`]);
//! 2. the answer waits until this pod has left the pool's registry (the operator drops a
//!    terminating pod at once; the sidecar's watch sees it), at most `within` (the drain grace):
//!    from then on peers send this pod's sessions to their successors, and the app is stopped
//!    only after that.
//!
//! A native sidecar is stopped after the app: its own SIGTERM then finds the drain done, and a
//! request that still arrives does not wait for an app that is gone (the proxy's app wait ends at
//! once while draining).
//!
//! The token keeps other clients of the admin port (peers, scrapers) from draining a pod; an
//! empty token turns `/drain` off (the sidecar outside Kubernetes is drained by SIGTERM).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::proxy::Proxy;
use crate::upstream::Body;

/// Request header carrying the drain token.
pub const TOKEN_HEADER: &str = "handover-drain";

/// How often the registry is looked at while waiting.
const POLL: Duration = Duration::from_millis(100);

fn text(status: StatusCode, body: String) -> http::Response<Body> {
    let mut resp = http::Response::new(Full::new(bytes::Bytes::from(body)).map_err(|never| match never {}).boxed());
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

/// Handles `/drain`: starts draining, answers once this pod has left the registry (or after
/// `within`).
pub async fn handle<B>(
    proxy: Arc<Proxy>,
    req: Request<B>,
    token: &str,
    me: &str,
    within: Duration,
) -> http::Response<Body> {
    if !authorized(&req, token) {
        tracing::warn!("/drain without the drain token: refused");
        return text(StatusCode::FORBIDDEN, "handover: /drain needs the pod's drain token\n".to_owned());
    }
    let started = tokio::time::Instant::now();
    if proxy.draining_since().is_none() {
        tracing::info!(?within, "/drain (the app's preStop): readiness fails now; serving on while the pool learns");
    }
    proxy.start_draining();
    let left = tokio::time::timeout(within, async {
        while listed(&proxy, me) {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .is_ok();
    let took = started.elapsed();
    if left {
        tracing::info!(?took, "drained: this pod has left the pool's registry; the app may stop");
        text(StatusCode::OK, format!("drained: left the registry after {} ms\n", took.as_millis()))
    } else {
        tracing::warn!(
            ?took,
            "drain: still listed in the registry at the end of the drain grace; the app stops anyway"
        );
        text(StatusCode::OK, format!("drain grace over after {} ms; still listed\n", took.as_millis()))
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
}
