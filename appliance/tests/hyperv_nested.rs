//! The canary's Hyper-V path against a real Hyper-V-compatible host: KVM's Hyper-V emulation
//! (hypercall page, SynIC, synthetic timers, crash MSRs) with QEMU's VMBus host, nested inside
//! QEMU TCG by `scripts/hyperv-nested` (see docs/hyperv-real-host.md).
//!
//! Each nested run costs 5-15 s of TCG, so the assertions are grouped: three runs of the canary
//! (QEMU 7.2 panic; QEMU 10 + hv-balloon nested panic; QEMU 7.2 fault with QEMU's default
//! panic action) plus one short timeout run cover everything, and each `#[test]` checks one
//! behaviour from one of them. Runs never overlap
//! (a process-wide lock here, and the script's lock on its cache across processes).
//!
//! Evidence comes from three places that the canary does not control alone:
//! - its serial log (what it did and what it read back from the hypervisor),
//! - QEMU's `vmbus_*` trace (what the VMBus host received and sent),
//! - QMP events (`GUEST_PANICKED` carries the crash registers as the host saw them).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

mod common;
mod nested;

use nested::*;
use std::io::Write;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// One run of the direct-boot ELF in the nested host.
fn start(name: &'static str, opts: &[&str], l2_args: &[&str]) -> Run {
    Run::start(name, &image("direct"), RUN_TIMEOUT_S, opts, l2_args)
}

/// Kernel command line shared by the runs: panic soon after "ready", leave through
/// isa-debug-exit, and keep the UNLOAD wait short (the host answers in milliseconds).
const PANIC_CMDLINE: &str = "panic_after=0.3 qemu_exit=1 unload_deadline=10 log=info";

/// Run 1: QEMU 7.2 (an empty VMBus), a plain panic. `-action panic=none` keeps the guest
/// running after CRASH_CTL, as Hyper-V does, so steps 6-7 and the summary are visible.
fn qemu72_panic() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        start(
            "qemu72-panic",
            &[],
            &["-append", PANIC_CMDLINE, "-action", "panic=none"],
        )
    })
}

/// Run 2: QEMU 10 with hv-balloon (one VMBus offer, Dynamic Memory) and a nested panic
/// inside the panic path.
fn qemu10_balloon_nested() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let cmdline = format!("{PANIC_CMDLINE} nested_panic=1");
        start(
            "qemu10-balloon-nested",
            &["--balloon"],
            &["-append", &cmdline, "-action", "panic=none"],
        )
    })
}

/// Run 3: QEMU 7.2, a CPU exception (page fault), and QEMU's default panic action: the VM is
/// powered off the moment CRASH_CTL is written (as OpenVMM does; Hyper-V lets it run on).
fn qemu72_fault_poweroff() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        start(
            "qemu72-fault-poweroff",
            &[],
            &[
                "-append",
                "fault_after=0.3 qemu_exit=1 unload_deadline=10 log=info",
            ],
        )
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Detection, hypercall page, guest OS id

#[test]
fn detects_hyper_v_with_synic_stimer_and_crash_msrs() {
    let r = qemu72_panic();
    let l = r.line("hv: detected");
    assert!(l.contains("vendor=\"Microsoft Hv\""), "{l}\n{}", r.diag());
    // CPUID 0x40000003 EAX: the partition privilege mask KVM gives with hv-* flags
    // (TLFS; Linux hvgdk_mini.h): TIME_REF_COUNT b1, SynIC b2, SynTimer b3, hypercall b5,
    // VP_INDEX b6.
    let privileges = hex_field(l, "privileges");
    for bit in [1, 2, 3, 5, 6] {
        assert!(
            privileges & (1 << bit) != 0,
            "privilege bit {bit} missing: {l}"
        );
    }
    assert!(l.contains("crash_msrs=yes"), "{l}\n{}", r.diag());
}

#[test]
fn tsc_measured_against_reference_time_agrees_with_the_pit_calibration() {
    // A Gen2 VM has no PIT, so on Hyper-V the canary measures the TSC against the
    // hypervisor's reference time (TIME_REF_COUNT / TSC page, 100 ns units). Here L2 also has
    // a PIT, so the two calibrations can be compared: they must agree (loosely: TCG timing
    // under load), which catches a wrong unit or scale in either.
    let r = qemu72_panic();
    let l = r.line("hv: tsc calibration");
    // L2 has a PIT (no pit=off here): the boot-time frequency must be its measurement.
    assert!(
        l.contains("(from pit)"),
        "L2 has a PIT, yet the canary did not calibrate against it: {l}\n{}",
        r.diag()
    );
    let tsc = hex_field(l, "tsc_khz");
    let arch = hex_field(l, "arch_khz");
    assert!(tsc > 0 && arch > 0, "{l}\n{}", r.diag());
    assert!(
        tsc.abs_diff(arch) * 4 <= arch,
        "reference-time TSC {tsc} kHz vs PIT {arch} kHz differ by more than 25%: {l}"
    );
    // The reference decides (appliance/src/clock.rs, arbitrate): the PIT's value is kept
    // within 2 % of it and loses beyond (a margin of 0.1 % either side for rounding).
    let diff_ppm = tsc.abs_diff(arch) * 1_000_000 / tsc;
    if diff_ppm < 19_000 {
        assert!(l.ends_with("kept"), "within 2 %, so kept: {l}");
    } else if diff_ppm > 21_000 {
        assert!(l.ends_with("adopted"), "beyond 2 %, so adopted: {l}");
    }
}

#[test]
fn hypercall_page_is_installed_after_the_guest_os_id() {
    let r = qemu72_panic();
    let os = r.line("hv: guest os id");
    let id = hex_field(os, "readback");
    assert_ne!(id, 0, "{os}");
    // Bit 63: open-source OS (TLFS "Reporting the guest OS identity"; Linux hvgdk_mini.h).
    assert!(id & (1 << 63) != 0, "{os}");
    let hc = r.line("hv: hypercall page");
    let msr = hex_field(hc, "msr");
    assert!(msr & 1 != 0, "HYPERCALL MSR enable bit clear: {hc}");
    // KVM fills the page with VMMCALL (0f 01 d9, AMD: the nested host's CPU) or VMCALL
    // (0f 01 c1, Intel), then ret (c3).
    assert!(
        hc.contains("code=0f01d9c3") || hc.contains("code=0f01c1c3"),
        "{hc}\n{}",
        r.diag()
    );
    assert!(
        r.at("hv: guest os id") < r.at("hv: hypercall page"),
        "{}",
        r.diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. SynIC and the synthetic timer

#[test]
fn synic_comes_up_and_stimer0_fires_at_the_programmed_rate() {
    let r = qemu72_panic();
    let s = r.line("synic: enabled");
    assert!(hex_field(s, "SCONTROL") & 1 != 0, "{s}");
    assert!(hex_field(s, "SIMP") & 1 != 0, "{s}");
    assert!(hex_field(s, "SIEFP") & 1 != 0, "{s}");
    let t = r.line("stimer0: ticks");
    let ticks = hex_field(t, "ticks");
    let period_us = hex_field(t, "period_us");
    let elapsed_us = hex_field(t, "elapsed_us");
    let span_us = hex_field(t, "expiry_span_us");
    let missed = hex_field(t, "missed");
    assert!(ticks >= 10, "too few timer messages: {t}\n{}", r.diag());
    // The hypervisor's own expiry times (in each message) lie on the programmed grid: every
    // expiry a whole number of periods after the previous one. Periods it skipped (a
    // periodic timer drops a tick while the slot is still full) are counted, not hidden.
    assert_eq!(hex_field(t, "off_grid"), 0, "{t}");
    let grid_us = (ticks + missed) * period_us;
    assert!(span_us.abs_diff(grid_us) <= period_us / 100 * ticks, "{t}");
    assert!(missed <= ticks, "more ticks missed than delivered: {t}");
    // And the guest saw them as they expired: the messages arrived over about the span of
    // their expiry times, by our own reference clock (loose bounds: a loaded TCG host delays
    // single messages by milliseconds; expiry times in the wrong units would be far off).
    assert!(
        elapsed_us * 2 >= span_us && elapsed_us <= span_us * 2,
        "messages arrived over {elapsed_us} us, expiries span {span_us} us: {t}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. VMBus version negotiation and offers

#[test]
fn vmbus_connects_at_4_0_after_the_host_refuses_newer_versions() {
    for r in [qemu72_panic(), qemu10_balloon_nested()] {
        let v = r.line("vmbus: version");
        assert!(v.contains("vmbus: version 4.0"), "{v}\n{}", r.diag());
        // 5.x goes to connection id 4, where QEMU has no handler (HvPostMessage fails);
        // 4.1 reaches the host and gets version_supported = 0.
        assert!(v.contains("(refused 5.3 5.2 5.1 5.0 4.1)"), "{v}");
        let contacts: Vec<&str> = r.trace_events("vmbus_initiate_contact");
        assert!(
            contacts.first().is_some_and(|l| l.contains("version 4.1")),
            "the first contact the host sees should be 4.1: {contacts:?}\n{}",
            r.diag()
        );
        assert!(
            contacts.get(1).is_some_and(|l| l.contains("version 4.0")),
            "{contacts:?}"
        );
    }
}

#[test]
fn qemu72_offers_no_channels() {
    let r = qemu72_panic();
    let l = r.line("vmbus: offers");
    assert!(l.contains("vmbus: offers 0"), "{l}\n{}", r.diag());
    let posted = r.host_posted();
    assert!(!posted.contains(&OFFERCHANNEL), "{posted:?}");
    assert!(
        posted.contains(&ALLOFFERS_DELIVERED),
        "{posted:?}\n{}",
        r.diag()
    );
}

#[test]
fn dynamic_memory_offer_is_received_and_its_channel_opened_and_closed() {
    let r = qemu10_balloon_nested();
    let l = r.line("vmbus: offers");
    assert!(l.contains("vmbus: offers 1"), "{l}\n{}", r.diag());
    // hv-balloon's class: Dynamic Memory, 525074dc-8985-46e2-8057-a307dc18a502 (Linux
    // include/linux/hyperv.h HV_DM_GUID; QEMU hw/hyperv/hv-balloon.c), connection id 16 +
    // relid (QEMU vmbus.c chan_connection_id).
    let offer = r.line("vmbus: offer relid 1");
    assert!(
        offer.contains("class 525074dc-8985-46e2-8057-a307dc18a502 (dynamic memory)"),
        "{offer}"
    );
    assert!(offer.contains("connection_id 17"), "{offer}");
    assert!(r.host_posted().contains(&OFFERCHANNEL), "{}", r.diag());
    // The canary opens the channel and closes it again (it does not balloon): the host saw
    // GPADL_HEADER, OPENCHANNEL, CLOSECHANNEL, GPADL_TEARDOWN, in that order, and answered
    // GPADL_CREATED, OPENCHANNEL_RESULT (status 0), GPADL_TORNDOWN.
    let p = r.line("vmbus: channel relid 1 (dynamic memory) opened");
    assert!(p.contains("and closed"), "{p}");
    let received = r.host_received();
    let order: Vec<u32> = received
        .iter()
        .copied()
        .filter(|t| [GPADL_HEADER, OPENCHANNEL, CLOSECHANNEL, GPADL_TEARDOWN].contains(t))
        .collect();
    assert_eq!(
        order,
        [GPADL_HEADER, OPENCHANNEL, CLOSECHANNEL, GPADL_TEARDOWN],
        "{received:?}"
    );
    let delivered = r.host_delivered();
    for t in [GPADL_CREATED, OPENCHANNEL_RESULT, GPADL_TORNDOWN] {
        assert!(
            delivered.contains(&t),
            "type {t} not delivered: {delivered:?}"
        );
    }
    assert!(
        r.trace.contains("vmbus_channel_open channel #1 status 0"),
        "{}",
        r.diag()
    );
    // The GPADL handle the canary chose is the one the host created and tore down.
    let gpadl = hex_field(p, "(gpadl");
    assert!(
        r.trace
            .contains(&format!("vmbus_gpadl_torndown gpadl #{gpadl}")),
        "{p}\n{}",
        r.diag()
    );
    // The bus still unloads normally, and the reconnect gets the offer again.
    assert!(
        r.line("reconnect: offers").contains("reconnect: offers 1"),
        "{}",
        r.diag()
    );
    assert_eq!(r.count_serial("unload: response after"), 2, "{}", r.diag());
    assert!(
        !r.trace.contains("unknown message") && !r.serial.contains("error"),
        "{}",
        r.diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The panic path

#[test]
fn panic_steps_run_in_design_order() {
    let r = qemu72_panic();
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
        "{}",
        r.diag()
    );
    // What the Hyper-V steps did, in the same order (design.md steps 2-7).
    let evidence = [
        "hv: ready",
        "panic-hv: screen-flush",
        "unload: posted (connection 1",
        "cleanup: readback",
        "reconnect: version",
        "crash: P0..P4",
        "end: readback",
        "canary: panic path (first entry)",
    ];
    let at: Vec<usize> = evidence.iter().map(|s| r.at(s)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "evidence out of order {at:?}\n{}",
        r.diag()
    );
    // The canary got to its end and said so through isa-debug-exit: 0x11 = panic path done,
    // record not acked (there is no network in the nested guest), status 2 * 0x11 + 1.
    assert_eq!(r.status, 35, "{}", r.diag());
}

#[test]
fn unload_is_posted_once_per_connection_and_its_response_consumed() {
    let r = qemu72_panic();
    assert_eq!(
        r.count_serial("unload: posted (connection 1"),
        1,
        "{}",
        r.diag()
    );
    assert_eq!(
        r.count_serial("unload: posted (connection 2"),
        1,
        "{}",
        r.diag()
    );
    // On the host: every UNLOAD belongs to its own connection (an INITIATE_CONTACT between
    // any two), and there are exactly as many as the guest says it posted.
    let rx = r.host_received();
    let unloads: Vec<usize> = (0..rx.len()).filter(|i| rx[*i] == UNLOAD).collect();
    assert_eq!(unloads.len(), 2, "host received {rx:?}\n{}", r.diag());
    assert!(
        rx[unloads[0]..unloads[1]].contains(&INITIATE_CONTACT),
        "two UNLOADs on one connection: {rx:?}"
    );
    // Each UNLOAD_RESPONSE was delivered into the guest's slot (QEMU's message callback
    // with status 0; -11 = slot busy, retried after the guest's EOM) and the guest saw it.
    let delivered = r.host_delivered();
    assert_eq!(
        delivered.iter().filter(|t| **t == UNLOAD_RESPONSE).count(),
        2,
        "delivered {delivered:?}\n{}",
        r.diag()
    );
    assert_eq!(r.count_serial("unload: response after"), 2, "{}", r.diag());
    assert!(r.at("unload: posted (connection 1") < r.at("unload: response after"));
    // Consumed and the slot cleared: the next host message (the reconnect's
    // VERSION_RESPONSE) was delivered too.
    let resp = delivered
        .iter()
        .position(|t| *t == UNLOAD_RESPONSE)
        .unwrap();
    assert_eq!(
        delivered.get(resp + 1),
        Some(&VERSION_RESPONSE),
        "delivered {delivered:?}"
    );
}

#[test]
fn cleanup_leaves_synic_and_stimer0_disabled() {
    let r = qemu72_panic();
    // Before: SynIC on, SINT2 unmasked with a vector, STIMER0 running.
    let before = r.line("synic: enabled");
    assert_eq!(hex_field(before, "SINT2") & (1 << 16), 0, "{before}");
    assert!(r.serial.contains("stimer0: left running"), "{}", r.diag());
    // After, as read back from the hypervisor.
    let c = r.line("cleanup: readback");
    assert_eq!(hex_field(c, "SCONTROL") & 1, 0, "{c}");
    assert_eq!(hex_field(c, "SIMP") & 1, 0, "{c}");
    assert_eq!(hex_field(c, "SIEFP") & 1, 0, "{c}");
    // SINTx bit 16 = masked (TLFS; Linux hvgdk_mini.h union hv_synic_sint).
    assert_ne!(hex_field(c, "SINT2") & (1 << 16), 0, "{c}");
    assert_eq!(hex_field(c, "STIMER0_CONFIG") & 1, 0, "{c}");
    assert_eq!(hex_field(c, "STIMER0_COUNT"), 0, "{c}");
    assert!(
        r.at("unload: response after") < r.at("cleanup: readback"),
        "{}",
        r.diag()
    );
    // The reconnect's own cleanup leaves the same state.
    let c2 = r.line("cleanup-after-reconnect: readback");
    for reg in ["SCONTROL", "SIMP", "SIEFP", "STIMER0_CONFIG"] {
        assert_eq!(hex_field(c2, reg) & 1, 0, "{reg}: {c2}");
    }
    assert_ne!(hex_field(c2, "SINT2") & (1 << 16), 0, "{c2}");
}

#[test]
fn reconnect_after_unload_succeeds() {
    let r = qemu72_panic();
    let l = r.line("reconnect: version");
    assert!(l.contains("reconnect: version 4.0"), "{l}\n{}", r.diag());
    assert!(
        r.at("cleanup: readback") < r.at("reconnect: version"),
        "{}",
        r.diag()
    );
    // On the host: a new INITIATE_CONTACT and REQUESTOFFERS after the first UNLOAD, answered.
    let rx = r.host_received();
    let unload = rx.iter().position(|t| *t == UNLOAD).expect("no UNLOAD");
    assert!(rx[unload..].contains(&INITIATE_CONTACT), "{rx:?}");
    assert!(rx[unload..].contains(&REQUESTOFFERS), "{rx:?}");
    let delivered = r.host_delivered();
    let resp = delivered
        .iter()
        .position(|t| *t == UNLOAD_RESPONSE)
        .unwrap();
    assert!(
        delivered[resp..].contains(&ALLOFFERS_DELIVERED),
        "{delivered:?}"
    );
}

#[test]
fn crash_registers_reach_the_host_with_our_values() {
    let r = qemu72_panic();
    let l = r.line("crash: P0..P4");
    let p: Vec<u64> = (0..5).map(|i| hex_field(l, &format!("P{i}"))).collect();
    let panics = r.guest_panicked();
    assert_eq!(panics.len(), 1, "{}", r.diag());
    let info = &panics[0]["data"]["info"];
    assert_eq!(info["type"], "hyper-v", "{info}");
    // QEMU reports CRASH_P0..P4 as arg1..arg5 (qapi/run-state.json GuestPanicInformationHyperV).
    for (i, v) in p.iter().enumerate() {
        let arg = &info[format!("arg{}", i + 1)];
        assert_eq!(
            arg.as_u64(),
            Some(*v),
            "arg{} = {arg}, P{i} = {v:#x}\n{l}",
            i + 1
        );
    }
    // P0 carries "CNRY" and the kind (1 = Rust panic); P1 the guest OS id we wrote.
    assert_eq!(p[0], 0x434e_5259_0000_0001, "{l}");
    let os = hex_field(r.line("hv: guest os id"), "readback");
    assert_eq!(p[1], os, "{l}");
    // After everything else that touches VMBus (design step 6).
    assert!(
        r.at("cleanup-after-reconnect") < r.at("crash: P0..P4"),
        "{}",
        r.diag()
    );
}

#[test]
fn end_turns_the_hypercall_page_off_and_clears_the_guest_os_id() {
    let r = qemu72_panic();
    let l = r.line("end: readback");
    assert_eq!(hex_field(l, "HYPERCALL") & 1, 0, "{l}");
    assert_eq!(hex_field(l, "GUEST_OS_ID"), 0, "{l}");
    assert!(
        r.at("crash: P0..P4") < r.at("end: readback"),
        "{}",
        r.diag()
    );
}

#[test]
fn a_fault_is_reported_to_a_host_that_stops_the_vm_at_crash_ctl_after_everything_else() {
    let r = qemu72_fault_poweroff();
    // Status 120: QMP GUEST_PANICKED, then QEMU powered the guest off.
    assert_eq!(r.status, 120, "{}", r.diag());
    let l = r.line("crash: P0..P4");
    let p: Vec<u64> = (0..5).map(|i| hex_field(l, &format!("P{i}"))).collect();
    // P0: "CNRY", kind 2 (CPU exception), vector 14 (#PF) in bits 15:8.
    assert_eq!(p[0], 0x434e_5259_0000_0e02, "{l}");
    // P2 is the faulting pc the canary reported for the exception.
    assert!(
        r.serial.contains(&format!("pc {:#x}", p[2])),
        "{}",
        r.diag()
    );
    let panics = r.guest_panicked();
    assert_eq!(panics.len(), 1, "{}", r.diag());
    assert_eq!(panics[0]["data"]["action"], "poweroff", "{}", r.diag());
    let info = &panics[0]["data"]["info"];
    for (i, v) in p.iter().enumerate() {
        assert_eq!(
            info[format!("arg{}", i + 1)].as_u64(),
            Some(*v),
            "P{i}: {info}"
        );
    }
    // Everything that needs the hypervisor or VMBus happened before CRASH_CTL stopped the VM,
    // which is why the crash registers come last (design.md step 6); step 7 never ran.
    for before in [
        "unload: response after",
        "cleanup: readback",
        "reconnect: version 4.0",
        "cleanup-after-reconnect: readback",
    ] {
        assert!(
            r.at(before) < r.at("crash: P0..P4"),
            "{before}\n{}",
            r.diag()
        );
    }
    assert!(!r.serial.contains("end: readback"), "{}", r.diag());
}

// ---------------------------------------------------------------------------------------------
// 5. Nested panic

#[test]
fn nested_panic_posts_no_second_unload() {
    let r = qemu10_balloon_nested();
    assert!(
        r.serial.contains("canary: panic path (nested entry)"),
        "no nested panic\n{}",
        r.diag()
    );
    // The first entry unloaded both of its connections; the nested entry ran only the
    // crash-registers step (and end), so the host saw no further UNLOAD.
    let unloads = r.host_received().iter().filter(|t| **t == UNLOAD).count();
    assert_eq!(unloads, 2, "{}", r.diag());
    assert_eq!(r.count_serial("unload: posted"), 2, "{}", r.diag());
    assert_eq!(
        summary_steps(r, "nested entry"),
        ["crash-registers"],
        "{}",
        r.diag()
    );
    assert!(r.at("canary: panic path (nested entry)") > r.at("unload: posted (connection 2"));
    // The first entry panicked inside the crash-registers step before writing them: the
    // nested entry still writes them, and exactly one crash report reaches the host.
    assert!(
        r.line("canary: panic path (nested entry) steps:")
            .contains("crash-registers=done"),
        "{}",
        r.diag()
    );
    assert_eq!(r.guest_panicked().len(), 1, "{}", r.diag());
    // isa-debug-exit 0x12: ended through the nested entry.
    assert_eq!(r.status, 37, "{}", r.diag());
}

// ---------------------------------------------------------------------------------------------
// The harness's own contract (scripts/hyperv-nested --help, "run exit status").

#[test]
fn harness_rejects_bad_usage_with_status_2() {
    let out = Command::new(workspace().join("scripts/hyperv-nested"))
        .args(["run", "--no-such-option", "kernel.elf"])
        .output()
        .expect("cannot run scripts/hyperv-nested");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown option --no-such-option"), "{err}");
}

#[test]
fn harness_reports_a_guest_that_never_finishes_as_timeout_124() {
    let elf = image("direct");
    harness_ready();
    let _g = one_run_at_a_time();
    let t0 = Instant::now();
    // `-S`: L2's QEMU starts with the CPU stopped, so the guest never ends by itself.
    let out = Command::new(workspace().join("scripts/hyperv-nested"))
        .args(["run", "--timeout", "8", "--"])
        .arg(elf)
        .arg("-S")
        .output()
        .expect("cannot run scripts/hyperv-nested");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The limit covers the whole run, L0 and L1 boot included (L2 gets what is left, less
    // 3 s to write results back), plus at most the harness's 15 s backstop.
    assert!(secs < 8.0 + 15.0, "took {secs:.1} s");
    assert!(out.stdout.is_empty(), "a stopped guest printed something");
}

#[test]
fn harness_refuses_uefi_and_net_options_out_of_place() {
    for (args, want) in [
        (&["run", "--cfg", "x=1", "k.elf"][..], "--cfg needs --uefi"),
        (
            &["run", "--drill-port", "7374", "k.elf"][..],
            "--drill-port needs --net",
        ),
        (
            &["run", "--net", "--drill-port", "0x1", "k.elf"][..],
            "--drill-port wants a UDP port",
        ),
    ] {
        let out = Command::new(workspace().join("scripts/hyperv-nested"))
            .args(args)
            .output()
            .expect("cannot run scripts/hyperv-nested");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The README's main job: `scripts/demo` runs the canary on this nested host, and the record
// reaches the collector on the machine (L0) through L2's, L1's and L0's networking.

#[test]
fn demo_on_the_nested_host_stores_a_record_whose_vmbus_unload_step_is_done() {
    image("direct");
    harness_ready();
    let collector = common::collector_bin();
    let _g = one_run_at_a_time();
    let dir = target_dir().join("hyperv-nested").join("demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    let out = Command::new(workspace().join("scripts/demo"))
        .args(["--no-build", "--keep", "--collector"])
        .arg(&collector)
        .env("TMPDIR", &dir)
        .current_dir(workspace())
        .output()
        .expect("cannot run scripts/demo");
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let diag = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Uncaptured (not eprintln!), so CI's log has the time even when the test passes.
    let _ = writeln!(
        std::io::stderr(),
        "scripts/demo (nested Hyper-V host): status {:?} in {secs:.1} s",
        out.status.code()
    );
    assert!(out.status.success(), "{diag}");
    assert!(
        stdout.contains("exit 33 = the canary panicked and the collector acknowledged"),
        "{diag}"
    );
    // What the demo kept: the collector's database and the canary's console.
    let work = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("collector.db").is_file())
        .unwrap_or_else(|| panic!("no kept collector.db under {}\n{diag}", dir.display()));
    let db = work.join("collector.db");
    let console = std::fs::read_to_string(work.join("console.log")).unwrap_or_default();
    // The collector stored exactly one record ...
    let cli = |args: &[&str]| {
        let o = Command::new(&collector)
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap();
        assert!(o.status.success(), "host-collector {args:?}: {o:?}");
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("JSON")
    };
    let list = cli(&["list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    // ... made on the Hyper-V path: detected, VMBus negotiated with QEMU's host, UNLOAD done
    // and the SynIC/timer cleanup done before the record was built.
    let rec = cli(&["show", "--json"]);
    assert_eq!(rec["kind"], "panic", "{rec:#}");
    assert_eq!(rec["hypervisor"]["present"], true, "{rec:#}");
    assert_eq!(rec["hypervisor"]["vendor"], "Microsoft Hv", "{rec:#}");
    assert_eq!(rec["vmbus_version"], "4.0", "{rec:#}");
    let step = |name: &str| {
        rec["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step"] == name))
            .unwrap_or_else(|| panic!("no step {name}: {rec:#}"))
            .clone()
    };
    assert_eq!(step("vmbus-unload")["outcome"], "done", "{rec:#}");
    assert!(
        step("vmbus-unload")["elapsed_us"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{rec:#}"
    );
    assert_eq!(step("arch-cleanup")["outcome"], "done", "{rec:#}");
    // The console the demo showed: UNLOAD once on the first connection, answered, and the
    // cleanup read back from the hypervisor.
    assert_eq!(
        console.matches("unload: posted (connection 1").count(),
        1,
        "{diag}"
    );
    assert!(console.contains("unload: response after"), "{diag}");
    assert!(console.contains("cleanup: readback"), "{diag}");
}
