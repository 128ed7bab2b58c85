//! A sidecar says when it cannot reach a peer: after a backup to a peer cut off the network (its
//! packets dropped, as under a default-deny NetworkPolicy or a partition) fails to connect, the
//! sidecar's `handover_peers_reachable` is 0 — what it writes as its pod's
//! `handover.dev/PeersReachable` condition in Kubernetes. And a probe of a peer tells the peer
//! from another pod that got its address, which a dead peer's sessions are never forwarded to.

mod support;
use support::exe;

use std::time::Duration;

use handover_lab::localpool::{LocalPool, PoolOptions, SessionClient, metric_sum, scrape};
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_cannot_reach_a_peer_reports_it() {
    let pool = LocalPool::start(PoolOptions::new(exe(), 2)).await.expect("pool starts");
    let reporter = pool.pods[0].data();
    pool.wait_sidecars_see(&[0, 1], Duration::from_secs(10)).await.expect("each sidecar lists the other");
    let page = scrape(pool.pods[0].admin()).await.expect("metrics");
    assert_eq!(metric_sum(&page, "handover_peers_reachable "), 1.0, "nothing failed yet");
    if let Err(why) = pool.cut_off(1) {
        support::skip_or_fail_in_ci(&format!("cannot cut a pod off the network here, the test did NOT run: {why}"));
        return;
    }
    // A new session on pod 0: its state is backed up to its successor, the cut-off pod 1, whose
    // packets are dropped. The response still goes out (the cookie holds the state).
    let mut client = SessionClient::default();
    let reply = client.send(|| Some(reporter), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK);
    let page = scrape(pool.pods[0].admin()).await.expect("metrics");
    assert_eq!(metric_sum(&page, "handover_peers_reachable "), 0.0, "{page}");
    assert!(metric_sum(&page, "handover_backups_sent_total{result=\"failed\"}") >= 1.0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_tells_the_peer_from_another_pod_at_its_address() {
    use handover_dataplane::peer_probe::{Liveness, probe};
    let pool = LocalPool::start(PoolOptions::new(exe(), 2)).await.expect("pool starts");
    let (admin, timeout) = (pool.pods[0].admin(), Duration::from_secs(5));
    assert_eq!(probe(admin, &pool.pods[0].uid, timeout).await, Liveness::Alive, "the pod itself");
    // As if pod 1 were gone and pod 0 had its address now.
    assert_eq!(probe(admin, &pool.pods[1].uid, timeout).await, Liveness::Dead("another pod"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_session_is_taken_over_not_forwarded_to_a_stranger_at_its_address() {
    // The registry lags behind the owner's death (held here), and a new pod of another
    // Deployment got the owner's address meanwhile: the session's next request must not go there
    // (with its cookies, its body), but be taken over by the pool.
    let mut pool = LocalPool::start(PoolOptions::new(exe(), 2)).await.expect("pool starts");
    pool.wait_sidecars_see(&[0, 1], Duration::from_secs(10)).await.expect("each sidecar lists the other");
    let (survivor, owner) = (pool.pods[0].data(), pool.pods[1].data());
    let mut client = SessionClient::default();
    for _ in 0..2 {
        let reply = client.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
        assert_eq!(reply.status, StatusCode::OK);
    }
    pool.hold_registry(true);
    pool.kill_pod(1).await;
    pool.start_stranger(1).await.expect("a stranger at the owner's address");
    client.disconnect();
    let reply = client.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK);
    let count: handover_lab::demo_app::CountReply = serde_json::from_slice(&reply.body).expect("a count");
    assert_eq!(count.pod, pool.pods[0].name, "served by the pool's survivor, not the stranger at the owner's address");
    assert_eq!(count.count, 3, "the session went on");
    let page = scrape(pool.pods[0].admin()).await.expect("metrics");
    assert_eq!(metric_sum(&page, "handover_peer_checks_total{result=\"not_the_peer\"}"), 1.0, "{page}");
}
