//! Our own GDT with a TSS, so that double faults and page faults run on a separate stack
//! (IST1): a stack overflow then still reaches the panic path instead of triple-faulting.
//! On direct boot the page below the boot stack is unmapped, so an overflow faults at once.
//! The descriptors and the TSS are the `x86_64` crate's (layouts: Intel SDM vol. 3A 3.4.5,
//! 7.2.3, 7.7).

use ::x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use ::x86_64::instructions::tables::load_tss;
use ::x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use ::x86_64::structures::tss::TaskStateSegment;
use ::x86_64::VirtAddr;

/// Null, 64-bit code (0x08), data (0x10), TSS (0x18, two slots).
static mut GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();
static mut TSS: TaskStateSegment = TaskStateSegment::new();

#[repr(C, align(16))]
struct Stack([u8; FAULT_STACK_SIZE]);
/// The fault stack (IST1, #PF and #DF): a page fault's panic path runs on it to the end,
/// ship step included (netvsc on Hyper-V: 21.9 KiB of 32 KiB were used on OpenVMM), so it is
/// as large as half of it must stay free on every path (stack.rs).
const FAULT_STACK_SIZE: usize = 128 * 1024;
static mut FAULT_STACK: Stack = Stack([0; FAULT_STACK_SIZE]);

/// The fault stack's slot in the TSS's interrupt stack table (0 = IST1).
pub const FAULT_IST_INDEX: u16 = 0;

/// The fault stack (IST1): `[lo, hi)`.
pub fn fault_stack_range() -> (usize, usize) {
    let lo = core::ptr::addr_of!(FAULT_STACK) as usize;
    (lo, lo + FAULT_STACK_SIZE)
}

/// Loads the GDT (64-bit code 0x08, data 0x10, TSS 0x18) and the TSS with IST1 = the fault
/// stack. After this CS is the GDT's code segment on every boot path.
pub fn install_gdt_tss() {
    // SAFETY: called once at boot on one CPU with interrupts off, before anything else reads
    // TSS or GDT, and never again: the exclusive references end before the shared `'static`
    // ones the CPU keeps are made. The far return of `CS::set_reg` loads a valid 64-bit code
    // segment of the table just loaded; the data selector is a present writable segment; the
    // TSS selector names an available 64-bit TSS that lives forever.
    unsafe {
        let (_, hi) = fault_stack_range();
        (*core::ptr::addr_of_mut!(TSS)).interrupt_stack_table[FAULT_IST_INDEX as usize] =
            VirtAddr::new(hi as u64);
        let tss: &'static TaskStateSegment = &*core::ptr::addr_of!(TSS);
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        let gdt: &'static GlobalDescriptorTable = &*core::ptr::addr_of!(GDT);
        gdt.load();
        CS::set_reg(code);
        for set in [
            DS::set_reg,
            ES::set_reg,
            SS::set_reg,
            FS::set_reg,
            GS::set_reg,
        ] {
            set(data);
        }
        load_tss(tss_sel);
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
        ::x86_64::instructions::tlb::flush_all();
    }
}
