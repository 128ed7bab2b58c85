//! The key file: the cookie keys the operator keeps in the pool's Secret (data key `keys`) and
//! every sidecar reads. One format, parsed and written here only.
//!
//! Text, one key per line: `<id> <base64url-no-pad of 32 bytes> <created-unix-seconds>`. The first
//! line is the sealing key; every line is accepted for opening; `#` starts a comment line.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Data key of the Secret that holds the key file.
pub const SECRET_KEY: &str = "keys";

/// One key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// Key id, written into every cookie sealed with it.
    pub id: u32,
    /// 32 secret bytes.
    pub secret: [u8; 32],
    /// Creation time, unix seconds.
    pub created: i64,
}

impl Key {
    /// The key's line in the file.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.id, URL_SAFE_NO_PAD.encode(self.secret), self.created)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("created", &self.created)
            .finish()
    }
}

/// The keys in file order: the first one seals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing(pub Vec<Key>);

/// Why a key file could not be read. Messages name the line, never the key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The file holds no key at all.
    #[error("the key file holds no key")]
    Empty,
    /// A line is not `<id> <key> <created>`.
    #[error("line {line}: expected `<id> <base64url key> <created-unix-seconds>`")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// The key is not base64url (no padding) of exactly 32 bytes.
    #[error("line {line}: the key is not base64url (no padding) of 32 bytes")]
    BadKey {
        /// 1-based line number.
        line: usize,
    },
    /// Two lines carry the same id.
    #[error("line {line}: key id {id} appears twice")]
    DuplicateId {
        /// 1-based line number.
        line: usize,
        /// The repeated id.
        id: u32,
    },
    /// The data is not UTF-8.
    #[error("the key file is not UTF-8 text")]
    NotText,
}

impl KeyRing {
    /// Parses a key file.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split_ascii_whitespace();
            let (Some(id), Some(secret), Some(created), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(KeyFileError::Malformed { line });
            };
            let id: u32 = id.parse().map_err(|_| KeyFileError::Malformed { line })?;
            let created: i64 = created.parse().ok().filter(|c| *c >= 0).ok_or(KeyFileError::Malformed { line })?;
            let bytes = URL_SAFE_NO_PAD.decode(secret).map_err(|_| KeyFileError::BadKey { line })?;
            let secret: [u8; 32] = bytes.try_into().map_err(|_| KeyFileError::BadKey { line })?;
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyFileError::DuplicateId { line, id });
            }
            keys.push(Key { id, secret, created });
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        Ok(Self(keys))
    }

    /// Parses the raw bytes of the Secret's `keys` entry.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, KeyFileError> {
        std::str::from_utf8(bytes).map_err(|_| KeyFileError::NotText).and_then(Self::parse)
    }

    /// A ring with one fresh key, id 1.
    pub fn initial(secret: [u8; 32], now: i64) -> Self {
        Self(vec![Key { id: 1, secret, created: now }])
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# handover cookie keys: <id> <base64url key> <created unix seconds>.\n# The first key seals; all keys open. Managed by handover-operator.\n",
        );
        for key in &self.0 {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{}", key.line());
        }
        out
    }

    /// The highest key id.
    pub fn max_id(&self) -> u32 {
        self.0.iter().map(|k| k.id).max().unwrap_or(0)
    }

    /// The key waiting to be promoted: the newest key when it is not the sealing one.
    pub fn staged(&self) -> Option<&Key> {
        let newest = self.0.iter().max_by_key(|k| k.id)?;
        let first = self.0.first()?;
        (newest.id != first.id).then_some(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_file_parses_back_to_the_same_ring() {
        let ring = KeyRing(vec![
            Key { id: 7, secret: [7; 32], created: 1_700_000_000 },
            Key { id: 3, secret: [3; 32], created: 1_600_000_000 },
        ]);
        let text = ring.render();
        assert_eq!(KeyRing::parse(&text), Ok(ring));
        // The format the sidecar reads: first line after comments is id 7.
        let first = text.lines().find(|l| !l.starts_with('#')).unwrap_or("");
        assert!(first.starts_with("7 "));
        assert_eq!(first.split(' ').nth(1).map(str::len), Some(43));
    }

    #[test]
    fn malformed_files_are_refused_with_the_line_number() {
        let good = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let short = URL_SAFE_NO_PAD.encode([1u8; 16]);
        assert_eq!(KeyRing::parse(""), Err(KeyFileError::Empty));
        assert_eq!(KeyRing::parse("# only a comment\n\n"), Err(KeyFileError::Empty));
        assert_eq!(KeyRing::parse(&format!("1 {good}")), Err(KeyFileError::Malformed { line: 1 }));
        assert_eq!(KeyRing::parse(&format!("x {good} 5")), Err(KeyFileError::Malformed { line: 1 }));
        assert_eq!(KeyRing::parse(&format!("1 {good} -5")), Err(KeyFileError::Malformed { line: 1 }));
        assert_eq!(KeyRing::parse(&format!("1 {good} 5 extra")), Err(KeyFileError::Malformed { line: 1 }));
        assert_eq!(KeyRing::parse(&format!("# c\n1 {short} 5")), Err(KeyFileError::BadKey { line: 2 }));
        assert_eq!(KeyRing::parse(&format!("1 {good}= 5")), Err(KeyFileError::BadKey { line: 1 }));
        assert_eq!(
            KeyRing::parse(&format!("1 {good} 5\n1 {good} 6")),
            Err(KeyFileError::DuplicateId { line: 2, id: 1 })
        );
        assert_eq!(KeyRing::parse_bytes(&[0xff, 0xfe]), Err(KeyFileError::NotText));
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let ring = KeyRing::initial([0xab; 32], 0);
        let shown = format!("{ring:?}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in ".{0,400}") {
            let _ = KeyRing::parse(&text);
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = KeyRing::parse_bytes(&bytes);
        }

        #[test]
        fn any_ring_round_trips(keys in proptest::collection::btree_map(proptest::num::u32::ANY, (proptest::array::uniform32(proptest::num::u8::ANY), 0i64..i64::MAX), 1..8)) {
            let ring = KeyRing(keys.into_iter().map(|(id, (secret, created))| Key { id, secret, created }).collect());
            proptest::prop_assert_eq!(KeyRing::parse(&ring.render()), Ok(ring));
        }
    }
}
