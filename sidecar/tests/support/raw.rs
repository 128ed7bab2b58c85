//! One raw HTTP/1.1 exchange on a new connection: the bytes a test writes, exactly (a hostile
//! client's, a smuggling attempt's), and the answer split into status, head and body; a tunnel
//! asked for the same way.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `request` (it should say `Connection: close`) and reads until the other side closes:
/// the status, the head and the body.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply))
        .await
        .expect("the answer within 20 s")
        .expect("read");
    split_reply(&reply)
}

/// An answer's status, head and body.
pub fn split_reply(reply: &[u8]) -> (u16, String, Vec<u8>) {
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&reply[..end]).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status code");
    (status, head, reply[end + 4..].to_vec())
}

/// Asks for a tunnel through the sidecar at `addr` to the demo app's echo (`Upgrade: echo`): its
/// connection and the answer's head.
pub async fn ask_tunnel(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: demo\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let head = super::response_head(&mut stream).await;
    (stream, head)
}
