//! VMBus ring buffers (ref §5; Linux `include/linux/hyperv.h` `struct hv_ring_buffer`,
//! `drivers/hv/ring_buffer.c`; OpenVMM `vmbus_ring`).
//!
//! A ring is a 4096-byte control page followed by the data area. Indices are byte offsets
//! into the data area; packets are multiples of 8 bytes followed by an 8-byte trailer holding
//! the packet's start offset in its upper 32 bits. The writer never fills the ring completely.
//! [`Ring`] is symmetric: the guest writes its outbound ring and reads its inbound one; the
//! host model does the opposite with the same code paths checked by independent tests.

use core::sync::atomic::{fence, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mem;

/// Control page field offsets (ref §5.1).
pub mod ctrl {
    pub const WRITE_INDEX: usize = 0;
    pub const READ_INDEX: usize = 4;
    pub const INTERRUPT_MASK: usize = 8;
    pub const PENDING_SEND_SZ: usize = 12;
    pub const FEATURE_BITS: usize = 64;
    /// `feat_pending_send_sz` (ref §5.1, OpenVMM `FEATURE_SUPPORTS_PENDING_SEND_SIZE`).
    pub const FEAT_PENDING_SEND_SZ: u32 = 1;
    /// Size of the control page.
    pub const SIZE: usize = 4096;
}

/// `struct hv_ring_buffer` control page (ref §5.1), for layout checks.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RingControl {
    pub write_index: u32,
    pub read_index: u32,
    pub interrupt_mask: u32,
    pub pending_send_sz: u32,
    pub reserved1: [u32; 12],
    pub feature_bits: u32,
    pub reserved2: [u8; 4028],
}
const _: () = assert!(core::mem::size_of::<RingControl>() == 4096);

/// Packet trailer size (Linux `VMBUS_PKT_TRAILER`).
pub const TRAILER: usize = 8;

/// `enum vmbus_packet_type` (ref §5.3). An open enum (`open_enum`): unknown values are kept.
#[open_enum::open_enum]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)] // the C names
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u16)]
pub enum PacketType {
    SYNCH = 1,
    ADD_XFER_PAGESET = 2,
    RM_XFER_PAGESET = 3,
    ESTABLISH_GPADL = 4,
    TEARDOWN_GPADL = 5,
    DATA_INBAND = 6,
    DATA_USING_XFER_PAGES = 7,
    DATA_USING_GPADL = 8,
    DATA_USING_GPA_DIRECT = 9,
    CANCEL_REQUEST = 0xA,
    COMP = 0xB,
    DATA_USING_ADDITIONAL_PKT = 0xC,
    ADDITIONAL_DATA = 0xD,
}

/// `VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED` (ref §5.3).
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// `struct vmpacket_descriptor` (ref §5.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PacketDescriptor {
    pub ty: u16,
    /// Offset of the payload in 8-byte units.
    pub offset8: u16,
    /// Total length (without trailer) in 8-byte units.
    pub len8: u16,
    pub flags: u16,
    pub trans_id: u64,
}
const _: () = assert!(core::mem::size_of::<PacketDescriptor>() == 16);

/// The part of `vmtransfer_page_packet_header` after the descriptor (ref §5.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TransferPageHeader {
    pub xfer_pageset_id: u16,
    pub sender_owns_set: u8,
    pub reserved: u8,
    pub range_count: u32,
}
const _: () = assert!(core::mem::size_of::<TransferPageHeader>() == 8);

/// `struct vmtransfer_page_range` (ref §5.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TransferPageRange {
    pub byte_count: u32,
    pub byte_offset: u32,
}
const _: () = assert!(core::mem::size_of::<TransferPageRange>() == 8);

/// The part of `vmbus_channel_packet_page_buffer` after the descriptor (ref §5.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpaDirectHeader {
    pub reserved: u32,
    pub range_count: u32,
}
const _: () = assert!(core::mem::size_of::<GpaDirectHeader>() == 8);

/// The page frames of a GPA range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pfns<'a> {
    List(&'a [u64]),
    Contiguous { first: u64, count: usize },
}

impl Pfns<'_> {
    pub fn len(&self) -> usize {
        match self {
            Pfns::List(l) => l.len(),
            Pfns::Contiguous { count, .. } => *count,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, i: usize) -> Option<u64> {
        match self {
            Pfns::List(l) => l.get(i).copied(),
            Pfns::Contiguous { first, count } => (i < *count).then(|| first + i as u64),
        }
    }
}

/// `gpa_range { u32 byte_count; u32 byte_offset; u64 pfn[] }` (ref §4.4, §5.3): used by
/// GPADLs and GPA-direct packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRange<'a> {
    pub byte_count: u32,
    pub byte_offset: u32,
    pub pfns: Pfns<'a>,
}

impl GpaRange<'static> {
    /// `len` bytes of physically contiguous guest memory at `gpa` (any alignment): one range
    /// over the pages it spans.
    pub fn contiguous(gpa: u64, len: u32) -> Self {
        let byte_offset = (gpa % crate::PAGE_SIZE as u64) as u32;
        GpaRange {
            byte_count: len,
            byte_offset,
            pfns: Pfns::Contiguous {
                first: gpa / crate::PAGE_SIZE as u64,
                count: pages_spanned(byte_offset, len),
            },
        }
    }
}

impl GpaRange<'_> {
    /// The range as 64-bit words: header word then PFNs.
    pub fn word(&self, i: usize) -> Option<u64> {
        if i == 0 {
            Some(self.byte_count as u64 | (self.byte_offset as u64) << 32)
        } else {
            self.pfns.get(i - 1)
        }
    }
    pub fn words(&self) -> usize {
        1 + self.pfns.len()
    }
}

/// Ring errors. Host-controlled values are validated, never trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring memory of {0} bytes is not a control page plus a page-multiple data area")]
    BadSize(usize),
    #[error("ring index out of range or misaligned (write {write}, read {read}, size {size})")]
    BadIndex { write: u32, read: u32, size: u32 },
    #[error("not enough room in the ring for {needed} bytes ({free} free)")]
    Full { needed: usize, free: usize },
    #[error("packet of {0} bytes is not a multiple of 8")]
    Unaligned(usize),
    #[error("packet too large for the ring or its length field ({0} bytes)")]
    TooLarge(usize),
    #[error(
        "corrupt packet descriptor (offset8 {offset8}, len8 {len8}, {available} bytes in ring)"
    )]
    BadDescriptor {
        offset8: u16,
        len8: u16,
        available: u32,
    },
    /// The packet did not fit the caller's buffer and was consumed (dropped), so the next
    /// read gets the next packet. A no-heap guest cannot grow its buffer, and leaving the
    /// packet in place would wedge the channel on it forever.
    #[error("dropped a {needed}-byte packet: receive buffer has {have} bytes")]
    PacketDropped { needed: usize, have: usize },
    /// The descriptor was sound (the packet was consumed) but its type-specific header was
    /// not; `desc` says whose packet it was, so a driver can still complete it.
    #[error("packet header area is malformed: {why}")]
    BadPacketHeader {
        why: &'static str,
        desc: PacketDescriptor,
    },
}

/// What a write decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Signal the reader: the ring went from empty to non-empty and the reader's
    /// `interrupt_mask` is 0 (ref §5.2, Linux `hv_signal_on_write`).
    pub signal: bool,
    /// Start offset of the packet.
    pub offset: u32,
}

/// What a read did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes copied into the buffer (the packet without its trailer).
    pub len: usize,
    /// Signal the writer: `feat_pending_send_sz` is set and free space crossed its
    /// `pending_send_sz` (ref §5.2, Linux `hv_pkt_iter_close`).
    pub signal: bool,
}

/// One direction of a channel, over shared memory.
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    ctrl: *mut u8,
    data: *mut u8,
    size: u32,
}

// SAFETY: a Ring is a pair of pointers into shared memory accessed only atomically/volatile.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring over `len` bytes at `base`: control page, then data.
    ///
    /// # Safety
    /// `base..base+len` must be valid, page-aligned memory for as long as the ring is used.
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<Self, RingError> {
        if len <= ctrl::SIZE
            || !len.is_multiple_of(crate::PAGE_SIZE)
            || len - ctrl::SIZE > u32::MAX as usize
        {
            return Err(RingError::BadSize(len));
        }
        Ok(Self {
            ctrl: base,
            data: base.wrapping_add(ctrl::SIZE),
            size: (len - ctrl::SIZE) as u32,
        })
    }

    /// Size of the data area.
    pub fn data_size(&self) -> u32 {
        self.size
    }

    fn field(&self, off: usize) -> &core::sync::atomic::AtomicU32 {
        // SAFETY: `off` is one of the 4-byte aligned control-page offsets in `ctrl`.
        unsafe { mem::atomic_u32(self.ctrl.wrapping_add(off)) }
    }

    pub fn write_index(&self) -> u32 {
        self.field(ctrl::WRITE_INDEX).load(Ordering::Acquire)
    }
    pub fn read_index(&self) -> u32 {
        self.field(ctrl::READ_INDEX).load(Ordering::Acquire)
    }
    pub fn interrupt_mask(&self) -> u32 {
        self.field(ctrl::INTERRUPT_MASK).load(Ordering::Acquire)
    }
    /// The reader sets this to 1 while it polls (ref §5.2).
    pub fn set_interrupt_mask(&self, v: u32) {
        self.field(ctrl::INTERRUPT_MASK).store(v, Ordering::Release);
        fence(Ordering::SeqCst);
    }
    pub fn pending_send_sz(&self) -> u32 {
        self.field(ctrl::PENDING_SEND_SZ).load(Ordering::Acquire)
    }
    /// The writer asks to be signalled once this many bytes are free.
    pub fn set_pending_send_sz(&self, v: u32) {
        self.field(ctrl::PENDING_SEND_SZ)
            .store(v, Ordering::Release);
        fence(Ordering::SeqCst);
    }
    pub fn feature_bits(&self) -> u32 {
        self.field(ctrl::FEATURE_BITS).load(Ordering::Acquire)
    }
    pub fn set_feature_bits(&self, v: u32) {
        self.field(ctrl::FEATURE_BITS).store(v, Ordering::Release);
    }

    fn indices(&self) -> Result<(u32, u32), RingError> {
        let (w, r) = (self.write_index(), self.read_index());
        if w >= self.size || r >= self.size || w % 8 != 0 || r % 8 != 0 {
            return Err(RingError::BadIndex {
                write: w,
                read: r,
                size: self.size,
            });
        }
        Ok((w, r))
    }

    fn used(&self, w: u32, r: u32) -> u32 {
        if w >= r {
            w - r
        } else {
            self.size - r + w
        }
    }

    /// Bytes waiting to be read.
    pub fn bytes_to_read(&self) -> Result<u32, RingError> {
        let (w, r) = self.indices()?;
        Ok(self.used(w, r))
    }

    /// Bytes free for writing (Linux `hv_get_bytes_to_write`).
    pub fn bytes_to_write(&self) -> Result<u32, RingError> {
        let (w, r) = self.indices()?;
        Ok(self.size - self.used(w, r))
    }

    fn copy_in(&self, mut off: u32, src: &[u8]) -> u32 {
        let mut rest = src;
        while !rest.is_empty() {
            let room = (self.size - off) as usize;
            let n = room.min(rest.len());
            // SAFETY: off < size and n ≤ size - off, inside the data area.
            unsafe { mem::write_bytes(self.data.wrapping_add(off as usize), &rest[..n]) };
            rest = &rest[n..];
            off = (off + n as u32) % self.size;
        }
        off
    }

    fn copy_out(&self, mut off: u32, dst: &mut [u8]) -> u32 {
        let mut done = 0;
        while done < dst.len() {
            let room = (self.size - off) as usize;
            let n = room.min(dst.len() - done);
            // SAFETY: off < size and n ≤ size - off, inside the data area.
            unsafe {
                mem::read_bytes(
                    self.data.wrapping_add(off as usize),
                    &mut dst[done..done + n],
                )
            };
            done += n;
            off = (off + n as u32) % self.size;
        }
        off
    }

    /// Write one packet given as segments (their total must be a multiple of 8), then the
    /// trailer; publish the new write index. Never overwrites unread data: fails with `Full`
    /// unless strictly more than packet + trailer bytes are free.
    pub fn write(&self, segments: &[&[u8]]) -> Result<WriteOutcome, RingError> {
        let len: usize = segments.iter().map(|s| s.len()).sum();
        if !len.is_multiple_of(8) {
            return Err(RingError::Unaligned(len));
        }
        let total = len + TRAILER;
        let (w, r) = self.indices()?;
        let free = (self.size - self.used(w, r)) as usize;
        if free <= total {
            return Err(RingError::Full {
                needed: total,
                free,
            });
        }
        let mut off = w;
        for s in segments {
            off = self.copy_in(off, s);
        }
        off = self.copy_in(off, &((w as u64) << 32).to_le_bytes());
        fence(Ordering::SeqCst);
        self.field(ctrl::WRITE_INDEX).store(off, Ordering::Release);
        fence(Ordering::SeqCst);
        let signal = self.interrupt_mask() == 0 && self.read_index() == w;
        Ok(WriteOutcome { signal, offset: w })
    }

    /// Copy the next packet (without trailer) into `buf` and consume it. `Ok(None)` when
    /// empty. A packet too large for `buf` is consumed and reported (`PacketDropped`).
    pub fn read(&self, buf: &mut [u8]) -> Result<Option<ReadOutcome>, RingError> {
        let (w, r) = self.indices()?;
        let avail = self.used(w, r);
        if avail == 0 {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let mut d = [0u8; 16];
        if (avail as usize) < d.len() + TRAILER {
            return Err(RingError::BadDescriptor {
                offset8: 0,
                len8: 0,
                available: avail,
            });
        }
        self.copy_out(r, &mut d);
        let desc = PacketDescriptor::read_from_bytes(&d).map_err(|_| RingError::BadDescriptor {
            offset8: 0,
            len8: 0,
            available: avail,
        })?;
        let len = desc.len8 as usize * 8;
        if desc.offset8 < 2 || desc.len8 < desc.offset8 || len + TRAILER > avail as usize {
            return Err(RingError::BadDescriptor {
                offset8: desc.offset8,
                len8: desc.len8,
                available: avail,
            });
        }
        let fits = len <= buf.len();
        if fits {
            self.copy_out(r, &mut buf[..len]);
        }
        let signal = self.consume(r, avail, len);
        if !fits {
            return Err(RingError::PacketDropped {
                needed: len,
                have: buf.len(),
            });
        }
        Ok(Some(ReadOutcome { len, signal }))
    }

    /// Advance the read index past a `len`-byte packet and its trailer; returns whether the
    /// writer must be signalled (its `pending_send_sz` threshold was crossed, ref §5.2).
    fn consume(&self, r: u32, avail: u32, len: usize) -> bool {
        let free_before = self.size - avail;
        let new_r = ((r as usize + len + TRAILER) % self.size as usize) as u32;
        fence(Ordering::SeqCst);
        self.field(ctrl::READ_INDEX).store(new_r, Ordering::Release);
        fence(Ordering::SeqCst);
        let free_after = free_before + (len + TRAILER) as u32;
        self.feature_bits() & ctrl::FEAT_PENDING_SEND_SZ != 0 && {
            let pending = self.pending_send_sz();
            pending != 0 && free_before <= pending && free_after > pending
        }
    }
}

/// A parsed packet (a view over bytes copied out of a ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub desc: PacketDescriptor,
    pub kind: PacketKind<'a>,
    /// The bytes from `offset8 * 8` to `len8 * 8`.
    pub payload: &'a [u8],
}

impl Packet<'_> {
    pub fn trans_id(&self) -> u64 {
        self.desc.trans_id
    }
    pub fn completion_requested(&self) -> bool {
        self.desc.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

/// The type-specific part of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind<'a> {
    InBand,
    Completion,
    /// `{u16 xfer_pageset_id; u8 sender_owns_set; u8 rsvd; u32 range_cnt; ranges[]}`.
    XferPages {
        pageset_id: u16,
        sender_owns_set: bool,
        /// `range_count` × `{u32 byte_count; u32 byte_offset}`.
        ranges: &'a [u8],
    },
    /// `{u32 rsvd; u32 rangecount; gpa_range[]}`; `ranges` holds the raw range records.
    GpaDirect {
        range_count: u32,
        ranges: &'a [u8],
    },
    Other(PacketType),
}

impl<'a> PacketKind<'a> {
    /// Transfer-page ranges as `(byte_count, byte_offset)`.
    pub fn xfer_ranges(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        let r: &'a [u8] = match self {
            PacketKind::XferPages { ranges, .. } => ranges,
            _ => &[],
        };
        r.chunks_exact(8).map(|c| {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
    }
}

fn pages_spanned(byte_offset: u32, byte_count: u32) -> usize {
    let start = (byte_offset as u64) & (crate::PAGE_SIZE as u64 - 1);
    (start + byte_count as u64).div_ceil(crate::PAGE_SIZE as u64) as usize
}

/// Parse a packet copied out of a ring. Never panics on any input.
pub fn parse_packet(bytes: &[u8]) -> Result<Packet<'_>, RingError> {
    let (desc, _) =
        PacketDescriptor::read_from_prefix(bytes).map_err(|_| RingError::BadDescriptor {
            offset8: 0,
            len8: 0,
            available: bytes.len() as u32,
        })?;
    let off = desc.offset8 as usize * 8;
    let len = desc.len8 as usize * 8;
    if desc.offset8 < 2 || len < off || len > bytes.len() {
        return Err(RingError::BadDescriptor {
            offset8: desc.offset8,
            len8: desc.len8,
            available: bytes.len() as u32,
        });
    }
    let header = &bytes[16..off];
    let payload = &bytes[off..len];
    let kind = match PacketType(desc.ty) {
        PacketType::DATA_INBAND => PacketKind::InBand,
        PacketType::COMP => PacketKind::Completion,
        PacketType::DATA_USING_XFER_PAGES => {
            let (h, rest) = TransferPageHeader::read_from_prefix(header).map_err(|_| {
                RingError::BadPacketHeader {
                    why: "transfer-page header truncated",
                    desc,
                }
            })?;
            let need =
                (h.range_count as usize)
                    .checked_mul(8)
                    .ok_or(RingError::BadPacketHeader {
                        why: "transfer-page range count overflows",
                        desc,
                    })?;
            let ranges = rest.get(..need).ok_or(RingError::BadPacketHeader {
                why: "transfer-page ranges exceed header",
                desc,
            })?;
            PacketKind::XferPages {
                pageset_id: h.xfer_pageset_id,
                sender_owns_set: h.sender_owns_set != 0,
                ranges,
            }
        }
        PacketType::DATA_USING_GPA_DIRECT => {
            let (h, rest) = GpaDirectHeader::read_from_prefix(header).map_err(|_| {
                RingError::BadPacketHeader {
                    why: "GPA-direct header truncated",
                    desc,
                }
            })?;
            let mut used = 0usize;
            for _ in 0..h.range_count {
                let r = rest.get(used..used + 8).ok_or(RingError::BadPacketHeader {
                    why: "GPA range header beyond header area",
                    desc,
                })?;
                let count = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
                let offset = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                let pfns = pages_spanned(offset, count);
                used = used
                    .checked_add(8 + pfns * 8)
                    .filter(|&u| u <= rest.len())
                    .ok_or(RingError::BadPacketHeader {
                        why: "GPA range PFNs beyond header area",
                        desc,
                    })?;
            }
            PacketKind::GpaDirect {
                range_count: h.range_count,
                ranges: &rest[..used],
            }
        }
        other => PacketKind::Other(other),
    };
    Ok(Packet {
        desc,
        kind,
        payload,
    })
}

/// Largest type-specific header this crate builds (descriptor + ranges).
pub const MAX_BUILT_HEADER: usize = 512;

/// A packet to send.
#[derive(Clone, Copy, Debug)]
pub enum OutgoingPacket<'a> {
    InBand {
        trans_id: u64,
        completion_requested: bool,
        data: &'a [u8],
    },
    Completion {
        trans_id: u64,
        data: &'a [u8],
    },
    GpaDirect {
        trans_id: u64,
        completion_requested: bool,
        ranges: &'a [GpaRange<'a>],
        data: &'a [u8],
    },
    XferPages {
        trans_id: u64,
        completion_requested: bool,
        pageset_id: u16,
        sender_owns_set: bool,
        ranges: &'a [(u32, u32)],
        data: &'a [u8],
    },
}

impl OutgoingPacket<'_> {
    /// Build the descriptor and type-specific header into `hdr`; returns its length and the
    /// payload. Packet = header + payload + zero padding to 8 bytes.
    pub fn build_header(
        &self,
        hdr: &mut [u8; MAX_BUILT_HEADER],
    ) -> Result<(usize, &[u8]), RingError> {
        let mut n = 16;
        let mut put = |n: &mut usize, b: &[u8]| -> Result<(), RingError> {
            let end = *n + b.len();
            hdr.get_mut(*n..end)
                .ok_or(RingError::TooLarge(end))?
                .copy_from_slice(b);
            *n = end;
            Ok(())
        };
        let (ty, flags, trans_id, data) = match *self {
            OutgoingPacket::InBand {
                trans_id,
                completion_requested,
                data,
            } => (
                PacketType::DATA_INBAND,
                completion_requested,
                trans_id,
                data,
            ),
            OutgoingPacket::Completion { trans_id, data } => {
                (PacketType::COMP, false, trans_id, data)
            }
            OutgoingPacket::GpaDirect {
                trans_id,
                completion_requested,
                ranges,
                data,
            } => {
                let h = GpaDirectHeader {
                    reserved: 0,
                    range_count: ranges.len() as u32,
                };
                put(&mut n, h.as_bytes())?;
                for r in ranges {
                    for i in 0..r.words() {
                        put(&mut n, &r.word(i).unwrap_or(0).to_le_bytes())?;
                    }
                }
                (
                    PacketType::DATA_USING_GPA_DIRECT,
                    completion_requested,
                    trans_id,
                    data,
                )
            }
            OutgoingPacket::XferPages {
                trans_id,
                completion_requested,
                pageset_id,
                sender_owns_set,
                ranges,
                data,
            } => {
                let h = TransferPageHeader {
                    xfer_pageset_id: pageset_id,
                    sender_owns_set: sender_owns_set as u8,
                    reserved: 0,
                    range_count: ranges.len() as u32,
                };
                put(&mut n, h.as_bytes())?;
                for &(count, offset) in ranges {
                    put(
                        &mut n,
                        TransferPageRange {
                            byte_count: count,
                            byte_offset: offset,
                        }
                        .as_bytes(),
                    )?;
                }
                (
                    PacketType::DATA_USING_XFER_PAGES,
                    completion_requested,
                    trans_id,
                    data,
                )
            }
        };
        let total = (n + data.len()).next_multiple_of(8);
        let len8 = u16::try_from(total / 8).map_err(|_| RingError::TooLarge(total))?;
        let desc = PacketDescriptor {
            ty: ty.0,
            offset8: (n / 8) as u16,
            len8,
            flags: if flags { FLAG_COMPLETION_REQUESTED } else { 0 },
            trans_id,
        };
        hdr[..16].copy_from_slice(desc.as_bytes());
        Ok((n, data))
    }

    /// Write this packet into `ring`.
    pub fn write_to(&self, ring: &Ring) -> Result<WriteOutcome, RingError> {
        let mut hdr = [0u8; MAX_BUILT_HEADER];
        let (n, data) = self.build_header(&mut hdr)?;
        let pad = (n + data.len()).next_multiple_of(8) - (n + data.len());
        ring.write(&[&hdr[..n], data, &[0u8; 8][..pad]])
    }
}

#[cfg(test)]
mod tests;
