//! netvsc's receive path: the bounded drain of the inbound ring, completions, transfer-page
//! packets (frames and RNDIS control replies) and the completions the host waits for
//! (Linux `drivers/net/hyperv/netvsc.c` `netvsc_receive`, `netvsc_send_recv_completion`).

use core::sync::atomic::Ordering;

use super::nvsp::{self, Nvsp};
use super::rndis::{self, Rndis};
use super::{
    ChannelError, Core, CtrlReply, DeviceChannel, DmaMemory, NetvscError, OpMode, DRAIN_LIMIT,
    FRAME_MAX, PENDING_COMPLETIONS, RNDIS_MAX, RX_QUEUE, TID_CLASS, TID_CONTROL, TID_GPA,
    TID_REQUEST, TID_SENDBUF,
};
use crate::device::{OutgoingPacket, PacketKind, PacketType};
use crate::ring::RingError;

/// Received frames waiting for smoltcp (or `recv_frame`): a fixed ring of [`RX_QUEUE`].
pub(super) struct RxQueue {
    frames: [[u8; FRAME_MAX]; RX_QUEUE],
    lens: [usize; RX_QUEUE],
    head: usize,
    pub(super) count: usize,
}

impl RxQueue {
    pub(super) const fn new() -> Self {
        RxQueue {
            frames: [[0; FRAME_MAX]; RX_QUEUE],
            lens: [0; RX_QUEUE],
            head: 0,
            count: 0,
        }
    }
    pub(super) fn push(&mut self, f: &[u8]) -> bool {
        if self.count == RX_QUEUE || f.len() > FRAME_MAX {
            return false;
        }
        let i = (self.head + self.count) % RX_QUEUE;
        self.frames[i][..f.len()].copy_from_slice(f);
        self.lens[i] = f.len();
        self.count += 1;
        true
    }
    pub(super) fn front(&self) -> Option<&[u8]> {
        (self.count > 0).then(|| &self.frames[self.head][..self.lens[self.head]])
    }
    pub(super) fn pop(&mut self) {
        if self.count > 0 {
            self.head = (self.head + 1) % RX_QUEUE;
            self.count -= 1;
        }
    }
}

impl<C: DeviceChannel, M: DmaMemory> Core<C, M> {
    pub(super) fn maybe_drain(&mut self, rxq: &mut RxQueue) -> Result<usize, NetvscError> {
        match self.mode {
            OpMode::Polling => self.drain(rxq),
            OpMode::Interrupt => {
                let ext = self
                    .ext_irq
                    .is_some_and(|f| f.swap(false, Ordering::AcqRel));
                if self.irq.swap(false, Ordering::AcqRel) | ext {
                    self.drain(rxq)
                } else {
                    self.flush_pending()?;
                    Ok(0)
                }
            }
        }
    }

    /// Sends completions that earlier found the ring full.
    pub(super) fn flush_pending(&mut self) -> Result<(), NetvscError> {
        while self.pending_len > 0 {
            let tid = self.pending[0];
            let status = (tid >> 63) as u32; // top bit marks a failed packet
            let tid = tid & !(1 << 63);
            match self.complete_rx(tid, status == 0) {
                Ok(()) => {
                    self.pending.copy_within(1..self.pending_len, 0);
                    self.pending_len -= 1;
                }
                Err(ChannelError::Full) | Err(ChannelError::Busy) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub(super) fn complete_rx(&mut self, tid: u64, ok: bool) -> Result<(), ChannelError> {
        // netvsc.c netvsc_send_recv_completion: NVSP SEND_RNDIS_PKT_COMPLETE in a VM_PKT_COMP
        // with the transfer-page packet's transaction id; header + status = 8 bytes.
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&nvsp::MsgType::SEND_RNDIS_PKT_COMPLETE.0.to_le_bytes());
        let st = if ok {
            nvsp::STATUS_SUCCESS
        } else {
            nvsp::STATUS_FAIL
        };
        b[4..].copy_from_slice(&st.to_le_bytes());
        self.out(&OutgoingPacket::Completion {
            data: &b,
            trans_id: tid,
        })?;
        self.stats.xfer_completed += 1;
        Ok(())
    }

    /// Completes a transfer-page packet now, or queues the completion if the ring is full
    /// (sent by [`Self::flush_pending`]).
    fn complete_or_queue(&mut self, tid: u64, ok: bool) -> Result<(), NetvscError> {
        match self.complete_rx(tid, ok) {
            Ok(()) => Ok(()),
            Err(ChannelError::Full) | Err(ChannelError::Busy) => {
                if self.pending_len < PENDING_COMPLETIONS {
                    self.pending[self.pending_len] = tid | if ok { 0 } else { 1 << 63 };
                    self.pending_len += 1;
                } else {
                    log::error!("netvsc: completion queue full, host may stall");
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads inbound packets until the ring is empty or [`DRAIN_LIMIT`] were read. Returns
    /// how many were read. A poisoned channel fails at once and is never read again.
    pub(super) fn drain(&mut self, rxq: &mut RxQueue) -> Result<usize, NetvscError> {
        if let Some(e) = self.poisoned.get() {
            return Err(e.into());
        }
        self.flush_pending()?;
        // Large enough for a transfer-page packet with hundreds of ranges (a host may batch
        // up to NVSP_MAX_PACKETS_PER_RECEIVE = 375, OpenVMM protocol.rs).
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while n < DRAIN_LIMIT {
            let pkt = match self.chan.recv(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(n),
                // A transfer-page packet whose header lies: the host still holds the
                // receive-buffer ranges it meant, so complete it, failed (as for any bad one).
                Err(ChannelError::Malformed(RingError::BadPacketHeader { desc, .. }))
                    if PacketType(desc.ty) == PacketType::DATA_USING_XFER_PAGES =>
                {
                    self.stats.malformed += 1;
                    self.stats.xfer_packets += 1;
                    n += 1;
                    self.complete_or_queue(desc.trans_id, false)?;
                    continue;
                }
                // Consumed by the channel: count it and read on (bounded by the limit).
                Err(ChannelError::Malformed(_)) | Err(ChannelError::TooLarge(_)) => {
                    self.stats.malformed += 1;
                    n += 1;
                    continue;
                }
                Err(e @ ChannelError::Poisoned(_)) => {
                    log::error!("netvsc: {e}: the channel is no longer read");
                    self.poisoned.set(Some(e));
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            n += 1;
            let tid = pkt.trans_id();
            match pkt.kind {
                PacketKind::Completion => self.on_completion(tid, pkt.payload),
                PacketKind::XferPages { pageset_id, .. } => {
                    let ok = self.on_xfer_pages(rxq, pageset_id, &pkt.kind, pkt.payload);
                    if !ok {
                        self.stats.malformed += 1;
                    }
                    self.stats.xfer_packets += 1;
                    self.complete_or_queue(tid, ok)?;
                }
                PacketKind::InBand => {
                    // NVSP messages the host sends unsolicited (VF association, indirection
                    // table): nothing to do for a single-queue synthetic-only guest.
                    match Nvsp::parse_at(pkt.payload, self.nvsp_version) {
                        Ok(m) => log::debug!("netvsc: ignoring in-band NVSP type {}", m.ty().0),
                        Err(_) => self.stats.malformed += 1,
                    }
                    if pkt.completion_requested() {
                        let _ = self.out(&OutgoingPacket::Completion {
                            data: &[],
                            trans_id: tid,
                        });
                    }
                }
                _ => {
                    log::warn!("netvsc: ignoring packet type {}", pkt.desc.ty);
                    self.stats.malformed += 1;
                }
            }
        }
        // The limit was reached: more may be waiting, and in interrupt mode the host does not
        // interrupt again until the ring drains (§5.2), so look again on the next receive.
        self.irq.store(true, Ordering::Release);
        Ok(n)
    }

    pub(super) fn on_completion(&mut self, tid: u64, payload: &[u8]) {
        if payload.is_empty() {
            // OpenVMM netvsp completes SEND_NDIS_VERSION with an empty packet although no
            // completion was requested ("The UEFI client expects a completion packet"): an
            // acknowledgement without data, not an error.
            log::debug!("netvsc: empty completion for {tid:#x}");
            return;
        }
        let msg = match Nvsp::parse_at(payload, self.nvsp_version) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("netvsc: bad completion: {e}");
                self.stats.malformed += 1;
                return;
            }
        };
        match tid & TID_CLASS {
            TID_REQUEST => self.nvsp_reply = Some((tid, msg)),
            TID_SENDBUF => {
                let i = (tid & 0xFFFF_FFFF) as usize;
                if i < self.send_sections && self.send_used.clear(i) {
                    self.stats.tx_completed += 1;
                } else {
                    self.stats.malformed += 1;
                }
            }
            TID_GPA => {
                let i = (tid & 0xFFFF_FFFF) as usize;
                if i < self.tx_slots && self.tx_used.clear(i) {
                    self.stats.tx_completed += 1;
                } else {
                    self.stats.malformed += 1;
                }
            }
            TID_CONTROL => self.ctrl_busy = false,
            _ => self.stats.malformed += 1,
        }
    }

    /// Handles one transfer-page packet (`ranges` is its [`PacketKind::XferPages`], already
    /// bounds-checked by the ring's parser); returns whether it was well formed.
    pub(super) fn on_xfer_pages(
        &mut self,
        rxq: &mut RxQueue,
        pageset_id: u16,
        ranges: &PacketKind<'_>,
        payload: &[u8],
    ) -> bool {
        match Nvsp::parse_at(payload, self.nvsp_version) {
            Ok(Nvsp::RndisPacket { .. }) => {}
            _ => return false,
        }
        // netvsc.c netvsc_receive: the page set must be our receive buffer.
        if pageset_id != nvsp::RECV_BUFFER_ID {
            return false;
        }
        let mut all_ok = true;
        let mut msg = [0u8; RNDIS_MAX];
        for (len, off) in ranges.xfer_ranges() {
            let (off, len) = (off as usize, len as usize);
            if len > RNDIS_MAX {
                self.stats.rx_dropped += 1;
                all_ok = false;
                continue;
            }
            if self.bufs.recv.read(off, &mut msg[..len]).is_err() {
                all_ok = false;
                continue;
            }
            match Rndis::parse(&msg[..len]) {
                Ok(Rndis::Packet { data, ppi }) => {
                    // Linux rndis_get_ppi ignores a malformed per-packet info and delivers the
                    // frame; no PPI (checksum, VLAN) is used here, so only count it.
                    if rndis::PpiIter::new(ppi).any(|p| p.is_err()) {
                        log::debug!("netvsc: frame with malformed per-packet info");
                    }
                    if rxq.push(data) {
                        self.stats.rx_frames += 1;
                    } else {
                        self.stats.rx_dropped += 1;
                    }
                }
                Ok(Rndis::InitComplete {
                    request_id, status, ..
                }) => self.ctrl_reply = Some((request_id, CtrlReply::Init { status })),
                Ok(Rndis::QueryComplete {
                    request_id,
                    status,
                    info,
                }) => {
                    let mut b = [0u8; 16];
                    let n = info.len().min(16);
                    b[..n].copy_from_slice(&info[..n]);
                    self.ctrl_reply = Some((
                        request_id,
                        CtrlReply::Query {
                            status,
                            info: b,
                            len: info.len(),
                        },
                    ));
                }
                Ok(Rndis::SetComplete { request_id, status }) => {
                    self.ctrl_reply = Some((request_id, CtrlReply::Set { status }))
                }
                Ok(Rndis::Indicate { status, .. }) => match status {
                    rndis::STATUS_MEDIA_CONNECT => self.link_up = true,
                    rndis::STATUS_MEDIA_DISCONNECT => self.link_up = false,
                    _ => log::debug!("netvsc: RNDIS indication {status:#x}"),
                },
                Ok(other) => log::debug!("netvsc: ignoring RNDIS type {:#x}", other.ty().0),
                Err(e) => {
                    log::warn!("netvsc: bad RNDIS message: {e}");
                    all_ok = false;
                }
            }
        }
        all_ok
    }
}
