//! Each session's newest sealed state, kept by the session's rendezvous successor.
//!
//! Why: with several requests of a session in flight, each response seals the state of that
//! response, and proxies and browsers may deliver an older response after a newer one; the client
//! then keeps the older cookie. If the owner dies before the next response, the cookie alone
//! brings back an older state and acknowledged updates are lost. So the owner hands every state it
//! seals to the session's successor — the member that takes the session over — before the
//! response leaves (as Tomcat's `BackupManager` keeps one backup), and a takeover restores the
//! newest of the backup and the cookie (`decide::newest_copy`). The cookie stays the copy of last
//! resort when owner and successor both die: the client alone no longer holds the newest state.
//!
//! A backup is the sealed routing and state values (the owner's cookies, as opened by any member
//! of the pool): the successor opens nothing until a takeover needs it. The store is bounded in
//! bytes; past the bound the oldest backups go first (counted), their sessions fall back to the
//! cookie.
//!
//! A session the app ended (or rotated away from) leaves a **tombstone** here: a route with the
//! ended flag (`cookie::Route::ended`), no state (an empty state value), one version above every
//! state of the session, so it replaces the session's last backup and a takeover finds it newer
//! than any cookie of the session (`proxy/restore.rs`: a fresh session instead).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use handover_common::sync::lock;

/// The path a backup is put to (and asked from) on a peer's data port, with a signed forward mark
/// (`peer_auth`); without a verified mark the path is the app's like any other.
pub const BACKUP_PATH: &str = "/.well-known/handover/backup";
/// The header naming the session of a backup request (signed by the mark).
pub const BACKUP_HEADER: &str = "handover-backup";

/// Who asks for a session's backup (its pod uid and data address; its name is in the signed
/// mark): the pod asked remembers it, and asks it in turn if it takes the session over itself
/// (`proxy/takers.rs`).
pub const ASKER_HEADER: &str = "handover-asker";

/// One session's newest sealed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub session: String,
    /// The version of the state it holds (its route's `state_version`).
    pub version: u64,
    /// Unix seconds: the routing cookie's expiry; the backup goes then too.
    pub expires_at: u64,
    /// The sealed routing value (`cookie::seal_route`).
    pub route: String,
    /// The sealed state value (`cookie::seal_state`).
    pub state: String,
}

impl Backup {
    fn bytes(&self) -> usize {
        self.session.len() + self.route.len() + self.state.len() + 64
    }

    /// The wire form of a backup request's body: `route \n state`.
    pub fn body(&self) -> String {
        format!("{}\n{}", self.route, self.state)
    }

    /// Reads a body written by [`Backup::body`]: the route and the state value.
    pub fn parse_body(body: &str) -> Option<(&str, &str)> {
        body.split_once('\n')
    }
}

/// What [`Store::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Stored {
        evicted: usize,
    },
    /// The store holds this version or a newer one already (a reordered backup).
    Older,
    /// Larger than the whole store.
    TooLarge,
}

#[derive(Default)]
struct Inner {
    by_session: HashMap<String, (Backup, u64)>,
    /// Stamp of each put → session, oldest first: what to evict.
    order: BTreeMap<u64, String>,
    bytes: usize,
    stamp: u64,
}

/// The backups this pod keeps for the sessions it would take over.
pub struct Store {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl Store {
    pub fn new(max_bytes: usize) -> Store {
        Store { inner: Mutex::new(Inner::default()), max_bytes }
    }

    /// The most bytes it keeps (`--backup-max-bytes`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Keeps `b` unless a newer backup of its session is kept; evicts the oldest past the bound.
    pub fn put(&self, b: Backup) -> Put {
        if b.bytes() > self.max_bytes {
            return Put::TooLarge;
        }
        let mut inner = lock(&self.inner);
        if let Some((kept, stamp)) = inner.by_session.get(&b.session) {
            if kept.version >= b.version {
                return Put::Older;
            }
            let (stamp, freed) = (*stamp, kept.bytes());
            inner.order.remove(&stamp);
            inner.bytes -= freed;
        }
        inner.stamp += 1;
        let stamp = inner.stamp;
        inner.bytes += b.bytes();
        inner.order.insert(stamp, b.session.clone());
        inner.by_session.insert(b.session.clone(), (b, stamp));
        let mut evicted = 0;
        while inner.bytes > self.max_bytes {
            let Some((_, session)) = inner.order.pop_first() else { break };
            if let Some((gone, _)) = inner.by_session.remove(&session) {
                inner.bytes -= gone.bytes();
                evicted += 1;
            }
        }
        Put::Stored { evicted }
    }

    /// The backup of `session`, if one is kept and not expired.
    pub fn get(&self, session: &str, now_unix: u64) -> Option<Backup> {
        let inner = lock(&self.inner);
        inner.by_session.get(session).map(|(b, _)| b).filter(|b| b.expires_at > now_unix).cloned()
    }

    /// The sessions it keeps a backup of, oldest first (their backups are taken one at a time,
    /// [`Store::get`], not copied all at once).
    pub fn sessions(&self) -> Vec<String> {
        lock(&self.inner).order.values().cloned().collect()
    }

    /// Forgets the backup of `session` (taken over here: this pod owns it now).
    pub fn remove(&self, session: &str) {
        let mut inner = lock(&self.inner);
        if let Some((gone, stamp)) = inner.by_session.remove(session) {
            inner.order.remove(&stamp);
            inner.bytes -= gone.bytes();
        }
    }

    /// Drops expired backups; returns (backups, bytes) kept.
    pub fn expire(&self, now_unix: u64) -> (usize, usize) {
        let mut inner = lock(&self.inner);
        let expired: Vec<(String, u64, usize)> = inner
            .by_session
            .iter()
            .filter(|(_, (b, _))| b.expires_at <= now_unix)
            .map(|(s, (b, stamp))| (s.clone(), *stamp, b.bytes()))
            .collect();
        for (session, stamp, bytes) in expired {
            inner.by_session.remove(&session);
            inner.order.remove(&stamp);
            inner.bytes -= bytes;
        }
        (inner.by_session.len(), inner.bytes)
    }

    /// (backups, bytes) kept.
    pub fn size(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.by_session.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backup(session: &str, version: u64, state_len: usize) -> Backup {
        Backup {
            session: session.into(),
            version,
            expires_at: 100,
            route: "r".repeat(100),
            state: "s".repeat(state_len),
        }
    }

    #[test]
    fn the_newest_version_of_a_session_stays() {
        let store = Store::new(1 << 20);
        assert_eq!(store.put(backup("a", 5, 10)), Put::Stored { evicted: 0 });
        assert_eq!(store.put(backup("a", 4, 10)), Put::Older, "a reordered older backup");
        assert_eq!(store.put(backup("a", 5, 10)), Put::Older);
        assert_eq!(store.put(backup("a", 6, 20)), Put::Stored { evicted: 0 });
        assert_eq!(store.get("a", 0).map(|b| b.version), Some(6));
        assert_eq!(store.get("a", 100), None, "expired");
        store.remove("a");
        assert_eq!(store.get("a", 0), None);
        assert_eq!(store.size(), (0, 0));
    }

    #[test]
    fn the_oldest_backups_go_first_past_the_bound() {
        let one = backup("x", 1, 1000).bytes();
        let store = Store::new(3 * one);
        for s in ["a", "b", "c"] {
            assert_eq!(store.put(backup(s, 1, 1000)), Put::Stored { evicted: 0 });
        }
        assert_eq!(store.put(backup("a", 2, 1000)), Put::Stored { evicted: 0 }, "a replaced, not added");
        assert_eq!(store.put(backup("d", 1, 1000)), Put::Stored { evicted: 1 });
        assert_eq!(store.get("b", 0), None, "b was the oldest put");
        assert!(store.get("a", 0).is_some() && store.get("c", 0).is_some() && store.get("d", 0).is_some());
        assert_eq!(store.put(backup("huge", 1, 10 * one)), Put::TooLarge);
    }

    #[test]
    fn expiry_frees_the_bytes() {
        let store = Store::new(1 << 20);
        store.put(Backup { expires_at: 10, ..backup("a", 1, 10) });
        store.put(backup("b", 1, 10));
        assert_eq!(store.expire(10).0, 1);
        assert_eq!(store.size().1, backup("b", 1, 10).bytes());
    }

    #[test]
    fn a_body_round_trips() {
        let b = backup("a", 1, 10);
        assert_eq!(Backup::parse_body(&b.body()), Some((b.route.as_str(), b.state.as_str())));
        assert_eq!(Backup::parse_body("no newline"), None);
    }

    proptest! {
        #[test]
        fn the_bytes_kept_stay_within_the_bound_and_match_what_is_kept(
            puts in proptest::collection::vec((0u8..8, 0u64..20, 0usize..3000), 1..200),
        ) {
            let store = Store::new(10_000);
            for (s, v, len) in puts {
                store.put(backup(&format!("s{s}"), v, len));
                let (_, bytes) = store.size();
                prop_assert!(bytes <= 10_000);
            }
            let inner = lock(&store.inner);
            let sum: usize = inner.by_session.values().map(|(b, _)| b.bytes()).sum();
            prop_assert_eq!(sum, inner.bytes);
            prop_assert_eq!(inner.order.len(), inner.by_session.len());
        }
    }
}
