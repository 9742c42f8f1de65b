//! The small channel interface the synthvid and netvsc drivers are written against.
//!
//! The drivers only need four things from an open VMBus channel: send a packet (waiting for
//! the outbound-ring lock), send a packet only if the lock is free right now (the panic path,
//! `reference/hyperv-guest.md` §2.3), receive the next inbound packet, and signal the host.
//! They also need GPADLs for the netvsc receive/send buffers and a way to share guest memory
//! (VRAM, buffers) with the host. Keeping this a trait lets the protocols be tested against
//! a ring-backed double (`vmbus-sim`) and adapted to the core channel with a thin `impl`.

use thiserror::Error;

/// `VM_PKT_DATA_INBAND` (Linux `include/linux/hyperv.h`, `enum vmbus_packet_type`).
pub const PKT_DATA_INBAND: u16 = 6;
/// `VM_PKT_DATA_USING_XFER_PAGES` (Linux `include/linux/hyperv.h`).
pub const PKT_DATA_USING_XFER_PAGES: u16 = 7;
/// `VM_PKT_DATA_USING_GPA_DIRECT` (Linux `include/linux/hyperv.h`).
pub const PKT_DATA_USING_GPA_DIRECT: u16 = 9;
/// `VM_PKT_COMP` (Linux `include/linux/hyperv.h`).
pub const PKT_COMP: u16 = 0xB;
/// `VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED` (Linux `include/linux/hyperv.h`).
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;
/// Size of `struct vmpacket_descriptor` (Linux `include/linux/hyperv.h`): type, offset8, len8,
/// flags (u16 each) and trans_id (u64).
pub const DESCRIPTOR_LEN: usize = 16;
/// Guest page size used for PFNs in GPA-direct packets (`HV_HYP_PAGE_SIZE`, Linux
/// `include/hyperv/hvgdk.h`).
pub const PAGE_SIZE: usize = 4096;

/// What went wrong on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChannelError {
    /// `try_send` found the outbound-ring lock held by someone else.
    #[error("outbound ring lock is held")]
    Busy,
    /// The outbound ring has no room for the packet.
    #[error("outbound ring is full")]
    Full,
    /// The packet does not fit in the ring or in the caller's buffer.
    #[error("packet too large ({0} bytes)")]
    TooLarge(usize),
    /// The channel is closed or was never opened.
    #[error("channel closed")]
    Closed,
    /// An inbound packet was malformed; it was consumed, so the next read gets the next one.
    #[error("malformed packet (dropped)")]
    Malformed,
    /// The channel's ring was found corrupt (an index or a descriptor that cannot be stepped
    /// over): it is no longer read (or written). Every later call fails the same way.
    #[error("channel poisoned: {0}")]
    Poisoned(crate::channel::Poison),
    /// GPADL creation failed (status from the host).
    #[error("GPADL creation failed (status {0:#x})")]
    Gpadl(u32),
    /// Access outside a shared-memory region.
    #[error("shared memory access out of bounds (offset {offset}, len {len})")]
    OutOfBounds {
        /// Byte offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
    },
}

/// One page of a GPA-direct packet (`struct hv_page_buffer`, Linux `include/linux/hyperv.h`:
/// `{u32 len; u32 offset; u64 pfn}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBuffer {
    /// Bytes used in this page.
    pub len: u32,
    /// Offset of the data in this page.
    pub offset: u32,
    /// Guest page frame number (GPA >> 12).
    pub pfn: u64,
}

/// A packet to send on the outbound ring.
#[derive(Debug, Clone, Copy)]
pub enum OutPacket<'a> {
    /// `VM_PKT_DATA_INBAND`.
    InBand {
        /// Payload (the descriptor and padding are added by the channel).
        payload: &'a [u8],
        /// Transaction id echoed in the completion.
        trans_id: u64,
        /// Set `VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED`.
        completion_requested: bool,
    },
    /// `VM_PKT_COMP`, completing an inbound packet with the same transaction id.
    Completion {
        /// Payload of the completion.
        payload: &'a [u8],
        /// Transaction id of the packet being completed.
        trans_id: u64,
    },
    /// `VM_PKT_DATA_USING_GPA_DIRECT` (`vmbus_channel_packet_page_buffer`): data in guest pages
    /// named by PFN, plus an in-band payload.
    GpaDirect {
        /// The pages.
        pages: &'a [PageBuffer],
        /// In-band payload that follows the page list.
        payload: &'a [u8],
        /// Transaction id echoed in the completion.
        trans_id: u64,
        /// Set `VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED`.
        completion_requested: bool,
    },
}

/// An inbound packet, copied out of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPacket<'a> {
    /// `vmpacket_descriptor.type`.
    pub kind: u16,
    /// `vmpacket_descriptor.flags`.
    pub flags: u16,
    /// `vmpacket_descriptor.trans_id`.
    pub trans_id: u64,
    /// Bytes between the 16-byte descriptor and `offset8 * 8` (e.g. the transfer-page header
    /// of a `VM_PKT_DATA_USING_XFER_PAGES` packet).
    pub ext: &'a [u8],
    /// Bytes from `offset8 * 8` to `len8 * 8`.
    pub payload: &'a [u8],
}

impl<'a> InPacket<'a> {
    /// Parses a raw packet (descriptor included, trailer excluded) as stored in a VMBus ring
    /// (`reference/hyperv-guest.md` §5.3). Checks `len8 >= offset8 >= 2` like OpenVMM
    /// `vmbus_ring` and that `len8 * 8` fits in `raw`.
    pub fn parse(raw: &'a [u8]) -> Result<Self, ChannelError> {
        if raw.len() < DESCRIPTOR_LEN {
            return Err(ChannelError::Malformed);
        }
        let kind = u16::from_le_bytes([raw[0], raw[1]]);
        let offset = usize::from(u16::from_le_bytes([raw[2], raw[3]])) * 8;
        let len = usize::from(u16::from_le_bytes([raw[4], raw[5]])) * 8;
        let flags = u16::from_le_bytes([raw[6], raw[7]]);
        let mut tid = [0u8; 8];
        tid.copy_from_slice(&raw[8..16]);
        if offset < DESCRIPTOR_LEN || len < offset || len > raw.len() {
            return Err(ChannelError::Malformed);
        }
        Ok(InPacket {
            kind,
            flags,
            trans_id: u64::from_le_bytes(tid),
            ext: &raw[DESCRIPTOR_LEN..offset],
            payload: &raw[offset..len],
        })
    }

    /// Whether the sender asked for a completion.
    pub fn completion_requested(&self) -> bool {
        self.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

/// An open VMBus channel as the device drivers see it.
///
/// All methods take `&self`: the outbound ring has its own lock (so that the panic path can
/// `try_send` from another context), and the inbound side is read by one consumer.
pub trait DeviceChannel {
    /// Sends a packet, waiting for the outbound-ring lock if another context holds it.
    /// Signals the host when the ring's signalling rules say so.
    fn send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError>;
    /// Sends a packet only if the outbound-ring lock can be taken right now (a real
    /// compare-and-swap try-lock); returns [`ChannelError::Busy`] otherwise, without waiting.
    fn try_send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError>;
    /// Copies the next inbound packet (descriptor included) into `buf` and returns it parsed,
    /// or `None` if the inbound ring is empty.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<InPacket<'b>>, ChannelError>;
    /// Signals the host (HvSignalEvent on the channel's connection id).
    fn signal(&self);
    /// Masks (polling mode) or unmasks (interrupt mode) the inbound ring's interrupt.
    fn set_interrupt_mask(&self, masked: bool);
}

/// Creates GPADLs (netvsc's receive and send buffers). Only needed during bring-up, so the
/// caller lends its VMBus connection for that long and no longer.
pub trait GpadlMaker {
    /// A GPADL over `len` bytes of physically contiguous guest memory at page-aligned `gpa`;
    /// returns its handle.
    fn create(&mut self, gpa: u64, len: usize) -> Result<u32, ChannelError>;
}

impl<F: FnMut(u64, usize) -> Result<u32, ChannelError>> GpadlMaker for F {
    fn create(&mut self, gpa: u64, len: usize) -> Result<u32, ChannelError> {
        self(gpa, len)
    }
}

impl<T: DeviceChannel + ?Sized> DeviceChannel for &T {
    fn send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError> {
        (**self).send(pkt)
    }
    fn try_send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError> {
        (**self).try_send(pkt)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<InPacket<'b>>, ChannelError> {
        (**self).recv(buf)
    }
    fn signal(&self) {
        (**self).signal()
    }
    fn set_interrupt_mask(&self, masked: bool) {
        (**self).set_interrupt_mask(masked)
    }
}

/// Guest memory shared with the host: VRAM, netvsc buffers. Physically contiguous from
/// [`DmaMemory::gpa`]. Accessed by copy, because the host may write it at any time.
pub trait DmaMemory {
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Guest physical address of byte 0 (page aligned for GPADLs and GPA-direct pages).
    fn gpa(&self) -> u64;
    /// Copies `out.len()` bytes from `offset`.
    fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ChannelError>;
    /// Copies `data` to `offset`.
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), ChannelError>;
}

/// Checks that `offset..offset+len` lies inside a region of `size` bytes.
pub fn check_bounds(size: usize, offset: usize, len: usize) -> Result<(), ChannelError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ChannelError::OutOfBounds { offset, len }),
    }
}

/// A region of physical memory that the appliance maps 1:1 (VRAM from the GOP or the VMBus
/// MMIO range, netvsc buffers from a static pool).
#[derive(Debug)]
pub struct PhysRegion {
    base: *mut u8,
    len: usize,
    gpa: u64,
}

// SAFETY: the region is plain memory shared with the host; every access is a bounds-checked
// volatile copy, so concurrent use from several contexts cannot create references to it.
unsafe impl Send for PhysRegion {}
// SAFETY: as above: `read`/`write` never hand out references into the region.
unsafe impl Sync for PhysRegion {}

impl PhysRegion {
    /// Wraps `len` bytes at virtual address `base` whose guest physical address is `gpa`.
    ///
    /// # Safety
    /// `base..base+len` must be mapped, writable, not used as Rust memory by anything else,
    /// and stay so for the life of the value; `gpa` must be its physical address.
    pub const unsafe fn new(base: *mut u8, len: usize, gpa: u64) -> Self {
        PhysRegion { base, len, gpa }
    }
}

impl DmaMemory for PhysRegion {
    fn len(&self) -> usize {
        self.len
    }
    fn gpa(&self) -> u64 {
        self.gpa
    }
    fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ChannelError> {
        check_bounds(self.len, offset, out.len())?;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: bounds checked above; the constructor's contract makes the range valid
            // device-shared memory, read with volatile loads because the host writes it.
            *b = unsafe { core::ptr::read_volatile(self.base.add(offset + i)) };
        }
        Ok(())
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), ChannelError> {
        check_bounds(self.len, offset, data.len())?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: bounds checked above; the constructor's contract makes the range valid,
            // writable memory that no Rust reference aliases.
            unsafe { core::ptr::write_volatile(self.base.add(offset + i), *b) };
        }
        Ok(())
    }
}

/// A bound on how long a driver waits for the host: checked once per poll iteration.
pub trait Deadline {
    /// True once the wait should give up.
    fn expired(&mut self) -> bool;
}

/// A deadline counted in poll iterations (for contexts with no clock, e.g. early boot).
#[derive(Debug, Clone, Copy)]
pub struct SpinBudget(pub u64);

impl Deadline for SpinBudget {
    fn expired(&mut self) -> bool {
        if self.0 == 0 {
            return true;
        }
        self.0 -= 1;
        false
    }
}

impl<F: FnMut() -> bool> Deadline for F {
    fn expired(&mut self) -> bool {
        self()
    }
}
