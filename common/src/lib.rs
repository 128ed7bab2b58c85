//! What the handover operator and sidecar must agree on, in one place: the key file the operator
//! writes and every sidecar reads, the duration syntax of the CRD and the sidecar's flags, the
//! cookie attributes both accept, how both log, how both take a lock, how both listen (on both
//! address families), and how both pause a failed watch.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cookie_attrs;
pub mod duration;
pub mod fuzzing;
pub mod keyfile;
pub mod logging;
pub mod net;
pub mod sync;
