//! Direct boot on QEMU `virt`: find the device tree, learn the machine from it, enter kmain.
use crate::arch::{BootInfo, MemRegion};
use capture::record::BootMode;

/// Base of RAM on QEMU `virt` (`hw/arm/virt.c`, VIRT_MEM): where QEMU puts the DTB for an ELF
/// kernel (see `link/aarch64.ld`).
const VIRT_RAM_BASE: usize = 0x4000_0000;

/// The Rust side of `_start` (`boot.rs`): MMU and caches on, .bss zeroed, on the boot stack.
/// `x0` is the DTB address a Linux-protocol loader passes (0 from QEMU for an ELF).
pub extern "C" fn direct_entry(x0: usize) -> ! {
    let mut bi = BootInfo::new(BootMode::DirectAarch64);
    for cand in [x0, VIRT_RAM_BASE] {
        // Only RAM in the boot map (GiB 1) is probed: a wild x0 must not fault.
        if !(0x4000_0000..0x8000_0000 - 8).contains(&cand) {
            continue;
        }
        // SAFETY: `cand` is in mapped RAM; the reader checks the magic and every offset
        // against the header's size, which it caps; the loader leaves the DTB alone and the
        // canary never writes below its own image.
        if let Some(f) = unsafe { super::use_device_tree(cand) } {
            bi.dtb = Some(cand);
            bi.cmdline = f.bootargs.unwrap_or("");
            for m in &f.memory {
                bi.add_region(MemRegion {
                    base: m.base,
                    len: m.len,
                    usable: true,
                });
                super::mmu::map(m.base, m.len, super::mmu::Kind::Normal);
            }
            if let Some(e) = f.ecam {
                super::mmu::map(e.base, e.len, super::mmu::Kind::Device);
            }
            break;
        }
    }
    crate::kmain(bi)
}
