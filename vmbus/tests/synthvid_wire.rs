//! Golden bytes for synthvid messages. Expected layouts: the `__packed` structs of Linux
//! `drivers/video/fbdev/hyperv_fb.c` (pipe_msg_hdr, synthvid_msg_hdr, synthvid_*), with
//! sizes set as `synthvid_send()` does (vid_hdr.size = 8 + body, pipe_hdr.size = vid_hdr.size).

use vmbus::synthvid::wire::{self, Message, MsgType, Rect, Situation, SizeForm, WireError};

fn emit(m: Message) -> Vec<u8> {
    let mut b = [0u8; wire::MAX_MESSAGE];
    let n = m.emit(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn version_request_win10_is_byte_exact() {
    let b = emit(Message::VersionRequest {
        version: wire::VERSION_WIN10,
    });
    #[rustfmt::skip]
    let want = [
        0x01, 0, 0, 0,  0x0c, 0, 0, 0,   // pipe_msg_hdr: PIPE_MSG_DATA, size 12
        0x01, 0, 0, 0,  0x0c, 0, 0, 0,   // synthvid_msg_hdr: VERSION_REQUEST, 8 + 4
        0x03, 0x00, 0x05, 0x00,          // SYNTHVID_VERSION(3, 5) = (5 << 16) | 3
    ];
    assert_eq!(b, want);
    assert_eq!(wire::VERSION_WIN8, 0x0002_0003);
}

#[test]
fn vram_location_is_byte_exact() {
    let b = emit(Message::VramLocation {
        user_ctx: 0xf800_0000,
        vram_gpa: Some(0xf800_0000),
    });
    #[rustfmt::skip]
    let want = [
        0x01, 0, 0, 0,  0x19, 0, 0, 0,   // pipe: size 8 + 17
        0x03, 0, 0, 0,  0x19, 0, 0, 0,   // VRAM_LOCATION
        0, 0, 0, 0xf8, 0, 0, 0, 0,       // u64 user_ctx
        0x01,                            // u8 is_vram_gpa_specified (packed: no padding)
        0, 0, 0, 0xf8, 0, 0, 0, 0,       // u64 vram_gpa at offset 9 of the body
    ];
    assert_eq!(b, want);
}

#[test]
fn situation_update_is_byte_exact() {
    let b = emit(Message::SituationUpdate {
        user_ctx: 0,
        count: 1,
        output: Situation {
            active: true,
            vram_offset: 0,
            depth_bits: 32,
            width: 1152,
            height: 864,
            pitch: 4608,
        },
    });
    #[rustfmt::skip]
    let want = [
        0x01, 0, 0, 0,  0x23, 0, 0, 0,   // pipe: size 8 + 27
        0x05, 0, 0, 0,  0x23, 0, 0, 0,   // SITUATION_UPDATE
        0, 0, 0, 0, 0, 0, 0, 0,          // u64 user_ctx
        0x01,                            // u8 video_output_count
        0x01,                            // video_output_situation: u8 active
        0, 0, 0, 0,                      //   u32 vram_offset
        0x20,                            //   u8 depth_bits
        0x80, 0x04, 0, 0,                //   u32 width_pixels 1152
        0x60, 0x03, 0, 0,                //   u32 height_pixels 864
        0x00, 0x12, 0, 0,                //   u32 pitch_bytes 4608
    ];
    assert_eq!(b, want);
}

#[test]
fn dirt_is_byte_exact() {
    let b = emit(Message::Dirt {
        video_output: 0,
        count: 1,
        rect: Rect {
            x1: 0,
            y1: 0,
            x2: 1152,
            y2: 864,
        },
    });
    #[rustfmt::skip]
    let want = [
        0x01, 0, 0, 0,  0x1a, 0, 0, 0,   // pipe: size 8 + 18
        0x0a, 0, 0, 0,  0x1a, 0, 0, 0,   // DIRT (10)
        0x00, 0x01,                      // u8 video_output, u8 dirt_count
        0, 0, 0, 0,  0, 0, 0, 0,         // rect x1, y1 (s32)
        0x80, 0x04, 0, 0,  0x60, 0x03, 0, 0, // rect x2, y2
    ];
    assert_eq!(b, want);
}

#[test]
fn pointer_messages_are_byte_exact() {
    let b = emit(Message::PointerPosition {
        visible: true,
        video_output: 0,
        x: 0,
        y: 0,
    });
    // synthvid_pointer_position: u8 is_visible, u8 video_output, s32 x, s32 y = 10 bytes.
    assert_eq!(
        &b[..16],
        &[1, 0, 0, 0, 0x12, 0, 0, 0, 7, 0, 0, 0, 0x12, 0, 0, 0]
    );
    assert_eq!(&b[16..], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let b = emit(Message::PointerShape {
        part_idx: 0xff,
        argb: true,
        width: 1,
        height: 1,
        hot_x: 0,
        hot_y: 0,
        data: [0; 4],
    });
    // synthvid_pointer_shape: u8 part_idx, u8 is_argb, u32 w, h, hot_x, hot_y, u8 data[4] = 22.
    assert_eq!(b.len(), 16 + 22);
    assert_eq!(&b[8..16], &[8, 0, 0, 0, 30, 0, 0, 0]);
    assert_eq!(&b[16..26], &[0xff, 1, 1, 0, 0, 0, 1, 0, 0, 0]);
}

#[test]
fn feature_change_and_acks_parse_from_host_bytes() {
    #[rustfmt::skip]
    let fc = [
        0x01, 0, 0, 0,  0x0c, 0, 0, 0,
        0x09, 0, 0, 0,  0x0c, 0, 0, 0,
        0x01, 0x00, 0x00, 0x01,          // dirt, ptr_pos, ptr_shape, situ
    ];
    assert_eq!(
        Message::parse(&fc).unwrap(),
        Message::FeatureChange {
            dirt_needed: true,
            ptr_pos_needed: false,
            ptr_shape_needed: false,
            situ_needed: true
        }
    );
    #[rustfmt::skip]
    let resp = [
        0x01, 0, 0, 0,  0x0e, 0, 0, 0,
        0x02, 0, 0, 0,  0x0e, 0, 0, 0,
        0x03, 0x00, 0x02, 0x00,  0x00, 0x01,   // version 3.2, rejected, 1 output
    ];
    assert_eq!(
        Message::parse(&resp).unwrap(),
        Message::VersionResponse {
            version: wire::VERSION_WIN8,
            accepted: false,
            max_video_outputs: 1
        }
    );
}

#[test]
fn every_message_round_trips() {
    let msgs = [
        Message::VersionResponse {
            version: wire::VERSION_WIN10,
            accepted: true,
            max_video_outputs: 1,
        },
        Message::VramLocationAck { user_ctx: 42 },
        Message::SituationUpdateAck { user_ctx: 7 },
        Message::FeatureChange {
            dirt_needed: true,
            ptr_pos_needed: true,
            ptr_shape_needed: false,
            situ_needed: false,
        },
        Message::Dirt {
            video_output: 0,
            count: 1,
            rect: Rect {
                x1: -1,
                y1: 2,
                x2: 3,
                y2: 4,
            },
        },
    ];
    for m in msgs {
        assert_eq!(Message::parse(&emit(m)).unwrap(), m);
    }
}

#[test]
fn malformed_messages_are_rejected_with_a_reason() {
    let good = emit(Message::VersionRequest { version: 1 });
    // Too short for the headers.
    assert!(matches!(
        Message::parse(&good[..10]),
        Err(WireError::Truncated { .. })
    ));
    // Pipe type 2 (PIPE_MSG_MAX) is not data.
    let mut b = good.clone();
    b[0] = 2;
    assert_eq!(Message::parse(&b), Err(WireError::BadPipeType(2)));
    // A pipe size larger than the packet cannot be trusted: the packet's own length bounds
    // the message (Linux reads neither size), so a complete body still parses ...
    let mut b = good.clone();
    b[4] = 0xff;
    assert_eq!(
        Message::parse(&b),
        Ok(Message::VersionRequest { version: 1 })
    );
    // ... and an incomplete one is still truncated.
    assert!(matches!(
        Message::parse(&b[..18]),
        Err(WireError::Truncated { .. })
    ));
    // The synthvid header's size is not checked (Linux hyperv_fb.c never reads it; OpenVMM
    // counts the payload only, Linux writes header + payload).
    for size in [0u8, 4, 8, 12, 0xff] {
        let mut b = good.clone();
        b[12] = size;
        assert_eq!(
            Message::parse(&b),
            Ok(Message::VersionRequest { version: 1 }),
            "size {size}"
        );
    }
    // A DIRT whose declared size cuts the rectangle.
    let mut b = emit(Message::Dirt {
        video_output: 0,
        count: 1,
        rect: Rect {
            x1: 0,
            y1: 0,
            x2: 1,
            y2: 1,
        },
    });
    b[4] = 12;
    b[12] = 12;
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::Truncated { .. })
    ));
    // Unknown types are an open enum, not an error.
    let mut b = good.clone();
    b[8] = 99;
    assert_eq!(Message::parse(&b), Ok(Message::Other { ty: MsgType(99) }));
    // Every prefix of every message parses or fails cleanly (no panic).
    for len in 0..good.len() {
        let _ = Message::parse(&good[..len]);
    }
}

#[test]
fn resolution_request_and_response_follow_hyperv_fb() {
    // synthvid_supported_resolution_req {u8 maximum_resolution_count} = 1 byte.
    let b = emit(Message::ResolutionRequest { max_count: 64 });
    assert_eq!(b, [1, 0, 0, 0, 9, 0, 0, 0, 13, 0, 0, 0, 9, 0, 0, 0, 64]);
    // synthvid_supported_resolution_resp: edid_block[128], resolution_count,
    // default_resolution_index, is_standard, hvd_screen_info {u16 w, u16 h}[count].
    let mut body = vec![0u8; 128];
    body.extend([2, 1, 0]);
    body.extend([0x00, 0x04, 0x00, 0x03]); // 1024x768
    body.extend([0x80, 0x07, 0x38, 0x04]); // 1920x1080
    let size = (8 + body.len()) as u32;
    let mut m = Vec::new();
    m.extend(1u32.to_le_bytes());
    m.extend(size.to_le_bytes());
    m.extend(14u32.to_le_bytes());
    m.extend(size.to_le_bytes());
    m.extend(&body);
    match Message::parse(&m).unwrap() {
        Message::ResolutionResponse(r) => {
            assert_eq!(r.as_slice(), &[(1024, 768), (1920, 1080)]);
            assert_eq!(r.preferred(), Some((1920, 1080)));
        }
        other => panic!("{other:?}"),
    }
    // More than SYNTHVID_MAX_RESOLUTION_COUNT entries, or fewer bytes than claimed: rejected.
    let mut bad = m.clone();
    bad[16 + 128] = 65;
    assert_eq!(Message::parse(&bad), Err(WireError::TooManyResolutions(65)));
    let mut short = m.clone();
    short[16 + 128] = 3;
    assert!(matches!(
        Message::parse(&short),
        Err(WireError::Truncated { .. })
    ));
    // A full response (as the host model sends it) round-trips.
    let mut list = [(0u16, 0u16); 64];
    list[0] = (800, 600);
    let r = vmbus::synthvid::Resolutions {
        count: 1,
        default_index: 0,
        is_standard: 1,
        list,
    };
    let full = emit(Message::ResolutionResponse(r));
    assert_eq!(full.len(), 16 + 128 + 3 + 64 * 4);
    assert_eq!(
        Message::parse(&full).unwrap(),
        Message::ResolutionResponse(r)
    );
}

#[test]
fn version_gating_comes_from_the_message_table() {
    assert!(wire::allowed(MsgType::DIRT, wire::VERSION_WIN8));
    assert!(!wire::allowed(
        MsgType::RESOLUTION_REQUEST,
        wire::VERSION_WIN8
    ));
    assert!(wire::allowed(
        MsgType::RESOLUTION_REQUEST,
        wire::VERSION_WIN10
    ));
    assert!(
        !wire::allowed(MsgType(99), wire::VERSION_WIN10),
        "unknown types are never sent"
    );
}

/// OpenVMM `vm/devices/uidevices/src/video/mod.rs` `send_packet`: the pipe header (vmbus_async
/// `pipe.rs`, message mode) is `{type 1, len = synthvid header + body}`, and the synthvid
/// header's `size` is `size_of_val(body)`: the payload only. Bytes built by hand here, not by
/// our emitter.
fn openvmm_message(ty: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(1u32.to_le_bytes());
    b.extend((8 + body.len() as u32).to_le_bytes());
    b.extend(ty.to_le_bytes());
    b.extend((body.len() as u32).to_le_bytes());
    b.extend(body);
    // VMBus packets are padded to 8 bytes.
    b.resize(b.len().next_multiple_of(8), 0);
    b
}

/// Linux `hyperv_fb.c` `synthvid_send`: `vid_hdr.size = sizeof(hdr) + sizeof(body)`,
/// `pipe_hdr.size = vid_hdr.size`.
fn linux_message(ty: u32, body: &[u8]) -> Vec<u8> {
    let mut b = openvmm_message(ty, body);
    b[12..16].copy_from_slice(&(8 + body.len() as u32).to_le_bytes());
    b
}

#[test]
fn host_messages_parse_with_either_synthvid_size_form() {
    // VERSION_RESPONSE {u32 version; u8 is_accepted; u8 max_video_outputs}: OpenVMM answers
    // 3.5 with is_accepted = 2 (ACCEPTED_WITH_VERSION_EXCHANGE): pipe size 14, header size 6,
    // the message issue 17 saw refused.
    let version_response = [0x03, 0x00, 0x05, 0x00, 2, 1];
    let ack = 0x1122_3344_5566_7788u64.to_le_bytes();
    let feature = [1u8, 0, 0, 1];
    let mut resolutions = vec![0u8; 128];
    resolutions.extend([2, 1, 0]); // count 2, default index 1, is_standard 0
    resolutions.extend([0x00, 0x04, 0x00, 0x03, 0x80, 0x04, 0x60, 0x03]); // 1024x768, 1152x864
    for form in [openvmm_message, linux_message] {
        assert_eq!(
            Message::parse(&form(MsgType::VERSION_RESPONSE.0, &version_response)),
            Ok(Message::VersionResponse {
                version: wire::VERSION_WIN10,
                accepted: true,
                max_video_outputs: 1
            })
        );
        assert_eq!(
            Message::parse(&form(MsgType::VRAM_LOCATION_ACK.0, &ack)),
            Ok(Message::VramLocationAck {
                user_ctx: 0x1122_3344_5566_7788
            })
        );
        assert_eq!(
            Message::parse(&form(MsgType::FEATURE_CHANGE.0, &feature)),
            Ok(Message::FeatureChange {
                dirt_needed: true,
                ptr_pos_needed: false,
                ptr_shape_needed: false,
                situ_needed: true
            })
        );
        let Ok(Message::ResolutionResponse(r)) =
            Message::parse(&form(MsgType::RESOLUTION_RESPONSE.0, &resolutions))
        else {
            panic!("resolution response refused");
        };
        assert_eq!(r.as_slice(), &[(1024, 768), (1152, 864)]);
        assert_eq!(r.preferred(), Some((1152, 864)));
    }
}

#[test]
fn emit_writes_either_size_form_on_request() {
    let m = Message::VersionResponse {
        version: wire::VERSION_WIN10,
        accepted: true,
        max_video_outputs: 1,
    };
    let mut b = [0u8; 64];
    let n = m.emit_with(&mut b, SizeForm::PayloadOnly).unwrap();
    let mut want = openvmm_message(MsgType::VERSION_RESPONSE.0, &[0x03, 0x00, 0x05, 0x00, 1, 1]);
    want.truncate(n);
    assert_eq!(&b[..n], &want[..]);
    let n = m.emit_with(&mut b, SizeForm::HeaderAndPayload).unwrap();
    let mut want = linux_message(MsgType::VERSION_RESPONSE.0, &[0x03, 0x00, 0x05, 0x00, 1, 1]);
    want.truncate(n);
    assert_eq!(&b[..n], &want[..]);
    // The guest's own messages keep Linux's form.
    assert_eq!(emit(m), b[..n].to_vec());
}
