//! PL011 UART (Arm PrimeCell UART (PL011) TRM DDI 0183): data register UARTDR at 0x00, flag
//! register UARTFR at 0x18 (TXFF = bit 5), control register UARTCR at 0x30 (UARTEN bit 0,
//! TXE bit 8). QEMU `virt` has it at 0x0900_0000 (`hw/arm/virt.c` VIRT_UART); the device
//! tree's `arm,pl011` node overrides that. The firmware (or QEMU's reset state) has set the
//! baud rate: only make sure the UART and its transmitter are on.
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// 0: no console known yet (UEFI before the configuration table was read: writes are
/// dropped rather than sent to an address that may be nothing on this machine).
static BASE: AtomicUsize = AtomicUsize::new(if cfg!(target_os = "none") {
    0x0900_0000
} else {
    0
});
/// Whether the UART has the PL011 control register (the SBSA generic UART has not).
static HAS_CR: AtomicBool = AtomicBool::new(true);

const DR: usize = 0x00;
const FR: usize = 0x18;
const CR: usize = 0x30;
const FR_TXFF: u32 = 1 << 5;
const CR_UARTEN: u32 = 1 << 0;
const CR_TXE: u32 = 1 << 8;

/// Uses the PL011 (or SBSA generic UART, `has_cr` false) at `base`, from the device tree or
/// the ACPI SPCR table.
pub fn set_base(base: usize, has_cr: bool) {
    HAS_CR.store(has_cr, Ordering::Relaxed);
    BASE.store(base, Ordering::Relaxed);
}

#[cfg(target_os = "uefi")]
pub fn base() -> usize {
    BASE.load(Ordering::Relaxed)
}

pub fn init() {
    #[cfg(target_os = "uefi")]
    super::uefi_discover();
    let b = BASE.load(Ordering::Relaxed);
    if b == 0 || !HAS_CR.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: PL011 control register, device memory in the identity map.
    unsafe {
        let cr = core::ptr::read_volatile((b + CR) as *const u32);
        if cr & (CR_UARTEN | CR_TXE) != CR_UARTEN | CR_TXE {
            core::ptr::write_volatile((b + CR) as *mut u32, cr | CR_UARTEN | CR_TXE);
        }
    }
}

pub fn write(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

fn put(c: u8) {
    let b = BASE.load(Ordering::Relaxed);
    if b == 0 {
        return;
    }
    // SAFETY: PL011 flag and data registers. Bounded wait: a stuck FIFO drops the byte.
    unsafe {
        let mut spins = 0u32;
        while core::ptr::read_volatile((b + FR) as *const u32) & FR_TXFF != 0 && spins < 100_000 {
            spins += 1;
        }
        core::ptr::write_volatile((b + DR) as *mut u32, c as u32);
    }
}
