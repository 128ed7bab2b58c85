//! handover's data path: a reverse proxy that keeps every session's state sealed in the client's
//! cookie and restores it into another pod's app when the session's pod dies.
//!
//! Map: [`cookie`] is the only encoder and decoder of state cookies, [`cookie_attrs`] their name
//! and attributes per pool, [`keys`] the key ring that seals them, [`decide`] the pure routing
//! decision, [`registry`] the live members (static, or `registry_kube` from the ServerPool's
//! status), [`proxy`] the hyper code that carries it out, [`cache`] keeps state cookies out of
//! shared caches, [`server`] the listeners. The lab (`handover-lab`: a local pool, the demo, the
//! demo app, the bench) runs it on one machine; the `handover-sidecar` binary runs it in a pod.

#![forbid(unsafe_code)]

pub mod backup;
pub mod cache;
pub mod cookie;
pub mod cookie_attrs;
pub mod decide;
mod deflate;
pub mod drain;
pub mod fuzzing;
pub mod header_budget;
mod http1;
pub mod keys;
pub mod metrics;
pub mod peer_auth;
pub mod peer_health;
pub mod peer_probe;
pub mod proxy;
pub mod random;
pub mod registry;
#[cfg(feature = "kubernetes")]
pub mod registry_kube;
#[cfg(test)]
mod seal_model;
pub mod server;
pub mod settled_file;
pub mod state_path;
pub mod timed_body;
pub mod upstream;
pub mod xchacha;
