//! Key rotation: the operator's part of the key file ([`handover_common::keyfile`]).
//!
//! Rotation is two-phase so that no pod ever seals with a key another pod cannot open yet (the
//! kubelet refreshes mounted Secrets on its own schedule, up to a minute or two apart):
//! 1. **stage**: a new key (id = max + 1) is appended at the end: every sidecar learns to open it;
//! 2. **promote**: [`PROPAGATION`] later it moves to the top and becomes the sealing key;
//! 3. **prune**: the keys it replaced are dropped once every cookie they sealed has expired
//!    (`cookie.maxAge` plus [`PROPAGATION`] and a margin after the promotion).

use std::time::Duration;

pub use handover_common::keyfile::{Key, KeyFileError, KeyRing, SECRET_KEY};

/// Time a staged key waits before it seals: longer than a kubelet's Secret refresh.
pub const PROPAGATION: Duration = Duration::from_secs(120);
/// Extra time a retired key is kept beyond the cookie lifetime.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(600);

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

    proptest::proptest! {
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
