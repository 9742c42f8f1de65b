//! RNDIS messages as netvsc carries them.
//!
//! Layouts: Linux `include/linux/rndis.h` (constants), `drivers/net/hyperv/hyperv_net.h`
//! (`struct rndis_*`), OpenVMM `vm/devices/net/netvsp/src/rndisprot.rs`. Every message is
//! `{u32 ndis_msg_type; u32 msg_len}` + body; completions are `type | 0x80000000`.
//! Offsets in QUERY/SET and their completions count from the start of the body (the
//! `req_id` field, i.e. 8 bytes into the message); offsets in `rndis_packet` count from the
//! start of `rndis_packet` (also 8 bytes in).

use thiserror::Error;

/// `RNDIS_MSG_COMPLETION` (rndis.h): the bit a completion sets in its request's type.
pub const COMPLETION: u32 = 0x8000_0000;

/// `ndis_msg_type` (rndis.h `RNDIS_MSG_*`; a completion is its request's type with
/// [`COMPLETION`] set). An open enum (`open_enum`): a type this crate does not know is kept.
#[open_enum::open_enum]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)] // the C names
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `RNDIS_MSG_PACKET`
    PACKET = 1,
    /// `RNDIS_MSG_INIT`
    INIT = 2,
    /// `RNDIS_MSG_HALT`
    HALT = 3,
    /// `RNDIS_MSG_QUERY`
    QUERY = 4,
    /// `RNDIS_MSG_SET`
    SET = 5,
    /// `RNDIS_MSG_RESET`
    RESET = 6,
    /// `RNDIS_MSG_INDICATE`
    INDICATE = 7,
    /// `RNDIS_MSG_KEEPALIVE`
    KEEPALIVE = 8,
    /// `RNDIS_MSG_INIT_C`
    INIT_C = 0x8000_0002,
    /// `RNDIS_MSG_QUERY_C`
    QUERY_C = 0x8000_0004,
    /// `RNDIS_MSG_SET_C`
    SET_C = 0x8000_0005,
    /// `RNDIS_MSG_RESET_C`
    RESET_C = 0x8000_0006,
    /// `RNDIS_MSG_KEEPALIVE_C`
    KEEPALIVE_C = 0x8000_0008,
}
const _: () = {
    let pairs = [
        (MsgType::INIT, MsgType::INIT_C),
        (MsgType::QUERY, MsgType::QUERY_C),
        (MsgType::SET, MsgType::SET_C),
        (MsgType::RESET, MsgType::RESET_C),
        (MsgType::KEEPALIVE, MsgType::KEEPALIVE_C),
    ];
    let mut i = 0;
    while i < pairs.len() {
        assert!(pairs[i].1 .0 == pairs[i].0 .0 | COMPLETION);
        i += 1;
    }
};

/// `RNDIS_STATUS_SUCCESS` (rndis.h).
pub const STATUS_SUCCESS: u32 = 0;
/// `RNDIS_STATUS_FAILURE` (rndis.h; OpenVMM `STATUS_FAILURE`).
pub const STATUS_FAILURE: u32 = 0xC000_0001;
/// `RNDIS_STATUS_NOT_SUPPORTED` (rndis.h; OpenVMM `STATUS_NOT_SUPPORTED`).
pub const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;
/// `RNDIS_STATUS_MEDIA_CONNECT` (rndis.h).
pub const STATUS_MEDIA_CONNECT: u32 = 0x4001_000B;
/// `RNDIS_STATUS_MEDIA_DISCONNECT` (rndis.h).
pub const STATUS_MEDIA_DISCONNECT: u32 = 0x4001_000C;

/// `RNDIS_MAJOR_VERSION` 1 (hyperv_net.h; OpenVMM `MAJOR_VERSION`).
pub const MAJOR_VERSION: u32 = 1;
/// `RNDIS_MINOR_VERSION` 0 (hyperv_net.h; OpenVMM `MINOR_VERSION`).
pub const MINOR_VERSION: u32 = 0;
/// `max_xfer_size` Linux puts in RNDIS INIT (rndis_filter.c `rndis_filter_init_device`).
pub const INIT_MAX_XFER_SIZE: u32 = 0x4000;

/// `OID_GEN_MAXIMUM_FRAME_SIZE` (rndis.h).
pub const OID_GEN_MAXIMUM_FRAME_SIZE: u32 = 0x0001_0106;
/// `OID_GEN_CURRENT_PACKET_FILTER` (rndis.h).
pub const OID_GEN_CURRENT_PACKET_FILTER: u32 = 0x0001_010E;
/// `OID_GEN_MEDIA_CONNECT_STATUS` (rndis.h).
pub const OID_GEN_MEDIA_CONNECT_STATUS: u32 = 0x0001_0114;
/// `OID_802_3_PERMANENT_ADDRESS` (rndis.h).
pub const OID_802_3_PERMANENT_ADDRESS: u32 = 0x0101_0101;
/// `OID_802_3_CURRENT_ADDRESS` (rndis.h).
pub const OID_802_3_CURRENT_ADDRESS: u32 = 0x0101_0102;

/// `NDIS_PACKET_TYPE_DIRECTED` (rndis.h `RNDIS_PACKET_TYPE_DIRECTED`).
pub const PACKET_TYPE_DIRECTED: u32 = 0x1;
/// `NDIS_PACKET_TYPE_MULTICAST` (rndis.h).
pub const PACKET_TYPE_MULTICAST: u32 = 0x2;
/// `NDIS_PACKET_TYPE_BROADCAST` (rndis.h).
pub const PACKET_TYPE_BROADCAST: u32 = 0x8;
/// `NDIS_MEDIA_STATE_CONNECTED` 0 (OpenVMM `MEDIA_STATE_CONNECTED`).
pub const MEDIA_STATE_CONNECTED: u32 = 0;

/// `sizeof(struct rndis_packet)`: nine u32 (hyperv_net.h; OpenVMM `rndisprot::Packet`).
pub const PACKET_BODY_LEN: usize = 36;
/// `sizeof(struct rndis_per_packet_info)`: size, type, ppi_offset (hyperv_net.h).
pub const PPI_HEADER_LEN: usize = 12;
/// `TCPIP_CHKSUM_PKTINFO` per-packet-info type 0 (hyperv_net.h `enum ndis_per_pkt_info_type`;
/// OpenVMM `PPI_TCP_IP_CHECKSUM`).
pub const PPI_TCPIP_CHECKSUM: u32 = 0;
/// `IEEE_8021Q_INFO` per-packet-info type 6 (hyperv_net.h).
pub const PPI_IEEE_8021Q: u32 = 6;
/// `NBL_HASH_VALUE` per-packet-info type 8 (hyperv_net.h, `= PACKET_CANCEL_ID`).
pub const PPI_HASH_VALUE: u32 = 8;
/// Header length of every RNDIS message.
pub const HEADER_LEN: usize = 8;

/// A parsed RNDIS message (the Repr layer); variable parts borrow the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rndis<'a> {
    /// `RNDIS_MSG_PACKET`.
    Packet {
        /// The Ethernet frame.
        data: &'a [u8],
        /// The per-packet-info area (see [`PpiIter`]).
        ppi: &'a [u8],
    },
    /// `RNDIS_MSG_INIT`.
    Init {
        /// Request id.
        request_id: u32,
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
        /// Max transfer size.
        max_xfer_size: u32,
    },
    /// `RNDIS_MSG_INIT_C` (fields after `minor` up to `pkt_alignment_factor`).
    InitComplete {
        /// Request id.
        request_id: u32,
        /// Status.
        status: u32,
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
        /// Device flags.
        device_flags: u32,
        /// Medium.
        medium: u32,
        /// Max packets per message.
        max_pkt_per_msg: u32,
        /// Max transfer size.
        max_xfer_size: u32,
        /// Packet alignment factor (log2).
        pkt_alignment_factor: u32,
    },
    /// `RNDIS_MSG_QUERY`.
    Query {
        /// Request id.
        request_id: u32,
        /// OID.
        oid: u32,
        /// Information buffer.
        info: &'a [u8],
    },
    /// `RNDIS_MSG_QUERY_C`.
    QueryComplete {
        /// Request id.
        request_id: u32,
        /// Status.
        status: u32,
        /// Information buffer.
        info: &'a [u8],
    },
    /// `RNDIS_MSG_SET`.
    Set {
        /// Request id.
        request_id: u32,
        /// OID.
        oid: u32,
        /// Information buffer.
        info: &'a [u8],
    },
    /// `RNDIS_MSG_SET_C`.
    SetComplete {
        /// Request id.
        request_id: u32,
        /// Status.
        status: u32,
    },
    /// `RNDIS_MSG_INDICATE` (`struct rndis_indicate_status`).
    Indicate {
        /// Status (e.g. MEDIA_CONNECT).
        status: u32,
        /// Status buffer.
        buf: &'a [u8],
    },
    /// `RNDIS_MSG_KEEPALIVE`.
    KeepAlive {
        /// Request id.
        request_id: u32,
    },
    /// `RNDIS_MSG_KEEPALIVE_C`.
    KeepAliveComplete {
        /// Request id.
        request_id: u32,
        /// Status.
        status: u32,
    },
    /// Any other type (open enum): HALT, RESET, SET_EX, future ones.
    Other {
        /// The type.
        ty: MsgType,
    },
}

/// Why an RNDIS message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RndisError {
    /// Shorter than the header, its `msg_len`, or its fixed body.
    #[error("RNDIS message truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// An offset/length pair points outside the message.
    #[error("RNDIS {what} (offset {offset}, len {len}) outside message of {msg_len} bytes")]
    BadRange {
        /// Which field.
        what: &'static str,
        /// Offset as sent.
        offset: u32,
        /// Length as sent.
        len: u32,
        /// Message length.
        msg_len: u32,
    },
    /// Output buffer too small.
    #[error("buffer too small for RNDIS message ({need} bytes)")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
    },
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn sub<'a>(
    msg: &'a [u8],
    base: usize,
    offset: u32,
    len: u32,
    what: &'static str,
) -> Result<&'a [u8], RndisError> {
    let bad = RndisError::BadRange {
        what,
        offset,
        len,
        msg_len: msg.len() as u32,
    };
    if len == 0 {
        return Ok(&[]);
    }
    let start = base.checked_add(offset as usize).ok_or(bad)?;
    let end = start.checked_add(len as usize).ok_or(bad)?;
    if start < base || end > msg.len() {
        return Err(bad);
    }
    Ok(&msg[start..end])
}

impl<'a> Rndis<'a> {
    /// The `ndis_msg_type`.
    pub fn ty(&self) -> MsgType {
        match self {
            Rndis::Packet { .. } => MsgType::PACKET,
            Rndis::Init { .. } => MsgType::INIT,
            Rndis::InitComplete { .. } => MsgType::INIT_C,
            Rndis::Query { .. } => MsgType::QUERY,
            Rndis::QueryComplete { .. } => MsgType::QUERY_C,
            Rndis::Set { .. } => MsgType::SET,
            Rndis::SetComplete { .. } => MsgType::SET_C,
            Rndis::Indicate { .. } => MsgType::INDICATE,
            Rndis::KeepAlive { .. } => MsgType::KEEPALIVE,
            Rndis::KeepAliveComplete { .. } => MsgType::KEEPALIVE_C,
            Rndis::Other { ty } => *ty,
        }
    }

    /// Parses one message. `buf` may be longer than `msg_len` (the rest is ignored); every
    /// offset/length inside is checked against `msg_len`.
    pub fn parse(buf: &'a [u8]) -> Result<Rndis<'a>, RndisError> {
        if buf.len() < HEADER_LEN {
            return Err(RndisError::Truncated {
                have: buf.len(),
                need: HEADER_LEN,
            });
        }
        let ty = MsgType(u32_at(buf, 0));
        let msg_len = u32_at(buf, 4) as usize;
        if msg_len < HEADER_LEN || msg_len > buf.len() {
            return Err(RndisError::Truncated {
                have: buf.len(),
                need: msg_len.max(HEADER_LEN),
            });
        }
        let m = &buf[..msg_len];
        let need = |n: usize| -> Result<(), RndisError> {
            if m.len() < HEADER_LEN + n {
                Err(RndisError::Truncated {
                    have: m.len(),
                    need: HEADER_LEN + n,
                })
            } else {
                Ok(())
            }
        };
        let f = |i: usize| u32_at(m, HEADER_LEN + 4 * i);
        Ok(match ty {
            MsgType::PACKET => {
                need(PACKET_BODY_LEN)?;
                let data = sub(m, HEADER_LEN, f(0), f(1), "data")?;
                let ppi = sub(m, HEADER_LEN, f(5), f(6), "per-packet info")?;
                Rndis::Packet { data, ppi }
            }
            MsgType::INIT => {
                need(16)?;
                Rndis::Init {
                    request_id: f(0),
                    major: f(1),
                    minor: f(2),
                    max_xfer_size: f(3),
                }
            }
            MsgType::INIT_C => {
                need(36)?;
                Rndis::InitComplete {
                    request_id: f(0),
                    status: f(1),
                    major: f(2),
                    minor: f(3),
                    device_flags: f(4),
                    medium: f(5),
                    max_pkt_per_msg: f(6),
                    max_xfer_size: f(7),
                    pkt_alignment_factor: f(8),
                }
            }
            MsgType::QUERY | MsgType::SET => {
                need(20)?;
                let info = sub(m, HEADER_LEN, f(3), f(2), "information buffer")?;
                if ty == MsgType::QUERY {
                    Rndis::Query {
                        request_id: f(0),
                        oid: f(1),
                        info,
                    }
                } else {
                    Rndis::Set {
                        request_id: f(0),
                        oid: f(1),
                        info,
                    }
                }
            }
            MsgType::QUERY_C => {
                need(16)?;
                let info = sub(m, HEADER_LEN, f(3), f(2), "information buffer")?;
                Rndis::QueryComplete {
                    request_id: f(0),
                    status: f(1),
                    info,
                }
            }
            MsgType::SET_C => {
                need(8)?;
                Rndis::SetComplete {
                    request_id: f(0),
                    status: f(1),
                }
            }
            MsgType::INDICATE => {
                need(12)?;
                let b = sub(m, HEADER_LEN, f(2), f(1), "status buffer")?;
                Rndis::Indicate {
                    status: f(0),
                    buf: b,
                }
            }
            MsgType::KEEPALIVE => {
                need(4)?;
                Rndis::KeepAlive { request_id: f(0) }
            }
            MsgType::KEEPALIVE_C => {
                need(8)?;
                Rndis::KeepAliveComplete {
                    request_id: f(0),
                    status: f(1),
                }
            }
            ty => Rndis::Other { ty },
        })
    }

    /// Length [`Rndis::emit`] will produce.
    pub fn emit_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Rndis::Packet { data, ppi } => PACKET_BODY_LEN + ppi.len() + data.len(),
                Rndis::Init { .. } => 16,
                Rndis::InitComplete { .. } => 44,
                Rndis::Query { info, .. } | Rndis::Set { info, .. } => 20 + info.len(),
                Rndis::QueryComplete { info, .. } => 16 + info.len(),
                Rndis::SetComplete { .. } | Rndis::KeepAliveComplete { .. } => 8,
                Rndis::Indicate { buf, .. } => 12 + buf.len(),
                Rndis::KeepAlive { .. } => 4,
                Rndis::Other { .. } => 0,
            }
    }

    /// Emits the message; returns its length. Layout choices follow Linux: PACKET puts the
    /// per-packet info right after `rndis_packet` and the frame after that (netvsc_drv.c
    /// `netvsc_xmit`); QUERY/SET put the information buffer right after the 20-byte request
    /// (`info_buf_offset = sizeof(struct rndis_query_request)`, rndis_filter.c).
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, RndisError> {
        let len = self.emit_len();
        if out.len() < len {
            return Err(RndisError::BufferTooSmall { need: len });
        }
        let o = &mut out[..len];
        o.fill(0);
        let mut w = |i: usize, v: u32| {
            o[HEADER_LEN + 4 * i..HEADER_LEN + 4 * i + 4].copy_from_slice(&v.to_le_bytes())
        };
        match *self {
            Rndis::Packet { data, ppi } => {
                let ppi_off = PACKET_BODY_LEN as u32;
                let data_off = ppi_off + ppi.len() as u32;
                w(0, data_off);
                w(1, data.len() as u32);
                // netvsc_drv.c sets per_pkt_info_offset = sizeof(struct rndis_packet) always.
                w(5, ppi_off);
                w(6, ppi.len() as u32);
                let p = HEADER_LEN + PACKET_BODY_LEN;
                o[p..p + ppi.len()].copy_from_slice(ppi);
                o[p + ppi.len()..].copy_from_slice(data);
            }
            Rndis::Init {
                request_id,
                major,
                minor,
                max_xfer_size,
            } => {
                w(0, request_id);
                w(1, major);
                w(2, minor);
                w(3, max_xfer_size);
            }
            Rndis::InitComplete {
                request_id,
                status,
                major,
                minor,
                device_flags,
                medium,
                max_pkt_per_msg,
                max_xfer_size,
                pkt_alignment_factor,
            } => {
                for (i, v) in [
                    request_id,
                    status,
                    major,
                    minor,
                    device_flags,
                    medium,
                    max_pkt_per_msg,
                    max_xfer_size,
                    pkt_alignment_factor,
                ]
                .into_iter()
                .enumerate()
                {
                    w(i, v);
                }
            }
            Rndis::Query {
                request_id,
                oid,
                info,
            }
            | Rndis::Set {
                request_id,
                oid,
                info,
            } => {
                w(0, request_id);
                w(1, oid);
                w(2, info.len() as u32);
                // rndis_filter.c: info_buf_offset = sizeof(struct rndis_query_request), always.
                w(3, 20);
                o[HEADER_LEN + 20..].copy_from_slice(info);
            }
            Rndis::QueryComplete {
                request_id,
                status,
                info,
            } => {
                w(0, request_id);
                w(1, status);
                w(2, info.len() as u32);
                w(3, 16);
                o[HEADER_LEN + 16..].copy_from_slice(info);
            }
            Rndis::SetComplete { request_id, status }
            | Rndis::KeepAliveComplete { request_id, status } => {
                w(0, request_id);
                w(1, status);
            }
            Rndis::Indicate { status, buf } => {
                w(0, status);
                w(1, buf.len() as u32);
                w(2, 12);
                o[HEADER_LEN + 12..].copy_from_slice(buf);
            }
            Rndis::KeepAlive { request_id } => w(0, request_id),
            Rndis::Other { .. } => {}
        }
        o[..4].copy_from_slice(&self.ty().0.to_le_bytes());
        o[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(len)
    }
}

/// One per-packet-info element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ppi<'a> {
    /// Type (bit 31 = internal, hyperv_net.h `struct rndis_per_packet_info`).
    pub ty: u32,
    /// Value bytes.
    pub value: &'a [u8],
}

/// Iterates over a per-packet-info area; stops (yielding an error once) at a malformed entry.
#[derive(Debug, Clone)]
pub struct PpiIter<'a> {
    rest: &'a [u8],
}

impl<'a> PpiIter<'a> {
    /// Iterates over `area` (from [`Rndis::Packet::ppi`]).
    pub fn new(area: &'a [u8]) -> Self {
        PpiIter { rest: area }
    }
}

impl<'a> Iterator for PpiIter<'a> {
    type Item = Result<Ppi<'a>, RndisError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        self.rest = &[];
        if r.len() < PPI_HEADER_LEN {
            return Some(Err(RndisError::Truncated {
                have: r.len(),
                need: PPI_HEADER_LEN,
            }));
        }
        let size = u32_at(r, 0);
        let ty = u32_at(r, 4);
        let off = u32_at(r, 8);
        if (size as usize) < PPI_HEADER_LEN || size as usize > r.len() || off > size {
            return Some(Err(RndisError::BadRange {
                what: "per-packet info",
                offset: off,
                len: size,
                msg_len: r.len() as u32,
            }));
        }
        self.rest = &r[size as usize..];
        Some(Ok(Ppi {
            ty,
            value: &r[off as usize..size as usize],
        }))
    }
}

/// Writes one per-packet-info element (`size = 12 + value.len()`, `ppi_offset = 12`, as
/// Linux `init_ppi_data` does) into `out`; returns its length.
pub fn emit_ppi(ty: u32, value: &[u8], out: &mut [u8]) -> Result<usize, RndisError> {
    let len = PPI_HEADER_LEN + value.len();
    if out.len() < len {
        return Err(RndisError::BufferTooSmall { need: len });
    }
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&ty.to_le_bytes());
    out[8..12].copy_from_slice(&(PPI_HEADER_LEN as u32).to_le_bytes());
    out[12..len].copy_from_slice(value);
    Ok(len)
}
