//! The state cookie's name and attributes as a pool configures them, and which of them browsers
//! and the sidecar take: the sidecar refuses a configuration at its start, and the operator the
//! pool that would make it (a status, not a crash loop).

/// The prefix browsers bind to `Secure`, `Path=/` and no `Domain`: such a cookie cannot be set or
/// overwritten by a sibling subdomain or over plain HTTP.
pub const HOST_PREFIX: &str = "__Host-";
/// The prefix browsers bind to `Secure`.
pub const SECURE_PREFIX: &str = "__Secure-";

/// The cookie's name and attributes, as the pool configures them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub name: String,
    pub path: String,
    /// Empty: a host-only cookie (the usual choice).
    pub domain: String,
    pub secure: bool,
    pub same_site: String,
}

/// Why a cookie configuration is refused at start-up.
pub fn validate(a: &Attrs) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if a.name.is_empty() || a.name.len() > 64 || !a.name.bytes().all(token) {
        return Err(format!(
            "cookie name {:?}: 1 to 64 of A-Z a-z 0-9 _ - (a dot would clash with the chunk names name.1, name.2, …)",
            a.name
        ));
    }
    if !a.path.starts_with('/') || a.path.len() > 256 || !a.path.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        return Err(format!("cookie path {:?}: must start with / and hold no ; spaces or control characters", a.path));
    }
    let host_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    if a.domain.len() > 253 || !a.domain.bytes().all(host_char) {
        return Err(format!("cookie domain {:?}: a host name (A-Z a-z 0-9 - .)", a.domain));
    }
    if a.name.starts_with(HOST_PREFIX) && !(a.secure && a.path == "/" && a.domain.is_empty()) {
        return Err(format!("cookie name {:?}: the __Host- prefix needs Secure, Path=/ and no Domain", a.name));
    }
    if a.name.starts_with(SECURE_PREFIX) && !a.secure {
        return Err(format!("cookie name {:?}: the __Secure- prefix needs Secure", a.name));
    }
    if a.same_site.eq_ignore_ascii_case("none") && !a.secure {
        return Err("SameSite=None needs Secure (browsers refuse the cookie otherwise)".into());
    }
    Ok(())
}
