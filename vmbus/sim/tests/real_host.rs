//! The vmbus guest stack against a real Hyper-V-compatible host we did not write: KVM's
//! Hyper-V emulation and QEMU 10's VMBus server with its hv-balloon device, nested in QEMU
//! TCG (`scripts/hyperv-nested`, docs/hyperv-real-host.md). The guest is `vmbus/hvtest`, a
//! minimal PVH kernel: detection, hypercall page, SynIC, TSC page, version fallback to 4.0,
//! offers, GPADL + OPENCHANNEL on the balloon channel, one in-band packet out and the
//! device's reply back through the rings, CLOSECHANNEL + GPADL teardown, UNLOAD once,
//! reconnect and all of it again, cleanup. About 10 s (plus building the kernel once).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn build_kernel(target: &str) -> PathBuf {
    let dir = repo().join("vmbus/hvtest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&dir)
        .args(["build", "--release", "--target", target])
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "building vmbus/hvtest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let elf = target_dir.join(format!("{target}/release/vmbus-hvtest"));
    assert!(elf.is_file(), "no kernel at {}", elf.display());
    elf
}

#[test]
fn guest_stack_drives_a_real_vmbus_host_through_gpadl_open_rings_close_and_unload() {
    let harness = repo().join("scripts/hyperv-nested");
    let setup = Command::new(&harness)
        .arg("setup")
        .output()
        .expect("harness");
    assert!(
        setup.status.success(),
        "scripts/hyperv-nested setup failed:\n{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let elf = build_kernel("x86_64-unknown-none");
    let out = Command::new(&harness)
        .args(["run", "--balloon", "--trace", "-t", "150", "--"])
        .arg(&elf)
        .args(["-action", "panic=none"])
        .output()
        .expect("cannot run scripts/hyperv-nested");
    let serial = String::from_utf8_lossy(&out.stdout);
    let trace = String::from_utf8_lossy(&out.stderr);
    let diag = format!("--- serial ---\n{serial}\n--- stderr ---\n{trace}");
    assert_eq!(
        out.status.code(),
        Some(33),
        "isa-debug-exit 0x10 = pass\n{diag}"
    );
    for needle in [
        "hypercall page at",
        "reference time from the TSC page: true",
        "connected at 4.0 (message connection id 1)",
        "class 525074dc-8985-46e2-8057-a307dc18a502 connection id 0x11",
        "open: relid 1 gpadl 0xe1e10",
        "send: DM_VERSION_REQUEST, signalled true",
        "recv: packet type 6",
        "close: CLOSECHANNEL + GPADL torn down",
        "unload again: Skipped(AlreadyUnloaded)",
        "SCONTROL 0x0 SIMP 0x0 SIEFP 0x0 SINT2 0x10000 STIMER0 0x0/0x0",
        "GUEST_OS_ID 0x0",
        "hvtest: PASS",
    ] {
        assert!(serial.contains(needle), "missing {needle:?}\n{diag}");
    }
    assert_eq!(serial.matches("unload: Done").count(), 2, "{diag}");
    // The host's own view (QEMU trace events).
    assert_eq!(trace.matches("vmbus_gpadl_created").count(), 2, "{diag}");
    assert_eq!(
        trace
            .matches("vmbus_channel_open channel #1 status 0")
            .count(),
        2,
        "{diag}"
    );
    assert_eq!(
        trace.matches("hv_balloon_incoming_version").count(),
        2,
        "{diag}"
    );
    assert_eq!(trace.matches("vmbus_gpadl_torndown").count(), 2, "{diag}");
    assert_eq!(
        trace.matches("vmbus_recv_message type 16").count(),
        2,
        "one UNLOAD per connection\n{diag}"
    );
}

#[test]
fn arm64_hvc_conduit_answers_the_smccc_probe_and_detects_no_hyperv_on_plain_qemu() {
    // Plain QEMU virt (TCG, no Hyper-V): the real `hvc #0` layer runs; PSCI answers, SMCCC
    // vendor calls are not offered, so detection must say "not Hyper-V" without faulting.
    let elf = build_kernel("aarch64-unknown-none");
    let mut child = Command::new("qemu-system-aarch64")
        .args([
            "-machine",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "64",
            "-nographic",
        ])
        .args([
            "-monitor", "none", "-serial", "stdio", "-nic", "none", "-kernel",
        ])
        .arg(&elf)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-system-aarch64 (scripts/setup installs it)");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > 60 {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    let diag = format!("{serial}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "PSCI SYSTEM_OFF ends QEMU cleanly\n{diag}"
    );
    assert!(serial.contains("psci version 0x1000"), "{diag}");
    assert!(serial.contains("smccc version None"), "{diag}");
    assert!(serial.contains("detect: None"), "{diag}");
    assert!(serial.contains("hvtest-arm64: PASS"), "{diag}");
}
