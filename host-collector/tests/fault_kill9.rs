//! Fault run: a real `host-collector serve` process under load from many simulated canaries is
//! killed with SIGKILL in the middle of the run and restarted on the same database and port,
//! while the network drops, duplicates and reorders datagrams. Every record the canaries saw
//! acked must be in the database afterwards (acked ⊆ stored), each exactly once.
//!
//! The canaries here are the real `capture::sender::Sender` state machine (what the appliance
//! runs), one thread and one UDP socket each, so the test knows exactly which records were
//! acked — the load generator only reports counts. The numbers are printed (see them with
//! `cargo test -p host-collector --test fault_kill9 -- --nocapture`).
//!
//! A second test kills and restarts the collector three times in one run. A third makes the
//! collector's disk fill up (RLIMIT_FSIZE on the collector process,
//! with SIGXFSZ ignored, so writes past the limit fail with EFBIG like on a full disk): no
//! record may be acked that was not committed, and once the collector runs again with room,
//! the canaries' retransmits store everything.
#![cfg(unix)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use capture::chunk::RecordId;
use capture::sender::{SendState, Sender, SenderConfig};
use host_collector::store::{RecordKey, Store, Sync};

const BIN: &str = env!("CARGO_BIN_EXE_host-collector");

/// One `host-collector serve` process.
struct Collector {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Collector {
    /// Starts serve on `listen` (through `bash -c` when `shell_prefix` is set, so the test can
    /// put limits on the process) and waits for its "listening on" line.
    fn start(db: &Path, listen: &str, env: &[(&str, &str)], shell_prefix: Option<&str>) -> Self {
        let mut cmd = match shell_prefix {
            None => Command::new(BIN),
            Some(prefix) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                    .arg(BIN);
                c
            }
        };
        cmd.arg("--db")
            .arg(db)
            .args(["serve", "--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start host-collector serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let end = Instant::now() + Duration::from_secs(15);
        let addr = loop {
            let left = end.saturating_duration_since(Instant::now());
            let l = lines
                .recv_timeout(left)
                .expect("serve did not say where it listens");
            if let Some(rest) = l.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Collector { child, addr, lines }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// Waits until the process has exited (on its own), returning its stderr lines.
    fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, Vec<String>) {
        let end = Instant::now() + timeout;
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.code();
            }
            if Instant::now() > end {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        (code, self.lines.try_iter().collect())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// splitmix64, deterministic per canary: drop/duplicate/reorder decisions.
struct Rng(u64);
impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Clone, Copy)]
struct Faults {
    loss: f64,
    dup: f64,
    reorder: f64,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    timed_out: AtomicU64,
    datagrams: AtomicU64,
    dropped: AtomicU64,
}

struct Run {
    acked: Vec<RecordKey>,
    sent: u64,
    timed_out: u64,
    datagrams: u64,
    dropped: u64,
}

fn key(id: RecordId) -> RecordKey {
    RecordKey {
        boot_id: id.boot_id,
        seq: id.seq,
        record_crc: id.record_crc,
    }
}

/// Canary `c`: sends `per` records one after another through its own socket (the collector's
/// address is re-read before every send, it does not change across the restart).
fn canary(
    c: u32,
    per: u32,
    target: SocketAddr,
    faults: Faults,
    cfg: SenderConfig,
    acked: Arc<Mutex<Vec<RecordKey>>>,
    totals: Arc<Totals>,
) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(target).unwrap();
    let mut rng = Rng(0x5eed_0000 + c as u64);
    let t0 = Instant::now();
    let now_ms = || t0.elapsed().as_millis() as u64;
    let mut boot_id = [0u8; 16];
    boot_id[..4].copy_from_slice(&c.to_le_bytes());
    boot_id[4..8].copy_from_slice(b"kil9");
    boot_id[8..16].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
    let mut buf = [0u8; capture::record::MAX_ENCODED_LEN];
    let mut held: Option<Vec<u8>> = None;
    for seq in 0..per {
        let mut rec = capture::testutil::sample_record(seq);
        rec.boot_id = boot_id;
        rec.seq = seq;
        let bytes = rec.encode(&mut buf).unwrap();
        let mut s = Sender::new(cfg, boot_id, seq, bytes, None, now_ms()).unwrap();
        totals.sent.fetch_add(1, Ordering::Relaxed);
        loop {
            let state = s.poll(now_ms(), &mut |d| {
                totals.datagrams.fetch_add(1, Ordering::Relaxed);
                if rng.chance(faults.loss) {
                    totals.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if rng.chance(faults.reorder) && held.is_none() {
                    held = Some(d.to_vec());
                    return;
                }
                let _ = sock.send(d);
                if rng.chance(faults.dup) {
                    let _ = sock.send(d);
                }
                if let Some(h) = held.take() {
                    let _ = sock.send(&h);
                }
            });
            let next = match state {
                SendState::Acked => {
                    acked.lock().unwrap().push(key(s.id()));
                    totals.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                SendState::TimedOut | SendState::Rejected => {
                    totals.timed_out.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                SendState::Waiting { next_ms } => next_ms,
            };
            // Wait for an ack until the next round is due.
            let wait = next.saturating_sub(now_ms()).max(1);
            sock.set_read_timeout(Some(Duration::from_millis(wait)))
                .unwrap();
            let mut rx = [0u8; 2048];
            if let Ok(n) = sock.recv(&mut rx) {
                if rng.chance(faults.loss) {
                    totals.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                s.handle(&rx[..n]);
            }
        }
    }
    if let Some(h) = held.take() {
        let _ = sock.send(&h);
    }
}

/// Runs `canaries` × `per` records against `target`; `during` runs on the test thread while
/// the canaries send (it sees the running totals) and is where the faults happen.
fn run_load(
    canaries: u32,
    per: u32,
    target: SocketAddr,
    faults: Faults,
    cfg: SenderConfig,
    during: impl FnOnce(&Totals),
) -> Run {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Totals::default());
    let threads: Vec<_> = (0..canaries)
        .map(|c| {
            let (acked, totals) = (acked.clone(), totals.clone());
            std::thread::spawn(move || canary(c, per, target, faults, cfg, acked, totals))
        })
        .collect();
    during(&totals);
    for t in threads {
        t.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    Run {
        acked,
        sent: totals.sent.load(Ordering::Relaxed),
        timed_out: totals.timed_out.load(Ordering::Relaxed),
        datagrams: totals.datagrams.load(Ordering::Relaxed),
        dropped: totals.dropped.load(Ordering::Relaxed),
    }
}

/// What is in the database: all stored keys, and the row count.
fn stored(db: &Path) -> (HashSet<RecordKey>, u64) {
    let s = Store::open(db, Sync::Normal).unwrap();
    let conn = s.connection();
    let mut st = conn
        .prepare("SELECT boot_id, seq, record_crc FROM records")
        .unwrap();
    let keys: Vec<RecordKey> = st
        .query_map([], |r| {
            let b: Vec<u8> = r.get(0)?;
            Ok(RecordKey {
                boot_id: b.as_slice().try_into().unwrap(),
                seq: r.get(1)?,
                record_crc: r.get(2)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows = keys.len() as u64;
    (keys.into_iter().collect(), rows)
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn temp_db(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(name);
    (dir, db)
}

/// Every acked record is stored, each exactly once; prints the numbers.
fn check_acked_subset_of_stored(label: &str, run: &Run, db: &Path, extra: &str) -> u64 {
    let (keys, rows) = stored(db);
    let acked: HashSet<RecordKey> = run.acked.iter().copied().collect();
    assert_eq!(
        acked.len(),
        run.acked.len(),
        "a record was acked twice to its sender"
    );
    let lost = acked.iter().filter(|k| !keys.contains(k)).count() as u64;
    eprintln!(
        "{label}: records sent {}, acked {}, stored {} (rows {rows}), lost {lost} (acked but \
         not stored), unacked {}; datagrams {} ({} dropped by the fault injector){extra}",
        run.sent,
        acked.len(),
        keys.len(),
        run.timed_out,
        run.datagrams,
        run.dropped,
    );
    assert_eq!(lost, 0, "{lost} acked records are not in the database");
    assert_eq!(rows, keys.len() as u64, "a record was stored twice");
    lost
}

#[test]
fn kill9_mid_run_loses_no_acked_record_under_loss_dup_and_reorder() {
    const CANARIES: u32 = 24;
    const PER: u32 = 25;
    let (_dir, db) = temp_db("kill9.db");
    // The first collector commits with a small delay, so at the kill there are records it has
    // received (maybe even reassembled) but not committed: those must not have been acked.
    let first = Collector::start(
        &db,
        "127.0.0.1:0",
        &[(host_collector::server::TEST_COMMIT_DELAY_ENV, "15")],
        None,
    );
    let addr = first.addr;
    let faults = Faults {
        loss: 0.1,
        dup: 0.1,
        reorder: 0.1,
    };
    let cfg = SenderConfig {
        initial_rto_ms: 40,
        max_rto_ms: 300,
        deadline_ms: 20_000,
    };
    let mut at_kill = (0, 0);
    let mut down_ms = 0;
    let t0 = Instant::now();
    let run = run_load(CANARIES, PER, addr, faults, cfg, |t| {
        let total = (CANARIES * PER) as u64;
        // Kill once about a third of the records are acked.
        wait_until(
            "a third of the records acked",
            Duration::from_secs(30),
            || t.acked.load(Ordering::Relaxed) >= total / 3,
        );
        at_kill = (
            t.acked.load(Ordering::Relaxed),
            t.sent.load(Ordering::Relaxed),
        );
        let killed = Instant::now();
        first.kill9();
        // Down for a while: the canaries retransmit into nothing.
        std::thread::sleep(Duration::from_millis(300));
        let second = Collector::start(&db, &addr.to_string(), &[], None);
        assert_eq!(second.addr, addr);
        down_ms = killed.elapsed().as_millis();
        wait_until("every record settled", Duration::from_secs(40), || {
            t.acked.load(Ordering::Relaxed) + t.timed_out.load(Ordering::Relaxed) == total
        });
        // Stop the second one the hard way too: acked records must already be durable.
        second.kill9();
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let extra = format!(
        "; killed (SIGKILL) after {} acked of {} started, down {down_ms} ms; {elapsed:.1} s",
        at_kill.0, at_kill.1
    );
    check_acked_subset_of_stored("kill -9 mid-run", &run, &db, &extra);
    // The kill really happened mid-run: records were acked before and after it.
    assert!(at_kill.0 > 0 && (run.acked.len() as u64) > at_kill.0);
    // And the collector came back: every record got through in the end.
    assert_eq!(
        run.timed_out, 0,
        "records timed out although the collector restarted"
    );
    assert_eq!(run.acked.len() as u64, run.sent);
    assert_eq!(run.sent, (CANARIES * PER) as u64);
}

#[test]
fn disk_full_never_acks_an_uncommitted_record_and_retransmits_store_it_later() {
    const CANARIES: u32 = 8;
    const PER: u32 = 40;
    let (_dir, db) = temp_db("full.db");
    // Create the database (schema) first, with room.
    drop(Store::open(&db, Sync::Normal).unwrap());
    let db_size = std::fs::metadata(&db).unwrap().len();
    // A "disk" with about 256 KiB more: every file the collector writes (database, WAL) may
    // grow to that size; past it write() fails with EFBIG (SIGXFSZ ignored), as on a full disk.
    let limit_kib = db_size / 1024 + 256;
    let full = Collector::start(
        &db,
        "127.0.0.1:0",
        &[],
        Some(&format!("trap '' XFSZ; ulimit -f {limit_kib}")),
    );
    let addr = full.addr;
    let faults = Faults {
        loss: 0.0,
        dup: 0.0,
        reorder: 0.0,
    };
    let cfg = SenderConfig {
        initial_rto_ms: 50,
        max_rto_ms: 400,
        deadline_ms: 30_000,
    };
    let mut full_out = (None, Vec::new());
    let mut acked_while_full = 0;
    let run = run_load(CANARIES, PER, addr, faults, cfg, |t| {
        // The collector either stops acking (and keeps running) or exits on the write error;
        // give it time to hit the limit either way.
        let mut last = u64::MAX;
        let mut still_since = Instant::now();
        wait_until(
            "the collector to stall on the full disk",
            Duration::from_secs(30),
            || {
                let a = t.acked.load(Ordering::Relaxed);
                if a != last {
                    last = a;
                    still_since = Instant::now();
                }
                a == (CANARIES * PER) as u64 || still_since.elapsed() > Duration::from_millis(1500)
            },
        );
        acked_while_full = t.acked.load(Ordering::Relaxed);
        // Whatever it acked so far must be on disk right now (checked after the run too).
        full_out = {
            // SIGKILL if it is still running; a collector that exited keeps its code.
            let mut f = full;
            match f.child.try_wait().unwrap() {
                Some(_) => f.wait_exit(Duration::from_secs(1)),
                None => {
                    let _ = f.child.kill();
                    f.wait_exit(Duration::from_secs(5))
                }
            }
        };
        // Room again: a collector without the limit on the same database and port.
        let roomy = Collector::start(&db, &addr.to_string(), &[], None);
        wait_until("every record settled", Duration::from_secs(40), || {
            t.acked.load(Ordering::Relaxed) + t.timed_out.load(Ordering::Relaxed)
                == (CANARIES * PER) as u64
        });
        roomy.kill9();
    });
    let said: Vec<&String> = full_out
        .1
        .iter()
        .filter(|l| l.contains("rror") || l.contains("full") || l.contains("FULL"))
        .collect();
    let extra = format!(
        "; file size limit {limit_kib} KiB: {acked_while_full} acked before the collector \
         stalled (exit {:?}; said {:?})",
        full_out.0,
        said.first()
    );
    check_acked_subset_of_stored("disk full", &run, &db, &extra);
    assert!(
        acked_while_full < (CANARIES * PER) as u64,
        "the limit was never reached: the test proves nothing"
    );
    assert_eq!(run.timed_out, 0);
    assert_eq!(run.acked.len() as u64, (CANARIES * PER) as u64);
}

#[test]
fn repeated_kill9_restarts_lose_no_acked_record() {
    const CANARIES: u32 = 16;
    const PER: u32 = 25;
    const KILLS: u64 = 3;
    let (_dir, db) = temp_db("kill9x3.db");
    let first = Collector::start(
        &db,
        "127.0.0.1:0",
        &[(host_collector::server::TEST_COMMIT_DELAY_ENV, "10")],
        None,
    );
    let addr = first.addr;
    let faults = Faults {
        loss: 0.05,
        dup: 0.05,
        reorder: 0.05,
    };
    let cfg = SenderConfig {
        initial_rto_ms: 40,
        max_rto_ms: 300,
        deadline_ms: 30_000,
    };
    let total = (CANARIES * PER) as u64;
    let mut kills = Vec::new();
    let run = run_load(CANARIES, PER, addr, faults, cfg, |t| {
        let mut current = first;
        for k in 1..=KILLS {
            // Kill at 1/4, 2/4, 3/4 of the records acked.
            wait_until("the next quarter acked", Duration::from_secs(30), || {
                t.acked.load(Ordering::Relaxed) >= total * k / (KILLS + 1)
            });
            kills.push(t.acked.load(Ordering::Relaxed));
            current.kill9();
            std::thread::sleep(Duration::from_millis(150));
            current = Collector::start(
                &db,
                &addr.to_string(),
                &[(host_collector::server::TEST_COMMIT_DELAY_ENV, "10")],
                None,
            );
        }
        wait_until("every record settled", Duration::from_secs(40), || {
            t.acked.load(Ordering::Relaxed) + t.timed_out.load(Ordering::Relaxed) == total
        });
        current.kill9();
    });
    let extra = format!("; killed (SIGKILL) {KILLS} times, at {kills:?} acked");
    check_acked_subset_of_stored("kill -9 x3", &run, &db, &extra);
    assert_eq!(kills.len() as u64, KILLS);
    assert!(
        kills.windows(2).all(|w| w[0] < w[1]),
        "kills not spread over the run"
    );
    assert_eq!(run.timed_out, 0);
    assert_eq!(run.acked.len() as u64, total);
}
