//! The VMBus connection: version negotiation, offers, GPADLs, channel open/close, rescind, and
//! the run-once UNLOAD of the panic path (ref §2.2, §2.4, §4).

use core::sync::atomic::{AtomicU8, Ordering};

use zerocopy::IntoBytes;

use crate::channel::Channel;
use crate::guid::Guid;
use crate::hypercall::{HV_MESSAGE_PAYLOAD_SIZE, VMBUS_MESSAGE_TYPE};
use crate::msg::{self, HostMessage, MessageError, MessageHeader, MessageType, Offer};
use crate::platform::{Clock, Hypervisor, PageAlloc, PhysPages};
use crate::regs::SynReg;
use crate::ring::RingError;
use crate::status::HvError;
use crate::synic::{Synic, HVMSG_TIMER_EXPIRED, VMBUS_MESSAGE_SINT};
use crate::version::{self, Version};

pub use crate::hypercall::{post_with_retries, POST_RETRIES, SPIN_LIMIT};
pub use crate::ring::{GpaRange, Pfns};

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
    /// Negotiate a version, newest first (ref §4.1, §4.2). The calling CPU's SynIC must be
    /// enabled, and the target VP's. Allocates 3 pages (interrupt page, 2 monitor pages).
    pub fn connect(
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        alloc: &dyn PageAlloc,
        synic: &'s Synic,
        opts: &ConnectOptions<'_>,
    ) -> Result<Self, VmbusError> {
        let vp = hv.read_reg(SynReg::VpIndex)? as u32;
        let target_vp = opts.target_vp.unwrap_or(vp);
        if target_vp != vp {
            return Err(VmbusError::WrongCpu {
                target: target_vp,
                caller: vp,
            });
        }
        if !synic.is_enabled(vp) || synic.post_page(vp).is_none() {
            return Err(VmbusError::NoSynic(vp));
        }
        let pages = alloc.alloc_pages(3).ok_or(VmbusError::OutOfPages)?;
        let mut conn = Self {
            synic,
            state: AtomicU8::new(STATE_DISCONNECTED),
            version: Version(0),
            msg_conn_id: connection_id::MESSAGE,
            target_vp,
            offers: [EMPTY_OFFER; MAX_OFFERS],
            rescinded: [false; MAX_OFFERS],
            opened: [false; MAX_OFFERS],
            offer_count: 0,
            dropped_offers: 0,
            malformed: 0,
            timer_messages: 0,
            next_gpadl: FIRST_GPADL_HANDLE,
            pages,
            reply_timeout: opts.reply_timeout,
            poll_limit: SPIN_LIMIT,
        };
        match conn.negotiate(hv, clock, opts.versions) {
            Ok(()) => Ok(conn),
            Err(e) => {
                alloc.free_pages(pages);
                Err(e)
            }
        }
    }

    fn negotiate(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        versions: &[Version],
    ) -> Result<(), VmbusError> {
        for &v in versions.iter().filter(|v| v.supports_unload()) {
            let (conn_id, info) = if v.uses_message_connection_id_4() {
                (
                    connection_id::MESSAGE_4,
                    msg::target_info(VMBUS_MESSAGE_SINT, 0, 0),
                )
            } else {
                (connection_id::MESSAGE, self.pages.gpa())
            };
            let m = msg::InitiateContact {
                header: MessageHeader::new(MessageType::INITIATE_CONTACT),
                vmbus_version_requested: v.0,
                target_vcpu: self.target_vp,
                interrupt_page_or_target_info: info,
                monitor_page1: self.pages.gpa() + crate::PAGE_SIZE as u64,
                monitor_page2: self.pages.gpa() + 2 * crate::PAGE_SIZE as u64,
            };
            match self.post_to(hv, clock, conn_id, m.as_bytes()) {
                Ok(()) => {}
                // Hosts that do not listen on connection id 4 (≤ 4.0, e.g. QEMU) say so here.
                Err(VmbusError::Hv(HvError::InvalidConnectionId)) => {
                    log::info!("vmbus: version {v}: invalid connection id {conn_id}, trying older");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let reply = self.wait_for(hv, clock, "VERSION_RESPONSE", |_, m| match m {
                HostMessage::VersionResponse {
                    version_supported,
                    connection_state,
                    msg_conn_id,
                } => Some((version_supported, connection_state, msg_conn_id)),
                _ => None,
            })?;
            let (supported, state, msg_conn_id) = reply;
            if !supported {
                log::info!("vmbus: host does not support version {v}");
                continue;
            }
            if state != 0 {
                return Err(VmbusError::ConnectionFailed { version: v, state });
            }
            self.version = v;
            // From 5.0 the host names the id (Linux takes it as is; OpenVMM sends 1, QEMU
            // never gets here). Absent (12-byte form) or 0 (no valid id): the id we used.
            self.msg_conn_id = if v.uses_message_connection_id_4() {
                msg_conn_id
                    .filter(|&id| id != 0)
                    .unwrap_or(connection_id::MESSAGE_4)
            } else {
                connection_id::MESSAGE
            };
            self.state.store(STATE_CONNECTED, Ordering::Release);
            log::info!(
                "vmbus: connected at version {v}, message connection id {}",
                self.msg_conn_id
            );
            return Ok(());
        }
        Err(VmbusError::NoVersionAccepted)
    }

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

    fn offer_index(&self, relid: u32) -> Option<usize> {
        self.offers[..self.offer_count]
            .iter()
            .position(|o| o.child_relid == relid)
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

    fn release_relid(&self, hv: &dyn Hypervisor, clock: &dyn Clock, relid: u32) {
        let m = msg::RelidMessage {
            header: MessageHeader::new(MessageType::RELID_RELEASED),
            child_relid: relid,
        };
        if let Err(e) = self.post(hv, clock, m.as_bytes()) {
            log::warn!("vmbus: RELID_RELEASED for {relid} failed: {e}");
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

    /// REQUESTOFFERS, then collect offers until ALLOFFERS_DELIVERED (ref §4.6).
    pub fn request_offers(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
    ) -> Result<&[Offer], VmbusError> {
        let m = MessageHeader::new(MessageType::REQUESTOFFERS);
        self.post(hv, clock, m.as_bytes())?;
        self.wait_for(hv, clock, "ALLOFFERS_DELIVERED", |_, m| {
            (m == HostMessage::AllOffersDelivered).then_some(())
        })?;
        Ok(self.offers())
    }

    /// Every offer received (rescinded ones included; see [`Connection::is_rescinded`]).
    pub fn offers(&self) -> &[Offer] {
        &self.offers[..self.offer_count]
    }

    pub fn is_rescinded(&self, relid: u32) -> bool {
        self.offer_index(relid).is_some_and(|i| self.rescinded[i])
    }

    /// The first live primary offer of a device class (sub-channel offers, with a non-zero
    /// `sub_channel_index`, belong to their primary: Linux `vmbus_process_offer`).
    pub fn find_offer(&self, class: &Guid) -> Option<&Offer> {
        self.offers()
            .iter()
            .enumerate()
            .find(|(i, o)| o.if_type == *class && o.sub_channel_index == 0 && !self.rescinded[*i])
            .map(|(_, o)| o)
    }

    /// GPADL_HEADER + GPADL_BODY* → GPADL_CREATED (ref §4.4). Ranges are sent as one stream of
    /// 64-bit words (range header word, then PFNs), 27 words in the header and 28 per body.
    pub fn create_gpadl(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        relid: u32,
        ranges: &[GpaRange<'_>],
    ) -> Result<GpadlId, VmbusError> {
        let total: usize = ranges.iter().map(|r| r.words()).sum();
        let buflen = u16::try_from(total * 8).map_err(|_| VmbusError::GpadlTooLarge(total * 8))?;
        let count =
            u16::try_from(ranges.len()).map_err(|_| VmbusError::GpadlTooLarge(total * 8))?;
        let gpadl = self.next_gpadl;
        self.next_gpadl = self.next_gpadl.wrapping_add(1).max(1);
        let mut words = ranges
            .iter()
            .flat_map(|r| (0..r.words()).map(move |i| r.word(i).unwrap_or(0)));
        let h = msg::GpadlHeader {
            header: MessageHeader::new(MessageType::GPADL_HEADER),
            child_relid: relid,
            gpadl,
            range_buflen: buflen,
            rangecount: count,
        };
        let mut out = Out::of(h.as_bytes());
        for w in words.by_ref().take(msg::GPADL_HEADER_WORDS) {
            out.push(&w.to_le_bytes());
        }
        self.post(hv, clock, out.bytes())?;
        let mut sent = total.min(msg::GPADL_HEADER_WORDS);
        while sent < total {
            let b = msg::GpadlBody {
                header: MessageHeader::new(MessageType::GPADL_BODY),
                msgnumber: 0,
                gpadl,
            };
            let mut out = Out::of(b.as_bytes());
            for w in words.by_ref().take(msg::GPADL_BODY_WORDS) {
                out.push(&w.to_le_bytes());
                sent += 1;
            }
            self.post(hv, clock, out.bytes())?;
        }
        let status = self.wait_for(hv, clock, "GPADL_CREATED", |_, m| match m {
            HostMessage::GpadlCreated {
                child_relid,
                gpadl: g,
                status,
            } if child_relid == relid && g == gpadl => Some(Ok(status)),
            HostMessage::Rescind { child_relid } if child_relid == relid => {
                Some(Err(VmbusError::Rescinded(relid)))
            }
            _ => None,
        })??;
        if status != 0 {
            return Err(VmbusError::GpadlFailed(status));
        }
        Ok(GpadlId(gpadl))
    }

    /// GPADL_TEARDOWN → GPADL_TORNDOWN.
    pub fn teardown_gpadl(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        relid: u32,
        gpadl: GpadlId,
    ) -> Result<(), VmbusError> {
        let m = msg::GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            child_relid: relid,
            gpadl: gpadl.0,
        };
        self.post(hv, clock, m.as_bytes())?;
        self.wait_for(hv, clock, "GPADL_TORNDOWN", |_, m| match m {
            HostMessage::GpadlTorndown { gpadl: g } if g == gpadl.0 => Some(()),
            _ => None,
        })
    }

    /// Allocate both rings, create one GPADL over them (outbound first), OPENCHANNEL →
    /// OPENCHANNEL_RESULT (ref §4.4, §4.6). A rescind while waiting gives `Rescinded`.
    pub fn open_channel(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        alloc: &dyn PageAlloc,
        relid: u32,
        opts: &OpenOptions,
    ) -> Result<Channel, VmbusError> {
        let idx = self
            .offer_index(relid)
            .ok_or(VmbusError::UnknownRelid(relid))?;
        if self.rescinded[idx] {
            return Err(VmbusError::Rescinded(relid));
        }
        let offer = self.offers[idx];
        if opts.send_ring_pages < 2 || opts.recv_ring_pages < 2 {
            return Err(VmbusError::Ring(RingError::BadSize(
                opts.send_ring_pages.min(opts.recv_ring_pages) * crate::PAGE_SIZE,
            )));
        }
        let total = opts.send_ring_pages + opts.recv_ring_pages;
        let pages = alloc.alloc_pages(total).ok_or(VmbusError::OutOfPages)?;
        let range = GpaRange {
            byte_count: (total * crate::PAGE_SIZE) as u32,
            byte_offset: 0,
            pfns: Pfns::Contiguous {
                first: pages.pfn(),
                count: total,
            },
        };
        let gpadl = match self.create_gpadl(hv, clock, relid, &[range]) {
            Ok(g) => g,
            Err(e) => {
                alloc.free_pages(pages);
                return Err(e);
            }
        };
        let m = msg::OpenChannel {
            header: MessageHeader::new(MessageType::OPENCHANNEL),
            child_relid: relid,
            // Linux uses the relid as the open id.
            openid: relid,
            ringbuffer_gpadlhandle: gpadl.0,
            target_vp: opts.target_vp.unwrap_or(self.target_vp),
            downstream_ringbuffer_pageoffset: opts.send_ring_pages as u32,
            userdata: opts.user_data,
        };
        self.post(hv, clock, m.as_bytes())?;
        let status = self.wait_for(hv, clock, "OPENCHANNEL_RESULT", |_, m| match m {
            HostMessage::OpenResult {
                child_relid,
                openid,
                status,
            } if child_relid == relid && openid == relid => Some(Ok(status)),
            HostMessage::Rescind { child_relid } if child_relid == relid => {
                Some(Err(VmbusError::Rescinded(relid)))
            }
            _ => None,
        });
        match status {
            Ok(Ok(0)) => {}
            Ok(Ok(status)) => {
                let _ = self.teardown_gpadl(hv, clock, relid, gpadl);
                alloc.free_pages(pages);
                return Err(VmbusError::OpenFailed { relid, status });
            }
            Ok(Err(e)) | Err(e) => {
                // A rescind was already answered with RELID_RELEASED when it arrived (the
                // channel was not open yet). On a timeout the host may still use the pages:
                // leak them rather than reuse them.
                return Err(e);
            }
        }
        self.opened[idx] = true;
        let send_half = self.pages.va().wrapping_add(crate::PAGE_SIZE / 2);
        // SAFETY: `pages` are the ring pages just allocated, owned by the channel from now on;
        // the interrupt page lives as long as the connection's pages (never freed).
        let ch = unsafe {
            Channel::new(
                relid,
                offer.connection_id,
                offer.is_dedicated_interrupt,
                gpadl,
                pages,
                opts.send_ring_pages,
                send_half,
            )
        }?;
        Ok(ch)
    }

    /// CLOSECHANNEL, then GPADL teardown (ref §4.6). For a rescinded channel only
    /// RELID_RELEASED is sent. Returns the ring pages for the caller to free.
    pub fn close_channel(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        ch: Channel,
    ) -> Result<PhysPages, VmbusError> {
        let relid = ch.relid;
        if let Some(i) = self.offer_index(relid) {
            self.opened[i] = false;
            if self.rescinded[i] {
                self.release_relid(hv, clock, relid);
                return Ok(ch.pages);
            }
        }
        let m = msg::RelidMessage {
            header: MessageHeader::new(MessageType::CLOSECHANNEL),
            child_relid: relid,
        };
        self.post(hv, clock, m.as_bytes())?;
        self.teardown_gpadl(hv, clock, relid, ch.gpadl)?;
        Ok(ch.pages)
    }

    /// UNLOAD for the panic path (ref §2.2, §2.4; Linux `vmbus_initiate_unload(true)` and
    /// `vmbus_wait_for_unload`). Runs at most once per connection: the state is swapped to
    /// disconnected first, so concurrent or repeated callers get `Skipped(AlreadyUnloaded)`.
    /// Posts UNLOAD from the calling CPU, then polls the SINT2 slot of every CPU with an
    /// enabled SynIC (the reply goes to the connect CPU, which may be stopped), EOMs each
    /// message, stops on UNLOAD_RESPONSE or at `deadline`, and finally clears every slot so a
    /// new connection can receive messages.
    pub fn unload(&self, hv: &dyn Hypervisor, clock: &dyn Clock, deadline: u64) -> UnloadOutcome {
        if self.state.swap(STATE_DISCONNECTED, Ordering::AcqRel) == STATE_DISCONNECTED {
            return UnloadOutcome::Skipped(UnloadSkip::AlreadyUnloaded);
        }
        if !self.version.supports_unload() {
            return UnloadOutcome::Skipped(UnloadSkip::VersionTooOld(self.version));
        }
        let start = clock.now();
        let hdr = MessageHeader::new(MessageType::UNLOAD);
        let posted = self
            .post_page(hv)
            .map_err(|_| HvError::HypercallsDisabled)
            .and_then(|page| {
                post_with_retries(hv, clock, page, self.msg_conn_id, hdr.as_bytes(), deadline)
            });
        if let Err(e) = posted {
            log::warn!("vmbus: posting UNLOAD failed: {e}");
            self.clear_all_slots();
            return UnloadOutcome::Failed(e);
        }
        let mut next_log = start.saturating_add(50_000_000);
        let mut spins = 0u32;
        let outcome = loop {
            let mut responder = None;
            for vp in self.synic.enabled_cpus() {
                let Some(m) = self.synic.read_message(vp, VMBUS_MESSAGE_SINT) else {
                    continue;
                };
                let ty = m.header.message_type;
                if ty == VMBUS_MESSAGE_TYPE
                    && m.payload()
                        .and_then(|p| p.get(..4))
                        .is_some_and(|t| t == MessageType::UNLOAD_RESPONSE.0.to_le_bytes())
                {
                    responder = Some(vp);
                }
                // EOM every message found, not just the response (ref §2.4).
                let _ = self.synic.eom(hv, vp, VMBUS_MESSAGE_SINT, ty);
            }
            let now = clock.now();
            if let Some(vp) = responder {
                break UnloadOutcome::Done {
                    responder_vp: vp,
                    waited: now.saturating_sub(start),
                };
            }
            spins += 1;
            if now >= deadline || spins >= self.poll_limit {
                log::warn!("vmbus: continuing even though VMBus UNLOAD did not complete");
                break UnloadOutcome::TimedOut {
                    waited: now.saturating_sub(start),
                };
            }
            if now >= next_log {
                log::warn!("vmbus: waiting for VMBus UNLOAD to complete");
                next_log = now.saturating_add(50_000_000);
            }
            clock.relax();
        };
        self.clear_all_slots();
        outcome
    }

    fn clear_all_slots(&self) {
        for vp in self.synic.enabled_cpus() {
            self.synic.clear_slot(vp, VMBUS_MESSAGE_SINT);
        }
    }
}
