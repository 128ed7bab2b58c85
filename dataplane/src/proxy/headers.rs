//! Header hygiene: what the next hop must not see (hop-by-hop headers, Handover-* headers a client
//! sent, the state cookie), X-Forwarded-For, origin-form URIs, and the Handover-* header names.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cookie::{self, CookiePair};

/// The session id the app sees on every forwarded request.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("handover-session");

/// Where the app pushes its state on a response.
pub const STATE_HEADER: HeaderName = HeaderName::from_static("handover-state");

/// On an app's response: give this session a new id (at login, against session fixation). The
/// sidecar moves the state to the new id, tells the app the old one left, and seals the new one.
pub const ROTATE_HEADER: HeaderName = HeaderName::from_static("handover-rotate");

/// The app's own name for the format of a state it pushes (on the response) or hands out (on its
/// answer to `GET <statePath>`), recorded with the sealed state and given back on the restore's
/// `PUT <statePath>`, so an app can refuse (4xx) a format it does not read and say which.
pub const FORMAT_HEADER: HeaderName = HeaderName::from_static("handover-state-format");

/// The state formats an app reads, comma-separated (`counter-v1, counter-v2`), on any answer of its
/// state endpoint (a refused restore's too) or on a pushed response. The sidecar remembers the
/// latest, shows it to its peers on `/live`, and a takeover whose state the app does not read goes
/// to a member whose app does ([`crate::decide::reads_format`]).
pub const READS_HEADER: HeaderName = HeaderName::from_static("handover-reads");

/// Longest `Handover-Reads` kept: a list of formats, not a document.
const MAX_READS_BYTES: usize = 512;

/// Whether `name` is one of the contract's `Handover-*` fields (or claims to be).
fn is_handover_field(name: &str) -> bool {
    name.starts_with("handover-")
}

/// Whether a request field named `name` is one the sidecar sets for its app (`Handover-*`,
/// `X-Forwarded-For`, `X-Forwarded-Proto`) spelled with `_` for `-`. A CGI-style gateway (WSGI,
/// Rack) reads `handover_session` and `handover-session` as one variable, `HTTP_HANDOVER_SESSION`,
/// so a client could set what the sidecar vouches for; nginx drops every such name
/// (`underscores_in_headers off`). Only these are dropped: an app may use others.
fn spells_ours_with_underscores(name: &str) -> bool {
    /// `name` is `ours` with some of its `-` spelled `_`.
    fn folds_to(name: &[u8], ours: &[u8]) -> bool {
        name.len() == ours.len() && name.iter().zip(ours).all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
    }
    let name = name.as_bytes();
    // Names are lower case; only these first letters can fold to ours, and most names lack `_`.
    matches!(name.first(), Some(b'h' | b'x'))
        && name.contains(&b'_')
        && (name.get(..9).is_some_and(|head| folds_to(head, b"handover-"))
            || folds_to(name, b"x-forwarded-for")
            || folds_to(name, b"x-forwarded-proto"))
}

/// Drops the fields [`spells_ours_with_underscores`] finds; how many.
pub(super) fn drop_underscored_spellings(headers: &mut HeaderMap) -> usize {
    let names: Vec<HeaderName> =
        headers.keys().filter(|name| spells_ours_with_underscores(name.as_str())).cloned().collect();
    for name in &names {
        headers.remove(name);
    }
    names.len()
}

/// A static, not a constant: a constant array of names is made and dropped at every use.
static APP_FIELD_NAMES: [HeaderName; 4] = [STATE_HEADER, FORMAT_HEADER, READS_HEADER, ROTATE_HEADER];

/// What an app's response says to its sidecar: the contract's fields on a response, taken out of
/// it (none reaches the client), as [`AppFields::NAMES`] lists them.
#[derive(Debug, Default)]
pub(super) struct AppFields {
    /// `Handover-State`: the session's new state, base64url.
    pub state: Option<Bytes>,
    /// `Handover-State-Format`, checked by [`AppFields::format`].
    format: Option<Bytes>,
    /// `Handover-Reads`, checked by [`AppFields::reads`].
    reads: Option<Bytes>,
    /// `Handover-Rotate`: give the session a new id.
    pub rotate: bool,
}

impl AppFields {
    /// The fields, in the order [`AppFields::from_values`] takes their values: the app client's
    /// HTTP/1.1 path keeps them out of the response's map as it parses the head
    /// (`upstream::h1::read_head`), so they are never parsed into names, put in the map, looked up
    /// and removed again.
    pub const NAMES: &[HeaderName; 4] = &APP_FIELD_NAMES;

    pub fn from_values([state, format, reads, rotate]: [Option<Bytes>; 4]) -> AppFields {
        AppFields { state, format, reads, rotate: rotate.is_some() }
    }

    /// Takes them out of the map of a response hyper's client read (from an h2c app, to a request
    /// whose body was still arriving, from the state endpoint).
    pub fn take(headers: &mut HeaderMap) -> AppFields {
        // Most answers of hyper's path carry none: one pass over the names instead of four lookups.
        if !headers.keys().any(|name| is_handover_field(name.as_str())) {
            return AppFields::default();
        }
        AppFields::from_values(
            AppFields::NAMES.each_ref().map(|name| headers.remove(name).map(|v| Bytes::copy_from_slice(v.as_bytes()))),
        )
    }

    /// The state format the app declared: a token of at most [`cookie::MAX_FORMAT_BYTES`]
    /// visible ASCII characters without spaces, commas or semicolons; anything else is not
    /// recorded (empty).
    pub fn format(&self) -> String {
        let Some(value) = &self.format else { return String::new() };
        let token = value.trim_ascii();
        let valid = token.len() <= cookie::MAX_FORMAT_BYTES
            && token.iter().all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'"' | b'\\'));
        if !valid {
            tracing::warn!("the app declared a Handover-State-Format that is not a short token; not recorded");
            return String::new();
        }
        String::from_utf8_lossy(token).into_owned()
    }

    /// The formats the app declared it reads; `None` when it declared none, or something that is
    /// not a short list of visible ASCII.
    pub fn reads(&self) -> Option<String> {
        let list = self.reads.as_ref()?.trim_ascii();
        let valid = !list.is_empty()
            && list.len() <= MAX_READS_BYTES
            && list.iter().all(|b| (b.is_ascii_graphic() || *b == b' ') && !matches!(b, b';' | b'"' | b'\\'));
        if !valid {
            tracing::warn!("the app declared a Handover-Reads that is not a short list of formats; not recorded");
            return None;
        }
        Some(String::from_utf8_lossy(list).into_owned())
    }
}

/// Set on a response whose state could not be sealed.
pub const WARNING_HEADER: HeaderName = HeaderName::from_static("handover-warning");

/// On a forward from a pod that passes its requests on (draining), beside its mark: the receiving
/// pod, if it passes its requests on too, must not send it back ([`crate::decide::pass_on_to`]).
pub const PASSED_ON_HEADER: HeaderName = HeaderName::from_static("handover-passed-on");

/// Marks a request forwarded by a peer sidecar (loop guard), signed: [`crate::peer_auth`].
pub const FORWARDED_HEADER: HeaderName = HeaderName::from_static("handover-forwarded");

/// On a response to an authenticated forward: the answering pod. A forwarded response without it
/// came from something in between (a mesh proxy answering for a peer it could not reach).
pub const PEER_HEADER: HeaderName = HeaderName::from_static("handover-peer");

/// Proxy headers the sidecar writes, and the hop-by-hop ones of HTTP/1.0 it removes, by name:
/// a `HeaderName` constant is hashed but never parsed (a `&str` name is, on every lookup).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A request's fields looked over once: their size, and which of the fields the proxy acts on and
/// most requests lack are there, so that those are not looked up one by one (a lookup that misses
/// still hashes the name and probes the map: ~90 instructions, callgrind).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Survey {
    /// The fields' bytes as a proxy's header limit counts them (`name: value\r\n`).
    pub bytes: usize,
    /// A field named `handover-*`.
    pub handover: bool,
    /// `Upgrade`.
    pub upgrade: bool,
    /// `TE`.
    pub te: bool,
    /// `X-Forwarded-For` or `X-Forwarded-Proto`.
    pub forwarded: bool,
    /// `Host` fields, and whether the last one names a host (`host[:port]`).
    pub hosts: usize,
    pub host_ok: bool,
    /// A field that spells one of the sidecar's with `_` ([`spells_ours_with_underscores`]).
    pub underscored: bool,
    /// `Transfer-Encoding` fields, and whether one names a coding besides a lone `chunked`.
    pub transfer_encodings: usize,
    pub other_coding: bool,
}

impl Survey {
    pub fn of(headers: &HeaderMap) -> Survey {
        let mut survey = Survey::default();
        for (name, value) in headers {
            let name_str = name.as_str();
            survey.bytes += name_str.len() + value.len() + 4;
            survey.handover |= is_handover_field(name_str);
            survey.underscored |= spells_ours_with_underscores(name_str);
            survey.upgrade |= name == header::UPGRADE;
            survey.te |= name == header::TE;
            survey.forwarded |= name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO;
            if name == header::HOST {
                survey.hosts += 1;
                survey.host_ok = is_host(value.as_bytes());
            } else if name == header::TRANSFER_ENCODING {
                survey.transfer_encodings += 1;
                survey.other_coding |= !crate::http1::chunked_alone(value.as_bytes());
            }
        }
        survey
    }
}

/// Settles which host a request is for, once, before anything routes it: the request target's
/// authority when it has one (an absolute-form target; HTTP/2's `:authority`), which then stands
/// in the Host field too — RFC 9112, 3.2.2: the Host of an absolute-form request is ignored; RFC
/// 9113, 8.3.1: a Host that differs from `:authority` is malformed — or else its one Host field.
/// No host, two Host fields, or one that names no host is refused (RFC 9112, 3.2: a 400): the app
/// behind, a cache or the next proxy could each read another host out of it.
pub(super) fn settle_host<B>(req: &mut Request<B>, survey: &Survey) -> Result<(), &'static str> {
    if survey.hosts > 1 {
        return Err("more than one Host field");
    }
    let Some(authority) = req.uri().authority() else {
        return match (survey.hosts, survey.host_ok) {
            (0, _) => Err("no Host field"),
            (_, false) => Err("a Host field that is not host[:port]"),
            (_, true) => Ok(()),
        };
    };
    if !is_host(authority.as_str().as_bytes()) {
        return Err("a request target whose authority is not host[:port]");
    }
    // A Host field that says otherwise is replaced (one that is absent, origin_form adds).
    if survey.hosts == 1
        && req.headers().get(header::HOST).is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes())
    {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "an authority that is no field value")?;
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

/// Whether `value` is `host[:port]` (RFC 9110, 7.2): a name (RFC 3986's reg-name, which an IPv4
/// address is too) or a bracketed IPv6 address, then a port of digits if any. None of the bytes
/// that would make it name something else (`@` user info, `/`, `?`, `#`, spaces, controls), no
/// second colon outside the brackets (`evil.example:80:shop.example`: one reader splits at the
/// first, another at the last), no percent-encoding (a name sent so decodes to bytes no DNS name
/// has, `%00`). Checked byte by byte, without parsing it into a `Uri` (an allocation).
fn is_host(value: &[u8]) -> bool {
    // The port's colon is the last one outside an IPv6 address's brackets.
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        Some(colon) if !value[colon..].contains(&b']') => (&value[..colon], &value[colon + 1..]),
        _ => (value, &b""[..]),
    };
    let name =
        |h: &[u8]| !h.is_empty() && h.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b));
    let ipv6 = |h: &[u8]| {
        h.strip_prefix(b"[")
            .and_then(|h| h.strip_suffix(b"]"))
            .and_then(|inner| std::str::from_utf8(inner).ok())
            .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
    };
    // Digits only (`u16`'s parser would take a `+`), at most 65 535; none when there is no port.
    let port_ok = port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()));
    port_ok && (name(host) || ipv6(host))
}

/// Removes the Handover-* fields only the sidecar writes (a client's would be taken for the
/// sidecar's own by the app or a peer) and returns the forward mark, if one came: the loop guard
/// checks it. (Clients send none of them: the proxy calls this only when [`Survey::handover`] saw
/// one, not five lookups on every request.)
/// Also says whether a forward says it was passed on ([`PASSED_ON_HEADER`]: read only with a mark
/// that verifies).
pub(super) fn take_client_handover_headers(headers: &mut HeaderMap) -> (Option<HeaderValue>, bool) {
    for name in [SESSION_HEADER, STATE_HEADER, PEER_HEADER, FORMAT_HEADER] {
        headers.remove(name);
    }
    let passed_on = headers.remove(PASSED_ON_HEADER).is_some();
    (headers.remove(FORWARDED_HEADER), passed_on)
}

/// The hop-by-hop fields [`strip_hop_by_hop`] removes by name, besides `Connection` and
/// `Upgrade` (which an upgrade keeps).
const HOP_BY_HOP: [HeaderName; 6] =
    [header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::PROXY_AUTHORIZATION, KEEP_ALIVE, PROXY_CONNECTION];

/// `X-Real-IP`: the client's address as the proxy in front saw it (nginx's `realip`, ingress-nginx
/// and HAProxy configurations set it).
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether `name` is a field a `Connection` header may not name away: the message's host and
/// length, and what a proxy in front vouches for (`Forwarded`, `X-Real-IP`, every
/// `X-Forwarded-*`). A client's `Connection: host` would send the app a request without a Host
/// (RFC 9112, 3.2: one it must refuse, or take for its default site), and one listing
/// `X-Forwarded-For` would erase the entry of the proxy in front, which an app counting its trusted
/// hops from the right reads; HAProxy passes a client's `Connection` options on and removes none
/// of the fields they name, so one listing `X-Real-IP` would leave the app with no address vouched
/// for (it falls back to its socket's peer: the sidecar, on its loopback) — Traefik's
/// CVE-2024-45410. (RFC 9110, 7.6.1 lets a sender list only hop-by-hop fields.)
fn not_hop_by_hop(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::FORWARDED
        || name == X_REAL_IP
        || name.as_str().starts_with("x-forwarded-")
}

/// Whether `name` is a field [`strip_hop_by_hop`] removes by name.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names instead of eight lookups. (Any field a
    // `Connection` header lists goes too, so a message with one takes the long way.)
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(not_hop_by_hop(name) || keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// On a request whose client sent `te: trailers` (every gRPC client does).
#[derive(Clone, Copy, Debug)]
pub(super) struct WantsTrailers;

/// Whether `te` names `trailers` (the one value RFC 9113, 8.2.2, allows in HTTP/2).
pub(super) fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")))
}

/// Makes a request (in origin form, with a Host field: [`origin_form`]) fit for an HTTP/2
/// connection: hyper's h2 client wants the scheme and authority in the URI (`:scheme`,
/// `:authority`), and `te: trailers` goes again if the client sent it.
pub(super) fn h2_form<B>(req: &mut Request<B>, app: SocketAddr) {
    let authority = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let authority = authority.unwrap_or_else(|| app.to_string());
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match http::Uri::builder().scheme("http").authority(authority.as_str()).path_and_query(path).build() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => {
            // A Host that is no authority: the app's address stands in, and the Host field goes
            // (RFC 9113, 8.3.1: a client never sends a Host that differs from `:authority`).
            if let Ok(uri) = http::Uri::builder().scheme("http").authority(app.to_string()).path_and_query(path).build()
            {
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(header::HOST);
        }
    }
    *req.version_mut() = http::Version::HTTP_2;
    if req.extensions().get::<WantsTrailers>().is_some() {
        req.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Says `Transfer-Encoding: chunked` on a `GET` or `HEAD` whose body is still to come with no
/// length, before it goes through hyper's HTTP/1.1 client, which frames a body of unknown length
/// on those methods as none at all (taking them to carry none): the body, a client's chunked one,
/// would be dropped without a word. (Any other method's is sent chunked by hyper itself.)
pub(super) fn say_chunked_if_unframed(req: &mut Request<crate::upstream::Body>) {
    use hyper::body::Body as _;
    let method = req.method();
    if (method == http::Method::GET || method == http::Method::HEAD)
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
        && !req.headers().contains_key(header::CONTENT_LENGTH)
    {
        req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// Whether `req` asks for an upgrade: HTTP/1.1 with `Upgrade` and `Connection: upgrade`. An
/// HTTP/1.0 request's is ignored (RFC 9110, 7.8: a server MUST): hyper's server never switches
/// such a connection, so the app's 101 reached the client on a connection closed after it.
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// All `name=value` pairs of the request's Cookie headers.
pub(super) fn cookie_pairs(headers: &HeaderMap) -> Vec<CookiePair<'_>> {
    cookie::request_pairs(headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes))
}

/// `X-Forwarded-For` with the client's address appended, as one field, and `X-Forwarded-Proto`
/// unless it came; `forwarded`: whether either came ([`Survey::forwarded`]), or they are not
/// looked for.
///
/// Every `X-Forwarded-For` field that came is kept, in order: HAProxy's `option forwardfor` adds a
/// field of its own after the client's rather than appending to it, and an app that counts its
/// trusted hops from the right must find that proxy's entry where it put it, not the client's
/// claim in its place.
pub(super) fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr, forwarded: bool) {
    // Written by hand, not with `format!`, and on the stack (the value's one allocation is the
    // header value's own): this runs on every request.
    let mut value = smallvec::SmallVec::<[u8; 64]>::new();
    if forwarded {
        for prior in headers.get_all(X_FORWARDED_FOR) {
            let prior = prior.as_bytes().trim_ascii();
            if !prior.is_empty() {
                value.extend_from_slice(prior);
                value.extend_from_slice(b", ");
            }
        }
    }
    write_ip(&mut value, client.ip());
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(forwarded && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// An IP address as text: IPv4 octet by octet with `itoa` (the formatter's padding machinery
/// costs more than the rest of the header), IPv6 through `Display`.
fn write_ip(out: &mut smallvec::SmallVec<[u8; 64]>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// Turns an absolute-form URI into origin form for the next hop.
pub(super) fn origin_form<B>(req: &mut Request<B>) {
    // An HTTP/2 request names its host in `:authority` only; HTTP/1.1 needs a Host field.
    if !req.headers().contains_key(header::HOST)
        && let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    *req.version_mut() = http::Version::HTTP_11;
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        if let Ok(uri) = path.parse() {
            *req.uri_mut() = uri;
        }
    }
}

/// The `Cookie` field the app gets: the request's, without the session cookies (the app never
/// sees sealed cookies). Worked out from the pairs [`cookie_pairs`] split once per request.
#[derive(Clone, Debug)]
pub(super) enum AppCookie {
    /// The field goes to the app as the client sent it: none of its cookies is ours.
    AsSent,
    /// The field is replaced with the rest (`None`: removed, nothing was left).
    Replaced(Option<HeaderValue>),
}

impl AppCookie {
    pub(super) fn new(headers: &HeaderMap, pairs: &[CookiePair], name: &str) -> AppCookie {
        // Several `cookie` fields (HTTP/2 clients split them, RFC 9113 §8.2.3) are joined into
        // one for the app over HTTP/1.1 even when none of them is ours.
        let split = headers.get_all(header::COOKIE).iter().nth(1).is_some();
        if !split && !pairs.iter().any(|(n, _)| cookie::is_session_cookie(name, n)) {
            return AppCookie::AsSent;
        }
        // Bytes, as the client sent them: a cookie the site set in UTF-8 reaches the app as it was.
        let mut rest = Vec::new();
        for (n, v) in pairs.iter().filter(|(n, _)| !cookie::is_session_cookie(name, n)) {
            if !rest.is_empty() {
                rest.extend_from_slice(b"; ");
            }
            // A nameless cookie goes back as it came: its value alone.
            if !n.is_empty() {
                rest.extend_from_slice(n);
                rest.push(b'=');
            }
            rest.extend_from_slice(v);
        }
        AppCookie::Replaced(if rest.is_empty() { None } else { HeaderValue::from_bytes(&rest).ok() })
    }

    /// Sets the app's `Cookie` field in `headers`, unless the field is gone (a client may name
    /// `cookie` in `Connection`: then it is hop-by-hop and none goes to the app).
    pub(super) fn apply(&self, headers: &mut HeaderMap) {
        let AppCookie::Replaced(rest) = self else { return };
        if headers.remove(header::COOKIE).is_some()
            && let Some(rest) = rest
        {
            headers.insert(header::COOKIE, rest.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sidecars_own_fields_spelled_with_underscores_are_found() {
        for name in [
            "handover_session",
            "handover_anything",
            "handover-session_x",
            "x_forwarded_for",
            "x-forwarded_proto",
            "x_forwarded_proto",
        ] {
            assert!(spells_ours_with_underscores(name), "{name}");
        }
        for name in [
            "handover-session",
            "x-forwarded-for",
            "x_forwarded_host",
            "x_app_field",
            "handover",
            "h_",
            "user_agent",
            "",
        ] {
            assert!(!spells_ours_with_underscores(name), "{name}");
        }
    }

    fn app_cookie(fields: &[&'static str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(header::COOKIE, HeaderValue::from_static(f));
        }
        let pairs = cookie_pairs(&h);
        let app = AppCookie::new(&h, &pairs, "handover");
        app.apply(&mut h);
        let mut fields = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap().to_owned());
        let field = fields.next();
        assert!(fields.next().is_none(), "one Cookie field at most");
        field
    }

    #[test]
    fn the_app_gets_every_cookie_but_the_session_ones_in_one_field() {
        assert_eq!(app_cookie(&["a=1; handover=r; handover.0=s; b=2"]).as_deref(), Some("a=1; b=2"));
        assert_eq!(app_cookie(&["handover=r; handover.0=s"]), None, "nothing left: no field");
        assert_eq!(app_cookie(&["a=1", "b=2"]).as_deref(), Some("a=1; b=2"), "split fields joined");
        assert_eq!(app_cookie(&["a=1; handover.x=y"]).as_deref(), Some("a=1; handover.x=y"), "not a chunk name");
        assert_eq!(
            app_cookie(&["nameless; handover=r; a=1"]).as_deref(),
            Some("nameless; a=1"),
            "a nameless cookie too"
        );
        assert_eq!(app_cookie(&[]), None);
    }

    #[test]
    fn a_cookie_set_in_utf8_or_latin1_reaches_the_app_as_sent_and_ours_are_still_taken_out() {
        for other in [&b"lang=Fran\xc3\xa7ais"[..], &b"lang=Fran\xe7ais"[..]] {
            let mut h = HeaderMap::new();
            let field = [other, b"; handover=r; handover.0=s; b=2"].concat();
            h.insert(header::COOKIE, HeaderValue::from_bytes(&field).unwrap());
            let pairs = cookie_pairs(&h);
            assert_eq!(cookie::lookup(&pairs, "handover"), Some(&b"r"[..]));
            let app = AppCookie::new(&h, &pairs, "handover");
            app.apply(&mut h);
            assert_eq!(h[header::COOKIE].as_bytes(), [other, b"; b=2"].concat());
        }
    }

    #[test]
    fn a_cookie_field_removed_as_hop_by_hop_stays_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; handover=r"));
        h.insert(header::CONNECTION, HeaderValue::from_static("cookie"));
        let pairs = cookie_pairs(&h);
        let app = AppCookie::new(&h, &pairs, "handover");
        drop(pairs);
        strip_hop_by_hop(&mut h, false);
        app.apply(&mut h);
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn forwarded_for_appends_the_connection_address_as_display_writes_it() {
        for ip in ["0.0.0.0", "10.0.255.7", "192.168.1.100", "9.99.100.199", "::1", "2001:db8::ff00:42:8329"] {
            let client = SocketAddr::new(ip.parse().unwrap(), 4000);
            let mut h = HeaderMap::new();
            let forwarded = Survey::of(&h).forwarded;
            append_forwarded_for(&mut h, client, forwarded);
            assert_eq!(h[X_FORWARDED_FOR], client.ip().to_string().as_str());
            assert_eq!(h[X_FORWARDED_PROTO], "http");
            h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
            let forwarded = Survey::of(&h).forwarded;
            append_forwarded_for(&mut h, client, forwarded);
            assert_eq!(h[X_FORWARDED_FOR], format!("203.0.113.9, {}", client.ip()).as_str());
        }
    }

    #[test]
    fn every_forwarded_for_field_is_kept_in_order_and_joined_into_one() {
        // A client's claim, then the field HAProxy's `option forwardfor` adds after it, and an
        // empty one: the addresses in their order, then the connection's.
        let client = SocketAddr::new("10.0.0.5".parse().unwrap(), 4000);
        let mut h = HeaderMap::new();
        for v in ["203.0.113.9", " ", "198.51.100.7, 192.0.2.1"] {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        let forwarded = Survey::of(&h).forwarded;
        append_forwarded_for(&mut h, client, forwarded);
        let fields: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(fields, ["203.0.113.9, 198.51.100.7, 192.0.2.1, 10.0.0.5"]);
    }

    #[test]
    fn a_survey_counts_the_fields_bytes_and_sees_the_rare_fields_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        let plain = Survey::of(&h);
        assert_eq!(plain.bytes, "host".len() + "example.com".len() + 4);
        assert!(!(plain.handover || plain.upgrade || plain.te || plain.forwarded), "{plain:?}");
        for (name, seen) in [
            ("Handover-Session", (|s: Survey| s.handover) as fn(Survey) -> bool),
            ("Upgrade", |s| s.upgrade),
            ("TE", |s| s.te),
            ("X-Forwarded-For", |s| s.forwarded),
            ("x-forwarded-proto", |s| s.forwarded),
        ] {
            let mut with = h.clone();
            with.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("1"));
            assert!(seen(Survey::of(&with)), "{name}");
        }
    }

    #[test]
    fn a_client_keeps_none_of_the_fields_only_the_sidecar_writes() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert("handover-unknown", HeaderValue::from_static("kept"));
        assert_eq!(take_client_handover_headers(&mut h), (None, false));
        for name in [SESSION_HEADER, STATE_HEADER, PEER_HEADER, FORMAT_HEADER, PASSED_ON_HEADER] {
            h.insert(name, HeaderValue::from_static("forged"));
        }
        h.insert(FORWARDED_HEADER, HeaderValue::from_static("mark"));
        let (mark, passed_on) = take_client_handover_headers(&mut h);
        assert_eq!((mark.as_ref().map(HeaderValue::as_bytes), passed_on), (Some(&b"mark"[..]), true));
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept", "handover-unknown"]);
    }

    #[test]
    fn te_trailers_is_seen_among_other_codings() {
        let mut h = HeaderMap::new();
        assert!(!wants_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
        assert!(wants_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailersx"));
        assert!(!wants_trailers(&h));
    }

    #[test]
    fn an_h2_request_names_scheme_and_authority_and_keeps_te_trailers_only_when_asked() {
        let app: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut req = Request::builder().uri("/svc/Call?x=1").header(header::HOST, "example.com").body(()).unwrap();
        req.extensions_mut().insert(WantsTrailers);
        h2_form(&mut req, app);
        assert_eq!(req.uri(), "http://example.com/svc/Call?x=1");
        assert_eq!(req.version(), http::Version::HTTP_2);
        assert_eq!(req.headers()[header::TE], "trailers");

        // A Host that is no authority: the app's address stands in; no te without the client's.
        let mut req = Request::builder().uri("/").header(header::HOST, "bad host").body(()).unwrap();
        h2_form(&mut req, app);
        assert_eq!(req.uri(), "http://127.0.0.1:8080/");
        assert!(!req.headers().contains_key(header::HOST), "no Host that differs from :authority");
        assert!(!req.headers().contains_key(header::TE));
    }

    #[test]
    fn hop_by_hop_headers_are_removed_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn a_connection_header_cannot_name_away_the_host_the_length_or_the_forwarding_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "Host, content-length, X-Forwarded-For, x-forwarded-proto, forwarded, X-Real-IP, x-forwarded-host, x-private",
            ),
        );
        let kept = [
            (header::HOST, "shop.example"),
            (header::CONTENT_LENGTH, "3"),
            (X_FORWARDED_FOR, "203.0.113.9"),
            (X_FORWARDED_PROTO, "https"),
            (header::FORWARDED, "for=203.0.113.9"),
            (X_REAL_IP, "203.0.113.9"),
            (HeaderName::from_static("x-forwarded-host"), "shop.example"),
        ];
        for (name, value) in &kept {
            h.insert(name, HeaderValue::from_static(value));
        }
        h.insert("x-private", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        for (name, value) in kept {
            assert_eq!(h.get(&name).map(HeaderValue::as_bytes), Some(value.as_bytes()), "{name}");
        }
        assert!(!h.contains_key("x-private") && !h.contains_key(header::CONNECTION), "{h:?}");
    }

    #[test]
    fn upgrade_headers_survive_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(h.get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
    }

    #[test]
    fn only_our_cookie_and_its_chunks_are_ours() {
        assert!(cookie::is_session_cookie("handover", b"handover"));
        assert!(cookie::is_session_cookie("handover", b"handover.3"));
        assert!(!cookie::is_session_cookie("handover", b"handover.x"));
        assert!(!cookie::is_session_cookie("handover", b"handoverx"));
        assert!(!cookie::is_session_cookie("handover", b"session"));
    }

    /// The host `settle_host` leaves on a request, or why it refuses it.
    fn settled(uri: &str, hosts: &[&str]) -> Result<Option<String>, &'static str> {
        let mut req = Request::builder().uri(uri).body(()).unwrap();
        for h in hosts {
            req.headers_mut().append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        let survey = Survey::of(req.headers());
        settle_host(&mut req, &survey)?;
        Ok(req.headers().get(header::HOST).map(|h| h.to_str().unwrap().to_owned()))
    }

    #[test]
    fn a_request_names_one_host_or_is_refused() {
        assert_eq!(settled("/a", &["shop.example:8080"]), Ok(Some("shop.example:8080".into())));
        assert_eq!(settled("/a", &["10.0.0.7"]), Ok(Some("10.0.0.7".into())));
        assert_eq!(settled("/a", &["[::1]:80"]), Ok(Some("[::1]:80".into())));
        assert!(settled("/a", &[]).is_err(), "no host at all");
        assert!(settled("/a", &["a.example", "b.example"]).is_err(), "two Host fields");
        assert_eq!(settled("/a", &["[2001:db8::1]"]), Ok(Some("[2001:db8::1]".into())));
        assert_eq!(settled("/a", &["shop.example:"]), Ok(Some("shop.example:".into())), "an empty port");
        for bad in ["", "a b", "evil@shop.example", "shop.example/x", "a?b", "a#b", "a\tb"] {
            assert!(settled("/a", &[bad]).is_err(), "{bad:?}");
        }
        // Hosts that two readers would read apart, or that decode to something else.
        for bad in [
            "evil.example:80:shop.example",
            "shop.example:http",
            ":80",
            "[evil",
            "[::1",
            "::1",
            "[::1]x",
            "[not-an-address]",
            "shop.example:123456",
            "shop.example:65536",
            "shop%2eexample",
            "a%00b",
        ] {
            assert!(settled("/a", &[bad]).is_err(), "{bad:?}");
        }
        // The target's authority is the host, whatever the Host field said.
        assert_eq!(settled("http://shop.example/a", &["evil.example"]), Ok(Some("shop.example".into())));
        assert_eq!(settled("http://shop.example/a", &["shop.example"]), Ok(Some("shop.example".into())));
        assert_eq!(settled("http://shop.example/a", &[]), Ok(None), "origin_form adds it from the authority");
        assert!(settled("http://user@shop.example/a", &[]).is_err(), "user info");
        assert!(settled("http://shop.example/a", &["a", "b"]).is_err());
    }
}
