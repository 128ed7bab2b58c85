//! The tunnel an upgrade becomes (WebSocket and friends): the client's and the upstream's
//! upgraded connections joined byte for byte, holding a slot of the connection cap for its life
//! and closed after an idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use handover_common::sync;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// What a request for an upgrade brings from the listener that took it: the slot of the
/// connection cap it took for the tunnel (which outlives its connection's task, and that task's
/// slot, and holds two sockets), and how long the tunnel may carry nothing either way (the
/// listener's keep-alive timeout: a WebSocket that pings less often than that is closed, as nginx
/// closes one quiet for its `proxy_read_timeout`). Given back with the request if no tunnel comes
/// of it.
#[derive(Clone)]
pub struct TunnelSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>, Duration);

impl TunnelSlot {
    pub fn new(slot: Option<OwnedSemaphorePermit>, idle: Duration) -> TunnelSlot {
        TunnelSlot(Arc::new(Mutex::new(slot)), idle)
    }
}

/// Joins the client's and the upstream's upgraded connections, until either side closes or
/// nothing passes either way for the idle timeout of `tunnel` (none without one).
pub(super) fn bridge_upgrade(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    tunnel: Option<TunnelSlot>,
) {
    let (slot, idle) = match tunnel {
        Some(TunnelSlot(slot, idle)) => (sync::lock(&slot).take(), Some(idle)),
        None => (None, None),
    };
    tokio::spawn(async move {
        let _slot = slot;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let last = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        // Every byte either way passes through the client's side: a read of what it sends, a
        // write of what the upstream sends.
        let mut client = Watched { io: TokioIo::new(client), start, last: last.clone() };
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let quiet = async {
            let Some(idle) = idle else { return std::future::pending().await };
            loop {
                let due = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if due <= Instant::now() {
                    return idle;
                }
                tokio::time::sleep_until(due).await;
            }
        };
        tokio::select! {
            copied = copy => if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection ended");
            },
            idle = quiet => tracing::debug!(?idle, "upgraded connection idle for its timeout; closed"),
        }
    });
}

/// An upgraded connection that notes when a byte last passed (milliseconds after `start`).
struct Watched<T> {
    io: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn passed(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.passed();
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.passed();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
