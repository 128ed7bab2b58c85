//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz layout, a workspace of its own), after
//! rustls's `fuzz/`: each target hands its bytes to a function here, which runs the code the
//! proxy runs and checks what must hold — no panic, and what decoded encodes back to the same
//! thing. Not part of the sidecar's interface.
//!
//! The key ring, pool and clock are fixed so that an input's verdict never changes: a committed
//! seed that opens today opens in CI next year.
#![doc(hidden)]

use std::sync::LazyLock;

use base64_simd::URL_SAFE_NO_PAD;
use handover_common::keyfile;
use http::{HeaderMap, HeaderValue, header};

use crate::cookie::{self, CookieError, Owner, Route};
use crate::keys::KeyRing;
use crate::registry;
use crate::xchacha::{NONCE_LEN, TAG_LEN};

/// The pool every cookie here is sealed for and opened in.
pub const POOL: &str = "shop/cart";
/// The sidecar's default cookie name (`--cookie-name`).
pub const COOKIE_NAME: &str = "handover";
/// "Now" for every open, unix seconds (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
/// The proxy's default `--max-state-bytes`.
pub const MAX_STATE_BYTES: usize = 64 * 1024;
/// The proxy's chunk size for [`COOKIE_NAME`] (`MAX_COOKIE_BYTES - 96 - name`).
pub const CHUNK_BYTES: usize = 4096 - 96 - COOKIE_NAME.len();
/// Expiry of the seeds: far beyond [`NOW`], not `u64::MAX`, so the seeds look like real cookies.
const SEED_EXPIRES: u64 = NOW + 10 * 365 * 86_400;
/// Where the flags byte sits in a state body (after the version).
const STATE_FLAGS_AT: usize = 8;
/// States shorter than this are never deflated by `cookie::seal_state` (its `COMPRESS_FROM`).
const NEVER_DEFLATED_BELOW: usize = 128;
/// The kinds of sealed value, as the first byte of a `cookie_body` input chooses them.
const KIND_ROUTE: u8 = b'r';
const KIND_STATE: u8 = b's';

/// The test key file: key 2 seals, key 1 still opens (a rotation in progress), so both the
/// current and an older key are reachable. The secrets are public test values.
pub fn key_file() -> String {
    keyfile::KeyRing(vec![SEALING_KEY, OLDER_KEY]).render()
}

const SEALING_KEY: keyfile::Key = keyfile::Key { id: 2, secret: [0x22; 32], created: 1_700_000_000 };
const OLDER_KEY: keyfile::Key = keyfile::Key { id: 1, secret: [0x11; 32], created: 1_600_000_000 };

static RING: LazyLock<KeyRing> =
    LazyLock::new(|| KeyRing::parse(&key_file()).unwrap_or_else(|e| panic!("the test key file is invalid: {e}")));

/// What the proxy made of one request's Cookie header.
#[derive(Debug)]
pub struct Decoded {
    /// The routing cookie: none, a refusal, or opened.
    pub route: Result<Option<Route>, CookieError>,
    /// The route's state, when the route opened and names chunks: joined and opened, or refused.
    pub state: Option<Result<Vec<u8>, CookieError>>,
}

/// Reads `data` as the whole value of a request's `Cookie` header, as the proxy does: a value
/// `http` refuses (controls) is no cookie at all; any other bytes are read as pairs. The decode
/// path only, so a target can meter its allocations apart from the checks of
/// [`check_cookie_header`].
pub fn decode_cookie_header(data: &[u8]) -> Decoded {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return Decoded { route: Ok(None), state: None };
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, value);
    decode_headers(&headers)
}

/// `proxy::Proxy::read_cookie` and a restore's opening of the state, without the metrics —
/// through the same `cookie` functions the proxy calls.
fn decode_headers(headers: &HeaderMap) -> Decoded {
    let pairs = cookie::request_pairs(headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes));
    let lookup = |n: &str| cookie::lookup(&pairs, n);
    // The proxy also notes which chunks the client holds (to expire stale ones): never more than
    // the names the request really carries.
    let held = cookie::held_state_chunks(COOKIE_NAME, pairs.iter().map(|(n, _)| *n));
    assert!(held.len() <= pairs.len(), "held chunks beyond the request's own names");
    let route = lookup(COOKIE_NAME).map(|v| cookie::open_route(v, POOL, &RING, NOW)).transpose();
    let state = match &route {
        Ok(Some(r)) if r.chunks > 0 => Some(
            cookie::join_state(COOKIE_NAME, r, lookup)
                .and_then(|joined| cookie::open_state(&joined, r, POOL, &RING, MAX_STATE_BYTES)),
        ),
        Ok(Some(Route { inline: Some(stored), .. })) => Some(stored.open(MAX_STATE_BYTES)),
        _ => None,
    };
    Decoded { route, state }
}

/// The cookies a response sets for `route` with `state`, as the next request's Cookie header:
/// the state inside the route when `route` carried it there, else in chunks.
fn cookie_header(route: &Route, state: &[u8], ring: &KeyRing) -> String {
    if let Some(stored) = &route.inline {
        let inline = Route { inline: Some(cookie::StoredState::new(state, &stored.format)), ..route.clone() };
        return format!("{COOKIE_NAME}={}", cookie::seal_route(&inline, POOL, ring));
    }
    let value = cookie::seal_state(&route.session, route.version, state, POOL, ring);
    let chunks = cookie::split_state(COOKIE_NAME, &value, CHUNK_BYTES);
    let route = Route { chunks: chunks.len() as u16, state_bytes: value.len() as u32, ..route.clone() };
    let mut pairs = vec![format!("{COOKIE_NAME}={}", cookie::seal_route(&route, POOL, ring))];
    pairs.extend(chunks.iter().map(|(n, v)| format!("{n}={v}")));
    pairs.join("; ")
}

/// The checks on a decoded header: a route and state that opened, sealed again as a response
/// would set them and sent back, open to the same route and state. Panics on a violation, which
/// is what the fuzzer reports.
pub fn check_cookie_header(decoded: &Decoded) {
    let (Ok(Some(route)), Some(Ok(state))) = (&decoded.route, &decoded.state) else {
        return;
    };
    assert!(state.len() <= MAX_STATE_BYTES, "a state over the proxy's state limit opened");
    let again = decode_cookie_header(cookie_header(route, state, &RING).as_bytes());
    let (Ok(Some(route_again)), Some(Ok(state_again))) = (&again.route, &again.state) else {
        panic!(
            "a resealed route and state did not open: {:?} / {:?}",
            again.route,
            again.state.map(|s| s.map(|s| s.len()))
        );
    };
    assert_eq!((&route_again.session, route_again.version), (&route.session, route.version), "the route changed");
    assert_eq!(state_again, state, "a resealed state did not open the same");
}

/// The 9-byte header `cookie` writes for [`POOL`] with the test ring's sealing key, taken from a
/// real seal so that it follows cookie.rs.
fn seal_header() -> [u8; 9] {
    static HEADER: LazyLock<[u8; 9]> = LazyLock::new(|| {
        let sealed = URL_SAFE_NO_PAD.decode_to_vec(cookie::seal_route(&seed_route(), POOL, &RING)).unwrap_or_default();
        sealed.get(..9).and_then(|h| h.try_into().ok()).unwrap_or_else(|| panic!("cookie::seal_route wrote no header"))
    });
    *HEADER
}

fn associated_data(kind: u8) -> Vec<u8> {
    let mut ad = seal_header().to_vec();
    ad.push(kind);
    ad.extend_from_slice(POOL.as_bytes());
    ad
}

/// Seals arbitrary `body` bytes of `kind` as cookie.rs's wire format does (associated data =
/// header || kind || pool name), so that the fuzzer reaches the body decoders behind the AEAD,
/// which a mutated cookie never passes.
pub fn seal_body(kind: u8, body: &[u8]) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    let mut sealed = body.to_vec();
    let tag = RING.current().cipher.seal_in_place(&mut nonce, &associated_data(kind), &mut sealed);
    let mut out = seal_header().to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode_to_string(out)
}

/// The body inside a value of `kind` sealed with the test ring's sealing key.
fn unseal_body(kind: u8, value: &str) -> Vec<u8> {
    let raw = URL_SAFE_NO_PAD.decode_to_vec(value).unwrap_or_else(|e| panic!("cookie wrote non-base64url: {e}"));
    assert!(raw.len() >= 9 + NONCE_LEN + TAG_LEN, "cookie wrote {} bytes", raw.len());
    let (nonce, rest) = raw[9..].split_first_chunk::<NONCE_LEN>().expect("checked above");
    let (sealed, tag) = rest.split_last_chunk::<TAG_LEN>().expect("checked above");
    let mut body = sealed.to_vec();
    RING.current()
        .cipher
        .open_in_place(nonce, &associated_data(kind), &mut body, tag)
        .unwrap_or_else(|_| panic!("a value sealed by cookie does not open with its own key"));
    body
}

/// The route a state body claims (version, then flags, then a str8 session), so a state body is
/// opened against a route that names it.
fn route_claimed_by(state_body: &[u8]) -> Option<Route> {
    let version = u64::from_be_bytes(state_body.get(..8)?.try_into().ok()?);
    let len = usize::from(*state_body.get(STATE_FLAGS_AT + 1)?);
    let session = std::str::from_utf8(state_body.get(STATE_FLAGS_AT + 2..STATE_FLAGS_AT + 2 + len)?).ok()?;
    Some(Route { session: session.to_owned(), version, state_version: version, ..seed_route() })
}

/// Opens arbitrary body bytes sealed with the test key, the first byte choosing the kind (odd:
/// a route, even: a state). A body that decodes must encode back: byte for byte when the encoder
/// would write it that way, else to a value that opens the same.
pub fn cookie_body(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    if kind & 1 == 1 {
        let route = match cookie::open_route(seal_body(KIND_ROUTE, body), POOL, &RING, NOW) {
            Ok(route) => route,
            // The seal is valid, so only the body or its expiry can be refused.
            Err(CookieError::Malformed | CookieError::Expired) => return,
            Err(e) => panic!("a well-sealed route body was refused as {e:?}"),
        };
        let resealed = cookie::seal_route(&route, POOL, &RING);
        // Strings longer than 255 bytes cannot be in a body that decoded: the encoding is exact.
        assert_eq!(unseal_body(KIND_ROUTE, &resealed), body, "the re-encoded route body differs");
        // A state inside the route inflates within the limit, or is refused.
        if let Some(Ok(state)) = route.inline.map(|stored| stored.open(MAX_STATE_BYTES)) {
            assert!(state.len() <= MAX_STATE_BYTES, "an inline state over the limit opened");
        }
        return;
    }
    let Some(route) = route_claimed_by(body) else {
        assert!(cookie::open_state(&seal_body(KIND_STATE, body), &seed_route(), POOL, &RING, MAX_STATE_BYTES).is_err());
        return;
    };
    let (state, format) =
        match cookie::open_state_format(&seal_body(KIND_STATE, body), &route, POOL, &RING, MAX_STATE_BYTES) {
            Ok(opened) => opened,
            Err(CookieError::Malformed | CookieError::OverBudget) => return,
            Err(e) => panic!("a well-sealed state body was refused as {e:?}"),
        };
    let resealed = cookie::seal_state_format(&route.session, route.version, &state, &format, POOL, &RING);
    let canonical = body.get(STATE_FLAGS_AT) == Some(&0) && state.len() < NEVER_DEFLATED_BELOW;
    if canonical {
        assert_eq!(unseal_body(KIND_STATE, &resealed), body, "the re-encoded state body differs");
    }
    assert_eq!(
        cookie::open_state_format(&resealed, &route, POOL, &RING, MAX_STATE_BYTES),
        Ok((state, format)),
        "a resealed state did not open the same"
    );
}

/// A state through the state's compressor (`crate::deflate`): what it writes is shorter than the
/// state and inflates back to it with the sidecars' own inflater (`cookie::inflate`, bounded by
/// the state's length), whichever encoder wrote it; so does each of our two blocks (literals, and
/// LZ77) written directly, whatever the probe would have chosen.
pub fn deflate(data: &[u8]) {
    let inflate = |block: &[u8]| cookie::inflate(block, data.len());
    if let Some(deflated) = crate::deflate::deflate_smaller(data) {
        assert!(deflated.len() < data.len(), "deflated to {} bytes from {}", deflated.len(), data.len());
        assert_eq!(inflate(&deflated).as_deref(), Ok(data), "the deflated state inflates to other bytes");
    }
    // The whole state under the codes kept from its first half (a session's next state).
    let mut kept = None;
    crate::deflate::deflate_smaller_with(&data[..data.len() / 2], &mut kept);
    if let Some(deflated) = crate::deflate::deflate_smaller_with(data, &mut kept) {
        assert!(
            deflated.len() < data.len(),
            "deflated under kept codes to {} bytes from {}",
            deflated.len(),
            data.len()
        );
        assert_eq!(
            inflate(&deflated).as_deref(),
            Ok(data),
            "the state deflated under kept codes inflates to other bytes"
        );
    }
    if let Ok(Some(block)) = crate::deflate::literal_block(data) {
        assert!(block.len() < data.len(), "a literal block of {} bytes from {}", block.len(), data.len());
        assert_eq!(inflate(&block).as_deref(), Ok(data), "the literal block inflates to other bytes");
    }
    if data.len() < crate::deflate::MAX_OURS
        && let Ok(Some(block)) = crate::deflate::lz77_block(data)
    {
        assert!(block.len() < data.len(), "an LZ77 block of {} bytes from {}", block.len(), data.len());
        assert_eq!(inflate(&block).as_deref(), Ok(data), "the LZ77 block inflates to other bytes");
    }
}

/// A member list: what parses renders to text that parses to the same list, and rendering is
/// stable from then on.
pub fn members(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(members) = registry::parse_members(text) else {
        return;
    };
    assert!(members.is_sorted_by(|a, b| a.name <= b.name), "parse_members returned an unsorted list");
    let rendered = registry::render_members(&members);
    let again = registry::parse_members(&rendered);
    assert_eq!(again.as_ref(), Ok(&members), "rendered members parse to another list:\n{rendered}");
    assert_eq!(registry::render_members(&members), rendered);
}

/// A client's bytes at the data port's HTTP/1.1 path (`server::h1`): never a panic; what it takes
/// is a whole HTTP/1.1 message as httparse reads it, its body exactly the `Content-Length` it
/// declares, with no framing or upgrade that only hyper handles, and the bytes after it are left
/// for the next request; what it does not take is handed on untouched.
pub fn http1_request(data: &[u8]) {
    use hyper::body::Body as _;
    let mut buf = bytes::BytesMut::from(data);
    // The map of a message before, not emptied: none of its fields may reach this request.
    let mut spare = http::HeaderMap::new();
    spare.insert("x-earlier-message", http::HeaderValue::from_static("1"));
    let taken = crate::server::h1::take_request(&mut buf, &mut spare);
    let Ok(Some((req, _))) = taken else {
        assert_eq!(&buf[..], data, "bytes taken from a request not served here");
        return;
    };
    let used = data.len() - buf.len();
    assert_eq!(&buf[..], &data[used..], "the bytes after the request are not the next request's");
    let mut headers = [httparse::EMPTY_HEADER; crate::http1::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = parsed.parse(data) else {
        panic!("a request taken whose head httparse does not read whole");
    };
    assert_eq!(parsed.version, Some(1), "a request taken that is not HTTP/1.1");
    assert_eq!(parsed.method, Some(req.method().as_str()));
    // What hyper makes of the same target (`http`'s URI: a fragment is dropped, for one).
    let uri = parsed.path.map(http::Uri::try_from);
    assert!(matches!(uri, Some(Ok(ref uri)) if uri == req.uri()), "the target is not {:?}", req.uri());
    assert_eq!(req.headers().len(), parsed.headers.len(), "headers lost or added");
    for name in [header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE] {
        assert!(!req.headers().contains_key(&name), "a request with {name} taken");
    }
    let body = req.body().size_hint().exact().and_then(|n| usize::try_from(n).ok());
    assert_eq!(Some(used - head), body, "the body is not the bytes after the head");
    let declared = req.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.parse().ok()));
    assert_eq!(declared.unwrap_or(Some(0)), body, "the body is not the declared content-length");
}

/// An app's answer at the app client's HTTP/1.1 path (`upstream::h1`): never a panic; a head it
/// takes is one httparse reads whole, with no transfer coding but chunked alone and no length
/// beside chunks; and the body's framing hands on no more bytes than there are (nor than a
/// declared length), each step taking some, so a body always ends or waits.
pub fn app_response(data: &[u8]) {
    use crate::upstream::h1::{Framing, State, Step, next_step, read_head};
    for head_request in [false, true] {
        let mut buf = bytes::BytesMut::from(data);
        let head = match read_head(&mut buf, head_request, &[crate::proxy::STATE_HEADER], &mut http::HeaderMap::new()) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert_eq!(&buf[..], data, "bytes taken from a head not whole");
                continue;
            }
            Err(_) => continue,
        };
        let used = data.len() - buf.len();
        let mut headers = [httparse::EMPTY_HEADER; crate::http1::MAX_HEADERS];
        let parsed = httparse::Response::new(&mut headers).parse(data);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(len)) if len == used),
            "a head httparse reads otherwise"
        );
        let codings: Vec<&[u8]> =
            headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).map(|h| h.value).collect();
        assert!(
            codings.is_empty() || (codings.len() == 1 && codings[0].trim_ascii().eq_ignore_ascii_case(b"chunked")),
            "a transfer coding besides chunked alone was taken"
        );
        if head.framing == Framing::Chunked {
            let length = headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-length"));
            assert!(!length, "chunks taken beside a content-length");
        }
        let mut state = State::of(head.framing);
        let mut passed = 0;
        loop {
            let before = buf.len();
            match next_step(&mut state, &mut buf) {
                Ok(Step::Data(bytes)) => {
                    assert!(!bytes.is_empty() && buf.len() < before, "a step that took nothing");
                    passed += bytes.len();
                }
                Ok(Step::End | Step::More) | Err(_) => break,
            }
        }
        assert!(passed <= data.len() - used, "more body than bytes");
        if let Framing::Length(len) = head.framing {
            assert!(passed as u64 <= len, "more body than its length");
        }
    }
}

/// A route like the ones the proxy seals.
fn seed_route() -> Route {
    Route {
        session: "Zm9vYmFyYmF6cXV4cXV1eA".into(),
        owner: Owner {
            name: "cart-7d9f8-abcde".into(),
            uid: "7c1e8a52-0f1b-4d5e-9a3c-2b6f4e8d1a07".into(),
            addr: "10.244.0.17:8000".into(),
        },
        version: 42,
        state_version: 42,
        issued_at: NOW - 60,
        expires_at: SEED_EXPIRES,
        chunks: 0,
        state_bytes: 0,
        carry: 0,
        created_at: NOW - 3_600,
        ended: false,
        inline: None,
    }
}

/// The seed corpus, `(target, file name, bytes)`: valid cookie headers (small, deflated, split
/// over chunks, sealed with the older key), the plaintext bodies of their routes and states, and
/// the test key file. Written by the ignored test `fuzzing::tests::write_seeds`; member lists
/// and durations are hand-written.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // Incompressible bytes, deterministic: a state this large must be split.
    let noise: Vec<u8> = std::iter::successors(Some(0x9e37_79b9u32), |x| {
        // xorshift32: deflate finds nothing to shrink, and the seed is the same on every run.
        let x = x ^ (x << 13);
        let x = x ^ (x >> 17);
        Some(x ^ (x << 5))
    })
    .take(6000)
    .map(|x| x as u8)
    .collect();
    // The state compressor's two paths: base64 noise in JSON (a block of literals) and JSON with
    // repeats (LZ77).
    let blob = URL_SAFE_NO_PAD.encode_to_string(&noise[..1500]);
    out.push(("deflate", "base64-state".into(), format!("{{\"count\":7,\"blob\":\"{blob}\"}}").into_bytes()));
    let cart: Vec<String> = (0..20).map(|i| format!("{{\"sku\":\"SKU-{i:04}\",\"qty\":{}}}", i % 3 + 1)).collect();
    out.push(("deflate", "json-state".into(), format!("{{\"cart\":[{}]}}", cart.join(",")).into_bytes()));
    let states: [(&str, Vec<u8>); 3] = [
        ("small", b"{\"cart\":[3,14,15],\"user\":\"ada\"}".to_vec()),
        ("deflated", b"item=92653;".repeat(300)),
        ("chunked", noise),
    ];
    // A ring of the older key alone seals what a sidecar wrote before the rotation.
    let old_key = KeyRing::parse(&keyfile::KeyRing(vec![OLDER_KEY]).render()).unwrap_or_else(|e| panic!("{e}"));
    for (name, state) in states {
        // The way browsers send it: other cookies around ours.
        let header = format!("theme=dark; {}; _ga=GA1.2.3", cookie_header(&seed_route(), &state, &RING));
        out.push(("cookie", format!("valid-{name}"), header.into_bytes()));
        // A large body tells the body decoder nothing a small one does not (its length is one
        // field) and makes every execution slower: the body target gets the small ones only.
        if name != "chunked" {
            let value = cookie::seal_state(&seed_route().session, seed_route().version, &state, POOL, &RING);
            let mut body = vec![KIND_STATE];
            body.extend(unseal_body(KIND_STATE, &value));
            out.push(("cookie_body", format!("valid-state-{name}"), body));
        }
    }
    let mut route_body = vec![KIND_ROUTE];
    route_body.extend(unseal_body(KIND_ROUTE, &cookie::seal_route(&seed_route(), POOL, &RING)));
    out.push(("cookie_body", "valid-route".into(), route_body));
    let tombstone = Route { ended: true, version: 43, state_version: 43, ..seed_route() };
    let mut tombstone_body = vec![KIND_ROUTE];
    tombstone_body.extend(unseal_body(KIND_ROUTE, &cookie::seal_route(&tombstone, POOL, &RING)));
    out.push(("cookie_body", "valid-route-tombstone".into(), tombstone_body));
    let inline = Route { inline: Some(cookie::StoredState::new(b"{\"n\":1}", "cart-v2")), ..seed_route() };
    let inline_value = cookie::seal_route(&inline, POOL, &RING);
    let mut inline_body = vec![KIND_ROUTE];
    inline_body.extend(unseal_body(KIND_ROUTE, &inline_value));
    out.push(("cookie_body", "valid-route-inline".into(), inline_body));
    out.push(("cookie", "valid-inline".into(), format!("theme=dark; {COOKIE_NAME}={inline_value}").into_bytes()));
    let with_format =
        cookie::seal_state_format(&seed_route().session, seed_route().version, b"{\"n\":1}", "cart-v2", POOL, &RING);
    let mut format_body = vec![KIND_STATE];
    format_body.extend(unseal_body(KIND_STATE, &with_format));
    out.push(("cookie_body", "valid-state-format".into(), format_body));
    let old = cookie_header(&seed_route(), b"older key", &old_key);
    out.push(("cookie", "valid-older-key".into(), old.into_bytes()));
    out.push(("keyfile", "valid-rotating".into(), key_file().into_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_dir(target: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
    }

    /// Regenerates the written seeds: `cargo test -p handover-dataplane --lib write_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files under fuzz/corpus"]
    fn write_seeds() {
        for (target, name, bytes) in seeds() {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }

    /// The committed valid cookies must keep opening with the fixed ring, or the fuzzer silently
    /// stops reaching anything behind the seal.
    #[test]
    fn committed_cookie_seeds_still_open() {
        for (target, name, _) in seeds() {
            let path = corpus_dir(target).join(&name);
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run the write_seeds test)", path.display()));
            match target {
                "cookie" => {
                    let decoded = decode_cookie_header(&bytes);
                    assert!(matches!(decoded.state, Some(Ok(_))), "{name}: {:?}", decoded.route);
                    check_cookie_header(&decoded);
                }
                "cookie_body" => cookie_body(&bytes),
                _ => {}
            }
        }
    }

    #[test]
    fn the_chunked_seed_is_split_and_the_older_key_opens() {
        let seeds = seeds();
        let chunked = seeds.iter().find(|(t, n, _)| *t == "cookie" && n == "valid-chunked").expect("seed");
        assert!(String::from_utf8_lossy(&chunked.2).contains("handover.1="), "the chunked seed has two chunks");
        let older = seeds.iter().find(|(_, n, _)| n == "valid-older-key").expect("seed");
        let decoded = decode_cookie_header(&older.2);
        assert_eq!(decoded.state, Some(Ok(b"older key".to_vec())));
    }

    #[test]
    fn refusals_are_verdicts_not_panics() {
        for header in [&b"handover=1000000.x"[..], b"handover.0=abc", b"handover=%%%", b"\x00", b"handover=\xff", b""] {
            let decoded = decode_cookie_header(header);
            assert!(decoded.state.is_none() || matches!(decoded.state, Some(Err(_))), "{header:?} opened");
            check_cookie_header(&decoded);
        }
        assert_eq!(decode_cookie_header(b"handover=1000000.x").route.map(|_| ()), Err(CookieError::Garbage));
        // A route naming two chunks, with one sent.
        let route = Route { chunks: 2, state_bytes: 10, ..seed_route() };
        let header = format!("handover={}; handover.0=abcde", cookie::seal_route(&route, POOL, &RING));
        assert_eq!(decode_cookie_header(header.as_bytes()).state, Some(Err(CookieError::MissingChunk(1))));
    }

    #[test]
    fn bodies_sealed_here_open_like_values_sealed_by_the_cookie_module() {
        let body = unseal_body(KIND_ROUTE, &cookie::seal_route(&seed_route(), POOL, &RING));
        assert_eq!(cookie::open_route(seal_body(KIND_ROUTE, &body), POOL, &RING, NOW), Ok(seed_route()));
        let mut input = vec![KIND_ROUTE];
        input.extend(body);
        cookie_body(&input);
        let state = unseal_body(KIND_STATE, &cookie::seal_state("s", 7, b"abc", POOL, &RING));
        let mut input = vec![KIND_STATE];
        input.extend(state);
        cookie_body(&input);
        cookie_body(b"");
        cookie_body(b"s");
    }

    /// Every committed input of `target`: its seeds and the findings kept as regressions.
    fn committed_inputs(target: &str) -> Vec<Vec<u8>> {
        let dirs = [corpus_dir(target), corpus_dir(target).join("../../regressions").join(target)];
        dirs.iter()
            .flat_map(|dir| std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
            .map(|entry| {
                let path = entry.expect("an input").path();
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            })
            .collect()
    }

    #[test]
    fn the_http1_targets_committed_inputs_hold() {
        committed_inputs("http1_request").iter().for_each(|input| http1_request(input));
        committed_inputs("app_response").iter().for_each(|input| app_response(input));
    }

    #[test]
    fn member_lists_round_trip() {
        members(b"b uid-b 10.0.0.2:80\na@[::1]:9000, c u 1.2.3.4:5 # comment");
        members(b"not a member");
    }
}
