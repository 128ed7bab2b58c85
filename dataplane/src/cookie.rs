//! The state cookie: one encoder ([`seal`]) and one decoder ([`open`]).
//!
//! Wire format, base64url without padding:
//!
//! ```text
//! header (9 bytes)  format version u8 | key id u32 BE | pool tag u32 BE
//! nonce  (24 bytes) XChaCha20-Poly1305 nonce, random per cookie
//! sealed            body + 16-byte tag; associated data = header || pool name
//! body              version u64 | issued-at u64 | expires-at u64 | flags u8 |
//!                   session str8 | owner name str8 | owner uid str8 | owner addr str8 |
//!                   state u32-length-prefixed (deflated when flag bit 0 is set)
//! ```
//!
//! The pool name is bound by the associated data, so a cookie of pool A is worthless in pool B; the
//! pool tag (FNV-1a of the pool name) only lets the decoder say "wrong pool" instead of "tampered".

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};

use crate::keys::KeyRing;

/// The only format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 9;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const FLAG_DEFLATED: u8 = 1;
/// States this large or larger are deflated when that makes them smaller.
const COMPRESS_FROM: usize = 128;
/// The largest state a cookie may expand to: bounds decompression of hostile input.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// Which pod wrote a cookie: the session's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
    pub addr: String,
}

/// Everything a cookie carries, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub session: String,
    pub owner: Owner,
    /// Grows by one with every cookie sealed for this session.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the cookie is refused from then on.
    pub expires_at: u64,
    /// The application's state, opaque; empty means none.
    pub state: Vec<u8>,
}

/// Why a cookie was refused. Every refusal counts as "no cookie".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Not base64url, or shorter than a header, nonce and tag.
    #[error("not a handover cookie")]
    Garbage,
    /// Written by a format this build does not know.
    #[error("unsupported cookie format {0}")]
    UnsupportedVersion(u8),
    /// Sealed with a key the ring no longer (or never) had.
    #[error("sealed with unknown key {0}")]
    UnknownKey(u32),
    /// Sealed for another pool.
    #[error("sealed for another pool")]
    WrongPool,
    /// The seal does not verify: changed, truncated inside, or forged.
    #[error("seal does not verify")]
    Tampered,
    /// The seal verifies but the body does not parse (a bug, or a foreign encoder).
    #[error("malformed body")]
    Malformed,
    /// Past its expiry time.
    #[error("expired")]
    Expired,
    /// A chunk of a split cookie is missing.
    #[error("missing chunk {0}")]
    MissingChunk(usize),
    /// More chunks, or more bytes, than the configured budget.
    #[error("over the cookie budget")]
    OverBudget,
    /// State chunks that are not the state of the routing cookie's version: cut short, or left by
    /// an older response that reached the client after a newer one.
    #[error("state chunks of another version")]
    Stale,
}

impl CookieError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CookieError::Garbage => "garbage",
            CookieError::UnsupportedVersion(_) => "unsupported_version",
            CookieError::UnknownKey(_) => "unknown_key",
            CookieError::WrongPool => "wrong_pool",
            CookieError::Tampered => "tampered",
            CookieError::Malformed => "malformed",
            CookieError::Expired => "expired",
            CookieError::MissingChunk(_) => "missing_chunk",
            CookieError::OverBudget => "over_budget",
            CookieError::Stale => "stale",
        }
    }
}

/// FNV-1a, 32 bits: a stable tag, not a security measure (the seal is).
fn pool_tag(pool: &str) -> u32 {
    pool.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn associated_data(header: &[u8], pool: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(header.len() + pool.len());
    ad.extend_from_slice(header);
    ad.extend_from_slice(pool.as_bytes());
    ad
}

/// Seals a snapshot for `pool` with the ring's current key. The result is the cookie value before
/// chunking.
pub fn seal(snapshot: &Snapshot, pool: &str, ring: &KeyRing) -> String {
    let key = ring.current();
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT_VERSION;
    header[1..5].copy_from_slice(&key.id.to_be_bytes());
    header[5..9].copy_from_slice(&pool_tag(pool).to_be_bytes());

    let body = encode_body(snapshot);
    let mut nonce = [0u8; NONCE_LEN];
    crate::random::fill(&mut nonce);
    let ad = associated_data(&header, pool);
    // Encryption with a valid key and in-memory buffers cannot fail.
    let sealed = key.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: &body, aad: &ad }).unwrap_or_default();

    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

/// Opens a cookie value sealed for `pool`. `now` is unix seconds. States up to
/// [`MAX_STATE_BYTES`]; the proxy uses [`open_within`] with its own, smaller bound.
pub fn open(value: &str, pool: &str, ring: &KeyRing, now: u64) -> Result<Snapshot, CookieError> {
    open_within(value, pool, ring, now, MAX_STATE_BYTES)
}

/// Opens a cookie value whose state (decompressed) is at most `max_state` bytes: a small, highly
/// compressible cookie must not expand into a large state.
pub fn open_within(
    value: &str,
    pool: &str,
    ring: &KeyRing,
    now: u64,
    max_state: usize,
) -> Result<Snapshot, CookieError> {
    let raw = URL_SAFE_NO_PAD.decode(value.trim()).map_err(|_| CookieError::Garbage)?;
    if raw.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(CookieError::Garbage);
    }
    let (header, rest) = raw.split_at(HEADER_LEN);
    if header[0] != FORMAT_VERSION {
        return Err(CookieError::UnsupportedVersion(header[0]));
    }
    let key_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let tag = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let key = ring.get(key_id).ok_or(CookieError::UnknownKey(key_id))?;
    if tag != pool_tag(pool) {
        return Err(CookieError::WrongPool);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let ad = associated_data(header, pool);
    let body = key
        .cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &ad })
        .map_err(|_| CookieError::Tampered)?;
    let snapshot = decode_body(&body, max_state.min(MAX_STATE_BYTES))?;
    if snapshot.expires_at <= now {
        return Err(CookieError::Expired);
    }
    Ok(snapshot)
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Every string we write is bounded well below 256 bytes by the callers; clamp to stay
    // decodable even if one is not.
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn encode_body(s: &Snapshot) -> Vec<u8> {
    let (flags, state) = compress(&s.state);
    let mut out = Vec::with_capacity(64 + state.len());
    out.extend_from_slice(&s.version.to_be_bytes());
    out.extend_from_slice(&s.issued_at.to_be_bytes());
    out.extend_from_slice(&s.expires_at.to_be_bytes());
    out.push(flags);
    put_str8(&mut out, &s.session);
    put_str8(&mut out, &s.owner.name);
    put_str8(&mut out, &s.owner.uid);
    put_str8(&mut out, &s.owner.addr);
    out.extend_from_slice(&(state.len() as u32).to_be_bytes());
    out.extend_from_slice(&state);
    out
}

fn compress(state: &[u8]) -> (u8, Vec<u8>) {
    if state.len() >= COMPRESS_FROM {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        if encoder.write_all(state).is_ok()
            && let Ok(deflated) = encoder.finish()
            && deflated.len() < state.len()
        {
            return (FLAG_DEFLATED, deflated);
        }
    }
    (0, state.to_vec())
}

/// A bounded reader over the body: every read is checked, trailing bytes are an error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CookieError> {
        if self.0.len() < n {
            return Err(CookieError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, CookieError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    fn u32(&mut self) -> Result<u32, CookieError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u8(&mut self) -> Result<u8, CookieError> {
        Ok(self.take(1)?[0])
    }
    fn str8(&mut self) -> Result<String, CookieError> {
        let len = usize::from(self.u8()?);
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| CookieError::Malformed)
    }
}

fn decode_body(body: &[u8], max_state: usize) -> Result<Snapshot, CookieError> {
    let mut r = Reader(body);
    let version = r.u64()?;
    let issued_at = r.u64()?;
    let expires_at = r.u64()?;
    let flags = r.u8()?;
    let session = r.str8()?;
    let owner = Owner { name: r.str8()?, uid: r.str8()?, addr: r.str8()? };
    let len = r.u32()? as usize;
    let stored = r.take(len)?;
    if !r.0.is_empty() || flags & !FLAG_DEFLATED != 0 {
        return Err(CookieError::Malformed);
    }
    let state = if flags & FLAG_DEFLATED != 0 {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(stored)
            .take(max_state as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| CookieError::Malformed)?;
        if out.len() > max_state {
            return Err(CookieError::OverBudget);
        }
        out
    } else if stored.len() > max_state {
        return Err(CookieError::OverBudget);
    } else {
        stored.to_vec()
    };
    Ok(Snapshot { session, owner, version, issued_at, expires_at, state })
}

/// How cookie values are split over browser-sized cookies.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Most bytes of value in one cookie (browsers keep 4096 per cookie, name and value).
    pub chunk_bytes: usize,
    /// Most bytes of value over all chunks.
    pub total_bytes: usize,
}

impl Budget {
    /// Chunks sized for `name` under the 4096-byte browser limit, within `total_bytes`.
    pub fn for_cookie(name: &str, total_bytes: usize) -> Budget {
        // Leave room for the name, `=`, the chunk suffix and the count prefix.
        Budget { chunk_bytes: 4000usize.saturating_sub(name.len()), total_bytes }
    }

    fn max_chunks(&self) -> usize {
        self.total_bytes.div_ceil(self.chunk_bytes.max(1)).max(1)
    }
}

/// The name of chunk `index` of cookie `name`: chunk 0 is `name` itself, then `name.1`, `name.2`...
pub fn chunk_name(name: &str, index: usize) -> String {
    if index == 0 { name.to_owned() } else { format!("{name}.{index}") }
}

/// Splits a sealed value into `(cookie name, cookie value)` pairs, or refuses it as over budget.
/// A value split in `n > 1` chunks starts with `n.` (base64url never holds a dot).
pub fn split(name: &str, value: &str, budget: Budget) -> Result<Vec<(String, String)>, CookieError> {
    if value.len() > budget.total_bytes {
        return Err(CookieError::OverBudget);
    }
    if value.len() <= budget.chunk_bytes {
        return Ok(vec![(name.to_owned(), value.to_owned())]);
    }
    let parts: Vec<&str> = value
        .as_bytes()
        .chunks(budget.chunk_bytes)
        // base64url is ASCII, so every byte boundary is a char boundary.
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let count = parts.len();
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let value = if i == 0 { format!("{count}.{part}") } else { part.to_owned() };
            (chunk_name(name, i), value)
        })
        .collect())
}

/// Joins the chunks of cookie `name` found by `lookup` back into one sealed value. `Ok(None)` when
/// there is no such cookie.
pub fn join<'a>(
    name: &str,
    budget: Budget,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<String>, CookieError> {
    let Some(first) = lookup(name) else {
        return Ok(None);
    };
    let Some((count, head)) = first.split_once('.') else {
        return Ok(Some(first.to_owned()));
    };
    let count: usize = count.parse().map_err(|_| CookieError::Garbage)?;
    if count < 2 || count > budget.max_chunks() {
        return Err(CookieError::OverBudget);
    }
    let mut value = head.to_owned();
    for i in 1..count {
        value.push_str(lookup(&chunk_name(name, i)).ok_or(CookieError::MissingChunk(i))?);
        if value.len() > budget.total_bytes + count {
            return Err(CookieError::OverBudget);
        }
    }
    Ok(Some(value))
}

/// The chunk indices of cookie `name` among the cookie names a request carries: what the
/// client holds, so a smaller new value can delete the chunks it no longer needs. Derived from
/// the names actually present (never from a count the client claims), so the work and the
/// Set-Cookie lines it leads to are bounded by the request's own size.
pub fn held_chunks<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let mut held: Vec<usize> = names.filter_map(|n| chunk_index(name, n)).collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// `Some(i)` when `cookie_name` is chunk `i` of cookie `name` (`name` itself is chunk 0).
pub fn chunk_index(name: &str, cookie_name: &str) -> Option<usize> {
    if cookie_name == name {
        return Some(0);
    }
    let digits = cookie_name.strip_prefix(name)?.strip_prefix('.')?;
    // At most 4 digits: no budget has more than a few dozen chunks, and a longer number is not
    // ours to parse.
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// All `name=value` pairs of the values of a request's `Cookie` headers, in order (RFC 6265 §5.4:
/// pairs separated by `;`; HTTP/2 may split them over several header fields).
pub fn request_pairs<'a>(values: impl Iterator<Item = &'a str>) -> Vec<(&'a str, &'a str)> {
    values
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(n, v)| (n.trim(), v.trim()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Format 2: a routing cookie apart from the state chunks.
//
// A session's cookies are a small **routing cookie** (`<name>`: session id, owner, version,
// expiry, and how many state chunks of how many bytes go with that version) and the **state
// chunks** (`<name>.0`, `<name>.1`, …: the app's state at that version). They are apart so that a
// client that drops large cookies (curl sends at most ~8 KB of them) is still routed to the
// session's live owner and never silently starts a new session, and so that routing a request
// opens ~150 bytes: the state is opened only to restore it.
//
// Both values: header (9 bytes: format 2 | key id | pool tag), nonce (24), sealed body + tag, with
// associated data = header || kind || pool name, so a state value never opens as a route.
//
// route body  version u64 | issued-at u64 | expires-at u64 | session str8 | owner name str8 |
//             owner uid str8 | owner addr str8 | chunks u16 | state bytes u32 | carry u32
// state body  version u64 | flags u8 | session str8 | state (the rest; deflated when flag bit 0)
// ---------------------------------------------------------------------------------------------

/// The format of routing cookies and state chunks.
pub const FORMAT_V2: u8 = 2;
const KIND_ROUTE: u8 = b'r';
const KIND_STATE: u8 = b's';

/// A routing cookie, opened: where the session lives and which state goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub session: String,
    pub owner: Owner,
    /// Grows with every state sealed for this session; never reused (see `decide::seal`).
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the cookie is refused from then on.
    pub expires_at: u64,
    /// How many state chunks (`<name>.0` …) hold this version's state; 0 when it has none in the
    /// client (empty, or over the header budget).
    pub chunks: u16,
    /// The length of the joined state value, so a truncated chunk is seen, not guessed.
    pub state_bytes: u32,
    /// The most cookie bytes this client proved it carries when it once dropped some (0: no limit
    /// seen): the sidecar never again sends it more (`decide::seal`).
    pub carry: u32,
}

fn seal_v2(kind: u8, body: &[u8], pool: &str, ring: &KeyRing) -> String {
    let key = ring.current();
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT_V2;
    header[1..5].copy_from_slice(&key.id.to_be_bytes());
    header[5..9].copy_from_slice(&pool_tag(pool).to_be_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    crate::random::fill(&mut nonce);
    let ad = associated_data_v2(&header, kind, pool);
    // Encryption with a valid key and in-memory buffers cannot fail.
    let sealed = key.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: body, aad: &ad }).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

fn associated_data_v2(header: &[u8], kind: u8, pool: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(header.len() + 1 + pool.len());
    ad.extend_from_slice(header);
    ad.push(kind);
    ad.extend_from_slice(pool.as_bytes());
    ad
}

fn open_v2(kind: u8, value: &str, pool: &str, ring: &KeyRing) -> Result<Vec<u8>, CookieError> {
    let raw = URL_SAFE_NO_PAD.decode(value.trim()).map_err(|_| CookieError::Garbage)?;
    if raw.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(CookieError::Garbage);
    }
    let (header, rest) = raw.split_at(HEADER_LEN);
    if header[0] != FORMAT_V2 {
        return Err(CookieError::UnsupportedVersion(header[0]));
    }
    let key_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let tag = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let key = ring.get(key_id).ok_or(CookieError::UnknownKey(key_id))?;
    if tag != pool_tag(pool) {
        return Err(CookieError::WrongPool);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let ad = associated_data_v2(header, kind, pool);
    key.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &ad }).map_err(|_| CookieError::Tampered)
}

/// Seals a routing cookie for `pool` with the ring's current key.
pub fn seal_route(route: &Route, pool: &str, ring: &KeyRing) -> String {
    let mut body = Vec::with_capacity(64 + route.session.len() + route.owner.name.len() + route.owner.uid.len());
    body.extend_from_slice(&route.version.to_be_bytes());
    body.extend_from_slice(&route.issued_at.to_be_bytes());
    body.extend_from_slice(&route.expires_at.to_be_bytes());
    put_str8(&mut body, &route.session);
    put_str8(&mut body, &route.owner.name);
    put_str8(&mut body, &route.owner.uid);
    put_str8(&mut body, &route.owner.addr);
    body.extend_from_slice(&route.chunks.to_be_bytes());
    body.extend_from_slice(&route.state_bytes.to_be_bytes());
    body.extend_from_slice(&route.carry.to_be_bytes());
    seal_v2(KIND_ROUTE, &body, pool, ring)
}

/// Opens a routing cookie sealed for `pool`; `now` is unix seconds.
pub fn open_route(value: &str, pool: &str, ring: &KeyRing, now: u64) -> Result<Route, CookieError> {
    let body = open_v2(KIND_ROUTE, value, pool, ring)?;
    let mut r = Reader(&body);
    let version = r.u64()?;
    let issued_at = r.u64()?;
    let expires_at = r.u64()?;
    let session = r.str8()?;
    let owner = Owner { name: r.str8()?, uid: r.str8()?, addr: r.str8()? };
    let chunks = r.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    let state_bytes = r.u32()?;
    let carry = r.u32()?;
    if !r.0.is_empty() {
        return Err(CookieError::Malformed);
    }
    if expires_at <= now {
        return Err(CookieError::Expired);
    }
    Ok(Route { session, owner, version, issued_at, expires_at, chunks, state_bytes, carry })
}

/// Seals the state of `session` at `version` (deflated when that makes it smaller).
pub fn seal_state(session: &str, version: u64, state: &[u8], pool: &str, ring: &KeyRing) -> String {
    let (flags, stored) = compress(state);
    let mut body = Vec::with_capacity(16 + session.len() + stored.len());
    body.extend_from_slice(&version.to_be_bytes());
    body.push(flags);
    put_str8(&mut body, session);
    body.extend_from_slice(&stored);
    seal_v2(KIND_STATE, &body, pool, ring)
}

/// Opens a joined state value and checks it is the state of `route`'s session and version (a
/// chunk set of an older response that overtook a newer one is refused as [`CookieError::Stale`]).
/// The decompressed state is at most `max_state` bytes.
pub fn open_state(value: &str, route: &Route, pool: &str, ring: &KeyRing, max_state: usize) -> Result<Vec<u8>, CookieError> {
    let body = open_v2(KIND_STATE, value, pool, ring)?;
    let mut r = Reader(&body);
    let version = r.u64()?;
    let flags = r.u8()?;
    let session = r.str8()?;
    if flags & !FLAG_DEFLATED != 0 {
        return Err(CookieError::Malformed);
    }
    if session != route.session || version != route.version {
        return Err(CookieError::Stale);
    }
    inflate_within(flags, r.0, max_state.min(MAX_STATE_BYTES))
}

fn inflate_within(flags: u8, stored: &[u8], max_state: usize) -> Result<Vec<u8>, CookieError> {
    if flags & FLAG_DEFLATED == 0 {
        return if stored.len() > max_state { Err(CookieError::OverBudget) } else { Ok(stored.to_vec()) };
    }
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(stored)
        .take(max_state as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| CookieError::Malformed)?;
    if out.len() > max_state { Err(CookieError::OverBudget) } else { Ok(out) }
}

/// The name of state chunk `index` of the session cookie `name`: `name.0`, `name.1`, …
pub fn state_chunk_name(name: &str, index: usize) -> String {
    format!("{name}.{index}")
}

/// Splits a sealed state value into `(cookie name, value)` chunks of at most `chunk_bytes`.
pub fn split_state(name: &str, value: &str, chunk_bytes: usize) -> Vec<(String, String)> {
    value
        .as_bytes()
        .chunks(chunk_bytes.max(1))
        .enumerate()
        // base64url is ASCII, so every byte boundary is a char boundary.
        .map(|(i, c)| (state_chunk_name(name, i), std::str::from_utf8(c).unwrap_or_default().to_owned()))
        .collect()
}

/// Joins the state chunks `route` names, found by `lookup`. A missing chunk, or chunks whose
/// length is not the one the route sealed, is [`CookieError::MissingChunk`] /
/// [`CookieError::Stale`]: the client did not carry the whole state.
pub fn join_state<'a>(name: &str, route: &Route, lookup: impl Fn(&str) -> Option<&'a str>) -> Result<String, CookieError> {
    let want = route.state_bytes as usize;
    let mut value = String::with_capacity(want.min(MAX_STATE_BYTES));
    for i in 0..usize::from(route.chunks) {
        let chunk = lookup(&state_chunk_name(name, i)).ok_or(CookieError::MissingChunk(i))?;
        if value.len() + chunk.len() > want {
            return Err(CookieError::Stale);
        }
        value.push_str(chunk);
    }
    if value.len() != want {
        return Err(CookieError::Stale);
    }
    Ok(value)
}

/// The state chunk indices of cookie `name` among the cookie names a request carries (`name.0`,
/// `name.1`, …): what the client holds, so a response can delete the ones it no longer needs.
/// From the names present, never a count the client claims: bounded by the request's own size.
pub fn held_state_chunks<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let mut held: Vec<usize> = names.filter_map(|n| state_chunk_index(name, n)).collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// `Some(i)` when `cookie_name` is state chunk `i` of cookie `name`.
pub fn state_chunk_index(name: &str, cookie_name: &str) -> Option<usize> {
    let digits = cookie_name.strip_prefix(name)?.strip_prefix('.')?;
    // At most 4 digits: no budget has more than a few dozen chunks.
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyRing, generate_line};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ring(ids: &[u32]) -> KeyRing {
        let text: Vec<String> = ids.iter().map(|id| generate_line(*id, 0)).collect();
        KeyRing::parse(&text.join("\n")).expect("valid ring")
    }

    fn snapshot(state: Vec<u8>) -> Snapshot {
        Snapshot {
            session: "s-1".into(),
            owner: Owner { name: "pod-a".into(), uid: "uid-a".into(), addr: "10.0.0.1:8000".into() },
            version: 42,
            issued_at: 1_000,
            expires_at: 2_000,
            state,
        }
    }

    #[test]
    fn round_trips_and_binds_to_the_pool() {
        let keys = ring(&[1]);
        let s = snapshot(b"cart=3".to_vec());
        let value = seal(&s, "shop/cart", &keys);
        assert_eq!(open(&value, "shop/cart", &keys, 1_500), Ok(s));
        assert_eq!(open(&value, "shop/other", &keys, 1_500), Err(CookieError::WrongPool));
    }

    #[test]
    fn refuses_expired_garbage_and_unknown_keys() {
        let keys = ring(&[1]);
        let value = seal(&snapshot(vec![]), "p", &keys);
        assert_eq!(open(&value, "p", &keys, 2_000), Err(CookieError::Expired));
        assert_eq!(open("%%%", "p", &keys, 0), Err(CookieError::Garbage));
        assert_eq!(open("AAAA", "p", &keys, 0), Err(CookieError::Garbage));
        assert_eq!(open(&value, "p", &ring(&[2]), 0), Err(CookieError::UnknownKey(1)));
        // Truncated: drop the last characters (the tag).
        let cut = (value.len() - 8) / 4 * 4;
        assert_eq!(open(&value[..cut], "p", &keys, 0), Err(CookieError::Tampered));
        let mut raw = URL_SAFE_NO_PAD.decode(&value).expect("base64");
        raw[0] = 9;
        assert_eq!(open(&URL_SAFE_NO_PAD.encode(&raw), "p", &keys, 0), Err(CookieError::UnsupportedVersion(9)));
    }

    #[test]
    fn a_rotated_ring_still_opens_cookies_of_the_previous_key() {
        let (key1, key2) = (generate_line(1, 0), generate_line(2, 0));
        let before = KeyRing::parse(&key1).expect("valid");
        let after = KeyRing::parse(&format!("{key2}\n{key1}")).expect("valid");
        let only_new = KeyRing::parse(&key2).expect("valid");
        let value = seal(&snapshot(b"x".to_vec()), "p", &before);
        assert!(open(&value, "p", &after, 0).is_ok());
        assert_eq!(open(&value, "p", &only_new, 0), Err(CookieError::UnknownKey(1)));
        let resealed = seal(&snapshot(b"x".to_vec()), "p", &after);
        assert!(open(&resealed, "p", &only_new, 0).is_ok(), "new cookies use the new key");
    }

    #[test]
    fn large_states_are_compressed_and_split() {
        let keys = ring(&[1]);
        let state: Vec<u8> = (0..20_000u32).flat_map(|i| (i % 97).to_be_bytes()).collect();
        let value = seal(&snapshot(state.clone()), "p", &keys);
        assert!(value.len() < state.len(), "a repetitive state must shrink");
        let budget = Budget { chunk_bytes: 1000, total_bytes: 64_000 };
        let chunks = split("handover", &value, budget).expect("within budget");
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|(_, v)| v.len() <= 1000 + 4));
        let jar: HashMap<String, String> = chunks.into_iter().collect();
        let joined = join("handover", budget, |n| jar.get(n).map(String::as_str)).expect("joins");
        assert_eq!(joined.as_deref(), Some(value.as_str()));
        assert_eq!(open(&value, "p", &keys, 0).map(|s| s.state), Ok(state));
    }

    #[test]
    fn a_missing_chunk_or_an_over_budget_value_is_refused() {
        let budget = Budget { chunk_bytes: 10, total_bytes: 25 };
        assert_eq!(split("c", &"a".repeat(26), budget), Err(CookieError::OverBudget));
        let chunks = split("c", &"a".repeat(25), budget).expect("fits");
        assert_eq!(chunks.len(), 3);
        let mut jar: HashMap<String, String> = chunks.into_iter().collect();
        jar.remove("c.2");
        assert_eq!(join("c", budget, |n| jar.get(n).map(String::as_str)), Err(CookieError::MissingChunk(2)));
        let forged = HashMap::from([("c".to_owned(), "999.aaa".to_owned())]);
        assert_eq!(join("c", budget, |n| forged.get(n).map(String::as_str)), Err(CookieError::OverBudget));
        assert_eq!(join("c", budget, |_| None), Ok(None));
    }

    #[test]
    fn held_chunks_come_from_the_names_present_never_from_a_claimed_count() {
        let names = ["handover", "handover.2", "other", "handover.1", "handover.2", "handover.99999999", "handover.x"];
        assert_eq!(held_chunks("handover", names.into_iter()), vec![0, 1, 2]);
        assert_eq!(chunk_index("handover", "handover.0003"), Some(3));
        assert_eq!(chunk_index("handover", "handover."), None);
        assert_eq!(chunk_index("handover", "handoverx"), None);
        // A forged count in the first chunk's value claims nothing here.
        let pairs = request_pairs(["handover=18446744073709551615.x"].into_iter());
        assert_eq!(held_chunks("handover", pairs.iter().map(|(n, _)| *n)), vec![0]);
    }

    #[test]
    fn a_small_cookie_does_not_expand_past_the_state_bound() {
        let keys = ring(&[1]);
        let state = vec![b'a'; 100_000];
        let value = seal(&snapshot(state), "p", &keys);
        assert!(value.len() < 1_000, "a repetitive state seals small");
        assert_eq!(open_within(&value, "p", &keys, 0, 65_536), Err(CookieError::OverBudget));
        assert_eq!(open_within(&value, "p", &keys, 0, 100_000).map(|s| s.state.len()), Ok(100_000));
        let plain = seal(&snapshot(vec![7; 100]), "p", &keys);
        assert_eq!(open_within(&plain, "p", &keys, 0, 99), Err(CookieError::OverBudget));
    }

    #[test]
    fn request_pairs_read_every_cookie_header_field() {
        let pairs = request_pairs(["a=1; handover=x", "handover.1=y;b=2", "junk"].into_iter());
        assert_eq!(pairs, vec![("a", "1"), ("handover", "x"), ("handover.1", "y"), ("b", "2")]);
    }


    fn route(version: u64, chunks: u16, state_bytes: u32) -> Route {
        Route {
            session: "s-1".into(),
            owner: Owner { name: "pod-a".into(), uid: "uid-a".into(), addr: "10.0.0.1:8000".into() },
            version,
            issued_at: 1_000,
            expires_at: 2_000,
            chunks,
            state_bytes,
            carry: 0,
        }
    }

    /// Seals `state` as version `version` and returns its route and chunks, as a response sets them.
    fn sealed_v2(keys: &KeyRing, version: u64, state: &[u8], chunk_bytes: usize) -> (Route, Vec<(String, String)>) {
        let value = seal_state("s-1", version, state, "p", keys);
        let chunks = split_state("h", &value, chunk_bytes);
        (route(version, chunks.len() as u16, value.len() as u32), chunks)
    }

    #[test]
    fn a_route_round_trips_small_and_binds_to_its_pool() {
        let keys = ring(&[1]);
        let r = Route { carry: 8_000, ..route(7, 3, 9_000) };
        let value = seal_route(&r, "shop/cart", &keys);
        assert!(value.len() < 200, "a routing cookie stays small: {} bytes", value.len());
        assert_eq!(open_route(&value, "shop/cart", &keys, 1_500), Ok(r));
        assert_eq!(open_route(&value, "shop/other", &keys, 1_500), Err(CookieError::WrongPool));
        assert_eq!(open_route(&value, "shop/cart", &keys, 2_000), Err(CookieError::Expired));
    }

    #[test]
    fn a_state_value_never_opens_as_a_route_nor_a_route_as_state() {
        let keys = ring(&[1]);
        let (r, chunks) = sealed_v2(&keys, 3, b"cart", 4000);
        assert_eq!(open_route(&chunks[0].1, "p", &keys, 0), Err(CookieError::Tampered));
        let route_value = seal_route(&r, "p", &keys);
        assert_eq!(open_state(&route_value, &r, "p", &keys, 1000), Err(CookieError::Tampered));
    }

    #[test]
    fn state_chunks_join_open_and_belong_to_one_version() {
        let keys = ring(&[1]);
        // Incompressible (xorshift), so the chunk count is known.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let state: Vec<u8> = (0..6_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (r, chunks) = sealed_v2(&keys, 9, &state, 1000);
        assert!(chunks.len() > 3);
        let jar: HashMap<String, String> = chunks.iter().cloned().collect();
        let joined = join_state("h", &r, |n| jar.get(n).map(String::as_str)).expect("joins");
        assert_eq!(open_state(&joined, &r, "p", &keys, 10_000), Ok(state.clone()));
        // The chunks of version 8 (an older response that arrived last) under the route of 9.
        let (_, older) = sealed_v2(&keys, 8, &state, 1000);
        let old_jar: HashMap<String, String> = older.into_iter().collect();
        let stale = join_state("h", &r, |n| old_jar.get(n).map(String::as_str)).expect("same length, so they join");
        assert_eq!(open_state(&stale, &r, "p", &keys, 10_000), Err(CookieError::Stale));
        // A dropped chunk.
        let mut cut = jar.clone();
        cut.remove("h.2");
        assert_eq!(join_state("h", &r, |n| cut.get(n).map(String::as_str)), Err(CookieError::MissingChunk(2)));
        // A shortened one.
        let mut short = jar;
        short.insert("h.1".into(), "AAAA".into());
        assert_eq!(join_state("h", &r, |n| short.get(n).map(String::as_str)), Err(CookieError::Stale));
    }

    #[test]
    fn a_small_state_value_does_not_expand_past_the_bound() {
        let keys = ring(&[1]);
        let value = seal_state("s-1", 1, &vec![b'a'; 100_000], "p", &keys);
        assert!(value.len() < 1_000);
        let r = route(1, 1, value.len() as u32);
        assert_eq!(open_state(&value, &r, "p", &keys, 65_536), Err(CookieError::OverBudget));
        assert_eq!(open_state(&value, &r, "p", &keys, 100_000).map(|s| s.len()), Ok(100_000));
    }

    #[test]
    fn held_state_chunks_come_from_the_names_present() {
        let names = ["h", "h.2", "other", "h.0", "h.2", "h.99999999", "h.x", "h."];
        assert_eq!(held_state_chunks("h", names.into_iter()), vec![0, 2]);
        assert_eq!(state_chunk_index("h", "h.0003"), Some(3));
        assert_eq!(state_chunk_index("h", "h"), None);
    }

    proptest! {
        #[test]
        fn any_snapshot_round_trips(
            state in proptest::collection::vec(any::<u8>(), 0..3000),
            version in any::<u64>(),
            session in "[A-Za-z0-9_-]{1,40}",
            expires in 1u64..u64::MAX,
        ) {
            let keys = ring(&[5]);
            let s = Snapshot { session, version, expires_at: expires, issued_at: 0, ..snapshot(state) };
            let value = seal(&s, "ns/pool", &keys);
            prop_assert_eq!(open(&value, "ns/pool", &keys, expires - 1), Ok(s));
        }

        #[test]
        fn any_route_and_state_round_trip(
            state in proptest::collection::vec(any::<u8>(), 0..3000),
            version in any::<u64>(),
            session in "[A-Za-z0-9_-]{1,40}",
            chunk_bytes in 1usize..5000,
            carry in any::<u32>(),
        ) {
            let keys = ring(&[5]);
            let value = seal_state(&session, version, &state, "ns/pool", &keys);
            let chunks = split_state("h", &value, chunk_bytes);
            let r = Route { session, version, carry, ..route(0, chunks.len() as u16, value.len() as u32) };
            prop_assert_eq!(open_route(&seal_route(&r, "ns/pool", &keys), "ns/pool", &keys, 1_999), Ok(r.clone()));
            let jar: HashMap<String, String> = chunks.into_iter().collect();
            let joined = join_state("h", &r, |n| jar.get(n).map(String::as_str));
            prop_assert_eq!(joined.and_then(|v| open_state(&v, &r, "ns/pool", &keys, 3000)), Ok(state));
        }

        #[test]
        fn garbage_never_opens_as_a_route_or_a_state(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let keys = ring(&[1]);
            let value = URL_SAFE_NO_PAD.encode(&raw);
            prop_assert!(open_route(&value, "p", &keys, 0).is_err());
            prop_assert!(open_state(&value, &route(1, 1, 1), "p", &keys, 1000).is_err());
        }

        #[test]
        fn garbage_never_panics_and_never_opens(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let keys = ring(&[1]);
            let value = URL_SAFE_NO_PAD.encode(&raw);
            prop_assert!(open(&value, "p", &keys, 0).is_err());
            let text = String::from_utf8_lossy(&raw).into_owned();
            prop_assert!(open(&text, "p", &keys, 0).is_err());
        }

        #[test]
        fn flipping_any_bit_is_detected(index in 0usize..2000, bit in 0u8..8) {
            let keys = ring(&[1]);
            let value = seal(&snapshot(b"some state".to_vec()), "p", &keys);
            let mut raw = URL_SAFE_NO_PAD.decode(&value).expect("b64");
            let i = index % raw.len();
            raw[i] ^= 1 << bit;
            prop_assert!(open(&URL_SAFE_NO_PAD.encode(&raw), "p", &keys, 0).is_err());
        }
    }
}
