//! Version negotiation, offers, and host differences, on both register ABIs.

mod common;

use common::{hyperv, sim, ARCHES};
use vmbus::version::SUPPORTED;
use vmbus::{ConnectOptions, Connection, SynicMode, Version, VmbusError};
use vmbus_sim::{Guest, Personality};

fn opts(versions: &[Version]) -> ConnectOptions<'_> {
    ConnectOptions {
        versions,
        ..ConnectOptions::default()
    }
}

#[test]
fn connects_at_every_supported_version_on_both_arches() {
    for arch in ARCHES {
        for &v in SUPPORTED {
            let s = sim(arch, Personality::HyperV { max_version: v });
            let g = Guest::boot(&s, SynicMode::Polling);
            let c = Connection::connect(
                g.hv(0),
                &g.clock,
                &s.mem,
                &g.synic,
                &ConnectOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{arch:?} {v}: {e}"));
            assert_eq!(c.version(), v, "{arch:?}");
            let msgs = s.guest_messages_of(14);
            let last = msgs.last().unwrap();
            assert_eq!(u32::from_le_bytes(last[8..12].try_into().unwrap()), v.0);
            let last_post = s.posts().into_iter().rfind(|p| p.1 == 14).unwrap();
            if v >= Version::WIN10_V5 {
                assert_eq!(
                    last_post.0, 4,
                    "5.0+ INITIATE_CONTACT goes to connection id 4"
                );
                assert_eq!(last[16], 2, "msg_sint = 2");
                assert_eq!(c.message_connection_id(), 4);
            } else {
                assert_eq!(
                    last_post.0, 1,
                    "below 5.0 INITIATE_CONTACT goes to connection id 1"
                );
                let int_page = u64::from_le_bytes(last[16..24].try_into().unwrap());
                assert!(
                    s.mem.ptr(int_page, 4096).is_some(),
                    "interrupt page GPA {int_page:#x}"
                );
                assert_eq!(c.message_connection_id(), 1);
            }
            // Newest first: every version newer than v was tried (and refused) before it.
            let tried = msgs.len();
            assert_eq!(tried, SUPPORTED.iter().position(|&x| x == v).unwrap() + 1);
        }
    }
}

#[test]
fn qemu_falls_back_to_4_0_after_invalid_connection_id_and_refusal() {
    for arch in ARCHES {
        let s = sim(arch, Personality::Qemu);
        let g = Guest::boot(&s, SynicMode::Polling);
        let c = Connection::connect(
            g.hv(0),
            &g.clock,
            &s.mem,
            &g.synic,
            &ConnectOptions::default(),
        )
        .unwrap();
        assert_eq!(c.version(), Version::WIN10);
        let attempts: Vec<(u32, u32)> = s.posts().into_iter().filter(|p| p.1 == 14).collect();
        // 5.3, 5.2, 5.1, 5.0 on id 4 (each refused once: no retry), 4.1 and 4.0 on id 1.
        assert_eq!(
            attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![4, 4, 4, 4, 1, 1],
            "{arch:?}"
        );
        let accepted: Vec<Version> = s
            .guest_messages_of(14)
            .iter()
            .map(|m| Version(u32::from_le_bytes(m[8..12].try_into().unwrap())))
            .collect();
        assert_eq!(accepted, vec![Version::WIN10_V4_1, Version::WIN10]);
    }
}

#[test]
fn openvmm_accepts_the_newest_exact_version() {
    let s = sim(vmbus_sim::SimArch::X86_64, Personality::OpenVmm);
    let g = Guest::boot(&s, SynicMode::Polling);
    let c = Connection::connect(
        g.hv(0),
        &g.clock,
        &s.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap();
    assert_eq!(c.version(), Version::WIN10_V5_3);
    // A version OpenVMM does not list exactly is refused.
    let s = sim(vmbus_sim::SimArch::X86_64, Personality::OpenVmm);
    let g = Guest::boot(&s, SynicMode::Polling);
    let odd = [Version::new(5, 4), Version::WIN10_V5_1];
    let c = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts(&odd)).unwrap();
    assert_eq!(c.version(), Version::WIN10_V5_1);
}

#[test]
fn never_negotiates_below_3_0() {
    let s = sim(
        vmbus_sim::SimArch::X86_64,
        Personality::HyperV {
            max_version: Version::WIN8,
        },
    );
    let g = Guest::boot(&s, SynicMode::Polling);
    let e = Connection::connect(
        g.hv(0),
        &g.clock,
        &s.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e, VmbusError::NoVersionAccepted);
    let e = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts(&[Version::WIN8]))
        .unwrap_err();
    assert_eq!(e, VmbusError::NoVersionAccepted);
    assert!(s
        .guest_messages_of(14)
        .iter()
        .all(|m| u32::from_le_bytes(m[8..12].try_into().unwrap()) >= Version::WIN8_1.0));
}

#[test]
fn offers_arrive_until_all_offers_delivered_with_host_specific_connection_ids() {
    for arch in ARCHES {
        for (p, conn_id) in [(hyperv(), 0x2000u32), (Personality::Qemu, 16)] {
            let s = sim(arch, p);
            let g = Guest::boot(&s, SynicMode::Polling);
            let mut c = Connection::connect(
                g.hv(0),
                &g.clock,
                &s.mem,
                &g.synic,
                &ConnectOptions::default(),
            )
            .unwrap();
            let offers = c.request_offers(g.hv(0), &g.clock).unwrap().to_vec();
            assert_eq!(offers.len(), 3);
            assert_eq!(
                offers.iter().map(|o| o.child_relid).collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            let fb = c.find_offer(&vmbus::guid::SYNTHVID).unwrap();
            assert_eq!(fb.child_relid, 1);
            assert_eq!(fb.mmio_megabytes, 8);
            let net = c.find_offer(&vmbus::guid::NET).unwrap();
            assert!(net.is_dedicated_interrupt);
            let expect = if conn_id == 16 { 16 + 2 } else { 0x2000 | 2 };
            assert_eq!(net.connection_id, expect, "{p:?}");
            assert_eq!(c.malformed_messages(), 0);
        }
    }
}

#[test]
fn transient_post_errors_are_retried_and_hard_errors_returned() {
    let s = sim(vmbus_sim::SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    s.faults(|f| {
        f.post_failures = 5;
        f.post_failure_status = 0x13;
    });
    let c = Connection::connect(
        g.hv(0),
        &g.clock,
        &s.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap();
    assert_eq!(c.version(), Version::WIN10_V5_3);
    assert_eq!(s.posts().len(), 6, "5 failed tries + 1 success");
    s.faults(|f| {
        f.post_failures = 1;
        f.post_failure_status = 5;
    });
    let e = Connection::connect(
        g.hv(0),
        &g.clock,
        &s.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e, VmbusError::Hv(vmbus::HvError::InvalidParameter));
}

#[test]
fn transient_post_errors_give_up_after_100_tries_or_at_the_deadline() {
    let mut cfg = common::config(vmbus_sim::SimArch::Aarch64, hyperv());
    cfg.clock_step = 100_000;
    let s = vmbus_sim::Sim::new(cfg);
    let g = Guest::boot(&s, SynicMode::Polling);
    s.faults(|f| {
        f.post_failures = 1000;
        f.post_failure_status = 0xB;
    });
    // Linux's schedule (1 us doubling 22 times, 100 tries) needs about 331 s.
    let long = ConnectOptions {
        reply_timeout: 400 * 10_000_000,
        ..ConnectOptions::default()
    };
    let start = s.now();
    let e = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &long).unwrap_err();
    assert_eq!(e, VmbusError::Hv(vmbus::HvError::InsufficientMemory));
    assert_eq!(s.posts().len(), 100);
    let took = s.now() - start;
    assert!((320..340).contains(&(took / 10_000_000)), "{took}");
    // With the default 5 s budget the retries stop at the deadline.
    let before = s.posts().len();
    let start = s.now();
    let e = Connection::connect(
        g.hv(0),
        &g.clock,
        &s.mem,
        &g.synic,
        &ConnectOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e, VmbusError::Hv(vmbus::HvError::InsufficientMemory));
    let tries = s.posts().len() - before;
    assert!((20..30).contains(&tries), "{tries}");
    assert!(s.now() - start < 10 * 10_000_000);
}

#[test]
fn a_flood_of_host_messages_cannot_hold_a_request_past_its_deadline() {
    let s = sim(vmbus_sim::SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let opts = ConnectOptions {
        reply_timeout: 100_000,
        ..ConnectOptions::default()
    };
    let mut c = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts).unwrap();
    let junk = (0..5000)
        .map(|_| (1u32, 8u8, vec![200, 0, 0, 0, 0, 0, 0, 0]))
        .collect();
    s.faults(|f| f.inject_before_all_offers = junk);
    let start = s.now();
    let e = c.request_offers(g.hv(0), &g.clock).unwrap_err();
    assert_eq!(e, VmbusError::Timeout("ALLOFFERS_DELIVERED"));
    assert!(s.now() - start < 400_000, "{}", s.now() - start);
}

#[test]
fn requests_run_on_the_target_vp_only() {
    let s = sim(vmbus_sim::SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let opts = ConnectOptions {
        target_vp: Some(0),
        ..ConnectOptions::default()
    };
    let e = Connection::connect(g.hv(1), &g.clock, &s.mem, &g.synic, &opts).unwrap_err();
    assert_eq!(
        e,
        VmbusError::WrongCpu {
            target: 0,
            caller: 1
        }
    );
    let mut c = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts).unwrap();
    assert_eq!(
        c.request_offers(g.hv(1), &g.clock).unwrap_err(),
        VmbusError::WrongCpu {
            target: 0,
            caller: 1
        }
    );
    assert_eq!(c.request_offers(g.hv(0), &g.clock).unwrap().len(), 3);
}
