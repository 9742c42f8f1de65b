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
