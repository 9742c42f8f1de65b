//! VMBus channel messages: wire structs, the message-type table, and the host→guest parser.
//!
//! Layouts: ref §4.4, Linux `include/linux/hyperv.h` (`struct vmbus_channel_*`, all
//! `__packed`), OpenVMM `vmbus_core/src/protocol.rs`. Every struct here includes the 8-byte
//! message header, so its size equals the Linux struct size; sizes are asserted at compile
//! time and the byte layout by golden tests below.

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::guid::Guid;
use crate::hypercall::HV_MESSAGE_PAYLOAD_SIZE;
use crate::version::Version;

/// Who sends a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    GuestToHost,
    HostToGuest,
}

/// One row of the message table.
#[derive(Clone, Copy, Debug)]
pub struct MessageInfo {
    pub ty: MessageType,
    pub name: &'static str,
    /// The protocol version that introduced it (OpenVMM `vmbus_messages!` min versions; 0.0
    /// where OpenVMM says "0" because it is exchanged before a version is known).
    /// [`parse_host`] refuses a message whose `since` is newer than the negotiated version.
    pub since: Version,
    pub direction: Direction,
    /// Minimum wire size including the header (the Linux struct size; VERSION_RESPONSE: 12,
    /// because QEMU sends it without `msg_conn_id`, hvhost README trace "type 15 size 12").
    pub min_size: usize,
}

use Direction::{GuestToHost as G2H, HostToGuest as H2G};

/// Declares every VMBus message once: `NAME = type, direction, since VERSION, min SIZE;`.
/// Generates the [`MessageType`] open enum and the [`MESSAGE_TABLE`] row; [`parse_host`]
/// reads the table, so version gating, direction and size checks are data, not `if` chains.
macro_rules! vmbus_messages {
    ($($(#[$doc:meta])* $name:ident = $val:literal, $dir:ident, since $since:expr, min $min:expr;)*) => {
        /// `enum vmbus_channel_message_type` (ref §4.3). An open enum (`open_enum`: a `u32`
        /// newtype with a constant per type): unknown values are kept, `Debug` names the known
        /// ones. Declared by [`vmbus_messages!`], one line per message.
        #[open_enum::open_enum]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)] // the C names
        #[derive(Clone, Copy, Debug, Hash)]
        #[repr(u32)]
        pub enum MessageType {
            INVALID = 0,
            $($(#[$doc])* $name = $val,)*
        }

        /// Every message type this crate knows, ordered by type, with the version that
        /// introduced it.
        pub const MESSAGE_TABLE: &[MessageInfo] = &[$(MessageInfo {
            ty: MessageType::$name,
            name: stringify!($name),
            since: $since,
            direction: $dir,
            min_size: $min,
        },)*];
    };
}

// Types: ref §4.3, Linux `enum vmbus_channel_message_type`; since: OpenVMM
// `vmbus_core/src/protocol.rs` `vmbus_messages!`; sizes: the Linux structs (asserted below).
vmbus_messages! {
    OFFERCHANNEL = 1, H2G, since Version::WS2008, min size_of::<OfferChannel>();
    RESCIND_CHANNELOFFER = 2, H2G, since Version::WS2008, min size_of::<RelidMessage>();
    REQUESTOFFERS = 3, G2H, since Version::WS2008, min size_of::<MessageHeader>();
    ALLOFFERS_DELIVERED = 4, H2G, since Version::WS2008, min size_of::<MessageHeader>();
    OPENCHANNEL = 5, G2H, since Version::WS2008, min size_of::<OpenChannel>();
    OPENCHANNEL_RESULT = 6, H2G, since Version::WS2008, min size_of::<OpenResult>();
    CLOSECHANNEL = 7, G2H, since Version::WS2008, min size_of::<RelidMessage>();
    GPADL_HEADER = 8, G2H, since Version::WS2008, min size_of::<GpadlHeader>();
    GPADL_BODY = 9, G2H, since Version::WS2008, min size_of::<GpadlBody>();
    GPADL_CREATED = 10, H2G, since Version::WS2008, min size_of::<GpadlCreated>();
    GPADL_TEARDOWN = 11, G2H, since Version::WS2008, min size_of::<GpadlTeardown>();
    GPADL_TORNDOWN = 12, H2G, since Version::WS2008, min size_of::<GpadlTorndown>();
    RELID_RELEASED = 13, G2H, since Version::WS2008, min size_of::<RelidMessage>();
    /// Exchanged before a version is known.
    INITIATE_CONTACT = 14, G2H, since Version(0), min size_of::<InitiateContact>();
    /// Exchanged before a version is known; 12 bytes from QEMU (no `msg_conn_id`).
    VERSION_RESPONSE = 15, H2G, since Version(0), min 12;
    UNLOAD = 16, G2H, since Version::WS2008, min size_of::<MessageHeader>();
    UNLOAD_RESPONSE = 17, H2G, since Version::WIN7, min size_of::<MessageHeader>();
    OPEN_RESERVED_CHANNEL = 18, G2H, since Version::WIN10, min 8;
    /// OpenVMM lists it with min version 0.
    CLOSE_RESERVED_CHANNEL = 19, G2H, since Version(0), min 8;
    CLOSE_RESERVED_RESPONSE = 20, H2G, since Version::WIN10, min 8;
    TL_CONNECT_REQUEST = 21, G2H, since Version::WIN10, min 8;
    MODIFYCHANNEL = 22, G2H, since Version::WIN10_V4_1, min 8;
    TL_CONNECT_RESULT = 23, H2G, since Version::WIN10_V4_1, min 8;
    MODIFYCHANNEL_RESPONSE = 24, H2G, since Version::WIN10_V5_3, min 8;
    MODIFY_CONNECTION = 25, G2H, since Version::COPPER, min 8;
    MODIFY_CONNECTION_RESPONSE = 26, H2G, since Version::COPPER, min 8;
    PAUSE = 27, H2G, since Version::COPPER, min 8;
    PAUSE_RESPONSE = 28, G2H, since Version::COPPER, min 8;
    RESUME = 29, H2G, since Version::COPPER, min 8;
}

/// The table row for a type.
pub fn info(ty: MessageType) -> Option<&'static MessageInfo> {
    MESSAGE_TABLE.iter().find(|r| r.ty == ty)
}

/// `vmbus_channel_message_header` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessageHeader {
    pub msgtype: u32,
    pub padding: u32,
}
const _: () = assert!(core::mem::size_of::<MessageHeader>() == 8);

impl MessageHeader {
    pub const fn new(ty: MessageType) -> Self {
        Self {
            msgtype: ty.0,
            padding: 0,
        }
    }
}

/// `vmbus_channel_initiate_contact` (ref §4.4). `interrupt_page_or_target_info` is the
/// interrupt page GPA below 5.0, and `{u8 msg_sint; u8 msg_vtl; u8 rsvd[2]; u32
/// feature_flags}` from 5.0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitiateContact {
    pub header: MessageHeader,
    pub vmbus_version_requested: u32,
    pub target_vcpu: u32,
    pub interrupt_page_or_target_info: u64,
    pub monitor_page1: u64,
    pub monitor_page2: u64,
}
const _: () = assert!(core::mem::size_of::<InitiateContact>() == 40);

/// The 5.0+ `target_info` form of `interrupt_page_or_target_info`.
pub const fn target_info(msg_sint: u8, msg_vtl: u8, feature_flags: u32) -> u64 {
    msg_sint as u64 | (msg_vtl as u64) << 8 | (feature_flags as u64) << 32
}

/// `vmbus_channel_version_response` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VersionResponse {
    pub header: MessageHeader,
    pub version_supported: u8,
    pub connection_state: u8,
    pub padding: u16,
    pub msg_conn_id: u32,
}
const _: () = assert!(core::mem::size_of::<VersionResponse>() == 16);

/// `vmbus_channel_offer` (ref §4.4): 176 bytes. `rsvd1/rsvd2` are two u64 in Linux; kept as
/// u32 pairs so the struct has 4-byte alignment like the packed original.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ChannelOffer {
    pub if_type: [u8; 16],
    pub if_instance: [u8; 16],
    pub reserved: [u32; 4],
    pub chn_flags: u16,
    pub mmio_megabytes: u16,
    pub user_def: [u8; 120],
    pub sub_channel_index: u16,
    pub reserved3: u16,
}
const _: () = assert!(core::mem::size_of::<ChannelOffer>() == 176);

/// `vmbus_channel_offer_channel` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OfferChannel {
    pub header: MessageHeader,
    pub offer: ChannelOffer,
    pub child_relid: u32,
    pub monitorid: u8,
    /// bit 0: `monitor_allocated`.
    pub monitor_allocated: u8,
    /// bit 0: `is_dedicated_interrupt`.
    pub is_dedicated_interrupt: u16,
    pub connection_id: u32,
}
const _: () = assert!(core::mem::size_of::<OfferChannel>() == 196);

/// `vmbus_channel_rescind_offer`, `vmbus_channel_relid_released`, `vmbus_channel_close_channel`:
/// header + child_relid (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RelidMessage {
    pub header: MessageHeader,
    pub child_relid: u32,
}
const _: () = assert!(core::mem::size_of::<RelidMessage>() == 12);

/// `vmbus_channel_gpadl_header` without its ranges (ref §4.4): 20 bytes, followed by
/// `gpa_range { u32 byte_count; u32 byte_offset; u64 pfn[] }` records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlHeader {
    pub header: MessageHeader,
    pub child_relid: u32,
    pub gpadl: u32,
    pub range_buflen: u16,
    pub rangecount: u16,
}
const _: () = assert!(core::mem::size_of::<GpadlHeader>() == 20);

/// `vmbus_channel_gpadl_body` without its PFNs (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlBody {
    pub header: MessageHeader,
    /// Linux `msgnumber`; OpenVMM calls it `rsvd`. Sent as 0.
    pub msgnumber: u32,
    pub gpadl: u32,
}
const _: () = assert!(core::mem::size_of::<GpadlBody>() == 16);

/// 64-bit words of range data that fit after a GPADL header (240 - 20 = 220 bytes → 27; Linux
/// `create_gpadl_header`: 1 range header + 26 PFNs).
pub const GPADL_HEADER_WORDS: usize = (HV_MESSAGE_PAYLOAD_SIZE - 20) / 8;
/// PFNs per GPADL body ((240 - 16) / 8 = 28).
pub const GPADL_BODY_WORDS: usize = (HV_MESSAGE_PAYLOAD_SIZE - 16) / 8;

/// `vmbus_channel_gpadl_created` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlCreated {
    pub header: MessageHeader,
    pub child_relid: u32,
    pub gpadl: u32,
    pub creation_status: u32,
}
const _: () = assert!(core::mem::size_of::<GpadlCreated>() == 20);

/// `vmbus_channel_gpadl_teardown` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlTeardown {
    pub header: MessageHeader,
    pub child_relid: u32,
    pub gpadl: u32,
}
const _: () = assert!(core::mem::size_of::<GpadlTeardown>() == 16);

/// `vmbus_channel_gpadl_torndown` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GpadlTorndown {
    pub header: MessageHeader,
    pub gpadl: u32,
}
const _: () = assert!(core::mem::size_of::<GpadlTorndown>() == 12);

/// `vmbus_channel_open_channel` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenChannel {
    pub header: MessageHeader,
    pub child_relid: u32,
    pub openid: u32,
    pub ringbuffer_gpadlhandle: u32,
    pub target_vp: u32,
    pub downstream_ringbuffer_pageoffset: u32,
    pub userdata: [u8; 120],
}
const _: () = assert!(core::mem::size_of::<OpenChannel>() == 148);

/// `vmbus_channel_open_result` (ref §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct OpenResult {
    pub header: MessageHeader,
    pub child_relid: u32,
    pub openid: u32,
    pub status: u32,
}
const _: () = assert!(core::mem::size_of::<OpenResult>() == 20);

/// A channel offer as the guest keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    pub if_type: Guid,
    pub if_instance: Guid,
    pub chn_flags: u16,
    pub mmio_megabytes: u16,
    pub user_def: [u8; 120],
    pub sub_channel_index: u16,
    pub child_relid: u32,
    pub monitor_id: u8,
    pub monitor_allocated: bool,
    pub is_dedicated_interrupt: bool,
    /// The connection id HvSignalEvent uses for this channel (Linux `sig_event`).
    pub connection_id: u32,
}

/// A parsed host→guest message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMessage {
    VersionResponse {
        version_supported: bool,
        connection_state: u8,
        /// Absent when the host sent the 12-byte form (QEMU).
        msg_conn_id: Option<u32>,
    },
    Offer(Offer),
    Rescind {
        child_relid: u32,
    },
    AllOffersDelivered,
    OpenResult {
        child_relid: u32,
        openid: u32,
        status: u32,
    },
    GpadlCreated {
        child_relid: u32,
        gpadl: u32,
        status: u32,
    },
    GpadlTorndown {
        gpadl: u32,
    },
    UnloadResponse,
    /// A known host→guest type this crate does not act on, or an unknown type (open enum).
    Other(MessageType),
}

/// Why a host message was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message of {len} bytes is shorter than the 8-byte header")]
    NoHeader { len: usize },
    #[error("message of {len} bytes exceeds the 240-byte payload limit")]
    Oversized { len: usize },
    #[error("{name} message is {len} bytes, needs at least {need}")]
    TooShort {
        name: &'static str,
        len: usize,
        need: usize,
    },
    #[error("message type {0} is sent by the guest, not the host")]
    WrongDirection(u32),
    #[error("{name} exists from VMBus {since}, the connection is at {negotiated}")]
    NotInVersion {
        name: &'static str,
        since: Version,
        negotiated: Version,
    },
}

fn read<T: FromBytes>(bytes: &[u8], info: &MessageInfo) -> Result<T, MessageError> {
    T::read_from_prefix(bytes)
        .map(|(v, _)| v)
        .map_err(|_| MessageError::TooShort {
            name: info.name,
            len: bytes.len(),
            need: core::mem::size_of::<T>(),
        })
}

/// Parse a host→guest VMBus message (the SynIC payload, header included) on a connection at
/// `negotiated` (`Version(0)` while negotiating). Refuses a known type that `negotiated` does
/// not have ([`MessageInfo::since`]), one the guest sends, and one shorter than its minimum;
/// an unknown type is kept as [`HostMessage::Other`]. Never panics.
pub fn parse_host(bytes: &[u8], negotiated: Version) -> Result<HostMessage, MessageError> {
    if bytes.len() > HV_MESSAGE_PAYLOAD_SIZE {
        return Err(MessageError::Oversized { len: bytes.len() });
    }
    let (hdr, _) = MessageHeader::read_from_prefix(bytes)
        .map_err(|_| MessageError::NoHeader { len: bytes.len() })?;
    let ty = MessageType(hdr.msgtype);
    let Some(info) = info(ty) else {
        return Ok(HostMessage::Other(ty));
    };
    if info.direction != Direction::HostToGuest {
        return Err(MessageError::WrongDirection(ty.0));
    }
    if info.since > negotiated {
        return Err(MessageError::NotInVersion {
            name: info.name,
            since: info.since,
            negotiated,
        });
    }
    if bytes.len() < info.min_size {
        return Err(MessageError::TooShort {
            name: info.name,
            len: bytes.len(),
            need: info.min_size,
        });
    }
    Ok(match ty {
        MessageType::VERSION_RESPONSE => {
            let b = bytes;
            HostMessage::VersionResponse {
                version_supported: b[8] != 0,
                connection_state: b[9],
                msg_conn_id: b
                    .get(12..16)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            }
        }
        MessageType::OFFERCHANNEL => {
            let m: OfferChannel = read(bytes, info)?;
            HostMessage::Offer(Offer {
                if_type: Guid(m.offer.if_type),
                if_instance: Guid(m.offer.if_instance),
                chn_flags: m.offer.chn_flags,
                mmio_megabytes: m.offer.mmio_megabytes,
                user_def: m.offer.user_def,
                sub_channel_index: m.offer.sub_channel_index,
                child_relid: m.child_relid,
                monitor_id: m.monitorid,
                monitor_allocated: m.monitor_allocated & 1 != 0,
                is_dedicated_interrupt: m.is_dedicated_interrupt & 1 != 0,
                connection_id: m.connection_id,
            })
        }
        MessageType::RESCIND_CHANNELOFFER => {
            let m: RelidMessage = read(bytes, info)?;
            HostMessage::Rescind {
                child_relid: m.child_relid,
            }
        }
        MessageType::ALLOFFERS_DELIVERED => HostMessage::AllOffersDelivered,
        MessageType::OPENCHANNEL_RESULT => {
            let m: OpenResult = read(bytes, info)?;
            HostMessage::OpenResult {
                child_relid: m.child_relid,
                openid: m.openid,
                status: m.status,
            }
        }
        MessageType::GPADL_CREATED => {
            let m: GpadlCreated = read(bytes, info)?;
            HostMessage::GpadlCreated {
                child_relid: m.child_relid,
                gpadl: m.gpadl,
                status: m.creation_status,
            }
        }
        MessageType::GPADL_TORNDOWN => {
            let m: GpadlTorndown = read(bytes, info)?;
            HostMessage::GpadlTorndown { gpadl: m.gpadl }
        }
        MessageType::UNLOAD_RESPONSE => HostMessage::UnloadResponse,
        other => HostMessage::Other(other),
    })
}

#[cfg(test)]
mod tests;
