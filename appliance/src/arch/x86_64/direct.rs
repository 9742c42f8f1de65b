//! Direct boot: the boot structures of PVH and the Linux 64-bit boot protocol.
use crate::arch::{BootInfo, MemRegion};
use capture::record::BootMode;

/// The Rust side of the direct-boot entries in `boot.rs`.
/// `kind` 1: PVH, `info` = hvm_start_info; `kind` 2: Linux boot protocol, `info` = boot_params.
pub extern "C" fn direct_entry(info: u64, kind: u64) -> ! {
    let mut bi = BootInfo::new(if kind == 1 {
        BootMode::Pvh
    } else {
        BootMode::LinuxBoot
    });
    // SAFETY: the boot loader passed the address of its boot structure, identity-mapped in
    // the low 4 GiB; we only read it.
    unsafe {
        if kind == 1 {
            parse_pvh(info as usize, &mut bi)
        } else {
            parse_boot_params(info as usize, &mut bi)
        }
    };
    crate::kmain(bi)
}

/// Reads a NUL-terminated string the loader left in identity-mapped memory.
///
/// # Safety
/// `p` must be 0 or point to readable memory holding a NUL-terminated string.
unsafe fn cstr(p: usize, max: usize) -> &'static str {
    if p == 0 {
        return "";
    }
    let mut n = 0;
    // SAFETY: the caller promises a NUL-terminated string at `p`.
    while n < max && unsafe { core::ptr::read_volatile((p + n) as *const u8) } != 0 {
        n += 1;
    }
    // SAFETY: `n` bytes at `p` were just read.
    let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, n) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// `struct hvm_start_info` (Xen `public/arch-x86/hvm/start_info.h`): magic 0x336ec578 at 0,
/// version at 4, cmdline_paddr at 24, rsdp_paddr at 32, memmap_paddr at 40 and
/// memmap_entries at 48 (version >= 1); memmap entries are {addr u64, size u64, type u32,
/// reserved u32}, type 1 = RAM.
///
/// # Safety
/// `p` must point to a hvm_start_info in identity-mapped memory.
unsafe fn parse_pvh(p: usize, bi: &mut BootInfo) {
    // SAFETY (the readers below): `p` points to the loader's hvm_start_info (caller's
    // contract); offsets stay inside the structure's documented size.
    let rd32 = |o: usize| unsafe { core::ptr::read_unaligned((p + o) as *const u32) };
    let rd64 = |o: usize| unsafe { core::ptr::read_unaligned((p + o) as *const u64) };
    if p == 0 || rd32(0) != 0x336e_c578 {
        return;
    }
    // SAFETY: cmdline_paddr is a NUL-terminated string or 0.
    bi.cmdline = unsafe { cstr(rd64(24) as usize, 4096) };
    bi.rsdp = Some(rd64(32)).filter(|&a| a != 0);
    if rd32(4) >= 1 {
        let map = rd64(40) as usize;
        for i in 0..rd32(48) as usize {
            let e = map + i * 24;
            // SAFETY: the loader says the table has memmap_entries entries.
            let (addr, size, ty) = unsafe {
                (
                    core::ptr::read_unaligned(e as *const u64),
                    core::ptr::read_unaligned((e + 8) as *const u64),
                    core::ptr::read_unaligned((e + 16) as *const u32),
                )
            };
            bi.add_region(MemRegion {
                base: addr,
                len: size,
                usable: ty == 1,
            });
        }
    }
}

/// Linux `struct boot_params` (`arch/x86/include/uapi/asm/bootparam.h`): e820_entries u8 at
/// 0x1e8, setup header cmd_line_ptr u32 at 0x228, ext_cmd_line_ptr u32 at 0x0c8,
/// e820_table at 0x2d0 (20-byte {addr, size, type} entries, at most 128), acpi_rsdp_addr at
/// 0x070.
///
/// # Safety
/// `p` must point to a boot_params in identity-mapped memory.
unsafe fn parse_boot_params(p: usize, bi: &mut BootInfo) {
    if p == 0 {
        return;
    }
    // SAFETY (the readers below): `p` points to the loader's 4 KiB boot_params (caller's
    // contract); every offset used is inside it.
    let rd8 = |o: usize| unsafe { core::ptr::read_unaligned((p + o) as *const u8) };
    let rd32 = |o: usize| unsafe { core::ptr::read_unaligned((p + o) as *const u32) };
    let rd64 = |o: usize| unsafe { core::ptr::read_unaligned((p + o) as *const u64) };
    let cmd = rd32(0x228) as u64 | ((rd32(0x0c8) as u64) << 32);
    // SAFETY: cmd_line_ptr is a NUL-terminated string or 0.
    bi.cmdline = unsafe { cstr(cmd as usize, 4096) };
    bi.rsdp = Some(rd64(0x070)).filter(|&a| a != 0);
    let n = (rd8(0x1e8) as usize).min(128);
    for i in 0..n {
        let e = 0x2d0 + i * 20;
        bi.add_region(MemRegion {
            base: rd64(e),
            len: rd64(e + 8),
            usable: rd32(e + 16) == 1,
        });
    }
}
