//! The boot-time KVP read (`read_kvp`) on `vmbus-sim`: the real connection and rings, the
//! KVP host model of each personality; the items go into the record's identity group, which
//! survives encoding, chunking, reassembly and decoding as the collector does them.
use super::*;
use capture::chunk::{Push, Reassembler, ReassemblerConfig};
use capture::identity::KvpStatus;
use capture::record::CrashRecord;
use vmbus::ic::kvp;
use vmbus_sim::kvp::{KvpHost, KvpHostConfig};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Personality, Sim, SimArch, SimConfig, SimOffer};

const KVP_RELID: u32 = 5;

fn hyperv() -> Personality {
    Personality::HyperV {
        max_version: vmbus::Version::WIN10_V5_3,
    }
}

fn sim_with_kvp(arch: SimArch, p: Personality, offer: bool) -> Sim {
    let mut cfg = SimConfig::with_default_offers(arch, p);
    cfg.offers.retain(|o| o.if_type != kvp::CLASS);
    if offer {
        cfg.offers.push(SimOffer {
            if_type: kvp::CLASS,
            if_instance: Guid([5; 16]),
            relid: KVP_RELID,
            dedicated_interrupt: false,
            mmio_megabytes: 0,
        });
    }
    Sim::new(cfg)
}

fn read(arch: SimArch, p: Personality, offer: bool, hcfg: KvpHostConfig) -> (KvpRead, Sim) {
    let s = sim_with_kvp(arch, p, offer);
    let r = {
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut conn =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn.request_offers(hv, &g.clock).unwrap();
        let mut host = KvpHost::new(hcfg);
        let end = CoreHost::new(&s, KVP_RELID);
        let mut buf = vec![0u8; kvp::MAX_PACKET + 64];
        let mut n = 0;
        let r = read_kvp(&mut conn, hv, &g.clock, &s.mem, &mut buf, &mut || {
            end.pump(&mut host);
            n += 1;
            n > 500
        });
        // Closed afterwards: the host's end is gone.
        assert!(s.host_channel(KVP_RELID).is_none(), "channel closed");
        r
    };
    (r, s)
}

/// Encodes `rec`, chunks it, reassembles the chunks as the collector does and decodes.
fn through_the_wire(rec: &CrashRecord) -> CrashRecord {
    let mut enc = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let bytes = rec.encode(&mut enc).unwrap().to_vec();
    let id = capture::RecordId::of(rec.boot_id, rec.seq, &bytes);
    let mut r = Reassembler::<u8>::new(ReassemblerConfig::default());
    let mut out = None;
    for i in 0..capture::chunk::chunk_count(bytes.len()) {
        let c =
            capture::chunk::chunk_repr(&id, &bytes, i as u16, (1, capture::record::SCHEMA_MINOR))
                .unwrap();
        if let Push::Complete(c) = r.push(0, &c, 0) {
            out = Some(CrashRecord::decode(c.schema.0, c.schema.1, &c.record).unwrap());
        }
    }
    out.expect("reassembled")
}

#[test]
fn the_host_models_pool_3_items_land_in_the_record() {
    for arch in [SimArch::X86_64, SimArch::Aarch64] {
        for p in [hyperv(), Personality::Qemu] {
            let (r, _) = read(arch, p, true, KvpHostConfig::for_personality(p));
            assert_eq!(r.status, KvpStatus::Received, "{arch:?} {p:?}");
            assert_eq!(r.items.count(), 4);
            let mut rec = capture::testutil::sample_record(1);
            rec.ident.kvp_status = r.status;
            rec.ident.kvp = crate::identity::kvp_fields(&r.items);
            let got = through_the_wire(&rec);
            assert_eq!(got.ident.kvp.vm_name.as_str(), "canary-07");
            assert_eq!(
                got.ident.kvp.vm_id.as_str(),
                "2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C"
            );
            assert_eq!(got.ident.kvp.host_name.as_str(), "HV-HOST-12");
            assert_eq!(
                got.ident.kvp.host_fqdn.as_str(),
                "hv-host-12.lab.example.net"
            );
            assert_eq!(got.ident.kvp_status, KvpStatus::Received);
        }
    }
}

#[test]
fn absence_and_silence_are_recorded_not_errors() {
    // No KVP offer (QEMU has no KVP device).
    let (r, _) = read(
        SimArch::X86_64,
        Personality::Qemu,
        false,
        KvpHostConfig::for_personality(Personality::Qemu),
    );
    assert_eq!(r.status, KvpStatus::NotOffered);
    // OpenVMM offers KVP but pushes nothing unless its user sets items.
    let p = Personality::OpenVmm;
    let (r, _) = read(SimArch::Aarch64, p, true, KvpHostConfig::for_personality(p));
    assert_eq!(r.status, KvpStatus::Silent);
    assert!(r.negotiated.is_some());
    assert_eq!(r.items.count(), 0);
}
