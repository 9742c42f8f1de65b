//! Batched UDP I/O: `recvmmsg(2)` and `sendmmsg(2)` (Linux), one system call for up to
//! [`BATCH`] datagrams, through safe wrappers: `nix` for `recvmmsg`, `rustix` for `sendmmsg`
//! (nix's `sendmmsg` reports how many messages went out only through an iterator that reads
//! the never-written receive addresses of its `MultiHeaders`; rustix returns the count).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmmsg, AddressFamily, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike,
};
use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 64;

/// Bytes per receive slot: more than `capture::wire::MAX_DATAGRAM` (1400), so an oversized
/// datagram still arrives longer than the limit and is counted as `oversized`.
pub const SLOT: usize = 2048;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_datagrams_arrive_with_their_senders_and_lengths() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let big = vec![7u8; 1500];
        let sent = send_all(&a, &[(b"one", to), (&big, to)]);
        assert_eq!(sent, 2);
        assert_eq!(send_all(&b, &[(b"three", to)]), 1);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = batch.recv(&rx).unwrap();
            for i in 0..n {
                let (d, p) = batch.get(i).unwrap();
                got.push((d.to_vec(), p));
            }
            assert!(batch.get(n).is_none());
        }
        assert_eq!(got[0], (b"one".to_vec(), a.local_addr().unwrap()));
        assert_eq!(got[1], (big, a.local_addr().unwrap()));
        assert_eq!(got[2], (b"three".to_vec(), b.local_addr().unwrap()));
    }

    #[test]
    fn ipv6_datagrams_arrive_with_their_senders_across_reused_batches() {
        // A host without IPv6 loopback cannot run this; everything else here is IPv4.
        let rx = match UdpSocket::bind("[::1]:0") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipped: no IPv6 loopback ({e})");
                return;
            }
        };
        let to = rx.local_addr().unwrap();
        let a = UdpSocket::bind("[::1]:0").unwrap();
        let b = UdpSocket::bind("[::1]:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut batch = RecvBatch::new();
        // The same batch (and its headers, whose address lengths the kernel rewrites) serves
        // every round.
        for round in 0..3u8 {
            assert_eq!(send_all(&a, &[(&[round, 1], to)]), 1);
            assert_eq!(send_all(&b, &[(&[round, 2, 2], to)]), 1);
            let mut got = Vec::new();
            while got.len() < 2 {
                let n = batch.recv(&rx).unwrap();
                for i in 0..n {
                    let (d, p) = batch.get(i).unwrap();
                    got.push((d.to_vec(), p));
                }
            }
            assert_eq!(got[0], (vec![round, 1], a.local_addr().unwrap()));
            assert_eq!(got[1], (vec![round, 2, 2], b.local_addr().unwrap()));
        }
    }

    #[test]
    fn a_datagram_the_kernel_refuses_is_skipped_and_the_rest_are_sent() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // An IPv6 destination on an IPv4 socket: EAFNOSUPPORT for that message alone.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let msgs: [(&[u8], SocketAddr); 4] = [(b"a", to), (b"b", v6), (b"c", to), (b"d", v6)];
        assert_eq!(send_all(&tx, &msgs), 2);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = batch.recv(&rx).unwrap();
            for i in 0..n {
                got.push(batch.get(i).unwrap().0.to_vec());
            }
        }
        assert_eq!(got, [b"a".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn a_datagram_longer_than_a_slot_arrives_truncated_to_the_slot() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&vec![1u8; SLOT + 100], rx.local_addr().unwrap())
            .unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.get(0).unwrap().0.len(), SLOT);
    }
}
