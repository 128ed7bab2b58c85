//! What the handover operator and sidecar must agree on, in one place: the key file the operator
//! writes and every sidecar reads, and the duration syntax of the CRD and the sidecar's flags.

#![forbid(unsafe_code)]

pub mod duration;
pub mod fuzzing;
pub mod keyfile;
