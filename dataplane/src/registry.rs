//! The registry: which members of the pool are alive, and where their sidecars listen.
//!
//! The decision logic only sees [`Registry::live`]. Without Kubernetes the members come from a
//! static list or a file ([`StaticRegistry`]); in a pod, from the ServerPool's status.

use crate::settled_file::{self, Follow};
use handover_common::sync;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A live member of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Pod uid: a pod recreated under the same name is another member.
    pub uid: String,
    /// Its sidecar's data address.
    pub addr: SocketAddr,
    /// Its sidecar's admin port (`/live`, on the host of `addr`), when the registry knows it (the
    /// ServerPool's status, from an operator that publishes it); else peers probe it on their own
    /// admin port.
    pub admin_port: Option<u16>,
}

impl Member {
    /// Its sidecar's admin address (`/live`): the host of `addr`, at its own admin port when the
    /// registry knows it, else at `fallback` (the prober's own admin port).
    pub fn admin_addr(&self, fallback: u16) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.admin_port.unwrap_or(fallback))
    }
}

/// Members a log line or a pod condition names at most: a pool of thousands of pods wrote lines
/// of 120 KB (a membership change) and conditions of 66 KB (a partition) naming every one.
const NAMED_AT_MOST: usize = 8;

/// `names` for a person: the first [`NAMED_AT_MOST`], then how many more.
pub fn first_named<N: std::fmt::Display>(names: impl ExactSizeIterator<Item = N>) -> String {
    let total = names.len();
    let mut text = names.take(NAMED_AT_MOST).map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    if total > NAMED_AT_MOST {
        text.push_str(&format!(" and {} more", total - NAMED_AT_MOST));
    }
    text
}

/// How long a member list replaced here counts as one that a peer's registry may still show:
/// each sidecar learns a change at its own time (a watch event, a file poll), a few seconds apart
/// at most when its registry is healthy.
pub const LAG: Duration = Duration::from_secs(30);

/// Lists replaced within [`LAG`] kept at most: a pool that changes faster keeps the latest.
const EARLIER_KEPT: usize = 4;

/// A live view of the pool's ready members.
pub trait Registry: Send + Sync + 'static {
    /// The live members as last known, sorted by name.
    fn live(&self) -> Arc<Vec<Member>>;

    /// The member lists this registry showed before [`Registry::live`] within the last [`LAG`],
    /// latest first: a peer whose registry lags behind still sees one of them.
    fn earlier(&self) -> Vec<Arc<Vec<Member>>> {
        Vec::new()
    }

    /// Whether the registry has seen the pool at least once. Until then it knows no live peer,
    /// and a pod that served would take over sessions of peers it cannot see: `/ready` waits.
    /// `Err` says why not yet.
    fn synced(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Parses a member list: one member per line or comma-separated item, `name uid addr` or
/// `name@addr` (uid empty). `#` starts a comment.
pub fn parse_members(text: &str) -> Result<Vec<Member>, String> {
    let mut members = Vec::new();
    for item in text.split(['\n', ',']) {
        let item = item.split('#').next().unwrap_or_default().trim();
        if item.is_empty() {
            continue;
        }
        let fields: Vec<&str> = item.split_whitespace().collect();
        let (name, uid, addr) = match fields.as_slice() {
            [name, uid, addr] => (*name, *uid, *addr),
            [one] => match one.split_once('@') {
                Some((name, addr)) => (name, "", addr),
                None => {
                    return Err(format!("member {item:?} is not `name uid addr` or `name@addr`"));
                }
            },
            _ => {
                return Err(format!("member {item:?} is not `name uid addr` or `name@addr`"));
            }
        };
        let addr = addr.parse().map_err(|_| format!("member {name:?} has a bad address {addr:?}"))?;
        members.push(Member { name: name.to_owned(), uid: uid.to_owned(), addr, admin_port: None });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

/// Writes members in the form [`parse_members`] reads: `name uid addr` per line (`name@addr`
/// without a uid). The admin endpoint `/members` serves it.
pub fn render_members(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            if m.uid.is_empty() {
                format!("{}@{}\n", m.name, m.addr)
            } else {
                format!("{} {} {}\n", m.name, m.uid, m.addr)
            }
        })
        .collect()
}

/// A registry's member list, and the lists it replaced within [`LAG`].
pub struct MemberLists {
    lists: RwLock<Lists>,
}

struct Lists {
    live: Arc<Vec<Member>>,
    /// Each replaced list and when it was replaced, latest first.
    earlier: Vec<(Arc<Vec<Member>>, Instant)>,
}

impl MemberLists {
    pub fn new(members: Vec<Member>) -> MemberLists {
        MemberLists { lists: RwLock::new(Lists { live: Arc::new(members), earlier: Vec::new() }) }
    }

    pub fn live(&self) -> Arc<Vec<Member>> {
        Arc::clone(&sync::read(&self.lists).live)
    }

    /// Replaces the list at `now`, unless it is the same; returns the list replaced.
    pub fn replace(&self, members: Vec<Member>, now: Instant) -> Option<Arc<Vec<Member>>> {
        let mut lists = sync::write(&self.lists);
        if *lists.live == members {
            return None;
        }
        let replaced = std::mem::replace(&mut lists.live, Arc::new(members));
        lists.earlier.retain(|(_, at)| now.saturating_duration_since(*at) < LAG);
        lists.earlier.insert(0, (Arc::clone(&replaced), now));
        lists.earlier.truncate(EARLIER_KEPT);
        Some(replaced)
    }

    /// The lists replaced within [`LAG`] before `now`, latest first.
    pub fn earlier(&self, now: Instant) -> Vec<Arc<Vec<Member>>> {
        let lists = sync::read(&self.lists);
        lists
            .earlier
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < LAG)
            .map(|(l, _)| l.clone())
            .collect()
    }
}

/// Members from a flag or a file; a file is re-read when it changes.
pub struct StaticRegistry {
    members: MemberLists,
}

impl StaticRegistry {
    /// A fixed list.
    pub fn fixed(members: Vec<Member>) -> Arc<StaticRegistry> {
        Arc::new(StaticRegistry { members: MemberLists::new(members) })
    }

    /// Replaces the list.
    pub fn set(&self, members: Vec<Member>) {
        self.members.replace(members, Instant::now());
    }

    /// Reads `path` now and then every `every`; a changed file is taken once it holds still for
    /// one poll (a file read half-way through an in-place rewrite is often a valid list missing
    /// live members: [`crate::settled_file`]). An unreadable or invalid file keeps the last list
    /// and is logged once, not at every poll.
    pub fn follow_file(path: PathBuf, every: Duration) -> Result<Arc<StaticRegistry>, String> {
        let shown = path.display().to_string();
        let parse = move |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map_err(|_| format!("peers file {shown} is not UTF-8 text"))
                .and_then(parse_members)
        };
        let first = settled_file::read(&path).map_err(|e| format!("cannot read peers file {}: {e}", path.display()))?;
        let registry = StaticRegistry::fixed(parse(&first)?);
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            let mut file = Follow::new(Some(first));
            let mut ticker = tokio::time::interval(every);
            while let Some(registry) = weak.upgrade() {
                let unreadable = |e| format!("cannot read peers file {}: {e}", path.display());
                match file.poll(&path, &parse, unreadable) {
                    Some(Ok(members)) if *registry.live() != members => {
                        tracing::info!(members = members.len(), "peers file changed");
                        registry.set(members);
                    }
                    Some(Ok(_)) | None => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "keeping the last member list"),
                }
                drop(registry);
                ticker.tick().await;
            }
        });
        Ok(registry)
    }
}

impl Registry for StaticRegistry {
    fn live(&self) -> Arc<Vec<Member>> {
        self.members.live()
    }

    fn earlier(&self) -> Vec<Arc<Vec<Member>>> {
        self.members.earlier(Instant::now())
    }
}

/// What the tests log, kept for them to read.
#[cfg(test)]
pub(crate) mod test_log {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex, Once};

    thread_local! {
        static CAPTURING: RefCell<Option<Captured>> = const { RefCell::new(None) };
    }

    /// The log lines written on this thread while the guard lives.
    #[derive(Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<u8>>>);

    /// Stops the capture when dropped.
    pub struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            CAPTURING.with(|c| c.borrow_mut().take());
        }
    }

    /// Where the process-wide subscriber writes: the capture of the writing thread, if any.
    struct ThisThread;

    impl std::io::Write for ThisThread {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            CAPTURING.with(|c| {
                if let Some(captured) = &*c.borrow() {
                    captured.0.lock().expect("log buffer").extend_from_slice(buf);
                }
            });
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// Starts capturing this thread's logs (a current-thread runtime's tasks included). One
        /// subscriber for the whole test process: a thread-local one races with other tests'
        /// threads over tracing's per-callsite cache and misses events.
        pub fn start() -> (Captured, Guard) {
            static INSTALL: Once = Once::new();
            INSTALL.call_once(|| {
                let subscriber = tracing_subscriber::fmt()
                    .with_ansi(false)
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(|| ThisThread)
                    .finish();
                let _ = tracing::subscriber::set_global_default(subscriber);
            });
            let captured = Captured::default();
            CAPTURING.with(|c| *c.borrow_mut() = Some(captured.clone()));
            (captured, Guard)
        }

        pub fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("log buffer").clone();
            String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
        }

        /// Lines that contain `text`.
        pub fn count(&self, text: &str) -> usize {
            self.lines().iter().filter(|l| l.contains(text)).count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers_file(name: &str, text: &str) -> PathBuf {
        crate::settled_file::scratch_file("peers", name, "peers", text)
    }

    fn names(r: &StaticRegistry) -> Vec<String> {
        r.live().iter().map(|m| m.name.clone()).collect()
    }

    #[test]
    fn the_lists_a_registry_replaced_are_kept_for_a_while_latest_first() {
        let list = |names: &str| parse_members(names).expect("members");
        let lists = MemberLists::new(list("a@10.0.0.1:1"));
        let t0 = Instant::now();
        assert!(lists.replace(list("a@10.0.0.1:1"), t0).is_none(), "the same list is no change");
        assert!(lists.earlier(t0).is_empty());
        let replaced = lists.replace(list("a@10.0.0.1:1,b@10.0.0.2:1"), t0).expect("a change");
        assert_eq!(*replaced, list("a@10.0.0.1:1"));
        lists.replace(list("b@10.0.0.2:1"), t0 + Duration::from_secs(1));
        let earlier: Vec<usize> = lists.earlier(t0 + Duration::from_secs(2)).iter().map(|l| l.len()).collect();
        assert_eq!(earlier, [2, 1], "latest first");
        assert_eq!(lists.earlier(t0 + LAG).len(), 1, "the first replaced is past LAG");
        assert!(lists.earlier(t0 + Duration::from_secs(1) + LAG).is_empty());
        for i in 0..10 {
            lists.replace(list(&format!("c{i}@10.0.0.3:1")), t0 + Duration::from_secs(3));
        }
        assert_eq!(lists.earlier(t0 + Duration::from_secs(3)).len(), EARLIER_KEPT, "bounded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peers_file_read_half_way_through_a_rewrite_is_not_taken() {
        let path = peers_file("torn", "a@10.0.0.1:8000\nb@10.0.0.2:8000\nc@10.0.0.3:8000\n");
        let registry = StaticRegistry::follow_file(path.clone(), Duration::from_millis(200)).expect("valid");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Rewritten in place, read after its first line: a valid list that lost two live members.
        std::fs::write(&path, "a@10.0.0.1:8000\n").expect("first half");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(names(&registry), ["a", "b", "c"], "a file changed since the last poll is not taken yet");
        std::fs::write(&path, "a@10.0.0.1:8000\nb@10.0.0.2:8000\nd@10.0.0.4:8000\n").expect("whole");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(names(&registry), ["a", "b", "d"], "the whole file, once it holds still, is");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_peers_file_is_logged_once_not_at_every_poll() {
        let (log, _guard) = test_log::Captured::start();
        let path = peers_file("bad", "a@10.0.0.1:8000\n");
        let registry = StaticRegistry::follow_file(path.clone(), Duration::from_millis(200)).expect("valid");
        std::fs::write(&path, "a@nowhere\n").expect("garbage");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(names(&registry), ["a"], "the last list stays");
        assert_eq!(log.count("keeping the last member list"), 1, "{:?}", log.lines());
        std::fs::remove_file(&path).expect("removed");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(log.count("keeping the last member list"), 2, "a file gone: one more line");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn parses_lines_and_lists_sorted() {
        let members = parse_members("# pool\nb uid-b 127.0.0.2:80\na uid-a 127.0.0.1:80\n").expect("valid");
        assert_eq!(members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(members[0].uid, "uid-a");
        let list = parse_members("x@127.0.0.1:1, y@[::1]:2").expect("valid");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].uid, "");
    }

    #[test]
    fn rendered_members_parse_back() {
        let members = parse_members("a uid-a 10.0.0.1:8000\nb@[::1]:9000").expect("valid");
        assert_eq!(parse_members(&render_members(&members)), Ok(members));
        assert_eq!(render_members(&[]), "");
    }

    #[test]
    fn refuses_bad_members() {
        assert!(parse_members("a b").is_err());
        assert!(parse_members("a@nowhere").is_err());
        assert!(parse_members("a u 1.2.3.4").is_err());
    }
}
