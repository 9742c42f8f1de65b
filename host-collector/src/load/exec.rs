//! `load`'s event loop: every simulated canary is a future, all polled by one thread that
//! waits on all their sockets at once ([`super::poller`]) and keeps their retransmit and
//! heartbeat timers in one heap. Compared with a tokio runtime this saves, per record, the
//! `recv` that ends in `EAGAIN` (the poller is level-triggered: a reported socket is read
//! exactly once), a timer-wheel entry, a task wake-up through the scheduler and most clock
//! reads: the loop reads the clock once per wait, and a canary once per record.
//!
//! The loop reads each ready socket itself and puts the datagram in the inbox of the canary
//! it is for (its own socket's canary, or, on a shared socket, the canary whose boot id the
//! ack names), then polls that canary. Futures learn nothing from their `Waker` (a no-op):
//! they register with the [`Reactor`], which knows which task is running.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::UdpSocket;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use capture::wire::{self, Repr};
use capture::Key;

use super::poller::Poller;

/// Datagrams a canary's inbox keeps before it drops new ones (as a full socket buffer would).
const INBOX_CAP: usize = 256;
/// Bytes read per datagram (a longer one is cut, as before).
const RECV_LEN: usize = 2048;

/// A boxed task of the loop.
pub(super) type Task<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Time, timers and inboxes shared by the tasks of one loop.
pub(super) struct Reactor {
    now: Cell<Instant>,
    current: Cell<usize>,
    /// Each task's live timer (at most one).
    armed: Vec<Cell<Option<Instant>>>,
    /// Each task's earliest entry in `timers` that counts (others are stale and skipped).
    /// A task re-arming later than that adds no entry: when the entry comes due, it is
    /// pushed again for the armed time. A canary arms one retransmit timer per record, and
    /// its acks come long before: this keeps that to about one heap entry per timeout.
    queued: Vec<Cell<Option<Instant>>>,
    timers: RefCell<BinaryHeap<Reverse<(Instant, usize)>>>,
    woken: RefCell<Vec<usize>>,
    inbox: Vec<RefCell<VecDeque<Vec<u8>>>>,
    spare: RefCell<Vec<Vec<u8>>>,
}

impl Reactor {
    pub(super) fn new(tasks: usize) -> Reactor {
        Reactor {
            now: Cell::new(Instant::now()),
            current: Cell::new(0),
            armed: (0..tasks).map(|_| Cell::new(None)).collect(),
            queued: (0..tasks).map(|_| Cell::new(None)).collect(),
            timers: RefCell::new(BinaryHeap::new()),
            woken: RefCell::new(Vec::new()),
            inbox: (0..tasks).map(|_| RefCell::new(VecDeque::new())).collect(),
            spare: RefCell::new(Vec::new()),
        }
    }

    /// The time the loop last read (after its last wait, or a task's [`Reactor::refresh`]).
    pub(super) fn now(&self) -> Instant {
        self.now.get()
    }

    /// Reads the clock.
    pub(super) fn refresh(&self) -> Instant {
        let n = Instant::now();
        self.now.set(n);
        n
    }

    /// Sets the running task's timer to `at` (replacing any other).
    fn arm(&self, at: Instant) {
        let t = self.current.get();
        self.armed[t].set(Some(at));
        if self.queued[t].get().is_none_or(|q| at < q) {
            self.queued[t].set(Some(at));
            self.timers.borrow_mut().push(Reverse((at, t)));
        }
    }

    /// Clears the running task's timer.
    fn disarm(&self) {
        self.armed[self.current.get()].set(None);
    }

    /// Queues datagram `d` for task `task` and wakes it.
    pub(super) fn deliver(&self, task: usize, d: &[u8]) {
        let Some(q) = self.inbox.get(task) else {
            return;
        };
        let mut q = q.borrow_mut();
        if q.len() >= INBOX_CAP {
            return;
        }
        let mut v = self.spare.borrow_mut().pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(d);
        q.push_back(v);
        self.woken.borrow_mut().push(task);
    }

    /// Gives a datagram's buffer back for reuse.
    pub(super) fn recycle(&self, v: Vec<u8>) {
        self.spare.borrow_mut().push(v);
    }

    /// Wakes the tasks whose timers are due at `now`; returns when the next timer is due.
    fn fire_due(&self, now: Instant) -> Option<Instant> {
        let mut timers = self.timers.borrow_mut();
        while let Some(&Reverse((at, t))) = timers.peek() {
            if at > now {
                return Some(at);
            }
            timers.pop();
            if self.queued[t].get() != Some(at) {
                continue;
            }
            self.queued[t].set(None);
            match self.armed[t].get() {
                None => {}
                Some(a) if a <= now => {
                    self.armed[t].set(None);
                    self.woken.borrow_mut().push(t);
                }
                Some(a) => {
                    self.queued[t].set(Some(a));
                    timers.push(Reverse((a, t)));
                }
            }
        }
        None
    }

    /// Completes at `at` (by the loop's clock).
    pub(super) fn sleep_until(&self, at: Instant) -> RecvOrSleep<'_> {
        RecvOrSleep {
            rx: self,
            at,
            recv: false,
        }
    }

    /// Completes with the running task's next datagram, or with `None` at `at`.
    pub(super) fn recv_or_sleep(&self, at: Instant) -> RecvOrSleep<'_> {
        RecvOrSleep {
            rx: self,
            at,
            recv: true,
        }
    }
}

/// See [`Reactor::recv_or_sleep`] and [`Reactor::sleep_until`].
pub(super) struct RecvOrSleep<'r> {
    rx: &'r Reactor,
    at: Instant,
    recv: bool,
}

impl Future for RecvOrSleep<'_> {
    type Output = Option<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let rx = self.rx;
        let t = rx.current.get();
        if self.recv {
            if let Some(d) = rx.inbox[t].borrow_mut().pop_front() {
                rx.disarm();
                return Poll::Ready(Some(d));
            }
        }
        if rx.now() >= self.at {
            rx.disarm();
            return Poll::Ready(None);
        }
        rx.arm(self.at);
        Poll::Pending
    }
}

/// Where a socket's datagrams go.
pub(super) enum Route {
    /// All to this task (a canary's own socket).
    Own(usize),
    /// Acks to the task whose boot id they name (canaries sharing a socket); the rest dropped.
    Shared(HashMap<[u8; 16], usize>),
}

/// The sockets the loop reads, and the poller watching them.
pub(super) struct Net<P> {
    pub(super) poller: P,
    pub(super) socks: Vec<Option<Rc<UdpSocket>>>,
    pub(super) routes: Vec<Route>,
    /// Own sockets by task, closed when their task ends.
    pub(super) own: Vec<Option<usize>>,
    buf: Box<[u8]>,
}

impl<P: Poller> Net<P> {
    pub(super) fn new(poller: P) -> Net<P> {
        Net {
            poller,
            socks: Vec::new(),
            routes: Vec::new(),
            own: Vec::new(),
            buf: vec![0u8; RECV_LEN].into_boxed_slice(),
        }
    }

    /// Adds a socket; returns its number.
    pub(super) fn add(&mut self, sock: Rc<UdpSocket>, route: Route) -> io::Result<usize> {
        let i = self.socks.len();
        self.poller.add(i, &sock)?;
        if let Route::Own(t) = route {
            if self.own.len() <= t {
                self.own.resize(t + 1, None);
            }
            self.own[t] = Some(i);
        }
        self.socks.push(Some(sock));
        self.routes.push(route);
        Ok(i)
    }

    /// Closes task `t`'s own socket (the loop's reference; the task dropped its own).
    fn task_done(&mut self, t: usize) {
        if let Some(i) = self.own.get_mut(t).and_then(Option::take) {
            if let Some(s) = self.socks[i].take() {
                self.poller.remove(i, &s);
            }
        }
    }

    /// Reads one datagram from socket `i` and routes it. Errors (ICMP port unreachable on a
    /// connected socket: no collector yet) are dropped; the senders retransmit.
    fn read(&mut self, i: usize, rx: &Reactor, key: Option<&Key>) {
        let Some(Some(s)) = self.socks.get(i) else {
            return;
        };
        let Ok(n) = s.recv(&mut self.buf) else {
            return;
        };
        let d = &self.buf[..n];
        match &self.routes[i] {
            Route::Own(t) => rx.deliver(*t, d),
            Route::Shared(r) => {
                if let Ok(Repr::Ack(a)) = wire::parse(d, key) {
                    if let Some(&t) = r.get(&a.boot_id) {
                        rx.deliver(t, d);
                    }
                }
            }
        }
    }
}

/// Runs `tasks` to completion on this thread, reading `net`'s sockets for them; calls `tick`
/// at once and then about every `tick_every`. Returns each task's output, in order.
pub(super) fn run_all<'a, T, P: Poller>(
    rx: &Reactor,
    tasks: Vec<Task<'a, T>>,
    net: &mut Net<P>,
    key: Option<&Key>,
    mut tick: Option<(Duration, &mut dyn FnMut())>,
) -> io::Result<Vec<T>> {
    let mut tasks: Vec<Option<Task<'a, T>>> = tasks.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = tasks.iter().map(|_| None).collect();
    let mut live = tasks.len();
    let mut cx = Context::from_waker(Waker::noop());
    // Every task runs once at the start, in order.
    rx.woken.borrow_mut().extend(0..tasks.len());
    let mut run = Vec::new();
    let mut ready = Vec::new();
    let mut next_tick = rx.refresh();
    loop {
        loop {
            std::mem::swap(&mut run, &mut *rx.woken.borrow_mut());
            if run.is_empty() {
                break;
            }
            for &t in &run {
                let Some(f) = tasks[t].as_mut() else {
                    continue;
                };
                rx.current.set(t);
                if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    out[t] = Some(v);
                    tasks[t] = None;
                    live -= 1;
                    net.task_done(t);
                }
            }
            run.clear();
        }
        if live == 0 {
            break;
        }
        let now = rx.refresh();
        if let Some((every, f)) = tick.as_mut() {
            if now >= next_tick {
                f();
                next_tick = now + *every;
            }
        }
        let next_timer = rx.fire_due(now);
        if !rx.woken.borrow().is_empty() {
            continue;
        }
        // Every waiting canary has a timer; the cap only bounds a wait with none.
        let mut until = next_timer.unwrap_or(now + Duration::from_secs(1));
        if tick.is_some() {
            until = until.min(next_tick);
        }
        net.poller
            .wait(&net.socks, until.saturating_duration_since(now), &mut ready)?;
        rx.refresh();
        for i in ready.drain(..) {
            net.read(i, rx, key);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::poller::PollSet;

    /// A task asleep until a time is polled then, not before; one woken by a datagram sees it.
    #[test]
    fn timers_and_inboxes_wake_the_right_task() {
        let rx = Reactor::new(2);
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        a.set_nonblocking(true).unwrap();
        let mut net = Net::new(PollSet::default());
        net.add(Rc::new(a), Route::Own(1)).unwrap();
        let t0 = Instant::now();
        let rxr = &rx;
        let sleeper: Task<'_, (Duration, Option<Vec<u8>>)> = Box::pin(async move {
            let at = rxr.now() + Duration::from_millis(60);
            let d = rxr.sleep_until(at).await;
            (t0.elapsed(), d)
        });
        let receiver: Task<'_, (Duration, Option<Vec<u8>>)> = Box::pin(async move {
            let at = rxr.now() + Duration::from_secs(10);
            let d = rxr.recv_or_sleep(at).await;
            (t0.elapsed(), d)
        });
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            b.send(b"ack").unwrap();
        });
        let mut ticks = 0;
        let mut tick = || ticks += 1;
        let out = run_all(
            &rx,
            vec![sleeper, receiver],
            &mut net,
            None,
            Some((Duration::from_millis(10), &mut tick)),
        )
        .unwrap();
        sender.join().unwrap();
        assert!(out[0].0 >= Duration::from_millis(60), "{:?}", out[0]);
        assert_eq!(out[0].1, None);
        assert!(out[1].0 < Duration::from_secs(5), "{:?}", out[1]);
        assert_eq!(out[1].1.as_deref(), Some(&b"ack"[..]));
        assert!(ticks >= 3, "{ticks}");
        // The receiver's socket was closed when it ended.
        assert!(net.socks[0].is_none());
    }

    /// Two waits' datagrams and when the second ended.
    type Waits = (Option<Vec<u8>>, Option<Vec<u8>>, Duration);

    /// A task that re-arms later than its queued timer (a canary's next record after an ack)
    /// wakes at the later time: the early entry, when due, is queued again for it.
    #[test]
    fn a_timer_moved_later_wakes_at_the_later_time() {
        let rx = Reactor::new(1);
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        a.set_nonblocking(true).unwrap();
        b.send(b"early").unwrap();
        let mut net = Net::new(PollSet::default());
        net.add(Rc::new(a), Route::Own(0)).unwrap();
        let t0 = rx.refresh();
        let rxr = &rx;
        let task: Task<'_, Waits> = Box::pin(async move {
            let first = rxr.recv_or_sleep(t0 + Duration::from_millis(50)).await;
            let second = rxr.recv_or_sleep(t0 + Duration::from_millis(120)).await;
            (first, second, t0.elapsed())
        });
        let out = run_all(&rx, vec![task], &mut net, None, None).unwrap();
        let (first, second, took) = &out[0];
        assert_eq!(first.as_deref(), Some(&b"early"[..]));
        assert_eq!(*second, None);
        assert!(*took >= Duration::from_millis(120), "{took:?}");
        assert!(*took < Duration::from_millis(900), "{took:?}");
        // One entry was pushed for 50 ms and once more for 120 ms: none left.
        assert!(rx.timers.borrow().is_empty());
    }
}
