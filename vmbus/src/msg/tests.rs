//! Golden-layout and parser tests of `msg`.

use super::*;
use zerocopy::FromZeros;

/// The newest version in the table: every host message is in it.
const NEWEST: Version = Version::COPPER;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn initiate_contact_golden_bytes() {
    // Linux struct vmbus_channel_initiate_contact (__packed): hdr 0, version 8,
    // target_vcpu 12, interrupt_page/target_info 16, monitor_page1 24, monitor_page2 32;
    // size 40 (the hvhost self-test posts 40 bytes).
    let m = InitiateContact {
        header: MessageHeader::new(MessageType::INITIATE_CONTACT),
        vmbus_version_requested: Version::WIN10_V5_3.0,
        target_vcpu: 3,
        interrupt_page_or_target_info: target_info(2, 0, 0),
        monitor_page1: 0x1000,
        monitor_page2: 0x2000,
    };
    let b = m.as_bytes();
    assert_eq!(b.len(), 40);
    assert_eq!(u32_at(b, 0), 14);
    assert_eq!(u32_at(b, 8), 0x0005_0003);
    assert_eq!(u32_at(b, 12), 3);
    assert_eq!(b[16], 2, "msg_sint is the first byte of target_info");
    assert_eq!(u64_at(b, 24), 0x1000);
    assert_eq!(u64_at(b, 32), 0x2000);
    assert_eq!(target_info(2, 1, 0x21), 0x0000_0021_0000_0102);
}

#[test]
fn version_response_golden_bytes_and_short_form() {
    // Linux vmbus_channel_version_response: version_supported 8, connection_state 9,
    // padding 10, msg_conn_id 12; size 16. QEMU sends 12 bytes.
    let m = VersionResponse {
        header: MessageHeader::new(MessageType::VERSION_RESPONSE),
        version_supported: 1,
        connection_state: 0,
        padding: 0,
        msg_conn_id: 4,
    };
    let b = m.as_bytes();
    assert_eq!(b, &[15, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0]);
    assert_eq!(
        parse_host(b, NEWEST),
        Ok(HostMessage::VersionResponse {
            version_supported: true,
            connection_state: 0,
            msg_conn_id: Some(4)
        })
    );
    assert_eq!(
        parse_host(&b[..12], NEWEST),
        Ok(HostMessage::VersionResponse {
            version_supported: true,
            connection_state: 0,
            msg_conn_id: None
        })
    );
}

#[test]
fn offer_channel_golden_offsets() {
    // Linux vmbus_channel_offer_channel (__packed): offer at 8 (if_type 8, if_instance 24,
    // rsvd 40..56, chn_flags 56, mmio_megabytes 58, user_def 60..180, sub_channel_index
    // 180, reserved3 182), child_relid 184, monitorid 188, monitor_allocated 189,
    // is_dedicated_interrupt 190, connection_id 192; size 196. The hvhost self-test reads
    // child_relid at slot offset 200 = 16 (SynIC header) + 184.
    let mut m = OfferChannel::new_zeroed();
    m.header = MessageHeader::new(MessageType::OFFERCHANNEL);
    m.offer.if_type = crate::guid::SYNTHVID.0;
    m.offer.if_instance = [0xAA; 16];
    m.offer.chn_flags = 0x0102;
    m.offer.mmio_megabytes = 8;
    m.offer.user_def[0] = 0x5A;
    m.offer.sub_channel_index = 7;
    m.child_relid = 0x11;
    m.monitorid = 3;
    m.monitor_allocated = 1;
    m.is_dedicated_interrupt = 1;
    m.connection_id = 0x2011;
    let b = m.as_bytes();
    assert_eq!(b.len(), 196);
    assert_eq!(&b[8..12], &[0x02, 0x78, 0x0a, 0xda]);
    assert_eq!(b[24], 0xAA);
    assert_eq!(u32_at(b, 56) & 0xffff, 0x0102);
    assert_eq!(u32_at(b, 56) >> 16, 8);
    assert_eq!(b[60], 0x5A);
    assert_eq!(u32_at(b, 180) & 0xffff, 7);
    assert_eq!(u32_at(b, 184), 0x11);
    assert_eq!(b[188], 3);
    assert_eq!(b[189], 1);
    assert_eq!(b[190], 1);
    assert_eq!(u32_at(b, 192), 0x2011);
    let HostMessage::Offer(o) = parse_host(b, NEWEST).unwrap() else {
        panic!("not an offer")
    };
    assert_eq!(o.if_type, crate::guid::SYNTHVID);
    assert_eq!(o.child_relid, 0x11);
    assert_eq!(o.connection_id, 0x2011);
    assert!(o.monitor_allocated && o.is_dedicated_interrupt);
    assert_eq!(o.sub_channel_index, 7);
}

#[test]
fn gpadl_and_channel_messages_golden_offsets() {
    // Linux: gpadl_header {hdr; child_relid 8; gpadl 12; range_buflen 16; rangecount 18}
    // = 20 + ranges; gpadl_body {hdr; msgnumber 8; gpadl 12} = 16 + pfns;
    // gpadl_created {hdr; child_relid 8; gpadl 12; creation_status 16} = 20;
    // gpadl_teardown {hdr; child_relid 8; gpadl 12} = 16; gpadl_torndown {hdr; gpadl 8}
    // = 12; open_channel {hdr; child_relid 8; openid 12; ringbuffer_gpadlhandle 16;
    // target_vp 20; downstream_ringbuffer_pageoffset 24; userdata 28..148} = 148;
    // open_result {hdr; child_relid 8; openid 12; status 16} = 20.
    let h = GpadlHeader {
        header: MessageHeader::new(MessageType::GPADL_HEADER),
        child_relid: 5,
        gpadl: 0xE1E10,
        range_buflen: 24,
        rangecount: 1,
    };
    let b = h.as_bytes();
    assert_eq!(u32_at(b, 0), 8);
    assert_eq!(u32_at(b, 8), 5);
    assert_eq!(u32_at(b, 12), 0xE1E10);
    assert_eq!(&b[16..20], &[24, 0, 1, 0]);
    let body = GpadlBody {
        header: MessageHeader::new(MessageType::GPADL_BODY),
        msgnumber: 0,
        gpadl: 9,
    };
    assert_eq!(u32_at(body.as_bytes(), 12), 9);
    let o = OpenChannel {
        header: MessageHeader::new(MessageType::OPENCHANNEL),
        child_relid: 1,
        openid: 2,
        ringbuffer_gpadlhandle: 3,
        target_vp: 4,
        downstream_ringbuffer_pageoffset: 5,
        userdata: [0x77; 120],
    };
    let b = o.as_bytes();
    assert_eq!(
        [
            u32_at(b, 0),
            u32_at(b, 8),
            u32_at(b, 12),
            u32_at(b, 16),
            u32_at(b, 20),
            u32_at(b, 24)
        ],
        [5, 1, 2, 3, 4, 5]
    );
    assert_eq!(b[28], 0x77);
    assert_eq!(b[147], 0x77);
    let r = OpenResult {
        header: MessageHeader::new(MessageType::OPENCHANNEL_RESULT),
        child_relid: 1,
        openid: 1,
        status: 0,
    };
    assert_eq!(
        parse_host(r.as_bytes(), NEWEST),
        Ok(HostMessage::OpenResult {
            child_relid: 1,
            openid: 1,
            status: 0
        })
    );
    let c = GpadlCreated {
        header: MessageHeader::new(MessageType::GPADL_CREATED),
        child_relid: 2,
        gpadl: 3,
        creation_status: 0,
    };
    assert_eq!(u32_at(c.as_bytes(), 16), 0);
    let t = GpadlTeardown {
        header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
        child_relid: 2,
        gpadl: 3,
    };
    assert_eq!(t.as_bytes().len(), 16);
    let d = GpadlTorndown {
        header: MessageHeader::new(MessageType::GPADL_TORNDOWN),
        gpadl: 3,
    };
    assert_eq!(
        parse_host(d.as_bytes(), NEWEST),
        Ok(HostMessage::GpadlTorndown { gpadl: 3 })
    );
    assert_eq!(GPADL_HEADER_WORDS, 27);
    assert_eq!(GPADL_BODY_WORDS, 28);
}

#[test]
fn gpadl_body_created_torndown_and_open_result_golden_bytes() {
    // Linux gpadl_body {hdr; u32 msgnumber @8; u32 gpadl @12; u64 pfn[] @16};
    // gpadl_created {hdr; child_relid @8; gpadl @12; creation_status @16};
    // gpadl_torndown {hdr; gpadl @8}; open_result {hdr; child_relid @8; openid @12;
    // status @16}.
    let b = GpadlBody {
        header: MessageHeader::new(MessageType::GPADL_BODY),
        msgnumber: 0,
        gpadl: 0x0A0B_0C0D,
    };
    assert_eq!(
        b.as_bytes(),
        &[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0D, 0x0C, 0x0B, 0x0A]
    );
    let c = GpadlCreated {
        header: MessageHeader::new(MessageType::GPADL_CREATED),
        child_relid: 1,
        gpadl: 2,
        creation_status: 0xC000_0001,
    };
    assert_eq!(
        c.as_bytes(),
        &[10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0xC0]
    );
    assert_eq!(
        parse_host(c.as_bytes(), NEWEST),
        Ok(HostMessage::GpadlCreated {
            child_relid: 1,
            gpadl: 2,
            status: 0xC000_0001
        })
    );
    let t = GpadlTorndown {
        header: MessageHeader::new(MessageType::GPADL_TORNDOWN),
        gpadl: 0x0102,
    };
    assert_eq!(t.as_bytes(), &[12, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0]);
    let r = OpenResult {
        header: MessageHeader::new(MessageType::OPENCHANNEL_RESULT),
        child_relid: 3,
        openid: 4,
        status: 5,
    };
    assert_eq!(
        r.as_bytes(),
        &[6, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]
    );
}

#[test]
fn relid_teardown_and_header_only_messages_golden_bytes() {
    // Linux vmbus_channel_rescind_offer / close_channel / relid_released: {hdr;
    // child_relid @8} = 12; gpadl_teardown {hdr; child_relid @8; gpadl @12} = 16;
    // unload / unload_response / request_offers / alloffers: header only, 8.
    let r = RelidMessage {
        header: MessageHeader::new(MessageType::RESCIND_CHANNELOFFER),
        child_relid: 0x0102_0304,
    };
    assert_eq!(r.as_bytes(), &[2, 0, 0, 0, 0, 0, 0, 0, 4, 3, 2, 1]);
    assert_eq!(
        parse_host(r.as_bytes(), NEWEST),
        Ok(HostMessage::Rescind {
            child_relid: 0x0102_0304
        })
    );
    let t = GpadlTeardown {
        header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
        child_relid: 7,
        gpadl: 0xE1E10,
    };
    assert_eq!(
        t.as_bytes(),
        &[11, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0x10, 0x1E, 0x0E, 0]
    );
    let u = MessageHeader::new(MessageType::UNLOAD);
    assert_eq!(u.as_bytes(), &[16, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        parse_host(
            MessageHeader::new(MessageType::UNLOAD_RESPONSE).as_bytes(),
            NEWEST
        ),
        Ok(HostMessage::UnloadResponse)
    );
    assert_eq!(
        parse_host(
            MessageHeader::new(MessageType::ALLOFFERS_DELIVERED).as_bytes(),
            NEWEST
        ),
        Ok(HostMessage::AllOffersDelivered)
    );
}

#[test]
fn malformed_host_messages_are_rejected_with_reasons() {
    assert_eq!(
        parse_host(&[1, 0, 0], NEWEST),
        Err(MessageError::NoHeader { len: 3 })
    );
    assert_eq!(
        parse_host(&[0u8; 241], NEWEST),
        Err(MessageError::Oversized { len: 241 })
    );
    let mut short_offer = [0u8; 100];
    short_offer[0] = 1;
    assert!(matches!(
        parse_host(&short_offer, NEWEST),
        Err(MessageError::TooShort {
            name: "OFFERCHANNEL",
            len: 100,
            need: 196
        })
    ));
    let mut g2h = [0u8; 40];
    g2h[0] = 14;
    assert_eq!(
        parse_host(&g2h, NEWEST),
        Err(MessageError::WrongDirection(14))
    );
    let unknown = [99, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        parse_host(&unknown, NEWEST),
        Ok(HostMessage::Other(MessageType(99)))
    );
}

#[test]
fn message_table_has_each_type_once_with_its_version() {
    for (i, r) in MESSAGE_TABLE.iter().enumerate() {
        assert_eq!(r.ty.0 as usize, i + 1, "table is ordered by type");
    }
    assert_eq!(
        info(MessageType::UNLOAD_RESPONSE).unwrap().since,
        Version::WIN7
    );
    assert_eq!(
        info(MessageType::MODIFYCHANNEL_RESPONSE).unwrap().since,
        Version::WIN10_V5_3
    );
}

#[test]
fn table_sizes_are_the_linux_struct_sizes() {
    // include/linux/hyperv.h struct sizes (all __packed), header included; VERSION_RESPONSE in
    // QEMU's 12-byte form; the rest are header-only here (this crate never parses them).
    let want: [(u32, usize); 17] = [
        (1, 196),
        (2, 12),
        (3, 8),
        (4, 8),
        (5, 148),
        (6, 20),
        (7, 12),
        (8, 20),
        (9, 16),
        (10, 20),
        (11, 16),
        (12, 12),
        (13, 12),
        (14, 40),
        (15, 12),
        (16, 8),
        (17, 8),
    ];
    for (ty, size) in want {
        assert_eq!(info(MessageType(ty)).unwrap().min_size, size, "type {ty}");
    }
}

#[test]
fn every_version_boundary_in_the_table_is_enforced() {
    let mut boundaries = 0;
    for r in MESSAGE_TABLE {
        let mut m = [0u8; 240];
        m[..4].copy_from_slice(&r.ty.0.to_le_bytes());
        let m = &m[..r.min_size];
        if r.direction == Direction::GuestToHost {
            assert_eq!(
                parse_host(m, NEWEST),
                Err(MessageError::WrongDirection(r.ty.0))
            );
            continue;
        }
        // At the version that introduced it, and at every newer one: accepted.
        for v in [r.since, NEWEST] {
            assert!(parse_host(m, v).is_ok(), "{} at {v}", r.name);
        }
        // Just below it: refused, saying why.
        if r.since.0 > 0 {
            boundaries += 1;
            let below = Version(r.since.0 - 1);
            assert_eq!(
                parse_host(m, below),
                Err(MessageError::NotInVersion {
                    name: r.name,
                    since: r.since,
                    negotiated: below
                }),
                "{}",
                r.name
            );
        }
    }
    // Host messages from WS2008 (6), WIN7 (1), WIN10 (1), 4.1 (1), 5.3 (1) and Copper (3).
    assert_eq!(boundaries, 13);
    // While negotiating (version 0) only VERSION_RESPONSE is accepted.
    let mut vr = [0u8; 16];
    vr[0] = 15;
    assert!(parse_host(&vr, Version(0)).is_ok());
    let mut offer = [0u8; 196];
    offer[0] = 1;
    assert!(matches!(
        parse_host(&offer, Version(0)),
        Err(MessageError::NotInVersion { .. })
    ));
}
