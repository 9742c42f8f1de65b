//! KVP over the VMBus core: the real `Connection`, GPADL, OPENCHANNEL and rings
//! (`CoreChannel`), the guest's `KvpDevice`, and the KVP host model on the host end
//! (`CoreHost`). Both register ABIs, every host personality; the model's own checks
//! (`KvpHostState::violations`) must stay empty, and the ways a host can disagree with us
//! (no common version, silence, hostile items) each end as recorded, within the deadline.

mod common;

use common::{ARCHES, PERSONALITIES};
use vmbus::device::CoreChannel;
use vmbus::ic::kvp::{self, KvpDevice, ReadEnd};
use vmbus::ic::{status, IcVersion};
use vmbus::{ConnectOptions, Connection, Guid, OpenOptions, SynicMode};
use vmbus_sim::kvp::{KvpHost, KvpHostConfig, KvpItem, KvpValue};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Personality, Sim, SimArch, SimOffer};

const KVP_RELID: u32 = 9;

/// The personality's sim, with a KVP offer added where the personality has none (the
/// Hyper-V-like and QEMU-like test sets; OpenVMM offers it by default).
fn sim(arch: SimArch, p: Personality) -> Sim {
    let mut cfg = common::config(arch, p);
    if p == Personality::OpenVmm {
        cfg.offers = p.default_offers();
    } else {
        cfg.offers.push(SimOffer {
            if_type: kvp::CLASS,
            if_instance: Guid([9; 16]),
            relid: KVP_RELID,
            dedicated_interrupt: false,
            mmio_megabytes: 0,
        });
    }
    Sim::new(cfg)
}

struct Run {
    end: ReadEnd,
    items: kvp::HostItems,
    stats: kvp::KvpStats,
    negotiated: Option<vmbus::ic::Negotiated>,
    refused: bool,
    host: vmbus_sim::kvp::KvpHostState,
    rounds: u32,
}

/// Opens the KVP channel and reads the host items with a deadline of `limit` rounds; then
/// keeps the host running until it is done (answering what it still asks).
fn run(arch: SimArch, p: Personality, hcfg: KvpHostConfig, limit: u32) -> Run {
    let s = sim(arch, p);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut conn =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    conn.request_offers(hv, &g.clock).unwrap();
    let relid = conn
        .find_offer(&kvp::CLASS)
        .expect("KVP offered")
        .child_relid;
    let ch = conn
        .open_channel(hv, &g.clock, &s.mem, relid, &OpenOptions::default())
        .unwrap();
    let host = KvpHost::new(hcfg);
    let mut hdev = host.clone();
    let hend = CoreHost::new(&s, relid);
    let mut dev = KvpDevice::new(CoreChannel::new(&ch, hv));
    let mut buf = vec![0u8; kvp::MAX_PACKET + 64];
    let mut rounds = 0;
    let end = dev
        .read_host_items(&mut buf, &mut || {
            hend.pump(&mut hdev);
            rounds += 1;
            rounds > limit
        })
        .unwrap();
    // The rest of the host's transactions (enumeration) are answered by later polls.
    for _ in 0..200 {
        hend.pump(&mut hdev);
        dev.poll(&mut buf).unwrap();
        if host.state().done {
            break;
        }
    }
    Run {
        end,
        items: *dev.items(),
        stats: dev.stats(),
        negotiated: dev.negotiated(),
        refused: dev.negotiate_refused(),
        host: host.state(),
        rounds,
    }
}

#[test]
fn pool_3_items_arrive_on_every_host_that_pushes_them_and_the_host_is_satisfied() {
    for arch in ARCHES {
        for p in PERSONALITIES {
            let mut hcfg = KvpHostConfig::for_personality(p);
            if p == Personality::OpenVmm {
                // OpenVMM pushes only what its user sets: set the four.
                hcfg.items = vmbus_sim::kvp::hyperv_pool3(
                    "vm-ovmm",
                    "id-1",
                    "ovmm-host",
                    "ovmm-host.example",
                )
                .into_iter()
                .filter(|i| kvp::KEPT_KEYS.contains(&i.key.as_str()))
                .collect();
            }
            let r = run(arch, p, hcfg, 1000);
            assert_eq!(r.end, ReadEnd::Complete, "{arch:?} {p:?}");
            assert!(
                r.host.violations.is_empty(),
                "{arch:?} {p:?}: {:?}",
                r.host.violations
            );
            assert!(
                r.host.done,
                "{arch:?} {p:?}: host finished its transactions"
            );
            let n = r.negotiated.expect("negotiated");
            // Our newest in the host's list, whatever its order (OpenVMM lists ascending).
            assert_eq!(n.framework, IcVersion::new(3, 0), "{p:?}");
            assert_eq!(n.message, IcVersion::new(4, 0), "{p:?}");
            if p == Personality::OpenVmm {
                assert_eq!(r.items.vm_name.as_str(), "vm-ovmm");
                assert_eq!(r.items.host_fqdn.as_str(), "ovmm-host.example");
            } else {
                assert_eq!(r.items.vm_name.as_str(), "canary-07", "{p:?}");
                assert_eq!(
                    r.items.vm_id.as_str(),
                    "2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C"
                );
                assert_eq!(r.items.host_name.as_str(), "HV-HOST-12");
                assert_eq!(r.items.host_fqdn.as_str(), "hv-host-12.lab.example.net");
                // Every push answered OK (integers too), and the enumeration of the guest's
                // pool ended at once with "no more items".
                let sets = r.host.answers.iter().filter(|a| a.op == Some(kvp::Op::SET));
                assert_eq!(sets.clone().count(), 8);
                assert!(sets.clone().all(|a| a.status == status::S_OK));
                let en: Vec<_> = r
                    .host
                    .answers
                    .iter()
                    .filter(|a| a.op == Some(kvp::Op::ENUMERATE))
                    .collect();
                assert_eq!(en.len(), 1, "{p:?}");
                assert_eq!(en[0].status, status::S_CONT);
                assert_eq!(r.stats.enumerations, 1);
            }
        }
    }
}

#[test]
fn a_silent_host_ends_at_the_deadline_with_no_items() {
    // OpenVMM's default: negotiates, then pushes nothing.
    for arch in ARCHES {
        let r = run(
            arch,
            Personality::OpenVmm,
            KvpHostConfig::for_personality(Personality::OpenVmm),
            50,
        );
        assert_eq!(r.end, ReadEnd::Deadline);
        assert_eq!(r.items.count(), 0);
        assert!(r.negotiated.is_some(), "the negotiation still happened");
        assert!(r.host.violations.is_empty(), "{:?}", r.host.violations);
        assert_eq!(r.rounds, 51);
    }
    // A host that never even negotiates.
    let mut h = KvpHostConfig::for_personality(common::hyperv());
    h.start_delay_ticks = u32::MAX;
    let r = run(SimArch::X86_64, common::hyperv(), h, 30);
    assert_eq!(r.end, ReadEnd::Deadline);
    assert!(r.negotiated.is_none());
    assert_eq!(r.stats.messages, 0);
}

#[test]
fn a_host_without_a_common_version_is_told_so_and_sends_nothing_more() {
    let mut h = KvpHostConfig::for_personality(common::hyperv());
    h.message_versions = vec![IcVersion::new(6, 0), IcVersion::new(7, 0)];
    let r = run(SimArch::Aarch64, common::hyperv(), h, 40);
    assert_eq!(r.end, ReadEnd::Deadline);
    assert!(r.refused);
    assert!(r.host.negotiate_refused, "the host saw zero counts");
    assert_eq!(r.host.requests, 1, "nothing after the failed negotiation");
    assert_eq!(r.items.count(), 0);
}

#[test]
fn a_host_offering_only_older_versions_is_answered_with_them() {
    // FreeBSD takes the host's highest version not above its own; Linux only exact matches.
    let mut h = KvpHostConfig::for_personality(common::hyperv());
    h.framework_versions = vec![IcVersion::new(2, 0)];
    h.message_versions = vec![IcVersion::new(2, 0), IcVersion::new(3, 5)];
    let r = run(SimArch::X86_64, common::hyperv(), h, 200);
    let n = r.negotiated.expect("negotiated");
    assert_eq!(
        (n.framework, n.message),
        (IcVersion::new(2, 0), IcVersion::new(3, 5))
    );
    assert_eq!(r.end, ReadEnd::Complete);
    assert!(r.host.violations.is_empty(), "{:?}", r.host.violations);
}

#[test]
fn hostile_and_odd_items_are_answered_and_bounded() {
    let mut h = KvpHostConfig::for_personality(common::hyperv());
    let long = "x".repeat(900); // 900 UTF-16 units: 1802 bytes, within the 2048 maximum
    h.items = vec![
        KvpItem {
            pool: kvp::Pool::AUTO_EXTERNAL,
            key: "VirtualMachineName".into(),
            value: KvpValue::Str(long.clone()),
        },
        KvpItem {
            pool: kvp::Pool::EXTERNAL,
            key: "PhysicalHostName".into(),
            value: KvpValue::Str("not pool 3".into()),
        },
        KvpItem {
            pool: kvp::Pool::AUTO_EXTERNAL,
            key: "VirtualMachineId".into(),
            value: KvpValue::U32(42),
        },
        KvpItem {
            pool: kvp::Pool::AUTO_EXTERNAL,
            key: "PhysicalHostName".into(),
            value: KvpValue::Str("hôst-€".into()),
        },
        KvpItem {
            pool: kvp::Pool::AUTO_EXTERNAL,
            key: "PhysicalHostNameFullyQualified".into(),
            value: KvpValue::Str(String::new()),
        },
    ];
    h.completion_requested = true;
    h.message_len = 0; // only as long as each value needs
    let r = run(SimArch::X86_64, common::hyperv(), h, 200);
    // The FQDN is empty: three of four, the deadline ends the read.
    assert_eq!(r.end, ReadEnd::Deadline);
    assert_eq!(
        r.items.vm_name.as_str().len(),
        kvp::ITEM_CAP,
        "truncated to the cap"
    );
    assert_eq!(r.items.vm_id.as_str(), "42");
    assert_eq!(
        r.items.host_name.as_str(),
        "hôst-€",
        "pool 0 did not overwrite it"
    );
    assert_eq!(r.stats.other_sets, 1);
    assert!(r.host.violations.is_empty(), "{:?}", r.host.violations);
}

#[test]
fn a_corrupt_set_is_answered_with_a_failure_and_the_next_one_still_lands() {
    use vmbus_sim::synthvid_link::HostIo;
    // Hand-made traffic through a Link: negotiate, a SET whose key size lies, a good SET.
    let mem = vmbus_sim::synthvid_link::SimMemory::new(0x10_0000, 1 << 20);
    struct Null;
    impl vmbus_sim::synthvid_link::HostDevice for Null {
        fn on_packet(&mut self, _: &mut HostIo<'_>, _: &vmbus_sim::synthvid_link::HostPacket) {}
    }
    let link = vmbus_sim::synthvid_link::Link::new(mem, 64 * 1024, Box::new(Null));
    let mut dev = KvpDevice::new(link.guest());
    let v = vmbus::ic::Negotiated {
        framework: IcVersion::new(3, 0),
        message: IcVersion::new(4, 0),
    };
    let mut b = vec![0u8; 4096];
    link.inject(|io| {
        let n = vmbus::ic::emit_negotiate_request(
            &mut b,
            1,
            &[IcVersion::new(3, 0)],
            &[IcVersion::new(4, 0)],
        )
        .unwrap();
        io.send_inband(&b[..n]).unwrap();
        let n = kvp::emit_set(
            &mut b,
            v,
            2,
            kvp::Pool::AUTO_EXTERNAL,
            "VirtualMachineName",
            kvp::SetValue::Str("bad"),
            0,
        )
        .unwrap();
        b[28 + 8..28 + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        io.send_inband(&b[..n]).unwrap();
        // Shorter than the IC headers: not answered (nothing to answer with).
        io.send_inband(&[1, 2, 3]).unwrap();
        let n = kvp::emit_set(
            &mut b,
            v,
            3,
            kvp::Pool::AUTO_EXTERNAL,
            "VirtualMachineName",
            kvp::SetValue::Str("good"),
            0,
        )
        .unwrap();
        io.send_inband(&b[..n]).unwrap();
    });
    let mut buf = vec![0u8; kvp::MAX_PACKET + 64];
    assert_eq!(dev.poll(&mut buf).unwrap(), 4);
    assert_eq!(dev.items().vm_name.as_str(), "good");
    let st = dev.stats();
    assert_eq!(st.malformed, 2);
    assert_eq!(st.pool3_sets, 1);
}
