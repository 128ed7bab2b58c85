//! Randomness from the operating system.

use std::cell::RefCell;

/// Fills `buf` with random bytes. The OS generator failing is not something a proxy can work
/// around, so it aborts loudly rather than sealing with a predictable nonce.
pub fn fill(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random generator failed: {e}");
    }
}

/// Bytes asked of the OS at once for [`fill_small`].
const POOL_BYTES: usize = 4096;

/// A thread's unused bytes of one `getrandom` call, handed out in order, each once.
struct Pool {
    bytes: [u8; POOL_BYTES],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL_BYTES], used: POOL_BYTES }) };
}

/// Fills `buf` (a nonce prefix, a session id: a few dozen bytes) with random bytes from the OS,
/// taken from a per-thread buffer of one `getrandom` call: a system call for each was once a
/// third of the sidecar's system calls, when every cookie drew a nonce of its own. The bytes are the OS's own,
/// not a generator's stretched from a seed; each is handed out once and wiped from the buffer.
/// Longer requests (key material) go to the OS directly.
pub fn fill_small(buf: &mut [u8]) {
    if buf.len() > POOL_BYTES / 16 {
        return fill(buf);
    }
    POOL.with_borrow_mut(|pool| {
        if pool.used + buf.len() > POOL_BYTES {
            fill(&mut pool.bytes);
            pool.used = 0;
        }
        let taken = &mut pool.bytes[pool.used..pool.used + buf.len()];
        buf.copy_from_slice(taken);
        taken.fill(0);
        pool.used += buf.len();
    });
}

/// A new session id: 128 random bits, base64url.
pub fn session_id() -> String {
    let mut bytes = [0u8; 16];
    fill_small(&mut bytes);
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_fills_across_several_pool_refills_never_repeat() {
        // 24-byte nonces, five pools' worth: a value handed out twice (a refill that did not
        // happen, an index that did not move) would show as a duplicate.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(5 * POOL_BYTES / 24) {
            let mut nonce = [0u8; 24];
            fill_small(&mut nonce);
            assert!(seen.insert(nonce), "a nonce came out twice");
        }
        let mut big = [0u8; POOL_BYTES];
        fill_small(&mut big);
        assert!(big.iter().any(|&b| b != 0), "a long fill goes to the OS and is filled");
    }
}
