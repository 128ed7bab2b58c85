//! How a session ends, pool-wide: a session the app ended (an empty pushed state) or rotated away
//! from (`Handover-Rotate`) stays ended when an older cookie of it reaches another pod after its
//! owner died (the owner left a tombstone with the session's successor), and a session past its
//! absolute timeout is refused as expired however active it is. Neither an update nor an end is
//! lost when the owner had forgotten the session (its sidecar restarted) and learned it again
//! from an older cookie.

mod support;
use support::pool_with;

use std::time::{Duration, Instant};

use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{LocalPool, SessionClient, member_names, wait_for};
use http::Method;

fn reply_of(body: &[u8]) -> CountReply {
    serde_json::from_slice(body).expect("a count reply")
}

/// Waits until pod 0's registry lists both pods: it hands its backups (and tombstones) to pod 1.
async fn owner_lists_both(pool: &LocalPool) {
    let (admin, both) = (pool.pods[0].admin(), vec![pool.pods[0].name.clone(), pool.pods[1].name.clone()]);
    wait_for("the owner's registry to list both pods", Duration::from_secs(15), || {
        let both = both.clone();
        async move { member_names(admin).await == Some(both) }
    })
    .await
    .expect("both pods listed");
}

/// Counts twice on pod 0, keeps a copy of the client's cookies, then lets the app `end` the
/// session there (`/clear` or `/login`), kills pod 0 and waits for the survivor alone to be
/// listed. Returns the client and the copy taken before the end.
async fn ended_then_owner_killed(pool: &mut LocalPool, end: &str) -> (SessionClient, SessionClient) {
    let owner = pool.pods[0].data();
    owner_lists_both(pool).await;
    let mut client = SessionClient::default();
    for _ in 0..2 {
        client.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
    }
    let before_end = SessionClient::with_jar(client.jar.clone());
    client.send(|| Some(owner), Method::POST, end).await.expect("reply");
    pool.kill_pod(0).await;
    pool.wait_listed(&[1], Duration::from_secs(10)).await.expect("the registry drops the dead owner");
    client.disconnect();
    (client, before_end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_on_a_pod_that_died_does_not_come_back_on_another_pod() {
    let mut pool = pool_with(2, &[], &[]).await;
    let (client, mut replay) = ended_then_owner_killed(&mut pool, "/clear").await;
    assert!(client.jar.is_empty(), "logged out: no cookie");
    let survivor = pool.pods[1].data();
    // The back button, a second tab, a stolen copy: the older cookie reaches the survivor, which
    // would take the session over from it if the owner had left nothing behind.
    let reply = replay.send(|| Some(survivor), Method::GET, "/count").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 0, "the ended session's state is gone");
    assert!(replay.jar.is_empty(), "and the replayed cookie is deleted: {:?}", replay.jar);
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"ended\"}").await, 1.0);
    assert_eq!(pool.metric("handover_takeovers_total").await, 0.0, "nothing was taken over");
    assert_eq!(pool.metric("handover_restores_total{result=\"ok\"}").await, 0.0, "nothing was restored");
    let log = std::fs::read_to_string(pool.dir.join(format!("{}.sidecar.log", pool.pods[1].name))).expect("log");
    assert!(log.contains("the session ended on another pod"), "the survivor says why:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_session_id_stays_dead_on_another_pod_and_the_new_one_lives_on() {
    let mut pool = pool_with(2, &[], &[]).await;
    let (mut client, mut replay) = ended_then_owner_killed(&mut pool, "/login").await;
    let survivor = pool.pods[1].data();
    // The cookie fixated (or copied) before the login: a fresh session, not the logged-in one.
    let reply = replay.send(|| Some(survivor), Method::POST, "/incr").await.expect("reply");
    let replayed = reply_of(&reply.body);
    assert_eq!(replayed.count, 1, "nothing of the session before the login");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"ended\"}").await, 1.0);
    // The rotated session itself was backed up like any state: taken over whole.
    let reply = client.send(|| Some(survivor), Method::GET, "/count").await.expect("reply");
    let mine = reply_of(&reply.body);
    assert_eq!(mine.count, 2, "the logged-in session goes on");
    assert_ne!(mine.session, replayed.session);
}

/// Counts five times on pod 0, then restarts its sidecar (the app keeps the session): the sidecar
/// has forgotten it. Returns a client holding the cookie of the second count, one holding the
/// newest, and waits for the owner to be ready again.
async fn counted_then_owner_forgot(pool: &mut LocalPool) -> (SessionClient, SessionClient) {
    let owner = pool.pods[0].data();
    owner_lists_both(pool).await;
    let mut client = SessionClient::default();
    let mut second = None;
    for n in 1..=5 {
        client.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
        if n == 2 {
            second = Some(SessionClient::with_jar(client.jar.clone()));
        }
    }
    pool.crash_sidecar(0).await;
    pool.restart_sidecar(0).expect("the sidecar restarts");
    pool.wait_listed(&[0, 1], Duration::from_secs(10)).await.expect("the owner ready again");
    owner_lists_both(pool).await;
    client.disconnect();
    (second.expect("kept"), client)
}

/// Kills pod 0 and waits for the survivor alone to be listed.
async fn owner_killed(pool: &mut LocalPool) {
    pool.kill_pod(0).await;
    pool.wait_listed(&[1], Duration::from_secs(10)).await.expect("the registry drops the dead owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_from_an_older_cookie_after_the_owner_forgot_the_session_survives_its_death() {
    let mut pool = pool_with(2, &[], &[]).await;
    let (mut older, _) = counted_then_owner_forgot(&mut pool).await;
    // A second tab with the cookie of the second count: the owner's app holds the fifth, which
    // this update counts on from.
    let reply = older.send(|| Some(pool.pods[0].data()), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 6);
    assert_eq!(pool.metric("handover_backups_received_total{result=\"older\"}").await, 0.0, "the update backed up");
    owner_killed(&mut pool).await;
    older.disconnect();
    let reply = older.send(|| Some(pool.pods[1].data()), Method::GET, "/count").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 6, "the acknowledged update is taken over, not the state before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_after_the_owner_forgot_it_stays_ended_on_another_pod() {
    let mut pool = pool_with(2, &[], &[]).await;
    let (mut older, mut newest) = counted_then_owner_forgot(&mut pool).await;
    older.send(|| Some(pool.pods[0].data()), Method::POST, "/clear").await.expect("reply");
    assert!(older.jar.is_empty(), "logged out: no cookie");
    owner_killed(&mut pool).await;
    // The newest cookie, from before the end, reaches the survivor.
    let reply = newest.send(|| Some(pool.pods[1].data()), Method::GET, "/count").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 0, "the ended session's state is gone");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"ended\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_absolute_timeout_is_refused_as_expired_however_active() {
    let pool = pool_with(1, &["--session-absolute-timeout", "3s"], &[]).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    let started = Instant::now();
    let first = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    let session = reply_of(&first.body).session;
    let max_ages: Vec<u64> = first
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|line| line.split("Max-Age=").nth(1))
        .filter_map(|rest| rest.split(';').next()?.trim().parse().ok())
        .collect();
    assert!(
        !max_ages.is_empty() && max_ages.iter().all(|&age| age <= 3),
        "cookies capped at the deadline: {max_ages:?}"
    );
    // Active all along (an update every 300 ms, far inside the 12 h idle timeout): the session
    // still ends at its absolute deadline. This client ignores Max-Age, as a replay would: a
    // response sealed in the deadline's own second carries `Max-Age=0` (the cookie expires at the
    // deadline, rightly), which the jar takes as a deletion; the replay keeps the cookie anyway,
    // so that the sidecar is the one to refuse it.
    let fresh = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = client.jar.clone();
        let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
        let now = reply_of(&reply.body);
        if now.session != session {
            break now;
        }
        for (name, value) in held {
            client.jar.entry(name).or_insert(value);
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the session outlived its absolute timeout");
    };
    // (Cookies count in whole unix seconds: the deadline falls within the second before 3 s.)
    assert!(started.elapsed() >= Duration::from_secs(2), "not before the deadline: {:?}", started.elapsed());
    assert_eq!(fresh.count, 1, "a fresh session");
    assert_eq!(pool.metric("handover_sessions_reset_total{reason=\"expired\"}").await, 1.0);
    wait_for("the app to be told the session left", Duration::from_secs(10), || async {
        pool.metric("handover_sessions_left_total{reason=\"expired\",result=\"ok\"}").await >= 1.0
    })
    .await
    .expect("DELETE <statePath> for the expired session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_the_successor_does_not_keep_is_counted_as_not_kept_and_its_gauges_follow_the_store() {
    // Pod 1 keeps at most 3 000 bytes of backups: a state of 4 000 bytes is not kept, and the
    // owner must not count it as kept (a takeover would find nothing).
    let mut pool = pool_with(2, &["--backup-max-bytes", "3000"], &[]).await;
    let owner = pool.pods[0].data();
    owner_lists_both(&pool).await;
    let mut large = SessionClient::default();
    large.send(|| Some(owner), Method::POST, "/blob?bytes=4000").await.expect("reply");
    assert_eq!(pool.metric(r#"handover_backups_sent_total{result="too_large"}"#).await, 1.0);
    assert_eq!(pool.metric(r#"handover_backups_sent_total{result="ok"}"#).await, 0.0, "not counted as kept");
    assert_eq!(pool.metric(r#"handover_backups_received_total{result="too_large"}"#).await, 1.0);
    // A small state is kept; taken over, its backup leaves the store, and the gauges with it.
    let mut small = SessionClient::default();
    small.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
    assert_eq!(pool.metric("handover_backups_kept ").await, 1.0);
    owner_killed(&mut pool).await;
    small.disconnect();
    let reply = small.send(|| Some(pool.pods[1].data()), Method::POST, "/incr").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 2, "taken over from its backup");
    assert_eq!(pool.metric("handover_backups_kept ").await, 0.0, "the gauge follows the store");
    assert_eq!(pool.metric("handover_backup_bytes ").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_in_no_cookie_says_whether_the_successor_kept_it() {
    // Over the 4 KiB response head, a state goes into no cookie: the response says where it is.
    // Pod 1 keeps backups of at most 12 000 bytes: a 6 000-byte state's, not a 14 000-byte one's.
    let pool = pool_with(2, &["--backup-max-bytes", "12000"], &[]).await;
    let owner = pool.pods[0].data();
    owner_lists_both(&pool).await;
    let mut kept = SessionClient::default();
    let reply = kept.send(|| Some(owner), Method::POST, "/blob?bytes=6000").await.expect("reply");
    let warning = reply.warning().expect("a Handover-Warning: the state is in no cookie");
    assert!(warning.ends_with("; kept by the successor's backup only"), "{warning}");
    let mut not_kept = SessionClient::default();
    let reply = not_kept.send(|| Some(owner), Method::POST, "/blob?bytes=14000").await.expect("reply");
    let warning = reply.warning().expect("a Handover-Warning: the state is in no cookie");
    assert!(warning.ends_with("; not saved for failover (the successor's backup: too_large)"), "{warning}");
    assert_eq!(pool.metric(r#"handover_backups_sent_total{result="ok"}"#).await, 1.0);
    assert_eq!(pool.metric(r#"handover_backups_sent_total{result="too_large"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_the_owner_learned_its_session_from_again_is_still_refreshed() {
    // The sidecar restarted (its session table gone) and found the session in its app: the
    // client's cookie is what it stands behind, and an active session's cookie is resealed past
    // half its life as before, though the app pushes nothing new (a read-only page).
    let mut pool = pool_with(1, &["--cookie-max-age", "10s"], &[]).await;
    let pod = pool.pods[0].data();
    let mut client = SessionClient::default();
    client.send(|| Some(pod), Method::POST, "/incr").await.expect("reply");
    // Its times are whole seconds: past half its life 6 s after this at the latest, expired 9 s
    // after at the earliest.
    let sealed_at = tokio::time::Instant::now();
    let cookie = pool.cookie_name();
    let sealed = client.jar.get(&cookie).cloned().expect("the session's cookie");
    pool.crash_sidecar(0).await;
    pool.restart_sidecar(0).expect("the sidecar restarts");
    let admin = pool.pods[0].admin();
    wait_for("the restarted sidecar to be ready", Duration::from_secs(10), || async move {
        handover_lab::localpool::probe(admin, "/ready").await == Some(200)
    })
    .await
    .expect("ready again");
    client.disconnect();
    let reply = client.send(|| Some(pod), Method::GET, "/count").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 1, "the app's copy, checked");
    // Past half the cookie's life, well before its end: resealed on the next request.
    tokio::time::sleep_until(sealed_at + Duration::from_millis(6_200)).await;
    let reply = client.send(|| Some(pod), Method::GET, "/count").await.expect("reply");
    assert_eq!(reply_of(&reply.body).count, 1);
    let resealed = client.jar.get(&cookie).cloned().expect("the session's cookie");
    assert_ne!(resealed, sealed, "the cookie was refreshed: {:?}", reply.headers);
}
