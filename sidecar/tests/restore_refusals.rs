//! What the sidecar does when the app will not take a session's state back: a 4xx is the app's
//! verdict ("this state is not for me": an older or newer release's format, a state it judges
//! invalid), so the state is dropped and the session starts afresh, counted and logged; a 5xx or a
//! timeout may pass, so it is retried a bounded number of times.

mod support;
use support::pool_with;

use std::time::Duration;

use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{LocalPool, SessionClient};
use http::{Method, StatusCode, header};

fn reply_of(body: &[u8]) -> CountReply {
    serde_json::from_slice(body).expect("a count reply")
}

/// Increments `n` times on pod 0, kills it, and returns the client (pointed at the survivor) with
/// the session id it had.
async fn session_orphaned_by_a_dead_pod(pool: &mut LocalPool, n: u64) -> (SessionClient, String) {
    let first = pool.pods[0].data();
    let mut client = SessionClient::default();
    let mut session = String::new();
    for _ in 0..n {
        let reply = client.send(|| Some(first), Method::POST, "/incr").await.expect("reply");
        session = reply_of(&reply.body).session;
    }
    pool.kill_pod(0).await;
    pool.wait_listed(&[1], Duration::from_secs(10)).await.expect("the registry drops the dead pod");
    client.disconnect();
    (client, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_the_app_refuses_starts_a_fresh_session_instead_of_a_502_loop() {
    // The survivor's app refuses every restore with 422: a release that cannot read this state.
    let mut pool = pool_with(2, &[], &["--refuse-restores", "1000", "--refuse-restores-status", "422"]).await;
    let (mut client, old_session) = session_orphaned_by_a_dead_pod(&mut pool, 5).await;
    let survivor = pool.pods[1].data();
    let name = pool.cookie_name();

    let reply = client.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let fresh = reply_of(&reply.body);
    assert_eq!(fresh.count, 1, "a fresh session: the refused state is gone");
    assert_ne!(fresh.session, old_session, "with an id of its own");
    assert!(client.jar.contains_key(&name), "the new session's cookie replaced the old one");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"refused_by_app\"}").await, 1.0);
    assert_eq!(pool.metric("handover_restores_total{result=\"refused\"}").await, 1.0);
    assert_eq!(pool.metric("handover_restores_total{result=\"retried\"}").await, 0.0, "a 4xx is never retried");
    let log = std::fs::read_to_string(pool.dir.join(format!("{}.sidecar.log", pool.pods[1].name))).expect("log");
    assert!(
        log.lines().any(|l| l.contains("refused this session's state") && l.contains(&old_session)),
        "the log names the lost session:\n{log}"
    );

    // No loop: the next request is the new session's, served as usual.
    let reply = client.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    assert_eq!((reply.status, reply_of(&reply.body).count), (StatusCode::OK, 2));
    assert_eq!(pool.metric("handover_restores_total{result=\"refused\"}").await, 1.0, "nothing restored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_state_on_a_read_only_request_deletes_the_cookie() {
    let mut pool = pool_with(2, &[], &["--refuse-restores", "1000", "--refuse-restores-status", "400"]).await;
    let (mut client, _) = session_orphaned_by_a_dead_pod(&mut pool, 2).await;
    let survivor = pool.pods[1].data();
    let reply = client.send(|| Some(survivor), Method::GET, "/count").await.expect("reply");
    assert_eq!((reply.status, reply_of(&reply.body).count), (StatusCode::OK, 0), "served as a fresh session");
    let set: Vec<&str> = reply.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
    let name = pool.cookie_name();
    assert_eq!(set.len(), 1, "the route (the small state inside) deleted: {set:?}");
    assert!(set[0].starts_with(&format!("{name}=;")) && set[0].contains("Max-Age=0"), "{set:?}");
    assert!(client.jar.is_empty(), "the refused cookie is gone: {:?}", client.jar);
    // Its next request carries no cookie: nothing is restored, nothing refused again.
    client.send(|| Some(survivor), Method::GET, "/count").await.expect("reply");
    assert_eq!(pool.metric("handover_restores_total{result=\"refused\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_once_is_retried_and_the_client_never_sees_it() {
    // Every app fails its first restore with 503, then accepts.
    let mut pool = pool_with(2, &[], &["--refuse-restores", "1", "--refuse-restores-status", "503"]).await;
    let (mut client, session) = session_orphaned_by_a_dead_pod(&mut pool, 4).await;
    let reply = client.send(|| Some(pool.pods[1].data()), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let served = reply_of(&reply.body);
    assert_eq!((served.count, served.session.as_str()), (5, session.as_str()), "the session went on, whole");
    assert_eq!(pool.metric("handover_restores_total{result=\"retried\"}").await, 1.0);
    assert_eq!(pool.metric("handover_restores_total{result=\"ok\"}").await, 1.0);
    assert_eq!(pool.metric("handover_sessions_reset_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cookie_is_counted_as_a_reset() {
    let pool = pool_with(1, &["--cookie-max-age", "1s"], &[]).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    // Past the cookie's expiry (whole seconds, so up to 2 s); this client ignores Max-Age and
    // presents it anyway, as a clock-skewed or replaying client would.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 1, "a fresh session");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"expired\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_names_the_state_format_so_a_release_that_cannot_read_it_refuses_it() {
    // Every pod's app writes counter-v2 but reads only counter-v1: what a rollback to a release
    // that cannot read the newer release's states looks like at a takeover.
    let mut pool = pool_with(2, &[], &["--state-format", "counter-v2", "--reads-formats", "counter-v1"]).await;
    let (mut client, old_session) = session_orphaned_by_a_dead_pod(&mut pool, 3).await;
    let survivor = pool.pods[1].data();
    let reply = client.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply_of(&reply.body).count, 1, "a fresh session: the app refused the counter-v2 state");
    assert!(reply.headers.get("handover-state-format").is_none(), "the declaration stays between app and sidecar");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"refused_by_app\"}").await, 1.0);
    let log = std::fs::read_to_string(pool.dir.join(format!("{}.sidecar.log", pool.pods[1].name))).expect("log");
    assert!(
        log.lines().any(|l| l.contains(&old_session) && l.contains("state format counter-v2 is not read")),
        "the sealed format reached the app's PUT, and its reason the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_reads_the_older_format_restores_it() {
    // Writes counter-v2, still reads counter-v1 and counter-v2: the usual rolling update.
    let mut pool =
        pool_with(2, &[], &["--state-format", "counter-v2", "--reads-formats", "counter-v1,counter-v2"]).await;
    let (mut client, session) = session_orphaned_by_a_dead_pod(&mut pool, 3).await;
    let survivor = pool.pods[1].data();
    let reply = client.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    let after = reply_of(&reply.body);
    assert_eq!((after.count, after.session), (4, session), "taken over whole");
    assert_eq!(pool.metric("handover_sessions_reset_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_the_app_cannot_read_goes_to_a_pod_whose_app_can() {
    // A rollback half done: pods 0 and 2 run the new release (writes counter-v2, reads both), pod 1
    // is back on the old one (reads counter-v1 only). Sessions of the new release lose their pod.
    const NEW: [&str; 4] = ["--state-format", "counter-v2", "--reads-formats", "counter-v1,counter-v2"];
    const SESSIONS: usize = 12;
    let mut pool = pool_with(3, &[], &NEW).await;
    pool.crash_app(1).await;
    pool.set_app_args(["--state-format", "counter-v1"].iter().map(|s| s.to_string()).collect());
    pool.restart_app(1).expect("the old release starts");
    let old = pool.pods[1].admin();
    handover_lab::localpool::wait_for("the old release's app to answer", Duration::from_secs(10), || async move {
        handover_lab::localpool::probe(old, "/ready").await == Some(200)
    })
    .await
    .expect("pod 1 ready again");

    let new_pod = pool.pods[0].data();
    let mut clients: Vec<(SessionClient, String)> = Vec::new();
    for _ in 0..SESSIONS {
        let mut client = SessionClient::default();
        let mut session = String::new();
        for _ in 0..3 {
            let reply = client.send(|| Some(new_pod), Method::POST, "/incr").await.expect("reply");
            session = reply_of(&reply.body).session;
        }
        client.disconnect();
        clients.push((client, session));
    }
    pool.kill_pod(0).await;
    pool.wait_listed(&[1, 2], Duration::from_secs(10)).await.expect("the registry drops the dead pod");

    // Every session goes on through the old release's pod: those it would take over itself go to
    // pod 2, whose app reads counter-v2 (about half of them: the others' successor is pod 2).
    let old_pod = pool.pods[1].data();
    for (client, session) in &mut clients {
        let reply = client.send(|| Some(old_pod), Method::POST, "/incr").await.expect("reply");
        assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        let after = reply_of(&reply.body);
        assert_eq!((after.count, &after.session), (4, &*session), "taken over whole, by a pod that reads it");
    }
    assert_eq!(pool.metric("handover_sessions_reset_total").await, 0.0, "no session started over");
    let page = handover_lab::localpool::scrape(pool.pods[1].admin()).await.expect("metrics");
    assert!(
        handover_lab::localpool::metric_sum(&page, "handover_forwards_total{reason=\"reader\",result=\"ok\"}") >= 1.0,
        "the old release's pod passed takeovers it cannot read on to a reader:\n{page}"
    );
}
