//! The network: a NIC (netvsc from `crate::hyperv` when Hyper-V offers one, else virtio-net)
//! as a smoltcp `phy::Device`, one interface, and two UDP sockets (collector traffic, drills).
//! Every buffer is static and allocated at boot; the panic path polls the NIC with interrupts
//! off (on Hyper-V it switches to the netvsc reopened after the VMBus reconnect,
//! `panic_use_netvsc`).
use crate::config::{Config, NetConfig};
use smoltcp::iface::{Config as IfConfig, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{dhcpv4, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address, Ipv4Cidr,
};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::SomeTransport;

const QUEUE: usize = 16;
const BUF: usize = 2048;

use crate::static_buf::static_buf;

pub struct VirtioPhy {
    dev: VirtIONetRaw<crate::dma::Hal, SomeTransport<'static>, QUEUE>,
    rx_bufs: &'static mut [[u8; BUF]; QUEUE],
    /// token -> rx buffer index
    slot: [u8; QUEUE],
    rx_pkt: &'static mut [u8; BUF],
    tx_buf: &'static mut [u8; BUF],
}

impl VirtioPhy {
    fn new(transport: SomeTransport<'static>) -> Result<Self, virtio_drivers::Error> {
        // A second NIC would need buffers of its own: these are taken once.
        let (Some(rx_bufs), Some(rx_pkt), Some(tx_buf)) = (
            static_buf!([[u8; BUF]; QUEUE], [[0; BUF]; QUEUE]),
            static_buf!([u8; BUF], [0; BUF]),
            static_buf!([u8; BUF], [0; BUF]),
        ) else {
            return Err(virtio_drivers::Error::AlreadyUsed);
        };
        let dev = VirtIONetRaw::new(transport)?;
        let mut p = VirtioPhy {
            dev,
            rx_bufs,
            slot: [0; QUEUE],
            rx_pkt,
            tx_buf,
        };
        p.dev.disable_interrupts();
        Ok(p)
    }

    /// Posts every receive buffer (static memory: the device keeps the addresses).
    fn post_rx(&mut self) -> Result<(), virtio_drivers::Error> {
        for i in 0..QUEUE {
            // SAFETY: the buffer lives in a static and stays posted until completed.
            let tok = unsafe { self.dev.receive_begin(&mut self.rx_bufs[i])? };
            self.slot[tok as usize % QUEUE] = i as u8;
        }
        Ok(())
    }
}

pub struct VRx<'a>(&'a [u8]);
pub struct VTx<'a> {
    dev: &'a mut VirtIONetRaw<crate::dma::Hal, SomeTransport<'static>, QUEUE>,
    buf: &'a mut [u8; BUF],
}

impl RxToken for VRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for VTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // `send` prepends the virtio-net header itself and waits for the device.
        let len = len.min(BUF);
        let r = f(&mut self.buf[..len]);
        if let Err(e) = self.dev.send(&self.buf[..len]) {
            log::warn!("virtio-net send: {e:?}");
        }
        r
    }
}

impl Device for VirtioPhy {
    type RxToken<'a> = VRx<'a>;
    type TxToken<'a> = VTx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(VRx<'_>, VTx<'_>)> {
        let tok = self.dev.poll_receive()?;
        let i = self.slot[tok as usize % QUEUE] as usize;
        // SAFETY: `tok` was returned by poll_receive for the buffer we posted at slot i.
        let done = unsafe { self.dev.receive_complete(tok, &mut self.rx_bufs[i]) };
        let n = match done {
            Ok((hdr, len)) => {
                let len = len.min(BUF - hdr);
                self.rx_pkt[..len].copy_from_slice(&self.rx_bufs[i][hdr..hdr + len]);
                len
            }
            Err(_) => 0,
        };
        // Re-post the buffer at once.
        // SAFETY: as in post_rx.
        if let Ok(t) = unsafe { self.dev.receive_begin(&mut self.rx_bufs[i]) } {
            self.slot[t as usize % QUEUE] = i as u8;
        }
        Some((
            VRx(&self.rx_pkt[..n]),
            VTx {
                dev: &mut self.dev,
                buf: self.tx_buf,
            },
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<VTx<'_>> {
        Some(VTx {
            dev: &mut self.dev,
            buf: self.tx_buf,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c.max_burst_size = Some(1);
        c
    }
}

/// The NIC under smoltcp. Lives inside `NET` (a static): no point boxing the larger variant.
#[allow(clippy::large_enum_variant)]
pub enum Phy {
    Virtio(VirtioPhy),
    Netvsc(&'static mut crate::hyperv::HvNic),
}

pub enum PhyRx<'a> {
    Virtio(VRx<'a>),
    Netvsc(vmbus::netvsc::phy::RxToken<'a>),
}

pub enum PhyTx<'a> {
    Virtio(VTx<'a>),
    Netvsc(<crate::hyperv::HvNic as Device>::TxToken<'a>),
}

impl RxToken for PhyRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            PhyRx::Virtio(t) => t.consume(f),
            PhyRx::Netvsc(t) => t.consume(f),
        }
    }
}

impl TxToken for PhyTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self {
            PhyTx::Virtio(t) => t.consume(len, f),
            PhyTx::Netvsc(t) => t.consume(len, f),
        }
    }
}

impl Device for Phy {
    type RxToken<'a> = PhyRx<'a>;
    type TxToken<'a> = PhyTx<'a>;

    fn receive(&mut self, t: Instant) -> Option<(PhyRx<'_>, PhyTx<'_>)> {
        match self {
            Phy::Virtio(p) => p
                .receive(t)
                .map(|(r, x)| (PhyRx::Virtio(r), PhyTx::Virtio(x))),
            Phy::Netvsc(p) => p
                .receive(t)
                .map(|(r, x)| (PhyRx::Netvsc(r), PhyTx::Netvsc(x))),
        }
    }

    fn transmit(&mut self, t: Instant) -> Option<PhyTx<'_>> {
        match self {
            Phy::Virtio(p) => p.transmit(t).map(PhyTx::Virtio),
            Phy::Netvsc(p) => p.transmit(t).map(PhyTx::Netvsc),
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        match self {
            Phy::Virtio(p) => p.capabilities(),
            Phy::Netvsc(p) => p.capabilities(),
        }
    }
}

/// Panic path only (after freeze), on Hyper-V: the boot connection's netvsc went with the
/// VMBus UNLOAD; the record ships over `nic`, reopened on the reconnect. The interface keeps
/// its address, routes and sockets (same MAC: it is the same synthetic NIC).
pub fn panic_use_netvsc(nic: &'static mut crate::hyperv::HvNic) {
    let phy = Phy::Netvsc(nic);
    match crate::platform::NET.try_lock() {
        Some(mut g) => {
            if let Some(net) = g.as_mut() {
                net.phy = phy;
            }
        }
        // SAFETY: after freeze nothing else runs; the holder was interrupted by the panic and
        // never resumes, and the ship step takes the lock over the same way.
        None => {
            if let Some(net) = unsafe { crate::platform::NET.force_get() }.as_mut() {
                net.phy = phy;
            }
        }
    }
}

/// The sockets' static buffers (taken once, at [`Net::init`]).
struct SocketBufs {
    sockets: &'static mut [SocketStorage<'static>; 4],
    rx_meta: &'static mut [udp::PacketMetadata; 8],
    rx: &'static mut [u8; 8192],
    tx_meta: &'static mut [udp::PacketMetadata; 16],
    tx: &'static mut [u8; 24576],
    drill_rx_meta: &'static mut [udp::PacketMetadata; 4],
    drill_rx: &'static mut [u8; 2048],
    /// Room for two Challenge frames (60 bytes each).
    drill_tx_meta: &'static mut [udp::PacketMetadata; 2],
    drill_tx: &'static mut [u8; 128],
}

impl SocketBufs {
    fn take() -> Option<SocketBufs> {
        Some(SocketBufs {
            sockets: static_buf!([SocketStorage<'static>; 4], [SocketStorage::EMPTY; 4])?,
            rx_meta: static_buf!([udp::PacketMetadata; 8], [udp::PacketMetadata::EMPTY; 8])?,
            rx: static_buf!([u8; 8192], [0; 8192])?,
            tx_meta: static_buf!([udp::PacketMetadata; 16], [udp::PacketMetadata::EMPTY; 16])?,
            tx: static_buf!([u8; 24576], [0; 24576])?,
            drill_rx_meta: static_buf!([udp::PacketMetadata; 4], [udp::PacketMetadata::EMPTY; 4])?,
            drill_rx: static_buf!([u8; 2048], [0; 2048])?,
            drill_tx_meta: static_buf!([udp::PacketMetadata; 2], [udp::PacketMetadata::EMPTY; 2])?,
            drill_tx: static_buf!([u8; 128], [0; 128])?,
        })
    }
}

pub struct Net {
    pub phy: Phy,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub udp: SocketHandle,
    pub drill: SocketHandle,
    pub dhcp: Option<SocketHandle>,
    pub collector: IpEndpoint,
    pub configured: bool,
    /// Datagrams dropped by `recv_collector` because of their source.
    foreign: u32,
}

/// How many datagrams from other sources `recv_collector` logs.
const FOREIGN_LOGGED: u32 = 8;

fn socket_addr(ep: IpEndpoint) -> core::net::SocketAddr {
    core::net::SocketAddr::new(ep.addr.into(), ep.port)
}

pub fn now() -> Instant {
    Instant::from_micros(crate::arch::now_us() as i64)
}

impl Net {
    /// Brings up the NIC: `netvsc` when Hyper-V offered one (already up; the platform hands it
    /// over), else the first virtio-net device. `false` (logged) when there is none.
    pub fn init(
        cfg: &Config,
        slot: &'static crate::sync::TryLock<Option<Net>>,
        netvsc: Option<&'static mut crate::hyperv::HvNic>,
    ) -> bool {
        let (mut phy, mac, kind) = match netvsc {
            Some(nic) => {
                let mac = nic.mac();
                (Phy::Netvsc(nic), mac, "netvsc")
            }
            None => {
                let Some(t) = crate::arch::imp::nic_transport() else {
                    log::warn!("no virtio-net device: running without network");
                    return false;
                };
                let mut phy = match VirtioPhy::new(t) {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("virtio-net init failed: {e:?}");
                        return false;
                    }
                };
                if let Err(e) = phy.post_rx() {
                    log::warn!("virtio-net rx buffers: {e:?}");
                    return false;
                }
                let mac = phy.dev.mac_address();
                (Phy::Virtio(phy), mac, "virtio-net")
            }
        };
        let Some(bufs) = SocketBufs::take() else {
            log::error!("net: init ran twice; the socket buffers are taken");
            return false;
        };
        let mut ic = IfConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        ic.random_seed = crate::arch::imp::entropy();
        let iface = Interface::new(ic, &mut phy, now());
        let mut g = slot.lock();
        let net = g.insert(Net {
            phy,
            iface,
            sockets: SocketSet::new(&mut bufs.sockets[..]),
            udp: SocketHandle::default(),
            drill: SocketHandle::default(),
            dhcp: None,
            collector: IpEndpoint::new(
                IpAddress::Ipv4(Ipv4Address::from(cfg.collector.0)),
                cfg.collector.1,
            ),
            configured: false,
            foreign: 0,
        });
        let rx = udp::PacketBuffer::new(&mut bufs.rx_meta[..], &mut bufs.rx[..]);
        let tx = udp::PacketBuffer::new(&mut bufs.tx_meta[..], &mut bufs.tx[..]);
        let mut s = udp::Socket::new(rx, tx);
        let _ = s.bind(cfg.drill_port.wrapping_add(1).max(1024));
        net.udp = net.sockets.add(s);
        let drx = udp::PacketBuffer::new(&mut bufs.drill_rx_meta[..], &mut bufs.drill_rx[..]);
        let dtx = udp::PacketBuffer::new(&mut bufs.drill_tx_meta[..], &mut bufs.drill_tx[..]);
        let mut d = udp::Socket::new(drx, dtx);
        let _ = d.bind(cfg.drill_port);
        net.drill = net.sockets.add(d);
        match cfg.net {
            NetConfig::Static {
                addr,
                prefix,
                gateway,
            } => {
                net.set_addr(
                    Ipv4Cidr::new(Ipv4Address::from(addr), prefix),
                    gateway.map(Ipv4Address::from),
                );
            }
            NetConfig::Dhcp => {
                net.dhcp = Some(net.sockets.add(dhcpv4::Socket::new()));
            }
        }
        log::info!("net: {kind} mac {}, {:?}", EthernetAddress(mac), cfg.net);
        true
    }

    fn set_addr(&mut self, cidr: Ipv4Cidr, gw: Option<Ipv4Address>) {
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(IpCidr::Ipv4(cidr));
        });
        if let Some(gw) = gw {
            let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
        }
        self.configured = true;
    }

    /// One round of NIC polling and protocol processing.
    pub fn poll(&mut self) {
        self.iface.poll(now(), &mut self.phy, &mut self.sockets);
        if let Some(h) = self.dhcp {
            let ev = match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                Some(dhcpv4::Event::Configured(c)) => Some(Some((c.address, c.router))),
                Some(dhcpv4::Event::Deconfigured) => Some(None),
                None => None,
            };
            match ev {
                Some(Some((addr, router))) => {
                    log::info!("dhcp: {} via {:?}", addr, router);
                    self.set_addr(addr, router);
                }
                Some(None) => self.configured = false,
                None => {}
            }
        }
    }

    /// Whether everything queued to the collector has left (smoltcp keeps a datagram queued
    /// until the next hop's link-layer address is known).
    pub fn collector_queue_empty(&mut self) -> bool {
        self.configured && self.sockets.get_mut::<udp::Socket>(self.udp).send_queue() == 0
    }

    /// Queues one datagram to the collector.
    pub fn send_to_collector(&mut self, d: &[u8]) -> bool {
        let ep = self.collector;
        self.sockets
            .get_mut::<udp::Socket>(self.udp)
            .send_slice(d, ep)
            .is_ok()
    }

    /// Takes the next datagram that came from the collector's endpoint (address and port,
    /// `capture::sender::from_collector`) into `buf`; datagrams from anywhere else are
    /// dropped (the first few logged): acks travel in clear and can be forged by anyone who
    /// sees a chunk, so only the configured collector may end a send.
    pub fn recv_collector<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let collector = socket_addr(self.collector);
        let s = self.sockets.get_mut::<udp::Socket>(self.udp);
        loop {
            let (n, meta) = s.recv_slice(buf).ok()?;
            if capture::sender::from_collector(socket_addr(meta.endpoint), collector) {
                return Some(&buf[..n]);
            }
            self.foreign = self.foreign.saturating_add(1);
            if self.foreign <= FOREIGN_LOGGED {
                log::warn!(
                    "net: dropped a datagram from {} on the collector socket (not the collector{})",
                    meta.endpoint,
                    if self.foreign == FOREIGN_LOGGED {
                        "; not logging more"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    /// Takes one datagram from the drill socket into `buf`, with where it came from.
    pub fn recv_drill<'b>(&mut self, buf: &'b mut [u8]) -> Option<(IpEndpoint, &'b [u8])> {
        let s = self.sockets.get_mut::<udp::Socket>(self.drill);
        let (n, meta) = s.recv_slice(buf).ok()?;
        Some((meta.endpoint, &buf[..n]))
    }

    /// Queues a reply (a drill challenge) from the drill port to `to`.
    pub fn send_drill_reply(&mut self, d: &[u8], to: IpEndpoint) -> bool {
        self.sockets
            .get_mut::<udp::Socket>(self.drill)
            .send_slice(d, to)
            .is_ok()
    }
}
