//! Pages for the Hyper-V code: a static, page-aligned pool handed out once and never reused
//! (the SynIC table reuses its own pages on a reconnect). The kernel is identity-mapped, so a
//! page's guest-physical address is its address.
use core::sync::atomic::{AtomicUsize, Ordering};
use vmbus::{PageAlloc, PhysPages, PAGE_SIZE};

/// SynIC (3) + hypercall page + reference TSC page + 3 per VMBus connection (interrupt page
/// and two monitor pages; two connections: boot and panic-time reconnect) + one channel with
/// 4 + 4 ring pages, and room to spare.
const POOL_PAGES: usize = 40;

#[repr(C, align(4096))]
struct Pool([u8; POOL_PAGES * PAGE_SIZE]);

static mut POOL: Pool = Pool([0; POOL_PAGES * PAGE_SIZE]);
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct StaticPages;

pub static PAGES: StaticPages = StaticPages;

// SAFETY: every range is handed out at most once (the bump index only grows), is zeroed (.bss,
// never written before it is handed out), page-aligned (the pool is), and identity-mapped
// (va == gpa) like the rest of the kernel image.
unsafe impl PageAlloc for StaticPages {
    fn alloc_pages(&self, count: usize) -> Option<PhysPages> {
        if count == 0 {
            return None;
        }
        let first = NEXT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(count).filter(|&end| end <= POOL_PAGES)
            })
            .ok()?;
        let base = core::ptr::addr_of_mut!(POOL) as *mut u8;
        let va = base.wrapping_add(first * PAGE_SIZE);
        // SAFETY: `count` pages starting at `va` lie in the pool, are owned by the caller from
        // now on, and va == gpa on this identity-mapped kernel.
        Some(unsafe { PhysPages::identity(va as u64, count) })
    }
}

/// Pages left, for the log.
pub fn left() -> usize {
    POOL_PAGES.saturating_sub(NEXT.load(Ordering::Acquire))
}
