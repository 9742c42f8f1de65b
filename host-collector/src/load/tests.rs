use super::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use capture::wire::{self, AckStatus, Repr};

#[test]
fn rng_is_deterministic_and_roughly_calibrated() {
    let mut a = Rng::new(42);
    let mut b = Rng::new(42);
    let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
    assert_eq!(xs, ys);
    let mut r = Rng::new(7);
    let hits = (0..100_000).filter(|_| r.chance(0.2)).count();
    assert!((19_000..21_000).contains(&hits), "{hits}");
    assert!(!(0..1000).any(|_| r.chance(0.0)));
}

fn config(target: SocketAddr) -> LoadConfig {
    LoadConfig {
        target,
        canaries: 1,
        records: 0,
        loss: 0.0,
        dup: 0.0,
        reorder: 0.0,
        seed: 1,
        key: None,
        deadline: Duration::from_secs(10),
        initial_rto_ms: 20,
        max_rto_ms: 200,
        schema: None,
        max_sockets: None,
        heartbeat_every: None,
        heartbeat_for: Duration::ZERO,
        record_deadline: None,
    }
}

#[test]
fn heartbeat_uptimes_advance_by_the_interval_when_the_task_runs_late() {
    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(collector.local_addr().unwrap()).unwrap();
    tx.set_nonblocking(true).unwrap();
    collector.set_nonblocking(true).unwrap();
    let cfg = LoadConfig {
        heartbeat_every: Some(Duration::from_millis(100)),
        heartbeat_for: Duration::from_millis(450),
        ..config(collector.local_addr().unwrap())
    };
    let rx = Reactor::new(2);
    let acked = Cell::new(0);
    let start = rx.refresh();
    let env = Env {
        cfg: &cfg,
        rx: &rx,
        start,
        end: start + cfg.deadline,
        acked: &acked,
    };
    let (mut rng, mut res) = (Rng::new(1), CanaryResult::default());
    let every = Duration::from_millis(100);
    let (env, rxr, txr) = (&env, &rx, &tx);
    let hb: Task<'_, ()> = Box::pin(canary::heartbeats(
        env, [7; 16], every, txr, &mut rng, &mut res,
    ));
    // The loop's one thread is busy from 150 to 230 ms (a loaded machine): the heartbeat due
    // at 200 ms goes out about 30 ms late.
    let busy: Task<'_, ()> = Box::pin(async move {
        rxr.sleep_until(start + Duration::from_millis(150)).await;
        std::thread::sleep(Duration::from_millis(80));
    });
    let mut net = exec::Net::new(poller::PollSet::default());
    exec::run_all(&rx, vec![hb, busy], &mut net, None, None).unwrap();
    let mut buf = [0u8; 2048];
    let mut uptimes = Vec::new();
    while let Ok(n) = collector.recv(&mut buf) {
        if let Ok(Repr::Heartbeat(h)) = wire::parse(&buf[..n], None) {
            uptimes.push(h.uptime_ms);
        }
    }
    assert!(uptimes.len() >= 4, "{uptimes:?}");
    assert_eq!(res.heartbeats_sent as usize, uptimes.len());
    // The collector measures the interval from consecutive uptimes: they advance by the
    // interval, not by when the task happened to run.
    for w in uptimes.windows(2) {
        assert_eq!(w[1] - w[0], 100, "{uptimes:?}");
    }
}

#[test]
fn boot_ids_differ_per_canary() {
    let a = boot_id(1, 99, 0);
    let b = boot_id(1, 99, 1);
    assert_ne!(a, b);
    assert_eq!(a, boot_id(1, 99, 0));
}

#[test]
fn the_message_is_what_the_format_string_wrote() {
    for (index, loss, seq) in [(0, 0.0, 1), (7, 0.2, 128), (99, 0.05, u32::MAX)] {
        let mut rec = capture::testutil::sample_record(0);
        canary::Message::new(index, loss).write(&mut rec, seq);
        let want = format!("load: simulated panic {seq} of canary {index} (loss {loss})");
        assert_eq!(rec.message.as_str(), want);
    }
}

/// What a fake collector saw.
#[derive(Default)]
struct Seen {
    /// Each record's bytes by (boot id, seq), the first time.
    chunks: HashMap<([u8; 16], u32), Vec<u8>>,
    /// Datagrams with the same record id but other bytes than the first time.
    changed: u64,
    /// Records received again (retransmits or injected duplicates).
    repeats: u64,
    /// A record whose predecessor from the same source port had not been acked.
    overlaps: u64,
    /// Source ports, and the last seq acked per source port.
    last_acked: HashMap<SocketAddr, u32>,
}

/// A collector that acks every chunk (stored the first time, duplicate after) and checks
/// that each source has one record in flight.
fn fake_collector() -> (
    SocketAddr,
    Arc<Mutex<Seen>>,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let addr = s.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen2, stop2) = (seen.clone(), stop.clone());
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut frame = [0u8; wire::MAX_DATAGRAM];
        while !stop2.load(Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            let Ok(Repr::Chunk(c)) = wire::parse(&buf[..n], None) else {
                continue;
            };
            let mut guard = seen2.lock().unwrap();
            let seen = &mut *guard;
            let last = seen.last_acked.get(&from).copied().unwrap_or(0);
            if c.seq > last + 1 {
                seen.overlaps += 1;
            }
            let status = match seen.chunks.get(&(c.boot_id, c.seq)) {
                Some(first) => {
                    seen.repeats += 1;
                    if first[..] != buf[..n] {
                        seen.changed += 1;
                    }
                    AckStatus::Duplicate
                }
                None => {
                    seen.chunks.insert((c.boot_id, c.seq), buf[..n].to_vec());
                    AckStatus::Stored
                }
            };
            let e = seen.last_acked.entry(from).or_insert(0);
            *e = (*e).max(c.seq);
            let ack = Repr::Ack(wire::AckRepr {
                boot_id: c.boot_id,
                seq: c.seq,
                record_crc: c.record_crc,
                status,
                followup_reported: 0,
            });
            let m = ack.emit(None, &mut frame).unwrap();
            let _ = s.send_to(&frame[..m], from);
        }
    });
    (addr, seen, stop, h)
}

/// Loss both ways: every record is acked in the end, through retransmits of the same bytes,
/// one record in flight per canary, each canary from its own source port.
fn every_record_acked_under_loss<P: Poller>(poller: P, max_sockets: Option<u32>) {
    let (addr, seen, stop, h) = fake_collector();
    let cfg = LoadConfig {
        canaries: 20,
        records: 400,
        loss: 0.2,
        dup: 0.05,
        initial_rto_ms: 5,
        max_rto_ms: 20,
        max_sockets,
        ..config(addr)
    };
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let t2 = ticks.clone();
    let progress: Box<dyn Fn(u64) + Send> = Box::new(move |n| t2.lock().unwrap().push(n));
    let r = run_with(cfg, Some(progress), poller).unwrap();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        (r.acked, r.lost, r.rejected, r.sent),
        (400, 0, 0, 400),
        "{r:?}"
    );
    assert!(r.acked_duplicate <= seen.repeats, "{r:?}");
    assert!(r.retransmit_rounds > 0, "{r:?}");
    assert!(
        r.datagrams_dropped_out > 0 && r.datagrams_dropped_in > 0,
        "{r:?}"
    );
    assert!(seen.repeats > 0, "no retransmit reached the collector");
    assert_eq!(
        seen.changed, 0,
        "a retransmit's bytes differ from the first send"
    );
    assert_eq!(
        seen.overlaps, 0,
        "a canary sent a record before the previous one's ack"
    );
    assert_eq!(seen.chunks.len(), 400);
    let ports: HashSet<_> = seen.last_acked.keys().collect();
    assert_eq!(ports.len(), max_sockets.unwrap_or(20) as usize);
    assert_eq!(r.sockets, max_sockets.unwrap_or(20));
    assert!(
        r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms,
        "{r:?}"
    );
    let ticks = ticks.lock().unwrap();
    assert_eq!(ticks.first(), Some(&0), "{ticks:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn every_record_acked_under_loss_epoll() {
    every_record_acked_under_loss(poller::Epoll::new().unwrap(), None);
}

#[test]
fn every_record_acked_under_loss_poll() {
    every_record_acked_under_loss(poller::PollSet::default(), None);
}

#[test]
fn every_record_acked_under_loss_shared_sockets() {
    every_record_acked_under_loss(poller::PollSet::default(), Some(3));
}

/// Nobody acks: every record is lost at the run's deadline, and the run ends then.
#[test]
fn records_not_acked_by_the_deadline_are_lost() {
    // A socket that never answers.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sink.local_addr().unwrap();
    let cfg = LoadConfig {
        canaries: 3,
        records: 9,
        deadline: Duration::from_millis(300),
        ..config(addr)
    };
    let t = Instant::now();
    let r = run(cfg, None).unwrap();
    drop(sink);
    assert_eq!((r.acked, r.lost), (0, 9), "{r:?}");
    // Each canary's first record times out at the deadline's last whole millisecond; the next
    // may still start in the millisecond left.
    assert!((3..=9).contains(&r.sent), "{r:?}");
    assert!(r.retransmit_rounds > 0, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
