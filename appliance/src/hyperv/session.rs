//! The arch-neutral half of the appliance's Hyper-V code: the boot connection's state and the
//! Hyper-V steps of the panic path (design.md steps 3-7: UNLOAD once, per-arch cleanup,
//! reconnect, crash registers, end), written against the `vmbus` traits only.
//!
//! Portable on purpose, like `devices`: no arch code and no kernel statics. The kernel
//! (`super::HyperV`) holds one [`Session`] over the native hypervisor handle; under
//! `cargo test -p appliance` the same methods run on the host against `vmbus-sim` in both
//! register ABIs (x86_64 MSRs, arm64 `HVC #0` + HvSet/GetVpRegisters): see the tests at the end.
//!
//! arm64 specifics that live here because they are decisions, not hardware access:
//! - [`detect_arm64`]: when it is safe to ask the hypervisor anything at all;
//! - [`PpiDisabler`]: the `vmbus::InterruptControl` the cleanup step disables the per-CPU PPIs
//!   through (the kernel plugs in `arch::aarch64::gic::disable_ppi`);
//! - [`arm64_cleanup_ppis`]: which PPIs.

use capture::panic::{Outcome, SkipReason};
use capture::record::{CrashKind, CrashRecord};
use core::fmt::Write as _;
use core::marker::PhantomData;
use vmbus::arch::aarch64::Smccc;
use vmbus::cleanup::{cleanup_cpu, CleanupConfig};
use vmbus::crash::{CrashOutcome, CrashReport, CrashReporter};
use vmbus::regs::{SintReg, SynReg};
use vmbus::synic::VMBUS_MESSAGE_SINT;
use vmbus::{
    Clock, ConnectOptions, Connection, HvError, HvIdentity, Hypervisor, InterruptControl,
    PageAlloc, Synic, SynicMode, UnloadOutcome, UnloadSkip, Version, VmbusError,
};

use super::devices;

/// A fixed-size line for the console (no heap on the panic path).
pub type Line = heapless::String<256>;

/// P0 of canary's crash-register report: "CNRY" in the high half, the crash kind below.
pub const CRASH_P0_MAGIC: u64 = 0x434e_5259 << 32;

/// The STIMER0 PPI on arm64: INTID 31. Source: ref §3.3, early Linux arm64 Hyper-V patches
/// (`HYPERV_STIMER0_VECTOR 31`, "needed before ACPI is initialized"); SBSA leaves PPI 31
/// unassigned (26/27/28/30 are the generic timers, 25 the GIC maintenance interrupt, 23 the
/// PMU). UNVERIFIED against a current Hyper-V arm64 host (ref §11.3).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
pub const ARM64_STIMER0_PPI: u32 = 31;

/// The FADT Hypervisor Vendor Identity of Hyper-V arm64 (ref §3.1; Linux
/// `arch/arm64/hyperv/mshyperv.c` compares `acpi_gbl_FADT.hypervisor_id` with "MsHyperV"
/// before any hypercall).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
pub const ACPI_HYPERV_ID: [u8; 8] = *b"MsHyperV";

/// How the arm64 kernel found Hyper-V.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm64Found {
    /// ACPI FADT hypervisor id "MsHyperV" (Linux's primary arm64 check), then the identity
    /// registers (HvGetVpRegisters 0x200/0x201/0x100).
    AcpiFadt,
    /// PSCI said SMCCC >= 1.1 and the vendor-hyp UID is Hyper-V's (`vmbus::arch::aarch64::detect`).
    SmcccUid,
}

/// Why arm64 Hyper-V detection found nothing.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm64NotFound {
    /// Nothing said a hypervisor that speaks SMCCC >= 1.1 is there (no FADT id, and the
    /// kernel's PSCI/SMCCC probe found no vendor call): the conduit was not touched, because
    /// on plain QEMU TCG an HVC that is not a PSCI call is an undefined instruction.
    NotAsked,
    /// The vendor-hyp UID is not Hyper-V's (or the SMCCC probe over `hvc #0` said no).
    NotHyperV,
    /// The FADT said "MsHyperV" but reading the identity registers failed.
    IdentityFailed,
}

/// arm64 Hyper-V detection, asking the hypervisor only when it is safe to:
/// - the ACPI FADT hypervisor id is "MsHyperV": read the identity registers through
///   `conduit` (hosts that predate the SMCCC vendor-hyp UID, `vmbus/API.md`);
/// - else, only if `smccc_vendor_call` (the kernel's own probe through the firmware conduit
///   found PSCI >= 1.0 and SMCCC >= 1.1 and a vendor-hyp UID, `arch::aarch64::hypervisor_info`),
///   `vmbus::arch::aarch64::detect` (PSCI_FEATURES -> SMCCC_VERSION -> UID -> identity);
/// - else nothing is called.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
pub fn detect_arm64<C: Smccc + ?Sized>(
    conduit: &C,
    acpi_hypervisor_id: Option<[u8; 8]>,
    smccc_vendor_call: bool,
) -> Result<(HvIdentity, Arm64Found), Arm64NotFound> {
    if acpi_hypervisor_id == Some(ACPI_HYPERV_ID) {
        return vmbus::arch::aarch64::identity(conduit)
            .map(|id| (id, Arm64Found::AcpiFadt))
            .ok_or(Arm64NotFound::IdentityFailed);
    }
    if !smccc_vendor_call {
        return Err(Arm64NotFound::NotAsked);
    }
    vmbus::arch::aarch64::detect(conduit)
        .map(|id| (id, Arm64Found::SmcccUid))
        .ok_or(Arm64NotFound::NotHyperV)
}

/// The per-CPU PPIs the arm64 cleanup disables at the GIC (design.md step 4):
/// - the VMBus PPI: its INTID comes from the `_CRS` of the ACPI VMBus device (ref §3.3), which
///   this kernel does not evaluate (no AML interpreter). The canary runs SynIC in polling mode
///   and programs no vector itself (`vmbus::synic` keeps SINT2's vector field on a polling
///   enable), so the only VMBus PPI that can be live is one the firmware programmed into
///   SINT2 before us: `sint2_before` is SINT2 as read before the canary's SynIC enable, and its
///   vector is taken when it is a PPI (16-31). UNVERIFIED that Hyper-V's arm64 UEFI leaves it
///   there (ref §11.3); `None` (nothing to disable) otherwise.
/// - the STIMER0 PPI: [`ARM64_STIMER0_PPI`] (unverified, see there).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
pub fn arm64_cleanup_ppis(sint2_before: Option<u64>) -> CleanupConfig {
    let vmbus_ppi = sint2_before
        .map(|v| SintReg(v).vector() as u32)
        .filter(|v| (16..32).contains(v));
    CleanupConfig {
        vmbus_ppi,
        stimer_ppi: Some(ARM64_STIMER0_PPI),
    }
}

/// Up to this many PPIs are recorded per cleanup (the cleanup disables two).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
pub const MAX_PPIS: usize = 4;

/// `vmbus::InterruptControl` over a "disable this PPI on this CPU" function (the kernel's
/// `arch::aarch64::gic::disable_ppi`); records what it disabled and what failed, and logs it.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
pub struct PpiDisabler<F, E> {
    disable: F,
    /// INTIDs disabled, in order.
    pub disabled: heapless::Vec<u32, MAX_PPIS>,
    /// INTIDs whose disable failed, in order.
    pub failed: heapless::Vec<u32, MAX_PPIS>,
    _e: PhantomData<fn() -> E>,
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))] // the aarch64 kernel and the tests
impl<F: FnMut(u32) -> Result<(), E>, E: core::fmt::Display> PpiDisabler<F, E> {
    pub fn new(disable: F) -> Self {
        PpiDisabler {
            disable,
            disabled: heapless::Vec::new(),
            failed: heapless::Vec::new(),
            _e: PhantomData,
        }
    }
}

impl<F: FnMut(u32) -> Result<(), E>, E: core::fmt::Display> InterruptControl for PpiDisabler<F, E> {
    fn disable_ppi(&mut self, intid: u32) {
        match (self.disable)(intid) {
            Ok(()) => {
                log::info!("cleanup: PPI {intid} disabled at the GIC");
                let _ = self.disabled.push(intid);
            }
            Err(e) => {
                log::warn!("cleanup: disabling PPI {intid} at the GIC failed: {e}");
                let _ = self.failed.push(intid);
            }
        }
    }
}

/// x86_64: no per-CPU interrupts to disable (`cleanup_cpu` asks for none there).
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub struct NoPpis;
impl InterruptControl for NoPpis {
    fn disable_ppi(&mut self, _intid: u32) {}
}

/// The newer VMBus versions the host refused.
pub fn versions_newer_than(v: Version) -> Line {
    let mut s = Line::new();
    for n in vmbus::version::SUPPORTED.iter().filter(|n| **n > v) {
        let _ = write!(s, "{}{n}", if s.is_empty() { "" } else { " " });
    }
    if s.is_empty() {
        let _ = s.push_str("none");
    }
    s
}

/// A small number for `Outcome::Failed`: the hypervisor status where there is one.
pub fn hv_code(e: HvError) -> u32 {
    match e {
        HvError::InvalidHypercallCode => 2,
        HvError::InvalidHypercallInput => 3,
        HvError::InvalidAlignment => 4,
        HvError::InvalidParameter => 5,
        HvError::AccessDenied => 6,
        HvError::InsufficientMemory => 0xb,
        HvError::InvalidPortId => 0x11,
        HvError::InvalidConnectionId => 0x12,
        HvError::InsufficientBuffers => 0x13,
        HvError::Other(s) => s as u32,
        HvError::HypercallsDisabled => 0x101,
        HvError::NoSuchRegister => 0x102,
        HvError::OutOfPages => 0x103,
        HvError::VpIndexTooLarge(_) => 0x104,
        HvError::SmcccNotSupported(_) => 0x105,
    }
}

/// The crash registers P0..P4 for `rec`:
/// P0 = "CNRY" << 32 | kind (1 panic, 2 | vector << 8 fault, 3 self-check, 4 drill,
/// 0x80 | code other), P1 = guest OS id (as Linux), P2 = pc, P3 = the boot id's first 8
/// bytes (little-endian; ties the host's event to the collector's record), P4 = uptime in
/// microseconds.
pub fn crash_words(rec: &CrashRecord, os_id: u64) -> [u64; 5] {
    let kind = match rec.kind {
        CrashKind::Panic => 1,
        CrashKind::Fault { vector, .. } => 2 | (vector & 0xff) << 8,
        CrashKind::SelfCheck => 3,
        CrashKind::Drill => 4,
        CrashKind::Other { code, .. } => 0x80 | (code as u64 & 0x7f),
    };
    let mut boot = [0u8; 8];
    boot.copy_from_slice(&rec.boot_id[..8]);
    [
        CRASH_P0_MAGIC | kind,
        os_id,
        rec.registers.pc,
        u64::from_le_bytes(boot),
        rec.uptime_us,
    ]
}

/// The crash message's text (NOTIFY_MSG form; the host logs it with the crash event): what
/// an operator needs to find the record (boot id and sequence), what crashed and where, and
/// the steps so far. Cut at the buffer's end.
pub fn crash_summary<const N: usize>(rec: &CrashRecord, out: &mut heapless::String<N>) {
    use core::fmt::Write;
    struct Cut<'a, const N: usize>(&'a mut heapless::String<N>);
    impl<const N: usize> Write for Cut<'_, N> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for c in s.chars() {
                if self.0.push(c).is_err() {
                    break;
                }
            }
            Ok(())
        }
    }
    let mut w = Cut(out);
    let _ = write!(w, "canary crash record: boot ");
    for b in rec.boot_id {
        let _ = write!(w, "{b:02x}");
    }
    let _ = write!(
        w,
        " seq {} ({:?}, {:?})\n{}",
        rec.seq, rec.kind, rec.arch, rec.message
    );
    if let Some(l) = &rec.location {
        let _ = write!(w, "\nat {}:{}:{}", l.file, l.line, l.column);
    }
    let _ = write!(w, "\npc {:#x}; steps:", rec.registers.pc);
    for st in &rec.steps {
        let _ = write!(w, " {}={}", st.step.name(), st.outcome);
    }
    let _ = w.0.push('\n');
}

/// The Hyper-V state both architectures share: the hypervisor handle of this CPU, its
/// identity, the reference clock, the SynIC table, the crash-register guard, the PPIs the
/// cleanup disables (arm64), and the two VMBus connections (boot, panic-time reconnect).
pub struct Session<'a, C: Clock> {
    pub hv: &'a dyn Hypervisor,
    pub id: HvIdentity,
    pub clock: C,
    pub os_id: u64,
    pub alloc: &'a dyn PageAlloc,
    pub synic: &'a Synic,
    pub crash: &'a CrashReporter,
    /// The PPIs `cleanup` disables (arm64; ignored on x86_64).
    pub ppis: CleanupConfig,
    /// The connection made at boot.
    pub conn: Option<Connection<'a>>,
    /// The panic path's reconnection (design step 5).
    pub reconn: Option<Connection<'a>>,
    /// UNLOADs posted, over both connections (for the console evidence).
    unloads_posted: u32,
    /// The crash message page (NOTIFY_MSG form), allocated at boot by `prepare_crash_page`:
    /// the panic path allocates nothing.
    crash_page: Option<vmbus::PhysPages>,
}

/// How long to wait for each VMBus reply (100 ns units): 5 s.
pub const REPLY_TIMEOUT: u64 = 50_000_000;

impl<'a, C: Clock> Session<'a, C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hv: &'a dyn Hypervisor,
        id: HvIdentity,
        clock: C,
        os_id: u64,
        alloc: &'a dyn PageAlloc,
        synic: &'a Synic,
        crash: &'a CrashReporter,
        ppis: CleanupConfig,
    ) -> Self {
        Session {
            hv,
            id,
            clock,
            os_id,
            alloc,
            synic,
            crash,
            ppis,
            conn: None,
            reconn: None,
            unloads_posted: 0,
            crash_page: None,
        }
    }

    /// Allocates the page the crash message goes into (Linux allocates its `hv_panic_page`
    /// at boot too, `hv_common_init`), where CRASH_CTL advertises NOTIFY_MSG. Returns
    /// whether the message form will be used.
    pub fn prepare_crash_page(&mut self) -> bool {
        if !self.id.crash_msrs() {
            return false;
        }
        let caps = vmbus::regs::CrashCtl(self.hv.read_reg(SynReg::CrashCtl).unwrap_or(0));
        if caps.notify_msg() && self.crash_page.is_none() {
            self.crash_page = self.alloc.alloc_pages(1);
        }
        self.crash_page.is_some()
    }

    /// The calling CPU's VP index (0 if it cannot be read).
    pub fn vp(&self) -> u32 {
        self.hv.read_reg(SynReg::VpIndex).unwrap_or(0) as u32
    }

    /// SynIC and STIMER0 registers of the calling CPU, read back from the hypervisor.
    pub fn log_registers(&self, what: &str, vp: u32) {
        let r = |reg| self.hv.read_reg(reg).unwrap_or(u64::MAX);
        log::info!(
            "{what} vp={vp} SCONTROL={:#x} SIMP={:#x} SIEFP={:#x} SINT2={:#x} STIMER0_CONFIG={:#x} STIMER0_COUNT={:#x}",
            r(SynReg::Scontrol),
            r(SynReg::Simp),
            r(SynReg::Siefp),
            r(SynReg::Sint(VMBUS_MESSAGE_SINT)),
            r(SynReg::StimerConfig(0)),
            r(SynReg::StimerCount(0)),
        );
    }

    /// SynIC on this CPU in `mode`; logs the registers; returns the VP index.
    pub fn enable_synic(&self, mode: SynicMode) -> Result<u32, HvError> {
        let vp = self.synic.enable_cpu(self.hv, self.alloc, mode)?;
        self.log_registers("synic: enabled", vp);
        Ok(vp)
    }

    /// INITIATE_CONTACT from the calling CPU, newest version first. The caller requests
    /// offers, opens its devices, and stores the connection in `conn`.
    pub fn connect(&self) -> Result<Connection<'a>, VmbusError> {
        let opts = ConnectOptions {
            versions: vmbus::version::SUPPORTED,
            target_vp: None,
            reply_timeout: REPLY_TIMEOUT,
        };
        Connection::connect(self.hv, &self.clock, self.alloc, self.synic, &opts)
    }

    fn report_unload(&mut self, which: u32, o: UnloadOutcome) -> Outcome {
        match o {
            UnloadOutcome::Done {
                responder_vp,
                waited,
            } => {
                self.unloads_posted += 1;
                log::info!(
                    "unload: posted (connection {which}; {} this boot)",
                    self.unloads_posted
                );
                log::info!(
                    "unload: response after {} us in vp {responder_vp}'s slot; slots cleared",
                    waited / 10
                );
                Outcome::Done
            }
            UnloadOutcome::TimedOut { waited } => {
                self.unloads_posted += 1;
                log::info!(
                    "unload: posted (connection {which}; {} this boot)",
                    self.unloads_posted
                );
                log::warn!(
                    "unload: no response after {} us; slots cleared anyway",
                    waited / 10
                );
                Outcome::TimedOut
            }
            UnloadOutcome::Skipped(UnloadSkip::AlreadyUnloaded) => {
                log::info!("unload: skipped: connection {which} was already unloaded");
                Outcome::Skipped(SkipReason::AlreadyDone)
            }
            UnloadOutcome::Skipped(UnloadSkip::VersionTooOld(v)) => {
                log::info!("unload: skipped: VMBus {v} is older than 3.0");
                Outcome::Skipped(SkipReason::VersionTooOld)
            }
            UnloadOutcome::Failed(e) => {
                log::error!("unload: posting UNLOAD failed: {e}");
                Outcome::Failed(hv_code(e))
            }
        }
    }

    /// Panic step 3: UNLOAD the boot connection, once (`deadline`: reference time, 100 ns).
    pub fn unload_once(&mut self, deadline: u64) -> Outcome {
        let o = match self.conn.as_ref() {
            None => return Outcome::NotPresent,
            Some(c) => c.unload(self.hv, &self.clock, deadline),
        };
        self.report_unload(1, o)
    }

    /// UNLOAD the reconnect's connection (once; `NotPresent` if there is none).
    pub fn unload_reconnect(&mut self, deadline: u64) -> Outcome {
        let o = match self.reconn.as_ref() {
            None => return Outcome::NotPresent,
            Some(c) => c.unload(self.hv, &self.clock, deadline),
        };
        self.report_unload(2, o)
    }

    /// Panic step 4 on the calling CPU: STIMER0 COUNT/CONFIG = 0, SINT2 masked, SIMP and
    /// SIEFP off, SCONTROL = 0 (x86_64 MSRs; arm64 the same registers through
    /// HvSetVpRegisters), then on arm64 the STIMER0 and VMBus PPIs (`self.ppis`) disabled
    /// through `irq`. Logs `{what}: readback ...` with the registers read back.
    pub fn cleanup(&mut self, what: &str, irq: &mut dyn InterruptControl) -> Outcome {
        let r = cleanup_cpu(self.hv, self.synic, irq, &self.ppis);
        let vp = self.vp();
        let mut label = Line::new();
        let _ = write!(label, "{what}: readback");
        self.log_registers(&label, vp);
        match (r.stimer, r.synic) {
            (None, None) => Outcome::Done,
            (Some(e), _) | (None, Some(e)) => {
                log::error!("{what}: failed: {e}");
                Outcome::Failed(hv_code(e))
            }
        }
    }

    /// Panic step 5's reconnect: SynIC on again in polling mode, INITIATE_CONTACT with this
    /// CPU as the target, into `self.reconn` (`devices::reconnect_into`).
    pub fn reconnect(&mut self) -> Result<(), devices::DeviceError> {
        self.reconn = None;
        devices::reconnect_into(
            &mut self.reconn,
            self.hv,
            &self.clock,
            self.alloc,
            self.synic,
            REPLY_TIMEOUT,
        )
    }

    /// Panic step 6: crash registers P0-P4 then CRASH_CTL, once per boot ([`crash_words`]).
    pub fn write_crash_registers(&mut self, rec: &CrashRecord) -> Outcome {
        if !self.id.crash_msrs() {
            log::info!(
                "crash: the hypervisor offers no crash registers (x86 CPUID 0x40000003 EDX bit 10; arm64 register 0x200)"
            );
            return Outcome::NotPresent;
        }
        let p = crash_words(rec, self.os_id);
        log::info!(
            "crash: P0..P4 P0={:#x} P1={:#x} P2={:#x} P3={:#x} P4={:#x}; then CRASH_CTL",
            p[0],
            p[1],
            p[2],
            p[3],
            p[4]
        );
        // The message form where CRASH_CTL advertises NOTIFY_MSG (a page prepared at boot):
        // P0-P2 ours, P3 = the page, P4 = the text's length (ref §2.6; Linux hv_kmsg_dump);
        // else (the vmbus crate decides from CRASH_CTL) the register form with our P3/P4.
        let mut text: heapless::String<1024> = heapless::String::new();
        let report = match self.crash_page {
            Some(page) => {
                crash_summary(rec, &mut text);
                CrashReport::Message {
                    p0_p2: [p[0], p[1], p[2]],
                    page,
                    text: text.as_bytes(),
                    fallback: [p[3], p[4]],
                }
            }
            None => CrashReport::Registers(p),
        };
        match self.crash.report(self.hv, report) {
            CrashOutcome::Reported { ctl, message_len } => {
                if message_len > 0 {
                    log::info!(
                        "crash: CRASH_CTL={ctl:#x} written (message form, {message_len} bytes of text); the host has the report"
                    );
                } else {
                    log::info!("crash: CRASH_CTL={ctl:#x} written; the host has the report");
                }
                Outcome::Done
            }
            CrashOutcome::AlreadyReported => {
                log::info!("crash: already reported this boot");
                Outcome::Skipped(SkipReason::AlreadyDone)
            }
            CrashOutcome::Failed(e) => {
                log::error!("crash: writing the crash registers failed: {e}");
                Outcome::Failed(hv_code(e))
            }
        }
    }

    /// Panic step 7's hypervisor part: hypercalls off (x86: HYPERCALL.enable = 0; both: guest
    /// OS id 0), read back.
    pub fn disable_hypercalls(&self) {
        if let Err(e) = self.hv.disable_hypercalls() {
            log::error!("end: disabling hypercalls failed: {e}");
        }
        let guest_os_id = self.hv.read_reg(SynReg::GuestOsId).unwrap_or(u64::MAX);
        match self.hv.read_reg(SynReg::Hypercall) {
            Ok(hc) => log::info!("end: readback HYPERCALL={hc:#x} GUEST_OS_ID={guest_os_id:#x}"),
            // arm64 has no hypercall page register (ref §3.3).
            Err(_) => {
                log::info!("end: readback GUEST_OS_ID={guest_os_id:#x} (no HYPERCALL register)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
            cfg.crash_caps = vmbus::regs::CrashCtl(0).with_notify(true).0;
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
            SimArch::Aarch64 => {
                arm64_cleanup_ppis(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT)).ok())
            }
            SimArch::X86_64 => CleanupConfig::default(),
        };
        let synic = Box::new(Synic::new());
        let crash = CrashReporter::new();
        let mut ses = Session::new(hv, id, SimClock(&s), os_id.0, &s.mem, &synic, &crash, ppis);
        assert_eq!(ses.prepare_crash_page(), notify_msg, "{arch:?}");
        let vp = ses.enable_synic(SynicMode::Polling).unwrap();
        assert_eq!(vp, 0);
        let sint2 = SintReg(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT)).unwrap());
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
            os_id: os_id.0,
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
    fn arm64_cleanup_writes_exactly_the_listed_vp_registers_and_disables_the_vmbus_and_stimer0_ppis(
    ) {
        // The firmware left SINT2 unmasked on PPI 18 (an example INTID, not a Hyper-V fact).
        let fw = SintReg(0).with_vector(18).0;
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
        let sint = SintReg(v[2]);
        assert!(
            sint.masked() && sint.vector() == 18,
            "SINT2 masked: {:#x}",
            v[2]
        );
        assert!(
            !PageReg(v[3]).enabled() && !PageReg(v[4]).enabled(),
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
            assert!(vmbus::regs::CrashCtl(n.ctl).notify_msg(), "{arch:?}");
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
            assert!(!vmbus::regs::CrashCtl(n.ctl).notify_msg(), "{arch:?}");
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
        assert_eq!(ppi(Some(SintReg(0).with_vector(18).0)), Some(18));
        assert_eq!(
            ppi(Some(SintReg(0).with_vector(31).with_masked(true).0)),
            Some(31)
        );
        assert_eq!(ppi(Some(0)), None, "vector 0 is an SGI");
        assert_eq!(ppi(Some(SintReg(0).with_vector(40).0)), None, "an SPI");
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
}
