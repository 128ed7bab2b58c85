//! A proxy daemon (nginx, HAProxy) started by a test on a free port, in a directory of its own,
//! and killed on drop; and the check that its binary is installed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use handover_lab::localpool::wait_for;
use tokio::process::{Child, Command};

use super::Scratch;

/// The first of `candidates` that runs with `version_arg`; without one, says loudly that `what`
/// did not run — or fails, when the environment variable `require` is set (as `tests/run` sets
/// it: in CI these tests must run).
pub fn tool_or_skip(
    candidates: &[&str],
    version_arg: &str,
    require: &str,
    install: &str,
    what: &str,
) -> Option<PathBuf> {
    let bin = candidates.iter().map(PathBuf::from).find(|bin| {
        std::process::Command::new(bin)
            .arg(version_arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if bin.is_none() {
        super::skip_or_fail(require, &format!("{} is not installed: {what} did NOT run ({install})", candidates[0]));
    }
    bin
}

/// A running daemon; killed on drop (its files are kept when the test failed).
pub struct Daemon {
    child: Child,
    pub dir: Scratch,
    pub addr: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (the listener's inode in
/// `/proc/net/tcp`, among the process's open files). That the port accepts a connection proves
/// less: another listener may hold it for a moment (a port picked as this one was, by a
/// concurrent test).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    // Fields: sl, local address, remote address, state (0A: LISTEN), …, inode (the tenth).
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
        .filter_map(|f| f.get(9).map(|inode| format!("socket:[{inode}]")))
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| inodes.iter().any(|i| to.as_os_str() == i.as_str())))
}

impl Daemon {
    /// Whether the daemon still runs and listens on its port.
    pub fn listening(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none() && listens(self.child.id().unwrap_or(0), self.addr.port())
    }

    /// Starts `command(dir, port)` (which writes its configuration into `dir`) and waits until
    /// it listens on the port. `log` names the file in `dir` shown when it does not start.
    pub async fn start(name: &str, log: &str, mut command: impl FnMut(&Path, u16) -> Command) -> Daemon {
        let dir = Scratch::new(name);
        let mut last_error = String::new();
        // The port is picked by binding port 0 and releasing it; another process may take it in
        // between, so a start that fails is tried again on a new port.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut child = command(&dir, port)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("stderr.log")).map(Stdio::from).unwrap_or(Stdio::null()))
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("{name} starts: {e}"));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let pid = child.id().unwrap_or(0);
            let up = wait_for(&format!("{name} to listen on {addr}"), Duration::from_secs(10), || async move {
                listens(pid, port)
            })
            .await;
            if up.is_ok() && child.try_wait().ok().flatten().is_none() {
                return Daemon { child, dir, addr };
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            last_error = format!("{}{}", read(log), read("stderr.log"));
        }
        panic!("{name} did not start:\n{last_error}");
    }
}
