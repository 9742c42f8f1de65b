//! The KVP chain end to end on the host: the `vmbus-sim` KVP host pushes pool 3 over the
//! real VMBus core (connection, GPADL, rings) to the guest's `KvpDevice`; the items go into
//! a record's identity group (as `appliance::identity::kvp_fields` copies them); the record
//! is sent with the capture sender to a real `host-collector serve`; the stored record has
//! them, and `list --host` finds it by the host's name (and not by another's).
//! (The appliance's own `read_kvp` glue is covered by its unit tests in `hyperv::devices`.)

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use capture::identity::KvpStatus;
use capture::record::truncate_to;
use capture::sender::{SendState, Sender, SenderConfig};
use common::*;
use vmbus::device::CoreChannel;
use vmbus::ic::kvp::{self, KvpDevice, ReadEnd};
use vmbus::{ConnectOptions, Connection, Guid, OpenOptions, SynicMode};
use vmbus_sim::kvp::{KvpHost, KvpHostConfig};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Personality, Sim, SimArch, SimConfig, SimOffer};

fn kvp_items(arch: SimArch, host: &str, fqdn: &str) -> kvp::HostItems {
    let p = Personality::HyperV {
        max_version: vmbus::Version::WIN10_V5_3,
    };
    let mut cfg = SimConfig::with_default_offers(arch, p);
    cfg.offers.push(SimOffer {
        if_type: kvp::CLASS,
        if_instance: Guid([7; 16]),
        relid: 7,
        dedicated_interrupt: false,
        mmio_megabytes: 0,
    });
    let s = Sim::new(cfg);
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let mut conn =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    conn.request_offers(hv, &g.clock).unwrap();
    let ch = conn
        .open_channel(hv, &g.clock, &s.mem, 7, &OpenOptions::default())
        .unwrap();
    let mut hcfg = KvpHostConfig::for_personality(p);
    hcfg.items = vmbus_sim::kvp::hyperv_pool3(
        "canary-e2e",
        "0E2E0E2E-0000-4000-8000-000000000001",
        host,
        fqdn,
    );
    let mut hdev = KvpHost::new(hcfg);
    let end = CoreHost::new(&s, 7);
    let mut dev = KvpDevice::new(CoreChannel::new(&ch, hv));
    let mut buf = vec![0u8; kvp::MAX_PACKET + 64];
    let mut n = 0;
    let r = dev
        .read_host_items(&mut buf, &mut || {
            end.pump(&mut hdev);
            n += 1;
            n > 500
        })
        .unwrap();
    assert_eq!(r, ReadEnd::Complete);
    *dev.items()
}

fn send(port: u16, bytes: &[u8], boot_id: [u8; 16], seq: u32) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", port)).unwrap();
    let t0 = Instant::now();
    let now = || t0.elapsed().as_millis() as u64;
    let cfg = SenderConfig {
        initial_rto_ms: 300,
        max_rto_ms: 1_000,
        deadline_ms: 10_000,
    };
    let mut s = Sender::new(cfg, boot_id, seq, bytes, None, now()).unwrap();
    let mut b = [0u8; 2048];
    loop {
        match s.poll(now(), &mut |d| {
            let _ = sock.send(d);
        }) {
            SendState::Waiting { next_ms } => {
                let wait = next_ms.saturating_sub(now()).max(1);
                sock.set_read_timeout(Some(Duration::from_millis(wait)))
                    .unwrap();
                if let Ok(n) = sock.recv(&mut b) {
                    s.handle(&b[..n]);
                }
            }
            other => {
                assert_eq!(other, SendState::Acked);
                return;
            }
        }
    }
}

fn list_host(c: &Collector, name: &str) -> Vec<serde_json::Value> {
    let o = Command::new(collector_bin())
        .args(["list", "--json", "--host", name, "--db"])
        .arg(&c.db)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

#[test]
fn kvp_pool_3_from_the_host_model_is_stored_and_list_host_finds_it() {
    let c = Collector::start();
    for (i, (arch, host, fqdn)) in [
        (SimArch::X86_64, "HV-E2E-1", "hv-e2e-1.example"),
        (SimArch::Aarch64, "HV-E2E-2", "hv-e2e-2.example"),
    ]
    .into_iter()
    .enumerate()
    {
        let items = kvp_items(arch, host, fqdn);
        let mut rec = capture::testutil::sample_record(i as u32);
        rec.boot_id = [0xe0 + i as u8; 16];
        rec.ident.kvp_status = KvpStatus::Received;
        rec.ident.kvp.vm_name = truncate_to(items.vm_name.as_str());
        rec.ident.kvp.vm_id = truncate_to(items.vm_id.as_str());
        rec.ident.kvp.host_name = truncate_to(items.host_name.as_str());
        rec.ident.kvp.host_fqdn = truncate_to(items.host_fqdn.as_str());
        let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
        let bytes = rec.encode(&mut buf).unwrap().to_vec();
        send(c.port, &bytes, rec.boot_id, rec.seq);
    }
    assert_eq!(c.records(2, Duration::from_secs(5)).len(), 2);
    let one = list_host(&c, "hv-e2e-1");
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["vm_name"], "canary-e2e");
    assert_eq!(one[0]["host_name"], "hv-e2e-1.example");
    assert_eq!(list_host(&c, "HV-E2E").len(), 2);
    assert!(list_host(&c, "hv-e2e-3").is_empty());
    let shown = c.show_latest();
    assert_eq!(
        shown["identity"]["kvp"]["host_name"], "HV-E2E-2",
        "{shown:#}"
    );
    assert_eq!(
        shown["identity"]["kvp"]["vm_id"],
        "0E2E0E2E-0000-4000-8000-000000000001"
    );
}
