//! End to end: a crash record sent by `capture::sender::Sender` through smoltcp over the
//! netvsc guest driver (polling mode, as on the panic path), through the netvsc host model and
//! its UDP bridge, reaches a real `host-collector serve` on loopback, is acked after commit, and
//! `host-collector list --json` shows it.
//!
//! Two ways in: over the ring-backed channel double, and over the VMBus core (real
//! `Connection`/`Channel`/rings on the core sim) after an UNLOAD and a reconnect — design.md
//! step 5, "order B".

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use common::PERSONALITIES;

use capture::sender::{SendState, Sender, SenderConfig};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use vmbus::device::PhysRegion;
use vmbus::device::{ConnectionGpadls, CoreChannel};
use vmbus::guid::NET;
use vmbus::netvsc::{Buffers, Netvsc, OpMode};
use vmbus::{ConnectOptions, Connection, OpenOptions, PageAlloc, SynicMode, UnloadOutcome};
use vmbus_sim::netvsc::{NetvscHost, NetvscHostConfig};
use vmbus_sim::netvsc_bridge::{BridgeStats, UdpBridge};
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Personality, Sim, SimArch, SimConfig};

const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The collector binary: built with cargo (a no-op when fresh) into the workspace target dir.
fn collector_binary() -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("host-collector");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "host-collector", "--bin", "host-collector"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build -p host-collector");
    assert!(st.success(), "cargo build -p host-collector failed");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// A running `host-collector serve` on a loopback port with its own database; killed on drop.
struct Collector {
    child: Child,
    bin: PathBuf,
    dir: PathBuf,
    db: PathBuf,
    port: u16,
}

impl Collector {
    fn start(tag: &str) -> Self {
        let bin = collector_binary();
        let dir = std::env::temp_dir().join(format!("canary-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("collector.db");
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(&db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start host-collector serve");
        Collector {
            child,
            bin,
            dir,
            db,
            port,
        }
    }

    /// `host-collector list --json` output.
    fn list_json(&self) -> String {
        let out = Command::new(&self.bin)
            .args(["list", "--json", "--db"])
            .arg(&self.db)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "list failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `message` as a crash record from a smoltcp interface on `nic` to the collector at
/// `HOST_IP:port`, running `pump` (the host side) between polls. Returns the sender's end
/// state.
fn ship<D: Device>(
    nic: &mut D,
    mac: [u8; 6],
    port: u16,
    message: &str,
    pump: &mut dyn FnMut(),
) -> SendState {
    let cfg = Config::new(EthernetAddress(mac).into());
    let mut iface = Interface::new(cfg, nic, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(
            IpAddress::Ipv4(Ipv4Address::from(GUEST_IP)),
            24,
        ))
        .unwrap();
    });
    let mut sockets = SocketSet::new(vec![]);
    let h = sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 96 * 1024]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 96 * 1024]),
    ));
    sockets.get_mut::<udp::Socket>(h).bind(40_000).unwrap();

    // The record, encoded as the appliance does.
    let mut rec = capture::testutil::sample_record(7);
    rec.set_message(message);
    let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let encoded = rec.encode(&mut buf).unwrap().to_vec();
    let collector = (IpAddress::Ipv4(Ipv4Address::from(HOST_IP)), port);

    let start = StdInstant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut sender = Sender::new(
        SenderConfig {
            initial_rto_ms: 100,
            max_rto_ms: 500,
            deadline_ms: 20_000,
        },
        rec.boot_id,
        rec.seq,
        &encoded,
        None,
        now_ms(),
    )
    .unwrap();
    loop {
        let now = now_ms();
        let st = {
            let sock = sockets.get_mut::<udp::Socket>(h);
            sender.poll(now, &mut |d| {
                sock.send_slice(d, collector).expect("udp tx buffer");
            })
        };
        if !matches!(st, SendState::Waiting { .. }) {
            let stats = sender.stats();
            eprintln!(
                "ship: {st:?} after {} ms, record {} bytes, {} datagrams, {} retransmit rounds",
                now,
                encoded.len(),
                stats.datagrams_sent,
                stats.retransmit_rounds
            );
            return st;
        }
        iface.poll(Instant::from_millis(now as i64), nic, &mut sockets);
        pump();
        let sock = sockets.get_mut::<udp::Socket>(h);
        while let Ok((d, _)) = sock.recv() {
            sender.handle(d);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn assert_bridged(stats: BridgeStats) {
    assert!(
        stats.arp_replies >= 1 && stats.to_loopback >= 1 && stats.to_guest >= 1,
        "{stats:?}"
    );
}

#[test]
fn crash_record_over_netvsc_reaches_a_real_collector_and_is_stored() {
    let col = Collector::start("double");
    let bridge = UdpBridge::new(HOST_MAC, HOST_IP).unwrap();
    let bstats = bridge.stats_handle();
    let mut tb = Testbed::new(
        NetvscHostConfig::default(),
        Box::new(bridge),
        Sizes::default(),
    );
    tb.bring_up().unwrap();
    tb.nic.set_mode(OpMode::Polling);
    let msg = "e2e: crash record over netvsc (model) to a real collector";
    let mac = tb.nic.mac();
    let link = tb.link.clone();
    let state = ship(&mut *tb.nic, mac, col.port, msg, &mut || link.pump());
    let stats = *bstats.lock().unwrap();
    assert_eq!(
        state,
        SendState::Acked,
        "bridge {stats:?}, host {:?}",
        tb.host.state()
    );
    assert_bridged(stats);
    assert_eq!(tb.host.state().outstanding(), 0);
    let text = col.list_json();
    assert!(text.contains(msg), "record not listed: {text}");
}

#[test]
fn after_unload_and_reconnect_netvsc_on_the_core_ships_a_record_to_the_collector() {
    let col = Collector::start("core");
    for p in PERSONALITIES {
        ship_after_reconnect(&col, p);
    }
}

/// One host personality: netvsc up on the first connection, UNLOAD, reconnect, reopen the
/// NIC alone and ship a record to `col`.
fn ship_after_reconnect(col: &Collector, p: Personality) {
    let s = Sim::new(SimConfig::with_default_offers(SimArch::X86_64, p));
    let g = Guest::boot(&s, SynicMode::Polling);
    let hv = g.hv(0);
    let region = |pages: usize| {
        let p = s.mem.alloc_pages(pages).unwrap();
        // SAFETY: freshly allocated sim guest pages, used only through this region.
        unsafe { PhysRegion::new(p.va(), p.len(), p.gpa()) }
    };
    let open = |conn: &mut Connection<'_>| {
        conn.request_offers(hv, &g.clock).unwrap();
        let relid = conn.find_offer(&NET).unwrap().child_relid;
        let opts = OpenOptions {
            send_ring_pages: 16,
            recv_ring_pages: 16,
            ..OpenOptions::default()
        };
        (
            relid,
            conn.open_channel(hv, &g.clock, &s.mem, relid, &opts)
                .unwrap(),
        )
    };

    // Normal running: the first connection, netvsc up in interrupt mode.
    let mut conn1 =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    let (relid, ch1) = open(&mut conn1);
    {
        let mut nic = Box::new(Netvsc::new(
            CoreChannel::new(&ch1, hv),
            Buffers {
                recv: region(16),
                send: Some(region(16)),
                tx: region(2),
            },
        ));
        let mut host = NetvscHost::new(
            NetvscHostConfig::for_personality(p),
            Box::new(UdpBridge::new(HOST_MAC, HOST_IP).unwrap()),
        );
        let end = CoreHost::new(&s, relid);
        let mut n = 0;
        nic.bring_up(
            &mut ConnectionGpadls::new(&mut conn1, hv, &g.clock, relid),
            &mut || {
                end.pump(&mut host);
                n += 1;
                n > 10_000
            },
        )
        .unwrap();
    }

    // Panic: UNLOAD once, then reconnect from scratch and reopen only the NIC.
    let unload = conn1.unload(hv, &g.clock, s.now() + 100_000_000);
    assert!(matches!(unload, UnloadOutcome::Done { .. }), "{unload:?}");
    let mut conn2 =
        Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default()).unwrap();
    let (relid, ch2) = open(&mut conn2);
    let mut nic = Box::new(Netvsc::new(
        CoreChannel::new(&ch2, hv),
        Buffers {
            recv: region(16),
            send: None, // GPA-direct this time
            tx: region(4),
        },
    ));
    let bridge = UdpBridge::new(HOST_MAC, HOST_IP).unwrap();
    let bstats = bridge.stats_handle();
    let host = NetvscHost::new(NetvscHostConfig::for_personality(p), Box::new(bridge));
    let mut hdev = host.clone();
    let end = CoreHost::new(&s, relid);
    let mut n = 0;
    nic.bring_up(
        &mut ConnectionGpadls::new(&mut conn2, hv, &g.clock, relid),
        &mut || {
            end.pump(&mut hdev);
            n += 1;
            n > 10_000
        },
    )
    .unwrap();
    nic.set_mode(OpMode::Polling);
    let msg = format!(
        "e2e: after UNLOAD + reconnect, netvsc on the VMBus core ({p:?}) to a real collector"
    );
    let msg = msg.as_str();
    let mac = nic.mac();
    let state = ship(&mut *nic, mac, col.port, msg, &mut || {
        end.pump(&mut hdev);
    });
    let stats = *bstats.lock().unwrap();
    assert_eq!(
        state,
        SendState::Acked,
        "bridge {stats:?}, host {:?}",
        host.state()
    );
    assert_bridged(stats);
    assert!(host.state().frames_via_gpa > 0);
    assert_eq!(host.state().outstanding(), 0);
    // Then the second connection is unloaded too.
    drop(nic);
    let unload = conn2.unload(hv, &g.clock, s.now() + 100_000_000);
    assert!(matches!(unload, UnloadOutcome::Done { .. }), "{unload:?}");
    assert_eq!(s.guest_messages_of(16).len(), 2, "two UNLOADs");
    let text = col.list_json();
    assert!(text.contains(msg), "record not listed: {text}");
}
