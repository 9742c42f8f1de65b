//! canary's datagram frame format, version 1 (all integers little-endian).
//!
//! ```text
//! off len field
//! 0   4   magic  b"CNRY"
//! 4   1   version (1)
//! 5   1   kind   1=Chunk 2=Ack 3=Heartbeat 4=Drill 5=Challenge 6=Followup (open: unknown
//!                kinds are an error value)
//! 6   1   flags  bit0 = AUTH (a 16-byte HMAC-SHA256 tag precedes the CRC)
//! 7   1   kind-header length H (parsers skip an unknown header tail)
//! 8   H   kind header
//! 8+H P   payload (chunks and follow-ups only; ignored for other kinds)
//! ..  16  tag (only with AUTH): HMAC-SHA256(key, all bytes before the tag), first 16 bytes
//! ..  4   CRC-32 (IEEE, crc32fast) of all bytes before it
//! ```
//!
//! This layout is canary's own (see `capture/API.md`); the two-layer shape (a checked view
//! [`Frame`] with named field offsets, and a [`Repr`] with the semantic checks) follows
//! smoltcp's `src/wire/`.

use crate::auth::{Key, TAG_LEN};
use crate::chunk::RecordId;
use crate::followup::{FollowupRepr, FOLLOWUP_HEADER_LEN};
use crate::record::Arch;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"CNRY";
/// Frame format version.
pub const VERSION: u8 = 1;
/// Largest datagram canary sends or accepts (fits a 1500-byte MTU with IPv6 + UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
/// Length of the fixed frame prefix (magic..header length).
pub const FIXED_LEN: usize = 8;
/// Length of the CRC trailer.
pub const CRC_LEN: usize = 4;
/// Shortest possible frame (fixed prefix and CRC, empty header).
pub const MIN_FRAME_LEN: usize = FIXED_LEN + CRC_LEN;
/// Flags bit 0: the frame carries an authentication tag.
pub const FLAG_AUTH: u8 = 0x01;
/// Flag bits this version understands; others change the layout and are rejected.
pub const KNOWN_FLAGS: u8 = FLAG_AUTH;

/// Kind-header lengths of this version.
pub const CHUNK_HEADER_LEN: usize = 40;
/// See [`CHUNK_HEADER_LEN`].
pub const ACK_HEADER_LEN: usize = 28;
/// See [`CHUNK_HEADER_LEN`].
pub const HEARTBEAT_HEADER_LEN: usize = 32;
/// See [`CHUNK_HEADER_LEN`]. A Drill header of at least [`DRILL_V1_HEADER_LEN`] bytes is
/// accepted: one shorter than this carries no challenge.
pub const DRILL_HEADER_LEN: usize = 40;
/// The Drill header before the challenge was added (nonce, delay, reserved).
pub const DRILL_V1_HEADER_LEN: usize = 16;
/// See [`CHUNK_HEADER_LEN`].
pub const CHALLENGE_HEADER_LEN: usize = 32;

/// Largest chunk payload: the datagram minus prefix, chunk header, tag and CRC (always
/// budgeted for the tag so the chunk count does not depend on the key).
pub const MAX_CHUNK_PAYLOAD: usize =
    MAX_DATAGRAM - FIXED_LEN - CHUNK_HEADER_LEN - TAG_LEN - CRC_LEN;
const _: () = assert!(MAX_CHUNK_PAYLOAD == 1332);

mod fields;
pub use fields::{ack_field, challenge_field, chunk_field, drill_field, field, heartbeat_field};

/// Frame kind (open enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A chunk of an encoded crash record (1).
    Chunk,
    /// The collector acknowledges a stored record (2).
    Ack,
    /// The appliance is alive (3).
    Heartbeat,
    /// The collector asks the appliance to panic (4).
    Drill,
    /// The appliance answers a keyed drill request with a one-time challenge (5).
    Challenge,
    /// The outcomes of the steps after the record was sealed ([`crate::followup`]) (6).
    Followup,
    /// A kind this version does not know.
    Unknown(u8),
}

open_u8!(Kind(Unknown) {
    Chunk = 1,
    Ack = 2,
    Heartbeat = 3,
    Drill = 4,
    Challenge = 5,
    Followup = 6,
});

impl Kind {
    /// The kind-header length this version writes, `None` if unknown.
    pub const fn header_len(self) -> Option<usize> {
        match self {
            Kind::Chunk => Some(CHUNK_HEADER_LEN),
            Kind::Ack => Some(ACK_HEADER_LEN),
            Kind::Heartbeat => Some(HEARTBEAT_HEADER_LEN),
            Kind::Drill => Some(DRILL_HEADER_LEN),
            Kind::Challenge => Some(CHALLENGE_HEADER_LEN),
            Kind::Followup => Some(FOLLOWUP_HEADER_LEN),
            Kind::Unknown(_) => None,
        }
    }

    /// The kind-header length this version needs at least, `None` if unknown (a Drill from
    /// an older collector has the 16-byte header of [`DRILL_V1_HEADER_LEN`]).
    pub const fn min_header_len(self) -> Option<usize> {
        match self {
            Kind::Drill => Some(DRILL_V1_HEADER_LEN),
            k => k.header_len(),
        }
    }
}

/// Why a datagram was not accepted (or could not be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the fixed prefix and CRC, or than the header and tag it declares.
    #[error("frame truncated: {len} bytes, needs at least {need}")]
    Truncated {
        /// Datagram length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Longer than [`MAX_DATAGRAM`].
    #[error("frame of {0} bytes exceeds the {max}-byte datagram limit", max = MAX_DATAGRAM)]
    Oversized(usize),
    /// Not a canary frame.
    #[error("bad magic {0:02x?}, expected \"CNRY\"")]
    BadMagic([u8; 4]),
    /// A frame format version this build does not speak.
    #[error("frame version {0} not supported (this build speaks version {v})", v = VERSION)]
    BadVersion(u8),
    /// The CRC does not match: the datagram was corrupted.
    #[error("CRC mismatch: frame says {stored:#010x}, bytes give {computed:#010x}")]
    BadCrc {
        /// CRC carried in the frame.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Flag bits this version does not know (they may change the layout).
    #[error("unknown flag bits {0:#04x}")]
    BadFlags(u8),
    /// A key is configured but the frame is not authenticated.
    #[error("frame is not authenticated but a key is configured")]
    AuthRequired,
    /// The authentication tag does not match (wrong key or forged frame).
    #[error("authentication tag does not match (wrong key or forged frame)")]
    BadAuth,
    /// The frame is authenticated but no key is configured to check it.
    #[error("frame is authenticated but no key is configured")]
    UnexpectedAuth,
    /// A kind this version does not know (count it; not fatal for the receiver).
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The kind header is shorter than the kind needs.
    #[error("kind {kind} header is {len} bytes, needs {need}")]
    BadHeader {
        /// Kind code.
        kind: u8,
        /// Header length in the frame.
        len: usize,
        /// Header length the kind needs.
        need: usize,
    },
    /// A chunk header that contradicts itself.
    #[error("inconsistent chunk: {0}")]
    BadChunk(&'static str),
    /// A follow-up whose entry count and payload disagree.
    #[error("inconsistent follow-up: {0}")]
    BadFollowup(&'static str),
    /// (emit) The output buffer is too small.
    #[error("output buffer of {have} bytes is too small for a {need}-byte frame")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

fn le16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[r]);
    u16::from_le_bytes(a)
}
fn le32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_le_bytes(a)
}
fn le64(b: &[u8], r: core::ops::Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_le_bytes(a)
}
fn id16(b: &[u8], r: core::ops::Range<usize>) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[r]);
    a
}

/// A view over one datagram. The whole buffer is the frame (the CRC is its last 4 bytes).
///
/// Accessors other than the fixed-prefix ones need a buffer that passed [`Frame::check`].
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after [`Frame::check`].
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        let f = Frame::new_unchecked(buffer);
        f.check()?;
        Ok(f)
    }

    /// Checks, in order: length, magic, version, CRC, flags, and that the declared header
    /// (and tag) fit. Does not check the tag (see [`Frame::verify_auth`]).
    pub fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        let len = b.len();
        if len < MIN_FRAME_LEN {
            return Err(WireError::Truncated {
                len,
                need: MIN_FRAME_LEN,
            });
        }
        if len > MAX_DATAGRAM {
            return Err(WireError::Oversized(len));
        }
        if self.magic() != MAGIC {
            return Err(WireError::BadMagic(self.magic()));
        }
        if self.version() != VERSION {
            return Err(WireError::BadVersion(self.version()));
        }
        let computed = self.compute_crc();
        if computed != self.crc() {
            return Err(WireError::BadCrc {
                stored: self.crc(),
                computed,
            });
        }
        if self.flags() & !KNOWN_FLAGS != 0 {
            return Err(WireError::BadFlags(self.flags() & !KNOWN_FLAGS));
        }
        let need = FIXED_LEN + self.header_len() + self.tag_len() + CRC_LEN;
        if len < need {
            return Err(WireError::Truncated { len, need });
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Frame length (the whole buffer).
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Never true for a checked frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Magic field.
    pub fn magic(&self) -> [u8; 4] {
        let mut m = [0u8; 4];
        m.copy_from_slice(&self.buffer.as_ref()[field::MAGIC]);
        m
    }

    /// Version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Kind field.
    pub fn kind(&self) -> Kind {
        Kind::from(self.buffer.as_ref()[field::KIND])
    }

    /// Flags field.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the AUTH flag is set.
    pub fn has_auth(&self) -> bool {
        self.flags() & FLAG_AUTH != 0
    }

    /// Declared kind-header length.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::HEADER_LEN])
    }

    fn tag_len(&self) -> usize {
        if self.has_auth() {
            TAG_LEN
        } else {
            0
        }
    }

    /// CRC carried in the last four bytes.
    pub fn crc(&self) -> u32 {
        let b = self.buffer.as_ref();
        le32(b, b.len() - CRC_LEN..b.len())
    }

    /// CRC-32 of every byte before the CRC field.
    pub fn compute_crc(&self) -> u32 {
        let b = self.buffer.as_ref();
        crc32fast::hash(&b[..b.len() - CRC_LEN])
    }

    /// The kind header (declared length, including any unknown tail).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER..field::HEADER + self.header_len()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let start = field::HEADER + self.header_len();
        start..self.len() - CRC_LEN - self.tag_len()
    }

    /// The payload (between the header and the tag or CRC).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    /// The authentication tag, if the AUTH flag is set.
    pub fn tag(&self) -> Option<&[u8]> {
        let b = self.buffer.as_ref();
        self.has_auth()
            .then(|| &b[b.len() - CRC_LEN - TAG_LEN..b.len() - CRC_LEN])
    }

    /// The bytes the tag covers (everything before it).
    pub fn authenticated_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.payload_range().end]
    }

    /// Applies the key policy: with a key, the frame must carry a matching tag (checked in
    /// constant time); without one, it must carry none.
    pub fn verify_auth(&self, key: Option<&Key>) -> Result<(), WireError> {
        match (key, self.tag()) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(WireError::UnexpectedAuth),
            (Some(_), None) => Err(WireError::AuthRequired),
            (Some(k), Some(tag)) => {
                if k.verify(self.authenticated_bytes(), tag) {
                    Ok(())
                } else {
                    Err(WireError::BadAuth)
                }
            }
        }
    }
}

impl<'a> Frame<&'a [u8]> {
    /// The kind header, borrowed for the buffer's lifetime.
    pub fn header_slice(&self) -> &'a [u8] {
        let start = field::HEADER;
        &self.buffer[start..start + self.header_len()]
    }

    /// The payload, borrowed for the buffer's lifetime.
    pub fn payload_slice(&self) -> &'a [u8] {
        &self.buffer[self.payload_range()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Writes magic and version.
    pub fn set_prefix(&mut self) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = VERSION;
    }

    /// Sets the kind.
    pub fn set_kind(&mut self, kind: Kind) {
        self.buffer.as_mut()[field::KIND] = kind.into();
    }

    /// Sets the flags.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the kind-header length.
    pub fn set_header_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::HEADER_LEN] = len;
    }

    /// The kind header, mutable (header length must be set first).
    pub fn header_mut(&mut self) -> &mut [u8] {
        let end = field::HEADER + self.header_len();
        &mut self.buffer.as_mut()[field::HEADER..end]
    }

    /// The payload, mutable (header length and flags must be set first).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }

    /// Writes the tag (AUTH flag must be set).
    pub fn fill_tag(&mut self, key: &Key) {
        let end = self.payload_range().end;
        let tag = key.tag(&self.buffer.as_ref()[..end]);
        self.buffer.as_mut()[end..end + TAG_LEN].copy_from_slice(&tag);
    }

    /// Writes the CRC of everything before it.
    pub fn fill_crc(&mut self) {
        let crc = self.compute_crc();
        let len = self.len();
        self.buffer.as_mut()[len - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A chunk of an encoded crash record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRepr<'a> {
    /// Boot id of the sender.
    pub boot_id: [u8; 16],
    /// Per-boot record sequence number.
    pub seq: u32,
    /// CRC-32 of the whole encoded record.
    pub record_crc: u32,
    /// Length of the whole encoded record.
    pub record_len: u32,
    /// Offset of `data` in the record.
    pub offset: u32,
    /// Record schema major.
    pub schema_major: u16,
    /// Record schema minor.
    pub schema_minor: u16,
    /// Index of this chunk.
    pub chunk_index: u16,
    /// Number of chunks of the record.
    pub chunk_count: u16,
    /// The chunk's bytes.
    pub data: &'a [u8],
}

impl ChunkRepr<'_> {
    /// The record's dedupe key.
    pub fn id(&self) -> RecordId {
        RecordId {
            boot_id: self.boot_id,
            seq: self.seq,
            record_crc: self.record_crc,
        }
    }
}

/// How the collector disposed of a record (open enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckStatus {
    /// Committed to storage (0).
    Stored,
    /// Already stored earlier (1).
    Duplicate,
    /// Will never be stored (e.g. unsupported schema) (2): retrying is pointless.
    Rejected,
    /// A status this version does not know.
    Other(u8),
}

open_u8!(AckStatus {
    Stored = 0,
    Duplicate = 1,
    Rejected = 2,
});

/// The collector's acknowledgement of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRepr {
    /// Boot id of the record.
    pub boot_id: [u8; 16],
    /// Sequence number of the record.
    pub seq: u32,
    /// CRC of the record.
    pub record_crc: u32,
    /// What the collector did.
    pub status: AckStatus,
    /// In a follow-up's ack (statuses `followup::FOLLOWUP_STORED`/`FOLLOWUP_NO_RECORD`): the
    /// collector holds a follow-up reporting at least this many steps (0: a record's ack, or
    /// a collector before it). The appliance sends two follow-ups for one record, so a late
    /// ack of the first is not taken for the second's.
    pub followup_reported: u8,
}

impl AckRepr {
    /// The acknowledged record.
    pub fn id(&self) -> RecordId {
        RecordId {
            boot_id: self.boot_id,
            seq: self.seq,
            record_crc: self.record_crc,
        }
    }

    /// An ack for `id`.
    pub fn for_record(id: &RecordId, status: AckStatus) -> AckRepr {
        AckRepr {
            boot_id: id.boot_id,
            seq: id.seq,
            record_crc: id.record_crc,
            status,
            followup_reported: 0,
        }
    }
}

/// The appliance's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatRepr {
    /// Boot id.
    pub boot_id: [u8; 16],
    /// Heartbeat counter.
    pub seq: u32,
    /// Milliseconds since boot.
    pub uptime_ms: u64,
    /// Guest architecture.
    pub arch: Arch,
}

/// A one-time drill challenge: the canary's boot id and a counter it never reuses in that
/// boot (see `capture/API.md`, "Drills").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Challenge {
    /// The canary's boot id (random per boot).
    pub boot_id: [u8; 16],
    /// From 1, strictly increasing within a boot; 0 on the wire means "no challenge".
    pub counter: u64,
}

/// A drill request from the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrillRepr {
    /// Nonce chosen by the collector (the appliance puts it in the drill panic message).
    pub nonce: u64,
    /// Delay before panicking.
    pub delay_ms: u32,
    /// The canary's challenge this drill answers (keyed drills need one; `None` asks for one).
    pub challenge: Option<Challenge>,
}

/// The appliance's answer to a keyed drill without a (current) challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeRepr {
    /// Nonce of the drill request it answers.
    pub nonce: u64,
    /// The challenge the drill must carry.
    pub challenge: Challenge,
}

/// A parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// A record chunk.
    Chunk(ChunkRepr<'a>),
    /// An ack.
    Ack(AckRepr),
    /// A heartbeat.
    Heartbeat(HeartbeatRepr),
    /// A drill request.
    Drill(DrillRepr),
    /// A drill challenge.
    Challenge(ChallengeRepr),
    /// The outcomes of the steps after the seal.
    Followup(FollowupRepr),
}

impl<'a> Repr<'a> {
    /// Parses the kind header and payload of a checked frame (auth is not looked at here).
    pub fn parse(frame: &Frame<&'a [u8]>) -> Result<Repr<'a>, WireError> {
        let kind = frame.kind();
        let need = match kind.min_header_len() {
            Some(n) => n,
            None => return Err(WireError::UnknownKind(kind.into())),
        };
        let h = frame.header_slice();
        if h.len() < need {
            return Err(WireError::BadHeader {
                kind: kind.into(),
                len: h.len(),
                need,
            });
        }
        Ok(match kind {
            Kind::Chunk => {
                use chunk_field as f;
                let c = ChunkRepr {
                    boot_id: id16(h, f::BOOT_ID),
                    seq: le32(h, f::SEQ),
                    record_crc: le32(h, f::RECORD_CRC),
                    record_len: le32(h, f::RECORD_LEN),
                    offset: le32(h, f::OFFSET),
                    schema_major: le16(h, f::SCHEMA_MAJOR),
                    schema_minor: le16(h, f::SCHEMA_MINOR),
                    chunk_index: le16(h, f::CHUNK_INDEX),
                    chunk_count: le16(h, f::CHUNK_COUNT),
                    data: frame.payload_slice(),
                };
                if c.chunk_count == 0 {
                    return Err(WireError::BadChunk("chunk count is 0"));
                }
                if c.chunk_index >= c.chunk_count {
                    return Err(WireError::BadChunk("chunk index is not below chunk count"));
                }
                if c.data.is_empty() {
                    return Err(WireError::BadChunk("empty chunk payload"));
                }
                if u64::from(c.offset) + c.data.len() as u64 > u64::from(c.record_len) {
                    return Err(WireError::BadChunk("chunk extends past the record length"));
                }
                Repr::Chunk(c)
            }
            Kind::Ack => {
                use ack_field as f;
                Repr::Ack(AckRepr {
                    boot_id: id16(h, f::BOOT_ID),
                    seq: le32(h, f::SEQ),
                    record_crc: le32(h, f::RECORD_CRC),
                    status: AckStatus::from(h[f::STATUS]),
                    followup_reported: h[f::FOLLOWUP_REPORTED],
                })
            }
            Kind::Heartbeat => {
                use heartbeat_field as f;
                Repr::Heartbeat(HeartbeatRepr {
                    boot_id: id16(h, f::BOOT_ID),
                    seq: le32(h, f::SEQ),
                    uptime_ms: le64(h, f::UPTIME_MS),
                    arch: Arch::from(h[f::ARCH]),
                })
            }
            Kind::Drill => {
                use drill_field as f;
                // A header that ends before the challenge (an older collector's), or counter
                // 0, carries none.
                let challenge = (h.len() >= DRILL_HEADER_LEN)
                    .then(|| Challenge {
                        boot_id: id16(h, f::BOOT_ID),
                        counter: le64(h, f::COUNTER),
                    })
                    .filter(|c| c.counter != 0);
                Repr::Drill(DrillRepr {
                    nonce: le64(h, f::NONCE),
                    delay_ms: le32(h, f::DELAY_MS),
                    challenge,
                })
            }
            Kind::Challenge => {
                use challenge_field as f;
                Repr::Challenge(ChallengeRepr {
                    nonce: le64(h, f::NONCE),
                    challenge: Challenge {
                        boot_id: id16(h, f::BOOT_ID),
                        counter: le64(h, f::COUNTER),
                    },
                })
            }
            Kind::Followup => Repr::Followup(FollowupRepr::parse(h, frame.payload_slice())?),
            Kind::Unknown(k) => return Err(WireError::UnknownKind(k)),
        })
    }

    /// The frame kind.
    pub fn kind(&self) -> Kind {
        match self {
            Repr::Chunk(_) => Kind::Chunk,
            Repr::Ack(_) => Kind::Ack,
            Repr::Heartbeat(_) => Kind::Heartbeat,
            Repr::Drill(_) => Kind::Drill,
            Repr::Challenge(_) => Kind::Challenge,
            Repr::Followup(_) => Kind::Followup,
        }
    }

    fn payload(&self) -> &'a [u8] {
        match self {
            Repr::Chunk(c) => c.data,
            _ => &[],
        }
    }

    /// Length of the emitted frame.
    pub fn buffer_len(&self, auth: bool) -> usize {
        let h = self.kind().header_len().unwrap_or(0);
        let p = match self {
            Repr::Followup(f) => f.payload_len(),
            _ => self.payload().len(),
        };
        FIXED_LEN + h + p + if auth { TAG_LEN } else { 0 } + CRC_LEN
    }

    fn emit_header(&self, h: &mut [u8]) {
        h.fill(0);
        match self {
            Repr::Chunk(c) => {
                use chunk_field as f;
                h[f::BOOT_ID].copy_from_slice(&c.boot_id);
                h[f::SEQ].copy_from_slice(&c.seq.to_le_bytes());
                h[f::RECORD_CRC].copy_from_slice(&c.record_crc.to_le_bytes());
                h[f::RECORD_LEN].copy_from_slice(&c.record_len.to_le_bytes());
                h[f::OFFSET].copy_from_slice(&c.offset.to_le_bytes());
                h[f::SCHEMA_MAJOR].copy_from_slice(&c.schema_major.to_le_bytes());
                h[f::SCHEMA_MINOR].copy_from_slice(&c.schema_minor.to_le_bytes());
                h[f::CHUNK_INDEX].copy_from_slice(&c.chunk_index.to_le_bytes());
                h[f::CHUNK_COUNT].copy_from_slice(&c.chunk_count.to_le_bytes());
            }
            Repr::Ack(a) => {
                use ack_field as f;
                h[f::BOOT_ID].copy_from_slice(&a.boot_id);
                h[f::SEQ].copy_from_slice(&a.seq.to_le_bytes());
                h[f::RECORD_CRC].copy_from_slice(&a.record_crc.to_le_bytes());
                h[f::STATUS] = a.status.into();
                h[f::FOLLOWUP_REPORTED] = a.followup_reported;
            }
            Repr::Heartbeat(b) => {
                use heartbeat_field as f;
                h[f::BOOT_ID].copy_from_slice(&b.boot_id);
                h[f::SEQ].copy_from_slice(&b.seq.to_le_bytes());
                h[f::UPTIME_MS].copy_from_slice(&b.uptime_ms.to_le_bytes());
                h[f::ARCH] = b.arch.into();
            }
            Repr::Drill(d) => {
                use drill_field as f;
                h[f::NONCE].copy_from_slice(&d.nonce.to_le_bytes());
                h[f::DELAY_MS].copy_from_slice(&d.delay_ms.to_le_bytes());
                if let Some(c) = d.challenge {
                    h[f::BOOT_ID].copy_from_slice(&c.boot_id);
                    h[f::COUNTER].copy_from_slice(&c.counter.to_le_bytes());
                }
            }
            Repr::Challenge(c) => {
                use challenge_field as f;
                h[f::NONCE].copy_from_slice(&c.nonce.to_le_bytes());
                h[f::BOOT_ID].copy_from_slice(&c.challenge.boot_id);
                h[f::COUNTER].copy_from_slice(&c.challenge.counter.to_le_bytes());
            }
            Repr::Followup(f) => f.emit_header(h),
        }
    }

    /// Writes the frame into `out` (tagged if `key` is given) and returns its length.
    ///
    /// Only sizes are checked: a chunk that contradicts itself is written as given (so test
    /// tools can craft bad input); receivers reject it.
    pub fn emit(&self, key: Option<&Key>, out: &mut [u8]) -> Result<usize, WireError> {
        let total = self.buffer_len(key.is_some());
        if total > MAX_DATAGRAM {
            return Err(WireError::Oversized(total));
        }
        if out.len() < total {
            return Err(WireError::BufferTooSmall {
                need: total,
                have: out.len(),
            });
        }
        let hlen = self.kind().header_len().unwrap_or(0);
        let mut f = Frame::new_unchecked(&mut out[..total]);
        f.set_prefix();
        f.set_kind(self.kind());
        f.set_flags(if key.is_some() { FLAG_AUTH } else { 0 });
        // Header lengths are all below 256 (compile-time constants above).
        f.set_header_len(hlen as u8);
        self.emit_header(f.header_mut());
        match self {
            Repr::Followup(fu) => fu.emit_payload(f.payload_mut()),
            _ => f.payload_mut().copy_from_slice(self.payload()),
        }
        if let Some(k) = key {
            f.fill_tag(k);
        }
        f.fill_crc();
        Ok(total)
    }
}

/// Checks and parses one datagram: length, magic, version, CRC, auth (before any header is
/// parsed), then the kind header.
pub fn parse<'a>(buf: &'a [u8], key: Option<&Key>) -> Result<Repr<'a>, WireError> {
    let frame = Frame::new_checked(buf)?;
    frame.verify_auth(key)?;
    Repr::parse(&frame)
}

/// Writes `repr` as a frame into `out`; see [`Repr::emit`].
pub fn emit(repr: &Repr<'_>, key: Option<&Key>, out: &mut [u8]) -> Result<usize, WireError> {
    repr.emit(key, out)
}
