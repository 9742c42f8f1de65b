//! netvsc: the Hyper-V synthetic NIC (guest side), NVSP + RNDIS, exposed as a smoltcp
//! `phy::Device` ([`phy`]).
//!
//! Bring-up follows Linux `drivers/net/hyperv/netvsc.c` / `rndis_filter.c`
//! (`reference/hyperv-guest.md` §7): NVSP INIT (6.1 down to 1, min = max = the version tried)
//! → NDIS_CONFIG (v2+) → NDIS version → receive buffer (GPADL + SEND_RECV_BUF, required) →
//! send buffer (optional) → RNDIS INIT → QUERY permanent MAC → QUERY link state → SET packet
//! filter. Data: frames out as RNDIS PACKET in a send-buffer section or GPA-direct; frames in
//! as transfer-page packets referring to the receive buffer, **each one completed**.
//!
//! No heap: received frames go into a fixed queue inside the driver, transmit slots are
//! bitmaps over caller-provided shared memory.
//!
//! On the VMBus core:
//!
//! ```text
//! let relid = conn.find_offer(&vmbus::guid::NET).unwrap().child_relid;
//! let ch = conn.open_channel(hv, clock, alloc, relid, &OpenOptions {
//!     send_ring_pages: 32, recv_ring_pages: 32, ..Default::default() })?;
//! let bufs = Buffers {                       // physically contiguous, page aligned, mapped
//!     recv: unsafe { PhysRegion::new(..) },  // e.g. 1 MiB (Linux: 16 MiB; <= 15 MiB for NVSP 1)
//!     send: Some(unsafe { PhysRegion::new(..) }),   // optional, e.g. 1 MiB
//!     tx: unsafe { PhysRegion::new(..) },    // >= 1 page: RNDIS control (+ frames if no send buf)
//! };
//! let nic: &mut Netvsc<_, _> = STATIC_NIC.init(Netvsc::new(CoreChannel::new(&ch, hv), bufs));
//! // The connection is lent for the GPADLs during bring-up only.
//! nic.bring_up(&mut ConnectionGpadls::new(&mut conn, hv, clock, relid),
//!              &mut || clock.now() > deadline)?;
//! // Normal running: interrupt mode; the VMBus ISR calls nic.on_interrupt() for this relid.
//! // Panic path (design step 5, order A or after a reconnect): nic.set_mode(OpMode::Polling),
//! // then drive smoltcp's Interface::poll in a loop: transmit completions and received
//! // frames (the collector's ack) are reaped by polling, with interrupts off.
//! ```

pub mod nvsp;
pub mod phy;
pub mod rndis;
mod rx;

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering};

pub use crate::device::{ChannelError, Deadline, DeviceChannel, DmaMemory, GpadlMaker, SpinBudget};
use crate::device::{GpaRange, OutgoingPacket};
use crate::PAGE_SIZE;
use nvsp::{Nvsp, NvspError, Section};
use rndis::{Rndis, RndisError};
use thiserror::Error;

/// Device class GUID `f8615163-df3e-46c5-913f-f2d2f965ed0e` (`HV_NIC_GUID`, Linux
/// `include/linux/hyperv.h`), wire byte order.
pub const CLASS_GUID_BYTES: [u8; 16] = [
    0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e,
];
/// Largest Ethernet frame handled (1500 + 14, `ETH_DATA_LEN + ETH_HLEN`), rounded up.
pub const FRAME_MAX: usize = 1536;
/// Frame MTU passed to NDIS_CONFIG and smoltcp (Linux sends `mtu + ETH_HLEN`).
pub const ETH_FRAME_MTU: usize = 1514;
/// Frames the receive queue holds.
pub const RX_QUEUE: usize = 16;
/// Size of one GPA-direct transmit slot in the `tx` region (two per page, so a slot never
/// crosses a page).
pub const TX_SLOT: usize = 2048;
/// Largest RNDIS message copied out of the receive buffer.
pub const RNDIS_MAX: usize = 2048;
/// Receive-buffer completions that can wait for ring space.
const PENDING_COMPLETIONS: usize = 64;
/// Outbound-lock attempts per send in polling mode before giving up with `Busy`.
const POLLING_LOCK_TRIES: u32 = 100_000;
/// Inbound packets one drain handles at most (a host that keeps the ring full cannot hold
/// the caller: smoltcp's receive/transmit and the panic path's ship step call it).
pub const DRAIN_LIMIT: usize = 256;
/// Smallest usable send-buffer section (Linux netvsc.c: `NETVSC_MTU_MIN` = `ETH_MIN_MTU`).
const MIN_SECTION_SIZE: u32 = 68;
/// Send-buffer sections tracked.
const MAX_SECTIONS: usize = 256;

// Transaction-id classes (our own convention; the host echoes them in completions).
const TID_REQUEST: u64 = 1 << 32;
const TID_SENDBUF: u64 = 2 << 32;
const TID_GPA: u64 = 3 << 32;
const TID_CONTROL: u64 = 4 << 32;
const TID_CLASS: u64 = 0xFFFF_FFFF << 32;

/// Why netvsc failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NetvscError {
    /// The channel failed.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// A bad NVSP message.
    #[error("NVSP: {0}")]
    Nvsp(#[from] NvspError),
    /// A bad RNDIS message.
    #[error("RNDIS: {0}")]
    Rndis(#[from] RndisError),
    /// The host accepted no NVSP version.
    #[error("host accepted no NVSP version (tried 6.1 down to 1)")]
    NoVersion,
    /// The host did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The host refused a request.
    #[error("host refused {what} (status {status:#x})")]
    Refused {
        /// Which request.
        what: &'static str,
        /// Status it sent.
        status: u32,
    },
    /// The receive-buffer completion did not describe exactly one section.
    #[error("receive buffer completion has {0} sections, expected 1")]
    BadSections(u32),
    /// A buffer region is unusable (too small, not page aligned).
    #[error("buffer {0} unusable")]
    BadBuffer(&'static str),
    /// The device is not up.
    #[error("netvsc not up")]
    NotUp,
}

/// Shared memory the driver needs.
pub struct Buffers<M> {
    /// Receive buffer (GPADL'd to the host; Linux uses 16 MiB, any page-aligned size works).
    pub recv: M,
    /// Optional send buffer (GPADL'd; sectioned by the host). Without it, frames go
    /// GPA-direct from `tx`.
    pub send: Option<M>,
    /// GPA-direct area: slot 0 holds RNDIS control messages, slots 1.. frames (when there is
    /// no send buffer). At least one page, page aligned.
    pub tx: M,
}

/// Interrupt or polling operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpMode {
    /// The inbound ring interrupt is unmasked; the ring is drained after [`Netvsc::on_interrupt`].
    Interrupt,
    /// The inbound interrupt is masked; every receive/transmit poll drains the ring.
    Polling,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transfer-page packets received.
    pub xfer_packets: u64,
    /// Transfer-page packets completed back to the host.
    pub xfer_completed: u64,
    /// Frames queued for smoltcp.
    pub rx_frames: u64,
    /// Frames dropped (queue full, too big, malformed).
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// TX completions received.
    pub tx_completed: u64,
    /// Inbound messages rejected as malformed.
    pub malformed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CtrlReply {
    Init {
        status: u32,
    },
    Query {
        status: u32,
        info: [u8; 16],
        len: usize,
    },
    Set {
        status: u32,
    },
}

struct RxQueue {
    frames: [[u8; FRAME_MAX]; RX_QUEUE],
    lens: [usize; RX_QUEUE],
    head: usize,
    count: usize,
}

impl RxQueue {
    const fn new() -> Self {
        RxQueue {
            frames: [[0; FRAME_MAX]; RX_QUEUE],
            lens: [0; RX_QUEUE],
            head: 0,
            count: 0,
        }
    }
    fn push(&mut self, f: &[u8]) -> bool {
        if self.count == RX_QUEUE || f.len() > FRAME_MAX {
            return false;
        }
        let i = (self.head + self.count) % RX_QUEUE;
        self.frames[i][..f.len()].copy_from_slice(f);
        self.lens[i] = f.len();
        self.count += 1;
        true
    }
    fn front(&self) -> Option<&[u8]> {
        (self.count > 0).then(|| &self.frames[self.head][..self.lens[self.head]])
    }
    fn pop(&mut self) {
        if self.count > 0 {
            self.head = (self.head + 1) % RX_QUEUE;
            self.count -= 1;
        }
    }
}

struct Core<C, M> {
    chan: C,
    bufs: Buffers<M>,
    up: bool,
    nvsp_version: u32,
    mac: [u8; 6],
    link_up: bool,
    recv_section: Option<Section>,
    send_section_size: usize,
    send_sections: usize,
    send_used: [u64; MAX_SECTIONS / 64],
    tx_slots: usize,
    tx_used: u64,
    ctrl_busy: bool,
    next_request: u64,
    next_rndis_id: u32,
    nvsp_reply: Option<(u64, Nvsp)>,
    ctrl_reply: Option<(u32, CtrlReply)>,
    pending: [u64; PENDING_COMPLETIONS],
    pending_len: usize,
    mode: OpMode,
    irq: AtomicBool,
    ext_irq: Option<&'static AtomicBool>,
    stats: Stats,
    /// Set when the channel reported its ring corrupt: nothing reads it again.
    poisoned: Cell<Option<ChannelError>>,
}

/// The netvsc driver. Large (the receive queue is inline): keep it in a static or a box.
pub struct Netvsc<C: DeviceChannel, M: DmaMemory> {
    core: Core<C, M>,
    rxq: RxQueue,
}

impl<C: DeviceChannel, M: DmaMemory> Netvsc<C, M> {
    /// Wraps an open netvsc channel and its buffers. Nothing is sent until [`Self::bring_up`].
    pub fn new(chan: C, bufs: Buffers<M>) -> Self {
        Netvsc {
            core: Core {
                chan,
                bufs,
                up: false,
                nvsp_version: 0,
                mac: [0; 6],
                link_up: false,
                recv_section: None,
                send_section_size: 0,
                send_sections: 0,
                send_used: [0; MAX_SECTIONS / 64],
                tx_slots: 0,
                tx_used: 0,
                ctrl_busy: false,
                next_request: 0,
                next_rndis_id: 0,
                nvsp_reply: None,
                ctrl_reply: None,
                pending: [0; PENDING_COMPLETIONS],
                pending_len: 0,
                mode: OpMode::Interrupt,
                irq: AtomicBool::new(false),
                ext_irq: None,
                stats: Stats::default(),
                poisoned: Cell::new(None),
            },
            rxq: RxQueue::new(),
        }
    }

    /// Runs the whole bring-up, creating the buffer GPADLs through `gpadls`. On success the
    /// device is in interrupt mode.
    pub fn bring_up(
        &mut self,
        gpadls: &mut dyn GpadlMaker,
        deadline: &mut dyn Deadline,
    ) -> Result<(), NetvscError> {
        let rxq = &mut self.rxq;
        self.core.bring_up(rxq, gpadls, deadline)
    }

    /// The channel.
    pub fn channel(&self) -> &C {
        &self.core.chan
    }
    /// The permanent MAC address (after bring-up).
    pub fn mac(&self) -> [u8; 6] {
        self.core.mac
    }
    /// The negotiated NVSP version.
    pub fn nvsp_version(&self) -> u32 {
        self.core.nvsp_version
    }
    /// Whether the host reported the link up.
    pub fn link_up(&self) -> bool {
        self.core.link_up
    }
    /// The receive-buffer section the host reported.
    pub fn recv_section(&self) -> Option<Section> {
        self.core.recv_section
    }
    /// Send-buffer section size (0 when frames go GPA-direct).
    pub fn send_section_size(&self) -> usize {
        self.core.send_section_size
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }
    /// Frames waiting for smoltcp.
    pub fn rx_queued(&self) -> usize {
        self.rxq.count
    }
    /// Transmits in flight (not yet completed by the host).
    pub fn tx_in_flight(&self) -> usize {
        self.core.tx_used.count_ones() as usize
            + self
                .core
                .send_used
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
    }

    /// Why the channel was poisoned, if it was: the driver no longer reads or writes it.
    pub fn poisoned(&self) -> Option<ChannelError> {
        self.core.poisoned.get()
    }

    /// Switches between interrupt and polling operation (the panic path uses polling).
    pub fn set_mode(&mut self, mode: OpMode) {
        self.core.mode = mode;
        self.core.chan.set_interrupt_mask(mode == OpMode::Polling);
        if mode == OpMode::Interrupt {
            // Packets that arrived while masked raised no interrupt, and the host will not
            // signal again until the ring drains (§5.2): look once now.
            self.core.irq.store(true, Ordering::Release);
        }
    }
    /// Current mode.
    pub fn mode(&self) -> OpMode {
        self.core.mode
    }
    /// Uses `flag` as this channel's interrupt flag: the appliance's VMBus interrupt handler
    /// sets it (it cannot reach the driver, which the main loop holds `&mut`), and the next
    /// receive in interrupt mode drains the ring.
    pub fn bind_interrupt_flag(&mut self, flag: &'static AtomicBool) {
        self.core.ext_irq = Some(flag);
    }
    /// Called from the channel's interrupt handler: the next receive drains the ring.
    pub fn on_interrupt(&self) {
        self.core.irq.store(true, Ordering::Release);
    }

    /// Drains the inbound ring now: completions, control replies and frames, at most
    /// [`DRAIN_LIMIT`] packets. Returns the number of packets read (malformed ones included).
    /// A poisoned channel ([`Self::poisoned`]) gives its error at once, without reading.
    pub fn poll(&mut self) -> Result<usize, NetvscError> {
        self.core.drain(&mut self.rxq)
    }

    /// Sends one Ethernet frame (outside smoltcp). Polls the ring for completions if no
    /// transmit slot is free; returns `Ok(false)` if none frees up.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<bool, NetvscError> {
        if !self.core.up {
            return Err(NetvscError::NotUp);
        }
        if !self.core.tx_available() {
            self.core.drain(&mut self.rxq)?;
            if !self.core.tx_available() {
                return Ok(false);
            }
        }
        self.core.send_frame(frame)?;
        Ok(true)
    }

    /// Takes the next received frame, if any (outside smoltcp).
    pub fn recv_frame(&mut self, out: &mut [u8]) -> Result<Option<usize>, NetvscError> {
        if self.rxq.count == 0 {
            self.core.maybe_drain(&mut self.rxq)?;
        }
        let n = self.rxq.front().map(|f| {
            let n = f.len().min(out.len());
            out[..n].copy_from_slice(&f[..n]);
            n
        });
        if n.is_some() {
            self.rxq.pop();
        }
        Ok(n)
    }
}

impl<C: DeviceChannel, M: DmaMemory> Core<C, M> {
    /// Sends on the channel. In polling mode (the panic path) the outbound lock is only
    /// tried, a bounded number of times: if the panic interrupted a send on this channel the
    /// lock never frees, and waiting for it would hang the panic path (§2.3).
    fn out(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        let r = self.out_inner(pkt);
        if let Err(e @ ChannelError::Poisoned(_)) = r {
            self.poisoned.set(Some(e));
        }
        r
    }

    fn out_inner(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        match self.mode {
            OpMode::Interrupt => self.chan.send(pkt),
            OpMode::Polling => {
                for _ in 0..POLLING_LOCK_TRIES {
                    match self.chan.try_send(pkt) {
                        Err(ChannelError::Busy) => core::hint::spin_loop(),
                        other => return other,
                    }
                }
                Err(ChannelError::Busy)
            }
        }
    }

    fn send_nvsp(&mut self, msg: &Nvsp, completion: bool) -> Result<u64, NetvscError> {
        let mut buf = [0u8; nvsp::PACKET_SIZE_V61];
        let n = msg.emit(&mut buf)?;
        self.next_request += 1;
        let tid = TID_REQUEST | (self.next_request & 0xFFFF_FFFF);
        self.out(&OutgoingPacket::InBand {
            data: &buf[..n],
            trans_id: tid,
            completion_requested: completion,
        })?;
        Ok(tid)
    }

    fn wait_nvsp(
        &mut self,
        rxq: &mut RxQueue,
        tid: u64,
        deadline: &mut dyn Deadline,
        what: &'static str,
    ) -> Result<Nvsp, NetvscError> {
        // The deadline is checked on every round, not only when the ring is empty: a host
        // that keeps the ring busy cannot hold bring-up.
        let mut waited = false;
        loop {
            if let Some((t, m)) = self.nvsp_reply {
                if t == tid {
                    self.nvsp_reply = None;
                    return Ok(m);
                }
            }
            if waited && deadline.expired() {
                return Err(NetvscError::Timeout(what));
            }
            self.drain(rxq)?;
            waited = true;
        }
    }

    fn bring_up(
        &mut self,
        rxq: &mut RxQueue,
        gpadls: &mut dyn GpadlMaker,
        deadline: &mut dyn Deadline,
    ) -> Result<(), NetvscError> {
        let b = &self.bufs;
        if b.tx.len() < PAGE_SIZE || !b.tx.gpa().is_multiple_of(PAGE_SIZE as u64) {
            return Err(NetvscError::BadBuffer("tx"));
        }
        if b.recv.len() < PAGE_SIZE || !b.recv.gpa().is_multiple_of(PAGE_SIZE as u64) {
            return Err(NetvscError::BadBuffer("recv"));
        }
        // Polling during bring-up: replies are read by spinning on the ring.
        self.chan.set_interrupt_mask(true);

        // 1. NVSP version: netvsc.c negotiate_nvsp_ver sends min = max = the version tried.
        let mut version = None;
        for v in nvsp::VERSIONS {
            let tid = self.send_nvsp(&Nvsp::Init { min: v, max: v }, true)?;
            match self.wait_nvsp(rxq, tid, deadline, "NVSP INIT_COMPLETE")? {
                Nvsp::InitComplete { status, .. } if status == nvsp::STATUS_SUCCESS => {
                    version = Some(v);
                    break;
                }
                Nvsp::InitComplete { status, .. } => {
                    log::info!("netvsc: host refused NVSP {v:#x} (status {status})");
                }
                other => {
                    log::warn!("netvsc: unexpected reply to INIT: type {}", other.ty());
                    self.stats.malformed += 1;
                }
            }
        }
        let v = version.ok_or(NetvscError::NoVersion)?;
        self.nvsp_version = v;

        // 2. NDIS config (v2+; netvsc.c negotiate_nvsp_ver): frame MTU, 802.1Q capability.
        if v >= nvsp::VERSION_2 {
            self.send_nvsp(
                &Nvsp::NdisConfig {
                    mtu: ETH_FRAME_MTU as u32,
                    capability: nvsp::NDIS_CAP_IEEE8021Q,
                },
                false,
            )?;
        }
        // 3. NDIS version: 6.1 up to NVSP 4, else 6.30 (netvsc.c netvsc_connect_vsp).
        let ndis = if v <= nvsp::VERSION_4 {
            nvsp::NDIS_6_1
        } else {
            nvsp::NDIS_6_30
        };
        self.send_nvsp(
            &Nvsp::NdisVersion {
                major: ndis >> 16,
                minor: ndis & 0xFFFF,
            },
            false,
        )?;

        // 4. Receive buffer (netvsc.c netvsc_init_buf): GPADL, SEND_RECV_BUF id 0xCAFE.
        let gpadl = gpadls.create(self.bufs.recv.gpa(), self.bufs.recv.len())?;
        let tid = self.send_nvsp(
            &Nvsp::SendRecvBuf {
                gpadl,
                id: nvsp::RECV_BUFFER_ID,
            },
            true,
        )?;
        match self.wait_nvsp(rxq, tid, deadline, "SEND_RECV_BUF_COMPLETE")? {
            Nvsp::SendRecvBufComplete {
                status,
                num_sections,
                section,
            } => {
                if status != nvsp::STATUS_SUCCESS {
                    return Err(NetvscError::Refused {
                        what: "receive buffer",
                        status,
                    });
                }
                // Linux netvsc.c wants exactly one section; FreeBSD hn_nvs_conn_rxbuf reads
                // only the status. The section layout is never used here (each transfer range
                // is checked against the buffer), so any count is accepted (API.md).
                if num_sections != 1 {
                    log::info!("netvsc: receive buffer in {num_sections} sections");
                }
                self.recv_section = (num_sections >= 1).then_some(section);
            }
            other => {
                return Err(NetvscError::Refused {
                    what: "receive buffer (unexpected reply)",
                    status: other.ty(),
                })
            }
        }

        // 5. Send buffer, if we have one (netvsc.c: SEND_SEND_BUF id 0, section size back).
        if let Some(send) = &self.bufs.send {
            let (gpa, len) = (send.gpa(), send.len());
            let gpadl = gpadls.create(gpa, len)?;
            let tid = self.send_nvsp(
                &Nvsp::SendSendBuf {
                    gpadl,
                    id: nvsp::SEND_BUFFER_ID,
                },
                true,
            )?;
            // Without a usable send buffer frames go GPA-direct (Linux netvsc_send falls back to
            // page buffers whenever a frame does not fit a section), so a refusal is not fatal.
            match self.wait_nvsp(rxq, tid, deadline, "SEND_SEND_BUF_COMPLETE")? {
                Nvsp::SendSendBufComplete {
                    status,
                    section_size,
                } if status == nvsp::STATUS_SUCCESS && section_size >= MIN_SECTION_SIZE => {
                    self.send_section_size = section_size as usize;
                    self.send_sections = (len / section_size as usize).min(MAX_SECTIONS);
                }
                Nvsp::SendSendBufComplete {
                    status,
                    section_size,
                } => log::warn!(
                    "netvsc: send buffer unusable (status {status:#x}, sections of \
                     {section_size} bytes): frames go GPA-direct"
                ),
                other => log::warn!(
                    "netvsc: unexpected reply {} to SEND_SEND_BUF: frames go GPA-direct",
                    other.ty()
                ),
            }
        }
        // GPA-direct frame slots: the tx region minus slot 0 (control), at most 64.
        self.tx_slots = (self.bufs.tx.len() / TX_SLOT).min(64);
        self.up = true;

        // 6. RNDIS INIT (rndis_filter.c rndis_filter_init_device).
        let id = self.next_rndis();
        match self.rndis_request(
            rxq,
            &Rndis::Init {
                request_id: id,
                major: rndis::MAJOR_VERSION,
                minor: rndis::MINOR_VERSION,
                max_xfer_size: rndis::INIT_MAX_XFER_SIZE,
            },
            deadline,
        )? {
            CtrlReply::Init { status } if status == rndis::STATUS_SUCCESS => {}
            CtrlReply::Init { status }
            | CtrlReply::Set { status }
            | CtrlReply::Query { status, .. } => {
                self.up = false;
                return Err(NetvscError::Refused {
                    what: "RNDIS INIT",
                    status,
                });
            }
        }
        // 7. Permanent MAC (rndis_filter.c rndis_filter_query_device_mac).
        let id = self.next_rndis();
        match self.rndis_request(
            rxq,
            &Rndis::Query {
                request_id: id,
                oid: rndis::OID_802_3_PERMANENT_ADDRESS,
                info: &[],
            },
            deadline,
        )? {
            CtrlReply::Query { status, info, len }
                if status == rndis::STATUS_SUCCESS && len >= 6 =>
            {
                self.mac.copy_from_slice(&info[..6]);
            }
            CtrlReply::Query { status, .. }
            | CtrlReply::Init { status }
            | CtrlReply::Set { status } => {
                self.up = false;
                return Err(NetvscError::Refused {
                    what: "QUERY OID_802_3_PERMANENT_ADDRESS",
                    status,
                });
            }
        }
        // 8. Link state (rndis_filter.c rndis_filter_query_device_link_status); a failure
        //    here is not fatal.
        let id = self.next_rndis();
        if let Ok(CtrlReply::Query { status, info, len }) = self.rndis_request(
            rxq,
            &Rndis::Query {
                request_id: id,
                oid: rndis::OID_GEN_MEDIA_CONNECT_STATUS,
                info: &[],
            },
            deadline,
        ) {
            self.link_up = status == rndis::STATUS_SUCCESS
                && len >= 4
                && u32::from_le_bytes([info[0], info[1], info[2], info[3]])
                    == rndis::MEDIA_STATE_CONNECTED;
        }
        // 9. Packet filter: directed | multicast | broadcast.
        let filter = rndis::PACKET_TYPE_DIRECTED
            | rndis::PACKET_TYPE_MULTICAST
            | rndis::PACKET_TYPE_BROADCAST;
        let id = self.next_rndis();
        match self.rndis_request(
            rxq,
            &Rndis::Set {
                request_id: id,
                oid: rndis::OID_GEN_CURRENT_PACKET_FILTER,
                info: &filter.to_le_bytes(),
            },
            deadline,
        )? {
            CtrlReply::Set { status } if status == rndis::STATUS_SUCCESS => {}
            // Linux rndis_filter_set_packet_filter does not act on the status either: the
            // host may deliver anyway.
            CtrlReply::Set { status }
            | CtrlReply::Init { status }
            | CtrlReply::Query { status, .. } => log::warn!(
                "netvsc: host refused the packet filter (status {status:#x}); continuing"
            ),
        }
        self.mode = OpMode::Interrupt;
        self.chan.set_interrupt_mask(false);
        // Anything that arrived while masked raised no interrupt: drain once on next receive.
        self.irq.store(true, Ordering::Release);
        log::info!(
            "netvsc: up, NVSP {:#x}, MAC {:02x?}, link {}",
            self.nvsp_version,
            self.mac,
            if self.link_up { "up" } else { "down" }
        );
        Ok(())
    }

    fn next_rndis(&mut self) -> u32 {
        self.next_rndis_id = self.next_rndis_id.wrapping_add(1);
        self.next_rndis_id
    }

    /// Sends one RNDIS control message GPA-direct from tx slot 0 (rndis_filter.c
    /// rndis_filter_send_request: channel type 1, no send-buffer section) and waits for the
    /// matching completion.
    fn rndis_request(
        &mut self,
        rxq: &mut RxQueue,
        msg: &Rndis<'_>,
        deadline: &mut dyn Deadline,
    ) -> Result<CtrlReply, NetvscError> {
        let request_id = match *msg {
            Rndis::Init { request_id, .. }
            | Rndis::Query { request_id, .. }
            | Rndis::Set { request_id, .. } => request_id,
            _ => 0,
        };
        while self.ctrl_busy {
            self.drain(rxq)?;
            if self.ctrl_busy && deadline.expired() {
                return Err(NetvscError::Timeout("RNDIS control slot"));
            }
        }
        let mut buf = [0u8; 128];
        let n = msg.emit(&mut buf)?;
        self.bufs.tx.write(0, &buf[..n])?;
        let gpa = self.bufs.tx.gpa();
        // n <= 128: the control message never crosses the page of slot 0.
        let page = GpaRange::contiguous(gpa, n as u32);
        let mut nv = [0u8; nvsp::PACKET_SIZE_V61];
        let nl = Nvsp::RndisPacket {
            channel_type: nvsp::CHANNEL_CONTROL,
            section_index: nvsp::INVALID_SECTION,
            section_size: 0,
        }
        .emit(&mut nv)?;
        self.ctrl_reply = None;
        self.ctrl_busy = true;
        if let Err(e) = self.out(&OutgoingPacket::GpaDirect {
            ranges: &[page],
            data: &nv[..nl],
            trans_id: TID_CONTROL | u64::from(request_id),
            completion_requested: true,
        }) {
            self.ctrl_busy = false;
            return Err(e.into());
        }
        let mut waited = false;
        loop {
            if let Some((id, r)) = self.ctrl_reply {
                if id == request_id {
                    self.ctrl_reply = None;
                    return Ok(r);
                }
            }
            if waited && deadline.expired() {
                return Err(NetvscError::Timeout("RNDIS completion"));
            }
            self.drain(rxq)?;
            waited = true;
        }
    }

    fn tx_available(&self) -> bool {
        (0..self.send_sections).any(|i| self.send_used[i / 64] & (1 << (i % 64)) == 0)
            || (1..self.tx_slots).any(|i| self.tx_used & (1 << i) == 0)
    }

    /// Sends one frame as an RNDIS PACKET: into a free send-buffer section if there is a send
    /// buffer (netvsc.c netvsc_copy_to_send_buf), else GPA-direct from a free tx slot.
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), NetvscError> {
        if frame.len() > FRAME_MAX {
            return Err(NetvscError::Channel(ChannelError::TooLarge(frame.len())));
        }
        let mut buf = [0u8; FRAME_MAX + 64];
        let n = Rndis::Packet {
            data: frame,
            ppi: &[],
        }
        .emit(&mut buf)?;
        let mut nv = [0u8; nvsp::PACKET_SIZE_V61];
        // A free send-buffer section the message fits in, else a GPA-direct slot.
        let section = (n <= self.send_section_size)
            .then(|| {
                (0..self.send_sections).find(|&i| self.send_used[i / 64] & (1 << (i % 64)) == 0)
            })
            .flatten();
        if let Some(i) = section {
            let send = self.bufs.send.as_ref().ok_or(NetvscError::NotUp)?;
            send.write(i * self.send_section_size, &buf[..n])?;
            let nl = Nvsp::RndisPacket {
                channel_type: nvsp::CHANNEL_DATA,
                section_index: i as u32,
                section_size: n as u32,
            }
            .emit(&mut nv)?;
            self.out(&OutgoingPacket::InBand {
                data: &nv[..nl],
                trans_id: TID_SENDBUF | i as u64,
                completion_requested: true,
            })?;
            self.send_used[i / 64] |= 1 << (i % 64);
        } else {
            let i = (1..self.tx_slots)
                .find(|&i| self.tx_used & (1 << i) == 0)
                .ok_or(NetvscError::Channel(ChannelError::Full))?;
            self.bufs.tx.write(i * TX_SLOT, &buf[..n])?;
            let gpa = self.bufs.tx.gpa() + (i * TX_SLOT) as u64;
            // A slot never crosses a page (TX_SLOT divides the page size).
            let page = GpaRange::contiguous(gpa, n as u32);
            let nl = Nvsp::RndisPacket {
                channel_type: nvsp::CHANNEL_DATA,
                section_index: nvsp::INVALID_SECTION,
                section_size: 0,
            }
            .emit(&mut nv)?;
            self.out(&OutgoingPacket::GpaDirect {
                ranges: &[page],
                data: &nv[..nl],
                trans_id: TID_GPA | i as u64,
                completion_requested: true,
            })?;
            self.tx_used |= 1 << i;
        }
        self.stats.tx_frames += 1;
        Ok(())
    }
}
