//! What to do with a request: a pure function of (cookie, local session table, registry, now).
//!
//! The proxy gathers the inputs, calls [`route`] and carries out the answer; it never decides
//! anything itself. See ARCHITECTURE.md, "The path of a request", step 4.

use std::time::{Duration, Instant};

use crate::cookie::Route;
use crate::registry::Member;

/// What a pod does with a session whose owner is alive elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Forward the request to the owner's sidecar: one owner per session, no forks.
    Forward,
    /// Take the session over wherever it lands (for pools behind sticky routing).
    Takeover,
}

/// How the application hands its state to the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The app puts its state in a `Handover-State` response header.
    Push,
    /// The sidecar fetches `GET <statePath>` when the last snapshot is older than the interval.
    Pull,
    /// Pushed state when there is one, pulled otherwise.
    Both,
}

/// This pod, as cookies name it.
#[derive(Clone, Copy, Debug)]
pub struct Me<'a> {
    pub name: &'a str,
    pub uid: &'a str,
}

/// Everything a routing decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The request's routing cookie, if it opened.
    pub cookie: Option<&'a Route>,
    /// The version of this session the local app holds, from the local session table.
    pub local_version: Option<u64>,
    /// Live members from the registry.
    pub live: &'a [Member],
    /// Members this sidecar just failed to reach: dead to it whatever the registry says.
    pub unreachable: &'a [String],
    pub me: Me<'a>,
    /// The request was already forwarded once by a peer: never forward it again.
    pub forwarded: bool,
    pub affinity: Affinity,
}

/// Why a request goes to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardReason {
    /// The session's owner is alive.
    Owner,
    /// The owner is dead and that peer is the session's successor.
    Successor,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No valid cookie: a new session, served here.
    New,
    /// The local app holds the session: serve here.
    Serve,
    /// Restore the cookie's state into the local app, then serve here. `takeover` when the owner
    /// was another pod.
    Restore { takeover: bool },
    /// Send the request to a peer's sidecar.
    Forward { to: Member, reason: ForwardReason },
}

/// Decides where a request is served.
pub fn route(i: Inputs<'_>) -> Decision {
    let Some(cookie) = i.cookie else {
        return Decision::New;
    };
    let holds_current = i.local_version.is_some_and(|v| v >= cookie.version);
    let owner_is_me = *cookie.owner.name == *i.me.name && *cookie.owner.uid == *i.me.uid;
    if holds_current {
        // The local app already has this version or a newer one: the owner's copy wins over an
        // older cookie, and a second request of a session just taken over is served, not restored
        // again.
        return Decision::Serve;
    }
    if owner_is_me {
        // Ours, but the app lost it (app restarted) or the sidecar's table did (sidecar restarted).
        return Decision::Restore { takeover: false };
    }
    if i.forwarded || i.affinity == Affinity::Takeover {
        return Decision::Restore { takeover: true };
    }
    let reachable = |m: &&Member| !i.unreachable.contains(&m.name);
    let owner = i.live.iter().filter(reachable).find(|m| *m.name == *cookie.owner.name && *m.uid == *cookie.owner.uid);
    if let Some(owner) = owner {
        return Decision::Forward { to: owner.clone(), reason: ForwardReason::Owner };
    }
    match successor(&cookie.session, i.live.iter().filter(reachable)) {
        Some(s) if s.name != i.me.name => Decision::Forward { to: s.clone(), reason: ForwardReason::Successor },
        // This pod is the successor, or it knows no live member at all (then the request is here,
        // and serving it beats refusing it).
        _ => Decision::Restore { takeover: true },
    }
}

/// The member that takes over a dead owner's session: rendezvous (highest random weight) hashing,
/// so every sidecar with the same member list picks the same one, and a member leaving moves only
/// its own sessions.
pub fn successor<'a>(session: &str, candidates: impl Iterator<Item = &'a Member>) -> Option<&'a Member> {
    candidates.max_by_key(|m| rank(session, &m.name, &m.uid))
}

/// Where a pod that passes its requests on (draining) sends one of `session`: the member it handed
/// the session to at its drain (`handed_to`), else the session's successor among `others` (the
/// other members it can reach) — never back to the member that forwarded it here (`from`). Two
/// pods draining at once, both still listed, would otherwise hand a request back and forth: each
/// the other's successor, or the one it handed the session to, thousands of times in a second.
/// `None`: no member left to pass it to.
pub fn pass_on_to<'a>(
    session: &str,
    handed_to: Option<&'a Member>,
    others: impl Iterator<Item = &'a Member>,
    from: Option<&str>,
) -> Option<&'a Member> {
    let not_back = |m: &&Member| from != Some(m.name.as_str());
    handed_to.filter(not_back).or_else(|| successor(session, others.filter(not_back)))
}

/// The members in the order they take a session over: the successor first. A takeover looks for
/// the session's backup on the first [`BACKUP_LOOKUP_RANKS`] of them, so a backup kept by the
/// successor of the moment is found after up to that many members joined above it.
pub fn ranked<'a>(session: &str, candidates: impl Iterator<Item = &'a Member>) -> Vec<&'a Member> {
    let mut ranked: Vec<&Member> = candidates.collect();
    ranked.sort_by_key(|m| std::cmp::Reverse(rank(session, &m.name, &m.uid)));
    ranked
}

/// Whether `member` comes before the pod `name` (uid `uid`) in `session`'s takeover order
/// ([`ranked`]): the tie-break between two pods taking a session over at once, the same on every
/// pod whatever its registry lists.
pub fn outranks(session: &str, member: &Member, name: &str, uid: &str) -> bool {
    rank(session, &member.name, &member.uid) > rank(session, name, uid)
}

/// A member's place in `session`'s takeover order: its weight, then its name.
fn rank<'a>(session: &str, name: &'a str, uid: &str) -> (u64, &'a str) {
    (weight(session, name, uid), name)
}

/// How many members of [`ranked`] a takeover asks for the session's backup.
pub const BACKUP_LOOKUP_RANKS: usize = 3;

/// FNV-1a over session, member name and uid, then a SplitMix64 finalizer for spread. Written out
/// (not `DefaultHasher`) so that every build of the sidecar computes the same weights.
fn weight(session: &str, name: &str, uid: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [session.as_bytes(), &[0xff], name.as_bytes(), &[0xff], uid.as_bytes()] {
        for b in part {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// When the sidecar must fetch the app's state before answering (pull and both modes).
#[derive(Clone, Copy, Debug)]
pub struct PullInputs {
    pub mode: Mode,
    /// The app pushed a state on this response.
    pub pushed: bool,
    /// When this pod last sealed a snapshot of the session.
    pub last_sealed: Option<Instant>,
    pub now: Instant,
    pub interval: Duration,
    /// Since when this pod is shutting down: while it drains, every response carries a fresh
    /// snapshot, so a pod that leaves gracefully loses nothing even in pull mode.
    pub draining_since: Option<Instant>,
}

/// Whether to pull the state now.
pub fn should_pull(p: PullInputs) -> bool {
    if p.mode == Mode::Push || p.pushed {
        return false;
    }
    let Some(last) = p.last_sealed else {
        return true;
    };
    p.draining_since.is_some() || p.now.saturating_duration_since(last) >= p.interval
}

/// What the app said about the session's state on this response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// A `Handover-State` header; `empty` when its value was empty (the app deletes the state).
    Pushed { empty: bool },
    /// A pull answered: `empty` when the app has no state for the session (`404`, or no bytes).
    Pulled { empty: bool },
    /// A pull was needed but failed (error, timeout, unexpected status).
    PullFailed,
    /// Nothing: no push, and no pull was due.
    Nothing,
}

/// What a response does to the client's state cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealAction {
    /// Seal a state into the cookie, from `source`.
    Seal(SealSource),
    /// Delete the client's cookie (every chunk it holds): the app ended the session's state.
    Delete,
    /// No `Set-Cookie`: the client keeps whatever cookie it has (or has none).
    Keep,
}

/// Where a sealed state comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealSource {
    /// The app pushed it on this response.
    Push,
    /// The sidecar pulled it from the app.
    Pull,
    /// The cookie's own state, resealed naming this pod as the session's new owner.
    Carry,
    /// The cookie's own state, resealed with a new expiry: the session is active but its state
    /// did not change (push mode), and the cookie would otherwise expire under it.
    Refresh,
}

impl SealSource {
    /// The `source` label of `handover_snapshots_total`.
    pub fn label(self) -> &'static str {
        match self {
            SealSource::Push => "push",
            SealSource::Pull => "pull",
            SealSource::Carry => "carry",
            SealSource::Refresh => "refresh",
        }
    }
}

/// Whether a response seals, deletes or leaves the client's cookie alone.
///
/// A session exists once the app gives it state: a request that carried no cookie (a static file,
/// a bot, a health check, a cross-site return under `SameSite=Lax`) is sealed only when the app
/// pushed or a pull returned bytes, so it never mints a cookie for nothing and never overwrites a
/// cookie the client has but did not send. A pull that finds no state for a session that has a
/// cookie deletes nothing: the app may have lost it (restarted mid-request), and the cookie is
/// then the only copy left; an app ends a state by pushing an empty one.
///
/// A cookie whose state the app refused to restore (`Dropped`) is replaced by the fresh session's
/// state if the app gives it one, and deleted otherwise: it must not come back on every request.
///
/// `refresh_due` ([`refresh_due`]): the cookie is the newest copy of the session and past half its
/// life; it is resealed so that an active session never expires under its client.
pub fn seal_action(cookie: CookieSeen, offered: Offered, owner_changed: bool, refresh_due: bool) -> SealAction {
    match (offered, cookie) {
        (Offered::Pushed { empty: false }, _) => SealAction::Seal(SealSource::Push),
        (Offered::Pulled { empty: false }, _) => SealAction::Seal(SealSource::Pull),
        (_, CookieSeen::Dropped) => SealAction::Delete,
        (Offered::Pushed { empty: true }, CookieSeen::Valid) => SealAction::Delete,
        // A session just taken over (or restored) gets a cookie naming its new owner, so its next
        // request comes here directly instead of through a forward to the successor.
        (_, CookieSeen::Valid) if owner_changed => SealAction::Seal(SealSource::Carry),
        (_, CookieSeen::Valid) if refresh_due => SealAction::Seal(SealSource::Refresh),
        _ => SealAction::Keep,
    }
}

/// What a response seals, and as which version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub action: SealAction,
    /// The version a sealed state carries; for `Keep` and `Delete`, the newest already handed out.
    pub version: u64,
}

/// Everything [`seal`] depends on.
#[derive(Clone, Copy, Debug)]
pub struct SealInputs {
    pub cookie: CookieSeen,
    pub offered: Offered,
    pub owner_changed: bool,
    pub refresh_due: bool,
    /// The newest version this pod restored or sealed for the session (its session table).
    pub local_version: Option<u64>,
    /// The version of the request's routing cookie.
    pub cookie_version: Option<u64>,
}

/// Which state a response seals and with which version: [`seal_action`], and for a new state
/// (pushed or pulled) a version above every version of the session this pod has seen; a carried
/// or refreshed state keeps its version (same state, new owner or expiry). The proxy calls it with the session table
/// locked and writes the version back before it unlocks, so two concurrent responses of a session
/// never carry the same version: versions strictly increase per session, in the order the states
/// were taken (pulls of one session are taken under one lock; pushed states in the order their
/// responses reach the sidecar).
pub fn seal(i: SealInputs) -> Seal {
    let action = seal_action(i.cookie, i.offered, i.owner_changed, i.refresh_due);
    let newest = i.local_version.max(i.cookie_version).unwrap_or(0);
    let version = match action {
        SealAction::Seal(SealSource::Push | SealSource::Pull) => newest + 1,
        // The same state, resealed naming a new owner or a new expiry: the same version.
        SealAction::Seal(SealSource::Carry | SealSource::Refresh) | SealAction::Keep | SealAction::Delete => newest,
    };
    Seal { action, version }
}

/// Which copy of a session's state a restore uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    /// The state chunks the client sent (they opened, and are the route's version).
    Cookie,
    /// The backup a pool member keeps (newer: the client's newest response may not have reached
    /// it, or reached it before an older one, or it dropped the chunks).
    Backup,
    /// Neither: the session's state is lost.
    Lost,
}

/// The newest copy: the backup when it is newer than the cookie's state (or the cookie has none).
pub fn newest_copy(cookie_state_version: Option<u64>, backup_version: Option<u64>) -> Copy {
    match (cookie_state_version, backup_version) {
        (Some(c), Some(b)) if b > c => Copy::Backup,
        (Some(_), _) => Copy::Cookie,
        (None, Some(_)) => Copy::Backup,
        (None, None) => Copy::Lost,
    }
}

/// Whether a cookie should be resealed with a new expiry although its state did not change: it is
/// past half its life (`issued_at + max_age / 2`, unix seconds), and the local app holds exactly
/// its version — the cookie is the newest copy, so resealing its state loses nothing. (A client
/// presenting an older cookie than the app holds is not refreshed: that would make an old state
/// look newer than the app's.)
pub fn refresh_due(cookie: &Route, local_version: Option<u64>, max_age_secs: u64, now_unix: u64) -> bool {
    local_version == Some(cookie.version) && now_unix >= cookie.issued_at.saturating_add(max_age_secs / 2)
}

/// Whether a session is past its absolute timeout: `absolute_secs` after it was first sealed
/// (`created_at`, unix seconds), however active it was. `None`: no absolute timeout.
pub fn past_absolute(created_at: u64, absolute_secs: Option<u64>, now_unix: u64) -> bool {
    absolute_secs.is_some_and(|limit| now_unix >= created_at.saturating_add(limit))
}

/// When a cookie sealed now expires (unix seconds): the idle timeout from now, but never past the
/// session's absolute deadline — a browser drops the cookie by itself at that deadline.
pub fn cookie_expiry(now_unix: u64, idle_secs: u64, created_at: u64, absolute_secs: Option<u64>) -> u64 {
    let idle = now_unix.saturating_add(idle_secs);
    match absolute_secs {
        Some(limit) => idle.min(created_at.saturating_add(limit)),
        None => idle,
    }
}

/// The version a session's table entry takes when this pod learns the session anew, at least
/// `known` (the versions of the copy restored and of the client's cookie): the app's copy checked
/// after the table lost the session (the sidecar restarted, the entry was evicted, the connection
/// to an app that reports no instance closed) or a copy restored into the app. The client may
/// present an older cookie than the newest this pod handed out before it forgot the session
/// (responses reach a client in any order; a second tab, the back button); counting on from that
/// cookie would hand those versions out again, and the successor, whose backup holds the newest,
/// would refuse every later backup and tombstone as older: the session's updates, or its end,
/// lost at the next failover. So the count goes on from the clock's microseconds (`now_micros`)
/// when they are ahead: one version is handed out per sealed response, far fewer than one a
/// microsecond, so every version handed out before now is below them (on another pod too, as far
/// as its clock is behind this one's by less than the time between the two events).
pub fn relearned_version(known: u64, now_micros: u64) -> u64 {
    known.max(now_micros)
}

/// The version of the tombstone of a session that ended when its newest version was `newest`:
/// above every state the session had, so a takeover finds it newer than any cookie of it
/// ([`newest_copy`]) and every member keeps it over an older backup.
pub fn tombstone_version(newest: u64) -> u64 {
    newest.saturating_add(1)
}

/// The state cookie of the request, as far as sealing the response goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieSeen {
    /// None, or one that did not open (it may be another pool's, or arrive whole next time: it is
    /// left alone).
    Absent,
    /// It opened, and the response's session is its session.
    Valid,
    /// It opened, but the app refused to restore its state: the response's session is a fresh one.
    Dropped,
}

/// What an answer of the app to a restore (`PUT <statePath>`) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreVerdict {
    /// Restored.
    Done,
    /// "This state is not for me" (a 4xx: a format this release cannot read, a state it judges
    /// invalid): drop the state and start a fresh session; retrying cannot help.
    Refused,
    /// A failure that may pass (a 5xx, `408`, `429`, anything unexpected): try again, a bounded
    /// number of times, then answer `502` and keep the client's cookie.
    Retry,
}

/// Whether an app that declared `Handover-Reads: <declared>` reads states of `format`.
pub fn reads_format(declared: &str, format: &str) -> bool {
    declared.split(',').any(|f| f.trim() == format)
}

/// Reads the app's answer to a restore.
pub fn restore_verdict(status: u16) -> RestoreVerdict {
    match status {
        200..=299 => RestoreVerdict::Done,
        // Timeouts and rate limits are the app's state of the moment, not its verdict on the state.
        408 | 429 => RestoreVerdict::Retry,
        400..=499 => RestoreVerdict::Refused,
        _ => RestoreVerdict::Retry,
    }
}

#[cfg(test)]
mod timeouts {
    use super::*;

    #[test]
    fn the_absolute_timeout_counts_from_creation_and_zero_is_none() {
        assert!(!past_absolute(1_000, None, u64::MAX));
        assert!(!past_absolute(1_000, Some(60), 1_059));
        assert!(past_absolute(1_000, Some(60), 1_060));
        assert!(!past_absolute(u64::MAX - 1, Some(60), u64::MAX - 1), "no overflow");
    }

    #[test]
    fn a_cookie_never_outlives_the_absolute_deadline() {
        assert_eq!(cookie_expiry(1_000, 600, 0, None), 1_600, "idle only");
        assert_eq!(cookie_expiry(1_000, 600, 900, Some(3_600)), 1_600, "far from the deadline");
        assert_eq!(cookie_expiry(1_000, 600, 900, Some(300)), 1_200, "the deadline comes first");
    }

    #[test]
    fn a_tombstone_is_newer_than_every_cookie_of_its_session() {
        for newest in [0, 1, 41] {
            let tomb = tombstone_version(newest);
            for cookie_state_version in 0..=newest {
                assert_eq!(newest_copy(Some(cookie_state_version), Some(tomb)), Copy::Backup);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::Owner;
    use proptest::prelude::*;

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            uid: format!("uid-{name}"),
            addr: "127.0.0.1:1".parse().expect("addr"),
            admin_port: None,
        }
    }

    #[test]
    fn of_two_members_the_one_first_in_the_takeover_order_outranks_the_other() {
        let members: Vec<Member> = ["a", "b", "c", "d", "e"].into_iter().map(member).collect();
        for session in ["s1", "s2", "s3", "s4"] {
            let order = ranked(session, members.iter());
            for (i, first) in order.iter().enumerate() {
                for later in &order[i + 1..] {
                    assert!(outranks(session, first, &later.name, &later.uid), "{session}");
                    assert!(!outranks(session, later, &first.name, &first.uid), "{session}");
                }
                assert!(!outranks(session, first, &first.name, &first.uid), "not itself");
            }
        }
    }

    fn cookie_from(owner: &str, version: u64) -> Route {
        Route {
            session: "session-1".into(),
            owner: Owner { name: owner.into(), uid: format!("uid-{owner}").into(), addr: "".into() },
            version,
            state_version: version,
            issued_at: 0,
            expires_at: u64::MAX,
            chunks: 1,
            state_bytes: 100,
            carry: 0,
            created_at: 0,
            ended: false,
            inline: None,
        }
    }

    struct Case<'a> {
        cookie: Option<Route>,
        local: Option<u64>,
        live: Vec<Member>,
        unreachable: Vec<String>,
        me: &'a str,
        forwarded: bool,
        affinity: Affinity,
    }

    impl Case<'_> {
        fn route(&self) -> Decision {
            let uid = format!("uid-{}", self.me);
            route(Inputs {
                cookie: self.cookie.as_ref(),
                local_version: self.local,
                live: &self.live,
                unreachable: &self.unreachable,
                me: Me { name: self.me, uid: &uid },
                forwarded: self.forwarded,
                affinity: self.affinity,
            })
        }
    }

    fn case(cookie: Option<Route>) -> Case<'static> {
        Case {
            cookie,
            local: None,
            live: vec![member("a"), member("b"), member("c")],
            unreachable: vec![],
            me: "a",
            forwarded: false,
            affinity: Affinity::Forward,
        }
    }

    /// Which of `live` is the successor of the test session.
    fn successor_of(live: &[Member]) -> String {
        successor("session-1", live.iter()).map(|m| m.name.clone()).expect("some member")
    }

    #[test]
    fn no_cookie_is_a_new_session() {
        assert_eq!(case(None).route(), Decision::New);
    }

    #[test]
    fn owner_serves_when_its_app_holds_the_version() {
        let mut c = case(Some(cookie_from("a", 5)));
        c.local = Some(5);
        assert_eq!(c.route(), Decision::Serve);
        c.local = Some(9); // the client presented an older cookie: the owner's copy wins
        assert_eq!(c.route(), Decision::Serve);
    }

    #[test]
    fn owner_restores_when_its_app_lost_the_session() {
        let mut c = case(Some(cookie_from("a", 5)));
        assert_eq!(c.route(), Decision::Restore { takeover: false });
        c.local = Some(4);
        assert_eq!(c.route(), Decision::Restore { takeover: false });
    }

    #[test]
    fn a_pod_recreated_under_the_same_name_is_not_the_owner() {
        let mut c = case(Some(cookie_from("a", 5)));
        c.cookie.as_mut().expect("cookie").owner.uid = "old-uid".into();
        c.live = vec![member("a")];
        assert_eq!(c.route(), Decision::Restore { takeover: true });
    }

    #[test]
    fn live_owner_elsewhere_gets_the_request() {
        let c = case(Some(cookie_from("b", 5)));
        assert_eq!(c.route(), Decision::Forward { to: member("b"), reason: ForwardReason::Owner });
    }

    #[test]
    fn a_forwarded_request_is_never_forwarded_again() {
        let mut c = case(Some(cookie_from("b", 5)));
        c.forwarded = true;
        assert_eq!(c.route(), Decision::Restore { takeover: true });
        c.local = Some(5);
        assert_eq!(c.route(), Decision::Serve);
    }

    #[test]
    fn takeover_affinity_restores_wherever_the_request_lands() {
        let mut c = case(Some(cookie_from("b", 5)));
        c.affinity = Affinity::Takeover;
        assert_eq!(c.route(), Decision::Restore { takeover: true });
    }

    #[test]
    fn dead_owner_goes_to_the_one_successor_from_every_pod() {
        let live = vec![member("a"), member("b"), member("c")];
        let heir = successor_of(&live);
        for me in ["a", "b", "c"] {
            let mut c = case(Some(cookie_from("dead", 5)));
            c.me = me;
            let expected = if me == heir {
                Decision::Restore { takeover: true }
            } else {
                Decision::Forward { to: member(&heir), reason: ForwardReason::Successor }
            };
            assert_eq!(c.route(), expected, "seen from {me}");
        }
    }

    #[test]
    fn unreachable_owner_is_treated_as_dead() {
        let mut c = case(Some(cookie_from("b", 5)));
        c.unreachable = vec!["b".into()];
        let heir = successor_of(&[member("a"), member("c")]);
        let d = c.route();
        if heir == "a" {
            assert_eq!(d, Decision::Restore { takeover: true });
        } else {
            assert_eq!(d, Decision::Forward { to: member("c"), reason: ForwardReason::Successor });
        }
    }

    #[test]
    fn unreachable_successor_is_skipped() {
        let mut c = case(Some(cookie_from("dead", 5)));
        c.me = "zz-not-a-member";
        let first = successor_of(&c.live);
        c.unreachable = vec![first.clone()];
        match c.route() {
            Decision::Forward { to, .. } => assert_ne!(to.name, first),
            other => panic!("expected a forward to another member, got {other:?}"),
        }
    }

    #[test]
    fn empty_registry_serves_here_rather_than_refusing() {
        let mut c = case(Some(cookie_from("dead", 5)));
        c.live.clear();
        assert_eq!(c.route(), Decision::Restore { takeover: true });
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_sessions() {
        let all: Vec<Member> = (0..8).map(|i| member(&format!("m{i}"))).collect();
        let without_m3: Vec<Member> = all.iter().filter(|m| m.name != "m3").cloned().collect();
        for s in 0..500 {
            let session = format!("s{s}");
            let before = successor(&session, all.iter()).expect("member");
            let after = successor(&session, without_m3.iter()).expect("member");
            if before.name != "m3" {
                assert_eq!(before, after, "session {session} moved although its member stayed");
            }
        }
    }

    proptest! {
        #[test]
        fn successor_ignores_member_order(names in proptest::collection::btree_set("[a-z]{1,6}", 1..10), session in ".{0,20}") {
            let members: Vec<Member> = names.iter().map(|n| member(n)).collect();
            let mut reversed = members.clone();
            reversed.reverse();
            prop_assert_eq!(successor(&session, members.iter()), successor(&session, reversed.iter()));
        }

        #[test]
        fn route_never_forwards_to_itself_or_an_unreachable_member(
            owner in "[a-d]", me in "[a-d]", version in 0u64..4, local in proptest::option::of(0u64..4),
            unreachable in proptest::collection::vec("[a-d]", 0..3), forwarded in any::<bool>(),
        ) {
            let live: Vec<Member> = ["a", "b", "c", "d"].iter().map(|n| member(n)).collect();
            let c = Case {
                cookie: Some(cookie_from(&owner, version)), local, live, unreachable: unreachable.clone(),
                me: &me, forwarded, affinity: Affinity::Forward,
            };
            match c.route() {
                Decision::Forward { to, .. } => {
                    prop_assert_ne!(&to.name, &me);
                    prop_assert!(!unreachable.contains(&to.name));
                    prop_assert!(!forwarded);
                }
                Decision::New => prop_assert!(false, "a cookie is never a new session"),
                _ => {}
            }
        }
    }

    #[test]
    fn pull_follows_mode_interval_and_draining() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let base = PullInputs {
            mode: Mode::Pull,
            pushed: false,
            last_sealed: Some(t0),
            now: t0 + Duration::from_millis(500),
            interval: second,
            draining_since: None,
        };
        assert!(!should_pull(base));
        assert!(should_pull(PullInputs { now: t0 + second, ..base }));
        assert!(should_pull(PullInputs { last_sealed: None, ..base }));
        assert!(
            should_pull(PullInputs { draining_since: Some(t0), ..base }),
            "a draining pod snapshots every response"
        );
        assert!(!should_pull(PullInputs { mode: Mode::Push, last_sealed: None, ..base }));
        assert!(!should_pull(PullInputs { mode: Mode::Both, pushed: true, last_sealed: None, ..base }));
        assert!(should_pull(PullInputs { mode: Mode::Both, last_sealed: None, ..base }));
    }

    #[test]
    fn a_session_without_state_gets_no_cookie() {
        for offered in
            [Offered::Nothing, Offered::PullFailed, Offered::Pulled { empty: true }, Offered::Pushed { empty: true }]
        {
            assert_eq!(
                seal_action(CookieSeen::Absent, offered, false, false),
                SealAction::Keep,
                "{offered:?} without a cookie"
            );
        }
        assert_eq!(
            seal_action(CookieSeen::Absent, Offered::Pushed { empty: false }, false, false),
            SealAction::Seal(SealSource::Push)
        );
        assert_eq!(
            seal_action(CookieSeen::Absent, Offered::Pulled { empty: false }, false, false),
            SealAction::Seal(SealSource::Pull)
        );
    }

    #[test]
    fn a_session_with_a_cookie_is_sealed_deleted_or_left_alone() {
        assert_eq!(
            seal_action(CookieSeen::Valid, Offered::Pushed { empty: false }, false, false),
            SealAction::Seal(SealSource::Push)
        );
        assert_eq!(seal_action(CookieSeen::Valid, Offered::Pushed { empty: true }, false, false), SealAction::Delete);
        assert_eq!(seal_action(CookieSeen::Valid, Offered::Pushed { empty: true }, true, false), SealAction::Delete);
        assert_eq!(seal_action(CookieSeen::Valid, Offered::Nothing, false, false), SealAction::Keep);
        assert_eq!(seal_action(CookieSeen::Valid, Offered::Nothing, true, false), SealAction::Seal(SealSource::Carry));
        assert_eq!(
            seal_action(CookieSeen::Valid, Offered::PullFailed, true, false),
            SealAction::Seal(SealSource::Carry)
        );
        assert_eq!(
            seal_action(CookieSeen::Valid, Offered::Pulled { empty: true }, false, false),
            SealAction::Keep,
            "a pull that finds nothing never deletes the only copy"
        );
    }

    #[test]
    fn a_dropped_cookie_is_replaced_by_new_state_or_deleted() {
        let dropped = CookieSeen::Dropped;
        assert_eq!(
            seal_action(dropped, Offered::Pushed { empty: false }, false, false),
            SealAction::Seal(SealSource::Push)
        );
        assert_eq!(
            seal_action(dropped, Offered::Pulled { empty: false }, false, false),
            SealAction::Seal(SealSource::Pull)
        );
        for offered in
            [Offered::Nothing, Offered::PullFailed, Offered::Pulled { empty: true }, Offered::Pushed { empty: true }]
        {
            for owner_changed in [false, true] {
                assert_eq!(seal_action(dropped, offered, owner_changed, false), SealAction::Delete, "{offered:?}");
            }
        }
    }

    #[test]
    fn an_active_session_is_refreshed_past_half_its_life_only_from_the_newest_copy() {
        let cookie = Route { issued_at: 1_000, version: 7, ..cookie_from("a", 7) };
        assert!(!refresh_due(&cookie, Some(7), 100, 1_049), "still young");
        assert!(refresh_due(&cookie, Some(7), 100, 1_050), "half its life");
        assert!(!refresh_due(&cookie, Some(8), 100, 1_090), "the app holds newer: never reseal the older cookie");
        assert!(!refresh_due(&cookie, None, 100, 1_090), "not held here (it is restored first)");
        assert_eq!(
            seal_action(CookieSeen::Valid, Offered::Nothing, false, true),
            SealAction::Seal(SealSource::Refresh)
        );
        assert_eq!(
            seal_action(CookieSeen::Valid, Offered::Pushed { empty: false }, false, true),
            SealAction::Seal(SealSource::Push),
            "new state beats a refresh"
        );
        assert_eq!(seal_action(CookieSeen::Absent, Offered::Nothing, false, true), SealAction::Keep);
        assert_eq!(seal_action(CookieSeen::Dropped, Offered::Nothing, false, true), SealAction::Delete);
    }

    #[test]
    fn only_a_client_error_refuses_a_restore_and_only_failures_are_retried() {
        assert_eq!(restore_verdict(200), RestoreVerdict::Done);
        assert_eq!(restore_verdict(204), RestoreVerdict::Done);
        for refused in [400, 403, 404, 409, 410, 415, 422] {
            assert_eq!(restore_verdict(refused), RestoreVerdict::Refused, "{refused}");
        }
        for retried in [408, 429, 500, 502, 503, 504, 301, 100] {
            assert_eq!(restore_verdict(retried), RestoreVerdict::Retry, "{retried}");
        }
    }

    #[test]
    fn a_seal_takes_a_version_above_every_version_seen() {
        let base = SealInputs {
            cookie: CookieSeen::Valid,
            offered: Offered::Pushed { empty: false },
            owner_changed: false,
            refresh_due: false,
            local_version: Some(7),
            cookie_version: Some(5),
        };
        assert_eq!(seal(base), Seal { action: SealAction::Seal(SealSource::Push), version: 8 });
        assert_eq!(seal(SealInputs { local_version: Some(3), ..base }).version, 6, "a cookie newer than the table");
        assert_eq!(
            seal(SealInputs { local_version: None, cookie_version: None, cookie: CookieSeen::Absent, ..base }).version,
            1
        );
        let keep = seal(SealInputs { offered: Offered::Nothing, ..base });
        assert_eq!(keep, Seal { action: SealAction::Keep, version: 7 });
        let carried =
            seal(SealInputs { offered: Offered::Nothing, owner_changed: true, local_version: Some(5), ..base });
        assert_eq!(
            carried,
            Seal { action: SealAction::Seal(SealSource::Carry), version: 5 },
            "the same state keeps its version"
        );
    }

    #[test]
    fn a_request_passed_on_is_never_passed_back_to_the_draining_pod_it_came_from() {
        let (a, b, c) = (member("a"), member("b"), member("c"));
        let others = || [&a, &b].into_iter();
        // Handed to b at the drain: b gets it, unless b is the draining pod that passed it here.
        assert_eq!(pass_on_to("s", Some(&b), others(), None).map(|m| m.name.as_str()), Some("b"));
        let to = pass_on_to("s", Some(&b), others(), Some("b")).map(|m| m.name.as_str());
        assert_eq!(to, Some("a"), "the session's successor among the others");
        // Nobody else: none (served here).
        assert_eq!(pass_on_to("s", Some(&b), [&b].into_iter(), Some("b")), None);
        // Not handed over here: the successor, never the one it came from.
        for session in ["s1", "s2", "s3", "s4", "s5", "s6"] {
            let all = || [&a, &b, &c].into_iter();
            let first = pass_on_to(session, None, all(), None).expect("a member");
            assert_eq!(Some(first), successor(session, all()));
            let other = pass_on_to(session, None, all(), Some(first.name.as_str())).expect("another member");
            assert_ne!(other.name, first.name, "{session}");
        }
    }

    #[test]
    fn the_newest_copy_wins_and_a_missing_one_is_lost() {
        assert_eq!(newest_copy(Some(5), Some(6)), Copy::Backup);
        assert_eq!(newest_copy(Some(6), Some(6)), Copy::Cookie);
        assert_eq!(newest_copy(Some(7), Some(6)), Copy::Cookie);
        assert_eq!(newest_copy(None, Some(1)), Copy::Backup);
        assert_eq!(newest_copy(Some(1), None), Copy::Cookie);
        assert_eq!(newest_copy(None, None), Copy::Lost);
    }

    proptest! {
        #[test]
        fn a_cookieless_request_is_sealed_only_with_state_from_the_app(
            pushed in any::<bool>(), empty in any::<bool>(), failed in any::<bool>(), owner_changed in any::<bool>(),
        ) {
            let offered = match (pushed, failed) {
                (true, _) => Offered::Pushed { empty },
                (false, true) => Offered::PullFailed,
                (false, false) => Offered::Pulled { empty },
            };
            let action = seal_action(CookieSeen::Absent, offered, owner_changed, false);
            let app_gave_state = !empty && (pushed || !failed);
            prop_assert_eq!(matches!(action, SealAction::Seal(_)), app_gave_state, "{:?}", action);
            prop_assert_ne!(action, SealAction::Delete, "no cookie to delete");
        }

        #[test]
        fn a_session_learned_anew_from_any_older_cookie_never_hands_a_version_out_twice(
            events in proptest::collection::vec((1u64..5_000_000, any::<bool>(), any::<prop::sample::Index>()), 1..60),
            start in 0u64..2_000_000_000_000_000,
        ) {
            // A pod seals a session's responses, a microsecond apart at the least; each request
            // carries any cookie the client was given before (responses arrive in any order, a
            // second tab, the back button), and now and then the pod has forgotten the session
            // (restarted) and learns it again from that cookie.
            let mut now = start;
            let mut table: Option<u64> = None;
            let mut handed_out: Vec<u64> = Vec::new();
            for (elapsed, forgot, which) in events {
                now += elapsed;
                let cookie = (!handed_out.is_empty()).then(|| handed_out[which.index(handed_out.len())]);
                if forgot && let Some(cookie) = cookie {
                    table = Some(relearned_version(cookie, now));
                }
                let version = seal(SealInputs {
                    cookie: if cookie.is_some() { CookieSeen::Valid } else { CookieSeen::Absent },
                    offered: Offered::Pushed { empty: false },
                    owner_changed: false,
                    refresh_due: false,
                    local_version: table,
                    cookie_version: cookie,
                })
                .version;
                prop_assert!(handed_out.iter().all(|&v| v < version), "{} handed out again: {:?}", version, handed_out);
                table = Some(version);
                handed_out.push(version);
            }
        }

        #[test]
        fn ranked_starts_with_the_successor(names in proptest::collection::btree_set("[a-z]{1,6}", 1..10), session in ".{0,20}") {
            let live: Vec<Member> = names.iter().map(|n| member(n)).collect();
            let order = ranked(&session, live.iter());
            prop_assert_eq!(order.len(), live.len());
            prop_assert_eq!(order[0].name.clone(), successor(&session, live.iter()).map(|m| m.name.clone()).expect("one"));
        }
    }
}
