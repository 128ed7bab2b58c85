//! The data path under faults: a local pool of real sidecar and app processes on real TCP, real
//! signals. After every fault, each session's state must equal what its client was acknowledged.

use std::path::PathBuf;
use std::time::Duration;

use handover_sidecar::localpool::{CounterSession, LocalPool, PoolOptions, Sig};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover-sidecar"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_owner_loses_no_acknowledged_update() {
    let mut pool = LocalPool::start(PoolOptions::new(exe(), 3)).await.expect("pool starts");
    let ready = pool.ready_handle();
    let mut s = CounterSession::default();
    for _ in 0..20 {
        s.incr(&ready).await.expect("increment");
    }
    let owner = pool.pods.iter().position(|p| Some(p.data()) == s.client.connected_to()).expect("connected to a pod");
    pool.signal_pod(owner, Sig::Kill);
    pool.kill_pod(owner).await;
    for _ in 0..20 {
        s.incr(&ready).await.expect("increment after the kill");
    }
    assert_eq!(s.verify(&ready).await.expect("count"), s.acked);
    assert_eq!(s.lost, 0, "acknowledged updates were lost");
    assert!(pool.metric("handover_takeovers_total").await >= 1.0, "the session was taken over by a surviving pod");
    let _ = Duration::ZERO;
}
