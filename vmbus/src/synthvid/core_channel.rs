//! [`DeviceChannel`] over the VMBus core's [`crate::Channel`]: the production binding of the
//! synthvid and netvsc drivers.
//!
//! `send` takes the outbound lock with the core's compare-and-swap `try_lock_outbound`,
//! retrying until it is free; `try_send` tries once and reports `Busy` (the panic path,
//! `reference/hyperv-guest.md` §2.3). GPADLs for netvsc's bring-up come from
//! [`ConnectionGpadls`], which borrows the `Connection` only for that long.

pub use super::chan::GpadlMaker;
use super::chan::{ChannelError, DeviceChannel, InPacket, OutPacket, PAGE_SIZE};
use crate::channel::{ChannelError as CoreError, Poison};
use crate::ring::{GpaRange, OutgoingPacket, Pfns, RingError};
use crate::{Channel, Clock, Connection, Hypervisor};

/// Lock attempts a waiting [`DeviceChannel::send`] makes before it reports `Busy`.
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
        if !gpa.is_multiple_of(PAGE_SIZE as u64) || len == 0 || len > u32::MAX as usize {
            return Err(ChannelError::Gpadl(0));
        }
        let range = [GpaRange {
            byte_count: len as u32,
            byte_offset: 0,
            pfns: Pfns::Contiguous {
                first: gpa / PAGE_SIZE as u64,
                count: len.div_ceil(PAGE_SIZE),
            },
        }];
        self.conn
            .create_gpadl(self.hv, self.clock, self.relid, &range)
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

    fn send_with(&self, pkt: &OutPacket<'_>, wait: bool) -> Result<(), ChannelError> {
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
        // GPA-direct: one single-page range per page buffer (at most 8 per packet here).
        let mut pfns = [0u64; 8];
        let mut ranges = [GpaRange {
            byte_count: 0,
            byte_offset: 0,
            pfns: Pfns::List(&[]),
        }; 8];
        let out = match *pkt {
            OutPacket::InBand {
                payload,
                trans_id,
                completion_requested,
            } => OutgoingPacket::InBand {
                trans_id,
                completion_requested,
                data: payload,
            },
            OutPacket::Completion { payload, trans_id } => OutgoingPacket::Completion {
                trans_id,
                data: payload,
            },
            OutPacket::GpaDirect {
                pages,
                payload,
                trans_id,
                completion_requested,
            } => {
                if pages.len() > pfns.len() {
                    return Err(ChannelError::TooLarge(pages.len()));
                }
                for (i, p) in pages.iter().enumerate() {
                    pfns[i] = p.pfn;
                }
                for (i, p) in pages.iter().enumerate() {
                    ranges[i] = GpaRange {
                        byte_count: p.len,
                        byte_offset: p.offset,
                        pfns: Pfns::List(&pfns[i..i + 1]),
                    };
                }
                OutgoingPacket::GpaDirect {
                    trans_id,
                    completion_requested,
                    ranges: &ranges[..pages.len()],
                    data: payload,
                }
            }
        };
        guard.send(self.hv, &out).map(|_| ()).map_err(map_err)
    }
}

fn map_err(e: CoreError) -> ChannelError {
    match e {
        CoreError::Ring(RingError::Full { .. }) => ChannelError::Full,
        CoreError::Ring(RingError::TooLarge(n)) => ChannelError::TooLarge(n),
        CoreError::Ring(RingError::PacketDropped { needed, .. }) => ChannelError::TooLarge(needed),
        CoreError::Ring(e) => match Poison::of(&e) {
            // The core channel poisoned itself: say so from the first error on.
            Some(p) => ChannelError::Poisoned(p),
            // Consumed: the next read gets the next packet.
            None => ChannelError::Malformed,
        },
        CoreError::Signal(_) => ChannelError::Closed,
        CoreError::Poisoned(p) => ChannelError::Poisoned(p),
    }
}

impl DeviceChannel for CoreChannel<'_> {
    fn send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError> {
        self.send_with(pkt, true)
    }
    fn try_send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError> {
        self.send_with(pkt, false)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<InPacket<'b>>, ChannelError> {
        let len = match self.ch.try_recv(self.hv, buf) {
            Ok(Some(p)) => usize::from(p.desc.len8) * 8,
            Ok(None) => return Ok(None),
            Err(e) => return Err(map_err(e)),
        };
        // The core validated and copied the packet; re-read it as the drivers' view.
        InPacket::parse(&buf[..len]).map(Some)
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
