//! netvsc receive (`vmbus/src/netvsc/rx.rs`) against the netvsc host model.

use vmbus::netvsc::nvsp::{self, Nvsp};
use vmbus::netvsc::RX_QUEUE;
use vmbus::ring::PacketType;
use vmbus_sim::netvsc::NetvscHostConfig;
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};
use vmbus_sim::synthvid_link::encode_packet;

fn up() -> Testbed {
    let mut tb = Testbed::new(
        NetvscHostConfig::default(),
        Box::new(QueueEndpoint::new()),
        Sizes::default(),
    );
    tb.bring_up().unwrap();
    tb
}

#[test]
fn the_queue_keeps_rx_queue_frames_in_order_drops_the_rest_and_completes_all() {
    let mut tb = up();
    let before = tb.nic.stats();
    for i in 0..RX_QUEUE as u8 + 3 {
        tb.link.inject(|io| tb.host.deliver_frame(io, &[i; 64]));
    }
    tb.nic.poll().unwrap();
    assert_eq!(tb.nic.rx_queued(), RX_QUEUE);
    let s = tb.nic.stats();
    assert_eq!(s.rx_frames - before.rx_frames, RX_QUEUE as u64);
    assert_eq!(s.rx_dropped - before.rx_dropped, 3);
    assert_eq!(tb.host.state().outstanding(), 0, "every packet completed");
    let mut buf = [0u8; 1600];
    for i in 0..RX_QUEUE as u8 {
        assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), Some(64));
        assert_eq!(buf[0], i, "in order");
    }
    assert_eq!(tb.nic.recv_frame(&mut buf).unwrap(), None);
}

#[test]
fn a_completion_for_a_slot_not_in_flight_is_counted_not_trusted() {
    let mut tb = up();
    assert!(tb.nic.send_frame(&[1; 60]).unwrap());
    tb.nic.poll().unwrap();
    let before = tb.nic.stats();
    // A second completion for the same transaction (and one for a section that does not
    // exist): neither frees anything.
    let mut nv = [0u8; 64];
    let n = Nvsp::RndisPacketComplete {
        status: nvsp::STATUS_SUCCESS,
    }
    .emit(&mut nv)
    .unwrap();
    for tid in [2u64 << 32, (2u64 << 32) | 999, 3u64 << 32 | 5] {
        tb.link.inject(|io| {
            io.send_raw(&encode_packet(PacketType::COMP.0, 0, tid, &[], &nv[..n]))
                .unwrap()
        });
    }
    tb.nic.poll().unwrap();
    let s = tb.nic.stats();
    assert_eq!(s.malformed - before.malformed, 3);
    assert_eq!(s.tx_completed, before.tx_completed);
    assert_eq!(tb.nic.tx_in_flight(), 0);
}

#[test]
fn an_nvsp_message_newer_than_the_negotiated_version_is_refused() {
    // SEND_VF_ASSOCIATION came with NVSP 4, SEND_INDIRECTION_TABLE with NVSP 5
    // (hyperv_net.h): at each negotiated version the newer one is counted as malformed, the
    // others are taken (and ignored: this guest has no VF and one queue).
    let cases = [
        (nvsp::MsgType::SEND_VF_ASSOCIATION, nvsp::VERSION_4),
        (nvsp::MsgType::SEND_INDIRECTION_TABLE, nvsp::VERSION_5),
    ];
    for v in [
        nvsp::VERSION_2,
        nvsp::VERSION_4,
        nvsp::VERSION_5,
        nvsp::VERSION_61,
    ] {
        let cfg = NetvscHostConfig {
            max_version: v,
            ..NetvscHostConfig::default()
        };
        let mut tb = Testbed::new(cfg, Box::new(QueueEndpoint::new()), Sizes::default());
        tb.bring_up().unwrap();
        assert_eq!(tb.nic.nvsp_version(), v);
        for (ty, since) in cases {
            let before = tb.nic.stats().malformed;
            let mut m = [0u8; 40];
            m[..4].copy_from_slice(&ty.0.to_le_bytes());
            tb.link.inject(|io| io.send_inband(&m).unwrap());
            tb.nic.poll().unwrap();
            let refused = tb.nic.stats().malformed == before + 1;
            assert_eq!(
                refused,
                since > v,
                "type {ty:?} (since {since:#x}) at {v:#x}"
            );
        }
    }
}
