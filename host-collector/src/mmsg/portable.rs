//! Platforms without `recvmmsg`/`sendmmsg` (Windows): one `recv_from` per
//! [`RecvBatch::recv`] and one `send_to` per datagram, behind the Linux interface.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use super::SLOT;

/// Receive buffer: the largest UDP payload (65,535 bytes less the 8-byte header) fits, so a
/// datagram longer than a slot is read whole and then cut to the slot as Linux cuts it
/// (Windows fails a receive into a smaller buffer with `WSAEMSGSIZE`, and std then reports
/// no sender).
const SCRATCH: usize = 64 << 10;

/// Reusable buffer for [`RecvBatch::recv`].
pub struct RecvBatch {
    buf: Vec<u8>,
    /// Length (at most [`SLOT`]) and sender of the datagram of the last receive.
    got: Option<(usize, SocketAddr)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            buf: vec![0u8; SCRATCH],
            got: None,
        }
    }

    /// Receives one datagram (blocking as the socket does: `SO_RCVTIMEO` gives
    /// `WouldBlock`/`TimedOut`). Returns 1.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.got = None;
        let (n, peer) = sock.recv_from(&mut self.buf)?;
        self.got = Some((n.min(SLOT), peer));
        Ok(1)
    }

    /// Datagram `i` (only 0) of the last [`RecvBatch::recv`] and its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, peer) = self.got.filter(|_| i == 0)?;
        Some((self.buf.get(..len)?, peer))
    }
}

/// Sends each `(datagram, destination)` with its own `send_to`. A datagram the system refuses
/// is skipped (logged at debug: a lost ack only costs a retransmit). Returns how many were
/// sent.
pub fn send_all(sock: &UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> usize {
    let mut sent = 0;
    for &(data, to) in msgs {
        loop {
            match sock.send_to(data, to) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => tracing::debug!(peer = %to, "ack not sent: {e}"),
            }
            break;
        }
    }
    sent
}
