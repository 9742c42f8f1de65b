//! Host model of synthvid: answers the handshake, tracks VRAM, the mode and the dirty
//! rectangles, and writes the screen as a PNG.
//!
//! Behaviour follows what the Linux drivers expect of the host (`hyperv_fb.c`): a
//! VERSION_RESPONSE per VERSION_REQUEST, a VRAM_LOCATION_ACK echoing `user_ctx`, and a
//! FEATURE_CHANGE (here sent after the situation update, with the configured
//! `is_dirt_needed`).

use std::sync::{Arc, Mutex};

use vmbus::ring::PacketType;
use vmbus::synthvid::wire::{Message, Rect, Situation, SizeForm};

use crate::synthvid_link::{HostDevice, HostIo, HostPacket, SimMemory};

/// Host configuration.
#[derive(Debug, Clone)]
pub struct SynthvidHostConfig {
    /// Versions the host accepts.
    pub accept_versions: Vec<u32>,
    /// `is_dirt_needed` in the FEATURE_CHANGE sent after the situation update; `None` sends
    /// no FEATURE_CHANGE at all.
    pub dirt_needed: Option<bool>,
    /// Resolutions offered in RESOLUTION_RESPONSE.
    pub resolutions: Vec<(u16, u16)>,
    /// `default_resolution_index` sent.
    pub default_resolution: u8,
    /// How the host fills the synthvid header's `size` (OpenVMM: payload only).
    pub size_form: SizeForm,
    /// Accept every version with major 3 (OpenVMM `video/mod.rs`: `version.major ==
    /// server_version.major`) instead of only `accept_versions`.
    pub accept_any_minor: bool,
    /// `is_accepted` value of an accepting VERSION_RESPONSE (OpenVMM: 2,
    /// `ACCEPTED_WITH_VERSION_EXCHANGE`; Linux only tests it for non-zero).
    pub accepted_value: u8,
    /// Answer each SITUATION_UPDATE with a SITUATION_UPDATE_ACK (OpenVMM does).
    pub situation_ack: bool,
    /// Send an empty resolution list unless the request asks for all 64 (OpenVMM:
    /// `maximum_count < MAXIMUM_RESOLUTIONS_COUNT` gets `resolution_count: 0`).
    pub resolutions_need_64: bool,
}

impl Default for SynthvidHostConfig {
    fn default() -> Self {
        SynthvidHostConfig {
            accept_versions: vec![
                vmbus::synthvid::wire::VERSION_WIN10,
                vmbus::synthvid::wire::VERSION_WIN8,
            ],
            dirt_needed: Some(true),
            resolutions: vec![(1024, 768), (1152, 864), (1280, 1024), (1920, 1080)],
            default_resolution: 1,
            size_form: SizeForm::HeaderAndPayload,
            accept_any_minor: false,
            accepted_value: 1,
            situation_ack: false,
            resolutions_need_64: false,
        }
    }
}

impl SynthvidHostConfig {
    /// The defaults of the host `p` models.
    ///
    /// OpenVMM (`vm/devices/uidevices/src/video/mod.rs`): payload-only header sizes, any 3.x
    /// version accepted with `is_accepted = 2`, a SITUATION_UPDATE_ACK per update, no
    /// FEATURE_CHANGE ever (it reads VRAM itself, so the guest never sends DIRT), and two
    /// resolutions (1024x768, 1280x1024, default index 0). Hyper-V and the QEMU-like host
    /// (QEMU has no synthvid device; the model stands in for one) behave like the host Linux
    /// `hyperv_fb.c` is written against: header + payload sizes, FEATURE_CHANGE with
    /// `is_dirt_needed` after the situation update.
    pub fn for_personality(p: crate::Personality) -> Self {
        match p {
            crate::Personality::OpenVmm => SynthvidHostConfig {
                dirt_needed: None,
                resolutions: vec![(1024, 768), (1280, 1024)],
                default_resolution: 0,
                size_form: SizeForm::PayloadOnly,
                accept_any_minor: true,
                accepted_value: 2,
                situation_ack: true,
                resolutions_need_64: true,
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

/// What the host has seen.
#[derive(Debug, Clone, Default)]
pub struct SynthvidState {
    /// Every message from the guest, in order.
    pub received: Vec<Message>,
    /// Messages that failed to parse.
    pub rejected: usize,
    /// Version requests seen.
    pub version_requests: Vec<u32>,
    /// Accepted version.
    pub version: Option<u32>,
    /// VRAM GPA.
    pub vram_gpa: Option<u64>,
    /// Current mode.
    pub situation: Option<Situation>,
    /// DIRT rectangles received.
    pub dirt: Vec<Rect>,
}

/// The host model; clone the handle to inspect it.
#[derive(Clone)]
pub struct SynthvidHost {
    cfg: SynthvidHostConfig,
    state: Arc<Mutex<SynthvidState>>,
    mem: Option<SimMemory>,
}

impl SynthvidHost {
    /// A host reading VRAM from `mem`.
    pub fn new(cfg: SynthvidHostConfig, mem: SimMemory) -> Self {
        SynthvidHost {
            cfg,
            state: Arc::new(Mutex::new(SynthvidState::default())),
            mem: Some(mem),
        }
    }
    /// A host whose VRAM is read through [`Self::screen_rgb_with`] (e.g. the core sim's
    /// guest memory).
    pub fn without_memory(cfg: SynthvidHostConfig) -> Self {
        SynthvidHost {
            cfg,
            state: Arc::new(Mutex::new(SynthvidState::default())),
            mem: None,
        }
    }
    /// A snapshot of the state.
    pub fn state(&self) -> SynthvidState {
        self.state.lock().unwrap().clone()
    }

    /// Sends a FEATURE_CHANGE (through [`crate::synthvid_link::Link::inject`]).
    pub fn send_feature_change(io: &mut HostIo<'_>, dirt_needed: bool, situ_needed: bool) {
        let mut b = [0u8; 64];
        let n = Message::FeatureChange {
            dirt_needed,
            ptr_pos_needed: false,
            ptr_shape_needed: false,
            situ_needed,
        }
        .emit(&mut b)
        .unwrap();
        io.send_inband(&b[..n]).unwrap();
    }

    /// The current screen as RGB8 rows (`width * height * 3` bytes), VRAM read from this
    /// host's [`SimMemory`].
    pub fn screen_rgb(&self) -> Option<(u32, u32, Vec<u8>)> {
        let mem = self.mem.clone()?;
        self.screen_rgb_with(&|gpa, buf| mem.read(gpa, buf).is_ok())
    }

    /// The current screen, VRAM read through `read(gpa, buf) -> ok`.
    pub fn screen_rgb_with(
        &self,
        read: &dyn Fn(u64, &mut [u8]) -> bool,
    ) -> Option<(u32, u32, Vec<u8>)> {
        let st = self.state.lock().unwrap();
        let (gpa, s) = (st.vram_gpa?, st.situation?);
        drop(st);
        let mut out = Vec::with_capacity((s.width * s.height * 3) as usize);
        let mut line = vec![0u8; s.width as usize * 4];
        for y in 0..s.height as u64 {
            let at = gpa + u64::from(s.vram_offset) + y * u64::from(s.pitch);
            if !read(at, &mut line) {
                return None;
            }
            for px in line.chunks_exact(4) {
                // 32 bpp little-endian 0x00RRGGBB: bytes B, G, R, X.
                out.extend([px[2], px[1], px[0]]);
            }
        }
        Some((s.width, s.height, out))
    }

    /// Encodes RGB8 rows as a PNG.
    pub fn encode_png(w: u32, h: u32, rgb: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().ok()?;
            wr.write_image_data(rgb).ok()?;
        }
        Some(out)
    }

    /// The current screen as a PNG.
    pub fn screen_png(&self) -> Option<Vec<u8>> {
        let (w, h, rgb) = self.screen_rgb()?;
        Self::encode_png(w, h, &rgb)
    }

    fn reply(&self, io: &mut HostIo<'_>, m: Message) {
        let mut b = [0u8; vmbus::synthvid::wire::MAX_MESSAGE];
        let n = m
            .emit_with(&mut b, self.cfg.size_form)
            .expect("host message fits");
        if self.cfg.accepted_value > 1 {
            if let Message::VersionResponse { accepted: true, .. } = m {
                // is_accepted is the byte after the 4-byte version (hyperv_fb.c
                // synthvid_version_resp).
                b[16 + 4] = self.cfg.accepted_value;
            }
        }
        // A full ring (a guest that stopped reading, or chaos duplicates) loses the reply,
        // as a host that gives up on a stuck guest would; the guest's wait times out.
        if let Err(e) = io.send_inband(&b[..n]) {
            log::debug!("synthvid host: reply lost: {e}");
        }
    }
}

impl HostDevice for SynthvidHost {
    fn on_packet(&mut self, io: &mut HostIo<'_>, pkt: &HostPacket) {
        if pkt.kind != PacketType::DATA_INBAND.0 {
            self.state.lock().unwrap().rejected += 1;
            return;
        }
        let msg = match Message::parse(&pkt.payload) {
            Ok(m) => m,
            Err(_) => {
                self.state.lock().unwrap().rejected += 1;
                return;
            }
        };
        let mut st = self.state.lock().unwrap();
        st.received.push(msg);
        match msg {
            Message::VersionRequest { version } => {
                st.version_requests.push(version);
                let accepted = if self.cfg.accept_any_minor {
                    version & 0xFFFF == 3
                } else {
                    self.cfg.accept_versions.contains(&version)
                };
                if accepted {
                    st.version = Some(version);
                }
                drop(st);
                self.reply(
                    io,
                    Message::VersionResponse {
                        version,
                        accepted,
                        max_video_outputs: 1,
                    },
                );
            }
            Message::VramLocation { user_ctx, vram_gpa } => {
                st.vram_gpa = vram_gpa;
                drop(st);
                self.reply(io, Message::VramLocationAck { user_ctx });
            }
            Message::SituationUpdate {
                output, user_ctx, ..
            } => {
                st.situation = Some(output);
                drop(st);
                if self.cfg.situation_ack {
                    self.reply(io, Message::SituationUpdateAck { user_ctx });
                }
                if let Some(d) = self.cfg.dirt_needed {
                    Self::send_feature_change(io, d, false);
                }
            }
            Message::Dirt { rect, .. } => st.dirt.push(rect),
            Message::ResolutionRequest { max_count } => {
                drop(st);
                let mut list = [(0u16, 0u16); vmbus::synthvid::wire::MAX_RESOLUTION_COUNT];
                let n = if self.cfg.resolutions_need_64
                    && usize::from(max_count) < vmbus::synthvid::wire::MAX_RESOLUTION_COUNT
                {
                    0
                } else {
                    self.cfg
                        .resolutions
                        .len()
                        .min(usize::from(max_count))
                        .min(list.len())
                };
                list[..n].copy_from_slice(&self.cfg.resolutions[..n]);
                self.reply(
                    io,
                    Message::ResolutionResponse(vmbus::synthvid::Resolutions {
                        count: n as u8,
                        default_index: self.cfg.default_resolution,
                        is_standard: 0,
                        list,
                    }),
                );
            }
            _ => {}
        }
    }
}
