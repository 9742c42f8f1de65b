//! Linux: `recvmmsg(2)` and `sendmmsg(2)`, one system call for up to [`BATCH`] datagrams,
//! through safe wrappers: `nix` for `recvmmsg`, `rustix` for `sendmmsg` (nix's `sendmmsg`
//! reports how many messages went out only through an iterator that reads the never-written
//! receive addresses of its `MultiHeaders`; rustix returns the count).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmmsg, AddressFamily, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike,
};
use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use super::{BATCH, SLOT};

/// Upper bound of messages per `sendmmsg` call (`UIO_MAXIOV`, linux/include/uapi/linux/uio.h).
const SEND_MAX: usize = 1024;

/// `recvmmsg` headers with room for the sender address of the socket's family. A typed
/// address, not `SockaddrStorage`: nix reads a received `SockaddrStorage` past the bytes the
/// kernel wrote (its Unix-address length check), while a typed one the kernel fills whole:
/// IPv4 UDP writes a whole `sockaddr_in`, IPv6 UDP a whole `sockaddr_in6`
/// (`udp_recvmsg`/`udpv6_recvmsg`, linux/net/ipv4/udp.c, linux/net/ipv6/udp.c). nix does not restore `msg_namelen` between
/// calls; the kernel writes back the full size of these fixed-size addresses, so it stays
/// right.
enum Headers {
    V4(MultiHeaders<SockaddrIn>),
    V6(MultiHeaders<SockaddrIn6>),
}

/// Reusable buffers for [`RecvBatch::recv`]. One `RecvBatch` serves sockets of one address
/// family (the family of the first socket it receives from).
pub struct RecvBatch {
    bufs: Vec<u8>,
    hdrs: Option<Headers>,
    /// Length and sender of each datagram of the last receive (`None`: unexpected family).
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; BATCH * SLOT],
            hdrs: None,
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Receives at least one and up to [`BATCH`] datagrams (blocking for the first one as the
    /// socket does: `SO_RCVTIMEO` gives `WouldBlock`/`TimedOut`). Returns how many arrived.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let hdrs = match &mut self.hdrs {
            Some(h) => h,
            None => self.hdrs.insert(match sock.local_addr()? {
                SocketAddr::V4(_) => Headers::V4(MultiHeaders::preallocate(BATCH, None)),
                SocketAddr::V6(_) => Headers::V6(MultiHeaders::preallocate(BATCH, None)),
            }),
        };
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .chunks_exact_mut(SLOT)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let fd = sock.as_raw_fd();
        let flags = MsgFlags::MSG_WAITFORONE;
        match hdrs {
            Headers::V4(h) => {
                for m in recvmmsg(fd, h, iovs.iter_mut(), flags, None)? {
                    let peer = m
                        .address
                        .filter(|a| a.family() == Some(AddressFamily::Inet))
                        .map(SocketAddr::from);
                    self.got.push((m.bytes.min(SLOT), peer));
                }
            }
            Headers::V6(h) => {
                for m in recvmmsg(fd, h, iovs.iter_mut(), flags, None)? {
                    let peer = m
                        .address
                        .filter(|a| a.family() == Some(AddressFamily::Inet6))
                        .map(SocketAddr::from);
                    self.got.push((m.bytes.min(SLOT), peer));
                }
            }
        }
        Ok(self.got.len())
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its sender (`None` for an address
    /// family other than the socket's, which a UDP/IP socket does not produce).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let &(len, peer) = self.got.get(i)?;
        let data = self.bufs.get(i * SLOT..i * SLOT + len)?;
        Some((data, peer?))
    }
}

/// Sends each `(datagram, destination)` with as few `sendmmsg` calls as possible. A datagram
/// the kernel refuses is skipped (logged at debug: a lost ack only costs a retransmit).
/// Returns how many were sent.
pub fn send_all(sock: &UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> usize {
    let mut sent = 0;
    for chunk in msgs.chunks(SEND_MAX) {
        let addrs: Vec<SocketAddrAny> = chunk.iter().map(|&(_, a)| a.into()).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(d, _)| [IoSlice::new(d)]).collect();
        let mut no_cmsgs: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut hdrs: Vec<MMsgHdr<'_>> = addrs
            .iter()
            .zip(&iovs)
            .zip(&mut no_cmsgs)
            .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
            .collect();
        let mut at = 0;
        while at < hdrs.len() {
            match sendmmsg(sock, &mut hdrs[at..], SendFlags::empty()) {
                Err(e) if e == rustix::io::Errno::INTR => continue,
                Err(e) => {
                    // The first remaining message failed: skip it.
                    let e = io::Error::from(e);
                    tracing::debug!(peer = %chunk[at].1, "ack not sent: {e}");
                    at += 1;
                }
                Ok(r) => {
                    sent += r;
                    at += r.max(1);
                }
            }
        }
    }
    sent
}
