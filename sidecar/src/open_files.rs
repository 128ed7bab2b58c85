//! The process's limit on open files: raised to what the container runtime allows, and the client
//! connections that fit in it.
//!
//! A runtime may start the sidecar with a low soft limit under a high hard one: containerd 2 gives
//! containers systemd's defaults, 1024 and 524288, and expects a program that needs more to raise
//! its own soft limit, as Go's runtime does for every Go program (since Go 1.19), nginx with
//! `worker_rlimit_nofile`, HAProxy from its `maxconn`. A Rust program must do it itself. Past the
//! limit every accept and every connect fails (`EMFILE`): a thousand idle client connections would
//! leave the sidecar unable to reach its own app.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for what is neither a client connection nor the app connection its request
/// takes: idle app connections (up to 64), the admin port's connections (up to 64), peers', the
/// key file, the runtime's own. A quarter of a limit lower than four times this.
const RESERVED: u64 = 256;

/// Raises the soft limit on open files to the hard one. Returns the soft limit in force after it
/// (`None`: unlimited).
pub fn raise() -> Option<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (current, maximum) else { return current };
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
        Ok(()) => {
            tracing::info!(from = soft, to = hard, "open-file limit raised to the hard limit");
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(error = %e, limit = soft, "cannot raise the open-file limit");
            Some(soft)
        }
    }
}

/// Of `wanted` client connections, those that fit in `limit` open files, each with the app
/// connection its request takes, beside what is reserved for the rest (at least one).
pub fn connections_within(limit: Option<u64>, wanted: usize) -> usize {
    let Some(limit) = limit else { return wanted };
    let fit = limit.saturating_sub(RESERVED.min(limit / 4)) / 2;
    wanted.min(usize::try_from(fit).unwrap_or(usize::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_two_files_each_beside_the_reserve() {
        assert_eq!(connections_within(None, 4096), 4096);
        assert_eq!(connections_within(Some(524_288), 4096), 4096);
        // containerd 2's soft limit, had it not been raised: (1024 - 256) / 2.
        assert_eq!(connections_within(Some(1024), 4096), 384);
        // A small limit keeps a quarter of itself: (256 - 64) / 2.
        assert_eq!(connections_within(Some(256), 4096), 96);
        assert_eq!(connections_within(Some(0), 4096), 1);
    }
}
