//! Is a peer alive, and is it at its address? A short, separate probe of its admin `/live`: the
//! only thing that may make a live-listed peer count as dead to this sidecar, and what a new
//! connection to a peer waits for ([`identify`]).
//!
//! A forward that fails or is slow proves little: a client's slow body, a long-poll, a
//! server-sent-events stream or a slow report all keep a forward waiting, and a service mesh
//! accepts every connection (to its local proxy) whether the peer lives or not. So a failed or
//! slow forward triggers this probe, and its answer decides:
//!
//! | what the probe saw | verdict |
//! | --- | --- |
//! | `200` from `/live` | alive: no takeover |
//! | `200` from `/live` naming another pod (`Handover-Pod-Uid`) | dead: its address is another pod's now |
//! | connection refused, reset, another status | dead (for a while) |
//! | no answer after connecting, twice in a row (a second probe on a fresh connection) | dead: hung (stopped, or stuck) |
//! | no connection at all within the timeout (dropped packets) | unknown: no takeover |
//!
//! "Unknown" is what a default-deny NetworkPolicy or a partition looks like: the peer may be alive
//! and serving its sessions, so taking them over here would fork them. The registry (the pod's
//! readiness, as the kubelet sees it) still removes a peer that is really gone.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer head a probe reads (the sidecar's is under 200 bytes).
const MAX_HEAD: usize = 1024;

/// The field of a sidecar's `/live` answer that names its pod (by uid). A pod's address outlives
/// it: once it is gone, a new pod (of any pool, with a sidecar on the same admin port) may get it,
/// and its `200` would keep the dead peer alive here and draw its sessions' forwards, with their
/// clients' requests, to a stranger.
pub const POD_UID_HEADER: &str = "handover-pod-uid";

/// What a probe says about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// With the reason, for logs and metrics.
    Dead(&'static str),
    /// Not reachable at all: it may live behind a network that drops our packets.
    Unknown,
}

/// Probes `admin` (the admin address of the peer whose pod has `uid`) within `timeout`; a peer
/// that accepted the connection and stayed silent is probed once more before it counts as hung:
/// on a machine starved of CPU a live sidecar can miss one deadline, and calling it dead would
/// fork its sessions.
pub async fn probe(admin: SocketAddr, uid: &str, timeout: Duration) -> Liveness {
    match probe_once(admin, uid, timeout).await {
        Liveness::Dead(SILENT) => probe_once(admin, uid, timeout).await,
        verdict => verdict,
    }
}

/// Whether the pod at a peer's address is the peer: checked before a new connection takes a
/// client's request there (a registry lags behind a pod's death; its address may be another's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Its sidecar answered as the pod with the uid asked for (or as an older sidecar, which
    /// names no pod).
    ThePeer,
    /// Another pod answered, or something that is no live sidecar, or nothing listens (the
    /// reason): the peer is gone from there.
    NotThePeer(&'static str),
    /// No answer in time (no connection, or silence after connecting): a loaded or partitioned
    /// peer looks so too, so nothing is proved either way.
    Unsure,
}

/// One probe of `admin` for the pod with `uid` (see [`Identity`]); a silence is not probed again,
/// as [`probe`] does: it proves nothing here.
pub async fn identify(admin: SocketAddr, uid: &str, timeout: Duration) -> Identity {
    match probe_once(admin, uid, timeout).await {
        Liveness::Alive => Identity::ThePeer,
        Liveness::Dead(SILENT) | Liveness::Unknown => Identity::Unsure,
        Liveness::Dead(why) => Identity::NotThePeer(why),
    }
}

/// The reason of a peer that accepted the connection and did not answer.
const SILENT: &str = "no answer";

async fn probe_once(admin: SocketAddr, uid: &str, timeout: Duration) -> Liveness {
    match live_head(admin, timeout).await {
        Err(verdict) => verdict,
        Ok(head) => verdict_of(&head, uid),
    }
}

/// What `/live`'s answer head says of the pod with `uid`.
fn verdict_of(head: &[u8], uid: &str) -> Liveness {
    // `HTTP/1.x 200`, then the reason phrase's space or the line's end: not `2000`, not `200x`.
    let status = head.strip_prefix(b"HTTP/1.1 200").or_else(|| head.strip_prefix(b"HTTP/1.0 200"));
    if !status.is_some_and(|rest| matches!(rest.first(), Some(b' ' | b'\r' | b'\n'))) {
        return Liveness::Dead("not live");
    }
    // A sidecar of an older release names no pod: taken at its word.
    match header_value(head, POD_UID_HEADER) {
        Some(theirs) if !uid.is_empty() && theirs != uid => Liveness::Dead("another pod"),
        _ => Liveness::Alive,
    }
}

/// The field `name` of the `/live` answer of the peer whose pod has `uid` (the proxy reads the
/// state formats its app declared there): `Ok(None)` when the answer has none; `Err` when the
/// peer is not alive and serving.
pub async fn live_field(
    admin: SocketAddr,
    uid: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<String>, Liveness> {
    let head = live_head(admin, timeout).await?;
    match verdict_of(&head, uid) {
        Liveness::Alive => Ok(header_value(&head, name)),
        verdict => Err(verdict),
    }
}

/// `GET /live` on `admin`: the answer's head, or the verdict when there was none.
async fn live_head(admin: SocketAddr, timeout: Duration) -> Result<Vec<u8>, Liveness> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(admin)).await {
        Err(_) => return Err(Liveness::Unknown),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(Liveness::Dead("refused")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(Liveness::Dead("reset")),
        // Unreachable host or network: the path is broken, which says nothing about the peer.
        Ok(Err(_)) => return Err(Liveness::Unknown),
        Ok(Ok(stream)) => stream,
    };
    let exchange = async {
        stream.write_all(b"GET /live HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n\r\n").await?;
        read_head(&mut stream).await
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(head)) => Ok(head),
        Ok(Err(_)) => Err(Liveness::Dead("connection failed")),
        // Connected, then silence: the process is hung (stopped, or stuck).
        Err(_) => Err(Liveness::Dead(SILENT)),
    }
}

/// The answer's head: up to the blank line, the end of the stream, or [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    if head.len() < 12 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(head)
}

/// The value of header `name` in an answer's head, if there (names are case-insensitive).
fn header_value(head: &[u8], name: &str) -> Option<String> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let (field, value) = line.split_at_checked(name.len())?;
        let value = value.strip_prefix(b":")?;
        field.eq_ignore_ascii_case(name.as_bytes()).then(|| String::from_utf8_lossy(value.trim_ascii()).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_live_peer_is_alive_and_a_draining_one_is_not() {
        let live = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlive\n").await;
        assert_eq!(probe(live, "", Duration::from_secs(2)).await, Liveness::Alive);
        let sick = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(sick, "", Duration::from_secs(2)).await, Liveness::Dead("not live"));
        let reader =
            serve_once(b"HTTP/1.1 200 OK\r\nHandover-Reads: counter-v1, counter-v2\r\ncontent-length: 5\r\n\r\nlive\n")
                .await;
        let reads = |admin| live_field(admin, "", "handover-reads", Duration::from_secs(2));
        assert_eq!(reads(reader).await, Ok(Some("counter-v1, counter-v2".to_owned())));
        let undeclared = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlive\n").await;
        assert_eq!(reads(undeclared).await, Ok(None));
    }

    #[tokio::test]
    async fn only_a_status_of_exactly_200_is_alive() {
        for garbage in [&b"HTTP/1.1 2000 OK\r\n\r\n"[..], b"HTTP/1.1 200x\r\n\r\n", b"HTTP/1.1 20\r\n\r\nxxxxxx"] {
            let peer = serve_once(garbage).await;
            assert_eq!(
                probe(peer, "", Duration::from_secs(2)).await,
                Liveness::Dead("not live"),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        let bare = serve_once(b"HTTP/1.1 200\r\n\r\n").await;
        assert_eq!(probe(bare, "", Duration::from_secs(2)).await, Liveness::Alive, "the reason phrase is optional");
    }

    #[tokio::test]
    async fn only_an_answer_proves_who_is_at_a_peers_address() {
        let timeout = Duration::from_millis(300);
        let peer = serve_once(b"HTTP/1.1 200 OK\r\nHandover-Pod-Uid: u-peer\r\n\r\n").await;
        assert_eq!(identify(peer, "u-peer", timeout).await, Identity::ThePeer);
        let stranger = serve_once(b"HTTP/1.1 200 OK\r\nHandover-Pod-Uid: u-stranger\r\n\r\n").await;
        assert_eq!(identify(stranger, "u-peer", timeout).await, Identity::NotThePeer("another pod"));
        let app = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
        assert_eq!(identify(app, "u-peer", timeout).await, Identity::NotThePeer("not live"));
        let nobody = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let nobody_addr = nobody.local_addr().expect("addr");
        drop(nobody);
        assert_eq!(identify(nobody_addr, "u-peer", timeout).await, Identity::NotThePeer("refused"));
        // Accepted (the kernel's backlog), never answered: a peer starved of CPU looks so too.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert_eq!(identify(silent.local_addr().expect("addr"), "u-peer", timeout).await, Identity::Unsure);
    }

    #[tokio::test]
    async fn another_pod_at_the_peers_address_is_not_the_peer() {
        let answer = |uid: &'static str| -> &'static [u8] {
            match uid {
                "u-peer" => b"HTTP/1.1 200 OK\r\nHandover-Pod-Uid: u-peer\r\ncontent-length: 5\r\n\r\nlive\n",
                _ => b"HTTP/1.1 200 OK\r\nHandover-Pod-Uid: u-stranger\r\ncontent-length: 5\r\n\r\nlive\n",
            }
        };
        let peer = serve_once(answer("u-peer")).await;
        assert_eq!(probe(peer, "u-peer", Duration::from_secs(2)).await, Liveness::Alive);
        let stranger = serve_once(answer("u-stranger")).await;
        assert_eq!(probe(stranger, "u-peer", Duration::from_secs(2)).await, Liveness::Dead("another pod"));
        let stranger = serve_once(answer("u-stranger")).await;
        let reads = live_field(stranger, "u-peer", "handover-reads", Duration::from_secs(2)).await;
        assert_eq!(reads, Err(Liveness::Dead("another pod")));
        // A sidecar of an older release names no pod.
        let older = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlive\n").await;
        assert_eq!(probe(older, "u-peer", Duration::from_secs(2)).await, Liveness::Alive);
    }

    #[tokio::test]
    async fn a_closed_port_is_dead_and_a_silent_listener_is_hung() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed = listener.local_addr().expect("addr");
        drop(listener);
        assert_eq!(probe(closed, "", Duration::from_secs(2)).await, Liveness::Dead("refused"));
        // Accepts (the kernel does, into the backlog) but never answers: like a SIGSTOPped process.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        assert_eq!(probe(addr, "", Duration::from_millis(200)).await, Liveness::Dead("no answer"));
        drop(silent);
    }
}
