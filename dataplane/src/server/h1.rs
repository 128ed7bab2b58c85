//! The data port's own HTTP/1.1 path for the common request, in the connection's task: the head
//! parsed once (`httparse`, into the `http` types the proxy works on, header values shared with
//! the read buffer), the response head written once, with the first body bytes when they are at
//! hand. It exists for the cost per request: after the sidecar's own work, hyper's server and
//! client machinery was the largest part of what a request cost (`tests/bench/README.md`).
//!
//! It takes only what has one reading: an HTTP/1.1 request in origin form, with a common method,
//! at most one `Content-Length` of digits and its whole body already read, no `Transfer-Encoding`,
//! `Expect`, `Upgrade` or `Connection: upgrade`, a head within [`MAX_HEAD`]. Anything else — a
//! malformed head, a chunked or slow body, an upgrade, HTTP/1.0, HTTP/2's preface — hands the rest
//! of the connection to hyper, the bytes read so far first ([`Rewind`]): hyper's own refusals
//! (400, 431, smuggling), its body framing and [`crate::timed_body`]'s limits apply there, as they
//! did to every request before this path existed. Nothing is refused here that hyper would take,
//! and nothing taken here that hyper would refuse.

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::send_timeout::SendTimeout;
use crate::http1::{
    HEAD_ROOM, MAX_HEADERS, content_length, has_token, keep_spare, map_for, span, without_body, write_field,
};
use crate::upstream::{Body, full};

/// A client's connection, its writes bounded by the send timeout.
pub type ClientStream = SendTimeout<TcpStream>;

/// The largest request (head and body) this path takes; a longer one goes to hyper.
const MAX_MESSAGE: usize = 64 * 1024;
/// The largest head read before handing the connection to hyper (which reads up to its own limit).
const MAX_HEAD: usize = MAX_MESSAGE;
/// The response buffer's room when the connection starts, and again after it was let go or had
/// grown: a small response's head and body.
const OUT_ROOM: usize = 1024;
/// Bytes of the next requests (pipelined) read while a response is in the works; reading stops
/// there until the response is out. (A client's next request is most often no request at all:
/// what is read meanwhile is for seeing it close.)
const READ_AHEAD: usize = HEAD_ROOM;
/// The most of a response body waiting in the response buffer to be written with what comes next
/// (the head, the next frames): a larger frame is written from where it is.
pub(super) const COALESCE: usize = 16 * 1024;

/// How a connection left this path.
pub enum Outcome {
    /// Closed (by either side, or at shutdown): nothing more to do.
    Closed,
    /// Closed at the header timeout with part of a head read (a client too slow, or one holding
    /// connections open a byte at a time): a refusal, counted and logged by the caller.
    HeadTimedOut,
    /// A request this path does not take: hyper serves the rest, these bytes first.
    Hyper(Rewind),
}

/// How long a connection waits for its client.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a request head: the first from the connection's accept, any other from its first byte.
    pub header: Duration,
    /// For the first byte of the next request after an answer (an idle keep-alive connection).
    pub keepalive: Duration,
}

/// Serves the requests of `stream` that this path takes, with `handle`, until the connection
/// closes or one it does not take arrives, within `timeouts`; once `closing` changes, the request
/// in flight is answered with `Connection: close` and no new one is read.
pub async fn serve<H, F>(
    mut stream: ClientStream,
    client: SocketAddr,
    handle: &H,
    timeouts: Timeouts,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Outcome
where
    H: Fn(Request<Body>, SocketAddr) -> F,
    F: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(HEAD_ROOM);
    let mut out = Vec::with_capacity(OUT_ROOM);
    // The map of the last response written, emptied: the next request's fields go in it.
    let mut spare_map = http::HeaderMap::new();
    // One timer for the connection's life, moved on for each request head: moving a registered
    // timer's deadline later only updates it, where a new timeout per request is put into
    // tokio's timer wheel and taken out again every time (~460 instructions a request, counted).
    let header_deadline = tokio::time::sleep(timeouts.header);
    tokio::pin!(header_deadline);
    // One wait for the shutdown for the connection's life, for the same reason: a `changed()` made
    // anew for each request registers with the channel and leaves it again every time. It never
    // completes but to end the connection, so it is never polled once done.
    let mut shutdown_watch = closing.clone();
    let shutdown = shutdown_watch.changed();
    tokio::pin!(shutdown);
    let mut answered = false;
    loop {
        let now = tokio::time::Instant::now();
        // After an answer, with nothing read ahead, the client may wait the keep-alive timeout
        // before it sends the next request: an ingress keeps its idle upstream connections for
        // 60 s, and a connection this side closes as it sends a request on it is a 502 to its
        // client. The head is due within the header timeout of its first byte (the first
        // request's, of the connection's accept). The first wait is never longer than the header
        // timeout: a head begun meanwhile is timed from its own first byte when it fires.
        let mut idle_since = (answered && buf.is_empty()).then_some(now);
        let mut head_from = now;
        let first_wait = if idle_since.is_some() { timeouts.header.min(timeouts.keepalive) } else { timeouts.header };
        header_deadline.as_mut().reset(now + first_wait);
        // What was read ahead may hold a whole request already.
        let mut parse = !buf.is_empty();
        let (req, client_close) = loop {
            if parse {
                match take_request(&mut buf, &mut spare_map) {
                    Ok(Some(taken)) => break taken,
                    Ok(None) => {}
                    Err(why) => {
                        tracing::trace!(%client, why, "request served by hyper");
                        return Outcome::Hyper(Rewind { prefix: buf.freeze(), stream });
                    }
                }
            }
            if buf.is_empty() && *closing.borrow_and_update() {
                return Outcome::Closed;
            }
            if buf.is_empty() {
                // Reuses the buffer when the requests read into it are gone, else starts a new one.
                buf.reserve(HEAD_ROOM);
            }
            let before = buf.len();
            let read = tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => read,
                () = &mut header_deadline => {
                    let now = tokio::time::Instant::now();
                    let until = match idle_since {
                        Some(since) => since + timeouts.keepalive,
                        None => head_from + timeouts.header,
                    };
                    if until <= now {
                        // Idle for the keep-alive timeout, or no whole head within the header
                        // timeout (a connection that sent nothing is not refusing anything: a
                        // browser opens some ahead of its requests).
                        return if idle_since.is_none() && !buf.is_empty() { Outcome::HeadTimedOut } else { Outcome::Closed };
                    }
                    parse = false;
                    header_deadline.as_mut().reset(until);
                    if idle_since.is_none() {
                        // A head begun after the deadline was set: due at its own.
                        continue;
                    }
                    // Idle past the header timeout (with nothing read: `idle_since` ends at the
                    // first byte), as a proxy's pooled connection is between requests
                    // (ingress-nginx keeps up to 320 per worker, for 60 s): its buffers go until
                    // the next request's bytes are there, ~6 KB of the ~19 KB the connection holds
                    // (`tests/bench/README.md`). A read into a smaller buffer would often end
                    // inside a head whose body is still to come, a request that would then go to
                    // hyper: it waits for the bytes instead, until the keep-alive's end.
                    buf = BytesMut::new();
                    out = Vec::new();
                    spare_map = http::HeaderMap::new();
                    tokio::select! {
                        biased;
                        ready = stream.get_ref().readable() => {
                            if ready.is_err() {
                                return Outcome::Closed;
                            }
                        }
                        () = &mut header_deadline => return Outcome::Closed,
                        _ = &mut shutdown => return Outcome::Closed,
                    }
                    out.reserve(OUT_ROOM);
                    // The head now coming is due within the header timeout, not the keep-alive's.
                    header_deadline.as_mut().reset(tokio::time::Instant::now() + timeouts.header);
                    continue;
                }
                _ = &mut shutdown, if buf.is_empty() => return Outcome::Closed,
            };
            match read {
                Ok(1..) => {
                    if idle_since.take().is_some() {
                        head_from = tokio::time::Instant::now();
                    }
                }
                // Closed or failed.
                _ => return Outcome::Closed,
            }
            // The head is parsed again only once a line ended (a head trickled a byte at a time
            // costs one parse a line, and httparse stops at the header limit), or it is too long.
            parse = buf[before..].contains(&b'\n') || buf.len() >= MAX_HEAD;
        };
        let head_request = req.method() == Method::HEAD;
        let handled = handle(req, client);
        tokio::pin!(handled);
        // The client's socket is read meanwhile: a client that closes it gives up on the request
        // (hyper does the same), and what it sends ahead is kept for the next round.
        let resp = loop {
            tokio::select! {
                biased;
                resp = &mut handled => break resp,
                read = stream.read_buf(&mut buf), if buf.len() < READ_AHEAD => match read {
                    Ok(1..) => {}
                    _ => return Outcome::Closed,
                },
            }
        };
        let close = client_close || *closing.borrow() || wants_close(resp.headers());
        if write_response(&mut stream, &mut out, &mut spare_map, resp, head_request, close).await.is_err() || close {
            return Outcome::Closed;
        }
        answered = true;
        // An idle connection keeps a small buffer, whatever the largest response it carried.
        if out.capacity() > 2 * COALESCE {
            out = Vec::with_capacity(OUT_ROOM);
        }
    }
}

/// Takes the request at the start of `buf` out of it when this path serves it: the request and
/// whether its client asked to close the connection after it; `None` while its head is not whole;
/// why not when it is not for this path. The request's map is made of `spare` ([`map_for`]).
pub(crate) fn take_request(
    buf: &mut BytesMut,
    spare: &mut http::HeaderMap,
) -> Result<Option<(Request<Body>, bool)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err("a long head"),
        Err(_) => return Err("a head httparse refuses"),
    };
    if parsed.version != Some(1) {
        return Err("not HTTP/1.1");
    }
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("DELETE") => Method::DELETE,
        Some("HEAD") => Method::HEAD,
        Some("PATCH") => Method::PATCH,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return Err("another method"),
    };
    let Some(path) = parsed.path.filter(|p| p.starts_with('/')) else {
        return Err("not origin form");
    };
    let path = span(buf, path.as_bytes());
    let mut body_len = None;
    let mut close = false;
    let mut spans = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = match HeaderName::from_bytes(h.name.as_bytes()) {
            Ok(name) => name,
            Err(_) => return Err("a header name http refuses"),
        };
        if name == header::CONTENT_LENGTH {
            match (body_len, content_length(h.value)) {
                (None, Some(len)) => body_len = Some(len),
                _ => return Err("a content-length that is not one number"),
            }
        } else if name == header::TRANSFER_ENCODING || name == header::EXPECT || name == header::UPGRADE {
            return Err("a body framing, expectation or upgrade of hyper's");
        } else if name == header::CONNECTION {
            if has_token(h.value, b"upgrade") {
                return Err("an upgrade");
            }
            close |= has_token(h.value, b"close");
        }
        spans.push((name, span(buf, h.value)));
    }
    let body_len = usize::try_from(body_len.unwrap_or(0)).unwrap_or(usize::MAX);
    let total = match head_len.checked_add(body_len) {
        Some(total) if total <= MAX_MESSAGE => total,
        _ => return Err("a long body"),
    };
    if buf.len() < total {
        // Its body comes in parts: read by hyper, with the body's idle and total limits.
        return Err("a body not read whole yet");
    }
    let message = buf.split_to(total).freeze();
    match build(&message, method, path, head_len, spans, spare) {
        Some(req) => Ok(Some((req, close))),
        None => {
            // httparse took a byte that `http` refuses (in the path or a value): hyper answers it,
            // so the message goes back in front of what followed it.
            let mut whole = BytesMut::with_capacity(message.len() + buf.len());
            whole.extend_from_slice(&message);
            whole.extend_from_slice(buf);
            *buf = whole;
            Err("a path or header value http refuses")
        }
    }
}

/// The request in `message` (head and body), its path and header values shared with it.
fn build(
    message: &Bytes,
    method: Method,
    path: std::ops::Range<usize>,
    head_len: usize,
    headers: Vec<(HeaderName, std::ops::Range<usize>)>,
    spare: &mut http::HeaderMap,
) -> Option<Request<Body>> {
    let body = if message.len() == head_len { Body::default() } else { full(message.slice(head_len..)) };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = Uri::from_maybe_shared(message.slice(path)).ok()?;
    *req.version_mut() = Version::HTTP_11;
    // Room for the fields the proxy adds (`X-Forwarded-For`, `X-Forwarded-Proto`, the session's,
    // a forward's mark): the map is not grown and rehashed on the way to the app.
    let mut map = map_for(spare, headers.len() + 4);
    for (name, value) in headers {
        map.append(name, HeaderValue::from_maybe_shared(message.slice(value)).ok()?);
    }
    *req.headers_mut() = map;
    Some(req)
}

fn wants_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"close"))
}

/// How the response's body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body at all (`HEAD`, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// Writes `resp` (head, then body frames as they come), with `Connection: close` when `close`.
/// Its map, once the head is written, becomes the connection's `spare` ([`keep_spare`]).
async fn write_response(
    stream: &mut ClientStream,
    out: &mut Vec<u8>,
    spare: &mut http::HeaderMap,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // What the framing and the Date need is noted on the way, not looked up in the map.
    let mut declared: Option<Option<u64>> = None;
    let mut dated = false;
    // As hyper's server writes a head (the path of the requests this one does not take): no
    // length on a 1xx or 204 (RFC 9110 8.6: a server MUST NOT send one), and one length where the
    // app sent the same one twice (the app's client took only equal copies).
    let no_length = parts.status.is_informational() || parts.status == http::StatusCode::NO_CONTENT;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this connection's: the app's goes, and the proxy picks none.
            continue;
        }
        if name == header::CONNECTION && close {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            if no_length || declared.is_some() {
                continue;
            }
            declared = Some(content_length(value.as_bytes()));
        }
        dated |= name == header::DATE;
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    keep_spare(spare, parts.headers);
    let declared = declared.flatten();
    let framing = if without_body(parts.status, head_request) {
        Framing::None
    } else if let Some(len) = declared {
        Framing::Length(len)
    } else if let Some(len) = body.size_hint().exact() {
        Framing::Length(len)
    } else {
        Framing::Chunked
    };
    if close {
        write_field(out, b"connection", b"close");
    }
    match framing {
        Framing::Length(len) if declared.is_none() => write_field(out, b"content-length", len.to_string().as_bytes()),
        Framing::Chunked => write_field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !dated {
        date::with(|date| write_field(out, b"date", date));
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        return stream.write_all(out).await;
    }
    let mut left = match framing {
        Framing::Length(len) => len,
        _ => u64::MAX,
    };
    loop {
        // A frame at hand goes out with what is waiting to be written (the head, most often):
        // one write for a small response.
        let frame = match poll_now(&mut body) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue }; // trailers: not sent over HTTP/1
                if data.is_empty() {
                    continue;
                }
                if framing == Framing::Chunked {
                    // Writing to a `Vec` cannot fail.
                    let _ = write!(out, "{:x}\r\n", data.len());
                } else {
                    let len = data.len() as u64;
                    if len > left {
                        return Err(io::Error::other("the response body is longer than its content-length"));
                    }
                    left -= len;
                }
                // A frame joins what waits to be written while both are small; a larger one is
                // written from where it is, beside it: what waits here stays within `COALESCE`
                // past the head however fast the body comes, for a client that does not read too.
                if out.len() + data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                } else {
                    write_both(stream, out, &data).await?;
                    out.clear();
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Some(Err(e)) => {
                // Cut short: the client must see an incomplete message, so the connection ends
                // without the last chunk (or with fewer bytes than declared).
                if !out.is_empty() {
                    stream.write_all(out).await?;
                }
                return Err(io::Error::other(e));
            }
            None => break,
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ if left != 0 => {
            if !out.is_empty() {
                stream.write_all(out).await?;
            }
            return Err(io::Error::other("the response body is shorter than its content-length"));
        }
        _ => {}
    }
    stream.write_all(out).await
}

/// Writes `first`, then `second`, whole: in one system call when the socket takes both.
async fn write_both(stream: &mut ClientStream, mut first: &[u8], mut second: &[u8]) -> io::Result<()> {
    while !first.is_empty() {
        let written = stream.write_vectored(&[io::IoSlice::new(first), io::IoSlice::new(second)]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if written < first.len() {
            first = &first[written..];
        } else {
            second = &second[written - first.len()..];
            first = &[];
        }
    }
    stream.write_all(second).await
}

/// The body's next frame if it is ready now, without waiting.
fn poll_now(body: &mut Body) -> Poll<Option<Result<Frame<Bytes>, crate::timed_body::BoxError>>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(body).poll_frame(&mut cx)
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != second {
                *at = second;
                *text = httpdate::fmt_http_date(now);
            }
            f(text.as_bytes());
        });
    }
}

/// A connection handed to hyper: the bytes this path read, then the rest of the stream.
pub struct Rewind {
    prefix: Bytes,
    stream: ClientStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use tokio::net::TcpListener;

    /// A connected pair: the test's client end, and the server end this path serves, wrapped as
    /// the listener wraps it.
    async fn pair() -> (TcpStream, ClientStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let server = SendTimeout::new(server.expect("accept").0, Some(Duration::from_secs(5)), Default::default());
        (client.expect("connect"), server)
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// The header and keep-alive timeouts both `timeout`.
    fn both(timeout: Duration) -> Timeouts {
        Timeouts { header: timeout, keepalive: timeout }
    }

    /// Serves `server` with [`echo`] within `timeouts`, on a task of its own, with no shutdown.
    fn serve_echo(server: ClientStream, timeouts: Timeouts) -> tokio::task::JoinHandle<Outcome> {
        tokio::spawn(async move {
            let (_open, mut closing) = not_closing();
            serve(server, peer(), &echo, timeouts, &mut closing).await
        })
    }

    /// Reads from `client` until what it read ends with `end`, within 10 s.
    async fn read_until(client: &mut TcpStream, end: &str) -> String {
        let mut reply = Vec::new();
        while !reply.ends_with(end.as_bytes()) {
            let read = tokio::time::timeout(Duration::from_secs(10), client.read_buf(&mut reply)).await;
            let got = read.unwrap_or_else(|_| panic!("{end:?} within 10 s")).expect("read");
            assert!(got > 0, "closed before {end:?}: {:?}", String::from_utf8_lossy(&reply));
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Echoes the method, path and body, with the `x-n` header of the request.
    async fn echo(req: Request<Body>, _: SocketAddr) -> Response<Body> {
        let n = req.headers().get("x-n").cloned();
        let head = format!("{} {} ", req.method(), req.uri());
        let body = crate::upstream::read_at_most(req.into_body(), 1 << 20).await.expect("body");
        let mut resp = Response::new(full(Bytes::from([head.as_bytes(), &body].concat())));
        if let Some(n) = n {
            resp.headers_mut().insert("x-n", n);
        }
        resp
    }

    /// A shutdown signal that is not given (while the sender lives).
    fn not_closing() -> (tokio::sync::watch::Sender<bool>, tokio::sync::watch::Receiver<bool>) {
        tokio::sync::watch::channel(false)
    }

    async fn read_all(mut stream: TcpStream) -> String {
        let mut all = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await.expect("closed in time");
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, server) = pair().await;
        let requests = b"GET /a HTTP/1.1\r\nhost: x\r\nx-n: 1\r\n\r\n\
            POST /b?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nx-n: 2\r\n\r\nhello\
            DELETE /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-n: 3\r\n\r\n";
        client.write_all(requests).await.expect("write");
        let (_open, mut closing) = not_closing();
        let outcome = serve(server, peer(), &echo, both(Duration::from_secs(5)), &mut closing).await;
        assert!(matches!(outcome, Outcome::Closed), "every request taken here");
        let replies = read_all(client).await;
        let bodies: Vec<&str> = replies.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(bodies.len(), 3, "{replies}");
        for (i, (reply, body)) in bodies.iter().zip(["GET /a ", "POST /b?q=1 hello", "DELETE /c "]).enumerate() {
            let (head, got) = reply.split_once("\r\n\r\n").expect("a head");
            assert_eq!(got, body);
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            assert!(head.contains(&format!("x-n: {}", i + 1)), "{head}");
            assert!(head.contains("\r\ndate: ") || head.starts_with("date: "), "{head}");
        }
        assert!(bodies[2].contains("connection: close"), "the client asked to close: {}", bodies[2]);
    }

    #[tokio::test]
    async fn what_this_path_does_not_take_goes_to_hyper_with_every_byte_read() {
        for request in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\ncontent-length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nhalf",
            b"POST / HTTP/1.1\r\ncontent-length: 999999999\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-folded: a\r\n b\r\n\r\n",
            b"GET http://elsewhere/ HTTP/1.1\r\n\r\n",
            b"CONNECT elsewhere:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header: 1\r\n\r\n",
            // httparse takes the backtick, `http`'s URI does not (a fuzzer's finding).
            b"GET /car`t HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
        ] {
            let (mut client, server) = pair().await;
            client.write_all(request).await.expect("write");
            let (_open, mut closing) = not_closing();
            let outcome = serve(server, peer(), &echo, both(Duration::from_secs(5)), &mut closing).await;
            let Outcome::Hyper(mut rest) = outcome else {
                panic!("taken here: {:?}", String::from_utf8_lossy(request));
            };
            let mut handed = vec![0; request.len()];
            rest.read_exact(&mut handed).await.expect("the bytes read so far");
            assert_eq!(handed, request);
        }
    }

    #[tokio::test]
    async fn a_head_sent_in_two_writes_is_answered_and_an_idle_connection_closed_at_the_keepalive_timeout() {
        let (mut client, server) = pair().await;
        let served =
            serve_echo(server, Timeouts { header: Duration::from_secs(3600), keepalive: Duration::from_millis(300) });
        client.write_all(b"GET /slow HT").await.expect("write");
        tokio::task::yield_now().await;
        client.write_all(b"TP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        // Answered, then the idle connection is closed once the keep-alive timeout passes.
        let replies = read_all(client).await;
        assert!(replies.starts_with("HTTP/1.1 200 OK\r\n") && replies.ends_with("GET /slow "), "{replies}");
        assert!(matches!(served.await.expect("served"), Outcome::Closed));
    }

    #[tokio::test]
    async fn a_keep_alive_connection_quiet_past_the_header_timeout_is_served_and_its_head_timed_from_its_first_byte() {
        let (mut client, server) = pair().await;
        let served =
            serve_echo(server, Timeouts { header: Duration::from_millis(200), keepalive: Duration::from_secs(3600) });
        client.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        read_until(&mut client, "GET /first ").await;
        // Quiet for five header timeouts, as a proxy's pooled connection is between requests: the
        // connection lets its buffers go, and takes them again once the next bytes are there. Two
        // requests in one write, the first with a body: a read into less room than its head and
        // body would hand the connection to hyper, which this test does not serve.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let body = "b".repeat(300);
        let later = format!(
            "POST /later HTTP/1.1\r\nhost: x\r\nx-n: 1\r\ncontent-length: {}\r\n\r\n{body}\
             GET /pipelined HTTP/1.1\r\nhost: x\r\nx-n: 2\r\nx-pad: {}\r\n\r\n",
            body.len(),
            "p".repeat(100)
        );
        client.write_all(later.as_bytes()).await.expect("write");
        let replies = read_until(&mut client, "GET /pipelined ").await;
        assert!(replies.contains("x-n: 1\r\n") && replies.contains(&format!("POST /later {body}")), "{replies}");
        // A head begun and never ended, after another quiet, is cut at the header timeout, not
        // kept for the keep-alive's.
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"GET /never-ends HT").await.expect("write");
        assert_eq!(read_all(client).await, "", "closed with nothing more");
        assert!(matches!(served.await.expect("served"), Outcome::HeadTimedOut), "told apart, to be counted");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_cancels_its_request() {
        let (client, server) = pair().await;
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let dropped_tx = std::sync::Mutex::new(Some(dropped_tx));
        let hang = |_req: Request<Body>, _| {
            // Dropped (cancelled) with the future: tells the test.
            let guard = dropped_tx.lock().expect("lock").take();
            async move {
                let _guard = guard;
                std::future::pending::<Response<Body>>().await
            }
        };
        let mut client = client;
        client.write_all(b"GET /long-poll HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let (_open, mut closing) = not_closing();
        let served = serve(server, peer(), &hang, both(Duration::from_secs(5)), &mut closing);
        let close = async move {
            tokio::task::yield_now().await;
            drop(client);
        };
        let (outcome, ()) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(served, close) })
            .await
            .expect("the request ended with its client");
        assert!(matches!(outcome, Outcome::Closed));
        assert!(dropped_rx.await.is_err(), "the handler's future was dropped");
    }

    fn streamed(parts: Vec<Result<&'static str, &'static str>>) -> Body {
        let frames = futures::stream::iter(parts.into_iter().map(|p| {
            p.map(|s| Frame::data(Bytes::from_static(s.as_bytes()))).map_err(crate::timed_body::BoxError::from)
        }));
        http_body_util::StreamBody::new(frames).boxed()
    }

    async fn answer(request: &'static [u8], resp: fn() -> Response<Body>) -> String {
        let (mut client, server) = pair().await;
        client.write_all(request).await.expect("write");
        let handle = move |_req: Request<Body>, _| async move { resp() };
        let (_open, mut closing) = not_closing();
        let served = serve(server, peer(), &handle, both(Duration::from_millis(200)), &mut closing);
        let (_, reply) = tokio::join!(served, read_all(client));
        reply
    }

    #[tokio::test]
    async fn large_frames_are_written_beside_the_buffer_and_arrive_whole_in_order() {
        const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        // Around COALESCE: small ones joined, larger ones written from where they are.
        static PARTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            [10_000, 20_000, 1, COALESCE, 5, 70_000].iter().enumerate().map(|(i, &n)| i.to_string().repeat(n)).collect()
        });
        fn parts() -> Vec<Result<&'static str, &'static str>> {
            PARTS.iter().map(|p| Ok(p.as_str())).collect()
        }
        let whole: String = PARTS.concat();
        let chunked = answer(GET, || Response::new(streamed(parts()))).await;
        let chunks: String = PARTS.iter().map(|p| format!("{:x}\r\n{p}\r\n", p.len())).collect();
        assert!(chunked.ends_with(&format!("\r\n\r\n{chunks}0\r\n\r\n")), "chunked: {} bytes", chunked.len());
        let by_length = answer(GET, || {
            let mut resp = Response::new(streamed(parts()));
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(PARTS.concat().len()));
            resp
        })
        .await;
        assert!(by_length.ends_with(&format!("\r\n\r\n{whole}")), "by length: {} bytes", by_length.len());
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_by_chunks_or_not_at_all() {
        const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let chunked = answer(GET, || Response::new(streamed(vec![Ok("hel"), Ok("lo")]))).await;
        assert!(chunked.contains("transfer-encoding: chunked\r\n"), "{chunked}");
        assert!(chunked.ends_with("\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"), "{chunked}");

        let head =
            answer(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n", || Response::new(full(Bytes::from_static(b"body")))).await;
        assert!(head.ends_with("\r\n\r\n") && !head.contains("body"), "{head}");

        let no_content = answer(GET, || {
            let mut resp = Response::new(Body::default());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        })
        .await;
        assert!(no_content.starts_with("HTTP/1.1 204 No Content\r\n"), "{no_content}");
        assert!(!no_content.contains("content-length") && !no_content.contains("transfer-encoding"), "{no_content}");

        // The app's own length is kept, and a body that breaks off ends the connection short of it.
        let cut = answer(GET, || {
            let mut resp = Response::new(streamed(vec![Ok("hel"), Err("the app went away")]));
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            resp
        })
        .await;
        assert!(cut.contains("content-length: 5\r\n") && cut.ends_with("\r\n\r\nhel"), "{cut}");
        let cut_chunked = answer(GET, || Response::new(streamed(vec![Ok("hel"), Err("the app went away")]))).await;
        assert!(cut_chunked.ends_with("3\r\nhel\r\n"), "no last chunk: {cut_chunked}");

        // A body larger than what is gathered before a write (its frames all at hand): whole.
        let large = answer(GET, || Response::new(streamed(vec![Ok("0123456789abcdef"); 10_000]))).await;
        assert_eq!(large.matches("\r\n10\r\n0123456789abcdef").count(), 10_000);
        assert!(large.ends_with("0123456789abcdef\r\n0\r\n\r\n"));
    }

    #[tokio::test]
    async fn once_closing_the_answer_says_close_and_no_new_request_is_read() {
        let (tx, mut closing) = tokio::sync::watch::channel(false);
        let (mut client, server) = pair().await;
        client.write_all(b"GET /last HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let handle = |req: Request<Body>, client| {
            let _ = tx.send(true);
            echo(req, client)
        };
        let outcome = serve(server, peer(), &handle, both(Duration::from_secs(5)), &mut closing).await;
        assert!(matches!(outcome, Outcome::Closed));
        let reply = read_all(client).await;
        assert!(reply.contains("connection: close\r\n") && reply.ends_with("GET /last "), "{reply}");
    }

    #[tokio::test]
    async fn an_idle_connection_closes_at_shutdown_after_its_requests_were_answered() {
        // Answered, then idle: a shutdown that comes later ends the connection at once, long
        // before its keep-alive timeout (the wait for the shutdown outlives each request's
        // round). Within the header timeout, and past it, when the connection's buffers are gone.
        for (header, quiet) in
            [(Duration::from_secs(3600), Duration::ZERO), (Duration::from_millis(100), Duration::from_millis(500))]
        {
            let (tx, mut closing) = tokio::sync::watch::channel(false);
            let (mut client, server) = pair().await;
            let timeouts = Timeouts { header, keepalive: Duration::from_secs(3600) };
            let served = tokio::spawn(async move {
                serve(server, peer(), &echo, timeouts, &mut closing).await;
            });
            for _ in 1..=2 {
                client.write_all(b"GET /idle HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
                read_until(&mut client, "GET /idle ").await;
            }
            tokio::time::sleep(quiet).await;
            let _ = tx.send(true);
            tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .expect("the idle connection was closed at shutdown, within 10 s")
                .expect("served");
            assert_eq!(read_all(client).await, "", "nothing more after the shutdown");
        }
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_header_timeout_still_closes_at_the_keepalive_timeout() {
        let (mut client, server) = pair().await;
        let keepalive = Duration::from_millis(600);
        let served = serve_echo(server, Timeouts { header: Duration::from_millis(100), keepalive });
        // The keep-alive timeout counts from the answer, which comes after this.
        let sent = std::time::Instant::now();
        client.write_all(b"GET /only HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        read_until(&mut client, "GET /only ").await;
        assert_eq!(read_all(client).await, "", "closed with nothing more");
        // Not at the header timeout, when its buffers went, but once the keep-alive's is over.
        let closed = sent.elapsed();
        assert!(closed >= keepalive, "closed {closed:?} after the request was sent");
        assert!(matches!(served.await.expect("served"), Outcome::Closed));
    }
}
