//! The VMBus connection: version negotiation, offers, GPADLs, channel open/close, rescind, and
//! the run-once UNLOAD of the panic path (ref §2.2, §2.4, §4).
//!
//! This file holds the types, the connection state and the message plumbing every step uses
//! (post, take one message, wait for a reply, poll); the steps are in [`negotiate`] (connect),
//! [`channels`] (offers, GPADLs, open/close) and [`unload`].

use core::sync::atomic::{AtomicU8, Ordering};

use crate::guid::Guid;
use crate::hypercall::{HV_MESSAGE_PAYLOAD_SIZE, VMBUS_MESSAGE_TYPE};
use crate::msg::{self, HostMessage, MessageError, MessageType, Offer};
use crate::platform::{Clock, Hypervisor, PhysPages};
use crate::regs::SynReg;
use crate::ring::RingError;
use crate::status::HvError;
use crate::synic::{Synic, HVMSG_TIMER_EXPIRED, VMBUS_MESSAGE_SINT};
use crate::version::{self, Version};

pub use crate::hypercall::{post_with_retries, POST_RETRIES, SPIN_LIMIT};
pub use crate::ring::{GpaRange, Pfns};

mod channels;
mod negotiate;
mod unload;

/// Connection ids (ref §4.2, Linux `drivers/hv/hyperv_vmbus.h`).
pub mod connection_id {
    /// `VMBUS_MESSAGE_CONNECTION_ID`: INITIATE_CONTACT below 5.0, and all messages below 5.0.
    pub const MESSAGE: u32 = 1;
    /// `VMBUS_MESSAGE_CONNECTION_ID_4`: INITIATE_CONTACT from 5.0.
    pub const MESSAGE_4: u32 = 4;
}

/// First GPADL handle (Linux `drivers/hv/connection.c`: `next_gpadl_handle =
/// ATOMIC_INIT(0xE1E10)`).
pub const FIRST_GPADL_HANDLE: u32 = 0xE1E10;

/// Offers the connection keeps (fixed table, no heap).
pub const MAX_OFFERS: usize = 32;

const STATE_DISCONNECTED: u8 = 0;
const STATE_CONNECTED: u8 = 1;

/// A GPADL handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct GpadlId(pub u32);

/// How to connect.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions<'a> {
    /// Versions to try, newest first (versions below 3.0 are skipped).
    pub versions: &'a [Version],
    /// VP that receives replies (`target_vcpu`); `None` = the calling CPU. Replies are
    /// polled, and only that VP's EOM releases replies queued behind its slot, so requests
    /// (everything but `unload`) must run on this VP: another value is refused.
    pub target_vp: Option<u32>,
    /// How long to wait for each reply, in 100 ns units.
    pub reply_timeout: u64,
}

impl Default for ConnectOptions<'_> {
    fn default() -> Self {
        Self {
            versions: version::SUPPORTED,
            target_vp: None,
            reply_timeout: 50_000_000,
        }
    }
}

/// How to open a channel.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Outbound ring pages including its control page (≥ 2).
    pub send_ring_pages: usize,
    /// Inbound ring pages including its control page (≥ 2).
    pub recv_ring_pages: usize,
    /// VP the host signals for this channel; `None` = the connection's target VP.
    pub target_vp: Option<u32>,
    pub user_data: [u8; 120],
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            send_ring_pages: 4,
            recv_ring_pages: 4,
            target_vp: None,
            user_data: [0; 120],
        }
    }
}

/// Connection errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmbusError {
    #[error(transparent)]
    Hv(#[from] HvError),
    #[error("SynIC is not enabled on VP {0} (enable it before connecting)")]
    NoSynic(u32),
    #[error("the host accepted none of the offered VMBus versions")]
    NoVersionAccepted,
    #[error("the host accepted version {version} but reported connection state {state}")]
    ConnectionFailed { version: Version, state: u8 },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("no offer with relid {0}")]
    UnknownRelid(u32),
    #[error("channel {0} was rescinded by the host")]
    Rescinded(u32),
    #[error("GPADL creation failed with status {0:#x}")]
    GpadlFailed(u32),
    #[error("GPADL too large for one GPADL header ({0} bytes of ranges)")]
    GpadlTooLarge(usize),
    #[error("opening channel {relid} failed with status {status:#x}")]
    OpenFailed { relid: u32, status: u32 },
    #[error("ring size invalid: {0}")]
    Ring(#[from] RingError),
    #[error("the kernel's page allocator is out of pages")]
    OutOfPages,
    #[error("not connected (unloaded)")]
    NotConnected,
    #[error("VMBus requests must run on the connection's target VP {target}, not VP {caller} (its EOMs release queued replies)")]
    WrongCpu { target: u32, caller: u32 },
}

/// Something that happened on the connection outside of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Offer(u32),
    Rescinded(u32),
    TimerExpired,
    Ignored(MessageType),
    Malformed(MessageError),
}

/// Why UNLOAD was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnloadSkip {
    /// Another caller already unloaded this connection (the run-once guard).
    AlreadyUnloaded,
    /// The negotiated version is below 3.0 (ref §2.4).
    VersionTooOld(Version),
}

/// The outcome of [`Connection::unload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnloadOutcome {
    /// UNLOAD_RESPONSE arrived in `responder_vp`'s SINT2 slot.
    Done {
        responder_vp: u32,
        waited: u64,
    },
    Skipped(UnloadSkip),
    /// No UNLOAD_RESPONSE by the deadline.
    TimedOut {
        waited: u64,
    },
    /// Posting UNLOAD failed.
    Failed(HvError),
}

const EMPTY_OFFER: Offer = Offer {
    if_type: Guid([0; 16]),
    if_instance: Guid([0; 16]),
    chn_flags: 0,
    mmio_megabytes: 0,
    user_def: [0; 120],
    sub_channel_index: 0,
    child_relid: 0,
    monitor_id: 0,
    monitor_allocated: false,
    is_dedicated_interrupt: false,
    connection_id: 0,
};

/// A message to post, built on the stack.
struct Out {
    buf: [u8; HV_MESSAGE_PAYLOAD_SIZE],
    len: usize,
}

impl Out {
    fn new() -> Self {
        Self {
            buf: [0; HV_MESSAGE_PAYLOAD_SIZE],
            len: 0,
        }
    }
    fn of(bytes: &[u8]) -> Self {
        let mut o = Self::new();
        o.push(bytes);
        o
    }
    fn push(&mut self, b: &[u8]) {
        let end = (self.len + b.len()).min(HV_MESSAGE_PAYLOAD_SIZE);
        self.buf[self.len..end].copy_from_slice(&b[..end - self.len]);
        self.len = end;
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A VMBus connection.
pub struct Connection<'s> {
    synic: &'s Synic,
    state: AtomicU8,
    version: Version,
    msg_conn_id: u32,
    target_vp: u32,
    offers: [Offer; MAX_OFFERS],
    rescinded: [bool; MAX_OFFERS],
    opened: [bool; MAX_OFFERS],
    offer_count: usize,
    dropped_offers: u32,
    malformed: u32,
    timer_messages: u32,
    next_gpadl: u32,
    /// Interrupt page (first half receive, second half send) + 2 monitor pages.
    pages: PhysPages,
    reply_timeout: u64,
    poll_limit: u32,
}

impl core::fmt::Debug for Connection<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("version", &self.version)
            .field("msg_conn_id", &self.msg_conn_id)
            .field("target_vp", &self.target_vp)
            .field("connected", &self.is_connected())
            .field("offers", &self.offer_count)
            .finish()
    }
}

impl<'s> Connection<'s> {
    pub fn version(&self) -> Version {
        self.version
    }
    /// Iterations after which a polling loop gives up even if the clock never reaches its
    /// deadline (a backstop against a broken clock; default [`SPIN_LIMIT`]).
    pub fn set_poll_limit(&mut self, limit: u32) {
        self.poll_limit = limit.max(1);
    }
    pub fn target_vp(&self) -> u32 {
        self.target_vp
    }
    /// The connection id messages go to after INITIATE_CONTACT.
    pub fn message_connection_id(&self) -> u32 {
        self.msg_conn_id
    }
    pub fn is_connected(&self) -> bool {
        self.state.load(Ordering::Acquire) == STATE_CONNECTED
    }
    /// Host messages dropped as malformed so far.
    pub fn malformed_messages(&self) -> u32 {
        self.malformed
    }
    /// Offers dropped because the table was full.
    pub fn dropped_offers(&self) -> u32 {
        self.dropped_offers
    }
    /// HVMSG_TIMER_EXPIRED messages seen in the VMBus slot (stimer message mode on SINT2).
    pub fn timer_messages(&self) -> u32 {
        self.timer_messages
    }

    fn post_page(&self, hv: &dyn Hypervisor) -> Result<PhysPages, VmbusError> {
        let vp = hv.read_reg(SynReg::VpIndex)? as u32;
        self.synic
            .post_page(vp)
            .or_else(|| self.synic.post_page(self.target_vp))
            .ok_or(VmbusError::NoSynic(vp))
    }

    fn post_to(
        &self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        conn_id: u32,
        bytes: &[u8],
    ) -> Result<(), VmbusError> {
        let page = self.post_page(hv)?;
        let deadline = clock.now().saturating_add(self.reply_timeout);
        Ok(post_with_retries(
            hv, clock, page, conn_id, bytes, deadline,
        )?)
    }

    fn post(&self, hv: &dyn Hypervisor, clock: &dyn Clock, bytes: &[u8]) -> Result<(), VmbusError> {
        if !self.is_connected() {
            return Err(VmbusError::NotConnected);
        }
        self.post_to(hv, clock, self.msg_conn_id, bytes)
    }

    /// Take one message from the target VP's SINT2 slot: EOM it, parse it, apply generic
    /// effects (offers, rescinds). Never panics on host input.
    fn take_one(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
    ) -> Option<Result<HostMessage, Event>> {
        let m = self
            .synic
            .read_message(self.target_vp, VMBUS_MESSAGE_SINT)?;
        let ty = m.header.message_type;
        let mut copy = [0u8; HV_MESSAGE_PAYLOAD_SIZE];
        let payload = m.payload().map(|p| {
            copy[..p.len()].copy_from_slice(p);
            &copy[..p.len()]
        });
        if let Err(e) = self.synic.eom(hv, self.target_vp, VMBUS_MESSAGE_SINT, ty) {
            log::warn!("vmbus: EOM failed: {e}");
        }
        if ty == HVMSG_TIMER_EXPIRED {
            self.timer_messages = self.timer_messages.wrapping_add(1);
            return Some(Err(Event::TimerExpired));
        }
        if ty != VMBUS_MESSAGE_TYPE {
            self.malformed = self.malformed.wrapping_add(1);
            log::warn!("vmbus: ignoring SynIC message type {ty:#x} in the VMBus slot");
            return Some(Err(Event::Ignored(MessageType(ty))));
        }
        let Some(payload) = payload else {
            self.malformed = self.malformed.wrapping_add(1);
            let e = MessageError::Oversized {
                len: m.header.payload_size as usize,
            };
            log::warn!("vmbus: dropping host message: {e}");
            return Some(Err(Event::Malformed(e)));
        };
        match msg::parse_host(payload, self.version) {
            Ok(hm) => {
                self.apply(hv, clock, &hm);
                Some(Ok(hm))
            }
            Err(e) => {
                self.malformed = self.malformed.wrapping_add(1);
                log::warn!("vmbus: dropping host message: {e}");
                Some(Err(Event::Malformed(e)))
            }
        }
    }

    fn apply(&mut self, hv: &dyn Hypervisor, clock: &dyn Clock, m: &HostMessage) {
        match *m {
            HostMessage::Offer(o) => {
                if let Some(i) = self.offer_index(o.child_relid) {
                    // A relid re-offered (after a rescind) replaces the old entry.
                    self.offers[i] = o;
                    self.rescinded[i] = false;
                    self.opened[i] = false;
                } else if self.offer_count < MAX_OFFERS {
                    self.offers[self.offer_count] = o;
                    self.offer_count += 1;
                } else {
                    self.dropped_offers = self.dropped_offers.wrapping_add(1);
                    log::warn!("vmbus: offer table full, dropping relid {}", o.child_relid);
                }
            }
            HostMessage::Rescind { child_relid } => {
                if let Some(i) = self.offer_index(child_relid) {
                    self.rescinded[i] = true;
                    if !self.opened[i] {
                        // Nothing to tear down: release the relid at once (Linux
                        // vmbus_release_relid after the device is gone).
                        self.release_relid(hv, clock, child_relid);
                    }
                }
            }
            _ => {}
        }
    }

    /// Wait until `f` accepts a message, up to the reply timeout.
    fn wait_for<T>(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        what: &'static str,
        mut f: impl FnMut(&mut Self, HostMessage) -> Option<T>,
    ) -> Result<T, VmbusError> {
        let caller = hv.read_reg(SynReg::VpIndex)? as u32;
        if caller != self.target_vp {
            return Err(VmbusError::WrongCpu {
                target: self.target_vp,
                caller,
            });
        }
        let deadline = clock.now().saturating_add(self.reply_timeout);
        for _ in 0..self.poll_limit {
            match self.take_one(hv, clock) {
                Some(Ok(m)) => {
                    if let Some(t) = f(self, m) {
                        return Ok(t);
                    }
                }
                Some(Err(_)) => {}
                None => clock.relax(),
            }
            // Checked on every message too: a host that floods messages cannot hold us.
            if clock.now() >= deadline {
                return Err(VmbusError::Timeout(what));
            }
        }
        Err(VmbusError::Timeout(what))
    }

    /// One pending event, if any (non-blocking). Offers and rescinds are applied.
    pub fn poll(&mut self, hv: &dyn Hypervisor, clock: &dyn Clock) -> Option<Event> {
        match self.take_one(hv, clock)? {
            Ok(HostMessage::Offer(o)) => Some(Event::Offer(o.child_relid)),
            Ok(HostMessage::Rescind { child_relid }) => Some(Event::Rescinded(child_relid)),
            Ok(HostMessage::Other(t)) => Some(Event::Ignored(t)),
            Ok(other) => {
                log::debug!("vmbus: unsolicited {other:?}");
                Some(Event::Ignored(MessageType(0)))
            }
            Err(e) => Some(e),
        }
    }
}
