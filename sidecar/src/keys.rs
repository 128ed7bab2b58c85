//! The key ring: the keys that seal and open state cookies.
//!
//! The operator keeps them in a Secret with one data key, `keys`, mounted as a file. One key per
//! line: `<id> <base64url 32 bytes> [<created-unix-seconds>]`; `#` starts a comment. The first key
//! seals new cookies; every key opens them, so a rotation (a new first line) drops no session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

/// Why a key file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// A line is not `<id> <base64url key> [<created>]`.
    #[error("key file line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    /// Two lines carry the same id.
    #[error("key file has key id {0} twice")]
    DuplicateId(u32),
    /// No key at all.
    #[error("key file holds no key")]
    Empty,
}

/// One key of the ring.
#[derive(Clone)]
pub struct Key {
    pub id: u32,
    pub cipher: XChaCha20Poly1305,
}

/// The current key first, then the previous ones.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| KeyError::BadLine { line: line_no, reason: reason.to_owned() };
            let mut fields = line.split_whitespace();
            let id: u32 =
                fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| bad("the key id is not a number"))?;
            let material = fields
                .next()
                .and_then(|f| URL_SAFE_NO_PAD.decode(f).ok())
                .ok_or_else(|| bad("the key is not base64url"))?;
            if material.len() != 32 {
                return Err(bad("the key is not 32 bytes"));
            }
            if let Some(created) = fields.next() {
                created.parse::<u64>().map_err(|_| bad("the creation time is not a number"))?;
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::DuplicateId(id));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&material).map_err(|_| bad("bad key length"))?;
            keys.push(Key { id, cipher });
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
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
    let mut material = [0u8; 32];
    crate::random::fill(&mut material);
    format!("{id} {} {created_unix}", URL_SAFE_NO_PAD.encode(material))
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
        Arc::clone(&self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Re-reads the file; keeps the old ring if the new file is invalid.
    pub fn reload(&self) -> Result<(), KeyError> {
        let ring = KeyRing::load(&self.path)?;
        *self.ring.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(ring);
        Ok(())
    }

    /// Polls the file every `every` and reloads it when its bytes change.
    pub async fn follow(self: Arc<Self>, every: Duration, on_error: impl Fn(&KeyError) + Send + 'static) {
        let mut last = std::fs::read(&self.path).ok();
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let now = std::fs::read(&self.path).ok();
            if now == last {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    tracing::info!(path = %self.path.display(), keys = ?self.ring().ids(), "key ring reloaded");
                    last = now;
                }
                Err(e) => on_error(&e),
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

    #[test]
    fn refuses_bad_files_with_the_line_at_fault() {
        assert_eq!(KeyRing::parse("# nothing\n").err(), Some(KeyError::Empty));
        assert!(matches!(KeyRing::parse("x abc"), Err(KeyError::BadLine { line: 1, .. })));
        assert!(matches!(KeyRing::parse("1 !!!"), Err(KeyError::BadLine { line: 1, .. })));
        assert!(matches!(KeyRing::parse("1 AAAA"), Err(KeyError::BadLine { line: 1, .. })));
        let twice = format!("{}\n{}", generate_line(1, 0), generate_line(1, 0));
        assert_eq!(KeyRing::parse(&twice).err(), Some(KeyError::DuplicateId(1)));
    }
}
