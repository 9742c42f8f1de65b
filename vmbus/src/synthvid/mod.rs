//! synthvid: the Hyper-V synthetic framebuffer (guest side).
//!
//! Protocol facts: Linux `drivers/video/fbdev/hyperv_fb.c` and `drivers/gpu/drm/hyperv/`
//! (`reference/hyperv-guest.md` §6). Bring-up: VERSION_REQUEST (WIN10 3.5, then WIN8 3.2) →
//! VRAM_LOCATION → ack (user_ctx must echo) → POINTER_POSITION + POINTER_SHAPE →
//! SITUATION_UPDATE. Afterwards DIRT rectangles go out only when the host's FEATURE_CHANGE
//! asked for them. The panic flush takes the outbound-ring lock with a real try-lock.
//!
//! The drivers here are written against [`crate::device::DeviceChannel`]; on the VMBus core
//! it is [`crate::device::CoreChannel`]:
//!
//! ```text
//! let offer = *conn.find_offer(&vmbus::guid::SYNTHVID).unwrap();
//! let ch = conn.open_channel(hv, clock, alloc, offer.child_relid, &OpenOptions {
//!     send_ring_pages: 64, recv_ring_pages: 64, ..Default::default() })?;   // 256 KiB
//! // VRAM: the GOP framebuffer (Gen2), the VMBus MMIO range sized by
//! // offer.mmio_megabytes, or the Gen1 PCI BAR; mapped 1:1 by the kernel.
//! let vram = unsafe { PhysRegion::new(va, len, gpa) };
//! let mut fb = Synthvid::new(CoreChannel::new(&ch, hv));
//! fb.connect(VramSource::VmbusMmio { gpa, mmio_megabytes: offer.mmio_megabytes },
//!            Mode::new(1024, 768), &mut || clock.now() > deadline)?;
//! fb.poll()?;                        // from the channel interrupt: handles FEATURE_CHANGE
//! // Panic (design step 2): draw, then flush without ever waiting.
//! console::draw_panic_screen(&vram, fb.mode(), message)?;
//! match fb.panic_flush() {
//!     FlushOutcome::Sent => Outcome::Done,
//!     FlushOutcome::SkippedBusy => Outcome::SkippedBusy,
//!     FlushOutcome::NotRequested | FlushOutcome::NotConnected => /* Skipped / NotPresent */,
//!     FlushOutcome::Failed(_) => Outcome::Failed(..),
//! }
//! ```

pub mod console;
pub mod wire;

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::channel::Poison;

use crate::device::{ChannelError, Deadline, DeviceChannel, OutgoingPacket, Packet, PacketKind};
use thiserror::Error;
pub use wire::{Message, Rect, Resolutions, Situation};

/// Device class GUID `da0a7802-e377-4aac-8e77-0558eb1073f8` (`HV_SYNTHVID_GUID`, Linux
/// `include/linux/hyperv.h`), in wire byte order (first three fields little-endian).
pub const CLASS_GUID_BYTES: [u8; 16] = [
    0x02, 0x78, 0x0a, 0xda, 0x77, 0xe3, 0xac, 0x4a, 0x8e, 0x77, 0x05, 0x58, 0xeb, 0x10, 0x73, 0xf8,
];
/// Ring size per direction, `RING_BUFSIZE` 256 KiB (hyperv_fb.c; `VMBUS_RING_BUFSIZE` in
/// hyperv_drm_proto.c).
pub const RING_SIZE: usize = 256 * 1024;
/// Versions tried, newest first (hyperv_fb.c `synthvid_connect_vsp`: WIN10 then WIN8 on
/// Win8+ hosts; WIN7 is no longer supported).
pub const VERSIONS: [u32; 2] = [wire::VERSION_WIN10, wire::VERSION_WIN8];
/// Default mode: 1152x864 (hyperv_fb.c `HVFB_WIDTH`/`HVFB_HEIGHT`), 32 bpp
/// (`SYNTHVID_DEPTH_WIN8`).
pub const DEFAULT_WIDTH: u32 = 1152;
/// See [`DEFAULT_WIDTH`].
pub const DEFAULT_HEIGHT: u32 = 864;
/// `SYNTHVID_DEPTH_WIN8` (hyperv_fb.c).
pub const DEPTH_WIN8: u8 = 32;
/// Receive buffer: a full RESOLUTION_RESPONSE (16 + 16 + 387 bytes) with room to spare.
const RECV_BUF: usize = 1024;
/// Inbound messages one [`Synthvid::poll`] handles at most.
pub const POLL_LIMIT: usize = 64;
/// `CURSOR_COMPLETE` (-1 as u8) (hyperv_fb.c).
pub const CURSOR_COMPLETE: u8 = 0xFF;

/// Where VRAM lives (`reference/hyperv-guest.md` §6). The protocol only needs the GPA; the
/// source decides how big it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VramSource {
    /// Gen2: the UEFI GOP framebuffer (the host already points it at synthvid VRAM).
    GopFramebuffer {
        /// GPA.
        gpa: u64,
        /// Size in bytes.
        size: usize,
    },
    /// Gen2: space carved from the VMBus MMIO range, sized by the offer's `mmio_megabytes`.
    VmbusMmio {
        /// GPA.
        gpa: u64,
        /// `offer.mmio_megabytes` from the channel offer.
        mmio_megabytes: u16,
    },
    /// Gen1: BAR 0 of the emulated PCI video device 1414:5353.
    PciBar {
        /// GPA.
        gpa: u64,
        /// BAR size.
        size: usize,
    },
}

impl VramSource {
    /// Guest physical address of VRAM.
    pub fn gpa(&self) -> u64 {
        match *self {
            VramSource::GopFramebuffer { gpa, .. }
            | VramSource::VmbusMmio { gpa, .. }
            | VramSource::PciBar { gpa, .. } => gpa,
        }
    }
    /// Usable size in bytes (`mmio_megabytes * 1 MiB` for the MMIO range, as hyperv_fb.c
    /// computes `screen_fb_size`).
    pub fn size(&self) -> usize {
        match *self {
            VramSource::GopFramebuffer { size, .. } | VramSource::PciBar { size, .. } => size,
            VramSource::VmbusMmio { mmio_megabytes, .. } => {
                usize::from(mmio_megabytes) * 1024 * 1024
            }
        }
    }
}

/// A display mode (32 bpp only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per line.
    pub pitch: u32,
}

impl Mode {
    /// A 32-bpp mode with a tightly packed pitch.
    pub const fn new(width: u32, height: u32) -> Self {
        Mode {
            width,
            height,
            pitch: width * 4,
        }
    }
    /// Bytes of VRAM the mode needs.
    pub fn bytes(&self) -> usize {
        self.pitch as usize * self.height as usize
    }
}

/// Why bring-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SynthvidError {
    /// The channel failed.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// A message from the host did not parse.
    #[error("bad message from host: {0}")]
    Wire(#[from] wire::WireError),
    /// The request needs a newer negotiated version (RESOLUTION_REQUEST needs WIN10).
    #[error("needs synthvid version {needed:#x}, negotiated {have:#x}")]
    VersionTooOld {
        /// Version needed.
        needed: u32,
        /// Version negotiated.
        have: u32,
    },
    /// The host's resolution list is empty or its default index is out of range.
    #[error("host sent an unusable resolution list ({count} entries, default {default_index})")]
    BadResolutions {
        /// Entries.
        count: u8,
        /// Default index.
        default_index: u8,
    },
    /// The host accepted none of our versions.
    #[error("host accepted no synthvid version (tried 3.5 and 3.2)")]
    NoVersion,
    /// The host did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The VRAM ack did not echo our user_ctx.
    #[error("VRAM_LOCATION_ACK echoed {got:#x}, expected {expected:#x}")]
    BadVramAck {
        /// What the host sent.
        got: u64,
        /// What we sent.
        expected: u64,
    },
    /// The mode does not fit in VRAM.
    #[error("mode needs {need} bytes of VRAM, have {have}")]
    VramTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The driver is not connected.
    #[error("synthvid not connected")]
    NotConnected,
}

/// Result of a DIRT update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtOutcome {
    /// One DIRT message went out.
    Sent,
    /// The host never asked for DIRT (FEATURE_CHANGE.is_dirt_needed = 0): nothing was sent.
    NotRequested,
}

/// Result of the panic-time flush. The appliance maps it onto the crash record's step
/// outcome (`Sent` → Done, `SkippedBusy` → SkippedBusy, `NotRequested`/`NotConnected` →
/// Skipped/NotPresent, `Failed` → Failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// The try-lock succeeded and one full-screen DIRT went out.
    Sent,
    /// The outbound-ring lock was held (the panic fired inside a send): nothing was sent and
    /// nothing waited.
    SkippedBusy,
    /// The host never asked for DIRT; the screen is in VRAM and the host reads it itself.
    NotRequested,
    /// synthvid was never brought up.
    NotConnected,
    /// The send failed for another reason (ring full, channel closed).
    Failed(ChannelError),
}

/// The synthvid driver.
pub struct Synthvid<C: DeviceChannel> {
    chan: C,
    version: Option<u32>,
    mode: Mode,
    vram_gpa: u64,
    connected: AtomicBool,
    dirt_needed: AtomicBool,
    request_id: AtomicU64,
    /// `Poison::code` once the channel reported its ring corrupt (0: healthy).
    poison: AtomicU8,
}

impl<C: DeviceChannel> Synthvid<C> {
    /// Wraps an open synthvid channel.
    pub fn new(chan: C) -> Self {
        Synthvid {
            chan,
            version: None,
            mode: Mode::new(DEFAULT_WIDTH, DEFAULT_HEIGHT),
            vram_gpa: 0,
            connected: AtomicBool::new(false),
            dirt_needed: AtomicBool::new(false),
            request_id: AtomicU64::new(0),
            poison: AtomicU8::new(0),
        }
    }

    /// The channel.
    pub fn channel(&self) -> &C {
        &self.chan
    }
    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<u32> {
        self.version
    }
    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Why the channel was poisoned, if it was: [`Self::poll`] no longer reads it.
    pub fn poisoned(&self) -> Option<ChannelError> {
        Poison::from_code(self.poison.load(Ordering::Acquire)).map(ChannelError::Poisoned)
    }

    /// One receive: a poisoned channel fails at once without reading; a poisoning error is
    /// remembered.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError> {
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        self.chan.recv(buf).inspect_err(|e| {
            if let ChannelError::Poisoned(p) = e {
                log::error!("synthvid: {e}: the channel is no longer read");
                self.poison.store(p.code(), Ordering::Release);
            }
        })
    }
    /// Whether the host asked for DIRT rectangles.
    pub fn dirt_needed(&self) -> bool {
        self.dirt_needed.load(Ordering::Acquire)
    }

    fn send(&self, msg: &Message) -> Result<(), SynthvidError> {
        let mut buf = [0u8; wire::MAX_MESSAGE];
        let n = msg.emit(&mut buf)?;
        self.chan.send(&OutgoingPacket::InBand {
            data: &buf[..n],
            // hyperv_fb.c: `++request_id` per message, flags 0.
            trans_id: self.request_id.fetch_add(1, Ordering::Relaxed) + 1,
            completion_requested: false,
        })?;
        Ok(())
    }

    /// Waits for a message for which `want` returns `Some`, handling FEATURE_CHANGE on the way.
    fn wait_for<T>(
        &self,
        deadline: &mut dyn Deadline,
        what: &'static str,
        mut want: impl FnMut(&Message) -> Option<T>,
    ) -> Result<T, SynthvidError> {
        let mut buf = [0u8; RECV_BUF];
        loop {
            // Checked on every message too: a host that floods the ring cannot hold us.
            let got = match self.recv(&mut buf) {
                Ok(p) => p,
                Err(ChannelError::Malformed(_) | ChannelError::TooLarge(_)) => {
                    log::warn!("synthvid: dropped a malformed packet");
                    if deadline.expired() {
                        return Err(SynthvidError::Timeout(what));
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match got {
                Some(pkt) => {
                    if pkt.kind != PacketKind::InBand {
                        log::debug!("synthvid: ignoring packet type {}", pkt.desc.ty);
                    } else {
                        match Message::parse(pkt.payload) {
                            Ok(msg) => {
                                if let Some(v) = want(&msg) {
                                    return Ok(v);
                                }
                                self.handle(&msg)?;
                            }
                            Err(e) => log::warn!("synthvid: dropping bad message: {e}"),
                        }
                    }
                    if deadline.expired() {
                        return Err(SynthvidError::Timeout(what));
                    }
                }
                None => {
                    if deadline.expired() {
                        return Err(SynthvidError::Timeout(what));
                    }
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// Brings the device up: [`Self::negotiate`] then [`Self::configure`].
    pub fn connect(
        &mut self,
        vram: VramSource,
        mode: Mode,
        deadline: &mut dyn Deadline,
    ) -> Result<u32, SynthvidError> {
        if mode.bytes() > vram.size() {
            return Err(SynthvidError::VramTooSmall {
                need: mode.bytes(),
                have: vram.size(),
            });
        }
        let v = self.negotiate(deadline)?;
        self.configure(vram, mode, deadline)?;
        Ok(v)
    }

    /// Version negotiation: WIN10 (3.5), then WIN8 (3.2).
    pub fn negotiate(&mut self, deadline: &mut dyn Deadline) -> Result<u32, SynthvidError> {
        let mut negotiated = None;
        for v in VERSIONS {
            self.send(&Message::VersionRequest { version: v })?;
            let accepted = self.wait_for(deadline, "VERSION_RESPONSE", |m| match *m {
                Message::VersionResponse { accepted, .. } => Some(accepted),
                _ => None,
            })?;
            if accepted {
                negotiated = Some(v);
                break;
            }
            log::info!("synthvid: host refused version {v:#x}");
        }
        let version = negotiated.ok_or(SynthvidError::NoVersion)?;
        self.version = Some(version);
        Ok(version)
    }

    /// Asks a WIN10+ host for its supported resolutions (hyperv_fb.c
    /// `synthvid_get_supported_resolution`, which Linux treats as optional: on failure it
    /// keeps its default mode). Call between [`Self::negotiate`] and [`Self::configure`].
    pub fn supported_resolutions(
        &mut self,
        deadline: &mut dyn Deadline,
    ) -> Result<Resolutions, SynthvidError> {
        let have = self.version.ok_or(SynthvidError::NotConnected)?;
        if !wire::allowed(wire::MsgType::RESOLUTION_REQUEST, have) {
            return Err(SynthvidError::VersionTooOld {
                needed: wire::VERSION_WIN10,
                have,
            });
        }
        self.send(&Message::ResolutionRequest {
            max_count: wire::MAX_RESOLUTION_COUNT as u8,
        })?;
        let r = self.wait_for(deadline, "RESOLUTION_RESPONSE", |m| match *m {
            Message::ResolutionResponse(r) => Some(r),
            _ => None,
        })?;
        if r.count == 0 || r.preferred().is_none() {
            return Err(SynthvidError::BadResolutions {
                count: r.count,
                default_index: r.default_index,
            });
        }
        Ok(r)
    }

    /// VRAM location (ack checked), pointer, situation update. Needs [`Self::negotiate`].
    pub fn configure(
        &mut self,
        vram: VramSource,
        mode: Mode,
        deadline: &mut dyn Deadline,
    ) -> Result<(), SynthvidError> {
        if self.version.is_none() {
            return Err(SynthvidError::NotConnected);
        }
        if mode.bytes() > vram.size() {
            return Err(SynthvidError::VramTooSmall {
                need: mode.bytes(),
                have: vram.size(),
            });
        }
        // hyperv_fb.c synthvid_send_config: user_ctx = vram GPA, checked on the ack.
        let gpa = vram.gpa();
        self.send(&Message::VramLocation {
            user_ctx: gpa,
            vram_gpa: Some(gpa),
        })?;
        let echoed = self.wait_for(deadline, "VRAM_LOCATION_ACK", |m| match *m {
            Message::VramLocationAck { user_ctx } => Some(user_ctx),
            _ => None,
        })?;
        if echoed != gpa {
            return Err(SynthvidError::BadVramAck {
                got: echoed,
                expected: gpa,
            });
        }
        self.vram_gpa = gpa;
        self.mode = mode;

        // hyperv_fb.c synthvid_send_ptr: a visible pointer at 0,0 and a 1x1 transparent shape.
        self.send(&Message::PointerPosition {
            visible: true,
            video_output: 0,
            x: 0,
            y: 0,
        })?;
        self.send(&Message::PointerShape {
            part_idx: CURSOR_COMPLETE,
            argb: true,
            width: 1,
            height: 1,
            hot_x: 0,
            hot_y: 0,
            data: [0; 4],
        })?;
        self.send_situation()?;
        self.connected.store(true, Ordering::Release);
        Ok(())
    }

    fn send_situation(&self) -> Result<(), SynthvidError> {
        self.send(&Message::SituationUpdate {
            user_ctx: 0,
            count: 1,
            output: Situation {
                active: true,
                vram_offset: 0,
                depth_bits: DEPTH_WIN8,
                width: self.mode.width,
                height: self.mode.height,
                pitch: self.mode.pitch,
            },
        })
    }

    fn handle(&self, msg: &Message) -> Result<(), SynthvidError> {
        if let Message::FeatureChange {
            dirt_needed,
            situ_needed,
            ..
        } = *msg
        {
            // hyperv_fb.c synthvid_recv_sub: `par->update = msg->feature_chg.is_dirt_needed`.
            self.dirt_needed.store(dirt_needed, Ordering::Release);
            // Our choice (not in hyperv_fb.c): answer is_situ_needed with a fresh update.
            if situ_needed && self.connected.load(Ordering::Acquire) {
                self.send_situation()?;
            }
        } else {
            log::debug!("synthvid: ignoring message type {}", msg.ty().0);
        }
        Ok(())
    }

    /// Handles queued inbound messages, at most [`POLL_LIMIT`] per call (call from the
    /// channel interrupt or a poll loop; call again if it returned the limit). Returns how
    /// many were read. A poisoned channel ([`Self::poisoned`]) fails at once, without reading.
    pub fn poll(&self) -> Result<usize, SynthvidError> {
        let mut buf = [0u8; RECV_BUF];
        let mut n = 0;
        while n < POLL_LIMIT {
            let pkt = match self.recv(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(ChannelError::Malformed(_) | ChannelError::TooLarge(_)) => {
                    n += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            n += 1;
            if pkt.kind != PacketKind::InBand {
                continue;
            }
            match Message::parse(pkt.payload) {
                Ok(m) => self.handle(&m)?,
                Err(e) => log::warn!("synthvid: dropping bad message: {e}"),
            }
        }
        Ok(n)
    }

    fn clip(&self, r: Rect) -> Rect {
        // hyperv_fb.c synthvid_update: inverted corners fall back to 0 / the resolution.
        let w = i32::try_from(self.mode.width).unwrap_or(i32::MAX);
        let h = i32::try_from(self.mode.height).unwrap_or(i32::MAX);
        let x1 = if r.x1 > r.x2 { 0 } else { r.x1.clamp(0, w) };
        let y1 = if r.y1 > r.y2 { 0 } else { r.y1.clamp(0, h) };
        let x2 = if r.x2 < r.x1 || r.x2 > w { w } else { r.x2 };
        let y2 = if r.y2 < r.y1 || r.y2 > h { h } else { r.y2 };
        Rect { x1, y1, x2, y2 }
    }

    fn dirt_message(&self, r: Rect) -> Message {
        Message::Dirt {
            video_output: 0,
            count: 1,
            rect: self.clip(r),
        }
    }

    /// Tells the host that `rect` changed, if (and only if) it asked for DIRT.
    pub fn update(&self, rect: Rect) -> Result<DirtOutcome, SynthvidError> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(SynthvidError::NotConnected);
        }
        if !self.dirt_needed() {
            return Ok(DirtOutcome::NotRequested);
        }
        self.send(&self.dirt_message(rect))?;
        Ok(DirtOutcome::Sent)
    }

    /// The panic flush: one full-screen DIRT if the outbound-ring lock is free right now,
    /// otherwise [`FlushOutcome::SkippedBusy`] without waiting. Takes `&self` so it can run
    /// while another context is inside a send.
    pub fn panic_flush(&self) -> FlushOutcome {
        if !self.connected.load(Ordering::Acquire) {
            return FlushOutcome::NotConnected;
        }
        if !self.dirt_needed() {
            return FlushOutcome::NotRequested;
        }
        // Linux hvfb_on_panic: synthvid_update(info, 0, 0, INT_MAX, INT_MAX), clipped.
        let msg = self.dirt_message(Rect {
            x1: 0,
            y1: 0,
            x2: i32::MAX,
            y2: i32::MAX,
        });
        let mut buf = [0u8; wire::MAX_MESSAGE];
        let n = match msg.emit(&mut buf) {
            Ok(n) => n,
            Err(_) => return FlushOutcome::Failed(ChannelError::TooLarge(buf.len())),
        };
        match self.chan.try_send(&OutgoingPacket::InBand {
            data: &buf[..n],
            trans_id: self.request_id.fetch_add(1, Ordering::Relaxed) + 1,
            completion_requested: false,
        }) {
            Ok(()) => FlushOutcome::Sent,
            Err(ChannelError::Busy) => FlushOutcome::SkippedBusy,
            Err(e) => FlushOutcome::Failed(e),
        }
    }
}
