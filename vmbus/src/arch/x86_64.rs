//! x86_64: synthetic MSRs (`rdmsr`/`wrmsr`), CPUID detection, and hypercalls through the
//! hypercall page the hypervisor fills in (ref §3.1, §3.2, §3.5). Never a hard-coded
//! VMCALL/VMMCALL: Intel and AMD hosts differ, and the page hides that.

use core::sync::atomic::{AtomicPtr, Ordering};

use crate::detect::{HvIdentity, Privileges};
use crate::hypercall::Control;
use crate::platform::{Arch, Hypervisor, PageAlloc};
use crate::regs::{GuestOsId, PageReg, SynReg};
use crate::status::{HvError, HvResult};

/// CPUID leaves (ref §3.1, Linux `hvgdk_mini.h` `HYPERV_CPUID_*`).
pub mod leaf {
    pub const VENDOR_AND_MAX: u32 = 0x4000_0000;
    pub const INTERFACE: u32 = 0x4000_0001;
    pub const VERSION: u32 = 0x4000_0002;
    pub const FEATURES: u32 = 0x4000_0003;
    pub const ENLIGHTENMENT_INFO: u32 = 0x4000_0004;
    /// Linux `HYPERV_CPUID_MIN`: a Hyper-V host reports at least this max leaf.
    pub const MIN_MAX_LEAF: u32 = 0x4000_0005;
}

/// "Hv#1" in CPUID 0x40000001 EAX (ref §3.1).
pub const HV_INTERFACE_SIGNATURE: u32 = u32::from_le_bytes(*b"Hv#1");
/// "Microsoft Hv" in CPUID 0x40000000 EBX, ECX, EDX (ref §3.1).
pub const HV_VENDOR: [u8; 12] = *b"Microsoft Hv";

/// The instructions the adapter needs. `Native` executes them; the sim models them.
pub trait X86Instructions: Sync {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    fn rdmsr(&self, msr: u32) -> u64;
    fn wrmsr(&self, msr: u32, value: u64);
    fn rdtsc(&self) -> u64;
    /// `call` into the hypercall page with RCX = control, RDX = input, R8 = output (ref §3.5);
    /// returns RAX.
    ///
    /// # Safety
    /// `page` must be the enabled hypercall page, filled in by the hypervisor.
    unsafe fn call_hypercall_page(
        &self,
        page: *const u8,
        control: u64,
        input: u64,
        output: u64,
    ) -> u64;
}

/// [`Hypervisor`] over x86 MSRs and the hypercall page.
pub struct X86Hv<I> {
    insn: I,
    page: AtomicPtr<u8>,
}

impl<I> X86Hv<I> {
    pub const fn new(insn: I) -> Self {
        Self {
            insn,
            page: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
    pub fn instructions(&self) -> &I {
        &self.insn
    }
    /// A handle for another CPU's instruction layer that shares this hypercall page (the
    /// HYPERCALL MSR is partition-wide).
    pub fn with_instructions<J>(&self, insn: J) -> X86Hv<J> {
        X86Hv {
            insn,
            page: AtomicPtr::new(self.page.load(Ordering::Acquire)),
        }
    }
    /// The hypercall page, if enabled.
    pub fn hypercall_page(&self) -> *mut u8 {
        self.page.load(Ordering::Acquire)
    }
}

/// x86 detection from CPUID (ref §3.1).
pub fn detect(insn: &(impl X86Instructions + ?Sized)) -> Option<HvIdentity> {
    // CPUID.1:ECX bit 31 = running under a hypervisor.
    if insn.cpuid(1, 0)[2] & (1 << 31) == 0 {
        return None;
    }
    let [max_leaf, b, c, d] = insn.cpuid(leaf::VENDOR_AND_MAX, 0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&b.to_le_bytes());
    vendor[4..8].copy_from_slice(&c.to_le_bytes());
    vendor[8..12].copy_from_slice(&d.to_le_bytes());
    // Linux ms_hyperv_platform(): vendor "Microsoft Hv" and a max leaf in range.
    if vendor != HV_VENDOR || max_leaf < leaf::MIN_MAX_LEAF {
        return None;
    }
    if insn.cpuid(leaf::INTERFACE, 0)[0] != HV_INTERFACE_SIGNATURE {
        return None;
    }
    let [build, version, _, _] = insn.cpuid(leaf::VERSION, 0);
    let [eax, ebx, _ecx, edx] = insn.cpuid(leaf::FEATURES, 0);
    let recommendations = insn.cpuid(leaf::ENLIGHTENMENT_INFO, 0)[0];
    Some(HvIdentity {
        vendor,
        max_leaf,
        build,
        version,
        privileges: Privileges(eax as u64 | (ebx as u64) << 32),
        features: edx,
        recommendations,
    })
}

impl<I: X86Instructions> Hypervisor for X86Hv<I> {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn read_reg(&self, reg: SynReg) -> Result<u64, HvError> {
        let msr = reg.x86_msr().ok_or(HvError::NoSuchRegister)?;
        Ok(self.insn.rdmsr(msr))
    }

    fn write_reg(&self, reg: SynReg, value: u64) -> Result<(), HvError> {
        let msr = reg.x86_msr().ok_or(HvError::NoSuchRegister)?;
        self.insn.wrmsr(msr, value);
        Ok(())
    }

    fn hypercall(&self, control: Control, input: u64, output: u64) -> Result<HvResult, HvError> {
        let page = self.page.load(Ordering::Acquire);
        if page.is_null() {
            return Err(HvError::HypercallsDisabled);
        }
        // SAFETY: `page` was enabled through the HYPERCALL MSR in enable_hypercalls and is
        // only cleared by disable_hypercalls.
        Ok(HvResult(unsafe {
            self.insn
                .call_hypercall_page(page, control.with_fast(false).0, input, output)
        }))
    }

    fn fast_hypercall(&self, control: Control, in1: u64, in2: u64) -> Result<HvResult, HvError> {
        let page = self.page.load(Ordering::Acquire);
        if page.is_null() {
            return Err(HvError::HypercallsDisabled);
        }
        // SAFETY: as in `hypercall`.
        Ok(HvResult(unsafe {
            self.insn
                .call_hypercall_page(page, control.with_fast(true).0, in1, in2)
        }))
    }

    fn detect(&self) -> Option<HvIdentity> {
        detect(&self.insn)
    }

    fn enable_hypercalls(&self, alloc: &dyn PageAlloc, os_id: GuestOsId) -> Result<(), HvError> {
        // GUEST_OS_ID must be written before the hypercall page is enabled (ref §3.2).
        self.insn
            .wrmsr(crate::regs::msr::GUEST_OS_ID, os_id.into_bits());
        let current = PageReg::from_bits(self.insn.rdmsr(crate::regs::msr::HYPERCALL));
        let pages = alloc.alloc_pages(1).ok_or(HvError::OutOfPages)?;
        let value = current.with_gpa(pages.gpa()).with_enabled(true);
        self.insn
            .wrmsr(crate::regs::msr::HYPERCALL, value.into_bits());
        if !PageReg::from_bits(self.insn.rdmsr(crate::regs::msr::HYPERCALL)).enabled() {
            alloc.free_pages(pages);
            return Err(HvError::HypercallsDisabled);
        }
        self.page.store(pages.va(), Ordering::Release);
        Ok(())
    }

    fn disable_hypercalls(&self) -> Result<(), HvError> {
        self.page.store(core::ptr::null_mut(), Ordering::Release);
        // Linux hyperv_cleanup: clear only the enable bit (the root partition may not write
        // the GPA bits), then GUEST_OS_ID = 0.
        let current = PageReg::from_bits(self.insn.rdmsr(crate::regs::msr::HYPERCALL));
        self.insn.wrmsr(
            crate::regs::msr::HYPERCALL,
            current.with_enabled(false).into_bits(),
        );
        self.insn.wrmsr(crate::regs::msr::GUEST_OS_ID, 0);
        Ok(())
    }

    fn read_tsc(&self) -> Option<u64> {
        Some(self.insn.rdtsc())
    }
}

#[cfg(target_arch = "x86_64")]
mod native {
    use super::X86Instructions;
    use core::arch::asm;

    /// The real instructions. Only meaningful in a kernel running at CPL 0 under Hyper-V.
    pub struct Native;

    impl X86Instructions for Native {
        fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            #[allow(unused_unsafe)]
            // SAFETY: CPUID is available on every x86_64 CPU and has no memory effects.
            let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
            [r.eax, r.ebx, r.ecx, r.edx]
        }

        fn rdmsr(&self, msr: u32) -> u64 {
            let (lo, hi): (u32, u32);
            // SAFETY: RDMSR reads a register and touches no memory. Callers only name
            // synthetic MSRs after detection; a missing MSR would #GP into the kernel's
            // exception handler, not corrupt memory.
            unsafe {
                asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
                     options(nomem, nostack, preserves_flags));
            }
            (hi as u64) << 32 | lo as u64
        }

        fn wrmsr(&self, msr: u32, value: u64) {
            // SAFETY: synthetic MSR writes; those that make the hypervisor write guest memory
            // (HYPERCALL, SIMP, SIEFP, REFERENCE_TSC) name pages this crate owns via
            // PageAlloc.
            unsafe {
                asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                     options(nostack, preserves_flags));
            }
        }

        fn rdtsc(&self) -> u64 {
            // SAFETY: RDTSC has no memory effects.
            unsafe { core::arch::x86_64::_rdtsc() }
        }

        unsafe fn call_hypercall_page(
            &self,
            page: *const u8,
            control: u64,
            input: u64,
            output: u64,
        ) -> u64 {
            let status: u64;
            // SAFETY: the caller guarantees `page` is the enabled hypercall page. The stub
            // (VMCALL/VMMCALL; RET) follows the hypercall ABI: RCX control, RDX input, R8
            // output, status in RAX; Linux treats RCX, RDX, R8-R11 as clobbered.
            unsafe {
                asm!("call {page}",
                     page = in(reg) page,
                     inout("rcx") control => _,
                     inout("rdx") input => _,
                     inout("r8") output => _,
                     out("rax") status,
                     out("r9") _, out("r10") _, out("r11") _);
            }
            status
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use native::Native;

/// The hardware handle (one per system; MSRs act on the calling CPU).
#[cfg(target_arch = "x86_64")]
pub fn native() -> &'static X86Hv<Native> {
    static HV: X86Hv<Native> = X86Hv::new(Native);
    &HV
}
