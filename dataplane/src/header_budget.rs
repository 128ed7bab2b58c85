//! Will a session's cookies pass the real path? A pure check of the header bytes a response adds
//! and the Cookie line its client will send back, against the limits of the proxies in between.
//!
//! The binding limits at their defaults (README, "Limits on the real path"): ingress-nginx reads
//! an upstream's whole response header block into `proxy-buffer-size` (4 KiB) and answers 502
//! past it; it, and curl, carry a request header line of at most 8 KiB (`large-client-header-buffers`
//! 4 8k; curl's 8190-byte cookie limit); browsers keep at most 4096 bytes per cookie. A state
//! whose cookies do not fit is not sealed into them: the response goes out with the app's status
//! and the client keeps its previous cookies (`decide::seal`, `Handover-Warning`).

/// The limits of the path between clients and this sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The whole response header block the sidecar sends: status line, every header, blank line.
    pub response_headers: usize,
    /// One request header line: `Cookie: ` and every cookie of the site.
    pub request_header: usize,
}

impl Limits {
    /// ingress-nginx's defaults (`proxy-buffer-size` 4k, `large-client-header-buffers` 4 8k).
    pub const DEFAULT: Limits = Limits { response_headers: 4096, request_header: 8192 };
}

/// Bytes the sidecar's HTTP server and the proxies after it add to a response header block after
/// the check (`date`, `content-length` or `transfer-encoding`, `connection`, `keep-alive`).
pub const RESPONSE_SLACK: usize = 128;
/// Browsers keep at most this many bytes of name and value per cookie (RFC 6265 §6.1 asks for at
/// least 4096; Chromium and Firefox stop there).
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The bytes of one header line on the wire: `name: value\r\n`.
pub fn header_line_bytes(name: &str, value_len: usize) -> usize {
    name.len() + 2 + value_len + 2
}

/// The bytes of a response's status line and headers as the sidecar would send them now, with
/// the terminating blank line.
pub fn response_block_bytes(status: http::StatusCode, headers: &http::HeaderMap) -> usize {
    // "HTTP/1.1 200 OK\r\n"; the reason phrase is at most a few words.
    let status_line = 13 + status.canonical_reason().map_or(0, str::len) + 2;
    status_line + headers.iter().map(|(n, v)| header_line_bytes(n.as_str(), v.len())).sum::<usize>() + 2
}

/// The bytes of the site's other cookies in a request's Cookie header(s): everything but the
/// session's own cookies, which the response may replace. `ours` tells a cookie name apart.
pub fn other_cookie_bytes<'a>(
    pairs: impl Iterator<Item = crate::cookie::CookiePair<'a>>,
    ours: impl Fn(&[u8]) -> bool,
) -> usize {
    // Each pair as the client sends it back: `name=value` and a `; ` separator.
    pairs.filter(|(n, _)| !ours(n)).map(|(n, v)| n.len() + 1 + v.len() + 2).sum()
}

/// What a response would add for the session's cookies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Every `set-cookie` line the response would carry for the session (new values, deletions).
    pub set_cookie_bytes: usize,
    /// The session's cookies as the client sends them back: `name=value; ` each.
    pub request_bytes: usize,
    /// The largest `name=value` of one cookie.
    pub largest_cookie: usize,
}

impl Added {
    /// Adds one `Set-Cookie` line (`line` is its value) of cookie `name` with `value`; a deletion
    /// (`kept: false`) costs response bytes only.
    pub fn push(&mut self, line: &str, name: &str, value: &str, kept: bool) {
        self.set_cookie_bytes += header_line_bytes("set-cookie", line.len());
        if kept {
            self.request_bytes += name.len() + 1 + value.len() + 2;
            self.largest_cookie = self.largest_cookie.max(name.len() + 1 + value.len());
        }
    }
}

/// Which limit a session's cookies would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The response header block (ingress-nginx `proxy-buffer-size`).
    ResponseHeaders { bytes: usize, limit: usize },
    /// The Cookie line the client would send back (`large-client-header-buffers`, curl).
    RequestHeader { bytes: usize, limit: usize },
    /// More than this client once proved it carries (it dropped cookies before).
    ClientCarry { bytes: usize, limit: usize },
    /// One cookie over the browsers' 4096 bytes (a chunk size configured too large).
    OneCookie { bytes: usize, limit: usize },
}

impl Over {
    /// The `reason` label of `handover_seals_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Over::ResponseHeaders { .. } => "response_headers",
            Over::RequestHeader { .. } => "request_header",
            Over::ClientCarry { .. } => "client_carry",
            Over::OneCookie { .. } => "one_cookie",
        }
    }

    /// What the `Handover-Warning` and the log say.
    pub fn explain(self) -> String {
        match self {
            Over::ResponseHeaders { bytes, limit } => format!(
                "the response headers would be {bytes} bytes with the session's cookies, over the limit of {limit} (--max-response-header-bytes; ingress-nginx proxy-buffer-size)"
            ),
            Over::RequestHeader { bytes, limit } => format!(
                "the client's Cookie header would be {bytes} bytes, over the limit of {limit} (--max-request-header-bytes; ingress-nginx large-client-header-buffers)"
            ),
            Over::ClientCarry { bytes, limit } => format!(
                "the session's cookies would be {bytes} bytes; this client dropped cookies past {limit} bytes before"
            ),
            Over::OneCookie { bytes, limit } => {
                format!("one cookie would be {bytes} bytes, over the {limit} browsers keep")
            }
        }
    }
}

/// The request side of the room a response has: the site's other cookies and what the client
/// proved it carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Room {
    /// The response's header block without the session's cookies ([`response_block_bytes`]).
    pub response_block: usize,
    /// [`other_cookie_bytes`] of the request.
    pub other_cookies: usize,
    /// `Route::carry`: 0 when the client never dropped a cookie.
    pub carry: u32,
}

/// Whether a response with `added` passes every limit.
pub fn check(limits: Limits, room: Room, added: &Added) -> Result<(), Over> {
    let response = room.response_block + added.set_cookie_bytes + RESPONSE_SLACK;
    if response > limits.response_headers {
        return Err(Over::ResponseHeaders { bytes: response, limit: limits.response_headers });
    }
    // "Cookie: " + pairs + CRLF (the last pair has no separator: the 2 bytes pay for the CRLF).
    let request = 8 + room.other_cookies + added.request_bytes;
    if request > limits.request_header {
        return Err(Over::RequestHeader { bytes: request, limit: limits.request_header });
    }
    if room.carry > 0 && added.request_bytes > room.carry as usize {
        return Err(Over::ClientCarry { bytes: added.request_bytes, limit: room.carry as usize });
    }
    if added.largest_cookie > MAX_COOKIE_BYTES {
        return Err(Over::OneCookie { bytes: added.largest_cookie, limit: MAX_COOKIE_BYTES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, StatusCode};

    fn added(lines: &[(&str, &str, bool)]) -> Added {
        let mut a = Added::default();
        for (name, value, kept) in lines {
            let line = format!("{name}={value}; Path=/; Max-Age=43200; HttpOnly; SameSite=Lax");
            a.push(&line, name, value, *kept);
        }
        a
    }

    #[test]
    fn the_block_counts_status_line_headers_and_blank_line() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        // "HTTP/1.1 200 OK\r\n" + "content-type: text/plain\r\n" + "\r\n"
        assert_eq!(response_block_bytes(StatusCode::OK, &h), 17 + 26 + 2);
    }

    #[test]
    fn other_cookies_are_counted_as_the_client_sends_them() {
        let pairs: [crate::cookie::CookiePair; 4] = [(b"a", b"1"), (b"h", b"route"), (b"h.0", b"xx"), (b"bb", b"22")];
        let ours = |n: &[u8]| n == b"h" || n.starts_with(b"h.");
        assert_eq!(other_cookie_bytes(pairs.into_iter(), ours), (1 + 1 + 1 + 2) + (2 + 1 + 2 + 2));
    }

    #[test]
    fn each_limit_refuses_on_its_own() {
        let small = added(&[("h", &"r".repeat(150), true), ("h.0", &"s".repeat(1000), true)]);
        let room = Room { response_block: 300, other_cookies: 2048, carry: 0 };
        assert_eq!(check(Limits::DEFAULT, room, &small), Ok(()));

        let big = added(&[("h", &"r".repeat(150), true), ("h.0", &"s".repeat(3900), true)]);
        assert!(matches!(check(Limits::DEFAULT, room, &big), Err(Over::ResponseHeaders { .. })));

        let roomy = Limits { response_headers: 64 * 1024, request_header: 8192 };
        let crowded = Room { other_cookies: 7100, ..room };
        assert!(matches!(check(roomy, crowded, &small), Err(Over::RequestHeader { .. })));

        let dropper = Room { carry: 900, ..room };
        assert!(matches!(check(Limits::DEFAULT, dropper, &small), Err(Over::ClientCarry { .. })));

        let one = added(&[("h.0", &"s".repeat(5000), true)]);
        let wide = Limits { response_headers: 64 * 1024, request_header: 64 * 1024 };
        assert!(matches!(check(wide, room, &one), Err(Over::OneCookie { .. })));
    }

    #[test]
    fn deletions_cost_response_bytes_only() {
        let a = added(&[("h.3", "", false)]);
        assert!(a.set_cookie_bytes > 0);
        assert_eq!(a.request_bytes, 0);
        assert_eq!(a.largest_cookie, 0);
    }
}
