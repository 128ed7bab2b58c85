//! A pod that leaves gracefully hands its sessions over: sessions that send no request while it
//! drains are taken over at their newest state, even in pull mode with a long snapshot interval
//! (where the client's cookie holds an older one). Drained by SIGTERM (the sidecar outside
//! Kubernetes) and by `/drain` with the pod's token (the app containers' `preStop`), the app still
//! running in both, as on a kubelet.

mod support;
use support::exe;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use handover_dataplane::decide::Mode;
use handover_lab::localpool::{CounterSession, LocalPool, PoolOptions, SessionClient};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSIONS: usize = 8;
const INCREMENTS: u64 = 5;
const TOKEN: &str = "test-drain-token";

/// How the pod is told to go.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// SIGTERM to the sidecar; the app is stopped once the sidecar exited.
    Sigterm,
    /// `/drain` with the token (the kubelet's `preStop`), then the pod is killed.
    DrainThenKill,
}

/// `GET /drain` on `admin` with the drain token, as the injected `preStop` hook sends it.
async fn drain(admin: SocketAddr) -> String {
    admin_exchange(
        admin,
        &format!("GET /drain HTTP/1.1\r\nHost: {admin}\r\nHandover-Drain: {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends `request` to `admin` and reads the whole answer.
async fn admin_exchange(admin: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin port");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    answer
}

async fn idle_sessions_go_on_at_their_newest_state(leave: Leave) {
    let mut opts = PoolOptions::new(exe(), 3);
    opts.mode = Mode::Pull;
    // Only a session's first response is sealed: its cookie holds the count 1 for good.
    opts.snapshot_interval = Duration::from_secs(3600);
    opts.drain_grace = Duration::from_millis(1500);
    opts.sidecar_args = vec!["--drain-token".into(), TOKEN.into()];
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let leaving = Mutex::new(vec![pool.pods[0].data()]);
    let mut sessions: Vec<CounterSession> = (0..SESSIONS).map(|_| CounterSession::default()).collect();
    for s in &mut sessions {
        for _ in 0..INCREMENTS {
            s.incr(&leaving).await.expect("increment");
        }
    }
    assert_eq!(
        pool.metric("handover_snapshots_total{source=\"pull\"}").await,
        SESSIONS as f64,
        "one snapshot per session: each cookie holds an older state than the app"
    );

    // Every session idle from here on, while the pod drains and goes.
    match leave {
        Leave::Sigterm => pool.terminate_pod(0).await.expect("drains and exits"),
        Leave::DrainThenKill => {
            let answer = drain(pool.pods[0].admin()).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.contains(&format!("handed over: ok {SESSIONS}")), "{answer}");
            pool.kill_pod(0).await;
        }
    }
    let survivors = pool.running();
    pool.wait_listed(&survivors, Duration::from_secs(10)).await.expect("the drained pod leaves the registry");

    let ready = pool.ready_handle();
    for s in &mut sessions {
        assert_eq!(s.verify(&ready).await.expect("count"), INCREMENTS, "the newest state, not the cookie's");
        assert_eq!(s.lost, 0);
    }
    assert_eq!(
        pool.metric("handover_restores_total{result=\"from_backup\"}").await,
        SESSIONS as f64,
        "each session was restored from the state its drained owner handed over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_of_a_pod_drained_by_sigterm_go_on_at_their_newest_state_in_pull_mode() {
    idle_sessions_go_on_at_their_newest_state(Leave::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_of_a_pod_drained_by_its_prestop_go_on_at_their_newest_state_in_pull_mode() {
    idle_sessions_go_on_at_their_newest_state(Leave::DrainThenKill).await;
}

/// Once `/drain` answered, the pod's sessions belong to their successors: its clients that still
/// reach it (a keep-alive connection the Service's NAT keeps pinned, a peer whose registry lags)
/// are passed on to them, and after its app stopped too — what a native sidecar sees between
/// its app's exit and its own — no request waits for the app or fails. Before, such clients got
/// 503s until the sidecar exited (~25 s on a kubelet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pod_passes_its_sessions_on_to_their_successors_before_and_after_its_app_stops() {
    let mut opts = PoolOptions::new(exe(), 3);
    opts.drain_grace = Duration::from_secs(5);
    opts.sidecar_args = vec!["--drain-token".into(), TOKEN.into()];
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let drained = Mutex::new(vec![pool.pods[0].data()]);
    let peer = Mutex::new(vec![pool.pods[1].data()]);
    let mut sessions: Vec<CounterSession> = (0..SESSIONS).map(|_| CounterSession::default()).collect();
    for s in &mut sessions {
        for _ in 0..INCREMENTS {
            s.incr(&drained).await.expect("increment");
        }
    }

    // Without the token (or with another), nothing drains: refused, counted.
    let admin = pool.pods[0].admin();
    for token in ["", "Handover-Drain: wrong\r\n"] {
        let answer =
            admin_exchange(admin, &format!("GET /drain HTTP/1.1\r\nHost: {admin}\r\n{token}Connection: close\r\n\r\n"))
                .await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
    assert_eq!(pool.metric(r#"handover_bad_requests_total{reason="drain_token"}"#).await, 2.0);
    let answer = drain(admin).await;
    assert!(answer.contains(&format!("handed over: ok {SESSIONS}")), "{answer}");

    // The app still runs: the drained pod serves none of its sessions itself any more.
    for s in &mut sessions {
        let reply = s.client.send(|| Some(pool.pods[0].data()), http::Method::POST, "/incr").await.expect("passed on");
        assert_eq!(reply.status, http::StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        assert!(
            reply.headers.get(http::header::CONNECTION).is_some_and(|v| v == "close"),
            "a draining pod closes keep-alive connections: {:?}",
            reply.headers
        );
        let count: u64 = serde_json::from_slice::<handover_lab::demo_app::CountReply>(&reply.body)
            .expect("the demo app's answer")
            .count;
        assert_eq!(count, INCREMENTS + 1, "the successor holds the newest state");
        s.acked = count;
    }
    let page = handover_lab::localpool::scrape(pool.pods[0].admin()).await.expect("metrics");
    assert_eq!(
        handover_lab::localpool::metric_sum(&page, "handover_forwards_total{reason=\"successor\",result=\"ok\"}"),
        SESSIONS as f64,
        "each request was passed on to the session's successor"
    );

    // The app stops; the sidecar lives on, as a native sidecar does until its own SIGTERM.
    pool.crash_app(0).await;
    for s in &mut sessions {
        s.incr(&drained).await.expect("increment through the drained pod");
        s.incr(&peer).await.expect("increment through a peer");
        assert_eq!(s.errors, 0, "no request failed or waited for the gone app");
        assert_eq!(s.lost, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_drain_hands_on_the_states_a_drained_pod_left_with_the_next() {
    // A rolling update drains one pod after another: the states the first handed to its
    // sessions' successors must not leave with those when they drain in turn.
    let mut opts = PoolOptions::new(exe(), 3);
    opts.mode = Mode::Pull;
    opts.snapshot_interval = Duration::from_secs(3600);
    opts.drain_grace = Duration::from_millis(1500);
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let first = Mutex::new(vec![pool.pods[0].data()]);
    let mut sessions: Vec<CounterSession> = (0..SESSIONS).map(|_| CounterSession::default()).collect();
    for s in &mut sessions {
        for _ in 0..INCREMENTS {
            s.incr(&first).await.expect("increment");
        }
    }
    pool.terminate_pod(0).await.expect("the first drains and exits");
    pool.wait_listed(&[1, 2], Duration::from_secs(10)).await.expect("it leaves the registry");
    // Each session's newest state is with pod 1 or pod 2 now, in a backup only: drain pod 1.
    pool.terminate_pod(1).await.expect("the second drains and exits");
    pool.wait_listed(&[2], Duration::from_secs(10)).await.expect("it leaves the registry");
    let ready = pool.ready_handle();
    for s in &mut sessions {
        assert_eq!(s.verify(&ready).await.expect("count"), INCREMENTS, "the newest state, not the cookie's");
        assert_eq!(s.lost, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_reaches_a_draining_pod_goes_on_to_the_next_member() {
    // The pool's registry lags behind a pod that drains: its peers still back their sessions up
    // to it after its drain passed on what it kept. Those backups must not leave with it. The
    // states are over the header budget: the backups are their only copies outside the app.
    let mut opts = PoolOptions::new(exe(), 3);
    opts.drain_grace = Duration::from_millis(1500);
    opts.sidecar_args = vec!["--drain-token".into(), TOKEN.into()];
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let (owner, draining) = (pool.pods[0].data(), pool.pods[1].admin());
    let kept_by_draining = || async move {
        let page = handover_lab::localpool::scrape(draining).await.expect("metrics");
        handover_lab::localpool::metric_sum(&page, "handover_backups_kept ")
    };
    // Sessions on pod 0 until at least two have pod 1 as their successor (each does with odds
    // of one half).
    let mut sessions = Vec::new();
    while kept_by_draining().await < 2.0 {
        assert!(sessions.len() < 64, "64 sessions and fewer than two backed up to pod 1");
        let mut client = SessionClient::default();
        client.send(|| Some(owner), Method::POST, "/blob?bytes=6000").await.expect("reply");
        sessions.push(client);
    }
    pool.hold_registry(true);
    let answer = drain(draining).await;
    assert!(answer.contains("still listed"), "the registry still lists the drained pod: {answer}");
    for client in &mut sessions {
        let reply = client.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
        assert_eq!(count_of(&reply.body), 1);
    }
    let page = handover_lab::localpool::scrape(draining).await.expect("metrics");
    let refused = handover_lab::localpool::metric_sum(&page, "handover_backups_received_total{result=\"leaving\"}");
    assert_eq!(refused, 2.0, "the two sessions' backups reached the draining pod, which kept neither");

    // The drained pod goes, then the owner dies: the third pod takes every session over.
    pool.kill_pod(1).await;
    pool.kill_pod(0).await;
    pool.hold_registry(false);
    pool.wait_sidecars_see(&[2], Duration::from_secs(10)).await.expect("pod 2 alone is listed");
    let survivor = pool.pods[2].data();
    for client in &mut sessions {
        client.disconnect();
        let reply = client.send(|| Some(survivor), Method::GET, "/count").await.expect("reply");
        assert_eq!(count_of(&reply.body), 1, "the newest state (before: the older one the drain passed on)");
    }
}

fn count_of(body: &[u8]) -> u64 {
    serde_json::from_slice::<handover_lab::demo_app::CountReply>(body).expect("a count").count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_pod_hands_a_session_over_before_passing_on_its_first_request() {
    // A pod drains while the registry lists no other member (the new pod is not listed yet): it
    // hands nothing over and serves on. Once it learns a member, it passes its requests on, the
    // first of them with an older cookie (a browser's parallel request sent before the newest
    // answer came). That member must not take the session over from that cookie: the draining
    // pod's newer acknowledged states go along first.
    let mut opts = PoolOptions::new(exe(), 1);
    opts.drain_grace = Duration::from_secs(20);
    opts.sidecar_args = vec!["--drain-token".into(), TOKEN.into()];
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let draining = pool.pods[0].data();
    let mut client = SessionClient::default();
    for _ in 0..2 {
        client.send(|| Some(draining), Method::POST, "/incr").await.expect("reply");
    }
    let older = client.jar.clone();
    pool.hold_registry(true);
    let newcomer = pool.add_pod().await.expect("a new pod");
    // The preStop hook's call returns once the pod is out of the registry (held here).
    let admin = pool.pods[0].admin();
    let drained = tokio::spawn(drain(admin));
    handover_lab::localpool::wait_for("the drain to begin", Duration::from_secs(10), || async move {
        handover_lab::localpool::probe(admin, "/ready").await == Some(503)
    })
    .await
    .expect("draining");
    for expected in 3..=4 {
        let reply = client.send(|| Some(draining), Method::POST, "/incr").await.expect("reply");
        assert_eq!(count_of(&reply.body), expected, "served by the draining pod, with no one to pass it to");
    }
    pool.hold_registry(false);
    pool.wait_pods_see(&[0], &[newcomer], Duration::from_secs(20)).await.expect("the draining pod sees the newcomer");
    let answer = drained.await.expect("the drain call");
    assert!(answer.contains("200"), "the drain answers: {answer}");
    let mut parallel = SessionClient::with_jar(older);
    let reply = parallel.send(|| Some(draining), Method::POST, "/incr").await.expect("reply");
    let served: handover_lab::demo_app::CountReply = serde_json::from_slice(&reply.body).expect("a count");
    assert_eq!(
        (served.pod.as_str(), served.count),
        (pool.pods[newcomer].name.as_str(), 5),
        "the newcomer goes on from the newest state, not from the older cookie's"
    );
}
