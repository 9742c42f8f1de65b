//! Batched UDP I/O behind one interface: [`RecvBatch`] receives up to [`BATCH`] datagrams per
//! call and [`send_all`] sends many. Linux uses `recvmmsg(2)`/`sendmmsg(2)` (`mmsg/linux.rs`);
//! other platforms (Windows), which have neither, use one `recv_from` per call and one
//! `send_to` per datagram (`mmsg/portable.rs`). On Linux the tests run against both.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Most datagrams one [`RecvBatch::recv`] returns (Linux: per `recvmmsg` call; elsewhere 1).
pub const BATCH: usize = 64;

/// Bytes per receive slot: more than `capture::wire::MAX_DATAGRAM` (1400), so an oversized
/// datagram still arrives longer than the limit and is counted as `oversized`.
pub const SLOT: usize = 2048;

/// Binds the collector's UDP socket, non-blocking, asking for `buf_bytes` of receive and send
/// buffer (`SO_RCVBUF`/`SO_SNDBUF`; Linux caps them at `net.core.rmem_max`/`wmem_max` and
/// reports double). A refused receive buffer size is logged, not fatal. The buffers are set
/// after `bind`: a datagram that arrives in between is queued against the default size.
pub fn bind_udp(addr: SocketAddr, buf_bytes: usize) -> io::Result<UdpSocket> {
    use rustix::net::sockopt;
    let s = UdpSocket::bind(addr)?;
    if let Err(e) = sockopt::set_socket_recv_buffer_size(&s, buf_bytes) {
        tracing::warn!(
            "cannot set SO_RCVBUF to {buf_bytes}: {}",
            io::Error::from(e)
        );
    }
    let _ = sockopt::set_socket_send_buffer_size(&s, buf_bytes);
    s.set_nonblocking(true)?;
    Ok(s)
}

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{send_all, RecvBatch};

#[cfg(any(not(target_os = "linux"), test))]
mod portable;
#[cfg(not(target_os = "linux"))]
pub use portable::{send_all, RecvBatch};

#[cfg(test)]
mod tests {
    use super::{send_all, RecvBatch, SLOT};
    use std::net::{SocketAddr, UdpSocket};
    include!("mmsg/interface_tests.rs");
}

/// The same tests against the portable implementation, which Linux builds do not use.
#[cfg(all(test, target_os = "linux"))]
mod portable_tests {
    use super::portable::{send_all, RecvBatch};
    use super::SLOT;
    use std::net::{SocketAddr, UdpSocket};
    include!("mmsg/interface_tests.rs");
}

#[cfg(test)]
mod bind_tests {
    use super::bind_udp;
    use rustix::net::sockopt::socket_recv_buffer_size;
    use std::net::UdpSocket;

    /// The receive buffer asked for is the one in force: two sizes below Linux's default
    /// (`net.core.rmem_default`, 212,992 bytes) read back at least as asked and in order.
    #[test]
    fn bind_udp_sets_receive_buffer_and_nonblocking() {
        let small = bind_udp("127.0.0.1:0".parse().unwrap(), 8 * 1024).unwrap();
        let large = bind_udp("127.0.0.1:0".parse().unwrap(), 64 * 1024).unwrap();
        let (s, l) = (
            socket_recv_buffer_size(&small).unwrap(),
            socket_recv_buffer_size(&large).unwrap(),
        );
        assert!(
            s >= 8 * 1024 && l >= 64 * 1024 && s < l,
            "SO_RCVBUF {s} and {l}"
        );

        // Non-blocking: an empty socket answers at once.
        let mut buf = [0u8; 16];
        let e = small.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

        // Bound where asked, and it receives.
        let addr = small.local_addr().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", addr).unwrap();
        small.set_nonblocking(false).unwrap();
        let (n, from) = small.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (1, tx.local_addr().unwrap()));
    }
}
