//! Host-side endpoints for the netvsc model: a frame queue that a second smoltcp interface
//! can sit on, and a bridge that carries the guest's UDP datagrams to real UDP sockets on
//! loopback (so a guest can talk to a real `host-collector serve`).

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use crate::netvsc::Endpoint;

#[derive(Default)]
struct Queues {
    to_host: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
}

/// A pair of frame queues: the netvsc model's [`Endpoint`] on one side, a smoltcp
/// [`HostPort`] device on the other.
#[derive(Clone, Default)]
pub struct QueueEndpoint {
    q: Arc<Mutex<Queues>>,
}

impl QueueEndpoint {
    /// A new, empty pair.
    pub fn new() -> Self {
        Self::default()
    }
    /// The host-side smoltcp device.
    pub fn port(&self) -> HostPort {
        HostPort { q: self.q.clone() }
    }
}

impl Endpoint for QueueEndpoint {
    fn guest_frame(&mut self, frame: &[u8]) {
        self.q.lock().unwrap().to_host.push_back(frame.to_vec());
    }
    fn to_guest(&mut self) -> Option<Vec<u8>> {
        self.q.lock().unwrap().to_guest.pop_front()
    }
}

/// The host end of a [`QueueEndpoint`], as a smoltcp device.
pub struct HostPort {
    q: Arc<Mutex<Queues>>,
}

/// Receive token of [`HostPort`].
pub struct PortRx(Vec<u8>);
/// Transmit token of [`HostPort`].
pub struct PortTx(Arc<Mutex<Queues>>);

impl phy::RxToken for PortRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for PortTx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.lock().unwrap().to_guest.push_back(b);
        r
    }
}

impl Device for HostPort {
    type RxToken<'a> = PortRx;
    type TxToken<'a> = PortTx;
    fn receive(&mut self, _: Instant) -> Option<(PortRx, PortTx)> {
        let f = self.q.lock().unwrap().to_host.pop_front()?;
        Some((PortRx(f), PortTx(self.q.clone())))
    }
    fn transmit(&mut self, _: Instant) -> Option<PortTx> {
        Some(PortTx(self.q.clone()))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// Bridges the guest's UDP datagrams addressed to `host_ip:port` to `127.0.0.1:port` through
/// a real UDP socket, and datagrams coming back on that socket to the guest. Answers ARP for
/// `host_ip`. Anything else is counted and dropped.
pub struct UdpBridge {
    host_mac: EthernetAddress,
    host_ip: Ipv4Address,
    sock: UdpSocket,
    /// Guest (mac, ip, port) by host-side port, learnt from the guest's datagrams.
    peers: HashMap<u16, (EthernetAddress, Ipv4Address, u16)>,
    out: VecDeque<Vec<u8>>,
    stats: Arc<Mutex<BridgeStats>>,
}

/// Counters of a [`UdpBridge`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BridgeStats {
    /// Datagrams forwarded to loopback.
    pub to_loopback: u64,
    /// Datagrams forwarded to the guest.
    pub to_guest: u64,
    /// ARP replies sent.
    pub arp_replies: u64,
    /// Frames dropped.
    pub dropped: u64,
}

impl UdpBridge {
    /// A bridge answering as `host_ip` / `host_mac`.
    pub fn new(host_mac: [u8; 6], host_ip: [u8; 4]) -> std::io::Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_nonblocking(true)?;
        Ok(UdpBridge {
            host_mac: EthernetAddress(host_mac),
            host_ip: Ipv4Address::from(host_ip),
            sock,
            peers: HashMap::new(),
            out: VecDeque::new(),
            stats: Arc::new(Mutex::new(BridgeStats::default())),
        })
    }
    /// A handle on the counters.
    pub fn stats_handle(&self) -> Arc<Mutex<BridgeStats>> {
        self.stats.clone()
    }

    fn frame(
        &self,
        dst_mac: EthernetAddress,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let mut b = vec![0u8; 14 + payload_len];
        let mut f = EthernetFrame::new_unchecked(&mut b);
        EthernetRepr {
            src_addr: self.host_mac,
            dst_addr: dst_mac,
            ethertype,
        }
        .emit(&mut f);
        fill(f.payload_mut());
        b
    }

    fn handle_guest(&mut self, frame: &[u8]) -> Option<()> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
                if let ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                } = arp
                {
                    if target_protocol_addr != self.host_ip {
                        return None;
                    }
                    let reply = ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Reply,
                        source_hardware_addr: self.host_mac,
                        source_protocol_addr: self.host_ip,
                        target_hardware_addr: source_hardware_addr,
                        target_protocol_addr: source_protocol_addr,
                    };
                    let f = self.frame(
                        source_hardware_addr,
                        EthernetProtocol::Arp,
                        reply.buffer_len(),
                        |p| reply.emit(&mut ArpPacket::new_unchecked(p)),
                    );
                    self.out.push_back(f);
                    self.stats.lock().unwrap().arp_replies += 1;
                    return Some(());
                }
                None
            }
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
                if ip.dst_addr() != self.host_ip || ip.next_header() != IpProtocol::Udp {
                    return None;
                }
                let udp = UdpPacket::new_checked(ip.payload()).ok()?;
                let dst_port = udp.dst_port();
                self.peers
                    .insert(dst_port, (eth.src_addr(), ip.src_addr(), udp.src_port()));
                let to = SocketAddr::from(([127, 0, 0, 1], dst_port));
                self.sock.send_to(udp.payload(), to).ok()?;
                self.stats.lock().unwrap().to_loopback += 1;
                Some(())
            }
            _ => None,
        }
    }

    fn poll_socket(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let Some(&(mac, ip, port)) = self.peers.get(&from.port()) else {
                self.stats.lock().unwrap().dropped += 1;
                continue;
            };
            let udp = UdpRepr {
                src_port: from.port(),
                dst_port: port,
            };
            let ipr = Ipv4Repr {
                src_addr: self.host_ip,
                dst_addr: ip,
                next_header: IpProtocol::Udp,
                payload_len: udp.header_len() + n,
                hop_limit: 64,
            };
            let data = &buf[..n];
            let (src, dst) = (self.host_ip, ip);
            let f = self.frame(
                mac,
                EthernetProtocol::Ipv4,
                ipr.buffer_len() + ipr.payload_len,
                |p| {
                    let caps = smoltcp::phy::ChecksumCapabilities::default();
                    let mut ipp = Ipv4Packet::new_unchecked(p);
                    ipr.emit(&mut ipp, &caps);
                    let mut up = UdpPacket::new_unchecked(ipp.payload_mut());
                    udp.emit(
                        &mut up,
                        &src.into(),
                        &dst.into(),
                        n,
                        |b| b.copy_from_slice(data),
                        &caps,
                    );
                },
            );
            self.out.push_back(f);
            self.stats.lock().unwrap().to_guest += 1;
        }
    }
}

impl Endpoint for UdpBridge {
    fn guest_frame(&mut self, frame: &[u8]) {
        if self.handle_guest(frame).is_none() {
            self.stats.lock().unwrap().dropped += 1;
        }
    }
    fn to_guest(&mut self) -> Option<Vec<u8>> {
        self.poll_socket();
        self.out.pop_front()
    }
}
