//! Detection, SynIC, cleanup, crash registers, synthetic timer and reference time, per arch.

mod common;

use common::{config, hyperv, sim, FakeGic, ARCHES, PERSONALITIES};
use vmbus::cleanup::{cleanup_cpu, CleanupConfig};
use vmbus::crash::{CrashOutcome, CrashReport, CrashReporter};
use vmbus::regs::{arm64_reg, msr, SintReg};
use vmbus::stimer::{Stimer0, StimerMode};
use vmbus::time::ReferenceTime;
use vmbus::{
    Clock, ConnectOptions, Connection, Event, PageAlloc, Privileges, SynicMode, UnloadOutcome,
};
use vmbus_sim::{Guest, Personality, Sim, SimArch};

#[test]
fn detection_reports_the_same_identity_through_both_abis() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let id = vmbus::detect(g.hv(0)).expect("Hyper-V detected");
        assert_eq!(&id.vendor, b"Microsoft Hv");
        assert_eq!(id.build, 0x3839, "{arch:?}");
        assert_eq!(id.version, 0x000a_0000);
        assert!(id
            .privileges
            .has(Privileges::SYNIC | Privileges::HYPERCALL | Privileges::VP_INDEX));
        assert!(id.privileges.has(Privileges::POST_MESSAGES));
        assert!(id.crash_msrs());
        assert!(!id.stimer_direct_mode());
        assert_eq!(id.recommendations, 0x28);
    }
}

#[test]
fn x86_uses_the_hypercall_page_written_by_the_hypervisor() {
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let w = s.raw_writes(0);
    // GUEST_OS_ID before HYPERCALL (ref §3.2), canary's open-source id.
    assert_eq!(w[0].0, msr::GUEST_OS_ID);
    assert_eq!(w[0].1 >> 63, 1);
    assert_eq!((w[0].1 >> 56) & 0x7f, 0x7f);
    assert_eq!(w[1].0, msr::HYPERCALL);
    assert_eq!(w[1].1 & 1, 1);
    // Every hypercall went through the page: the sim asserts the call target is the page and
    // that it holds the stub, so a working connection proves it.
    Connection::connect(
        g.hv(0),
        &g.clock,
        &s.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap();
    g.hv(0).disable_hypercalls().unwrap();
    let w = s.raw_writes(0);
    let n = w.len();
    assert_eq!(
        w[n - 2],
        (msr::HYPERCALL, w[1].1 & !1),
        "enable bit cleared, GPA kept"
    );
    assert_eq!(w[n - 1], (msr::GUEST_OS_ID, 0));
    assert_eq!(
        g.hv(0)
            .hypercall(vmbus::hypercall::Control::new(0x5c), 0, 0)
            .unwrap_err(),
        vmbus::HvError::HypercallsDisabled
    );
}

#[test]
fn synic_enable_programs_simp_siefp_sint2_and_scontrol() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        s.clear_raw_writes(1);
        let g = Guest::boot(&s, SynicMode::Interrupt { vector: 0x31 });
        let w = s.raw_writes(1);
        let ids: Vec<u32> = w.iter().map(|x| x.0).collect();
        let sint = w
            .iter()
            .find(|x| x.0 == msr::SINT0 + 2 || x.0 == arm64_reg::SINT0 + 2)
            .unwrap();
        let sint = SintReg::from_bits(sint.1);
        assert_eq!(
            (sint.vector(), sint.masked(), sint.auto_eoi()),
            (0x31, false, false)
        );
        match arch {
            SimArch::X86_64 => assert_eq!(
                ids,
                vec![msr::SIMP, msr::SIEFP, msr::SINT0 + 2, msr::SCONTROL]
            ),
            SimArch::Aarch64 => assert_eq!(
                ids,
                vec![
                    arm64_reg::SIMP,
                    arm64_reg::SIEFP,
                    arm64_reg::SINT0 + 2,
                    arm64_reg::SCONTROL
                ]
            ),
        }
        assert!(g.synic.is_enabled(1));
        // Polling mode masks SINT2.
        let s = sim(arch, hyperv());
        let _g = Guest::boot(&s, SynicMode::Polling);
        let w = s.raw_writes(0);
        let sint = w
            .iter()
            .find(|x| x.0 == msr::SINT0 + 2 || x.0 == arm64_reg::SINT0 + 2)
            .unwrap();
        assert!(SintReg::from_bits(sint.1).masked());
    }
}

#[test]
fn cleanup_writes_exactly_the_listed_registers_per_arch_on_every_host() {
    for (arch, p) in ARCHES
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let s = sim(arch, p);
        let g = Guest::boot(&s, SynicMode::Interrupt { vector: 0x30 });
        let c = Connection::connect(
            g.hv(0),
            &g.clock,
            &s.mem,
            &g.synic,
            &ConnectOptions::default(),
        )
        .unwrap();
        assert!(matches!(
            c.unload(g.hv(0), &g.clock, s.now() + 10_000_000),
            UnloadOutcome::Done { .. }
        ));
        s.clear_raw_writes(0);
        let mut gic = FakeGic(Vec::new());
        let cfg = CleanupConfig {
            vmbus_ppi: Some(18),
            stimer_ppi: Some(19),
        };
        let r = cleanup_cpu(g.hv(0), &g.synic, &mut gic, &cfg);
        assert!(r.ok(), "{p:?} {r:?}");
        let masked_sint = SintReg::from_bits(0x30).with_masked(true).into_bits();
        let w = s.raw_writes(0);
        match arch {
            SimArch::X86_64 => {
                // ref §2.5: STIMER0 COUNT/CONFIG = 0, SINT2 masked, SIMP/SIEFP off, SCONTROL = 0.
                assert_eq!(
                    w,
                    vec![
                        (msr::STIMER0_COUNT, 0),
                        (msr::STIMER0_CONFIG, 0),
                        (msr::SINT0 + 2, masked_sint),
                        (msr::SIMP, 0),
                        (msr::SIEFP, 0),
                        (msr::SCONTROL, 0),
                    ]
                );
                assert!(gic.0.is_empty(), "no GIC on x86");
            }
            SimArch::Aarch64 => {
                assert_eq!(
                    w,
                    vec![
                        (arm64_reg::STIMER0_COUNT, 0),
                        (arm64_reg::STIMER0_CONFIG, 0),
                        (arm64_reg::SINT0 + 2, masked_sint),
                        (arm64_reg::SIMP, 0),
                        (arm64_reg::SIEFP, 0),
                        (arm64_reg::SCONTROL, 0),
                    ]
                );
                assert_eq!(
                    gic.0,
                    vec![19, 18],
                    "STIMER0 and VMBus PPIs disabled at the GIC"
                );
            }
        }
        assert!(!g.synic.is_enabled(0));
        // After cleanup, SynIC can come back and a new connection works (panic step 5).
        g.synic
            .enable_cpu(g.hv(0), &s.mem, SynicMode::Polling)
            .unwrap();
        let mut c2 = Connection::connect(
            g.hv(0),
            &g.clock,
            &s.mem,
            &g.synic,
            &ConnectOptions::default(),
        )
        .unwrap();
        assert_eq!(c2.request_offers(g.hv(0), &g.clock).unwrap().len(), 3);
    }
}

#[test]
fn crash_message_form_is_written_once_with_ctl_last() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let page = s.mem.alloc_pages(1).unwrap();
        let rep = CrashReporter::new();
        s.clear_raw_writes(0);
        let text = b"canary: panicked at src/main.rs:1:1";
        let o = rep.report(
            g.hv(0),
            CrashReport::Message {
                p0_p2: [1, 2, 3],
                page,
                text,
                fallback: [4, 5],
            },
        );
        assert_eq!(
            o,
            CrashOutcome::Reported {
                ctl: 0xC000_0000_0000_0000,
                message_len: text.len()
            }
        );
        let n = s.crash_notices();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].p, [1, 2, 3, page.gpa(), text.len() as u64]);
        assert_eq!(n[0].message.as_deref(), Some(&text[..]));
        let w = s.raw_writes(0);
        let (p0, ctl) = match arch {
            SimArch::X86_64 => (msr::CRASH_P0, msr::CRASH_CTL),
            SimArch::Aarch64 => (arm64_reg::CRASH_P0, arm64_reg::CRASH_CTL),
        };
        assert_eq!(
            w.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![p0, p0 + 1, p0 + 2, p0 + 3, p0 + 4, ctl]
        );
        assert_eq!(
            rep.report(g.hv(0), CrashReport::Registers([9; 5])),
            CrashOutcome::AlreadyReported
        );
        assert_eq!(s.crash_notices().len(), 1);
    }
}

#[test]
fn crash_falls_back_to_register_form_without_notify_msg() {
    // QEMU's CRASH_CTL does not offer NOTIFY_MSG (hvhost README).
    let mut cfg = config(SimArch::X86_64, Personality::Qemu);
    cfg.crash_caps = vmbus::regs::CrashCtl::new().with_notify(true).into_bits();
    let s = Sim::new(cfg);
    let g = Guest::boot(&s, SynicMode::Polling);
    let page = s.mem.alloc_pages(1).unwrap();
    let o = CrashReporter::new().report(
        g.hv(0),
        CrashReport::Message {
            p0_p2: [1, 2, 3],
            page,
            text: b"x",
            fallback: [4, 5],
        },
    );
    assert_eq!(
        o,
        CrashOutcome::Reported {
            ctl: 1 << 63,
            message_len: 0
        }
    );
    assert_eq!(s.crash_notices()[0].p, [1, 2, 3, 4, 5]);
    assert_eq!(s.crash_notices()[0].message, None);
}

#[test]
fn stimer_message_mode_delivers_timer_expired_and_direct_mode_fires() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = Connection::connect(
            g.hv(0),
            &g.clock,
            &s.mem,
            &g.synic,
            &ConnectOptions::default(),
        )
        .unwrap();
        Stimer0::configure(g.hv(0), StimerMode::Message { sint: 2 }).unwrap();
        Stimer0::arm(g.hv(0), g.clock.now() + 1000).unwrap();
        assert_eq!(c.poll(g.hv(0), &g.clock), Some(Event::TimerExpired));
        assert_eq!(c.timer_messages(), 1);
        assert_eq!(c.poll(g.hv(0), &g.clock), None);
        Stimer0::configure(g.hv(0), StimerMode::Direct { vector: 0xEF }).unwrap();
        Stimer0::arm(g.hv(0), g.clock.now() + 1000).unwrap();
        assert_eq!(s.direct_timer_fires(0), 1);
        s.clear_raw_writes(0);
        Stimer0::stop(g.hv(0)).unwrap();
        assert_eq!(
            s.raw_writes(0).iter().map(|w| w.1).collect::<Vec<_>>(),
            vec![0, 0]
        );
    }
}

#[test]
fn reference_time_uses_the_tsc_page_and_falls_back_to_the_register() {
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let id = vmbus::detect(g.hv(0)).unwrap();
    let t = ReferenceTime::new(g.hv(0), &s.mem, &id);
    assert!(t.uses_tsc_page());
    let page_time = t.read_tsc_page().unwrap();
    assert_eq!(page_time, s.now(), "((tsc * scale) >> 64) + offset");
    let a = t.now();
    let b = t.now();
    assert!(b >= a);
    // An invalid page (sequence 0) falls back to TIME_REF_COUNT.
    let s = sim(SimArch::X86_64, hyperv());
    s.faults(|f| f.invalid_tsc_page = true);
    let g = Guest::boot(&s, SynicMode::Polling);
    let t = ReferenceTime::new(g.hv(0), &s.mem, &id);
    assert!(t.read_tsc_page().is_none());
    let now = t.now();
    assert!(now >= s.now() - 1 && now <= s.now());
    // arm64 has no TSC page: register only.
    let s = sim(SimArch::Aarch64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let t = ReferenceTime::new(g.hv(0), &s.mem, &id);
    assert!(!t.uses_tsc_page());
    assert_eq!(t.now(), s.now());
}

#[test]
fn malformed_host_messages_are_dropped_without_panic() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = Connection::connect(
            g.hv(0),
            &g.clock,
            &s.mem,
            &g.synic,
            &ConnectOptions::default(),
        )
        .unwrap();
        let mut short_offer = vec![0u8; 100];
        short_offer[0] = 1;
        let mut wrong_dir = vec![0u8; 40];
        wrong_dir[0] = 14;
        s.faults(|f| {
            f.inject_before_all_offers = vec![
                (1, 250, vec![0xFF; 240]),              // payload_size beyond 240
                (1, 3, vec![1, 0, 0]),                  // shorter than the header
                (1, 100, short_offer),                  // truncated OFFERCHANNEL
                (0x1234, 8, vec![0; 8]),                // not a VMBus message
                (1, 40, wrong_dir),                     // a guest->host type
                (1, 8, vec![200, 0, 0, 0, 0, 0, 0, 0]), // unknown VMBus type: ignored, not malformed
            ]
        });
        let offers = c.request_offers(g.hv(0), &g.clock).unwrap();
        assert_eq!(offers.len(), 3, "{arch:?}");
        assert_eq!(c.malformed_messages(), 5);
    }
}

#[test]
fn channel_event_flags_are_tested_and_cleared_per_relid() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Interrupt { vector: 0x30 });
        assert!(!g.synic.event_flag_test_and_clear(1, 2, 70));
        s.signal_guest(1, 70);
        assert!(
            !g.synic.event_flag_test_and_clear(0, 2, 70),
            "other CPU's page"
        );
        assert!(!g.synic.event_flag_test_and_clear(1, 2, 69), "other bit");
        assert!(g.synic.event_flag_test_and_clear(1, 2, 70));
        assert!(!g.synic.event_flag_test_and_clear(1, 2, 70), "cleared");
        assert!(
            !g.synic.event_flag_test_and_clear(1, 2, 5000),
            "out of range"
        );
    }
}

#[test]
fn arm64_identity_without_the_uid_call_reads_the_same_registers() {
    let s = sim(SimArch::Aarch64, hyperv());
    let cpu = s.cpu(0);
    assert!(vmbus::arch::aarch64::has_hyperv_uid(&cpu));
    let a = vmbus::arch::aarch64::detect(&cpu).unwrap();
    let b = vmbus::arch::aarch64::identity(&cpu).unwrap();
    assert_eq!(a, b);
    assert_eq!(b.privileges.0, s.config().privileges);
    assert_eq!(b.features, s.config().features);
}

#[test]
fn arm64_detection_asks_psci_for_smccc_1_1_before_any_vendor_call() {
    let s = sim(SimArch::Aarch64, hyperv());
    assert_eq!(
        vmbus::arch::aarch64::smccc_version(&s.cpu(0)),
        Some(0x1_0002)
    );
    // A conduit without SMCCC_VERSION: no vendor-hyp call is made, nothing detected.
    let mut cfg = config(SimArch::Aarch64, hyperv());
    cfg.smccc = false;
    let s = Sim::new(cfg);
    assert_eq!(vmbus::arch::aarch64::smccc_version(&s.cpu(0)), None);
    assert!(vmbus::arch::aarch64::detect(&s.cpu(0)).is_none());
}
