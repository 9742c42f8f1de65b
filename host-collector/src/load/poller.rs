//! Readiness of the canaries' sockets for `load`'s one-thread event loop: `epoll(7)` on Linux
//! ([`Epoll`]), `poll(2)`/`WSAPoll` elsewhere ([`PollSet`]). Both are level-triggered: a
//! socket with a datagram (or a pending error) is reported until it is read, so the loop reads
//! each reported socket once and never needs a `recv` that ends in `EAGAIN`. On Linux the
//! tests run `load` with both.

use std::io;
use std::net::UdpSocket;
use std::rc::Rc;
use std::time::Duration;

use rustix::event::Timespec;

/// Sockets, numbered by the caller, whose readability the event loop waits for.
pub(super) trait Poller {
    /// Watches `sock` (number `index`) for datagrams and errors.
    fn add(&mut self, index: usize, sock: &UdpSocket) -> io::Result<()>;
    /// Stops watching `sock` (number `index`) before the caller closes it.
    fn remove(&mut self, index: usize, sock: &UdpSocket);
    /// Waits up to `timeout` and appends the numbers of the readable sockets to `ready`.
    /// `socks` holds the watched sockets by number (`None`: removed). An interrupted wait
    /// returns with nothing ready.
    fn wait(
        &mut self,
        socks: &[Option<Rc<UdpSocket>>],
        timeout: Duration,
        ready: &mut Vec<usize>,
    ) -> io::Result<()>;
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9: fits the platform's type (i64 on Linux, i32 on Windows).
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// `epoll(7)`, level-triggered.
#[cfg(target_os = "linux")]
pub(super) struct Epoll {
    fd: std::os::fd::OwnedFd,
    events: Vec<rustix::event::epoll::Event>,
}

#[cfg(target_os = "linux")]
impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        use rustix::event::epoll;
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            events: Vec::with_capacity(1024),
        })
    }
}

#[cfg(target_os = "linux")]
impl Poller for Epoll {
    fn add(&mut self, index: usize, sock: &UdpSocket) -> io::Result<()> {
        use rustix::event::epoll;
        epoll::add(
            &self.fd,
            sock,
            epoll::EventData::new_u64(index as u64),
            epoll::EventFlags::IN,
        )?;
        Ok(())
    }

    fn remove(&mut self, _index: usize, sock: &UdpSocket) {
        // Closing the socket would remove it as well; an error here changes nothing.
        let _ = rustix::event::epoll::delete(&self.fd, sock);
    }

    fn wait(
        &mut self,
        _socks: &[Option<Rc<UdpSocket>>],
        timeout: Duration,
        ready: &mut Vec<usize>,
    ) -> io::Result<()> {
        use rustix::buffer::spare_capacity;
        use rustix::event::epoll;
        self.events.clear();
        match epoll::wait(
            &self.fd,
            spare_capacity(&mut self.events),
            Some(&timespec(timeout)),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        ready.extend(self.events.iter().map(|e| e.data.u64() as usize));
        Ok(())
    }
}

/// `poll(2)` (`WSAPoll` on Windows) over every watched socket: for platforms without epoll.
#[cfg(any(not(target_os = "linux"), test))]
#[derive(Default)]
pub(super) struct PollSet {
    watched: Vec<bool>,
    order: Vec<usize>,
}

#[cfg(any(not(target_os = "linux"), test))]
impl Poller for PollSet {
    fn add(&mut self, index: usize, _sock: &UdpSocket) -> io::Result<()> {
        if self.watched.len() <= index {
            self.watched.resize(index + 1, false);
        }
        self.watched[index] = true;
        Ok(())
    }

    fn remove(&mut self, index: usize, _sock: &UdpSocket) {
        if let Some(w) = self.watched.get_mut(index) {
            *w = false;
        }
    }

    fn wait(
        &mut self,
        socks: &[Option<Rc<UdpSocket>>],
        timeout: Duration,
        ready: &mut Vec<usize>,
    ) -> io::Result<()> {
        use rustix::event::{poll, PollFd, PollFlags};
        self.order.clear();
        let mut fds = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            if let (Some(s), true) = (s, self.watched.get(i).copied().unwrap_or(false)) {
                fds.push(PollFd::new(&**s, PollFlags::IN));
                self.order.push(i);
            }
        }
        if fds.is_empty() {
            // Nothing to watch (every canary is waiting on a timer): `WSAPoll` refuses an
            // empty set (WSAEINVAL), so just wait out the timeout.
            std::thread::sleep(timeout);
            return Ok(());
        }
        match poll(&mut fds, Some(&timespec(timeout))) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for (fd, &i) in fds.iter().zip(&self.order) {
            if !fd.revents().is_empty() {
                ready.push(i);
            }
        }
        Ok(())
    }
}

/// Waits until `sock` can take a datagram (a full send buffer), at most `timeout`.
pub(super) fn wait_writable(sock: &UdpSocket, timeout: Duration) {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(sock, PollFlags::OUT)];
    let _ = poll(&mut fds, Some(&timespec(timeout)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Level-triggered: a socket stays ready until read; a removed one is not reported.
    fn reports_readable_until_read(p: &mut dyn Poller) {
        let (a0, b0) = pair();
        let (a1, b1) = pair();
        let socks = vec![Some(Rc::new(a0)), Some(Rc::new(a1))];
        for (i, s) in socks.iter().enumerate() {
            p.add(i, s.as_ref().unwrap()).unwrap();
        }
        let mut ready = Vec::new();
        p.wait(&socks, Duration::from_millis(20), &mut ready)
            .unwrap();
        assert!(ready.is_empty(), "{ready:?}");
        b1.send(b"one").unwrap();
        b1.send(b"two").unwrap();
        p.wait(&socks, Duration::from_secs(5), &mut ready).unwrap();
        assert_eq!(ready, [1]);
        let mut buf = [0u8; 16];
        let s1 = socks[1].as_ref().unwrap();
        assert_eq!(s1.recv(&mut buf).unwrap(), 3);
        // The second datagram is still there: reported again without a new arrival.
        ready.clear();
        p.wait(&socks, Duration::from_secs(5), &mut ready).unwrap();
        assert_eq!(ready, [1]);
        assert_eq!(s1.recv(&mut buf).unwrap(), 3);
        ready.clear();
        p.wait(&socks, Duration::from_millis(20), &mut ready)
            .unwrap();
        assert!(ready.is_empty(), "{ready:?}");
        b0.send(b"x").unwrap();
        p.remove(0, socks[0].as_ref().unwrap());
        p.wait(&socks, Duration::from_millis(20), &mut ready)
            .unwrap();
        assert!(ready.is_empty(), "{ready:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn epoll_reports_readable_until_read() {
        reports_readable_until_read(&mut Epoll::new().unwrap());
    }

    #[test]
    fn poll_reports_readable_until_read() {
        reports_readable_until_read(&mut PollSet::default());
    }

    /// With no socket watched (only timers pending) a wait is a sleep, not an error (WSAPoll
    /// refuses an empty set with WSAEINVAL: seen under Wine in scripts/test-windows).
    #[test]
    fn a_wait_with_nothing_watched_sleeps_the_timeout() {
        let mut polls: Vec<Box<dyn Poller>> = vec![Box::new(PollSet::default())];
        #[cfg(target_os = "linux")]
        polls.push(Box::new(Epoll::new().unwrap()));
        for p in &mut polls {
            let mut ready = Vec::new();
            let t = std::time::Instant::now();
            p.wait(&[None], Duration::from_millis(30), &mut ready)
                .unwrap();
            assert!(ready.is_empty());
            assert!(
                t.elapsed() >= Duration::from_millis(25),
                "{:?}",
                t.elapsed()
            );
        }
    }
}
