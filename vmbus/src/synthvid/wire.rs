//! synthvid wire format: VMBus pipe header + synthvid header + message.
//!
//! Layouts are the `__packed` structs of Linux `drivers/video/fbdev/hyperv_fb.c` (same in
//! `drivers/gpu/drm/hyperv/hyperv_drm_proto.c`); every message is sent as one
//! `VM_PKT_DATA_INBAND` packet whose payload is `pipe_msg_hdr` + `synthvid_msg_hdr` + body.

use thiserror::Error;
use zerocopy::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `SYNTHVID_VERSION(major, minor) = (minor << 16) | major` (hyperv_fb.c).
pub const fn version(major: u16, minor: u16) -> u32 {
    ((minor as u32) << 16) | major as u32
}
/// `SYNTHVID_VERSION_WIN8` = 3.2 (hyperv_fb.c).
pub const VERSION_WIN8: u32 = version(3, 2);
/// `SYNTHVID_VERSION_WIN10` = 3.5 (hyperv_fb.c).
pub const VERSION_WIN10: u32 = version(3, 5);
/// `SYNTHVID_VERSION_WIN7` = 3.0 (hyperv_fb.c); Linux no longer negotiates it and neither do we.
pub const VERSION_WIN7: u32 = version(3, 0);

/// `PIPE_MSG_DATA` (hyperv_fb.c `enum pipe_msg_type`; OpenVMM pipe header type 1).
pub const PIPE_MSG_DATA: u32 = 1;
/// `SYNTHVID_EDID_BLOCK_SIZE` (hyperv_fb.c).
pub const EDID_BLOCK_SIZE: usize = 128;
/// `SYNTHVID_MAX_RESOLUTION_COUNT` (hyperv_fb.c).
pub const MAX_RESOLUTION_COUNT: usize = 64;
/// `MAX_VMBUS_PKT_SIZE` 0x4000 (hyperv_fb.c; `VMBUS_MAX_PACKET_SIZE` in hyperv_drm.h).
pub const MAX_PACKET: usize = 0x4000;

/// `enum synthvid_msg_type` (hyperv_fb.c). An open enum (`open_enum`): a type this driver does
/// not know is kept ([`Message::Other`]).
#[open_enum::open_enum]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)] // the C names
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `SYNTHVID_ERROR`
    ERROR = 0,
    /// `SYNTHVID_VERSION_REQUEST`
    VERSION_REQUEST = 1,
    /// `SYNTHVID_VERSION_RESPONSE`
    VERSION_RESPONSE = 2,
    /// `SYNTHVID_VRAM_LOCATION`
    VRAM_LOCATION = 3,
    /// `SYNTHVID_VRAM_LOCATION_ACK`
    VRAM_LOCATION_ACK = 4,
    /// `SYNTHVID_SITUATION_UPDATE`
    SITUATION_UPDATE = 5,
    /// `SYNTHVID_SITUATION_UPDATE_ACK`
    SITUATION_UPDATE_ACK = 6,
    /// `SYNTHVID_POINTER_POSITION`
    POINTER_POSITION = 7,
    /// `SYNTHVID_POINTER_SHAPE`
    POINTER_SHAPE = 8,
    /// `SYNTHVID_FEATURE_CHANGE`
    FEATURE_CHANGE = 9,
    /// `SYNTHVID_DIRT`
    DIRT = 10,
    /// `SYNTHVID_RESOLUTION_REQUEST`
    RESOLUTION_REQUEST = 13,
    /// `SYNTHVID_RESOLUTION_RESPONSE`
    RESOLUTION_RESPONSE = 14,
}

/// Message types with the synthvid version that introduced them (hyperv_fb.c: the
/// resolution messages arrived with WIN10 3.5, everything else is in WIN7 3.0 / WIN8 3.2).
/// Version gating reads this table.
pub const INTRODUCED_IN: [(MsgType, u32); 13] = [
    (MsgType::ERROR, VERSION_WIN7),
    (MsgType::VERSION_REQUEST, VERSION_WIN7),
    (MsgType::VERSION_RESPONSE, VERSION_WIN7),
    (MsgType::VRAM_LOCATION, VERSION_WIN7),
    (MsgType::VRAM_LOCATION_ACK, VERSION_WIN7),
    (MsgType::SITUATION_UPDATE, VERSION_WIN7),
    (MsgType::SITUATION_UPDATE_ACK, VERSION_WIN7),
    (MsgType::POINTER_POSITION, VERSION_WIN7),
    (MsgType::POINTER_SHAPE, VERSION_WIN7),
    (MsgType::FEATURE_CHANGE, VERSION_WIN7),
    (MsgType::DIRT, VERSION_WIN7),
    (MsgType::RESOLUTION_REQUEST, VERSION_WIN10),
    (MsgType::RESOLUTION_RESPONSE, VERSION_WIN10),
];

/// Whether `ty` may be sent once `negotiated` was agreed (versions order by minor, then
/// major, which `(minor << 16) | major` compares correctly for the 3.x versions).
pub fn allowed(ty: MsgType, negotiated: u32) -> bool {
    INTRODUCED_IN
        .iter()
        .find(|(t, _)| *t == ty)
        .is_some_and(|&(_, v)| negotiated >= v)
}

/// `struct pipe_msg_hdr {u32 type; u32 size;}` (hyperv_fb.c); `size` counts the bytes after it.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PipeHeader {
    /// `PIPE_MSG_DATA`.
    pub ty: U32,
    /// Bytes that follow this header.
    pub size: U32,
}

/// `struct synthvid_msg_hdr {u32 type; u32 size;}` (hyperv_fb.c). `size` = header + payload
/// as Linux writes it, the payload only as OpenVMM writes it ([`SizeForm`]); never checked.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MsgHeader {
    /// `enum synthvid_msg_type`.
    pub ty: U32,
    /// Header plus payload bytes.
    pub size: U32,
}

/// `struct synthvid_version_req {u32 version;}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VersionReq {
    /// Requested version word.
    pub version: U32,
}

/// `struct synthvid_version_resp {u32 version; u8 is_accepted; u8 max_video_outputs;}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VersionResp {
    /// Version the host answered about.
    pub version: U32,
    /// Non-zero if accepted.
    pub is_accepted: u8,
    /// Number of outputs.
    pub max_video_outputs: u8,
}

/// `struct synthvid_vram_location {u64 user_ctx; u8 is_vram_gpa_specified; u64 vram_gpa;}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VramLocation {
    /// Echoed in the ack (Linux uses the VRAM GPA).
    pub user_ctx: U64,
    /// 1 when `vram_gpa` is valid.
    pub is_vram_gpa_specified: u8,
    /// Guest physical address of VRAM.
    pub vram_gpa: U64,
}

/// `struct synthvid_vram_location_ack {u64 user_ctx;}`; also the layout of
/// `synthvid_situation_update_ack`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct UserCtxAck {
    /// Echo of the request's `user_ctx`.
    pub user_ctx: U64,
}

/// `struct video_output_situation {u8 active; u32 vram_offset; u8 depth_bits;
/// u32 width_pixels; u32 height_pixels; u32 pitch_bytes;}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct OutputSituation {
    /// 1 = active.
    pub active: u8,
    /// Offset of the output in VRAM.
    pub vram_offset: U32,
    /// Bits per pixel.
    pub depth_bits: u8,
    /// Width in pixels.
    pub width_pixels: U32,
    /// Height in pixels.
    pub height_pixels: U32,
    /// Bytes per line.
    pub pitch_bytes: U32,
}

/// `struct synthvid_situation_update {u64 user_ctx; u8 video_output_count;
/// struct video_output_situation video_output[1];}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SituationUpdate {
    /// Context (Linux sends 0).
    pub user_ctx: U64,
    /// Number of outputs (1).
    pub video_output_count: u8,
    /// The output.
    pub output: OutputSituation,
}

/// `struct synthvid_pointer_position {u8 is_visible; u8 video_output; s32 image_x; s32 image_y;}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PointerPosition {
    /// Visible flag.
    pub is_visible: u8,
    /// Output index.
    pub video_output: u8,
    /// X.
    pub image_x: I32,
    /// Y.
    pub image_y: I32,
}

/// `struct synthvid_pointer_shape {u8 part_idx; u8 is_argb; u32 width; u32 height; u32 hot_x;
/// u32 hot_y; u8 data[4];}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PointerShape {
    /// Part index (`CURSOR_COMPLETE` = -1 for a single-part shape).
    pub part_idx: u8,
    /// 1 = ARGB.
    pub is_argb: u8,
    /// Width.
    pub width: U32,
    /// Height.
    pub height: U32,
    /// Hot spot X.
    pub hot_x: U32,
    /// Hot spot Y.
    pub hot_y: U32,
    /// First pixel (Linux sends one transparent 1x1 pixel).
    pub data: [u8; 4],
}

/// `struct synthvid_feature_change {u8 is_dirt_needed; u8 is_ptr_pos_needed;
/// u8 is_ptr_shape_needed; u8 is_situ_needed;}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct FeatureChange {
    /// Host wants DIRT rectangles.
    pub is_dirt_needed: u8,
    /// Host wants pointer positions.
    pub is_ptr_pos_needed: u8,
    /// Host wants pointer shapes.
    pub is_ptr_shape_needed: u8,
    /// Host wants a situation update.
    pub is_situ_needed: u8,
}

/// `struct rect {s32 x1, y1; s32 x2, y2;}` (hyperv_fb.c), x2/y2 exclusive.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct WireRect {
    /// Left.
    pub x1: I32,
    /// Top.
    pub y1: I32,
    /// Right (exclusive).
    pub x2: I32,
    /// Bottom (exclusive).
    pub y2: I32,
}

/// `struct synthvid_dirt {u8 video_output; u8 dirt_count; struct rect rect[1];}`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Dirt {
    /// Output index (0).
    pub video_output: u8,
    /// Number of rectangles (1).
    pub dirt_count: u8,
    /// The rectangle.
    pub rect: WireRect,
}

const _: () = assert!(core::mem::size_of::<PipeHeader>() == 8);
const _: () = assert!(core::mem::size_of::<MsgHeader>() == 8);
const _: () = assert!(core::mem::size_of::<VersionReq>() == 4);
const _: () = assert!(core::mem::size_of::<VersionResp>() == 6);
const _: () = assert!(core::mem::size_of::<VramLocation>() == 17);
const _: () = assert!(core::mem::size_of::<UserCtxAck>() == 8);
const _: () = assert!(core::mem::size_of::<OutputSituation>() == 18);
const _: () = assert!(core::mem::size_of::<SituationUpdate>() == 27);
const _: () = assert!(core::mem::size_of::<PointerPosition>() == 10);
const _: () = assert!(core::mem::size_of::<PointerShape>() == 22);
const _: () = assert!(core::mem::size_of::<FeatureChange>() == 4);
const _: () = assert!(core::mem::size_of::<WireRect>() == 16);
const _: () = assert!(core::mem::size_of::<Dirt>() == 18);

/// Bytes of pipe header + synthvid header in front of every body.
pub const HEADERS_LEN: usize = 16;
/// Bytes of `synthvid_supported_resolution_resp` before the resolution array.
pub const RESOLUTION_RESP_FIXED: usize = EDID_BLOCK_SIZE + 3;
/// Largest message body (a full `synthvid_supported_resolution_resp`: 131 + 64 * 4).
pub const MAX_BODY: usize = RESOLUTION_RESP_FIXED + 4 * MAX_RESOLUTION_COUNT;
/// Largest message this driver emits or parses into a [`Message`].
pub const MAX_MESSAGE: usize = HEADERS_LEN + MAX_BODY;

/// How a sender fills `synthvid_msg_hdr.size`. Receivers must accept both (see
/// [`Message::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeForm {
    /// Header plus payload: Linux `hyperv_fb.c` / `hyperv_drm` `synthvid_send`, and what the
    /// guest sends.
    HeaderAndPayload,
    /// Payload only: OpenVMM `vm/devices/uidevices/src/video/mod.rs` `send_packet`
    /// (`size: size_of_val(packet)`).
    PayloadOnly,
}

/// A rectangle, x2/y2 exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x1: i32,
    /// Top.
    pub y1: i32,
    /// Right (exclusive).
    pub x2: i32,
    /// Bottom (exclusive).
    pub y2: i32,
}

/// One video output's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// Active flag.
    pub active: bool,
    /// Offset in VRAM.
    pub vram_offset: u32,
    /// Bits per pixel.
    pub depth_bits: u8,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Bytes per line.
    pub pitch: u32,
}

/// A parsed synthvid message (the Repr layer).
// The resolution list makes one variant ~260 bytes; there is no allocator to box it in, and
// messages are short-lived stack values.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// `VERSION_REQUEST`.
    VersionRequest {
        /// Version word.
        version: u32,
    },
    /// `VERSION_RESPONSE`.
    VersionResponse {
        /// Version word.
        version: u32,
        /// Accepted.
        accepted: bool,
        /// Output count.
        max_video_outputs: u8,
    },
    /// `VRAM_LOCATION`.
    VramLocation {
        /// Context echoed by the ack.
        user_ctx: u64,
        /// GPA, if specified.
        vram_gpa: Option<u64>,
    },
    /// `VRAM_LOCATION_ACK`.
    VramLocationAck {
        /// Echoed context.
        user_ctx: u64,
    },
    /// `SITUATION_UPDATE` with one output.
    SituationUpdate {
        /// Context.
        user_ctx: u64,
        /// Output count as sent.
        count: u8,
        /// First output.
        output: Situation,
    },
    /// `SITUATION_UPDATE_ACK`.
    SituationUpdateAck {
        /// Echoed context.
        user_ctx: u64,
    },
    /// `POINTER_POSITION`.
    PointerPosition {
        /// Visible.
        visible: bool,
        /// Output.
        video_output: u8,
        /// X.
        x: i32,
        /// Y.
        y: i32,
    },
    /// `POINTER_SHAPE` (single part).
    PointerShape {
        /// Part index.
        part_idx: u8,
        /// ARGB flag.
        argb: bool,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Hot spot.
        hot_x: u32,
        /// Hot spot.
        hot_y: u32,
        /// First pixel.
        data: [u8; 4],
    },
    /// `FEATURE_CHANGE`.
    FeatureChange {
        /// DIRT wanted.
        dirt_needed: bool,
        /// Pointer position wanted.
        ptr_pos_needed: bool,
        /// Pointer shape wanted.
        ptr_shape_needed: bool,
        /// Situation update wanted.
        situ_needed: bool,
    },
    /// `DIRT` (first rectangle; `count` says how many the sender claimed).
    Dirt {
        /// Output.
        video_output: u8,
        /// Rectangle count as sent.
        count: u8,
        /// First rectangle.
        rect: Rect,
    },
    /// `RESOLUTION_REQUEST` (`struct synthvid_supported_resolution_req {u8
    /// maximum_resolution_count;}`), WIN10 and later.
    ResolutionRequest {
        /// Most resolutions wanted (Linux: `SYNTHVID_MAX_RESOLUTION_COUNT`).
        max_count: u8,
    },
    /// `RESOLUTION_RESPONSE` (`struct synthvid_supported_resolution_resp {u8 edid_block[128];
    /// u8 resolution_count; u8 default_resolution_index; u8 is_standard;
    /// struct hvd_screen_info {u16 width; u16 height;} supported_resolution[64];}`).
    ResolutionResponse(Resolutions),
    /// A type this driver does not interpret (open enum): ERROR, future ones.
    Other {
        /// The type.
        ty: MsgType,
    },
}

/// The host's supported resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolutions {
    /// Number of valid entries in `list`.
    pub count: u8,
    /// Index of the host's preferred resolution.
    pub default_index: u8,
    /// `is_standard` as sent.
    pub is_standard: u8,
    /// `(width, height)` pairs; entries past `count` are zero.
    pub list: [(u16, u16); MAX_RESOLUTION_COUNT],
}

impl Resolutions {
    /// The valid entries.
    pub fn as_slice(&self) -> &[(u16, u16)] {
        &self.list[..usize::from(self.count).min(MAX_RESOLUTION_COUNT)]
    }
    /// The host's preferred resolution, if the index is valid (hyperv_fb.c rejects an index
    /// at or past the count).
    pub fn preferred(&self) -> Option<(u16, u16)> {
        self.as_slice()
            .get(usize::from(self.default_index))
            .copied()
    }
    /// The largest width and height offered (hyperv_fb.c `screen_width_max` /
    /// `screen_height_max`).
    pub fn max(&self) -> (u16, u16) {
        self.as_slice()
            .iter()
            .fold((0, 0), |(w, h), &(a, b)| (w.max(a), h.max(b)))
    }
}

/// Why a synthvid message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Shorter than the headers or than its declared size.
    #[error("synthvid message truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The pipe header's type is not `PIPE_MSG_DATA`.
    #[error("pipe message type {0} is not PIPE_MSG_DATA")]
    BadPipeType(u32),
    /// The output buffer is too small for the message.
    #[error("buffer too small for synthvid message")]
    BufferTooSmall,
    /// A resolution response claiming more than `SYNTHVID_MAX_RESOLUTION_COUNT` entries.
    #[error("resolution response claims {0} resolutions (at most 64)")]
    TooManyResolutions(u8),
}

fn body<T: FromBytes + KnownLayout + Immutable + Copy>(b: &[u8]) -> Result<T, WireError> {
    T::read_from_prefix(b)
        .map(|(v, _)| v)
        .map_err(|_| WireError::Truncated {
            have: HEADERS_LEN + b.len(),
            need: HEADERS_LEN + core::mem::size_of::<T>(),
        })
}

impl Message {
    /// The `synthvid_msg_type` of this message.
    pub fn ty(&self) -> MsgType {
        match self {
            Message::VersionRequest { .. } => MsgType::VERSION_REQUEST,
            Message::VersionResponse { .. } => MsgType::VERSION_RESPONSE,
            Message::VramLocation { .. } => MsgType::VRAM_LOCATION,
            Message::VramLocationAck { .. } => MsgType::VRAM_LOCATION_ACK,
            Message::SituationUpdate { .. } => MsgType::SITUATION_UPDATE,
            Message::SituationUpdateAck { .. } => MsgType::SITUATION_UPDATE_ACK,
            Message::PointerPosition { .. } => MsgType::POINTER_POSITION,
            Message::PointerShape { .. } => MsgType::POINTER_SHAPE,
            Message::FeatureChange { .. } => MsgType::FEATURE_CHANGE,
            Message::Dirt { .. } => MsgType::DIRT,
            Message::ResolutionRequest { .. } => MsgType::RESOLUTION_REQUEST,
            Message::ResolutionResponse(_) => MsgType::RESOLUTION_RESPONSE,
            Message::Other { ty } => *ty,
        }
    }

    /// Parses one in-band packet payload (pipe header first). Liberal in what it accepts
    /// (decisions and sources in `vmbus/API.md`):
    /// - the pipe type must be `PIPE_MSG_DATA` (Linux `synthvid_receive` skips others);
    /// - the pipe size bounds the message when it fits the packet; a pipe size larger than
    ///   the packet, or too small for the synthvid header, is ignored and the packet's own
    ///   length is used (Linux reads neither size);
    /// - the synthvid header's `size` is not checked: Linux writes header + payload and never
    ///   reads it, OpenVMM writes the payload only ([`SizeForm`]);
    /// - the body must be long enough for its type. Unknown types parse as
    ///   [`Message::Other`].
    pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
        let (pipe, rest) = PipeHeader::read_from_prefix(buf).map_err(|_| WireError::Truncated {
            have: buf.len(),
            need: HEADERS_LEN,
        })?;
        if pipe.ty.get() != PIPE_MSG_DATA {
            return Err(WireError::BadPipeType(pipe.ty.get()));
        }
        let (hdr, _) = MsgHeader::read_from_prefix(rest).map_err(|_| WireError::Truncated {
            have: buf.len(),
            need: HEADERS_LEN,
        })?;
        let pipe_size = pipe.size.get() as usize;
        let end = if (8..=rest.len()).contains(&pipe_size) {
            pipe_size
        } else {
            rest.len()
        };
        let b = &rest[8..end];
        Ok(match MsgType(hdr.ty.get()) {
            MsgType::VERSION_REQUEST => {
                let v: VersionReq = body(b)?;
                Message::VersionRequest {
                    version: v.version.get(),
                }
            }
            MsgType::VERSION_RESPONSE => {
                let v: VersionResp = body(b)?;
                Message::VersionResponse {
                    version: v.version.get(),
                    accepted: v.is_accepted != 0,
                    max_video_outputs: v.max_video_outputs,
                }
            }
            MsgType::VRAM_LOCATION => {
                let v: VramLocation = body(b)?;
                Message::VramLocation {
                    user_ctx: v.user_ctx.get(),
                    vram_gpa: (v.is_vram_gpa_specified != 0).then(|| v.vram_gpa.get()),
                }
            }
            MsgType::VRAM_LOCATION_ACK => {
                let v: UserCtxAck = body(b)?;
                Message::VramLocationAck {
                    user_ctx: v.user_ctx.get(),
                }
            }
            MsgType::SITUATION_UPDATE => {
                let v: SituationUpdate = body(b)?;
                let o = v.output;
                Message::SituationUpdate {
                    user_ctx: v.user_ctx.get(),
                    count: v.video_output_count,
                    output: Situation {
                        active: o.active != 0,
                        vram_offset: o.vram_offset.get(),
                        depth_bits: o.depth_bits,
                        width: o.width_pixels.get(),
                        height: o.height_pixels.get(),
                        pitch: o.pitch_bytes.get(),
                    },
                }
            }
            MsgType::SITUATION_UPDATE_ACK => {
                let v: UserCtxAck = body(b)?;
                Message::SituationUpdateAck {
                    user_ctx: v.user_ctx.get(),
                }
            }
            MsgType::POINTER_POSITION => {
                let v: PointerPosition = body(b)?;
                Message::PointerPosition {
                    visible: v.is_visible != 0,
                    video_output: v.video_output,
                    x: v.image_x.get(),
                    y: v.image_y.get(),
                }
            }
            MsgType::POINTER_SHAPE => {
                let v: PointerShape = body(b)?;
                Message::PointerShape {
                    part_idx: v.part_idx,
                    argb: v.is_argb != 0,
                    width: v.width.get(),
                    height: v.height.get(),
                    hot_x: v.hot_x.get(),
                    hot_y: v.hot_y.get(),
                    data: v.data,
                }
            }
            MsgType::FEATURE_CHANGE => {
                let v: FeatureChange = body(b)?;
                Message::FeatureChange {
                    dirt_needed: v.is_dirt_needed != 0,
                    ptr_pos_needed: v.is_ptr_pos_needed != 0,
                    ptr_shape_needed: v.is_ptr_shape_needed != 0,
                    situ_needed: v.is_situ_needed != 0,
                }
            }
            MsgType::DIRT => {
                let v: Dirt = body(b)?;
                Message::Dirt {
                    video_output: v.video_output,
                    count: v.dirt_count,
                    rect: Rect {
                        x1: v.rect.x1.get(),
                        y1: v.rect.y1.get(),
                        x2: v.rect.x2.get(),
                        y2: v.rect.y2.get(),
                    },
                }
            }
            MsgType::RESOLUTION_REQUEST => match b.first() {
                Some(&max_count) => Message::ResolutionRequest { max_count },
                None => {
                    return Err(WireError::Truncated {
                        have: buf.len(),
                        need: HEADERS_LEN + 1,
                    })
                }
            },
            MsgType::RESOLUTION_RESPONSE => {
                if b.len() < RESOLUTION_RESP_FIXED {
                    return Err(WireError::Truncated {
                        have: HEADERS_LEN + b.len(),
                        need: HEADERS_LEN + RESOLUTION_RESP_FIXED,
                    });
                }
                let count = b[EDID_BLOCK_SIZE];
                if usize::from(count) > MAX_RESOLUTION_COUNT {
                    return Err(WireError::TooManyResolutions(count));
                }
                let need = RESOLUTION_RESP_FIXED + 4 * usize::from(count);
                if b.len() < need {
                    return Err(WireError::Truncated {
                        have: HEADERS_LEN + b.len(),
                        need: HEADERS_LEN + need,
                    });
                }
                let mut list = [(0u16, 0u16); MAX_RESOLUTION_COUNT];
                for (i, e) in list.iter_mut().take(usize::from(count)).enumerate() {
                    let o = RESOLUTION_RESP_FIXED + 4 * i;
                    *e = (
                        u16::from_le_bytes([b[o], b[o + 1]]),
                        u16::from_le_bytes([b[o + 2], b[o + 3]]),
                    );
                }
                Message::ResolutionResponse(Resolutions {
                    count,
                    default_index: b[EDID_BLOCK_SIZE + 1],
                    is_standard: b[EDID_BLOCK_SIZE + 2],
                    list,
                })
            }
            ty => Message::Other { ty },
        })
    }

    /// Emits the message (pipe header, synthvid header, body) into `out`; returns its length.
    /// Sizes follow `synthvid_send()` in hyperv_fb.c: `vid_hdr.size = sizeof(hdr) +
    /// sizeof(body)`, `pipe_hdr.size = vid_hdr.size`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        self.emit_with(out, SizeForm::HeaderAndPayload)
    }

    /// Emits the message with the synthvid header's `size` in the given form (the pipe
    /// header's size is header + payload in both: Linux `pipe_hdr.size = vid_hdr.size`,
    /// OpenVMM's message pipe `len` = the whole message).
    pub fn emit_with(&self, out: &mut [u8], form: SizeForm) -> Result<usize, WireError> {
        let mut body_buf = [0u8; MAX_BODY];
        let body_len = match *self {
            Message::VersionRequest { version } => put(
                &mut body_buf,
                &VersionReq {
                    version: version.into(),
                },
            ),
            Message::VersionResponse {
                version,
                accepted,
                max_video_outputs,
            } => put(
                &mut body_buf,
                &VersionResp {
                    version: version.into(),
                    is_accepted: accepted.into(),
                    max_video_outputs,
                },
            ),
            Message::VramLocation { user_ctx, vram_gpa } => put(
                &mut body_buf,
                &VramLocation {
                    user_ctx: user_ctx.into(),
                    is_vram_gpa_specified: vram_gpa.is_some().into(),
                    vram_gpa: vram_gpa.unwrap_or(0).into(),
                },
            ),
            Message::VramLocationAck { user_ctx } | Message::SituationUpdateAck { user_ctx } => {
                put(
                    &mut body_buf,
                    &UserCtxAck {
                        user_ctx: user_ctx.into(),
                    },
                )
            }
            Message::SituationUpdate {
                user_ctx,
                count,
                output,
            } => put(
                &mut body_buf,
                &SituationUpdate {
                    user_ctx: user_ctx.into(),
                    video_output_count: count,
                    output: OutputSituation {
                        active: output.active.into(),
                        vram_offset: output.vram_offset.into(),
                        depth_bits: output.depth_bits,
                        width_pixels: output.width.into(),
                        height_pixels: output.height.into(),
                        pitch_bytes: output.pitch.into(),
                    },
                },
            ),
            Message::PointerPosition {
                visible,
                video_output,
                x,
                y,
            } => put(
                &mut body_buf,
                &PointerPosition {
                    is_visible: visible.into(),
                    video_output,
                    image_x: x.into(),
                    image_y: y.into(),
                },
            ),
            Message::PointerShape {
                part_idx,
                argb,
                width,
                height,
                hot_x,
                hot_y,
                data,
            } => put(
                &mut body_buf,
                &PointerShape {
                    part_idx,
                    is_argb: argb.into(),
                    width: width.into(),
                    height: height.into(),
                    hot_x: hot_x.into(),
                    hot_y: hot_y.into(),
                    data,
                },
            ),
            Message::FeatureChange {
                dirt_needed,
                ptr_pos_needed,
                ptr_shape_needed,
                situ_needed,
            } => put(
                &mut body_buf,
                &FeatureChange {
                    is_dirt_needed: dirt_needed.into(),
                    is_ptr_pos_needed: ptr_pos_needed.into(),
                    is_ptr_shape_needed: ptr_shape_needed.into(),
                    is_situ_needed: situ_needed.into(),
                },
            ),
            Message::Dirt {
                video_output,
                count,
                rect,
            } => put(
                &mut body_buf,
                &Dirt {
                    video_output,
                    dirt_count: count,
                    rect: WireRect {
                        x1: rect.x1.into(),
                        y1: rect.y1.into(),
                        x2: rect.x2.into(),
                        y2: rect.y2.into(),
                    },
                },
            ),
            Message::ResolutionRequest { max_count } => {
                body_buf[0] = max_count;
                1
            }
            Message::ResolutionResponse(r) => {
                // The full struct, as the host sends it (EDID block left zero).
                body_buf[EDID_BLOCK_SIZE] = r.count;
                body_buf[EDID_BLOCK_SIZE + 1] = r.default_index;
                body_buf[EDID_BLOCK_SIZE + 2] = r.is_standard;
                for (i, &(w, h)) in r.list.iter().enumerate() {
                    let o = RESOLUTION_RESP_FIXED + 4 * i;
                    body_buf[o..o + 2].copy_from_slice(&w.to_le_bytes());
                    body_buf[o + 2..o + 4].copy_from_slice(&h.to_le_bytes());
                }
                MAX_BODY
            }
            Message::Other { .. } => 0,
        };
        let total = HEADERS_LEN + body_len;
        if out.len() < total {
            return Err(WireError::BufferTooSmall);
        }
        let vid_size = match form {
            SizeForm::HeaderAndPayload => (8 + body_len) as u32,
            SizeForm::PayloadOnly => body_len as u32,
        };
        let pipe = PipeHeader {
            ty: PIPE_MSG_DATA.into(),
            size: ((8 + body_len) as u32).into(),
        };
        let hdr = MsgHeader {
            ty: self.ty().0.into(),
            size: vid_size.into(),
        };
        out[..8].copy_from_slice(pipe.as_bytes());
        out[8..16].copy_from_slice(hdr.as_bytes());
        out[16..total].copy_from_slice(&body_buf[..body_len]);
        Ok(total)
    }
}

fn put<T: IntoBytes + Immutable>(buf: &mut [u8; MAX_BODY], v: &T) -> usize {
    let b = v.as_bytes();
    buf[..b.len()].copy_from_slice(b);
    b.len()
}
