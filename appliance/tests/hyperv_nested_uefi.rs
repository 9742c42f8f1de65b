//! The Hyper-V Gen2 path on a real Hyper-V-compatible host: the x86_64 UEFI image, booted by
//! OVMF from a FAT volume (`\EFI\BOOT\BOOTX64.EFI`, options from `\canary.cfg`, as Hyper-V
//! boots a Gen2 VM's ESP) inside the nested host of `scripts/hyperv-nested --uefi` (KVM's
//! Hyper-V emulation + QEMU's VMBus, in QEMU TCG; docs/hyperv-real-host.md). L2 has no PIT
//! (`-machine pit=off`), as a Gen2 VM has none, and no NIC.
//!
//! One run (OVMF in the nested guest takes most of it: the whole run took 42-134 s on the
//! 2-core machine while other builds ran, load 5-12; see the printed times) and one `#[test]`
//! per behaviour, from the same evidence as
//! `hyperv_nested.rs`: the serial log, QEMU's `vmbus_*` trace and QMP events.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

mod nested;

use nested::*;
use std::io::Write;
use std::sync::OnceLock;

/// The canary's options (`\canary.cfg`): panic soon after "ready", leave through
/// isa-debug-exit, keep the UNLOAD wait short.
const CFG: &str = "panic_after=0.3 qemu_exit=1 unload_deadline=10 log=info";

/// OVMF under nested TCG is slow; this only has to catch a hang.
const UEFI_TIMEOUT_S: u32 = 400;

/// The run: OVMF, the canary's panic path to its end. `-action panic=none` keeps the guest
/// running after CRASH_CTL, as Hyper-V does.
fn uefi_panic() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let r = Run::start(
            "uefi-ovmf-panic",
            &image("uefi"),
            UEFI_TIMEOUT_S,
            &["--uefi", "--cfg", CFG],
            &["-machine", "pit=off", "-action", "panic=none"],
        );
        // Straight to stderr, not eprintln!: the test harness captures that, and the time
        // belongs in CI's log even when the tests pass.
        let _ = writeln!(
            std::io::stderr(),
            "UEFI image on the nested host: whole run {:.1} s; L2 (OVMF + canary) {}",
            r.secs,
            r.l2_secs.map_or("?".into(), |s| format!("{s:.1} s"))
        );
        r
    })
}

/// `name=1234` (decimal) out of a serial line.
fn dec_field(line: &str, name: &str) -> u64 {
    let pat = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no decimal {name}= in {line:?}"))
}

#[test]
fn ovmf_boots_the_uefi_image_which_detects_hyper_v() {
    let r = uefi_panic();
    // OVMF took the removable-media path and the canary its UEFI entry, with the options
    // from \canary.cfg.
    assert!(r.serial.contains("canary: UEFI entry"), "{}", r.diag());
    assert!(r.line("booting").contains("Uefi"), "{}", r.diag());
    assert!(r.line("cmdline:").contains(CFG), "{}", r.diag());
    let l = r.line("hv: detected");
    assert!(l.contains("vendor=\"Microsoft Hv\""), "{l}");
    // TIME_REF_COUNT b1, SynIC b2, SynTimer b3, hypercall b5, VP_INDEX b6 (TLFS; Linux
    // hvgdk_mini.h), and the crash MSRs.
    let privileges = hex_field(l, "privileges");
    for bit in [1, 2, 3, 5, 6] {
        assert!(privileges & (1 << bit) != 0, "privilege bit {bit}: {l}");
    }
    assert!(l.contains("crash_msrs=yes"), "{l}");
    // The hypercall page KVM filled (VMMCALL on the AMD nested host, or VMCALL), after the
    // guest OS id.
    let hc = r.line("hv: hypercall page");
    assert!(
        hc.contains("code=0f01d9c3") || hc.contains("code=0f01c1c3"),
        "{hc}"
    );
    assert!(r.at("hv: guest os id") < r.at("hv: hypercall page"));
}

#[test]
fn without_a_pit_the_reference_time_decides_the_clock() {
    let r = uefi_panic();
    // No PIT in L2: the boot-time frequency is not a PIT measurement, and the hypervisor's
    // reference time decides (adopted; or kept only when CPUID already agreed with it).
    let boot = r.line("timer: ");
    assert!(!boot.contains("(from pit)"), "{boot}\n{}", r.diag());
    assert!(r.serial.contains("hv: reference time from the TSC page"));
    let cal = r.line("hv: tsc calibration");
    assert!(
        cal.ends_with("adopted") || (cal.contains("(from cpuid)") && cal.ends_with("kept")),
        "{cal}\n{}",
        r.diag()
    );
    assert!(
        (100_000..20_000_000).contains(&dec_field(cal, "tsc_khz")),
        "{cal}"
    );
    // Real time from then on: STIMER0's expiries (the host's reference time) span as much
    // as the canary's clock says passed between the first and the last (loosely: TCG).
    let st = r.line("stimer0: ticks=");
    let (elapsed, span) = (dec_field(st, "elapsed_us"), dec_field(st, "expiry_span_us"));
    assert!(span > 0, "{st}");
    assert!(
        elapsed.abs_diff(span) * 2 <= span,
        "canary time {elapsed} us vs reference span {span} us: {st}\n{}",
        r.diag()
    );
}

#[test]
fn vmbus_connects_and_unloads_once_per_connection() {
    let r = uefi_panic();
    assert!(
        r.line("vmbus: version").contains("vmbus: version 4.0"),
        "{}",
        r.diag()
    );
    // The host saw each UNLOAD on its own connection and delivered both responses.
    let rx = r.host_received();
    let unloads: Vec<usize> = (0..rx.len()).filter(|i| rx[*i] == UNLOAD).collect();
    assert_eq!(unloads.len(), 2, "host received {rx:?}\n{}", r.diag());
    assert!(
        rx[unloads[0]..unloads[1]].contains(&INITIATE_CONTACT),
        "{rx:?}"
    );
    let delivered = r.host_delivered();
    assert_eq!(
        delivered.iter().filter(|t| **t == UNLOAD_RESPONSE).count(),
        2,
        "{delivered:?}\n{}",
        r.diag()
    );
    assert_eq!(r.count_serial("unload: posted (connection 1"), 1);
    assert_eq!(r.count_serial("unload: response after"), 2, "{}", r.diag());
    assert!(r.line("reconnect: version").contains("4.0"), "{}", r.diag());
}

#[test]
fn cleanup_reads_back_synic_and_stimer0_off() {
    let r = uefi_panic();
    for which in ["cleanup: readback", "cleanup-after-reconnect: readback"] {
        let c = r.line(which);
        for reg in ["SCONTROL", "SIMP", "SIEFP", "STIMER0_CONFIG"] {
            assert_eq!(hex_field(c, reg) & 1, 0, "{reg}: {c}");
        }
        // SINTx bit 16 = masked (TLFS; Linux hvgdk_mini.h union hv_synic_sint).
        assert_ne!(hex_field(c, "SINT2") & (1 << 16), 0, "{c}");
    }
    assert!(r.at("unload: response after") < r.at("cleanup: readback"));
}

#[test]
fn guest_panicked_carries_our_p0_to_p4_after_a_done_unload() {
    let r = uefi_panic();
    // The panic path in design order, UNLOAD done, the crash registers last.
    let steps = r.line("canary: panic path (first entry) steps:");
    assert!(steps.contains("vmbus-unload=done"), "{steps}\n{}", r.diag());
    assert!(steps.contains("arch-cleanup=done"), "{steps}");
    assert!(steps.contains("crash-registers=done"), "{steps}");
    assert_eq!(
        summary_steps(r, "first entry"),
        [
            "freeze",
            "screen-flush",
            "vmbus-unload",
            "arch-cleanup",
            "ship",
            "crash-registers"
        ],
    );
    let l = r.line("crash: P0..P4");
    let p: Vec<u64> = (0..5).map(|i| hex_field(l, &format!("P{i}"))).collect();
    assert!(r.at("cleanup-after-reconnect") < r.at("crash: P0..P4"));
    // QMP GUEST_PANICKED, type hyper-v, arg1..arg5 = the canary's P0..P4
    // (qapi/run-state.json GuestPanicInformationHyperV).
    let panics = r.guest_panicked();
    assert_eq!(panics.len(), 1, "{}", r.diag());
    let info = &panics[0]["data"]["info"];
    assert_eq!(info["type"], "hyper-v", "{info}");
    for (i, v) in p.iter().enumerate() {
        assert_eq!(
            info[format!("arg{}", i + 1)].as_u64(),
            Some(*v),
            "P{i}: {info}\n{l}"
        );
    }
    // P0 = "CNRY" << 32 | 1 (a Rust panic); P1 = the guest OS id the canary wrote.
    assert_eq!(p[0], 0x434e_5259_0000_0001, "{l}");
    assert_eq!(
        p[1],
        hex_field(r.line("hv: guest os id"), "readback"),
        "{l}"
    );
    // 0x11 through isa-debug-exit: panic path done, record not acked (no NIC): 2 * 0x11 + 1.
    assert_eq!(r.status, 35, "{}", r.diag());
}
