//! The key ring: the keys that seal and open state cookies, read from the key file the operator
//! keeps in the pool's Secret (format: [`handover_common::keyfile`]). The first key seals new
//! cookies; every key opens them, so a rotation (a new first line) drops no session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use handover_common::keyfile;
use handover_common::sync;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::settled_file::{self, Follow};
use crate::xchacha::XChaCha20Poly1305;

/// The forward key of a pool key (it signs forwards: [`crate::peer_auth`]): HMAC-SHA256(pool key,
/// label), so the cookie key and the forward key are never the same bytes.
fn derive_forward_key(secret: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"handover forward key v1");
    mac.finalize().into_bytes().into()
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// The file is not a valid key file.
    #[error(transparent)]
    Invalid(#[from] keyfile::KeyFileError),
}

/// One key of the ring.
#[derive(Clone)]
pub struct Key {
    pub id: u32,
    pub cipher: XChaCha20Poly1305,
    /// Authenticates forwards between the pool's sidecars ([`crate::peer_auth`]): derived from the
    /// secret, so the cookie key itself is never used for two purposes.
    pub forward: [u8; 32],
}

/// The current key first, then the previous ones.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let file = keyfile::KeyRing::parse(text)?;
        let keys = file
            .0
            .iter()
            .map(|k| Key {
                id: k.id,
                cipher: XChaCha20Poly1305::new(&k.secret),
                forward: derive_forward_key(&k.secret),
            })
            .collect();
        Ok(KeyRing { keys })
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<KeyRing, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
        KeyRing::parse(&text)
    }

    /// The key that seals new cookies.
    pub fn current(&self) -> &Key {
        &self.keys[0]
    }

    /// The key with this id, if the ring still holds it.
    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Ids of all keys, current first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }
}

/// A line for a key file holding a fresh random key.
pub fn generate_line(id: u32, created_unix: u64) -> String {
    let mut secret = [0u8; 32];
    crate::random::fill(&mut secret);
    keyfile::Key { id, secret, created: i64::try_from(created_unix).unwrap_or(i64::MAX) }.line()
}

/// A key ring that follows its file: Kubernetes updates a mounted Secret by swapping a symlink,
/// so the file is polled (cheap, and it sees every kind of update) rather than watched.
pub struct KeyFile {
    path: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
}

impl KeyFile {
    /// Loads the file once; fails if it is not valid now.
    pub fn open(path: PathBuf) -> Result<Arc<KeyFile>, KeyError> {
        let ring = KeyRing::load(&path)?;
        Ok(Arc::new(KeyFile { path, ring: RwLock::new(Arc::new(ring)) }))
    }

    /// A ring from memory, for tests and the demo.
    pub fn fixed(ring: KeyRing) -> Arc<KeyFile> {
        Arc::new(KeyFile { path: PathBuf::new(), ring: RwLock::new(Arc::new(ring)) })
    }

    /// The ring as last loaded.
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&sync::read(&self.ring))
    }

    /// Polls the file every `every` and reloads it when its bytes change and then hold still for
    /// one poll ([`crate::settled_file`]: a file read half-way through an in-place rewrite is often
    /// a valid ring that lacks the keys live cookies use). A refused file is passed to `on_error`
    /// once, not at every poll; the previous ring stays.
    pub async fn follow(self: Arc<Self>, every: Duration, on_error: impl Fn(&KeyError) + Send + 'static) {
        let mut file = Follow::new(settled_file::read(&self.path).ok());
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let unreadable = |reason| KeyError::Unreadable { path: self.path.display().to_string(), reason };
            let parse = |bytes: &[u8]| match std::str::from_utf8(bytes) {
                Err(_) => Err(unreadable("not UTF-8 text".to_owned())),
                Ok(text) => KeyRing::parse(text),
            };
            match file.poll(&self.path, parse, unreadable) {
                None => {}
                Some(Ok(ring)) => {
                    *sync::write(&self.ring) = Arc::new(ring);
                    tracing::info!(path = %self.path.display(), keys = ?self.ring().ids(), "key ring reloaded");
                }
                Some(Err(e)) => on_error(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_is_the_current_key() {
        let text = format!("# rotated\n{}\n{}\n", generate_line(7, 1), generate_line(3, 0));
        let ring = KeyRing::parse(&text).expect("valid ring");
        assert_eq!(ring.current().id, 7);
        assert_eq!(ring.ids(), vec![7, 3]);
        assert!(ring.get(3).is_some());
        assert!(ring.get(4).is_none());
    }

    /// A key file in a fresh directory of its own.
    fn key_file(name: &str, text: &str) -> PathBuf {
        settled_file::scratch_file("keys", name, "keys", text)
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_file_read_half_way_through_a_rewrite_drops_no_key() {
        let (new, old) = (generate_line(2, 0), generate_line(1, 0));
        let path = key_file("torn", &format!("{old}\n"));
        let keys = KeyFile::open(path.clone()).expect("valid");
        tokio::spawn(Arc::clone(&keys).follow(Duration::from_secs(1), |e| panic!("refused: {e}")));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A writer that rewrites the file in place (truncate, write) is read after its first line:
        // a valid ring that has lost the key the live cookies are sealed with.
        std::fs::write(&path, format!("{new}\n")).expect("first half");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(keys.ring().ids(), [1], "a file changed since the last poll is not taken yet");
        std::fs::write(&path, format!("{new}\n{old}\n")).expect("whole");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(keys.ring().ids(), [2, 1], "the whole file, once it holds still, is");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_key_file_is_reported_once_not_at_every_poll() {
        let path = key_file("refused", &format!("{}\n", generate_line(1, 0)));
        let keys = KeyFile::open(path.clone()).expect("valid");
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&refused);
        tokio::spawn(Arc::clone(&keys).follow(Duration::from_secs(1), move |_| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(&path, "").expect("emptied");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 1, "one empty file, one refusal");
        assert_eq!(keys.ring().ids(), [1], "the previous ring stays");
        std::fs::remove_file(&path).expect("removed");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 2, "a file gone: one more");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn refuses_bad_files_with_the_line_at_fault() {
        use keyfile::KeyFileError as E;
        assert_eq!(KeyRing::parse("# nothing\n").err(), Some(KeyError::Invalid(E::Empty)));
        assert!(matches!(KeyRing::parse("x abc 0"), Err(KeyError::Invalid(E::Malformed { line: 1 }))));
        assert!(matches!(KeyRing::parse("1 !!! 0"), Err(KeyError::Invalid(E::BadKey { line: 1 }))));
        assert!(matches!(KeyRing::parse("1 AAAA 0"), Err(KeyError::Invalid(E::BadKey { line: 1 }))));
        let twice = format!("{}\n{}", generate_line(1, 0), generate_line(1, 0));
        assert!(matches!(KeyRing::parse(&twice), Err(KeyError::Invalid(E::DuplicateId { id: 1, .. }))));
    }
}
