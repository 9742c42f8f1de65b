//! GPADLs, channel open/close/rescind, rings with every packet kind, signalling, try_lock.

mod common;

use common::{hyperv, sim, ARCHES};
use vmbus::channel::ChannelError;
use vmbus::ring::{parse_packet, PacketKind, PacketType};
use vmbus::{
    ConnectOptions, Connection, GpaRange, OpenOptions, OutgoingPacket, Pfns, SynicMode, VmbusError,
};
use vmbus_sim::{Guest, Personality, SimArch};

fn connected<'g>(g: &'g Guest<'_>) -> Connection<'g> {
    let mut c = Connection::connect(
        g.hv(0),
        &g.clock,
        &g.sim.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap();
    c.request_offers(g.hv(0), &g.clock).unwrap();
    c
}

#[test]
fn gpadl_round_trip_with_multiple_ranges_and_body_messages() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = connected(&g);
        let a = [0x0010_0010_u64, 0x0010_0013, 0x0010_0017];
        let ranges = [
            // 8 KiB starting 0x100 into the first page: spans 3 pages.
            GpaRange {
                byte_count: 8192,
                byte_offset: 0x100,
                pfns: Pfns::List(&a),
            },
            GpaRange {
                byte_count: 40 * 4096,
                byte_offset: 0,
                pfns: Pfns::Contiguous {
                    first: 0x0010_0200,
                    count: 40,
                },
            },
        ];
        let id = c.create_gpadl(g.hv(0), &g.clock, 1, &ranges).unwrap();
        assert_eq!(id.0, vmbus::connection::FIRST_GPADL_HANDLE);
        // 45 words: 27 in the header, 18 in one body.
        let headers = s.guest_messages_of(8);
        let bodies = s.guest_messages_of(9);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].len(), 20 + 27 * 8);
        assert_eq!(
            u16::from_le_bytes([headers[0][16], headers[0][17]]),
            45 * 8,
            "range_buflen"
        );
        assert_eq!(
            u16::from_le_bytes([headers[0][18], headers[0][19]]),
            2,
            "rangecount"
        );
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].len(), 16 + 18 * 8);
        let got = s.gpadl_ranges(id.0).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0, got[0].1, got[0].2.clone()),
            (8192, 0x100, a.to_vec())
        );
        assert_eq!(
            got[1].2,
            (0..40).map(|i| 0x0010_0200 + i).collect::<Vec<u64>>()
        );
        let id2 = c.create_gpadl(g.hv(0), &g.clock, 1, &ranges[1..]).unwrap();
        assert_eq!(id2.0, id.0 + 1);
        c.teardown_gpadl(g.hv(0), &g.clock, 1, id).unwrap();
        assert!(s.gpadl_ranges(id.0).is_none());
        assert!(s.gpadl_ranges(id2.0).is_some());
    }
}

#[test]
fn qemu_leaves_multi_range_gpadls_unanswered_and_the_guest_times_out() {
    let s = sim(SimArch::X86_64, Personality::Qemu);
    let g = Guest::boot(&s, SynicMode::Polling);
    let opts = ConnectOptions {
        reply_timeout: 1_000_000,
        ..ConnectOptions::default()
    };
    let mut c = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts).unwrap();
    c.request_offers(g.hv(0), &g.clock).unwrap();
    let r = [
        GpaRange {
            byte_count: 4096,
            byte_offset: 0,
            pfns: Pfns::Contiguous {
                first: 0x100010,
                count: 1,
            },
        },
        GpaRange {
            byte_count: 4096,
            byte_offset: 0,
            pfns: Pfns::Contiguous {
                first: 0x100020,
                count: 1,
            },
        },
    ];
    assert_eq!(
        c.create_gpadl(g.hv(0), &g.clock, 1, &r).unwrap_err(),
        VmbusError::Timeout("GPADL_CREATED")
    );
    // A single page-aligned range works.
    assert!(c.create_gpadl(g.hv(0), &g.clock, 1, &r[..1]).is_ok());
}

#[test]
fn open_and_close_a_channel_on_both_arches() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = connected(&g);
        let ch = c
            .open_channel(g.hv(0), &g.clock, &s.mem, 1, &OpenOptions::default())
            .unwrap();
        let open = s.guest_messages_of(5);
        assert_eq!(open.len(), 1);
        let m = &open[0];
        assert_eq!(
            u32::from_le_bytes(m[8..12].try_into().unwrap()),
            1,
            "child_relid"
        );
        assert_eq!(
            u32::from_le_bytes(m[12..16].try_into().unwrap()),
            1,
            "openid"
        );
        assert_eq!(
            u32::from_le_bytes(m[16..20].try_into().unwrap()),
            ch.gpadl().0
        );
        assert_eq!(
            u32::from_le_bytes(m[24..28].try_into().unwrap()),
            4,
            "inbound ring page offset"
        );
        let host = s.host_channel(1).expect("host side mapped");
        assert_eq!(host.gpadl, ch.gpadl().0);
        assert_eq!(ch.connection_id(), 0x2001);
        let pages = c.close_channel(g.hv(0), &g.clock, ch).unwrap();
        assert_eq!(pages.count(), 8);
        assert!(s.host_channel(1).is_none());
        assert_eq!(s.guest_messages_of(7).len(), 1, "CLOSECHANNEL");
        assert_eq!(s.guest_messages_of(11).len(), 1, "GPADL_TEARDOWN");
    }
}

#[test]
fn rescind_during_open_fails_the_open_and_releases_the_relid() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = connected(&g);
        s.faults(|f| f.rescind_on_open = Some(2));
        let e = c
            .open_channel(g.hv(0), &g.clock, &s.mem, 2, &OpenOptions::default())
            .unwrap_err();
        assert_eq!(e, VmbusError::Rescinded(2));
        assert!(c.is_rescinded(2));
        assert!(c.find_offer(&vmbus::guid::NET).is_none());
        assert_eq!(s.relids_released(), vec![2]);
        assert_eq!(
            c.open_channel(g.hv(0), &g.clock, &s.mem, 2, &OpenOptions::default())
                .unwrap_err(),
            VmbusError::Rescinded(2)
        );
        assert_eq!(
            c.open_channel(g.hv(0), &g.clock, &s.mem, 9, &OpenOptions::default())
                .unwrap_err(),
            VmbusError::UnknownRelid(9)
        );
    }
}

#[test]
fn rings_wrap_around_with_every_packet_kind_in_both_directions() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = connected(&g);
        let opts = OpenOptions {
            send_ring_pages: 2,
            recv_ring_pages: 2,
            ..OpenOptions::default()
        };
        let ch = c.open_channel(g.hv(0), &g.clock, &s.mem, 1, &opts).unwrap();
        let host = s.host_channel(1).unwrap();
        let hv = g.hv(0);
        let pfns = [0x0001_2345_u64, 0x0001_2346];
        let gpa = [GpaRange {
            byte_count: 5000,
            byte_offset: 100,
            pfns: Pfns::List(&pfns),
        }];
        let xfer = [(1500u32, 0u32), (700, 4096)];
        let mut wrapped_out = false;
        let mut wrapped_in = false;
        let mut buf = [0u8; 4096];
        for i in 0..400u64 {
            let data: Vec<u8> = (0..(i as usize * 7) % 300)
                .map(|b| (b as u64 + i) as u8)
                .collect();
            let pkt = match i % 4 {
                0 => OutgoingPacket::InBand {
                    trans_id: i,
                    completion_requested: true,
                    data: &data,
                },
                1 => OutgoingPacket::Completion {
                    trans_id: i,
                    data: &data,
                },
                2 => OutgoingPacket::GpaDirect {
                    trans_id: i,
                    completion_requested: false,
                    ranges: &gpa,
                    data: &data,
                },
                _ => OutgoingPacket::XferPages {
                    trans_id: i,
                    completion_requested: true,
                    pageset_id: 0xCAFE,
                    sender_owns_set: true,
                    ranges: &xfer,
                    data: &data,
                },
            };
            // Guest -> host.
            let before = ch.outbound().write_index();
            ch.try_lock_outbound().unwrap().send(hv, &pkt).unwrap();
            wrapped_out |= ch.outbound().write_index() < before;
            let out = host.from_guest.read(&mut buf).unwrap().unwrap();
            let p = parse_packet(&buf[..out.len]).unwrap();
            check(&p, i, &data, &pfns, &xfer);
            // Host -> guest, the same packet.
            let before = host.to_guest.write_index();
            pkt.write_to(&host.to_guest).unwrap();
            wrapped_in |= host.to_guest.write_index() < before;
            let mut gbuf = [0u8; 4096];
            let p = ch.try_recv(hv, &mut gbuf).unwrap().unwrap();
            check(&p, i, &data, &pfns, &xfer);
            assert!(ch.try_recv(hv, &mut gbuf).unwrap().is_none());
        }
        assert!(wrapped_out && wrapped_in, "{arch:?}: both rings wrapped");
    }
}

fn check(p: &vmbus::ring::Packet<'_>, i: u64, data: &[u8], pfns: &[u64], xfer: &[(u32, u32)]) {
    assert_eq!(p.trans_id(), i);
    // The payload runs to len8 * 8: the data, then zero padding to 8 bytes.
    assert_eq!(
        p.payload.len(),
        data.len().next_multiple_of(8),
        "packet {i}"
    );
    assert_eq!(&p.payload[..data.len()], data, "packet {i}");
    assert!(p.payload[data.len()..].iter().all(|&b| b == 0));
    match i % 4 {
        0 => {
            assert_eq!(p.kind, PacketKind::InBand);
            assert_eq!(p.desc.ty, PacketType::DATA_INBAND.0);
            assert!(p.completion_requested());
            assert_eq!(p.desc.offset8, 2);
        }
        1 => assert_eq!(p.kind, PacketKind::Completion),
        2 => {
            let PacketKind::GpaDirect {
                range_count,
                ranges,
            } = p.kind
            else {
                panic!()
            };
            assert_eq!(range_count, 1);
            assert_eq!(&ranges[0..8], &(5000u64 | 100 << 32).to_le_bytes());
            assert_eq!(&ranges[8..16], &pfns[0].to_le_bytes());
            assert_eq!(&ranges[16..24], &pfns[1].to_le_bytes());
        }
        _ => {
            let PacketKind::XferPages {
                pageset_id,
                sender_owns_set,
                ..
            } = p.kind
            else {
                panic!()
            };
            assert_eq!((pageset_id, sender_owns_set), (0xCAFE, true));
            assert_eq!(p.kind.xfer_ranges().collect::<Vec<_>>(), xfer.to_vec());
        }
    }
}

#[test]
fn signalling_follows_the_empty_to_non_empty_and_interrupt_mask_rules() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let mut c = connected(&g);
        let ch = c
            .open_channel(g.hv(0), &g.clock, &s.mem, 1, &OpenOptions::default())
            .unwrap();
        let host = s.host_channel(1).unwrap();
        let hv = g.hv(0);
        let id = ch.connection_id();
        let p = OutgoingPacket::InBand {
            trans_id: 1,
            completion_requested: false,
            data: b"hello",
        };
        let mut buf = [0u8; 256];
        // Empty -> non-empty, host not masked: signal.
        assert!(
            ch.try_lock_outbound()
                .unwrap()
                .send(hv, &p)
                .unwrap()
                .signalled
        );
        assert_eq!(s.signals(id), 1);
        // Not empty: no signal.
        assert!(
            !ch.try_lock_outbound()
                .unwrap()
                .send(hv, &p)
                .unwrap()
                .signalled
        );
        assert_eq!(s.signals(id), 1);
        while host.from_guest.read(&mut buf).unwrap().is_some() {}
        // Host polling (interrupt_mask = 1): no signal even on empty -> non-empty.
        host.from_guest.set_interrupt_mask(1);
        assert!(
            !ch.try_lock_outbound()
                .unwrap()
                .send(hv, &p)
                .unwrap()
                .signalled
        );
        assert_eq!(s.signals(id), 1);
        // Reading: no pending_send_sz -> no signal.
        for _ in 0..3 {
            p.write_to(&host.to_guest).unwrap();
        }
        ch.try_recv(hv, &mut buf).unwrap().unwrap();
        assert_eq!(s.signals(id), 1);
        // Host waits for more room than is free after one read, but less than after two:
        // only the read that crosses the threshold signals.
        let free = host.to_guest.bytes_to_write().unwrap();
        host.to_guest.set_pending_send_sz(free + 20);
        ch.try_recv(hv, &mut buf).unwrap().unwrap();
        assert_eq!(s.signals(id), 2, "crossed pending_send_sz");
        ch.try_recv(hv, &mut buf).unwrap().unwrap();
        assert_eq!(s.signals(id), 2, "already above pending_send_sz");
        // Polling mode sets our inbound interrupt_mask.
        ch.set_polling(true);
        assert_eq!(host.to_guest.interrupt_mask(), 1);
    }
}

#[test]
fn try_lock_is_exclusive_and_full_rings_refuse_without_overwriting() {
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let mut c = connected(&g);
    let opts = OpenOptions {
        send_ring_pages: 2,
        recv_ring_pages: 2,
        ..OpenOptions::default()
    };
    let ch = c.open_channel(g.hv(0), &g.clock, &s.mem, 1, &opts).unwrap();
    let hv = g.hv(0);
    let mut guard = ch.try_lock_outbound().unwrap();
    assert!(
        ch.try_lock_outbound().is_none(),
        "second try_lock fails while held"
    );
    assert!(ch.is_outbound_locked());
    let data = [0xAB; 1000];
    let p = OutgoingPacket::InBand {
        trans_id: 0,
        completion_requested: false,
        data: &data,
    };
    let mut sent = 0;
    let err = loop {
        match guard.send(hv, &p) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(
        sent, 3,
        "4096-byte ring holds three 1024-byte packets, never fills"
    );
    assert_eq!(err, ChannelError::Full);
    drop(guard);
    assert!(ch.try_lock_outbound().is_some(), "released on drop");
    let host = s.host_channel(1).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        let o = host.from_guest.read(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[16..1016], &data[..]);
        assert_eq!(o.len, 1016);
    }
    assert!(host.from_guest.read(&mut buf).unwrap().is_none());
}

#[test]
fn corrupt_host_ring_indices_are_reported_not_trusted() {
    let s = sim(SimArch::Aarch64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let mut c = connected(&g);
    let ch = c
        .open_channel(g.hv(0), &g.clock, &s.mem, 1, &OpenOptions::default())
        .unwrap();
    let host = s.host_channel(1).unwrap();
    // The host claims a packet longer than what it wrote.
    let d = vmbus::ring::PacketDescriptor {
        ty: 6,
        offset8: 2,
        len8: 200,
        flags: 0,
        trans_id: 0,
    };
    use zerocopy_free::as_bytes;
    host.to_guest.write(&[as_bytes(&d)]).unwrap();
    let mut buf = [0u8; 4096];
    assert_eq!(
        ch.try_recv(g.hv(0), &mut buf).map(|p| p.is_some()),
        Err(ChannelError::Poisoned(
            vmbus::channel::Poison::BadDescriptor
        ))
    );
}

mod zerocopy_free {
    pub fn as_bytes(d: &vmbus::ring::PacketDescriptor) -> &[u8] {
        zerocopy::IntoBytes::as_bytes(d)
    }
}

#[test]
fn below_5_0_non_dedicated_channels_set_their_bit_in_the_interrupt_page_send_half() {
    let s = sim(SimArch::X86_64, Personality::Qemu);
    let g = Guest::boot(&s, SynicMode::Polling);
    let mut c = connected(&g);
    assert_eq!(c.version(), vmbus::Version::WIN10);
    let contact = s.guest_messages_of(14).pop().unwrap();
    let int_page = u64::from_le_bytes(contact[16..24].try_into().unwrap());
    let ch = c
        .open_channel(g.hv(0), &g.clock, &s.mem, 3, &OpenOptions::default())
        .unwrap();
    let p = OutgoingPacket::InBand {
        trans_id: 1,
        completion_requested: false,
        data: b"x",
    };
    assert!(
        ch.try_lock_outbound()
            .unwrap()
            .send(g.hv(0), &p)
            .unwrap()
            .signalled
    );
    // Send half = second half of the page (ref §4.2); relid 3 -> bit 3 of the first word.
    assert_eq!(s.mem.read_u64(int_page + 2048), Some(1 << 3));
    assert_eq!(s.mem.read_u64(int_page), Some(0), "receive half untouched");
    assert_eq!(s.signals(16 + 3), 1, "QEMU's connection id for relid 3");
}

#[test]
fn qemu_resets_the_bus_on_initiate_contact() {
    let s = sim(SimArch::X86_64, Personality::Qemu);
    let g = Guest::boot(&s, SynicMode::Polling);
    let mut c = connected(&g);
    let _ch = c
        .open_channel(g.hv(0), &g.clock, &s.mem, 1, &OpenOptions::default())
        .unwrap();
    assert!(s.host_channel(1).is_some());
    // A second INITIATE_CONTACT without UNLOAD: QEMU drops every channel and GPADL.
    let _c2 = connected(&g);
    assert!(s.host_channel(1).is_none());
}

#[test]
fn a_failed_signal_after_a_read_does_not_lose_the_packet() {
    for arch in ARCHES {
        let s = sim(arch, hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut c = connected(&g);
        let ch = c
            .open_channel(hv, &g.clock, &s.mem, 1, &OpenOptions::default())
            .unwrap();
        let host = s.host_channel(1).unwrap();
        let p = OutgoingPacket::InBand {
            trans_id: 9,
            completion_requested: false,
            data: &[7; 24],
        };
        p.write_to(&host.to_guest).unwrap();
        // The read crosses the host's pending_send_sz, so it signals, and the signal fails.
        let free = host.to_guest.bytes_to_write().unwrap();
        host.to_guest.set_pending_send_sz(free + 8);
        s.faults(|f| f.signal_failures = 1);
        let mut buf = [0u8; 256];
        let got = ch.try_recv(hv, &mut buf);
        assert!(
            matches!(&got, Ok(Some(pkt)) if pkt.trans_id() == 9),
            "{arch:?}: {got:?}"
        );
        assert_eq!(host.to_guest.bytes_to_read().unwrap(), 0, "consumed once");
    }
}
