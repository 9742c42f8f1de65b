//! Two nested runs on KVM's Hyper-V (`scripts/hyperv-nested`): a crash with the Hyper-V
//! state's lock held, and the clock on a host without a PIT.
//!
//! The clock on a Hyper-V host without a PIT (Hyper-V Gen2 has none, nor has OpenVMM's
//! Hyper-V chipset): the canary boots nested (`scripts/hyperv-nested`, KVM's Hyper-V) in an
//! L2 with `-machine pit=off`, so port 0x61 reads 0xff, and the hypervisor's reference time
//! must decide the TSC frequency. Issue 17: on OpenVMM a "calibration" against the missing
//! PIT came out 10x low, the reference measurement was discarded, and every deadline ran 10x
//! short.
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 1..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line}"))
}

/// Boots the x86_64 direct-boot image in the nested host with these L2 arguments; returns
/// the canary's console and a diagnostic text for failures.
fn nested_run(l2_args: &[&str]) -> (String, String) {
    let img = Command::new(workspace().join("scripts/qemu-run"))
        .args(["--arch", "x86_64", "--boot", "direct", "--print-image"])
        .current_dir(workspace())
        .output()
        .expect("run scripts/qemu-run");
    assert!(
        img.status.success(),
        "{}",
        String::from_utf8_lossy(&img.stderr)
    );
    let elf = workspace().join(String::from_utf8_lossy(&img.stdout).trim());
    let setup = Command::new(workspace().join("scripts/hyperv-nested"))
        .arg("setup")
        .output()
        .expect("run scripts/hyperv-nested setup");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let out = Command::new(workspace().join("scripts/hyperv-nested"))
        .args(["run", "--timeout", "240", "--serial"])
        .arg(&serial)
        .arg("--")
        .arg(&elf)
        .args(l2_args)
        .current_dir(workspace())
        .output()
        .expect("run scripts/hyperv-nested run");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let diag = format!(
        "status {:?}\nserial:\n{log}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (log, diag)
}

#[test]
fn without_a_pit_the_hyperv_reference_time_decides_the_tsc_frequency() {
    let (log, diag) = nested_run(&[
        "-append",
        "panic_after=1 qemu_exit=1",
        "-action",
        "panic=none",
        "-machine",
        "pit=off",
    ]);
    let line = |pat: &str| {
        log.lines()
            .find(|l| l.contains(pat))
            .unwrap_or_else(|| panic!("no '{pat}' line\n{diag}"))
    };
    // No PIT: the boot-time frequency is not a PIT measurement.
    let boot = line("timer: ");
    assert!(!boot.contains("(from pit)"), "{boot}\n{diag}");
    // The reference decides: adopted (or kept only if CPUID agreed with it).
    let cal = line("hv: tsc calibration");
    assert!(
        cal.ends_with("adopted") || (cal.contains("(from cpuid)") && cal.ends_with("kept")),
        "{cal}"
    );
    let tsc_khz = field(cal, "tsc_khz");
    assert!((100_000..20_000_000).contains(&tsc_khz), "{cal}");
    // The clock is now real time: STIMER0's expiries (set in reference time by the host)
    // span as much time as the TSC says elapsed between the first and the last (loosely:
    // TCG timing under load). A 10x wrong clock would make elapsed_us a tenth of the span.
    let st = line("stimer0: ticks=");
    let elapsed = field(st, "elapsed_us");
    let span = field(st, "expiry_span_us");
    assert!(span > 0, "{st}");
    assert!(
        elapsed.abs_diff(span) * 2 <= span,
        "TSC time {elapsed} us vs reference-time span {span} us: {st}\n{diag}"
    );
    // And the panic path ran to its end on that clock.
    assert!(
        log.contains("canary: panic path (first entry) steps:"),
        "{diag}"
    );
}

#[test]
fn a_crash_inside_the_hyperv_code_still_runs_every_hyperv_step_on_a_real_host() {
    // Issue 11: with the HYPERV lock held at the panic (the self-check's VMBus polling, the
    // console redraw), screen flush, UNLOAD, cleanup, crash registers and end were all
    // skipped as busy. `panic_holding=locks` panics with that lock (and the network's) held.
    let (log, diag) = nested_run(&[
        "-append",
        "panic_after=1 panic_holding=locks qemu_exit=1",
        "-action",
        "panic=none",
    ]);
    assert!(
        log.contains("panic: the Hyper-V state was locked at the panic; taken over"),
        "{diag}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("canary: panic path (first entry) steps:"))
        .unwrap_or_else(|| panic!("no summary\n{diag}"));
    assert!(!summary.contains("busy"), "{summary}");
    for step in [
        "vmbus-unload=done",
        "arch-cleanup=done",
        "crash-registers=done",
    ] {
        assert!(summary.contains(step), "{step} missing: {summary}");
    }
    assert!(
        log.contains("end: readback HYPERCALL="),
        "end step's Hyper-V part: {diag}"
    );
}
