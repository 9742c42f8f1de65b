//! What each architecture provides. Selected here, in one place, by `cfg(target_arch)`.
//!
//! Every arch module (`x86_64/`, `aarch64/`) provides:
//! - boot entries that build a [`BootInfo`] and call `crate::kmain(BootInfo)` (direct boot;
//!   UEFI boots go through `crate::uefi_entry`, which ends in the same `kmain`);
//! - `serial::{init, write}`: the console (16550 on x86_64, PL011 on arm64);
//! - `timer::{init, now_us}`: monotonic microseconds since boot;
//! - `reference_seconds()`: an independent clock for the timer sanity self-check;
//! - `interrupts_off()`, `interrupts_enabled()`: the canary is fully polled, so interrupts stay
//!   off; the panic path turns them off again anyway;
//! - `install_exceptions()`: every CPU exception enters `crate::panic_path::on_fault(..)`;
//! - `snapshot_registers(&mut RegSnapshot)`, `frame_pointer()`: for the crash record (the
//!   frame-pointer walk itself is common: both ABIs keep `[fp] = caller fp, [fp+8] = return
//!   address`);
//! - `halt()`, `reset()`, `poweroff()`, `qemu_exit(code)`;
//! - `nic_transport()`: the virtio transport of the first virtio-net device (PCI on x86_64,
//!   MMIO on arm64);
//! - `hypervisor_info()`: CPUID/SMCCC identity for the record when Hyper-V is not there;
//! - `stacks()`: the stacks the canary owns (for painting, high-water marks and the bounds
//!   of the backtrace walk), and `stack_pointer()`.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use self::aarch64 as imp;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64 as imp;

pub use imp::{
    frame_pointer, halt, install_exceptions, interrupts_off, poweroff, qemu_exit, reset,
    snapshot_registers, stack_pointer,
};

/// The stacks the canary owns, for painting, high-water marks and the bounds of the backtrace
/// walk: each arch's main stack and trap stack (`stack_regions`).
pub fn stacks() -> heapless::Vec<crate::stack::Region, 3> {
    imp::stack_regions()
        .into_iter()
        .map(|(name, lo, hi)| crate::stack::Region { name, lo, hi })
        .collect()
}

/// Direct boot: the boot stack of either arch's `boot.rs`, above its guard page.
#[cfg(target_os = "none")]
fn boot_stack() -> (usize, usize) {
    unsafe extern "C" {
        static canary_stack_guard: u8;
        static canary_boot_stack_top: u8;
    }
    let lo = core::ptr::addr_of!(canary_stack_guard) as usize + 4096;
    (lo, core::ptr::addr_of!(canary_boot_stack_top) as usize)
}

use capture::record::BootMode;

/// One memory-map entry.
#[derive(Clone, Copy, Debug)]
pub struct MemRegion {
    pub base: u64,
    pub len: u64,
    pub usable: bool,
}

/// What the boot path learned about the machine.
pub struct BootInfo {
    pub mode: BootMode,
    pub cmdline: &'static str,
    pub regions: heapless::Vec<MemRegion, 128>,
    /// Regions that did not fit `regions`.
    pub regions_dropped: usize,
    pub rsdp: Option<u64>,
    pub dtb: Option<usize>,
}

impl BootInfo {
    pub fn new(mode: BootMode) -> Self {
        BootInfo {
            mode,
            cmdline: "",
            regions: heapless::Vec::new(),
            regions_dropped: 0,
            rsdp: None,
            dtb: None,
        }
    }

    pub fn add_region(&mut self, r: MemRegion) {
        if self.regions.push(r).is_err() {
            self.regions_dropped += 1;
        }
    }

    pub fn usable_bytes(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.usable)
            .map(|r| r.len)
            .sum()
    }
}

pub fn serial_write(b: &[u8]) {
    imp::serial::write(b)
}

pub fn now_us() -> u64 {
    imp::timer::now_us()
}

/// Whether the counter frequency is known (x86_64 can fall back to a guess when it has
/// neither a PIT nor a CPUID frequency; the arm64 generic timer states its own).
pub fn timer_calibrated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::timer_calibrated()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Sets up halting between polls (x86_64: the local APIC timer). False: idling spins.
pub fn idle_init() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::idle::init()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Waits about `us` microseconds (halted if `idle_init` succeeded, else one spin).
pub fn idle(us: u64) {
    #[cfg(target_arch = "x86_64")]
    imp::idle::idle(us);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = us;
        core::hint::spin_loop();
    }
}
