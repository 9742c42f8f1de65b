//! A [`DeviceChannel`] wrapper that turns a hang into a test failure (a step bound on
//! receive calls) and can flood the guest with an endless stream of one valid packet.

use std::cell::{Cell, RefCell};

use vmbus::device::{ChannelError, DeviceChannel, OutgoingPacket, Packet};

/// Receive calls after which a test counts the driver as hung.
pub const HANG_BOUND: u64 = 200_000;

pub struct Bounded<C> {
    pub inner: C,
    recvs: Cell<u64>,
    limit: u64,
    /// When set, every receive that finds the ring empty returns this raw packet instead.
    flood: RefCell<Option<Vec<u8>>>,
}

impl<C: DeviceChannel> Bounded<C> {
    pub fn new(inner: C) -> Self {
        Bounded {
            inner,
            recvs: Cell::new(0),
            limit: HANG_BOUND,
            flood: RefCell::new(None),
        }
    }
    /// Receive calls so far.
    pub fn recvs(&self) -> u64 {
        self.recvs.get()
    }
    /// Starts (Some) or stops (None) the flood of `raw` (descriptor included).
    pub fn flood(&self, raw: Option<Vec<u8>>) {
        *self.flood.borrow_mut() = raw;
    }
}

impl<C: DeviceChannel> DeviceChannel for Bounded<C> {
    fn send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        self.inner.send(pkt)
    }
    fn try_send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        self.inner.try_send(pkt)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError> {
        let n = self.recvs.get() + 1;
        self.recvs.set(n);
        assert!(
            n <= self.limit,
            "hang: {n} receive calls without returning (step bound {})",
            self.limit
        );
        let got = self.inner.recv(buf).map(|p| p.is_some())?;
        if got {
            return Ok(Some(vmbus::ring::parse_packet(buf)?));
        }
        match &*self.flood.borrow() {
            Some(raw) => {
                buf[..raw.len()].copy_from_slice(raw);
                Ok(Some(vmbus::ring::parse_packet(&buf[..raw.len()])?))
            }
            None => Ok(None),
        }
    }
    fn signal(&self) {
        self.inner.signal()
    }
    fn set_interrupt_mask(&self, masked: bool) {
        self.inner.set_interrupt_mask(masked)
    }
}
