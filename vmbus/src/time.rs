//! Reference time: the reference TSC page when it is valid, else the TIME_REF_COUNT register
//! (ref §3.4). Units: 100 ns.

use core::sync::atomic::{fence, Ordering};

use crate::detect::{HvIdentity, Privileges};
use crate::mem;
use crate::platform::{Clock, Hypervisor, PageAlloc, PhysPages};
use crate::regs::{PageReg, SynReg};

/// Reference TSC page offsets (ref §3.4: `{u32 sequence; u32 rsvd; u64 scale; s64 offset}`).
pub mod tsc_page {
    pub const SEQUENCE: usize = 0;
    pub const SCALE: usize = 8;
    pub const OFFSET: usize = 16;
}

/// Reference time for one hypervisor handle.
pub struct ReferenceTime<'h> {
    hv: &'h dyn Hypervisor,
    page: Option<PhysPages>,
}

impl<'h> ReferenceTime<'h> {
    /// Enables the reference TSC page when the hypervisor advertises it and the arch has a TSC
    /// (x86); otherwise reads TIME_REF_COUNT every time.
    pub fn new(hv: &'h dyn Hypervisor, alloc: &dyn PageAlloc, id: &HvIdentity) -> Self {
        let mut page = None;
        if id.privileges.has(Privileges::REFERENCE_TSC) && hv.read_tsc().is_some() {
            if let Some(p) = alloc.alloc_pages(1) {
                let cur = hv.read_reg(crate::regs::SynReg::ReferenceTsc).unwrap_or(0);
                // Low 12 bits preserved on write (ref §3.2).
                let v = PageReg::from_bits(cur).with_gpa(p.gpa()).with_enabled(true);
                if hv.write_reg(SynReg::ReferenceTsc, v.into_bits()).is_ok() {
                    page = Some(p);
                }
            }
        }
        Self { hv, page }
    }

    /// Reference time from the register only.
    pub fn register_only(hv: &'h dyn Hypervisor) -> Self {
        Self { hv, page: None }
    }

    /// Time from the TSC page, or `None` if it is unusable (sequence 0, ref §3.4).
    pub fn read_tsc_page(&self) -> Option<u64> {
        let page = self.page?;
        let base = page.va();
        for _ in 0..16 {
            // SAFETY: the TSC page is an owned, 8-byte aligned page the hypervisor updates.
            let (seq, scale, offset) = unsafe {
                let seq =
                    mem::atomic_u32(base.wrapping_add(tsc_page::SEQUENCE)).load(Ordering::Acquire);
                let scale =
                    mem::atomic_u64(base.wrapping_add(tsc_page::SCALE)).load(Ordering::Acquire);
                let offset =
                    mem::atomic_u64(base.wrapping_add(tsc_page::OFFSET)).load(Ordering::Acquire);
                (seq, scale, offset)
            };
            if seq == 0 {
                return None;
            }
            let tsc = self.hv.read_tsc()?;
            fence(Ordering::Acquire);
            // SAFETY: as above.
            let seq2 = unsafe { mem::atomic_u32(base.wrapping_add(tsc_page::SEQUENCE)) }
                .load(Ordering::Acquire);
            if seq2 == seq {
                // time = ((tsc * scale) >> 64) + offset (ref §3.4).
                let t = ((tsc as u128 * scale as u128) >> 64) as u64;
                return Some(t.wrapping_add(offset));
            }
        }
        None
    }

    /// Disable the TSC page (Linux `hyperv_cleanup`: clear only the enable bit).
    pub fn disable(&mut self) {
        if self.page.take().is_some() {
            if let Ok(cur) = self.hv.read_reg(SynReg::ReferenceTsc) {
                let _ = self.hv.write_reg(
                    SynReg::ReferenceTsc,
                    PageReg::from_bits(cur).with_enabled(false).into_bits(),
                );
            }
        }
    }

    pub fn uses_tsc_page(&self) -> bool {
        self.page.is_some()
    }
}

// SAFETY-free: `ReferenceTime` only holds a shared reference and a page descriptor.
impl Clock for ReferenceTime<'_> {
    fn now(&self) -> u64 {
        self.read_tsc_page()
            .or_else(|| self.hv.read_reg(SynReg::TimeRefCount).ok())
            .unwrap_or(0)
    }
}
