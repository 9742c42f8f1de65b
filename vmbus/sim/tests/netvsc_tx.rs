//! netvsc transmit (`vmbus/src/netvsc/tx.rs`) against the netvsc host model.

use vmbus::device::ChannelError;
use vmbus::netvsc::{NetvscError, FRAME_MAX};
use vmbus_sim::netvsc::NetvscHostConfig;
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};

fn up(sizes: Sizes) -> Testbed {
    let mut tb = Testbed::new(
        NetvscHostConfig::default(),
        Box::new(QueueEndpoint::new()),
        sizes,
    );
    tb.bring_up().unwrap();
    tb
}

#[test]
fn frames_fill_send_sections_then_gpa_slots_and_completions_free_them() {
    // Two 6144-byte sections, and 4 pages of tx = 8 slots of which slot 0 is RNDIS control.
    let mut tb = up(Sizes {
        send: Some(2 * 6144),
        tx: 4 * 4096,
        ..Sizes::default()
    });
    for i in 0..9u8 {
        assert!(tb.nic.send_frame(&[i; 60]).unwrap(), "frame {i}");
    }
    let st = tb.host.state();
    assert_eq!((st.frames_via_send_buf, st.frames_via_gpa), (2, 7));
    assert_eq!(tb.nic.tx_in_flight(), 9, "no completion read yet");
    // Every slot is taken: the next send reads the completions first, then goes out.
    assert!(tb.nic.send_frame(&[9; 60]).unwrap());
    assert_eq!(tb.nic.tx_in_flight(), 1);
    tb.nic.poll().unwrap();
    assert_eq!(tb.nic.tx_in_flight(), 0);
    let s = tb.nic.stats();
    assert_eq!((s.tx_frames, s.tx_completed), (10, 10));
    assert_eq!(tb.host.state().frames_from_guest, 10);
}

#[test]
fn an_oversized_frame_is_refused_without_taking_a_slot() {
    let mut tb = up(Sizes::default());
    assert_eq!(
        tb.nic.send_frame(&[0; FRAME_MAX + 1]),
        Err(NetvscError::Channel(ChannelError::TooLarge(FRAME_MAX + 1)))
    );
    assert_eq!(tb.nic.tx_in_flight(), 0);
    assert_eq!(tb.host.state().frames_from_guest, 0);
}
