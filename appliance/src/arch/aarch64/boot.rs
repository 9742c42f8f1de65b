//! aarch64 direct-boot entry (QEMU `virt`, `-kernel` with this ELF).
//!
//! Why an ELF and not an arm64 Linux `Image`: QEMU loads an ELF at its link address with no
//! post-build conversion (the cargo output is the image, as on x86_64), keeps the symbols for
//! symbolising backtraces, and the code may be position dependent. The price: QEMU passes no
//! DTB pointer in x0 for an ELF; it puts the DTB at the base of RAM instead (see
//! `link/aarch64.ld` and `direct.rs`), which the entry finds by its magic.
//!
//! State at entry (QEMU `hw/arm/boot.c`; ARM ARM D1 reset state): EL1 (EL2 with
//! `virtualization=on`), MMU and caches off, DAIF masked. The entry:
//! 1. drops from EL2 to EL1 if needed;
//! 2. enables FP/SIMD (CPACR_EL1.FPEN = 0b11): the compiler uses NEON registers;
//! 3. builds an identity map (4 KiB granule, 40-bit VA): GiB 0 (flash, GIC, PL011, PL031,
//!    virtio-mmio, PCIe MMIO/ECAM on `virt`) one Device-nGnRE block; GiB 1 (RAM from
//!    0x4000_0000, the image at 0x4020_0000) Normal write-back in 2 MiB blocks, except the
//!    2 MiB around the boot stack in 4 KiB pages with the page below the stack unmapped (a
//!    guard); more RAM and high MMIO are mapped later from the DTB (`mmu.rs`);
//! 4. turns on the MMU and caches (so atomics, exclusives and unaligned accesses work), zeroes
//!    .bss, sets the stack and calls `direct_entry(x0)`.
use core::arch::global_asm;

// Register and bit values: ARM ARM (DDI 0487) D17/D19 register descriptions.
// MAIR_EL1: Attr0 = 0x04 Device-nGnRE, Attr1 = 0xff Normal WB RW-allocate, Attr2 = 0x44
// Normal non-cacheable.
// TCR_EL1: T0SZ = 24 (40-bit VA, walk starts at level 0), IRGN0/ORGN0 = WB WA (01),
// SH0 = inner shareable (11), TG0 = 4 KiB (00), EPD1 = 1 (no TTBR1 walks), IPS from
// ID_AA64MMFR0_EL1.PARange (at most 48 bits: 52-bit needs TCR.DS).
// SCTLR_EL1: RES1 bits 11, 20, 22, 23, 28, 29 | M | C | SA | I; A = 0 (no alignment checks),
// EE = 0 (little endian), WXN = 0.
global_asm!(
    r#"
    .equ MAIR_VALUE, 0x44ff04
    .equ TCR_BASE, (24 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23))
    .equ SCTLR_VALUE, 0x30d0180d
    .equ BLOCK_DEVICE, 0x0060000000000401
    .equ BLOCK_NORMAL, 0x0000000000000705
    .equ PAGE_NORMAL, 0x0000000000000707

    .section .boot_pt, "aw", @nobits
    .balign 4096
    .global canary_boot_l0
canary_boot_l0: .skip 4096
    .global canary_boot_l1
canary_boot_l1: .skip 4096
    .global canary_boot_l1_hi
canary_boot_l1_hi: .skip 4096
canary_boot_l2: .skip 4096
canary_boot_l3: .skip 4096
canary_boot_pt_end:

    /* Not in .bss: the guard page is unmapped while .bss is zeroed. */
    .section .boot_stack, "aw", @nobits
    .balign 4096
    .global canary_stack_guard
canary_stack_guard: .skip 4096
canary_boot_stack: .skip 262144  /* 256 KiB: at least half stays free on every path (stack.rs) */
    .global canary_boot_stack_top
canary_boot_stack_top:

    .section .text.boot, "ax"
    .global _start
_start:
    mov x19, x0                 /* DTB pointer (0 for an ELF on QEMU) */
    msr daifset, #0xf

    /* 1. EL2 -> EL1 */
    mrs x1, CurrentEL
    lsr x1, x1, #2
    cmp x1, #2
    b.ne 1f
    mov x1, #(1 << 31)          /* HCR_EL2.RW: EL1 is AArch64 */
    msr hcr_el2, x1
    mov x1, #3                  /* CNTHCTL_EL2.EL1PCTEN | EL1PCEN: counters at EL1 */
    msr cnthctl_el2, x1
    msr cntvoff_el2, xzr
    mov x1, #0x33ff             /* CPTR_EL2: RES1 bits, no FP/SIMD traps */
    msr cptr_el2, x1
    ldr x1, =0x30d00800         /* SCTLR_EL1: RES1 bits only (MMU and caches off); its */
    msr sctlr_el1, x1           /* reset value is UNKNOWN */
    mov x1, #0x3c5              /* SPSR_EL2: DAIF masked, EL1h */
    msr spsr_el2, x1
    adr x1, 1f
    msr elr_el2, x1
    eret
1:
    /* 2. FP/SIMD; the vectors from here on (a fault before `install_exceptions` still
       reaches the panic path, on the boot stack) */
    mov x1, #(3 << 20)
    msr cpacr_el1, x1
    adrp x1, canary_vectors
    add x1, x1, :lo12:canary_vectors
    msr vbar_el1, x1
    isb

    /* 3. page tables: zero, then fill */
    adrp x2, canary_boot_l0
    add x2, x2, :lo12:canary_boot_l0
    adrp x3, canary_boot_pt_end
    add x3, x3, :lo12:canary_boot_pt_end
    mov x4, x2
2:  stp xzr, xzr, [x4], #16
    cmp x4, x3
    b.lo 2b
    adrp x5, canary_boot_l1
    add x5, x5, :lo12:canary_boot_l1
    orr x6, x5, #3              /* table descriptor */
    str x6, [x2]                /* L0[0] -> L1 (VA 0..512 GiB) */
    ldr x6, =BLOCK_DEVICE
    str x6, [x5]                /* L1[0]: 0..1 GiB device */
    /* L1[1] -> L2: GiB 1 (RAM) as 512 normal 2 MiB blocks */
    adrp x9, canary_boot_l2
    add x9, x9, :lo12:canary_boot_l2
    orr x6, x9, #3
    str x6, [x5, #8]
    ldr x6, =BLOCK_NORMAL
    orr x6, x6, #0x40000000
    mov x10, #512
7:  str x6, [x9], #8
    add x6, x6, #0x200000
    subs x10, x10, #1
    b.ne 7b
    /* the 2 MiB block holding the stack guard -> L3: 4 KiB pages, the guard page invalid,
       so a kernel stack overflow faults (and the vectors run on their own stack) */
    adrp x11, canary_stack_guard
    adrp x9, canary_boot_l2
    add x9, x9, :lo12:canary_boot_l2
    adrp x13, canary_boot_l3
    add x13, x13, :lo12:canary_boot_l3
    ubfx x12, x11, #21, #9      /* L2 index */
    orr x6, x13, #3
    str x6, [x9, x12, lsl #3]
    and x6, x11, #0xffffffffffe00000
    ldr x14, =PAGE_NORMAL
    orr x6, x6, x14
    mov x10, #512
8:  str x6, [x13], #8
    add x6, x6, #0x1000
    subs x10, x10, #1
    b.ne 8b
    adrp x13, canary_boot_l3
    add x13, x13, :lo12:canary_boot_l3
    ubfx x12, x11, #12, #9      /* L3 index */
    str xzr, [x13, x12, lsl #3]
    /* invalidate the tables' cache lines: they were written with the MMU off */
    mrs x7, ctr_el0
    ubfx x7, x7, #16, #4        /* DminLine: log2(words) */
    mov x8, #4
    lsl x8, x8, x7              /* line size in bytes */
    mov x4, x2
3:  dc ivac, x4
    add x4, x4, x8
    cmp x4, x3
    b.lo 3b
    dsb sy

    /* 4. MMU on */
    ldr x1, =MAIR_VALUE
    msr mair_el1, x1
    mrs x1, id_aa64mmfr0_el1
    and x1, x1, #0xf            /* PARange */
    cmp x1, #5
    mov x4, #5
    csel x1, x1, x4, ls
    ldr x4, =TCR_BASE
    orr x1, x4, x1, lsl #32     /* IPS */
    msr tcr_el1, x1
    msr ttbr0_el1, x2
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x1, =SCTLR_VALUE
    msr sctlr_el1, x1
    isb
    ic iallu
    dsb nsh
    isb

    /* .bss (the stack is in it: zero first) */
    adrp x4, __bss_start
    add x4, x4, :lo12:__bss_start
    adrp x5, __bss_end
    add x5, x5, :lo12:__bss_end
4:  cmp x4, x5
    b.hs 5f
    stp xzr, xzr, [x4], #16
    b 4b
5:
    adrp x1, canary_boot_stack_top
    add x1, x1, :lo12:canary_boot_stack_top
    mov sp, x1
    mov x29, xzr
    mov x30, xzr
    mov x0, x19
    bl {rust_entry}
6:  wfi
    b 6b
"#,
    rust_entry = sym super::direct::direct_entry,
);
