//! Receive paths are total (issue 11 item 1): a corrupt ring or packet poisons that channel
//! (it is no longer read, and the error says why), every drain handles a bounded number of
//! packets per call, and every wait for the host ends at its deadline even while the host
//! floods the channel. A hang shows up as a failure: the driver's channel is wrapped in
//! [`Bounded`], which fails the test after [`common::bounded::HANG_BOUND`] receive calls.

mod common;

use common::bounded::Bounded;
use common::{sim_with, ARCHES, PERSONALITIES};
use smoltcp::phy::Device;
use smoltcp::time::Instant;
use vmbus::channel::Poison;
use vmbus::device::{
    ChannelError, ConnectionGpadls, CoreChannel, DmaMemory, PhysRegion, SpinBudget,
};
use vmbus::guid::{NET, SYNTHVID};
use vmbus::netvsc::nvsp;
use vmbus::netvsc::{Buffers, Netvsc, NetvscError, OpMode, DRAIN_LIMIT};
use vmbus::ring::{PacketDescriptor, PacketType};
use vmbus::synthvid::wire::Message;
use vmbus::synthvid::{Mode, Synthvid, SynthvidError, VramSource, POLL_LIMIT};
use vmbus::{
    Clock, ConnectOptions, Connection, OpenOptions, OutgoingPacket, PageAlloc, SynicMode,
    UnloadOutcome,
};
use vmbus_sim::netvsc::{NetvscHost, NetvscHostConfig};
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
use vmbus_sim::synthvid_link::{
    encode_packet, CoreHost, HostDevice, HostIo, HostPacket, Link, SimMemory,
};
use vmbus_sim::{Guest, HostChannel, Personality, Sim, SimArch};

/// A descriptor claiming 1600 bytes where the host wrote 16: the reader cannot step over it.
fn corrupt_descriptor() -> PacketDescriptor {
    PacketDescriptor {
        ty: 6,
        offset8: 2,
        len8: 200,
        flags: 0,
        trans_id: 0,
    }
}

fn write_corrupt(host: &HostChannel) {
    host.to_guest
        .write(&[zerocopy::IntoBytes::as_bytes(&corrupt_descriptor())])
        .unwrap();
}

fn poisoned(e: &ChannelError) -> bool {
    matches!(e, ChannelError::Poisoned(Poison::BadDescriptor))
}

// ---- the core channel ------------------------------------------------------------------

#[test]
fn core_channel_poisons_its_inbound_ring_on_a_corrupt_descriptor() {
    for arch in ARCHES {
        for p in PERSONALITIES {
            let s = sim_with(arch, p);
            let g = Guest::boot(&s, SynicMode::Polling);
            let hv = g.hv(0);
            let mut c =
                Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                    .unwrap();
            c.request_offers(hv, &g.clock).unwrap();
            let relid = c.find_offer(&SYNTHVID).unwrap().child_relid;
            let ch = c
                .open_channel(hv, &g.clock, &s.mem, relid, &OpenOptions::default())
                .unwrap();
            let host = s.host_channel(relid).unwrap();
            write_corrupt(&host);
            let mut buf = [0u8; 4096];
            // The first read poisons the ring (the descriptor's numbers go to the log) ...
            assert_eq!(
                ch.try_recv(hv, &mut buf).map(|p| p.is_some()),
                Err(ChannelError::Poisoned(Poison::BadDescriptor)),
                "{arch:?} {p:?}"
            );
            assert_eq!(ch.rx_poisoned(), Some(Poison::BadDescriptor));
            // ... and from then on the ring is not read again, even if good packets follow.
            OutgoingPacket::InBand {
                trans_id: 1,
                completion_requested: false,
                data: &[1; 8],
            }
            .write_to(&host.to_guest)
            .unwrap();
            let used = host.to_guest.bytes_to_read().unwrap();
            for _ in 0..3 {
                assert_eq!(
                    ch.try_recv(hv, &mut buf).map(|p| p.is_some()),
                    Err(ChannelError::Poisoned(Poison::BadDescriptor))
                );
            }
            assert_eq!(host.to_guest.bytes_to_read().unwrap(), used, "not consumed");
            // The outbound ring is healthy: sends still go out.
            assert_eq!(ch.tx_poisoned(), None);
            ch.try_lock_outbound()
                .unwrap()
                .send(
                    hv,
                    &OutgoingPacket::InBand {
                        trans_id: 2,
                        completion_requested: false,
                        data: &[2; 8],
                    },
                )
                .unwrap();
        }
    }
}

#[test]
fn core_channel_poisons_its_inbound_ring_on_a_corrupt_index() {
    for arch in ARCHES {
        let s = sim_with(arch, common::hyperv());
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut c = Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
            .unwrap();
        c.request_offers(hv, &g.clock).unwrap();
        let relid = c.find_offer(&SYNTHVID).unwrap().child_relid;
        let ch = c
            .open_channel(hv, &g.clock, &s.mem, relid, &OpenOptions::default())
            .unwrap();
        // The host scribbles a misaligned write index into the inbound control page.
        let inbound = ch.ring_pages().gpa() + (ch.send_ring_pages() * 4096) as u64;
        assert!(s.mem.write(inbound, &4093u32.to_le_bytes()));
        let mut buf = [0u8; 256];
        assert_eq!(
            ch.try_recv(hv, &mut buf).map(|p| p.is_some()),
            Err(ChannelError::Poisoned(Poison::BadIndex))
        );
        assert_eq!(ch.poisoned(), Some(Poison::BadIndex));
        // Repaired or not, the ring stays off.
        assert!(s.mem.write(inbound, &0u32.to_le_bytes()));
        assert_eq!(
            ch.try_recv(hv, &mut buf).map(|p| p.is_some()),
            Err(ChannelError::Poisoned(Poison::BadIndex))
        );
    }
}

// ---- netvsc --------------------------------------------------------------------------------

type CoreNic<'a> = Netvsc<Bounded<CoreChannel<'a>>, PhysRegion>;

/// netvsc brought up over the core channel of `s` (real rings), then `f`.
fn with_core_netvsc(arch: SimArch, p: Personality, f: impl FnOnce(&mut CoreNic<'_>, HostChannel)) {
    let s: Sim = sim_with(arch, p);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut conn =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    conn.request_offers(hv, &g.clock).unwrap();
    let relid = conn.find_offer(&NET).unwrap().child_relid;
    let opts = OpenOptions {
        send_ring_pages: 8,
        recv_ring_pages: 8,
        ..OpenOptions::default()
    };
    let ch = conn
        .open_channel(hv, &g.clock, &s.mem, relid, &opts)
        .unwrap();
    let region = |pages: usize| {
        let p = s.mem.alloc_pages(pages).unwrap();
        // SAFETY: freshly allocated sim guest pages, used only through this region.
        unsafe { PhysRegion::new(p.va(), p.len(), p.gpa()) }
    };
    let bufs = Buffers {
        recv: region(8),
        send: Some(region(8)),
        tx: region(2),
    };
    let mut nic = Box::new(Netvsc::new(Bounded::new(CoreChannel::new(&ch, hv)), bufs));
    let host = NetvscHost::new(NetvscHostConfig::default(), Box::new(QueueEndpoint::new()));
    let end = CoreHost::new(&s, relid);
    let mut hdev = host.clone();
    let mut polls = 0;
    let mut gpadls = ConnectionGpadls::new(&mut conn, hv, &g.clock, relid);
    nic.bring_up(&mut gpadls, &mut || {
        end.pump(&mut hdev);
        polls += 1;
        polls > 10_000
    })
    .unwrap();
    f(&mut nic, s.host_channel(relid).unwrap());
}

#[test]
fn netvsc_poll_over_the_core_ends_and_poisons_on_a_corrupt_descriptor() {
    for arch in ARCHES {
        for p in PERSONALITIES {
            with_core_netvsc(arch, p, |nic, host| {
                nic.set_mode(OpMode::Polling);
                write_corrupt(&host);
                let before = nic.channel().recvs();
                let r = nic.poll();
                assert!(
                    matches!(&r, Err(NetvscError::Channel(e)) if poisoned(e)),
                    "{arch:?} {p:?}: {r:?}"
                );
                let after = nic.channel().recvs();
                assert!(after - before <= 2, "{} reads", after - before);
                assert!(matches!(nic.poisoned(), Some(e) if poisoned(&e)));
                // Later polls and smoltcp's receive and transmit do not read the ring. (The
                // outbound ring is healthy: frames may still go out while send slots last, so
                // a crash record can leave even if its ack cannot be read.)
                assert!(matches!(nic.poll(), Err(NetvscError::Channel(e)) if poisoned(&e)));
                assert!(nic.receive(Instant::ZERO).is_none());
                let _ = nic.transmit(Instant::ZERO);
                let mut out = [0u8; 64];
                assert!(nic.recv_frame(&mut out).is_err());
                assert_eq!(nic.channel().recvs(), after, "poisoned ring read again");
            });
        }
    }
}

/// An unsolicited NVSP message the host may send at any time (netvsc.c: the indirection
/// table, type 134), without a completion request.
fn nvsp_flood_packet() -> Vec<u8> {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&nvsp::MsgType::SEND_INDIRECTION_TABLE.0.to_le_bytes());
    encode_packet(PacketType::DATA_INBAND.0, 0, 0, &[], &m)
}

struct Silent;
impl HostDevice for Silent {
    fn on_packet(&mut self, _: &mut HostIo<'_>, _: &HostPacket) {}
}

type LinkNic =
    Netvsc<Bounded<vmbus_sim::synthvid_link::SimChannel>, vmbus_sim::synthvid_link::SimRegion>;

fn link_nic(dev: Box<dyn HostDevice>) -> (Link, Box<LinkNic>) {
    let mem = SimMemory::new(0x1_0000_0000, 1 << 20);
    let link = Link::new(mem.clone(), 64 * 1024, dev);
    let bufs = Buffers {
        recv: mem.alloc(64 * 1024),
        send: Some(mem.alloc(64 * 1024)),
        tx: mem.alloc(4 * 4096),
    };
    let nic = Box::new(Netvsc::new(Bounded::new(link.guest()), bufs));
    (link, nic)
}

#[test]
fn netvsc_poll_handles_at_most_drain_limit_packets_per_call_under_a_flood() {
    let host = NetvscHost::new(NetvscHostConfig::default(), Box::new(QueueEndpoint::new()));
    let (link, mut nic) = link_nic(Box::new(host));
    nic.bring_up(&mut link.gpadls(), &mut SpinBudget(10_000))
        .unwrap();
    for mode in [OpMode::Polling, OpMode::Interrupt] {
        nic.set_mode(mode);
        nic.channel().flood(Some(nvsp_flood_packet()));
        for _ in 0..3 {
            nic.on_interrupt();
            let before = nic.channel().recvs();
            let n = nic.poll().unwrap();
            let reads = nic.channel().recvs() - before;
            assert!(n > 0 && n <= DRAIN_LIMIT, "{mode:?}: handled {n}");
            assert!(reads <= DRAIN_LIMIT as u64 + 1, "{mode:?}: {reads} reads");
            // smoltcp's entry points are bounded the same way.
            let before = nic.channel().recvs();
            let _ = nic.receive(Instant::ZERO);
            let _ = nic.transmit(Instant::ZERO);
            assert!(nic.channel().recvs() - before <= 2 * (DRAIN_LIMIT as u64 + 1));
        }
        nic.channel().flood(None);
        let n = nic.poll().unwrap();
        assert!(n <= DRAIN_LIMIT);
    }
    assert!(nic.poisoned().is_none(), "valid packets do not poison");
}

#[test]
fn netvsc_bring_up_gives_up_at_its_deadline_under_a_flood() {
    let (link, mut nic) = link_nic(Box::new(Silent));
    nic.channel().flood(Some(nvsp_flood_packet()));
    let r = nic.bring_up(&mut link.gpadls(), &mut SpinBudget(100));
    assert!(matches!(r, Err(NetvscError::Timeout(_))), "{r:?}");
    assert!(nic.channel().recvs() <= 101 * (DRAIN_LIMIT as u64 + 1));
}

// ---- synthvid ------------------------------------------------------------------------------

#[test]
fn synthvid_poll_over_the_core_ends_and_poisons_on_a_corrupt_descriptor() {
    for arch in ARCHES {
        for p in PERSONALITIES {
            let s = sim_with(arch, p);
            let g = Guest::boot(&s, SynicMode::Polling);
            let hv = g.hv(0);
            let mut conn =
                Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                    .unwrap();
            conn.request_offers(hv, &g.clock).unwrap();
            let offer = *conn.find_offer(&SYNTHVID).unwrap();
            let relid = offer.child_relid;
            let ch = conn
                .open_channel(hv, &g.clock, &s.mem, relid, &OpenOptions::default())
                .unwrap();
            let mode = Mode::new(64, 48);
            let pages = s.mem.alloc_pages(mode.bytes().div_ceil(4096)).unwrap();
            // SAFETY: pages just allocated from the sim's guest memory, used only here.
            let vram = unsafe { PhysRegion::new(pages.va(), pages.len(), pages.gpa()) };
            let mut dev = Synthvid::new(Bounded::new(CoreChannel::new(&ch, hv)));
            let host = SynthvidHost::without_memory(SynthvidHostConfig::for_personality(p));
            let end = CoreHost::new(&s, relid);
            let mut hdev = host.clone();
            dev.connect(
                VramSource::VmbusMmio {
                    gpa: vram.gpa(),
                    mmio_megabytes: offer.mmio_megabytes,
                },
                mode,
                &mut || {
                    end.pump(&mut hdev);
                    false
                },
            )
            .unwrap();
            end.pump(&mut hdev);
            dev.poll().unwrap();
            write_corrupt(&s.host_channel(relid).unwrap());
            let before = dev.channel().recvs();
            let r = dev.poll();
            assert!(
                matches!(&r, Err(SynthvidError::Channel(e)) if poisoned(e)),
                "{arch:?} {p:?}: {r:?}"
            );
            let after = dev.channel().recvs();
            assert!(after - before <= 2);
            for _ in 0..3 {
                assert!(matches!(dev.poll(), Err(SynthvidError::Channel(e)) if poisoned(&e)));
            }
            assert_eq!(dev.channel().recvs(), after, "poisoned ring read again");
            assert!(matches!(dev.poisoned(), Some(e) if poisoned(&e)));
        }
    }
}

fn feature_change_packet() -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = Message::FeatureChange {
        dirt_needed: true,
        ptr_pos_needed: false,
        ptr_shape_needed: false,
        situ_needed: false,
    }
    .emit(&mut b)
    .unwrap();
    encode_packet(PacketType::DATA_INBAND.0, 0, 0, &[], &b[..n])
}

#[test]
fn synthvid_poll_handles_at_most_poll_limit_messages_per_call_under_a_flood() {
    let mem = SimMemory::new(0x1_0000_0000, 4 << 20);
    let vram = mem.alloc(4 << 20);
    let host = SynthvidHost::new(SynthvidHostConfig::default(), mem.clone());
    let link = Link::new(mem, vmbus::synthvid::RING_SIZE, Box::new(host));
    let mut dev = Synthvid::new(Bounded::new(link.guest()));
    dev.connect(
        VramSource::VmbusMmio {
            gpa: vram.gpa(),
            mmio_megabytes: 4,
        },
        Mode::new(640, 480),
        &mut SpinBudget(1000),
    )
    .unwrap();
    dev.channel().flood(Some(feature_change_packet()));
    for _ in 0..3 {
        let before = dev.channel().recvs();
        let n = dev.poll().unwrap();
        assert!(n > 0 && n <= POLL_LIMIT, "handled {n}");
        assert!(dev.channel().recvs() - before <= POLL_LIMIT as u64 + 1);
    }
    assert!(dev.dirt_needed());
}

#[test]
fn synthvid_connect_gives_up_at_its_deadline_under_a_flood() {
    let mem = SimMemory::new(0x1_0000_0000, 4 << 20);
    let vram = mem.alloc(4 << 20);
    let link = Link::new(mem, vmbus::synthvid::RING_SIZE, Box::new(Silent));
    let mut dev = Synthvid::new(Bounded::new(link.guest()));
    dev.channel().flood(Some(feature_change_packet()));
    let r = dev.connect(
        VramSource::VmbusMmio {
            gpa: vram.gpa(),
            mmio_megabytes: 4,
        },
        Mode::new(640, 480),
        &mut SpinBudget(1000),
    );
    assert_eq!(r, Err(SynthvidError::Timeout("VERSION_RESPONSE")));
    assert!(dev.channel().recvs() <= 1_001);
}

// ---- the connection ------------------------------------------------------------------------

#[test]
fn connection_requests_and_unload_end_at_their_deadline_under_an_endless_flood() {
    for arch in ARCHES {
        for p in PERSONALITIES {
            let s = sim_with(arch, p);
            let g = Guest::boot(&s, SynicMode::Polling);
            let hv = g.hv(0);
            let opts = ConnectOptions {
                reply_timeout: 2_000_000,
                ..ConnectOptions::default()
            };
            let mut c = Connection::connect(hv, &g.clock, &s.mem, &g.synic, &opts).unwrap();
            c.set_poll_limit(1_000_000);
            c.request_offers(hv, &g.clock).unwrap();
            // From now on every EOM brings another malformed message (a 3-byte VMBus
            // message), forever, and the host answers nothing.
            s.faults(|f| {
                f.flood_on_eom = Some((1, 3, vec![1, 2, 3]));
                f.drop_unload_response = true;
            });
            // Two to start: the second sets msg_pending, so the guest EOMs, which queues the
            // next one, and so on.
            s.inject(0, 1, 3, &[1, 2, 3]);
            s.inject(0, 1, 3, &[1, 2, 3]);
            let malformed = c.malformed_messages();
            // Each poll() takes exactly one message: the caller's loop bounds the work.
            for _ in 0..100 {
                assert!(c.poll(hv, &g.clock).is_some());
            }
            assert!(c.malformed_messages() >= malformed + 99);
            // A request whose reply never comes ends at the reply timeout.
            let t0 = g.clock.now();
            assert!(c
                .teardown_gpadl(hv, &g.clock, 1, vmbus::GpadlId(0x1234))
                .is_err());
            assert!(g.clock.now() - t0 < 2 * opts.reply_timeout);
            // UNLOAD without a response ends at its deadline.
            let deadline = g.clock.now() + 2_000_000;
            assert!(matches!(
                c.unload(hv, &g.clock, deadline),
                UnloadOutcome::TimedOut { .. }
            ));
            assert!(g.clock.now() < deadline + 2_000_000);
        }
    }
}
