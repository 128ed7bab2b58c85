//! Listening sockets: the sidecar's data and admin ports and the operator's metrics port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

/// A listener on `addr`. `[::]` listens on IPv6 and IPv4 alike, IPv4 clients arriving as mapped
/// addresses (`IPV6_V6ONLY` off, whatever the node's `net.ipv6.bindv6only`): a pod's IP may be of
/// either family (IPv6-only and dual-stack clusters), and a mesh proxy or the app itself may still
/// connect over 127.0.0.1. Where the kernel has no IPv6 (`ipv6.disable=1`), `[::]` falls back to
/// `0.0.0.0`, said in the log. Any other address is bound as given.
pub async fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return TcpListener::bind(addr).await;
    }
    match dual_stack(addr.port()) {
        Ok(listener) => TcpListener::from_std(listener),
        Err(e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::warn!(error = %e, %addr, fallback = %v4, "cannot listen on IPv6; listening on IPv4 only");
            TcpListener::bind(v4).await
        }
    }
}

/// `[::]:port` with IPv4 clients accepted too, non-blocking, with tokio's backlog and
/// `SO_REUSEADDR` (as `TcpListener::bind` sets them).
fn dual_stack(port: u16) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unspecified_ipv6_address_accepts_both_families() {
        let listener = listen("[::]:0".parse().expect("an address")).await.expect("listen on [::]");
        let port = listener.local_addr().expect("addr").port();
        for from in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            let (connected, accepted) = tokio::join!(tokio::net::TcpStream::connect((from, port)), listener.accept());
            connected.unwrap_or_else(|e| panic!("connect from {from}: {e}"));
            let (_, peer) = accepted.expect("accept");
            assert_eq!(peer.ip().to_canonical(), from);
        }
    }

    #[tokio::test]
    async fn any_other_address_is_bound_as_given() {
        let listener = listen("127.0.0.1:0".parse().expect("an address")).await.expect("listen");
        assert_eq!(listener.local_addr().expect("addr").ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
