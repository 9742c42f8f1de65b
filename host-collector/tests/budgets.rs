//! Memory and disk in proportion to what an honest fleet sends (issue 12, items 1, 4 and 6):
//! hostile senders on loopback against a real `serve`, measured from outside (RSS from
//! /proc, file sizes, counters). Every test here failed on d5727b9.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use capture::chunk::{chunk_count, chunk_repr, RecordId, MAX_RECORD_LEN};
use capture::wire::{self, Repr};
use common::*;

fn config(dir: &Path, text: &str) -> String {
    let p = dir.join("collector.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn start_with(db: &Path, cfg: Option<&str>) -> Server {
    match cfg {
        Some(c) => Server::start(db, "127.0.0.1:0", &["--config", c], &[]),
        None => Server::start(db, "127.0.0.1:0", &[], &[]),
    }
}

/// The first chunk of a record claiming `MAX_RECORD_LEN` bytes: 61 bytes of payload make the
/// collector set aside room for 64 KiB.
fn flood_frame(boot: [u8; 16], seq: u32, out: &mut [u8]) -> usize {
    let body = vec![0x42u8; MAX_RECORD_LEN];
    let id = RecordId::of(boot, seq, &body);
    let mut c = chunk_repr(&id, &body, 0, (1, 0)).unwrap();
    c.data = &c.data[..61];
    Repr::Chunk(c).emit(None, out).unwrap()
}

#[test]
fn a_reassembly_flood_is_held_to_the_byte_budget_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = start_with(&db, None);
    let pid = srv.child.as_ref().unwrap().id();
    let (rss0, _) = rss_kib(pid);
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    // 64 source ports x 64 partial records each (the per-source and total count caps).
    let socks: Vec<UdpSocket> = (0..64)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut seq = 0u32;
    for round in 0..64 {
        for s in &socks {
            seq += 1;
            let n = flood_frame([round as u8; 16], seq, &mut buf);
            s.send_to(&buf[..n], srv.addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let s = wait_stats(&db, |s| s["datagrams"].as_u64() == Some(u64::from(seq)));
    let (rss, hwm) = rss_kib(pid);
    // Default budget: 32 MiB of partial records. Allow the same again for everything else.
    assert!(
        hwm.saturating_sub(rss0) < 64 * 1024,
        "peak RSS grew by {} KiB (from {rss0} to {hwm}, now {rss})",
        hwm.saturating_sub(rss0)
    );
    let evicted = s["evictions"].as_u64().unwrap();
    assert!(
        evicted >= 3000,
        "oldest partials evicted and counted: {s:#}"
    );
    assert_eq!(srv.stop("TERM"), 0);
}

/// Sends every chunk of a `len`-byte record of schema `major`.0 once, without waiting for acks.
fn blast_record(sock: &UdpSocket, to: std::net::SocketAddr, seq: u32, len: usize, major: u16) {
    let mut body = vec![0u8; len];
    for (i, b) in body.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(seq | 1) as u8;
    }
    let id = RecordId::of([0xee; 16], seq, &body);
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    for i in 0..chunk_count(len) as u16 {
        let c = chunk_repr(&id, &body, i, (major, 0)).unwrap();
        let n = Repr::Chunk(c).emit(None, &mut buf).unwrap();
        sock.send_to(&buf[..n], to).unwrap();
    }
}

#[test]
fn rejected_records_are_kept_to_a_byte_budget_then_only_counted_and_warnings_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let cfg = config(dir.path(), "rejected_max_bytes = 2097152\n");
    let mut srv = start_with(&db, Some(&cfg));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // 200 complete 60 KiB records of an unknown schema: 12 MB, six times the budget.
    for seq in 0..200 {
        blast_record(&sock, srv.addr, seq, 60 * 1024, 99);
        std::thread::sleep(Duration::from_millis(3));
    }
    let s = wait_stats(&db, |s| {
        s["rejected"].as_u64().unwrap_or(0) + s["rejected_not_kept"].as_u64().unwrap_or(0) >= 150
    });
    assert!(s["rejected_not_kept"].as_u64().unwrap() > 0, "{s:#}");
    let kept: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT coalesce(sum(length(raw)), 0) FROM rejections",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        kept <= 2 * 1024 * 1024,
        "kept {kept} bytes of rejected records"
    );
    let mut warns = 0;
    while srv
        .wait_line(|l| l.contains("rejected"), Duration::from_millis(300))
        .is_some()
    {
        warns += 1;
    }
    assert!(
        warns <= 3,
        "{warns} warnings for one burst of rejected records"
    );
    assert_eq!(srv.stop("TERM"), 0);
    let grown = file_len(&db) + file_len(&wal_of(&db));
    assert!(grown < 6 * 1024 * 1024, "database + WAL are {grown} bytes");
}

#[test]
fn the_queue_to_a_stalled_writer_is_held_to_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let cfg = config(
        dir.path(),
        "queue_max_bytes = 4194304\nrejected_max_bytes = 0\n",
    );
    // Every commit waits 3 s: the writer falls behind and the queue fills.
    let srv = Server::start(
        &db,
        "127.0.0.1:0",
        &["--config", &cfg],
        &[("CANARY_COLLECTOR_TEST_COMMIT_DELAY_MS", "3000")],
    );
    let pid = srv.child.as_ref().unwrap().id();
    let (rss0, _) = rss_kib(pid);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // 1,500 complete 60 KiB records (90 MB) while the writer sleeps.
    for seq in 0..1500 {
        blast_record(&sock, srv.addr, seq, 60 * 1024, 99);
        if seq % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let s = wait_stats(&db, |s| s["queue_full_drops"].as_u64().unwrap_or(0) > 0);
    let (_, hwm) = rss_kib(pid);
    assert!(
        hwm.saturating_sub(rss0) < 48 * 1024,
        "peak RSS grew by {} KiB: {s:#}",
        hwm.saturating_sub(rss0)
    );
    drop(srv);
}

#[test]
fn the_wal_stays_within_its_configured_size_while_serve_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let cfg = config(dir.path(), "wal_max_bytes = 2097152\n");
    let srv = start_with(&db, Some(&cfg));
    let wal = wal_of(&db);
    let o = std::process::Command::new(BIN)
        .args([
            "load",
            "--target",
            &srv.addr.to_string(),
            "--canaries",
            "20",
        ])
        .args(["--records", "6000", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // After the load the WAL is checkpointed and cut back while serve keeps running.
    let end = Instant::now() + Duration::from_secs(10);
    while file_len(&wal) > 2 * 1024 * 1024 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        file_len(&wal) <= 2 * 1024 * 1024,
        "WAL is {} bytes, limit 2 MiB",
        file_len(&wal)
    );
    assert_eq!(stats(&db)["records"], 6000);
    assert_eq!(srv.stop("TERM"), 0);
}

// Item 1: retention as configuration, applied by serve.
#[test]
fn serve_applies_retention_from_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let now = host_collector::util::now_us();
    let day = 86_400_000_000i64;
    let recs: Vec<(u32, i64, &str)> = (0..10)
        .map(|i| (i, now - (10 - i as i64) * day, "old"))
        .chain((10..20).map(|i| (i, now - 1000, "new")))
        .collect();
    db_with(&db, &recs);
    let cfg = config(
        dir.path(),
        "max_age = \"5d 12h\"\nmax_records = 12\nretention_interval = \"200ms\"\n",
    );
    let srv = start_with(&db, Some(&cfg));
    // max_age drops the 5 records older than 5.5 days, max_records 3 more (the oldest).
    let s = wait_stats(&db, |s| s["records"] == 12);
    assert!(s["retention_deleted"].as_u64().unwrap() >= 8, "{s:#}");
    let o = run_db(&db, &["list", "--json"]);
    let first = json(&o)[0]["seq"].as_u64().unwrap();
    assert_eq!(first, 8, "the oldest went first");
    // Later records are held to max_records as well (applied periodically).
    for seq in 1..=3 {
        let st = send_record(
            srv.addr,
            [4; 16],
            seq,
            &sample_bytes([4; 16], seq),
            None,
            None,
        );
        assert_eq!(st, capture::sender::SendState::Acked);
    }
    // (20 stored by db_with, 3 by serve.)
    wait_stats(&db, |s| s["records"] == 12 && s["records_stored"] == 23);
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn serve_holds_the_database_to_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let now = host_collector::util::now_us();
    let big = "y".repeat(8000);
    let recs: Vec<(u32, i64, &str)> = (0..1000).map(|i| (i, now - 1000, big.as_str())).collect();
    db_with(&db, &recs);
    assert!(file_len(&db) + file_len(&wal_of(&db)) > 8_000_000);
    let cfg = config(
        dir.path(),
        "max_bytes = 2097152\nretention_interval = \"200ms\"\n",
    );
    let srv = start_with(&db, Some(&cfg));
    let s = wait_stats(&db, |s| s["records"].as_u64().unwrap() < 300);
    assert!(s["records"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(srv.stop("TERM"), 0);
}
