//! Splitting an encoded record into chunk frames, and (with `std`) putting it back together.
//!
//! Chunks carry their byte offset, so order does not matter (FreeBSD netdump's
//! offset-carrying chunks, `reference/hyperv-guest.md` §10.2); every chunk carries the
//! record's dedupe key [`RecordId`] `(boot id, seq, record CRC)`.

use crate::auth::Key;
use crate::record::{SCHEMA_MAJOR, SCHEMA_MINOR};
use crate::wire::{ChunkRepr, Repr, WireError, MAX_CHUNK_PAYLOAD};

/// Largest record the sender will chunk and the reassembler accepts by default (64 KiB: far
/// above [`crate::record::MAX_ENCODED_LEN`], leaving room for future minors).
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// The dedupe key of a record: retransmits and duplicates are idempotent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    /// Boot id of the sender.
    pub boot_id: [u8; 16],
    /// Per-boot sequence number.
    pub seq: u32,
    /// CRC-32 of the whole encoded record.
    pub record_crc: u32,
}

impl RecordId {
    /// The id of an encoded record.
    pub fn of(boot_id: [u8; 16], seq: u32, record: &[u8]) -> RecordId {
        RecordId {
            boot_id,
            seq,
            record_crc: crc32fast::hash(record),
        }
    }
}

/// Number of chunks for a record of `record_len` bytes (0 for an empty record).
pub const fn chunk_count(record_len: usize) -> usize {
    record_len.div_ceil(MAX_CHUNK_PAYLOAD)
}

/// The chunk `index` of `record` as a [`ChunkRepr`] with an explicit schema version (for
/// tools that need to send other schemas); see [`emit_chunk`].
pub fn chunk_repr<'r>(
    id: &RecordId,
    record: &'r [u8],
    index: u16,
    schema: (u16, u16),
) -> Result<ChunkRepr<'r>, WireError> {
    if record.is_empty() {
        return Err(WireError::BadChunk("empty record"));
    }
    if record.len() > MAX_RECORD_LEN {
        return Err(WireError::BadChunk("record longer than MAX_RECORD_LEN"));
    }
    let count = chunk_count(record.len());
    if usize::from(index) >= count {
        return Err(WireError::BadChunk("chunk index is not below chunk count"));
    }
    let start = usize::from(index) * MAX_CHUNK_PAYLOAD;
    let end = (start + MAX_CHUNK_PAYLOAD).min(record.len());
    // Casts cannot truncate: record.len() <= MAX_RECORD_LEN, count <= 50.
    Ok(ChunkRepr {
        boot_id: id.boot_id,
        seq: id.seq,
        record_crc: id.record_crc,
        record_len: record.len() as u32,
        offset: start as u32,
        schema_major: schema.0,
        schema_minor: schema.1,
        chunk_index: index,
        chunk_count: count as u16,
        data: &record[start..end],
    })
}

/// Writes chunk `index` of `record` (schema [`SCHEMA_MAJOR`].[`SCHEMA_MINOR`]) as a frame into
/// `out` (at most [`crate::wire::MAX_DATAGRAM`] bytes) and returns its length.
pub fn emit_chunk(
    id: &RecordId,
    record: &[u8],
    index: u16,
    key: Option<&Key>,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let c = chunk_repr(id, record, index, (SCHEMA_MAJOR, SCHEMA_MINOR))?;
    Repr::Chunk(c).emit(key, out)
}

#[cfg(feature = "std")]
mod reassembler;
#[cfg(feature = "std")]
pub use reassembler::{Completed, Push, Reassembler, ReassemblerConfig, ReassemblerStats};
