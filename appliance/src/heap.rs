//! The heap for normal running: a fixed region in .bss with a first-fit free list. After
//! freeze the panic path must not allocate: allocation then fails (null).
use crate::sync::TryLock;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, Ordering};
use linked_list_allocator::Heap;

const HEAP_SIZE: usize = 256 * 1024;

#[repr(align(4096))]
#[allow(dead_code)] // used through raw pointers only
struct Arena([u8; HEAP_SIZE]);
static mut ARENA: Arena = Arena([0; HEAP_SIZE]);

static HEAP: TryLock<Heap> = TryLock::new(Heap::empty());
pub static FROZEN: AtomicBool = AtomicBool::new(false);

struct KernelAlloc;

#[global_allocator]
static ALLOC: KernelAlloc = KernelAlloc;

// SAFETY: allocations come from the free list under the lock; frees return exactly what was
// handed out.
unsafe impl GlobalAlloc for KernelAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if FROZEN.load(Ordering::Relaxed) {
            return core::ptr::null_mut();
        }
        match HEAP.try_lock() {
            Some(mut h) => h
                .allocate_first_fit(layout)
                .map(|p| p.as_ptr())
                .unwrap_or(core::ptr::null_mut()),
            None => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(mut h), Some(p)) = (HEAP.try_lock(), core::ptr::NonNull::new(ptr)) {
            // SAFETY: `ptr` came from `alloc` with this layout.
            unsafe { h.deallocate(p, layout) };
        }
    }
}

pub fn init() {
    // SAFETY: called once at boot; the arena is used by nothing else.
    unsafe {
        let start = core::ptr::addr_of_mut!(ARENA) as *mut u8;
        HEAP.lock().init(start, HEAP_SIZE);
    }
}

/// Heap sanity for the self-check: allocate, write, read back, free.
pub fn self_check() -> Result<(), &'static str> {
    extern crate alloc;
    let mut v: alloc::vec::Vec<u32> = alloc::vec::Vec::new();
    if v.try_reserve(64).is_err() {
        return Err("heap: allocation of 256 bytes failed");
    }
    v.extend(0..64u32);
    if v.iter().sum::<u32>() != 2016 {
        return Err("heap: read back differs from what was written");
    }
    Ok(())
}
