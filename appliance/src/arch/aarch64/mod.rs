//! arm64: direct boot on QEMU `virt` (`boot.rs`, `direct.rs`) and UEFI (through
//! `crate::uefi_entry`, with [`uefi_device_tree`]), PL011 console, generic-timer clock, PL031
//! reference clock, exception vectors (EL1; EL2 when UEFI firmware leaves us there), PSCI,
//! the virtio-net transport (virtio-mmio, else virtio-pci behind the generic ECAM bridge),
//! GIC PPI disable for the Hyper-V cleanup (`gic.rs`). The machine is learnt from the device tree; under UEFI without
//! one, from ACPI (SPCR console, FADT PSCI conduit, OEM ID); QEMU `virt`'s fixed addresses
//! are assumed only for QEMU without a device tree.
//!
//! Hyper-V arm64 describes the machine with ACPI only: the canary takes its console from SPCR
//! and PSCI from the FADT there, probes no virtio-mmio and reads no PL031 (the NIC is netvsc,
//! `crate::hyperv`). That path is not testable here (QEMU's ACPI mode stands in for it).

#[cfg(target_os = "uefi")]
mod acpi;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod direct;
pub mod exceptions;
pub mod fdt;
pub mod gic;
#[cfg(target_os = "none")]
pub mod mmu;
mod pci;
pub mod serial;
pub mod timer;

pub use exceptions::install as install_exceptions;

use crate::sync::Once;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use fdt::{Facts, PsciMethod, Reg};

/// QEMU `virt` memory map (QEMU `hw/arm/virt.c`, `base_memmap`): PL031 RTC, and 32
/// virtio-mmio transports of 0x200 bytes from 0x0a00_0000. Used when there is no DTB.
const VIRT_RTC: usize = 0x0901_0000;
const VIRT_MMIO: u64 = 0x0a00_0000;
const VIRT_MMIO_SIZE: u64 = 0x200;
const VIRT_MMIO_COUNT: u64 = 32;

/// What the device tree said (set once at boot).
static FACTS: Once<Facts<'static>> = Once::new();
static DT_ADDR: AtomicUsize = AtomicUsize::new(0);
static PSCI_SMC: AtomicBool = AtomicBool::new(false);
/// Whether QEMU `virt`'s fixed map may be assumed because nothing describes the machine: a
/// direct boot (QEMU's `-kernel`) that found no device tree, or UEFI with QEMU's ACPI OEM ID
/// (on Hyper-V arm64 nothing lives at those addresses).
static QEMU_VIRT: AtomicBool = AtomicBool::new(cfg!(target_os = "none"));
static RTC: AtomicUsize = AtomicUsize::new(if cfg!(target_os = "none") {
    VIRT_RTC
} else {
    0
});

/// Reads the device tree at `addr` and applies what it says: console, reference clock, PSCI
/// conduit (used later: virtio-mmio transports, memory). `None` if there is no valid DTB.
///
/// # Safety
/// `addr` must be readable (8 bytes, and the whole blob if it has the FDT magic) and the blob
/// must stay in place and unchanged.
pub unsafe fn use_device_tree(addr: usize) -> Option<&'static Facts<'static>> {
    // SAFETY: forwarded from the caller.
    let dt = unsafe { fdt::Fdt::from_addr(addr) }.ok()?;
    let f = dt.facts().ok()?;
    if let Some(u) = f.pl011 {
        serial::set_base(u.base as usize, true);
    }
    // The device tree is the whole truth: no fixed-address fallbacks beside it.
    QEMU_VIRT.store(false, Ordering::Relaxed);
    RTC.store(f.pl031.map_or(0, |r| r.base as usize), Ordering::Relaxed);
    PSCI_SMC.store(f.psci == Some(PsciMethod::Smc), Ordering::Relaxed);
    if let Some((v, d, r)) = f.gic {
        gic::set(match (v, r) {
            (3, Some(r)) => gic::Gic::V3 {
                gicd: d.base,
                gicr: r.base,
                gicr_len: r.len,
            },
            _ => gic::Gic::V2 { gicd: d.base },
        });
    }
    DT_ADDR.store(addr, Ordering::Relaxed);
    FACTS.set(f);
    FACTS.get()
}

/// UEFI: learns the machine from the configuration table, once, while boot services run
/// (the console's first use calls it): the device tree (EFI_DTB_TABLE_GUID
/// b1b621d5-f19c-41a5-830b-d9152c69aae0, UEFI spec 2.10 section 4.6 / Linux
/// `include/linux/efi.h` DEVICE_TREE_GUID) when the firmware offers one (AAVMF with
/// `acpi=off`), else ACPI (AAVMF's default, Hyper-V arm64): the SPCR console and the OEM ID.
#[cfg(target_os = "uefi")]
fn uefi_discover() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    const DTB_GUID: uefi::Guid = uefi::guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");
    let find = |g: uefi::Guid| {
        uefi::system::with_config_table(|t| {
            t.iter().find(|e| e.guid == g).map(|e| e.address as usize)
        })
    };
    if let Some(addr) = find(DTB_GUID) {
        // SAFETY: the firmware's identity map covers the table it installed, and it stays.
        if unsafe { use_device_tree(addr) }.is_some() {
            return;
        }
    }
    let Some(rsdp) = find(uefi::table::cfg::ConfigTableEntry::ACPI2_GUID) else {
        return;
    };
    // SAFETY: the RSDP from the configuration table; ACPI tables are identity-mapped.
    let Some(a) = (unsafe { acpi::read(rsdp as u64) }) else {
        return;
    };
    if let Some((ty, base)) = a.console {
        if matches!(
            ty,
            acpi::SPCR_PL011 | acpi::SPCR_SBSA | acpi::SPCR_SBSA_32BIT
        ) {
            // The SBSA generic UART has no control register: leave it as firmware set it.
            serial::set_base(base as usize, ty == acpi::SPCR_PL011);
        }
    }
    if let Some(hvc) = a.psci_hvc {
        PSCI_SMC.store(!hvc, Ordering::Relaxed);
    }
    // QEMU's ACPI tables carry OEM ID "BOCHS " (QEMU `include/hw/acpi/aml-build.h`,
    // ACPI_BUILD_APPNAME6).
    if &a.oem_id == b"BOCHS " {
        QEMU_VIRT.store(true, Ordering::Relaxed);
        RTC.store(VIRT_RTC, Ordering::Relaxed);
    }
    ACPI_ECAM.store(a.ecam.unwrap_or(0), Ordering::Relaxed);
    if let Some(acpi::MadtGic {
        version,
        gicd,
        gicr,
    }) = a.gic
    {
        // Version 0: "not specified", ask the distributor (GICD_PIDR2.ArchRev, bits 7:4 at
        // 0xFFE8; GIC architecture specification 12.9.30).
        let version = match version {
            0 => {
                // SAFETY: the distributor the MADT names, identity-mapped by the firmware.
                let pidr2 =
                    unsafe { core::ptr::read_volatile((gicd + 0xffe8) as usize as *const u32) };
                ((pidr2 >> 4) & 0xf) as u8
            }
            v => v,
        };
        gic::set(match (version, gicr) {
            (3 | 4, Some((gicr, gicr_len))) => gic::Gic::V3 {
                gicd,
                gicr,
                gicr_len,
            },
            _ => gic::Gic::V2 { gicd },
        });
    }
    if let Some(id) = a.hypervisor_id {
        let _ = ACPI_HYPERVISOR_ID.set(id);
    }
    let _ = ACPI_OEM.set(a.oem_id);
}

#[cfg(target_os = "uefi")]
static ACPI_HYPERVISOR_ID: Once<[u8; 8]> = Once::new();

/// The ACPI FADT's Hypervisor Vendor Identity (UEFI boots with ACPI: "MsHyperV" on Hyper-V
/// arm64), for Hyper-V detection on hosts that predate the SMCCC vendor-hyp UID
/// (`vmbus/API.md`). `None` on a direct boot or without the field.
#[allow(dead_code)] // for crate::hyperv's arm64 path
pub fn acpi_hypervisor_id() -> Option<[u8; 8]> {
    #[cfg(target_os = "uefi")]
    return ACPI_HYPERVISOR_ID.get().copied();
    #[cfg(not(target_os = "uefi"))]
    None
}

/// UEFI without a device tree: the ECAM of PCI segment 0 from ACPI MCFG (0: none).
static ACPI_ECAM: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[cfg(target_os = "uefi")]
static ACPI_OEM: Once<[u8; 6]> = Once::new();

/// UEFI: the device tree's address, if the firmware gave one (see `uefi_discover`).
#[cfg(target_os = "uefi")]
pub fn uefi_device_tree() -> Option<usize> {
    uefi_discover();
    Some(DT_ADDR.load(Ordering::Relaxed)).filter(|&a| a != 0)
}

/// Logs what the firmware described (once the logger is up), and checks the GIC's PPI
/// disable path that the Hyper-V cleanup uses.
fn log_device_tree() {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if LOGGED.swap(true, Ordering::Relaxed) {
        return;
    }
    log_platform();
    match gic::get() {
        None => log::info!("gic: none described"),
        Some(g) => match gic::self_check() {
            Ok(via) => log::info!("gic: {g:x?}, PPI disable checked through the {via:x?}"),
            Err(e) => log::warn!("gic: {g:x?}: {e}"),
        },
    }
}

fn log_platform() {
    match FACTS.get() {
        Some(f) => log::info!(
            "device tree at {:#x}: {} memory ranges, {} virtio-mmio slots, PL011 {:#x}, PL031 {:#x}, PSCI {:?}, ECAM {:#x}",
            DT_ADDR.load(Ordering::Relaxed),
            f.memory.len(),
            f.virtio_mmio.len(),
            f.pl011.map_or(0, |r| r.base),
            f.pl031.map_or(0, |r| r.base),
            f.psci,
            f.ecam.map_or(0, |r| r.base)
        ),
        None => {
            #[cfg(target_os = "uefi")]
            if let Some(oem) = ACPI_OEM.get() {
                log::info!(
                    "ACPI (OEM {:?}), console {:#x}, PSCI via {}{}",
                    core::str::from_utf8(oem).unwrap_or("?"),
                    serial::base(),
                    if PSCI_SMC.load(Ordering::Relaxed) { "SMC" } else { "HVC" },
                    if QEMU_VIRT.load(Ordering::Relaxed) {
                        ", QEMU virt: assuming its virtio-mmio and PL031 addresses"
                    } else {
                        ""
                    }
                );
                return;
            }
            if QEMU_VIRT.load(Ordering::Relaxed) {
                log::warn!("no device tree: assuming QEMU virt's memory map");
            } else {
                log::warn!("no device tree and no ACPI: no virtio-mmio, no RTC");
            }
        }
    }
}

pub fn interrupts_off() {
    use aarch64_cpu::registers::{Writeable, DAIF};
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
}

/// The canary is fully polled: interrupts stay masked. For the arch contract.
#[allow(dead_code)]
pub fn interrupts_enabled() -> bool {
    use aarch64_cpu::registers::{Readable, DAIF};
    !DAIF.is_set(DAIF::I)
}

pub fn halt() -> ! {
    interrupts_off();
    loop {
        // Waits for an interrupt that never comes (masked).
        aarch64_cpu::asm::wfi();
    }
}

/// An SMCCC fast call (Arm DEN0028 "SMC Calling Convention") through the conduit the device
/// tree's PSCI node names (HVC on QEMU `virt` without EL2; SMC with `virtualization=on`).
/// Returns x0..x3.
///
/// Only call IDs the conduit is known to implement: on QEMU TCG without EL2 an HVC that is
/// not a PSCI call is an undefined instruction.
fn smccc(fid: u32, a1: u64) -> [u64; 4] {
    let (r0, r1, r2, r3): (u64, u64, u64, u64);
    // SAFETY: a firmware/hypervisor call; it does not touch our memory.
    unsafe {
        // At EL2 an HVC would trap to ourselves: firmware is reached with SMC.
        if PSCI_SMC.load(Ordering::Relaxed) || current_el() == 2 {
            core::arch::asm!("smc #0", inout("x0") fid as u64 => r0, inout("x1") a1 => r1, inout("x2") 0u64 => r2, inout("x3") 0u64 => r3, options(nomem, nostack))
        } else {
            core::arch::asm!("hvc #0", inout("x0") fid as u64 => r0, inout("x1") a1 => r1, inout("x2") 0u64 => r2, inout("x3") 0u64 => r3, options(nomem, nostack))
        }
    }
    [r0, r1, r2, r3]
}

/// The exception level we run at (1; 2 when UEFI firmware started us at EL2).
pub fn current_el() -> u64 {
    use aarch64_cpu::registers::{CurrentEL, Readable};
    CurrentEL.read(CurrentEL::EL)
}

/// PSCI function IDs (Arm DEN0022 "Power State Coordination Interface", table 5.1).
const PSCI_VERSION: u32 = 0x8400_0000;
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
const PSCI_FEATURES: u32 = 0x8400_000a;
/// SMCCC_VERSION (DEN0028 7.2) and the vendor-specific hypervisor service Call UID query
/// (DEN0028 6.2; Linux `include/linux/arm-smccc.h` ARM_SMCCC_VENDOR_HYP_CALL_UID_FUNC_ID).
const SMCCC_VERSION: u32 = 0x8000_0000;
const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
/// Hyper-V's UID (Linux `arch/arm64/include/asm/mshyperv.h`,
/// ARM_SMCCC_VENDOR_HYP_UID_HYPERV_REG_0..3) and KVM's (`include/linux/arm-smccc.h`,
/// ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_0..3).
const UID_HYPERV: [u32; 4] = [0x4d32_ba58, 0xcd24_4764, 0x8eef_6c75, 0x1659_7024];
const UID_KVM: [u32; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

pub fn reset() -> ! {
    interrupts_off();
    smccc(PSCI_SYSTEM_RESET, 0);
    halt()
}

pub fn poweroff() -> ! {
    interrupts_off();
    smccc(PSCI_SYSTEM_OFF, 0);
    halt()
}

/// QEMU semihosting SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit (0x20026) and status
/// `2 * code + 1` (the statuses x86_64's isa-debug-exit gives). Arm "Semihosting for AArch32
/// and AArch64" (DUI 0003), SYS_EXIT; the AArch64 trap is `hlt #0xf000`. Only called with
/// `qemu_exit=1`: without `-semihosting` `hlt` is an undefined instruction (the fault path's
/// depth limit then halts).
pub fn qemu_exit(code: u8) {
    let block: [u64; 2] = [0x20026, (code as u64) << 1 | 1];
    // SAFETY: semihosting call; QEMU reads the block and ends the VM.
    unsafe {
        core::arch::asm!("hlt #0xf000", inout("x0") 0x18u64 => _, in("x1") block.as_ptr(), options(nostack))
    };
}

/// The stack pointer (SP).
#[inline(always)]
pub fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads SP.
    unsafe {
        core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// The main stack (direct boot: `boot.rs`'s, above its guard page; UEFI: `uefi_stack`'s,
/// which `uefi_entry` switches to) and the trap handlers' (SP_EL1), as `(name, lo, hi)`.
pub fn stack_regions() -> [(&'static str, usize, usize); 2] {
    #[cfg(target_os = "none")]
    let main = {
        let (lo, hi) = super::boot_stack();
        ("boot", lo, hi)
    };
    #[cfg(target_os = "uefi")]
    let main = {
        let (lo, hi) = uefi_stack::range();
        ("uefi", lo, hi)
    };
    let (lo, hi) = exceptions::exc_stack_range();
    [main, ("exc", lo, hi)]
}

/// arm64 UEFI: the canary's own main stack (the firmware's is of unknown size; x86_64 has
/// the same switch in `x86_64/uefi_stack.rs`, with a guard page this one does not have:
/// AAVMF's page tables are not ours to split).
#[cfg(target_os = "uefi")]
pub mod uefi_stack {
    const SIZE: usize = 256 * 1024;
    #[repr(C, align(16))]
    struct Stack([u8; SIZE]);
    static mut STACK: Stack = Stack([0; SIZE]);
    static mut BOOT_INFO: Option<crate::arch::BootInfo> = None;

    pub fn range() -> (usize, usize) {
        let lo = core::ptr::addr_of!(STACK) as usize;
        (lo, lo + SIZE)
    }

    extern "C" fn on_new_stack() -> ! {
        // SAFETY: written once by `enter` before the switch; only read here.
        match unsafe { (*core::ptr::addr_of_mut!(BOOT_INFO)).take() } {
            Some(bi) => crate::kmain(bi),
            None => super::halt(),
        }
    }

    /// After ExitBootServices: onto the static stack, then `kmain`.
    pub fn enter(bi: crate::arch::BootInfo) -> ! {
        // SAFETY: boot, one CPU, interrupts off; the static stack is used by nothing else;
        // the switch never returns, so nothing on the old stack is needed again.
        unsafe {
            super::interrupts_off();
            *core::ptr::addr_of_mut!(BOOT_INFO) = Some(bi);
            let top = range().1;
            core::arch::asm!(
                "mov sp, {top}",
                "mov x29, xzr",
                "mov x30, xzr",
                "b {f}",
                top = in(reg) top,
                f = sym on_new_stack,
                options(noreturn)
            );
        }
    }
}

/// The caller's frame pointer (x29). AAPCS64 frame records are `[x29] = caller's x29,
/// [x29 + 8] = x30 (return address)`.
#[inline(always)]
pub fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: reads x29.
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    fp
}

/// PSTATE as far as EL1 can read it, in SPSR layout: NZCV, DAIF, CurrentEL, SPSel.
fn pstate() -> u64 {
    use aarch64_cpu::registers::{CurrentEL, Readable, SPSel, DAIF};
    let nzcv: u64;
    // SAFETY: reads the condition flags (aarch64-cpu has no NZCV register).
    unsafe {
        core::arch::asm!("mrs {}, nzcv", out(reg) nzcv, options(nomem, nostack, preserves_flags))
    };
    nzcv | DAIF.get() | CurrentEL.get() | (SPSel.get() & 1)
}

/// Snapshot at the call site in `capture::record::Registers` arm64 order: x0..x30, PSTATE
/// (SPSR layout), ESR_EL1, FAR_EL1 (of the last exception, if any); pc, sp, fp.
#[inline(always)]
pub fn snapshot_registers(out: &mut crate::panic_path::RegSnapshot) {
    let mut g = [0u64; 31];
    // SAFETY: stores registers into a local array.
    unsafe {
        core::arch::asm!(
            "stp x0, x1, [{p}, #0]", "stp x2, x3, [{p}, #16]", "stp x4, x5, [{p}, #32]",
            "stp x6, x7, [{p}, #48]", "stp x8, x9, [{p}, #64]", "stp x10, x11, [{p}, #80]",
            "stp x12, x13, [{p}, #96]", "stp x14, x15, [{p}, #112]", "stp x16, x17, [{p}, #128]",
            "stp x18, x19, [{p}, #144]", "stp x20, x21, [{p}, #160]", "stp x22, x23, [{p}, #176]",
            "stp x24, x25, [{p}, #192]", "stp x26, x27, [{p}, #208]", "stp x28, x29, [{p}, #224]",
            "str x30, [{p}, #240]",
            p = in(reg) g.as_mut_ptr(), options(nostack, preserves_flags)
        );
    }
    use aarch64_cpu::registers::{Readable, ESR_EL1, FAR_EL1};
    let (esr, far) = (ESR_EL1.get(), FAR_EL1.get());
    let (sp, pc): (u64, u64);
    // SAFETY: reads SP and the PC.
    unsafe {
        core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
        core::arch::asm!("adr {}, .", out(reg) pc, options(nomem, nostack, preserves_flags));
    }
    out.gprs.clear();
    for v in g.iter().chain([pstate(), esr, far].iter()) {
        let _ = out.gprs.push(*v);
    }
    out.pc = pc;
    out.sp = sp;
    out.fp = g[29];
}

/// Makes sure an MMIO range is mapped as device memory (direct boot: our tables; UEFI: the
/// firmware mapped its devices).
pub fn map_mmio(base: u64, len: u64) {
    #[cfg(target_os = "none")]
    mmu::map(base, len, mmu::Kind::Device);
    #[cfg(not(target_os = "none"))]
    let _ = (base, len);
}

/// The virtio-mmio transports: from the device tree, or without one QEMU `virt`'s 32 slots
/// (only on QEMU: see `QEMU_VIRT`). Sorted by
/// address (QEMU lists them in the DTB from the top down).
fn virtio_mmio_slots() -> heapless::Vec<Reg, 32> {
    let mut v: heapless::Vec<Reg, 32> = match FACTS.get() {
        Some(f) => f.virtio_mmio.clone(),
        None if !QEMU_VIRT.load(Ordering::Relaxed) => heapless::Vec::new(),
        None => (0..VIRT_MMIO_COUNT)
            .map(|i| Reg {
                base: VIRT_MMIO + i * VIRT_MMIO_SIZE,
                len: VIRT_MMIO_SIZE,
            })
            .collect(),
    };
    v.sort_unstable_by_key(|r| r.base);
    v
}

/// The first virtio-net device: on a virtio-mmio transport (QEMU `-device virtio-net-device`),
/// else on PCI bus 0 behind the generic ECAM host bridge (`-device virtio-net-pci`, the
/// default NIC of `-M virt -nic user`).
pub fn nic_transport() -> Option<virtio_drivers::transport::SomeTransport<'static>> {
    use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
    use virtio_drivers::transport::{DeviceType, Transport};
    log_device_tree();
    for r in virtio_mmio_slots() {
        // The header is 0x100 bytes; a slot smaller than that is not a virtio-mmio transport.
        if r.len < 0x100 || !r.base.is_multiple_of(4) || r.base > usize::MAX as u64 {
            continue;
        }
        map_mmio(r.base, r.len);
        let Some(hdr) = core::ptr::NonNull::new(r.base as usize as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the device tree (or QEMU virt's fixed map) says a virtio-mmio transport of
        // `len` bytes is there, mapped as device memory just above; it lives forever.
        match unsafe { MmioTransport::new(hdr, r.len as usize) } {
            Ok(t) if t.device_type() == DeviceType::Network => {
                log::info!(
                    "virtio-net at virtio-mmio {:#x} (version {:?})",
                    r.base,
                    t.version()
                );
                return Some(t.into());
            }
            _ => {}
        }
    }
    let (ecam, window) = match FACTS.get() {
        Some(f) => (f.ecam, f.pci_mem32),
        None => {
            let base = ACPI_ECAM.load(Ordering::Relaxed);
            // Bus 0's 1 MiB is all the canary touches.
            ((base != 0).then_some(Reg { base, len: 1 << 20 }), None)
        }
    };
    let e = ecam?;
    map_mmio(e.base, e.len);
    pci::nic(e.base, e.len, window)
}

/// The hypervisor's SMCCC identity: if the conduit speaks SMCCC >= 1.1 (asked through
/// PSCI_FEATURES, which every PSCI >= 1.0 conduit answers), the vendor hypervisor Call UID.
/// Without SMCCC 1.1 nothing else is asked (QEMU TCG's HVC handles PSCI calls only).
pub fn hypervisor_info() -> capture::record::HypervisorInfo {
    let mut hi = capture::record::HypervisorInfo::default();
    if current_el() == 2 {
        return hi; // we are the most privileged software below firmware: no hypervisor
    }
    if acpi_hypervisor_id() == Some(*b"MsHyperV") {
        hi.present = true;
        let _ = hi.vendor.push_str("Microsoft Hv");
        return hi;
    }
    let psci = smccc(PSCI_VERSION, 0)[0] as u32;
    if psci >> 16 < 1 {
        return hi; // PSCI 0.x: no PSCI_FEATURES
    }
    if (smccc(PSCI_FEATURES, SMCCC_VERSION as u64)[0] as i32) < 0 {
        return hi;
    }
    let v = smccc(SMCCC_VERSION, 0)[0] as i32;
    if v < 0x1_0001 {
        return hi;
    }
    let r = smccc(VENDOR_HYP_CALL_UID, 0);
    let uid = [r[0] as u32, r[1] as u32, r[2] as u32, r[3] as u32];
    // SMCCC: an unknown function returns NOT_SUPPORTED (-1) in w0.
    if r[0] as u32 == u32::MAX {
        return hi;
    }
    hi.present = true;
    let _ = hi.vendor.push_str(match uid {
        UID_HYPERV => "Microsoft Hv",
        UID_KVM => "KVMKVMKVM",
        _ => "unknown (SMCCC UID)",
    });
    hi
}

/// Seconds from the PL031 RTC (RTCDR at offset 0, Arm PL031 TRM DDI 0224): the reference for
/// the timer sanity check. None without an RTC.
pub fn reference_seconds() -> Option<u32> {
    let base = RTC.load(Ordering::Relaxed);
    if base == 0 {
        return None;
    }
    // SAFETY: PL031 data register (from the device tree or QEMU virt), device memory.
    let v = unsafe { core::ptr::read_volatile(base as *const u32) };
    (v != 0).then_some(v)
}

/// Some entropy for the boot id: RNDR when the CPU has FEAT_RNG (ID_AA64ISAR0_EL1.RNDR,
/// bits 63:60), mixed with the counter.
pub fn entropy() -> u64 {
    let mut e = timer::counter();
    // `ArmRng::new` checks ID_AA64ISAR0_EL1.RNDR; `rndr` is None when RNDR had no number.
    if let Some(v) = aarch64_cpu::asm::random::ArmRng::new().and_then(|r| r.rndr()) {
        e ^= v;
    }
    e ^ timer::counter().rotate_left(29)
}
