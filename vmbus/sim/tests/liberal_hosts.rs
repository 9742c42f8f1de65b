//! Be liberal in what you accept (issue 17): every value a Linux, FreeBSD or OpenVMM host
//! sends, or those guests accept, in the netvsc messages the guest checks, brings the NIC up
//! and carries frames. The decision for each field, with its source, is in `vmbus/API.md`.

use vmbus::netvsc::nvsp;
use vmbus_sim::netvsc::NetvscHostConfig;
use vmbus_sim::netvsc_bridge::QueueEndpoint;
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};
use vmbus_sim::Personality;

/// Brings the NIC up against `cfg`, then moves a small and a full-size frame each way.
fn bring_up_and_exchange(what: &str, cfg: NetvscHostConfig) -> Testbed {
    let ep = QueueEndpoint::new();
    let mut tb = Testbed::new(cfg, Box::new(ep.clone()), Sizes::default());
    tb.bring_up()
        .unwrap_or_else(|e| panic!("{what}: bring-up refused: {e}"));
    for len in [60usize, 1514] {
        let frame = vec![0x42u8; len];
        assert!(tb.nic.send_frame(&frame).unwrap(), "{what}: no tx slot");
        tb.service();
        tb.link.inject(|io| tb.host.deliver_frame(io, &frame));
        tb.service();
        tb.nic.poll().unwrap();
        let mut out = [0u8; 1600];
        assert_eq!(
            tb.nic.recv_frame(&mut out).unwrap(),
            Some(len),
            "{what}: frame of {len} bytes not received"
        );
    }
    tb.service();
    tb.nic.poll().unwrap();
    assert_eq!(tb.host.state().frames_from_guest, 2, "{what}");
    assert_eq!(tb.host.state().outstanding(), 0, "{what}");
    tb
}

#[test]
fn receive_buffer_section_count_is_not_checked() {
    // Linux netvsc.c wants exactly 1; FreeBSD hn_nvs_conn_rxbuf reads only the status. The
    // guest never uses the section layout (every transfer range is checked against the
    // buffer), so any count is accepted.
    for n in [0, 1, 2, 64] {
        bring_up_and_exchange(
            &format!("{n} sections"),
            NetvscHostConfig {
                recv_sections: n,
                ..Default::default()
            },
        );
    }
}

#[test]
fn a_refused_or_small_send_buffer_falls_back_to_gpa_direct() {
    // A refused send buffer is not fatal: frames go GPA-direct (Linux netvsc_send falls back
    // to page buffers whenever a frame does not fit a section).
    let tb = bring_up_and_exchange(
        "send buffer refused",
        NetvscHostConfig {
            send_buf_status: nvsp::STATUS_FAIL,
            ..Default::default()
        },
    );
    assert_eq!(tb.nic.send_section_size(), 0);
    assert_eq!(tb.host.state().frames_via_gpa, 2);
    // Linux accepts any section size from NETVSC_MTU_MIN (68); frames that do not fit a
    // section go GPA-direct.
    let tb = bring_up_and_exchange(
        "1024-byte sections",
        NetvscHostConfig {
            send_section_size: 1024,
            ..Default::default()
        },
    );
    assert_eq!(tb.nic.send_section_size(), 1024);
    let st = tb.host.state();
    assert_eq!((st.frames_via_send_buf, st.frames_via_gpa), (1, 1));
    // Below 68 bytes the send buffer is unusable: no sections, all GPA-direct.
    let tb = bring_up_and_exchange(
        "0-byte sections",
        NetvscHostConfig {
            send_section_size: 0,
            ..Default::default()
        },
    );
    assert_eq!(tb.host.state().frames_via_gpa, 2);
}

#[test]
fn a_refused_packet_filter_is_not_fatal() {
    // Linux rndis_filter_set_packet_filter does not act on the SET status.
    bring_up_and_exchange(
        "packet filter refused",
        NetvscHostConfig {
            refuse_packet_filter: true,
            ..Default::default()
        },
    );
}

#[test]
fn openvmm_netvsp_refusals_and_empty_completions_are_understood() {
    // OpenVMM refuses a version with Status::NONE (0) and completes SEND_NDIS_VERSION with
    // an empty packet the guest did not ask for: neither is an error.
    let cfg = NetvscHostConfig {
        max_version: nvsp::VERSION_5,
        ..NetvscHostConfig::for_personality(Personality::OpenVmm)
    };
    let tb = bring_up_and_exchange("OpenVMM", cfg);
    assert_eq!(tb.nic.nvsp_version(), nvsp::VERSION_5);
    assert_eq!(tb.nic.stats().malformed, 0, "{:?}", tb.nic.stats());
}

#[test]
fn frames_with_per_packet_info_the_guest_cannot_parse_are_still_delivered() {
    // Linux rndis_get_ppi returns NULL for a bad PPI and the frame is delivered anyway; the
    // guest uses no PPI (checksum, VLAN) at all.
    for ppi in [vec![0xFFu8; 12], vec![4, 0, 0, 0, 0, 0, 0, 0]] {
        bring_up_and_exchange(
            "bad PPI",
            NetvscHostConfig {
                frame_ppi: ppi,
                ..Default::default()
            },
        );
    }
}
