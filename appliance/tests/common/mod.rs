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
    // Symbolized: the panic location's function, at the panic location's line.
    let line = rec["location"]["line"].as_u64().unwrap();
    let shown = assert_symbolized(&c, arch, boot, "appliance::canary::run", "canary.rs", line);
    (shown, run)
}

/// `symbols add` of the image's symbol file (`scripts/qemu-run --print-symbols`), then
/// `show --json` and `show` of the newest record: the image id matches the store's entry, the
/// pc resolves to a function with file:line, `want_fn` appears in the backtrace (or the pc's
/// inline chain) at `file_end`:`line`, the registers have their arch's names. Returns the
/// `show --json` view.
pub fn assert_symbolized(
    c: &Collector,
    arch: &str,
    boot: &str,
    want_fn: &str,
    file_end: &str,
    line: u64,
) -> Value {
    let out = Command::new(workspace().join("scripts/qemu-run"))
        .args([
            "--arch",
            arch,
            "--boot",
            boot,
            "--print-symbols",
            "--no-build",
        ])
        .current_dir(workspace())
        .output()
        .expect("run scripts/qemu-run --print-symbols");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sym = workspace().join(String::from_utf8_lossy(&out.stdout).trim());
    let add = c.cli(&["symbols", "add", "--json", sym.to_str().unwrap()]);
    assert!(
        add.status.success(),
        "symbols add {}: {}",
        sym.display(),
        String::from_utf8_lossy(&add.stderr)
    );
    let added: Value = serde_json::from_slice(&add.stdout).expect("symbols add --json");
    let v = c.show_latest();
    let ctx = || format!("show --json: {v:#}");
    assert_eq!(v["image"]["id"], added[0]["id"], "{}", ctx());
    assert!(v["image"]["load_base"].as_str().is_some(), "{}", ctx());
    assert_eq!(v["symbols"]["status"], "resolved", "{}", ctx());
    let pc = &v["pc"];
    assert!(
        pc["function"].as_str().is_some_and(|f| !f.is_empty()),
        "{}",
        ctx()
    );
    assert!(
        pc["file"].as_str().is_some_and(|f| f.ends_with(".rs")),
        "{}",
        ctx()
    );
    assert!(pc["line"].as_u64().is_some_and(|l| l > 0), "{}", ctx());
    // The function at the wanted place: a frame's function, or one inlined there, at the
    // line (arm64 builds without tail merging, which gave a merged `panic_fmt` call line 0 in
    // DWARF and another panic's line in the PDB).
    let at = |f: &Value, want_line: Option<u64>| {
        let hit = |name: &Value, file: &Value, l: &Value| {
            name.as_str().is_some_and(|n| n.contains(want_fn))
                && file.as_str().is_some_and(|p| p.ends_with(file_end))
                && l.as_u64() == want_line
        };
        hit(&f["function"], &f["file"], &f["line"])
            || f["inlined"].as_array().is_some_and(|i| {
                i.iter()
                    .any(|x| hit(&x["function"], &x["file"], &x["line"]))
            })
    };
    let frames = v["frames"].as_array().expect("frames");
    let exact = at(pc, Some(line)) || frames.iter().any(|f| at(f, Some(line)));
    assert!(
        exact,
        "no frame in {want_fn} at {file_end}:{line}: {}",
        ctx()
    );
    // A walk, not a scan (x86_64 UEFI unwinds with the image's unwind data), and no return
    // address twice (a scan repeats stale ones).
    assert_ne!(
        v["backtrace_end"],
        "stack scanned for return addresses",
        "{}",
        ctx()
    );
    let mut addrs: Vec<&str> = frames.iter().map(|f| f["addr"].as_str().unwrap()).collect();
    let n = addrs.len();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), n, "a return address repeats: {}", ctx());
    // Function names with file:line elsewhere in the backtrace too.
    assert!(
        frames
            .iter()
            .filter(|f| f["function"].is_string() && f["line"].as_u64().is_some())
            .count()
            >= 2,
        "{}",
        ctx()
    );
    let names: Vec<&str> = v["named_registers"]
        .as_array()
        .expect("named_registers")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let want: &[&str] = if arch == "x86_64" {
        &["rax", "rsp", "r15", "rflags", "cr0", "cr2", "cr3", "cr4"]
    } else {
        &["x0", "x29", "x30", "pstate", "esr", "far"]
    };
    for n in want {
        assert!(names.contains(n), "no register {n}: {}", ctx());
    }
    // The human view says the same.
    let human = c.cli(&["show"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(want_fn), "show:\n{text}");
    assert!(
        text.contains(&format!("{file_end}:{line})")),
        "show:\n{text}"
    );
    assert!(text.contains(&format!("{}=", want[0])), "show:\n{text}");
    assert!(!text.contains("addresses are raw"), "show:\n{text}");
    v
}

/// `--fault-after 0.1`: the complete fault record of the read of the unmapped address
/// canary.rs makes (0x7ffffffff000). Returns it for the arch's own checks.
pub fn bad_memory_access(arch: &str, boot: &str, boot_mode: &str) -> Value {
    let (c, run) = run_acked(arch, boot, &["--fault-after", "0.1"]);
    let rec = c.show_latest();
    assert_complete_record(&rec, arch, boot_mode, "fault", &run.serial);
    assert_eq!(rec["kind_detail"]["addr"], "0x7ffffffff000", "{rec:#}");
    // Symbolized: the faulting read is canary.rs's `read_volatile` line in canary::run.
    let src = std::fs::read_to_string(workspace().join("appliance/src/canary.rs")).unwrap();
    let line = src
        .lines()
        .position(|l| l.contains("read_volatile(BAD_ADDRESS"))
        .expect("the bad read in canary.rs") as u64
        + 1;
    let v = assert_symbolized(&c, arch, boot, "appliance::canary::run", "canary.rs", line);
    // The fault spelled out, with its address register.
    let (name, reg) = if arch == "x86_64" {
        ("page fault (#PF)", "cr2")
    } else {
        ("data abort from the same EL", "far")
    };
    assert_eq!(v["fault"]["name"], name, "{v:#}");
    assert_eq!(v["fault"]["address"], "0x7ffffffff000", "{v:#}");
    assert_eq!(v["fault"]["address_register"], reg, "{v:#}");
    assert!(
        v["fault"]["decoded"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{v:#}"
    );
    // The code bytes around the faulting pc are the image's own bytes there; the stack bytes
    // start at the stack pointer.
    let hexnum =
        |x: &Value| u64::from_str_radix(x.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let code = &v["code"];
    let at = hexnum(&code["at"]);
    let bytes: Vec<u8> = (0..code["hex"].as_str().unwrap().len() / 2)
        .map(|i| u8::from_str_radix(&code["hex"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        code["pc_offset"].as_u64(),
        Some(hexnum(&v["registers"]["pc"]) - at),
        "{v:#}"
    );
    assert!(bytes.len() >= 32, "{v:#}");
    let base = hexnum(&v["image"]["load_base"]);
    assert_eq!(
        bytes,
        image_bytes(&build_image(arch, boot), at, base, bytes.len()),
        "{v:#}"
    );
    assert_eq!(v["stack"]["at"], v["registers"]["sp"], "{v:#}");
    assert!(
        v["stack"]["hex"].as_str().is_some_and(|h| h.len() >= 64),
        "{v:#}"
    );
    v
}

/// `len` bytes of the image file at run-time address `addr`: ELF by its PT_LOAD segments
/// (loaded at their link address), PE by its sections (`addr - load_base` is the RVA).
pub fn image_bytes(path: &Path, addr: u64, load_base: u64, len: usize) -> Vec<u8> {
    let f = std::fs::read(path).unwrap();
    let u16_ = |o: usize| u16::from_le_bytes([f[o], f[o + 1]]) as u64;
    let u32_ = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap()) as u64;
    let u64_ = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
    let off = if f.starts_with(b"\x7fELF") {
        // ELF64: e_phoff at 0x20, e_phentsize 0x36, e_phnum 0x38; phdr p_type 0, p_offset 8,
        // p_vaddr 16, p_filesz 32.
        let (phoff, n, sz) = (
            u64_(0x20) as usize,
            u16_(0x38) as usize,
            u16_(0x36) as usize,
        );
        (0..n)
            .map(|i| phoff + i * sz)
            .find(|&h| u32_(h) == 1 && (u64_(h + 16)..u64_(h + 16) + u64_(h + 32)).contains(&addr))
            .map(|h| (addr - u64_(h + 16) + u64_(h + 8)) as usize)
            .expect("address in a PT_LOAD segment")
    } else {
        // PE: sections after the optional header (VirtualSize 8, VirtualAddress 12,
        // SizeOfRawData 16, PointerToRawData 20).
        let rva = addr - load_base;
        let coff = u32_(0x3c) as usize + 4;
        let table = coff + 20 + u16_(coff + 16) as usize;
        (0..u16_(coff + 2) as usize)
            .map(|k| table + k * 40)
            .find(|&h| (u32_(h + 12)..u32_(h + 12) + u32_(h + 16)).contains(&rva))
            .map(|h| (rva - u32_(h + 12) + u32_(h + 20)) as usize)
            .expect("address in a PE section")
    };
    f[off..off + len].to_vec()
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
/// The steps `show` gives a first entry that ran to its end under QEMU (no Hyper-V): the
/// record is sealed at the screen (step 2) and holds freeze; the six steps after the seal come
/// in the follow-up frame sent from the end step (end itself "started": it sends it), which
/// replaced the one sent at the end of the ship step.
pub const STEPS_TO_END: [(&str, &str); 7] = [
    ("freeze", "done"),
    ("screen-flush", "not present"),
    ("vmbus-unload", "not present"),
    ("arch-cleanup", "not present"),
    ("ship", "done"),
    ("crash-registers", "not present"),
    ("end", "started"),
];

/// [`STEPS_TO_END`] when a nested panic came inside the first entry's crash registers step:
/// the follow-up sent at the end of the ship step is the collector's (the nested entry has
/// nothing more to report), so crash registers and end are not reported.
pub const STEPS_NESTED: [(&str, &str); 7] = [
    ("freeze", "done"),
    ("screen-flush", "not present"),
    ("vmbus-unload", "not present"),
    ("arch-cleanup", "not present"),
    ("ship", "done"),
    ("crash-registers", "not reported"),
    ("end", "not reported"),
];

pub fn assert_complete_record(rec: &Value, arch: &str, boot_mode: &str, kind: &str, serial: &str) {
    assert_complete_record_steps(rec, arch, boot_mode, kind, serial, &STEPS_TO_END)
}

/// [`assert_complete_record`] with the steps `show` must give.
pub fn assert_complete_record_steps(
    rec: &Value,
    arch: &str,
    boot_mode: &str,
    kind: &str,
    serial: &str,
    expect: &[(&str, &str)],
) {
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
    assert_eq!(
        steps,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>(),
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
