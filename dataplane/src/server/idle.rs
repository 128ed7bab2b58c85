//! The idle timeout of the connections hyper serves. Its HTTP/1.1 server closes a keep-alive
//! connection that sends no request head within its header read timeout; its HTTP/2 server keeps a
//! connection with no stream open for as long as the client likes, so a client could hold every
//! connection slot of the pod (`--max-connections`) with a preface each and nothing after. Here a
//! connection with no request in flight for the header timeout is shut down gracefully (HTTP/2: a
//! GOAWAY, then the close), as nginx closes an idle HTTP/2 connection at its `keepalive_timeout`.
//!
//! A request is in flight from its arrival to the end of its response body (or until either is
//! dropped): a long download, a server-sent event stream or a slow upload keeps its connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::watch;

use crate::timed_body::BoxError;
use crate::upstream::Body;

/// Counts the requests of one connection in flight.
#[derive(Clone)]
pub(crate) struct Requests(Arc<watch::Sender<usize>>);

/// One request in flight, until dropped.
pub(crate) struct InFlight(Arc<watch::Sender<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Requests {
    /// A connection's count, and the future that resolves once it has had no request in flight
    /// for `timeout` (counted from its accept by hyper, or from its last request's end).
    pub(crate) fn new(timeout: Duration) -> (Requests, impl Future<Output = ()>) {
        let (count, mut watch) = watch::channel(0);
        let idle = async move {
            loop {
                if watch.wait_for(|&n| n == 0).await.is_err() {
                    // The connection (which owns the count) is gone: nothing to time.
                    return std::future::pending().await;
                }
                tokio::select! {
                    () = tokio::time::sleep(timeout) => return,
                    // A request came (or came and went): counted again from when none is left.
                    _ = watch.changed() => {}
                }
            }
        };
        (Requests(Arc::new(count)), idle)
    }

    /// A request arrived.
    pub(crate) fn enter(&self) -> InFlight {
        self.0.send_modify(|n| *n += 1);
        InFlight(Arc::clone(&self.0))
    }
}

/// `resp` with `in_flight` held until its body has ended or is dropped.
pub(crate) fn held_until_sent(resp: Response<Body>, in_flight: InFlight) -> Response<Body> {
    resp.map(|body| Held { body, _in_flight: in_flight }.boxed())
}

/// A response body holding its request's [`InFlight`].
struct Held {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
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
    async fn idle_is_counted_from_the_last_request_s_end() {
        let (requests, idle) = Requests::new(Duration::from_secs(10));
        tokio::pin!(idle);
        let resp = held_until_sent(Response::new(full("body")), requests.enter());
        // In flight for longer than the timeout: not idle.
        tokio::select! {
            () = &mut idle => panic!("idle while a request was in flight"),
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        let sent = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(sent, "body");
        // The body has ended: idle 10 s from now, not before.
        let ended = tokio::time::Instant::now();
        (&mut idle).await;
        assert_eq!(ended.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_response_ends_its_request() {
        let (requests, idle) = Requests::new(Duration::from_secs(10));
        let in_flight = requests.enter();
        drop(held_until_sent(Response::new(full("")), in_flight));
        let start = tokio::time::Instant::now();
        idle.await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
