//! End to end: a crash record sent by `capture::sender::Sender` through smoltcp over the
//! netvsc guest driver (polling mode, as on the panic path), through the netvsc host model and
//! its UDP bridge, reaches a real `host-collector serve` on loopback, is acked after commit, and
//! `host-collector list --json` shows it.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use capture::sender::{SendState, Sender, SenderConfig};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use vmbus::netvsc::OpMode;
use vmbus_sim::netvsc::NetvscHostConfig;
use vmbus_sim::netvsc_bridge::UdpBridge;
use vmbus_sim::netvsc_testbed::{Sizes, Testbed};

const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];

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

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn crash_record_over_netvsc_reaches_a_real_collector_and_is_stored() {
    let bin = collector_binary();
    let dir = std::env::temp_dir().join(format!("canary-e2e-netvsc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("collector.db");
    let port = free_udp_port();
    let _serve = Serve(
        Command::new(&bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(&db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start host-collector serve"),
    );

    // Guest: netvsc over the model, the model's frames bridged to loopback UDP.
    let bridge = UdpBridge::new([0x02, 0, 0, 0, 0, 0x01], HOST_IP).unwrap();
    let bstats = bridge.stats_handle();
    let mut tb = Testbed::new(
        NetvscHostConfig::default(),
        Box::new(bridge),
        Sizes::default(),
    );
    tb.bring_up().unwrap();
    tb.nic.set_mode(OpMode::Polling);
    let cfg = Config::new(EthernetAddress(tb.nic.mac()).into());
    let mut iface = Interface::new(cfg, &mut *tb.nic, Instant::ZERO);
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
    rec.set_message("e2e: crash record over netvsc (model) to a real collector");
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
    let state = loop {
        let now = now_ms();
        let st = {
            let sock = sockets.get_mut::<udp::Socket>(h);
            sender.poll(now, &mut |d| {
                sock.send_slice(d, collector).expect("udp tx buffer");
            })
        };
        match st {
            SendState::Waiting { .. } => {}
            done => break done,
        }
        iface.poll(Instant::from_millis(now as i64), &mut *tb.nic, &mut sockets);
        tb.link.pump();
        let sock = sockets.get_mut::<udp::Socket>(h);
        while let Ok((d, _)) = sock.recv() {
            sender.handle(d);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stats = *bstats.lock().unwrap();
    assert_eq!(
        state,
        SendState::Acked,
        "sender gave up; bridge {stats:?}, host {:?}",
        tb.host.state()
    );
    assert!(stats.arp_replies >= 1 && stats.to_loopback >= 1 && stats.to_guest >= 1);
    assert_eq!(tb.host.state().outstanding(), 0);

    // The collector stored it.
    let out = Command::new(&bin)
        .args(["list", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "list failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("e2e: crash record over netvsc (model) to a real collector"),
        "record not listed: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
