//! Desired state: pure functions from a `ServerPool` and what the operator observed (pods,
//! Deployments, the key Secret) to the objects it applies and the status it writes. No I/O here;
//! the reconciler in [`crate::controller`] only carries the results to the API server.
//!
//! - [`names`](mod@names): the names, labels and selectors of a pool and its objects;
//! - [`children`](mod@children): the objects a pool owns: Service, key Secret, Role, RoleBinding;
//! - [`injection`](mod@injection): the sidecar injected into a Deployment, and what to do with each Deployment;
//! - [`members`](mod@members): the pool's members from its pods;
//! - [`status`](mod@status): the problems found, the conditions and Events they make, the whole status;
//! - [`plan`](mod@plan): one reconcile decided: which children to write, whether to read the key Secret,
//!   which Deployments to change, from the pool and what was observed.

pub mod children;
pub mod injection;
pub mod members;
pub mod names;
pub mod plan;
pub mod status;

pub use children::*;
pub use injection::*;
pub use members::*;
pub use names::*;
pub use plan::*;
pub use status::*;

#[cfg(test)]
mod tests;
