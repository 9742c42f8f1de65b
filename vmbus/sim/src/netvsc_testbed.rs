//! A guest netvsc driver wired to the netvsc host model over a [`Link`], for tests.

use vmbus::netvsc::{Buffers, Netvsc, NetvscError, SpinBudget};

use crate::netvsc::{Endpoint, NetvscHost, NetvscHostConfig};
use crate::synthvid_link::{Link, SimChannel, SimMemory, SimRegion};

/// The guest driver type used with the model.
pub type GuestNic = Netvsc<SimChannel, SimRegion>;

/// Guest memory, link, host model and guest driver.
pub struct Testbed {
    /// Guest memory.
    pub mem: SimMemory,
    /// The channel.
    pub link: Link,
    /// The host model.
    pub host: NetvscHost,
    /// The guest driver (boxed: it is large).
    pub nic: Box<GuestNic>,
}

/// Buffer sizes for a testbed.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Receive buffer bytes.
    pub recv: usize,
    /// Send buffer bytes (`None`: frames go GPA-direct).
    pub send: Option<usize>,
    /// GPA-direct region bytes.
    pub tx: usize,
    /// Ring bytes per direction.
    pub ring: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            recv: 64 * 1024,
            send: Some(64 * 1024),
            tx: 4 * 4096,
            ring: 64 * 1024,
        }
    }
}

impl Testbed {
    /// Builds everything; nothing is sent yet.
    pub fn new(cfg: NetvscHostConfig, endpoint: Box<dyn Endpoint>, sizes: Sizes) -> Self {
        let total = (1 << 20) + sizes.recv + sizes.send.unwrap_or(0) + sizes.tx;
        let mem = SimMemory::new(0x1_0000_0000, total);
        let host = NetvscHost::new(cfg, endpoint);
        let link = Link::new(mem.clone(), sizes.ring, Box::new(host.clone()));
        let bufs = Buffers {
            recv: mem.alloc(sizes.recv),
            send: sizes.send.map(|s| mem.alloc(s)),
            tx: mem.alloc(sizes.tx),
        };
        let nic = Box::new(Netvsc::new(link.guest(), bufs));
        Testbed {
            mem,
            link,
            host,
            nic,
        }
    }

    /// Runs the bring-up with a generous poll budget.
    pub fn bring_up(&mut self) -> Result<(), NetvscError> {
        let mut gpadls = self.link.gpadls();
        self.nic.bring_up(&mut gpadls, &mut SpinBudget(10_000))
    }

    /// Lets the host work and delivers its interrupt to the guest (what the appliance's ISR
    /// does in interrupt mode).
    pub fn service(&mut self) {
        self.link.pump();
        if self.link.take_interrupt() {
            self.nic.on_interrupt();
        }
    }
}
