//! netvsc transmit: frames out as RNDIS PACKET messages, into a free send-buffer section
//! (Linux `netvsc.c` `netvsc_copy_to_send_buf`) or GPA-direct from a free tx slot; every send
//! takes the outbound lock the way the mode allows (polling: tried, bounded). Which sections
//! and slots are in flight is kept in [`Slots`] bitmaps, freed by the host's completions
//! (`rx.rs`).

use super::nvsp::{self, Nvsp};
use super::rndis::Rndis;
use super::{
    ChannelError, Core, DeviceChannel, DmaMemory, NetvscError, OpMode, FRAME_MAX,
    POLLING_LOCK_TRIES, TID_GPA, TID_SENDBUF, TX_SLOT,
};
use crate::device::{GpaRange, OutgoingPacket};

/// A fixed bitmap of `64 * W` in-flight flags (send-buffer sections, tx slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slots<const W: usize>([u64; W]);

impl<const W: usize> Slots<W> {
    /// All free.
    pub(super) const fn new() -> Self {
        Slots([0; W])
    }
    /// Whether slot `i` is in flight (`false` out of range).
    pub(super) fn is_set(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Marks slot `i` in flight (ignored out of range).
    pub(super) fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    /// Frees slot `i` if it was in flight; returns whether it was.
    pub(super) fn clear(&mut self, i: usize) -> bool {
        let was = self.is_set(i);
        if was {
            self.0[i / 64] &= !(1 << (i % 64));
        }
        was
    }
    /// The first free slot in `range`.
    pub(super) fn first_free(&self, range: core::ops::Range<usize>) -> Option<usize> {
        range.into_iter().find(|&i| i < 64 * W && !self.is_set(i))
    }
    /// Slots in flight.
    pub(super) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

impl<C: DeviceChannel, M: DmaMemory> Core<C, M> {
    /// Sends on the channel. In polling mode (the panic path) the outbound lock is only
    /// tried, a bounded number of times: if the panic interrupted a send on this channel the
    /// lock never frees, and waiting for it would hang the panic path (§2.3).
    pub(super) fn out(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        let r = self.out_inner(pkt);
        if let Err(e @ ChannelError::Poisoned(_)) = r {
            self.poisoned.set(Some(e));
        }
        r
    }

    fn out_inner(&self, pkt: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        match self.mode {
            OpMode::Interrupt => self.chan.send(pkt),
            OpMode::Polling => {
                for _ in 0..POLLING_LOCK_TRIES {
                    match self.chan.try_send(pkt) {
                        Err(ChannelError::Busy) => core::hint::spin_loop(),
                        other => return other,
                    }
                }
                Err(ChannelError::Busy)
            }
        }
    }

    pub(super) fn tx_available(&self) -> bool {
        self.send_used.first_free(0..self.send_sections).is_some()
            || self.tx_used.first_free(1..self.tx_slots).is_some()
    }

    /// Sends one frame as an RNDIS PACKET: into a free send-buffer section if there is a send
    /// buffer (netvsc.c netvsc_copy_to_send_buf), else GPA-direct from a free tx slot.
    pub(super) fn send_frame(&mut self, frame: &[u8]) -> Result<(), NetvscError> {
        if frame.len() > FRAME_MAX {
            return Err(NetvscError::Channel(ChannelError::TooLarge(frame.len())));
        }
        let mut buf = [0u8; FRAME_MAX + 64];
        let n = Rndis::Packet {
            data: frame,
            ppi: &[],
        }
        .emit(&mut buf)?;
        let mut nv = [0u8; nvsp::PACKET_SIZE_V61];
        // A free send-buffer section the message fits in, else a GPA-direct slot.
        let section = (n <= self.send_section_size)
            .then(|| self.send_used.first_free(0..self.send_sections))
            .flatten();
        if let Some(i) = section {
            let send = self.bufs.send.as_ref().ok_or(NetvscError::NotUp)?;
            send.write(i * self.send_section_size, &buf[..n])?;
            let nl = Nvsp::RndisPacket {
                channel_type: nvsp::CHANNEL_DATA,
                section_index: i as u32,
                section_size: n as u32,
            }
            .emit(&mut nv)?;
            self.out(&OutgoingPacket::InBand {
                data: &nv[..nl],
                trans_id: TID_SENDBUF | i as u64,
                completion_requested: true,
            })?;
            self.send_used.set(i);
        } else {
            let i = (self.tx_used.first_free(1..self.tx_slots))
                .ok_or(NetvscError::Channel(ChannelError::Full))?;
            self.bufs.tx.write(i * TX_SLOT, &buf[..n])?;
            let gpa = self.bufs.tx.gpa() + (i * TX_SLOT) as u64;
            // A slot never crosses a page (TX_SLOT divides the page size).
            let page = GpaRange::contiguous(gpa, n as u32);
            let nl = Nvsp::RndisPacket {
                channel_type: nvsp::CHANNEL_DATA,
                section_index: nvsp::INVALID_SECTION,
                section_size: 0,
            }
            .emit(&mut nv)?;
            self.out(&OutgoingPacket::GpaDirect {
                ranges: &[page],
                data: &nv[..nl],
                trans_id: TID_GPA | i as u64,
                completion_requested: true,
            })?;
            self.tx_used.set(i);
        }
        self.stats.tx_frames += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_set_clear_and_find_free_within_range() {
        let mut s = Slots::<4>::new();
        assert_eq!(s.first_free(0..256), Some(0));
        for i in 0..70 {
            s.set(i);
        }
        assert_eq!(s.count(), 70);
        assert_eq!(s.first_free(0..256), Some(70));
        assert_eq!(s.first_free(0..70), None, "the range bounds the search");
        assert!(s.clear(64));
        assert!(!s.clear(64), "a second completion frees nothing");
        assert_eq!(s.first_free(1..256), Some(64));
        // Out of range: never set, never found, never panics (host-chosen indices).
        s.set(1000);
        assert!(!s.is_set(1000));
        assert!(!s.clear(usize::MAX));
        assert_eq!(s.first_free(250..usize::MAX), Some(250));
        let full = {
            let mut f = Slots::<1>::new();
            (0..64).for_each(|i| f.set(i));
            f
        };
        assert_eq!(full.first_free(1..64), None);
        assert_eq!(full.count(), 64);
    }
}
