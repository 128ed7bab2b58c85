//! The order of a session's states: state-changing requests of one session (any method but GET,
//! HEAD, OPTIONS, TRACE) go through the app one at a time, from the moment the sidecar sends them
//! until their response is sealed, so the states they push are taken in the order the sidecar
//! numbers them (`decide::seal`), and a newer version never holds an older state. Safe requests
//! (page loads, long-polls, event streams) run alongside; a state one of them pushes is not sealed
//! when a state-changing request of the session ran meanwhile (it may be older than that one's).
//!
//! The precedent: PHP and ASP.NET lock a session for the whole request; this lock is narrower
//! (state-changing requests only), so a long-poll does not hold a session's other requests back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::sessions::SessionMap;
use handover_common::sync;

struct Entry {
    /// One permit: the turn of the session's state-changing requests. A permit taken is
    /// forgotten and given back by the [`Turn`]'s drop, so that the entry needs no second `Arc`
    /// for an owned guard.
    turn: tokio::sync::Semaphore,
    /// State-changing requests of the session that got their turn so far.
    mutations: AtomicU64,
    /// State-changing requests of the session at the app now (0 or 1).
    mutating: AtomicUsize,
}

impl Default for Entry {
    fn default() -> Self {
        Entry { turn: tokio::sync::Semaphore::new(1), mutations: AtomicU64::new(0), mutating: AtomicUsize::new(0) }
    }
}

/// The sessions that have requests at the app now (the key is shared with their turns: one
/// allocation per session at the app, not one per request).
#[derive(Default)]
pub(super) struct SessionOrder {
    entries: Mutex<SessionMap<Arc<str>, Arc<Entry>>>,
}

/// A request's place in its session's order; dropped when its response is sealed.
pub(super) struct Turn<'a> {
    order: &'a SessionOrder,
    session: Arc<str>,
    entry: Arc<Entry>,
    /// Whether this request holds the session's turn (a state-changing request).
    holds_turn: bool,
    /// For a safe request: the mutations counted, and whether one was at the app, when it began.
    began: (u64, usize),
}

impl SessionOrder {
    /// Waits for the turn of a state-changing request (`mutating`), or records when a safe one began.
    pub(super) async fn enter(&self, session: &str, mutating: bool) -> Turn<'_> {
        let (session, entry) = {
            let mut entries = sync::lock(&self.entries);
            match entries.get_key_value(session) {
                Some((key, entry)) => (Arc::clone(key), Arc::clone(entry)),
                None => {
                    let key: Arc<str> = Arc::from(session);
                    let entry = Arc::new(Entry::default());
                    entries.insert(Arc::clone(&key), Arc::clone(&entry));
                    (key, entry)
                }
            }
        };
        // Built before the wait, so that a request dropped while waiting still leaves the map.
        let mut turn = Turn { order: self, session, entry, holds_turn: false, began: (0, 0) };
        if mutating {
            // Never closed, so the acquire cannot fail; the permit goes back in `Turn::drop`.
            if let Ok(permit) = turn.entry.turn.acquire().await {
                permit.forget();
                turn.holds_turn = true;
                turn.entry.mutations.fetch_add(1, Ordering::SeqCst);
                turn.entry.mutating.fetch_add(1, Ordering::SeqCst);
            }
        }
        turn.began = (turn.entry.mutations.load(Ordering::SeqCst), turn.entry.mutating.load(Ordering::SeqCst));
        turn
    }
}

impl Turn<'_> {
    /// Whether a state pushed on this request's response may be sealed: always for a
    /// state-changing request (it had its turn); for a safe one, only when no state-changing
    /// request of the session was at the app at any time since it began.
    pub(super) fn may_seal_push(&self) -> bool {
        self.holds_turn
            || (self.began.1 == 0
                && self.entry.mutating.load(Ordering::SeqCst) == 0
                && self.entry.mutations.load(Ordering::SeqCst) == self.began.0)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.holds_turn) {
            self.entry.mutating.fetch_sub(1, Ordering::SeqCst);
            self.entry.turn.add_permits(1);
        }
        let mut entries = sync::lock(&self.order.entries);
        // The map's reference and this one: nobody else waits on or reads the entry.
        if Arc::strong_count(&self.entry) == 2 {
            entries.remove(&self.session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_changing_requests_of_a_session_take_turns_and_safe_ones_do_not_wait() {
        let order = SessionOrder::default();
        let first = order.enter("s", true).await;
        // Another session, and a safe request of this one, go at once.
        let other = order.enter("t", true).await;
        let reading = order.enter("s", false).await;
        assert!(!reading.may_seal_push(), "a state-changing request is at the app");
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), order.enter("s", true)).await;
        assert!(waiting.is_err(), "the second state-changing request waits its turn");
        drop(first);
        let second = order.enter("s", true).await;
        assert!(second.may_seal_push());
        drop((second, other, reading));
        assert!(sync::lock(&order.entries).is_empty(), "idle sessions leave the map");
    }

    #[tokio::test]
    async fn a_safe_request_overtaken_by_a_change_does_not_seal_its_push() {
        let order = SessionOrder::default();
        let quiet = order.enter("s", false).await;
        assert!(quiet.may_seal_push());
        let reading = order.enter("s", false).await;
        drop(order.enter("s", true).await);
        assert!(!reading.may_seal_push(), "a change ran while it was at the app");
        drop((quiet, reading));
    }
}
