//! Record reassembly with bounded memory.
//!
//! Interim: `capture/API.md` promises a std `Reassembler` in `capture::chunk`; until it lands
//! the collector uses this one (same contract: caps per source and in total, any order,
//! duplicate chunks ignored, oldest partial record evicted and counted, yields the record only
//! when its CRC matches).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use capture::chunk::{chunk_count, RecordId, MAX_RECORD_LEN};
use capture::wire::ChunkRepr;
use thiserror::Error;

/// A complete, CRC-checked record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    pub id: RecordId,
    pub schema: (u16, u16),
    pub bytes: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReasmError {
    #[error("chunk contradicts its record: {0}")]
    Inconsistent(&'static str),
    #[error("record of {0} bytes is larger than the {MAX_RECORD_LEN}-byte limit")]
    TooLarge(u32),
    #[error("reassembled record CRC {actual:08x} does not match {expected:08x}")]
    RecordCrc { expected: u32, actual: u32 },
}

/// Bounds.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblerConfig {
    pub max_per_source: usize,
    pub max_total: usize,
}

struct Partial {
    schema: (u16, u16),
    chunk_count: u16,
    got: Vec<bool>,
    missing: usize,
    buf: Vec<u8>,
    order: u64,
}

/// Reassembles chunked records from many sources.
pub struct Reassembler<S> {
    cfg: ReassemblerConfig,
    parts: HashMap<(S, RecordId), Partial>,
    order: BTreeMap<u64, (S, RecordId)>,
    per_source: HashMap<S, usize>,
    next: u64,
    evictions: u64,
}

impl<S: Copy + Eq + Hash> Reassembler<S> {
    pub fn new(cfg: ReassemblerConfig) -> Self {
        Reassembler {
            cfg: ReassemblerConfig {
                max_per_source: cfg.max_per_source.max(1),
                max_total: cfg.max_total.max(1),
            },
            parts: HashMap::new(),
            order: BTreeMap::new(),
            per_source: HashMap::new(),
            next: 0,
            evictions: 0,
        }
    }

    /// Partial records evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Partial records held now.
    pub fn pending(&self) -> usize {
        self.parts.len()
    }

    fn remove(&mut self, key: &(S, RecordId)) -> Option<Partial> {
        let p = self.parts.remove(key)?;
        self.order.remove(&p.order);
        if let Some(n) = self.per_source.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&key.0);
            }
        }
        Some(p)
    }

    /// Adds a chunk from `src`. Returns the record when this chunk completes it.
    pub fn push(&mut self, src: S, c: &ChunkRepr<'_>) -> Result<Option<Complete>, ReasmError> {
        if c.record_len as usize > MAX_RECORD_LEN {
            return Err(ReasmError::TooLarge(c.record_len));
        }
        if c.record_len == 0 || usize::from(c.chunk_count) != chunk_count(c.record_len as usize) {
            return Err(ReasmError::Inconsistent(
                "chunk count does not fit record length",
            ));
        }
        if c.chunk_index >= c.chunk_count {
            return Err(ReasmError::Inconsistent("chunk index beyond chunk count"));
        }
        let end = c.offset as usize + c.data.len();
        if end > c.record_len as usize {
            return Err(ReasmError::Inconsistent("chunk runs past the record end"));
        }
        let id = c.id();
        let schema = (c.schema_major, c.schema_minor);
        if c.chunk_count == 1 {
            // The common case: a whole record in one datagram, no state kept.
            if c.offset != 0 || c.data.len() != c.record_len as usize {
                return Err(ReasmError::Inconsistent(
                    "single chunk does not hold the record",
                ));
            }
            return check(id, schema, c.data.to_vec()).map(Some);
        }
        let key = (src, id);
        if !self.parts.contains_key(&key) {
            if self.per_source.get(&src).copied().unwrap_or(0) >= self.cfg.max_per_source {
                let oldest = self
                    .order
                    .values()
                    .find(|(s, _)| *s == src)
                    .copied()
                    .expect("per-source count matches entries");
                self.remove(&oldest);
                self.evictions += 1;
            }
            if self.parts.len() >= self.cfg.max_total {
                if let Some((_, oldest)) = self.order.iter().next().map(|(o, k)| (*o, *k)) {
                    self.remove(&oldest);
                    self.evictions += 1;
                }
            }
            let order = self.next;
            self.next += 1;
            self.order.insert(order, key);
            *self.per_source.entry(src).or_insert(0) += 1;
            self.parts.insert(
                key,
                Partial {
                    schema,
                    chunk_count: c.chunk_count,
                    got: vec![false; usize::from(c.chunk_count)],
                    missing: usize::from(c.chunk_count),
                    buf: vec![0; c.record_len as usize],
                    order,
                },
            );
        }
        let p = self.parts.get_mut(&key).expect("inserted above");
        if p.chunk_count != c.chunk_count || p.schema != schema {
            return Err(ReasmError::Inconsistent(
                "chunk disagrees with earlier chunks of the record",
            ));
        }
        let i = usize::from(c.chunk_index);
        if p.got[i] {
            return Ok(None); // duplicate chunk
        }
        p.got[i] = true;
        p.missing -= 1;
        p.buf[c.offset as usize..end].copy_from_slice(c.data);
        if p.missing > 0 {
            return Ok(None);
        }
        let p = self.remove(&key).expect("present");
        check(id, p.schema, p.buf).map(Some)
    }
}

fn check(id: RecordId, schema: (u16, u16), bytes: Vec<u8>) -> Result<Complete, ReasmError> {
    let actual = crc32fast::hash(&bytes);
    if actual != id.record_crc {
        return Err(ReasmError::RecordCrc {
            expected: id.record_crc,
            actual,
        });
    }
    Ok(Complete { id, schema, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture::chunk::chunk_repr;

    fn record(len: usize, fill: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ fill)
            .collect()
    }

    fn chunks(rec: &[u8], seq: u32) -> Vec<ChunkRepr<'_>> {
        let id = RecordId::of([1; 16], seq, rec);
        (0..chunk_count(rec.len()) as u16)
            .map(|i| chunk_repr(&id, rec, i, (1, 0)).unwrap())
            .collect()
    }

    #[test]
    fn out_of_order_and_duplicate_chunks_reassemble_once() {
        let rec = record(4000, 3);
        let cs = chunks(&rec, 1);
        assert_eq!(cs.len(), 4);
        let mut r = Reassembler::new(ReassemblerConfig {
            max_per_source: 4,
            max_total: 8,
        });
        for i in [2, 0, 2, 3] {
            assert_eq!(r.push(1u8, &cs[i]).unwrap(), None);
        }
        let done = r.push(1u8, &cs[1]).unwrap().unwrap();
        assert_eq!(done.bytes, rec);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn oldest_partial_is_evicted_per_source_and_counted() {
        let recs: Vec<Vec<u8>> = (0..3).map(|i| record(3000, i)).collect();
        let cs: Vec<Vec<ChunkRepr<'_>>> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| chunks(r, i as u32))
            .collect();
        let mut r = Reassembler::new(ReassemblerConfig {
            max_per_source: 2,
            max_total: 100,
        });
        for c in &cs {
            r.push(7u8, &c[0]).unwrap();
        }
        assert_eq!(r.evictions(), 1);
        assert_eq!(r.pending(), 2);
        // Record 0 was evicted: its remaining chunks start over and do not complete it.
        assert_eq!(r.push(7u8, &cs[0][1]).unwrap(), None);
        // Record 2 is intact.
        r.push(7u8, &cs[2][1]).unwrap();
        assert!(r.push(7u8, &cs[2][2]).unwrap().is_some());
        // Another source is not affected by source 7's cap, but the total cap holds.
        let mut t = Reassembler::new(ReassemblerConfig {
            max_per_source: 10,
            max_total: 2,
        });
        for (i, c) in cs.iter().enumerate() {
            t.push(i as u8, &c[0]).unwrap();
        }
        assert_eq!((t.evictions(), t.pending()), (1, 2));
    }

    #[test]
    fn corrupted_record_is_refused() {
        let rec = record(100, 0);
        let mut c = chunks(&rec, 1).remove(0);
        let bad = record(100, 1);
        c.data = &bad;
        let mut r = Reassembler::new(ReassemblerConfig {
            max_per_source: 1,
            max_total: 1,
        });
        assert!(matches!(r.push(0u8, &c), Err(ReasmError::RecordCrc { .. })));
    }
}
