//! netvsc over the VMBus core: real `Connection` GPADLs for the receive/send buffers, real
//! `Channel` rings (via `CoreChannel`), buffers in the sim's guest memory, the netvsc host
//! model on the host end of the rings, and smoltcp UDP through it all. Both register ABIs,
//! every host personality (OpenVMM's netvsp refusals and empty completions included).

mod common;

use common::PERSONALITIES;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use vmbus::device::PhysRegion;
use vmbus::device::{ConnectionGpadls, CoreChannel};
use vmbus::guid::NET;
use vmbus::netvsc::nvsp;
use vmbus::netvsc::{Buffers, Netvsc, OpMode};
use vmbus::{ConnectOptions, Connection, OpenOptions, PageAlloc, SynicMode};
use vmbus_sim::netvsc::{NetvscHost, NetvscHostConfig};
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Sim, SimArch, SimConfig};

fn ip(a: [u8; 4]) -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(a))
}

#[test]
fn netvsc_brings_up_and_carries_udp_over_the_core_channel() {
    for (arch, p) in [SimArch::X86_64, SimArch::Aarch64]
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let s = Sim::new(SimConfig::with_default_offers(arch, p));
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut conn =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn.request_offers(hv, &g.clock).unwrap();
        let relid = conn.find_offer(&NET).unwrap().child_relid;
        let opts = OpenOptions {
            send_ring_pages: 16,
            recv_ring_pages: 16,
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
            recv: region(16),
            send: Some(region(16)),
            tx: region(2),
        };
        let mut nic = Box::new(Netvsc::new(CoreChannel::new(&ch, hv), bufs));
        let ep = QueueEndpoint::new();
        let host = NetvscHost::new(NetvscHostConfig::for_personality(p), Box::new(ep.clone()));
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
        let st = host.state();
        assert_eq!(st.version, Some(nvsp::VERSION_61), "{arch:?} {p:?}");
        assert!(st.recv_buf.is_some() && st.send_buf.is_some());
        assert_eq!(nic.mac(), NetvscHostConfig::default().mac);

        // UDP through smoltcp on both sides; the guest polls (panic-path mode).
        nic.set_mode(OpMode::Polling);
        let mut port = ep.port();
        let mut gi = Interface::new(
            Config::new(EthernetAddress(nic.mac()).into()),
            &mut *nic,
            Instant::ZERO,
        );
        gi.update_ip_addrs(|a| a.push(IpCidr::new(ip([10, 0, 0, 2]), 24)).unwrap());
        let mut hi = Interface::new(
            Config::new(EthernetAddress([2, 0, 0, 0, 0, 1]).into()),
            &mut port,
            Instant::ZERO,
        );
        hi.update_ip_addrs(|a| a.push(IpCidr::new(ip([10, 0, 0, 1]), 24)).unwrap());
        let mk = || {
            udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
            )
        };
        let mut gs = SocketSet::new(vec![]);
        let mut hs = SocketSet::new(vec![]);
        let gh = gs.add(mk());
        let hh = hs.add(mk());
        gs.get_mut::<udp::Socket>(gh).bind(4000).unwrap();
        hs.get_mut::<udp::Socket>(hh).bind(5000).unwrap();
        let mut sent = 0;
        let mut echoed = 0;
        for t in 1..3000i64 {
            if sent < 20
                && gs
                    .get_mut::<udp::Socket>(gh)
                    .send_slice(b"over the core ring", (ip([10, 0, 0, 1]), 5000))
                    .is_ok()
            {
                sent += 1;
            }
            gi.poll(Instant::from_millis(t), &mut *nic, &mut gs);
            end.pump(&mut hdev);
            hi.poll(Instant::from_millis(t), &mut port, &mut hs);
            end.pump(&mut hdev);
            let h = hs.get_mut::<udp::Socket>(hh);
            while let Ok((d, m)) = h.recv() {
                let d = d.to_vec();
                h.send_slice(&d, m.endpoint).unwrap();
            }
            while gs.get_mut::<udp::Socket>(gh).recv().is_ok() {
                echoed += 1;
            }
            if echoed == 20 {
                break;
            }
        }
        assert_eq!(echoed, 20, "{arch:?} {p:?}");
        assert_eq!(nic.stats().malformed, 0, "{p:?}: {:?}", nic.stats());
        for t in 0..5 {
            gi.poll(Instant::from_millis(4000 + t), &mut *nic, &mut gs);
            end.pump(&mut hdev);
        }
        let st = host.state();
        assert_eq!(st.outstanding(), 0, "every transfer-page packet completed");
        assert_eq!(st.xfer_completed_failed, 0);
        assert!(st.frames_via_send_buf >= 20);
    }
}
