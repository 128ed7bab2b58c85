//! The key file the operator keeps in the pool's Secret (data key `keys`) and the sidecars read.
//!
//! Text, one key per line: `<id> <base64url-no-pad of 32 bytes> <created-unix-seconds>`. The first
//! line is the sealing key; every line is accepted for opening; `#` starts a comment line.
//!
//! Rotation is two-phase so that no pod ever seals with a key another pod cannot open yet (the
//! kubelet refreshes mounted Secrets on its own schedule, up to a minute or two apart):
//! 1. **stage**: a new key (id = max + 1) is appended at the end: every sidecar learns to open it;
//! 2. **promote**: [`PROPAGATION`] later it moves to the top and becomes the sealing key;
//! 3. **prune**: the keys it replaced are dropped once every cookie they sealed has expired
//!    (`cookie.maxAge` plus [`PROPAGATION`] and a margin after the promotion).

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Data key of the Secret that holds the key file.
pub const SECRET_KEY: &str = "keys";
/// Time a staged key waits before it seals: longer than a kubelet's Secret refresh.
pub const PROPAGATION: Duration = Duration::from_secs(120);
/// Extra time a retired key is kept beyond the cookie lifetime.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(600);

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
            let _ = writeln!(out, "{} {} {}", key.id, URL_SAFE_NO_PAD.encode(key.secret), key.created);
        }
        out
    }

    fn max_id(&self) -> u32 {
        self.0.iter().map(|k| k.id).max().unwrap_or(0)
    }

    /// The key waiting to be promoted: the newest key when it is not the sealing one.
    pub fn staged(&self) -> Option<&Key> {
        let newest = self.0.iter().max_by_key(|k| k.id)?;
        let first = self.0.first()?;
        (newest.id != first.id).then_some(newest)
    }
}

/// What the operator knows besides the key file when it decides on rotation.
#[derive(Debug, Clone, Copy)]
pub struct RotationInput<'a> {
    /// Now, unix seconds.
    pub now: i64,
    /// `keyRotation.period`, if any.
    pub period: Option<Duration>,
    /// `cookie.maxAge`.
    pub cookie_max_age: Duration,
    /// Value of the pool's `handover.dev/rotate-keys` annotation.
    pub requested: Option<&'a str>,
    /// The request token the Secret was last rotated for (Secret annotation).
    pub last_request: Option<&'a str>,
    /// When the current sealing key was promoted (Secret annotation), unix seconds.
    pub promoted_at: Option<i64>,
}

/// One thing a rotation step did, for Events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A new key was staged (accepted, not yet sealing).
    Staged {
        /// Its id.
        id: u32,
    },
    /// A staged key became the sealing key.
    Promoted {
        /// Its id.
        id: u32,
    },
    /// Retired keys were dropped.
    Pruned {
        /// Their ids.
        ids: Vec<u32>,
    },
}

/// The new content of the Secret after one rotation step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// The new key ring.
    pub ring: KeyRing,
    /// New value of the promoted-at annotation.
    pub promoted_at: Option<i64>,
    /// New value of the rotated-for annotation.
    pub rotated_for: Option<String>,
    /// What changed.
    pub changes: Vec<KeyChange>,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Decides one rotation step; `None` when nothing is to change. `fresh` is 32 random bytes,
/// used only when a key is staged. Pure: the same input always gives the same plan.
pub fn plan(ring: &KeyRing, input: &RotationInput<'_>, fresh: [u8; 32]) -> Option<RotationPlan> {
    let mut keys = ring.0.clone();
    let mut changes = Vec::new();
    let mut promoted_at = input.promoted_at;
    let mut rotated_for = input.last_request.map(str::to_owned);

    // Promote a staged key once every pod had time to learn it.
    if let Some(staged) = ring.staged()
        && input.now >= staged.created.saturating_add(secs(PROPAGATION))
    {
        let id = staged.id;
        if let Some(pos) = keys.iter().position(|k| k.id == id) {
            let key = keys.remove(pos);
            keys.insert(0, key);
            promoted_at = Some(input.now);
            changes.push(KeyChange::Promoted { id });
        }
    }

    // Prune retired keys whose cookies have all expired.
    let staged_id = KeyRing(keys.clone()).staged().map(|k| k.id);
    let sealing_id = keys.first().map(|k| k.id);
    let retired: Vec<u32> =
        keys.iter().map(|k| k.id).filter(|id| Some(*id) != sealing_id && Some(*id) != staged_id).collect();
    if !retired.is_empty() {
        match promoted_at {
            None => {
                // Unknown promotion time (a hand-edited file): start the clock now.
                promoted_at = Some(input.now);
            }
            Some(at) => {
                let keep_until = at
                    .saturating_add(secs(input.cookie_max_age))
                    .saturating_add(secs(PROPAGATION))
                    .saturating_add(secs(PRUNE_MARGIN));
                if input.now >= keep_until {
                    keys.retain(|k| !retired.contains(&k.id));
                    changes.push(KeyChange::Pruned { ids: retired });
                }
            }
        }
    }

    // Stage a new key when one is due and none is waiting.
    let ring_now = KeyRing(keys.clone());
    if ring_now.staged().is_none() {
        let newest_created = keys.iter().map(|k| k.created).max().unwrap_or(0);
        let period_due = input.period.is_some_and(|p| input.now >= newest_created.saturating_add(secs(p).max(1)));
        let request = input.requested.filter(|r| !r.is_empty());
        let requested_due = request.is_some_and(|r| Some(r) != input.last_request);
        if period_due || requested_due {
            let id = ring_now.max_id().saturating_add(1);
            keys.push(Key { id, secret: fresh, created: input.now });
            if let Some(r) = request {
                rotated_for = Some(r.to_owned());
            }
            changes.push(KeyChange::Staged { id });
        }
    }

    let changed = KeyRing(keys.clone()) != *ring
        || promoted_at != input.promoted_at
        || rotated_for.as_deref() != input.last_request;
    changed.then_some(RotationPlan { ring: KeyRing(keys), promoted_at, rotated_for, changes })
}

/// The next time (unix seconds) at which [`plan`] would change something by the clock alone.
pub fn next_due(ring: &KeyRing, input: &RotationInput<'_>) -> Option<i64> {
    let mut due: Vec<i64> = Vec::new();
    if let Some(staged) = ring.staged() {
        due.push(staged.created.saturating_add(secs(PROPAGATION)));
    } else if let Some(p) = input.period {
        let newest = ring.0.iter().map(|k| k.created).max().unwrap_or(0);
        due.push(newest.saturating_add(secs(p).max(1)));
    }
    let has_retired = ring.0.len() > 1 + usize::from(ring.staged().is_some());
    if has_retired && let Some(at) = input.promoted_at {
        due.push(
            at.saturating_add(secs(input.cookie_max_age))
                .saturating_add(secs(PROPAGATION))
                .saturating_add(secs(PRUNE_MARGIN)),
        );
    }
    due.into_iter().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn input(now: i64) -> RotationInput<'static> {
        RotationInput {
            now,
            period: None,
            cookie_max_age: HOUR,
            requested: None,
            last_request: None,
            promoted_at: None,
        }
    }

    fn ids(ring: &KeyRing) -> Vec<u32> {
        ring.0.iter().map(|k| k.id).collect()
    }

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
    fn nothing_changes_without_period_or_request() {
        let ring = KeyRing::initial([1; 32], 0);
        assert_eq!(plan(&ring, &input(10_000_000), [2; 32]), None);
        assert_eq!(next_due(&ring, &input(10)), None);
    }

    #[test]
    fn rotation_stages_then_promotes_then_prunes() {
        let ring = KeyRing::initial([1; 32], 0);
        let mut inp = input(1_000);
        inp.period = Some(Duration::from_secs(1_000));

        // Period elapsed: key 2 is staged at the end, key 1 still seals.
        let staged = plan(&ring, &inp, [2; 32]).expect("stage");
        assert_eq!(ids(&staged.ring), [1, 2]);
        assert_eq!(staged.changes, [KeyChange::Staged { id: 2 }]);
        assert_eq!(next_due(&staged.ring, &inp), Some(1_000 + 120));

        // Before the propagation delay: nothing.
        assert_eq!(plan(&staged.ring, &input(1_119), [3; 32]), None);

        // After it: key 2 seals, key 1 is kept for opening.
        let promoted = plan(&staged.ring, &input(1_120), [3; 32]).expect("promote");
        assert_eq!(ids(&promoted.ring), [2, 1]);
        assert_eq!(promoted.promoted_at, Some(1_120));
        assert_eq!(promoted.changes, [KeyChange::Promoted { id: 2 }]);

        // Key 1 lives on for maxAge + propagation + margin after the promotion.
        let mut later = input(1_120 + 3_600 + 120 + 599);
        later.promoted_at = promoted.promoted_at;
        assert_eq!(plan(&promoted.ring, &later, [4; 32]), None);
        assert_eq!(next_due(&promoted.ring, &later), Some(1_120 + 3_600 + 720));
        later.now += 1;
        let pruned = plan(&promoted.ring, &later, [4; 32]).expect("prune");
        assert_eq!(ids(&pruned.ring), [2]);
        assert_eq!(pruned.changes, [KeyChange::Pruned { ids: vec![1] }]);
    }

    #[test]
    fn a_new_request_annotation_stages_exactly_one_key() {
        let ring = KeyRing::initial([1; 32], 0);
        let mut inp = input(50);
        inp.requested = Some("2026-11-25");
        let step = plan(&ring, &inp, [2; 32]).expect("stage");
        assert_eq!(ids(&step.ring), [1, 2]);
        assert_eq!(step.rotated_for.as_deref(), Some("2026-11-25"));
        // Same request again, recorded on the Secret: no second key.
        inp.last_request = Some("2026-11-25");
        assert_eq!(plan(&step.ring, &inp, [3; 32]), None);
        // An empty annotation requests nothing.
        let mut empty = input(50);
        empty.requested = Some("");
        assert_eq!(plan(&ring, &empty, [3; 32]), None);
    }

    #[test]
    fn a_request_while_a_key_is_staged_waits_for_the_promotion() {
        let ring =
            KeyRing(vec![Key { id: 1, secret: [1; 32], created: 0 }, Key { id: 2, secret: [2; 32], created: 100 }]);
        let mut inp = input(150);
        inp.requested = Some("again");
        assert_eq!(plan(&ring, &inp, [3; 32]), None);
    }

    #[test]
    fn unknown_promotion_time_starts_the_retention_clock_instead_of_pruning() {
        let ring =
            KeyRing(vec![Key { id: 5, secret: [5; 32], created: 100 }, Key { id: 4, secret: [4; 32], created: 0 }]);
        let step = plan(&ring, &input(1_000_000), [9; 32]).expect("record");
        assert_eq!(ids(&step.ring), [5, 4]);
        assert_eq!(step.promoted_at, Some(1_000_000));
        assert!(step.changes.is_empty());
    }

    #[test]
    fn ids_grow_from_the_maximum_even_when_it_is_not_first() {
        let ring =
            KeyRing(vec![Key { id: 9, secret: [9; 32], created: 0 }, Key { id: 3, secret: [3; 32], created: 0 }]);
        let mut inp = input(10);
        inp.requested = Some("r");
        inp.promoted_at = Some(10);
        let step = plan(&ring, &inp, [1; 32]).expect("stage");
        assert_eq!(ids(&step.ring), [9, 3, 10]);
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

        #[test]
        fn planning_never_panics_and_keeps_a_sealing_key(
            now in 0i64..4_000_000_000,
            created in 0i64..4_000_000_000,
            period in proptest::option::of(0u64..100_000_000),
            promoted in proptest::option::of(0i64..4_000_000_000),
        ) {
            let ring = KeyRing(vec![
                Key { id: u32::MAX, secret: [1; 32], created },
                Key { id: 1, secret: [2; 32], created: 0 },
            ]);
            let input = RotationInput {
                now,
                period: period.map(Duration::from_secs),
                cookie_max_age: HOUR,
                requested: Some("x"),
                last_request: None,
                promoted_at: promoted,
            };
            if let Some(step) = plan(&ring, &input, [3; 32]) {
                proptest::prop_assert!(!step.ring.0.is_empty());
            }
            let _ = next_due(&ring, &input);
        }
    }
}
