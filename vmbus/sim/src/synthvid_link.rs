//! A ring-backed channel double for the device protocols (synthvid and netvsc), and guest
//! memory shared with the host models.
//!
//! This stands in for an open VMBus channel until the device drivers run on the core
//! engineer's `vmbus::Channel`: two bounded byte rings carrying packets in the VMBus ring
//! format (`reference/hyperv-guest.md` §5.3: 16-byte descriptor, payload padded to 8 bytes,
//! 8-byte trailer), a guest outbound-ring lock with a real compare-and-swap try-lock, an
//! inbound interrupt mask, and GPADLs. The host model runs synchronously after every guest
//! send (and on [`Link::pump`]), like a host that answers instantly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmbus::device::{
    check_bounds, ChannelError, DeviceChannel, DmaMemory, OutgoingPacket, Packet, PacketKind,
    PacketType,
};
use vmbus::ring::{parse_packet, FLAG_COMPLETION_REQUESTED, MAX_BUILT_HEADER};
use vmbus::PAGE_SIZE;

/// Size of `struct vmpacket_descriptor` (ref §5.3).
const DESCRIPTOR_LEN: usize = 16;

/// Guest physical memory: one flat region starting at `base`, handed out page aligned.
#[derive(Clone)]
pub struct SimMemory {
    inner: Arc<Mutex<MemInner>>,
}

struct MemInner {
    base: u64,
    bytes: Vec<u8>,
    next: usize,
}

impl SimMemory {
    /// `size` bytes of guest memory at GPA `base` (page aligned).
    pub fn new(base: u64, size: usize) -> Self {
        assert_eq!(base % PAGE_SIZE as u64, 0);
        SimMemory {
            inner: Arc::new(Mutex::new(MemInner {
                base,
                bytes: vec![0; size],
                next: 0,
            })),
        }
    }
    /// Allocates a page-aligned region.
    pub fn alloc(&self, len: usize) -> SimRegion {
        let mut m = self.inner.lock().unwrap();
        let off = m.next;
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        m.next += pages * PAGE_SIZE;
        assert!(m.next <= m.bytes.len(), "SimMemory exhausted");
        SimRegion {
            mem: self.clone(),
            gpa: m.base + off as u64,
            len,
        }
    }
    /// Reads guest memory at a GPA.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), ChannelError> {
        let m = self.inner.lock().unwrap();
        let off = gpa.checked_sub(m.base).ok_or(ChannelError::OutOfBounds {
            offset: 0,
            len: out.len(),
        })? as usize;
        check_bounds(m.bytes.len(), off, out.len())?;
        out.copy_from_slice(&m.bytes[off..off + out.len()]);
        Ok(())
    }
    /// Writes guest memory at a GPA.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), ChannelError> {
        let mut m = self.inner.lock().unwrap();
        let off = gpa.checked_sub(m.base).ok_or(ChannelError::OutOfBounds {
            offset: 0,
            len: data.len(),
        })? as usize;
        check_bounds(m.bytes.len(), off, data.len())?;
        m.bytes[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A region of [`SimMemory`] as the guest driver sees it.
#[derive(Clone)]
pub struct SimRegion {
    mem: SimMemory,
    gpa: u64,
    len: usize,
}

impl DmaMemory for SimRegion {
    fn len(&self) -> usize {
        self.len
    }
    fn gpa(&self) -> u64 {
        self.gpa
    }
    fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), ChannelError> {
        check_bounds(self.len, offset, out.len())?;
        self.mem.read(self.gpa + offset as u64, out)
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), ChannelError> {
        check_bounds(self.len, offset, data.len())?;
        self.mem.write(self.gpa + offset as u64, data)
    }
}

/// A bounded ring of packets with VMBus ring accounting: each packet takes its bytes
/// (descriptor..len8*8) plus the 8-byte trailer, and 8 bytes always stay free (Linux never
/// lets the writer catch up with the reader). Packets are kept whole, so a malformed
/// descriptor cannot desynchronise the reader.
struct ByteRing {
    packets: VecDeque<Vec<u8>>,
    used: usize,
    capacity: usize,
}

impl ByteRing {
    fn new(capacity: usize) -> Self {
        ByteRing {
            packets: VecDeque::new(),
            used: 0,
            capacity,
        }
    }
    fn push(&mut self, packet: &[u8]) -> Result<bool, ChannelError> {
        let need = packet.len() + 8;
        if need > self.capacity - 8 {
            return Err(ChannelError::TooLarge(packet.len()));
        }
        if self.used + need > self.capacity - 8 {
            return Err(ChannelError::Full);
        }
        let was_empty = self.packets.is_empty();
        self.used += need;
        self.packets.push_back(packet.to_vec());
        Ok(was_empty)
    }
    fn head_len(&self) -> Option<usize> {
        self.packets.front().map(|p| p.len())
    }
    fn pop(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let p = self.packets.pop_front()?;
        self.used -= p.len() + 8;
        *out = p;
        Some(())
    }
    fn used(&self) -> usize {
        self.used
    }
}

/// Encodes a packet the way a VMBus ring carries it. `ext` goes between the descriptor and
/// `offset8 * 8` (padded to 8); the payload is padded to 8.
pub fn encode_packet(kind: u16, flags: u16, trans_id: u64, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let off = (DESCRIPTOR_LEN + ext.len()).div_ceil(8) * 8;
    let len = (off + payload.len()).div_ceil(8) * 8;
    let mut v = vec![0u8; len];
    v[0..2].copy_from_slice(&kind.to_le_bytes());
    v[2..4].copy_from_slice(&((off / 8) as u16).to_le_bytes());
    v[4..6].copy_from_slice(&((len / 8) as u16).to_le_bytes());
    v[6..8].copy_from_slice(&flags.to_le_bytes());
    v[8..16].copy_from_slice(&trans_id.to_le_bytes());
    v[DESCRIPTOR_LEN..DESCRIPTOR_LEN + ext.len()].copy_from_slice(ext);
    v[off..off + payload.len()].copy_from_slice(payload);
    v
}

/// One page of a GPA-direct packet as the host model reads it (`struct hv_page_buffer`,
/// Linux `include/linux/hyperv.h`: `{u32 len; u32 offset; u64 pfn}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPage {
    /// Bytes used in this page.
    pub len: u32,
    /// Offset of the data in this page.
    pub offset: u32,
    /// Guest page frame number (GPA >> 12).
    pub pfn: u64,
}

/// A packet as the host model sees it.
#[derive(Debug, Clone)]
pub struct HostPacket {
    /// Packet type.
    pub kind: u16,
    /// Flags.
    pub flags: u16,
    /// Transaction id.
    pub trans_id: u64,
    /// Bytes between descriptor and data offset.
    pub ext: Vec<u8>,
    /// Data.
    pub payload: Vec<u8>,
    /// Pages of a GPA-direct packet (its ranges, split at page boundaries).
    pub pages: Vec<HostPage>,
}

impl HostPacket {
    /// Whether the guest asked for a completion.
    pub fn completion_requested(&self) -> bool {
        self.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

/// A host-side device model attached to a [`Link`].
pub trait HostDevice: Send {
    /// Handles one packet from the guest.
    fn on_packet(&mut self, io: &mut HostIo<'_>, pkt: &HostPacket);
    /// Periodic work (e.g. frames arriving from outside).
    fn on_tick(&mut self, _io: &mut HostIo<'_>) {}
}

/// Where a host model's I/O goes: guest memory, GPADLs and the guest's inbound ring. The
/// [`Link`] double implements it, and so does [`CoreHost`] over the core sim's real rings.
pub trait HostBackend {
    /// Reads guest memory.
    fn read_mem(&self, gpa: u64, out: &mut [u8]) -> Result<(), ChannelError>;
    /// Writes guest memory.
    fn write_mem(&self, gpa: u64, data: &[u8]) -> Result<(), ChannelError>;
    /// Looks a GPADL up as one contiguous `(gpa, len)`.
    fn gpadl(&self, handle: u32) -> Option<(u64, usize)>;
    /// Queues raw packet bytes (descriptor included, length a multiple of 8) for the guest.
    fn send_raw(&self, pkt: &[u8]) -> Result<(), ChannelError>;
}

/// What a host model can do to the guest.
pub struct HostIo<'a> {
    b: &'a dyn HostBackend,
}

impl<'a> HostIo<'a> {
    /// Host I/O through `b`.
    pub fn new(b: &'a dyn HostBackend) -> Self {
        HostIo { b }
    }
    /// Reads guest memory.
    pub fn read_mem(&self, gpa: u64, out: &mut [u8]) -> Result<(), ChannelError> {
        self.b.read_mem(gpa, out)
    }
    /// Writes guest memory.
    pub fn write_mem(&self, gpa: u64, data: &[u8]) -> Result<(), ChannelError> {
        self.b.write_mem(gpa, data)
    }
    /// Looks a GPADL up: `(gpa, len)`.
    pub fn gpadl(&self, handle: u32) -> Option<(u64, usize)> {
        self.b.gpadl(handle)
    }
    /// Queues a packet on the guest's inbound ring.
    pub fn send(
        &mut self,
        kind: u16,
        flags: u16,
        trans_id: u64,
        ext: &[u8],
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.send_raw(&encode_packet(kind, flags, trans_id, ext, payload))
    }
    /// Queues raw packet bytes (for malformed-packet tests).
    pub fn send_raw(&mut self, pkt: &[u8]) -> Result<(), ChannelError> {
        self.b.send_raw(pkt)
    }
    /// Sends an in-band packet.
    pub fn send_inband(&mut self, payload: &[u8]) -> Result<(), ChannelError> {
        self.send(PacketType::DATA_INBAND.0, 0, 0, &[], payload)
    }
    /// Sends a completion.
    pub fn send_completion(&mut self, trans_id: u64, payload: &[u8]) -> Result<(), ChannelError> {
        self.send(PacketType::COMP.0, 0, trans_id, &[], payload)
    }
}

impl HostBackend for LinkInner {
    fn read_mem(&self, gpa: u64, out: &mut [u8]) -> Result<(), ChannelError> {
        self.mem.read(gpa, out)
    }
    fn write_mem(&self, gpa: u64, data: &[u8]) -> Result<(), ChannelError> {
        self.mem.write(gpa, data)
    }
    fn gpadl(&self, handle: u32) -> Option<(u64, usize)> {
        self.gpadls
            .lock()
            .unwrap()
            .iter()
            .find(|g| g.0 == handle)
            .map(|g| (g.1, g.2))
    }
    /// Raises the guest interrupt if the ring was empty and the guest has not masked it
    /// (§5.2).
    fn send_raw(&self, pkt: &[u8]) -> Result<(), ChannelError> {
        let was_empty = self.to_guest.lock().unwrap().push(pkt)?;
        if was_empty && !self.guest_masked.load(Ordering::Acquire) {
            self.interrupts.fetch_add(1, Ordering::AcqRel);
            self.irq_pending.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// The host end of a channel of the core sim ([`crate::Sim`]): real rings in guest memory,
/// GPADLs as the sim recorded them.
pub struct CoreHost<'s> {
    sim: &'s crate::Sim,
    relid: u32,
}

impl<'s> CoreHost<'s> {
    /// The host end of channel `relid` (which must be open).
    pub fn new(sim: &'s crate::Sim, relid: u32) -> Self {
        CoreHost { sim, relid }
    }
    /// Runs `dev` on every packet the guest has written, then its tick. Returns how many
    /// packets it handled.
    pub fn pump(&self, dev: &mut dyn HostDevice) -> usize {
        let Some(hc) = self.sim.host_channel(self.relid) else {
            return 0;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        while let Ok(Some(out)) = hc.from_guest.read(&mut buf) {
            n += 1;
            if let Some(pkt) = decode_host_packet(&buf[..out.len]) {
                dev.on_packet(&mut HostIo::new(self), &pkt);
            }
        }
        dev.on_tick(&mut HostIo::new(self));
        n
    }
}

impl HostBackend for CoreHost<'_> {
    fn read_mem(&self, gpa: u64, out: &mut [u8]) -> Result<(), ChannelError> {
        if self.sim.mem.read(gpa, out) {
            Ok(())
        } else {
            Err(ChannelError::OutOfBounds {
                offset: gpa as usize,
                len: out.len(),
            })
        }
    }
    fn write_mem(&self, gpa: u64, data: &[u8]) -> Result<(), ChannelError> {
        if self.sim.mem.write(gpa, data) {
            Ok(())
        } else {
            Err(ChannelError::OutOfBounds {
                offset: gpa as usize,
                len: data.len(),
            })
        }
    }
    fn gpadl(&self, handle: u32) -> Option<(u64, usize)> {
        let ranges = self.sim.gpadl_ranges(handle)?;
        let [(count, offset, pfns)] = ranges.as_slice() else {
            return None;
        };
        let contiguous = pfns.windows(2).all(|w| w[1] == w[0] + 1);
        (contiguous && !pfns.is_empty()).then(|| {
            (
                pfns[0] * PAGE_SIZE as u64 + u64::from(*offset),
                *count as usize,
            )
        })
    }
    fn send_raw(&self, pkt: &[u8]) -> Result<(), ChannelError> {
        let hc = self
            .sim
            .host_channel(self.relid)
            .ok_or(ChannelError::Closed)?;
        // Chaos (if on) may drop, duplicate, hold back or damage the packet.
        for p in self.sim.chaos_packets(self.relid, pkt) {
            match hc.to_guest.write(&[&p]) {
                Ok(_) => {}
                Err(vmbus::ring::RingError::Full { .. }) => return Err(ChannelError::Full),
                Err(_) => return Err(ChannelError::TooLarge(p.len())),
            }
        }
        Ok(())
    }
}

struct LinkInner {
    mem: SimMemory,
    out_lock: AtomicBool,
    to_host: Mutex<ByteRing>,
    to_guest: Mutex<ByteRing>,
    device: Mutex<Option<Box<dyn HostDevice>>>,
    gpadls: Mutex<Vec<(u32, u64, usize)>>,
    guest_masked: AtomicBool,
    irq_pending: AtomicBool,
    interrupts: AtomicU64,
    signals: AtomicU64,
    guest_sends: AtomicU64,
    next_gpadl: AtomicU64,
}

/// One channel between a guest driver and a host model.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

/// Holds the guest's outbound-ring lock (as a send in progress on another CPU would).
pub struct OutboundLockGuard {
    inner: Arc<LinkInner>,
}

impl Drop for OutboundLockGuard {
    fn drop(&mut self) {
        self.inner.out_lock.store(false, Ordering::Release);
    }
}

impl Link {
    /// A link with `ring_size`-byte rings (data area) in each direction.
    pub fn new(mem: SimMemory, ring_size: usize, device: Box<dyn HostDevice>) -> Self {
        Link {
            inner: Arc::new(LinkInner {
                mem,
                out_lock: AtomicBool::new(false),
                to_host: Mutex::new(ByteRing::new(ring_size)),
                to_guest: Mutex::new(ByteRing::new(ring_size)),
                device: Mutex::new(Some(device)),
                gpadls: Mutex::new(Vec::new()),
                guest_masked: AtomicBool::new(false),
                irq_pending: AtomicBool::new(false),
                interrupts: AtomicU64::new(0),
                signals: AtomicU64::new(0),
                guest_sends: AtomicU64::new(0),
                next_gpadl: AtomicU64::new(0x1000),
            }),
        }
    }

    /// The guest's end, implementing [`DeviceChannel`].
    pub fn guest(&self) -> SimChannel {
        SimChannel {
            inner: self.inner.clone(),
        }
    }

    /// Takes the guest's outbound-ring lock, spinning until it is free (test helper for
    /// "a send is in progress elsewhere").
    pub fn lock_outbound(&self) -> OutboundLockGuard {
        while self
            .inner
            .out_lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        OutboundLockGuard {
            inner: self.inner.clone(),
        }
    }

    /// Runs the host: drains guest packets into the device, then its tick.
    pub fn pump(&self) {
        run_host(&self.inner, true);
    }

    /// Runs `f` with host access (e.g. to make the host send something unsolicited).
    pub fn inject<R>(&self, f: impl FnOnce(&mut HostIo<'_>) -> R) -> R {
        f(&mut HostIo::new(&*self.inner))
    }

    /// Creates GPADLs on this link (what the guest's VMBus connection would do).
    pub fn gpadls(&self) -> impl FnMut(u64, usize) -> Result<u32, ChannelError> + '_ {
        move |gpa, len| {
            if !gpa.is_multiple_of(PAGE_SIZE as u64) || len == 0 {
                return Err(ChannelError::Gpadl(0xC000_000D));
            }
            let h = self.inner.next_gpadl.fetch_add(1, Ordering::AcqRel) as u32;
            self.inner.gpadls.lock().unwrap().push((h, gpa, len));
            Ok(h)
        }
    }

    /// Interrupts raised to the guest so far.
    pub fn interrupts(&self) -> u64 {
        self.inner.interrupts.load(Ordering::Acquire)
    }
    /// Takes the pending-interrupt flag (what the guest's ISR would see).
    pub fn take_interrupt(&self) -> bool {
        self.inner.irq_pending.swap(false, Ordering::AcqRel)
    }
    /// Whether the guest masked its inbound interrupt.
    pub fn guest_masked(&self) -> bool {
        self.inner.guest_masked.load(Ordering::Acquire)
    }
    /// Packets the guest has sent.
    pub fn guest_sends(&self) -> u64 {
        self.inner.guest_sends.load(Ordering::Acquire)
    }
    /// Signals the guest raised.
    pub fn signals(&self) -> u64 {
        self.inner.signals.load(Ordering::Acquire)
    }
    /// Bytes waiting for the guest.
    pub fn to_guest_used(&self) -> usize {
        self.inner.to_guest.lock().unwrap().used()
    }
}

fn decode_host_packet(raw: &[u8]) -> Option<HostPacket> {
    let p = parse_packet(raw).ok()?;
    let mut pages = Vec::new();
    if let PacketKind::GpaDirect { ranges, .. } = p.kind {
        // gpa_range records, {u32 byte_count; u32 byte_offset; u64 pfn[]} (their lengths
        // validated by the parser): each becomes the pages it spans.
        let words: Vec<u64> = ranges
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut w = words.iter().copied();
        while let Some(head) = w.next() {
            let mut count = head as u32;
            let mut offset = (head >> 32) as u32 % PAGE_SIZE as u32;
            let spanned = (u64::from(offset) + u64::from(count)).div_ceil(PAGE_SIZE as u64);
            for pfn in w.by_ref().take(spanned as usize) {
                let len = count.min(PAGE_SIZE as u32 - offset);
                pages.push(HostPage { len, offset, pfn });
                count -= len;
                offset = 0;
            }
        }
    }
    Some(HostPacket {
        kind: p.desc.ty,
        flags: p.desc.flags,
        trans_id: p.desc.trans_id,
        ext: raw[DESCRIPTOR_LEN..usize::from(p.desc.offset8) * 8].to_vec(),
        payload: p.payload.to_vec(),
        pages,
    })
}

fn run_host(inner: &LinkInner, tick: bool) {
    let Ok(mut dev) = inner.device.try_lock() else {
        return; // already running (re-entered from a host callback)
    };
    let Some(dev) = dev.as_mut() else { return };
    let mut raw = Vec::new();
    loop {
        let got = inner.to_host.lock().unwrap().pop(&mut raw);
        if got.is_none() {
            break;
        }
        if let Some(pkt) = decode_host_packet(&raw) {
            dev.on_packet(&mut HostIo::new(inner), &pkt);
        }
    }
    if tick {
        dev.on_tick(&mut HostIo::new(inner));
    }
}

/// The guest end of a [`Link`].
#[derive(Clone)]
pub struct SimChannel {
    inner: Arc<LinkInner>,
}

impl SimChannel {
    /// The packet as the guest's ring would carry it, built by the ring's own builder.
    fn encode(pkt: &OutgoingPacket<'_>) -> Result<Vec<u8>, ChannelError> {
        let mut hdr = [0u8; MAX_BUILT_HEADER];
        let (n, data) = pkt.build_header(&mut hdr)?;
        let mut v = hdr[..n].to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(8), 0);
        Ok(v)
    }

    fn send_locked(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        let r = Self::encode(pkt).and_then(|raw| self.inner.to_host.lock().unwrap().push(&raw));
        self.inner.out_lock.store(false, Ordering::Release);
        let was_empty = r?;
        self.inner.guest_sends.fetch_add(1, Ordering::AcqRel);
        if was_empty {
            // §5.2: signal on empty -> non-empty (the host never masks in this model).
            self.inner.signals.fetch_add(1, Ordering::AcqRel);
        }
        run_host(&self.inner, false);
        Ok(())
    }
}

impl DeviceChannel for SimChannel {
    fn send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        while self
            .inner
            .out_lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        self.send_locked(pkt)
    }

    fn try_send(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        if self
            .inner
            .out_lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(ChannelError::Busy);
        }
        self.send_locked(pkt)
    }

    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Packet<'b>>, ChannelError> {
        let mut ring = self.inner.to_guest.lock().unwrap();
        let Some(len) = ring.head_len() else {
            return Ok(None);
        };
        if len > buf.len() {
            // Skip it, as a ring reader that cannot take a packet must (and report it).
            let mut skip = Vec::new();
            ring.pop(&mut skip);
            return Err(ChannelError::TooLarge(len));
        }
        let mut v = Vec::new();
        ring.pop(&mut v);
        drop(ring);
        buf[..len].copy_from_slice(&v);
        Ok(Some(parse_packet(&buf[..len])?))
    }

    fn signal(&self) {
        self.inner.signals.fetch_add(1, Ordering::AcqRel);
        run_host(&self.inner, false);
    }

    fn set_interrupt_mask(&self, masked: bool) {
        self.inner.guest_masked.store(masked, Ordering::Release);
    }
}
