//! The session's cookies: one encoder and one decoder for each of the two kinds.
//!
//! A session's cookies are a small **routing cookie** (`<name>`: session id, owner, version,
//! expiry, and how many state chunks of how many bytes go with that version) and the **state
//! chunks** (`<name>.0`, `<name>.1`, …: the app's state at that version). They are apart so that a
//! client that drops large cookies (curl sends at most ~8 KB of them) is still routed to the
//! session's live owner and never silently starts a new session, and so that routing a request
//! opens ~150 bytes (plus a small state riding inside, below): a state in chunks is opened only to
//! restore it.
//!
//! Wire format of both values, base64url without padding:
//!
//! ```text
//! header (9 bytes)  format version u8 (3) | key id u32 BE | pool tag u32 BE
//! nonce  (24 bytes) XChaCha20-Poly1305 nonce, never the same twice under a key (`xchacha.rs`)
//! sealed            body + 16-byte tag; associated data = header || kind (b'r' | b's') || pool name
//! route body        version u64 | state version u64 | issued-at u64 | expires-at u64 | session str8 |
//!                   owner name str8 | owner uid str8 | owner addr str8 | chunks u16 | state bytes u32 |
//!                   carry u32 | created-at u64 | flags u8 (bit 0: ended; bit 1: inline state;
//!                   other bits must be 0) | inline state, when bit 1: state flags u8 |
//!                   state format str8 | state (the rest; deflated when state flag bit 0)
//! state body        version u64 | flags u8 | session str8 | state format str8 |
//!                   state (the rest; deflated when flag bit 0)
//! ```
//!
//! A small state travels **inside the routing cookie** ([`StoredState`], at most
//! `--inline-state-bytes` once stored; the route then names no chunks): one seal, one base64 value
//! and one `Set-Cookie` line fewer on every response of such a session, for ~150 more bytes opened
//! with every route. (Builds of format 3 before the inline bit, never released, refuse it.)
//!
//! `created-at` is when the session was first sealed (unix seconds), kept through every reseal
//! and id rotation: the absolute timeout counts from it. A route with the `ended` flag is a
//! **tombstone**: it has no state (chunks 0, state bytes 0, an empty state value) and a version
//! above every state of the session; it travels only as a backup (`crate::backup`), never to a
//! client, and tells a takeover that the app ended the session (or rotated it away), so an older
//! cookie of it never brings it back. The state format is the app's own token for its state's
//! format (`Handover-State-Format`; empty when the app declared none), given back to the app
//! with the state on a restore.
//!
//! The pool name is bound by the associated data, so a cookie of pool A is worthless in pool B; the
//! pool tag (FNV-1a of the pool name) only lets the decoder say "wrong pool" instead of "tampered".
//! The kind is bound too, so a state value never opens as a route. A state binds its session and
//! version: chunks an older response left behind never pass for the route's state.

use base64_simd::URL_SAFE_NO_PAD;

use std::sync::Arc;

use crate::keys::KeyRing;
use crate::xchacha::{NONCE_LEN, TAG_LEN};

/// The only format this build writes and reads. (Format 1, one cookie holding route and state
/// together, and format 2, without created-at, the ended flag and the state format, are refused
/// as `unsupported_version`: such a session starts over once.)
pub const FORMAT_VERSION: u8 = 3;
const ROUTE_FLAG_ENDED: u8 = 1;
const ROUTE_FLAG_INLINE: u8 = 2;
/// The longest state format token the app may declare (a longer one is not recorded).
pub const MAX_FORMAT_BYTES: usize = 64;
const KIND_ROUTE: u8 = b'r';
const KIND_STATE: u8 = b's';
const HEADER_LEN: usize = 9;
const FLAG_DEFLATED: u8 = 1;
/// States this large or larger are deflated when that makes them smaller.
const COMPRESS_FROM: usize = 128;
/// The stored states carried inside the routing cookie by default: a route of ~600 characters at
/// most. Past ~500 bytes, opening the larger route on every request costs about what the second
/// seal saved (ChaCha20-Poly1305 over the state's bytes, against one call's fixed cost).
pub const DEFAULT_INLINE_STATE_BYTES: u16 = 256;
/// The largest stored state carried inside a routing cookie: the route's value stays well within
/// the 4096 bytes browsers keep of one cookie (~150 bytes of route and seal, base64's 4/3).
pub const MAX_INLINE_STATE_BYTES: u16 = 2048;
/// The largest state a cookie may expand to: bounds decompression of hostile input.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// Which pod wrote a cookie: the session's owner. Its strings are shared: a pod names itself in
/// every cookie it seals and, in most it opens, reads itself back ([`open_route_by`]), without a
/// copy either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: Arc<str>,
    pub uid: Arc<str>,
    pub addr: Arc<str>,
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

/// A routing cookie, opened: where the session lives and which state goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub session: String,
    pub owner: Owner,
    /// The session's newest version: grows with every state sealed for it, in cookies or not;
    /// never reused (see `decide::seal`).
    pub version: u64,
    /// The version of the state the chunks hold: `version`, or an older one when the newest state
    /// did not fit the header budget (the route still names the newest owner and version, and the
    /// client keeps its older chunks as the copy of last resort).
    pub state_version: u64,
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
    /// Unix seconds: when the session was first sealed; the absolute timeout counts from it.
    pub created_at: u64,
    /// A tombstone: the session ended (or rotated away) at this version; it has no state.
    pub ended: bool,
    /// The state of `state_version`, carried in this cookie (then `chunks` and `state_bytes`
    /// are 0).
    pub inline: Option<StoredState>,
}

/// A state as a cookie stores it — deflated when that made it smaller, with the app's format
/// token — before it is sealed: alone as a state value ([`seal_stored_state`]), or inside the
/// routing cookie ([`Route::inline`]), where it is opened with the route and inflated only to
/// restore it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredState {
    deflated: bool,
    /// The app's own token for the state's format (empty when it declared none).
    pub format: String,
    stored: Vec<u8>,
}

impl StoredState {
    /// `state` in the app's `format` (not recorded when longer than [`MAX_FORMAT_BYTES`]),
    /// deflated when that makes it smaller.
    pub fn new(state: &[u8], format: &str) -> Self {
        Self::stored(compress(state, None), format)
    }

    /// [`StoredState::new`] for a state of `session`, deflated under the codes of the session's
    /// last state when they fit it (`deflate::deflate_smaller_for`).
    pub fn of_session(session: &str, state: &[u8], format: &str) -> Self {
        Self::stored(compress(state, Some(session)), format)
    }

    /// `state` in the app's `format`, never deflated: its sealed length is its own length, whatever
    /// repeats in it (SECURITY.md: a compressed length is an oracle on secrets in the state).
    pub fn plain(state: &[u8], format: &str) -> Self {
        Self::stored((0, state.to_vec()), format)
    }

    fn stored((flags, stored): (u8, Vec<u8>), format: &str) -> Self {
        let format = if format.len() <= MAX_FORMAT_BYTES { format } else { "" };
        StoredState { deflated: flags & FLAG_DEFLATED != 0, format: format.to_owned(), stored }
    }

    /// The bytes it adds to a cookie's body.
    pub fn sealed_len(&self) -> usize {
        2 + self.format.len() + self.stored.len()
    }

    /// The state, at most `max_state` bytes once inflated.
    pub fn open(&self, max_state: usize) -> Result<Vec<u8>, CookieError> {
        let flags = if self.deflated { FLAG_DEFLATED } else { 0 };
        inflate_within(flags, &self.stored, max_state.min(MAX_STATE_BYTES))
    }
}

fn seal_value(kind: u8, body: &[u8], pool: &str, ring: &KeyRing) -> String {
    let key = ring.current();
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT_VERSION;
    header[1..5].copy_from_slice(&key.id.to_be_bytes());
    header[5..9].copy_from_slice(&pool_tag(pool).to_be_bytes());
    let ad = associated_data(&header, kind, pool);
    // Sealed in place in the one buffer that is then encoded: header, nonce, body, tag.
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&[0; NONCE_LEN]);
    out.extend_from_slice(body);
    let (nonce, body) = out[HEADER_LEN..].split_first_chunk_mut::<NONCE_LEN>().expect("the nonce's room is there");
    let tag = key.cipher.seal_in_place(nonce, &ad, body);
    out.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode_to_string(out)
}

/// The longest pool name a ServerPool can have, `namespace/name` (63 + 1 + 253 bytes): its seals'
/// associated data stays on the stack (a longer `--pool` still works, on the heap).
const AD_ON_STACK: usize = HEADER_LEN + 1 + 63 + 1 + 253;

/// What a seal authenticates beside its body: the cookie's header, its kind and the pool's name.
fn associated_data(header: &[u8], kind: u8, pool: &str) -> smallvec::SmallVec<[u8; AD_ON_STACK]> {
    let mut ad = smallvec::SmallVec::new();
    ad.extend_from_slice(header);
    ad.push(kind);
    ad.extend_from_slice(pool.as_bytes());
    ad
}

fn open_value(kind: u8, value: &[u8], pool: &str, ring: &KeyRing) -> Result<Vec<u8>, CookieError> {
    let mut raw = URL_SAFE_NO_PAD.decode_to_vec(value.trim_ascii()).map_err(|_| CookieError::Garbage)?;
    if raw.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(CookieError::Garbage);
    }
    let header = &raw[..HEADER_LEN];
    if header[0] != FORMAT_VERSION {
        return Err(CookieError::UnsupportedVersion(header[0]));
    }
    let key_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let tag = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let key = ring.get(key_id).ok_or(CookieError::UnknownKey(key_id))?;
    if tag != pool_tag(pool) {
        return Err(CookieError::WrongPool);
    }
    let ad = associated_data(header, kind, pool);
    // Opened in place: the body ends up where it was sealed, between the nonce and the tag.
    let (nonce, sealed) = raw[HEADER_LEN..].split_first_chunk_mut::<NONCE_LEN>().ok_or(CookieError::Garbage)?;
    let (msg, tag) = sealed.split_last_chunk_mut::<TAG_LEN>().ok_or(CookieError::Garbage)?;
    key.cipher.open_in_place(nonce, &ad, msg, tag).map_err(|_| CookieError::Tampered)?;
    let body_len = msg.len();
    raw.drain(..HEADER_LEN + NONCE_LEN);
    raw.truncate(body_len);
    Ok(raw)
}

/// Seals a routing cookie for `pool` with the ring's current key.
pub fn seal_route(route: &Route, pool: &str, ring: &KeyRing) -> String {
    // The fixed fields are 55 bytes with the four strings' lengths: room for all of it, so the
    // body is never grown (a reallocation and a copy on every seal).
    let strings = route.session.len() + route.owner.name.len() + route.owner.uid.len() + route.owner.addr.len();
    debug_assert!(
        route.inline.is_none() || (route.chunks == 0 && !route.ended),
        "an inline state is a route's only state"
    );
    let inline = route.inline.as_ref().map_or(0, StoredState::sealed_len);
    let mut body = Vec::with_capacity(64 + strings + inline);
    body.extend_from_slice(&route.version.to_be_bytes());
    body.extend_from_slice(&route.state_version.to_be_bytes());
    body.extend_from_slice(&route.issued_at.to_be_bytes());
    body.extend_from_slice(&route.expires_at.to_be_bytes());
    put_str8(&mut body, &route.session);
    put_str8(&mut body, &route.owner.name);
    put_str8(&mut body, &route.owner.uid);
    put_str8(&mut body, &route.owner.addr);
    body.extend_from_slice(&route.chunks.to_be_bytes());
    body.extend_from_slice(&route.state_bytes.to_be_bytes());
    body.extend_from_slice(&route.carry.to_be_bytes());
    body.extend_from_slice(&route.created_at.to_be_bytes());
    let mut flags = if route.ended { ROUTE_FLAG_ENDED } else { 0 };
    if route.inline.is_some() {
        flags |= ROUTE_FLAG_INLINE;
    }
    body.push(flags);
    if let Some(state) = &route.inline {
        body.push(if state.deflated { FLAG_DEFLATED } else { 0 });
        put_str8(&mut body, &state.format);
        body.extend_from_slice(&state.stored);
    }
    debug_assert!(body.len() <= 64 + strings + inline, "the route body outgrew its room");
    seal_value(KIND_ROUTE, &body, pool, ring)
}

/// Opens a routing cookie sealed for `pool` (its value as text or as the request's bytes: any byte
/// that is not base64url is [`CookieError::Garbage`]); `now` is unix seconds.
pub fn open_route(value: impl AsRef<[u8]>, pool: &str, ring: &KeyRing, now: u64) -> Result<Route, CookieError> {
    open_route_by(value, pool, ring, now, None)
}

/// [`open_route`], with the owner's strings shared with `known`'s where the cookie names the same:
/// a sidecar reads most of its cookies back from its own clients.
pub fn open_route_by(
    value: impl AsRef<[u8]>,
    pool: &str,
    ring: &KeyRing,
    now: u64,
    known: Option<&Owner>,
) -> Result<Route, CookieError> {
    let body = open_value(KIND_ROUTE, value.as_ref(), pool, ring)?;
    let mut r = Reader(&body);
    let version = r.u64()?;
    let state_version = r.u64()?;
    let issued_at = r.u64()?;
    let expires_at = r.u64()?;
    let session = r.str8()?;
    let owner = Owner {
        name: r.shared_str8(known.map(|o| &o.name))?,
        uid: r.shared_str8(known.map(|o| &o.uid))?,
        addr: r.shared_str8(known.map(|o| &o.addr))?,
    };
    let chunks = r.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    let state_bytes = r.u32()?;
    let carry = r.u32()?;
    let created_at = r.u64()?;
    let flags = r.u8()?;
    if flags & !(ROUTE_FLAG_ENDED | ROUTE_FLAG_INLINE) != 0 {
        return Err(CookieError::Malformed);
    }
    let inline = if flags & ROUTE_FLAG_INLINE != 0 {
        let state_flags = r.u8()?;
        let format = r.str8()?;
        // An inline state is the route's only state, and a tombstone has none.
        if state_flags & !FLAG_DEFLATED != 0
            || format.len() > MAX_FORMAT_BYTES
            || chunks != 0
            || state_bytes != 0
            || flags & ROUTE_FLAG_ENDED != 0
        {
            return Err(CookieError::Malformed);
        }
        Some(StoredState { deflated: state_flags & FLAG_DEFLATED != 0, format, stored: r.0.to_vec() })
    } else if !r.0.is_empty() {
        return Err(CookieError::Malformed);
    } else {
        None
    };
    if expires_at <= now {
        return Err(CookieError::Expired);
    }
    Ok(Route {
        session,
        owner,
        version,
        state_version,
        issued_at,
        expires_at,
        chunks,
        state_bytes,
        carry,
        created_at,
        ended: flags & ROUTE_FLAG_ENDED != 0,
        inline,
    })
}

/// Seals the state of `session` at `version` with no declared format.
pub fn seal_state(session: &str, version: u64, state: &[u8], pool: &str, ring: &KeyRing) -> String {
    seal_state_format(session, version, state, "", pool, ring)
}

/// Seals the state of `session` at `version` in the app's declared `format` (deflated when that
/// makes it smaller). A format longer than [`MAX_FORMAT_BYTES`] is not recorded (callers check).
pub fn seal_state_format(
    session: &str,
    version: u64,
    state: &[u8],
    format: &str,
    pool: &str,
    ring: &KeyRing,
) -> String {
    seal_stored_state(session, version, &StoredState::of_session(session, state, format), pool, ring)
}

/// Seals a state already stored ([`StoredState::new`]) as the state value of `session` at
/// `version`.
pub fn seal_stored_state(session: &str, version: u64, state: &StoredState, pool: &str, ring: &KeyRing) -> String {
    let mut body = Vec::with_capacity(16 + session.len() + state.sealed_len());
    body.extend_from_slice(&version.to_be_bytes());
    body.push(if state.deflated { FLAG_DEFLATED } else { 0 });
    put_str8(&mut body, session);
    put_str8(&mut body, &state.format);
    body.extend_from_slice(&state.stored);
    seal_value(KIND_STATE, &body, pool, ring)
}

/// Opens a joined state value and checks it is the state `route` names (its session and
/// `state_version`: a chunk set an older response left behind is refused as [`CookieError::Stale`]).
/// The decompressed state is at most `max_state` bytes.
pub fn open_state(
    value: &str,
    route: &Route,
    pool: &str,
    ring: &KeyRing,
    max_state: usize,
) -> Result<Vec<u8>, CookieError> {
    open_state_format(value, route, pool, ring, max_state).map(|(state, _)| state)
}

/// The state `route` names and its format: inside the route ([`Route::inline`]), else in
/// `sealed_value` (the joined chunks, or a backup's state value) — the one place that rule is read.
pub fn open_route_state(
    route: &Route,
    sealed_value: &str,
    pool: &str,
    ring: &KeyRing,
    max_state: usize,
) -> Result<(Vec<u8>, String), CookieError> {
    match &route.inline {
        Some(stored) => Ok((stored.open(max_state)?, stored.format.clone())),
        None => open_state_format(sealed_value, route, pool, ring, max_state),
    }
}

/// [`open_state`], and the state format the app declared when it was sealed (empty: none).
pub fn open_state_format(
    value: &str,
    route: &Route,
    pool: &str,
    ring: &KeyRing,
    max_state: usize,
) -> Result<(Vec<u8>, String), CookieError> {
    let body = open_value(KIND_STATE, value.as_bytes(), pool, ring)?;
    let mut r = Reader(&body);
    let version = r.u64()?;
    let flags = r.u8()?;
    let session = r.str8()?;
    let format = r.str8()?;
    if flags & !FLAG_DEFLATED != 0 || format.len() > MAX_FORMAT_BYTES {
        return Err(CookieError::Malformed);
    }
    if session != route.session || version != route.state_version {
        return Err(CookieError::Stale);
    }
    Ok((inflate_within(flags, r.0, max_state.min(MAX_STATE_BYTES))?, format))
}

fn inflate_within(flags: u8, stored: &[u8], max_state: usize) -> Result<Vec<u8>, CookieError> {
    if flags & FLAG_DEFLATED == 0 {
        return if stored.len() > max_state { Err(CookieError::OverBudget) } else { Ok(stored.to_vec()) };
    }
    inflate(stored, max_state)
}

/// Inflates `stored` (raw deflate) to at most `max_state` bytes with this thread's inflater: how
/// every sidecar reads a deflated state.
pub(crate) fn inflate(stored: &[u8], max_state: usize) -> Result<Vec<u8>, CookieError> {
    crate::deflate::with_reused(&INFLATER, new_inflater, |inflater| inflate_bounded(inflater, stored, max_state))
}

/// Inflates `stored` (raw deflate) to at most `max_state` bytes: more is `OverBudget`, a stream
/// that does not end within `stored` is `Malformed` (every sealed state is a finished stream).
fn inflate_bounded(inflater: &mut flate2::Decompress, stored: &[u8], max_state: usize) -> Result<Vec<u8>, CookieError> {
    inflater.reset(false);
    // Room for one byte past the limit tells "over the limit" from "exactly at it". Start small
    // (states deflate ~4:1 at best in practice) and grow, so a small state costs a small buffer.
    let limit = max_state.saturating_add(1);
    let mut out = Vec::with_capacity(stored.len().saturating_mul(4).max(256).min(limit));
    loop {
        let (read_before, written_before) = (inflater.total_in(), out.len());
        let input = usize::try_from(read_before).ok().and_then(|read| stored.get(read..)).unwrap_or_default();
        let status = inflater
            .decompress_vec(input, &mut out, flate2::FlushDecompress::None)
            .map_err(|_| CookieError::Malformed)?;
        if out.len() > max_state {
            return Err(CookieError::OverBudget);
        }
        if status == flate2::Status::StreamEnd {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            // Out of room: grow within the limit (the check above caught a full limit) and go on.
            let more = out.capacity().min(limit.saturating_sub(out.capacity()));
            out.reserve_exact(more);
        } else if inflater.total_in() == read_before && out.len() == written_before {
            // Room left, input left or not, and no progress: the stream is cut short.
            return Err(CookieError::Malformed);
        }
    }
}

thread_local! {
    /// One inflater per thread: a fresh one allocates ~40 KB of tables. (The compressor's is in
    /// `crate::deflate`.)
    static INFLATER: std::cell::RefCell<Option<flate2::Decompress>> = const { std::cell::RefCell::new(None) };
}

/// The name of state chunk `index` of the session cookie `name`: `name.0`, `name.1`, …
pub fn state_chunk_name(name: &str, index: usize) -> String {
    let mut chunk_name = String::with_capacity(name.len() + 5);
    push_chunk_name(&mut chunk_name, name, index);
    chunk_name
}

/// Writes the name of state chunk `index` into `out` (without `format!`: every request names
/// its chunks).
fn push_chunk_name(out: &mut String, name: &str, index: usize) {
    out.push_str(name);
    out.push('.');
    out.push_str(itoa::Buffer::new().format(index));
}

/// Splits a sealed state value into `(cookie name, value)` chunks of at most `chunk_bytes`.
pub fn split_state<'v>(name: &str, value: &'v str, chunk_bytes: usize) -> Vec<(String, &'v str)> {
    let size = chunk_bytes.max(1);
    let mut chunks = Vec::with_capacity(value.len().div_ceil(size));
    let mut rest = value;
    while !rest.is_empty() {
        // A sealed value is base64url, ASCII: every byte boundary is a char boundary. The last
        // chunk is shorter (no split), and a value that were not ASCII would not panic here.
        let (chunk, tail) = rest.split_at_checked(size).unwrap_or((rest, ""));
        chunks.push((state_chunk_name(name, chunks.len()), chunk));
        rest = tail;
    }
    chunks
}

/// Joins the state chunks `route` names, found by `lookup`. A missing chunk, or chunks whose
/// length is not the one the route sealed, is [`CookieError::MissingChunk`] /
/// [`CookieError::Stale`]: the client did not carry the whole state.
pub fn join_state<'a>(
    name: &str,
    route: &Route,
    lookup: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<String, CookieError> {
    let want = route.state_bytes as usize;
    let mut value = String::with_capacity(want.min(MAX_STATE_BYTES));
    let mut chunk_name = String::with_capacity(name.len() + 5);
    for i in 0..usize::from(route.chunks) {
        chunk_name.clear();
        push_chunk_name(&mut chunk_name, name, i);
        let chunk = lookup(&chunk_name).ok_or(CookieError::MissingChunk(i))?;
        // Not text: not a chunk this sidecar set (a sealed value is base64url).
        let chunk = std::str::from_utf8(chunk).map_err(|_| CookieError::Stale)?;
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
pub fn held_state_chunks<'a>(name: &str, names: impl Iterator<Item = &'a [u8]>) -> Vec<usize> {
    let mut held: Vec<usize> = names.filter_map(|n| state_chunk_index(name, n)).collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// Whether `cookie_name` (as the request carries it: bytes, see [`request_pairs`]) is one of the
/// session cookies of `name`: the route or a state chunk.
pub fn is_session_cookie(name: &str, cookie_name: &[u8]) -> bool {
    cookie_name == name.as_bytes() || state_chunk_index(name, cookie_name).is_some()
}

/// `Some(i)` when `cookie_name` is state chunk `i` of cookie `name`.
pub fn state_chunk_index(name: &str, cookie_name: &[u8]) -> Option<usize> {
    let digits = cookie_name.strip_prefix(name.as_bytes())?.strip_prefix(b".")?;
    // At most 4 digits: no budget has more than a few dozen chunks.
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Every string we write is bounded well below 256 bytes by the callers; clamp to stay
    // decodable even if one is not.
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn compress(state: &[u8], session: Option<&str>) -> (u8, Vec<u8>) {
    if state.len() < COMPRESS_FROM {
        return (0, state.to_vec());
    }
    let deflated = match session {
        Some(session) => crate::deflate::deflate_smaller_for(session, state),
        None => crate::deflate::deflate_smaller(state),
    };
    if let Some(deflated) = deflated {
        return (FLAG_DEFLATED, deflated);
    }
    (0, state.to_vec())
}

fn new_inflater() -> flate2::Decompress {
    flate2::Decompress::new(false)
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
    /// A string shared with `known` when it is the same, else a new one.
    fn shared_str8(&mut self, known: Option<&Arc<str>>) -> Result<Arc<str>, CookieError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        match known {
            Some(k) if k.as_bytes() == bytes => Ok(Arc::clone(k)),
            _ => std::str::from_utf8(bytes).map(Arc::from).map_err(|_| CookieError::Malformed),
        }
    }
}

/// A `name=value` pair of a request's `Cookie` fields, as bytes. Browsers send a site's cookies
/// as they were set, UTF-8 or any other byte but controls, all in one field: read as `&str`, a
/// field with one such cookie would be refused whole, and the session cookies beside it with it.
pub type CookiePair<'a> = (&'a [u8], &'a [u8]);

/// All `name=value` pairs of the values of a request's `Cookie` headers, in order (RFC 6265 §5.4:
/// pairs separated by `;`; HTTP/2 may split them over several header fields).
pub fn request_pairs<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Vec<CookiePair<'a>> {
    let mut pairs = Vec::new();
    for field in fields {
        let mut start = 0;
        for end in memchr::memchr_iter(b';', field).chain([field.len()]) {
            pairs.extend(split_pair(&field[start..end]));
            start = end + 1;
        }
    }
    pairs
}

/// One `;`-separated part of a field: `name=value`, or a nameless cookie's value alone (RFC
/// 6265bis §5.7: browsers send a cookie set without `=` as its value only); `None` when empty.
fn split_pair(pair: &[u8]) -> Option<CookiePair<'_>> {
    match memchr::memchr(b'=', pair) {
        Some(eq) => Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii())),
        None => Some((&pair[..0], pair.trim_ascii())).filter(|(_, value)| !value.is_empty()),
    }
}

/// The value of cookie `name` among `pairs`, as the request carries it (bytes: what opens it
/// decodes base64url, which refuses any other byte, so no UTF-8 check is spent on it first).
pub fn lookup<'a>(pairs: &[CookiePair<'a>], name: &str) -> Option<&'a [u8]> {
    pairs.iter().find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| *v)
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

    #[test]
    fn refuses_garbage_other_formats_and_unknown_keys() {
        let keys = ring(&[1]);
        let value = seal_route(&route(1, 0, 0), "p", &keys);
        assert_eq!(open_route("%%%", "p", &keys, 0), Err(CookieError::Garbage));
        assert_eq!(open_route("AAAA", "p", &keys, 0), Err(CookieError::Garbage));
        assert_eq!(open_route(&value, "p", &ring(&[2]), 0), Err(CookieError::UnknownKey(1)));
        // Truncated: drop the last characters (the tag).
        let cut = (value.len() - 8) / 4 * 4;
        assert_eq!(open_route(&value[..cut], "p", &keys, 0), Err(CookieError::Tampered));
        let mut raw = URL_SAFE_NO_PAD.decode_to_vec(&value).expect("base64");
        raw[0] = 2;
        assert_eq!(
            open_route(URL_SAFE_NO_PAD.encode_to_string(&raw), "p", &keys, 0),
            Err(CookieError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn a_rotated_ring_still_opens_cookies_of_the_previous_key() {
        let (key1, key2) = (generate_line(1, 0), generate_line(2, 0));
        let before = KeyRing::parse(&key1).expect("valid");
        let after = KeyRing::parse(&format!("{key2}\n{key1}")).expect("valid");
        let only_new = KeyRing::parse(&key2).expect("valid");
        let value = seal_route(&route(1, 0, 0), "p", &before);
        assert!(open_route(&value, "p", &after, 0).is_ok());
        assert_eq!(open_route(&value, "p", &only_new, 0), Err(CookieError::UnknownKey(1)));
        let resealed = seal_route(&route(1, 0, 0), "p", &after);
        assert!(open_route(&resealed, "p", &only_new, 0).is_ok(), "new cookies use the new key");
    }

    #[test]
    fn a_repetitive_state_is_compressed() {
        let keys = ring(&[1]);
        let state: Vec<u8> = (0..20_000u32).flat_map(|i| (i % 97).to_be_bytes()).collect();
        let value = seal_state("s-1", 1, &state, "p", &keys);
        assert!(value.len() < state.len() / 4, "a repetitive state must shrink");
        let r = route(1, 1, value.len() as u32);
        assert_eq!(open_state(&value, &r, "p", &keys, 100_000), Ok(state));
    }

    #[test]
    fn request_pairs_read_every_cookie_header_field() {
        let fields = ["a=1; handover=x", "handover.1=y;b=2", "nameless; ;"];
        let pairs = request_pairs(fields.map(str::as_bytes).into_iter());
        let want: Vec<CookiePair> =
            vec![(b"a", b"1"), (b"handover", b"x"), (b"handover.1", b"y"), (b"b", b"2"), (b"", b"nameless")];
        assert_eq!(pairs, want);
    }

    #[test]
    fn a_field_with_a_cookie_in_utf8_or_latin1_still_yields_every_pair() {
        let utf8_and_latin1 = [
            (&b"lang=Fran\xc3\xa7ais; handover=x; b=2"[..], &b"Fran\xc3\xa7ais"[..]),
            (&b"lang=Fran\xe7ais; handover=x; b=2"[..], &b"Fran\xe7ais"[..]),
        ];
        for (field, lang) in utf8_and_latin1 {
            let pairs = request_pairs([field].into_iter());
            assert_eq!(pairs.len(), 3, "{pairs:?}");
            assert_eq!(lookup(&pairs, "handover"), Some(&b"x"[..]));
            assert_eq!(lookup(&pairs, "b"), Some(&b"2"[..]));
            // Values come as sent, text or not: what opens them refuses what it cannot read.
            assert_eq!(lookup(&pairs, "lang"), Some(lang));
        }
        assert_eq!(open_route(b"\xe7AAA", "p", &ring(&[1]), 0), Err(CookieError::Garbage));
    }

    #[test]
    fn a_route_naming_the_known_owner_shares_its_strings_and_any_other_gets_its_own() {
        let keys = ring(&[1]);
        let sealed = seal_route(&route(3, 0, 0), "p", &keys);
        let me = route(0, 0, 0).owner;
        let mine = open_route_by(&sealed, "p", &keys, 1_500, Some(&me)).expect("opens");
        assert_eq!(mine, open_route(&sealed, "p", &keys, 1_500).expect("opens"), "the same route either way");
        assert!(Arc::ptr_eq(&mine.owner.name, &me.name) && Arc::ptr_eq(&mine.owner.addr, &me.addr));
        let other = Owner { uid: "uid-b".into(), ..me.clone() };
        let theirs = open_route_by(&sealed, "p", &keys, 1_500, Some(&other)).expect("opens");
        assert_eq!(&*theirs.owner.uid, "uid-a", "the cookie's own uid, not the known one");
        assert!(Arc::ptr_eq(&theirs.owner.name, &other.name) && !Arc::ptr_eq(&theirs.owner.uid, &other.uid));
    }

    fn route(version: u64, chunks: u16, state_bytes: u32) -> Route {
        Route {
            session: "s-1".into(),
            owner: Owner { name: "pod-a".into(), uid: "uid-a".into(), addr: "10.0.0.1:8000".into() },
            version,
            state_version: version,
            issued_at: 1_000,
            expires_at: 2_000,
            chunks,
            state_bytes,
            carry: 0,
            created_at: 900,
            ended: false,
            inline: None,
        }
    }

    /// Seals `state` as version `version` and returns its route and chunks, as a response sets them.
    fn sealed_v2(keys: &KeyRing, version: u64, state: &[u8], chunk_bytes: usize) -> (Route, Vec<(String, String)>) {
        let value = seal_state("s-1", version, state, "p", keys);
        let chunks: Vec<(String, String)> =
            split_state("h", &value, chunk_bytes).into_iter().map(|(n, v)| (n, v.to_owned())).collect();
        (route(version, chunks.len() as u16, value.len() as u32), chunks)
    }

    #[test]
    fn a_route_round_trips_small_and_binds_to_its_pool() {
        let keys = ring(&[1]);
        let r = Route { carry: 8_000, created_at: 123, ..route(7, 3, 9_000) };
        let value = seal_route(&r, "shop/cart", &keys);
        assert!(value.len() < 200, "a routing cookie stays small: {} bytes", value.len());
        assert_eq!(open_route(&value, "shop/cart", &keys, 1_500), Ok(r));
        assert_eq!(open_route(&value, "shop/other", &keys, 1_500), Err(CookieError::WrongPool));
        assert_eq!(open_route(&value, "shop/cart", &keys, 2_000), Err(CookieError::Expired));
    }

    #[test]
    fn a_tombstone_route_round_trips_and_unknown_route_flags_are_refused() {
        let keys = ring(&[1]);
        let tombstone = Route { ended: true, ..route(8, 0, 0) };
        assert_eq!(open_route(seal_route(&tombstone, "p", &keys), "p", &keys, 0), Ok(tombstone.clone()));
        // The flags byte is the last of the body: a foreign encoder's unknown bit is malformed.
        let mut body = Vec::new();
        body.extend_from_slice(&[0u8; 32]);
        for s in ["s-1", "pod", "uid", "addr"] {
            put_str8(&mut body, s);
        }
        body.extend_from_slice(&[0u8; 2 + 4 + 4 + 8]);
        body.push(ROUTE_FLAG_ENDED);
        let with_ended = seal_value(KIND_ROUTE, &body, "p", &keys);
        assert_eq!(open_route(&with_ended, "p", &keys, 0).map(|r| r.ended), Err(CookieError::Expired), "expiry 0");
        *body.last_mut().expect("flags") = 4;
        assert_eq!(open_route(seal_value(KIND_ROUTE, &body, "p", &keys), "p", &keys, 0), Err(CookieError::Malformed));
        // The inline bit without the inline state after it.
        *body.last_mut().expect("flags") = ROUTE_FLAG_INLINE;
        assert_eq!(open_route(seal_value(KIND_ROUTE, &body, "p", &keys), "p", &keys, 0), Err(CookieError::Malformed));
    }

    #[test]
    fn an_inline_state_round_trips_in_the_route_and_opens_within_the_limit() {
        let keys = ring(&[1]);
        let small = Route { inline: Some(StoredState::new(b"{\"n\":7}", "cart-v2")), ..route(9, 0, 0) };
        let value = seal_route(&small, "p", &keys);
        let opened = open_route(&value, "p", &keys, 1_500).expect("opens");
        assert_eq!(opened, small);
        let inline = opened.inline.expect("inline");
        assert_eq!((inline.open(100), inline.format.as_str()), (Ok(b"{\"n\":7}".to_vec()), "cart-v2"));
        assert_eq!(inline.open(3), Err(CookieError::OverBudget));
        // A state with repeats is deflated inside the route too, and bounded when inflated.
        let repeats = vec![b'a'; 4_000];
        let deflated = StoredState::new(&repeats, "");
        assert!(deflated.sealed_len() < 100, "deflated: {} bytes", deflated.sealed_len());
        let opened =
            open_route(seal_route(&Route { inline: Some(deflated), ..route(9, 0, 0) }, "p", &keys), "p", &keys, 0)
                .map(|r| r.inline.map(|i| (i.open(4_000), i.open(3_999))));
        assert_eq!(opened, Ok(Some((Ok(repeats), Err(CookieError::OverBudget)))));
        // Refused: an inline state beside chunks, in a tombstone, with an unknown state flag.
        let foreign = |chunks: u16, flags: u8, state_flags: u8| {
            let mut body = Vec::new();
            body.extend_from_slice(&[0u8; 24]);
            body.extend_from_slice(&u64::MAX.to_be_bytes());
            for s in ["s-1", "pod", "uid", "addr"] {
                put_str8(&mut body, s);
            }
            body.extend_from_slice(&chunks.to_be_bytes());
            body.extend_from_slice(&[0u8; 4 + 4 + 8]);
            body.extend_from_slice(&[flags, state_flags]);
            put_str8(&mut body, "");
            body.extend_from_slice(b"state");
            open_route(seal_value(KIND_ROUTE, &body, "p", &keys), "p", &keys, 0).map(|r| r.inline.map(|i| i.open(10)))
        };
        assert_eq!(foreign(0, ROUTE_FLAG_INLINE, 0), Ok(Some(Ok(b"state".to_vec()))), "the body written here opens");
        assert_eq!(foreign(1, ROUTE_FLAG_INLINE, 0), Err(CookieError::Malformed), "beside chunks");
        assert_eq!(foreign(0, ROUTE_FLAG_INLINE | ROUTE_FLAG_ENDED, 0), Err(CookieError::Malformed), "a tombstone");
        assert_eq!(foreign(0, ROUTE_FLAG_INLINE, 2), Err(CookieError::Malformed), "an unknown state flag");
    }

    #[test]
    fn a_state_keeps_the_format_the_app_declared() {
        let keys = ring(&[1]);
        let value = seal_state_format("s-1", 3, b"cart", "cart-v2", "p", &keys);
        let r = route(3, 1, value.len() as u32);
        assert_eq!(open_state_format(&value, &r, "p", &keys, 100), Ok((b"cart".to_vec(), "cart-v2".to_owned())));
        assert_eq!(open_state(&value, &r, "p", &keys, 100), Ok(b"cart".to_vec()));
        let none = seal_state("s-1", 3, b"cart", "p", &keys);
        assert_eq!(open_state_format(&none, &r, "p", &keys, 100).map(|(_, f)| f), Ok(String::new()));
        // Longer than the bound: not recorded rather than cut.
        let long = seal_state_format("s-1", 3, b"cart", &"v".repeat(MAX_FORMAT_BYTES + 1), "p", &keys);
        assert_eq!(open_state_format(&long, &r, "p", &keys, 100).map(|(_, f)| f), Ok(String::new()));
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
        let joined = join_state("h", &r, |n| jar.get(n).map(String::as_bytes)).expect("joins");
        assert_eq!(open_state(&joined, &r, "p", &keys, 10_000), Ok(state.clone()));
        // The chunks of version 8 (an older response that arrived last) under the route of 9.
        let (_, older) = sealed_v2(&keys, 8, &state, 1000);
        let old_jar: HashMap<String, String> = older.into_iter().collect();
        let stale = join_state("h", &r, |n| old_jar.get(n).map(String::as_bytes)).expect("same length, so they join");
        assert_eq!(open_state(&stale, &r, "p", &keys, 10_000), Err(CookieError::Stale));
        // A dropped chunk.
        let mut cut = jar.clone();
        cut.remove("h.2");
        assert_eq!(join_state("h", &r, |n| cut.get(n).map(String::as_bytes)), Err(CookieError::MissingChunk(2)));
        // A chunk of the right length that is not text (not one this sidecar set).
        let mut latin1: HashMap<String, Vec<u8>> =
            jar.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect();
        let len = latin1["h.1"].len();
        latin1.insert("h.1".into(), [&b"\xe7"[..], &vec![b'A'; len - 1]].concat());
        assert_eq!(join_state("h", &r, |n| latin1.get(n).map(Vec::as_slice)), Err(CookieError::Stale));
        // A shortened one.
        let mut short = jar;
        short.insert("h.1".into(), "AAAA".into());
        assert_eq!(join_state("h", &r, |n| short.get(n).map(String::as_bytes)), Err(CookieError::Stale));
    }

    /// The limit SECURITY.md states ("Guessing a secret through the state's length"): a state is
    /// deflated before it is sealed, so the length of its cookie says how much of it repeats.
    /// Whoever can put chosen bytes into a victim's state and see the length of the victim's
    /// cookies learns, one guess at a time, a secret that sits in the same state (CRIME, BREACH).
    /// Should the cookies ever stop telling this (padding, no compression), the doc changes too.
    /// A state stored plain (`cookie.compress: false`) tells nothing.
    #[test]
    fn a_sealed_states_length_tells_whether_chosen_bytes_repeat_a_secret_in_it() {
        let keys = ring(&[1]);
        let secret = "q7Vx2LmR9tKp4WzN";
        let state_with = |note: &str| {
            format!(
                r#"{{"user":48213,"csrf":"{secret}","locale":"en-GB","cart":["apple","pear","plum","fig"],"step":"checkout","note":"csrf":"{note}"}}"#
            )
        };
        let sealed_len = |note: &str| seal_state("s-1", 1, state_with(note).as_bytes(), "p", &keys).len();
        let (right, wrong) = (sealed_len(secret), sealed_len("B3nJ8sYc5hGd1fXe"));
        assert_eq!(state_with(secret).len(), state_with("B3nJ8sYc5hGd1fXe").len(), "states of one length");
        assert!(right + 8 <= wrong, "the right guess is {right} characters, the wrong one {wrong}");

        let plain_len = |note: &str| {
            let stored = StoredState::plain(state_with(note).as_bytes(), "");
            seal_stored_state("s-1", 1, &stored, "p", &keys).len()
        };
        assert_eq!(plain_len(secret), plain_len("B3nJ8sYc5hGd1fXe"), "plain, the guesses look alike");
        let value = seal_stored_state("s-1", 1, &StoredState::plain(state_with(secret).as_bytes(), ""), "p", &keys);
        let r = route(1, 1, value.len() as u32);
        assert_eq!(open_state(&value, &r, "p", &keys, 65_536), Ok(state_with(secret).into_bytes()), "and it opens");
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
    fn the_reused_codec_gives_every_state_back_whatever_came_before_it() {
        // One thread's deflater and inflater serve states of every size in turn: nothing of one
        // state (its dictionary, its length) leaks into the next.
        let states: Vec<Vec<u8>> = vec![
            b"{\"count\":1}".repeat(20),
            (0..5_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
            vec![b'x'; 130],
            b"{\"count\":2}".repeat(400),
            (0..200u8).collect(),
        ];
        for _ in 0..2 {
            for state in &states {
                let (flags, stored) = compress(state, None);
                assert_eq!(inflate_within(flags, &stored, state.len()).as_ref(), Ok(state));
                if flags & FLAG_DEFLATED != 0 {
                    assert!(stored.len() < state.len(), "deflated only when smaller");
                    assert_eq!(inflate_within(flags, &stored, state.len() - 1), Err(CookieError::OverBudget));
                }
            }
        }
    }

    #[test]
    fn a_deflated_state_cut_short_or_garbled_is_malformed_not_partial() {
        let state = b"{\"items\":{\"apple\":2}}".repeat(100);
        let (flags, stored) = compress(&state, None);
        assert_eq!(flags, FLAG_DEFLATED);
        for cut in [0, 1, stored.len() / 2, stored.len() - 1] {
            assert_eq!(inflate_within(flags, &stored[..cut], 1 << 20), Err(CookieError::Malformed), "cut at {cut}");
        }
        // And the reused inflater still opens a whole one afterwards.
        assert_eq!(inflate_within(flags, &stored, 1 << 20), Ok(state.clone()));
        // Garbled (never past the AEAD in practice): an error or other bytes, never a panic.
        let garbled: Vec<u8> = stored.iter().map(|b| b ^ 0xa5).collect();
        assert_ne!(inflate_within(flags, &garbled, 1 << 20), Ok(state.clone()));
        assert_eq!(inflate_within(flags, &stored, 1 << 20), Ok(state));
    }

    #[test]
    fn held_state_chunks_come_from_the_names_present() {
        let names = ["h", "h.2", "other", "h.0", "h.2", "h.99999999", "h.x", "h."];
        assert_eq!(held_state_chunks("h", names.map(str::as_bytes).into_iter()), vec![0, 2]);
        assert_eq!(state_chunk_index("h", b"h.0003"), Some(3));
        assert_eq!(state_chunk_index("h", b"h.9999"), Some(9999));
        assert_eq!(state_chunk_index("h", b"h.10000"), None);
        assert_eq!(state_chunk_index("h", b"h"), None);
    }

    proptest! {
        #[test]
        fn request_pairs_are_the_fields_split_at_every_semicolon_then_the_first_equals_or_nameless(
            fields in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b';'), Just(b'='), Just(b' '), any::<u8>()], 0..40), 0..3),
        ) {
            let naive: Vec<CookiePair> = fields
                .iter()
                .flat_map(|f| f.split(|&b| b == b';'))
                .filter_map(|p| match p.iter().position(|&b| b == b'=') {
                    Some(eq) => Some((p[..eq].trim_ascii(), p[eq + 1..].trim_ascii())),
                    None => Some((&p[..0], p.trim_ascii())).filter(|(_, v)| !v.is_empty()),
                })
                .collect();
            prop_assert_eq!(request_pairs(fields.iter().map(Vec::as_slice)), naive);
        }

        #[test]
        fn any_route_and_state_round_trip(
            state in proptest::collection::vec(any::<u8>(), 0..3000),
            version in any::<u64>(),
            session in "[A-Za-z0-9_-]{1,40}",
            chunk_bytes in 1usize..5000,
            carry in any::<u32>(),
            created_at in any::<u64>(),
            ended in any::<bool>(),
            format in "[A-Za-z0-9._-]{0,64}",
        ) {
            let keys = ring(&[5]);
            let value = seal_state_format(&session, version, &state, &format, "ns/pool", &keys);
            let chunks = split_state("h", &value, chunk_bytes);
            let r = Route { session, version, state_version: version, carry, created_at, ended, ..route(0, chunks.len() as u16, value.len() as u32) };
            prop_assert_eq!(open_route(seal_route(&r, "ns/pool", &keys), "ns/pool", &keys, 1_999), Ok(r.clone()));
            let jar: HashMap<String, &str> = chunks.into_iter().collect();
            let joined = join_state("h", &r, |n| jar.get(n).map(|v| v.as_bytes()));
            prop_assert_eq!(joined.and_then(|v| open_state_format(&v, &r, "ns/pool", &keys, 3000)), Ok((state.clone(), format.clone())));
            // The same state inside the route (a live session's, not a tombstone's).
            let inline = Route { chunks: 0, state_bytes: 0, ended: false, inline: Some(StoredState::new(&state, &format)), ..r };
            let opened = open_route(seal_route(&inline, "ns/pool", &keys), "ns/pool", &keys, 1_999);
            prop_assert_eq!(opened.as_ref(), Ok(&inline));
            let stored = opened.ok().and_then(|r| r.inline).map(|i| (i.open(3000), i.format));
            prop_assert_eq!(stored, Some((Ok(state), format)));
        }

        #[test]
        fn garbage_never_opens_as_a_route_or_a_state(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let keys = ring(&[1]);
            let value = URL_SAFE_NO_PAD.encode_to_string(&raw);
            prop_assert!(open_route(&value, "p", &keys, 0).is_err());
            prop_assert!(open_state(&value, &route(1, 1, 1), "p", &keys, 1000).is_err());
        }

        #[test]
        fn flipping_any_bit_is_detected(index in 0usize..2000, bit in 0u8..8, state in any::<bool>()) {
            let keys = ring(&[1]);
            let r = route(1, 1, 10);
            let value = if state { seal_state("s-1", 1, b"some state", "p", &keys) } else { seal_route(&r, "p", &keys) };
            let mut raw = URL_SAFE_NO_PAD.decode_to_vec(&value).expect("b64");
            let i = index % raw.len();
            raw[i] ^= 1 << bit;
            let flipped = URL_SAFE_NO_PAD.encode_to_string(&raw);
            prop_assert!(open_route(&flipped, "p", &keys, 0).is_err());
            prop_assert!(open_state(&flipped, &r, "p", &keys, 1000).is_err());
        }

        /// Cookies and pushed states were encoded and decoded with the `base64` crate before: a
        /// pool whose pods run both builds (a rolling upgrade) must read each other's values, and
        /// a value refused before is refused now (padding, other alphabets, a stray byte, a
        /// length no encoding has, non-zero trailing bits).
        #[test]
        fn base64url_is_the_base64_crate_s(
            raw in proptest::collection::vec(any::<u8>(), 0..300),
            text in "[A-Za-z0-9_=+/. -]{0,80}",
            stray in any::<u8>(),
            at in any::<usize>(),
        ) {
            use base64::Engine as _;
            let before = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            prop_assert_eq!(URL_SAFE_NO_PAD.encode_to_string(&raw), before.encode(&raw));
            let mut mangled = before.encode(&raw).into_bytes();
            if !mangled.is_empty() {
                let i = at % mangled.len();
                mangled[i] = stray;
            }
            for input in [text.as_bytes(), &mangled] {
                prop_assert_eq!(URL_SAFE_NO_PAD.decode_to_vec(input).ok(), before.decode(input).ok());
            }
        }
    }
}
