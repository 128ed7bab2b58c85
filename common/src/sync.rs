//! The one way this project takes a lock.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, taking it over even if a thread panicked while holding it.
///
/// Why: every structure behind these locks (caches, counters, the set of warned objects) stays
/// consistent between statements, so a panic elsewhere must not turn every later lock into a
/// second panic or a silently skipped update.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads `lock`, taking it over even if a thread panicked while writing it (see [`lock`]).
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `lock`, taking it over even if a thread panicked while writing it (see [`lock`]).
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_poisoned_by_a_panic_are_taken_over_with_their_values() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let rw = std::sync::Arc::new(RwLock::new(1));
        let (m, r) = (std::sync::Arc::clone(&mutex), std::sync::Arc::clone(&rw));
        let panicked = std::thread::spawn(move || {
            let (mut m, mut r) = (m.lock().expect("first lock"), r.write().expect("first write"));
            (*m, *r) = (2, 2);
            panic!("poison them");
        })
        .join();
        assert!(panicked.is_err() && mutex.is_poisoned() && rw.is_poisoned());
        assert_eq!((*lock(&mutex), *read(&rw)), (2, 2));
        *write(&rw) = 3;
        assert_eq!(*read(&rw), 3);
    }
}
