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
use vmbus::netvsc::{Buffers, Netvsc, NetvscError, OpMode};
use vmbus::synthvid::chan::{
    ChannelError, Deadline, DeviceChannel, DmaMemory, InPacket, OutPacket, PhysRegion,
};
use vmbus::synthvid::core_channel::{ConnectionGpadls, CoreChannel};
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
    fn send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError> {
        self.core()?.send(pkt)
    }
    fn try_send(&self, pkt: &OutPacket<'_>) -> Result<(), ChannelError> {
        self.core()?.try_send(pkt)
    }
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<InPacket<'b>>, ChannelError> {
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
        vmbus::synthvid::chan::check_bounds(self.len, offset, out.len())?;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above) of the region the constructor vouched for.
            *b = unsafe { core::ptr::read_volatile(self.base.add(offset + i)) };
        }
        Ok(())
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), ChannelError> {
        vmbus::synthvid::chan::check_bounds(self.len, offset, data.len())?;
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
        ChannelError::Malformed => 0x305,
        ChannelError::Gpadl(_) => 0x306,
        ChannelError::OutOfBounds { .. } => 0x307,
        ChannelError::Poisoned(_) => 0x308,
    }
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
mod tests {
    //! The glue against `vmbus-sim`: real `Connection`/`Channel`/rings on the simulated
    //! Hyper-V, the netvsc and synthvid host models, and a host-side smoltcp stack standing in
    //! for the collector (it reassembles the record's chunks with `capture` and acks it, as
    //! `host-collector serve` does after committing).
    use super::*;
    use capture::chunk::{Push, Reassembler, ReassemblerConfig};
    use capture::sender::{SendState, Sender, SenderConfig};
    use capture::wire::{AckRepr, AckStatus, Repr};
    use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
    use smoltcp::phy::Device;
    use smoltcp::socket::udp;
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
    use vmbus::synthvid::{console, Rect};
    use vmbus::UnloadOutcome;
    use vmbus_sim::netvsc::{NetvscHost, NetvscHostConfig};
    use vmbus_sim::netvsc_bridge::{HostPort, QueueEndpoint};
    use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
    use vmbus_sim::synthvid_link::CoreHost;
    use vmbus_sim::{Guest, Personality, Sim, SimArch, SimConfig, SimOffer};

    const GUEST: [u8; 4] = [10, 0, 0, 2];
    const COLLECTOR: [u8; 4] = [10, 0, 0, 1];
    const PORT: u16 = 7777;
    const NIC_RELID: u32 = 2;
    const FB_RELID: u32 = 1;

    fn sim(arch: SimArch) -> Sim {
        Sim::new(sim_config(arch))
    }

    /// The configuration [`sim`] runs.
    fn sim_config(arch: SimArch) -> SimConfig {
        let mut cfg = SimConfig::new(
            arch,
            Personality::HyperV {
                max_version: vmbus::Version::WIN10_V5_3,
            },
        );
        cfg.offers = vec![
            SimOffer {
                if_type: vmbus::guid::SYNTHVID,
                if_instance: Guid([1; 16]),
                relid: FB_RELID,
                dedicated_interrupt: false,
                mmio_megabytes: 8,
            },
            SimOffer {
                if_type: vmbus::guid::NET,
                if_instance: Guid([2; 16]),
                relid: NIC_RELID,
                dedicated_interrupt: true,
                mmio_megabytes: 0,
            },
        ];
        cfg
    }

    fn region(s: &Sim, pages: usize) -> PhysRegion {
        let p = s.mem.alloc_pages(pages).unwrap();
        // SAFETY: freshly allocated sim guest pages, used only through this region.
        unsafe { PhysRegion::new(p.va(), p.len(), p.gpa()) }
    }

    /// The kernel's sizes (`pages::nic_buffers`): a 128-page receive buffer takes a GPADL
    /// header and body messages.
    fn bufs(s: &Sim) -> Buffers<PhysRegion> {
        Buffers {
            recv: region(s, NIC_RECV_BYTES / vmbus::PAGE_SIZE),
            send: None,
            tx: region(s, NIC_TX_BYTES / vmbus::PAGE_SIZE),
        }
    }

    struct NoPpis;
    impl vmbus::InterruptControl for NoPpis {
        fn disable_ppi(&mut self, _intid: u32) {}
    }

    /// The collector's side of the wire.
    struct Collector {
        iface: Interface,
        sockets: SocketSet<'static>,
        h: SocketHandle,
        port: HostPort,
        reasm: Reassembler<u8>,
        records: Vec<Vec<u8>>,
    }

    impl Collector {
        fn new(ep: &QueueEndpoint) -> Self {
            let mut port = ep.port();
            let mut iface = Interface::new(
                Config::new(EthernetAddress([2, 0, 0, 0, 0, 1]).into()),
                &mut port,
                Instant::ZERO,
            );
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(
                    IpAddress::Ipv4(Ipv4Address::from(COLLECTOR)),
                    24,
                ))
                .unwrap()
            });
            let mut sockets = SocketSet::new(vec![]);
            let h = sockets.add(udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 65536]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
            ));
            sockets.get_mut::<udp::Socket>(h).bind(PORT).unwrap();
            Collector {
                iface,
                sockets,
                h,
                port,
                reasm: Reassembler::new(ReassemblerConfig::default()),
                records: vec![],
            }
        }

        fn poll(&mut self, t: Instant) {
            self.iface.poll(t, &mut self.port, &mut self.sockets);
            let s = self.sockets.get_mut::<udp::Socket>(self.h);
            while let Ok((d, meta)) = s.recv() {
                let d = d.to_vec();
                let Ok(Repr::Chunk(c)) = capture::wire::parse(&d, None) else {
                    continue;
                };
                let Push::Complete(done) = self.reasm.push(0, &c, t.total_millis() as u64) else {
                    continue;
                };
                let ack = Repr::Ack(AckRepr {
                    boot_id: done.id.boot_id,
                    seq: done.id.seq,
                    record_crc: done.id.record_crc,
                    status: AckStatus::Stored,
                });
                let mut f = [0u8; 128];
                let n = capture::wire::emit(&ack, None, &mut f).unwrap();
                s.send_slice(&f[..n], meta.endpoint).unwrap();
                self.records.push(done.record);
            }
        }
    }

    /// The guest's network as `crate::net` keeps it: one interface with the pre-configured
    /// address and one UDP socket, kept across the NIC switch of the panic path.
    struct Stack {
        iface: Interface,
        sockets: SocketSet<'static>,
        h: SocketHandle,
        now_ms: u64,
    }

    impl Stack {
        fn new<D: Device>(nic: &mut D, mac: [u8; 6]) -> Self {
            let mut iface =
                Interface::new(Config::new(EthernetAddress(mac).into()), nic, Instant::ZERO);
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(GUEST)), 24))
                    .unwrap()
            });
            let mut sockets = SocketSet::new(vec![]);
            let h = sockets.add(udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 24576]),
            ));
            sockets.get_mut::<udp::Socket>(h).bind(40_000).unwrap();
            Stack {
                iface,
                sockets,
                h,
                now_ms: 0,
            }
        }

        /// Ships `rec` over `nic` with the capture sender as the panic path's ship step does
        /// (poll until acked or the deadline), in simulated milliseconds so the outcome does
        /// not depend on the test machine's speed.
        fn ship<D: Device>(
            &mut self,
            nic: &mut D,
            rec: &capture::record::CrashRecord,
            col: &mut Collector,
            pump: &mut dyn FnMut(),
        ) -> (SendState, u32) {
            let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
            let bytes = rec.encode(&mut buf).unwrap().to_vec();
            let cfg = SenderConfig {
                initial_rto_ms: 20,
                max_rto_ms: 400,
                deadline_ms: 5_000,
            };
            let t0 = self.now_ms;
            let mut sender = Sender::new(cfg, rec.boot_id, rec.seq, &bytes, None, t0).unwrap();
            let to = (IpAddress::Ipv4(Ipv4Address::from(COLLECTOR)), PORT);
            for ms in t0..=t0 + cfg.deadline_ms + 1 {
                self.now_ms = ms;
                let t = Instant::from_millis(ms as i64);
                let st = {
                    let s = self.sockets.get_mut::<udp::Socket>(self.h);
                    sender.poll(ms, &mut |d| {
                        let _ = s.send_slice(d, to);
                    })
                };
                if !matches!(st, SendState::Waiting { .. }) {
                    return (st, sender.stats().datagrams_sent);
                }
                self.iface.poll(t, nic, &mut self.sockets);
                pump();
                col.poll(t);
                pump();
                self.iface.poll(t, nic, &mut self.sockets);
                let s = self.sockets.get_mut::<udp::Socket>(self.h);
                while let Ok((d, _)) = s.recv() {
                    sender.handle(d);
                }
            }
            (SendState::TimedOut, sender.stats().datagrams_sent)
        }
    }

    #[test]
    fn after_unload_and_reconnect_only_the_nic_is_reopened_and_the_record_is_acked() {
        for arch in [SimArch::X86_64, SimArch::Aarch64] {
            let s = sim(arch);
            let g = Guest::boot(&s, SynicMode::Polling);
            let hv = g.hv(0);
            let far = s.now() + 50_000_000;
            let ep = QueueEndpoint::new();
            let end = CoreHost::new(&s, NIC_RELID);

            // Boot: both NIC driver objects are built before anything is opened.
            let slot1 = ChannelSlot::new();
            let slot2 = ChannelSlot::new();
            let mut nic1 = Box::new(new_nic(&slot1, hv, bufs(&s)));
            let mut nic2 = Box::new(new_nic(&slot2, hv, bufs(&s)));
            assert_eq!(
                nic2.poll(),
                Err(NetvscError::Channel(ChannelError::Closed)),
                "a driver whose slot is empty reports the channel closed"
            );

            let mut conn1 =
                Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                    .unwrap();
            conn1.request_offers(hv, &g.clock).unwrap();
            let host1 = NetvscHost::new(NetvscHostConfig::default(), Box::new(ep.clone()));
            let mut hdev1 = host1.clone();
            let mut n = 0;
            let relid = start_nic(
                &mut conn1,
                hv,
                &g.clock,
                &s.mem,
                &slot1,
                &mut nic1,
                &mut || {
                    end.pump(&mut hdev1);
                    n += 1;
                    n > 10_000
                },
            )
            .unwrap();
            assert_eq!(relid, NIC_RELID);
            assert_eq!(nic1.mode(), OpMode::Polling);
            assert!(host1.state().recv_buf.is_some(), "{arch:?}");

            // Normal running: the network runs on the boot NIC.
            let mut col = Collector::new(&ep);
            let mac = nic1.mac();
            let mut stack = Stack::new(&mut *nic1, mac);
            let mut rec1 = capture::testutil::sample_record(1);
            rec1.set_message("devices.rs: over the boot netvsc");
            let (st, _) = stack.ship(&mut *nic1, &rec1, &mut col, &mut || {
                end.pump(&mut hdev1);
            });
            assert_eq!(st, SendState::Acked, "{arch:?} {:?}", host1.state());
            let tx_boot = host1.state().frames_via_gpa;
            assert!(tx_boot > 0, "{arch:?}");

            // Panic: UNLOAD once, clean up, reconnect in polling mode, reopen only the NIC.
            let u = conn1.unload(hv, &g.clock, far);
            assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
            let r = vmbus::cleanup::cleanup_cpu(
                hv,
                &g.synic,
                &mut NoPpis,
                &vmbus::cleanup::CleanupConfig::default(),
            );
            assert!(r.synic.is_none() && r.stimer.is_none(), "{r:?}");
            let mut slot = None;
            reconnect_into(&mut slot, hv, &g.clock, &s.mem, &g.synic, 50_000_000).unwrap();
            let mut conn2 = slot.unwrap();
            let host2 = NetvscHost::new(NetvscHostConfig::default(), Box::new(ep.clone()));
            let mut hdev2 = host2.clone();
            let mut n = 0;
            let r = reopen_nic(
                &mut conn2,
                hv,
                &g.clock,
                &s.mem,
                &slot2,
                Some(&mut *nic2),
                &mut || {
                    end.pump(&mut hdev2);
                    n += 1;
                    n > 10_000
                },
            )
            .unwrap();
            assert_eq!(r, (2, ReopenNic::Up(NIC_RELID)), "{arch:?}");
            assert_eq!(nic2.mode(), OpMode::Polling);
            // Only the NIC, on each connection: two OPENCHANNELs in all (CHANNELMSG_OPENCHANNEL
            // = 5, Linux include/linux/hyperv.h), both for the NIC's relid (offset 8 of the
            // message: header, then child_relid).
            let opens = s.guest_messages_of(5);
            assert_eq!(opens.len(), 2, "{arch:?}");
            for m in &opens {
                assert_eq!(m[8..12], NIC_RELID.to_le_bytes(), "{arch:?}");
            }

            // Ship with the capture sender until the collector acks, on the same interface
            // and sockets with the reopened NIC underneath (what `net::panic_use_netvsc` does).
            assert_eq!(nic2.mac(), nic1.mac(), "the same synthetic NIC");
            let mut rec = capture::testutil::sample_record(3);
            rec.set_message("devices.rs: record over the reopened netvsc");
            let (st, sent) = stack.ship(&mut *nic2, &rec, &mut col, &mut || {
                end.pump(&mut hdev2);
            });
            assert_eq!(st, SendState::Acked, "{arch:?} {:?}", host2.state());
            assert!(sent >= 1);
            let mut want = vec![0u8; capture::record::MAX_ENCODED_LEN];
            let mut want1 = vec![0u8; capture::record::MAX_ENCODED_LEN];
            assert_eq!(
                col.records,
                vec![
                    rec1.encode(&mut want1).unwrap().to_vec(),
                    rec.encode(&mut want).unwrap().to_vec()
                ]
            );
            assert!(host2.state().frames_via_gpa > 0);
            assert_eq!(
                host1.state().frames_via_gpa,
                tx_boot,
                "nothing more went through the boot NIC's (unloaded) channel"
            );
            // Every receive-buffer packet the host sent is completed once the ring is drained.
            for _ in 0..3 {
                nic2.poll().unwrap();
                end.pump(&mut hdev2);
            }
            assert_eq!(host2.state().outstanding(), 0);

            // Then the second connection is unloaded too: two UNLOADs in all.
            let u = conn2.unload(hv, &g.clock, far);
            assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
            assert_eq!(s.guest_messages_of(16).len(), 2, "{arch:?}: two UNLOADs");
        }
    }

    /// UNLOAD + cleanup + reconnect on a fresh sim with `offers`; returns the new connection.
    fn reconnected<'s>(s: &Sim, g: &'s Guest<'s>) -> Connection<'s> {
        let hv = g.hv(0);
        let c1 = Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
            .unwrap();
        let u = c1.unload(hv, &g.clock, s.now() + 50_000_000);
        assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
        let _ = vmbus::cleanup::cleanup_cpu(
            hv,
            &g.synic,
            &mut NoPpis,
            &vmbus::cleanup::CleanupConfig::default(),
        );
        let mut out = None;
        reconnect_into(&mut out, hv, &g.clock, &s.mem, &g.synic, 50_000_000).unwrap();
        out.unwrap()
    }

    #[test]
    fn a_nic_that_does_not_come_up_on_the_reconnect_leaves_a_connection_that_still_unloads() {
        let s = sim(SimArch::X86_64);
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut c = reconnected(&s, &g);
        let slot = ChannelSlot::new();
        let mut nic = Box::new(new_nic(&slot, hv, bufs(&s)));
        // Nobody answers on the host side: the bring-up gives up at its deadline.
        let mut budget = vmbus::netvsc::SpinBudget(2_000);
        let r = reopen_nic(
            &mut c,
            hv,
            &g.clock,
            &s.mem,
            &slot,
            Some(&mut *nic),
            &mut budget,
        )
        .unwrap();
        assert!(
            matches!(
                r,
                (
                    2,
                    ReopenNic::Failed(DeviceError::Netvsc(NetvscError::Timeout(_)))
                )
            ),
            "{r:?}"
        );
        let u = c.unload(hv, &g.clock, s.now() + 50_000_000);
        assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
        assert_eq!(s.guest_messages_of(16).len(), 2, "two UNLOADs");
    }

    #[test]
    fn without_a_netvsc_network_or_a_nic_offer_the_reconnect_opens_nothing() {
        // The network runs on virtio-net: no spare NIC object, nothing opened.
        let s = sim(SimArch::X86_64);
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut c = reconnected(&s, &g);
        let slot = ChannelSlot::new();
        let r = reopen_nic::<PhysRegion>(
            &mut c,
            hv,
            &g.clock,
            &s.mem,
            &slot,
            None,
            &mut vmbus::netvsc::SpinBudget(10),
        );
        assert_eq!(r, Ok((2, ReopenNic::NotUsed)));
        assert!(slot.get().is_none());
        assert!(s.guest_messages_of(5).is_empty(), "no OPENCHANNEL");

        // QEMU's VMBus: no NIC offered at all.
        let mut cfg = SimConfig::new(SimArch::X86_64, Personality::Qemu);
        cfg.offers.clear();
        let s = Sim::new(cfg);
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut c = reconnected(&s, &g);
        let mut nic = Box::new(new_nic(&slot, hv, bufs(&s)));
        let r = reopen_nic(
            &mut c,
            hv,
            &g.clock,
            &s.mem,
            &slot,
            Some(&mut *nic),
            &mut vmbus::netvsc::SpinBudget(10),
        );
        assert_eq!(r, Ok((0, ReopenNic::NotOffered)));
        assert!(slot.get().is_none());
    }

    #[test]
    fn vram_writes_land_byte_exact_at_any_alignment_and_stay_in_bounds() {
        let mut backing = vec![0u64; 64]; // 512 bytes, 8-byte aligned
        let base = backing.as_mut_ptr() as *mut u8;
        // SAFETY: `backing` outlives `vram` and is used only through it until the end.
        let vram = unsafe { Vram::new(base, 512, 0x1000) };
        let mut want = vec![0u8; 512];
        let mut k = 0u8;
        for offset in [0usize, 1, 3, 7, 8, 13, 100, 255] {
            for len in [0usize, 1, 5, 8, 9, 16, 23, 64, 129] {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        k = k.wrapping_mul(31).wrapping_add(7);
                        k
                    })
                    .collect();
                vram.write(offset, &data).unwrap();
                want[offset..offset + len].copy_from_slice(&data);
                let mut got = vec![0u8; 512];
                vram.read(0, &mut got).unwrap();
                assert_eq!(got, want, "offset {offset} len {len}");
            }
        }
        assert_eq!(
            vram.write(510, &[1, 2, 3]),
            Err(ChannelError::OutOfBounds {
                offset: 510,
                len: 3
            })
        );
        assert_eq!(vram.len(), 512);
        assert_eq!(vram.gpa(), 0x1000);
        // `backing` is dropped only after the last use of `vram`.
        drop(backing);
    }

    #[test]
    fn a_nic_slot_is_filled_once() {
        let s = sim(SimArch::X86_64);
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut conn =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn.request_offers(hv, &g.clock).unwrap();
        let slot = ChannelSlot::new();
        let net = vmbus::guid::NET;
        assert!(open_into(&mut conn, hv, &g.clock, &s.mem, &net, 2, &slot).is_ok());
        assert_eq!(
            open_into(&mut conn, hv, &g.clock, &s.mem, &net, 2, &slot),
            Err(DeviceError::SlotUsed)
        );
        let nothing = Guid([9; 16]);
        assert_eq!(
            open_into(
                &mut conn,
                hv,
                &g.clock,
                &s.mem,
                &nothing,
                2,
                &ChannelSlot::new()
            ),
            Err(DeviceError::NotOffered)
        );
    }

    #[test]
    fn synthvid_on_the_gop_framebuffer_flushes_the_panic_screen_or_skips_when_busy() {
        let s = sim(SimArch::X86_64);
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut conn =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn.request_offers(hv, &g.clock).unwrap();
        // A "GOP framebuffer" of 640x480 in the sim's guest memory.
        let mode = Mode::new(640, 480);
        let p = s.mem.alloc_pages(mode.bytes().div_ceil(4096)).unwrap();
        // SAFETY: freshly allocated sim guest pages, used only through this region.
        let vram = unsafe { Vram::new(p.va(), p.len(), p.gpa()) };
        let gop = GopFramebuffer {
            base: vram.gpa(),
            size: vram.len(),
            width: 640,
            height: 480,
        };
        let slot = ChannelSlot::new();
        let host = SynthvidHost::without_memory(SynthvidHostConfig::default());
        let mut hdev = host.clone();
        let end = CoreHost::new(&s, FB_RELID);
        let mut n = 0;
        let fb = start_fb(
            &mut conn,
            hv,
            &g.clock,
            &s.mem,
            &slot,
            &FbVram::Gop(gop),
            &mut || {
                end.pump(&mut hdev);
                n += 1;
                n > 1000
            },
        )
        .unwrap();
        end.pump(&mut hdev);
        fb.poll().unwrap();
        assert!(fb.dirt_needed());
        assert_eq!(host.state().vram_gpa, Some(gop.base));
        assert_eq!(fb.mode(), mode);

        console::draw_panic_screen(&vram, fb.mode(), "panic").unwrap();
        assert_eq!(flush_outcome(fb.panic_flush()), Outcome::Done);
        end.pump(&mut hdev);
        assert_eq!(
            host.state().dirt,
            vec![Rect {
                x1: 0,
                y1: 0,
                x2: 640,
                y2: 480
            }]
        );
        {
            let _held = slot.get().unwrap().try_lock_outbound().unwrap();
            assert_eq!(flush_outcome(fb.panic_flush()), Outcome::SkippedBusy);
        }
        end.pump(&mut hdev);
        assert_eq!(host.state().dirt.len(), 1, "nothing sent while busy");
        // The host sees the panic screen in guest memory: red background, white text.
        let (w, h, rgb) = host
            .screen_rgb_with(&|gpa, buf| s.mem.read(gpa, buf))
            .unwrap();
        assert_eq!((w, h), (640, 480));
        assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background");
        let fg = rgb
            .chunks_exact(3)
            .filter(|p| p == &[0xff, 0xff, 0xff])
            .count();
        assert!(fg > 100, "text pixels: {fg}");
    }

    /// Direct boot on OpenVMM has no GOP: VRAM goes where the kernel places it in the VMBus
    /// MMIO range that ACPI gives (`crate::acpi::crs`), sized by the offer's `mmio_megabytes`.
    /// Here the sim's guest memory stands in for that range: a DSDT in OpenVMM's shape whose
    /// `\_SB.VMOD._CRS` window covers pages of it.
    #[test]
    fn synthvid_without_a_gop_takes_vram_from_the_acpi_vmbus_range_and_flushes_the_panic_screen() {
        use crate::acpi::crs;
        use crate::acpi::crs::tests::aml::*;
        const MIB: u64 = 1 << 20;
        // 16 MiB of guest memory: room for 9 MiB beside the rings.
        let mut cfg = sim_config(SimArch::X86_64);
        cfg.memory_pages = 4096;
        let s = Sim::new(cfg);
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut conn =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn.request_offers(hv, &g.clock).unwrap();
        let mmio_mb = conn
            .find_offer(&vmbus::guid::SYNTHVID)
            .unwrap()
            .mmio_megabytes;
        assert_eq!(mmio_mb, 8);

        // The "MMIO range": one MiB more than the offer asks for, so an aligned start fits.
        let p = s.mem.alloc_pages((mmio_mb as usize + 1) * 256).unwrap();
        let (lo, hi) = (p.gpa(), p.gpa() + p.len() as u64 - 1);
        let dsdt = table(
            b"DSDT",
            &cat(&[
                &device(
                    "\\_SB.APIC",
                    &crs(&[
                        fixed_mem(0xfee0_0000, 0x1000),
                        fixed_mem(0xfec0_0000, 0x1000),
                    ]),
                ),
                &device(
                    "\\_SB.VMOD",
                    &cat(&[&name_str("_HID", "ACPI0004"), &crs(&[qword_mem(lo, hi)])]),
                ),
                &device("\\_SB.VMOD.VMBS", &name_str("_HID", "VMBus")),
            ]),
        );
        let m = crs::vmbus_mmio(&[&dsdt]).unwrap();
        // The sim's memory lies above 4 GiB; the kernel's limit is the identity map's.
        assert!(crs::place_vram(&m, mmio_mb, 1 << 32).is_err());
        let gpa = crs::place_vram(&m, mmio_mb, u64::MAX).unwrap();
        assert_eq!(gpa, lo.next_multiple_of(MIB));
        let size = mmio_mb as usize * MIB as usize;
        // SAFETY: inside the pages allocated above (`gpa - lo` < 1 MiB, one MiB spare), used
        // only through this region.
        let vram = unsafe { Vram::new(p.va().add((gpa - lo) as usize), size, gpa) };

        let slot = ChannelSlot::new();
        let host = SynthvidHost::without_memory(SynthvidHostConfig::default());
        let mut hdev = host.clone();
        let end = CoreHost::new(&s, FB_RELID);
        let mut n = 0;
        let place = FbVram::VmbusMmio {
            gpa,
            mmio_megabytes: mmio_mb,
        };
        let fb = start_fb(&mut conn, hv, &g.clock, &s.mem, &slot, &place, &mut || {
            end.pump(&mut hdev);
            n += 1;
            n > 1000
        })
        .unwrap();
        end.pump(&mut hdev);
        fb.poll().unwrap();
        // VRAM_LOCATION told the host the placed GPA; Linux's default mode fits 8 MiB.
        assert_eq!(host.state().vram_gpa, Some(gpa));
        assert_eq!(fb.mode(), Mode::new(1152, 864));

        console::draw_panic_screen(&vram, fb.mode(), "panic").unwrap();
        assert_eq!(flush_outcome(fb.panic_flush()), Outcome::Done);
        end.pump(&mut hdev);
        assert_eq!(
            host.state().dirt,
            vec![Rect {
                x1: 0,
                y1: 0,
                x2: 1152,
                y2: 864
            }]
        );
        let (w, h, rgb) = host
            .screen_rgb_with(&|gpa, buf| s.mem.read(gpa, buf))
            .unwrap();
        assert_eq!((w, h), (1152, 864));
        assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background");
        let fg = rgb
            .chunks_exact(3)
            .filter(|p| p == &[0xff, 0xff, 0xff])
            .count();
        assert!(fg > 100, "text pixels: {fg}");
    }

    #[test]
    fn flush_outcomes_map_onto_record_outcomes() {
        assert_eq!(flush_outcome(FlushOutcome::Sent), Outcome::Done);
        assert_eq!(
            flush_outcome(FlushOutcome::SkippedBusy),
            Outcome::SkippedBusy
        );
        assert_eq!(
            flush_outcome(FlushOutcome::NotRequested),
            Outcome::Skipped(SkipReason::NotNeeded)
        );
        assert_eq!(
            flush_outcome(FlushOutcome::NotConnected),
            Outcome::NotPresent
        );
        assert_eq!(
            flush_outcome(FlushOutcome::Failed(ChannelError::Full)),
            Outcome::Failed(0x302)
        );
    }

    #[test]
    fn the_mode_fits_the_framebuffer() {
        let gop = |w, h, size| GopFramebuffer {
            base: 0,
            size,
            width: w,
            height: h,
        };
        assert_eq!(
            mode_for(&gop(1024, 768, 8 << 20)),
            Some(Mode::new(1024, 768))
        );
        // GOP reports a mode bigger than the buffer: the largest of Linux's modes that fits.
        assert_eq!(
            mode_for(&gop(4096, 4096, 4 << 20)),
            Some(Mode::new(1152, 864))
        );
        assert_eq!(mode_for(&gop(0, 0, 2 << 20)), Some(Mode::new(800, 600)));
        assert_eq!(mode_for(&gop(640, 480, 4096)), None);
    }
}
