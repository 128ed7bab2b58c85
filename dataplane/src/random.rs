//! Randomness from the operating system.

/// Fills `buf` with random bytes. The OS generator failing is not something a proxy can work
/// around, so it aborts loudly rather than sealing with a predictable nonce.
pub fn fill(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random generator failed: {e}");
    }
}

/// A new session id: 128 random bits, base64url.
pub fn session_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
