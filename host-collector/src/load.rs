//! `load`: N simulated canaries, each a real [`capture::sender::Sender`], sending M records to
//! a collector, with deterministic, seeded fault injection on both directions.
//!
//! Each canary ([`canary`]) has its own connected UDP socket (its own source port). It sends its
//! share of the records one after another (a canary ships one crash record at a time, the next
//! after the ack). If the process may not open one socket per canary (RLIMIT_NOFILE, after
//! raising the soft limit to the hard limit, and the hard limit too when running as root),
//! canaries share sockets and acks are routed to canaries by boot id.
//!
//! All canaries run on the calling thread, in one event loop ([`exec`]) that waits on every
//! socket at once (epoll on Linux, poll elsewhere: [`poller`]): `load` shares the machine with
//! the collector it measures, so it spends as little CPU per record as it can (no runtime
//! threads to wake, no `recv` that finds nothing, one clock read per record).

mod canary;
mod exec;
mod poller;
mod template;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use capture::Key;
use serde::Serialize;
use thiserror::Error;

use canary::{canary, Env};
use exec::{Net, Reactor, Route, Task};
use poller::Poller;

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

/// Runs the load on this thread, which it keeps until every canary is done: one event loop
/// drives all canaries ([`exec`]). `progress` is called about ten times a second with the
/// acked count.
pub fn run(
    cfg: LoadConfig,
    progress: Option<Box<dyn Fn(u64) + Send>>,
) -> Result<LoadReport, LoadError> {
    #[cfg(target_os = "linux")]
    let poller = poller::Epoll::new()?;
    #[cfg(not(target_os = "linux"))]
    let poller = poller::PollSet::default();
    run_with(cfg, progress, poller)
}

/// A non-blocking UDP socket bound to `bind` and connected to `target`.
fn connected(bind: SocketAddr, target: SocketAddr) -> std::io::Result<Rc<UdpSocket>> {
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    Ok(Rc::new(s))
}

/// [`run`] with the given readiness API (the tests run both on Linux).
fn run_with<P: Poller>(
    cfg: LoadConfig,
    progress: Option<Box<dyn Fn(u64) + Send>>,
    poller: P,
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

    // Sockets: one per canary, or shared ones whose acks the loop routes by boot id.
    let mut net = Net::new(poller);
    let mut socks: Vec<Rc<UdpSocket>> = Vec::with_capacity(cfg.canaries as usize);
    if sockets == cfg.canaries {
        for i in 0..cfg.canaries as usize {
            let s = connected(bind, cfg.target)?;
            net.add(s.clone(), Route::Own(i))?;
            socks.push(s);
        }
    } else {
        let mut shared = Vec::with_capacity(sockets as usize);
        let mut routes: Vec<HashMap<[u8; 16], usize>> =
            (0..sockets).map(|_| HashMap::new()).collect();
        for _ in 0..sockets {
            shared.push(connected(bind, cfg.target)?);
        }
        for (i, id) in ids.iter().enumerate() {
            let si = i % sockets as usize;
            routes[si].insert(*id, i);
            socks.push(shared[si].clone());
        }
        for (s, r) in shared.into_iter().zip(routes) {
            net.add(s, Route::Shared(r))?;
        }
    }

    let mut probe = [0u8; capture::record::MAX_ENCODED_LEN];
    let encoded_record_len = capture::testutil::sample_record(1)
        .encode(&mut probe)
        .map_err(LoadError::Encode)?
        .len();

    let rx = Reactor::new(cfg.canaries as usize);
    let acked = Cell::new(0u64);
    let start = rx.refresh();
    let env = Env {
        cfg: &cfg,
        rx: &rx,
        start,
        end: start + cfg.deadline,
        acked: &acked,
    };
    let per = cfg.records / u64::from(cfg.canaries);
    let extra = cfg.records % u64::from(cfg.canaries);
    let env = &env;
    let tasks: Vec<Task<'_, Result<CanaryResult, LoadError>>> = socks
        .into_iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (s, id))| {
            let n = per + u64::from((i as u64) < extra);
            Box::pin(canary(env, i as u32, id, n, s)) as Task<'_, _>
        })
        .collect();
    let mut report = || {
        if let Some(f) = &progress {
            f(acked.get());
        }
    };
    let tick = progress
        .is_some()
        .then_some((Duration::from_millis(100), &mut report as &mut dyn FnMut()));
    let results = exec::run_all(&rx, tasks, &mut net, cfg.key.as_ref(), tick)?;
    let mut total = CanaryResult::default();
    for r in results {
        let r = r?;
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

#[cfg(test)]
mod tests;
