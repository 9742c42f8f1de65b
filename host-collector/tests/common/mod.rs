//! Helpers for the end-to-end tests: real `host-collector` processes on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use capture::sender::{SendState, Sender, SenderConfig};
use capture::wire::AckStatus;
use capture::Key;

pub const BIN: &str = env!("CARGO_BIN_EXE_host-collector");

/// A running `host-collector serve`. Killed (SIGKILL) on drop unless stopped.
pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub db: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `serve` on `listen` with `db` and extra args/env; waits until it listens.
    pub fn start(db: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--db")
            .arg(db)
            .arg("serve")
            .arg("--listen")
            .arg(listen)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            db: db.to_path_buf(),
            lines: rx,
        };
        let line = s
            .wait_line(|l| l.contains("listening on"), Duration::from_secs(10))
            .expect("serve did not start listening");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("address in the listening line");
        s.addr = addr.parse().expect("socket address");
        s
    }

    /// Waits for a stderr line matching `pred`.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends a signal by name (TERM, INT) and waits for the exit code.
    pub fn stop(mut self, sig: &str) -> i32 {
        let mut child = self.child.take().unwrap();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "serve did not stop on SIG{sig}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `host-collector ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run host-collector")
}

/// Runs with `--db DB` first.
pub fn run_db(db: &Path, args: &[&str]) -> Output {
    let mut a = vec!["--db", db.to_str().unwrap()];
    a.extend_from_slice(args);
    run(&a)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

/// `stats --json`.
pub fn stats(db: &Path) -> serde_json::Value {
    let o = run_db(db, &["stats", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    json(&o)
}

/// Polls `stats --json` until `pred` holds (the collector persists counters every 200 ms).
pub fn wait_stats(db: &Path, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(db);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < end, "stats never matched: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one encoded record with a real capture Sender over a std socket; returns its end
/// state and the sender.
pub fn send_record(
    to: SocketAddr,
    boot_id: [u8; 16],
    seq: u32,
    bytes: &[u8],
    key: Option<&Key>,
    schema: Option<(u16, u16)>,
) -> SendState {
    send_record_status(to, boot_id, seq, bytes, key, schema).0
}

/// [`send_record`], also returning the ack status the collector sent.
pub fn send_record_status(
    to: SocketAddr,
    boot_id: [u8; 16],
    seq: u32,
    bytes: &[u8],
    key: Option<&Key>,
    schema: Option<(u16, u16)>,
) -> (SendState, Option<AckStatus>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(to).unwrap();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let cfg = SenderConfig {
        initial_rto_ms: 300,
        max_rto_ms: 1_000,
        deadline_ms: 10_000,
    };
    let mut s = Sender::new(cfg, boot_id, seq, bytes, key, now()).unwrap();
    if let Some((a, b)) = schema {
        s = s.with_schema(a, b);
    }
    let mut buf = [0u8; 2048];
    loop {
        let st = s.poll(now(), &mut |d| {
            let _ = sock.send(d);
        });
        match st {
            SendState::Waiting { next_ms } => {
                let wait = next_ms.saturating_sub(now()).max(1);
                sock.set_read_timeout(Some(Duration::from_millis(wait)))
                    .unwrap();
                if let Ok(n) = sock.recv(&mut buf) {
                    s.handle(&buf[..n]);
                }
            }
            other => return (other, s.ack_status()),
        }
    }
}

/// An encoded sample record with the given identity.
pub fn sample_bytes(boot_id: [u8; 16], seq: u32) -> Vec<u8> {
    let mut r = capture::testutil::sample_record(seq);
    r.boot_id = boot_id;
    r.seq = seq;
    let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
    r.encode(&mut buf).unwrap().to_vec()
}

/// Row count and distinct-key count of the records table.
pub fn count_rows(db: &Path) -> (i64, i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    let d: i64 = c
        .query_row(
            "SELECT count(*) FROM (SELECT DISTINCT boot_id, seq FROM records)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (n, d)
}

/// A database at `path` holding one record per `(seq, received_at_us, message)` (boot id
/// [9;16]), written through the library as `serve` would.
pub fn db_with(path: &Path, recs: &[(u32, i64, &str)]) {
    use host_collector::store::{NewRecord, RecordFields, RecordKey, RowText, Store, Sync};
    let mut s = Store::open(path, Sync::Normal).unwrap();
    let rows: Vec<NewRecord> = recs
        .iter()
        .map(|&(seq, at, msg)| {
            let f = RecordFields {
                build_id: "b".into(),
                arch: "x86_64".into(),
                boot_mode: "pvh".into(),
                hypervisor: serde_json::json!({"vendor": "none"}),
                kind: "panic".into(),
                message: msg.into(),
                registers: serde_json::json!({}),
                log_tail: format!("log of {msg}"),
                ..RecordFields::default()
            };
            NewRecord {
                key: RecordKey {
                    boot_id: [9; 16],
                    seq,
                    record_crc: seq,
                },
                received_at_us: at,
                schema_major: 1,
                schema_minor: 0,
                uptime_us: 1,
                line_col: (0, 0),
                text: RowText::from_fields("127.0.0.1:9", &f),
                raw: vec![1, 2, 3],
            }
        })
        .collect();
    s.commit_batch(&rows, &[], &[], &[]).unwrap();
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Size of a file in bytes (0 if missing).
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `PATH-wal` next to a database.
pub fn wal_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// Runs `host-collector ARGS` with `cwd` as working directory.
pub fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run host-collector")
}

/// Starts `serve` and returns its exit status and stderr if it exits within `timeout`, or
/// `None` (after killing it) if it is still running then.
pub fn serve_exits(
    db: &str,
    cwd: &Path,
    args: &[&str],
    timeout: Duration,
) -> Option<(i32, String)> {
    let mut child = Command::new(BIN)
        .args(["--db", db, "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return Some((st.code().unwrap_or(-1), err));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one frame (any kind) from a fresh socket until an ack comes back (every 200 ms, for
/// up to 10 s); returns the ack's status.
pub fn send_for_ack(to: SocketAddr, frame: &[u8]) -> AckStatus {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        sock.send_to(frame, to).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            if let Ok(capture::wire::Repr::Ack(a)) = capture::wire::parse(&buf[..n], None) {
                return a.status;
            }
        }
    }
    panic!("no ack within 10 s");
}
