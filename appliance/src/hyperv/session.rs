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
        .map(|v| SintReg::from_bits(v).vector() as u32)
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
    let mut w = crate::logring::Cut(out);
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
        let caps =
            vmbus::regs::CrashCtl::from_bits(self.hv.read_reg(SynReg::CrashCtl).unwrap_or(0));
        if caps.notify_msg() && self.crash_page.is_none() {
            self.crash_page = self.alloc.alloc_pages(1);
        }
        self.crash_page.is_some()
    }

    /// The negotiated VMBus protocol version of the boot connection, if connected.
    pub fn vmbus_version(&self) -> Option<(u16, u16)> {
        self.conn
            .as_ref()
            .map(|c| (c.version().major(), c.version().minor()))
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
#[path = "session_tests.rs"]
mod tests;
