//! The canary unikernel. On a hosted target this builds as a stub (so the workspace checks and
//! the portable modules' unit tests run); the kernel builds with `--target x86_64-unknown-none`,
//! `aarch64-unknown-none`, `x86_64-unknown-uefi` or `aarch64-unknown-uefi` (see
//! `scripts/qemu-run`).
#![cfg_attr(kernel, no_std, no_main)]
#![cfg_attr(not(kernel), allow(dead_code))]

/// The aarch64 ACPI and device-tree readers are portable: their unit tests run on the host.
#[cfg(all(test, not(kernel)))]
#[path = "arch/aarch64/acpi.rs"]
mod aarch64_acpi;
#[cfg(all(test, not(kernel)))]
#[path = "arch/aarch64/fdt.rs"]
mod aarch64_fdt;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod acpi;
/// Which counter frequency the deadlines run on (portable rules; unit-tested on the host).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod clock;
mod config;
/// The UEFI x86_64 unwinder is portable: its tests run on the host.
#[cfg(all(test, not(kernel)))]
#[path = "arch/x86_64/unwind.rs"]
mod x86_64_unwind;
/// The portable halves of the Hyper-V code (the device glue, and the arch-neutral session:
/// UNLOAD, cleanup, reconnect, crash registers, arm64 detection): their tests run on the host
/// against `vmbus-sim`. Same module paths as in the kernel (`crate::hyperv::{devices, session}`).
#[cfg(all(test, not(kernel)))]
mod hyperv {
    pub mod devices;
    pub mod panic;
    pub mod panic_screen;
    #[cfg(test)]
    mod panic_screen_tests;
    pub mod session;
}
/// Who crashed: SMBIOS and KVP identity, cached at boot for the record (portable).
#[cfg_attr(not(kernel), allow(dead_code))]
mod identity;
/// The running image's build id and load base for the crash record (parsers host-tested).
#[cfg_attr(not(kernel), allow(dead_code))]
mod image_id;
mod logring;
/// The seven steps of the panic path, generic over the machine (portable; run on the host
/// against `vmbus-sim` by `hyperv::panic`'s tests).
mod panic_steps;
/// PCI BAR placement: the rule is arch-neutral (its unit tests run on the host).
mod pci;
/// The record sealed at the screen: the bytes shown as a QR code and shipped (portable).
mod seal;
/// SMBIOS System Information (parser host-tested against hostile tables).
#[cfg_attr(not(kernel), allow(dead_code))]
mod smbios;
/// Stack painting and high-water marks (portable; unit-tested on the host).
#[cfg_attr(not(kernel), allow(dead_code))]
mod stack;
/// `static_buf!` (each buffer handed out once); its tests run on the host.
mod static_buf;
mod sync;

#[cfg(kernel)]
mod arch;
#[cfg(kernel)]
mod canary;
#[cfg(kernel)]
mod dma;
#[cfg(kernel)]
mod heap;
#[cfg(kernel)]
mod hyperv;
#[cfg(kernel)]
mod klog;
#[cfg(kernel)]
mod net;
#[cfg(kernel)]
mod panic_path;
#[cfg(kernel)]
mod platform;
#[cfg(all(kernel, target_os = "uefi"))]
mod uefi_entry;

#[cfg(kernel)]
pub use platform::kmain;

#[cfg(not(kernel))]
fn main() {
    eprintln!(
        "appliance is a kernel: build it with scripts/qemu-run or --target x86_64-unknown-none"
    );
}
