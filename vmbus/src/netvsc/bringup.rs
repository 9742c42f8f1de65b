//! netvsc bring-up: NVSP version negotiation, NDIS config and version, the receive and send
//! buffers (GPADLs), then RNDIS INIT, the MAC, the link state and the packet filter (Linux
//! `drivers/net/hyperv/netvsc.c` `netvsc_connect_vsp`, `rndis_filter.c`; ref §7). RNDIS
//! control requests go GPA-direct from tx slot 0 and wait for their completion.

use core::sync::atomic::Ordering;

use super::nvsp::{self, Nvsp};
use super::rndis::{self, Rndis};
use super::{
    Core, CtrlReply, Deadline, DeviceChannel, DmaMemory, GpadlMaker, NetvscError, OpMode, RxQueue,
    ETH_FRAME_MTU, MAX_SECTIONS, MIN_SECTION_SIZE, TID_CONTROL, TID_REQUEST, TX_SLOT,
};
use crate::device::{GpaRange, OutgoingPacket};
use crate::PAGE_SIZE;

impl<C: DeviceChannel, M: DmaMemory> Core<C, M> {
    pub(super) fn send_nvsp(&mut self, msg: &Nvsp, completion: bool) -> Result<u64, NetvscError> {
        let mut buf = [0u8; nvsp::PACKET_SIZE_V61];
        let n = msg.emit(&mut buf)?;
        self.next_request += 1;
        let tid = TID_REQUEST | (self.next_request & 0xFFFF_FFFF);
        self.out(&OutgoingPacket::InBand {
            data: &buf[..n],
            trans_id: tid,
            completion_requested: completion,
        })?;
        Ok(tid)
    }

    fn wait_nvsp(
        &mut self,
        rxq: &mut RxQueue,
        tid: u64,
        deadline: &mut dyn Deadline,
        what: &'static str,
    ) -> Result<Nvsp, NetvscError> {
        self.wait_reply(rxq, deadline, what, |c| {
            c.nvsp_reply.take_if(|(t, _)| *t == tid).map(|(_, m)| m)
        })
    }

    /// Drains until `take` finds the reply it waits for. The deadline is checked on every
    /// round, not only when the ring is empty: a host that keeps the ring busy cannot hold
    /// bring-up.
    fn wait_reply<T>(
        &mut self,
        rxq: &mut RxQueue,
        deadline: &mut dyn Deadline,
        what: &'static str,
        mut take: impl FnMut(&mut Self) -> Option<T>,
    ) -> Result<T, NetvscError> {
        let mut waited = false;
        loop {
            if let Some(r) = take(self) {
                return Ok(r);
            }
            if waited && deadline.expired() {
                return Err(NetvscError::Timeout(what));
            }
            self.drain(rxq)?;
            waited = true;
        }
    }

    pub(super) fn bring_up(
        &mut self,
        rxq: &mut RxQueue,
        gpadls: &mut dyn GpadlMaker,
        deadline: &mut dyn Deadline,
    ) -> Result<(), NetvscError> {
        let b = &self.bufs;
        if b.tx.len() < PAGE_SIZE || !b.tx.gpa().is_multiple_of(PAGE_SIZE as u64) {
            return Err(NetvscError::BadBuffer("tx"));
        }
        if b.recv.len() < PAGE_SIZE || !b.recv.gpa().is_multiple_of(PAGE_SIZE as u64) {
            return Err(NetvscError::BadBuffer("recv"));
        }
        // Polling during bring-up: replies are read by spinning on the ring.
        self.chan.set_interrupt_mask(true);

        // 1. NVSP version: netvsc.c negotiate_nvsp_ver sends min = max = the version tried.
        let mut version = None;
        for v in nvsp::VERSIONS {
            let tid = self.send_nvsp(&Nvsp::Init { min: v, max: v }, true)?;
            match self.wait_nvsp(rxq, tid, deadline, "NVSP INIT_COMPLETE")? {
                Nvsp::InitComplete { status, .. } if status == nvsp::STATUS_SUCCESS => {
                    version = Some(v);
                    break;
                }
                Nvsp::InitComplete { status, .. } => {
                    log::info!("netvsc: host refused NVSP {v:#x} (status {status})");
                }
                other => {
                    log::warn!("netvsc: unexpected reply to INIT: type {}", other.ty().0);
                    self.stats.malformed += 1;
                }
            }
        }
        let v = version.ok_or(NetvscError::NoVersion)?;
        self.nvsp_version = v;

        // 2. NDIS config (v2+; netvsc.c negotiate_nvsp_ver): frame MTU, 802.1Q capability.
        if v >= nvsp::VERSION_2 {
            self.send_nvsp(
                &Nvsp::NdisConfig {
                    mtu: ETH_FRAME_MTU as u32,
                    capability: nvsp::NDIS_CAP_IEEE8021Q,
                },
                false,
            )?;
        }
        // 3. NDIS version: 6.1 up to NVSP 4, else 6.30 (netvsc.c netvsc_connect_vsp).
        let ndis = if v <= nvsp::VERSION_4 {
            nvsp::NDIS_6_1
        } else {
            nvsp::NDIS_6_30
        };
        self.send_nvsp(
            &Nvsp::NdisVersion {
                major: ndis >> 16,
                minor: ndis & 0xFFFF,
            },
            false,
        )?;

        // 4. Receive buffer (netvsc.c netvsc_init_buf): GPADL, SEND_RECV_BUF id 0xCAFE.
        let gpadl = gpadls.create(self.bufs.recv.gpa(), self.bufs.recv.len())?;
        let tid = self.send_nvsp(
            &Nvsp::SendRecvBuf {
                gpadl,
                id: nvsp::RECV_BUFFER_ID,
            },
            true,
        )?;
        match self.wait_nvsp(rxq, tid, deadline, "SEND_RECV_BUF_COMPLETE")? {
            Nvsp::SendRecvBufComplete {
                status,
                num_sections,
                section,
            } => {
                if status != nvsp::STATUS_SUCCESS {
                    return Err(NetvscError::Refused {
                        what: "receive buffer",
                        status,
                    });
                }
                // Linux netvsc.c wants exactly one section; FreeBSD hn_nvs_conn_rxbuf reads
                // only the status. The section layout is never used here (each transfer range
                // is checked against the buffer), so any count is accepted (API.md).
                if num_sections != 1 {
                    log::info!("netvsc: receive buffer in {num_sections} sections");
                }
                self.recv_section = (num_sections >= 1).then_some(section);
            }
            other => {
                return Err(NetvscError::Refused {
                    what: "receive buffer (unexpected reply)",
                    status: other.ty().0,
                })
            }
        }

        // 5. Send buffer, if we have one (netvsc.c: SEND_SEND_BUF id 0, section size back).
        if let Some(send) = &self.bufs.send {
            let (gpa, len) = (send.gpa(), send.len());
            let gpadl = gpadls.create(gpa, len)?;
            let tid = self.send_nvsp(
                &Nvsp::SendSendBuf {
                    gpadl,
                    id: nvsp::SEND_BUFFER_ID,
                },
                true,
            )?;
            // Without a usable send buffer frames go GPA-direct (Linux netvsc_send falls back to
            // page buffers whenever a frame does not fit a section), so a refusal is not fatal.
            match self.wait_nvsp(rxq, tid, deadline, "SEND_SEND_BUF_COMPLETE")? {
                Nvsp::SendSendBufComplete {
                    status,
                    section_size,
                } if status == nvsp::STATUS_SUCCESS && section_size >= MIN_SECTION_SIZE => {
                    self.send_section_size = section_size as usize;
                    self.send_sections = (len / section_size as usize).min(MAX_SECTIONS);
                }
                Nvsp::SendSendBufComplete {
                    status,
                    section_size,
                } => log::warn!(
                    "netvsc: send buffer unusable (status {status:#x}, sections of \
                     {section_size} bytes): frames go GPA-direct"
                ),
                other => log::warn!(
                    "netvsc: unexpected reply {} to SEND_SEND_BUF: frames go GPA-direct",
                    other.ty().0
                ),
            }
        }
        // GPA-direct frame slots: the tx region minus slot 0 (control), at most 64.
        self.tx_slots = (self.bufs.tx.len() / TX_SLOT).min(64);
        self.up = true;

        // 6. RNDIS INIT (rndis_filter.c rndis_filter_init_device).
        let id = self.next_rndis();
        match self.rndis_request(
            rxq,
            &Rndis::Init {
                request_id: id,
                major: rndis::MAJOR_VERSION,
                minor: rndis::MINOR_VERSION,
                max_xfer_size: rndis::INIT_MAX_XFER_SIZE,
            },
            deadline,
        )? {
            CtrlReply::Init { status } if status == rndis::STATUS_SUCCESS => {}
            CtrlReply::Init { status }
            | CtrlReply::Set { status }
            | CtrlReply::Query { status, .. } => {
                self.up = false;
                return Err(NetvscError::Refused {
                    what: "RNDIS INIT",
                    status,
                });
            }
        }
        // 7. Permanent MAC (rndis_filter.c rndis_filter_query_device_mac).
        let id = self.next_rndis();
        match self.rndis_request(
            rxq,
            &Rndis::Query {
                request_id: id,
                oid: rndis::OID_802_3_PERMANENT_ADDRESS,
                info: &[],
            },
            deadline,
        )? {
            CtrlReply::Query { status, info, len }
                if status == rndis::STATUS_SUCCESS && len >= 6 =>
            {
                self.mac.copy_from_slice(&info[..6]);
            }
            CtrlReply::Query { status, .. }
            | CtrlReply::Init { status }
            | CtrlReply::Set { status } => {
                self.up = false;
                return Err(NetvscError::Refused {
                    what: "QUERY OID_802_3_PERMANENT_ADDRESS",
                    status,
                });
            }
        }
        // 8. Link state (rndis_filter.c rndis_filter_query_device_link_status); a failure
        //    here is not fatal.
        let id = self.next_rndis();
        if let Ok(CtrlReply::Query { status, info, len }) = self.rndis_request(
            rxq,
            &Rndis::Query {
                request_id: id,
                oid: rndis::OID_GEN_MEDIA_CONNECT_STATUS,
                info: &[],
            },
            deadline,
        ) {
            self.link_up = status == rndis::STATUS_SUCCESS
                && len >= 4
                && u32::from_le_bytes([info[0], info[1], info[2], info[3]])
                    == rndis::MEDIA_STATE_CONNECTED;
        }
        // 9. Packet filter: directed | multicast | broadcast.
        let filter = rndis::PACKET_TYPE_DIRECTED
            | rndis::PACKET_TYPE_MULTICAST
            | rndis::PACKET_TYPE_BROADCAST;
        let id = self.next_rndis();
        match self.rndis_request(
            rxq,
            &Rndis::Set {
                request_id: id,
                oid: rndis::OID_GEN_CURRENT_PACKET_FILTER,
                info: &filter.to_le_bytes(),
            },
            deadline,
        )? {
            CtrlReply::Set { status } if status == rndis::STATUS_SUCCESS => {}
            // Linux rndis_filter_set_packet_filter does not act on the status either: the
            // host may deliver anyway.
            CtrlReply::Set { status }
            | CtrlReply::Init { status }
            | CtrlReply::Query { status, .. } => log::warn!(
                "netvsc: host refused the packet filter (status {status:#x}); continuing"
            ),
        }
        self.mode = OpMode::Interrupt;
        self.chan.set_interrupt_mask(false);
        // Anything that arrived while masked raised no interrupt: drain once on next receive.
        self.irq.store(true, Ordering::Release);
        log::info!(
            "netvsc: up, NVSP {:#x}, MAC {:02x?}, link {}",
            self.nvsp_version,
            self.mac,
            if self.link_up { "up" } else { "down" }
        );
        Ok(())
    }

    fn next_rndis(&mut self) -> u32 {
        self.next_rndis_id = self.next_rndis_id.wrapping_add(1);
        self.next_rndis_id
    }

    /// Sends one RNDIS control message GPA-direct from tx slot 0 (rndis_filter.c
    /// rndis_filter_send_request: channel type 1, no send-buffer section) and waits for the
    /// matching completion.
    fn rndis_request(
        &mut self,
        rxq: &mut RxQueue,
        msg: &Rndis<'_>,
        deadline: &mut dyn Deadline,
    ) -> Result<CtrlReply, NetvscError> {
        let request_id = match *msg {
            Rndis::Init { request_id, .. }
            | Rndis::Query { request_id, .. }
            | Rndis::Set { request_id, .. } => request_id,
            _ => 0,
        };
        while self.ctrl_busy {
            self.drain(rxq)?;
            if self.ctrl_busy && deadline.expired() {
                return Err(NetvscError::Timeout("RNDIS control slot"));
            }
        }
        let mut buf = [0u8; 128];
        let n = msg.emit(&mut buf)?;
        self.bufs.tx.write(0, &buf[..n])?;
        let gpa = self.bufs.tx.gpa();
        // n <= 128: the control message never crosses the page of slot 0.
        let page = GpaRange::contiguous(gpa, n as u32);
        let mut nv = [0u8; nvsp::PACKET_SIZE_V61];
        let nl = Nvsp::RndisPacket {
            channel_type: nvsp::CHANNEL_CONTROL,
            section_index: nvsp::INVALID_SECTION,
            section_size: 0,
        }
        .emit(&mut nv)?;
        self.ctrl_reply = None;
        self.ctrl_busy = true;
        if let Err(e) = self.out(&OutgoingPacket::GpaDirect {
            ranges: &[page],
            data: &nv[..nl],
            trans_id: TID_CONTROL | u64::from(request_id),
            completion_requested: true,
        }) {
            self.ctrl_busy = false;
            return Err(e.into());
        }
        self.wait_reply(rxq, deadline, "RNDIS completion", |c| {
            c.ctrl_reply
                .take_if(|(id, _)| *id == request_id)
                .map(|(_, r)| r)
        })
    }
}
