//! The send timeout of a client connection: a write the client takes no byte of for that long
//! fails, and the connection is closed. A client that stops reading (its receive window shut, its
//! buffers full) would otherwise hold its connection, the response's connection to the app and the
//! app's worker writing it for good: the slow-read attack, which nginx bounds with `send_timeout`
//! the same way — counted from a write that cannot go on, started again by any progress.
//!
//! It wraps the client's stream under both HTTP paths (the sidecar's own HTTP/1.1 path and hyper's
//! HTTP/1.1 and HTTP/2). A write that goes through at once, nearly every one, touches no timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client stream whose writes fail after `timeout` without progress.
pub struct SendTimeout<S> {
    inner: S,
    /// `None`: writes wait as long as the client takes.
    timeout: Option<Duration>,
    /// The deadline of the write that waits; made at the first write that ever waits.
    deadline: Option<Pin<Box<Sleep>>>,
    /// A write is waiting and `deadline` is its own.
    waiting: bool,
    timed_out: bool,
    /// Counts the connections cut.
    timeouts: Counter,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, timeout: Option<Duration>, timeouts: Counter) -> SendTimeout<S> {
        SendTimeout { inner, timeout, deadline: None, waiting: false, timed_out: false, timeouts }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A write returned `Pending`: arms the deadline if this is the first time it waits, and fails
    /// the write once the deadline has passed.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(timeout) = self.timeout else { return Poll::Pending };
        if !self.waiting {
            self.waiting = true;
            let at = Instant::now() + timeout;
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let passed = self.deadline.as_mut().is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if !passed {
            return Poll::Pending;
        }
        if !self.timed_out {
            self.timed_out = true;
            self.timeouts.inc();
            tracing::debug!(?timeout, "the client took no byte of its response within the send timeout; closing");
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading (send timeout)")))
    }

    fn went_on<T>(&mut self, done: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.waiting = false;
        done
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx),
            done => self.went_on(done),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx),
            done => self.went_on(done),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_fails_the_write_at_the_timeout_and_one_that_reads_does_not() {
        let (near, mut far) = tokio::io::duplex(64);
        let timeouts = Counter::default();
        let mut stream = SendTimeout::new(near, Some(Duration::from_secs(60)), timeouts.clone());
        // Far reads a little now and then, each within the timeout: the writes go on.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 256];
            for chunk in got.chunks_mut(64) {
                tokio::time::sleep(Duration::from_secs(50)).await;
                far.read_exact(chunk).await.expect("read");
            }
            (far, got)
        });
        stream.write_all(&[7u8; 64 * 5]).await.expect("a reader within the timeout keeps the write going");
        let (far, got) = reader.await.expect("reader");
        assert!(got.iter().all(|&b| b == 7));
        assert_eq!(timeouts.get(), 0);
        // Far stops reading with 64 bytes in the pipe: the next write waits, and fails at 60 s.
        let start = Instant::now();
        let err = stream.write_all(&[1u8; 200]).await.expect_err("no reader");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert_eq!(timeouts.get(), 1, "counted once");
        assert!(stream.write_all(b"more").await.is_err(), "and stays failed");
        assert_eq!(timeouts.get(), 1);
        drop(far);
    }
}
