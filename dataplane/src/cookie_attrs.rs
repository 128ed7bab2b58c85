//! The state cookie's name and attributes: per pool, so that pools under one host never overwrite
//! or refuse each other's cookies, and the one place a `Set-Cookie` line is written.

pub use handover_common::cookie_attrs::{Attrs, HOST_PREFIX, SECURE_PREFIX, validate};

/// FNV-1a, 32 bits, of the pool name: stable across builds and machines, so every sidecar of a
/// pool (and every release) derives the same cookie name.
fn pool_hash(pool: &str) -> u32 {
    pool.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The default cookie name of pool `namespace/name`: `handover-<8 hex digits of its hash>`, so two
/// pools of one host never share a name; with the `__Host-` prefix when the cookie can carry it
/// (`Secure`, `Path=/`, no `Domain`).
pub fn default_name(pool: &str, secure: bool, path: &str, domain: &str) -> String {
    let base = format!("handover-{:08x}", pool_hash(pool));
    if secure && path == "/" && domain.is_empty() { format!("{HOST_PREFIX}{base}") } else { base }
}

/// One `Set-Cookie` value: `name=value` with the pool's attributes; `max_age` 0 deletes it.
pub fn set_cookie_line(a: &Attrs, name: &str, value: &str, max_age: u64) -> String {
    let mut age = itoa::Buffer::new();
    let domain = if a.domain.is_empty() { "" } else { "; Domain=" };
    let secure = if a.secure { "; Secure" } else { "" };
    #[rustfmt::skip]
    let parts = [
        name, "=", value, "; Path=", &a.path, domain, &a.domain, "; Max-Age=", age.format(max_age),
        "; HttpOnly; SameSite=", &a.same_site, secure,
    ];
    // One allocation of exactly the final size (a state chunk's line is ~4 KB): the `Bytes` the
    // header value is made of then takes it over without another (it must when there is spare
    // capacity). `push_str` and `itoa` rather than `write!`: on every sealed response.
    let mut line = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        line.push_str(part);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(name: &str, path: &str, domain: &str, secure: bool) -> Attrs {
        Attrs { name: name.into(), path: path.into(), domain: domain.into(), secure, same_site: "Lax".into() }
    }

    #[test]
    fn default_names_differ_between_pools_and_are_stable() {
        let shop = default_name("shop/web", false, "/", "");
        let account = default_name("shop/account", false, "/", "");
        assert_ne!(shop, account);
        assert_eq!(shop, default_name("shop/web", false, "/", ""), "the same on every sidecar");
        assert_eq!(shop, "handover-eb78a544", "pinned: a new build must not rename every live cookie");
        assert!(validate(&attrs(&shop, "/", "", false)).is_ok());
    }

    #[test]
    fn the_host_prefix_is_used_only_where_browsers_accept_it() {
        assert_eq!(default_name("shop/web", true, "/", ""), "__Host-handover-eb78a544");
        assert_eq!(default_name("shop/web", true, "/shop", ""), "handover-eb78a544");
        assert_eq!(default_name("shop/web", true, "/", "example.com"), "handover-eb78a544");
        assert_eq!(default_name("shop/web", false, "/", ""), "handover-eb78a544");
        for (path, domain, secure) in [("/", "", true), ("/shop", "", true), ("/", "example.com", true)] {
            let name = default_name("a/b", secure, path, domain);
            assert!(validate(&attrs(&name, path, domain, secure)).is_ok(), "{name} {path} {domain}");
        }
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(validate(&attrs("handover", "/", "", false)).is_ok());
        assert!(validate(&attrs("hand.over", "/", "", false)).is_err(), "a dot clashes with chunk names");
        assert!(validate(&attrs("", "/", "", false)).is_err());
        assert!(validate(&attrs("a b", "/", "", false)).is_err());
        assert!(validate(&attrs("handover", "shop", "", false)).is_err());
        assert!(validate(&attrs("handover", "/a;b", "", false)).is_err());
        assert!(validate(&attrs("handover", "/", "ex ample.com", false)).is_err());
        assert!(validate(&attrs("__Host-x", "/shop", "", true)).is_err());
        assert!(validate(&attrs("__Host-x", "/", "", false)).is_err());
        assert!(validate(&attrs("__Host-x", "/", "example.com", true)).is_err());
        assert!(validate(&attrs("__Secure-x", "/shop", "", false)).is_err());
        assert!(validate(&attrs("__Secure-x", "/shop", "", true)).is_ok());
        let mut none = attrs("x", "/", "", false);
        none.same_site = "None".into();
        assert!(validate(&none).is_err());
    }

    #[test]
    fn set_cookie_lines_carry_path_and_domain() {
        let a = attrs("handover-1", "/shop", "example.com", true);
        assert_eq!(
            set_cookie_line(&a, "handover-1.1", "v", 60),
            "handover-1.1=v; Path=/shop; Domain=example.com; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        let host_only = attrs("handover-1", "/", "", false);
        assert_eq!(
            set_cookie_line(&host_only, "handover-1", "", 0),
            "handover-1=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
    }

    proptest! {
        #[test]
        fn every_default_name_is_valid_for_its_own_attributes(
            pool in "[a-z0-9-]{1,20}/[a-z0-9-]{1,20}", secure in any::<bool>(),
            path in prop_oneof![Just("/".to_owned()), "/[a-z]{1,8}"],
            domain in prop_oneof![Just(String::new()), "[a-z]{1,8}\\.example"],
        ) {
            let name = default_name(&pool, secure, &path, &domain);
            prop_assert!(validate(&attrs(&name, &path, &domain, secure)).is_ok(), "{}", name);
        }
    }
}
