//! The traits a kernel implements (pages, interrupt controller) or uses (hypervisor access,
//! clock). The arch modules and the host model implement [`Hypervisor`] and [`Clock`].

use crate::hypercall::Control;
use crate::regs::{GuestOsId, SynReg};
use crate::status::{HvError, HvResult};

/// The architecture whose hypervisor ABI a [`Hypervisor`] speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// A run of physically contiguous, page-aligned guest pages, with the address the kernel
/// reaches them at (`va`). On an identity-mapped kernel `va == gpa`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PhysPages {
    gpa: u64,
    va: *mut u8,
    count: usize,
}

// SAFETY: a PhysPages is an address range handed out by a PageAlloc; it carries no thread
// affinity and every access through it goes through the volatile/atomic helpers in `mem`.
unsafe impl Send for PhysPages {}
// SAFETY: as above.
unsafe impl Sync for PhysPages {}

impl PhysPages {
    /// # Safety
    /// `va` must map `count` pages of guest memory at guest-physical address `gpa`, valid and
    /// exclusively owned by the caller for as long as the value (or a copy) is used.
    pub const unsafe fn new(gpa: u64, va: *mut u8, count: usize) -> Self {
        Self { gpa, va, count }
    }

    /// An identity-mapped range: `va = addr`.
    ///
    /// # Safety
    /// As for [`PhysPages::new`].
    pub unsafe fn identity(addr: u64, count: usize) -> Self {
        Self {
            gpa: addr,
            va: addr as usize as *mut u8,
            count,
        }
    }

    pub fn gpa(&self) -> u64 {
        self.gpa
    }
    pub fn va(&self) -> *mut u8 {
        self.va
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn len(&self) -> usize {
        self.count * crate::PAGE_SIZE
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Page frame number of the first page.
    pub fn pfn(&self) -> u64 {
        self.gpa >> crate::PAGE_SHIFT
    }
    /// The sub-range starting `first` pages in, `count` pages long, if it fits.
    pub fn slice(&self, first: usize, count: usize) -> Option<PhysPages> {
        if first.checked_add(count)? > self.count {
            return None;
        }
        Some(PhysPages {
            gpa: self.gpa + (first * crate::PAGE_SIZE) as u64,
            // in bounds: checked above
            va: self.va.wrapping_add(first * crate::PAGE_SIZE),
            count,
        })
    }
}

/// Supplies zeroed, page-aligned, physically contiguous guest pages.
///
/// # Safety
/// Every [`PhysPages`] returned must satisfy the contract of [`PhysPages::new`], must be
/// zero-filled, and must never be handed out twice.
pub unsafe trait PageAlloc: Sync {
    fn alloc_pages(&self, count: usize) -> Option<PhysPages>;
    /// Give pages back. Optional: the panic path never frees.
    fn free_pages(&self, _pages: PhysPages) {}
}

/// Time in 100 ns units, monotonic. Hyper-V reference time on hardware
/// ([`crate::time::ReferenceTime`]), a fake clock in the sim.
pub trait Clock: Sync {
    fn now(&self) -> u64;
    /// Called in every polling loop iteration.
    fn relax(&self) {
        core::hint::spin_loop()
    }
}

/// The interrupt controller belongs to the kernel. Cleanup calls it to disable the per-CPU
/// interrupts (arm64 GIC PPIs) it configured for VMBus and STIMER0 (ref §2.5).
pub trait InterruptControl {
    fn disable_ppi(&mut self, intid: u32);
}

/// One CPU's access to the hypervisor: synthetic registers and hypercalls. Registers are
/// per-VP, so a handle acts on the CPU that calls it (the sim has one handle per VP).
pub trait Hypervisor: Sync {
    fn arch(&self) -> Arch;
    fn read_reg(&self, reg: SynReg) -> Result<u64, HvError>;
    fn write_reg(&self, reg: SynReg, value: u64) -> Result<(), HvError>;
    /// A memory-based hypercall: input and output are guest-physical addresses of 8-byte
    /// aligned buffers that do not cross a page (ref §3.5).
    /// `Err` only for guest-side failures (hypercalls not enabled); the hypervisor's status is
    /// in the `HvResult`.
    fn hypercall(
        &self,
        control: Control,
        input_gpa: u64,
        output_gpa: u64,
    ) -> Result<HvResult, HvError>;
    /// A fast hypercall with two register inputs (the `fast` bit is set by the callee).
    fn fast_hypercall(&self, control: Control, in1: u64, in2: u64) -> Result<HvResult, HvError>;
    /// Hypervisor identity and features, or `None` when not running on Hyper-V
    /// (x86: CPUID leaves; arm64: SMCCC vendor-hyp UID, then the feature registers).
    fn detect(&self) -> Option<crate::detect::HvIdentity>;
    /// Enable hypercalls: x86 writes GUEST_OS_ID, then the HYPERCALL MSR with a page from
    /// `alloc`; arm64 writes GUEST_OS_ID with HvSetVpRegisters.
    fn enable_hypercalls(&self, alloc: &dyn PageAlloc, os_id: GuestOsId) -> Result<(), HvError>;
    /// x86: HYPERCALL enable = 0, then GUEST_OS_ID = 0 (Linux `hyperv_cleanup`, ref §1.1);
    /// arm64: GUEST_OS_ID = 0.
    fn disable_hypercalls(&self) -> Result<(), HvError>;
    /// The time-stamp counter used with the reference TSC page; `None` where there is none
    /// (arm64 has no TSC page, ref §3.3).
    fn read_tsc(&self) -> Option<u64> {
        None
    }
}
