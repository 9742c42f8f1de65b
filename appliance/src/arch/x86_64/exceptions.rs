//! IDT with the 32 architectural exception vectors; every one enters the panic path.
use crate::panic_path::{FaultInfo, RegSnapshot};
use ::x86_64::structures::idt::InterruptDescriptorTable;
use ::x86_64::structures::DescriptorTablePointer;
use ::x86_64::VirtAddr;
use core::arch::global_asm;
use core::mem::MaybeUninit;

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
    let (cr0, cr2, cr3, cr4) = super::control_registers();
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

/// Uninitialised until `install`: a `new()` table has nonzero bits in every entry, so as a
/// static initialiser it would put 4 KiB of `.data` into the image; this stays in `.bss`.
static mut IDT: MaybeUninit<InterruptDescriptorTable> = MaybeUninit::uninit();

/// Fills the IDT: vector n < 32 to its stub (`canary_isr_base + 16 * n`), every vector from 32
/// up to the wake stub; #DF and #PF on IST1 (the fault stack), so a stack overflow still gets
/// a handler. The crate names the architectural vectors and leaves the reserved ones (9, 15,
/// 22-27, 31) not present: raising one is a #NP (vector 11) that names it in its error code,
/// which enters the panic path too. Then loads it (`lidt`).
pub fn install() {
    super::cpu::install_gdt_tss();
    #[cfg(target_os = "none")]
    super::cpu::guard_boot_stack();
    let stub = |v: u64| VirtAddr::new(isr_base() + 16 * v);
    // SAFETY: once at boot with interrupts off, after the GDT (the entries take the current
    // CS): nothing uses the table before `load`, and it is a static that lives forever. Each
    // address is the stub for its vector (the stubs push a zero error code exactly where the
    // CPU pushes none), or the wake stub, which returns with `iretq`; IST1 is set in the TSS.
    unsafe {
        let idt = (*core::ptr::addr_of_mut!(IDT)).write(InterruptDescriptorTable::new());
        idt.divide_error.set_handler_addr(stub(0));
        idt.debug.set_handler_addr(stub(1));
        idt.non_maskable_interrupt.set_handler_addr(stub(2));
        idt.breakpoint.set_handler_addr(stub(3));
        idt.overflow.set_handler_addr(stub(4));
        idt.bound_range_exceeded.set_handler_addr(stub(5));
        idt.invalid_opcode.set_handler_addr(stub(6));
        idt.device_not_available.set_handler_addr(stub(7));
        idt.double_fault
            .set_handler_addr(stub(8))
            .set_stack_index(super::cpu::FAULT_IST_INDEX);
        idt.invalid_tss.set_handler_addr(stub(10));
        idt.segment_not_present.set_handler_addr(stub(11));
        idt.stack_segment_fault.set_handler_addr(stub(12));
        idt.general_protection_fault.set_handler_addr(stub(13));
        idt.page_fault
            .set_handler_addr(stub(14))
            .set_stack_index(super::cpu::FAULT_IST_INDEX);
        idt.x87_floating_point.set_handler_addr(stub(16));
        idt.alignment_check.set_handler_addr(stub(17));
        idt.machine_check.set_handler_addr(stub(18));
        idt.simd_floating_point.set_handler_addr(stub(19));
        idt.virtualization.set_handler_addr(stub(20));
        idt.cp_protection_exception.set_handler_addr(stub(21));
        idt.hv_injection_exception.set_handler_addr(stub(28));
        idt.vmm_communication_exception.set_handler_addr(stub(29));
        idt.security_exception.set_handler_addr(stub(30));
        let wake = VirtAddr::new(wake_isr());
        for e in idt.slice_mut(32..) {
            e.set_handler_addr(wake);
        }
        let idt: &'static InterruptDescriptorTable = (*core::ptr::addr_of!(IDT)).assume_init_ref();
        idt.load();
    }
}

/// Loads an empty IDT and raises an exception: the CPU shuts down (reset on PCs).
///
/// # Safety
/// Ends the machine.
pub unsafe fn triple_fault() -> ! {
    let empty = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::zero(),
    };
    // SAFETY: deliberate: no valid IDT, then an interrupt → triple fault.
    unsafe { ::x86_64::instructions::tables::lidt(&empty) };
    ::x86_64::instructions::interrupts::int3();
    // Not reached: int3 without an IDT shuts the CPU down.
    super::halt()
}
