//! Modelled guest memory: one page-aligned host allocation mapped at a guest-physical base
//! that differs from its host address, so a guest that confuses GPAs and pointers fails.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Mutex;

use vmbus::{PageAlloc, PhysPages, PAGE_SIZE};

/// Guest-physical address of the first modelled page.
pub const GPA_BASE: u64 = 0x1_0000_0000;

pub struct GuestMemory {
    base: *mut u8,
    layout: Layout,
    pages: usize,
    next: Mutex<usize>,
}

// SAFETY: the allocation is only accessed through volatile/atomic helpers or under the sim's
// lock; the pointer itself carries no thread affinity.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    pub fn new(pages: usize) -> Self {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("layout");
        // SAFETY: non-zero size layout.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "out of host memory");
        Self {
            base,
            layout,
            pages,
            next: Mutex::new(0),
        }
    }

    /// Host pointer for `len` bytes at `gpa`, if they are all modelled memory.
    pub fn ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let off = gpa.checked_sub(GPA_BASE)? as usize;
        let end = off.checked_add(len)?;
        (end <= self.pages * PAGE_SIZE).then(|| self.base.wrapping_add(off))
    }

    /// The GPA of a host pointer into this memory.
    pub fn gpa_of(&self, p: *const u8) -> Option<u64> {
        let off = (p as usize).checked_sub(self.base as usize)?;
        (off < self.pages * PAGE_SIZE).then_some(GPA_BASE + off as u64)
    }

    pub fn read(&self, gpa: u64, out: &mut [u8]) -> bool {
        match self.ptr(gpa, out.len()) {
            Some(p) => {
                // SAFETY: range checked by `ptr`.
                unsafe { vmbus::mem::read_bytes(p, out) };
                true
            }
            None => false,
        }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> bool {
        match self.ptr(gpa, data.len()) {
            Some(p) => {
                // SAFETY: range checked by `ptr`.
                unsafe { vmbus::mem::write_bytes(p, data) };
                true
            }
            None => false,
        }
    }

    pub fn read_u32(&self, gpa: u64) -> Option<u32> {
        let mut b = [0; 4];
        self.read(gpa, &mut b).then(|| u32::from_le_bytes(b))
    }

    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
    }

    pub fn pages_used(&self) -> usize {
        *self.next.lock().unwrap()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, self.layout) };
    }
}

// SAFETY: pages come from a zeroed allocation, are handed out once (bump allocator, never
// reused), and stay valid until the GuestMemory is dropped.
unsafe impl PageAlloc for GuestMemory {
    fn alloc_pages(&self, count: usize) -> Option<PhysPages> {
        let mut next = self.next.lock().unwrap();
        if count == 0 || *next + count > self.pages {
            return None;
        }
        let first = *next;
        *next += count;
        let va = self.base.wrapping_add(first * PAGE_SIZE);
        // SAFETY: `count` pages inside the allocation, owned by the caller from now on.
        Some(unsafe { PhysPages::new(GPA_BASE + (first * PAGE_SIZE) as u64, va, count) })
    }
}
