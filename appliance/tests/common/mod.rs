//! Shared harness for the QEMU tests: builds the kernel images (once per test binary) and a
//! real `host-collector`, starts `host-collector serve` on a free loopback port, runs
//! `scripts/qemu-run`, and reads the stored record back with `host-collector show --json`.
#![allow(dead_code)]

pub mod peers;

pub mod fault_in;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Exit statuses of scripts/qemu-run (see its --help).
pub const EXIT_ACKED: i32 = 33;
pub const EXIT_NOT_ACKED: i32 = 35;
pub const EXIT_NESTED: i32 = 37;
pub const EXIT_TERMINAL: i32 = 39;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One QEMU at a time per test binary: the machine has 2 cores and TCG is CPU-bound.
pub fn qemu_slot() -> std::sync::MutexGuard<'static, ()> {
    static SLOT: Mutex<()> = Mutex::new(());
    SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds an image with scripts/qemu-run (once per arch/boot per test binary) and returns its
/// path (`--print-image`).
pub fn build_image(arch: &str, boot: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, image)) = built.iter().find(|(a, b, _)| a == arch && b == boot) {
        return image.clone();
    }
    let out = Command::new(workspace().join("scripts/qemu-run"))
        .args(["--arch", arch, "--boot", boot, "--print-image"])
        .current_dir(workspace())
        .output()
        .expect("run scripts/qemu-run --print-image");
    assert!(
        out.status.success(),
        "building the {arch}/{boot} image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = workspace().join(String::from_utf8_lossy(&out.stdout).trim());
    built.push((arch.into(), boot.into(), image.clone()));
    image
}

/// The host-collector binary: the workspace's debug build (built here if missing).
pub fn collector_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("CANARY_HOST_COLLECTOR") {
            return PathBuf::from(p);
        }
        // `cargo test --workspace` builds host-collector's binary for its own tests; build it
        // into a separate target dir otherwise (the outer cargo holds the main one).
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join("target"));
        let main = target.join("debug/host-collector");
        if main.exists() {
            return main;
        }
        let side = target.join("canary-test-tools");
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "host-collector", "--target-dir"])
            .arg(&side)
            .current_dir(workspace())
            .status()
            .expect("run cargo build -p host-collector");
        assert!(st.success(), "building host-collector failed");
        side.join("debug/host-collector")
    })
    .clone()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Collector {
    child: Child,
    pub port: u16,
    pub db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    pub fn start() -> Collector {
        Collector::start_with(&[])
    }

    /// `host-collector serve` with more arguments (e.g. `--key-file`).
    pub fn start_with(extra: &[&str]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("collector.db");
        let port = free_udp_port();
        let mut child = Command::new(collector_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(&db)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start host-collector serve");
        // Wait for "listening" on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("host-collector serve did not say it is listening within 30 s");
        Collector {
            child,
            port,
            db,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(collector_bin())
            .args(args)
            .arg("--db")
            .arg(&self.db)
            .output()
            .expect("run host-collector")
    }

    /// All stored records (`list --json`), waiting up to `wait` for at least `n`.
    pub fn records(&self, n: usize, wait: Duration) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let out = self.cli(&["list", "--json"]);
            let v: Vec<Value> = if out.status.success() {
                serde_json::from_slice(&out.stdout).unwrap_or_default()
            } else {
                Vec::new()
            };
            if v.len() >= n || t0.elapsed() > wait {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The canaries seen by heartbeat (`list --canaries --json`).
    pub fn canaries(&self) -> Vec<Value> {
        let out = self.cli(&["list", "--canaries", "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// The newest record in full (`show --json`).
    pub fn show_latest(&self) -> Value {
        let out = self.cli(&["show", "--json"]);
        assert!(
            out.status.success(),
            "host-collector show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("show --json is JSON")
    }

    pub fn drill(&self, addr: &str) {
        self.drill_with(addr, &[])
    }

    /// `host-collector drill ADDR` with more arguments (e.g. `--key-file`).
    pub fn drill_with(&self, addr: &str, extra: &[&str]) {
        let out = Command::new(collector_bin())
            .args(["drill", addr])
            .args(extra)
            .output()
            .expect("run host-collector drill");
        assert!(
            out.status.success(),
            "host-collector drill failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub status: ExitStatus,
    pub serial: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Boots the canary with scripts/qemu-run (image already built) and waits for QEMU to end.
/// `on_ready` runs once the console says "canary: ready".
pub fn run_canary(
    arch: &str,
    boot: &str,
    collector_port: u16,
    extra: &[&str],
    timeout_s: u32,
    on_ready: impl FnOnce(),
) -> Run {
    build_image(arch, boot);
    let _slot = qemu_slot();
    let t0 = Instant::now();
    let mut child = Command::new(workspace().join("scripts/qemu-run"))
        .args(["--arch", arch, "--boot", boot, "--no-build", "--timeout"])
        .arg(timeout_s.to_string())
        .arg("--collector-port")
        .arg(collector_port.to_string())
        .args(extra)
        .current_dir(workspace())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start scripts/qemu-run");
    let mut on_ready = Some(on_ready);
    let serial = console(&mut child, |line| {
        if line.contains("canary: ready") {
            if let Some(f) = on_ready.take() {
                f();
            }
        }
    });
    let status = child.wait().unwrap();
    Run {
        status,
        serial,
        elapsed: t0.elapsed(),
    }
}

/// The console of `child` (its stdout, piped) until it closes, line by line; `on_line` sees
/// each line as it arrives.
pub fn console(child: &mut Child, mut on_line: impl FnMut(&str)) -> String {
    let mut serial = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout piped"))
        .lines()
        .map_while(Result::ok)
    {
        on_line(&line);
        serial.push_str(&line);
        serial.push('\n');
    }
    serial
}

/// A collector, and a canary run (`extra` options of scripts/qemu-run, 120 s timeout) that
/// shipped its record to it and had it acknowledged.
pub fn run_acked(arch: &str, boot: &str, extra: &[&str]) -> (Collector, Run) {
    let c = Collector::start();
    let run = run_canary(arch, boot, c.port, extra, 120, || {});
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    (c, run)
}

/// `--panic-after 0.2`: the record of the panic on purpose, stored once and complete, with
/// its message and location. Returns it with the run.
pub fn panic_on_purpose(arch: &str, boot: &str, boot_mode: &str) -> (Value, Run) {
    let (c, run) = run_acked(arch, boot, &["--panic-after", "0.2"]);
    assert!(
        run.serial.contains("canary: ready (network up)"),
        "{}",
        run.serial
    );
    let recs = c.records(1, Duration::from_secs(5));
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = c.show_latest();
    assert_complete_record(&rec, arch, boot_mode, "panic", &run.serial);
    assert_eq!(rec["message"], "panic_after=0.200s: panic on purpose");
    assert_eq!(rec["location"]["file"], "appliance/src/canary.rs");
    assert!(rec["location"]["line"].as_u64().unwrap() > 0);
    (rec, run)
}

/// `--fault-after 0.1`: the complete fault record of the read of the unmapped address
/// canary.rs makes (0x7ffffffff000). Returns it for the arch's own checks.
pub fn bad_memory_access(arch: &str, boot: &str, boot_mode: &str) -> Value {
    let (c, run) = run_acked(arch, boot, &["--fault-after", "0.1"]);
    let rec = c.show_latest();
    assert_complete_record(&rec, arch, boot_mode, "fault", &run.serial);
    assert_eq!(rec["kind_detail"]["addr"], "0x7ffffffff000", "{rec:#}");
    rec
}

/// `--panic-after 0.1 --nested-panic` (direct boot): QEMU ended through the nested path.
/// Returns the collector (holding the first entry's record) and the run.
pub fn nested_panic(arch: &str) -> (Collector, Run) {
    let c = Collector::start();
    let run = run_canary(
        arch,
        "direct",
        c.port,
        &["--panic-after", "0.1", "--nested-panic"],
        120,
        || {},
    );
    assert_eq!(run.code(), EXIT_NESTED, "serial:\n{}", run.serial);
    assert!(
        run.serial.contains("NESTED PANIC: nested_panic=1"),
        "{}",
        run.serial
    );
    // Ready, and the nested entry's end (the first never got there): half of every stack
    // still free on the nested path too.
    assert!(assert_stack_headroom(&run.serial) >= 4, "{}", run.serial);
    (c, run)
}

/// Every `stack (WHEN): NAME USED/SIZE B used (P%), ...` line on the console (at "ready" and
/// at the end of the panic path): at least half of every stack stays free (issue 17: a
/// 24.7 KiB frame overflowed the 64 KiB boot stack). Returns how many stacks were checked.
pub fn assert_stack_headroom(serial: &str) -> usize {
    assert_stack_headroom_except(serial, &[])
}

/// [`assert_stack_headroom`] for every stack but those named in `skip` (a deliberate stack
/// overflow uses all of the main stack: that one must then show as wholly used).
pub fn assert_stack_headroom_except(serial: &str, skip: &[&str]) -> usize {
    let mut checked = 0;
    for line in serial.lines().filter(|l| l.starts_with("stack (")) {
        let body = line.split_once("):").map(|x| x.1).unwrap_or("");
        for part in body.split(',') {
            let mut w = part.split_whitespace();
            let (Some(name), Some(frac)) = (w.next(), w.next()) else {
                panic!("unreadable stack report: {line}");
            };
            let (used, size) = frac.split_once('/').expect("USED/SIZE");
            let used: u64 = used.parse().expect("used bytes");
            let size: u64 = size.parse().expect("size");
            assert!(size > 0, "{line}");
            if skip.contains(&name) {
                continue;
            }
            assert!(
                used * 2 <= size,
                "stack {name}: {used} of {size} bytes used, less than half free: {line}"
            );
            checked += 1;
        }
    }
    checked
}

/// Asserts what every shipped record must carry.
pub fn assert_complete_record(rec: &Value, arch: &str, boot_mode: &str, kind: &str, serial: &str) {
    let ctx = || format!("record: {rec:#}\nserial:\n{serial}");
    // stack_overflow_after= overflows the main stack on purpose: only the others keep
    // their headroom, and the overflowed one shows as (at least 99 %) used.
    let overflowed: &[&str] = if serial.contains("stack_overflow_after: recursing") {
        let full = serial
            .lines()
            .filter(|l| l.starts_with("stack (panic path):"))
            .any(|l| {
                ["boot", "uefi"].iter().any(|m| {
                    l.split([':', ',']).any(|p| {
                        let mut w = p.split_whitespace();
                        w.next() == Some(m)
                            && w.next()
                                .and_then(|f| f.split_once('/'))
                                .is_some_and(|(u, s)| {
                                    // The faulting frame may not have written its lowest words.
                                    let (u, s): (u64, u64) =
                                        (u.parse().unwrap(), s.parse().unwrap());
                                    u * 100 >= s * 99
                                })
                    })
                })
            });
        assert!(
            full,
            "the overflowed stack does not show as used up:\n{serial}"
        );
        &["boot", "uefi"]
    } else {
        &[]
    };
    // Two stacks per report, two reports (ready, end of the panic path).
    let want = if overflowed.is_empty() { 4 } else { 2 };
    assert!(
        assert_stack_headroom_except(serial, overflowed) >= want,
        "no stack reports at ready and at the end of the panic path:\n{serial}"
    );
    assert_eq!(rec["arch"], arch, "{}", ctx());
    assert_eq!(rec["boot_mode"], boot_mode, "{}", ctx());
    assert_eq!(rec["kind"], kind, "{}", ctx());
    assert!(
        rec["backtrace"].as_array().is_some_and(|b| !b.is_empty()),
        "empty backtrace: {}",
        ctx()
    );
    let tail = rec["log_tail"].as_str().unwrap_or("");
    assert!(
        tail.contains("canary: ready"),
        "log tail lacks the boot log: {}",
        ctx()
    );
    let steps: Vec<(String, String)> = rec["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or("").to_string(),
                s["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expect = [
        ("freeze", "done"),
        ("screen-flush", "not present"),
        ("vmbus-unload", "not present"),
        ("arch-cleanup", "not present"),
        ("ship", "pending"),
    ];
    assert_eq!(
        steps,
        expect.map(|(a, b)| (a.to_string(), b.to_string())).to_vec(),
        "steps: {}",
        ctx()
    );
    assert!(
        rec["registers"]["pc"]
            .as_str()
            .is_some_and(|pc| pc != "0x0"),
        "{}",
        ctx()
    );
}
