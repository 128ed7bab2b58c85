//! Following a file that another process rewrites (the key file, a peers file): what one poll's
//! read means. Pure; the caller reads the file and acts on the answer.
//!
//! Two rules, both learned from files caught mid-write or left broken:
//! - a new content is taken only once two polls in a row read the same bytes. A writer that
//!   truncates and then writes (`cat > keys`, an editor that saves in place) can be read half-way,
//!   and half a key file or a peers file is often still valid: the first key alone (the cookies of
//!   the keys below it refused: their sessions start over), or part of the member list. A kubelet
//!   Secret volume swaps a symlink (`..data`) and is never read half-way; it only waits one poll.
//! - a content that is refused (unreadable, invalid) is reported once, not at every poll: the
//!   caller's log line and counter then say how many bad files there were, not for how long.

/// A file as one poll read it: its bytes, or why it could not be read.
pub type Read = Result<Vec<u8>, String>;

/// What a poll's read means.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// The content in force, one still settling (changed since the last poll), or a refused one
    /// already reported: nothing to do.
    Nothing,
    /// A new content, the same two polls in a row: parse it, then call [`Follow::applied`] if it
    /// is taken. A content the caller refuses is not offered again until the file changes.
    New(Vec<u8>),
    /// The file could not be read, the same way two polls in a row: report it (once).
    Unreadable(String),
}

/// The state of a followed file.
#[derive(Debug)]
pub struct Follow {
    /// The bytes of the content in force (`None`: none yet, or it was not read from the file).
    in_force: Option<Vec<u8>>,
    /// What the last poll read.
    last: Option<Read>,
    /// A read already handed to the caller (taken or refused): not offered again.
    offered: Option<Read>,
}

impl Follow {
    /// Following a file whose content in force was read as `in_force`.
    pub fn new(in_force: Option<Vec<u8>>) -> Follow {
        let last = in_force.clone().map(Ok);
        Follow { in_force, last, offered: None }
    }

    /// One poll read the file as `read`.
    pub fn observe(&mut self, read: Read) -> Observed {
        let settled = self.last.as_ref() == Some(&read);
        self.last = Some(read.clone());
        if read.as_ref().ok() == self.in_force.as_ref() {
            // Back to the content in force: a refused one seen again later is reported again.
            self.offered = None;
            return Observed::Nothing;
        }
        if !settled || self.offered.as_ref() == Some(&read) {
            return Observed::Nothing;
        }
        self.offered = Some(read.clone());
        match read {
            Ok(bytes) => Observed::New(bytes),
            Err(why) => Observed::Unreadable(why),
        }
    }

    /// The caller took `bytes` (from [`Observed::New`]) as the content in force.
    pub fn applied(&mut self, bytes: Vec<u8>) {
        self.in_force = Some(bytes);
        self.offered = None;
    }

    /// One poll of the file at `path`, read and observed: `None` when there is nothing to do; a
    /// new content `parse` takes (it is the content in force from then on); or, once, why the
    /// file was refused (`parse`'s error, or `unreadable`'s of why it could not be read).
    pub fn poll<T, E>(
        &mut self,
        path: &std::path::Path,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
        unreadable: impl FnOnce(String) -> E,
    ) -> Option<Result<T, E>> {
        match self.observe(read(path)) {
            Observed::Nothing => None,
            Observed::Unreadable(why) => Some(Err(unreadable(why))),
            Observed::New(bytes) => Some(parse(&bytes).inspect(|_| self.applied(bytes))),
        }
    }
}

/// Reads `path` for [`Follow::observe`].
pub fn read(path: &std::path::Path) -> Read {
    std::fs::read(path).map_err(|e| e.to_string())
}

/// (tests) A file named `file` holding `text`, in a fresh directory of its own (`what`, `name`
/// and the process id name it: tests running at once never share one).
#[cfg(test)]
pub(crate) fn scratch_file(what: &str, name: &str, file: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("handover-{what}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write the file");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_content_is_taken_once_it_holds_still_for_a_poll() {
        let mut f = Follow::new(Some(b"a".to_vec()));
        assert_eq!(f.observe(Ok(b"a".to_vec())), Observed::Nothing);
        assert_eq!(f.observe(Ok(b"b-half".to_vec())), Observed::Nothing, "changed since the last poll: may be torn");
        assert_eq!(f.observe(Ok(b"b-whole".to_vec())), Observed::Nothing, "still changing");
        assert_eq!(f.observe(Ok(b"b-whole".to_vec())), Observed::New(b"b-whole".to_vec()));
        f.applied(b"b-whole".to_vec());
        assert_eq!(f.observe(Ok(b"b-whole".to_vec())), Observed::Nothing);
    }

    #[test]
    fn a_refused_content_is_offered_once_until_the_file_changes() {
        let mut f = Follow::new(Some(b"good".to_vec()));
        assert_eq!(f.observe(Ok(Vec::new())), Observed::Nothing);
        assert_eq!(f.observe(Ok(Vec::new())), Observed::New(Vec::new()));
        for _ in 0..10 {
            assert_eq!(f.observe(Ok(Vec::new())), Observed::Nothing, "refused by the caller: not offered again");
        }
        let gone = || Err("No such file or directory".to_owned());
        assert_eq!(f.observe(gone()), Observed::Nothing);
        assert_eq!(f.observe(gone()), Observed::Unreadable("No such file or directory".to_owned()));
        assert_eq!(f.observe(gone()), Observed::Nothing);
        // The good content comes back, then the bad one again: a new incident, reported again.
        assert_eq!(f.observe(Ok(b"good".to_vec())), Observed::Nothing);
        assert_eq!(f.observe(Ok(Vec::new())), Observed::Nothing);
        assert_eq!(f.observe(Ok(Vec::new())), Observed::New(Vec::new()));
    }
}
