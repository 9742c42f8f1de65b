//! The device layer: what the synthvid and netvsc drivers are written against, and its
//! production binding to the core [`Channel`].
//!
//! The drivers need five things from an open VMBus channel: send a packet (waiting for the
//! outbound-ring lock), send a packet only if the lock is free right now (the panic path,
//! `reference/hyperv-guest.md` §2.3), receive the next inbound packet, signal the host, and
//! mask the inbound interrupt. They also need GPADLs for the netvsc receive/send buffers and
//! guest memory shared with the host (VRAM, buffers). Packets are the ring's own types:
//! [`OutgoingPacket`] out, [`Packet`] in (parsed by [`crate::ring::parse_packet`]); failures
//! are the channel's one error type, [`ChannelError`]. Keeping [`DeviceChannel`] a trait lets
//! the protocols run against the ring-backed double in `vmbus-sim` as well as on
//! [`CoreChannel`].

pub use crate::channel::ChannelError;
pub use crate::ring::{GpaRange, OutgoingPacket, Packet, PacketKind, PacketType, Pfns};
use crate::{Channel, Clock, Connection, Hypervisor, PAGE_SIZE};

/// An open VMBus channel as the device drivers see it.
///
/// All methods take `&self`: the outbound ring has its own lock (so that the panic path can
/// `try_send` from another context), and the inbound side is read by one consumer.
pub trait DeviceChannel {
    /// Sends a packet, waiting (boundedly) for the outbound-ring lock if another context
    /// holds it. Signals the host when the ring's signalling rules say so.
    fn send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError>;
    /// Sends a packet only if the outbound-ring lock can be taken right now (a real
    /// compare-and-swap try-lock); returns [`ChannelError::Busy`] otherwise, without waiting.
    fn try_send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError>;
    /// Copies the next inbound packet (descriptor included) into `buf` and returns it parsed,
    /// or `None` if the inbound ring is empty.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError>;
    /// Signals the host (HvSignalEvent on the channel's connection id).
    fn signal(&self);
    /// Masks (polling mode) or unmasks (interrupt mode) the inbound ring's interrupt.
    fn set_interrupt_mask(&self, masked: bool);
}

impl<T: DeviceChannel + ?Sized> DeviceChannel for &T {
    fn send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        (**self).send(pkt)
    }
    fn try_send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        (**self).try_send(pkt)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError> {
        (**self).recv(buf)
    }
    fn signal(&self) {
        (**self).signal()
    }
    fn set_interrupt_mask(&self, masked: bool) {
        (**self).set_interrupt_mask(masked)
    }
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

/// A region of physical memory that the kernel maps 1:1 (VRAM from the GOP or the VMBus
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

/// Lock attempts a waiting [`DeviceChannel::send`] on a [`CoreChannel`] makes before it
/// reports `Busy`.
pub const SEND_LOCK_SPINS: u32 = 1 << 24;

/// [`GpadlMaker`] over a [`Connection`] for one channel (`relid`).
pub struct ConnectionGpadls<'c, 's> {
    conn: &'c mut Connection<'s>,
    hv: &'c dyn Hypervisor,
    clock: &'c dyn Clock,
    relid: u32,
}

impl<'c, 's> ConnectionGpadls<'c, 's> {
    /// GPADLs for channel `relid` of `conn`.
    pub fn new(
        conn: &'c mut Connection<'s>,
        hv: &'c dyn Hypervisor,
        clock: &'c dyn Clock,
        relid: u32,
    ) -> Self {
        ConnectionGpadls {
            conn,
            hv,
            clock,
            relid,
        }
    }
}

impl GpadlMaker for ConnectionGpadls<'_, '_> {
    fn create(&mut self, gpa: u64, len: usize) -> Result<u32, ChannelError> {
        let Some(range) = (gpa.is_multiple_of(PAGE_SIZE as u64))
            .then(|| u32::try_from(len).ok())
            .flatten()
            .filter(|&l| l > 0)
            .map(|l| GpaRange::contiguous(gpa, l))
        else {
            return Err(ChannelError::Gpadl(0));
        };
        self.conn
            .create_gpadl(self.hv, self.clock, self.relid, &[range])
            .map(|id| id.0)
            .map_err(|e| {
                log::warn!("GPADL for channel {}: {e}", self.relid);
                ChannelError::Gpadl(0)
            })
    }
}

/// An open core channel as a [`DeviceChannel`].
pub struct CoreChannel<'a> {
    ch: &'a Channel,
    hv: &'a dyn Hypervisor,
}

impl<'a> CoreChannel<'a> {
    /// Binds `ch`, signalling through `hv` (the calling CPU's hypervisor handle).
    pub fn new(ch: &'a Channel, hv: &'a dyn Hypervisor) -> Self {
        CoreChannel { ch, hv }
    }
    /// The core channel.
    pub fn channel(&self) -> &Channel {
        self.ch
    }

    fn send_with(&self, pkt: &OutgoingPacket<'_>, wait: bool) -> Result<(), ChannelError> {
        let mut spins = 0u32;
        let mut guard = loop {
            match self.ch.try_lock_outbound() {
                Some(g) => break g,
                // Bounded: a holder that never returns (a CPU frozen inside a send) must not
                // hang this one.
                None if wait && spins < SEND_LOCK_SPINS => {
                    spins += 1;
                    core::hint::spin_loop()
                }
                None => return Err(ChannelError::Busy),
            }
        };
        guard.send(self.hv, pkt).map(|_| ())
    }
}

impl DeviceChannel for CoreChannel<'_> {
    fn send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        self.send_with(pkt, true)
    }
    fn try_send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        self.send_with(pkt, false)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError> {
        self.ch.try_recv(self.hv, buf)
    }
    fn signal(&self) {
        if let Err(e) = self.ch.signal(self.hv) {
            log::warn!("channel {}: signal failed: {e}", self.ch.relid());
        }
    }
    fn set_interrupt_mask(&self, masked: bool) {
        self.ch.set_polling(masked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_without_overflow() {
        assert_eq!(check_bounds(16, 0, 16), Ok(()));
        assert_eq!(check_bounds(16, 16, 0), Ok(()));
        assert_eq!(
            check_bounds(16, 8, 9),
            Err(ChannelError::OutOfBounds { offset: 8, len: 9 })
        );
        assert_eq!(
            check_bounds(16, usize::MAX, 2),
            Err(ChannelError::OutOfBounds {
                offset: usize::MAX,
                len: 2
            })
        );
    }

    #[test]
    fn spin_budget_expires_after_its_count() {
        let mut b = SpinBudget(2);
        assert!(!b.expired());
        assert!(!b.expired());
        assert!(b.expired());
        assert!(b.expired());
    }
}
