//! A model of one session's life in a pool, run over generated interleavings of concurrent
//! requests, response orders, forwards, takeovers, owner deaths and joins, with the real
//! decisions (`decide::route`, `decide::seal`, `decide::successor`, `decide::ranked`,
//! `decide::newest_copy`) — the proof of the guarantee the README states:
//!
//! > with the successor backup on, every update whose response reached the client is in the
//! > state a takeover restores, whatever the number of requests in flight and the order their
//! > responses arrive in, unless the owner dies before serving any request since its successor
//! > died (two deaths within one request), or more than two members joined above the backup's
//! > holder since the owner last sealed. (Requests sent before the client holds the session's
//! > cookie start sessions of their own: there is no session to join yet.)
//!
//! What the model takes as given (the proxy's side, tested apart): a response's Set-Cookie lines
//! replace the client's whole cookie set at once (one response sets the route and every chunk);
//! the owner's state captures happen in version order (one lock per session for pulls); a backup
//! is stored before the response leaves.

use proptest::prelude::*;

use crate::cookie::{Owner, Route};
use crate::decide::{self, Affinity, CookieSeen, Decision, Inputs, Me, Offered, SealAction, SealInputs};
use crate::registry::Member;

const SESSION: &str = "session-1";

/// What the client holds (or a response carries): one version of the session's state.
#[derive(Clone, Debug)]
struct Cookie {
    version: u64,
    owner: usize,
    /// The updates the state holds (a cart's items).
    items: Vec<u32>,
}

struct Pod {
    member: Member,
    alive: bool,
    /// The session's state in this pod's app, and the version the sidecar knows it has.
    app: Option<Vec<u32>>,
    local_version: Option<u64>,
    /// The backup of the session this pod keeps for its owner.
    backup: Option<(u64, Vec<u32>)>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// The client sends a request carrying its cookie as it is now.
    Send,
    /// A request in flight reaches the pool, on an alive pod picked by the load balancer.
    Serve { request: usize, lands_on: usize },
    /// A response in flight reaches the client (any of them: proxies reorder).
    Deliver { response: usize },
    /// A pod is killed (SIGKILL: its app state and the backups it kept are gone).
    Kill { pod: usize },
    /// A new pod joins the pool.
    Join,
}

struct World {
    pods: Vec<Pod>,
    jar: Option<Cookie>,
    requests: Vec<(u32, Option<Cookie>)>,
    responses: Vec<(u32, Cookie)>,
    /// Updates whose response reached the client.
    acked: Vec<u32>,
    next_update: u32,
    served_since_kill: bool,
    joins: usize,
    backup_on: bool,
    /// Every restore the model made because the owner was gone, with what it lacked.
    losses: Vec<Vec<u32>>,
}

fn pod(i: usize) -> Pod {
    let name = format!("pod-{i}");
    Pod {
        member: Member {
            uid: format!("uid-{name}"),
            name,
            addr: "127.0.0.1:1".parse().expect("addr"),
            admin_port: None,
        },
        alive: true,
        app: None,
        local_version: None,
        backup: None,
    }
}

impl World {
    fn new(pods: usize, backup_on: bool) -> World {
        World {
            pods: (0..pods).map(pod).collect(),
            jar: None,
            requests: vec![],
            responses: vec![],
            acked: vec![],
            next_update: 0,
            served_since_kill: true,
            joins: 0,
            backup_on,
            losses: vec![],
        }
    }

    /// A pool whose client holds the session's cookie: requests sent before a client has it each
    /// start a session of their own (there is no session to join yet), and the client keeps one.
    fn established(pods: usize, backup_on: bool) -> World {
        let mut w = World::new(pods, backup_on);
        w.apply(Op::Send);
        w.apply(Op::Serve { request: 0, lands_on: 0 });
        w.apply(Op::Deliver { response: 0 });
        w
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.pods.len()).filter(|&i| self.pods[i].alive).collect()
    }

    fn live(&self) -> Vec<Member> {
        self.alive().into_iter().map(|i| self.pods[i].member.clone()).collect()
    }

    fn index_of(&self, name: &str) -> usize {
        self.pods.iter().position(|p| p.member.name == name).expect("a pod of the model")
    }

    fn route_of(&self, c: &Cookie) -> Route {
        let m = &self.pods[c.owner].member;
        Route {
            session: SESSION.into(),
            owner: Owner { name: m.name.as_str().into(), uid: m.uid.as_str().into(), addr: "".into() },
            version: c.version,
            state_version: c.version,
            issued_at: 0,
            expires_at: u64::MAX,
            chunks: 1,
            state_bytes: 1,
            carry: 0,
            created_at: 0,
            ended: false,
            inline: None,
        }
    }

    fn route_at(&self, at: usize, cookie: Option<&Cookie>, forwarded: bool) -> Decision {
        let route = cookie.map(|c| self.route_of(c));
        let p = &self.pods[at];
        decide::route(Inputs {
            cookie: route.as_ref(),
            local_version: p.local_version,
            live: &self.live(),
            unreachable: &[],
            me: Me { name: &p.member.name, uid: &p.member.uid },
            forwarded,
            affinity: Affinity::Forward,
        })
    }

    /// The newest backup among the first ranks of the live members, as a takeover asks them.
    fn lookup_backup(&self) -> Option<(u64, Vec<u32>)> {
        let live = self.live();
        decide::ranked(SESSION, live.iter())
            .into_iter()
            .take(decide::BACKUP_LOOKUP_RANKS)
            .filter_map(|m| self.pods[self.index_of(&m.name)].backup.clone())
            .max_by_key(|(v, _)| *v)
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Send => {
                self.requests.push((self.next_update, self.jar.clone()));
                self.next_update += 1;
            }
            Op::Serve { request, lands_on } => {
                if self.requests.is_empty() {
                    return;
                }
                let (update, cookie) = self.requests.remove(request % self.requests.len());
                let alive = self.alive();
                let entry = alive[lands_on % alive.len()];
                let (at, decision) = match self.route_at(entry, cookie.as_ref(), false) {
                    Decision::Forward { to, .. } => {
                        let at = self.index_of(&to.name);
                        (at, self.route_at(at, cookie.as_ref(), true))
                    }
                    d => (entry, d),
                };
                self.serve(at, decision, update, cookie);
                self.served_since_kill = true;
            }
            Op::Deliver { response } => {
                if self.responses.is_empty() {
                    return;
                }
                let (update, cookie) = self.responses.remove(response % self.responses.len());
                self.jar = Some(cookie);
                self.acked.push(update);
            }
            Op::Kill { pod } => {
                let alive = self.alive();
                if alive.len() < 3 || !self.served_since_kill {
                    return;
                }
                let p = &mut self.pods[alive[pod % alive.len()]];
                p.alive = false;
                p.app = None;
                p.backup = None;
                self.served_since_kill = false;
            }
            Op::Join => {
                if self.joins < 2 {
                    self.joins += 1;
                    self.pods.push(pod(self.pods.len()));
                }
            }
        }
    }

    fn serve(&mut self, at: usize, decision: Decision, update: u32, cookie: Option<Cookie>) {
        match decision {
            Decision::Serve => {}
            Decision::New => {
                self.pods[at].app = Some(vec![]);
                self.pods[at].local_version = None;
            }
            Decision::Restore { .. } => {
                let backup = if self.backup_on { self.lookup_backup() } else { None };
                let (version, items) =
                    match decide::newest_copy(cookie.as_ref().map(|c| c.version), backup.as_ref().map(|b| b.0)) {
                        decide::Copy::Cookie => {
                            cookie.as_ref().map(|c| (c.version, c.items.clone())).expect("a cookie")
                        }
                        decide::Copy::Backup => backup.expect("a backup"),
                        decide::Copy::Lost => (0, vec![]),
                    };
                let lacking: Vec<u32> = self.acked.iter().copied().filter(|u| !items.contains(u)).collect();
                if !lacking.is_empty() {
                    self.losses.push(lacking);
                }
                let p = &mut self.pods[at];
                p.app = Some(items);
                p.local_version = Some(version);
                p.backup = None;
            }
            Decision::Forward { .. } => unreachable!("a forwarded request is never forwarded again"),
        }
        let seen = if cookie.is_some() { CookieSeen::Valid } else { CookieSeen::Absent };
        let p = &mut self.pods[at];
        let items = p.app.get_or_insert_with(Vec::new);
        items.push(update);
        let items = items.clone();
        let seal = decide::seal(SealInputs {
            cookie: seen,
            offered: Offered::Pushed { empty: false },
            owner_changed: false,
            refresh_due: false,
            local_version: p.local_version,
            cookie_version: cookie.as_ref().map(|c| c.version),
        });
        assert!(matches!(seal.action, SealAction::Seal(_)), "a pushed state is sealed");
        assert!(p.local_version.is_none_or(|v| seal.version > v), "versions strictly increase at the owner");
        p.local_version = Some(seal.version);
        if self.backup_on {
            let others: Vec<Member> = self.live().into_iter().filter(|m| m.name != self.pods[at].member.name).collect();
            if let Some(s) = decide::successor(SESSION, others.iter()) {
                let s = self.index_of(&s.name);
                if self.pods[s].backup.as_ref().is_none_or(|(v, _)| *v < seal.version) {
                    self.pods[s].backup = Some((seal.version, items.clone()));
                }
            }
        }
        self.responses.push((update, Cookie { version: seal.version, owner: at, items }));
    }

    /// Ends the run the hard way: the owner killed (when the pool can lose it), and one more
    /// request, which must bring back every acknowledged update.
    fn finish(&mut self) {
        while !self.responses.is_empty() {
            self.apply(Op::Deliver { response: 0 });
        }
        if let Some(owner) = self.jar.as_ref().map(|c| c.owner)
            && self.pods[owner].alive
            && self.alive().len() >= 3
            && self.served_since_kill
        {
            let p = &mut self.pods[owner];
            p.alive = false;
            p.app = None;
            p.backup = None;
        }
        self.apply(Op::Send);
        let last = self.requests.len() - 1;
        self.apply(Op::Serve { request: last, lands_on: 0 });
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Send),
        3 => (0usize..8, 0usize..8).prop_map(|(request, lands_on)| Op::Serve { request, lands_on }),
        3 => (0usize..8).prop_map(|response| Op::Deliver { response }),
        1 => (0usize..8).prop_map(|pod| Op::Kill { pod }),
        1 => Just(Op::Join),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn with_the_backup_every_acknowledged_update_survives(ops in proptest::collection::vec(op(), 1..60)) {
        let mut world = World::established(3, true);
        for op in ops {
            world.apply(op);
        }
        world.finish();
        prop_assert!(world.losses.is_empty(), "acknowledged updates lost: {:?}", world.losses);
    }
}

/// Why the backup exists: the cookie alone loses an acknowledged update when a newer response
/// reaches the client before an older one and the owner dies then.
#[test]
fn the_cookie_alone_loses_an_update_a_reordering_proxy_delivered_last() {
    for backup_on in [false, true] {
        let mut w = World::established(3, backup_on);
        // Two requests in flight, served in order (versions 2 and 3)…
        w.apply(Op::Send);
        w.apply(Op::Send);
        w.apply(Op::Serve { request: 0, lands_on: 1 });
        w.apply(Op::Serve { request: 0, lands_on: 2 });
        // …their responses delivered newest first: the client keeps version 2.
        w.apply(Op::Deliver { response: 1 });
        w.apply(Op::Deliver { response: 0 });
        assert_eq!(w.jar.as_ref().map(|c| c.version), Some(2));
        w.finish();
        assert_eq!(w.losses.is_empty(), backup_on, "backup {backup_on}: losses {:?}", w.losses);
    }
}
