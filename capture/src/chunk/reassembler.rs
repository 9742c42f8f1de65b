//! Reassembly of chunked records (std): a pure data structure, no I/O, time only through
//! `now_ms` arguments, so the collector owns the socket, the clock and the storage.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::vec::Vec;

use super::{RecordId, MAX_RECORD_LEN};
use crate::wire::ChunkRepr;

/// Caps on memory held by partial records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblerConfig {
    /// Partial records one source may have pending.
    pub max_pending_per_source: usize,
    /// Partial records pending overall.
    pub max_pending_total: usize,
    /// Largest `record_len` accepted.
    pub max_record_len: usize,
}

impl Default for ReassemblerConfig {
    /// 8 per source, 1024 overall, [`MAX_RECORD_LEN`] bytes per record.
    fn default() -> Self {
        ReassemblerConfig {
            max_pending_per_source: 8,
            max_pending_total: 1024,
            max_record_len: MAX_RECORD_LEN,
        }
    }
}

/// A complete, CRC-checked record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// Its dedupe key.
    pub id: RecordId,
    /// Schema (major, minor) from the chunk headers.
    pub schema: (u16, u16),
    /// The encoded record.
    pub record: Vec<u8>,
}

/// What a pushed chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// Stored; more chunks are needed.
    Incomplete,
    /// This chunk was already held; ignored.
    Duplicate,
    /// The record is complete and its CRC matches.
    Complete(Completed),
    /// Every chunk arrived but the record CRC does not match; the partial was dropped.
    CrcMismatch(RecordId),
    /// The chunk contradicts earlier chunks of the same record; the chunk was dropped.
    Inconsistent(RecordId),
    /// `record_len` exceeds the configured maximum; the chunk was dropped.
    TooLarge(RecordId),
}

/// Counters (monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReassemblerStats {
    /// Records completed with a matching CRC.
    pub completed: u64,
    /// Chunks already held.
    pub duplicate_chunks: u64,
    /// Partials evicted by a cap.
    pub evicted: u64,
    /// Partials dropped by [`Reassembler::expire`].
    pub expired: u64,
    /// Bytes set aside for the partials that were evicted (see [`Reassembler::with_byte_budget`]).
    pub evicted_bytes: u64,
    /// Complete records whose CRC did not match.
    pub crc_mismatches: u64,
    /// Chunks contradicting their record's earlier chunks.
    pub inconsistent: u64,
    /// Chunks of records over the size cap.
    pub too_large: u64,
}

#[derive(Debug)]
struct Partial {
    serial: u64,
    last_ms: u64,
    schema: (u16, u16),
    record_len: usize,
    have: Vec<bool>,
    chunks_in: usize,
    bytes_in: usize,
    data: Vec<u8>,
}

/// Reassembles records from chunks arriving in any order, from many sources.
///
/// Partial records are keyed by `(source, RecordId)`. A new partial that would exceed a cap
/// evicts the oldest partial of its source (per-source cap) or overall (total cap).
#[derive(Debug)]
pub struct Reassembler<S: Clone + Eq + Hash> {
    cfg: ReassemblerConfig,
    pending: HashMap<(S, RecordId), Partial>,
    /// Creation serial -> key, oldest first.
    order: BTreeMap<u64, (S, RecordId)>,
    /// Per source: creation serial -> id, oldest first.
    per_source: HashMap<S, BTreeMap<u64, RecordId>>,
    /// Per source: bytes set aside for its partials.
    source_bytes: HashMap<S, usize>,
    /// Bytes set aside for all partials.
    total_bytes: usize,
    /// Byte budget for all partials, and for one source's.
    max_bytes: usize,
    max_bytes_per_source: usize,
    next_serial: u64,
    stats: ReassemblerStats,
}

/// What a partial record of `record_len` bytes in `count` chunks costs: its buffer, its
/// chunk bitmap and a fixed overhead for the map entries.
fn partial_cost(record_len: usize, count: usize) -> usize {
    record_len + count + 160
}

impl<S: Clone + Eq + Hash> Reassembler<S> {
    /// An empty reassembler (caps of 0 are treated as 1).
    pub fn new(cfg: ReassemblerConfig) -> Self {
        Reassembler {
            cfg: ReassemblerConfig {
                max_pending_per_source: cfg.max_pending_per_source.max(1),
                max_pending_total: cfg.max_pending_total.max(1),
                max_record_len: cfg.max_record_len,
            },
            pending: HashMap::new(),
            order: BTreeMap::new(),
            per_source: HashMap::new(),
            source_bytes: HashMap::new(),
            total_bytes: 0,
            max_bytes: usize::MAX,
            max_bytes_per_source: usize::MAX,
            next_serial: 0,
            stats: ReassemblerStats::default(),
        }
    }

    /// Also caps the bytes set aside for partial records: `total` for all of them and
    /// `per_source` for one source's (each partial costs its `record_len` plus a little).
    /// A new partial that would exceed a budget evicts the oldest partials (of its source,
    /// then overall) until it fits; evictions are counted in `evicted` and `evicted_bytes`.
    pub fn with_byte_budget(mut self, total: usize, per_source: usize) -> Self {
        self.max_bytes = total;
        self.max_bytes_per_source = per_source;
        self
    }

    /// Bytes set aside for the partial records held.
    pub fn pending_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Partial records held.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Counters.
    pub fn stats(&self) -> ReassemblerStats {
        self.stats
    }

    /// Adds one parsed chunk (from [`crate::wire::parse`], so its header is consistent in
    /// itself) received from `source` at `now_ms`.
    pub fn push(&mut self, source: S, chunk: &ChunkRepr<'_>, now_ms: u64) -> Push {
        let id = chunk.id();
        let record_len = chunk.record_len as usize;
        if record_len > self.cfg.max_record_len {
            self.stats.too_large += 1;
            return Push::TooLarge(id);
        }
        let schema = (chunk.schema_major, chunk.schema_minor);
        let count = usize::from(chunk.chunk_count);
        let index = usize::from(chunk.chunk_index);
        let offset = chunk.offset as usize;
        // Re-check what wire::parse guarantees, so a hand-built ChunkRepr cannot panic here.
        // Every chunk carries at least one byte, so more chunks than bytes is a lie (and
        // would make the per-partial bitmap needlessly large).
        if index >= count
            || count > record_len
            || chunk.data.is_empty()
            || offset
                .checked_add(chunk.data.len())
                .is_none_or(|e| e > record_len)
        {
            self.stats.inconsistent += 1;
            return Push::Inconsistent(id);
        }
        // A single-chunk record needs no state.
        if count == 1 && !self.pending.contains_key(&(source.clone(), id)) {
            if offset != 0 || chunk.data.len() != record_len {
                self.stats.inconsistent += 1;
                return Push::Inconsistent(id);
            }
            return self.finish(id, schema, chunk.data.to_vec());
        }
        let key = (source, id);
        if !self.pending.contains_key(&key) {
            let cost = partial_cost(record_len, count);
            self.make_room(&key.0, cost);
            self.total_bytes += cost;
            *self.source_bytes.entry(key.0.clone()).or_default() += cost;
            let serial = self.next_serial;
            self.next_serial += 1;
            self.order.insert(serial, key.clone());
            self.per_source
                .entry(key.0.clone())
                .or_default()
                .insert(serial, id);
            self.pending.insert(
                key.clone(),
                Partial {
                    serial,
                    last_ms: now_ms,
                    schema,
                    record_len,
                    have: vec![false; count],
                    chunks_in: 0,
                    bytes_in: 0,
                    data: vec![0; record_len],
                },
            );
        }
        let Some(p) = self.pending.get_mut(&key) else {
            return Push::Incomplete;
        };
        if p.schema != schema || p.record_len != record_len || p.have.len() != count {
            self.stats.inconsistent += 1;
            return Push::Inconsistent(id);
        }
        if p.have[index] {
            self.stats.duplicate_chunks += 1;
            return Push::Duplicate;
        }
        p.have[index] = true;
        p.chunks_in += 1;
        p.bytes_in += chunk.data.len();
        p.last_ms = now_ms;
        p.data[offset..offset + chunk.data.len()].copy_from_slice(chunk.data);
        if p.chunks_in < count {
            return Push::Incomplete;
        }
        let complete_len = p.bytes_in == p.record_len;
        let Some(p) = self.remove(&key) else {
            return Push::Incomplete;
        };
        if !complete_len {
            // Chunks overlap or leave gaps: the sender cut them inconsistently.
            self.stats.inconsistent += 1;
            return Push::Inconsistent(id);
        }
        self.finish(id, p.schema, p.data)
    }

    fn finish(&mut self, id: RecordId, schema: (u16, u16), record: Vec<u8>) -> Push {
        if crc32fast::hash(&record) != id.record_crc {
            self.stats.crc_mismatches += 1;
            return Push::CrcMismatch(id);
        }
        self.stats.completed += 1;
        Push::Complete(Completed { id, schema, record })
    }

    fn remove(&mut self, key: &(S, RecordId)) -> Option<Partial> {
        let p = self.pending.remove(key)?;
        self.order.remove(&p.serial);
        let cost = partial_cost(p.record_len, p.have.len());
        self.total_bytes -= cost;
        if let Some(b) = self.source_bytes.get_mut(&key.0) {
            *b -= cost;
            if *b == 0 {
                self.source_bytes.remove(&key.0);
            }
        }
        if let Some(m) = self.per_source.get_mut(&key.0) {
            m.remove(&p.serial);
            if m.is_empty() {
                self.per_source.remove(&key.0);
            }
        }
        Some(p)
    }

    /// Evicts (oldest first) until a new partial from `source` costing `cost` bytes fits the
    /// count caps and the byte budgets.
    fn make_room(&mut self, source: &S, cost: usize) {
        loop {
            let n = self.per_source.get(source).map_or(0, BTreeMap::len);
            let bytes = self.source_bytes.get(source).copied().unwrap_or(0);
            if n == 0
                || (n < self.cfg.max_pending_per_source
                    && bytes.saturating_add(cost) <= self.max_bytes_per_source)
            {
                break;
            }
            let Some((_, id)) = self
                .per_source
                .get(source)
                .and_then(|m| m.first_key_value())
            else {
                break;
            };
            let key = (source.clone(), *id);
            self.evict(&key);
        }
        while !self.pending.is_empty()
            && (self.pending.len() >= self.cfg.max_pending_total
                || self.total_bytes.saturating_add(cost) > self.max_bytes)
        {
            let Some((_, key)) = self.order.first_key_value() else {
                break;
            };
            let key = key.clone();
            self.evict(&key);
        }
    }

    fn evict(&mut self, key: &(S, RecordId)) {
        if let Some(p) = self.remove(key) {
            self.stats.evicted += 1;
            self.stats.evicted_bytes += partial_cost(p.record_len, p.have.len()) as u64;
        }
    }

    /// Drops partials that received no chunk for more than `max_idle_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64, max_idle_ms: u64) -> usize {
        let stale: Vec<(S, RecordId)> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.last_ms) > max_idle_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            self.remove(k);
        }
        self.stats.expired += stale.len() as u64;
        stale.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{chunk_count, chunk_repr};

    fn first_chunks(r: &mut Reassembler<u8>, source: u8, seqs: core::ops::Range<u32>) -> Vec<u8> {
        let body = std::vec![7u8; MAX_RECORD_LEN];
        for seq in seqs {
            let id = RecordId::of([source; 16], seq, &body);
            let c = chunk_repr(&id, &body, 0, (1, 0)).unwrap();
            assert_eq!(r.push(source, &c, 0), Push::Incomplete);
        }
        body
    }

    #[test]
    fn the_byte_budget_evicts_oldest_first_and_counts_what_it_evicts() {
        let cfg = ReassemblerConfig {
            max_pending_per_source: 64,
            max_pending_total: 4096,
            max_record_len: MAX_RECORD_LEN,
        };
        let mut r = Reassembler::new(cfg).with_byte_budget(1 << 20, 256 << 10);
        let body = first_chunks(&mut r, 0, 0..10);
        // Three 64 KiB partials fit one source's 256 KiB share; the seven oldest went.
        assert_eq!(r.pending(), 3);
        assert!(r.pending_bytes() <= 256 << 10);
        assert_eq!(r.stats().evicted, 7);
        assert!(r.stats().evicted_bytes >= 7 * MAX_RECORD_LEN as u64);
        for s in 1..40 {
            first_chunks(&mut r, s, 0..3);
            assert!(r.pending_bytes() <= 1 << 20, "{}", r.pending_bytes());
        }
        assert_eq!(r.pending(), 15, "1 MiB holds 15 partials of 64 KiB");
        // The newest partial is still whole: its remaining chunks complete it.
        let id = RecordId::of([39; 16], 2, &body);
        let mut last = Push::Incomplete;
        for i in 1..chunk_count(body.len()) as u16 {
            last = r.push(39, &chunk_repr(&id, &body, i, (1, 0)).unwrap(), 1);
        }
        assert!(matches!(last, Push::Complete(_)), "{last:?}");
        // Expiry returns every byte.
        r.expire(100_000, 1);
        assert_eq!((r.pending(), r.pending_bytes()), (0, 0));
    }
}
