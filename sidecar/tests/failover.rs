//! The data path under faults: a local pool of real sidecar and app processes on real TCP, real
//! signals. After every fault, each session's state must equal what its client was acknowledged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_sidecar::demo_app::CountReply;
use handover_sidecar::localpool::{LocalPool, PoolOptions, SessionClient, Sig};
use http::{Method, StatusCode};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover-sidecar"))
}

/// A client session with a model of what it was acknowledged.
struct Session {
    client: SessionClient,
    /// The counter value the client saw last: every acknowledged increment.
    acked: u64,
    /// Increments sent whose outcome the client never saw (they may or may not have happened).
    uncertain: u64,
    lost: u64,
}

impl Session {
    fn new() -> Session {
        Session { client: SessionClient::default(), acked: 0, uncertain: 0, lost: 0 }
    }

    /// One increment through the pool, retrying on other pods until it is acknowledged.
    async fn incr(&mut self, ready: &Arc<Mutex<Vec<SocketAddr>>>) -> Result<(), String> {
        let mut last_error = String::new();
        for attempt in 0..200 {
            let pick = || pick_from(ready, attempt);
            match self.client.send(pick, Method::POST, "/incr").await {
                Ok(reply) if reply.status == StatusCode::OK => {
                    let count = serde_json::from_slice::<CountReply>(&reply.body).map_err(|e| e.to_string())?.count;
                    if count < self.acked + 1 {
                        self.lost += self.acked + 1 - count;
                    } else if count > self.acked + 1 + self.uncertain {
                        return Err(format!("count jumped to {count}, acked {} uncertain {}", self.acked, self.uncertain));
                    }
                    self.acked = count;
                    self.uncertain = 0;
                    return Ok(());
                }
                Ok(reply) => {
                    last_error = format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body));
                    self.uncertain += 1;
                    self.client.disconnect();
                }
                Err(e) => {
                    last_error = e;
                    self.uncertain += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("increment never acknowledged: {last_error}"))
    }

    /// The counter as the pool serves it now.
    async fn count(&mut self, ready: &Arc<Mutex<Vec<SocketAddr>>>) -> Result<u64, String> {
        for attempt in 0..100 {
            if let Ok(reply) = self.client.send(|| pick_from(ready, attempt), Method::GET, "/count").await
                && reply.status == StatusCode::OK
            {
                return Ok(serde_json::from_slice::<CountReply>(&reply.body).map_err(|e| e.to_string())?.count);
            }
            self.client.disconnect();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("count never answered".into())
    }
}

fn pick_from(ready: &Arc<Mutex<Vec<SocketAddr>>>, salt: usize) -> Option<SocketAddr> {
    let ready = ready.lock().unwrap_or_else(|p| p.into_inner());
    if ready.is_empty() {
        return None;
    }
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).ok()?;
    Some(ready[(usize::from(u16::from_le_bytes(b)) + salt) % ready.len()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_owner_loses_no_acknowledged_update() {
    let mut pool = LocalPool::start(PoolOptions::new(exe(), 3)).await.expect("pool starts");
    let ready = pool.ready_handle();
    let mut s = Session::new();
    for _ in 0..20 {
        s.incr(&ready).await.expect("increment");
    }
    let owner = pool.pods.iter().position(|p| Some(p.data()) == s.client.connected_to()).expect("connected to a pod");
    pool.signal_pod(owner, Sig::Kill);
    pool.kill_pod(owner).await;
    for _ in 0..20 {
        s.incr(&ready).await.expect("increment after the kill");
    }
    assert_eq!(s.lost, 0, "acknowledged updates were lost");
    assert_eq!(s.count(&ready).await.expect("count"), s.acked);
    assert!(pool.metric("handover_takeovers_total").await >= 1.0, "the session was taken over by a surviving pod");
}
