//! x86_64: PVH / Linux-boot direct entry, 16550 serial, TSC timer, IDT, port-I/O PCI config.

pub mod acpi;
#[cfg(target_os = "none")]
mod boot;
mod cpu;
#[cfg(target_os = "none")]
mod direct;
pub mod exceptions;
pub mod idle;
mod port;
pub mod serial;
pub mod timer;
#[cfg(target_os = "uefi")]
pub mod uefi_stack;
#[cfg(target_os = "uefi")]
pub mod unwind;

pub use exceptions::install as install_exceptions;
use port::{inb, inl, outb, outl};

pub fn interrupts_off() {
    ::x86_64::instructions::interrupts::disable();
}

/// The canary is fully polled: interrupts stay off. This exists for the arch contract.
#[allow(dead_code)]
pub fn interrupts_enabled() -> bool {
    ::x86_64::instructions::interrupts::are_enabled()
}

pub fn halt() -> ! {
    interrupts_off();
    loop {
        // With interrupts off this parks the CPU (an NMI returns to the loop).
        ::x86_64::instructions::hlt();
    }
}

/// QEMU `isa-debug-exit` at iobase 0xf4: QEMU exits with status (value << 1) | 1.
/// On a machine without the device the write goes nowhere.
pub fn qemu_exit(code: u8) {
    // SAFETY: a byte write to an otherwise unused legacy port.
    unsafe { outb(0xf4, code) };
}

/// Reset: the FADT reset register, then the PCI reset control register 0xcf9 (full reset),
/// the keyboard controller pulse (0x64 <- 0xfe), and a triple fault.
pub fn reset() -> ! {
    interrupts_off();
    acpi::reset();
    // SAFETY: documented reset mechanisms of PC-compatible machines.
    unsafe {
        outb(0xcf9, 0x06);
        outb(0x64, 0xfe);
        exceptions::triple_fault();
    }
}

/// Power off: ACPI S5 as the FADT and DSDT say; if that returns, halt.
pub fn poweroff() -> ! {
    interrupts_off();
    acpi::poweroff();
    halt()
}

/// CMOS RTC seconds since midnight (a reference clock independent of the TSC), or None if
/// the RTC reads as absent (0xff).
pub fn rtc_seconds() -> Option<u32> {
    let read = |reg: u8| {
        // SAFETY: CMOS index/data ports; NMI-disable bit set while indexing.
        unsafe {
            outb(0x70, 0x80 | reg);
            inb(0x71)
        }
    };
    let status_b = read(0x0b);
    if status_b == 0xff {
        return None;
    }
    let bcd = status_b & 0x04 == 0;
    let conv = |v: u8| {
        if bcd {
            (v >> 4) as u32 * 10 + (v & 0xf) as u32
        } else {
            v as u32
        }
    };
    loop {
        // Wait out an update in progress, read twice until stable.
        while read(0x0a) & 0x80 != 0 {}
        let (s, m, h) = (read(0x00), read(0x02), read(0x04));
        if (s, m, h) == (read(0x00), read(0x02), read(0x04)) {
            let h24 = if status_b & 0x02 == 0 && h & 0x80 != 0 {
                (conv(h & 0x7f) % 12) + 12
            } else {
                conv(h & 0x7f)
            };
            return Some(h24 * 3600 + conv(m) * 60 + conv(s));
        }
    }
}

/// PCI configuration mechanism #1 (ports 0xcf8/0xcfc), for virtio-drivers.
pub struct PortCam;

impl virtio_drivers::transport::pci::bus::ConfigurationAccess for PortCam {
    fn read_word(&self, df: virtio_drivers::transport::pci::bus::DeviceFunction, off: u8) -> u32 {
        // SAFETY: configuration mechanism #1 ports.
        unsafe {
            outl(0xcf8, cf8(df, off));
            inl(0xcfc)
        }
    }
    fn write_word(
        &mut self,
        df: virtio_drivers::transport::pci::bus::DeviceFunction,
        off: u8,
        data: u32,
    ) {
        // SAFETY: configuration mechanism #1 ports.
        unsafe {
            outl(0xcf8, cf8(df, off));
            outl(0xcfc, data)
        }
    }
    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

fn cf8(df: virtio_drivers::transport::pci::bus::DeviceFunction, off: u8) -> u32 {
    0x8000_0000
        | (df.bus as u32) << 16
        | (df.device as u32) << 11
        | (df.function as u32) << 8
        | (off as u32 & 0xfc)
}

pub fn pci_root() -> virtio_drivers::transport::pci::bus::PciRoot<PortCam> {
    virtio_drivers::transport::pci::bus::PciRoot::new(PortCam)
}

/// The stack pointer (RSP).
#[inline(always)]
pub fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads RSP.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// The main stack (direct boot: `boot.rs`'s, above its guard page; UEFI: `uefi_stack`'s) and
/// IST1, the fault stack of #PF and #DF (`cpu.rs`), as `(name, lo, hi)`.
pub fn stack_regions() -> [(&'static str, usize, usize); 2] {
    #[cfg(target_os = "none")]
    let main = {
        let (lo, hi) = super::boot_stack();
        ("boot", lo, hi)
    };
    #[cfg(target_os = "uefi")]
    let main = {
        let (lo, hi) = uefi_stack::stack_range();
        ("uefi", lo as usize, hi as usize)
    };
    let (lo, hi) = cpu::fault_stack_range();
    [main, ("fault", lo, hi)]
}

/// The caller's frame pointer (RBP).
#[inline(always)]
pub fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: reads RBP.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    fp
}

/// Snapshot of the registers at the call site, in `capture::record::Registers` order: rax rbx
/// rcx rdx rsi rdi rbp rsp r8..r15 rflags cs ss cr0 cr2 cr3 cr4; pc, sp, fp.
#[inline(always)]
pub fn snapshot_registers(out: &mut crate::panic_path::RegSnapshot) {
    let mut g = [0u64; 16];
    // SAFETY: stores registers into a local array; no other side effects.
    unsafe {
        core::arch::asm!(
            "mov [{p}], rax", "mov [{p}+8], rbx", "mov [{p}+16], rcx", "mov [{p}+24], rdx",
            "mov [{p}+32], rsi", "mov [{p}+40], rdi", "mov [{p}+48], rbp", "mov [{p}+56], rsp",
            "mov [{p}+64], r8", "mov [{p}+72], r9", "mov [{p}+80], r10", "mov [{p}+88], r11",
            "mov [{p}+96], r12", "mov [{p}+104], r13", "mov [{p}+112], r14", "mov [{p}+120], r15",
            p = in(reg) g.as_mut_ptr(), options(nostack, preserves_flags)
        );
    }
    let rip = ::x86_64::instructions::read_rip().as_u64();
    let (cr0, cr2, cr3, cr4) = control_registers();
    let rflags = ::x86_64::registers::rflags::read_raw();
    let (cs, ss) = segments();
    out.gprs.clear();
    for v in g
        .iter()
        .chain([rflags, cs as u64, ss as u64, cr0, cr2, cr3, cr4].iter())
    {
        let _ = out.gprs.push(*v);
    }
    out.pc = rip;
    out.sp = g[7];
    out.fp = g[6];
}

/// CR0, CR2, CR3 (frame and flag bits as loaded), CR4, for the crash record.
pub fn control_registers() -> (u64, u64, u64, u64) {
    use ::x86_64::registers::control::{Cr0, Cr2, Cr3, Cr4};
    let (frame, flags) = Cr3::read_raw();
    let cr3 = frame.start_address().as_u64() | u64::from(flags);
    (Cr0::read_raw(), Cr2::read_raw(), cr3, Cr4::read_raw())
}

/// The CS and SS selectors.
pub fn segments() -> (u16, u16) {
    use ::x86_64::instructions::segmentation::{Segment, CS, SS};
    (CS::get_reg().0, SS::get_reg().0)
}

/// Fills in the region list for a UEFI boot is done by the uefi entry; this is for the
/// contract: the arch's PCI view of the machine is ports, nothing to map.
pub fn map_mmio(_base: u64, _len: u64) {}

/// Where unassigned memory BARs go. Minimal firmware (qboot) and some VMMs leave 64-bit
/// BARs unassigned. The window 0xc000_0000..0xfec0_0000 is inside the 32-bit PCI hole of
/// QEMU's pc and q35 machines with up to 3 GiB of RAM (q35 puts MMCONFIG at 0xb000_0000; the
/// IOAPIC starts at 0xfec0_0000), identity-mapped by the boot page tables, and below 4 GiB
/// (room for 32-bit BARs too).
const BAR_WINDOW: core::ops::Range<u64> = 0xc000_0000..0xfec0_0000;

/// The first virtio-net device on PCI bus 0 (QEMU `virtio-net-pci`).
pub fn nic_transport() -> Option<virtio_drivers::transport::SomeTransport<'static>> {
    use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
    use virtio_drivers::transport::DeviceType;
    let mut root = pci_root();
    for bus in 0..=1u8 {
        for (df, info) in root.enumerate_bus(bus) {
            if virtio_device_type(&info) != Some(DeviceType::Network) {
                continue;
            }
            log::info!("virtio-net at PCI {df}");
            crate::pci::assign_bars(&mut root, df, BAR_WINDOW);
            // Memory + I/O decoding and bus mastering (firmware may have turned DMA off
            // again at ExitBootServices).
            use virtio_drivers::transport::pci::bus::Command;
            root.set_command(
                df,
                Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
            );
            match PciTransport::new::<crate::dma::Hal, _>(&mut root, df) {
                Ok(t) => return Some(t.into()),
                Err(e) => log::warn!("virtio-net at {df}: {e:?}"),
            }
        }
    }
    None
}

/// The hypervisor's CPUID identity (leaf 1 ECX bit 31, leaf 0x40000000 vendor signature).
pub fn hypervisor_info() -> capture::record::HypervisorInfo {
    use core::arch::x86_64::__cpuid;
    let mut hi = capture::record::HypervisorInfo::default();
    // SAFETY: cpuid is always available in long mode.
    let l1 = __cpuid(1);
    if l1.ecx & (1 << 31) == 0 {
        return hi;
    }
    hi.present = true;
    let l = __cpuid(0x4000_0000);
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&l.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&l.ecx.to_le_bytes());
    v[8..12].copy_from_slice(&l.edx.to_le_bytes());
    let s = core::str::from_utf8(&v).unwrap_or("?");
    let _ = hi.vendor.push_str(s.trim_end_matches('\0'));
    hi
}

/// Whether the counter frequency is known (else the timer self-check has nothing to check).
pub fn timer_calibrated() -> bool {
    timer::calibrated()
}

/// Seconds from the CMOS RTC: the reference for the timer sanity check.
pub fn reference_seconds() -> Option<u32> {
    rtc_seconds()
}

/// Some entropy for the boot id: RDRAND when the CPU has it, else TSC jitter.
pub fn entropy() -> u64 {
    // `RdRand::new` checks CPUID for RDRAND; `get_u64` is None when the CPU had no number.
    match ::x86_64::instructions::random::RdRand::new().and_then(|r| r.get_u64()) {
        Some(v) => v ^ timer::rdtsc(),
        None => timer::rdtsc(),
    }
}
