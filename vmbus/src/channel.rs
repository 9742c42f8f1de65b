//! An open VMBus channel: two rings in one GPADL, a real try-lock on the outbound side, and
//! HvSignalEvent signalling (ref §2.3, §4.5, §5).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use crate::connection::GpadlId;
use crate::hypercall;
use crate::platform::{Hypervisor, PhysPages};
use crate::ring::{parse_packet, Packet, Ring, RingError};
use crate::status::HvError;

pub use crate::ring::OutgoingPacket;

/// Why a channel direction was poisoned: the ring's framing could not be trusted, so the
/// reader (or writer) cannot step over the bad bytes and stays off that ring for good
/// (OpenVMM `vmbus_ring` treats a corrupt ring the same way; Linux clamps the lengths instead,
/// `hv_pkt_iter_first`). A bad packet whose framing was valid is consumed and reported, not
/// poisonous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poison {
    /// A ring index out of range or misaligned ([`RingError::BadIndex`]).
    BadIndex,
    /// A packet descriptor with impossible offsets or lengths
    /// ([`RingError::BadDescriptor`]).
    BadDescriptor,
}

impl Poison {
    /// The poison a ring error causes, if any.
    pub fn of(e: &RingError) -> Option<Poison> {
        match e {
            RingError::BadIndex { .. } => Some(Poison::BadIndex),
            RingError::BadDescriptor { .. } => Some(Poison::BadDescriptor),
            _ => None,
        }
    }
    pub(crate) fn code(self) -> u8 {
        match self {
            Poison::BadIndex => 1,
            Poison::BadDescriptor => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Poison> {
        match c {
            1 => Some(Poison::BadIndex),
            2 => Some(Poison::BadDescriptor),
            _ => None,
        }
    }
}

impl core::fmt::Display for Poison {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Poison::BadIndex => "corrupt ring index",
            Poison::BadDescriptor => "corrupt packet descriptor",
        })
    }
}

/// Why a channel operation failed: the one error type of the core channel ([`Channel`]) and
/// of the device layer the drivers use ([`crate::device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// `try_send` found the outbound-ring lock held by someone else.
    #[error("outbound ring lock is held")]
    Busy,
    /// The outbound ring has no room for the packet.
    #[error("outbound ring is full")]
    Full,
    /// The packet does not fit in the ring or in the caller's buffer (an inbound one was
    /// consumed, so the next read gets the next packet).
    #[error("packet too large ({0} bytes)")]
    TooLarge(usize),
    /// The channel is closed or was never opened.
    #[error("channel closed")]
    Closed,
    /// An inbound packet was malformed; it was consumed, so the next read gets the next one.
    #[error("malformed packet (dropped): {0}")]
    Malformed(RingError),
    /// The ring in that direction was found corrupt (an index or a descriptor that cannot be
    /// stepped over): it is no longer read or written, and every later call fails the same
    /// way.
    #[error("channel poisoned ({0}): no longer read or written")]
    Poisoned(Poison),
    /// HvSignalEvent failed.
    #[error("signalling the host failed: {0}")]
    Signal(#[from] HvError),
    /// GPADL creation failed (status from the host, 0 if there was none).
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

impl From<RingError> for ChannelError {
    /// A ring error as the caller sees it. Whether a corrupt index or descriptor poisons the
    /// channel is [`Channel`]'s decision, made before it converts.
    fn from(e: RingError) -> Self {
        match e {
            RingError::Full { .. } => ChannelError::Full,
            RingError::TooLarge(n) => ChannelError::TooLarge(n),
            RingError::PacketDropped { needed, .. } => ChannelError::TooLarge(needed),
            e => ChannelError::Malformed(e),
        }
    }
}

/// What a send did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    /// Whether the host was signalled (empty → non-empty with `interrupt_mask == 0`).
    pub signalled: bool,
}

/// An open channel. Created by [`crate::Connection::open_channel`].
pub struct Channel {
    pub(crate) relid: u32,
    pub(crate) connection_id: u32,
    pub(crate) dedicated_interrupt: bool,
    pub(crate) gpadl: GpadlId,
    pub(crate) pages: PhysPages,
    pub(crate) send_pages: usize,
    outbound: Ring,
    inbound: Ring,
    lock: AtomicBool,
    /// [`Poison::code`] of the inbound ring, 0 while healthy.
    poison_rx: AtomicU8,
    /// [`Poison::code`] of the outbound ring, 0 while healthy.
    poison_tx: AtomicU8,
    /// Send half of the connection's interrupt page (pre-5.0 event bits), or null.
    int_page_send: AtomicPtr<u8>,
}

impl core::fmt::Debug for Channel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("relid", &self.relid)
            .field("connection_id", &self.connection_id)
            .field("gpadl", &self.gpadl)
            .finish()
    }
}

impl Channel {
    /// # Safety
    /// `pages` must be the channel's ring memory (outbound ring first, `send_pages` pages),
    /// owned by the channel; `int_page_send`, if non-null, must point at 2048 bytes of event
    /// bits that outlive the channel.
    pub(crate) unsafe fn new(
        relid: u32,
        connection_id: u32,
        dedicated_interrupt: bool,
        gpadl: GpadlId,
        pages: PhysPages,
        send_pages: usize,
        int_page_send: *mut u8,
    ) -> Result<Self, RingError> {
        let recv_pages = pages.count().saturating_sub(send_pages);
        // SAFETY: both halves lie inside `pages` (caller contract).
        let outbound = unsafe { Ring::new(pages.va(), send_pages * crate::PAGE_SIZE)? };
        // SAFETY: as above.
        let inbound = unsafe {
            Ring::new(
                pages.va().wrapping_add(send_pages * crate::PAGE_SIZE),
                recv_pages * crate::PAGE_SIZE,
            )?
        };
        // The guest sets feat_pending_send_sz on the guest→host ring (ref §5.1).
        outbound.set_feature_bits(crate::ring::ctrl::FEAT_PENDING_SEND_SZ);
        Ok(Self {
            relid,
            connection_id,
            dedicated_interrupt,
            gpadl,
            pages,
            send_pages,
            outbound,
            inbound,
            lock: AtomicBool::new(false),
            poison_rx: AtomicU8::new(0),
            poison_tx: AtomicU8::new(0),
            int_page_send: AtomicPtr::new(int_page_send),
        })
    }

    pub fn relid(&self) -> u32 {
        self.relid
    }
    pub fn gpadl(&self) -> GpadlId {
        self.gpadl
    }
    /// The connection id HvSignalEvent uses (the offer's `connection_id`).
    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }
    /// The ring memory (outbound ring first).
    pub fn ring_pages(&self) -> PhysPages {
        self.pages
    }
    /// Pages of the outbound ring, control page included (the inbound ring starts there).
    pub fn send_ring_pages(&self) -> usize {
        self.send_pages
    }
    /// The outbound (guest→host) ring.
    pub fn outbound(&self) -> &Ring {
        &self.outbound
    }
    /// The inbound (host→guest) ring.
    pub fn inbound(&self) -> &Ring {
        &self.inbound
    }

    /// Why the inbound ring was poisoned, if it was: [`Channel::try_recv`] no longer reads it.
    pub fn rx_poisoned(&self) -> Option<Poison> {
        Poison::from_code(self.poison_rx.load(Ordering::Acquire))
    }
    /// Why the outbound ring was poisoned, if it was: sends no longer write it.
    pub fn tx_poisoned(&self) -> Option<Poison> {
        Poison::from_code(self.poison_tx.load(Ordering::Acquire))
    }
    /// Why either ring was poisoned (inbound first), if one was.
    pub fn poisoned(&self) -> Option<Poison> {
        self.rx_poisoned().or_else(|| self.tx_poisoned())
    }

    /// Take the outbound-ring lock with one compare-and-swap; `None` if someone holds it.
    /// Never spins (ref §2.3: Linux only peeks with `spin_is_locked`; this is a real
    /// try-lock).
    pub fn try_lock_outbound(&self) -> Option<OutboundGuard<'_>> {
        self.lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| OutboundGuard { channel: self })
    }

    pub fn is_outbound_locked(&self) -> bool {
        self.lock.load(Ordering::Relaxed)
    }

    /// Polling mode sets our inbound `interrupt_mask` to 1 so the host does not interrupt
    /// (ref §5.2).
    pub fn set_polling(&self, polling: bool) {
        self.inbound.set_interrupt_mask(polling as u32);
    }

    /// Signal the host (Linux `vmbus_set_event`): set bit `relid` in the interrupt page's send
    /// half if the channel has no dedicated interrupt, then HvSignalEvent on the offer's
    /// connection id.
    pub fn signal(&self, hv: &dyn Hypervisor) -> Result<(), HvError> {
        let page = self.int_page_send.load(Ordering::Acquire);
        if !self.dedicated_interrupt && !page.is_null() && self.relid < 2048 * 8 {
            let word = (self.relid as usize / 64) * 8;
            if word + 8 <= 2048 {
                // SAFETY: 8-byte aligned word inside the 2048-byte send half (checked).
                let w = unsafe { crate::mem::atomic_u64(page.wrapping_add(word)) };
                w.fetch_or(1 << (self.relid % 64), Ordering::AcqRel);
            }
        }
        hypercall::signal_event(hv, self.connection_id, 0)
    }

    /// Receive the next inbound packet into `buf` (copied out and validated; the ring slot is
    /// released). Signals the host when its `pending_send_sz` threshold is crossed.
    pub fn try_recv<'b>(
        &self,
        hv: &dyn Hypervisor,
        buf: &'b mut [u8],
    ) -> Result<Option<Packet<'b>>, ChannelError> {
        if let Some(p) = self.rx_poisoned() {
            return Err(ChannelError::Poisoned(p));
        }
        let out = match self.inbound.read(buf) {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(None),
            Err(e) => {
                // A corrupt index or descriptor cannot be stepped over: stop reading this
                // ring for good, so no caller can spin on it. The details are said here,
                // once; every caller sees `Poisoned` from the first error on.
                if let Some(p) = Poison::of(&e) {
                    log::error!("channel {}: inbound {e}", self.relid);
                    self.poison_rx.store(p.code(), Ordering::Release);
                    return Err(ChannelError::Poisoned(p));
                }
                return Err(e.into());
            }
        };
        // The packet is consumed: a failed signal must not lose it (the host notices free
        // space on its next look at the ring anyway).
        if out.signal {
            if let Err(e) = self.signal(hv) {
                log::warn!("channel {}: signalling freed space failed: {e}", self.relid);
            }
        }
        Ok(Some(parse_packet(&buf[..out.len])?))
    }
}

/// Holds the outbound-ring lock; released on drop.
pub struct OutboundGuard<'c> {
    channel: &'c Channel,
}

impl OutboundGuard<'_> {
    /// Write one packet; signal the host if the ring went from empty to non-empty and the
    /// host's `interrupt_mask` is 0 (ref §5.2). `Full` when there is not enough room.
    pub fn send(
        &mut self,
        hv: &dyn Hypervisor,
        packet: &OutgoingPacket<'_>,
    ) -> Result<SendOutcome, ChannelError> {
        if let Some(p) = self.channel.tx_poisoned() {
            return Err(ChannelError::Poisoned(p));
        }
        let out = packet
            .write_to(&self.channel.outbound)
            .map_err(|e| match Poison::of(&e) {
                Some(p) => {
                    log::error!("channel {}: outbound {e}", self.channel.relid);
                    self.channel.poison_tx.store(p.code(), Ordering::Release);
                    ChannelError::Poisoned(p)
                }
                None => e.into(),
            })?;
        if out.signal {
            self.channel.signal(hv)?;
        }
        Ok(SendOutcome {
            signalled: out.signal,
        })
    }
}

impl Drop for OutboundGuard<'_> {
    fn drop(&mut self) {
        self.channel.lock.store(false, Ordering::Release);
    }
}
