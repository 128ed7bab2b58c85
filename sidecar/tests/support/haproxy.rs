//! A real HAProxy (Debian's package) at its defaults in front of a pool's pods: the
//! configuration adds only what a proxy needs to run at all — `mode http`, the `timeout` lines
//! (HAProxy warns without them) and the backend — so its buffers are its defaults
//! (`tune.bufsize` 16384, of which `tune.maxrewrite` 1024 is kept back: a request or response
//! head must fit in about 15 KiB); and, to check what the app learns of its clients, the same
//! with `option forwardfor`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::daemon::{Daemon, tool_or_skip};

/// The haproxy binary; without one, says loudly that `what` did not run (or fails, when
/// `HANDOVER_REQUIRE_HAPROXY` is set, as CI sets it).
pub fn haproxy_or_skip(what: &str) -> Option<PathBuf> {
    tool_or_skip(
        &["haproxy", "/usr/sbin/haproxy"],
        "-v",
        "HANDOVER_REQUIRE_HAPROXY",
        "apt-get install -y haproxy",
        what,
    )
}

/// An HAProxy started by the test; killed on drop.
pub struct Haproxy {
    pub addr: SocketAddr,
    daemon: Daemon,
}

fn config(port: u16, pods: &[SocketAddr], defaults: &str, backend: &str) -> String {
    let servers: String = pods.iter().enumerate().map(|(i, p)| format!("    server pod{i} {p}\n")).collect();
    format!(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n{defaults}\
         frontend web\n    bind 127.0.0.1:{port}\n    default_backend pool\n\
         backend pool\n    balance roundrobin\n{backend}{servers}"
    )
}

impl Haproxy {
    /// Starts HAProxy in the foreground, balancing round-robin over `pods`.
    pub async fn start(bin: &Path, pods: &[SocketAddr]) -> Haproxy {
        Haproxy::start_with(bin, pods, "", "").await
    }

    /// The same with `option forwardfor`, as HAProxy usually runs in front of web apps: it adds an
    /// `X-Forwarded-For` field of its own, after any the client sent.
    pub async fn start_forwarding_for(bin: &Path, pods: &[SocketAddr]) -> Haproxy {
        Haproxy::start_with(bin, pods, "    option forwardfor\n", "").await
    }

    /// The same with `option forwardfor` and these lines in its backend (`http-request set-header
    /// X-Real-IP %[src]`: the fields such a proxy vouches for).
    pub async fn start_forwarding_with(bin: &Path, pods: &[SocketAddr], backend: &str) -> Haproxy {
        Haproxy::start_with(bin, pods, "    option forwardfor\n", backend).await
    }

    /// `defaults`, `backend`: more lines for the `defaults` and `backend` sections.
    async fn start_with(bin: &Path, pods: &[SocketAddr], defaults: &str, backend: &str) -> Haproxy {
        let daemon = Daemon::start("haproxy", "stderr.log", |dir, port| {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, config(port, pods, defaults, backend)).expect("write haproxy.cfg");
            let mut cmd = Command::new(bin);
            cmd.arg("-db").arg("-f").arg(&conf);
            cmd
        })
        .await;
        Haproxy { addr: daemon.addr, daemon }
    }

    /// What HAProxy printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.daemon.dir.join("stderr.log")).unwrap_or_default()
    }
}
