//! netvsc bring-up (`vmbus/src/netvsc/bringup.rs`) against the netvsc host model.

use vmbus::netvsc::nvsp;
use vmbus::netvsc::{NetvscError, ETH_FRAME_MTU};
use vmbus_sim::netvsc::NetvscHostConfig;
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};

fn testbed(cfg: NetvscHostConfig, sizes: Sizes) -> Testbed {
    Testbed::new(cfg, Box::new(QueueEndpoint::new()), sizes)
}

#[test]
fn unusable_buffers_are_refused_before_anything_is_sent() {
    let mut tb = testbed(
        NetvscHostConfig::default(),
        Sizes {
            tx: 100,
            ..Sizes::default()
        },
    );
    assert_eq!(tb.bring_up(), Err(NetvscError::BadBuffer("tx")));
    assert_eq!(tb.link.guest_sends(), 0);
    assert_eq!(tb.host.state().init_requests, Vec::<u32>::new());
}

#[test]
fn bring_up_records_what_the_host_negotiated_and_sets_the_filter() {
    let cfg = NetvscHostConfig {
        mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        ..NetvscHostConfig::default()
    };
    let mut tb = testbed(cfg, Sizes::default());
    tb.bring_up().unwrap();
    let st = tb.host.state();
    assert_eq!(tb.nic.nvsp_version(), nvsp::VERSION_61);
    assert_eq!(st.version, Some(nvsp::VERSION_61));
    assert_eq!(st.ndis_mtu, Some(ETH_FRAME_MTU as u32));
    assert_eq!(tb.nic.mac(), [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    assert!(tb.nic.link_up());
    assert!(st.rndis_up);
    assert!(st.packet_filter.is_some(), "packet filter set");
    assert!(st.recv_buf.is_some() && st.send_buf.is_some());
    assert_eq!(tb.nic.send_section_size(), 6144);
}

#[test]
fn a_refused_send_buffer_leaves_frames_to_go_gpa_direct() {
    let cfg = NetvscHostConfig {
        send_buf_status: nvsp::STATUS_FAIL,
        ..NetvscHostConfig::default()
    };
    let mut tb = testbed(cfg, Sizes::default());
    tb.bring_up().unwrap();
    assert_eq!(tb.nic.send_section_size(), 0);
    assert!(tb.nic.send_frame(&[0x42; 60]).unwrap());
    let st = tb.host.state();
    assert_eq!((st.frames_via_send_buf, st.frames_via_gpa), (0, 1));
}
