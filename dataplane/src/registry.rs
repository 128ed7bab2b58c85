//! The registry: which members of the pool are alive, and where their sidecars listen.
//!
//! The decision logic only sees [`Registry::live`]. Without Kubernetes the members come from a
//! static list or a file ([`StaticRegistry`]); in a pod, from the ServerPool's status.

use handover_common::sync;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A live member of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Pod uid: a pod recreated under the same name is another member.
    pub uid: String,
    /// Its sidecar's data address.
    pub addr: SocketAddr,
}

/// A live view of the pool's ready members.
pub trait Registry: Send + Sync + 'static {
    /// The live members as last known, sorted by name.
    fn live(&self) -> Arc<Vec<Member>>;

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
        members.push(Member { name: name.to_owned(), uid: uid.to_owned(), addr });
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

/// Members from a flag or a file; a file is re-read when it changes.
pub struct StaticRegistry {
    members: RwLock<Arc<Vec<Member>>>,
}

impl StaticRegistry {
    /// A fixed list.
    pub fn fixed(members: Vec<Member>) -> Arc<StaticRegistry> {
        Arc::new(StaticRegistry { members: RwLock::new(Arc::new(members)) })
    }

    /// Replaces the list.
    pub fn set(&self, members: Vec<Member>) {
        *sync::write(&self.members) = Arc::new(members);
    }

    /// Reads `path` now and then every `every`; an unreadable or invalid file keeps the last list.
    pub fn follow_file(path: PathBuf, every: Duration) -> Result<Arc<StaticRegistry>, String> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read peers file {}: {e}", path.display()))
                .and_then(|text| parse_members(&text))
        };
        let registry = StaticRegistry::fixed(read(&path)?);
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            while let Some(registry) = weak.upgrade() {
                match read(&path) {
                    Ok(members) if *registry.live() != members => {
                        tracing::info!(members = members.len(), "peers file changed");
                        registry.set(members);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "keeping the last member list"),
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
        Arc::clone(&sync::read(&self.members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
