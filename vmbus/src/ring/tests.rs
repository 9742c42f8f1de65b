//! Golden-layout and parser tests of `ring`.

use super::*;
use std::vec;
use std::vec::Vec;

#[test]
fn ring_control_and_packet_golden_layout() {
    // ref §5.1: write_index 0, read_index 4, interrupt_mask 8, pending_send_sz 12,
    // feature_bits 64; data at 4096. ref §5.3: descriptor type 0, offset8 2, len8 4,
    // flags 6, trans_id 8.
    let mut c = <RingControl as zerocopy::FromZeros>::new_zeroed();
    c.write_index = 0x11;
    c.read_index = 0x22;
    c.interrupt_mask = 1;
    c.pending_send_sz = 0x33;
    c.feature_bits = 1;
    let b = c.as_bytes();
    assert_eq!(
        &b[0..16],
        &[0x11, 0, 0, 0, 0x22, 0, 0, 0, 1, 0, 0, 0, 0x33, 0, 0, 0]
    );
    assert_eq!(b[64], 1);
    let d = PacketDescriptor {
        ty: 6,
        offset8: 2,
        len8: 3,
        flags: 1,
        trans_id: 0x0102,
    };
    assert_eq!(
        d.as_bytes(),
        &[6, 0, 2, 0, 3, 0, 1, 0, 2, 1, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn transfer_page_and_gpa_direct_headers_golden_bytes() {
    // Linux vmtransfer_page_packet_header: desc 0..16, xfer_pageset_id u16 @16,
    // sender_owns_set u8 @18, reserved u8 @19, range_cnt u32 @20, ranges {u32
    // byte_count; u32 byte_offset} @24.
    let mut hdr = [0u8; MAX_BUILT_HEADER];
    let p = OutgoingPacket::XferPages {
        trans_id: 0x55,
        completion_requested: true,
        pageset_id: 0xCAFE,
        sender_owns_set: true,
        ranges: &[(100, 200), (300, 400)],
        data: &[9; 3],
    };
    let (n, data) = p.build_header(&mut hdr).unwrap();
    assert_eq!(n, 40);
    assert_eq!(data, &[9; 3]);
    assert_eq!(
        &hdr[..n],
        &[
            7, 0, 5, 0, 6, 0, 1, 0, 0x55, 0, 0, 0, 0, 0, 0,
            0, // desc: type 7, offset8 5, len8 6
            0xFE, 0xCA, 1, 0, 2, 0, 0, 0, // pageset, sender owns, reserved, range_cnt
            100, 0, 0, 0, 200, 0, 0, 0, 44, 1, 0, 0, 144, 1, 0, 0,
        ][..]
    );
    // Linux vmbus_channel_packet_page_buffer: desc, reserved u32 @16, rangecount u32 @20,
    // range[] @24 = {u32 len; u32 offset; u64 pfn}.
    let pfns = [0x1234u64];
    let r = [GpaRange {
        byte_count: 16,
        byte_offset: 8,
        pfns: Pfns::List(&pfns),
    }];
    let p = OutgoingPacket::GpaDirect {
        trans_id: 1,
        completion_requested: false,
        ranges: &r,
        data: &[],
    };
    let (n, _) = p.build_header(&mut hdr).unwrap();
    assert_eq!(n, 40);
    assert_eq!(&hdr[0..8], &[9, 0, 5, 0, 5, 0, 0, 0]);
    assert_eq!(&hdr[16..24], &[0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&hdr[24..32], &[16, 0, 0, 0, 8, 0, 0, 0]);
    assert_eq!(&hdr[32..40], &0x1234u64.to_le_bytes());
    // Completion: type 0xB, no flags.
    let p = OutgoingPacket::Completion {
        trans_id: 2,
        data: &[1; 8],
    };
    let (n, _) = p.build_header(&mut hdr).unwrap();
    assert_eq!(&hdr[..8], &[0xB, 0, 2, 0, 3, 0, 0, 0]);
    assert_eq!(n, 16);
}

fn page_buf(pages: usize) -> Vec<u64> {
    vec![0u64; pages * 512 + 512]
}
fn aligned(buf: &mut [u64]) -> *mut u8 {
    let p = buf.as_mut_ptr() as *mut u8;
    p.wrapping_add(p.align_offset(4096))
}

#[test]
fn write_appends_trailer_with_start_offset_and_never_fills_the_ring() {
    let mut mem = page_buf(2);
    // SAFETY: 2 aligned pages inside `mem`.
    let ring = unsafe { Ring::new(aligned(&mut mem), 8192).unwrap() };
    let p = OutgoingPacket::InBand {
        trans_id: 7,
        completion_requested: true,
        data: &[1, 2, 3],
    };
    let o = p.write_to(&ring).unwrap();
    assert_eq!(
        o,
        WriteOutcome {
            signal: true,
            offset: 0
        }
    );
    // 16 desc + 3 data + 5 pad = 24, + 8 trailer.
    assert_eq!(ring.write_index(), 32);
    let mut raw = [0u8; 32];
    ring.copy_out(0, &mut raw);
    assert_eq!(&raw[0..8], &[6, 0, 2, 0, 3, 0, 1, 0]);
    assert_eq!(&raw[16..24], &[1, 2, 3, 0, 0, 0, 0, 0]);
    assert_eq!(
        &raw[24..32],
        &0u64.to_le_bytes(),
        "trailer = start offset << 32"
    );
    let o2 = p.write_to(&ring).unwrap();
    assert!(!o2.signal, "ring was not empty");
    let mut raw2 = [0u8; 8];
    ring.copy_out(56, &mut raw2);
    assert_eq!(u64::from_le_bytes(raw2), 32u64 << 32);
    // Fill: 4096 data bytes, 64 used; 32-byte packets until free <= 32.
    while p.write_to(&ring).is_ok() {}
    let free = ring.bytes_to_write().unwrap();
    assert!(free > 0 && free <= 32, "free {free}");
}

#[test]
fn reader_rejects_corrupt_descriptors_and_indices() {
    let mut mem = page_buf(2);
    // SAFETY: 2 aligned pages inside `mem`.
    let ring = unsafe { Ring::new(aligned(&mut mem), 8192).unwrap() };
    let bad = PacketDescriptor {
        ty: 6,
        offset8: 1,
        len8: 2,
        flags: 0,
        trans_id: 0,
    };
    ring.write(&[bad.as_bytes()]).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(
        ring.read(&mut buf),
        Err(RingError::BadDescriptor { .. })
    ));
    ring.field(ctrl::WRITE_INDEX).store(4095, Ordering::Relaxed);
    assert!(matches!(
        ring.read(&mut buf),
        Err(RingError::BadIndex { .. })
    ));
}

#[test]
fn oversized_packet_is_dropped_and_the_next_one_still_reads() {
    let mut mem = page_buf(2);
    // SAFETY: 2 aligned pages inside `mem`.
    let ring = unsafe { Ring::new(aligned(&mut mem), 8192).unwrap() };
    let big = OutgoingPacket::InBand {
        trans_id: 1,
        completion_requested: false,
        data: &[0xAB; 200],
    };
    let small = OutgoingPacket::InBand {
        trans_id: 2,
        completion_requested: false,
        data: &[1, 2, 3, 4],
    };
    big.write_to(&ring).unwrap();
    small.write_to(&ring).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        ring.read(&mut buf),
        Err(RingError::PacketDropped {
            needed: 16 + 200,
            have: 64
        })
    );
    let out = ring.read(&mut buf).unwrap().expect("second packet");
    let pkt = parse_packet(&buf[..out.len]).unwrap();
    assert_eq!(pkt.trans_id(), 2);
    assert_eq!(&pkt.payload[..4], &[1, 2, 3, 4]);
    assert_eq!(ring.read(&mut buf), Ok(None));
}

#[test]
fn parse_packet_never_panics_on_short_or_lying_headers() {
    let mut b = [0u8; 40];
    b[0] = 7; // xfer pages
    b[2] = 3; // offset8 = 3 -> header area 16..24
    b[4] = 5;
    b[20] = 200; // range_count = 200
    assert!(matches!(
        parse_packet(&b),
        Err(RingError::BadPacketHeader { .. })
    ));
    b[0] = 9; // GPA direct, range_count 200
    b[20] = 0;
    b[21] = 0;
    b[22] = 0;
    b[23] = 0x80;
    assert!(matches!(
        parse_packet(&b),
        Err(RingError::BadPacketHeader { .. })
    ));
    assert!(parse_packet(&b[..10]).is_err());
    b[4] = 0xff;
    assert!(parse_packet(&b).is_err());
}
