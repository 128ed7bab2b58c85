//! Stub of the registry interface owned by the sidecar (main branch); the main branch's file
//! replaces this one on merge.

/// A live member of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Pod uid.
    pub uid: String,
    /// Its sidecar's data address.
    pub addr: std::net::SocketAddr,
}

/// A live view of the pool's ready members.
pub trait Registry: Send + Sync + 'static {
    /// The live members as last known, sorted by name.
    fn live(&self) -> std::sync::Arc<Vec<Member>>;
}
