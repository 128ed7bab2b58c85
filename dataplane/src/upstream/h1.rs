//! HTTP/1.1 connections to the app written and read by the request's own task: the request head
//! and its whole body in one write, the response head parsed once (`httparse`, header values
//! shared with the read buffer), a body already read handed on whole, a longer one streamed from
//! the connection ([`AppBody`]). No connection task, no channel between it and the request: that
//! was the largest part of what hyper's client cost per request (`tests/bench/README.md`). A request with a body still arriving, or an upgrade, goes to hyper's
//! client on the same connection ([`AppConn::into_hyper`]).
//!
//! The app is in the pod, but its answers are parsed as carefully as a client's requests: a head
//! within [`MAX_HEAD`] and [`MAX_HEADERS`], one `Content-Length` (or equal copies), chunked bodies
//! decoded with bounded lines, anything else an error (a 502 for the client).

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use handover_common::sync;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Body, ConnectError};
use crate::http1::{
    HEAD_ROOM, MAX_HEADERS, chunked_alone, content_length, has_token, map_for, span, upgrades_to_http, without_body,
    write_field,
};

/// The longest response head.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The largest request body written to the app with its head in one write; a larger one goes
/// through hyper's client, which streams it.
const MAX_WHOLE_BODY: usize = 64 * 1024;
/// The longest line of a chunked body's framing (a chunk size with its extensions, a trailer).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Bytes read from the app at a time while streaming a body.
const READ_SIZE: usize = 16 * 1024;
/// Idle connections kept per destination.
const MAX_IDLE: usize = 64;
/// The largest request buffer a connection keeps between requests (a larger one, for a request
/// with a large body, goes once it is written).
const OUT_KEPT: usize = 8 * 1024;

/// A keep-alive connection to the app.
pub struct AppConn {
    stream: TcpStream,
    /// Bytes read and not used yet (empty between exchanges).
    buf: BytesMut,
    /// Taken from the idle list: the app may have closed it as it was taken.
    reused: bool,
    /// When its last answer ended (or it was opened): the app's idle timeout runs from there.
    idle_since: std::time::Instant,
    /// The response timeout of each exchange: one timer for the connection's life (made at its
    /// first exchange with a deadline), moved on at each request: moving a registered timer later
    /// only updates it, where a new timeout per request goes into tokio's timer wheel and out
    /// again every time.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The request being written (head and body), kept for the next: one buffer for the
    /// connection's life, where one allocated for every request was also grown past its first
    /// guess once the request carried a session's cookies (~490 instructions a request, counted).
    out: Vec<u8>,
    /// Its last answer had no body by rule (to a `HEAD`, a 204, a 304): the kernel is asked
    /// whether anything came after it before it carries another request ([`idle_state`]).
    after_bodiless: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No response head before the deadline.
    #[error("no response before the deadline")]
    TimedOut,
    /// The app's connection was closed before the request was written: it may be sent again.
    #[error("the connection was closed before the request was written: {0}")]
    NotSent(io::Error),
    /// An idempotent request (RFC 9110 §9.2.2) on a reused connection that the app closed without
    /// a byte of answer — most often its idle timeout meeting the request (Node's is 5 s): it may
    /// be sent again once, as nginx's `proxy_next_upstream` does.
    #[error("the app closed a kept-alive connection without answering: {0}")]
    Unanswered(io::Error),
    /// The connection, taken from the idle list, held bytes no request asked for (a body after an
    /// answer that has none): closed, the request not written; it goes on another connection, and
    /// the app did not restart.
    #[error("the idle connection held bytes no request asked for")]
    Stray,
    #[error("{0}")]
    Failed(io::Error),
}

fn failed(what: &str) -> ExchangeError {
    ExchangeError::Failed(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

impl AppConn {
    /// A new connection to `addr` within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<AppConn, ConnectError> {
        let stream = super::connect(addr, timeout).await?;
        Ok(AppConn {
            stream,
            buf: BytesMut::new(),
            reused: false,
            idle_since: std::time::Instant::now(),
            deadline: None,
            out: Vec::new(),
            after_bodiless: false,
        })
    }

    /// This connection under hyper's client, for one request this module does not send (a body
    /// still arriving, an `upgrade`). Its driver runs as a task of its own. An answer the app
    /// sends before it has read the body, and then closes the connection, reaches the client
    /// ([`EarlyAnswer`](super::early_answer::EarlyAnswer)); an upgraded connection's writes fail
    /// as they come, for the tunnel to end.
    pub async fn into_hyper(
        self,
        addr: SocketAddr,
        upgrade: bool,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, ConnectError> {
        if upgrade {
            super::hyper_http1(self.stream, addr, MAX_HEAD).await
        } else {
            super::hyper_http1(super::early_answer::EarlyAnswer::new(self.stream), addr, MAX_HEAD).await
        }
    }

    /// Sends `req` with its whole `body` and reads the response head, by `deadline` if there is
    /// one ([`ExchangeError::TimedOut`]). The connection goes back to `idle` once its response
    /// body was read, unless either side closes it. The response's fields named in `apart` are
    /// not in its map: their values come back beside it, in `apart`'s order, as bytes
    /// ([`read_head`]). The response's map is the request's, emptied once the response head is
    /// whole (the request cannot be sent again from then on); until then `req` is left as it was.
    pub async fn exchange<const N: usize>(
        mut self,
        req: &mut http::request::Parts,
        body: &Bytes,
        idle: &IdleConns,
        deadline: Option<tokio::time::Instant>,
        apart: &[HeaderName; N],
    ) -> Result<(Response<Body>, [Option<Bytes>; N]), ExchangeError> {
        let head = match deadline {
            Some(at) => {
                // Out of the connection while the exchange borrows the rest of it, then put back.
                let mut timer = self.deadline.take().unwrap_or_else(|| Box::pin(tokio::time::sleep_until(at)));
                timer.as_mut().reset(at);
                let head = tokio::select! {
                    biased;
                    head = self.send_and_read_head(req, body, apart) => head,
                    () = timer.as_mut() => Err(ExchangeError::TimedOut),
                };
                self.deadline = Some(timer);
                head
            }
            None => self.send_and_read_head(req, body, apart).await,
        }?;
        Ok(self.respond(head, idle))
    }

    /// Writes `req` and reads the final response head.
    async fn send_and_read_head<const N: usize>(
        &mut self,
        req: &mut http::request::Parts,
        body: &Bytes,
        apart: &[HeaderName; N],
    ) -> Result<Head<N>, ExchangeError> {
        if self.reused {
            match idle_state(&self.stream, self.after_bodiless) {
                Idle::Open => {}
                // The app closed it while the request waited (its turn, a check of the app): as
                // hyper's client does, the request is handed back unsent, to go on a new connection.
                Idle::Closed => {
                    let closed = io::Error::new(io::ErrorKind::ConnectionReset, "the app closed the idle connection");
                    return Err(ExchangeError::NotSent(closed));
                }
                Idle::Stray => return Err(ExchangeError::Stray),
            }
        }
        self.out.clear();
        write_head(&mut self.out, req, body.len());
        self.out.extend_from_slice(body);
        let written = self.stream.write_all(&self.out).await;
        // An idle connection keeps a small buffer, whatever the largest request it carried.
        if self.out.capacity() > OUT_KEPT {
            self.out = Vec::new();
        }
        if let Err(e) = written {
            // On a connection taken from the idle list, the app closed it meanwhile: the request
            // did not reach it.
            return Err(if self.reused { ExchangeError::NotSent(e) } else { ExchangeError::Failed(e) });
        }
        let head_request = req.method == Method::HEAD;
        // Whether any byte of an answer came: a kept-alive connection the app closes just as a
        // request is written to it (its idle timeout: Node's is 5 s) ends with none.
        let mut answered = false;
        loop {
            match read_head(&mut self.buf, head_request, apart, &mut req.headers) {
                Ok(Some(head)) if head.status.is_informational() => {
                    // 100 Continue, 103 Early Hints: the final answer follows. (No upgrade is
                    // sent on this path, so no 101 is expected.)
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(failed(SWITCHED_UNASKED));
                    }
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {
                    if self.buf.len() >= MAX_HEAD {
                        return Err(failed("the app's response head is too long"));
                    }
                    if self.buf.capacity() - self.buf.len() < HEAD_ROOM {
                        // Reuses the buffer when the responses read into it are gone.
                        self.buf.reserve(READ_SIZE);
                    }
                    let closed = match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the app closed the connection before answering",
                        ),
                        Ok(_) => {
                            answered = true;
                            continue;
                        }
                        Err(e) => e,
                    };
                    // Any request but an idempotent one on a reused connection may have been
                    // acted on: it fails.
                    return Err(if self.reused && !answered && req.method.is_idempotent() {
                        ExchangeError::Unanswered(closed)
                    } else {
                        ExchangeError::Failed(closed)
                    });
                }
                Err(why) => return Err(failed(why)),
            }
        }
    }

    /// The response to `head`, with its body read here when it has all arrived, or streamed.
    fn respond<const N: usize>(mut self, head: Head<N>, idle: &IdleConns) -> (Response<Body>, [Option<Bytes>; N]) {
        let framing = head.framing;
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = head.status;
        *resp.version_mut() = Version::HTTP_11;
        *resp.headers_mut() = head.headers;
        let reuse = head.keep_alive;
        match framing {
            Framing::Length(len) if self.buf.len() as u64 >= len => {
                // The whole body is here (the common case): the connection is free at once.
                let body = self.buf.split_to(len as usize).freeze();
                if reuse && self.buf.is_empty() {
                    self.idle_since = std::time::Instant::now();
                    self.after_bodiless = head.bodiless;
                    idle.put(self);
                }
                if !body.is_empty() {
                    *resp.body_mut() = super::full(body);
                }
            }
            framing => {
                let body = AppBody { conn: Some(self), state: State::of(framing), reuse, idle: idle.clone() };
                *resp.body_mut() = body.boxed();
            }
        }
        (resp, head.apart)
    }
}

/// The request head as the app gets it: the method, the origin-form target, the fields, and the
/// body's length (the only framing this path sends).
fn write_head(out: &mut Vec<u8>, req: &http::request::Parts, body_len: usize) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if body_len > 0 || matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
        // `itoa`, not `write!`: the formatter cost ~300 instructions a request here (callgrind).
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Until the app closes the connection.
    Close,
}

/// A parsed response head.
pub(crate) struct Head<const N: usize> {
    status: StatusCode,
    headers: http::HeaderMap,
    /// The values of the fields asked for apart (not in `headers`).
    pub(crate) apart: [Option<Bytes>; N],
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request.
    keep_alive: bool,
    /// It has no body by rule (RFC 9112 §6.3), whatever its fields say.
    bodiless: bool,
}

/// The response head at the start of `buf`, taken out of it, with its body's framing as RFC 9112
/// §6.3 says (`head_request`: the answer to a `HEAD`); `None` while it is not whole. The fields
/// named in `apart` (in any case) are kept out of its map, their values apart as the bytes httparse
/// took (visible ASCII, spaces, tabs and obs-text: the bytes `HeaderValue` takes, not checked a
/// second time); of a field that comes twice, the first, as `HeaderMap::remove` gives it on hyper's
/// path. (The proxy takes the app contract's fields this way: neither parsed into a name nor put in
/// the map, only to be looked up and removed again, and a pushed state of some KB not checked byte
/// by byte for a map it never enters.) The head's map is made of `spare` once the head is whole
/// ([`map_for`]).
pub(crate) fn read_head<const N: usize>(
    buf: &mut BytesMut,
    head_request: bool,
    apart: &[HeaderName; N],
    spare: &mut http::HeaderMap,
) -> Result<Option<Head<N>>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("the app's response head does not parse"),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or("the app's status is no status")?;
    let mut keep_alive = parsed.version == Some(1);
    let mut fields = Vec::with_capacity(parsed.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut apart_spans: [Option<Range<usize>>; N] = [const { None }; N];
    for h in parsed.headers.iter() {
        if let Some(i) = apart.iter().position(|name| h.name.eq_ignore_ascii_case(name.as_str())) {
            apart_spans[i].get_or_insert_with(|| span(buf, h.value));
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "a header name http refuses")?;
        if name == header::CONTENT_LENGTH {
            match (length, content_length(h.value)) {
                (_, None) => return Err(LENGTH_NO_NUMBER),
                (Some(a), Some(b)) if a != b => return Err("the app sent two content-lengths"),
                (_, value) => length = value,
            }
        } else if name == header::TRANSFER_ENCODING {
            // Chunked alone, in one field, as nginx takes from an upstream: another coding would
            // reach the client without its name (the framing to the client is the proxy's own),
            // and a second field, like a Content-Length beside it (below), is how a response is
            // split (RFC 9112 §6.3, §11.1).
            if chunked || !chunked_alone(h.value) {
                return Err(NOT_CHUNKED_ALONE);
            }
            chunked = true;
        } else if name == header::CONNECTION && has_token(h.value, b"close") {
            keep_alive = false;
        }
        fields.push((name, span(buf, h.value)));
    }
    let bodiless = without_body(status, head_request);
    let framing = match (chunked, length) {
        _ if bodiless => Framing::Length(0),
        (true, Some(_)) => return Err(LENGTH_BESIDE_CHUNKS),
        (true, None) => Framing::Chunked,
        (false, Some(len)) => Framing::Length(len),
        (false, None) => Framing::Close,
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields the proxy adds (the session's Set-Cookie lines, Cache-Control): the map
    // is not grown and rehashed on the way to the client.
    let mut map = map_for(spare, fields.len() + 4);
    for (name, span) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(span)).map_err(|_| "a header value http refuses")?;
        map.append(name, value);
    }
    let values = apart_spans.map(|span| span.map(|span| head.slice(span)));
    Ok(Some(Head { status, headers: map, framing, keep_alive, bodiless, apart: values }))
}

const NOT_CHUNKED_ALONE: &str = "the app's transfer coding is not chunked alone";
const LENGTH_NO_NUMBER: &str = "the app's content-length is no number";
const LENGTH_BESIDE_CHUNKS: &str = "the app sent both a content-length and a transfer-encoding";
const SWITCHED_UNASKED: &str = "the app switched protocols unasked";
const SWITCHED_TO_HTTP: &str = "the app switched to HTTP through the tunnel";

/// What the sidecar refuses when it reads a response head itself ([`read_head`], and a 101 to a
/// request that asked for no upgrade), in a head that hyper's client read instead (the path of a
/// request body still arriving, and of an upgrade): hyper hands on a coding besides chunked, a
/// length beside chunks, a length that is a list (`5, 5`) and a 101 as they came. The proxy, which
/// frames the response to the client itself, would then pass the body on with its coding unnamed,
/// or under the app's length, a field no client must be sent as it is (RFC 9110, 8.6); and a
/// client that asked for no upgrade would have its connection switched.
pub(crate) fn refusal(
    status: StatusCode,
    headers: &http::HeaderMap,
    head_request: bool,
    upgrade: bool,
) -> Option<&'static str> {
    if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
        return Some(SWITCHED_UNASKED);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS && upgrades_to_http(headers) {
        return Some(SWITCHED_TO_HTTP);
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().any(|v| content_length(v.as_bytes()).is_none()) {
        return Some(LENGTH_NO_NUMBER);
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let first = codings.next()?;
    if codings.next().is_some() || !chunked_alone(first.as_bytes()) {
        return Some(NOT_CHUNKED_ALONE);
    }
    if headers.contains_key(header::CONTENT_LENGTH) && !without_body(status, head_request) {
        return Some(LENGTH_BESIDE_CHUNKS);
    }
    None
}

/// The app's idle connections (a sidecar has one app), shared with the bodies that give theirs
/// back.
#[derive(Clone, Default)]
pub struct IdleConns(Arc<Mutex<Vec<AppConn>>>);

impl IdleConns {
    /// An idle connection that is still open and was answered within [`super::REUSE_WITHIN`]
    /// (older ones are closed), and whether any had been closed by the other side since they were
    /// last used (the app may have restarted).
    pub fn take(&self) -> (Option<AppConn>, bool) {
        let mut idle = sync::lock(&self.0);
        let mut saw_closed = false;
        while let Some(conn) = idle.pop() {
            match idle_state(&conn.stream, conn.after_bodiless) {
                Idle::Closed => saw_closed = true,
                Idle::Open if conn.idle_since.elapsed() < super::REUSE_WITHIN => return (Some(conn), saw_closed),
                Idle::Open | Idle::Stray => {}
            }
        }
        (None, saw_closed)
    }

    /// Keeps `conn` (as idle since its [`AppConn::idle_since`]) for the next request.
    pub fn put(&self, mut conn: AppConn) {
        conn.reused = true;
        let mut idle = sync::lock(&self.0);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Forgets every connection (the app died).
    pub fn clear(&self) {
        sync::lock(&self.0).clear();
    }
}

/// What an idle connection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    /// Nothing: it may carry a request.
    Open,
    /// The app closed it (its idle timeout, or it restarted).
    Closed,
    /// Bytes no request asked for: closed here, not read as the next request's answer.
    Stray,
}

/// What an idle connection holds (it gets nothing but its close, from a sound app). Asks the
/// kernel only when the runtime saw it become readable — or, `after_bodiless` (its last answer
/// had no body by rule), always. An app that sends a body with its answer to a `HEAD` (a handler
/// shared with `GET`), a 204 or a 304 writes it after the head, and bytes that arrive while the
/// runtime is busy are not in its readiness until its next poll of the kernel; read as the next
/// request's answer, they would reach another client, and every answer on the connection after
/// them would go to the request after its own. (Stray bytes that come only after the next request
/// was written cannot be told from its answer, by nginx either.)
fn idle_state(stream: &TcpStream, after_bodiless: bool) -> Idle {
    let peeked = if after_bodiless {
        let mut probe = [std::mem::MaybeUninit::uninit()];
        socket2::SockRef::from(stream).peek(&mut probe)
    } else {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if stream.poll_read_ready(&mut cx).is_pending() {
            return Idle::Open;
        }
        stream.try_read(&mut [0u8; 1])
    };
    match peeked {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Idle::Open,
        Ok(0) | Err(_) => Idle::Closed,
        Ok(_) => {
            tracing::warn!(
                after_bodiless,
                "the app sent bytes on an idle connection, after its answer (to a HEAD, a 204 or a 304 when after_bodiless: a body it must not have): the connection is closed, not used for another request"
            );
            Idle::Stray
        }
    }
}

/// Where a streamed body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// This many bytes left.
    Length(u64),
    /// A chunk-size line next.
    ChunkSize,
    /// This many bytes of a chunk left, then its CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
    UntilClose,
    Done,
}

impl State {
    /// Where a body framed so starts.
    pub(crate) fn of(framing: Framing) -> State {
        match framing {
            Framing::Length(len) => State::Length(len),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::UntilClose,
        }
    }
}

/// A response body read from the app's connection as the client's side asks for it.
struct AppBody {
    /// `None` once done.
    conn: Option<AppConn>,
    state: State,
    reuse: bool,
    idle: IdleConns,
}

impl AppBody {
    /// Ends the body: the connection goes back to the idle list if it may carry another request.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(mut conn) = self.conn.take()
            && self.reuse
            && conn.buf.is_empty()
        {
            conn.idle_since = std::time::Instant::now();
            // Its answer had a body: the next request needs no look at the socket first.
            conn.after_bodiless = false;
            self.idle.put(conn);
        }
    }
}

fn invalid(what: &str) -> crate::timed_body::BoxError {
    Box::new(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

/// One line (without its line ending) at the start of `buf`, taken out; `None` while incomplete.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, crate::timed_body::BoxError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(invalid("a chunked body's line is too long")),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then maybe `;` and extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, crate::timed_body::BoxError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("a chunk size that is no number"));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let d = char::from(d).to_digit(16).ok_or_else(|| invalid("a chunk size that is no number"))?;
        Ok(n * 16 + u64::from(d))
    })
}

/// What a body's framing makes of the bytes at hand.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// The body ended (the connection may carry the next response).
    End,
    /// More bytes are needed (for [`State::UntilClose`]: or the close, which ends it).
    More,
}

/// The next step of a body in `state` over `buf`, taking what it uses out of `buf`. Each step
/// that does not ask for more takes at least one byte, so a loop over it ends.
pub(crate) fn next_step(state: &mut State, buf: &mut BytesMut) -> Result<Step, crate::timed_body::BoxError> {
    loop {
        match *state {
            State::Done | State::Length(0) => {
                *state = State::Done;
                return Ok(Step::End);
            }
            _ if buf.is_empty() => return Ok(Step::More),
            State::Length(left) => {
                let n = left.min(buf.len() as u64);
                *state = State::Length(left - n);
                return Ok(Step::Data(buf.split_to(n as usize).freeze()));
            }
            State::UntilClose => return Ok(Step::Data(buf.split().freeze())),
            State::ChunkData(left) => {
                let n = left.min(buf.len() as u64);
                *state = if left == n { State::ChunkEnd } else { State::ChunkData(left - n) };
                return Ok(Step::Data(buf.split_to(n as usize).freeze()));
            }
            State::ChunkSize | State::ChunkEnd | State::Trailers => {
                let Some(line) = take_line(buf)? else { return Ok(Step::More) };
                *state = match *state {
                    State::ChunkSize => match chunk_size(&line)? {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    },
                    State::ChunkEnd if line.is_empty() => State::ChunkSize,
                    State::ChunkEnd => return Err(invalid("no line end after a chunk")),
                    // Trailers are not passed on; the empty line ends the body.
                    _ if line.is_empty() => State::Done,
                    other => other,
                };
            }
        }
    }
}

impl hyper::body::Body for AppBody {
    type Data = Bytes;
    type Error = crate::timed_body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match next_step(&mut this.state, &mut conn.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(READ_SIZE);
            }
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(0) if this.state == State::UntilClose => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(invalid("the app closed the connection mid-body"))));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = ready!(conn.stream.poll_read_ready(cx)) {
                        this.conn = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(left) => SizeHint::with_exact(left),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The body of `req` when all of it has arrived (no body, or one frame that ends it): the bytes,
/// with `req` keeping an empty body. `None`, and `req` untouched, when it is still arriving.
pub fn whole_body(req: &mut Request<Body>) -> Option<Bytes> {
    use hyper::body::Body as _;
    let body = req.body_mut();
    if body.is_end_stream() {
        return Some(Bytes::new());
    }
    let expected = body.size_hint().exact()?;
    if expected > MAX_WHOLE_BODY as u64 {
        return None;
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut *body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if data.len() as u64 == expected && body.is_end_stream() => {
                *body = Body::default();
                Some(data)
            }
            // A first part only: put back in front of the rest, which hyper's client then sends.
            Ok(data) => {
                *body = prepend(Ok(Frame::data(data)), std::mem::take(body));
                None
            }
            Err(frame) => {
                *body = prepend(Ok(frame), std::mem::take(body));
                None
            }
        },
        // hyper's client meets the error again.
        Poll::Ready(Some(Err(e))) => {
            *body = prepend(Err(e), Body::default());
            None
        }
        Poll::Ready(None) => Some(Bytes::new()),
        Poll::Pending => None,
    }
}

/// Whether `req`'s body is all in hand ([`whole_body`]), left as it was found.
pub fn body_in_hand(req: &mut Request<Body>) -> bool {
    match whole_body(req) {
        Some(body) => {
            if !body.is_empty() {
                *req.body_mut() = super::full(body);
            }
            true
        }
        None => false,
    }
}

/// `first`, then `rest`.
fn prepend(first: Result<Frame<Bytes>, crate::timed_body::BoxError>, rest: Body) -> Body {
    let first = futures::stream::once(std::future::ready(first));
    let rest = http_body_util::BodyStream::new(rest);
    http_body_util::StreamBody::new(futures::StreamExt::chain(first, rest)).boxed()
}

#[cfg(test)]
mod tests {
    use super::super::REUSE_WITHIN;
    use super::*;
    use hyper::body::Body as _;
    use tokio::net::TcpListener;

    /// A scripted app on one connection: for each answer, it reads one request, then writes the
    /// answer's parts one write each; then it closes the connection. Gives back the requests read.
    async fn app(answers: Vec<Vec<&'static [u8]>>) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut requests = Vec::new();
            let mut buf = BytesMut::new();
            for parts in answers {
                let request = loop {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.parse::<usize>().expect("a length"));
                        if buf.len() >= end + 4 + length {
                            break String::from_utf8_lossy(&buf.split_to(end + 4 + length)).into_owned();
                        }
                    }
                    assert!(stream.read_buf(&mut buf).await.expect("read") > 0, "the request was cut short");
                };
                requests.push(request);
                for part in parts {
                    stream.write_all(part).await.expect("write");
                    stream.flush().await.expect("flush");
                    tokio::task::yield_now().await;
                }
            }
            requests
        });
        (addr, task)
    }

    fn request(method: Method, path: &str) -> http::request::Parts {
        let mut req = Request::builder().method(method).uri(path).header("host", "app").body(()).expect("request");
        req.headers_mut().insert("x-req", HeaderValue::from_static("1"));
        req.into_parts().0
    }

    async fn body_of(resp: Response<Body>) -> Result<Bytes, String> {
        resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string())
    }

    /// An exchange on the idle connection to `addr`, or a new one.
    async fn exchange(
        idle: &IdleConns,
        addr: SocketAddr,
        req: &mut http::request::Parts,
        body: &[u8],
    ) -> Response<Body> {
        let conn = match idle.take().0 {
            Some(conn) => conn,
            None => AppConn::connect(addr, Duration::from_secs(5)).await.expect("connect"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        conn.exchange(req, &Bytes::copy_from_slice(body), idle, Some(deadline), &[]).await.expect("an answer").0
    }

    #[tokio::test]
    async fn an_answer_late_for_its_deadline_times_out_on_a_connection_whose_timer_ran_out_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (done, until_done) = tokio::sync::oneshot::channel::<()>();
        let _app = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            // The first request is answered at once; the second never is (the connection stays
            // open until the test is done).
            let _ = stream.read(&mut request).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
            let _ = stream.read(&mut request).await;
            let _ = until_done.await;
        });
        let idle = IdleConns::default();
        let conn = AppConn::connect(addr, Duration::from_secs(5)).await.expect("connect");
        // (Well within REUSE_WITHIN: the connection is still used again after this deadline.)
        let first_deadline = tokio::time::Instant::now() + Duration::from_millis(400);
        let first =
            conn.exchange(&mut request(Method::GET, "/first"), &Bytes::new(), &idle, Some(first_deadline), &[]).await;
        assert_eq!(body_of(first.expect("answered within 400 ms").0).await.as_deref(), Ok(&b"ok"[..]));
        // Idle in the pool past that deadline: the connection's timer runs out there, unused.
        tokio::time::sleep_until(first_deadline).await;
        let conn = idle.take().0.expect("the connection was kept for the next request");
        let started = tokio::time::Instant::now();
        let limit = Duration::from_millis(200);
        let second =
            conn.exchange(&mut request(Method::GET, "/second"), &Bytes::new(), &idle, Some(started + limit), &[]).await;
        assert!(matches!(second, Err(ExchangeError::TimedOut)), "{second:?}");
        assert!(started.elapsed() >= limit, "not before the deadline: {:?}", started.elapsed());
        assert!(idle.take().0.is_none(), "a connection that timed out is not kept");
        drop(done);
    }

    #[tokio::test]
    async fn bytes_after_an_answer_without_a_body_are_never_read_as_the_next_answer() {
        for (method, answer) in [
            (Method::HEAD, &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..]),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (Method::GET, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let connect = AppConn::connect(addr, Duration::from_secs(5));
            let (conn, accepted) = tokio::join!(connect, listener.accept());
            let (conn, app) = (conn.expect("connect"), accepted.expect("accept").0);
            // The app's side written from this task, so that nothing runs in between: its answer
            // is there before the request goes out.
            let what = format!("{method} answered {:?}", String::from_utf8_lossy(answer));
            let mut app = app.into_std().expect("std");
            app.set_nonblocking(false).expect("blocking");
            std::io::Write::write_all(&mut app, answer).expect("write");
            let idle = IdleConns::default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let (resp, _) = conn
                .exchange(&mut request(method.clone(), "/"), &Bytes::new(), &idle, Some(deadline), &[])
                .await
                .expect("an answer");
            assert_eq!(body_of(resp).await.as_deref(), Ok(&b""[..]), "{what}");
            // The body the app should not have sent (a whole answer, at worst) arrives while the
            // connection idles, before the runtime polls the kernel again.
            std::io::Write::write_all(&mut app, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray").expect("write");
            let (taken, saw_closed) = idle.take();
            assert!(taken.is_none(), "a connection with bytes no request asked for is not used: {what}");
            assert!(!saw_closed, "nor taken for the app's close (a restart): {what}");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_used_again_only_within_reuse_within_of_its_last_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The app answers one request and keeps the connection until the sidecar closes it.
        let app = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
            while stream.read(&mut request).await.is_ok_and(|n| n > 0) {}
        });
        let idle = IdleConns::default();
        let answer = exchange(&idle, addr, &mut request(Method::GET, "/"), b"").await;
        assert_eq!(body_of(answer).await.as_deref(), Ok(&b"ok"[..]));
        let (conn, _) = idle.take();
        idle.put(conn.expect("used again at once"));
        // Idle past REUSE_WITHIN: the app may be closing it as a request goes out; closed here.
        tokio::time::sleep(REUSE_WITHIN + Duration::from_millis(100)).await;
        let (conn, saw_closed) = idle.take();
        assert!(conn.is_none(), "a connection idle past REUSE_WITHIN is not used again");
        assert!(!saw_closed, "closed by the sidecar, not taken for the app's close (a restart)");
        tokio::time::timeout(Duration::from_secs(10), app).await.expect("the app saw it closed").expect("the app");
    }

    #[tokio::test]
    async fn bodies_framed_every_way_are_read_whole_and_the_connection_kept_when_it_may_be() {
        let (addr, app) = app(vec![
            vec![b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234", b"56789"],
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nhel\r\n",
                b"2\r\nlo\r\n0\r\nx-trailer: 1\r\n\r\n",
            ],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the close"],
        ])
        .await;
        let idle = IdleConns::default();
        let first = exchange(&idle, addr, &mut request(Method::POST, "/p?q=1"), b"abc").await;
        assert_eq!(first.status(), StatusCode::CREATED);
        assert_eq!(first.headers()["x-a"], "1");
        // The response's map is the request's, emptied: none of the request's fields is in it.
        assert_eq!(first.headers().len(), 2, "{:?}", first.headers());
        assert_eq!(body_of(first).await.as_deref(), Ok(&b"hello"[..]));
        let second = exchange(&idle, addr, &mut request(Method::GET, "/long"), b"").await;
        assert_eq!(body_of(second).await.as_deref(), Ok(&b"0123456789"[..]));
        let third = exchange(&idle, addr, &mut request(Method::PUT, "/chunked"), b"").await;
        assert_eq!(body_of(third).await.as_deref(), Ok(&b"hello"[..]), "the 100 is skipped, the trailer dropped");
        let head = exchange(&idle, addr, &mut request(Method::HEAD, "/head"), b"").await;
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(body_of(head).await.as_deref(), Ok(&b""[..]), "no body follows a HEAD's answer");
        let last = exchange(&idle, addr, &mut request(Method::GET, "/close"), b"").await;
        assert_eq!(body_of(last).await.as_deref(), Ok(&b"until the close"[..]));
        assert!(idle.take().0.is_none(), "a body framed by the close leaves no connection");
        let requests = app.await.expect("the app");
        // Five requests, one connection: each exchange found the previous one's connection idle.
        assert_eq!(requests.len(), 5);
        assert!(requests[0].starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{}", requests[0]);
        assert!(requests[0].contains("x-req: 1\r\n") && requests[0].ends_with("content-length: 3\r\n\r\nabc"));
        assert!(requests[2].starts_with("PUT /chunked HTTP/1.1\r\n") && requests[2].contains("content-length: 0\r\n"));
        assert!(!requests[1].contains("content-length"), "a GET without a body declares none: {}", requests[1]);
    }

    #[tokio::test]
    async fn the_fields_asked_apart_come_beside_the_map_in_any_case_and_the_rest_in_it() {
        let answer =
            b"HTTP/1.1 200 OK\r\nHandover-State: old\r\nx-app: 1\r\nhandover-STATE: new\r\ncontent-length: 2\r\n\r\nok";
        let (addr, _app) = app(vec![vec![answer]]).await;
        let conn = AppConn::connect(addr, Duration::from_secs(5)).await.expect("connect");
        let apart = [HeaderName::from_static("handover-state"), HeaderName::from_static("handover-reads")];
        let (resp, [state, reads]) = conn
            .exchange(&mut request(Method::GET, "/"), &Bytes::new(), &IdleConns::default(), None, &apart)
            .await
            .expect("an answer");
        // Of a field sent twice, the first, as hyper's path takes it out of a map.
        assert_eq!(state.as_deref(), Some(&b"old"[..]));
        assert!(reads.is_none());
        assert!(!resp.headers().contains_key("handover-state"), "{:?}", resp.headers());
        assert_eq!(resp.headers()["x-app"], "1");
        assert_eq!(body_of(resp).await.as_deref(), Ok(&b"ok"[..]));
    }

    #[tokio::test]
    async fn a_head_the_sidecar_refuses_when_it_reads_it_is_refused_on_hyper_s_path_too() {
        for (method, answer, refused) in [
            (
                Method::GET,
                &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
                true,
            ),
            (Method::GET, b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", true),
            (Method::GET, b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nuntil the close", true),
            (
                Method::GET,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                true,
            ),
            (Method::GET, b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
            (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false),
            (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\nabc", true),
            (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc", false),
            // No body whatever the fields say: nothing is framed by them.
            (Method::HEAD, b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n", false),
            (Method::GET, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n", true),
        ] {
            let what = String::from_utf8_lossy(answer).into_owned();
            let head_request = method == Method::HEAD;
            let (addr, _app) = app(vec![vec![answer]]).await;
            let conn = AppConn::connect(addr, Duration::from_secs(5)).await.expect("connect");
            let idle = IdleConns::default();
            let read_here = conn.exchange(&mut request(method.clone(), "/"), &Bytes::new(), &idle, None, &[]).await;
            assert_eq!(read_here.is_err(), refused, "read here: {what}");

            let (addr, _app) = app(vec![vec![answer]]).await;
            let conn = AppConn::connect(addr, Duration::from_secs(5)).await.expect("connect");
            let mut sender = conn.into_hyper(addr, false).await.expect("hyper's client");
            let req = Request::builder().method(method).uri("/").header("host", "app").body(Body::default());
            // hyper's client hands every one of these heads on as it came: hence `refusal`.
            let resp = sender.send_request(req.expect("request")).await.expect("hyper's client takes the head");
            let by_hyper = refusal(resp.status(), resp.headers(), head_request, false).is_some();
            assert_eq!(by_hyper, refused, "hyper's path: {what}");
        }
        // A 101 is the answer an upgrade asks for.
        assert_eq!(refusal(StatusCode::SWITCHING_PROTOCOLS, &http::HeaderMap::new(), false, true), None);
    }

    #[tokio::test]
    async fn what_the_app_gets_wrong_is_an_error_not_a_guess() {
        for (answer, what) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"[..], "two lengths"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n", "a length that is no number"),
            (b"NOT HTTP\r\n\r\n", "no status line"),
            (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", "an upgrade nobody asked for"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", "closed in the head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "a length and chunks",
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "another coding than chunked"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nuntil the close", "a coding that ends in no chunks"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                "two codings",
            ),
        ] {
            let (addr, _app) = app(vec![vec![answer]]).await;
            let conn = AppConn::connect(addr, Duration::from_secs(5)).await.expect("connect");
            let sent =
                conn.exchange(&mut request(Method::GET, "/"), &Bytes::new(), &IdleConns::default(), None, &[]).await;
            assert!(matches!(sent, Err(ExchangeError::Failed(_))), "{what}: {sent:?}");
        }
        for (answer, what) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..], "closed mid-body"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "a chunk size that is no number"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n", "a chunk longer than it said"),
        ] {
            let (addr, _app) = app(vec![vec![answer]]).await;
            let idle = IdleConns::default();
            let resp = exchange(&idle, addr, &mut request(Method::GET, "/"), b"").await;
            assert!(body_of(resp).await.is_err(), "{what}");
            assert!(idle.take().0.is_none(), "{what}: the connection was kept");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_app_closed_is_reported_and_not_handed_out() {
        let (addr, app) = app(vec![vec![b"HTTP/1.1 204 No Content\r\n\r\n"]]).await;
        let idle = IdleConns::default();
        let resp = exchange(&idle, addr, &mut request(Method::DELETE, "/"), b"").await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        // The app closes the connection once its script is done: waited for until it shows.
        app.await.expect("the app");
        let shows = tokio::time::timeout(Duration::from_secs(10), async {
            while sync::lock(&idle.0).last().is_some_and(|c| idle_state(&c.stream, c.after_bodiless) == Idle::Open) {
                tokio::task::yield_now().await;
            }
        });
        shows.await.expect("the app's close reached the idle connection");
        let (conn, saw_closed) = idle.take();
        assert!(conn.is_none(), "a closed connection was handed out");
        assert!(saw_closed, "a closed connection went unreported (the app may have restarted)");
    }

    #[tokio::test]
    async fn a_request_whose_idle_connection_closed_while_it_waited_is_handed_back_unsent() {
        let (addr, app) = app(vec![vec![b"HTTP/1.1 204 No Content\r\n\r\n"]]).await;
        let idle = IdleConns::default();
        drop(exchange(&idle, addr, &mut request(Method::DELETE, "/"), b"").await);
        // Taken while open, then closed by the app before the request is written.
        let conn = idle.take().0.expect("the idle connection");
        app.await.expect("the app");
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while idle_state(&conn.stream, conn.after_bodiless) == Idle::Open {
                tokio::task::yield_now().await;
            }
        });
        closed.await.expect("the app's close reached the connection");
        let sent = conn.exchange(&mut request(Method::POST, "/"), &Bytes::from_static(b"x"), &idle, None, &[]).await;
        assert!(matches!(sent, Err(ExchangeError::NotSent(_))), "{sent:?}");
    }

    #[tokio::test]
    async fn an_idempotent_request_the_app_closed_on_unanswered_goes_again_and_any_other_fails() {
        for (method, again) in [(Method::GET, true), (Method::PUT, true), (Method::POST, false), (Method::PATCH, false)]
        {
            // The app answers one request, reads the second and closes without a byte of answer.
            let (addr, app) = app(vec![vec![b"HTTP/1.1 204 No Content\r\n\r\n"], vec![]]).await;
            let idle = IdleConns::default();
            drop(exchange(&idle, addr, &mut request(Method::DELETE, "/"), b"").await);
            let conn = idle.take().0.expect("the kept connection");
            let sent = conn.exchange(&mut request(method.clone(), "/second"), &Bytes::new(), &idle, None, &[]).await;
            match sent {
                Err(ExchangeError::Unanswered(_)) => assert!(again, "{method} would be sent twice"),
                Err(ExchangeError::Failed(_)) => assert!(!again, "{method} was not sent again"),
                Err(ExchangeError::NotSent(e)) => panic!("{method}: written, yet reported unsent: {e}"),
                Err(ExchangeError::TimedOut) => panic!("{method}: timed out with no deadline"),
                Err(ExchangeError::Stray) => panic!("{method}: bytes on a connection that got none"),
                Ok(resp) => panic!("{method}: an answer from a closed connection: {resp:?}"),
            }
            assert_eq!(app.await.expect("the app").len(), 2, "the app read the second request");
        }
    }

    #[tokio::test]
    async fn a_body_that_has_all_arrived_is_taken_and_one_still_arriving_is_left_whole() {
        let mut empty = Request::new(Body::default());
        assert_eq!(whole_body(&mut empty), Some(Bytes::new()));
        let mut whole = Request::new(super::super::full(Bytes::from_static(b"abc")));
        assert_eq!(whole_body(&mut whole), Some(Bytes::from_static(b"abc")));
        assert!(whole.body().is_end_stream(), "taken out of the request");
        let parts = futures::stream::iter([
            Ok::<_, crate::timed_body::BoxError>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ]);
        let mut streamed = Request::new(http_body_util::StreamBody::new(parts).boxed());
        assert_eq!(whole_body(&mut streamed), None);
        assert_eq!(body_of(Response::new(streamed.into_body())).await.as_deref(), Ok(&b"abcd"[..]));
    }
}
