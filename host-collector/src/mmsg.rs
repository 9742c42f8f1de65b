//! Batched UDP I/O behind one interface: [`RecvBatch`] receives up to [`BATCH`] datagrams per
//! call and [`send_all`] sends many. Linux uses `recvmmsg(2)`/`sendmmsg(2)` (`mmsg/linux.rs`);
//! other platforms (Windows), which have neither, use one `recv_from` per call and one
//! `send_to` per datagram (`mmsg/portable.rs`). On Linux the tests run against both.

/// Most datagrams one [`RecvBatch::recv`] returns (Linux: per `recvmmsg` call; elsewhere 1).
pub const BATCH: usize = 64;

/// Bytes per receive slot: more than `capture::wire::MAX_DATAGRAM` (1400), so an oversized
/// datagram still arrives longer than the limit and is counted as `oversized`.
pub const SLOT: usize = 2048;

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
