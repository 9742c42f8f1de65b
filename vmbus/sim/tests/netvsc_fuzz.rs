//! The netvsc driver against a hostile host: thousands of random and mutated host packets and
//! receive-buffer contents. The driver must never panic, must complete every transfer-page
//! packet (the host stops delivering otherwise), and must still carry frames afterwards.
//! Deterministic (xorshift), bounded.

use vmbus::netvsc::nvsp::{self, Nvsp};
use vmbus::netvsc::rndis::Rndis;
use vmbus::ring::{PacketType, FLAG_COMPLETION_REQUESTED};
use vmbus::synthvid::wire::Message;
use vmbus::synthvid::{Mode, Synthvid, VramSource};
use vmbus_sim::netvsc::NetvscHostConfig;
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};
use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
use vmbus_sim::synthvid_link::{encode_packet, Link, SimMemory};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn hostile_host_packets_never_panic_and_are_all_completed() {
    let (mut tb, ep) = {
        let ep = QueueEndpoint::new();
        (
            Testbed::new(
                NetvscHostConfig::default(),
                Box::new(ep.clone()),
                Sizes::default(),
            ),
            ep,
        )
    };
    let _ = ep;
    tb.bring_up().unwrap();
    let (recv_gpa, recv_len) = tb.host.state().recv_buf.unwrap();
    let mut rng = Rng(0x0bad_5eed_1234_5678);
    let frame = [0x42u8; 120];
    let mut valid = vec![0u8; 300];
    let vl = Rndis::Packet {
        data: &frame,
        ppi: &[],
    }
    .emit(&mut valid)
    .unwrap();
    valid.truncate(vl);
    let mut nv = [0u8; 40];
    let nl = Nvsp::RndisPacket {
        channel_type: 0,
        section_index: nvsp::INVALID_SECTION,
        section_size: 0,
    }
    .emit(&mut nv)
    .unwrap();

    let mut xfer_sent = 0u64;
    let before = tb.nic.stats();
    for round in 0..300u64 {
        // Scribble over a few receive-buffer slots: valid messages, mutated ones, noise.
        for slot in 0..4u64 {
            let mut m = valid.clone();
            for _ in 0..rng.below(6) {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            if rng.below(5) == 0 {
                let cut = rng.below(m.len());
                m.truncate(cut);
            }
            tb.mem.write(recv_gpa + 0x4000 + slot * 0x800, &m).unwrap();
        }
        tb.link.inject(|io| {
            for k in 0..8u64 {
                let tid = 0x7000_0000 + round * 16 + k;
                let nranges = rng.below(4);
                let mut ext = Vec::new();
                let pageset = if rng.below(8) == 0 {
                    rng.next() as u16
                } else {
                    0xCAFE
                };
                ext.extend(pageset.to_le_bytes());
                ext.extend([0u8, 0]);
                let claimed = if rng.below(10) == 0 {
                    rng.next() as u32
                } else {
                    nranges as u32
                };
                ext.extend(claimed.to_le_bytes());
                for _ in 0..nranges {
                    let slot = rng.below(5) as u32;
                    let (count, off) = match rng.below(6) {
                        0 => (rng.next() as u32, rng.next() as u32),
                        1 => (64, recv_len as u32 - rng.below(64) as u32),
                        _ => (vl as u32, 0x4000 + slot * 0x800),
                    };
                    ext.extend(count.to_le_bytes());
                    ext.extend(off.to_le_bytes());
                }
                let mut payload = nv[..nl].to_vec();
                if rng.below(6) == 0 {
                    let i = rng.below(payload.len());
                    payload[i] = rng.next() as u8;
                }
                if rng.below(10) == 0 {
                    payload.truncate(rng.below(8));
                }
                let pkt = match rng.below(10) {
                    0 => encode_packet(PacketType::COMP.0, 0, rng.next(), &[], &payload),
                    1 => encode_packet(PacketType::DATA_INBAND.0, 0, 0, &[], &payload),
                    _ => {
                        xfer_sent += 1;
                        encode_packet(
                            PacketType::DATA_USING_XFER_PAGES.0,
                            FLAG_COMPLETION_REQUESTED,
                            tid,
                            &ext,
                            &payload,
                        )
                    }
                };
                io.send_raw(&pkt).unwrap();
            }
        });
        tb.nic.poll().unwrap();
        let mut buf = [0u8; 1600];
        while tb.nic.recv_frame(&mut buf).unwrap().is_some() {}
    }
    let s = tb.nic.stats();
    assert_eq!(s.xfer_packets - before.xfer_packets, xfer_sent);
    assert_eq!(
        s.xfer_completed - before.xfer_completed,
        xfer_sent,
        "every transfer-page packet completed"
    );
    assert!(
        s.rx_frames > before.rx_frames,
        "some valid frames got through"
    );
    assert!(s.malformed > before.malformed, "and bad ones were counted");

    // Still a working NIC.
    tb.link.inject(|io| tb.host.deliver_frame(io, &[0x77; 70]));
    tb.nic.poll().unwrap();
    let mut buf = [0u8; 1600];
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), Some(70));
    assert!(tb.nic.send_frame(&[0x33; 60]).unwrap());
    assert_eq!(tb.host.state().outstanding(), 0);
}

#[test]
fn hostile_synthvid_messages_never_panic() {
    let mem = SimMemory::new(0x1_0000_0000, 4 << 20);
    let vram = mem.alloc(4 << 20);
    let host = SynthvidHost::new(SynthvidHostConfig::default(), mem.clone());
    let link = Link::new(mem, 256 * 1024, Box::new(host.clone()));
    let mut dev = Synthvid::new(link.guest());
    use vmbus::device::DmaMemory;
    dev.connect(
        VramSource::GopFramebuffer {
            gpa: vram.gpa(),
            size: vram.len(),
        },
        Mode::new(640, 480),
        &mut vmbus::device::SpinBudget(100),
    )
    .unwrap();
    let mut rng = Rng(0xfeed_face_0000_0001);
    let mut seed = [0u8; 64];
    let n = Message::FeatureChange {
        dirt_needed: true,
        ptr_pos_needed: true,
        ptr_shape_needed: true,
        situ_needed: true,
    }
    .emit(&mut seed)
    .unwrap();
    for _ in 0..2000 {
        let mut m = seed[..n].to_vec();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(m.len());
            m[i] = rng.next() as u8;
        }
        let kind = [PacketType::DATA_INBAND.0, PacketType::COMP.0, 0x42][rng.below(3)];
        link.inject(|io| io.send(kind, 0, rng.next(), &[], &m).unwrap());
        let _ = dev.poll();
    }
    // Still answers: a clean FEATURE_CHANGE turns DIRT on.
    link.inject(|io| SynthvidHost::send_feature_change(io, true, false));
    dev.poll().unwrap();
    assert!(dev.dirt_needed());
}
