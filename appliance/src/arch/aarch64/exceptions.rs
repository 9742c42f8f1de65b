//! Exception vectors (Arm ARM D1.10.2 "Exception vectors"): 16 entries of 0x80 bytes at
//! VBAR_EL1 (2 KiB aligned; VBAR_EL2 and the _EL2 syndrome registers when a UEFI firmware
//! started us at EL2, as AAVMF does under QEMU `virtualization=on`; direct boot always drops
//! to EL1): {current EL with SP_EL0, current EL with SP_ELx, lower EL
//! AArch64, lower EL AArch32} x {synchronous, IRQ, FIQ, SError}. Every entry saves x0-x30,
//! ELR/SPSR/ESR/FAR_EL1 and SP_EL0 and enters `crate::panic_path::on_fault`.
//!
//! Stacks: `install` moves normal running onto SP_EL0 (EL1t) and gives SP_EL1 a stack of
//! its own, so a fault from a broken or overflowed kernel stack is still handled; a fault
//! inside the handler (EL1h) stays on SP_EL1 below the first frame.
use crate::panic_path::{FaultInfo, RegSnapshot};
use core::arch::global_asm;

/// Bytes each vector pushes: x0-x30, ELR, SPSR, ESR, FAR, SP_EL0 (36 words, 16-aligned).
const FRAME: usize = 288;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME);

global_asm!(
    r#"
    .macro CANARY_VEC kind
    .balign 0x80
    sub sp, sp, #288
    stp x0, x1, [sp, #0]
    mov x1, #\kind
    b canary_vec_common
    .endm

    .text
    .balign 2048
    .global canary_vectors
canary_vectors:
    CANARY_VEC 0
    CANARY_VEC 1
    CANARY_VEC 2
    CANARY_VEC 3
    CANARY_VEC 4
    CANARY_VEC 5
    CANARY_VEC 6
    CANARY_VEC 7
    CANARY_VEC 8
    CANARY_VEC 9
    CANARY_VEC 10
    CANARY_VEC 11
    CANARY_VEC 12
    CANARY_VEC 13
    CANARY_VEC 14
    CANARY_VEC 15
    .balign 0x80
canary_vec_common:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    mrs x2, CurrentEL
    cmp x2, #8
    b.eq 3f
    mrs x2, elr_el1
    stp x30, x2, [sp, #240]
    mrs x2, spsr_el1
    mrs x3, esr_el1
    stp x2, x3, [sp, #256]
    mrs x2, far_el1
    b 4f
3:  /* running at EL2 (UEFI firmware left us there: QEMU virtualization=on) */
    mrs x2, elr_el2
    stp x30, x2, [sp, #240]
    mrs x2, spsr_el2
    mrs x3, esr_el2
    stp x2, x3, [sp, #256]
    mrs x2, far_el2
4:  mrs x3, sp_el0
    stp x2, x3, [sp, #272]
    mov x0, sp
    mov x29, xzr
    bl {trap}
1:  wfi
    b 1b
"#,
    trap = sym trap,
);

/// What the vectors leave on the stack (lowest address first).
#[repr(C)]
struct TrapFrame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    esr: u64,
    far: u64,
    sp_el0: u64,
}

/// ESR_EL1.EC names (Arm ARM D17.2.40, "ESR_EL1, Exception Syndrome Register (EL1)").
fn ec_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "undefined instruction",
        0x01 => "WFI/WFE trapped",
        0x07 => "FP/SIMD access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access trapped",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "synchronous exception",
    }
}

/// ECs for which FAR_EL1 holds the faulting address.
fn far_valid(ec: u64) -> bool {
    matches!(ec, 0x20 | 0x21 | 0x22 | 0x24 | 0x25 | 0x34 | 0x35)
}

// No depth counter here: the panic path's guard (`capture::panic::PanicGuard`) decides for
// both arches: first entry, nested entry, then terminal (the configured panic action at once).
extern "C" fn trap(f: &TrapFrame, kind: u64) -> ! {
    let ec = (f.esr >> 26) & 0x3f;
    let name = match kind & 3 {
        0 => ec_name(ec),
        1 => "IRQ",
        2 => "FIQ",
        _ => "SError",
    };
    // Group 0: taken from EL1 running on SP_EL0 (normal running after `install`); group 1:
    // from EL1 on SP_EL1 (before `install`, or inside a handler): the frame sits on it.
    let sp = if kind / 4 == 0 {
        f.sp_el0
    } else {
        f as *const TrapFrame as u64 + FRAME as u64
    };
    let mut regs = RegSnapshot::default();
    for &v in f.x.iter().chain([f.spsr, f.esr, f.far].iter()) {
        let _ = regs.gprs.push(v);
    }
    regs.pc = f.elr;
    regs.sp = sp;
    regs.fp = f.x[29];
    crate::panic_path::on_fault(FaultInfo {
        name,
        code: f.esr,
        addr: if kind & 3 == 0 && far_valid(ec) {
            f.far
        } else {
            f.elr
        },
        regs,
    })
}

/// The handlers' stack: a fault's panic path runs on it to the end, ship step included.
const EXC_STACK: usize = 128 * 1024;
#[repr(C, align(16))]
struct Stack([u8; EXC_STACK]);
static mut EXC_STACK_MEM: Stack = Stack([0; EXC_STACK]);

/// The handlers' stack (SP_EL1): `[lo, hi)`.
pub fn exc_stack_range() -> (usize, usize) {
    let lo = core::ptr::addr_of!(EXC_STACK_MEM) as usize;
    (lo, lo + EXC_STACK)
}

/// Points VBAR_EL1 at the vectors and moves normal running onto SP_EL0, leaving SP_EL1 to
/// the handlers.
pub fn install() {
    let top = core::ptr::addr_of_mut!(EXC_STACK_MEM) as usize + EXC_STACK;
    // SAFETY: VBAR_EL1 gets the 2 KiB-aligned table above. The stack switch: SP_EL0 takes the
    // current SP, so after `msr spsel, #0` SP has the same value (the compiler's view of SP
    // does not change); SP_EL1 becomes the top of a static used only by the handlers.
    unsafe {
        core::arch::asm!(
            "adrp {v}, canary_vectors",
            "add {v}, {v}, :lo12:canary_vectors",
            "mrs {t}, CurrentEL",
            "cmp {t}, #8",
            "b.eq 1f",
            "msr vbar_el1, {v}",
            "b 3f",
            "1:",
            "msr vbar_el2, {v}",
            "3:",
            "isb",
            "mrs {t}, spsel",
            "cbz {t}, 2f",
            "mov {t}, sp",
            "msr sp_el0, {t}",
            "mov sp, {top}",
            "msr spsel, #0",
            "isb",
            "2:",
            v = out(reg) _,
            t = out(reg) _,
            top = in(reg) top,
        );
    }
}
