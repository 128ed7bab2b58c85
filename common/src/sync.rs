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
    fn a_lock_poisoned_by_a_panic_is_taken_over_with_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let holder = std::sync::Arc::clone(&mutex);
        let panicked = std::thread::spawn(move || {
            let mut value = holder.lock().expect("first lock");
            *value = 2;
            panic!("poison it");
        })
        .join();
        assert!(panicked.is_err() && mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 2);
    }

    #[test]
    fn a_rw_lock_poisoned_by_a_panic_is_taken_over_with_its_value() {
        let rw = std::sync::Arc::new(RwLock::new(1));
        let holder = std::sync::Arc::clone(&rw);
        let panicked = std::thread::spawn(move || {
            let mut value = holder.write().expect("first write");
            *value = 2;
            panic!("poison it");
        })
        .join();
        assert!(panicked.is_err() && rw.is_poisoned());
        assert_eq!(*read(&rw), 2);
        *write(&rw) = 3;
        assert_eq!(*read(&rw), 3);
    }
}
