//! The appliance's Hyper-V interface: detection, hypercalls, SynIC, synthetic timer, VMBus
//! connection, and the Hyper-V steps of the panic path, on top of the `vmbus` crate, on x86_64
//! and arm64.
//!
//! Contract with the rest of the appliance:
//! - `init` runs once at boot, after the console, timers and exceptions are up and before the
//!   NIC is chosen (netvsc when Hyper-V offers one, else virtio-net).
//! - The panic path reaches the `HyperV` through a static with a real try-lock
//!   (`crate::platform::HYPERV`), never a blocking lock: the methods below do not block,
//!   allocate or take locks that normal running may hold, and honour their deadlines.
//!
//! Every step prints what it did and what it read back from the hypervisor on the console
//! (`hv:`, `synic:`, `stimer0:`, `vmbus:`, `unload:`, `cleanup:`, `reconnect:`, `crash:`,
//! `end:` lines): `appliance/tests/hyperv_nested.rs` checks them against a real host
//! (docs/hyperv-real-host.md).
//!
//! Layout: `session` is the arch-neutral half (the connections, UNLOAD, cleanup, reconnect,
//! crash registers, arm64 detection and PPI choice), portable and tested on the host against
//! `vmbus-sim` in both register ABIs; `devices` the VMBus devices, equally portable; this file
//! the kernel glue (statics, the native hypervisor handle, the console, the network hand-off).
//!
//! VMBus devices (`devices`): when the host offers them, synthvid is brought up on the UEFI
//! GOP framebuffer (the log on screen in normal running, the panic screen and one DIRT on a
//! try-lock in step 2) and netvsc becomes the NIC (`take_boot_nic`, used by `crate::net`
//! instead of virtio-net). The panic path's reconnect (step 5) reopens only the NIC, on a second
//! driver object and fresh buffers built at boot, hands it to the network for the ship step,
//! and `finish_ship` unloads that connection after the ship.
//!
//! arm64 (ref §1.4, §2.5, §3.1, §3.3, §3.5): detected only when it is safe to ask
//! (`session::detect_arm64`: ACPI FADT "MsHyperV", or the kernel's PSCI/SMCCC probe found a
//! vendor call; plain QEMU virt is never sent a non-PSCI HVC); no hypercall page (`hvc #0`,
//! SMCCC function 0x46000001); every synthetic register through HvSetVpRegisters /
//! HvGetVpRegisters; SynIC in polling mode (the VMBus PPI is never taken); no STIMER0 check
//! (x86 needs it for KVM; arm64 runs no synthetic timer); the cleanup also disables the
//! VMBus and STIMER0 PPIs at the GIC (`session::arm64_cleanup_ppis`). Checked against the
//! `vmbus-sim` model only: no host here runs Hyper-V for arm64.

use crate::sync::{Once, TryLock};
use core::mem::MaybeUninit;
use devices::{ChannelSlot, HvFb, Vram};
use session::{versions_newer_than, Session};
use vmbus::cleanup::CleanupConfig;
use vmbus::crash::CrashReporter;
use vmbus::regs::{StimerConfig, SynReg};
use vmbus::stimer::{Stimer0, StimerMode};
use vmbus::synic::{HVMSG_TIMER_EXPIRED, VMBUS_MESSAGE_SINT};
use vmbus::synthvid::{console, Rect};
use vmbus::time::ReferenceTime;
use vmbus::{Clock, Connection, Event, Guid, HvIdentity, Hypervisor, Synic, SynicMode};

mod devices;
#[cfg(target_arch = "x86_64")]
mod lapic;
mod pages;
pub mod panic;
pub mod panic_screen;
mod session;

pub use devices::{GopFramebuffer, HvNic};

use pages::PAGES;

/// The SynIC state of every CPU (the unload poll visits each enabled one).
static SYNIC: Synic = Synic::new();
/// Crash registers are written once per boot (the host accepts one notification).
static CRASH: CrashReporter = CrashReporter::new();

/// The NIC channel of the boot connection, the one the panic path reopens, and synthvid's.
static NIC_SLOT: ChannelSlot = ChannelSlot::new();
static SHIP_NIC_SLOT: ChannelSlot = ChannelSlot::new();
static FB_SLOT: ChannelSlot = ChannelSlot::new();
/// The GOP framebuffer, as the UEFI entry found it (synthvid's VRAM on Gen2).
static GOP: Once<GopFramebuffer> = Once::new();
/// The boot NIC, until the network takes it.
static BOOT_NIC: TryLock<Option<&'static mut HvNic>> = TryLock::new(None);
/// Storage of the two NIC driver objects (boot, reconnect): large, so never on the panic
/// path's stack. Index `i` is written once, by `build_nic(i)`.
static mut NIC_OBJECTS: [MaybeUninit<HvNic>; 2] = [const { MaybeUninit::uninit() }; 2];

use panic::DEVICE_TIMEOUT;

/// Called by the UEFI entry before ExitBootServices: where the GOP framebuffer is.
#[cfg_attr(not(target_os = "uefi"), allow(dead_code))]
pub fn record_gop(fb: GopFramebuffer) {
    GOP.set(fb);
}

/// The netvsc NIC brought up at boot, once (the network uses it instead of virtio-net).
pub fn take_boot_nic() -> Option<&'static mut HvNic> {
    BOOT_NIC.try_lock()?.take()
}

/// NIC driver object `i` (0 boot, 1 reconnect) over `slot`, in static storage with its own
/// buffers; `None` if it was built already.
// The returned reference is to `NIC_OBJECTS`, not to `slot`.
#[allow(clippy::mut_from_ref)]
fn build_nic(
    i: usize,
    slot: &'static ChannelSlot,
    hv: &'static dyn Hypervisor,
) -> Option<&'static mut HvNic> {
    let bufs = pages::nic_buffers(i)?;
    let nic = devices::new_nic(slot, hv, bufs);
    // SAFETY: `nic_buffers(i)` hands each index out once, so this slot is written once and
    // the returned reference is the only one to it; `i` < 2 (nic_buffers checked it).
    Some(unsafe { (*core::ptr::addr_of_mut!(NIC_OBJECTS[i])).write(nic) })
}

use devices::mac_text;

/// SINT2's vector. Linux uses `HYPERVISOR_CALLBACK_VECTOR` = 0xf3
/// (`arch/x86/include/asm/irq_vectors.h`); the canary never takes it (interrupts stay off),
/// but KVM only delivers timer messages to an unmasked SINT with a vector (see `lapic`).
#[cfg(target_arch = "x86_64")]
const SINT2_VECTOR: u8 = 0xf3;

/// STIMER0 rate check at boot: periodic, 10 ms, up to 20 intervals or 0.5 s (100 ns units).
const STIMER_CHECK_PERIOD: u64 = 100_000;
const STIMER_CHECK_INTERVALS: u32 = 20;
const STIMER_CHECK_LIMIT: u64 = 5_000_000;
/// Afterwards STIMER0 keeps running, as Linux's clockevent does, every 100 ms.
const STIMER_RUN_PERIOD: u64 = 1_000_000;

/// Dynamic Memory (hv_balloon), `525074dc-8985-46e2-8057-a307dc18a502`: Linux
/// `include/linux/hyperv.h` `HV_DM_GUID`; QEMU `hw/hyperv/hv-balloon.c`.
const DYNAMIC_MEMORY: Guid = Guid::from_fields(
    0x5250_74dc,
    0x8985,
    0x46e2,
    [0x80, 0x57, 0xa3, 0x07, 0xdc, 0x18, 0xa5, 0x02],
);

/// `hv_timer_message_payload` (TLFS "Timer message payload"; Linux `include/hyperv/hvgdk.h`):
/// u32 timer_index, u32 reserved, u64 expiration_time, u64 delivery_time (100 ns units).
fn timer_expiration(payload: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[8..16]);
    u64::from_le_bytes(b)
}

/// STIMER0 expiry messages as the boot check saw them: when they arrived (our reference
/// clock) and when the hypervisor says they expired.
#[derive(Default)]
struct TimerTally {
    messages: u32,
    first_seen: u64,
    last_seen: u64,
    first_exp: u64,
    last_exp: u64,
    /// Periods the hypervisor skipped (a periodic timer drops a tick while the slot is full).
    missed: u64,
    /// Expiries that are not a whole number of periods after the previous one.
    off_grid: u32,
    max_latency: u64,
    other: u32,
}

impl TimerTally {
    fn add(&mut self, seen: u64, exp: u64, period: u64) {
        if self.messages == 0 {
            self.first_seen = seen;
            self.first_exp = exp;
        } else {
            let delta = exp.wrapping_sub(self.last_exp);
            // KVM keeps a periodic timer on its original grid (it skips whole periods when
            // late: Linux arch/x86/kvm/hyperv.c stimer_start); allow 1 % of a period.
            let periods = delta.saturating_add(period / 2) / period;
            if periods == 0 || delta.abs_diff(periods.saturating_mul(period)) > period / 100 {
                self.off_grid += 1;
            } else {
                self.missed = self.missed.saturating_add(periods - 1);
            }
        }
        self.max_latency = self.max_latency.max(seen.saturating_sub(exp));
        self.last_seen = seen;
        self.last_exp = exp;
        self.messages += 1;
    }
}

/// The per-CPU interrupts of the cleanup step: on arm64 disabled at the GIC
/// (`arch::aarch64::gic::disable_ppi`), on x86_64 none (`cleanup_cpu` asks for none there).
#[cfg(target_arch = "aarch64")]
fn cleanup_irq() -> impl vmbus::InterruptControl {
    session::PpiDisabler::new(crate::arch::imp::gic::disable_ppi)
}
#[cfg(not(target_arch = "aarch64"))]
fn cleanup_irq() -> impl vmbus::InterruptControl {
    session::NoPpis
}

/// The Hyper-V guest state of this partition.
pub struct HyperV {
    /// The arch-neutral state: hypervisor handle, identity, clock, both connections.
    s: Session<'static, ReferenceTime<'static>>,
    timer_messages: u32,
    /// synthvid and its VRAM, when brought up.
    fb: Option<(HvFb, Vram)>,
    /// Why synthvid is not up although offered (for the panic line).
    fb_note: &'static str,
    /// A hash of the log text last drawn on the screen.
    drawn: u64,
    /// The NIC driver the panic path brings up on the reconnect (built at boot).
    spare_nic: Option<&'static mut HvNic>,
    /// The record ships over the reconnect's netvsc: unload that connection after the ship.
    ship_over_vmbus: bool,
}

fn class_name(g: &Guid) -> &'static str {
    match *g {
        vmbus::guid::NET => "netvsc",
        vmbus::guid::SYNTHVID => "synthvid",
        vmbus::guid::SHUTDOWN_IC => "shutdown ic",
        vmbus::guid::HEARTBEAT_IC => "heartbeat ic",
        DYNAMIC_MEMORY => "dynamic memory",
        _ => "unknown",
    }
}

/// Detects Hyper-V, enables hypercalls and SynIC, checks STIMER0 (x86_64), connects to VMBus,
/// brings up the offered devices, and stores the state in `slot` (`None` when not running on
/// Hyper-V, or when hypercalls could not be enabled).
///
/// Out of line, and storing instead of returning: `HyperV` holds two VMBus connections
/// (several KiB each), and a by-value return would sit in the caller's frame, which is
/// `kmain`'s and stays on the boot stack under the whole panic path.
#[inline(never)]
pub fn init(_cfg: &crate::config::Config, slot: &TryLock<Option<HyperV>>) {
    let h = detect_native().and_then(|(hv, id)| init_on(hv, id));
    match &h {
        Some(h) => log::info!("hyper-v: vmbus {:?}", h.vmbus_version()),
        None => log::info!("hyper-v: not present"),
    }
    *slot.lock() = h;
}

/// x86_64: the CPUID leaves.
#[cfg(target_arch = "x86_64")]
fn detect_native() -> Option<(&'static dyn Hypervisor, HvIdentity)> {
    let hv: &'static dyn Hypervisor = vmbus::arch::x86_64::native();
    let Some(id) = vmbus::detect(hv) else {
        log::info!("hv: not detected (no \"Microsoft Hv\" hypervisor CPUID leaves)");
        return None;
    };
    Some((hv, id))
}

/// arm64: ask only when it is safe (`session::detect_arm64`). The kernel's own probe
/// (`hypervisor_info`) goes through the firmware's PSCI conduit and asks for the vendor-hyp
/// UID only after PSCI >= 1.0 said SMCCC_VERSION exists and it said >= 1.1; at EL2 it asks
/// nothing. Only when it found a vendor call does `vmbus` send its own HVCs.
#[cfg(target_arch = "aarch64")]
fn detect_native() -> Option<(&'static dyn Hypervisor, HvIdentity)> {
    use session::{detect_arm64, Arm64Found, Arm64NotFound};
    if crate::arch::imp::current_el() == 2 {
        // We are the hypervisor level ourselves (UEFI left us at EL2): an HVC would trap to
        // our own vectors, and nothing runs under us.
        log::info!("hv: not detected (running at EL2: no hypervisor below us)");
        return None;
    }
    let info = crate::arch::imp::hypervisor_info();
    let acpi_id = crate::arch::imp::acpi_hypervisor_id();
    let vendor_call = info.present;
    let native = vmbus::arch::aarch64::native();
    match detect_arm64(native.conduit(), acpi_id, vendor_call) {
        Ok((id, how)) => {
            log::info!(
                "hv: arm64 Hyper-V found through {}",
                match how {
                    Arm64Found::AcpiFadt => "the ACPI FADT hypervisor id \"MsHyperV\"",
                    Arm64Found::SmcccUid => "the SMCCC vendor-hyp UID (SMCCC >= 1.1 per PSCI)",
                }
            );
            Some((native, id))
        }
        Err(e) => {
            log::info!(
                "hv: not detected ({})",
                match e {
                    Arm64NotFound::NotAsked =>
                        "no ACPI \"MsHyperV\" and no SMCCC >= 1.1 vendor call: nothing asked",
                    Arm64NotFound::NotHyperV => "the SMCCC vendor-hyp UID is not Hyper-V's",
                    Arm64NotFound::IdentityFailed =>
                        "ACPI says \"MsHyperV\" but HvGetVpRegisters failed",
                }
            );
            None
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_native() -> Option<(&'static dyn Hypervisor, HvIdentity)> {
    None
}

/// x86_64: the hypercall page the hypervisor filled in, for the console.
#[cfg(target_arch = "x86_64")]
fn log_hypercall_page(hv: &dyn Hypervisor) {
    let page = vmbus::arch::x86_64::native().hypercall_page();
    let mut code = [0u8; 4];
    for (i, b) in code.iter_mut().enumerate() {
        // SAFETY: `page` is the enabled hypercall page: one of our pages (identity-mapped) that
        // the hypervisor filled in; reading it has no side effects.
        *b = unsafe { core::ptr::read_volatile(page.add(i)) };
    }
    log::info!(
        "hv: hypercall page at {:#x} msr={:#x} code={:02x}{:02x}{:02x}{:02x}",
        page as u64,
        hv.read_reg(SynReg::Hypercall).unwrap_or(0),
        code[0],
        code[1],
        code[2],
        code[3]
    );
}

#[cfg(not(target_arch = "x86_64"))]
fn log_hypercall_page(_hv: &dyn Hypervisor) {
    log::info!("hv: no hypercall page on arm64: hypercalls are HVC #0, SMCCC function 0x46000001");
}

/// x86_64: SINT2 gets a vector when the local APIC can take it (KVM needs that for timer
/// messages, see `lapic`); interrupts stay off either way and everything is polled. No PPIs.
#[cfg(target_arch = "x86_64")]
fn synic_mode(_hv: &dyn Hypervisor) -> (SynicMode, CleanupConfig) {
    let insn = vmbus::arch::x86_64::native().instructions();
    let mode = match lapic::software_enable(insn) {
        Some(a) => {
            log::info!(
                "hv: local APIC ({}) SVR {:#x} -> {:#x}; SINT2 vector {:#x}, never taken (interrupts stay off)",
                if a.x2apic { "x2APIC" } else { "xAPIC" },
                a.svr_before,
                a.svr_after,
                SINT2_VECTOR
            );
            SynicMode::Interrupt {
                vector: SINT2_VECTOR,
            }
        }
        None => SynicMode::Polling,
    };
    (mode, CleanupConfig::default())
}

/// arm64: polling (the VMBus PPI is never taken, and the kernel never unmasks interrupts);
/// the cleanup's PPIs from SINT2 as the firmware left it and the STIMER0 PPI
/// (`session::arm64_cleanup_ppis`, which says what is unverified).
#[cfg(not(target_arch = "x86_64"))]
fn synic_mode(hv: &dyn Hypervisor) -> (SynicMode, CleanupConfig) {
    let before = hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT)).ok();
    let ppis = session::arm64_cleanup_ppis(before);
    log::info!(
        "hv: SynIC in polling mode; SINT2 before enable {:#x}; cleanup PPIs: vmbus {:?} (SINT2's vector as the firmware left it; the ACPI _CRS is not read), stimer0 {:?} (unverified)",
        before.unwrap_or(u64::MAX),
        ppis.vmbus_ppi,
        ppis.stimer_ppi
    );
    (SynicMode::Polling, ppis)
}

/// The TSC frequency measured against the hypervisor's reference time (100 ns units, ref
/// §3.4), which then decides (`crate::clock::arbitrate`): a boot-time frequency that is a
/// guess or disagrees with it by more than the tolerance loses; only `tsc_khz=` outranks it.
/// A Gen2 VM (and OpenVMM's Hyper-V chipset) has no PIT, and CPUID may not state the TSC
/// frequency: on Hyper-V the reference clock is the authority (design.md).
#[cfg(target_arch = "x86_64")]
fn calibrate_tsc(clock: &ReferenceTime<'_>) {
    use crate::arch::imp::timer;
    use crate::clock::{arbitrate, Verdict, TOLERANCE_PPM};
    use vmbus::Clock;
    const WINDOW_100NS: u64 = 100_000; // 10 ms
                                       // Three windows, the median wins: being descheduled between a reference read and its
                                       // TSC read skews one window either way.
    let mut hz3 = [0u64; 3];
    for slot in hz3.iter_mut() {
        let r0 = clock.now();
        let t0 = timer::rdtsc();
        // Bounded: a reference clock that does not move (a broken host) ends the wait.
        let mut r1 = r0;
        let mut spins = 0u32;
        while r1.wrapping_sub(r0) < WINDOW_100NS && spins < 50_000_000 {
            r1 = clock.now();
            spins += 1;
        }
        let t1 = timer::rdtsc();
        let dr = r1.wrapping_sub(r0);
        if dr < WINDOW_100NS || t1 <= t0 {
            log::warn!("hv: tsc calibration: reference time did not advance ({dr} x 100 ns)");
            return;
        }
        *slot = ((t1 - t0) as u128 * 10_000_000 / dr as u128).min(u64::MAX as u128) as u64;
    }
    hz3.sort_unstable();
    let hz = hz3[1];
    let current = timer::choice();
    let verdict = arbitrate(current, hz, TOLERANCE_PPM);
    log::info!(
        "hv: tsc calibration tsc_khz={} arch_khz={} (from {}) {}",
        hz / 1000,
        current.hz / 1000,
        current.source.name(),
        match verdict {
            Verdict::Keep => "kept",
            Verdict::Adopt(_) => "adopted",
            Verdict::KeepConfigured => "kept (tsc_khz= given; the reference disagrees)",
            Verdict::Ignore => "ignored (implausible)",
        }
    );
    if let Verdict::Adopt(c) = verdict {
        timer::set(c);
    }
}

fn init_on(hv: &'static dyn Hypervisor, id: HvIdentity) -> Option<HyperV> {
    log::info!(
        "hv: detected vendor=\"{}\" build={} version={}.{} privileges={:#x} features={:#x} hints={:#x} crash_msrs={} stimer_direct={}",
        core::str::from_utf8(&id.vendor).unwrap_or("?"),
        id.build,
        id.version_major(),
        id.version_minor(),
        id.privileges.0,
        id.features,
        id.recommendations,
        if id.crash_msrs() { "yes" } else { "no" },
        if id.stimer_direct_mode() { "yes" } else { "no" },
    );

    // Guest OS id first, then the hypercall page (ref §3.2); the vmbus crate does both (arm64:
    // the guest OS id only, through HvSetVpRegisters).
    let os_id = vmbus::GuestOsId::canary(
        env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
        env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
        env!("CARGO_PKG_VERSION_PATCH").parse().unwrap_or(0),
    );
    if let Err(e) = hv.enable_hypercalls(&PAGES, os_id) {
        log::error!("hv: enabling hypercalls failed: {e}");
        return None;
    }
    log::info!(
        "hv: guest os id {:#x} written, readback={:#x}",
        os_id.into_bits(),
        hv.read_reg(SynReg::GuestOsId).unwrap_or(0)
    );
    log_hypercall_page(hv);

    let clock = ReferenceTime::new(hv, &PAGES, &id);
    log::info!(
        "hv: reference time from {}",
        if clock.uses_tsc_page() {
            "the TSC page"
        } else {
            "TIME_REF_COUNT"
        }
    );

    #[cfg(target_arch = "x86_64")]
    calibrate_tsc(&clock);

    let (mode, ppis) = synic_mode(hv);
    let mut h = HyperV {
        s: Session::new(
            hv,
            id,
            clock,
            os_id.into_bits(),
            &PAGES,
            &SYNIC,
            &CRASH,
            ppis,
        ),
        timer_messages: 0,
        fb: None,
        fb_note: "",
        drawn: 0,
        spare_nic: None,
        ship_over_vmbus: false,
    };

    if h.s.prepare_crash_page() {
        log::info!(
            "crash: CRASH_CTL advertises NOTIFY_MSG: the crash report will carry a text page"
        );
    }
    let vp = match h.s.enable_synic(mode) {
        Ok(vp) => vp,
        Err(e) => {
            log::error!("synic: enabling failed: {e}; no VMBus");
            return Some(h);
        }
    };

    if matches!(mode, SynicMode::Interrupt { .. })
        && h.s.id.privileges.has(vmbus::Privileges::SYNTIMER)
    {
        h.check_stimer0(vp);
    }

    match h.s.connect() {
        Ok(mut c) => {
            log::info!(
                "vmbus: version {} (refused {}); message connection id {}",
                c.version(),
                versions_newer_than(c.version()),
                c.message_connection_id()
            );
            match c.request_offers(hv, &h.s.clock) {
                Ok(offers) => {
                    log::info!("vmbus: offers {}", offers.len());
                    for o in offers {
                        log::info!(
                            "vmbus: offer relid {} class {} ({}) instance {} connection_id {}",
                            o.child_relid,
                            o.if_type,
                            class_name(&o.if_type),
                            o.if_instance,
                            o.connection_id
                        );
                    }
                }
                Err(e) => log::error!("vmbus: error: requesting offers failed: {e}"),
            }
            probe_dynamic_memory(hv, &h.s.clock, &mut c);
            h.start_nic(&mut c);
            h.start_fb(&mut c);
            read_kvp(hv, &h.s.clock, &mut c);
            h.timer_messages = c.timer_messages();
            h.s.conn = Some(c);
        }
        Err(e) => log::error!("vmbus: error: connecting failed: {e}"),
    }
    log::info!(
        "hv: ready ({} pages left in the Hyper-V pool)",
        pages::left()
    );
    h.render_console();
    Some(h)
}

/// Where synthvid's VRAM goes without a GOP: `mmio_megabytes` MiB at the lowest 1 MiB-aligned
/// place in the VMBus device's MMIO windows that ACPI `_CRS` gives (read at boot by
/// `arch::x86_64::acpi`), clear of other devices' claims and below the x86 fixed chipset
/// block at 0xFEC00000 (IOAPIC, HPET, TPM, LAPIC; the direct-boot identity map ends at 4 GiB).
/// Logs the choice and why, or why there is none.
fn fb_vram_from_acpi(mmio_megabytes: u16) -> Option<devices::FbVram> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::acpi::crs;
        const BELOW: u64 = 0xfec0_0000;
        // Its error was logged ("acpi: no VMBus MMIO: ..") when it was read.
        let m = crate::arch::imp::acpi::vmbus_mmio().ok()?;
        match crs::place_vram(m, mmio_megabytes, BELOW) {
            Ok(gpa) => {
                log::info!(
                    "synthvid: VRAM at {gpa:#x} ({mmio_megabytes} MiB, the offer's mmio_megabytes) in the VMBus MMIO range from ACPI {}._CRS (no GOP)",
                    m.source
                );
                Some(devices::FbVram::VmbusMmio {
                    gpa,
                    mmio_megabytes,
                })
            }
            Err(e) => {
                log::warn!("synthvid: no GOP framebuffer, and VRAM does not fit the VMBus MMIO range from {}._CRS: {e}", m.source);
                None
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        log::warn!(
            "synthvid: no GOP framebuffer, and the arm64 kernel does not read the VMBus _CRS ({mmio_megabytes} MiB asked)"
        );
        None
    }
}

/// Opens the Dynamic Memory channel, if offered, and closes it again: GPADL_HEADER →
/// GPADL_CREATED, OPENCHANNEL → OPENCHANNEL_RESULT, CLOSECHANNEL, GPADL_TEARDOWN →
/// GPADL_TORNDOWN against the host (what a kdump-style reconnect needs for the NIC). The canary
/// does not balloon: Linux's hv_balloon closes the channel the same way when it is unloaded.
/// How long boot waits for the host's KVP pool 3 items (100 ns units): 1 s. A Hyper-V host
/// pushes them right after the negotiation; a host that has none (OpenVMM by default) costs
/// this once per boot.
const KVP_READ_LIMIT: u64 = 10_000_000;

/// Who crashed (issue 13): the host's KVP pool 3 items, read once at boot in polling mode
/// (`devices::read_kvp`, bounded by [`KVP_READ_LIMIT`]) and cached for the record
/// (`crate::identity`).
fn read_kvp(hv: &dyn Hypervisor, clock: &ReferenceTime<'_>, c: &mut Connection<'static>) {
    use crate::static_buf::static_buf;
    const BUF: usize = vmbus::ic::kvp::MAX_PACKET + 64;
    let Some(buf) = static_buf!([u8; BUF], [0; BUF]) else {
        return;
    };
    let end = clock.now().saturating_add(KVP_READ_LIMIT);
    let t0 = clock.now();
    let r = devices::read_kvp(c, hv, clock, &PAGES, buf, &mut || clock.now() > end);
    log::info!(
        "kvp: {} ({} of 4 items, negotiated {}, {} messages, {} pool 3 sets, {} malformed) in {} ms",
        r.status.describe(),
        r.items.count(),
        match r.negotiated {
            Some(n) => n.message,
            None => vmbus::ic::IcVersion::default(),
        },
        r.stats.messages,
        r.stats.pool3_sets,
        r.stats.malformed,
        clock.now().saturating_sub(t0) / 10_000
    );
    if let Some(e) = r.error {
        log::warn!("kvp: {e}");
    }
    crate::identity::KVP.set((r.status, crate::identity::kvp_fields(&r.items)));
}

fn probe_dynamic_memory(hv: &dyn Hypervisor, clock: &dyn Clock, c: &mut Connection<'static>) {
    let Some(relid) = c.find_offer(&DYNAMIC_MEMORY).map(|o| o.child_relid) else {
        return;
    };
    let opts = vmbus::OpenOptions {
        send_ring_pages: 2,
        recv_ring_pages: 2,
        ..Default::default()
    };
    let ch = match c.open_channel(hv, clock, &PAGES, relid, &opts) {
        Ok(ch) => ch,
        Err(e) => {
            log::error!("vmbus: error: opening relid {relid} (dynamic memory) failed: {e}");
            return;
        }
    };
    let gpadl = ch.gpadl().0;
    match c.close_channel(hv, clock, ch) {
        Ok(_) => log::info!(
            "vmbus: channel relid {relid} (dynamic memory) opened (gpadl={gpadl:#x} rings=2+2 pages) and closed; not used"
        ),
        Err(e) => log::error!("vmbus: error: closing relid {relid} (dynamic memory) failed: {e}"),
    }
}

impl HyperV {
    /// netvsc at boot, when offered: both driver objects are built now (the panic path must
    /// not build one), the first is brought up on the boot connection in polling mode and
    /// handed to the network (`take_boot_nic`).
    fn start_nic(&mut self, c: &mut Connection<'static>) {
        if c.find_offer(&vmbus::guid::NET).is_none() {
            return;
        }
        let (Some(nic), Some(spare)) = (
            build_nic(0, &NIC_SLOT, self.s.hv),
            build_nic(1, &SHIP_NIC_SLOT, self.s.hv),
        ) else {
            return;
        };
        let clock = &self.s.clock;
        let deadline = clock.now().saturating_add(DEVICE_TIMEOUT);
        match devices::start_nic(c, self.s.hv, clock, &PAGES, &NIC_SLOT, nic, &mut || {
            clock.now() > deadline
        }) {
            Ok(relid) => {
                log::info!(
                    "netvsc: relid {relid} up: NVSP {:#x}, mac {}, link {}, rings {}+{} pages, receive buffer {} KiB, polling mode",
                    nic.nvsp_version(),
                    mac_text(nic.mac()),
                    if nic.link_up() { "up" } else { "down" },
                    devices::NIC_RING_PAGES,
                    devices::NIC_RING_PAGES,
                    devices::NIC_RECV_BYTES / 1024
                );
                *BOOT_NIC.lock() = Some(nic);
                self.spare_nic = Some(spare);
            }
            Err(e) => log::error!("netvsc: error: bring-up failed: {e}; no synthetic NIC"),
        }
    }

    /// synthvid at boot, when offered. VRAM: the GOP framebuffer when the UEFI entry recorded
    /// one (first choice: on Gen2 the host points it at synthvid's VRAM), else the offer's
    /// `mmio_megabytes` MiB placed in the VMBus MMIO range from ACPI `_CRS` (`fb_vram_from_acpi`,
    /// as Linux's hyperv_drm does; direct boot on OpenVMM). Neither: the device stays closed
    /// and `fb_note` says why.
    fn start_fb(&mut self, c: &mut Connection<'static>) {
        let Some(mmio_mb) = c
            .find_offer(&vmbus::guid::SYNTHVID)
            .map(|o| o.mmio_megabytes)
        else {
            return;
        };
        let place = match GOP.get().copied() {
            Some(gop) => devices::FbVram::Gop(gop),
            None => match fb_vram_from_acpi(mmio_mb) {
                Some(v) => v,
                None => {
                    self.fb_note =
                        "no UEFI GOP framebuffer and no usable VMBus MMIO range in ACPI _CRS";
                    log::warn!(
                        "synthvid: offered, but not opened: {} (why: the acpi: line, or the line just above)",
                        self.fb_note
                    );
                    return;
                }
            },
        };
        let clock = &self.s.clock;
        let deadline = clock.now().saturating_add(DEVICE_TIMEOUT);
        let fb = devices::start_fb(c, self.s.hv, clock, &PAGES, &FB_SLOT, &place, &mut || {
            clock.now() > deadline
        });
        match fb {
            Ok(fb) => {
                let m = fb.mode();
                let src = place.source();
                let (base, size) = (src.gpa(), src.size());
                log::info!(
                    "synthvid: version {:#x}, {}x{} on the {} at {:#x} ({} KiB), dirt {}",
                    fb.version().unwrap_or(0),
                    m.width,
                    m.height,
                    match place {
                        devices::FbVram::Gop(_) => "GOP framebuffer",
                        devices::FbVram::VmbusMmio { .. } => "VRAM in the VMBus MMIO range",
                    },
                    base,
                    size / 1024,
                    if fb.dirt_needed() {
                        "requested"
                    } else {
                        "not requested"
                    }
                );
                // SAFETY: both sources are MMIO-backed VRAM below 4 GiB, identity-mapped
                // (va == pa): the GOP framebuffer as the firmware reported it, or the range
                // the host mapped at the GPA that VRAM_LOCATION (acked above) gave it, inside
                // the VMBus MMIO window and clear of every other device's ACPI claim. Nothing
                // else in the kernel uses it as memory.
                let vram = unsafe { Vram::new(base as *mut u8, size, base) };
                self.fb = Some((fb, vram));
            }
            Err(e) => {
                self.fb_note = "bring-up failed";
                log::error!("synthvid: error: bring-up failed: {e}");
            }
        }
    }

    /// Normal running: the newest log lines on the synthvid screen, redrawn when the log
    /// changed, then one full-screen DIRT if the host asked for DIRT.
    fn render_console(&mut self) {
        let Some((fb, vram)) = self.fb.as_ref() else {
            return;
        };
        let _ = fb.poll();
        let mut text: heapless::String<4096> = heapless::String::new();
        crate::klog::tail_into(&mut text);
        // FNV-1a over the text: redraw only when it changed.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        if hash == self.drawn {
            return;
        }
        self.drawn = hash;
        let mut con = console::Console::new(vram, fb.mode());
        if con.clear().is_err() {
            return;
        }
        let (rows, cols) = (con.rows(), con.cols());
        let lines = text.lines().count();
        for (row, line) in text.lines().skip(lines.saturating_sub(rows)).enumerate() {
            for (col, ch) in line.chars().take(cols).enumerate() {
                let _ = con.draw_char(col, row, ch);
            }
        }
        let full = Rect {
            x1: 0,
            y1: 0,
            x2: i32::MAX,
            y2: i32::MAX,
        };
        // NotRequested or an error: the host reads VRAM on its own schedule.
        let _ = fb.update(full);
    }

    /// Runs STIMER0 periodically in message mode on SINT2 and counts the expiry messages
    /// against the reference clock, then leaves it running at a slower period.
    fn check_stimer0(&mut self, vp: u32) {
        let config: StimerConfig = Stimer0::config_value(StimerMode::Message {
            sint: VMBUS_MESSAGE_SINT,
        })
        .with_periodic(true);
        // CONFIG first, then COUNT: with auto_enable the COUNT write starts it (ref §3.4);
        // in periodic mode COUNT is the period.
        let armed = self
            .s
            .hv
            .write_reg(SynReg::StimerConfig(0), config.into_bits())
            .and_then(|_| Stimer0::arm(self.s.hv, STIMER_CHECK_PERIOD));
        if let Err(e) = armed {
            log::error!("stimer0: error: arming failed: {e}");
            return;
        }
        let start = self.s.clock.now();
        let mut t = TimerTally::default();
        while t.messages <= STIMER_CHECK_INTERVALS
            && self.s.clock.now().saturating_sub(start) < STIMER_CHECK_LIMIT
        {
            let Some(m) = SYNIC.read_message(vp, VMBUS_MESSAGE_SINT) else {
                self.s.clock.relax();
                continue;
            };
            let ty = m.header.message_type;
            if ty == HVMSG_TIMER_EXPIRED {
                t.add(
                    self.s.clock.now(),
                    timer_expiration(&m.payload),
                    STIMER_CHECK_PERIOD,
                );
            } else {
                t.other += 1;
            }
            let _ = SYNIC.eom(self.s.hv, vp, VMBUS_MESSAGE_SINT, ty);
        }
        log::info!(
            "stimer0: ticks={} period_us={} elapsed_us={} expiry_span_us={} missed={} off_grid={} max_latency_us={} mode=message sint={} other_messages={}",
            t.messages.saturating_sub(1),
            STIMER_CHECK_PERIOD / 10,
            t.last_seen.saturating_sub(t.first_seen) / 10,
            t.last_exp.saturating_sub(t.first_exp) / 10,
            t.missed,
            t.off_grid,
            t.max_latency / 10,
            VMBUS_MESSAGE_SINT,
            t.other
        );
        match Stimer0::arm(self.s.hv, STIMER_RUN_PERIOD) {
            Ok(()) => log::info!(
                "stimer0: left running every {} ms (the panic path stops it)",
                STIMER_RUN_PERIOD / 10_000
            ),
            Err(e) => log::error!("stimer0: error: re-arming failed: {e}"),
        }
    }

    /// The negotiated VMBus protocol version, if connected.
    pub fn vmbus_version(&self) -> Option<(u16, u16)> {
        self.s.vmbus_version()
    }

    /// Periodic health check: drain VMBus messages (timer expiries, rescinds) and make sure
    /// the connection is still up. `Err` says what failed.
    pub fn self_check(&mut self) -> Result<(), &'static str> {
        let Some(c) = self.s.conn.as_mut() else {
            return Ok(());
        };
        for _ in 0..16 {
            match c.poll(self.s.hv, &self.s.clock) {
                None => break,
                Some(Event::Rescinded(relid)) => log::warn!("vmbus: relid {relid} rescinded"),
                Some(Event::Malformed(e)) => log::warn!("vmbus: malformed host message: {e}"),
                Some(_) => {}
            }
        }
        self.timer_messages = c.timer_messages();
        if !c.is_connected() {
            return Err("vmbus: the connection is no longer up");
        }
        self.render_console();
        Ok(())
    }

    /// The Hyper-V state as the panic path's steps work on it (`panic::HvPanic`, portable:
    /// the host tests run the same steps against `vmbus-sim`).
    pub fn panic_hv(
        &mut self,
    ) -> panic::HvPanic<
        '_,
        'static,
        ReferenceTime<'static>,
        vmbus::device::PhysRegion,
        impl vmbus::InterruptControl,
    > {
        panic::HvPanic {
            s: &mut self.s,
            fb: self.fb.as_ref(),
            fb_note: self.fb_note,
            spare_nic: &mut self.spare_nic,
            ship_slot: &SHIP_NIC_SLOT,
            pages: &PAGES,
            ship_over_vmbus: &mut self.ship_over_vmbus,
            irq: cleanup_irq(),
        }
    }
}
