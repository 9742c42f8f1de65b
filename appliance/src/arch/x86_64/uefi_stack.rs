//! UEFI boot: leave the firmware's stack (nothing below it catches an overflow) for our own,
//! with an unmapped guard page under it, like direct boot. The firmware's page tables stay;
//! only the entry for the guard page changes (a large page is split first). Page-table
//! formats: Intel SDM vol. 3A 4.5 (4-level paging: PS bit 7 in PDPTE/PDE, 4 KiB PTEs).
use crate::arch::BootInfo;

const STACK: usize = 256 * 1024;

#[repr(C, align(4096))]
struct GuardedStack([u8; 4096 + STACK]);
static mut UEFI_STACK: GuardedStack = GuardedStack([0; 4096 + STACK]);

#[repr(C, align(4096))]
struct Table([u64; 512]);
/// Tables for splitting a 1 GiB and a 2 MiB page on the way to the guard page.
static mut SPLIT_PD: Table = Table([0; 512]);
static mut SPLIT_PT: Table = Table([0; 512]);

static mut BOOT_INFO: Option<BootInfo> = None;

const P: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Replaces the large page `*entry` maps by a table of 512 entries of the next size down,
/// with the same attributes (the PAT bit moves from bit 12 to bit 7 for 4 KiB entries).
///
/// # Safety
/// `entry` is a present large-page entry in the live page tables; `table` is unused.
unsafe fn split(entry: &mut u64, table: &mut Table, child_size: u64, to_4k: bool) {
    let big = *entry;
    let base = big & ADDR & !(child_size * 512 - 1);
    let mut attrs = big & !ADDR & !PS;
    if to_4k {
        // PAT (bit 12 in a large entry) becomes bit 7 in a PTE.
        if big & (1 << 12) != 0 {
            attrs = (attrs & !(1 << 12)) | (1 << 7);
        }
    }
    attrs &= !(1 << 12);
    for (i, e) in table.0.iter_mut().enumerate() {
        *e = (base + i as u64 * child_size) | attrs | if to_4k { 0 } else { PS };
    }
    // Table entries: present, writable, user as the big entry had it; no PS.
    *entry = table.0.as_ptr() as u64 | (big & 0x7);
}

/// Unmaps the 4 KiB page at `va` in the firmware's (identity-mapped) page tables.
///
/// # Safety
/// Boot, one CPU, interrupts off; nothing uses the page at `va`.
unsafe fn unmap(va: u64) -> bool {
    use ::x86_64::registers::control::{Cr0, Cr0Flags, Cr3};
    let pml4_base = Cr3::read_raw().0.start_address().as_u64();
    let cr0 = Cr0::read_raw();
    // SAFETY: clears only CR0.WP (firmware may map its page tables read-only: lift write
    // protection meanwhile); at CPL0 that lets this code write read-only pages, nothing else.
    unsafe { Cr0::write_raw(cr0 & !Cr0Flags::WRITE_PROTECT.bits()) };
    let idx = |level: u32| ((va >> (12 + 9 * level)) & 511) as usize;
    // SAFETY: the tables are identity-mapped physical memory; each is 512 entries.
    let ok = unsafe {
        let pml4 = &mut *(pml4_base as *mut [u64; 512]);
        let e4 = &mut pml4[idx(3)];
        if *e4 & P == 0 {
            false
        } else {
            let pdpt = &mut *((*e4 & ADDR) as *mut [u64; 512]);
            let e3 = &mut pdpt[idx(2)];
            if *e3 & P == 0 {
                false
            } else {
                if *e3 & PS != 0 {
                    split(e3, &mut *core::ptr::addr_of_mut!(SPLIT_PD), 2 << 20, false);
                }
                let pd = &mut *((*e3 & ADDR) as *mut [u64; 512]);
                let e2 = &mut pd[idx(1)];
                if *e2 & P == 0 {
                    false
                } else {
                    if *e2 & PS != 0 {
                        split(e2, &mut *core::ptr::addr_of_mut!(SPLIT_PT), 4096, true);
                    }
                    let pt = &mut *((*e2 & ADDR) as *mut [u64; 512]);
                    pt[idx(0)] &= !P;
                    true
                }
            }
        }
    };
    // SAFETY: restores CR0 as it was.
    unsafe { Cr0::write_raw(cr0) };
    // Reloads CR3: the TLB forgets the entries changed above.
    ::x86_64::instructions::tlb::flush_all();
    ok
}

extern "sysv64" fn on_new_stack() -> ! {
    // SAFETY: written once by `enter` before switching; only read here.
    let bi = unsafe { (*core::ptr::addr_of_mut!(BOOT_INFO)).take() };
    match bi {
        Some(bi) => crate::kmain(bi),
        None => super::halt(),
    }
}

/// After ExitBootServices: guard page, switch stacks, `kmain`.
pub fn enter(bi: BootInfo) -> ! {
    // SAFETY: boot, one CPU, interrupts off (UEFI leaves them on: turn them off first); the
    // static stack is used by nothing else; the switch never returns.
    unsafe {
        super::interrupts_off();
        *core::ptr::addr_of_mut!(BOOT_INFO) = Some(bi);
        let base = core::ptr::addr_of_mut!(UEFI_STACK) as u64;
        let guarded = unmap(base);
        let top = base + 4096 + STACK as u64;
        if !guarded {
            crate::arch::serial_write(b"canary: UEFI stack guard page not set\n");
        }
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {f}",
            top = in(reg) top,
            f = sym on_new_stack,
            options(noreturn)
        );
    }
}

/// The canary's UEFI stack (above the guard page), for the backtrace scan.
pub fn stack_range() -> (u64, u64) {
    let base = core::ptr::addr_of!(UEFI_STACK) as u64 + 4096;
    (base, base + STACK as u64)
}

/// The executable part of our loaded image: `__ImageBase` plus the span of the sections
/// marked IMAGE_SCN_MEM_EXECUTE (PE/COFF spec: e_lfanew at 0x3c; NumberOfSections at +6 and
/// SizeOfOptionalHeader at +20 of the COFF header; 40-byte section headers after the
/// optional header with VirtualSize at 8, VirtualAddress at 12, Characteristics at 36).
/// Only code: the image's data and .bss (which hold this very stack and its guard page) are
/// not, so a stack word pointing there is never dereferenced.
fn text_range() -> (u64, u64) {
    unsafe extern "C" {
        static __ImageBase: u8;
    }
    let base = core::ptr::addr_of!(__ImageBase) as u64;
    // SAFETY: the PE headers of our own image are mapped and were checked by the firmware.
    unsafe {
        let rd16 = |a: u64| core::ptr::read_unaligned(a as *const u16) as u64;
        let rd32 = |a: u64| core::ptr::read_unaligned(a as *const u32) as u64;
        let coff = base + rd32(base + 0x3c) + 4;
        let sections = rd16(coff + 2);
        let table = coff + 20 + rd16(coff + 16);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for k in 0..sections.min(96) {
            let h = table + k * 40;
            if rd32(h + 36) & 0x2000_0000 != 0 {
                lo = lo.min(base + rd32(h + 12));
                hi = hi.max(base + rd32(h + 12) + rd32(h + 8));
            }
        }
        if lo < hi {
            (lo, hi)
        } else {
            (0, 0)
        }
    }
}

/// Whether `ret` is in our code and the bytes before it end in a call instruction (E8 rel32; FF /2 with a
/// register, [reg], disp8, disp32 or RIP-relative operand, with or without REX).
fn after_call(ret: u64, image: (u64, u64)) -> bool {
    if ret < image.0 + 7 || ret >= image.1 {
        return false;
    }
    // SAFETY: inside our own image, which is mapped.
    let b = |back: u64| unsafe { core::ptr::read_volatile((ret - back) as *const u8) };
    let is_ff2 = |at: u64| b(at) == 0xff && (b(at - 1) & 0x38) == 0x10;
    b(5) == 0xe8 || is_ff2(2) || is_ff2(3) || is_ff2(6) || (b(7) & 0xf0 == 0x40 && is_ff2(6))
}

/// Backtrace by unwinding (`unwind.rs`) from `pc` with `sp` and `fp` at it, using the image's
/// own `.pdata` (the exception directory, data directory entry 3) and reading only inside
/// the image and the canary stack holding `sp`. `None` if the image has no unwind data or the
/// walk found no caller (then the scan below is the fallback).
pub fn unwind_backtrace(
    pc: u64,
    sp: u64,
    fp: u64,
    out: &mut heapless::Vec<u64, { capture::record::BACKTRACE_CAP }>,
) -> Option<capture::record::BacktraceEnd> {
    unsafe extern "C" {
        static __ImageBase: u8;
    }
    let base = core::ptr::addr_of!(__ImageBase) as u64;
    let read_at = |limit: u32, rva: u32, buf: &mut [u8]| -> bool {
        let Some(end) = rva.checked_add(buf.len() as u32) else {
            return false;
        };
        if end > limit {
            return false;
        }
        // SAFETY: our own image is mapped from `__ImageBase` for SizeOfImage bytes (its
        // first page, the headers, before SizeOfImage is known); `end` is within that.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (base + rva as u64) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    };
    let word = |limit: u32, rva: u32| {
        let mut b = [0u8; 4];
        read_at(limit, rva, &mut b).then_some(u32::from_le_bytes(b))
    };
    // PE32+ (Microsoft PE/COFF): e_lfanew at 0x3c; optional header 24 bytes after it with
    // SizeOfImage at +56, NumberOfRvaAndSizes at +108, data directories from +112.
    let opt = word(4096, 0x3c)?.checked_add(24)?;
    let size = word(4096, opt + 56)?;
    if word(4096, opt + 108)? <= 3 {
        return None;
    }
    let pdata = (
        word(4096, opt + 112 + 3 * 8)?,
        word(4096, opt + 112 + 3 * 8 + 4)?,
    );
    if pdata.1 == 0 {
        return None;
    }
    let stacks = crate::arch::stacks();
    let region = crate::stack::holding(&stacks, sp as usize)?;
    let stack = |a: u64| {
        let a = a as usize;
        // SAFETY: an 8-aligned word inside a stack the canary owns (always mapped).
        (a.is_multiple_of(8) && a >= region.lo && a + 8 <= region.hi)
            .then(|| unsafe { core::ptr::read_volatile(a as *const u64) })
    };
    let mut image = |rva: u32, buf: &mut [u8]| read_at(size, rva, buf);
    let text = text_range();
    let is_return = |v: u64| after_call(v, text);
    let mut r = super::unwind::Reader {
        image: &mut image,
        stack: &stack,
        base,
        pdata,
        is_return: &is_return,
    };
    let before = out.len();
    let end = super::unwind::walk(&mut r, u64::from(size), pc, sp, fp, out);
    (out.len() > before).then_some(end)
}

/// Backtrace by scanning the stack: the UEFI (Microsoft x64) ABI's frame pointer does not
/// point at a [saved rbp, return address] pair, so the frame walk does not work there. Every
/// aligned word from `sp` to the top of our stack that points just after a call instruction in
/// our image is taken as a return address. Reads stay inside the stack, so this cannot fault.
pub fn scan_backtrace(sp: u64, out: &mut heapless::Vec<u64, { capture::record::BACKTRACE_CAP }>) {
    let (lo, hi) = stack_range();
    // A stack overflow leaves `sp` in the guard page: scan from the bottom of the stack then.
    let sp = if (lo - 4096..lo).contains(&sp) {
        lo
    } else {
        sp
    };
    if sp < lo || sp >= hi {
        return;
    }
    let image = text_range();
    let mut a = sp & !7;
    while a + 8 <= hi && !out.is_full() {
        // SAFETY: `a` is inside our stack, which is mapped (the guard page is below `lo`).
        let v = unsafe { core::ptr::read_volatile(a as *const u64) };
        if after_call(v, image) {
            let _ = out.push(v);
        }
        a += 8;
    }
}
