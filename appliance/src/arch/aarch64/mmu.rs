//! The direct-boot identity map after boot: `boot.rs` maps GiB 0 as device and GiB 1 as
//! normal memory with 1 GiB level-1 blocks; this adds RAM above 2 GiB and high MMIO (PCIe
//! ECAM/MMIO above 4 GiB on `virt`) once the device tree is read. Descriptor format: Arm ARM
//! D8.3 (VMSAv8-64 translation table descriptors), 4 KiB granule, 40-bit VA.
//!
//! Under UEFI the firmware's identity map stays and this module is not used.

const GIB: u64 = 1 << 30;
/// VA bits of the boot map (TCR_EL1.T0SZ = 24).
const VA_LIMIT: u64 = 1 << 40;

const VALID_BLOCK: u64 = 0b01;
const VALID_TABLE: u64 = 0b11;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
/// MAIR_EL1 indices set in `boot.rs`: 0 = Device-nGnRE, 1 = Normal WB.
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const PXN_UXN: u64 = (1 << 53) | (1 << 54);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Device,
}

extern "C" {
    static mut canary_boot_l0: [u64; 512];
    static mut canary_boot_l1: [u64; 512];
    static mut canary_boot_l1_hi: [u64; 512];
}

/// Maps `[base, base + len)` (rounded out to 1 GiB) where nothing is mapped yet. Existing
/// blocks are kept: the boot map's device GiB 0 and normal GiB 1 never change. Addresses at
/// or above 1 TiB cannot be mapped (logged).
pub fn map(base: u64, len: u64, kind: Kind) {
    if len == 0 {
        return;
    }
    let end = base.saturating_add(len);
    if end > VA_LIMIT {
        log::warn!("mmu: {base:#x}+{len:#x} lies beyond the 1 TiB identity map");
    }
    let first = base / GIB;
    let last = (end.min(VA_LIMIT) - 1) / GIB;
    let mut changed = false;
    // SAFETY: one CPU, interrupts masked; the tables are the live TTBR0 tables, and only
    // invalid entries become valid (no break-before-make needed).
    unsafe {
        let l0 = &mut *core::ptr::addr_of_mut!(canary_boot_l0);
        for g in first..=last {
            let (l1, i) = if g < 512 {
                (&mut *core::ptr::addr_of_mut!(canary_boot_l1), g as usize)
            } else {
                let hi = &mut *core::ptr::addr_of_mut!(canary_boot_l1_hi);
                if l0[1] & VALID_TABLE != VALID_TABLE {
                    l0[1] = hi.as_ptr() as u64 | VALID_TABLE;
                }
                (hi, g as usize - 512)
            };
            if l1[i] & 1 != 0 {
                continue;
            }
            let pa = g * GIB;
            l1[i] = match kind {
                Kind::Normal => pa | VALID_BLOCK | AF | SH_INNER | ATTR_NORMAL,
                Kind::Device => pa | VALID_BLOCK | AF | ATTR_DEVICE | PXN_UXN,
            };
            changed = true;
        }
        if changed {
            use aarch64_cpu::asm::barrier;
            barrier::dsb(barrier::ISHST);
            // aarch64-cpu has no TLB maintenance instructions.
            core::arch::asm!("tlbi vmalle1", options(nostack));
            barrier::dsb(barrier::ISH);
            barrier::isb(barrier::SY);
        }
    }
}
