//! Batched UDP I/O: `recvmmsg(2)` and `sendmmsg(2)` (Linux), one system call for up to
//! [`BATCH`] datagrams. The only `unsafe` of the crate lives here: the raw `msghdr`/`mmsghdr`
//! arrays these calls take.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 64;

/// Bytes per receive slot: more than `capture::wire::MAX_DATAGRAM` (1400), so an oversized
/// datagram still arrives longer than the limit and is counted as `oversized`.
pub const SLOT: usize = 2048;

/// Upper bound of messages per `sendmmsg` call (`UIO_MAXIOV`, linux/include/uapi/linux/uio.h).
const SEND_MAX: usize = 1024;

/// Reusable buffers for [`RecvBatch::recv`].
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
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
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            n: 0,
        }
    }

    /// Receives at least one and up to [`BATCH`] datagrams (blocking for the first one as the
    /// socket does: `SO_RCVTIMEO` gives `WouldBlock`/`TimedOut`). Returns how many arrived.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.n = 0;
        self.iovs.clear();
        self.hdrs.clear();
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs.push(libc::iovec {
                // SAFETY: i * SLOT + SLOT <= bufs.len(): stays inside the allocation.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            });
        }
        for i in 0..BATCH {
            // SAFETY: msghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            self.hdrs.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        // SAFETY: `hdrs` holds BATCH valid headers whose name/iov pointers point into
        // `addrs`/`iovs`/`bufs`, all alive and not otherwise borrowed during the call; the
        // kernel writes at most msg_namelen / iov_len bytes through them.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        Ok(self.n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its sender (`None` for an address
    /// family other than IPv4/IPv6, which a UDP/IP socket does not produce).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.n {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(SLOT);
        let data = &self.bufs[i * SLOT..i * SLOT + len];
        let peer = from_storage(&self.addrs[i], h.msg_hdr.msg_namelen)?;
        Some((data, peer))
    }
}

fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in (which fits in and is
            // less aligned than sockaddr_storage), and the kernel wrote `len` bytes of it.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends each `(datagram, destination)` with as few `sendmmsg` calls as possible. A datagram
/// the kernel refuses is skipped (logged at debug: a lost ack only costs a retransmit).
/// Returns how many were sent.
pub fn send_all(sock: &UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> usize {
    let mut sent = 0;
    for chunk in msgs.chunks(SEND_MAX) {
        let addrs: Vec<socket2::SockAddr> = chunk
            .iter()
            .map(|(_, a)| socket2::SockAddr::from(*a))
            .collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(d, _)| libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(chunk.len());
        for i in 0..chunk.len() {
            // SAFETY: msghdr is plain old data; all-zero is valid.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = addrs[i].len();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            hdrs.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        let mut at = 0;
        while at < hdrs.len() {
            // SAFETY: hdrs[at..] are valid headers pointing at `addrs`, `iovs` and the
            // caller's datagrams, all alive for the call; the kernel only reads through them
            // (and writes msg_len).
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr().add(at),
                    (hdrs.len() - at) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first remaining message failed: skip it.
                tracing::debug!(peer = %chunk[at].1, "ack not sent: {e}");
                at += 1;
            } else {
                sent += r as usize;
                at += (r as usize).max(1);
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
