#![allow(dead_code)]

pub mod bounded;

use vmbus::guid::{Guid, HEARTBEAT_IC, NET, SYNTHVID};
use vmbus_sim::{Personality, Sim, SimArch, SimConfig, SimOffer};

pub const ARCHES: [SimArch; 2] = [SimArch::X86_64, SimArch::Aarch64];

pub fn offers() -> Vec<SimOffer> {
    vec![
        SimOffer {
            if_type: SYNTHVID,
            if_instance: Guid([1; 16]),
            relid: 1,
            dedicated_interrupt: false,
            mmio_megabytes: 8,
        },
        SimOffer {
            if_type: NET,
            if_instance: Guid([2; 16]),
            relid: 2,
            dedicated_interrupt: true,
            mmio_megabytes: 0,
        },
        SimOffer {
            if_type: HEARTBEAT_IC,
            if_instance: Guid([3; 16]),
            relid: 3,
            dedicated_interrupt: false,
            mmio_megabytes: 0,
        },
    ]
}

pub fn config(arch: SimArch, personality: Personality) -> SimConfig {
    let mut c = SimConfig::new(arch, personality);
    c.offers = offers();
    c
}

pub fn sim(arch: SimArch, personality: Personality) -> Sim {
    Sim::new(config(arch, personality))
}

/// Every host personality: each device and panic-path test runs against all of them.
pub const PERSONALITIES: [Personality; 3] = [
    Personality::HyperV {
        max_version: vmbus::Version::WIN10_V5_3,
    },
    Personality::Qemu,
    Personality::OpenVmm,
];

/// A sim for `p` with the test offer set.
pub fn sim_with(arch: SimArch, personality: Personality) -> Sim {
    sim(arch, personality)
}

pub fn hyperv() -> Personality {
    Personality::HyperV {
        max_version: vmbus::Version::WIN10_V5_3,
    }
}

pub struct FakeGic(pub Vec<u32>);
impl vmbus::InterruptControl for FakeGic {
    fn disable_ppi(&mut self, intid: u32) {
        self.0.push(intid);
    }
}
