//! A memory cgroup of the test's own (cgroup v1 or v2), removed on drop: a process started in it
//! is held to its limit as a container is, and killed by the kernel past it.

use std::path::PathBuf;
use std::time::Duration;

pub struct MemoryCgroup {
    dir: PathBuf,
    /// v2 reports its OOM kills in `memory.events`, v1 in `memory.oom_control`.
    v2: bool,
}

impl MemoryCgroup {
    /// A new cgroup limited to `bytes`. Where this process cannot make one (not root, no memory
    /// controller), says loudly that `what` did not run — or fails, when `HANDOVER_REQUIRE_CGROUP`
    /// is set (as `tests/run` sets it: in CI these tests must run).
    pub fn limited(bytes: u64, what: &str) -> Option<MemoryCgroup> {
        let name = format!("handover-test-{}", handover_dataplane::random::session_id());
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let made = if v1.join("memory.limit_in_bytes").is_file() {
            Self::make(v1.join(&name), "memory.limit_in_bytes", bytes, false)
        } else {
            Self::make(PathBuf::from("/sys/fs/cgroup").join(&name), "memory.max", bytes, true)
        };
        match made {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                let message = format!("no memory cgroup of the test's own ({e}): {what} did NOT run");
                super::skip_or_fail("HANDOVER_REQUIRE_CGROUP", &message);
                None
            }
        }
    }

    fn make(dir: PathBuf, limit_file: &str, bytes: u64, v2: bool) -> std::io::Result<MemoryCgroup> {
        std::fs::create_dir(&dir)?;
        let cgroup = MemoryCgroup { dir, v2 };
        std::fs::write(cgroup.dir.join(limit_file), bytes.to_string())?;
        Ok(cgroup)
    }

    /// The command prefix that starts a process in this cgroup: a shell that enters it and execs
    /// the rest of the command line.
    pub fn prefix(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        vec!["sh".into(), "-c".into(), format!("echo $$ > {} && exec \"$@\"", procs.display()), "sh".into()]
    }

    /// The most memory the cgroup has used, in bytes (v1 only; 0 on v2).
    pub fn peak(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many processes of the cgroup the kernel killed for its limit.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes end with the test (killed on drop), a moment after it: then it can go.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("cgroup {} left behind: processes still in it", self.dir.display());
    }
}
