//! DMA memory for virtio-drivers: a static, page-aligned pool, allocated at boot only (the
//! panic path reuses the NIC's buffers). Memory is identity-mapped, so physical = virtual.
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use virtio_drivers::{BufferDirection, PhysAddr};

const PAGE: usize = 4096;
const POOL_PAGES: usize = 96;

#[repr(align(4096))]
#[allow(dead_code)] // used through raw pointers only
struct Pool([u8; POOL_PAGES * PAGE]);
static mut POOL: Pool = Pool([0; POOL_PAGES * PAGE]);
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Hal;

// SAFETY: dma_alloc hands out zeroed, page-aligned, never-reused memory that is identity
// mapped; share/unshare translate identity-mapped addresses.
unsafe impl virtio_drivers::Hal for Hal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = NEXT.fetch_add(pages, Ordering::Relaxed);
        if first + pages > POOL_PAGES {
            panic!(
                "DMA pool exhausted: {} pages wanted, {} left",
                pages,
                POOL_PAGES.saturating_sub(first)
            );
        }
        // SAFETY: the range [first, first+pages) is handed out once.
        let p = unsafe { (core::ptr::addr_of_mut!(POOL) as *mut u8).add(first * PAGE) };
        // SAFETY: in bounds of the pool; zeroed by .bss and never reused.
        let nn = unsafe { NonNull::new_unchecked(p) };
        (p as usize as PhysAddr, nn)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        crate::arch::imp::map_mmio(paddr, _size as u64);
        NonNull::new(paddr as usize as *mut u8).expect("MMIO at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as usize as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}
