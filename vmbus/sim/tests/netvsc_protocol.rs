//! netvsc guest driver against the netvsc host model over the ring-backed channel double:
//! bring-up, smoltcp UDP and TCP through the model, completions, polling mode, bad input.
//! Bring-up runs against every host personality's netvsp (`NetvscHostConfig::for_personality`).

mod common;

use common::PERSONALITIES;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint};
use vmbus::device::{DeviceChannel, OutgoingPacket};
use vmbus::netvsc::nvsp::{self, Nvsp};
use vmbus::netvsc::rndis::{self, Rndis};
use vmbus::netvsc::{NetvscError, OpMode};
use vmbus::ring::{PacketType, FLAG_COMPLETION_REQUESTED};
use vmbus_sim::netvsc::{NetvscHostConfig, NetvscState};
use vmbus_sim::netvsc_bridge::{HostPort, QueueEndpoint};
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};
use vmbus_sim::synthvid_link::encode_packet;

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn testbed(cfg: NetvscHostConfig, sizes: Sizes) -> (Testbed, QueueEndpoint) {
    let ep = QueueEndpoint::new();
    (Testbed::new(cfg, Box::new(ep.clone()), sizes), ep)
}

#[test]
fn full_bring_up_negotiates_nvsp_61_and_reads_the_mac() {
    for p in PERSONALITIES {
        full_bring_up_on(NetvscHostConfig::for_personality(p));
    }
}

fn full_bring_up_on(cfg: NetvscHostConfig) {
    let (mut tb, _) = testbed(cfg, Sizes::default());
    tb.bring_up().unwrap();
    let st = tb.host.state();
    assert_eq!(st.init_requests, vec![nvsp::VERSION_61]);
    assert_eq!(st.version, Some(nvsp::VERSION_61));
    assert_eq!(st.ndis_mtu, Some(1514));
    assert_eq!(st.ndis_version, Some((6, 30)));
    assert!(st.recv_buf.is_some() && st.send_buf.is_some());
    assert!(st.rndis_up);
    assert_eq!(
        st.queried,
        vec![
            rndis::OID_802_3_PERMANENT_ADDRESS,
            rndis::OID_GEN_MEDIA_CONNECT_STATUS
        ]
    );
    assert_eq!(st.packet_filter, Some(0x1 | 0x2 | 0x8));
    assert_eq!(tb.nic.mac(), NetvscHostConfig::default().mac);
    assert!(tb.nic.link_up());
    assert_eq!(tb.nic.nvsp_version(), nvsp::VERSION_61);
    assert_eq!(tb.nic.send_section_size(), 6144);
    let sec = tb.nic.recv_section().unwrap();
    assert_eq!(
        (sec.sub_alloc_size, sec.num_sub_allocs),
        (1728, 64 * 1024 / 1728)
    );
    // Control replies came as transfer pages and were all completed.
    assert_eq!(st.xfer_sent, 4);
    assert_eq!(st.outstanding(), 0);
    // Interrupt mode afterwards.
    assert_eq!(tb.nic.mode(), OpMode::Interrupt);
    assert!(!tb.link.guest_masked());
    assert_eq!(tb.nic.stats().malformed, 0);
}

#[test]
fn bring_up_steps_down_to_the_hosts_nvsp_version() {
    for (p, (max, tried, ndis)) in PERSONALITIES.into_iter().flat_map(|p| {
        [
            (
                nvsp::VERSION_5,
                vec![nvsp::VERSION_61, nvsp::VERSION_6, nvsp::VERSION_5],
                (6, 30),
            ),
            (
                nvsp::VERSION_4,
                vec![
                    nvsp::VERSION_61,
                    nvsp::VERSION_6,
                    nvsp::VERSION_5,
                    nvsp::VERSION_4,
                ],
                (6, 1),
            ),
            (
                nvsp::VERSION_2,
                vec![
                    nvsp::VERSION_61,
                    nvsp::VERSION_6,
                    nvsp::VERSION_5,
                    nvsp::VERSION_4,
                    nvsp::VERSION_2,
                ],
                (6, 1),
            ),
        ]
        .map(|c| (p, c))
    }) {
        let cfg = NetvscHostConfig {
            max_version: max,
            ..NetvscHostConfig::for_personality(p)
        };
        let (mut tb, _) = testbed(cfg, Sizes::default());
        tb.bring_up().unwrap();
        let st = tb.host.state();
        assert_eq!(st.init_requests, tried);
        assert_eq!(tb.nic.nvsp_version(), max);
        assert_eq!(st.ndis_version, Some(ndis));
        assert!(st.ndis_mtu.is_some());
    }
}

#[test]
fn bring_up_fails_cleanly_when_no_version_is_accepted() {
    let cfg = NetvscHostConfig {
        min_version: 0x70000,
        max_version: 0x70000,
        ..Default::default()
    };
    let (mut tb, _) = testbed(cfg, Sizes::default());
    assert_eq!(tb.bring_up(), Err(NetvscError::NoVersion));
    assert_eq!(tb.host.state().init_requests.len(), 6);
}

struct Net {
    tb: Testbed,
    port: HostPort,
    giface: Interface,
    hiface: Interface,
    gsock: SocketSet<'static>,
    hsock: SocketSet<'static>,
    now: i64,
}

const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];

fn net(sizes: Sizes) -> Net {
    let (mut tb, ep) = testbed(NetvscHostConfig::default(), sizes);
    tb.bring_up().unwrap();
    let mut port = ep.port();
    let gcfg = Config::new(EthernetAddress(tb.nic.mac()).into());
    let mut giface = Interface::new(gcfg, &mut *tb.nic, Instant::ZERO);
    giface.update_ip_addrs(|a| {
        a.push(IpCidr::new(ip(GUEST_IP), 24)).unwrap();
    });
    let hcfg = Config::new(EthernetAddress(HOST_MAC).into());
    let mut hiface = Interface::new(hcfg, &mut port, Instant::ZERO);
    hiface.update_ip_addrs(|a| {
        a.push(IpCidr::new(ip(HOST_IP), 24)).unwrap();
    });
    Net {
        tb,
        port,
        giface,
        hiface,
        gsock: SocketSet::new(vec![]),
        hsock: SocketSet::new(vec![]),
        now: 0,
    }
}

impl Net {
    fn step(&mut self) {
        self.now += 1;
        let t = Instant::from_millis(self.now);
        self.giface.poll(t, &mut *self.tb.nic, &mut self.gsock);
        self.tb.service();
        self.hiface.poll(t, &mut self.port, &mut self.hsock);
        self.tb.service();
    }
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]),
    )
}

fn assert_all_completed(st: &NetvscState, n: &Net) {
    assert!(st.xfer_sent > 0);
    assert_eq!(
        st.outstanding(),
        0,
        "host still waits for completions: {st:?}"
    );
    assert_eq!(st.xfer_completed_failed, 0);
    assert_eq!(st.bogus_completions, 0);
    let gs = n.tb.nic.stats();
    assert_eq!(gs.xfer_completed, gs.xfer_packets);
    assert_eq!(gs.xfer_packets, st.xfer_sent);
}

#[test]
fn udp_exchange_through_the_model_completes_every_transfer_page_packet() {
    let mut n = net(Sizes::default());
    let g = n.gsock.add(udp_socket());
    let h = n.hsock.add(udp_socket());
    n.gsock.get_mut::<udp::Socket>(g).bind(4000).unwrap();
    n.hsock.get_mut::<udp::Socket>(h).bind(5000).unwrap();
    let host_ep = IpEndpoint::new(ip(HOST_IP), 5000);
    let mut echoed = Vec::new();
    let mut sent = 0;
    for _ in 0..2000 {
        if sent < 40 && n.gsock.get_mut::<udp::Socket>(g).can_send() {
            let msg = format!("datagram {sent}");
            if n.gsock
                .get_mut::<udp::Socket>(g)
                .send_slice(msg.as_bytes(), host_ep)
                .is_ok()
            {
                sent += 1;
            }
        }
        n.step();
        // The host echoes everything back.
        let hs = n.hsock.get_mut::<udp::Socket>(h);
        while let Ok((data, meta)) = hs.recv() {
            let d = data.to_vec();
            hs.send_slice(&d, meta.endpoint).unwrap();
        }
        let gs = n.gsock.get_mut::<udp::Socket>(g);
        while let Ok((data, _)) = gs.recv() {
            echoed.push(String::from_utf8(data.to_vec()).unwrap());
        }
        if echoed.len() == 40 {
            break;
        }
    }
    assert_eq!(echoed.len(), 40, "echoed: {echoed:?}");
    assert_eq!(echoed[0], "datagram 0");
    assert_eq!(echoed[39], "datagram 39");
    for _ in 0..5 {
        n.step();
    }
    let st = n.tb.host.state();
    assert!(st.frames_via_send_buf >= 40);
    assert_all_completed(&st, &n);
    assert!(n.tb.link.interrupts() > 0, "interrupt mode used interrupts");
}

#[test]
fn tcp_connection_through_the_model() {
    let mut n = net(Sizes {
        send: None, // frames go GPA-direct this time
        ..Default::default()
    });
    let mk = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 8192]),
            tcp::SocketBuffer::new(vec![0; 8192]),
        )
    };
    let h = n.hsock.add(mk());
    let g = n.gsock.add(mk());
    n.hsock.get_mut::<tcp::Socket>(h).listen(7777).unwrap();
    let cx = n.giface.context();
    n.gsock
        .get_mut::<tcp::Socket>(g)
        .connect(cx, (ip(HOST_IP), 7777), 49152)
        .unwrap();
    let payload: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
    let mut off = 0;
    let mut got = Vec::new();
    let mut reply = Vec::new();
    for _ in 0..5000 {
        n.step();
        let gs = n.gsock.get_mut::<tcp::Socket>(g);
        if gs.may_send() && off < payload.len() {
            off += gs.send_slice(&payload[off..]).unwrap();
        }
        if gs.can_recv() {
            gs.recv(|b| {
                reply.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        let hs = n.hsock.get_mut::<tcp::Socket>(h);
        if hs.can_recv() {
            hs.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if got.len() == payload.len() && hs.may_send() && reply.is_empty() {
            hs.send_slice(b"thanks").unwrap();
        }
        if reply == b"thanks" {
            break;
        }
    }
    assert_eq!(got, payload);
    assert_eq!(reply, b"thanks");
    for _ in 0..5 {
        n.step();
    }
    let st = n.tb.host.state();
    assert!(st.frames_via_gpa > 0 && st.frames_via_send_buf == 0);
    assert_all_completed(&st, &n);
}

#[test]
fn polling_mode_sends_and_reaps_completions_with_interrupts_off() {
    // Four GPA-direct pages = 7 frame slots: 200 frames only go out if completions are
    // reaped by polling.
    let (mut tb, ep) = testbed(
        NetvscHostConfig::default(),
        Sizes {
            send: None,
            tx: 4 * 4096,
            ..Default::default()
        },
    );
    tb.bring_up().unwrap();
    tb.nic.set_mode(OpMode::Polling);
    assert!(tb.link.guest_masked());
    let irq_before = tb.link.interrupts();
    let mut frame = [0u8; 600];
    frame[..6].copy_from_slice(&HOST_MAC);
    frame[6..12].copy_from_slice(&tb.nic.mac());
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental ethertype
    let mut sent = 0;
    let mut refused = 0;
    while sent < 200 {
        frame[14..18].copy_from_slice(&(sent as u32).to_le_bytes());
        if tb.nic.send_frame(&frame).unwrap() {
            sent += 1;
        } else {
            refused += 1;
            assert!(refused < 10_000);
        }
    }
    // No interrupt was raised or delivered, and the host got every frame.
    assert_eq!(tb.link.interrupts(), irq_before);
    let st = tb.host.state();
    assert_eq!(st.frames_from_guest, 200);
    assert_eq!(st.frames_via_gpa, 200);
    // Frames to the guest are picked up by polling too, and completed.
    let port_side = ep.clone();
    let _ = port_side;
    let mut to_guest = frame;
    to_guest[..6].copy_from_slice(&tb.nic.mac());
    tb.link.inject(|io| {
        for _ in 0..5 {
            tb.host.deliver_frame(io, &to_guest);
        }
    });
    let mut buf = [0u8; 1600];
    let mut got = 0;
    while let Some(len) = tb.nic.recv_frame(&mut buf).unwrap() {
        assert_eq!(len, 600);
        got += 1;
    }
    assert_eq!(got, 5);
    assert_eq!(tb.link.interrupts(), irq_before);
    assert_eq!(tb.host.state().outstanding(), 0);
}

#[test]
fn polling_mode_carries_udp_through_smoltcp() {
    let mut n = net(Sizes::default());
    n.tb.nic.set_mode(OpMode::Polling);
    let irq_before = n.tb.link.interrupts();
    let g = n.gsock.add(udp_socket());
    let h = n.hsock.add(udp_socket());
    n.gsock.get_mut::<udp::Socket>(g).bind(4001).unwrap();
    n.hsock.get_mut::<udp::Socket>(h).bind(5001).unwrap();
    let mut received = 0;
    let mut sent = 0;
    for _ in 0..3000 {
        if sent < 50 {
            let gs = n.gsock.get_mut::<udp::Socket>(g);
            if gs.send_slice(b"poll", (ip(HOST_IP), 5001)).is_ok() {
                sent += 1;
            }
        }
        // Polling: no interrupt delivery, only polls.
        n.now += 1;
        let t = Instant::from_millis(n.now);
        n.giface.poll(t, &mut *n.tb.nic, &mut n.gsock);
        n.tb.link.pump();
        n.hiface.poll(t, &mut n.port, &mut n.hsock);
        n.tb.link.pump();
        let hs = n.hsock.get_mut::<udp::Socket>(h);
        while hs.recv().is_ok() {
            received += 1;
        }
        if received == 50 {
            break;
        }
    }
    assert_eq!(received, 50);
    assert_eq!(n.tb.link.interrupts(), irq_before);
    assert_eq!(n.tb.host.state().outstanding(), 0);
}

fn xfer_ext(pageset: u16, ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend(pageset.to_le_bytes());
    e.extend([0u8, 0]);
    e.extend((ranges.len() as u32).to_le_bytes());
    for &(count, off) in ranges {
        e.extend(count.to_le_bytes());
        e.extend(off.to_le_bytes());
    }
    e
}

fn nvsp_rndis_pkt() -> Vec<u8> {
    let mut b = [0u8; 40];
    let n = Nvsp::RndisPacket {
        channel_type: 0,
        section_index: nvsp::INVALID_SECTION,
        section_size: 0,
    }
    .emit(&mut b)
    .unwrap();
    b[..n].to_vec()
}

#[test]
fn malformed_host_messages_are_rejected_without_panic_and_still_completed() {
    let (mut tb, _) = testbed(NetvscHostConfig::default(), Sizes::default());
    tb.bring_up().unwrap();
    let (recv_gpa, recv_len) = tb.host.state().recv_buf.unwrap();
    let before = tb.nic.stats();
    let good = nvsp_rndis_pkt();
    // A valid RNDIS packet placed at offset 0x8000 of the receive buffer, referred to by
    // some of the bad packets below.
    let frame = [0xABu8; 64];
    let mut rn = vec![0u8; 200];
    let rl = Rndis::Packet {
        data: &frame,
        ppi: &[],
    }
    .emit(&mut rn)
    .unwrap();
    tb.mem.write(recv_gpa + 0x8000, &rn[..rl]).unwrap();
    // RNDIS with a data offset past its end.
    let mut bad_rn = rn[..rl].to_vec();
    bad_rn[8..12].copy_from_slice(&5000u32.to_le_bytes());
    tb.mem.write(recv_gpa + 0x9000, &bad_rn).unwrap();
    // RNDIS whose per-packet info has size 0.
    let mut ppi_rn = vec![0u8; 200];
    let pl = Rndis::Packet {
        data: &frame,
        ppi: &[0u8; 12],
    }
    .emit(&mut ppi_rn)
    .unwrap();
    tb.mem.write(recv_gpa + 0xA000, &ppi_rn[..pl]).unwrap();

    let f = FLAG_COMPLETION_REQUESTED;
    let bad: Vec<(u64, Vec<u8>)> = vec![
        // Wrong transfer page set id.
        (
            1,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                1,
                &xfer_ext(0x1234, &[(rl as u32, 0x8000)]),
                &good,
            ),
        ),
        // Range beyond the receive buffer.
        (
            2,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                2,
                &xfer_ext(0xCAFE, &[(64, recv_len as u32 - 8)]),
                &good,
            ),
        ),
        // Range count larger than the header holds.
        (
            3,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                3,
                &{
                    let mut e = xfer_ext(0xCAFE, &[(rl as u32, 0x8000)]);
                    e[4] = 200;
                    e
                },
                &good,
            ),
        ),
        // NVSP payload that is not SEND_RNDIS_PKT.
        (
            4,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                4,
                &xfer_ext(0xCAFE, &[(rl as u32, 0x8000)]),
                &[1, 0, 0, 0, 0, 0],
            ),
        ),
        // Truncated NVSP payload.
        (
            5,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                5,
                &xfer_ext(0xCAFE, &[(rl as u32, 0x8000)]),
                &[107, 0],
            ),
        ),
        // RNDIS data offset out of range.
        (
            6,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                6,
                &xfer_ext(0xCAFE, &[(rl as u32, 0x9000)]),
                &good,
            ),
        ),
        // Zero-size per-packet info: the frame is still delivered (Linux rndis_get_ppi
        // ignores a bad PPI), so this one counts as well formed.
        (
            7,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                7,
                &xfer_ext(0xCAFE, &[(pl as u32, 0xA000)]),
                &good,
            ),
        ),
        // Oversized range.
        (
            8,
            encode_packet(
                PacketType::DATA_USING_XFER_PAGES.0,
                f,
                8,
                &xfer_ext(0xCAFE, &[(60_000, 0)]),
                &good,
            ),
        ),
    ];
    let n_xfer = bad.len() as u64;
    let mut others = vec![
        // A completion with a garbage payload and an unknown transaction id.
        encode_packet(PacketType::COMP.0, 0, 0xdead, &[], &[1, 2]),
        // A completion for a TX we never sent.
        encode_packet(
            PacketType::COMP.0,
            0,
            (2 << 32) | 77,
            &[],
            &[108, 0, 0, 0, 1, 0, 0, 0],
        ),
        // In-band garbage.
        encode_packet(PacketType::DATA_INBAND.0, 0, 0, &[], &[0xff]),
        // Unknown packet type.
        encode_packet(0x42, 0, 0, &[], &[]),
    ];
    // A descriptor whose data offset is beyond its length.
    let mut d = encode_packet(PacketType::DATA_INBAND.0, 0, 0, &[], &[0; 8]);
    d[2] = 9;
    others.push(d);
    tb.link.inject(|io| {
        for (_, p) in &bad {
            io.send_raw(p).unwrap();
        }
        for p in &others {
            io.send_raw(p).unwrap();
        }
    });
    let sends_before = tb.link.guest_sends();
    tb.nic.poll().unwrap();
    let s = tb.nic.stats();
    assert_eq!(
        s.rx_frames,
        before.rx_frames + 1,
        "no frame from bad packets but the one with a bad PPI"
    );
    assert_eq!(s.xfer_packets - before.xfer_packets, n_xfer);
    // Every transfer-page packet was completed, bad ones with a failure status.
    assert_eq!(s.xfer_completed - before.xfer_completed, n_xfer);
    assert_eq!(tb.link.guest_sends() - sends_before, n_xfer);
    // All but the bad-PPI frame and the padded in-band byte (an unknown NVSP type, ignored).
    assert!(
        s.malformed - before.malformed >= n_xfer + others.len() as u64 - 2,
        "{s:?} {before:?} {n_xfer}"
    );
    let mut buf = [0u8; 1600];
    assert!(
        tb.nic.recv_frame(&mut buf).unwrap().is_some(),
        "bad-PPI frame"
    );

    // The device still works afterwards.
    tb.link.inject(|io| tb.host.deliver_frame(io, &[0x11; 60]));
    tb.nic.on_interrupt();
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), Some(60));
    assert_eq!(tb.host.state().outstanding(), 0);
}

#[test]
fn malformed_guest_messages_are_rejected_by_the_host_model() {
    let (mut tb, _) = testbed(NetvscHostConfig::default(), Sizes::default());
    tb.bring_up().unwrap();
    let chan = tb.nic.channel().clone();
    let before = tb.host.state().rejected;
    // Truncated NVSP, an RNDIS packet in a section beyond the send buffer, an unknown message.
    chan.send(&OutgoingPacket::InBand {
        data: &[107, 0, 0],
        trans_id: 1,
        completion_requested: true,
    })
    .unwrap();
    let mut b = [0u8; 40];
    let n = Nvsp::RndisPacket {
        channel_type: 0,
        section_index: 10_000,
        section_size: 100,
    }
    .emit(&mut b)
    .unwrap();
    chan.send(&OutgoingPacket::InBand {
        data: &b[..n],
        trans_id: 2,
        completion_requested: true,
    })
    .unwrap();
    assert!(tb.host.state().rejected >= before + 2);
    // The host answered the bad RNDIS packet with a failure completion; the guest ignores a
    // completion it did not expect (counted) and keeps working.
    tb.nic.poll().unwrap();
    assert!(tb.nic.stats().malformed >= 1);
    assert!(tb.nic.send_frame(&[0u8; 60]).unwrap());
    assert_eq!(tb.host.state().frames_from_guest, 1);
}

fn ip(a: [u8; 4]) -> IpAddress {
    IpAddress::Ipv4(smoltcp::wire::Ipv4Address::from(a))
}

#[test]
fn frames_that_arrive_while_masked_are_read_after_switching_to_interrupt_mode() {
    let (mut tb, _) = testbed(NetvscHostConfig::default(), Sizes::default());
    tb.bring_up().unwrap();
    tb.nic.set_mode(OpMode::Polling);
    let irq = tb.link.interrupts();
    tb.link.inject(|io| tb.host.deliver_frame(io, &[0x5a; 64]));
    assert_eq!(tb.link.interrupts(), irq, "masked: no interrupt");
    tb.nic.set_mode(OpMode::Interrupt);
    assert!(!tb.link.guest_masked());
    // No interrupt will come for a ring that is already non-empty: the driver looks anyway.
    let mut buf = [0u8; 1600];
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), Some(64));
    assert_eq!(tb.host.state().outstanding(), 0);
    // And in interrupt mode, nothing is read without an interrupt.
    tb.link.inject(|io| tb.host.deliver_frame(io, &[0x5b; 64]));
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), None);
    assert!(tb.link.take_interrupt());
    tb.nic.on_interrupt();
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), Some(64));
}

#[test]
fn an_interrupt_handler_flag_bound_to_the_driver_triggers_the_drain() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static IRQ: AtomicBool = AtomicBool::new(false);
    let (mut tb, _) = testbed(NetvscHostConfig::default(), Sizes::default());
    tb.bring_up().unwrap();
    tb.nic.bind_interrupt_flag(&IRQ);
    let mut buf = [0u8; 1600];
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), None); // the post-bring-up look
    tb.link.inject(|io| tb.host.deliver_frame(io, &[0x61; 80]));
    assert_eq!(
        tb.nic.recv_frame(&mut buf).unwrap(),
        None,
        "no interrupt yet"
    );
    // What the VMBus ISR does for this relid:
    if tb.link.take_interrupt() {
        IRQ.store(true, Ordering::Release);
    }
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), Some(80));
    assert!(!IRQ.load(Ordering::Acquire), "flag consumed");
}

#[test]
fn polling_mode_sends_give_up_instead_of_hanging_when_the_lock_is_held() {
    use std::sync::{mpsc, Arc, Barrier};
    let (mut tb, _) = testbed(NetvscHostConfig::default(), Sizes::default());
    tb.bring_up().unwrap();
    tb.nic.set_mode(OpMode::Polling);
    let link = tb.link.clone();
    let held = Arc::new(Barrier::new(2));
    let (tx, rx) = mpsc::channel::<()>();
    let h = held.clone();
    // Another CPU was inside a send on this channel when the panic hit.
    let holder = std::thread::spawn(move || {
        let _g = link.lock_outbound();
        h.wait();
        rx.recv().unwrap();
    });
    held.wait();
    let t = std::time::Instant::now();
    let r = tb.nic.send_frame(&[0u8; 60]);
    let took = t.elapsed();
    assert_eq!(
        r,
        Err(vmbus::netvsc::NetvscError::Channel(
            vmbus::netvsc::ChannelError::Busy
        ))
    );
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    assert_eq!(tb.host.state().frames_from_guest, 0);
    tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(tb.nic.send_frame(&[0u8; 60]).unwrap());
    assert_eq!(tb.host.state().frames_from_guest, 1);
}
