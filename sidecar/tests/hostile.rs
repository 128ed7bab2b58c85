//! Hostile clients, with real sidecar and app processes over real TCP: forged chunk counts, the
//! state endpoint in every spelling, forged forward marks, the sidecar's own fields spelled with
//! `_`, heads that do not parse, slow, malformed and broken-off bodies, transfer codings besides
//! chunked, connection, upload and hold floods, and a SIGTERM while a request hangs. Each test
//! says what must still hold and checks it.

mod support;
use support::pool_with;
use support::raw::{ask_tunnel, exchange, split_reply};

use std::net::SocketAddr;
use std::time::Duration;

use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{SessionClient, wait_for};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn set_cookie_lines(head: &str) -> usize {
    head.lines().filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_chunk_count_costs_one_answer_not_a_flood() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let name = pool.cookie_name();
    for forged in ["1000000.x", "18446744073709551615.x", "99999999999999999999999.x"] {
        let request = format!(
            "POST /incr HTTP/1.1\r\nHost: x\r\nCookie: {name}={forged}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, head, _) = exchange(addr, request.as_bytes()).await;
        assert_eq!(status, 200, "the request is served as a new session: {head}");
        assert_eq!(
            set_cookie_lines(&head),
            1,
            "the new session's route (its small state inside), no deletions claimed by a count: {head}"
        );
    }
    // Chunk names the client really sends are what may be deleted, and no more.
    let many: Vec<String> = (1..=40).map(|i| format!("{name}.{}=x", i * 1000)).collect();
    let request = format!(
        "POST /incr HTTP/1.1\r\nHost: x\r\nCookie: {name}=3.x; {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        many.join("; ")
    );
    let (status, head, _) = exchange(addr, request.as_bytes()).await;
    assert_eq!(status, 200);
    // <name>.{1000..9000} parse as chunk names (4 digits), all deleted; the longer ones are not ours.
    assert_eq!(set_cookie_lines(&head), 1 + 9, "{head}");
    assert_eq!(pool.metric("handover_cookie_rejects_total").await, 4.0, "each refusal is counted, once");
    // The sidecar is still there and serving.
    let mut s = SessionClient::default();
    assert_eq!(s.send(|| Some(addr), Method::POST, "/incr").await.expect("reply").status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_the_state_path_reaches_the_apps_state() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let mut s = SessionClient::default();
    for _ in 0..3 {
        s.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
    }
    let cookie = s.cookie_header().unwrap_or_default();
    let forged = r#"{"count":1000000,"blob":"admin=true"}"#;
    let spellings = [
        "/handover/state",
        "/handover/state/",
        "/HANDOVER/State",
        "//handover//state",
        "/handover/./state",
        "/x/../handover/state",
        "/handover/state;x=1",
        "/handover%2fstate",
        "/%68andover/state",
    ];
    for path in spellings {
        for method in ["GET", "PUT"] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{forged}",
                forged.len()
            );
            let (status, head, body) = exchange(addr, request.as_bytes()).await;
            assert_eq!(status, 404, "{method} {path}: {head}");
            assert!(!String::from_utf8_lossy(&body).contains("count"), "{method} {path} leaked the state");
            assert_eq!(set_cookie_lines(&head), 0, "{method} {path} sealed something");
        }
    }
    assert_eq!(
        pool.metric("handover_bad_requests_total{reason=\"state_path\"}").await,
        (spellings.len() * 2) as f64,
        "every attempt is counted"
    );
    let reply = s.send(|| Some(addr), Method::GET, "/count").await.expect("reply");
    let count: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((count.count, count.blob_bytes), (3, 0), "the session's state is the app's own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_forward_mark_is_refused_and_its_address_still_recorded() {
    let pool = pool_with(2, &[], &[]).await;
    let (owner, other) = (pool.pods[0].data(), pool.pods[1].data());
    let mut s = SessionClient::default();
    let reply = s.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
    let first: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!(first.pod, pool.pods[0].name);

    // Through the other pod, claiming to be a forward from the owner: without a valid mark the
    // request is routed like any client's — to its live owner, not taken over (rolled back) here.
    for mark in [pool.pods[0].name.clone(), format!("v1 1 0 {} {} AAAA", pool.pods[0].name, pool.pods[1].name)] {
        s.disconnect();
        let reply = s
            .send_with(|| Some(other), Method::POST, "/incr", &[("handover-forwarded", mark.clone())])
            .await
            .expect("reply");
        let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
        assert_eq!(served.pod, pool.pods[0].name, "served by the owner, whatever the mark {mark:?} says");
    }
    assert_eq!(pool.metric("handover_takeovers_total").await, 0.0, "no session was taken over");
    assert_eq!(pool.metric("handover_bad_requests_total{reason=\"forged_forward\"}").await, 2.0);

    // The app sees the client's real address in X-Forwarded-For, and no forward mark.
    s.disconnect();
    let reply = s
        .send_with(
            || Some(other),
            Method::GET,
            "/headers",
            &[("handover-forwarded", "x".into()), ("x-forwarded-for", "203.0.113.9".into())],
        )
        .await
        .expect("reply");
    let seen: std::collections::BTreeMap<String, Vec<String>> = serde_json::from_slice(&reply.body).expect("headers");
    let xff = seen.get("x-forwarded-for").and_then(|v| v.first()).cloned().unwrap_or_default();
    // The session belongs to the owner, so the request went client → other pod → owner: each
    // sidecar appended the address its connection came from.
    let hops: Vec<&str> = xff.split(", ").collect();
    assert_eq!(hops.len(), 3, "the client's own value, then one address per hop: {xff}");
    assert_eq!(hops[0], "203.0.113.9");
    assert!(hops[1].parse::<std::net::IpAddr>().is_ok(), "the client as the first sidecar saw it: {xff}");
    if pool.network() == "namespaces" {
        // (On loopback addresses the kernel picks 127.0.0.1 as the source, whatever the pod.)
        assert_eq!(hops[2], other.ip().to_string(), "the forwarding sidecar as the owner saw it: {xff}");
    }
    assert!(!seen.contains_key("handover-forwarded"), "the mark never reaches the app");
}

/// A CGI-style gateway (WSGI, Rack) reads `handover_session` as `Handover-Session`: a client's
/// field that spells one the sidecar sets with `_` never reaches the app; its other fields do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_that_spell_the_sidecars_own_with_underscores_never_reach_the_app() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let mut s = SessionClient::default();
    let spoofs = [
        ("handover_session", "someone-else"),
        ("handover_state", "e30"),
        ("x_forwarded_for", "203.0.113.66"),
        ("x-forwarded_proto", "https"),
    ];
    let mut fields: Vec<(&str, String)> = spoofs.iter().map(|&(n, v)| (n, v.to_owned())).collect();
    fields.push(("x_app_field", "kept".to_owned()));
    let reply = s.send_with(|| Some(addr), Method::GET, "/headers", &fields).await.expect("reply");
    let seen: std::collections::BTreeMap<String, Vec<String>> = serde_json::from_slice(&reply.body).expect("headers");
    for (name, _) in spoofs {
        assert!(!seen.contains_key(name), "{name} reached the app: {seen:?}");
    }
    assert_eq!(seen.get("x_app_field"), Some(&vec!["kept".to_owned()]), "{seen:?}");
    let session = seen.get("handover-session").and_then(|v| v.first()).expect("the sidecar's session field");
    assert_ne!(session, "someone-else");
    assert!(!seen["x-forwarded-for"].concat().contains("203.0.113.66"), "{seen:?}");
    assert_eq!(pool.metric("handover_bad_requests_total{reason=\"spoofed_field\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_through_a_forward_does_not_make_the_owner_count_as_dead() {
    let pool = pool_with(2, &["--peer-probe-after", "300ms"], &[]).await;
    let (owner, other) = (pool.pods[0].data(), pool.pods[1].data());
    let mut victim = SessionClient::default();
    victim.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
    let mut attacker = SessionClient::default();
    attacker.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");

    // The attacker's request goes through the other pod (forwarded to the owner) and trickles its
    // body for ~2 s: several probe periods.
    let mut stream = TcpStream::connect(other).await.expect("connect");
    let head = format!(
        "POST /incr HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
        attacker.cookie_header().unwrap_or_default()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(b"x").await.expect("write a byte");
    }
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await.expect("answer").expect("read");
    assert_eq!(split_reply(&reply).0, 200, "the slow request itself is served");

    // The owner was probed, found alive, and stays the owner of everyone's sessions.
    assert!(pool.metric("handover_peer_probes_total{result=\"alive\"}").await >= 1.0, "the owner was probed");
    assert_eq!(pool.metric("handover_peer_probes_total{result=\"dead\"}").await, 0.0);
    victim.disconnect();
    let reply = victim.send(|| Some(other), Method::POST, "/incr").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((served.pod.as_str(), served.count), (pool.pods[0].name.as_str(), 2), "forwarded to its owner");
    assert_eq!(pool.metric("handover_takeovers_total").await, 0.0, "no session changed owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_off_and_counted() {
    let pool = pool_with(1, &["--body-idle-timeout", "500ms"], &[]).await;
    let addr = pool.pods[0].data();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a few bytes")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the sidecar ends the exchange, not the client")
        .expect("read");
    let (status, head, _) = split_reply(&reply);
    assert_eq!(status, 408, "{head}");
    assert_eq!(pool.metric("handover_bad_requests_total{reason=\"body_timeout\"}").await, 1.0);
}

/// A request body that does not parse (a chunk size that is no number) or that its client cuts
/// short is the client's fault: a 400 counted as `bad_body`, not a 502 that blames the app, and
/// through a forward no probe of the session's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_parse_or_breaks_off_is_the_clients_400_not_a_502() {
    let pool = pool_with(2, &[], &[]).await;
    let (owner, other) = (pool.pods[0].data(), pool.pods[1].data());
    let bad_bodies = || pool.metric("handover_bad_requests_total{reason=\"bad_body\"}");
    let malformed = "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\nnot-a-size\r\n";
    let (status, head, body) =
        exchange(owner, format!("POST /incr HTTP/1.1\r\nHost: x\r\n{malformed}").as_bytes()).await;
    assert_eq!(status, 400, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("the request body broke off or did not parse"), "{head}");
    assert_eq!(bad_bodies().await, 1.0);

    // Cut short: the client shuts its side of the connection 10 bytes into a body of 100.
    let mut stream = TcpStream::connect(owner).await.expect("connect");
    stream.write_all(b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nten bytes.").await.expect("write");
    stream.shutdown().await.expect("shut the writing side");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await.expect("answer").expect("read");
    let (status, head, _) = split_reply(&reply);
    assert_eq!(status, 400, "{head}");
    assert_eq!(bad_bodies().await, 2.0);

    // Through the other pod, forwarded to the session's owner.
    let mut client = SessionClient::default();
    client.send(|| Some(owner), Method::POST, "/incr").await.expect("reply");
    let request = format!(
        "POST /incr HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n{malformed}",
        client.cookie_header().unwrap_or_default()
    );
    let (status, head, _) = exchange(other, request.as_bytes()).await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(pool.metric("handover_peer_probes_total").await, 0.0, "the owner was not suspected");
    let reply = client.send(|| Some(other), Method::POST, "/incr").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("count");
    assert_eq!((served.pod.as_str(), served.count), (pool.pods[0].name.as_str(), 2), "still served by its owner");
}

/// A body in a transfer coding besides chunked would reach the app chunked alone, as if it were
/// plain: it is refused (501, as nginx does) and counted, and a chunked body still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_besides_chunked_is_refused_not_passed_on_as_plain() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let body = "3\r\nabc\r\n0\r\n\r\n";
    for codings in ["gzip, chunked", "gzip\r\nTransfer-Encoding: chunked", "chunked\r\nTransfer-Encoding: chunked"] {
        let request = format!(
            "POST /incr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {codings}\r\nConnection: close\r\n\r\n{body}"
        );
        let (status, head, _) = exchange(addr, request.as_bytes()).await;
        assert_eq!(status, 501, "{codings}: {head}");
    }
    assert_eq!(pool.metric("handover_bad_requests_total{reason=\"transfer_coding\"}").await, 3.0);
    let request =
        format!("POST /incr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{body}");
    let (status, head, _) = exchange(addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
}

/// A head that does not parse never reaches the proxy: hyper answers it (400; past hyper's own
/// limits, 431 or 414). It is counted by reason all the same, and logged, as the proxy's own
/// refusals are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_does_not_parse_is_refused_and_counted() {
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let fields: String = (0..120).map(|i| format!("X-Field-{i}: a\r\n")).collect();
    let long_target = "a".repeat(70_000);
    for (request, status) in [
        ("GET /count HTTP/1.1\r\nHost: x\r\nA Field: a space in its name\r\nConnection: close\r\n\r\n".to_owned(), 400),
        (
            "POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab"
                .to_owned(),
            400,
        ),
        (format!("GET /count HTTP/1.1\r\nHost: x\r\n{fields}Connection: close\r\n\r\n"), 431),
        (format!("GET /count?{long_target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 414),
    ] {
        let (got, head, _) = exchange(addr, request.as_bytes()).await;
        assert_eq!(got, status, "{head}");
    }
    for (reason, count) in [("malformed", 2.0), ("headers_too_large", 1.0), ("uri_too_long", 1.0)] {
        let counted = pool.metric(&format!("handover_bad_requests_total{{reason=\"{reason}\"}}")).await;
        assert_eq!(counted, count, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_the_cap_frees_up() {
    let pool = pool_with(1, &["--max-connections", "4"], &[]).await;
    let addr = pool.pods[0].data();
    // The local pool's own checks use the admin port: these four hold every data slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let refused = || async {
        let mut extra = TcpStream::connect(addr).await.expect("the kernel accepts");
        let _ = extra.write_all(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    };
    // The fourth accept may still be on its way: wait for the cap to be reached.
    wait_for("a connection over the cap to be closed at once", Duration::from_secs(10), refused)
        .await
        .expect("the cap holds");
    assert!(pool.metric("handover_connections_refused_total{listener=\"data\"}").await >= 1.0);
    held.clear();
    wait_for("a request to be served once connections closed", Duration::from_secs(10), || async {
        let mut s = SessionClient::default();
        s.send(|| Some(addr), Method::POST, "/incr").await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await
    .expect("slots come back");
}

/// What became of one keep-alive connection of a flood: its request answered (with this
/// status), or the connection closed before any answer, or neither within 20 s.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Fate {
    Answered(u16),
    Closed,
    NoAnswer,
}

/// A request that is answered at once and leaves its connection idle.
const ANSWERED: &[u8] = b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
/// A request for a large answer, from a client that reads its status line and nothing more.
const NOT_READ: &[u8] = b"GET /download?mib=1 HTTP/1.1\r\nHost: x\r\n\r\n";

/// `n` keep-alive connections to `addr` at once, each sending `request` and keeping the
/// connection open, unread past the status line (with a small receive buffer), until all have
/// their fate.
async fn flood(addr: SocketAddr, n: usize, request: &'static [u8]) -> std::collections::HashMap<Fate, usize> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            let _ = socket.set_recv_buffer_size(4096);
            let Ok(mut stream) = socket.connect(addr).await else { return (Fate::Closed, None) };
            let _ = stream.write_all(request).await;
            let mut head = [0u8; 12];
            let fate = match tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut head)).await {
                Err(_) => Fate::NoAnswer,
                Ok(Err(_)) => Fate::Closed,
                Ok(Ok(_)) => {
                    Fate::Answered(std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0))
                }
            };
            (fate, Some(stream))
        }));
    }
    let mut fates = std::collections::HashMap::new();
    let mut open = Vec::new();
    for task in tasks {
        let (fate, stream) = task.await.expect("a connection's task");
        *fates.entry(fate).or_default() += 1;
        open.push(stream);
    }
    fates
}

/// A container runtime's limit on open files (containerd 2: soft 1024 under a hard 524288) is
/// raised to the hard one at start; where the hard one is low too, the connection cap is lowered
/// to fit it. Either way a flood of connections never leaves the sidecar without the descriptors
/// to reach its own app: every request is answered, or its connection closed at once at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_never_runs_the_sidecar_out_of_open_files() {
    const CONNECTIONS: usize = 600;
    for (soft, hard) in [(256, 4096), (512, 512)] {
        let mut opts = handover_lab::localpool::PoolOptions::new(support::exe(), 1);
        opts.sidecar_prefix = vec!["prlimit".into(), format!("--nofile={soft}:{hard}"), "--".into()];
        let pool = handover_lab::localpool::LocalPool::start(opts).await.expect("pool starts");
        let fates = flood(pool.pods[0].data(), CONNECTIONS, ANSWERED).await;
        let served = fates.get(&Fate::Answered(200)).copied().unwrap_or(0);
        let closed = fates.get(&Fate::Closed).copied().unwrap_or(0);
        assert_eq!(
            served + closed,
            CONNECTIONS,
            "limit {soft}:{hard}: every request answered 200 or closed: {fates:?}"
        );
        let refused = pool.metric("handover_connections_refused_total{listener=\"data\"}").await;
        if soft < hard {
            assert_eq!(served, CONNECTIONS, "limit {soft}:{hard}: raised to {hard}, all served: {fates:?}");
        } else {
            // (512 - 128) / 2 client connections, each with its app connection.
            assert!((1..=192).contains(&served), "limit {soft}:{hard}: at most the cap served: {fates:?}");
            assert_eq!(refused, closed as f64, "limit {soft}:{hard}: each closed one counted");
        }
        assert_eq!(pool.metric("handover_app_restarts_total").await, 0.0);
    }
}

/// The flags of a sidecar held to 48 MiB: the limit, told as the operator tells it, and the caps
/// these floods do not fill kept small.
const HELD_TO_48_MIB: [&str; 6] = ["--max-sessions", "10000", "--backup", "off", "--memory-limit", "50331648"];

/// A pool of one pod whose sidecar runs in a memory cgroup of 48 MiB, as a container with that
/// limit does, and is told the limit as the operator tells it (the downward API's
/// `limits.memory`: in a pod's network namespace, `ip netns exec` mounts a sysfs of its own,
/// without the cgroup mounts); `None` where no cgroup can be made (`what` skipped, said loudly).
async fn pool_held_to_48_mib(
    what: &str,
) -> Option<(support::cgroup::MemoryCgroup, handover_lab::localpool::LocalPool)> {
    let cgroup = support::cgroup::MemoryCgroup::limited(48 << 20, what)?;
    let mut opts = handover_lab::localpool::PoolOptions::new(support::exe(), 1);
    opts.sidecar_prefix = cgroup.prefix();
    opts.sidecar_args = HELD_TO_48_MIB.map(String::from).to_vec();
    let pool = handover_lab::localpool::LocalPool::start(opts).await.expect("pool starts");
    Some((cgroup, pool))
}

/// A flood of connections at a sidecar held to a container's memory limit (48 MiB; 2 000 idle
/// connections killed it, ~20 KB each): it keeps its connections within what the limit leaves
/// beside its other caps, answers those, closes the rest at once, and lives — also when none of
/// its clients reads its answer (a 1 MiB answer to each killed it when it kept up to 64 KiB of
/// each, ~96 KB a connection in all, and counted a connection at 32 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_never_takes_the_sidecar_past_its_memory_limit() {
    const CONNECTIONS: usize = 3000;
    for (request, what) in [(ANSWERED, "answered"), (NOT_READ, "answers not read")] {
        let Some((cgroup, pool)) = pool_held_to_48_mib("the memory-limit flood test").await else { return };
        let fates = flood(pool.pods[0].data(), CONNECTIONS, request).await;
        let served = fates.get(&Fate::Answered(200)).copied().unwrap_or(0);
        let closed = fates.get(&Fate::Closed).copied().unwrap_or(0);
        assert_eq!(served + closed, CONNECTIONS, "{what}: every request answered 200 or closed at once: {fates:?}");
        // (48 MiB - 16 MiB - 10 000 sessions - 4 MiB of heads) / 64 KiB at most.
        assert!((1..=400).contains(&served), "{what}: at most what the memory limit holds served: {fates:?}");
        let peak = cgroup.peak() >> 20;
        assert_eq!(cgroup.oom_kills(), 0, "{what}: the kernel killed nothing (peak {peak} MiB): {fates:?}");
        let live = handover_lab::localpool::probe(pool.pods[0].admin(), "/live").await;
        assert_eq!(live, Some(200), "{what}: the sidecar lives");
        let refused = pool.metric("handover_connections_refused_total{listener=\"data\"}").await;
        assert_eq!(refused, closed as f64, "{what}");
    }
}

/// A connection that the client never reads from: what the sidecar sends it stays in the
/// sidecar's buffers once the socket's are full.
struct NeverRead(TcpStream);

impl tokio::io::AsyncRead for NeverRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncWrite for NeverRead {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// HTTP/2 clients that open their windows wide for a 4 MiB answer and read none of it, at a
/// sidecar held to a container's memory limit: hyper queued up to ~400 KB of each stream's answer
/// for them (~520 KB a connection, 100 of them past a 48 MiB limit); it queues what the HTTP/1.1
/// path gathers, 16 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_that_open_their_windows_and_read_nothing_never_take_the_sidecar_past_its_memory_limit() {
    const CLIENTS: usize = 100;
    let Some((cgroup, pool)) = pool_held_to_48_mib("the HTTP/2 no-read flood test").await else { return };
    let addr = pool.pods[0].data();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        let _ = socket.set_recv_buffer_size(4096);
        let stream = socket.connect(addr).await.expect("connected: 100 clients are within the cap");
        let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder.initial_stream_window_size(16 << 20).initial_connection_window_size(64 << 20);
        let io = hyper_util::rt::TokioIo::new(NeverRead(stream));
        let (mut sender, conn) =
            builder.handshake::<_, http_body_util::Empty<bytes::Bytes>>(io).await.expect("an HTTP/2 connection");
        let req = http::Request::get(format!("http://{addr}/download?mib=4")).body(http_body_util::Empty::new());
        let answer = sender.send_request(req.expect("request"));
        clients.push((tokio::spawn(conn), tokio::spawn(answer)));
    }
    // Every answer began: the sidecar gave each its head (which the client does not read).
    wait_for("every download to be answered", Duration::from_secs(30), || async {
        pool.metric("handover_requests_total").await == CLIENTS as f64
    })
    .await
    .expect("the downloads began");
    // The flood is held for 3 s (the app writes a 4 MiB answer in a few milliseconds; what the
    // sidecar queues of it stays until the send timeout, 60 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = cgroup.peak() >> 20;
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed nothing (peak {peak} MiB)");
    let live = handover_lab::localpool::probe(pool.pods[0].admin(), "/live").await;
    assert_eq!(live, Some(200), "the sidecar lives");
    drop(clients);
}

/// An app that reads request bodies slowly (4 KB every 100 ms) and never answers.
async fn slow_reading_app() -> SocketAddr {
    support::app_of_own(|mut stream| async move {
        let mut chunk = [0u8; 4096];
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// Uploads as fast as their clients can send them, to an app that reads them slowly, at a sidecar
/// held to a container's memory limit: an upload through hyper holds ~300 KB of buffers, and 200
/// of them held ~60 MB. Each takes slots of the connection cap for them, so past the cap a new one
/// is refused at once (503), and the sidecar lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_uploads_to_an_app_that_reads_slowly_never_takes_the_sidecar_past_its_memory_limit() {
    const UPLOADS: usize = 300;
    let Some(cgroup) = support::cgroup::MemoryCgroup::limited(48 << 20, "the upload flood test") else {
        return;
    };
    let dir = support::Scratch::new("upload-flood");
    let app = slow_reading_app().await;
    let (data, admin, _sidecar) = support::sidecar_for(app, &dir, &cgroup.prefix(), &HELD_TO_48_MIB).await;
    let mut uploads = Vec::new();
    for _ in 0..UPLOADS {
        uploads.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(data).await else { return None };
            let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 64 << 20);
            stream.write_all(head.as_bytes()).await.ok()?;
            let block = vec![b'x'; 64 << 10];
            // As fast as the sidecar takes it, for 5 s, or until it answers or closes.
            let (mut reader, mut writer) = stream.into_split();
            let send = async {
                while writer.write_all(&block).await.is_ok() {}
                // Refused or cut: the fate is what is read, or the time running out.
                std::future::pending::<std::convert::Infallible>().await
            };
            let mut status = [0u8; 12];
            tokio::select! {
                never = send => match never {},
                read = reader.read_exact(&mut status) => read.ok().map(|_| status),
                () = tokio::time::sleep(Duration::from_secs(5)) => Some(*b"in flight   "),
            }
        }));
    }
    let mut fates = std::collections::HashMap::<String, usize>::new();
    for upload in uploads {
        let fate = upload
            .await
            .expect("an upload's task")
            .map_or("closed".into(), |s| String::from_utf8_lossy(&s).into_owned());
        *fates.entry(fate).or_default() += 1;
    }
    let peak = cgroup.peak() >> 20;
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed nothing (peak {peak} MiB): {fates:?}");
    assert_eq!(handover_lab::localpool::probe(admin, "/live").await, Some(200), "the sidecar lives: {fates:?}");
    let refused = fates.get("HTTP/1.1 503").copied().unwrap_or(0);
    assert!(refused > 0, "uploads past the cap refused: {fates:?}");
    eprintln!("uploads: {fates:?}, peak {peak} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_for_a_down_app_are_capped_and_the_held_ones_go_through() {
    let mut pool = pool_with(1, &["--max-held", "2", "--app-wait", "20s"], &[]).await;
    let addr = pool.pods[0].data();
    pool.crash_app(0).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            exchange(addr, b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.0
        }));
    }
    wait_for("four requests over the cap to be refused", Duration::from_secs(10), || async {
        pool.metric("handover_app_waits_total{result=\"over_cap\"}").await >= 4.0
    })
    .await
    .expect("the cap holds");
    pool.restart_app(0).expect("the app starts again");
    let mut statuses: Vec<u16> = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503, 503], "two held and served, four refused at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_sidecar_in_time_whatever_its_requests_do() {
    let mut pool = pool_with(1, &["--body-idle-timeout", "1h", "--body-timeout", "1h"], &[]).await;
    let addr = pool.pods[0].data();
    // A request whose body never completes, and an idle keep-alive connection.
    let mut hanging = TcpStream::connect(addr).await.expect("connect");
    hanging.write_all(b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nstarted").await.expect("write");
    let _idle = TcpStream::connect(addr).await.expect("connect");
    // terminate_pod fails if the sidecar is still running drain grace + 10 s after SIGTERM.
    pool.terminate_pod(0).await.expect("the sidecar exits within its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_whole_head_is_closed_after_the_header_timeout_and_a_begun_one_counted() {
    // The wait for the first bytes (HTTP/1.1 or HTTP/2 is told by them) counts toward the header
    // timeout, from the accept.
    let pool = pool_with(1, &["--header-timeout", "300ms"], &[]).await;
    let mut silent = TcpStream::connect(pool.pods[0].data()).await.expect("connect");
    let mut begun = TcpStream::connect(pool.pods[0].data()).await.expect("connect");
    begun.write_all(b"GET /count HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    for conn in [&mut silent, &mut begun] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed by the sidecar, not left open: {read:?}");
    }
    // The one that began a head is a refusal; the silent one (a browser opens some ahead) is not.
    let refused = pool.metric(r#"handover_bad_requests_total{reason="header_timeout"}"#).await;
    assert_eq!(refused, 1.0, "the begun head counted, the silent connection not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_sessions_keeps_the_table_within_its_cap_and_evicted_sessions_go_on() {
    const CAP: usize = 32;
    let pool = pool_with(1, &["--max-sessions", "32"], &[]).await;
    let addr = pool.pods[0].data();
    // Cookieless requests, each one a new session the app gives state: far past the cap.
    let mut sessions: Vec<SessionClient> = Vec::new();
    for _ in 0..(CAP * 6) {
        let mut s = SessionClient::default();
        let reply = s.send(|| Some(addr), Method::POST, "/incr").await.expect("a new session is served");
        assert_eq!(reply.status, StatusCode::OK);
        sessions.push(s);
    }
    let table = pool.metric("handover_sessions ").await;
    assert!(table <= CAP as f64, "the session table holds {table} entries, over its cap of {CAP}");
    let evicted = pool.metric("handover_sessions_evicted_total").await;
    assert!(evicted >= (CAP * 5) as f64, "evictions counted: {evicted}");
    // Every session, the evicted ones first, goes on where it was: checked with the app, never empty.
    for (i, s) in sessions.iter_mut().enumerate() {
        let reply = s.send(|| Some(addr), Method::POST, "/incr").await.expect("served again");
        assert_eq!(reply.status, StatusCode::OK);
        let count = serde_json::from_slice::<CountReply>(&reply.body).expect("a count").count;
        assert_eq!(count, 2, "session {i} lost its first increment after its eviction");
    }
    assert!(pool.metric("handover_sessions ").await <= CAP as f64, "still within the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut_at_the_send_timeout() {
    // It would hold its connection, and the app's connection writing the answer, for good.
    const MIB: usize = 32;
    let pool = pool_with(1, &["--send-timeout", "500ms"], &[]).await;
    let addr = pool.pods[0].data();
    // On the sidecar's own HTTP/1.1 path (a GET), and through hyper's (a chunked request body).
    let requests = [
        format!("GET /download?mib={MIB} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("POST /download?mib={MIB} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for (i, request) in requests.iter().enumerate() {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("a small receive buffer");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        // Nothing read until the sidecar has given up on it.
        let cut = (i + 1) as f64;
        wait_for("the send timeout, counted", Duration::from_secs(20), || async {
            pool.metric(r#"handover_bad_requests_total{reason="send_timeout"}"#).await >= cut
        })
        .await
        .expect("the sidecar stops waiting for the client");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the connection was closed by the sidecar");
        assert!(got.len() < MIB << 20, "request {i}: the answer was cut, not sent whole ({} bytes)", got.len());
    }
    // The sidecar and the app serve on.
    let mut s = SessionClient::default();
    assert_eq!(s.send(|| Some(addr), Method::POST, "/incr").await.expect("reply").status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_host_is_not_clear_is_refused_and_an_absolute_target_names_the_host() {
    // The app, a cache or the next proxy could each read another host out of these.
    let pool = pool_with(1, &[], &[]).await;
    let addr = pool.pods[0].data();
    let unclear = [
        ("no Host", "GET /headers HTTP/1.1\r\n"),
        ("no Host, HTTP/1.0", "GET /headers HTTP/1.0\r\n"),
        ("two Host fields", "GET /headers HTTP/1.1\r\nHost: shop.example\r\nHost: evil.example\r\n"),
        ("user info", "GET /headers HTTP/1.1\r\nHost: evil.example@shop.example\r\n"),
        ("a path", "GET /headers HTTP/1.1\r\nHost: shop.example/x\r\n"),
    ];
    for (what, head) in unclear {
        let (status, answer, _) = exchange(addr, format!("{head}Connection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(status, 400, "{what}: {answer}");
    }
    let refused = pool.metric(r#"handover_bad_requests_total{reason="bad_host"}"#).await;
    assert_eq!(refused, unclear.len() as f64, "each one counted");
    // An absolute-form target's authority is the host (RFC 9112, 3.2.2): the app sees it.
    let request = b"GET http://shop.example/headers HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let (status, answer, body) = exchange(addr, request).await;
    assert_eq!(status, 200, "{answer}");
    let seen: std::collections::BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).expect("headers");
    assert_eq!(seen.get("host"), Some(&vec!["shop.example".to_owned()]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_hold_slots_of_the_connection_cap_and_close_when_idle() {
    // A tunnel outlives its connection's task and holds two sockets: without a slot of its own
    // and an idle timeout, a client could open any number and keep them for good.
    const CAP: usize = 3;
    let pool = pool_with(1, &["--max-connections", &CAP.to_string(), "--keepalive-timeout", "2s"], &[]).await;
    let addr = pool.pods[0].data();
    // A request for a tunnel takes the tunnel's slot beside its connection's, which the tunnel
    // gives back once it stands: two tunnels and the third's request fill a cap of three.
    let mut tunnels = Vec::new();
    for _ in 0..CAP - 1 {
        let (stream, head) = ask_tunnel(addr).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tunnels.push(stream);
    }
    let (_, head) = ask_tunnel(addr).await;
    assert!(head.starts_with("HTTP/1.1 503") && head.contains("retry-after: 1"), "past the cap: {head}");
    assert_eq!(pool.metric(r#"handover_bad_requests_total{reason="over_cap"}"#).await, 1.0);
    // A tunnel in use (every 300 ms, well within the idle timeout) stays open past it.
    let mut busy = tunnels.pop().expect("a tunnel");
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ping = format!("ping {i}");
        busy.write_all(ping.as_bytes()).await.expect("write");
        let mut echo = vec![0u8; ping.len()];
        tokio::time::timeout(Duration::from_secs(5), busy.read_exact(&mut echo)).await.expect("echo").expect("echo");
        assert_eq!(echo, ping.as_bytes());
    }
    drop(busy);
    // An idle one is closed at the timeout (2 s), and the slots come back.
    for mut idle in tunnels {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "an idle tunnel closed by the sidecar: {closed:?}");
    }
    wait_for("the tunnels' slots given back", Duration::from_secs(10), || async move {
        ask_tunnel(addr).await.1.starts_with("HTTP/1.1 101")
    })
    .await
    .expect("a tunnel again once the others went");
}
