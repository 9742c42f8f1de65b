//! `load`: N simulated canaries, each a real [`capture::sender::Sender`], sending M records to
//! a collector, with deterministic, seeded fault injection on both directions.
//!
//! Each canary is a tokio task with its own connected UDP socket. It sends its share of the
//! records one after another (a canary ships one crash record at a time). If the process may
//! not open one socket per canary (RLIMIT_NOFILE, after raising the soft limit to the hard
//! limit, and the hard limit too when running as root), canaries share sockets: a dispatcher
//! task per shared socket routes acks to canaries by boot id.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::record::CrashRecord;
use capture::sender::{SendState, Sender, SenderConfig};
use capture::wire::{self, Repr};
use capture::Key;
use serde::Serialize;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid load parameters: {0}")]
    Invalid(String),
    #[error("cannot encode the sample record: {0}")]
    Encode(capture::Error),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub canaries: u32,
    pub records: u64,
    pub loss: f64,
    pub dup: f64,
    pub reorder: f64,
    pub seed: u64,
    pub key: Option<Key>,
    /// One deadline for the whole run: records not acked by then count as lost.
    pub deadline: Duration,
    pub initial_rto_ms: u32,
    pub max_rto_ms: u32,
    /// Schema the records claim (tests send a newer major to check rejection).
    pub schema: Option<(u16, u16)>,
    /// Use at most this many sockets (canaries share them beyond that), as if the
    /// descriptor limit were lower.
    pub max_sockets: Option<u32>,
    /// Each canary sends a heartbeat this often (counter from 0, its uptime, x86_64) for
    /// `heartbeat_for` before it sends its records (its "panic"), then no more: a canary that
    /// lives a while, then crashes (or, with no records, goes silent).
    pub heartbeat_every: Option<Duration>,
    pub heartbeat_for: Duration,
    /// Each record's own deadline, from its panic (the appliance's `deadline_ms`); the run's
    /// `deadline` still bounds everything.
    pub record_deadline: Option<Duration>,
}

/// The result of a run. `acked + lost + rejected == records`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub canaries: u32,
    pub records: u64,
    /// Records whose first round was sent.
    pub sent: u64,
    /// Records acked as stored or duplicate.
    pub acked: u64,
    /// Of `acked`, acked with status duplicate (a retransmit whose first ack was lost).
    pub acked_duplicate: u64,
    /// Records acked with status rejected.
    pub rejected: u64,
    /// Records never acked before the deadline.
    pub lost: u64,
    pub elapsed_s: f64,
    pub records_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Datagrams put on the wire (after injected drops, including injected duplicates).
    pub datagrams_sent: u64,
    pub datagrams_dropped_out: u64,
    pub datagrams_dropped_in: u64,
    pub retransmit_rounds: u64,
    /// Heartbeats sent (after injected drops).
    pub heartbeats_sent: u64,
    /// UDP sockets used; less than `canaries` when they had to share.
    pub sockets: u32,
    pub fd_limit: u64,
    pub encoded_record_len: usize,
}

/// splitmix64: a tiny deterministic PRNG, good enough for fault injection.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Default)]
struct Shared {
    acked: AtomicU64,
}

#[derive(Default, Debug)]
struct CanaryResult {
    sent: u64,
    acked: u64,
    acked_duplicate: u64,
    rejected: u64,
    lost: u64,
    latencies_us: Vec<u32>,
    datagrams_sent: u64,
    dropped_out: u64,
    dropped_in: u64,
    retransmit_rounds: u64,
    heartbeats_sent: u64,
}

/// How a canary reaches the network.
enum Io {
    Own(UdpSocket),
    Shared(Arc<UdpSocket>, mpsc::UnboundedReceiver<Vec<u8>>),
}

impl Io {
    fn socket(&self) -> &UdpSocket {
        match self {
            Io::Own(s) => s,
            Io::Shared(s, _) => s,
        }
    }

    async fn recv(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Io::Own(s) => {
                buf.resize(2048, 0);
                s.recv(buf).await
            }
            Io::Shared(_, rx) => match rx.recv().await {
                Some(d) => {
                    *buf = d;
                    Ok(buf.len())
                }
                None => std::future::pending().await,
            },
        }
    }
}

/// The per-canary identity: boot id from (seed, run nonce, index).
fn boot_id(seed: u64, nonce: u64, index: u32) -> [u8; 16] {
    let mut r = Rng::new(seed ^ nonce.rotate_left(17) ^ (u64::from(index) << 32 | 0x5eed));
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&r.next_u64().to_le_bytes());
    id[8..].copy_from_slice(&r.next_u64().to_le_bytes());
    id
}

/// Raises RLIMIT_NOFILE so that `want` descriptors fit; returns the soft limit in force.
#[cfg(unix)]
pub fn raise_fd_limit(want: u64) -> u64 {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(1024);
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(before);
    if soft >= want {
        return soft;
    }
    // Root may raise the hard limit as well.
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        return want;
    }
    soft
}

/// Windows has no per-process limit on sockets like RLIMIT_NOFILE: `want` fit.
#[cfg(not(unix))]
pub fn raise_fd_limit(want: u64) -> u64 {
    want
}

/// Memory one simulated canary takes (its task, buffers and record), roughly, in bytes.
pub const CANARY_COST: u64 = 24 << 10;
/// Memory one record of the run takes (its latency sample), in bytes.
pub const RECORD_COST: u64 = 4;
/// Most canaries in one run, whatever the memory: each needs a task and (ideally) a socket.
pub const MAX_CANARIES: u32 = 1_000_000;

/// Bytes of memory available to this process (`MemAvailable`), if known.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// Checks the parameters against what this machine can do (memory, sequence numbers, the
/// clock), before anything is allocated.
pub fn validate(cfg: &LoadConfig) -> Result<(), LoadError> {
    let bad = |m: String| Err(LoadError::Invalid(m));
    // Use at most half of the available memory (1 GiB if unknown).
    let budget = mem_available().unwrap_or(2 << 30) / 2;
    let max_canaries = (budget / CANARY_COST).min(u64::from(MAX_CANARIES)).max(1);
    if cfg.canaries == 0 {
        return bad("--canaries must be at least 1".into());
    }
    if u64::from(cfg.canaries) > max_canaries {
        return bad(format!(
            "--canaries {} is more than this machine can run: at most {max_canaries} (about \
             {} KiB of memory each, half of the available memory)",
            cfg.canaries,
            CANARY_COST >> 10
        ));
    }
    // Sequence numbers are 32-bit: one canary sends at most u32::MAX records.
    let max_by_seq = u64::from(cfg.canaries).saturating_mul(u64::from(u32::MAX));
    let max_by_mem = budget.saturating_sub(u64::from(cfg.canaries) * CANARY_COST) / RECORD_COST;
    let max_records = max_by_seq.min(max_by_mem);
    if cfg.records > max_records {
        return bad(format!(
            "--records {} is more than this machine can run with {} canaries: at most \
             {max_records} ({})",
            cfg.records,
            cfg.canaries,
            if max_by_seq <= max_by_mem {
                "each canary numbers its records with 32 bits"
            } else {
                "memory for the latency of each record"
            }
        ));
    }
    for (name, p) in [
        ("loss", cfg.loss),
        ("dup", cfg.dup),
        ("reorder", cfg.reorder),
    ] {
        if !(0.0..1.0).contains(&p) {
            return bad(format!("--{name} {p} is not a probability in [0, 1)"));
        }
    }
    if cfg
        .heartbeat_every
        .is_some_and(|d| d < Duration::from_millis(1))
    {
        return bad("--heartbeats must be at least 1ms".into());
    }
    if Instant::now().checked_add(cfg.heartbeat_for).is_none() {
        return bad(format!(
            "--heartbeat-for {:?} is out of range",
            cfg.heartbeat_for
        ));
    }
    if cfg.deadline.is_zero() || Instant::now().checked_add(cfg.deadline).is_none() {
        return bad(format!("--deadline {:?} is out of range", cfg.deadline));
    }
    Ok(())
}

/// Runs the load. `progress` is called about ten times a second with the acked count.
pub async fn run(
    cfg: LoadConfig,
    progress: Option<Box<dyn Fn(u64) + Send>>,
) -> Result<LoadReport, LoadError> {
    validate(&cfg)?;
    // Keep 64 descriptors for everything else.
    let fd_limit = raise_fd_limit(u64::from(cfg.canaries) + 64);
    let sockets = (cfg.canaries as u64)
        .min(fd_limit.saturating_sub(64).max(1))
        .min(u64::from(cfg.max_sockets.unwrap_or(u32::MAX).max(1))) as u32;
    if u64::from(sockets) < u64::from(cfg.canaries).min(fd_limit.saturating_sub(64).max(1)) {
        tracing::info!(sockets, "canaries share sockets (--max-sockets)");
    } else if sockets < cfg.canaries {
        tracing::warn!(
            fd_limit,
            sockets,
            "not enough file descriptors for one socket per canary: canaries share sockets"
        );
    }
    let bind: SocketAddr = if cfg.target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let ids: Vec<[u8; 16]> = (0..cfg.canaries)
        .map(|i| boot_id(cfg.seed, nonce, i))
        .collect();

    // Sockets, and for shared ones a dispatcher routing acks by boot id.
    let mut ios: Vec<Option<Io>> = Vec::with_capacity(cfg.canaries as usize);
    if sockets == cfg.canaries {
        for _ in 0..cfg.canaries {
            let s = UdpSocket::bind(bind).await?;
            s.connect(cfg.target).await?;
            ios.push(Some(Io::Own(s)));
        }
    } else {
        let mut routes: Vec<HashMap<[u8; 16], mpsc::UnboundedSender<Vec<u8>>>> =
            (0..sockets).map(|_| HashMap::new()).collect();
        let mut socks = Vec::with_capacity(sockets as usize);
        for _ in 0..sockets {
            let s = UdpSocket::bind(bind).await?;
            s.connect(cfg.target).await?;
            socks.push(Arc::new(s));
        }
        for (i, id) in ids.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let si = i % sockets as usize;
            routes[si].insert(*id, tx);
            ios.push(Some(Io::Shared(socks[si].clone(), rx)));
        }
        for (s, r) in socks.into_iter().zip(routes) {
            let key = cfg.key.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(n) = s.recv(&mut buf).await {
                    if let Ok(Repr::Ack(a)) = wire::parse(&buf[..n], key.as_ref()) {
                        if let Some(tx) = r.get(&a.boot_id) {
                            let _ = tx.send(buf[..n].to_vec());
                        }
                    }
                }
            });
        }
    }

    let mut probe = [0u8; capture::record::MAX_ENCODED_LEN];
    let encoded_record_len = capture::testutil::sample_record(1)
        .encode(&mut probe)
        .map_err(LoadError::Encode)?
        .len();

    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let per = cfg.records / u64::from(cfg.canaries);
    let extra = cfg.records % u64::from(cfg.canaries);
    let mut tasks = Vec::with_capacity(cfg.canaries as usize);
    for i in 0..cfg.canaries {
        let n = per + u64::from(u64::from(i) < extra);
        let io = ios[i as usize].take().expect("one io per canary");
        let cfg = cfg.clone();
        let shared = shared.clone();
        let id = ids[i as usize];
        tasks.push(tokio::spawn(canary(cfg, i, id, n, io, start, shared)));
    }
    let ticker = progress.map(|f| {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                f(shared.acked.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let mut total = CanaryResult::default();
    for t in tasks {
        let r = t
            .await
            .map_err(|e| LoadError::Io(std::io::Error::other(e.to_string())))??;
        total.sent += r.sent;
        total.acked += r.acked;
        total.acked_duplicate += r.acked_duplicate;
        total.rejected += r.rejected;
        total.lost += r.lost;
        total.latencies_us.extend(r.latencies_us);
        total.datagrams_sent += r.datagrams_sent;
        total.dropped_out += r.dropped_out;
        total.dropped_in += r.dropped_in;
        total.retransmit_rounds += r.retransmit_rounds;
        total.heartbeats_sent += r.heartbeats_sent;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
    }
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    Ok(LoadReport {
        canaries: cfg.canaries,
        records: cfg.records,
        sent: total.sent,
        acked: total.acked,
        acked_duplicate: total.acked_duplicate,
        rejected: total.rejected,
        lost: total.lost,
        elapsed_s: elapsed,
        records_per_s: if elapsed > 0.0 {
            total.acked as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().map(|v| f64::from(*v) / 1000.0).unwrap_or(0.0),
        datagrams_sent: total.datagrams_sent,
        datagrams_dropped_out: total.dropped_out,
        datagrams_dropped_in: total.dropped_in,
        retransmit_rounds: total.retransmit_rounds,
        heartbeats_sent: total.heartbeats_sent,
        sockets,
        fd_limit,
        encoded_record_len,
    })
}

async fn canary(
    cfg: LoadConfig,
    index: u32,
    boot_id: [u8; 16],
    records: u64,
    mut io: Io,
    start: Instant,
    shared: Arc<Shared>,
) -> Result<CanaryResult, LoadError> {
    let mut rng = Rng::new(cfg.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ u64::from(index));
    let mut res = CanaryResult {
        latencies_us: Vec::with_capacity(records as usize),
        ..CanaryResult::default()
    };
    // One deadline for the whole run (checked in `validate`).
    let end = start + cfg.deadline;
    let mut encbuf = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let mut out: Vec<u8> = Vec::with_capacity(4 * wire::MAX_DATAGRAM);
    let mut out_lens: Vec<usize> = Vec::with_capacity(8);
    let mut held: Option<Vec<u8>> = None;
    let mut rbuf = vec![0u8; 2048];
    let mut rec: CrashRecord = capture::testutil::sample_record(0);
    rec.boot_id = boot_id;
    let now_ms = || start.elapsed().as_millis() as u64;
    if let Some(every) = cfg.heartbeat_every {
        heartbeats(&cfg, boot_id, every, &io, &mut rng, &mut res, start, end).await;
    }
    // `validate` bounds a canary's share to u32::MAX.
    let records = u32::try_from(records).unwrap_or(u32::MAX);
    for seq in 1..=records {
        // The simulated panic: build and encode the record.
        let t0 = Instant::now();
        let Some(left) = end.checked_duration_since(t0).filter(|d| !d.is_zero()) else {
            // The run's deadline passed: this record and the rest are lost.
            res.lost += u64::from(records - seq + 1);
            break;
        };
        let left = cfg.record_deadline.map_or(left, |d| d.min(left));
        let scfg = SenderConfig {
            initial_rto_ms: cfg.initial_rto_ms,
            max_rto_ms: cfg.max_rto_ms,
            deadline_ms: left.as_millis().try_into().unwrap_or(u64::MAX).max(1),
        };
        rec.seq = seq;
        rec.message.clear();
        let _ = write!(
            rec.message,
            "load: simulated panic {seq} of canary {index} (loss {})",
            cfg.loss
        );
        rec.uptime_us = t0.duration_since(start).as_micros() as u64;
        let bytes = rec.encode(&mut encbuf).map_err(LoadError::Encode)?;
        let mut sender = Sender::new(scfg, boot_id, seq, bytes, cfg.key.as_ref(), now_ms())
            .map_err(LoadError::Encode)?;
        if let Some((major, minor)) = cfg.schema {
            sender = sender.with_schema(major, minor);
        }
        res.sent += 1;
        loop {
            out.clear();
            out_lens.clear();
            let state = sender.poll(now_ms(), &mut |d| {
                out.extend_from_slice(d);
                out_lens.push(d.len());
            });
            // Fault injection on the way out: drop, duplicate, hold back (reorder).
            let mut off = 0;
            for &len in &out_lens {
                let d = &out[off..off + len];
                off += len;
                if rng.chance(cfg.loss) {
                    res.dropped_out += 1;
                    continue;
                }
                if held.is_none() && rng.chance(cfg.reorder) {
                    held = Some(d.to_vec());
                    continue;
                }
                send(io.socket(), d).await;
                res.datagrams_sent += 1;
                if rng.chance(cfg.dup) {
                    send(io.socket(), d).await;
                    res.datagrams_sent += 1;
                }
                if let Some(h) = held.take() {
                    send(io.socket(), &h).await;
                    res.datagrams_sent += 1;
                }
            }
            let next_ms = match state {
                SendState::Waiting { next_ms } => next_ms,
                SendState::Acked => {
                    res.acked += 1;
                    if sender.ack_status() == Some(wire::AckStatus::Duplicate) {
                        res.acked_duplicate += 1;
                    }
                    res.latencies_us
                        .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                SendState::Rejected => {
                    res.rejected += 1;
                    break;
                }
                SendState::TimedOut => {
                    res.lost += 1;
                    break;
                }
            };
            let wait = next_ms.saturating_sub(now_ms());
            if wait == 0 {
                continue;
            }
            tokio::select! {
                r = io.recv(&mut rbuf) => {
                    // Errors here are ICMP port-unreachable reports (no collector listening
                    // yet): the next round retransmits.
                    let Ok(n) = r else { continue };
                    if rng.chance(cfg.loss) {
                        res.dropped_in += 1;
                    } else {
                        sender.handle(&rbuf[..n]);
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
        let st = sender.stats();
        res.retransmit_rounds += u64::from(st.retransmit_rounds);
    }
    Ok(res)
}

/// Heartbeats every `every` for `cfg.heartbeat_for` (or until the run's deadline), with the
/// run's outgoing loss applied.
#[allow(clippy::too_many_arguments)]
async fn heartbeats(
    cfg: &LoadConfig,
    boot_id: [u8; 16],
    every: Duration,
    io: &Io,
    rng: &mut Rng,
    res: &mut CanaryResult,
    start: Instant,
    end: Instant,
) {
    let stop = (Instant::now() + cfg.heartbeat_for).min(end);
    let mut frame = [0u8; wire::MAX_DATAGRAM];
    let mut seq = 0u32;
    let mut next = tokio::time::Instant::now();
    while Instant::now() < stop {
        // Stamped with the tick it belongs to, like a canary's periodic timer: when this
        // task runs late on a busy machine the uptimes still advance by `every`, so the
        // collector measures the interval the canary keeps, not the scheduling jitter.
        let uptime = next.into_std().saturating_duration_since(start);
        let hb = Repr::Heartbeat(wire::HeartbeatRepr {
            boot_id,
            seq,
            uptime_ms: uptime.as_millis() as u64,
            arch: capture::record::Arch::X86_64,
        });
        if let Ok(n) = hb.emit(cfg.key.as_ref(), &mut frame) {
            if rng.chance(cfg.loss) {
                res.dropped_out += 1;
            } else {
                send(io.socket(), &frame[..n]).await;
                res.heartbeats_sent += 1;
            }
        }
        seq = seq.wrapping_add(1);
        next += every;
        tokio::time::sleep_until(next).await;
    }
}

async fn send(s: &UdpSocket, d: &[u8]) {
    // Connected socket: a refused port (collector not up yet) shows up as an error on a
    // later call; the sender's retransmits cover it.
    match s.try_send(d) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let _ = s.send(d).await;
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn heartbeat_uptimes_advance_by_the_interval_when_the_task_runs_late() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            tx.connect(rx.local_addr().unwrap()).await.unwrap();
            let cfg = LoadConfig {
                target: rx.local_addr().unwrap(),
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
                heartbeat_every: Some(Duration::from_millis(100)),
                heartbeat_for: Duration::from_millis(450),
                record_deadline: None,
            };
            let (io, mut rng, mut res) = (Io::Own(tx), Rng::new(1), CanaryResult::default());
            let start = Instant::now();
            let end = start + cfg.deadline;
            // The runtime's one thread is busy from 150 to 230 ms (a loaded machine): the
            // heartbeat due at 200 ms goes out about 30 ms late.
            let busy = async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                std::thread::sleep(Duration::from_millis(80));
            };
            let every = Duration::from_millis(100);
            tokio::join!(
                heartbeats(&cfg, [7; 16], every, &io, &mut rng, &mut res, start, end),
                busy
            );
            let mut buf = [0u8; 2048];
            let mut uptimes = Vec::new();
            while let Ok(n) = rx.try_recv(&mut buf) {
                if let Ok(Repr::Heartbeat(h)) = wire::parse(&buf[..n], None) {
                    uptimes.push(h.uptime_ms);
                }
            }
            assert!(uptimes.len() >= 4, "{uptimes:?}");
            // The collector measures the interval from consecutive uptimes: they advance by
            // the interval, not by when the task happened to run.
            for w in uptimes.windows(2) {
                assert_eq!(w[1] - w[0], 100, "{uptimes:?}");
            }
        });
    }

    #[test]
    fn boot_ids_differ_per_canary() {
        let a = boot_id(1, 99, 0);
        let b = boot_id(1, 99, 1);
        assert_ne!(a, b);
        assert_eq!(a, boot_id(1, 99, 0));
    }
}
