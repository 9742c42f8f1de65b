//! The VMBus devices the appliance drives (design.md steps 2 and 5): the synthetic NIC
//! (netvsc, `vmbus::netvsc`) and the synthetic framebuffer (synthvid, `vmbus::synthvid`).
//!
//! Portable on purpose: no arch code, no statics of the kernel. Every routine takes the
//! hypervisor, clock, page allocator and SynIC it works on, so the same code runs in the kernel
//! and, under `cargo test -p appliance`, on the host against `vmbus-sim` (see the tests at the
//! end, which replay the panic path's "order B": UNLOAD, reconnect in polling mode, reopen only
//! the NIC, ship the record with the capture sender until acked, UNLOAD again).
//!
//! Why [`SlotChannel`]: a driver object is large (netvsc keeps 16 received frames inline) and
//! the panic path must neither allocate nor put it on its stack. So both NIC driver objects
//! (boot and panic-time reconnect) are built at boot, each over its own [`ChannelSlot`], which
//! is filled once the channel is open: at boot for the first, after the reconnect for the
//! second. A driver used before its slot is filled gets [`ChannelError::Closed`].

use capture::panic::{Outcome, SkipReason};
use vmbus::device::{
    ChannelError, ConnectionGpadls, CoreChannel, Deadline, DeviceChannel, DmaMemory,
    OutgoingPacket, Packet, PhysRegion,
};
use vmbus::netvsc::{Buffers, Netvsc, NetvscError, OpMode};
use vmbus::synthvid::{FlushOutcome, Mode, Synthvid, SynthvidError, VramSource};
use vmbus::{
    Channel, Clock, ConnectOptions, Connection, Guid, HvError, Hypervisor, OpenOptions, PageAlloc,
    Synic, SynicMode, VmbusError,
};

use crate::sync::Once;

/// Ring pages per direction for the NIC channel. Linux uses `netvsc_ring_bytes` = 128 pages
/// (`drivers/net/hyperv/netvsc_drv.c`); the canary sends a few datagrams at a time, so 16 (the
/// size `vmbus/sim/tests/e2e_collector.rs` ships a record over) is plenty.
pub const NIC_RING_PAGES: usize = 16;
/// Ring pages per direction for synthvid. Linux uses `RING_BUFSIZE` = 256 KiB
/// (`drivers/video/fbdev/hyperv_fb.c`); the host's messages are a few hundred bytes and the
/// canary sends DIRT one rectangle at a time, so 4 pages do.
pub const FB_RING_PAGES: usize = 4;

/// Receive buffer of one NIC (GPADL'd to the host). Linux uses 16 MiB
/// (`NETVSC_RECEIVE_BUFFER_SIZE`, `drivers/net/hyperv/hyperv_net.h`) and lets it shrink to
/// `NETVSC_MIN_RX_SECTIONS` sections; the canary receives acks and drill requests only.
pub const NIC_RECV_BYTES: usize = 128 * vmbus::PAGE_SIZE;
/// GPA-direct transmit area of one NIC: slot 0 holds RNDIS control messages, the rest frames
/// (`vmbus::netvsc::TX_SLOT` bytes each, so 15 frames in flight; no send buffer).
pub const NIC_TX_BYTES: usize = 8 * vmbus::PAGE_SIZE;

/// The NIC driver as the appliance uses it: netvsc over a [`SlotChannel`], buffers in static,
/// identity-mapped memory.
pub type HvNic = Netvsc<SlotChannel<'static>, PhysRegion>;
/// The framebuffer driver.
pub type HvFb = Synthvid<SlotChannel<'static>>;

/// The MAC address as text.
pub fn mac_text(m: [u8; 6]) -> heapless::String<18> {
    use core::fmt::Write as _;
    let mut s = heapless::String::new();
    let _ = write!(
        s,
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    s
}

/// A place for one open channel, filled once (at boot, or on the panic path's reconnect).
pub struct ChannelSlot(Once<Channel>);

impl ChannelSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        ChannelSlot(Once::new())
    }
    /// Stores the channel; `Err` gives it back when the slot was filled already.
    pub fn fill(&self, ch: Channel) -> Result<(), Channel> {
        if self.0.get().is_some() {
            return Err(ch);
        }
        // `Once::set` cannot fail here: one CPU, checked just above.
        self.0.set(ch);
        Ok(())
    }
    /// The channel, once stored.
    pub fn get(&self) -> Option<&Channel> {
        self.0.get()
    }
}

impl Default for ChannelSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`DeviceChannel`] that forwards to the core channel in a [`ChannelSlot`]
/// ([`CoreChannel`]: the outbound lock is the core's compare-and-swap try-lock).
pub struct SlotChannel<'a> {
    slot: &'a ChannelSlot,
    hv: &'a dyn Hypervisor,
}

impl<'a> SlotChannel<'a> {
    /// Binds `slot`, signalling through `hv` (the calling CPU's hypervisor handle).
    pub fn new(slot: &'a ChannelSlot, hv: &'a dyn Hypervisor) -> Self {
        SlotChannel { slot, hv }
    }
    fn core(&self) -> Result<CoreChannel<'_>, ChannelError> {
        self.slot
            .get()
            .map(|ch| CoreChannel::new(ch, self.hv))
            .ok_or(ChannelError::Closed)
    }
}

impl DeviceChannel for SlotChannel<'_> {
    fn send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        self.core()?.send(pkt)
    }
    fn try_send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        self.core()?.try_send(pkt)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError> {
        self.core()?.recv(buf)
    }
    fn signal(&self) {
        if let Ok(c) = self.core() {
            c.signal();
        }
    }
    fn set_interrupt_mask(&self, masked: bool) {
        if let Ok(c) = self.core() {
            c.set_interrupt_mask(masked);
        }
    }
}

/// Why a device did not come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The host offers no channel of that class.
    #[error("not offered")]
    NotOffered,
    /// The channel slot was filled already (a second bring-up on one slot).
    #[error("channel slot already used")]
    SlotUsed,
    /// VMBus (offers, GPADL, OPENCHANNEL) failed.
    #[error("vmbus: {0}")]
    Vmbus(#[from] VmbusError),
    /// SynIC could not be enabled for the reconnect.
    #[error("synic: {0}")]
    Synic(#[from] HvError),
    /// netvsc bring-up failed.
    #[error("netvsc: {0}")]
    Netvsc(#[from] NetvscError),
    /// synthvid bring-up failed.
    #[error("synthvid: {0}")]
    Synthvid(#[from] SynthvidError),
}

/// Opens the channel of the first offer of `class` on `conn` into `slot`; returns the offer's
/// relid and `mmio_megabytes`.
pub fn open_into(
    conn: &mut Connection<'_>,
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    alloc: &dyn PageAlloc,
    class: &Guid,
    ring_pages: usize,
    slot: &ChannelSlot,
) -> Result<(u32, u16), DeviceError> {
    if slot.get().is_some() {
        return Err(DeviceError::SlotUsed);
    }
    let offer = conn.find_offer(class).ok_or(DeviceError::NotOffered)?;
    let (relid, mmio) = (offer.child_relid, offer.mmio_megabytes);
    let opts = OpenOptions {
        send_ring_pages: ring_pages,
        recv_ring_pages: ring_pages,
        ..OpenOptions::default()
    };
    let ch = conn.open_channel(hv, clock, alloc, relid, &opts)?;
    slot.fill(ch).map_err(|_| DeviceError::SlotUsed)?;
    Ok((relid, mmio))
}

/// Opens the NIC channel into `nic`'s slot and brings netvsc up (NVSP, receive buffer GPADL,
/// RNDIS), bounded by `deadline` (checked once per poll round). The NIC is left in polling mode:
/// the canary never takes interrupts, in normal running or on the panic path, and in polling
/// mode every receive/transmit drains the ring. Returns the relid. Out of line: its buffers
/// stay out of the panic path's frames.
#[inline(never)]
pub fn start_nic<M: DmaMemory>(
    conn: &mut Connection<'_>,
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    alloc: &dyn PageAlloc,
    slot: &ChannelSlot,
    nic: &mut Netvsc<SlotChannel<'_>, M>,
    deadline: &mut dyn Deadline,
) -> Result<u32, DeviceError> {
    let (relid, _) = open_into(
        conn,
        hv,
        clock,
        alloc,
        &vmbus::guid::NET,
        NIC_RING_PAGES,
        slot,
    )?;
    nic.bring_up(&mut ConnectionGpadls::new(conn, hv, clock, relid), deadline)?;
    nic.set_mode(OpMode::Polling);
    Ok(relid)
}

/// The panic path's reconnect (design step 5, after UNLOAD and cleanup): SynIC on again in
/// polling mode on this CPU, then INITIATE_CONTACT with that CPU as the target; the new
/// connection goes into `out`. The caller requests offers and opens what it needs (only the
/// NIC) on it, and unloads it in the end, whatever happened in between.
///
/// A `Connection` is several KiB: it is written into the caller's place, never returned by
/// value through the panic path's frames (the boot stack is 64 KiB), and this function is
/// kept out of line so its temporaries are not part of the caller's frame.
#[inline(never)]
pub fn reconnect_into<'s>(
    out: &mut Option<Connection<'s>>,
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    alloc: &dyn PageAlloc,
    synic: &'s Synic,
    reply_timeout: u64,
) -> Result<(), DeviceError> {
    let vp = synic.enable_cpu(hv, alloc, SynicMode::Polling)?;
    let opts = ConnectOptions {
        versions: vmbus::version::SUPPORTED,
        target_vp: Some(vp),
        reply_timeout,
    };
    // Dropped first, then written in place: one `Connection` in this frame, not two.
    *out = None;
    match Connection::connect(hv, clock, alloc, synic, &opts) {
        Ok(c) => {
            *out = Some(c);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// What the reconnect did about the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReopenNic {
    /// The host offers no NIC on the new connection.
    NotOffered,
    /// Offered, but the network does not run on netvsc (no spare NIC object).
    NotUsed,
    /// Up on this relid, in polling mode: the record can ship over it.
    Up(u32),
    /// Offered and tried, but it did not come up (the connection must still be unloaded).
    Failed(DeviceError),
}

/// On the panic path's new connection (design step 5): REQUESTOFFERS, then, only when the
/// host offers the NIC again and the network runs on netvsc (`spare` is the NIC object built
/// at boot for this), open only the NIC channel into `slot` and bring it up. Returns how many
/// offers there were and what happened to the NIC; `Err` when the offers could not be had.
/// Whatever it returns, the caller unloads `conn` in the end.
#[allow(clippy::too_many_arguments)]
pub fn reopen_nic<M: DmaMemory>(
    conn: &mut Connection<'_>,
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    alloc: &dyn PageAlloc,
    slot: &ChannelSlot,
    spare: Option<&mut Netvsc<SlotChannel<'_>, M>>,
    deadline: &mut dyn Deadline,
) -> Result<(usize, ReopenNic), DeviceError> {
    let offers = conn.request_offers(hv, clock)?;
    let count = offers.len();
    if !offers.iter().any(|o| o.if_type == vmbus::guid::NET) {
        return Ok((count, ReopenNic::NotOffered));
    }
    let Some(nic) = spare else {
        return Ok((count, ReopenNic::NotUsed));
    };
    Ok(
        match start_nic(conn, hv, clock, alloc, slot, nic, deadline) {
            Ok(relid) => (count, ReopenNic::Up(relid)),
            Err(e) => (count, ReopenNic::Failed(e)),
        },
    )
}

/// VRAM as the console draws into it: like [`PhysRegion`], but written with aligned 8-byte
/// volatile stores where it can (byte stores only at the unaligned edges). The panic screen
/// rewrites every pixel (3 MiB at 1024x768), and the framebuffer may be mapped uncached, where
/// each store costs a bus round trip.
#[derive(Debug)]
pub struct Vram {
    base: *mut u8,
    len: usize,
    gpa: u64,
}

// SAFETY: as for `PhysRegion`: plain memory shared with the host, accessed only by
// bounds-checked volatile copies that never hand out references into it.
unsafe impl Send for Vram {}
// SAFETY: as above.
unsafe impl Sync for Vram {}

impl Vram {
    /// Wraps `len` bytes at virtual address `base` whose guest physical address is `gpa`.
    ///
    /// # Safety
    /// `base..base+len` must be mapped, writable, not used as Rust memory by anything else,
    /// and stay so for the life of the value; `gpa` must be its physical address.
    pub const unsafe fn new(base: *mut u8, len: usize, gpa: u64) -> Self {
        Vram { base, len, gpa }
    }
}

impl DmaMemory for Vram {
    fn len(&self) -> usize {
        self.len
    }
    fn gpa(&self) -> u64 {
        self.gpa
    }
    fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ChannelError> {
        vmbus::device::check_bounds(self.len, offset, out.len())?;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above) of the region the constructor vouched for.
            *b = unsafe { core::ptr::read_volatile(self.base.add(offset + i)) };
        }
        Ok(())
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), ChannelError> {
        vmbus::device::check_bounds(self.len, offset, data.len())?;
        // SAFETY: in bounds (checked above) of the region the constructor vouched for.
        let dst = unsafe { self.base.add(offset) };
        let mut i = 0;
        while i < data.len() && !(dst as usize + i).is_multiple_of(8) {
            // SAFETY: `i < data.len()`, so `dst + i` is in bounds.
            unsafe { core::ptr::write_volatile(dst.add(i), data[i]) };
            i += 1;
        }
        while data.len() - i >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i..i + 8]);
            // SAFETY: `dst + i` is 8-byte aligned (the loop above) and `dst + i + 8` is in
            // bounds (at least 8 bytes of `data` are left).
            unsafe { core::ptr::write_volatile(dst.add(i) as *mut u64, u64::from_ne_bytes(w)) };
            i += 8;
        }
        while i < data.len() {
            // SAFETY: `i < data.len()`, so `dst + i` is in bounds.
            unsafe { core::ptr::write_volatile(dst.add(i), data[i]) };
            i += 1;
        }
        Ok(())
    }
}

/// Where synthvid's VRAM is: the UEFI GOP framebuffer (Gen2: the host points it at synthvid
/// VRAM; Linux `hyperv_fb.c` uses `screen_info.lfb_base` the same way), if the UEFI entry
/// recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopFramebuffer {
    /// Physical (= virtual, identity map) address.
    pub base: u64,
    /// Size in bytes.
    pub size: usize,
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
}

/// The mode to ask synthvid for on `fb`: its own resolution when it fits, else the largest
/// 4:3 mode of Linux's table that does (hyperv_fb.c: 1152x864 default, 1024x768, 800x600,
/// 640x480 fallbacks).
pub fn mode_for(fb: &GopFramebuffer) -> Option<Mode> {
    let own = Mode::new(fb.width, fb.height);
    if fb.width > 0 && fb.height > 0 && own.bytes() <= fb.size {
        return Some(own);
    }
    [(1152, 864), (1024, 768), (800, 600), (640, 480)]
        .into_iter()
        .map(|(w, h)| Mode::new(w, h))
        .find(|m| m.bytes() <= fb.size)
}

/// Where synthvid's VRAM is: the GOP framebuffer (first choice under UEFI), or
/// `mmio_megabytes` MiB the guest placed in the VMBus MMIO range from ACPI `_CRS`
/// (`crate::acpi::crs::place_vram`, as Linux's `hyperv_drm` does without a GOP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FbVram {
    Gop(GopFramebuffer),
    /// Placed by the x86_64 kernel (the arm64 kernel does not read the VMBus `_CRS`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    VmbusMmio {
        gpa: u64,
        mmio_megabytes: u16,
    },
}

impl FbVram {
    /// The VRAM_LOCATION source.
    pub fn source(&self) -> VramSource {
        match *self {
            FbVram::Gop(g) => VramSource::GopFramebuffer {
                gpa: g.base,
                size: g.size,
            },
            FbVram::VmbusMmio {
                gpa,
                mmio_megabytes,
            } => VramSource::VmbusMmio {
                gpa,
                mmio_megabytes,
            },
        }
    }

    /// The mode to ask for: the GOP's own when it fits; in the MMIO range, Linux's default
    /// 1152x864 or the largest of its fallbacks that fits ([`mode_for`]).
    pub fn mode(&self) -> Option<Mode> {
        match *self {
            FbVram::Gop(g) => mode_for(&g),
            FbVram::VmbusMmio { gpa, .. } => mode_for(&GopFramebuffer {
                base: gpa,
                size: self.source().size(),
                width: 0,
                height: 0,
            }),
        }
    }
}

/// Opens synthvid into `slot` and brings it up on `vram` (version, VRAM location, pointer,
/// situation), bounded by `deadline`.
#[allow(clippy::too_many_arguments)]
pub fn start_fb<'a>(
    conn: &mut Connection<'_>,
    hv: &'a dyn Hypervisor,
    clock: &dyn Clock,
    alloc: &dyn PageAlloc,
    slot: &'a ChannelSlot,
    vram: &FbVram,
    deadline: &mut dyn Deadline,
) -> Result<Synthvid<SlotChannel<'a>>, DeviceError> {
    let mode = vram
        .mode()
        .ok_or(DeviceError::Synthvid(SynthvidError::VramTooSmall {
            need: Mode::new(640, 480).bytes(),
            have: vram.source().size(),
        }))?;
    open_into(
        conn,
        hv,
        clock,
        alloc,
        &vmbus::guid::SYNTHVID,
        FB_RING_PAGES,
        slot,
    )?;
    let mut dev = Synthvid::new(SlotChannel::new(slot, hv));
    dev.connect(vram.source(), mode, deadline)?;
    // The FEATURE_CHANGE (is_dirt_needed) follows the situation update; take what is there.
    let _ = dev.poll();
    Ok(dev)
}

/// The capture outcome of the panic-time flush (`vmbus::synthvid::FlushOutcome` docs).
pub fn flush_outcome(f: FlushOutcome) -> Outcome {
    match f {
        FlushOutcome::Sent => Outcome::Done,
        FlushOutcome::SkippedBusy => Outcome::SkippedBusy,
        // The screen is in VRAM; the host reads it without being told.
        FlushOutcome::NotRequested => Outcome::Skipped(SkipReason::NotNeeded),
        FlushOutcome::NotConnected => Outcome::NotPresent,
        FlushOutcome::Failed(e) => Outcome::Failed(channel_code(e)),
    }
}

/// A small code for `Outcome::Failed` from a channel error.
pub fn channel_code(e: ChannelError) -> u32 {
    match e {
        ChannelError::Busy => 0x301,
        ChannelError::Full => 0x302,
        ChannelError::TooLarge(_) => 0x303,
        ChannelError::Closed => 0x304,
        ChannelError::Malformed(_) => 0x305,
        ChannelError::Gpadl(_) => 0x306,
        ChannelError::OutOfBounds { .. } => 0x307,
        ChannelError::Poisoned(_) => 0x308,
        ChannelError::Signal(_) => 0x309,
    }
}

/// Ring pages per direction for the KVP channel (control page included): 3 pages of data
/// hold the largest KVP message (`vmbus::ic::kvp::MAX_PACKET`). Linux util channels use
/// `VMBUS_RING_SIZE(3 * HV_HYP_PAGE_SIZE)` (`drivers/hv/hv_util.c`).
pub const KVP_RING_PAGES: usize = 4;

/// What the boot-time KVP read found (issue 13: who crashed).
#[derive(Debug, Clone, Copy)]
pub struct KvpRead {
    /// For the record.
    pub status: capture::identity::KvpStatus,
    /// The kept pool 3 items.
    pub items: vmbus::ic::kvp::HostItems,
    /// The versions agreed, if the host negotiated.
    pub negotiated: Option<vmbus::ic::Negotiated>,
    /// The driver's counters.
    pub stats: vmbus::ic::kvp::KvpStats,
    /// Why it failed (`Failed`).
    pub error: Option<DeviceError>,
}

/// Reads the host's pool 3 items over the KVP channel, in polling mode, until all four kept
/// items arrived or `deadline` (an absent channel or a silent host is normal: the status says
/// which), then closes the channel so no host transaction waits on a guest that no longer
/// reads it. `buf` takes one packet (`vmbus::ic::kvp::MAX_PACKET` + 64 bytes).
#[inline(never)]
pub fn read_kvp(
    conn: &mut Connection<'_>,
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    alloc: &dyn PageAlloc,
    buf: &mut [u8],
    deadline: &mut dyn Deadline,
) -> KvpRead {
    use capture::identity::KvpStatus;
    use vmbus::ic::kvp::{HostItems, KvpDevice, CLASS};
    let mut r = KvpRead {
        status: KvpStatus::NotOffered,
        items: HostItems::default(),
        negotiated: None,
        stats: Default::default(),
        error: None,
    };
    let Some(relid) = conn.find_offer(&CLASS).map(|o| o.child_relid) else {
        return r;
    };
    let opts = OpenOptions {
        send_ring_pages: KVP_RING_PAGES,
        recv_ring_pages: KVP_RING_PAGES,
        ..OpenOptions::default()
    };
    let ch = match conn.open_channel(hv, clock, alloc, relid, &opts) {
        Ok(ch) => ch,
        Err(e) => {
            r.status = KvpStatus::Failed;
            r.error = Some(e.into());
            return r;
        }
    };
    {
        let mut dev = KvpDevice::new(CoreChannel::new(&ch, hv));
        let read = dev.read_host_items(buf, deadline);
        r.items = *dev.items();
        r.negotiated = dev.negotiated();
        r.stats = dev.stats();
        r.status = match read {
            _ if r.items.count() > 0 => KvpStatus::Received,
            Ok(_) => KvpStatus::Silent,
            Err(_) => KvpStatus::Failed,
        };
    }
    match conn.close_channel(hv, clock, ch) {
        Ok(pages) => alloc.free_pages(pages),
        Err(e) => log::warn!("kvp: closing the channel failed: {e}"),
    }
    r
}

/// Builds the NIC driver for `slot` over `bufs` (at boot, for both the boot NIC and the one
/// the panic path reopens).
pub fn new_nic<'a, M: DmaMemory>(
    slot: &'a ChannelSlot,
    hv: &'a dyn Hypervisor,
    bufs: Buffers<M>,
) -> Netvsc<SlotChannel<'a>, M> {
    Netvsc::new(SlotChannel::new(slot, hv), bufs)
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "kvp_tests.rs"]
mod kvp_tests;
