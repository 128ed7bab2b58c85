//! A test's scratch directory: its processes' logs and key files, a curl cookie jar.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A directory of its own under the system's temporary directory (`handover-<name>-<random>`:
/// tests running at once, in this process or another, never share one). Removed when dropped,
/// unless the test is failing: then it is kept, and named on stderr, for its logs.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("handover-{name}-{}", handover_dataplane::random::session_id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("scratch directory {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the test's files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
