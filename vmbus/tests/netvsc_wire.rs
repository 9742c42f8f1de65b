//! Golden bytes for NVSP and RNDIS. Expected layouts: Linux `drivers/net/hyperv/hyperv_net.h`
//! (`struct nvsp_message` and bodies, `__packed`; `struct rndis_*`), `include/linux/rndis.h`
//! (type and OID values), OpenVMM `netvsp/src/protocol.rs` and `rndisprot.rs`.

use vmbus::netvsc::nvsp::{self, Nvsp, NvspError, Section};
use vmbus::netvsc::rndis::{self, PpiIter, Rndis, RndisError};
use vmbus::ring::{parse_packet, PacketKind};

fn nv(m: Nvsp) -> Vec<u8> {
    let mut b = [0u8; nvsp::PACKET_SIZE_V61];
    let n = m.emit(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn nvsp_init_is_40_bytes_with_min_equal_max() {
    let b = nv(Nvsp::Init {
        min: nvsp::VERSION_61,
        max: nvsp::VERSION_61,
    });
    // sizeof(struct nvsp_message) = 40 (OpenVMM PACKET_SIZE_V61 = 0x28), zero padded.
    assert_eq!(b.len(), 40);
    #[rustfmt::skip]
    assert_eq!(&b[..12], &[
        0x01, 0, 0, 0,          // NVSP_MSG_TYPE_INIT
        0x01, 0x00, 0x06, 0x00, // min_protocol_ver 0x60001
        0x01, 0x00, 0x06, 0x00, // max_protocol_ver
    ]);
    assert!(b[12..].iter().all(|&x| x == 0));
}

#[test]
fn nvsp_buffer_and_packet_messages_are_byte_exact() {
    // nvsp_1_message_send_receive_buffer: u32 gpadl_handle, u16 id (0xCAFE).
    let b = nv(Nvsp::SendRecvBuf {
        gpadl: 0x1000,
        id: nvsp::RECV_BUFFER_ID,
    });
    assert_eq!(&b[..10], &[0x65, 0, 0, 0, 0x00, 0x10, 0, 0, 0xfe, 0xca]);
    // nvsp_2_send_ndis_config: u32 mtu, u32 reserved, u64 capability (ieee8021q = bit 3).
    let b = nv(Nvsp::NdisConfig {
        mtu: 1514,
        capability: nvsp::NDIS_CAP_IEEE8021Q,
    });
    assert_eq!(
        &b[..20],
        &[125, 0, 0, 0, 0xea, 0x05, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]
    );
    // nvsp_1_message_send_ndis_version: major 6, minor 30 (NDIS 6.30 for NVSP > 4).
    let b = nv(Nvsp::NdisVersion {
        major: nvsp::NDIS_6_30 >> 16,
        minor: nvsp::NDIS_6_30 & 0xffff,
    });
    assert_eq!(&b[..12], &[100, 0, 0, 0, 6, 0, 0, 0, 30, 0, 0, 0]);
    // nvsp_1_message_send_rndis_packet: channel_type, section index, section size.
    let b = nv(Nvsp::RndisPacket {
        channel_type: nvsp::CHANNEL_DATA,
        section_index: 3,
        section_size: 100,
    });
    assert_eq!(
        &b[..16],
        &[0x6b, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 0, 0]
    );
    // The receive completion netvsc.c sends: header + status = 8 bytes.
    let mut c = [0u8; 8];
    let n = Nvsp::RndisPacketComplete {
        status: nvsp::STATUS_SUCCESS,
    }
    .emit(&mut c)
    .unwrap();
    assert_eq!(&c[..n], &[0x6c, 0, 0, 0, 1, 0, 0, 0]);
}

#[test]
fn nvsp_host_replies_parse() {
    #[rustfmt::skip]
    let rb = [
        0x66, 0, 0, 0,              // SEND_RECV_BUF_COMPLETE
        0x01, 0, 0, 0,              // status SUCCESS
        0x01, 0, 0, 0,              // num_sections
        0, 0, 0, 0,                 // section.offset
        0xc0, 0x06, 0, 0,           // sub_alloc_size 1728
        0x10, 0, 0, 0,              // num_sub_allocs 16
        0x00, 0x6c, 0, 0,           // end_offset 16 * 1728
    ];
    assert_eq!(
        Nvsp::parse(&rb).unwrap(),
        Nvsp::SendRecvBufComplete {
            status: 1,
            num_sections: 1,
            section: Section {
                offset: 0,
                sub_alloc_size: 1728,
                num_sub_allocs: 16,
                end_offset: 27648
            }
        }
    );
    let ic = [2, 0, 0, 0, 1, 0, 6, 0, 34, 0, 0, 0, 1, 0, 0, 0];
    assert_eq!(
        Nvsp::parse(&ic).unwrap(),
        Nvsp::InitComplete {
            negotiated: nvsp::VERSION_61,
            max_mdl_chain_len: 34,
            status: nvsp::STATUS_SUCCESS
        }
    );
}

#[test]
fn nvsp_malformed_is_rejected() {
    assert!(matches!(
        Nvsp::parse(&[1, 0]),
        Err(NvspError::Truncated { .. })
    ));
    assert!(matches!(
        Nvsp::parse(&[0x66, 0, 0, 0, 1, 0, 0, 0]),
        Err(NvspError::Truncated { ty: 0x66, .. })
    ));
    assert_eq!(
        Nvsp::parse(&[200, 0, 0, 0]),
        Ok(Nvsp::Other {
            ty: nvsp::MsgType(200)
        })
    );
    // Transfer-page header claiming more ranges than present: the ring's parser (the only
    // one) refuses it.
    let xfer = |hdr: &[u8]| {
        let mut p = vec![0u8; 16];
        p[0] = 7; // VM_PKT_DATA_USING_XFER_PAGES
        p[2] = ((16 + hdr.len()) / 8) as u8;
        p[4] = ((16 + hdr.len()) / 8) as u8;
        p.extend_from_slice(hdr);
        p
    };
    let b = xfer(&[0xfe, 0xca, 0, 0, 3, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0]);
    assert!(parse_packet(&b).is_err());
    let b = xfer(&[0xfe, 0xca, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert!(parse_packet(&b).is_err());
    let b = xfer(&[0xfe, 0xca, 1, 0, 1, 0, 0, 0, 100, 0, 0, 0, 0x40, 0, 0, 0]);
    let p = parse_packet(&b).unwrap();
    let PacketKind::XferPages { pageset_id, .. } = p.kind else {
        panic!("not a transfer-page packet: {:?}", p.kind)
    };
    let ranges: Vec<_> = p.kind.xfer_ranges().collect();
    assert_eq!((pageset_id, ranges), (0xcafe, vec![(100, 0x40)]));
}

fn rn(m: Rndis<'_>) -> Vec<u8> {
    let mut b = vec![0u8; m.emit_len()];
    let n = m.emit(&mut b).unwrap();
    assert_eq!(n, b.len());
    b
}

#[test]
fn rndis_init_query_set_are_byte_exact() {
    #[rustfmt::skip]
    assert_eq!(rn(Rndis::Init { request_id: 1, major: 1, minor: 0, max_xfer_size: 0x4000 }), [
        2, 0, 0, 0,  24, 0, 0, 0,     // RNDIS_MSG_INIT, msg_len
        1, 0, 0, 0,                   // req_id
        1, 0, 0, 0,  0, 0, 0, 0,      // major 1, minor 0
        0, 0x40, 0, 0,                // max_xfer_size 0x4000 (rndis_filter.c)
    ]);
    #[rustfmt::skip]
    assert_eq!(rn(Rndis::Query { request_id: 2, oid: rndis::OID_802_3_PERMANENT_ADDRESS, info: &[] }), [
        4, 0, 0, 0,  28, 0, 0, 0,     // RNDIS_MSG_QUERY
        2, 0, 0, 0,                   // req_id
        1, 1, 1, 1,                   // OID_802_3_PERMANENT_ADDRESS 0x01010101
        0, 0, 0, 0,                   // info_buflen
        20, 0, 0, 0,                  // info_buf_offset = sizeof(rndis_query_request)
        0, 0, 0, 0,                   // dev_vc_handle
    ]);
    #[rustfmt::skip]
    assert_eq!(rn(Rndis::Set { request_id: 3, oid: rndis::OID_GEN_CURRENT_PACKET_FILTER, info: &0xbu32.to_le_bytes() }), [
        5, 0, 0, 0,  32, 0, 0, 0,     // RNDIS_MSG_SET
        3, 0, 0, 0,
        0x0e, 0x01, 0x01, 0x00,       // OID_GEN_CURRENT_PACKET_FILTER 0x0001010E
        4, 0, 0, 0,  20, 0, 0, 0,  0, 0, 0, 0,
        0x0b, 0, 0, 0,                // DIRECTED | MULTICAST | BROADCAST
    ]);
}

#[test]
fn rndis_packet_with_per_packet_info_is_byte_exact() {
    let frame: Vec<u8> = (0..60u8).collect();
    let mut ppi = [0u8; 16];
    let pl = rndis::emit_ppi(rndis::PPI_TCPIP_CHECKSUM, &[0x11, 0, 0, 0], &mut ppi).unwrap();
    let b = rn(Rndis::Packet {
        data: &frame,
        ppi: &ppi[..pl],
    });
    #[rustfmt::skip]
    let head = [
        1, 0, 0, 0,  (8 + 36 + 16 + 60) as u8, 0, 0, 0,  // RNDIS_MSG_PACKET, msg_len 120
        52, 0, 0, 0,                // data_offset from rndis_packet: 36 + 16
        60, 0, 0, 0,                // data_len
        0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  // oob offset/len/count
        36, 0, 0, 0,                // per_pkt_info_offset = sizeof(struct rndis_packet)
        16, 0, 0, 0,                // per_pkt_info_len
        0, 0, 0, 0,  0, 0, 0, 0,    // vc_handle, reserved
        16, 0, 0, 0,  0, 0, 0, 0,  12, 0, 0, 0,  // rndis_per_packet_info: size, type 0, ppi_offset
        0x11, 0, 0, 0,
    ];
    assert_eq!(&b[..head.len()], &head);
    assert_eq!(&b[head.len()..], &frame[..]);
    match Rndis::parse(&b).unwrap() {
        Rndis::Packet { data, ppi } => {
            assert_eq!(data, &frame[..]);
            let p: Vec<_> = PpiIter::new(ppi).collect::<Result<_, _>>().unwrap();
            assert_eq!(p.len(), 1);
            assert_eq!((p[0].ty, p[0].value), (0, &[0x11, 0, 0, 0][..]));
        }
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn rndis_completions_round_trip() {
    let mac = [0, 0x15, 0x5d, 1, 2, 3];
    for m in [
        Rndis::InitComplete {
            request_id: 1,
            status: 0,
            major: 1,
            minor: 0,
            device_flags: 1,
            medium: 0,
            max_pkt_per_msg: 8,
            max_xfer_size: 0x4000,
            pkt_alignment_factor: 0,
        },
        Rndis::QueryComplete {
            request_id: 2,
            status: 0,
            info: &mac,
        },
        Rndis::SetComplete {
            request_id: 3,
            status: 0,
        },
        Rndis::Indicate {
            status: rndis::STATUS_MEDIA_CONNECT,
            buf: &[],
        },
    ] {
        assert_eq!(Rndis::parse(&rn(m)).unwrap(), m);
    }
}

#[test]
fn rndis_malformed_is_rejected() {
    let frame = [0u8; 60];
    let good = rn(Rndis::Packet {
        data: &frame,
        ppi: &[],
    });
    // msg_len larger than the buffer.
    let mut b = good.clone();
    b[4] = 0xff;
    assert!(matches!(
        Rndis::parse(&b),
        Err(RndisError::Truncated { .. })
    ));
    // data_offset pointing past the end.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(Rndis::parse(&b), Err(RndisError::BadRange { .. })));
    // data_offset + data_len overflowing u32.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Rndis::parse(&b), Err(RndisError::BadRange { .. })));
    // QUERY_C whose info buffer runs past msg_len.
    let mut q = rn(Rndis::QueryComplete {
        request_id: 1,
        status: 0,
        info: &[1, 2, 3, 4, 5, 6],
    });
    q[16..20].copy_from_slice(&100u32.to_le_bytes());
    assert!(matches!(Rndis::parse(&q), Err(RndisError::BadRange { .. })));
    // A zero-size per-packet-info entry must not loop forever.
    let bad_ppi = [0u8; 12];
    let v: Vec<_> = PpiIter::new(&bad_ppi).collect();
    assert_eq!(v.len(), 1);
    assert!(v[0].is_err());
    // Every prefix parses or fails cleanly.
    for len in 0..good.len() {
        let _ = Rndis::parse(&good[..len]);
    }
    // Unknown types are an open enum.
    assert_eq!(
        Rndis::parse(&[9, 0, 0, 0, 8, 0, 0, 0]),
        Ok(Rndis::Other {
            ty: rndis::MsgType(9)
        })
    );
}

#[test]
fn every_nvsp_version_boundary_in_the_table_is_enforced() {
    let mut boundaries = 0;
    for &(ty, since) in nvsp::MESSAGE_SINCE {
        let mut m = [0u8; nvsp::PACKET_SIZE_V61];
        m[..4].copy_from_slice(&ty.0.to_le_bytes());
        assert!(
            Nvsp::parse_at(&m, since).is_ok(),
            "type {ty:?} at {since:#x}"
        );
        assert!(Nvsp::parse_at(&m, nvsp::VERSION_61).is_ok(), "type {ty:?}");
        if since > 0 {
            boundaries += 1;
            assert_eq!(
                Nvsp::parse_at(&m, since - 1),
                Err(NvspError::NotInVersion {
                    ty: ty.0,
                    since,
                    negotiated: since - 1
                })
            );
        }
    }
    // 9 version-1 types, NDIS_CONFIG (2), VF_ASSOCIATION (4), INDIRECTION_TABLE (5).
    assert_eq!(boundaries, 12);
    assert_eq!(
        nvsp::since(nvsp::MsgType::SEND_NDIS_CONFIG),
        Some(nvsp::VERSION_2)
    );
    assert_eq!(nvsp::since(nvsp::MsgType(200)), None);
    // An unknown type is not gated (open enum).
    assert_eq!(
        Nvsp::parse_at(&[200, 0, 0, 0], 0),
        Ok(Nvsp::Other {
            ty: nvsp::MsgType(200)
        })
    );
}
