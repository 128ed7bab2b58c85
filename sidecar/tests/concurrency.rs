//! Concurrent requests of one session (issue 13): a browser keeps several requests of a session
//! in flight on several connections, and their responses reach it in any order — the browser
//! keeps whichever `Set-Cookie` arrived last. A test proxy ([`ReorderProxy`]) in front of a local
//! pool of 3 pods holds responses and delivers them in an order the test picks: the newest
//! first, the owner SIGKILLed at that very moment, the older ones after it. Afterwards every
//! acknowledged update must be present — whatever cookie the client was left holding — for
//! single-chunk states at the default budgets and for multi-chunk states at raised budgets.

use std::time::Duration;

mod support;
use support::client::{Answer, Conn, Jar, jar_with};
use support::reorder::{HOLD, ReorderProxy};

use handover_lab::localpool::LocalPool;
use http::Method;

/// Requests of the session in flight at once (browsers open up to 6 connections per host).
const IN_FLIGHT: usize = 5;
const ROUNDS: usize = 3;
const WAIT: Duration = Duration::from_secs(30);

/// What the client was acknowledged.
#[derive(Default)]
struct Model {
    /// The highest count any response showed: every increment up to it was acknowledged.
    acked: u64,
    /// Increments sent whose answer never came (they may or may not have happened).
    uncertain: u64,
}

/// A random permutation of `0..n`.
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let mut b = [0u8; 4];
        handover_dataplane::random::fill(&mut b);
        order.swap(i, u32::from_le_bytes(b) as usize % (i + 1));
    }
    order
}

/// `GET /count` until the pool answers it (a connection to a killed pod fails and is retried on
/// another), checked against the model; the session's owner.
async fn verify(conn: &mut Conn, jar: &Jar, model: &Model, blob: usize, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let reply = loop {
        let last = match conn.send(jar, Method::GET, "/count", &[]).await {
            Ok(a) if a.status == 200 => break a.count().expect("a count reply"),
            Ok(a) => format!("{} {}", a.status, String::from_utf8_lossy(&a.body).trim()),
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the session's count was not served within {WAIT:?}: {last}"
        );
        // Try again shortly (a retry interval, not a wait for something).
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        reply.count >= model.acked,
        "{what}: {} acknowledged updates lost (count {}, acknowledged {})",
        model.acked - reply.count,
        reply.count,
        model.acked
    );
    assert!(reply.count <= model.acked + model.uncertain, "{what}: count {} above what was sent", reply.count);
    assert_eq!(reply.blob_bytes, blob, "{what}: the session's blob");
    reply.pod
}

/// Records a delivered answer of an increment.
fn acknowledge(model: &mut Model, answer: Result<Answer, String>, what: &str) -> Option<String> {
    match answer {
        Ok(a) if a.status == 200 => {
            assert!(a.warning().is_none(), "{what}: the state was not sealed: {:?}", a.warning());
            let reply = a.count().expect("a count reply");
            model.acked = model.acked.max(reply.count);
            Some(reply.pod)
        }
        other => {
            eprintln!("{what}: no acknowledgement: {other:?}");
            model.uncertain += 1;
            None
        }
    }
}

type InFlight = tokio::task::JoinHandle<(Conn, Result<Answer, String>)>;

fn send(mut conn: Conn, jar: &Jar, hold: Option<String>) -> InFlight {
    let jar = jar.clone();
    tokio::spawn(async move {
        let extra: Vec<(&str, &str)> = hold.as_deref().map(|k| (HOLD, k)).into_iter().collect();
        let answer = conn.send(&jar, Method::POST, "/incr", &extra).await;
        (conn, answer)
    })
}

async fn kill_owner(pool: &mut LocalPool, owner: &str) {
    let i = pool.pods.iter().position(|p| p.name == owner).expect("the owner is a pod of the pool");
    pool.kill_pod(i).await;
}

/// One session through the reorder proxy, `ROUNDS` rounds of `IN_FLIGHT` increments each:
/// - rounds 0 and 1: the increments are sent one after the other (each processed by the pool
///   before the next leaves, so their order is known) and all held; the newest is delivered
///   first, the owner is killed at once, then the older ones are delivered (round 0 oldest last,
///   round 1 in a random order);
/// - round 2: all sent at once, delivered as they come, the owner killed afterwards.
///
/// After each round a new pod replaces the killed one, and the session must have every
/// acknowledged increment (and its blob).
async fn acknowledged_updates_survive_reordering(sidecar_args: &[&str], blob: usize) {
    let mut pool = support::pool_with(3, sidecar_args, &[]).await;
    let proxy = ReorderProxy::start(pool.ready_handle()).await;
    let jar = jar_with(Default::default());
    let mut model = Model::default();
    let mut conns: Vec<Conn> = (0..IN_FLIGHT).map(|_| Conn::new(proxy.addr, WAIT)).collect();
    let first = conns[0].send(&jar, Method::POST, "/incr", &[]).await;
    acknowledge(&mut model, first, "the first increment").expect("the first increment is answered");
    if blob > 0 {
        let set =
            conns[0].send(&jar, Method::POST, &format!("/blob?bytes={blob}"), &[]).await.expect("the blob is set");
        assert_eq!((set.status, set.warning()), (200, None), "the {blob} B state is sealed at the raised budgets");
    }
    for round in 0..ROUNDS {
        let what = format!("round {round}");
        // Every connection answers before the round starts (those to a killed pod reconnect).
        for conn in conns.iter_mut() {
            verify(conn, &jar, &model, blob, &format!("before {what}")).await;
        }
        let mut flights: Vec<Option<InFlight>> = Vec::new();
        let owner = if round < 2 {
            let keys: Vec<String> = (0..IN_FLIGHT).map(|i| format!("{round}-{i}")).collect();
            for (conn, key) in std::mem::take(&mut conns).into_iter().zip(&keys) {
                flights.push(Some(send(conn, &jar, Some(key.clone()))));
                proxy.wait_held(key, WAIT).await.expect("the pool answered the held increment");
            }
            let newest = IN_FLIGHT - 1;
            let older: Vec<usize> = if round == 0 { (0..newest).rev().collect() } else { shuffled(newest) };
            proxy.release(&keys[newest]);
            let (conn, answer) = flights[newest].take().expect("in flight").await.expect("client task");
            conns.push(conn);
            let owner =
                acknowledge(&mut model, answer, &format!("{what}: the newest")).expect("the newest is answered");
            kill_owner(&mut pool, &owner).await;
            for i in older {
                proxy.release(&keys[i]);
                let (conn, answer) = flights[i].take().expect("in flight").await.expect("client task");
                conns.push(conn);
                acknowledge(&mut model, answer, &format!("{what}: increment {i}, delivered after the kill"));
            }
            owner
        } else {
            for conn in std::mem::take(&mut conns) {
                flights.push(Some(send(conn, &jar, None)));
            }
            let mut owner = None;
            for flight in flights.iter_mut() {
                let (conn, answer) = flight.take().expect("in flight").await.expect("client task");
                conns.push(conn);
                owner = acknowledge(&mut model, answer, &what).or(owner);
            }
            let owner = owner.expect("some increment was answered");
            kill_owner(&mut pool, &owner).await;
            owner
        };
        pool.add_pod().await.expect("a new pod replaces the killed one");
        // The next round starts from a pool every sidecar sees alike (the killed pod gone): the
        // owner's backups then go to a live successor, not to a pod killed a round before.
        let running = pool.running();
        pool.wait_sidecars_see(&running, Duration::from_secs(20)).await.expect("every sidecar lists the running pods");
        verify(&mut conns[0], &jar, &model, blob, &format!("after {what}: owner {owner} killed")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_survive_reordered_responses_and_the_owner_killed_in_between() {
    acknowledged_updates_survive_reordering(&[], 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_multi_chunk_states_survive_reordered_responses_and_the_owner_killed_in_between() {
    // A 6 KB state takes two chunks: the budgets are raised past it, as a user behind proxies
    // with raised limits does.
    let budgets = ["--max-response-header-bytes", "65536", "--max-request-header-bytes", "65536"];
    acknowledged_updates_survive_reordering(&budgets, 6144).await;
}
