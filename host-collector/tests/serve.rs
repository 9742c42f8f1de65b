//! `serve` end to end: real collector processes on loopback.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use capture::chunk::{chunk_count, emit_chunk, RecordId};
use capture::sender::SendState;
use capture::wire::{self, HeartbeatRepr, Repr};
use capture::Key;
use common::*;

fn write_key(dir: &std::path::Path, name: &str, byte: u8) -> (std::path::PathBuf, Key) {
    let p = dir.join(name);
    let hex: String = std::iter::repeat_n(format!("{byte:02x}"), 32).collect();
    std::fs::write(&p, &hex).unwrap();
    (p, Key::from_hex(&hex).unwrap())
}

#[test]
fn malformed_datagrams_are_rejected_and_counted_and_a_good_record_is_still_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let (key_path, key) = write_key(dir.path(), "fleet.key", 0x11);
    let (_, wrong_key) = write_key(dir.path(), "wrong.key", 0x22);
    let srv = Server::start(
        &db,
        "127.0.0.1:0",
        &["--key-file", key_path.to_str().unwrap()],
        &[],
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rec = sample_bytes([5; 16], 1);
    let id = RecordId::of([5; 16], 1, &rec);
    let mut good = [0u8; wire::MAX_DATAGRAM];
    let n = emit_chunk(&id, &rec, 0, Some(&key), &mut good).unwrap();
    let good = &good[..n];

    // Truncated: a valid frame cut short.
    sock.send_to(&good[..5], srv.addr).unwrap();
    // Oversized: longer than MAX_DATAGRAM.
    let mut big = good.to_vec();
    big.resize(wire::MAX_DATAGRAM + 200, 0xaa);
    sock.send_to(&big, srv.addr).unwrap();
    // Wrong magic.
    let mut m = good.to_vec();
    m[0] = b'X';
    sock.send_to(&m, srv.addr).unwrap();
    // Random bytes (deterministic).
    let mut x = 0x1234_5678_u32;
    let random: Vec<u8> = (0..300)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    sock.send_to(&random, srv.addr).unwrap();
    // Bad CRC: one payload byte flipped.
    let mut c = good.to_vec();
    c[60] ^= 0x40;
    sock.send_to(&c, srv.addr).unwrap();
    // Bad auth: tagged with the wrong key (CRC is right).
    let mut w = [0u8; wire::MAX_DATAGRAM];
    let n = emit_chunk(&id, &rec, 0, Some(&wrong_key), &mut w).unwrap();
    sock.send_to(&w[..n], srv.addr).unwrap();
    // No auth although the collector requires it.
    let n = emit_chunk(&id, &rec, 0, None, &mut w).unwrap();
    sock.send_to(&w[..n], srv.addr).unwrap();

    let s = wait_stats(&db, |s| s["datagrams"] == 7);
    assert_eq!(s["truncated"], 1, "{s:#}");
    assert_eq!(s["oversized"], 1, "{s:#}");
    assert_eq!(s["bad_crc"], 1, "{s:#}");
    assert_eq!(s["auth_failures"], 2, "{s:#}");
    // Wrong magic and the random bytes (which do not start with the magic either).
    assert_eq!(s["bad_magic"], 2, "{s:#}");
    assert_eq!(s["bad_frames"], 4, "{s:#}");
    assert_eq!(s["records"], 0);

    // Still up: a good, authenticated record is stored and acked.
    assert_eq!(
        send_record(srv.addr, [5; 16], 1, &rec, Some(&key), None),
        SendState::Acked
    );
    let s = wait_stats(&db, |s| s["records"] == 1);
    assert_eq!(s["records_stored"], 1);
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn record_is_stored_exactly_once_when_the_collector_is_killed_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    // The first collector holds every batch for 5 s before committing.
    let mut a = Server::start(
        &db,
        "127.0.0.1:0",
        &[],
        &[
            ("CANARY_COLLECTOR_TEST_COMMIT_DELAY_MS", "5000"),
            ("RUST_LOG", "host_collector=debug"),
        ],
    );
    let addr = a.addr;
    let load = Command::new(BIN)
        .args([
            "load",
            "--target",
            &addr.to_string(),
            "--canaries",
            "1",
            "--records",
            "1",
            "--rto-ms",
            "100",
            "--deadline",
            "20s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The record reached the writer and waits for its commit: kill -9 now.
    a.wait_line(|l| l.contains("delaying commit"), Duration::from_secs(10))
        .expect("the record never reached the writer");
    a.kill9();
    assert_eq!(
        count_rows(&db).0,
        0,
        "nothing may be committed before the kill"
    );

    // A new collector on the same port and database: the sender's retransmit gets stored.
    let b = Server::start(&db, &addr.to_string(), &[], &[]);
    let out = load.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["acked"], 1, "{r:#}");
    assert_eq!(r["lost"], 0);
    // Acked as newly stored by the second collector, not as a duplicate.
    assert_eq!(r["acked_duplicate"], 0, "{r:#}");
    assert!(r["retransmit_rounds"].as_u64().unwrap() >= 1, "{r:#}");
    assert_eq!(b.stop("TERM"), 0);
    assert_eq!(count_rows(&db), (1, 1));
}

#[test]
fn load_with_20_percent_loss_stores_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let out = run(&[
        "load",
        "--target",
        &srv.addr.to_string(),
        "--canaries",
        "50",
        "--records",
        "2000",
        "--loss",
        "0.2",
        "--rto-ms",
        "20",
        "--seed",
        "7",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["acked"], 2000, "{r:#}");
    assert_eq!(r["lost"], 0);
    // Loss really happened in both directions, so retransmits and duplicates were exercised.
    assert!(r["datagrams_dropped_out"].as_u64().unwrap() > 200, "{r:#}");
    assert!(r["datagrams_dropped_in"].as_u64().unwrap() > 200, "{r:#}");
    for k in ["records_per_s", "p50_ms", "p99_ms", "datagrams_sent"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r:#}");
    }
    assert_eq!(srv.stop("TERM"), 0);
    assert_eq!(count_rows(&db), (2000, 2000));
    let c = rusqlite::Connection::open(&db).unwrap();
    let boots: i64 = c
        .query_row("SELECT count(DISTINCT boot_id) FROM records", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(boots, 50);
    let s = stats(&db);
    // Every ack the load generator lost came back as a retransmit, acked as a duplicate.
    assert!(s["duplicates"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["records_stored"], 2000);
}

#[test]
fn duplicated_and_reordered_datagrams_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let out = run(&[
        "load",
        "--target",
        &srv.addr.to_string(),
        "--canaries",
        "10",
        "--records",
        "300",
        "--dup",
        "0.3",
        "--reorder",
        "0.3",
        "--rto-ms",
        "20",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["acked"], 300);
    let s = wait_stats(&db, |s| s["duplicates"].as_u64().unwrap() > 0);
    assert_eq!(s["records"], 300, "{s:#}");
    assert_eq!(srv.stop("INT"), 0);
    assert_eq!(count_rows(&db), (300, 300));
}

#[test]
fn newer_schema_major_is_rejected_with_a_reason_and_acked_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let rec = sample_bytes([9; 16], 3);
    let st = send_record(srv.addr, [9; 16], 3, &rec, None, Some((2, 0)));
    assert_eq!(st, SendState::Rejected);
    let s = wait_stats(&db, |s| s["rejected"] == 1);
    assert_eq!(s["records"], 0);
    let o = run_db(&db, &["list", "--rejected", "--json"]);
    let rows = json(&o);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["schema"], "2.0");
    assert!(
        rows[0]["reason"].as_str().unwrap().contains("unsupported"),
        "{rows:#}"
    );
    // A newer minor of the same major is accepted.
    let st = send_record(
        srv.addr,
        [9; 16],
        4,
        &sample_bytes([9; 16], 4),
        None,
        Some((1, 7)),
    );
    assert_eq!(st, SendState::Acked);
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn heartbeats_record_last_seen_per_canary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    for (seq, uptime_ms) in [(1u32, 1_000u64), (2, 2_500)] {
        let n = Repr::Heartbeat(HeartbeatRepr {
            boot_id: [0xab; 16],
            seq,
            uptime_ms,
            arch: capture::record::Arch::Aarch64,
        })
        .emit(None, &mut buf)
        .unwrap();
        sock.send_to(&buf[..n], srv.addr).unwrap();
    }
    wait_stats(&db, |s| s["heartbeats"] == 2);
    let o = run_db(&db, &["list", "--canaries", "--json"]);
    let c = json(&o);
    assert_eq!(c.as_array().unwrap().len(), 1, "{c:#}");
    assert_eq!(c[0]["boot_id"], "ab".repeat(16));
    assert_eq!(c[0]["uptime_ms"], 2500);
    assert_eq!(c[0]["heartbeat_seq"], 2);
    assert_eq!(c[0]["heartbeats"], 2);
    assert_eq!(c[0]["arch"], "aarch64");
    assert_eq!(c[0]["source"], sock.local_addr().unwrap().to_string());
    let o = run_db(&db, &["list", "--canaries"]);
    assert!(stdout(&o).contains("LAST SEEN"), "{}", stdout(&o));
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn partial_records_beyond_the_per_source_cap_are_evicted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &["--max-pending-per-source", "2"], &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut big = capture::testutil::max_record();
    let mut enc = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    let mut records = Vec::new();
    for seq in 0..5u32 {
        big.boot_id = [3; 16];
        big.seq = seq;
        let bytes = big.encode(&mut enc).unwrap().to_vec();
        assert!(chunk_count(bytes.len()) >= 2);
        let id = RecordId::of([3; 16], seq, &bytes);
        // Only the first chunk of each record.
        let n = emit_chunk(&id, &bytes, 0, None, &mut buf).unwrap();
        sock.send_to(&buf[..n], srv.addr).unwrap();
        records.push((id, bytes));
    }
    let s = wait_stats(&db, |s| s["evictions"] == 3);
    assert_eq!(s["records"], 0);
    // The two newest partial records are still held: completing one stores it.
    let (id, bytes) = &records[4];
    for i in 1..chunk_count(bytes.len()) as u16 {
        let n = emit_chunk(id, bytes, i, None, &mut buf).unwrap();
        sock.send_to(&buf[..n], srv.addr).unwrap();
    }
    wait_stats(&db, |s| s["records"] == 1);
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn drill_sends_an_authenticated_drill_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = write_key(dir.path(), "fleet.key", 0x33);
    let canary = UdpSocket::bind("127.0.0.1:0").unwrap();
    canary
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = canary.local_addr().unwrap().to_string();
    let o = run(&[
        "drill",
        &addr,
        "--key-file",
        key_path.to_str().unwrap(),
        "--delay-ms",
        "250",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("Sent drill"));
    let mut buf = [0u8; 2048];
    let n = canary.recv(&mut buf).unwrap();
    match wire::parse(&buf[..n], Some(&key)).unwrap() {
        Repr::Drill(d) => assert_eq!(d.delay_ms, 250),
        other => panic!("not a drill: {other:?}"),
    }
    // Without the key the canary must refuse it.
    assert!(wire::parse(&buf[..n], None).is_err());
}

#[test]
fn listens_on_loopback_by_default_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let out = Command::new(BIN)
        .args(["--db", db.to_str().unwrap(), "serve", "--help"])
        .output()
        .unwrap();
    let help = stdout(&out);
    assert!(help.contains("127.0.0.1:7373"), "{help}");
    assert!(help.contains("Exit codes"), "{help}");
}

#[test]
fn a_record_stored_before_a_restart_is_acked_as_duplicate_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let rec = sample_bytes([4; 16], 8);
    let a = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let (st, status) = send_record_status(a.addr, [4; 16], 8, &rec, None, None);
    assert_eq!(
        (st, status),
        (SendState::Acked, Some(wire::AckStatus::Stored))
    );
    assert_eq!(a.stop("TERM"), 0);
    let b = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let (st, status) = send_record_status(b.addr, [4; 16], 8, &rec, None, None);
    assert_eq!(
        (st, status),
        (SendState::Acked, Some(wire::AckStatus::Duplicate))
    );
    // Same boot and sequence but different content is a different record.
    let mut other = capture::testutil::sample_record(8);
    other.boot_id = [4; 16];
    other.seq = 8;
    other.set_message("a different panic");
    let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let other = other.encode(&mut buf).unwrap().to_vec();
    let (_, status) = send_record_status(b.addr, [4; 16], 8, &other, None, None);
    assert_eq!(status, Some(wire::AckStatus::Stored));
    assert_eq!(b.stop("TERM"), 0);
    assert_eq!(count_rows(&db).0, 2);
    // At least the re-sent record (more if a slow ack made the sender retransmit).
    assert!(stats(&db)["duplicates"].as_u64().unwrap() >= 1);
}

#[test]
fn a_second_serve_on_the_same_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let a = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let o = run_db(&db, &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("another `host-collector serve`"),
        "{}",
        stderr(&o)
    );
    // The first one is unaffected.
    assert_eq!(
        send_record(a.addr, [6; 16], 1, &sample_bytes([6; 16], 1), None, None),
        SendState::Acked
    );
    assert_eq!(a.stop("TERM"), 0);
}

#[test]
fn load_canaries_can_share_sockets_when_descriptors_are_short() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let out = run(&[
        "load",
        "--target",
        &srv.addr.to_string(),
        "--canaries",
        "40",
        "--max-sockets",
        "3",
        "--records",
        "400",
        "--loss",
        "0.1",
        "--rto-ms",
        "20",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["sockets"], 3, "{r:#}");
    assert_eq!(r["acked"], 400, "{r:#}");
    assert_eq!(srv.stop("TERM"), 0);
    let c = rusqlite::Connection::open(&db).unwrap();
    let (rows, boots, sources): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), count(DISTINCT boot_id), count(DISTINCT source) FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, boots, sources), (400, 40, 3));
}

#[test]
fn load_exits_4_when_records_are_never_acked() {
    // Nobody listens on this port.
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let out = run(&[
        "load",
        "--target",
        &port.to_string(),
        "--canaries",
        "2",
        "--records",
        "2",
        "--deadline",
        "300ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(
        (r["acked"].as_u64(), r["lost"].as_u64()),
        (Some(0), Some(2))
    );
}

#[test]
fn serve_reads_its_settings_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-config.db");
    let (key_path, key) = write_key(dir.path(), "fleet.key", 0x44);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndb = {:?}\nkey_file = {:?}\nsync = \"full\"\nbatch_max = 8\n",
            db.to_str().unwrap(),
            key_path.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("fleet key required"), "{line}");
    let addr: std::net::SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let rec = sample_bytes([8; 16], 1);
    assert_eq!(
        send_record(addr, [8; 16], 1, &rec, Some(&key), None),
        SendState::Acked
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(count_rows(&db), (1, 1), "stored in the configured database");

    // Mistakes in the file are named.
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nbatchmax = 8\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "serve"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("batchmax"), "{}", stderr(&o));
    let o = run_db(
        &db,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            "/nonexistent/key",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("/nonexistent/key"), "{}", stderr(&o));
}

#[test]
fn load_scales_to_10000_canaries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let out = run(&[
        "load",
        "--target",
        &srv.addr.to_string(),
        "--canaries",
        "10000",
        "--records",
        "10000",
        "--rto-ms",
        "1000",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["acked"], 10000, "{r:#}");
    // One socket per canary where the descriptor limit (raised to the hard limit) allows it,
    // shared sockets otherwise.
    let fd_limit = r["fd_limit"].as_u64().unwrap();
    assert_eq!(
        r["sockets"].as_u64().unwrap(),
        10000.min(fd_limit.saturating_sub(64)),
        "{r:#}"
    );
    assert_eq!(srv.stop("TERM"), 0);
    let c = rusqlite::Connection::open(&db).unwrap();
    let boots: i64 = c
        .query_row("SELECT count(DISTINCT boot_id) FROM records", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(boots, 10000);
}
