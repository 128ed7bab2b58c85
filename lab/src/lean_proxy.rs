//! A minimal HTTP/1.1 reverse proxy, for the bench only: what the transport alone costs in Rust on
//! tokio when it is as lean as it gets. One task per client connection, with its own connection to
//! the app; each message parsed by `httparse` and passed on whole; `Content-Length` framing and
//! nothing else: no chunked bodies, no upgrades, no header hygiene. It is the measuring stick for
//! the sidecar's HTTP work next to nginx and HAProxy (`handover-sidecar lean-proxy`, started by
//! `bench`), not a proxy to put in front of clients: any message it does not handle closes the
//! connection.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug, Clone)]
pub struct LeanProxyArgs {
    /// Where clients connect.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The app.
    #[arg(long)]
    pub app: SocketAddr,
}

/// The largest message (head and body) passed on; a larger one closes the connection.
const MAX_MESSAGE: usize = 256 * 1024;
const MAX_HEADERS: usize = 100;

/// Serves until the process is stopped.
pub async fn run(args: LeanProxyArgs) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen).await.map_err(|e| format!("listen on {}: {e}", args.listen))?;
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let app = args.app;
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Err(e) = relay(client, app).await {
                tracing::debug!(error = %e, "lean proxy connection closed");
            }
        });
    }
}

/// Passes requests from `client` to a connection of its own to `app`, and the answers back, one
/// at a time, until either side closes or sends what this proxy does not handle.
async fn relay(mut client: TcpStream, app: SocketAddr) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(app).await?;
    upstream.set_nodelay(true)?;
    let mut from_client = Inbox::default();
    let mut from_app = Inbox::default();
    loop {
        let Some(request) = from_client.next(&mut client, Side::Request).await? else { return Ok(()) };
        upstream.write_all(from_client.message(request)).await?;
        from_client.consume(request);
        let Some(response) = from_app.next(&mut upstream, Side::Response).await? else { return Ok(()) };
        client.write_all(from_app.message(response)).await?;
        from_app.consume(response);
    }
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// What one connection has sent and this proxy has not passed on yet.
struct Inbox {
    buf: Vec<u8>,
    filled: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox { buf: vec![0; 16 * 1024], filled: 0 }
    }
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl Inbox {
    /// Reads until one whole message is at the start of the buffer; its length, or `None` when the
    /// connection closed cleanly between messages.
    async fn next(&mut self, stream: &mut TcpStream, side: Side) -> std::io::Result<Option<usize>> {
        // The head is parsed until it is complete, not again while its body arrives.
        let mut framed = None;
        loop {
            if framed.is_none() {
                framed = self.framed(side)?;
            }
            if let Some(total) = framed {
                if self.filled >= total {
                    return Ok(Some(total));
                }
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
            } else if self.filled == self.buf.len() {
                if self.buf.len() >= MAX_MESSAGE {
                    return Err(unsupported("head too large"));
                }
                self.buf.resize((self.buf.len() * 2).min(MAX_MESSAGE), 0);
            }
            let read = stream.read(&mut self.buf[self.filled..]).await?;
            if read == 0 {
                return if self.filled == 0 { Ok(None) } else { Err(unsupported("closed mid-message")) };
            }
            self.filled += read;
        }
    }

    /// The length of the message at the start of the buffer, once its head is complete.
    fn framed(&self, side: Side) -> std::io::Result<Option<usize>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let bytes = &self.buf[..self.filled];
        let parsed = match side {
            Side::Request => httparse::Request::new(&mut headers).parse(bytes),
            Side::Response => httparse::Response::new(&mut headers).parse(bytes),
        };
        let head = match parsed.map_err(|e| unsupported(&e.to_string()))? {
            httparse::Status::Complete(head) => head,
            httparse::Status::Partial => return Ok(None),
        };
        let mut body = None;
        for h in headers.iter().take_while(|h| !h.name.is_empty()) {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(unsupported("transfer-encoding"));
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                let length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                if body.is_some() || length.is_none() {
                    return Err(unsupported("content-length"));
                }
                body = length;
            }
        }
        let body = match (side, body) {
            (_, Some(length)) => length,
            (Side::Request, None) => 0,
            // A response without a length would be framed by the close: not handled.
            (Side::Response, None) => return Err(unsupported("response without content-length")),
        };
        let total = head.checked_add(body).filter(|&t| t <= MAX_MESSAGE).ok_or_else(|| unsupported("too large"))?;
        Ok(Some(total))
    }

    fn message(&self, total: usize) -> &[u8] {
        &self.buf[..total]
    }

    /// Drops the message passed on; what followed it (a pipelined request) moves to the front.
    fn consume(&mut self, total: usize) {
        self.buf.copy_within(total..self.filled, 0);
        self.filled -= total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn messages_are_framed_by_content_length_and_pipelined_ones_kept() {
        let (mut writer, mut reader) = pair().await;
        let two = b"POST /a HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nhost: x\r\n\r\n";
        writer.write_all(two).await.expect("write");
        drop(writer);
        let split = two.windows(3).position(|w| w == b"GET").expect("a second request");
        let mut inbox = Inbox::default();
        let first = inbox.next(&mut reader, Side::Request).await.expect("read").expect("a message");
        assert_eq!(inbox.message(first), &two[..split]);
        inbox.consume(first);
        let second = inbox.next(&mut reader, Side::Request).await.expect("read").expect("a message");
        assert_eq!(inbox.message(second), &two[split..]);
        inbox.consume(second);
        assert!(inbox.next(&mut reader, Side::Request).await.expect("clean close").is_none());
    }

    #[tokio::test]
    async fn what_it_does_not_handle_is_an_error_not_a_guess() {
        for bytes in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let (mut writer, mut reader) = pair().await;
            writer.write_all(bytes).await.expect("write");
            let mut inbox = Inbox::default();
            assert!(inbox.next(&mut reader, Side::Request).await.is_err(), "{:?}", String::from_utf8_lossy(bytes));
        }
        let (mut writer, mut reader) = pair().await;
        writer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("write");
        assert!(Inbox::default().next(&mut reader, Side::Response).await.is_err(), "no length: framed by close");
    }
}
