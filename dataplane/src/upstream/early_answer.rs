//! An app's answer that comes before it has read the request's body, then closes the connection
//! (or a peer sidecar's, which passes its app's on).
//!
//! An app may answer a request before it reads all of its body — a 413 for an upload over its
//! limit, a 401 or 403 for one it refuses — and close the connection (hyper's, Go's and Node's
//! servers do so when the rest is large). Its answer is then in the sidecar's receive buffer, and
//! its close, with the body unread, comes as a reset: the sidecar's next write of the body fails.
//! hyper's client ends the exchange at that write's error without reading what came before it,
//! so the client got a 502 in place of the app's answer about as often as not (measured: 4 of 10
//! uploads of 2.6 MB that the demo app refuses at 1 MiB). h2o fixed the same race in its proxy
//! (h2o/h2o#2010).
//!
//! Here the rest of the body is dropped once the app has closed, as if written, so that hyper's
//! client reads on: the app's answer if it sent one, else the connection's end — an error as
//! before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The app's or a peer's stream, for one request under hyper's client: writes that the other
/// side's close refuses (reset, broken pipe) are dropped. Only for a connection that carries one
/// request ([`super::h1::AppConn::into_hyper`], [`super::Upstreams::connect_peer`]): to hyper a
/// dropped write is a written one, so a pooled connection in this state could take the next
/// request into the void.
pub(super) struct EarlyAnswer {
    stream: TcpStream,
    /// The other side closed the connection: what is written from now on is dropped.
    closed: bool,
}

impl EarlyAnswer {
    pub(super) fn new(stream: TcpStream) -> EarlyAnswer {
        EarlyAnswer { stream, closed: false }
    }

    /// The write's outcome; or, when the other side's close refused it, `dropped` (what the write
    /// was given), and every write after it dropped too.
    fn unless_closed<T>(&mut self, written: io::Result<T>, dropped: T) -> io::Result<T> {
        match written {
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                tracing::debug!(error = %e, "the connection was closed while the request was written; reading its answer");
                self.closed = true;
                Ok(dropped)
            }
            written => written,
        }
    }
}

impl AsyncRead for EarlyAnswer {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for EarlyAnswer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, buf));
        Poll::Ready(self.unless_closed(written, buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.closed {
            return Poll::Ready(Ok(len));
        }
        let written = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs));
        Poll::Ready(self.unless_closed(written, len))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let flushed = ready!(Pin::new(&mut self.stream).poll_flush(cx));
        Poll::Ready(self.unless_closed(flushed, ()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let shut = ready!(Pin::new(&mut self.stream).poll_shutdown(cx));
        Poll::Ready(self.unless_closed(shut, ()))
    }
}
