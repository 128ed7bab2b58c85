//! The request heads the proxy holds at once, bounded in bytes.
//!
//! Each request in flight holds its head (target and header fields, and the copies made of them
//! on the way to the app) until its answer's head is ready; a request whose body never comes holds
//! it until the body timeouts cut it. The connection cap alone does not bound that: an HTTP/2
//! connection carries up to 200 requests at once, and HPACK lets a client send a 60 KB head as a
//! few hundred bytes that name fields it sent before — 3.5 MB sent over 5 connections held 100 MB
//! of the sidecar (measured), past a pod's memory limit. So the heads in flight share one budget;
//! a request whose head would pass it is refused at once (503) and costs nothing more.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The budget of all requests' heads in flight.
pub(super) struct HeadsInFlight {
    /// Bytes of the heads held now.
    held: AtomicUsize,
    limit: usize,
    /// Whether the last request asking found the budget spent (its refusals are logged once).
    spent: AtomicBool,
}

/// One request's part of the budget, given back when dropped.
pub(super) struct Held<'a> {
    heads: &'a HeadsInFlight,
    bytes: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.heads.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Why a request was not given its part.
pub(super) struct Spent {
    /// Whether this is the first refusal since requests were last taken (to be logged).
    pub newly: bool,
}

impl HeadsInFlight {
    /// A budget of `limit` bytes of request heads at once.
    pub fn new(limit: usize) -> HeadsInFlight {
        HeadsInFlight { held: AtomicUsize::new(0), limit, spent: AtomicBool::new(false) }
    }

    /// Takes `bytes` of the budget for one request, or refuses when that would pass the limit. A
    /// head is always taken while no other is held, so one head as large as the limit still goes.
    pub fn take(&self, bytes: usize) -> Result<Held<'_>, Spent> {
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before.saturating_add(bytes) > self.limit {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Spent { newly: !self.spent.swap(true, Ordering::Relaxed) });
        }
        // A plain load first: the flag's cache line is written only when it changes.
        if self.spent.load(Ordering::Relaxed) {
            self.spent.store(false, Ordering::Relaxed);
        }
        Ok(Held { heads: self, bytes })
    }

    /// Bytes of the heads held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_past_the_budget_are_refused_until_some_are_given_back() {
        let heads = HeadsInFlight::new(100);
        let a = heads.take(60).ok().expect("within the budget");
        let b = heads.take(40).ok().expect("up to the budget");
        let refused = heads.take(1).err().expect("past the budget");
        assert!(refused.newly, "the first refusal is logged");
        assert!(!heads.take(1).err().expect("still past it").newly, "the next ones are not");
        assert_eq!(heads.held(), 100, "a refusal holds nothing");
        drop(a);
        let c = heads.take(50).ok().expect("given back: room again");
        assert!(heads.take(20).err().expect("spent again").newly, "a refusal after a take is logged again");
        drop((b, c));
        assert_eq!(heads.held(), 0);
        // One head as large as the budget, or larger, still goes when nothing else is held.
        let whole = heads.take(150).ok().expect("alone");
        assert!(heads.take(1).is_err());
        drop(whole);
    }
}
