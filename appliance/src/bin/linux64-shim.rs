//! linux64-shim: tests the canary's 64-bit Linux-boot-protocol entry under QEMU, which has no
//! loader for it. QEMU boots this shim by PVH and puts the canary's ELF file, as raw bytes, at
//! `ELF_AT` (`-device loader,file=...,addr=...,force-raw=on`). The shim then does what a VMM
//! with direct kernel boot does (Firecracker, cloud-hypervisor: Linux
//! `Documentation/arch/x86/boot.rst`, "64-bit BOOT PROTOCOL"): it loads the ELF's PT_LOAD
//! segments at their physical addresses, fills a `struct boot_params` (e820 map from the PVH
//! memory map, the command line), and jumps to the ELF entry in long mode with identity paging
//! of the first GiB, interrupts off and RSI = &boot_params.
#![cfg_attr(kernel, no_std, no_main)]

#[cfg(not(kernel))]
fn main() {
    eprintln!("linux64-shim is a PVH kernel for the QEMU tests; build it for x86_64-unknown-none");
}

#[cfg(all(kernel, target_arch = "x86_64", target_os = "none"))]
mod shim {
    use core::arch::global_asm;

    /// Where the test puts the canary's ELF file.
    const ELF_AT: usize = 0x400_0000;
    /// Where the shim builds boot_params and the command line (as Firecracker does:
    /// zero page at 0x7000, command line at 0x20000).
    const ZERO_PAGE: usize = 0x7000;
    const CMDLINE: usize = 0x2_0000;

    global_asm!(
        r#"
        .section .note.Xen, "a"
        .balign 4
        .long 4, 4, 18          /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .balign 4
        .long shim_pvh

        .section .bss.shim, "aw", @nobits
        .balign 4096
    shim_pml4: .skip 4096
    shim_pdpt: .skip 4096
    shim_pd:   .skip 4096
    shim_stack: .skip 16384
    shim_stack_top:

        .section .text.shim, "ax"
        .balign 16
    shim_gdt:
        .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff
    shim_gdtr:
        .word 23
        .quad shim_gdt

        .code32
        .global shim_pvh
    shim_pvh:
        cli
        mov %ebx, %esi
        mov $shim_pml4, %edi
        xor %eax, %eax
        mov $3072, %ecx
        rep stosl
        mov $shim_pd, %edi
        mov $0x83, %eax
        mov $512, %ecx          /* 1 GiB of 2 MiB pages, as Firecracker maps */
    1:  mov %eax, (%edi)
        add $0x200000, %eax
        add $8, %edi
        loop 1b
        movl $(shim_pd + 3), shim_pdpt
        movl $(shim_pdpt + 3), shim_pml4
        mov $shim_pml4, %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $0x20, %eax
        mov %eax, %cr4
        mov $0xc0000080, %ecx
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000001, %eax
        mov %eax, %cr0
        lgdt shim_gdtr
        ljmp $0x08, $2f
        .code64
    2:  mov $0x10, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov $shim_stack_top, %rsp
        mov %esi, %edi
        call {main}
    3:  hlt
        jmp 3b
    "#,
        main = sym shim_main,
        options(att_syntax)
    );

    fn out(s: &[u8]) {
        for &b in s {
            // SAFETY: COM1 data register.
            unsafe { core::arch::asm!("out dx, al", in("dx") 0x3f8u16, in("al") b) };
        }
    }

    fn hex(v: u64) {
        let mut b = *b"0x0000000000000000";
        for i in 0..16 {
            let d = ((v >> (60 - 4 * i)) & 0xf) as u8;
            b[2 + i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        }
        out(&b);
    }

    fn fail(what: &[u8]) -> ! {
        out(b"linux64-shim: ");
        out(what);
        out(b"\n");
        loop {
            // SAFETY: parks the CPU.
            unsafe { core::arch::asm!("cli; hlt") };
        }
    }

    /// # Safety
    /// Reads and writes physical memory that the PVH loader and the test laid out.
    unsafe fn rd<T: Copy>(a: usize) -> T {
        // SAFETY: forwarded.
        unsafe { core::ptr::read_unaligned(a as *const T) }
    }

    unsafe fn wr<T>(a: usize, v: T) {
        // SAFETY: forwarded.
        unsafe { core::ptr::write_unaligned(a as *mut T, v) }
    }

    extern "C" fn shim_main(start_info: usize) -> ! {
        // SAFETY: identity-mapped low memory: the PVH start_info, the ELF the test placed at
        // ELF_AT, and the areas a VMM owns (zero page, command line, the kernel's segments).
        unsafe {
            if rd::<u32>(start_info) != 0x336e_c578 {
                fail(b"no PVH start_info");
            }
            if rd::<[u8; 4]>(ELF_AT) != *b"\x7fELF" {
                fail(b"no ELF at 0x4000000");
            }
            // ELF64 header: e_entry 24, e_phoff 32, e_phentsize 54, e_phnum 56.
            let entry: u64 = rd(ELF_AT + 24);
            let phoff: u64 = rd(ELF_AT + 32);
            let phentsize: u16 = rd(ELF_AT + 54);
            let phnum: u16 = rd(ELF_AT + 56);
            for i in 0..phnum as usize {
                let ph = ELF_AT + phoff as usize + i * phentsize as usize;
                if rd::<u32>(ph) != 1 {
                    continue; // PT_LOAD only
                }
                let off: u64 = rd(ph + 8);
                let paddr: u64 = rd(ph + 24);
                let filesz: u64 = rd(ph + 32);
                let memsz: u64 = rd(ph + 40);
                core::ptr::copy(
                    (ELF_AT + off as usize) as *const u8,
                    paddr as *mut u8,
                    filesz as usize,
                );
                core::ptr::write_bytes((paddr + filesz) as *mut u8, 0, (memsz - filesz) as usize);
            }
            // boot_params (arch/x86/include/uapi/asm/bootparam.h).
            core::ptr::write_bytes(ZERO_PAGE as *mut u8, 0, 4096);
            wr::<u16>(ZERO_PAGE + 0x1fe, 0xaa55); // hdr.boot_flag
            wr::<u32>(ZERO_PAGE + 0x202, 0x5372_6448); // hdr.header "HdrS"
            wr::<u16>(ZERO_PAGE + 0x206, 0x020f); // hdr.version 2.15
            wr::<u8>(ZERO_PAGE + 0x210, 0xff); // hdr.type_of_loader: undefined
                                               // Command line: the shim's own, from start_info.cmdline_paddr.
            let src: u64 = rd(start_info + 24);
            let mut n = 0usize;
            while src != 0 && n < 4095 && rd::<u8>(src as usize + n) != 0 {
                wr::<u8>(CMDLINE + n, rd::<u8>(src as usize + n));
                n += 1;
            }
            wr::<u8>(CMDLINE + n, 0);
            wr::<u32>(ZERO_PAGE + 0x228, CMDLINE as u32); // hdr.cmd_line_ptr
            wr::<u32>(ZERO_PAGE + 0x238, n as u32); // hdr.cmdline_size
                                                    // e820 from the PVH memory map (version >= 1: memmap_paddr 40, entries 48).
            let map: u64 = rd(start_info + 40);
            let count = (rd::<u32>(start_info + 48) as usize).min(128);
            for i in 0..count {
                let e = map as usize + i * 24;
                let d = ZERO_PAGE + 0x2d0 + i * 20;
                wr::<u64>(d, rd::<u64>(e));
                wr::<u64>(d + 8, rd::<u64>(e + 8));
                wr::<u32>(d + 16, rd::<u32>(e + 16));
            }
            wr::<u8>(ZERO_PAGE + 0x1e8, count as u8);
            out(b"linux64-shim: entering the kernel at ");
            hex(entry);
            // RSP = 0 on purpose: the 64-bit boot protocol sets no stack
            // (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL"), and OpenVMM enters
            // with RSP = 0; the kernel must set its own before its first push.
            out(b" with RSI = boot_params, RSP = 0\n");
            core::arch::asm!(
                "cli",
                "xor esp, esp",
                "jmp {entry}",
                entry = in(reg) entry,
                in("rsi") ZERO_PAGE as u64,
                options(noreturn)
            );
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        fail(b"panic")
    }
}
