//! A benchmark of the batch writer alone (ignored by default; run it optimized):
//!
//! ```text
//! BENCH_RECORDS=200000 BENCH_BATCH=30 cargo test --release -p host-collector --lib \
//!     store::sqlite::bench -- --ignored --nocapture
//! ```
//!
//! Commits lean records (what `serve` stores: real encoded records of ~950 bytes) in batches
//! of `BENCH_BATCH` on one thread, while a second thread checkpoints the WAL every 200 ms
//! as `serve`'s does, and prints the writing thread's CPU time per record, the bytes the
//! process wrote per record (`/proc/self/io`) and the database's size.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::record::{MAX_ENCODED_LEN, SCHEMA_MAJOR, SCHEMA_MINOR};

use super::super::{Checkpointer, NewRecord, RecordKey, Store, Sync};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This thread's user and system CPU seconds.
fn thread_cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    // Fields 14 and 15 of stat, counted from the state (field 3) here.
    (tick(11), tick(12))
}

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Lean record `i` (100 boots, as `load --canaries 100` sends them).
fn record(i: u32) -> NewRecord {
    let mut r = capture::testutil::sample_record(i / 100);
    r.boot_id = [0; 16];
    r.boot_id[..4].copy_from_slice(&(i % 100).wrapping_mul(2_654_435_761).to_le_bytes());
    r.boot_id[4..8].copy_from_slice(&i.to_le_bytes());
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let raw = r.encode(&mut buf).expect("encodes").to_vec();
    let source: std::net::SocketAddr = "10.0.0.9:4000".parse().expect("address");
    NewRecord {
        key: RecordKey {
            boot_id: r.boot_id,
            seq: r.seq,
            record_crc: crc32fast::hash(&raw),
        },
        received_at_us: 1_700_000_000_000_000 + i as i64 * 25,
        schema_major: SCHEMA_MAJOR,
        schema_minor: SCHEMA_MINOR,
        uptime_us: r.uptime_us,
        line_col: r.location.as_ref().map_or((0, 0), |l| (l.line, l.column)),
        text: crate::convert::row_text_lean(source, &r),
        raw,
    }
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_commit_batches() {
    let n = env("BENCH_RECORDS", 100_000) as u32;
    let batch = env("BENCH_BATCH", 30).max(1) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.db");
    let mut s = Store::open(&path, Sync::Normal).expect("open");
    s.lock_writer(&path).expect("lock");
    s.set_lean(true);
    s.set_autocheckpoint(0).expect("autocheckpoint");
    s.load_dedupe_keys().expect("keys");
    let stop = Arc::new(AtomicBool::new(false));
    let ckpt = {
        let c = Checkpointer::open(&path, Sync::Normal).expect("checkpointer");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = thread_cpu();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if let Ok((log, _)) = c.passive() {
                    if log > 4096 {
                        let _ = c.restart();
                    }
                }
            }
            let end = thread_cpu();
            (end.0 - start.0, end.1 - start.1)
        })
    };
    let records: Vec<NewRecord> = (0..n).map(record).collect();
    let w0 = write_bytes();
    let c0 = thread_cpu();
    let t0 = Instant::now();
    for b in records.chunks(batch) {
        let out = s
            .commit_batch(b, &[], &[], &[("datagrams", b.len() as u64)])
            .expect("commit");
        assert_eq!(out.len(), b.len());
    }
    let c1 = thread_cpu();
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (cu, cs) = ckpt.join().expect("checkpoint thread");
    let w1 = write_bytes();
    let db = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let page: i64 = s
        .connection()
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .expect("page size");
    let per = |v: f64| v * 1e6 / n as f64;
    println!(
        "page {page} batch {batch} records {n}: writer user {:.2} sys {:.2} us/rec, \
         ckpt user {:.2} sys {:.2} us/rec, {:.0} records/s, write {:.0} B/rec ({:.0} MB), \
         db {:.0} B/rec ({:.1} MB)",
        per(c1.0 - c0.0),
        per(c1.1 - c0.1),
        per(cu),
        per(cs),
        n as f64 / took.as_secs_f64(),
        (w1 - w0) as f64 / n as f64,
        (w1 - w0) as f64 / 1e6,
        db as f64 / n as f64,
        db as f64 / 1e6,
    );
    assert_eq!(s.count().expect("count"), n as u64);
}
