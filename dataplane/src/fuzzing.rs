//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz layout, a workspace of its own), after
//! rustls's `fuzz/`: each target hands its bytes to a function here, which runs the code the
//! proxy runs and checks what must hold — no panic, and what decoded encodes back to the same
//! thing. Not part of the sidecar's interface.
//!
//! The key ring, pool and clock are fixed so that an input's verdict never changes: a committed
//! seed that opens today opens in CI next year.
#![doc(hidden)]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};
use handover_common::keyfile;
use http::{HeaderMap, HeaderValue, header};

use crate::cookie::{self, Budget, CookieError, Owner, Snapshot};
use crate::keys::KeyRing;
use crate::registry;

/// The pool every cookie here is sealed for and opened in.
pub const POOL: &str = "shop/cart";
/// The sidecar's default cookie name (`--cookie-name`).
pub const COOKIE_NAME: &str = "handover";
/// The largest budget the operator allows (`cookie.maxBytes`, 64 KiB): the most chunks a request
/// may carry, so the widest surface for the join.
pub const MAX_BYTES: usize = 64 * 1024;
/// "Now" for every open, unix seconds (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
/// The proxy's default `--max-state-bytes`.
pub const MAX_STATE_BYTES: usize = 64 * 1024;
/// Expiry of the seeds: far beyond [`NOW`], not `u64::MAX`, so the seeds look like real cookies.
const SEED_EXPIRES: u64 = NOW + 10 * 365 * 86_400;
/// Where the body starts in the opened seal; the flags byte follows version, issued and expiry.
const FLAGS_AT: usize = 24;
/// States shorter than this are never deflated by `cookie::seal` (its `COMPRESS_FROM`, private).
const NEVER_DEFLATED_BELOW: usize = 128;

/// The test key file: key 2 seals, key 1 still opens (a rotation in progress), so both the
/// current and an older key are reachable. The secrets are public test values.
pub fn key_file() -> String {
    keyfile::KeyRing(vec![SEALING_KEY, OLDER_KEY]).render()
}

const SEALING_KEY: keyfile::Key = keyfile::Key { id: 2, secret: [0x22; 32], created: 1_700_000_000 };
const OLDER_KEY: keyfile::Key = keyfile::Key { id: 1, secret: [0x11; 32], created: 1_600_000_000 };

static RING: LazyLock<KeyRing> =
    LazyLock::new(|| KeyRing::parse(&key_file()).unwrap_or_else(|e| panic!("the test key file is invalid: {e}")));

/// The chunk budget the proxy uses for [`COOKIE_NAME`] and [`MAX_BYTES`].
pub fn budget() -> Budget {
    Budget::for_cookie(COOKIE_NAME, MAX_BYTES)
}

/// What the proxy made of one request's Cookie header.
#[derive(Debug)]
pub struct Decoded {
    /// The sealed value joined from the chunks, when the join succeeded.
    pub joined: Option<String>,
    /// The verdict: no cookie, a refusal, or the opened snapshot.
    pub opened: Result<Option<Snapshot>, CookieError>,
}

/// Reads `data` as the whole value of a request's `Cookie` header, as the proxy does: a value
/// hyper refuses, or that is not visible ASCII, is no cookie at all. The decode path only, so a
/// target can meter its allocations apart from the checks of [`check_cookie_header`].
pub fn decode_cookie_header(data: &[u8]) -> Decoded {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return Decoded { joined: None, opened: Ok(None) };
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, value);
    decode_headers(&headers)
}

/// `proxy::Proxy::read_cookie` without the metrics: pairs, join, open — through the same
/// `cookie` functions the proxy calls.
fn decode_headers(headers: &HeaderMap) -> Decoded {
    let pairs = cookie::request_pairs(headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()));
    let lookup = |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    // The proxy also notes which chunks the client holds (to expire stale ones): never more than
    // the names the request really carries, whatever a chunk count claims.
    let held = cookie::held_chunks(COOKIE_NAME, pairs.iter().map(|(n, _)| *n));
    assert!(held.len() <= pairs.len(), "held chunks beyond the request's own names");
    match cookie::join(COOKIE_NAME, budget(), lookup) {
        Ok(Some(joined)) => {
            let opened = cookie::open_within(&joined, POOL, &RING, NOW, MAX_STATE_BYTES).map(Some);
            Decoded { joined: Some(joined), opened }
        }
        Ok(None) => Decoded { joined: None, opened: Ok(None) },
        Err(e) => Decoded { joined: None, opened: Err(e) },
    }
}

/// The checks on a decoded header: the chunk layer and the cookie both encode back to what was
/// decoded. Panics on a violation, which is what the fuzzer reports.
pub fn check_cookie_header(decoded: &Decoded) {
    if let Some(joined) = &decoded.joined {
        check_chunks_round_trip(joined);
    }
    if let Ok(Some(snapshot)) = &decoded.opened {
        assert!(snapshot.state.len() <= MAX_STATE_BYTES, "a state over the proxy's state limit opened");
        // Re-encode as a response would (seal, split into Set-Cookie chunks), send the chunks
        // back as the next request's Cookie header: the same snapshot must come out.
        let resealed = cookie::seal(snapshot, POOL, &RING);
        let chunks = match cookie::split(COOKIE_NAME, &resealed, budget()) {
            Ok(chunks) => chunks,
            // An unchunked cookie is not held to the budget on the way in (the header limit bounds
            // it), so one that opened may be too large to be written again; nothing else may be.
            Err(CookieError::OverBudget) if resealed.len() > MAX_BYTES => return,
            Err(e) => panic!("a resealed cookie of {} bytes was refused by split: {e}", resealed.len()),
        };
        let header: Vec<String> = chunks.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let again = decode_cookie_header(header.join("; ").as_bytes());
        assert_eq!(again.opened.as_ref(), Ok(&Some(snapshot.clone())), "a resealed snapshot did not open the same");
    }
}

/// `join(split(v)) == v` for every value `split` accepts and `join` can tell apart from a chunked
/// one: base64url never holds a dot, but a joined value made of garbage may.
fn check_chunks_round_trip(value: &str) {
    if value.contains('.') {
        return;
    }
    let Ok(chunks) = cookie::split(COOKIE_NAME, value, budget()) else {
        assert!(value.len() > MAX_BYTES, "split refused a value of {} bytes, within the budget", value.len());
        return;
    };
    let joined = cookie::join(COOKIE_NAME, budget(), |n| chunks.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()));
    assert_eq!(joined, Ok(Some(value.to_owned())), "split then join changed the value");
}

/// The 9-byte header `cookie::seal` writes for [`POOL`] with the test ring's sealing key, taken
/// from a real seal so that it follows cookie.rs.
fn seal_header() -> [u8; 9] {
    static HEADER: LazyLock<[u8; 9]> = LazyLock::new(|| {
        let sealed = URL_SAFE_NO_PAD.decode(cookie::seal(&seed_snapshot(Vec::new()), POOL, &RING)).unwrap_or_default();
        sealed.get(..9).and_then(|h| h.try_into().ok()).unwrap_or_else(|| panic!("cookie::seal wrote no header"))
    });
    *HEADER
}

/// Seals arbitrary `body` bytes as cookie.rs's wire format does (associated data = header ||
/// pool name), so that the fuzzer reaches the body decoder behind the AEAD, which a mutated
/// cookie never passes. The nonce is fixed: these cookies never leave the fuzzer.
pub fn seal_body(body: &[u8]) -> String {
    let header = seal_header();
    let mut ad = header.to_vec();
    ad.extend_from_slice(POOL.as_bytes());
    let nonce = [0u8; 24];
    let sealed = RING
        .current()
        .cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: body, aad: &ad })
        .unwrap_or_else(|e| panic!("sealing in memory failed: {e}"));
    let mut out = header.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

/// The body inside a cookie sealed with the test ring's sealing key.
fn unseal_body(value: &str) -> Vec<u8> {
    let raw = URL_SAFE_NO_PAD.decode(value).unwrap_or_else(|e| panic!("cookie::seal wrote non-base64url: {e}"));
    assert!(raw.len() >= 9 + 24 + 16, "cookie::seal wrote {} bytes", raw.len());
    let (header, rest) = raw.split_at(9);
    let (nonce, sealed) = rest.split_at(24);
    let mut ad = header.to_vec();
    ad.extend_from_slice(POOL.as_bytes());
    RING.current()
        .cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &ad })
        .unwrap_or_else(|_| panic!("a cookie sealed by cookie::seal does not open with its own key"))
}

/// Opens arbitrary `body` bytes sealed with the test key. A body that decodes must encode back:
/// byte for byte when the encoder would write it that way (not deflated, shorter than the
/// deflate threshold), else to a cookie that opens to the same snapshot.
pub fn cookie_body(body: &[u8]) {
    let opened = cookie::open(&seal_body(body), POOL, &RING, NOW);
    let snapshot = match opened {
        Ok(snapshot) => snapshot,
        // The seal is valid, so only the body or its expiry can be refused.
        Err(CookieError::Malformed | CookieError::Expired) => return,
        Err(e) => panic!("a well-sealed body was refused as {e:?}"),
    };
    assert!(snapshot.state.len() <= cookie::MAX_STATE_BYTES, "a state over MAX_STATE_BYTES opened");
    let resealed = cookie::seal(&snapshot, POOL, &RING);
    let canonical = body.get(FLAGS_AT) == Some(&0) && snapshot.state.len() < NEVER_DEFLATED_BELOW;
    if canonical {
        assert_eq!(unseal_body(&resealed), body, "the re-encoded body differs from the decoded one");
    }
    assert_eq!(cookie::open(&resealed, POOL, &RING, NOW), Ok(snapshot), "a resealed snapshot did not open the same");
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

/// A snapshot like the ones the proxy seals, with `state`.
fn seed_snapshot(state: Vec<u8>) -> Snapshot {
    Snapshot {
        session: "Zm9vYmFyYmF6cXV4cXV1eA".into(),
        owner: Owner {
            name: "cart-7d9f8-abcde".into(),
            uid: "7c1e8a52-0f1b-4d5e-9a3c-2b6f4e8d1a07".into(),
            addr: "10.244.0.17:8000".into(),
        },
        version: 42,
        issued_at: NOW - 60,
        expires_at: SEED_EXPIRES,
        state,
    }
}

/// The seed corpus, `(target, file name, bytes)`: valid cookies (one chunk, deflated, split over
/// chunks, sealed with the older key), their plaintext bodies, and the test key file. Written by
/// the ignored test `fuzzing::tests::write_seeds`; member lists and durations are hand-written.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // Incompressible bytes, deterministic: a cookie this large must be split.
    let noise: Vec<u8> = std::iter::successors(Some(0x9e37_79b9u32), |x| {
        // xorshift32: deflate finds nothing to shrink, and the seed is the same on every run.
        let x = x ^ (x << 13);
        let x = x ^ (x >> 17);
        Some(x ^ (x << 5))
    })
    .take(6000)
    .map(|x| x as u8)
    .collect();
    let states: [(&str, Vec<u8>); 4] = [
        ("empty", Vec::new()),
        ("small", b"{\"cart\":[3,14,15],\"user\":\"ada\"}".to_vec()),
        ("deflated", b"item=92653;".repeat(300)),
        ("chunked", noise),
    ];
    // A ring of the older key alone seals what a sidecar wrote before the rotation.
    let old_key = KeyRing::parse(&keyfile::KeyRing(vec![OLDER_KEY]).render()).unwrap_or_else(|e| panic!("{e}"));
    for (name, state) in states {
        let snapshot = seed_snapshot(state);
        let value = cookie::seal(&snapshot, POOL, &RING);
        let chunks = cookie::split(COOKIE_NAME, &value, budget()).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        let header: Vec<String> = chunks.iter().map(|(n, v)| format!("{n}={v}")).collect();
        // The way browsers send it: other cookies around ours.
        let header = format!("theme=dark; {}; _ga=GA1.2.3", header.join("; "));
        out.push(("cookie", format!("valid-{name}"), header.into_bytes()));
        // A large body tells the body decoder nothing a small one does not (its length is one
        // field) and makes every execution slower: the body target gets the small ones only.
        if name != "chunked" {
            out.push(("cookie_body", format!("valid-{name}"), unseal_body(&value)));
        }
    }
    let old = cookie::seal(&seed_snapshot(b"older key".to_vec()), POOL, &old_key);
    out.push(("cookie", "valid-older-key".into(), format!("{COOKIE_NAME}={old}").into_bytes()));
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
                    assert!(matches!(decoded.opened, Ok(Some(_))), "{name}: {:?}", decoded.opened);
                    check_cookie_header(&decoded);
                }
                "cookie_body" => assert!(cookie::open(&seal_body(&bytes), POOL, &RING, NOW).is_ok(), "{name}"),
                _ => {}
            }
        }
    }

    #[test]
    fn the_chunked_seed_is_split_and_the_older_key_opens() {
        let seeds = seeds();
        let chunked = seeds.iter().find(|(t, n, _)| *t == "cookie" && n == "valid-chunked").expect("seed");
        assert!(String::from_utf8_lossy(&chunked.2).contains("handover.1="), "the chunked seed has one chunk");
        let older = seeds.iter().find(|(_, n, _)| n == "valid-older-key").expect("seed");
        let decoded = decode_cookie_header(&older.2);
        assert_eq!(decoded.opened.map(|s| s.map(|s| s.state)), Ok(Some(b"older key".to_vec())));
    }

    #[test]
    fn refusals_are_verdicts_not_panics() {
        for header in [&b"handover=1000000.x"[..], b"handover=2.abc", b"handover=%%%", b"\x00", b"handover=\xff", b""] {
            let decoded = decode_cookie_header(header);
            assert!(!matches!(decoded.opened, Ok(Some(_))), "{header:?} opened");
            check_cookie_header(&decoded);
        }
        assert_eq!(decode_cookie_header(b"handover=1000000.x").opened, Err(CookieError::OverBudget));
        assert_eq!(decode_cookie_header(b"handover=2.abc").opened, Err(CookieError::MissingChunk(1)));
    }

    #[test]
    fn a_body_sealed_here_opens_like_one_sealed_by_the_cookie_module() {
        let snapshot = seed_snapshot(b"abc".to_vec());
        let body = unseal_body(&cookie::seal(&snapshot, POOL, &RING));
        assert_eq!(cookie::open(&seal_body(&body), POOL, &RING, NOW), Ok(snapshot));
        cookie_body(&body);
        cookie_body(b"");
    }

    #[test]
    fn member_lists_round_trip() {
        members(b"b uid-b 10.0.0.2:80\na@[::1]:9000, c u 1.2.3.4:5 # comment");
        members(b"not a member");
    }
}
