//! Pages for the Hyper-V code: a static, page-aligned pool handed out once and never reused
//! (the SynIC table reuses its own pages on a reconnect). The kernel is identity-mapped, so a
//! page's guest-physical address is its address.
use super::devices::{NIC_RECV_BYTES, NIC_TX_BYTES};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use vmbus::{PageAlloc, PhysPages, PAGE_SIZE};

/// SynIC (3) + hypercall page + reference TSC page + 3 per VMBus connection (interrupt page
/// and two monitor pages; two connections: boot and panic-time reconnect) + the Dynamic
/// Memory probe's 2 + 2 ring pages + synthvid's rings (`devices::FB_RING_PAGES` each way) +
/// two NIC channels' rings (`devices::NIC_RING_PAGES` each way: boot and reconnect), and room
/// to spare.
const POOL_PAGES: usize =
    40 + 2 * super::devices::FB_RING_PAGES + 4 * super::devices::NIC_RING_PAGES;

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

/// One NIC's shared memory, page aligned.
#[repr(C, align(4096))]
pub struct NicMemory {
    recv: [u8; NIC_RECV_BYTES],
    tx: [u8; NIC_TX_BYTES],
}

impl NicMemory {
    pub const fn new() -> Self {
        NicMemory {
            recv: [0; NIC_RECV_BYTES],
            tx: [0; NIC_TX_BYTES],
        }
    }
}

/// The two NICs' memory: the one opened at boot and the one the panic path reopens after
/// UNLOAD (fresh memory: a host that never answered the UNLOAD may still write the old one).
pub static mut NIC_MEMORY: [NicMemory; 2] = [NicMemory::new(), NicMemory::new()];

static NIC_TAKEN: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// The netvsc buffers of NIC `i` (0 boot, 1 reconnect), once each; `None` afterwards.
pub fn nic_buffers(i: usize) -> Option<vmbus::netvsc::Buffers<vmbus::device::PhysRegion>> {
    use vmbus::device::PhysRegion;
    if NIC_TAKEN.get(i)?.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: each index is handed out once (the swap above), so the memory is used only
    // through these regions from now on; identity-mapped like the whole image, va == gpa.
    Some(unsafe {
        let m = core::ptr::addr_of_mut!(NIC_MEMORY[i]);
        let recv = core::ptr::addr_of_mut!((*m).recv) as *mut u8;
        let tx = core::ptr::addr_of_mut!((*m).tx) as *mut u8;
        vmbus::netvsc::Buffers {
            recv: PhysRegion::new(recv, NIC_RECV_BYTES, recv as u64),
            send: None,
            tx: PhysRegion::new(tx, NIC_TX_BYTES, tx as u64),
        }
    })
}
