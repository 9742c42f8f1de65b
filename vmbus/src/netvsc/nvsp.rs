//! NVSP, the netvsc control protocol carried in VMBus packets.
//!
//! Layouts: Linux `drivers/net/hyperv/hyperv_net.h` (`struct nvsp_message` and friends, all
//! `__packed`), OpenVMM `vm/devices/net/netvsp/src/protocol.rs`, FreeBSD
//! `sys/dev/hyperv/netvsc/hn_nvs.h`. Every message is a `u32 msg_type` followed by its body;
//! Linux sends `sizeof(struct nvsp_message)` = 40 bytes (OpenVMM `PACKET_SIZE_V61` = 0x28;
//! v1 messages are 0x1c), zero padded.

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `NVSP_PROTOCOL_VERSION_1` (hyperv_net.h).
pub const VERSION_1: u32 = 0x2;
/// `NVSP_PROTOCOL_VERSION_2` (hyperv_net.h).
pub const VERSION_2: u32 = 0x30002;
/// `NVSP_PROTOCOL_VERSION_4` (hyperv_net.h).
pub const VERSION_4: u32 = 0x40000;
/// `NVSP_PROTOCOL_VERSION_5` (hyperv_net.h).
pub const VERSION_5: u32 = 0x50000;
/// `NVSP_PROTOCOL_VERSION_6` (hyperv_net.h).
pub const VERSION_6: u32 = 0x60000;
/// `NVSP_PROTOCOL_VERSION_61` (hyperv_net.h).
pub const VERSION_61: u32 = 0x60001;
/// Versions tried newest first (netvsc.c `netvsc_connect_vsp`, `ver_list`).
pub const VERSIONS: [u32; 6] = [
    VERSION_61, VERSION_6, VERSION_5, VERSION_4, VERSION_2, VERSION_1,
];

/// `PACKET_SIZE_V61` (OpenVMM protocol.rs) = `sizeof(struct nvsp_message)` in Linux.
pub const PACKET_SIZE_V61: usize = 0x28;
/// `PACKET_SIZE_V1` (OpenVMM protocol.rs).
pub const PACKET_SIZE_V1: usize = 0x1c;

/// Declares every NVSP message type this crate knows once: `NAME = type, since VERSION;`.
/// Generates the [`MsgType`] open enum and [`MESSAGE_SINCE`]; [`Nvsp::parse_at`] refuses a
/// type newer than the negotiated version from the table.
macro_rules! nvsp_messages {
    ($($(#[$doc:meta])* $name:ident = $val:literal, since $since:expr;)*) => {
        /// NVSP message types (hyperv_net.h enum; OpenVMM protocol.rs `MESSAGE*_TYPE_*`). An
        /// open enum (`open_enum`): a type this crate does not know is kept.
        #[open_enum::open_enum]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)] // the C names
        #[derive(Clone, Copy, Debug, Hash)]
        #[repr(u32)]
        pub enum MsgType {
            $($(#[$doc])* $name = $val,)*
        }

        /// Every known type with the NVSP version that introduced it (hyperv_net.h groups
        /// them as `NVSP_MSG_TYPE_*`, `NVSP_MSG1_TYPE_*` (version 1), `NVSP_MSG2_*`, ...).
        pub const MESSAGE_SINCE: &[(MsgType, u32)] = &[$((MsgType::$name, $since),)*];
    };
}

nvsp_messages! {
    /// `NVSP_MSG_TYPE_INIT` (exchanged before a version is known)
    INIT = 1, since 0;
    /// `NVSP_MSG_TYPE_INIT_COMPLETE`
    INIT_COMPLETE = 2, since 0;
    /// `NVSP_MSG1_TYPE_SEND_NDIS_VER`
    SEND_NDIS_VERSION = 100, since VERSION_1;
    /// `NVSP_MSG1_TYPE_SEND_RECV_BUF`
    SEND_RECV_BUF = 101, since VERSION_1;
    /// `NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE`
    SEND_RECV_BUF_COMPLETE = 102, since VERSION_1;
    /// `NVSP_MSG1_TYPE_REVOKE_RECV_BUF`
    REVOKE_RECV_BUF = 103, since VERSION_1;
    /// `NVSP_MSG1_TYPE_SEND_SEND_BUF`
    SEND_SEND_BUF = 104, since VERSION_1;
    /// `NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE`
    SEND_SEND_BUF_COMPLETE = 105, since VERSION_1;
    /// `NVSP_MSG1_TYPE_REVOKE_SEND_BUF`
    REVOKE_SEND_BUF = 106, since VERSION_1;
    /// `NVSP_MSG1_TYPE_SEND_RNDIS_PKT`
    SEND_RNDIS_PKT = 107, since VERSION_1;
    /// `NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE`
    SEND_RNDIS_PKT_COMPLETE = 108, since VERSION_1;
    /// `NVSP_MSG2_TYPE_SEND_NDIS_CONFIG`
    SEND_NDIS_CONFIG = 125, since VERSION_2;
    /// `NVSP_MSG4_TYPE_SEND_VF_ASSOCIATION`
    SEND_VF_ASSOCIATION = 128, since VERSION_4;
    /// `NVSP_MSG5_TYPE_SEND_INDIRECTION_TABLE`
    SEND_INDIRECTION_TABLE = 134, since VERSION_5;
}

/// The NVSP version that introduced message type `ty`, if this crate knows the type.
pub fn since(ty: MsgType) -> Option<u32> {
    MESSAGE_SINCE.iter().find(|r| r.0 == ty).map(|r| r.1)
}

/// `NVSP_STAT_SUCCESS` (hyperv_net.h; OpenVMM `Status::SUCCESS`).
pub const STATUS_SUCCESS: u32 = 1;
/// `NVSP_STAT_FAIL` (hyperv_net.h; OpenVMM `Status::FAILURE`).
pub const STATUS_FAIL: u32 = 2;
/// `NETVSC_RECEIVE_BUFFER_ID` 0xCAFE (hyperv_net.h).
pub const RECV_BUFFER_ID: u16 = 0xCAFE;
/// `NETVSC_SEND_BUFFER_ID` 0 (hyperv_net.h).
pub const SEND_BUFFER_ID: u16 = 0;
/// `send_buf_section_index` meaning "not in the send buffer" (`NETVSC_INVALID_INDEX`).
pub const INVALID_SECTION: u32 = 0xFFFF_FFFF;
/// `channel_type` 0 = RMC_DATA (netvsc.c `netvsc_send_pkt`; OpenVMM `DATA_CHANNEL_TYPE`).
pub const CHANNEL_DATA: u32 = 0;
/// `channel_type` 1 = RMC_CONTROL (rndis_filter.c; OpenVMM `CONTROL_CHANNEL_TYPE`).
pub const CHANNEL_CONTROL: u32 = 1;
/// NDIS 6.1 (`NDIS_VERSION_6_1`, hyperv_net.h), used with NVSP <= 4.
pub const NDIS_6_1: u32 = 0x0006_0001;
/// NDIS 6.30 (`NDIS_VERSION_6_30`, hyperv_net.h), used with NVSP > 4.
pub const NDIS_6_30: u32 = 0x0006_001e;
/// `ieee8021q` bit of `struct ndis_config_capability` (hyperv_net.h; OpenVMM
/// `NdisConfigCapabilities` bit 3).
pub const NDIS_CAP_IEEE8021Q: u64 = 1 << 3;

/// `struct nvsp_message_init` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Init {
    /// `min_protocol_ver`.
    pub min: U32,
    /// `max_protocol_ver`.
    pub max: U32,
}
/// `struct nvsp_message_init_complete` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct InitComplete {
    /// `negotiated_protocol_ver` (deprecated by OpenVMM).
    pub negotiated: U32,
    /// `max_mdl_chain_len`.
    pub max_mdl_chain_len: U32,
    /// `status`.
    pub status: U32,
}
/// `struct nvsp_1_message_send_ndis_version` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct NdisVersion {
    /// `ndis_major_ver`.
    pub major: U32,
    /// `ndis_minor_ver`.
    pub minor: U32,
}
/// `struct nvsp_2_send_ndis_config` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct NdisConfig {
    /// `mtu`.
    pub mtu: U32,
    /// `reserved`.
    pub reserved: U32,
    /// `capability` bits.
    pub capability: U64,
}
/// `struct nvsp_1_message_send_receive_buffer` / `..._send_buffer` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SendBuf {
    /// `gpadl_handle`.
    pub gpadl: U32,
    /// `id`.
    pub id: U16,
}
/// `struct nvsp_1_receive_buffer_section` (hyperv_net.h).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct RecvSection {
    /// `offset`.
    pub offset: U32,
    /// `sub_alloc_size`.
    pub sub_alloc_size: U32,
    /// `num_sub_allocs`.
    pub num_sub_allocs: U32,
    /// `end_offset`.
    pub end_offset: U32,
}
/// `struct nvsp_1_message_send_receive_buffer_complete` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RecvBufComplete {
    /// `status`.
    pub status: U32,
    /// `num_sections`.
    pub num_sections: U32,
    /// `sections[0]`.
    pub section: RecvSection,
}
/// `struct nvsp_1_message_send_send_buffer_complete` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SendBufComplete {
    /// `status`.
    pub status: U32,
    /// `section_size`.
    pub section_size: U32,
}
/// `struct nvsp_1_message_send_rndis_packet` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RndisPkt {
    /// `channel_type`.
    pub channel_type: U32,
    /// `send_buf_section_index`.
    pub section_index: U32,
    /// `send_buf_section_size`.
    pub section_size: U32,
}
/// `struct nvsp_1_message_send_rndis_packet_complete` (hyperv_net.h).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RndisPktComplete {
    /// `status`.
    pub status: U32,
}

const _: () = assert!(core::mem::size_of::<Init>() == 8);
const _: () = assert!(core::mem::size_of::<InitComplete>() == 12);
const _: () = assert!(core::mem::size_of::<NdisVersion>() == 8);
const _: () = assert!(core::mem::size_of::<NdisConfig>() == 16);
const _: () = assert!(core::mem::size_of::<SendBuf>() == 6);
const _: () = assert!(core::mem::size_of::<RecvSection>() == 16);
const _: () = assert!(core::mem::size_of::<RecvBufComplete>() == 24);
const _: () = assert!(core::mem::size_of::<SendBufComplete>() == 8);
const _: () = assert!(core::mem::size_of::<RndisPkt>() == 12);
const _: () = assert!(core::mem::size_of::<RndisPktComplete>() == 4);

/// A receive-buffer section as the host reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Offset of the section in the buffer.
    pub offset: u32,
    /// Size of each sub-allocation.
    pub sub_alloc_size: u32,
    /// Number of sub-allocations.
    pub num_sub_allocs: u32,
    /// End offset.
    pub end_offset: u32,
}

/// A parsed NVSP message (the Repr layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nvsp {
    /// `INIT`.
    Init {
        /// Min version.
        min: u32,
        /// Max version.
        max: u32,
    },
    /// `INIT_COMPLETE`.
    InitComplete {
        /// Negotiated version field.
        negotiated: u32,
        /// Max MDL chain length.
        max_mdl_chain_len: u32,
        /// Status.
        status: u32,
    },
    /// `SEND_NDIS_VER`.
    NdisVersion {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// `SEND_NDIS_CONFIG` (v2+).
    NdisConfig {
        /// MTU.
        mtu: u32,
        /// Capability bits.
        capability: u64,
    },
    /// `SEND_RECV_BUF`.
    SendRecvBuf {
        /// GPADL.
        gpadl: u32,
        /// Id (0xCAFE).
        id: u16,
    },
    /// `SEND_RECV_BUF_COMPLETE` (first section only; no VSP sends more, OpenVMM says).
    SendRecvBufComplete {
        /// Status.
        status: u32,
        /// Section count.
        num_sections: u32,
        /// First section.
        section: Section,
    },
    /// `SEND_SEND_BUF`.
    SendSendBuf {
        /// GPADL.
        gpadl: u32,
        /// Id (0).
        id: u16,
    },
    /// `SEND_SEND_BUF_COMPLETE`.
    SendSendBufComplete {
        /// Status.
        status: u32,
        /// Section size.
        section_size: u32,
    },
    /// `SEND_RNDIS_PKT`.
    RndisPacket {
        /// 0 data, 1 control.
        channel_type: u32,
        /// Send-buffer section or [`INVALID_SECTION`].
        section_index: u32,
        /// Bytes used in the section.
        section_size: u32,
    },
    /// `SEND_RNDIS_PKT_COMPLETE`.
    RndisPacketComplete {
        /// Status.
        status: u32,
    },
    /// Anything else (open enum).
    Other {
        /// The type.
        ty: MsgType,
    },
}

/// Why an NVSP message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NvspError {
    /// Too short for its type.
    #[error("NVSP message type {ty} truncated: {have} bytes, need {need}")]
    Truncated {
        /// Type (0 if even the header was missing).
        ty: u32,
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Output buffer too small.
    #[error("buffer too small for NVSP message")]
    BufferTooSmall,
    /// A type the negotiated NVSP version does not have.
    #[error("NVSP message type {ty} exists from version {since:#x}, negotiated {negotiated:#x}")]
    NotInVersion {
        /// The type.
        ty: u32,
        /// The version that introduced it.
        since: u32,
        /// The negotiated version (0 before INIT_COMPLETE).
        negotiated: u32,
    },
}

fn rd<T: FromBytes + KnownLayout + Immutable + Copy>(ty: u32, b: &[u8]) -> Result<T, NvspError> {
    T::read_from_prefix(b)
        .map(|(v, _)| v)
        .map_err(|_| NvspError::Truncated {
            ty,
            have: 4 + b.len(),
            need: 4 + core::mem::size_of::<T>(),
        })
}

impl Nvsp {
    /// The message type.
    pub fn ty(&self) -> MsgType {
        match self {
            Nvsp::Init { .. } => MsgType::INIT,
            Nvsp::InitComplete { .. } => MsgType::INIT_COMPLETE,
            Nvsp::NdisVersion { .. } => MsgType::SEND_NDIS_VERSION,
            Nvsp::NdisConfig { .. } => MsgType::SEND_NDIS_CONFIG,
            Nvsp::SendRecvBuf { .. } => MsgType::SEND_RECV_BUF,
            Nvsp::SendRecvBufComplete { .. } => MsgType::SEND_RECV_BUF_COMPLETE,
            Nvsp::SendSendBuf { .. } => MsgType::SEND_SEND_BUF,
            Nvsp::SendSendBufComplete { .. } => MsgType::SEND_SEND_BUF_COMPLETE,
            Nvsp::RndisPacket { .. } => MsgType::SEND_RNDIS_PKT,
            Nvsp::RndisPacketComplete { .. } => MsgType::SEND_RNDIS_PKT_COMPLETE,
            Nvsp::Other { ty } => *ty,
        }
    }

    /// Parses a message received on a channel at NVSP version `negotiated` (0 before
    /// INIT_COMPLETE): [`Self::parse`], and a known type newer than `negotiated`
    /// ([`MESSAGE_SINCE`]) is refused.
    pub fn parse_at(buf: &[u8], negotiated: u32) -> Result<Nvsp, NvspError> {
        let m = Self::parse(buf)?;
        match since(m.ty()) {
            Some(since) if since > negotiated => Err(NvspError::NotInVersion {
                ty: m.ty().0,
                since,
                negotiated,
            }),
            _ => Ok(m),
        }
    }

    /// Parses a message; trailing padding is ignored, short bodies are errors.
    pub fn parse(buf: &[u8]) -> Result<Nvsp, NvspError> {
        if buf.len() < 4 {
            return Err(NvspError::Truncated {
                ty: 0,
                have: buf.len(),
                need: 4,
            });
        }
        let raw = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let (ty, b) = (MsgType(raw), &buf[4..]);
        Ok(match ty {
            MsgType::INIT => {
                let m: Init = rd(raw, b)?;
                Nvsp::Init {
                    min: m.min.get(),
                    max: m.max.get(),
                }
            }
            MsgType::INIT_COMPLETE => {
                let m: InitComplete = rd(raw, b)?;
                Nvsp::InitComplete {
                    negotiated: m.negotiated.get(),
                    max_mdl_chain_len: m.max_mdl_chain_len.get(),
                    status: m.status.get(),
                }
            }
            MsgType::SEND_NDIS_VERSION => {
                let m: NdisVersion = rd(raw, b)?;
                Nvsp::NdisVersion {
                    major: m.major.get(),
                    minor: m.minor.get(),
                }
            }
            MsgType::SEND_NDIS_CONFIG => {
                let m: NdisConfig = rd(raw, b)?;
                Nvsp::NdisConfig {
                    mtu: m.mtu.get(),
                    capability: m.capability.get(),
                }
            }
            MsgType::SEND_RECV_BUF | MsgType::SEND_SEND_BUF => {
                let m: SendBuf = rd(raw, b)?;
                if ty == MsgType::SEND_RECV_BUF {
                    Nvsp::SendRecvBuf {
                        gpadl: m.gpadl.get(),
                        id: m.id.get(),
                    }
                } else {
                    Nvsp::SendSendBuf {
                        gpadl: m.gpadl.get(),
                        id: m.id.get(),
                    }
                }
            }
            MsgType::SEND_RECV_BUF_COMPLETE => {
                let m: RecvBufComplete = rd(raw, b)?;
                Nvsp::SendRecvBufComplete {
                    status: m.status.get(),
                    num_sections: m.num_sections.get(),
                    section: Section {
                        offset: m.section.offset.get(),
                        sub_alloc_size: m.section.sub_alloc_size.get(),
                        num_sub_allocs: m.section.num_sub_allocs.get(),
                        end_offset: m.section.end_offset.get(),
                    },
                }
            }
            MsgType::SEND_SEND_BUF_COMPLETE => {
                let m: SendBufComplete = rd(raw, b)?;
                Nvsp::SendSendBufComplete {
                    status: m.status.get(),
                    section_size: m.section_size.get(),
                }
            }
            MsgType::SEND_RNDIS_PKT => {
                let m: RndisPkt = rd(raw, b)?;
                Nvsp::RndisPacket {
                    channel_type: m.channel_type.get(),
                    section_index: m.section_index.get(),
                    section_size: m.section_size.get(),
                }
            }
            MsgType::SEND_RNDIS_PKT_COMPLETE => {
                let m: RndisPktComplete = rd(raw, b)?;
                Nvsp::RndisPacketComplete {
                    status: m.status.get(),
                }
            }
            ty => Nvsp::Other { ty },
        })
    }

    /// Emits the message zero-padded to `out.len().min(PACKET_SIZE_V61)` bytes (at least the
    /// message itself); returns the length written.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, NvspError> {
        let mut body = [0u8; 36];
        let n = match *self {
            Nvsp::Init { min, max } => put(
                &mut body,
                &Init {
                    min: min.into(),
                    max: max.into(),
                },
            ),
            Nvsp::InitComplete {
                negotiated,
                max_mdl_chain_len,
                status,
            } => put(
                &mut body,
                &InitComplete {
                    negotiated: negotiated.into(),
                    max_mdl_chain_len: max_mdl_chain_len.into(),
                    status: status.into(),
                },
            ),
            Nvsp::NdisVersion { major, minor } => put(
                &mut body,
                &NdisVersion {
                    major: major.into(),
                    minor: minor.into(),
                },
            ),
            Nvsp::NdisConfig { mtu, capability } => put(
                &mut body,
                &NdisConfig {
                    mtu: mtu.into(),
                    reserved: 0.into(),
                    capability: capability.into(),
                },
            ),
            Nvsp::SendRecvBuf { gpadl, id } | Nvsp::SendSendBuf { gpadl, id } => put(
                &mut body,
                &SendBuf {
                    gpadl: gpadl.into(),
                    id: id.into(),
                },
            ),
            Nvsp::SendRecvBufComplete {
                status,
                num_sections,
                section,
            } => put(
                &mut body,
                &RecvBufComplete {
                    status: status.into(),
                    num_sections: num_sections.into(),
                    section: RecvSection {
                        offset: section.offset.into(),
                        sub_alloc_size: section.sub_alloc_size.into(),
                        num_sub_allocs: section.num_sub_allocs.into(),
                        end_offset: section.end_offset.into(),
                    },
                },
            ),
            Nvsp::SendSendBufComplete {
                status,
                section_size,
            } => put(
                &mut body,
                &SendBufComplete {
                    status: status.into(),
                    section_size: section_size.into(),
                },
            ),
            Nvsp::RndisPacket {
                channel_type,
                section_index,
                section_size,
            } => put(
                &mut body,
                &RndisPkt {
                    channel_type: channel_type.into(),
                    section_index: section_index.into(),
                    section_size: section_size.into(),
                },
            ),
            Nvsp::RndisPacketComplete { status } => put(
                &mut body,
                &RndisPktComplete {
                    status: status.into(),
                },
            ),
            Nvsp::Other { .. } => 0,
        };
        let len = (4 + n).max(out.len().min(PACKET_SIZE_V61));
        if out.len() < 4 + n {
            return Err(NvspError::BufferTooSmall);
        }
        out[..len].fill(0);
        out[..4].copy_from_slice(&self.ty().0.to_le_bytes());
        out[4..4 + n].copy_from_slice(&body[..n]);
        Ok(len)
    }
}

fn put<T: IntoBytes + Immutable>(buf: &mut [u8; 36], v: &T) -> usize {
    let b = v.as_bytes();
    buf[..b.len()].copy_from_slice(b);
    b.len()
}
