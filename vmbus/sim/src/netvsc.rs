//! Host model of netvsc (NVSP + RNDIS), moving Ethernet frames between the guest and an
//! [`Endpoint`].
//!
//! It plays the VSP side of Linux `drivers/net/hyperv/netvsc.c` / `rndis_filter.c` and OpenVMM
//! `netvsp`: INIT accepted for versions in a configurable range (status SUCCESS, else FAIL),
//! receive buffer in one section of `sub_alloc_size` slots, send buffer sectioned, RNDIS
//! INIT/QUERY/SET answered through the receive buffer, frames to the guest as transfer-page
//! packets that must each be completed before their slot is reused.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use vmbus::netvsc::nvsp::{self, Nvsp, Section};
use vmbus::netvsc::rndis::{self, Rndis};
use vmbus::ring::{PacketType, FLAG_COMPLETION_REQUESTED};
use vmbus::PAGE_SIZE;

use crate::synthvid_link::{HostDevice, HostIo, HostPacket};

/// Where frames go on the host side.
pub trait Endpoint: Send {
    /// A frame the guest sent.
    fn guest_frame(&mut self, frame: &[u8]);
    /// The next frame for the guest, if any.
    fn to_guest(&mut self) -> Option<Vec<u8>>;
}

/// Host configuration.
#[derive(Debug, Clone)]
pub struct NetvscHostConfig {
    /// Highest NVSP version accepted.
    pub max_version: u32,
    /// Lowest NVSP version accepted.
    pub min_version: u32,
    /// The NIC's permanent MAC.
    pub mac: [u8; 6],
    /// Receive sub-allocation size (`NETVSC_RECV_SECTION_SIZE` 1728, hyperv_net.h).
    pub sub_alloc_size: u32,
    /// Send section size (`NETVSC_SEND_SECTION_SIZE` 6144, hyperv_net.h).
    pub send_section_size: u32,
    /// Link state reported.
    pub link_up: bool,
    /// `num_sections` in SEND_RECV_BUF_COMPLETE (1 everywhere known; FreeBSD ignores it).
    pub recv_sections: u32,
    /// Status of an INIT_COMPLETE refusing a version (Linux hosts: FAIL = 2; OpenVMM netvsp:
    /// `Status::NONE` = 0).
    pub init_refusal_status: u32,
    /// Complete SEND_NDIS_VERSION with an empty payload even though the guest asked for no
    /// completion (OpenVMM netvsp: "The UEFI client expects a completion packet").
    pub ndis_version_completion: bool,
    /// Status of SEND_SEND_BUF_COMPLETE (FAIL: the guest must go on without a send buffer).
    pub send_buf_status: u32,
    /// Answer SET OID_GEN_CURRENT_PACKET_FILTER with NOT_SUPPORTED.
    pub refuse_packet_filter: bool,
    /// Per-packet info appended to every frame sent to the guest (raw bytes, may be bad).
    pub frame_ppi: Vec<u8>,
    /// From NVSP 2 on, SEND_RECV_BUF before NDIS_CONFIG stops the device (OpenVMM netvsp:
    /// `PacketOrderError::SendReceiveBufferMissingMTU`); modelled as no reply.
    pub require_ndis_config: bool,
}

impl Default for NetvscHostConfig {
    fn default() -> Self {
        NetvscHostConfig {
            max_version: nvsp::VERSION_61,
            min_version: nvsp::VERSION_1,
            mac: [0x00, 0x15, 0x5d, 0x00, 0x00, 0x01],
            sub_alloc_size: 1728,
            send_section_size: 6144,
            link_up: true,
            recv_sections: 1,
            init_refusal_status: nvsp::STATUS_FAIL,
            ndis_version_completion: false,
            send_buf_status: nvsp::STATUS_SUCCESS,
            refuse_packet_filter: false,
            frame_ppi: Vec::new(),
            require_ndis_config: false,
        }
    }
}

impl NetvscHostConfig {
    /// The defaults of the host `p` models: OpenVMM netvsp (`vm/devices/net/netvsp/src/
    /// lib.rs`) refuses a version with `Status::NONE` and completes SEND_NDIS_VERSION with an
    /// empty packet; the others answer like the host Linux netvsc.c is written against.
    pub fn for_personality(p: crate::Personality) -> Self {
        match p {
            crate::Personality::OpenVmm => NetvscHostConfig {
                init_refusal_status: 0,
                ndis_version_completion: true,
                require_ndis_config: true,
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

/// What the host has seen.
#[derive(Debug, Clone, Default)]
pub struct NetvscState {
    /// INIT versions requested, in order.
    pub init_requests: Vec<u32>,
    /// Negotiated version.
    pub version: Option<u32>,
    /// NDIS version sent by the guest.
    pub ndis_version: Option<(u32, u32)>,
    /// NDIS_CONFIG MTU.
    pub ndis_mtu: Option<u32>,
    /// Receive buffer `(gpa, len)`.
    pub recv_buf: Option<(u64, usize)>,
    /// Send buffer `(gpa, len)`.
    pub send_buf: Option<(u64, usize)>,
    /// RNDIS initialised.
    pub rndis_up: bool,
    /// OIDs queried.
    pub queried: Vec<u32>,
    /// Packet filter set.
    pub packet_filter: Option<u32>,
    /// Frames from the guest.
    pub frames_from_guest: u64,
    /// Frames from the guest that came through the send buffer.
    pub frames_via_send_buf: u64,
    /// Frames from the guest that came GPA-direct.
    pub frames_via_gpa: u64,
    /// Transfer-page packets sent to the guest.
    pub xfer_sent: u64,
    /// Transfer-page packets the guest completed.
    pub xfer_completed: u64,
    /// Completions with a status other than SUCCESS.
    pub xfer_completed_failed: u64,
    /// Completions for unknown transaction ids.
    pub bogus_completions: u64,
    /// Guest messages rejected.
    pub rejected: u64,
    /// Frames waiting for a free receive slot.
    pub backlog: usize,
}

impl NetvscState {
    /// Transfer-page packets not yet completed.
    pub fn outstanding(&self) -> u64 {
        self.xfer_sent - self.xfer_completed
    }
}

struct Inner {
    cfg: NetvscHostConfig,
    st: NetvscState,
    endpoint: Box<dyn Endpoint>,
    slots_used: Vec<bool>,
    in_flight: HashMap<u64, usize>,
    next_tid: u64,
    backlog: VecDeque<(Vec<u8>, u32)>,
}

/// The netvsc host model; clone to inspect.
#[derive(Clone)]
pub struct NetvscHost {
    inner: Arc<Mutex<Inner>>,
}

impl NetvscHost {
    /// A host moving frames to and from `endpoint`.
    pub fn new(cfg: NetvscHostConfig, endpoint: Box<dyn Endpoint>) -> Self {
        NetvscHost {
            inner: Arc::new(Mutex::new(Inner {
                cfg,
                st: NetvscState::default(),
                endpoint,
                slots_used: Vec::new(),
                in_flight: HashMap::new(),
                next_tid: 0x5000,
                backlog: VecDeque::new(),
            })),
        }
    }
    /// A snapshot of the state.
    pub fn state(&self) -> NetvscState {
        let i = self.inner.lock().unwrap();
        let mut s = i.st.clone();
        s.backlog = i.backlog.len();
        s
    }
    /// Queues an arbitrary RNDIS message for the guest (tests of malformed input).
    pub fn deliver_raw(&self, io: &mut HostIo<'_>, rndis_msg: &[u8]) {
        let mut i = self.inner.lock().unwrap();
        i.backlog
            .push_back((rndis_msg.to_vec(), nvsp::CHANNEL_DATA));
        i.flush_backlog(io);
    }
    /// Queues an Ethernet frame for the guest.
    pub fn deliver_frame(&self, io: &mut HostIo<'_>, frame: &[u8]) {
        let mut i = self.inner.lock().unwrap();
        i.queue_frame(frame);
        i.flush_backlog(io);
    }
}

fn nvsp_bytes(m: &Nvsp) -> Vec<u8> {
    let mut b = [0u8; nvsp::PACKET_SIZE_V61];
    let n = m.emit(&mut b).unwrap();
    b[..n].to_vec()
}

impl Inner {
    fn queue_frame(&mut self, frame: &[u8]) {
        let mut b = vec![0u8; frame.len() + 64];
        b.resize(frame.len() + 64 + self.cfg.frame_ppi.len(), 0);
        let n = Rndis::Packet {
            data: frame,
            ppi: &self.cfg.frame_ppi,
        }
        .emit(&mut b)
        .unwrap();
        b.truncate(n);
        self.backlog.push_back((b, nvsp::CHANNEL_DATA));
    }

    fn queue_control(&mut self, m: &Rndis<'_>) {
        let mut b = vec![0u8; m.emit_len()];
        m.emit(&mut b).unwrap();
        self.backlog.push_back((b, nvsp::CHANNEL_CONTROL));
    }

    /// Writes backlog messages into free receive slots and sends one transfer-page packet
    /// per message (range count 1).
    fn flush_backlog(&mut self, io: &mut HostIo<'_>) {
        let Some((gpa, _)) = self.st.recv_buf else {
            return;
        };
        let sub = self.cfg.sub_alloc_size as usize;
        while let Some((msg, chan_type)) = self.backlog.front() {
            if msg.len() > sub {
                self.backlog.pop_front();
                continue;
            }
            let Some(slot) = self.slots_used.iter().position(|u| !u) else {
                return; // wait for the guest to complete something
            };
            let off = slot * sub;
            io.write_mem(gpa + off as u64, msg).unwrap();
            // vmtransfer_page_packet_header: pageset id, sender_owns_set, reserved, range
            // count, {byte_count, byte_offset}.
            let mut ext = Vec::with_capacity(16);
            ext.extend(nvsp::RECV_BUFFER_ID.to_le_bytes());
            ext.extend([0u8, 0]);
            ext.extend(1u32.to_le_bytes());
            ext.extend((msg.len() as u32).to_le_bytes());
            ext.extend((off as u32).to_le_bytes());
            let payload = nvsp_bytes(&Nvsp::RndisPacket {
                channel_type: *chan_type,
                section_index: nvsp::INVALID_SECTION,
                section_size: 0,
            });
            let tid = self.next_tid;
            if io
                .send(
                    PacketType::DATA_USING_XFER_PAGES.0,
                    FLAG_COMPLETION_REQUESTED,
                    tid,
                    &ext,
                    &payload,
                )
                .is_err()
            {
                return; // ring full: retry later
            }
            self.next_tid += 1;
            self.slots_used[slot] = true;
            self.in_flight.insert(tid, slot);
            self.st.xfer_sent += 1;
            self.backlog.pop_front();
        }
    }

    fn complete(&self, io: &mut HostIo<'_>, pkt: &HostPacket, reply: &Nvsp) {
        if pkt.completion_requested() {
            let _ = io.send_completion(pkt.trans_id, &nvsp_bytes(reply));
        }
    }

    fn on_rndis(&mut self, msg: &[u8], via_send_buf: bool) -> bool {
        let parsed = match Rndis::parse(msg) {
            Ok(m) => m,
            Err(_) => {
                self.st.rejected += 1;
                return false;
            }
        };
        match parsed {
            Rndis::Packet { data, ppi } => {
                if rndis::PpiIter::new(ppi).any(|p| p.is_err()) {
                    self.st.rejected += 1;
                    return false;
                }
                self.st.frames_from_guest += 1;
                if via_send_buf {
                    self.st.frames_via_send_buf += 1;
                } else {
                    self.st.frames_via_gpa += 1;
                }
                self.endpoint.guest_frame(data);
            }
            Rndis::Init { request_id, .. } => {
                self.st.rndis_up = true;
                self.queue_control(&Rndis::InitComplete {
                    request_id,
                    status: rndis::STATUS_SUCCESS,
                    major: rndis::MAJOR_VERSION,
                    minor: rndis::MINOR_VERSION,
                    device_flags: 1,
                    medium: 0,
                    max_pkt_per_msg: 8,
                    max_xfer_size: 0x4000,
                    pkt_alignment_factor: 0,
                });
            }
            Rndis::Query {
                request_id, oid, ..
            } => {
                self.st.queried.push(oid);
                let link = if self.cfg.link_up { 0u32 } else { 1 }.to_le_bytes();
                let mac = self.cfg.mac;
                let mfs = 1500u32.to_le_bytes();
                let info: Option<&[u8]> = match oid {
                    rndis::OID_802_3_PERMANENT_ADDRESS | rndis::OID_802_3_CURRENT_ADDRESS => {
                        Some(&mac)
                    }
                    rndis::OID_GEN_MEDIA_CONNECT_STATUS => Some(&link),
                    rndis::OID_GEN_MAXIMUM_FRAME_SIZE => Some(&mfs),
                    _ => None,
                };
                self.queue_control(&Rndis::QueryComplete {
                    request_id,
                    status: if info.is_some() {
                        rndis::STATUS_SUCCESS
                    } else {
                        rndis::STATUS_NOT_SUPPORTED
                    },
                    info: info.unwrap_or(&[]),
                });
            }
            Rndis::Set {
                request_id,
                oid,
                info,
            } => {
                let ok = oid == rndis::OID_GEN_CURRENT_PACKET_FILTER
                    && info.len() == 4
                    && !self.cfg.refuse_packet_filter;
                if ok {
                    self.st.packet_filter = Some(u32::from_le_bytes(info.try_into().unwrap()));
                }
                self.queue_control(&Rndis::SetComplete {
                    request_id,
                    status: if ok {
                        rndis::STATUS_SUCCESS
                    } else {
                        rndis::STATUS_NOT_SUPPORTED
                    },
                });
            }
            _ => {
                self.st.rejected += 1;
                return false;
            }
        }
        true
    }

    fn on_packet(&mut self, io: &mut HostIo<'_>, pkt: &HostPacket) {
        if pkt.kind == PacketType::COMP.0 {
            // The guest completing one of our transfer-page packets.
            match self.in_flight.remove(&pkt.trans_id) {
                Some(slot) => {
                    self.slots_used[slot] = false;
                    self.st.xfer_completed += 1;
                    match Nvsp::parse(&pkt.payload) {
                        Ok(Nvsp::RndisPacketComplete { status })
                            if status == nvsp::STATUS_SUCCESS => {}
                        _ => self.st.xfer_completed_failed += 1,
                    }
                }
                None => self.st.bogus_completions += 1,
            }
            return;
        }
        if pkt.kind != PacketType::DATA_INBAND.0 && pkt.kind != PacketType::DATA_USING_GPA_DIRECT.0
        {
            self.st.rejected += 1;
            return;
        }
        let msg = match Nvsp::parse(&pkt.payload) {
            Ok(m) => m,
            Err(_) => {
                self.st.rejected += 1;
                return;
            }
        };
        match msg {
            Nvsp::Init { min, max } => {
                self.st.init_requests.push(max);
                let ok = min <= max && max <= self.cfg.max_version && max >= self.cfg.min_version;
                let refusal = self.cfg.init_refusal_status;
                if ok {
                    self.st.version = Some(max);
                }
                self.complete(
                    io,
                    pkt,
                    &Nvsp::InitComplete {
                        negotiated: if ok { max } else { 0 },
                        max_mdl_chain_len: 34,
                        status: if ok { nvsp::STATUS_SUCCESS } else { refusal },
                    },
                );
            }
            Nvsp::NdisConfig { mtu, .. } => self.st.ndis_mtu = Some(mtu),
            Nvsp::NdisVersion { major, minor } => {
                self.st.ndis_version = Some((major, minor));
                if self.cfg.ndis_version_completion {
                    let _ = io.send_completion(pkt.trans_id, &[]);
                }
            }
            Nvsp::SendRecvBuf { .. }
                if self.cfg.require_ndis_config
                    && self.st.version.is_some_and(|v| v >= nvsp::VERSION_2)
                    && self.st.ndis_mtu.is_none() =>
            {
                self.st.rejected += 1;
            }
            Nvsp::SendRecvBuf { gpadl, id } => {
                let buf = io.gpadl(gpadl).filter(|_| id == nvsp::RECV_BUFFER_ID);
                let sub = self.cfg.sub_alloc_size;
                let reply = match buf {
                    Some((gpa, len)) => {
                        self.st.recv_buf = Some((gpa, len));
                        let n = len / sub as usize;
                        self.slots_used = vec![false; n];
                        Nvsp::SendRecvBufComplete {
                            status: nvsp::STATUS_SUCCESS,
                            num_sections: self.cfg.recv_sections,
                            section: Section {
                                offset: 0,
                                sub_alloc_size: sub,
                                num_sub_allocs: n as u32,
                                end_offset: n as u32 * sub,
                            },
                        }
                    }
                    None => Nvsp::SendRecvBufComplete {
                        status: nvsp::STATUS_FAIL,
                        num_sections: 0,
                        section: Section {
                            offset: 0,
                            sub_alloc_size: 0,
                            num_sub_allocs: 0,
                            end_offset: 0,
                        },
                    },
                };
                self.complete(io, pkt, &reply);
            }
            Nvsp::SendSendBuf { gpadl, .. } => {
                let reply = match io.gpadl(gpadl) {
                    Some((gpa, len)) if self.cfg.send_buf_status == nvsp::STATUS_SUCCESS => {
                        self.st.send_buf = Some((gpa, len));
                        Nvsp::SendSendBufComplete {
                            status: nvsp::STATUS_SUCCESS,
                            section_size: self.cfg.send_section_size,
                        }
                    }
                    Some(_) => Nvsp::SendSendBufComplete {
                        status: self.cfg.send_buf_status,
                        section_size: 0,
                    },
                    None => Nvsp::SendSendBufComplete {
                        status: nvsp::STATUS_FAIL,
                        section_size: 0,
                    },
                };
                self.complete(io, pkt, &reply);
            }
            Nvsp::RndisPacket {
                section_index,
                section_size,
                ..
            } => {
                let mut msg = Vec::new();
                let mut ok = true;
                let via_send_buf = section_index != nvsp::INVALID_SECTION;
                if via_send_buf {
                    let sz = self.cfg.send_section_size as usize;
                    match self.st.send_buf {
                        Some((gpa, len))
                            if (section_index as usize + 1) * sz <= len
                                && section_size as usize <= sz =>
                        {
                            msg = vec![0u8; section_size as usize];
                            ok = io
                                .read_mem(gpa + (section_index as usize * sz) as u64, &mut msg)
                                .is_ok();
                        }
                        _ => ok = false,
                    }
                } else if pkt.kind == PacketType::DATA_USING_GPA_DIRECT.0 {
                    for p in &pkt.pages {
                        if p.offset as usize + p.len as usize > PAGE_SIZE {
                            ok = false;
                            break;
                        }
                        let mut b = vec![0u8; p.len as usize];
                        if io
                            .read_mem(p.pfn * PAGE_SIZE as u64 + u64::from(p.offset), &mut b)
                            .is_err()
                        {
                            ok = false;
                            break;
                        }
                        msg.extend(b);
                    }
                } else {
                    ok = false;
                }
                let ok = ok && self.on_rndis(&msg, via_send_buf);
                if !ok {
                    self.st.rejected += 1;
                }
                self.complete(
                    io,
                    pkt,
                    &Nvsp::RndisPacketComplete {
                        status: if ok {
                            nvsp::STATUS_SUCCESS
                        } else {
                            nvsp::STATUS_FAIL
                        },
                    },
                );
            }
            _ => self.st.rejected += 1,
        }
    }

    fn pull_endpoint(&mut self) {
        while let Some(f) = self.endpoint.to_guest() {
            self.queue_frame(&f);
        }
    }
}

impl HostDevice for NetvscHost {
    fn on_packet(&mut self, io: &mut HostIo<'_>, pkt: &HostPacket) {
        let mut i = self.inner.lock().unwrap();
        i.on_packet(io, pkt);
        if i.st.rndis_up {
            i.pull_endpoint();
        }
        i.flush_backlog(io);
    }
    fn on_tick(&mut self, io: &mut HostIo<'_>) {
        let mut i = self.inner.lock().unwrap();
        if i.st.rndis_up {
            i.pull_endpoint();
        }
        i.flush_backlog(io);
    }
}
