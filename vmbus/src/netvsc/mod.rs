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

mod bringup;
pub mod nvsp;
pub mod phy;
pub mod rndis;
mod rx;
mod tx;

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering};

pub use crate::device::{ChannelError, Deadline, DeviceChannel, DmaMemory, GpadlMaker, SpinBudget};
use nvsp::{Nvsp, NvspError, Section};
use rndis::RndisError;
use rx::RxQueue;
use thiserror::Error;
use tx::Slots;

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
    send_used: Slots<{ MAX_SECTIONS / 64 }>,
    tx_slots: usize,
    tx_used: Slots<1>,
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
                send_used: Slots::new(),
                tx_slots: 0,
                tx_used: Slots::new(),
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
        self.core.tx_used.count() + self.core.send_used.count()
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
