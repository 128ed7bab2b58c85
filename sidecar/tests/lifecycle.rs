//! A session's life after its state stops changing: an active read-only session is resealed
//! before its cookie expires; an idle one expires, and the app is told (`DELETE <statePath>`).

mod support;
use support::pool_with;

use std::time::{Duration, Instant};

use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{LocalPool, SessionClient, Sig, member_names, wait_for};
use http::Method;

/// Starts a session on a one-pod pool with a 4 s idle timeout by `POST first`, then only reads it
/// (`GET /count`) for twice the cookie's life: its state never changes, its cookie must not die,
/// and every read must see `(count, blob bytes)` of that session. (This client ignores Max-Age and
/// presents an expired cookie, so an expiry would show.) Returns the pool for its metrics.
async fn read_only_for_twice_the_idle_timeout(first: &str, expect: (u64, usize)) -> LocalPool {
    let pool = pool_with(1, &["--cookie-max-age", "4s"], &[]).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    let reply = client.send(|| Some(addr), Method::POST, first).await.expect("reply");
    let session = serde_json::from_slice::<CountReply>(&reply.body).expect("count").session;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reply = client.send(|| Some(addr), Method::GET, "/count").await.expect("reply");
        let read: CountReply = serde_json::from_slice(&reply.body).expect("count");
        let seen = (read.count, read.blob_bytes, read.session.as_str());
        assert_eq!(seen, (expect.0, expect.1, session.as_str()), "after {:?}", started.elapsed());
    }
    assert_eq!(pool.metric("handover_sessions_reset_total").await, 0.0, "no cookie expired");
    assert!(pool.metric("handover_snapshots_total{source=\"refresh\"}").await >= 2.0, "resealed along the way");
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_read_only_session_is_resealed_before_its_cookie_expires() {
    let pool = read_only_for_twice_the_idle_timeout("/incr", (1, 0)).await;
    assert_eq!(pool.metric("handover_sessions_left_total").await, 0.0, "the app was never told it expired");
    assert_eq!(pool.metric("handover_restores_total").await, 0.0, "so nothing had to be restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_read_only_session_whose_state_is_in_no_cookie_is_resealed_too() {
    // Over the 4 KiB response head: the state goes into no cookie, the route alone is set (with a
    // Handover-Warning), and the route alone is resealed.
    let pool = read_only_for_twice_the_idle_timeout("/blob?bytes=6000", (0, 6000)).await;
    assert!(pool.metric("handover_seals_refused_total").await >= 1.0, "the state was over the header budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires_and_the_app_is_told_it_left() {
    let pool = pool_with(1, &["--cookie-max-age", "2s"], &[]).await;
    let addr = pool.pods[0].data();
    let sessions_in_app = || async move {
        // A cookieless request: it makes no session of its own.
        let mut probe = SessionClient::default();
        let reply = probe.send(|| Some(addr), Method::GET, "/stats").await.expect("reply");
        serde_json::from_slice::<serde_json::Value>(&reply.body).expect("stats")["sessions"].as_u64().expect("a number")
    };
    let mut client = SessionClient::default();
    client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    assert_eq!(sessions_in_app().await, 1);
    wait_for("the app to be told the idle session left", Duration::from_secs(15), || async {
        sessions_in_app().await == 0
    })
    .await
    .expect("DELETE <statePath> reached the app");
    assert_eq!(pool.metric("handover_sessions_left_total{reason=\"expired\",result=\"ok\"}").await, 1.0);
    assert_eq!(pool.metric("handover_sessions ").await, 0.0, "gone from the sidecar's table too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_session_was_taken_over_tells_its_app_the_session_left() {
    let pool = pool_with(2, &[], &[]).await;
    let (hung, survivor) = (pool.pods[0].data(), pool.pods[1].data());
    let mut client = SessionClient::default();
    client.send(|| Some(hung), Method::POST, "/incr").await.expect("reply");
    // The owner hangs long enough to leave the registry; its session is taken over meanwhile.
    pool.signal_pod(0, Sig::Stop);
    pool.wait_listed(&[1], Duration::from_secs(15)).await.expect("the hung pod leaves the registry");
    // (Only the survivor is asked: the hung sidecar answers nobody.)
    let (survivor_admin, survivor_name) = (pool.pods[1].admin(), pool.pods[1].name.clone());
    wait_for("the survivor's registry to list itself only", Duration::from_secs(15), || {
        let want = vec![survivor_name.clone()];
        async move { member_names(survivor_admin).await == Some(want) }
    })
    .await
    .expect("the survivor sees the hung pod gone");
    client.disconnect();
    let reply = client.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    assert_eq!(serde_json::from_slice::<CountReply>(&reply.body).expect("count").count, 2, "taken over whole");
    // It wakes up still holding its stale copy; the session's next request through it goes to
    // the new owner, and its app is told to forget the session.
    pool.signal_pod(0, Sig::Cont);
    pool.wait_listed(&[0, 1], Duration::from_secs(15)).await.expect("the pod is back");
    client.disconnect();
    let reply = client.send(|| Some(hung), Method::GET, "/count").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((served.count, served.pod.as_str()), (2, pool.pods[1].name.as_str()), "served by the new owner");
    let mut probe = SessionClient::default();
    let stats = probe.send(|| Some(hung), Method::GET, "/stats").await.expect("reply");
    let held = serde_json::from_slice::<serde_json::Value>(&stats.body).expect("stats")["sessions"].as_u64();
    assert_eq!(held, Some(0), "the woken pod's app no longer holds the stale copy");
    assert_eq!(pool.metric("handover_sessions_left_total{reason=\"moved\",result=\"ok\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_rotates_the_session_id_and_the_old_cookie_no_longer_reaches_the_session() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    for _ in 0..2 {
        client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    }
    // What an attacker who fixated (or copied) the cookie before the login holds.
    let before_login = client.jar.clone();
    let reply = client.send(|| Some(addr), Method::POST, "/login").await.expect("reply");
    let old_id = serde_json::from_slice::<CountReply>(&reply.body).expect("count").session;
    assert!(reply.headers.get("handover-rotate").is_none(), "the request to rotate stays between app and sidecar");
    assert_ne!(client.jar, before_login, "a new cookie");

    let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    let after: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_ne!(after.session, old_id, "a new session id");
    assert_eq!(after.count, 3, "with the session's state");
    assert_eq!(pool.metric("handover_sessions_left_total{reason=\"rotated\",result=\"ok\"}").await, 1.0);

    // The old cookie, replayed: a fresh session, never the rotated one nor the pre-login state.
    let mut attacker = SessionClient::with_jar(before_login);
    let reply = attacker.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    let replayed: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!(replayed.count, 1, "nothing of the session");
    assert!(replayed.session != old_id && replayed.session != after.session, "an id of its own");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"ended\"}").await, 1.0);
    let reply = client.send(|| Some(addr), Method::GET, "/count").await.expect("reply");
    let mine: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((mine.session, mine.count), (after.session, 3), "the rotated session is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_the_app_does_not_come_back_with_an_older_cookie() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    for _ in 0..2 {
        client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    }
    let before_logout = client.jar.clone();
    client.send(|| Some(addr), Method::POST, "/clear").await.expect("reply");
    assert!(client.jar.is_empty(), "logged out: no cookie");
    // The back button, a second tab, a stolen copy: the older cookie is presented again.
    let mut replay = SessionClient::with_jar(before_logout);
    let reply = replay.send(|| Some(addr), Method::GET, "/count").await.expect("reply");
    assert_eq!(serde_json::from_slice::<CountReply>(&reply.body).expect("count").count, 0, "the state is gone");
    assert!(replay.jar.is_empty(), "and the replayed cookie is deleted: {:?}", replay.jar);
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"ended\"}").await, 1.0);
    assert_eq!(pool.metric("handover_restores_total").await, 0.0, "nothing was restored from it");
}
