//! One owner when two pods take a session over at once.
//!
//! Registries lag, each at its own pace: a pod that does not list a member yet (it joined a
//! moment ago) can find itself a dead owner's successor while that member finds itself so too,
//! and two requests of the session sent together (a browser's parallel requests, with the same
//! cookie) reach one each. (With `--affinity takeover`, any two pods a session's requests reach.)
//! A takeover asks the first members in takeover order for the session's backup
//! ([`super::Proxy::find_backup`]); that lookup doubles as a claim:
//!
//! - a pod that holds the session, or has claimed it, answers [`Lookup::Held`]: the asker sends
//!   its request there;
//! - a pod taking the session over itself, not yet claimed, answers [`Lookup::Taking`]: of the
//!   two, the one later in the session's takeover order (`decide::outranks`, the same on every
//!   pod) sends its request to the other;
//! - any pod that does not hold it remembers the asker (for [`ASKED_FOR`]), and every takeover
//!   here asks every pod that asked (the session's first request may find one holding it and go
//!   there; its next one must find it too).
//!
//! So when one of two takers asks the other, one of them goes to the other: the claim and the
//! asker's record are made under one lock, and a pod claims only once it asked every asker after
//! that asker last asked it (an answer given before may predate the asker's own takeover). A
//! taker nobody asks (outside the first members of the other's takeover order) is not covered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::registry::Member;
use handover_common::sync;

/// How long a lookup's asker is remembered: longer than a registry takes to list a new member
/// (after which the two pods agree on the session's successor).
pub(super) const ASKED_FOR: Duration = Duration::from_secs(30);

/// Sessions whose askers are remembered at once; past it, lookups of further sessions are
/// answered without being remembered (as before the claim). Askers are peers with the pool key.
const MAX_REMEMBERED: usize = 10_000;

/// Askers remembered for one session: the oldest goes first.
const MAX_ASKERS: usize = 4;

/// What answers a peer's lookup of a session's backup.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// This pod holds the session, or claimed it: the asker goes there.
    Held,
    /// This pod is taking the session over and has not claimed it yet.
    Taking,
    /// The backup (or none): this pod does not hold the session.
    Answer,
}

#[derive(Default)]
pub(super) struct Takers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Sessions being taken over (or restored) here: whether claimed.
    taking: HashMap<String, bool>,
    /// Peers that asked for a session's backup while this pod did not hold it, not asked since.
    asked: HashMap<String, Vec<(Member, Instant)>>,
}

/// A session being taken over here, until dropped (once it is in the session table, or the
/// takeover gave up).
pub(super) struct Taking<'a> {
    takers: &'a Takers,
    session: String,
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        sync::lock(&self.takers.inner).taking.remove(&self.session);
    }
}

impl Takers {
    /// Marks `session` as being taken over here: before this pod asks any peer about it.
    pub(super) fn taking(&self, session: &str) -> Taking<'_> {
        sync::lock(&self.inner).taking.insert(session.to_owned(), false);
        Taking { takers: self, session: session.to_owned() }
    }

    /// Claims `session` for this pod's takeover, unless a peer asked about it that this takeover
    /// did not ask since (`asked`: each peer asked, and when): then those, for the caller to ask
    /// first (`anyway`: claimed all the same). A peer that asked before this pod asked it was
    /// taking the session over when it answered; one that asked after may have started since.
    pub(super) fn claim(&self, session: &str, now: Instant, anyway: bool, asked: &[(String, Instant)]) -> Vec<Member> {
        let mut inner = sync::lock(&self.inner);
        let askers = remembered(&mut inner, session, now);
        let unasked: Vec<Member> = askers
            .into_iter()
            .filter(|(m, at)| !asked.iter().any(|(name, when)| *name == m.name && when > at))
            .map(|(m, _)| m)
            .collect();
        if (unasked.is_empty() || anyway)
            && let Some(claimed) = inner.taking.get_mut(session)
        {
            *claimed = true;
        }
        unasked
    }

    /// A peer's lookup of `session`'s backup: `holds` says whether the session table holds it.
    /// `asker` is remembered unless this pod holds the session (`None`: the asker did not say who
    /// it is).
    pub(super) fn lookup(
        &self,
        session: &str,
        holds: impl FnOnce() -> bool,
        asker: Option<Member>,
        now: Instant,
    ) -> Lookup {
        let mut inner = sync::lock(&self.inner);
        // Under the lock: a takeover claims the session before it enters it in the table, and
        // drops its mark after, so one of the two is seen.
        let taking = inner.taking.get(session).copied();
        if taking == Some(true) || holds() {
            return Lookup::Held;
        }
        if let Some(asker) = asker {
            remember(&mut inner, session, asker, now);
        }
        if taking.is_some() { Lookup::Taking } else { Lookup::Answer }
    }

    /// The peers that asked for `session`'s backup in the last [`ASKED_FOR`]: a takeover here asks
    /// them, every one (the first may find one holding the session; the next, for another request
    /// of the session, must find it too).
    pub(super) fn askers(&self, session: &str, now: Instant) -> Vec<Member> {
        remembered(&mut sync::lock(&self.inner), session, now).into_iter().map(|(m, _)| m).collect()
    }
}

fn remember(inner: &mut Inner, session: &str, asker: Member, now: Instant) {
    let fresh = |at: &Instant| now.duration_since(*at) < ASKED_FOR;
    if inner.asked.len() >= MAX_REMEMBERED && !inner.asked.contains_key(session) {
        inner.asked.retain(|_, askers| askers.iter().any(|(_, at)| fresh(at)));
        if inner.asked.len() >= MAX_REMEMBERED {
            return;
        }
    }
    let askers = inner.asked.entry(session.to_owned()).or_default();
    askers.retain(|(m, at)| m.name != asker.name && fresh(at));
    if askers.len() >= MAX_ASKERS {
        askers.remove(0);
    }
    askers.push((asker, now));
}

/// The askers of `session` remembered, and when each asked; the expired ones forgotten.
fn remembered(inner: &mut Inner, session: &str, now: Instant) -> Vec<(Member, Instant)> {
    let Some(askers) = inner.asked.get_mut(session) else { return Vec::new() };
    askers.retain(|(_, at)| now.duration_since(*at) < ASKED_FOR);
    let fresh = askers.clone();
    if fresh.is_empty() {
        inner.asked.remove(session);
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        Member {
            name: name.to_owned(),
            uid: format!("{name}-uid"),
            addr: "10.0.0.1:8000".parse().expect("an address"),
            admin_port: None,
        }
    }

    fn names(members: Vec<Member>) -> Vec<String> {
        members.into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn a_pod_holding_a_session_or_having_claimed_it_says_so_and_forgets_the_asker() {
        let takers = Takers::default();
        let now = Instant::now();
        assert_eq!(takers.lookup("s", || true, Some(member("a")), now), Lookup::Held);
        let taking = takers.taking("s");
        assert!(takers.claim("s", now, false, &[]).is_empty());
        assert_eq!(takers.lookup("s", || false, Some(member("a")), now), Lookup::Held);
        drop(taking);
        assert!(takers.askers("s", now).is_empty(), "the askers go to this pod: none to ask");
    }

    #[test]
    fn a_pod_taking_a_session_over_claims_it_only_after_asking_every_asker() {
        let takers = Takers::default();
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(takers.lookup("s", || false, Some(member("a")), t0), Lookup::Answer);
        let _taking = takers.taking("s");
        assert_eq!(takers.lookup("s", || false, Some(member("b")), later(1)), Lookup::Taking);
        assert_eq!(names(takers.claim("s", later(2), false, &[])), ["a", "b"], "asked first, not claimed");
        // Asked at 3: `a` and `b` answered as they were then. `c` asks at 4; `b` again at 5: either
        // may have started a takeover of its own since.
        let asked = [("a".to_owned(), later(3)), ("b".to_owned(), later(3))];
        takers.lookup("s", || false, Some(member("c")), later(4));
        takers.lookup("s", || false, Some(member("b")), later(5));
        assert_eq!(names(takers.claim("s", later(6), false, &asked)), ["c", "b"], "still not claimed");
        let asked = [("a".to_owned(), later(3)), ("b".to_owned(), later(7)), ("c".to_owned(), later(7))];
        assert!(takers.claim("s", later(8), false, &asked).is_empty());
        assert_eq!(takers.lookup("s", || false, Some(member("d")), later(9)), Lookup::Held, "claimed");
    }

    #[test]
    fn askers_are_remembered_once_each_for_a_while() {
        let takers = Takers::default();
        let now = Instant::now();
        for name in ["a", "a", "b"] {
            assert_eq!(takers.lookup("s", || false, Some(member(name)), now), Lookup::Answer);
        }
        assert!(takers.askers("other", now).is_empty());
        assert!(takers.askers("s", now + ASKED_FOR).is_empty(), "forgotten after ASKED_FOR");
        takers.lookup("s", || false, Some(member("a")), now);
        takers.lookup("s", || false, Some(member("b")), now);
        assert_eq!(names(takers.askers("s", now)), ["a", "b"]);
        assert_eq!(names(takers.askers("s", now)), ["a", "b"], "every takeover here asks them");
    }

    #[test]
    fn the_askers_remembered_are_bounded() {
        let takers = Takers::default();
        let now = Instant::now();
        for i in 0..MAX_REMEMBERED + 10 {
            takers.lookup(&format!("s{i}"), || false, Some(member("a")), now);
        }
        for i in 0..MAX_ASKERS + 3 {
            takers.lookup("s0", || false, Some(member(&format!("m{i}"))), now);
        }
        {
            let inner = sync::lock(&takers.inner);
            assert_eq!(inner.asked.len(), MAX_REMEMBERED, "sessions past the bound are not remembered");
            let s0: Vec<&str> = inner.asked["s0"].iter().map(|(m, _)| m.name.as_str()).collect();
            assert_eq!(s0, ["m3", "m4", "m5", "m6"], "the oldest askers go first");
        }
        let later = now + ASKED_FOR;
        takers.lookup("new", || false, Some(member("a")), later);
        assert_eq!(names(takers.askers("new", later)), ["a"], "expired sessions make room");
        assert_eq!(sync::lock(&takers.inner).asked.len(), 1, "the expired ones gone");
    }
}
