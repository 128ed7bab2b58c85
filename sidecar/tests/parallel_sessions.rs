//! Browsers' sessions under load through pod deaths: several requests of a session in flight at
//! once, one cookie jar a session. Its own test binary: its load would starve the timing of the
//! reordering tests of `concurrency.rs` if they ran beside it.

mod support;
use support::exe;

use std::time::Duration;

use handover_lab::localpool::{Load, LocalPool, PoolOptions, Sig};

/// Browsers' sessions, 3 requests in flight each (one jar a session), through 9 pod deaths in
/// turn — a drain, a SIGKILL, the app killed a moment before the rest of its pod — each followed
/// by a new pod that every sidecar lists before the next death: every acknowledged update is in
/// the count at the end, and no client ever saw a count go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_of_sessions_lose_nothing_through_drains_and_kills() {
    let mut opts = PoolOptions::new(exe(), 3);
    opts.drain_grace = Duration::from_millis(1500);
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let load = Load::start_with_lanes(pool.ready_handle(), 6, 3);
    load.progress(300, "the sessions to start").await.expect("progress");
    for round in 0..9 {
        let victim = pool.running()[round % 3];
        match round % 3 {
            0 => pool.terminate_pod(victim).await.expect("the pod drains and goes"),
            1 => pool.kill_pod(victim).await,
            _ => {
                // A kubelet's SIGKILLs reach a pod's processes apart: the app's first, here by
                // 15 ms (its sidecar sees it gone, with requests in flight).
                pool.signal_app(victim, Sig::Kill);
                tokio::time::sleep(Duration::from_millis(15)).await;
                pool.kill_pod(victim).await;
            }
        }
        load.progress(300, "the sessions to go on after the death").await.expect("progress");
        pool.add_pod().await.expect("a new pod");
        let running = pool.running();
        pool.wait_sidecars_see(&running, Duration::from_secs(20)).await.expect("every sidecar lists every pod");
        load.progress(300, "the sessions to go on with the new pod").await.expect("progress");
    }
    load.stop_and_verify().await.expect("every acknowledged update of every session survived");
}
