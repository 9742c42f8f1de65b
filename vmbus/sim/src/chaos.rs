//! Chaos mode (issue 11): from a seed, the host misbehaves at random points. Every VMBus
//! control message the server sends and every packet a device host model writes to a guest
//! ring may be dropped (missing), duplicated, delayed past the next one (reordered),
//! corrupted (malformed) or blown up (oversized). The guest's state machines must still end
//! (success or a recorded error) within their deadlines, and never panic.
//!
//! The decisions come from one xorshift64* stream per seed, so a failing seed replays exactly
//! (`scripts/chaos-vmbus --seed N`).

use vmbus::synic::VMBUS_MESSAGE_SINT;

use crate::host::{Sim, State};

/// What chaos does to one message or packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delivered as sent.
    Pass,
    /// Never delivered.
    Drop,
    /// Delivered twice.
    Duplicate,
    /// Held back and delivered after the next one (or at the next clock tick).
    Reorder,
    /// Delivered with its bytes damaged (a truncated body, a wrong type, a lying length).
    Corrupt,
    /// Delivered larger than the receiver can take (SynIC: a payload size field over 240;
    /// rings: a packet bigger than any guest receive buffer).
    Oversize,
}

/// Chaos settings.
#[derive(Clone, Copy, Debug)]
pub struct ChaosConfig {
    /// The seed of the decision stream.
    pub seed: u64,
    /// Faults per 1000 messages or packets (the rest pass).
    pub per_mille: u32,
    /// Allow ring packets whose descriptor is corrupt (they poison the channel for good, so a
    /// run with them mostly tests the poison path).
    pub corrupt_descriptors: bool,
}

impl ChaosConfig {
    /// `per_mille` faults from `seed`; corrupt descriptors allowed on every fourth seed.
    pub fn new(seed: u64, per_mille: u32) -> Self {
        ChaosConfig {
            seed,
            per_mille,
            corrupt_descriptors: seed % 4 == 3,
        }
    }
}

/// The decision stream and what it did.
#[derive(Clone, Debug)]
pub struct Chaos {
    cfg: ChaosConfig,
    state: u64,
    /// How many times each action other than `Pass` was taken.
    pub counts: ChaosCounts,
}

/// Faults injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChaosCounts {
    pub dropped: u32,
    pub duplicated: u32,
    pub reordered: u32,
    pub corrupted: u32,
    pub oversized: u32,
}

impl ChaosCounts {
    /// All faults.
    pub fn total(&self) -> u32 {
        self.dropped + self.duplicated + self.reordered + self.corrupted + self.oversized
    }
}

impl Chaos {
    /// A stream for `cfg`; `salt` separates streams of one seed (messages, packets).
    pub fn new(cfg: ChaosConfig, salt: u64) -> Self {
        let state = (cfg.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).max(1);
        Chaos {
            cfg,
            state,
            counts: ChaosCounts::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> ChaosConfig {
        self.cfg
    }

    /// Next pseudo-random word (xorshift64*).
    pub fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_word() % n.max(1)
    }

    /// The action for the next message or packet.
    pub fn pick(&mut self) -> Action {
        if self.below(1000) >= u64::from(self.cfg.per_mille) {
            return Action::Pass;
        }
        let a = match self.below(5) {
            0 => Action::Drop,
            1 => Action::Duplicate,
            2 => Action::Reorder,
            3 => Action::Corrupt,
            _ => Action::Oversize,
        };
        match a {
            Action::Drop => self.counts.dropped += 1,
            Action::Duplicate => self.counts.duplicated += 1,
            Action::Reorder => self.counts.reordered += 1,
            Action::Corrupt => self.counts.corrupted += 1,
            Action::Oversize => self.counts.oversized += 1,
            Action::Pass => {}
        }
        a
    }

    /// Damages a VMBus message: truncated, a different type, or a random byte flipped.
    pub fn corrupt_message(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        match self.below(3) {
            0 => b.truncate(self.below(b.len() as u64) as usize),
            1 => {
                if b.len() >= 4 {
                    let ty = self.below(32) as u32;
                    b[..4].copy_from_slice(&ty.to_le_bytes());
                }
            }
            _ => {
                if !b.is_empty() {
                    let i = self.below(b.len() as u64) as usize;
                    b[i] ^= 1 << self.below(8);
                }
            }
        }
        b
    }

    /// Damages a ring packet (descriptor included). Without `corrupt_descriptors` the framing
    /// stays valid and only the payload or the type-specific header is damaged, so the packet
    /// is consumed; with it, the descriptor may lie (the reader must poison the channel).
    pub fn corrupt_packet(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut b = pkt.to_vec();
        if b.len() < 16 {
            return b;
        }
        if self.cfg.corrupt_descriptors && self.below(2) == 0 {
            // len8 past what is in the ring, or offset8 below the descriptor.
            if self.below(2) == 0 {
                b[4..6].copy_from_slice(&0xFFF0u16.to_le_bytes());
            } else {
                b[2..4].copy_from_slice(&1u16.to_le_bytes());
            }
            return b;
        }
        match self.below(3) {
            // A different packet type.
            0 => {
                let ty = [6u16, 7, 9, 0xB, 0x42][self.below(5) as usize];
                b[0..2].copy_from_slice(&ty.to_le_bytes());
            }
            // A flipped byte after the descriptor (payload or transfer-page header).
            1 if b.len() > 16 => {
                let i = 16 + self.below(b.len() as u64 - 16) as usize;
                b[i] ^= 1 << self.below(8);
            }
            // A random transaction id.
            _ => {
                let t = self.next_word();
                b[8..16].copy_from_slice(&t.to_le_bytes());
            }
        }
        b
    }

    /// A packet too large for any guest receive buffer (valid framing: 8 KiB of payload).
    pub fn oversize_packet(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut b = pkt.to_vec();
        if b.len() < 16 {
            return b;
        }
        b.resize(8192, 0);
        let len8 = (b.len() / 8) as u16;
        b[4..6].copy_from_slice(&len8.to_le_bytes());
        b
    }
}

impl Sim {
    /// Turns chaos on (messages and packets, separate streams of one seed) or off.
    pub fn set_chaos(&self, cfg: Option<ChaosConfig>) {
        let mut st = self.lock();
        st.chaos_msgs = cfg.map(|c| Chaos::new(c, 1));
        st.chaos_pkts = cfg.map(|c| Chaos::new(c, 2));
        st.held_msg = None;
        st.held_pkts.clear();
    }

    /// Faults injected so far (messages + packets).
    pub fn chaos_counts(&self) -> ChaosCounts {
        let st = self.lock();
        let mut c = ChaosCounts::default();
        for ch in [&st.chaos_msgs, &st.chaos_pkts].into_iter().flatten() {
            c.dropped += ch.counts.dropped;
            c.duplicated += ch.counts.duplicated;
            c.reordered += ch.counts.reordered;
            c.corrupted += ch.counts.corrupted;
            c.oversized += ch.counts.oversized;
        }
        c
    }

    /// A VMBus server message under chaos (called by the server's `reply`).
    pub(crate) fn chaos_reply(&self, st: &mut State, vp: u32, bytes: &[u8]) {
        let Some(ch) = st.chaos_msgs.as_mut() else {
            return;
        };
        let action = ch.pick();
        let send = |sim: &Sim, st: &mut State, b: &[u8], size: u8| {
            sim.deliver(st, vp, VMBUS_MESSAGE_SINT, 1, size, b);
        };
        match action {
            Action::Pass => send(self, st, bytes, bytes.len() as u8),
            Action::Drop => {}
            Action::Duplicate => {
                send(self, st, bytes, bytes.len() as u8);
                send(self, st, bytes, bytes.len() as u8);
            }
            Action::Reorder => {
                // Held until the next message (or clock tick); an older held one goes now.
                if let Some((hvp, h)) = st.held_msg.replace((vp, bytes.to_vec())) {
                    self.deliver(st, hvp, VMBUS_MESSAGE_SINT, 1, h.len() as u8, &h);
                }
                return;
            }
            Action::Corrupt => {
                let b = ch.corrupt_message(bytes);
                send(self, st, &b, b.len() as u8);
            }
            Action::Oversize => {
                let size = 241 + ch.below(15) as u8;
                send(self, st, bytes, size);
            }
        }
        if let Some((hvp, h)) = st.held_msg.take() {
            self.deliver(st, hvp, VMBUS_MESSAGE_SINT, 1, h.len() as u8, &h);
        }
    }

    /// The packets a device host model's write of `pkt` to channel `relid` turns into under
    /// chaos (none, one, or two; a held-back packet follows the next one).
    pub fn chaos_packets(&self, relid: u32, pkt: &[u8]) -> Vec<Vec<u8>> {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(ch) = st.chaos_pkts.as_mut() else {
            return vec![pkt.to_vec()];
        };
        let mut out = match ch.pick() {
            Action::Pass => vec![pkt.to_vec()],
            Action::Drop => vec![],
            Action::Duplicate => vec![pkt.to_vec(), pkt.to_vec()],
            Action::Reorder => {
                return st
                    .held_pkts
                    .insert(relid, pkt.to_vec())
                    .into_iter()
                    .collect();
            }
            Action::Corrupt => vec![ch.corrupt_packet(pkt)],
            Action::Oversize => vec![ch.oversize_packet(pkt)],
        };
        if let Some(h) = st.held_pkts.remove(&relid) {
            out.push(h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_decisions() {
        let cfg = ChaosConfig::new(42, 300);
        let mut a = Chaos::new(cfg, 1);
        let mut b = Chaos::new(cfg, 1);
        let da: Vec<Action> = (0..200).map(|_| a.pick()).collect();
        let db: Vec<Action> = (0..200).map(|_| b.pick()).collect();
        assert_eq!(da, db);
        assert!(
            a.counts.total() > 20 && a.counts.total() < 120,
            "{:?}",
            a.counts
        );
        let mut c = Chaos::new(cfg, 2);
        let dc: Vec<Action> = (0..200).map(|_| c.pick()).collect();
        assert_ne!(da, dc, "salts give separate streams");
    }

    #[test]
    fn oversized_packets_keep_valid_framing() {
        let mut c = Chaos::new(ChaosConfig::new(1, 1000), 0);
        let mut p = vec![0u8; 24];
        p[0] = 6;
        p[2] = 2;
        p[4] = 3;
        let o = c.oversize_packet(&p);
        assert_eq!(o.len(), 8192);
        assert_eq!(u16::from_le_bytes([o[4], o[5]]) as usize * 8, 8192);
        assert_eq!(u16::from_le_bytes([o[2], o[3]]), 2);
    }
}
