//! Can this sidecar reach its peers? What it saw of them lately, and what it reports.
//!
//! A sidecar reaches its peers in two ways: forwards (a failed or slow one is followed by a probe
//! of the peer's admin `/live`, [`crate::peer_probe`]) and backups (each sealed state is handed to
//! the session's successor on its data port). A probe that answers `unknown` (no connection at
//! all) and a backup whose connection times out or finds no route are what a default-deny
//! NetworkPolicy, a partition or a broken mesh look like: the peer may be alive, this pod cannot
//! get to it. A refused connection is not one: that peer is gone, and the registry catches up.
//!
//! The tracker keeps, per peer, the last such problem; the [`verdict`] is `false` while any is
//! younger than [`WINDOW`]. Pure, time passed in. In a pod, `registry_kube` writes the verdict
//! as the pod condition [`CONDITION_TYPE`] whenever it changes ([`should_report`]), and the
//! operator sums the pool's pods up into the pool's condition `PeersReachable`. It is advisory:
//! this pod cannot tell a peer's broken network from its own, nor a partition from a policy; and a
//! sidecar that makes no contact (no traffic) sees no problem.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use handover_common::sync;

use crate::registry::first_named;

/// The pod condition a sidecar writes on its own pod.
pub const CONDITION_TYPE: &str = "handover.dev/PeersReachable";

/// How long a failed contact with a peer keeps the verdict `false`.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Peers remembered at most (a pool's members; bounded against a registry gone wild).
const MAX_PEERS: usize = 1024;

/// A failed contact with a peer that says the path to it is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// A liveness probe of its admin port got no connection at all.
    ProbeUnknown,
    /// A backup could not connect to its data port (timeout, no route).
    BackupConnect,
}

impl Problem {
    fn says(self) -> &'static str {
        match self {
            Problem::ProbeUnknown => "probe of its admin port got no connection",
            Problem::BackupConnect => "backup could not connect to its data port",
        }
    }
}

/// What a sidecar reports about its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reachable: bool,
    /// CamelCase: `PeersReachable` or `PeersUnreachable`.
    pub reason: &'static str,
    /// For a person; deterministic (no times), so an unchanged view is not written again.
    pub message: String,
}

/// The verdict from the last problem seen with each peer, at `now`.
pub fn verdict(last: &BTreeMap<String, (Instant, Problem)>, now: Instant, window: Duration) -> Verdict {
    let recent: Vec<(&String, &Problem)> = last
        .iter()
        .filter(|(_, (at, _))| now.saturating_duration_since(*at) < window)
        .map(|(p, (_, why))| (p, why))
        .collect();
    if recent.is_empty() {
        Verdict {
            reachable: true,
            reason: "PeersReachable",
            message: format!("no failed contact with a peer in the last {}s", window.as_secs()),
        }
    } else {
        Verdict {
            reachable: false,
            reason: "PeersUnreachable",
            message: format!(
                "could not reach {} in the last {}s",
                first_named(recent.iter().map(|(peer, why)| format!("{peer} ({})", why.says()))),
                window.as_secs()
            ),
        }
    }
}

/// Whether `current` must be written: nothing written yet (a restarted sidecar must not leave a
/// stale condition behind), or it differs from what was.
pub fn should_report(written: Option<&Verdict>, current: &Verdict) -> bool {
    written != Some(current)
}

/// The last problem seen with each peer.
#[derive(Default)]
pub struct Tracker {
    last: Mutex<BTreeMap<String, (Instant, Problem)>>,
}

impl Tracker {
    /// Notes a failed contact with `peer`.
    pub fn note(&self, problem: Problem, peer: &str, now: Instant) {
        let mut last = sync::lock(&self.last);
        if last.len() >= MAX_PEERS && !last.contains_key(peer) {
            last.retain(|_, (at, _)| now.saturating_duration_since(*at) < WINDOW);
            if last.len() >= MAX_PEERS {
                return;
            }
        }
        last.insert(peer.to_owned(), (now, problem));
    }

    /// The verdict at `now` (problems past the window are dropped).
    pub fn verdict(&self, now: Instant) -> Verdict {
        let mut last = sync::lock(&self.last);
        last.retain(|_, (at, _)| now.saturating_duration_since(*at) < WINDOW);
        verdict(&last, now, WINDOW)
    }
}

/// Whether a failed connect says the path to the peer is broken (not that the peer is gone).
pub fn path_broken(e: &crate::upstream::ConnectError) -> bool {
    use crate::upstream::ConnectError;
    match e {
        ConnectError::Timeout(_) => true,
        ConnectError::Io(_, io) => {
            !matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset)
        }
        ConnectError::Handshake(..) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_contact_makes_peers_unreachable_for_the_window_then_it_clears() {
        let t = Tracker::default();
        let start = Instant::now();
        assert!(t.verdict(start).reachable, "nothing seen: reachable");
        t.note(Problem::ProbeUnknown, "cart-b", start);
        t.note(Problem::BackupConnect, "cart-a", start + Duration::from_secs(10));
        let v = t.verdict(start + Duration::from_secs(20));
        assert!(!v.reachable);
        assert_eq!(v.reason, "PeersUnreachable");
        assert_eq!(
            v.message,
            "could not reach cart-a (backup could not connect to its data port), cart-b (probe of its admin port got no connection) in the last 60s",
            "peers sorted by name: the same view gives the same message"
        );
        let v = t.verdict(start + WINDOW + Duration::from_secs(1));
        assert!(v.message.starts_with("could not reach cart-a ("), "cart-b's problem is past the window: {v:?}");
        let v = t.verdict(start + WINDOW + Duration::from_secs(11));
        assert_eq!((v.reachable, v.reason), (true, "PeersReachable"));
    }

    #[test]
    fn a_partition_of_a_large_pool_writes_a_short_condition() {
        let now = Instant::now();
        let t = Tracker::default();
        for i in 0..1000 {
            t.note(Problem::BackupConnect, &format!("cart-7d9f8c6b5-{i:05}"), now);
        }
        let v = t.verdict(now);
        assert!(!v.reachable);
        assert!(v.message.len() < 1024, "a pod condition message of {} bytes", v.message.len());
        assert!(v.message.starts_with("could not reach cart-7d9f8c6b5-00000 ("), "{}", v.message);
        assert!(v.message.contains("and 992 more"), "{}", v.message);
    }

    #[test]
    fn a_verdict_is_written_first_and_then_only_when_it_changes() {
        let now = Instant::now();
        let mut seen = BTreeMap::new();
        let fine = verdict(&seen, now, WINDOW);
        assert!(should_report(None, &fine), "a restarted sidecar overwrites what its predecessor wrote");
        assert!(!should_report(Some(&fine), &fine));
        seen.insert("b".to_owned(), (now, Problem::ProbeUnknown));
        let bad = verdict(&seen, now, WINDOW);
        assert!(should_report(Some(&fine), &bad));
        assert!(!should_report(Some(&bad), &verdict(&seen, now + Duration::from_secs(5), WINDOW)));
        seen.insert("c".to_owned(), (now, Problem::ProbeUnknown));
        assert!(should_report(Some(&bad), &verdict(&seen, now, WINDOW)), "another peer: a new message");
    }

    #[test]
    fn only_a_connect_that_goes_nowhere_is_a_broken_path() {
        use crate::upstream::ConnectError;
        let addr: std::net::SocketAddr = "10.0.0.1:8000".parse().expect("addr");
        let io = |kind| ConnectError::Io(addr, std::io::Error::from(kind));
        assert!(path_broken(&ConnectError::Timeout(addr)));
        assert!(path_broken(&io(std::io::ErrorKind::HostUnreachable)));
        assert!(!path_broken(&io(std::io::ErrorKind::ConnectionRefused)), "the peer is gone: not a path problem");
        assert!(!path_broken(&io(std::io::ErrorKind::ConnectionReset)));
    }
}
