//! A client's request body that must keep arriving: an idle timeout (no bytes for a while) and a
//! total deadline, so a body trickled byte by byte cannot hold a connection, a task and an
//! upstream connection for as long as the client likes.
//!
//! The clocks start when the body is first read and waits (a request held while the app
//! restarts is not charged for that wait), and cost nothing for bodies that arrive at once.
//!
//! Its failures are marked as the client's ([`BodyTimeout`], [`BodyBroken`]): the app's or a
//! peer's exchange that they cut short is answered for the client's fault, not taken for the
//! app's or the peer's.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// The error type of bodies the proxy carries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    #[error("no request body bytes for {0:?}")]
    Idle(Duration),
    #[error("request body not complete within {0:?}")]
    Total(Duration),
}

/// A request body that broke off (its client closed or reset it) or whose framing did not parse
/// (a chunk size that is no number): the error hyper's server gave, marked as the client's.
#[derive(Debug, thiserror::Error)]
#[error("the request body broke off or did not parse: {0}")]
pub struct BodyBroken(#[source] BoxError);

/// Limits for request bodies.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub idle: Duration,
    pub total: Duration,
}

/// The two clocks of a body, armed on its first wait.
struct Timers {
    idle: Pin<Box<Sleep>>,
    total: Pin<Box<Sleep>>,
}

/// `inner` with the limits applied; `timeouts` counts bodies cut off, `broken` those that failed.
pub struct TimedBody<B> {
    inner: B,
    limits: BodyLimits,
    timeouts: Counter,
    broken: Counter,
    timers: Option<Timers>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: BodyLimits, timeouts: Counter, broken: Counter) -> Self {
        TimedBody { inner, limits, timeouts, broken, timers: None }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(timers) = this.timers.as_mut() {
                    timers.idle.as_mut().reset(Instant::now() + this.limits.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let broken = BodyBroken(e.into());
                this.broken.inc();
                tracing::warn!(error = %broken, "request body failed");
                Poll::Ready(Some(Err(Box::new(broken))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let limits = this.limits;
                let timers = this.timers.get_or_insert_with(|| {
                    let now = Instant::now();
                    Timers {
                        idle: Box::pin(tokio::time::sleep_until(now + limits.idle)),
                        total: Box::pin(tokio::time::sleep_until(now + limits.total)),
                    }
                });
                let cut = if timers.total.as_mut().poll(cx).is_ready() {
                    BodyTimeout::Total(limits.total)
                } else if timers.idle.as_mut().poll(cx).is_ready() {
                    BodyTimeout::Idle(limits.idle)
                } else {
                    return Poll::Pending;
                };
                this.timeouts.inc();
                tracing::warn!(error = %cut, "request body cut off");
                Poll::Ready(Some(Err(Box::new(cut))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn trickle(gaps: Vec<Duration>) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let stream = futures::stream::unfold(gaps.into_iter(), |mut gaps| async move {
            let gap = gaps.next()?;
            tokio::time::sleep(gap).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), gaps))
        });
        StreamBody::new(Box::pin(stream))
    }

    const LIMITS: BodyLimits = BodyLimits { idle: Duration::from_secs(10), total: Duration::from_secs(60) };

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_passes() {
        let body =
            TimedBody::new(trickle(vec![Duration::from_secs(5); 10]), LIMITS, Counter::default(), Counter::default());
        assert_eq!(body.collect().await.expect("complete").to_bytes().len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_at_the_idle_timeout() {
        let counter = Counter::default();
        let body = TimedBody::new(
            trickle(vec![Duration::ZERO, Duration::from_secs(11)]),
            LIMITS,
            counter.clone(),
            Counter::default(),
        );
        let err = body.collect().await.expect_err("cut off");
        assert!(err.to_string().contains("no request body bytes"), "{err}");
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test]
    async fn a_body_that_fails_is_marked_as_the_clients_and_counted() {
        let broken = Counter::default();
        let parts: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"x"))), Err("invalid chunk size line".into())];
        let body =
            TimedBody::new(StreamBody::new(futures::stream::iter(parts)), LIMITS, Counter::default(), broken.clone());
        let err = body.collect().await.expect_err("failed");
        let marked = err.downcast_ref::<BodyBroken>().expect("marked as the client's");
        assert!(marked.to_string().contains("invalid chunk size line"), "{marked}");
        assert_eq!(broken.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_cut_at_the_total_deadline() {
        // One byte every 5 s never trips the idle timeout, but 20 of them take 100 s.
        let body =
            TimedBody::new(trickle(vec![Duration::from_secs(5); 20]), LIMITS, Counter::default(), Counter::default());
        let err = body.collect().await.expect_err("cut off");
        assert!(err.to_string().contains("not complete within"), "{err}");
    }
}
