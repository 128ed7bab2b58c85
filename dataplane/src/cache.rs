//! Shared caches and state cookies: whether a shared cache (a CDN, a caching reverse proxy) may
//! store a response (RFC 9111, section 3), and how a response that carries a state cookie is kept
//! out of them.
//!
//! A shared cache that stores a response with a `Set-Cookie` serves that cookie to every later
//! client: they would all carry the first client's session. The sidecar never lets a state cookie
//! leave on a response a shared cache may store: it makes the response `private` first.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

/// Statuses a cache may store without explicit freshness ("heuristically cacheable", RFC 9110
/// section 15.1).
const HEURISTICALLY_CACHEABLE: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The directive names of a `Cache-Control` field, lower-cased, each with its argument if any.
/// Commas inside quoted arguments (`no-cache="a, b"`) do not split directives.
fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| split_top_level(&String::from_utf8_lossy(v.as_bytes())))
        .map(|item| match item.split_once('=') {
            Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim().to_owned())),
            None => (item.to_ascii_lowercase(), None),
        })
        .collect()
}

/// The exchange a shared cache would look at.
#[derive(Clone, Copy, Debug)]
pub struct Exchange<'a> {
    pub method: &'a Method,
    /// The request carried `Authorization` (a shared cache stores such answers only when the
    /// response says it may: `public`, `s-maxage` or `must-revalidate`).
    pub authorized: bool,
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

/// Whether a shared cache may store this response (RFC 9111, section 3). Errs on the side of
/// "may": a response it cannot rule out is treated as storable.
pub fn shared_cache_may_store(x: Exchange<'_>) -> bool {
    let d = directives(x.headers);
    let has = |name: &str| d.iter().any(|(n, _)| n == name);
    // Unqualified only: `private="Set-Cookie"` lets a shared cache store the rest of the response.
    let private = d.iter().any(|(n, arg)| n == "private" && arg.is_none());
    if has("no-store") || private {
        return false;
    }
    let explicit = has("public") || has("s-maxage") || has("max-age") || x.headers.contains_key(header::EXPIRES);
    let method_ok = match *x.method {
        Method::GET | Method::HEAD => true,
        // POST responses are reusable only with explicit freshness (RFC 9110, section 9.3.3).
        Method::POST => explicit,
        _ => false,
    };
    if !method_ok || x.status.is_informational() {
        return false;
    }
    if x.authorized && !(has("public") || has("s-maxage") || has("must-revalidate")) {
        return false;
    }
    explicit || HEURISTICALLY_CACHEABLE.contains(&x.status.as_u16())
}

/// Makes a response private to the client it answers: shared caches must not store it (RFC 9111,
/// section 5.2.2.7), whatever it said before. `public` and `s-maxage` go (they speak to shared
/// caches only), `private` is added, every other directive stays (`no-store`, `max-age` for the
/// browser's own cache). `Vary: Cookie` is added too, for caches that key on it.
pub fn make_private(headers: &mut HeaderMap) {
    // Most responses carry neither field: each is set without parsing or building a list.
    if headers.contains_key(header::CACHE_CONTROL) {
        keep_private_directives(headers);
    } else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    if headers.contains_key(header::VARY) {
        vary_on_cookie(headers);
    } else {
        headers.insert(header::VARY, HeaderValue::from_static("Cookie"));
    }
}

/// `Cache-Control` rewritten to `private` and the directives that do not speak to shared caches.
fn keep_private_directives(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| split_top_level(&String::from_utf8_lossy(v.as_bytes())))
        .filter(|item| {
            let name = item.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !matches!(name.as_str(), "public" | "s-maxage" | "private")
        })
        .collect();
    let mut value = vec!["private".to_owned()];
    value.extend(kept);
    headers.remove(header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::from_str(&value.join(", ")) {
        headers.insert(header::CACHE_CONTROL, v);
    } else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// `Vary: Cookie` added, unless `Vary` already names it (or `*`).
fn vary_on_cookie(headers: &mut HeaderMap) {
    let varies: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| String::from_utf8_lossy(v.as_bytes()).split(',').map(|s| s.trim().to_owned()).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    if !varies.iter().any(|v| v == "*" || v.eq_ignore_ascii_case("cookie")) {
        headers.append(header::VARY, HeaderValue::from_static("Cookie"));
    }
}

/// The comma-separated items of a field value, commas inside quotes kept.
fn split_top_level(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => {
                if !current.trim().is_empty() {
                    out.push(current.trim().to_owned());
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(http::HeaderName::from_bytes(n.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("v"));
        }
        h
    }

    fn may_store(method: Method, status: u16, pairs: &[(&str, &str)]) -> bool {
        let h = headers(pairs);
        shared_cache_may_store(Exchange {
            method: &method,
            authorized: false,
            status: StatusCode::from_u16(status).expect("status"),
            headers: &h,
        })
    }

    #[test]
    fn explicit_shared_freshness_may_be_stored() {
        assert!(may_store(Method::GET, 200, &[("cache-control", "public, max-age=3600")]));
        assert!(may_store(Method::GET, 200, &[("cache-control", "s-maxage=60")]));
        assert!(may_store(Method::GET, 500, &[("cache-control", "public")]), "public makes any status storable");
        assert!(may_store(Method::GET, 302, &[("expires", "Thu, 01 Jan 2037 00:00:00 GMT")]));
        assert!(may_store(Method::POST, 200, &[("cache-control", "public, max-age=60")]));
    }

    #[test]
    fn cacheable_by_default_means_no_cache_control_a_cacheable_status_and_method() {
        assert!(may_store(Method::GET, 200, &[]));
        assert!(may_store(Method::HEAD, 404, &[]));
        assert!(may_store(Method::GET, 301, &[]));
        assert!(!may_store(Method::GET, 302, &[]), "302 is not heuristically cacheable");
        assert!(!may_store(Method::GET, 500, &[]));
        assert!(!may_store(Method::POST, 200, &[]), "POST needs explicit freshness");
        assert!(!may_store(Method::PUT, 200, &[("cache-control", "public, max-age=60")]));
        assert!(!may_store(Method::DELETE, 200, &[]));
    }

    #[test]
    fn private_and_no_store_keep_shared_caches_out() {
        assert!(!may_store(Method::GET, 200, &[("cache-control", "private")]));
        assert!(!may_store(Method::GET, 200, &[("cache-control", "Public, No-Store")]));
        assert!(!may_store(Method::GET, 200, &[("cache-control", "max-age=60"), ("cache-control", "private")]));
        assert!(
            may_store(Method::GET, 200, &[("cache-control", "private=\"set-cookie\", max-age=60")]),
            "a qualified private lets shared caches store the rest"
        );
        assert!(
            may_store(Method::GET, 200, &[("cache-control", "no-cache=\"a, private\"")]),
            "a quoted comma does not split directives"
        );
    }

    #[test]
    fn an_authorized_request_is_stored_only_if_the_response_says_so() {
        let h = headers(&[("cache-control", "max-age=60")]);
        let x = Exchange { method: &Method::GET, authorized: true, status: StatusCode::OK, headers: &h };
        assert!(!shared_cache_may_store(x));
        let h = headers(&[("cache-control", "max-age=60, must-revalidate")]);
        assert!(shared_cache_may_store(Exchange { headers: &h, ..x }));
    }

    #[test]
    fn making_private_drops_shared_directives_and_keeps_the_rest() {
        let mut h = headers(&[("cache-control", "public, max-age=3600, s-maxage=600"), ("vary", "Accept-Encoding")]);
        make_private(&mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).map(|v| v.as_bytes()), Some(&b"private, max-age=3600"[..]));
        let vary: Vec<&[u8]> = h.get_all(header::VARY).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(vary, vec![&b"Accept-Encoding"[..], &b"Cookie"[..]]);

        let mut h = headers(&[("cache-control", "no-store, public"), ("vary", "cookie")]);
        make_private(&mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).map(|v| v.as_bytes()), Some(&b"private, no-store"[..]));
        assert_eq!(h.get_all(header::VARY).iter().count(), 1, "Vary already names Cookie");

        let mut h = HeaderMap::new();
        make_private(&mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).map(|v| v.as_bytes()), Some(&b"private"[..]));
        assert_eq!(h.get(header::VARY).map(|v| v.as_bytes()), Some(&b"Cookie"[..]));
    }

    proptest! {
        #[test]
        fn a_response_made_private_is_never_storable_by_a_shared_cache(
            directives in proptest::collection::vec(
                prop_oneof![
                    Just("public".to_owned()), Just("private".to_owned()), Just("no-store".to_owned()),
                    Just("no-cache".to_owned()), Just("must-revalidate".to_owned()),
                    (0u32..100_000).prop_map(|n| format!("max-age={n}")),
                    (0u32..100_000).prop_map(|n| format!("s-maxage={n}")),
                    "[a-z-]{1,12}(=[a-z0-9\"]{0,8})?",
                ],
                0..6,
            ),
            status in 100u16..600,
            method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::POST)],
            authorized in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            if !directives.is_empty()
                && let Ok(v) = HeaderValue::from_str(&directives.join(", "))
            {
                h.insert(header::CACHE_CONTROL, v);
            }
            make_private(&mut h);
            let status = StatusCode::from_u16(status).expect("status");
            let exchange = Exchange { method: &method, authorized, status, headers: &h };
            prop_assert!(!shared_cache_may_store(exchange), "{:?}", h);
        }
    }
}
