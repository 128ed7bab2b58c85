//! Listening sockets: the sidecar's data and admin ports and the operator's metrics port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

/// A listener on `addr`. `[::]` listens on IPv6 and IPv4 alike, IPv4 clients arriving as mapped
/// addresses (`IPV6_V6ONLY` off, whatever the node's `net.ipv6.bindv6only`): a pod's IP may be of
/// either family (IPv6-only and dual-stack clusters), and a mesh proxy or the app itself may still
/// connect over 127.0.0.1. Where the kernel has no IPv6 (`ipv6.disable=1`: no IPv6 socket can be
/// made), `[::]` falls back to `0.0.0.0`, said in the log. Any other failure is the caller's: a port
/// already taken is not quietly served on one family only. Any other address is bound as given.
pub async fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    if addr.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return TcpListener::bind(addr).await;
    }
    let socket = match Socket::new(Domain::IPV6, Type::STREAM, None) {
        Ok(socket) => socket,
        Err(e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::warn!(error = %e, %addr, fallback = %v4, "no IPv6 in this kernel; listening on IPv4 only");
            return TcpListener::bind(v4).await;
        }
    };
    TcpListener::from_std(dual_stack(socket, addr)?)
}

/// `socket` (IPv6) listening on `addr` with IPv4 clients accepted too, non-blocking, with tokio's
/// backlog and `SO_REUSEADDR` (as `TcpListener::bind` sets them).
fn dual_stack(socket: socket2::Socket, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
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
    async fn a_port_taken_on_ipv6_is_an_error_not_an_ipv4_only_listener() {
        use socket2::{Domain, Socket, Type};
        // Another process's IPv6-only listener: the port is still free on IPv4, where a fallback
        // would have listened without a word to IPv6 clients.
        let taken = Socket::new(Domain::IPV6, Type::STREAM, None).expect("an IPv6 socket");
        taken.set_only_v6(true).expect("IPv6 only");
        taken.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into()).expect("bind");
        taken.listen(8).expect("listen");
        let port = taken.local_addr().expect("addr").as_socket().expect("an IP address").port();
        let err = listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await.expect_err("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[tokio::test]
    async fn any_other_address_is_bound_as_given() {
        let listener = listen("127.0.0.1:0".parse().expect("an address")).await.expect("listen");
        assert_eq!(listener.local_addr().expect("addr").ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
