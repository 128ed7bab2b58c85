//! What the sidecar times on a connection hyper serves, which hyper does not time itself.
//!
//! **Idle.** hyper's HTTP/1.1 server closes a keep-alive connection that sends no request head
//! within its header read timeout; its HTTP/2 server keeps a connection with no stream open for as
//! long as the client likes, so a client could hold every connection slot of the pod
//! (`--max-connections`) with a preface each and nothing after. A connection with no request in
//! flight — for the header timeout before its first request, for the keep-alive timeout after its
//! last one — is shut down gracefully (HTTP/2: a GOAWAY, then the close), as nginx closes an idle
//! HTTP/2 connection at its `keepalive_timeout`. A request is in flight from
//! its arrival to the end of its response body (or until either is dropped): a long download, a
//! server-sent event stream or a slow upload keeps its connection.
//!
//! **Answers the client does not take.** A client that stops reading its socket is cut by the send
//! timeout on its writes (`send_timeout.rs`). An HTTP/2 client can read its socket, answer pings,
//! and still take nothing: it never opens its stream's flow-control window, and hyper then stops
//! asking the answer's body for more — holding the app's connection that writes it, for good. So
//! an answer that handed hyper a data frame and was not asked for the next one within the send
//! timeout (counted in quarters of it, so between one and one and a quarter) cuts its connection.
//! An answer waiting for the app (a long-poll, SSE between events) is not waiting on the client and
//! is never cut here.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::timed_body::BoxError;
use crate::upstream::Body;

/// Ticks of the stall check a send timeout is.
const TICKS_PER_TIMEOUT: u32 = 4;
/// The answers waiting on the client, by the tick they began to wait at, modulo this: a wait is
/// found stalled at age `TICKS_PER_TIMEOUT + 1` (a full send timeout at least), before its slot
/// is the current tick's again.
const TICK_SLOTS: usize = 8;

/// One connection's requests: how many are in flight, and which answers wait on the client.
#[derive(Clone)]
pub(crate) struct Requests(Arc<Shared>);

struct Shared {
    in_flight: watch::Sender<usize>,
    /// Ticks of the stall check so far.
    tick: AtomicU64,
    /// Answers that handed a data frame at tick `t` and were not asked for more since, at
    /// `t % TICK_SLOTS`.
    waiting: [AtomicUsize; TICK_SLOTS],
}

/// One request in flight, until dropped, and the slots of the connection cap it holds (an HTTP/2
/// stream's, an upload's).
pub(crate) struct InFlight(Arc<Shared>, Option<OwnedSemaphorePermit>);

impl InFlight {
    /// Holds `slots` for as long as the request is in flight.
    pub(crate) fn hold(&mut self, slots: Option<OwnedSemaphorePermit>) {
        self.1 = slots;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Requests {
    /// A connection's requests, and the future that resolves once it has had no request in flight
    /// for `first_within` from its start, or for `keepalive` from its last request's end.
    pub(crate) fn new(first_within: Duration, keepalive: Duration) -> (Requests, impl Future<Output = ()>) {
        let (in_flight, mut watch) = watch::channel(0);
        let idle = async move {
            let mut idle_timeout = first_within;
            loop {
                if watch.wait_for(|&n| n == 0).await.is_err() {
                    // The connection (which owns the count) is gone: nothing to time.
                    return std::future::pending().await;
                }
                tokio::select! {
                    () = tokio::time::sleep(idle_timeout) => return,
                    // A request came (or came and went): counted again from when none is left.
                    _ = watch.changed() => idle_timeout = keepalive,
                }
            }
        };
        let shared = Shared { in_flight, tick: AtomicU64::new(0), waiting: Default::default() };
        (Requests(Arc::new(shared)), idle)
    }

    /// A request arrived.
    pub(crate) fn enter(&self) -> InFlight {
        self.0.in_flight.send_modify(|n| *n += 1);
        InFlight(Arc::clone(&self.0), None)
    }

    /// Resolves once an answer has waited on the client for `send_timeout` (never with `None`).
    pub(crate) async fn stalled(&self, send_timeout: Option<Duration>) {
        let Some(timeout) = send_timeout else { return std::future::pending().await };
        // (At least a millisecond: `interval` refuses a zero period.)
        let mut ticks = tokio::time::interval((timeout / TICKS_PER_TIMEOUT).max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.tick_finds_a_stall() {
                return;
            }
        }
    }

    /// Moves the stall check one tick on: whether an answer has waited on the client since
    /// `TICKS_PER_TIMEOUT + 1` ticks ago or earlier.
    fn tick_finds_a_stall(&self) -> bool {
        let now = self.0.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let oldest = u64::from(TICKS_PER_TIMEOUT) + 1;
        (oldest..TICK_SLOTS as u64)
            .filter_map(|age| now.checked_sub(age))
            .any(|t| self.0.waiting[t as usize % TICK_SLOTS].load(Ordering::Relaxed) > 0)
    }
}

/// A request hyper serves, until its answer begins: dropped before that, its client gave up
/// (hyper drops the work of an HTTP/2 stream its client reset), which is counted and logged.
pub(crate) struct Unanswered {
    abandoned: Option<Counter>,
    client: SocketAddr,
}

impl Unanswered {
    pub(crate) fn new(abandoned: Counter, client: SocketAddr) -> Unanswered {
        Unanswered { abandoned: Some(abandoned), client }
    }

    /// The answer began: nothing to count.
    pub(crate) fn answered(mut self) {
        self.abandoned = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(abandoned) = self.abandoned.take() {
            abandoned.inc();
            // Debug: a browser cancels requests as it leaves a page.
            tracing::debug!(client = %self.client, "the client gave up on a request before its answer began; its work dropped");
        }
    }
}

/// `resp` with `in_flight` held until its body has ended or is dropped, and its waits on the
/// client counted.
pub(crate) fn held_until_sent(resp: Response<Body>, in_flight: InFlight) -> Response<Body> {
    resp.map(|body| Held { body, in_flight, waiting_since: None }.boxed())
}

/// A response body holding its request's [`InFlight`].
struct Held {
    body: Body,
    in_flight: InFlight,
    /// The tick it handed a data frame at, while it is not asked for the next.
    waiting_since: Option<u64>,
}

impl Held {
    fn stop_waiting(&mut self) {
        if let Some(t) = self.waiting_since.take() {
            self.in_flight.0.waiting[t as usize % TICK_SLOTS].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Asked again: what it handed before was taken.
        self.stop_waiting();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            let shared = &self.in_flight.0;
            let t = shared.tick.load(Ordering::Relaxed);
            shared.waiting[t as usize % TICK_SLOTS].fetch_add(1, Ordering::Relaxed);
            self.waiting_since = Some(t);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::full;

    #[tokio::test(start_paused = true)]
    async fn idle_is_counted_from_the_start_then_from_the_last_request_s_end() {
        let (requests, idle) = Requests::new(Duration::from_secs(2), Duration::from_secs(10));
        tokio::pin!(idle);
        // Before its first request, a connection is given the first timeout.
        tokio::select! {
            () = &mut idle => panic!("idle before the first timeout"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let resp = held_until_sent(Response::new(full("body")), requests.enter());
        // In flight for longer than the timeout: not idle.
        tokio::select! {
            () = &mut idle => panic!("idle while a request was in flight"),
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        let sent = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(sent, "body");
        // The body has ended: idle the keep-alive timeout from now, not before.
        let ended = tokio::time::Instant::now();
        (&mut idle).await;
        assert_eq!(ended.elapsed(), Duration::from_secs(10));
        // A connection that sends no request is idle at the first timeout.
        let (_requests, idle) = Requests::new(Duration::from_secs(2), Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        idle.await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_response_ends_its_request() {
        let (requests, idle) = Requests::new(Duration::from_secs(10), Duration::from_secs(10));
        let in_flight = requests.enter();
        drop(held_until_sent(Response::new(full("")), in_flight));
        let start = tokio::time::Instant::now();
        idle.await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_not_asked_for_more_within_the_send_timeout_is_a_stall() {
        let (requests, _idle) = Requests::new(Duration::from_secs(10), Duration::from_secs(10));
        let timeout = Some(Duration::from_secs(60));
        let mut body = held_until_sent(Response::new(full("data")), requests.enter()).into_body();
        let start = tokio::time::Instant::now();
        let stalled = requests.stalled(timeout);
        tokio::pin!(stalled);
        // Asked for its frame at 50 s: it waits on the client from then on...
        tokio::select! {
            () = &mut stalled => panic!("a stall before any frame was handed"),
            () = tokio::time::sleep(Duration::from_secs(50)) => {}
        }
        assert!(body.frame().await.expect("a frame").expect("data").is_data());
        // ... and is a stall one to one and a quarter send timeouts later.
        (&mut stalled).await;
        let waited = start.elapsed() - Duration::from_secs(50);
        assert!(waited >= Duration::from_secs(60) && waited <= Duration::from_secs(75), "{waited:?}");
        // Asked again (it has ended): no longer waiting.
        assert!(body.frame().await.is_none());
        let ticks = requests.stalled(timeout);
        tokio::select! {
            () = ticks => panic!("a stall with nothing waiting"),
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }

    /// A body that never has a frame: a long-poll the app has not answered.
    struct Unanswered;

    impl hyper::body::Body for Unanswered {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waiting_for_the_app_is_no_stall() {
        let (requests, _idle) = Requests::new(Duration::from_secs(10), Duration::from_secs(10));
        let mut body = held_until_sent(Response::new(Unanswered.boxed()), requests.enter()).into_body();
        let polled = tokio::time::timeout(Duration::from_secs(1), body.frame()).await;
        assert!(polled.is_err(), "no frame");
        tokio::select! {
            () = requests.stalled(Some(Duration::from_secs(60))) => panic!("a stall while waiting for the app"),
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}
