//! x86_64 direct-boot entries.
//!
//! * PVH (QEMU `-kernel`, Xen, cloud-hypervisor): 32-bit protected mode, paging off,
//!   EBX = physical address of `struct hvm_start_info` (Xen `public/arch-x86/hvm/start_info.h`).
//!   The entry is named by the ELF note XEN_ELFNOTE_PHYS32_ENTRY (18, Xen `public/elfnote.h`).
//! * 64-bit Linux boot protocol (Linux `Documentation/arch/x86/boot.rst`, "64-bit BOOT
//!   PROTOCOL"): long mode, identity paging for the loaded image, RSI = `struct boot_params`,
//!   interrupts off, no IDT, no promise about SSE. This is the ELF entry point.
//!
//! Both build our own identity map of the low 4 GiB (2 MiB pages), our own GDT, a stack, zero
//! .bss, and call into Rust.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long _pvh_start

    .section .boot_pt, "aw", @nobits
    .balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
    .global canary_boot_pd
canary_boot_pd:
boot_pd:   .skip 4096 * 4

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global canary_stack_guard
canary_stack_guard: .skip 4096  /* unmapped by cpu::guard_boot_stack: overflow faults */
boot_stack: .skip 262144  /* 256 KiB: at least half stays free on every path (stack.rs) */
    .global canary_boot_stack_top
canary_boot_stack_top:
boot_stack_top:

    .section .rodata.boot_gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL0 */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
    .balign 8
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global _pvh_start
_pvh_start:
    cli
    cld
    mov %ebx, %esi              /* hvm_start_info */
    /* zero PML4 + PDPT */
    mov $boot_pml4, %edi
    xor %eax, %eax
    mov $2048, %ecx
    rep stosl
    /* PD: 2048 x 2 MiB pages, present | writable | PS */
    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b
    /* PDPT[0..4] -> the 4 PDs */
    mov $boot_pdpt, %edi
    mov $(boot_pd + 3), %eax
    mov %eax, 0(%edi)
    add $4096, %eax
    mov %eax, 8(%edi)
    add $4096, %eax
    mov %eax, 16(%edi)
    add $4096, %eax
    mov %eax, 24(%edi)
    mov $(boot_pdpt + 3), %eax
    mov %eax, boot_pml4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* IA32_EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $_pvh_long

    .code64
_pvh_long:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov %esi, %esi              /* zero-extend the start_info address */
    mov $1, %edx                /* boot kind: PVH */
    jmp _common64

    /* 64-bit Linux boot protocol entry (ELF e_entry). */
    .global _start64
_start64:
    cli
    cld
    /* The 64-bit boot protocol gives no stack (OpenVMM enters with RSP = 0): set ours before
       the first push (the far return below). It lives in .bss, which _common64 zeroes once
       nothing on it is needed any more. */
    lea boot_stack_top(%rip), %rsp
    mov $2, %edx                /* boot kind: Linux boot_params */
    /* identity map as above, built with 64-bit code (the VMM's tables map us) */
    lea boot_pml4(%rip), %rdi
    xor %eax, %eax
    mov $1024, %ecx
    rep stosq
    lea boot_pd(%rip), %rdi
    mov $0x83, %rax
    mov $2048, %ecx
2:  mov %rax, (%rdi)
    add $0x200000, %rax
    add $8, %rdi
    loop 2b
    lea boot_pdpt(%rip), %rdi
    lea (boot_pd + 3)(%rip), %rax
    mov %rax, 0(%rdi)
    add $4096, %rax
    mov %rax, 8(%rdi)
    add $4096, %rax
    mov %rax, 16(%rdi)
    add $4096, %rax
    mov %rax, 24(%rdi)
    lea (boot_pdpt + 3)(%rip), %rax
    mov %rax, boot_pml4(%rip)
    lea boot_pml4(%rip), %rax
    mov %rax, %cr3
    lgdt boot_gdtr(%rip)
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea 3f(%rip), %rax
    pushq $0x08
    push %rax
    lretq
3:
    /* fall through */
_common64:
    /* zero .bss (the stack is in .bss: done before using it) */
    mov %rdx, %r12
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %rsi, %rdi              /* arg0: boot info pointer */
    mov %r12, %rsi              /* arg1: boot kind */
    call {rust_entry}
4:  hlt
    jmp 4b
"#,
    rust_entry = sym super::direct::direct_entry,
    options(att_syntax)
);
