//! The appliance's Hyper-V init and panic-path sequence on `vmbus-sim`, through the real
//! per-arch adapters (`Arm64Hv` over the sim's `HVC #0` SMCCC model, `X86Hv` over its
//! MSRs): the same `Session` methods the kernel's `HyperV` calls, with the PPIs disabled
//! through the same `PpiDisabler` the aarch64 kernel builds over `gic::disable_ppi` (here
//! over a model GIC).
use super::*;
use capture::testutil::sample_record;
use std::cell::Cell;
use vmbus::arch::aarch64::{Arm64Hv, HV_FUNC_ID, SMCCC_RET_NOT_SUPPORTED};
use vmbus::arch::x86_64::X86Hv;
use vmbus::regs::PageReg;
use vmbus::{GuestOsId, Synic};
use vmbus_sim::{Personality, Sim, SimArch, SimClock, SimConfig, SimOffer};

/// CHANNELMSG_UNLOAD (Linux `include/linux/hyperv.h`, `enum vmbus_channel_message_type`).
const UNLOAD: u32 = 16;

fn sim(arch: SimArch, smccc: bool) -> Sim {
    sim_with(arch, smccc, true)
}

fn sim_with(arch: SimArch, smccc: bool, notify_msg: bool) -> Sim {
    let mut cfg = SimConfig::new(
        arch,
        Personality::HyperV {
            max_version: vmbus::Version::WIN10_V5_3,
        },
    );
    cfg.smccc = smccc;
    if !notify_msg {
        cfg.crash_caps = vmbus::regs::CrashCtl::new().with_notify(true).into_bits();
    }
    cfg.offers = vec![SimOffer {
        if_type: vmbus::guid::NET,
        if_instance: vmbus::Guid([2; 16]),
        relid: 2,
        dedicated_interrupt: true,
        mmio_megabytes: 0,
    }];
    Sim::new(cfg)
}

/// The register's id in `arch`'s ABI (MSR number or arm64 register name).
fn id(arch: SimArch, r: SynReg) -> u32 {
    match arch {
        SimArch::X86_64 => r.x86_msr().unwrap(),
        SimArch::Aarch64 => r.arm64_id().unwrap(),
    }
}

/// A model of this CPU's GIC PPI enables (GICR_ISENABLER0 bits 16-31), all enabled, and
/// `gic::disable_ppi`'s contract: only INTIDs 16-31 are PPIs.
#[derive(Default)]
struct ModelGic {
    enabled: Cell<u32>,
    calls: Cell<u32>,
}
impl ModelGic {
    fn new() -> Self {
        let g = ModelGic::default();
        g.enabled.set(0xffff_0000);
        g
    }
    fn disable_ppi(&self, intid: u32) -> Result<(), &'static str> {
        self.calls.set(self.calls.get() + 1);
        if !(16..32).contains(&intid) {
            return Err("not a PPI");
        }
        self.enabled.set(self.enabled.get() & !(1 << intid));
        Ok(())
    }
    fn disabled(&self) -> Vec<u32> {
        (16..32)
            .filter(|i| self.enabled.get() & (1 << i) == 0)
            .collect()
    }
}

/// What one run of the sequence left behind.
struct Evidence {
    /// Register writes of the first cleanup, in order.
    cleanup_writes: Vec<(u32, u64)>,
    /// PPIs the first cleanup disabled (through `PpiDisabler`), and what the model GIC saw.
    ppis_disabled: Vec<u32>,
    gic_disabled: Vec<u32>,
    unloads_after_step3: usize,
    unloads_at_end: usize,
    crash_notices: Vec<vmbus_sim::CrashNotice>,
    crash_writes: Vec<(u32, u64)>,
    second_crash: Outcome,
    os_id: u64,
}

/// The kernel's boot sequence (`init_on`: guest OS id, the cleanup PPIs from SINT2 as the
/// firmware left it, SynIC in polling mode, VMBus connect, offers), then the panic path's
/// Hyper-V steps in design.md order: UNLOAD (twice: the second is a nested entry), cleanup,
/// reconnect, offers, UNLOAD of the reconnect, cleanup again, crash registers (twice),
/// hypercalls off.
fn run(arch: SimArch, firmware_sint2: Option<u64>) -> Evidence {
    run_with(arch, firmware_sint2, true)
}

/// `notify_msg`: whether the host's CRASH_CTL advertises the message form.
fn run_with(arch: SimArch, firmware_sint2: Option<u64>, notify_msg: bool) -> Evidence {
    let s = sim_with(arch, true, notify_msg);
    let hv: Box<dyn Hypervisor + '_> = match arch {
        SimArch::X86_64 => Box::new(X86Hv::new(s.cpu(0))),
        SimArch::Aarch64 => Box::new(Arm64Hv::new(s.cpu(0))),
    };
    let hv: &dyn Hypervisor = hv.as_ref();
    let id = match arch {
        SimArch::X86_64 => vmbus::detect(hv).unwrap(),
        SimArch::Aarch64 => detect_arm64(&s.cpu(0), None, true).unwrap().0,
    };
    let os_id = GuestOsId::canary(0, 1, 0);
    hv.enable_hypercalls(&s.mem, os_id).unwrap();
    if let Some(v) = firmware_sint2 {
        // What a firmware that used VMBus before us would leave (unverified on a real
        // Hyper-V arm64 host: see `arm64_cleanup_ppis`).
        hv.write_reg(SynReg::Sint(VMBUS_MESSAGE_SINT), v).unwrap();
    }
    let ppis = match arch {
        SimArch::Aarch64 => arm64_cleanup_ppis(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT)).ok()),
        SimArch::X86_64 => CleanupConfig::default(),
    };
    let synic = Box::new(Synic::new());
    let crash = CrashReporter::new();
    let mut ses = Session::new(
        hv,
        id,
        SimClock(&s),
        os_id.into_bits(),
        &s.mem,
        &synic,
        &crash,
        ppis,
    );
    assert_eq!(ses.prepare_crash_page(), notify_msg, "{arch:?}");
    let vp = ses.enable_synic(SynicMode::Polling).unwrap();
    assert_eq!(vp, 0);
    let sint2 = SintReg::from_bits(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT)).unwrap());
    assert!(sint2.masked(), "polling mode: SINT2 stays masked");
    let mut c = ses.connect().unwrap();
    assert_eq!(c.request_offers(hv, &ses.clock).unwrap().len(), 1);
    ses.conn = Some(c);

    // Step 3: UNLOAD once; a nested entry's second call posts nothing.
    let far = s.now() + 100_000_000;
    assert_eq!(ses.unload_once(far), Outcome::Done);
    assert_eq!(
        ses.unload_once(far),
        Outcome::Skipped(SkipReason::AlreadyDone)
    );
    let unloads_after_step3 = s.guest_messages_of(UNLOAD).len();

    // Step 4, through the kernel's `InterruptControl` over a model GIC.
    s.clear_raw_writes(0);
    let gic = ModelGic::new();
    let mut irq = PpiDisabler::new(|i| gic.disable_ppi(i));
    assert_eq!(ses.cleanup("cleanup", &mut irq), Outcome::Done);
    let cleanup_writes = s.raw_writes(0);
    let ppis_disabled = irq.disabled.to_vec();
    assert!(irq.failed.is_empty(), "{:?}", irq.failed);
    drop(irq);
    let gic_disabled = gic.disabled();

    // Step 5: reconnect in polling mode, offers, then UNLOAD it and clean up again.
    ses.reconnect().unwrap();
    let c2 = ses.reconn.as_mut().unwrap();
    assert_eq!(c2.request_offers(hv, &ses.clock).unwrap().len(), 1);
    assert_eq!(ses.unload_reconnect(far + 100_000_000), Outcome::Done);
    assert_eq!(
        ses.cleanup(
            "cleanup-after-reconnect",
            &mut PpiDisabler::new(|i| gic.disable_ppi(i))
        ),
        Outcome::Done
    );
    let unloads_at_end = s.guest_messages_of(UNLOAD).len();

    // Step 6: crash registers, once per boot.
    s.clear_raw_writes(0);
    let mut rec = sample_record(7);
    rec.uptime_us = 123_456;
    assert_eq!(ses.write_crash_registers(&rec), Outcome::Done);
    let second_crash = ses.write_crash_registers(&rec);
    let crash_writes = s.raw_writes(0);

    // Step 7.
    ses.disable_hypercalls();
    assert_eq!(hv.read_reg(SynReg::GuestOsId).unwrap(), 0);

    Evidence {
        cleanup_writes,
        ppis_disabled,
        gic_disabled,
        unloads_after_step3,
        unloads_at_end,
        crash_notices: s.crash_notices(),
        crash_writes,
        second_crash,
        os_id: os_id.into_bits(),
    }
}

/// The registers the cleanup writes, in order, in `arch`'s ABI: STIMER0 COUNT, CONFIG,
/// SINT2, SIMP, SIEFP, SCONTROL.
fn cleanup_ids(arch: SimArch) -> Vec<u32> {
    [
        SynReg::StimerCount(0),
        SynReg::StimerConfig(0),
        SynReg::Sint(VMBUS_MESSAGE_SINT),
        SynReg::Simp,
        SynReg::Siefp,
        SynReg::Scontrol,
    ]
    .into_iter()
    .map(|r| id(arch, r))
    .collect()
}

#[test]
fn arm64_cleanup_writes_exactly_the_listed_vp_registers_and_disables_the_vmbus_and_stimer0_ppis() {
    // The firmware left SINT2 unmasked on PPI 18 (an example INTID, not a Hyper-V fact).
    let fw = SintReg::new().with_vector(18).into_bits();
    let e = run(SimArch::Aarch64, Some(fw));
    let ids: Vec<u32> = e.cleanup_writes.iter().map(|w| w.0).collect();
    assert_eq!(
        ids,
        cleanup_ids(SimArch::Aarch64),
        "{:x?}",
        e.cleanup_writes
    );
    // HvSetVpRegisters names (ref §3.3), not MSRs.
    assert_eq!(ids[0], 0x000B_0001);
    assert_eq!(ids[5], 0x000A_0010);
    let v: Vec<u64> = e.cleanup_writes.iter().map(|w| w.1).collect();
    assert_eq!((v[0], v[1]), (0, 0), "STIMER0 COUNT and CONFIG zeroed");
    let sint = SintReg::from_bits(v[2]);
    assert!(
        sint.masked() && sint.vector() == 18,
        "SINT2 masked: {:#x}",
        v[2]
    );
    assert!(
        !PageReg::from_bits(v[3]).enabled() && !PageReg::from_bits(v[4]).enabled(),
        "SIMP/SIEFP off"
    );
    assert_eq!(v[5], 0, "SCONTROL = 0");
    // STIMER0 first, then VMBus, each once, through the InterruptControl.
    assert_eq!(e.ppis_disabled, vec![ARM64_STIMER0_PPI, 18]);
    assert_eq!(e.gic_disabled, vec![18, ARM64_STIMER0_PPI]);
}

#[test]
fn arm64_without_a_firmware_vmbus_ppi_the_cleanup_disables_only_the_stimer0_ppi() {
    let e = run(SimArch::Aarch64, None);
    assert_eq!(e.ppis_disabled, vec![ARM64_STIMER0_PPI]);
    assert_eq!(e.gic_disabled, vec![ARM64_STIMER0_PPI]);
    let ids: Vec<u32> = e.cleanup_writes.iter().map(|w| w.0).collect();
    assert_eq!(ids, cleanup_ids(SimArch::Aarch64));
}

#[test]
fn the_panic_sequence_unloads_once_per_connection_and_writes_the_crash_registers_once() {
    for arch in [SimArch::Aarch64, SimArch::X86_64] {
        let e = run(arch, None);
        assert_eq!(e.unloads_after_step3, 1, "{arch:?}: UNLOAD once");
        assert_eq!(e.unloads_at_end, 2, "{arch:?}: and once for the reconnect");
        assert_eq!(e.crash_notices.len(), 1, "{arch:?}");
        let n = &e.crash_notices[0];
        let mut rec = sample_record(7);
        rec.uptime_us = 123_456;
        let words = crash_words(&rec, e.os_id);
        // The host advertises NOTIFY_MSG: the message form, P0-P2 ours, P3 the page, P4
        // the text's length, and the page holds the summary.
        assert_eq!(n.p[..3], words[..3], "{arch:?}");
        assert_eq!(n.p[0] >> 32, 0x434e_5259, "CNRY");
        assert!(
            vmbus::regs::CrashCtl::from_bits(n.ctl).notify_msg(),
            "{arch:?}"
        );
        let text = String::from_utf8(n.message.clone().expect("message form")).unwrap();
        assert_eq!(n.p[4] as usize, text.len());
        let mut want: heapless::String<1024> = heapless::String::new();
        crash_summary(&rec, &mut want);
        assert_eq!(text, want.as_str());
        assert!(text.starts_with("canary crash record: boot "), "{text}");
        assert!(text.contains(rec.message.as_str()), "{text}");
        assert_eq!(e.second_crash, Outcome::Skipped(SkipReason::AlreadyDone));
        // P0..P4, then CRASH_CTL last, each written once (the second report wrote none).
        let ids: Vec<u32> = e.crash_writes.iter().map(|w| w.0).collect();
        let want: Vec<u32> = (0..5)
            .map(SynReg::CrashP)
            .chain([SynReg::CrashCtl])
            .map(|r| id(arch, r))
            .collect();
        assert_eq!(ids, want, "{arch:?}");
    }
}

#[test]
fn without_notify_msg_the_crash_registers_carry_our_p0_p4() {
    for arch in [SimArch::Aarch64, SimArch::X86_64] {
        let e = run_with(arch, None, false);
        assert_eq!(e.crash_notices.len(), 1, "{arch:?}");
        let n = &e.crash_notices[0];
        let mut rec = sample_record(7);
        rec.uptime_us = 123_456;
        assert_eq!(n.p, crash_words(&rec, e.os_id), "{arch:?}");
        assert!(
            !vmbus::regs::CrashCtl::from_bits(n.ctl).notify_msg(),
            "{arch:?}"
        );
        assert!(n.message.is_none());
    }
}

#[test]
fn x86_cleanup_writes_the_same_registers_as_msrs_and_touches_no_gic() {
    let e = run(SimArch::X86_64, None);
    let ids: Vec<u32> = e.cleanup_writes.iter().map(|w| w.0).collect();
    assert_eq!(ids, cleanup_ids(SimArch::X86_64));
    assert_eq!(ids[5], 0x4000_0080, "HV_X64_MSR_SCONTROL");
    assert!(e.ppis_disabled.is_empty() && e.gic_disabled.is_empty());
}

/// An SMCCC conduit that counts calls, over another (or answering NOT_SUPPORTED).
struct Counting<'a> {
    inner: Option<&'a dyn Smccc>,
    calls: std::sync::atomic::AtomicU32,
    hv_calls: std::sync::atomic::AtomicU32,
}
impl<'a> Counting<'a> {
    fn new(inner: Option<&'a dyn Smccc>) -> Self {
        Counting {
            inner,
            calls: Default::default(),
            hv_calls: Default::default(),
        }
    }
    fn calls(&self) -> u32 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}
impl Smccc for Counting<'_> {
    fn call(&self, r: &mut [u64; 18]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        if r[0] == HV_FUNC_ID {
            self.hv_calls.fetch_add(1, Relaxed);
        }
        match self.inner {
            Some(c) => c.call(r),
            None => r[0] = SMCCC_RET_NOT_SUPPORTED,
        }
    }
}

#[test]
fn arm64_detection_asks_nothing_without_acpi_mshyperv_or_an_smccc_vendor_call() {
    // Plain QEMU virt: no FADT id, the kernel's PSCI probe found no SMCCC 1.1 vendor call.
    let c = Counting::new(None);
    assert_eq!(
        detect_arm64(&c, None, false).map(|r| r.1),
        Err(Arm64NotFound::NotAsked)
    );
    // Another hypervisor's FADT id is no reason to send Hyper-V calls either.
    assert_eq!(
        detect_arm64(&c, Some(*b"XenVMM  "), false).map(|r| r.1),
        Err(Arm64NotFound::NotAsked)
    );
    assert_eq!(c.calls(), 0, "the conduit was never touched");
}

#[test]
fn arm64_detection_uses_the_acpi_fadt_id_on_hosts_without_smccc_1_1() {
    // A host that predates the vendor-hyp UID: SMCCC_VERSION not implemented.
    let s = sim(SimArch::Aarch64, false);
    let cpu = s.cpu(0);
    let c = Counting::new(Some(&cpu));
    assert_eq!(
        detect_arm64(&c, None, true).map(|r| r.1),
        Err(Arm64NotFound::NotHyperV),
        "without SMCCC >= 1.1 the UID is not asked"
    );
    assert_eq!(c.hv_calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    let (id, how) = detect_arm64(&c, Some(ACPI_HYPERV_ID), false).unwrap();
    assert_eq!(how, Arm64Found::AcpiFadt);
    assert_eq!(&id.vendor, b"Microsoft Hv");
    assert!(
        id.crash_msrs(),
        "the sim's register 0x200 advertises crash registers"
    );
}

#[test]
fn arm64_detection_through_the_smccc_uid_and_not_for_another_hypervisor() {
    let s = sim(SimArch::Aarch64, true);
    let (_, how) = detect_arm64(&s.cpu(0), None, true).unwrap();
    assert_eq!(how, Arm64Found::SmcccUid);

    // KVM answers SMCCC 1.1 with its own UID (Linux `ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_*`):
    // no Hyper-V hypercall is sent.
    struct Kvm;
    impl Smccc for Kvm {
        fn call(&self, r: &mut [u64; 18]) {
            let out = match r[0] {
                vmbus::arch::aarch64::PSCI_FEATURES => [0, 0, 0, 0],
                vmbus::arch::aarch64::SMCCC_VERSION => [0x1_0001, 0, 0, 0],
                vmbus::arch::aarch64::VENDOR_HYP_CALL_UID => {
                    [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d]
                }
                _ => [SMCCC_RET_NOT_SUPPORTED, 0, 0, 0],
            };
            r[..4].copy_from_slice(&out);
        }
    }
    let c = Counting::new(Some(&Kvm));
    assert_eq!(
        detect_arm64(&c, None, true).map(|r| r.1),
        Err(Arm64NotFound::NotHyperV)
    );
    assert_eq!(c.hv_calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(c.calls() >= 3);
}

#[test]
fn the_vmbus_ppi_is_taken_from_sint2_only_when_it_is_a_ppi() {
    let ppi = |v: Option<u64>| arm64_cleanup_ppis(v).vmbus_ppi;
    assert_eq!(
        ppi(Some(SintReg::new().with_vector(18).into_bits())),
        Some(18)
    );
    assert_eq!(
        ppi(Some(
            SintReg::new().with_vector(31).with_masked(true).into_bits()
        )),
        Some(31)
    );
    assert_eq!(ppi(Some(0)), None, "vector 0 is an SGI");
    assert_eq!(
        ppi(Some(SintReg::new().with_vector(40).into_bits())),
        None,
        "an SPI"
    );
    assert_eq!(ppi(None), None);
    assert_eq!(arm64_cleanup_ppis(None).stimer_ppi, Some(31));
}

#[test]
fn a_ppi_that_fails_to_disable_is_recorded_and_the_rest_still_run() {
    let gic = ModelGic::new();
    let mut d = PpiDisabler::new(|i| gic.disable_ppi(i));
    d.disable_ppi(40);
    d.disable_ppi(31);
    assert_eq!(d.failed.as_slice(), &[40]);
    assert_eq!(d.disabled.as_slice(), &[31]);
    drop(d);
    assert_eq!(gic.calls.get(), 2);
    assert_eq!(gic.disabled(), vec![31]);
}
