//! The nested real-Hyper-V-host harness for the tests (`scripts/hyperv-nested`, see
//! docs/hyperv-real-host.md): builds the images, runs one nested run at a time, and reads
//! back what it left (L2's serial log, QEMU's `vmbus_*` trace, QMP events).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Whole-run limit handed to the harness (L0 and L1 boot included) for a direct-boot run. A
/// run takes 5-15 s; this only has to catch a hang.
pub const RUN_TIMEOUT_S: u32 = 150;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Builds the x86_64 image for `boot` (`direct`: the PVH ELF; `uefi`: the UEFI application)
/// once per test binary, the way every QEMU test builds it (`scripts/qemu-run --print-image`:
/// release, frame pointers), and returns its path.
pub fn image(boot: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(b, _)| b == boot) {
        return p.clone();
    }
    let out = Command::new(workspace().join("scripts/qemu-run"))
        .args(["--arch", "x86_64", "--boot", boot, "--print-image"])
        .current_dir(workspace())
        .output()
        .expect("cannot run scripts/qemu-run");
    assert!(
        out.status.success(),
        "building the x86_64 {boot} image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = workspace().join(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "no image at {}", path.display());
    built.push((boot.to_string(), path.clone()));
    path
}

/// `scripts/hyperv-nested setup` once per test binary (about 1 s when the cache is complete;
/// a cold cache downloads about 100 MB from Debian's mirror).
pub fn harness_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new(workspace().join("scripts/hyperv-nested"))
            .arg("setup")
            .output()
            .expect("cannot run scripts/hyperv-nested");
        assert!(
            out.status.success(),
            "scripts/hyperv-nested setup failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Nested runs never overlap: each keeps a core busy with TCG (the script also takes a lock on
/// its cache, across processes).
pub fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one nested run left behind.
#[derive(Debug)]
pub struct Run {
    pub name: &'static str,
    /// `scripts/hyperv-nested run` exit status (see its --help).
    pub status: i32,
    pub serial: String,
    pub trace: String,
    /// QMP events, one JSON object each.
    pub events: Vec<serde_json::Value>,
    pub stderr: String,
    /// The whole run (L0 start to end), as this process saw it.
    pub secs: f64,
    /// L2's part of it (its QEMU's start to end, L1's clock), when the harness recorded it.
    pub l2_secs: Option<f64>,
}

impl Run {
    /// Runs `kernel` (an ELF, or a UEFI application with `--uefi` in `opts`) in the nested
    /// host, with a whole-run limit of `timeout_s`. `opts` go to the harness, `l2_args` to
    /// L2's QEMU.
    pub fn start(
        name: &'static str,
        kernel: &Path,
        timeout_s: u32,
        opts: &[&str],
        l2_args: &[&str],
    ) -> Run {
        harness_ready();
        let _guard = one_run_at_a_time();
        let dir = target_dir().join("hyperv-nested").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = Instant::now();
        let out = Command::new(workspace().join("scripts/hyperv-nested"))
            .arg("run")
            .arg("--timeout")
            .arg(timeout_s.to_string())
            .arg("--workdir")
            .arg(dir.join("work"))
            .arg("--trace")
            .arg("--trace-file")
            .arg(dir.join("trace.log"))
            .arg("--qmp-log")
            .arg(dir.join("qmp.jsonl"))
            .arg("--serial")
            .arg(dir.join("serial.log"))
            .args(opts)
            .arg("--")
            .arg(kernel)
            .args(l2_args)
            .output()
            .expect("cannot run scripts/hyperv-nested");
        let secs = t0.elapsed().as_secs_f64();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let uptime = |f: &str| read(f).trim().parse::<f64>().ok();
        let l2_secs = match (uptime("work/l2-start"), uptime("work/l2-end")) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let events = read("qmp.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let run = Run {
            name,
            status: out.status.code().unwrap_or(-1),
            serial: read("serial.log"),
            trace: read("trace.log"),
            events,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            secs,
            l2_secs,
        };
        eprintln!(
            "hyperv-nested run '{}': status {} in {:.1} s, L2 {} (logs in {})",
            run.name,
            run.status,
            run.secs,
            run.l2_secs.map_or("?".to_string(), |s| format!("{s:.1} s")),
            dir.display()
        );
        assert!(
            ![124, 126, 2].contains(&run.status),
            "the harness did not complete run '{}' (status {}):\n{}\n--- serial ---\n{}",
            run.name,
            run.status,
            run.stderr,
            run.serial
        );
        run
    }

    /// Everything a failed assertion should show.
    pub fn diag(&self) -> String {
        format!(
            "run '{}' status {} ({:.1} s)\n--- serial ---\n{}\n--- trace ---\n{}\n--- qmp ---\n{:?}\n--- stderr ---\n{}",
            self.name, self.status, self.secs, self.serial, self.trace, self.events, self.stderr
        )
    }

    /// The first serial line that contains `needle`.
    pub fn line(&self, needle: &str) -> &str {
        self.serial
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no serial line with {needle:?}\n{}", self.diag()))
    }

    /// Byte offset of the first serial line containing `needle` (for ordering checks).
    pub fn at(&self, needle: &str) -> usize {
        self.serial
            .find(needle)
            .unwrap_or_else(|| panic!("no serial line with {needle:?}\n{}", self.diag()))
    }

    pub fn count_serial(&self, needle: &str) -> usize {
        self.serial.lines().filter(|l| l.contains(needle)).count()
    }

    /// Trace lines of one event (`vmbus_recv_message` ...), in order.
    pub fn trace_events(&self, event: &str) -> Vec<&str> {
        self.trace
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == event))
            .collect()
    }

    /// VMBus message types the host received from the guest, in order
    /// (`vmbus_recv_message type N size M`, QEMU hw/hyperv/trace-events).
    pub fn host_received(&self) -> Vec<u32> {
        self.trace_events("vmbus_recv_message")
            .iter()
            .filter_map(|l| field_after(l, "type"))
            .collect()
    }

    /// VMBus message types the host posted to the guest, in order (`vmbus_post_msg type N`).
    pub fn host_posted(&self) -> Vec<u32> {
        self.trace_events("vmbus_post_msg")
            .iter()
            .filter_map(|l| field_after(l, "type"))
            .collect()
    }

    /// VMBus message types the host delivered into the guest's slot, in order: each
    /// `vmbus_post_msg type N` paired with the `vmbus_msg_cb message status S` that follows
    /// it, kept when S = 0 (QEMU hw/hyperv/vmbus.c `vmbus_msg_cb`; -11 = slot busy, posted
    /// again after the guest's EOM).
    pub fn host_delivered(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut pending = None;
        for l in self.trace.lines() {
            if l.contains("vmbus_post_msg") {
                pending = field_after(l, "type");
            } else if l.contains("vmbus_msg_cb") {
                let ok = l.trim_end().ends_with("status 0");
                if let (true, Some(t)) = (ok, pending.take()) {
                    out.push(t);
                }
            }
        }
        out
    }

    pub fn guest_panicked(&self) -> Vec<&serde_json::Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == "GUEST_PANICKED")
            .collect()
    }
}

/// `... type 16 size 8` -> 16.
pub fn field_after(line: &str, key: &str) -> Option<u32> {
    let mut w = line.split_whitespace();
    w.by_ref().find(|x| *x == key)?;
    w.next()?.parse().ok()
}

/// Parses `name=0x1f` (or decimal) out of a serial line.
pub fn hex_field(line: &str, name: &str) -> u64 {
    let pat = format!("{name}=");
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    let v = v.trim_end_matches([',', ';', ')']);
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    }
    .unwrap_or_else(|_| panic!("bad {name} value in {line:?}"))
}

// VMBus message types (Linux include/linux/hyperv.h, enum vmbus_channel_message_type;
// QEMU include/hw/hyperv/vmbus-proto.h).
pub const OFFERCHANNEL: u32 = 1;
pub const REQUESTOFFERS: u32 = 3;
pub const ALLOFFERS_DELIVERED: u32 = 4;
pub const OPENCHANNEL: u32 = 5;
pub const CLOSECHANNEL: u32 = 7;
pub const OPENCHANNEL_RESULT: u32 = 6;
pub const GPADL_HEADER: u32 = 8;
pub const GPADL_CREATED: u32 = 10;
pub const GPADL_TEARDOWN: u32 = 11;
pub const GPADL_TORNDOWN: u32 = 12;
pub const INITIATE_CONTACT: u32 = 14;
pub const VERSION_RESPONSE: u32 = 15;
pub const UNLOAD: u32 = 16;
pub const UNLOAD_RESPONSE: u32 = 17;

/// The step names of the appliance's panic-path summary line, in the order they ran.
pub fn summary_steps<'a>(r: &'a Run, entry: &str) -> Vec<&'a str> {
    let l = r.line(&format!("canary: panic path ({entry}) steps:"));
    l.split_once("steps:")
        .unwrap()
        .1
        .split(';')
        .filter_map(|s| s.trim().split_once('='))
        .map(|(name, _)| name)
        .collect()
}
