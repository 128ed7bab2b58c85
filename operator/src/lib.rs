//! handover operator: reconciles `ServerPool`s into a Service, a key Secret, RBAC for the
//! sidecars, sidecar injection into annotated Deployments, and the member registry in
//! `ServerPool.status`.
//!
//! Layout: [`crd`] holds the resource types; [`keys`], [`duration`], [`validate`] and
//! [`desired`] are pure functions of their inputs (unit-tested without an API server);
//! [`controller`], [`leader`] and [`metrics`] are the thin edges that talk to Kubernetes.

pub mod controller;
pub mod crd;
pub mod desired;
pub use handover_common::duration;
pub mod error;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod validate;
