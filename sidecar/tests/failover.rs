//! The data path under faults: a local pool of real sidecar and app processes on real TCP, with
//! real signals. Every test runs client sessions while the fault happens, then checks that each
//! session's state equals what its client was acknowledged (no acknowledged update lost).

mod support;
use support::exe;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_dataplane::cookie;
use handover_dataplane::decide;
use handover_dataplane::keys::KeyRing;
use handover_dataplane::registry::Member;
use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{CounterSession, Load, LocalPool, POOL, PoolOptions, SessionClient, Sig, wait_for};
use http::{Method, StatusCode};

const SESSIONS: usize = 6;

async fn pool(pods: usize) -> LocalPool {
    LocalPool::start(PoolOptions::new(exe(), pods)).await.expect("pool starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_pod_under_load_loses_no_acknowledged_update() {
    let mut pool = pool(3).await;
    let load = Load::start(pool.ready_handle(), SESSIONS);
    load.progress(200, "warm-up").await.expect("sessions make progress");
    // A witness session, so that the killed pod surely owns one.
    let ready = pool.ready_handle();
    let mut witness = CounterSession::default();
    witness.incr(&ready).await.expect("increment");
    let victim = pool.pods.iter().position(|p| Some(p.data()) == witness.client.connected_to()).expect("connected");
    pool.kill_pod(victim).await;
    witness.incr(&ready).await.expect("increment after SIGKILL");
    load.progress(500, "sessions to go on after SIGKILL").await.expect("sessions make progress");
    load.stop_and_verify().await.expect("every session went on and lost nothing");
    assert_eq!(witness.verify(&ready).await.expect("count"), 2);
    assert!(pool.metric("handover_takeovers_total").await >= 1.0, "the witness session was taken over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_pod_is_routed_around_and_does_not_fork_sessions_when_it_wakes() {
    let pool = pool(3).await;
    let load = Load::start(pool.ready_handle(), SESSIONS);
    load.progress(200, "warm-up").await.expect("sessions make progress");
    // Witnesses: sessions the hung pod owns, taken over while it hangs, and sent to it again once
    // it woke. (The load's clients keep the connections they moved to while it hung: none of
    // them reaches the woken pod, whose stale copies could go unseen.)
    let hung = Mutex::new(vec![pool.pods[0].data()]);
    let others = Mutex::new(vec![pool.pods[1].data(), pool.pods[2].data()]);
    let mut witnesses: Vec<CounterSession> = (0..SESSIONS).map(|_| CounterSession::default()).collect();
    for w in &mut witnesses {
        for _ in 0..2 {
            w.incr(&hung).await.expect("increment on the pod about to hang");
        }
    }
    pool.signal_pod(0, Sig::Stop);
    pool.wait_listed(&[1, 2], Duration::from_secs(10)).await.expect("the hung pod leaves the registry");
    load.progress(500, "sessions to go on while a pod hangs").await.expect("sessions make progress");
    for w in &mut witnesses {
        w.client.disconnect();
        assert_eq!(w.incr(&others).await.expect("increment while the owner hangs"), 3, "taken over whole");
    }
    pool.signal_pod(0, Sig::Cont);
    pool.wait_listed(&[0, 1, 2], Duration::from_secs(10)).await.expect("the woken pod rejoins");
    load.progress(500, "sessions to go on after the pod woke").await.expect("sessions make progress");
    for w in &mut witnesses {
        // The woken pod holds the session's older copy: the cookie names a newer one elsewhere.
        w.client.disconnect();
        assert_eq!(w.incr(&hung).await.expect("increment through the woken pod"), 4, "not its stale copy");
        w.client.disconnect();
        assert_eq!(w.verify(&others).await.expect("count"), 4, "one copy of the session");
        assert_eq!(w.lost, 0);
    }
    load.stop_and_verify().await.expect("every session went on and lost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_crash_with_the_sidecar_alive_is_restored_from_cookies() {
    let mut pool = pool(2).await;
    // Every session on the pod whose app crashes (picked at random, all 6 landed on the other pod
    // 1 run in 64, and nothing was left to restore).
    let crashing = Arc::new(std::sync::Mutex::new(vec![pool.pods[0].data()]));
    let load = Load::start(crashing, SESSIONS);
    load.progress(200, "warm-up").await.expect("sessions make progress");
    pool.crash_app(0).await;
    pool.restart_app(0).expect("app restarts");
    pool.wait_listed(&[0, 1], Duration::from_secs(10)).await.expect("pod ready again");
    load.progress(500, "sessions to go on after the app crash").await.expect("sessions make progress");
    load.stop_and_verify().await.expect("every session went on and lost nothing");
    assert!(pool.metric("handover_restores_total{result=\"ok\"}").await >= 1.0, "sessions were restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_app_is_answered_504_at_the_response_timeout_and_its_session_goes_on() {
    let pool = support::pool_with(1, &["--response-timeout", "500ms"], &[]).await;
    let addr = pool.pods[0].data();
    let mut client = SessionClient::default();
    let count = |reply: &handover_lab::localpool::Reply| {
        serde_json::from_slice::<CountReply>(&reply.body).expect("a count reply").count
    };
    let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    assert_eq!((reply.status, count(&reply)), (StatusCode::OK, 1));
    // The app hangs (SIGSTOP): its socket still takes the request, nothing answers it.
    pool.signal_app(0, Sig::Stop);
    let asked = std::time::Instant::now();
    let reply = client.send(|| Some(addr), Method::GET, "/count").await.expect("the sidecar answers");
    let waited = asked.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", String::from_utf8_lossy(&reply.body));
    assert!(waited >= Duration::from_millis(500), "answered before the response timeout: {waited:?}");
    assert!(String::from_utf8_lossy(&reply.body).contains("did not answer within 500ms"));
    assert_eq!(pool.metric("handover_bad_requests_total{reason=\"app_timeout\"}").await, 1.0);
    // Awake again: the session goes on, whole, at its app.
    pool.signal_app(0, Sig::Cont);
    let reply = client.send(|| Some(addr), Method::GET, "/count").await.expect("reply");
    assert_eq!((reply.status, count(&reply)), (StatusCode::OK, 1));
    assert_eq!(pool.metric("handover_sessions_reset_total").await, 0.0, "nothing was reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_crash_with_the_app_alive_loses_nothing() {
    let mut pool = pool(3).await;
    let load = Load::start(pool.ready_handle(), SESSIONS);
    load.progress(200, "warm-up").await.expect("sessions make progress");
    pool.crash_sidecar(0).await;
    load.progress(300, "sessions to go on without the sidecar").await.expect("sessions make progress");
    pool.restart_sidecar(0).expect("sidecar restarts");
    pool.wait_listed(&[0, 1, 2], Duration::from_secs(10)).await.expect("pod ready again");
    load.progress(500, "sessions to go on after the sidecar restarted").await.expect("sessions make progress");
    load.stop_and_verify().await.expect("every session went on and lost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_without_loss_even_in_pull_mode() {
    let mut opts = PoolOptions::new(exe(), 3);
    opts.mode = handover_dataplane::decide::Mode::Pull;
    opts.snapshot_interval = Duration::from_secs(3600); // only the drain's fresh snapshots save state
    opts.drain_grace = Duration::from_millis(800);
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let load = Load::start(pool.ready_handle(), SESSIONS);
    load.progress(200, "warm-up").await.expect("sessions make progress");
    pool.terminate_pod(0).await.expect("drains and exits");
    load.progress(500, "sessions to go on after the graceful shutdown").await.expect("sessions make progress");
    load.stop_and_verify().await.expect("every session went on and lost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_mid_run_drops_no_session() {
    let pool = pool(2).await;
    let load = Load::start(pool.ready_handle(), SESSIONS);
    load.progress(200, "warm-up").await.expect("sessions make progress");
    pool.rotate_keys().expect("rotates");
    let keys = std::fs::read_to_string(&pool.key_file).expect("key file");
    let newest = KeyRing::parse(keys.lines().next().expect("a key")).expect("valid key");
    // Sidecars poll the key file each second: wait until a fresh cookie opens with the new key alone.
    let ready = pool.ready_handle();
    let name = pool.cookie_name();
    let probe = Arc::new(tokio::sync::Mutex::new(CounterSession::default()));
    wait_for("cookies sealed with the new key", Duration::from_secs(10), || {
        let (probe, ready, newest, name) = (Arc::clone(&probe), Arc::clone(&ready), newest.clone(), name.clone());
        async move {
            let mut probe = probe.lock().await;
            probe.incr(&ready).await.is_ok() && cookie::open_route(&probe.client.jar[&name], POOL, &newest, 0).is_ok()
        }
    })
    .await
    .expect("rotation takes effect");
    load.progress(500, "sessions to go on across the rotation").await.expect("sessions make progress");
    load.stop_and_verify().await.expect("every session went on and lost nothing");
    assert_eq!(pool.metric("handover_cookie_rejects_total").await, 0.0, "no cookie was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_session_after_owner_death_never_fork_it() {
    let mut pool = pool(4).await;
    let ready = pool.ready_handle();
    let mut s = CounterSession::default();
    for _ in 0..10 {
        s.incr(&ready).await.expect("increment");
    }
    let owner = pool.pods.iter().position(|p| Some(p.data()) == s.client.connected_to()).expect("connected");
    pool.kill_pod(owner).await;
    let survivors = pool.running();
    pool.wait_listed(&survivors, Duration::from_secs(10)).await.expect("the dead pod leaves the registry");
    pool.wait_sidecars_see(&survivors, Duration::from_secs(10)).await.expect("every sidecar has the same view");

    // Every survivor gets the same old cookie at the same time, several times over.
    let mut tasks = Vec::new();
    for _round in 0..3 {
        for &i in &survivors {
            let addr = pool.pods[i].data();
            let mut client = SessionClient::with_jar(s.client.jar.clone());
            tasks.push(tokio::spawn(async move {
                let reply = client.send(|| Some(addr), Method::POST, "/incr").await?;
                if reply.status != StatusCode::OK {
                    return Err(format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body)));
                }
                let count = serde_json::from_slice::<CountReply>(&reply.body).map_err(|e| e.to_string())?.count;
                Ok::<_, String>((count, client))
            }));
        }
    }
    let mut counts = Vec::new();
    let mut newest: Option<SessionClient> = None;
    for t in tasks {
        let (count, client) = t.await.expect("task").expect("increment acknowledged");
        if counts.iter().all(|c| *c < count) {
            newest = Some(client);
        }
        counts.push(count);
    }
    counts.sort();
    let expected: Vec<u64> = (s.acked + 1..=s.acked + counts.len() as u64).collect();
    assert_eq!(counts, expected, "each increment applied once, to one copy of the session");
    let mut last = CounterSession {
        client: newest.expect("some client"),
        acked: *expected.last().expect("some"),
        ..CounterSession::default()
    };
    assert_eq!(last.verify(&ready).await.expect("count"), *expected.last().expect("some"));
}

/// Sessions of one pod whose app closes idle connections after 300 ms; the app reports its
/// instance id (`Handover-Instance`) or not.
async fn idle_closing_pool(report_instance: bool) -> LocalPool {
    let mut opts = PoolOptions::new(exe(), 1);
    opts.app_args = ["--idle-timeout", "300ms", "--report-instance", if report_instance { "true" } else { "false" }]
        .map(String::from)
        .to_vec();
    LocalPool::start(opts).await.expect("pool starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_closing_idle_connections_is_not_taken_for_a_restart_when_it_reports_its_instance() {
    for report_instance in [true, false] {
        let pool = idle_closing_pool(report_instance).await;
        let ready = pool.ready_handle();
        let mut sessions: Vec<CounterSession> = (0..SESSIONS).map(|_| CounterSession::default()).collect();
        for s in &mut sessions {
            s.incr(&ready).await.expect("increment");
            s.client.disconnect();
        }
        assert_eq!(pool.metric("handover_sessions ").await, SESSIONS as f64);
        // The app closes every idle connection, the sidecar's watcher's too.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let kept = pool.metric("handover_sessions ").await;
        if report_instance {
            assert_eq!(kept, SESSIONS as f64, "the same instance id: the table is kept");
        } else {
            assert_eq!(kept, 0.0, "no instance id: any closed connection forgets the sessions (checked next)");
        }
        for s in &mut sessions {
            assert_eq!(s.incr(&ready).await.expect("increment after the idle closes"), 2);
        }
        assert_eq!(pool.metric("handover_app_restarts_total").await, 0.0);
    }
}

/// A burst of new connections at a busy app (a dead pod's clients arriving, an ingress reloaded):
/// its queue of connections not yet accepted fills, the kernel drops the SYNs past it, and the
/// sidecar's connects time out. The app lost nothing: the sessions it holds stay known (none is
/// checked with the app again), the pod stays ready for a moment's full queue (only an app stuck
/// for `UNRESPONSIVE_BEFORE_UNREADY` fails readiness), and the requests of the burst wait for it and
/// go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_app_whose_accept_queue_is_full_is_not_taken_for_a_restart() {
    const SESSIONS: usize = 8;
    // A queue of one connection: with the app stopped, the sidecar's second new connection to it
    // finds the queue full. The burst's requests wait for the app for as long as the test needs.
    let pool = support::pool_with(1, &["--app-wait", "60s"], &["--listen-backlog", "0"]).await;
    let (addr, admin) = (pool.pods[0].data(), pool.pods[0].admin());
    let count = |reply: &handover_lab::localpool::Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&reply.body));
        serde_json::from_slice::<CountReply>(&reply.body).expect("a count reply").count
    };
    let mut clients: Vec<SessionClient> = (0..SESSIONS).map(|_| SessionClient::default()).collect();
    for client in &mut clients {
        let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
        assert_eq!(count(&reply), 1);
    }
    assert_eq!(pool.metric("handover_sessions ").await, SESSIONS as f64);
    // (A sidecar may find the app refusing connections before it has started.)
    let refused = "handover_app_connect_failures_total{reason=\"refused\"}";
    let refused_before = pool.metric(refused).await;

    // Half the sessions at once at the stopped app: one request takes the idle app connection,
    // one the queue's place, and the others' connects time out.
    pool.signal_app(0, Sig::Stop);
    let burst: Vec<_> = clients
        .drain(..SESSIONS / 2)
        .map(|mut client| {
            client.set_timeout(Duration::from_secs(60));
            tokio::spawn(async move { client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply") })
        })
        .collect();
    let timeouts = "handover_app_connect_failures_total{reason=\"timeout\"}";
    wait_for("a connect to the app to time out", Duration::from_secs(10), || async {
        pool.metric(timeouts).await >= 1.0
    })
    .await
    .expect("the queue is full");
    let ready = || handover_lab::localpool::probe(admin, "/ready");
    assert_eq!(ready().await, Some(200), "a moment's full accept queue leaves the pod ready");
    wait_for("an app stuck that long to fail readiness", Duration::from_secs(30), || async {
        ready().await == Some(503)
    })
    .await
    .expect("not ready once UNRESPONSIVE_BEFORE_UNREADY passed");

    pool.signal_app(0, Sig::Cont);
    for request in burst {
        assert_eq!(count(&request.await.expect("the request's task")), 2, "the burst's requests went on");
    }
    assert_eq!(pool.metric("handover_sessions ").await, SESSIONS as f64, "the sessions the app holds are still known");
    assert_eq!(pool.metric("handover_app_restarts_total").await, 0.0, "the same instance");
    assert_eq!(pool.metric(refused).await, refused_before, "no connection refused: the app was there all along");
    for client in &mut clients {
        let reply = client.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
        assert_eq!(count(&reply), 2);
    }
    assert_eq!(ready().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_restarted_at_once_never_serves_a_session_empty() {
    for report_instance in [true, false] {
        let mut opts = PoolOptions::new(exe(), 1);
        opts.app_args = vec!["--report-instance".into(), report_instance.to_string()];
        let mut pool = LocalPool::start(opts).await.expect("pool starts");
        let ready = pool.ready_handle();
        let mut sessions: Vec<CounterSession> = (0..SESSIONS).map(|_| CounterSession::default()).collect();
        for round in 1..=5u64 {
            for s in &mut sessions {
                assert_eq!(s.incr(&ready).await.expect("increment"), round);
            }
            // SIGKILL, and a new app started the moment the old one is reaped (a few ms, well
            // within 50 ms; not asserted: tests never assert on wall-clock speed).
            pool.crash_app(0).await;
            pool.restart_app(0).expect("the app starts again");
        }
        for s in &mut sessions {
            assert_eq!(s.verify(&ready).await.expect("count"), 5, "no session served empty after a restart");
            assert_eq!(s.lost, 0);
        }
    }
}

/// `--inline-state-bytes`: a small state travels inside the routing cookie (no state chunk), a
/// large one in chunks and back again (the chunks deleted); a takeover after the owner's SIGKILL
/// opens the state in the route — from the client's cookie alone (backups off), or from the
/// successor's backup, whose route carries it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_inside_the_routing_cookie_survives_the_owners_sigkill() {
    for backup in ["off", "successor"] {
        let mut pool = support::pool_with(3, &["--inline-state-bytes", "512", "--backup", backup], &[]).await;
        let (name, ready) = (pool.cookie_name(), pool.ready_handle());
        let chunk = format!("{name}.0");
        let mut s = CounterSession::default();
        let holds = |s: &CounterSession| (s.client.jar.contains_key(&name), s.client.jar.contains_key(&chunk));
        assert_eq!(s.incr(&ready).await.expect("increment"), 1);
        assert_eq!(holds(&s), (true, false), "{backup}: a small state is in the route: {:?}", s.client.jar.keys());
        let owner = s.client.connected_to().expect("connected");
        let blob = |bytes: usize| format!("/blob?bytes={bytes}");
        let reply = s.client.send(|| Some(owner), Method::POST, &blob(3_000)).await.expect("a large state");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(holds(&s), (true, true), "{backup}: a large state is in chunks");
        let reply = s.client.send(|| Some(owner), Method::POST, &blob(0)).await.expect("a small state again");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(holds(&s), (true, false), "{backup}: the chunks are deleted");
        assert_eq!(s.incr(&ready).await.expect("increment"), 2);

        let victim = pool.pods.iter().position(|p| p.data() == owner).expect("the owner is a pod");
        pool.kill_pod(victim).await;
        assert_eq!(s.incr(&ready).await.expect("increment after SIGKILL"), 3, "{backup}: taken over");
        assert_eq!(holds(&s), (true, false), "{backup}: the new owner keeps it in the route");
        assert_eq!(s.verify(&ready).await.expect("count"), 3);
        assert_eq!(s.lost, 0);
        assert_eq!(pool.metric("handover_takeovers_total").await, 1.0, "{backup}: the session was taken over, once");
    }
}

/// A pod joining makes registries disagree for a moment: a dead owner's session can have one
/// successor in one pod's view and another in the next one's. The pod that sees itself as the
/// successor must ask whether a member took the session over already, and send the request there,
/// or the session forks: two copies going on apart, each update applied to one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_another_pod_took_over_is_not_taken_over_again_by_a_pod_that_rejoins() {
    let mut pool = pool(4).await;
    let member = |i: usize| Member {
        name: pool.pods[i].name.clone(),
        uid: pool.pods[i].uid.clone(),
        addr: pool.pods[i].data(),
        admin_port: None,
    };
    let (with_3, without_3) = ([member(1), member(2), member(3)], [member(1), member(2)]);
    let owner = pool.pods[0].data();
    // A session of pod 0 whose successor is pod 3 while it is listed (each has odds of a third).
    let (mut client, session) = 'found: {
        for _ in 0..60 {
            let mut client = SessionClient::default();
            let reply = client.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
            let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
            if decide::successor(&served.session, with_3.iter()).is_some_and(|m| m.name == pool.pods[3].name) {
                break 'found (client, served.session);
            }
        }
        panic!("60 sessions, none with pod 3 as its successor");
    };
    let old_cookie = client.jar.clone();
    let taker = decide::successor(&session, without_3.iter()).expect("a successor").name.clone();
    let taker = pool.pods.iter().position(|p| p.name == taker).expect("a pod");

    // Pod 3 hangs (and leaves the registry), the owner dies: the other successor takes over.
    pool.signal_pod(3, Sig::Stop);
    pool.kill_pod(0).await;
    pool.wait_listed(&[1, 2], Duration::from_secs(10)).await.expect("pods 1 and 2 alone are listed");
    pool.wait_pods_see(&[1, 2], &[1, 2], Duration::from_secs(10)).await.expect("pods 1 and 2 see each other alone");
    let reply = client.send(|| Some(pool.pods[taker].data()), Method::POST, "/incr").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((served.count, &served.pod), (2, &pool.pods[taker].name), "taken over");

    // Pod 3 wakes: in its view it is the session's successor, and it holds the session's older
    // backup. A request the client sent with the cookie of before the takeover reaches it.
    pool.signal_pod(3, Sig::Cont);
    pool.wait_listed(&[1, 2, 3], Duration::from_secs(10)).await.expect("pod 3 is listed again");
    pool.wait_sidecars_see(&[1, 2, 3], Duration::from_secs(10)).await.expect("every sidecar lists pods 1 to 3");
    let mut late = SessionClient::with_jar(old_cookie);
    let reply = late.send(|| Some(pool.pods[3].data()), Method::POST, "/incr").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((served.count, &served.pod), (3, &pool.pods[taker].name), "served by the pod that holds it, not forked");
    let reply = client.send(|| Some(pool.pods[3].data()), Method::GET, "/count").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!(served.count, 3, "one copy of the session");
}
