//! What the process may use — open files and memory — and the client connections that fit in it.
//!
//! Open files: a runtime may start the sidecar with a low soft limit under a high hard one:
//! containerd 2 gives containers systemd's defaults, 1024 and 524288, and expects a program that
//! needs more to raise its own soft limit, as Go's runtime does for every Go program (since Go
//! 1.19), the JVM, nginx with `worker_rlimit_nofile`, HAProxy from its `maxconn`. A Rust program
//! must do it itself. Past the limit every accept and every connect fails (`EMFILE`): a thousand
//! idle client connections would leave the sidecar unable to reach its own app.
//!
//! Memory: past the container's limit the kernel kills the process. The session table, the peers'
//! backups and the heads in flight have caps of their own; what the limit leaves beside them
//! bounds the client connections (a keep-alive connection holds ~19 KB after an answer: its read
//! buffer, its task, its header maps; ~12 KB once idle past the header timeout, when its buffers
//! go), so that a flood of connections is closed at the cap instead of taking the sidecar, and its
//! pod's sessions, down.

use std::path::{Path, PathBuf};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for what is neither a client connection nor the app connection its request
/// takes: idle app connections (up to 64), the admin port's connections (up to 64), peers', the
/// key file, the runtime's own. A quarter of a limit lower than four times this.
const RESERVED_FILES: u64 = 256;

/// Memory a client connection (or an HTTP/2 stream in flight) may take, in the costliest state a
/// client can hold it in. Measured (RSS over 2 000 connections, the `dist` build; the debug build
/// alike): a request whose body trickles in, served by hyper's server and sent on by hyper's
/// client, ~59 KB; an HTTP/2 stream the same way, ~34 KB; an answer the client does not read,
/// ~30 KB; a keep-alive connection just answered, ~19 KB; a head not yet whole, ~18 KB. At 32 KiB,
/// a flood of clients that read none of their 1 MiB answers (then ~96 KB each) took a sidecar past
/// a 48 MiB limit.
pub const CONNECTION_BYTES: u64 = 64 << 10;

/// Memory of everything but the caps: the code, the runtime, idle app connections, a few
/// requests' bodies in flight (the idle sidecar's RSS is ~8 MiB).
pub const BASE_BYTES: u64 = 16 << 20;

/// Memory an entry of the session table takes at most (the table, full at 100 000 sessions after
/// a flood of cookieless requests, measured at ~26 MiB).
pub const SESSION_BYTES: u64 = 320;

/// Raises the soft limit on open files to the hard one. Returns the soft limit in force after it
/// (`None`: unlimited).
pub fn raise_open_files() -> Option<u64> {
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

/// The memory limit of this process's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`), if
/// it has one.
pub fn memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit_in(&own, Path::new("/sys/fs/cgroup"))
}

/// The memory limit that `proc_cgroup` (a `/proc/<pid>/cgroup`) names under `root`. A container
/// sees its own cgroup at the root of the mount (cgroup namespaces, or v1's bind mount), a process
/// on a node at its path: both are tried.
fn memory_limit_in(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            candidates.extend([root.join(path).join("memory.max"), root.join("memory.max")]);
        } else if controllers.split(',').any(|c| c == "memory") {
            let mount = root.join("memory");
            candidates.extend([mount.join(path).join("memory.limit_in_bytes"), mount.join("memory.limit_in_bytes")]);
        }
    }
    let text = candidates.iter().find_map(|file| std::fs::read_to_string(file).ok())?;
    // "max" (v2) or a page-rounded i64::MAX (v1): no limit.
    text.trim().parse::<u64>().ok().filter(|&bytes| bytes < 1 << 60)
}

/// The least the memory limit lowers the connections to: below it a pod would refuse its ingress's
/// keep-alive connections in normal traffic. A memory limit that leaves less than this beside the
/// other caps is said in the log instead.
pub const MIN_CONNECTIONS: usize = 256;

/// What the sidecar's other caps may hold in memory at most.
#[derive(Clone, Copy, Debug)]
pub struct OtherCaps {
    /// `--max-sessions`.
    pub sessions: usize,
    /// `--backup-max-bytes`, or 0 with backups off.
    pub backup_bytes: u64,
    /// `--max-header-bytes-in-flight`.
    pub heads_in_flight_bytes: u64,
}

impl OtherCaps {
    fn bytes(&self) -> u64 {
        BASE_BYTES + self.sessions as u64 * SESSION_BYTES + self.backup_bytes + self.heads_in_flight_bytes
    }
}

/// The client connection cap: `wanted`, lowered to what the limits on open files and memory hold
/// beside the other caps ([`connections_within`]) — by memory not below [`MIN_CONNECTIONS`]; what
/// it lowers, and a memory limit the other caps alone would fill, said in the log.
pub fn connection_cap(wanted: usize, open_files: Option<u64>, memory: Option<u64>, others: OtherCaps) -> usize {
    let by_files = connections_within(open_files, None, wanted);
    let by_memory = connections_within(None, memory.map(|limit| limit.saturating_sub(others.bytes())), wanted);
    // Past the open files every connect fails: a hard bound. The memory bound counts every other
    // cap at its fullest at once: a floor keeps the pod usable where the limit is tight.
    let floor = MIN_CONNECTIONS.min(wanted);
    let cap = by_files.min(by_memory.max(floor));
    if by_memory < floor {
        tracing::warn!(
            memory_limit = memory,
            other_caps_bytes = others.bytes(),
            ?others,
            connections = cap,
            "the memory limit hardly holds the sidecar's caps at their fullest: raise it, or lower --max-sessions or --backup-max-bytes"
        );
    } else if cap < wanted {
        // Where the operator passes the pod's memory limit, the usual case: said, no warning.
        tracing::info!(
            max_connections = wanted,
            lowered_to = cap,
            open_files,
            memory_limit = memory,
            "--max-connections lowered to what the limits on open files and memory hold; more connections are closed as they arrive"
        );
    }
    cap
}

/// Of `wanted` client connections, those that fit both in `open_files` (each with the app
/// connection its request takes, beside what is reserved for the rest) and in `memory` bytes
/// ([`CONNECTION_BYTES`] each); at least one.
pub fn connections_within(open_files: Option<u64>, memory: Option<u64>, wanted: usize) -> usize {
    let by_files = open_files.map(|limit| limit.saturating_sub(RESERVED_FILES.min(limit / 4)) / 2);
    let by_memory = memory.map(|bytes| bytes / CONNECTION_BYTES);
    let fit = [by_files, by_memory]
        .into_iter()
        .flatten()
        .min()
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    wanted.min(fit.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_two_files_each_beside_the_reserve() {
        assert_eq!(connections_within(None, None, 4096), 4096);
        assert_eq!(connections_within(Some(524_288), None, 4096), 4096);
        // containerd 2's soft limit, had it not been raised: (1024 - 256) / 2.
        assert_eq!(connections_within(Some(1024), None, 4096), 384);
        // A small limit keeps a quarter of itself: (256 - 64) / 2.
        assert_eq!(connections_within(Some(256), None, 4096), 96);
        assert_eq!(connections_within(Some(0), None, 4096), 1);
    }

    #[test]
    fn connections_fit_the_memory_left_and_the_smaller_bound_wins() {
        assert_eq!(connections_within(None, Some(32 << 20), 4096), 512);
        assert_eq!(connections_within(Some(1024), Some(32 << 20), 4096), 384);
        assert_eq!(connections_within(None, Some(0), 4096), 1);
    }

    #[test]
    fn the_cap_fits_the_memory_the_other_caps_leave_and_not_below_the_minimum() {
        let others = OtherCaps { sessions: 10_000, backup_bytes: 0, heads_in_flight_bytes: 4 << 20 };
        // 48 MiB - (16 MiB + 10 000 sessions + 4 MiB) leaves ~25 MiB: ~400 connections.
        assert_eq!(
            connection_cap(4096, None, Some(48 << 20), others),
            ((48u64 << 20) - (20 << 20) - 3_200_000) as usize / (64 << 10)
        );
        assert_eq!(connection_cap(4096, None, None, others), 4096);
        // A limit the other caps fill: the minimum, said in the log.
        let full = OtherCaps { sessions: 100_000, backup_bytes: 32 << 20, heads_in_flight_bytes: 4 << 20 };
        assert_eq!(connection_cap(4096, None, Some(64 << 20), full), MIN_CONNECTIONS);
        assert_eq!(connection_cap(100, None, Some(64 << 20), full), 100);
        // The open-file bound is no floor's business: it would fail every connect past it.
        assert_eq!(connection_cap(4096, Some(256), None, others), 96);
    }

    #[test]
    fn the_memory_limit_is_read_from_the_processs_own_cgroup() {
        let root = std::env::temp_dir().join(format!("handover-cgroup-{}", std::process::id()));
        let write = |file: &str, text: &str| {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        };
        // v1 on a node: the path under the controller's mount.
        write("memory/kubepods/pod1/c1/memory.limit_in_bytes", "67108864\n");
        assert_eq!(memory_limit_in("4:memory:/kubepods/pod1/c1\n0::/\n", &root), Some(64 << 20));
        // v1 unlimited.
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(memory_limit_in("4:memory:/elsewhere\n", &root), None);
        // v2 in a container (cgroup namespace): its own cgroup at the root.
        write("memory.max", "134217728\n");
        assert_eq!(memory_limit_in("0::/\n", &root), Some(128 << 20));
        write("memory.max", "max\n");
        assert_eq!(memory_limit_in("0::/\n", &root), None);
        assert_eq!(memory_limit_in("", &root), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
