//! The panic screen's QR payload: the sealed record, as shipped, in a QR code on the panic
//! screen (design.md, "The panic path", step 2), so a screenshot alone can carry the crash
//! to the collector (`host-collector import-screen`).
//!
//! ```text
//! off len field (integers little-endian)
//! 0   4   magic b"CNQR"
//! 4   1   version (1)
//! 5   1   flags  bit0 LZ4: the body is an LZ4 block of the record (else the record itself)
//!                bit1 AUTH: a 16-byte HMAC-SHA256 tag precedes the CRC (as in `wire`)
//! 6   2   record schema major
//! 8   2   record schema minor
//! 10  4   record length (decompressed)
//! 14  4   record CRC-32 (of the decompressed record: the dedupe key's CRC)
//! 18  N   body
//! ..  16  tag (AUTH only): HMAC-SHA256(key, all bytes before it), first 16 bytes
//! ..  4   CRC-32 of all bytes before it
//! ```
//!
//! The body is LZ4-compressed when that is shorter. The compressor here writes the LZ4
//! *block* format (lz4's `doc/lz4_Block_format.md`: token, literal length, literals, 2-byte
//! offset, match length; the last 5 bytes are literals and no match starts in the last 12),
//! with a 1024-entry hash table on the stack (2 KiB) and no heap, so the panic path can run
//! it; its decoder below is the collector's (bounded, never panics on bad input), and a test
//! decodes the compressor's output with the independent `lz4_flex` crate.

use crate::auth::{Key, TAG_LEN};
use crate::chunk::RecordId;

/// Payload magic.
pub const MAGIC: [u8; 4] = *b"CNQR";
/// Payload format version.
pub const VERSION: u8 = 1;
/// Flags bit 0: the body is LZ4-compressed.
pub const FLAG_LZ4: u8 = 0x01;
/// Flags bit 1: the payload carries an authentication tag.
pub const FLAG_AUTH: u8 = 0x02;
/// Header length.
pub const HEADER_LEN: usize = 18;
/// Trailer length without a tag (the CRC).
pub const CRC_LEN: usize = 4;
/// Most bytes a QR code holds (version 40, error correction L, byte mode: ISO/IEC 18004
/// table 7, and qrcodegen's documented limit).
pub const QR_MAX_BYTES: usize = 2953;
/// Largest payload this module writes or reads.
pub const MAX_PAYLOAD: usize = QR_MAX_BYTES;

/// Why a payload could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScreenError {
    /// The payload does not fit the output (or a QR code).
    #[error("the screen payload needs {need} bytes, {have} available")]
    TooLarge {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Shorter than a header and CRC, or than its flags say.
    #[error("screen payload truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a canary screen payload.
    #[error("not a canary screen payload (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A version this build does not read.
    #[error("screen payload version {0} not supported (this build reads {v})", v = VERSION)]
    BadVersion(u8),
    /// Unknown flag bits.
    #[error("unknown screen payload flags {0:#04x}")]
    BadFlags(u8),
    /// The CRC does not match.
    #[error("screen payload CRC mismatch: says {stored:#010x}, bytes give {computed:#010x}")]
    BadCrc {
        /// CRC carried.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A key is configured and the payload is not tagged, or the reverse, or the tag is wrong.
    #[error("screen payload authentication: {0}")]
    Auth(&'static str),
    /// The LZ4 body is malformed or does not give the declared length.
    #[error("screen payload body does not decompress: {0}")]
    BadBody(&'static str),
    /// The decompressed record's CRC is not the declared one.
    #[error("decompressed record CRC {computed:#010x}, payload says {stored:#010x}")]
    BadRecordCrc {
        /// Declared.
        stored: u32,
        /// Computed.
        computed: u32,
    },
}

/// A checked payload's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenHeader {
    /// Record schema (major, minor).
    pub schema: (u16, u16),
    /// Record length.
    pub record_len: u32,
    /// Record CRC-32.
    pub record_crc: u32,
    /// The body is LZ4-compressed.
    pub compressed: bool,
    /// The payload was tagged.
    pub authenticated: bool,
}

/// Writes the payload for `record` (schema `schema`) into `out`, compressing the body when
/// that is shorter (`scratch` holds the compressed body; [`MAX_PAYLOAD`] bytes suffice).
/// Returns the payload's length. No heap; about 2.2 KiB of stack.
pub fn encode(
    record: &[u8],
    schema: (u16, u16),
    key: Option<&Key>,
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, ScreenError> {
    let trailer = CRC_LEN + if key.is_some() { TAG_LEN } else { 0 };
    let room = out.len().min(MAX_PAYLOAD);
    let budget = room.saturating_sub(HEADER_LEN + trailer);
    let lz = compress(record, scratch).filter(|&n| n < record.len());
    let (body, flags): (&[u8], u8) = match lz {
        Some(n) => (&scratch[..n], FLAG_LZ4),
        None => (record, 0),
    };
    let need = HEADER_LEN + body.len() + trailer;
    if body.len() > budget {
        return Err(ScreenError::TooLarge { need, have: room });
    }
    let flags = flags | if key.is_some() { FLAG_AUTH } else { 0 };
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = flags;
    out[6..8].copy_from_slice(&schema.0.to_le_bytes());
    out[8..10].copy_from_slice(&schema.1.to_le_bytes());
    out[10..14].copy_from_slice(&(record.len() as u32).to_le_bytes());
    out[14..18].copy_from_slice(&crc32fast::hash(record).to_le_bytes());
    out[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    let mut end = HEADER_LEN + body.len();
    if let Some(k) = key {
        let tag = k.tag(&out[..end]);
        out[end..end + TAG_LEN].copy_from_slice(&tag);
        end += TAG_LEN;
    }
    let crc = crc32fast::hash(&out[..end]);
    out[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(end + CRC_LEN)
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks a payload (length, magic, version, CRC, flags, the key policy of `wire`) and
/// decodes its record into `out`, returning the header and the record's length. The record's
/// CRC is checked against the header's.
pub fn decode(
    payload: &[u8],
    key: Option<&Key>,
    out: &mut [u8],
) -> Result<(ScreenHeader, usize), ScreenError> {
    let n = payload.len();
    if n < HEADER_LEN + CRC_LEN {
        return Err(ScreenError::Truncated(n));
    }
    if n > MAX_PAYLOAD {
        return Err(ScreenError::TooLarge {
            need: n,
            have: MAX_PAYLOAD,
        });
    }
    let magic = [payload[0], payload[1], payload[2], payload[3]];
    if magic != MAGIC {
        return Err(ScreenError::BadMagic(magic));
    }
    if payload[4] != VERSION {
        return Err(ScreenError::BadVersion(payload[4]));
    }
    let stored = le32(&payload[n - CRC_LEN..]);
    let computed = crc32fast::hash(&payload[..n - CRC_LEN]);
    if stored != computed {
        return Err(ScreenError::BadCrc { stored, computed });
    }
    let flags = payload[5];
    if flags & !(FLAG_LZ4 | FLAG_AUTH) != 0 {
        return Err(ScreenError::BadFlags(flags));
    }
    let tagged = flags & FLAG_AUTH != 0;
    let mut end = n - CRC_LEN;
    if tagged {
        if end < HEADER_LEN + TAG_LEN {
            return Err(ScreenError::Truncated(n));
        }
        end -= TAG_LEN;
    }
    match (key, tagged) {
        (None, false) => {}
        (None, true) => return Err(ScreenError::Auth("tagged, but no key is configured")),
        (Some(_), false) => return Err(ScreenError::Auth("not tagged, but a key is configured")),
        (Some(k), true) => {
            if !k.verify(&payload[..end], &payload[end..end + TAG_LEN]) {
                return Err(ScreenError::Auth(
                    "tag does not match (wrong key or forged)",
                ));
            }
        }
    }
    let h = ScreenHeader {
        schema: (le16(&payload[6..8]), le16(&payload[8..10])),
        record_len: le32(&payload[10..14]),
        record_crc: le32(&payload[14..18]),
        compressed: flags & FLAG_LZ4 != 0,
        authenticated: tagged,
    };
    let body = &payload[HEADER_LEN..end];
    let want = h.record_len as usize;
    if want > out.len() {
        return Err(ScreenError::TooLarge {
            need: want,
            have: out.len(),
        });
    }
    let got = if h.compressed {
        decompress(body, &mut out[..want])?
    } else {
        out[..body.len().min(want)].copy_from_slice(&body[..body.len().min(want)]);
        body.len()
    };
    if got != want {
        return Err(ScreenError::BadBody("length differs from the header's"));
    }
    let computed = crc32fast::hash(&out[..want]);
    if computed != h.record_crc {
        return Err(ScreenError::BadRecordCrc {
            stored: h.record_crc,
            computed,
        });
    }
    Ok((h, want))
}

/// The dedupe key of a decoded record (the boot id and seq are the record's own).
pub fn record_id(boot_id: [u8; 16], seq: u32, h: &ScreenHeader) -> RecordId {
    RecordId {
        boot_id,
        seq,
        record_crc: h.record_crc,
    }
}

const HASH_LOG: u32 = 10;
const MIN_MATCH: usize = 4;
/// No match starts in the last 12 bytes (lz4 block format, "End of block conditions").
const MF_LIMIT: usize = 12;
/// The last 5 bytes are literals.
const LAST_LITERALS: usize = 5;

fn read32(b: &[u8], i: usize) -> u32 {
    le32(&b[i..i + 4])
}

fn hash(v: u32) -> usize {
    (v.wrapping_mul(2_654_435_761) >> (32 - HASH_LOG)) as usize
}

struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) -> Option<()> {
        *self.buf.get_mut(self.at)? = b;
        self.at += 1;
        Some(())
    }
    fn bytes(&mut self, b: &[u8]) -> Option<()> {
        self.buf
            .get_mut(self.at..self.at + b.len())?
            .copy_from_slice(b);
        self.at += b.len();
        Some(())
    }
    fn length(&mut self, mut n: usize) -> Option<()> {
        while n >= 255 {
            self.byte(255)?;
            n -= 255;
        }
        self.byte(n as u8)
    }
    fn sequence(&mut self, literals: &[u8], m: Option<(usize, usize)>) -> Option<()> {
        let ll = literals.len();
        let ml = m.map_or(0, |(_, len)| len - MIN_MATCH);
        self.byte(((ll.min(15) as u8) << 4) | ml.min(15) as u8)?;
        if ll >= 15 {
            self.length(ll - 15)?;
        }
        self.bytes(literals)?;
        if let Some((offset, _)) = m {
            self.bytes(&(offset as u16).to_le_bytes())?;
            if ml >= 15 {
                self.length(ml - 15)?;
            }
        }
        Some(())
    }
}

/// Compresses `input` (at most 65,535 bytes) into `out` as one LZ4 block; `None` if it does
/// not fit. Greedy, one hash probe per position; no heap.
pub fn compress(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = input.len();
    if n > u16::MAX as usize {
        return None;
    }
    let mut table = [0u16; 1 << HASH_LOG];
    let mut o = Out { buf: out, at: 0 };
    let mut anchor = 0;
    let mut i = 0;
    if n > MF_LIMIT {
        while i < n - MF_LIMIT {
            let v = read32(input, i);
            let h = hash(v);
            let cand = usize::from(table[h]);
            table[h] = i as u16;
            if cand < i && read32(input, cand) == v {
                let mut len = MIN_MATCH;
                while i + len < n - LAST_LITERALS && input[cand + len] == input[i + len] {
                    len += 1;
                }
                o.sequence(&input[anchor..i], Some((i - cand, len)))?;
                i += len;
                anchor = i;
            } else {
                i += 1;
            }
        }
    }
    o.sequence(&input[anchor..], None)?;
    Some(o.at)
}

/// Decompresses one LZ4 block into `out`, returning the bytes written. Bounded by `out`;
/// malformed input is an error, never a panic.
pub fn decompress(input: &[u8], out: &mut [u8]) -> Result<usize, ScreenError> {
    let bad = ScreenError::BadBody;
    let mut i = 0;
    let mut o = 0;
    let len = |i: &mut usize, mut n: usize| -> Result<usize, ScreenError> {
        loop {
            let b = *input.get(*i).ok_or(bad("length runs past the end"))?;
            *i += 1;
            n = n
                .checked_add(usize::from(b))
                .ok_or(bad("length overflows"))?;
            if b != 255 {
                return Ok(n);
            }
        }
    };
    loop {
        let token = *input.get(i).ok_or(bad("missing token"))?;
        i += 1;
        let mut ll = usize::from(token >> 4);
        if ll == 15 {
            ll = len(&mut i, ll)?;
        }
        let lit = input
            .get(i..i.checked_add(ll).ok_or(bad("literal length overflows"))?)
            .ok_or(bad("literals run past the end"))?;
        out.get_mut(o..o + ll)
            .ok_or(bad("output longer than declared"))?
            .copy_from_slice(lit);
        i += ll;
        o += ll;
        if i == input.len() {
            return Ok(o);
        }
        let off = input.get(i..i + 2).ok_or(bad("offset runs past the end"))?;
        let off = usize::from(le16(off));
        i += 2;
        if off == 0 || off > o {
            return Err(bad("match offset outside the output"));
        }
        let mut ml = usize::from(token & 15);
        if ml == 15 {
            ml = len(&mut i, ml)?;
        }
        let ml = ml + MIN_MATCH;
        if o + ml > out.len() {
            return Err(bad("output longer than declared"));
        }
        // Byte by byte: a match may overlap its own output (offset < length).
        for k in 0..ml {
            out[o + k] = out[o + k - off];
        }
        o += ml;
    }
}
