//! Our own GDT with a TSS, so that double faults and page faults run on a separate stack
//! (IST1): a stack overflow then still reaches the panic path instead of triple-faulting.
//! On direct boot the page below the boot stack is unmapped, so an overflow faults at once.
//! Layouts: Intel SDM vol. 3A 3.4.5 (segment descriptors), 7.2.3 (64-bit TSS descriptor),
//! 7.7 (64-bit TSS: IST1 at offset 36).

pub const CODE_SEL: u16 = 0x08;
const DATA_SEL: u16 = 0x10;
const TSS_SEL: u16 = 0x18;

#[repr(C, align(16))]
struct Gdt([u64; 5]);

#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

static mut GDT: Gdt = Gdt([0; 5]);
static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: 104,
};

#[repr(C, align(16))]
struct Stack([u8; FAULT_STACK_SIZE]);
/// The fault stack (IST1, #PF and #DF): a page fault's panic path runs on it to the end,
/// ship step included (netvsc on Hyper-V: 21.9 KiB of 32 KiB were used on OpenVMM), so it is
/// as large as half of it must stay free on every path (stack.rs).
const FAULT_STACK_SIZE: usize = 128 * 1024;
static mut FAULT_STACK: Stack = Stack([0; FAULT_STACK_SIZE]);

/// The fault stack (IST1): `[lo, hi)`.
pub fn fault_stack_range() -> (usize, usize) {
    let lo = core::ptr::addr_of!(FAULT_STACK) as usize;
    (lo, lo + FAULT_STACK_SIZE)
}

#[repr(C, packed)]
struct DescPtr {
    limit: u16,
    base: u64,
}

/// Loads the GDT (64-bit code 0x08, data 0x10, TSS 0x18) and the TSS with IST1 = the fault
/// stack. After this CS is `CODE_SEL` on every boot path.
pub fn install_gdt_tss() {
    // SAFETY: called once at boot with interrupts off; the tables are statics that live
    // forever; the far return reloads CS with a valid 64-bit code segment.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        let top = core::ptr::addr_of_mut!(FAULT_STACK) as u64 + FAULT_STACK_SIZE as u64;
        tss.ist[0] = top;
        let base = tss as *mut Tss as u64;
        let limit = 103u64;
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        gdt.0[1] = 0x00af_9a00_0000_ffff; // code: present, DPL0, L
        gdt.0[2] = 0x00cf_9200_0000_ffff; // data
        gdt.0[3] = (limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | 0x89 << 40 // present, type 9: available 64-bit TSS
            | ((limit >> 16) & 0xf) << 48
            | ((base >> 24) & 0xff) << 56;
        gdt.0[4] = base >> 32;
        let ptr = DescPtr {
            limit: (core::mem::size_of::<Gdt>() - 1) as u16,
            base: gdt.0.as_ptr() as u64,
        };
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "mov fs, {ds:x}",
            "mov gs, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) CODE_SEL as u64,
            ds = in(reg) DATA_SEL as u64,
            tss = in(reg) TSS_SEL as u64,
            tmp = out(reg) _,
        );
    }
}

/// Direct boot: unmaps the page below the boot stack by splitting its 2 MiB page into 4 KiB
/// pages (boot.rs maps the low 4 GiB with 2 MiB pages).
#[cfg(target_os = "none")]
pub fn guard_boot_stack() {
    #[repr(C, align(4096))]
    struct Pt([u64; 512]);
    static mut PT: Pt = Pt([0; 512]);
    unsafe extern "C" {
        static mut canary_boot_pd: [u64; 2048];
        static canary_stack_guard: u8;
    }
    // SAFETY: boot, one CPU: we own the page tables. The 4 KiB table maps the same frames as
    // the 2 MiB page it replaces, except the guard page; CR3 is reloaded to flush the TLB.
    unsafe {
        let guard = core::ptr::addr_of!(canary_stack_guard) as u64;
        let big = guard & !0x1f_ffff;
        let pt = &mut *core::ptr::addr_of_mut!(PT);
        for (i, e) in pt.0.iter_mut().enumerate() {
            let a = big + (i as u64) * 4096;
            *e = if a == guard { 0 } else { a | 0x3 };
        }
        let pd = &mut *core::ptr::addr_of_mut!(canary_boot_pd);
        pd[(big >> 21) as usize] = pt.0.as_ptr() as u64 | 0x3;
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
}
