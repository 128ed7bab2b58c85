//! The one way this project takes a lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over even if a thread panicked while holding it.
///
/// Why: every structure behind these locks (caches, counters, the set of warned objects) stays
/// consistent between statements, so a panic elsewhere must not turn every later lock into a
/// second panic or a silently skipped update.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
}
