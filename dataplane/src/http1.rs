//! The HTTP/1.1 wire pieces that the data port's own path (`server::h1`) and the app client's
//! (`upstream::h1`) share: limits, field values read the way hyper reads them, fields written.

use std::ops::Range;

/// Header fields in one message at most (hyper's limit too; more are a 431 from hyper).
pub const MAX_HEADERS: usize = 100;

/// The room a read for a message head starts with: a head of a few KB of state (the client's
/// cookies up to the request header budget that proxies keep to, or the app's `Handover-State`)
/// arrives in one read and is parsed once. With only the room the messages before it had left, such
/// heads came in two parts every few requests: a second system call and a second parse.
pub const HEAD_ROOM: usize = 8 * 1024;

/// The most fields a header map may have room for, and the most values of a repeated name
/// (`Set-Cookie` lines) it may hold, to be used again for a connection's next message
/// ([`keep_spare`]): a map of one head with many fields does not keep its room (up to
/// [`MAX_HEADERS`] buckets of ~100 bytes, and as many repeated values) while its connection idles.
const SPARE_MAP_CAPACITY: usize = 24;

/// An empty map with room for `fields`, made of `spare`: a map whose message is done with it
/// (emptied here), or empty. A map allocated anew for every head was four allocations a request,
/// two of them over the allocator's small-block size (12 buckets: 1 248 bytes).
pub fn map_for(spare: &mut http::HeaderMap, fields: usize) -> http::HeaderMap {
    let mut map = std::mem::take(spare);
    map.clear();
    map.reserve(fields);
    map
}

/// Keeps `map`, whose message is done with it, as the connection's spare for [`map_for`], unless
/// it grew past [`SPARE_MAP_CAPACITY`]. (A kept map never held more repeated values than that,
/// so the room it keeps for them is bounded too: `http` says nothing of that room, only of the
/// values in it.)
pub fn keep_spare(spare: &mut http::HeaderMap, mut map: http::HeaderMap) {
    let repeated = map.len() - map.keys_len();
    if map.capacity() <= SPARE_MAP_CAPACITY && repeated <= SPARE_MAP_CAPACITY {
        // Emptied now: its values share the read buffer of the message they came in, which is
        // reused for the next one only once nothing else holds it.
        map.clear();
        *spare = map;
    }
}

/// A `Content-Length` value: digits only (no sign, no list, no spaces), as hyper reads it.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated field value (`Connection`) lists `token`, in any case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a `Transfer-Encoding` value is `chunked` alone, the one coding the proxy takes from
/// either side: it frames each message itself, so another coding would go on unnamed.
pub fn chunked_alone(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Where `part`, a slice of `whole` (as httparse hands them out), lies in it: the field values of
/// a parsed head become slices of the same bytes once they are frozen, without a copy.
pub fn span(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Whether a response has no body whatever its fields say (RFC 9112 §6.3): the answer to a
/// `HEAD`, a 1xx, 204 or 304.
pub fn without_body(status: http::StatusCode, head_request: bool) -> bool {
    use http::StatusCode;
    head_request || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Whether an `Upgrade` field names HTTP itself (`h2c`, `h2`, `HTTP/2.0`): as a request's, the
/// proxy serves the request without it; as a 101's, the app's answer is refused.
pub fn upgrades_to_http(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).any(|token| {
        let token = token.trim_ascii();
        token.eq_ignore_ascii_case(b"h2c")
            || token.eq_ignore_ascii_case(b"h2")
            || token.get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"http/"))
    })
}

/// Appends one header field line.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn a_map_is_used_again_empty_and_only_while_small() {
        let mut spare = HeaderMap::new();
        let mut done = HeaderMap::with_capacity(8);
        done.insert("x-done", HeaderValue::from_static("1"));
        keep_spare(&mut spare, done);
        assert!(spare.is_empty() && spare.capacity() >= 8, "kept and emptied: {spare:?}");
        let mut large = HeaderMap::with_capacity(MAX_HEADERS);
        large.insert("x-large", HeaderValue::from_static("1"));
        keep_spare(&mut spare, large);
        assert!(spare.capacity() < MAX_HEADERS, "a map grown large is not kept");
        // Few names, many values of one (an app's many Set-Cookie lines): kept up to the limit.
        let repeated = |values: usize| {
            let mut map = HeaderMap::with_capacity(8);
            for _ in 0..values {
                map.append("set-cookie", HeaderValue::from_static("a=1"));
            }
            map
        };
        let mut spare = HeaderMap::new();
        keep_spare(&mut spare, repeated(SPARE_MAP_CAPACITY + 2));
        assert_eq!(spare.capacity(), 0, "a map with many values of one name is not kept");
        keep_spare(&mut spare, repeated(SPARE_MAP_CAPACITY + 1));
        assert!(spare.capacity() >= 8, "one with as many as the limit is");
        // A request's map that becomes its response's: emptied, with the room asked for.
        let mut request = HeaderMap::new();
        request.insert("x-request", HeaderValue::from_static("1"));
        let map = map_for(&mut request, 20);
        assert!(map.is_empty() && map.capacity() >= 20, "{map:?}");
        assert!(request.is_empty(), "taken");
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0042"), Some(42));
        for refused in [&b""[..], b"+5", b"-5", b" 5", b"5,5", b"0x10", b"9999999999999999"] {
            assert_eq!(content_length(refused), None, "{:?}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn tokens_are_found_in_lists_in_any_case() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
