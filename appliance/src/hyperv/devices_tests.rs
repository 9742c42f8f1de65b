//! The glue against `vmbus-sim`: real `Connection`/`Channel`/rings on the simulated
//! Hyper-V, the netvsc and synthvid host models, and a host-side smoltcp stack standing in
//! for the collector (it reassembles the record's chunks with `capture` and acks it, as
//! `host-collector serve` does after committing).
use super::*;
use capture::chunk::{Push, Reassembler, ReassemblerConfig};
use capture::sender::{SendState, Sender, SenderConfig};
use capture::wire::{AckRepr, AckStatus, Repr};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use vmbus::synthvid::{console, Rect};
use vmbus::UnloadOutcome;
use vmbus_sim::netvsc::{NetvscHost, NetvscHostConfig};
use vmbus_sim::netvsc_bridge::{HostPort, QueueEndpoint};
use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Personality, Sim, SimArch, SimConfig, SimOffer};

const GUEST: [u8; 4] = [10, 0, 0, 2];
const COLLECTOR: [u8; 4] = [10, 0, 0, 1];
const PORT: u16 = 7777;
const NIC_RELID: u32 = 2;
const FB_RELID: u32 = 1;

fn sim(arch: SimArch) -> Sim {
    Sim::new(sim_config(arch))
}

/// The host personalities the device tests run against (issue 17: the model disagrees with
/// us on purpose wherever the hosts differ).
fn personalities() -> [Personality; 3] {
    [
        Personality::HyperV {
            max_version: vmbus::Version::WIN10_V5_3,
        },
        Personality::Qemu,
        Personality::OpenVmm,
    ]
}

/// The configuration [`sim`] runs.
fn sim_config(arch: SimArch) -> SimConfig {
    sim_config_as(arch, personalities()[0])
}

/// [`sim_config`] with another host personality.
fn sim_config_as(arch: SimArch, p: Personality) -> SimConfig {
    let mut cfg = SimConfig::new(arch, p);
    cfg.offers = vec![
        SimOffer {
            if_type: vmbus::guid::SYNTHVID,
            if_instance: Guid([1; 16]),
            relid: FB_RELID,
            dedicated_interrupt: false,
            mmio_megabytes: 8,
        },
        SimOffer {
            if_type: vmbus::guid::NET,
            if_instance: Guid([2; 16]),
            relid: NIC_RELID,
            dedicated_interrupt: true,
            mmio_megabytes: 0,
        },
    ];
    cfg
}

fn region(s: &Sim, pages: usize) -> PhysRegion {
    let p = s.mem.alloc_pages(pages).unwrap();
    // SAFETY: freshly allocated sim guest pages, used only through this region.
    unsafe { PhysRegion::new(p.va(), p.len(), p.gpa()) }
}

/// The kernel's sizes (`pages::nic_buffers`): a 128-page receive buffer takes a GPADL
/// header and body messages.
fn bufs(s: &Sim) -> Buffers<PhysRegion> {
    Buffers {
        recv: region(s, NIC_RECV_BYTES / vmbus::PAGE_SIZE),
        send: None,
        tx: region(s, NIC_TX_BYTES / vmbus::PAGE_SIZE),
    }
}

struct NoPpis;
impl vmbus::InterruptControl for NoPpis {
    fn disable_ppi(&mut self, _intid: u32) {}
}

/// The collector's side of the wire.
struct Collector {
    iface: Interface,
    sockets: SocketSet<'static>,
    h: SocketHandle,
    port: HostPort,
    reasm: Reassembler<u8>,
    records: Vec<Vec<u8>>,
}

impl Collector {
    fn new(ep: &QueueEndpoint) -> Self {
        let mut port = ep.port();
        let mut iface = Interface::new(
            Config::new(EthernetAddress([2, 0, 0, 0, 0, 1]).into()),
            &mut port,
            Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::from(COLLECTOR)),
                24,
            ))
            .unwrap()
        });
        let mut sockets = SocketSet::new(vec![]);
        let h = sockets.add(udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 65536]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        ));
        sockets.get_mut::<udp::Socket>(h).bind(PORT).unwrap();
        Collector {
            iface,
            sockets,
            h,
            port,
            reasm: Reassembler::new(ReassemblerConfig::default()),
            records: vec![],
        }
    }

    fn poll(&mut self, t: Instant) {
        self.iface.poll(t, &mut self.port, &mut self.sockets);
        let s = self.sockets.get_mut::<udp::Socket>(self.h);
        while let Ok((d, meta)) = s.recv() {
            let d = d.to_vec();
            let Ok(Repr::Chunk(c)) = capture::wire::parse(&d, None) else {
                continue;
            };
            let Push::Complete(done) = self.reasm.push(0, &c, t.total_millis() as u64) else {
                continue;
            };
            let ack = Repr::Ack(AckRepr {
                boot_id: done.id.boot_id,
                seq: done.id.seq,
                record_crc: done.id.record_crc,
                status: AckStatus::Stored,
                followup_reported: 0,
            });
            let mut f = [0u8; 128];
            let n = capture::wire::emit(&ack, None, &mut f).unwrap();
            s.send_slice(&f[..n], meta.endpoint).unwrap();
            self.records.push(done.record);
        }
    }
}

/// The guest's network as `crate::net` keeps it: one interface with the pre-configured
/// address and one UDP socket, kept across the NIC switch of the panic path.
struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    h: SocketHandle,
    now_ms: u64,
}

impl Stack {
    fn new<D: Device>(nic: &mut D, mac: [u8; 6]) -> Self {
        let mut iface =
            Interface::new(Config::new(EthernetAddress(mac).into()), nic, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(GUEST)), 24))
                .unwrap()
        });
        let mut sockets = SocketSet::new(vec![]);
        let h = sockets.add(udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 24576]),
        ));
        sockets.get_mut::<udp::Socket>(h).bind(40_000).unwrap();
        Stack {
            iface,
            sockets,
            h,
            now_ms: 0,
        }
    }

    /// Ships `rec` over `nic` with the capture sender as the panic path's ship step does
    /// (poll until acked or the deadline), in simulated milliseconds so the outcome does
    /// not depend on the test machine's speed.
    fn ship<D: Device>(
        &mut self,
        nic: &mut D,
        rec: &capture::record::CrashRecord,
        col: &mut Collector,
        pump: &mut dyn FnMut(),
    ) -> (SendState, u32) {
        let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
        let bytes = rec.encode(&mut buf).unwrap().to_vec();
        let cfg = SenderConfig {
            initial_rto_ms: 20,
            max_rto_ms: 400,
            deadline_ms: 5_000,
        };
        let t0 = self.now_ms;
        let mut sender = Sender::new(cfg, rec.boot_id, rec.seq, &bytes, None, t0).unwrap();
        let to = (IpAddress::Ipv4(Ipv4Address::from(COLLECTOR)), PORT);
        for ms in t0..=t0 + cfg.deadline_ms + 1 {
            self.now_ms = ms;
            let t = Instant::from_millis(ms as i64);
            let st = {
                let s = self.sockets.get_mut::<udp::Socket>(self.h);
                sender.poll(ms, &mut |d| {
                    let _ = s.send_slice(d, to);
                })
            };
            if !matches!(st, SendState::Waiting { .. }) {
                return (st, sender.stats().datagrams_sent);
            }
            self.iface.poll(t, nic, &mut self.sockets);
            pump();
            col.poll(t);
            pump();
            self.iface.poll(t, nic, &mut self.sockets);
            let s = self.sockets.get_mut::<udp::Socket>(self.h);
            while let Ok((d, _)) = s.recv() {
                sender.handle(d);
            }
        }
        (SendState::TimedOut, sender.stats().datagrams_sent)
    }
}

#[test]
fn after_unload_and_reconnect_only_the_nic_is_reopened_and_the_record_is_acked() {
    for (arch, p) in [SimArch::X86_64, SimArch::Aarch64]
        .into_iter()
        .flat_map(|a| personalities().map(|p| (a, p)))
    {
        let s = Sim::new(sim_config_as(arch, p));
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let far = s.now() + 50_000_000;
        let ep = QueueEndpoint::new();
        let end = CoreHost::new(&s, NIC_RELID);

        // Boot: both NIC driver objects are built before anything is opened.
        let slot1 = ChannelSlot::new();
        let slot2 = ChannelSlot::new();
        let mut nic1 = Box::new(new_nic(&slot1, hv, bufs(&s)));
        let mut nic2 = Box::new(new_nic(&slot2, hv, bufs(&s)));
        assert_eq!(
            nic2.poll(),
            Err(NetvscError::Channel(ChannelError::Closed)),
            "a driver whose slot is empty reports the channel closed"
        );

        let mut conn1 =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn1.request_offers(hv, &g.clock).unwrap();
        let host1 = NetvscHost::new(NetvscHostConfig::for_personality(p), Box::new(ep.clone()));
        let mut hdev1 = host1.clone();
        let mut n = 0;
        let relid = start_nic(
            &mut conn1,
            hv,
            &g.clock,
            &s.mem,
            &slot1,
            &mut nic1,
            &mut || {
                end.pump(&mut hdev1);
                n += 1;
                n > 10_000
            },
        )
        .unwrap();
        assert_eq!(relid, NIC_RELID);
        assert_eq!(nic1.mode(), OpMode::Polling);
        assert!(host1.state().recv_buf.is_some(), "{arch:?}");

        // Normal running: the network runs on the boot NIC.
        let mut col = Collector::new(&ep);
        let mac = nic1.mac();
        let mut stack = Stack::new(&mut *nic1, mac);
        let mut rec1 = capture::testutil::sample_record(1);
        rec1.set_message("devices.rs: over the boot netvsc");
        let (st, _) = stack.ship(&mut *nic1, &rec1, &mut col, &mut || {
            end.pump(&mut hdev1);
        });
        assert_eq!(st, SendState::Acked, "{arch:?} {:?}", host1.state());
        let tx_boot = host1.state().frames_via_gpa;
        assert!(tx_boot > 0, "{arch:?}");

        // Panic: UNLOAD once, clean up, reconnect in polling mode, reopen only the NIC.
        let u = conn1.unload(hv, &g.clock, far);
        assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
        let r = vmbus::cleanup::cleanup_cpu(
            hv,
            &g.synic,
            &mut NoPpis,
            &vmbus::cleanup::CleanupConfig::default(),
        );
        assert!(r.synic.is_none() && r.stimer.is_none(), "{r:?}");
        let mut slot = None;
        reconnect_into(&mut slot, hv, &g.clock, &s.mem, &g.synic, 50_000_000).unwrap();
        let mut conn2 = slot.unwrap();
        let host2 = NetvscHost::new(NetvscHostConfig::for_personality(p), Box::new(ep.clone()));
        let mut hdev2 = host2.clone();
        let mut n = 0;
        let r = reopen_nic(
            &mut conn2,
            hv,
            &g.clock,
            &s.mem,
            &slot2,
            Some(&mut *nic2),
            &mut || {
                end.pump(&mut hdev2);
                n += 1;
                n > 10_000
            },
        )
        .unwrap();
        assert_eq!(r, (2, ReopenNic::Up(NIC_RELID)), "{arch:?}");
        assert_eq!(nic2.mode(), OpMode::Polling);
        // Only the NIC, on each connection: two OPENCHANNELs in all (CHANNELMSG_OPENCHANNEL
        // = 5, Linux include/linux/hyperv.h), both for the NIC's relid (offset 8 of the
        // message: header, then child_relid).
        let opens = s.guest_messages_of(5);
        assert_eq!(opens.len(), 2, "{arch:?}");
        for m in &opens {
            assert_eq!(m[8..12], NIC_RELID.to_le_bytes(), "{arch:?}");
        }

        // Ship with the capture sender until the collector acks, on the same interface
        // and sockets with the reopened NIC underneath (what `net::panic_use_netvsc` does).
        assert_eq!(nic2.mac(), nic1.mac(), "the same synthetic NIC");
        let mut rec = capture::testutil::sample_record(3);
        rec.set_message("devices.rs: record over the reopened netvsc");
        let (st, sent) = stack.ship(&mut *nic2, &rec, &mut col, &mut || {
            end.pump(&mut hdev2);
        });
        assert_eq!(st, SendState::Acked, "{arch:?} {:?}", host2.state());
        assert!(sent >= 1);
        let mut want = vec![0u8; capture::record::MAX_ENCODED_LEN];
        let mut want1 = vec![0u8; capture::record::MAX_ENCODED_LEN];
        assert_eq!(
            col.records,
            vec![
                rec1.encode(&mut want1).unwrap().to_vec(),
                rec.encode(&mut want).unwrap().to_vec()
            ]
        );
        assert!(host2.state().frames_via_gpa > 0);
        assert_eq!(
            host1.state().frames_via_gpa,
            tx_boot,
            "nothing more went through the boot NIC's (unloaded) channel"
        );
        // Every receive-buffer packet the host sent is completed once the ring is drained.
        for _ in 0..3 {
            nic2.poll().unwrap();
            end.pump(&mut hdev2);
        }
        assert_eq!(host2.state().outstanding(), 0);

        // Then the second connection is unloaded too: two UNLOADs in all.
        let u = conn2.unload(hv, &g.clock, far);
        assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
        assert_eq!(s.guest_messages_of(16).len(), 2, "{arch:?}: two UNLOADs");
    }
}

/// UNLOAD + cleanup + reconnect on a fresh sim with `offers`; returns the new connection.
fn reconnected<'s>(s: &Sim, g: &'s Guest<'s>) -> Connection<'s> {
    let hv = g.hv(0);
    let c1 =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    let u = c1.unload(hv, &g.clock, s.now() + 50_000_000);
    assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
    let _ = vmbus::cleanup::cleanup_cpu(
        hv,
        &g.synic,
        &mut NoPpis,
        &vmbus::cleanup::CleanupConfig::default(),
    );
    let mut out = None;
    reconnect_into(&mut out, hv, &g.clock, &s.mem, &g.synic, 50_000_000).unwrap();
    out.unwrap()
}

#[test]
fn a_nic_that_does_not_come_up_on_the_reconnect_leaves_a_connection_that_still_unloads() {
    let s = sim(SimArch::X86_64);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut c = reconnected(&s, &g);
    let slot = ChannelSlot::new();
    let mut nic = Box::new(new_nic(&slot, hv, bufs(&s)));
    // Nobody answers on the host side: the bring-up gives up at its deadline.
    let mut budget = vmbus::netvsc::SpinBudget(2_000);
    let r = reopen_nic(
        &mut c,
        hv,
        &g.clock,
        &s.mem,
        &slot,
        Some(&mut *nic),
        &mut budget,
    )
    .unwrap();
    assert!(
        matches!(
            r,
            (
                2,
                ReopenNic::Failed(DeviceError::Netvsc(NetvscError::Timeout(_)))
            )
        ),
        "{r:?}"
    );
    let u = c.unload(hv, &g.clock, s.now() + 50_000_000);
    assert!(matches!(u, UnloadOutcome::Done { .. }), "{u:?}");
    assert_eq!(s.guest_messages_of(16).len(), 2, "two UNLOADs");
}

#[test]
fn without_a_netvsc_network_or_a_nic_offer_the_reconnect_opens_nothing() {
    // The network runs on virtio-net: no spare NIC object, nothing opened.
    let s = sim(SimArch::X86_64);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut c = reconnected(&s, &g);
    let slot = ChannelSlot::new();
    let r = reopen_nic::<PhysRegion>(
        &mut c,
        hv,
        &g.clock,
        &s.mem,
        &slot,
        None,
        &mut vmbus::netvsc::SpinBudget(10),
    );
    assert_eq!(r, Ok((2, ReopenNic::NotUsed)));
    assert!(slot.get().is_none());
    assert!(s.guest_messages_of(5).is_empty(), "no OPENCHANNEL");

    // QEMU's VMBus: no NIC offered at all.
    let mut cfg = SimConfig::new(SimArch::X86_64, Personality::Qemu);
    cfg.offers.clear();
    let s = Sim::new(cfg);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut c = reconnected(&s, &g);
    let mut nic = Box::new(new_nic(&slot, hv, bufs(&s)));
    let r = reopen_nic(
        &mut c,
        hv,
        &g.clock,
        &s.mem,
        &slot,
        Some(&mut *nic),
        &mut vmbus::netvsc::SpinBudget(10),
    );
    assert_eq!(r, Ok((0, ReopenNic::NotOffered)));
    assert!(slot.get().is_none());
}

#[test]
fn vram_writes_land_byte_exact_at_any_alignment_and_stay_in_bounds() {
    let mut backing = vec![0u64; 64]; // 512 bytes, 8-byte aligned
    let base = backing.as_mut_ptr() as *mut u8;
    // SAFETY: `backing` outlives `vram` and is used only through it until the end.
    let vram = unsafe { Vram::new(base, 512, 0x1000) };
    let mut want = vec![0u8; 512];
    let mut k = 0u8;
    for offset in [0usize, 1, 3, 7, 8, 13, 100, 255] {
        for len in [0usize, 1, 5, 8, 9, 16, 23, 64, 129] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    k = k.wrapping_mul(31).wrapping_add(7);
                    k
                })
                .collect();
            vram.write(offset, &data).unwrap();
            want[offset..offset + len].copy_from_slice(&data);
            let mut got = vec![0u8; 512];
            vram.read(0, &mut got).unwrap();
            assert_eq!(got, want, "offset {offset} len {len}");
        }
    }
    assert_eq!(
        vram.write(510, &[1, 2, 3]),
        Err(ChannelError::OutOfBounds {
            offset: 510,
            len: 3
        })
    );
    assert_eq!(vram.len(), 512);
    assert_eq!(vram.gpa(), 0x1000);
    // `backing` is dropped only after the last use of `vram`.
    drop(backing);
}

#[test]
fn a_nic_slot_is_filled_once() {
    let s = sim(SimArch::X86_64);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut conn =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    conn.request_offers(hv, &g.clock).unwrap();
    let slot = ChannelSlot::new();
    let net = vmbus::guid::NET;
    assert!(open_into(&mut conn, hv, &g.clock, &s.mem, &net, 2, &slot).is_ok());
    assert_eq!(
        open_into(&mut conn, hv, &g.clock, &s.mem, &net, 2, &slot),
        Err(DeviceError::SlotUsed)
    );
    let nothing = Guid([9; 16]);
    assert_eq!(
        open_into(
            &mut conn,
            hv,
            &g.clock,
            &s.mem,
            &nothing,
            2,
            &ChannelSlot::new()
        ),
        Err(DeviceError::NotOffered)
    );
}

#[test]
fn synthvid_on_the_gop_framebuffer_flushes_the_panic_screen_or_skips_when_busy() {
    for p in personalities() {
        synthvid_on_the_gop_framebuffer_as(p);
    }
}

fn synthvid_on_the_gop_framebuffer_as(pers: Personality) {
    let s = Sim::new(sim_config_as(SimArch::X86_64, pers));
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut conn =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    conn.request_offers(hv, &g.clock).unwrap();
    // A "GOP framebuffer" of 640x480 in the sim's guest memory.
    let mode = Mode::new(640, 480);
    let p = s.mem.alloc_pages(mode.bytes().div_ceil(4096)).unwrap();
    // SAFETY: freshly allocated sim guest pages, used only through this region.
    let vram = unsafe { Vram::new(p.va(), p.len(), p.gpa()) };
    let gop = GopFramebuffer {
        base: vram.gpa(),
        size: vram.len(),
        width: 640,
        height: 480,
    };
    let slot = ChannelSlot::new();
    let host = SynthvidHost::without_memory(SynthvidHostConfig::for_personality(pers));
    let mut hdev = host.clone();
    let end = CoreHost::new(&s, FB_RELID);
    let mut n = 0;
    let fb = start_fb(
        &mut conn,
        hv,
        &g.clock,
        &s.mem,
        &slot,
        &FbVram::Gop(gop),
        &mut || {
            end.pump(&mut hdev);
            n += 1;
            n > 1000
        },
    )
    .unwrap();
    end.pump(&mut hdev);
    fb.poll().unwrap();
    assert_eq!(host.state().vram_gpa, Some(gop.base), "{pers:?}");
    assert_eq!(fb.mode(), mode, "{pers:?}");
    console::draw_panic_screen(&vram, fb.mode(), "panic").unwrap();
    if matches!(pers, Personality::OpenVmm) {
        // OpenVMM sends no FEATURE_CHANGE: it never asks for DIRT and shows VRAM as is.
        assert!(!fb.dirt_needed());
        assert_eq!(
            flush_outcome(fb.panic_flush()),
            Outcome::Skipped(SkipReason::NotNeeded)
        );
        end.pump(&mut hdev);
        assert!(host.state().dirt.is_empty());
        let (_, _, rgb) = host
            .screen_rgb_with(&|gpa, buf| s.mem.read(gpa, buf))
            .unwrap();
        assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background in VRAM");
        return;
    }
    assert!(fb.dirt_needed(), "{pers:?}");
    assert_eq!(flush_outcome(fb.panic_flush()), Outcome::Done);
    end.pump(&mut hdev);
    assert_eq!(
        host.state().dirt,
        vec![Rect {
            x1: 0,
            y1: 0,
            x2: 640,
            y2: 480
        }]
    );
    {
        let _held = slot.get().unwrap().try_lock_outbound().unwrap();
        assert_eq!(flush_outcome(fb.panic_flush()), Outcome::SkippedBusy);
    }
    end.pump(&mut hdev);
    assert_eq!(host.state().dirt.len(), 1, "nothing sent while busy");
    // The host sees the panic screen in guest memory: red background, white text.
    let (w, h, rgb) = host
        .screen_rgb_with(&|gpa, buf| s.mem.read(gpa, buf))
        .unwrap();
    assert_eq!((w, h), (640, 480));
    assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background");
    let fg = rgb
        .chunks_exact(3)
        .filter(|p| p == &[0xff, 0xff, 0xff])
        .count();
    assert!(fg > 100, "text pixels: {fg}");
}

/// Direct boot on OpenVMM has no GOP: VRAM goes where the kernel places it in the VMBus
/// MMIO range that ACPI gives (`crate::acpi::crs`), sized by the offer's `mmio_megabytes`.
/// Here the sim's guest memory stands in for that range: a DSDT in OpenVMM's shape whose
/// `\_SB.VMOD._CRS` window covers pages of it.
#[test]
fn synthvid_without_a_gop_takes_vram_from_the_acpi_vmbus_range_and_flushes_the_panic_screen() {
    use crate::acpi::crs;
    use crate::acpi::crs::tests::aml::*;
    const MIB: u64 = 1 << 20;
    // 16 MiB of guest memory: room for 9 MiB beside the rings.
    let mut cfg = sim_config(SimArch::X86_64);
    cfg.memory_pages = 4096;
    let s = Sim::new(cfg);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut conn =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    conn.request_offers(hv, &g.clock).unwrap();
    let mmio_mb = conn
        .find_offer(&vmbus::guid::SYNTHVID)
        .unwrap()
        .mmio_megabytes;
    assert_eq!(mmio_mb, 8);

    // The "MMIO range": one MiB more than the offer asks for, so an aligned start fits.
    let p = s.mem.alloc_pages((mmio_mb as usize + 1) * 256).unwrap();
    let (lo, hi) = (p.gpa(), p.gpa() + p.len() as u64 - 1);
    let dsdt = table(
        b"DSDT",
        &cat(&[
            &device(
                "\\_SB.APIC",
                &crs(&[
                    fixed_mem(0xfee0_0000, 0x1000),
                    fixed_mem(0xfec0_0000, 0x1000),
                ]),
            ),
            &device(
                "\\_SB.VMOD",
                &cat(&[&name_str("_HID", "ACPI0004"), &crs(&[qword_mem(lo, hi)])]),
            ),
            &device("\\_SB.VMOD.VMBS", &name_str("_HID", "VMBus")),
        ]),
    );
    let m = crs::vmbus_mmio(&[&dsdt]).unwrap();
    // The sim's memory lies above 4 GiB; the kernel's limit is the identity map's.
    assert!(crs::place_vram(&m, mmio_mb, 1 << 32).is_err());
    let gpa = crs::place_vram(&m, mmio_mb, u64::MAX).unwrap();
    assert_eq!(gpa, lo.next_multiple_of(MIB));
    let size = mmio_mb as usize * MIB as usize;
    // SAFETY: inside the pages allocated above (`gpa - lo` < 1 MiB, one MiB spare), used
    // only through this region.
    let vram = unsafe { Vram::new(p.va().add((gpa - lo) as usize), size, gpa) };

    let slot = ChannelSlot::new();
    let host = SynthvidHost::without_memory(SynthvidHostConfig::default());
    let mut hdev = host.clone();
    let end = CoreHost::new(&s, FB_RELID);
    let mut n = 0;
    let place = FbVram::VmbusMmio {
        gpa,
        mmio_megabytes: mmio_mb,
    };
    let fb = start_fb(&mut conn, hv, &g.clock, &s.mem, &slot, &place, &mut || {
        end.pump(&mut hdev);
        n += 1;
        n > 1000
    })
    .unwrap();
    end.pump(&mut hdev);
    fb.poll().unwrap();
    // VRAM_LOCATION told the host the placed GPA; Linux's default mode fits 8 MiB.
    assert_eq!(host.state().vram_gpa, Some(gpa));
    assert_eq!(fb.mode(), Mode::new(1152, 864));

    console::draw_panic_screen(&vram, fb.mode(), "panic").unwrap();
    assert_eq!(flush_outcome(fb.panic_flush()), Outcome::Done);
    end.pump(&mut hdev);
    assert_eq!(
        host.state().dirt,
        vec![Rect {
            x1: 0,
            y1: 0,
            x2: 1152,
            y2: 864
        }]
    );
    let (w, h, rgb) = host
        .screen_rgb_with(&|gpa, buf| s.mem.read(gpa, buf))
        .unwrap();
    assert_eq!((w, h), (1152, 864));
    assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background");
    let fg = rgb
        .chunks_exact(3)
        .filter(|p| p == &[0xff, 0xff, 0xff])
        .count();
    assert!(fg > 100, "text pixels: {fg}");
}

#[test]
fn flush_outcomes_map_onto_record_outcomes() {
    assert_eq!(flush_outcome(FlushOutcome::Sent), Outcome::Done);
    assert_eq!(
        flush_outcome(FlushOutcome::SkippedBusy),
        Outcome::SkippedBusy
    );
    assert_eq!(
        flush_outcome(FlushOutcome::NotRequested),
        Outcome::Skipped(SkipReason::NotNeeded)
    );
    assert_eq!(
        flush_outcome(FlushOutcome::NotConnected),
        Outcome::NotPresent
    );
    assert_eq!(
        flush_outcome(FlushOutcome::Failed(ChannelError::Full)),
        Outcome::Failed(0x302)
    );
}

#[test]
fn the_mode_fits_the_framebuffer() {
    let gop = |w, h, size| GopFramebuffer {
        base: 0,
        size,
        width: w,
        height: h,
    };
    assert_eq!(
        mode_for(&gop(1024, 768, 8 << 20)),
        Some(Mode::new(1024, 768))
    );
    // GOP reports a mode bigger than the buffer: the largest of Linux's modes that fits.
    assert_eq!(
        mode_for(&gop(4096, 4096, 4 << 20)),
        Some(Mode::new(1152, 864))
    );
    assert_eq!(mode_for(&gop(0, 0, 2 << 20)), Some(Mode::new(800, 600)));
    assert_eq!(mode_for(&gop(640, 480, 4096)), None);
}
