//! IDT with the 32 architectural exception vectors; every one enters the panic path.
use crate::panic_path::{FaultInfo, RegSnapshot};
use core::arch::global_asm;

// One 16-byte stub per vector (vector n at canary_isr_base + 16 * n), so no table of
// absolute addresses is needed (the same code links as ELF and as a relocatable PE).
global_asm!(
    r#"
    .text
    .balign 16
    .global canary_isr_base
    canary_isr_base:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign 16
        .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
        .else
        pushq $0
        .endif
        pushq $\n
        jmp canary_isr_common
    .endr
    .balign 16
    canary_isr_common:
        push %rax
        push %rbx
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %rbp
        push %r8
        push %r9
        push %r10
        push %r11
        push %r12
        push %r13
        push %r14
        push %r15
        mov %rsp, %rdi
        and $-16, %rsp
        call {trap}
    1:  hlt
        jmp 1b
"#,
    trap = sym trap,
    options(att_syntax)
);

// Every vector from 32 up (the idle loop's APIC timer, anything spurious): EOI and return.
// Only reachable inside `idle::idle`'s `sti; hlt; cli`. Caller-saved registers are kept; the
// CPU aligned RSP to 16 before its 5-word frame, so 9 pushes leave it aligned for the call.
global_asm!(
    r#"
    .text
    .balign 16
    .global canary_wake_isr
    canary_wake_isr:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %r8
        push %r9
        push %r10
        push %r11
        call {eoi}
        pop %r11
        pop %r10
        pop %r9
        pop %r8
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        iretq
"#,
    eoi = sym super::idle::eoi,
    options(att_syntax)
);

fn wake_isr() -> u64 {
    let a: u64;
    // SAFETY: computes the address of a code label.
    unsafe {
        core::arch::asm!("lea {}, [rip + canary_wake_isr]", out(reg) a, options(nomem, nostack, preserves_flags))
    };
    a
}

fn isr_base() -> u64 {
    let base: u64;
    // SAFETY: computes the address of a code label.
    unsafe {
        core::arch::asm!("lea {}, [rip + canary_isr_base]", out(reg) base, options(nomem, nostack, preserves_flags))
    };
    base
}

/// What the stubs leave on the stack (lowest address first).
#[repr(C)]
struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Intel SDM vol. 3A, table 6-1.
const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "BOUND range exceeded",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack-segment fault",
    "general protection fault",
    "page fault",
    "reserved 15",
    "x87 FPU error",
    "alignment check",
    "machine check",
    "SIMD exception",
    "virtualization exception",
    "control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "hypervisor injection",
    "VMM communication",
    "security exception",
    "reserved 31",
];

// sysv64 explicitly: on the UEFI target `extern "C"` is the Microsoft x64 ABI (first argument in
// RCX), but the stub passes the frame in RDI.
extern "sysv64" fn trap(f: &TrapFrame) -> ! {
    let (cr0, cr2, cr3, cr4): (u64, u64, u64, u64);
    // SAFETY: reads control registers at CPL0.
    unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
    }
    let mut regs = RegSnapshot::default();
    for v in [
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12,
        f.r13, f.r14, f.r15, f.rflags, f.cs, f.ss, cr0, cr2, cr3, cr4,
    ] {
        let _ = regs.gprs.push(v);
    }
    regs.pc = f.rip;
    regs.sp = f.rsp;
    regs.fp = f.rbp;
    crate::panic_path::on_fault(FaultInfo {
        name: NAMES[(f.vector & 31) as usize],
        code: f.vector | (f.error << 8),
        addr: if f.vector == 14 { cr2 } else { f.rip },
        regs,
    })
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

pub fn install() {
    super::cpu::install_gdt_tss();
    #[cfg(target_os = "none")]
    super::cpu::guard_boot_stack();
    let cs = super::cpu::CODE_SEL;
    // SAFETY: the table is filled once at boot, before interrupts could use it (they are
    // off); `lidt` points the CPU at a static that lives forever.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        let base = isr_base();
        let wake = wake_isr();
        for v in 0..256usize {
            let h = if v < 32 { base + 16 * v as u64 } else { wake };
            // #DF and #PF on IST1 (the fault stack): a stack overflow still gets a handler.
            let ist: u64 = if v == 8 || v == 14 { 1 } else { 0 };
            let lo = (h & 0xffff)
                | (cs as u64) << 16
                | ist << 32
                | 0x8e00u64 << 32
                | ((h >> 16) & 0xffff) << 48;
            idt.0[v * 2] = lo;
            idt.0[v * 2 + 1] = h >> 32;
        }
        let ptr = DescPtr {
            limit: (256 * 16 - 1) as u16,
            base: idt.0.as_ptr() as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}

#[repr(C, packed)]
struct DescPtr {
    limit: u16,
    base: u64,
}

/// Loads an empty IDT and raises an exception: the CPU shuts down (reset on PCs).
///
/// # Safety
/// Ends the machine.
pub unsafe fn triple_fault() -> ! {
    let ptr = DescPtr { limit: 0, base: 0 };
    // SAFETY: deliberate: no valid IDT, then an interrupt → triple fault.
    unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &ptr, options(noreturn)) };
}
