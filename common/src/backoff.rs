//! A retry pause that doubles from its first value up to a cap, and starts over when the thing
//! retried works again: the pause of every failed watch, the operator's and each sidecar's.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Doubling {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Doubling {
    pub const fn new(first: Duration, max: Duration) -> Doubling {
        Doubling { first, max, next: first }
    }

    /// The next pause; the one after it is twice as long, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(self.max);
        pause
    }

    /// Back to the first pause.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_start_over_on_reset() {
        let mut pause = Doubling::new(Duration::from_millis(500), Duration::from_secs(5));
        let pauses: Vec<u128> = (0..6).map(|_| pause.next_pause().as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        pause.reset();
        assert_eq!(pause.next_pause(), Duration::from_millis(500));
    }
}
