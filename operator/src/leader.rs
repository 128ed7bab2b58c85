//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it:
//!
//! - a candidate takes the Lease only when it is free (no holder) or when the record it last saw
//!   has not changed for `lease_duration` by the candidate's own clock (no trust in other clocks);
//! - every write is an update with the read `resourceVersion`, so two candidates racing for the
//!   Lease cannot both win: one gets 409 Conflict;
//! - the leader renews every `retry_period`, and steps down (stops writing) when it could not renew
//!   for `renew_deadline`, which is shorter than `lease_duration`: the old leader stops before a
//!   standby can take over;
//! - on SIGTERM the leader releases the Lease (no holder), so a standby takes over at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::error::Error;

/// Timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica may still write: shared by the elector (which records every successful
/// renewal) and the reconciler (which checks before it writes).
///
/// A renewal counts from when its request was *sent*, which is no later than the API server
/// wrote it; a standby can only take over `lease_duration` after it saw that write. Refusing to
/// write `renew_deadline` after the last renewal was sent leaves `lease_duration -
/// renew_deadline` for a write in flight. It also fences a leader that was paused (SIGSTOP, a
/// stalled node) and resumes after a standby took over: its clock says the renewal is stale.
#[derive(Debug)]
pub struct Leadership {
    epoch: Instant,
    /// 1 + milliseconds after `epoch` of the last renewal sent; 0: never (or stepped down).
    renewed_ms: AtomicU64,
    deadline: Duration,
}

impl Leadership {
    /// Not leading yet.
    pub fn new(deadline: Duration) -> Arc<Self> {
        Arc::new(Self { epoch: Instant::now(), renewed_ms: AtomicU64::new(0), deadline })
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant) {
        let ms = u64::try_from(sent.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        self.renewed_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// Leadership ended.
    pub fn stepped_down(&self) {
        self.renewed_ms.store(0, Ordering::SeqCst);
    }

    /// Whether a write now is safe.
    pub fn is_current(&self) -> bool {
        self.is_current_at(Instant::now())
    }

    fn is_current_at(&self, now: Instant) -> bool {
        let ms = self.renewed_ms.load(Ordering::SeqCst);
        if ms == 0 {
            return false;
        }
        let renewed = self.epoch + Duration::from_millis(ms - 1);
        now.saturating_duration_since(renewed) < self.deadline
    }
}

/// The part of a Lease the election compares to notice a change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Current holder, if any.
    pub holder: Option<String>,
    /// Its renew time, as written.
    pub renew_time: Option<Timestamp>,
    /// Lease duration in seconds, as written.
    pub duration_seconds: Option<i32>,
    /// Transitions so far.
    pub transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0),
            duration_seconds: spec.lease_duration_seconds,
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a new renew time.
    Renew,
    /// It is free or expired: take it.
    Acquire,
    /// Someone else holds it and it has not expired: wait.
    Wait,
}

/// Decides from the Lease's record, our identity, when we first saw this record (our clock) and
/// now. The record's own duration wins over ours, so a leader configured with a longer one is
/// respected.
pub fn decide(record: &Record, me: &str, observed_at: Instant, now: Instant, timing: &Timing) -> Decision {
    match record.holder.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None => Decision::Acquire,
        Some(_) => {
            let duration = record
                .duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(timing.lease_duration, Duration::from_secs);
            if now.saturating_duration_since(observed_at) > duration { Decision::Acquire } else { Decision::Wait }
        }
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Option<(Record, Instant)>,
    leadership: Arc<Leadership>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// A candidate for Lease `name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, name: String, identity: String, timing: Timing) -> Self {
        Self { api, name, identity, timing, observed: None, leadership: Leadership::new(timing.renew_deadline) }
    }

    /// The write fence the reconciler checks.
    pub fn leadership(&self) -> Arc<Leadership> {
        self.leadership.clone()
    }

    /// The election timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(15)),
            acquire_time: acquire,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew. `Ok(true)`: we hold the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Instant::now();
        let result = self.attempt(now).await;
        match result {
            Ok(true) => self.leadership.renewed(now),
            Ok(false) => self.leadership.stepped_down(),
            Err(_) => {}
        }
        result
    }

    async fn attempt(&mut self, now: Instant) -> Result<bool, Error> {
        let current = self.api.get_opt(&self.name).await.map_err(Error::kube(format!("get Lease {}", self.name)))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(Some(MicroTime(Timestamp::now())), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observed = Some((Record::of(&created), now));
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(Error::kube(format!("create Lease {}", self.name))(e)),
            };
        };
        let record = Record::of(&lease);
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.observed = Some((record.clone(), observed_at));
        let spec = match decide(&record, &self.identity, observed_at, now, &self.timing) {
            Decision::Wait => return Ok(false),
            Decision::Renew => {
                let acquire = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
                self.spec(acquire, record.transitions)
            }
            Decision::Acquire => self.spec(Some(MicroTime(Timestamp::now())), record.transitions.saturating_add(1)),
        };
        lease.spec = Some(spec);
        // `replace` carries the resourceVersion we read: a concurrent writer makes this fail.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observed = Some((Record::of(&written), now));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(Error::kube(format!("update Lease {}", self.name))(e)),
        }
    }

    /// Waits until we hold the Lease, or until `stop` resolves (then `false`).
    pub async fn acquire(&mut self, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.timing.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews until a renewal has failed for `renew_deadline`; then returns (leadership lost).
    pub async fn keep_renewing(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let attempt = tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!("another replica holds the Lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "Lease renewal failed"),
                Err(_) => tracing::warn!("Lease renewal timed out"),
            }
            if last_ok.elapsed() >= self.timing.renew_deadline {
                tracing::warn!("could not renew the Lease within the renew deadline");
                self.leadership.stepped_down();
                return;
            }
        }
    }

    /// Gives the Lease up (on shutdown) if we hold it.
    pub async fn release(&mut self) {
        self.leadership.stepped_down();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        if Record::of(&lease).holder.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader Lease"),
        }
        self.observed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>) -> Record {
        Record { holder: holder.map(str::to_owned), renew_time: None, duration_seconds: Some(15), transitions: 0 }
    }

    #[test]
    fn the_holder_renews() {
        let t = Instant::now();
        let d = decide(&record(Some("me")), "me", t, t, &Timing::default());
        assert_eq!(d, Decision::Renew);
    }

    #[test]
    fn a_free_lease_is_taken_at_once() {
        let t = Instant::now();
        assert_eq!(decide(&record(None), "me", t, t, &Timing::default()), Decision::Acquire);
    }

    #[test]
    fn another_holder_is_respected_until_its_record_is_stale_by_our_clock() {
        let seen = Instant::now();
        let timing = Timing::default();
        let r = record(Some("other"));
        assert_eq!(decide(&r, "me", seen, seen + Duration::from_secs(15), &timing), Decision::Wait);
        assert_eq!(decide(&r, "me", seen, seen + Duration::from_secs(16), &timing), Decision::Acquire);
    }

    #[test]
    fn the_records_own_duration_wins() {
        let seen = Instant::now();
        let mut r = record(Some("other"));
        r.duration_seconds = Some(60);
        let at = seen + Duration::from_secs(30);
        assert_eq!(decide(&r, "me", seen, at, &Timing::default()), Decision::Wait);
    }

    #[test]
    fn writes_are_fenced_once_the_last_renewal_is_older_than_the_deadline() {
        let l = Leadership::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!l.is_current_at(t0), "never renewed: not leading");
        l.renewed(t0);
        assert!(l.is_current_at(t0 + Duration::from_secs(9)));
        assert!(!l.is_current_at(t0 + Duration::from_secs(10)));
        // A later renewal extends it; an older one (a slow response) never shortens it.
        l.renewed(t0 + Duration::from_secs(5));
        l.renewed(t0 + Duration::from_secs(1));
        assert!(l.is_current_at(t0 + Duration::from_secs(14)));
        l.stepped_down();
        assert!(!l.is_current_at(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn the_leader_steps_down_before_a_standby_may_take_over() {
        let t = Timing::default();
        assert!(t.renew_deadline < t.lease_duration);
        assert!(t.retry_period < t.renew_deadline);
    }
}
